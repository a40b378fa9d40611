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
  const server = m2mpsk.https.createServer({ keystore: ks, localId: IDB }, (req, res) => {
    if (req.method === 'POST') {
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

test('a wrong key: tlsClientError on the server, an error with a code on the client', async () => {
  const server = m2mpsk.createServer({ keystore: keystore(), localId: IDB }, () => {
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
  agent.destroy();
  // A client socket: the raw handle's checks, and errors as M2mpskError.
  const sock = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks });
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
