/* Run against a copy of libm2mpsk.so.0 with no m2mpsk/ directory beside
 * it (tests/backend/CMakeLists.txt sets that up): every call that needs the
 * TLS backend must say so with M2MPSK_E_BACKEND and a readable reason,
 * and everything else must keep working. Exits non-zero on any mismatch. */
#include <stdio.h>
#include <string.h>

#include "m2mpsk/m2mpsk.h"

static int failures;

#define EXPECT(cond)                                                          \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "backend_missing: FAILED line %d: %s\n", __LINE__,      \
              #cond);                                                         \
      failures++;                                                             \
    }                                                                         \
  } while (0)

int main(void) {
  static const uint8_t key[32] = {1, 2, 3};
  EXPECT(strcmp(m2mpsk_backend_name(), "unavailable") == 0);
  EXPECT(strstr(m2mpsk_backend_error(), "tls-") != NULL);
  EXPECT(m2mpsk_suite_count() == 0);
  EXPECT(m2mpsk_suite_name(0) == NULL);

  m2mpsk_keystore *ks = NULL;
  m2mpsk_config *cfg = NULL;
  m2mpsk_assoc *a = NULL;
  EXPECT(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK);
  EXPECT(m2mpsk_keystore_add(ks, "test@onem2m.com", key, sizeof(key), NULL,
                             "//m2m.example.com/cse-in", 0, 0) == M2MPSK_OK);
  EXPECT(m2mpsk_config_new(&cfg) == M2MPSK_OK);
  EXPECT(m2mpsk_config_set_suites(cfg, "TLS_PSK_WITH_AES_128_CBC_SHA") ==
         M2MPSK_E_BACKEND);
  EXPECT(m2mpsk_config_set_profile(cfg, M2MPSK_PROFILE_TS0003) ==
         M2MPSK_E_BACKEND);
  char buf[1024];
  EXPECT(m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, buf, sizeof(buf)) ==
         M2MPSK_E_BACKEND);
  EXPECT(m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003, M2MPSK_TRANSPORT_TLS,
                               buf, sizeof(buf)) == M2MPSK_E_BACKEND);
  EXPECT(m2mpsk_config_suites(cfg, M2MPSK_TRANSPORT_DTLS, buf, sizeof(buf)) ==
         M2MPSK_E_BACKEND);
  EXPECT(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                          cfg, ks, "test@onem2m.com") == M2MPSK_E_BACKEND);
  EXPECT(a == NULL);
  static const uint8_t hello[13] = {22, 0xfe, 0xfd};
  uint8_t out[64];
  size_t out_len = 1;
  EXPECT(m2mpsk_dtls_listen(cfg, "192.0.2.7:5684", hello, sizeof(hello), out,
                            sizeof(out), &out_len) == M2MPSK_E_BACKEND);
  EXPECT(out_len == 0);
  /* What needs no TLS still works. */
  EXPECT(m2mpsk_kpsa_id_validate("test@onem2m.com") == M2MPSK_OK);
  EXPECT(m2mpsk_keystore_count(ks) == 1);
  m2mpsk_config_free(cfg);
  m2mpsk_keystore_free(ks);
  if (failures == 0)
    printf("backend_missing: every call needing the backend said so (%s)\n",
           m2mpsk_backend_error());
  return failures != 0;
}
