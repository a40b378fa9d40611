"""Shared by the gateway's test drivers: a recording plain-HTTP backend (the
CSE), the gateway process, and TLS-PSK clients driven by the m2mpsk Python
binding over real sockets. Python 3 standard library and the binding only;
every wait bounded."""
import http.server
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
IDB = "//m2m.example.com/cse-in"
KPSA_ID = "test@onem2m.com"
KEY = bytes(range(32))
# .ci/sanitize runs the suite slower and sets a scale for every wait.
SCALE = float(os.environ.get("M2MPSK_TEST_TIMEOUT_SCALE", "1"))
STEP_S = 10.0 * SCALE


def import_binding():
    path = os.environ.get("M2MPSK_PYTHONPATH")
    if path:
        sys.path.insert(0, path)
    try:
        import m2mpsk  # noqa: F401
    except ImportError as e:
        print("SKIP: the m2mpsk Python binding is not built (%s)" % e)
        sys.exit(SKIP)
    return sys.modules["m2mpsk"]


m2mpsk = import_binding()


def now_ms():
    return int(time.monotonic() * 1000)


def cli():
    path = os.environ.get("M2MPSK_CLI") or (sys.argv[1] if len(sys.argv) > 1
                                            else None)
    if not path:
        print("usage: driver.py PATH-TO-m2mpsk (or M2MPSK_CLI)")
        sys.exit(2)
    return path


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def secret(tmp, name, text):
    """A new file of mode 0600 in tmp holding text; its path."""
    path = os.path.join(tmp, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def run_case(name, cases, errors, make_env, prefix):
    """One case of a driver whose cases take an environment (make_env(tmp),
    with a gateway in env.gw; env.close() afterwards), the gateway then
    exiting 0 on SIGTERM, and whose "errors" case takes the temporary
    directory alone. Bounded by a watchdog. 0 pass, 1 fail."""
    watchdog = threading.Timer(60 * SCALE, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = None
        try:
            if name == "errors":
                errors(tmp)
            else:
                env = make_env(tmp)
                cases[name](env)
                env.gw.signal(signal.SIGTERM)
                rc = env.gw.wait_exit()
                check(rc == 0, "SIGTERM: exit 0 (%d)" % rc)
            print("PASS", name)
            return 0
        except AssertionError as e:
            print("FAIL %s: %s" % (name, e))
            return 1
        finally:
            if env is not None:
                env.close()


def write_keys(path, records):
    """records: [(kpsa_id, key bytes, ida or None)]."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for kid, key, ida in records:
            f.write("kpsa-id=%s kpsa=hex:%s idb=%s%s\n" %
                    (kid, key.hex(), IDB, " ida=" + ida if ida else ""))


# ---- the backend ------------------------------------------------------------

class Backend:
    """A plain HTTP server standing for the CSE. Records every request
    (method, path, headers, body). An <AE> CREATE (POST with ty=2) gets 201,
    X-M2M-RSC 2001 and {"m2m:ae":{"aei":AEI}}; GET /big?n=N gets N bytes;
    GET /silent?s=S answers after S seconds; GET /drop closes unanswered;
    anything else 200, X-M2M-RSC 2000 and a small JSON body."""

    def __init__(self, aei="Cae-1"):
        self.requests = []
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.aei = aei
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with backend.lock:
                    backend.requests.append(
                        (self.command, self.path, dict(self.headers.items()),
                         body))
                    backend.cv.notify_all()
                ri = self.headers.get("X-M2M-RI", "")
                ctype = self.headers.get("Content-Type", "")
                if self.command == "POST" and re.search(r";\s*ty=2\b", ctype):
                    out = json.dumps({"m2m:ae": {"aei": backend.aei,
                                                 "rn": "ae"}}).encode()
                    code, rsc = 201, "2001"
                elif self.path.startswith("/slow"):
                    time.sleep(1.0)  # a slow CSE, for SIGTERM's drain
                    out = b"{}"
                    code, rsc = 200, "2000"
                elif self.path.startswith("/drop"):
                    self.close_connection = True  # closes, never answers
                    return
                elif self.path.startswith("/silent"):
                    # a CSE that answers only after s seconds
                    time.sleep(float(self.path.split("s=")[1]))
                    out = b"{}"
                    code, rsc = 200, "2000"
                elif self.path.startswith("/big"):
                    out = b"x" * int(self.path.split("n=")[1])
                    code, rsc = 200, "2000"
                else:
                    out = json.dumps({"m2m:dbg": "ok " + self.path}).encode()
                    code, rsc = 200, "2000"
                self.send_response(code)
                self.send_header("X-M2M-RSC", rsc)
                if ri:
                    self.send_header("X-M2M-RI", ri)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = handle_one

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def wait_request(self, timeout):
        with self.cv:
            self.cv.wait(timeout)

    def seen(self):
        with self.lock:
            return list(self.requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ---- the gateway --------------------------------------------------------------

class Gateway:
    """`m2mpsk gateway` with its stderr read by a thread: lines() so far,
    wait_line(regex) bounded."""

    def __init__(self, args, ready=True, env=None):
        self.proc = subprocess.Popen([cli(), "gateway"] + args,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE,
                                     start_new_session=True, env=env)
        self._lines = []
        self.bytes = 0
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = None
        if ready:
            m = self.wait_line(r"m2mpsk: gateway listening http "
                               r"127\.0\.0\.1:(\d+)")
            self.port = int(m.group(1))
            self.wait_line(r"^m2mpsk: gateway ready$")

    def _read(self):
        for raw in self.proc.stderr:
            with self._cv:
                self.bytes += len(raw)
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def lines(self):
        with self._cv:
            return list(self._lines)

    def wait_line(self, pattern, timeout=STEP_S, start=0):
        end = time.monotonic() + timeout
        rx = re.compile(pattern)
        with self._cv:
            while True:
                for line in self._lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and
                                 not self._reader.is_alive()):
                    raise AssertionError("no line matching %r; stderr:\n%s" %
                                         (pattern, "\n".join(self._lines[-40:])))
                self._cv.wait(min(left, 0.5))

    def sanitized(self):
        """True under AddressSanitizer (.ci/sanitize): its quarantine and
        shadow memory, not the gateway's state, then dominate VmRSS, so an
        RSS bound measures nothing."""
        try:
            with open("/proc/%d/maps" % self.proc.pid) as f:
                return "libasan" in f.read()
        except OSError:
            return False

    def signal(self, sig):
        self.proc.send_signal(sig)

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def wait_exit(self, timeout=STEP_S):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=STEP_S)
        self._reader.join(timeout=STEP_S)
        # Sanitizer reports go to the test's output, where .ci/sanitize
        # counts them.
        for line in self.lines():
            if ("Sanitizer" in line or "runtime error:" in line or
                    line.startswith("    #")):
                print("gateway:", line)


# ---- TLS-PSK clients -----------------------------------------------------------

def wait_fd(sock, events, timeout):
    """poll(), not select(): a test may hold thousands of descriptors."""
    p = select.poll()
    p.register(sock, events | select.POLLERR | select.POLLHUP)
    return bool(p.poll(max(0, int(timeout * 1000))))


class Client:
    """Entity A over a real TCP socket: the handshake, then HTTP/1.1
    requests on the association (keep-alive)."""

    def __init__(self, port, kpsa_id=KPSA_ID, key=KEY, source=None,
                 timeout=STEP_S):
        self.ks = m2mpsk.Keystore()
        self.ks.add(kpsa_id, key, None, IDB, 0, 0)
        self.cfg = m2mpsk.Config()
        self.a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR,
                                    m2mpsk.TRANSPORT_TLS, self.cfg, self.ks,
                                    kpsa_id)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.timeout = timeout
        self.plain = b""
        self.eof = False
        self.a.start(now_ms(), int(time.time()))
        self._pump(lambda: self.a.state() != m2mpsk.STATE_HANDSHAKING)
        if self.a.state() != m2mpsk.STATE_ESTABLISHED:
            raise ConnectionError("handshake failed: %s" %
                                  m2mpsk.reason_name(self.a.failure()))

    def _flush(self):
        while True:
            out = self.a.drain()
            if not out:
                return
            while out:
                wait_fd(self.sock, select.POLLOUT, self.timeout)
                n = self.sock.send(out)
                out = out[n:]

    def _pump(self, until):
        end = time.monotonic() + self.timeout
        while True:
            self._flush()
            if until():
                return
            if self.eof:
                raise ConnectionError("connection closed")
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the gateway")
            if not wait_fd(self.sock, select.POLLIN, min(left, 0.2)):
                continue
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                continue
            try:
                self.a.feed(data, now_ms())
            except m2mpsk.Error as e:
                self._flush()
                raise ConnectionError("association failed: %s" % e)
            st = self.a.state()
            while st == m2mpsk.STATE_ESTABLISHED:
                try:
                    chunk = self.a.read(65536)
                except m2mpsk.Closed:
                    self.eof = True
                    break
                if not chunk:
                    break
                self.plain += chunk

    def send(self, raw):
        for i in range(0, len(raw), 16384):
            self.a.write(raw[i:i + 16384])
        self._flush()

    def request(self, method, path, headers=None, body=b"", extra=b""):
        """Sends one request; returns (status, headers dict lower-cased,
        body)."""
        h = {"Host": "cse", "Content-Length": str(len(body))}
        h.update(headers or {})
        raw = "%s %s HTTP/1.1\r\n" % (method, path)
        raw += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        self.send(raw.encode() + body + extra)
        return self.response()

    def response(self):
        self._pump(lambda: b"\r\n\r\n" in self.plain)
        head, rest = self.plain.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        self.plain = rest
        self._pump(lambda: len(self.plain) >= n)
        body, self.plain = self.plain[:n], self.plain[n:]
        return status, hdrs, body

    def close(self):
        try:
            self.sock.close()
        finally:
            self.a.close()
            self.cfg.close()
            self.ks.close()


def ae_create_headers(origin="C", ri="r1"):
    return {"X-M2M-Origin": origin, "X-M2M-RI": ri, "X-M2M-RVI": "3",
            "Content-Type": "application/json;ty=2"}


AE_BODY = json.dumps({"m2m:ae": {"rn": "ae", "api": "Ntest", "rr": False,
                                 "srv": ["3"]}}).encode()
