/* The concurrency tests, in a driver ThreadSanitizer can run (issue 7).
 *
 * criterion 2.4's runner dies under TSan before any test starts ("Could not
 * initialize inheritable arena"), so this is plain pthreads: a check that
 * fails prints what and where, and the process exits 1. Scenarios:
 *
 *   keystore  readers, writers and a thread revoking and removing the
 *             writers' records, on one keystore: add, revoke, remove,
 *             lookup, fetch (key bytes compared), count, is_locked.
 *   assoc     three threads run whole initiator/responder handshakes and
 *             exchange data through one config and one keystore, released
 *             together so that they race to build the engine contexts,
 *             while a fourth churns records: other KpsaIDs on its own, and
 *             the ones the associations use on their request. Live
 *             associations whose record is revoked or removed must fail
 *             with reason revoked; all others must establish.
 *   refcount  the host frees the config and the keystore while
 *             associations on other threads still hold them; the last
 *             holder frees them (checked through VmLck when mlock works).
 *
 * Each scenario runs a fixed number of iterations (times --scale) under an
 * alarm() watchdog and prints one summary line. Both key guards are
 * covered: run without --guard, the driver runs itself once with
 * protection keys (where the CPU has them) and once with mprotect.
 * --canary instead races on purpose, so that CI can prove its TSan build
 * reports races at all.
 *
 *   tsan_driver [--guard=pkey|mprotect] [--scale=N] | --canary
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "keystore.h"

extern char **environ;

#define IDA "//m2m.example.com/cse-in/Cae1"
#define IDB "//m2m.example.com/cse-in"
#define NOW0 1000000u
#define UNIX0 1800000000 /* 2027-01-15 */

/* Seconds each scenario may take before the watchdog calls it a hang: far
 * above what TSan needs on 2 shared cores (see .ci/sanitize). */
#ifndef WATCHDOG_S
#define WATCHDOG_S 240u
#endif

/* ---- failing loudly ------------------------------------------------------ */

static const char *const k_scenarios[] = {"setup", "keystore", "assoc",
                                          "refcount", "keysource"};
static atomic_int g_scenario;

__attribute__((format(printf, 3, 4), noreturn)) static void
fail_at(const char *file, int line, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fprintf(stderr, "tsan_driver: FAIL [%s] %s:%d: %s\n",
          k_scenarios[atomic_load(&g_scenario)], file, line, msg);
  fflush(stderr);
  _exit(1); /* other threads are still running: no atexit handlers */
}

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond))                                                               \
      fail_at(__FILE__, __LINE__, __VA_ARGS__);                                \
  } while (0)

/* Only async-signal-safe calls here. */
static void say(const char *s) {
  ssize_t w = write(STDERR_FILENO, s, strlen(s));
  (void)w;
}

static void on_alarm(int sig) {
  (void)sig;
  say("tsan_driver: FAIL [");
  say(k_scenarios[atomic_load(&g_scenario)]);
  say("] watchdog: scenario not done in time (deadlock or livelock)\n");
  _exit(2);
}

static void scenario_begin(int which) {
  atomic_store(&g_scenario, which);
  alarm(WATCHDOG_S);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_us(long us) {
  struct timespec ts = {0, us * 1000};
  nanosleep(&ts, NULL);
}

static void start_thread(pthread_t *th, void *(*fn)(void *), void *arg) {
  CHECK(pthread_create(th, NULL, fn, arg) == 0, "pthread_create failed");
}

static void fill_key(uint8_t *key, size_t len, unsigned seed) {
  for (size_t i = 0; i < len; i++)
    key[i] = (uint8_t)(seed * 131u + i * 7u + 1u);
}

/* ---- an in-memory link ----------------------------------------------------
 * tests/support/link.c needs criterion, so a criterion-free one: what one
 * side drains (stream bytes, or one datagram per call) is fed to the other,
 * nothing lost, time injected. */

/* Moves everything `from` has to send into `to`; returns the number of
 * drain calls that produced output. */
static int pump(m2mpsk_assoc *from, m2mpsk_assoc *to, uint64_t now) {
  uint8_t buf[17000];
  size_t n = 0;
  int moved = 0;
  while (m2mpsk_assoc_drain(from, buf, sizeof(buf), &n) == M2MPSK_OK) {
    moved++;
    m2mpsk_state st = m2mpsk_assoc_state(to);
    if (st != M2MPSK_STATE_FAILED && st != M2MPSK_STATE_IDLE) {
      /* A failure shows in the state the callers check; only a misuse of
       * the API by this driver is fatal. */
      int rc = m2mpsk_assoc_feed(to, buf, n, now);
      CHECK(rc != M2MPSK_E_INVALID, "feed: %s", m2mpsk_strerror(rc));
    }
  }
  return moved;
}

static int handshaking(const m2mpsk_assoc *x) {
  return m2mpsk_assoc_state(x) == M2MPSK_STATE_HANDSHAKING;
}

/* Runs both (started) sides until neither handshakes, firing timers when
 * nothing moves. 0, or -1 when the step bound was hit. */
static int run_handshake(m2mpsk_assoc *a, m2mpsk_assoc *b, uint64_t *now) {
  for (int step = 0; step < 200; step++) {
    if (!handshaking(a) && !handshaking(b)) {
      pump(a, b, *now); /* a final flight or alert */
      pump(b, a, *now);
      return 0;
    }
    if (pump(a, b, *now) + pump(b, a, *now) > 0)
      continue;
    uint64_t ta = UINT64_MAX, tb = UINT64_MAX;
    if (m2mpsk_assoc_next_timeout(a, &ta) != M2MPSK_OK)
      ta = UINT64_MAX;
    if (m2mpsk_assoc_next_timeout(b, &tb) != M2MPSK_OK)
      tb = UINT64_MAX;
    uint64_t t = ta < tb ? ta : tb;
    if (t == UINT64_MAX)
      return -1;
    if (t > *now)
      *now = t;
    int ra = m2mpsk_assoc_handle_timeout(a, *now);
    int rb = m2mpsk_assoc_handle_timeout(b, *now);
    CHECK(ra != M2MPSK_E_INVALID && rb != M2MPSK_E_INVALID,
          "handle_timeout: %s", m2mpsk_strerror(ra != M2MPSK_OK ? ra : rb));
  }
  return -1;
}

/* Sends `len` bytes from one side and reads them back on the other.
 * M2MPSK_OK when they arrived intact; otherwise the first failing status
 * (M2MPSK_E_INTERNAL for missing or altered bytes). */
static int send_recv(m2mpsk_assoc *from, m2mpsk_assoc *to, uint64_t now,
                     size_t len, unsigned seed) {
  uint8_t msg[4096], got[4096];
  fill_key(msg, len, seed);
  size_t written = 0;
  int rc = m2mpsk_assoc_write(from, msg, len, &written);
  if (rc != M2MPSK_OK)
    return rc;
  if (written != len)
    return M2MPSK_E_INTERNAL;
  pump(from, to, now);
  size_t have = 0;
  while (have < len) {
    size_t n = 0;
    rc = m2mpsk_assoc_read(to, got + have, sizeof(got) - have, &n);
    if (rc != M2MPSK_OK)
      return rc == M2MPSK_E_AGAIN ? M2MPSK_E_INTERNAL : rc;
    have += n;
  }
  return have == len && memcmp(got, msg, len) == 0 ? M2MPSK_OK
                                                   : M2MPSK_E_INTERNAL;
}

/* Both ways: a few KiB over TLS, one datagram's worth over DTLS. */
static int exchange(m2mpsk_assoc *a, m2mpsk_assoc *b, m2mpsk_transport t,
                    uint64_t now, unsigned seed) {
  size_t len = t == M2MPSK_TRANSPORT_TLS ? 3000 + seed % 1000 : 600;
  int rc = send_recv(a, b, now, len, seed);
  return rc != M2MPSK_OK ? rc : send_recv(b, a, now, len / 2, seed + 1);
}

/* close_notify both ways; both sides must end CLOSED. */
static void close_both(m2mpsk_assoc *a, m2mpsk_assoc *b, uint64_t now) {
  uint8_t buf[64];
  size_t n = 0;
  CHECK(m2mpsk_assoc_close(a) == M2MPSK_OK, "close initiator");
  pump(a, b, now);
  CHECK(m2mpsk_assoc_read(b, buf, sizeof(buf), &n) == M2MPSK_E_CLOSED,
        "responder did not see close_notify");
  CHECK(m2mpsk_assoc_close(b) == M2MPSK_OK, "close responder");
  pump(b, a, now);
  CHECK(m2mpsk_assoc_read(a, buf, sizeof(buf), &n) == M2MPSK_E_CLOSED,
        "initiator did not see close_notify");
  CHECK(m2mpsk_assoc_state(a) == M2MPSK_STATE_CLOSED &&
            m2mpsk_assoc_state(b) == M2MPSK_STATE_CLOSED,
        "not closed on both sides");
}

static const char *side_name(const m2mpsk_assoc *x) {
  return m2mpsk_reason_name(m2mpsk_assoc_failure(x));
}

/* Creates an initiator for `kpsa_id` and a responder, both started. */
static void pair_new(m2mpsk_assoc **a, m2mpsk_assoc **b, m2mpsk_transport t,
                     m2mpsk_config *cfg, m2mpsk_keystore *ks,
                     const char *kpsa_id) {
  int rc = m2mpsk_assoc_new(a, M2MPSK_ROLE_INITIATOR, t, cfg, ks, kpsa_id);
  CHECK(rc == M2MPSK_OK, "initiator for %s: %s", kpsa_id, m2mpsk_strerror(rc));
  rc = m2mpsk_assoc_new(b, M2MPSK_ROLE_RESPONDER, t, cfg, ks, NULL);
  CHECK(rc == M2MPSK_OK, "responder: %s", m2mpsk_strerror(rc));
}

/* Runs a pair that must establish, checks the bound identities, exchanges
 * data; the caller closes or revokes. */
static void establish(m2mpsk_assoc *a, m2mpsk_assoc *b, m2mpsk_transport t,
                      uint64_t *now, unsigned seed) {
  CHECK(m2mpsk_assoc_start(b, *now, UNIX0) == M2MPSK_OK, "start responder");
  int rc = m2mpsk_assoc_start(a, *now, UNIX0);
  CHECK(rc == M2MPSK_OK, "start initiator: %s (%s: %s)", m2mpsk_strerror(rc),
        side_name(a), m2mpsk_assoc_failure_detail(a));
  CHECK(run_handshake(a, b, now) == 0, "handshake did not finish");
  CHECK(m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED &&
            m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED,
        "%s not established: initiator %s (%s), responder %s (%s)",
        t == M2MPSK_TRANSPORT_TLS ? "TLS" : "DTLS", side_name(a),
        m2mpsk_assoc_failure_detail(a), side_name(b),
        m2mpsk_assoc_failure_detail(b));
  CHECK(strcmp(m2mpsk_assoc_peer_id(a), IDB) == 0 &&
            strcmp(m2mpsk_assoc_peer_id(b), IDA) == 0,
        "wrong bound identities");
  rc = exchange(a, b, t, *now, seed);
  CHECK(rc == M2MPSK_OK, "data exchange: %s", m2mpsk_strerror(rc));
}

/* ---- scenario 1: one keystore, many threads ------------------------------ */

#define KS_PERMANENT 256u
#define KS_WRITERS 2
#define KS_TMP 50u /* names each writer cycles through */

typedef struct ks_world {
  m2mpsk_keystore *ks;
  unsigned iterations;
  pthread_barrier_t go;
  atomic_int writers_done;
  atomic_uint current[KS_WRITERS]; /* the name each writer is working on */
  atomic_ulong ops;
  atomic_ulong stolen; /* the raider's revokes and removes that hit */
} ks_world;

typedef struct ks_arg {
  ks_world *w;
  int id;
} ks_arg;

/* Permanent record n: key length, IdA and validity all depend on n. */
static void perm_id(char *id, size_t cap, unsigned n) {
  snprintf(id, cap, "perm%u@b.c", n);
}
static size_t perm_key_len(unsigned n) {
  return 16 + n % 49;
}
static const char *perm_ida(unsigned n) {
  return n % 2 ? IDA : NULL;
}
static int64_t perm_not_before(unsigned n) {
  return n % 3 ? 0 : UNIX0 - (int64_t)n;
}
static int64_t perm_not_after(unsigned n) {
  return n % 5 ? 0 : UNIX0 + (int64_t)n;
}

static void perm_add(m2mpsk_keystore *ks, unsigned n) {
  char id[32];
  uint8_t key[M2MPSK_KEY_MAX];
  perm_id(id, sizeof(id), n);
  fill_key(key, perm_key_len(n), n);
  int rc = m2mpsk_keystore_add(ks, id, key, perm_key_len(n), perm_ida(n), IDB,
                               perm_not_before(n), perm_not_after(n));
  CHECK(rc == M2MPSK_OK, "add %s: %s", id, m2mpsk_strerror(rc));
}

/* A permanent record reads back whole, key included, through both the
 * internal fetch (what associations use) and the public lookup. */
static void perm_expect(const m2mpsk_keystore *ks, unsigned n) {
  char id[32], ida[M2MPSK_ID_MAX + 1], idb[M2MPSK_ID_MAX + 1];
  uint8_t want[M2MPSK_KEY_MAX], got[M2MPSK_KEY_MAX];
  size_t len = 0;
  m2mpsk_record_view v;
  perm_id(id, sizeof(id), n);
  fill_key(want, perm_key_len(n), n);
  CHECK(m2mpsk_keystore_fetch(ks, id, &v, got, &len) == M2MPSK_OK, "fetch %s",
        id);
  CHECK(len == perm_key_len(n) && memcmp(got, want, len) == 0,
        "fetch %s: wrong key (%zu bytes)", id, len);
  CHECK(!v.revoked && strcmp(v.idb, IDB) == 0 &&
            strcmp(v.ida, perm_ida(n) ? perm_ida(n) : "") == 0 &&
            v.not_before == perm_not_before(n) &&
            v.not_after == perm_not_after(n),
        "fetch %s: wrong record", id);
  int64_t nb = -1, na = -1;
  int revoked = -1;
  CHECK(m2mpsk_keystore_lookup(ks, id, ida, sizeof(ida), idb, sizeof(idb), &nb,
                               &na, &revoked) == M2MPSK_OK,
        "lookup %s", id);
  CHECK(revoked == 0 && strcmp(idb, IDB) == 0 &&
            strcmp(ida, perm_ida(n) ? perm_ida(n) : "") == 0 &&
            nb == perm_not_before(n) && na == perm_not_after(n),
        "lookup %s: wrong record", id);
}

/* The counters that must hold whatever the other threads do. */
static void ks_invariants(const m2mpsk_keystore *ks) {
  size_t c = m2mpsk_keystore_count(ks);
  CHECK(c >= KS_PERMANENT && c <= KS_PERMANENT + KS_WRITERS,
        "count %zu outside [%u, %u]", c, KS_PERMANENT,
        KS_PERMANENT + KS_WRITERS);
  int locked = m2mpsk_keystore_is_locked(ks);
  CHECK(locked == 0 || locked == 1, "is_locked returned %d", locked);
  CHECK(m2mpsk_keystore_key_memory(ks) > 0, "no key memory");
}

static void *ks_reader(void *p) {
  ks_arg *r = p;
  ks_world *w = r->w;
  pthread_barrier_wait(&w->go);
  for (unsigned i = 0; i < w->iterations; i++) {
    perm_expect(w->ks, (i * 7919u + (unsigned)r->id) % KS_PERMANENT);
    if (i % 16 == 0)
      ks_invariants(w->ks);
  }
  atomic_fetch_add(&w->ops, (unsigned long)w->iterations * 2);
  return NULL;
}

/* Adds, reads, revokes and removes records only it adds (while the raider
 * revokes and removes them too), and keeps reading permanent ones. */
static void *ks_writer(void *p) {
  ks_arg *r = p;
  ks_world *w = r->w;
  char id[32];
  uint8_t key[32], got[M2MPSK_KEY_MAX];
  unsigned long ops = 0;
  pthread_barrier_wait(&w->go);
  for (unsigned i = 0; i < w->iterations / 4; i++) {
    snprintf(id, sizeof(id), "tmp%d-%u@b.c", r->id, i % KS_TMP);
    atomic_store(&w->current[r->id], i % KS_TMP);
    fill_key(key, sizeof(key), i);
    /* Only this thread adds this name, and it removed it last time. */
    int rc = m2mpsk_keystore_add(w->ks, id, key, sizeof(key), NULL, IDB, 0, 0);
    CHECK(rc == M2MPSK_OK, "add %s: %s", id, m2mpsk_strerror(rc));
    sched_yield(); /* a window for the raider */
    m2mpsk_record_view v = {0};
    size_t len = 99;
    rc = m2mpsk_keystore_fetch(w->ks, id, &v, got, &len);
    CHECK(rc == M2MPSK_E_NOT_FOUND ||
              (rc == M2MPSK_OK && !v.revoked && len == sizeof(key) &&
               memcmp(got, key, len) == 0) ||
              (rc == M2MPSK_OK && v.revoked && len == 0),
          "fetch %s: rc %d, revoked %d, %zu bytes", id, rc, v.revoked, len);
    ops += 2;
    if (i % 3 == 0) {
      rc = m2mpsk_keystore_revoke(w->ks, id);
      CHECK(rc == M2MPSK_OK || rc == M2MPSK_E_NOT_FOUND, "revoke %s: %s", id,
            m2mpsk_strerror(rc));
      int revoked = 0;
      rc = m2mpsk_keystore_lookup(w->ks, id, NULL, 0, NULL, 0, NULL, NULL,
                                  &revoked);
      CHECK(rc == M2MPSK_E_NOT_FOUND || (rc == M2MPSK_OK && revoked == 1),
            "revoked %s reads back as rc %d, revoked %d", id, rc, revoked);
      /* A revoked record keeps its name until removed. */
      rc = m2mpsk_keystore_add(w->ks, id, key, sizeof(key), NULL, IDB, 0, 0);
      CHECK(rc == M2MPSK_E_DUPLICATE || rc == M2MPSK_OK, "re-add %s: %s", id,
            m2mpsk_strerror(rc));
      ops += 3;
    }
    rc = m2mpsk_keystore_remove(w->ks, id);
    CHECK(rc == M2MPSK_OK || rc == M2MPSK_E_NOT_FOUND, "remove %s: %s", id,
          m2mpsk_strerror(rc));
    CHECK(m2mpsk_keystore_lookup(w->ks, id, NULL, 0, NULL, 0, NULL, NULL,
                                 NULL) == M2MPSK_E_NOT_FOUND,
          "%s still there after remove", id);
    perm_expect(w->ks, i % KS_PERMANENT);
    ks_invariants(w->ks);
    ops += 4;
  }
  atomic_fetch_add(&w->ops, ops);
  atomic_fetch_add(&w->writers_done, 1);
  return NULL;
}

/* Revokes and removes the writers' records under their feet, and tries
 * what must fail: duplicates, unknown and overlong names. */
static void *ks_raider(void *p) {
  ks_arg *r = p;
  ks_world *w = r->w;
  char id[160];
  uint8_t key[16] = {0};
  uint32_t x = 12345;
  unsigned long ops = 0;
  pthread_barrier_wait(&w->go);
  while (atomic_load(&w->writers_done) < KS_WRITERS) {
    x = x * 1664525u + 1013904223u;
    unsigned victim = (x >> 8) % KS_WRITERS;
    snprintf(id, sizeof(id), "tmp%u-%u@b.c", victim,
             atomic_load(&w->current[victim]));
    int rc = (x >> 4) % 2 ? m2mpsk_keystore_revoke(w->ks, id)
                          : m2mpsk_keystore_remove(w->ks, id);
    CHECK(rc == M2MPSK_OK || rc == M2MPSK_E_NOT_FOUND, "raid %s: %s", id,
          m2mpsk_strerror(rc));
    if (rc == M2MPSK_OK)
      atomic_fetch_add(&w->stolen, 1);
    ops++;
    sched_yield(); /* the raider must not starve the writers */
    if (x % 8 != 0)
      continue;
    unsigned n = (x >> 12) % KS_PERMANENT;
    perm_id(id, sizeof(id), n);
    CHECK(m2mpsk_keystore_add(w->ks, id, key, sizeof(key), NULL, IDB, 0, 0) ==
              M2MPSK_E_DUPLICATE,
          "duplicate %s accepted", id);
    CHECK(m2mpsk_keystore_remove(w->ks, "never@b.c") == M2MPSK_E_NOT_FOUND &&
              m2mpsk_keystore_revoke(w->ks, "never@b.c") == M2MPSK_E_NOT_FOUND,
          "unknown name found");
    memset(id, 'a', 140);
    id[140] = '\0';
    CHECK(m2mpsk_keystore_lookup(w->ks, id, NULL, 0, NULL, 0, NULL, NULL,
                                 NULL) == M2MPSK_E_NOT_FOUND,
          "overlong name found");
    ks_invariants(w->ks);
    ops += 5;
  }
  atomic_fetch_add(&w->ops, ops);
  return NULL;
}

static void scenario_keystore(unsigned scale) {
  scenario_begin(1);
  double t0 = now_s();
  ks_world w = {.iterations = 20000 * scale};
  atomic_init(&w.writers_done, 0);
  atomic_init(&w.ops, 0);
  atomic_init(&w.stolen, 0);
  for (int t = 0; t < KS_WRITERS; t++)
    atomic_init(&w.current[t], 0);
  CHECK(m2mpsk_keystore_new(&w.ks, 0) == M2MPSK_OK, "keystore_new");
  for (unsigned n = 0; n < KS_PERMANENT; n++)
    perm_add(w.ks, n);
  enum { READERS = 2, THREADS = READERS + KS_WRITERS + 1 };
  CHECK(pthread_barrier_init(&w.go, NULL, THREADS) == 0, "barrier");
  pthread_t th[THREADS];
  ks_arg args[THREADS];
  for (int t = 0; t < THREADS; t++) {
    args[t] = (ks_arg){&w, t < READERS ? t : t - READERS};
    start_thread(&th[t],
                 t < READERS                ? ks_reader
                 : t < READERS + KS_WRITERS ? ks_writer
                                            : ks_raider,
                 &args[t]);
  }
  for (int t = 0; t < THREADS; t++)
    pthread_join(th[t], NULL);
  CHECK(m2mpsk_keystore_count(w.ks) == KS_PERMANENT, "count %zu after",
        m2mpsk_keystore_count(w.ks));
  for (unsigned n = 0; n < KS_PERMANENT; n++)
    perm_expect(w.ks, n);
  m2mpsk_keystore_free(w.ks);
  pthread_barrier_destroy(&w.go);
  printf("tsan_driver: keystore: %d threads (%d readers, %d writers, 1 "
         "raider), %lu operations, %lu records revoked or removed by another "
         "thread, %u permanent records intact, %.1f s\n",
         THREADS, READERS, KS_WRITERS, atomic_load(&w.ops),
         atomic_load(&w.stolen), KS_PERMANENT, now_s() - t0);
  fflush(stdout);
}

/* ---- scenario 2: associations on three threads, records churning -------- */

#define HS_THREADS 3
#define OTHERS 40u /* KpsaIDs only the churn thread uses */

typedef enum op_kind { OP_NONE, OP_ADD, OP_REVOKE, OP_REMOVE } op_kind;

/* What a handshake thread asks the churn thread to do to a record it
 * uses. `op` goes back to OP_NONE once done, with the keystore's `rc`. */
typedef struct request {
  op_kind op;
  char kpsa_id[64];
  int rc;
} request;

typedef enum mode {
  M_STABLE,      /* a record nobody touches: must establish */
  M_USED,        /* added by the churn thread: must establish */
  M_REVOKE_LIVE, /* revoked once established: both fail revoked */
  M_REMOVE_LIVE, /* removed once established: both fail revoked */
  M_RACING,      /* revoked at some unknown point of the handshake */
  MODES
} mode;

typedef struct hs_world {
  m2mpsk_config *cfg;
  m2mpsk_keystore *ks;
  unsigned round, iterations;
  pthread_barrier_t go;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* a request posted or served, or a thread done */
  request req[HS_THREADS];
  int done; /* handshake threads finished */
  /* Figures. */
  atomic_ulong established, revoked_live, churn_ops, served;
  /* Racing revocations: the initiator could not start, the handshake
   * failed, or both sides established before meeting it. */
  atomic_ulong racing[3];
} hs_world;

typedef struct hs_arg {
  hs_world *w;
  int id;
} hs_arg;

static void request_post(hs_world *w, int t, op_kind op, const char *id) {
  pthread_mutex_lock(&w->mu);
  CHECK(w->req[t].op == OP_NONE, "request already pending");
  w->req[t].op = op;
  snprintf(w->req[t].kpsa_id, sizeof(w->req[t].kpsa_id), "%s", id);
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static int request_wait(hs_world *w, int t) {
  pthread_mutex_lock(&w->mu);
  while (w->req[t].op != OP_NONE)
    pthread_cond_wait(&w->cv, &w->mu);
  int rc = w->req[t].rc;
  pthread_mutex_unlock(&w->mu);
  return rc;
}

static int request_do(hs_world *w, int t, op_kind op, const char *id) {
  request_post(w, t, op, id);
  return request_wait(w, t);
}

/* After the revoke or remove of a live pair's record has returned: the next
 * operation on each side fails closed with reason revoked. */
static void expect_revoked_now(m2mpsk_assoc *a, m2mpsk_assoc *b, uint64_t now,
                               int responder_first) {
  uint8_t buf[64] = {0};
  size_t n = 0;
  for (int k = 0; k < 2; k++) {
    int resp = (k == 0) == (responder_first != 0);
    m2mpsk_assoc *x = resp ? b : a;
    if (m2mpsk_assoc_state(x) == M2MPSK_STATE_ESTABLISHED) {
      int rc = resp ? m2mpsk_assoc_read(x, buf, sizeof(buf), &n)
                    : m2mpsk_assoc_write(x, buf, sizeof(buf), &n);
      CHECK(rc == M2MPSK_E_FAILED,
            "the record's revoke/remove returned, yet the established %s's "
            "next %s returned \"%s\", not a failure",
            resp ? "responder" : "initiator", resp ? "read" : "write",
            m2mpsk_strerror(rc));
      /* Its access_denied alert goes to the peer. */
      if (resp)
        pump(b, a, now);
      else
        pump(a, b, now);
    }
    CHECK(m2mpsk_assoc_state(x) == M2MPSK_STATE_FAILED &&
              m2mpsk_assoc_failure(x) == M2MPSK_REASON_REVOKED,
          "%s after revocation: state %d, reason %s (%s)",
          resp ? "responder" : "initiator", (int)m2mpsk_assoc_state(x),
          side_name(x), m2mpsk_assoc_failure_detail(x));
  }
}

/* A side that failed during a racing revocation: it saw the revocation
 * itself, or it saw the peer refuse (which looks like a wrong key on the
 * wire, on purpose). */
static int racing_reason_ok(const m2mpsk_assoc *x, const m2mpsk_assoc *peer) {
  m2mpsk_reason r = m2mpsk_assoc_failure(x);
  if (r == M2MPSK_REASON_REVOKED)
    return 1;
  return (r == M2MPSK_REASON_BAD_KEY || r == M2MPSK_REASON_PEER_ALERT) &&
         m2mpsk_assoc_failure(peer) == M2MPSK_REASON_REVOKED;
}

static void racing_check(hs_world *w, m2mpsk_assoc *a, m2mpsk_assoc *b,
                         int start_rc, int was_established, uint64_t now) {
  if (start_rc != M2MPSK_OK) {
    /* Revoked before the initiator started: nothing was sent. */
    CHECK(m2mpsk_assoc_state(a) == M2MPSK_STATE_FAILED &&
              m2mpsk_assoc_failure(a) == M2MPSK_REASON_REVOKED &&
              m2mpsk_assoc_state(b) == M2MPSK_STATE_HANDSHAKING,
          "racing, failed start: initiator %s, responder state %d",
          side_name(a), (int)m2mpsk_assoc_state(b));
    atomic_fetch_add(&w->racing[0], 1);
    return;
  }
  /* A side still established meets the revocation on its next operation,
   * and its access_denied alert goes to the peer. */
  uint8_t buf[64] = {0};
  size_t n = 0;
  if (m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED) {
    int rc = m2mpsk_assoc_read(b, buf, sizeof(buf), &n);
    CHECK(rc == M2MPSK_E_FAILED,
          "racing (%s): revoke returned, yet the established responder's next "
          "read returned \"%s\", not a failure",
          was_established ? "both established" : "handshake failed",
          m2mpsk_strerror(rc));
    pump(b, a, now);
  }
  if (m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED) {
    int rc = m2mpsk_assoc_write(a, buf, sizeof(buf), &n);
    CHECK(rc == M2MPSK_E_FAILED,
          "racing (%s): revoke returned, yet the established initiator's next "
          "write returned \"%s\", not a failure",
          was_established ? "both established" : "handshake failed",
          m2mpsk_strerror(rc));
    pump(a, b, now);
  }
  for (int k = 0; k < 2; k++) {
    m2mpsk_assoc *x = k ? b : a, *y = k ? a : b;
    CHECK(m2mpsk_assoc_state(x) == M2MPSK_STATE_FAILED &&
              (was_established
                   ? m2mpsk_assoc_failure(x) == M2MPSK_REASON_REVOKED
                   : racing_reason_ok(x, y)),
          "racing (%s): %s state %d, reason %s (%s); peer %s (%s)",
          was_established ? "both established" : "handshake failed",
          k ? "responder" : "initiator", (int)m2mpsk_assoc_state(x),
          side_name(x), m2mpsk_assoc_failure_detail(x), side_name(y),
          m2mpsk_assoc_failure_detail(y));
  }
  atomic_fetch_add(&w->racing[was_established ? 2 : 1], 1);
}

static void *hs_thread(void *p) {
  hs_arg *h = p;
  hs_world *w = h->w;
  char id[64];
  pthread_barrier_wait(&w->go);
  for (unsigned i = 0; i < w->iterations; i++) {
    /* Every thread's first pair uses the same transport, so that all of
     * them race to build the same engine contexts. */
    m2mpsk_transport t = (m2mpsk_transport)((w->round + i) % 2);
    mode m = (mode)(i % MODES);
    unsigned seed = (unsigned)h->id * 100000u + i;
    uint64_t now = NOW0;
    if (m == M_STABLE) {
      snprintf(id, sizeof(id), "stable-%d@onem2m.com", h->id);
    } else {
      snprintf(id, sizeof(id), "used-%d-%u@onem2m.com", h->id, i % 4);
      int rc = request_do(w, h->id, OP_ADD, id);
      CHECK(rc == M2MPSK_OK, "churn add %s: %s", id, m2mpsk_strerror(rc));
    }
    m2mpsk_assoc *a = NULL, *b = NULL;
    pair_new(&a, &b, t, w->cfg, w->ks, id);
    switch (m) {
    case M_STABLE:
    case M_USED:
      establish(a, b, t, &now, seed);
      close_both(a, b, now);
      atomic_fetch_add(&w->established, 1);
      break;
    case M_REVOKE_LIVE:
    case M_REMOVE_LIVE: {
      establish(a, b, t, &now, seed);
      atomic_fetch_add(&w->established, 1);
      int rc =
          request_do(w, h->id, m == M_REVOKE_LIVE ? OP_REVOKE : OP_REMOVE, id);
      CHECK(rc == M2MPSK_OK, "churn revoke/remove %s: %s", id,
            m2mpsk_strerror(rc));
      expect_revoked_now(a, b, now, m == M_REMOVE_LIVE);
      atomic_fetch_add(&w->revoked_live, 1);
      break;
    }
    case M_RACING: {
      request_post(w, h->id, OP_REVOKE, id);
      CHECK(m2mpsk_assoc_start(b, now, UNIX0) == M2MPSK_OK, "start responder");
      int start_rc = m2mpsk_assoc_start(a, now, UNIX0), was_established = 0;
      if (start_rc == M2MPSK_OK) {
        CHECK(run_handshake(a, b, &now) == 0, "racing handshake stuck");
        was_established = m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED &&
                          m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED;
        if (was_established)
          (void)exchange(a, b, t, now, seed); /* may meet the revocation */
      }
      int rc = request_wait(w, h->id);
      CHECK(rc == M2MPSK_OK, "churn revoke %s: %s", id, m2mpsk_strerror(rc));
      racing_check(w, a, b, start_rc, was_established, now);
      break;
    }
    default: break;
    }
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
    if (m != M_STABLE && m != M_REMOVE_LIVE) {
      int rc = request_do(w, h->id, OP_REMOVE, id);
      CHECK(rc == M2MPSK_OK, "churn remove %s: %s", id, m2mpsk_strerror(rc));
    }
  }
  pthread_mutex_lock(&w->mu);
  w->done++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* One step of the churn thread's own traffic on KpsaIDs no association
 * uses: since only it touches them, every answer is predictable. Each
 * revoke and remove moves the keystore's generation, so every live
 * association re-reads its record on its next operation. */
static void churn_other(hs_world *w, unsigned step, uint8_t *present,
                        uint8_t *revoked) {
  char id[64];
  unsigned k = (step * 7u) % OTHERS;
  snprintf(id, sizeof(id), "other-%u@onem2m.com", k);
  uint8_t key[32];
  fill_key(key, sizeof(key), k);
  int rc;
  switch (step % 3) {
  case 0:
    rc = m2mpsk_keystore_add(w->ks, id, key, sizeof(key), NULL, IDB, 0, 0);
    CHECK(rc == (present[k] ? M2MPSK_E_DUPLICATE : M2MPSK_OK), "add %s: %s", id,
          m2mpsk_strerror(rc));
    if (!present[k])
      revoked[k] = 0;
    present[k] = 1;
    break;
  case 1:
    rc = m2mpsk_keystore_revoke(w->ks, id);
    CHECK(rc == (present[k] ? M2MPSK_OK : M2MPSK_E_NOT_FOUND), "revoke %s: %s",
          id, m2mpsk_strerror(rc));
    revoked[k] = present[k];
    break;
  default:
    rc = m2mpsk_keystore_remove(w->ks, id);
    CHECK(rc == (present[k] ? M2MPSK_OK : M2MPSK_E_NOT_FOUND), "remove %s: %s",
          id, m2mpsk_strerror(rc));
    present[k] = 0;
    break;
  }
  int rev = -1;
  rc = m2mpsk_keystore_lookup(w->ks, id, NULL, 0, NULL, 0, NULL, NULL, &rev);
  CHECK(present[k] ? rc == M2MPSK_OK && rev == revoked[k]
                   : rc == M2MPSK_E_NOT_FOUND,
        "lookup %s after churn: rc %d, revoked %d", id, rc, rev);
  CHECK(m2mpsk_keystore_is_locked(w->ks) >= 0, "is_locked");
}

static int serve(hs_world *w) {
  int served = 0;
  for (int t = 0; t < HS_THREADS; t++) {
    request *q = &w->req[t];
    if (q->op == OP_NONE)
      continue;
    uint8_t key[32];
    fill_key(key, sizeof(key), 7);
    switch (q->op) {
    case OP_ADD:
      q->rc = m2mpsk_keystore_add(w->ks, q->kpsa_id, key, sizeof(key), IDA, IDB,
                                  0, 0);
      break;
    case OP_REVOKE: q->rc = m2mpsk_keystore_revoke(w->ks, q->kpsa_id); break;
    default: q->rc = m2mpsk_keystore_remove(w->ks, q->kpsa_id); break;
    }
    q->op = OP_NONE;
    served++;
  }
  if (served)
    pthread_cond_broadcast(&w->cv);
  return served;
}

static void *churn_thread(void *p) {
  hs_world *w = p;
  uint8_t present[OTHERS] = {0}, revoked[OTHERS] = {0};
  unsigned long ops = 0, served = 0;
  pthread_barrier_wait(&w->go);
  for (unsigned step = 0;; step++) {
    pthread_mutex_lock(&w->mu);
    served += (unsigned long)serve(w);
    int finished = w->done == HS_THREADS;
    pthread_mutex_unlock(&w->mu);
    if (finished)
      break;
    churn_other(w, step, present, revoked);
    ops++;
    pause_us(50); /* two cores for five threads: do not crowd them out */
  }
  for (unsigned k = 0; k < OTHERS; k++) {
    char id[64];
    snprintf(id, sizeof(id), "other-%u@onem2m.com", k);
    if (present[k])
      CHECK(m2mpsk_keystore_remove(w->ks, id) == M2MPSK_OK, "remove %s", id);
  }
  atomic_fetch_add(&w->churn_ops, ops);
  atomic_fetch_add(&w->served, served);
  return NULL;
}

static void scenario_assoc(unsigned scale) {
  scenario_begin(2);
  double t0 = now_s();
  enum { ROUNDS = 4 };
  unsigned iterations = 50 * scale;
  unsigned long est = 0, live = 0, churn = 0, served = 0, racing[3] = {0};
  uint8_t key[32];
  fill_key(key, sizeof(key), 7);
  for (unsigned round = 0; round < ROUNDS; round++) {
    /* A fresh config per round: its engine contexts do not exist yet. */
    hs_world w = {.round = round, .iterations = iterations};
    CHECK(m2mpsk_config_new(&w.cfg) == M2MPSK_OK, "config_new");
    CHECK(m2mpsk_config_add_local_id(w.cfg, IDB) == M2MPSK_OK, "local id");
    CHECK(m2mpsk_keystore_new(&w.ks, 0) == M2MPSK_OK, "keystore_new");
    for (int t = 0; t < HS_THREADS; t++) {
      char id[64];
      snprintf(id, sizeof(id), "stable-%d@onem2m.com", t);
      CHECK(m2mpsk_keystore_add(w.ks, id, key, sizeof(key), IDA, IDB, 0, 0) ==
                M2MPSK_OK,
            "add %s", id);
    }
    CHECK(pthread_mutex_init(&w.mu, NULL) == 0 &&
              pthread_cond_init(&w.cv, NULL) == 0 &&
              pthread_barrier_init(&w.go, NULL, HS_THREADS + 1) == 0,
          "sync init");
    atomic_init(&w.established, 0);
    atomic_init(&w.revoked_live, 0);
    atomic_init(&w.churn_ops, 0);
    atomic_init(&w.served, 0);
    for (int k = 0; k < 3; k++)
      atomic_init(&w.racing[k], 0);
    pthread_t th[HS_THREADS + 1];
    hs_arg args[HS_THREADS];
    for (int t = 0; t < HS_THREADS; t++) {
      args[t] = (hs_arg){&w, t};
      start_thread(&th[t], hs_thread, &args[t]);
    }
    start_thread(&th[HS_THREADS], churn_thread, &w);
    for (int t = 0; t <= HS_THREADS; t++)
      pthread_join(th[t], NULL);
    /* Only the stable records are left. */
    CHECK(m2mpsk_keystore_count(w.ks) == HS_THREADS, "%zu records left",
          m2mpsk_keystore_count(w.ks));
    est += atomic_load(&w.established);
    live += atomic_load(&w.revoked_live);
    churn += atomic_load(&w.churn_ops);
    served += atomic_load(&w.served);
    for (int k = 0; k < 3; k++)
      racing[k] += atomic_load(&w.racing[k]);
    m2mpsk_config_free(w.cfg);
    m2mpsk_keystore_free(w.ks);
    pthread_barrier_destroy(&w.go);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
  }
  unsigned long pairs = (unsigned long)ROUNDS * HS_THREADS * iterations;
  unsigned long per_mode =
      (unsigned long)ROUNDS * HS_THREADS * (iterations / MODES);
  CHECK(iterations % MODES == 0 && est == 4 * per_mode &&
            live == 2 * per_mode &&
            racing[0] + racing[1] + racing[2] == per_mode,
        "figures do not add up");
  printf("tsan_driver: assoc: %d rounds x %d threads x %u = %lu handshake "
         "pairs (TLS and DTLS), %lu established and exchanged data, %lu "
         "revoked or removed live -> revoked; %lu revoked racing (%lu before "
         "start, %lu failed the handshake, %lu established first); churn "
         "thread: %lu "
         "record operations, %lu requests; %.1f s\n",
         ROUNDS, HS_THREADS, iterations, pairs, est, live,
         racing[0] + racing[1] + racing[2], racing[0], racing[1], racing[2],
         churn, served, now_s() - t0);
  fflush(stdout);
}

/* ---- scenario 3: the host lets go first ---------------------------------- */

#define RC_WORKERS 3

/* When the host frees its config and keystore references. */
typedef enum rc_when {
  RC_AFTER_CREATE,    /* while the workers' handshakes run */
  RC_AFTER_HANDSHAKE, /* established, then the workers close and free */
  RC_LAST,            /* after every association is gone */
  RC_WHENS
} rc_when;

typedef struct rc_world {
  m2mpsk_config *cfg;
  m2mpsk_keystore *ks;
  unsigned round;
  rc_when when;
  pthread_barrier_t go, created, handshaken, freed;
  atomic_ulong established, abandoned;
} rc_world;

typedef struct rc_arg {
  rc_world *w;
  int id;
} rc_arg;

static void *rc_worker(void *p) {
  rc_arg *r = p;
  rc_world *w = r->w;
  m2mpsk_assoc *a[2], *b[2];
  uint64_t now[2] = {NOW0, NOW0};
  pthread_barrier_wait(&w->go);
  /* All at once: the first use of the fresh config builds its contexts. */
  for (int t = 0; t < 2; t++)
    pair_new(&a[t], &b[t], (m2mpsk_transport)t, w->cfg, w->ks, "rc@onem2m.com");
  pthread_barrier_wait(&w->created);
  int abandon = r->id == 0 && w->round % 2 == 1;
  for (int t = 0; t < 2 && !abandon; t++)
    establish(a[t], b[t], (m2mpsk_transport)t, &now[t], w->round + (unsigned)t);
  if (abandon) {
    /* Freed half-made, perhaps before the host lets go. */
    for (int t = 0; t < 2; t++) {
      m2mpsk_assoc_free(a[t]);
      m2mpsk_assoc_free(b[t]);
      a[t] = b[t] = NULL;
    }
    atomic_fetch_add(&w->abandoned, 2);
  }
  if (w->when == RC_AFTER_HANDSHAKE)
    pthread_barrier_wait(&w->handshaken);
  for (int t = 0; t < 2 && !abandon; t++) {
    close_both(a[t], b[t], now[t]);
    m2mpsk_assoc_free(a[t]);
    m2mpsk_assoc_free(b[t]);
    atomic_fetch_add(&w->established, 1);
  }
  if (w->when == RC_LAST)
    pthread_barrier_wait(&w->freed);
  return NULL;
}

/* Kilobytes of locked memory: the keystore's arenas are the only mlocked
 * memory in this process, so this returns to its baseline exactly when
 * the last keystore is destroyed. -1 when unknown. */
static long locked_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  while (f != NULL && fgets(line, sizeof(line), f) != NULL)
    if (sscanf(line, "VmLck: %ld kB", &kib) == 1)
      break;
  if (f != NULL)
    fclose(f);
  return kib;
}

static void scenario_refcount(unsigned scale) {
  scenario_begin(3);
  double t0 = now_s();
  unsigned rounds = 12 * scale;
  unsigned long est = 0, abandoned = 0, observed = 0;
  uint8_t key[32];
  fill_key(key, sizeof(key), 3);
  long base = locked_kib();
  for (unsigned round = 0; round < rounds; round++) {
    rc_world w = {.round = round, .when = (rc_when)(round % RC_WHENS)};
    atomic_init(&w.established, 0);
    atomic_init(&w.abandoned, 0);
    CHECK(m2mpsk_config_new(&w.cfg) == M2MPSK_OK, "config_new");
    CHECK(m2mpsk_config_add_local_id(w.cfg, IDB) == M2MPSK_OK, "local id");
    CHECK(m2mpsk_keystore_new(&w.ks, 0) == M2MPSK_OK, "keystore_new");
    CHECK(m2mpsk_keystore_add(w.ks, "rc@onem2m.com", key, sizeof(key), IDA, IDB,
                              0, 0) == M2MPSK_OK,
          "add");
    /* mlock is a no-op under the sanitizers, and may fail under a small
     * RLIMIT_MEMLOCK: the figure counts only when it moved. */
    int measurable = base >= 0 && locked_kib() > base;
    CHECK(pthread_barrier_init(&w.go, NULL, RC_WORKERS + 1) == 0 &&
              pthread_barrier_init(&w.created, NULL, RC_WORKERS + 1) == 0 &&
              pthread_barrier_init(&w.handshaken, NULL, RC_WORKERS + 1) == 0 &&
              pthread_barrier_init(&w.freed, NULL, RC_WORKERS + 1) == 0,
          "barriers");
    pthread_t th[RC_WORKERS];
    rc_arg args[RC_WORKERS];
    for (int t = 0; t < RC_WORKERS; t++) {
      args[t] = (rc_arg){&w, t};
      start_thread(&th[t], rc_worker, &args[t]);
    }
    pthread_barrier_wait(&w.go);
    pthread_barrier_wait(&w.created);
    if (w.when == RC_AFTER_HANDSHAKE)
      pthread_barrier_wait(&w.handshaken);
    if (w.when == RC_LAST)
      pthread_barrier_wait(&w.freed);
    /* Either order: each must survive the other going first. */
    if (round % 2) {
      m2mpsk_keystore_free(w.ks);
      m2mpsk_config_free(w.cfg);
    } else {
      m2mpsk_config_free(w.cfg);
      m2mpsk_keystore_free(w.ks);
    }
    for (int t = 0; t < RC_WORKERS; t++)
      pthread_join(th[t], NULL);
    if (measurable) {
      long now_kib = locked_kib();
      CHECK(now_kib == base,
            "round %u: %ld kB still locked after the last reference went "
            "(baseline %ld kB): the keystore was not destroyed",
            round, now_kib, base);
      observed++;
    }
    unsigned long want = 2ul * RC_WORKERS - atomic_load(&w.abandoned);
    CHECK(atomic_load(&w.established) == want, "round %u: %lu of %lu pairs",
          round, atomic_load(&w.established), want);
    est += atomic_load(&w.established);
    abandoned += atomic_load(&w.abandoned);
    pthread_barrier_destroy(&w.go);
    pthread_barrier_destroy(&w.created);
    pthread_barrier_destroy(&w.handshaken);
    pthread_barrier_destroy(&w.freed);
  }
  printf("tsan_driver: refcount: %u rounds x %d threads (host frees after "
         "creation / after handshakes / last), %lu pairs established after "
         "the host let go, %lu freed half-made, keystore destruction seen "
         "through VmLck in %lu rounds; %.1f s\n",
         rounds, RC_WORKERS, est, abandoned, observed, now_s() - t0);
  fflush(stdout);
}

/* ---- scenario 4: key sources ---------------------------------------------
 * Worker threads run handshakes whose responders share one keystore with a
 * key source (queue mode); an answerer thread takes the requests and
 * answers them (with the record, or absent), while the workers poll and
 * resume; some workers free their association before the answer comes.
 * Then a keystore goes away while another thread answers its request. */

#define KSRC_WORKERS 3

typedef struct ksrc_world {
  m2mpsk_keystore *ks_b;
  m2mpsk_config *cfg_a, *cfg_b;
  unsigned iterations;
  atomic_int workers_done;
  atomic_ulong supplied, absent, late, established, refused, quick;
} ksrc_world;

typedef struct ksrc_arg {
  ksrc_world *w;
  int id;
} ksrc_arg;

static void *ksrc_answerer(void *p) {
  ksrc_world *w = p;
  uint8_t key[32];
  fill_key(key, sizeof(key), 11);
  for (;;) {
    m2mpsk_key_request *req = NULL;
    if (m2mpsk_keystore_next_request(w->ks_b, &req) == M2MPSK_OK) {
      const char *id = m2mpsk_key_request_kpsa_id(req);
      CHECK(id != NULL, "request without a KpsaID");
      if (strstr(id, "-x@") != NULL) {
        CHECK(m2mpsk_key_request_absent(req) == M2MPSK_OK, "absent %s", id);
        atomic_fetch_add(&w->absent, 1);
      } else {
        /* "-o@": an answer given once, read by the waiter from its slot
         * while this thread drops its reference. */
        int rc = strstr(id, "-o@") != NULL
                     ? m2mpsk_key_request_supply_once(req, key, sizeof(key),
                                                      IDA, IDB, 0, 0)
                     : m2mpsk_key_request_supply(req, key, sizeof(key), IDA,
                                                 IDB, 0, 0);
        CHECK(rc == M2MPSK_OK, "supply %s: %s", id, m2mpsk_strerror(rc));
        atomic_fetch_add(&w->supplied, 1);
      }
      m2mpsk_key_request_free(req);
      continue;
    }
    if (atomic_load(&w->workers_done) == KSRC_WORKERS)
      return NULL;
    pause_us(50);
  }
}

static void *ksrc_worker(void *p) {
  ksrc_arg *arg = p;
  ksrc_world *w = arg->w;
  uint8_t key[32];
  fill_key(key, sizeof(key), 11);
  m2mpsk_keystore *ks_a = NULL;
  CHECK(m2mpsk_keystore_new(&ks_a, 0) == M2MPSK_OK, "keystore_new");
  for (unsigned i = 0; i < w->iterations; i++) {
    /* 0: supplied; 1: supplied once; 2: absent; 3: freed early */
    unsigned kind = i % 4;
    m2mpsk_transport t =
        (i / 4) % 2 ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS;
    char id[64];
    snprintf(id, sizeof(id), "w%d-%u-%c@onem2m.com", arg->id, i,
             kind == 2 ? 'x' : kind == 1 ? 'o' : 's');
    CHECK(m2mpsk_keystore_add(ks_a, id, key, sizeof(key), IDA, IDB, 0, 0) ==
              M2MPSK_OK,
          "add %s", id);
    m2mpsk_assoc *a = NULL, *b = NULL;
    CHECK(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, w->cfg_a, ks_a, id) ==
              M2MPSK_OK,
          "initiator");
    CHECK(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, w->cfg_b, w->ks_b,
                           NULL) == M2MPSK_OK,
          "responder");
    uint64_t now = NOW0;
    CHECK(m2mpsk_assoc_start(b, now, UNIX0) == M2MPSK_OK, "start b");
    CHECK(m2mpsk_assoc_start(a, now, UNIX0) == M2MPSK_OK, "start a");
    for (int step = 0;
         step < 50 && m2mpsk_assoc_state(b) == M2MPSK_STATE_HANDSHAKING;
         step++) {
      if (pump(a, b, now) + pump(b, a, now) == 0)
        break;
    }
    /* The answerer may be quick enough to answer between the request's
     * opening and the association's look at it: then there is no wait. */
    m2mpsk_key_request *req = NULL;
    if (m2mpsk_assoc_state(b) == M2MPSK_STATE_WAITING_KEY) {
      req = m2mpsk_assoc_key_request(b);
      CHECK(req != NULL && strcmp(m2mpsk_key_request_kpsa_id(req), id) == 0,
            "%s: the request", id);
    } else {
      atomic_fetch_add(&w->quick, 1);
    }
    if (kind == 3) {
      /* Gone before the answer: the answer comes to nobody. */
      m2mpsk_assoc_free(a);
      m2mpsk_assoc_free(b);
      atomic_fetch_add(&w->late, 1);
      continue;
    }
    if (req != NULL) {
      double t0 = now_s();
      while (m2mpsk_key_request_answered(req) == 0) {
        CHECK(now_s() - t0 < 60, "%s: no answer in 60 s", id);
        pause_us(100);
      }
      int rc = m2mpsk_assoc_resume(b, now);
      CHECK(rc == M2MPSK_OK || rc == M2MPSK_E_FAILED, "resume: %s",
            m2mpsk_strerror(rc));
    }
    CHECK(run_handshake(a, b, &now) == 0, "%s: handshake did not finish", id);
    if (kind == 2) {
      CHECK(m2mpsk_assoc_failure(b) == M2MPSK_REASON_UNKNOWN_IDENTITY,
            "%s: absent should fail as unknown, got %s", id, side_name(b));
      atomic_fetch_add(&w->refused, 1);
    } else {
      CHECK(m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED &&
                m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED,
            "%s: not established: %s / %s", id, side_name(a), side_name(b));
      CHECK(strcmp(m2mpsk_assoc_peer_id(b), IDA) == 0, "bound identity");
      atomic_fetch_add(&w->established, 1);
    }
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
  }
  m2mpsk_keystore_free(ks_a);
  atomic_fetch_add(&w->workers_done, 1);
  return NULL;
}

typedef struct ksrc_detach {
  m2mpsk_key_request *req;
  pthread_barrier_t go;
  int rc;
} ksrc_detach;

static void *ksrc_late_supplier(void *p) {
  ksrc_detach *d = p;
  uint8_t key[32];
  fill_key(key, sizeof(key), 12);
  pthread_barrier_wait(&d->go);
  d->rc = m2mpsk_key_request_supply(d->req, key, sizeof(key), NULL, IDB, 0, 0);
  m2mpsk_key_request_free(d->req);
  return NULL;
}

static void scenario_keysource(unsigned scale) {
  scenario_begin(4);
  double t0 = now_s();
  ksrc_world w = {.iterations = 16 * scale};
  CHECK(m2mpsk_config_new(&w.cfg_a) == M2MPSK_OK, "config_new");
  CHECK(m2mpsk_config_new(&w.cfg_b) == M2MPSK_OK, "config_new");
  CHECK(m2mpsk_config_add_local_id(w.cfg_b, IDB) == M2MPSK_OK, "local id");
  CHECK(m2mpsk_keystore_new(&w.ks_b, 0) == M2MPSK_OK, "keystore_new");
  CHECK(m2mpsk_keystore_set_source(w.ks_b, NULL, NULL, 64) == M2MPSK_OK,
        "set_source");
  pthread_t workers[KSRC_WORKERS], answerer;
  ksrc_arg args[KSRC_WORKERS];
  start_thread(&answerer, ksrc_answerer, &w);
  for (int i = 0; i < KSRC_WORKERS; i++) {
    args[i] = (ksrc_arg){&w, i};
    start_thread(&workers[i], ksrc_worker, &args[i]);
  }
  for (int i = 0; i < KSRC_WORKERS; i++)
    pthread_join(workers[i], NULL);
  pthread_join(answerer, NULL);
  unsigned long want = (unsigned long)KSRC_WORKERS * w.iterations;
  CHECK(atomic_load(&w.established) + atomic_load(&w.refused) +
                atomic_load(&w.late) ==
            want,
        "outcomes do not add up");
  /* Late ones may have been answered or not before the worker let go;
   * every other request was answered once. */
  CHECK(atomic_load(&w.supplied) >= atomic_load(&w.established) &&
            atomic_load(&w.absent) == atomic_load(&w.refused),
        "answers do not match outcomes");
  m2mpsk_keystore_free(w.ks_b);
  m2mpsk_config_free(w.cfg_a);
  m2mpsk_config_free(w.cfg_b);

  /* The keystore goes away (its last references freed here) while another
   * thread answers its request: the answer either lands or is refused. */
  unsigned long landed = 0, refused = 0;
  for (unsigned i = 0; i < 20 * scale; i++) {
    m2mpsk_keystore *ks = NULL;
    m2mpsk_config *cfg = NULL;
    CHECK(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore_new");
    CHECK(m2mpsk_config_new(&cfg) == M2MPSK_OK, "config_new");
    CHECK(m2mpsk_keystore_set_source(ks, NULL, NULL, 4) == M2MPSK_OK, "src");
    m2mpsk_assoc *a = NULL;
    CHECK(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS, cfg,
                           ks, "late@onem2m.com") == M2MPSK_OK,
          "initiator");
    CHECK(m2mpsk_assoc_start(a, NOW0, UNIX0) == M2MPSK_OK, "start");
    ksrc_detach d = {0};
    CHECK(m2mpsk_keystore_next_request(ks, &d.req) == M2MPSK_OK, "request");
    CHECK(pthread_barrier_init(&d.go, NULL, 2) == 0, "barrier");
    pthread_t th;
    start_thread(&th, ksrc_late_supplier, &d);
    pthread_barrier_wait(&d.go);
    m2mpsk_assoc_free(a);
    m2mpsk_config_free(cfg);
    m2mpsk_keystore_free(ks);
    pthread_join(th, NULL);
    pthread_barrier_destroy(&d.go);
    CHECK(d.rc == M2MPSK_OK || d.rc == M2MPSK_E_STATE, "late supply: %s",
          m2mpsk_strerror(d.rc));
    if (d.rc == M2MPSK_OK)
      landed++;
    else
      refused++;
  }
  printf("tsan_driver: keysource: %lu established, %lu absent, %lu freed "
         "while waiting, %lu answered before the wait began; detach race: "
         "%lu answers landed, %lu refused, %.1f s\n",
         atomic_load(&w.established), atomic_load(&w.refused),
         atomic_load(&w.late), atomic_load(&w.quick), landed, refused,
         now_s() - t0);
  fflush(stdout);
}

/* ---- canary ----------------------------------------------------------------
 */

static int g_canary; /* written by two threads without a lock: a race */

static void *canary_thread(void *p) {
  (void)p;
  for (int i = 0; i < 1000; i++)
    g_canary++;
  return NULL;
}

static int run_canary(void) {
  pthread_t th[2];
  for (int t = 0; t < 2; t++)
    start_thread(&th[t], canary_thread, NULL);
  for (int t = 0; t < 2; t++)
    pthread_join(th[t], NULL);
  printf("tsan_driver: canary: raced on one int (%d); ThreadSanitizer must "
         "have reported it\n",
         g_canary);
  return 0;
}

/* ---- main ---------------------------------------------------------------- */

/* Runs this program again for one guard; its exit status. */
static int run_child(const char *self, const char *guard, const char *scale) {
  char g[32], s[32];
  snprintf(g, sizeof(g), "--guard=%s", guard);
  snprintf(s, sizeof(s), "--scale=%s", scale);
  char *argv[] = {(char *)(uintptr_t)self, g, s, NULL};
  pid_t pid;
  fflush(stdout);
  if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ) != 0) {
    fprintf(stderr, "tsan_driver: FAIL: cannot run %s\n", self);
    return 1;
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid)
    return 1;
  if (WIFSIGNALED(status)) {
    fprintf(stderr, "tsan_driver: FAIL: --guard=%s killed by signal %d\n",
            guard, WTERMSIG(status));
    return 1;
  }
  return WEXITSTATUS(status);
}

int main(int argc, char **argv) {
  const char *guard = NULL, *scale_arg = "1";
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--guard=", 8) == 0)
      guard = argv[i] + 8;
    else if (strncmp(argv[i], "--scale=", 8) == 0)
      scale_arg = argv[i] + 8;
    else if (strcmp(argv[i], "--canary") == 0)
      return run_canary();
    else {
      fprintf(stderr,
              "usage: %s [--guard=pkey|mprotect] [--scale=N] | --canary\n",
              argv[0]);
      return 2;
    }
  }
  unsigned scale = (unsigned)strtoul(scale_arg, NULL, 10);
  if (scale == 0 || scale > 1000) {
    fprintf(stderr, "tsan_driver: --scale must be 1 to 1000\n");
    return 2;
  }
  if (guard == NULL) {
    double t0 = now_s();
    int rc = run_child(argv[0], "pkey", scale_arg);
    int rc2 = run_child(argv[0], "mprotect", scale_arg);
    printf("tsan_driver: %s, both key guards, %.1f s\n",
           rc == 0 && rc2 == 0 ? "PASS" : "FAIL", now_s() - t0);
    return rc != 0 ? rc : rc2;
  }
  if (strcmp(guard, "mprotect") == 0)
    m2mpsk_keystore_debug_refuse_pkeys();
  else if (strcmp(guard, "pkey") != 0) {
    fprintf(stderr, "tsan_driver: unknown guard %s\n", guard);
    return 2;
  }
  signal(SIGALRM, on_alarm);
  m2mpsk_keystore *probe = NULL;
  CHECK(m2mpsk_keystore_new(&probe, 0) == M2MPSK_OK, "keystore_new");
  int pkeys = m2mpsk_keystore_debug_uses_pkeys(probe);
  m2mpsk_keystore_free(probe);
  printf("tsan_driver: guard %s: key arenas guarded by %s\n", guard,
         pkeys ? "a protection key" : "mprotect");
  fflush(stdout);
  double t0 = now_s();
  scenario_keystore(scale);
  scenario_assoc(scale);
  scenario_refcount(scale);
  scenario_keysource(scale);
  alarm(0);
  printf("tsan_driver: guard %s: PASS, 4 scenarios, %.1f s\n", guard,
         now_s() - t0);
  return 0;
}
