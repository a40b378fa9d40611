/* Application data after a real handshake. Each input runs a lossless
 * in-memory handshake between two fresh associations, then drives the
 * established pair with a sequence of operations: records the genuine peer
 * writes (intact, or corrupted, truncated, replayed or held back), raw
 * bytes fed as records, reads, writes, close_notify, clock jumps and
 * revocation.
 *
 * Speed: everything that does not belong to one association is made once
 * per process (configs, hence the backend's SSL_CTX; keystores, one pair
 * per kind of record), so that an input pays for two associations and a
 * handshake only. An input that revokes the record puts it back before it
 * returns: every input starts from the same fixtures, so the same input
 * does the same thing.
 *
 * Input:  opts op*
 *   opts bit 0:    DTLS (else TLS)
 *   opts bit 1:    the fuzzed side is the responder (else the initiator)
 *   opts bits 2-4: cipher suite index (mod the number of suites)
 *   opts bit 5:    record without IdA (responder binds the Credential-ID)
 *   opts bit 6:    record with a validity window ending 100 s in
 *   op := code args, code taken mod 9:
 *     0 n bytes[n]      peer writes n bytes; delivered to the fuzzed side
 *     1 hi lo bytes     raw chunk (common.h format) fed to the fuzzed side
 *     2 mode pos x n bytes[n]
 *                       peer writes n bytes; the record is mangled before
 *                       delivery: mode%4 = 0 xor byte pos%len with x|1,
 *                       1 truncate to pos%len, 2 deliver twice (replay),
 *                       3 hold back and deliver after the next record
 *     3 cap             fuzzed side reads (cap%256 + 1) and is queried
 *     4 n bytes[n]      fuzzed side writes n bytes; the peer reads them
 *     5                 fuzzed side sends close_notify
 *     6                 peer sends close_notify; delivered
 *     7 s               clock advances s seconds; timers handled
 *     8                 the record is revoked in the fuzzed side's keystore
 *     9 how             the peer fails and says so, encrypted: how%2 = 0
 *                       it reads a bit-flipped record of the fuzzed side
 *                       (TLS: a bad_record_mac alert; over DTLS the peer
 *                       may drop the record instead), 1 the record is
 *                       revoked in the peer's keystore and the peer reads
 *                       (it fails closed: an alert, or close_notify);
 *                       what it sends is delivered
 *    10                 a renegotiation attempt in the clear, as anyone on
 *                       the path can make: a new ClientHello to a fuzzed
 *                       responder, a HelloRequest to a fuzzed initiator
 *                       (the record layer refuses a plaintext record once
 *                       keys are in use: the handshake code is not reached)
 * At most 128 ops.
 *
 * A renegotiation inside the session, encrypted, from the genuine peer is
 * fuzz_renegotiate's (OpenSSL builds): m2mpsk has no call that starts one,
 * so an m2mpsk peer cannot send one. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static m2mpsk_config *suite_cfg(size_t suite, int responder) {
  static m2mpsk_config *cfg[8][2];
  suite %= m2mpsk_suite_count();
  if (cfg[suite][responder] == NULL)
    cfg[suite][responder] = fz_cfg_with_suite(suite, responder);
  return cfg[suite][responder];
}

/* The two sides' keystores for one kind of record (opts bits 5-6), made
 * once and holding FZ_KPSA_ID alone. */
typedef struct ks_pair {
  m2mpsk_keystore *a, *b;
  const char *ida;
  int64_t nb, na;
} ks_pair;

static void ks_fill(m2mpsk_keystore *ks, const ks_pair *p) {
  fz_check(m2mpsk_keystore_add(ks, FZ_KPSA_ID, fz_key, sizeof(fz_key), p->ida,
                               FZ_IDB, p->nb, p->na) == M2MPSK_OK,
           "keystore_add");
}

static ks_pair *ks_for(uint8_t opts) {
  static ks_pair pairs[4];
  ks_pair *p = &pairs[(opts >> 5) & 3];
  if (p->a == NULL) {
    p->ida = (opts & 32) ? NULL : FZ_IDA;
    p->nb = (opts & 64) ? FZ_WINDOW_NB : 0;
    p->na = (opts & 64) ? FZ_WINDOW_NA : 0;
    fz_check(m2mpsk_keystore_new(&p->a, 0) == M2MPSK_OK, "keystore_new");
    fz_check(m2mpsk_keystore_new(&p->b, 0) == M2MPSK_OK, "keystore_new");
    ks_fill(p->a, p);
    ks_fill(p->b, p);
  }
  return p;
}

/* Undoes ops 8 and 9 once the associations are gone: a revoked record cannot be
 * re-added until it is removed. */
static void ks_restore(m2mpsk_keystore *ks, const ks_pair *p) {
  int revoked = 0;
  fz_check(m2mpsk_keystore_lookup(ks, FZ_KPSA_ID, NULL, 0, NULL, 0, NULL, NULL,
                                  &revoked) == M2MPSK_OK,
           "keystore_lookup");
  if (revoked) {
    fz_check(m2mpsk_keystore_remove(ks, FZ_KPSA_ID) == M2MPSK_OK,
             "keystore_remove");
    ks_fill(ks, p);
  }
}

static void take(fz_reader *r, size_t n, const uint8_t **p, size_t *got) {
  if (n > r->left)
    n = r->left;
  *p = r->p;
  *got = n;
  r->p += n;
  r->left -= n;
}

/* Drains one piece from `from` into buf. */
static size_t drain_one(m2mpsk_assoc *from, uint8_t *buf, size_t cap) {
  size_t n = 0;
  if (m2mpsk_assoc_drain(from, buf, cap, &n) != M2MPSK_OK)
    return 0;
  return n;
}

static void feed(m2mpsk_assoc *to, const uint8_t *p, size_t n, uint64_t now) {
  if (n > 0)
    fz_status(m2mpsk_assoc_feed(to, p, n, now), 0, "assoc_feed");
}

/* What starts a renegotiation, sent in the clear (epoch 0): to a
 * responder, the ClientHello of a new initiator (made once per process and
 * transport); to an initiator, a HelloRequest. */
static const uint8_t *clear_hello(m2mpsk_transport t, int to_responder,
                                  size_t *len) {
  static uint8_t hello[2][2048];
  static size_t hello_len[2];
  static const uint8_t hello_request[2][25] = {
      {22, 3, 3, 0, 4, 0, 0, 0, 0},
      {22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 12,
       0,  0,    0,    0, 0, 1, 0, 0, 0, 0, 0, 0}};
  int d = t == M2MPSK_TRANSPORT_DTLS;
  if (!to_responder) {
    *len = d ? 25 : 9;
    return hello_request[d];
  }
  if (hello_len[d] == 0) {
    m2mpsk_assoc *a = NULL;
    fz_check(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, fz_initiator_cfg(),
                              fz_initiator_ks(), FZ_KPSA_ID) == M2MPSK_OK,
             "assoc_new");
    fz_check(m2mpsk_assoc_start(a, FZ_T0, FZ_UNIX_TIME) == M2MPSK_OK, "start");
    hello_len[d] = drain_one(a, hello[d], sizeof(hello[d]));
    fz_check(hello_len[d] > 0, "ClientHello");
    m2mpsk_assoc_free(a);
  }
  *len = hello_len[d];
  return hello[d];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uint8_t rec[17000], held[17000];
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  m2mpsk_transport t =
      (opts & 1) ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS;
  int fuzz_responder = (opts & 2) != 0;
  size_t suite = (opts >> 2) & 7;
  ks_pair *kp = ks_for(opts);
  m2mpsk_keystore *ks_a = kp->a, *ks_b = kp->b;
  m2mpsk_assoc *a = NULL, *b = NULL;
  fz_check(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, suite_cfg(suite, 0),
                            ks_a, FZ_KPSA_ID) == M2MPSK_OK,
           "assoc_new");
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, suite_cfg(suite, 1),
                            ks_b, NULL) == M2MPSK_OK,
           "assoc_new");
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_start(b, now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  fz_check(m2mpsk_assoc_start(a, now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  fz_check(fz_handshake(a, b, &now, NULL, NULL), "handshake");

  m2mpsk_assoc *me = fuzz_responder ? b : a;   /* the fuzzed side */
  m2mpsk_assoc *peer = fuzz_responder ? a : b; /* the genuine peer */
  m2mpsk_keystore *my_ks = fuzz_responder ? ks_b : ks_a;
  m2mpsk_keystore *peer_ks = fuzz_responder ? ks_a : ks_b;
  size_t held_len = 0;
  int revoked = 0, peer_revoked = 0;

  for (int ops = 0; ops < 128 && r.left > 0; ops++) {
    uint8_t code = fz_byte(&r) % 11;
    const uint8_t *p;
    size_t n, w;
    switch (code) {
    case 0: /* genuine record */
      take(&r, fz_byte(&r), &p, &n);
      fz_status(m2mpsk_assoc_write(peer, p, n, &w), 0, "assoc_write");
      fz_transfer(peer, me, now, NULL, NULL);
      break;
    case 1: { /* raw chunk */
      fz_chunk c;
      if (fz_next_chunk(&r, &c)) {
        if (c.timeout_first)
          fz_fire_timer(me, &now);
        fz_status(m2mpsk_assoc_feed(me, c.data, c.len, now), 0, "assoc_feed");
        fz_drain_all(me, c.small_drain);
      }
      break;
    }
    case 2: { /* mangled record */
      uint8_t mode = fz_byte(&r) % 4, pos = fz_byte(&r), x = fz_byte(&r);
      take(&r, fz_byte(&r), &p, &n);
      fz_status(m2mpsk_assoc_write(peer, p, n, &w), 0, "assoc_write");
      size_t len;
      while ((len = drain_one(peer, rec, sizeof(rec))) > 0) {
        switch (mode) {
        case 0:
          rec[pos % len] ^= (uint8_t)(x | 1);
          feed(me, rec, len, now);
          break;
        case 1: feed(me, rec, pos % len, now); break;
        case 2:
          feed(me, rec, len, now);
          feed(me, rec, len, now);
          break;
        default:
          if (held_len > 0) {
            feed(me, rec, len, now);
            feed(me, held, held_len, now);
            held_len = 0;
          } else {
            memcpy(held, rec, len);
            held_len = len;
          }
          break;
        }
      }
      break;
    }
    case 3: {
      uint8_t buf[256];
      size_t cap = (size_t)(fz_byte(&r)) % 256 + 1, got;
      fz_status(m2mpsk_assoc_read(me, buf, cap, &got), 1, "assoc_read");
      fz_poke(me, buf, 0);
      break;
    }
    case 4:
      take(&r, fz_byte(&r), &p, &n);
      fz_status(m2mpsk_assoc_write(me, p, n, &w), 0, "assoc_write");
      fz_transfer(me, peer, now, NULL, NULL);
      {
        uint8_t buf[256];
        size_t got;
        for (int i = 0; i < 16; i++)
          if (m2mpsk_assoc_read(peer, buf, sizeof(buf), &got) != M2MPSK_OK)
            break;
      }
      break;
    case 5:
      fz_status(m2mpsk_assoc_close(me), 1, "assoc_close");
      fz_transfer(me, peer, now, NULL, NULL);
      break;
    case 6:
      fz_status(m2mpsk_assoc_close(peer), 1, "assoc_close");
      fz_transfer(peer, me, now, NULL, NULL);
      break;
    case 7:
      now += (uint64_t)fz_byte(&r) * 1000;
      fz_status(m2mpsk_assoc_handle_timeout(me, now), 1,
                "assoc_handle_timeout");
      fz_status(m2mpsk_assoc_handle_timeout(peer, now), 1,
                "assoc_handle_timeout");
      break;
    case 8:
      fz_status(m2mpsk_keystore_revoke(my_ks, FZ_KPSA_ID), 0,
                "keystore_revoke");
      revoked = 1;
      break;
    case 9: {
      uint8_t buf[64];
      if (fz_byte(&r) % 2 == 0) {
        fz_status(m2mpsk_assoc_write(me, (const uint8_t *)"x", 1, &w), 1,
                  "assoc_write");
        size_t len;
        while ((len = drain_one(me, rec, sizeof(rec))) > 0) {
          rec[len - 1] ^= 1;
          feed(peer, rec, len, now);
        }
      } else {
        fz_status(m2mpsk_keystore_revoke(peer_ks, FZ_KPSA_ID), 1,
                  "keystore_revoke");
        peer_revoked = 1;
      }
      /* The peer finds out when it reads. */
      fz_status(m2mpsk_assoc_read(peer, buf, sizeof(buf), &n), 1, "assoc_read");
      fz_transfer(peer, me, now, NULL, NULL);
      break;
    }
    default: {
      size_t len;
      const uint8_t *hello = clear_hello(t, fuzz_responder, &len);
      feed(me, hello, len, now);
      break;
    }
    }
    /* The fuzzed side answers (alerts, DTLS retransmissions); its output
     * is drained and dropped. */
    fz_drain_all(me, 0);
    now += 1;
  }
  if (held_len > 0)
    feed(me, held, held_len, now);
  fz_poke(me, (const uint8_t *)"end", 3);
  fz_debug(me, "end of input");
  fz_drain_all(me, 0);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  if (revoked)
    ks_restore(my_ks, kp);
  if (peer_revoked)
    ks_restore(peer_ks, kp);
  return 0;
}
