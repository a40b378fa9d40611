'use strict';
// Run from the scratch project npm_install.sh made: the installed package
// serves HTTP over TLS-PSK and reaches it, and runs a DTLS exchange.
const assert = require('node:assert');
const http = require('node:http');
const path = require('node:path');

const resolved = require.resolve('m2mpsk', { paths: [process.cwd()] });
assert.ok(resolved.startsWith(path.join(process.cwd(), 'node_modules', 'm2mpsk')), resolved);
const m2mpsk = require(resolved);

const KPSA = 'test@onem2m.com';
const ks = new m2mpsk.Keystore(0);
ks.add(KPSA, Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex'), null, '/cse-1');
const deadline = setTimeout(() => { console.error('FAIL: timed out'); process.exit(1); }, 20000);

const server = m2mpsk.https.createServer({ keystore: ks, localId: '/cse-1' }, (req, res) => {
  res.end(`hello ${req.socket.peerId}`);
});
server.listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  http.get({ host: '127.0.0.1', port, path: '/',
    createConnection: () => m2mpsk.connect({ host: '127.0.0.1', port, kpsaId: KPSA, keystore: ks }) }, (res) => {
    let b = '';
    res.on('data', (d) => { b += d; });
    res.on('end', () => {
      assert.strictEqual(b, `hello 12-${KPSA}`);
      console.log(`TLS: ${b} (m2mpsk ${m2mpsk.version_string()}, ${m2mpsk.backend_name()})`);
      server.closeAllConnections();
      server.close();
      dtls();
    });
  }).on('error', (e) => { console.error('FAIL:', e); process.exit(1); });
});

function dtls() {
  const ds = m2mpsk.dtls.createServer({ keystore: ks, localId: '/cse-1' }, (peer) => {
    peer.on('data', (d) => peer.send(Buffer.concat([Buffer.from('echo '), d])));
  });
  ds.listen(0, '127.0.0.1', () => {
    const c = m2mpsk.dtls.connect({ host: '127.0.0.1', port: ds.address().port, kpsaId: KPSA, keystore: ks });
    c.on('secureConnect', () => c.send(Buffer.from('ping')));
    c.on('data', (d) => {
      assert.strictEqual(d.toString(), 'echo ping');
      console.log(`DTLS: ${d} (${c.suite})`);
      c.close();
      ds.close(() => { clearTimeout(deadline); ks.close(); });
    });
    c.on('error', (e) => { console.error('FAIL:', e); process.exit(1); });
  });
}
