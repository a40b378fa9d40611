/* The TS-0003 suite profile (§10.2.2) and the runtime suite queries, with
 * whichever backend this build has: BoringSSL lacks both mandated suites,
 * OpenSSL 3 has them. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "link.h"

#define CBC256 "TLS_PSK_WITH_AES_128_CBC_SHA256"
#define CCM8 "TLS_PSK_WITH_AES_128_CCM_8"

static int is_boringssl(void) {
  return strcmp(m2mpsk_backend_name(), "boringssl") == 0;
}

/* Every name in a colon-separated list is an RFC 4279 PSK suite (plain
 * PSK key exchange) the backend lists. */
static void assert_plain_psk_supported(const char *list) {
  char copy[1024];
  snprintf(copy, sizeof(copy), "%s", list);
  for (char *save = NULL, *name = strtok_r(copy, ":", &save); name != NULL;
       name = strtok_r(NULL, ":", &save)) {
    cr_assert(strncmp(name, "TLS_PSK_WITH_", 13) == 0, "%s", name);
    int found = 0;
    for (size_t i = 0; m2mpsk_suite_name(i) != NULL; i++)
      found |= strcmp(m2mpsk_suite_name(i), name) == 0;
    cr_assert(found, "%s is not among the backend's suites", name);
  }
}

Test(profile, missing_names_the_mandated_suites_the_backend_lacks) {
  char out[128];
  cr_assert_eq(m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, out, sizeof(out)),
               M2MPSK_OK);
  if (is_boringssl())
    cr_assert_str_eq(out, CBC256 ":" CCM8);
  else
    cr_assert_str_eq(out, "", "%s lacks %s", m2mpsk_backend_name(), out);
  cr_assert_eq(m2mpsk_profile_missing((m2mpsk_profile)0, out, sizeof(out)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_profile_missing((m2mpsk_profile)2, out, sizeof(out)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, NULL, 10),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, out, 0),
               M2MPSK_E_BUFFER);
  if (is_boringssl()) {
    cr_assert_eq(m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, out, 40),
                 M2MPSK_E_BUFFER);
    cr_assert_str_eq(out, "", "nothing half-written");
  }
}

Test(profile, suites_per_transport_put_the_mandated_one_first) {
  char tls[1024], dtls[1024];
  cr_assert_eq(m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003,
                                     M2MPSK_TRANSPORT_TLS, tls, sizeof(tls)),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003,
                                     M2MPSK_TRANSPORT_DTLS, dtls, sizeof(dtls)),
               M2MPSK_OK);
  assert_plain_psk_supported(tls);
  assert_plain_psk_supported(dtls);
  if (is_boringssl()) {
    cr_assert_str_eq(tls, "TLS_PSK_WITH_AES_128_CBC_SHA:"
                          "TLS_PSK_WITH_AES_256_CBC_SHA");
    cr_assert_str_eq(dtls, tls);
  } else {
    cr_assert(strncmp(tls, CBC256 ":", strlen(CBC256) + 1) == 0, "%s", tls);
    cr_assert(strncmp(dtls, CCM8 ":", strlen(CCM8) + 1) == 0, "%s", dtls);
    cr_assert_not_null(strstr(tls, CCM8), "TLS offers CCM_8 too, last");
    cr_assert_not_null(strstr(dtls, CBC256));
  }
  cr_assert_null(strstr(tls, "ECDHE"), "RFC 4279 key exchange only");
  cr_assert_eq(m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003,
                                     (m2mpsk_transport)2, tls, sizeof(tls)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_profile_suites((m2mpsk_profile)9, M2MPSK_TRANSPORT_TLS,
                                     tls, sizeof(tls)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003,
                                     M2MPSK_TRANSPORT_TLS, tls, 20),
               M2MPSK_E_BUFFER);
  cr_assert_str_eq(tls, "");
}

Test(profile, set_profile_and_the_default) {
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  char before[1024], after[1024], want[1024];
  cr_assert_eq(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_TLS, before,
                                    sizeof(before)),
               M2MPSK_OK);
  int rc = m2mpsk_config_set_profile(cfg, M2MPSK_PROFILE_TS0003);
  if (is_boringssl()) {
    cr_assert_eq(rc, M2MPSK_E_SUITE);
    cr_assert_str_eq(before, "TLS_PSK_WITH_AES_128_CBC_SHA:"
                             "TLS_PSK_WITH_AES_256_CBC_SHA");
  } else {
    cr_assert_eq(rc, M2MPSK_OK);
    /* Where the backend honours the profile, it is also the default. */
    cr_assert_eq(m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003,
                                       M2MPSK_TRANSPORT_TLS, want,
                                       sizeof(want)),
                 M2MPSK_OK);
    cr_assert_str_eq(before, want);
  }
  cr_assert_eq(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_TLS, after,
                                    sizeof(after)),
               M2MPSK_OK);
  cr_assert_str_eq(after, before, "a refused profile changes nothing");

  /* An explicit list replaces the profile, and the other way round. */
  cr_assert_eq(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_256_CBC_SHA"),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_DTLS, after,
                                    sizeof(after)),
               M2MPSK_OK);
  cr_assert_str_eq(after, "TLS_PSK_WITH_AES_256_CBC_SHA");
  cr_assert_eq(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_DTLS, after, 10),
               M2MPSK_E_BUFFER);
  if (!is_boringssl()) {
    cr_assert_eq(m2mpsk_config_set_profile(cfg, M2MPSK_PROFILE_TS0003),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_DTLS, after,
                                      sizeof(after)),
                 M2MPSK_OK);
    cr_assert(strncmp(after, CCM8, strlen(CCM8)) == 0, "%s", after);
  }

  cr_assert_eq(m2mpsk_config_set_profile(NULL, M2MPSK_PROFILE_TS0003),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_profile(cfg, (m2mpsk_profile)0),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_suites(NULL, M2MPSK_TRANSPORT_TLS, after,
                                    sizeof(after)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_suites(cfg, (m2mpsk_transport)5, after,
                                    sizeof(after)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_TLS, NULL, 5),
               M2MPSK_E_INVALID);
  m2mpsk_config_free(cfg);
}

Test(profile, set_profile_on_a_frozen_config) {
  m2mpsk_config *cfg;
  m2mpsk_keystore *ks;
  m2mpsk_assoc *a;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(ks, M2MT_KPSA_ID, m2mt_key, 32, NULL,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_TLS, cfg, ks, M2MT_KPSA_ID),
               M2MPSK_OK);
  /* The backend's verdict comes first: nothing could make BoringSSL
   * honour the profile, frozen or not. */
  cr_assert_eq(m2mpsk_config_set_profile(cfg, M2MPSK_PROFILE_TS0003),
               is_boringssl() ? M2MPSK_E_SUITE : M2MPSK_E_STATE);
  char list[1024];
  cr_assert_eq(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_TLS, list,
                                    sizeof(list)),
               M2MPSK_OK, "still readable when frozen");
  m2mpsk_assoc_free(a);
  m2mpsk_keystore_free(ks);
  m2mpsk_config_free(cfg);
}

/* The default config negotiates the profile's first suite wherever the
 * backend honours it; with BoringSSL its own first default. */
Test(profile, default_handshake_uses_the_mandated_suite) {
  for (int t = 0; t < 2; t++) {
    m2mt_pair p;
    m2mt_pair_init(&p, (m2mpsk_transport)t, m2mt_key, m2mt_key, M2MT_IDA,
                   NULL);
    m2mt_pair_start(&p, 0, 0);
    uint64_t now = 0;
    cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
    cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "%s",
                 m2mpsk_assoc_failure_detail(p.b));
    const char *want = is_boringssl() ? "TLS_PSK_WITH_AES_128_CBC_SHA"
                       : t == 0       ? CBC256
                                      : CCM8;
    cr_assert_str_eq(m2mpsk_assoc_suite(p.a), want);
    cr_assert_str_eq(m2mpsk_assoc_suite(p.b), want);
    m2mt_pair_free(&p);
  }
}
