/* A responder's defences and its audit trail; see guard.h.
 *
 * Rate limiting follows Californium's MAC-error filter: failures are
 * counted per key within a window, and a key that reaches the threshold is
 * blocked for a while, each further block twice as long as the last up to a
 * ceiling, until the key stays quiet for two ceilings. Keys are remembered
 * as keyed SipHash values only (a random key per guard, so a peer cannot
 * choose colliding tags or KpsaIDs), in a fixed table of RATE_BUCKETS x
 * RATE_WAYS entries per policy: memory never grows with the number of
 * peers. A full bucket evicts its least recently counted entry that is not
 * blocked, or failing that the one whose block ends first; so a flood of
 * fresh keys can evict an older key's count, and the table size bounds what
 * the limiter remembers (documented in the header).
 *
 * Events are small heap blocks on a singly linked FIFO of bounded length.
 * An event that cannot be queued (full, or no memory) is counted as
 * dropped: auditing never fails an association. */
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"

#define RATE_BUCKETS 256
#define RATE_WAYS 4

typedef struct rate_entry {
  uint64_t hash; /* 0: free */
  uint64_t window_start;
  uint64_t last_ms;
  uint64_t blocked_until;
  uint32_t failures;
  uint32_t level; /* blocks so far: the next lasts block_ms << level */
} rate_entry;

typedef struct rate_table {
  m2mpsk_rate_policy policy;
  rate_entry *entries; /* RATE_BUCKETS * RATE_WAYS, NULL when off */
  atomic_uint used;    /* non-free entries, for the lock-free fast path */
} rate_table;

struct m2mpsk_event {
  struct m2mpsk_event *next;
  m2mpsk_event_type type;
  m2mpsk_reason reason;
  m2mpsk_role role;
  m2mpsk_transport transport;
  uint64_t time_ms;
  int peer_id_is_credential;
  const char *kpsa_id; /* each NULL or inside the same block */
  const char *peer_id;
  const char *peer_tag;
  const char *detail; /* never NULL */
};

struct m2mpsk_guard {
  uint32_t max_handshakes;
  atomic_uint handshakes;

  pthread_mutex_t rate_lock;
  uint8_t hash_key[crypto_shorthash_KEYBYTES];
  rate_table rate[2];

  pthread_mutex_t event_lock;
  uint32_t event_capacity;
  uint32_t n_events;
  m2mpsk_event *head, *tail;
  _Atomic uint64_t dropped;
};

int m2mpsk_guard_new(m2mpsk_guard **out, const m2mpsk_guard_settings *s) {
  *out = NULL;
  m2mpsk_guard *g = calloc(1, sizeof(*g));
  if (g == NULL)
    return M2MPSK_E_NOMEM;
  for (int k = 0; k < 2; k++) {
    g->rate[k].policy = s->rate[k];
    if (s->rate[k].max_failures == 0)
      continue;
    g->rate[k].entries = calloc(RATE_BUCKETS * RATE_WAYS, sizeof(rate_entry));
    if (g->rate[k].entries == NULL) {
      free(g->rate[0].entries);
      free(g);
      return M2MPSK_E_NOMEM;
    }
  }
  if (pthread_mutex_init(&g->rate_lock, NULL) != 0) {
    free(g->rate[0].entries);
    free(g->rate[1].entries);
    free(g);
    return M2MPSK_E_NOMEM;
  }
  if (pthread_mutex_init(&g->event_lock, NULL) != 0) {
    pthread_mutex_destroy(&g->rate_lock);
    free(g->rate[0].entries);
    free(g->rate[1].entries);
    free(g);
    return M2MPSK_E_NOMEM;
  }
  randombytes_buf(g->hash_key, sizeof(g->hash_key));
  g->max_handshakes = s->max_handshakes;
  g->event_capacity = s->event_capacity;
  atomic_init(&g->handshakes, 0);
  atomic_init(&g->dropped, 0);
  for (int k = 0; k < 2; k++)
    atomic_init(&g->rate[k].used, 0);
  *out = g;
  return M2MPSK_OK;
}

void m2mpsk_guard_free(m2mpsk_guard *g) {
  if (g == NULL)
    return;
  m2mpsk_event *e = g->head;
  while (e != NULL) {
    m2mpsk_event *next = e->next;
    m2mpsk_event_free(e);
    e = next;
  }
  pthread_mutex_destroy(&g->event_lock);
  pthread_mutex_destroy(&g->rate_lock);
  free(g->rate[0].entries);
  free(g->rate[1].entries);
  free(g);
}

/* ---- handshakes in progress ---------------------------------------------- */

int m2mpsk_guard_handshake_begin(m2mpsk_guard *g) {
  unsigned n = atomic_load_explicit(&g->handshakes, memory_order_relaxed);
  do {
    if (g->max_handshakes != 0 && n >= g->max_handshakes)
      return -1;
  } while (!atomic_compare_exchange_weak_explicit(
      &g->handshakes, &n, n + 1, memory_order_relaxed, memory_order_relaxed));
  return 0;
}

void m2mpsk_guard_handshake_end(m2mpsk_guard *g) {
  atomic_fetch_sub_explicit(&g->handshakes, 1, memory_order_relaxed);
}

uint32_t m2mpsk_guard_handshakes(const m2mpsk_guard *g) {
  return atomic_load_explicit(&g->handshakes, memory_order_relaxed);
}

/* ---- rate limiting ------------------------------------------------------- */

static uint64_t key_hash(const m2mpsk_guard *g, const char *key) {
  uint8_t h[crypto_shorthash_BYTES];
  crypto_shorthash(h, (const unsigned char *)key, strlen(key), g->hash_key);
  uint64_t v;
  memcpy(&v, h, sizeof(v));
  return v | 1; /* 0 marks a free entry */
}

static rate_entry *bucket_of(const rate_table *t, uint64_t h) {
  return &t->entries[(h >> 32) % RATE_BUCKETS * RATE_WAYS];
}

static rate_entry *find(const rate_table *t, uint64_t h) {
  rate_entry *b = bucket_of(t, h);
  for (int i = 0; i < RATE_WAYS; i++)
    if (b[i].hash == h)
      return &b[i];
  return NULL;
}

/* A table that is off, or holds nothing, needs no lock. */
static int table_idle(const rate_table *t) {
  return t->entries == NULL ||
         atomic_load_explicit(&t->used, memory_order_relaxed) == 0;
}

int m2mpsk_guard_blocked(m2mpsk_guard *g, int kind, const char *key,
                         uint64_t now_ms, uint64_t *until_ms) {
  rate_table *t = &g->rate[kind];
  if (table_idle(t))
    return 0;
  uint64_t h = key_hash(g, key);
  pthread_mutex_lock(&g->rate_lock);
  rate_entry *e = find(t, h);
  int blocked = e != NULL && now_ms < e->blocked_until;
  if (blocked)
    *until_ms = e->blocked_until;
  pthread_mutex_unlock(&g->rate_lock);
  return blocked;
}

/* The entry for h, taking a free or evictable one when absent. */
static rate_entry *find_or_take(rate_table *t, uint64_t h, uint64_t now_ms) {
  rate_entry *b = bucket_of(t, h), *victim = NULL;
  for (int i = 0; i < RATE_WAYS; i++) {
    if (b[i].hash == h)
      return &b[i];
  }
  for (int i = 0; i < RATE_WAYS && victim == NULL; i++)
    if (b[i].hash == 0)
      victim = &b[i];
  if (victim == NULL) {
    /* Least recently counted among the unblocked; else the one whose
     * block ends first. */
    for (int i = 0; i < RATE_WAYS; i++) {
      rate_entry *e = &b[i];
      int e_blocked = now_ms < e->blocked_until;
      if (victim == NULL) {
        victim = e;
        continue;
      }
      int v_blocked = now_ms < victim->blocked_until;
      if (e_blocked != v_blocked ? !e_blocked
          : e_blocked            ? e->blocked_until < victim->blocked_until
                                 : e->last_ms < victim->last_ms)
        victim = e;
    }
  } else {
    atomic_fetch_add_explicit(&t->used, 1, memory_order_relaxed);
  }
  memset(victim, 0, sizeof(*victim));
  victim->hash = h;
  victim->window_start = now_ms;
  return victim;
}

int m2mpsk_guard_failure(m2mpsk_guard *g, int kind, const char *key,
                         uint64_t now_ms) {
  rate_table *t = &g->rate[kind];
  if (t->entries == NULL)
    return 0;
  const m2mpsk_rate_policy *p = &t->policy;
  uint64_t h = key_hash(g, key);
  int started = 0;
  pthread_mutex_lock(&g->rate_lock);
  rate_entry *e = find_or_take(t, h, now_ms);
  /* Failures while blocked are refusals already; they do not extend it. */
  if (now_ms >= e->blocked_until) {
    if (e->level > 0 &&
        now_ms >= e->blocked_until + 2 * (uint64_t)p->block_max_ms)
      e->level = 0; /* quiet for long enough: forgiven */
    /* Associations pass their own clocks, which may lag one another a
     * little: a time before the window's start is inside it. */
    if (now_ms >= e->window_start &&
        now_ms - e->window_start >= p->window_ms) {
      e->window_start = now_ms;
      e->failures = 0;
    }
    if (++e->failures >= p->max_failures) {
      uint64_t d = (uint64_t)p->block_ms << (e->level < 20 ? e->level : 20);
      if (d > p->block_max_ms)
        d = p->block_max_ms;
      e->blocked_until = now_ms + d;
      if (e->level < 20)
        e->level++;
      e->failures = 0;
      e->window_start = now_ms;
      started = 1;
    }
  }
  e->last_ms = now_ms;
  pthread_mutex_unlock(&g->rate_lock);
  return started;
}

void m2mpsk_guard_success(m2mpsk_guard *g, int kind, const char *key) {
  rate_table *t = &g->rate[kind];
  if (table_idle(t))
    return;
  uint64_t h = key_hash(g, key);
  pthread_mutex_lock(&g->rate_lock);
  rate_entry *e = find(t, h);
  if (e != NULL) {
    memset(e, 0, sizeof(*e));
    atomic_fetch_sub_explicit(&t->used, 1, memory_order_relaxed);
  }
  pthread_mutex_unlock(&g->rate_lock);
}

/* ---- events -------------------------------------------------------------- */

static size_t str_size(const char *s) {
  return s ? strlen(s) + 1 : 0;
}

static const char *put_str(char **p, const char *s) {
  if (s == NULL)
    return NULL;
  size_t n = strlen(s) + 1;
  memcpy(*p, s, n);
  const char *at = *p;
  *p += n;
  return at;
}

void m2mpsk_guard_emit(m2mpsk_guard *g, const m2mpsk_event_fields *f) {
  if (g == NULL || g->event_capacity == 0)
    return;
  const char *detail = f->detail ? f->detail : "";
  size_t n = sizeof(m2mpsk_event) + str_size(f->kpsa_id) +
             str_size(f->peer_id) + str_size(f->peer_tag) + str_size(detail);
  m2mpsk_event *e = malloc(n);
  if (e == NULL) {
    atomic_fetch_add_explicit(&g->dropped, 1, memory_order_relaxed);
    return;
  }
  char *p = (char *)(e + 1);
  e->next = NULL;
  e->type = f->type;
  e->reason = f->reason;
  e->role = f->role;
  e->transport = f->transport;
  e->time_ms = f->time_ms;
  e->peer_id_is_credential = f->peer_id != NULL && f->peer_id_is_credential;
  e->kpsa_id = put_str(&p, f->kpsa_id);
  e->peer_id = put_str(&p, f->peer_id);
  e->peer_tag = put_str(&p, f->peer_tag);
  e->detail = put_str(&p, detail);
  pthread_mutex_lock(&g->event_lock);
  int full = g->n_events >= g->event_capacity;
  if (!full) {
    if (g->tail)
      g->tail->next = e;
    else
      g->head = e;
    g->tail = e;
    g->n_events++;
  }
  pthread_mutex_unlock(&g->event_lock);
  if (full) {
    free(e);
    atomic_fetch_add_explicit(&g->dropped, 1, memory_order_relaxed);
  }
}

int m2mpsk_guard_next_event(m2mpsk_guard *g, m2mpsk_event **out) {
  pthread_mutex_lock(&g->event_lock);
  m2mpsk_event *e = g->head;
  if (e != NULL) {
    g->head = e->next;
    if (g->head == NULL)
      g->tail = NULL;
    g->n_events--;
  }
  pthread_mutex_unlock(&g->event_lock);
  if (e == NULL)
    return M2MPSK_E_AGAIN;
  e->next = NULL;
  *out = e;
  return M2MPSK_OK;
}

uint64_t m2mpsk_guard_dropped(const m2mpsk_guard *g) {
  return atomic_load_explicit(&g->dropped, memory_order_relaxed);
}

/* ---- the public event accessors ------------------------------------------ */

void m2mpsk_event_free(m2mpsk_event *ev) {
  free(ev);
}

m2mpsk_event_type m2mpsk_event_get_type(const m2mpsk_event *ev) {
  return ev ? ev->type : M2MPSK_EVENT_NONE;
}

m2mpsk_reason m2mpsk_event_reason(const m2mpsk_event *ev) {
  return ev ? ev->reason : M2MPSK_REASON_NONE;
}

m2mpsk_role m2mpsk_event_role(const m2mpsk_event *ev) {
  return ev ? ev->role : M2MPSK_ROLE_INITIATOR;
}

m2mpsk_transport m2mpsk_event_transport(const m2mpsk_event *ev) {
  return ev ? ev->transport : M2MPSK_TRANSPORT_TLS;
}

uint64_t m2mpsk_event_time_ms(const m2mpsk_event *ev) {
  return ev ? ev->time_ms : 0;
}

const char *m2mpsk_event_kpsa_id(const m2mpsk_event *ev) {
  return ev ? ev->kpsa_id : NULL;
}

const char *m2mpsk_event_peer_id(const m2mpsk_event *ev) {
  return ev ? ev->peer_id : NULL;
}

int m2mpsk_event_peer_id_is_credential(const m2mpsk_event *ev) {
  return ev ? ev->peer_id_is_credential : 0;
}

const char *m2mpsk_event_peer_tag(const m2mpsk_event *ev) {
  return ev ? ev->peer_tag : NULL;
}

const char *m2mpsk_event_detail(const m2mpsk_event *ev) {
  return ev ? ev->detail : "";
}
