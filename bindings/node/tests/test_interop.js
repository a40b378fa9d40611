'use strict';
// The adapters against OpenSSL's own tools: m2mpsk.connect (and node:http
// over it) to `openssl s_server -psk`, and `openssl s_client -psk` to
// m2mpsk.https.createServer; the DTLS ones over dgram likewise.
const test = require('node:test');
const assert = require('node:assert');
const http = require('node:http');
const { spawn, spawnSync } = require('node:child_process');
const { m2mpsk, KPSA, KEY_HEX, IDB, keystore, within, once, body } = require('./helpers.js');

const HOST = '127.0.0.1';
const haveOpenssl = spawnSync('openssl', ['version']).status === 0;
const skip = haveOpenssl ? false : 'openssl not found';

// Starts openssl with args; resolves with { proc, out() } once `ready`
// (a regex) shows in its output, and kills it when the test ends.
function openssl(t, args, ready) {
  const proc = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let seen = '';
  const waiters = [];
  const onData = (d) => {
    seen += d.toString('latin1');
    for (const w of waiters.splice(0)) {
      const mm = seen.match(w.re);
      if (mm) w.resolve(mm);
      else waiters.push(w);
    }
  };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  t.after(() => proc.kill('SIGKILL'));
  const waitFor = (re, ms = 10000) => within(ms, new Promise((resolve) => {
    const mm = seen.match(re);
    if (mm) resolve(mm);
    else waiters.push({ re, resolve });
  }), `openssl output ${re} (seen: ${JSON.stringify(seen.slice(-300))})`);
  const exited = new Promise((r) => proc.on('exit', (code) => r(code)));
  return { proc, waitFor, exited, ready: ready ? waitFor(ready) : null, output: () => seen };
}

const PSK_ARGS = ['-psk', KEY_HEX, '-psk_identity', KPSA, '-cipher', 'PSK'];

test('node:http over m2mpsk.connect to openssl s_server -www (TLS)', { skip }, async (t) => {
  const s = openssl(t, ['s_server', '-nocert', '-accept', `${HOST}:0`, '-tls1_2', '-www', ...PSK_ARGS],
                    /ACCEPT.*:(\d+)\s/);
  const port = Number((await s.ready)[1]);
  const ks = keystore();
  const res = await within(10000, new Promise((resolve, reject) => {
    const req = http.request({ host: HOST, port, path: '/',
      createConnection: () => m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: ks }) },
    (r) => body(r).then((b) => resolve({ r, b }), reject));
    req.on('socket', (sock) => sock.on('secureConnect', () => {
      assert.strictEqual(sock.peerId, IDB);
    }));
    req.on('error', reject);
    req.end();
  }));
  assert.strictEqual(res.r.statusCode, 200);
  // s_server -www describes the session: a PSK suite, TLSv1.2.
  assert.match(res.b.toString(), /TLSv1\.2/);
  assert.match(res.b.toString(), /PSK/);
});

test('m2mpsk.connect to openssl s_server: data both ways, close_notify (TLS)', { skip }, async (t) => {
  const s = openssl(t, ['s_server', '-nocert', '-accept', `${HOST}:0`, '-tls1_2', ...PSK_ARGS],
                    /ACCEPT.*:(\d+)\s/);
  const port = Number((await s.ready)[1]);
  const sock = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: keystore() });
  await within(10000, once(sock, 'secureConnect'));
  assert.strictEqual(sock.getProtocol(), 'TLSv1.2');
  sock.write('hello from node\n');
  await s.waitFor(/hello from node/);
  const got = within(10000, new Promise((resolve) => {
    let acc = '';
    sock.on('data', (d) => {
      acc += d;
      if (acc.includes('\n')) resolve(acc);
    });
  }));
  s.proc.stdin.write('hello from openssl\n');
  assert.strictEqual(await got, 'hello from openssl\n');
  sock.end();
  await s.waitFor(/DONE|shutting down|CLOSE/i);
});

test('m2mpsk.connect with a wrong key to openssl s_server fails with E_FAILED', { skip }, async (t) => {
  const s = openssl(t, ['s_server', '-nocert', '-accept', `${HOST}:0`, '-tls1_2', ...PSK_ARGS],
                    /ACCEPT.*:(\d+)\s/);
  const port = Number((await s.ready)[1]);
  const sock = m2mpsk.connect({ host: HOST, port, kpsaId: KPSA, keystore: keystore({ key: Buffer.alloc(16, 3) }) });
  const [err] = await within(10000, once(sock, 'error'));
  assert.strictEqual(err.code, m2mpsk.E_FAILED);
  assert.notStrictEqual(err.reason, m2mpsk.REASON_NONE);
});

test('openssl s_client to m2mpsk.https.createServer (TLS)', { skip }, async (t) => {
  const server = m2mpsk.https.createServer({ keystore: keystore(), localId: IDB }, (req, res) => {
    res.end(`hello ${req.socket.peerId} ${req.socket.suite}\n`);
  });
  await new Promise((r) => server.listen(0, HOST, r));
  t.after(() => { server.closeAllConnections(); server.close(); });
  const port = server.address().port;
  const c = openssl(t, ['s_client', '-connect', `${HOST}:${port}`, '-tls1_2', '-ign_eof', ...PSK_ARGS]);
  c.proc.stdin.end('GET / HTTP/1.0\r\n\r\n');
  await c.waitFor(/hello 12-test@onem2m\.com TLS_PSK_\w+/);
  assert.match(c.output(), /HTTP\/1\.1 200 OK/);
  assert.strictEqual(await within(10000, c.exited), 0);
});

test('openssl s_client with a wrong key: the server reports tlsClientError', { skip }, async (t) => {
  const server = m2mpsk.createServer({ keystore: keystore(), localId: IDB });
  await new Promise((r) => server.listen(0, HOST, r));
  t.after(() => server.close());
  const port = server.address().port;
  const errP = once(server, 'tlsClientError');
  const c = openssl(t, ['s_client', '-connect', `${HOST}:${port}`, '-tls1_2', '-psk', '0f'.repeat(16),
                        '-psk_identity', KPSA, '-cipher', 'PSK']);
  c.proc.stdin.end();
  const [err] = await within(10000, errP);
  assert.strictEqual(err.code, m2mpsk.E_FAILED);
  assert.strictEqual(err.reason, m2mpsk.REASON_BAD_KEY);
  assert.notStrictEqual(await within(10000, c.exited), 0);
});

test('m2mpsk.dtls.connect to openssl s_server -dtls1_2: records both ways', { skip }, async (t) => {
  const s = openssl(t, ['s_server', '-nocert', '-accept', `${HOST}:0`, '-dtls1_2', ...PSK_ARGS],
                    /ACCEPT.*:(\d+)\s/);
  const port = Number((await s.ready)[1]);
  const c = m2mpsk.dtls.connect({ host: HOST, port, kpsaId: KPSA, keystore: keystore() });
  await within(10000, once(c, 'secureConnect'));
  assert.strictEqual(c.getProtocol(), 'DTLSv1.2');
  assert.strictEqual(c.peerId, IDB);
  c.send(Buffer.from('hello from node\n'));
  await s.waitFor(/hello from node/);
  const got = once(c, 'data');
  s.proc.stdin.write('hello from openssl\n');
  assert.strictEqual((await within(10000, got))[0].toString(), 'hello from openssl\n');
  c.close();
  await s.waitFor(/DONE|shutting down|CLOSE/i);
});

test('openssl s_client -dtls1_2 to m2mpsk.dtls.createServer', { skip }, async (t) => {
  const server = m2mpsk.dtls.createServer({ keystore: keystore(), localId: IDB }, (peer) => {
    peer.on('data', (d) => peer.send(Buffer.from(`echo ${peer.peerId} ${d}`)));
  });
  await new Promise((r) => server.listen(0, HOST, r));
  t.after(() => server.close());
  const port = server.address().port;
  const c = openssl(t, ['s_client', '-connect', `${HOST}:${port}`, '-dtls1_2', ...PSK_ARGS]);
  await c.waitFor(/Cipher is PSK|New, TLSv1\.2|Verify return code/);
  c.proc.stdin.write('ping\n');
  await c.waitFor(/echo 12-test@onem2m\.com ping/);
  // At the end of its input s_client sends close_notify and exits.
  const [peer] = [...server.peers.values()];
  assert.ok(peer, 'the server holds the peer');
  const closed = once(peer, 'close');
  peer.resume();
  c.proc.stdin.end();
  await within(10000, closed, 'the peer closed by close_notify');
  assert.strictEqual(await within(10000, c.exited), 0);
  assert.strictEqual(server.peers.size, 0);
});

module.exports = { openssl, PSK_ARGS, HOST, skip };
