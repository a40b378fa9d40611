'use strict';
// Shared by the tests: keys, keystores, a bounded wait, and key files.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const m2mpsk = require('../lib/index.js');

const KPSA = 'test@onem2m.com';
const KEY_HEX = '000102030405060708090a0b0c0d0e0f';
const KEY = Buffer.from(KEY_HEX, 'hex');
const IDB = '/cse-1';

// A keystore with the one record both sides use (no IdA: the server binds
// the Credential-ID "12-test@onem2m.com").
function keystore({ key = KEY, ida = null, kpsa = KPSA, more = 0 } = {}) {
  const ks = new m2mpsk.Keystore(0);
  ks.add(kpsa, key, ida, IDB);
  for (let i = 0; i < more; i++) ks.add(`dev${i}@onem2m.com`, KEY, null, IDB);
  return ks;
}

// A key file (mode 0600) in a fresh directory, removed at exit.
function keyFile(lines) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'm2mpsk-node-'));
  const file = path.join(dir, 'keys');
  fs.writeFileSync(file, lines.join('\n') + '\n', { mode: 0o600 });
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return file;
}

// Resolves with the promise's value, or rejects after ms.
function within(ms, promise, what = 'operation') {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

function once(emitter, event) {
  return new Promise((resolve, reject) => {
    const onErr = (e) => { emitter.removeListener(event, onEv); reject(e); };
    const onEv = (...a) => { emitter.removeListener('error', onErr); resolve(a); };
    emitter.once(event, onEv);
    if (event !== 'error') emitter.once('error', onErr);
  });
}

// Reads a whole http.IncomingMessage.
function body(res) {
  return new Promise((resolve, reject) => {
    const parts = [];
    res.on('data', (d) => parts.push(d));
    res.on('end', () => resolve(Buffer.concat(parts)));
    res.on('error', reject);
  });
}

module.exports = { m2mpsk, KPSA, KEY, KEY_HEX, IDB, keystore, keyFile, within, once, body };
