#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const uint8_t fz_key[32] = {0x4b, 0x70, 0x73, 0x61, 1,  2,  3,  4,  5,  6,  7,
                            8,    9,    10,   11,   12, 13, 14, 15, 16, 17, 18,
                            19,   20,   21,   22,   23, 24, 25, 26, 27, 28};

void fz_check(int cond, const char *what) {
  if (!cond) {
    fprintf(stderr, "fuzz fixture: %s failed\n", what);
    abort();
  }
}

void fz_status(int rc, int args_valid, const char *what) {
  if (rc > 0 || strcmp(m2mpsk_strerror(rc), "unknown status") == 0 ||
      (args_valid && rc == M2MPSK_E_INVALID)) {
    fprintf(stderr, "fuzz: %s returned %d (%s)\n", what, rc,
            m2mpsk_strerror(rc));
    abort();
  }
}

/* ---- chunked input ------------------------------------------------------- */

int fz_next_chunk(fz_reader *r, fz_chunk *c) {
  if (r->left < 2)
    return 0;
  uint8_t hi = r->p[0], lo = r->p[1];
  r->p += 2;
  r->left -= 2;
  size_t len = ((size_t)(hi & 0x3f) << 8) | lo;
  if (len > r->left)
    len = r->left;
  c->data = r->p;
  c->len = len;
  c->timeout_first = (hi & 0x80) != 0;
  c->small_drain = (hi & 0x40) != 0;
  r->p += len;
  r->left -= len;
  return 1;
}

uint8_t fz_byte(fz_reader *r) {
  if (r->left == 0)
    return 0;
  r->left--;
  return *r->p++;
}

size_t fz_put_chunk(uint8_t *out, size_t cap, size_t at, const uint8_t *data,
                    size_t len, int flags) {
  if (len > 0x3fff || at + 2 + len > cap)
    return 0;
  out[at] = (uint8_t)(((len >> 8) & 0x3f) | (flags & 0xc0));
  out[at + 1] = (uint8_t)(len & 0xff);
  if (len > 0)
    memcpy(out + at + 2, data, len);
  return at + 2 + len;
}

/* ---- driving an association ---------------------------------------------- */

void fz_drain_all(m2mpsk_assoc *a, int small) {
  static uint8_t buf[17000];
  size_t n;
  if (small)
    fz_status(m2mpsk_assoc_drain(a, buf, 7, &n), 1, "assoc_drain");
  (void)m2mpsk_assoc_pending(a);
  for (int i = 0; i < 256; i++) {
    if (m2mpsk_assoc_drain(a, buf, sizeof(buf), &n) != M2MPSK_OK)
      break;
  }
}

void fz_fire_timer(m2mpsk_assoc *a, uint64_t *now) {
  uint64_t t;
  if (m2mpsk_assoc_next_timeout(a, &t) == M2MPSK_OK && t > *now)
    *now = t;
  fz_status(m2mpsk_assoc_handle_timeout(a, *now), 1, "assoc_handle_timeout");
}

void fz_poke(m2mpsk_assoc *a, const uint8_t *data, size_t len) {
  uint8_t buf[512];
  size_t n;
  for (int i = 0; i < 64; i++) {
    if (m2mpsk_assoc_read(a, buf, sizeof(buf), &n) != M2MPSK_OK)
      break;
  }
  (void)m2mpsk_assoc_peer_id(a);
  (void)m2mpsk_assoc_peer_id_is_credential(a);
  (void)m2mpsk_assoc_local_id(a);
  (void)m2mpsk_assoc_kpsa_id(a);
  (void)m2mpsk_assoc_suite(a);
  (void)m2mpsk_assoc_version(a);
  fz_status(m2mpsk_assoc_export(a, buf, 32, "EXPORTER-fuzz", data,
                                len < 16 ? len : 16),
            0, "assoc_export");
  if (m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED) {
    size_t w;
    fz_status(m2mpsk_assoc_write(a, data, len < 64 ? len : 64, &w), 0,
              "assoc_write");
  }
}

void fz_feed_chunks(m2mpsk_assoc *a, fz_reader *r, uint64_t *now) {
  fz_chunk c;
  while (fz_next_chunk(r, &c)) {
    if (c.timeout_first)
      fz_fire_timer(a, now);
    m2mpsk_state st = m2mpsk_assoc_state(a);
    if (st == M2MPSK_STATE_FAILED) {
      /* Only drain remains; feeding must be refused. */
      fz_status(m2mpsk_assoc_feed(a, c.data, c.len, *now), 0, "assoc_feed");
      break;
    }
    fz_status(m2mpsk_assoc_feed(a, c.data, c.len, *now), 0, "assoc_feed");
    (void)m2mpsk_assoc_failure(a);
    (void)m2mpsk_assoc_failure_detail(a);
    fz_drain_all(a, c.small_drain);
    st = m2mpsk_assoc_state(a);
    if (st == M2MPSK_STATE_ESTABLISHED || st == M2MPSK_STATE_CLOSED) {
      fz_poke(a, c.data, c.len);
      fz_drain_all(a, 0);
    }
    *now += 10;
  }
  /* Whatever timer is left fires once. */
  fz_fire_timer(a, now);
  fz_drain_all(a, 0);
  fz_debug(a, "end of input");
}

static int debug_on(void) {
  static int on = -1;
  if (on < 0)
    on = getenv("M2MPSK_FUZZ_DEBUG") != NULL;
  return on;
}

void fz_note(const char *what) {
  if (debug_on())
    fprintf(stderr, "[fuzz] %s\n", what);
}

void fz_debug(const m2mpsk_assoc *a, const char *where) {
  int on = debug_on();
  const char *detail = m2mpsk_assoc_failure_detail(a);
  if (on)
    fprintf(stderr, "[fuzz] %s: state %d reason %s (%s)\n", where,
            (int)m2mpsk_assoc_state(a),
            m2mpsk_reason_name(m2mpsk_assoc_failure(a)), detail ? detail : "");
}

int fz_transfer(m2mpsk_assoc *from, m2mpsk_assoc *to, uint64_t now, fz_tap tap,
                void *ctx) {
  static uint8_t buf[17000];
  size_t n;
  int pieces = 0;
  for (int i = 0; i < 256; i++) {
    if (m2mpsk_assoc_drain(from, buf, sizeof(buf), &n) != M2MPSK_OK)
      break;
    if (tap)
      tap(ctx, from, buf, n);
    pieces++;
    m2mpsk_state st = m2mpsk_assoc_state(to);
    if (st != M2MPSK_STATE_FAILED && st != M2MPSK_STATE_IDLE)
      fz_status(m2mpsk_assoc_feed(to, buf, n, now), 0, "assoc_feed");
  }
  return pieces;
}

static void read_some(m2mpsk_assoc *x) {
  /* An established DTLS side answers retransmissions while reading. */
  if (m2mpsk_assoc_state(x) == M2MPSK_STATE_ESTABLISHED) {
    uint8_t buf[64];
    size_t n;
    fz_status(m2mpsk_assoc_read(x, buf, sizeof(buf), &n), 1, "assoc_read");
  }
}

int fz_handshake(m2mpsk_assoc *a, m2mpsk_assoc *b, uint64_t *now, fz_tap tap,
                 void *ctx) {
  for (int step = 0; step < 64; step++) {
    if (m2mpsk_assoc_state(a) != M2MPSK_STATE_HANDSHAKING &&
        m2mpsk_assoc_state(b) != M2MPSK_STATE_HANDSHAKING)
      break;
    int moved = fz_transfer(a, b, *now, tap, ctx);
    read_some(b);
    moved += fz_transfer(b, a, *now, tap, ctx);
    read_some(a);
    *now += 1;
    if (moved == 0) {
      uint64_t t, next = UINT64_MAX;
      if (m2mpsk_assoc_next_timeout(a, &t) == M2MPSK_OK && t < next)
        next = t;
      if (m2mpsk_assoc_next_timeout(b, &t) == M2MPSK_OK && t < next)
        next = t;
      if (next == UINT64_MAX)
        break;
      if (next > *now)
        *now = next;
      fz_status(m2mpsk_assoc_handle_timeout(a, *now), 1,
                "assoc_handle_timeout");
      fz_status(m2mpsk_assoc_handle_timeout(b, *now), 1,
                "assoc_handle_timeout");
    }
  }
  /* Flush a final flight or alert. */
  fz_transfer(a, b, *now, tap, ctx);
  fz_transfer(b, a, *now, tap, ctx);
  return m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED &&
         m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED;
}

/* ---- fixtures ------------------------------------------------------------ */

static void add(m2mpsk_keystore *ks, const char *id, const char *ida,
                const char *idb, int64_t nb, int64_t na) {
  fz_check(m2mpsk_keystore_add(ks, id, fz_key, sizeof(fz_key), ida, idb, nb,
                               na) == M2MPSK_OK,
           "keystore_add");
}

m2mpsk_keystore *fz_responder_ks(void) {
  static m2mpsk_keystore *ks;
  if (ks == NULL) {
    fz_check(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore_new");
    add(ks, FZ_KPSA_ID, FZ_IDA, FZ_IDB, 0, 0);
    add(ks, FZ_KPSA_NOIDA, NULL, FZ_IDB_REL, 0, 0);
    add(ks, FZ_KPSA_REVOKED, FZ_IDA, FZ_IDB, 0, 0);
    fz_check(m2mpsk_keystore_revoke(ks, FZ_KPSA_REVOKED) == M2MPSK_OK,
             "keystore_revoke");
    add(ks, FZ_KPSA_WINDOW, FZ_IDA, FZ_IDB, FZ_WINDOW_NB, FZ_WINDOW_NA);
    add(ks, FZ_KPSA_OTHER, FZ_IDA, FZ_IDB_OTHER, 0, 0);
  }
  return ks;
}

m2mpsk_keystore *fz_initiator_ks(void) {
  static m2mpsk_keystore *ks;
  if (ks == NULL) {
    fz_check(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore_new");
    add(ks, FZ_KPSA_ID, FZ_IDA, FZ_IDB, 0, 0);
    add(ks, FZ_KPSA_NOIDA, NULL, FZ_IDB_REL, 0, 0);
    add(ks, FZ_KPSA_WINDOW, FZ_IDA, FZ_IDB, FZ_WINDOW_NB, FZ_WINDOW_NA);
  }
  return ks;
}

/* A config outlives the inputs, and its rate limiter counts failed
 * handshakes across them: after 20 failures of one KpsaID (10 of one peer
 * tag) at the same injected time, every later input would fail at once
 * with rate-limited, so that an input's outcome would depend on the inputs
 * before it. The limiter is off in every fuzz config. */
static void no_rate_limit(m2mpsk_config *c) {
  fz_check(m2mpsk_config_set_rate_limit(c, M2MPSK_RATE_PEER, 0, 0, 0, 0) ==
                   M2MPSK_OK &&
               m2mpsk_config_set_rate_limit(c, M2MPSK_RATE_KPSA_ID, 0, 0, 0,
                                            0) == M2MPSK_OK,
           "config_set_rate_limit");
}

/* Every suite this build supports, colon-separated. */
static const char *all_suites(void) {
  static char list[1024];
  if (list[0] == '\0') {
    for (size_t i = 0; i < m2mpsk_suite_count(); i++) {
      const char *n = m2mpsk_suite_name(i);
      if (i > 0)
        strncat(list, ":", sizeof(list) - strlen(list) - 1);
      strncat(list, n, sizeof(list) - strlen(list) - 1);
    }
  }
  return list;
}

m2mpsk_config *fz_responder_cfg(unsigned variant) {
  static m2mpsk_config *cfg[2];
  variant &= 1;
  if (cfg[variant] == NULL) {
    m2mpsk_config *c;
    fz_check(m2mpsk_config_new(&c) == M2MPSK_OK, "config_new");
    no_rate_limit(c);
    fz_check(m2mpsk_config_set_suites(c, all_suites()) == M2MPSK_OK,
             "config_set_suites");
    fz_check(m2mpsk_config_add_local_id(c, FZ_IDB) == M2MPSK_OK,
             "config_add_local_id");
    fz_check(m2mpsk_config_add_local_id(c, FZ_IDB_REL) == M2MPSK_OK,
             "config_add_local_id");
    fz_check(m2mpsk_config_set_handshake_timeout(c, 30000) == M2MPSK_OK,
             "config_set_handshake_timeout");
    if (variant)
      fz_check(m2mpsk_config_set_reveal_unknown_identity(c, 1) == M2MPSK_OK,
               "config_set_reveal_unknown_identity");
    cfg[variant] = c;
  }
  return cfg[variant];
}

m2mpsk_config *fz_initiator_cfg(void) {
  static m2mpsk_config *cfg;
  if (cfg == NULL) {
    fz_check(m2mpsk_config_new(&cfg) == M2MPSK_OK, "config_new");
    no_rate_limit(cfg);
    fz_check(m2mpsk_config_set_suites(cfg, all_suites()) == M2MPSK_OK,
             "config_set_suites");
    fz_check(m2mpsk_config_set_handshake_timeout(cfg, 30000) == M2MPSK_OK,
             "config_set_handshake_timeout");
  }
  return cfg;
}

m2mpsk_config *fz_cfg_with_suite(size_t suite, int responder) {
  m2mpsk_config *c;
  fz_check(m2mpsk_config_new(&c) == M2MPSK_OK, "config_new");
  no_rate_limit(c);
  const char *name = m2mpsk_suite_name(suite % m2mpsk_suite_count());
  fz_check(m2mpsk_config_set_suites(c, name) == M2MPSK_OK, "config_set_suites");
  if (responder) {
    fz_check(m2mpsk_config_add_local_id(c, FZ_IDB) == M2MPSK_OK,
             "config_add_local_id");
    fz_check(m2mpsk_config_add_local_id(c, FZ_IDB_REL) == M2MPSK_OK,
             "config_add_local_id");
  }
  return c;
}
