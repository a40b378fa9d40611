/* The association state machine: one oneM2M security association over one
 * (D)TLS session, in either role, driven by the caller (sans-IO).
 *
 * The identities are decided inside the PSK callbacks, where the keystore
 * record is read, and bound only once the handshake has proven that the
 * peer holds the same key. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "guard.h"
#include "hello.h"
#include "identity.h"
#include "internal.h"
#include "tls/engine.h"

/* The per-record path is grouped (.text.hot) so that it spans few
 * instruction-cache lines between the TLS library's own; failure handling
 * is kept out of its way. */
#define HOT __attribute__((hot))
#define COLD __attribute__((cold))

/* A token key's handshake (since 0.5): the key, and the random handle the
 * engine was given in its place. Made when the handshake takes a token key
 * and freed when it is over, apart from the association: most never have
 * one, and every byte of an established association counts (the target:
 * at most 1 KiB above the TLS library's own state, tests/bench/README.md). */
typedef struct token_hs {
  m2mpsk_tkey *tk;
  size_t handle_len;
  uint8_t handle[M2MPSK_KEY_MAX];
} token_hs;

enum { DETAIL_CAP = 192 };

struct m2mpsk_assoc {
  m2mpsk_config *cfg;
  m2mpsk_keystore *ks;
  /* The engine running this association, its table and the config's
   * context for it: chosen at creation. A responder's engine object is
   * made when the first bytes arrive (start_engine()), so that a later
   * choice can read the ClientHello first; until then eng is NULL. */
  const m2mpsk_engine_ops *ops;
  m2mpsk_engine_ctx *ectx;
  m2mpsk_engine *eng;
  m2mpsk_engine_id engine;
  /* A token key's handshake (since 0.5), until it is over; NULL in every
   * other association. */
  token_hs *tok;
  /* A TLS responder of an AUTO config: the bytes fed until the ClientHello
   * is whole (ops is NULL until then), bounded by the config's max_input. */
  uint8_t *hello_buf;
  size_t hello_len;
  m2mpsk_guard *guard; /* the config's; lives as long as the config */
  char *peer_tag;
  /* Responder: which local identities the SNI allows (all when no SNI);
   * points into this association's own block. */
  unsigned char *sni_ok;
  /* Decided when the key is handed over, visible once bound: one block
   * holding the peer's identity, then ours (local_id may be NULL). */
  char *peer_id;
  char *local_id;

  uint64_t now_ms;
  uint64_t start_ms;
  uint64_t deadline_ms;
  int64_t unix_at_start;
  uint64_t kpsa_hash; /* kpsa_id's keystore index hash, once known */
  uint64_t serial;    /* the record in use (initiator: from creation) */
  int64_t not_before; /* initiator: its validity start, 0: none */
  int64_t not_after;  /* its validity end, 0: none */
  /* Keystore generation when the record was last checked. An initiator
   * checks at creation, so that start need not fetch the record again
   * while nothing was removed or revoked since (UINT64_MAX: fetch). */
  uint64_t checked_gen;

  m2mpsk_role role;
  m2mpsk_transport transport;
  m2mpsk_state state;
  m2mpsk_reason reason;
  m2mpsk_reason refusal;
  unsigned mtu;
  unsigned char reversed; /* SA2: the initiator is Entity B, the responder A */
  unsigned char sent_close;
  unsigned char received_close;
  unsigned char have_kpsa_id;
  unsigned char presented;
  unsigned char counted; /* a handshake in progress for the config's bound */
  unsigned char refused_identity; /* a malformed psk_identity was presented */
  unsigned char closed_reported;  /* the CLOSED event was queued */
  unsigned char peer_is_credential;
  unsigned char ae_id_bound; /* bind_ae_id() replaced the Credential-ID */
  unsigned char bound;
  /* Key source (issue 19). key_watch: input goes through feed_keysource()
   * (a responder reading the ClientKeyExchange before the engine does, or
   * any association waiting for a key); off on the hot path. */
  unsigned char key_watch;
  unsigned char kpsa_hash_of_id; /* kpsa_hash is kpsa_id's (key_needed) */
  unsigned char pending_record;  /* initiator: made before its record came */
  /* Made to take token keys: its engine object is in the engine's token
   * context (an initiator with a token key, a responder whose keystore
   * has M2MPSK_KEYSTORE_TOKEN_KEYS). */
  unsigned char token_keys;
  /* A responder whose record was an answer given once
   * (m2mpsk_key_request_supply_once): no keystore record to follow. */
  unsigned char once;
  uint32_t hs_left;        /* TLS scan: handshake bytes in later records */
  unsigned held_n;         /* DTLS: datagrams held */
  m2mpsk_key_request *req; /* while WAITING_KEY */
  /* The answered request, while m2mpsk_assoc_resume() hands the engine
   * what waited: the engine's key callback takes the key that came with
   * the answer (m2mpsk_key_request_take_key) instead of reading it back.
   * An answer given once stays here (a reference of ours) until that
   * callback has its record, or the handshake ends. */
  m2mpsk_key_request *answered;
  /* Input not yet given to the engine: TLS, the stream from the first
   * record not yet scanned; DTLS, the datagrams that arrived while
   * waiting, each after its 2-byte length. */
  uint8_t *held;
  size_t held_len;
  char *sni; /* responder with a source: the SNI, for the request */
  /* The KpsaID in use (have_kpsa_id); on a responder, before that, the
   * well-formed psk_identity the client presented (presented); "" until
   * then. An initiator's is in `tail`; a responder's, in kpsa_id_heap, an
   * allocation of its length (set_presented_id): most are far shorter than
   * M2MPSK_KPSA_ID_MAX, and every byte of an established association
   * counts. */
  const char *kpsa_id;
  char *kpsa_id_heap;

  /* The failure detail (DETAIL_CAP bytes), made when the first failure or
   * refusal is written: an association that never fails carries none. A
   * refusal decided in a callback writes it early, to be reported when the
   * handshake then fails. NULL after that only when memory was short. */
  char *detail;
  /* A responder's sni_ok bytes, one per local identity; an initiator's
   * KpsaID. */
  unsigned char tail[];
};

/* ---- failure ------------------------------------------------------------- */

/* The KpsaID an event or the rate limiter names: the one in use, else the
 * one presented, else NULL. */
static const char *known_kpsa_id(const m2mpsk_assoc *a) {
  return a->have_kpsa_id || a->presented ? a->kpsa_id : NULL;
}

static void emit(const m2mpsk_assoc *a, m2mpsk_event_type type,
                 m2mpsk_reason reason, int bound, const char *detail) {
  m2mpsk_event_fields f = {
      .type = type,
      .reason = reason,
      .role = a->role,
      .transport = a->transport,
      .time_ms = a->now_ms,
      .kpsa_id = known_kpsa_id(a),
      .peer_id = bound ? a->peer_id : NULL,
      .peer_id_is_credential = a->peer_is_credential,
      .peer_tag = a->peer_tag,
      .detail = detail,
  };
  m2mpsk_guard_emit(a->guard, &f);
}

/* The association leaves the set of handshakes in progress. */
static void drop_answered(m2mpsk_assoc *a) {
  m2mpsk_key_request_free(a->answered);
  a->answered = NULL;
}

static void handshake_over(m2mpsk_assoc *a) {
  drop_answered(a);
  if (a->counted) {
    a->counted = 0;
    m2mpsk_guard_handshake_end(a->guard);
  }
  /* The master secret is made: the token key is needed no more. */
  if (a->tok != NULL) {
    m2mpsk_tkey_unref(a->tok->tk);
    sodium_memzero(a->tok, sizeof(*a->tok));
    free(a->tok);
    a->tok = NULL;
  }
}

/* Whether this association's engine can use a token key. */
static int engine_takes_token_keys(const m2mpsk_assoc *a) {
  return a->token_keys && a->ops != NULL && a->ops->token_keys;
}

int m2mpsk_assoc_wants_token_keys(const m2mpsk_assoc *a) {
  return a != NULL && a->token_keys; /* NULL: a scratch engine (listen) */
}

/* A token key's handshake: keeps the key and writes a fresh random handle
 * of its length where the key would go. NULL, or why the caller refuses
 * (a template naming the KpsaID). Takes over v->tk either way. */
static const char *hand_over_token(m2mpsk_assoc *a, m2mpsk_record_view *v,
                                   uint8_t *psk, size_t key_len) {
  const char *why = NULL;
  if (!engine_takes_token_keys(a))
    why = "the key of KpsaID %s is a token key, which only the OpenSSL "
          "engine can use";
  else if (a->tok == NULL && (a->tok = calloc(1, sizeof(*a->tok))) == NULL)
    why = "out of memory taking the token key of KpsaID %s";
  if (why != NULL) {
    m2mpsk_tkey_unref(v->tk);
    v->tk = NULL;
    return why;
  }
  m2mpsk_tkey_unref(a->tok->tk);
  a->tok->tk = v->tk;
  v->tk = NULL;
  randombytes_buf(a->tok->handle, key_len);
  a->tok->handle_len = key_len;
  memcpy(psk, a->tok->handle, key_len);
  return NULL;
}

/* Whether a failed handshake counts against the peer: not our own or the
 * host's faults, nor the limiter's refusals. */
static int counts_against_peer(m2mpsk_reason r) {
  return r != M2MPSK_REASON_NONE && r != M2MPSK_REASON_INTERNAL &&
         r != M2MPSK_REASON_MISUSE && r != M2MPSK_REASON_RATE_LIMITED;
}

/* The failure detail's buffer, made on first use; NULL when memory is
 * short (detail_text() then says so). */
static char *detail_buf(m2mpsk_assoc *a) {
  if (a->detail == NULL)
    a->detail = malloc(DETAIL_CAP);
  return a->detail;
}

static const char k_detail_lost[] =
    "(no detail: out of memory when it was written)";

static const char *detail_text(const m2mpsk_assoc *a) {
  return a->detail != NULL ? a->detail : k_detail_lost;
}

/* A responder's KpsaID as the client presented it (well formed, len bytes
 * and a NUL): in an allocation of its own length, replacing any earlier
 * one. -1 when memory is short (nothing changes). */
static int set_presented_id(m2mpsk_assoc *a, const char *id, size_t len) {
  if (a->kpsa_id_heap != NULL && strcmp(a->kpsa_id_heap, id) == 0)
    return 0;
  char *p = malloc(len + 1);
  if (p == NULL)
    return -1;
  memcpy(p, id, len + 1);
  free(a->kpsa_id_heap);
  a->kpsa_id_heap = p;
  a->kpsa_id = p;
  return 0;
}

static COLD void fail(m2mpsk_assoc *a, m2mpsk_reason reason,
                      const char *detail) {
  if (a->state == M2MPSK_STATE_FAILED)
    return;
  int live =
      a->state == M2MPSK_STATE_ESTABLISHED || a->state == M2MPSK_STATE_CLOSED;
  int was_bound = a->bound;
  a->state = M2MPSK_STATE_FAILED;
  a->reason = reason;
  if (a->detail == NULL || detail != a->detail) {
    char *buf = detail_buf(a);
    if (buf != NULL)
      snprintf(buf, DETAIL_CAP, "%s", detail ? detail : k_detail_lost);
  }
  a->bound = 0;
  handshake_over(a);
  if (a->req != NULL) {
    /* A late answer is harmless: the request no longer counts us. */
    m2mpsk_key_request_free(a->req);
    a->req = NULL;
  }

  m2mpsk_event_type type = M2MPSK_EVENT_FAILED;
  if (reason == M2MPSK_REASON_RATE_LIMITED)
    type = M2MPSK_EVENT_RATE_LIMITED;
  else if (live &&
           (reason == M2MPSK_REASON_REVOKED || reason == M2MPSK_REASON_EXPIRED))
    type = M2MPSK_EVENT_REVOKED;
  emit(a, type, reason, was_bound, detail_text(a));

  if (a->role == M2MPSK_ROLE_RESPONDER && !live &&
      counts_against_peer(reason)) {
    if (a->peer_tag != NULL)
      m2mpsk_guard_failure(a->guard, M2MPSK_RATE_PEER, a->peer_tag, a->now_ms);
    /* A malformed psk_identity is counted under "", one key for all. */
    if (a->presented || a->refused_identity)
      m2mpsk_guard_failure(a->guard, M2MPSK_RATE_KPSA_ID,
                           a->presented ? a->kpsa_id : "", a->now_ms);
  }
}

/* An established association ends without failing: reported once. */
static void report_closed(m2mpsk_assoc *a, const char *how) {
  if (a->closed_reported)
    return;
  a->closed_reported = 1;
  emit(a, M2MPSK_EVENT_CLOSED, M2MPSK_REASON_NONE, a->bound, how);
}

/* Writes `tmpl` with its one "%s" replaced by `arg` (messages are fixed
 * strings of this file; a real printf would need non-literal formats). */
static void format1(char *dst, size_t cap, const char *tmpl, const char *arg) {
  const char *hole = strstr(tmpl, "%s");
  if (hole == NULL) {
    snprintf(dst, cap, "%s", tmpl);
    return;
  }
  snprintf(dst, cap, "%.*s%s%s", (int)(hole - tmpl), tmpl, arg, hole + 2);
}

static void refuse(m2mpsk_assoc *a, m2mpsk_reason reason, const char *tmpl,
                   const char *arg) {
  if (a->refusal != M2MPSK_REASON_NONE)
    return;
  a->refusal = reason;
  char *buf = detail_buf(a);
  if (buf != NULL)
    format1(buf, DETAIL_CAP, tmpl, arg);
}

/* The engine failed: prefer what the callbacks decided, since on the wire a
 * refusal deliberately looks like a bad key. */
static COLD void fail_from_engine(m2mpsk_assoc *a) {
  char detail[160];
  m2mpsk_reason r = a->ops->failure(a->eng, detail, sizeof(detail));
  if (a->refusal != M2MPSK_REASON_NONE)
    fail(a, a->refusal, a->detail);
  else
    fail(a, r, detail);
}

/* ---- time and validity --------------------------------------------------- */

static HOT void set_now(m2mpsk_assoc *a, uint64_t now_ms) {
  if (now_ms > a->now_ms)
    a->now_ms = now_ms;
  if (a->ops != NULL)
    a->ops->set_now(a->now_ms);
}

/* The clock the engine sees during the calls that follow on this thread. */
static HOT void engine_now(const m2mpsk_assoc *a) {
  if (a->ops != NULL)
    a->ops->set_now(a->now_ms);
}

static int64_t unix_now(const m2mpsk_assoc *a) {
  return a->unix_at_start + (int64_t)((a->now_ms - a->start_ms) / 1000);
}

/* M2MPSK_REASON_NONE when the record may be used now. */
static m2mpsk_reason check_record(const m2mpsk_assoc *a,
                                  const m2mpsk_record_view *v,
                                  const char **why) {
  int64_t t = unix_now(a);
  if ((v->not_before != 0 || v->not_after != 0) && a->unix_at_start == 0) {
    *why = "record for KpsaID %s has a validity window, but no wall-clock "
           "time was given to m2mpsk_assoc_start";
    return M2MPSK_REASON_MISUSE;
  }
  if (v->revoked) {
    *why = "record for KpsaID %s is revoked";
    return M2MPSK_REASON_REVOKED;
  }
  if (v->not_before != 0 && t < v->not_before) {
    *why = "record for KpsaID %s is not valid yet";
    return M2MPSK_REASON_EXPIRED;
  }
  if (v->not_after != 0 && t > v->not_after) {
    *why = "record for KpsaID %s has expired";
    return M2MPSK_REASON_EXPIRED;
  }
  return M2MPSK_REASON_NONE;
}

/* ---- callbacks from the engine ------------------------------------------- */

/* Entity A is the (D)TLS client, unless the roles are reversed (SA2). */
static int is_entity_a(const m2mpsk_assoc *a) {
  return (a->role == M2MPSK_ROLE_INITIATOR) != a->reversed;
}

/* Decides what the session binds to once the handshake completes: A binds
 * IdB; B binds IdA or, without one, the Credential-ID. 0 on success. */
static int decide_binding(m2mpsk_assoc *a, const m2mpsk_record_view *v) {
  char credential[M2MPSK_CREDENTIAL_ID_MAX + 1];
  const char *peer, *local;
  int is_credential = 0;
  if (is_entity_a(a)) {
    peer = v->idb;
    local = v->ida[0] ? v->ida : NULL;
  } else if (v->ida[0]) {
    peer = v->ida;
    local = v->idb;
  } else {
    if (m2mpsk_credential_id(a->kpsa_id, credential, sizeof(credential)) !=
        M2MPSK_OK)
      return -1;
    peer = credential;
    local = v->idb;
    is_credential = 1;
  }
  size_t np = strlen(peer) + 1;
  size_t nl = local ? strlen(local) + 1 : 0;
  char *ids = malloc(np + nl);
  if (ids == NULL)
    return -1;
  memcpy(ids, peer, np);
  if (local)
    memcpy(ids + np, local, nl);
  free(a->peer_id);
  a->peer_id = ids;
  a->local_id = local ? ids + np : NULL;
  a->peer_is_credential = is_credential;
  return 0;
}

int m2mpsk_assoc_token_master_secret(m2mpsk_assoc *a, const char *digest,
                                     const uint8_t *prefix, size_t prefix_len,
                                     const uint8_t *psk, size_t psk_len,
                                     const uint8_t *seed, size_t seed_len,
                                     uint8_t *out, size_t out_len) {
  if (a == NULL || a->tok == NULL || psk_len != a->tok->handle_len ||
      sodium_memcmp(psk, a->tok->handle, psk_len) != 0)
    return 0; /* not our handle: the engine's own PRF */
  if (digest == NULL ||
      m2mpsk_tkey_master_secret(a->tok->tk, digest, prefix, prefix_len, seed,
                                seed_len, out, out_len) != 0) {
    refuse(a, M2MPSK_REASON_INTERNAL,
           "the token key of KpsaID %s could not compute the master secret",
           a->kpsa_id);
    return -1;
  }
  return 1;
}

/* The responder's record and key for `identity`. After an answer given
 * once, its record (the keystore has none). Right after an ordinary answer,
 * the key that came with it, when it is for the very record found (same
 * serial: not replaced meanwhile); otherwise, or when there is none, the
 * keystore's copy. */
static int fetch_server_key(m2mpsk_assoc *a, const char *identity,
                            m2mpsk_record_view *v, uint8_t *key,
                            size_t *key_len) {
  if (a->answered != NULL &&
      strcmp(identity, m2mpsk_key_request_kpsa_id(a->answered)) == 0 &&
      m2mpsk_key_request_once_record(a->answered, v, key, key_len)) {
    a->once = 1;
    drop_answered(a); /* the last waiter's drop wipes the key's slot */
    return M2MPSK_OK;
  }
  if (a->answered != NULL) {
    int rc = m2mpsk_keystore_fetch_hashed(a->ks, identity, a->kpsa_hash, v,
                                          NULL, NULL);
    if (rc != M2MPSK_OK)
      return rc;
    if (!v->revoked && !v->token &&
        (*key_len = m2mpsk_key_request_take_key(a->answered, v->serial,
                                                key)) != 0)
      return M2MPSK_OK;
  }
  return m2mpsk_keystore_fetch_hashed(a->ks, identity, a->kpsa_hash, v, key,
                                      key_len);
}

unsigned m2mpsk_assoc_on_client_psk(m2mpsk_assoc *a, char *identity,
                                    size_t identity_cap, uint8_t *psk,
                                    size_t psk_cap) {
  uint8_t key[M2MPSK_KEY_MAX];
  size_t key_len = 0;
  m2mpsk_record_view v;
  const char *why = NULL;
  m2mpsk_reason r = M2MPSK_REASON_NONE;
  /* The generation before the fetch: whatever changes after it, the live
   * association will notice (record_still_good). */
  a->checked_gen = m2mpsk_keystore_generation(a->ks);
  v.tk = NULL;
  if (m2mpsk_keystore_fetch_hashed(a->ks, a->kpsa_id, a->kpsa_hash, &v, key,
                                   &key_len) != M2MPSK_OK ||
      v.serial != a->serial) {
    r = M2MPSK_REASON_REVOKED;
    why = "record for KpsaID %s was removed";
  } else {
    r = check_record(a, &v, &why);
  }
  if (r == M2MPSK_REASON_NONE &&
      (strlen(a->kpsa_id) >= identity_cap || key_len > psk_cap)) {
    r = M2MPSK_REASON_INTERNAL;
    why = "KpsaID %s or its key does not fit the TLS library's limits";
  }
  if (r == M2MPSK_REASON_NONE && decide_binding(a, &v) != 0) {
    r = M2MPSK_REASON_INTERNAL;
    why = "out of memory binding KpsaID %s";
  }
  if (r == M2MPSK_REASON_NONE && v.tk != NULL &&
      (why = hand_over_token(a, &v, psk, key_len)) != NULL)
    r = M2MPSK_REASON_INTERNAL;
  if (r != M2MPSK_REASON_NONE) {
    m2mpsk_tkey_unref(v.tk);
    sodium_memzero(key, sizeof(key));
    refuse(a, r, why, a->kpsa_id);
    return 0;
  }
  memcpy(identity, a->kpsa_id, strlen(a->kpsa_id) + 1);
  if (a->tok == NULL)
    memcpy(psk, key, key_len);
  sodium_memzero(key, sizeof(key));
  a->not_after = v.not_after;
  return (unsigned)key_len;
}

/* Whether the record's IdB is one of ours and allowed by the SNI. */
static int idb_served(const m2mpsk_assoc *a, const char *idb) {
  size_t n = m2mpsk_config_local_id_count(a->cfg);
  for (size_t i = 0; i < n; i++) {
    if (strcmp(m2mpsk_config_local_id(a->cfg, i), idb) == 0)
      return a->sni_ok == NULL || a->sni_ok[i];
  }
  return 0;
}

unsigned m2mpsk_assoc_on_server_psk(m2mpsk_assoc *a, const char *identity,
                                    uint8_t *psk, size_t psk_cap) {
  uint8_t key[M2MPSK_KEY_MAX];
  size_t key_len = 0;
  m2mpsk_record_view v;
  const char *why = NULL;
  m2mpsk_reason r = M2MPSK_REASON_NONE;
  size_t id_len = strnlen(identity, M2MPSK_KPSA_ID_MAX + 1);
  uint64_t until = 0;

  /* Bytes a client chose are echoed in details and events only once they
   * are known to be a well-formed KpsaID (no control characters). The rate
   * limiter counts all malformed ones under one key, "". */
  /* key_needed() may have hashed this very identity already, once it had
   * found it well formed and kept it as a->kpsa_id. */
  int hashed = a->kpsa_hash_of_id && strcmp(a->kpsa_id, identity) == 0;
  a->kpsa_hash_of_id = 0;
  if (hashed) {
    a->presented = 1;
  } else if (id_len <= M2MPSK_KPSA_ID_MAX &&
             m2mpsk_kpsa_id_validate(identity) == M2MPSK_OK) {
    if (set_presented_id(a, identity, id_len) != 0) {
      refuse(a, M2MPSK_REASON_INTERNAL,
             "out of memory reading the psk_identity%s", "");
      return 0;
    }
    a->presented = 1;
  } else {
    a->refused_identity = 1;
  }
  const char *limiter_key = a->presented ? a->kpsa_id : "";

  if (m2mpsk_guard_blocked(a->guard, M2MPSK_RATE_KPSA_ID, limiter_key,
                           a->now_ms, &until)) {
    /* Fails at once, whatever m2mpsk_config_set_reveal_unknown_identity()
     * says: a block follows only failures that clients caused with this
     * psk_identity, whether or not a record has it, so it reveals nothing
     * the client did not already know. */
    refuse(a, M2MPSK_REASON_RATE_LIMITED,
           a->presented ? "KpsaID %s is rate-limited after repeated failed "
                          "handshakes"
                        : "malformed psk_identity values are rate-limited%s",
           a->presented ? a->kpsa_id : "");
    return 0;
  }
  a->checked_gen = m2mpsk_keystore_generation(a->ks); /* as on_client_psk */
  if (a->presented && !hashed)
    a->kpsa_hash = m2mpsk_keystore_hash(a->ks, a->kpsa_id);
  if (!a->presented) {
    r = M2MPSK_REASON_UNKNOWN_IDENTITY;
    why = id_len > M2MPSK_KPSA_ID_MAX
              ? "psk_identity longer than any KpsaID%s"
              : "psk_identity is not a well-formed KpsaID%s";
    identity = "";
  } else if ((v.tk = NULL, fetch_server_key(a, identity, &v, key,
                                             &key_len)) != M2MPSK_OK) {
    r = M2MPSK_REASON_UNKNOWN_IDENTITY;
    why = "no record for KpsaID %s";
  } else if ((r = check_record(a, &v, &why)) != M2MPSK_REASON_NONE) {
    /* why is set */
  } else if (!a->reversed && !idb_served(a, v.idb)) {
    r = M2MPSK_REASON_ID_MISMATCH;
    why = "record for KpsaID %s names an IdB this responder does not serve "
          "under the requested SNI";
  } else if (key_len > psk_cap) {
    r = M2MPSK_REASON_INTERNAL;
    why = "key for KpsaID %s exceeds the TLS library's limit";
  } else {
    a->have_kpsa_id = 1;
    a->serial = v.serial;
    a->not_after = v.not_after;
    if (decide_binding(a, &v) != 0) {
      r = M2MPSK_REASON_INTERNAL;
      why = "out of memory binding KpsaID %s";
    } else if (v.tk != NULL &&
               (why = hand_over_token(a, &v, psk, key_len)) != NULL) {
      r = M2MPSK_REASON_INTERNAL;
    }
  }

  if (r == M2MPSK_REASON_NONE) {
    if (a->tok == NULL)
      memcpy(psk, key, key_len);
    sodium_memzero(key, sizeof(key));
    return (unsigned)key_len;
  }
  if (a->presented)
    m2mpsk_tkey_unref(v.tk); /* a record found but refused */
  sodium_memzero(key, sizeof(key));
  refuse(a, r, why, identity);
  if (m2mpsk_config_reveal_unknown(a->cfg))
    return 0;
  /* A decoy key: the handshake goes on and fails at the Finished exactly
   * as with a wrong key, so identities cannot be probed (RFC 4279 §2). */
  size_t n = psk_cap < 32 ? psk_cap : 32;
  randombytes_buf(psk, n);
  return (unsigned)n;
}

int m2mpsk_assoc_on_server_name(m2mpsk_assoc *a, const char *host) {
  if (a->key_watch && host != NULL && a->sni == NULL) {
    /* For m2mpsk_key_request_server_name(); none if memory is short. */
    size_t n = strnlen(host, 255);
    a->sni = malloc(n + 1);
    if (a->sni != NULL) {
      memcpy(a->sni, host, n);
      a->sni[n] = '\0';
    }
  }
  /* SA2: Entity A, the server, serves no authority of its own. */
  if (host == NULL || a->reversed)
    return 0;
  size_t n = m2mpsk_config_local_id_count(a->cfg);
  int any = 0;
  for (size_t i = 0; i < n; i++) {
    const char *name = m2mpsk_config_local_sni(a->cfg, i);
    a->sni_ok[i] = name != NULL && strcasecmp(name, host) == 0;
    any |= a->sni_ok[i];
  }
  if (!any) {
    refuse(a, M2MPSK_REASON_ID_MISMATCH,
           "SNI %s names no identity this responder serves", host);
    return 1;
  }
  return 0;
}

/* ---- live associations and their record ---------------------------------- */

/* An association lives only as long as the record it was made from: once
 * that record is removed, replaced, revoked or expired, the next operation
 * fails closed, with a fatal alert to tell the peer, whatever the host
 * remembers to do. The keystore is consulted only when its generation
 * moved, so the check costs one atomic load on the data path. Returns 1
 * while the record is good. */
static HOT int record_still_good(m2mpsk_assoc *a) {
  const char *why = NULL;
  m2mpsk_reason r = M2MPSK_REASON_NONE;
  uint64_t gen = m2mpsk_keystore_generation(a->ks);
  if (gen != a->checked_gen && a->have_kpsa_id && !a->once) {
    /* Something was removed, revoked or put. A put that changed only the
     * validity window keeps the serial: follow its new not_after. */
    m2mpsk_record_view v;
    if (m2mpsk_keystore_fetch_hashed(a->ks, a->kpsa_id, a->kpsa_hash, &v, NULL,
                                     NULL) == M2MPSK_OK &&
        v.serial == a->serial && !v.revoked) {
      a->not_before = v.not_before;
      a->not_after = v.not_after;
      a->checked_gen = gen;
    } else if (a->bound) {
      r = M2MPSK_REASON_REVOKED;
      why = "record for KpsaID %s was revoked or removed during the "
            "association";
    }
    /* Before binding, the key handover judges a removed record. */
  }
  if (r != M2MPSK_REASON_NONE) {
    /* why is set */
  } else if (!a->bound) {
    /* Before binding, the key handover checks the record; what only time
     * changes is also checked here, so that a handshake ends at the
     * record's expiry (the deadline next_timeout reports) like a live
     * association does. The responder knows its record (not_after) once
     * the key is handed over. */
    if (a->state != M2MPSK_STATE_HANDSHAKING || a->not_after == 0 ||
        unix_now(a) <= a->not_after)
      return 1;
    r = M2MPSK_REASON_EXPIRED;
    why = "record for KpsaID %s expired during the handshake";
  } else if (a->not_after != 0 && unix_now(a) > a->not_after) {
    r = M2MPSK_REASON_EXPIRED;
    why = "record for KpsaID %s expired during the association";
  } else {
    return 1;
  }
  char msg[192];
  format1(msg, sizeof(msg), why, a->kpsa_id);
  if (a->eng != NULL)
    a->ops->abort(a->eng, 49 /* access_denied */);
  fail(a, r, msg);
  return 0;
}

/* ---- lifecycle ----------------------------------------------------------- */

int m2mpsk_assoc_new(m2mpsk_assoc **out, m2mpsk_role role,
                     m2mpsk_transport transport, m2mpsk_config *config,
                     m2mpsk_keystore *keystore, const char *kpsa_id) {
  if (out == NULL)
    return M2MPSK_E_INVALID;
  *out = NULL;
  if (config == NULL || keystore == NULL ||
      (role != M2MPSK_ROLE_INITIATOR && role != M2MPSK_ROLE_RESPONDER) ||
      (transport != M2MPSK_TRANSPORT_TLS && transport != M2MPSK_TRANSPORT_DTLS))
    return M2MPSK_E_INVALID;
  if ((role == M2MPSK_ROLE_INITIATOR) != (kpsa_id != NULL))
    return M2MPSK_E_INVALID;

  m2mpsk_record_view v;
  uint64_t gen = 0, hash = 0;
  size_t n_sni = 0;
  int pending_record = 0;
  if (role == M2MPSK_ROLE_INITIATOR) {
    /* The generation before the fetch: a remove or revoke after it makes
     * start fetch the record again. Only valid KpsaIDs are ever stored, so
     * a record found needs no validation; the status of one not found
     * says whether it was malformed. */
    gen = m2mpsk_keystore_generation(keystore);
    hash = m2mpsk_keystore_hash(keystore, kpsa_id);
    if (m2mpsk_keystore_fetch_hashed(keystore, kpsa_id, hash, &v, NULL, NULL) !=
        M2MPSK_OK) {
      int rc = m2mpsk_kpsa_id_validate(kpsa_id);
      if (rc != M2MPSK_OK)
        return rc;
      if (!m2mpsk_keystore_has_source(keystore))
        return M2MPSK_E_NOT_FOUND;
      /* The key source is asked at start (initiator_begin()). */
      pending_record = 1;
      memset(&v, 0, sizeof(v));
    }
  } else if (m2mpsk_config_local_id_count(config) == 0 &&
             !m2mpsk_config_roles_reversed(config)) {
    return M2MPSK_E_NO_LOCAL_ID;
  }

  int rc = M2MPSK_OK;
  m2mpsk_guard *guard = m2mpsk_config_guard(config, &rc);
  if (guard == NULL)
    return rc;
  /* Past the bound on handshakes in progress, fail before allocating. */
  if (role == M2MPSK_ROLE_RESPONDER &&
      m2mpsk_guard_handshake_begin(guard) != 0) {
    m2mpsk_event_fields f = {
        .type = M2MPSK_EVENT_RATE_LIMITED,
        .reason = M2MPSK_REASON_LIMIT,
        .role = role,
        .transport = transport,
        .detail = "too many handshakes in progress",
    };
    m2mpsk_guard_emit(guard, &f);
    return M2MPSK_E_LIMIT;
  }

  if (role == M2MPSK_ROLE_RESPONDER && !m2mpsk_config_roles_reversed(config))
    n_sni = m2mpsk_config_local_id_count(config);
  size_t id_size = role == M2MPSK_ROLE_INITIATOR ? strlen(kpsa_id) + 1 : 0;
  m2mpsk_assoc *a = calloc(1, sizeof(*a) + n_sni + id_size);
  if (a == NULL) {
    if (role == M2MPSK_ROLE_RESPONDER)
      m2mpsk_guard_handshake_end(guard);
    return M2MPSK_E_NOMEM;
  }
  a->guard = guard;
  a->counted = role == M2MPSK_ROLE_RESPONDER;
  a->role = role;
  a->transport = transport;
  a->reversed = m2mpsk_config_roles_reversed(config);
  a->mtu = 1400;
  a->kpsa_id = "";
  if (role == M2MPSK_ROLE_INITIATOR) {
    memcpy(a->tail, kpsa_id, id_size);
    a->kpsa_id = (const char *)a->tail;
    a->kpsa_hash = hash;
    a->have_kpsa_id = 1;
    a->serial = v.serial;
    a->not_before = v.not_before;
    a->not_after = v.not_after;
    a->checked_gen = v.revoked ? UINT64_MAX : gen;
    a->pending_record = (unsigned char)pending_record;
  } else if (!a->reversed) {
    /* Before SNI, every local identity is a candidate. */
    a->sni_ok = a->tail;
    memset(a->sni_ok, 1, n_sni);
  }

  /* The engine is chosen now, from the config alone; an initiator's
   * engine object is made now too, so that its SNI is set and a failure
   * surfaces here. */
  m2mpsk_engine_id engine = M2MPSK_ENGINE_AUTO;
  /* Token keys need the OpenSSL engine: an initiator whose record has one
   * (or may get one from the source), a responder whose keystore may hold
   * them (it cannot wait for the KpsaID to choose). */
  int token =
      role == M2MPSK_ROLE_INITIATOR
          ? (pending_record ? m2mpsk_keystore_token_keys(keystore) : v.token)
          : m2mpsk_keystore_token_keys(keystore);
  int token_engine = token &&
                     m2mpsk_config_engine(config) == M2MPSK_ENGINE_AUTO &&
                     m2mpsk_tls_engine(M2MPSK_ENGINE_OPENSSL) != NULL;
  if (token_engine)
    engine = M2MPSK_ENGINE_OPENSSL;
  a->token_keys = token;
  a->ectx = m2mpsk_config_engine_ctx(config, role, transport, &engine, &rc);
  /* Made all the same when the responder waits for the ClientHello: a
   * config that can make no engine fails here, not at the first bytes. */
  if (a->ectx != NULL && role == M2MPSK_ROLE_RESPONDER && !token_engine &&
      m2mpsk_engine_waits_for_hello(m2mpsk_config_engine(config), transport)) {
    a->ectx = NULL;
  } else if (a->ectx != NULL) {
    a->engine = engine;
    a->ops = m2mpsk_tls_engine(engine);
    if (role == M2MPSK_ROLE_INITIATOR)
      rc = a->ops->engine_new(&a->eng, a->ectx, a);
  }
  if (rc == M2MPSK_OK && role == M2MPSK_ROLE_INITIATOR && !a->reversed &&
      !pending_record) {
    /* SNI names the server's authority: IdB's, unless the server is
     * Entity A (SA2), which has none to name. A record's IdB never
     * changes, and one replaced before start has another serial, which
     * start refuses. */
    char host[256];
    if (m2mpsk_idb_sni_of_valid(v.idb, host, sizeof(host)) &&
        a->ops->set_server_name(a->eng, host) != M2MPSK_OK) {
      a->ops->engine_free(a->eng);
      rc = M2MPSK_E_NOMEM;
    }
  }
  if (rc != M2MPSK_OK) {
    handshake_over(a);
    free(a);
    return rc;
  }
  m2mpsk_config_ref(config);
  m2mpsk_keystore_ref(keystore);
  a->cfg = config;
  a->ks = keystore;
  a->state = M2MPSK_STATE_IDLE;
  *out = a;
  return M2MPSK_OK;
}

void m2mpsk_assoc_free(m2mpsk_assoc *a) {
  if (a == NULL)
    return;
  if (a->state == M2MPSK_STATE_ESTABLISHED)
    report_closed(a, "freed while established");
  handshake_over(a);
  if (a->eng != NULL)
    a->ops->engine_free(a->eng);
  free(a->hello_buf);
  m2mpsk_key_request_free(a->req); /* a late answer is then harmless */
  drop_answered(a);
  free(a->held);
  free(a->sni);
  m2mpsk_keystore_free(a->ks);
  m2mpsk_config_free(a->cfg);
  free(a->peer_id);
  free(a->peer_tag);
  free(a->detail);
  free(a->kpsa_id_heap);
  sodium_memzero(a, sizeof(*a)); /* the tail holds nothing secret */
  free(a);
}

int m2mpsk_assoc_set_mtu(m2mpsk_assoc *a, unsigned mtu) {
  if (a == NULL || a->transport != M2MPSK_TRANSPORT_DTLS ||
      mtu < M2MPSK_MTU_MIN || mtu > M2MPSK_MTU_MAX)
    return M2MPSK_E_INVALID;
  if (a->state != M2MPSK_STATE_IDLE)
    return M2MPSK_E_STATE;
  /* A responder's engine does not exist yet: start_engine() applies it. */
  int rc = a->eng != NULL ? a->ops->set_mtu(a->eng, mtu) : M2MPSK_OK;
  if (rc == M2MPSK_OK)
    a->mtu = mtu;
  return rc;
}

int m2mpsk_assoc_set_peer_tag(m2mpsk_assoc *a, const char *tag) {
  if (a == NULL || tag == NULL)
    return M2MPSK_E_INVALID;
  size_t n = strnlen(tag, M2MPSK_PEER_TAG_MAX + 1);
  if (n == 0 || n > M2MPSK_PEER_TAG_MAX)
    return M2MPSK_E_INVALID;
  for (size_t i = 0; i < n; i++)
    if (tag[i] < 0x20 || tag[i] > 0x7e)
      return M2MPSK_E_INVALID;
  if (a->state != M2MPSK_STATE_IDLE)
    return M2MPSK_E_STATE;
  char *copy = malloc(n + 1);
  if (copy == NULL)
    return M2MPSK_E_NOMEM;
  memcpy(copy, tag, n + 1);
  free(a->peer_tag);
  a->peer_tag = copy;
  return M2MPSK_OK;
}

const char *m2mpsk_assoc_peer_tag(const m2mpsk_assoc *a) {
  return a ? a->peer_tag : NULL;
}

/* A responder's engine object, made when the first bytes arrive: the
 * place where the ClientHello can be read before an engine is chosen.
 * M2MPSK_OK, or M2MPSK_E_FAILED (out of memory; the association failed). */
static int start_engine(m2mpsk_assoc *a) {
  int rc = a->ops->engine_new(&a->eng, a->ectx, a);
  if (rc == M2MPSK_OK && a->transport == M2MPSK_TRANSPORT_DTLS &&
      a->mtu != 1400)
    rc = a->ops->set_mtu(a->eng, a->mtu);
  if (rc != M2MPSK_OK) {
    if (a->eng != NULL)
      a->ops->engine_free(a->eng);
    a->eng = NULL;
    fail(a, M2MPSK_REASON_INTERNAL, "cannot create the TLS engine");
    return M2MPSK_E_FAILED;
  }
  engine_now(a);
  return M2MPSK_OK;
}

static int step_handshake(m2mpsk_assoc *a);
static int feed_tls_scan(m2mpsk_assoc *a, const uint8_t *data, size_t len,
                         uint32_t max_input);

/* A responder waiting for the ClientHello: buffers the bytes until it is
 * whole, then chooses the engine from the suites it offers
 * (m2mpsk_engine_choose_hello(), else the config's own choice), makes it
 * and hands it every byte so far. Returns what m2mpsk_assoc_feed() does. */
static int feed_hello(m2mpsk_assoc *a, const uint8_t *data, size_t len,
                      uint32_t max_input) {
  if (len > max_input || a->hello_len > max_input - len) {
    char msg[96];
    snprintf(msg, sizeof(msg),
             "more than %u bytes of input during the handshake",
             (unsigned)max_input);
    fail(a, M2MPSK_REASON_LIMIT, msg);
    return M2MPSK_E_FAILED;
  }
  uint8_t *buf = realloc(a->hello_buf, a->hello_len + len);
  if (buf == NULL) {
    fail(a, M2MPSK_REASON_INTERNAL, "out of memory buffering input");
    return M2MPSK_E_NOMEM;
  }
  memcpy(buf + a->hello_len, data, len);
  a->hello_buf = buf;
  a->hello_len += len;
  m2mpsk_hello h;
  int r = m2mpsk_hello_parse(buf, a->hello_len, 0, &h);
  if (r == M2MPSK_HELLO_MORE)
    return M2MPSK_OK;
  /* Not a ClientHello we could parse: the config's own engine answers it,
   * as it would have without the inspection. */
  m2mpsk_engine_id id = m2mpsk_engine_choose_hello(
      a->cfg, a->transport, r == M2MPSK_HELLO_OK ? &h : NULL);
  int rc;
  a->ectx = m2mpsk_config_engine_ctx(a->cfg, a->role, a->transport, &id, &rc);
  if (a->ectx == NULL) {
    fail(a, M2MPSK_REASON_INTERNAL, "cannot create the TLS engine");
    return M2MPSK_E_FAILED;
  }
  a->engine = id;
  a->ops = m2mpsk_tls_engine(id);
  rc = start_engine(a);
  if (rc != M2MPSK_OK)
    return rc;
  if (a->key_watch && a->transport == M2MPSK_TRANSPORT_TLS) {
    /* The scanner reads the stream from its first record. */
    uint8_t *buf0 = a->hello_buf;
    size_t len0 = a->hello_len;
    a->hello_buf = NULL;
    a->hello_len = 0;
    rc = feed_tls_scan(a, buf0, len0, max_input);
    free(buf0);
    return rc;
  }
  if (a->ops->push(a->eng, a->hello_buf, a->hello_len) != M2MPSK_OK) {
    fail(a, M2MPSK_REASON_INTERNAL, "out of memory buffering input");
    return M2MPSK_E_NOMEM;
  }
  free(a->hello_buf);
  a->hello_buf = NULL;
  a->hello_len = 0;
  return step_handshake(a);
}

/* Runs the engine's handshake and moves the state along. */
static int step_handshake(m2mpsk_assoc *a) {
  int r = a->ops->handshake(a->eng);
  if (r == M2MPSK_ENG_WANT)
    return M2MPSK_OK;
  if (r == M2MPSK_ENG_FAIL) {
    fail_from_engine(a);
    return M2MPSK_E_FAILED;
  }
  /* Done: the peer proved it holds the key. Bind. */
  const char *negotiated = a->ops->psk_identity(a->eng);
  if (a->peer_id == NULL ||
      (a->role == M2MPSK_ROLE_RESPONDER &&
       (negotiated == NULL || strcmp(negotiated, a->kpsa_id) != 0))) {
    fail(a, M2MPSK_REASON_INTERNAL, "handshake completed without our key");
    return M2MPSK_E_FAILED;
  }
  /* checked_gen stays what it was when the key was fetched: a remove or
   * revoke since then is seen by the first operation. */
  a->bound = 1;
  a->state = M2MPSK_STATE_ESTABLISHED;
  handshake_over(a);
  if (a->role == M2MPSK_ROLE_RESPONDER) {
    if (a->peer_tag != NULL)
      m2mpsk_guard_success(a->guard, M2MPSK_RATE_PEER, a->peer_tag);
    m2mpsk_guard_success(a->guard, M2MPSK_RATE_KPSA_ID, a->kpsa_id);
  }
  /* "<suite> over <version>", without printf's cost on every handshake. */
  char detail[96];
  const char *parts[3] = {a->ops->suite(a->eng), " over ",
                          a->ops->version(a->eng)};
  size_t used = 0;
  for (int i = 0; i < 3; i++) {
    const char *p = parts[i] ? parts[i] : "(null)";
    size_t n = strnlen(p, sizeof(detail) - 1 - used);
    memcpy(detail + used, p, n);
    used += n;
  }
  detail[used] = '\0';
  emit(a, M2MPSK_EVENT_ESTABLISHED, M2MPSK_REASON_NONE, 1, detail);
  return M2MPSK_OK;
}

/* ---- key sources (issue 19) ---------------------------------------------- */

/* An initiator made before its record existed, at start or resume: its
 * record is there now, or it never will be. Does what m2mpsk_assoc_new()
 * and m2mpsk_assoc_start() would have done with it. */
static int initiator_begin(m2mpsk_assoc *a) {
  m2mpsk_record_view v;
  const char *why = NULL;
  m2mpsk_reason r = M2MPSK_REASON_NONE;
  uint64_t gen = m2mpsk_keystore_generation(a->ks);
  a->pending_record = 0;
  if (m2mpsk_keystore_fetch_hashed(a->ks, a->kpsa_id, a->kpsa_hash, &v, NULL,
                                   NULL) != M2MPSK_OK) {
    r = M2MPSK_REASON_UNKNOWN_IDENTITY;
    why = "no record for KpsaID %s, and the key source has none";
  } else {
    a->serial = v.serial;
    a->not_before = v.not_before;
    a->not_after = v.not_after;
    a->checked_gen = gen;
    r = check_record(a, &v, &why);
  }
  char host[256];
  if (r == M2MPSK_REASON_NONE && !a->reversed &&
      m2mpsk_idb_sni_of_valid(v.idb, host, sizeof(host)) &&
      a->ops->set_server_name(a->eng, host) != M2MPSK_OK) {
    r = M2MPSK_REASON_INTERNAL;
    why = "out of memory setting the SNI for KpsaID %s";
  }
  if (r != M2MPSK_REASON_NONE) {
    char msg[192];
    format1(msg, sizeof(msg), why, a->kpsa_id);
    fail(a, r, msg);
    return M2MPSK_E_FAILED;
  }
  return step_handshake(a);
}

/* An initiator's start without its record: asks the source. */
static int initiator_wait(m2mpsk_assoc *a) {
  m2mpsk_key_request *req = NULL;
  int r = m2mpsk_keystore_request_key(a->ks, a->kpsa_id, a->role, NULL, &req);
  if (r == M2MPSK_KEYREQ_WAIT && !m2mpsk_key_request_answered(req)) {
    a->req = req;
    a->key_watch = 1;
    a->state = M2MPSK_STATE_WAITING_KEY;
    return M2MPSK_OK;
  }
  /* Answered already (by the callback itself), there all along, or no
   * source (any more) or past its bound: the keystore says which. */
  m2mpsk_key_request_free(req);
  return initiator_begin(a);
}

/* A responder read a ClientKeyExchange's psk_identity before the engine:
 * 1 when the association now waits for the key source (a->req set), 0
 * when it goes on as it would without a source (the identity is malformed
 * or blocked, a record is there, the source has none to give at once). */
static int key_needed(m2mpsk_assoc *a, const uint8_t *id, size_t id_len) {
  char name[M2MPSK_KPSA_ID_MAX + 1];
  if (id_len == 0 || id_len > M2MPSK_KPSA_ID_MAX ||
      memchr(id, 0, id_len) != NULL)
    return 0;
  memcpy(name, id, id_len);
  name[id_len] = '\0';
  uint64_t until;
  /* A blocked identity fails at once when the engine reads it. */
  if (m2mpsk_kpsa_id_validate(name) != M2MPSK_OK ||
      m2mpsk_guard_blocked(a->guard, M2MPSK_RATE_KPSA_ID, name, a->now_ms,
                           &until))
    return 0;
  /* One index hash for the presence check (no key is read), the request,
   * and the engine's callback, which reads the same identity again. */
  uint64_t hash = m2mpsk_keystore_hash(a->ks, name);
  if (set_presented_id(a, name, id_len) != 0)
    return 0; /* the engine's callback fails it, short of memory too */
  a->kpsa_hash = hash;
  a->kpsa_hash_of_id = 1;
  if (m2mpsk_keystore_fetch_hashed(a->ks, name, hash, NULL, NULL, NULL) ==
      M2MPSK_OK)
    return 0;
  m2mpsk_key_request *req = NULL;
  int r = m2mpsk_keystore_request_key_hashed(a->ks, name, hash, a->role, a->sni,
                                             &req);
  if (r != M2MPSK_KEYREQ_WAIT || m2mpsk_key_request_answered(req)) {
    /* Answered already, by the callback itself: an answer given once is
     * kept for the engine's callback, which reads the flight next. */
    if (r == M2MPSK_KEYREQ_WAIT && m2mpsk_key_request_given_once(req)) {
      drop_answered(a);
      a->answered = req;
      return 0;
    }
    m2mpsk_key_request_free(req);
    return 0;
  }
  a->req = req;
  /* What the client presented, for events and the rate limiter should the
   * wait end in failure; the engine's callback reads it again. */
  a->presented = 1;
  a->state = M2MPSK_STATE_WAITING_KEY;
  /* The wait may be long and many may wait: the engine gives back what
   * its next step can rebuild (OpenSSL's DTLS record buffers). */
  if (a->ops->rest != NULL)
    a->ops->rest(a->eng);
  return 1;
}

#define SCAN_ON 0
#define SCAN_STOP 1
#define SCAN_WAIT 2

/* What the scanners of hello.c found, for the association: SCAN_ON (keep
 * looking), SCAN_WAIT (it now waits) or SCAN_STOP (looking is over). */
static int scan_result(m2mpsk_assoc *a, int found, const uint8_t *id,
                       size_t id_len) {
  if (found == M2MPSK_CKE_MORE)
    return SCAN_ON;
  if (found == M2MPSK_CKE_FOUND && key_needed(a, id, id_len))
    return SCAN_WAIT;
  return SCAN_STOP;
}

static COLD int input_limit(m2mpsk_assoc *a, uint32_t max_input) {
  char msg[96];
  snprintf(msg, sizeof(msg), "more than %u bytes of input during the handshake",
           (unsigned)max_input);
  if (a->eng != NULL)
    a->ops->abort(a->eng, 80 /* internal_error */);
  fail(a, M2MPSK_REASON_LIMIT, msg);
  return M2MPSK_E_FAILED;
}

static int hold_append(m2mpsk_assoc *a, const uint8_t *data, size_t len,
                       int dtls) {
  size_t extra = len + (dtls ? 2 : 0);
  uint8_t *buf = realloc(a->held, a->held_len + extra);
  if (buf == NULL)
    return 0;
  a->held = buf;
  if (dtls) {
    buf[a->held_len] = (uint8_t)(len >> 8);
    buf[a->held_len + 1] = (uint8_t)len;
    a->held_len += 2;
    a->held_n++;
  }
  memcpy(a->held + a->held_len, data, len);
  a->held_len += len;
  return 1;
}

/* DTLS datagrams kept while waiting: a client's flight and a few
 * retransmissions of it; more is dropped, like loss. */
#define HELD_DATAGRAMS 8

/* Pushes the first `n` held TLS bytes to the engine and keeps the rest. */
static int push_held_prefix(m2mpsk_assoc *a, size_t n) {
  if (n == 0)
    return M2MPSK_OK;
  if (a->ops->push(a->eng, a->held, n) != M2MPSK_OK) {
    fail(a, M2MPSK_REASON_INTERNAL, "out of memory buffering input");
    return M2MPSK_E_NOMEM;
  }
  memmove(a->held, a->held + n, a->held_len - n);
  a->held_len -= n;
  if (a->held_len == 0) {
    free(a->held);
    a->held = NULL;
  }
  return M2MPSK_OK;
}

/* TLS with key_watch: hands the engine every whole record before the
 * ClientKeyExchange, and holds from that record on when the association
 * must wait. With nothing held (the usual case: a flight arrives whole),
 * the input is scanned where it lies and only what must wait is copied;
 * otherwise it is appended to what is held and scanned there. */
static int feed_tls_scan(m2mpsk_assoc *a, const uint8_t *data, size_t len,
                         uint32_t max_input) {
  size_t eng_buf = a->ops->buffered(a->eng);
  if (len > max_input || a->held_len > max_input - len ||
      eng_buf > max_input - len - a->held_len)
    return input_limit(a, max_input);
  int direct = a->held_len == 0 && a->state != M2MPSK_STATE_WAITING_KEY;
  if (!direct && !hold_append(a, data, len, 0)) {
    fail(a, M2MPSK_REASON_INTERNAL, "out of memory buffering input");
    return M2MPSK_E_NOMEM;
  }
  if (a->state == M2MPSK_STATE_WAITING_KEY)
    return M2MPSK_OK;
  const uint8_t *buf = direct ? data : a->held;
  size_t buf_len = direct ? len : a->held_len;
  size_t off = 0;
  int v = SCAN_ON;
  while (buf_len - off >= 5) {
    const uint8_t *h = buf + off;
    size_t rlen = (size_t)h[3] << 8 | h[4];
    if (h[0] != 22 || h[1] != 3 || rlen > 16384 + 2048) {
      v = SCAN_STOP; /* past the handshake's plaintext, or not TLS */
      break;
    }
    if (buf_len - off - 5 < rlen)
      break; /* the rest of the record is still to come */
    const uint8_t *id = NULL;
    size_t id_len = 0;
    int found = m2mpsk_cke_tls_record(h + 5, rlen, &a->hs_left, &id, &id_len);
    v = scan_result(a, found, id, id_len);
    if (v == SCAN_WAIT)
      break;
    off += 5 + rlen;
    if (v == SCAN_STOP)
      break;
  }
  if (v == SCAN_STOP) {
    a->key_watch = 0;
    off = buf_len;
  }
  int rc = M2MPSK_OK;
  if (!direct) {
    rc = push_held_prefix(a, off);
  } else if (off > 0 && a->ops->push(a->eng, data, off) != M2MPSK_OK) {
    fail(a, M2MPSK_REASON_INTERNAL, "out of memory buffering input");
    rc = M2MPSK_E_NOMEM;
  } else if (off < len && !hold_append(a, data + off, len - off, 0)) {
    fail(a, M2MPSK_REASON_INTERNAL, "out of memory buffering input");
    rc = M2MPSK_E_NOMEM;
  }
  if (rc != M2MPSK_OK || v == SCAN_WAIT || off == 0)
    return rc;
  return a->state == M2MPSK_STATE_HANDSHAKING ? step_handshake(a) : M2MPSK_OK;
}

/* Input while key_watch is set. Returns a status for m2mpsk_assoc_feed(),
 * or 1 to let a DTLS datagram through the ordinary path. */
static int feed_keysource(m2mpsk_assoc *a, const uint8_t *data, size_t len,
                          uint32_t max_input) {
  if (a->transport == M2MPSK_TRANSPORT_TLS)
    return feed_tls_scan(a, data, len, max_input);
  if (a->state != M2MPSK_STATE_WAITING_KEY) {
    const uint8_t *id = NULL;
    size_t id_len = 0;
    int found = m2mpsk_cke_dtls(data, len, &id, &id_len);
    int v = scan_result(a, found, id, id_len);
    if (v == SCAN_STOP)
      a->key_watch = 0;
    if (v != SCAN_WAIT)
      return 1;
  }
  if (a->held_n < HELD_DATAGRAMS && a->held_len + 2 + len <= max_input)
    (void)hold_append(a, data, len, 1); /* out of memory: lost, as loss */
  return M2MPSK_OK;
}

/* The engine gets what waited; then the handshake goes on. */
static int release_held(m2mpsk_assoc *a) {
  a->key_watch = 0;
  if (a->held_len == 0)
    return M2MPSK_OK;
  if (a->transport == M2MPSK_TRANSPORT_TLS) {
    int rc = push_held_prefix(a, a->held_len);
    if (rc != M2MPSK_OK)
      return rc;
    return step_handshake(a);
  }
  int rc = M2MPSK_OK;
  size_t p = 0;
  while (p + 2 <= a->held_len && rc == M2MPSK_OK &&
         (a->state == M2MPSK_STATE_HANDSHAKING ||
          a->state == M2MPSK_STATE_ESTABLISHED)) {
    size_t n = (size_t)a->held[p] << 8 | a->held[p + 1];
    p += 2;
    /* Out of memory loses the datagram, as the ordinary path does. */
    if (a->ops->push(a->eng, a->held + p, n) == M2MPSK_OK &&
        a->state == M2MPSK_STATE_HANDSHAKING)
      rc = step_handshake(a);
    p += n;
  }
  free(a->held);
  a->held = NULL;
  a->held_len = 0;
  a->held_n = 0;
  return rc;
}

int m2mpsk_assoc_resume(m2mpsk_assoc *a, uint64_t now_ms) {
  if (a == NULL)
    return M2MPSK_E_INVALID;
  if (a->state != M2MPSK_STATE_WAITING_KEY)
    return M2MPSK_E_STATE;
  set_now(a, now_ms);
  if (!m2mpsk_key_request_answered(a->req))
    return M2MPSK_OK;
  m2mpsk_key_request *req = a->req;
  a->req = NULL;
  a->state = M2MPSK_STATE_HANDSHAKING;
  if (a->role == M2MPSK_ROLE_INITIATOR) {
    m2mpsk_key_request_free(req);
    int rc = initiator_begin(a);
    /* Input that came while waiting follows the ClientHello. */
    if (rc == M2MPSK_OK && a->held_len > 0)
      rc = release_held(a);
    a->key_watch = 0;
    return rc;
  }
  /* The ClientKeyExchange that waited reaches the engine now, and with it
   * the key callback (on_server_psk). */
  drop_answered(a);
  a->answered = req;
  int rc = release_held(a);
  /* An ordinary answer's key goes with the flight or not at all; an
   * answer given once waits for the engine's callback. */
  if (a->answered != NULL && !m2mpsk_key_request_given_once(a->answered))
    drop_answered(a);
  return rc;
}

m2mpsk_key_request *m2mpsk_assoc_key_request(const m2mpsk_assoc *a) {
  return a != NULL && a->state == M2MPSK_STATE_WAITING_KEY ? a->req : NULL;
}

int m2mpsk_assoc_start(m2mpsk_assoc *a, uint64_t now_ms, int64_t unix_time) {
  if (a == NULL || unix_time < 0)
    return M2MPSK_E_INVALID;
  if (a->state != M2MPSK_STATE_IDLE)
    return M2MPSK_E_STATE;
  a->now_ms = now_ms;
  a->start_ms = now_ms;
  a->unix_at_start = unix_time;
  uint32_t t = m2mpsk_config_handshake_timeout(a->cfg);
  a->deadline_ms = now_ms + t;
  a->state = M2MPSK_STATE_HANDSHAKING;
  set_now(a, now_ms);

  if (a->role == M2MPSK_ROLE_INITIATOR) {
    if (a->pending_record)
      return initiator_wait(a);
    /* Fail early, and without sending anything, on a record we may not
     * use: its state is checked again when the key is handed over. */
    m2mpsk_record_view v;
    const char *why = NULL;
    m2mpsk_reason r;
    if (m2mpsk_keystore_generation(a->ks) == a->checked_gen) {
      /* Nothing removed or revoked since creation: the record is still
       * the one fetched then, and only time can have made it unusable. */
      v.not_before = a->not_before;
      v.not_after = a->not_after;
      v.revoked = 0;
      r = check_record(a, &v, &why);
    } else if (m2mpsk_keystore_fetch_hashed(a->ks, a->kpsa_id, a->kpsa_hash, &v,
                                            NULL, NULL) != M2MPSK_OK ||
               v.serial != a->serial) {
      r = M2MPSK_REASON_REVOKED;
      why = "record for KpsaID %s was removed";
    } else {
      r = check_record(a, &v, &why);
    }
    if (r != M2MPSK_REASON_NONE) {
      char msg[192];
      format1(msg, sizeof(msg), why, a->kpsa_id);
      fail(a, r, msg);
      return M2MPSK_E_FAILED;
    }
    return step_handshake(a);
  }
  /* Read once per handshake: a source set later serves later handshakes. */
  a->key_watch = (unsigned char)m2mpsk_keystore_has_source(a->ks);
  uint64_t until = 0;
  if (a->peer_tag != NULL &&
      m2mpsk_guard_blocked(a->guard, M2MPSK_RATE_PEER, a->peer_tag, now_ms,
                           &until)) {
    char msg[192];
    snprintf(msg, sizeof(msg),
             "peer %s is rate-limited for %llu ms more after repeated failed "
             "handshakes",
             a->peer_tag, (unsigned long long)(until - now_ms));
    fail(a, M2MPSK_REASON_RATE_LIMITED, msg);
    return M2MPSK_E_FAILED;
  }
  return M2MPSK_OK;
}

HOT int m2mpsk_assoc_feed(m2mpsk_assoc *a, const uint8_t *data, size_t len,
                          uint64_t now_ms) {
  if (a == NULL || (data == NULL && len > 0))
    return M2MPSK_E_INVALID;
  if (a->transport == M2MPSK_TRANSPORT_DTLS && (len == 0 || len > 0xffff))
    return M2MPSK_E_INVALID;
  switch (a->state) {
  case M2MPSK_STATE_IDLE:
  case M2MPSK_STATE_FAILED: return M2MPSK_E_STATE;
  case M2MPSK_STATE_CLOSED:
    if (a->received_close)
      return M2MPSK_E_STATE;
    break;
  default: break;
  }
  if (len == 0)
    return M2MPSK_OK;
  set_now(a, now_ms);
  if (!record_still_good(a))
    return M2MPSK_E_FAILED;
  uint32_t max_input = m2mpsk_config_max_input(a->cfg);
  if (a->ops == NULL)
    return feed_hello(a, data, len, max_input);
  if (a->eng == NULL) {
    int rc = start_engine(a);
    if (rc != M2MPSK_OK)
      return rc;
  }
  if (__builtin_expect(a->key_watch, 0)) {
    int rc = feed_keysource(a, data, len, max_input);
    if (rc != 1)
      return rc;
  }
  if (len > max_input || a->ops->buffered(a->eng) > max_input - len) {
    if (a->state != M2MPSK_STATE_HANDSHAKING)
      return M2MPSK_E_LIMIT;
    char msg[96];
    snprintf(msg, sizeof(msg),
             "more than %u bytes of input during the "
             "handshake",
             (unsigned)max_input);
    a->ops->abort(a->eng, 80 /* internal_error */);
    fail(a, M2MPSK_REASON_LIMIT, msg);
    return M2MPSK_E_FAILED;
  }
  if (a->ops->push(a->eng, data, len) != M2MPSK_OK) {
    /* A stream that lost bytes cannot go on; a lost datagram is loss. */
    if (a->transport == M2MPSK_TRANSPORT_TLS)
      fail(a, M2MPSK_REASON_INTERNAL, "out of memory buffering input");
    return M2MPSK_E_NOMEM;
  }
  if (a->state == M2MPSK_STATE_HANDSHAKING)
    return step_handshake(a);
  return M2MPSK_OK;
}

size_t m2mpsk_assoc_pending(const m2mpsk_assoc *a) {
  if (a == NULL || a->state == M2MPSK_STATE_IDLE || a->eng == NULL)
    return 0;
  return a->ops->pending(a->eng);
}

HOT int m2mpsk_assoc_drain(m2mpsk_assoc *a, uint8_t *out, size_t cap,
                           size_t *out_len) {
  if (a == NULL || out == NULL || out_len == NULL)
    return M2MPSK_E_INVALID;
  *out_len = 0;
  if (cap == 0)
    return M2MPSK_E_BUFFER;
  if (a->state == M2MPSK_STATE_IDLE)
    return M2MPSK_E_STATE;
  if (a->eng == NULL) /* a responder that was fed nothing yet */
    return M2MPSK_E_AGAIN;
  return a->ops->drain(a->eng, out, cap, out_len);
}

/* The first monotonic time at which record_still_good() finds the record
 * expired: unix_now() passes not_after once (now_ms - start_ms) / 1000
 * reaches not_after - unix_at_start + 1. Returns 1 with *at set, or 0 when
 * there is none: no record known yet (a responder before the key
 * handover), no not_after, or past the range of the caller's clock. */
static int expiry_deadline(const m2mpsk_assoc *a, uint64_t *at) {
  if (a->not_after == 0)
    return 0;
  if (a->not_after < a->unix_at_start) {
    *at = a->start_ms;
    return 1;
  }
  uint64_t secs = (uint64_t)a->not_after - (uint64_t)a->unix_at_start + 1;
  if (secs > (UINT64_MAX - a->start_ms) / 1000)
    return 0;
  *at = a->start_ms + secs * 1000;
  return 1;
}

int m2mpsk_assoc_next_timeout(const m2mpsk_assoc *a, uint64_t *deadline_ms) {
  if (a == NULL || deadline_ms == NULL)
    return M2MPSK_E_INVALID;
  if (a->state != M2MPSK_STATE_HANDSHAKING &&
      a->state != M2MPSK_STATE_ESTABLISHED &&
      a->state != M2MPSK_STATE_WAITING_KEY)
    return M2MPSK_E_AGAIN;
  int have = 0;
  uint64_t best = 0;
  if (a->state != M2MPSK_STATE_ESTABLISHED) {
    best = a->deadline_ms;
    have = 1;
  }
  /* Without it, a host that sleeps until the next deadline would notice
   * the expiry only when input arrives. */
  uint64_t expiry;
  if (expiry_deadline(a, &expiry) && (!have || expiry < best)) {
    best = expiry;
    have = 1;
  }
  uint64_t left;
  engine_now(a);
  /* While waiting for a key the engine's retransmissions pause: the
   * client's flight is already here. */
  if (a->eng != NULL && a->state != M2MPSK_STATE_WAITING_KEY &&
      a->ops->timer(a->eng, &left)) {
    uint64_t t = a->now_ms + left;
    if (!have || t < best)
      best = t;
    have = 1;
  }
  if (!have)
    return M2MPSK_E_AGAIN;
  *deadline_ms = best;
  return M2MPSK_OK;
}

int m2mpsk_assoc_handle_timeout(m2mpsk_assoc *a, uint64_t now_ms) {
  if (a == NULL)
    return M2MPSK_E_INVALID;
  if (a->state == M2MPSK_STATE_IDLE)
    return M2MPSK_E_STATE;
  if (a->state == M2MPSK_STATE_FAILED)
    return a->reason == M2MPSK_REASON_TIMEOUT ? M2MPSK_E_FAILED
                                              : M2MPSK_E_STATE;
  if (a->state == M2MPSK_STATE_CLOSED)
    return M2MPSK_OK;
  set_now(a, now_ms);
  if (!record_still_good(a))
    return M2MPSK_E_FAILED;
  if (a->state != M2MPSK_STATE_ESTABLISHED && a->now_ms >= a->deadline_ms) {
    char msg[96];
    snprintf(msg, sizeof(msg), "handshake not complete after %u ms",
             (unsigned)(a->now_ms - a->start_ms));
    fail(a, M2MPSK_REASON_TIMEOUT, msg);
    return M2MPSK_E_FAILED;
  }
  if (a->state == M2MPSK_STATE_WAITING_KEY)
    return M2MPSK_OK;
  if (a->eng != NULL && a->ops->on_timer(a->eng) != M2MPSK_OK) {
    fail_from_engine(a);
    return M2MPSK_E_FAILED;
  }
  return M2MPSK_OK;
}

m2mpsk_state m2mpsk_assoc_state(const m2mpsk_assoc *a) {
  return a ? a->state : M2MPSK_STATE_FAILED;
}

HOT int m2mpsk_assoc_write(m2mpsk_assoc *a, const uint8_t *data, size_t len,
                           size_t *written) {
  if (a == NULL || written == NULL || (data == NULL && len > 0))
    return M2MPSK_E_INVALID;
  *written = 0;
  if (a->transport == M2MPSK_TRANSPORT_DTLS && len > 16384)
    return M2MPSK_E_INVALID;
  if (a->state == M2MPSK_STATE_FAILED)
    return M2MPSK_E_FAILED;
  if (a->state == M2MPSK_STATE_CLOSED)
    return M2MPSK_E_CLOSED;
  if (a->state != M2MPSK_STATE_ESTABLISHED)
    return M2MPSK_E_STATE;
  engine_now(a);
  if (!record_still_good(a))
    return M2MPSK_E_FAILED;
  if (len == 0)
    return M2MPSK_OK;
  int rc = a->ops->write(a->eng, data, len);
  if (rc == M2MPSK_E_FAILED)
    fail_from_engine(a);
  else if (rc == M2MPSK_E_NOMEM) /* the record layer is left mid-write */
    fail(a, M2MPSK_REASON_INTERNAL, "out of memory writing a record");
  if (rc == M2MPSK_OK)
    *written = len;
  return rc;
}

HOT int m2mpsk_assoc_read(m2mpsk_assoc *a, uint8_t *out, size_t cap,
                          size_t *out_len) {
  if (a == NULL || out == NULL || out_len == NULL)
    return M2MPSK_E_INVALID;
  *out_len = 0;
  if (cap == 0)
    return M2MPSK_E_BUFFER;
  if (a->state == M2MPSK_STATE_FAILED)
    return M2MPSK_E_FAILED;
  if (a->received_close)
    return M2MPSK_E_CLOSED;
  if (a->state != M2MPSK_STATE_ESTABLISHED && a->state != M2MPSK_STATE_CLOSED)
    return M2MPSK_E_STATE;
  engine_now(a);
  if (!record_still_good(a))
    return M2MPSK_E_FAILED;
  int rc = a->ops->read(a->eng, out, cap, out_len);
  if (rc == M2MPSK_E_CLOSED) {
    a->received_close = 1;
    a->state = M2MPSK_STATE_CLOSED;
    report_closed(a, "close_notify received");
  } else if (rc == M2MPSK_E_FAILED) {
    fail_from_engine(a);
  }
  return rc;
}

int m2mpsk_assoc_close(m2mpsk_assoc *a) {
  if (a == NULL)
    return M2MPSK_E_INVALID;
  if (a->state == M2MPSK_STATE_CLOSED && a->sent_close)
    return M2MPSK_OK;
  if (a->state != M2MPSK_STATE_ESTABLISHED && a->state != M2MPSK_STATE_CLOSED)
    return M2MPSK_E_STATE;
  engine_now(a);
  if (a->ops->close(a->eng) != M2MPSK_OK) {
    fail_from_engine(a);
    return M2MPSK_E_FAILED;
  }
  a->sent_close = 1;
  a->state = M2MPSK_STATE_CLOSED;
  report_closed(a, "close_notify sent");
  return M2MPSK_OK;
}

/* ---- results ------------------------------------------------------------- */

static int has_session(const m2mpsk_assoc *a) {
  return a != NULL && a->bound &&
         (a->state == M2MPSK_STATE_ESTABLISHED ||
          a->state == M2MPSK_STATE_CLOSED);
}

const char *m2mpsk_assoc_peer_id(const m2mpsk_assoc *a) {
  return has_session(a) ? a->peer_id : NULL;
}

int m2mpsk_assoc_peer_id_is_credential(const m2mpsk_assoc *a) {
  return has_session(a) ? a->peer_is_credential : 0;
}

int m2mpsk_assoc_bind_ae_id(m2mpsk_assoc *a, const char *ae_id) {
  if (a == NULL || ae_id == NULL)
    return M2MPSK_E_INVALID;
  int rc = m2mpsk_ida_validate(ae_id);
  if (rc != M2MPSK_OK)
    return rc;
  /* A one-segment identifier is a CSE-ID unless it is S-type (TS-0001
   * §7.2): "/S1", "//sp/S1". */
  if (m2mpsk_idb_validate(ae_id) == M2MPSK_OK && strrchr(ae_id, '/')[1] != 'S')
    return M2MPSK_E_IDA;
  if (!has_session(a) || is_entity_a(a) || !a->peer_is_credential ||
      a->ae_id_bound)
    return M2MPSK_E_STATE;
  size_t np = strlen(ae_id) + 1;
  size_t nl = a->local_id ? strlen(a->local_id) + 1 : 0;
  char *ids = malloc(np + nl);
  if (ids == NULL)
    return M2MPSK_E_NOMEM;
  memcpy(ids, ae_id, np);
  if (a->local_id)
    memcpy(ids + np, a->local_id, nl);
  free(a->peer_id);
  a->peer_id = ids;
  a->local_id = nl ? ids + np : NULL;
  a->peer_is_credential = 0;
  a->ae_id_bound = 1;
  return M2MPSK_OK;
}

const char *m2mpsk_assoc_local_id(const m2mpsk_assoc *a) {
  return has_session(a) ? a->local_id : NULL;
}

const char *m2mpsk_assoc_kpsa_id(const m2mpsk_assoc *a) {
  return a != NULL && a->have_kpsa_id ? a->kpsa_id : NULL;
}

const char *m2mpsk_assoc_suite(const m2mpsk_assoc *a) {
  return has_session(a) ? a->ops->suite(a->eng) : NULL;
}

const char *m2mpsk_assoc_version(const m2mpsk_assoc *a) {
  return has_session(a) ? a->ops->version(a->eng) : NULL;
}

int m2mpsk_assoc_export(const m2mpsk_assoc *a, uint8_t *out, size_t out_len,
                        const char *label, const uint8_t *context,
                        size_t context_len) {
  if (a == NULL || out == NULL || label == NULL ||
      (context == NULL && context_len > 0))
    return M2MPSK_E_INVALID;
  if (out_len == 0)
    return M2MPSK_E_BUFFER;
  if (a->state != M2MPSK_STATE_ESTABLISHED)
    return M2MPSK_E_STATE;
  return a->ops->export_keying(a->eng, out, out_len, label, context,
                               context_len);
}

m2mpsk_engine_id m2mpsk_assoc_engine(const m2mpsk_assoc *a) {
  return a != NULL ? a->engine : M2MPSK_ENGINE_AUTO;
}

m2mpsk_reason m2mpsk_assoc_failure(const m2mpsk_assoc *a) {
  return a != NULL && a->state == M2MPSK_STATE_FAILED ? a->reason
                                                      : M2MPSK_REASON_NONE;
}

const char *m2mpsk_assoc_failure_detail(const m2mpsk_assoc *a) {
  return a != NULL && a->state == M2MPSK_STATE_FAILED ? detail_text(a) : "";
}
