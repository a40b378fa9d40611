/* Token keys (issue 20, API 0.5): records whose Kpsa the host keeps, and
 * handshakes whose master secret the host computes. Through the shared
 * library, so that either engine can be asked for. The host here is a
 * software stand-in for a token: it holds the key and computes
 * P_hash(prefix || Kpsa, seed) with OpenSSL's HMAC, loaded RTLD_LOCAL so
 * that its symbols never meet the engines' (tests/pkcs11/token_prf proves
 * the same with keys in a real token and out of the process). */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "link.h"
#include "m2mpsk/m2mpsk.h"
#include "phash.h"

/* A sanitizer build loads the engines without RTLD_DEEPBIND, where the
 * BoringSSL module must not share a process with libcrypto.so.3
 * (.ci/sanitize): there every side runs on OpenSSL, and the BoringSSL
 * refusal is left to the plain build. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

#define NOW0 1000000u
#define UNIX0 1800000000

/* ---- HMAC from libcrypto.so.3, kept out of the global scope -------------- */

static m2mt_hmac g_hmac;

static void crypto_load(void) {
  if (g_hmac.hmac != NULL)
    return;
  if (m2mt_hmac_load(&g_hmac) != 0)
    cr_skip_test("libcrypto.so.3 (HMAC, EVP_sha256, EVP_sha384) not "
                 "loadable: %s",
                 dlerror());
}

/* ---- the stand-in token ---------------------------------------------------
 */

typedef struct soft_token {
  uint8_t key[64];
  size_t key_len;
  int fail;            /* master_secret answers -1 */
  atomic_int calls;    /* master_secret calls */
  atomic_int released; /* release calls */
  char last_digest[16];
  size_t last_prefix_len, last_out_len;
} soft_token;

/* RFC 5246 §5 P_hash(secret, seed), secret = prefix || key. */
static int soft_master_secret(void *ctx, const char *digest,
                              const uint8_t *prefix, size_t prefix_len,
                              const uint8_t *seed, size_t seed_len,
                              uint8_t *out, size_t out_len) {
  soft_token *t = ctx;
  atomic_fetch_add(&t->calls, 1);
  snprintf(t->last_digest, sizeof(t->last_digest), "%s", digest);
  t->last_prefix_len = prefix_len;
  t->last_out_len = out_len;
  if (t->fail)
    return -1;
  return m2mt_p_hash(&g_hmac, digest, prefix, prefix_len, t->key, t->key_len,
                     seed, seed_len, out, out_len);
}

static void soft_release(void *ctx) {
  soft_token *t = ctx;
  atomic_fetch_add(&t->released, 1);
}

/* The host's two functions, as the API takes them. */
#define OPS soft_master_secret, soft_release

static void token_init(soft_token *t, const uint8_t *key) {
  memset(t, 0, sizeof(*t));
  memcpy(t->key, key, 32);
  t->key_len = 32;
}

/* ---- pairs ----------------------------------------------------------------
 */

typedef struct side {
  int token;               /* the key is a token key */
  m2mpsk_engine_id engine; /* the config's choice */
} side;

typedef struct tk_pair {
  m2mt_pair p;
  soft_token tok_a, tok_b;
} tk_pair;

static void skip_unless(m2mpsk_engine_id e) {
  if (e != M2MPSK_ENGINE_AUTO && !m2mpsk_engine_available(e))
    cr_skip_test("engine %s not available: %s", m2mpsk_engine_name(e),
                 m2mpsk_backend_error());
}

/* A pair with record M2MT_KPSA_ID on both sides: key_a / key_b, as token
 * keys where asked. */
static void tk_pair_init(tk_pair *t, m2mpsk_transport tr, side a, side b,
                         const uint8_t *key_a, const uint8_t *key_b,
                         const char *suites) {
  crypto_load();
  skip_unless(M2MPSK_ENGINE_OPENSSL);
  memset(t, 0, sizeof(*t));
  m2mt_pair *p = &t->p;
  token_init(&t->tok_a, key_a);
  token_init(&t->tok_b, key_b);
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_b, 0), M2MPSK_OK);
  if (a.token)
    cr_assert_eq(m2mpsk_keystore_add_token_key(p->ks_a, M2MT_KPSA_ID, 32, OPS,
                                               &t->tok_a, M2MT_IDA, M2MT_IDB, 0,
                                               0),
                 M2MPSK_OK);
  else
    cr_assert_eq(m2mpsk_keystore_add(p->ks_a, M2MT_KPSA_ID, key_a, 32, M2MT_IDA,
                                     M2MT_IDB, 0, 0),
                 M2MPSK_OK);
  if (b.token)
    cr_assert_eq(m2mpsk_keystore_add_token_key(p->ks_b, M2MT_KPSA_ID, 32, OPS,
                                               &t->tok_b, M2MT_IDA, M2MT_IDB, 0,
                                               0),
                 M2MPSK_OK);
  else
    cr_assert_eq(m2mpsk_keystore_add(p->ks_b, M2MT_KPSA_ID, key_b, 32, M2MT_IDA,
                                     M2MT_IDB, 0, 0),
                 M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p->cfg_b, M2MT_IDB), M2MPSK_OK);
  if (SANITIZED) {
    a.engine = a.engine ? a.engine : M2MPSK_ENGINE_OPENSSL;
    b.engine = b.engine ? b.engine : M2MPSK_ENGINE_OPENSSL;
  }
  cr_assert_eq(m2mpsk_config_set_engine(p->cfg_a, a.engine), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_engine(p->cfg_b, b.engine), M2MPSK_OK);
  if (suites != NULL) {
    cr_assert_eq(m2mpsk_config_set_suites(p->cfg_a, suites), M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_set_suites(p->cfg_b, suites), M2MPSK_OK);
  }
  cr_assert_eq(m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, tr, p->cfg_a,
                                p->ks_a, M2MT_KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER, tr, p->cfg_b,
                                p->ks_b, NULL),
               M2MPSK_OK);
  m2mt_pair_start(p, NOW0, UNIX0);
}

static void run(tk_pair *t) {
  m2mt_link link = {.rng = 7};
  uint64_t now = NOW0;
  m2mt_run_handshake(t->p.a, t->p.b, &link, &now, 200);
}

static void assert_established(const tk_pair *t) {
  cr_assert_eq(m2mpsk_assoc_state(t->p.a), M2MPSK_STATE_ESTABLISHED,
               "initiator: %s", m2mpsk_assoc_failure_detail(t->p.a));
  cr_assert_eq(m2mpsk_assoc_state(t->p.b), M2MPSK_STATE_ESTABLISHED,
               "responder: %s", m2mpsk_assoc_failure_detail(t->p.b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(t->p.a), M2MT_IDB);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(t->p.b), M2MT_IDA);
}

/* Application data both ways: the keys the two sides derived agree. */
static void assert_data_flows(tk_pair *t) {
  static const uint8_t msg[] = "oneM2M request";
  m2mpsk_assoc *from[2] = {t->p.a, t->p.b}, *to[2] = {t->p.b, t->p.a};
  m2mt_link link = {.rng = 9};
  for (int i = 0; i < 2; i++) {
    size_t w = 0, got = 0;
    uint8_t buf[64];
    cr_assert_eq(m2mpsk_assoc_write(from[i], msg, sizeof(msg), &w), M2MPSK_OK);
    m2mt_transfer(from[i], to[i], &link, NOW0);
    cr_assert_eq(m2mpsk_assoc_read(to[i], buf, sizeof(buf), &got), M2MPSK_OK);
    cr_assert_eq(got, sizeof(msg));
    cr_assert_eq(memcmp(buf, msg, got), 0);
  }
}

static void tk_pair_free(tk_pair *t) {
  m2mt_pair_free(&t->p);
}

/* ---- handshakes -----------------------------------------------------------
 */

/* Arrays, not pointers: criterion may run each case in a new process. */
typedef struct hs_case {
  m2mpsk_transport tr;
  char suite[64];
  char digest[8];
  int token_a, token_b;
} hs_case;

ParameterizedTestParameters(token_keys, handshakes) {
  static hs_case cases[] = {
      /* TS-0003's mandated suites, the responder's key in the token */
      {M2MPSK_TRANSPORT_TLS, "TLS_PSK_WITH_AES_128_CBC_SHA256", "SHA256", 0, 1},
      {M2MPSK_TRANSPORT_DTLS, "TLS_PSK_WITH_AES_128_CCM_8", "SHA256", 0, 1},
      /* the initiator's, then both */
      {M2MPSK_TRANSPORT_TLS, "TLS_PSK_WITH_AES_128_CBC_SHA256", "SHA256", 1, 0},
      {M2MPSK_TRANSPORT_DTLS, "TLS_PSK_WITH_AES_128_CCM_8", "SHA256", 1, 1},
      /* an (EC)DHE-PSK premaster, and a SHA-384 PRF */
      {M2MPSK_TRANSPORT_TLS, "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256", "SHA256",
       1, 1},
      {M2MPSK_TRANSPORT_TLS, "TLS_DHE_PSK_WITH_AES_128_GCM_SHA256", "SHA256", 0,
       1},
      {M2MPSK_TRANSPORT_DTLS, "TLS_PSK_WITH_AES_256_GCM_SHA384", "SHA384", 1,
       1},
  };
  return cr_make_param_array(hs_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(hs_case *c, token_keys, handshakes) {
  tk_pair t;
  side a = {c->token_a, M2MPSK_ENGINE_AUTO},
       b = {c->token_b, M2MPSK_ENGINE_AUTO};
  tk_pair_init(&t, c->tr, a, b, m2mt_key, m2mt_key, c->suite);
  run(&t);
  assert_established(&t);
  assert_data_flows(&t);
  /* Token keys run on the OpenSSL engine, whatever else is available. */
  if (c->token_a)
    cr_assert_eq(m2mpsk_assoc_engine(t.p.a), M2MPSK_ENGINE_OPENSSL);
  if (c->token_b)
    cr_assert_eq(m2mpsk_assoc_engine(t.p.b), M2MPSK_ENGINE_OPENSSL);
  /* One master secret per handshake from each token, with the suite's
   * digest, 48 bytes, from an RFC 4279 prefix (2 + other + 2 bytes). */
  soft_token *toks[2] = {c->token_a ? &t.tok_a : NULL,
                         c->token_b ? &t.tok_b : NULL};
  for (int i = 0; i < 2; i++) {
    if (toks[i] == NULL) {
      continue;
    }
    cr_assert_eq(atomic_load(&toks[i]->calls), 1);
    cr_assert_str_eq(toks[i]->last_digest, c->digest);
    cr_assert_eq(toks[i]->last_out_len, 48);
    cr_assert_geq(toks[i]->last_prefix_len, 4 + 32);
  }
  tk_pair_free(&t);
  /* Released once each, when the keystores went. */
  cr_assert_eq(atomic_load(&t.tok_a.released), c->token_a ? 1 : 0);
  cr_assert_eq(atomic_load(&t.tok_b.released), c->token_b ? 1 : 0);
}

/* A token holding another key fails like a wrong key, on both sides. */
Test(token_keys, wrong_key_in_the_token_fails_as_a_bad_key) {
  tk_pair t;
  tk_pair_init(&t, M2MPSK_TRANSPORT_TLS, (side){0, M2MPSK_ENGINE_AUTO},
               (side){1, M2MPSK_ENGINE_AUTO}, m2mt_key, m2mt_other_key, NULL);
  run(&t);
  cr_assert_eq(m2mpsk_assoc_state(t.p.a), M2MPSK_STATE_FAILED);
  cr_assert_eq(m2mpsk_assoc_state(t.p.b), M2MPSK_STATE_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(t.p.b), M2MPSK_REASON_BAD_KEY, "%s",
               m2mpsk_assoc_failure_detail(t.p.b));
  cr_assert_eq(atomic_load(&t.tok_b.calls), 1);
  tk_pair_free(&t);
}

/* A token that cannot compute fails the handshake; the engine never falls
 * back to its own PRF with the handle. */
Test(token_keys, a_failing_token_fails_the_handshake_with_a_reason) {
  for (int role = 0; role < 2; role++) {
    tk_pair t;
    crypto_load();
    tk_pair_init(&t, M2MPSK_TRANSPORT_TLS, (side){role == 0, 0},
                 (side){role == 1, 0}, m2mt_key, m2mt_key, NULL);
    /* Set before any flight moves: the first call fails. */
    t.tok_a.fail = t.tok_b.fail = 1;
    run(&t);
    m2mpsk_assoc *mine = role == 0 ? t.p.a : t.p.b;
    cr_assert_eq(m2mpsk_assoc_state(mine), M2MPSK_STATE_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(mine), M2MPSK_REASON_INTERNAL);
    cr_assert(strstr(m2mpsk_assoc_failure_detail(mine),
                     "could not compute the master secret") != NULL,
              "%s", m2mpsk_assoc_failure_detail(mine));
    cr_assert_neq(m2mpsk_assoc_state(role == 0 ? t.p.b : t.p.a),
                  M2MPSK_STATE_ESTABLISHED);
    tk_pair_free(&t);
  }
}

/* BoringSSL cannot use a token key: a config that insists on it gets a
 * failure that says so, not a handshake with the handle as the key. */
Test(token_keys, boringssl_refuses_a_token_key_with_a_reason,
     .disabled = SANITIZED) {
  skip_unless(M2MPSK_ENGINE_BORINGSSL);
  for (int role = 0; role < 2; role++) {
    tk_pair t;
    side a = {role == 0, role == 0 ? M2MPSK_ENGINE_BORINGSSL : 0};
    side b = {role == 1, role == 1 ? M2MPSK_ENGINE_BORINGSSL : 0};
    tk_pair_init(&t, M2MPSK_TRANSPORT_TLS, a, b, m2mt_key, m2mt_key,
                 "TLS_PSK_WITH_AES_128_CBC_SHA");
    run(&t);
    m2mpsk_assoc *mine = role == 0 ? t.p.a : t.p.b;
    cr_assert_eq(m2mpsk_assoc_engine(mine), M2MPSK_ENGINE_BORINGSSL);
    cr_assert_eq(m2mpsk_assoc_state(mine), M2MPSK_STATE_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(mine), M2MPSK_REASON_INTERNAL);
    cr_assert(strstr(m2mpsk_assoc_failure_detail(mine),
                     "only the OpenSSL engine can use") != NULL,
              "%s", m2mpsk_assoc_failure_detail(mine));
    cr_assert_eq(atomic_load(&(role == 0 ? &t.tok_a : &t.tok_b)->calls), 0);
    tk_pair_free(&t);
  }
}

/* A keystore created with M2MPSK_KEYSTORE_TOKEN_KEYS sends an AUTO
 * responder to OpenSSL even before it holds a token key. */
Test(token_keys, the_flag_chooses_openssl_for_responders) {
  skip_unless(M2MPSK_ENGINE_OPENSSL);
  m2mpsk_keystore *ks;
  m2mpsk_config *cfg;
  m2mpsk_assoc *b;
  cr_assert_eq(m2mpsk_keystore_new(&ks, M2MPSK_KEYSTORE_TOKEN_KEYS), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_engine(b), M2MPSK_ENGINE_OPENSSL);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(cfg);
  m2mpsk_keystore_free(ks);
  cr_assert_eq(m2mpsk_keystore_new(&ks, 4), M2MPSK_E_INVALID);
}

/* Removing the record ends the live association; the key is released
 * once the keystore and the handshakes are done with it. */
Test(token_keys, removal_ends_live_associations_and_releases_the_key) {
  tk_pair t;
  tk_pair_init(&t, M2MPSK_TRANSPORT_TLS, (side){0, 0}, (side){1, 0}, m2mt_key,
               m2mt_key, NULL);
  run(&t);
  assert_established(&t);
  cr_assert_eq(atomic_load(&t.tok_b.released), 0);
  cr_assert_eq(m2mpsk_keystore_remove(t.p.ks_b, M2MT_KPSA_ID), M2MPSK_OK);
  /* Nothing but the record held it: the handshake let go when it ended. */
  cr_assert_eq(atomic_load(&t.tok_b.released), 1);
  int rc = m2mpsk_assoc_handle_timeout(t.p.b, NOW0 + 1);
  cr_assert_eq(rc, M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(t.p.b), M2MPSK_REASON_REVOKED);
  tk_pair_free(&t);
  cr_assert_eq(atomic_load(&t.tok_b.released), 1);
}

/* An upsert over a token key replaces it and releases the old one. */
Test(token_keys, put_replaces_a_token_key) {
  soft_token tok;
  token_init(&tok, m2mt_key);
  m2mpsk_keystore *ks;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add_token_key(ks, M2MT_KPSA_ID, 32, OPS, &tok,
                                             NULL, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_put(ks, M2MT_KPSA_ID, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(atomic_load(&tok.released), 1);
  m2mpsk_keystore_free(ks);
  cr_assert_eq(atomic_load(&tok.released), 1);
}

/* ---- the API's errors -----------------------------------------------------
 */

Test(token_keys, add_token_key_errors) {
  soft_token tok;
  token_init(&tok, m2mt_key);
  m2mpsk_keystore *ks;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  const char *id = M2MT_KPSA_ID;
  char long_kpsa[300], long_id[700];
  memset(long_kpsa, 'a', sizeof(long_kpsa) - 20);
  strcpy(long_kpsa + sizeof(long_kpsa) - 20, "@example.com");
  strcpy(long_id, "//m2m.example.com/");
  memset(long_id + 18, 'x', sizeof(long_id) - 19);
  long_id[sizeof(long_id) - 1] = '\0';
  struct {
    m2mpsk_keystore *ks;
    const char *id;
    size_t len;
    m2mpsk_token_master_secret_fn fn;
    const char *ida, *idb;
    int64_t nb, na;
    int want;
  } cases[] = {
      {NULL, id, 32, soft_master_secret, NULL, M2MT_IDB, 0, 0,
       M2MPSK_E_INVALID},
      {ks, NULL, 32, soft_master_secret, NULL, M2MT_IDB, 0, 0,
       M2MPSK_E_INVALID},
      {ks, id, 32, NULL, NULL, M2MT_IDB, 0, 0, M2MPSK_E_INVALID}, /* no fn */
      {ks, id, 32, soft_master_secret, NULL, NULL, 0, 0, M2MPSK_E_INVALID},
      {ks, "no at sign", 32, soft_master_secret, NULL, M2MT_IDB, 0, 0,
       M2MPSK_E_KPSA_ID},
      {ks, long_kpsa, 32, soft_master_secret, NULL, M2MT_IDB, 0, 0,
       M2MPSK_E_KPSA_ID_LENGTH},
      {ks, id, 0, soft_master_secret, NULL, M2MT_IDB, 0, 0,
       M2MPSK_E_KEY_LENGTH},
      {ks, id, 65, soft_master_secret, NULL, M2MT_IDB, 0, 0,
       M2MPSK_E_KEY_LENGTH},
      {ks, id, 32, soft_master_secret, "not an id", M2MT_IDB, 0, 0,
       M2MPSK_E_IDA},
      {ks, id, 32, soft_master_secret, NULL, "cse-in", 0, 0, M2MPSK_E_IDB},
      {ks, id, 32, soft_master_secret, NULL, long_id, 0, 0, M2MPSK_E_ID_LENGTH},
      {ks, id, 32, soft_master_secret, NULL, M2MT_IDB, 20, 10,
       M2MPSK_E_VALIDITY},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int rc = m2mpsk_keystore_add_token_key(
        cases[i].ks, cases[i].id, cases[i].len, cases[i].fn, soft_release, &tok,
        cases[i].ida, cases[i].idb, cases[i].nb, cases[i].na);
    cr_assert_eq(rc, cases[i].want, "case %zu: %s, not %s", i,
                 m2mpsk_strerror(rc), m2mpsk_strerror(cases[i].want));
  }
  cr_assert_eq(m2mpsk_keystore_count(ks), 0, "a failed add changed nothing");
  cr_assert_eq(m2mpsk_keystore_add(ks, id, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add_token_key(ks, id, 32, OPS, &tok, NULL,
                                             M2MT_IDB, 0, 0),
               M2MPSK_E_DUPLICATE);
  m2mpsk_keystore_free(ks);
  /* Nothing the keystore refused is ever released by it. */
  cr_assert_eq(atomic_load(&tok.released), 0);
}

/* A key source answers with a token key; the waiting responder resumes. */
static void keep_request(void *arg, m2mpsk_key_request *req) {
  *(m2mpsk_key_request **)arg = req;
}

Test(token_keys, a_source_supplies_a_token_key) {
  crypto_load();
  skip_unless(M2MPSK_ENGINE_OPENSSL);
  soft_token tok;
  token_init(&tok, m2mt_key);
  m2mt_pair p;
  memset(&p, 0, sizeof(p));
  cr_assert_eq(m2mpsk_keystore_new(&p.ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&p.ks_b, M2MPSK_KEYSTORE_TOKEN_KEYS),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(p.ks_a, M2MT_KPSA_ID, m2mt_key, 32, M2MT_IDA,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, keep_request, &req, 4),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p.cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p.cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p.cfg_b, M2MT_IDB), M2MPSK_OK);
  if (SANITIZED)
    cr_assert_eq(m2mpsk_config_set_engine(p.cfg_a, M2MPSK_ENGINE_OPENSSL),
                 M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p.a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_TLS, p.cfg_a, p.ks_a,
                                M2MT_KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p.b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, p.cfg_b, p.ks_b, NULL),
               M2MPSK_OK);
  m2mt_pair_start(&p, NOW0, UNIX0);
  m2mt_link link = {.rng = 3};
  uint64_t now = NOW0;
  /* Bytes both ways until nothing moves (no timers): B waits for the key. */
  for (int i = 0; i < 64; i++) {
    int moved = m2mt_transfer(p.a, p.b, &link, now);
    moved += m2mt_transfer(p.b, p.a, &link, now);
    if (moved <= 0)
      break;
  }
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_WAITING_KEY,
               "state %d: %s", (int)m2mpsk_assoc_state(p.b),
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_not_null(req);
  /* The errors first: none of them answers the request. */
  cr_assert_eq(m2mpsk_key_request_supply_token_key(NULL, 32, OPS, &tok,
                                                   M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_key_request_supply_token_key(
                   req, 32, NULL, soft_release, &tok, M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_key_request_supply_token_key(req, 32, OPS, &tok, M2MT_IDA,
                                                   NULL, 0, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_key_request_supply_token_key(req, 99, OPS, &tok, M2MT_IDA,
                                                   M2MT_IDB, 0, 0),
               M2MPSK_E_KEY_LENGTH);
  cr_assert_eq(m2mpsk_key_request_answered(req), 0);
  cr_assert_eq(m2mpsk_key_request_supply_token_key(req, 32, OPS, &tok, M2MT_IDA,
                                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_supply_token_key(req, 32, OPS, &tok, M2MT_IDA,
                                                   M2MT_IDB, 0, 0),
               M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_OK);
  m2mt_run_handshake(p.a, p.b, &link, &now, 200);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(atomic_load(&tok.calls), 1);
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
  cr_assert_eq(atomic_load(&tok.released), 1);
}
