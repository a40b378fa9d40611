"""asyncio: TLS through asyncio's own open_connection()/start_server() with
a Context as ssl=, and DTLS through create_dtls_server() and
create_dtls_connection(), on 127.0.0.1. Every test runs under one
asyncio.wait_for() bound; nothing sleeps to synchronise except where time
is what is tested (idle timeout, retransmission)."""
import asyncio
import os
import socket
import ssl
import threading
import time

import pytest

import m2mpsk
from conftest import IDB, KEY, KPSA_ID

T = 10  # seconds: the bound of each test's event loop
DTLS = m2mpsk.TRANSPORT_DTLS


def run(coro, timeout=T):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# The engines this process loads: the tests whose behaviour depends on the
# engine run on each (BoringSSL's DTLS has no cookie exchange).
ENGINES = [pytest.param(e, id=m2mpsk.engine_name(e))
           for e in (m2mpsk.ENGINE_BORINGSSL, m2mpsk.ENGINE_OPENSSL)
           if m2mpsk.engine_available(e)]


def contexts(key_b=KEY, records=((KPSA_ID, None),), engine=m2mpsk.ENGINE_AUTO):
    """(client context, server context) over the same records (KpsaID,
    IdA), both on `engine`; the server's key can differ, to make a
    handshake fail."""
    ks_a = m2mpsk.Keystore()
    ks_b = m2mpsk.Keystore()
    for kid, ida in records:
        ks_a.add(kid, KEY, ida, IDB)
        ks_b.add(kid, key_b, ida, IDB)
    srv = m2mpsk.Context(server_side=True, keystore=ks_b)
    srv.config.add_local_id(IDB)
    cli = m2mpsk.Context(keystore=ks_a, kpsa_id=records[0][0])
    for c in (cli, srv):
        c.config.set_engine(engine)
    return cli, srv


def has_cookies(engine):
    """Whether a DTLS server on `engine` answers with cookies: OpenSSL does,
    and AUTO runs DTLS responders on it when it loads."""
    if engine == m2mpsk.ENGINE_AUTO:
        engine = m2mpsk.ENGINE_OPENSSL
    return engine == m2mpsk.ENGINE_OPENSSL and m2mpsk.engine_available(engine)


async def tls_server(srv_ctx, handle, **kw):
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=srv_ctx, **kw)
    return server, server.sockets[0].getsockname()[1]


# TLS


@pytest.mark.parametrize("engine", ENGINES)
def test_tls_echo_identity_and_originator_check(engine):
    async def main():
        cli, srv = contexts(engine=engine)
        seen = {}

        async def handle(reader, writer):
            o = writer.get_extra_info("ssl_object")
            seen.update(obj=o, peer=o.peer_id(), cred=o.credential(), kid=o.kpsa_id(),
                        forged=o.originator_check("/cse-in/Cae1"),
                        create=o.originator_check(None, m2mpsk.ORIGINATOR_AE_CREATE),
                        cipher=writer.get_extra_info("cipher"),
                        peername=writer.get_extra_info("peername"))
            line = await reader.readline()
            writer.write(line.upper())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server, port = await tls_server(srv, handle)
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=cli, server_hostname="m2m.example.com")
            o = writer.get_extra_info("ssl_object")
            assert isinstance(o, m2mpsk.PSKObject) and not o.server_side
            assert o.peer_id() == IDB and not o.credential() and o.kpsa_id() == KPSA_ID
            assert o.server_hostname == "m2m.example.com"
            assert o.compression() is None and o.selected_alpn_protocol() is None
            assert o.shared_ciphers() is None and o.version() == "TLSv1.2"
            assert o.engine() == engine
            assert writer.get_extra_info("sslcontext") is cli
            writer.write(b"hello over psk\n")
            await writer.drain()
            assert await reader.readline() == b"HELLO OVER PSK\n"
            assert await reader.read() == b""  # the server's close_notify
            writer.close()
            await writer.wait_closed()
        assert isinstance(seen["obj"], m2mpsk.PSKObject) and seen["obj"].server_side
        assert seen["peer"] == "12-" + KPSA_ID and seen["cred"] and seen["kid"] == KPSA_ID
        assert seen["forged"] == m2mpsk.ORIGINATOR_NOT_AUTHENTICATED == 4106
        assert seen["create"] == m2mpsk.ORIGINATOR_ACCEPT
        assert seen["cipher"][0] in m2mpsk.suites()
        assert seen["peername"][0] == "127.0.0.1"

    run(main())


def test_tls_wrong_key_raises_handshake_failed():
    """The asyncio client reads the alert of a server that sends it (a
    threaded PSKSocket) as HandshakeFailed; an asyncio server's association
    fails with REASON_BAD_KEY (asyncio drops the alert, as it does with
    ssl, so its client sees the connection end)."""
    cli, srv = contexts(key_b=bytes(32))
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(T)
    failures = []

    def serve():
        conn, _ = lsock.accept()
        conn.settimeout(T)
        try:
            srv.wrap_socket(conn)
        except m2mpsk.Failed as e:
            failures.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def against_thread():
        with pytest.raises(m2mpsk.HandshakeFailed) as e:
            await asyncio.open_connection(*lsock.getsockname(), ssl=cli)
        return e.value

    e = run(against_thread())
    t.join(T)
    lsock.close()
    assert isinstance(e, ssl.SSLError) and isinstance(e, m2mpsk.Failed)
    assert e.code == m2mpsk.E_FAILED and e.reason == m2mpsk.REASON_BAD_KEY, str(e)
    assert KEY.hex() not in str(e) and bytes(32).hex() not in str(e)
    assert failures and failures[0].reason == m2mpsk.REASON_BAD_KEY

    class Recording(m2mpsk.Context):
        made = []

        def wrap_bio(self, *args, **kw):
            o = super().wrap_bio(*args, **kw)
            self.made.append(o)
            return o

    cfg = m2mpsk.Config()
    cfg.add_local_id(IDB)
    cfg.set_event_queue(8)
    rec = Recording(server_side=True, keystore=srv.keystore, config=cfg)

    async def against_asyncio():
        called = []
        server, port = await tls_server(rec, lambda r, w: called.append(w))
        async with server:
            # asyncio drops the server's alert, as it does with ssl
            with pytest.raises(ConnectionResetError):
                await asyncio.open_connection("127.0.0.1", port, ssl=cli)
        assert not called  # the callback never sees a failed handshake

    run(against_asyncio())
    a = rec.made[0].association
    assert a.state() == m2mpsk.STATE_FAILED and a.failure() == m2mpsk.REASON_BAD_KEY
    # what the server learns of it: the audit event
    ev = cfg.next_event()
    assert ev.type() == m2mpsk.EVENT_FAILED and ev.reason() == m2mpsk.REASON_BAD_KEY
    assert ev.kpsa_id() == KPSA_ID


def test_tls_ssl_handshake_timeout_bounds_a_silent_client():
    async def main():
        _, srv = contexts()
        called = []
        server, port = await tls_server(srv, lambda r, w: called.append(w),
                                        ssl_handshake_timeout=0.3)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the server gave up
            assert 0.25 <= time.monotonic() - t0 < 5 and not called
            writer.close()

    run(main())


def test_start_tls_refuses_a_context():
    """loop.start_tls() is the one place asyncio checks for ssl.SSLContext
    (docs/python.md): upgrading a plain connection is not supported."""
    cli, srv = contexts()

    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(
                *server.sockets[0].getsockname())
            with pytest.raises(TypeError, match="ssl.SSLContext"):
                await writer.start_tls(cli)
            writer.close()

    run(main())


def test_pskobject_write_after_close_notify_raises_zero_return():
    cli, srv = contexts()
    ci, co, si, so = (ssl.MemoryBIO() for _ in range(4))
    c = cli.wrap_bio(ci, co)
    s = srv.wrap_bio(si, so, server_side=True)
    for _ in range(10):
        for o in (c, s):
            try:
                o.do_handshake()
            except ssl.SSLWantReadError:
                pass
        si.write(co.read())
        ci.write(so.read())
    s.do_handshake()
    c.do_handshake()
    s.unwrap()
    ci.write(so.read())
    assert c.read() == b""
    with pytest.raises(ssl.SSLZeroReturnError) as e:
        c.write(b"too late")
    assert isinstance(e.value, m2mpsk.ZeroReturn) and e.value.code == m2mpsk.E_CLOSED


def test_tls_server_holds_200_concurrent_associations():
    n = 200

    async def main():
        cli, srv = contexts()
        active = set()
        all_in = asyncio.Event()
        release = asyncio.Event()

        async def handle(reader, writer):
            o = writer.get_extra_info("ssl_object")
            active.add(o)
            if len(active) == n:
                all_in.set()
            line = await reader.readline()
            writer.write(line + o.peer_id().encode() + b"\n")
            await writer.drain()
            await release.wait()
            writer.close()
            await writer.wait_closed()

        async def client(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cli)
            writer.write(b"%d\n" % i)
            await writer.drain()
            echo = await reader.readline(), await reader.readline()
            await all_in.wait()
            return reader, writer, echo

        server, port = await tls_server(srv, handle, backlog=n)
        async with server:
            rss0, t0 = rss_kib(), time.monotonic()
            got = await asyncio.gather(*(client(i) for i in range(n)))
            elapsed, rss1 = time.monotonic() - t0, rss_kib()
            assert len(active) == n
            for i, (_, _, echo) in enumerate(got):
                assert echo == (b"%d\n" % i, ("12-%s\n" % KPSA_ID).encode())
            release.set()
            for reader, writer, _ in got:
                assert await reader.read() == b""
                writer.close()
            await asyncio.gather(*(w.wait_closed() for _, w, _ in got))
        # Most of it is asyncio's: each SSLProtocol has a 256 KiB read
        # buffer (sslproto.SSLProtocol.max_size), two per connection here.
        print("\n%d concurrent TLS associations over asyncio: %.2f s, RSS +%d KiB "
              "(%.1f KiB per connection, both ends, asyncio's 2 x 256 KiB "
              "read buffers included)" % (n, elapsed, rss1 - rss0, (rss1 - rss0) / n))

    run(main(), timeout=30)


# DTLS


class Peer(asyncio.DatagramProtocol):
    """A DTLS protocol that queues what it receives and records its end."""

    def __init__(self, echo=False, seen=None):
        self.echo = echo
        self.seen = seen
        self.transport = None
        self.queue = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        if self.seen is not None:
            self.seen.append(transport.get_extra_info("ssl_object").peer_id())

    def datagram_received(self, data, addr):
        assert addr == self.transport.get_extra_info("peername")
        if self.echo:
            o = self.transport.get_extra_info("ssl_object")
            self.transport.write(o.peer_id().encode() + b" " + data)
        else:
            self.queue.put_nowait(data)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class Raw(asyncio.DatagramProtocol):
    """A plain UDP endpoint with a queue, to send what a DTLS client would
    not (no cookie, garbage) and to drop a flight on purpose."""

    def __init__(self):
        self.queue = asyncio.Queue()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.queue.put_nowait(data)

    async def recv(self, timeout=3):
        return await asyncio.wait_for(self.queue.get(), timeout)


async def raw_endpoint(addr):
    loop = asyncio.get_running_loop()
    _, raw = await loop.create_datagram_endpoint(Raw, remote_addr=addr)
    return raw


def now_ms():
    return int(asyncio.get_running_loop().time() * 1000)


def htype(d):
    return d[13] if len(d) > 13 and d[0] == 22 else None


@pytest.mark.parametrize("engine", ENGINES)
def test_dtls_server_50_peers_on_one_socket(engine):
    n = 50
    records = [("dev%02d@onem2m.com" % i, "//m2m.example.com/cse-in/Cae%d" % i)
               for i in range(n)]

    async def main():
        cli, srv = contexts(records=records, engine=engine)
        seen = []
        server = await m2mpsk.create_dtls_server(srv, lambda: Peer(echo=True, seen=seen),
                                                 ("127.0.0.1", 0))
        async with server:
            addr = server.sockname

            async def client(i):
                t, p = await m2mpsk.create_dtls_connection(cli, Peer, addr,
                                                           kpsa_id=records[i][0])
                assert t.get_extra_info("ssl_object").peer_id() == IDB
                assert t.get_extra_info("ssl_object").engine() == engine
                assert t.get_extra_info("peername") == addr
                t.write(b"hello %d" % i)
                return t, await asyncio.wait_for(p.queue.get(), 5)

            t0 = time.monotonic()
            got = await asyncio.gather(*(client(i) for i in range(n)))
            elapsed = time.monotonic() - t0
            assert server.peer_count() == n
            for i, (t, reply) in enumerate(got):
                assert reply == (records[i][1] + " hello %d" % i).encode()
            assert sorted(seen) == sorted(ida for _, ida in records)
            # every peer went through the cookie exchange first
            assert server.cookies_sent == (n if has_cookies(engine) else 0)
            for t, _ in got:
                t.close()
                assert t.is_closing()
            for _ in range(100):  # the close_notify datagrams arrive
                if server.peer_count() == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.peer_count() == 0
        print("\n%d DTLS peers on one socket (%s): %.2f s" %
              (n, m2mpsk.engine_name(engine), elapsed))

    run(main(), timeout=20)


def test_dtls_server_checks_the_originator():
    records = [(KPSA_ID, "//m2m.example.com/cse-in/Cae1")]

    async def main():
        cli, srv = contexts(records=records)
        checks = []

        class Check(Peer):
            def datagram_received(self, data, addr):
                o = self.transport.get_extra_info("ssl_object")
                checks.append((data, o.originator_check(data.decode())))
                self.transport.write(str(checks[-1][1]).encode())

        async with await m2mpsk.create_dtls_server(srv, Check, ("127.0.0.1", 0)) as server:
            t, p = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            for frm in ("Cae1", "Cae2"):
                t.write(frm.encode())
                await p.queue.get()
            t.close()
        assert checks == [(b"Cae1", m2mpsk.ORIGINATOR_ACCEPT),
                          (b"Cae2", m2mpsk.ORIGINATOR_NOT_AUTHENTICATED)]

    run(main())


@pytest.mark.parametrize("engine", ENGINES)
def test_dtls_wrong_key_raises_handshake_failed(engine):
    async def main():
        cli, srv = contexts(key_b=bytes(32), engine=engine)
        async with await m2mpsk.create_dtls_server(srv, Peer, ("127.0.0.1", 0)) as server:
            with pytest.raises(m2mpsk.HandshakeFailed) as e:
                await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            assert server.peer_count() == 0
        assert isinstance(e.value, ssl.SSLError)
        # the server's alert (bad_record_mac) reads as a wrong key
        assert e.value.reason == m2mpsk.REASON_BAD_KEY, str(e.value)
        assert KEY.hex() not in str(e.value)

    run(main())


@pytest.mark.parametrize("engine", ENGINES)
def test_dtls_client_hello_without_cookie_creates_no_state(engine):
    async def main():
        cli, srv = contexts(engine=engine)
        async with await m2mpsk.create_dtls_server(srv, Peer, ("127.0.0.1", 0)) as server:
            raw = await raw_endpoint(server.sockname)
            a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, DTLS, cli.config, cli.keystore,
                                   KPSA_ID)
            a.start(now_ms())
            ch1 = a.drain()
            if not has_cookies(engine):
                # BoringSSL: no cookie exchange, so the first ClientHello
                # makes the association (bounded by max_peers and
                # handshake_timeout), as documented.
                raw.transport.sendto(ch1)
                assert htype(await raw.recv()) == 2
                assert server.peer_count() == 1 and server.cookies_sent == 0
                a.close()
                raw.transport.close()
                return
            for _ in range(3):  # a flood of cookie-less ClientHellos
                raw.transport.sendto(ch1)
                hvr = await raw.recv()
                assert htype(hvr) == 3  # HelloVerifyRequest
            assert server.peer_count() == 0 and server.cookies_sent == 3
            assert srv.config.handshakes_in_progress() == 0
            a.feed(hvr, now_ms())
            ch2 = a.drain()
            raw.transport.sendto(ch2)
            assert htype(await raw.recv()) == 2  # ServerHello: now there is a peer
            assert server.peer_count() == 1
            a.close()
            raw.transport.close()

    run(main())


def test_dtls_max_peers_bounds_the_associations():
    async def main():
        cli, srv = contexts()
        async with await m2mpsk.create_dtls_server(srv, Peer, ("127.0.0.1", 0),
                                                   max_peers=2) as server:
            ends = [await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
                    for _ in range(2)]
            dropped = server.dropped
            with pytest.raises(TimeoutError):
                await m2mpsk.create_dtls_connection(cli, Peer, server.sockname,
                                                    handshake_timeout=0.5)
            assert server.peer_count() == 2 and server.dropped > dropped
            t, p = ends[0]
            t.close()  # close_notify frees a place
            for _ in range(100):
                if server.peer_count() == 1:
                    break
                await asyncio.sleep(0.01)
            t3, _ = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            assert server.peer_count() == 2
            t3.close()
            ends[1][0].close()

    run(main())


def test_dtls_idle_peer_is_ended():
    async def main():
        cli, srv = contexts()
        lost = []

        class Server(Peer):
            def connection_lost(self, exc):
                lost.append(exc)

        async with await m2mpsk.create_dtls_server(srv, Server, ("127.0.0.1", 0),
                                                   idle_timeout=0.3) as server:
            t0 = time.monotonic()
            t, p = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            assert server.peer_count() == 1
            assert await asyncio.wait_for(p.lost, 3) is None  # its close_notify came
            assert 0.25 <= time.monotonic() - t0 < 3
            assert server.peer_count() == 0 and lost == [None]
            assert t.is_closing()

    run(main())


def test_dtls_garbage_is_ignored():
    async def main():
        cli, srv = contexts()
        async with await m2mpsk.create_dtls_server(srv, lambda: Peer(echo=True),
                                                   ("127.0.0.1", 0)) as server:
            t, p = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            raw = await raw_endpoint(server.sockname)
            junk = [b"", b"\x00", os.urandom(1), os.urandom(100), os.urandom(1400),
                    b"\x16\xfe\xfd" + bytes(10) + b"\x01",  # a ClientHello's header, cut
                    b"\x16\xfe\xfd" + bytes(8) + b"\x00\x40" + os.urandom(64),
                    b"\x17\xfe\xfd" + os.urandom(60)]
            for d in junk * 5:
                raw.transport.sendto(d)
            # the established peer's own address sends junk too (its socket)
            peer = t._peer
            for d in junk:
                peer.send(d, None)
            t.write(b"still here")
            assert await asyncio.wait_for(p.queue.get(), 3) == \
                ("12-%s still here" % KPSA_ID).encode()
            assert server.peer_count() == 1 and raw.queue.empty()
            raw.transport.close()
            t.close()

    run(main())


@pytest.mark.parametrize("engine", ENGINES)
def test_dtls_server_retransmits_a_dropped_flight(engine):
    async def main():
        cli, srv = contexts(engine=engine)
        async with await m2mpsk.create_dtls_server(srv, lambda: Peer(echo=True),
                                                   ("127.0.0.1", 0)) as server:
            raw = await raw_endpoint(server.sockname)
            a = m2mpsk.Association(m2mpsk.ROLE_INITIATOR, DTLS, cli.config, cli.keystore,
                                   KPSA_ID)
            a.start(now_ms())
            raw.transport.sendto(a.drain())
            first = await raw.recv()
            if htype(first) == 3:  # the cookie exchange
                a.feed(first, now_ms())
                raw.transport.sendto(a.drain())
                first = await raw.recv()
            assert htype(first) == 2
            while not raw.queue.empty():  # the rest of the flight: dropped too
                raw.queue.get_nowait()
            t0 = time.monotonic()
            again = await raw.recv(timeout=4)  # nothing sent: the server's timer
            waited = time.monotonic() - t0
            assert htype(again) == 2 and 0.3 < waited < 4
            a.feed(again, now_ms())
            while a.state() == m2mpsk.STATE_HANDSHAKING:
                while out := a.drain():
                    raw.transport.sendto(out)
                a.feed(await raw.recv(), now_ms())
            assert a.state() == m2mpsk.STATE_ESTABLISHED, a.failure_detail()
            a.write(b"after the retransmission")
            raw.transport.sendto(a.drain())
            a.feed(await raw.recv(), now_ms())
            assert a.read() == ("12-%s after the retransmission" % KPSA_ID).encode()
            print("\nserver retransmitted its flight after %.2f s" % waited)
            a.close()
            raw.transport.close()

    run(main())


def test_dtls_client_retransmits_its_client_hello():
    async def main():
        cli, _ = contexts()
        loop = asyncio.get_running_loop()
        silent, raw = await loop.create_datagram_endpoint(Raw, local_addr=("127.0.0.1", 0))
        task = asyncio.ensure_future(m2mpsk.create_dtls_connection(
            cli, Peer, silent.get_extra_info("sockname")))
        first = await raw.recv()
        t0 = time.monotonic()
        second = await raw.recv(timeout=4)
        waited = time.monotonic() - t0
        assert htype(first) == htype(second) == 1 and 0.3 < waited < 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        silent.close()

    run(main())


def test_dtls_arguments_are_checked():
    async def main():
        cli, srv = contexts()
        for kw in ({"max_peers": 0}, {"idle_timeout": 0}, {"handshake_timeout": -1}):
            with pytest.raises(m2mpsk.Error) as e:
                await m2mpsk.create_dtls_server(srv, Peer, ("127.0.0.1", 0), **kw)
            assert e.value.code == m2mpsk.E_INVALID
        with pytest.raises(m2mpsk.Error):
            await m2mpsk.create_dtls_server(ssl.create_default_context(), Peer,
                                            ("127.0.0.1", 0))
        with pytest.raises(m2mpsk.Error) as e:
            await m2mpsk.create_dtls_connection(m2mpsk.Context(), Peer, ("127.0.0.1", 9))
        assert e.value.code == m2mpsk.E_INVALID  # no KpsaID
        sizes = asyncio.Queue()

        class Sizes(Peer):
            def datagram_received(self, data, addr):
                sizes.put_nowait(len(data))

        async with await m2mpsk.create_dtls_server(srv, Sizes, ("127.0.0.1", 0)) as server:
            t, p = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            with pytest.raises(m2mpsk.Error):
                t.sendto(b"x", ("127.0.0.1", 1))  # not its peer
            with pytest.raises(m2mpsk.Error) as e:
                t.write(bytes(16385))  # more than a record
            assert e.value.code == m2mpsk.E_INVALID
            t.sendto(bytes(16384), t.get_extra_info("peername"))
            assert await asyncio.wait_for(sizes.get(), 3) == 16384
            o = t.get_extra_info("ssl_object")
            assert o.peer_id() == IDB and o.pending() == 0
            t.close()
            with pytest.raises(m2mpsk.Error) as e:
                t.write(b"after close")
            assert e.value.code == m2mpsk.E_INVALID
            with pytest.raises(m2mpsk.Error) as e:
                o.peer_id()  # the association is freed
            assert e.value.code == m2mpsk.E_INVALID
            assert await asyncio.wait_for(p.lost, 3) is None

    run(main())


def test_dtls_connection_to_a_closed_port_is_refused():
    async def main():
        cli, _ = contexts()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            addr = u.getsockname()
        with pytest.raises(ConnectionRefusedError):
            await m2mpsk.create_dtls_connection(cli, Peer, addr)

    run(main())


def test_dtls_server_close_ends_every_peer():
    async def main():
        cli, srv = contexts()
        server_lost = []

        class Server(Peer):
            def connection_lost(self, exc):
                server_lost.append(exc)

        server = await m2mpsk.create_dtls_server(srv, Server, ("127.0.0.1", 0))
        ends = [await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
                for _ in range(3)]
        assert server.is_serving() and server.peer_count() == 3
        server.close()
        await server.wait_closed()
        assert not server.is_serving() and server.peer_count() == 0
        for t, p in ends:  # each got its close_notify
            assert await asyncio.wait_for(p.lost, 3) is None and t.is_closing()
        await asyncio.sleep(0)
        assert server_lost == [None] * 3

    run(main())


@pytest.mark.skipif(not has_cookies(m2mpsk.ENGINE_AUTO), reason="needs the cookie exchange")
def test_dtls_client_restarting_on_the_same_address_replaces_its_association():
    async def main():
        cli, srv = contexts()
        lost = []

        class Server(Peer):
            def connection_lost(self, exc):
                lost.append(exc)

        async with await m2mpsk.create_dtls_server(srv, lambda: Server(echo=True),
                                                   ("127.0.0.1", 0)) as server:
            t1, p1 = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            here = t1.get_extra_info("sockname")
            t1.abort()  # the client forgets its association, sending nothing
            await asyncio.sleep(0.05)
            assert server.peer_count() == 1
            t2, p2 = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname,
                                                         local_addr=here)
            assert t2.get_extra_info("sockname") == here
            assert server.replaced == 1 and server.peer_count() == 1
            await asyncio.sleep(0)
            assert len(lost) == 1 and isinstance(lost[0], ConnectionResetError)
            t2.write(b"again")
            assert await asyncio.wait_for(p2.queue.get(), 3) == \
                ("12-%s again" % KPSA_ID).encode()
            t2.close()

    run(main())


def test_dtls_protocol_exceptions_go_to_the_loop():
    async def main():
        cli, srv = contexts()
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda loop, ctx: reported.append(ctx["exception"]))

        class Broken(Peer):
            def connection_made(self, transport):
                raise RuntimeError("connection_made")

        class Moody(Peer):
            def datagram_received(self, data, addr):
                if data == b"raise":
                    raise RuntimeError("datagram_received")
                self.transport.write(data)

        # a client whose protocol fails: create_dtls_connection() raises
        async with await m2mpsk.create_dtls_server(srv, Moody, ("127.0.0.1", 0)) as server:
            with pytest.raises(RuntimeError, match="connection_made"):
                await m2mpsk.create_dtls_connection(cli, Broken, server.sockname)
            # a server protocol that raises: reported, its peer and the
            # others go on
            a = [await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
                 for _ in range(2)]
            a[0][0].write(b"raise")
            for t, p in a:
                t.write(b"fine")
                assert await asyncio.wait_for(p.queue.get(), 3) == b"fine"
            assert [str(e) for e in reported] == ["datagram_received"]
        # a server protocol that fails in connection_made: reported, and the
        # client is sent close_notify
        async with await m2mpsk.create_dtls_server(srv, Broken, ("127.0.0.1", 0)) as server:
            t, p = await m2mpsk.create_dtls_connection(cli, Peer, server.sockname)
            assert await asyncio.wait_for(p.lost, 3) is None
            assert str(reported[-1]) == "connection_made" and server.peer_count() == 0

    run(main())
