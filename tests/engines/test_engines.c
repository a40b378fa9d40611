/* An engine per association, through the shared library (the static test
 * library links one engine only): which engine AUTO picks for each role
 * and transport, what a named engine does, the union the old queries
 * answer, and the DTLS cookie exchange of the default config. Built only
 * when the build has both engines. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "m2mpsk/m2mpsk.h"
#include "pump.h"

#define KPSA_ID "test@onem2m.com"
#define IDB "//m2m.example.com/cse-in"

static m2mpsk_keystore *g_ks;

static void setup(void) {
  static const uint8_t key[32] = {1, 2, 3, 4};
  cr_assert_eq(m2mpsk_keystore_new(&g_ks, 0), M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_add(g_ks, KPSA_ID, key, sizeof(key), NULL, IDB, 0, 0),
      M2MPSK_OK);
}

static void teardown(void) {
  m2mpsk_keystore_free(g_ks);
}

TestSuite(engines, .init = setup, .fini = teardown);

/* A config with engine `e` and, unless NULL, the suites `suites`. */
static m2mpsk_config *config(m2mpsk_engine_id e, const char *suites,
                             int responder) {
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_engine(cfg, e), M2MPSK_OK);
  if (suites != NULL)
    cr_assert_eq(m2mpsk_config_set_suites(cfg, suites), M2MPSK_OK, "%s",
                 suites);
  if (responder)
    cr_assert_eq(m2mpsk_config_add_local_id(cfg, IDB), M2MPSK_OK);
  return cfg;
}

/* Runs a handshake; returns the engines that ran each side. */
static void handshake(m2mpsk_transport t, m2mpsk_config *ca, m2mpsk_config *cb,
                      m2mpsk_engine_id *ea, m2mpsk_engine_id *eb, char *suite,
                      size_t cap) {
  m2mpsk_assoc *a, *b;
  cr_assert_eq(
      m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, ca, g_ks, KPSA_ID),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, cb, g_ks, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(b, 1000, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(a, 1000, 0), M2MPSK_OK);
  pump(a, b);
  cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(a));
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(b));
  cr_assert_str_eq(m2mpsk_assoc_suite(a), m2mpsk_assoc_suite(b));
  snprintf(suite, cap, "%s", m2mpsk_assoc_suite(a));
  *ea = m2mpsk_assoc_engine(a);
  *eb = m2mpsk_assoc_engine(b);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
}

Test(engines, both_load_and_the_queries_answer_the_union) {
  cr_assert_str_eq(m2mpsk_backend_name(), "boringssl+openssl");
  cr_assert_str_eq(m2mpsk_backend_error(), "");
  cr_assert_eq(m2mpsk_engine_available(M2MPSK_ENGINE_AUTO), 1);
  cr_assert_eq(m2mpsk_engine_available(M2MPSK_ENGINE_BORINGSSL), 1);
  cr_assert_eq(m2mpsk_engine_available(M2MPSK_ENGINE_OPENSSL), 1);
  cr_assert_eq(m2mpsk_engine_available((m2mpsk_engine_id)3), 0);
  cr_assert_str_eq(m2mpsk_engine_name(M2MPSK_ENGINE_AUTO), "auto");
  cr_assert_str_eq(m2mpsk_engine_name(M2MPSK_ENGINE_BORINGSSL), "boringssl");
  cr_assert_str_eq(m2mpsk_engine_name(M2MPSK_ENGINE_OPENSSL), "openssl");
  cr_assert_null(m2mpsk_engine_name((m2mpsk_engine_id)3));
  size_t nb = m2mpsk_engine_suite_count(M2MPSK_ENGINE_BORINGSSL);
  size_t no = m2mpsk_engine_suite_count(M2MPSK_ENGINE_OPENSSL);
  size_t nu = m2mpsk_suite_count();
  cr_assert(nb > 0 && no > 0);
  cr_assert_eq(nu, m2mpsk_engine_suite_count(M2MPSK_ENGINE_AUTO));
  cr_assert(nu >= no && nu <= nb + no);
  /* BoringSSL's first, then OpenSSL's that BoringSSL lacks, each once. */
  cr_assert_str_eq(m2mpsk_suite_name(0),
                   m2mpsk_engine_suite_name(M2MPSK_ENGINE_BORINGSSL, 0));
  for (size_t i = 0; i < nu; i++)
    for (size_t j = i + 1; j < nu; j++)
      cr_assert_str_neq(m2mpsk_suite_name(i), m2mpsk_suite_name(j));
  cr_assert_null(m2mpsk_suite_name(nu));
  cr_assert_null(m2mpsk_engine_suite_name(M2MPSK_ENGINE_OPENSSL, no));
  /* Both mandated suites: the TS-0003 profile is the default. */
  char missing[128];
  cr_assert_eq(
      m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, missing, sizeof(missing)),
      M2MPSK_OK);
  cr_assert_str_eq(missing, "");
}

Test(engines, set_engine_checks_its_argument_and_the_suites) {
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_engine(NULL, M2MPSK_ENGINE_AUTO),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_engine(cfg, (m2mpsk_engine_id)3),
               M2MPSK_E_INVALID);
  /* A suite only OpenSSL has: accepted for AUTO, not for BoringSSL. */
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_128_CCM_8"),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_engine(cfg, M2MPSK_ENGINE_BORINGSSL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_128_CCM_8"),
               M2MPSK_E_SUITE);
  /* The CCM_8 list is still set, and BoringSSL has none of it. */
  m2mpsk_assoc *a = NULL;
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_DTLS, cfg, g_ks, KPSA_ID),
               M2MPSK_E_SUITE);
  cr_assert_null(a);
  m2mpsk_config_free(cfg);

  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                cfg, g_ks, KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_engine(cfg, M2MPSK_ENGINE_OPENSSL),
               M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_assoc_engine(NULL), M2MPSK_ENGINE_AUTO);
  m2mpsk_assoc_free(a);
  m2mpsk_config_free(cfg);
}

/* The default config: the TS-0003 profile, which only OpenSSL has whole.
 * The initiator runs on OpenSSL and offers the mandated suite first; over
 * TLS the responder reads the ClientHello and takes the fastest engine
 * sharing a suite with it (BoringSSL: TLS_PSK_WITH_AES_128_CBC_SHA, which
 * the profile keeps for older peers); over DTLS it runs on OpenSSL (the
 * cookies), which picks the mandated CCM_8. */
Test(engines, auto_with_the_default_config) {
  m2mpsk_transport ts[2] = {M2MPSK_TRANSPORT_TLS, M2MPSK_TRANSPORT_DTLS};
  const char *first[2] = {"TLS_PSK_WITH_AES_128_CBC_SHA256",
                          "TLS_PSK_WITH_AES_128_CCM_8"};
  const char *want[2] = {"TLS_PSK_WITH_AES_128_CBC_SHA",
                         "TLS_PSK_WITH_AES_128_CCM_8"};
  m2mpsk_engine_id responder[2] = {M2MPSK_ENGINE_BORINGSSL,
                                   M2MPSK_ENGINE_OPENSSL};
  for (int i = 0; i < 2; i++) {
    m2mpsk_config *ca = config(M2MPSK_ENGINE_AUTO, NULL, 0);
    m2mpsk_config *cb = config(M2MPSK_ENGINE_AUTO, NULL, 1);
    char list[1024];
    cr_assert_eq(m2mpsk_config_suites(ca, ts[i], list, sizeof(list)),
                 M2MPSK_OK);
    cr_assert(strncmp(list, first[i], strlen(first[i])) == 0, "%s", list);
    /* Older BoringSSL-only peers still find a suite they have. */
    cr_assert_not_null(strstr(list, "TLS_PSK_WITH_AES_128_CBC_SHA:"), "%s",
                       list);
    m2mpsk_engine_id ea, eb;
    char suite[64];
    handshake(ts[i], ca, cb, &ea, &eb, suite, sizeof(suite));
    cr_assert_eq(ea, M2MPSK_ENGINE_OPENSSL);
    cr_assert_eq(eb, responder[i]);
    cr_assert_str_eq(suite, want[i]);
    m2mpsk_config_free(ca);
    m2mpsk_config_free(cb);
  }
}

/* A peer that offers only a mandated suite succeeds against the default
 * responder, which then runs on OpenSSL; the responder's engine is chosen
 * only once the ClientHello is whole, here fed one byte at a time. */
Test(engines, responder_reads_the_client_hello_first) {
  const char *only[2] = {"TLS_PSK_WITH_AES_128_CBC_SHA256",
                         "TLS_PSK_WITH_AES_128_CCM_8"};
  for (int k = 0; k < 2; k++) {
    m2mpsk_config *ca = config(M2MPSK_ENGINE_OPENSSL, only[k], 0);
    m2mpsk_config *cb = config(M2MPSK_ENGINE_AUTO, NULL, 1);
    m2mpsk_assoc *a, *b;
    cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                  M2MPSK_TRANSPORT_TLS, ca, g_ks, KPSA_ID),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER,
                                  M2MPSK_TRANSPORT_TLS, cb, g_ks, NULL),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(b, 1000, 0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(a, 1000, 0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_engine(b), M2MPSK_ENGINE_AUTO);
    uint8_t hello[4096];
    size_t n;
    cr_assert_eq(m2mpsk_assoc_drain(a, hello, sizeof(hello), &n), M2MPSK_OK);
    for (size_t i = 0; i + 1 < n; i++) {
      cr_assert_eq(m2mpsk_assoc_feed(b, hello + i, 1, 1000), M2MPSK_OK);
      cr_assert_eq(m2mpsk_assoc_engine(b), M2MPSK_ENGINE_AUTO);
      cr_assert_eq(m2mpsk_assoc_pending(b), 0);
    }
    cr_assert_eq(m2mpsk_assoc_feed(b, hello + n - 1, 1, 1000), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_engine(b), M2MPSK_ENGINE_OPENSSL);
    pump(a, b);
    cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED, "%s",
                 m2mpsk_assoc_failure_detail(b));
    cr_assert_str_eq(m2mpsk_assoc_suite(b), only[k]);
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
    m2mpsk_config_free(ca);
    m2mpsk_config_free(cb);
  }
}

/* Bytes that are no ClientHello go to the config's own engine, which
 * fails the handshake as it always did; a hello that never completes is
 * bounded by max_input. */
Test(engines, responder_without_a_client_hello) {
  m2mpsk_config *cb = config(M2MPSK_ENGINE_AUTO, NULL, 1);
  m2mpsk_assoc *b;
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                                cb, g_ks, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(b, 1000, 0), M2MPSK_OK);
  static const uint8_t junk[16] = "GET / HTTP/1.1\r\n";
  cr_assert_eq(m2mpsk_assoc_feed(b, junk, sizeof(junk), 1000), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_engine(b), M2MPSK_ENGINE_OPENSSL);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(cb);

  cr_assert_eq(m2mpsk_config_new(&cb), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(cb, IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_max_input(cb, M2MPSK_MAX_INPUT_MIN),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                                cb, g_ks, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(b, 1000, 0), M2MPSK_OK);
  /* A handshake record header announcing a long ClientHello, then more
   * than max_input bytes of it. */
  static const uint8_t head[9] = {22, 3, 3, 0x40, 0x00, 1, 0, 0x3f, 0xfc};
  cr_assert_eq(m2mpsk_assoc_feed(b, head, sizeof(head), 1000), M2MPSK_OK);
  static uint8_t body[M2MPSK_MAX_INPUT_MIN];
  cr_assert_eq(m2mpsk_assoc_feed(b, body, sizeof(body), 1000), M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(b), M2MPSK_REASON_LIMIT);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(cb);
}

/* Suites BoringSSL has: AUTO takes the faster engine, except for a DTLS
 * responder, which takes OpenSSL for its cookies. */
Test(engines, auto_takes_boringssl_when_it_has_every_suite) {
  const char *cbc = "TLS_PSK_WITH_AES_128_CBC_SHA:TLS_PSK_WITH_AES_256_CBC_SHA";
  m2mpsk_transport ts[2] = {M2MPSK_TRANSPORT_TLS, M2MPSK_TRANSPORT_DTLS};
  for (int i = 0; i < 2; i++) {
    m2mpsk_config *ca = config(M2MPSK_ENGINE_AUTO, cbc, 0);
    m2mpsk_config *cb = config(M2MPSK_ENGINE_AUTO, cbc, 1);
    m2mpsk_engine_id ea, eb;
    char suite[64];
    handshake(ts[i], ca, cb, &ea, &eb, suite, sizeof(suite));
    cr_assert_eq(ea, M2MPSK_ENGINE_BORINGSSL);
    cr_assert_eq(eb, ts[i] == M2MPSK_TRANSPORT_TLS ? M2MPSK_ENGINE_BORINGSSL
                                                   : M2MPSK_ENGINE_OPENSSL);
    cr_assert_str_eq(suite, "TLS_PSK_WITH_AES_128_CBC_SHA");
    m2mpsk_config_free(ca);
    m2mpsk_config_free(cb);
  }
}

/* Named engines, every pair, both transports: each side runs its own, and
 * a BoringSSL side narrows the default profile to the suites it has. */
Test(engines, every_pair_of_named_engines_interoperates) {
  m2mpsk_engine_id es[2] = {M2MPSK_ENGINE_BORINGSSL, M2MPSK_ENGINE_OPENSSL};
  m2mpsk_transport ts[2] = {M2MPSK_TRANSPORT_TLS, M2MPSK_TRANSPORT_DTLS};
  for (int t = 0; t < 2; t++)
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 2; j++) {
        m2mpsk_config *ca = config(es[i], NULL, 0);
        m2mpsk_config *cb = config(es[j], NULL, 1);
        m2mpsk_engine_id ea, eb;
        char suite[64];
        handshake(ts[t], ca, cb, &ea, &eb, suite, sizeof(suite));
        cr_assert_eq(ea, es[i]);
        cr_assert_eq(eb, es[j]);
        if (es[i] == M2MPSK_ENGINE_BORINGSSL ||
            es[j] == M2MPSK_ENGINE_BORINGSSL)
          cr_assert_str_eq(suite, "TLS_PSK_WITH_AES_128_CBC_SHA");
        m2mpsk_config_free(ca);
        m2mpsk_config_free(cb);
      }
}

/* m2mpsk_dtls_listen answers with OpenSSL for AUTO and OPENSSL configs
 * (a HelloVerifyRequest for a cookie-less ClientHello), and is
 * unsupported for a config that names BoringSSL. */
Test(engines, dtls_listen_uses_openssl) {
  /* A ClientHello with no cookie, made by a real initiator. */
  m2mpsk_config *ca = config(M2MPSK_ENGINE_AUTO, NULL, 0);
  m2mpsk_assoc *a;
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_DTLS, ca, g_ks, KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(a, 1000, 0), M2MPSK_OK);
  uint8_t hello[2048], out[2048];
  size_t n, out_len;
  cr_assert_eq(m2mpsk_assoc_drain(a, hello, sizeof(hello), &n), M2MPSK_OK);
  m2mpsk_engine_id es[3] = {M2MPSK_ENGINE_AUTO, M2MPSK_ENGINE_OPENSSL,
                            M2MPSK_ENGINE_BORINGSSL};
  for (int i = 0; i < 3; i++) {
    m2mpsk_config *cb = config(es[i], NULL, 1);
    int rc = m2mpsk_dtls_listen(cb, "127.0.0.1:5684", hello, n, out,
                                sizeof(out), &out_len);
    if (es[i] == M2MPSK_ENGINE_BORINGSSL) {
      cr_assert_eq(rc, M2MPSK_E_UNSUPPORTED);
    } else {
      cr_assert_eq(rc, M2MPSK_LISTEN_REPLY, "%d", rc);
      cr_assert(out_len > 0 && out[0] == 22); /* a handshake record */
    }
    m2mpsk_config_free(cb);
  }
  m2mpsk_assoc_free(a);
  m2mpsk_config_free(ca);
}
