'use strict';
// m2mpsk for Node.js: TLS 1.2 PSK security associations (oneM2M TS-0003
// 8.2.2.1) shaped like node:tls, so that node:http runs over them
// unchanged, and DTLS over dgram (./dtls.js).
//
// The library is sans-IO: an Association is fed what the peer sent and
// drained of what to send. A PSKSocket does that between a net.Socket and
// a stream.Duplex, the way tls.TLSSocket sits on its TCP socket.
const net = require('node:net');
const http = require('node:http');
const stream = require('node:stream');
const { performance } = require('node:perf_hooks');
const { URL, urlToHttpOptions } = require('node:url');
const addon = require('./addon.js');

// The monotonic clock the library is given, in whole milliseconds.
function nowMs() {
  return Math.floor(performance.now());
}

// setTimeout() takes at most 2^31 - 1 ms; a longer wait (a record expiring
// in months) is armed in steps.
const MAX_TIMER = 0x7fffffff;

// TCP input is fed in pieces of this size, each well below the smallest
// maxInput (MAX_INPUT_MIN, 64 KiB) with a partial record waiting beside it.
const FEED_CHUNK = 16384;

// A chunk of application data per assoc.write(): big enough for whole
// records, small enough that a large write lets the event loop and the
// peer's TCP window work in between.
const WRITE_CHUNK = 65536;

// Builds an Error with the code/reason/detail of the library's errors, for
// failures this layer finds itself (a socket that closed mid-handshake).
function pskError(code, detail) {
  const e = new Error(`${addon.strerror(code)} (${code}): ${detail}`);
  e.name = 'M2mpskError';
  e.code = code;
  e.reason = addon.REASON_NONE;
  e.detail = detail;
  return e;
}

// ---- options -------------------------------------------------------------

// A Config from the options: options.config as given (the caller keeps it),
// else a new one the caller of makeConfig owns. localId (string or array):
// the identities a responder serves, which are also the CSE-IDs its
// originator checks use.
function makeConfig(options, responder) {
  if (options.config) return { config: options.config, owned: false };
  const c = new addon.Config();
  try {
    if (options.profile !== undefined) c.set_profile(options.profile);
    if (options.suites !== undefined) {
      c.set_suites(Array.isArray(options.suites) ? options.suites.join(':') : options.suites);
    }
    if (options.engine !== undefined) c.set_engine(options.engine);
    if (options.handshakeTimeout !== undefined) c.set_handshake_timeout(options.handshakeTimeout);
    else if (responder) c.set_handshake_timeout(120000); // node:tls's default
    if (options.revealUnknownIdentity) c.set_reveal_unknown_identity(true);
    if (options.rolesReversed) c.set_roles_reversed(true);
    if (options.maxHandshakes !== undefined) c.set_max_handshakes(options.maxHandshakes);
    if (options.maxInput !== undefined) c.set_max_input(options.maxInput);
    if (options.eventQueue !== undefined) c.set_event_queue(options.eventQueue);
    const ids = options.localId === undefined ? [] : [].concat(options.localId);
    for (const id of ids) c.add_local_id(id);
    if (responder && ids.length === 0 && !options.rolesReversed) {
      throw new TypeError('m2mpsk: a server needs options.localId (its CSE-ID, e.g. "/cse-1")');
    }
  } catch (e) {
    c.close();
    throw e;
  }
  return { config: c, owned: true };
}

// The keystore of the options: options.keystore (the caller keeps it), or
// one loaded from options.keyFile (owned: closed with what made it).
function makeKeystore(options) {
  if (options.keystore) return { keystore: options.keystore, owned: false };
  if (options.keyFile) {
    const ks = new addon.Keystore(0);
    try {
      ks.load_file(String(options.keyFile));
    } catch (e) {
      ks.close();
      throw e;
    }
    return { keystore: ks, owned: true };
  }
  throw new TypeError('m2mpsk: options.keystore (a Keystore) or options.keyFile is required');
}

// ---- the association's identity, for sockets and DTLS peers --------------

// Identity accessors shared by PSKSocket and the DTLS association: each
// reads the association once it is established (null before).
const identity = {
  get peerId() {
    return this._assoc ? this._ident('peer_id') : null;
  },
  get kpsaId() {
    return this._assoc ? this._ident('kpsa_id') : null;
  },
  get localId() {
    return this._assoc ? this._ident('local_id') : null;
  },
  get suite() {
    return this._assoc ? this._ident('suite') : null;
  },
  // True when the peer is bound to its Credential-ID ("12-<KpsaID>").
  get credential() {
    return this._assoc ? !!this._ident('peer_id_is_credential') : false;
  },
  // PEER_CREDENTIAL, PEER_CSE or PEER_AE (PEER_NONE before the handshake).
  get peerKind() {
    const id = this.peerId;
    if (id === null) return addon.PEER_NONE;
    if (this.credential) return addon.PEER_CREDENTIAL;
    try {
      addon.idb_validate(id);
      return addon.PEER_CSE;
    } catch (e) {
      return addon.PEER_AE;
    }
  },
  // Whether a request that arrived here may carry the originator `from`
  // (its From; null or "" when absent): 0 (ORIGINATOR_ACCEPT), or the
  // oneM2M Response Status Code to answer with, 4106 (NOT_AUTHENTICATED)
  // or 4107 (SECURITY_ASSOCIATION_REQUIRED). flags is 0 or
  // ORIGINATOR_AE_CREATE (an <AE> CREATE) | ORIGINATOR_ALLOW_UNSECURED_AE,
  // or an object { aeCreate, allowUnsecuredAe }. Throws M2mpskError
  // (E_STATE before the handshake, E_IDB when this side has no CSE-ID,
  // E_IDA for a malformed From, E_INVALID for an unknown flag).
  originatorCheck(from, flags = 0) {
    if (typeof flags === 'object' && flags !== null) {
      flags = (flags.aeCreate ? addon.ORIGINATOR_AE_CREATE : 0) |
              (flags.allowUnsecuredAe ? addon.ORIGINATOR_ALLOW_UNSECURED_AE : 0);
    }
    if (!this._assoc) throw pskError(addon.E_INVALID, 'the socket is closed');
    return this._assoc.originator_check(from === undefined ? null : from, flags);
  },
  // Binds the AE-ID the CSE assigned at <AE> CREATE over a Credential-ID
  // association: later originator checks use it (Association.bind_ae_id).
  bindAeId(aeId) {
    if (!this._assoc) throw pskError(addon.E_INVALID, 'the socket is closed');
    this._assoc.bind_ae_id(aeId);
  },
  // RFC 5705 keying material (node:tls's exportKeyingMaterial order).
  exportKeyingMaterial(length, label, context) {
    if (!this._assoc) throw pskError(addon.E_INVALID, 'the socket is closed');
    return this._assoc.export_keying_material(length, label, context === undefined ? null : context);
  },
  // The handshake is done: the events node:tls emits, then the writes and
  // the end() that waited for it (the same for TLS and DTLS sockets).
  _onHandshake() {
    this._established = true;
    this.authorized = true;
    if (this._isServer) {
      this.emit('secure');
      if (this.server) this.server.emit('secureConnection', this);
    } else {
      this.emit('connect');
      this.emit('secureConnect');
    }
    for (const [chunk, cb] of this._pendingWrites.splice(0)) this._write(chunk, null, cb);
    if (this._pendingFinal) {
      const cb = this._pendingFinal;
      this._pendingFinal = null;
      this._final(cb);
    }
  },
  _ident(name) {
    try {
      return this._assoc[name]();
    } catch (e) {
      return null; // closed meanwhile
    }
  },
};

function mixIdentity(cls) {
  for (const key of Object.getOwnPropertyNames(identity)) {
    Object.defineProperty(cls.prototype, key, Object.getOwnPropertyDescriptor(identity, key));
  }
}

// ---- PSKSocket ------------------------------------------------------------

// A TLS-PSK connection over a stream socket, shaped like tls.TLSSocket:
// a Duplex of application data with 'secureConnect' (client) or 'secure'
// (server) once the handshake is done, end() sending close_notify,
// destroy(), setTimeout(), the address getters, and the oneM2M identity
// (peerId, kpsaId, credential, peerKind, originatorCheck()).
class PSKSocket extends stream.Duplex {
  constructor(socket, assoc, opts = {}) {
    super({ allowHalfOpen: !!opts.allowHalfOpen });
    this._socket = socket;
    this._assoc = assoc;
    this._isServer = !!opts.isServer;
    this._owned = opts.owned || []; // a config and keystore to close with us
    this._established = false;
    this._pendingWrites = []; // [chunk, cb] written before the handshake
    this._pendingFinal = null; // end() before the handshake
    this._pendingInput = null; // input the association refused (E_LIMIT)
    this._readPaused = false;
    this._timer = null;
    this.encrypted = true;
    this.authorized = false;
    this.authorizationError = null;
    this.alpnProtocol = false;
    this.server = opts.server || null;

    socket.on('data', (d) => this._onData(d));
    socket.on('end', () => this._onEnd());
    socket.on('error', (e) => this._fail(e));
    socket.on('close', () => this._onSocketClose());
    socket.on('drain', () => this._onSocketDrain());
    socket.on('timeout', () => this.emit('timeout'));
  }

  // -- net.Socket's surface, forwarded to the TCP socket.
  get remoteAddress() { return this._socket.remoteAddress; }
  get remotePort() { return this._socket.remotePort; }
  get remoteFamily() { return this._socket.remoteFamily; }
  get localAddress() { return this._socket.localAddress; }
  get localPort() { return this._socket.localPort; }
  get bytesRead() { return this._socket.bytesRead; }
  get bytesWritten() { return this._socket.bytesWritten; }
  get connecting() { return !this._established && !this.destroyed; }
  get pending() { return this.connecting; }
  get readyState() {
    if (this.connecting) return 'opening';
    return this._socket.readyState;
  }
  address() { return this._socket.address(); }
  setTimeout(ms, cb) {
    this._socket.setTimeout(ms);
    if (cb) {
      if (ms === 0) this.removeListener('timeout', cb);
      else this.once('timeout', cb);
    }
    return this;
  }
  setNoDelay(on) { this._socket.setNoDelay(on); return this; }
  setKeepAlive(on, delay) { this._socket.setKeepAlive(on, delay); return this; }
  ref() { this._socket.ref(); return this; }
  unref() { this._socket.unref(); return this; }
  destroySoon() {
    if (this.writable) this.end();
    if (this.writableFinished) this.destroy();
    else this.once('finish', () => this.destroy());
  }

  // -- tls.TLSSocket's surface.
  getProtocol() { return this._established ? this._ident('version') : null; }
  getCipher() {
    const s = this.suite;
    return s ? { name: s, standardName: s, version: this.getProtocol() } : null;
  }
  getPeerCertificate() { return {}; } // PSK: no certificates
  get version() { return this.getProtocol(); }

  // Starts the handshake (the TCP connection is up).
  _start() {
    if (this.destroyed) return;
    try {
      this._assoc.start(nowMs(), Math.floor(Date.now() / 1000));
    } catch (e) {
      this._fail(e);
      return;
    }
    this._flush();
    this._arm();
  }

  // Sends whatever the association has queued.
  _flush() {
    if (!this._assoc) return true;
    let ok = true;
    for (;;) {
      const out = this._assoc.drain();
      if (out.length === 0) break;
      if (!this._socket.destroyed) ok = this._socket.write(out);
    }
    return ok;
  }

  // Arms the timer for the association's next deadline (a handshake
  // timeout, a record's expiry).
  _arm() {
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    if (!this._assoc) return;
    let t;
    try {
      t = this._assoc.next_timeout();
    } catch (e) {
      return;
    }
    if (t === null) return;
    const wait = Math.min(Math.max(0, t - nowMs()), MAX_TIMER);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._assoc) return;
      try {
        this._assoc.handle_timeout(nowMs());
        this._flush();
      } catch (e) {
        this._flush();
        this._fail(e);
        return;
      }
      this._arm();
    }, wait);
    this._timer.unref();
  }

  _onData(data) {
    if (!this._assoc) return;
    if (this._pendingInput) {
      // Input is held back (the socket is paused): keep the order.
      this._pendingInput = Buffer.concat([this._pendingInput, data]);
      return;
    }
    this._feed(data);
  }

  // Feeds TCP bytes in pieces, reading after each, so that what the
  // association holds stays within its maxInput and the readable side's
  // backpressure stops the TCP socket: what is not fed yet waits in
  // _pendingInput, the socket paused, until _read() asks for more.
  _feed(data) {
    let off = 0;
    while (off < data.length && this._assoc) {
      const piece = data.subarray(off, off + FEED_CHUNK);
      try {
        this._assoc.feed(piece, nowMs());
      } catch (e) {
        if (e.code === addon.E_LIMIT && this._established && !this._limitStuck) {
          // Nothing was consumed: read what is waiting, then feed the
          // same bytes again. A piece is far below the smallest limit,
          // so a second E_LIMIT right after reading is a failure.
          this._limitStuck = true;
          this._hold(data.subarray(off));
          this._readLoop();
          return;
        }
        try { this._flush(); } catch (e2) { /* the association is gone */ }
        this._fail(e);
        return;
      }
      this._limitStuck = false;
      off += piece.length;
      this._flush();
      if (!this._established && this._assoc && this._assoc.state() === addon.STATE_ESTABLISHED) {
        this._onHandshake();
      }
      if (this._established && this._assoc) {
        this._readLoop();
        if (this._readPaused && off < data.length) {
          this._hold(data.subarray(off));
          break;
        }
      }
    }
    this._arm();
  }

  _hold(rest) {
    this._pendingInput = rest;
    this._socket.pause();
  }

  // Moves decrypted data to the readable side until it pushes back.
  _readLoop() {
    if (this._readPaused || !this._assoc || this.destroyed) return;
    for (;;) {
      // A 'data' listener may have destroyed the socket.
      if (!this._assoc || this.destroyed) return;
      let b;
      try {
        b = this._assoc.read(16384);
      } catch (e) {
        if (e.code === addon.E_CLOSED) {
          this._pushEof();
          return;
        }
        this._flush();
        this._fail(e);
        return;
      }
      if (b.length === 0) break;
      if (!this.push(b)) {
        this._readPaused = true;
        this._socket.pause();
        return;
      }
    }
    if (this._pendingInput) {
      const data = this._pendingInput;
      this._pendingInput = null;
      this._socket.resume();
      this._feed(data);
    }
  }

  _read() {
    if (this._readPaused) {
      this._readPaused = false;
      if (!this._pendingInput) this._socket.resume();
      this._readLoop();
    }
  }

  _write(chunk, encoding, cb) {
    if (!this._established) {
      this._pendingWrites.push([chunk, cb]);
      return;
    }
    if (!this._assoc) {
      cb(pskError(addon.E_INVALID, 'the socket is closed'));
      return;
    }
    if (this._socket.destroyed || this._socket.writableEnded) {
      cb(Object.assign(pskError(addon.E_CLOSED, 'the connection is closed'), { syscallCode: 'EPIPE' }));
      return;
    }
    let ok = true;
    try {
      for (let off = 0; off < chunk.length; off += WRITE_CHUNK) {
        this._assoc.write(chunk.subarray(off, off + WRITE_CHUNK));
        ok = this._flush();
      }
    } catch (e) {
      cb(e);
      return;
    }
    // Backpressure: the write completes when the TCP socket has taken it.
    if (ok) cb();
    else this._drainWaiters = (this._drainWaiters || []).concat(cb);
  }

  _onSocketDrain() {
    const w = this._drainWaiters;
    this._drainWaiters = null;
    if (w) for (const cb of w) cb();
  }

  // end(): close_notify, then the TCP FIN.
  _final(cb) {
    if (!this._established) {
      if (this.destroyed) return cb();
      this._pendingFinal = cb;
      return;
    }
    try {
      if (this._assoc) {
        this._assoc.close_notify();
        this._flush();
      }
    } catch (e) {
      // Already failed: nothing more to say to the peer.
    }
    this._socket.end();
    cb();
  }

  // The readable side's end, once: after close_notify or a FIN.
  _pushEof() {
    if (this._eof) return;
    this._eof = true;
    this.push(null);
  }

  // The TCP socket closed. Mid-handshake that is a failure; afterwards the
  // data already decrypted stays readable, as a net.Socket's does, and the
  // socket is destroyed once its reader has seen the end.
  _onSocketClose() {
    if (this.destroyed) return;
    if (!this._established) {
      this._fail(Object.assign(pskError(addon.E_FAILED, 'the connection closed during the handshake'),
                               { syscallCode: 'ECONNRESET' }));
      return;
    }
    if (!this._eof) {
      this._readLoop();
      this._pushEof();
    }
    // Nothing left to read and nobody reading: done now; else after 'end'
    // (a reader that never reads keeps it, as with net).
    if (this.readableEnded || (this.readableLength === 0 && !this.readableFlowing)) this.destroy();
    else this.once('end', () => process.nextTick(() => this.destroy()));
  }

  _onEnd() {
    // A FIN: after close_notify, or a peer that just hung up, which
    // HTTP/1.1 peers do; either way the readable side ends.
    if (!this._established) {
      this._fail(Object.assign(pskError(addon.E_FAILED, 'the peer closed the connection during the handshake'),
                               { syscallCode: 'ECONNRESET' }));
      return;
    }
    this._readLoop();
    this._pushEof();
  }

  _fail(err) {
    if (this.destroyed) return;
    if (err && !this._established) {
      if (this._isServer) {
        // As tls.Server: a failed handshake is the server's
        // 'tlsClientError', not an error of a socket nobody holds yet.
        if (this.server) this.server.emit('tlsClientError', err, this);
        this.destroy();
        return;
      }
    }
    this.destroy(err || undefined);
  }

  _destroy(err, cb) {
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    if (this._assoc) this._assoc.close();
    this._assoc = null;
    for (const h of this._owned) h.close();
    this._owned = [];
    this._socket.destroy();
    const w = this._drainWaiters;
    this._drainWaiters = null;
    if (w) for (const f of w) f(err || pskError(addon.E_INVALID, 'the socket was destroyed'));
    for (const [, f] of this._pendingWrites.splice(0)) f(err || pskError(addon.E_INVALID, 'the socket was destroyed'));
    cb(err);
  }
}
mixIdentity(PSKSocket);

// ---- connect ----------------------------------------------------------------

// Opens a TLS-PSK connection, as tls.connect(options[, cb]) does. options:
// host, port (or socketPath, or path without a port: a Unix socket; or
// socket: a connected Duplex to run over), kpsaId,
// keystore (a Keystore) or keyFile (a key file path), and the config
// options (suites, profile, handshakeTimeout, config, ...). cb is a
// 'secureConnect' listener. Throws at once for bad options or an unknown
// kpsaId; handshake failures are 'error' events.
function connect(...args) {
  let options = {};
  let cb;
  for (const a of args) {
    if (typeof a === 'function') cb = a;
    else if (typeof a === 'number') options.port = a;
    else if (typeof a === 'string') options.host = a;
    else if (a && typeof a === 'object') options = { ...a, ...options };
  }
  if (!options.kpsaId) throw new TypeError('m2mpsk.connect: options.kpsaId is required');
  const ks = makeKeystore(options);
  let cfg;
  let assoc;
  try {
    cfg = makeConfig(options, false);
    assoc = new addon.Association(addon.ROLE_INITIATOR, addon.TRANSPORT_TLS, cfg.config,
                                  ks.keystore, options.kpsaId);
  } catch (e) {
    if (cfg && cfg.owned) cfg.config.close();
    if (ks.owned) ks.keystore.close();
    throw e;
  }
  // The association holds its own references: ours can go now.
  if (cfg.owned) cfg.config.close();
  if (ks.owned) ks.keystore.close();
  let raw = options.socket;
  const fresh = !raw;
  if (fresh) {
    // A Unix socket is socketPath, as http names it (http's options carry
    // the URL's path as `path`), or `path` without a port, as tls.connect.
    const ipc = options.socketPath ||
      (options.port === undefined && options.host === undefined ? options.path : undefined);
    const netOpts = ipc ? { path: ipc } : { host: options.host || 'localhost', port: options.port };
    for (const k of ['family', 'localAddress', 'localPort', 'lookup', 'timeout', 'noDelay',
                     'keepAlive', 'keepAliveInitialDelay', 'signal']) {
      if (options[k] !== undefined) netOpts[k] = options[k];
    }
    raw = net.connect(netOpts);
  }
  const sock = new PSKSocket(raw, assoc, { isServer: false, allowHalfOpen: options.allowHalfOpen });
  if (cb) sock.once('secureConnect', cb);
  if (fresh || raw.connecting) raw.once('connect', () => sock._start());
  else process.nextTick(() => sock._start());
  return sock;
}

// ---- Server -----------------------------------------------------------------

// A TLS-PSK server, as tls.Server is: a net.Server (listen, close, address,
// maxConnections, getConnections) whose connections are handshaken before
// 'secureConnection' (socket) is emitted; a failed handshake is
// 'tlsClientError' (err, socket). options: localId (this CSE's CSE-ID(s),
// required), keystore or keyFile, handshakeTimeout (ms, default 120000),
// maxConnections, maxHandshakes, suites/profile/config, allowHalfOpen.
class Server extends net.Server {
  constructor(options, listener) {
    if (typeof options === 'function') {
      listener = options;
      options = {};
    }
    options = options || {};
    const ks = makeKeystore(options);
    let cfg;
    try {
      cfg = makeConfig(options, true);
    } catch (e) {
      if (ks.owned) ks.keystore.close();
      throw e;
    }
    super({ allowHalfOpen: false, pauseOnConnect: false, noDelay: options.noDelay });
    this._keystore = ks;
    this._config = cfg;
    this._allowHalfOpen = !!options.allowHalfOpen;
    if (options.maxConnections !== undefined) this.maxConnections = options.maxConnections;
    if (listener) this.on('secureConnection', listener);
    this.on('connection', (raw) => this._onConnection(raw));
    this.once('close', () => {
      // Sockets hold their own references, so this frees only ours.
      if (this._config.owned) this._config.config.close();
      if (this._keystore.owned) this._keystore.keystore.close();
    });
  }

  // The config every connection's association is made from: its audit
  // events (options.eventQueue, then config.next_event()), counters and
  // rate limiter.
  get config() {
    return this._config.config;
  }

  _onConnection(raw) {
    let assoc;
    try {
      assoc = new addon.Association(addon.ROLE_RESPONDER, addon.TRANSPORT_TLS,
                                    this._config.config, this._keystore.keystore, null);
      if (raw.remoteAddress) assoc.set_peer_tag(`${raw.remoteAddress}:${raw.remotePort}`.slice(0, 128));
    } catch (e) {
      // E_LIMIT (too many handshakes at once) and the like: refuse it.
      if (assoc) assoc.close();
      raw.destroy();
      this.emit('tlsClientError', e, null);
      return;
    }
    const sock = new PSKSocket(raw, assoc, { isServer: true, server: this,
                                             allowHalfOpen: this._allowHalfOpen });
    sock._start();
  }
}

function createServer(options, listener) {
  return new Server(options, listener);
}

// ---- https -------------------------------------------------------------------

// An http.Server served over TLS-PSK: https.createServer's replacement.
// It is a real http.Server (request events, timeouts, keepAliveTimeout,
// closeAllConnections...) that never listens itself: listen(), close()
// and address() go to a PSK Server whose secure connections it is handed.
// req.socket is the PSKSocket (req.socket.peerId, originatorCheck()).
class HttpsServer extends http.Server {
  constructor(options, requestListener) {
    if (typeof options === 'function') {
      requestListener = options;
      options = {};
    }
    options = options || {};
    super(options, requestListener);
    const psk = new Server(options);
    this.pskServer = psk;
    psk.on('secureConnection', (s) => {
      this.emit('secureConnection', s);
      this.emit('connection', s);
    });
    psk.on('tlsClientError', (e, s) => this.emit('tlsClientError', e, s));
    psk.on('listening', () => this.emit('listening'));
    psk.on('error', (e) => this.emit('error', e));
    psk.on('close', () => http.Server.prototype.close.call(this));
  }

  listen(...args) {
    // The callback is a 'listening' listener of this server, as net's is.
    if (typeof args[args.length - 1] === 'function') this.once('listening', args.pop());
    this.pskServer.listen(...args);
    return this;
  }
  address() { return this.pskServer.address(); }
  get listening() { return this.pskServer.listening; }
  get maxConnections() { return this.pskServer ? this.pskServer.maxConnections : undefined; }
  set maxConnections(n) { if (this.pskServer) this.pskServer.maxConnections = n; }
  getConnections(cb) { return this.pskServer.getConnections(cb); }
  ref() { this.pskServer.ref(); return this; }
  unref() { this.pskServer.unref(); return this; }
  close(cb) {
    if (cb) this.once('close', cb);
    if (typeof this.closeIdleConnections === 'function') this.closeIdleConnections();
    this.pskServer.close();
    return this;
  }
}

// An http.Agent whose connections are m2mpsk.connect()'s: the agent's
// options (kpsaId, keystore or keyFile, ...) are given to every
// connection, and keep-alive pools per host, port and KpsaID.
class Agent extends http.Agent {
  constructor(options) {
    super(options);
    this.defaultPort = 443;
    this.protocol = 'http:'; // what http.request checks; the bytes are TLS-PSK
  }
  createConnection(options, cb) {
    return connect(options, cb);
  }
  getName(options = {}) {
    return `${super.getName(options)}:${options.kpsaId || ''}`;
  }
}

// https.request/get over PSK: options as http.request's plus kpsaId and
// keystore or keyFile (or agent: an m2mpsk Agent). A URL's "https:" is
// accepted.
function requestArgs(args) {
  let [input, options, cb] = args;
  if (typeof input === 'string' || input instanceof URL) {
    const u = urlToHttpOptions(typeof input === 'string' ? new URL(input) : input);
    if (typeof options === 'function') {
      cb = options;
      options = {};
    }
    options = { ...u, ...(options || {}) };
  } else {
    cb = options;
    options = { ...(input || {}) };
  }
  options.protocol = 'http:';
  if (!options.port && !options.defaultPort) options.defaultPort = 443;
  if (!options.agent && !options.createConnection) {
    options.createConnection = (o, ccb) => connect(o, ccb);
  }
  return [options, cb];
}

const https = {
  createServer(options, requestListener) {
    return new HttpsServer(options, requestListener);
  },
  Server: HttpsServer,
  Agent,
  request(...args) {
    return http.request(...requestArgs(args));
  },
  get(...args) {
    const req = http.request(...requestArgs(args));
    req.end();
    return req;
  },
};

module.exports = {
  connect,
  createServer,
  Server,
  PSKSocket,
  https,
  // The raw SWIG layer: Keystore, Config, Association, Event, the
  // E_/REASON_/STATE_/ORIGINATOR_... constants and the free functions.
  ...addon,
  addon,
  nowMs,
};
// DTLS over dgram, loaded on first use.
Object.defineProperty(module.exports, 'dtls', {
  enumerable: true,
  get() {
    return require('./dtls.js');
  },
});
module.exports._internal = { identity, mixIdentity, makeConfig, makeKeystore, pskError, MAX_TIMER };
