#!/usr/bin/env python3
"""Tests of the PKCS#11 key component (issue 20): `m2mpsk keys --pkcs11`
and `m2mpsk serve --keys pkcs11:MODULE:TOKEN`, against a private SoftHSM2
token per case, or (the nss_* cases) a private NSS softoken database,
whose token can compute the TLS master secret of a token-only key inside,
over loopback.

Usage: p11_tests.py PATH/TO/m2mpsk [CASE ...]
Exits 77 when every case asked for needs what is missing: softhsm2-util
and the SoftHSM2 module, or NSS softoken (libsoftokn3.so), or when the
m2mpsk given was built without the component. Every command is bounded in
time; every server started is killed. After each case, the output of every
m2mpsk command it ran is searched for the PIN and for every key's hex:
neither may appear.
"""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "support"))
from serve_proc import ServeProcess  # noqa: E402

M2MPSK = os.path.abspath(sys.argv[1])
MODULE = os.environ.get("M2MPSK_SOFTHSM2_MODULE",
                        "/usr/lib/softhsm/libsofthsm2.so")
NSS_MODULE = os.environ.get("M2MPSK_NSS_SOFTOKN",
                            "/usr/lib/x86_64-linux-gnu/libsoftokn3.so")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nss_init  # noqa: E402
IDB = "//m2m.example.com/cse-in"
IDA = "//m2m.example.com/cse-in/Cae1"
PIN = "735196"
SO_PIN = "82736451"
CASES = []
# Everything every command printed, and the secrets it must not contain.
OUTPUTS = []
SECRETS = []


def case(fn):
    fn.needs = "softhsm"
    CASES.append(fn)
    return fn


def nss_case(fn):
    fn.needs = "nss"
    CASES.append(fn)
    return fn


class Token:
    """A private SoftHSM2 token (label T) and a 0600 PIN file."""

    def __init__(self, tmp):
        self.tmp = tmp
        tokens = os.path.join(tmp, "tokens")
        os.mkdir(tokens)
        self.conf = os.path.join(tmp, "softhsm2.conf")
        with open(self.conf, "w") as f:
            f.write("directories.tokendir = %s\nobjectstore.backend = file\n"
                    "log.level = ERROR\n" % tokens)
        self.env = dict(os.environ, SOFTHSM2_CONF=self.conf)
        self.env.pop("M2MPSK_PKCS11_PIN", None)
        r = subprocess.run(["softhsm2-util", "--init-token", "--free",
                            "--label", "T", "--so-pin", SO_PIN, "--pin", PIN],
                           env=self.env, capture_output=True, timeout=30)
        assert r.returncode == 0, r
        self.pin_file = os.path.join(tmp, "pin")
        write_secret(self.pin_file, PIN + "\n")
        self.spec = "%s:T" % MODULE
        self.extra = []

    def run(self, *args, env=None, timeout=30, stdin=b""):
        r = subprocess.run([M2MPSK, *args], input=stdin, capture_output=True,
                           timeout=timeout, env=env or self.env)
        OUTPUTS.append((args, r.stdout + r.stderr))
        return r

    def keys(self, sub, *args, code=0, pin=True):
        extra = ["--pin-file", self.pin_file] if pin else []
        r = self.run("keys", sub, "--pkcs11", self.spec, *extra, *self.extra,
                     *args)
        assert r.returncode == code, (sub, args, r.returncode, r.stderr)
        return r

    def list(self):
        """{KpsaID: line} of `keys list`."""
        r = self.keys("list")
        out = {}
        for line in r.stdout.decode().splitlines():
            out[line.split(" ", 1)[0]] = line
        return out


class NssToken(Token):
    """A private NSS softoken database (its key token, "NSS Certificate DB"
    on slot 2) whose user PIN tests/pkcs11/nss_init.py set through the
    module (SO login with the empty PIN, C_InitPIN); C_Initialize gets its
    parameters from --pkcs11-init-args (or, with via_env, from
    $M2MPSK_PKCS11_INIT_ARGS)."""

    def __init__(self, tmp, via_env=False):
        self.tmp = tmp
        db = os.path.join(tmp, "nssdb")
        # In a child: NSS softoken keeps state in the process that loaded
        # it, and this one must not hold the database open.
        r = subprocess.run(
            [sys.executable, "-c",
             "import sys; sys.path.insert(0, %r); import nss_init; "
             "print(nss_init.nss_init(%r, %r, %r)[1])"
             % (os.path.dirname(os.path.abspath(__file__)), NSS_MODULE, db,
                PIN)], capture_output=True, timeout=30)
        assert r.returncode == 0, r
        self.label = r.stdout.decode().strip()
        assert self.label == "NSS Certificate DB", self.label
        self.init_args = nss_init.init_args(db)
        self.env = dict(os.environ)
        self.env.pop("M2MPSK_PKCS11_PIN", None)
        self.env.pop("M2MPSK_PKCS11_INIT_ARGS", None)
        if via_env:
            self.env["M2MPSK_PKCS11_INIT_ARGS"] = self.init_args
            self.extra = []
        else:
            self.extra = ["--pkcs11-init-args", self.init_args]
        self.pin_file = os.path.join(tmp, "pin")
        write_secret(self.pin_file, PIN + "\n")
        self.spec = "%s:%s" % (NSS_MODULE, self.label)


def write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def key_file(path, records):
    """A key file; records: (kpsa_id, key bytes, ida or None)."""
    lines = []
    for kpsa_id, key, ida in records:
        SECRETS.append(key.hex())
        lines.append("kpsa-id=%s kpsa=hex:%s idb=%s%s\n" %
                     (kpsa_id, key.hex(), IDB, " ida=" + ida if ida else ""))
    write_secret(path, "".join(lines))
    return path


class Server(ServeProcess):
    """m2mpsk serve --keys pkcs11:... in the background."""

    def __init__(self, tok, *extra):
        super().__init__(
            [M2MPSK, "serve", "--keys", "pkcs11:" + tok.spec, "--pin-file",
             tok.pin_file, "--id", IDB, "--listen", "127.0.0.1", *tok.extra,
             *extra], env=tok.env, start_timeout=15)

    def stop(self):
        """SIGTERM; the exit code. Its log joins what no output may hold."""
        try:
            code, _ = super().stop()
        finally:
            OUTPUTS.append((("serve",), "".join(self.lines).encode()))
        return code


def wait_log(srv, pattern, timeout=10, start=0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in srv.lines[start:]:
            if re.search(pattern, line):
                return line
        time.sleep(0.01)
    raise AssertionError("no %r in the server's log: %r" % (pattern,
                                                           srv.lines))


def connect(tok, srv, keys, kpsa_id, timeout_ms=5000):
    return tok.run("connect", "127.0.0.1:%d" % srv.port, "--keys", keys,
                   "--kpsa-id", kpsa_id, "--timeout", str(timeout_ms),
                   stdin=b"hello over pkcs11\n")


# ---- cases -------------------------------------------------------------------


@case
def generate_list_revoke_delete_round_trip(tmp):
    tok = Token(tmp)
    tok.keys("generate", "--kpsa-id", "dev1@m2m.example.com", "--idb", IDB,
             "--ida", IDA, "--not-after", "2100-01-01T00:00:00Z")
    tok.keys("generate", "--kpsa-id", "dev2@m2m.example.com", "--idb", IDB,
             "--key-bytes", "16")
    l = tok.list()
    assert set(l) == {"dev1@m2m.example.com", "dev2@m2m.example.com"}, l
    d1 = l["dev1@m2m.example.com"]
    assert ("kind=readable idb=%s ida=%s not-before=- "
            "not-after=2100-01-01T00:00:00Z state=active" % (IDB, IDA)) in d1, d1
    assert "ida=- " in l["dev2@m2m.example.com"], l
    tok.keys("revoke", "--kpsa-id", "dev1@m2m.example.com")
    l = tok.list()
    assert "state=revoked" in l["dev1@m2m.example.com"], l
    assert "state=active" in l["dev2@m2m.example.com"], l
    # A tombstone: its KpsaID cannot be reused until deleted.
    tok.keys("generate", "--kpsa-id", "dev1@m2m.example.com", "--idb", IDB,
             code=1)
    tok.keys("delete", "--kpsa-id", "dev1@m2m.example.com")
    assert set(tok.list()) == {"dev2@m2m.example.com"}
    r = tok.keys("delete", "--kpsa-id", "dev1@m2m.example.com", code=1)
    assert b"no record dev1@m2m.example.com" in r.stderr, r.stderr
    r = tok.keys("revoke", "--kpsa-id", "nobody@m2m.example.com", code=1)
    assert b"no record nobody@m2m.example.com" in r.stderr, r.stderr
    tok.keys("generate", "--kpsa-id", "dev1@m2m.example.com", "--idb", IDB)
    assert "state=active" in tok.list()["dev1@m2m.example.com"]


@case
def generate_refuses_duplicates_and_bad_fields(tmp):
    tok = Token(tmp)
    tok.keys("generate", "--kpsa-id", "dup@m2m.example.com", "--idb", IDB)
    r = tok.keys("generate", "--kpsa-id", "dup@m2m.example.com", "--idb",
                 IDB, code=1)
    assert b"already has a record dup@m2m.example.com" in r.stderr, r.stderr
    assert len(tok.list()) == 1
    for args in (["--kpsa-id", "not-a-kpsa-id", "--idb", IDB],
                 ["--kpsa-id", "x@m2m.example.com", "--idb", "cse-in"],
                 ["--kpsa-id", "x@m2m.example.com", "--idb", IDB,
                  "--key-bytes", "8"],
                 ["--kpsa-id", "x@m2m.example.com", "--idb", IDB,
                  "--not-before", "2000", "--not-after", "1000"],
                 ["--idb", IDB]):
        tok.keys("generate", *args, code=2)
    assert len(tok.list()) == 1


@case
def import_then_serve_binds_the_identity(tmp):
    tok = Token(tmp)
    keys = key_file(os.path.join(tmp, "keys"),
                    [("imp1@m2m.example.com", os.urandom(32), IDA),
                     ("imp2@m2m.example.com", os.urandom(24), None)])
    r = tok.keys("import", "--keys-file", keys)
    assert b"imported 2 records" in r.stderr, r.stderr
    l = tok.list()
    assert "kind=readable" in l["imp1@m2m.example.com"] and \
        "ida=%s" % IDA in l["imp1@m2m.example.com"], l
    # Importing again refuses the duplicate.
    tok.keys("import", "--keys-file", keys, code=1)
    srv = Server(tok, "-v")
    try:
        for kpsa_id, bound in (("imp1@m2m.example.com", IDA),
                               ("imp2@m2m.example.com",
                                "12-imp2@m2m.example.com")):
            r = connect(tok, srv, keys, kpsa_id)
            assert r.returncode == 0, r.stderr
            assert r.stdout == b"hello over pkcs11\n", r.stdout
            wait_log(srv, r"keys: pkcs11: supplied %s" % re.escape(kpsa_id))
            wait_log(srv, r"association peer=\S+ kpsa-id=%s bound=%s " %
                     (re.escape(kpsa_id), re.escape(bound)))
        assert srv.stop() == 0
    finally:
        srv.kill()


@case
def unknown_kpsa_id_fails_like_a_wrong_key(tmp):
    tok = Token(tmp)
    known = key_file(os.path.join(tmp, "known"),
                     [("known@m2m.example.com", os.urandom(32), IDA)])
    tok.keys("import", "--keys-file", known)
    stranger = key_file(os.path.join(tmp, "stranger"),
                        [("stranger@m2m.example.com", os.urandom(32), IDA)])
    wrong = key_file(os.path.join(tmp, "wrong"),
                     [("known@m2m.example.com", os.urandom(32), IDA)])
    srv = Server(tok)
    try:
        r = connect(tok, srv, stranger, "stranger@m2m.example.com")
        assert r.returncode == 1 and b"reason=bad-key" in r.stderr, r.stderr
        wait_log(srv, r"failure peer=\S+ reason=unknown-identity")
        r2 = connect(tok, srv, wrong, "known@m2m.example.com")
        # On the wire, the two look alike.
        assert r2.returncode == 1 and b"reason=bad-key" in r2.stderr, \
            r2.stderr
        r3 = connect(tok, srv, known, "known@m2m.example.com")
        assert r3.returncode == 0, r3.stderr
        srv.stop()
    finally:
        srv.kill()


@case
def token_only_records_are_listed_but_refused(tmp):
    """SoftHSM2 cannot derive with CKM_CONCATENATE_DATA_AND_BASE: its
    token-only records are answered absent, said once per KpsaID."""
    tok = Token(tmp)
    tok.keys("generate", "--kpsa-id", "sealed@m2m.example.com", "--idb", IDB,
             "--token-only")
    keys = key_file(os.path.join(tmp, "keys"),
                    [("sealed2@m2m.example.com", os.urandom(32), IDA)])
    tok.keys("import", "--keys-file", keys, "--token-only")
    l = tok.list()
    for k in ("sealed@m2m.example.com", "sealed2@m2m.example.com"):
        assert "kind=token-only" in l[k] and "state=active" in l[k], l
    srv = Server(tok)
    try:
        # Its key cannot be read: not even the right key helps.
        for _ in range(2):
            r = connect(tok, srv, keys, "sealed2@m2m.example.com")
            assert r.returncode == 1 and b"reason=bad-key" in r.stderr, \
                r.stderr
        wait_log(srv, r"sealed2@m2m\.example\.com: token 'T' cannot compute "
                 r"the TLS master secret inside \(C_DeriveKey "
                 r"\(CKM_CONCATENATE_DATA_AND_BASE\): CKR_MECHANISM_INVALID\); "
                 r"token-only keys need a token with "
                 r"CKM_CONCATENATE_DATA_AND_BASE, e\.g\. NSS softoken")
        srv.stop()
        said = [l for l in srv.lines if "cannot compute the TLS" in l]
        assert len(said) == 1, said  # once per KpsaID
    finally:
        srv.kill()


@case
def wrapped_import_unwraps_inside_the_token(tmp):
    tok = Token(tmp)
    if shutil.which("pkcs11-tool") is None or \
            shutil.which("openssl") is None:
        print("  (pkcs11-tool or openssl missing: wrapped import not "
              "tested)")
        return
    kek = os.urandom(32)
    SECRETS.append(kek.hex())
    kek_path = os.path.join(tmp, "kek.bin")
    with open(kek_path, "wb") as f:
        f.write(kek)
    r = subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label",
                        "T", "--login", "--pin", PIN, "--write-object",
                        kek_path, "--type", "secrkey", "--key-type", "AES:32",
                        "--label", "unwrapper", "--usage-wrap"],
                       env=tok.env, capture_output=True, timeout=30)
    assert r.returncode == 0, r
    key = os.urandom(32)
    SECRETS.append(key.hex())
    raw, wrapped = os.path.join(tmp, "k.bin"), os.path.join(tmp, "k.wrapped")
    with open(raw, "wb") as f:
        f.write(key)
    r = subprocess.run(["openssl", "enc", "-id-aes256-wrap-pad", "-K",
                        kek.hex(), "-iv", "A65959A6", "-in", raw, "-out",
                        wrapped], capture_output=True, timeout=30)
    assert r.returncode == 0, r
    os.unlink(raw)
    tok.keys("import", "--wrapped", wrapped, "--unwrap-key", "nosuch",
             "--kpsa-id", "wr@m2m.example.com", "--idb", IDB, code=1)
    tok.keys("import", "--wrapped", wrapped, "--unwrap-key", "unwrapper",
             "--kpsa-id", "wr@m2m.example.com", "--idb", IDB, "--ida", IDA)
    assert "state=active" in tok.list()["wr@m2m.example.com"]
    client = os.path.join(tmp, "client")
    write_secret(client, "kpsa-id=wr@m2m.example.com kpsa=hex:%s idb=%s "
                 "ida=%s\n" % (key.hex(), IDB, IDA))
    srv = Server(tok)
    try:
        r = connect(tok, srv, client, "wr@m2m.example.com")
        assert r.returncode == 0, r.stderr
        srv.stop()
    finally:
        srv.kill()


@contextlib.contextmanager
def live_association(tok, srv, keys, kpsa_id):
    """An `m2mpsk connect` kept open with kpsa_id's key from keys, its
    association established and echoing; killed on the way out if the
    case did not see it end."""
    conn = subprocess.Popen(
        [M2MPSK, "connect", "127.0.0.1:%d" % srv.port, "--keys", keys,
         "--kpsa-id", kpsa_id],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=tok.env, start_new_session=True)
    try:
        wait_log(srv, r"association peer=\S+ kpsa-id=%s " % re.escape(kpsa_id))
        conn.stdin.write(b"ping\n")
        conn.stdin.flush()
        assert conn.stdout.readline() == b"ping\n"
        yield conn
    finally:
        if conn.poll() is None:
            os.killpg(conn.pid, signal.SIGKILL)
            conn.wait(timeout=5)


def revoke_ends_live(tmp, sub, tok=None, token_only=False):
    tok = tok or Token(tmp)
    keys = key_file(os.path.join(tmp, "keys"),
                    [("live@m2m.example.com", os.urandom(32), IDA)])
    tok.keys("import", "--keys-file", keys,
             *(["--token-only"] if token_only else []))
    srv = Server(tok)
    try:
        with live_association(tok, srv, keys, "live@m2m.example.com") as conn:
            mark = len(srv.lines)
            t0 = time.monotonic()
            tok.keys(sub, "--kpsa-id", "live@m2m.example.com")
            try:
                conn.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise AssertionError("the association outlived `keys %s` by "
                                     "5 s: %r" % (sub, srv.lines[mark:]))
            dt = time.monotonic() - t0
            print("  %s: the association ended %.0f ms after the command "
                  "started" % (sub, dt * 1000))
            assert dt < 2.5, dt
            wait_log(srv, r"keys: pkcs11: removed live@m2m\.example\.com",
                     start=mark)
            wait_log(srv, r"failure peer=\S+ reason=revoked", start=mark)
            # And new handshakes fail.
            r = connect(tok, srv, keys, "live@m2m.example.com")
            assert r.returncode == 1, r.stderr
            srv.stop()
    finally:
        srv.kill()


@case
def revoke_ends_a_live_association(tmp):
    revoke_ends_live(tmp, "revoke")


@case
def delete_ends_a_live_association(tmp):
    revoke_ends_live(tmp, "delete")


def replaced_record_takes_over(tmp, tok=None, token_only=False):
    """A record deleted and made again under the same KpsaID with another
    key: the live association keyed with the old one ends, the next
    handshake gets the new key, and the old key no longer works."""
    tok = tok or Token(tmp)
    kid = "rot@m2m.example.com"
    only = ["--token-only"] if token_only else []
    old = key_file(os.path.join(tmp, "old"), [(kid, os.urandom(32), IDA)])
    new = key_file(os.path.join(tmp, "new"), [(kid, os.urandom(32), IDA)])
    tok.keys("import", "--keys-file", old, *only)
    srv = Server(tok)
    try:
        with live_association(tok, srv, old, kid) as conn:
            mark = len(srv.lines)
            # Stopped while the record is replaced, so that its poll sees the
            # new record, never a missing one (which `delete` covers).
            os.kill(srv.proc.pid, signal.SIGSTOP)
            try:
                tok.keys("delete", "--kpsa-id", kid)
                tok.keys("import", "--keys-file", new, *only)
            finally:
                os.kill(srv.proc.pid, signal.SIGCONT)
            try:
                conn.wait(timeout=5)
            except subprocess.TimeoutExpired:
                raise AssertionError("the old key's association outlived the "
                                     "replacement by 5 s: %r" % srv.lines[mark:])
            wait_log(srv, r"keys: pkcs11: removed rot@m2m\.example\.com "
                     r"\(its key object was replaced\)", start=mark)
            r = connect(tok, srv, new, kid)
            assert r.returncode == 0, r.stderr
            assert r.stdout == b"hello over pkcs11\n", r.stdout
            r = connect(tok, srv, old, kid)
            assert r.returncode == 1, r.stderr
            code = srv.stop()
            assert code == 0, "serve exited with %d" % code
    finally:
        srv.kill()


@case
def replaced_record_takes_over_the_kpsa_id(tmp):
    replaced_record_takes_over(tmp)


@case
def usage_pin_and_token_errors(tmp):
    tok = Token(tmp)
    # --pin on the command line is refused, before anything is opened.
    r = tok.run("keys", "list", "--pkcs11", tok.spec, "--pin", PIN)
    assert r.returncode == 2 and b"--pin is refused" in r.stderr, r.stderr
    r = tok.run("serve", "--keys", "pkcs11:" + tok.spec, "--pin", PIN,
                "--id", IDB)
    assert r.returncode == 2 and b"--pin is refused" in r.stderr, r.stderr
    # A PIN file others may read: I/O error (exit 3), as for key files.
    loose = os.path.join(tmp, "loose")
    write_secret(loose, PIN + "\n")
    os.chmod(loose, 0o644)
    r = tok.run("keys", "list", "--pkcs11", tok.spec, "--pin-file", loose)
    assert r.returncode == 3 and b"chmod 600" in r.stderr, r.stderr
    r = tok.run("serve", "--keys", "pkcs11:" + tok.spec, "--pin-file", loose,
                "--id", IDB)
    assert r.returncode == 3 and b"listening" not in r.stderr, r.stderr
    # No PIN at all: usage.
    r = tok.run("keys", "list", "--pkcs11", tok.spec)
    assert r.returncode == 2 and b"no PIN" in r.stderr, r.stderr
    # A wrong PIN, from the file or the environment.
    wrong = os.path.join(tmp, "wrong")
    write_secret(wrong, "000000\n")
    SECRETS.append("000000")
    r = tok.run("keys", "list", "--pkcs11", tok.spec, "--pin-file", wrong)
    assert r.returncode == 3 and b"CKR_PIN_INCORRECT" in r.stderr, r.stderr
    env = dict(tok.env, M2MPSK_PKCS11_PIN="000000")
    r = tok.run("keys", "list", "--pkcs11", tok.spec, env=env)
    assert r.returncode == 3 and b"CKR_PIN_INCORRECT" in r.stderr, r.stderr
    r = tok.run("serve", "--keys", "pkcs11:" + tok.spec, "--pin-file", wrong,
                "--id", IDB)
    assert r.returncode == 3 and b"CKR_PIN_INCORRECT" in r.stderr, r.stderr
    # The right PIN from the environment works.
    env = dict(tok.env, M2MPSK_PKCS11_PIN=PIN)
    r = tok.run("keys", "list", "--pkcs11", tok.spec, env=env)
    assert r.returncode == 0, r.stderr
    # A module that does not load; a token that is not there: I/O.
    r = tok.keys("list", pin=True, code=0)
    r = tok.run("keys", "list", "--pkcs11",
                os.path.join(tmp, "nosuch.so") + ":T", "--pin-file",
                tok.pin_file)
    assert r.returncode == 3 and b"cannot load the PKCS#11 module" in \
        r.stderr, r.stderr
    r = tok.run("keys", "list", "--pkcs11", MODULE + ":Other", "--pin-file",
                tok.pin_file)
    assert r.returncode == 3 and b"no token labelled 'Other'" in r.stderr, \
        r.stderr
    r = tok.run("serve", "--keys", "pkcs11:/nonexistent/module.so:T",
                "--pin-file", tok.pin_file, "--id", IDB)
    assert r.returncode == 3, r.stderr
    # Bad specs: usage.
    for spec in ("nocolon", MODULE + ":", ":T"):
        r = tok.run("keys", "list", "--pkcs11", spec, "--pin-file",
                    tok.pin_file)
        assert r.returncode == 2, (spec, r.stderr)
    r = tok.run("serve", "--keys", "pkcs11:nocolon", "--pin-file",
                tok.pin_file, "--id", IDB)
    assert r.returncode == 2, r.stderr
    r = tok.run("keys", "frobnicate", "--pkcs11", tok.spec)
    assert r.returncode == 2, r.stderr
    # --help names the PIN rules.
    r = tok.run("keys", "--pkcs11", tok.spec, "--help")
    assert r.returncode == 0 and b"M2MPSK_PKCS11_PIN" in r.stdout, r


@case
def malformed_data_objects_are_skipped(tmp):
    """A data object written by someone else, with a bad text: list names
    the reason, serve answers absent; nothing crashes."""
    tok = Token(tmp)
    if shutil.which("pkcs11-tool") is None:
        print("  (pkcs11-tool missing: not tested)")
        return
    bad = os.path.join(tmp, "bad.txt")
    with open(bad, "w") as f:
        f.write("v=1\nida=\nidb=%s\nnot_before=x\n" % IDB)
    r = subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label",
                        "T", "--login", "--pin", PIN, "--write-object", bad,
                        "--type", "data", "--label", "bad@m2m.example.com",
                        "--application-label", "m2mpsk", "--private"],
                       env=tok.env, capture_output=True, timeout=30)
    assert r.returncode == 0, r
    tok.keys("generate", "--kpsa-id", "good@m2m.example.com", "--idb", IDB)
    r = tok.keys("list")
    out = r.stdout.decode()
    assert re.search(r"^bad@m2m\.example\.com malformed reason=\"bad or "
                     r"missing 'not_before' line\"$", out, re.M), out
    assert "good@m2m.example.com kind=readable" in out, out
    keys = key_file(os.path.join(tmp, "keys"),
                    [("bad@m2m.example.com", os.urandom(32), None)])
    srv = Server(tok)
    try:
        r = connect(tok, srv, keys, "bad@m2m.example.com")
        assert r.returncode == 1, r.stderr
        wait_log(srv, r"keys: pkcs11: bad@m2m\.example\.com skipped: bad or "
                 r"missing 'not_before' line")
        assert srv.stop() == 0
    finally:
        srv.kill()


# ---- NSS softoken: token-only keys used in the token -------------------------


def peer_roundtrip(argv, payload=b"mhello-over-the-token\n", timeout=10):
    """Runs an unmodified peer (openssl s_client, gnutls-cli), sends one
    line once it is up, and returns (echoed, output)."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    out = []

    def read():
        for chunk in iter(lambda: p.stdout.read1(4096), b""):
            out.append(chunk)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    want = payload.strip()
    echoed = False
    try:
        p.stdin.write(payload)
        p.stdin.flush()
        end = time.monotonic() + timeout
        while time.monotonic() < end and p.poll() is None:
            if want in b"".join(out):
                echoed = True
                break
            time.sleep(0.02)
        p.stdin.close()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        t.join(5)
    return echoed or want in b"".join(out), b"".join(out).decode("utf-8", "replace")


def association_line(srv, kpsa_id, start=0):
    return wait_log(srv, r"association peer=\S+ kpsa-id=%s bound=%s .*"
                    r"engine=openssl" % (re.escape(kpsa_id), re.escape(IDA)),
                    start=start)


@nss_case
def nss_token_only_keys_serve_without_leaving_the_token(tmp):
    """NSS softoken: generate and import token-only keys; serve (engine
    auto) has the master secret computed in the token; connect with the
    imported key as a key file binds the identity on both sides."""
    tok = NssToken(tmp)
    tok.keys("generate", "--kpsa-id", "gen@m2m.example.com", "--idb", IDB,
             "--ida", IDA, "--token-only")
    keys = key_file(os.path.join(tmp, "keys"),
                    [("tok@m2m.example.com", os.urandom(32), IDA)])
    r = tok.keys("import", "--keys-file", keys, "--token-only")
    assert b"imported 1 records" in r.stderr, r.stderr
    l = tok.list()
    for k in ("gen@m2m.example.com", "tok@m2m.example.com"):
        assert "kind=token-only" in l[k] and "state=active" in l[k], l
    wrong = key_file(os.path.join(tmp, "wrong"),
                     [("tok@m2m.example.com", os.urandom(32), IDA)])
    srv = Server(tok, "-v")
    try:
        r = connect(tok, srv, keys, "tok@m2m.example.com")
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"hello over pkcs11\n", r.stdout
        # The initiator's side: bound to IdB, on the OpenSSL engine.
        assert re.search(rb"association peer=\S+ kpsa-id=tok@m2m\.example"
                         rb"\.com bound=%s .*engine=openssl" %
                         re.escape(IDB.encode()), r.stderr), r.stderr
        wait_log(srv, r"keys: pkcs11: supplied tok@m2m\.example\.com "
                 r"\(token-only, 32 bytes, master secret in the token\)")
        association_line(srv, "tok@m2m.example.com")
        # A wrong key still fails, like any wrong key.
        mark = len(srv.lines)
        r = connect(tok, srv, wrong, "tok@m2m.example.com")
        assert r.returncode == 1 and b"reason=bad-key" in r.stderr, r.stderr
        wait_log(srv, r"failure peer=\S+ ", start=mark)
        # Several at once: handshakes on the serve thread, the token's
        # sessions from the pool.
        procs = [subprocess.Popen(
            [M2MPSK, "connect", "127.0.0.1:%d" % srv.port, "--keys", keys,
             "--kpsa-id", "tok@m2m.example.com", "--timeout", "5000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=tok.env) for _ in range(6)]
        for p in procs:
            out, err = p.communicate(b"x\n", timeout=20)
            OUTPUTS.append((("connect",), out + err))
            assert p.returncode == 0 and out == b"x\n", err
        assert srv.stop() == 0
    finally:
        srv.kill()
    said = "".join(srv.lines)
    assert "cannot compute the TLS master secret" not in said, said


def interop_with_unmodified_peers(tmp, tok, *import_flags):
    """The mandated suites against openssl s_client (TLS 1.2 and DTLS 1.2)
    and gnutls-cli, and (EC)DHE-PSK and the SHA-384 PRF, serve's key in
    the token `tok`."""
    if shutil.which("openssl") is None:
        print("  (openssl missing: not tested)")
        return
    key = os.urandom(32)
    keys = key_file(os.path.join(tmp, "keys"),
                    [("peer@m2m.example.com", key, IDA)])
    tok.keys("import", "--keys-file", keys, *import_flags)
    hexkey = key.hex()
    tcp = Server(tok)
    udp = Server(tok, "--udp")
    every = Server(tok, "--suites", "all")
    try:
        peers = [
            ("openssl s_client TLS 1.2 PSK-AES128-CBC-SHA256", tcp,
             ["openssl", "s_client", "-connect", "127.0.0.1:%d" % tcp.port,
              "-servername", "m2m.example.com", "-psk", hexkey,
              "-psk_identity", "peer@m2m.example.com", "-cipher",
              "PSK-AES128-CBC-SHA256", "-tls1_2", "-nocommands"],
             "TLS_PSK_WITH_AES_128_CBC_SHA256 version=TLSv1.2"),
            ("openssl s_client DTLS 1.2 PSK-AES128-CCM8", udp,
             ["openssl", "s_client", "-connect", "127.0.0.1:%d" % udp.port,
              "-servername", "m2m.example.com", "-psk", hexkey,
              "-psk_identity", "peer@m2m.example.com", "-cipher",
              "PSK-AES128-CCM8", "-dtls1_2", "-nocommands"],
             "TLS_PSK_WITH_AES_128_CCM_8 version=DTLSv1.2"),
        ]
        # Beyond the mandated suites: an (EC)DH share in the premaster's
        # prefix, and the SHA-384 PRF.
        for cipher, iana in (
                ("ECDHE-PSK-AES128-CBC-SHA256",
                 "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256"),
                ("DHE-PSK-AES256-GCM-SHA384",
                 "TLS_DHE_PSK_WITH_AES_256_GCM_SHA384"),
                ("PSK-AES256-GCM-SHA384", "TLS_PSK_WITH_AES_256_GCM_SHA384")):
            peers.append((
                "openssl s_client TLS 1.2 " + cipher, every,
                ["openssl", "s_client", "-connect",
                 "127.0.0.1:%d" % every.port, "-psk", hexkey,
                 "-psk_identity", "peer@m2m.example.com", "-cipher", cipher,
                 "-tls1_2", "-nocommands"], iana + " version=TLSv1.2"))
        if shutil.which("gnutls-cli") is not None:
            peers += [
                ("gnutls-cli TLS 1.2 PSK AES-128-CBC SHA256", tcp,
                 ["gnutls-cli", "127.0.0.1", "--port", str(tcp.port),
                  "--sni-hostname", "m2m.example.com", "--pskusername",
                  "peer@m2m.example.com", "--pskkey", hexkey, "--priority",
                  "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:"
                  "+AES-128-CBC:-MAC-ALL:+SHA256"],
                 "TLS_PSK_WITH_AES_128_CBC_SHA256 version=TLSv1.2"),
                ("gnutls-cli DTLS 1.2 PSK AES-128-CCM-8", udp,
                 ["gnutls-cli", "127.0.0.1", "--udp", "--port",
                  str(udp.port), "--sni-hostname", "m2m.example.com",
                  "--pskusername", "peer@m2m.example.com", "--pskkey",
                  hexkey, "--priority",
                  "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:"
                  "+AES-128-CCM-8:-MAC-ALL:+AEAD"],
                 "TLS_PSK_WITH_AES_128_CCM_8 version=DTLSv1.2"),
            ]
        else:
            print("  (gnutls-cli missing: GnuTLS not tested)")
        for name, srv, argv, suite in peers:
            mark = len(srv.lines)
            echoed, out = peer_roundtrip(argv)
            assert echoed, "%s: no echo: %s\nserve: %r" % (
                name, out[-2000:], srv.lines[mark:])
            line = association_line(srv, "peer@m2m.example.com", start=mark)
            assert suite in line, (name, line)
            print("  %s: established" % name)
        assert tcp.stop() == 0 and udp.stop() == 0 and every.stop() == 0
    finally:
        tcp.kill()
        udp.kill()
        every.kill()


@nss_case
def nss_interop_with_unmodified_peers(tmp):
    """serve's key token-only in NSS softoken: the master secret in the
    token; NSS's parameters from the environment."""
    interop_with_unmodified_peers(tmp, NssToken(tmp, via_env=True),
                                  "--token-only")


@case
def softhsm_interop_with_unmodified_peers(tmp):
    """serve's key readable in SoftHSM2: read into guarded memory for the
    keystore (SoftHSM2 cannot compute the master secret inside)."""
    interop_with_unmodified_peers(tmp, Token(tmp))


@nss_case
def nss_revoke_ends_a_live_token_only_association(tmp):
    revoke_ends_live(tmp, "revoke", tok=NssToken(tmp), token_only=True)


@nss_case
def nss_replaced_token_only_record_takes_over(tmp):
    replaced_record_takes_over(tmp, tok=NssToken(tmp), token_only=True)


@nss_case
def nss_usage_init_args(tmp):
    """Without the parameters NSS softoken does not initialise: the
    C_Initialize error is named (exit 3); --help documents the option."""
    tok = NssToken(tmp)
    r = tok.run("keys", "list", "--pkcs11", tok.spec, "--pin-file",
                tok.pin_file)
    assert r.returncode == 3 and b"C_Initialize" in r.stderr, r.stderr
    r = tok.run("keys", "--pkcs11", tok.spec, "--help")
    assert r.returncode == 0 and b"--pkcs11-init-args" in r.stdout, r
    r = tok.run("serve", "--help")
    assert r.returncode == 0 and b"--pkcs11-init-args" in r.stdout, r
    # A wrong PIN is still named, never shown.
    wrong = os.path.join(tmp, "wrong")
    write_secret(wrong, "000000\n")
    SECRETS.append("000000")
    r = tok.run("keys", "list", "--pkcs11", tok.spec, "--pin-file", wrong,
                *tok.extra)
    assert r.returncode == 3 and b"CKR_PIN_INCORRECT" in r.stderr, r.stderr
    # NSS softoken never lets a token secret key's value out: a record
    # generated readable is token-only there (the key object decides).
    tok.keys("generate", "--kpsa-id", "plain@m2m.example.com", "--idb", IDB)
    assert "kind=token-only" in tok.list()["plain@m2m.example.com"]
    # --pkcs11-init-args goes with pkcs11: only.
    r = tok.run("serve", "--keys", os.path.join(tmp, "nokeys"), "--id", IDB,
                "--pkcs11-init-args", "x")
    assert r.returncode == 2, r.stderr


def no_secret_in_any_output():
    for args, out in OUTPUTS:
        for s in [PIN] + SECRETS:
            for form in (s, s.upper()):
                assert form.encode() not in out, \
                    "a secret in the output of %r" % (args,)


def main():
    have = {"softhsm": shutil.which("softhsm2-util") is not None and
            os.path.exists(MODULE),
            "nss": os.path.exists(NSS_MODULE)}
    want = set(sys.argv[2:])
    chosen = [fn for fn in CASES if not want or fn.__name__ in want]
    runnable = [fn for fn in chosen if have[fn.needs]]
    if not runnable:
        print("SKIP: %s" % ("; ".join(
            {"softhsm": "SoftHSM2 (softhsm2-util, %s) is not installed"
             % MODULE, "nss": "NSS softoken (%s) is not installed"
             % NSS_MODULE}[n] for n in sorted({fn.needs for fn in chosen}))))
        return 77
    r = subprocess.run([M2MPSK, "keys", "--pkcs11", "x:y", "--help"],
                       capture_output=True, timeout=10)
    if r.returncode != 0:
        print("SKIP: this m2mpsk has no PKCS#11 support: %r" % r.stderr)
        return 77
    passed = failed = 0
    for fn in chosen:
        if not have[fn.needs]:
            print("SKIP %s (%s missing)" % (fn.__name__, fn.needs))
            continue
        del OUTPUTS[:]
        del SECRETS[:]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            try:
                fn(tmp)
                no_secret_in_any_output()
                passed += 1
                print("PASS %s (%.2fs)" % (fn.__name__, time.monotonic() - t0))
            except Exception:
                failed += 1
                print("FAIL %s" % fn.__name__)
                traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
