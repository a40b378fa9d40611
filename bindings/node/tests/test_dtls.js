'use strict';
// DTLS over dgram: many peers on one UDP socket, the cookie exchange
// before any state, the server's bounds, and a client's timers.
const test = require('node:test');
const assert = require('node:assert');
const dgram = require('node:dgram');
const { m2mpsk, KPSA, KEY, IDB, keystore, within, once } = require('./helpers.js');

const HOST = '127.0.0.1';
const { dtls } = m2mpsk;
const cookies = (() => {
  // BoringSSL has no cookie exchange (E_UNSUPPORTED): the server then makes
  // associations at once, and the cookie assertions do not apply.
  const c = new m2mpsk.Config();
  c.add_local_id(IDB);
  try {
    c.dtls_listen('127.0.0.1:1', Buffer.from('x'));
  } catch (e) {
    return e.code !== m2mpsk.E_UNSUPPORTED;
  } finally {
    c.close();
  }
  return true;
})();

// An echo server: every record comes back prefixed with the peer's
// identity.
async function echoServer(opts = {}) {
  const server = dtls.createServer({ keystore: keystore({ more: 60 }), localId: IDB, ...opts }, (peer) => {
    peer.on('data', (d) => peer.write(Buffer.concat([Buffer.from(`${peer.peerId}|`), d])));
    peer.on('error', () => {});
  });
  await within(5000, new Promise((r) => server.listen(0, HOST, r)), 'listen');
  return server;
}

function client(port, kpsaId = KPSA, ks = keystore({ more: 60 }), extra = {}) {
  return dtls.connect({ host: HOST, port, kpsaId, keystore: ks, ...extra });
}

test('one peer: handshake, records both ways, close_notify', async () => {
  const server = await echoServer();
  const port = server.address().port;
  const accepted = once(server, 'secureConnection');
  const c = client(port);
  await within(5000, once(c, 'secureConnect'));
  const [peer] = await within(5000, accepted);
  assert.strictEqual(c.peerId, IDB);
  assert.strictEqual(c.getProtocol(), 'DTLSv1.2');
  assert.strictEqual(peer.peerId, '12-' + KPSA);
  assert.strictEqual(peer.credential, true);
  assert.strictEqual(peer.originatorCheck('/cse-1/Cx'), m2mpsk.ORIGINATOR_NOT_AUTHENTICATED);
  assert.strictEqual(peer.remoteAddress, HOST);
  c.send(Buffer.from('ping'));
  const [echo] = await within(5000, once(c, 'data'));
  assert.strictEqual(echo.toString(), `12-${KPSA}|ping`);
  if (cookies) assert.strictEqual(server.stats.cookiesSent, 1);
  assert.strictEqual(server.stats.accepted, 1);
  // The client's close_notify ends the server's peer, which is forgotten.
  const peerClosed = once(peer, 'close');
  peer.resume();
  c.close();
  await within(5000, peerClosed);
  assert.strictEqual(server.peers.size, 0);
  await within(5000, new Promise((r) => server.close(r)));
});

test('50 peers on one UDP socket, each its own identity', async () => {
  const server = await echoServer({ maxPeers: 100 });
  const port = server.address().port;
  const ks = keystore({ more: 60 });
  const runs = [];
  for (let i = 0; i < 50; i++) {
    runs.push((async () => {
      const c = client(port, `dev${i}@onem2m.com`, ks);
      await once(c, 'secureConnect');
      c.send(Buffer.from(`hello ${i}`));
      const [d] = await once(c, 'data');
      c.close();
      return d.toString();
    })());
  }
  const got = await within(25000, Promise.all(runs), '50 DTLS peers');
  got.forEach((g, i) => assert.strictEqual(g, `12-dev${i}@onem2m.com|hello ${i}`));
  assert.strictEqual(server.stats.accepted, 50);
  if (cookies) assert.strictEqual(server.stats.cookiesSent, 50);
  ks.close();
  await within(5000, new Promise((r) => server.close(r)));
});

test('garbage and first ClientHellos cost no state; maxPeers; idle peers are dropped', async () => {
  const server = await echoServer({ maxPeers: 2, idleTimeout: 300 });
  const port = server.address().port;
  const raw = dgram.createSocket('udp4');
  await new Promise((r) => raw.bind(0, HOST, r));
  raw.send(Buffer.from('garbage that is not a ClientHello'), port, HOST);
  raw.send(Buffer.alloc(0), port, HOST);
  // A ClientHello without a cookie: a HelloVerifyRequest, and no peer.
  const a = new m2mpsk.Association(m2mpsk.ROLE_INITIATOR, m2mpsk.TRANSPORT_DTLS, new m2mpsk.Config(),
                                   keystore(), KPSA);
  a.start(m2mpsk.nowMs());
  const hvr = new Promise((r) => raw.once('message', r));
  raw.send(a.drain(), port, HOST);
  if (cookies) {
    const reply = await within(5000, hvr);
    assert.strictEqual(reply[0], 22); // a handshake record: the HelloVerifyRequest
    assert.strictEqual(reply[13], 3); // HelloVerifyRequest's handshake type
    assert.strictEqual(server.peers.size, 0);
    assert.ok(server.stats.dropped >= 1);
  }
  a.close();
  raw.close();
  // Two peers fill it; a third gets no answer at all.
  const held = [client(port), client(port, 'dev1@onem2m.com')];
  await within(5000, Promise.all(held.map((c) => once(c, 'secureConnect'))));
  assert.strictEqual(server.peers.size, 2);
  const third = client(port, 'dev2@onem2m.com', undefined, { handshakeTimeout: 500 });
  const [err] = await within(5000, once(third, 'error'));
  assert.strictEqual(err.reason, m2mpsk.REASON_TIMEOUT);
  // Idle for 300 ms: the server sends close_notify, the clients end.
  await within(5000, Promise.all(held.map((c) => { c.resume(); return once(c, 'close'); })), 'idle close');
  assert.strictEqual(server.peers.size, 0);
  await within(5000, new Promise((r) => server.close(r)));
});

test('a wrong key: tlsClientError on the server, an error on the client', async () => {
  const server = await echoServer();
  const port = server.address().port;
  const errP = once(server, 'tlsClientError');
  const c = client(port, KPSA, keystore({ key: Buffer.alloc(16, 5) }));
  const [cerr] = await within(5000, once(c, 'error'));
  assert.strictEqual(cerr.code, m2mpsk.E_FAILED);
  const [serr] = await within(5000, errP);
  assert.strictEqual(serr.code, m2mpsk.E_FAILED);
  assert.strictEqual(serr.reason, m2mpsk.REASON_BAD_KEY);
  assert.strictEqual(server.peers.size, 0);
  await within(5000, new Promise((r) => server.close(r)));
});

test('a client retransmits its flight when datagrams are lost, and times out alone', async () => {
  // A UDP socket that swallows the first ClientHello, then relays.
  const server = await echoServer();
  const port = server.address().port;
  const relay = dgram.createSocket('udp4');
  await new Promise((r) => relay.bind(0, HOST, r));
  let swallowed = 0;
  let clientAddr;
  relay.on('message', (msg, rinfo) => {
    if (rinfo.port === port) {
      relay.send(msg, clientAddr.port, clientAddr.address);
      return;
    }
    clientAddr = rinfo;
    if (swallowed++ === 0) return;
    relay.send(msg, port, HOST);
  });
  const c = client(relay.address().port);
  await within(10000, once(c, 'secureConnect'), 'handshake through a lossy relay');
  assert.ok(swallowed >= 2, 'the ClientHello was sent again');
  c.close();
  relay.close();
  // Nobody answering: the handshake timeout fails the client.
  const mute = dgram.createSocket('udp4');
  await new Promise((r) => mute.bind(0, HOST, r));
  const lost = client(mute.address().port, KPSA, undefined, { handshakeTimeout: 400 });
  const [err] = await within(5000, once(lost, 'error'));
  assert.strictEqual(err.reason, m2mpsk.REASON_TIMEOUT);
  mute.close();
  await within(5000, new Promise((r) => server.close(r)));
});

test('a client restarted on the same address replaces its old association (RFC 6347 4.2.8)', async () => {
  const server = await echoServer();
  const port = server.address().port;
  const probe = dgram.createSocket('udp4');
  await new Promise((r) => probe.bind(0, HOST, r));
  const localPort = probe.address().port;
  await new Promise((r) => probe.close(r));
  const first = client(port, KPSA, undefined, { localPort });
  await within(5000, once(first, 'secureConnect'));
  first.destroy(); // a crash: no close_notify, the server still holds it
  await within(5000, once(first, 'close'));
  assert.strictEqual(server.peers.size, 1);
  const again = client(port, 'dev3@onem2m.com', undefined, { localPort });
  await within(5000, once(again, 'secureConnect'), 'the restarted client handshakes');
  const [peer] = [...server.peers.values()];
  assert.strictEqual(peer.peerId, '12-dev3@onem2m.com');
  assert.strictEqual(server.peers.size, 1);
  if (cookies) assert.strictEqual(server.stats.replaced, 1);
  again.close();
  await within(5000, new Promise((r) => server.close(r)));
});

test('a listener that destroys its peer while records wait', async () => {
  const server = await echoServer();
  server.removeAllListeners('secureConnection');
  let n = 0;
  server.on('secureConnection', (peer) => peer.on('data', () => { n++; peer.destroy(); }));
  const c = client(server.address().port);
  await within(5000, once(c, 'secureConnect'));
  c.send(Buffer.from('a'));
  c.send(Buffer.from('b'));
  await within(5000, new Promise((r) => { const t = setInterval(() => { if (server.peers.size === 0) { clearInterval(t); r(); } }, 10); }));
  assert.strictEqual(n, 1);
  c.destroy();
  await within(5000, new Promise((r) => server.close(r)));
});

test('bad options and bad writes', async () => {
  assert.throws(() => dtls.createServer({ keystore: keystore() }), TypeError);
  assert.throws(() => dtls.connect({ port: 1, keystore: keystore() }), TypeError);
  assert.throws(() => dtls.connect({ port: 1, kpsaId: 'nobody@onem2m.com', keystore: keystore() }),
                (e) => e.code === m2mpsk.E_NOT_FOUND);
  const server = await echoServer();
  const c = client(server.address().port);
  await within(5000, once(c, 'secureConnect'));
  // A record larger than DTLS allows: an error, not a crash.
  // The stream is destroyed with that error, as a net socket's would be.
  const errored = once(c, 'error').catch((e) => e);
  const err = await new Promise((r) => c.write(Buffer.alloc(20000), r));
  assert.strictEqual(err.code, m2mpsk.E_INVALID, String(err));
  assert.strictEqual((await within(5000, errored))[0], err);
  assert.ok(c.destroyed);
  await within(5000, new Promise((r) => server.close(r)));
  void KEY;
});
