/* Key sources: placeholder so that the tree links while the implementation
 * is written (issue 19). Every entry point reports M2MPSK_E_UNSUPPORTED. */
#include "m2mpsk/m2mpsk.h"

#include <stddef.h>

int m2mpsk_keystore_set_source(m2mpsk_keystore *ks, m2mpsk_key_source_fn fn,
                               void *arg, size_t max_pending) {
  (void)ks, (void)fn, (void)arg, (void)max_pending;
  return M2MPSK_E_UNSUPPORTED;
}
int m2mpsk_keystore_next_request(m2mpsk_keystore *ks,
                                 m2mpsk_key_request **out) {
  (void)ks;
  if (out)
    *out = NULL;
  return M2MPSK_E_UNSUPPORTED;
}
const char *m2mpsk_key_request_kpsa_id(const m2mpsk_key_request *r) {
  (void)r;
  return NULL;
}
const char *m2mpsk_key_request_server_name(const m2mpsk_key_request *r) {
  (void)r;
  return NULL;
}
m2mpsk_role m2mpsk_key_request_role(const m2mpsk_key_request *r) {
  (void)r;
  return M2MPSK_ROLE_RESPONDER;
}
int m2mpsk_key_request_answered(const m2mpsk_key_request *r) {
  (void)r;
  return M2MPSK_E_UNSUPPORTED;
}
int m2mpsk_key_request_supply(m2mpsk_key_request *r, const uint8_t *key,
                              size_t key_len, const char *ida, const char *idb,
                              int64_t nb, int64_t na) {
  (void)r, (void)key, (void)key_len, (void)ida, (void)idb, (void)nb, (void)na;
  return M2MPSK_E_UNSUPPORTED;
}
int m2mpsk_key_request_absent(m2mpsk_key_request *r) {
  (void)r;
  return M2MPSK_E_UNSUPPORTED;
}
void m2mpsk_key_request_free(m2mpsk_key_request *r) { (void)r; }
m2mpsk_key_request *m2mpsk_key_request_ref(m2mpsk_key_request *r) {
  return r;
}
m2mpsk_key_request *m2mpsk_assoc_key_request(const m2mpsk_assoc *a) {
  (void)a;
  return NULL;
}
int m2mpsk_assoc_resume(m2mpsk_assoc *a, uint64_t now_ms) {
  (void)a, (void)now_ms;
  return M2MPSK_E_UNSUPPORTED;
}
