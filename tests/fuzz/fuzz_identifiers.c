/* The identifier parsers: KpsaID, IdB (CSE-ID), IdA (CSE-ID or AE-ID), the
 * SNI host derived from an IdB, the Credential-ID, the same strings
 * through the entry points that validate them (config local identity,
 * keystore add, lookup and remove), and the originator check, which parses
 * a request's From, as a peer sent it, against each kind of binding.
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

  /* A From from the network, against each kind of binding: a verdict of
   * accept only ever comes with M2MPSK_OK, and any error refuses. */
  static const struct {
    m2mpsk_peer_kind kind;
    const char *bound;
  } k_bindings[] = {
      {M2MPSK_PEER_NONE, NULL},
      {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1"},
      {M2MPSK_PEER_AE, "/Sae2"},
      {M2MPSK_PEER_CSE, "//m2m.example.com/cse-mn"},
      {M2MPSK_PEER_CREDENTIAL, "12-test@onem2m.com"},
  };
  for (size_t i = 0; i < sizeof(k_bindings) / sizeof(k_bindings[0]); i++) {
    for (unsigned flags = 0; flags < 4; flags++) {
      m2mpsk_originator_verdict v = M2MPSK_ORIGINATOR_ACCEPT;
      int rc = m2mpsk_originator_check(k_bindings[i].kind, k_bindings[i].bound,
                                       FZ_IDB, s, flags, &v);
      if (rc != M2MPSK_OK && v != M2MPSK_ORIGINATOR_NOT_AUTHENTICATED) {
        fprintf(stderr, "an originator check error did not refuse\n");
        __builtin_trap();
      }
      if (v != M2MPSK_ORIGINATOR_ACCEPT &&
          v != M2MPSK_ORIGINATOR_NOT_AUTHENTICATED &&
          v != M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED) {
        fprintf(stderr, "originator verdict out of range\n");
        __builtin_trap();
      }
    }
  }
  /* The string as the binding, with fixed Froms. */
  m2mpsk_originator_verdict v;
  (void)m2mpsk_originator_check(M2MPSK_PEER_AE, s, FZ_IDB, "Cae1", 1, &v);
  (void)m2mpsk_originator_check(M2MPSK_PEER_CSE, s, FZ_IDB, "/cse-mn/C1", 0,
                                &v);
  (void)m2mpsk_originator_check(M2MPSK_PEER_CREDENTIAL, s, FZ_IDB, "C", 1, &v);
  (void)m2mpsk_originator_check(M2MPSK_PEER_AE, "/cse-in/Cae1", s, "Cae1", 0,
                                &v);

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
