"""Key sources (since 0.4): a keystore that starts without the record asks
its source, once per KpsaID, while the handshakes that need it wait
(STATE_WAITING_KEY). The low-level API (Keystore.set_source_queue(),
next_request(), KeyRequest, Association.key_request()/resume()), then the
asyncio layers (TLS through asyncio's own streams, DTLS through
create_dtls_server()/create_dtls_connection()) with an `async def` source,
and a blocking PSKSocket with a plain one. Every test is bounded by one
asyncio.wait_for() (or socket timeouts); the sleeps are the source's
simulated lookup time."""
import asyncio
import collections
import logging
import socket
import threading

import pytest

import m2mpsk
from conftest import IDB, KEY, KPSA_ID, now_ms, pump, raises

T = 10  # seconds: the bound of each test's event loop
TLS = m2mpsk.TRANSPORT_TLS
DTLS = m2mpsk.TRANSPORT_DTLS
SNI = "m2m.example.com"  # what an initiator sends for IDB


def run(coro, timeout=T):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def kid(i):
    return "dev%d@onem2m.com" % i


def configs(timeout_ms=None):
    ca = m2mpsk.Config()
    cb = m2mpsk.Config()
    cb.add_local_id(IDB)
    if timeout_ms is not None:
        cb.set_handshake_timeout(timeout_ms)
    return ca, cb


# ---- the low-level API -------------------------------------------------------


def test_responder_waits_then_resumes_once_supplied():
    ks_a = m2mpsk.Keystore()
    ks_a.add(KPSA_ID, KEY, None, IDB)
    ks_b = m2mpsk.Keystore()
    ks_b.set_source_queue(4)
    assert ks_b.next_request() is None  # nothing asked yet: not an error
    ca, cb = configs()
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks_a, KPSA_ID)
    b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, TLS, cb, ks_b)
    a.start(now_ms())
    b.start(now_ms())
    assert b.key_request() is None  # not waiting yet
    pump(a, b)
    assert b.state() == m2mpsk.STATE_WAITING_KEY
    assert a.state() == m2mpsk.STATE_HANDSHAKING

    with ks_b.next_request() as req:
        assert ks_b.next_request() is None  # handed out once
        assert req.kpsa_id() == KPSA_ID
        assert req.server_name() == SNI
        assert req.role() == m2mpsk.ROLE_RESPONDER
        assert not req.answered()
        mine = b.key_request()
        assert mine is not None and mine.kpsa_id() == KPSA_ID and not mine.answered()
        b.resume(now_ms())  # still open: nothing happens
        assert b.state() == m2mpsk.STATE_WAITING_KEY and not b.drain()
        key = bytearray(KEY)
        req.supply(key, None, IDB)
        assert req.answered() and mine.answered()
        raises(m2mpsk.E_STATE, req.supply, KEY, None, IDB)  # answered already
        raises(m2mpsk.E_STATE, req.absent)
        mine.close()
    assert ks_b.lookup(KPSA_ID).idb == IDB and len(ks_b) == 1
    b.resume(now_ms())
    pump(a, b)
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED
    assert b.peer_id() == "12-" + KPSA_ID
    raises(m2mpsk.E_STATE, b.resume, now_ms())  # not waiting any more
    assert b.key_request() is None
    for x in (a, b, ks_a, ks_b):
        x.close()


def waiting_responder():
    """(ks_a, ks_b, config_a, a, b): a TLS responder waiting on its queued
    source for KPSA_ID, which its initiator holds."""
    ks_a = m2mpsk.Keystore()
    ks_a.add(KPSA_ID, KEY, None, IDB)
    ks_b = m2mpsk.Keystore()
    ks_b.set_source_queue(4)
    ca, cb = configs()
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks_a, KPSA_ID)
    b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, TLS, cb, ks_b)
    a.start(now_ms())
    b.start(now_ms())
    pump(a, b)
    return ks_a, ks_b, ca, a, b


def test_absent_fails_the_responder_like_an_unknown_identity():
    ks_a, ks_b, ca, a, b = waiting_responder()
    req = ks_b.next_request()
    req.absent()
    req.close()
    try:
        b.resume(now_ms())
    except m2mpsk.Failed:
        pass
    pump(a, b)
    assert b.state() == m2mpsk.STATE_FAILED
    # on the wire: a wrong key, as for any unknown identity
    assert a.state() == m2mpsk.STATE_FAILED and a.failure() == m2mpsk.REASON_BAD_KEY
    assert len(ks_b) == 0
    for x in (a, b):
        x.close()


def test_initiator_waits_for_its_own_key():
    ks_a = m2mpsk.Keystore()
    ks_a.set_source_queue(4)
    ks_b = m2mpsk.Keystore()
    ks_b.add(KPSA_ID, KEY, None, IDB)
    ca, cb = configs()
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks_a, KPSA_ID)
    a.start(now_ms())
    assert a.state() == m2mpsk.STATE_WAITING_KEY and not a.drain()
    req = ks_a.next_request()
    assert req.role() == m2mpsk.ROLE_INITIATOR and req.server_name() is None
    req.supply(KEY, None, IDB)
    req.close()
    a.resume(now_ms())
    b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, TLS, cb, ks_b)
    b.start(now_ms())
    pump(a, b)
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED
    # absent for an initiator: resume() fails it
    c = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks_a, kid(9))
    c.start(now_ms())
    r2 = ks_a.next_request()
    r2.absent()
    r2.close()
    raises(m2mpsk.E_FAILED, c.resume, now_ms(), cls=m2mpsk.Failed,
           reason=m2mpsk.REASON_UNKNOWN_IDENTITY)
    for x in (a, b, c):
        x.close()


def test_one_request_per_kpsa_id_and_max_pending():
    ks_b = m2mpsk.Keystore()
    ks_b.set_source_queue(2)
    ks_a = m2mpsk.Keystore()
    for i in range(3):
        ks_a.add(kid(i), KEY, None, IDB)
    ca, cb = configs()
    made = []

    def client(i):
        a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks_a, kid(i))
        b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, TLS, cb, ks_b)
        a.start(now_ms())
        b.start(now_ms())
        pump(a, b)
        made.extend((a, b))
        return a, b

    pairs = [client(0), client(0), client(1)]
    assert all(b.state() == m2mpsk.STATE_WAITING_KEY for _, b in pairs)
    reqs = [ks_b.next_request(), ks_b.next_request()]
    assert ks_b.next_request() is None
    assert sorted(r.kpsa_id() for r in reqs) == [kid(0), kid(1)]
    # a third KpsaID is past max_pending: no request, treated as absent
    a3, b3 = client(2)
    assert b3.state() == m2mpsk.STATE_FAILED and ks_b.next_request() is None
    for r in reqs:
        r.supply(KEY, None, IDB)
        r.close()
    for a, b in pairs:
        b.resume(now_ms())
        pump(a, b)
        assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED
    # turning the source off: a new unknown KpsaID fails at once
    ks_b.set_source_queue(0)
    ks_b.remove(kid(1))
    _, b4 = client(1)
    assert b4.state() == m2mpsk.STATE_FAILED
    for x in made:
        x.close()


def test_errors_of_the_new_calls():
    ks = m2mpsk.Keystore()
    raises(m2mpsk.E_INVALID, ks.set_source_queue, -1)
    raises(m2mpsk.E_INVALID, ks.put, KPSA_ID, None, None, IDB)
    raises(m2mpsk.E_KEY_LENGTH, ks.put, KPSA_ID, b"short", None, IDB)
    raises(m2mpsk.E_KPSA_ID, ks.put, "no-at-sign", KEY, None, IDB)
    ks.put(KPSA_ID, KEY, None, IDB)
    ks.put(KPSA_ID, KEY, None, IDB)  # the same again: no E_DUPLICATE
    ks.put(KPSA_ID, KEY, None, IDB, 0, 4102444800)
    assert ks.lookup(KPSA_ID).not_after == 4102444800
    with pytest.raises(AttributeError):
        m2mpsk.KeyRequest()  # only next_request() and key_request() make one
    ks.set_source_queue(1)
    ca, _ = configs()
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks, kid(1))
    a.start(now_ms())
    req = ks.next_request()
    raises(m2mpsk.E_INVALID, req.supply, None, None, IDB)
    raises(m2mpsk.E_KEY_LENGTH, req.supply, b"short", None, IDB)
    assert not req.answered()  # a refused record leaves it open
    raises(m2mpsk.E_IDB, req.supply, KEY, None, "not an idb")
    req.close()
    req.close()  # again: nothing
    raises(m2mpsk.E_INVALID, req.kpsa_id)
    raises(m2mpsk.E_INVALID, req.absent)
    a.close()
    raises(m2mpsk.E_INVALID, a.resume, now_ms())
    raises(m2mpsk.E_INVALID, a.key_request)
    ks.close()
    raises(m2mpsk.E_INVALID, ks.next_request)
    raises(m2mpsk.E_INVALID, ks.set_source_queue, 1)
    raises(m2mpsk.E_INVALID, m2mpsk.Keystore().set_key_source, lambda k, s: None, 0)


# ---- asyncio -------------------------------------------------------------------


class Source:
    """An async source holding records by KpsaID, answering after `delay`;
    counts its calls by KpsaID."""

    def __init__(self, records=(KPSA_ID,), delay=0.05, key=KEY, once=False):
        self.records = set(records)
        self.once = once
        self.delay = delay
        self.key = key
        self.calls = collections.Counter()
        self.sni = []
        self.given = []

    async def __call__(self, kpsa_id, server_name):
        self.calls[kpsa_id] += 1
        self.sni.append(server_name)
        await asyncio.sleep(self.delay)
        if kpsa_id not in self.records:
            return None
        k = bytearray(self.key)
        self.given.append(k)
        return m2mpsk.KeyRecord(k, None, IDB, once=self.once)


def contexts(source, records=(KPSA_ID,), server_timeout_ms=None, initiator_source=None):
    """(client, server): the client holds `records`, the server none and
    asks `source` (or the reverse with initiator_source)."""
    ks_a = m2mpsk.Keystore()
    ks_b = m2mpsk.Keystore()
    for k in records:
        (ks_b if initiator_source else ks_a).add(k, KEY, None, IDB)
    if source is not None:
        ks_b.set_key_source(source, max_pending=16)
    if initiator_source is not None:
        ks_a.set_key_source(initiator_source, max_pending=16)
    srv = m2mpsk.Context(server_side=True, keystore=ks_b)
    srv.config.add_local_id(IDB)
    if server_timeout_ms is not None:
        srv.config.set_handshake_timeout(server_timeout_ms)
    cli = m2mpsk.Context(keystore=ks_a, kpsa_id=records[0])
    return cli, srv


class Recording(m2mpsk.Context):
    """A server Context that keeps the PSKObjects asyncio makes."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.made = []

    def wrap_bio(self, *args, **kw):
        o = super().wrap_bio(*args, **kw)
        self.made.append(o)
        return o


async def echo(reader, writer):
    line = await reader.readline()
    writer.write(line.upper())
    await writer.drain()
    writer.close()


async def tls_exchange(port, cli, kpsa_id=None):
    ctx = cli if kpsa_id is None else _with_kpsa(cli, kpsa_id)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=SNI)
    writer.write(b"ping\n")
    await writer.drain()
    got = await reader.readline()
    writer.close()
    return got


def _with_kpsa(cli, kpsa_id):
    return m2mpsk.Context(keystore=cli.keystore, config=cli.config, kpsa_id=kpsa_id)


def test_tls_server_source_answers_after_50ms():
    src = Source()

    async def main():
        cli, srv = contexts(src)
        assert len(srv.keystore) == 0
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            assert await tls_exchange(port, cli) == b"PING\n"
            assert srv.keystore.lookup(KPSA_ID).idb == IDB
            # the record is held now: the next handshake asks nothing
            assert await tls_exchange(port, cli) == b"PING\n"

    run(main())
    assert src.calls == {KPSA_ID: 1} and src.sni == [SNI]
    assert src.given[0] == bytearray(len(KEY))  # wiped once supplied


def test_tls_server_source_answers_once():
    src = Source(once=True)

    async def main():
        cli, srv = contexts(src)
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            assert await tls_exchange(port, cli) == b"PING\n"
            # not kept: the next handshake asks again
            assert len(srv.keystore) == 0
            assert await tls_exchange(port, cli) == b"PING\n"
            assert len(srv.keystore) == 0

    run(main())
    assert src.calls == {KPSA_ID: 2}
    assert all(k == bytearray(len(KEY)) for k in src.given)  # wiped
    assert "once=True" in repr(m2mpsk.KeyRecord(KEY, None, IDB, once=True))


def test_supply_once_low_level():
    ks_a, ks_b, ca, a, b = waiting_responder()
    assert b.state() == m2mpsk.STATE_WAITING_KEY
    with ks_b.next_request() as req:
        raises(m2mpsk.E_KEY_LENGTH, req.supply_once, KEY[:3], None, IDB)
        raises(m2mpsk.E_IDB, req.supply_once, KEY, None, "/cse/C1")
        assert not req.answered()  # errors leave it open
        req.supply_once(KEY, None, IDB)
        assert req.answered()
        raises(m2mpsk.E_STATE, req.supply_once, KEY, None, IDB)
    assert len(ks_b) == 0
    b.resume(now_ms())
    pump(a, b)
    assert a.state() == b.state() == m2mpsk.STATE_ESTABLISHED
    assert b.peer_id() == "12-" + KPSA_ID
    # an initiator's request: initiators keep their records
    ks_c = m2mpsk.Keystore()
    ks_c.set_source_queue(4)
    c = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks_c, KPSA_ID)
    c.start(now_ms())
    with ks_c.next_request() as req:
        raises(m2mpsk.E_INVALID, req.supply_once, KEY, None, IDB)
        assert not req.answered()
    for x in (a, b, c, ks_a, ks_b, ks_c):
        x.close()


def test_tls_many_clients_same_and_different_kpsa_ids():
    ids = [kid(i) for i in range(4)]
    src = Source(records=ids, delay=0.05)

    async def main():
        cli, srv = contexts(src, records=ids)
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            got = await asyncio.gather(*[tls_exchange(port, cli, k)
                                         for k in ids for _ in range(5)])
        assert got == [b"PING\n"] * 20

    run(main())
    assert src.calls == {k: 1 for k in ids}


def test_tls_absent_fails_like_a_wrong_key():
    src = Source(records=())

    async def main():
        cli, _ = contexts(src)
        srv = Recording(server_side=True, keystore=m2mpsk.Keystore())
        srv.keystore.set_key_source(src)
        srv.config.add_local_id(IDB)
        called = []
        server = await asyncio.start_server(lambda r, w: called.append(w), "127.0.0.1", 0,
                                            ssl=srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            # asyncio drops the server's alert, as it does with ssl
            with pytest.raises((ConnectionResetError, m2mpsk.HandshakeFailed)):
                await asyncio.open_connection("127.0.0.1", port, ssl=cli)
        assert not called
        a = srv.made[0].association
        assert a.state() == m2mpsk.STATE_FAILED
        assert a.failure() in (m2mpsk.REASON_UNKNOWN_IDENTITY, m2mpsk.REASON_BAD_KEY)

    run(main())
    assert src.calls == {KPSA_ID: 1}


def test_tls_initiator_source():
    src = Source(delay=0.05)

    async def main():
        cli, srv = contexts(None, initiator_source=src)
        assert len(cli.keystore) == 0
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            assert await tls_exchange(port, cli) == b"PING\n"

    run(main())
    assert src.calls == {KPSA_ID: 1} and src.sni == [None]


def test_tls_source_that_never_answers_meets_the_handshake_timeout():
    async def main():
        never = asyncio.Event()
        calls = []

        async def source(kpsa_id, server_name):
            calls.append(kpsa_id)
            await never.wait()

        cli, _ = contexts(None)
        srv = Recording(server_side=True, keystore=m2mpsk.Keystore())
        srv.keystore.set_key_source(source)
        srv.config.add_local_id(IDB)
        srv.config.set_handshake_timeout(300)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            t0 = asyncio.get_running_loop().time()
            with pytest.raises((ConnectionResetError, m2mpsk.HandshakeFailed, OSError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=cli)
            assert 0.25 <= asyncio.get_running_loop().time() - t0 < 5
        a = srv.made[0].association
        assert a.state() == m2mpsk.STATE_FAILED and a.failure() == m2mpsk.REASON_TIMEOUT
        assert calls == [KPSA_ID]

    run(main())


def test_tls_source_exception_is_absent_and_logged_without_the_key(caplog):
    secret = KEY.hex()

    async def source(kpsa_id, server_name):
        raise ValueError("lookup failed near " + secret)

    async def main():
        cli, srv = contexts(source)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises((ConnectionResetError, m2mpsk.HandshakeFailed)):
                await asyncio.open_connection("127.0.0.1", port, ssl=cli)
        assert len(srv.keystore) == 0

    with caplog.at_level(logging.WARNING, logger="m2mpsk.keysource"):
        run(main())
    logged = [r.getMessage() for r in caplog.records if r.name == "m2mpsk.keysource"]
    assert logged and "ValueError" in logged[0] and KPSA_ID in logged[0]
    assert all(secret not in m for m in logged)


class Peer(asyncio.DatagramProtocol):
    """A DTLS protocol that echoes in upper case (server) or queues (client)."""

    def __init__(self, echo=False):
        self.echo = echo
        self.transport = None
        self.queue = asyncio.Queue()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.echo:
            self.transport.write(data.upper())
        else:
            self.queue.put_nowait(data)


async def dtls_exchange(addr, cli, kpsa_id=None):
    ctx = cli if kpsa_id is None else _with_kpsa(cli, kpsa_id)
    t, p = await m2mpsk.create_dtls_connection(ctx, Peer, addr)
    try:
        t.write(b"ping")
        return await p.queue.get()
    finally:
        t.close()


def test_dtls_server_source_many_clients():
    ids = [kid(i) for i in range(3)]
    src = Source(records=ids, delay=0.05)

    async def main():
        cli, srv = contexts(src, records=ids)
        async with await m2mpsk.create_dtls_server(srv, lambda: Peer(echo=True),
                                                   ("127.0.0.1", 0)) as server:
            got = await asyncio.gather(*[dtls_exchange(server.sockname, cli, k)
                                         for k in ids for _ in range(4)])
        assert got == [b"PING"] * 12

    run(main())
    assert src.calls == {k: 1 for k in ids}
    assert set(src.sni) == {SNI}


def test_dtls_absent_and_initiator_source():
    absent = Source(records=())
    mine = Source()

    async def main():
        cli, srv = contexts(absent)
        async with await m2mpsk.create_dtls_server(srv, lambda: Peer(echo=True),
                                                   ("127.0.0.1", 0),
                                                   handshake_timeout=2.0) as server:
            with pytest.raises((m2mpsk.HandshakeFailed, TimeoutError)) as e:
                await m2mpsk.create_dtls_connection(cli, Peer, server.sockname,
                                                    handshake_timeout=3.0)
            if isinstance(e.value, m2mpsk.HandshakeFailed):
                assert e.value.reason == m2mpsk.REASON_BAD_KEY, str(e.value)
            assert server.peer_count() == 0
        cli2, srv2 = contexts(None, initiator_source=mine)
        async with await m2mpsk.create_dtls_server(srv2, lambda: Peer(echo=True),
                                                   ("127.0.0.1", 0)) as server:
            assert await dtls_exchange(server.sockname, cli2) == b"PING"

    run(main())
    assert absent.calls == {KPSA_ID: 1} and mine.calls == {KPSA_ID: 1}


def test_dtls_source_that_never_answers_meets_the_handshake_timeout():
    async def main():
        never = asyncio.Event()

        async def source(kpsa_id, server_name):
            await never.wait()

        cli, srv = contexts(source)
        async with await m2mpsk.create_dtls_server(srv, Peer, ("127.0.0.1", 0),
                                                   handshake_timeout=0.3) as server:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises((TimeoutError, m2mpsk.HandshakeFailed)):
                await m2mpsk.create_dtls_connection(cli, Peer, server.sockname,
                                                    handshake_timeout=1.5)
            assert server.peer_count() == 0
            assert loop.time() - t0 < 5

    run(main())


# ---- blocking sockets ------------------------------------------------------------


def test_blocking_socket_with_a_plain_source_and_an_async_one():
    calls = []

    def plain(kpsa_id, server_name):
        calls.append((kpsa_id, server_name))
        return m2mpsk.KeyRecord(bytearray(KEY), None, IDB)

    async def coro(kpsa_id, server_name):
        return m2mpsk.KeyRecord(KEY, None, IDB)

    for source, ok in ((plain, True), (coro, False)):
        cli, srv = contexts(source)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(T)
        result = []

        def serve():
            conn, _ = lsock.accept()
            conn.settimeout(T)
            try:
                with srv.wrap_socket(conn) as s:
                    s.sendall(s.recv(100).upper())
                    result.append("ok")
            except m2mpsk.Failed as e:
                result.append(e)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        c = socket.create_connection(lsock.getsockname(), timeout=T)
        try:
            with cli.wrap_socket(c) as s:
                s.sendall(b"ping")
                got = s.recv(100)
        except (m2mpsk.Failed, OSError) as e:
            got = e
        t.join(T)
        lsock.close()
        if ok:
            assert got == b"PING" and result == ["ok"]
        else:
            # an async source needs asyncio: answered as absent, logged
            assert isinstance(result[0], m2mpsk.Failed) and not isinstance(got, bytes)
    assert calls == [(KPSA_ID, SNI)]


def test_removing_the_source_answers_waiting_requests():
    ks_a = m2mpsk.Keystore()
    ks_a.add(KPSA_ID, KEY, None, IDB)
    ks_b = m2mpsk.Keystore()
    ks_b.set_source_queue(4)
    ca, cb = configs()
    a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, TLS, ca, ks_a, KPSA_ID)
    b = m2mpsk.Association(m2mpsk.ROLE_RESPONDER, TLS, cb, ks_b)
    a.start(now_ms())
    b.start(now_ms())
    pump(a, b)
    mine = b.key_request()
    assert not mine.answered()
    ks_b.set_source_queue(0)
    assert mine.answered()
    mine.close()
    for x in (a, b):
        x.close()
