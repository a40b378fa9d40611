/* A responder's defences and its audit trail, shared by every association
 * made from one config: the count of handshakes in progress, the
 * failed-handshake rate limiter, and the bounded event queue. Not
 * installed. */
#ifndef M2MPSK_GUARD_H
#define M2MPSK_GUARD_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

typedef struct m2mpsk_guard m2mpsk_guard;

/* One rate limit policy: max_failures 0 turns it off. */
typedef struct m2mpsk_rate_policy {
  uint32_t max_failures;
  uint32_t window_ms;
  uint32_t block_ms;
  uint32_t block_max_ms;
} m2mpsk_rate_policy;

/* The settings a guard is created with (copied from the frozen config). */
typedef struct m2mpsk_guard_settings {
  uint32_t max_handshakes; /* 0: unlimited */
  uint32_t event_capacity; /* 0: no events */
  m2mpsk_rate_policy rate[2]; /* [M2MPSK_RATE_PEER], [M2MPSK_RATE_KPSA_ID] */
} m2mpsk_guard_settings;

/* Returns M2MPSK_OK or M2MPSK_E_NOMEM. The rate tables are allocated here
 * for each policy that is on, so that no later call can fail to record. */
int m2mpsk_guard_new(m2mpsk_guard **out, const m2mpsk_guard_settings *s);
void m2mpsk_guard_free(m2mpsk_guard *g);

/* Handshakes in progress: begin returns 0, or -1 when the limit is
 * reached (nothing counted). end undoes one begin. Lock-free. */
int m2mpsk_guard_handshake_begin(m2mpsk_guard *g);
void m2mpsk_guard_handshake_end(m2mpsk_guard *g);
uint32_t m2mpsk_guard_handshakes(const m2mpsk_guard *g);

/* Rate limiting by `key` (a peer tag, or a KpsaID as presented; NUL
 * terminated, any length) under policy `kind`. blocked returns 1 and sets
 * *until_ms while the key is blocked at now_ms, else 0. failure records a
 * failed handshake and returns 1 when it starts a block. success forgets
 * the key. All thread-safe. */
int m2mpsk_guard_blocked(m2mpsk_guard *g, int kind, const char *key,
                         uint64_t now_ms, uint64_t *until_ms);
int m2mpsk_guard_failure(m2mpsk_guard *g, int kind, const char *key,
                         uint64_t now_ms);
void m2mpsk_guard_success(m2mpsk_guard *g, int kind, const char *key);

/* What an event says; strings may be NULL. */
typedef struct m2mpsk_event_fields {
  m2mpsk_event_type type;
  m2mpsk_reason reason;
  m2mpsk_role role;
  m2mpsk_transport transport;
  uint64_t time_ms;
  const char *kpsa_id;
  const char *peer_id;
  int peer_id_is_credential;
  const char *peer_tag;
  const char *detail;
} m2mpsk_event_fields;

/* Queues an event, or counts it as dropped when the queue is full or
 * memory is short. Never fails the caller. No-op with no queue. */
void m2mpsk_guard_emit(m2mpsk_guard *g, const m2mpsk_event_fields *f);
/* M2MPSK_OK (ownership of *out passes to the caller) or M2MPSK_E_AGAIN. */
int m2mpsk_guard_next_event(m2mpsk_guard *g, m2mpsk_event **out);
uint64_t m2mpsk_guard_dropped(const m2mpsk_guard *g);

#endif /* M2MPSK_GUARD_H */
