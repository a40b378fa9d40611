#!/usr/bin/env node
// Node.js TLS 1.2 PSK peer for the m2mpsk interoperability matrix
// (tests/interop/interop.py drives it; it is not meant to be used alone).
//
//   node node_peer.js server --identity ID --key HEX --ciphers LIST [--send HEX]
//   node node_peer.js client --port N --identity ID --key HEX --ciphers LIST
//                            [--servername NAME]
//
// Events go to stdout, one JSON object a line:
//   {"event":"listening","port":N}                     (server)
//   {"event":"secure","cipher":IANA,"name":OPENSSL,"version":V,"identity":ID}
//   {"event":"data","hex":HEX}
//   {"event":"error","code":C,"message":M}
//   {"event":"close"}
// Commands come on stdin, one a line: "send HEX" writes bytes to the peer,
// "end" sends close_notify and closes. The server accepts one connection
// and writes --send HEX as soon as it is established.
'use strict';
const tls = require('tls');
const readline = require('readline');

function parseArgs(argv) {
  const out = { mode: argv[0] };
  for (let i = 1; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
      throw new Error('bad argument: ' + argv[i]);
    }
    out[argv[i].slice(2)] = argv[i + 1];
  }
  return out;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const args = parseArgs(process.argv.slice(2));
const key = Buffer.from(args.key, 'hex');
let current = null;

function attach(sock) {
  current = sock;
  sock.on('data', (d) => emit({ event: 'data', hex: d.toString('hex') }));
  sock.on('error', (e) => emit({ event: 'error', code: e.code || null,
                                  message: String(e.message) }));
  sock.on('end', () => { emit({ event: 'end' }); sock.end(); });
  sock.on('close', () => { emit({ event: 'close' }); });
}

function secureInfo(sock, identity) {
  const c = sock.getCipher();
  emit({ event: 'secure', cipher: c.standardName, name: c.name,
         version: sock.getProtocol(), identity: identity });
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (!current) {
    emit({ event: 'error', code: 'ENOTCONN', message: 'no connection for ' + cmd });
  } else if (cmd === 'send') {
    current.write(Buffer.from(arg, 'hex'));
  } else if (cmd === 'end') {
    current.end();
  }
});

if (args.mode === 'server') {
  let seenIdentity = null;
  const server = tls.createServer({
    ciphers: args.ciphers,
    pskCallback: (socket, identity) => {
      seenIdentity = identity;
      return identity === args.identity ? key : null;
    },
  });
  server.on('secureConnection', (sock) => {
    attach(sock);
    secureInfo(sock, seenIdentity);
    if (args.send) sock.write(Buffer.from(args.send, 'hex'));
    server.close();
  });
  server.on('tlsClientError', (e) => {
    emit({ event: 'error', code: e.code || null, message: String(e.message) });
    server.close();
  });
  server.listen(0, '127.0.0.1', () => {
    emit({ event: 'listening', port: server.address().port });
  });
} else if (args.mode === 'client') {
  const sock = tls.connect({
    host: '127.0.0.1',
    port: Number(args.port),
    servername: args.servername,
    ciphers: args.ciphers,
    checkServerIdentity: () => undefined,
    pskCallback: () => ({ psk: key, identity: args.identity }),
  }, () => secureInfo(sock, args.identity));
  attach(sock);
} else {
  process.stderr.write('usage: node_peer.js server|client --key HEX ...\n');
  process.exit(2);
}
