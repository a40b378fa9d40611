#!/usr/bin/env python3
"""`m2mpsk gateway` in front of a real, unmodified CSE: Mobius.

mobius_peer.py starts Mobius (IoTKETI's oneM2M IN-CSE, CSE-ID /Mobius2)
with a private MariaDB on 127.0.0.1. Keys come from `m2mpsk keygen` for
KpsaID test@onem2m.com with no IdA (so the gateway binds the Credential-ID
12-test@onem2m.com) and IdB /Mobius2. Then, through `m2mpsk gateway`:

  http  an AE over TLS-PSK, HTTP binding (TS-0009):
        - before registering, a <container> CREATE from "C" is refused with
          4106 (a Credential-ID association passes only an <AE> CREATE)
          and never reaches Mobius;
        - registers: <AE> CREATE with From "C", so Mobius assigns the AE-ID;
          the gateway binds that AE-ID from the response;
        - creates a <container> and a <contentInstance>, reads the
          contentInstance back (…/la) and checks its content;
        - a forged From (another AE-ID) creating a <container>: 403 with
          X-M2M-RSC 4106 and the request's X-M2M-RI, answered by the gateway;
          Mobius never saw it: read directly, the container does not exist,
          and Mobius's log (which names every request's path) has no trace
          of its name or RQI, while it has the legitimate ones;
  coap  the same for a second AE over DTLS-PSK, CoAP binding (TS-0008):
        oneM2M options From (256), RQI (257), TY (267), RSC (265).

    mobius_e2e.py --m2mpsk PATH --python-dir DIR   through the gateway
    mobius_e2e.py --direct                          the same sequences
        straight to Mobius over plain HTTP and CoAP: the harness's baseline.
        There the forged From is accepted by Mobius (it authenticates no
        originator), which shows what the gateway is there for.

Without the m2mpsk Python binding (--python-dir empty: .ci/sanitize builds
none), openssl s_client carries the HTTP sequence and CoAP is left out.

Exit 0 pass, 1 fail, 77 skip (no Mobius source, no MariaDB or Node, npm
registry unreachable, a tool without the gateway: the reason is
printed). Bounded: DEADLINE_S overall (ctest's TIMEOUT is larger), STEP_S
for any one event. Python 3 standard library, plus the m2mpsk binding (or
openssl) for the PSK clients.
"""

import argparse
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.client

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import coap_msg  # noqa: E402
import mobius_peer  # noqa: E402
from mobius_peer import Skip, SetupError, Fail, log  # noqa: E402

DEADLINE_S = 200  # cold (npm install, mariadb-install-db) included
STEP_S = 10.0
KPSA_ID = "test@onem2m.com"
CREDENTIAL_ID = "12-" + KPSA_ID
IDB = mobius_peer.CSE_ID
CSE_BASE = mobius_peer.CSE_BASE
APP_ID = "Nm2mpsk-gateway-test"


def now_ms():
    return int(time.monotonic() * 1000)


def check(cond, what):
    if not cond:
        raise Fail(what)
    log("ok: " + what)


# ---------------------------------------------------------------- transports
# Each client has request(method, path, origin, rqi, ty, body) returning
# (status, rsc, rqi, body): status an HTTP code or a CoAP "c.dd" string,
# rsc an int or None, body the parsed JSON (or the raw text).

def http_request_bytes(method, path, origin, rqi, ty, body, port):
    head = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % port,
            "Accept: application/json", "X-M2M-Origin: " + origin,
            "X-M2M-RI: " + rqi, "X-M2M-RVI: 3"]
    data = json.dumps(body).encode() if body is not None else b""
    if body is not None:
        ct = "application/json" + (";ty=%d" % ty if ty else "")
        head.append("Content-Type: " + ct)
    head.append("Content-Length: %d" % len(data))
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def parse_body(raw):
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def http_response_complete(buf):
    """(status, headers, body) once `buf` holds a whole HTTP/1.1 response
    (Content-Length or chunked), else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise Fail("not an HTTP response: %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    rest = buf[end + 4:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, i = b"", 0
        while True:
            nl = rest.find(b"\r\n", i)
            if nl < 0:
                return None
            size = int(rest[i:nl].split(b";")[0], 16)
            if size == 0:
                return int(m.group(1)), headers, body
            if len(rest) < nl + 2 + size + 2:
                return None
            body += rest[nl + 2:nl + 2 + size]
            i = nl + 2 + size + 2
    n = int(headers.get("content-length", "0"))
    if len(rest) < n:
        return None
    return int(m.group(1)), headers, rest[:n]


class PlainHttp:
    name = "HTTP"

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port,
                                               timeout=STEP_S)

    def request(self, method, path, origin, rqi, ty=None, body=None):
        headers = {"Accept": "application/json", "X-M2M-Origin": origin,
                   "X-M2M-RI": rqi, "X-M2M-RVI": "3"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json" + (
                ";ty=%d" % ty if ty else "")
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        rsc = r.getheader("X-M2M-RSC")
        return (r.status, int(rsc) if rsc else None, r.getheader("X-M2M-RI"),
                parse_body(raw))

    def close(self):
        self.conn.close()


class PskSession:
    """An m2mpsk Entity A association over a connected socket."""

    def __init__(self, m2mpsk, transport, port, keys):
        self.m = m2mpsk
        self.dtls = transport == "dtls"
        kind = socket.SOCK_DGRAM if self.dtls else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.connect(("127.0.0.1", port))
        self.ks = m2mpsk.Keystore()
        self.ks.load_file(keys)
        self.cfg = m2mpsk.Config()
        self.cfg.set_handshake_timeout(int(STEP_S * 1000))
        self.a = m2mpsk.Association(
            m2mpsk.ROLE_INITIATOR,
            m2mpsk.TRANSPORT_DTLS if self.dtls else m2mpsk.TRANSPORT_TLS,
            self.cfg, self.ks, KPSA_ID)
        self.rx = []  # plaintext: whole records for DTLS, chunks for TLS
        self.a.start(now_ms())
        self.pump(lambda: self.a.state() != m2mpsk.STATE_HANDSHAKING)
        if self.a.state() != m2mpsk.STATE_ESTABLISHED:
            raise Fail("%s-PSK handshake with the gateway failed: %s" % (
                transport.upper(), self.a.failure_detail()))
        log("%s-PSK association: suite %s, peer %s" % (
            transport.upper(), self.a.suite(), self.a.peer_id()))
        if self.a.peer_id() != IDB:
            raise Fail("the gateway authenticated as %r, not %r"
                       % (self.a.peer_id(), IDB))

    def pump(self, until, timeout=STEP_S):
        end = time.monotonic() + timeout
        while True:
            while True:
                out = self.a.drain()
                if not out:
                    break
                self.sock.send(out)
            closed = False
            if self.a.state() == self.m.STATE_ESTABLISHED:
                while True:
                    try:
                        data = self.a.read()
                    except self.m.Closed:
                        closed = True
                        break
                    if not data:
                        break
                    self.rx.append(data)
            if until():
                return
            if closed:
                raise Fail("the gateway closed the association (close_notify)")
            if time.monotonic() > end:
                raise Fail("timed out after %.0f s (association state %d)"
                           % (timeout, self.a.state()))
            wait = 0.2
            t = self.a.next_timeout()
            if t is not None:
                wait = max(0.0, min(wait, (t - now_ms()) / 1000))
            r, _, _ = select.select([self.sock], [], [], wait)
            if r:
                try:
                    data = self.sock.recv(65536)
                except ConnectionRefusedError:
                    raise Fail("the gateway's port refused the datagram")
                if not data and not self.dtls:
                    raise Fail("the gateway closed the TCP connection")
                self.a.feed(data, now_ms())
            else:
                self.a.handle_timeout(now_ms())

    def send(self, data):
        self.a.write(data)
        self.pump(lambda: True)

    def close(self):
        try:
            self.a.close_notify()
            self.pump(lambda: True, timeout=1)
        except Exception:  # best effort on the way out
            pass
        self.a.close()
        self.cfg.close()
        self.ks.close()
        self.sock.close()


class PskHttp:
    name = "HTTP over TLS-PSK"

    def __init__(self, m2mpsk, port, keys):
        self.port = port
        self.s = PskSession(m2mpsk, "tls", port, keys)

    def request(self, method, path, origin, rqi, ty=None, body=None):
        self.s.rx.clear()
        self.s.send(http_request_bytes(method, path, origin, rqi, ty, body,
                                       self.port))
        got = []

        def complete():
            got[:] = [http_response_complete(b"".join(self.s.rx))]
            return got[0] is not None
        self.s.pump(complete)
        status, headers, raw = got[0]
        rsc = headers.get("x-m2m-rsc")
        return (status, int(rsc) if rsc else None, headers.get("x-m2m-ri"),
                parse_body(raw))

    def close(self):
        self.s.close()


class SClientHttp:
    """HTTP over TLS-PSK with `openssl s_client` as Entity A: one process,
    one association, the requests one after the other (where the m2mpsk
    Python binding is not built, e.g. .ci/sanitize). The key reaches
    s_client on its command line, as openssl takes it; it is never
    logged."""
    name = "HTTP over TLS-PSK (openssl s_client)"

    def __init__(self, port, key_hex, guardian):
        self.port = port
        exe = shutil.which("openssl")
        if exe is None:
            raise Skip("neither the m2mpsk Python binding nor openssl: no "
                       "TLS-PSK client")
        self.proc = subprocess.Popen(
            [exe, "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1_2",
             "-psk_identity", KPSA_ID, "-psk", key_hex, "-cipher",
             "PSK-AES128-CBC-SHA256", "-quiet", "-ign_eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=mobius_peer._pdeathsig)
        self.guardian = guardian
        guardian.watch(self.proc.pid)
        self.buf = b""

    def request(self, method, path, origin, rqi, ty=None, body=None):
        self.buf = b""
        try:
            self.proc.stdin.write(http_request_bytes(
                method, path, origin, rqi, ty, body, self.port))
            self.proc.stdin.flush()
        except OSError as e:
            raise Fail("openssl s_client is gone (%s)" % e)
        end = time.monotonic() + STEP_S
        fd = self.proc.stdout.fileno()
        while True:
            got = http_response_complete(self.buf)
            if got:
                break
            left = end - time.monotonic()
            if left <= 0:
                raise Fail("no HTTP response through openssl s_client in "
                           "%.0f s (%r)" % (STEP_S, self.buf[-200:]))
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise Fail("openssl s_client ended: the handshake or the "
                               "connection failed (%r)" % self.buf[-200:])
                self.buf += chunk
        status, headers, raw = got
        rsc = headers.get("x-m2m-rsc")
        return (status, int(rsc) if rsc else None, headers.get("x-m2m-ri"),
                parse_body(raw))

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        mobius_peer.stop_group(self.proc, "openssl s_client", self.guardian)


METHODS = {"GET": coap_msg.GET, "POST": coap_msg.POST, "PUT": coap_msg.PUT,
           "DELETE": coap_msg.DELETE}


class CoapBase:
    def __init__(self):
        self.mid = secrets.randbelow(65536)

    def _send(self, data):
        raise NotImplementedError

    def _recv(self, timeout):
        raise NotImplementedError

    def request(self, method, path, origin, rqi, ty=None, body=None):
        self.mid = (self.mid + 1) & 0xFFFF
        token = secrets.token_bytes(4)
        payload = json.dumps(body).encode() if body is not None else b""
        msg = coap_msg.request(METHODS[method], path, origin, rqi, self.mid,
                               token, ty=ty, payload=payload)
        end = time.monotonic() + STEP_S
        next_tx, tries = 0.0, 0
        acked = False
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise Fail("no CoAP response to %s %s in %.0f s"
                           % (method, path, STEP_S))
            # Retransmit a CON until the ACK (RFC 7252 §4.2, simplified).
            if not acked and time.monotonic() >= next_tx and tries < 4:
                self._send(msg)
                tries += 1
                next_tx = time.monotonic() + 2.0 * tries
            for data in self._recv(min(left, 0.2)):
                try:
                    rsp = coap_msg.decode(data)
                except ValueError as e:
                    raise Fail("undecodable CoAP from the server: %s" % e)
                if rsp["type"] == coap_msg.ACK and rsp["mid"] == self.mid:
                    acked = True
                    if rsp["code"] == 0:
                        continue  # empty ACK: a separate response follows
                if rsp["token"] != token:
                    continue
                if rsp["type"] == coap_msg.CON:
                    self._send(coap_msg.encode(coap_msg.ACK, 0, rsp["mid"]))
                rqi_back = coap_msg.option(rsp, coap_msg.OM2M_RQI)
                return (coap_msg.code_str(rsp["code"]),
                        coap_msg.option_uint(rsp, coap_msg.OM2M_RSC),
                        rqi_back.decode() if rqi_back is not None else None,
                        parse_body(rsp["payload"]))


class PlainCoap(CoapBase):
    name = "CoAP"

    def __init__(self, port):
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))

    def _send(self, data):
        self.sock.send(data)

    def _recv(self, timeout):
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return []
        return [self.sock.recv(65536)]

    def close(self):
        self.sock.close()


class PskCoap(CoapBase):
    name = "CoAP over DTLS-PSK"

    def __init__(self, m2mpsk, port, keys):
        super().__init__()
        self.s = PskSession(m2mpsk, "dtls", port, keys)

    def _send(self, data):
        self.s.send(data)

    def _recv(self, timeout):
        if not self.s.rx:
            try:
                self.s.pump(lambda: bool(self.s.rx), timeout=timeout)
            except Fail:
                if self.s.a.state() != self.s.m.STATE_ESTABLISHED:
                    raise
        out, self.s.rx[:] = list(self.s.rx), []
        return out

    def close(self):
        self.s.close()


# ---------------------------------------------------------------- gateway

class Gateway:
    def __init__(self, m2mpsk_tool, keys, http_backend, coap_backend,
                 guardian, workdir):
        self.log_path = os.path.join(workdir, "gateway.log")
        args = [m2mpsk_tool, "gateway", "--keys", keys, "--id", IDB,
                "--http-listen", "127.0.0.1:0",
                "--http-backend", "127.0.0.1:%d" % http_backend]
        if coap_backend:
            args += ["--coap-listen", "127.0.0.1:0",
                     "--coap-backend", "127.0.0.1:%d" % coap_backend]
        args += ["--threads", "1", "-v"]
        want = 2 if coap_backend else 1
        log("starting: " + " ".join(args))
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=mobius_peer._pdeathsig)
        self.guardian = guardian
        guardian.watch(self.proc.pid)
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ports = {}
        end = time.monotonic() + STEP_S
        with self.cond:
            while not any(l == "m2mpsk: gateway ready" for l in self.lines):
                left = end - time.monotonic()
                if self.proc.poll() is not None or left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        text = "\n".join(self.lines)
        if self.proc.poll() is not None:
            if re.search(r"built without|unknown command|usage: m2mpsk "
                         r"COMMAND", text):
                raise Skip("this m2mpsk has no gateway:\n" + text[-800:])
            raise Fail("the gateway exited with %d:\n%s"
                       % (self.proc.returncode, text[-2000:]))
        for l in self.lines:
            m = re.match(r"m2mpsk: gateway listening (http|coap) "
                         r"127\.0\.0\.1:(\d+)$", l)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
        if "m2mpsk: gateway ready" not in self.lines or \
                len(self.ports) != want:
            raise Fail("the gateway is not ready after %.0f s:\n%s"
                       % (STEP_S, text[-2000:]))
        log("gateway ready: %s" % ", ".join(
            "%s %d" % kv for kv in sorted(self.ports.items())))

    def _read(self):
        with open(self.log_path, "w") as out:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                out.write(line + "\n")
                out.flush()
                with self.cond:
                    self.lines.append(line)
                    self.cond.notify_all()

    def text(self):
        with self.cond:
            return "\n".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=STEP_S)
            except subprocess.TimeoutExpired:
                rc = None
        else:
            rc = self.proc.returncode
        mobius_peer.stop_group(self.proc, "gateway", self.guardian,
                               sig=signal.SIGKILL)
        self.reader.join(timeout=2)
        return rc


def keygen(tool, keys, want_hex=False):
    """Adds the record; returns the key in hex when asked (for openssl)."""
    r = subprocess.run([tool, "keygen", "--keys", keys, "--kpsa-id", KPSA_ID,
                        "--idb", IDB] + (["--print", "hex"] if want_hex
                                         else []),
                       capture_output=True, text=True, timeout=STEP_S)
    if r.returncode != 0:
        raise Fail("m2mpsk keygen failed (%d): %s" % (r.returncode,
                                                      r.stderr.strip()))
    if want_hex:
        m = re.search(r"\b([0-9a-fA-F]{32,128})\b", r.stdout)
        if not m:
            raise Fail("m2mpsk keygen --print hex printed no key")
        return m.group(1)
    return None


# ---------------------------------------------------------------- sequence

def ok_status(status, http_code, coap_code):
    return status in (http_code, coap_code)


def ae_sequence(client, tag, peer, gated):
    """Registers an AE through `client`, creates a container and a
    contentInstance, reads it back; then a forged From. `peer` is the
    Mobius (direct reads, its log); `gated` says whether a gateway is in
    front (the forged request must be refused) or not (Mobius takes it)."""
    what = client.name
    run = secrets.token_hex(4)
    ae_rn = "ae-%s-%s" % (tag, run)
    rqi = "rqi-%s-%s-" % (tag, run)
    early_rn = "early-%s-%s" % (tag, run)
    if gated:
        # Bound to the Credential-ID, the association lets only an <AE>
        # CREATE through until an AE-ID is bound: a <container> CREATE
        # under the CSEBase, even from "C", is refused here.
        st, rsc, ri, body = client.request(
            "POST", "/" + CSE_BASE, "C", rqi + "early", ty=3,
            body={"m2m:cnt": {"rn": early_rn}})
        check(ok_status(st, 403, "4.03") and rsc == 4106,
              "%s: before registration, a <container> CREATE from C: %s RSC "
              "%s" % (what, st, rsc))
    st, rsc, ri, body = client.request(
        "POST", "/" + CSE_BASE, "C", rqi + "ae", ty=2,
        body={"m2m:ae": {"rn": ae_rn, "api": APP_ID, "rr": False,
                         "srv": ["3"]}})
    check(ok_status(st, 201, "2.01") and rsc == 2001,
          "%s: <AE> CREATE with From C: %s RSC %s (%s)" % (what, st, rsc,
                                                          _short(body)))
    aei = body.get("m2m:ae", {}).get("aei") if isinstance(body, dict) else None
    check(bool(aei) and aei != "C",
          "%s: Mobius assigned the AE-ID %r" % (what, aei))
    check(ri == rqi + "ae", "%s: the response carries the request's RQI %r"
          % (what, ri))
    ae_path = "/%s/%s" % (CSE_BASE, ae_rn)

    st, rsc, ri, body = client.request(
        "POST", ae_path, aei, rqi + "cnt", ty=3,
        body={"m2m:cnt": {"rn": "cnt"}})
    check(ok_status(st, 201, "2.01") and rsc == 2001,
          "%s: <container> CREATE from %s: %s RSC %s" % (what, aei, st, rsc))

    content = "m2mpsk %s %s" % (tag, secrets.token_hex(8))
    st, rsc, ri, body = client.request(
        "POST", ae_path + "/cnt", aei, rqi + "cin", ty=4,
        body={"m2m:cin": {"con": content, "cnf": "text/plain:0"}})
    check(ok_status(st, 201, "2.01") and rsc == 2001,
          "%s: <contentInstance> CREATE: %s RSC %s" % (what, st, rsc))

    st, rsc, ri, body = client.request("GET", ae_path + "/cnt/la", aei,
                                       rqi + "get")
    got = body.get("m2m:cin", {}).get("con") if isinstance(body, dict) \
        else None
    check(ok_status(st, 200, "2.05") and rsc == 2000 and got == content,
          "%s: RETRIEVE .../cnt/la: %s RSC %s, con %r" % (what, st, rsc, got))

    # The forged From: another AE's AE-ID, creating a container whose name
    # and RQI appear nowhere else.
    forged_from = "Cmallory-" + run
    forged_rn = "forged-%s-%s" % (tag, run)
    forged_rqi = "rqi-forged-%s-%s" % (tag, run)
    st, rsc, ri, body = client.request(
        "POST", ae_path, forged_from, forged_rqi, ty=3,
        body={"m2m:cnt": {"rn": forged_rn}})
    pst, prsc, _, _ = mobius_peer_get(peer, ae_path + "/" + forged_rn)
    # Mobius logs "METHOD : PATH" for each request it takes, the resources
    # it creates, and (its CoAP proxy) the bodies it forwards. Our direct
    # read above is logged as a GET ("GET : PATH", "get_resource_from_url
    # ... PATH", and its 4004 with the ri "GET-PATH..."); any other line
    # naming the forged container means the forged request got in.
    mlog = peer.log_text().splitlines()
    posts = sum(1 for l in mlog if l == "POST : " + ae_path)
    direct_read = ("GET : ", "get_resource_from_url", '"ri":"GET-')
    traces = [l for l in mlog if (forged_rn in l or forged_rqi in l)
              and not any(m in l for m in direct_read)]
    if gated:
        check(ok_status(st, 403, "4.03") and rsc == 4106,
              "%s: forged From %s: %s RSC %s (%s)" % (what, forged_from, st,
                                                      rsc, _short(body)))
        check(ri == forged_rqi, "%s: the refusal carries the request's RQI"
              % what)
        check(pst == 404 and prsc == 4004,
              "%s: read directly from Mobius, %s does not exist (%s RSC %s)"
              % (what, forged_rn, pst, prsc))
        pst, prsc, _, _ = mobius_peer_get(peer, "/%s/%s" % (CSE_BASE,
                                                           early_rn))
        check(pst == 404 and prsc == 4004 and not any(
            early_rn in l and not any(m in l for m in direct_read)
            for l in peer.log_text().splitlines()),
              "%s: Mobius never saw the early <container> CREATE (404 when "
              "read directly, no trace in its log)" % what)
        check(posts == 1 and not traces,
              "%s: Mobius's log has one POST to the AE (the container's) and "
              "no trace of the forged one (%d POSTs, %r)" % (what, posts,
                                                             traces[:3]))
    else:
        check(ok_status(st, 201, "2.01") and rsc == 2001 and pst == 200,
              "%s: baseline: Mobius itself takes the forged From %s (%s RSC "
              "%s; read back %s): nothing in Mobius checks originators"
              % (what, forged_from, st, rsc, pst))
        check(posts == 2 and traces,
              "%s: baseline: Mobius's log shows both POSTs to the AE and the "
              "forged container (what the gated run must not show)" % what)
    return aei


def mobius_peer_get(peer, path):
    st, rsc, body = mobius_peer.http_get(peer.http_port, path,
                                         rqi="direct-" + secrets.token_hex(4))
    return st, int(rsc) if rsc else None, None, body


def _short(body, n=160):
    s = json.dumps(body) if not isinstance(body, str) else body
    return s if len(s) <= n else s[:n] + "..."


# ---------------------------------------------------------------- main

def run(args):
    m2mpsk = None
    if not args.direct:
        if not args.m2mpsk or not os.access(args.m2mpsk, os.X_OK):
            raise Fail("--m2mpsk PATH (the m2mpsk tool) is required without "
                       "--direct")
        if args.python_dir and os.path.isdir(args.python_dir):
            sys.path.insert(0, args.python_dir)
            import m2mpsk  # noqa: F811
        else:
            # No binding (.ci/sanitize builds none): openssl s_client for
            # HTTP; the DTLS-PSK CoAP client needs the binding.
            log("no m2mpsk Python binding (--python-dir %r): HTTP through "
                "openssl s_client, CoAP left out" % args.python_dir)
            args.http_only = True
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="m2mpsk-gw-mobius-") as work, \
            mobius_peer.Mobius(keep=args.keep) as peer:
        gw = None
        clients = []
        try:
            if args.direct:
                http_c = PlainHttp(peer.http_port)
                clients.append(http_c)
                coap_c = PlainCoap(peer.coap_port)
                clients.append(coap_c)
            else:
                keys = os.path.join(work, "keys")
                key_hex = keygen(args.m2mpsk, keys, want_hex=m2mpsk is None)
                gw = Gateway(args.m2mpsk, keys, peer.http_port,
                             None if args.http_only else peer.coap_port,
                             peer.guardian, work)
                if m2mpsk:
                    http_c = PskHttp(m2mpsk, gw.ports["http"], keys)
                else:
                    http_c = SClientHttp(gw.ports["http"], key_hex,
                                         peer.guardian)
                clients.append(http_c)
                if not args.http_only:
                    coap_c = PskCoap(m2mpsk, gw.ports["coap"], keys)
                    clients.append(coap_c)
            t1 = time.monotonic()
            a1 = ae_sequence(http_c, "http", peer, gated=not args.direct)
            if args.http_only:
                log("CoAP left out (a gateway without its CoAP binding, or "
                    "no Python binding for the DTLS-PSK client)")
            else:
                a2 = ae_sequence(coap_c, "coap", peer, gated=not args.direct)
                check(a1 != a2, "two AEs, two AE-IDs (%s, %s)" % (a1, a2))
            log("sequences took %.1f s; setup %.1f s (npm %.1f, MariaDB %.1f,"
                " Mobius %.1f)" % (time.monotonic() - t1, t1 - t0,
                                   peer.timings["npm"], peer.timings["db"],
                                   peer.timings["mobius"]))
        finally:
            failing = sys.exc_info()[1] is not None
            for c in clients:
                try:
                    c.close()
                except Exception as e:  # closing must not hide the result
                    log("closing %s: %s" % (c.name, e))
            if gw:
                rc = gw.stop()
                if args.verbose or failing or rc != 0:
                    log("gateway log:\n" + gw.text()[-3000:])
                if rc != 0 and not failing:
                    raise Fail("the gateway exited with %s on SIGTERM, not 0"
                               % rc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--direct", action="store_true",
                    help="no gateway: plain HTTP and CoAP to Mobius")
    ap.add_argument("--m2mpsk", help="the m2mpsk tool")
    ap.add_argument("--python-dir", help="the m2mpsk Python binding's dir")
    ap.add_argument("--coap", choices=["yes", "no"], default="yes",
                    help="no: a gateway built without its CoAP binding, "
                    "HTTP only")
    ap.add_argument("--keep", action="store_true",
                    help="keep Mobius's scratch directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    args.http_only = args.coap == "no" and not args.direct

    def body():
        run(args)
        return "direct" if args.direct else "gateway"
    return mobius_peer.bounded_main(body, DEADLINE_S)


if __name__ == "__main__":
    sys.exit(main())
