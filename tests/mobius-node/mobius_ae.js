'use strict';
// An AE written with Node.js's own `http` client over m2mpsk.connect,
// against Mobius serving its oneM2M HTTP API through
// m2mpsk.https.createServer (mobius-m2mpsk.patch). mobius_node.py starts
// that Mobius, runs this script and then checks Mobius's database and log;
// the last line this script prints, "RESULT {json}", names what to look for.
//
//   node mobius_ae.js '{"port":…,"keys":…,"wrongKeys":…,"unknownKeys":…,
//                       "kpsaId":…,"unknownKpsaId":…,"cseId":…,"cseBase":…}'
//
// Exit 0 when every check passed, 1 otherwise (the failed check is named).
// Bounded: STEP_MS for any one request, DEADLINE_MS for the whole script.
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const m2mpsk = require('m2mpsk');

const STEP_MS = 10000;
const DEADLINE_MS = 60000;
const cfg = JSON.parse(process.argv[2]);

function log(msg) {
  process.stderr.write('node: ' + msg + '\n');
}

function ok(cond, what) {
  assert.ok(cond, what);
  log('ok: ' + what);
}

function connectOptions(keyFile, kpsaId) {
  return {host: '127.0.0.1', port: cfg.port, kpsaId, keyFile};
}

// The CSE binds the AE-ID it assigns to the association the AE registered
// over, so the AE's requests must share one association: a keep-alive agent
// with one socket, whose connections are m2mpsk's.
function pskAgent(keyFile, kpsaId, sockets) {
  const agent = new http.Agent({keepAlive: true, maxSockets: 1});
  agent.createConnection = () => {
    const s = m2mpsk.connect(connectOptions(keyFile, kpsaId));
    sockets.push(s);
    return s;
  };
  return agent;
}

// One oneM2M request (TS-0009 HTTP binding); resolves with the status, RSC,
// RQI and parsed body, or rejects on a transport error or after STEP_MS.
// `via` is {agent} or {createConnection}.
function request(via, {method, path, from, rqi, ty, body}) {
  return new Promise((resolve, reject) => {
    const headers = {'Accept': 'application/json', 'X-M2M-Origin': from,
                     'X-M2M-RI': rqi, 'X-M2M-RVI': '3'};
    let data;
    if (body !== undefined) {
      data = Buffer.from(JSON.stringify(body));
      headers['Content-Type'] = 'application/json' + (ty ? ';ty=' + ty : '');
      headers['Content-Length'] = data.length;
    }
    const req = http.request({host: '127.0.0.1', port: cfg.port, method, path,
                              headers, ...via}, (res) => {
      const socket = res.socket; // an agent takes it back at the end
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString();
        let parsed = text;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch (e) {
          // not JSON: kept as text for the message
        }
        resolve({status: res.statusCode, rsc: Number(res.headers['x-m2m-rsc']),
                 ri: res.headers['x-m2m-ri'], body: parsed, socket});
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(
        `timeout: no response to ${method} ${path} in ${STEP_MS} ms`)), STEP_MS);
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    req.end(data);
  });
}

function short(body) {
  const s = typeof body === 'string' ? body : JSON.stringify(body);
  return s && s.length > 160 ? s.slice(0, 160) + '...' : s;
}

// A key the CSE does not hold must end the handshake: Node's http client
// gets an error and no response, quickly (an alert, not a timeout).
async function handshakeRefused(what, keyFile, kpsaId, path) {
  const t0 = Date.now();
  let err = null;
  let rsp = null;
  try {
    rsp = await request(
        {createConnection: () => m2mpsk.connect(connectOptions(keyFile, kpsaId))},
        {method: 'GET', path, from: 'C', rqi: 'rqi-' + what});
  } catch (e) {
    err = e;
  }
  ok(rsp === null && err instanceof Error,
     `${what}: no HTTP response, the request fails (${err && err.name}: ${err && err.message})`);
  // The library's failure, not a refused or reset connection (which a
  // Mobius that died would give too).
  ok(err.name === 'M2mpskError' && err.code === m2mpsk.E_FAILED &&
     [m2mpsk.REASON_BAD_KEY, m2mpsk.REASON_UNKNOWN_IDENTITY].includes(err.reason),
     `${what}: the handshake failed: code ${err.code} (E_FAILED), reason ${err.reason} ` +
     '(REASON_BAD_KEY or REASON_UNKNOWN_IDENTITY)');
  ok(!/^timeout:/.test(err.message) && Date.now() - t0 < STEP_MS,
     `${what}: the handshake failed at once (${Date.now() - t0} ms), not by a timeout`);
}

async function main() {
  const run = crypto.randomBytes(4).toString('hex');
  const base = '/' + cfg.cseBase;
  const aeRn = 'ae-node-' + run;
  const aePath = base + '/' + aeRn;
  const rqi = `rqi-node-${run}-`;
  const earlyRn = 'early-node-' + run;
  const forgedFrom = 'Cmallory-' + run;
  const forgedRn = 'forged-node-' + run;
  const forgedRqi = 'rqi-forged-node-' + run;
  const secondRn = 'second-node-' + run;
  const wrongPath = `${base}/wrong-key-${run}`;
  const unknownPath = `${base}/unknown-key-${run}`;
  const plainPath = `${base}/plain-http-${run}`;

  // 1. Keys the CSE does not have: same KpsaID with another Kpsa, and a
  //    KpsaID it has no record for.
  await handshakeRefused('wrong Kpsa', cfg.wrongKeys, cfg.kpsaId, wrongPath);
  await handshakeRefused('unknown KpsaID', cfg.unknownKeys, cfg.unknownKpsaId, unknownPath);

  // Plain HTTP to the same port: the CSE no longer serves it.
  let plainErr = null;
  let plainRsp = null;
  try {
    plainRsp = await request({agent: false}, {method: 'GET', path: plainPath, from: 'C',
                                              rqi: 'rqi-plain'});
  } catch (e) {
    plainErr = e;
  }
  ok(plainRsp === null && plainErr instanceof Error && !/^timeout:/.test(plainErr.message),
     `plain HTTP to the CSE's port: no response (${plainErr && plainErr.message})`);

  // 2. The AE's association, bound on the CSE's side to the Credential-ID
  //    12-<KpsaID> (the key record has no IdA).
  const sockets = [];
  const ae = {agent: pskAgent(cfg.keys, cfg.kpsaId, sockets)};
  let r = await request(ae, {method: 'POST', path: base, from: 'C', rqi: rqi + 'early',
                             ty: 3, body: {'m2m:cnt': {rn: earlyRn}}});
  ok(r.status === 403 && r.rsc === 4106,
     `before registering, a <container> CREATE from C: ${r.status} RSC ${r.rsc} ` +
     `(only an <AE> CREATE passes a Credential-ID) ${short(r.body)}`);
  ok(r.ri === rqi + 'early', 'the refusal carries the request\'s X-M2M-RI');
  const sock = sockets[0];
  ok(sock && sock.peerId === cfg.cseId && sock.kpsaId === cfg.kpsaId,
     `the AE's association: KpsaID ${sock && sock.kpsaId}, the CSE authenticated as ` +
     `${sock && sock.peerId}, suite ${sock && sock.suite}`);

  // 3. Registration: From C, Mobius assigns the AE-ID, the CSE binds it.
  r = await request(ae, {method: 'POST', path: base, from: 'C', rqi: rqi + 'ae', ty: 2,
                         body: {'m2m:ae': {rn: aeRn, api: 'Nm2mpsk-node-test', rr: false,
                                           srv: ['3']}}});
  ok(r.status === 201 && r.rsc === 2001,
     `<AE> CREATE with From C: ${r.status} RSC ${r.rsc} ${short(r.body)}`);
  const aei = r.body && r.body['m2m:ae'] && r.body['m2m:ae'].aei;
  ok(typeof aei === 'string' && aei.length > 1 && aei !== 'C',
     `Mobius assigned the AE-ID ${aei}`);
  ok(r.ri === rqi + 'ae', 'the response carries the request\'s X-M2M-RI');

  // 4. As that AE: a <container>, a <contentInstance>, and the latest back.
  r = await request(ae, {method: 'POST', path: aePath, from: aei, rqi: rqi + 'cnt', ty: 3,
                         body: {'m2m:cnt': {rn: 'cnt'}}});
  ok(r.status === 201 && r.rsc === 2001,
     `<container> CREATE from ${aei}: ${r.status} RSC ${r.rsc}`);
  const content = 'm2mpsk node ' + crypto.randomBytes(8).toString('hex');
  r = await request(ae, {method: 'POST', path: aePath + '/cnt', from: aei, rqi: rqi + 'cin',
                         ty: 4, body: {'m2m:cin': {con: content, cnf: 'text/plain:0'}}});
  ok(r.status === 201 && r.rsc === 2001,
     `<contentInstance> CREATE: ${r.status} RSC ${r.rsc}`);
  r = await request(ae, {method: 'GET', path: aePath + '/cnt/la', from: aei, rqi: rqi + 'la'});
  const got = r.body && r.body['m2m:cin'] && r.body['m2m:cin'].con;
  ok(r.status === 200 && r.rsc === 2000 && got === content,
     `RETRIEVE ${aePath}/cnt/la: ${r.status} RSC ${r.rsc}, con ${JSON.stringify(got)}`);

  // 5. A forged From on the AE's own association: refused before Mobius.
  r = await request(ae, {method: 'POST', path: aePath, from: forgedFrom, rqi: forgedRqi, ty: 3,
                         body: {'m2m:cnt': {rn: forgedRn}}});
  ok(r.status === 403 && r.rsc === 4106,
     `forged From ${forgedFrom}: ${r.status} RSC ${r.rsc} ${short(r.body)}`);
  ok(r.ri === forgedRqi, 'the refusal carries the forged request\'s X-M2M-RI');

  // 6. The refusal left the association serving the real AE.
  r = await request(ae, {method: 'GET', path: aePath + '/cnt', from: aei, rqi: rqi + 'after'});
  ok(r.status === 200 && r.rsc === 2000, `after the refusal, RETRIEVE of the container ` +
     `from ${aei}: ${r.status} RSC ${r.rsc}`);
  ok(sockets.length === 1 && r.socket === sock,
     `all the AE's requests went over one association (${sockets.length})`);

  // 7. The AE-ID is bound to the association the AE registered over: a new
  //    association with the same key is bound to the Credential-ID again.
  const sockets2 = [];
  const other = {agent: pskAgent(cfg.keys, cfg.kpsaId, sockets2)};
  r = await request(other, {method: 'POST', path: aePath, from: aei, rqi: rqi + 'second',
                            ty: 3, body: {'m2m:cnt': {rn: secondRn}}});
  ok(r.status === 403 && r.rsc === 4106,
     `a second association with the same key, From ${aei}: ${r.status} RSC ${r.rsc} ` +
     '(its binding is the Credential-ID until an AE registers over it)');

  for (const a of [ae.agent, other.agent]) a.destroy();
  process.stdout.write('RESULT ' + JSON.stringify({aei, aePath, earlyRn, forgedFrom, forgedRn,
                                                   forgedRqi, secondRn, wrongPath, unknownPath, plainPath,
                                                   content}) + '\n');
}

const deadline = setTimeout(() => {
  log(`FAIL: the script's deadline (${DEADLINE_MS} ms) passed`);
  process.exit(1);
}, DEADLINE_MS);
main().then(() => {
  clearTimeout(deadline);
  // Sockets the library may still be closing must not hold the exit.
  process.exit(0);
}, (e) => {
  log('FAIL: ' + (e && e.stack || e));
  process.exit(1);
});
