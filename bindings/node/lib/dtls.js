'use strict';
// DTLS 1.2 PSK over node:dgram: a server holding many peers on one UDP
// socket, and a client. Each association is a DTLSSocket, an objectMode
// Duplex of datagrams: every write() is one record (one datagram, at most
// 16384 bytes), every 'data' one record received.
const dgram = require('node:dgram');
const net = require('node:net');
const stream = require('node:stream');
const { EventEmitter } = require('node:events');
const addon = require('./addon.js');
const index = require('./index.js');

const { mixIdentity, makeConfig, makeKeystore, pskError, MAX_TIMER } = index._internal;
const nowMs = index.nowMs;

// Records waiting to be read by the application, per association: UDP
// cannot push back on the sender, so past this many the newest are dropped
// (and counted) rather than held without bound.
const DEFAULT_MAX_QUEUE = 256;

// A DTLS handshake record (22) whose message is a ClientHello (1): the
// only datagram that may open an association.
function isClientHello(msg) {
  return msg.length >= 59 && msg[0] === 22 && msg[13] === 1;
}

function peerTag(address, port) {
  return net.isIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
}

// One association over a datagram link (send(buf) sends one datagram to
// the peer). The server makes one per peer; connect() makes one over its
// own socket.
class DTLSSocket extends stream.Duplex {
  constructor(assoc, send, opts) {
    super({ objectMode: true, allowHalfOpen: false });
    this._assoc = assoc;
    this._send = send;
    this._isServer = !!opts.isServer;
    this.server = opts.server || null;
    this.remoteAddress = opts.remoteAddress;
    this.remotePort = opts.remotePort;
    this.remoteFamily = net.isIPv6(opts.remoteAddress || '') ? 'IPv6' : 'IPv4';
    this._owned = opts.owned || [];
    this._onGone = opts.onGone || (() => {});
    this._maxQueue = opts.maxQueue || DEFAULT_MAX_QUEUE;
    this._idleTimeout = opts.idleTimeout || 0;
    this._established = false;
    this._pendingWrites = [];
    this._pendingFinal = null;
    this._timer = null;
    this._idleTimer = null;
    this.encrypted = true;
    this.authorized = false;
    this.dropped = 0; // records dropped because the reader was behind
    this.lastActivity = nowMs();
  }

  get connecting() { return !this._established && !this.destroyed; }
  get version() { return this._established ? this._ident('version') : null; }
  getProtocol() { return this.version; }

  // Sends one datagram: write(buf, cb) by another name, as dgram has it.
  send(data, cb) {
    return this.write(data, cb);
  }

  _start(firstDatagram) {
    try {
      this._assoc.start(nowMs(), Math.floor(Date.now() / 1000));
    } catch (e) {
      this._fail(e);
      return;
    }
    if (firstDatagram) this._feed(firstDatagram);
    else {
      this._flush();
      this._arm();
    }
    this._touch();
  }

  _flush() {
    if (!this._assoc) return;
    for (;;) {
      const out = this._assoc.drain();
      if (out.length === 0) break;
      this._send(out);
    }
  }

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
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._assoc) return;
      try {
        // A retransmission of the last flight, or the handshake's end.
        this._assoc.handle_timeout(nowMs());
        this._flush();
      } catch (e) {
        try { this._flush(); } catch (e2) { /* gone */ }
        this._fail(e);
        return;
      }
      this._arm();
    }, Math.min(Math.max(0, t - nowMs()), MAX_TIMER));
    this._timer.unref();
  }

  // The idle timer: a peer silent for idleTimeout ms is sent close_notify
  // and forgotten ('timeout' first, as net sockets emit it).
  _touch() {
    this.lastActivity = nowMs();
    if (!this._idleTimeout || this._idleTimer) return;
    const check = () => {
      this._idleTimer = null;
      if (this.destroyed) return;
      const idle = nowMs() - this.lastActivity;
      if (idle >= this._idleTimeout) {
        this.emit('timeout');
        if (!this.destroyed) this.close();
        return;
      }
      this._idleTimer = setTimeout(check, this._idleTimeout - idle);
      this._idleTimer.unref();
    };
    this._idleTimer = setTimeout(check, this._idleTimeout);
    this._idleTimer.unref();
  }

  _feed(msg) {
    if (!this._assoc || this.destroyed) return;
    this._touch();
    try {
      this._assoc.feed(msg, nowMs());
    } catch (e) {
      // An empty or oversized datagram, or more than max_input waiting:
      // datagrams may be lost anyway, so this one is.
      if (e.code === addon.E_INVALID || e.code === addon.E_LIMIT) return;
      if (e.code === addon.E_STATE) return; // closed: late datagrams
      try { this._flush(); } catch (e2) { /* gone */ }
      this._fail(e);
      return;
    }
    this._flush();
    if (!this._established && this._assoc.state() === addon.STATE_ESTABLISHED) this._onHandshake();
    this._arm();
    if (this._established && this._assoc) this._readLoop();
  }

  _readLoop() {
    for (;;) {
      // A 'data' or 'secureConnection' listener may have destroyed it.
      if (!this._assoc || this.destroyed) return;
      let b;
      try {
        b = this._assoc.read(16384);
      } catch (e) {
        if (e.code === addon.E_CLOSED) {
          this.push(null);
          return;
        }
        this._fail(e);
        return;
      }
      if (b.length === 0) return;
      if (this.readableLength >= this._maxQueue) this.dropped++;
      else this.push(b);
    }
  }

  _read() {}

  _write(chunk, encoding, cb) {
    if (!this._established) {
      this._pendingWrites.push([chunk, cb]);
      return;
    }
    if (!this._assoc) return cb(pskError(addon.E_INVALID, 'the association is closed'));
    try {
      this._assoc.write(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      this._flush();
    } catch (e) {
      return cb(e);
    }
    this._touch();
    cb();
  }

  _final(cb) {
    if (!this._established) {
      if (this.destroyed) return cb();
      this._pendingFinal = cb;
      return;
    }
    try {
      this._assoc.close_notify();
      this._flush();
    } catch (e) {
      // Already failed: nothing more to tell the peer.
    }
    cb();
    // A datagram association has no FIN to wait for: done once sent.
    process.nextTick(() => this.destroy());
  }

  // Sends close_notify and releases the association.
  close(cb) {
    if (cb) this.once('close', cb);
    if (this._established && !this.writableEnded) this.end();
    else this.destroy();
  }

  _fail(err) {
    if (this.destroyed) return;
    if (!this._established && this._isServer) {
      if (this.server) this.server.emit('tlsClientError', err, this);
      this.destroy();
      return;
    }
    this.destroy(err);
  }

  _destroy(err, cb) {
    if (this._timer) clearTimeout(this._timer);
    if (this._idleTimer) clearTimeout(this._idleTimer);
    this._timer = this._idleTimer = null;
    if (this._assoc) this._assoc.close();
    this._assoc = null;
    for (const h of this._owned) h.close();
    this._owned = [];
    const gone = err || pskError(addon.E_INVALID, 'the association was destroyed');
    for (const [, f] of this._pendingWrites.splice(0)) f(gone);
    this._onGone();
    cb(err);
  }
}
mixIdentity(DTLSSocket);

// A DTLS server on one UDP socket. A new peer's first datagrams go through
// the stateless cookie exchange (Config.dtls_listen) before any state is
// kept for it; a peer with a valid cookie gets an association. options:
// localId (required), keystore or keyFile, maxPeers (associations held at
// once, default 1024: a new peer past it is dropped), idleTimeout (ms of
// silence before a peer is sent close_notify and forgotten, default
// 300000; 0 for never), handshakeTimeout (ms, default 60000), mtu, maxQueue
// (records held per unread peer, default 256), cookies (default true; off
// or a backend without them creates the association at once), type
// ('udp4'/'udp6'), socket (a dgram socket to use), and the config options.
// Events: 'secureConnection' (peer), 'tlsClientError' (err, peer or null),
// 'listening', 'close', 'error'.
class DTLSServer extends EventEmitter {
  constructor(options, listener) {
    super();
    if (typeof options === 'function') {
      listener = options;
      options = {};
    }
    options = options || {};
    this._ks = makeKeystore(options);
    try {
      this._cfg = makeConfig({ handshakeTimeout: 60000, ...options }, true);
    } catch (e) {
      if (this._ks.owned) this._ks.keystore.close();
      throw e;
    }
    this.maxPeers = options.maxPeers === undefined ? 1024 : options.maxPeers;
    this.idleTimeout = options.idleTimeout === undefined ? 300000 : options.idleTimeout;
    this.mtu = options.mtu;
    this.maxQueue = options.maxQueue;
    this._cookies = options.cookies !== false;
    this.peers = new Map(); // peer tag -> DTLSSocket
    this.stats = { cookiesSent: 0, accepted: 0, dropped: 0, replaced: 0 };
    this._socket = options.socket || dgram.createSocket({ type: options.type || 'udp4' });
    this._ownSocket = !options.socket;
    this._socket.on('message', (msg, rinfo) => this._onMessage(msg, rinfo));
    this._socket.on('listening', () => this.emit('listening'));
    this._socket.on('error', (e) => this.emit('error', e));
    this._socket.on('close', () => this._onSocketClose());
    if (listener) this.on('secureConnection', listener);
  }

  listen(port, host, cb) {
    if (typeof host === 'function') {
      cb = host;
      host = undefined;
    }
    if (cb) this.once('listening', cb);
    this._socket.bind(port, host);
    return this;
  }

  // The config every peer's association is made from (audit events,
  // counters, rate limiter), as Server.config.
  get config() { return this._cfg.config; }
  address() { return this._socket.address(); }
  ref() { this._socket.ref(); return this; }
  unref() { this._socket.unref(); return this; }

  // Sends close_notify to every peer, then closes the socket.
  close(cb) {
    if (cb) this.once('close', cb);
    for (const p of [...this.peers.values()]) p.close();
    if (this._ownSocket) {
      try {
        this._socket.close();
      } catch (e) {
        this._onSocketClose(); // never bound
      }
    } else {
      this._onSocketClose();
    }
    return this;
  }

  _onSocketClose() {
    if (this._closed) return;
    this._closed = true;
    for (const p of [...this.peers.values()]) p.destroy();
    if (this._cfg.owned) this._cfg.config.close();
    if (this._ks.owned) this._ks.keystore.close();
    this.emit('close');
  }

  // A ClientHello of epoch 0 from an established peer, not a copy of the
  // one that opened its association: a client that restarted on the same
  // address. Only with cookies, the proof that it owns the address; else
  // the old association stays until its idle timeout.
  _restarted(peer, msg) {
    return this._cookies && peer._established && isClientHello(msg) &&
           msg[3] === 0 && msg[4] === 0 && !msg.subarray(27, 59).equals(peer._helloRandom);
  }

  _sendTo(address, port) {
    return (buf) => {
      if (!this._closed) this._socket.send(buf, port, address);
    };
  }

  _onMessage(msg, rinfo) {
    if (this._closed) return;
    const tag = peerTag(rinfo.address, rinfo.port);
    const known = this.peers.get(tag);
    if (known && !this._restarted(known, msg)) {
      known._feed(msg);
      return;
    }
    const now = nowMs();
    const config = this._cfg.config;
    if (!known && (!isClientHello(msg) || this.peers.size >= this.maxPeers ||
                   config.peer_blocked(tag, now) !== null)) {
      this.stats.dropped++;
      return;
    }
    if (this._cookies) {
      let hvr;
      try {
        hvr = config.dtls_listen(tag, msg);
      } catch (e) {
        if (e.code !== addon.E_UNSUPPORTED) {
          // Not a ClientHello (E_PROTOCOL) or not one we take: no state.
          this.stats.dropped++;
          return;
        }
        this._cookies = false; // BoringSSL: associations at once
        hvr = null;
      }
      if (hvr) {
        this.stats.cookiesSent++;
        this._sendTo(rinfo.address, rinfo.port)(hvr);
        return;
      }
    }
    if (known) {
      // The peer restarted on the same address and proved it with a
      // cookie (RFC 6347 4.2.8): its old association goes.
      this.stats.replaced++;
      known.destroy();
    }
    let assoc;
    try {
      assoc = new addon.Association(addon.ROLE_RESPONDER, addon.TRANSPORT_DTLS, config,
                                    this._ks.keystore, null);
      assoc.set_peer_tag(tag);
      if (this.mtu) assoc.set_mtu(this.mtu);
    } catch (e) {
      if (assoc) assoc.close();
      this.stats.dropped++;
      this.emit('tlsClientError', e, null);
      return;
    }
    this.stats.accepted++;
    const peer = new DTLSSocket(assoc, this._sendTo(rinfo.address, rinfo.port), {
      isServer: true, server: this, remoteAddress: rinfo.address, remotePort: rinfo.port,
      idleTimeout: this.idleTimeout, maxQueue: this.maxQueue,
      onGone: () => {
        if (this.peers.get(tag) === peer) this.peers.delete(tag);
      },
    });
    peer._helloRandom = Buffer.from(msg.subarray(27, 59));
    this.peers.set(tag, peer);
    peer._start(msg);
  }
}

function createServer(options, listener) {
  return new DTLSServer(options, listener);
}

// Opens a DTLS association to host:port over a dgram socket of its own
// (connected to the peer, so only its datagrams are read). options: host,
// port, kpsaId, keystore or keyFile, type ('udp4'/'udp6'), localAddress
// and localPort (to bind before connecting), mtu,
// idleTimeout (default 0: never), and the config options. cb is a
// 'secureConnect' listener.
function connect(options, cb) {
  options = options || {};
  if (!options.kpsaId) throw new TypeError('m2mpsk.dtls.connect: options.kpsaId is required');
  const ks = makeKeystore(options);
  let cfg;
  let assoc;
  try {
    cfg = makeConfig(options, false);
    assoc = new addon.Association(addon.ROLE_INITIATOR, addon.TRANSPORT_DTLS, cfg.config,
                                  ks.keystore, options.kpsaId);
    if (options.mtu) assoc.set_mtu(options.mtu);
  } catch (e) {
    if (assoc) assoc.close();
    if (cfg && cfg.owned) cfg.config.close();
    if (ks.owned) ks.keystore.close();
    throw e;
  }
  if (cfg.owned) cfg.config.close();
  if (ks.owned) ks.keystore.close();
  const host = options.host || '127.0.0.1';
  const type = options.type || (net.isIPv6(host) ? 'udp6' : 'udp4');
  const sock = dgram.createSocket({ type });
  const peer = new DTLSSocket(assoc, (buf) => sock.send(buf), {
    isServer: false, remoteAddress: host, remotePort: options.port,
    idleTimeout: options.idleTimeout || 0, maxQueue: options.maxQueue,
    onGone: () => {
      try { sock.close(); } catch (e) { /* already closed */ }
    },
  });
  if (cb) peer.once('secureConnect', cb);
  sock.on('message', (msg) => peer._feed(msg));
  sock.on('error', (e) => peer.destroy(e));
  const go = () => sock.connect(options.port, host, () => peer._start(null));
  if (options.localPort || options.localAddress) sock.bind(options.localPort || 0, options.localAddress, go);
  else go();
  return peer;
}

module.exports = { createServer, connect, DTLSServer, DTLSSocket };
