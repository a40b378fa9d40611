#!/usr/bin/env python3
"""A DTLS ClientHello flood against `m2mpsk serve --udp` (issue 15).

Usage: dtls_flood.py PATH/TO/m2mpsk

The flood: real DTLS 1.2 ClientHellos (the first datagram of this build's
own `m2mpsk connect --udp`, default options, captured on loopback), each
with a fresh random, sent from 200 UDP sockets on 127.0.0.1 that never
answer what comes back, as spoofed sources could not. Against serve with
no option but --udp (default-options: --max-conn 64), then with
--max-conn 8 --audit -v for each engine choice (default, --engine openssl,
--engine boringssl), it measures:
  - bytes the server sent to the flooders / bytes they sent (within the
    flood and a window after it long enough for two retransmissions);
  - associations the server created for them (-v's "new association"
    lines; not in default-options, which has no -v);
  - whether a legitimate `m2mpsk connect --udp` completes during the flood
    and right after it;
  - the server's VmRSS growth over the flood.
The default and openssl cases must reflect at most 1x, create no
association, let both connects through and grow RSS by under 2 MiB.
RSS "before" is read after one legitimate association (the warm-up that
makes the engine's contexts). BoringSSL's DTLS server has no cookie
exchange: its figures are printed with RECORDED, and UNEXPECTED if the
flood did not fill the bound, but never fail the test: they document the
difference, not a goal.
"""
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
import traceback

M2MPSK = os.path.abspath(sys.argv[1])
IDB = "//m2m.example.com/cse-in"
IDA = "//m2m.example.com/cse-in/Cae1"
KPSA_ID = "test@onem2m.com"
SOCKETS = 200
MIN_HELLOS = 2000
MAX_CONN = 8
WINDOW_S = 3.5  # after the flood: retransmissions come at 1 s and 3 s
CONNECT_LIMIT_S = 10
RSS_LIMIT_KIB = 2048
FLOOD_LIMIT_S = 8


def keygen(path):
    r = subprocess.run([M2MPSK, "keygen", "--keys", path, "--kpsa-id",
                        KPSA_ID, "--idb", IDB, "--ida", IDA],
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr


class Server:
    """m2mpsk serve in the background; waits for its listening line."""

    def __init__(self, keys, *extra):
        self.proc = subprocess.Popen(
            [M2MPSK, "serve", "--keys", keys, "--id", IDB, "--listen",
             "127.0.0.1", *extra], stderr=subprocess.PIPE,
            start_new_session=True)
        self.lines = []
        self.lock = threading.Lock()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on (\S+):(\d+)", line)
            if m:
                self.port = int(m.group(2))
                # -v logs every datagram: a full pipe would stop the server.
                self.reader = threading.Thread(target=self._read,
                                               daemon=True)
                self.reader.start()
                return
        self.kill()
        raise AssertionError("serve did not start: %r" % self.lines)

    def _read(self):
        for line in iter(self.proc.stderr.readline, b""):
            with self.lock:
                self.lines.append(line.decode(errors="replace"))

    def log(self):
        with self.lock:
            return "".join(self.lines)

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS for serve")

    def sanitized(self):
        """True when the server runs under AddressSanitizer (.ci/sanitize):
        its quarantine and shadow memory, not our state, then dominate
        VmRSS, so the RSS bound measures nothing."""
        with open("/proc/%d/maps" % self.proc.pid) as f:
            return "libasan" in f.read()

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass
        self.reader.join(10)
        return self.log()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)


def capture_hello(keys):
    """The first datagram of `m2mpsk connect --udp` with default options:
    a whole DTLS 1.2 ClientHello without a cookie."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        client = subprocess.Popen(
            [M2MPSK, "connect", "127.0.0.1:%d" % s.getsockname()[1], "--udp",
             "--keys", keys, "--kpsa-id", KPSA_ID],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            s.settimeout(10)
            hello, _ = s.recvfrom(65535)
        finally:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait(timeout=5)
    # Record: handshake (22), DTLS 1.0 or 1.2 (OpenSSL's first flight says
    # 1.0 in the record); one whole ClientHello (1) in it, not fragmented,
    # client_version DTLS 1.2, no cookie.
    assert hello[0] == 22 and hello[1:3] in (b"\xfe\xff", b"\xfe\xfd"), \
        hello[:16].hex()
    assert int.from_bytes(hello[11:13], "big") == len(hello) - 13
    body = hello[13:]
    assert body[0] == 1, "not a ClientHello"
    length = int.from_bytes(body[1:4], "big")
    assert body[6:9] == b"\0\0\0" and body[9:12] == body[1:4]
    assert len(body) == 12 + length
    assert body[12:14] == b"\xfe\xfd"
    sid = body[46]
    assert body[47 + sid] == 0, "captured hello carries a cookie"
    return hello


RANDOM_AT = 13 + 12 + 2  # record header, handshake header, client_version


def varied(hello):
    """The same ClientHello with a fresh 32-byte random."""
    return hello[:RANDOM_AT] + os.urandom(32) + hello[RANDOM_AT + 32:]


def connect(port, keys, limit_s, payload):
    """A legitimate `m2mpsk connect --udp`, default options; returns
    (exit code or None if it outlived limit_s, seconds, stdout, stderr)."""
    t0 = time.monotonic()
    p = subprocess.Popen(
        [M2MPSK, "connect", "127.0.0.1:%d" % port, "--udp", "--keys", keys,
         "--kpsa-id", KPSA_ID], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        out, err = p.communicate(payload, timeout=limit_s)
        code = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=5)
        code = None
    return code, time.monotonic() - t0, out, err


class Flood:
    """SOCKETS sockets on 127.0.0.1 sending hellos, never answering."""

    def __init__(self, port, hello):
        self.dest = ("127.0.0.1", port)
        self.hello = hello
        self.socks = []
        for _ in range(SOCKETS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.sent = self.sent_bytes = 0
        self.got = self.got_bytes = 0
        self.answered = set()  # sockets the server wrote to
        self.hvr = 0           # HelloVerifyRequests among what came back

    def round(self):
        for s in self.socks:
            d = varied(self.hello)
            try:
                s.sendto(d, self.dest)
            except BlockingIOError:
                continue  # our own buffer full: not sent, not counted
            self.sent += 1
            self.sent_bytes += len(d)

    def drain(self, wait_s):
        """Reads whatever came back, waiting for more up to wait_s."""
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select(self.socks, [], [], max(left, 0))
            if not ready:
                if left <= 0:
                    return
                continue
            for s in ready:
                while True:
                    try:
                        d = s.recv(65535)
                    except BlockingIOError:
                        break
                    self.got += 1
                    self.got_bytes += len(d)
                    self.answered.add(s.fileno())
                    if len(d) > 13 and d[0] == 22 and d[13] == 3:
                        self.hvr += 1

    def close(self):
        for s in self.socks:
            s.close()


def attack(name, keys, hello, serve_extra, limit_s, observe=True):
    """observe: --max-conn 8, --audit and -v (whose "new association"
    lines count the flood's associations); else serve's own defaults
    (--max-conn 64), and associations are not counted."""
    watch = ("--max-conn", str(MAX_CONN), "--audit", "-v") if observe else ()
    srv = Server(keys, "--udp", *watch, *serve_extra)
    fig = {"name": name}
    flood = None
    try:
        # Warm-up: the first association makes the engine's contexts; a
        # flood that follows must not grow the process beyond that.
        code, secs, out, err = connect(srv.port, keys, CONNECT_LIMIT_S,
                                       b"warm-up\n")
        assert code == 0 and out == b"warm-up\n", (name, code, err)
        rss0 = srv.rss_kib()
        sanitized = srv.sanitized()
        peak = rss0
        flood = Flood(srv.port, hello)
        t0 = time.monotonic()
        flood.round()
        flood.drain(0.02)
        # The legitimate peer comes while the flood goes on: the flood
        # keeps going until it is done, and at least MIN_HELLOS are sent.
        during = {}
        started = flood.sent

        def legit():
            during.update(zip(("code", "secs", "out", "err"),
                              connect(srv.port, keys, limit_s,
                                      b"during\n")))
            # Hellos sent before it started and by the time it ended.
            during["flood"] = (started, flood.sent)
        th = threading.Thread(target=legit)
        th.start()
        while ((flood.sent < MIN_HELLOS or
                (th.is_alive() and flood.sent < 2 * MIN_HELLOS)) and
               time.monotonic() - t0 < FLOOD_LIMIT_S):
            flood.round()
            flood.drain(0.02)
            peak = max(peak, srv.rss_kib())
        flood_s = time.monotonic() - t0
        th.join(limit_s + 5)
        flood.drain(WINDOW_S)
        peak = max(peak, srv.rss_kib())
        rss1 = srv.rss_kib()
        after = dict(zip(("code", "secs", "out", "err"),
                         connect(srv.port, keys, limit_s, b"after\n")))
    finally:
        log = srv.stop()
        if flood:
            flood.close()
    # Associations: one per legitimate connect (warm-up, during, after)
    # that got through; any more were the flood's.
    news = len(re.findall(r": new association", log))
    legit = 1 + (during.get("code") == 0) + (after.get("code") == 0)
    fig.update(
        hellos=flood.sent, hello_bytes=flood.sent_bytes, replies=flood.got,
        reply_bytes=flood.got_bytes, hvr=flood.hvr,
        answered_sockets=len(flood.answered),
        ratio=flood.got_bytes / flood.sent_bytes, flood_s=flood_s,
        flood_assocs=news - legit if observe else None, during=during,
        after=after,
        rss0=rss0, rss1=rss1, peak=peak, growth=max(peak, rss1) - rss0,
        sanitized=sanitized,
        audit_established=log.count("audit type=established"),
        log=log)
    print("%s: %d hellos (%d bytes, %d bytes each) from %d sockets in "
          "%.2f s; server sent back %d datagrams (%d HelloVerifyRequests), "
          "%d bytes, to %d sockets; reflected/received = %d/%d = %.4f" % (
              name, fig["hellos"], fig["hello_bytes"], len(hello), SOCKETS,
              flood_s, fig["replies"], fig["hvr"], fig["reply_bytes"],
              fig["answered_sockets"], fig["reply_bytes"],
              fig["hello_bytes"], fig["ratio"]))
    if fig["answered_sockets"] and fig["hvr"] < fig["replies"]:
        per = fig["reply_bytes"] / (fig["answered_sockets"] * len(hello))
        print("%s: per answered socket, %.2fx its first hello's size "
              "within %.1f s of the flood" % (name, per, WINDOW_S))
    if observe:
        print("%s: associations created for the flood: %d (max-conn %d); "
              "audit established: %d" % (name, fig["flood_assocs"],
                                         MAX_CONN, fig["audit_established"]))
    for when in ("during", "after"):
        r = fig[when]
        print("%s: legitimate connect --udp %s the flood: exit %s in "
              "%.2f s%s" % (name, when, r.get("code"), r.get("secs", 0),
                            " (flood hellos sent: %d at its start, %d at "
                            "its end)" % r["flood"] if "flood" in r else ""))
    print("%s: VmRSS %d KiB before, %d KiB peak, %d KiB after: growth "
          "%d KiB" % (name, rss0, peak, rss1, fig["growth"]))
    sys.stdout.flush()
    return fig


def check_cookie_protected(fig):
    name = fig["name"]
    assert fig["hellos"] >= MIN_HELLOS, fig["hellos"]
    assert fig["ratio"] <= 1.0, "%s reflects %.4fx" % (name, fig["ratio"])
    # Everything that came back was a HelloVerifyRequest.
    assert fig["hvr"] == fig["replies"], (fig["hvr"], fig["replies"])
    if fig["flood_assocs"] is not None:
        assert fig["flood_assocs"] == 0, fig["log"][-4000:]
    for when in ("during", "after"):
        r = fig[when]
        assert r.get("code") == 0 and r.get("out") == \
            (b"%s\n" % when.encode()), (name, when, r)
    if fig["sanitized"]:
        print("%s: RSS bound not checked: the server runs under ASan" % name)
    else:
        assert fig["growth"] < RSS_LIMIT_KIB, (name, fig["growth"])


def main():
    t_start = time.monotonic()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        keys = os.path.join(tmp, "keys")
        keygen(keys)
        hello = capture_hello(keys)
        print("ClientHello of m2mpsk connect --udp (default options): "
              "%d bytes" % len(hello))
        # The build's engines, from `m2mpsk version`'s first line, e.g.
        # "m2mpsk 0.3.0 (boringssl+openssl)". Without OpenSSL (a
        # -DM2MPSK_TLS=boringssl build) the default has no cookies either,
        # and is recorded like BoringSSL.
        r = subprocess.run([M2MPSK, "version"], capture_output=True,
                           timeout=20)
        m = re.match(rb"m2mpsk \S+ \(([a-z+]+)\)", r.stdout)
        assert r.returncode == 0 and m, r.stdout
        engines = m.group(1).decode().split("+")
        print("engines in this build: %s" % ", ".join(engines))
        protected = check_cookie_protected if "openssl" in engines else None
        # BoringSSL's connects are expected to wait for ever: a shorter
        # bound keeps the whole run under a minute.
        limit = CONNECT_LIMIT_S if protected else 4
        cases = [("default-options", (), protected, limit, False),
                 ("default", (), protected, limit, True)]
        if "openssl" in engines:
            cases.append(("openssl", ("--engine", "openssl"),
                          check_cookie_protected, CONNECT_LIMIT_S, True))
        if "boringssl" in engines:
            cases.append(("boringssl", ("--engine", "boringssl"), None, 4,
                          True))
        for name, extra, check, limit_s, observe in cases:
            try:
                fig = attack(name, keys, hello, extra, limit_s, observe)
                if check:
                    check(fig)
                    print("PASS %s" % name)
                else:
                    # No cookies: state kept for the flood, the bound
                    # filled. Recorded, not a goal; a change here means the
                    # README's "BoringSSL has no cookies" is out of date.
                    filled = (fig["flood_assocs"] or 0) >= MAX_CONN or \
                        fig["during"].get("code") != 0
                    print("RECORDED %s (no cookie exchange): %s" % (
                        name, "the flood got associations and the bound "
                        "filled" if filled else
                        "UNEXPECTED: the flood did not fill the bound"))
            except Exception:
                failures += 1
                print("FAIL %s" % name)
                traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
    elapsed = time.monotonic() - t_start
    print("total %.1f s" % elapsed)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
