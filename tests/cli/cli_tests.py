#!/usr/bin/env python3
"""Tests of the m2mpsk command-line tool over real loopback sockets.

Usage: cli_tests.py PATH/TO/m2mpsk [etcd]
With `etcd`, only the cases of serve --keys etcd://... run (each with a
private single-member etcd; exit 77 when etcd, etcdctl or `m2mpsk keys`
is missing); without, every other case.
Every case is bounded in time; every server it starts is killed. Prints one
line per case and a closing 'N passed, N failed' line; exits non-zero on
any failure.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "support"))
from serve_proc import ServeProcess  # noqa: E402

M2MPSK = os.path.abspath(sys.argv[1])
IDB = "//m2m.example.com/cse-in"
IDA = "//m2m.example.com/cse-in/Cae1"
KPSA_ID = "test@onem2m.com"
CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def run(*args, stdin=b"", timeout=20):
    return subprocess.run([M2MPSK, *args], input=stdin, capture_output=True,
                          timeout=timeout)


def keygen(path, kpsa_id=KPSA_ID, ida=IDA, extra=()):
    args = ["keygen", "--keys", path, "--kpsa-id", kpsa_id, "--idb", IDB]
    if ida:
        args += ["--ida", ida]
    r = run(*args, *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


class Server(ServeProcess):
    """m2mpsk serve in the background; waits for its listening line."""

    def __init__(self, keys, *extra, listen="127.0.0.1"):
        super().__init__([M2MPSK, "serve", "--keys", keys, "--id", IDB,
                          "--listen", listen, *extra])


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@case
def help_on_every_command(tmp):
    for cmd in ([], ["keygen"], ["import"], ["serve"], ["connect"],
                ["version"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0 and b"usage: m2mpsk" in r.stdout, (cmd, r)
    r = run("version")
    # The build's backend (-DM2MPSK_TLS; ctest passes it).
    backend = os.environ.get("M2MPSK_BACKEND_NAME",
                             os.environ.get("M2MPSK_TLS", "boringssl"))
    assert r.returncode == 0 and b"(" + backend.encode() + b")" in r.stdout, \
        r.stdout
    # Each engine of the build, with its own suites.
    for engine in backend.split("+"):
        assert b"engine %s: " % engine.encode() in r.stdout, r.stdout
        assert b"engine %s suite TLS_PSK_WITH_AES_128_CBC_SHA\n" % \
            engine.encode() in r.stdout, r.stdout
    for flag in ("--version", "-V"):
        v = run(flag)
        assert v.returncode == 0 and v.stdout == r.stdout, (flag, v)
    for cmd in ("keygen", "import", "serve", "connect"):
        assert b"Exit codes" in run(cmd, "--help").stdout, cmd


@case
def bad_arguments_are_usage_errors(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    for args in ([], ["frobnicate"], ["serve", "--bogus"],
                 ["serve", "--keys", keys],
                 ["serve", "--keys", keys, "--id", IDB, "--port", "70000"],
                 ["serve", "--keys", keys, "--id", "cse-in"],
                 ["serve", "--keys", keys, "--id", IDB, "--suites", "TLS_X"],
                 ["connect", "127.0.0.1", "--keys", keys, "--kpsa-id", KPSA_ID],
                 ["connect", "127.0.0.1:1", "--keys", keys],
                 ["connect", "127.0.0.1:1", "--keys", keys, "--kpsa-id", "x"],
                 ["connect", "127.0.0.1:1", "--keys", keys, "--kpsa-id",
                  KPSA_ID, "--tcp", "--udp"],
                 ["connect", "127.0.0.1:1", "--keys", keys, "--kpsa-id",
                  KPSA_ID, "--udp", "--tcp"],
                 ["serve", "--keys", keys, "--id", IDB, "--tcp", "--udp"],
                 ["serve", "--keys", keys, "--id", IDB, "--listen", "[::1"],
                 ["serve", "--keys", keys, "--id", IDB, "--listen", "[]"],
                 ["serve", "--keys", keys, "--id", IDB, "--listen",
                  "127.0.0.1:70000"],
                 ["serve", "--keys", keys, "--id", IDB, "--listen",
                  "[::1]:4433", "--port", "4434"],
                 ["version", "extra"], ["--version", "extra"],
                 ["import", "--keys", keys, "--idb", IDB],
                 ["import", "--psktool", keys, "--keys", keys, "--idb", "x"],
                 ["keygen", "--keys", keys, "--kpsa-id", "b@onem2m.com",
                  "--idb", IDB, "--not-after", "2026-02-30T00:00:00Z"],
                 ["keygen", "--keys", keys, "--kpsa-id", "b@onem2m.com",
                  "--idb", IDB, "--not-before", "2030-01-01T00:00:00Z",
                  "--not-after", "2029-01-01T00:00:00Z"],
                 ["keygen", "--keys", keys, "--kpsa-id", KPSA_ID],
                 ["keygen", "--keys", keys, "--kpsa-id", "b@onem2m.com",
                  "--idb", IDB, "--bytes", "8"]):
        r = run(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert r.stderr.startswith(b"m2mpsk: ") or b"usage" in r.stderr, args


@case
def keygen_makes_private_files_and_refuses_duplicates(tmp):
    keys = os.path.join(tmp, "keys")
    hexkey = keygen(keys, extra=("--print", "hex", "--bytes", "16"))
    assert re.fullmatch(r"[0-9a-f]{32}", hexkey), hexkey
    assert os.stat(keys).st_mode & 0o777 == 0o600
    line = keygen(keys, kpsa_id="dev2@onem2m.com", ida=None,
                  extra=("--print", "gnutls"))
    assert re.fullmatch(r"dev2@onem2m\.com:[0-9a-f]{64}", line), line
    r = run("keygen", "--keys", keys, "--kpsa-id", KPSA_ID, "--idb", IDB)
    # A fact about the key file, not about the arguments: 3, not 2.
    assert r.returncode == 3 and b"already holds" in r.stderr, r.stderr
    with open(keys) as f:
        assert len(f.readlines()) == 2


def holds(keys, kpsa_id):
    """Whether the key file loads and holds kpsa_id, without changing it:
    connect gets as far as the (refused) TCP connect only then."""
    r = run("connect", "127.0.0.1:%d" % free_port(), "--keys", keys,
            "--kpsa-id", kpsa_id)
    assert r.returncode == 3, r
    return b"cannot connect" in r.stderr


def leftovers(tmp):
    return [n for n in os.listdir(tmp) if n.startswith(".")]


@case
def missing_kpsa_id_is_a_key_file_error(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    r = run("connect", "127.0.0.1:1", "--keys", keys, "--kpsa-id",
            "absent@onem2m.com")
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert b"absent@onem2m.com in " in r.stderr, r.stderr


@case
def keygen_keeps_a_last_line_without_newline(tmp):
    """The bug: the new record was glued onto a last line without LF, and
    the file no longer loaded at all."""
    keys = os.path.join(tmp, "keys")
    old = ("# provisioned by hand\r\nkpsa-id=old@onem2m.com "
           "kpsa=hex:000102030405060708090a0b0c0d0e0f idb=%s" % IDB).encode()
    with open(keys, "wb") as f:
        f.write(old)
    os.chmod(keys, 0o600)
    keygen(keys)
    data = open(keys, "rb").read()
    assert data.startswith(old + b"\n"), data[:len(old) + 1]
    assert data.count(b"\n") == 3, data.count(b"\n")
    assert holds(keys, "old@onem2m.com") and holds(keys, KPSA_ID)
    assert leftovers(tmp) == [], leftovers(tmp)


@case
def keygen_keeps_mode_and_owner(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    os.chmod(keys, 0o400)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (12345, 23456)
        os.chown(keys, *owner)
    inode = os.stat(keys).st_ino
    keygen(keys, kpsa_id="second@onem2m.com")
    st = os.stat(keys)
    assert st.st_ino != inode, "replaced by rename, not rewritten in place"
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o400, *owner), \
        (oct(st.st_mode), st.st_uid, st.st_gid)
    assert holds(keys, KPSA_ID) and holds(keys, "second@onem2m.com")
    assert leftovers(tmp) == []


def limit_file_size(n):
    """preexec_fn: writes past n bytes fail with EFBIG (SIGXFSZ ignored)."""
    def apply():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return apply


@case
def failed_writes_leave_the_key_file_unchanged(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    keygen(keys, kpsa_id="second@onem2m.com")
    before = open(keys, "rb").read()
    # A duplicate KpsaID, found before anything is written.
    r = run("keygen", "--keys", keys, "--kpsa-id", "second@onem2m.com",
            "--idb", IDB)
    assert r.returncode == 3 and b"already holds" in r.stderr, r.stderr
    assert open(keys, "rb").read() == before and leftovers(tmp) == []
    # A write that fails midway: the copy of the old records succeeds,
    # the new record does not fit under RLIMIT_FSIZE.
    r = subprocess.run([M2MPSK, "keygen", "--keys", keys, "--kpsa-id",
                        "third@onem2m.com", "--idb", IDB],
                       capture_output=True, timeout=20,
                       preexec_fn=limit_file_size(len(before) + 20))
    assert r.returncode == 3 and b"File too large" in r.stderr, r
    assert b"is unchanged" in r.stderr, r.stderr
    assert open(keys, "rb").read() == before and leftovers(tmp) == []
    # An import whose third line is bad, after two written records.
    psk = os.path.join(tmp, "psk")
    with open(psk, "w") as f:
        f.write("p1@onem2m.com:%s\np2@onem2m.com:%s\np3@onem2m.com:xyz\n"
                % ("11" * 16, "22" * 16))
    os.chmod(psk, 0o600)
    r = run("import", "--psktool", psk, "--keys", keys, "--idb", IDB)
    assert r.returncode == 3 and (psk + ":3:").encode() in r.stderr, r.stderr
    assert open(keys, "rb").read() == before and leftovers(tmp) == []
    assert not holds(keys, "p1@onem2m.com")
    # A directory we may not write to (root may write anywhere).
    if os.geteuid() != 0:
        os.chmod(tmp, 0o500)
        try:
            r = run("keygen", "--keys", keys, "--kpsa-id", "fourth@onem2m.com",
                    "--idb", IDB)
        finally:
            os.chmod(tmp, 0o700)
        assert r.returncode == 3 and b"temporary file" in r.stderr, r.stderr
        assert open(keys, "rb").read() == before and leftovers(tmp) == []


def psktool(path, user, size=None):
    args = ["psktool", "-u", user, "-p", path]
    if size:
        args += ["-s", str(size)]
    r = subprocess.run(args, capture_output=True, timeout=20)
    assert r.returncode == 0, r


def psk_keys(path):
    keys = {}
    for line in open(path).read().splitlines():
        name, _, key = line.partition(":")
        keys[name] = key
    return keys


def start_gnutls_psk_server(psk):
    """gnutls-serv echoing over PSK with the psktool file `psk`, on a free
    loopback port: (process, port) once its IPv4 socket listens. The port
    free_port() found can be taken by another test before gnutls-serv binds
    it ("bind() failed: Address already in use"): then again, on another,
    up to 5 times. Bounded: a readline() would wait for ever on a
    gnutls-serv that prints nothing more (its IPv4 bind lost while its IPv6
    one stands), so each try reads for at most 10 s."""
    for _ in range(5):
        port = free_port()
        srv = subprocess.Popen(
            ["gnutls-serv", "--port", str(port), "--pskpasswd", psk, "--echo",
             "--priority", "NORMAL:-KX-ALL:+PSK"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        seen = b""
        ready = rb"IPv4 0\.0\.0\.0 port %d\.\.\.done" % port
        lost = rb"IPv4 0\.0\.0\.0 port %d\.\.\.bind\(\) failed" % port
        while not re.search(ready, seen) and not re.search(lost, seen):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([srv.stdout], [], [], left)[0]:
                break
            chunk = os.read(srv.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
        if re.search(ready, seen):
            return srv, port
        os.killpg(srv.pid, signal.SIGKILL)
        srv.wait(timeout=5)
        assert re.search(lost, seen), "gnutls-serv not ready: %r" % seen
    raise AssertionError("gnutls-serv lost its port 5 times: %r" % seen)


@case
def import_reads_psktool_files(tmp):
    """A file made by GnuTLS's psktool: the imported keys are its keys (a
    GnuTLS server using the psktool file accepts m2mpsk connect using the
    imported key file), key bytes are never printed."""
    psk = os.path.join(tmp, "users.psk")
    psktool(psk, "dev1@onem2m.com")
    psktool(psk, "dev2@onem2m.com", 16)
    secrets = psk_keys(psk)
    keys = os.path.join(tmp, "keys")
    keygen(keys)  # an existing record stays
    r = run("import", "--psktool", psk, "--keys", keys, "--idb", IDB,
            "--ida", IDA, "--not-after", "2999-01-01T00:00:00Z", "-v")
    assert r.returncode == 0, r.stderr
    assert b"imported 2 records" in r.stderr, r.stderr
    for key in secrets.values():
        for out in (r.stdout, r.stderr):
            assert key.encode() not in out and key[:16].encode() not in out
    assert holds(keys, KPSA_ID) and holds(keys, "dev1@onem2m.com") \
        and holds(keys, "dev2@onem2m.com")
    text = open(keys).read()
    assert text.count("ida=%s not-after=2999-01-01T00:00:00Z\n" % IDA) == 2
    # Again: both are in the key file now.
    r = run("import", "--psktool", psk, "--keys", keys, "--idb", IDB)
    assert r.returncode == 3 and (psk + ":1:").encode() in r.stderr, r.stderr
    # --kpsa-id picks lines; '#hex' identities are psktool's other form.
    psk2 = os.path.join(tmp, "more.psk")
    with open(psk2, "w") as f:
        f.write("one@onem2m.com:%s\n#%s:%s\n" % (
            "33" * 16, b"two@onem2m.com".hex(), "44" * 32))
    os.chmod(psk2, 0o600)
    r = run("import", "--psktool", psk2, "--keys", keys, "--idb", IDB,
            "--kpsa-id", "two@onem2m.com")
    assert r.returncode == 0, r.stderr
    assert holds(keys, "two@onem2m.com") and not holds(keys, "one@onem2m.com")
    r = run("import", "--psktool", psk2, "--keys", keys, "--idb", IDB,
            "--kpsa-id", "three@onem2m.com")
    assert r.returncode == 3 and b"no line for KpsaID three" in r.stderr
    # The keys are psktool's: gnutls-serv reads the psktool file.
    srv, port = start_gnutls_psk_server(psk)
    try:
        r = run("connect", "127.0.0.1:%d" % port, "--keys", keys,
                "--kpsa-id", "dev2@onem2m.com", "--timeout", "5000",
                stdin=b"psktool key\n")
        assert r.returncode == 0 and r.stdout == b"psktool key\n", r.stderr
    finally:
        os.killpg(srv.pid, signal.SIGKILL)
        srv.wait(timeout=5)


@case
def import_refuses_malformed_psktool_files(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    before = open(keys, "rb").read()
    secret = "5a" * 16
    cases = (("nocolon\n", 1, b"not 'identity:hexkey'"),
             ("\n:%s\n" % secret, 2, b"not 'identity:hexkey'"),
             ("bad id:%s\n" % secret, 1, b"not a KpsaID"),
             ("a@onem2m.com:%sz\n" % secret, 1, b"not hex digits"),
             ("a@onem2m.com:%s0\n" % secret, 1, b"not hex digits"),
             ("a@onem2m.com:0011\n", 1, b"2 bytes, not 16 to 64"),
             ("a@onem2m.com:%s\n" % ("5a" * 65), 1, b"65 bytes"),
             ("a@onem2m.com:%s\na@onem2m.com:%s\n" % (secret, secret), 2,
              b"already holds KpsaID a@onem2m.com"),
             ("#zz:%s\n" % secret, 1, b"'#' identity is not hex"),
             ("%s:%s\n" % (KPSA_ID, secret), 1, b"already holds"),
             ("x" * 5000 + "\n", 1, b"longer than"),
             ("", 0, b"has no records"))
    for text, line, want in cases:
        psk = os.path.join(tmp, "psk")
        with open(psk, "w") as f:
            f.write(text)
        os.chmod(psk, 0o600)
        r = run("import", "--psktool", psk, "--keys", keys, "--idb", IDB)
        where = ("%s:%d: " % (psk, line)).encode() if line else b""
        assert r.returncode == 3 and where in r.stderr and want in r.stderr, \
            (text[:60], r.stderr)
        assert secret.encode() not in r.stderr + r.stdout, r.stderr
        assert open(keys, "rb").read() == before and leftovers(tmp) == []
    r = run("import", "--psktool", os.path.join(tmp, "absent"), "--keys",
            keys, "--idb", IDB)
    assert r.returncode == 3 and b"cannot read" in r.stderr, r.stderr
    # A new key file is not created from a bad psktool file.
    r = run("import", "--psktool", psk, "--keys", os.path.join(tmp, "new"),
            "--idb", IDB)
    assert r.returncode == 3 and not os.path.exists(os.path.join(tmp, "new"))


@case
def unsafe_or_malformed_key_files_are_refused(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    os.chmod(keys, 0o644)
    for args in (["serve", "--keys", keys, "--id", IDB],
                 ["connect", "127.0.0.1:1", "--keys", keys, "--kpsa-id",
                  KPSA_ID],
                 ["keygen", "--keys", keys, "--kpsa-id", "n@onem2m.com",
                  "--idb", IDB]):
        r = run(*args)
        assert r.returncode == 3 and b"private" in r.stderr, (args, r.stderr)
    bad = os.path.join(tmp, "bad")
    with open(bad, "w") as f:
        f.write("# comment\nkpsa-id=test@onem2m.com kpsa=hex:zz idb=%s\n" % IDB)
    os.chmod(bad, 0o600)
    r = run("serve", "--keys", bad, "--id", IDB)
    assert r.returncode == 3 and (bad + ":2:").encode() in r.stderr, r.stderr
    r = run("serve", "--keys", os.path.join(tmp, "absent"), "--id", IDB)
    assert r.returncode == 3, r.stderr


@case
def unreachable_peers_are_io_errors(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    r = run("connect", "127.0.0.1:%d" % free_port(), "--keys", keys,
            "--kpsa-id", KPSA_ID)
    assert r.returncode == 3 and b"cannot connect" in r.stderr, r.stderr
    r = run("connect", "127.0.0.1:%d" % free_port(socket.SOCK_DGRAM),
            "--udp", "--keys", keys, "--kpsa-id", KPSA_ID, "--timeout", "3000")
    assert r.returncode == 3 and b"cannot reach" in r.stderr, r.stderr
    r = run("connect", "no-such-host.invalid:4433", "--keys", keys,
            "--kpsa-id", KPSA_ID)
    assert r.returncode == 3 and b"cannot resolve" in r.stderr, r.stderr


def associate(tmp, transport, client_keys=None, server_extra=(),
              client_extra=(), listen="127.0.0.1", host="127.0.0.1"):
    keys = os.path.join(tmp, "keys")
    if not os.path.exists(keys):
        keygen(keys)
    srv = Server(keys, *transport, "--once", *server_extra, listen=listen)
    r = run("connect", "%s:%d" % (host, srv.port), *transport, "--keys",
            client_keys or keys, "--kpsa-id", KPSA_ID, *client_extra,
            stdin=b"hello, Entity B\n")
    code, log = srv.finish()
    return r, code, "".join(log)


@case
def tls_and_dtls_associations_bind_and_echo(tmp):
    for transport in ([], ["--udp"]):
        r, code, log = associate(tmp, transport)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"hello, Entity B\n", r.stdout
        assert ("bound=%s credential=0" % IDB).encode() in r.stderr
        assert "bound=%s credential=0" % IDA in log, log
        assert code == 0, log


@case
def engine_option_picks_the_engine(tmp):
    """--engine on both sides: the named engine runs the association (the
    log says which), auto runs the default config on OpenSSL when the
    build has it (TS-0003's mandated suites), and an unknown name is a
    usage error."""
    engines = os.environ.get("M2MPSK_BACKEND_NAME", "boringssl").split("+")
    default = "openssl" if "openssl" in engines else "boringssl"
    for transport in ([], ["--udp"]):
        r, code, log = associate(tmp, transport)
        assert r.returncode == 0 and code == 0, (r.stderr, log)
        assert ("engine=%s" % default).encode() in r.stderr, r.stderr
        # A TLS responder picks the fastest engine the ClientHello allows.
        server = ("boringssl" if not transport and len(engines) > 1
                  else default)
        assert "engine=%s" % server in log, log
        for srv_engine in engines:
            for cli_engine in engines:
                r, code, log = associate(
                    tmp, transport, server_extra=["--engine", srv_engine],
                    client_extra=["--engine", cli_engine])
                assert r.returncode == 0 and code == 0, (r.stderr, log)
                assert ("engine=%s" % cli_engine).encode() in r.stderr
                assert "engine=%s" % srv_engine in log, log
    r = run("connect", "127.0.0.1:1", "--keys", "k", "--kpsa-id", KPSA_ID,
            "--engine", "gnutls")
    assert r.returncode == 2 and b"--engine must be" in r.stderr, r.stderr


@case
def credential_id_without_ida(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys, ida=None)
    r, code, log = associate(tmp, [])
    assert r.returncode == 0 and code == 0
    assert "bound=12-%s credential=1" % KPSA_ID in log, log


@case
def wrong_key_fails_on_both_sides(tmp):
    keys = os.path.join(tmp, "keys")
    other = os.path.join(tmp, "other")
    keygen(keys)
    keygen(other)
    for transport in ([], ["--udp"]):
        r, code, log = associate(tmp, transport, client_keys=other,
                                 server_extra=["--timeout", "5000"],
                                 client_extra=["--timeout", "5000"])
        assert r.returncode == 1, r.stderr
        assert b"reason=bad-key" in r.stderr, r.stderr
        assert code == 1 and "reason=bad-key" in log, log


@case
def unknown_kpsa_id_looks_like_a_wrong_key(tmp):
    keys = os.path.join(tmp, "keys")
    stranger = os.path.join(tmp, "stranger")
    keygen(keys, kpsa_id="someone@onem2m.com")
    keygen(stranger)
    r, code, log = associate(tmp, [], client_keys=stranger)
    assert r.returncode == 1 and b"reason=bad-key" in r.stderr, r.stderr
    assert code == 1 and "reason=unknown-identity" in log, log
    os.unlink(os.path.join(tmp, "keys"))
    keygen(keys, kpsa_id="someone@onem2m.com")
    r, code, log = associate(tmp, [], client_keys=stranger,
                             server_extra=["--reveal-unknown"])
    assert b"reason=unknown-identity" in r.stderr, r.stderr


TRACE_RX = re.compile(
    r"^m2mpsk: (>>>|<<<) (D?TLS 1\.[02]), (\w+) \[length ([0-9a-f]{4})\]"
    r"(?:, ([^\n]*?))? peer=\S+$", re.M)


def trace(text):
    """-v's record lines: (arrow, version, content type, length, detail)."""
    return [(m.group(1), m.group(2), m.group(3), int(m.group(4), 16),
             m.group(5) or "") for m in TRACE_RX.finditer(text)]


def names(lines):
    return [(a, d if t == "Handshake" else t) for a, _, t, _, d in lines]


@case
def trace_reads_like_s_client_msg(tmp):
    """-v on both sides, TLS and DTLS: one line per record or handshake
    message, '>>>' for what this side sent and '<<<' for what it received
    (as openssl s_client -msg), so the two sides' traces mirror each
    other; never key bytes."""
    keys = os.path.join(tmp, "keys")
    hexkey = keygen(keys, extra=("--print", "hex"))
    backend = os.environ.get("M2MPSK_TLS", "boringssl")
    for transport in ([], ["--udp"]):
        r, code, log = associate(tmp, transport, server_extra=["-v"],
                                 client_extra=["-v"])
        assert r.returncode == 0 and code == 0, (r.stderr, log)
        client, server = trace(r.stderr.decode()), trace(log)
        version = "DTLS 1.2" if transport else "TLS 1.2"
        for side in (client, server):
            assert side and all(v in (version, version[:-1] + "0")
                                for _, v, _, _, _ in side), side
        # What one side sent, the other received, in the same order.
        for a, b in ((">>>", "<<<"), ("<<<", ">>>")):
            assert [n for d, n in names(client) if d == a] == \
                [n for d, n in names(server) if d == b], (client, server)
        want = [(">>>", "ClientHello"), ("<<<", "ServerHello"),
                ("<<<", "ServerHelloDone"), (">>>", "ClientKeyExchange"),
                (">>>", "ChangeCipherSpec"), (">>>", "Finished"),
                ("<<<", "ChangeCipherSpec"), ("<<<", "Finished"),
                (">>>", "ApplicationData"), ("<<<", "ApplicationData"),
                (">>>", "Alert"), ("<<<", "Alert")]
        got = [n for n in names(client) if n[1] != "HelloVerifyRequest"]
        # A DTLS cookie exchange sends the ClientHello twice.
        if transport and backend == "openssl":
            assert (">>>", "ClientHello") == got[0] == got[1], got
            assert ("<<<", "HelloVerifyRequest") in names(client), client
            got = got[1:]
        for w in want:
            assert w in got, (w, got)
        assert got.index((">>>", "ClientHello")) < got.index(
            ("<<<", "ServerHello")) < got.index(
            (">>>", "ClientKeyExchange")) < got.index(("<<<", "Finished"))
        hello = [ln for ln in client if ln[4] == "ClientHello"][0]
        assert hello[3] > 40, hello
        assert (">>>", version, "Alert", hello[3], "") not in client
        assert any(t == "Alert" and d == "encrypted" for _, _, t, _, d in
                   client), client
        for text in (r.stderr.decode(), log):
            assert "->" not in text and "<-" not in text, text
            assert hexkey not in text and hexkey[:16] not in text
    # A failed TLS handshake: the alert is in the clear and named.
    other = os.path.join(tmp, "other")
    keygen(other)
    r, code, log = associate(tmp, [], client_keys=other,
                             server_extra=["-v", "--timeout", "5000"],
                             client_extra=["-v", "--timeout", "5000"])
    assert r.returncode == 1 and code == 1, (r.stderr, log)
    sent = [ln for ln in trace(log) if ln[0] == ">>>" and ln[2] == "Alert"]
    got = [ln for ln in trace(r.stderr.decode()) if ln[0] == "<<<" and
           ln[2] == "Alert"]
    assert sent and sent[0][3] == 2 and sent[0][4].startswith("fatal "), log
    assert got and got[0][4] == sent[0][4], (got, sent)


@case
def ipv6_loopback(tmp):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        raise AssertionError("no IPv6 loopback on this machine")
    for transport in ([], ["--udp"]):
        for listen in ("::1", "[::1]"):
            r, code, log = associate(tmp, transport, listen=listen,
                                     host="[::1]")
            assert r.returncode == 0 and code == 0, (r.stderr, log)
            assert "peer=[::1]:" in log, log


@case
def listen_takes_a_port_like_connect_takes_one(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    # localhost is ::1 first on some machines (a fresh Debian root), and
    # 127.0.0.1 first on others: the client resolves it as the server did.
    for listen, host in (("[::1]:%d", "[::1]"), ("127.0.0.1:%d", "127.0.0.1"),
                         ("localhost:%d", "localhost")):
        port = free_port()
        srv = Server(keys, "--once", "--port", str(port),
                     listen=listen % port)
        assert srv.port == port, srv.lines
        r = run("connect", "%s:%d" % (host, port), "--keys", keys,
                "--kpsa-id", KPSA_ID, stdin=b"x")
        code, log = srv.finish()
        assert r.returncode == 0 and code == 0 and r.stdout == b"x", log


@case
def many_concurrent_associations(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    for transport in ([], ["--udp"]):
        srv = Server(keys, *transport)
        try:
            procs = [subprocess.Popen(
                [M2MPSK, "connect", "127.0.0.1:%d" % srv.port, *transport,
                 "--keys", keys, "--kpsa-id", KPSA_ID],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE) for _ in range(8)]
            for i, p in enumerate(procs):
                out, err = p.communicate(b"client %d\n" % i, timeout=20)
                assert p.returncode == 0, err
                assert out == b"client %d\n" % i, out
        finally:
            code, log = srv.stop()
        assert "".join(log).count("association peer=") == 8, log


@case
def max_conn_bounds_concurrent_associations(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    srv = Server(keys, "--max-conn", "1")
    try:
        first = subprocess.Popen(
            [M2MPSK, "connect", "127.0.0.1:%d" % srv.port, "--keys", keys,
             "--kpsa-id", KPSA_ID], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and first.poll() is None:
            line = first.stderr.readline()
            if b"association" in line:
                break
        second = run("connect", "127.0.0.1:%d" % srv.port, "--keys", keys,
                     "--kpsa-id", KPSA_ID, "--timeout", "2000")
        assert second.returncode != 0, second.stderr
        first.communicate(b"bye\n", timeout=10)
        assert first.returncode == 0
    finally:
        srv.stop()


@case
def idle_udp_peers_free_their_place(tmp):
    """A DTLS peer that vanishes without close_notify must not hold one of
    --max-conn's places for ever."""
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    srv = Server(keys, "--udp", "--max-conn", "1", "--idle", "500")
    try:
        gone = subprocess.Popen(
            [M2MPSK, "connect", "127.0.0.1:%d" % srv.port, "--udp", "--keys",
             keys, "--kpsa-id", KPSA_ID], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if b"association" in gone.stderr.readline():
                break
        os.killpg(gone.pid, signal.SIGKILL)  # no close_notify
        gone.wait(timeout=5)
        r = run("connect", "127.0.0.1:%d" % srv.port, "--udp", "--keys",
                keys, "--kpsa-id", KPSA_ID, "--timeout", "5000",
                stdin=b"after idle\n")
        assert r.returncode == 0 and r.stdout == b"after idle\n", r.stderr
    finally:
        code, log = srv.stop()
    assert "idle peer=" in "".join(log), log


@case
def failed_handshakes_rate_limit_the_address(tmp):
    """After --rate-limit N failed handshakes, the address is refused for a
    while even with the right key: over TCP with a logged failure, over
    UDP by dropping its datagrams. --audit shows the library's events."""
    keys = os.path.join(tmp, "keys")
    other = os.path.join(tmp, "other")
    keygen(keys)
    keygen(other)
    for transport in ([], ["--udp"]):
        srv = Server(keys, *transport, "--rate-limit", "3", "--audit")
        try:
            for _ in range(3):
                r = run("connect", "127.0.0.1:%d" % srv.port, *transport,
                        "--keys", other, "--kpsa-id", KPSA_ID,
                        "--timeout", "5000")
                assert r.returncode == 1 and b"reason=bad-key" in r.stderr, \
                    r.stderr
            r = run("connect", "127.0.0.1:%d" % srv.port, *transport,
                    "--keys", keys, "--kpsa-id", KPSA_ID, "--timeout", "700",
                    stdin=b"let me in\n")
            # TCP: accepted and closed at once (reset, or closed during the
            # handshake: a failed association either way); UDP: no answer
            # until the client's timeout.
            assert r.returncode == 1, r
            assert r.stdout == b"", (r.stdout, r.stderr)
            # The block lasts 1 s: afterwards the right key works again.
            # Refusals do not extend a block, so this waits for the event
            # (an association) by trying until it comes, within 10 s.
            blocked_at = time.monotonic()
            deadline = blocked_at + 10
            while True:
                r = run("connect", "127.0.0.1:%d" % srv.port, *transport,
                        "--keys", keys, "--kpsa-id", KPSA_ID, "--timeout",
                        "700", stdin=b"later\n")
                if r.returncode == 0 or time.monotonic() > deadline:
                    break
                assert r.stdout == b"", (r.stdout, r.stderr)
            assert r.returncode == 0 and r.stdout == b"later\n", r.stderr
        finally:
            code, log = srv.stop()
        log = "".join(log)
        assert log.count("failure peer=127.0.0.1:") >= 3, log
        assert ("audit type=failed reason=bad-key kpsa-id=%s bound=- "
                "tag=127.0.0.1 " % KPSA_ID) in log, log
        assert ("audit type=established reason=none kpsa-id=%s bound=%s "
                "tag=127.0.0.1 " % (KPSA_ID, IDA)) in log, log
        assert "audit type=closed" in log, log
        if transport:
            assert "reason=rate-limited" not in log, "UDP drops silently"
        else:
            assert "reason=rate-limited" in log, log
            assert "audit type=rate-limited reason=rate-limited" in log, log


@case
def version_lists_suites_and_the_ts0003_profile(tmp):
    r = run("version")
    out = r.stdout.decode()
    assert r.returncode == 0 and "suite TLS_PSK_WITH_AES_128_CBC_SHA\n" in out
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    if "(boringssl)" in out:
        assert ("profile ts0003: lacks TLS_PSK_WITH_AES_128_CBC_SHA256:"
                "TLS_PSK_WITH_AES_128_CCM_8") in out, out
        r = run("serve", "--keys", keys, "--id", IDB, "--suites", "ts0003")
        assert r.returncode == 2, r
        assert (b"--suites ts0003: the boringssl backend lacks "
                b"TLS_PSK_WITH_AES_128_CBC_SHA256") in r.stderr, r.stderr
    else:
        assert "profile ts0003: complete" in out, out
        for transport, suite in (([], "TLS_PSK_WITH_AES_128_CBC_SHA256"),
                                 (["--udp"], "TLS_PSK_WITH_AES_128_CCM_8")):
            # On OpenSSL, whose preference puts the mandated suite first
            # (auto would run a TLS responder on BoringSSL: README).
            r, code, log = associate(tmp, transport,
                                     server_extra=["--suites", "ts0003",
                                                   "--engine", "openssl"],
                                     client_extra=["--suites", "ts0003"])
            assert r.returncode == 0 and code == 0, (r.stderr, log)
            assert "suite=%s" % suite in log, log


@case
def serve_has_no_http_mode(tmp):
    """`serve --http` is gone (issue 16): the oneM2M HTTP binding is
    `m2mpsk gateway`'s; serve rejects the option as a usage error."""
    r = run("serve", "--help")
    assert b"--http" not in r.stdout, r.stdout
    assert b"gateway" in r.stdout, r.stdout
    r = run("serve", "--http", "--keys", os.path.join(tmp, "none"), "--id",
            IDB)
    assert r.returncode == 2, (r.returncode, r.stderr)


# ---- --keys etcd://... (issue 19) ------------------------------------------
# Run apart from the rest (cli_tests.py M2MPSK etcd; ctest cli.etcd, LABELS
# etcd;cli): each case starts a private single-member etcd.

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "support"))
from etcd_single import EtcdSingle  # noqa: E402

ETCD_CASES = []


def etcd_case(fn):
    ETCD_CASES.append(fn)
    return fn


def write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class EtcdKeys:
    """A private etcd, a KEK, and `m2mpsk keys` against both. Each record
    put is also written to a local key file for the client side."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.etcd = EtcdSingle(tmp)
        self.url = self.etcd.url("m2mpsk")
        self.kek = os.path.join(tmp, "kek")
        r = run("keys", "kek", "--out", self.kek)
        assert r.returncode == 0, r.stderr
        self.n = 0

    def keys(self, sub, *args):
        r = run("keys", sub, "--etcd", self.url, "--kek", self.kek, *args)
        assert r.returncode == 0, (sub, r.returncode, r.stderr)
        return r

    def put(self, kpsa_id, ida=IDA):
        """Puts a fresh 32-byte key; returns a client key file holding it."""
        self.n += 1
        key = os.urandom(32)
        secret = os.path.join(self.tmp, "key%d" % self.n)
        write_secret(secret, "hex:%s\n" % key.hex())
        self.keys("put", "--kpsa-id", kpsa_id, "--idb", IDB,
                  *(["--ida", ida] if ida else []), "--key-file", secret)
        client = os.path.join(self.tmp, "client%d" % self.n)
        write_secret(client, "kpsa-id=%s kpsa=hex:%s idb=%s%s\n" %
                     (kpsa_id, key.hex(), IDB, " ida=" + ida if ida else ""))
        return client

    def serve(self, *extra):
        return Server(self.url, "--kek", self.kek, *extra)

    def close(self):
        self.etcd.stop()


class Connected:
    """`m2mpsk connect` holding an association open (stdin stays open)."""

    def __init__(self, srv, keys, kpsa_id, transport=()):
        self.proc = subprocess.Popen(
            [M2MPSK, "connect", "127.0.0.1:%d" % srv.port, *transport,
             "--keys", keys, "--kpsa-id", kpsa_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        # Established on both sides: the server logs it, and an echo
        # comes back through the association.
        wait_log(srv, r"association peer=\S+ kpsa-id=%s " % re.escape(kpsa_id))
        self.proc.stdin.write(b"ping\n")
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], 10)
        assert r and self.proc.stdout.readline() == b"ping\n", \
            "no echo over the association"

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)


def wait_log(srv, pattern, timeout=10, start=0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in srv.lines[start:]:
            if re.search(pattern, line):
                return line
        time.sleep(0.005)
    raise AssertionError("no %r in the server's log: %r" % (pattern,
                                                           srv.lines))


def ended_within(env, srv, conn, sub, kpsa_id):
    """Runs `m2mpsk keys SUB --kpsa-id ID` and returns the seconds until the
    client saw its association end (its process exits on the alert)."""
    mark = len(srv.lines)
    t0 = time.monotonic()
    env.keys(sub, "--kpsa-id", kpsa_id)
    try:
        conn.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        conn.kill()
        raise AssertionError("the association outlived `keys %s` by 5 s; "
                             "server log: %r" % (sub, srv.lines[mark:]))
    dt = time.monotonic() - t0
    # The client's own account varies by engine: BoringSSL sends
    # access_denied; OpenSSL, once encrypting, can only send close_notify
    # (src/tls/openssl.c). The server says why.
    wait_log(srv, r"failure peer=\S+ reason=revoked", start=mark)
    return dt


def etcd_serve_case(tmp, transport, sub):
    env = EtcdKeys(tmp)
    srv = conn = None
    try:
        k1 = env.put("dev1@m2m.example.com")
        srv = env.serve(*transport, "-v")
        assert any(re.search(r"m2mpsk: keys: 1 records from etcd at revision "
                             r"\d+ in \d+ ms", l) for l in srv.lines), srv.lines
        conn = Connected(srv, k1, "dev1@m2m.example.com", transport)
        dt = ended_within(env, srv, conn, sub, "dev1@m2m.example.com")
        print("  %s %s: association ended %.0f ms after the command started"
              % ("dtls" if transport else "tls", sub, dt * 1000))
        assert dt < 1.0, "%.3f s" % dt
        # Gone for new handshakes too.
        r = run("connect", "127.0.0.1:%d" % srv.port, *transport, "--keys",
                k1, "--kpsa-id", "dev1@m2m.example.com", "--timeout", "3000",
                stdin=b"x\n")
        assert r.returncode == 1, (r.returncode, r.stderr)
        # A key put after the start is usable at once.
        k2 = env.put("dev2@m2m.example.com")
        wait_log(srv, r"m2mpsk: keys: put dev2@m2m\.example\.com")
        r = run("connect", "127.0.0.1:%d" % srv.port, *transport, "--keys",
                k2, "--kpsa-id", "dev2@m2m.example.com",
                stdin=b"hello over etcd\n")
        assert r.returncode == 0 and r.stdout == b"hello over etcd\n", \
            (r.returncode, r.stdout, r.stderr)
        # SIGTERM stops the sync thread and the server cleanly.
        code, log = srv.stop()
        srv = None
        assert code == 0, (code, log)
    finally:
        if conn is not None:
            conn.kill()
        if srv is not None:
            srv.kill()
        env.close()


@etcd_case
def etcd_tls_revoke_ends_live_association(tmp):
    etcd_serve_case(tmp, [], "revoke")


@etcd_case
def etcd_dtls_delete_ends_live_association(tmp):
    etcd_serve_case(tmp, ["--udp"], "delete")


@etcd_case
def etcd_unreachable_fails_closed(tmp):
    """etcd gone for longer than --etcd-fail-closed: every record is
    removed, and the live association ends like a revoked one."""
    env = EtcdKeys(tmp)
    srv = conn = None
    try:
        k1 = env.put("dev1@m2m.example.com")
        srv = env.serve("--etcd-fail-closed", "1", "-v")
        conn = Connected(srv, k1, "dev1@m2m.example.com")
        mark = len(srv.lines)
        t0 = time.monotonic()
        env.etcd.stop()
        try:
            conn.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("still associated 15 s after etcd went: %r"
                                 % srv.lines[mark:])
        dt = time.monotonic() - t0
        print("  association ended %.1f s after etcd was killed "
              "(--etcd-fail-closed 1)" % dt)
        closed = wait_log(srv, r"keys: etcd unreachable, failing closed",
                          start=mark)
        ended = wait_log(srv, r"failure peer=\S+ reason=revoked", start=mark)
        # Because of it: the keys held served until the bound (counted by
        # the component from etcd's last answer, which may precede the
        # kill by a little).
        assert srv.lines.index(closed) < srv.lines.index(ended), srv.lines
        code, log = srv.stop()
        srv = None
        assert code == 0, (code, log)
    finally:
        if conn is not None:
            conn.kill()
        if srv is not None:
            srv.kill()
        env.close()


@etcd_case
def etcd_options_and_errors(tmp):
    keys = os.path.join(tmp, "keys")
    keygen(keys)
    url = "etcd://127.0.0.1:%d/m2mpsk" % free_port()
    kek = os.path.join(tmp, "kek")
    r = run("keys", "kek", "--out", kek)
    assert r.returncode == 0, r.stderr
    for args, code, what in (
            (["--keys", keys, "--kek", kek], 2, b"go with --keys etcd://"),
            (["--keys", keys, "--etcd-fail-closed", "5"], 2,
             b"go with --keys etcd://"),
            (["--keys", url], 2, b"needs --kek"),
            (["--keys", url, "--kek", kek, "--etcd-fail-closed", "0"], 2,
             b"--etcd-fail-closed must be"),
            (["--keys", url, "--kek", kek], 3, url.encode()),
            (["--keys", url, "--kek", keys + ".none"], 3, b""),
            ):
        r = run("serve", *args, "--id", IDB, timeout=30)
        assert r.returncode == code and what in r.stderr, \
            (args, r.returncode, r.stderr)
    # A KEK others can read is refused, like a key file.
    os.chmod(kek, 0o644)
    with EtcdSingle(tmp) as etcd:
        r = run("serve", "--keys", etcd.url(), "--kek", kek, "--id", IDB,
                timeout=30)
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert b"listening" not in r.stderr, r.stderr


def main():
    cases = CASES
    if len(sys.argv) > 2 and sys.argv[2] == "etcd":
        why = EtcdSingle.missing()
        if why:
            print("SKIP: %s" % why)
            return 77
        r = run("keys", "--help")
        if r.returncode != 0:
            print("SKIP: this m2mpsk has no `keys` (built without etcd "
                  "support): %r" % r.stderr)
            return 77
        cases = ETCD_CASES
    passed = failed = 0
    for fn in cases:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            try:
                fn(tmp)
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
