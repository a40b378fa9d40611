/* Declarations shared between m2mpsk's modules. Not installed. */
#ifndef M2MPSK_INTERNAL_H
#define M2MPSK_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

/* ---- identity.c ---------------------------------------------------------
 * The public validators live there too (m2mpsk_kpsa_id_validate, ...). */

/* m2mpsk_idb_server_name() for an IdB already validated (a keystore
 * record's): 1 with the SNI host in `out`, 0 when it has none (or it does
 * not fit out_cap; 254 bytes always do). */
int m2mpsk_idb_sni_of_valid(const char *idb, char *out, size_t out_cap);

/* ---- keystore.c --------------------------------------------------------- */

/* What an association needs to know of a record, copied out under the
 * keystore's lock so that it stays valid whatever happens to the record. */
typedef struct m2mpsk_record_view {
  char ida[M2MPSK_ID_MAX + 1]; /* "" when the record has no IdA */
  char idb[M2MPSK_ID_MAX + 1];
  int64_t not_before; /* 0: unbounded */
  int64_t not_after;  /* 0: unbounded */
  int revoked;
  uint64_t serial; /* unique per m2mpsk_keystore_add(); never reused */
  int token;       /* the record's key is a token key */
  /* A fetch that asked for the key of a token record gets a reference to
   * the token key here (released with m2mpsk_tkey_unref()), no bytes, and
   * *key_len its length. NULL otherwise. */
  struct m2mpsk_tkey *tk;
} m2mpsk_record_view;

/* A token key (since 0.5): the host's operations and context, shared by
 * the record and the handshakes using it; the host's release runs when the
 * last reference goes. */
typedef struct m2mpsk_tkey m2mpsk_tkey;
void m2mpsk_tkey_ref(m2mpsk_tkey *tk);
void m2mpsk_tkey_unref(m2mpsk_tkey *tk); /* NULL is a no-op */
/* The host's master_secret(): 0 or -1. */
int m2mpsk_tkey_master_secret(const m2mpsk_tkey *tk, const char *digest,
                              const uint8_t *prefix, size_t prefix_len,
                              const uint8_t *seed, size_t seed_len,
                              uint8_t *out, size_t out_len);
/* 1 when the keystore has M2MPSK_KEYSTORE_TOKEN_KEYS (given, or set by a
 * token key's add). */
int m2mpsk_keystore_token_keys(const m2mpsk_keystore *ks);

/* Looks `kpsa_id` up. Fills *view (if not NULL). When `key_out` is not NULL
 * and the record is not revoked, copies the key into key_out (which has room
 * for M2MPSK_KEY_MAX bytes) and its length into *key_len; the key's arena is
 * readable only for the duration of that copy.
 * Returns M2MPSK_OK or M2MPSK_E_NOT_FOUND. Thread-safe. */
int m2mpsk_keystore_fetch(const m2mpsk_keystore *ks, const char *kpsa_id,
                          m2mpsk_record_view *view, uint8_t *key_out,
                          size_t *key_len);

/* The index hash of `kpsa_id` in this keystore (fixed for its life), to
 * pass to m2mpsk_keystore_fetch_hashed(): an association that fetches the
 * same record several times hashes its KpsaID once. */
uint64_t m2mpsk_keystore_hash(const m2mpsk_keystore *ks, const char *kpsa_id);

/* m2mpsk_keystore_fetch() with `hash` = m2mpsk_keystore_hash(ks, kpsa_id). */
int m2mpsk_keystore_fetch_hashed(const m2mpsk_keystore *ks, const char *kpsa_id,
                                 uint64_t hash, m2mpsk_record_view *view,
                                 uint8_t *key_out, size_t *key_len);

/* A counter that every remove and revoke increases. Thread-safe. */
uint64_t m2mpsk_keystore_generation(const m2mpsk_keystore *ks);

/* Takes one more reference; m2mpsk_keystore_free() drops one. */
void m2mpsk_keystore_ref(m2mpsk_keystore *ks);

/* Takes one more reference unless the last one is already gone (the
 * keystore is being destroyed). 1 when taken. Thread-safe. */
int m2mpsk_keystore_try_ref(m2mpsk_keystore *ks);

/* ---- key sources (keysource.c, state kept in the keystore) -------------- */

struct m2mpsk_key_sources;
/* The mutex that guards the keystore's source state (*m2mpsk_keystore_src).
 * Taken before a request's own mutex, never inside the keystore's rwlock. */
pthread_mutex_t *m2mpsk_keystore_src_mu(m2mpsk_keystore *ks);
struct m2mpsk_key_sources **m2mpsk_keystore_src(m2mpsk_keystore *ks);
/* 1 while a source is set: one relaxed load. */
int m2mpsk_keystore_has_source(const m2mpsk_keystore *ks);
void m2mpsk_keystore_set_has_source(m2mpsk_keystore *ks, int on);
/* Detaches every open or queued request and frees the state; called by the
 * keystore's destruction. NULL is a no-op. */
void m2mpsk_key_sources_destroy(struct m2mpsk_key_sources *src);

/* What m2mpsk_keystore_request_key() found. */
enum {
  M2MPSK_KEYREQ_NONE = 0,   /* no source, past max_pending, or no memory:
                               go on as if the source had no record */
  M2MPSK_KEYREQ_WAIT = 1,   /* *out: a request to wait on (a reference) */
  M2MPSK_KEYREQ_PRESENT = 2 /* the keystore has a record (maybe revoked) */
};
/* Opens the request for `kpsa_id` (well-formed), or joins the one open.
 * `sni` may be NULL. A new request is handed to the source's callback
 * before this returns, with no lock held, so it may already be answered.
 * Thread-safe. */
int m2mpsk_keystore_request_key(m2mpsk_keystore *ks, const char *kpsa_id,
                                m2mpsk_role role, const char *sni,
                                m2mpsk_key_request **out);
/* The same with `hash` = m2mpsk_keystore_hash(ks, kpsa_id). */
int m2mpsk_keystore_request_key_hashed(m2mpsk_keystore *ks, const char *kpsa_id,
                                       uint64_t hash, m2mpsk_role role,
                                       const char *sni,
                                       m2mpsk_key_request **out);
/* The key that came with the answer to `req`, for the record whose serial
 * is `serial`, once: copies it into `out` (room for M2MPSK_KEY_MAX bytes)
 * and returns its length. 0 when there is none to take (taken already,
 * none kept, or kept for another record, which is then wiped). Call only
 * after m2mpsk_key_request_answered() said 1. */
size_t m2mpsk_key_request_take_key(m2mpsk_key_request *req, uint64_t serial,
                                   uint8_t *out);
/* 1 when `req` was answered once (m2mpsk_key_request_supply_once). */
int m2mpsk_key_request_given_once(m2mpsk_key_request *req);
/* The record of an answer given once: 1 with *v (serial 0, never revoked)
 * and the key (room for M2MPSK_KEY_MAX bytes) and its length, as often as
 * asked while the request lives; 0 when the answer was not given once. */
int m2mpsk_key_request_once_record(m2mpsk_key_request *req,
                                   m2mpsk_record_view *v, uint8_t *key,
                                   size_t *key_len);

/* m2mpsk_keystore_add() that also gives the new record's serial. */
int m2mpsk_keystore_add_serial(m2mpsk_keystore *ks, const char *kpsa_id,
                               const uint8_t *key, size_t key_len,
                               const char *ida, const char *idb,
                               int64_t not_before, int64_t not_after,
                               uint64_t *serial);

/* m2mpsk_keystore_add()'s checks of its arguments (kpsa_id and idb not
 * NULL): M2MPSK_OK or its validation codes. */
int m2mpsk_record_check(const char *kpsa_id, size_t key_len, const char *ida,
                        const char *idb, int64_t not_before,
                        int64_t not_after);
/* The same, but for the KpsaID: for one known to be well formed already
 * (a key request's, which its association validated before asking). */
int m2mpsk_record_check_rest(size_t key_len, const char *ida, const char *idb,
                             int64_t not_before, int64_t not_after);

/* ---- handoff.c: keys on their way with an answer ------------------------ */

/* Copies `len` (1..M2MPSK_KEY_MAX) bytes into a free slot: its handle, or 0
 * when there is none (then nothing is kept, and *why, unless `why` is
 * NULL, says why: M2MPSK_E_LIMIT, every slot taken; M2MPSK_E_NOMEM, no
 * region could be made; M2MPSK_E_INVALID, a bad length). Thread-safe. */
int m2mpsk_handoff_put(const uint8_t *key, size_t len, int *why);
/* Copies slot `h` into `out` and leaves it: the key's length, or 0. */
size_t m2mpsk_handoff_read(int h, uint8_t *out);
/* Copies slot `h` into `out` (room for M2MPSK_KEY_MAX bytes), wipes it and
 * frees it: the key's length, or 0 when `h` holds nothing. */
size_t m2mpsk_handoff_take(int h, uint8_t *out);
/* Wipes and frees slot `h` (0, or one freed already: a no-op). */
void m2mpsk_handoff_drop(int h);
#ifdef M2MPSK_TEST_HOOKS
unsigned m2mpsk_handoff_debug_in_use(void);    /* slots holding a key */
unsigned long m2mpsk_handoff_debug_taken(void); /* takes so far */
void m2mpsk_handoff_debug_limit(unsigned n);    /* at most n slots in use */
/* 1 when some slot holds exactly these bytes. */
int m2mpsk_handoff_debug_contains(const uint8_t *key, size_t len);
#endif

/* ---- profile.c ---------------------------------------------------------- */

/* 1 when the backend has every suite the profile mandates. */
int m2mpsk_profile_honoured(m2mpsk_profile p);

/* ---- config.c ----------------------------------------------------------- */

struct m2mpsk_engine_ctx;
struct m2mpsk_guard;

/* Freezes the config and returns an engine context for (role, transport),
 * creating it on first use. *engine: the engine wanted, or
 * M2MPSK_ENGINE_AUTO for the config's choice (set_engine(), else
 * m2mpsk_engine_choose(), made once per role and transport); set to the
 * engine the context belongs to. Thread-safe. NULL on failure (*status
 * set). */
struct m2mpsk_engine_ctx *m2mpsk_config_engine_ctx(m2mpsk_config *cfg,
                                                   m2mpsk_role role,
                                                   m2mpsk_transport transport,
                                                   m2mpsk_engine_id *engine,
                                                   int *status);
/* The IANA ids of the suites of engine `id`'s context for (role, t), *n of
 * them; only once m2mpsk_config_engine_ctx() returned that context. */
const uint16_t *m2mpsk_config_engine_ids(const m2mpsk_config *cfg,
                                         m2mpsk_engine_id id, m2mpsk_role role,
                                         m2mpsk_transport t, size_t *n);
/* The set_engine() choice. */
m2mpsk_engine_id m2mpsk_config_engine(const m2mpsk_config *cfg);
void m2mpsk_config_ref(m2mpsk_config *cfg);
/* Freezes the config and returns its guard (guard.h), creating it on first
 * use. Thread-safe. NULL on failure (*status set). */
struct m2mpsk_guard *m2mpsk_config_guard(m2mpsk_config *cfg, int *status);
uint32_t m2mpsk_config_max_input(const m2mpsk_config *cfg);
int m2mpsk_config_roles_reversed(const m2mpsk_config *cfg);
uint32_t m2mpsk_config_handshake_timeout(const m2mpsk_config *cfg);
int m2mpsk_config_reveal_unknown(const m2mpsk_config *cfg);
size_t m2mpsk_config_local_id_count(const m2mpsk_config *cfg);
const char *m2mpsk_config_local_id(const m2mpsk_config *cfg, size_t i);
/* The SNI host of local identity i, or NULL when it has none. */
const char *m2mpsk_config_local_sni(const m2mpsk_config *cfg, size_t i);

#endif /* M2MPSK_INTERNAL_H */
