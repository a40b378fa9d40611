"""Run by pip_install.sh with the interpreter of the environment that pip
installed m2mpsk into: proves that the installed package, not a build tree,
is imported, and that both roles handshake through it. Context.wrap_bio
(ssl.MemoryBIO in both directions) and Context.wrap_socket over loopback
TCP, the responder in a thread; each association's bound identities are
checked. Exits non-zero on the first failure."""

import os
import socket
import ssl
import sys
import threading

import m2mpsk

KPSA_ID = "test@onem2m.com"
IDB = "//m2m.example.com/cse-in"
KEY = bytes(range(32))

pkg_dir = os.path.dirname(os.path.realpath(m2mpsk.__file__))
print("interpreter", sys.executable, sys.version.split()[0])
print("m2mpsk", m2mpsk.version_string(), "from", pkg_dir)
# Installed into this environment's site-packages, as a package with its
# extension, hints and PEP 561 marker beside it.
assert pkg_dir.startswith(os.path.realpath(sys.prefix) + os.sep), (pkg_dir, sys.prefix)
assert os.path.basename(m2mpsk.__file__) == "__init__.py", m2mpsk.__file__
assert os.path.dirname(os.path.realpath(m2mpsk._m2mpsk.__file__)) == pkg_dir
for name in ("__init__.pyi", "py.typed"):
    assert os.path.isfile(os.path.join(pkg_dir, name)), name
expected = os.environ.get("M2MPSK_EXPECT_VERSION")
assert expected is None or m2mpsk.version_string() == expected, m2mpsk.version_string()
# The libm2mpsk that pkg-config named at build time, found without
# LD_LIBRARY_PATH (the extension's RUNPATH).
libdir = os.environ.get("M2MPSK_EXPECT_LIBDIR")
if libdir:
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "/libm2mpsk.so" in line}
    print("libm2mpsk:", " ".join(sorted(libs)))
    want = os.path.realpath(libdir) + os.sep
    assert libs and all(os.path.realpath(p).startswith(want) for p in libs), (libs, want)


def contexts():
    ks = m2mpsk.Keystore()
    ks.add(KPSA_ID, KEY, None, IDB)
    srv = m2mpsk.Context(server_side=True, keystore=ks)
    srv.config.add_local_id(IDB)
    cli = m2mpsk.Context(keystore=ks, kpsa_id=KPSA_ID)
    return srv, cli


def over_bio():
    srv, cli = contexts()
    a_in, a_out, b_in, b_out = (ssl.MemoryBIO() for _ in range(4))
    a = cli.wrap_bio(a_in, a_out)
    b = srv.wrap_bio(b_in, b_out)
    done = {a: False, b: False}
    for _ in range(20):
        for obj in (a, b):
            if not done[obj]:
                try:
                    obj.do_handshake()
                    done[obj] = True
                except m2mpsk.WantRead:
                    pass
        b_in.write(a_out.read())
        a_in.write(b_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "wrap_bio: handshake did not complete"
    a.write(b"ping")
    b_in.write(a_out.read())
    assert b.read(4) == b"ping"
    assert a.peer_id() == IDB and b.kpsa_id() == KPSA_ID, (a.peer_id(), b.kpsa_id())
    print("Context.wrap_bio: A bound to %s, B bound to %s, %s"
          % (a.peer_id(), b.peer_id(), a.suite()))
    a.close()
    b.close()


def over_socket():
    srv, cli = contexts()
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        c = socket.create_connection(lsock.getsockname(), timeout=20)
        s, _ = lsock.accept()
    s.settimeout(20)
    got = []
    t = threading.Thread(target=lambda: got.append(srv.wrap_socket(s)), daemon=True)
    t.start()
    with cli.wrap_socket(c) as pc:
        t.join(20)
        assert got, "wrap_socket: the responder did not complete"
        with got[0] as ps:
            pc.sendall(b"ping")
            assert ps.recv(4) == b"ping"
            ps.sendall(b"pong")
            assert pc.recv(4) == b"pong"
            assert pc.peer_id() == IDB and ps.kpsa_id() == KPSA_ID
            print("Context.wrap_socket: A bound to %s, B bound to %s"
                  % (pc.peer_id(), ps.peer_id()))


over_bio()
over_socket()
print("ok")
