// Node's own TLS (OpenSSL, linked into the node binary) in use, then the
// m2mpsk addon loaded into the same process. Usage: node node_tls.js ADDON
'use strict';
const crypto = require('crypto');
const tls = require('tls');

const digest = () => crypto.createHash('sha256').update('abc').digest('hex');
const before = digest();
const ctx = tls.createSecureContext({});
if (!ctx || before.slice(0, 4) !== 'ba78') throw new Error('node crypto');
console.log(`node ${process.version}, OpenSSL ${process.versions.openssl}`);

const addon = require(process.argv[2]);
process.stdout.write(addon.handshake());
if (digest() !== before) throw new Error('node crypto broken after m2mpsk');
tls.createSecureContext({});
console.log('node crypto and tls still work after m2mpsk');
