#include "link.h"

#include <criterion/criterion.h>
#include <string.h>

const uint8_t m2mt_key[32] = {
    0x4b, 0x70, 0x73, 0x61, 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12,
    13,   14,   15,   16,   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28};
const uint8_t m2mt_other_key[32] = {
    0x4b, 0x70, 0x73, 0x61, 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12,
    13,   14,   15,   16,   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 29};

static unsigned rnd(m2mt_link *l) {
  uint32_t x = l->rng ? l->rng : 0x9e3779b9u;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  l->rng = x;
  return x % 100;
}

typedef struct dgram {
  uint8_t buf[17000];
  size_t len;
} dgram;

int m2mt_transfer(m2mpsk_assoc *from, m2mpsk_assoc *to, m2mt_link *link,
                  uint64_t now) {
  static _Thread_local dgram q[64];
  size_t n = 0;
  int calls = 0;
  for (;;) {
    if (n == 64)
      break;
    int rc = m2mpsk_assoc_drain(from, q[n].buf, sizeof(q[n].buf), &q[n].len);
    if (rc == M2MPSK_E_AGAIN)
      break;
    if (rc != M2MPSK_OK)
      return rc;
    n++;
  }
  if (link) {
    /* A datagram held back last time goes after this batch; one of this
     * batch may be held back in turn. */
    int slot = link->held[0].to == to ? 0 : link->held[1].to == to ? 1 : -1;
    int was_held = slot >= 0;
    if (slot >= 0 && n < 64) {
      memcpy(q[n].buf, link->held[slot].buf, link->held[slot].len);
      q[n].len = link->held[slot].len;
      n++;
      link->held[slot].to = NULL;
    }
    if (n > 0 && !was_held && link->reorder_pct &&
        rnd(link) < link->reorder_pct) {
      slot = link->held[0].to == NULL ? 0 : 1;
      if (link->held[slot].to == NULL) {
        link->held[slot].to = to;
        link->held[slot].len = q[0].len;
        memcpy(link->held[slot].buf, q[0].buf, q[0].len);
        memmove(&q[0], &q[1], (n - 1) * sizeof(q[0]));
        n--;
        link->reordered++;
      }
    }
  }
  for (size_t i = 0; i < n; i++) {
    int copies = 1;
    if (link) {
      if (link->drop_all || (link->drop_pct && rnd(link) < link->drop_pct)) {
        link->dropped++;
        continue;
      }
      if (link->dup_pct && rnd(link) < link->dup_pct) {
        copies = 2;
        link->duplicated++;
      }
    }
    for (int c = 0; c < copies; c++) {
      size_t chunk = link && link->stream_chunk ? link->stream_chunk : q[i].len;
      for (size_t off = 0; off < q[i].len; off += chunk) {
        size_t len = q[i].len - off < chunk ? q[i].len - off : chunk;
        m2mpsk_state st = m2mpsk_assoc_state(to);
        if (st == M2MPSK_STATE_FAILED || st == M2MPSK_STATE_IDLE)
          return calls;
        int rc = m2mpsk_assoc_feed(to, q[i].buf + off, len, now);
        /* Every other outcome shows in the receiver's state (failed,
         * closed) or is a loss the link may suffer anyway (E_LIMIT,
         * E_NOMEM), which the tests that provoke it check; E_INVALID is a
         * harness bug. */
        cr_assert_neq(rc, M2MPSK_E_INVALID, "feed: %s", m2mpsk_strerror(rc));
        calls++;
      }
      if (link)
        link->delivered++;
    }
  }
  return calls;
}

static int handshaking(m2mpsk_assoc *x) {
  return m2mpsk_assoc_state(x) == M2MPSK_STATE_HANDSHAKING;
}

/* An established DTLS side answers the peer's retransmissions while
 * reading; application data is not expected during these tests. */
static void poke(m2mpsk_assoc *x) {
  if (m2mpsk_assoc_state(x) == M2MPSK_STATE_ESTABLISHED) {
    uint8_t buf[64];
    size_t n;
    int rc = m2mpsk_assoc_read(x, buf, sizeof(buf), &n);
    /* Data, close and failure show in the state the callers check. */
    cr_assert(rc != M2MPSK_E_INVALID && rc != M2MPSK_E_BUFFER, "read: %s",
              m2mpsk_strerror(rc));
  }
}

int m2mt_run_handshake(m2mpsk_assoc *a, m2mpsk_assoc *b, m2mt_link *link,
                       uint64_t *now, int max_steps) {
  for (int step = 0; step < max_steps; step++) {
    if (!handshaking(a) && !handshaking(b)) {
      /* Flush a final alert or flight, then stop. */
      m2mt_transfer(a, b, link, *now);
      m2mt_transfer(b, a, link, *now);
      return step;
    }
    int moved = m2mt_transfer(a, b, link, *now);
    poke(b);
    moved += m2mt_transfer(b, a, link, *now);
    poke(a);
    /* A held-back datagram is still in flight: deliver it before any
     * timer fires. */
    if (moved > 0 || (link && (link->held[0].to || link->held[1].to)))
      continue;
    /* Nothing moved: jump to the earliest timer. */
    uint64_t da = UINT64_MAX, db = UINT64_MAX, t;
    if (m2mpsk_assoc_next_timeout(a, &t) == M2MPSK_OK)
      da = t;
    if (m2mpsk_assoc_next_timeout(b, &t) == M2MPSK_OK)
      db = t;
    uint64_t next = da < db ? da : db;
    if (next == UINT64_MAX)
      return -1;
    if (next > *now)
      *now = next;
    /* A timeout fails the side (E_FAILED), as does an earlier failure
     * (E_STATE): the loop's state check sees both. */
    int ra = m2mpsk_assoc_handle_timeout(a, *now);
    int rb = m2mpsk_assoc_handle_timeout(b, *now);
    cr_assert(ra != M2MPSK_E_INVALID && rb != M2MPSK_E_INVALID);
  }
  return -1;
}

void m2mt_pair_init(m2mt_pair *p, m2mpsk_transport t, const uint8_t *key_a,
                    const uint8_t *key_b, const char *ida, const char *suites) {
  memset(p, 0, sizeof(*p));
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_b, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(p->ks_a, M2MT_KPSA_ID, key_a, 32, ida,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(p->ks_b, M2MT_KPSA_ID, key_b, 32, ida,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p->cfg_b, M2MT_IDB), M2MPSK_OK);
  if (suites) {
    cr_assert_eq(m2mpsk_config_set_suites(p->cfg_a, suites), M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_set_suites(p->cfg_b, suites), M2MPSK_OK);
  }
  cr_assert_eq(m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, t, p->cfg_a,
                                p->ks_a, M2MT_KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER, t, p->cfg_b,
                                p->ks_b, NULL),
               M2MPSK_OK);
}

void m2mt_pair_start(m2mt_pair *p, uint64_t now, int64_t unix_time) {
  cr_assert_eq(m2mpsk_assoc_start(p->b, now, unix_time), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(p->a, now, unix_time), M2MPSK_OK);
}

void m2mt_pair_free(m2mt_pair *p) {
  m2mpsk_assoc_free(p->a);
  m2mpsk_assoc_free(p->b);
  m2mpsk_config_free(p->cfg_a);
  m2mpsk_config_free(p->cfg_b);
  m2mpsk_keystore_free(p->ks_a);
  m2mpsk_keystore_free(p->ks_b);
  memset(p, 0, sizeof(*p));
}
