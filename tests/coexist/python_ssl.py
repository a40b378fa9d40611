#!/usr/bin/env python3
"""Python's ssl module (OpenSSL 3) in use, then libm2mpsk loaded with
ctypes in the same process: both roles complete a handshake, and ssl still
works afterwards. Usage: python_ssl.py PATH/TO/libm2mpsk.so"""
import ctypes
import ssl
import sys


def openssl_client_hello():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="example.com")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return len(outgoing.read())


hello = openssl_client_hello()
assert hello > 0
print("%s: ClientHello of %d bytes" % (ssl.OPENSSL_VERSION, hello))

lib = ctypes.CDLL(sys.argv[1])
vp = ctypes.c_void_p
lib.m2mpsk_backend_name.restype = ctypes.c_char_p
lib.m2mpsk_backend_error.restype = ctypes.c_char_p
lib.m2mpsk_assoc_peer_id.restype = ctypes.c_char_p
lib.m2mpsk_assoc_peer_id.argtypes = [vp]
lib.m2mpsk_assoc_failure_detail.restype = ctypes.c_char_p
lib.m2mpsk_assoc_failure_detail.argtypes = [vp]
lib.m2mpsk_assoc_state.argtypes = [vp]
lib.m2mpsk_keystore_add.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p,
                                    ctypes.c_size_t, ctypes.c_char_p,
                                    ctypes.c_char_p, ctypes.c_int64,
                                    ctypes.c_int64]
lib.m2mpsk_config_add_local_id.argtypes = [vp, ctypes.c_char_p]
lib.m2mpsk_assoc_new.argtypes = [ctypes.POINTER(vp), ctypes.c_int,
                                 ctypes.c_int, vp, vp, ctypes.c_char_p]
lib.m2mpsk_assoc_start.argtypes = [vp, ctypes.c_uint64, ctypes.c_int64]
lib.m2mpsk_assoc_drain.argtypes = [vp, ctypes.c_char_p, ctypes.c_size_t,
                                   ctypes.POINTER(ctypes.c_size_t)]
lib.m2mpsk_assoc_feed.argtypes = [vp, ctypes.c_char_p, ctypes.c_size_t,
                                  ctypes.c_uint64]
for name in ("m2mpsk_assoc_free", "m2mpsk_config_free",
             "m2mpsk_keystore_free"):
    getattr(lib, name).argtypes = [vp]
    getattr(lib, name).restype = None


def check(rc, what):
    if rc != 0:
        raise SystemExit("FAIL %s: %d (backend %s %s)" % (
            what, rc, lib.m2mpsk_backend_name(), lib.m2mpsk_backend_error()))


for transport in (0, 1):
    ks, ca, cb, a, b = vp(), vp(), vp(), vp(), vp()
    check(lib.m2mpsk_keystore_new(ctypes.byref(ks), 0), "keystore_new")
    check(lib.m2mpsk_keystore_add(ks, b"test@onem2m.com", bytes(range(32)),
                                  32, None, b"//m2m.example.com/cse-in", 0,
                                  0), "keystore_add")
    check(lib.m2mpsk_config_new(ctypes.byref(ca)), "config_new")
    check(lib.m2mpsk_config_new(ctypes.byref(cb)), "config_new")
    check(lib.m2mpsk_config_add_local_id(cb, b"//m2m.example.com/cse-in"),
          "add_local_id")
    check(lib.m2mpsk_assoc_new(ctypes.byref(a), 0, transport, ca, ks,
                               b"test@onem2m.com"), "assoc_new A")
    check(lib.m2mpsk_assoc_new(ctypes.byref(b), 1, transport, cb, ks, None),
          "assoc_new B")
    check(lib.m2mpsk_assoc_start(b, 1000, 0), "start B")
    check(lib.m2mpsk_assoc_start(a, 1000, 0), "start A")
    buf = ctypes.create_string_buffer(17408)
    n = ctypes.c_size_t()
    for _ in range(20):
        moved = False
        for src, dst in ((a, b), (b, a)):
            while lib.m2mpsk_assoc_drain(src, buf, len(buf),
                                         ctypes.byref(n)) == 0:
                lib.m2mpsk_assoc_feed(dst, buf, n.value, 1000)
                moved = True
        if not moved:
            break
    sa, sb = lib.m2mpsk_assoc_state(a), lib.m2mpsk_assoc_state(b)
    if sa != 2 or sb != 2:
        raise SystemExit("FAIL handshake: %s / %s" % (
            lib.m2mpsk_assoc_failure_detail(a),
            lib.m2mpsk_assoc_failure_detail(b)))
    print("m2mpsk %s (backend %s): A bound %s, B bound %s" % (
        "DTLS" if transport else "TLS", lib.m2mpsk_backend_name().decode(),
        lib.m2mpsk_assoc_peer_id(a).decode(),
        lib.m2mpsk_assoc_peer_id(b).decode()))
    assert lib.m2mpsk_assoc_peer_id(b) == b"12-test@onem2m.com"
    for h, f in ((a, "m2mpsk_assoc_free"), (b, "m2mpsk_assoc_free"),
                 (ca, "m2mpsk_config_free"), (cb, "m2mpsk_config_free"),
                 (ks, "m2mpsk_keystore_free")):
        getattr(lib, f)(h)

assert openssl_client_hello() == hello
print("ssl still works after m2mpsk")
