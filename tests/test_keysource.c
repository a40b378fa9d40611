/* Key sources (issue 19): key requests in the keystore, and associations
 * that wait for them, in both roles, on both engines, over TLS and DTLS. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "link.h"
#ifndef M2MPSK_KEYSOURCE_SHARED
/* The static test library: internals are reachable. The shared variant
 * (tests/engines: both engines, through libm2mpsk.so) runs only the tests
 * that use the public API. */
#include "internal.h"
#include "keystore.h"
#define INTERNAL_TESTS 1
#else
#define INTERNAL_TESTS 0
#endif

#define NOW0 1000000u
#define UNIX0 1800000000
#define TIMEOUT_MS 5000u
#define OTHER_ID "other@onem2m.com"

/* ---- a source that records what it is asked ------------------------------ */

typedef struct recorder {
  atomic_int calls;
  m2mpsk_key_request *reqs[16]; /* the callee's references */
  /* Optional: answer at once, from inside the callback (1: supply, 2:
   * supply_once). */
  int answer_now;
  m2mpsk_keystore *ks; /* checked from inside the callback */
  int lookup_rc;
} recorder;

static void record_fn(void *arg, m2mpsk_key_request *req) {
  recorder *r = arg;
  int i = atomic_fetch_add(&r->calls, 1);
  if (r->ks != NULL) {
    /* No keystore lock is held: these would deadlock otherwise. */
    r->lookup_rc = m2mpsk_keystore_lookup(r->ks, M2MT_KPSA_ID, NULL, 0, NULL, 0,
                                          NULL, NULL, NULL);
  }
  if (r->answer_now == 1) {
    cr_assert_eq(
        m2mpsk_key_request_supply(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB, 0, 0),
        M2MPSK_OK);
  } else if (r->answer_now == 2) {
    cr_assert_eq(m2mpsk_key_request_supply_once(req, m2mt_key, 32, M2MT_IDA,
                                                M2MT_IDB, 0, 0),
                 M2MPSK_OK);
  }
  if (i < 16)
    r->reqs[i] = req;
  else
    m2mpsk_key_request_free(req);
}

static void recorder_free(recorder *r) {
  int n = atomic_load(&r->calls);
  for (int i = 0; i < n && i < 16; i++)
    m2mpsk_key_request_free(r->reqs[i]);
  memset(r, 0, sizeof(*r));
}

/* ---- pairs --------------------------------------------------------------- */

typedef struct ks_param {
  m2mpsk_transport t;
  m2mpsk_engine_id engine;
} ks_param;

static const char *engine_name(m2mpsk_engine_id e) {
  return m2mpsk_engine_name(e);
}

static void skip_unless(m2mpsk_engine_id e) {
  if (e != M2MPSK_ENGINE_AUTO && !m2mpsk_engine_available(e))
    cr_skip_test("engine %s not available: %s", engine_name(e),
                 m2mpsk_backend_error());
}

/* Like m2mt_pair_init(), with an engine on both sides, and the record only
 * in the keystores named (have_a, have_b). */
static void pair_init(m2mt_pair *p, m2mpsk_engine_id e, int have_a,
                      int have_b) {
  memset(p, 0, sizeof(*p));
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_b, 0), M2MPSK_OK);
  if (have_a)
    cr_assert_eq(m2mpsk_keystore_add(p->ks_a, M2MT_KPSA_ID, m2mt_key, 32,
                                     M2MT_IDA, M2MT_IDB, 0, 0),
                 M2MPSK_OK);
  if (have_b)
    cr_assert_eq(m2mpsk_keystore_add(p->ks_b, M2MT_KPSA_ID, m2mt_key, 32,
                                     M2MT_IDA, M2MT_IDB, 0, 0),
                 M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p->cfg_b, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(p->cfg_a, TIMEOUT_MS),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(p->cfg_b, TIMEOUT_MS),
               M2MPSK_OK);
  if (e != M2MPSK_ENGINE_AUTO) {
    cr_assert_eq(m2mpsk_config_set_engine(p->cfg_a, e), M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_set_engine(p->cfg_b, e), M2MPSK_OK);
  }
}

static void pair_new(m2mt_pair *p, m2mpsk_transport t) {
  cr_assert_eq(m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, t, p->cfg_a,
                                p->ks_a, M2MT_KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER, t, p->cfg_b,
                                p->ks_b, NULL),
               M2MPSK_OK);
}

/* Moves bytes both ways until nothing moves; no timers. */
static void pump(m2mpsk_assoc *a, m2mpsk_assoc *b, m2mt_link *link,
                 uint64_t now) {
  for (int i = 0; i < 64; i++) {
    int moved = m2mt_transfer(a, b, link, now);
    moved += m2mt_transfer(b, a, link, now);
    if (moved <= 0)
      return;
  }
  cr_assert_fail("pump did not settle");
}

static int waiting(const m2mpsk_assoc *x) {
  return m2mpsk_assoc_state(x) == M2MPSK_STATE_WAITING_KEY;
}

static void expect_established(m2mt_pair *p) {
  cr_assert_eq(m2mpsk_assoc_state(p->a), M2MPSK_STATE_ESTABLISHED, "A: %s",
               m2mpsk_assoc_failure_detail(p->a));
  cr_assert_eq(m2mpsk_assoc_state(p->b), M2MPSK_STATE_ESTABLISHED, "B: %s",
               m2mpsk_assoc_failure_detail(p->b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p->a), M2MT_IDB);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p->b), M2MT_IDA);
  cr_assert_str_eq(m2mpsk_assoc_local_id(p->b), M2MT_IDB);
  cr_assert_str_eq(m2mpsk_assoc_kpsa_id(p->b), M2MT_KPSA_ID);
}

static void finish(m2mt_pair *p, uint64_t *now) {
  pump(p->a, p->b, NULL, *now);
  cr_assert_geq(m2mt_run_handshake(p->a, p->b, NULL, now, 200), 0);
}

/* Resumes the responder waiting for the answer and completes both sides. */
static void resume_to_established(m2mt_pair *p, uint64_t *now) {
  cr_assert_eq(m2mpsk_assoc_resume(p->b, *now), M2MPSK_OK);
  finish(p, now);
  expect_established(p);
}

ParameterizedTestParameters(keysource, responder_waits_then_supply) {
  static ks_param cases[] = {
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_OPENSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_OPENSSL},
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_AUTO},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_AUTO},
  };
  return cr_make_param_array(ks_param, cases, sizeof(cases) / sizeof(cases[0]));
}

/* The whole flow: the responder reads the identity, waits with the
 * client's flight unread, the source is asked once with the KpsaID and SNI,
 * the record comes, the handshake completes bound to the right identities. */
ParameterizedTest(ks_param *c, keysource, responder_waits_then_supply) {
  skip_unless(c->engine);
  m2mt_pair p;
  pair_init(&p, c->engine, 1, 0);
  recorder rec = {0};
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 8),
               M2MPSK_OK);
  pair_new(&p, c->t);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  pump(p.a, p.b, NULL, now);
  cr_assert(waiting(p.b), "B state %d: %s", m2mpsk_assoc_state(p.b),
            m2mpsk_assoc_failure_detail(p.b));
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_HANDSHAKING);
  cr_assert_eq(atomic_load(&rec.calls), 1);
  m2mpsk_key_request *req = rec.reqs[0];
  cr_assert_eq(m2mpsk_assoc_key_request(p.b), req);
  cr_assert_str_eq(m2mpsk_key_request_kpsa_id(req), M2MT_KPSA_ID);
  cr_assert_eq(m2mpsk_key_request_role(req), M2MPSK_ROLE_RESPONDER);
  char host[256];
  cr_assert_eq(m2mpsk_idb_server_name(M2MT_IDB, host, sizeof(host)), M2MPSK_OK);
  cr_assert_str_eq(m2mpsk_key_request_server_name(req), host);
  cr_assert_eq(m2mpsk_key_request_answered(req), 0);
  /* Still open: resume does nothing. Nothing new to send meanwhile. */
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_OK);
  cr_assert(waiting(p.b));
  cr_assert_eq(m2mpsk_assoc_pending(p.b), 0);
  uint8_t buf[64];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_drain(p.b, buf, sizeof(buf), &n), M2MPSK_E_AGAIN);
  uint64_t d = 0;
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.b, &d), M2MPSK_OK);
  cr_assert_eq(d, NOW0 + TIMEOUT_MS, "the handshake deadline covers the wait");

  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_answered(req), 1);
  cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 1);
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_OK);
  cr_assert_null(m2mpsk_assoc_key_request(p.b));
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_E_STATE);
  finish(&p, &now);
  expect_established(&p);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* TLS fed one byte at a time: the scanner reassembles the records. */
Test(keysource, responder_reads_identity_from_a_trickled_stream) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  recorder rec = {0};
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 8),
               M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  m2mt_link link = {.stream_chunk = 1, .rng = 1};
  uint64_t now = NOW0;
  pump(p.a, p.b, &link, now);
  cr_assert(waiting(p.b), "%s", m2mpsk_assoc_failure_detail(p.b));
  cr_assert_eq(m2mpsk_key_request_supply(rec.reqs[0], m2mt_key, 32, M2MT_IDA,
                                         M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_OK);
  pump(p.a, p.b, &link, now);
  expect_established(&p);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

ParameterizedTestParameters(keysource, absent_fails_like_a_wrong_key) {
  static ks_param cases[] = {
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_OPENSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_OPENSSL},
  };
  return cr_make_param_array(ks_param, cases, sizeof(cases) / sizeof(cases[0]));
}

/* What the client receives, as a list of TLS record types and lengths, so
 * that an absent record can be compared with a wrong key. */
typedef struct wire_log {
  char s[512];
} wire_log;

static void run_to_end(m2mt_pair *p, uint64_t *now, wire_log *w) {
  for (int step = 0; step < 400; step++) {
    uint8_t buf[17000];
    size_t n;
    int moved = 0;
    while (m2mpsk_assoc_drain(p->a, buf, sizeof(buf), &n) == M2MPSK_OK) {
      if (m2mpsk_assoc_state(p->b) != M2MPSK_STATE_FAILED)
        cr_assert_neq(m2mpsk_assoc_feed(p->b, buf, n, *now), M2MPSK_E_INVALID);
      moved = 1;
    }
    while (m2mpsk_assoc_drain(p->b, buf, sizeof(buf), &n) == M2MPSK_OK) {
      if (w != NULL) {
        size_t used = strlen(w->s);
        /* Content type and length of the first record of each write: the
         * shape of the server's flights. */
        snprintf(w->s + used, sizeof(w->s) - used, "%u/%zu ", buf[0], n);
      }
      if (m2mpsk_assoc_state(p->a) != M2MPSK_STATE_FAILED)
        cr_assert_neq(m2mpsk_assoc_feed(p->a, buf, n, *now), M2MPSK_E_INVALID);
      moved = 1;
    }
    if (!moved && (waiting(p->a) || waiting(p->b)))
      return; /* for the test to answer */
    m2mpsk_state sa = m2mpsk_assoc_state(p->a), sb = m2mpsk_assoc_state(p->b);
    if ((sa == M2MPSK_STATE_FAILED || sa == M2MPSK_STATE_ESTABLISHED) &&
        (sb == M2MPSK_STATE_FAILED || sb == M2MPSK_STATE_ESTABLISHED) && !moved)
      return;
    if (!moved) {
      uint64_t d;
      if (m2mpsk_assoc_next_timeout(p->a, &d) == M2MPSK_OK && d > *now)
        *now = d;
      int ra = m2mpsk_assoc_handle_timeout(p->a, *now);
      int rb = m2mpsk_assoc_handle_timeout(p->b, *now);
      cr_assert(ra != M2MPSK_E_INVALID && rb != M2MPSK_E_INVALID);
    }
  }
}

ParameterizedTest(ks_param *c, keysource, absent_fails_like_a_wrong_key) {
  skip_unless(c->engine);
  /* The same handshake with a wrong key, for comparison. */
  m2mt_pair w;
  pair_init(&w, c->engine, 1, 0);
  cr_assert_eq(m2mpsk_keystore_add(w.ks_b, M2MT_KPSA_ID, m2mt_other_key, 32,
                                   M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  pair_new(&w, c->t);
  m2mt_pair_start(&w, NOW0, UNIX0);
  uint64_t now = NOW0;
  wire_log wl = {{0}};
  run_to_end(&w, &now, c->t == M2MPSK_TRANSPORT_TLS ? &wl : NULL);
  cr_assert_eq(m2mpsk_assoc_failure(w.b), M2MPSK_REASON_BAD_KEY);
  m2mpsk_reason wrong_key_a = m2mpsk_assoc_failure(w.a);
  cr_assert_neq(wrong_key_a, M2MPSK_REASON_NONE);

  m2mt_pair p;
  pair_init(&p, c->engine, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 8), M2MPSK_OK);
  pair_new(&p, c->t);
  m2mt_pair_start(&p, NOW0, UNIX0);
  now = NOW0;
  wire_log al = {{0}};
  run_to_end(&p, &now, c->t == M2MPSK_TRANSPORT_TLS ? &al : NULL);
  cr_assert(waiting(p.b), "%s", m2mpsk_assoc_failure_detail(p.b));
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &req), M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_absent(req), M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_absent(req), M2MPSK_E_STATE);
  int rc = m2mpsk_assoc_resume(p.b, now);
  cr_assert(rc == M2MPSK_OK || rc == M2MPSK_E_FAILED);
  run_to_end(&p, &now, c->t == M2MPSK_TRANSPORT_TLS ? &al : NULL);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_UNKNOWN_IDENTITY, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_eq(m2mpsk_assoc_failure(p.a), wrong_key_a,
               "the client sees what a wrong key shows: %s vs %s",
               m2mpsk_reason_name(m2mpsk_assoc_failure(p.a)),
               m2mpsk_reason_name(wrong_key_a));
  if (c->t == M2MPSK_TRANSPORT_TLS)
    cr_assert_str_eq(al.s, wl.s, "server flights differ: %s vs %s", al.s, wl.s);
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
  m2mt_pair_free(&w);
}

ParameterizedTestParameters(keysource, initiator_waits_then_supply) {
  static ks_param cases[] = {
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_OPENSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_OPENSSL},
  };
  return cr_make_param_array(ks_param, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(ks_param *c, keysource, initiator_waits_then_supply) {
  skip_unless(c->engine);
  m2mt_pair p;
  pair_init(&p, c->engine, 0, 1);
  /* Without a source, an unknown KpsaID is refused at creation. */
  m2mpsk_assoc *x = NULL;
  cr_assert_eq(m2mpsk_assoc_new(&x, M2MPSK_ROLE_INITIATOR, c->t, p.cfg_a,
                                p.ks_a, M2MT_KPSA_ID),
               M2MPSK_E_NOT_FOUND);
  recorder rec = {0};
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_a, record_fn, &rec, 4),
               M2MPSK_OK);
  /* A malformed one still is, source or not. */
  cr_assert_eq(m2mpsk_assoc_new(&x, M2MPSK_ROLE_INITIATOR, c->t, p.cfg_a,
                                p.ks_a, "no-at-sign"),
               M2MPSK_E_KPSA_ID);
  pair_new(&p, c->t);
  cr_assert_eq(m2mpsk_assoc_start(p.b, NOW0, UNIX0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_OK);
  cr_assert(waiting(p.a));
  cr_assert_eq(m2mpsk_assoc_pending(p.a), 0, "no ClientHello yet");
  cr_assert_eq(atomic_load(&rec.calls), 1);
  m2mpsk_key_request *req = rec.reqs[0];
  cr_assert_eq(m2mpsk_assoc_key_request(p.a), req);
  cr_assert_eq(m2mpsk_key_request_role(req), M2MPSK_ROLE_INITIATOR);
  cr_assert_null(m2mpsk_key_request_server_name(req));
  uint64_t d;
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
  cr_assert_eq(d, NOW0 + TIMEOUT_MS);
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  uint64_t now = NOW0 + 10;
  cr_assert_eq(m2mpsk_assoc_resume(p.a, now), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_HANDSHAKING);
  cr_assert_gt(m2mpsk_assoc_pending(p.a), 0, "the ClientHello is queued");
  finish(&p, &now);
  expect_established(&p);
  cr_assert_str_eq(m2mpsk_assoc_local_id(p.a), M2MT_IDA);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

Test(keysource, initiator_absent_fails_unknown_identity) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 0, 1);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_a, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_OK);
  cr_assert(waiting(p.a));
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_a, &req), M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_absent(req), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_resume(p.a, NOW0 + 1), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_UNKNOWN_IDENTITY);
  cr_assert_eq(m2mpsk_assoc_pending(p.a), 0, "nothing was sent");
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
}

/* A record with a validity window that has passed: the initiator that
 * waited for it fails as a start with it would have. */
Test(keysource, initiator_supplied_expired_record_fails_expired) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 0, 1);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_a, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_OK);
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_a, &req), M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_supply(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB,
                                         1, UNIX0 - 10),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_resume(p.a, NOW0 + 1), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_EXPIRED);
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
}

/* ---- many waiters, late answers, time ------------------------------------ */

#define MANY 6

/* A pair of configs and keystores on engine e (the record only in A's), a
 * source recording into rec with max_pending 1, and n pairs over t made on
 * them, each responder waiting for M2MT_KPSA_ID. */
static void wait_n(m2mt_pair *p, recorder *rec, m2mpsk_engine_id e,
                   m2mpsk_transport t, int n, m2mpsk_assoc **as,
                   m2mpsk_assoc **bs) {
  pair_init(p, e, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p->ks_b, record_fn, rec, 1),
               M2MPSK_OK);
  for (int i = 0; i < n; i++) {
    cr_assert_eq(m2mpsk_assoc_new(&as[i], M2MPSK_ROLE_INITIATOR, t, p->cfg_a,
                                  p->ks_a, M2MT_KPSA_ID),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_new(&bs[i], M2MPSK_ROLE_RESPONDER, t, p->cfg_b,
                                  p->ks_b, NULL),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(bs[i], NOW0, UNIX0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(as[i], NOW0, UNIX0), M2MPSK_OK);
    pump(as[i], bs[i], NULL, NOW0);
    cr_assert(waiting(bs[i]), "%d: %s", i, m2mpsk_assoc_failure_detail(bs[i]));
  }
}

/* MANY TLS pairs on the default engine, as wait_n(). */
static void wait_many(m2mt_pair *p, recorder *rec, m2mpsk_assoc **as,
                      m2mpsk_assoc **bs) {
  wait_n(p, rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS, MANY, as, bs);
}

Test(keysource, many_associations_share_one_request) {
  m2mt_pair p;
  recorder rec = {0};
  m2mpsk_assoc *as[MANY], *bs[MANY];
  wait_many(&p, &rec, as, bs);
  /* One call, one request, although max_pending is 1. */
  cr_assert_eq(atomic_load(&rec.calls), 1);
  for (int i = 1; i < MANY; i++)
    cr_assert_eq(m2mpsk_assoc_key_request(bs[i]), rec.reqs[0]);
  /* One waiter gives up (freed): the others still wait on it. */
  m2mpsk_assoc_free(bs[0]);
  m2mpsk_assoc_free(as[0]);
  cr_assert_eq(m2mpsk_key_request_answered(rec.reqs[0]), 0);
  cr_assert_eq(m2mpsk_key_request_supply(rec.reqs[0], m2mt_key, 32, M2MT_IDA,
                                         M2MT_IDB, 0, 0),
               M2MPSK_OK);
  for (int i = 1; i < MANY; i++) {
    uint64_t now = NOW0 + 1;
    cr_assert_eq(m2mpsk_assoc_resume(bs[i], now), M2MPSK_OK);
    pump(as[i], bs[i], NULL, now);
    cr_assert_eq(m2mpsk_assoc_state(bs[i]), M2MPSK_STATE_ESTABLISHED, "%d", i);
    cr_assert_eq(m2mpsk_assoc_state(as[i]), M2MPSK_STATE_ESTABLISHED, "%d", i);
    m2mpsk_assoc_free(as[i]);
    m2mpsk_assoc_free(bs[i]);
  }
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

Test(keysource, late_answer_after_free_is_harmless) {
  for (int absent = 0; absent < 2; absent++) {
    m2mt_pair p;
    pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
    recorder rec = {0};
    cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 2),
                 M2MPSK_OK);
    pair_new(&p, M2MPSK_TRANSPORT_DTLS);
    m2mt_pair_start(&p, NOW0, UNIX0);
    pump(p.a, p.b, NULL, NOW0);
    cr_assert(waiting(p.b));
    m2mpsk_assoc_free(p.b);
    p.b = NULL;
    m2mpsk_assoc_free(p.a);
    p.a = NULL;
    if (absent) {
      cr_assert_eq(m2mpsk_key_request_absent(rec.reqs[0]), M2MPSK_OK);
      cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 0);
    } else {
      cr_assert_eq(m2mpsk_key_request_supply(rec.reqs[0], m2mt_key, 32,
                                             M2MT_IDA, M2MT_IDB, 0, 0),
                   M2MPSK_OK);
      cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 1, "the record is kept");
    }
    cr_assert_eq(m2mpsk_key_request_answered(rec.reqs[0]), 1);
    recorder_free(&rec);
    m2mt_pair_free(&p);
  }
}

#if INTERNAL_TESTS
Test(keysource, timeout_while_waiting) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_config_set_event_queue(p.cfg_b, 16), M2MPSK_OK);
  recorder rec = {0};
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 1),
               M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(p.b, "192.0.2.1:1"), M2MPSK_OK);
  m2mt_pair_start(&p, NOW0, UNIX0);
  pump(p.a, p.b, NULL, NOW0);
  cr_assert(waiting(p.b));
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(p.cfg_b), 1);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.b, NOW0 + TIMEOUT_MS - 1),
               M2MPSK_OK);
  cr_assert(waiting(p.b));
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.b, NOW0 + TIMEOUT_MS),
               M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_TIMEOUT);
  cr_assert_null(m2mpsk_assoc_key_request(p.b));
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(p.cfg_b), 0);
  m2mpsk_event *ev = NULL;
  cr_assert_eq(m2mpsk_config_next_event(p.cfg_b, &ev), M2MPSK_OK);
  cr_assert_eq(m2mpsk_event_get_type(ev), M2MPSK_EVENT_FAILED);
  cr_assert_eq(m2mpsk_event_reason(ev), M2MPSK_REASON_TIMEOUT);
  m2mpsk_event_free(ev);
  /* The host still holds the request: open, so max_pending (1) is full. */
  cr_assert_eq(m2mpsk_key_request_answered(rec.reqs[0]), 0);
  m2mpsk_key_request *kept = m2mpsk_key_request_ref(rec.reqs[0]);
  cr_assert_eq(kept, rec.reqs[0]);
  recorder_free(&rec); /* drops the callee's reference; ours remains */
  cr_assert_eq(m2mpsk_key_request_answered(kept), 0);
  /* Dropping the last host reference closes it: nobody waits. */
  m2mpsk_key_request_free(kept);
  /* So a new KpsaID gets a request again. */
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 1), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_request_key(p.ks_b, OTHER_ID,
                                           M2MPSK_ROLE_RESPONDER, NULL, &req),
               M2MPSK_KEYREQ_WAIT);
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
}
#endif

#if INTERNAL_TESTS
Test(keysource, max_pending_treats_the_rest_as_absent) {
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_set_source(ks, NULL, NULL, 2), M2MPSK_OK);
  m2mpsk_key_request *r1 = NULL, *r2 = NULL, *r3 = NULL, *j = NULL;
  cr_assert_eq(
      m2mpsk_keystore_request_key(ks, "a@b.c", M2MPSK_ROLE_RESPONDER, "h", &r1),
      M2MPSK_KEYREQ_WAIT);
  cr_assert_eq(m2mpsk_keystore_request_key(ks, "b@b.c", M2MPSK_ROLE_RESPONDER,
                                           NULL, &r2),
               M2MPSK_KEYREQ_WAIT);
  /* Full: a third KpsaID is not asked for... */
  cr_assert_eq(m2mpsk_keystore_request_key(ks, "c@b.c", M2MPSK_ROLE_RESPONDER,
                                           NULL, &r3),
               M2MPSK_KEYREQ_NONE);
  cr_assert_null(r3);
  /* ...but an open one can still be joined. */
  cr_assert_eq(
      m2mpsk_keystore_request_key(ks, "a@b.c", M2MPSK_ROLE_RESPONDER, NULL, &j),
      M2MPSK_KEYREQ_WAIT);
  cr_assert_eq(j, r1);
  /* Queue order. */
  m2mpsk_key_request *q = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(ks, &q), M2MPSK_OK);
  cr_assert_eq(q, r1);
  cr_assert_str_eq(m2mpsk_key_request_server_name(q), "h");
  m2mpsk_key_request *q2 = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(ks, &q2), M2MPSK_OK);
  cr_assert_eq(q2, r2);
  m2mpsk_key_request *q3 = r1;
  cr_assert_eq(m2mpsk_keystore_next_request(ks, &q3), M2MPSK_E_AGAIN);
  cr_assert_null(q3);
  /* One answered: room again. */
  cr_assert_eq(m2mpsk_key_request_absent(r2), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_request_key(ks, "c@b.c", M2MPSK_ROLE_RESPONDER,
                                           NULL, &r3),
               M2MPSK_KEYREQ_WAIT);
  /* A record present: no request. */
  m2mpsk_key_request *none = NULL;
  cr_assert_eq(
      m2mpsk_keystore_add(ks, "d@b.c", m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_request_key(ks, "d@b.c", M2MPSK_ROLE_RESPONDER,
                                           NULL, &none),
               M2MPSK_KEYREQ_PRESENT);
  cr_assert_null(none);
  m2mpsk_key_request_free(j);
  m2mpsk_key_request_free(r1);
  m2mpsk_key_request_free(q);
  m2mpsk_key_request_free(r2);
  m2mpsk_key_request_free(q2);
  m2mpsk_key_request_free(r3);
  m2mpsk_keystore_free(ks);
}
#endif

/* Freed requests serve the next ones (keysource.c keeps them): a request
 * made after others were freed carries its own KpsaID, server name and
 * state, and nothing of theirs: not a long server name (kept apart from
 * the request), not an answer given once, not an open or queued mark. */
#if INTERNAL_TESTS
Test(keysource, a_request_made_after_others_carries_only_its_own) {
  char long_sni[201];
  memset(long_sni, 'h', sizeof(long_sni) - 1);
  long_sni[sizeof(long_sni) - 1] = '\0';
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_set_source(ks, NULL, NULL, 4), M2MPSK_OK);
  static const char *const ids[] = {"a@b.c", "b@b.c", "c@b.c",
                                    "d@b.c", "e@b.c", "f@b.c"};
  for (int i = 0; i < 6; i++) {
    const char *sni = i % 3 == 0 ? long_sni : i % 3 == 1 ? NULL : "h";
    m2mpsk_key_request *r = NULL, *q = NULL;
    cr_assert_eq(
        m2mpsk_keystore_request_key(ks, ids[i], M2MPSK_ROLE_RESPONDER, sni, &r),
        M2MPSK_KEYREQ_WAIT);
    cr_assert_str_eq(m2mpsk_key_request_kpsa_id(r), ids[i]);
    if (sni == NULL)
      cr_assert_null(m2mpsk_key_request_server_name(r));
    else
      cr_assert_str_eq(m2mpsk_key_request_server_name(r), sni);
    cr_assert_eq(m2mpsk_key_request_answered(r), 0);
    cr_assert_eq(m2mpsk_key_request_given_once(r), 0);
    cr_assert_eq(m2mpsk_key_request_role(r), M2MPSK_ROLE_RESPONDER);
    /* Queued alone: the queue holds this request and no earlier one. */
    cr_assert_eq(m2mpsk_keystore_next_request(ks, &q), M2MPSK_OK);
    cr_assert_eq(q, r);
    m2mpsk_key_request *none = r;
    cr_assert_eq(m2mpsk_keystore_next_request(ks, &none), M2MPSK_E_AGAIN);
    /* Every other one is answered once, the rest absent. */
    if (i % 2 == 0) {
      cr_assert_eq(m2mpsk_key_request_supply_once(q, m2mt_key, 32, M2MT_IDA,
                                                  M2MT_IDB, 0, 0),
                   M2MPSK_OK);
      cr_assert_eq(m2mpsk_key_request_given_once(r), 1);
    } else {
      cr_assert_eq(m2mpsk_key_request_absent(q), M2MPSK_OK);
    }
    cr_assert_eq(m2mpsk_key_request_answered(r), 1);
    m2mpsk_key_request_free(q);
    m2mpsk_key_request_free(r);
  }
  cr_assert_eq(m2mpsk_keystore_count(ks), 0);
  m2mpsk_keystore_free(ks);
}
#endif

/* Past max_pending, a responder goes on at once as with an unknown
 * identity. */
#if INTERNAL_TESTS
Test(keysource, responder_past_max_pending_does_not_wait) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 1), M2MPSK_OK);
  m2mpsk_key_request *other = NULL;
  cr_assert_eq(m2mpsk_keystore_request_key(p.ks_b, OTHER_ID,
                                           M2MPSK_ROLE_RESPONDER, NULL, &other),
               M2MPSK_KEYREQ_WAIT);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_UNKNOWN_IDENTITY);
  m2mpsk_key_request *q = NULL, *q2 = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &q), M2MPSK_OK);
  cr_assert_eq(q, other, "only the first request was queued");
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &q2), M2MPSK_E_AGAIN);
  m2mpsk_key_request_free(q);
  m2mpsk_key_request_free(other);
  m2mt_pair_free(&p);
}
#endif

#if INTERNAL_TESTS
Test(keysource, removing_the_source_answers_absent) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  pump(p.a, p.b, NULL, NOW0);
  cr_assert(waiting(p.b));
  m2mpsk_key_request *req =
      m2mpsk_key_request_ref(m2mpsk_assoc_key_request(p.b));
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_answered(req), 1);
  /* The queue went with the source. */
  m2mpsk_key_request *q = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &q), M2MPSK_E_AGAIN);
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_STATE);
  uint64_t now = NOW0;
  int rc = m2mpsk_assoc_resume(p.b, now);
  cr_assert(rc == M2MPSK_OK || rc == M2MPSK_E_FAILED, "%s",
            m2mpsk_strerror(rc));
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_UNKNOWN_IDENTITY);
  m2mpsk_key_request_free(req);
  /* Without a source, a new handshake does not wait. */
  m2mpsk_key_request *none = NULL;
  cr_assert_eq(m2mpsk_keystore_request_key(p.ks_b, OTHER_ID,
                                           M2MPSK_ROLE_RESPONDER, NULL, &none),
               M2MPSK_KEYREQ_NONE);
  m2mt_pair_free(&p);
}
#endif

/* The callback runs with no keystore lock held: it can read the keystore
 * and answer at once, and the association then does not wait at all. */
Test(keysource, callback_may_answer_at_once_without_deadlock) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  recorder rec = {0};
  rec.answer_now = 1;
  rec.ks = p.ks_b;
  rec.lookup_rc = 1;
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 4),
               M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  finish(&p, &now);
  cr_assert_eq(rec.lookup_rc, M2MPSK_E_NOT_FOUND);
  cr_assert_eq(atomic_load(&rec.calls), 1);
  expect_established(&p);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* DTLS: the client retransmits its flight while the responder waits; the
 * datagrams are kept (up to a bound, the rest dropped like loss), and the
 * handshake completes once the key comes. */
Test(keysource, dtls_datagrams_arriving_while_waiting) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  recorder rec = {0};
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 4),
               M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_DTLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  pump(p.a, p.b, NULL, now);
  cr_assert(waiting(p.b));
  /* The client's retransmission timers fire a few times. */
  for (int i = 0; i < 4; i++) {
    uint64_t d;
    cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
    now = d > now ? d : now;
    if (now >= NOW0 + TIMEOUT_MS - 1)
      break;
    cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, now), M2MPSK_OK);
    pump(p.a, p.b, NULL, now);
    cr_assert(waiting(p.b));
    cr_assert_eq(m2mpsk_assoc_pending(p.b), 0, "no retransmission meanwhile");
  }
  /* And a burst of junk datagrams: bounded, never a failure. */
  uint8_t junk[100];
  memset(junk, 0x17, sizeof(junk));
  for (int i = 0; i < 50; i++)
    cr_assert_eq(m2mpsk_assoc_feed(p.b, junk, sizeof(junk), now), M2MPSK_OK);
  cr_assert(waiting(p.b));
  cr_assert_eq(m2mpsk_key_request_supply(rec.reqs[0], m2mt_key, 32, M2MT_IDA,
                                         M2MT_IDB, 0, 0),
               M2MPSK_OK);
  resume_to_established(&p, &now);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* TLS: input while waiting is held, bounded by max_input. */
Test(keysource, tls_input_while_waiting_is_bounded) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_config_set_max_input(p.cfg_b, M2MPSK_MAX_INPUT_MIN),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  pump(p.a, p.b, NULL, NOW0);
  cr_assert(waiting(p.b));
  static uint8_t big[M2MPSK_MAX_INPUT_MIN];
  int rc = M2MPSK_OK;
  for (int i = 0; i < 3 && rc == M2MPSK_OK; i++)
    rc = m2mpsk_assoc_feed(p.b, big, sizeof(big) / 2, NOW0);
  cr_assert_eq(rc, M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_LIMIT);
  m2mpsk_key_request *q = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &q), M2MPSK_OK);
  m2mpsk_key_request_free(q); /* nobody waits now: closed */
  m2mt_pair_free(&p);
}

/* Keystore destruction detaches requests: no cycle keeps it alive, and a
 * late answer is refused. */
Test(keysource, keystore_destruction_detaches_requests) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  pump(p.a, p.b, NULL, NOW0);
  cr_assert(waiting(p.b));
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &req), M2MPSK_OK);
  m2mt_pair_free(&p); /* the last keystore references go */
  cr_assert_eq(m2mpsk_key_request_answered(req), 1);
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_key_request_absent(req), M2MPSK_E_STATE);
  cr_assert_str_eq(m2mpsk_key_request_kpsa_id(req), M2MT_KPSA_ID);
  m2mpsk_key_request_free(req);
}

/* Answers from another thread, while the association's thread polls. */
static void *answer_later(void *arg) {
  m2mpsk_key_request *req = arg;
  struct timespec ts = {0, 20 * 1000 * 1000};
  nanosleep(&ts, NULL);
  int rc =
      m2mpsk_key_request_supply(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB, 0, 0);
  m2mpsk_key_request_free(req);
  return (void *)(intptr_t)rc;
}

Test(keysource, answer_from_another_thread, .timeout = 20) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  pump(p.a, p.b, NULL, NOW0);
  cr_assert(waiting(p.b));
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &req), M2MPSK_OK);
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, answer_later, req), 0);
  int spins = 0;
  while (m2mpsk_key_request_answered(m2mpsk_assoc_key_request(p.b)) == 0 &&
         spins++ < 10000) {
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  void *res;
  pthread_join(th, &res);
  cr_assert_eq((intptr_t)res, M2MPSK_OK);
  uint64_t now = NOW0 + 1;
  resume_to_established(&p, &now);
  m2mt_pair_free(&p);
}

/* ---- every documented status --------------------------------------------- */

Test(keysource_api, null_and_bad_arguments) {
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  recorder rec = {0};
  cr_assert_eq(m2mpsk_keystore_set_source(NULL, NULL, NULL, 1),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_set_source(ks, record_fn, &rec, 0),
               M2MPSK_E_INVALID);
  /* Removing a source never set is fine. */
  cr_assert_eq(m2mpsk_keystore_set_source(ks, NULL, NULL, 0), M2MPSK_OK);
  m2mpsk_key_request *out = (m2mpsk_key_request *)&rec;
  cr_assert_eq(m2mpsk_keystore_next_request(NULL, &out), M2MPSK_E_INVALID);
  cr_assert_null(out);
  cr_assert_eq(m2mpsk_keystore_next_request(ks, NULL), M2MPSK_E_INVALID);
  out = (m2mpsk_key_request *)&rec;
  cr_assert_eq(m2mpsk_keystore_next_request(ks, &out), M2MPSK_E_AGAIN);
  cr_assert_null(out);
  cr_assert_null(m2mpsk_key_request_kpsa_id(NULL));
  cr_assert_null(m2mpsk_key_request_server_name(NULL));
  cr_assert_eq(m2mpsk_key_request_role(NULL), M2MPSK_ROLE_RESPONDER);
  cr_assert_eq(m2mpsk_key_request_answered(NULL), M2MPSK_E_INVALID);
  cr_assert_eq(
      m2mpsk_key_request_supply(NULL, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_key_request_absent(NULL), M2MPSK_E_INVALID);
  cr_assert_null(m2mpsk_key_request_ref(NULL));
  m2mpsk_key_request_free(NULL);
  cr_assert_null(m2mpsk_assoc_key_request(NULL));
  cr_assert_eq(m2mpsk_assoc_resume(NULL, 0), M2MPSK_E_INVALID);
  m2mpsk_keystore_free(ks);
}

/* Answers with arguments m2mpsk_keystore_add() refuses, with
 * m2mpsk_key_request_supply() or (once) _supply_once(): each is refused
 * with add()'s code and leaves the request open. */
static void expect_bad_answers_refused(m2mpsk_key_request *req, int once) {
  char long_id[M2MPSK_ID_MAX + 2];
  memset(long_id, 'c', sizeof(long_id));
  long_id[0] = '/';
  long_id[sizeof(long_id) - 1] = '\0';
  struct {
    const char *what;
    const uint8_t *key;
    size_t key_len;
    const char *ida, *idb;
    int64_t nb, na;
    int rc;
  } cases[] = {
      {"NULL key", NULL, 32, NULL, M2MT_IDB, 0, 0, M2MPSK_E_INVALID},
      {"NULL idb", m2mt_key, 32, NULL, NULL, 0, 0, M2MPSK_E_INVALID},
      {"short key", m2mt_key, 15, NULL, M2MT_IDB, 0, 0, M2MPSK_E_KEY_LENGTH},
      {"long key", m2mt_key, M2MPSK_KEY_MAX + 1, NULL, M2MT_IDB, 0, 0,
       M2MPSK_E_KEY_LENGTH},
      {"bad ida", m2mt_key, 32, "/cse/Sx", M2MT_IDB, 0, 0, M2MPSK_E_IDA},
      {"bad idb", m2mt_key, 32, NULL, "/cse/C1", 0, 0, M2MPSK_E_IDB},
      {"long idb", m2mt_key, 32, NULL, long_id, 0, 0, M2MPSK_E_ID_LENGTH},
      {"window", m2mt_key, 32, NULL, M2MT_IDB, 20, 10, M2MPSK_E_VALIDITY},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int rc = once ? m2mpsk_key_request_supply_once(
                        req, cases[i].key, cases[i].key_len, cases[i].ida,
                        cases[i].idb, cases[i].nb, cases[i].na)
                  : m2mpsk_key_request_supply(
                        req, cases[i].key, cases[i].key_len, cases[i].ida,
                        cases[i].idb, cases[i].nb, cases[i].na);
    cr_expect_eq(rc, cases[i].rc, "%s", cases[i].what);
    cr_expect_eq(m2mpsk_key_request_answered(req), 0, "%s", cases[i].what);
  }
}

#if INTERNAL_TESTS
Test(keysource_api, supply_errors_leave_the_request_open) {
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_set_source(ks, NULL, NULL, 4), M2MPSK_OK);
  m2mpsk_key_request *w = NULL, *req = NULL;
  cr_assert_eq(m2mpsk_keystore_request_key(ks, M2MT_KPSA_ID,
                                           M2MPSK_ROLE_RESPONDER, NULL, &w),
               M2MPSK_KEYREQ_WAIT);
  cr_assert_eq(m2mpsk_keystore_next_request(ks, &req), M2MPSK_OK);
  expect_bad_answers_refused(req, 0);
  cr_assert_eq(m2mpsk_keystore_count(ks), 0);
  /* A record that appeared meanwhile wins; the request closes all the
   * same. */
  cr_assert_eq(m2mpsk_keystore_add(ks, M2MT_KPSA_ID, m2mt_other_key, 32, NULL,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_DUPLICATE);
  cr_assert_eq(m2mpsk_key_request_answered(req), 1);
  uint8_t got[M2MPSK_KEY_MAX];
  size_t got_len = 0;
  cr_assert_eq(m2mpsk_keystore_fetch(ks, M2MT_KPSA_ID, NULL, got, &got_len),
               M2MPSK_OK);
  cr_assert_arr_eq(got, m2mt_other_key, 32);
  /* Answered: every answer is E_STATE now. */
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_key_request_absent(req), M2MPSK_E_STATE);
  m2mpsk_key_request_free(req);
  m2mpsk_key_request_free(w);
  m2mpsk_keystore_free(ks);
}
#endif

Test(keysource_api, resume_and_key_request_outside_waiting) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 1);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_assoc_resume(p.a, NOW0), M2MPSK_E_STATE, "idle");
  cr_assert_null(m2mpsk_assoc_key_request(p.a));
  m2mt_pair_start(&p, NOW0, UNIX0);
  cr_assert_eq(m2mpsk_assoc_resume(p.a, NOW0), M2MPSK_E_STATE, "handshaking");
  uint64_t now = NOW0;
  finish(&p, &now);
  expect_established(&p);
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_E_STATE, "established");
  cr_assert_null(m2mpsk_assoc_key_request(p.b));
  m2mt_pair_free(&p);
}

/* A source that is set but not needed changes nothing: a known KpsaID
 * never waits and the source is never asked. */
Test(keysource, known_identity_never_waits) {
  for (int t = 0; t < 2; t++) {
    m2mt_pair p;
    pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 1);
    recorder rec = {0};
    cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 4),
                 M2MPSK_OK);
    pair_new(&p, (m2mpsk_transport)t);
    m2mt_pair_start(&p, NOW0, UNIX0);
    uint64_t now = NOW0;
    cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 200), 0);
    expect_established(&p);
    cr_assert_eq(atomic_load(&rec.calls), 0);
    m2mt_pair_free(&p);
  }
}

/* A revoked record is not asked for: it fails as revoked, as before. */
Test(keysource, revoked_record_is_not_asked_for) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 1);
  cr_assert_eq(m2mpsk_keystore_revoke(p.ks_b, M2MT_KPSA_ID), M2MPSK_OK);
  recorder rec = {0};
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 4),
               M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_REVOKED);
  cr_assert_eq(atomic_load(&rec.calls), 0);
  m2mt_pair_free(&p);
}

/* ---- identities the responder cannot read early -------------------------- */

/* Runs a TLS pair (record only at the initiator, source at the responder)
 * up to the client's second flight, lets `rewrite` change that flight, and
 * feeds it to the responder. Returns the responder's source calls. */
static int second_flight(m2mt_pair *p, recorder *rec,
                         size_t (*rewrite)(uint8_t *buf, size_t n,
                                           size_t cap)) {
  pair_init(p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p->ks_b, record_fn, rec, 4),
               M2MPSK_OK);
  pair_new(p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(p, NOW0, UNIX0);
  cr_assert_gt(m2mt_transfer(p->a, p->b, NULL, NOW0), 0); /* ClientHello */
  cr_assert_gt(m2mt_transfer(p->b, p->a, NULL, NOW0), 0); /* ServerHello.. */
  static uint8_t buf[8192];
  size_t n = 0, got;
  while (m2mpsk_assoc_drain(p->a, buf + n, sizeof(buf) - n, &got) == M2MPSK_OK)
    n += got;
  cr_assert_gt(n, 5);
  cr_assert_eq(buf[0], 22, "the flight starts with the ClientKeyExchange");
  n = rewrite(buf, n, sizeof(buf));
  int rc = m2mpsk_assoc_feed(p->b, buf, n, NOW0);
  cr_assert(rc == M2MPSK_OK || rc == M2MPSK_E_FAILED, "%s",
            m2mpsk_strerror(rc));
  return atomic_load(&rec->calls);
}

/* The ClientKeyExchange record split after its first 5 bytes (handshake
 * header and one byte of the identity's length). */
static size_t split_cke(uint8_t *buf, size_t n, size_t cap) {
  size_t rlen = (size_t)buf[3] << 8 | buf[4];
  cr_assert_lt(n + 5, cap);
  memmove(buf + 5 + 5 + 5, buf + 5 + 5, n - 10);
  /* First record: 5 body bytes. Second: the rest, own header. */
  buf[3] = 0;
  buf[4] = 5;
  uint8_t *h2 = buf + 10;
  h2[0] = 22;
  h2[1] = buf[1];
  h2[2] = buf[2];
  h2[3] = (uint8_t)((rlen - 5) >> 8);
  h2[4] = (uint8_t)(rlen - 5);
  return n + 5;
}

Test(keysource, split_identity_is_left_to_the_engine) {
  m2mt_pair p;
  recorder rec = {0};
  cr_assert_eq(second_flight(&p, &rec, split_cke), 0, "no request");
  cr_assert_neq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_WAITING_KEY);
  uint64_t now = NOW0;
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_UNKNOWN_IDENTITY, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* The identity's '@' replaced by a control character: malformed. */
static size_t garble_identity(uint8_t *buf, size_t n, size_t cap) {
  (void)cap;
  size_t id_len = (size_t)buf[9] << 8 | buf[10];
  uint8_t *at = memchr(buf + 11, '@', id_len);
  cr_assert_not_null(at);
  *at = 0x01;
  return n;
}

Test(keysource, malformed_identity_is_not_asked_for) {
  m2mt_pair p;
  recorder rec = {0};
  cr_assert_eq(second_flight(&p, &rec, garble_identity), 0, "no request");
  cr_assert_neq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_WAITING_KEY);
  uint64_t now = NOW0;
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_UNKNOWN_IDENTITY);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

static size_t unchanged(uint8_t *buf, size_t n, size_t cap) {
  (void)buf, (void)cap;
  return n;
}

/* The same flight unchanged is read: the control for the two above. */
Test(keysource, whole_identity_is_asked_for) {
  m2mt_pair p;
  recorder rec = {0};
  cr_assert_eq(second_flight(&p, &rec, unchanged), 1);
  cr_assert(waiting(p.b));
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* A KpsaID that the rate limiter blocks is refused as before, without
 * asking the source. */
Test(keysource, rate_limited_identity_is_not_asked_for) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  cr_assert_eq(m2mpsk_config_set_rate_limit(p.cfg_b, M2MPSK_RATE_KPSA_ID, 1,
                                            60000, 60000, 60000),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  run_to_end(&p, &now, NULL);
  cr_assert(waiting(p.b));
  /* The wait times out: one failure for this KpsaID, which blocks it. */
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.b, NOW0 + TIMEOUT_MS),
               M2MPSK_E_FAILED);
  m2mpsk_key_request *q = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &q), M2MPSK_OK);
  m2mpsk_key_request_free(q);
  m2mpsk_assoc_free(p.a);
  m2mpsk_assoc_free(p.b);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  now = NOW0 + TIMEOUT_MS + 1;
  m2mt_pair_start(&p, now, UNIX0);
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_RATE_LIMITED);
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &q), M2MPSK_E_AGAIN,
               "not asked for");
  m2mt_pair_free(&p);
}

/* An initiator whose source cannot take its request (removed since
 * creation, or full) fails at start, sending nothing. */
Test(keysource, initiator_start_without_room_fails_unknown_identity) {
  for (int removed = 0; removed < 2; removed++) {
    m2mt_pair p;
    pair_init(&p, M2MPSK_ENGINE_AUTO, 0, 1);
    recorder rec = {0};
    cr_assert_eq(m2mpsk_keystore_set_source(p.ks_a, record_fn, &rec, 1),
                 M2MPSK_OK);
    pair_new(&p, M2MPSK_TRANSPORT_TLS);
    m2mpsk_assoc *other = NULL;
    if (removed) {
      cr_assert_eq(m2mpsk_keystore_set_source(p.ks_a, NULL, NULL, 0),
                   M2MPSK_OK);
    } else {
      /* Another initiator's request fills max_pending (1). */
      cr_assert_eq(m2mpsk_assoc_new(&other, M2MPSK_ROLE_INITIATOR,
                                    M2MPSK_TRANSPORT_TLS, p.cfg_a, p.ks_a,
                                    OTHER_ID),
                   M2MPSK_OK);
      cr_assert_eq(m2mpsk_assoc_start(other, NOW0, UNIX0), M2MPSK_OK);
      cr_assert(waiting(other));
    }
    cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_E_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_UNKNOWN_IDENTITY);
    cr_assert_eq(m2mpsk_assoc_pending(p.a), 0);
    cr_assert_eq(atomic_load(&rec.calls), removed ? 0 : 1);
    m2mpsk_assoc_free(other);
    recorder_free(&rec);
    m2mt_pair_free(&p);
  }
}

/* SA2: the roles reversed, a responder that is Entity A waits and binds
 * IdB once the record comes. */
Test(keysource, roles_reversed_responder_waits) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  m2mpsk_config_free(p.cfg_a);
  m2mpsk_config_free(p.cfg_b);
  cr_assert_eq(m2mpsk_config_new(&p.cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p.cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_roles_reversed(p.cfg_a, 1), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_roles_reversed(p.cfg_b, 1), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, NULL, NULL, 4), M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  pump(p.a, p.b, NULL, now);
  cr_assert(waiting(p.b));
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p.ks_b, &req), M2MPSK_OK);
  cr_assert_null(m2mpsk_key_request_server_name(req), "no SNI in SA2");
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_OK);
  finish(&p, &now);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), M2MT_IDB);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.a), M2MT_IDA);
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
}

/* ---- the key that comes with an answer (handoff.c) ------------------------
 * The answer keeps a copy of its key for the associations that waited; the
 * first to resume takes it instead of reading it back from the closed
 * arena (a system call without protection keys). The copy is wiped once
 * taken, or when the request is freed. */

/* A responder waiting for M2MT_KPSA_ID, its request in rec->reqs[0]. */
static void wait_for_answer(m2mt_pair *p, recorder *rec, m2mpsk_engine_id e,
                            m2mpsk_transport t) {
  pair_init(p, e, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p->ks_b, record_fn, rec, 8),
               M2MPSK_OK);
  pair_new(p, t);
  m2mt_pair_start(p, NOW0, UNIX0);
  pump(p->a, p->b, NULL, NOW0);
  cr_assert(waiting(p->b), "B: %s", m2mpsk_assoc_failure_detail(p->b));
  cr_assert_eq(atomic_load(&rec->calls), 1);
}

static void free_assocs(m2mt_pair *p) {
  m2mpsk_assoc_free(p->a);
  m2mpsk_assoc_free(p->b);
  p->a = p->b = NULL;
}

#if INTERNAL_TESTS
static void supply(recorder *rec) {
  cr_assert_eq(m2mpsk_key_request_supply(rec->reqs[0], m2mt_key, 32, M2MT_IDA,
                                         M2MT_IDB, 0, 0),
               M2MPSK_OK);
}

ParameterizedTestParameters(keysource, answer_hands_its_key_to_the_responder) {
  static ks_param cases[] = {
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_OPENSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_OPENSSL},
  };
  return cr_make_param_array(ks_param, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(ks_param *c, keysource, answer_hands_its_key_to_the_responder) {
  skip_unless(c->engine);
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, c->engine, c->t);
  unsigned long taken = m2mpsk_handoff_debug_taken();
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0);
  cr_assert_not(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  supply(&rec);
  /* Kept for the waiting responder... */
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 1);
  cr_assert(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  uint64_t now = NOW0 + 1;
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_OK);
  /* ...which took it (its engine got the ClientKeyExchange on resume), and
   * the copy is gone while the host still holds the request. */
  cr_assert_eq(m2mpsk_handoff_debug_taken(), taken + 1);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0);
  cr_assert_not(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  finish(&p, &now);
  expect_established(&p);
  /* The record keeps its key in the arena for the next handshake. */
  free_assocs(&p);
  pair_new(&p, c->t);
  m2mt_pair_start(&p, now, UNIX0);
  finish(&p, &now);
  expect_established(&p);
  cr_assert_eq(m2mpsk_handoff_debug_taken(), taken + 1);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* Several responders wait for one KpsaID: the first to resume takes the
 * copy, the others read the arena; all of them complete. */
Test(keysource, answer_key_goes_to_the_first_responder_only) {
  m2mt_pair p;
  recorder rec = {0};
  m2mpsk_assoc *as[MANY], *bs[MANY];
  wait_many(&p, &rec, as, bs);
  unsigned long taken = m2mpsk_handoff_debug_taken();
  supply(&rec);
  for (int i = 0; i < MANY; i++) {
    cr_assert_eq(m2mpsk_assoc_resume(bs[i], NOW0 + 1), M2MPSK_OK);
    pump(as[i], bs[i], NULL, NOW0 + 1);
    cr_assert_eq(m2mpsk_assoc_state(bs[i]), M2MPSK_STATE_ESTABLISHED, "%d: %s",
                 i, m2mpsk_assoc_failure_detail(bs[i]));
    cr_assert_eq(m2mpsk_assoc_state(as[i]), M2MPSK_STATE_ESTABLISHED, "%d", i);
    cr_assert_eq(m2mpsk_handoff_debug_taken(), taken + 1, "%d", i);
    cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0, "%d", i);
    m2mpsk_assoc_free(as[i]);
    m2mpsk_assoc_free(bs[i]);
  }
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* The record is replaced between the answer and the resume: the copy is
 * for the old record (its serial), so it is wiped unused and the
 * responder reads the new record's key. */
Test(keysource, answer_key_for_a_replaced_record_is_not_used) {
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  unsigned long taken = m2mpsk_handoff_debug_taken();
  supply(&rec);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 1);
  cr_assert_eq(m2mpsk_keystore_remove(p.ks_b, M2MT_KPSA_ID), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(p.ks_b, M2MT_KPSA_ID, m2mt_other_key, 32,
                                   M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  uint64_t now = NOW0 + 1;
  /* The initiator still has the old key: the new record's key fails the
   * handshake at the client's Finished, which waited with its
   * ClientKeyExchange, as a wrong key does. Had the copy been used, it
   * would pass. */
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_handoff_debug_taken(), taken);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0, "wiped, not left behind");
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_BAD_KEY, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* Nobody takes the copy (the responder was freed before the answer): it is
 * wiped when the host frees the request. */
Test(keysource, answer_key_nobody_takes_is_wiped_with_the_request) {
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  free_assocs(&p);
  supply(&rec);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 1);
  cr_assert(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  recorder_free(&rec);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0);
  cr_assert_not(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  m2mt_pair_free(&p);
}

/* No free slot: the answer keeps no copy and the responder reads the
 * arena; nothing fails for it. */
Test(keysource, answer_without_a_free_slot_reads_the_arena) {
  m2mpsk_handoff_debug_limit(0);
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  unsigned long taken = m2mpsk_handoff_debug_taken();
  supply(&rec);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0);
  cr_assert_not(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  uint64_t now = NOW0 + 1;
  resume_to_established(&p, &now);
  cr_assert_eq(m2mpsk_handoff_debug_taken(), taken);
  recorder_free(&rec);
  m2mt_pair_free(&p);
  m2mpsk_handoff_debug_limit(~0u);
}
#endif

/* ---- answers given once (since 0.6) -------------------------------------- */

static void supply_once(m2mpsk_key_request *req, const char *ida,
                        int64_t not_after) {
  cr_assert_eq(m2mpsk_key_request_supply_once(req, m2mt_key, 32, ida, M2MT_IDB,
                                              0, not_after),
               M2MPSK_OK);
}

/* Waits for a responder of its own on the keystore of p (source set). */
static void wait_again(m2mt_pair *p, m2mpsk_transport t, uint64_t now) {
  pair_new(p, t);
  m2mt_pair_start(p, now, UNIX0);
  pump(p->a, p->b, NULL, now);
  cr_assert(waiting(p->b), "B: %s", m2mpsk_assoc_failure_detail(p->b));
}

ParameterizedTestParameters(keysource_once, serves_the_waiter_and_keeps_nothing) {
  static ks_param cases[] = {
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_TLS, M2MPSK_ENGINE_OPENSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_BORINGSSL},
      {M2MPSK_TRANSPORT_DTLS, M2MPSK_ENGINE_OPENSSL},
  };
  return cr_make_param_array(ks_param, cases, sizeof(cases) / sizeof(cases[0]));
}

/* The record serves the responder that waited, bound to the right
 * identities; the keystore never holds it, and the next handshake with the
 * same KpsaID asks the source again. */
ParameterizedTest(ks_param *c, keysource_once,
                  serves_the_waiter_and_keeps_nothing) {
  skip_unless(c->engine);
  m2mt_pair p;
  recorder rec = {0};
  pair_init(&p, c->engine, 1, 0);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 8),
               M2MPSK_OK);
  wait_again(&p, c->t, NOW0);
  supply_once(rec.reqs[0], M2MT_IDA, 0);
  cr_assert_eq(m2mpsk_key_request_answered(rec.reqs[0]), 1);
  cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 0);
  uint64_t now = NOW0 + 1;
  resume_to_established(&p, &now);
  cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 0, "nothing was kept");
  free_assocs(&p);
  wait_again(&p, c->t, now);
  cr_assert_eq(atomic_load(&rec.calls), 2, "asked again");
  supply_once(rec.reqs[1], M2MT_IDA, 0);
  resume_to_established(&p, &now);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* Without IdA the responder binds the Credential-ID, as with a record. */
Test(keysource_once, without_ida_binds_the_credential_id) {
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  supply_once(rec.reqs[0], NULL, 0);
  uint64_t now = NOW0 + 1;
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_OK);
  finish(&p, &now);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), "12-" M2MT_KPSA_ID);
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.b), 1);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* A wrong key given once fails like a wrong key. */
Test(keysource_once, a_wrong_key_fails_like_one) {
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_key_request_supply_once(rec.reqs[0], m2mt_other_key, 32,
                                              M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  uint64_t now = NOW0 + 1;
  cr_assert_eq(m2mpsk_assoc_resume(p.b, now), M2MPSK_E_FAILED);
  run_to_end(&p, &now, NULL);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_BAD_KEY, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* The callback answers at once, inside the feed that asked: the
 * handshake goes on without waiting. */
Test(keysource_once, callback_may_answer_at_once) {
  m2mt_pair p;
  pair_init(&p, M2MPSK_ENGINE_AUTO, 1, 0);
  recorder rec = {0};
  rec.answer_now = 2; /* supply_once */
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_b, record_fn, &rec, 8),
               M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_DTLS);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  finish(&p, &now);
  expect_established(&p);
  cr_assert_eq(atomic_load(&rec.calls), 1);
  cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 0);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* The keystore does not reach an association made from an answer given
 * once: changes to other records, and a revoke of its KpsaID (not found),
 * leave it up; its record's not_after still ends it. */
Test(keysource_once, association_follows_its_expiry_not_the_keystore) {
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  supply_once(rec.reqs[0], M2MT_IDA, UNIX0 + 60);
  uint64_t now = NOW0 + 1;
  resume_to_established(&p, &now);
  cr_assert_eq(m2mpsk_keystore_add(p.ks_b, OTHER_ID, m2mt_key, 32, NULL,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_revoke(p.ks_b, OTHER_ID), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_revoke(p.ks_b, M2MT_KPSA_ID),
               M2MPSK_E_NOT_FOUND);
  int rc = m2mpsk_assoc_handle_timeout(p.b, now + 1000);
  cr_assert(rc == M2MPSK_OK || rc == M2MPSK_E_AGAIN, "%d", rc);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.b, now + 61000), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_EXPIRED, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  recorder_free(&rec);
  m2mt_pair_free(&p);
}

/* Every error leaves the request open; an initiator's request is refused
 * (initiators keep their records), as are answers to closed requests. */
Test(keysource_once, errors_leave_the_request_open) {
  cr_assert_eq(m2mpsk_key_request_supply_once(NULL, m2mt_key, 32, NULL,
                                              M2MT_IDB, 0, 0),
               M2MPSK_E_INVALID);
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  m2mpsk_key_request *req = rec.reqs[0];
  expect_bad_answers_refused(req, 1);
  /* Still open: a good answer still works. */
  supply_once(req, M2MT_IDA, 0);
  cr_assert_eq(m2mpsk_key_request_supply_once(req, m2mt_key, 32, NULL,
                                              M2MT_IDB, 0, 0),
               M2MPSK_E_STATE, "answered once already");
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_STATE);
  uint64_t now = NOW0 + 1;
  resume_to_established(&p, &now);
  recorder_free(&rec);
  m2mt_pair_free(&p);

  /* An initiator's request. */
  pair_init(&p, M2MPSK_ENGINE_AUTO, 0, 1);
  cr_assert_eq(m2mpsk_keystore_set_source(p.ks_a, record_fn, &rec, 8),
               M2MPSK_OK);
  pair_new(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_OK);
  cr_assert(waiting(p.a));
  cr_assert_eq(m2mpsk_key_request_role(rec.reqs[0]), M2MPSK_ROLE_INITIATOR);
  cr_assert_eq(m2mpsk_key_request_supply_once(rec.reqs[0], m2mt_key, 32,
                                              M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_key_request_answered(rec.reqs[0]), 0);
  recorder_free(&rec);
  m2mt_pair_free(&p);

  /* Answered absent, then once: closed. Its keystore gone: closed. */
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_key_request_absent(rec.reqs[0]), M2MPSK_OK);
  cr_assert_eq(m2mpsk_key_request_supply_once(rec.reqs[0], m2mt_key, 32,
                                              M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_E_STATE);
  recorder_free(&rec);
  m2mt_pair_free(&p);
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  m2mpsk_key_request *kept = m2mpsk_key_request_ref(rec.reqs[0]);
  recorder_free(&rec);
  m2mt_pair_free(&p);
  cr_assert_eq(m2mpsk_key_request_supply_once(kept, m2mt_key, 32, M2MT_IDA,
                                              M2MT_IDB, 0, 0),
               M2MPSK_E_STATE);
  m2mpsk_key_request_free(kept);
}

#if INTERNAL_TESTS
/* Every waiter reads the key; it lives in its slot until the request goes,
 * and is then wiped. */
Test(keysource_once, waiters_share_the_key_until_the_request_goes) {
  m2mt_pair p;
  recorder rec = {0};
  m2mpsk_assoc *as[MANY], *bs[MANY];
  wait_many(&p, &rec, as, bs);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0);
  supply_once(rec.reqs[0], M2MT_IDA, 0);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 1);
  for (int i = 0; i < MANY; i++) {
    cr_assert_eq(m2mpsk_assoc_resume(bs[i], NOW0 + 1), M2MPSK_OK);
    pump(as[i], bs[i], NULL, NOW0 + 1);
    cr_assert_eq(m2mpsk_assoc_state(bs[i]), M2MPSK_STATE_ESTABLISHED, "%d: %s",
                 i, m2mpsk_assoc_failure_detail(bs[i]));
    cr_assert_eq(m2mpsk_assoc_state(as[i]), M2MPSK_STATE_ESTABLISHED, "%d", i);
    /* The host's reference holds the slot after the last waiter. */
    cr_assert_eq(m2mpsk_handoff_debug_in_use(), 1, "%d", i);
    cr_assert(m2mpsk_handoff_debug_contains(m2mt_key, 32), "%d", i);
  }
  recorder_free(&rec);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0);
  cr_assert_not(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 0);
  for (int i = 0; i < MANY; i++) {
    m2mpsk_assoc_free(as[i]);
    m2mpsk_assoc_free(bs[i]);
  }
  m2mt_pair_free(&p);
}

/* The waiter is freed before it resumed: the key goes with the request. */
Test(keysource_once, key_nobody_reads_is_wiped_with_the_request) {
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_DTLS);
  supply_once(rec.reqs[0], M2MT_IDA, 0);
  cr_assert(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  free_assocs(&p);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 1, "the host still holds it");
  recorder_free(&rec);
  cr_assert_eq(m2mpsk_handoff_debug_in_use(), 0);
  cr_assert_not(m2mpsk_handoff_debug_contains(m2mt_key, 32));
  m2mt_pair_free(&p);
}

/* No slot left for the key: M2MPSK_E_LIMIT, the request stays open, and
 * an ordinary answer still works (it keeps its key in the arena). */
Test(keysource_once, without_a_slot_is_refused_with_limit) {
  m2mt_pair p;
  recorder rec = {0};
  wait_for_answer(&p, &rec, M2MPSK_ENGINE_AUTO, M2MPSK_TRANSPORT_TLS);
  m2mpsk_handoff_debug_limit(0);
  cr_assert_eq(m2mpsk_key_request_supply_once(rec.reqs[0], m2mt_key, 32,
                                              M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_E_LIMIT);
  cr_assert_eq(m2mpsk_key_request_answered(rec.reqs[0]), 0);
  supply(&rec);
  m2mpsk_handoff_debug_limit(~0u);
  uint64_t now = NOW0 + 1;
  resume_to_established(&p, &now);
  cr_assert_eq(m2mpsk_keystore_count(p.ks_b), 1);
  recorder_free(&rec);
  m2mt_pair_free(&p);
}
#endif

/* ---- what a waiting responder holds -------------------------------------- */

#define HELD_PAIRS 16

/* Heap bytes held per responder waiting for a key, on engine e and
 * transport t: HELD_PAIRS responders wait (one request), and half of the
 * responders are freed and weighed; the other pairs then get the answer
 * and complete, so the engine takes back whatever it released for the
 * wait. 0 when the heap is not glibc's (ASan, valgrind). */
static size_t held_while_waiting(m2mpsk_engine_id e, m2mpsk_transport t) {
  m2mt_pair p;
  recorder rec = {0};
  m2mpsk_assoc *as[HELD_PAIRS], *bs[HELD_PAIRS];
  wait_n(&p, &rec, e, t, HELD_PAIRS, as, bs);
  size_t before = mallinfo2().uordblks;
  for (int i = 0; i < HELD_PAIRS / 2; i++)
    m2mpsk_assoc_free(bs[i]);
  size_t after = mallinfo2().uordblks;
  for (int i = 0; i < HELD_PAIRS / 2; i++)
    m2mpsk_assoc_free(as[i]);
  size_t per = before > after ? (before - after) / (HELD_PAIRS / 2) : 0;
  cr_assert_eq(atomic_load(&rec.calls), 1);
  cr_assert_eq(m2mpsk_key_request_supply(rec.reqs[0], m2mt_key, 32, M2MT_IDA,
                                         M2MT_IDB, 0, 0),
               M2MPSK_OK);
  for (int i = HELD_PAIRS / 2; i < HELD_PAIRS; i++) {
    m2mt_pair one = p;
    one.a = as[i];
    one.b = bs[i];
    uint64_t now = NOW0 + 1;
    resume_to_established(&one, &now);
    m2mpsk_assoc_free(bs[i]);
    m2mpsk_assoc_free(as[i]);
  }
  recorder_free(&rec);
  m2mt_pair_free(&p);
  return per;
}

/* OpenSSL keeps a DTLS connection's record buffers (two of about 17 KiB)
 * for its whole life: SSL_MODE_RELEASE_BUFFERS frees them only for TLS. A
 * responder waiting for a key gives them back (engine op `rest`), so a
 * slow source costs no more memory per waiter over DTLS than over TLS.
 * Measured on OpenSSL 3.0.x: 76 KB per waiting DTLS responder before,
 * 41 KB after; TLS 40 KB; BoringSSL 4 KB either way. */
Test(keysource, waiting_responder_holds_no_record_buffers) {
#if defined(__SANITIZE_ADDRESS__)
  cr_skip_test("the heap is ASan's: mallinfo2() does not weigh it");
#endif
  int measured = 0;
  for (int e = M2MPSK_ENGINE_BORINGSSL; e <= M2MPSK_ENGINE_OPENSSL; e++) {
    if (!m2mpsk_engine_available((m2mpsk_engine_id)e))
      continue;
    size_t tls = held_while_waiting((m2mpsk_engine_id)e, M2MPSK_TRANSPORT_TLS);
    size_t dtls =
        held_while_waiting((m2mpsk_engine_id)e, M2MPSK_TRANSPORT_DTLS);
    cr_log_info("%s: %zu bytes per waiting TLS responder, %zu DTLS",
                engine_name((m2mpsk_engine_id)e), tls, dtls);
    if (tls < 1024)
      cr_skip_test("the heap is not glibc's (%zu bytes per TLS responder)",
                   tls);
    cr_assert_leq(dtls, tls + 8192,
                  "%s: a waiting DTLS responder holds %zu bytes, a TLS one "
                  "%zu",
                  engine_name((m2mpsk_engine_id)e), dtls, tls);
    measured++;
  }
  cr_assert_gt(measured, 0, "no engine available");
}
