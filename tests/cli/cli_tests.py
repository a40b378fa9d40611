#!/usr/bin/env python3
"""Tests of the m2mpsk command-line tool over real loopback sockets.

Usage: cli_tests.py PATH/TO/m2mpsk
Every case is bounded in time; every server it starts is killed. Prints one
line per case and a closing 'N passed, N failed' line; exits non-zero on
any failure.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

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


class Server:
    """m2mpsk serve in the background; waits for its listening line."""

    def __init__(self, keys, *extra, listen="127.0.0.1"):
        self.proc = subprocess.Popen(
            [M2MPSK, "serve", "--keys", keys, "--id", IDB, "--listen", listen,
             *extra], stderr=subprocess.PIPE, start_new_session=True)
        self.lines = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on (\S+):(\d+)", line)
            if m:
                self.port = int(m.group(2))
                return
        self.kill()
        raise AssertionError("serve did not start: %r" % self.lines)

    def finish(self, timeout=10):
        """Waits for exit (--once) and returns (exit code, log lines)."""
        try:
            out = self.proc.communicate(timeout=timeout)[1].decode()
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode, self.lines + out.splitlines(True)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.finish()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@case
def help_on_every_command(tmp):
    for cmd in ([], ["keygen"], ["serve"], ["connect"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0 and b"usage: m2mpsk" in r.stdout, (cmd, r)
    r = run("version")
    # The build's backend (-DM2MPSK_TLS; ctest passes it).
    backend = os.environ.get("M2MPSK_TLS", "boringssl").encode()
    assert r.returncode == 0 and b"(" + backend + b")" in r.stdout, r.stdout


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
                  "absent@onem2m.com"],
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
    assert r.returncode == 2 and b"already holds" in r.stderr, r.stderr
    with open(keys) as f:
        assert len(f.readlines()) == 2


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


@case
def trace_never_shows_key_bytes(tmp):
    keys = os.path.join(tmp, "keys")
    hexkey = keygen(keys, extra=("--print", "hex"))
    r, code, log = associate(tmp, [], server_extra=["-v"],
                             client_extra=["-v"])
    assert r.returncode == 0 and code == 0
    assert b"bytes" in r.stderr and "bytes" in log, log
    for text in (r.stderr.decode(), log):
        assert hexkey not in text and hexkey[:16] not in text


@case
def ipv6_loopback(tmp):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        raise AssertionError("no IPv6 loopback on this machine")
    for transport in ([], ["--udp"]):
        r, code, log = associate(tmp, transport, listen="::1", host="[::1]")
        assert r.returncode == 0 and code == 0, (r.stderr, log)
        assert "peer=[::1]:" in log, log


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
            # handshake); UDP: no answer until the client's timeout.
            assert r.returncode in ((1, 3) if not transport else (1,)), r
            assert r.stdout == b"", (r.stdout, r.stderr)
            # The block lasts 1 s: afterwards the right key works again.
            time.sleep(1.1)
            r = run("connect", "127.0.0.1:%d" % srv.port, *transport,
                    "--keys", keys, "--kpsa-id", KPSA_ID, "--timeout", "5000",
                    stdin=b"later\n")
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
            r, code, log = associate(tmp, transport,
                                     server_extra=["--suites", "ts0003"],
                                     client_extra=["--suites", "ts0003"])
            assert r.returncode == 0 and code == 0, (r.stderr, log)
            assert "suite=%s" % suite in log, log


def http_exchange(proc, pending, req, timeout=10):
    """Writes one request to m2mpsk connect's stdin and reads one whole
    HTTP response from its stdout: (status, headers, body). `pending`
    (a bytearray) keeps what was read beyond it."""
    import select
    if req:
        proc.stdin.write(req)
        proc.stdin.flush()
    deadline = time.monotonic() + timeout
    while True:
        end = pending.find(b"\r\n\r\n")
        if end >= 0:
            lines = pending[:end].decode().split("\r\n")
            headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                           (line.partition(":") for line in lines[1:]))
            n = int(headers.get("content-length", "0"))
            if len(pending) >= end + 4 + n:
                body = bytes(pending[end + 4:end + 4 + n])
                del pending[:end + 4 + n]
                return int(lines[0].split()[1]), headers, body
        left = deadline - time.monotonic()
        assert left > 0, "no whole response within %ds: %r" % (timeout,
                                                                 pending)
        if select.select([proc.stdout], [], [], left)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, "connect's stdout ended: %r" % pending
            pending += chunk


@case
def http_mode_checks_the_originator(tmp):
    """serve --http (the backend's default suites): an AE registers over an
    association bound to its Credential-ID, gets an AE-ID that is bound in
    turn, and a forged From is refused with 4106; malformed input gets 400
    and the association is closed."""
    keys = os.path.join(tmp, "keys")
    keygen(keys, ida=None)
    forged = IDB + "/Cmallory"

    def req(method, origin, ri, body=None):
        head = "%s /cse-in HTTP/1.1\r\nX-M2M-Origin: %s\r\nX-M2M-RI: %s\r\n" \
            "X-M2M-RVI: 3\r\n" % (method, origin, ri)
        if body is not None:
            head += "Content-Type: application/json;ty=2\r\n"
        body = (body or "").encode()
        return (head + "Content-Length: %d\r\n\r\n" % len(body)).encode() \
            + body

    for transport in ([], ["--udp"]):
        srv = Server(keys, *transport, "--http", "--once")
        err = open(os.path.join(tmp, "connect.err"), "w+b")
        cl = subprocess.Popen(
            [M2MPSK, "connect", "127.0.0.1:%d" % srv.port, *transport,
             "--keys", keys, "--kpsa-id", KPSA_ID, "--timeout", "5000"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True)
        try:
            buf = bytearray()
            # Bound to the Credential-ID, only a registration is accepted.
            code, h, body = http_exchange(cl, buf, req("GET", forged, "r0"))
            assert (code, h["x-m2m-rsc"], h["x-m2m-ri"]) == \
                (403, "4106", "r0"), (code, h, body)
            code, h, body = http_exchange(cl, buf, req(
                "POST", "C", "r1",
                '{"m2m:ae":{"rn":"ae1","api":"Napp","rr":false,'
                '"srv":["3"]}}'))
            assert (code, h["x-m2m-rsc"], h["x-m2m-ri"]) == \
                (201, "2001", "r1"), (code, h, body)
            m = re.fullmatch(rb'\{"m2m:ae":\{"aei":"([^"]+)"\}\}', body)
            assert m and m.group(1).startswith((IDB + "/C").encode()), body
            aei = m.group(1).decode()
            code, h, _ = http_exchange(cl, buf, req("GET", aei, "r2"))
            assert (code, h["x-m2m-rsc"], h["x-m2m-ri"]) == \
                (200, "2000", "r2"), (code, h)
            code, h, _ = http_exchange(cl, buf, req("GET", forged, "r3"))
            assert (code, h["x-m2m-rsc"], h["x-m2m-ri"]) == \
                (403, "4106", "r3"), (code, h)
            code, h, _ = http_exchange(cl, buf, b"NOT HTTP\r\n\r\n")
            assert (code, h["x-m2m-rsc"]) == (400, "4000"), (code, h)
            # The server closed the association: connect ends by itself.
            assert cl.wait(timeout=10) == 0
        finally:
            if cl.poll() is None:
                os.killpg(cl.pid, signal.SIGKILL)
                cl.wait(timeout=5)
            err.close()
        code, log = srv.finish()
        log = "".join(log)
        assert code == 0, log
        assert "bound=12-%s credential=1" % KPSA_ID in log, log
        for want in ("from=%s verdict=4106 op=retrieve ri=r0 bound=12-%s "
                     "status=403 rsc=4106" % (forged, KPSA_ID),
                     "from=C verdict=accept op=create ty=2 ri=r1 bound=12-%s "
                     "status=201 rsc=2001 aei=%s bind=ae-id" % (KPSA_ID, aei),
                     "from=%s verdict=accept op=retrieve ri=r2 bound=%s "
                     "status=200" % (aei, aei),
                     "from=%s verdict=4106 op=retrieve ri=r3 bound=%s "
                     "status=403" % (forged, aei),
                     "verdict=none status=400 rsc=4000"):
            assert want in log, (want, log)
    r = run("serve", "--help")
    assert b"--http" in r.stdout, r.stdout


def main():
    passed = failed = 0
    for fn in CASES:
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
