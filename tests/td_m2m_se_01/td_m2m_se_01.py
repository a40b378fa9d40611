#!/usr/bin/env python3
"""TD_M2M_SE_01 (oneM2M TS-0013 §8.4.1.1), end to end over loopback.

An AE (Entity A) sets up a security association with its Registrar CSE
(Entity B) using the provisioned symmetric key SAEF (TS-0003 §8.2.2.1),
KpsaID test@onem2m.com, over TLS 1.2 with TLS_PSK_WITH_AES_128_CBC_SHA256
or DTLS 1.2 with TLS_PSK_WITH_AES_128_CCM_8 (the suites TS-0003 §10.2.2
mandates), then registers with an <AE> CREATE: in the HTTP binding
(TS-0009) over TLS, in the CoAP binding (TS-0008) over DTLS. Entity B is
`m2mpsk gateway` in front of a small recording CSE (plain HTTP or plain
CoAP, in this process): it checks each request's From (X-M2M-Origin, CoAP
option 256) against the association's binding (TS-0004 §7.3.2.1, TS-0003
§7.2.1), answers a forged From with 4106 itself (HTTP 403, CoAP 4.03 with
option 265), and the CSE never sees it.

Cells (td_m2m_se_01.CELL.TRANSPORT, TRANSPORT tls or dtls):
  credential-id   m2mpsk connect -> m2mpsk gateway -> the CSE; the
                  record has no IdA, so the gateway binds the Credential-ID
                  12-test@onem2m.com, then the AE-ID the CSE assigns at the
                  AE CREATE (From "C"): 201/2.01, a request from that AE-ID
                  200/2.05, a forged From 403/4.03 with 4106
  ida             the same with IdA configured: From = IdA 201 then 200, a
                  forged From 4106
  openssl-client  openssl s_client as Entity A -> m2mpsk gateway: 201, 200,
                  then 4106 seen in s_client's output (HTTP over TLS; CoAP
                  over DTLS, each message one write to its stdin)
  openssl-server  m2mpsk connect as Entity A -> openssl s_server forced to
                  the suite: the handshake, the AE CREATE bytes received
                  verbatim, and s_server's 201 received verbatim

    td_m2m_se_01.py list
    td_m2m_se_01.py run CELL --m2mpsk PATH [--coap yes|no]
                                               exit 0 pass, 1 fail, 77 skip

Skips (exit 77, with the reason): a backend without the mandated suites
(BoringSSL: `m2mpsk version` does not list them), no `openssl` tool for
the openssl cells (a failure instead when CI=true), a tool built without
the gateway, and for the DTLS cells a gateway without its CoAP binding
(--coap no). Every process runs in its own process group, is bounded in
time and is killed at the end; a cell is bounded at CELL_DEADLINE_S.
Python 3 standard library and tests/gateway/coap_gateway.py's CoAP codec.
Over DTLS each CoAP message is one write to Entity A's stdin (m2mpsk connect
and s_client make one record of each read), and a response is found in its
stdout by its token, whole once its JSON payload parses.
"""

import argparse
import http.server
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
CELL_DEADLINE_S = 25  # ctest's TIMEOUT is 40 s
STEP_S = 8.0  # the longest wait for any one event
HANDSHAKE_TIMEOUT_MS = 5000

KPSA_ID = "test@onem2m.com"
IDB = "//m2m.example.com/cse-in"  # the Registrar CSE
IDA = "//m2m.example.com/cse-in/Ctd-ae-1"  # the AE's AE-ID, cell ida
FORGED = "//m2m.example.com/cse-in/Cmallory"  # another AE's AE-ID
SNI = "m2m.example.com"
APP_ID = "Ntd-m2m-se-01"

MANDATED = {  # transport -> (IANA name, OpenSSL name, version)
    "tls": ("TLS_PSK_WITH_AES_128_CBC_SHA256", "PSK-AES128-CBC-SHA256",
            "TLSv1.2"),
    "dtls": ("TLS_PSK_WITH_AES_128_CCM_8", "PSK-AES128-CCM8", "DTLSv1.2"),
}
CELLS = [c + "." + t
         for c in ("credential-id", "ida", "openssl-client", "openssl-server")
         for t in ("tls", "dtls")]

ASSOC_RX = (r"^m2mpsk: association peer=(?P<peer>\S+) kpsa-id=(?P<kpsa>\S+) "
            r"bound=(?P<bound>\S+) credential=(?P<cred>[01]) "
            r"suite=(?P<suite>\S+) version=(?P<version>\S+)"
            r"(?: engine=(?P<engine>\S+))?$")
OUTCOME_RX = r"^m2mpsk: (?:association|failure) .*$"


# The interop matrix's process handling: each peer in its own process
# group, its output collected by two threads, bounded waits, transcripts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "interop"))
import interop  # noqa: E402
from interop import Proc, _deadline  # noqa: E402
# The gateway tests' CoAP (RFC 7252) codec (standard library only).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "gateway"))
import coap_gateway as coap  # noqa: E402
Fail = interop.CellFailure
Deadline = interop.CellDeadline
interop.STEP_S = STEP_S  # its waits' default, here


# --------------------------------------------------------------------------
# oneM2M HTTP binding (TS-0009)


def request(method, path, origin, ri, ty=None, body=None):
    """One request, CRLF line ends, Content-Length body."""
    head = ["%s %s HTTP/1.1" % (method, path),
            "Host: %s" % SNI,
            "Accept: application/json",
            "X-M2M-Origin: %s" % origin,
            "X-M2M-RI: %s" % ri,
            "X-M2M-RVI: 3"]
    raw = b""
    if body is not None:
        raw = body.encode()
        head.append("Content-Type: application/json" +
                    (";ty=%d" % ty if ty is not None else ""))
    head.append("Content-Length: %d" % len(raw))
    return ("\r\n".join(head) + "\r\n\r\n").encode() + raw


def ae_create(origin, ri, rn="td-ae"):
    body = ('{"m2m:ae":{"rn":"%s","api":"%s","rr":false,"srv":["3"]}}'
            % (rn, APP_ID))
    return request("POST", "/cse-in", origin, ri, ty=2, body=body)


def find_response(data, start):
    """The first whole HTTP response in data[start:], as (status, headers,
    body, raw, end), or None."""
    i = data.find(b"HTTP/1.1 ", start)
    if i < 0:
        return None
    j = data.find(b"\r\n\r\n", i)
    if j < 0:
        return None
    lines = data[i:j].decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.1 (\d{3}) ", lines[0])
    if not m:
        raise Fail("malformed status line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise Fail("malformed response header %r" % line)
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(data) < j + 4 + length:
        return None
    body = data[j + 4:j + 4 + length]
    return int(m.group(1)), headers, body, data[i:j + 4 + length], \
        j + 4 + length


class Responses:
    """Reads successive responses from one process's stdout."""

    def __init__(self, proc):
        self.proc, self.pos, self.exchanges = proc, 0, []

    def next(self, what):
        r = self.proc.wait_until("stdout",
                                 lambda b: find_response(b, self.pos), what)
        self.pos = r[4]
        return r

    def exchange(self, req, what, status, rsc, ri):
        self.proc.write(req)
        code, headers, body, raw, _ = self.next(what)
        self.exchanges.append((req, raw))
        problems = []
        if code != status:
            problems.append("status %d, expected %d" % (code, status))
        if headers.get("x-m2m-rsc") != str(rsc):
            problems.append("X-M2M-RSC %r, expected %d"
                            % (headers.get("x-m2m-rsc"), rsc))
        if headers.get("x-m2m-ri") != ri:
            problems.append("X-M2M-RI %r, expected %r echoed"
                            % (headers.get("x-m2m-ri"), ri))
        if problems:
            raise Fail("%s: %s; response %r" % (what, "; ".join(problems),
                                                raw))
        return headers, body


def aei_of(body, what):
    m = re.fullmatch(rb'\{"m2m:ae":\{"aei":"([^"]+)"\}\}', body)
    if not m:
        raise Fail("%s: body %r is not {\"m2m:ae\":{\"aei\":...}}"
                   % (what, body))
    return m.group(1).decode()


# --------------------------------------------------------------------------
# Cells


class Cell:
    def __init__(self, name, m2mpsk, tmp):
        self.name = name
        self.kind, self.transport = name.rsplit(".", 1)
        self.suite, self.openssl_cipher, self.version = \
            MANDATED[self.transport]
        self.m2mpsk = m2mpsk
        self.tmp = tmp
        self.keys = os.path.join(tmp, "keys")
        self.procs = []
        self.responses = None  # HTTP: the Responses read from Entity A
        self.exchanges = []  # CoAP: (request, response) bytes
        self.cse = None

    def spawn(self, name, argv):
        p = Proc(name, argv)
        self.procs.append(p)
        return p

    def keygen(self, ida=None):
        argv = [self.m2mpsk, "keygen", "--keys", self.keys, "--kpsa-id",
                KPSA_ID, "--idb", IDB, "--print", "hex"]
        if ida:
            argv += ["--ida", ida]
        r = subprocess.run(argv, capture_output=True, timeout=STEP_S)
        key = r.stdout.decode().strip()
        if r.returncode != 0 or not re.fullmatch(r"[0-9a-f]{64}", key):
            raise Fail("keygen failed (%d): %r" % (r.returncode, r.stderr))
        return key

    def udp(self):
        return ["--udp"] if self.transport == "dtls" else []

    def gateway(self):
        """m2mpsk gateway as Entity B, its HTTP binding (TLS) or its CoAP
        binding (DTLS), forced to the mandated suite, in front of a
        recording CSE."""
        binding = "http" if self.transport == "tls" else "coap"
        self.cse = HttpCse() if binding == "http" else CoapCse()
        p = self.spawn("m2mpsk gateway", [
            self.m2mpsk, "gateway", "--keys", self.keys, "--id", IDB,
            "--%s-listen" % binding, "127.0.0.1:0", "--%s-backend" % binding,
            "127.0.0.1:%d" % self.cse.port, "--suites", self.suite,
            "--handshake-timeout", str(HANDSHAKE_TIMEOUT_MS), "--threads",
            "1", "--log-rate", "100000", "-v"])
        m = p.wait_for("stderr", r"^m2mpsk: gateway listening %s "
                       r"127\.0\.0\.1:(\d+)$" % binding, "listening line")
        p.wait_for("stderr", r"^m2mpsk: gateway ready$", "ready line")
        return p, int(m.group(1))

    def gateway_association(self, gw, bound):
        """The gateway's association line: KpsaID, binding, suite."""
        m = gw.wait_for("stderr", r"^m2mpsk: (?:gateway: )?(?:coap )?"
                        r"association peer=\S+ kpsa-id=(\S+) bound=(\S+) "
                        r"suite=(\S+)$", "the gateway's association line")
        want = (KPSA_ID, bound, self.suite)
        if m.groups() != want:
            raise Fail("the gateway's association: kpsa-id=%s bound=%s "
                       "suite=%s, expected %s" % (m.groups() + (want,)))

    def connect(self, port):
        return self.spawn("m2mpsk connect", [
            self.m2mpsk, "connect", "127.0.0.1:%d" % port, "--keys",
            self.keys, "--kpsa-id", KPSA_ID, "--suites", self.suite,
            "--timeout", str(HANDSHAKE_TIMEOUT_MS), "--linger",
            "2000"] + self.udp())

    def association(self, proc, bound, cred):
        """Checks the association line of m2mpsk's log: suite, version,
        KpsaID, binding."""
        line = proc.wait_for("stderr", OUTCOME_RX, "association or failure "
                             "line").group(0)
        m = re.match(ASSOC_RX, line)
        if not m:
            raise Fail("%s: %s" % (proc.name, line))
        want = {"suite": self.suite, "version": self.version,
                "kpsa": KPSA_ID, "bound": bound, "cred": cred}
        bad = ["%s=%s (expected %s)" % (k, m.group(k), v)
               for k, v in want.items() if m.group(k) != v]
        if bad:
            raise Fail("%s: %s" % (proc.name, ", ".join(bad)))
        return m


# --------------------------------------------------------------------------
# The Registrar CSE behind the gateway: plain HTTP (TS-0009) or plain CoAP
# (TS-0008), in a thread, recording every request it receives so that a
# cell can prove a refused request never reached it.


def cse_answer(create, origin):
    """(AE CREATE?, From) -> (rsc, body): an <AE> CREATE gets 2001 and the
    AE-ID, the From when the AE proposed one (IdA), else a new
    //m2m.example.com/cse-in/C<16 hex>; anything else 2000."""
    if create:
        aei = origin if origin.startswith("//") else \
            "%s/C%s" % (IDB, os.urandom(8).hex())
        return 2001, ('{"m2m:ae":{"aei":"%s"}}' % aei).encode()
    return 2000, b'{"m2m:dbg":"ok"}'


class HttpCse:
    def __init__(self):
        self.requests = []  # (method, path, From, RI)
        self.lock = threading.Lock()
        cse = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                origin = self.headers.get("X-M2M-Origin", "")
                ri = self.headers.get("X-M2M-RI", "")
                create = self.command == "POST" and re.search(
                    r";\s*ty=2\b", self.headers.get("Content-Type", ""))
                with cse.lock:
                    cse.requests.append((self.command, self.path, origin, ri))
                rsc, body = cse_answer(create, origin)
                self.send_response(201 if create else 200)
                self.send_header("X-M2M-RSC", str(rsc))
                self.send_header("X-M2M-RI", ri)
                self.send_header("Content-Type", "application/json" +
                                 (";ty=2" if create else ""))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = handle_one

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def seen(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class CoapCse:
    def __init__(self):
        self.requests = []  # (code, path, From, RQI)
        self.lock = threading.Lock()
        self.stop = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            data, addr = self.sock.recvfrom(65536)
            try:
                m = coap.Msg(data)
            except (ValueError, IndexError):
                continue
            if m.type not in (coap.CON, coap.NON) or m.code == 0:
                continue
            origin = (m.opt(coap.OPT_FR) or b"").decode("latin-1")
            rqi = m.opt(coap.OPT_RQI) or b""
            path = "/".join(v.decode("latin-1")
                            for v in m.opts(coap.OPT_URI_PATH))
            with self.lock:
                self.requests.append((coap.code_str(m.code), path, origin,
                                      rqi.decode("latin-1")))
            create = m.code == coap.POST and m.uint(coap.OPT_TY) == 2
            rsc, body = cse_answer(create, origin)
            self.sock.sendto(coap.encode(
                coap.ACK if m.type == coap.CON else coap.NON,
                coap.code(2, 1) if create else coap.code(2, 5), m.mid,
                m.token, [(coap.OPT_CONTENT_FORMAT, 50), (coap.OPT_RQI, rqi),
                          (coap.OPT_RSC, rsc)], body), addr)

    def seen(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


def check_cse_saw(cell, expected):
    """The CSE received exactly these requests, [(From, RI)], in order: the
    forged one never reached it."""
    got = [(r[2], r[3]) for r in cell.cse.seen()]
    if got != expected:
        raise Fail("the CSE received %r, expected %r" % (got, expected))


def check_gateway_log(cell, gw, bound_after, rebound):
    """The gateway's log: it refused the forged From itself (4106) with
    bound_after bound, and (Credential-ID) bound the AE-ID the CSE
    assigned."""
    pre = r"^m2mpsk: gateway: "
    if cell.transport == "tls":
        refused = pre + r"refused peer=\S+ from=%s bound=%s rsc=4106: " % (
            re.escape(FORGED), re.escape(bound_after))
        bind = pre + r"bound peer=\S+ to AE-ID %s$"
    else:
        refused = pre + r"coap peer=\S+ bound=%s from=%s refused 4106: " % (
            re.escape(bound_after), re.escape(FORGED))
        bind = pre + r"coap peer=\S+: bound to %s$"
    gw.wait_for("stderr", refused, "the gateway's 4106 refusal line")
    if rebound:
        gw.wait_for("stderr", bind % re.escape(bound_after),
                    "the gateway's AE-ID binding line")
    elif cell.transport == "tls" and re.search(bind % r"\S+",
                                               gw.text("stderr"), re.M):
        # (CoAP traces the identity after every 2.01: there the refusal
        # line above shows the IdA still bound.)
        raise Fail("the gateway rebound an association bound to its IdA")


def run_registration(cell, client, first_from, want_aei):
    """HTTP: AE CREATE, a request from the AE-ID, a forged From."""
    rs = cell.responses = Responses(client)
    headers, body = rs.exchange(ae_create(first_from, "td-se-01-1"),
                                "the AE CREATE's response", 201, 2001,
                                "td-se-01-1")
    aei = aei_of(body, "the AE CREATE's response")
    if not want_aei(aei):
        raise Fail("the AE CREATE assigned aei %r" % aei)
    if headers.get("content-type") != "application/json;ty=2":
        raise Fail("201 with Content-Type %r"
                   % headers.get("content-type"))
    rs.exchange(request("GET", "/cse-in/td-ae", aei, "td-se-01-2"),
                "the response to a request from the AE-ID", 200, 2000,
                "td-se-01-2")
    rs.exchange(request("GET", "/cse-in/td-ae", FORGED, "td-se-01-3"),
                "the response to a forged From", 403, 4106, "td-se-01-3")
    check_cse_saw(cell, [(first_from, "td-se-01-1"), (aei, "td-se-01-2")])
    return aei


# CoAP binding (TS-0008): the same three requests as CON messages.


def coap_request(ex, mcode, origin, rqi, ty=None, body=b""):
    token = os.urandom(8)
    opts = [(coap.OPT_URI_PATH, "cse-in"), (coap.OPT_FR, origin),
            (coap.OPT_RQI, rqi)]
    if mcode == coap.GET:
        opts.append((coap.OPT_URI_PATH, "td-ae"))
    if ty is not None:
        opts += [(coap.OPT_TY, ty), (coap.OPT_CONTENT_FORMAT, 50)]
    return coap.encode(coap.CON, mcode, ex.next_mid(), token, opts, body)


def coap_exchange(cell, ex, req, what, want_code, rsc, rqi):
    sent = coap.Msg(req)
    m, raw = ex.exchange(req, sent.token, what)
    cell.exchanges.append((req, raw))
    problems = []
    if m.type != coap.ACK or m.mid != sent.mid or m.token != sent.token:
        problems.append("not the piggybacked ACK of mid %d" % sent.mid)
    if m.code != want_code:
        problems.append("code %s, expected %s" % (coap.code_str(m.code),
                                                   coap.code_str(want_code)))
    if m.uint(coap.OPT_RSC) != rsc:
        problems.append("RSC %r, expected %d" % (m.uint(coap.OPT_RSC), rsc))
    if m.opt(coap.OPT_RQI) != rqi.encode():
        problems.append("RQI %r, expected %r echoed"
                        % (m.opt(coap.OPT_RQI), rqi))
    if problems:
        raise Fail("%s: %s; response %r" % (what, "; ".join(problems), m))
    return m


def run_registration_coap(cell, ex, first_from, want_aei):
    body = ('{"m2m:ae":{"rn":"td-ae","api":"%s","rr":false,"srv":["3"]}}'
            % APP_ID).encode()
    m = coap_exchange(cell, ex, coap_request(ex, coap.POST, first_from,
                                             "td-se-01-1", 2, body),
                      "the AE CREATE's response", coap.code(2, 1), 2001,
                      "td-se-01-1")
    aei = aei_of(m.payload, "the AE CREATE's response")
    if not want_aei(aei):
        raise Fail("the AE CREATE assigned aei %r" % aei)
    coap_exchange(cell, ex, coap_request(ex, coap.GET, aei, "td-se-01-2"),
                  "the response to a request from the AE-ID",
                  coap.code(2, 5), 2000, "td-se-01-2")
    coap_exchange(cell, ex, coap_request(ex, coap.GET, FORGED, "td-se-01-3"),
                  "the response to a forged From", coap.code(4, 3), 4106,
                  "td-se-01-3")
    check_cse_saw(cell, [(first_from, "td-se-01-1"), (aei, "td-se-01-2")])
    return aei


def coap_in(data, start, token):
    """The CoAP message with this token at the end of data[start:] (s_client
    prints each record it reads as is), once its JSON payload is whole."""
    i = data.find(token, start)
    while i >= 0:
        h = i - 4
        if h >= start and data[h] >> 6 == 1 and data[h] & 15 == len(token):
            try:
                m = coap.Msg(data[h:])
                json.loads(m.payload)
                return m, data[h:]
            except (ValueError, IndexError, struct.error):
                pass
        i = data.find(token, i + 1)
    return None


class StdioCoap:
    """Entity A over DTLS: m2mpsk connect --udp or openssl s_client, each
    CoAP message one write to its stdin (one read, one DTLS record), the
    response found in its stdout by its token."""

    def __init__(self, proc):
        self.proc, self.pos, self.mid = proc, 0, random.randrange(65536)

    def next_mid(self):
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def exchange(self, req, token, what):
        self.pos = len(self.proc.data("stdout"))
        self.proc.write(req)
        return self.proc.wait_until(
            "stdout", lambda b: coap_in(b, self.pos, token), what)


def stop_gateway(gw):
    """SIGTERM: it says it stops and exits 0."""
    os.killpg(gw.p.pid, signal.SIGTERM)
    gw.wait_for("stderr", r"^m2mpsk: gateway stopping$", "stopping line")
    rc = gw.wait_exit("after SIGTERM")
    if rc != 0:
        raise Fail("m2mpsk gateway exited %d after SIGTERM" % rc)


def cell_m2mpsk(cell):
    """credential-id / ida: m2mpsk connect -> m2mpsk gateway -> the CSE:
    HTTP over TLS, CoAP over DTLS."""
    with_ida = cell.kind == "ida"
    cell.keygen(IDA if with_ida else None)
    gw, port = cell.gateway()
    bound = IDA if with_ida else "12-" + KPSA_ID
    if with_ida:
        first, want = IDA, (lambda a: a == IDA)
    else:
        first = "C"
        want = (lambda a: re.fullmatch(re.escape(IDB) + r"/C[0-9a-f]{16}", a))
    client = cell.connect(port)
    cell.association(client, IDB, "0")
    cell.gateway_association(gw, bound)
    if cell.transport == "tls":
        aei = run_registration(cell, client, first, want)
    else:
        aei = run_registration_coap(cell, StdioCoap(client), first, want)
    check_gateway_log(cell, gw, IDA if with_ida else aei, not with_ida)
    client.close_stdin()  # close_notify
    rc = client.wait_exit("after stdin EOF")
    if rc != 0:
        raise Fail("m2mpsk connect exited %d" % rc)
    stop_gateway(gw)


def cell_openssl_client(cell):
    """openssl s_client as Entity A -> m2mpsk gateway -> the CSE: HTTP over
    TLS, CoAP over DTLS."""
    key = cell.keygen()
    gw, port = cell.gateway()
    client = cell.spawn("openssl s_client", [
        "openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
        "-servername", SNI, "-psk", key, "-psk_identity", KPSA_ID,
        "-cipher", cell.openssl_cipher, "-nocommands",
        "-dtls1_2" if cell.transport == "dtls" else "-tls1_2"])
    m = client.wait_for("stdout", r"Cipher is (\S+)$", "Cipher line")
    if m.group(1) != cell.openssl_cipher:
        raise Fail("s_client negotiated %s" % m.group(1))
    cell.gateway_association(gw, "12-" + KPSA_ID)
    want = (lambda a: re.fullmatch(re.escape(IDB) + r"/C[0-9a-f]{16}", a))
    if cell.transport == "tls":
        aei = run_registration(cell, client, "C", want)
    else:
        aei = run_registration_coap(cell, StdioCoap(client), "C", want)
    check_gateway_log(cell, gw, aei, True)
    client.close_stdin()  # s_client shuts the connection down at EOF
    rc = client.wait_exit("after stdin EOF")
    if rc != 0:
        raise Fail("openssl s_client exited %d" % rc)
    stop_gateway(gw)


def cell_openssl_server(cell):
    """m2mpsk connect as Entity A -> openssl s_server forced to the
    mandated suite."""
    key = cell.keygen()
    server = cell.spawn("openssl s_server", [
        "openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1",
        "-nocert", "-psk", key, "-psk_identity", KPSA_ID, "-cipher",
        cell.openssl_cipher,
        "-dtls1_2" if cell.transport == "dtls" else "-tls1_2"])
    m = server.wait_for("stdout", r"^ACCEPT 127\.0\.0\.1:(\d+)$",
                        "ACCEPT line")
    client = cell.connect(int(m.group(1)))
    cell.association(client, IDB, "0")
    m = server.wait_for("stdout", r"^CIPHER is (\S+)$", "CIPHER line")
    if m.group(1) != cell.openssl_cipher:
        raise Fail("s_server negotiated %s" % m.group(1))
    req = ae_create("C", "td-se-01-1")
    client.write(req)
    server.wait_until("stdout", lambda b: req in b,
                      "the AE CREATE bytes, verbatim")
    body = b'{"m2m:ae":{"aei":"%s/Cs-server"}}' % IDB.encode()
    resp = (b"HTTP/1.1 201 Created\r\nX-M2M-RSC: 2001\r\n"
            b"X-M2M-RI: td-se-01-1\r\nContent-Type: application/json;ty=2"
            b"\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    server.write(resp)
    rs = cell.responses = Responses(client)
    code, headers, rbody, raw, _ = rs.next("s_server's 201")
    rs.exchanges.append((req, raw))
    if raw != resp:
        raise Fail("m2mpsk connect printed %r, s_server sent %r"
                   % (raw, resp))
    client.close_stdin()  # close_notify
    rc = client.wait_exit("after stdin EOF")
    if rc != 0:
        raise Fail("m2mpsk connect exited %d" % rc)
    rc = server.wait_exit("after m2mpsk's close_notify (-naccept 1)")
    if rc != 0:
        raise Fail("openssl s_server exited %d" % rc)


RUNNERS = {"credential-id": cell_m2mpsk, "ida": cell_m2mpsk,
           "openssl-client": cell_openssl_client,
           "openssl-server": cell_openssl_server}


def skip_reason(cell, m2mpsk, coap_built):
    """Why the cell cannot run here, or None."""
    r = subprocess.run([m2mpsk, "version"], capture_output=True,
                       timeout=STEP_S)
    out = r.stdout.decode()
    m = re.match(r"m2mpsk \S+ \((\S+)\)", out)
    backend = m.group(1) if m else "unknown"
    lacks = [s for s, _, _ in MANDATED.values()
             if "suite %s\n" % s not in out]
    if r.returncode != 0 or lacks:
        return ("the %s backend lacks %s, which TD_M2M_SE_01 uses "
                "(TS-0003 10.2.2); build with -DM2MPSK_TLS=openssl"
                % (backend, " and ".join(lacks) or "its suites"))
    if cell.startswith("openssl-") and not shutil.which("openssl"):
        return "peer tool not found: openssl"
    if cell.startswith("openssl-server."):
        return None  # m2mpsk is Entity A: no gateway
    r = subprocess.run([m2mpsk, "gateway", "--help"], capture_output=True,
                       timeout=STEP_S)
    if r.returncode == 2 and b"without" in r.stderr:
        return r.stderr.decode().strip()
    if cell.endswith(".dtls") and coap_built == "no":
        return ("m2mpsk gateway was built without its CoAP binding "
                "(libcoap3-dev), which the DTLS cells use (TS-0008)")
    return None


def run_cell(name, m2mpsk, coap_built="yes"):
    if name not in CELLS:
        print("unknown cell %r; cells: %s" % (name, " ".join(CELLS)))
        return 2
    if not (m2mpsk and os.access(m2mpsk, os.X_OK)):
        print("FAIL %s: m2mpsk not found at %r" % (name, m2mpsk))
        return 1
    why = skip_reason(name, m2mpsk, coap_built)
    if why:
        if why.startswith("peer tool") and os.environ.get("CI") == "true":
            print("FAIL %s: %s (CI=true: a missing peer fails)" % (name, why))
            return 1
        print("SKIP %s: %s" % (name, why))
        return SKIP
    signal.signal(signal.SIGALRM, _deadline)
    signal.signal(signal.SIGTERM, _deadline)
    signal.alarm(CELL_DEADLINE_S)
    t0 = time.monotonic()
    result, why, cell = "fail", "", None
    try:
        with tempfile.TemporaryDirectory(prefix="m2mpsk-td-") as tmp:
            cell = Cell(name, m2mpsk, tmp)
            try:
                RUNNERS[cell.kind](cell)
                result = "pass"
            except Fail as e:
                why = str(e)
            except Deadline:
                why = "the cell took longer than %d s" % CELL_DEADLINE_S
            finally:
                signal.alarm(0)
                for p in cell.procs:
                    p.kill()
                if cell.cse is not None:
                    cell.cse.close()
    finally:
        signal.alarm(0)
    exchanges = cell.responses.exchanges if cell is not None and \
        cell.responses is not None else cell.exchanges if cell else []
    if exchanges:
        print("exchanges (Entity A's request, then the response it got%s):"
              % (" from s_server's stdin" if cell.kind == "openssl-server"
                 else ""))
        for req, resp in exchanges:
            print("  > %r\n  < %r" % (req, resp))
            if cell.transport == "dtls" and cell.kind != "openssl-server":
                print("    (CoAP: > %r\n            < %r)"
                      % (coap.Msg(req), coap.Msg(resp)))
    if result != "pass" or os.environ.get("TD_VERBOSE"):
        for p in cell.procs if cell else []:
            print(p.transcript())
    print("%s %s (%.2fs)%s" % (result.upper(), name, time.monotonic() - t0,
                               ": " + why if why else ""))
    return 0 if result == "pass" else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    run = sub.add_parser("run")
    run.add_argument("cell")
    run.add_argument("--m2mpsk", required=True)
    run.add_argument("--coap", choices=("yes", "no"), default="yes",
                     help="whether the gateway was built with its CoAP "
                     "binding")
    args = ap.parse_args()
    if args.cmd == "list":
        print("\n".join(CELLS))
        return 0
    return run_cell(args.cell, os.path.abspath(args.m2mpsk), args.coap)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
