/* TEMPORARY (wire19): stands in for etcd19's component until it is
 * merged, so that serve and gateway compile against etcd_keys.h. Removed
 * by the merge. */
#include <stdio.h>
#include <string.h>

#include "etcd_keys.h"

int m2mpsk_etcd_is_url(const char *spec) {
  return spec != NULL && strncmp(spec, "etcd://", 7) == 0;
}

int m2mpsk_etcd_sync_start(m2mpsk_etcd_sync **out, m2mpsk_keystore *ks,
                           const m2mpsk_etcd_options *opts, char *err,
                           size_t err_cap) {
  (void)ks;
  (void)opts;
  if (out != NULL)
    *out = NULL;
  snprintf(err, err_cap, "built without etcd support");
  return M2MPSK_E_UNSUPPORTED;
}

void m2mpsk_etcd_sync_stop(m2mpsk_etcd_sync *s) { (void)s; }

void m2mpsk_etcd_sync_stats(const m2mpsk_etcd_sync *s, m2mpsk_etcd_stats *out) {
  (void)s;
  memset(out, 0, sizeof(*out));
}
