/* A complete pair of associations through the public API only, shared by
 * the coexistence tests. */
#include "handshake.h"

#include <stdio.h>
#include <string.h>

static const uint8_t k_key[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                  12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                  23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static int pump(m2mpsk_assoc *from, m2mpsk_assoc *to) {
  uint8_t buf[17408];
  size_t n;
  int moved = 0;
  while (m2mpsk_assoc_drain(from, buf, sizeof(buf), &n) == M2MPSK_OK) {
    int rc = m2mpsk_assoc_feed(to, buf, n, 1000);
    /* A failure shows in the state checked after the handshake; stop
     * feeding a side that takes no more input. */
    if (rc != M2MPSK_OK) {
      fprintf(stderr, "feed: %s\n", m2mpsk_strerror(rc));
      return 0;
    }
    moved = 1;
  }
  return moved;
}

int coexist_handshake(m2mpsk_transport t, char *peer_a, char *peer_b,
                      size_t cap) {
  m2mpsk_keystore *ks = NULL;
  m2mpsk_config *ca = NULL, *cb = NULL;
  m2mpsk_assoc *a = NULL, *b = NULL;
  int rc = -1;
  if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK ||
      m2mpsk_keystore_add(ks, "test@onem2m.com", k_key, sizeof(k_key),
                          "//m2m.example.com/cse-in/Cae1",
                          "//m2m.example.com/cse-in", 0, 0) != M2MPSK_OK ||
      m2mpsk_config_new(&ca) != M2MPSK_OK ||
      m2mpsk_config_new(&cb) != M2MPSK_OK ||
      m2mpsk_config_add_local_id(cb, "//m2m.example.com/cse-in") != M2MPSK_OK ||
      m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, ca, ks,
                       "test@onem2m.com") != M2MPSK_OK ||
      m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, cb, ks, NULL) !=
          M2MPSK_OK ||
      m2mpsk_assoc_start(b, 1000, 0) != M2MPSK_OK ||
      m2mpsk_assoc_start(a, 1000, 0) != M2MPSK_OK) {
    fprintf(stderr, "setup failed (backend %s%s%s)\n", m2mpsk_backend_name(),
            *m2mpsk_backend_error() ? ": " : "", m2mpsk_backend_error());
    goto out;
  }
  for (int i = 0; i < 20 && (pump(a, b) | pump(b, a)); i++)
    ;
  if (m2mpsk_assoc_state(a) != M2MPSK_STATE_ESTABLISHED ||
      m2mpsk_assoc_state(b) != M2MPSK_STATE_ESTABLISHED) {
    fprintf(stderr, "handshake failed: A %s, B %s\n",
            m2mpsk_assoc_failure_detail(a), m2mpsk_assoc_failure_detail(b));
    goto out;
  }
  snprintf(peer_a, cap, "%s", m2mpsk_assoc_peer_id(a));
  snprintf(peer_b, cap, "%s", m2mpsk_assoc_peer_id(b));
  rc = 0;
out:
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(ca);
  m2mpsk_config_free(cb);
  m2mpsk_keystore_free(ks);
  return rc;
}
