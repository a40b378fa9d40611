#!/usr/bin/env python3
"""m2mpsk gateway under attack from loopback, bounded in time (issue 16).

    gw_attacks.py CASE [PATH-TO-m2mpsk]     exit 0 pass, 1 fail, 77 skip

  silent   2,000 silent or slow sockets (half send nothing, half a partial
           ClientHello and stall), kept open (refilled as the gateway drops
           them) from 40 addresses 127.0.0.2-41; a legitimate client from
           127.0.0.1 succeeds (handshake + request) in >= 99% of 100 tries.
  noread   an authenticated peer pipelines 300 requests for 1 MB answers
           and never reads: the gateway's RSS grows by less than
           NOREAD_BOUND_KIB, while another client is served.
  flood    4,000 handshakes with unknown KpsaIDs from 40 addresses: RSS
           flat (< FLOOD_BOUND_KIB growth after a warm-up), legitimate
           clients served throughout (>= 99%), and the log bounded by
           --log-rate with a "log lines suppressed" line.
"""
import os
import random
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwlib  # noqa: E402
from gwlib import (AE_BODY, IDB, KEY, KPSA_ID, Backend, Client, Gateway,
                   ae_create_headers, write_keys)  # noqa: E402

SKIP = 77
TMP = tempfile.mkdtemp(prefix="gw_attacks.")
KEYS = os.path.join(TMP, "keys")
ATTACK_ADDRS = ["127.0.0.%d" % i for i in range(2, 42)]
# What one peer that never reads may cost the gateway (documented in
# README.md): max-response (2 MiB here) + 2 x max-buffer (256 KiB) + the
# association's input bound (256 KiB), with room for allocator slack.
NOREAD_BOUND_KIB = 16 * 1024
FLOOD_BOUND_KIB = 8 * 1024


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        print("SKIP: RLIMIT_NOFILE hard limit %d < %d" % (hard, need))
        sys.exit(SKIP)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))


def legit_try(port):
    """One handshake and one request from 127.0.0.1: True on success."""
    try:
        c = Client(port, timeout=5 * gwlib.SCALE)
        try:
            st, _, _ = c.request("POST", "/cse-in",
                                 ae_create_headers("C", "legit"), AE_BODY)
            return st == 201
        finally:
            c.close()
    except (ConnectionError, TimeoutError, OSError) as e:
        print("legit try failed:", e)
        return False


# A ClientHello's first bytes: a handshake record header and a few bytes.
PARTIAL_HELLO = bytes([0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4,
                       0x03, 0x03])


class Siege:
    """Keeps `n` silent or slow sockets open to the gateway, refilling
    those it closes, until stopped."""

    def __init__(self, port, n):
        self.port, self.n = port, n
        self.socks = []
        self.stop_ev = threading.Event()
        self.opened = 0
        self.dropped = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open_one(self):
        src = ATTACK_ADDRS[self.opened % len(ATTACK_ADDRS)]
        s = socket.socket()
        s.setblocking(False)
        s.bind((src, 0))
        try:
            s.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return
        if self.opened % 2:
            self.slow.append(s)
        self.opened += 1
        self.socks.append(s)

    def run(self):
        self.slow = []
        while not self.stop_ev.is_set():
            while len(self.socks) < self.n and not self.stop_ev.is_set():
                self.open_one()
            for s in self.slow:
                try:
                    s.send(PARTIAL_HELLO)
                except OSError:
                    pass
            self.slow = []
            p = select.poll()
            by_fd = {}
            for s in self.socks:
                p.register(s, select.POLLIN | select.POLLERR | select.POLLHUP)
                by_fd[s.fileno()] = s
            for fd, _ in p.poll(100):
                s = by_fd[fd]
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.socks.remove(s)
                    s.close()
                    self.dropped += 1
        for s in self.socks:
            s.close()

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join(timeout=30)


def case_silent(b):
    raise_nofile(8192)
    g = Gateway(["--keys", KEYS, "--id", IDB, "--http-listen", "127.0.0.1:0",
                 "--http-backend", "127.0.0.1:%d" % b.port, "--threads", "2",
                 "--max-conn", "1000", "--max-per-addr", "64",
                 "--handshake-timeout", "3000", "--log-rate", "20"])
    try:
        siege = Siege(g.port, 2000)
        siege.start()
        end = time.monotonic() + 20
        while len(siege.socks) < 2000 and time.monotonic() < end:
            time.sleep(0.05)  # polling the attacker's own count
        check(len(siege.socks) >= 2000, "2,000 attacking sockets open")
        ok = 0
        for i in range(100):
            ok += legit_try(g.port)
        print("legit: %d/100; attacker sockets opened %d, dropped by the "
              "gateway %d" % (ok, siege.opened, siege.dropped))
        siege.stop()
        check(ok >= 99, "a legitimate client succeeds in >= 99%% of tries "
              "(%d/100) with 2,000 silent or slow sockets open" % ok)
        clean_stop(g)
    finally:
        g.stop()


def case_noread(b):
    g = Gateway(["--keys", KEYS, "--id", IDB, "--http-listen", "127.0.0.1:0",
                 "--http-backend", "127.0.0.1:%d" % b.port, "--threads", "2",
                 "--max-response", str(2 << 20), "--max-buffer", "262144"])
    try:
        warm = Client(g.port)
        warm.request("POST", "/cse-in", ae_create_headers("C", "w"), AE_BODY)
        warm.request("GET", "/big?n=1000000", {"X-M2M-Origin": "Cae-1"})
        base = g.rss_kib()
        bad = Client(g.port)
        bad.request("POST", "/cse-in", ae_create_headers("C", "n0"), AE_BODY)
        bad.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        req = (b"GET /big?n=1000000 HTTP/1.1\r\nHost: x\r\n"
               b"X-M2M-Origin: Cae-1\r\n\r\n")
        sent = 0
        end = time.monotonic() + 8
        peak = base
        while time.monotonic() < end:
            # Writes what the socket takes, never reads.
            if sent < 300:
                try:
                    bad.a.write(req)
                    out = bad.a.drain()
                    bad.sock.setblocking(True)
                    bad.sock.settimeout(0.2)
                    bad.sock.sendall(out)
                    sent += 1
                except (socket.timeout, BlockingIOError):
                    pass
            else:
                time.sleep(0.1)  # the peer just sits there, not reading
            peak = max(peak, g.rss_kib())
        st, _, body = warm.request("GET", "/cse-in/ae",
                                   {"X-M2M-Origin": "Cae-1"})
        check(st == 200, "another client is served meanwhile")
        growth = peak - base
        print("non-reading peer: %d requests written, gateway RSS %d KiB -> "
              "peak %d KiB (+%d KiB)" % (sent, base, peak, growth))
        check(backend_count(b, "/big") < 20,
              "the gateway stopped reading its requests (%d reached the "
              "backend)" % backend_count(b, "/big"))
        if g.sanitized():
            print("RSS bound not checked: the gateway runs under ASan")
        else:
            check(growth < NOREAD_BOUND_KIB, "RSS growth %d KiB < %d KiB" %
                  (growth, NOREAD_BOUND_KIB))
        bad.close()
        warm.close()
        clean_stop(g)
    finally:
        g.stop()


def clean_stop(g):
    g.signal(signal.SIGTERM)
    rc = g.wait_exit(15)
    check(rc == 0, "SIGTERM after the attack: exit 0 (%d)" % rc)


def backend_count(b, prefix):
    return sum(1 for r in b.seen() if r[1].startswith(prefix))


def flood_worker(port, n, stop, counts):
    rnd = random.Random()
    for i in range(n):
        if stop.is_set():
            return
        kid = "u%08x@flood.example.com" % rnd.getrandbits(32)
        src = ATTACK_ADDRS[rnd.randrange(len(ATTACK_ADDRS))]
        try:
            s = socket.socket()
            s.bind((src, 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.close()
            c = None
            ks = gwlib.m2mpsk.Keystore()
            ks.add(kid, KEY, None, IDB, 0, 0)
            cfg = gwlib.m2mpsk.Config()
            a = gwlib.m2mpsk.Association(gwlib.m2mpsk.ROLE_INITIATOR,
                                         gwlib.m2mpsk.TRANSPORT_TLS, cfg, ks,
                                         kid)
            s = socket.socket()
            s.bind((src, 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            a.start(gwlib.now_ms(), int(time.time()))
            end = time.monotonic() + 5
            while a.state() == gwlib.m2mpsk.STATE_HANDSHAKING and \
                    time.monotonic() < end:
                out = a.drain()
                if out:
                    s.sendall(out)
                data = s.recv(65536)
                if not data:
                    break
                try:
                    a.feed(data, gwlib.now_ms())
                except gwlib.m2mpsk.Error:
                    break
            counts[0] += 1
            s.close()
            a.close()
            cfg.close()
            ks.close()
            del c
        except OSError:
            counts[1] += 1


def case_flood(b):
    raise_nofile(4096)
    rate = 20
    g = Gateway(["--keys", KEYS, "--id", IDB, "--http-listen", "127.0.0.1:0",
                 "--http-backend", "127.0.0.1:%d" % b.port, "--threads", "2",
                 "--log-rate", str(rate), "--rate-limit", "20"])
    try:
        stop = threading.Event()
        counts = [0, 0]
        # Warm-up: allocator pools, the rate limiter's tables.
        warm = [threading.Thread(target=flood_worker,
                                 args=(g.port, 100, stop, counts))
                for _ in range(4)]
        for t in warm:
            t.start()
        for t in warm:
            t.join(timeout=60)
        base = g.rss_kib()
        lines0, bytes0 = len(g.lines()), g.bytes
        counts[0] = counts[1] = 0
        t0 = time.monotonic()
        workers = [threading.Thread(target=flood_worker,
                                    args=(g.port, 1000, stop, counts))
                   for _ in range(4)]
        for t in workers:
            t.start()
        ok = tries = 0
        peak = base
        while any(t.is_alive() for t in workers) and \
                time.monotonic() - t0 < 60:
            ok += legit_try(g.port)
            tries += 1
            peak = max(peak, g.rss_kib())
        stop.set()
        for t in workers:
            t.join(timeout=30)
        elapsed = time.monotonic() - t0
        # The suppressed count is reported within a second or two.
        g.wait_line(r"m2mpsk: gateway: \d+ log lines suppressed",
                    timeout=5, start=lines0)
        lines = len(g.lines()) - lines0
        print("flood: %d unknown-identity handshakes (%d socket errors) in "
              "%.1f s; legit %d/%d; RSS %d -> peak %d KiB (+%d); log %d "
              "lines, %d bytes" % (counts[0], counts[1], elapsed, ok, tries,
                                   base, peak, peak - base, lines,
                                   g.bytes - bytes0))
        check(counts[0] >= 3000, "at least 3,000 flood handshakes ran (%d)"
              % counts[0])
        check(tries > 0 and ok >= 0.99 * tries,
              "legitimate clients served during the flood (%d/%d)" %
              (ok, tries))
        if g.sanitized():
            print("RSS bound not checked: the gateway runs under ASan")
        else:
            check(peak - base < FLOOD_BOUND_KIB, "RSS flat: +%d KiB < %d KiB"
                  % (peak - base, FLOOD_BOUND_KIB))
        bound = rate * (elapsed + 2) + rate + 10
        check(lines <= bound, "log lines %d <= %d (--log-rate %d)" %
              (lines, bound, rate))
        clean_stop(g)
    finally:
        g.stop()


CASES = {"silent": case_silent, "noread": case_noread, "flood": case_flood}


def main():
    if len(sys.argv) < 2 or sys.argv[1] == "list":
        print("\n".join(CASES))
        return 0
    name = sys.argv.pop(1)
    write_keys(KEYS, [(KPSA_ID, KEY, None)])
    try:
        socket.create_connection  # noqa
        t = socket.socket()
        t.bind(("127.0.0.2", 0))
        t.close()
    except OSError:
        print("SKIP: cannot bind 127.0.0.2 (no 127/8 loopback)")
        return SKIP
    b = Backend()
    watchdog = threading.Timer(170 * gwlib.SCALE, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    try:
        CASES[name](b)
        print("PASS", name)
        return 0
    except (AssertionError, ConnectionError, TimeoutError) as e:
        print("FAIL %s: %s" % (name, e))
        return 1
    finally:
        b.stop()
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
