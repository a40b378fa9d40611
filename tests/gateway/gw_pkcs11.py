#!/usr/bin/env python3
"""m2mpsk gateway --keys pkcs11:MODULE:TOKEN, end to end on loopback,
against a private SoftHSM2 token made for the case. The gateway's
keystore starts empty: each handshake that names a KpsaID waits while the
token is asked (the library's key-source hook), then goes on.

    gw_pkcs11.py CASE [PATH-TO-m2mpsk]     exit 0 pass, 1 fail, 77 skip
    gw_pkcs11.py list

Cases:
  http   TLS-PSK + HTTP: a device whose record is only in the token
         registers (AE CREATE, 201) and again on a second connection (the
         record is kept: the token is asked once); a KpsaID the token lacks
         fails its handshake; `m2mpsk keys revoke` in the token ends the
         live association; SIGHUP is logged and ignored; SIGTERM exits 0
  coap   DTLS-PSK + CoAP: a device registers (2.01) with its record asked
         from the token
  errors --pin-file or --pkcs11-init-args without pkcs11:, pkcs11: with
         --kek (2); a token that does not exist (3)
Python 3 standard library and the m2mpsk binding only; every wait
bounded."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gwlib  # noqa: E402  (imports the binding, or skips)
from gwlib import AE_BODY, IDB, Backend, Client, Gateway, \
    ae_create_headers, check, secret  # noqa: E402
import coap_gateway as cg  # noqa: E402

m2mpsk = gwlib.m2mpsk
MODULE = os.environ.get("M2MPSK_SOFTHSM2_MODULE",
                        "/usr/lib/softhsm/libsofthsm2.so")
PIN = "735196"




class Env:
    """A SoftHSM2 token (label T), both backends, and the gateway."""

    def __init__(self, tmp):
        self.tmp, self.n = tmp, 0
        tokens = os.path.join(tmp, "tokens")
        os.mkdir(tokens)
        conf = os.path.join(tmp, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\n"
                    "log.level = ERROR\n" % tokens)
        self.env = dict(os.environ, SOFTHSM2_CONF=conf)
        self.env.pop("M2MPSK_PKCS11_PIN", None)
        r = subprocess.run(["softhsm2-util", "--init-token", "--free",
                            "--label", "T", "--so-pin", "82736451", "--pin",
                            PIN], env=self.env, capture_output=True,
                           timeout=30)
        assert r.returncode == 0, r
        self.pin_file = secret(tmp, "pin", PIN + "\n")
        self.spec = "%s:T" % MODULE
        self.http = Backend()
        self.coap = cg.Backend()
        self.gw = None

    def keys(self, sub, *args):
        r = subprocess.run([gwlib.cli(), "keys", sub, "--pkcs11", self.spec,
                            "--pin-file", self.pin_file, *args],
                           env=self.env, capture_output=True,
                           timeout=gwlib.STEP_S)
        assert r.returncode == 0, (sub, r.returncode, r.stderr)
        return r

    def put(self, kpsa_id):
        """A fresh 32-byte key for kpsa_id in the token (a Credential-ID:
        no IdA)."""
        self.n += 1
        key = os.urandom(32)
        path = secret(self.tmp, "keys%d" % self.n, "kpsa-id=%s kpsa=hex:%s "
                      "idb=%s\n" % (kpsa_id, key.hex(), IDB))
        self.keys("import", "--keys-file", path)
        return key

    def start(self):
        self.gw = Gateway(["--keys", "pkcs11:" + self.spec, "--pin-file",
                           self.pin_file, "--id", IDB,
                           "--http-listen", "127.0.0.1:0", "--http-backend",
                           "127.0.0.1:%d" % self.http.port,
                           "--coap-listen", "127.0.0.1:0", "--coap-backend",
                           "127.0.0.1:%d" % self.coap.port,
                           "--threads", "2", "--log-rate", "100000", "-v"],
                          env=self.env)
        m = self.gw.wait_line(r"gateway listening coap 127\.0\.0\.1:(\d+)")
        self.coap_port = int(m.group(1))
        self.gw.wait_line(r"^m2mpsk: keys: PKCS#11 token open")

    def close(self):
        if self.gw is not None:
            self.gw.stop()
            # Nothing the gateway logged holds the PIN or a key.
            text = "\n".join(self.gw.lines())
            assert PIN not in text, "the PIN in the gateway's log"
        self.http.stop()
        self.coap.close()


def supplied(env, kpsa_id, start=0):
    return env.gw.wait_line(r"keys: pkcs11: supplied %s" %
                            re.escape(kpsa_id), start=start)


def case_http(env):
    kid = "dev-http@m2m.example.com"
    key = env.put(kid)
    env.start()
    c = Client(env.gw.port, kpsa_id=kid, key=key)
    st, _, _ = c.request("POST", "/cse-in", ae_create_headers("C", "e1"),
                         AE_BODY)
    check(st == 201, "a device whose record is in the token registers")
    supplied(env, kid)
    env.gw.wait_line(r"association peer=\S+ kpsa-id=%s bound=12-%s " %
                     (re.escape(kid), re.escape(kid)))
    c2 = Client(env.gw.port, kpsa_id=kid, key=key)
    st, _, _ = c2.request("POST", "/cse-in", ae_create_headers("C", "e2"),
                          AE_BODY)
    check(st == 201, "a second connection with the same KpsaID")
    c2.close()
    asked = [line for line in env.gw.lines()
             if re.search(r"keys: pkcs11: supplied %s" % re.escape(kid),
                          line)]
    check(len(asked) == 1, "the token was asked once for the KpsaID (%d)" %
          len(asked))
    try:
        Client(env.gw.port, kpsa_id="nobody@m2m.example.com",
               key=os.urandom(32)).close()
        check(False, "a KpsaID the token lacks fails its handshake")
    except ConnectionError:
        print("ok: a KpsaID the token lacks fails its handshake")
    # Revoked in the token: the live association ends (the source's rescan
    # wakes the workers).
    mark = len(env.gw.lines())
    t0 = time.monotonic()
    env.keys("revoke", "--kpsa-id", kid)
    end = t0 + 5
    c.timeout = 0.02
    while True:
        try:
            c._pump(lambda: c.eof or
                    c.a.state() != m2mpsk.STATE_ESTABLISHED)
        except (ConnectionError, TimeoutError, m2mpsk.Error):
            pass  # the alert fails the association in feed() or read()
        if c.eof or c.a.state() != m2mpsk.STATE_ESTABLISHED:
            break
        if time.monotonic() > end:
            raise AssertionError("the association outlived `keys revoke` "
                                 "by 5 s")
    print("  the association ended %.0f ms after `keys revoke` started" %
          ((time.monotonic() - t0) * 1000))
    env.gw.wait_line(r"failure peer=\S+ .*reason=revoked", start=mark)
    check(True, "revoking the record in the token ends the live association")
    c.close()
    n = len(env.gw.lines())
    env.gw.signal(signal.SIGHUP)
    env.gw.wait_line(r"gateway keys not reloaded: they come from a PKCS#11 "
                     r"token", start=n)
    check(env.gw.proc.poll() is None, "SIGHUP is logged and ignored")


def case_coap(env):
    kid = cg.KPSA_ID  # the device of coap_gateway.py binds 12-<KpsaID>
    key = env.put(kid)
    env.start()
    dev = cg.Device(m2mpsk, env.coap_port, key=key)
    _, r, _ = cg.ae_create(dev)
    check(r is not None and r.code == cg.code(2, 1),
          "a DTLS device whose record is in the token registers")
    supplied(env, kid)
    env.gw.wait_line(r"coap association peer=\S+ kpsa-id=%s bound=12-%s " %
                     (re.escape(kid), re.escape(kid)))
    dev.close()


def case_errors(tmp):
    """Option errors, before any listener (2), and a token that is not
    there (3)."""
    keys = os.path.join(tmp, "keys")
    gwlib.write_keys(keys, [("k@x", bytes(32), None)])
    pin = secret(tmp, "pin", PIN + "\n")
    kek = secret(tmp, "kek", "x\n")
    spec = "pkcs11:%s:NoSuchToken" % MODULE
    conf = os.path.join(tmp, "softhsm2.conf")
    os.mkdir(os.path.join(tmp, "tokens"))
    with open(conf, "w") as f:
        f.write("directories.tokendir = %s\nobjectstore.backend = file\n"
                "log.level = ERROR\n" % os.path.join(tmp, "tokens"))
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    base = ["--id", IDB, "--http-listen", "127.0.0.1:0",
            "--http-backend", "127.0.0.1:9"]
    for args, code, what in (
            (["--keys", keys, "--pin-file", pin], 2,
             "go with --keys pkcs11:MODULE:TOKEN"),
            (["--keys", keys, "--pkcs11-init-args", "x"], 2,
             "go with --keys pkcs11:MODULE:TOKEN"),
            (["--keys", spec, "--pin-file", pin, "--kek", kek], 2,
             "go with --keys etcd://"),
            (["--keys", spec, "--pin-file", pin], 3, "NoSuchToken")):
        r = subprocess.run([gwlib.cli(), "gateway", *base, *args],
                           capture_output=True, timeout=30, env=env)
        err = r.stderr.decode()
        check(r.returncode == code and what in err and "listening" not in err,
              "gateway %s: exit %d, %r (%d: %s)" %
              (" ".join(args[-2:]), code, what, r.returncode, err.strip()))


CASES = {"http": case_http, "coap": case_coap}


def main():
    if len(sys.argv) < 2 or sys.argv[1] == "list":
        print("\n".join(list(CASES) + ["errors"]))
        return 0
    name = sys.argv.pop(1)
    if shutil.which("softhsm2-util") is None or not os.path.exists(MODULE):
        print("SKIP: SoftHSM2 (softhsm2-util, %s) is missing" % MODULE)
        return gwlib.SKIP
    r = subprocess.run([gwlib.cli(), "keys", "--pkcs11", "x:y", "--help"],
                       capture_output=True, timeout=gwlib.STEP_S)
    if r.returncode != 0:
        print("SKIP: this m2mpsk has no PKCS#11 component")
        return gwlib.SKIP
    if name == "coap" and not m2mpsk.engine_available(m2mpsk.ENGINE_OPENSSL):
        print("SKIP: no OpenSSL engine: the gateway's DTLS needs cookies")
        return gwlib.SKIP
    return gwlib.run_case(name, CASES, case_errors, Env, "gw_pkcs11.")


if __name__ == "__main__":
    sys.exit(main())
