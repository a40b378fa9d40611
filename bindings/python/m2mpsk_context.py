# The drop-in layer, modelled on the standard library's ssl module: Context
# (ssl.SSLContext), PSKSocket (ssl.SSLSocket) and PSKObject (ssl.SSLObject
# over ssl.MemoryBIO). TLS only. Inserted into m2mpsk.py by
# m2mpsk_python_tail.swg, after Error, Failed and Closed: `import m2mpsk`
# stays the one module. The standard modules are imported under private
# names so that they do not become m2mpsk's public names.
import select as _select
import socket as _socket
import ssl as _ssl
import time as _time


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
        if a.state() == STATE_HANDSHAKING or a.suite() is None:
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
        return PSKObject(self, incoming, outgoing, side, kpsa_id,
                         None if side else server_hostname)


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
            while a.state() == STATE_HANDSHAKING:
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

    def _read(self, n):
        a = self._assoc_or_raise()
        if a.state() in (STATE_IDLE, STATE_HANDSHAKING):
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
        if a.state() in (STATE_IDLE, STATE_HANDSHAKING):
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
