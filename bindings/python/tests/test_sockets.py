"""Real sockets on loopback: Python's own socket carries the bytes between
m2mpsk and OpenSSL, as Entity A to `openssl s_server -psk` and as Entity B
from `openssl s_client -psk`, over TLS (TCP) and DTLS (UDP)."""
import os
import re
import select
import shutil
import socket
import subprocess
import time

import pytest

import m2mpsk
from conftest import IDB, KEY, KPSA_ID, now_ms

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
DEADLINE_S = 20


def openssl(args):
    return subprocess.Popen([OPENSSL] + args, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_until(proc, pattern, timeout=DEADLINE_S):
    """Reads the child's output until `pattern` matches; returns the match."""
    end = time.monotonic() + timeout
    seen = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
            m = re.search(pattern, seen)
            if m:
                return m
    raise AssertionError("no %r from openssl in: %r" % (pattern, seen))


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def drive(assoc, sock, until):
    """Moves bytes between `assoc` and `sock` until `until()` is true, the
    association leaves the handshake with nothing left to send, or the
    deadline passes. Datagram sockets are connected, so send/recv carry
    whole datagrams."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        while True:
            out = assoc.drain()
            if not out:
                break
            sock.send(out)
        if until():
            return
        wait = 0.2
        t = assoc.next_timeout()
        if t is not None:
            wait = max(0.0, min(wait, (t - now_ms()) / 1000))
        r, _, _ = select.select([sock], [], [], wait)
        if r:
            data = sock.recv(17408)
            if not data and sock.type == socket.SOCK_STREAM:
                return
            assoc.feed(data, now_ms())
        else:
            assoc.handle_timeout(now_ms())
    raise AssertionError("timed out in state %d" % assoc.state())


def established(assoc):
    return lambda: assoc.state() != m2mpsk.STATE_HANDSHAKING


def new_assoc(role, transport):
    ks = m2mpsk.Keystore()
    ks.add(KPSA_ID, KEY, None, IDB)
    cfg = m2mpsk.Config()
    if role == m2mpsk.ROLE_RESPONDER:
        cfg.add_local_id(IDB)
        return m2mpsk.Association(role, transport, cfg, ks)
    return m2mpsk.Association(role, transport, cfg, ks, KPSA_ID)


PSK_ARGS = ["-psk", KEY.hex(), "-psk_identity", KPSA_ID, "-cipher", "PSK"]


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
def test_entity_a_to_openssl_s_server(dtls):
    proto = ["-dtls1_2"] if dtls else ["-tls1_2"]
    server = openssl(["s_server", "-nocert", "-accept", "127.0.0.1:0"] + proto + PSK_ARGS)
    try:
        port = int(read_until(server, rb"ACCEPT.*:(\d+)\s").group(1))
        kind = socket.SOCK_DGRAM if dtls else socket.SOCK_STREAM
        transport = m2mpsk.TRANSPORT_DTLS if dtls else m2mpsk.TRANSPORT_TLS
        with socket.socket(socket.AF_INET, kind) as sock, \
                new_assoc(m2mpsk.ROLE_INITIATOR, transport) as a:
            sock.connect(("127.0.0.1", port))
            a.start(now_ms())
            drive(a, sock, established(a))
            assert a.state() == m2mpsk.STATE_ESTABLISHED, a.failure_detail()
            assert a.peer_id() == IDB
            a.write(b"hello from python\n")
            drive(a, sock, lambda: True)
            read_until(server, rb"hello from python")
            server.stdin.write(b"hello from openssl\n")
            server.stdin.flush()
            got = []

            def have_line():
                got.append(a.read())
                return b"\n" in b"".join(got)
            drive(a, sock, have_line)
            assert b"".join(got) == b"hello from openssl\n"
            a.close_notify()
            drive(a, sock, lambda: True)
    finally:
        stop(server)


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
def test_entity_b_from_openssl_s_client(dtls):
    kind = socket.SOCK_DGRAM if dtls else socket.SOCK_STREAM
    transport = m2mpsk.TRANSPORT_DTLS if dtls else m2mpsk.TRANSPORT_TLS
    with socket.socket(socket.AF_INET, kind) as lsock:
        lsock.bind(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        if not dtls:
            lsock.listen(1)
        proto = ["-dtls1_2"] if dtls else ["-tls1_2"]
        client = openssl(["s_client", "-connect", "127.0.0.1:%d" % port] + proto + PSK_ARGS)
        try:
            with new_assoc(m2mpsk.ROLE_RESPONDER, transport) as b:
                b.start(now_ms())
                r, _, _ = select.select([lsock], [], [], DEADLINE_S)
                assert r, "s_client never connected"
                if dtls:
                    first, peer = lsock.recvfrom(17408)
                    lsock.connect(peer)
                    b.feed(first, now_ms())
                    sock = lsock
                else:
                    sock, _ = lsock.accept()
                with sock:
                    drive(b, sock, established(b))
                    assert b.state() == m2mpsk.STATE_ESTABLISHED, b.failure_detail()
                    assert b.peer_id() == "12-" + KPSA_ID and b.peer_id_is_credential()
                    client.stdin.write(b"hello from s_client\n")
                    client.stdin.flush()
                    got = []

                    def have_line():
                        got.append(b.read())
                        return b"\n" in b"".join(got)
                    drive(b, sock, have_line)
                    assert b"".join(got) == b"hello from s_client\n"
                    b.write(b"hello from entity B\n")
                    drive(b, sock, lambda: True)
                    read_until(client, rb"hello from entity B")
        finally:
            stop(client)
