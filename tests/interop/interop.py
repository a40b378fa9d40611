#!/usr/bin/env python3
"""Interoperability matrix of the m2mpsk command-line tool.

Each cell runs one real TLS 1.2 or DTLS 1.2 PSK handshake over loopback
(127.0.0.1) between `m2mpsk` and a peer implementation (OpenSSL 3, GnuTLS,
Node.js), with m2mpsk as Entity A (`m2mpsk connect`, the client) or as
Entity B (`m2mpsk serve --once`, the server).

Positive cells force one cipher suite on the peer's side (m2mpsk offers or
accepts `--suites all`), exchange application data in both directions and
check that the suite the peer reports is the suite m2mpsk reports. Negative
cells (wrong key, unknown KpsaID, a peer whose only suite m2mpsk lacks) check
the reason m2mpsk reports on its own side.

Cell names: interop.PEER.ROLE.TRANSPORT.CASE.ENGINE, where ROLE is m2mpsk's
role (`client`: m2mpsk connect against the peer's server; `server`: m2mpsk
serve against the peer's client), TRANSPORT is tls or dtls, CASE is an IANA
suite name or one of bad-key, unknown-kpsa-id, no-shared-suite, and ENGINE
is m2mpsk's --engine: boringssl, openssl or auto. A suite the engine lacks
is an expected failure (checked as no-shared-suite); with auto the cell
also checks which engine the association line reports. An engine the build
lacks (--engines) has no cells.

    interop.py list [--excluded] [--engines boringssl+openssl]
                                          the cells (one source of truth)
    interop.py run CELL [--m2mpsk PATH]   run one cell: exit 0 pass, 1 fail,
                                          77 skip (a peer tool is missing,
                                          and CI is not "true")
    interop.py report [--m2mpsk PATH] [--out FILE] [-j N]
                                          run every cell, write docs/INTEROP.md

Python 3 standard library only.
"""

import argparse
import concurrent.futures
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NODE_PEER = os.path.join(HERE, "node_peer.js")

SKIP = 77
CELL_DEADLINE_S = 15  # ctest's TIMEOUT for a cell is 20 s
HANDSHAKE_TIMEOUT_MS = 5000  # m2mpsk --timeout
STEP_S = 6.0  # the longest wait for any one event

KPSA_ID = "test@onem2m.com"
OTHER_KPSA_ID = "stranger@onem2m.com"
IDB = "//m2m.example.com/cse-in"
IDA = "//m2m.example.com/cse-in/Cae1"
SNI = "m2m.example.com"

# IANA name -> (OpenSSL name, GnuTLS key exchange, cipher, MAC).
SUITES = {
    "TLS_PSK_WITH_AES_128_CBC_SHA":
        ("PSK-AES128-CBC-SHA", "PSK", "AES-128-CBC", "SHA1"),
    "TLS_PSK_WITH_AES_256_CBC_SHA":
        ("PSK-AES256-CBC-SHA", "PSK", "AES-256-CBC", "SHA1"),
    "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA":
        ("ECDHE-PSK-AES128-CBC-SHA", "ECDHE-PSK", "AES-128-CBC", "SHA1"),
    "TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA":
        ("ECDHE-PSK-AES256-CBC-SHA", "ECDHE-PSK", "AES-256-CBC", "SHA1"),
    "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256":
        ("ECDHE-PSK-CHACHA20-POLY1305", "ECDHE-PSK", "CHACHA20-POLY1305",
         "AEAD"),
}
# TS-0003 §10.2.2's mandated suites (TLS, DTLS). Debian's BoringSSL lacks
# both: its engine's cells for them expect "no shared suite".
MANDATED = {
    "TLS_PSK_WITH_AES_128_CBC_SHA256":
        ("PSK-AES128-CBC-SHA256", "PSK", "AES-128-CBC", "SHA256"),
    "TLS_PSK_WITH_AES_128_CCM_8":
        ("PSK-AES128-CCM8", "PSK", "AES-128-CCM-8", "AEAD"),
}
# A suite every peer has and neither engine of m2mpsk has: the
# no-shared-suite cells make the peer offer or accept only it.
LACKING_SUITE = "TLS_PSK_WITH_CAMELLIA_128_CBC_SHA256"  # RFC 6367
# m2mpsk's engines (--engine), fastest first, and the suites of each that
# the cells force. Every cell names one engine or auto; an engine this build
# lacks (-DM2MPSK_TLS=boringssl|openssl) has no cells, and the report says
# it is absent.
ENGINES = ("boringssl", "openssl")
COLUMNS = ENGINES + ("auto",)
ENGINE_SUITES = {
    "boringssl": set(SUITES),
    "openssl": set(SUITES) | set(MANDATED),
}
BUILD_ENGINES = ENGINES  # set_engines()
# The engines the negative cases run with: all of them (their 60 cells
# beyond auto's took 20 s at -j2). Narrow it here if that ever costs too
# much; the report then marks the others n/a.
NEGATIVE_ENGINES = COLUMNS
ALL_SUITES = dict(SUITES)
ALL_SUITES.update(MANDATED)
ALL_SUITES["TLS_PSK_WITH_CAMELLIA_128_CBC_SHA256"] = (
    "PSK-CAMELLIA128-SHA256", "PSK", "CAMELLIA-128-CBC", "SHA256")
OPENSSL_TO_IANA = {v[0]: k for k, v in ALL_SUITES.items()}
GNUTLS_TO_IANA = {v[1:]: k for k, v in ALL_SUITES.items()}
# GnuTLS's own suite names, as its debug log prints them.
GNUTLS_NAME_TO_IANA = {
    "GNUTLS_" + ("%s_%s_%s" % (kx, ci, mac)).replace("-", "_")
    .replace("_AEAD", ""): iana
    for iana, (_, kx, ci, mac) in ALL_SUITES.items()
}

NEGATIVE_CASES = ("bad-key", "unknown-kpsa-id", "no-shared-suite")
PEERS = ("openssl", "gnutls", "node")
ROLES = ("client", "server")
TRANSPORTS = ("tls", "dtls")

PEER_LABEL = {"openssl": "OpenSSL", "gnutls": "GnuTLS", "node": "Node.js"}
# The peer's program for each m2mpsk role.
PEER_PROGRAM = {
    ("openssl", "client"): "openssl s_server",
    ("openssl", "server"): "openssl s_client",
    ("gnutls", "client"): "gnutls-serv",
    ("gnutls", "server"): "gnutls-cli",
    ("node", "client"): "node tls.createServer",
    ("node", "server"): "node tls.connect",
}
TOOLS = {
    ("openssl", "client"): ["openssl"],
    ("openssl", "server"): ["openssl"],
    ("gnutls", "client"): ["gnutls-serv", "stdbuf"],
    ("gnutls", "server"): ["gnutls-cli", "stdbuf"],
    ("node", "client"): ["node"],
    ("node", "server"): ["node"],
}

# Combinations that are not cells, each with its reason. Matched by
# (peer, role, transport, case); None matches anything.
ECDHE = [s for s in SUITES if "_ECDHE_" in s]
EXCLUSIONS = [
    ("node", None, "dtls", None,
     "Node.js's tls module has no DTLS."),
] + [
    ("gnutls", "server", "dtls", s,
     "gnutls-cli 3.7.9 crashes (SIGSEGV in gnutls_psk_server_get_username, "
     "which its session printer calls on a client session) after every "
     "ECDHE-PSK handshake whose priority allows no TLS 1.3, whatever the "
     "server: reproduced against openssl s_server -dtls1_2 and gnutls-serv "
     "--udp. Over TLS the cells keep TLS 1.3 in gnutls-cli's priority, "
     "which avoids it; DTLS 1.2 has no such way out. These suites over "
     "DTLS are covered against gnutls-serv (m2mpsk as client).")
    for s in ECDHE
]

# What m2mpsk must report on its own side in the negative cells:
# (reason, regular expression the detail must match), keyed by
# (peer, role, transport, case); None matches anything. The first match wins.
EXPECT = [
    # m2mpsk as server: its own reason says what happened, whatever the peer
    # saw (an unknown KpsaID gets a decoy key: RFC 4279 §2, no probing).
    (None, "server", None, "unknown-kpsa-id",
     "unknown-identity", r"^no record for KpsaID stranger@onem2m\.com$"),
    (None, "server", "tls", "bad-key",
     "bad-key", r"^peer's Finished or record did not verify "
                r"\(different keys\)$"),
    (None, "server", "dtls", "bad-key",
     "bad-key", r"^peer's Finished did not verify \(different keys\)$"),
    (None, "server", None, "no-shared-suite",
     "protocol-error", r"^no shared cipher suite: the peer offered none we "
                       r"enable$"),
    # m2mpsk as client over TLS: the peer's alert decides. Node's
    # pskCallback can refuse an identity (unknown_psk_identity); openssl
    # s_server does not look at it, and gnutls-serv answers an unknown
    # username with a random key, so both look like a wrong key.
    ("node", "client", "tls", "unknown-kpsa-id",
     "unknown-identity", r"^peer sent fatal alert: unknown PSK identity$"),
    (None, "client", "tls", "bad-key",
     "bad-key", r"^peer sent fatal alert: bad record mac$"),
    (None, "client", "tls", "unknown-kpsa-id",
     "bad-key", r"^peer sent fatal alert: bad record mac$"),
    # m2mpsk as client over DTLS: a DTLS server silently drops the client's
    # Finished when it does not verify (RFC 6347 §4.1.2.7), so the client
    # can only time out; and gnutls-serv --udp sends no alert at all when a
    # handshake fails (no shared suite either).
    (None, "client", "dtls", "bad-key",
     "timeout", r"^handshake not complete after \d+ ms$"),
    (None, "client", "dtls", "unknown-kpsa-id",
     "timeout", r"^handshake not complete after \d+ ms$"),
    ("gnutls", "client", "dtls", "no-shared-suite",
     "timeout", r"^handshake not complete after \d+ ms$"),
    (None, "client", None, "no-shared-suite",
     "peer-alert", r"^peer sent fatal alert: handshake failure \(often no "
                   r"shared cipher suite\)$"),
]
# When OpenSSL runs the association (first, before EXPECT): CBC suites negotiate
# encrypt-then-MAC (RFC 7366) with OpenSSL and GnuTLS peers, and OpenSSL
# fails a record whose MAC does not verify with a fatal bad_record_mac even
# over DTLS, on either side. A wrong key is then reported as one, where
# with BoringSSL (no encrypt-then-MAC) the record is dropped silently.
OPENSSL_EXPECT = [
    ("openssl", "client", "dtls", "bad-key",
     "bad-key", r"^peer sent fatal alert: bad record mac$"),
    ("openssl", "client", "dtls", "unknown-kpsa-id",
     "bad-key", r"^peer sent fatal alert: bad record mac$"),
    (None, "server", "dtls", "bad-key",
     "bad-key", r"^peer's Finished or record did not verify "
                r"\(different keys\)$"),
]
# Cells whose expected reason is a timeout use this --timeout instead.
TIMEOUT_CELL_MS = 1500


def parse_engines(text):
    names = tuple(e for e in re.split(r"[+,\s]+", text) if e)
    bad = [e for e in names if e not in ENGINES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            "engines must be among %s joined by '+', not %r"
            % ("+".join(ENGINES), text))
    return tuple(e for e in ENGINES if e in names)


def set_engines(names):
    """The cells depend on the engines m2mpsk was built with."""
    global BUILD_ENGINES
    BUILD_ENGINES = names


def effective_engine(engine, role, transport, suite):
    """The engine that runs a cell's association: the one named, or what
    auto picks (README, "Engines"); None when it is not known (auto
    answering a ClientHello that shares no suite with either engine)."""
    if engine != "auto":
        return engine
    if len(BUILD_ENGINES) == 1:
        return BUILD_ENGINES[0]
    if role == "client" or transport == "dtls":
        # Initiator with --suites all (BoringSSL lacks some): OpenSSL;
        # a DTLS responder always uses OpenSSL's cookie exchange.
        return "openssl"
    for e in BUILD_ENGINES:  # fastest first
        if suite in ENGINE_SUITES[e]:
            return e
    return None


def match(rule_key, peer, role, transport, case):
    for want, got in zip(rule_key, (peer, role, transport, case)):
        if want is not None and want != got:
            return False
    return True


def excluded(peer, role, transport, case):
    for rule in EXCLUSIONS:
        if match(rule[:4], peer, role, transport, case):
            return rule[4]
    return None


def expectation(peer, role, transport, case, engine=None):
    """engine: the one that runs the association (effective_engine)."""
    rules = (OPENSSL_EXPECT if engine == "openssl" else []) + EXPECT
    for rule in rules:
        if match(rule[:4], peer, role, transport, case):
            return rule[4], rule[5]
    return None


def case_suite(case):
    """The suite the peer is forced to."""
    if case == "no-shared-suite":
        return LACKING_SUITE
    return case if case in ALL_SUITES else "TLS_PSK_WITH_AES_128_CBC_SHA"


class Cell:
    def __init__(self, peer, role, transport, case, engine):
        self.peer, self.role, self.transport, self.case = (peer, role,
                                                           transport, case)
        self.engine = engine
        self.name = "interop.%s.%s.%s.%s.%s" % (peer, role, transport, case,
                                                engine)
        self.suite = case_suite(case)
        self.runs_on = effective_engine(engine, role, transport, self.suite)
        # A suite the engine lacks fails as no-shared-suite does: for
        # auto (one engine built) and a named engine alike.
        self.lacking = (case in ALL_SUITES and self.runs_on is not None
                        and case not in ENGINE_SUITES[self.runs_on])
        self.negative = case in NEGATIVE_CASES or self.lacking
        self.expect_case = "no-shared-suite" if self.lacking else case

    def expectation(self):
        return expectation(self.peer, self.role, self.transport,
                           self.expect_case, self.runs_on)


CASES = list(SUITES) + list(MANDATED) + list(NEGATIVE_CASES)


def column_engines(case):
    return NEGATIVE_ENGINES if case in NEGATIVE_CASES else COLUMNS


def all_combinations():
    """Every cell of this build's engines, excluded or not."""
    for peer in PEERS:
        for role in ROLES:
            for transport in TRANSPORTS:
                for case in CASES:
                    for engine in column_engines(case):
                        if engine == "auto" or engine in BUILD_ENGINES:
                            yield Cell(peer, role, transport, case, engine)


def cells():
    return [c for c in all_combinations()
            if not excluded(c.peer, c.role, c.transport, c.case)]


def find_cell(name):
    for c in all_combinations():
        if c.name == name:
            return c
    return None


# --------------------------------------------------------------------------
# Processes


class CellFailure(Exception):
    pass


class CellSkip(Exception):
    pass


class CellDeadline(BaseException):
    pass


def _deadline(_signum, _frame):
    raise CellDeadline()


class Proc:
    """A child in its own process group, its output read by two threads."""

    def __init__(self, name, argv):
        self.name = name
        self.argv = argv
        wrapper = []
        if shutil.which("setpriv"):
            # Dies with the harness even if ctest kills it with SIGKILL.
            wrapper = ["setpriv", "--pdeathsig", "KILL"]
        self.p = subprocess.Popen(wrapper + argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE,
                                  start_new_session=True)
        self.buf = {"stdout": bytearray(), "stderr": bytearray()}
        self.eof = {"stdout": False, "stderr": False}
        self.cond = threading.Condition()
        self.sent = []  # what write() gave its stdin, for the transcript
        self.threads = [
            threading.Thread(target=self._pump, args=(k, f), daemon=True)
            for k, f in (("stdout", self.p.stdout), ("stderr", self.p.stderr))
        ]
        for t in self.threads:
            t.start()

    def _pump(self, key, f):
        fd = f.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self.cond:
                if chunk:
                    self.buf[key] += chunk
                else:
                    self.eof[key] = True
                self.cond.notify_all()
            if not chunk:
                return

    def data(self, key):
        with self.cond:
            return bytes(self.buf[key])

    def text(self, key):
        return self.data(key).decode("utf-8", "replace")

    def wait_until(self, key, test, what, timeout=None):
        """Waits until test(bytes so far) returns something true; returns
        it. timeout defaults to this module's STEP_S."""
        timeout = STEP_S if timeout is None else timeout
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                got = test(bytes(self.buf[key]))
                if got:
                    return got
                if self.eof[key]:
                    raise CellFailure("%s ended its %s (exit %s) before %s"
                                      % (self.name, key, self.p.poll(), what))
                left = end - time.monotonic()
                if left <= 0:
                    raise CellFailure("no %s from %s within %.0f s"
                                      % (what, self.name, timeout))
                self.cond.wait(min(left, 0.25))

    def wait_for(self, key, pattern, what, timeout=None):
        """Waits until the stream matches; returns the match."""
        rx = re.compile(pattern, re.M)
        return self.wait_until(
            key, lambda b: rx.search(b.decode("utf-8", "replace")), what,
            timeout)

    def write(self, data):
        self.sent.append(data)
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_stdin(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass

    def wait_exit(self, what, timeout=None):
        timeout = STEP_S if timeout is None else timeout
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CellFailure("%s did not exit within %.0f s (%s)"
                              % (self.name, timeout, what))
        for t in self.threads:
            t.join(2)
        return rc

    def kill(self):
        if self.p.poll() is None:
            for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
                try:
                    os.killpg(self.p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.p.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            try:  # anything it left in its group
                os.killpg(self.p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.close_stdin()
        for t in self.threads:
            t.join(1)

    def transcript(self, limit=6000):
        out = ["$ " + shlex.join(self.argv),
               "  exit: %s" % self.p.poll()]
        out.extend("  stdin <- %r" % data for data in self.sent)
        for key in ("stdout", "stderr"):
            t = self.text(key)
            if len(t) > limit:
                t = "[... %d characters cut ...]\n" % (len(t) - limit) + \
                    t[-limit:]
            out.append("  --- %s ---" % key)
            out.extend("  | " + line for line in t.splitlines())
        return "\n".join(out)


def free_port(transport):
    kind = socket.SOCK_STREAM if transport == "tls" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(tag):
    # Starts with 'm': no command letter of s_server / s_client.
    return ("m2m-%s-%s\n" % (tag, secrets.token_hex(8))).encode()


ASSOC_RX = (r"^m2mpsk: association peer=(?P<peer>\S+) kpsa-id=(?P<kpsa>\S+) "
            r"bound=(?P<bound>\S+) credential=(?P<cred>[01]) "
            r"suite=(?P<suite>\S+) version=(?P<version>\S+)"
            r"(?: engine=(?P<engine>\S+))?$")
FAIL_RX = (r'^m2mpsk: failure peer=(?P<peer>\S+) reason=(?P<reason>\S+) '
           r'detail="(?P<detail>.*)"$')
OUTCOME_RX = r"^m2mpsk: (?:association|failure) .*$"


# --------------------------------------------------------------------------
# Peers. A server peer (m2mpsk is the client) has start() -> port; a client
# peer (m2mpsk is the server) has start(port). Both have wait_suite() -> IANA
# name, exchange(ctx) (data both ways), close(), and error() for reports.


class Peer:
    proc = None
    echo = False

    def __init__(self, ctx):
        self.ctx = ctx
        self.cell = ctx.cell

    def error(self):
        return ""

    def settle(self, timeout=1.5):
        """After a failure: give the peer a moment to report its side."""
        try:
            self.proc.p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


class OpenSSLServer(Peer):
    def start(self):
        c = self.ctx
        argv = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept",
                "1", "-nocert", "-psk", c.peer_key, "-psk_identity",
                c.peer_id, "-cipher", c.peer_openssl_cipher]
        if self.cell.transport == "dtls":
            argv.append("-dtls1_2")
        self.proc = c.spawn("openssl s_server", argv)
        m = self.proc.wait_for("stdout", r"^ACCEPT 127\.0\.0\.1:(\d+)$",
                               "ACCEPT line")
        return int(m.group(1))

    def wait_suite(self):
        m = self.proc.wait_for("stdout", r"^CIPHER is (\S+)$", "CIPHER line")
        return OPENSSL_TO_IANA.get(m.group(1), "openssl:" + m.group(1))

    def send(self, data):
        self.proc.write(data)

    def wait_received(self, data):
        self.proc.wait_for("stdout", re.escape(data.decode()),
                           "our payload")

    def error(self):
        return openssl_error(self.proc)


class OpenSSLClient(Peer):
    def start(self, port):
        c = self.ctx
        argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                "-servername", SNI, "-psk", c.peer_key, "-psk_identity",
                c.peer_id, "-cipher", c.peer_openssl_cipher, "-nocommands"]
        if self.cell.transport == "dtls":
            argv.append("-dtls1_2")
        self.proc = c.spawn("openssl s_client", argv)

    def wait_suite(self):
        m = self.proc.wait_for("stdout", r"Cipher is (\S+)$", "Cipher line")
        return OPENSSL_TO_IANA.get(m.group(1), "openssl:" + m.group(1))

    def send(self, data):
        self.proc.write(data)

    def wait_received(self, data):
        self.proc.wait_for("stdout", re.escape(data.decode()), "the echo")

    def close(self):
        self.proc.close_stdin()

    def error(self):
        return openssl_error(self.proc)


def gnutls_priority(transport, iana, role="client"):
    """One TLS 1.2 suite. gnutls-cli keeps its TLS versions: restricted to
    TLS 1.2 it crashes after ECDHE-PSK handshakes (see EXCLUSIONS)."""
    _, kx, cipher, mac = ALL_SUITES[iana]
    if transport == "dtls":
        versions = "-VERS-ALL:+VERS-DTLS1.2:"
    elif role == "server":  # m2mpsk is the server: gnutls-cli
        versions = ""
    else:
        versions = "-VERS-ALL:+VERS-TLS1.2:"
    return ("NORMAL:%s-KX-ALL:+%s:-CIPHER-ALL:+%s:-MAC-ALL:+%s"
            % (versions, kx, cipher, mac))


def gnutls_description(text, transport):
    """IANA name from '- Description: (TLS1.2-X.509)-(PSK)-(AES-128-CBC)-
    (SHA1)'; an ECDHE key exchange shows as its group (ECDHE-SECP256R1)."""
    m = re.search(r"^- Description: \((D?TLS1\.2)[^)]*\)-\(([^)]*)\)-"
                  r"\(([^)]*)\)(?:-\(([^)]*)\))?", text, re.M)
    if not m:
        return None
    if m.group(1) != ("TLS1.2" if transport == "tls" else "DTLS1.2"):
        return "gnutls:" + m.group(0)
    kx = "ECDHE-PSK" if m.group(2).startswith("ECDHE-") else m.group(2)
    mac = m.group(4) or "AEAD"
    return GNUTLS_TO_IANA.get((kx, m.group(3), mac),
                              "gnutls:" + m.group(0))


class GnuTLSServer(Peer):
    echo = True

    def settle(self, timeout=1.5):
        """It serves on after a failed handshake: wait for the error line
        error() reads (on either stream), not for an exit; bounded. Over
        UDP it reports no failed handshake: nothing to wait for."""
        if self.cell.transport == "dtls":
            return
        end = time.monotonic() + timeout
        p = self.proc
        with p.cond:
            while not first_line(p, r"Error in handshake"):
                left = end - time.monotonic()
                if left <= 0 or (p.eof["stdout"] and p.eof["stderr"]):
                    return
                p.cond.wait(min(left, 0.25))

    def start(self):
        c = self.ctx
        pskfile = os.path.join(c.tmp, "gnutls-psk")
        # keygen's own `--print gnutls` line, unless a negative cell gave
        # the peer another identity or key.
        line = c.keygen_line if (c.peer_id, c.peer_key) == (
            KPSA_ID, c.our_key) else "%s:%s" % (c.peer_id, c.peer_key)
        with open(pskfile, "w") as f:
            f.write(line + "\n")
        for _attempt in range(5):
            port = free_port(self.cell.transport)
            argv = ["stdbuf", "-oL", "-eL", "gnutls-serv", "--port",
                    str(port), "--pskpasswd", pskfile, "--echo",
                    "--priority", c.peer_gnutls_priority]
            if self.cell.transport == "dtls":
                # gnutls-serv --udp prints no session summary: its debug log
                # names the suite it selected.
                argv += ["--udp", "-d", "4"]
            self.proc = c.spawn("gnutls-serv", argv)
            m = self.proc.wait_for(
                "stderr", r"IPv4 0\.0\.0\.0 port %d\.\.\.(done|bind.*)$"
                % port, "listening line")
            if m.group(1) == "done":
                return port
            self.ctx.procs.remove(self.proc)
            self.proc.kill()  # the port was taken meanwhile: another one
        raise CellFailure("gnutls-serv found no free port in 5 tries")

    def wait_suite(self):
        if self.cell.transport == "dtls":
            m = self.proc.wait_for(
                "stderr", r"Selected cipher suite: (\S+)$",
                "selected cipher suite (debug log)")
            return GNUTLS_NAME_TO_IANA.get(m.group(1), "gnutls:" + m.group(1))
        m = self.proc.wait_for(
            "stdout", r"^- Version: TLS1\.2\n- Key Exchange: (\S+)\n"
            r"- Cipher: (\S+)\n- MAC: (\S+)$", "session summary")
        return GNUTLS_TO_IANA.get(m.groups(), "gnutls:%s" % (m.groups(),))

    def error(self):
        return first_line(self.proc, r"Error in handshake[^\n]*")


class GnuTLSClient(Peer):
    def start(self, port):
        c = self.ctx
        argv = ["stdbuf", "-oL", "-eL", "gnutls-cli", "127.0.0.1", "--port",
                str(port), "--sni-hostname", SNI, "--pskusername", c.peer_id,
                "--pskkey", c.peer_key, "--priority", c.peer_gnutls_priority]
        if self.cell.transport == "dtls":
            argv.append("--udp")
        self.proc = c.spawn("gnutls-cli", argv)

    def wait_suite(self):
        self.proc.wait_for("stdout", r"^- Handshake was completed$",
                           "'Handshake was completed'")
        return gnutls_description(self.proc.text("stdout"),
                                  self.cell.transport)

    def send(self, data):
        self.proc.write(data)

    def wait_received(self, data):
        self.proc.wait_for("stdout", "^" + re.escape(data.decode()),
                           "the echo")

    def close(self):
        self.proc.close_stdin()

    def error(self):
        return first_line(self.proc, r"\*\*\* [^\n]*(?:error|fail)[^\n]*|"
                          r"Error[^\n]*")


class NodePeer(Peer):
    def events(self):
        out = []
        for line in self.proc.text("stdout").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_event(self, name, what):
        rx = r'^\{"event":"%s".*\}$' % name
        self.proc.wait_for("stdout", rx, what)
        return [e for e in self.events() if e["event"] == name][0]

    def wait_suite(self):
        return self.wait_event("secure", "secure event")["cipher"]

    def send(self, data):
        self.proc.write(b"send " + data.hex().encode() + b"\n")

    def wait_received(self, data):
        end = time.monotonic() + STEP_S
        with self.proc.cond:  # reentrant: events() takes it too
            while True:
                got = b"".join(bytes.fromhex(e["hex"]) for e in self.events()
                               if e["event"] == "data")
                if data in got:
                    return
                left = end - time.monotonic()
                if self.proc.eof["stdout"] or left <= 0:
                    raise CellFailure("the node peer did not receive %r"
                                      % data)
                self.proc.cond.wait(min(left, 0.25))

    def close(self):
        self.proc.write(b"end\n")

    def settle(self, timeout=1.5):
        try:
            self.proc.wait_for("stdout", r'"event":"(error|close)"',
                               "error or close event", timeout)
        except CellFailure:
            pass

    def error(self):
        errs = [e for e in self.events() if e["event"] == "error"]
        if not errs:
            return ""
        return openssl_reason(errs[0]["message"]) or " ".join(
            errs[0]["message"].split())


class NodeServer(NodePeer):
    def start(self):
        c = self.ctx
        argv = ["node", NODE_PEER, "server", "--identity", c.peer_id,
                "--key", c.peer_key, "--ciphers", c.peer_openssl_cipher]
        self.proc = c.spawn("node server", argv)
        return self.wait_event("listening", "listening event")["port"]


class NodeClient(NodePeer):
    def start(self, port):
        c = self.ctx
        argv = ["node", NODE_PEER, "client", "--port", str(port),
                "--servername", SNI, "--identity", c.peer_id, "--key",
                c.peer_key, "--ciphers", c.peer_openssl_cipher]
        self.proc = c.spawn("node client", argv)


PEER_CLASS = {
    ("openssl", "client"): OpenSSLServer,
    ("openssl", "server"): OpenSSLClient,
    ("gnutls", "client"): GnuTLSServer,
    ("gnutls", "server"): GnuTLSClient,
    ("node", "client"): NodeServer,
    ("node", "server"): NodeClient,
}


def openssl_error(proc):
    """The reason of OpenSSL's first SSL-level error line, e.g. 'sslv3
    alert bad record mac' (file names and line numbers vary by version)."""
    if proc is None:
        return ""
    return openssl_reason(proc.text("stderr") + proc.text("stdout"))


def openssl_reason(text):
    errs = re.findall(r"error:[0-9A-F]+:([^:\n]*):([^:\n]*):([^:\n]*)",
                      text)
    for lib, func, reason in errs:
        if lib == "SSL routines":
            return "%s (%s)" % (reason, func)
    return "%s (%s)" % (errs[0][2], errs[0][1]) if errs else ""


def first_line(proc, pattern):
    if proc is None:
        return ""
    for key in ("stderr", "stdout"):
        m = re.search(pattern, proc.text(key))
        if m:
            return m.group(0).strip()
    return ""


# --------------------------------------------------------------------------
# Running a cell


class Context:
    def __init__(self, cell, m2mpsk, tmp):
        self.cell = cell
        self.m2mpsk = m2mpsk
        self.tmp = tmp
        self.procs = []
        self.keys = os.path.join(tmp, "keys")
        self.result = cell_result(cell)

    def spawn(self, name, argv):
        p = Proc(name, argv)
        self.procs.append(p)
        return p

    def run_quick(self, argv):
        r = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=STEP_S)
        if r.returncode != 0:
            raise CellFailure("%s exited %d: %s" % (
                shlex.join(argv), r.returncode,
                r.stderr.decode(errors="replace").strip()))
        return r.stdout.decode().strip()

    def provision(self):
        """Our key file (via keygen) and what the peer is configured with."""
        # gnutls-serv reads a --pskpasswd file: keygen prints its line.
        fmt = "gnutls" if (self.cell.peer, self.cell.role) == (
            "gnutls", "client") else "hex"
        printed = self.run_quick([self.m2mpsk, "keygen", "--keys", self.keys,
                                  "--kpsa-id", KPSA_ID, "--idb", IDB,
                                  "--ida", IDA, "--print", fmt])
        want = r"[0-9a-f]{64}" if fmt == "hex" else \
            re.escape(KPSA_ID) + r":[0-9a-f]{64}"
        if not re.fullmatch(want, printed):
            raise CellFailure("keygen --print %s printed %r" % (fmt, printed))
        key = printed.rsplit(":", 1)[-1]
        self.keygen_line, self.our_key = printed, key
        mode = os.stat(self.keys).st_mode & 0o777
        if mode != 0o600:
            raise CellFailure("keygen created the key file with mode %o"
                              % mode)
        case = self.cell.case
        self.peer_id, self.peer_key = KPSA_ID, key
        if case == "bad-key":
            self.peer_key = secrets.token_hex(32)
        elif case == "unknown-kpsa-id":
            # A peer that has no record for our KpsaID has no key for it
            # either (openssl s_server only warns about a different identity
            # and would go on with its one key).
            self.peer_id, self.peer_key = OTHER_KPSA_ID, secrets.token_hex(32)
        suite = self.cell.suite
        self.peer_suite = suite
        self.peer_openssl_cipher = ALL_SUITES[suite][0]
        self.peer_gnutls_priority = gnutls_priority(
            self.cell.transport, suite, self.cell.role)

    def handshake_timeout_ms(self):
        c = self.cell
        exp = c.expectation()
        if c.negative and exp and exp[0] == "timeout":
            return TIMEOUT_CELL_MS
        return HANDSHAKE_TIMEOUT_MS

    def m2mpsk_common(self):
        argv = ["--keys", self.keys, "--suites", "all", "--engine",
                self.cell.engine, "--timeout",
                str(self.handshake_timeout_ms())]
        if self.cell.transport == "dtls":
            argv.append("--udp")
        return argv


def parse_outcome(line):
    m = re.match(ASSOC_RX, line)
    if m:
        return dict(m.groupdict(), outcome="association")
    m = re.match(FAIL_RX, line)
    if m:
        return dict(m.groupdict(), outcome="failure")
    raise CellFailure("m2mpsk printed an outcome line of unknown form: %r"
                      % line)


def check_association(ctx, ours, peer_suite, peer_port=None):
    cell = ctx.cell
    want_version = "TLSv1.2" if cell.transport == "tls" else "DTLSv1.2"
    want_bound = IDB if cell.role == "client" else IDA
    problems = []
    if ours["suite"] != cell.case:
        problems.append("m2mpsk reports suite %s, the peer was forced to %s"
                        % (ours["suite"], cell.case))
    if peer_suite != ours["suite"]:
        problems.append("the peer reports suite %s, m2mpsk reports %s"
                        % (peer_suite, ours["suite"]))
    if ours["version"] != want_version:
        problems.append("version %s, expected %s" % (ours["version"],
                                                      want_version))
    if ours["kpsa"] != KPSA_ID:
        problems.append("kpsa-id %s, expected %s" % (ours["kpsa"], KPSA_ID))
    if ours["bound"] != want_bound or ours["cred"] != "0":
        problems.append("bound=%s credential=%s, expected bound=%s "
                        "credential=0" % (ours["bound"], ours["cred"],
                                          want_bound))
    if ours["engine"] != cell.runs_on:
        problems.append("engine=%s, expected %s (--engine %s)"
                        % (ours["engine"], cell.runs_on, cell.engine))
    if peer_port is not None and ours["peer"] != "127.0.0.1:%d" % peer_port:
        problems.append("peer=%s, expected 127.0.0.1:%d" % (ours["peer"],
                                                           peer_port))
    if problems:
        raise CellFailure("; ".join(problems))


def check_failure(ctx, ours, rc):
    cell = ctx.cell
    exp = cell.expectation()
    if ours["outcome"] != "failure":
        raise CellFailure("the association was established; expected it "
                          "to fail")
    if rc != 1:
        raise CellFailure("m2mpsk exited %s after a failed association, "
                          "expected 1" % rc)
    if exp is None:
        raise CellFailure("no expectation recorded for this cell; m2mpsk "
                          "reported reason=%s detail=%r"
                          % (ours["reason"], ours["detail"]))
    reason, detail_rx = exp
    if ours["reason"] != reason or not re.search(detail_rx, ours["detail"]):
        raise CellFailure("m2mpsk reported reason=%s detail=%r, expected "
                          "reason=%s with a detail matching /%s/"
                          % (ours["reason"], ours["detail"], reason,
                             detail_rx))


def await_outcome(ctx, ours_p, peer, who, exit_note):
    """Waits for m2mpsk's association or failure line. A negative cell is
    checked and finished here (None is returned); a positive one returns
    m2mpsk's parsed line and the suite the peer reports."""
    line = ours_p.wait_for("stderr", OUTCOME_RX, "association or failure "
                           "line",
                           ctx.handshake_timeout_ms() / 1000 + 3).group(0)
    ours = parse_outcome(line)
    ctx.result["m2mpsk_line"] = line
    if ctx.cell.negative:
        rc = ours_p.wait_exit(exit_note)
        peer.settle()
        ctx.result["peer_error"] = peer.error()
        check_failure(ctx, ours, rc)
        return None
    if ours["outcome"] != "association":
        raise CellFailure("m2mpsk %s failed: %s" % (who, line))
    peer_suite = peer.wait_suite()
    ctx.result["peer_suite"] = peer_suite
    return ours, peer_suite


def run_as_client(ctx):
    """m2mpsk connect (Entity A) against the peer's server."""
    cell = ctx.cell
    peer = PEER_CLASS[(cell.peer, "client")](ctx)
    ctx.peer = peer
    port = peer.start()
    ours_p = ctx.spawn("m2mpsk connect", [
        ctx.m2mpsk, "connect", "127.0.0.1:%d" % port, "--kpsa-id", KPSA_ID,
        "--linger", "1000"] + ctx.m2mpsk_common())
    outcome = await_outcome(ctx, ours_p, peer, "connect",
                            "after its failure line")
    if outcome is None:
        return
    ours, peer_suite = outcome
    check_association(ctx, ours, peer_suite, port)
    to_peer = payload("a-to-b")
    ours_p.write(to_peer)
    if peer.echo:
        # The echo proves both directions.
        ours_p.wait_for("stdout", re.escape(to_peer.decode()), "the echo")
    else:
        peer.wait_received(to_peer)
        from_peer = payload("b-to-a")
        peer.send(from_peer)
        ours_p.wait_for("stdout", re.escape(from_peer.decode()),
                        "the peer's payload")
    ours_p.close_stdin()  # close_notify
    rc = ours_p.wait_exit("after stdin EOF", 6)
    if rc != 0:
        raise CellFailure("m2mpsk connect exited %d after a normal close"
                          % rc)


def run_as_server(ctx):
    """m2mpsk serve --once (Entity B) against the peer's client."""
    cell = ctx.cell
    ours_p = ctx.spawn("m2mpsk serve", [
        ctx.m2mpsk, "serve", "--id", IDB, "--listen", "127.0.0.1", "--port",
        "0", "--once"] + ctx.m2mpsk_common())
    m = ours_p.wait_for("stderr", r"^m2mpsk: listening on 127\.0\.0\.1:"
                        r"(\d+) \((tcp|udp)\)$", "listening line")
    want_proto = "tcp" if cell.transport == "tls" else "udp"
    if m.group(2) != want_proto:
        raise CellFailure("m2mpsk serve listens on %s, expected %s"
                          % (m.group(2), want_proto))
    port = int(m.group(1))
    peer = PEER_CLASS[(cell.peer, "server")](ctx)
    ctx.peer = peer
    peer.start(port)
    outcome = await_outcome(ctx, ours_p, peer, "serve",
                            "after its failure line (--once)")
    if outcome is None:
        return
    ours, peer_suite = outcome
    check_association(ctx, ours, peer_suite)
    data = payload("a-to-b")
    peer.send(data)
    peer.wait_received(data)  # echoed by m2mpsk serve: both directions
    peer.close()
    rc = ours_p.wait_exit("after the peer closed (--once)", 6)
    if rc != 0:
        raise CellFailure("m2mpsk serve --once exited %d after an "
                          "established association" % rc)


def cell_result(cell):
    return {"cell": cell.name, "peer": cell.peer, "role": cell.role,
            "transport": cell.transport, "case": cell.case,
            "engine": cell.engine, "expect_engine": cell.runs_on,
            "expect_failure": cell.negative}


def missing_tools(cell):
    return [t for t in TOOLS[(cell.peer, cell.role)] if not shutil.which(t)]


def run_cell(cell, m2mpsk):
    """Returns (exit code, result dict); prints a transcript on failure."""
    t0 = time.monotonic()
    result = cell_result(cell)
    missing = missing_tools(cell)
    if missing:
        msg = "peer tool not found: %s" % ", ".join(missing)
        result.update(result="skip", why=msg)
        if os.environ.get("CI") == "true":
            result.update(result="fail", why=msg + " (CI=true: a missing "
                          "peer fails the cell)")
            return 1, result
        return SKIP, result
    if not (m2mpsk and os.access(m2mpsk, os.X_OK)):
        result.update(result="fail", why="m2mpsk not found at %r" % m2mpsk)
        return 1, result
    old_alarm = signal.signal(signal.SIGALRM, _deadline)
    old_term = signal.signal(signal.SIGTERM, _deadline)
    signal.alarm(CELL_DEADLINE_S)
    ctx = None
    try:
        with tempfile.TemporaryDirectory(prefix="m2mpsk-interop-") as tmp:
            ctx = Context(cell, m2mpsk, tmp)
            result = ctx.result
            try:
                ctx.provision()
                if cell.role == "client":
                    run_as_client(ctx)
                else:
                    run_as_server(ctx)
                result["result"] = "pass"
            except CellFailure as e:
                result.update(result="fail", why=str(e))
            except CellDeadline:
                result.update(result="fail", why="the cell took longer than "
                              "%d s" % CELL_DEADLINE_S)
            finally:
                signal.alarm(0)
                for p in ctx.procs:
                    p.kill()
                if result.get("result") != "pass" or os.environ.get(
                        "INTEROP_VERBOSE"):
                    for p in ctx.procs:
                        print(p.transcript(), file=sys.stderr)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)
    result["seconds"] = round(time.monotonic() - t0, 2)
    return (0 if result["result"] == "pass" else 1), result


# --------------------------------------------------------------------------
# Commands


def default_m2mpsk():
    env = os.environ.get("M2MPSK")
    if env:
        return env
    for cand in (os.path.join(REPO, "build", "m2mpsk"), "/tmp/ib/m2mpsk"):
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("m2mpsk")


def cmd_list(args):
    if args.excluded:
        for c in all_combinations():
            why = excluded(c.peer, c.role, c.transport, c.case)
            if why:
                print("%s\t%s" % (c.name, why))
        return 0
    for c in cells():
        print(c.name)
    return 0


def cmd_run(args):
    cell = find_cell(args.cell)
    if cell is None:
        print("unknown cell %r (see: interop.py list)" % args.cell,
              file=sys.stderr)
        return 2
    why = excluded(cell.peer, cell.role, cell.transport, cell.case)
    if why:
        print("cell %s is excluded: %s" % (cell.name, why), file=sys.stderr)
        return 2
    if args.m2mpsk and os.access(args.m2mpsk, os.X_OK):
        # The cells were chosen for a build's engines: m2mpsk must have
        # exactly those ("m2mpsk 0.3.0 (boringssl+openssl)").
        version = tool_version([args.m2mpsk, "version"])
        m = re.search(r"\(([a-z+]+)\)", version)
        if m is None or parse_engines(m.group(1)) != BUILD_ENGINES:
            print("FAIL %s: m2mpsk reports %r, the cells are for engines %s "
                  "(--engines)" % (cell.name, version,
                                   "+".join(BUILD_ENGINES)))
            return 1
    rc, result = run_cell(cell, args.m2mpsk)
    word = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[result["result"]]
    print("%s %s%s" % (word, cell.name,
                       (": " + result["why"]) if result.get("why") else ""))
    if result.get("m2mpsk_line"):
        print("  " + result["m2mpsk_line"])
    if result.get("peer_suite"):
        print("  peer reports suite: " + result["peer_suite"])
    if result.get("peer_error"):
        print("  peer said: " + result["peer_error"])
    print("interop-result: " + json.dumps(result, sort_keys=True))
    return rc


def tool_version(argv, pattern=None):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = r.stdout.decode(errors="replace").strip()
    if pattern:
        m = re.search(pattern, text)
        return m.group(0) if m else text.splitlines()[0] if text else "?"
    return text.splitlines()[0] if text else "?"


def peer_versions(m2mpsk):
    node = tool_version(["node", "-p",
                         "'Node.js ' + process.version + ' (OpenSSL ' + "
                         "process.versions.openssl + ')'"])
    return {
        "m2mpsk": tool_version([m2mpsk, "version"]) if m2mpsk else "?",
        "openssl": tool_version(["openssl", "version"]),
        "gnutls": tool_version(["gnutls-cli", "--version"],
                               r"gnutls-cli \S+"),
        "node": node,
    }


def run_one_subprocess(name, m2mpsk):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "run",
                        name, "--m2mpsk", m2mpsk, "--engines",
                        "+".join(BUILD_ENGINES)],
                       stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=CELL_DEADLINE_S + 15)
    out = r.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("interop-result: "):
            res = json.loads(line[len("interop-result: "):])
            res["transcript"] = r.stderr.decode(errors="replace")
            return res
    return {"cell": name, "result": "fail",
            "why": "no result (exit %d): %s" % (r.returncode, out[-500:])}


def cmd_report(args):
    if not args.m2mpsk:
        print("m2mpsk not found: pass --m2mpsk PATH", file=sys.stderr)
        return 2
    todo = cells()
    results = {}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futs = {pool.submit(run_one_subprocess, c.name, args.m2mpsk): c
                for c in todo}
        for f in concurrent.futures.as_completed(futs):
            res = f.result()
            results[res["cell"]] = res
            print("%-4s %s" % (res["result"].upper(), res["cell"]),
                  file=sys.stderr)
            if res["result"] == "fail":
                print("     " + res.get("why", ""), file=sys.stderr)
    versions = peer_versions(args.m2mpsk)
    text = render_report(todo, results, versions)
    with open(args.out, "w") as f:
        f.write(text)
    n = {k: sum(1 for r in results.values() if r["result"] == k)
         for k in ("pass", "fail", "skip")}
    print("wrote %s" % args.out, file=sys.stderr)
    print("%d passed, %d failed, %d skipped" % (n["pass"], n["fail"],
                                                n["skip"]))
    return 1 if n["fail"] else 0


def short_case(case):
    if case in ALL_SUITES:
        return case.replace("TLS_", "").replace("_WITH_", " ").replace(
            "_", "-").replace("POLY1305-SHA256", "POLY1305")
    return case


def matrix_entry(cell, results):
    """One table entry: the result, what an expected failure expected,
    which engine auto ran."""
    r = results.get(cell.name, {})
    res = r.get("result", "not run")
    if res == "fail":
        return "**FAIL**"
    if res != "pass":
        return res
    if cell.lacking:
        return "no shared suite (expected)"
    if cell.engine == "auto" and not cell.negative:
        return "pass (%s)" % cell.runs_on
    if cell.negative:
        exp = cell.expectation()
        return "pass: %s" % (exp[0] if exp else "?")
    return "pass"


def render_report(todo, results, versions):
    L = []
    w = L.append
    n = {k: sum(1 for r in results.values() if r["result"] == k)
         for k in ("pass", "fail", "skip")}
    n_lack = sum(1 for c in todo if c.lacking)
    w("# Interoperability matrix")
    w("")
    w("Generated by `tests/interop/interop.py report`; do not edit by hand. "
      "Each cell is also a ctest test of the same name "
      "(`ctest -L interop`), which runs `interop.py run CELL`.")
    w("")
    w("Every cell is one real TLS 1.2 or DTLS 1.2 PSK handshake over "
      "127.0.0.1 between the `m2mpsk` command-line tool and a peer. "
      "**client** cells run `m2mpsk connect` (Entity A) against the peer's "
      "server; **server** cells run `m2mpsk serve --once` (Entity B) "
      "against the peer's client. m2mpsk offers or accepts `--suites all` "
      "with `--engine boringssl`, `--engine openssl` or `--engine auto` "
      "(one cell each, the last part of its name); the peer is forced to "
      "one suite, and the cell passes when the "
      "handshake completes, application data crosses in both directions, "
      "the suite the peer reports equals the suite in m2mpsk's "
      "`association` line, m2mpsk bound the expected identity (IdB as "
      "client, IdA as server), and its `engine=` is the engine named or, "
      "for auto, the one auto must pick (README, \"Engines\"). A suite "
      "the named engine lacks is an expected failure, checked as "
      "no-shared-suite is. Negative cells pass when m2mpsk's `failure` "
      "line gives the expected reason and detail.")
    w("")
    w("This build's engines: **%s**." % " and ".join(BUILD_ENGINES))
    w("")
    w("Result: **%d passed, %d failed, %d skipped** of %d cells (%d of the "
      "passes are expected failures: a suite the engine lacks)."
      % (n["pass"], n["fail"], n["skip"], len(todo), n_lack))
    w("")
    w("| component | version |")
    w("|---|---|")
    w("| m2mpsk | %s |" % versions["m2mpsk"])
    w("| OpenSSL (`openssl s_server`, `s_client`) | %s |"
      % versions["openssl"])
    w("| GnuTLS (`gnutls-serv`, `gnutls-cli`) | %s |" % versions["gnutls"])
    w("| Node.js (`tls`) | %s |" % versions["node"])
    w("")
    w("## Matrix")
    w("")
    w("One table per peer, m2mpsk's role (the peer's program) and "
      "transport; one row per suite the peer is forced to, or negative "
      "case; one column per `--engine`. **pass (E)**: auto ran the "
      "association on engine E, as it must. **no shared suite "
      "(expected)**: the engine lacks the suite and m2mpsk failed with the "
      "reason no-shared-suite gives. **pass: R**: a negative cell, m2mpsk "
      "failed with reason R. n/a: not a cell (see Exclusions); absent: "
      "this build lacks the engine.")
    w("")
    by_name = {c.name: c for c in todo}
    for peer in PEERS:
        for role in ROLES:
            for transport in TRANSPORTS:
                rows = []
                for case in CASES:
                    row = []
                    for engine in COLUMNS:
                        c = Cell(peer, role, transport, case, engine)
                        if engine != "auto" and engine not in BUILD_ENGINES:
                            row.append("absent")
                        elif engine not in column_engines(case):
                            row.append("n/a")
                        elif c.name not in by_name:
                            row.append("n/a")
                        else:
                            row.append(matrix_entry(c, results))
                    rows.append((case, row))
                if all(x in ("n/a", "absent") for _, r in rows for x in r):
                    continue
                w("### %s %s, m2mpsk as %s (%s), %s" % (
                    PEER_LABEL[peer], peer_version_short(peer, versions),
                    role, PEER_PROGRAM[(peer, role)], transport.upper()))
                w("")
                w("| suite / case | " + " | ".join(COLUMNS) + " |")
                w("|---|" + "---|" * len(COLUMNS))
                for case, row in rows:
                    w("| %s | %s |" % (short_case(case), " | ".join(row)))
                w("")
    w("## Cells")
    w("")
    w("| cell | engine | runs on | m2mpsk role | transport | suite / case "
      "| result | observed |")
    w("|---|---|---|---|---|---|---|---|")
    for c in todo:
        r = results.get(c.name, {"result": "not run"})
        if r["result"] == "pass" and not c.negative:
            obs = "peer and m2mpsk: %s" % r.get("peer_suite", "?")
        elif r["result"] == "pass":
            m = re.search(r'reason=\S+ detail=".*"', r.get("m2mpsk_line", ""))
            obs = "m2mpsk: `%s`" % (m.group(0) if m else "?")
            if r.get("peer_error"):
                obs += "; peer: `%s`" % r["peer_error"].replace("|", "/")
        else:
            obs = r.get("why", "").replace("|", "/").replace("\n", " ")
        w("| `%s` | %s | %s | %s | %s | %s | %s | %s |" % (
            c.name, c.engine, c.runs_on or "either", c.role,
            c.transport.upper(),
            c.case if c.case in NEGATIVE_CASES else "`%s`" % c.case,
            r["result"] + (" (expected failure)" if c.lacking else ""), obs))
    w("")
    w("## Exclusions")
    w("")
    w("Combinations that are not cells, and why:")
    w("")
    seen = {}
    for c in all_combinations():
        why = excluded(c.peer, c.role, c.transport, c.case)
        if why:
            seen.setdefault(why, []).append(c.name)
    for why, names in seen.items():
        w("- %s (%d cells: %s)" % (why, len(names),
                                   ", ".join("`%s`" % x for x in names)))
    for e in ENGINES:
        if e not in BUILD_ENGINES:
            w("- This build has no %s engine (`-DM2MPSK_TLS=%s`): its "
              "column says absent, and auto is the one engine it has."
              % (e, BUILD_ENGINES[0]))
    w("")
    w("## Engines and auto")
    w("")
    w("BoringSSL (Debian's) lacks TS-0003's mandated suites, "
      "`TLS_PSK_WITH_AES_128_CBC_SHA256` (TLS) and "
      "`TLS_PSK_WITH_AES_128_CCM_8` (DTLS): its cells for them are expected "
      "failures, checked like no-shared-suite (the same reason and detail "
      "on m2mpsk's side). OpenSSL has every suite in the matrix. With "
      "both engines, auto must run:")
    w("")
    w("- m2mpsk as client (initiator), `--suites all`: OpenSSL, the only "
      "engine with every enabled suite;")
    w("- m2mpsk as server over TLS: the fastest engine that has the suite "
      "the peer offers: BoringSSL for the five suites it has, OpenSSL for "
      "the mandated ones;")
    w("- m2mpsk as server over DTLS: OpenSSL (its cookie exchange).")
    w("")
    w("The cells check it from the `engine=` of m2mpsk's association line "
      "(the \"runs on\" column above). When auto is given a ClientHello "
      "whose suites neither engine has (no-shared-suite as server over "
      "TLS), either may refuse it: the cell checks the reason only.")
    w("")
    w("## Negative cells")
    w("")
    w("- **bad-key**: the peer has the right KpsaID and a different key.")
    w("- **unknown-kpsa-id**: as server, m2mpsk is offered `%s`, which its "
      "key file lacks; as client, the peer server knows only `%s` (with "
      "its own key), not m2mpsk's `%s`." % (OTHER_KPSA_ID, OTHER_KPSA_ID,
                                            KPSA_ID))
    w("- **no-shared-suite**: the peer offers or accepts only `%s`, which "
      "neither engine has." % LACKING_SUITE)
    w("")
    w("Expected reason on m2mpsk's side (first matching rule; `*` matches "
      "anything). When OpenSSL runs the association these rules come "
      "first: CBC suites negotiate encrypt-then-MAC (RFC 7366) with OpenSSL "
      "and GnuTLS peers, and OpenSSL fails a record whose MAC does not "
      "verify with a fatal bad_record_mac even over DTLS, where BoringSSL "
      "drops it silently:")
    w("")
    w("| peer | role | transport | case | reason | detail matches |")
    w("|---|---|---|---|---|---|")
    for rule in OPENSSL_EXPECT:
        w("| %s | %s | %s | %s | %s | `%s` |" % (
            tuple(x or "*" for x in rule[:4]) + (rule[4], rule[5])))
    w("")
    w("Then, for every engine:")
    w("")
    w("| peer | role | transport | case | reason | detail matches |")
    w("|---|---|---|---|---|---|")
    for rule in EXPECT:
        w("| %s | %s | %s | %s | %s | `%s` |" % (
            tuple(x or "*" for x in rule[:4]) + (rule[4], rule[5])))
    w("")
    w("## How each peer is run")
    w("")
    w("Placeholders: HEX is the 32-byte key `m2mpsk keygen --print hex` "
      "printed, ID the KpsaID (`%s`), P the port. Suites are forced with "
      "the names in the table below." % KPSA_ID)
    w("")
    w("- `openssl s_server -accept 127.0.0.1:0 -naccept 1 -nocert -psk HEX "
      "-psk_identity ID -cipher NAME [-dtls1_2]`: ready at its "
      "`ACCEPT 127.0.0.1:P` line (port 0 works: it prints the real port); "
      "the suite from `CIPHER is NAME`; data to m2mpsk from its stdin, data "
      "from m2mpsk on its stdout. Its stdin must stay open (EOF stops it). "
      "It does not check the client's identity (it only prints `PSK "
      "warning: client identity not what we expected`) and uses its one "
      "key anyway. The SHA-1 suites need no `@SECLEVEL=0` with Debian's "
      "OpenSSL 3.0.")
    w("- `openssl s_client -connect 127.0.0.1:P -servername %s -psk HEX "
      "-psk_identity ID -cipher NAME -nocommands [-dtls1_2]`: the suite "
      "from `Cipher is NAME`; `-nocommands` keeps lines such as `Q` or `R` "
      "data; stdin EOF sends close_notify." % SNI)
    w("- `stdbuf -oL -eL gnutls-serv --port P --pskpasswd FILE --echo "
      "--priority PRIO [--udp -d 4]` (FILE holds `ID:HEX`, as `m2mpsk "
      "keygen --print gnutls` prints it): it cannot pick port 0 (it prints "
      "port 0) nor a listen address (it binds 0.0.0.0 and ::, the cell "
      "connects to 127.0.0.1 only), so the harness picks a free port and "
      "retries when its line ends `bind() failed`; ready at "
      "`Echo Server listening on IPv4 0.0.0.0 port P...done` (stderr). Over "
      "TCP the suite comes from its `- Key Exchange:`/`- Cipher:`/`- MAC:` "
      "summary; over UDP it prints none, and `-d 4` logs `Selected cipher "
      "suite: GNUTLS_...`. An unknown PSK username gets a random key "
      "(the handshake fails with bad_record_mac, not "
      "unknown_psk_identity). With `--udp` it sends no alert when a "
      "handshake fails.")
    w("- `stdbuf -oL -eL gnutls-cli 127.0.0.1 --port P --sni-hostname %s "
      "--pskusername ID --pskkey HEX --priority PRIO [--udp]`: the suite "
      "from `- Description: (TLS1.2-X.509)-(PSK)-(AES-128-CBC)-(SHA1)` (an "
      "ECDHE-PSK exchange shows as its group, e.g. `(ECDHE-SECP256R1)`). "
      "Over TLS its priority keeps GnuTLS's default versions (no "
      "`-VERS-ALL:+VERS-TLS1.2`): with TLS 1.3 disabled it crashes after "
      "any ECDHE-PSK handshake (see Exclusions); m2mpsk negotiates TLS 1.2 "
      "all the same. `-V` crashes it too." % SNI)
    w("- `node tests/interop/node_peer.js server|client ...`: "
      "`tls.createServer({ciphers: NAME, pskCallback})` on 127.0.0.1 port "
      "0, and `tls.connect({ciphers: NAME, servername: '%s', "
      "pskCallback})`; the suite from `socket.getCipher().standardName`. "
      "Node's default ciphers have no PSK suite: `ciphers` must name them. "
      "A `pskCallback` returning null sends unknown_psk_identity." % SNI)
    w("")
    w("| IANA | OpenSSL / Node `ciphers` | GnuTLS priority: gnutls-serv "
      "over TLS (gnutls-cli over TLS drops `-VERS-ALL:+VERS-TLS1.2:`; "
      "both over DTLS use `+VERS-DTLS1.2`) |")
    w("|---|---|---|")
    for iana, v in ALL_SUITES.items():
        w("| `%s` | `%s` | `%s` |" % (iana, v[0], gnutls_priority("tls",
                                                                   iana)))
    w("")
    w("## Regenerating")
    w("")
    w("From a build with both engines (the default, `-DM2MPSK_TLS=all`):")
    w("")
    w("    cmake --build build --target m2mpsk-cli")
    w("    python3 tests/interop/interop.py report --m2mpsk build/m2mpsk -j2")
    w("")
    w("or `cmake --build build --target interop-report`, which writes "
      "docs/INTEROP.md only from a build with both engines (a one-engine "
      "build writes INTEROP.md in its build directory).")
    w("")
    return "\n".join(L)


def peer_version_short(peer, versions):
    v = versions.get(peer, "")
    m = re.search(r"\d+\.\d+\.\d+", v)
    return m.group(0) if m else v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    backend = dict(type=parse_engines, dest="engines",
                   default=os.environ.get("M2MPSK_ENGINES",
                                          "+".join(ENGINES)),
                   help="m2mpsk's engines, e.g. boringssl+openssl (the "
                        "default) or openssl; they decide the cells")
    p = sub.add_parser("list", help="print the cells, one a line")
    p.add_argument("--excluded", action="store_true",
                   help="print the combinations that are not cells, and why")
    p.add_argument("--engines", **backend)
    p = sub.add_parser("run", help="run one cell")
    p.add_argument("cell")
    p.add_argument("--m2mpsk", default=default_m2mpsk())
    p.add_argument("--engines", **backend)
    p = sub.add_parser("report", help="run every cell, write the report")
    p.add_argument("--m2mpsk", default=default_m2mpsk())
    p.add_argument("--engines", **backend)
    p.add_argument("--out", default=os.path.join(REPO, "docs",
                                                 "INTEROP.md"))
    p.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args()
    set_engines(args.engines)
    return {"list": cmd_list, "run": cmd_run, "report": cmd_report}[
        args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
