#!/usr/bin/env python3
"""m2mpsk gateway, HTTP binding, end to end over loopback: TLS-PSK clients
(the m2mpsk Python binding) -> `m2mpsk gateway` -> a recording plain-HTTP
backend standing for the CSE.

    gw_http.py CASE [PATH-TO-m2mpsk]     exit 0 pass, 1 fail, 77 skip
    gw_http.py list

Cases: forward, forged, plain4107, credential, ida, identity, config,
config-errors, reload, stop, close, limits, openssl, concurrent, timeouts,
rate-limit, malformed, pipeline, cse-timeout."""
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwlib  # noqa: E402
from gwlib import (AE_BODY, IDB, KEY, KPSA_ID, Backend, Client, Gateway,
                   ae_create_headers, write_keys)  # noqa: E402

TMP = tempfile.mkdtemp(prefix="gw_http.")
KEYS = os.path.join(TMP, "keys")


def gateway(backend, *extra, keys=KEYS, ready=True):
    return Gateway(["--keys", keys, "--id", IDB, "--http-listen",
                    "127.0.0.1:0", "--http-backend",
                    "127.0.0.1:%d" % backend.port, "--threads", "2"] +
                   list(extra), ready=ready)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


def with_ids(backend, ri):
    return [r for r in backend.seen() if r[2].get("X-M2M-RI") == ri]


def case_forward(b, g):
    c = Client(g.port)
    write_body = b'{"m2m:cin":{"con":"21"}}'
    st, h, body = c.request("POST", "/cse-in/ae/cnt?x=1",
                            {"X-M2M-Origin": "C", "X-M2M-RI": "f1",
                             "Content-Type": "application/json;ty=2"},
                            AE_BODY)
    check(st == 201 and h["x-m2m-rsc"] == "2001", "AE CREATE forwarded, 201")
    st, h, body = c.request("POST", "/cse-in/ae/cnt?x=1",
                            {"X-M2M-Origin": "/cse-in/Cae-1",
                             "X-M2M-RI": "f2",
                             "Content-Type": "application/json;ty=4"},
                            write_body)
    seen = with_ids(b, "f2")
    check(len(seen) == 1, "the backend received the request once")
    m, path, hdrs, got = seen[0]
    check(m == "POST" and path == "/cse-in/ae/cnt?x=1", "method and target")
    check(hdrs.get("X-M2M-Origin") == "/cse-in/Cae-1" and
          hdrs.get("Content-Type") == "application/json;ty=4", "headers")
    check(got == write_body, "body")
    check(st == 200 and h["x-m2m-rsc"] == "2000" and h["x-m2m-ri"] == "f2" and
          body == b'{"m2m:dbg": "ok /cse-in/ae/cnt?x=1"}',
          "status, headers and body copied back")
    for i in range(20):  # keep-alive, to the backend as well
        st, _, _ = c.request("GET", "/cse-in/ae", {
            "X-M2M-Origin": "/cse-in/Cae-1", "X-M2M-RI": "k%d" % i})
        check(st == 200, "request %d on the same association" % i) \
            if i == 19 else None
    c.close()


def case_forged(b, g):
    c = Client(g.port)
    st, h, _ = c.request("POST", "/cse-in", ae_create_headers("C", "a1"),
                         AE_BODY)
    check(st == 201, "registered")
    st, h, body = c.request("GET", "/cse-in/ae", {
        "X-M2M-Origin": "//m2m.example.com/cse-in/Cmallory",
        "X-M2M-RI": "forged-1"})
    check(st == 403 and h.get("x-m2m-rsc") == "4106", "forged From: 403 4106")
    check(h.get("x-m2m-ri") == "forged-1", "X-M2M-RI copied")
    check(body.startswith(b'{"m2m:dbg":"'), "m2m:dbg body: %r" % body)
    st, h, _ = c.request("GET", "/cse-in/ae", {"X-M2M-RI": "forged-2"})
    check(st == 403 and h.get("x-m2m-rsc") == "4106", "no From: 4106")
    check(not with_ids(b, "forged-1") and not with_ids(b, "forged-2"),
          "the backend never saw the refused requests")
    st, _, _ = c.request("GET", "/cse-in/ae", {"X-M2M-Origin": "Cae-1",
                                                "X-M2M-RI": "ok-1"})
    check(st == 200 and len(with_ids(b, "ok-1")) == 1,
          "the association goes on after a refusal")
    c.close()


def case_plain4107(b, g):
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.sendall(b"GET /cse-in HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: /cse-9\r\n"
              b"X-M2M-RI: p1\r\n\r\n")
    data = b""
    end = time.monotonic() + 10
    while time.monotonic() < end:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and data.endswith(b"}"):
            break
    s.close()
    check(data.startswith(b"HTTP/1.1 403"), "plain HTTP: 403 (%r)" % data[:60])
    check(b"X-M2M-RSC: 4107" in data and b"X-M2M-RI: p1" in data,
          "X-M2M-RSC 4107 and X-M2M-RI")
    check(not with_ids(b, "p1"), "the backend never saw it")


def case_credential(b, g):
    c = Client(g.port)
    st, h, _ = c.request("GET", "/cse-in", {"X-M2M-Origin": "C",
                                             "X-M2M-RI": "c1"})
    check(st == 403 and h["x-m2m-rsc"] == "4106",
          "Credential-ID: a retrieve before registering gets 4106")
    st, h, _ = c.request("POST", "/cse-in", {
        "X-M2M-Origin": "C", "X-M2M-RI": "c2",
        "Content-Type": "application/json;ty=3"}, b"{}")
    check(st == 403 and h["x-m2m-rsc"] == "4106",
          "a CREATE of another resource type gets 4106")
    check(not with_ids(b, "c1") and not with_ids(b, "c2"),
          "neither reached the backend")
    st, h, body = c.request("POST", "/cse-in", ae_create_headers("C", "c3"),
                            AE_BODY)
    check(st == 201 and b'"aei": "Cae-1"' in body, "AE CREATE passes, 201")
    st, _, _ = c.request("GET", "/cse-in/ae", {
        "X-M2M-Origin": "//m2m.example.com/cse-in/Cae-1", "X-M2M-RI": "c4"})
    check(st == 200, "the bound AE-ID (absolute) passes")
    st, _, _ = c.request("GET", "/cse-in/ae", {"X-M2M-Origin": "Cae-1",
                                                "X-M2M-RI": "c5"})
    check(st == 200, "the bound AE-ID (stem) passes")
    st, h, _ = c.request("GET", "/cse-in/ae", {"X-M2M-Origin": "Cae-2",
                                                "X-M2M-RI": "c6"})
    check(st == 403 and h["x-m2m-rsc"] == "4106", "another AE-ID gets 4106")
    st, h, _ = c.request("POST", "/cse-in", ae_create_headers("C", "c7"),
                         AE_BODY)
    check(st == 403 and h["x-m2m-rsc"] == "4106",
          "a second registration with another From gets 4106")
    check(not with_ids(b, "c6") and not with_ids(b, "c7"),
          "the refused ones never reached the backend")
    g.wait_line(r"bound peer=.* to AE-ID //m2m\.example\.com/cse-in/Cae-1")
    c.close()


def case_ida(b, g):
    ida = "//m2m.example.com/cse-in/Cida-ae"
    write_keys(KEYS, [(KPSA_ID, KEY, None), ("ida@onem2m.com", KEY, ida)])
    g.signal(signal.SIGHUP)
    g.wait_line(r"keys reloaded \(2 records\)")
    c = Client(g.port, kpsa_id="ida@onem2m.com")
    st, _, _ = c.request("GET", "/cse-in", {"X-M2M-Origin": ida,
                                             "X-M2M-RI": "i1"})
    check(st == 200, "IdA configured: its AE-ID passes")
    st, h, _ = c.request("GET", "/cse-in", {"X-M2M-Origin": "Cother",
                                             "X-M2M-RI": "i2"})
    check(st == 403 and h["x-m2m-rsc"] == "4106" and not with_ids(b, "i2"),
          "another From 4106")
    c.close()


def case_identity(b, g):
    c = Client(g.port)
    st, _, _ = c.request("POST", "/cse-in", dict(
        ae_create_headers("C", "h1"), **{"X-Auth-Id": "forged"}), AE_BODY)
    check(st == 201, "registered")
    st, _, _ = c.request("GET", "/cse-in/ae", {
        "X-M2M-Origin": "Cae-1", "X-M2M-RI": "h2",
        "x-auth-id": "//m2m.example.com/cse-in/Cadmin"})
    h1, h2 = with_ids(b, "h1")[0][2], with_ids(b, "h2")[0][2]
    check(h1.get("X-Auth-Id") == "12-" + KPSA_ID,
          "before the AE-ID is bound: the Credential-ID (%r)" % h1)
    check(h2.get("X-Auth-Id") == "//m2m.example.com/cse-in/Cae-1",
          "then the AE-ID, the device's own header removed (%r)" % h2)
    check(sum(1 for k in h2 if k.lower() == "x-auth-id") == 1, "once")
    c.close()


def case_config(b, _g):
    conf = os.path.join(TMP, "gw.conf")
    with open(conf, "w") as f:
        f.write("# the gateway's configuration\n"
                "keys = %s\nid = %s\n\nhttp-listen = 127.0.0.1:0\n"
                "http-backend = 127.0.0.1:%d\n  threads = 1\n"
                "identity-header = X-From-File\nlog-rate = 50\n" %
                (KEYS, IDB, b.port))
    g = Gateway(["--config", conf, "--identity-header", "X-From-Cli"])
    try:
        c = Client(g.port)
        c.request("POST", "/cse-in", ae_create_headers("C", "cf1"), AE_BODY)
        hdrs = with_ids(b, "cf1")[0][2]
        check("X-From-Cli" in hdrs and "X-From-File" not in hdrs,
              "a config file runs the gateway; the command line overrides it")
        c.close()
    finally:
        g.stop()


def case_config_errors(b, _g):
    conf = os.path.join(TMP, "bad.conf")
    for text, line, what in [
            ("keys = %s\nid = %s\nnot-an-option = 1\n" % (KEYS, IDB), 3,
             "unknown key"),
            ("keys = %s\n\n# c\nmax-conn = lots\n" % KEYS, 4, "not a number"),
            ("id = /cse\nid\n", 2, "key = value"),
            ("id = not-a-cse-id\n", 1, "not a CSE-ID")]:
        with open(conf, "w") as f:
            f.write(text)
        g = Gateway(["--config", conf, "--http-listen", "127.0.0.1:0",
                     "--http-backend", "127.0.0.1:%d" % b.port], ready=False)
        rc = g.wait_exit()
        g.stop()
        out = "\n".join(g.lines())
        check(rc == 2 and ("%s:%d:" % (conf, line)) in out,
              "%s: exit 2 naming %s:%d (%r)" % (what, conf, line, out))
    g = Gateway(["--config", os.path.join(TMP, "missing.conf")], ready=False)
    rc = g.wait_exit()
    g.stop()
    check(rc == 2 and "missing.conf" in "\n".join(g.lines()),
          "a missing config file: exit 2")
    g = Gateway(["--keys", os.path.join(TMP, "nokeys"), "--id", IDB,
                 "--http-listen", "127.0.0.1:0", "--http-backend",
                 "127.0.0.1:1"], ready=False)
    check(g.wait_exit() == 3, "a missing key file: exit 3")
    g.stop()


def case_reload(b, g):
    old = Client(g.port)
    st, _, _ = old.request("POST", "/cse-in", ae_create_headers("C", "r1"),
                           AE_BODY)
    check(st == 201, "old association registered")
    key2 = bytes(range(100, 132))
    try:
        Client(g.port, kpsa_id="new@onem2m.com", key=key2).close()
        check(False, "an unknown key fails before the reload")
    except ConnectionError:
        print("ok: an unknown key fails before the reload")
    write_keys(KEYS, [("new@onem2m.com", key2, None)])
    n = len(g.lines())
    g.signal(signal.SIGHUP)
    g.wait_line(r"^m2mpsk: gateway keys reloaded \(1 records\)$", start=n)
    new = Client(g.port, kpsa_id="new@onem2m.com", key=key2)
    st, _, _ = new.request("POST", "/cse-in", ae_create_headers("C", "r2"),
                           AE_BODY)
    check(st == 201, "the new key works after SIGHUP")
    st, _, _ = old.request("GET", "/cse-in/ae", {"X-M2M-Origin": "Cae-1",
                                                  "X-M2M-RI": "r3"})
    check(st == 200, "the association made with the old keys goes on")
    try:
        Client(g.port).close()
        check(False, "the removed key no longer makes associations")
    except ConnectionError:
        print("ok: the removed key no longer makes associations")
    with open(KEYS, "w") as f:
        f.write("this is not a key file\n")
    n = len(g.lines())
    g.signal(signal.SIGHUP)
    g.wait_line(r"^m2mpsk: gateway keys not reloaded: .*:1: ", start=n)
    Client(g.port, kpsa_id="new@onem2m.com", key=key2).close()
    print("ok: a bad key file keeps the keys in force")
    new.close()
    old.close()


def case_stop(b, g):
    c = Client(g.port)
    c.request("POST", "/cse-in", ae_create_headers("C", "s1"), AE_BODY)
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: Cae-1\r\n"
           b"X-M2M-RI: s2\r\n\r\n")
    end = time.monotonic() + 10
    while not with_ids(b, "s2") and time.monotonic() < end:
        b.wait_request(0.5)
    g.signal(signal.SIGTERM)
    g.wait_line(r"^m2mpsk: gateway stopping$")
    st, _, body = c.response()
    check(st == 200, "the request in flight at SIGTERM is answered")
    check(g.wait_exit() == 0, "exit 0 after SIGTERM")
    try:
        socket.create_connection(("127.0.0.1", g.port), timeout=2).close()
        check(False, "the listener is closed")
    except OSError:
        print("ok: the listener is closed")
    c.close()


def case_close(b, g):
    c = Client(g.port)
    c.request("POST", "/cse-in", ae_create_headers("C", "x1"), AE_BODY)
    st, h, body = c.request("GET", "/big?n=3000000", {
        "X-M2M-Origin": "Cae-1", "X-M2M-RI": "x2", "Connection": "close"})
    check(st == 200 and len(body) == 3000000,
          "Connection: close: the whole 3 MB response arrives first")
    check(closed_with_close_notify(c),
          "then the gateway ends the association with close_notify")
    c.close()


def case_malformed(b, g):
    """Bytes that are not HTTP, on an association whose AE-ID is bound:
    the gateway answers 400 and closes; nothing reaches the CSE; the gateway
    serves the next association (what `serve --http`'s test proved of its
    hand-written parser)."""
    c = Client(g.port)
    st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "m1"),
                         AE_BODY)
    check(st == 201, "registered")
    n = len(b.seen())
    c.send(b"NOT HTTP\r\n\r\n")
    st, _, _ = c.response()
    check(st == 400, "not HTTP: 400 (%d)" % st)
    try:
        c._pump(lambda: False)
        closed = False
    except ConnectionError:
        closed = True
    check(closed and c.eof, "then the association is closed")
    check(len(b.seen()) == n, "nothing reached the CSE")
    c.close()
    c = Client(g.port)
    st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "m2"),
                         AE_BODY)
    check(st == 201, "the next association is served")
    c.close()


def read_head(c):
    """A response's status and headers only (HEAD: no body follows)."""
    c._pump(lambda: b"\r\n\r\n" in c.plain)
    head, c.plain = c.plain.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), hdrs


def closed_with_close_notify(c):
    """Waits for the gateway to end the association: True when it sent
    close_notify first (the client's association is CLOSED, not failed
    or cut)."""
    try:
        c._pump(lambda: False)
    except ConnectionError:
        pass
    return c.eof and c.a.state() == gwlib.m2mpsk.STATE_CLOSED


def case_pipeline(b, g):
    """Requests pipelined in one write are answered in order, one at a
    time (HEAD without a body, a refused one among them); HTTP/1.0 and
    Connection: close end the association with close_notify after the
    response; a method the gateway does not forward gets 501."""
    c = Client(g.port)
    st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "q0"),
                         AE_BODY)
    check(st == 201, "registered")
    c.send(b"".join(
        b"%s /cse-in/ae HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: %s\r\n"
        b"X-M2M-RI: %s\r\n\r\n" % req for req in [
            (b"GET", b"Cae-1", b"q1"), (b"HEAD", b"Cae-1", b"q2"),
            (b"GET", b"Cother", b"q3"), (b"GET", b"Cae-1", b"q4")]))
    st, h, body = c.response()
    check(st == 200 and h.get("x-m2m-ri") == "q1" and
          body == b'{"m2m:dbg": "ok /cse-in/ae"}', "pipelined 1: GET")
    st, h = read_head(c)
    check(st == 200 and h.get("x-m2m-ri") == "q2" and
          h.get("content-length") == str(len(b'{"m2m:dbg": "ok /cse-in/ae"}')),
          "pipelined 2: HEAD, the backend's answer without a body, with the "
          "length a GET has (%d %r)" % (st, h.get("content-length")))
    st, h, _ = c.response()
    check(st == 403 and h.get("x-m2m-rsc") == "4106" and
          h.get("x-m2m-ri") == "q3", "pipelined 3: refused by the gateway")
    st, h, _ = c.response()
    check(st == 200 and h.get("x-m2m-ri") == "q4", "pipelined 4: GET")
    check([r[2].get("X-M2M-RI") for r in b.seen()
           if r[2].get("X-M2M-RI", "").startswith("q")] == ["q0", "q1", "q2", "q4"],
          "the backend saw the accepted ones, in order")
    c.send(b"GET /cse-in/ae HTTP/1.0\r\nX-M2M-Origin: Cae-1\r\n"
           b"X-M2M-RI: q5\r\nConnection: keep-alive\r\n\r\n")
    st, h, _ = c.response()
    check(st == 200 and h.get("connection", "").lower() == "keep-alive",
          "HTTP/1.0 with keep-alive: the association goes on")
    c.send(b"GET /cse-in/ae HTTP/1.0\r\nX-M2M-Origin: Cae-1\r\n"
           b"X-M2M-RI: q6\r\n\r\n")
    st, h, body = c.response()
    check(st == 200 and h.get("connection", "").lower() == "close" and
          body.startswith(b'{"m2m:dbg"'), "HTTP/1.0: answered whole")
    check(closed_with_close_notify(c),
          "then the gateway ends the association with close_notify")
    c.close()
    c = Client(g.port)
    c.send(b"TRACE / HTTP/1.1\r\nX-M2M-RI: q7\r\n\r\n")
    st, h, _ = c.response()
    check(st == 501 and h.get("x-m2m-ri") == "q7" and
          not with_ids(b, "q7"), "TRACE: 501, not forwarded")
    c.close()


def case_limits(b, g):
    c = Client(g.port)
    c.request("POST", "/cse-in", ae_create_headers("C", "l1"), AE_BODY)
    st, _, _ = c.request("POST", "/cse-in/ae", {
        "X-M2M-Origin": "Cae-1", "X-M2M-RI": "l2",
        "Content-Type": "application/json;ty=4"}, b"x" * 70000)
    check(st == 413 and not with_ids(b, "l2"),
          "a request over --max-request: 413, not forwarded")
    c.close()
    c = Client(g.port)
    c.request("POST", "/cse-in", ae_create_headers("C", "l3"), AE_BODY)
    st, _, _ = c.request("GET", "/big?n=100000", {"X-M2M-Origin": "Cae-1",
                                                   "X-M2M-RI": "l4"})
    check(st == 502, "a response over --max-response: 502 (%d)" % st)
    c.close()
    c = Client(g.port)
    st, _, _ = c.request("GET", "/cse-in/ae", {
        "X-M2M-Origin": "Cae-1", "X-M2M-RI": "l5", "X-Big": "a" * 70000})
    check(st == 431 and not with_ids(b, "l5"),
          "headers over 64 KiB: 431, not forwarded (%d)" % st)
    c.close()


def case_cse_timeout(b, g):
    """--cse-timeout 1500: a CSE silent past it costs the device a 504 with
    its X-M2M-RI after about 1.5 s, not the 30 s default; the association
    stays up and its next request is answered."""
    c = Client(g.port)
    st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "t1"),
                         AE_BODY)
    check(st == 201, "AE CREATE: 201")
    t0 = time.monotonic()
    st, h, body = c.request("GET", "/silent?s=6", {"X-M2M-Origin": "Cae-1",
                                                   "X-M2M-RI": "t2"})
    dt = time.monotonic() - t0
    check(st == 504 and h.get("x-m2m-ri") == "t2" and b"in time" in body,
          "a CSE silent past --cse-timeout: 504 with the request's "
          "X-M2M-RI (%d %r)" % (st, body))
    check(1.3 <= dt <= 1.5 + 3 * gwlib.SCALE,
          "after about --cse-timeout (%.2f s)" % dt)
    check(len(with_ids(b, "t2")) == 1, "the request reached the CSE once")
    st, _, body = c.request("GET", "/cse-in/after", {"X-M2M-Origin": "Cae-1",
                                                     "X-M2M-RI": "t3"})
    check(st == 200 and b"ok /cse-in/after" in body,
          "the association serves the next request (%d)" % st)
    st, _, _ = c.request("GET", "/silent?s=0.3", {"X-M2M-Origin": "Cae-1",
                                                  "X-M2M-RI": "t4"})
    check(st == 200, "a CSE slower than usual but within it: 200 (%d)" % st)
    st, h, body = c.request("GET", "/drop", {"X-M2M-Origin": "Cae-1",
                                             "X-M2M-RI": "t5"})
    check(st == 502 and h.get("x-m2m-ri") == "t5" and
          b"did not answer" in body,
          "a CSE that closes without answering: 502 with the request's "
          "X-M2M-RI (%d %r)" % (st, body))
    c.send(b"HEAD /silent?s=6 HTTP/1.1\r\nHost: cse\r\n"
           b"X-M2M-Origin: Cae-1\r\nX-M2M-RI: t6\r\n\r\n")
    st, h = read_head(c)
    check(st == 504 and h.get("x-m2m-ri") == "t6",
          "HEAD to a silent CSE: 504 with the X-M2M-RI (%d)" % st)
    st, _, body = c.request("GET", "/cse-in/last", {"X-M2M-Origin": "Cae-1",
                                                    "X-M2M-RI": "t7"})
    check(st == 200 and b"ok /cse-in/last" in body,
          "no body followed the HEAD's 504, and the association still "
          "serves (%d)" % st)
    c.close()


def case_openssl(b, g):
    """openssl s_client (TLS 1.2, the suite TS-0003 mandates) as Entity A
    through the gateway."""
    exe = shutil.which("openssl")
    if exe is None:
        print("SKIP: no openssl tool")
        raise SystemExit(gwlib.SKIP)
    req = (b"POST /cse-in HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: C\r\n"
           b"X-M2M-RI: o1\r\nContent-Type: application/json;ty=2\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" %
           (len(AE_BODY), AE_BODY))
    p = subprocess.run(
        [exe, "s_client", "-connect", "127.0.0.1:%d" % g.port, "-tls1_2",
         "-psk_identity", KPSA_ID, "-psk", KEY.hex(), "-cipher",
         "PSK-AES128-CBC-SHA256", "-quiet", "-ign_eof"],
        input=req, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=gwlib.STEP_S * 2)
    out = p.stdout
    check(out.startswith(b"HTTP/1.1 201") and b"X-M2M-RSC: 2001" in out and
          out.endswith(b'"rn": "ae"}}'),
          "openssl s_client with TLS_PSK_WITH_AES_128_CBC_SHA256: 201 and the "
          "whole body, then the gateway closes (%r)" % out[-80:])
    check(len(with_ids(b, "o1")) == 1, "forwarded once")


def case_concurrent(b, g):
    """40 clients at once over 4 threads, 25 requests each, half of them
    forged: every answer right, the backend sees exactly the good ones."""
    errors = []

    def one(i):
        try:
            c = Client(g.port)
            st, _, _ = c.request("POST", "/cse-in",
                                 ae_create_headers("C", "cc%d" % i), AE_BODY)
            if st != 201:
                errors.append("client %d: AE CREATE %d" % (i, st))
            for j in range(25):
                forged = j % 2 == 1
                st, h, _ = c.request("GET", "/cse-in/ae", {
                    "X-M2M-Origin": "Cother" if forged else "Cae-1",
                    "X-M2M-RI": "cc%d-%d" % (i, j)})
                if st != (403 if forged else 200):
                    errors.append("client %d request %d: %d" % (i, j, st))
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append("client %d: %s" % (i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60 * gwlib.SCALE)
    check(not errors, "40 concurrent clients: %s" % errors[:5])
    seen = [r for r in b.seen() if r[2].get("X-M2M-RI", "").startswith("cc")]
    check(len(seen) == 40 * (1 + 13),
          "the backend saw exactly the %d accepted requests (%d)" %
          (40 * 14, len(seen)))


def eof_within(sock, seconds):
    """Seconds until the gateway closed `sock` (EOF or reset), or None."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(4096):
                break
    except ConnectionResetError:
        pass
    except socket.timeout:
        return None
    return time.monotonic() - t0


def case_timeouts(b, g):
    """--handshake-timeout 1000 --idle-timeout 1500 --max-per-addr 3."""
    silent = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    t = eof_within(silent, 6)
    check(t is not None and 0.8 <= t <= 3,
          "a silent socket is closed at the handshake timeout (%s s)" % t)
    silent.close()
    c = Client(g.port)
    c.request("POST", "/cse-in", ae_create_headers("C", "t1"), AE_BODY)
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: Cae-1\r\n"
           b"X-M2M-RI: t2\r\n\r\n")
    st, _, _ = c.response()
    check(st == 200, "a request at the CSE for 1 s (idle timeout 1.5 s) is answered")
    t0 = time.monotonic()
    try:
        c._pump(lambda: False)
    except ConnectionError:
        pass
    t = time.monotonic() - t0
    check(1.2 <= t <= 4, "an idle association is closed at the idle timeout "
          "(%.2f s)" % t)
    check(c.a.state() == gwlib.m2mpsk.STATE_CLOSED,
          "with close_notify first (state %d)" % c.a.state())
    c.close()
    held = []
    for i in range(4):
        s = socket.socket()
        s.bind(("127.0.0.5", 0))
        s.connect(("127.0.0.1", g.port))
        held.append(s)
    # Two worker threads admit them in either order: whichever comes
    # fourth is closed at once, the others only at the handshake timeout.
    p = select.poll()
    for s in held:
        p.register(s, select.POLLIN)
    closed = set()
    end = time.monotonic() + 0.7
    while time.monotonic() < end and len(closed) < 4:
        for fd, _ in p.poll(100):
            closed.add(fd)
            p.unregister(fd)
    check(len(closed) == 1, "of 4 connections from one address (cap 3), "
          "one is closed at once (%d closed within 0.7 s)" % len(closed))
    c = Client(g.port)
    st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "t3"),
                         AE_BODY)
    check(st == 201, "another address is still served")
    c.close()
    for s in held:
        s.close()
    g.wait_line(r"refused peer=127\.0\.0\.5:\d+: too many connections "
                r"from its address")


def case_rate_limit(b, g):
    """--rate-limit 3: three failed handshakes with one KpsaID, from three
    addresses, block that KpsaID (its owner too, for a while); with
    --rate-limit 0 the same failures block nothing."""
    wrong = bytes(32)
    for i in range(3):
        try:
            Client(g.port, key=wrong, source="127.0.0.%d" % (10 + i)).close()
            check(False, "a wrong key fails")
        except ConnectionError:
            pass
    try:
        Client(g.port).close()
        check(False, "the KpsaID is blocked after 3 failures")
    except ConnectionError:
        print("ok: the KpsaID is blocked after 3 failures (--rate-limit 3)")
    g.wait_line(r"failure peer=127\.0\.0\.1:\d+ .*reason=rate-limited "
                r"detail=\"KpsaID %s is rate-limited" % re.escape(KPSA_ID))
    g2 = gateway(b, "--rate-limit", "0")
    try:
        for i in range(5):
            try:
                Client(g2.port, key=wrong,
                       source="127.0.0.%d" % (10 + i)).close()
            except ConnectionError:
                pass
        c = Client(g2.port)
        st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "rl"),
                             AE_BODY)
        check(st == 201, "--rate-limit 0: 5 failures block nothing")
        c.close()
    finally:
        g2.stop()


CASES = {
    "forward": (case_forward, []),
    "forged": (case_forged, []),
    "plain4107": (case_plain4107, []),
    "credential": (case_credential, []),
    "ida": (case_ida, []),
    "identity": (case_identity, ["--identity-header", "X-Auth-Id"]),
    "config": (case_config, None),
    "config-errors": (case_config_errors, None),
    "reload": (case_reload, []),
    "stop": (case_stop, []),
    "close": (case_close, []),
    "openssl": (case_openssl, ["--suites", "ts0003"]),  # needs OpenSSL's
    "concurrent": (case_concurrent, ["--threads", "4"]),
    "timeouts": (case_timeouts, ["--handshake-timeout", "1000",
                                 "--idle-timeout", "1500",
                                 "--max-per-addr", "3"]),
    "rate-limit": (case_rate_limit, ["--rate-limit", "3"]),
    "cse-timeout": (case_cse_timeout, ["--cse-timeout", "1500"]),
    "malformed": (case_malformed, []),
    "pipeline": (case_pipeline, []),
    "limits": (case_limits, ["--max-request", "65536", "--max-response",
                             "65536"]),
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] == "list":
        print("\n".join(CASES))
        return 0
    name = sys.argv.pop(1)
    fn, extra = CASES[name]
    if name == "openssl":
        v = subprocess.run([gwlib.cli(), "version"], capture_output=True,
                           timeout=gwlib.STEP_S).stdout.decode()
        if "profile ts0003: complete" not in v:
            print("SKIP: this build lacks the TS-0003 suites (no OpenSSL "
                  "engine)")
            return gwlib.SKIP
    write_keys(KEYS, [(KPSA_ID, KEY, None)])
    b = Backend()
    g = None
    watchdog = threading.Timer(100 * gwlib.SCALE, lambda: os._exit(1))
    watchdog.daemon = True
    watchdog.start()
    try:
        if extra is not None:
            g = gateway(b, *extra)
        fn(b, g)
        if g is not None and g.proc.poll() is None:
            # Every case ends with a clean stop: exit 0 (and, in a
            # sanitizer build, no error or leak report).
            g.signal(signal.SIGTERM)
            rc = g.wait_exit()
            check(rc == 0, "SIGTERM: exit 0 (%d)" % rc)
        print("PASS", name)
        return 0
    except SystemExit as e:
        return e.code
    except (AssertionError, ConnectionError, TimeoutError) as e:
        print("FAIL %s: %s" % (name, e))
        if g is not None:
            print("gateway stderr:\n" + "\n".join(g.lines()[-30:]))
        return 1
    finally:
        if g is not None:
            g.stop()
        b.stop()
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
