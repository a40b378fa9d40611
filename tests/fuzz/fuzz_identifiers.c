/* The identifier parsers: KpsaID, IdB (CSE-ID), IdA (CSE-ID or AE-ID), the
 * SNI host derived from an IdB, the Credential-ID, and the same strings
 * through the entry points that validate them (config local identity,
 * keystore add, lookup and remove).
 *
 * Input: the string, up to the first NUL (at most 2048 bytes). The length
 * also picks a small output capacity for m2mpsk_idb_server_name and
 * m2mpsk_credential_id, to reach their M2MPSK_E_BUFFER paths. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "identity.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char s[2049];
  if (size > sizeof(s) - 1)
    size = sizeof(s) - 1;
  memcpy(s, data, size);
  s[size] = '\0';

  int k = m2mpsk_kpsa_id_validate(s);
  int b = m2mpsk_idb_validate(s);
  int a = m2mpsk_ida_validate(s);
  (void)a;

  char host[256];
  int h = m2mpsk_idb_server_name(s, host, sizeof(host));
  /* An IdB with a host name always validates as an IdB. */
  if (h == M2MPSK_OK && b != M2MPSK_OK) {
    fprintf(stderr, "server name from an invalid IdB\n");
    __builtin_trap();
  }
  if (h == M2MPSK_OK && (strlen(host) == 0 || strlen(host) > 253)) {
    fprintf(stderr, "bad server name length\n");
    __builtin_trap();
  }
  (void)m2mpsk_idb_server_name(s, host, size % 32 + 1);

  char cred[M2MPSK_CREDENTIAL_ID_MAX + 1];
  int c = m2mpsk_credential_id(s, cred, sizeof(cred));
  if ((c == M2MPSK_OK) != (k == M2MPSK_OK)) {
    fprintf(stderr, "credential id disagrees with kpsa id validation\n");
    __builtin_trap();
  }
  (void)m2mpsk_credential_id(s, cred, size % 32 + 1);

  /* Through the configuration and keystore entry points. */
  m2mpsk_config *cfg = NULL;
  fz_check(m2mpsk_config_new(&cfg) == M2MPSK_OK, "config_new");
  int lid = m2mpsk_config_add_local_id(cfg, s);
  if ((lid == M2MPSK_OK) != (b == M2MPSK_OK)) {
    fprintf(stderr, "config_add_local_id disagrees with idb_validate\n");
    __builtin_trap();
  }
  m2mpsk_config_free(cfg);

  static m2mpsk_keystore *ks;
  if (ks == NULL)
    fz_check(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore_new");
  if (m2mpsk_keystore_add(ks, s, fz_key, sizeof(fz_key), s, FZ_IDB, 0, 0) ==
      M2MPSK_OK) {
    char ida[M2MPSK_ID_MAX + 1], idb[M2MPSK_ID_MAX + 1];
    fz_check(m2mpsk_keystore_lookup(ks, s, ida, sizeof(ida), idb, sizeof(idb),
                                    NULL, NULL, NULL) == M2MPSK_OK,
             "keystore_lookup");
    fz_check(m2mpsk_keystore_remove(ks, s) == M2MPSK_OK, "keystore_remove");
  } else {
    (void)m2mpsk_keystore_lookup(ks, s, NULL, 0, NULL, 0, NULL, NULL, NULL);
  }
  return 0;
}
