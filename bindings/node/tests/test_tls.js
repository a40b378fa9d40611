'use strict';
// The node:tls-shaped layer: sockets, servers, and node:http over them,
// both as a server and as a client.
const test = require('node:test');
const assert = require('node:assert');
const http = require('node:http');
const net = require('node:net');
const crypto = require('node:crypto');
const { m2mpsk, KPSA, KEY_HEX, IDB, keystore, keyFile, within, once, body } = require('./helpers.js');

const HOST = '127.0.0.1';

async function listen(server) {
  await within(5000, new Promise((r) => server.listen(0, HOST, r)), 'listen');
  return server.address().port;
}

function close(server) {
  if (typeof server.closeAllConnections === 'function') server.closeAllConnections();
  return within(5000, new Promise((r) => server.close(() => r())), 'close');
}

// An http.request over m2mpsk.connect, as Mobius's test client makes it.
function request(port, ks, { method = 'GET', path = '/', headers = {}, data, kpsaId = KPSA } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: HOST, port, method, path, headers,
      createConnection: () => m2mpsk.connect({ host: HOST, port, kpsaId, keystore: ks }),
    }, (res) => body(res).then((b) => resolve({ res, body: b }), reject));
    req.on('error', reject);
    req.end(data);
  });
}

// The echo app: the method, the peer's identity, the originator verdict
// for the X-M2M-Origin header, and a digest of the body.
function app(req, res) {
  const h = crypto.createHash('sha256');
  let n = 0;
  req.on('data', (d) => { h.update(d); n += d.length; });
  req.on('end', () => {
    const from = req.headers['x-m2m-origin'] || null;
    const create = req.headers['x-ae-create'] === '1';
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({
      method: req.method, url: req.url, peerId: req.socket.peerId, kpsaId: req.socket.kpsaId,
      credential: req.socket.credential, peerKind: req.socket.peerKind, localId: req.socket.localId,
      suite: req.socket.suite, encrypted: req.socket.encrypted === true,
      verdict: from === null && !create ? null
        : req.socket.originatorCheck(from, create ? m2mpsk.ORIGINATOR_AE_CREATE : 0),
      bytes: n, sha256: h.digest('hex'),
    }));
  });
}

test('https.createServer + http.request(createConnection): GET and POST', async () => {
  const ks = keystore();
  const server = m2mpsk.https.createServer({ keystore: ks, localId: IDB }, app);
  assert.ok(server instanceof http.Server);
  const port = await listen(server);
  const get = await within(10000, request(port, ks, { path: '/a?b=1' }));
  assert.strictEqual(get.res.statusCode, 200);
  const j = JSON.parse(get.body);
  assert.deepStrictEqual([j.method, j.url, j.peerId, j.kpsaId, j.credential, j.localId, j.encrypted],
                         ['GET', '/a?b=1', '12-' + KPSA, KPSA, true, IDB, true]);
  assert.strictEqual(j.peerKind, m2mpsk.PEER_CREDENTIAL);
  assert.match(j.suite, /^TLS_PSK_/);
  const data = 'x'.repeat(1000);
  const post = await within(10000, request(port, ks, { method: 'POST', path: '/p', data }));
  const p = JSON.parse(post.body);
  assert.strictEqual(p.method, 'POST');
  assert.strictEqual(p.bytes, 1000);
  assert.strictEqual(p.sha256, crypto.createHash('sha256').update(data).digest('hex'));
  await close(server);
});

test('plain http.createServer fed by a PSK server; https.request, https.get and Agent', async () => {
  const ks = keystore();
  const httpServer = http.createServer(app);
  const psk = m2mpsk.createServer({ keystore: ks, localId: IDB });
  psk.on('secureConnection', (s) => httpServer.emit('connection', s));
  const port = await listen(psk);
  // https.get
  const got = await within(10000, new Promise((resolve, reject) => {
    m2mpsk.https.get({ host: HOST, port, path: '/g', kpsaId: KPSA, keystore: ks },
                     (res) => body(res).then(resolve, reject)).on('error', reject);
  }));
  assert.strictEqual(JSON.parse(got).url, '/g');
  // https.request with a URL and a key file
  const file = keyFile([`kpsa-id=${KPSA} kpsa=hex:${KEY_HEX} idb=${IDB}`]);
  const posted = await within(10000, new Promise((resolve, reject) => {
    const req = m2mpsk.https.request(`https://${HOST}:${port}/u`, { method: 'POST', kpsaId: KPSA, keyFile: file },
                                     (res) => body(res).then(resolve, reject));
    req.on('error', reject);
    req.end('hello');
  }));
  assert.deepStrictEqual([JSON.parse(posted).url, JSON.parse(posted).bytes], ['/u', 5]);
  // A keep-alive Agent reuses one connection for sequential requests.
  const agent = new m2mpsk.https.Agent({ keepAlive: true, maxSockets: 1, kpsaId: KPSA, keystore: ks });
  const ports = new Set();
  for (let i = 0; i < 3; i++) {
    const r = await within(10000, new Promise((resolve, reject) => {
      const req = http.request({ host: HOST, port, path: `/k${i}`, agent }, (res) => {
        ports.add(res.socket.localPort);
        body(res).then(resolve, reject);
      });
      req.on('error', reject);
      req.end();
    }));
    assert.strictEqual(JSON.parse(r).url, `/k${i}`);
  }
  assert.strictEqual(ports.size, 1, 'keep-alive: one connection for three requests');
  agent.destroy();
  httpServer.closeAllConnections();
  await close(psk);
  // Over a Unix socket: http's socketPath, the URL's path still a path.
  const dir = require('node:fs').mkdtempSync(require('node:path').join(require('node:os').tmpdir(), 'm2mpsk-'));
  const sockPath = require('node:path').join(dir, 'cse.sock');
  const unix = m2mpsk.createServer({ keystore: ks, localId: IDB });
  unix.on('secureConnection', (s) => httpServer.emit('connection', s));
  await within(5000, new Promise((r) => unix.listen(sockPath, r)));
  const viaUnix = await within(10000, new Promise((resolve, reject) => {
    m2mpsk.https.get({ socketPath: sockPath, path: '/unix', kpsaId: KPSA, keystore: ks },
                     (res) => body(res).then(resolve, reject)).on('error', reject);
  }));
  assert.strictEqual(JSON.parse(viaUnix).url, '/unix');
  httpServer.closeAllConnections();
  await close(unix);
  require('node:fs').rmSync(dir, { recursive: true, force: true });
});

test('100 concurrent connections', async () => {
  const ks = keystore();
  const server = m2mpsk.https.createServer({ keystore: ks, localId: IDB }, app);
  const port = await listen(server);
  const all = [];
  for (let i = 0; i < 100; i++) {
    all.push(request(port, ks, { method: 'POST', path: `/c${i}`, data: `body ${i}`,
                                 headers: { connection: 'close' } })
      .then((r) => JSON.parse(r.body)));
  }
  const results = await within(25000, Promise.all(all), '100 requests');
  results.forEach((r, i) => {
    assert.strictEqual(r.url, `/c${i}`);
    assert.strictEqual(r.bytes, `body ${i}`.length);
  });
  await close(server);
});

test('backpressure: several MB each way, read slowly', async () => {
  const ks = keystore();
  const SIZE = 6 * 1024 * 1024;
  const big = crypto.randomBytes(SIZE);
  const digest = crypto.createHash('sha256').update(big).digest('hex');
  let sawBackpressure = false;
  let uploadSocket;
  // The smallest input bound: the server's associations refuse input
  // (E_LIMIT) while its reader is behind, and the socket holds it back.
  const server = m2mpsk.https.createServer({ keystore: ks, localId: IDB, maxInput: m2mpsk.MAX_INPUT_MIN }, (req, res) => {
    if (req.method === 'POST') {
      uploadSocket = req.socket;
      req.pause();
      setTimeout(() => { req.resume(); app(req, res); }, 300);
      return;
    }
    // Writes until write() says stop, then waits for 'drain'.
    let off = 0;
    const more = () => {
      while (off < SIZE) {
        const chunk = big.subarray(off, off + 65536);
        off += chunk.length;
        if (!res.write(chunk)) {
          sawBackpressure = true;
          res.once('drain', more);
          return;
        }
      }
      res.end();
    };
    more();
  });
  const port = await listen(server);
  // Upload to a server that starts reading 300 ms late: the client's
  // write() must report backpressure meanwhile (the association and the
  // sockets hold a bounded amount).
  let clientSawBackpressure = false;
  const up = await within(20000, new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port, method: 'POST', path: '/late',
      createConnection: () => m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks }) },
    (res) => body(res).then((b) => resolve({ res, body: b }), reject));
    req.on('error', reject);
    let off = 0;
    const more = () => {
      while (off < SIZE) {
        const chunk = big.subarray(off, off + 65536);
        off += chunk.length;
        if (!req.write(chunk)) {
          clientSawBackpressure = true;
          req.once('drain', more);
          return;
        }
      }
      req.end();
    };
    more();
  }), 'upload');
  assert.ok(clientSawBackpressure, 'req.write() returned false at least once');
  assert.strictEqual(uploadSocket.remoteAddress, HOST);
  assert.strictEqual(JSON.parse(up.body).bytes, SIZE);
  assert.strictEqual(JSON.parse(up.body).sha256, digest);
  // The client pauses for a while after each chunk: the server must see
  // write() return false instead of buffering the whole body.
  const down = await within(20000, new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port, path: '/big',
      createConnection: () => m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks }) }, (res) => {
      const h = crypto.createHash('sha256');
      let n = 0;
      let slow = 20;
      res.on('data', (d) => {
        h.update(d);
        n += d.length;
        if (slow-- > 0) {
          res.pause();
          setTimeout(() => res.resume(), 10);
        }
      });
      res.on('end', () => resolve({ n, sha: h.digest('hex') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  }), 'download');
  assert.strictEqual(down.n, SIZE);
  assert.strictEqual(down.sha, digest);
  assert.ok(sawBackpressure, 'res.write() returned false at least once');
  await close(server);
});

// A PSKSocket (client) over a Duplex the test drives, with a raw
// responder Association as its peer: records arrive in the chunks the test
// chooses.
async function drivenPair(opts = {}) {
  const stream = require('node:stream');
  const toServer = [];
  const raw = new stream.Duplex({ read() {}, write(chunk, enc, cb) { toServer.push(chunk); cb(); } });
  const ks = keystore();
  const sc = new m2mpsk.Config();
  sc.add_local_id(IDB);
  const s = new m2mpsk.Association(m2mpsk.ROLE_RESPONDER, m2mpsk.TRANSPORT_TLS, sc, ks, null);
  s.start(m2mpsk.nowMs());
  const c = m2mpsk.connect({ socket: raw, kpsaId: KPSA, keystore: ks, ...opts });
  const pump = () => {
    for (const chunk of toServer.splice(0)) s.feed(chunk, m2mpsk.nowMs());
    for (let out = s.drain(); out.length > 0; out = s.drain()) raw.push(out);
  };
  const timer = setInterval(pump, 5);
  await within(5000, once(c, 'secureConnect'));
  clearInterval(timer);
  pump();
  return { raw, c, s, close() { c.destroy(); s.close(); sc.close(); ks.close(); } };
}

test('one large TCP chunk, the smallest maxInput and a slow reader: held back, delivered in order', async () => {
  const { raw, c, s, close: done } = await drivenPair({ maxInput: m2mpsk.MAX_INPUT_MIN });
  let paused = 0;
  const pause = raw.pause.bind(raw);
  raw.pause = () => { paused++; return pause(); };
  const big = crypto.randomBytes(300 * 1024);
  for (let off = 0; off < big.length; off += 16384) s.write(big.subarray(off, off + 16384));
  raw.push(s.drain()); // all of it at once
  // A reader that takes a chunk every few milliseconds.
  const got = [];
  let n = 0;
  await within(10000, new Promise((resolve) => {
    c.on('data', (d) => {
      got.push(d);
      n += d.length;
      c.pause();
      setTimeout(() => c.resume(), 2);
      if (n === big.length) resolve();
    });
  }), 'slow read');
  assert.ok(Buffer.concat(got).equals(big));
  assert.ok(paused > 0, 'the raw socket was paused while the reader was behind');
  done();
});

test('a wrong key: tlsClientError on the server, an error with a code on the client', async () => {
  const server = m2mpsk.createServer({ keystore: keystore(), localId: IDB, eventQueue: 8 }, () => {
    assert.fail('no secureConnection with a wrong key');
  });
  const port = await listen(server);
  const serverErr = once(server, 'tlsClientError');
  const sock = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: keystore({ key: Buffer.alloc(16, 9) }) });
  const [clientErr] = await within(10000, once(sock, 'error'));
  assert.strictEqual(clientErr.name, 'M2mpskError');
  assert.strictEqual(clientErr.code, m2mpsk.E_FAILED);
  assert.notStrictEqual(clientErr.reason, m2mpsk.REASON_NONE);
  assert.strictEqual(typeof clientErr.detail, 'string');
  const [err, s] = await within(10000, serverErr);
  assert.strictEqual(err.code, m2mpsk.E_FAILED);
  assert.strictEqual(err.reason, m2mpsk.REASON_BAD_KEY);
  assert.ok(s instanceof m2mpsk.PSKSocket);
  // The audit event of that failure, from the server's config.
  const ev = server.config.next_event();
  assert.ok(ev, 'an audit event was queued');
  assert.strictEqual(ev.type(), m2mpsk.EVENT_FAILED);
  assert.strictEqual(ev.reason(), m2mpsk.REASON_BAD_KEY);
  assert.strictEqual(ev.kpsa_id(), KPSA);
  assert.match(ev.peer_tag(), /^127\.0\.0\.1:\d+$/);
  ev.close();
  // And over http: the request fails with that error.
  await assert.rejects(request(port, keystore({ key: Buffer.alloc(16, 9) })),
                       (e) => e.code === m2mpsk.E_FAILED);
  await close(server);
});

test('originatorCheck: 4106 for a foreign From, AE create accepted, bound AE-ID', async () => {
  const ks = keystore();
  const server = m2mpsk.https.createServer({ keystore: ks, localId: IDB }, app);
  const port = await listen(server);
  const ask = async (headers) => JSON.parse((await request(port, ks, { headers })).body).verdict;
  assert.strictEqual(await ask({ 'x-m2m-origin': '/cse-1/Cother' }), m2mpsk.ORIGINATOR_NOT_AUTHENTICATED);
  assert.strictEqual(await ask({ 'x-m2m-origin': '/cse-2' }), 4106);
  assert.strictEqual(await ask({ 'x-ae-create': '1' }), m2mpsk.ORIGINATOR_ACCEPT);
  assert.strictEqual(await ask({ 'x-m2m-origin': 'Cnew', 'x-ae-create': '1' }), m2mpsk.ORIGINATOR_ACCEPT);
  // Binding the AE-ID the CSE assigned at <AE> CREATE: later requests on
  // that connection are checked against it (one keep-alive connection).
  const agent = new m2mpsk.https.Agent({ keepAlive: true, maxSockets: 1, kpsaId: KPSA, keystore: ks });
  const onConn = (path, headers) => within(5000, new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port, path, headers, agent }, (res) => body(res).then(resolve, reject));
    req.on('error', reject);
    req.end();
  }));
  server.removeAllListeners('request');
  server.on('request', (req, res) => {
    if (req.url === '/bind') req.socket.bindAeId('/cse-1/Cnew');
    res.end(String(req.socket.originatorCheck(req.headers['x-m2m-origin'])));
  });
  assert.strictEqual(String(await onConn('/bind', { 'x-m2m-origin': '/cse-1/Cnew' })), '0');
  assert.strictEqual(String(await onConn('/x', { 'x-m2m-origin': '/cse-1/Cnew' })), '0');
  assert.strictEqual(String(await onConn('/x', { 'x-m2m-origin': '/cse-1/Cother' })), '4106');
  // A malformed From is an error (E_IDA), which the application answers.
  server.removeAllListeners('request');
  server.on('request', (req, res) => {
    try {
      res.end(String(req.socket.originatorCheck(req.headers['x-m2m-origin'])));
    } catch (e) {
      res.end(`error ${e.code}`);
    }
  });
  assert.strictEqual(String(await onConn('/x', { 'x-m2m-origin': 'not a valid id!' })), `error ${m2mpsk.E_IDA}`);
  agent.destroy();
  // A client socket: the raw handle's checks, and errors as M2mpskError.
  const sock = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks });
  // Before the handshake: no identity, and E_STATE.
  assert.strictEqual(sock.peerId, null);
  assert.throws(() => sock.originatorCheck('/cse-1'), (e) => e.code === m2mpsk.E_STATE);
  await within(5000, once(sock, 'secureConnect'));
  assert.strictEqual(sock.peerId, IDB);
  assert.strictEqual(sock.peerKind, m2mpsk.PEER_CSE);
  assert.strictEqual(sock.credential, false);
  // The initiator has no IdA, so no CSE-ID of its own: E_IDB.
  assert.throws(() => sock.originatorCheck('/cse-1'), (e) => e.code === m2mpsk.E_IDB);
  assert.throws(() => sock.originatorCheck('/cse-1', 1 << 20), (e) => e.code === m2mpsk.E_INVALID);
  const k = sock.exportKeyingMaterial(16, 'EXPERIMENTAL x');
  assert.strictEqual(k.length, 16);
  sock.destroy();
  assert.throws(() => sock.originatorCheck('/cse-1'), (e) => e.code === m2mpsk.E_INVALID);
  assert.strictEqual(sock.peerId, null);
  await close(server);
});

test('server bounds: handshakeTimeout, maxConnections; end() sends close_notify; setTimeout', async () => {
  const ks = keystore();
  const server = m2mpsk.createServer({ keystore: ks, localId: IDB, handshakeTimeout: 300, maxConnections: 2 });
  const port = await listen(server);
  // A TCP client that says nothing: failed by the handshake timeout.
  const mute = net.connect(port, HOST);
  const [err] = await within(5000, once(server, 'tlsClientError'), 'bounds step 1');
  assert.strictEqual(err.reason, m2mpsk.REASON_TIMEOUT);
  await within(5000, once(mute, 'close'), 'bounds step 2');
  // The server's end(): the client reads close_notify as the end of its
  // stream, and ends in turn (allowHalfOpen false, as in node:tls).
  const accepting = within(5000, once(server, 'secureConnection'), 'bounds step 3');
  const client = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks });
  await within(5000, once(client, 'secureConnect'), 'bounds step 4');
  const [accepted] = await accepting;
  const n = await new Promise((r) => server.getConnections((e, k) => r(k)));
  assert.strictEqual(n, 1);
  const clientEnded = once(client, 'end');
  const closed = Promise.all([once(accepted, 'close'), once(client, 'close')]);
  client.resume();
  accepted.resume();
  accepted.end();
  await within(5000, clientEnded, 'bounds step 5');
  await within(5000, closed, 'both closed');
  // setTimeout: 'timeout' on an idle socket.
  const c = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks });
  await within(5000, once(c, 'secureConnect'), 'bounds step 8');
  await within(5000, new Promise((r) => c.setTimeout(100, r)), 'bounds step 9');
  c.destroy();
  // maxConnections: 2 held, the third refused.
  const held = [];
  for (let i = 0; i < 2; i++) {
    const s = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks });
    held.push(s);
    await within(5000, once(s, 'secureConnect'), 'bounds step 10');
  }
  const third = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks });
  const [e3] = await within(5000, once(third, 'error'), 'bounds step 11');
  assert.ok(e3, 'the third connection fails');
  for (const s of held) s.destroy();
  await close(server);
});

test('client end(): the server reads close_notify as the end of the stream', async () => {
  const ks = keystore();
  const server = m2mpsk.createServer({ keystore: ks, localId: IDB });
  const port = await listen(server);
  const accepted = once(server, 'secureConnection');
  const c = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks });
  c.end('last words'); // written before the handshake: queued, then sent
  const [s] = await within(5000, accepted);
  const got = await within(5000, new Promise((resolve) => {
    const parts = [];
    s.on('data', (d) => parts.push(d));
    s.on('end', () => resolve(Buffer.concat(parts).toString()));
  }));
  assert.strictEqual(got, 'last words');
  await within(5000, once(c, 'close'));
  await close(server);
});

test('a peer that hangs up mid-handshake; maxHandshakes refuses the next connection', async () => {
  const ks = keystore();
  const server = m2mpsk.createServer({ keystore: ks, localId: IDB, maxHandshakes: 1 });
  const port = await listen(server);
  // A client that connects and hangs up: tlsClientError E_FAILED, no reason.
  const hung = once(server, 'tlsClientError');
  net.connect(port, HOST).end();
  const [e1] = await within(5000, hung);
  assert.strictEqual(e1.code, m2mpsk.E_FAILED);
  assert.strictEqual(e1.reason, m2mpsk.REASON_NONE);
  // One mute client holds the one handshake allowed; the next is refused
  // with E_LIMIT before any association exists.
  const mute = net.connect(port, HOST);
  await within(5000, once(server, 'connection'));
  const limited = once(server, 'tlsClientError');
  const second = net.connect(port, HOST);
  const [e2, s2] = await within(5000, limited);
  assert.strictEqual(e2.code, m2mpsk.E_LIMIT);
  assert.strictEqual(s2, null);
  await within(5000, once(second, 'close'));
  mute.destroy();
  await close(server);
  // A server that hangs up on the client mid-handshake: an 'error' on it.
  const rude = net.createServer((s) => s.destroy());
  await new Promise((r) => rude.listen(0, HOST, r));
  const c = m2mpsk.connect({ host: HOST, port: rude.address().port, kpsaId: KPSA, keystore: ks });
  const [e3] = await within(5000, once(c, 'error'));
  assert.strictEqual(e3.code, m2mpsk.E_FAILED);
  await new Promise((r) => rude.close(r));
});

test('a data listener that destroys the socket while more records wait', async () => {
  const p = await drivenPair();
  let calls = 0;
  p.c.on('data', () => { calls++; p.c.destroy(); });
  await new Promise((r) => setImmediate(r)); // flowing, its buffer empty: 'data' is emitted within push()
  // Two records in one TCP chunk: the first 'data' destroys the socket,
  // and the second must not reach a freed association.
  p.s.write(Buffer.alloc(16384, 1)); // a read() returns at most 16384 bytes: two pushes
  p.s.write(Buffer.alloc(16384, 2));
  p.raw.push(p.s.drain());
  await within(5000, once(p.c, 'close'));
  assert.strictEqual(calls, 1);
  p.close();
});

test('bad options throw at once', () => {
  assert.throws(() => m2mpsk.connect({ host: HOST, port: 1, keystore: keystore() }), TypeError);
  assert.throws(() => m2mpsk.connect({ host: HOST, port: 1, kpsaId: KPSA }), TypeError);
  assert.throws(() => m2mpsk.connect({ host: HOST, port: 1, kpsaId: 'unknown@onem2m.com', keystore: keystore() }),
                (e) => e.code === m2mpsk.E_NOT_FOUND);
  assert.throws(() => m2mpsk.createServer({ keystore: keystore() }), TypeError); // no localId
  assert.throws(() => m2mpsk.createServer({ keystore: keystore(), localId: 'bad' }),
                (e) => e.code === m2mpsk.E_IDB);
  assert.throws(() => m2mpsk.createServer({ keyFile: '/nonexistent', localId: IDB }),
                (e) => e.code === m2mpsk.E_IO);
  const loose = keyFile([`kpsa-id=${KPSA} kpsa=hex:${KEY_HEX} idb=${IDB}`]);
  require('node:fs').chmodSync(loose, 0o644);
  assert.throws(() => m2mpsk.createServer({ keyFile: loose, localId: IDB }),
                (e) => e.code === m2mpsk.E_KEYFILE_PERMS);
});
