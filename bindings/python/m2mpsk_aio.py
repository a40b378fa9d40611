# DTLS for asyncio: create_dtls_server() serves many peers on one UDP
# socket, create_dtls_connection() is Entity A. Inserted into m2mpsk.py by
# m2mpsk_python_tail.swg after m2mpsk_context.py, whose _Bound, Context and
# HandshakeFailed it uses. (TLS needs nothing here: a Context is accepted as
# ssl= by asyncio's own open_connection() and start_server().)
#
# Each peer is one association, shaped for asyncio as a transport
# (DTLSTransport) and the application's protocol (an
# asyncio.DatagramProtocol: connection_made, datagram_received(data, addr),
# connection_lost). The retransmission timers run on the
# loop (call_at), on the loop's clock, which is the one handed to the
# library as now_ms.
import asyncio as _asyncio
import errno as _errno


_NEVER = float("inf")


def _loop_ms(loop):
    return int(loop.time() * 1000)


def _peer_tag(addr):
    host, port = addr[0], addr[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def _is_client_hello(data):
    """A DTLS handshake record (content type 22) whose first message is a
    ClientHello (type 1): the only datagram that may open an association."""
    return len(data) > 13 and data[0] == 22 and data[13] == 1


class DTLSObject(_Bound):
    """What get_extra_info("ssl_object") gives on a DTLSTransport: the
    association's accessors (peer_id(), credential(), kpsa_id(), suite(),
    version(), originator_check(), bind_ae_id(), cipher(),
    getpeercert(), association), as PSKObject has them. It reads nothing:
    the datagrams go to the protocol."""

    def __init__(self, assoc, server_side):
        self._assoc = assoc
        self._rbuf = bytearray()
        self._peer_closed = False
        self.server_side = server_side

    def pending(self):
        """0: every datagram is handed to the protocol as it arrives."""
        self._assoc_or_raise()
        return 0


class DTLSTransport(_asyncio.BaseTransport):
    """One peer's DTLS association, as an asyncio transport. write(data)
    sends one datagram (one record); close() sends close_notify and frees
    the association, and the protocol's connection_lost(None) follows.
    get_extra_info(): "peername" (the peer's address), "sockname",
    "socket", "ssl_object" (a DTLSObject: the bound identity),
    "peer_id", "kpsa_id" and "cipher"."""

    def __init__(self, peer, extra):
        super().__init__(extra)
        self._peer = peer

    def __repr__(self):
        state = "closed" if self._peer.closing else "open"
        return "<m2mpsk.DTLSTransport %s peer=%s>" % (state, self._peer.tag)

    def write(self, data):
        """Encrypts `data` into one record and sends it to the peer, as
        DatagramTransport.sendto() does: at most 16384 bytes (one record),
        else Error with E_INVALID, as once the transport is closed."""
        if data is None:
            raise _invalid("data is None")
        p = self._peer
        if p.closing:
            raise Error(E_INVALID, REASON_NONE, "the transport is closed")
        p.assoc.write(data)
        p.flush()

    def sendto(self, data, addr=None):
        """write(data); `addr`, when given, must be the peer's address."""
        if addr is not None and tuple(addr[:2]) != tuple(self._peer.addr[:2]):
            raise _invalid("a DTLSTransport sends only to its own peer")
        self.write(data)

    def is_closing(self):
        return self._peer.closing

    def close(self):
        """Sends close_notify, frees the association, then calls the
        protocol's connection_lost(None) soon. Again does nothing."""
        self._peer.shutdown(None, notify=True)

    def abort(self):
        """Frees the association at once, sending nothing; the protocol's
        connection_lost(None) follows."""
        self._peer.shutdown(None, notify=False)

    def get_protocol(self):
        return self._peer.protocol

    def set_protocol(self, protocol):
        self._peer.protocol = protocol


class _Peer:
    """One association on the loop: feeding, draining, the library's timer
    and our own deadline (handshake or idle time), and the hand-over to the
    protocol once established."""

    def __init__(self, owner, loop, assoc, addr, send, server_side):
        self.owner = owner
        self.loop = loop
        self.assoc = assoc
        self.addr = addr
        self.tag = _peer_tag(addr)
        self.send = send
        self.server_side = server_side
        self.protocol = None
        self.transport = None
        self.closing = False
        self.timer = None
        self.timer_at = None
        self.last = loop.time()
        self.born = self.last
        self.hello_random = None  # the server's: of the opening ClientHello
        self.key_task = None  # waits for the key request's answer

    def flush(self):
        while out := self.assoc.drain():
            self.send(out, self.addr)

    def arm(self):
        """Sets the loop timer to the earlier of the library's next
        timeout and our own deadline. A timer already set no later is
        kept: when it fires early, _fire() sets the next one, so that a
        busy peer does not cancel and make a timer per datagram."""
        if self.closing:
            return
        when = self.owner._deadline(self)
        t = self.assoc.next_timeout()
        if t is not None:
            # A millisecond late, so that the whole millisecond has passed
            # on the clock handed to the library when the timer fires.
            when = min(when, (t + 1) / 1000.0)
        if when == _NEVER:
            return
        if self.timer is not None:
            if self.timer_at <= when:
                return
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._fire)

    def _fire(self):
        self.timer = None
        self.timer_at = None
        if self.closing:
            return
        now = self.loop.time()
        if now >= self.owner._deadline(self):
            if self.protocol is None:
                self.shutdown(TimeoutError("the DTLS handshake timed out"), notify=False)
            else:
                self.shutdown(None, notify=True)  # idle
            return
        t = self.assoc.next_timeout()
        if t is not None and t <= _loop_ms(self.loop):
            try:
                self.assoc.handle_timeout(_loop_ms(self.loop))
            except Error as e:
                self.fail(e)
                return
            finally:
                if not self.closing:
                    self.flush()
            if self.after_input():
                return
        self.arm()

    def receive(self, data):
        self.last = self.loop.time()
        try:
            self.assoc.feed(data, _loop_ms(self.loop))
        except Failed as e:
            self.fail(e)
            return
        except Error:
            return  # E_LIMIT and the like: this datagram is dropped
        self.flush()
        if not self.after_input():
            self.arm()

    def after_input(self):
        """Moves on after input or a timer: hands over an established
        association, delivers its datagrams, ends a failed or closed one.
        True when the peer is gone."""
        st = self.assoc.state()
        if st == STATE_FAILED:
            self.fail(HandshakeFailed(E_FAILED, self.assoc.failure(),
                                      self.assoc.failure_detail())
                      if self.protocol is None else
                      Failed(E_FAILED, self.assoc.failure(), self.assoc.failure_detail()))
            return True
        if st == STATE_WAITING_KEY and not self.closing:
            self.wait_key()
            return False
        if st == STATE_HANDSHAKING or self.closing:
            return False
        if self.protocol is None:
            self.established()
            if self.closing:
                return True
        while not self.closing:
            try:
                data = self.assoc.read(16384)
            except Closed:
                self.shutdown(None, notify=False)
                return True
            except Failed as e:
                self.fail(e)
                return True
            if not data:
                break
            try:
                self.protocol.datagram_received(data, self.addr)
            except Exception as e:
                self.loop.call_exception_handler({
                    "message": "m2mpsk: the DTLS protocol failed in datagram_received",
                    "exception": e, "protocol": self.protocol})
        if self.assoc.state() == STATE_CLOSED and not self.closing:
            self.shutdown(None, notify=False)
        return self.closing

    def wait_key(self):
        """The handshake waits for a key: hands the keystore's new
        requests to its source, and resumes once this one is answered. The
        handshake deadline (arm()) still bounds the wait."""
        if self.key_task is not None and not self.key_task.done():
            return
        ks = self.owner._keystore()
        _key_dispatch(ks)
        req = self.assoc.key_request()
        if req is None:
            return
        self.key_task = self.loop.create_task(self._resume_when_answered(ks, req))

    async def _resume_when_answered(self, ks, req):
        try:
            await _key_wait_async(ks, req)
        finally:
            req.close()
        if self.closing or self.assoc.state() != STATE_WAITING_KEY:
            return
        try:
            self.assoc.resume(_loop_ms(self.loop))
        except Failed as e:
            self.fail(e)
            return
        except Error:
            return
        self.flush()
        if not self.after_input():
            self.arm()

    def established(self):
        sock = self.owner._socket()
        extra = {"peername": self.addr, "socket": sock,
                 "sockname": sock.getsockname() if sock is not None else None,
                 "ssl_object": DTLSObject(self.assoc, self.server_side),
                 "peer_id": self.assoc.peer_id(), "kpsa_id": self.assoc.kpsa_id(),
                 "cipher": (self.assoc.suite(), self.assoc.version(), None)}
        self.transport = DTLSTransport(self, extra)
        self.owner._established(self)

    def fail(self, exc):
        if self.protocol is None and isinstance(exc, Failed) \
                and not isinstance(exc, HandshakeFailed):
            exc = HandshakeFailed(exc.code, exc.reason, exc.detail)
        if not self.closing:
            try:
                self.flush()  # the alert, if any
            except Error:
                pass
        self.shutdown(exc, notify=False)

    def shutdown(self, exc, notify):
        """Ends the association once: close_notify (notify), free it,
        forget the peer, and tell the protocol (or a waiting opener)."""
        if self.closing:
            return
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.key_task is not None:
            self.key_task.cancel()
            self.key_task = None
        if notify and self.assoc.state() == STATE_ESTABLISHED:
            try:
                self.assoc.close_notify()
                self.flush()
            except Error:
                pass
        self.assoc.close()
        self.owner._forget(self, exc)
        if self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, exc)


class _Endpoint(_asyncio.DatagramProtocol):
    """The UDP socket's protocol: hands each datagram to its owner."""

    def __init__(self, owner):
        self.owner = owner
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.owner._datagram(data, addr)

    def error_received(self, exc):
        self.owner._error(exc)

    def connection_lost(self, exc):
        self.owner._lost(exc)


class DTLSServer:
    """Entity B over DTLS for asyncio: one UDP socket, one association per
    peer address, made by create_dtls_server(). close() ends every
    association (close_notify) and the socket; use `async with` or
    close() then wait_closed()."""

    def __init__(self, loop, context, protocol_factory, max_peers, idle_timeout,
                 handshake_timeout):
        self._loop = loop
        self.context = context
        self._factory = protocol_factory
        self.max_peers = max_peers
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self._peers = {}
        self._endpoint = None
        self._closed = loop.create_future()
        self._cookies = True
        self.cookies_sent = 0
        self.dropped = 0
        self.replaced = 0

    def __repr__(self):
        return "<m2mpsk.DTLSServer sockname=%r peers=%d>" % (
            self.sockname if self._endpoint else None, len(self._peers))

    # What the peers and the endpoint call.

    def _socket(self):
        return self._endpoint.transport.get_extra_info("socket")

    def _keystore(self):
        return self.context.keystore

    def _deadline(self, peer):
        if peer.protocol is None:
            return peer.born + self.handshake_timeout
        return peer.last + self.idle_timeout

    def _send(self, data, addr):
        t = self._endpoint.transport
        if t is not None and not t.is_closing():
            t.sendto(data, addr)

    def _established(self, peer):
        try:
            peer.protocol = self._factory()
            peer.protocol.connection_made(peer.transport)
        except Exception as e:
            peer.protocol = None
            self._loop.call_exception_handler({
                "message": "m2mpsk: the DTLS protocol failed in connection_made",
                "exception": e})
            peer.shutdown(e, notify=True)

    def _forget(self, peer, exc):
        if self._peers.get(peer.addr) is peer:
            del self._peers[peer.addr]

    def _datagram(self, data, addr):
        peer = self._peers.get(addr)
        if peer is not None:
            if not self._restarted(peer, data):
                peer.receive(data)
                return
        elif self._endpoint.transport.is_closing() or not _is_client_hello(data) \
                or len(self._peers) >= self.max_peers:
            self.dropped += 1
            return
        tag = _peer_tag(addr)
        if self._cookies:
            hvr = self._listen(tag, data)
            if hvr is False:
                self.dropped += 1
                return
            if hvr is not None:
                self._send(hvr, addr)
                self.cookies_sent += 1
                return
        if peer is not None:
            # The peer restarted on the same address and proved it with a
            # cookie (RFC 6347 4.2.8): its old association goes.
            self.replaced += 1
            peer.shutdown(ConnectionResetError("the peer started a new handshake"),
                          notify=False)
        self._open(addr, tag, data)

    def _listen(self, tag, data):
        """dtls_listen(): the HelloVerifyRequest, None for a valid cookie
        (or no cookie exchange), False to drop the datagram."""
        try:
            return self.context.config.dtls_listen(tag, data)
        except Error as e:
            if e.code != E_UNSUPPORTED:
                return False
            self._cookies = False  # BoringSSL: no cookie exchange
            return None

    def _restarted(self, peer, data):
        """True for a ClientHello of epoch 0 from an established peer that
        is not a copy of the one that opened its association: a client
        that restarted on the same address. Only with cookies, the proof
        that it owns the address; else the old association stays until
        its idle timeout."""
        return (self._cookies and peer.protocol is not None and _is_client_hello(data)
                and data[3:5] == b"\0\0" and data[27:59] != peer.hello_random)

    def _open(self, addr, tag, data):
        cfg = self.context.config
        try:
            a = Association(ROLE_RESPONDER, TRANSPORT_DTLS, cfg, self.context.keystore)
        except Error:
            self.dropped += 1  # E_LIMIT (max_handshakes) and the like
            return
        try:
            a.set_peer_tag(tag)
            a.start(_loop_ms(self._loop), int(_time.time()))
        except Error:
            a.close()
            self.dropped += 1
            return
        peer = _Peer(self, self._loop, a, addr, self._send, True)
        peer.hello_random = data[27:59]
        self._peers[addr] = peer
        peer.receive(data)

    def _error(self, exc):
        pass  # ICMP errors for one peer concern no other

    def _lost(self, exc):
        for p in list(self._peers.values()):
            p.shutdown(exc, notify=False)
        if not self._closed.done():
            self._closed.set_result(None)

    # The application's side.

    @property
    def sockname(self):
        """The UDP socket's address."""
        return self._endpoint.transport.get_extra_info("sockname")

    def peer_count(self):
        """How many peers hold an association now (handshaking or
        established)."""
        return len(self._peers)

    def is_serving(self):
        return not self._endpoint.transport.is_closing()

    def close(self):
        """Sends close_notify to every established peer, frees every
        association and closes the socket; each protocol's
        connection_lost(None) follows."""
        for p in list(self._peers.values()):
            p.shutdown(None, notify=True)
        self._endpoint.transport.close()

    async def wait_closed(self):
        await _asyncio.shield(self._closed)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
        await self.wait_closed()
        return False


def _dtls_context(ctx):
    if not isinstance(ctx, Context):
        raise _invalid("ctx must be an m2mpsk.Context")
    return ctx


async def create_dtls_server(ctx, protocol_factory, local_addr, max_peers=1024,
                             idle_timeout=300.0, handshake_timeout=60.0, **kwargs):
    """Serves DTLS-PSK as Entity B on one UDP socket bound to local_addr
    ((host, port); port 0 picks one), returning a DTLSServer. Each peer
    address gets its own association and, once its handshake completes,
    protocol_factory()'s protocol (an asyncio.DatagramProtocol) with a
    DTLSTransport. A new address is answered with the cookie exchange
    (Config.dtls_listen()): only a ClientHello carrying a valid cookie for
    its address makes an association, so a forged source costs nothing
    (with an engine without it, BoringSSL, the association is made at
    once). At most max_peers associations exist at a time (others' first
    datagrams are dropped); a handshake longer than handshake_timeout
    seconds, or an established peer silent for idle_timeout seconds, is
    ended. Datagrams that are not DTLS are dropped. kwargs go to
    loop.create_datagram_endpoint() (reuse_port...)."""
    ctx = _dtls_context(ctx)
    if max_peers is None or max_peers < 1 or idle_timeout is None or idle_timeout <= 0 \
            or handshake_timeout is None or handshake_timeout <= 0:
        raise _invalid("max_peers, idle_timeout and handshake_timeout must be positive")
    loop = _asyncio.get_running_loop()
    srv = DTLSServer(loop, ctx, protocol_factory, max_peers, idle_timeout, handshake_timeout)
    _, srv._endpoint = await loop.create_datagram_endpoint(
        lambda: _Endpoint(srv), local_addr=local_addr, **kwargs)
    return srv


class _Client:
    """create_dtls_connection()'s side of the socket: one peer."""

    def __init__(self, loop, protocol_factory, handshake_timeout):
        self._loop = loop
        self._factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = _NEVER
        self.peer = None
        self.endpoint = None
        self.keystore = None
        self.opened = loop.create_future()

    def _socket(self):
        return self.endpoint.transport.get_extra_info("socket")

    def _keystore(self):
        return self.keystore

    def _deadline(self, peer):
        if peer.protocol is None:
            return peer.born + self.handshake_timeout
        return _NEVER

    def _send(self, data, addr):
        t = self.endpoint.transport
        if t is not None and not t.is_closing():
            t.sendto(data)

    def _established(self, peer):
        try:
            peer.protocol = self._factory()
            peer.protocol.connection_made(peer.transport)
        except Exception as e:
            peer.protocol = None
            peer.shutdown(e, notify=True)  # create_dtls_connection() raises it
            return
        if not self.opened.done():
            self.opened.set_result((peer.transport, peer.protocol))

    def _forget(self, peer, exc):
        if not self.opened.done():
            self.opened.set_exception(exc if exc is not None else
                                      ConnectionAbortedError("the association ended"))
        self.endpoint.transport.close()

    def _datagram(self, data, addr):
        if self.peer is not None:
            self.peer.receive(data)

    def _error(self, exc):
        # A refused port (ICMP) before the handshake completes ends it.
        if self.peer is not None and self.peer.protocol is None \
                and getattr(exc, "errno", None) == _errno.ECONNREFUSED:
            self.peer.shutdown(exc, notify=False)

    def _lost(self, exc):
        if self.peer is not None:
            self.peer.shutdown(exc, notify=False)


async def create_dtls_connection(ctx, protocol_factory, remote_addr, local_addr=None,
                                 kpsa_id=None, handshake_timeout=60.0, **kwargs):
    """Entity A over DTLS: connects a UDP socket to remote_addr, runs the
    handshake with ctx's KpsaID (or kpsa_id) and returns (DTLSTransport,
    protocol) once it completes, as loop.create_datagram_endpoint() does.
    Raises HandshakeFailed (with the reason) when the handshake fails,
    TimeoutError after handshake_timeout seconds, ConnectionRefusedError
    when the port is closed."""
    ctx = _dtls_context(ctx)
    kid = kpsa_id if kpsa_id is not None else ctx.kpsa_id
    if kid is None:
        raise _invalid("an initiator needs a KpsaID: Context(kpsa_id=...) or kpsa_id=")
    if handshake_timeout is None or handshake_timeout <= 0:
        raise _invalid("handshake_timeout must be positive")
    loop = _asyncio.get_running_loop()
    cl = _Client(loop, protocol_factory, handshake_timeout)
    cl.keystore = ctx.keystore
    a = Association(ROLE_INITIATOR, TRANSPORT_DTLS, ctx.config, ctx.keystore, kid)
    try:
        _, cl.endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(cl), remote_addr=remote_addr, local_addr=local_addr, **kwargs)
    except BaseException:
        a.close()
        raise
    peer = _Peer(cl, loop, a, cl.endpoint.transport.get_extra_info("peername"), cl._send, False)
    cl.peer = peer
    try:
        a.start(_loop_ms(loop), int(_time.time()))
        peer.flush()
        if a.state() == STATE_WAITING_KEY:
            peer.wait_key()  # an initiator's own KpsaID, from the source
        peer.arm()
        return await cl.opened
    except BaseException:
        peer.shutdown(None, notify=False)
        raise
