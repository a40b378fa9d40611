/* Key sources: the keystore asks its host for records it does not have
 * (issue 19), and associations wait for the answer.
 *
 * One request is open per KpsaID. Its references: the keystore's while it
 * is open (in the open table), the queue's until m2mpsk_keystore_next_request
 * hands it out (or the callee's, in callback mode), one per waiting
 * association, and whatever the host took with m2mpsk_key_request_ref().
 *
 * A request does not hold its keystore: that would make a cycle (the
 * keystore holds its open requests) and an unanswered request would keep
 * the keystore, and every key in it, alive for ever. It points to it
 * weakly, under its own mutex; an answer takes a reference only if the
 * keystore is not already being destroyed (m2mpsk_keystore_try_ref), and
 * the keystore's destruction, and the closing of a request, clear the
 * pointer under that mutex.
 *
 * Locks: the keystore's src_mu (the open table, the queue, the settings)
 * before a request's mu. The keystore's rwlock is taken inside src_mu only
 * by the record check of request_key(); an answer adds its record before
 * taking src_mu, never inside it. The callback runs with no lock held. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TABLE_MIN 16
#define TABLE_MAX 65536

/* The record of an answer given once, as small as its identities: a whole
 * m2mpsk_record_view (1 KiB, room for the longest IdA and IdB) is past
 * glibc's per-thread cache, and its calloc cost an answer more than all
 * the rest of it (0.6 us of 1.8, in the middle of a busy loop). It lives in
 * the request (once_buf) when its identities fit, as most do. */
struct once_record {
  int64_t not_before, not_after;
  size_t ida_len, idb_len;
  char ids[]; /* IdA (empty: none), NUL, IdB, NUL */
};

struct m2mpsk_key_request {
  atomic_size_t refs;
  atomic_int answered;
  pthread_mutex_t mu;  /* guards ks */
  m2mpsk_keystore *ks; /* weak; NULL once closed or detached */
  /* Under the keystore's src_mu: */
  struct m2mpsk_key_request *next;  /* open table chain */
  struct m2mpsk_key_request *qnext; /* queue */
  int queued;
  int open;
  uint64_t hash;
  m2mpsk_role role;
  char *server_name; /* NULL, sni_buf, or an allocation of its own */
  char kpsa_id[M2MPSK_KPSA_ID_MAX + 1];
  char sni_buf[64]; /* a server name that fits (most: a CSE's FQDN) */
  /* The key that came with the answer (handoff.c), for the record of
   * handoff_serial, until the first waiting association takes it or the
   * request is destroyed: a handle, or 0. handoff_serial is written before
   * the handle is published. */
  atomic_int handoff;
  uint64_t handoff_serial;
  /* An answer given once (m2mpsk_key_request_supply_once): the record for
   * the associations that waited, its key in handoff (read, never taken).
   * Set under mu before the request is closed; NULL otherwise. Either
   * once_buf or an allocation of its own. */
  struct once_record *once;
  int64_t once_buf[(sizeof(struct once_record) + 128) / sizeof(int64_t)];
};

struct m2mpsk_key_sources {
  m2mpsk_key_source_fn fn;
  void *arg;
  size_t max_pending; /* 0: removed */
  size_t nopen;
  m2mpsk_key_request **table;
  size_t nbuckets; /* a power of two */
  m2mpsk_key_request *qhead, *qtail;
};

/* ---- requests ------------------------------------------------------------ */

/* Freed requests kept for the next ones, for the process. Under load a
 * source's responder makes and frees one request per handshake with
 * thousands alive at once: glibc serves an object of this size (past its
 * fast bins) from its sorted bins, splitting and merging chunks, and a
 * pooled request is also still in cache. A pooled request keeps its mutex
 * initialized; its key, record and server name are gone (request_destroy).
 * At most POOL_MAX are kept (about 0.5 MiB); sanitizer builds keep none, so
 * that a use after free is still seen. */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_MAX 0u
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define POOL_MAX 0u
#endif
#endif
#ifndef POOL_MAX
#define POOL_MAX 1024u
#endif
static const unsigned g_pool_max = POOL_MAX;

static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static m2mpsk_key_request *g_pool; /* chained through next */
static unsigned g_pool_n;
static pthread_once_t g_pool_once = PTHREAD_ONCE_INIT;
static int g_pool_on; /* set once, by pool_setup */

/* A child forked while another thread held the pool's mutex would never
 * see it released: it starts with a fresh one (the pool is as it was). */
static void pool_atfork_child(void) {
  pthread_mutex_init(&g_pool_mu, NULL);
}

static void pool_setup(void) {
  g_pool_on =
      g_pool_max > 0 && pthread_atfork(NULL, NULL, pool_atfork_child) == 0;
}

static m2mpsk_key_request *pool_get(void) {
  pthread_once(&g_pool_once, pool_setup);
  if (!g_pool_on)
    return NULL;
  pthread_mutex_lock(&g_pool_mu);
  m2mpsk_key_request *r = g_pool;
  if (r != NULL) {
    g_pool = r->next;
    g_pool_n--;
  }
  pthread_mutex_unlock(&g_pool_mu);
  return r;
}

/* 1 when `r` went to the pool. */
static int pool_put(m2mpsk_key_request *r) {
  if (!g_pool_on) /* requests are made (pool_get) before any is freed */
    return 0;
  pthread_mutex_lock(&g_pool_mu);
  int kept = g_pool_n < g_pool_max;
  if (kept) {
    r->next = g_pool;
    g_pool = r;
    g_pool_n++;
  }
  pthread_mutex_unlock(&g_pool_mu);
  return kept;
}

/* A request for kpsa_id (at most M2MPSK_KPSA_ID_MAX bytes), open, with no
 * reference counted yet, or NULL when memory is short. */
static m2mpsk_key_request *request_new(const char *kpsa_id, size_t id_len,
                                       uint64_t hash, m2mpsk_role role,
                                       const char *sni) {
  size_t sni_n = sni != NULL && sni[0] != '\0' ? strlen(sni) + 1 : 0;
  char *name = NULL;
  if (sni_n > sizeof(((m2mpsk_key_request *)NULL)->sni_buf) &&
      (name = malloc(sni_n)) == NULL)
    return NULL;
  m2mpsk_key_request *r = pool_get();
  if (r == NULL) {
    r = malloc(sizeof(*r));
    if (r == NULL || pthread_mutex_init(&r->mu, NULL) != 0) {
      free(r);
      free(name);
      return NULL;
    }
  }
  atomic_init(&r->refs, 0);
  atomic_init(&r->answered, 0);
  r->ks = NULL;
  r->next = r->qnext = NULL;
  r->queued = 0;
  r->open = 1;
  r->hash = hash;
  r->role = role;
  r->server_name = NULL;
  if (sni_n > 0) {
    r->server_name = name != NULL ? name : r->sni_buf;
    memcpy(r->server_name, sni, sni_n);
  }
  memcpy(r->kpsa_id, kpsa_id, id_len + 1);
  atomic_init(&r->handoff, 0);
  r->handoff_serial = 0;
  r->once = NULL;
  return r;
}

/* The record of an answer given once when it has an allocation of its own
 * (its identities did not fit in the request), or NULL. */
static struct once_record *once_heap(m2mpsk_key_request *r,
                                     struct once_record *o) {
  return o != (struct once_record *)(void *)r->once_buf ? o : NULL;
}

static void request_destroy(m2mpsk_key_request *r) {
  m2mpsk_handoff_drop(atomic_exchange(&r->handoff, 0));
  free(once_heap(r, r->once));
  if (r->server_name != r->sni_buf)
    free(r->server_name);
  if (!pool_put(r)) {
    pthread_mutex_destroy(&r->mu);
    free(r);
  }
}

/* Drops a reference known not to be the last one that could leave an open
 * request orphaned (the keystore's own, or the queue's). */
static void request_drop(m2mpsk_key_request *r) {
  if (atomic_fetch_sub(&r->refs, 1) == 1)
    request_destroy(r);
}

/* The keystore, with a reference taken, or NULL when it is gone. */
static m2mpsk_keystore *request_keystore(m2mpsk_key_request *r) {
  pthread_mutex_lock(&r->mu);
  m2mpsk_keystore *ks = r->ks;
  if (ks != NULL && !m2mpsk_keystore_try_ref(ks))
    ks = NULL;
  pthread_mutex_unlock(&r->mu);
  return ks;
}

static m2mpsk_key_request **bucket(struct m2mpsk_key_sources *s,
                                   uint64_t hash) {
  return &s->table[hash & (s->nbuckets - 1)];
}

static void table_unlink(struct m2mpsk_key_sources *s, m2mpsk_key_request *r) {
  for (m2mpsk_key_request **l = bucket(s, r->hash); *l != NULL;
       l = &(*l)->next) {
    if (*l == r) {
      *l = r->next;
      r->next = NULL;
      s->nopen--;
      return;
    }
  }
}

static int queue_unlink(struct m2mpsk_key_sources *s, m2mpsk_key_request *r) {
  if (!r->queued)
    return 0;
  m2mpsk_key_request *prev = NULL;
  for (m2mpsk_key_request *q = s->qhead; q != NULL; prev = q, q = q->qnext) {
    if (q != r)
      continue;
    if (prev != NULL)
      prev->qnext = q->qnext;
    else
      s->qhead = q->qnext;
    if (s->qtail == q)
      s->qtail = prev;
    q->qnext = NULL;
    q->queued = 0;
    return 1;
  }
  return 0;
}

/* Closes an open request, under src_mu: marks it answered, takes it out of
 * the table (and the queue) and clears its keystore pointer. Returns the
 * number of references the caller must drop once src_mu is released (the
 * keystore's, and the queue's when it was still queued). */
static int close_locked(struct m2mpsk_key_sources *s, m2mpsk_key_request *r) {
  if (!r->open)
    return 0;
  r->open = 0;
  atomic_store(&r->answered, 1);
  table_unlink(s, r);
  int drops = 1 + queue_unlink(s, r);
  pthread_mutex_lock(&r->mu);
  r->ks = NULL;
  pthread_mutex_unlock(&r->mu);
  return drops;
}

/* Answers `r` (of keystore ks, referenced by the caller). M2MPSK_OK, or
 * M2MPSK_E_STATE when it was answered already. */
static int close_request(m2mpsk_keystore *ks, m2mpsk_key_request *r) {
  pthread_mutex_t *mu = m2mpsk_keystore_src_mu(ks);
  pthread_mutex_lock(mu);
  struct m2mpsk_key_sources *s = *m2mpsk_keystore_src(ks);
  int drops = s != NULL ? close_locked(s, r) : 0;
  pthread_mutex_unlock(mu);
  for (int i = 0; i < drops; i++)
    request_drop(r);
  return drops > 0 ? M2MPSK_OK : M2MPSK_E_STATE;
}

/* The caller holds one of the two references left on an open request, the
 * other being the keystore's: once the caller's goes, nobody will answer
 * it and nobody waits. Closes it as absent (so that it does not count
 * against max_pending for ever) and returns 1; 0 when it is not so after
 * all (someone joined, or it was answered). The caller still drops its own
 * reference afterwards, so the request stays valid throughout. */
static int close_orphan(m2mpsk_key_request *r) {
  m2mpsk_keystore *ks = request_keystore(r);
  if (ks == NULL)
    return 0;
  pthread_mutex_t *mu = m2mpsk_keystore_src_mu(ks);
  pthread_mutex_lock(mu);
  struct m2mpsk_key_sources *s = *m2mpsk_keystore_src(ks);
  int drops = 0;
  /* Joining happens under src_mu, so refs cannot grow meanwhile. */
  if (s != NULL && r->open && atomic_load(&r->refs) == 2)
    drops = close_locked(s, r);
  pthread_mutex_unlock(mu);
  for (int i = 0; i < drops; i++)
    request_drop(r);
  m2mpsk_keystore_free(ks);
  return drops > 0;
}

void m2mpsk_key_request_free(m2mpsk_key_request *req) {
  if (req == NULL)
    return;
  size_t n = atomic_load(&req->refs);
  for (;;) {
    if (n == 2 && !atomic_load(&req->answered)) {
      /* Whoever would take it from 2 to 1 looks first, holding on. */
      (void)close_orphan(req);
      request_drop(req);
      return;
    }
    if (atomic_compare_exchange_weak(&req->refs, &n, n - 1)) {
      if (n == 1)
        request_destroy(req);
      return;
    }
  }
}

m2mpsk_key_request *m2mpsk_key_request_ref(m2mpsk_key_request *req) {
  if (req != NULL)
    atomic_fetch_add(&req->refs, 1);
  return req;
}

const char *m2mpsk_key_request_kpsa_id(const m2mpsk_key_request *req) {
  return req != NULL ? req->kpsa_id : NULL;
}

const char *m2mpsk_key_request_server_name(const m2mpsk_key_request *req) {
  return req != NULL ? req->server_name : NULL;
}

m2mpsk_role m2mpsk_key_request_role(const m2mpsk_key_request *req) {
  return req != NULL ? req->role : M2MPSK_ROLE_RESPONDER;
}

int m2mpsk_key_request_answered(const m2mpsk_key_request *req) {
  if (req == NULL)
    return M2MPSK_E_INVALID;
  return atomic_load(&req->answered) != 0;
}

/* The keystore of a request still open (a reference to drop with
 * m2mpsk_keystore_free()), or NULL: answered, or its keystore is gone. */
static m2mpsk_keystore *open_request_keystore(m2mpsk_key_request *req) {
  return atomic_load(&req->answered) ? NULL : request_keystore(req);
}

/* After the answer's record was added with status rc: closes the request
 * when the keystore now has a record for it. The record first, then the
 * close: an association that looks between the two still finds the
 * request open and waits on it, and one that looks after finds the
 * record. */
static int supplied(m2mpsk_key_request *req, m2mpsk_keystore *ks, int rc) {
  if (rc == M2MPSK_OK || rc == M2MPSK_E_DUPLICATE)
    (void)close_request(ks, req);
  m2mpsk_keystore_free(ks);
  return rc;
}

int m2mpsk_key_request_supply(m2mpsk_key_request *req, const uint8_t *key,
                              size_t key_len, const char *ida, const char *idb,
                              int64_t not_before, int64_t not_after) {
  if (req == NULL || key == NULL || idb == NULL)
    return M2MPSK_E_INVALID;
  m2mpsk_keystore *ks = open_request_keystore(req);
  if (ks == NULL)
    return M2MPSK_E_STATE;
  uint64_t serial = 0;
  int rc = m2mpsk_keystore_add_serial(ks, req->kpsa_id, key, key_len, ida, idb,
                                      not_before, not_after, &serial);
  if (rc == M2MPSK_OK) {
    /* Kept for the associations waiting, before they can see the answer:
     * the first to resume takes it instead of reading the arena. */
    int h = m2mpsk_handoff_put(key, key_len, NULL);
    if (h != 0) {
      req->handoff_serial = serial;
      m2mpsk_handoff_drop(atomic_exchange(&req->handoff, h));
    }
  }
  return supplied(req, ks, rc);
}

int m2mpsk_key_request_supply_once(m2mpsk_key_request *req,
                                   const uint8_t *key, size_t key_len,
                                   const char *ida, const char *idb,
                                   int64_t not_before, int64_t not_after) {
  if (req == NULL || key == NULL || idb == NULL ||
      req->role != M2MPSK_ROLE_RESPONDER)
    return M2MPSK_E_INVALID;
  /* Only associations make requests, with a KpsaID they validated. */
  int rc = m2mpsk_record_check_rest(key_len, ida, idb, not_before, not_after);
  if (rc != M2MPSK_OK)
    return rc;
  m2mpsk_keystore *ks = open_request_keystore(req);
  if (ks == NULL)
    return M2MPSK_E_STATE;
  size_t ida_len = ida != NULL ? strlen(ida) : 0, idb_len = strlen(idb);
  size_t need = sizeof(struct once_record) + ida_len + idb_len + 2;
  int fits = need <= sizeof(req->once_buf);
  /* Filled in the request only under its mutex, once no other answer came
   * first: a concurrent answer may be reading it. */
  struct once_record *heap = fits ? NULL : malloc(need);
  int why = M2MPSK_E_NOMEM;
  int h = fits || heap != NULL ? m2mpsk_handoff_put(key, key_len, &why) : 0;
  if (h == 0) {
    free(heap);
    m2mpsk_keystore_free(ks);
    return why;
  }
  pthread_mutex_lock(&req->mu);
  int taken = req->once != NULL || atomic_load(&req->answered);
  if (!taken) {
    struct once_record *v =
        fits ? (struct once_record *)(void *)req->once_buf : heap;
    v->not_before = not_before;
    v->not_after = not_after;
    v->ida_len = ida_len;
    v->idb_len = idb_len;
    memcpy(v->ids, ida != NULL ? ida : "", ida_len + 1);
    memcpy(v->ids + ida_len + 1, idb, idb_len + 1);
    req->once = v;
    heap = NULL; /* the request's now */
    m2mpsk_handoff_drop(atomic_exchange(&req->handoff, h));
  }
  pthread_mutex_unlock(&req->mu);
  if (taken || close_request(ks, req) != M2MPSK_OK) {
    /* Another answer came first: it stands, this one leaves no trace. */
    if (!taken) {
      pthread_mutex_lock(&req->mu);
      heap = once_heap(req, req->once);
      req->once = NULL;
      h = atomic_exchange(&req->handoff, 0);
      pthread_mutex_unlock(&req->mu);
    }
    m2mpsk_handoff_drop(h);
    free(heap);
    rc = M2MPSK_E_STATE;
  }
  m2mpsk_keystore_free(ks);
  return rc;
}

int m2mpsk_key_request_once_record(m2mpsk_key_request *req,
                                   m2mpsk_record_view *v, uint8_t *key,
                                   size_t *key_len) {
  int found = 0;
  pthread_mutex_lock(&req->mu);
  const struct once_record *o = req->once;
  if (o != NULL) {
    memcpy(v->ida, o->ids, o->ida_len + 1);
    memcpy(v->idb, o->ids + o->ida_len + 1, o->idb_len + 1);
    v->not_before = o->not_before;
    v->not_after = o->not_after;
    v->revoked = 0;
    v->serial = 0;
    v->token = 0;
    v->tk = NULL;
    *key_len = m2mpsk_handoff_read(atomic_load(&req->handoff), key);
    found = *key_len != 0;
  }
  pthread_mutex_unlock(&req->mu);
  return found;
}

int m2mpsk_key_request_given_once(m2mpsk_key_request *req) {
  pthread_mutex_lock(&req->mu);
  int once = req->once != NULL;
  pthread_mutex_unlock(&req->mu);
  return once;
}

size_t m2mpsk_key_request_take_key(m2mpsk_key_request *req, uint64_t serial,
                                   uint8_t *out) {
  if (req == NULL)
    return 0;
  pthread_mutex_lock(&req->mu);
  /* An answer given once keeps its key for every waiter. */
  int h = req->once == NULL ? atomic_exchange(&req->handoff, 0) : 0;
  pthread_mutex_unlock(&req->mu);
  if (h == 0)
    return 0;
  if (req->handoff_serial != serial) {
    m2mpsk_handoff_drop(h); /* the record was replaced meanwhile */
    return 0;
  }
  return m2mpsk_handoff_take(h, out);
}

int m2mpsk_key_request_supply_token_key(
    m2mpsk_key_request *req, size_t key_len,
    m2mpsk_token_master_secret_fn master_secret,
    m2mpsk_token_release_fn release, void *ctx, const char *ida,
    const char *idb, int64_t not_before, int64_t not_after) {
  if (req == NULL || idb == NULL || master_secret == NULL)
    return M2MPSK_E_INVALID;
  m2mpsk_keystore *ks = open_request_keystore(req);
  if (ks == NULL)
    return M2MPSK_E_STATE;
  return supplied(req, ks,
                  m2mpsk_keystore_add_token_key(
                      ks, req->kpsa_id, key_len, master_secret, release, ctx,
                      ida, idb, not_before, not_after));
}

int m2mpsk_key_request_absent(m2mpsk_key_request *req) {
  if (req == NULL)
    return M2MPSK_E_INVALID;
  m2mpsk_keystore *ks = open_request_keystore(req);
  if (ks == NULL)
    return M2MPSK_E_STATE;
  int rc = close_request(ks, req);
  m2mpsk_keystore_free(ks);
  return rc;
}

/* ---- the keystore's side ------------------------------------------------- */

static size_t table_size_for(size_t max_pending) {
  size_t n = TABLE_MIN;
  while (n < max_pending && n < TABLE_MAX)
    n *= 2;
  return n;
}

/* Grows the open table for max_pending. 0 when memory is short (the old
 * table stays). */
static int table_fit(struct m2mpsk_key_sources *s, size_t max_pending) {
  size_t n = table_size_for(max_pending);
  if (n <= s->nbuckets)
    return 1;
  m2mpsk_key_request **t = calloc(n, sizeof(*t));
  if (t == NULL)
    return 0;
  for (size_t i = 0; i < s->nbuckets; i++) {
    m2mpsk_key_request *r = s->table[i];
    while (r != NULL) {
      m2mpsk_key_request *next = r->next;
      m2mpsk_key_request **head = &t[r->hash & (n - 1)];
      r->next = *head;
      *head = r;
      r = next;
    }
  }
  free(s->table);
  s->table = t;
  s->nbuckets = n;
  return 1;
}

/* Closes every open request as absent and empties the queue, under src_mu.
 * The references to drop are chained through qnext into *drops (a request
 * appears once per reference; `extra` counts the second ones). */
typedef struct drop_list {
  m2mpsk_key_request **items;
  size_t n;
} drop_list;

static void close_all_locked(struct m2mpsk_key_sources *s, drop_list *d) {
  for (size_t i = 0; i < s->nbuckets; i++) {
    while (s->table[i] != NULL) {
      m2mpsk_key_request *r = s->table[i];
      int k = close_locked(s, r);
      for (int j = 0; j < k; j++)
        d->items[d->n++] = r;
    }
  }
  /* Queued requests are all open (closing unqueues them), so the queue
   * is empty now. */
}

static void drop_all(drop_list *d) {
  for (size_t i = 0; i < d->n; i++)
    request_drop(d->items[i]);
  free(d->items);
}

int m2mpsk_keystore_set_source(m2mpsk_keystore *ks, m2mpsk_key_source_fn fn,
                               void *arg, size_t max_pending) {
  if (ks == NULL || (fn != NULL && max_pending == 0))
    return M2MPSK_E_INVALID;
  pthread_mutex_t *mu = m2mpsk_keystore_src_mu(ks);
  struct m2mpsk_key_sources **sp = m2mpsk_keystore_src(ks);
  drop_list d = {NULL, 0};
  int rc = M2MPSK_OK;
  pthread_mutex_lock(mu);
  struct m2mpsk_key_sources *s = *sp;
  if (max_pending == 0) {
    m2mpsk_keystore_set_has_source(ks, 0);
    if (s != NULL && s->nopen > 0) {
      /* Each open request has the keystore's reference and at most the
       * queue's. */
      d.items = malloc(2 * s->nopen * sizeof(*d.items));
      if (d.items == NULL) {
        rc = M2MPSK_E_NOMEM;
        m2mpsk_keystore_set_has_source(ks, s->max_pending > 0);
        goto out;
      }
      close_all_locked(s, &d);
    }
    if (s != NULL) {
      s->fn = NULL;
      s->arg = NULL;
      s->max_pending = 0;
    }
    goto out;
  }
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
      rc = M2MPSK_E_NOMEM;
      goto out;
    }
    *sp = s;
  }
  if (!table_fit(s, max_pending)) {
    rc = M2MPSK_E_NOMEM;
    goto out;
  }
  s->fn = fn;
  s->arg = arg;
  s->max_pending = max_pending;
  m2mpsk_keystore_set_has_source(ks, 1);
out:
  pthread_mutex_unlock(mu);
  drop_all(&d);
  return rc;
}

int m2mpsk_keystore_next_request(m2mpsk_keystore *ks,
                                 m2mpsk_key_request **out) {
  if (out != NULL)
    *out = NULL;
  if (ks == NULL || out == NULL)
    return M2MPSK_E_INVALID;
  pthread_mutex_t *mu = m2mpsk_keystore_src_mu(ks);
  pthread_mutex_lock(mu);
  struct m2mpsk_key_sources *s = *m2mpsk_keystore_src(ks);
  m2mpsk_key_request *r = s != NULL ? s->qhead : NULL;
  if (r != NULL) {
    s->qhead = r->qnext;
    if (s->qtail == r)
      s->qtail = NULL;
    r->qnext = NULL;
    r->queued = 0; /* the queue's reference becomes the caller's */
  }
  pthread_mutex_unlock(mu);
  *out = r;
  return r != NULL ? M2MPSK_OK : M2MPSK_E_AGAIN;
}

int m2mpsk_keystore_request_key(m2mpsk_keystore *ks, const char *kpsa_id,
                                m2mpsk_role role, const char *sni,
                                m2mpsk_key_request **out) {
  return m2mpsk_keystore_request_key_hashed(
      ks, kpsa_id, m2mpsk_keystore_hash(ks, kpsa_id), role, sni, out);
}

int m2mpsk_keystore_request_key_hashed(m2mpsk_keystore *ks, const char *kpsa_id,
                                       uint64_t hash, m2mpsk_role role,
                                       const char *sni,
                                       m2mpsk_key_request **out) {
  *out = NULL;
  size_t id_len = strlen(kpsa_id);
  if (id_len > M2MPSK_KPSA_ID_MAX)
    return M2MPSK_KEYREQ_NONE;
  /* Made before the lock, and dropped if a request is open already: the
   * common case under load is a new KpsaID. */
  m2mpsk_key_request *fresh = request_new(kpsa_id, id_len, hash, role, sni);
  if (fresh == NULL)
    return M2MPSK_KEYREQ_NONE;
  fresh->ks = ks;

  int result = M2MPSK_KEYREQ_NONE;
  m2mpsk_key_source_fn fn = NULL;
  void *arg = NULL;
  pthread_mutex_t *mu = m2mpsk_keystore_src_mu(ks);
  pthread_mutex_lock(mu);
  struct m2mpsk_key_sources *s = *m2mpsk_keystore_src(ks);
  if (s == NULL || s->max_pending == 0)
    goto out;
  /* Under src_mu, an answer either has not closed its request yet (join
   * it) or has already added its record (found here). */
  if (m2mpsk_keystore_fetch_hashed(ks, kpsa_id, hash, NULL, NULL, NULL) ==
      M2MPSK_OK) {
    result = M2MPSK_KEYREQ_PRESENT;
    goto out;
  }
  for (m2mpsk_key_request *r = *bucket(s, hash); r != NULL; r = r->next) {
    if (r->hash == hash && strcmp(r->kpsa_id, kpsa_id) == 0) {
      atomic_fetch_add(&r->refs, 1);
      *out = r;
      result = M2MPSK_KEYREQ_WAIT;
      goto out;
    }
  }
  if (s->nopen >= s->max_pending)
    goto out; /* treated as absent at once */
  /* The keystore's, the waiter's, and the callee's or the queue's. */
  atomic_init(&fresh->refs, 3);
  atomic_init(&fresh->answered, 0);
  m2mpsk_key_request **head = bucket(s, hash);
  fresh->next = *head;
  *head = fresh;
  s->nopen++;
  fn = s->fn;
  arg = s->arg;
  if (fn == NULL) {
    fresh->queued = 1;
    if (s->qtail != NULL)
      s->qtail->qnext = fresh;
    else
      s->qhead = fresh;
    s->qtail = fresh;
  }
  *out = fresh;
  fresh = NULL;
  result = M2MPSK_KEYREQ_WAIT;
out:
  pthread_mutex_unlock(mu);
  if (fresh != NULL) {
    request_destroy(fresh);
  } else if (fn != NULL) {
    fn(arg, *out);
  }
  return result;
}

void m2mpsk_key_sources_destroy(struct m2mpsk_key_sources *s) {
  if (s == NULL)
    return;
  /* No one else can reach the keystore now: no lock needed for the table,
   * but each request's pointer is cleared under its own mutex, which an
   * answer on another thread may hold. */
  for (size_t i = 0; i < s->nbuckets; i++) {
    m2mpsk_key_request *r = s->table[i];
    while (r != NULL) {
      m2mpsk_key_request *next = r->next;
      r->open = 0;
      atomic_store(&r->answered, 1);
      pthread_mutex_lock(&r->mu);
      r->ks = NULL;
      pthread_mutex_unlock(&r->mu);
      int drops = 1 + (r->queued ? 1 : 0);
      r->queued = 0;
      r->next = NULL;
      r->qnext = NULL;
      for (int j = 0; j < drops; j++)
        request_drop(r);
      r = next;
    }
  }
  free(s->table);
  free(s);
}
