#!/usr/bin/env python3
"""Tests of `m2mpsk keys` and of the etcd sync against a private etcd.

Usage: etcd_tests.py PATH/TO/m2mpsk [CASE...]
Each case starts its own single-member etcd (loopback, free ports,
--unsafe-no-fsync) or a small fake HTTP server, and kills it at the end.
Every wait is bounded. Prints one line per case and a closing
'N passed, N failed' line; exits 77 (skipped) when etcd is not installed,
non-zero on any failure.
"""
import base64
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "support"))
from etcd_single import EtcdSingle  # noqa: E402

M2MPSK = os.path.abspath(sys.argv[1])
ONLY = set(sys.argv[2:])
ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
IDB = "//m2m.example.com/cse-in"
IDA = "//m2m.example.com/cse-in/Cae1"
CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, timeout=30):
    return subprocess.run([M2MPSK, *args], capture_output=True,
                          timeout=timeout)


class Etcd(EtcdSingle):
    """A private single-member etcd on free loopback ports
    (tests/support/etcd_single.py), with this driver's defaults: the
    prefix "m2m", etcdctl checked unless asked not to, kill()."""

    @property
    def port(self):
        return self.client_port

    def url(self, prefix="m2m"):
        return super().url(prefix)

    def ctl(self, *args, check=True):
        r = super().ctl("--dial-timeout", "2s", *args, timeout=20)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def kill(self):
        self.stop()


def kek(tmp, name="kek"):
    path = os.path.join(tmp, name)
    r = run("keys", "kek", "--out", path)
    assert r.returncode == 0, r.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    return path


def put(url, kekf, kpsa_id, tmp, extra=()):
    out = os.path.join(tmp, kpsa_id + ".key")
    r = run("keys", "put", "--etcd", url, "--kek", kekf, "--kpsa-id",
            kpsa_id, "--idb", IDB, "--generate", "32", "--out", out, *extra)
    assert r.returncode == 0, r.stderr
    key = open(out).read().strip()
    assert key.startswith("hex:") and len(key) == 4 + 64
    return key[4:]


def listing(url, kekf=None):
    args = ["keys", "list", "--etcd", url] + (["--kek", kekf] if kekf else [])
    r = run(*args)
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.decode().splitlines():
        fields = line.split()
        rows[fields[0]] = dict(f.split("=", 1) for f in fields[1:])
    return rows, r


class Sync:
    """`m2mpsk keys sync` in the background: its stats lines and log."""

    def __init__(self, url, kekf, *extra):
        self.proc = subprocess.Popen(
            [M2MPSK, "keys", "sync", "-v", "--etcd", url, "--kek", kekf,
             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self.stats, self.log = [], []
        self.threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout,
                                                      self.stats),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr,
                                                      self.log),
                             daemon=True)]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(stream, into):
        for line in iter(stream.readline, b""):
            into.append(line.decode(errors="replace"))

    def last(self):
        if not self.stats:
            return None
        return dict(f.split("=", 1) for f in self.stats[-1].split()[1:])

    def wait_for(self, pred, timeout=10, what="a condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.last()
            if s is not None and pred(s):
                return s
            if self.proc.poll() is not None and not self.stats:
                break
            time.sleep(0.05)
        raise AssertionError("timed out waiting for %s: %r %r" %
                             (what, self.stats[-3:], self.log[-10:]))

    def wait_log(self, pattern, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log:
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError("no log line %r in %r" % (pattern, self.log))

    def stop(self, timeout=5):
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("keys sync did not stop within %ss" %
                                 timeout)
        for t in self.threads:
            t.join(timeout=2)
        return code, time.monotonic() - t0


# ---- round trips against a real etcd --------------------------------------

@case
def put_list_revoke_delete_round_trip(tmp):
    e = Etcd(tmp)
    try:
        k = kek(tmp)
        url = e.url()
        key_a = put(url, k, "a@x.com", tmp)
        key_b = put(url, k, "b@x.com", tmp,
                    ["--ida", IDA, "--not-after", "2030-01-01T00:00:00Z"])
        rows, r = listing(url, k)
        assert set(rows) == {"a@x.com", "b@x.com"}, rows
        assert rows["a@x.com"]["state"] == "active"
        assert rows["b@x.com"]["ida"] == IDA
        assert rows["b@x.com"]["not-after"] == "2030-01-01T00:00:00Z"
        # Neither list nor etcd itself ever holds the key bytes.
        raw = e.ctl("get", "--prefix", "/m2m/", "-w", "json").stdout
        for key in (key_a, key_b):
            kb = bytes.fromhex(key)
            assert key.encode() not in r.stdout + r.stderr
            assert base64.b64encode(kb) not in raw
            values = [base64.b64decode(kv["value"]) for kv in
                      json.loads(raw)["kvs"]]
            assert all(kb not in v for v in values)
        # Revoke keeps the record, marked; delete removes it.
        r = run("keys", "revoke", "--etcd", url, "--kpsa-id", "b@x.com")
        assert r.returncode == 0, r.stderr
        rows, _ = listing(url, k)
        assert rows["b@x.com"]["state"] == "revoked", rows
        r = run("keys", "delete", "--etcd", url, "--kpsa-id", "b@x.com")
        assert r.returncode == 0, r.stderr
        rows, _ = listing(url, k)
        assert set(rows) == {"a@x.com"}, rows
        # Deleting or revoking what is not there fails (1).
        for sub in ("delete", "revoke"):
            r = run("keys", sub, "--etcd", url, "--kpsa-id", "b@x.com")
            assert r.returncode == 1, (sub, r.returncode, r.stderr)
            assert b"no record b@x.com" in r.stderr
        # Put is an upsert: a new key for a@x.com replaces the old one.
        os.unlink(os.path.join(tmp, "a@x.com.key"))
        key_a2 = put(url, k, "a@x.com", tmp)
        assert key_a2 != key_a
        # --generate never prints, --out refuses to overwrite.
        r = run("keys", "put", "--etcd", url, "--kek", k, "--kpsa-id",
                "c@x.com", "--idb", IDB, "--generate", "32", "--out",
                os.path.join(tmp, "a@x.com.key"))
        assert r.returncode == 3, r.stderr
        rows, _ = listing(url, k)
        assert "c@x.com" not in rows
    finally:
        e.kill()


@case
def rotate_keeps_two_versions_with_overlap(tmp):
    e = Etcd(tmp)
    try:
        k = kek(tmp)
        url = e.url()
        put(url, k, "old@x.com", tmp, ["--ida", IDA])
        t0 = int(time.time())
        r = run("keys", "rotate", "--etcd", url, "--kek", k, "--kpsa-id",
                "old@x.com", "--new-kpsa-id", "new@x.com", "--overlap",
                "3600", "--generate", "32", "--out",
                os.path.join(tmp, "new.key"))
        assert r.returncode == 0, r.stderr
        rows, _ = listing(url, k)
        old, new = rows["old@x.com"], rows["new@x.com"]
        assert old["state"] == new["state"] == "active", rows
        assert new["ida"] == IDA and new["idb"] == IDB
        end = time.mktime(time.strptime(old["not-after"],
                                        "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        start = time.mktime(time.strptime(new["not-before"],
                                          "%Y-%m-%dT%H:%M:%SZ")) - \
            time.timezone
        assert t0 + 3600 - 5 <= end <= t0 + 3600 + 60, (old, t0)
        assert t0 - 5 <= start <= t0 + 60, (new, t0)
        # The two writes were one transaction: one revision.
        raw = json.loads(e.ctl("get", "--prefix", "/m2m/keys/",
                               "-w", "json").stdout)
        revs = {base64.b64decode(kv["key"]).decode(): kv["mod_revision"]
                for kv in raw["kvs"]}
        assert revs["/m2m/keys/old@x.com"] == revs["/m2m/keys/new@x.com"]
        # Rotating onto a KpsaID that exists changes nothing (1).
        r = run("keys", "rotate", "--etcd", url, "--kek", k, "--kpsa-id",
                "new@x.com", "--new-kpsa-id", "old@x.com", "--overlap", "1",
                "--generate", "32", "--out", os.path.join(tmp, "x.key"))
        assert r.returncode == 1, r.stderr
        assert not os.path.exists(os.path.join(tmp, "x.key"))
        rows2, _ = listing(url, k)
        assert rows2 == rows
    finally:
        e.kill()


@case
def import_then_sync_loads_and_follows(tmp):
    e = Etcd(tmp)
    try:
        k = kek(tmp)
        url = e.url()
        kf = os.path.join(tmp, "keys")
        with open(kf, "w") as f:
            f.write("# a comment\n\n")
            for i in range(25):
                f.write("kpsa-id=d%d@x.com kpsa=hex:%s idb=%s%s\n" %
                        (i, os.urandom(16 + i).hex(), IDB,
                         " ida=%s not-after=2040-01-01T00:00:00Z" % IDA
                         if i % 2 else ""))
        os.chmod(kf, 0o600)
        r = run("keys", "import", "--etcd", url, "--kek", k, "--keys", kf,
                "--batch", "4")
        assert r.returncode == 0, r.stderr
        assert b"imported 25 records" in r.stderr, r.stderr
        rows, _ = listing(url, k)
        assert len(rows) == 25 and all(v["state"] == "active"
                                       for v in rows.values()), rows
        assert rows["d1@x.com"]["ida"] == IDA
        s = Sync(url, k, "--page", "7")
        try:
            st = s.wait_for(lambda st: st["records"] == "25", what="load")
            assert st["keystore"] == "25", st
            s.wait_log(r"keys: 25 records from etcd at revision \d+ in \d+ ms")
            put(url, k, "live@x.com", tmp)
            s.wait_for(lambda st: st["records"] == "26", what="put")
            s.wait_log(r"keys: put live@x.com")
            run("keys", "revoke", "--etcd", url, "--kpsa-id", "d3@x.com")
            st = s.wait_for(lambda st: st["records"] == "25", what="revoke")
            assert st["keystore"] == "25"
            s.wait_log(r"keys: removed d3@x.com \(revoked\)")
            run("keys", "delete", "--etcd", url, "--kpsa-id", "d4@x.com")
            st = s.wait_for(lambda st: st["records"] == "24", what="delete")
            s.wait_log(r"keys: removed d4@x.com \(deleted\)")
            code, took = s.stop()
            assert code == 0 and took < 3, (code, took)
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
        # A transaction larger than etcd allows (--max-txn-ops, 128 by
        # default) is etcd's refusal (1), named.
        big = os.path.join(tmp, "big")
        with open(big, "w") as f:
            for i in range(130):
                f.write("kpsa-id=t%d@x.com kpsa=hex:%s idb=%s\n" %
                        (i, os.urandom(16).hex(), IDB))
        os.chmod(big, 0o600)
        r = run("keys", "import", "--etcd", url, "--kek", k, "--keys", big,
                "--batch", "130")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert b"too many operations" in r.stderr, r.stderr
        # A malformed key file is refused whole, naming the line (3).
        with open(kf, "a") as f:
            f.write("kpsa-id=bad kpsa=hex:zz idb=%s\n" % IDB)
        r = run("keys", "import", "--etcd", url, "--kek", k, "--keys", kf)
        assert r.returncode == 3 and b"line 28" in r.stderr, r.stderr
    finally:
        e.kill()


@case
def wrong_kek_or_tampered_records_are_skipped(tmp):
    e = Etcd(tmp)
    try:
        k, other = kek(tmp), kek(tmp, "other")
        url = e.url()
        put(url, k, "good@x.com", tmp)
        put(url, other, "foreign@x.com", tmp)
        put(url, k, "tampered@x.com", tmp)
        raw = json.loads(e.ctl("get", "/m2m/keys/tampered@x.com",
                               "-w", "json").stdout)
        v = bytearray(base64.b64decode(raw["kvs"][0]["value"]))
        v[-1] ^= 1
        # etcdctl puts its argument verbatim: write the flipped bytes.
        subprocess.run([ETCDCTL, "--endpoints", e.endpoint, "put",
                        "/m2m/keys/tampered@x.com"], input=bytes(v),
                       capture_output=True, timeout=20, check=True)
        e.ctl("put", "/m2m/keys/garbage@x.com", "not a record")
        rows, r = listing(url, k)
        assert rows["good@x.com"]["state"] == "active", rows
        assert rows["foreign@x.com"]["state"] == "undecryptable", rows
        assert rows["tampered@x.com"]["state"] == "undecryptable", rows
        assert rows["garbage@x.com"]["state"] == "malformed", rows
        s = Sync(url, k)
        try:
            st = s.wait_for(lambda st: "records" in st, what="load")
            assert st["records"] == "1" and st["keystore"] == "1", st
            for kid in ("foreign@x.com", "tampered@x.com", "garbage@x.com"):
                line = s.wait_log(r"skipped %s at revision \d+" % kid)
                assert "not a record" not in line
            assert s.proc.poll() is None
            s.stop()
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
        # Many records sealed under another KEK: a bounded log.
        kf = os.path.join(tmp, "many")
        with open(kf, "w") as f:
            for i in range(200):
                f.write("kpsa-id=f%d@x.com kpsa=hex:%s idb=%s\n" %
                        (i, os.urandom(16).hex(), IDB))
        os.chmod(kf, 0o600)
        r = run("keys", "import", "--etcd", url, "--kek", other, "--keys", kf)
        assert r.returncode == 0, r.stderr
        s = Sync(url, k)
        try:
            s.wait_log(r"skipped \d+ more records \(not listed\)")
            st = s.wait_for(lambda st: "records" in st, what="load")
            assert st["records"] == "1", st
            assert len(s.log) < 40, len(s.log)
            s.stop()
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
    finally:
        e.kill()


@case
def usage_kek_and_unreachable_errors(tmp):
    k = kek(tmp)
    port = free_port()  # nothing listens there
    url = "etcd://127.0.0.1:%d/m2m" % port
    # Bad URLs are usage errors (2).
    for bad in ("etcd://", "etcd://127.0.0.1/m2m", "etcd://h:99999/m2m",
                "etcd://127.0.0.1:1", "http://127.0.0.1:1/m2m",
                "etcd://a b:1/m2m"):
        for args in (["list"], ["sync", "--kek", k]):
            r = run("keys", *args, "--etcd", bad)
            assert r.returncode == 2, (bad, args, r.returncode, r.stderr)
    r = run("keys", "frobnicate")
    assert r.returncode == 2
    r = run("keys", "--help")
    assert r.returncode == 0 and b"usage: m2mpsk keys" in r.stdout
    assert b"Exit codes" in r.stdout
    r = run("--help")
    assert b"keys" in r.stdout
    r = run("keys", "put", "--etcd", url, "--kek", k, "--kpsa-id", "x@y",
            "--idb", IDB)
    assert r.returncode == 2, r.stderr  # neither --key-file nor --generate
    # KEK files: missing, too open, malformed (3).
    loose = os.path.join(tmp, "loose")
    shutil.copy(k, loose)
    os.chmod(loose, 0o644)
    bad = os.path.join(tmp, "bad")
    with open(bad, "w") as f:
        f.write("hex:1234\n")
    os.chmod(bad, 0o600)
    for path, why in ((os.path.join(tmp, "none"), b"No such file"),
                      (loose, b"chmod 600"), (bad, b"malformed")):
        for args in (["keys", "list", "--kek", path],
                     ["keys", "sync", "--kek", path]):
            r = run(*args, "--etcd", url)
            assert r.returncode == 3 and why in r.stderr, (args, r.stderr)
    # Unreachable etcd (3), for the commands and for the sync.
    for args in (["list"], ["delete", "--kpsa-id", "x@y"],
                 ["sync", "--kek", k]):
        t0 = time.monotonic()
        r = run("keys", *args, "--etcd", url)
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        assert time.monotonic() - t0 < 15
    # `m2mpsk keys kek` never overwrites.
    r = run("keys", "kek", "--out", k)
    assert r.returncode == 3, r.stderr


@case
def max_records_bounds_what_a_node_holds(tmp):
    e = Etcd(tmp)
    try:
        k = kek(tmp)
        url = e.url()
        for i in range(3):
            put(url, k, "m%d@x.com" % i, tmp)
        r = run("keys", "sync", "--etcd", url, "--kek", k, "--max-records",
                "2")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert b"more than 2 records" in r.stderr, r.stderr
        s = Sync(url, k, "--max-records", "3")
        try:
            s.wait_for(lambda st: st["records"] == "3", what="load")
            put(url, k, "m3@x.com", tmp)
            s.wait_log(r"skipped m3@x.com: this node holds 3 records")
            st = s.wait_for(lambda st: "records" in st, what="stats")
            assert st["records"] == "3", st
            s.stop()
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
    finally:
        e.kill()


@case
def fail_closed_then_reachable_again(tmp):
    e = Etcd(tmp)
    try:
        k = kek(tmp)
        url = e.url()
        put(url, k, "a@x.com", tmp)
        put(url, k, "b@x.com", tmp)
        s = Sync(url, k, "--fail-closed", "2")
        try:
            s.wait_for(lambda st: st["records"] == "2", what="load")
            os.kill(e.proc.pid, signal.SIGSTOP)  # etcd stops answering
            t0 = time.monotonic()
            st = s.wait_for(lambda st: st["fail_closed"] == "1", timeout=10,
                            what="fail closed")
            took = time.monotonic() - t0
            assert st["records"] == "0" and st["keystore"] == "0", st
            assert 1.5 <= took <= 6, took
            s.wait_log(r"etcd unreachable, failing closed")
            os.kill(e.proc.pid, signal.SIGCONT)
            st = s.wait_for(lambda st: st["fail_closed"] == "0", timeout=15,
                            what="reachable again")
            assert st["records"] == "2" and st["keystore"] == "2", st
            s.wait_log(r"etcd reachable again")
            s.stop()
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
    finally:
        os.kill(e.proc.pid, signal.SIGCONT)
        e.kill()


@case
def compaction_while_away_resyncs_without_loss(tmp):
    """The node's etcd goes away; meanwhile (through another port) a
    record changes, one is deleted, one added, and history is compacted.
    When etcd is back the watch cannot resume: a resync puts the changed
    and new records, removes the deleted one, and leaves the rest."""
    e = Etcd(tmp)
    try:
        k = kek(tmp)
        url = e.url()
        for kid in ("a@x.com", "b@x.com", "c@x.com"):
            put(url, k, kid, tmp)
        s = Sync(url, k, "--fail-closed", "60")
        try:
            s.wait_for(lambda st: st["records"] == "3", what="load")
            port = e.port
            e.kill()
            assert e.start(free_port()), "etcd did not restart"
            os.unlink(os.path.join(tmp, "a@x.com.key"))
            put(e.url(), k, "a@x.com", tmp)  # changed
            run("keys", "delete", "--etcd", e.url(), "--kpsa-id", "b@x.com")
            put(e.url(), k, "d@x.com", tmp)  # added
            rev = json.loads(e.ctl("endpoint", "status", "-w",
                                   "json").stdout)[0]["Status"]["header"][
                                       "revision"]
            e.ctl("compact", str(rev))
            e.kill()
            assert e.start(port), "etcd did not come back"
            st = s.wait_for(lambda st: int(st["resyncs"]) >= 1, timeout=20,
                            what="a resync")
            s.wait_log(r"keys: resync at revision %d \(3 records\)" % rev)
            st = s.last()
            assert st["records"] == "3" and st["keystore"] == "3", st
            assert st["puts"] == "2" and st["removals"] == "1", st
            assert st["fail_closed"] == "0", st
            # And the watch goes on from there.
            put(url, k, "e@x.com", tmp)
            s.wait_for(lambda st: st["records"] == "4", what="a put")
            s.stop()
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
    finally:
        e.kill()


@case
def failover_between_endpoints(tmp):
    """Two URLs for one member, the first a dead port: the sync and the
    commands go on through the second."""
    e = Etcd(tmp)
    try:
        k = kek(tmp)
        url = "etcd://127.0.0.1:%d,%s/m2m" % (free_port(), e.endpoint)
        put(url, k, "a@x.com", tmp)
        s = Sync(url, k)
        try:
            s.wait_for(lambda st: st["records"] == "1", what="load")
            put(e.url(), k, "b@x.com", tmp)
            s.wait_for(lambda st: st["records"] == "2", what="put")
            s.stop()
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
    finally:
        e.kill()


# ---- a fake etcd: what a broken or hostile server makes of us -------------

class Fake:
    """A tiny HTTP server standing in for etcd's JSON gateway. `routes`
    maps a path to a function(body) -> (status, bytes or a list of lines
    to stream)."""

    def __init__(self, routes):
        self.hits = {}
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                fake.hits[self.path] = fake.hits.get(self.path, 0) + 1
                fn = routes.get(self.path)
                if fn is None:
                    self.send_error(404)
                    return
                status, out = fn(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if isinstance(out, list):
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for chunk in out:
                            if chunk is None:
                                time.sleep(30)  # hold the stream open
                                break
                            self.wfile.write(chunk)
                            self.wfile.flush()
                    except OSError:
                        pass
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hung up: what these tests provoke

        self.server = Server(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever,
                         daemon=True).start()

    def url(self):
        return "etcd://127.0.0.1:%d/m2m" % self.port

    def close(self):
        self.server.shutdown()
        self.server.server_close()


HDR = {"header": {"revision": "5"}}
STATUS = lambda b: (200, json.dumps({"header": {"revision": "5"},
                                     "leader": "1"}).encode())
EMPTY_RANGE = lambda b: (200, json.dumps(HDR).encode())


@case
def malformed_range_answers_are_protocol_errors(tmp):
    k = kek(tmp)
    answers = [
        b"not json at all",
        b'{"header": {"revision": "5"}, "kvs": [',  # truncated
        b'[1, 2, 3]',
        b'{"header": {"revision": "x"}}',
        b'{"header": {"revision": "5"}, "kvs": {"a": 1}}',
        b'{"header": {"revision": "5"}, "kvs": [{"value": "AA=="}]}',
        b'{"header": {"revision": "5"}, "kvs": [{"key": "!!"}]}',
        b'{"header": {"revision": "5"}, "more": true, "kvs": []}',
        # The same page for ever: "more", and a key before the start.
        b'{"header": {"revision": "5"}, "more": true, "kvs": '
        b'[{"key": "L20ybS9rZXlzL2E=", "value": ""}]}',
        b'{"error": "etcdserver: something", "code": 2}',
        b'{"error": "a \\u001b[31mred\\u0007 message", "code": 2}',
        b'{"header": {"revision": "5"}}' + b" " * (65 << 20),  # oversized
    ]
    for answer in answers:
        f = Fake({"/v3/kv/range": lambda b, a=answer: (200, a),
                  "/v3/maintenance/status": STATUS})
        try:
            for args in (["keys", "list"], ["keys", "sync", "--kek", k]):
                r = run(*args, "--etcd", f.url())
                assert r.returncode == 1, (answer[:60], args, r.returncode,
                                           r.stderr)
                assert r.stderr.strip(), answer[:60]
                assert not any(c < 0x20 and c != 0x0a for c in r.stderr), \
                    r.stderr
                assert len(r.stderr) < 2000, r.stderr[:200]
        finally:
            f.close()


def watch_route(lines):
    return lambda b: (200, lines)


@case
def malformed_watch_streams_do_not_crash(tmp):
    k = kek(tmp)
    created = json.dumps({"result": {"header": {"revision": "5"},
                                     "created": True}}).encode() + b"\n"
    streams = [
        [created, b"{garbage\n", None],
        [created, b'{"result": {"events": 7}}\n', None],
        [created, b'{"result": {"events": [{"type": "BOGUS"}]}}\n', None],
        [created, b'{"result": {"events": [{"kv": {"key": 5}}]}}\n', None],
        [created, b'{"error": {"message": "boom"}}\n', None],
        [created, b'{"result": {"header"', None],  # truncated, held open
        [created, b"x" * (65 << 20), None],  # a line beyond the bound
    ]
    for stream in streams:
        f = Fake({"/v3/kv/range": EMPTY_RANGE,
                  "/v3/maintenance/status": STATUS,
                  "/v3/watch": watch_route(stream)})
        s = Sync(f.url(), k)
        try:
            s.wait_for(lambda st: "records" in st, what="load")
            if stream[1].startswith(b"{\"result\": {\"header\""):
                # Still waiting for the rest of the line: no crash, and
                # a prompt stop even so.
                time.sleep(1)
            elif stream[1].startswith(b"xxxx"):
                s.wait_log(r"longer than \d+ bytes", timeout=20)
            else:
                s.wait_log(r"malformed watch response|ended with an etcd "
                           r"error")
            assert s.proc.poll() is None, s.log
            code, took = s.stop()
            assert code == 0 and took < 3, (code, took, stream[1][:40])
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
            f.close()


@case
def compacted_watch_forces_a_resync(tmp):
    k = kek(tmp)
    canceled = [json.dumps({"result": {"header": {"revision": "9"},
                                       "created": True}}).encode() + b"\n",
                json.dumps({"result": {"header": {"revision": "9"},
                                       "canceled": True,
                                       "compact_revision": "8"}}).encode()
                + b"\n", None]
    f = Fake({"/v3/kv/range": EMPTY_RANGE,
              "/v3/maintenance/status": STATUS,
              "/v3/watch": watch_route(canceled)})
    s = Sync(f.url(), k)
    try:
        s.wait_for(lambda st: int(st["resyncs"]) >= 1, what="a resync")
        s.wait_log(r"keys: resync at revision 5")
        assert f.hits["/v3/kv/range"] >= 2, f.hits
        s.stop()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        f.close()


def main():
    if ETCD is None or ETCDCTL is None:
        print("SKIP: etcd or etcdctl not installed (Debian etcd-server, "
              "etcd-client)")
        return 77
    passed = failed = 0
    for fn in CASES:
        if ONLY and fn.__name__ not in ONLY:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            try:
                fn(tmp)
                passed += 1
                print("PASS %s (%.2fs)" % (fn.__name__,
                                           time.monotonic() - t0))
            except Exception:
                failed += 1
                print("FAIL %s" % fn.__name__)
                traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
