'use strict';
// The raw SWIG layer: two Associations handshake in memory (TLS and DTLS),
// errors carry code/reason/detail, closed handles and bad arguments throw.
const test = require('node:test');
const assert = require('node:assert');
const m = require('../lib/addon.js');

const KPSA = 'test@onem2m.com';
const KEY = Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex');

function keystore(key = KEY, ida = null) {
  const ks = new m.Keystore(0);
  ks.add(KPSA, key, ida, '/cse-1', 0, 0);
  return ks;
}

function serverConfig() {
  const c = new m.Config();
  c.add_local_id('/cse-1');
  return c;
}

// Moves every output of one side to the other until nothing moves;
// returns the number of rounds. Throws what feed() throws.
function pump(a, b, now = 1) {
  for (let round = 0; round < 50; round++) {
    let moved = false;
    for (const [from, to] of [[a, b], [b, a]]) {
      for (;;) {
        const out = from.drain();
        if (out.length === 0) break;
        moved = true;
        to.feed(out, now);
      }
    }
    if (!moved) return round;
  }
  throw new Error('pump did not settle');
}

function expectM2mpsk(fn, code) {
  let caught;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught, 'expected an M2mpskError with code ' + code);
  assert.strictEqual(caught.name, 'M2mpskError', String(caught));
  assert.strictEqual(caught.code, code, String(caught));
  assert.strictEqual(typeof caught.reason, 'number');
  assert.strictEqual(typeof caught.detail, 'string');
  assert.ok(caught.detail.length > 0);
  assert.ok(caught instanceof Error);
  return caught;
}

function pair(transport, clientKey = KEY) {
  const cks = keystore(clientKey);
  const sks = keystore();
  const cc = new m.Config();
  const sc = serverConfig();
  const c = new m.Association(m.ROLE_INITIATOR, transport, cc, cks, KPSA);
  const s = new m.Association(m.ROLE_RESPONDER, transport, sc, sks, null);
  c.start(1, 0);
  s.start(1, 0);
  return { c, s, close() { for (const h of [c, s, cc, sc, cks, sks]) h.close(); } };
}

for (const [name, transport] of [['TLS', m.TRANSPORT_TLS], ['DTLS', m.TRANSPORT_DTLS]]) {
  test(`${name} handshake and data in memory`, () => {
    const p = pair(transport);
    pump(p.c, p.s);
    assert.strictEqual(p.c.state(), m.STATE_ESTABLISHED);
    assert.strictEqual(p.s.state(), m.STATE_ESTABLISHED);
    assert.strictEqual(p.c.peer_id(), '/cse-1');
    assert.strictEqual(p.s.peer_id(), '12-' + KPSA);
    assert.strictEqual(p.s.peer_id_is_credential(), true);
    assert.strictEqual(p.s.kpsa_id(), KPSA);
    assert.match(p.c.suite(), /^TLS_PSK_/);
    assert.strictEqual(p.c.version(), transport === m.TRANSPORT_TLS ? 'TLSv1.2' : 'DTLSv1.2');
    // Uint8Array in, Buffer out.
    p.c.write(new Uint8Array([104, 105]));
    pump(p.c, p.s);
    const got = p.s.read();
    assert.ok(Buffer.isBuffer(got));
    assert.strictEqual(got.toString(), 'hi');
    assert.strictEqual(p.s.read().length, 0); // nothing more: empty, not an error
    const k1 = p.c.export_keying_material(32, 'EXPERIMENTAL test', null);
    const k2 = p.s.export_keying_material(32, 'EXPERIMENTAL test', null);
    assert.strictEqual(k1.length, 32);
    assert.deepStrictEqual(k1, k2);
    const k3 = p.c.export_keying_material(32, 'EXPERIMENTAL test', Buffer.from('ctx'));
    assert.notDeepStrictEqual(k1, k3);
    // Originator checks on the responder (a Credential-ID binding).
    assert.strictEqual(p.s.originator_check('/cse-1/Cabc', 0), m.ORIGINATOR_NOT_AUTHENTICATED);
    assert.strictEqual(p.s.originator_check(null, m.ORIGINATOR_AE_CREATE), m.ORIGINATOR_ACCEPT);
    // close_notify: the peer's read() throws E_CLOSED.
    p.c.close_notify();
    pump(p.c, p.s);
    expectM2mpsk(() => p.s.read(), m.E_CLOSED);
    p.close();
  });

  test(`${name} wrong key fails with E_FAILED and a reason`, () => {
    const p = pair(transport, Buffer.alloc(16, 7));
    let err;
    try {
      pump(p.c, p.s);
    } catch (e) {
      err = e;
    }
    assert.ok(err, 'a wrong key must fail the handshake');
    assert.strictEqual(err.code, m.E_FAILED, String(err));
    assert.notStrictEqual(err.reason, m.REASON_NONE);
    assert.match(err.message, /\(-5\)/);
    assert.ok(p.c.state() === m.STATE_FAILED || p.s.state() === m.STATE_FAILED);
    p.close();
  });
}

test('errors carry code, reason and detail', () => {
  const ks = new m.Keystore(0);
  const e = expectM2mpsk(() => ks.add('no-at-sign', KEY, null, '/cse-1', 0, 0), m.E_KPSA_ID);
  assert.strictEqual(e.reason, m.REASON_NONE);
  expectM2mpsk(() => ks.add(KPSA, Buffer.alloc(3), null, '/cse-1', 0, 0), m.E_KEY_LENGTH);
  expectM2mpsk(() => ks.add(KPSA, KEY, null, 'not-a-cse', 0, 0), m.E_IDB);
  expectM2mpsk(() => ks.add(KPSA, KEY, 'bad ida', '/cse-1', 0, 0), m.E_IDA);
  ks.add(KPSA, KEY, null, '/cse-1', 0, 0);
  expectM2mpsk(() => ks.add(KPSA, KEY, null, '/cse-1', 0, 0), m.E_DUPLICATE);
  expectM2mpsk(() => ks.lookup('other@onem2m.com'), m.E_NOT_FOUND);
  const r = ks.lookup(KPSA);
  assert.strictEqual(r.idb, '/cse-1');
  assert.strictEqual(r.ida, '');
  const ke = expectM2mpsk(() => ks.load_file('/nonexistent/keys'), m.E_IO);
  assert.ok(ke.detail.length > 0);
  const c = new m.Config();
  expectM2mpsk(() => c.set_suites('TLS_NOT_A_SUITE'), m.E_SUITE);
  expectM2mpsk(() => c.set_handshake_timeout(0), m.E_INVALID);
  // A responder without a local identity.
  expectM2mpsk(() => new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, c, ks, null),
               m.E_NO_LOCAL_ID);
  // A record the keystore does not have.
  expectM2mpsk(() => new m.Association(m.ROLE_INITIATOR, m.TRANSPORT_TLS, c, ks,
                                       'other@onem2m.com'), m.E_NOT_FOUND);
  const a = new m.Association(m.ROLE_INITIATOR, m.TRANSPORT_TLS, c, ks, KPSA);
  // Config frozen by the association.
  expectM2mpsk(() => c.add_local_id('/cse-2'), m.E_STATE);
  expectM2mpsk(() => a.write(Buffer.from('x')), m.E_STATE);
  expectM2mpsk(() => a.drain(), m.E_STATE);
  expectM2mpsk(() => a.feed(Buffer.from('x'), 1), m.E_STATE);
  a.start(1, 0);
  expectM2mpsk(() => a.start(1, 0), m.E_STATE);
  expectM2mpsk(() => a.read(0), m.E_INVALID);
  expectM2mpsk(() => a.start(-1, 0), m.E_INVALID); // negative time before the state check
  // Garbage input from the peer fails the handshake.
  a.drain();
  const g = expectM2mpsk(() => a.feed(Buffer.from('GET / HTTP/1.1\r\n\r\n'), 2), m.E_FAILED);
  assert.notStrictEqual(g.reason, m.REASON_NONE);
  assert.strictEqual(a.failure(), g.reason);
  for (const h of [a, c, ks]) h.close();
  expectM2mpsk(() => m.kpsa_id_validate('x'), m.E_KPSA_ID);
  m.kpsa_id_validate(KPSA);
  expectM2mpsk(() => m.idb_validate('nope'), m.E_IDB);
  expectM2mpsk(() => m.originator_check(m.PEER_AE, '/cse-1/Cae', null, '/cse-1/Cae', 0),
               m.E_INVALID); // local_id missing
});

test('closed handles throw E_INVALID, closing twice does nothing', () => {
  const ks = keystore();
  const c = serverConfig();
  const a = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, c, ks, null);
  ks.close();
  c.close();
  // The association keeps its own references: it still works.
  a.start(1, 0);
  assert.strictEqual(a.state(), m.STATE_HANDSHAKING);
  a.close();
  a.close();
  ks.close();
  for (const fn of [() => a.state(), () => a.drain(), () => a.read(), () => a.peer_id(),
                    () => a.feed(Buffer.from('x'), 1), () => a.write(Buffer.from('x')),
                    () => a.originator_check('/x', 0),
                    () => a.export_keying_material(16, 'l', null), () => ks.count(),
                    () => ks.add(KPSA, KEY, null, '/cse-1', 0, 0), () => c.add_local_id('/c'),
                    () => c.dtls_listen('1.2.3.4:5', Buffer.from('x'))]) {
    const e = expectM2mpsk(fn, m.E_INVALID);
    assert.match(e.detail, /closed/);
  }
  // A closed keystore or config cannot make an association.
  expectM2mpsk(() => new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, c,
                                       keystore(), null), m.E_INVALID);
});

// Sample arguments for every method of each handle class: the test below
// calls each method a closed handle has (found by walking the object, so
// a method added to m2mpsk.i without a sample here fails the test).
const SAMPLES = {
  Keystore: {
    add: [KPSA, KEY, null, '/cse-1', 0, 0], add_derived: [KPSA, KEY, '/cse-1/Cx', null, '/cse-1', 0, 0],
    remove: [KPSA], revoke: [KPSA], lookup: [KPSA], count: [], is_locked: [], key_memory: [],
    load_file: ['/nonexistent'], put: [KPSA, KEY, null, '/cse-1', 0, 0], set_source_queue: [1],
    next_request: [],
  },
  Config: {
    set_suites: ['TLS_PSK_WITH_AES_128_CCM_8'], add_local_id: ['/cse-2'], set_handshake_timeout: [1000],
    set_reveal_unknown_identity: [true], set_roles_reversed: [true], set_profile: [0], set_engine: [0],
    suites: [m.TRANSPORT_TLS], set_max_handshakes: [1], set_max_input: [m.MAX_INPUT_MIN],
    set_rate_limit: [m.RATE_PEER, 1, 1, 1, 1], peer_blocked: ['1.2.3.4:5', 1],
    handshakes_in_progress: [], set_event_queue: [1], next_event: [], events_dropped: [],
    dtls_listen: ['1.2.3.4:5', Buffer.from('x')],
  },
  Association: {
    set_mtu: [1400], set_peer_tag: ['1.2.3.4:5'], peer_tag: [], start: [1, 0], feed: [Buffer.from('x'), 1],
    write: [Buffer.from('x')], pending: [], next_timeout: [], handle_timeout: [1], state: [],
    close_notify: [], peer_id: [], peer_id_is_credential: [], bind_ae_id: ['/cse-1/Cx'],
    originator_check: ['/cse-1/Cx', 0], local_id: [], kpsa_id: [], engine: [], suite: [], version: [],
    failure: [], failure_detail: [], drain: [], read: [16], export_keying_material: [16, 'l', null],
    key_request: [], resume: [1],
  },
  Event: {
    type: [], reason: [], role: [], transport: [], time_ms: [], kpsa_id: [], peer_id: [],
    peer_id_is_credential: [], peer_tag: [], detail: [],
  },
};

test('every method of a closed handle throws E_INVALID', () => {
  const ks = keystore();
  const c = serverConfig();
  c.set_event_queue(4);
  const a = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, c, ks, null);
  a.start(1);
  // An event: a failed responder handshake queues one.
  assert.throws(() => a.feed(Buffer.from('garbage garbage garbage'), 2));
  const ev = c.next_event();
  assert.ok(ev, 'an event was queued');
  const handles = { Keystore: ks, Config: c, Association: a, Event: ev };
  for (const [cls, h] of Object.entries(handles)) {
    h.close();
    const methods = [];
    for (const k in h) {
      if (typeof h[k] === 'function' && !['close', 'equals', 'getCPtr'].includes(k)) methods.push(k);
    }
    assert.ok(methods.length >= 5, cls);
    for (const name of methods) {
      assert.ok(name in SAMPLES[cls], `${cls}.${name} has no sample arguments in this test`);
      const e = expectM2mpsk(() => h[name](...SAMPLES[cls][name]), m.E_INVALID);
      assert.match(e.detail, /closed/, `${cls}.${name}`);
    }
    h.close(); // again: nothing
  }
});

test('null, wrong types and garbage in every argument of every method: an error, never a crash', () => {
  const makers = {
    Keystore: () => keystore(),
    Config: () => serverConfig(),
    Association: () => {
      const a = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, serverConfig(), keystore(), null);
      return a;
    },
    Event: () => {
      const c = serverConfig();
      c.set_event_queue(4);
      const a = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, c, keystore(), null);
      a.start(1);
      assert.throws(() => a.feed(Buffer.from('garbage garbage garbage'), 2));
      return c.next_event();
    },
  };
  const odd = [null, undefined, 'garbage', -1, 2 ** 53, {}, Buffer.alloc(0), Buffer.alloc(70000, 0xff)];
  let calls = 0;
  for (const [cls, methods] of Object.entries(SAMPLES)) {
    for (const [name, args] of Object.entries(methods)) {
      for (let i = 0; i < args.length; i++) {
        for (const v of odd) {
          const h = makers[cls]();
          const bent = args.slice();
          bent[i] = v;
          try {
            h[name](...bent);
          } catch (e) {
            assert.ok(e instanceof Error, `${cls}.${name} arg ${i}: ${e}`);
            if (e.name === 'M2mpskError') assert.strictEqual(typeof e.code, 'number');
          }
          h.close();
          calls++;
        }
      }
    }
  }
  assert.ok(calls > 300, String(calls));
});

test('null and garbage arguments', () => {
  const ks = new m.Keystore(0);
  // null bytes: E_INVALID, not an empty key; a string is a TypeError.
  expectM2mpsk(() => ks.add(KPSA, null, null, '/cse-1', 0, 0), m.E_INVALID);
  assert.throws(() => ks.add(KPSA, 'plaintext key', null, '/cse-1', 0, 0), /Illegal arguments|Buffer/);
  assert.throws(() => ks.add(KPSA, 12345, null, '/cse-1', 0, 0));
  assert.throws(() => ks.add(KPSA, {}, null, '/cse-1', 0, 0));
  // null strings where a value is needed: E_INVALID from the library.
  expectM2mpsk(() => ks.add(null, KEY, null, '/cse-1', 0, 0), m.E_INVALID);
  expectM2mpsk(() => ks.add(KPSA, KEY, null, null, 0, 0), m.E_INVALID);
  expectM2mpsk(() => m.kpsa_id_validate(null), m.E_INVALID);
  assert.throws(() => m.kpsa_id_validate(42));
  // Wrong holder types and missing arguments are TypeErrors from SWIG.
  const c = serverConfig();
  assert.throws(() => new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, ks, c, null));
  assert.throws(() => new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, null, ks, null));
  assert.throws(() => new m.Association());
  assert.throws(() => ks.add());
  // Out-of-range numbers.
  expectM2mpsk(() => c.set_max_handshakes(-1), m.E_INVALID);
  ks.add(KPSA, KEY, null, '/cse-1', 0, 0);
  const a = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_DTLS, c, ks, null);
  a.start(1, 0);
  expectM2mpsk(() => a.feed(null, 1), m.E_INVALID);
  expectM2mpsk(() => a.feed(Buffer.alloc(0), 1), m.E_INVALID); // an empty datagram
  // dtls_listen: garbage is E_PROTOCOL, a bad peer tag E_INVALID.
  const sc = serverConfig();
  expectM2mpsk(() => sc.dtls_listen('127.0.0.1:1', Buffer.from('garbage garbage')), m.E_PROTOCOL);
  expectM2mpsk(() => sc.dtls_listen('', Buffer.from('garbage')), m.E_INVALID);
  expectM2mpsk(() => sc.dtls_listen('127.0.0.1:1', null), m.E_INVALID);
  for (const h of [a, c, sc, ks]) h.close();
});

test('DTLS cookie exchange through dtls_listen', () => {
  const cks = keystore();
  const sks = keystore();
  const cc = new m.Config();
  const sc = serverConfig();
  const c = new m.Association(m.ROLE_INITIATOR, m.TRANSPORT_DTLS, cc, cks, KPSA);
  c.start(1, 0);
  const hello = c.drain();
  let hvr;
  try {
    hvr = sc.dtls_listen('127.0.0.1:4000', hello);
  } catch (e) {
    if (e.code === m.E_UNSUPPORTED) return; // BoringSSL: no cookie exchange
    throw e;
  }
  assert.ok(Buffer.isBuffer(hvr) && hvr.length > 0, 'a first ClientHello gets a HelloVerifyRequest');
  c.feed(hvr, 2);
  const hello2 = c.drain();
  // Bound to the address: another peer's tag does not accept it.
  assert.ok(Buffer.isBuffer(sc.dtls_listen('127.0.0.1:4001', hello2)));
  assert.strictEqual(sc.dtls_listen('127.0.0.1:4000', hello2), null);
  const s = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_DTLS, sc, sks, null);
  s.set_peer_tag('127.0.0.1:4000');
  s.start(2, 0);
  s.feed(hello2, 2);
  pump(c, s, 3);
  assert.strictEqual(c.state(), m.STATE_ESTABLISHED);
  assert.strictEqual(s.state(), m.STATE_ESTABLISHED);
  assert.strictEqual(s.peer_tag(), '127.0.0.1:4000');
  for (const h of [c, s, cc, sc, cks, sks]) h.close();
});

test('audit events: taken from the config, closed like every handle', () => {
  const cks = keystore();
  const sks = keystore();
  const cc = new m.Config();
  const sc = serverConfig();
  sc.set_event_queue(16);
  expectM2mpsk(() => sc.set_event_queue(-1), m.E_INVALID);
  assert.strictEqual(sc.next_event(), null); // empty: null, not an error
  const c = new m.Association(m.ROLE_INITIATOR, m.TRANSPORT_TLS, cc, cks, KPSA);
  const s = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, sc, sks, null);
  c.start(1);
  s.start(1);
  pump(c, s);
  const ev = sc.next_event();
  assert.ok(ev, 'an EVENT_ESTABLISHED was queued');
  assert.strictEqual(ev.type(), m.EVENT_ESTABLISHED);
  assert.strictEqual(m.event_type_name(ev.type()), 'established');
  assert.strictEqual(ev.kpsa_id(), KPSA);
  assert.strictEqual(ev.peer_id(), '12-' + KPSA);
  assert.strictEqual(ev.peer_id_is_credential(), true);
  assert.strictEqual(ev.role(), m.ROLE_RESPONDER);
  ev.close();
  ev.close();
  for (const fn of [() => ev.type(), () => ev.reason(), () => ev.kpsa_id(), () => ev.detail()]) {
    expectM2mpsk(fn, m.E_INVALID);
  }
  assert.strictEqual(sc.events_dropped(), 0);
  for (const h of [c, s, cc, sc, cks, sks]) h.close();
});

test('the garbage collector frees handles nobody closed', async () => {
  const v8 = require('node:v8');
  const vm = require('node:vm');
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc');
  const ks = keystore();
  const c = serverConfig();
  // Responder associations count as handshakes in progress until freed.
  (() => {
    for (let i = 0; i < 100; i++) new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, c, ks, null);
  })();
  assert.strictEqual(c.handshakes_in_progress(), 100);
  for (let i = 0; i < 20 && c.handshakes_in_progress() > 0; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.strictEqual(c.handshakes_in_progress(), 0);
  c.close();
  ks.close();
});

test('E_LIMIT: input past max_input is refused whole, then taken after read()', () => {
  const cks = keystore();
  const sks = keystore();
  const cc = new m.Config();
  const sc = serverConfig();
  sc.set_max_input(m.MAX_INPUT_MIN);
  const c = new m.Association(m.ROLE_INITIATOR, m.TRANSPORT_TLS, cc, cks, KPSA);
  const s = new m.Association(m.ROLE_RESPONDER, m.TRANSPORT_TLS, sc, sks, null);
  c.start(1);
  s.start(1);
  expectM2mpsk(() => c.export_keying_material(16, 'EXPERIMENTAL x', null), m.E_STATE);
  pump(c, s);
  c.write(Buffer.alloc(60000, 1));
  const first = c.drain();
  s.feed(first, 2); // close to the limit
  c.write(Buffer.alloc(10000, 2));
  const more = c.drain();
  expectM2mpsk(() => s.feed(more, 2), m.E_LIMIT);
  let got = 0;
  for (let b = s.read(); b.length > 0; b = s.read()) got += b.length;
  assert.strictEqual(got, 60000);
  s.feed(more, 3); // the same bytes again, now that there is room
  assert.strictEqual(s.read().length, 10000);
  for (const h of [c, s, cc, sc, cks, sks]) h.close();
});

test('timers: next_timeout is null when nothing is due, a number while handshaking', () => {
  const p = pair(m.TRANSPORT_DTLS);
  const t = p.c.next_timeout();
  assert.strictEqual(typeof t, 'number');
  assert.ok(t > 1);
  p.c.handle_timeout(t); // a retransmission
  assert.ok(p.c.pending() > 0);
  pump(p.c, p.s, t);
  assert.strictEqual(p.s.state(), m.STATE_ESTABLISHED);
  p.close();
  const c = new m.Config();
  assert.strictEqual(c.peer_blocked('127.0.0.1:1', 1), null);
  c.close();
});
