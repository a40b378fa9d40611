/* TEMPORARY (wire19): stands in for etcd19's component until it is
 * merged, so that serve and gateway compile against etcd_keys.h. For a
 * manual check of the wake-up path only: with M2MPSK_STUB_KEYFILE set it
 * loads that key file, and with M2MPSK_STUB_REMOVE=ID removes ID after
 * M2MPSK_STUB_DELAY_MS from a thread, then calls on_change. Removed by
 * the merge. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "etcd_keys.h"

struct m2mpsk_etcd_sync {
  m2mpsk_keystore *ks;
  m2mpsk_etcd_options o;
  pthread_t t;
  int has_thread;
};

int m2mpsk_etcd_is_url(const char *spec) {
  return spec != NULL && strncmp(spec, "etcd://", 7) == 0;
}

static void *run(void *arg) {
  struct m2mpsk_etcd_sync *s = arg;
  const char *d = getenv("M2MPSK_STUB_DELAY_MS");
  long ms = d ? atol(d) : 1000;
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  if (m2mpsk_keystore_remove(s->ks, getenv("M2MPSK_STUB_REMOVE")) ==
          M2MPSK_OK &&
      s->o.on_change)
    s->o.on_change(s->o.arg);
  return NULL;
}

int m2mpsk_etcd_sync_start(m2mpsk_etcd_sync **out, m2mpsk_keystore *ks,
                           const m2mpsk_etcd_options *opts, char *err,
                           size_t err_cap) {
  *out = NULL;
  const char *kf = getenv("M2MPSK_STUB_KEYFILE");
  if (kf == NULL) {
    snprintf(err, err_cap, "built without etcd support");
    return M2MPSK_E_UNSUPPORTED;
  }
  size_t line;
  if (m2mpsk_keystore_load_file(ks, kf, &line) != M2MPSK_OK) {
    snprintf(err, err_cap, "stub: cannot load %s", kf);
    return M2MPSK_E_IO;
  }
  struct m2mpsk_etcd_sync *s = calloc(1, sizeof(*s));
  s->ks = ks;
  s->o = *opts;
  if (getenv("M2MPSK_STUB_REMOVE") != NULL)
    s->has_thread = pthread_create(&s->t, NULL, run, s) == 0;
  *out = s;
  return M2MPSK_OK;
}

void m2mpsk_etcd_sync_stop(m2mpsk_etcd_sync *s) {
  if (s == NULL)
    return;
  if (s->has_thread)
    pthread_join(s->t, NULL);
  free(s);
}

void m2mpsk_etcd_sync_stats(const m2mpsk_etcd_sync *s, m2mpsk_etcd_stats *out) {
  memset(out, 0, sizeof(*out));
  if (s != NULL)
    out->records = m2mpsk_keystore_count(s->ks);
}
