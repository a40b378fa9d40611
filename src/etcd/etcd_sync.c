/* The etcd sync: a snapshot of every record at revision R, then a watch
 * from R+1 applied to the keystore, in one thread of its own (libcurl's
 * multi interface drives the watch stream and the liveness probes). */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "etcd_internal.h"
#include "etcd_keys.h"

#define DEFAULT_FAIL_CLOSED_MS 30000
/* Records per range call. etcd 3.4 walks the whole rest of the range for
 * every page (to count it), so a snapshot of N records in pages of P costs
 * it about N*N/(2P) index steps: large pages. 100,000 records are about
 * 16 MB of RangeResponse. */
#define DEFAULT_PAGE 100000
#define DEFAULT_MAX_RECORDS ((size_t)16 << 20)
/* A probe of the watched endpoint every PROBE_MS, failed after
 * PROBE_TIMEOUT_MS: a member that stopped answering is left within about
 * two seconds, though the watch stream itself may be silent for hours. */
#define PROBE_MS 1000
#define PROBE_TIMEOUT_MS 1500
/* A watch not confirmed ("created") this long after it was sent. */
#define WATCH_CREATE_MS 3000
/* Per applied batch, at most this many "put"/"removed" lines with -v;
 * more are summarised in one line. */
#define LOG_PER_BATCH 16

/* ---- the KpsaIDs held from etcd, with their mod_revision ------------------
 * Open addressing, linear probing, deletion by backward shift. */
typedef struct held_slot {
  char *id;
  int64_t rev;
  uint64_t hash; /* compared first: a probe need not read the string */
} held_slot;
typedef struct held_set {
  held_slot *s;
  size_t cap, n; /* cap a power of two */
} held_set;

static uint64_t id_hash(const char *id) {
  uint64_t h = 1469598103934665603ull;
  for (; *id; id++)
    h = (h ^ (unsigned char)*id) * 1099511628211ull;
  /* FNV-1a leaves KpsaIDs that differ in their last digits close in the
   * low bits, which index the table: mix them (MurmurHash3's finaliser). */
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 33);
}

static held_slot *held_find_h(const held_set *h, const char *id,
                              uint64_t hash) {
  if (h->cap == 0)
    return NULL;
  for (size_t i = hash & (h->cap - 1);; i = (i + 1) & (h->cap - 1)) {
    if (h->s[i].id == NULL)
      return NULL;
    if (h->s[i].hash == hash && strcmp(h->s[i].id, id) == 0)
      return &h->s[i];
  }
}

static held_slot *held_find(const held_set *h, const char *id) {
  return held_find_h(h, id, id_hash(id));
}

static int held_grow(held_set *h) {
  size_t cap = h->cap ? h->cap * 2 : 1024;
  held_slot *s = calloc(cap, sizeof(*s));
  if (s == NULL)
    return -1;
  for (size_t i = 0; i < h->cap; i++) {
    if (h->s[i].id == NULL)
      continue;
    size_t j = h->s[i].hash & (cap - 1);
    while (s[j].id != NULL)
      j = (j + 1) & (cap - 1);
    s[j] = h->s[i];
  }
  free(h->s);
  h->s = s;
  h->cap = cap;
  return 0;
}

/* Sets id's revision, adding it if new. 0 or -1 (no memory). */
static int held_set_rev(held_set *h, const char *id, int64_t rev) {
  uint64_t hash = id_hash(id);
  held_slot *f = held_find_h(h, id, hash);
  if (f != NULL) {
    f->rev = rev;
    return 0;
  }
  if ((h->n + 1) * 4 > h->cap * 3 && held_grow(h) != 0)
    return -1;
  char *copy = strdup(id);
  if (copy == NULL)
    return -1;
  size_t i = hash & (h->cap - 1);
  while (h->s[i].id != NULL)
    i = (i + 1) & (h->cap - 1);
  h->s[i].id = copy;
  h->s[i].rev = rev;
  h->s[i].hash = hash;
  h->n++;
  return 0;
}

static void held_del(held_set *h, const char *id) {
  held_slot *f = held_find(h, id);
  if (f == NULL)
    return;
  size_t i = (size_t)(f - h->s), mask = h->cap - 1;
  free(h->s[i].id);
  h->s[i].id = NULL;
  h->n--;
  for (size_t j = (i + 1) & mask; h->s[j].id != NULL; j = (j + 1) & mask) {
    size_t home = h->s[j].hash & mask;
    /* Move j back into the hole i when its home is not in (i, j]. */
    if ((j > i && (home <= i || home > j)) ||
        (j < i && home <= i && home > j)) {
      h->s[i] = h->s[j];
      h->s[j].id = NULL;
      i = j;
    }
  }
}

static void held_free(held_set *h) {
  for (size_t i = 0; i < h->cap; i++)
    free(h->s[i].id);
  free(h->s);
  memset(h, 0, sizeof(*h));
}

/* ---- bulk loading
 * ------------------------------------------------------------
 * m2mpsk_keystore_add() costs about 6 us a record (the key arena is opened
 * and closed around each one). Records not held yet go into a keystore
 * batch instead: each key is copied into the batch's locked, guarded memory
 * as soon as its record is decoded (the decoded record itself lives in the
 * sync's sodium_malloc'd buffer and is wiped right after), and the batch is
 * committed, all or nothing, at the end of every page of the range. So no
 * page's keys ever sit together in plaintext outside the keystore, staging
 * holds at most a page, and the node serves a growing part of the snapshot
 * while it loads. */
typedef struct bulk {
  m2mpsk_keystore_batch *batch; /* NULL until a page's first new record */
  size_t n;
} bulk;

/* Time spent in the keystore (batch adds and commits), for the trace. */
static uint64_t bulk_load_us;

/* Commits the page's records. M2MPSK_OK or the commit's code. */
static int bulk_commit(bulk *b, char *err, size_t cap) {
  if (b->batch == NULL)
    return M2MPSK_OK;
  uint64_t t0 = now_us();
  size_t at = 0;
  int rc = m2mpsk_keystore_batch_commit(b->batch, &at);
  if (rc == M2MPSK_E_DUPLICATE)
    etcd_say(
        err, cap,
        "loading %zu records into the keystore: %s (record %zu of the page "
        "was added meanwhile by something else)",
        b->n, m2mpsk_strerror(rc), at);
  else if (rc != M2MPSK_OK)
    etcd_say(err, cap, "loading %zu records into the keystore: %s", b->n,
             m2mpsk_strerror(rc));
  m2mpsk_keystore_batch_free(b->batch); /* wipes what was not committed */
  b->batch = NULL;
  b->n = 0;
  bulk_load_us += now_us() - t0;
  return rc;
}

/* Drops what was not committed. */
static void bulk_close(bulk *b) {
  m2mpsk_keystore_batch_free(b->batch);
  b->batch = NULL;
  b->n = 0;
}

/* Stages one record. M2MPSK_OK, a code of m2mpsk_keystore_batch_new() or
 * m2mpsk_keystore_batch_add() (record_valid() has checked what the latter
 * checks, so that is memory). */
static int bulk_add(bulk *b, m2mpsk_keystore *ks, const char *id,
                    const etcd_record *r, char *err, size_t cap) {
  uint64_t t0 = now_us();
  int rc = M2MPSK_OK;
  if (b->batch == NULL)
    rc = m2mpsk_keystore_batch_new(ks, &b->batch);
  if (rc == M2MPSK_OK)
    rc = m2mpsk_keystore_batch_add(b->batch, id, r->key, r->key_len,
                                   r->ida[0] ? r->ida : NULL, r->idb,
                                   r->not_before, r->not_after);
  if (rc == M2MPSK_OK)
    b->n++;
  else
    etcd_say(err, cap, "staging %s for the keystore: %s", id,
             m2mpsk_strerror(rc));
  bulk_load_us += now_us() - t0;
  return rc;
}

/* ---- the sync object ---------------------------------------------------- */

struct m2mpsk_etcd_sync {
  m2mpsk_keystore *ks;
  etcd_client client; /* the snapshot's blocking calls */
  uint8_t *kek;       /* sodium_malloc'd, read-only between uses */
  etcd_record *rec;   /* sodium_malloc'd: each decoded record, then wiped */
  uint32_t fail_closed_ms;
  size_t page, max_records;
  void (*on_change)(void *);
  void *arg;

  pthread_t thread;
  int started;
  atomic_int stop;
  CURLM *multi;

  held_set held;
  char good_idb[M2MPSK_ID_MAX + 1], good_ida[M2MPSK_ID_MAX + 1];
  pthread_mutex_t lock; /* stats */
  m2mpsk_etcd_stats stats;

  /* The watch, owned by the thread. */
  CURL *watch, *probe;
  struct curl_slist *hdr;
  char watch_body[4096], watch_url[160], probe_url[160];
  etcd_buf line; /* the watch stream's incomplete line */
  etcd_buf probe_resp;
  int watch_created, watch_resync, watch_error;
  uint64_t watch_started_ms, last_ok_ms, next_probe_ms;
  int64_t last_rev;
  size_t batch_logged, batch_changes, skips_logged, skips_quiet;
};

static void stats_update(m2mpsk_etcd_sync *s,
                         void (*fn)(m2mpsk_etcd_stats *, const void *),
                         const void *arg) {
  pthread_mutex_lock(&s->lock);
  fn(&s->stats, arg);
  pthread_mutex_unlock(&s->lock);
}

static void set_counts(m2mpsk_etcd_stats *st, const void *arg) {
  const m2mpsk_etcd_sync *s = arg;
  st->revision = (uint64_t)s->last_rev;
  st->records = s->held.n;
}

static void publish(m2mpsk_etcd_sync *s) {
  stats_update(s, set_counts, s);
}

static void changed(m2mpsk_etcd_sync *s) {
  if (s->on_change)
    s->on_change(s->arg);
}

static void kek_open(m2mpsk_etcd_sync *s) {
  sodium_mprotect_readonly(s->kek);
}
static void kek_close(m2mpsk_etcd_sync *s) {
  sodium_mprotect_noaccess(s->kek);
}

static void count_put(m2mpsk_etcd_stats *st, const void *arg) {
  (void)arg;
  st->puts++;
}
static void count_removal(m2mpsk_etcd_stats *st, const void *arg) {
  (void)arg;
  st->removals++;
}

/* why NULL: a put. */
static void log_change(m2mpsk_etcd_sync *s, const char *id, const char *why) {
  s->batch_changes++;
  if (s->batch_logged++ >= LOG_PER_BATCH)
    return;
  if (why)
    cli_trace("keys: removed %s (%s)", id, why);
  else
    cli_trace("keys: put %s", id);
}

/* Whether to log one more skipped record in this batch or snapshot: a
 * store full of records sealed under another KEK must not flood the log. */
static int skip_loud(m2mpsk_etcd_sync *s) {
  if (s->skips_logged < LOG_PER_BATCH) {
    s->skips_logged++;
    return 1;
  }
  s->skips_quiet++;
  return 0;
}

static void skips_summary(m2mpsk_etcd_sync *s) {
  if (s->skips_quiet > 0)
    cli_log("keys: skipped %zu more records (not listed)", s->skips_quiet);
  s->skips_logged = s->skips_quiet = 0;
}

/* Checks what m2mpsk_keystore_add() would, so that a record the keystore
 * would refuse counts as undecodable (whatever this node held for it is
 * removed) and a page's batch does not meet it. */
static int record_valid(m2mpsk_etcd_sync *s, const char *id,
                        const etcd_record *r) {
  /* Most records of a deployment share their IdB (and often their IdA):
   * the last good ones are remembered. */
  int idb_ok = strcmp(r->idb, s->good_idb) == 0;
  if (!idb_ok && m2mpsk_idb_validate(r->idb) == M2MPSK_OK) {
    memcpy(s->good_idb, r->idb, sizeof(s->good_idb));
    idb_ok = 1;
  }
  int ida_ok = r->ida[0] == '\0' || strcmp(r->ida, s->good_ida) == 0;
  if (!ida_ok && m2mpsk_ida_validate(r->ida) == M2MPSK_OK) {
    memcpy(s->good_ida, r->ida, sizeof(s->good_ida));
    ida_ok = 1;
  }
  return idb_ok && ida_ok && m2mpsk_kpsa_id_validate(id) == M2MPSK_OK &&
         r->not_before >= 0 && r->not_after >= 0 &&
         (r->not_before == 0 || r->not_after == 0 ||
          r->not_after >= r->not_before);
}

/* Removes a record held from etcd (revoked or deleted there). */
static void apply_removal(m2mpsk_etcd_sync *s, const char *id,
                          const char *why) {
  if (held_find(&s->held, id) == NULL)
    return;
  int rc = m2mpsk_keystore_remove(s->ks, id);
  held_del(&s->held, id);
  if (rc == M2MPSK_OK || rc == M2MPSK_E_NOT_FOUND) {
    stats_update(s, count_removal, NULL);
    log_change(s, id, why);
  }
}

/* The upsert, with remove + add where the library has no put yet. */
static int keystore_put(m2mpsk_keystore *ks, const char *id,
                        const etcd_record *r) {
  const char *ida = r->ida[0] ? r->ida : NULL;
  int rc = m2mpsk_keystore_put(ks, id, r->key, r->key_len, ida, r->idb,
                               r->not_before, r->not_after);
  if (rc == M2MPSK_E_UNSUPPORTED) {
    int gone = m2mpsk_keystore_remove(ks, id);
    (void)gone;
    rc = m2mpsk_keystore_add(ks, id, r->key, r->key_len, ida, r->idb,
                             r->not_before, r->not_after);
  }
  return rc;
}

/* Decodes one record and applies it: a put, or a removal for a revoked
 * one. With `b`, records not held yet go to the bulk load. Records that do
 * not decode are skipped with a log line (never the value). Returns
 * M2MPSK_OK or a bulk load's error. */
static int apply_kv(m2mpsk_etcd_sync *s, const etcd_kv *kv, bulk *b, char *err,
                    size_t cap) {
  char why[160];
  etcd_record *r = s->rec;
  memset(r, 0, sizeof(*r));
  int rc = kv->value_len == SIZE_MAX
               ? M2MPSK_E_PROTOCOL
               : etcd_record_decode(kv->value, kv->value_len, kv->kpsa_id,
                                    s->kek, r, why, sizeof(why));
  if (kv->value_len == SIZE_MAX)
    snprintf(why, sizeof(why), "the value is not base64");
  if (rc == M2MPSK_OK && !r->revoked && !record_valid(s, kv->kpsa_id, r)) {
    rc = M2MPSK_E_PROTOCOL;
    snprintf(why, sizeof(why), "an identity or the validity is invalid");
  }
  if (rc != M2MPSK_OK) {
    if (skip_loud(s))
      cli_log("keys: skipped %s at revision %" PRId64 ": %s", kv->kpsa_id,
              kv->mod_revision, why);
    sodium_memzero(r, sizeof(*r));
    /* What this node held for it is no longer what etcd says. */
    apply_removal(s, kv->kpsa_id, "undecodable");
    return M2MPSK_OK;
  }
  if (r->revoked) {
    apply_removal(s, kv->kpsa_id, "revoked");
    return M2MPSK_OK;
  }
  held_slot *slot = held_find(&s->held, kv->kpsa_id);
  int held = slot != NULL;
  if (!held && s->held.n >= s->max_records) {
    sodium_memzero(r, sizeof(*r));
    if (skip_loud(s))
      cli_log("keys: skipped %s: this node holds %zu records already (the "
              "maximum)",
              kv->kpsa_id, s->max_records);
    return M2MPSK_OK;
  }
  if (held) {
    slot->rev = kv->mod_revision;
  } else if (held_set_rev(&s->held, kv->kpsa_id, kv->mod_revision) != 0) {
    sodium_memzero(r, sizeof(*r));
    etcd_say(err, cap, "out of memory");
    return M2MPSK_E_NOMEM;
  }
  if (b != NULL && !held) {
    rc = bulk_add(b, s->ks, kv->kpsa_id, r, err, cap);
    sodium_memzero(r, sizeof(*r));
    if (rc != M2MPSK_OK && rc != M2MPSK_E_NOMEM && rc != M2MPSK_E_UNLOCKED) {
      /* The record's own fault (record_valid() should have caught it):
       * skipped like one that put refuses; the rest loads. */
      held_del(&s->held, kv->kpsa_id);
      if (skip_loud(s))
        cli_log("keys: skipped %s: %s", kv->kpsa_id, m2mpsk_strerror(rc));
      return M2MPSK_OK;
    }
    if (rc == M2MPSK_OK && s->last_rev > 0) {
      /* A resync: a change like any other (the first load is not). */
      stats_update(s, count_put, NULL);
      log_change(s, kv->kpsa_id, NULL);
    }
    return rc;
  }
  rc = keystore_put(s->ks, kv->kpsa_id, r);
  sodium_memzero(r, sizeof(*r));
  if (rc != M2MPSK_OK) {
    held_del(&s->held, kv->kpsa_id);
    if (skip_loud(s))
      cli_log("keys: skipped %s: %s", kv->kpsa_id, m2mpsk_strerror(rc));
    return M2MPSK_OK;
  }
  stats_update(s, count_put, NULL);
  log_change(s, kv->kpsa_id, NULL);
  return M2MPSK_OK;
}

static uint64_t cpu_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- snapshot ------------------------------------------------------------ */

typedef struct snap_ctx {
  m2mpsk_etcd_sync *s;
  held_set seen;
  int track; /* 1: the node held records before: note those seen */
  bulk b;
  size_t records;
  char *err;
  size_t cap;
  uint64_t load_us;
} snap_ctx;

static int snap_kv(void *arg, const etcd_kv *kv) {
  snap_ctx *c = arg;
  m2mpsk_etcd_sync *s = c->s;
  if (++c->records > s->max_records) {
    etcd_say(c->err, c->cap,
             "etcd holds more than %zu records under the prefix",
             s->max_records);
    return M2MPSK_E_LIMIT;
  }
  if (!c->track) /* nothing was held: every record is new */
    return apply_kv(s, kv, &c->b, c->err, c->cap);
  held_slot *h = held_find(&s->held, kv->kpsa_id);
  if (h != NULL && h->rev == kv->mod_revision) {
    /* Unchanged since this node applied it. */
    return held_set_rev(&c->seen, kv->kpsa_id, kv->mod_revision) == 0
               ? M2MPSK_OK
               : M2MPSK_E_NOMEM;
  }
  int rc = apply_kv(s, kv, &c->b, c->err, c->cap);
  if (rc == M2MPSK_OK && held_find(&s->held, kv->kpsa_id) != NULL &&
      held_set_rev(&c->seen, kv->kpsa_id, kv->mod_revision) != 0)
    rc = M2MPSK_E_NOMEM;
  return rc;
}

/* The end of a page: its new records go into the keystore together. */
static int snap_page(void *arg) {
  snap_ctx *c = arg;
  return bulk_commit(&c->b, c->err, c->cap);
}

/* Loads every record at the current revision: records not held are bulk
 * loaded, changed ones put, those held but gone removed. */
static int snapshot(m2mpsk_etcd_sync *s, char *err, size_t cap) {
  uint64_t t0 = cli_now_ms(), cpu0 = cpu_us();
  s->client.http_us = s->client.parse_us = 0;
  bulk_load_us = 0;
  snap_ctx c = {.s = s, .err = err, .cap = cap, .track = s->held.n > 0};
  int64_t rev = 0;
  s->batch_logged = s->batch_changes = 0;
  kek_open(s);
  int rc = M2MPSK_OK;
  for (int attempt = 0; attempt < 3; attempt++) {
    rev = 0;
    rc = etcd_range_all(&s->client, s->page, &rev, snap_kv, snap_page, &c, err,
                        cap);
    if (rc != ETCD_COMPACTED)
      break;
    /* Compacted while paging: start again at the new revision. */
  }
  kek_close(s);
  skips_summary(s);
  if (rc == M2MPSK_OK)
    rc = bulk_commit(&c.b, err, cap); /* nothing left after the last page */
  bulk_close(&c.b);
  if (rc == ETCD_COMPACTED)
    rc = M2MPSK_E_PROTOCOL;
  if (rc != M2MPSK_OK) {
    /* Records bulk-staged but not loaded are not held. */
    for (size_t i = 0; i < s->held.cap; i++) {
      const char *id = s->held.s[i].id;
      if (id != NULL && (!c.track || held_find(&c.seen, id) == NULL) &&
          m2mpsk_keystore_lookup(s->ks, id, NULL, 0, NULL, 0, NULL, NULL,
                                 NULL) == M2MPSK_E_NOT_FOUND) {
        held_del(&s->held, id);
        i--; /* the backward shift may have moved another id here */
      }
    }
    held_free(&c.seen);
    publish(s);
    return rc;
  }
  /* Held before, absent from the snapshot: deleted meanwhile. */
  size_t gone = 0;
  for (size_t i = 0; c.track && i < s->held.cap; i++) {
    const char *id = s->held.s[i].id;
    if (id == NULL || held_find(&c.seen, id) != NULL)
      continue;
    char copy[M2MPSK_KPSA_ID_MAX + 1];
    snprintf(copy, sizeof(copy), "%s", id);
    apply_removal(s, copy, "deleted");
    gone++;
    i--;
  }
  (void)gone;
  held_free(&c.seen);
  s->last_rev = rev;
  uint64_t ms = cli_now_ms() - t0;
  uint64_t other =
      ms * 1000 - s->client.http_us - s->client.parse_us - bulk_load_us;
  cli_trace("keys: snapshot of %zu records in %" PRIu64
            " ms: etcd (HTTP) %" PRIu64 " ms, JSON %" PRIu64
            " ms, keystore load %" PRIu64
            " ms, the rest (base64, decrypt, records) %" PRIu64
            " ms; CPU %" PRIu64 " ms",
            c.records, ms, s->client.http_us / 1000, s->client.parse_us / 1000,
            bulk_load_us / 1000, other / 1000, (cpu_us() - cpu0) / 1000);
  pthread_mutex_lock(&s->lock);
  s->stats.snapshot_ms = ms;
  s->stats.failovers = s->client.failovers;
  pthread_mutex_unlock(&s->lock);
  publish(s);
  return M2MPSK_OK;
}

/* ---- the watch --------------------------------------------------------------
 */

static void count_resync(m2mpsk_etcd_stats *st, const void *arg) {
  (void)arg;
  st->resyncs++;
}
static void count_failover(m2mpsk_etcd_stats *st, const void *arg) {
  (void)arg;
  st->failovers++;
}
static void set_fail_closed(m2mpsk_etcd_stats *st, const void *arg) {
  st->fail_closed = *(const int *)arg;
}

/* One line of the watch stream: a JSON object {"result": {...}} or
 * {"error": {...}}. 0, or -1 to end the stream (watch_error or
 * watch_resync set). */
static int watch_line(m2mpsk_etcd_sync *s, const char *p, size_t n) {
  const char *why = "";
  ej *j = ej_parse(p, n, &why);
  const ej *res = ej_get(j, "result");
  if (j == NULL || !ej_is_object(res)) {
    if (ej_get(j, "error") != NULL) {
      const char *m = ej_str(ej_get(ej_get(j, "error"), "message"));
      char msg[201];
      snprintf(msg, sizeof(msg), "%s", m ? m : "no reason given");
      etcd_printable(msg);
      cli_log("keys: the watch ended with an etcd error: %s", msg);
    } else {
      cli_log("keys: %s: malformed watch response (%s): %s", s->watch_url,
              m2mpsk_strerror(M2MPSK_E_PROTOCOL), j ? "no result object" : why);
    }
    ej_free(j);
    s->watch_error = 1;
    return -1;
  }
  s->last_ok_ms = cli_now_ms();
  int64_t compact = 0, hrev = 0;
  if (etcd_json_int(res, "compact_revision", &compact) != 0 ||
      etcd_json_int(ej_get(res, "header"), "revision", &hrev) != 0) {
    cli_log("keys: malformed watch response (%s): a revision is not a "
            "number",
            m2mpsk_strerror(M2MPSK_E_PROTOCOL));
    ej_free(j);
    s->watch_error = 1;
    return -1;
  }
  if (compact > 0 || ej_is_true(ej_get(res, "canceled"))) {
    cli_trace("keys: watch canceled (compacted at revision %" PRId64
              "): resync",
              compact);
    ej_free(j);
    s->watch_resync = 1;
    return -1;
  }
  if (ej_is_true(ej_get(res, "created"))) {
    s->watch_created = 1;
    ej_free(j);
    return 0;
  }
  const ej *events = ej_get(res, "events");
  if (events != NULL && !ej_is_array(events)) {
    cli_log("keys: malformed watch response (%s): events is not an array",
            m2mpsk_strerror(M2MPSK_E_PROTOCOL));
    ej_free(j);
    s->watch_error = 1;
    return -1;
  }
  size_t count = ej_size(events);
  if (count == 0) {
    /* A progress notification: every event up to hrev was sent. */
    if (hrev > s->last_rev)
      s->last_rev = hrev;
    ej_free(j);
    publish(s);
    return 0;
  }
  etcd_kv *kv = malloc(sizeof(*kv));
  if (kv == NULL) {
    ej_free(j);
    s->watch_error = 1;
    return -1;
  }
  s->batch_logged = s->batch_changes = 0;
  int rc = 0;
  char err[256];
  kek_open(s);
  for (size_t i = 0; i < count; i++) {
    const ej *ev = ej_at(events, i);
    const char *type = ej_str(ej_get(ev, "type"));
    int del = type != NULL && strcmp(type, "DELETE") == 0;
    if (!ej_is_object(ev) ||
        (type != NULL && !del && strcmp(type, "PUT") != 0)) {
      cli_log("keys: malformed watch response (%s): a bad event",
              m2mpsk_strerror(M2MPSK_E_PROTOCOL));
      rc = -1;
      break;
    }
    int prc = etcd_kv_parse(&s->client.url, ej_get(ev, "kv"), !del, kv, err,
                            sizeof(err));
    if (prc == M2MPSK_E_PROTOCOL) {
      cli_log("keys: malformed watch response (%s): %s",
              m2mpsk_strerror(M2MPSK_E_PROTOCOL), err);
      rc = -1;
      break;
    }
    if (prc == M2MPSK_OK) {
      if (del)
        apply_removal(s, kv->kpsa_id, "deleted");
      else
        apply_kv(s, kv, NULL, err, sizeof(err));
    }
    if (kv->mod_revision > s->last_rev)
      s->last_rev = kv->mod_revision;
  }
  kek_close(s);
  skips_summary(s);
  sodium_memzero(kv, sizeof(*kv));
  free(kv);
  ej_free(j);
  if (s->batch_logged > LOG_PER_BATCH)
    cli_trace("keys: %zu changes at revision %" PRId64 " (%zu not listed)",
              s->batch_changes, s->last_rev, s->batch_changes - LOG_PER_BATCH);
  publish(s);
  changed(s);
  if (rc != 0)
    s->watch_error = 1;
  return rc;
}

static size_t on_watch(char *data, size_t size, size_t n, void *arg) {
  m2mpsk_etcd_sync *s = arg;
  size_t total = size * n;
  const char *p = data, *end = data + total;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t chunk = nl ? (size_t)(nl - p) : (size_t)(end - p);
    if (etcd_buf_append(&s->line, p, chunk) != 0) {
      cli_log("keys: %s: a watch response longer than %zu bytes (%s)",
              s->watch_url, s->line.max, m2mpsk_strerror(M2MPSK_E_PROTOCOL));
      s->watch_error = 1;
      return 0;
    }
    if (nl == NULL)
      break;
    p = nl + 1;
    if (s->line.len > 0 && watch_line(s, s->line.p, s->line.len) != 0)
      return 0;
    s->line.len = 0;
  }
  return total;
}

static size_t on_probe(char *data, size_t size, size_t n, void *arg) {
  return etcd_buf_append(arg, data, size * n) == 0 ? size * n : 0;
}

static int on_xfer(void *arg, curl_off_t a, curl_off_t b, curl_off_t c,
                   curl_off_t d) {
  (void)a, (void)b, (void)c, (void)d;
  m2mpsk_etcd_sync *s = arg;
  return atomic_load(&s->stop) ? 1 : 0;
}

static void common_opts(m2mpsk_etcd_sync *s, CURL *h) {
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, s->hdr);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 1500L);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_xfer);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, s);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 2L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 1L);
}

static void watch_stop(m2mpsk_etcd_sync *s) {
  if (s->watch) {
    curl_multi_remove_handle(s->multi, s->watch);
    curl_easy_cleanup(s->watch);
    s->watch = NULL;
  }
  if (s->probe) {
    curl_multi_remove_handle(s->multi, s->probe);
    curl_easy_cleanup(s->probe);
    s->probe = NULL;
  }
  s->line.len = 0;
}

static int watch_start(m2mpsk_etcd_sync *s) {
  char key[4 * ETCD_KEY_MAX], end[4 * ETCD_KEY_MAX];
  etcd_prefix_b64(&s->client.url, key, end, sizeof(key));
  snprintf(s->watch_body, sizeof(s->watch_body),
           "{\"create_request\":{\"key\":\"%s\",\"range_end\":\"%s\","
           "\"start_revision\":%" PRId64 ",\"progress_notify\":true}}",
           key, end, s->last_rev + 1);
  snprintf(s->watch_url, sizeof(s->watch_url), "%s/v3/watch",
           s->client.url.base[s->client.cur]);
  snprintf(s->probe_url, sizeof(s->probe_url), "%s/v3/maintenance/status",
           s->client.url.base[s->client.cur]);
  s->watch = curl_easy_init();
  if (s->watch == NULL)
    return -1;
  common_opts(s, s->watch);
  curl_easy_setopt(s->watch, CURLOPT_URL, s->watch_url);
  curl_easy_setopt(s->watch, CURLOPT_POSTFIELDS, s->watch_body);
  curl_easy_setopt(s->watch, CURLOPT_WRITEFUNCTION, on_watch);
  curl_easy_setopt(s->watch, CURLOPT_WRITEDATA, s);
  s->watch_created = s->watch_resync = s->watch_error = 0;
  s->watch_started_ms = cli_now_ms();
  s->next_probe_ms = s->watch_started_ms + PROBE_MS;
  s->line.len = 0;
  curl_multi_add_handle(s->multi, s->watch);
  return 0;
}

static void probe_start(m2mpsk_etcd_sync *s) {
  s->probe = curl_easy_init();
  if (s->probe == NULL)
    return;
  s->probe_resp.len = 0;
  common_opts(s, s->probe);
  curl_easy_setopt(s->probe, CURLOPT_URL, s->probe_url);
  curl_easy_setopt(s->probe, CURLOPT_POSTFIELDS, "{}");
  curl_easy_setopt(s->probe, CURLOPT_WRITEFUNCTION, on_probe);
  curl_easy_setopt(s->probe, CURLOPT_WRITEDATA, &s->probe_resp);
  curl_easy_setopt(s->probe, CURLOPT_TIMEOUT_MS, (long)PROBE_TIMEOUT_MS);
  curl_multi_add_handle(s->multi, s->probe);
}

/* A probe answer is good when it is JSON with a header and a leader: a
 * member cut off from its cluster has none. */
static int probe_good(m2mpsk_etcd_sync *s) {
  const char *why;
  ej *j =
      ej_parse(s->probe_resp.p ? s->probe_resp.p : "", s->probe_resp.len, &why);
  /* The leader's member ID: a 64-bit unsigned number, as a string. */
  const char *leader = ej_str(ej_get(j, "leader"));
  int ok = ej_is_object(ej_get(j, "header")) && leader != NULL &&
           leader[0] != '\0' && strcmp(leader, "0") != 0;
  ej_free(j);
  return ok;
}

/* Sleeps up to ms, waking at once on stop. */
static void nap(m2mpsk_etcd_sync *s, int ms) {
  int n = 0;
  curl_multi_poll(s->multi, NULL, 0, ms, &n);
  (void)n;
}

static void fail_closed(m2mpsk_etcd_sync *s) {
  size_t n = s->held.n;
  s->batch_logged = LOG_PER_BATCH; /* one line for all */
  for (size_t i = 0; i < s->held.cap; i++) {
    const char *id = s->held.s[i].id;
    if (id == NULL)
      continue;
    char copy[M2MPSK_KPSA_ID_MAX + 1];
    snprintf(copy, sizeof(copy), "%s", id);
    apply_removal(s, copy, "etcd unreachable");
    i--;
  }
  int one = 1;
  stats_update(s, set_fail_closed, &one);
  cli_log("keys: etcd unreachable, failing closed (%zu records removed)", n);
  publish(s);
  changed(s);
}

static void *sync_main(void *arg) {
  m2mpsk_etcd_sync *s = arg;
  int need_snapshot = 0, is_closed = 0;
  size_t tries = 0; /* endpoints tried in a row without success */
  s->last_ok_ms = cli_now_ms();
  while (!atomic_load(&s->stop)) {
    uint64_t now = cli_now_ms();
    if (!is_closed && now - s->last_ok_ms > s->fail_closed_ms) {
      watch_stop(s);
      fail_closed(s);
      is_closed = 1;
      need_snapshot = 1;
    }
    if (need_snapshot) {
      char err[256];
      int rc = snapshot(s, err, sizeof(err));
      if (rc == M2MPSK_E_CLOSED)
        break;
      if (rc != M2MPSK_OK) {
        cli_trace("keys: resync failed: %s", err);
        nap(s, 500);
        continue;
      }
      need_snapshot = 0;
      s->last_ok_ms = cli_now_ms();
      stats_update(s, count_resync, NULL);
      cli_log("keys: resync at revision %" PRId64 " (%zu records)", s->last_rev,
              s->held.n);
      if (is_closed) {
        is_closed = 0;
        int zero = 0;
        stats_update(s, set_fail_closed, &zero);
        cli_log("keys: etcd reachable again");
      }
      changed(s);
    }
    if (s->watch == NULL && watch_start(s) != 0) {
      nap(s, 500);
      continue;
    }
    int running = 0, n = 0;
    curl_multi_perform(s->multi, &running);
    CURLMsg *m;
    int failover = 0;
    while ((m = curl_multi_info_read(s->multi, &n)) != NULL) {
      if (m->msg != CURLMSG_DONE)
        continue;
      if (m->easy_handle == s->probe) {
        long code = 0;
        curl_easy_getinfo(s->probe, CURLINFO_RESPONSE_CODE, &code);
        if (m->data.result == CURLE_OK && code == 200 && probe_good(s)) {
          s->last_ok_ms = cli_now_ms();
        } else {
          cli_trace("keys: %s did not answer (%s)", s->probe_url,
                    curl_easy_strerror(m->data.result));
          failover = 1;
        }
        curl_multi_remove_handle(s->multi, s->probe);
        curl_easy_cleanup(s->probe);
        s->probe = NULL;
      } else if (m->easy_handle == s->watch) {
        if (s->watch_resync) {
          need_snapshot = 1;
          watch_stop(s);
          break;
        }
        if (!s->watch_error)
          cli_trace("keys: the watch on %s ended (%s)", s->watch_url,
                    curl_easy_strerror(m->data.result));
        failover = 1;
      }
    }
    if (s->watch && !s->watch_created &&
        cli_now_ms() - s->watch_started_ms > WATCH_CREATE_MS)
      failover = 1;
    if (failover && !atomic_load(&s->stop)) {
      watch_stop(s);
      if (s->client.url.n > 1) {
        s->client.cur = (s->client.cur + 1) % s->client.url.n;
        stats_update(s, count_failover, NULL);
        cli_trace("keys: failing over to %s",
                  s->client.url.base[s->client.cur]);
      }
      if (++tries >= s->client.url.n) {
        tries = 0;
        nap(s, 300);
      }
      continue;
    }
    if (s->watch_created)
      tries = 0;
    now = cli_now_ms();
    if (s->watch && s->probe == NULL && now >= s->next_probe_ms) {
      s->next_probe_ms = now + PROBE_MS;
      probe_start(s);
    }
    curl_multi_poll(s->multi, NULL, 0, 200, &n);
  }
  watch_stop(s);
  return NULL;
}

/* ---- the API --------------------------------------------------------------
 */

static void sync_free(m2mpsk_etcd_sync *s) {
  if (s->multi)
    curl_multi_cleanup(s->multi);
  curl_slist_free_all(s->hdr);
  etcd_client_free(&s->client);
  if (s->kek)
    sodium_free(s->kek);
  if (s->rec)
    sodium_free(s->rec); /* wipes */
  held_free(&s->held);
  etcd_buf_free(&s->line);
  etcd_buf_free(&s->probe_resp);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

int m2mpsk_etcd_sync_start(m2mpsk_etcd_sync **out, m2mpsk_keystore *ks,
                           const m2mpsk_etcd_options *opts, char *err,
                           size_t err_cap) {
  if (out)
    *out = NULL;
  if (out == NULL || ks == NULL || opts == NULL || opts->url == NULL) {
    etcd_say(err, err_cap, "no keystore, options or URL");
    return M2MPSK_E_INVALID;
  }
  m2mpsk_etcd_sync *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    etcd_say(err, err_cap, "out of memory");
    return M2MPSK_E_NOMEM;
  }
  pthread_mutex_init(&s->lock, NULL);
  int rc = etcd_client_init(&s->client, opts->url, err, err_cap);
  if (rc != M2MPSK_OK) {
    sync_free(s);
    return rc;
  }
  s->client.stop = &s->stop;
  s->client.timeout_ms = 15000;
  s->ks = ks;
  s->fail_closed_ms =
      opts->fail_closed_ms ? opts->fail_closed_ms : DEFAULT_FAIL_CLOSED_MS;
  s->page = opts->page_size ? opts->page_size : DEFAULT_PAGE;
  s->max_records = opts->max_records ? opts->max_records : DEFAULT_MAX_RECORDS;
  s->on_change = opts->on_change;
  s->arg = opts->arg;
  s->line.max = ETCD_RESPONSE_MAX;
  s->probe_resp.max = 65536;
  s->kek = sodium_malloc(ETCD_KEK_BYTES);
  s->rec = sodium_malloc(sizeof(*s->rec));
  s->multi = curl_multi_init();
  s->hdr = curl_slist_append(NULL, "Content-Type: application/json");
  if (s->kek == NULL || s->rec == NULL || s->multi == NULL || s->hdr == NULL) {
    etcd_say(err, err_cap, "out of memory");
    sync_free(s);
    return M2MPSK_E_NOMEM;
  }
  rc = etcd_kek_load(opts->kek_file, s->kek, err, err_cap);
  kek_close(s);
  if (rc != M2MPSK_OK) {
    sync_free(s);
    return rc;
  }
  rc = snapshot(s, err, err_cap);
  if (rc != M2MPSK_OK) {
    sync_free(s);
    return rc == M2MPSK_E_LIMIT ? M2MPSK_E_PROTOCOL : rc;
  }
  cli_log("keys: %zu records from etcd at revision %" PRId64 " in %" PRIu64
          " ms",
          s->held.n, s->last_rev, s->stats.snapshot_ms);
  if (pthread_create(&s->thread, NULL, sync_main, s) != 0) {
    etcd_say(err, err_cap, "cannot start a thread: %s", strerror(errno));
    sync_free(s);
    return M2MPSK_E_NOMEM;
  }
  s->started = 1;
  *out = s;
  return M2MPSK_OK;
}

void m2mpsk_etcd_sync_stop(m2mpsk_etcd_sync *s) {
  if (s == NULL)
    return;
  atomic_store(&s->stop, 1);
  if (s->started) {
    curl_multi_wakeup(s->multi);
    pthread_join(s->thread, NULL);
  }
  sync_free(s);
}

void m2mpsk_etcd_sync_stats(const m2mpsk_etcd_sync *s, m2mpsk_etcd_stats *out) {
  if (out == NULL)
    return;
  memset(out, 0, sizeof(*out));
  if (s == NULL)
    return;
  m2mpsk_etcd_sync *w = (m2mpsk_etcd_sync *)(uintptr_t)s;
  pthread_mutex_lock(&w->lock);
  *out = w->stats;
  pthread_mutex_unlock(&w->lock);
}
