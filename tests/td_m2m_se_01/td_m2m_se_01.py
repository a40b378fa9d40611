#!/usr/bin/env python3
"""TD_M2M_SE_01 (oneM2M TS-0013 §8.4.1.1), end to end over loopback.

An AE (Entity A) sets up a security association with its Registrar CSE
(Entity B) using the provisioned symmetric key SAEF (TS-0003 §8.2.2.1),
KpsaID test@onem2m.com, over TLS 1.2 with TLS_PSK_WITH_AES_128_CBC_SHA256
or DTLS 1.2 with TLS_PSK_WITH_AES_128_CCM_8 (the suites TS-0003 §10.2.2
mandates), then registers with an <AE> CREATE in the HTTP binding
(TS-0009). Entity B (`m2mpsk serve --http`) checks each request's From
(X-M2M-Origin) against the association's binding (TS-0004 §7.3.2.1,
TS-0003 §7.2.1) and rejects a forged From with 4106.

Cells (td_m2m_se_01.CELL.TRANSPORT, TRANSPORT tls or dtls):
  credential-id   m2mpsk connect -> m2mpsk serve --http; the record has no
                  IdA, so B binds the Credential-ID 12-test@onem2m.com and
                  then the AE-ID it assigns at the AE CREATE (From "C"):
                  201, a request from that AE-ID 200, a forged From 403/4106
  ida             the same with IdA configured: From = IdA 201 then 200, a
                  forged From 403/4106
  openssl-client  openssl s_client as Entity A -> m2mpsk serve --http: 201,
                  200, then 403/4106 seen in s_client's output
  openssl-server  m2mpsk connect as Entity A -> openssl s_server forced to
                  the suite: the handshake, the AE CREATE bytes received
                  verbatim, and s_server's 201 received verbatim

    td_m2m_se_01.py list
    td_m2m_se_01.py run CELL --m2mpsk PATH     exit 0 pass, 1 fail, 77 skip

Skips (exit 77, with the reason): a backend without the mandated suites
(BoringSSL: `m2mpsk version` does not list them), or no `openssl` tool for
the openssl cells (a failure instead when CI=true). Every process runs in
its own process group, is bounded in time and is killed at the end; a cell
is bounded at CELL_DEADLINE_S. Python 3 standard library only.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
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
        self.responses = None

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

    def serve(self):
        p = self.spawn("m2mpsk serve --http", [
            self.m2mpsk, "serve", "--http", "--once", "--keys", self.keys,
            "--id", IDB, "--listen", "127.0.0.1", "--port", "0", "--suites",
            self.suite, "--timeout", str(HANDSHAKE_TIMEOUT_MS)] + self.udp())
        m = p.wait_for("stderr", r"^m2mpsk: listening on 127\.0\.0\.1:(\d+) "
                       r"\((tcp|udp)\)$", "listening line")
        if m.group(2) != ("udp" if self.transport == "dtls" else "tcp"):
            raise Fail("serve listens on %s" % m.group(2))
        return p, int(m.group(1))

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

    def request_lines(self, serve):
        return re.findall(r"^m2mpsk: request .*$", serve.text("stderr"),
                          re.M)


def check_request_log(serve, expected):
    """The serve log's request lines, one per request, in order: each a
    dict of field=value that must appear."""
    rx = re.compile(r"^m2mpsk: request .*\n", re.M)
    # Its stderr may reach us after the responses did.
    try:
        serve.wait_until("stderr", lambda b: len(rx.findall(
            b.decode("utf-8", "replace"))) >= len(expected),
            "%d request lines" % len(expected), timeout=3)
    except Fail:
        pass
    lines = [x.rstrip("\n") for x in rx.findall(serve.text("stderr"))]
    if len(lines) != len(expected):
        raise Fail("serve logged %d request lines, expected %d: %r"
                   % (len(lines), len(expected), lines))
    for line, fields in zip(lines, expected):
        for k, v in fields.items():
            if " %s=%s " % (k, v) not in line + " ":
                raise Fail("serve's request line lacks %s=%s: %r"
                           % (k, v, line))


def run_registration(cell, client, serve, first_from, want_aei):
    """AE CREATE, a request from the AE-ID, a forged From."""
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
    return aei


def cell_m2mpsk(cell):
    """credential-id / ida: m2mpsk connect -> m2mpsk serve --http."""
    with_ida = cell.kind == "ida"
    cell.keygen(IDA if with_ida else None)
    serve, port = cell.serve()
    client = cell.connect(port)
    cell.association(client, IDB, "0")
    cell.association(serve, IDA if with_ida else "12-" + KPSA_ID,
                     "0" if with_ida else "1")
    if with_ida:
        aei = run_registration(cell, client, serve, IDA,
                               lambda a: a == IDA)
        bound_after = IDA
    else:
        aei = run_registration(
            cell, client, serve, "C",
            lambda a: re.fullmatch(re.escape(IDB) + r"/C[0-9a-f]{16}", a))
        bound_after = aei
    check_request_log(serve, [
        {"from": IDA if with_ida else "C", "verdict": "accept",
         "bound": IDA if with_ida else "12-" + KPSA_ID, "status": "201",
         "rsc": "2001", "aei": aei},
        {"from": aei, "verdict": "accept", "bound": bound_after,
         "status": "200", "rsc": "2000"},
        {"from": FORGED, "verdict": "4106", "bound": bound_after,
         "status": "403", "rsc": "4106"},
    ])
    if not with_ida and "bind=ae-id" not in cell.request_lines(serve)[0]:
        raise Fail("serve did not bind the AE-ID it assigned")
    client.close_stdin()  # close_notify
    rc = client.wait_exit("after stdin EOF")
    if rc != 0:
        raise Fail("m2mpsk connect exited %d" % rc)
    rc = serve.wait_exit("after the association ended (--once)")
    if rc != 0:
        raise Fail("m2mpsk serve --once exited %d" % rc)


def cell_openssl_client(cell):
    """openssl s_client as Entity A -> m2mpsk serve --http."""
    key = cell.keygen()
    serve, port = cell.serve()
    client = cell.spawn("openssl s_client", [
        "openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
        "-servername", SNI, "-psk", key, "-psk_identity", KPSA_ID,
        "-cipher", cell.openssl_cipher, "-nocommands",
        "-dtls1_2" if cell.transport == "dtls" else "-tls1_2"])
    m = client.wait_for("stdout", r"Cipher is (\S+)$", "Cipher line")
    if m.group(1) != cell.openssl_cipher:
        raise Fail("s_client negotiated %s" % m.group(1))
    cell.association(serve, "12-" + KPSA_ID, "1")
    aei = run_registration(
        cell, client, serve, "C",
        lambda a: re.fullmatch(re.escape(IDB) + r"/C[0-9a-f]{16}", a))
    check_request_log(serve, [
        {"from": "C", "verdict": "accept", "status": "201", "aei": aei},
        {"from": aei, "verdict": "accept", "status": "200"},
        {"from": FORGED, "verdict": "4106", "status": "403", "rsc": "4106"},
    ])
    client.close_stdin()  # s_client shuts the connection down at EOF
    rc = client.wait_exit("after stdin EOF")
    if rc != 0:
        raise Fail("openssl s_client exited %d" % rc)
    rc = serve.wait_exit("after the association ended (--once)")
    if rc != 0:
        raise Fail("m2mpsk serve --once exited %d" % rc)


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


def skip_reason(cell, m2mpsk):
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
    return None


def run_cell(name, m2mpsk):
    if name not in CELLS:
        print("unknown cell %r; cells: %s" % (name, " ".join(CELLS)))
        return 2
    if not (m2mpsk and os.access(m2mpsk, os.X_OK)):
        print("FAIL %s: m2mpsk not found at %r" % (name, m2mpsk))
        return 1
    why = skip_reason(name, m2mpsk)
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
    finally:
        signal.alarm(0)
    if cell is not None and cell.responses is not None:
        print("exchanges (Entity A's request, then the response it got%s):"
              % (" from s_server's stdin" if cell.kind == "openssl-server"
                 else ""))
        for req, resp in cell.responses.exchanges:
            print("  > %r\n  < %r" % (req, resp))
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
    args = ap.parse_args()
    if args.cmd == "list":
        print("\n".join(CELLS))
        return 0
    return run_cell(args.cell, os.path.abspath(args.m2mpsk))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
