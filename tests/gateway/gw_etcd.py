#!/usr/bin/env python3
"""m2mpsk gateway --keys etcd://... (issue 19), end to end on loopback,
against a private single-member etcd started for the case.

    gw_etcd.py CASE [PATH-TO-m2mpsk]     exit 0 pass, 1 fail, 77 skip
    gw_etcd.py list

Cases:
  http   TLS-PSK + HTTP: a device registers (AE CREATE, 201); `m2mpsk keys
         revoke` ends its live association within 1 s (alert, then the
         connection closed; timed); the revoked key no longer connects; a
         key put after the start is usable at once; SIGHUP is logged and
         ignored; SIGTERM exits 0
  coap   DTLS-PSK + CoAP: the same with `m2mpsk keys delete`, then the
         KpsaID put again with a new key, which a device then uses
  errors --kek/--etcd-fail-closed without a URL, a URL without --kek (2),
         an etcd that does not answer (3), on the command line and in
         --config
Python 3 standard library and the m2mpsk binding only; every wait
bounded."""
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "support"))
from etcd_single import EtcdSingle  # noqa: E402
import gwlib  # noqa: E402  (imports the binding, or skips)
from gwlib import AE_BODY, IDB, Backend, Client, Gateway, \
    ae_create_headers, check, secret  # noqa: E402
import coap_gateway as cg  # noqa: E402

m2mpsk = gwlib.m2mpsk
LIMIT_S = 1.0  # a revocation ends a live association within this




class Env:
    """etcd, a KEK, both backends and the gateway in front of them."""

    def __init__(self, tmp):
        self.tmp, self.n = tmp, 0
        self.etcd = EtcdSingle(tmp)
        self.url = self.etcd.url("gw")
        self.kek = os.path.join(tmp, "kek")
        self.run("kek", "--out", self.kek)
        self.http = Backend()
        self.coap = cg.Backend()
        self.gw = None

    def run(self, sub, *args, etcd=False):
        extra = ["--etcd", self.url, "--kek", self.kek] if etcd else []
        r = subprocess.run([gwlib.cli(), "keys", sub, *extra, *args],
                           capture_output=True, timeout=gwlib.STEP_S)
        assert r.returncode == 0, (sub, r.returncode, r.stderr)
        return r

    def put(self, kpsa_id):
        """A fresh 32-byte key for kpsa_id (a Credential-ID: no IdA)."""
        self.n += 1
        key = os.urandom(32)
        path = secret(self.tmp, "key%d" % self.n, "hex:%s\n" % key.hex())
        self.run("put", "--kpsa-id", kpsa_id, "--idb", IDB, "--key-file",
                 path, etcd=True)
        return key

    def start(self):
        self.gw = Gateway(["--keys", self.url, "--kek", self.kek, "--id", IDB,
                           "--http-listen", "127.0.0.1:0", "--http-backend",
                           "127.0.0.1:%d" % self.http.port,
                           "--coap-listen", "127.0.0.1:0", "--coap-backend",
                           "127.0.0.1:%d" % self.coap.port,
                           "--threads", "2", "--log-rate", "100000", "-v"])
        m = self.gw.wait_line(r"gateway listening coap 127\.0\.0\.1:(\d+)")
        self.coap_port = int(m.group(1))
        self.gw.wait_line(r"^m2mpsk: keys: \d+ records from etcd at revision "
                          r"\d+ in \d+ ms$")

    def close(self):
        if self.gw is not None:
            self.gw.stop()
        self.http.stop()
        self.coap.close()
        self.etcd.stop()


def ended_within(env, sub, kpsa_id, ended):
    """Runs `m2mpsk keys SUB`; returns the seconds until ended() (polled)
    is true, measured from just before the command starts."""
    mark = len(env.gw.lines())
    t0 = time.monotonic()
    env.run(sub, "--kpsa-id", kpsa_id, etcd=True)
    end = t0 + 5
    while not ended():
        if time.monotonic() > end:
            raise AssertionError("the association outlived `keys %s` by 5 s"
                                 % sub)
    dt = time.monotonic() - t0
    env.gw.wait_line(r"failure peer=\S+ .*reason=revoked", start=mark)
    return dt


def case_http(env):
    kid = "dev-http@m2m.example.com"
    key = env.put(kid)
    env.start()
    c = Client(env.gw.port, kpsa_id=kid, key=key)
    st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "e1"),
                         AE_BODY)
    check(st == 201, "an association made from an etcd record forwards")

    def http_ended():
        try:
            c._pump(lambda: c.eof or
                    c.a.state() != m2mpsk.STATE_ESTABLISHED)
        except (ConnectionError, TimeoutError, m2mpsk.Error):
            pass  # the alert fails the association in feed() or read()
        return c.eof or c.a.state() != m2mpsk.STATE_ESTABLISHED
    c.timeout = 0.02  # _pump's wait, per poll of http_ended
    dt = ended_within(env, "revoke", kid, http_ended)
    print("  tls: association ended %.0f ms after `keys revoke` started" %
          (dt * 1000))
    check(dt < LIMIT_S, "revoke ends the live TLS association in < 1 s")
    c.close()
    try:
        Client(env.gw.port, kpsa_id=kid, key=key).close()
        check(False, "a revoked key no longer connects")
    except ConnectionError:
        print("ok: a revoked key no longer connects")
    kid2 = "dev-http2@m2m.example.com"
    n = len(env.gw.lines())
    key2 = env.put(kid2)
    env.gw.wait_line(r"m2mpsk: keys: put %s" % re.escape(kid2), start=n)
    c2 = Client(env.gw.port, kpsa_id=kid2, key=key2)
    st, _, _ = c2.request("POST", "/cse-in", ae_create_headers("C", "e2"),
                          AE_BODY)
    check(st == 201, "a key put after the start is usable")
    c2.close()
    n = len(env.gw.lines())
    env.gw.signal(signal.SIGHUP)
    env.gw.wait_line(r"gateway keys not reloaded: they come from etcd",
                     start=n)
    check(env.gw.proc.poll() is None, "SIGHUP is logged and ignored")


def case_coap(env):
    kid = cg.KPSA_ID  # the device of coap_gateway.py binds 12-<KpsaID>
    key = env.put(kid)
    env.start()
    dev = cg.Device(m2mpsk, env.coap_port, key=key)
    _, r, _ = cg.ae_create(dev)
    check(r is not None and r.code == cg.code(2, 1),
          "a DTLS association made from an etcd record forwards")

    def coap_ended():
        try:
            dev._pump(lambda: dev.a.state() != m2mpsk.STATE_ESTABLISHED,
                      0.02)
        except Exception:  # the alert fails the association in feed()
            pass
        return dev.a.state() != m2mpsk.STATE_ESTABLISHED
    dt = ended_within(env, "delete", kid, coap_ended)
    print("  dtls: association ended %.0f ms after `keys delete` started" %
          (dt * 1000))
    check(dt < LIMIT_S, "delete ends the live DTLS association in < 1 s")
    # OpenSSL (the gateway's DTLS engine) can only send close_notify once
    # it encrypts (src/tls/openssl.c): the device sees its association
    # closed or failed, never still up.
    check(dev.a.state() in (m2mpsk.STATE_CLOSED, m2mpsk.STATE_FAILED),
          "the device's association ended (%s)" %
          m2mpsk.reason_name(dev.a.failure()))
    dev.sock.close()
    n = len(env.gw.lines())
    key2 = env.put(kid)  # the same KpsaID, a new key
    env.gw.wait_line(r"m2mpsk: keys: put %s" % re.escape(kid), start=n)
    dev2 = cg.Device(m2mpsk, env.coap_port, key=key2)
    _, r, _ = cg.ae_create(dev2, rqi=b"rqi-2")
    check(r is not None and r.code == cg.code(2, 1),
          "the KpsaID put again with a new key is usable")
    dev2.close()


def case_errors(tmp):
    """Option errors, before any listener: --kek or --etcd-fail-closed
    without an etcd URL, a URL without --kek (2); an etcd that does not
    answer (3); the same options from --config."""
    keys = os.path.join(tmp, "keys")
    gwlib.write_keys(keys, [("k@x", bytes(32), None)])
    kek = os.path.join(tmp, "kek")
    subprocess.run([gwlib.cli(), "keys", "kek", "--out", kek], check=True,
                   capture_output=True, timeout=gwlib.STEP_S)
    with socket_port() as port:
        url = "etcd://127.0.0.1:%d/gw" % port
        conf = secret(tmp, "conf", "keys = %s\nkek = %s\n" % (url, kek))
        base = ["--id", IDB, "--http-listen", "127.0.0.1:0",
                "--http-backend", "127.0.0.1:9"]
        for args, code, what in (
                (["--keys", keys, "--kek", kek], 2, "go with --keys etcd://"),
                (["--keys", keys, "--etcd-fail-closed", "3"], 2,
                 "go with --keys etcd://"),
                (["--keys", url], 2, "needs --kek"),
                (["--keys", url, "--kek", kek, "--etcd-fail-closed", "0"], 2,
                 "etcd-fail-closed: '0' is not a number"),
                (["--keys", url, "--kek", kek], 3, url),
                (["--config", conf], 3, url)):
            r = subprocess.run([gwlib.cli(), "gateway", *base, *args],
                               capture_output=True, timeout=30)
            err = r.stderr.decode()
            check(r.returncode == code and what in err and
                  "listening" not in err,
                  "gateway %s: exit %d, %r" % (" ".join(args[-2:]), code,
                                               what))


class socket_port:
    """A loopback TCP port nobody listens on, held while in use."""

    def __enter__(self):
        import socket
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()


CASES = {"http": case_http, "coap": case_coap}


def main():
    if len(sys.argv) < 2 or sys.argv[1] == "list":
        print("\n".join(list(CASES) + ["errors"]))
        return 0
    name = sys.argv.pop(1)
    why = EtcdSingle.missing()
    if why:
        print("SKIP:", why)
        return gwlib.SKIP
    r = subprocess.run([gwlib.cli(), "keys", "--help"], capture_output=True,
                       timeout=gwlib.STEP_S)
    if r.returncode != 0:
        print("SKIP: this m2mpsk has no `keys` (built without etcd "
              "support)")
        return gwlib.SKIP
    if name == "coap" and not m2mpsk.engine_available(m2mpsk.ENGINE_OPENSSL):
        print("SKIP: no OpenSSL engine: the gateway's DTLS needs cookies")
        return gwlib.SKIP
    return gwlib.run_case(name, CASES, case_errors, Env, "gw_etcd.")


if __name__ == "__main__":
    sys.exit(main())
