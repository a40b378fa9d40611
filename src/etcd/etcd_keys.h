/* Keys kept in step across a cluster by etcd (issue 19): a component of the
 * command-line tool, not of libm2mpsk, which gains no network dependency.
 * It speaks etcd's v3 JSON gateway (POST /v3/kv/range, /v3/kv/put,
 * /v3/kv/txn, /v3/kv/deleterange, /v3/watch) with libcurl, and wraps every
 * Kpsa with a key-encryption key (libsodium AEAD, the KpsaID as associated
 * data) so that etcd never holds a plaintext key.
 *
 * This header is the contract between the component (src/etcd/) and its
 * users (src/cli/serve.c, src/gateway/, src/cli/keys.c). */
#ifndef M2MPSK_ETCD_KEYS_H
#define M2MPSK_ETCD_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

/* 1 when `spec` is an etcd URL ("etcd://HOST:PORT[,HOST:PORT...]/PREFIX"),
 * 0 otherwise (then it is a key file path). */
int m2mpsk_etcd_is_url(const char *spec);

typedef struct m2mpsk_etcd_sync m2mpsk_etcd_sync;

typedef struct m2mpsk_etcd_options {
  const char *url;      /* etcd://HOST:PORT[,HOST:PORT...]/PREFIX */
  const char *kek_file; /* the key-encryption key: a 0600 file */
  /* While no endpoint answers, the keystore keeps serving what it holds
   * for this long; then every record is removed (fail closed) until etcd
   * answers again and a fresh snapshot is loaded. 0: the default, 30 s. */
  uint32_t fail_closed_ms;
  /* Called from the component's own thread after every change it applied
   * to the keystore (a batch of watch events, a resync, fail-closed), so
   * that the host wakes its event loop and lets live associations notice
   * (m2mpsk_assoc_handle_timeout() fails those whose record went). Must be
   * async-signal-safe in spirit: write to an eventfd or pipe, no more.
   * May be NULL. */
  void (*on_change)(void *arg);
  void *arg;
  /* Added by etcd19 (optional, 0: the default; zero-initialise the
   * struct): records per range call of a snapshot (default 20,000), and
   * the most records a node holds from etcd (default 16 Mi; a snapshot
   * with more fails with M2MPSK_E_PROTOCOL, a watch put beyond it is
   * skipped with a log line). */
  size_t page_size;
  size_t max_records;
} m2mpsk_etcd_options;

/* Loads the snapshot into `ks` (synchronously: on return the keystore holds
 * every live record under the prefix, at revision R), then starts a thread
 * that watches from R+1 and applies each change: a put as
 * m2mpsk_keystore_put(), a delete or a record marked revoked as a removal;
 * on compaction it resyncs from a fresh snapshot; it fails over between
 * the endpoints. `ks` must outlive the sync object.
 * Returns M2MPSK_OK, or an m2mpsk status with a readable reason in `err`
 * (never a key): M2MPSK_E_INVALID (bad URL or options), M2MPSK_E_IO (KEK
 * file unreadable, unsafe or malformed; no endpoint answered),
 * M2MPSK_E_PROTOCOL (etcd answered something unexpected), M2MPSK_E_NOMEM. */
int m2mpsk_etcd_sync_start(m2mpsk_etcd_sync **out, m2mpsk_keystore *ks,
                           const m2mpsk_etcd_options *opts, char *err,
                           size_t err_cap);

/* Stops the thread and frees the object; the keystore keeps its records.
 * NULL is a no-op. */
void m2mpsk_etcd_sync_stop(m2mpsk_etcd_sync *s);

/* Counters for logs and tests. */
typedef struct m2mpsk_etcd_stats {
  uint64_t revision;   /* last revision applied */
  uint64_t records;    /* records held from etcd */
  uint64_t puts, removals, resyncs, failovers;
  int fail_closed;     /* 1 while refusing because etcd is unreachable */
  uint64_t snapshot_ms; /* how long the last snapshot load took */
} m2mpsk_etcd_stats;
void m2mpsk_etcd_sync_stats(const m2mpsk_etcd_sync *s, m2mpsk_etcd_stats *out);

#endif /* M2MPSK_ETCD_KEYS_H */
