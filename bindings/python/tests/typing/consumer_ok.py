"""A typed consumer of m2mpsk: `mypy --strict` must accept it (ctest
python_typing_consumer). It is only type-checked, never run."""

import socket
import ssl
from typing import Optional

import m2mpsk

IDB = "//m2m.example.com/cse-in"


def server_context(key: bytes) -> m2mpsk.Context:
    ks = m2mpsk.Keystore()
    ks.add("test@onem2m.com", key, None, IDB)
    ctx = m2mpsk.Context(server_side=True, keystore=ks)
    ctx.config.add_local_id(IDB)
    return ctx


def serve_one(ctx: m2mpsk.Context, listener: socket.socket) -> Optional[str]:
    conn, _ = listener.accept()
    with ctx.wrap_socket(conn) as tls:
        data: bytes = tls.recv(1024)
        tls.sendall(data)
        if tls.originator_check(IDB + "/Cae1") != m2mpsk.ORIGINATOR_ACCEPT:
            return None
        return tls.peer_id()


def client(key: bytes, addr: tuple[str, int]) -> int:
    ks = m2mpsk.Keystore()
    ks.add("test@onem2m.com", key, None, IDB)
    ctx = m2mpsk.Context(keystore=ks, kpsa_id="test@onem2m.com")
    sock = socket.create_connection(addr, timeout=5)
    tls: socket.socket = ctx.wrap_socket(sock)  # a PSKSocket is a socket
    with tls:
        return tls.send(b"hello")


def in_memory(ctx: m2mpsk.Context) -> Optional[str]:
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:  # m2mpsk.WantRead is one
        return None
    except m2mpsk.Failed as e:
        return "failed: %s (%d)" % (e.reason_name, e.code)
    return obj.suite()


async def lookup(kpsa_id: str, server_name: Optional[str]) -> Optional[m2mpsk.KeyRecord]:
    if not kpsa_id.endswith("@onem2m.com"):
        return None
    return m2mpsk.KeyRecord(bytearray(32), None, IDB)


def plain_lookup(kpsa_id: str, server_name: Optional[str]) -> Optional[m2mpsk.KeyRecord]:
    return None


def key_sources(ks: m2mpsk.Keystore) -> Optional[str]:
    ks.set_key_source(lookup, max_pending=16)  # an asyncio source
    ks.set_key_source(plain_lookup)  # a blocking one
    ks.set_key_source(None)
    ks.set_source_queue(4)
    req = ks.next_request()
    if req is None:
        return None
    kid = req.kpsa_id()
    with req:
        req.supply(bytes(32), None, IDB)
    return kid
