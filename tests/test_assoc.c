/* The association: handshakes in both roles over TLS and DTLS, refusals,
 * lossy links, application data, garbage, and timers. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keystore.h"
#include "link.h"

#define NOW0 1000000u
#define UNIX0 1800000000 /* 2027-01-15 */

static const char *const k_suites[] = {
    "TLS_PSK_WITH_AES_128_CBC_SHA",
    "TLS_PSK_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
};

/* The backend this build has (-DM2MPSK_TLS): a few facts differ. */
static int backend_is(const char *name) {
  return strcmp(m2mpsk_backend_name(), name) == 0;
}

typedef struct hs_case {
  m2mpsk_transport transport;
  int suite;
} hs_case;

ParameterizedTestParameters(assoc, handshake_binds_identities) {
  static hs_case cases[10];
  for (int i = 0; i < 10; i++) {
    cases[i].transport = i < 5 ? M2MPSK_TRANSPORT_TLS : M2MPSK_TRANSPORT_DTLS;
    cases[i].suite = i % 5;
  }
  return cr_make_param_array(hs_case, cases, 10);
}

ParameterizedTest(hs_case *c, assoc, handshake_binds_identities) {
  m2mt_pair p;
  m2mt_pair_init(&p, c->transport, m2mt_key, m2mt_key, M2MT_IDA,
                 k_suites[c->suite]);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED, "A: %s",
               m2mpsk_assoc_failure_detail(p.a));
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "B: %s",
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.a), M2MT_IDB);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), M2MT_IDA);
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.b), 0);
  cr_assert_str_eq(m2mpsk_assoc_local_id(p.a), M2MT_IDA);
  cr_assert_str_eq(m2mpsk_assoc_local_id(p.b), M2MT_IDB);
  cr_assert_str_eq(m2mpsk_assoc_kpsa_id(p.a), M2MT_KPSA_ID);
  cr_assert_str_eq(m2mpsk_assoc_kpsa_id(p.b), M2MT_KPSA_ID);
  cr_assert_str_eq(m2mpsk_assoc_suite(p.a), k_suites[c->suite]);
  cr_assert_str_eq(m2mpsk_assoc_suite(p.b), k_suites[c->suite]);
  const char *v = c->transport == M2MPSK_TRANSPORT_TLS ? "TLSv1.2" : "DTLSv1.2";
  cr_assert_str_eq(m2mpsk_assoc_version(p.a), v);
  cr_assert_str_eq(m2mpsk_assoc_version(p.b), v);
  uint8_t ka[32], kb[32];
  cr_assert_eq(m2mpsk_assoc_export(p.a, ka, 32, "EXPORTER-test", NULL, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_export(p.b, kb, 32, "EXPORTER-test", NULL, 0),
               M2MPSK_OK);
  cr_assert_arr_eq(ka, kb, 32);
  m2mt_pair_free(&p);
}

Test(assoc, default_suites_are_plain_psk) {
  for (int t = 0; t < 2; t++) {
    m2mt_pair p;
    m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
    m2mt_pair_start(&p, NOW0, UNIX0);
    uint64_t now = NOW0;
    m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
    /* OpenSSL has TS-0003's mandated suites: the default puts the one
     * for the transport first (TS-0003 profile, src/profile.c). */
    const char *want = !backend_is("openssl") ? "TLS_PSK_WITH_AES_128_CBC_SHA"
                       : t == M2MPSK_TRANSPORT_TLS
                           ? "TLS_PSK_WITH_AES_128_CBC_SHA256"
                           : "TLS_PSK_WITH_AES_128_CCM_8";
    cr_assert_str_eq(m2mpsk_assoc_suite(p.a), want);
    m2mt_pair_free(&p);
  }
}

/* Every suite the backend lists completes a handshake over TLS and DTLS,
 * and both sides report it by its IANA name. */
Test(assoc, every_listed_suite_handshakes_on_both_transports, .timeout = 120) {
  cr_assert_gt(m2mpsk_suite_count(), 0);
  for (size_t i = 0; i < m2mpsk_suite_count(); i++) {
    const char *suite = m2mpsk_suite_name(i);
    for (int t = 0; t < 2; t++) {
      m2mt_pair p;
      m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, M2MT_IDA,
                     suite);
      m2mt_pair_start(&p, NOW0, UNIX0);
      uint64_t now = NOW0;
      m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
      cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED,
                   "%s over %s: A %s", suite, t ? "DTLS" : "TLS",
                   m2mpsk_assoc_failure_detail(p.a));
      cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED,
                   "%s over %s: B %s", suite, t ? "DTLS" : "TLS",
                   m2mpsk_assoc_failure_detail(p.b));
      cr_assert_str_eq(m2mpsk_assoc_suite(p.a), suite);
      cr_assert_str_eq(m2mpsk_assoc_suite(p.b), suite);
      m2mt_pair_free(&p);
    }
  }
}

Test(assoc, exporter_differs_by_label_and_context) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  uint8_t x[16], y[16], z[16], w[16];
  const uint8_t ctx[3] = {1, 2, 3};
  cr_assert_eq(m2mpsk_assoc_export(p.a, x, 16, "label-one", NULL, 0), 0);
  cr_assert_eq(m2mpsk_assoc_export(p.a, y, 16, "label-two", NULL, 0), 0);
  cr_assert_eq(m2mpsk_assoc_export(p.a, z, 16, "label-one", ctx, 3), 0);
  cr_assert_eq(m2mpsk_assoc_export(p.b, w, 16, "label-one", ctx, 3), 0);
  cr_assert(memcmp(x, y, 16) != 0);
  cr_assert(memcmp(x, z, 16) != 0);
  cr_assert_arr_eq(z, w, 16);
  m2mt_pair_free(&p);
}

Test(assoc, responder_binds_credential_id_without_ida) {
  for (int t = 0; t < 2; t++) {
    m2mt_pair p;
    m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, NULL, NULL);
    m2mt_pair_start(&p, NOW0, UNIX0);
    uint64_t now = NOW0;
    cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
    cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), "12-" M2MT_KPSA_ID);
    cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.b), 1);
    cr_assert_str_eq(m2mpsk_assoc_peer_id(p.a), M2MT_IDB);
    cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.a), 0);
    cr_assert_null(m2mpsk_assoc_local_id(p.a));
    m2mt_pair_free(&p);
  }
}

Test(assoc, identities_unbound_before_established) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_IDLE);
  m2mt_pair_start(&p, NOW0, UNIX0);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_HANDSHAKING);
  cr_assert_null(m2mpsk_assoc_peer_id(p.a));
  cr_assert_null(m2mpsk_assoc_peer_id(p.b));
  cr_assert_null(m2mpsk_assoc_suite(p.a));
  cr_assert_null(m2mpsk_assoc_version(p.b));
  cr_assert_null(m2mpsk_assoc_kpsa_id(p.b));
  uint8_t out[8];
  cr_assert_eq(m2mpsk_assoc_export(p.a, out, 8, "x", NULL, 0), M2MPSK_E_STATE);
  m2mt_pair_free(&p);
}

/* ---- refusals ------------------------------------------------------------ */

typedef struct refusal_result {
  m2mpsk_reason a, b;
  /* What B put on the wire: record types and lengths, in order. */
  char wire_b[256];
} refusal_result;

/* Records the content type and length of each record B sends (TLS). */
static void note_wire(char *dst, size_t cap, const uint8_t *d, size_t n) {
  while (n >= 5) {
    size_t len = ((size_t)d[3] << 8) | d[4];
    size_t used = strlen(dst);
    snprintf(dst + used, cap - used, "%u/%zu ", d[0], len);
    if (len + 5 > n)
      break;
    d += 5 + len;
    n -= 5 + len;
  }
}

/* Runs A against B by hand so that B's bytes can be recorded. */
static refusal_result run_refusal(m2mt_pair *p, m2mpsk_transport t) {
  refusal_result r;
  memset(&r, 0, sizeof(r));
  uint64_t now = NOW0;
  int ra = m2mpsk_assoc_start(p->b, now, UNIX0);
  cr_assert_eq(ra, M2MPSK_OK);
  if (m2mpsk_assoc_start(p->a, now, UNIX0) == M2MPSK_OK) {
    for (int step = 0; step < 400; step++) {
      uint8_t buf[17000];
      size_t n;
      int moved = 0;
      while (m2mpsk_assoc_drain(p->a, buf, sizeof(buf), &n) == M2MPSK_OK) {
        int rc = m2mpsk_assoc_feed(p->b, buf, n, now);
        cr_assert_neq(rc, M2MPSK_E_INVALID); /* failures show in the state */
        moved = 1;
      }
      while (m2mpsk_assoc_drain(p->b, buf, sizeof(buf), &n) == M2MPSK_OK) {
        if (t == M2MPSK_TRANSPORT_TLS)
          note_wire(r.wire_b, sizeof(r.wire_b), buf, n);
        int rc = m2mpsk_assoc_feed(p->a, buf, n, now);
        cr_assert_neq(rc, M2MPSK_E_INVALID);
        moved = 1;
      }
      if (m2mpsk_assoc_state(p->a) != M2MPSK_STATE_HANDSHAKING &&
          m2mpsk_assoc_state(p->b) != M2MPSK_STATE_HANDSHAKING)
        break;
      if (!moved) {
        uint64_t d;
        if (m2mpsk_assoc_next_timeout(p->a, &d) == M2MPSK_OK && d > now)
          now = d;
        int rta = m2mpsk_assoc_handle_timeout(p->a, now);
        int rtb = m2mpsk_assoc_handle_timeout(p->b, now);
        cr_assert(rta != M2MPSK_E_INVALID && rtb != M2MPSK_E_INVALID);
      }
    }
  }
  r.a = m2mpsk_assoc_failure(p->a);
  r.b = m2mpsk_assoc_failure(p->b);
  cr_assert_eq(m2mpsk_assoc_state(p->a), M2MPSK_STATE_FAILED);
  if (r.b != M2MPSK_REASON_NONE)
    cr_assert_eq(m2mpsk_assoc_state(p->b), M2MPSK_STATE_FAILED);
  cr_assert_null(m2mpsk_assoc_peer_id(p->a));
  cr_assert_null(m2mpsk_assoc_peer_id(p->b));
  return r;
}

/* Runs the pair and checks each side's reason. */
static refusal_result run_refusal(m2mt_pair *p, m2mpsk_transport t);
static void expect_refusal(m2mt_pair *p, m2mpsk_transport t, m2mpsk_reason a,
                           m2mpsk_reason b) {
  refusal_result r = run_refusal(p, t);
  cr_assert_eq(r.a, a, "A: %s (%s)", m2mpsk_reason_name(r.a),
               m2mpsk_assoc_failure_detail(p->a));
  cr_assert_eq(r.b, b, "B: %s (%s)", m2mpsk_reason_name(r.b),
               m2mpsk_assoc_failure_detail(p->b));
}

typedef struct transport_param {
  m2mpsk_transport t;
} transport_param;

static transport_param k_transports[] = {{M2MPSK_TRANSPORT_TLS},
                                         {M2MPSK_TRANSPORT_DTLS}};

/* Runs a ParameterizedTest once over TLS and once over DTLS. */
#define BOTH_TRANSPORTS(suite, name)                                           \
  ParameterizedTestParameters(suite, name) {                                   \
    return cr_make_param_array(transport_param, k_transports, 2);              \
  }

/* Replaces the KpsaID's record in `ks` with one made of these values. */
static void replace_record(m2mpsk_keystore *ks, const char *kpsa_id,
                           const uint8_t *key, const char *ida, const char *idb,
                           int64_t not_before, int64_t not_after) {
  cr_assert_eq(m2mpsk_keystore_remove(ks, M2MT_KPSA_ID), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(ks, kpsa_id, key, 32, ida, idb, not_before,
                                   not_after),
               M2MPSK_OK);
}

/* Rebuilds the initiator after its record changed (creation checks it). */
static void renew_initiator(m2mt_pair *p, m2mpsk_transport t) {
  m2mpsk_assoc_free(p->a);
  cr_assert_eq(m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, t, p->cfg_a,
                                p->ks_a, M2MT_KPSA_ID),
               M2MPSK_OK);
}

BOTH_TRANSPORTS(refusal, wrong_key)

ParameterizedTest(transport_param *tp, refusal, wrong_key) {
  m2mt_pair p;
  m2mt_pair_init(&p, tp->t, m2mt_key, m2mt_other_key, M2MT_IDA, NULL);
  expect_refusal(&p, tp->t, M2MPSK_REASON_BAD_KEY, M2MPSK_REASON_BAD_KEY);
  cr_assert_str_neq(m2mpsk_assoc_failure_detail(p.b), "");
  m2mt_pair_free(&p);
}

/* B has the same key under another KpsaID. */
static void make_unknown(m2mt_pair *p) {
  cr_assert_eq(m2mpsk_keystore_remove(p->ks_b, M2MT_KPSA_ID), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(p->ks_b, "other@onem2m.com", m2mt_key, 32,
                                   M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
}

BOTH_TRANSPORTS(refusal, unknown_kpsa_id)

ParameterizedTest(transport_param *tp, refusal, unknown_kpsa_id) {
  m2mt_pair p;
  m2mt_pair_init(&p, tp->t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  make_unknown(&p);
  refusal_result r = run_refusal(&p, tp->t);
  cr_assert_eq(r.b, M2MPSK_REASON_UNKNOWN_IDENTITY, "B: %s",
               m2mpsk_assoc_failure_detail(p.b));
  /* On the wire it is a wrong key. */
  cr_assert_eq(r.a, M2MPSK_REASON_BAD_KEY, "A: %s",
               m2mpsk_assoc_failure_detail(p.a));
  cr_assert(strstr(m2mpsk_assoc_failure_detail(p.b), M2MT_KPSA_ID) != NULL);
  m2mt_pair_free(&p);
}

Test(refusal, unknown_kpsa_id_looks_like_wrong_key_on_the_wire) {
  m2mt_pair p, q;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  make_unknown(&p);
  refusal_result unknown = run_refusal(&p, M2MPSK_TRANSPORT_TLS);
  m2mt_pair_init(&q, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_other_key, M2MT_IDA,
                 NULL);
  refusal_result wrong = run_refusal(&q, M2MPSK_TRANSPORT_TLS);
  cr_assert_str_neq(unknown.wire_b, "");
  cr_assert_str_eq(unknown.wire_b, wrong.wire_b);
  /* The last record is the bad_record_mac alert (type 21, 2 bytes). */
  cr_assert(strstr(wrong.wire_b, "21/2 ") != NULL, "%s", wrong.wire_b);
  m2mt_pair_free(&p);
  m2mt_pair_free(&q);
}

Test(refusal, reveal_option_sends_unknown_psk_identity) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  /* The config is frozen by assoc_new, so build B again. */
  m2mpsk_assoc_free(p.b);
  m2mpsk_config_free(p.cfg_b);
  cr_assert_eq(m2mpsk_config_new(&p.cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p.cfg_b, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_reveal_unknown_identity(p.cfg_b, 1),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p.b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, p.cfg_b, p.ks_b, NULL),
               M2MPSK_OK);
  make_unknown(&p);
  refusal_result r = run_refusal(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(r.b, M2MPSK_REASON_UNKNOWN_IDENTITY);
  cr_assert_eq(r.a, M2MPSK_REASON_UNKNOWN_IDENTITY, "A: %s",
               m2mpsk_assoc_failure_detail(p.a));
  m2mt_pair_free(&p);
}

BOTH_TRANSPORTS(refusal, idb_mismatch_by_sni)

/* A expects another CSE, in another SP, than the one it reached. */
ParameterizedTest(transport_param *tp, refusal, idb_mismatch_by_sni) {
  m2mt_pair p;
  m2mt_pair_init(&p, tp->t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_a, M2MT_KPSA_ID, m2mt_key, M2MT_IDA,
                 "//other.example.org/cse-in", 0, 0);
  renew_initiator(&p, tp->t);
  expect_refusal(&p, tp->t, M2MPSK_REASON_ID_MISMATCH,
                 M2MPSK_REASON_ID_MISMATCH);
  m2mt_pair_free(&p);
}

BOTH_TRANSPORTS(refusal, idb_not_served)

/* B holds the key, but for another of the SP's CSEs. */
ParameterizedTest(transport_param *tp, refusal, idb_not_served) {
  m2mt_pair p;
  m2mt_pair_init(&p, tp->t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_b, M2MT_KPSA_ID, m2mt_key, M2MT_IDA,
                 "//m2m.example.com/cse-mn", 0, 0);
  expect_refusal(&p, tp->t, M2MPSK_REASON_BAD_KEY, M2MPSK_REASON_ID_MISMATCH);
  m2mt_pair_free(&p);
}

Test(refusal, responder_serves_several_identities_by_sni) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mpsk_assoc_free(p.b);
  m2mpsk_config_free(p.cfg_b);
  cr_assert_eq(m2mpsk_config_new(&p.cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p.cfg_b, "//iot.example.net/cse-1"),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p.cfg_b, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p.b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, p.cfg_b, p.ks_b, NULL),
               M2MPSK_OK);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  cr_assert_str_eq(m2mpsk_assoc_local_id(p.b), M2MT_IDB);
  m2mt_pair_free(&p);
}

BOTH_TRANSPORTS(refusal, expired_record_at_responder)

ParameterizedTest(transport_param *tp, refusal, expired_record_at_responder) {
  m2mt_pair p;
  m2mt_pair_init(&p, tp->t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_b, M2MT_KPSA_ID, m2mt_key, M2MT_IDA, M2MT_IDB,
                 UNIX0 - 1000, UNIX0 - 1);
  expect_refusal(&p, tp->t, M2MPSK_REASON_BAD_KEY, M2MPSK_REASON_EXPIRED);
  m2mt_pair_free(&p);
}

Test(refusal, not_yet_valid_record_at_responder) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_b, M2MT_KPSA_ID, m2mt_key, M2MT_IDA, M2MT_IDB,
                 UNIX0 + 100, 0);
  refusal_result r = run_refusal(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(r.b, M2MPSK_REASON_EXPIRED);
  cr_assert(strstr(m2mpsk_assoc_failure_detail(p.b), "not valid yet"));
  m2mt_pair_free(&p);
}

Test(refusal, expired_record_at_initiator_fails_before_sending) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_a, M2MT_KPSA_ID, m2mt_key, M2MT_IDA, M2MT_IDB, 0,
                 UNIX0 - 1);
  renew_initiator(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_EXPIRED);
  cr_assert_eq(m2mpsk_assoc_pending(p.a), 0);
  m2mt_pair_free(&p);
}

Test(refusal, expiry_uses_wall_clock_advanced_by_monotonic_time) {
  /* Valid at start, expired 10 s later when B finally gets the key. */
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_b, M2MT_KPSA_ID, m2mt_key, M2MT_IDA, M2MT_IDB, 0,
                 UNIX0 + 5);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0 + 10000;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_EXPIRED);
  m2mt_pair_free(&p);
}

BOTH_TRANSPORTS(refusal, removed_record_at_responder)

ParameterizedTest(transport_param *tp, refusal, removed_record_at_responder) {
  m2mt_pair p;
  m2mt_pair_init(&p, tp->t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_keystore_remove(p.ks_b, M2MT_KPSA_ID), M2MPSK_OK);
  expect_refusal(&p, tp->t, M2MPSK_REASON_BAD_KEY,
                 M2MPSK_REASON_UNKNOWN_IDENTITY);
  m2mt_pair_free(&p);
}

Test(refusal, revoked_record_at_responder) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_keystore_revoke(p.ks_b, M2MT_KPSA_ID), M2MPSK_OK);
  refusal_result r = run_refusal(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(r.b, M2MPSK_REASON_REVOKED);
  cr_assert_eq(r.a, M2MPSK_REASON_BAD_KEY);
  m2mt_pair_free(&p);
}

Test(refusal, removed_record_at_initiator) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_keystore_remove(p.ks_a, M2MT_KPSA_ID), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_REVOKED);
  m2mt_pair_free(&p);
}

Test(refusal, record_replaced_after_creation_counts_as_revoked) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_a, M2MT_KPSA_ID, m2mt_other_key, M2MT_IDA, M2MT_IDB, 0,
                 0);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_REVOKED);
  m2mt_pair_free(&p);
}

Test(refusal, removed_at_initiator_during_handshake) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  /* ClientHello is out; the key is read only at ClientKeyExchange. */
  cr_assert_eq(m2mpsk_keystore_remove(p.ks_a, M2MT_KPSA_ID), M2MPSK_OK);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_REVOKED);
  cr_assert_neq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  m2mt_pair_free(&p);
}

/* ---- DTLS over a lossy link ---------------------------------------------- */

Test(dtls, lossy_link_completes_through_retransmission) {
  int completed = 0;
  size_t dropped = 0, dups = 0, reorders = 0;
  for (uint32_t seed = 1; seed <= 40; seed++) {
    m2mt_pair p;
    m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA,
                   NULL);
    m2mt_pair_start(&p, NOW0, UNIX0);
    m2mt_link link = {.drop_pct = 25,
                      .dup_pct = 20,
                      .reorder_pct = 30,
                      .rng = seed * 2654435761u};
    uint64_t now = NOW0;
    int steps = m2mt_run_handshake(p.a, p.b, &link, &now, 2000);
    cr_assert_geq(steps, 0, "seed %u did not settle", seed);
    cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED,
                 "seed %u: A %s", seed, m2mpsk_assoc_failure_detail(p.a));
    cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED,
                 "seed %u: B %s", seed, m2mpsk_assoc_failure_detail(p.b));
    cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), M2MT_IDA);
    completed++;
    dropped += link.dropped;
    dups += link.duplicated;
    reorders += link.reordered;
    m2mt_pair_free(&p);
  }
  cr_assert_eq(completed, 40);
  /* The link really was lossy. */
  cr_assert_gt(dropped, 10);
  cr_assert_gt(dups, 5);
  cr_assert_gt(reorders, 3);
}

Test(dtls, dead_link_ends_in_timeout) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  m2mt_link link = {.drop_all = 1, .rng = 7};
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, &link, &now, 2000), 0);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_TIMEOUT);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_TIMEOUT);
  /* Retransmissions happened before giving up at the 60 s default. */
  cr_assert_gt(link.dropped, 3);
  cr_assert_geq(now - NOW0, 60000);
  cr_assert_lt(now - NOW0, 61000);
  uint64_t d;
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_E_AGAIN);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, now + 1), M2MPSK_E_FAILED);
  m2mt_pair_free(&p);
}

Test(dtls, retransmission_timer_is_reported_and_honoured) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint8_t buf[2048];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_E_AGAIN);
  uint64_t d;
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
  cr_assert_eq(d, NOW0 + 1000, "first retransmission after 1 s, got %llu",
               (unsigned long long)(d - NOW0));
  /* Early: nothing happens (BoringSSL rounds the last 15 ms up). */
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d - 100), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_pending(p.a), 0);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d), M2MPSK_OK);
  cr_assert_gt(m2mpsk_assoc_pending(p.a), 0, "ClientHello retransmitted");
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
  cr_assert_eq(d, NOW0 + 1000 + 2000, "back-off doubles");
  m2mt_pair_free(&p);
}

/* A DTLS responder keeps the flight that completed its handshake until the
 * client shows it has it (since 0.5 in a block of its own size, not the
 * 1 KiB it was collected in): when that flight is lost, the client's
 * retransmitted last flight brings it again, and the handshake completes.
 * The responder runs on the engine of this executable (the OpenSSL one in
 * the OpenSSL backend's build, where the copy is m2mpsk's own). */
Test(dtls, lost_last_flight_comes_again) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  for (int i = 0; i < 20 && m2mpsk_assoc_state(p.b) != M2MPSK_STATE_ESTABLISHED;
       i++) {
    m2mt_transfer(p.a, p.b, NULL, now);
    if (m2mpsk_assoc_state(p.b) != M2MPSK_STATE_ESTABLISHED)
      m2mt_transfer(p.b, p.a, NULL, now);
  }
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  /* The responder's last flight is lost. */
  m2mt_link lost = {.drop_all = 1};
  m2mt_transfer(p.b, p.a, &lost, now);
  cr_assert_gt(lost.dropped, 0);
  cr_assert_neq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  uint64_t d;
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
  now = d;
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, now), M2MPSK_OK);
  if (m2mpsk_assoc_engine(p.b) == M2MPSK_ENGINE_OPENSSL) {
    /* OpenSSL itself answers only a retransmitted Finished; the kept copy
     * answers the epoch-0 ChangeCipherSpec too. Only that record of the
     * client's retransmission arrives here. */
    uint8_t dg[2048];
    size_t len;
    int ccs = 0;
    while (m2mpsk_assoc_drain(p.a, dg, sizeof(dg), &len) == M2MPSK_OK) {
      for (size_t off = 0; off + 13 <= len;) {
        size_t rec = 13 + ((size_t)dg[off + 11] << 8 | dg[off + 12]);
        if (off + rec > len)
          break;
        if (dg[off] == 20 && dg[off + 3] == 0 && dg[off + 4] == 0) {
          cr_assert_eq(m2mpsk_assoc_feed(p.b, dg + off, rec, now), M2MPSK_OK);
          ccs++;
        }
        off += rec;
      }
    }
    cr_assert_eq(ccs, 1, "the client resends its ChangeCipherSpec");
  } else {
    cr_assert_gt(m2mt_transfer(p.a, p.b, NULL, now), 0, "the client resends");
  }
  /* A host reads after it feeds: the engine handles the handshake records
   * it is given there, as any record. Nothing for the application. */
  size_t w, n;
  uint8_t buf[64];
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, sizeof(buf), &n), M2MPSK_E_AGAIN);
  cr_assert_gt(m2mt_transfer(p.b, p.a, NULL, now), 0, "so does the server (%s)",
               m2mpsk_engine_name(m2mpsk_assoc_engine(p.b)));
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(p.a));
  /* Data flows once the client has spoken (the kept flight then goes). */
  cr_assert_eq(m2mpsk_assoc_write(p.a, (const uint8_t *)"ping", 4, &w),
               M2MPSK_OK);
  m2mt_transfer(p.a, p.b, NULL, now);
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, sizeof(buf), &n), M2MPSK_OK);
  cr_assert_eq(n, 4);
  cr_assert_eq(memcmp(buf, "ping", 4), 0);
  m2mt_pair_free(&p);
}

Test(dtls, mtu_bounds_datagrams) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_assoc_set_mtu(p.a, 100), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_set_mtu(p.a, 256), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_set_mtu(p.b, 256), M2MPSK_OK);
  m2mt_pair_start(&p, NOW0, UNIX0);
  cr_assert_eq(m2mpsk_assoc_set_mtu(p.a, 512), M2MPSK_E_STATE);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  /* A small buffer is refused and the datagram stays queued. */
  size_t w, n;
  uint8_t msg[200] = {0}, small[16], big[2048];
  cr_assert_eq(m2mpsk_assoc_write(p.a, msg, sizeof(msg), &w), M2MPSK_OK);
  size_t pending = m2mpsk_assoc_pending(p.a);
  cr_assert_gt(pending, sizeof(small));
  cr_assert_eq(m2mpsk_assoc_drain(p.a, small, sizeof(small), &n),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_assoc_pending(p.a), pending);
  cr_assert_eq(m2mpsk_assoc_drain(p.a, big, sizeof(big), &n), M2MPSK_OK);
  cr_assert_eq(n, pending);
  m2mt_pair_free(&p);
}

Test(dtls, tls_association_has_no_mtu) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_assoc_set_mtu(p.a, 1200), M2MPSK_E_INVALID);
  m2mt_pair_free(&p);
}

/* ---- handshake timeout over TLS ------------------------------------------ */

Test(timeout, tls_handshake_deadline) {
  m2mpsk_config *cfg;
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(cfg, 0), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(cfg, 3600001),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(cfg, 5000), M2MPSK_OK);
  m2mpsk_assoc *a;
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                cfg, p.ks_a, M2MT_KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(cfg, 6000), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_start(a, NOW0, UNIX0), M2MPSK_OK);
  uint64_t d;
  cr_assert_eq(m2mpsk_assoc_next_timeout(a, &d), M2MPSK_OK);
  cr_assert_eq(d, NOW0 + 5000);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(a, NOW0 + 4999), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_HANDSHAKING);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(a, NOW0 + 5000), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(a), M2MPSK_REASON_TIMEOUT);
  cr_assert_str_neq(m2mpsk_assoc_failure_detail(a), "");
  m2mpsk_assoc_free(a);
  m2mpsk_config_free(cfg);
  m2mt_pair_free(&p);
}

/* ---- application data ---------------------------------------------------- */

static void established_pair(m2mt_pair *p, m2mpsk_transport t) {
  m2mt_pair_init(p, t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(p, NOW0, UNIX0);
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(p->a, p->b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p->a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p->b), M2MPSK_STATE_ESTABLISHED);
}

/* Sends `len` bytes from x to y over TLS in mixed write sizes and checks
 * they arrive intact. */
static void stream_megabyte(m2mpsk_assoc *x, m2mpsk_assoc *y, size_t len) {
  uint8_t *src = malloc(len), *dst = malloc(len);
  cr_assert(src && dst);
  for (size_t i = 0; i < len; i++)
    src[i] = (uint8_t)(i * 31 + (i >> 11));
  size_t sent = 0, got = 0;
  size_t sizes[] = {1, 700, 16384, 40000, 3};
  int k = 0;
  while (got < len) {
    if (sent < len) {
      size_t n = sizes[k++ % 5];
      if (n > len - sent)
        n = len - sent;
      size_t w;
      cr_assert_eq(m2mpsk_assoc_write(x, src + sent, n, &w), M2MPSK_OK);
      cr_assert_eq(w, n);
      sent += n;
    }
    m2mt_transfer(x, y, NULL, NOW0);
    while (got < len) {
      size_t n;
      int rc = m2mpsk_assoc_read(y, dst + got, len - got, &n);
      if (rc == M2MPSK_E_AGAIN)
        break;
      cr_assert_eq(rc, M2MPSK_OK, "read: %s (%s)", m2mpsk_strerror(rc),
                   m2mpsk_assoc_failure_detail(y));
      got += n;
    }
  }
  cr_assert_eq(got, len);
  cr_assert_arr_eq(src, dst, len);
  free(src);
  free(dst);
}

Test(appdata, tls_megabyte_each_way_then_close_notify_both_ways) {
  m2mt_pair p;
  established_pair(&p, M2MPSK_TRANSPORT_TLS);
  stream_megabyte(p.a, p.b, 1 << 20);
  stream_megabyte(p.b, p.a, 1 << 20);

  uint8_t buf[64];
  size_t n, w;
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, sizeof(buf), &n), M2MPSK_E_AGAIN);
  cr_assert_eq(m2mpsk_assoc_close(p.a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_CLOSED);
  cr_assert_eq(m2mpsk_assoc_write(p.a, buf, 1, &w), M2MPSK_E_CLOSED);
  cr_assert_eq(m2mpsk_assoc_close(p.a), M2MPSK_OK, "closing twice is fine");
  m2mt_transfer(p.a, p.b, NULL, NOW0);
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, sizeof(buf), &n), M2MPSK_E_CLOSED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_CLOSED);
  /* B may still send before answering with its own close_notify. */
  cr_assert_eq(m2mpsk_assoc_write(p.b, (const uint8_t *)"bye", 3, &w),
               M2MPSK_E_CLOSED);
  cr_assert_eq(m2mpsk_assoc_close(p.b), M2MPSK_OK);
  m2mt_transfer(p.b, p.a, NULL, NOW0);
  cr_assert_eq(m2mpsk_assoc_read(p.a, buf, sizeof(buf), &n), M2MPSK_E_CLOSED);
  /* The binding outlives the close, for logs. */
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), M2MT_IDA);
  cr_assert_eq(m2mpsk_assoc_feed(p.a, buf, 1, NOW0), M2MPSK_E_STATE);
  m2mt_pair_free(&p);
}

Test(appdata, half_close_lets_the_peer_finish_sending) {
  m2mt_pair p;
  established_pair(&p, M2MPSK_TRANSPORT_TLS);
  uint8_t buf[64];
  size_t n, w;
  cr_assert_eq(m2mpsk_assoc_close(p.a), M2MPSK_OK);
  m2mt_transfer(p.a, p.b, NULL, NOW0);
  /* B has not read the close yet, so it can still write. */
  cr_assert_eq(m2mpsk_assoc_write(p.b, (const uint8_t *)"last", 4, &w),
               M2MPSK_OK);
  m2mt_transfer(p.b, p.a, NULL, NOW0);
  cr_assert_eq(m2mpsk_assoc_read(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  cr_assert_eq(n, 4);
  cr_assert_arr_eq(buf, "last", 4);
  m2mt_pair_free(&p);
}

Test(appdata, tls_byte_at_a_time_input) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  m2mt_link link = {.stream_chunk = 1};
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, &link, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  m2mt_pair_free(&p);
}

Test(appdata, dtls_datagrams_both_ways_and_close_notify) {
  m2mt_pair p;
  established_pair(&p, M2MPSK_TRANSPORT_DTLS);
  uint8_t msg[1024], buf[2048];
  size_t w, n;
  for (int i = 0; i < 200; i++) {
    memset(msg, i, sizeof(msg));
    m2mpsk_assoc *x = i % 2 ? p.a : p.b, *y = i % 2 ? p.b : p.a;
    cr_assert_eq(m2mpsk_assoc_write(x, msg, sizeof(msg), &w), M2MPSK_OK);
    m2mt_transfer(x, y, NULL, NOW0);
    cr_assert_eq(m2mpsk_assoc_read(y, buf, sizeof(buf), &n), M2MPSK_OK);
    cr_assert_eq(n, sizeof(msg));
    cr_assert_arr_eq(buf, msg, sizeof(msg));
  }
  cr_assert_eq(m2mpsk_assoc_write(p.a, msg, 16385, &w), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_close(p.a), M2MPSK_OK);
  m2mt_transfer(p.a, p.b, NULL, NOW0);
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, sizeof(buf), &n), M2MPSK_E_CLOSED);
  cr_assert_eq(m2mpsk_assoc_close(p.b), M2MPSK_OK);
  m2mt_transfer(p.b, p.a, NULL, NOW0);
  cr_assert_eq(m2mpsk_assoc_read(p.a, buf, sizeof(buf), &n), M2MPSK_E_CLOSED);
  m2mt_pair_free(&p);
}

Test(appdata, tampered_record_fails_the_association) {
  m2mt_pair p;
  established_pair(&p, M2MPSK_TRANSPORT_TLS);
  size_t w, n;
  uint8_t buf[256];
  cr_assert_eq(m2mpsk_assoc_write(p.a, (const uint8_t *)"hello", 5, &w),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  buf[n - 1] ^= 1;
  cr_assert_eq(m2mpsk_assoc_feed(p.b, buf, n, NOW0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, sizeof(buf), &n), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_BAD_KEY);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_FAILED);
  /* Failed: only drain (the alert) and free remain. */
  uint8_t alert[128], scratch[8]; /* one alert record, any suite's MAC */
  size_t alert_len;
  cr_assert_eq(m2mpsk_assoc_drain(p.b, alert, sizeof(alert), &alert_len),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_write(p.b, scratch, 1, &w), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_read(p.b, scratch, 1, &n), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_feed(p.b, scratch, 1, NOW0), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_close(p.b), M2MPSK_E_STATE);
  cr_assert_null(m2mpsk_assoc_peer_id(p.b));
  /* A learns of it from the alert. */
  cr_assert_eq(m2mpsk_assoc_feed(p.a, alert, alert_len, NOW0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_read(p.a, buf, sizeof(buf), &n), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_BAD_KEY);
  m2mt_pair_free(&p);
}

/* ---- garbage and truncation ---------------------------------------------- */

static uint32_t xs(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* ---- a responder's first input: garbage of known shape -------------------
 * Each kind is built so that what the responder must do follows from its
 * shape alone; the bytes that do not decide it are random (a fixed seed). */
typedef enum junk_kind {
  JUNK_SHORT,      /* less than a record header */
  JUNK_TYPE,       /* a record header whose content type is none of TLS's */
  JUNK_OVERSIZED,  /* a handshake record longer than the protocol allows */
  JUNK_INCOMPLETE, /* a handshake record header, and part of its body */
  JUNK_NOT_HELLO,  /* a whole handshake message that is not a ClientHello */
  JUNK_BAD_HELLO,  /* a ClientHello, no cookie, cipher suites overrunning it */
  JUNK_ALERT,      /* a fatal alert with a random description, in the clear */
  JUNK_KINDS
} junk_kind;

static const char *const junk_names[JUNK_KINDS] = {
    "short",     "type",      "oversized", "incomplete",
    "not-hello", "bad-hello", "alert"};

/* What the responder must do with it. */
typedef enum junk_out {
  OUT_WAIT,  /* M2MPSK_OK, still handshaking, nothing to send */
  OUT_HVR,   /* M2MPSK_OK, still handshaking, a HelloVerifyRequest to send */
  OUT_ALERT, /* M2MPSK_E_FAILED, and a fatal alert to send */
  OUT_FAIL   /* M2MPSK_E_FAILED, nothing to send */
} junk_out;

/* By backend, transport and kind. The two libraries differ where the
 * protocol leaves them free. OpenSSL's TLS server takes a peer's alert
 * before any ClientHello as a protocol error and answers it; its DTLS
 * server (the cookie exchange) drops every datagram that is not a
 * ClientHello it can read up to the cookie, and answers one without a
 * cookie with a HelloVerifyRequest before it reads the rest. BoringSSL's
 * DTLS server has no cookie exchange: it drops a record it cannot frame
 * (too long) but fails on one it can frame and not accept. */
static junk_out junk_expect(int openssl, int dtls, junk_kind k) {
  static const junk_out table[2][2][JUNK_KINDS] = {
      /* BoringSSL */
      {/* TLS */ {OUT_WAIT, OUT_ALERT, OUT_ALERT, OUT_WAIT, OUT_ALERT,
                  OUT_ALERT, OUT_FAIL},
       /* DTLS */ {OUT_WAIT, OUT_ALERT, OUT_WAIT, OUT_WAIT, OUT_ALERT,
                   OUT_ALERT, OUT_FAIL}},
      /* OpenSSL */
      {/* TLS */ {OUT_WAIT, OUT_ALERT, OUT_ALERT, OUT_WAIT, OUT_ALERT,
                  OUT_ALERT, OUT_ALERT},
       /* DTLS */ {OUT_WAIT, OUT_WAIT, OUT_WAIT, OUT_WAIT, OUT_WAIT, OUT_HVR,
                   OUT_WAIT}},
  };
  return table[openssl][dtls][k];
}

/* The reason for a peer's fatal alert `desc` (src/tls/family.h). */
static m2mpsk_reason alert_reason(uint8_t desc) {
  switch (desc) {
  case 20: /* bad_record_mac */
  case 51: /* decrypt_error */ return M2MPSK_REASON_BAD_KEY;
  case 112: /* unrecognized_name */ return M2MPSK_REASON_ID_MISMATCH;
  case 115: /* unknown_psk_identity */ return M2MPSK_REASON_UNKNOWN_IDENTITY;
  default: return M2MPSK_REASON_PEER_ALERT;
  }
}

/* Writes an input of kind `k` to junk[600], random where the kind leaves it
 * free; returns its length. */
static size_t make_junk(junk_kind k, int dtls, uint32_t *seed, uint8_t *junk) {
  size_t hdr = dtls ? 13 : 5;    /* record header */
  size_t hs_hdr = dtls ? 12 : 4; /* handshake header */
  for (size_t i = 0; i < 600; i++)
    junk[i] = (uint8_t)xs(seed);
  if (k == JUNK_SHORT)
    return 1 + xs(seed) % (hdr - 1);
  junk[1] = dtls ? 0xfe : 3; /* DTLS 1.2 / TLS 1.2 */
  junk[2] = dtls ? 0xfd : 3;
  if (dtls) /* epoch 0; the sequence number stays random */
    junk[3] = junk[4] = 0;
  size_t body, len;
  switch (k) {
  case JUNK_TYPE:
    /* Below 0x80 as well: a top bit set can start an SSLv2 ClientHello,
     * which a TLS server would wait to read whole. */
    do
      junk[0] = (uint8_t)(xs(seed) % 0x80);
    while (junk[0] >= 20 && junk[0] <= 24);
    len = hdr + 1 + xs(seed) % (600 - hdr - 1);
    body = len - hdr;
    break;
  case JUNK_OVERSIZED: /* beyond 2^14 + 2048, RFC 5246 6.2.3 */
    junk[0] = 22;
    body = 16384 + 2048 + 1 + xs(seed) % (65535 - 16384 - 2048);
    len = hdr + 1 + xs(seed) % (600 - hdr - 1);
    break;
  case JUNK_INCOMPLETE:
    junk[0] = 22;
    body = 600 + xs(seed) % 2000;
    len = hdr + xs(seed) % (600 - hdr);
    break;
  case JUNK_ALERT:
    junk[0] = 21;
    body = 2;
    junk[hdr] = 2;      /* fatal */
    if (xs(seed) % 2) { /* else the description stays random */
      static const uint8_t mapped[] = {20, 51, 112, 115};
      junk[hdr + 1] = mapped[xs(seed) % 4];
    }
    len = hdr + 2;
    break;
  default: {
    junk[0] = 22;
    /* ClientHello: version, random, session id, cookie, cipher suites. */
    size_t min = hs_hdr + (k == JUNK_BAD_HELLO ? 2 + 32 + 1 + 32 + 1 + 2 : 0);
    body = min + xs(seed) % (600 - hdr - min);
    len = hdr + body;
    size_t msg = body - hs_hdr;
    uint8_t *m = junk + hdr;
    if (k == JUNK_BAD_HELLO) {
      m[0] = 1;
      uint8_t *h = m + hs_hdr;
      h[0] = dtls ? 0xfe : 3;
      h[1] = dtls ? 0xfd : 3;
      size_t sid = xs(seed) % 33, at = 2 + 32;
      h[at] = (uint8_t)sid;
      at += 1 + sid;
      h[at++] = 0;                                             /* no cookie */
      size_t suites = msg - at - 2 + 2 + 2 * (xs(seed) % 100); /* overruns */
      h[at] = (uint8_t)(suites >> 8);
      h[at + 1] = (uint8_t)suites;
    } else {
      do
        m[0] = (uint8_t)xs(seed);
      while (m[0] == 1);
    }
    m[1] = 0;
    m[2] = (uint8_t)(msg >> 8);
    m[3] = (uint8_t)msg;
    if (dtls) { /* message_seq 0, one fragment: offset 0, the whole */
      m[4] = m[5] = 0;
      m[6] = m[7] = m[8] = 0;
      m[9] = 0;
      m[10] = (uint8_t)(msg >> 8);
      m[11] = (uint8_t)msg;
    }
    break;
  }
  }
  junk[hdr - 2] = (uint8_t)(body >> 8);
  junk[hdr - 1] = (uint8_t)body;
  return len;
}

Test(garbage, random_bytes_to_responder_fail_cleanly) {
  int openssl = strcmp(m2mpsk_backend_name(), "openssl") == 0;
  uint32_t seed = 12345;
  for (int t = 0; t < 2; t++) {
    for (int i = 0; i < 40 * JUNK_KINDS; i++) {
      junk_kind k = (junk_kind)(i % JUNK_KINDS);
      junk_out want = junk_expect(openssl, t, k);
      m2mt_pair p;
      m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, M2MT_IDA,
                     NULL);
      cr_assert_eq(m2mpsk_assoc_start(p.b, NOW0, UNIX0), M2MPSK_OK);
      uint8_t junk[600];
      size_t len = make_junk(k, t, &seed, junk);
      int rc = m2mpsk_assoc_feed(p.b, junk, len, NOW0);
      int fails = want == OUT_ALERT || want == OUT_FAIL;
      cr_assert_eq(rc, fails ? M2MPSK_E_FAILED : M2MPSK_OK, "%s %s #%d: rc %d",
                   t ? "DTLS" : "TLS", junk_names[k], i, rc);
      cr_assert_eq(m2mpsk_assoc_state(p.b),
                   fails ? M2MPSK_STATE_FAILED : M2MPSK_STATE_HANDSHAKING,
                   "%s %s #%d", t ? "DTLS" : "TLS", junk_names[k], i);
      m2mpsk_reason why = !fails ? M2MPSK_REASON_NONE
                          : k == JUNK_ALERT && !openssl
                              ? alert_reason(junk[t ? 14 : 6])
                              : M2MPSK_REASON_PROTOCOL;
      cr_assert_eq(m2mpsk_assoc_failure(p.b), why, "%s %s #%d: reason %d",
                   t ? "DTLS" : "TLS", junk_names[k], i,
                   (int)m2mpsk_assoc_failure(p.b));
      /* What it sends: one fatal alert record, one HelloVerifyRequest
       * (a handshake record, message type 3), or nothing. */
      uint8_t out[2048];
      size_t n = 0, hdr = t ? 13 : 5;
      rc = m2mpsk_assoc_drain(p.b, out, sizeof(out), &n);
      if (want == OUT_ALERT) {
        cr_assert_eq(rc, M2MPSK_OK, "%s %s #%d: no alert", t ? "DTLS" : "TLS",
                     junk_names[k], i);
        cr_assert(n == hdr + 2 && out[0] == 21 && out[hdr] == 2,
                  "%s %s #%d: not a fatal alert", t ? "DTLS" : "TLS",
                  junk_names[k], i);
        rc = m2mpsk_assoc_drain(p.b, out, sizeof(out), &n);
      } else if (want == OUT_HVR) {
        cr_assert_eq(rc, M2MPSK_OK);
        cr_assert(n > hdr && out[0] == 22 && out[hdr] == 3,
                  "%s #%d: not a HelloVerifyRequest", junk_names[k], i);
        rc = m2mpsk_assoc_drain(p.b, out, sizeof(out), &n);
      }
      cr_assert_eq(rc, M2MPSK_E_AGAIN, "%s %s #%d: more output",
                   t ? "DTLS" : "TLS", junk_names[k], i);
      m2mt_pair_free(&p);
    }
  }
}

Test(garbage, tls_garbage_record_fails_with_protocol_error) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_assoc_start(p.b, NOW0, UNIX0), M2MPSK_OK);
  const uint8_t junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  cr_assert_eq(m2mpsk_assoc_feed(p.b, junk, sizeof(junk) - 1, NOW0),
               M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_PROTOCOL);
  cr_assert_str_neq(m2mpsk_assoc_failure_detail(p.b), "");
  m2mt_pair_free(&p);
}

/* Garbage in every state of the initiator and responder, in both
 * transports: the call returns a status and the state stays coherent. */
Test(garbage, garbage_in_every_state) {
  uint8_t junk[300];
  uint32_t seed = 99;
  for (size_t k = 0; k < sizeof(junk); k++)
    junk[k] = (uint8_t)xs(&seed);
  for (int t = 0; t < 2; t++) {
    for (int when = 0; when < 4; when++) {
      for (int side = 0; side < 2; side++) {
        m2mt_pair p;
        m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, M2MT_IDA,
                       NULL);
        m2mpsk_assoc *x = side ? p.b : p.a;
        uint64_t now = NOW0;
        if (when == 0) { /* idle */
          cr_assert_eq(m2mpsk_assoc_feed(x, junk, sizeof(junk), now),
                       M2MPSK_E_STATE);
          m2mt_pair_free(&p);
          continue;
        }
        m2mt_pair_start(&p, now, UNIX0);
        if (when == 1) /* mid-handshake, after the first flight */
          m2mt_transfer(p.a, p.b, NULL, now);
        if (when >= 2)
          m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
        if (when == 3) {
          cr_assert_eq(m2mpsk_assoc_close(x), M2MPSK_OK);
        }
        int rc = m2mpsk_assoc_feed(x, junk, sizeof(junk), now);
        cr_assert(rc == M2MPSK_OK || rc == M2MPSK_E_FAILED, "rc %d", rc);
        uint8_t buf[512];
        size_t n;
        if (when >= 2) {
          rc = m2mpsk_assoc_read(x, buf, sizeof(buf), &n);
          cr_assert(rc == M2MPSK_E_AGAIN || rc == M2MPSK_E_FAILED,
                    "t%d when%d side%d rc %d", t, when, side, rc);
          if (t == 0)
            cr_assert_eq(rc, M2MPSK_E_FAILED, "TLS garbage is fatal");
        }
        if (rc == M2MPSK_E_FAILED)
          cr_assert_neq(m2mpsk_assoc_failure(x), M2MPSK_REASON_NONE);
        while (m2mpsk_assoc_drain(x, buf, sizeof(buf), &n) == M2MPSK_OK)
          ;
        m2mt_pair_free(&p);
      }
    }
  }
}

Test(garbage, truncated_flight_waits_then_times_out) {
  for (int t = 0; t < 2; t++) {
    m2mt_pair p;
    m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
    m2mt_pair_start(&p, NOW0, UNIX0);
    uint8_t buf[2048];
    size_t n;
    cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_feed(p.b, buf, n / 2, NOW0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_HANDSHAKING);
    cr_assert_eq(m2mpsk_assoc_handle_timeout(p.b, NOW0 + 60000),
                 M2MPSK_E_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_TIMEOUT);
    m2mt_pair_free(&p);
  }
}

Test(garbage, dtls_empty_and_oversized_datagrams_are_refused) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  static uint8_t big[70000];
  cr_assert_eq(m2mpsk_assoc_feed(p.b, big, 0, NOW0), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_feed(p.b, big, sizeof(big), NOW0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_HANDSHAKING);
  m2mt_pair_free(&p);
}

/* ---- API contract ----------------------------------------------------------
 */

Test(contract, lifecycle_misuse_is_reported) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  uint8_t buf[64];
  size_t n, w;
  uint64_t d;
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, NOW0), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_E_AGAIN);
  cr_assert_eq(m2mpsk_assoc_write(p.a, buf, 1, &w), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_read(p.a, buf, 1, &n), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_close(p.a), M2MPSK_E_STATE);
  m2mt_pair_start(&p, NOW0, UNIX0);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_write(p.a, buf, 1, &w), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, 1, &n), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_close(p.a), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_read(p.b, buf, sizeof(buf), &n), M2MPSK_E_STATE);
  m2mt_pair_free(&p);
}

Test(contract, config_and_keystore_outlive_their_free_while_used) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  /* The caller lets go of everything but the associations. */
  m2mpsk_keystore_free(p.ks_a);
  m2mpsk_keystore_free(p.ks_b);
  m2mpsk_config_free(p.cfg_a);
  m2mpsk_config_free(p.cfg_b);
  p.ks_a = p.ks_b = NULL;
  p.cfg_a = p.cfg_b = NULL;
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  m2mt_pair_free(&p);
}

Test(contract, new_checks_role_transport_and_identity) {
  m2mpsk_keystore *ks;
  m2mpsk_config *cfg;
  m2mpsk_assoc *a = (m2mpsk_assoc *)&a;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_add(ks, M2MT_KPSA_ID, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&a, (m2mpsk_role)7, M2MPSK_TRANSPORT_TLS, cfg,
                                ks, M2MT_KPSA_ID),
               M2MPSK_E_INVALID);
  cr_assert_null(a);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, (m2mpsk_transport)9,
                                cfg, ks, M2MT_KPSA_ID),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, NULL),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, M2MT_KPSA_ID),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, "no-at-sign"),
               M2MPSK_E_KPSA_ID);
  char longid[200];
  memset(longid, 'a', sizeof(longid));
  strcpy(longid + 150, "@example.com");
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, longid),
               M2MPSK_E_KPSA_ID_LENGTH);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, "absent@onem2m.com"),
               M2MPSK_E_NOT_FOUND);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_DTLS, cfg, ks, NULL),
               M2MPSK_E_NO_LOCAL_ID);
  cr_assert_null(a);
  m2mpsk_config_free(cfg);
  m2mpsk_keystore_free(ks);
}

Test(contract, suites_setter_rejects_unknown_and_unsupported_names) {
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_NOTHING"),
               M2MPSK_E_SUITE);
  /* TS-0003's mandated suites are not in Debian's BoringSSL; the OpenSSL
   * backend exists for them. */
  int mandated = backend_is("openssl") ? M2MPSK_OK : M2MPSK_E_SUITE;
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_128_CBC_SHA256"),
               mandated);
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_128_CCM_8"),
               mandated);
  /* A certificate suite is not a PSK suite. */
  cr_assert_eq(
      m2mpsk_config_set_suites(cfg, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
      M2MPSK_E_SUITE);
  /* One bad name rejects the whole list. */
  cr_assert_eq(
      m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_128_CBC_SHA:TLS_BOGUS"),
      M2MPSK_E_SUITE);
  cr_assert_eq(m2mpsk_config_set_suites(cfg, ""), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_128_CBC_SHA::"),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_suites(cfg,
                                        "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA:"
                                        "TLS_PSK_WITH_AES_256_CBC_SHA"),
               M2MPSK_OK);
  m2mpsk_config_free(cfg);
}

Test(contract, suite_mismatch_fails_the_handshake) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mpsk_assoc_free(p.b);
  m2mpsk_config_free(p.cfg_b);
  cr_assert_eq(m2mpsk_config_new(&p.cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p.cfg_b, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_suites(
                   p.cfg_b, "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256"),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p.b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, p.cfg_b, p.ks_b, NULL),
               M2MPSK_OK);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_PROTOCOL);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_PEER_ALERT);
  cr_assert(strstr(m2mpsk_assoc_failure_detail(p.a), "handshake failure"), "%s",
            m2mpsk_assoc_failure_detail(p.a));
  m2mt_pair_free(&p);
}

Test(contract, config_local_ids_are_validated) {
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, "cse-in"), M2MPSK_E_IDB);
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, "/cse-in/Cae"), M2MPSK_E_IDB);
  char big[600];
  memset(big, 'a', sizeof(big));
  big[0] = '/';
  big[599] = 0;
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, big), M2MPSK_E_ID_LENGTH);
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, M2MT_IDB), M2MPSK_E_DUPLICATE);
  cr_assert_eq(m2mpsk_config_set_reveal_unknown_identity(cfg, 1), M2MPSK_OK);
  m2mpsk_keystore *ks;
  m2mpsk_assoc *b;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, NULL),
               M2MPSK_OK);
  /* Frozen now. */
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, "/cse-2"), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_config_set_reveal_unknown_identity(cfg, 0),
               M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_256_CBC_SHA"),
               M2MPSK_E_STATE);
  m2mpsk_assoc_free(b);
  m2mpsk_keystore_free(ks);
  m2mpsk_config_free(cfg);
}

Test(contract, strerror_and_reason_names_cover_every_value) {
  for (int s = 0; s >= -40; s--) {
    const char *msg = m2mpsk_strerror(s);
    cr_assert_not_null(msg);
  }
  int known[] = {0,   -1,  -2,  -3,  -4,  -5,  -6,  -7,  -8,
                 -10, -11, -12, -13, -14, -15, -16, -17, -18,
                 -19, -20, -21, -22, -23, -30, -31};
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
    cr_assert_str_neq(m2mpsk_strerror(known[i]), "unknown status", "%d",
                      known[i]);
  cr_assert_str_eq(m2mpsk_strerror(-9), "unknown status");
  cr_assert_str_eq(m2mpsk_strerror(12345), "unknown status");
  for (int r = 0; r <= M2MPSK_REASON_INTERNAL; r++)
    cr_assert_str_neq(m2mpsk_reason_name(r), "unknown");
  cr_assert_str_eq(m2mpsk_reason_name(99), "unknown");
  cr_assert_str_eq(m2mpsk_reason_name(M2MPSK_REASON_BAD_KEY), "bad-key");
}

Test(contract, supported_suites_are_listed_and_accepted) {
  int openssl = backend_is("openssl");
  if (!openssl)
    cr_assert_str_eq(m2mpsk_backend_name(), "boringssl");
  cr_assert_str_eq(m2mpsk_backend_error(), "");
  /* BoringSSL: 2 PSK, 3 ECDHE_PSK. OpenSSL: 10 PSK, 10 DHE_PSK, 5 ECDHE_PSK
   * (src/tls/openssl.c). */
  cr_assert_eq(m2mpsk_suite_count(), openssl ? 25 : 5);
  cr_assert_null(m2mpsk_suite_name(m2mpsk_suite_count()));
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  for (size_t i = 0; i < m2mpsk_suite_count(); i++) {
    cr_assert_not_null(m2mpsk_suite_name(i));
    cr_assert_eq(m2mpsk_config_set_suites(cfg, m2mpsk_suite_name(i)), M2MPSK_OK,
                 "%s", m2mpsk_suite_name(i));
  }
  cr_assert_str_eq(m2mpsk_suite_name(0), openssl
                                             ? "TLS_PSK_WITH_AES_128_CBC_SHA256"
                                             : "TLS_PSK_WITH_AES_128_CBC_SHA");
  if (openssl)
    cr_assert_str_eq(m2mpsk_suite_name(1), "TLS_PSK_WITH_AES_128_CCM_8");
  m2mpsk_config_free(cfg);
}

Test(contract, version_macros_agree_with_runtime) {
  cr_assert_str_eq(m2mpsk_version_string(), M2MPSK_VERSION_STRING);
  cr_assert_eq(m2mpsk_version_number(), M2MPSK_VERSION_NUMBER);
}

/* ---- threads ---------------------------------------------------------------
 */

#include <pthread.h>

typedef struct shared_env {
  m2mpsk_keystore *ks;
  m2mpsk_config *cfg_a, *cfg_b;
  m2mpsk_transport t;
  int established;
  int failures;
} shared_env;

static void *handshake_worker(void *arg) {
  shared_env *env = arg;
  for (int i = 0; i < 150; i++) {
    m2mpsk_assoc *a = NULL, *b = NULL;
    if (m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, env->t, env->cfg_a, env->ks,
                         M2MT_KPSA_ID) != M2MPSK_OK ||
        m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, env->t, env->cfg_b, env->ks,
                         NULL) != M2MPSK_OK ||
        m2mpsk_assoc_start(b, NOW0, UNIX0) != M2MPSK_OK ||
        m2mpsk_assoc_start(a, NOW0, UNIX0) != M2MPSK_OK) {
      __atomic_add_fetch(&env->failures, 1, __ATOMIC_RELAXED);
    } else {
      uint64_t now = NOW0;
      m2mt_run_handshake(a, b, NULL, &now, 100);
      if (m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED &&
          m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED &&
          strcmp(m2mpsk_assoc_peer_id(b), M2MT_IDA) == 0)
        __atomic_add_fetch(&env->established, 1, __ATOMIC_RELAXED);
      else
        __atomic_add_fetch(&env->failures, 1, __ATOMIC_RELAXED);
    }
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
  }
  return NULL;
}

static void *churn_worker(void *arg) {
  shared_env *env = arg;
  char id[64];
  for (int i = 0; i < 2000; i++) {
    snprintf(id, sizeof(id), "churn%d@onem2m.com", i % 50);
    int rc = m2mpsk_keystore_add(env->ks, id, m2mt_other_key, 32, NULL,
                                 M2MT_IDB, 0, 0);
    if (rc == M2MPSK_E_DUPLICATE)
      rc = m2mpsk_keystore_remove(env->ks, id);
    if (rc != M2MPSK_OK)
      __atomic_add_fetch(&env->failures, 1, __ATOMIC_RELAXED);
  }
  return NULL;
}

/* One keystore and two configs shared by associations on three threads,
 * while a fourth adds and removes other records. */
Test(threads, shared_keystore_and_config_across_threads, .timeout = 120) {
  for (int t = 0; t < 2; t++) {
    shared_env env = {.t = (m2mpsk_transport)t};
    cr_assert_eq(m2mpsk_keystore_new(&env.ks, 0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_keystore_add(env.ks, M2MT_KPSA_ID, m2mt_key, 32,
                                     M2MT_IDA, M2MT_IDB, 0, 0),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_new(&env.cfg_a), M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_new(&env.cfg_b), M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_add_local_id(env.cfg_b, M2MT_IDB), M2MPSK_OK);
    pthread_t th[4];
    for (int i = 0; i < 3; i++)
      cr_assert_eq(pthread_create(&th[i], NULL, handshake_worker, &env), 0);
    cr_assert_eq(pthread_create(&th[3], NULL, churn_worker, &env), 0);
    for (int i = 0; i < 4; i++)
      pthread_join(th[i], NULL);
    cr_assert_eq(env.failures, 0);
    cr_assert_eq(env.established, 3 * 150);
    m2mpsk_config_free(env.cfg_a);
    m2mpsk_config_free(env.cfg_b);
    m2mpsk_keystore_free(env.ks);
  }
}

/* ---- key hygiene
 * ------------------------------------------------------------- */

/* Counts copies of `key` in this process's writable mappings, other than
 * the stack (BoringSSL keeps a stack copy of the PSK during a handshake;
 * see README). Key arenas are skipped because they cannot be read: they
 * are PROT_NONE, or tagged with a protection key this thread may not use. */
typedef struct mapping {
  unsigned long lo, hi;
  int scan;
} mapping;

static int count_key_copies(const uint8_t *key, size_t len) {
#ifdef __SANITIZE_ADDRESS__
  cr_skip_test("AddressSanitizer's shadow memory cannot be scanned");
#endif
  FILE *smaps = fopen("/proc/self/smaps", "r");
  cr_assert_not_null(smaps);
  static mapping maps[4096];
  static char all[1 << 16];
  size_t got = fread(all, 1, sizeof(all) - 1, smaps);
  all[got] = '\0';
  if (strstr(all, "vgpreload") != NULL) {
    fclose(smaps);
    cr_skip_test("valgrind's guest memory cannot be scanned");
  }
  rewind(smaps);
  size_t n = 0;
  char line[512];
  while (fgets(line, sizeof(line), smaps)) {
    unsigned long lo, hi;
    char perms[5];
    int pkey;
    if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 &&
        strchr(line, ' ') != NULL && n < 4096) {
      maps[n].lo = lo;
      maps[n].hi = hi;
      maps[n].scan = perms[0] == 'r' && perms[1] == 'w' &&
                     !strstr(line, "[stack") && !strstr(line, "[vvar") &&
                     !strstr(line, "[vsyscall");
      n++;
    } else if (sscanf(line, "ProtectionKey: %d", &pkey) == 1 && n > 0 &&
               pkey != 0) {
      maps[n - 1].scan = 0;
    }
  }
  fclose(smaps);
  int found = 0;
  for (size_t i = 0; i < n; i++) {
    if (!maps[i].scan)
      continue;
    const uint8_t *p = (const uint8_t *)maps[i].lo;
    const uint8_t *end = (const uint8_t *)maps[i].hi;
    while (p + len <= end) {
      p = memchr(p, key[0], (size_t)(end - p));
      if (p == NULL || p + len > end)
        break;
      if (memcmp(p, key, len) == 0)
        found++;
      p++;
    }
  }
  return found;
}

Test(hygiene, key_is_nowhere_in_writable_memory_after_handshakes) {
  /* A key no other code knows, built at run time on the stack. */
  uint8_t key[32];
  for (int i = 0; i < 32; i++)
    key[i] = (uint8_t)(0xA5 ^ (i * 37));
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, key, key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(count_key_copies(key, sizeof(key)), 0,
               "Kpsa found in writable memory while established");
  for (int i = 0; i < 32; i++)
    cr_assert(strchr(m2mpsk_assoc_failure_detail(p.a), (char)key[i]) == NULL ||
              key[i] < 32);
  m2mt_pair_free(&p);
  cr_assert_eq(count_key_copies(key, sizeof(key)), 0,
               "Kpsa found in writable memory after free");
}

Test(hygiene, handshakes_work_with_the_mprotect_guard) {
  m2mpsk_keystore_debug_refuse_pkeys();
  for (int t = 0; t < 2; t++) {
    m2mt_pair p;
    m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
    cr_assert_eq(m2mpsk_keystore_debug_uses_pkeys(p.ks_a), 0);
    m2mt_pair_start(&p, NOW0, UNIX0);
    uint64_t now = NOW0;
    m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
    cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
    cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
    cr_assert_eq(count_key_copies(m2mt_key, 32), 0);
    m2mt_pair_free(&p);
  }
}

Test(hygiene, failure_details_never_carry_key_bytes) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_other_key, M2MT_IDA,
                 NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  char hex[65];
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", m2mt_key[i]);
  for (int side = 0; side < 2; side++) {
    const char *d = m2mpsk_assoc_failure_detail(side ? p.b : p.a);
    cr_assert_str_neq(d, "");
    cr_assert_null(memmem(d, strlen(d), m2mt_key + 4, 8));
    cr_assert_null(memmem(d, strlen(d), m2mt_other_key + 4, 8));
    cr_assert_null(strstr(d, hex + 8));
  }
  m2mt_pair_free(&p);
}

/* ---- misuse -------------------------------------------------------------- */

Test(misuse, validity_window_without_wall_clock_at_initiator) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_a, M2MT_KPSA_ID, m2mt_key, M2MT_IDA, M2MT_IDB, 0, UNIX0);
  renew_initiator(&p, M2MPSK_TRANSPORT_TLS);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, -1), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_IDLE);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, 0), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_MISUSE);
  cr_assert(strstr(m2mpsk_assoc_failure_detail(p.a), "wall-clock"));
  m2mt_pair_free(&p);
}

Test(misuse, validity_window_without_wall_clock_at_responder) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  replace_record(p.ks_b, M2MT_KPSA_ID, m2mt_key, M2MT_IDA, M2MT_IDB, 1, 0);
  cr_assert_eq(m2mpsk_assoc_start(p.b, NOW0, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_OK);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_MISUSE);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_BAD_KEY);
  m2mt_pair_free(&p);
}

Test(misuse, no_wall_clock_is_fine_without_validity_windows) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, 0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  m2mt_pair_free(&p);
}

/* ---- live associations outlive no record ------------------------------------
 */

typedef struct live_case {
  m2mpsk_transport t;
  int action; /* 0 remove, 1 revoke, 2 expire */
  int side;   /* whose record: 0 the initiator's, 1 the responder's */
} live_case;

ParameterizedTestParameters(live, record_change_fails_the_association) {
  static live_case cases[12];
  for (int i = 0; i < 12; i++)
    cases[i] = (live_case){(m2mpsk_transport)(i / 6), (i / 2) % 3, i % 2};
  return cr_make_param_array(live_case, cases, 12);
}

ParameterizedTest(live_case *c, live, record_change_fails_the_association) {
  m2mt_pair p;
  m2mt_pair_init(&p, c->t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mpsk_keystore *ks = c->side ? p.ks_b : p.ks_a;
  if (c->action == 2) {
    replace_record(ks, M2MT_KPSA_ID, m2mt_key, M2MT_IDA, M2MT_IDB, 0,
                   UNIX0 + 100);
    if (c->side == 0)
      renew_initiator(&p, c->t);
  }
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  m2mpsk_assoc *x = c->side ? p.b : p.a, *y = c->side ? p.a : p.b;
  size_t w, n;
  uint8_t buf[256];
  /* Still fine before the change. */
  cr_assert_eq(m2mpsk_assoc_write(x, (const uint8_t *)"ok", 2, &w), M2MPSK_OK);
  m2mt_transfer(x, y, NULL, now);
  cr_assert_eq(m2mpsk_assoc_read(y, buf, sizeof(buf), &n), M2MPSK_OK);

  m2mpsk_reason want = M2MPSK_REASON_REVOKED;
  if (c->action == 0) {
    cr_assert_eq(m2mpsk_keystore_remove(ks, M2MT_KPSA_ID), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_write(x, buf, 1, &w), M2MPSK_E_FAILED);
  } else if (c->action == 1) {
    cr_assert_eq(m2mpsk_keystore_revoke(ks, M2MT_KPSA_ID), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_read(x, buf, sizeof(buf), &n), M2MPSK_E_FAILED);
  } else {
    want = M2MPSK_REASON_EXPIRED;
    cr_assert_eq(m2mpsk_assoc_handle_timeout(x, now + 99000), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_handle_timeout(x, now + 101000), M2MPSK_E_FAILED);
  }
  cr_assert_eq(m2mpsk_assoc_failure(x), want, "%s",
               m2mpsk_assoc_failure_detail(x));
  cr_assert_null(m2mpsk_assoc_peer_id(x));
  cr_assert_eq(m2mpsk_assoc_write(x, buf, 1, &w), M2MPSK_E_FAILED);
  /* The peer is told, and fails closed too. OpenSSL 3 has no call that
   * sends a fatal alert under the session keys: its backend sends
   * close_notify, and the peer sees the association closed. */
  m2mt_transfer(x, y, NULL, now);
  if (backend_is("openssl")) {
    cr_assert_eq(m2mpsk_assoc_read(y, buf, sizeof(buf), &n), M2MPSK_E_CLOSED);
    cr_assert_eq(m2mpsk_assoc_state(y), M2MPSK_STATE_CLOSED);
  } else {
    cr_assert_eq(m2mpsk_assoc_read(y, buf, sizeof(buf), &n), M2MPSK_E_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(y), M2MPSK_REASON_PEER_ALERT, "%s",
                 m2mpsk_assoc_failure_detail(y));
  }
  m2mt_pair_free(&p);
}

Test(live, unrelated_changes_leave_the_association_alone) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  cr_assert_eq(m2mpsk_keystore_add(p.ks_b, "other@onem2m.com", m2mt_key, 32,
                                   NULL, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_remove(p.ks_b, "other@onem2m.com"), M2MPSK_OK);
  size_t w, n;
  uint8_t buf[16];
  cr_assert_eq(m2mpsk_assoc_write(p.b, (const uint8_t *)"hi", 2, &w),
               M2MPSK_OK);
  m2mt_transfer(p.b, p.a, NULL, now);
  cr_assert_eq(m2mpsk_assoc_read(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  m2mt_pair_free(&p);
}

typedef struct live_env {
  m2mpsk_keystore *ks_a, *ks_b;
  m2mpsk_config *cfg_a, *cfg_b;
  m2mpsk_transport t;
  pthread_barrier_t established, removed;
  int revoked_seen;
} live_env;

static void *live_worker(void *arg) {
  live_env *env = arg;
  m2mpsk_assoc *a = NULL, *b = NULL;
  int ok = m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, env->t, env->cfg_a,
                            env->ks_a, M2MT_KPSA_ID) == M2MPSK_OK &&
           m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, env->t, env->cfg_b,
                            env->ks_b, NULL) == M2MPSK_OK &&
           m2mpsk_assoc_start(b, NOW0, UNIX0) == M2MPSK_OK &&
           m2mpsk_assoc_start(a, NOW0, UNIX0) == M2MPSK_OK;
  uint64_t now = NOW0;
  if (ok)
    m2mt_run_handshake(a, b, NULL, &now, 100);
  ok = ok && m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED;
  pthread_barrier_wait(&env->established);
  pthread_barrier_wait(&env->removed);
  size_t w;
  if (ok &&
      m2mpsk_assoc_write(b, (const uint8_t *)"x", 1, &w) == M2MPSK_E_FAILED &&
      m2mpsk_assoc_failure(b) == M2MPSK_REASON_REVOKED)
    __atomic_add_fetch(&env->revoked_seen, 1, __ATOMIC_RELAXED);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  return NULL;
}

Test(live, removal_reaches_associations_on_every_thread, .timeout = 60) {
  for (int t = 0; t < 2; t++) {
    live_env env = {.t = (m2mpsk_transport)t};
    cr_assert_eq(m2mpsk_keystore_new(&env.ks_a, 0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_keystore_new(&env.ks_b, 0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_keystore_add(env.ks_a, M2MT_KPSA_ID, m2mt_key, 32,
                                     M2MT_IDA, M2MT_IDB, 0, 0),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_keystore_add(env.ks_b, M2MT_KPSA_ID, m2mt_key, 32,
                                     M2MT_IDA, M2MT_IDB, 0, 0),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_new(&env.cfg_a), M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_new(&env.cfg_b), M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_add_local_id(env.cfg_b, M2MT_IDB), M2MPSK_OK);
    enum { N = 4 };
    pthread_barrier_init(&env.established, NULL, N + 1);
    pthread_barrier_init(&env.removed, NULL, N + 1);
    pthread_t th[N];
    for (int i = 0; i < N; i++)
      cr_assert_eq(pthread_create(&th[i], NULL, live_worker, &env), 0);
    pthread_barrier_wait(&env.established);
    cr_assert_eq(m2mpsk_keystore_remove(env.ks_b, M2MT_KPSA_ID), M2MPSK_OK);
    pthread_barrier_wait(&env.removed);
    for (int i = 0; i < N; i++)
      pthread_join(th[i], NULL);
    cr_assert_eq(env.revoked_seen, N);
    pthread_barrier_destroy(&env.established);
    pthread_barrier_destroy(&env.removed);
    m2mpsk_config_free(env.cfg_a);
    m2mpsk_config_free(env.cfg_b);
    m2mpsk_keystore_free(env.ks_a);
    m2mpsk_keystore_free(env.ks_b);
  }
}

/* ---- the record's expiry is a deadline -------------------------------------
 */

/* Records valid until UNIX0 + EXPIRY_S expire, for an association started
 * at (NOW0, UNIX0), at EXPIRY_AT: the wall clock counts whole seconds since
 * the start, and passes not_after one second after it. */
#define EXPIRY_S 100
#define EXPIRY_AT (NOW0 + (EXPIRY_S + 1) * 1000u)

static void drop_events(m2mpsk_config *cfg) {
  m2mpsk_event *ev;
  while (m2mpsk_config_next_event(cfg, &ev) == M2MPSK_OK)
    m2mpsk_event_free(ev);
}

/* A pair like m2mt_pair_init()'s, with event queues, whose `side` (0 the
 * initiator, 1 the responder) holds a record valid until UNIX0 + `life`
 * seconds (the other's has no end), started at (NOW0, UNIX0). */
static void expiring_pair(m2mt_pair *p, m2mpsk_transport t, int side,
                          int64_t life) {
  memset(p, 0, sizeof(*p));
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_b, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(p->ks_a, M2MT_KPSA_ID, m2mt_key, 32,
                                   M2MT_IDA, M2MT_IDB, 0,
                                   side == 0 ? UNIX0 + life : 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(p->ks_b, M2MT_KPSA_ID, m2mt_key, 32,
                                   M2MT_IDA, M2MT_IDB, 0,
                                   side == 1 ? UNIX0 + life : 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_event_queue(p->cfg_a, 16), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_event_queue(p->cfg_b, 16), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p->cfg_b, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, t, p->cfg_a,
                                p->ks_a, M2MT_KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER, t, p->cfg_b,
                                p->ks_b, NULL),
               M2MPSK_OK);
  m2mt_pair_start(p, NOW0, UNIX0);
}

/* Establishes an expiring_pair() at NOW0 and empties its event queues. */
static void established_expiring_pair(m2mt_pair *p, m2mpsk_transport t,
                                      int side) {
  expiring_pair(p, t, side, EXPIRY_S);
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(p->a, p->b, NULL, &now, 100), 0);
  cr_assert_eq(now, NOW0, "no timer fired");
  cr_assert_eq(m2mpsk_assoc_state(p->a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p->b), M2MPSK_STATE_ESTABLISHED);
  drop_events(p->cfg_a);
  drop_events(p->cfg_b);
}

/* What an association shows after failing, and the one event it queued. */
typedef struct expiry_outcome {
  int rc;
  m2mpsk_state state;
  m2mpsk_reason reason;
  char detail[192];
  m2mpsk_event_type ev_type;
  m2mpsk_reason ev_reason;
  uint64_t ev_time;
  char ev_kpsa_id[64];
  char ev_detail[192];
  int more_events;
  size_t pending; /* the alert queued for the peer */
} expiry_outcome;

static expiry_outcome outcome_of(int rc, m2mpsk_assoc *x, m2mpsk_config *cfg) {
  expiry_outcome o;
  memset(&o, 0, sizeof(o));
  o.rc = rc;
  o.state = m2mpsk_assoc_state(x);
  o.reason = m2mpsk_assoc_failure(x);
  snprintf(o.detail, sizeof(o.detail), "%s", m2mpsk_assoc_failure_detail(x));
  m2mpsk_event *ev = NULL;
  cr_assert_eq(m2mpsk_config_next_event(cfg, &ev), M2MPSK_OK, "an event");
  o.ev_type = m2mpsk_event_get_type(ev);
  o.ev_reason = m2mpsk_event_reason(ev);
  o.ev_time = m2mpsk_event_time_ms(ev);
  snprintf(o.ev_kpsa_id, sizeof(o.ev_kpsa_id), "%s",
           m2mpsk_event_kpsa_id(ev) ? m2mpsk_event_kpsa_id(ev) : "(null)");
  snprintf(o.ev_detail, sizeof(o.ev_detail), "%s", m2mpsk_event_detail(ev));
  m2mpsk_event_free(ev);
  o.more_events = m2mpsk_config_next_event(cfg, &ev) == M2MPSK_OK;
  m2mpsk_event_free(ev);
  o.pending = m2mpsk_assoc_pending(x);
  return o;
}

typedef struct expiry_case {
  m2mpsk_transport t;
  int side; /* whose record expires: 0 the initiator's, 1 the responder's */
} expiry_case;

ParameterizedTestParameters(expiry, established_association_expires_on_timer) {
  static expiry_case cases[4];
  for (int i = 0; i < 4; i++)
    cases[i] = (expiry_case){(m2mpsk_transport)(i / 2), i % 2};
  return cr_make_param_array(expiry_case, cases, 4);
}

ParameterizedTest(expiry_case *c, expiry,
                  established_association_expires_on_timer) {
  m2mt_pair p;
  established_expiring_pair(&p, c->t, c->side);
  m2mpsk_assoc *x = c->side ? p.b : p.a, *y = c->side ? p.a : p.b;
  m2mpsk_config *cfg_x = c->side ? p.cfg_b : p.cfg_a;
  uint64_t d = 0;
  cr_assert_eq(m2mpsk_assoc_next_timeout(x, &d), M2MPSK_OK);
  cr_assert_eq(d, EXPIRY_AT, "deadline %lld ms after the start, want %u",
               (long long)(d - NOW0), (EXPIRY_S + 1) * 1000u);
  /* The peer's record has no end and no timer runs: no deadline. */
  cr_assert_eq(m2mpsk_assoc_next_timeout(y, &d), M2MPSK_E_AGAIN);

  /* Early: nothing changes. */
  cr_assert_eq(m2mpsk_assoc_handle_timeout(x, EXPIRY_AT - 1), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(x), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_failure(x), M2MPSK_REASON_NONE);
  cr_assert_eq(m2mpsk_assoc_pending(x), 0);
  m2mpsk_event *ev = NULL;
  cr_assert_eq(m2mpsk_config_next_event(cfg_x, &ev), M2MPSK_E_AGAIN);
  cr_assert_eq(m2mpsk_assoc_next_timeout(x, &d), M2MPSK_OK);
  cr_assert_eq(d, EXPIRY_AT);

  /* At the deadline, with no input: expired. */
  expiry_outcome by_timer =
      outcome_of(m2mpsk_assoc_handle_timeout(x, EXPIRY_AT), x, cfg_x);
  cr_assert_eq(m2mpsk_assoc_next_timeout(x, &d), M2MPSK_E_AGAIN);
  cr_assert_null(m2mpsk_assoc_peer_id(x));

  /* The same association noticing it through input at the same time. */
  m2mt_pair q;
  established_expiring_pair(&q, c->t, c->side);
  m2mpsk_assoc *qx = c->side ? q.b : q.a, *qy = c->side ? q.a : q.b;
  size_t w;
  cr_assert_eq(m2mpsk_assoc_write(qy, (const uint8_t *)"hi", 2, &w), M2MPSK_OK);
  uint8_t buf[2048];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_drain(qy, buf, sizeof(buf), &n), M2MPSK_OK);
  expiry_outcome by_input = outcome_of(m2mpsk_assoc_feed(qx, buf, n, EXPIRY_AT),
                                       qx, c->side ? q.cfg_b : q.cfg_a);

  cr_assert_eq(by_timer.rc, M2MPSK_E_FAILED);
  cr_assert_eq(by_timer.state, M2MPSK_STATE_FAILED);
  cr_assert_eq(by_timer.reason, M2MPSK_REASON_EXPIRED, "%s", by_timer.detail);
  cr_assert_eq(by_timer.ev_type, M2MPSK_EVENT_REVOKED);
  cr_assert_eq(by_timer.ev_reason, M2MPSK_REASON_EXPIRED);
  cr_assert_eq(by_timer.ev_time, EXPIRY_AT);
  cr_assert_str_eq(by_timer.ev_kpsa_id, M2MT_KPSA_ID);
  cr_assert_eq(by_timer.more_events, 0);
  cr_assert_gt(by_timer.pending, 0, "the peer is told");

  cr_assert_eq(by_input.rc, by_timer.rc);
  cr_assert_eq(by_input.state, by_timer.state);
  cr_assert_eq(by_input.reason, by_timer.reason);
  cr_assert_str_eq(by_input.detail, by_timer.detail);
  cr_assert_eq(by_input.ev_type, by_timer.ev_type);
  cr_assert_eq(by_input.ev_reason, by_timer.ev_reason);
  cr_assert_eq(by_input.ev_time, by_timer.ev_time);
  cr_assert_str_eq(by_input.ev_kpsa_id, by_timer.ev_kpsa_id);
  cr_assert_str_eq(by_input.ev_detail, by_timer.ev_detail);
  cr_assert_eq(by_input.more_events, by_timer.more_events);
  cr_assert_eq(by_input.pending, by_timer.pending);
  m2mt_pair_free(&q);
  m2mt_pair_free(&p);
}

BOTH_TRANSPORTS(expiry, no_deadline_when_nothing_expires)

ParameterizedTest(transport_param *tp, expiry,
                  no_deadline_when_nothing_expires) {
  m2mt_pair p;
  m2mt_pair_init(&p, tp->t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  uint64_t d = 0;
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_E_AGAIN);
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.b, &d), M2MPSK_E_AGAIN);
  /* Years later, still nothing to do. */
  uint64_t later = NOW0 + 10ull * 365 * 86400 * 1000;
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, later), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.b, later), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  m2mt_pair_free(&p);
}

/* An initiator knows its record from the start: during the handshake the
 * earliest of the retransmission, the handshake deadline and the expiry is
 * reported, and the expiry ends the handshake when it comes first. */
Test(expiry, dtls_retransmission_before_expiry_is_reported_first) {
  m2mt_pair p;
  expiring_pair(&p, M2MPSK_TRANSPORT_DTLS, 0, 1); /* expires at NOW0 + 2 s */
  uint8_t buf[2048];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  uint64_t d = 0;
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
  cr_assert_eq(d, NOW0 + 1000, "the retransmission, got +%llu",
               (unsigned long long)(d - NOW0));
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d), M2MPSK_OK);
  cr_assert_gt(m2mpsk_assoc_pending(p.a), 0, "ClientHello retransmitted");
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  /* The next retransmission (+3 s) is later than the expiry (+2 s). */
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
  cr_assert_eq(d, NOW0 + 2000, "the expiry, got +%llu",
               (unsigned long long)(d - NOW0));
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d - 1), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_HANDSHAKING);
  drop_events(p.cfg_a);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_EXPIRED, "%s",
               m2mpsk_assoc_failure_detail(p.a));
  m2mpsk_event *ev = NULL;
  cr_assert_eq(m2mpsk_config_next_event(p.cfg_a, &ev), M2MPSK_OK);
  cr_assert_eq(m2mpsk_event_get_type(ev), M2MPSK_EVENT_FAILED);
  cr_assert_eq(m2mpsk_event_reason(ev), M2MPSK_REASON_EXPIRED);
  cr_assert_eq(m2mpsk_event_time_ms(ev), NOW0 + 2000);
  m2mpsk_event_free(ev);
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_E_AGAIN);
  m2mt_pair_free(&p);
}

/* The handshake deadline and the expiry, whichever is first. */
Test(expiry, tls_handshake_reports_the_earlier_of_deadline_and_expiry) {
  for (int shorter = 0; shorter < 2; shorter++) {
    m2mt_pair p;
    memset(&p, 0, sizeof(p));
    cr_assert_eq(m2mpsk_keystore_new(&p.ks_a, 0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_keystore_add(p.ks_a, M2MT_KPSA_ID, m2mt_key, 32,
                                     M2MT_IDA, M2MT_IDB, 0, UNIX0 + 4),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_new(&p.cfg_a), M2MPSK_OK);
    /* Expiry at NOW0 + 5 s; the handshake deadline before or after it. */
    uint32_t hs = shorter ? 3000 : 8000;
    cr_assert_eq(m2mpsk_config_set_handshake_timeout(p.cfg_a, hs), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_new(&p.a, M2MPSK_ROLE_INITIATOR,
                                  M2MPSK_TRANSPORT_TLS, p.cfg_a, p.ks_a,
                                  M2MT_KPSA_ID),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(p.a, NOW0, UNIX0), M2MPSK_OK);
    uint64_t d = 0;
    cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
    cr_assert_eq(d, shorter ? NOW0 + 3000 : NOW0 + 5000);
    cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d - 1), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_HANDSHAKING);
    cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d), M2MPSK_E_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(p.a),
                 shorter ? M2MPSK_REASON_TIMEOUT : M2MPSK_REASON_EXPIRED);
    m2mt_pair_free(&p);
  }
}
