/* Every public function, given NULL or invalid arguments, returns its
 * documented error (or its documented neutral value) and changes nothing. */
#include <criterion/criterion.h>
#include <string.h>

#include "link.h"

static m2mt_pair p;

static void setup(void) {
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
}
static void teardown(void) {
  m2mt_pair_free(&p);
}

TestSuite(api, .init = setup, .fini = teardown);

Test(api, identifier_validators_reject_null) {
  char buf[300];
  cr_assert_eq(m2mpsk_kpsa_id_validate(NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_idb_validate(NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_ida_validate(NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_idb_server_name(NULL, buf, sizeof(buf)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_idb_server_name(M2MT_IDB, NULL, 10), M2MPSK_E_INVALID);
}

Test(api, keystore_functions_reject_null) {
  m2mpsk_keystore *ks = (m2mpsk_keystore *)&ks;
  cr_assert_eq(m2mpsk_keystore_new(NULL, 0), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0x80), M2MPSK_E_INVALID);
  cr_assert_null(ks);
  m2mpsk_keystore_free(NULL);
  const char *id = "x@onem2m.com";
  cr_assert_eq(
      m2mpsk_keystore_add(NULL, id, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_INVALID);
  cr_assert_eq(
      m2mpsk_keystore_add(p.ks_a, NULL, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_add(p.ks_a, id, NULL, 32, NULL, M2MT_IDB, 0, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_add(p.ks_a, id, m2mt_key, 32, NULL, NULL, 0, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_count(p.ks_a), 1);
  cr_assert_eq(m2mpsk_keystore_remove(NULL, id), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_remove(p.ks_a, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_revoke(NULL, id), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_revoke(p.ks_a, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(
      m2mpsk_keystore_lookup(NULL, id, NULL, 0, NULL, 0, NULL, NULL, NULL),
      M2MPSK_E_INVALID);
  cr_assert_eq(
      m2mpsk_keystore_lookup(p.ks_a, NULL, NULL, 0, NULL, 0, NULL, NULL, NULL),
      M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_count(NULL), 0);
  cr_assert_eq(m2mpsk_keystore_is_locked(NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_key_memory(NULL), 0);
  size_t line = 99;
  cr_assert_eq(m2mpsk_keystore_load_file(NULL, "/dev/null", &line),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_load_file(p.ks_a, NULL, &line),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_count(p.ks_a), 1);
}

Test(api, config_functions_reject_null) {
  cr_assert_eq(m2mpsk_config_new(NULL), M2MPSK_E_INVALID);
  m2mpsk_config_free(NULL);
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_suites(NULL, "TLS_PSK_WITH_AES_128_CBC_SHA"),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_suites(cfg, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_add_local_id(NULL, M2MT_IDB), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_add_local_id(cfg, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(NULL, 1000),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_reveal_unknown_identity(NULL, 1),
               M2MPSK_E_INVALID);
  m2mpsk_config_free(cfg);
}

Test(api, assoc_new_rejects_null) {
  m2mpsk_assoc *a = (m2mpsk_assoc *)&a;
  cr_assert_eq(m2mpsk_assoc_new(NULL, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_TLS, p.cfg_a, p.ks_a,
                                M2MT_KPSA_ID),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                NULL, p.ks_a, M2MT_KPSA_ID),
               M2MPSK_E_INVALID);
  cr_assert_null(a);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                p.cfg_a, NULL, M2MT_KPSA_ID),
               M2MPSK_E_INVALID);
  m2mpsk_assoc_free(NULL);
}

Test(api, assoc_calls_reject_null_handle) {
  uint8_t buf[16];
  size_t n;
  uint64_t d;
  cr_assert_eq(m2mpsk_assoc_set_mtu(NULL, 1200), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_start(NULL, 0, 0), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_feed(NULL, buf, 1, 0), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_pending(NULL), 0);
  cr_assert_eq(m2mpsk_assoc_drain(NULL, buf, sizeof(buf), &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_next_timeout(NULL, &d), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(NULL, 0), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_state(NULL), M2MPSK_STATE_FAILED);
  cr_assert_eq(m2mpsk_assoc_write(NULL, buf, 1, &n), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_read(NULL, buf, 1, &n), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_close(NULL), M2MPSK_E_INVALID);
  cr_assert_null(m2mpsk_assoc_peer_id(NULL));
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(NULL), 0);
  cr_assert_null(m2mpsk_assoc_local_id(NULL));
  cr_assert_null(m2mpsk_assoc_kpsa_id(NULL));
  cr_assert_null(m2mpsk_assoc_suite(NULL));
  cr_assert_null(m2mpsk_assoc_version(NULL));
  cr_assert_eq(m2mpsk_assoc_export(NULL, buf, 8, "x", NULL, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_failure(NULL), M2MPSK_REASON_NONE);
  cr_assert_str_eq(m2mpsk_assoc_failure_detail(NULL), "");
}

Test(api, assoc_calls_reject_null_buffers) {
  m2mt_pair_start(&p, 1000, 1800000000);
  uint8_t buf[16];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_feed(p.b, NULL, 5, 1000), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_drain(p.a, NULL, 16, &n), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), NULL),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_write(p.a, NULL, 5, &n), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_write(p.a, buf, 1, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_read(p.a, NULL, 5, &n), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_read(p.a, buf, 1, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_export(p.a, NULL, 8, "x", NULL, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_export(p.a, buf, 8, NULL, NULL, 0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_export(p.a, buf, 8, "x", NULL, 4),
               M2MPSK_E_INVALID);
  /* None of it disturbed the handshake. */
  uint64_t now = 1000;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
}

/* ---- one status for one fault ------------------------------------------- */

/* A zero-size output buffer is M2MPSK_E_BUFFER in every function that takes
 * one, checked right after NULL pointers, whatever else is wrong or right. */
Test(api, zero_size_buffer_is_a_buffer_error_everywhere) {
  char s[8] = "x";
  uint8_t b[8] = {1};
  size_t n = 99;
  cr_assert_eq(m2mpsk_idb_server_name(M2MT_IDB, s, 0), M2MPSK_E_BUFFER);
  /* SP-relative: no SNI at all, but the buffer is judged first. */
  cr_assert_eq(m2mpsk_idb_server_name("/cse-in", s, 0), M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_keystore_lookup(p.ks_a, M2MT_KPSA_ID, s, 0, NULL, 0, NULL,
                                      NULL, NULL),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_keystore_lookup(p.ks_a, M2MT_KPSA_ID, NULL, 0, s, 0, NULL,
                                      NULL, NULL),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_keystore_lookup(p.ks_a, "none@onem2m.com", s, 0, NULL, 0,
                                      NULL, NULL, NULL),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, s, 0),
               M2MPSK_E_BUFFER);
  cr_assert_eq(
      m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003, M2MPSK_TRANSPORT_TLS, s, 0),
      M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_config_suites(p.cfg_a, M2MPSK_TRANSPORT_TLS, s, 0),
               M2MPSK_E_BUFFER);
  cr_assert_eq(
      m2mpsk_dtls_listen(p.cfg_b, "192.0.2.7:5684", b, sizeof(b), b, 0, &n),
      M2MPSK_E_BUFFER);
  cr_assert_eq(n, 0);
  cr_assert_str_eq(s, "x", "nothing written through a zero-size buffer");
  m2mt_pair_start(&p, 1000, 1800000000);
  cr_assert_eq(m2mpsk_assoc_drain(p.a, b, 0, &n), M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_assoc_read(p.a, b, 0, &n), M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_assoc_export(p.a, b, 0, "x", NULL, 0), M2MPSK_E_BUFFER);
  cr_assert_eq(b[0], 1);
  /* None of it disturbed the handshake. */
  uint64_t now = 1000;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_read(p.b, b, 0, &n), M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_assoc_export(p.b, b, 0, "x", NULL, 0), M2MPSK_E_BUFFER);
}

/* A buffer of some size but too small is M2MPSK_E_BUFFER too, and a string
 * buffer then holds "". */
Test(api, too_small_buffer_is_a_buffer_error_everywhere) {
  char s[4] = "xyz";
  cr_assert_eq(m2mpsk_idb_server_name(M2MT_IDB, s, sizeof(s)), M2MPSK_E_BUFFER);
  cr_assert_str_eq(s, "");
  strcpy(s, "xyz");
  cr_assert_eq(m2mpsk_keystore_lookup(p.ks_a, M2MT_KPSA_ID, NULL, 0, s,
                                      sizeof(s), NULL, NULL, NULL),
               M2MPSK_E_BUFFER);
  strcpy(s, "xyz");
  cr_assert_eq(m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003,
                                     M2MPSK_TRANSPORT_DTLS, s, sizeof(s)),
               M2MPSK_E_BUFFER);
  cr_assert_str_eq(s, "");
  strcpy(s, "xyz");
  cr_assert_eq(
      m2mpsk_config_suites(p.cfg_a, M2MPSK_TRANSPORT_TLS, s, sizeof(s)),
      M2MPSK_E_BUFFER);
  cr_assert_str_eq(s, "");
}

/* Every status code has its own name, and the new one is last. */
Test(api, every_status_has_a_distinct_description) {
  static const int codes[] = {M2MPSK_OK,
                              M2MPSK_E_INVALID,
                              M2MPSK_E_NOMEM,
                              M2MPSK_E_AGAIN,
                              M2MPSK_E_CLOSED,
                              M2MPSK_E_FAILED,
                              M2MPSK_E_STATE,
                              M2MPSK_E_BUFFER,
                              M2MPSK_E_INTERNAL,
                              M2MPSK_E_KPSA_ID,
                              M2MPSK_E_KPSA_ID_LENGTH,
                              M2MPSK_E_KEY_LENGTH,
                              M2MPSK_E_IDA,
                              M2MPSK_E_IDB,
                              M2MPSK_E_ID_LENGTH,
                              M2MPSK_E_VALIDITY,
                              M2MPSK_E_DUPLICATE,
                              M2MPSK_E_NOT_FOUND,
                              M2MPSK_E_UNLOCKED,
                              M2MPSK_E_IO,
                              M2MPSK_E_KEYFILE_PERMS,
                              M2MPSK_E_KEYFILE_SYNTAX,
                              M2MPSK_E_KEYFILE_ENCODING,
                              M2MPSK_E_SUITE,
                              M2MPSK_E_NO_LOCAL_ID,
                              M2MPSK_E_BACKEND,
                              M2MPSK_E_LIMIT,
                              M2MPSK_E_UNSUPPORTED,
                              M2MPSK_E_PROTOCOL};
  size_t k = sizeof(codes) / sizeof(codes[0]);
  cr_assert_eq(M2MPSK_E_PROTOCOL, -35, "codes are never renumbered");
  for (size_t i = 0; i < k; i++) {
    cr_assert_str_neq(m2mpsk_strerror(codes[i]), "unknown status", "%d",
                      codes[i]);
    for (size_t j = 0; j < i; j++)
      cr_assert_str_neq(m2mpsk_strerror(codes[i]), m2mpsk_strerror(codes[j]));
  }
  cr_assert_str_eq(m2mpsk_strerror(-36), "unknown status");
}
