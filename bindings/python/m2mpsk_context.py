# The drop-in layer, modelled on the standard library's ssl module: Context
# (ssl.SSLContext), PSKSocket (ssl.SSLSocket) and PSKObject (ssl.SSLObject
# over ssl.MemoryBIO). TLS only. Inserted into m2mpsk.py by
# m2mpsk_python_tail.swg, after Error, Failed and Closed: `import m2mpsk`
# stays the one module. The standard modules are imported under private
# names so that they do not become m2mpsk's public names.
import select as _select
import socket as _socket
import ssl as _ssl
import sys as _sys
import time as _time
import weakref as _weakref


class WantRead(Error, _ssl.SSLWantReadError):
    """A non-blocking operation must wait until the socket is readable (or,
    for a PSKObject, until more bytes are written into its incoming
    MemoryBIO). Also an ssl.SSLWantReadError, so code written for the ssl
    module catches it unchanged. code is E_AGAIN."""


class WantWrite(Error, _ssl.SSLWantWriteError):
    """A non-blocking operation must wait until the socket is writable.
    Also an ssl.SSLWantWriteError. code is E_AGAIN. A PSKObject never raises
    it: its outgoing MemoryBIO is unbounded."""


class HandshakeFailed(Failed, _ssl.SSLError):
    """The handshake of a PSKObject failed (code E_FAILED; reason says
    why: REASON_BAD_KEY, REASON_UNKNOWN_IDENTITY, REASON_PEER_ALERT...).
    Also an ssl.SSLError, as ssl.SSLObject.do_handshake() raises, so that
    asyncio ends the connection quietly and open_connection() raises it."""


class ZeroReturn(Closed, _ssl.SSLZeroReturnError):
    """A PSKObject's write() after the peer's close_notify (code E_CLOSED).
    Also an ssl.SSLZeroReturnError, as ssl.SSLObject.write() raises then."""


def _now_ms():
    return int(_time.monotonic() * 1000)


def _invalid(detail):
    return Error(E_INVALID, REASON_NONE, detail)


class _Bound:
    """What PSKSocket and PSKObject share: the association they drive, and
    its oneM2M accessors. Each accessor raises Error (E_INVALID, "the handle
    is closed") once the object is closed, as Association's do."""

    def _assoc_or_raise(self):
        a = self._assoc
        if a is None:
            raise Error(E_STATE, REASON_NONE, "not a connection: no association")
        a.state()  # a closed handle raises Error, E_INVALID
        return a

    @property
    def association(self):
        """The Association this object drives (None for a listening
        PSKSocket). Call its methods only between this object's calls."""
        return self._assoc

    def peer_id(self):
        """The identity the association is bound to (see
        Association.peer_id()); None before the handshake completes."""
        return self._assoc_or_raise().peer_id()

    def credential(self):
        """True when peer_id() is a Credential-ID ("12-<KpsaID>")."""
        return self._assoc_or_raise().peer_id_is_credential()

    def local_id(self):
        """This side's identity (Association.local_id())."""
        return self._assoc_or_raise().local_id()

    def kpsa_id(self):
        """The KpsaID in use, once known."""
        return self._assoc_or_raise().kpsa_id()

    def suite(self):
        """The negotiated cipher suite's IANA name, once established."""
        return self._assoc_or_raise().suite()

    def version(self):
        """The negotiated protocol version, e.g. "TLSv1.2"."""
        return self._assoc_or_raise().version()

    def engine(self):
        """The engine running the association (an ENGINE_ constant)."""
        return self._assoc_or_raise().engine()

    def bind_ae_id(self, ae_id):
        """Binds the AE-ID assigned at registration (Association.bind_ae_id())."""
        self._assoc_or_raise().bind_ae_id(ae_id)

    def originator_check(self, from_, flags=0):
        """Checks a request's From (X-M2M-Origin) against what this
        association is bound to (Association.originator_check(): the binding
        and the local CSE-ID come from the association). Returns the
        verdict: ORIGINATOR_ACCEPT, or the oneM2M response status code to
        answer (4106, 4107)."""
        return self._assoc_or_raise().originator_check(from_, flags)

    def pending(self):
        """How many decrypted bytes are ready to be read without waiting,
        as ssl's pending() counts them."""
        self._assoc_or_raise()
        if self._assoc.state() in (STATE_ESTABLISHED, STATE_CLOSED):
            self._fill()
        return len(self._rbuf)

    def getpeercert(self, binary_form=False):
        """None: a PSK association has no certificate (what
        ssl.SSLSocket.getpeercert() answers when the peer sent none)."""
        self._assoc_or_raise()
        return None

    def cipher(self):
        """(suite, version, None), as ssl's cipher() shapes it; None before
        the handshake completes."""
        a = self._assoc_or_raise()
        if a.state() in (STATE_HANDSHAKING, STATE_WAITING_KEY) or a.suite() is None:
            return None
        return (a.suite(), a.version(), None)

    def _new_assoc(self, context, server_side, kpsa_id):
        role = ROLE_RESPONDER if server_side else ROLE_INITIATOR
        if server_side:
            return Association(role, TRANSPORT_TLS, context.config, context.keystore)
        kid = kpsa_id if kpsa_id is not None else context.kpsa_id
        if kid is None:
            raise _invalid("an initiator needs a KpsaID: Context(kpsa_id=...) or kpsa_id=")
        return Association(role, TRANSPORT_TLS, context.config, context.keystore, kid)

    def _take(self, n):
        data = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return data

    def _fill(self):
        """Moves every decrypted byte the library holds into the read
        buffer, so that pending() counts them."""
        while not self._peer_closed:
            try:
                data = self._assoc.read(16384)
            except Closed:
                self._peer_closed = True
                return
            if not data:
                return
            self._rbuf += data

    def _start(self):
        a = self._assoc
        if a.state() == STATE_IDLE:
            a.start(_now_ms(), int(_time.time()))


class Context:
    """Builds TLS-PSK connections the way ssl.SSLContext builds TLS ones:
    wrap_socket() for sockets, wrap_bio() over ssl.MemoryBIO.

    keystore: the records (a Keystore; a new empty one when None, to fill
    through context.keystore). config: engine, suites, limits, local
    identities, events (a Config; a new one when None). server_side: the
    default role of wrap_socket()/wrap_bio(); a responder's config needs a
    local identity (config.add_local_id()), an initiator's must have none.
    kpsa_id: the record an initiator uses, unless wrap_socket() names
    another. The keystore and config are shared by every connection made,
    and kept open by them.

    verify_mode (ssl.CERT_NONE) and check_hostname (False) exist so that
    code written for ssl.SSLContext (http.client.HTTPSConnection) accepts a
    Context: there is no certificate, the key authenticates both ends and
    the association binds the record's identities."""

    def __init__(self, server_side=False, keystore=None, config=None, kpsa_id=None):
        self.keystore = keystore if keystore is not None else Keystore()
        self.config = config if config is not None else Config()
        self.server_side = bool(server_side)
        self.kpsa_id = kpsa_id
        self.verify_mode = _ssl.CERT_NONE
        self.check_hostname = False

    def wrap_socket(self, sock, server_side=None, do_handshake_on_connect=True,
                    suppress_ragged_eofs=True, server_hostname=None, kpsa_id=None):
        """Returns a PSKSocket over `sock` (a SOCK_STREAM socket, connected
        or listening), which it takes over: `sock` is detached and must not
        be used again. server_side None means the context's. A connected
        socket handshakes now when do_handshake_on_connect (raising Failed,
        or socket.timeout), else on the first read or write, or
        do_handshake(). A listening one returns connections from accept().
        server_hostname is accepted for ssl's signature and not sent: the
        initiator sends the SNI host of its record's IdB
        (m2mpsk.idb_server_name()). suppress_ragged_eofs: a TCP close
        without close_notify reads as b"" (True) or raises Closed."""
        if sock is None:
            raise _invalid("sock is None")
        side = self.server_side if server_side is None else bool(server_side)
        return PSKSocket._create(sock, self, side, do_handshake_on_connect,
                                 suppress_ragged_eofs, kpsa_id)

    def wrap_bio(self, incoming, outgoing, server_side=None, server_hostname=None,
                 kpsa_id=None):
        """Returns a PSKObject that reads the peer's bytes from `incoming`
        and writes its own to `outgoing` (ssl.MemoryBIO objects), as
        ssl.SSLContext.wrap_bio() does."""
        if incoming is None or outgoing is None:
            raise _invalid("incoming or outgoing is None")
        side = self.server_side if server_side is None else bool(server_side)
        obj = PSKObject(self, incoming, outgoing, side, kpsa_id,
                        None if side else server_hostname)
        # asyncio's SSL protocol calls wrap_bio() from its __init__ (a
        # subclass's wrap_bio() may come between): a handshake that waits
        # for a key has it call do_handshake() again once the key source
        # answers, since no bytes from the peer will.
        f = _sys._getframe(1)
        for _ in range(4):
            if f is None:
                break
            caller = f.f_locals.get("self")
            if type(caller).__name__ == "SSLProtocol" and hasattr(caller, "_do_handshake"):
                obj._protocol = _weakref.ref(caller)
                break
            f = f.f_back
        return obj


class PSKObject(_Bound):
    """ssl.SSLObject's shape over two ssl.MemoryBIO objects: no I/O of its
    own. do_handshake(), read() and write() raise WantRead when they need
    more bytes in `incoming`; what they produce is in `outgoing` when they
    return or raise. A failed handshake raises HandshakeFailed, a failed
    record Failed, after writing the alert to `outgoing`. close() frees the
    association (with also closes it); anything left is freed by the
    collector. Complete enough for asyncio's SSL protocol: a Context is
    accepted as ssl= by asyncio.open_connection() and start_server(), and
    the stream's get_extra_info("ssl_object") is this object."""

    def __init__(self, context, incoming, outgoing, server_side, kpsa_id=None,
                 server_hostname=None):
        self._assoc = None
        self._rbuf = bytearray()
        self._peer_closed = False
        self._incoming = incoming
        self._outgoing = outgoing
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.context = context
        self._protocol = None
        self._kick = None
        self._assoc = self._new_assoc(context, server_side, kpsa_id)

    def close(self):
        """Frees the association; again does nothing. Sends nothing: unwrap()
        sends close_notify."""
        if self._assoc is not None:
            self._assoc.close()

    def __enter__(self):
        self._assoc_or_raise()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _flush(self):
        while out := self._assoc.drain():
            self._outgoing.write(out)

    def _pump(self):
        """Feeds what `incoming` holds; False when it held nothing."""
        data = self._incoming.read()
        if not data:
            return False
        try:
            self._assoc.feed(data, _now_ms())
        finally:
            self._flush()
        return True

    def _timers(self):
        t = self._assoc.next_timeout()
        if t is not None and t <= _now_ms():
            try:
                self._assoc.handle_timeout(_now_ms())
            finally:
                self._flush()

    def do_handshake(self):
        """Runs the handshake as far as the bytes in `incoming` allow.
        Raises WantRead until it completes, Failed when it fails."""
        a = self._assoc_or_raise()
        self._start()
        self._flush()
        try:
            while True:
                st = a.state()
                if st == STATE_WAITING_KEY:
                    self._timers()  # the handshake timeout covers the wait
                    if a.state() == STATE_WAITING_KEY and not self._key_resume():
                        raise WantRead(E_AGAIN, REASON_NONE,
                                       "the handshake waits for its key")
                    continue
                if st != STATE_HANDSHAKING:
                    break
                self._timers()
                if not self._pump():
                    if self._incoming.eof:
                        raise HandshakeFailed(
                            E_FAILED, REASON_PROTOCOL,
                            "the peer closed the connection during the handshake")
                    raise WantRead(E_AGAIN, REASON_NONE, "the handshake needs the peer's bytes")
        except Failed as e:
            if isinstance(e, HandshakeFailed):
                raise
            raise HandshakeFailed(e.code, e.reason, e.detail) from None
        if a.state() == STATE_FAILED:
            raise HandshakeFailed(E_FAILED, a.failure(), a.failure_detail())

    def _key_resume(self):
        """Resumes a handshake whose key request is answered; False while
        it is open, after arranging (under asyncio) that asyncio's protocol
        runs the handshake again once it is answered."""
        a = self._assoc
        ks = self.context.keystore
        _key_dispatch(ks)
        req = a.key_request()
        if req is None:
            return True
        if not req.answered():
            self._arm_kick(ks, req)
            return False
        req.close()
        try:
            a.resume(_now_ms())
        finally:
            self._flush()
        return True

    def _arm_kick(self, ks, req):
        if self._protocol is None or (self._kick is not None and not self._kick.done()):
            req.close()
            return
        try:
            loop = _asyncio_running_loop()
        except RuntimeError:
            req.close()
            return
        self._kick = loop.create_task(self._kick_when_answered(ks, req))

    async def _kick_when_answered(self, ks, req):
        try:
            t = self._assoc.next_timeout()  # the handshake deadline
            wait = None if t is None else max(0.0, (t - _now_ms()) / 1000) + 0.002
            try:
                await _asyncio.wait_for(_key_wait_async(ks, req), wait)
            except _asyncio.TimeoutError:
                pass  # do_handshake() fails it (REASON_TIMEOUT)
        finally:
            req.close()
        proto = self._protocol()
        if proto is None or getattr(proto, "_sslobj", None) is not self:
            return
        if getattr(getattr(proto, "_state", None), "name", None) != "DO_HANDSHAKE":
            return
        try:
            proto._do_handshake()
        except Exception as e:  # a closed object: the connection is gone
            _key_log.debug("resuming a handshake failed: %s", type(e).__name__)

    def read(self, len=1024, buffer=None):
        """Returns up to `len` bytes of application data, or with `buffer`
        reads into it and returns the count. Raises WantRead when no whole
        record is in `incoming` yet. After the peer's close_notify it returns
        b"" (0); after a TCP close without one (incoming.eof) also b"" (0)."""
        self._assoc_or_raise()
        if buffer is not None:
            room = memoryview(buffer).nbytes
            len = room if len is None or len <= 0 else min(len, room)
        if len is None or len <= 0:
            return self._deliver(b"", buffer)
        self.do_handshake()
        while True:
            if self._rbuf:
                return self._deliver(self._take(len), buffer)
            self._fill()
            if self._rbuf:
                continue
            if self._peer_closed:
                self._flush()
                return self._deliver(b"", buffer)
            if not self._pump():
                if self._incoming.eof:
                    return self._deliver(b"", buffer)
                raise WantRead(E_AGAIN, REASON_NONE, "no whole record has arrived")

    @staticmethod
    def _deliver(data, buffer):
        if buffer is None:
            return data
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def write(self, data):
        """Encrypts `data` into `outgoing`; returns len(data). Runs the
        handshake first when it has not completed (WantRead until then).
        Raises ZeroReturn after the peer's close_notify."""
        a = self._assoc_or_raise()
        if data is None:
            raise _invalid("data is None")
        self.do_handshake()
        try:
            a.write(data)
        except Closed as e:
            raise ZeroReturn(e.code, e.reason, e.detail) from None
        self._flush()
        return memoryview(data).nbytes

    def compression(self):
        """None: TLS compression is never negotiated."""
        self._assoc_or_raise()
        return None

    def selected_alpn_protocol(self):
        """None: no ALPN protocol is negotiated."""
        self._assoc_or_raise()
        return None

    def shared_ciphers(self):
        """None: the library does not say which suites both ends offered
        (suite() is the one negotiated)."""
        self._assoc_or_raise()
        return None

    def unwrap(self):
        """Sends close_notify into `outgoing` and returns None. Unlike
        ssl.SSLObject.unwrap() it does not wait for the peer's: the library
        stops reading once it has sent close_notify (STATE_CLOSED)."""
        a = self._assoc_or_raise()
        if a.state() in (STATE_ESTABLISHED, STATE_CLOSED):
            a.close_notify()
        self._flush()
        return None


def _poll_wait(fd, write, seconds):
    """True when fd is ready within `seconds` (None: no limit)."""
    p = _select.poll()
    p.register(fd, _select.POLLOUT if write else _select.POLLIN)
    ms = None if seconds is None else max(0, int(seconds * 1000 + 0.999))
    return bool(p.poll(ms))


_Socket = _socket.socket


class PSKSocket(_Socket, _Bound):
    """ssl.SSLSocket's shape: a socket.socket whose send/recv go through an
    association. Blocking, timeout (settimeout(): each call is bounded by
    it and raises socket.timeout) and non-blocking sockets (WantRead,
    WantWrite) behave as SSLSocket's do, and the config's handshake timeout
    runs while a call waits. makefile() works, so http.client, socketserver
    and werkzeug use it unchanged. A listening PSKSocket's accept() returns
    PSKSocket connections whose handshake runs on their first read or
    write, in the thread that uses them, so that a slow or failing peer does
    not hold up the accept loop. Once closed (close() with no makefile()
    file left open, or detach() or unwrap()) the association is freed and
    every method of PSKSocket's own raises Error (E_INVALID), as
    Association's do."""

    @classmethod
    def _create(cls, sock, context, server_side, do_handshake_on_connect,
                suppress_ragged_eofs, kpsa_id):
        if sock.type != _socket.SOCK_STREAM:
            raise Error(E_UNSUPPORTED, REASON_NONE, "TLS only: a SOCK_STREAM socket")
        try:
            sock.getpeername()
            connected = True
        except OSError:
            connected = False
        listening = not connected and \
            sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN) != 0
        if not connected and not listening:
            raise Error(E_STATE, REASON_NONE, "the socket is neither connected nor listening")
        timeout = sock.gettimeout()
        self = cls(sock.family, sock.type, sock.proto, fileno=sock.fileno())
        self._released = False
        self._assoc = None
        sock.detach()
        self.settimeout(timeout)
        self.context = context
        self.server_side = server_side
        self.do_handshake_on_connect = do_handshake_on_connect
        self.suppress_ragged_eofs = suppress_ragged_eofs
        self._out = b""
        self._unfed = b""
        self._eof = False
        self._rbuf = bytearray()
        self._peer_closed = False
        if listening:
            return self
        try:
            self._assoc = self._new_assoc(context, server_side, kpsa_id)
            if do_handshake_on_connect:
                self.do_handshake()
        except BaseException:
            self.close()
            raise
        return self

    def __repr__(self):
        if getattr(self, "_released", True):
            return "<m2mpsk.PSKSocket closed>"
        return "<m2mpsk.PSKSocket fd=%d server_side=%s>" % (self.fileno(), self.server_side)

    def _check(self):
        if getattr(self, "_released", True):
            raise Error(E_INVALID, REASON_NONE, "the handle is closed")

    def _assoc_or_raise(self):
        self._check()
        return _Bound._assoc_or_raise(self)

    def __enter__(self):
        self._check()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _release(self):
        if not getattr(self, "_released", True):
            self._released = True
            if self._assoc is not None:
                self._assoc.close()

    def _real_close(self):
        # socket.close() calls it once no makefile() file is open: the
        # association lives as long as the file that reads through it.
        self._release()
        _Socket._real_close(self)

    def detach(self):
        """Frees the association and returns the file descriptor, as
        socket.detach() does."""
        self._check()
        self._release()
        return _Socket.detach(self)

    # Waiting. Each call's deadline is the socket's timeout from the start
    # of the call; the association's own timer (handshake timeout, record
    # expiry) is honoured while waiting.

    def _deadline(self):
        t = self.gettimeout()
        return None if t is None else _time.monotonic() + t

    def _wait(self, write, deadline):
        if self.gettimeout() == 0.0:
            if write:
                raise WantWrite(E_AGAIN, REASON_NONE, "the socket is not writable")
            raise WantRead(E_AGAIN, REASON_NONE, "the socket is not readable")
        while True:
            wait = None if deadline is None else max(0.0, deadline - _time.monotonic())
            timer = self._assoc.next_timeout()
            if timer is not None:
                t = max(0.0, (timer - _now_ms()) / 1000)
                wait = t if wait is None else min(wait, t)
            if _poll_wait(self.fileno(), write, wait):
                return
            if timer is not None and timer <= _now_ms():
                try:
                    self._assoc.handle_timeout(_now_ms())
                finally:
                    self._flush_quietly()
                continue
            if deadline is not None and _time.monotonic() >= deadline:
                raise _socket.timeout("the %s operation timed out" %
                                      ("write" if write else "read"))

    def _flush(self, deadline):
        """Sends every drained byte; WantWrite (non-blocking) or
        socket.timeout when the socket takes no more in time."""
        self._out += self._assoc.drain()
        while self._out:
            if self.gettimeout() != 0.0:
                self._wait(True, deadline)
            try:
                n = _Socket.send(self, self._out)
            except (BlockingIOError, InterruptedError):
                self._wait(True, deadline)
                continue
            self._out = self._out[n:]
            if not self._out:
                self._out = self._assoc.drain()

    def _flush_quietly(self):
        """After a failure: the alert goes out if the socket takes it now."""
        try:
            self._out += self._assoc.drain()
            if self._out:
                n = _Socket.send(self, self._out, _socket.MSG_DONTWAIT)
                self._out = self._out[n:]
        except (OSError, Error):
            pass

    def _feed(self, data):
        try:
            self._assoc.feed(data, _now_ms())
        except Failed:
            self._flush_quietly()
            raise
        except Error as e:
            if e.code != E_LIMIT:
                raise
            self._unfed = data  # read what waits, then feed it again
            return
        self._unfed = b""

    def _receive(self, deadline):
        """Feeds what the socket has, waiting for it; False at EOF."""
        if self._unfed:
            self._feed(self._unfed)
            return True
        while True:
            if self.gettimeout() != 0.0:
                self._wait(False, deadline)
            try:
                data = _Socket.recv(self, 16384 + 2048)
            except (BlockingIOError, InterruptedError):
                self._wait(False, deadline)
                continue
            if not data:
                self._eof = True
                return False
            self._feed(data)
            return True

    def do_handshake(self, block=False):
        """Runs the handshake: to completion on a blocking socket (bounded
        by its timeout, raising socket.timeout, and by the config's
        handshake timeout, raising Failed), as far as it goes on a
        non-blocking one (WantRead, WantWrite). Raises Failed, with the
        status code and reason, when it fails, including when the peer
        closes or resets the connection first (REASON_PROTOCOL)."""
        a = self._assoc_or_raise()
        self._start()
        deadline = self._deadline()
        while True:
            self._flush(deadline)
            st = a.state()
            if st == STATE_WAITING_KEY:
                self._wait_key(deadline)
                continue
            if st != STATE_HANDSHAKING:
                break
            try:
                more = self._receive(deadline)
            except ConnectionError as e:
                raise Failed(E_FAILED, REASON_PROTOCOL,
                             "the connection was reset during the handshake") from e
            if not more:
                raise Failed(E_FAILED, REASON_PROTOCOL,
                             "the peer closed the connection during the handshake")
        if st == STATE_FAILED:
            raise Failed(E_FAILED, a.failure(), a.failure_detail())

    def _wait_key(self, deadline):
        """Waits for the key request of a handshake in STATE_WAITING_KEY
        (answered by the keystore's key source, which must be a plain
        callable, or by another thread), bounded by the socket's timeout and
        the handshake timeout, then resumes it."""
        a = self._assoc
        ks = self.context.keystore
        _key_dispatch(ks)
        req = a.key_request()
        if req is None:
            return
        try:
            if self.gettimeout() == 0.0 and not req.answered():
                raise WantRead(E_AGAIN, REASON_NONE, "the handshake waits for its key")
            timer = a.next_timeout()
            until = deadline
            if timer is not None:
                t = _time.monotonic() + max(0.0, (timer - _now_ms()) / 1000)
                until = t if until is None else min(until, t)
            answered = _key_wait_blocking(ks, req, until)
        finally:
            req.close()
        try:
            if answered:
                a.resume(_now_ms())
                return
            timer = a.next_timeout()
            if timer is not None and timer <= _now_ms():
                a.handle_timeout(_now_ms())
                return
            if deadline is None or _time.monotonic() < deadline:
                return  # woke a little early: wait again
        except Failed:
            self._flush_quietly()
            raise
        raise _socket.timeout("the handshake timed out waiting for its key")

    def _read(self, n):
        a = self._assoc_or_raise()
        if a.state() in (STATE_IDLE, STATE_HANDSHAKING, STATE_WAITING_KEY):
            self.do_handshake()
        deadline = self._deadline()
        while True:
            if self._rbuf:
                return self._take(n)
            self._fill()
            if self._rbuf:
                continue
            if self._peer_closed:
                return b""
            if self._eof and not self._unfed:
                break
            self._flush(deadline)
            if not self._receive(deadline):
                break
        if self.suppress_ragged_eofs:
            return b""
        raise Closed(E_CLOSED, REASON_NONE, "the peer closed the connection without close_notify")

    def recv(self, bufsize, flags=0):
        """Up to `bufsize` bytes of application data; b"" at the end (the
        peer's close_notify, or a TCP close: see suppress_ragged_eofs)."""
        self._assoc_or_raise()
        if bufsize is None or flags:
            raise _invalid("bufsize is None, or flags are given")
        if bufsize <= 0:
            return b""
        return self._read(bufsize)

    def recv_into(self, buffer, nbytes=0, flags=0):
        """recv() into `buffer`; returns the count."""
        self._assoc_or_raise()
        if buffer is None or flags:
            raise _invalid("buffer is None, or flags are given")
        view = memoryview(buffer).cast("B")
        n = min(nbytes or view.nbytes, view.nbytes)
        if n <= 0:
            return 0
        data = self._read(n)
        view[:len(data)] = data
        return len(data)

    def send(self, data, flags=0):
        """Encrypts and sends `data`; returns len(data). On a non-blocking
        socket the records the socket does not take at once are kept and
        sent first by the next call, which raises WantWrite, accepting
        nothing, while they wait."""
        a = self._assoc_or_raise()
        if data is None or flags:
            raise _invalid("data is None, or flags are given")
        if a.state() in (STATE_IDLE, STATE_HANDSHAKING, STATE_WAITING_KEY):
            self.do_handshake()
        deadline = self._deadline()
        if self._out:
            self._flush(deadline)
        a.write(data)
        try:
            self._flush(deadline)
        except WantWrite:
            pass  # data is taken; the rest goes out with the next call
        return memoryview(data).nbytes

    def sendall(self, data, flags=0):
        """send(), then waits until every record is sent."""
        self.send(data, flags)
        self._flush(self._deadline())

    def shutdown(self, how):
        """Sends close_notify (for SHUT_WR and SHUT_RDWR, once the
        handshake has completed), then shuts the socket down as
        socket.shutdown() does."""
        self._check()
        if how is None:
            raise _invalid("how is None")
        a = self._assoc
        if a is not None and how in (_socket.SHUT_WR, _socket.SHUT_RDWR) \
                and a.state() in (STATE_ESTABLISHED, STATE_CLOSED):
            try:
                a.close_notify()
                self._flush(self._deadline())
            except (Error, OSError):
                pass
        _Socket.shutdown(self, how)

    def unwrap(self):
        """Sends close_notify and returns the plain socket.socket; this
        object is closed. Unlike ssl.SSLSocket.unwrap() it does not wait for
        the peer's close_notify: the library stops reading once it has sent
        its own, so the peer's arrives on the plain socket."""
        a = self._assoc_or_raise()
        if a.state() in (STATE_ESTABLISHED, STATE_CLOSED):
            a.close_notify()
        self._flush(self._deadline())
        return _socket.socket(self.family, self.type, self.proto, fileno=self.detach())

    def accept(self):
        """On a listening PSKSocket: the next connection, as (PSKSocket,
        address). Its handshake runs on its first read or write, or
        do_handshake()."""
        self._check()
        if self._assoc is not None:
            raise Error(E_STATE, REASON_NONE, "not a listening socket")
        conn, addr = _Socket.accept(self)
        return self.context.wrap_socket(conn, server_side=True,
                                        do_handshake_on_connect=False,
                                        suppress_ragged_eofs=self.suppress_ragged_eofs), addr

    def pending(self):
        """How many decrypted bytes are ready to be read without waiting."""
        return _Bound.pending(self)

    def sendfile(self, file, offset=0, count=None):
        """Sends a file's bytes through the association (by send(), never
        os.sendfile(), which would bypass it). Blocking sockets only, as
        socket.sendfile()'s fallback."""
        self._assoc_or_raise()
        return self._sendfile_use_send(file, offset, count)

    # What would bypass the association, or has no meaning on a TLS stream,
    # raises E_UNSUPPORTED (ssl.SSLSocket raises ValueError for the same).

    def _unsupported(self, name, arg):
        self._check()
        if arg is None:
            raise _invalid("an argument is None")
        raise Error(E_UNSUPPORTED, REASON_NONE, "%s() on a PSKSocket: use send/recv" % name)

    def sendto(self, data, flags_or_addr, addr=None):
        self._unsupported("sendto", data)

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        self._unsupported("sendmsg", buffers)

    def recvfrom(self, bufsize, flags=0):
        self._unsupported("recvfrom", bufsize)

    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        self._unsupported("recvfrom_into", buffer)

    def recvmsg(self, bufsize, ancbufsize=0, flags=0):
        self._unsupported("recvmsg", bufsize)

    def recvmsg_into(self, buffers, ancbufsize=0, flags=0):
        self._unsupported("recvmsg_into", buffers)


# Key sources (since 0.4). A keystore's source is called once per KpsaID
# that associations wait for (STATE_WAITING_KEY); its answer is supplied to
# the library, which adds the record, and every association waiting on it
# is resumed by whoever drives it. The requests queue in the library
# (Keystore.set_source_queue()); whoever sees an association wait takes
# them (_key_dispatch), so each is handed to the source once.
import inspect as _inspect
import logging as _logging
import threading as _threading

_key_log = _logging.getLogger("m2mpsk.keysource")


class KeyRecord:
    """A record a key source supplies: key (bytes-like, KEY_MIN to KEY_MAX
    bytes), ida (or None), idb, not_before and not_after (Unix seconds, 0
    for unbounded), as Keystore.add() takes them. A bytearray key is wiped
    (zeroed) once supplied; bytes cannot be. repr() never shows the key.

    once=True (since 0.6): a responder's handshakes that waited use the
    record and the keystore does not keep it (KeyRequest.supply_once()); the
    next handshake with the KpsaID asks the source again. An initiator's
    request keeps the record all the same."""

    __slots__ = ("key", "ida", "idb", "not_before", "not_after", "once")

    def __init__(self, key, ida, idb, not_before=0, not_after=0, once=False):
        self.key = key
        self.ida = ida
        self.idb = idb
        self.not_before = not_before
        self.not_after = not_after
        self.once = bool(once)

    def __repr__(self):
        return "KeyRecord(ida=%r, idb=%r, not_before=%d, not_after=%d%s)" % (
            self.ida, self.idb, self.not_before, self.not_after,
            ", once=True" if self.once else "")


class _KeySource:
    """A keystore's source and the waiters on its answers, by KpsaID."""

    def __init__(self, source):
        self.source = source
        self.lock = _threading.Lock()
        self.waiters = {}  # kpsa_id -> [asyncio futures]
        self.answered = _threading.Condition(self.lock)
        self.tasks = set()

    def start(self, req):
        """Hands one request to the source: answered now for a plain
        callable, by a task on the running loop for a coroutine."""
        kid = req.kpsa_id()
        try:
            r = self.source(kid, req.server_name())
        except Exception as e:
            _key_log.warning("key source failed for %s: %s", kid, type(e).__name__)
            self.answer(req, None)
            return
        if not _inspect.isawaitable(r):
            self.answer(req, r)
            return
        try:
            loop = _asyncio_running_loop()
        except RuntimeError:
            if _inspect.iscoroutine(r):
                r.close()
            _key_log.warning("key source for %s is a coroutine, and this thread runs "
                             "no asyncio loop: answered as absent", kid)
            self.answer(req, None)
            return
        task = loop.create_task(self._await(req, kid, r))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _await(self, req, kid, awaitable):
        rec = None
        try:
            rec = await awaitable
        except BaseException as e:
            # Cancelled (the loop is closing) or failed: no record. The
            # exception's type only: its message is the source's own.
            _key_log.warning("key source failed for %s: %s", kid, type(e).__name__)
            self.answer(req, None)
            if not isinstance(e, Exception):
                raise
            return
        self.answer(req, rec)

    def answer(self, req, rec):
        kid = req.kpsa_id()
        try:
            if rec is not None:
                try:
                    if not isinstance(rec, KeyRecord):
                        raise TypeError("a key source returns a KeyRecord or None")
                    if rec.once and req.role() == ROLE_RESPONDER:
                        req.supply_once(rec.key, rec.ida, rec.idb, rec.not_before,
                                        rec.not_after)
                    else:
                        req.supply(rec.key, rec.ida, rec.idb, rec.not_before,
                                   rec.not_after)
                    return
                except Error as e:
                    if e.code in (E_DUPLICATE, E_STATE):
                        return  # a record is there (or the request was closed)
                    _key_log.warning("key source record for %s refused: %s", kid,
                                     strerror(e.code))
                except Exception as e:
                    _key_log.warning("key source record for %s refused: %s", kid,
                                     type(e).__name__)
                finally:
                    if isinstance(rec, KeyRecord) and isinstance(rec.key, bytearray):
                        rec.key[:] = bytes(len(rec.key))
            try:
                req.absent()
            except Error:
                pass  # E_STATE: answered already (the source was removed)
        finally:
            req.close()
            self.wake(kid)

    def wake(self, kid):
        with self.lock:
            futs = self.waiters.pop(kid, ())
            self.answered.notify_all()
        for f in futs:
            if not f.done():
                f.get_loop().call_soon_threadsafe(_set_done, f)


def _set_done(f):
    if not f.done():
        f.set_result(None)


def _asyncio_running_loop():
    import asyncio
    return asyncio.get_running_loop()


def _key_source_of(ks):
    return getattr(ks, "_key_source", None)


def _key_dispatch(ks):
    """Hands every queued request of ks to its source."""
    src = _key_source_of(ks)
    if src is None:
        return
    while (req := ks.next_request()) is not None:
        src.start(req)


def _key_wait_blocking(ks, req, until):
    """Waits, blocking, until req is answered or time.monotonic() passes
    until (None: no limit); True when answered."""
    src = _key_source_of(ks)
    if src is None:
        return req.answered()
    with src.lock:
        while not req.answered():
            left = None if until is None else until - _time.monotonic()
            if left is not None and left <= 0:
                return False
            # The answer may come from another thread's source: notified;
            # polled as well, since an answer between answered() and wait()
            # is notified before we wait.
            src.answered.wait(0.05 if left is None else min(left, 0.05))
    return True


async def _key_wait_async(ks, req):
    """Waits until req is answered (the caller bounds the time)."""
    src = _key_source_of(ks)
    if src is None:
        return
    loop = _asyncio_running_loop()
    f = loop.create_future()
    with src.lock:
        src.waiters.setdefault(req.kpsa_id(), []).append(f)
    if req.answered():
        _set_done(f)
    try:
        await f
    finally:
        with src.lock:
            lst = src.waiters.get(req.kpsa_id())
            if lst is not None and f in lst:
                lst.remove(f)
                if not lst:
                    del src.waiters[req.kpsa_id()]


def _set_key_source(ks, source, max_pending):
    if source is None:
        ks.set_source_queue(0)  # the open requests are answered as absent
        old = _key_source_of(ks)
        ks._key_source = None
        if old is not None:
            for kid in list(old.waiters):
                old.wake(kid)
        return
    if not callable(source):
        raise _invalid("source must be callable: (kpsa_id, server_name) -> KeyRecord | None")
    if max_pending is None or max_pending < 1:
        raise _invalid("max_pending must be positive")
    ks.set_source_queue(max_pending)  # first: a closed keystore raises here
    ks._key_source = _KeySource(source)
