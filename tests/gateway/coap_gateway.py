#!/usr/bin/env python3
"""The gateway's CoAP binding (TS-0008) over DTLS-PSK, end to end on loopback.

    coap_gateway.py PATH/TO/m2mpsk CASE       exit 0 pass, 1 fail, 77 skip
    coap_gateway.py list
    coap_gateway.py seeds DIR     writes fuzz_coap's seeds (tests/fuzz)

A device is the m2mpsk Python binding's DTLS initiator (KpsaID
test@onem2m.com, a record without IdA: the gateway binds the Credential-ID
12-test@onem2m.com) carrying CoAP messages encoded and decoded here (Debian
has no aiocoap). Behind `m2mpsk gateway --coap-listen --coap-backend` runs
a small plain-CoAP CSE in a thread that records every request it receives,
so that a test can prove a refused request never reached it.

Cases:
  forward      Credential-ID: a GET is refused (4106) before registration;
               AE CREATE (POST, TY 2) reaches the CSE with the device's
               options and payload under a token and message ID of the
               gateway's; the 2.01 comes back with the device's token and
               message ID; the AE-ID in it is bound; a request from that
               AE-ID passes; a retransmitted CON is answered again without
               reaching the CSE twice; a CSE answering with an empty ACK
               and a separate CON response is relayed piggybacked
  forged       a forged originator gets 4.03 with RSC 4106 and the RQI
               copied, and never reaches the CSE; two originators likewise
  plain        a plain (unsecured) CoAP request to the DTLS port gets 4.03
               with RSC 4107, no larger than the request, never forwarded
  identity     --identity-option: the device's option of that number is
               removed and the bound identity added
  malformed    bytes libcoap rejects, from an authenticated device, are
               dropped; the gateway and the association keep serving
  timeout      a CSE that never answers: the request is retransmitted a
               bounded number of times and the device gets 5.04 within
               the bound
  flood        DTLS ClientHellos from 200 sockets that never answer: the
               gateway replies at most 1x the bytes, creates no
               association, its RSS stays flat, and a device is served
               during the flood
  timers       --handshake-timeout ends a half-open handshake (stopped
               after the cookie exchange); --idle-timeout ends an idle
               association with close_notify
  limits       --max-per-addr: no association past the bound from one
               address, a slot again once one closes
  reconnect    a device restarting on the same address and port gets a new
               association (after the cookie exchange)
  reload       SIGHUP with a new key: the established association goes on,
               new ones need the new key
  churn        six devices doing everything at random for 8 s: every
               request answered, exit 0, no sanitizer report
  libcoap      libcoap's coap-client-openssl as the device (interop)
  stop         SIGTERM with a request in flight: answered, then
               close_notify, exit 0
  sizes        --max-request (4.13, not forwarded), --max-response (5.02),
               requests in flight per association (5.03 past 8)
Python 3 standard library and the m2mpsk binding (PYTHONPATH) only; every
wait bounded.
"""
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
import traceback

SKIP = 77


class Skip(Exception):
    pass
KPSA_ID = "test@onem2m.com"
KEY = bytes(range(1, 33))
IDB = "//m2m.example.com/cse-in"
CREDENTIAL = "12-" + KPSA_ID
AE_ID = "/cse-in/Cae-coap-1"  # what the test CSE assigns (SP-relative)
STEP_S = 10.0  # the longest wait for any one event
IDENTITY_OPTION = 2100

OPT_FR, OPT_RQI, OPT_RSC, OPT_TY = 256, 257, 265, 267
OPT_URI_PATH, OPT_CONTENT_FORMAT = 11, 12
CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT = 1, 2, 3


def code(c, d):
    return c << 5 | d


def code_str(v):
    return "%d.%02d" % (v >> 5, v & 31)


# ---------------------------------------------------------------------------
# CoAP (RFC 7252 §3), just what the test needs.
# ---------------------------------------------------------------------------

def _ext(v):
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    return 14, struct.pack(">H", v - 269)


def encode(mtype, mcode, mid, token=b"", options=(), payload=b""):
    out = bytearray([0x40 | mtype << 4 | len(token), mcode]) + \
        struct.pack(">H", mid) + token
    last = 0
    for num, val in sorted(options, key=lambda o: o[0]):
        if isinstance(val, int):
            val = val.to_bytes((val.bit_length() + 7) // 8, "big")
        elif isinstance(val, str):
            val = val.encode()
        dn, dx = _ext(num - last)
        ln, lx = _ext(len(val))
        out += bytes([dn << 4 | ln]) + dx + lx + val
        last = num
    if payload:
        out += b"\xff" + payload
    return bytes(out)


class Msg:
    def __init__(self, data):
        if len(data) < 4 or data[0] >> 6 != 1:
            raise ValueError("not CoAP")
        self.type = data[0] >> 4 & 3
        tkl = data[0] & 15
        self.code = data[1]
        self.mid = struct.unpack(">H", data[2:4])[0]
        self.token = data[4:4 + tkl]
        self.options = []
        self.payload = b""
        i, num = 4 + tkl, 0
        while i < len(data):
            if data[i] == 0xFF:
                self.payload = data[i + 1:]
                break
            d, ln = data[i] >> 4, data[i] & 15
            i += 1
            vals = []
            for n in (d, ln):
                if n == 13:
                    vals.append(data[i] + 13)
                    i += 1
                elif n == 14:
                    vals.append(struct.unpack(">H", data[i:i + 2])[0] + 269)
                    i += 2
                else:
                    vals.append(n)
            num += vals[0]
            self.options.append((num, data[i:i + vals[1]]))
            i += vals[1]

    def opts(self, num):
        return [v for n, v in self.options if n == num]

    def opt(self, num):
        v = self.opts(num)
        return v[0] if v else None

    def uint(self, num):
        v = self.opt(num)
        return None if v is None else int.from_bytes(v, "big")

    def __repr__(self):
        return "<CoAP t=%d %s mid=%d tok=%s opts=%r %r>" % (
            self.type, code_str(self.code), self.mid, self.token.hex(),
            self.options, self.payload[:80])


# ---------------------------------------------------------------------------
# The test CSE: plain CoAP over UDP, in a thread.
# ---------------------------------------------------------------------------

class Backend:
    """Records each datagram; answers by `mode`:
    piggyback  ACK with the response (2.01 and an AE-ID for an AE CREATE,
               2.05 echoing the request's URI and FR otherwise)
    separate   an empty ACK, then the response as a separate CON
    silent     nothing at all
    slow       piggyback, 1 s late"""

    def __init__(self, mode="piggyback"):
        self.mode = mode
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = []  # Msg
        self.acks = []  # the gateway's ACKs to separate responses
        self.lock = threading.Lock()
        self.stop = False
        self.mid = random.randrange(65536)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _response(self, m):
        rqi = m.opt(OPT_RQI) or b""
        if m.code == POST and m.uint(OPT_TY) == 2:
            body = json.dumps({"m2m:ae": {"aei": AE_ID, "api": "Ncoap",
                                          "rr": True}}).encode()
            return code(2, 1), [(OPT_CONTENT_FORMAT, 50), (OPT_RQI, rqi),
                                (OPT_RSC, 2001)], body
        path = "/".join(v.decode() for v in m.opts(OPT_URI_PATH))
        fr = (m.opt(OPT_FR) or b"").decode()
        body = json.dumps({"path": path, "fr": fr}).encode()
        if path == "big":
            body = json.dumps({"path": path, "pad": "x" * 2000}).encode()
        return code(2, 5), [(OPT_CONTENT_FORMAT, 50), (OPT_RQI, rqi),
                            (OPT_RSC, 2000)], body

    def _run(self):
        while not self.stop:
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            data, addr = self.sock.recvfrom(65536)
            try:
                m = Msg(data)
            except ValueError:
                continue
            if m.type == ACK:
                with self.lock:
                    self.acks.append(m)
                continue
            with self.lock:
                self.received.append(m)
            if self.mode == "silent" or m.code == 0:
                continue
            c, opts, body = self._response(m)
            if self.mode == "slow":
                reply = encode(ACK, c, m.mid, m.token, opts, body)
                threading.Timer(1.0, self.sock.sendto, (reply, addr)).start()
            elif self.mode == "piggyback":
                self.sock.sendto(encode(ACK, c, m.mid, m.token, opts, body),
                                 addr)
            else:
                self.sock.sendto(encode(ACK, 0, m.mid), addr)
                self.mid = (self.mid + 1) & 0xFFFF
                self.sock.sendto(encode(CON, c, self.mid, m.token, opts,
                                        body), addr)

    def requests(self):
        with self.lock:
            return list(self.received)

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


# ---------------------------------------------------------------------------
# The gateway process.
# ---------------------------------------------------------------------------

class Gateway:
    def __init__(self, m2mpsk, keys, backend_port, *extra, idb=IDB,
                 listen="127.0.0.1"):
        self.proc = subprocess.Popen(
            [m2mpsk, "gateway", "--keys", keys, "--id", idb,
             "--coap-listen", "%s:0" % listen,
             "--coap-backend", "127.0.0.1:%d" % backend_port,
             "--log-rate", "100000", "-v", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        self.lines = []
        self.lock = threading.Lock()
        self.port = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_for(r"gateway ready")
        m = self.wait_for(r"gateway listening coap %s:(\d+)" % re.escape(listen))
        self.port = int(m.group(1))

    def _read(self):
        for line in iter(self.proc.stderr.readline, b""):
            with self.lock:
                self.lines.append(line.decode(errors="replace"))

    def log(self):
        with self.lock:
            return "".join(self.lines)

    def wait_for(self, pattern, timeout=STEP_S):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader take the last lines
                m = re.search(pattern, self.log())
                if m:
                    return m
                raise AssertionError("gateway exited %d before %r:\n%s" % (
                    self.proc.returncode, pattern, self.log()))
            time.sleep(0.02)
        raise AssertionError("no %r from the gateway in %.0f s:\n%s" % (
            pattern, timeout, self.log()))

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def sanitized(self):
        with open("/proc/%d/maps" % self.proc.pid) as f:
            return "libasan" in f.read()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.reader.join(5)
        return self.proc.returncode


# ---------------------------------------------------------------------------
# The device: m2mpsk's DTLS initiator and CoAP.
# ---------------------------------------------------------------------------

def now_ms():
    return int(time.monotonic() * 1000)


class HandshakeIncomplete(AssertionError):
    pass


class Device:
    def __init__(self, m2mpsk_mod, port, timeout=STEP_S, local_port=0,
                 key=None):
        self.m = m2mpsk_mod
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if local_port:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", local_port))
        self.sock.connect(("127.0.0.1", port))
        self.ks = m2mpsk_mod.Keystore()
        self.ks.add(KPSA_ID, KEY if key is None else key, None, IDB)
        self.cfg = m2mpsk_mod.Config()
        self.a = m2mpsk_mod.Association(m2mpsk_mod.ROLE_INITIATOR,
                                        m2mpsk_mod.TRANSPORT_DTLS, self.cfg,
                                        self.ks, KPSA_ID)
        self.mid = random.randrange(65536)
        self.a.start(now_ms())
        self.inbox = []
        self._pump(lambda: self.a.state() != m2mpsk_mod.STATE_HANDSHAKING,
                   timeout)
        if self.a.state() == m2mpsk_mod.STATE_HANDSHAKING:
            self.sock.close()
            raise HandshakeIncomplete("no handshake within %.1f s" % timeout)
        assert self.a.state() == m2mpsk_mod.STATE_ESTABLISHED, \
            "handshake: %s" % self.a.failure_detail()

    def _flush(self):
        while True:
            out = self.a.drain()
            if not out:
                return
            self.sock.send(out)

    def _pump(self, until, timeout=STEP_S):
        end = time.monotonic() + timeout
        while True:
            self._flush()
            if until():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            wait = min(left, 0.2)
            t = self.a.next_timeout()
            if t is not None:
                wait = max(0.0, min(wait, (t - now_ms()) / 1000))
            r, _, _ = select.select([self.sock], [], [], wait)
            if r:
                self.a.feed(self.sock.recv(17408), now_ms())
                while self.a.state() == self.m.STATE_ESTABLISHED:
                    data = self.a.read()
                    if not data:
                        break
                    self.inbox.append(data)
            else:
                self.a.handle_timeout(now_ms())

    def send_raw(self, plain):
        self.a.write(plain)
        self._flush()

    def next_mid(self):
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def request(self, mcode, path, options=(), payload=b"", mtype=CON,
                token=None, mid=None, timeout=STEP_S, retransmit=False):
        """Sends one request; returns (request bytes, response Msg, the
        seconds it took) or (bytes, None, timeout) with no response.
        retransmit: a CON is sent again as RFC 7252 says while no response
        came (for tests where the network may drop it, as a flood does)."""
        token = os.urandom(4) if token is None else token
        mid = self.next_mid() if mid is None else mid
        opts = [(OPT_URI_PATH, p) for p in path.split("/") if p]
        opts += list(options)
        msg = encode(mtype, mcode, mid, token, opts, payload)
        t0 = time.monotonic()
        self.send_raw(msg)
        if not retransmit:
            return msg, self.wait_response(token, timeout), \
                time.monotonic() - t0
        # RFC 7252 4.2: a CON unanswered after ACK_TIMEOUT (2 s) is sent
        # again, same Message ID, the wait doubling each time, as a real
        # device does when a datagram is lost.
        end, wait = t0 + timeout, 2.0
        while True:
            left = end - time.monotonic()
            r = self.wait_response(token, min(wait, max(left, 0)))
            if r is not None or time.monotonic() >= end:
                return msg, r, time.monotonic() - t0
            self.send_raw(msg)
            wait *= 2

    def wait_response(self, token, timeout=STEP_S):
        found = []

        def have():
            for i, data in enumerate(self.inbox):
                m = Msg(data)
                if m.token == token and m.code != 0:
                    found.append(m)
                    del self.inbox[i]
                    return True
            return False
        self._pump(have, timeout)
        return found[0] if found else None

    def close(self):
        try:
            self.a.close_notify()
            self._flush()
        except Exception:
            pass
        self.sock.close()


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

class Env:
    def __init__(self, m2mpsk_path, mode="piggyback", extra=(), key=None,
                 idb=None, listen="127.0.0.1"):
        key = KEY if key is None else key
        idb = IDB if idb is None else idb
        self.tmp = tempfile.mkdtemp(prefix="gw-coap-")
        self.keys = os.path.join(self.tmp, "keys")
        fd = os.open(self.keys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("kpsa-id=%s kpsa=hex:%s idb=%s\n" % (KPSA_ID, key.hex(),
                                                         idb))
        self.backend = Backend(mode)
        self.gw = Gateway(m2mpsk_path, self.keys, self.backend.port, *extra,
                          idb=idb, listen=listen)

    def close(self):
        rc = self.gw.stop()
        self.backend.close()
        log = self.gw.log()
        for bad in ("ERROR: AddressSanitizer", "runtime error:",
                    "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer"):
            assert bad not in log, "sanitizer report:\n" + log[-6000:]
        return rc


def rqi_of(m):
    return m.opt(OPT_RQI)


def ae_create(dev, rqi=b"rqi-create", fr="C"):
    body = json.dumps({"m2m:ae": {"rn": "coap-ae", "api": "Ncoap",
                                  "rr": True, "srv": ["3"]}}).encode()
    return dev.request(POST, "cse-in", [(OPT_FR, fr), (OPT_RQI, rqi),
                                        (OPT_TY, 2), (OPT_CONTENT_FORMAT, 50)],
                       body)


def case_forward(m2mpsk_path, m):
    env = Env(m2mpsk_path)
    try:
        dev = Device(m, env.gw.port)
        # Before registration only an <AE> CREATE passes.
        _, r, _ = dev.request(GET, "cse-in", [(OPT_FR, "Cae-coap-1"),
                                              (OPT_RQI, "rqi-early")])
        assert r is not None and r.code == code(4, 3), r
        assert r.uint(OPT_RSC) == 4106 and rqi_of(r) == b"rqi-early", r
        assert env.backend.requests() == [], env.backend.requests()

        req, r, _ = ae_create(dev)
        sent = Msg(req)
        assert r is not None, "no response to the AE CREATE:\n" + env.gw.log()
        assert r.code == code(2, 1) and r.uint(OPT_RSC) == 2001, r
        assert r.type == ACK and r.mid == sent.mid and r.token == sent.token
        assert rqi_of(r) == b"rqi-create", r
        assert json.loads(r.payload)["m2m:ae"]["aei"] == AE_ID
        got = env.backend.requests()
        assert len(got) == 1, got
        b = got[0]
        assert b.code == POST and b.uint(OPT_TY) == 2, b
        assert b.opt(OPT_FR) == b"C" and b.opt(OPT_RQI) == b"rqi-create", b
        assert b.opts(OPT_URI_PATH) == [b"cse-in"], b
        assert b.payload == sent.payload, b
        assert b.type == CON and len(b.token) == 8, b
        print("AE CREATE relayed: device token %s mid %d, CSE token %s mid %d"
              % (sent.token.hex(), sent.mid, b.token.hex(), b.mid))

        # The AE-ID is bound: its requests pass, the Credential-ID's stem
        # requests no longer do.
        _, r, _ = dev.request(GET, "cse-in/coap-ae",
                              [(OPT_FR, AE_ID), (OPT_RQI, "rqi-get")])
        assert r is not None and r.code == code(2, 5), r
        assert json.loads(r.payload) == {"path": "cse-in/coap-ae",
                                         "fr": AE_ID}, r.payload
        _, r, _ = dev.request(GET, "cse-in", [(OPT_FR, "C"),
                                              (OPT_RQI, "rqi-stem")])
        assert r is not None and r.uint(OPT_RSC) == 4106, r
        # A second AE CREATE cannot rebind.
        _, r, _ = ae_create(dev, b"rqi-again", fr="Cother")
        assert r is not None and r.uint(OPT_RSC) == 4106, r
        assert len(env.backend.requests()) == 2

        # A retransmitted CON (same MID) is answered again from memory.
        req, r1, _ = dev.request(GET, "cse-in/coap-ae",
                                 [(OPT_FR, AE_ID), (OPT_RQI, "rqi-dup")])
        assert r1 is not None and r1.code == code(2, 5), r1
        dev.send_raw(req)
        r2 = dev.wait_response(Msg(req).token)
        assert r2 is not None and r2.mid == r1.mid and \
            r2.payload == r1.payload, r2
        assert len(env.backend.requests()) == 3, env.backend.requests()

        # NON in, NON out, with the device's token.
        _, r, _ = dev.request(GET, "cse-in/coap-ae", [(OPT_FR, AE_ID),
                                                      (OPT_RQI, "rqi-non")],
                              mtype=NON)
        assert r is not None and r.type == NON and r.code == code(2, 5), r

        # Many requests in a row map back one to one.
        for i in range(20):
            _, r, _ = dev.request(GET, "cse-in/x%d" % i,
                                  [(OPT_FR, AE_ID), (OPT_RQI, "q%d" % i)])
            assert r is not None and rqi_of(r) == b"q%d" % i, r
            assert json.loads(r.payload)["path"] == "cse-in/x%d" % i
        dev.close()
    finally:
        rc = env.close()
    assert rc == 0, "gateway exit %r" % rc

    # A CSE that answers with an empty ACK and a separate CON response
    # (node-coap does when its answer takes over 50 ms: Mobius's pxy_coap).
    env = Env(m2mpsk_path, "separate")
    try:
        dev = Device(m, env.gw.port)
        req, r, _ = ae_create(dev)
        assert r is not None and r.code == code(2, 1), r
        assert r.type == ACK and r.mid == Msg(req).mid, r
        _, r, _ = dev.request(GET, "cse-in/coap-ae",
                              [(OPT_FR, AE_ID), (OPT_RQI, "rqi-sep")])
        assert r is not None and r.code == code(2, 5), r
        deadline = time.monotonic() + STEP_S
        while len(env.backend.acks) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(env.backend.acks) == 2, "the gateway did not ACK the " \
            "separate responses: %r" % env.backend.acks
        dev.close()
    finally:
        env.close()


def case_forged(m2mpsk_path, m):
    env = Env(m2mpsk_path)
    try:
        dev = Device(m, env.gw.port)
        _, r, _ = ae_create(dev)
        assert r is not None and r.code == code(2, 1), r
        n = len(env.backend.requests())
        for fr in ("/cse-in/Cmallory", "//m2m.example.com/cse-in/Cmallory",
                   "/cse-in", "S-other", "not an id"):
            _, r, _ = dev.request(POST, "cse-in/coap-ae",
                                  [(OPT_FR, fr), (OPT_RQI, "rqi-forged"),
                                   (OPT_TY, 4), (OPT_CONTENT_FORMAT, 50)],
                                  b'{"m2m:cin":{"con":"x"}}')
            assert r is not None, "no answer for From %r" % fr
            assert r.code == code(4, 3) and r.uint(OPT_RSC) == 4106, r
            assert rqi_of(r) == b"rqi-forged", r
            assert b"m2m:dbg" in r.payload, r
        # Two originators, one of them right: refused as well.
        _, r, _ = dev.request(GET, "cse-in", [(OPT_FR, AE_ID),
                                              (OPT_FR, "/cse-in/Cmallory"),
                                              (OPT_RQI, "rqi-two")])
        assert r is not None and r.uint(OPT_RSC) == 4106, r
        # No originator at all.
        _, r, _ = dev.request(GET, "cse-in", [(OPT_RQI, "rqi-none")])
        assert r is not None and r.uint(OPT_RSC) == 4106, r
        assert len(env.backend.requests()) == n, \
            "a refused request reached the CSE: %r" % env.backend.requests()[n:]
        # The association still serves its AE.
        _, r, _ = dev.request(GET, "cse-in", [(OPT_FR, AE_ID),
                                              (OPT_RQI, "rqi-ok")])
        assert r is not None and r.code == code(2, 5), r
        assert len(env.backend.requests()) == n + 1
        dev.close()
    finally:
        env.close()


def case_plain(m2mpsk_path, m):
    env = Env(m2mpsk_path)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", env.gw.port))
        req = encode(CON, GET, 4242, b"\x01\x02", [
            (OPT_URI_PATH, "cse-in"), (OPT_FR, "/cse-in/Cae-coap-1"),
            (OPT_RQI, "rqi-plain")])
        s.send(req)
        r, _, _ = select.select([s], [], [], STEP_S)
        assert r, "no answer to a plain CoAP request"
        data = s.recv(65536)
        a = Msg(data)
        assert a.code == code(4, 3) and a.uint(OPT_RSC) == 4107, a
        assert a.type == ACK and a.mid == 4242 and a.token == b"\x01\x02", a
        assert rqi_of(a) == b"rqi-plain", a
        assert len(data) <= len(req), (len(data), len(req))
        # Too small to answer without amplification: no answer.
        tiny = encode(CON, GET, 7, b"", [(OPT_RQI, "r")])
        s.send(tiny)
        r, _, _ = select.select([s], [], [], 1.0)
        if r:
            assert len(s.recv(65536)) <= len(tiny)
        assert env.backend.requests() == []
        s.close()
    finally:
        env.close()


def case_identity(m2mpsk_path, m):
    env = Env(m2mpsk_path, extra=("--identity-option", str(IDENTITY_OPTION)))
    try:
        dev = Device(m, env.gw.port)
        _, r, _ = dev.request(POST, "cse-in", [
            (OPT_FR, "C"), (OPT_RQI, "rqi-id"), (OPT_TY, 2),
            (IDENTITY_OPTION, "spoofed-1"), (IDENTITY_OPTION, "spoofed-2")],
            b'{"m2m:ae":{"api":"Ncoap","rr":true}}')
        assert r is not None and r.code == code(2, 1), r
        _, r, _ = dev.request(GET, "cse-in", [(OPT_FR, AE_ID),
                                              (IDENTITY_OPTION, "spoofed")])
        assert r is not None and r.code == code(2, 5), r
        got = env.backend.requests()
        assert len(got) == 2, got
        assert got[0].opts(IDENTITY_OPTION) == [CREDENTIAL.encode()], got[0]
        assert got[1].opts(IDENTITY_OPTION) == [AE_ID.encode()], got[1]
        # The other options kept their order and values.
        assert got[0].opt(OPT_FR) == b"C" and got[0].uint(OPT_TY) == 2
        nums = [n for n, _ in got[0].options]
        assert nums == sorted(nums), nums
        dev.close()
    finally:
        env.close()


def case_malformed(m2mpsk_path, m):
    env = Env(m2mpsk_path)
    try:
        dev = Device(m, env.gw.port)
        _, r, _ = ae_create(dev)
        assert r is not None and r.code == code(2, 1), r
        bad = [
            b"\x00",                          # too short
            b"\x00\x01\x00\x01",              # version 0
            b"\x49\x01\x00\x01" + b"A" * 9,   # token length 9
            b"\x40\x01\x00\x01\xf1\x00",      # option delta 15
            b"\x40\x01\x00\x01\xd1",          # extended delta missing
            b"\x40\x01\x00\x01\x1f",          # length nibble 15
            b"\x40\x01\x00\x01\xff",          # payload marker, no payload
            b"\x44\x00\x00\x01abcd",          # empty message with a token
            b"\x40\x01\x00\x01\xe1\xff\xff" + b"v",  # delta past 65535
            os.urandom(200),
        ]
        for i in range(200):
            bad.append(os.urandom(random.randrange(1, 64)))
        for b in bad:
            dev.send_raw(b)
        # An empty CON (CoAP ping) gets a RST.
        dev.send_raw(encode(CON, 0, 999))
        assert dev._pump(lambda: any(Msg(d).type == RST and Msg(d).mid == 999
                                     for d in dev.inbox)), "no RST to a ping"
        _, r, _ = dev.request(GET, "cse-in", [(OPT_FR, AE_ID),
                                              (OPT_RQI, "rqi-after")])
        assert r is not None and r.code == code(2, 5), \
            "not served after malformed input:\n" + env.gw.log()
        assert env.gw.proc.poll() is None
        got = env.backend.requests()
        assert len(got) == 2, got
        dev.close()
    finally:
        rc = env.close()
    assert rc == 0, rc


def case_timeout(m2mpsk_path, m):
    """--cse-timeout 2500: a CSE that never answers costs the device a 5.04
    after 2.5 s, the request sent to it at 0 s and again after the 1 s ACK
    timeout (the next would be at 3 s), never twice under two IDs."""
    env = Env(m2mpsk_path, "silent", extra=("--cse-timeout", "2500"))
    try:
        dev = Device(m, env.gw.port)
        req, r, took = ae_create(dev)
        assert r is not None, "no 5.04 within %.0f s" % STEP_S
        assert r.code == code(5, 4), r
        assert r.type == ACK and r.mid == Msg(req).mid, r
        assert rqi_of(r) == b"rqi-create", r
        assert 2.3 <= took <= 4.5, "5.04 after %.2f s" % took
        assert "did not answer within 2500 ms" in env.gw.log(), env.gw.log()
        got = env.backend.requests()
        assert len(got) == 2, "%d transmissions" % len(got)
        assert len({(g.mid, g.token) for g in got}) == 1, got
        print("5.04 after %.2f s, %d transmissions to the CSE" %
              (took, len(got)))
        dev.close()
    finally:
        env.close()


def client_hellos(m, count):
    """Real DTLS 1.2 ClientHellos from the binding's initiator, each with
    a fresh random."""
    ks = m.Keystore()
    ks.add(KPSA_ID, KEY, None, IDB)
    cfg = m.Config()
    out = []
    for _ in range(count):
        a = m.Association(m.ROLE_INITIATOR, m.TRANSPORT_DTLS, cfg, ks,
                          KPSA_ID)
        a.start(now_ms())
        out.append(a.drain())
        a.close()
    return out


def case_flood(m2mpsk_path, m):
    sockets_n, hellos_n, flood_s = 200, 4000, 4.0
    env = Env(m2mpsk_path)
    try:
        warm = Device(m, env.gw.port)  # makes the engine's contexts
        _, r, _ = ae_create(warm)
        assert r is not None and r.code == code(2, 1), r
        warm.close()
        created_before = len(re.findall(r"new association", env.gw.log()))
        assert created_before == 1, env.gw.log()
        rss0 = env.gw.rss_kib()
        hellos = client_hellos(m, 64)
        socks = []
        for _ in range(sockets_n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(("127.0.0.1", env.gw.port))
            socks.append(s)
        sent = received = count = 0
        result = {}

        def legit():
            try:
                d = Device(m, env.gw.port)
                # The flood overfills the gateway's socket buffer, so the
                # request may be lost: the device retransmits it.
                _, rr, _ = d.request(GET, "cse-in", [(OPT_FR, "C"),
                                                     (OPT_RQI, "in-flood")],
                                     retransmit=True)
                result["r"] = rr
                d.close()
            except Exception as e:  # reported below
                result["e"] = e
        t = None
        t_start = time.monotonic()
        end = t_start + flood_s
        while time.monotonic() < end and count < hellos_n * 4:
            for s in socks:
                h = hellos[count % len(hellos)]
                try:
                    s.send(h)
                    sent += len(h)
                    count += 1
                except BlockingIOError:
                    pass
            if t is None and count >= hellos_n // 2:
                t = threading.Thread(target=legit)
                t.start()
            for s in socks:
                try:
                    while True:
                        received += len(s.recv(65536))
                except (BlockingIOError, ConnectionRefusedError):
                    pass
        flood_took = time.monotonic() - t_start
        if t is None:
            t = threading.Thread(target=legit)
            t.start()
        t.join(STEP_S * 3)
        # Replies still on their way.
        drain_end = time.monotonic() + 1.0
        while time.monotonic() < drain_end:
            r, _, _ = select.select(socks, [], [], 0.1)
            for s in r:
                try:
                    received += len(s.recv(65536))
                except (BlockingIOError, ConnectionRefusedError):
                    pass
        rss1 = env.gw.rss_kib()
        log = env.gw.log()
        created = len(re.findall(r"new association", log)) - created_before
        for s in socks:
            s.close()
        print("flood: %d ClientHellos (%d bytes) from %d sockets in %.1f s; "
              "%d bytes back (%.2fx); associations created %d (the "
              "legitimate device's: 1); RSS %d -> %d KiB" % (
                  count, sent, sockets_n, flood_took, received,
                  received / max(sent, 1), created, rss0, rss1))
        assert count >= 2000, "the flood sent only %d" % count
        assert "e" not in result, "the device failed: %r" % result.get("e")
        rr = result.get("r")
        assert rr is not None and rr.code == code(4, 3) and \
            rr.uint(OPT_RSC) == 4106, "the device was not served: %r" % rr
        assert received <= sent, "reflection %d > %d" % (received, sent)
        assert created == 1, "%d associations created" % created
        if env.gw.sanitized():
            print("RSS bound not checked under AddressSanitizer")
        else:
            assert rss1 - rss0 < 2048, "RSS grew %d KiB" % (rss1 - rss0)
    finally:
        env.close()


def write_fuzz_seeds(out):
    """tests/fuzz/corpus/fuzz_coap/: fuzz_coap's input format (option byte,
    two-byte length, the device's message, the CSE's)."""
    os.makedirs(out, exist_ok=True)

    def seed(name, opts, dev, cse=b""):
        with open(os.path.join(out, name), "wb") as f:
            f.write(bytes([opts]) + struct.pack(">H", len(dev)) + dev + cse)
    ae = encode(CON, POST, 1, b"\x01\x02\x03\x04", [
        (OPT_URI_PATH, "cse-in"), (OPT_CONTENT_FORMAT, 50), (OPT_FR, "C"),
        (OPT_RQI, "rqi-1"), (OPT_TY, 2)],
        b'{"m2m:ae":{"api":"Ncoap","rr":true}}')
    created = encode(ACK, code(2, 1), 7, bytes(8), [
        (OPT_CONTENT_FORMAT, 50), (OPT_RQI, "rqi-1"), (OPT_RSC, 2001)],
        json.dumps({"m2m:ae": {"aei": "Cae-1"}}).encode())
    seed("ae-create", 0, ae, created)
    seed("ae-create-identity", 1, ae, created)
    seed("identity-is-fr", 1 | 2, ae, created)
    seed("identity-uri-path", 1 | 4, ae)
    seed("identity-high", 1 | 6, encode(CON, GET, 2, b"", [
        (OPT_URI_PATH, "a"), (OPT_URI_PATH, "b"), (2100, "spoof"),
        (2100, "spoof2"), (OPT_FR, "/cse-in/Cae-1")]))
    seed("get-non", 8, encode(NON, GET, 3, b"\xaa", [
        (OPT_URI_PATH, "cse-in"), (OPT_FR, "/cse-in/Cae-1"), (OPT_RQI, "r")]))
    seed("two-originators", 0, encode(CON, GET, 4, b"", [
        (OPT_FR, "/cse-in/Cae-1"), (OPT_FR, "/cse-in/Cmallory")]))
    seed("long-option", 0, encode(CON, PUT, 5, b"12345678", [
        (OPT_URI_PATH, "x" * 300), (OPT_FR, "y" * 600)], b"z" * 1000))
    seed("separate-response", 0, ae, encode(CON, code(2, 5), 99, bytes(8), [
        (OPT_CONTENT_FORMAT, 50), (OPT_RSC, 2000)], b"{}"))
    seed("empty-ack", 0, ae, encode(ACK, 0, 7))
    seed("ping", 0, encode(CON, 0, 9))
    seed("malformed-delta15", 0, b"\x40\x01\x00\x01\xf1\x00",
         b"\x60\x45\x00\x01\xd1")
    # TY longer than 2 bytes (found by fuzz_coap: libcoap's uint decoder
    # wraps): present, but no resource type.
    seed("ty-long", 0, encode(CON, POST, 6, b"", [
        (OPT_FR, "C"), (OPT_TY, b"\x80\x00\x00\x00\x02")]),
        encode(ACK, code(2, 1), 7, bytes(8), [(OPT_RSC, b"\x80\0\0\x07\xd1")]))
    seed("gateway-timeout", 0, ae, encode(ACK, code(5, 4), 7, bytes(8), [
        (OPT_RQI, "rqi-1")]))


def case_sizes(m2mpsk_path, m):
    """--max-request 1024: a larger request gets 4.13 and is not forwarded;
    --max-response 1024: a larger response from the CSE becomes 5.02;
    GW_COAP_MAX_INFLIGHT (8) requests in flight per association, the next
    gets 5.03 at once."""
    env = Env(m2mpsk_path, extra=("--max-request", "1024",
                                  "--max-response", "1024"))
    try:
        dev = Device(m, env.gw.port)
        _, r, _ = ae_create(dev)
        assert r is not None and r.code == code(2, 1), r
        _, r, _ = dev.request(PUT, "cse-in/coap-ae",
                              [(OPT_FR, AE_ID), (OPT_RQI, "rqi-big")],
                              b"p" * 1500)
        assert r is not None and r.code == code(4, 13), r
        assert rqi_of(r) == b"rqi-big", r
        assert len(env.backend.requests()) == 1
        _, r, _ = dev.request(GET, "big", [(OPT_FR, AE_ID),
                                           (OPT_RQI, "rqi-bigresp")])
        assert r is not None and r.code == code(5, 2), r
        assert rqi_of(r) == b"rqi-bigresp", r
        _, r, _ = dev.request(GET, "small", [(OPT_FR, AE_ID)])
        assert r is not None and r.code == code(2, 5), r
        dev.close()
    finally:
        env.close()
    env = Env(m2mpsk_path, "silent", extra=("--cse-timeout", "5000"))
    try:
        dev = Device(m, env.gw.port)
        tokens = []
        for i in range(8):
            tok = b"inflt%03d" % i
            tokens.append(tok)
            dev.send_raw(encode(CON, POST, dev.next_mid(), tok, [
                (OPT_FR, "C"), (OPT_TY, 2), (OPT_RQI, "f%d" % i)]))
        _, r, took = dev.request(POST, "cse-in", [(OPT_FR, "C"), (OPT_TY, 2),
                                                  (OPT_RQI, "ninth")])
        assert r is not None and r.code == code(5, 3), r
        assert took < 2.0, "5.03 after %.1f s" % took
        for tok in tokens:
            r = dev.wait_response(tok, 8.0)
            assert r is not None and r.code == code(5, 4), (tok, r)
        assert len({(g.mid, g.token) for g in env.backend.requests()}) == 8
        dev.close()
    finally:
        env.close()


def case_reconnect(m2mpsk_path, m):
    """A device that restarts and handshakes again from the same address
    and port (RFC 6347 4.2.8) gets a new association once its cookie
    proves the address; the old binding does not carry over."""
    env = Env(m2mpsk_path)
    try:
        d1 = Device(m, env.gw.port)
        _, r, _ = ae_create(d1)
        assert r is not None and r.code == code(2, 1), r
        port = d1.sock.getsockname()[1]
        d1.sock.close()  # gone without close_notify
        d2 = Device(m, env.gw.port, local_port=port)
        env.gw.wait_for(r"coap peer=127\.0\.0\.1:%d: a new handshake "
                        r"replaces the association" % port)
        # A new association, bound to the Credential-ID again.
        _, r, _ = d2.request(GET, "cse-in", [(OPT_FR, AE_ID),
                                             (OPT_RQI, "rqi-old-binding")])
        assert r is not None and r.uint(OPT_RSC) == 4106, r
        _, r, _ = ae_create(d2, b"rqi-again")
        assert r is not None and r.code == code(2, 1), r
        _, r, _ = d2.request(GET, "cse-in", [(OPT_FR, AE_ID)])
        assert r is not None and r.code == code(2, 5), r
        d2.close()
    finally:
        rc = env.close()
    assert rc == 0, rc


def case_stop(m2mpsk_path, m):
    """SIGTERM with a request in flight: the gateway says it stops, relays
    the CSE's late answer, closes the association with close_notify and
    exits 0."""
    env = Env(m2mpsk_path, "slow")
    try:
        dev = Device(m, env.gw.port)
        req = encode(CON, POST, dev.next_mid(), b"stop", [
            (OPT_FR, "C"), (OPT_TY, 2), (OPT_RQI, "rqi-stop")], b"{}")
        dev.send_raw(req)
        deadline = time.monotonic() + STEP_S
        while not env.backend.requests():
            assert time.monotonic() < deadline, "the CSE got nothing"
            time.sleep(0.01)
        t0 = time.monotonic()
        os.killpg(env.gw.proc.pid, signal.SIGTERM)
        env.gw.wait_for(r"gateway stopping")
        r = dev.wait_response(b"stop", 5.0)
        assert r is not None and r.code == code(2, 1), \
            "no answer after SIGTERM:\n" + env.gw.log()
        try:
            dev._pump(lambda: dev.a.state() == m.STATE_CLOSED, 5.0)
        except m.Closed:
            pass
        assert dev.a.state() == m.STATE_CLOSED, dev.a.state()
        rc = env.gw.proc.wait(timeout=STEP_S)
        took = time.monotonic() - t0
        assert rc == 0, rc
        assert took < 6.0, "exit %.1f s after SIGTERM" % took
        print("stopped %.2f s after SIGTERM, the request in flight answered"
              % took)
        dev.sock.close()
    finally:
        rc = env.close()
    assert rc == 0, rc


def case_libcoap(m2mpsk_path, m):
    """An independent DTLS-PSK CoAP client, libcoap's coap-client on
    OpenSSL (Debian libcoap3-bin): AE CREATE relayed (2.01, RSC 2001, the
    AE-ID bound), a forged originator answered 4.03/4106 and not
    forwarded. coap-client sends the URI's host as SNI, so the gateway
    serves //localhost/cse-in; it takes an ASCII key."""
    client = shutil.which("coap-client-openssl")
    if client is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("coap-client-openssl missing (libcoap3-bin)")
        raise Skip("coap-client-openssl not installed (libcoap3-bin)")
    key = b"coap-client-psk-0123456789"
    # The gateway listens where coap-client will send: the first address
    # "localhost" resolves to (::1 on a fresh Debian, 127.0.0.1 on some
    # images).
    first = socket.getaddrinfo("localhost", None, socket.AF_UNSPEC,
                               socket.SOCK_DGRAM)[0]
    listen = "[::1]" if first[0] == socket.AF_INET6 else "127.0.0.1"
    env = Env(m2mpsk_path, key=key, idb="//localhost/cse-in", listen=listen)

    def coap_client(*args):
        r = subprocess.run(
            [client, "-u", KPSA_ID, "-k", key.decode(), "-B", "3", "-v", "7",
             *args], capture_output=True, timeout=20)
        return (r.stdout + r.stderr).decode(errors="replace")
    try:
        out = coap_client(
            "-m", "post", "-O", "256,C", "-O", "257,rqi-cc", "-O", "267,0x02",
            "-t", "50", "-e", '{"m2m:ae":{"api":"Ncc","rr":true}}',
            "coaps://localhost:%d/cse-in" % env.gw.port)
        # The oneM2M options are critical (odd) and unknown to coap-client:
        # it logs the response, then rejects it, as RFC 7252 5.4.1 says.
        assert re.search(r"t:ACK c:2\.01 .*265:\\x07\\xD1", out), out
        got = env.backend.requests()
        assert len(got) == 1 and got[0].uint(OPT_TY) == 2, got
        assert got[0].opt(OPT_RQI) == b"rqi-cc", got[0]
        env.gw.wait_for(r"bound to /cse-in/Cae-coap-1")
        out = coap_client(
            "-m", "get", "-O", "256,/cse-in/Cmallory", "-O", "257,rqi-forged",
            "coaps://localhost:%d/cse-in" % env.gw.port)
        assert re.search(r"t:ACK c:4\.03 .*257:\\x72\\x71\\x69.*"
                         r"265:\\x10\\x0A", out), out
        assert len(env.backend.requests()) == 1, env.backend.requests()
        env.gw.wait_for(r"suite=TLS_PSK_WITH_AES_128_CCM_8")
        print("coap-client (libcoap, OpenSSL): 2.01 relayed, 4106 answered")
    finally:
        rc = env.close()
    assert rc == 0, rc


def case_churn(m2mpsk_path, m):
    """Six devices for 8 s against a CSE answering separately: requests
    (CON and NON, right and forged originators, AE CREATEs), bursts past the
    in-flight bound, random bytes, close_notify, vanishing, restarting on
    the same port. Every request gets an answer; the gateway exits 0 (and,
    built with sanitizers, reports nothing: Env.close checks)."""
    env = Env(m2mpsk_path, "separate",
              extra=("--max-per-addr", "1000", "--idle-timeout", "3000",
                     "--handshake-timeout", "2000"))
    counts = {"answered": 0, "unanswered": 0, "errors": []}
    lock = threading.Lock()

    def device(seed):
        rnd = random.Random(seed)
        end = time.monotonic() + 8
        dev = None
        while time.monotonic() < end:
            try:
                if dev is None:
                    dev = Device(m, env.gw.port, timeout=5)
                op = rnd.random()
                if op < 0.5:
                    fr = rnd.choice(["C", AE_ID, "/cse-in/Cx", ""])
                    opts = [(OPT_FR, fr)] if fr else []
                    if rnd.random() < 0.3:
                        opts.append((OPT_TY, 2))
                    _, r, _ = dev.request(
                        rnd.choice([GET, POST]), "cse-in", opts,
                        b"x" * rnd.randrange(0, 300),
                        mtype=rnd.choice([CON, NON]), timeout=7)
                    with lock:
                        counts["answered" if r else "unanswered"] += 1
                elif op < 0.6:
                    dev.send_raw(os.urandom(rnd.randrange(1, 50)))
                elif op < 0.7:
                    for _ in range(10):
                        dev.send_raw(encode(CON, GET, dev.next_mid(),
                                            os.urandom(4), [(OPT_FR, AE_ID)]))
                elif op < 0.8:
                    dev.close()
                    dev = None
                elif op < 0.9:
                    dev.sock.close()  # gone without a word
                    dev = None
                else:
                    port = dev.sock.getsockname()[1]
                    dev.sock.close()
                    dev = Device(m, env.gw.port, timeout=5, local_port=port)
            except Exception as e:  # reported below
                with lock:
                    counts["errors"].append(repr(e))
                if dev is not None:
                    dev.sock.close()
                dev = None
        if dev is not None:
            dev.close()
    try:
        threads = [threading.Thread(target=device, args=(i,))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        print("churn: %d requests answered, %d not, %d errors" % (
            counts["answered"], counts["unanswered"], len(counts["errors"])))
        assert counts["answered"] > 100, counts
        assert counts["unanswered"] == 0, counts
        assert not counts["errors"], counts["errors"][:5]
    finally:
        rc = env.close()
    assert rc == 0, rc


def case_reload(m2mpsk_path, m):
    """SIGHUP with a new key for the KpsaID: the established association
    goes on; a new one needs the new key."""
    env = Env(m2mpsk_path)
    try:
        dev = Device(m, env.gw.port)
        _, r, _ = ae_create(dev)
        assert r is not None and r.code == code(2, 1), r
        new_key = bytes(range(100, 132))
        tmp = env.keys + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("kpsa-id=%s kpsa=hex:%s idb=%s\n" % (
                KPSA_ID, new_key.hex(), IDB))
        os.rename(tmp, env.keys)
        os.killpg(env.gw.proc.pid, signal.SIGHUP)
        env.gw.wait_for(r"gateway keys reloaded \(1 records\)")
        _, r, _ = dev.request(GET, "cse-in", [(OPT_FR, AE_ID),
                                              (OPT_RQI, "after-reload")])
        assert r is not None and r.code == code(2, 5), r
        try:
            Device(m, env.gw.port, timeout=5.0)
            raise AssertionError("the old key still makes associations")
        except (HandshakeIncomplete, m.Error):
            pass
        d2 = Device(m, env.gw.port, key=new_key)
        _, r, _ = ae_create(d2, b"rqi-new-key")
        assert r is not None and r.code == code(2, 1), r
        d2.close()
        dev.close()
    finally:
        rc = env.close()
    assert rc == 0, rc


def case_timers(m2mpsk_path, m):
    """--handshake-timeout: a device that stops after the cookie exchange
    leaves no association; --idle-timeout: an idle one is closed with
    close_notify."""
    env = Env(m2mpsk_path, extra=("--handshake-timeout", "1000",
                                  "--idle-timeout", "1500"))
    try:
        # Half-open: the second ClientHello (with the cookie), then silence.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", env.gw.port))
        port = s.getsockname()[1]
        ks = m.Keystore()
        ks.add(KPSA_ID, KEY, None, IDB)
        a = m.Association(m.ROLE_INITIATOR, m.TRANSPORT_DTLS, m.Config(), ks,
                          KPSA_ID)
        a.start(now_ms())
        s.send(a.drain())
        r, _, _ = select.select([s], [], [], STEP_S)
        assert r, "no HelloVerifyRequest"
        a.feed(s.recv(17408), now_ms())
        s.send(a.drain())  # the ClientHello with the cookie
        t0 = time.monotonic()
        env.gw.wait_for(r"coap peer=127\.0\.0\.1:%d: new association" % port)
        env.gw.wait_for(r"coap failure peer=127\.0\.0\.1:%d reason=timeout"
                        % port)
        took = time.monotonic() - t0
        assert took < 4.0, "the handshake timeout took %.1f s" % took
        a.close()
        s.close()

        # Idle: established, then nothing for 1.5 s.
        dev = Device(m, env.gw.port)
        port = dev.sock.getsockname()[1]
        t0 = time.monotonic()
        env.gw.wait_for(r"coap peer=127\.0\.0\.1:%d: idle for" % port)
        took = time.monotonic() - t0
        assert 1.3 <= took < 4.0, "idle end after %.1f s" % took

        def closed():
            return dev.a.state() == m.STATE_CLOSED
        try:
            dev._pump(closed, 3.0)
        except m.Closed:
            pass
        assert dev.a.state() == m.STATE_CLOSED, \
            "no close_notify (state %d)" % dev.a.state()
        dev.sock.close()
        print("handshake timeout and idle end observed")
    finally:
        rc = env.close()
    assert rc == 0, rc


def case_limits(m2mpsk_path, m):
    """--max-per-addr 2: a third association from 127.0.0.1 is not made
    (its handshake never completes) until one of the two closes."""
    env = Env(m2mpsk_path, extra=("--max-per-addr", "2"))
    try:
        d1 = Device(m, env.gw.port)
        d2 = Device(m, env.gw.port)
        try:
            Device(m, env.gw.port, timeout=2.0)
            raise AssertionError("a third association from one address")
        except HandshakeIncomplete:
            pass
        for d in (d1, d2):
            _, r, _ = d.request(GET, "cse-in", [(OPT_FR, "C"),
                                                (OPT_RQI, "lim")])
            assert r is not None and r.uint(OPT_RSC) == 4106, r
        d1.close()  # close_notify: the gateway releases its slot
        deadline = time.monotonic() + STEP_S
        while True:
            try:
                d3 = Device(m, env.gw.port, timeout=2.0)
                break
            except HandshakeIncomplete:
                assert time.monotonic() < deadline, \
                    "no slot after a close_notify"
        _, r, _ = d3.request(GET, "cse-in", [(OPT_FR, "C"), (OPT_RQI, "l3")])
        assert r is not None and r.uint(OPT_RSC) == 4106, r
        d2.close()
        d3.close()
    finally:
        rc = env.close()
    assert rc == 0, rc


CASES = {
    "forward": case_forward,
    "forged": case_forged,
    "plain": case_plain,
    "identity": case_identity,
    "malformed": case_malformed,
    "timeout": case_timeout,
    "flood": case_flood,
    "timers": case_timers,
    "sizes": case_sizes,
    "reconnect": case_reconnect,
    "stop": case_stop,
    "libcoap": case_libcoap,
    "churn": case_churn,
    "reload": case_reload,
    "limits": case_limits,
}


# Cases whose devices are not the Python binding's (.ci/sanitize builds
# no binding, and still runs these against its ASan gateway).
WITHOUT_BINDING = ("plain", "libcoap")


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "list":
        print("\n".join(CASES))
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "seeds":
        write_fuzz_seeds(sys.argv[2])
        return 0
    if len(sys.argv) != 3 or sys.argv[2] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    m2mpsk_path, case = os.path.abspath(sys.argv[1]), sys.argv[2]
    r = subprocess.run([m2mpsk_path, "gateway", "--help"],
                       capture_output=True, timeout=20)
    if r.returncode == 2 and b"without" in r.stderr:
        print("SKIP: %s" % r.stderr.decode().strip())
        return SKIP
    extra = os.environ.get("M2MPSK_PYTHONPATH")
    if extra:
        sys.path[:0] = [os.path.join(extra, "m2mpsk-python"), extra]
    m = None
    try:
        import m2mpsk as m
    except ImportError as e:
        if case not in WITHOUT_BINDING:
            print("SKIP: the m2mpsk Python binding is not built (%s)" % e)
            return SKIP
    if m is not None and not m.engine_available(m.ENGINE_OPENSSL):
        print("SKIP: no OpenSSL engine: the gateway's DTLS needs cookies")
        return SKIP
    try:
        CASES[case](m2mpsk_path, m)
    except Skip as e:
        print("SKIP: %s" % e)
        return SKIP
    except AssertionError:
        traceback.print_exc()
        print("FAIL: %s" % case)
        return 1
    print("PASS: %s" % case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
