/* Run against a copy of libm2mpsk.so.0 with only one engine module beside
 * it (tests/engines/CMakeLists.txt sets that up): the other engine's
 * absence is reported, by name, and the present one still runs TLS and
 * DTLS associations for a default config. argv[1]: the engine present.
 * Exits non-zero on any mismatch. */
#include <stdio.h>
#include <string.h>

#include "m2mpsk/m2mpsk.h"
#include "pump.h"

static int failures;

#define EXPECT(cond)                                                           \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "one_engine: FAILED line %d: %s\n", __LINE__, #cond);    \
      failures++;                                                              \
    }                                                                          \
  } while (0)

int main(int argc, char **argv) {
  if (argc != 2)
    return 2;
  int openssl = strcmp(argv[1], "openssl") == 0;
  m2mpsk_engine_id have =
      openssl ? M2MPSK_ENGINE_OPENSSL : M2MPSK_ENGINE_BORINGSSL;
  m2mpsk_engine_id lack =
      openssl ? M2MPSK_ENGINE_BORINGSSL : M2MPSK_ENGINE_OPENSSL;
  EXPECT(strcmp(m2mpsk_backend_name(), argv[1]) == 0);
  EXPECT(m2mpsk_engine_available(have) == 1);
  EXPECT(m2mpsk_engine_available(lack) == 0);
  EXPECT(m2mpsk_engine_available(M2MPSK_ENGINE_AUTO) == 1);
  EXPECT(m2mpsk_engine_suite_count(lack) == 0);
  /* "<engine>: <why>", naming the missing module. */
  char want[64];
  snprintf(want, sizeof(want), "%s: ", m2mpsk_engine_name(lack));
  EXPECT(strncmp(m2mpsk_backend_error(), want, strlen(want)) == 0);
  snprintf(want, sizeof(want), "tls-%s.so", m2mpsk_engine_name(lack));
  EXPECT(strstr(m2mpsk_backend_error(), want) != NULL);
  EXPECT(m2mpsk_suite_count() == m2mpsk_engine_suite_count(have));

  static const uint8_t key[32] = {9, 8, 7};
  m2mpsk_keystore *ks = NULL;
  m2mpsk_config *ca = NULL, *cb = NULL;
  EXPECT(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK);
  EXPECT(m2mpsk_keystore_add(ks, "test@onem2m.com", key, sizeof(key), NULL,
                             "//m2m.example.com/cse-in", 0, 0) == M2MPSK_OK);
  EXPECT(m2mpsk_config_new(&ca) == M2MPSK_OK);
  EXPECT(m2mpsk_config_new(&cb) == M2MPSK_OK);
  EXPECT(m2mpsk_config_set_engine(ca, lack) == M2MPSK_E_UNSUPPORTED);
  EXPECT(m2mpsk_config_add_local_id(cb, "//m2m.example.com/cse-in") ==
         M2MPSK_OK);
  for (int t = 0; t < 2 && failures == 0; t++) {
    m2mpsk_assoc *a = NULL, *b = NULL;
    EXPECT(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, (m2mpsk_transport)t, ca,
                            ks, "test@onem2m.com") == M2MPSK_OK);
    EXPECT(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, (m2mpsk_transport)t, cb,
                            ks, NULL) == M2MPSK_OK);
    if (a == NULL || b == NULL)
      return 1;
    EXPECT(m2mpsk_assoc_start(b, 1000, 0) == M2MPSK_OK);
    EXPECT(m2mpsk_assoc_start(a, 1000, 0) == M2MPSK_OK);
    pump(a, b);
    EXPECT(m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED);
    EXPECT(m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED);
    EXPECT(m2mpsk_assoc_engine(a) == have);
    EXPECT(m2mpsk_assoc_engine(b) == have);
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
  }
  m2mpsk_config_free(ca);
  m2mpsk_config_free(cb);
  m2mpsk_keystore_free(ks);
  if (failures == 0)
    printf("one_engine: %s alone works; %s\n", argv[1], m2mpsk_backend_error());
  return failures != 0;
}
