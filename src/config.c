/* Association settings shared by many associations. Each (role, transport)
 * pair gets one TLS engine context, built on first use, after which the
 * config is frozen: handing a context to associations on other threads
 * while a setter changes it would be a race no caller could see. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "hello.h"
#include "internal.h"
#include "tls/engine.h"

typedef struct local_id {
  char *id;
  char *sni; /* the SNI host naming it, or NULL; in the same block as id */
} local_id;

struct m2mpsk_config {
  pthread_mutex_t lock;
  int frozen;
  char *suites; /* set_suites(), or NULL */
  int profile;  /* set_profile(), or 0 */
  uint32_t handshake_timeout_ms;
  int reveal_unknown;
  int roles_reversed;
  uint32_t max_input;
  m2mpsk_guard_settings guard_settings;
  /* Created when the config freezes; published with release order so that
   * the lock-free readers below see a whole guard. */
  _Atomic(m2mpsk_guard *) guard;
  local_id *ids;
  size_t n_ids;
  /* [role][transport]: each created once under the lock, after freezing,
   * and published with release order, so that creating an association
   * reads it with one acquire load and no lock. */
  _Atomic(m2mpsk_engine_ctx *) ctx[M2MPSK_ENGINE_COUNT][2][2];
  /* [role][transport]: the engine AUTO chose, once, the same way (0 until
   * then); published after its context. */
  atomic_int chosen[2][2];
  /* Each context's suites as IANA ids (what m2mpsk_hello_choose() compares
   * with a ClientHello), written before the context is published. */
  uint16_t suite_ids[M2MPSK_ENGINE_COUNT][2][2][64];
  size_t n_ids_of[M2MPSK_ENGINE_COUNT][2][2];
  m2mpsk_engine_id engine; /* set_engine() */
  /* Changed by every association's new and free, on any core: kept off
   * the cache lines the fields above share. */
  char pad_[64];
  atomic_uint refs;
  char pad2_[64];
};

int m2mpsk_config_new(m2mpsk_config **out) {
  if (out == NULL)
    return M2MPSK_E_INVALID;
  *out = NULL;
  m2mpsk_config *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return M2MPSK_E_NOMEM;
  /* suites stays NULL for the backend's default, so that a config can be
   * made before (or without) the backend being loaded. */
  if (pthread_mutex_init(&c->lock, NULL) != 0) {
    free(c);
    return M2MPSK_E_NOMEM;
  }
  atomic_init(&c->refs, 1);
  c->handshake_timeout_ms = 60000;
  c->max_input = 262144;
  c->guard_settings.max_handshakes = 4096;
  c->guard_settings.rate[M2MPSK_RATE_PEER] =
      (m2mpsk_rate_policy){10, 10000, 1000, 60000};
  c->guard_settings.rate[M2MPSK_RATE_KPSA_ID] =
      (m2mpsk_rate_policy){20, 10000, 1000, 60000};
  atomic_init(&c->guard, NULL);
  *out = c;
  return M2MPSK_OK;
}

void m2mpsk_config_ref(m2mpsk_config *cfg) {
  atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
}

void m2mpsk_config_free(m2mpsk_config *cfg) {
  if (cfg == NULL)
    return;
  if (atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) != 1)
    return;
  for (int e = 1; e < M2MPSK_ENGINE_COUNT; e++)
    for (int r = 0; r < 2; r++)
      for (int t = 0; t < 2; t++) {
        m2mpsk_engine_ctx *ctx = atomic_load(&cfg->ctx[e][r][t]);
        /* A context exists only once its engine is loaded. */
        if (ctx != NULL)
          m2mpsk_tls_engine((m2mpsk_engine_id)e)->ctx_free(ctx);
      }
  m2mpsk_guard_free(atomic_load(&cfg->guard));
  for (size_t i = 0; i < cfg->n_ids; i++)
    free(cfg->ids[i].id);
  free(cfg->ids);
  free(cfg->suites);
  pthread_mutex_destroy(&cfg->lock);
  free(cfg);
}

/* Takes the lock unless the config is frozen: 1 locked, 0 frozen. */
static int lock_unfrozen(m2mpsk_config *cfg) {
  pthread_mutex_lock(&cfg->lock);
  if (!cfg->frozen)
    return 1;
  pthread_mutex_unlock(&cfg->lock);
  return 0;
}

int m2mpsk_config_set_suites(m2mpsk_config *cfg, const char *iana_names) {
  if (cfg == NULL || iana_names == NULL)
    return M2MPSK_E_INVALID;
  int rc = m2mpsk_engine_check_suites(M2MPSK_ENGINE_AUTO, iana_names);
  if (rc != M2MPSK_OK)
    return rc;
  char *copy = strdup(iana_names);
  if (copy == NULL)
    return M2MPSK_E_NOMEM;
  if (!lock_unfrozen(cfg)) {
    free(copy);
    return M2MPSK_E_STATE;
  }
  /* Under the lock: a named engine (set_engine()) must have every name. */
  if (cfg->engine != M2MPSK_ENGINE_AUTO)
    rc = m2mpsk_engine_check_suites(cfg->engine, iana_names);
  if (rc != M2MPSK_OK) {
    pthread_mutex_unlock(&cfg->lock);
    free(copy);
    return rc;
  }
  free(cfg->suites);
  cfg->suites = copy;
  cfg->profile = 0;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_profile(m2mpsk_config *cfg, m2mpsk_profile profile) {
  if (cfg == NULL || profile != M2MPSK_PROFILE_TS0003)
    return M2MPSK_E_INVALID;
  if (m2mpsk_tls() == NULL)
    return M2MPSK_E_BACKEND;
  if (!m2mpsk_profile_honoured(profile))
    return M2MPSK_E_SUITE;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  free(cfg->suites);
  cfg->suites = NULL;
  cfg->profile = profile;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_engine(m2mpsk_config *cfg, m2mpsk_engine_id e) {
  if (cfg == NULL || (e != M2MPSK_ENGINE_AUTO && e != M2MPSK_ENGINE_BORINGSSL &&
                      e != M2MPSK_ENGINE_OPENSSL))
    return M2MPSK_E_INVALID;
  if (e == M2MPSK_ENGINE_AUTO ? m2mpsk_tls() == NULL
                              : m2mpsk_tls_engine(e) == NULL)
    return e == M2MPSK_ENGINE_AUTO ? M2MPSK_E_BACKEND : M2MPSK_E_UNSUPPORTED;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->engine = e;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

/* The suites associations over `t` use: set_suites()'s list, else the
 * profile's, else the TS-0003 profile where the backend honours it, else
 * the backend's default. Writes into buf when it has to build the list.
 * Called with the lock held. NULL when the backend cannot be loaded. */
static const char *suites_for(const m2mpsk_config *cfg, m2mpsk_transport t,
                              char *buf, size_t cap) {
  if (cfg->suites != NULL)
    return cfg->suites;
  if (cfg->profile != 0 || m2mpsk_profile_honoured(M2MPSK_PROFILE_TS0003))
    return m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003, t, buf, cap) ==
                   M2MPSK_OK
               ? buf
               : NULL;
  return m2mpsk_engine_default_suites();
}

int m2mpsk_config_suites(m2mpsk_config *cfg, m2mpsk_transport transport,
                         char *out, size_t cap) {
  if (cfg == NULL || out == NULL ||
      (transport != M2MPSK_TRANSPORT_TLS && transport != M2MPSK_TRANSPORT_DTLS))
    return M2MPSK_E_INVALID;
  if (cap == 0)
    return M2MPSK_E_BUFFER;
  out[0] = '\0';
  char buf[1024];
  pthread_mutex_lock(&cfg->lock);
  const char *list = suites_for(cfg, transport, buf, sizeof(buf));
  int rc = M2MPSK_E_BACKEND;
  if (list != NULL) {
    size_t n = strlen(list);
    rc = n < cap ? M2MPSK_OK : M2MPSK_E_BUFFER;
    if (rc == M2MPSK_OK)
      memcpy(out, list, n + 1);
  }
  pthread_mutex_unlock(&cfg->lock);
  return rc;
}

int m2mpsk_config_add_local_id(m2mpsk_config *cfg, const char *idb) {
  if (cfg == NULL || idb == NULL)
    return M2MPSK_E_INVALID;
  int rc = m2mpsk_idb_validate(idb);
  if (rc != M2MPSK_OK)
    return rc;
  /* The SNI host is derived once here, not in every handshake. */
  char host[256];
  int has_sni = m2mpsk_idb_server_name(idb, host, sizeof(host)) == M2MPSK_OK;
  size_t n_id = strlen(idb) + 1, n_sni = has_sni ? strlen(host) + 1 : 0;
  char *copy = malloc(n_id + n_sni);
  if (copy == NULL)
    return M2MPSK_E_NOMEM;
  memcpy(copy, idb, n_id);
  if (has_sni)
    memcpy(copy + n_id, host, n_sni);
  if (!lock_unfrozen(cfg)) {
    free(copy);
    return M2MPSK_E_STATE;
  }
  rc = M2MPSK_OK;
  for (size_t i = 0; i < cfg->n_ids && rc == M2MPSK_OK; i++)
    if (strcmp(cfg->ids[i].id, idb) == 0)
      rc = M2MPSK_E_DUPLICATE;
  if (rc == M2MPSK_OK) {
    local_id *ids = realloc(cfg->ids, (cfg->n_ids + 1) * sizeof(*ids));
    if (ids == NULL) {
      rc = M2MPSK_E_NOMEM;
    } else {
      cfg->ids = ids;
      cfg->ids[cfg->n_ids].id = copy;
      cfg->ids[cfg->n_ids++].sni = has_sni ? copy + n_id : NULL;
      copy = NULL;
    }
  }
  pthread_mutex_unlock(&cfg->lock);
  free(copy);
  return rc;
}

int m2mpsk_config_set_handshake_timeout(m2mpsk_config *cfg, uint32_t ms) {
  if (cfg == NULL || ms == 0 || ms > 3600000)
    return M2MPSK_E_INVALID;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->handshake_timeout_ms = ms;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_reveal_unknown_identity(m2mpsk_config *cfg, int on) {
  if (cfg == NULL)
    return M2MPSK_E_INVALID;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->reveal_unknown = on != 0;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_roles_reversed(m2mpsk_config *cfg, int on) {
  if (cfg == NULL)
    return M2MPSK_E_INVALID;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->roles_reversed = on != 0;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_max_handshakes(m2mpsk_config *cfg, uint32_t n) {
  if (cfg == NULL)
    return M2MPSK_E_INVALID;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->guard_settings.max_handshakes = n;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_max_input(m2mpsk_config *cfg, uint32_t bytes) {
  if (cfg == NULL || bytes < M2MPSK_MAX_INPUT_MIN || bytes > (1u << 30))
    return M2MPSK_E_INVALID;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->max_input = bytes;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_rate_limit(m2mpsk_config *cfg, m2mpsk_rate_key key,
                                 uint32_t max_failures, uint32_t window_ms,
                                 uint32_t block_ms, uint32_t block_max_ms) {
  const uint32_t day = 86400000;
  if (cfg == NULL || (key != M2MPSK_RATE_PEER && key != M2MPSK_RATE_KPSA_ID))
    return M2MPSK_E_INVALID;
  if (max_failures != 0 &&
      (window_ms == 0 || block_ms == 0 || block_max_ms < block_ms ||
       window_ms > day || block_max_ms > day))
    return M2MPSK_E_INVALID;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->guard_settings.rate[key] =
      (m2mpsk_rate_policy){max_failures, window_ms, block_ms, block_max_ms};
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

int m2mpsk_config_set_event_queue(m2mpsk_config *cfg, uint32_t capacity) {
  if (cfg == NULL || capacity > (1u << 20))
    return M2MPSK_E_INVALID;
  if (!lock_unfrozen(cfg))
    return M2MPSK_E_STATE;
  cfg->guard_settings.event_capacity = capacity;
  pthread_mutex_unlock(&cfg->lock);
  return M2MPSK_OK;
}

static m2mpsk_guard *guard_of(const m2mpsk_config *cfg) {
  return atomic_load_explicit(&cfg->guard, memory_order_acquire);
}

int m2mpsk_config_peer_blocked(m2mpsk_config *cfg, const char *peer_tag,
                               uint64_t now_ms, uint64_t *until_ms) {
  if (cfg == NULL || peer_tag == NULL)
    return M2MPSK_E_INVALID;
  m2mpsk_guard *g = guard_of(cfg);
  uint64_t until = 0;
  int blocked = g != NULL && m2mpsk_guard_blocked(g, M2MPSK_RATE_PEER, peer_tag,
                                                  now_ms, &until);
  if (until_ms != NULL)
    *until_ms = blocked ? until : 0;
  return blocked;
}

uint32_t m2mpsk_config_handshakes_in_progress(const m2mpsk_config *cfg) {
  m2mpsk_guard *g = cfg ? guard_of(cfg) : NULL;
  return g ? m2mpsk_guard_handshakes(g) : 0;
}

int m2mpsk_config_next_event(m2mpsk_config *cfg, m2mpsk_event **out) {
  if (out != NULL)
    *out = NULL;
  if (cfg == NULL || out == NULL)
    return M2MPSK_E_INVALID;
  m2mpsk_guard *g = guard_of(cfg);
  return g ? m2mpsk_guard_next_event(g, out) : M2MPSK_E_AGAIN;
}

uint64_t m2mpsk_config_events_dropped(const m2mpsk_config *cfg) {
  m2mpsk_guard *g = cfg ? guard_of(cfg) : NULL;
  return g ? m2mpsk_guard_dropped(g) : 0;
}

m2mpsk_guard *m2mpsk_config_guard(m2mpsk_config *cfg, int *status) {
  m2mpsk_guard *g = guard_of(cfg);
  if (g != NULL) {
    *status = M2MPSK_OK;
    return g;
  }
  pthread_mutex_lock(&cfg->lock);
  cfg->frozen = 1;
  g = atomic_load_explicit(&cfg->guard, memory_order_relaxed);
  *status = M2MPSK_OK;
  if (g == NULL) {
    /* Only a config that can make responders needs the rate tables. */
    m2mpsk_guard_settings settings = cfg->guard_settings;
    if (cfg->n_ids == 0)
      settings.rate[0].max_failures = settings.rate[1].max_failures = 0;
    *status = m2mpsk_guard_new(&g, &settings);
    if (*status == M2MPSK_OK)
      atomic_store_explicit(&cfg->guard, g, memory_order_release);
  }
  pthread_mutex_unlock(&cfg->lock);
  return g;
}

/* Engine `id`'s context for (role, transport), created on first use with
 * the config's suites that the engine supports. Called with the lock held
 * and the config frozen. */
static m2mpsk_engine_ctx *make_ctx(m2mpsk_config *cfg, m2mpsk_engine_id id,
                                   m2mpsk_role role, m2mpsk_transport t,
                                   int *status) {
  _Atomic(m2mpsk_engine_ctx *) *slot = &cfg->ctx[id][role][t];
  m2mpsk_engine_ctx *ctx = atomic_load_explicit(slot, memory_order_relaxed);
  if (ctx != NULL)
    return ctx;
  const m2mpsk_engine_ops *ops = m2mpsk_tls_engine(id);
  char buf[1024], mine[1024];
  const char *suites = suites_for(cfg, t, buf, sizeof(buf));
  if (ops == NULL || suites == NULL) {
    *status = M2MPSK_E_BACKEND;
    return NULL;
  }
  *status = m2mpsk_engine_filter_suites(ops, suites, mine, sizeof(mine));
  if (*status == M2MPSK_E_INVALID)
    *status = M2MPSK_E_SUITE;
  if (*status == M2MPSK_OK)
    *status = ops->ctx_new(&ctx, role, t, mine);
  if (*status != M2MPSK_OK)
    return NULL;
  /* A name the id table lacks leaves the list empty: the engine then
   * shares nothing with any hello, and is never chosen by one. */
  if (m2mpsk_suite_ids(mine, cfg->suite_ids[id][role][t], 64,
                       &cfg->n_ids_of[id][role][t]) != M2MPSK_OK)
    cfg->n_ids_of[id][role][t] = 0;
  atomic_store_explicit(slot, ctx, memory_order_release);
  return ctx;
}

m2mpsk_engine_ctx *m2mpsk_config_engine_ctx(m2mpsk_config *cfg,
                                            m2mpsk_role role,
                                            m2mpsk_transport transport,
                                            m2mpsk_engine_id *engine,
                                            int *status) {
  *status = M2MPSK_OK;
  m2mpsk_engine_id id = *engine;
  if (id == M2MPSK_ENGINE_AUTO)
    id = (m2mpsk_engine_id)atomic_load_explicit(&cfg->chosen[role][transport],
                                                memory_order_acquire);
  /* Published only after frozen was set under the lock. */
  m2mpsk_engine_ctx *ctx =
      id != M2MPSK_ENGINE_AUTO
          ? atomic_load_explicit(&cfg->ctx[id][role][transport],
                                 memory_order_acquire)
          : NULL;
  if (ctx != NULL) {
    *engine = id;
    return ctx;
  }
  pthread_mutex_lock(&cfg->lock);
  cfg->frozen = 1;
  if (id == M2MPSK_ENGINE_AUTO) {
    char buf[1024];
    const char *suites = suites_for(cfg, transport, buf, sizeof(buf));
    id = m2mpsk_engine_choose(cfg->engine, role, transport, suites);
  }
  if (id == M2MPSK_ENGINE_AUTO) {
    *status = M2MPSK_E_BACKEND;
  } else {
    ctx = make_ctx(cfg, id, role, transport, status);
    if (ctx != NULL && *engine == M2MPSK_ENGINE_AUTO)
      atomic_store_explicit(&cfg->chosen[role][transport], (int)id,
                            memory_order_release);
  }
  pthread_mutex_unlock(&cfg->lock);
  if (ctx != NULL)
    *engine = id;
  return ctx;
}

const uint16_t *m2mpsk_config_engine_ids(const m2mpsk_config *cfg,
                                         m2mpsk_engine_id id, m2mpsk_role role,
                                         m2mpsk_transport t, size_t *n) {
  *n = cfg->n_ids_of[id][role][t];
  return cfg->suite_ids[id][role][t];
}

m2mpsk_engine_id m2mpsk_config_engine(const m2mpsk_config *cfg) {
  return cfg->engine;
}

/* The getters below read fields that never change once frozen, and an
 * association only exists after freezing. */
uint32_t m2mpsk_config_handshake_timeout(const m2mpsk_config *cfg) {
  return cfg->handshake_timeout_ms;
}

int m2mpsk_config_reveal_unknown(const m2mpsk_config *cfg) {
  return cfg->reveal_unknown;
}

int m2mpsk_config_roles_reversed(const m2mpsk_config *cfg) {
  return cfg->roles_reversed;
}

uint32_t m2mpsk_config_max_input(const m2mpsk_config *cfg) {
  return cfg->max_input;
}

size_t m2mpsk_config_local_id_count(const m2mpsk_config *cfg) {
  return cfg->n_ids;
}

const char *m2mpsk_config_local_id(const m2mpsk_config *cfg, size_t i) {
  return i < cfg->n_ids ? cfg->ids[i].id : NULL;
}

const char *m2mpsk_config_local_sni(const m2mpsk_config *cfg, size_t i) {
  return i < cfg->n_ids ? cfg->ids[i].sni : NULL;
}
