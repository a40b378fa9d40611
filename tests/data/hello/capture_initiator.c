/* Writes the first flight of an m2mpsk initiator (its ClientHello) to a
 * file, with whichever backend the libm2mpsk it links loads. Not built by
 * CMake: README.md beside it gives the command line.
 *
 *   capture_initiator tls|dtls OUT [SUITES]
 */
#include <stdio.h>
#include <string.h>

#include "m2mpsk/m2mpsk.h"

static const uint8_t key[32] = {
    0x4b, 0x70, 0x73, 0x61, 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12,
    13,   14,   15,   16,   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28};

static int fail(const char *what, int rc) {
  fprintf(stderr, "%s: %s\n", what, m2mpsk_strerror(rc));
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 3 || argc > 4) {
    fprintf(stderr, "usage: capture_initiator tls|dtls OUT [SUITES]\n");
    return 2;
  }
  m2mpsk_transport t = strcmp(argv[1], "dtls") == 0 ? M2MPSK_TRANSPORT_DTLS
                                                    : M2MPSK_TRANSPORT_TLS;
  m2mpsk_keystore *ks;
  m2mpsk_config *cfg;
  m2mpsk_assoc *a;
  int rc;
  if ((rc = m2mpsk_keystore_new(&ks, 0)) != M2MPSK_OK)
    return fail("keystore_new", rc);
  if ((rc = m2mpsk_keystore_add(ks, "test@onem2m.com", key, sizeof(key),
                                "//m2m.example.com/cse-in/Cae1",
                                "//m2m.example.com/cse-in", 0, 0)) != M2MPSK_OK)
    return fail("keystore_add", rc);
  if ((rc = m2mpsk_config_new(&cfg)) != M2MPSK_OK)
    return fail("config_new", rc);
  if (argc == 4 && (rc = m2mpsk_config_set_suites(cfg, argv[3])) != M2MPSK_OK)
    return fail("config_set_suites", rc);
  if ((rc = m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, cfg, ks,
                             "test@onem2m.com")) != M2MPSK_OK)
    return fail("assoc_new", rc);
  if ((rc = m2mpsk_assoc_start(a, 1000, 0)) != M2MPSK_OK)
    return fail("assoc_start", rc);
  static uint8_t buf[20000];
  size_t n;
  if ((rc = m2mpsk_assoc_drain(a, buf, sizeof(buf), &n)) != M2MPSK_OK)
    return fail("assoc_drain", rc);
  FILE *f = fopen(argv[2], "wb");
  if (f == NULL || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
    perror(argv[2]);
    return 1;
  }
  m2mpsk_assoc_free(a);
  m2mpsk_config_free(cfg);
  m2mpsk_keystore_free(ks);
  return 0;
}
