/* An in-memory link between two associations, for tests: moves what one
 * side drains into the other side's feed, optionally dropping, duplicating
 * and reordering datagrams, with time injected by the test. */
#ifndef M2MPSK_TEST_LINK_H
#define M2MPSK_TEST_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

typedef struct m2mt_link {
  unsigned drop_pct;    /* chance a datagram is lost */
  unsigned dup_pct;     /* chance a datagram is delivered twice */
  unsigned reorder_pct; /* chance a datagram is held back behind later ones */
  int drop_all;
  size_t stream_chunk; /* TLS: feed at most this many bytes per call (0: all) */
  uint32_t rng;        /* xorshift state; set a non-zero seed */
  size_t dropped, duplicated, reordered, delivered;
  /* One datagram held back per direction, keyed by its destination. */
  struct {
    const m2mpsk_assoc *to;
    size_t len;
    uint8_t buf[17000];
  } held[2];
} m2mt_link;

/* Moves everything `from` has to send into `to`. Returns the number of
 * feed calls made, or a negative status from drain. Feed failures are
 * left for the caller to see in `to`'s state. */
int m2mt_transfer(m2mpsk_assoc *from, m2mpsk_assoc *to, m2mt_link *link,
                  uint64_t now);

/* Runs the handshake between initiator `a` and responder `b` (both already
 * started) until neither is handshaking, advancing *now to the next timer
 * whenever nothing moves. Bounded: gives up after `max_steps`. Returns the
 * number of steps taken, or -1 when the bound was hit. */
int m2mt_run_handshake(m2mpsk_assoc *a, m2mpsk_assoc *b, m2mt_link *link,
                       uint64_t *now, int max_steps);

/* A ready-made pair of keystores, configs and associations. */
typedef struct m2mt_pair {
  m2mpsk_keystore *ks_a, *ks_b;
  m2mpsk_config *cfg_a, *cfg_b;
  m2mpsk_assoc *a, *b;
} m2mt_pair;

/* Standard identities used across the tests. */
#define M2MT_KPSA_ID "test@onem2m.com"
#define M2MT_IDA "//m2m.example.com/cse-in/Cae1"
#define M2MT_IDB "//m2m.example.com/cse-in"
extern const uint8_t m2mt_key[32];
extern const uint8_t m2mt_other_key[32];

/* Builds both sides with record (M2MT_KPSA_ID, key, ida, M2MT_IDB) on each
 * (ida may be NULL), responder serving M2MT_IDB, and `suites` (NULL for the
 * default) on both configs. Creates the associations but does not start
 * them. Asserts on any error. */
void m2mt_pair_init(m2mt_pair *p, m2mpsk_transport t, const uint8_t *key_a,
                    const uint8_t *key_b, const char *ida, const char *suites);
void m2mt_pair_start(m2mt_pair *p, uint64_t now, int64_t unix_time);
void m2mt_pair_free(m2mt_pair *p);

#endif
