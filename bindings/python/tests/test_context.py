"""The drop-in layer: Context.wrap_socket() and wrap_bio(), over real
sockets on 127.0.0.1, against each other, against OpenSSL, and under
http.client. Every wait is bounded (a socket timeout, a join timeout or a
select timeout); nothing sleeps to synchronise."""
import http.client
import io
import select
import socket
import ssl
import threading

import pytest

import m2mpsk
from conftest import IDB, KEY, KPSA_ID

T = 20  # seconds: the bound of every wait


def contexts(key_b=KEY):
    """(client context, server context) over the shared record; the
    server's key can differ, to make a handshake fail."""
    ks_a = m2mpsk.Keystore()
    ks_a.add(KPSA_ID, KEY, None, IDB)
    ks_b = m2mpsk.Keystore()
    ks_b.add(KPSA_ID, key_b, None, IDB)
    srv = m2mpsk.Context(server_side=True, keystore=ks_b)
    srv.config.add_local_id(IDB)
    return m2mpsk.Context(keystore=ks_a, kpsa_id=KPSA_ID), srv


def tcp_pair():
    """A connected (client, server) TCP pair on loopback, with timeouts."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        c = socket.create_connection(lsock.getsockname(), timeout=T)
        s, _ = lsock.accept()
    s.settimeout(T)
    return c, s


class Thread(threading.Thread):
    """Runs fn, keeps its result or exception; join() re-raises it."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.result, self.error = fn, args, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # handed to join()
            self.error = e

    def join(self, timeout=T):
        super().join(timeout)
        assert not self.is_alive(), "thread still running after %s s" % timeout
        if self.error is not None:
            raise self.error
        return self.result


def wrapped_pair(cli_ctx=None, srv_ctx=None):
    """(client PSKSocket, server PSKSocket), handshake done."""
    if cli_ctx is None:
        cli_ctx, srv_ctx = contexts()
    c, s = tcp_pair()
    t = Thread(srv_ctx.wrap_socket, s)
    sc = cli_ctx.wrap_socket(c, server_hostname="m2m.example.com")
    return sc, t.join()


def test_wrap_socket_both_roles_blocking_with_timeout():
    c, s = wrapped_pair()
    with c, s:
        assert isinstance(c, m2mpsk.PSKSocket) and isinstance(c, socket.socket)
        assert c.gettimeout() == T and s.gettimeout() == T
        # the association as each end sees it
        assert c.peer_id() == IDB and not c.credential()
        assert s.peer_id() == "12-" + KPSA_ID and s.credential()
        assert c.kpsa_id() == s.kpsa_id() == KPSA_ID
        assert c.suite() == s.suite() and c.suite() in m2mpsk.suites()
        assert {c.engine(), s.engine()} <= {m2mpsk.ENGINE_BORINGSSL, m2mpsk.ENGINE_OPENSSL}
        assert isinstance(c.association, m2mpsk.Association)
        assert c.getpeername() == s.getsockname()
        assert c.cipher()[0] == c.suite() and c.getpeercert() is None
        c.sendall(b"ping")
        assert s.recv(100) == b"ping"
        # larger than a record, read through recv_into
        big = bytes(range(256)) * 300
        t = Thread(c.sendall, big)
        got = bytearray()
        buf = bytearray(5000)
        while len(got) < len(big):
            n = s.recv_into(buf)
            assert n > 0
            got += buf[:n]
        t.join()
        assert got == big
        # a read that waits past the socket's timeout raises socket.timeout
        s.settimeout(0.2)
        with pytest.raises(socket.timeout):
            s.recv(10)
        s.settimeout(T)
        # close_notify ends the stream: b"" at the other end
        c.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""


def test_wrap_socket_non_blocking_select_loop():
    cli_ctx, srv_ctx = contexts()
    c, s = tcp_pair()
    c.setblocking(False)
    s.setblocking(False)
    c = cli_ctx.wrap_socket(c, do_handshake_on_connect=False)
    s = srv_ctx.wrap_socket(s, do_handshake_on_connect=False)
    with c, s:
        assert c.gettimeout() == 0.0
        with pytest.raises(m2mpsk.WantRead) as e:
            s.do_handshake()  # nothing has arrived yet
        assert isinstance(e.value, ssl.SSLWantReadError)
        assert e.value.code == m2mpsk.E_AGAIN
        handshaking = {c, s}
        waits = 0
        while handshaking:
            r, w = [], []
            for x in list(handshaking):
                try:
                    x.do_handshake()
                    handshaking.discard(x)
                except m2mpsk.WantRead:
                    r.append(x)
                except m2mpsk.WantWrite:
                    w.append(x)
            if handshaking:
                ready = select.select(r, w, [], T)
                assert ready[0] or ready[1], "select timed out"
                waits += 1
        assert waits >= 2  # the handshake really waited for the peer
        assert c.peer_id() == IDB
        c.send(b"one")
        with pytest.raises(m2mpsk.WantRead):
            c.recv(10)
        assert select.select([s], [], [], T)[0]
        assert s.recv(10) == b"one"
        assert s.pending() == 0


def test_non_blocking_send_raises_want_write_and_keeps_the_records():
    c, s = wrapped_pair()
    with c, s:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        c.setblocking(False)
        chunk = bytes(range(256)) * 64
        accepted = []
        # nobody reads yet: the socket fills up and send() says WantWrite
        with pytest.raises(m2mpsk.WantWrite) as e:
            for i in range(10000):
                data = bytes([i % 251]) + chunk
                assert c.send(data) == len(data)
                accepted.append(data)
        assert isinstance(e.value, ssl.SSLWantWriteError) and e.value.code == m2mpsk.E_AGAIN
        assert accepted
        # the reader drains everything accepted, while the writer finishes
        # with a select loop
        t = Thread(lambda: b"".join(iter(lambda: s.recv(65536), b"")))
        last = b"the end" * 1000
        while True:
            try:
                c.send(last)
                accepted.append(last)
                break
            except m2mpsk.WantWrite:
                assert select.select([], [c], [], T)[1], "never writable"
        while True:  # the records send() kept
            try:
                c.sendall(b"")
                break
            except m2mpsk.WantWrite:
                assert select.select([], [c], [], T)[1], "never writable"
        c.setblocking(True)
        c.settimeout(T)
        c.shutdown(socket.SHUT_WR)
        assert t.join() == b"".join(accepted)


def test_handshake_bounded_by_the_socket_timeout_and_the_config():
    cli_ctx, _ = contexts()
    c, s = tcp_pair()
    with s:  # a peer that never answers
        c.settimeout(0.3)
        with pytest.raises(socket.timeout):
            cli_ctx.wrap_socket(c)
    # the config's handshake timeout fires while a blocking call waits
    cli_ctx, _ = contexts()
    cli_ctx.config.set_handshake_timeout(300)
    c, s = tcp_pair()
    with s:
        c.settimeout(T)
        with pytest.raises(m2mpsk.Failed) as e:
            cli_ctx.wrap_socket(c)
        assert e.value.reason == m2mpsk.REASON_TIMEOUT


def test_handshake_runs_on_the_first_send_and_recv():
    cli_ctx, srv_ctx = contexts()
    c, s = tcp_pair()
    c = cli_ctx.wrap_socket(c, do_handshake_on_connect=False)
    s = srv_ctx.wrap_socket(s, do_handshake_on_connect=False)
    with c, s:
        assert c.peer_id() is None and c.cipher() is None
        t = Thread(s.recv, 10)
        c.sendall(b"lazy")
        assert t.join() == b"lazy"
        assert c.peer_id() == IDB


def test_a_makefile_file_keeps_the_association_until_it_is_closed():
    c, s = wrapped_pair()
    with s:
        f = c.makefile("rb")
        c.close()  # as http.client does while its response reads
        s.sendall(b"still here\n")
        assert f.readline() == b"still here\n"
        assert c.peer_id() == IDB
        f.close()
        e = pytest.raises(m2mpsk.Error, c.peer_id).value
        assert e.code == m2mpsk.E_INVALID and "closed" in e.detail


def test_wrap_socket_failed_handshake_wrong_key():
    cli_ctx, srv_ctx = contexts(key_b=bytes(32))
    c, s = tcp_pair()
    t = Thread(srv_ctx.wrap_socket, s)
    with pytest.raises(m2mpsk.Failed) as ec:
        cli_ctx.wrap_socket(c)
    with pytest.raises(m2mpsk.Failed) as es:
        t.join()
    assert es.value.code == ec.value.code == m2mpsk.E_FAILED
    assert es.value.reason == m2mpsk.REASON_BAD_KEY, str(es.value)
    # the client reads the server's alert (bad_record_mac) as a wrong key
    assert ec.value.reason == m2mpsk.REASON_BAD_KEY, str(ec.value)
    for e in (es.value, ec.value):
        assert KEY.hex() not in str(e) and bytes(32).hex() not in str(e)
    # wrap_socket closed what it took over
    assert c.fileno() == -1 and s.fileno() == -1


def read_record(s):
    """One whole TLS record from a plain socket."""
    head = b""
    while len(head) < 5:
        head += s.recv(5 - len(head))
    body = b""
    n = int.from_bytes(head[3:5], "big")
    while len(body) < n:
        body += s.recv(n - len(body))
    return head + body


@pytest.mark.parametrize("how", ["close", "reset"])
def test_peer_closes_mid_handshake(how):
    cli_ctx, _ = contexts()
    c, s = tcp_pair()
    with s:
        c = cli_ctx.wrap_socket(c, do_handshake_on_connect=False)
        t = Thread(c.do_handshake)
        assert read_record(s)[:1] == b"\x16"  # the ClientHello
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()
        with pytest.raises(m2mpsk.Failed) as e:
            t.join()
        assert e.value.code == m2mpsk.E_FAILED
        assert e.value.reason == m2mpsk.REASON_PROTOCOL
        assert ("closed" if how == "close" else "reset") in e.value.detail
        c.close()


def test_recv_after_close_and_ragged_eof():
    c, s = wrapped_pair()
    s.close()  # a TCP close, no close_notify
    assert c.recv(10) == b""  # suppress_ragged_eofs, as ssl's default
    c.close()
    e = pytest.raises(m2mpsk.Error, c.recv, 10).value
    assert e.code == m2mpsk.E_INVALID and "closed" in e.detail


def test_ragged_eof_raises_when_not_suppressed():
    cli_ctx, srv_ctx = contexts()
    c, s = tcp_pair()
    t = Thread(srv_ctx.wrap_socket, s)
    c = cli_ctx.wrap_socket(c, suppress_ragged_eofs=False)
    s = t.join()
    with c:
        s.close()
        with pytest.raises(m2mpsk.Closed):
            c.recv(10)


def test_unwrap_returns_the_plain_socket():
    c, s = wrapped_pair()
    with s:
        plain = c.unwrap()
        assert type(plain) is socket.socket
        assert s.recv(10) == b""  # c's close_notify
        with plain:
            plain.sendall(b"clear")
        raises_closed = pytest.raises(m2mpsk.Error, c.peer_id).value
        assert raises_closed.code == m2mpsk.E_INVALID


def test_sendfile_goes_through_the_association_and_raw_io_is_refused():
    c, s = wrapped_pair()
    with c, s:
        data = bytes(range(256)) * 100
        assert c.sendfile(io.BytesIO(data)) == len(data)
        c.shutdown(socket.SHUT_WR)
        assert b"".join(iter(lambda: s.recv(65536), b"")) == data
        for fn, args in ((c.sendto, (b"x", ("127.0.0.1", 9))), (c.sendmsg, ([b"x"],)),
                         (c.recvfrom, (1,)), (c.recvfrom_into, (bytearray(1),)),
                         (c.recvmsg, (1,)), (c.recvmsg_into, ([bytearray(1)],))):
            e = pytest.raises(m2mpsk.Error, fn, *args).value
            assert e.code == m2mpsk.E_UNSUPPORTED, fn


def test_originator_check_and_bind_ae_id():
    c, s = wrapped_pair()
    with c, s:
        # bound to the Credential-ID: only an AE registration is accepted
        assert s.originator_check("/cse-in/Cae1") == m2mpsk.ORIGINATOR_NOT_AUTHENTICATED
        assert s.originator_check(None, m2mpsk.ORIGINATOR_AE_CREATE) == m2mpsk.ORIGINATOR_ACCEPT
        s.bind_ae_id("/cse-in/Cae1")
        assert s.peer_id() == "/cse-in/Cae1" and not s.credential()
        assert s.originator_check("/cse-in/Cae1") == m2mpsk.ORIGINATOR_ACCEPT
        assert s.originator_check("/cse-in/Cae2") == m2mpsk.ORIGINATOR_NOT_AUTHENTICATED


def bio_pump(x, y, fx, fy):
    """Runs x.fx and y.fy, moving bytes between their BIOs, until both
    return; each call is retried on WantRead. Returns the two results."""
    done = {}
    for _ in range(50):
        for name, obj, fn in (("x", x, fx), ("y", y, fy)):
            if name in done:
                continue
            try:
                done[name] = fn()
            except m2mpsk.WantRead:
                pass
        x_out, y_out = x._outgoing.read(), y._outgoing.read()
        if y_out:
            x._incoming.write(y_out)
        if x_out:
            y._incoming.write(x_out)
        if len(done) == 2:
            return done["x"], done["y"]
        assert x_out or y_out, "neither side has anything to send"
    raise AssertionError("no progress")


def bio(ctx, server_side=None):
    return ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=server_side)


def test_wrap_bio_both_roles():
    cli_ctx, srv_ctx = contexts()
    with bio(cli_ctx) as a, bio(srv_ctx) as b:
        with pytest.raises(m2mpsk.WantRead) as e:
            b.do_handshake()
        assert isinstance(e.value, ssl.SSLWantReadError)
        bio_pump(a, b, a.do_handshake, b.do_handshake)
        assert a.peer_id() == IDB and b.credential()
        assert a.write(b"hello") == 5
        b._incoming.write(a._outgoing.read())
        assert b.pending() == 0  # still in the incoming BIO, as with ssl
        buf = bytearray(3)
        assert b.read(1024, buf) == 3 and buf == b"hel"  # at most the buffer
        assert b.pending() == 2
        assert b.read() == b"lo"
        with pytest.raises(m2mpsk.WantRead):
            b.read()
        a.unwrap()
        b._incoming.write(a._outgoing.read())
        assert b.read() == b""


def test_wrap_bio_wrong_key_fails_with_the_reason():
    cli_ctx, srv_ctx = contexts(key_b=bytes(32))
    with bio(cli_ctx) as a, bio(srv_ctx) as b:
        with pytest.raises(m2mpsk.Failed) as e:
            bio_pump(a, b, a.do_handshake, b.do_handshake)
        assert e.value.reason in (m2mpsk.REASON_BAD_KEY, m2mpsk.REASON_PEER_ALERT)


@pytest.mark.parametrize("bio_side", ["client", "server"])
def test_wrap_bio_against_wrap_socket(bio_side):
    cli_ctx, srv_ctx = contexts()
    c, s = tcp_pair()
    sock_end, bio_end = (s, c) if bio_side == "client" else (c, s)
    sock_ctx, bio_ctx = (srv_ctx, cli_ctx) if bio_side == "client" else (cli_ctx, srv_ctx)
    t = Thread(sock_ctx.wrap_socket, sock_end)
    with bio_end, bio(bio_ctx) as o:
        def step(fn):
            """Retries fn, moving o's bytes over bio_end, until it returns."""
            for _ in range(100):
                try:
                    r = fn()
                    out = o._outgoing.read()
                    if out:
                        bio_end.sendall(out)
                    return r
                except m2mpsk.WantRead:
                    out = o._outgoing.read()
                    if out:
                        bio_end.sendall(out)
                    data = bio_end.recv(65536)
                    if not data:
                        o._incoming.write_eof()
                    else:
                        o._incoming.write(data)
            raise AssertionError("no progress")
        step(o.do_handshake)
        ps = t.join()
        with ps:
            step(lambda: o.write(b"from the bio"))
            assert ps.recv(100) == b"from the bio"
            ps.sendall(b"from the socket")
            assert step(o.read) == b"from the socket"


def serve_http(srv_ctx, lsock, handle):
    """Accepts one connection on lsock, wraps it and answers one HTTP
    request with handle(conn, request_line, headers) -> (status, headers,
    body)."""
    conn, _ = lsock.accept()
    conn.settimeout(T)
    with srv_ctx.wrap_socket(conn) as s, s.makefile("rb") as f:
        line = f.readline()
        headers = {}
        while (h := f.readline()) not in (b"\r\n", b""):
            k, v = h.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        status, extra, body = handle(s, line, headers)
        head = "HTTP/1.1 %d X\r\nContent-Length: %d\r\n" % (status, len(body))
        for k, v in extra.items():
            head += "%s: %s\r\n" % (k, v)
        s.sendall(head.encode() + b"\r\n" + body)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client may have read the body and closed already


def test_http_client_as_entity_a():
    cli_ctx, srv_ctx = contexts()
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]

        def handle(s, line, headers):
            body = ("%s %s %s" % (line.split()[1].decode(), s.peer_id(),
                                  headers.get("x-m2m-origin"))).encode()
            return 200, {"X-M2M-RSC": "2000"}, body
        t = Thread(serve_http, srv_ctx, lsock, handle)
        # HTTPSConnection takes the Context as it takes an ssl.SSLContext
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=cli_ctx, timeout=T)
        conn.request("GET", "/cse-in", headers={"X-M2M-Origin": "Cae1", "X-M2M-RI": "1"})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("X-M2M-RSC") == "2000"
        assert r.read() == ("/cse-in 12-%s Cae1" % KPSA_ID).encode()
        assert isinstance(conn.sock, m2mpsk.PSKSocket) and conn.sock.peer_id() == IDB
        conn.close()
        t.join()


def test_wrap_socket_refuses_what_it_cannot_wrap():
    cli_ctx, _ = contexts()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        e = pytest.raises(m2mpsk.Error, cli_ctx.wrap_socket, u).value
        assert e.code == m2mpsk.E_UNSUPPORTED
    with socket.socket() as fresh:
        e = pytest.raises(m2mpsk.Error, cli_ctx.wrap_socket, fresh).value
        assert e.code == m2mpsk.E_STATE
    c, s = tcp_pair()
    with c, s:
        no_id = m2mpsk.Context(keystore=cli_ctx.keystore)
        e = pytest.raises(m2mpsk.Error, no_id.wrap_socket, c).value
        assert e.code == m2mpsk.E_INVALID


def test_flask_over_werkzeug_with_the_context_as_ssl_context():
    flask = pytest.importorskip("flask", reason="python3-flask not installed")
    from werkzeug.serving import make_server
    ida = "//m2m.example.com/cse-in/Cae1"
    cli_ctx, srv_ctx = contexts()
    cli_ctx.keystore.add("ae1@onem2m.com", KEY, ida, IDB)
    srv_ctx.keystore.add("ae1@onem2m.com", KEY, ida, IDB)
    cli_ctx.kpsa_id = "ae1@onem2m.com"

    app = flask.Flask("m2mpsk_test")

    @app.route("/cse-in", methods=["GET", "POST"])
    def cse():
        # werkzeug hands the connection over in the environ
        conn = flask.request.environ["werkzeug.socket"]
        verdict = conn.originator_check(flask.request.headers.get("X-M2M-Origin"))
        if verdict != m2mpsk.ORIGINATOR_ACCEPT:
            return "", 403, {"X-M2M-RSC": str(verdict)}
        return flask.jsonify(peer=conn.peer_id(), kpsa=conn.kpsa_id(),
                             scheme=flask.request.scheme), 200, {"X-M2M-RSC": "2000"}

    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=srv_ctx)
    assert isinstance(server.socket, m2mpsk.PSKSocket)
    port = server.socket.getsockname()[1]
    t = Thread(server.serve_forever, 0.05)
    try:
        def request(origin, ctx=cli_ctx):
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=T)
            try:
                conn.request("GET", "/cse-in", headers={"X-M2M-Origin": origin, "X-M2M-RI": "1"})
                r = conn.getresponse()
                return r.status, r.getheader("X-M2M-RSC"), r.read()
            finally:
                conn.close()

        status, rsc, body = request(ida)
        assert (status, rsc) == (200, "2000"), body
        assert flask.json.loads(body) == {"peer": ida, "kpsa": "ae1@onem2m.com",
                                          "scheme": "https"}
        # a forged originator: the app answers 4106 from originator_check()
        status, rsc, _ = request("//m2m.example.com/cse-in/Cae2")
        assert (status, rsc) == (403, str(m2mpsk.ORIGINATOR_NOT_AUTHENTICATED))
        assert m2mpsk.ORIGINATOR_NOT_AUTHENTICATED == 4106
        # a client with the wrong key fails its handshake; the server goes on
        bad_ctx, _ = contexts()
        bad_ctx.keystore.add("ae1@onem2m.com", bytes(32), ida, IDB)
        bad_ctx.kpsa_id = "ae1@onem2m.com"
        with pytest.raises(m2mpsk.Failed) as e:
            request(ida, bad_ctx)
        assert e.value.reason == m2mpsk.REASON_BAD_KEY
        assert request(ida)[0] == 200
    finally:
        server.shutdown()
        t.join()
        server.server_close()


from test_sockets import OPENSSL, PSK_ARGS, openssl, read_until, stop  # noqa: E402

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


@needs_openssl
def test_wrap_socket_client_to_openssl_s_server():
    cli_ctx, _ = contexts()
    server = openssl(["s_server", "-nocert", "-accept", "127.0.0.1:0", "-tls1_2"] + PSK_ARGS)
    try:
        port = int(read_until(server, rb"ACCEPT.*:(\d+)\s").group(1))
        with cli_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=T)) as c:
            assert c.peer_id() == IDB and c.version() == "TLSv1.2"
            c.sendall(b"hello from wrap_socket\n")
            read_until(server, rb"hello from wrap_socket")
            server.stdin.write(b"hello from s_server\n")
            server.stdin.flush()
            with c.makefile("rb") as f:
                assert f.readline() == b"hello from s_server\n"
            c.shutdown(socket.SHUT_RDWR)
    finally:
        stop(server)


@needs_openssl
def test_wrap_socket_server_from_openssl_s_client():
    _, srv_ctx = contexts()
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(T)
        listener = srv_ctx.wrap_socket(lsock)  # lsock is detached: use listener
        client = openssl(["s_client", "-connect", "127.0.0.1:%d" % listener.getsockname()[1],
                          "-tls1_2"] + PSK_ARGS)
        try:
            with listener:
                conn, _ = listener.accept()
            with conn:
                conn.settimeout(T)
                conn.do_handshake()
                assert conn.peer_id() == "12-" + KPSA_ID and conn.credential()
                client.stdin.write(b"hello from s_client\n")
                client.stdin.flush()
                with conn.makefile("rb") as f:
                    assert f.readline() == b"hello from s_client\n"
                conn.sendall(b"hello from wrap_socket\n")
                read_until(client, rb"hello from wrap_socket")
        finally:
            stop(client)
