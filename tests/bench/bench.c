/* m2mpsk-bench: what one oneM2M PSK security association costs through
 * m2mpsk, against the same (D)TLS 1.2 work on raw BoringSSL and raw
 * OpenSSL 3, all in this one process and one run, their batches
 * interleaved, so that the machine's noise falls on all alike. The figures
 * that matter are the ratios measured within each repetition.
 *
 * This driver links only libm2mpsk (which loads its own TLS backend as a
 * private module). Each raw baseline is a module of its own, dlopened with
 * RTLD_LOCAL | RTLD_DEEPBIND (raw.h says why). m2mpsk is driven through its
 * public API only. README.md says what each section measures and how to
 * read it; --json writes every figure for tests/bench/report.py. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "m2mpsk/m2mpsk.h"
#include "raw.h"

enum {
  MAX_REPS = 32,
  MAX_ROUNDS = 16,      /* flights per handshake before giving up */
  TRANSPORT_BUF = 4096, /* raw: bytes buffered per direction */
  BULK_BUF = 65536,     /* raw: transport for application data */
  WIRE_BUF = 17408,     /* m2mpsk: one drain, a whole record or datagram */
  QUEUE_DGRAMS = 64,    /* datagrams of one flight */
  QUEUE_BUF = 1 << 16,  /* bytes of one flight */
  LEAK_NOTICE = 24,     /* bytes per pair left after freeing: say so */
  RESP_SECTIONS = 4     /* timed responder sections per handshake */
};

/* ---- the cases ----------------------------------------------------------- */

typedef struct bench_case {
  const char *label; /* also the key in the JSON output */
  m2mpsk_transport transport;
  const char *iana; /* the suite as m2mpsk names it */
  const char *ossl; /* the same suite as BoringSSL and OpenSSL name it */
  int ecdhe;
} bench_case;

static const bench_case k_cases[] = {
    {"TLS PSK", M2MPSK_TRANSPORT_TLS, "TLS_PSK_WITH_AES_128_CBC_SHA",
     "PSK-AES128-CBC-SHA", 0},
    {"TLS ECDHE-PSK", M2MPSK_TRANSPORT_TLS,
     "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", "ECDHE-PSK-AES128-CBC-SHA", 1},
    {"DTLS PSK", M2MPSK_TRANSPORT_DTLS, "TLS_PSK_WITH_AES_128_CBC_SHA",
     "PSK-AES128-CBC-SHA", 0},
    {"DTLS ECDHE-PSK", M2MPSK_TRANSPORT_DTLS,
     "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", "ECDHE-PSK-AES128-CBC-SHA", 1},
};
#define N_CASES (sizeof(k_cases) / sizeof(k_cases[0]))

typedef struct bench_params {
  int quick;
  int reps;
  long n_psk, n_ecdhe; /* handshakes per batch */
  long k;              /* associations held for memory */
  long ks_records;     /* keystore size */
  int ks_reps;
  long lookups;  /* per thread per repetition */
  long tp_bytes; /* application data per batch */
  long thr_n;    /* handshakes per thread per batch */
  const char *sections;
  const char *workdir;
} bench_params;

/* ---- helpers ------------------------------------------------------------- */

static FILE *g_json;

__attribute__((format(printf, 1, 2), noreturn)) static void
fatal(const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fputs("m2mpsk-bench: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(EXIT_FAILURE);
}

/* One figure for report.py: a JSON object per line. */
__attribute__((format(printf, 1, 2))) static void json(const char *fmt, ...) {
  if (g_json == NULL)
    return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(g_json, fmt, ap);
  va_end(ap);
  fputc('\n', g_json);
  fflush(g_json);
}

static double clock_s(clockid_t id) {
  struct timespec ts;
  if (clock_gettime(id, &ts) != 0)
    fatal("clock_gettime failed");
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static double cpu_seconds(void) {
  return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}
static double wall_seconds(void) {
  return clock_s(CLOCK_MONOTONIC);
}
static uint64_t monotonic_ms(void) {
  return (uint64_t)(wall_seconds() * 1000.0);
}

/* Bytes allocated from glibc malloc and not freed. */
static double heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return (double)mi.uordblks + (double)mi.hblkhd;
}

/* Resident set size in bytes. */
static double rss_bytes(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL)
    return 0;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
    resident = 0;
  fclose(f);
  return (double)resident * (double)sysconf(_SC_PAGESIZE);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct summary {
  double median, min, max;
} summary;

static summary summarize(const double *v, int n) {
  double s[MAX_REPS];
  memcpy(s, v, (size_t)n * sizeof(double));
  qsort(s, (size_t)n, sizeof(double), cmp_double);
  summary r = {n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2, s[0],
               s[n - 1]};
  return r;
}

static int section_on(const bench_params *bp, const char *name) {
  if (bp->sections == NULL)
    return 1;
  size_t n = strlen(name);
  /* Every occurrence: "ksadd,ks" holds "ks" only at its second. */
  for (const char *p = bp->sections; (p = strstr(p, name)) != NULL; p++) {
    if ((p == bp->sections || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
      return 1;
  }
  return 0;
}

/* ---- the raw modules ----------------------------------------------------- */

typedef struct raw_lib {
  const char *name; /* "boringssl", "openssl" */
  const bench_raw_ops *ops;
} raw_lib;

static raw_lib g_bssl = {"boringssl", NULL};
static raw_lib g_ossl = {"openssl", NULL};

static void raw_load(raw_lib *lib, const char *dir) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/bench-raw-%s.so", dir, lib->name);
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (h == NULL)
    fatal("cannot load %s: %s", path, dlerror());
  bench_raw_module_fn fn;
  void *sym = dlsym(h, "bench_raw_module");
  memcpy(&fn, &sym, sizeof(fn));
  lib->ops = sym ? fn() : NULL;
  if (lib->ops == NULL || lib->ops->abi != BENCH_RAW_ABI)
    fatal("%s is not a raw baseline module of this build", path);
}

static raw_env *raw_env_for(const raw_lib *lib, const bench_case *c) {
  char err[300];
  raw_env *e = lib->ops->env_new(c->transport == M2MPSK_TRANSPORT_DTLS, c->ossl,
                                 err, sizeof(err));
  if (e == NULL)
    fatal("%s raw %s: %s", c->label, lib->name, err);
  return e;
}

static double raw_batch_cpu(const raw_lib *lib, raw_env *env,
                            const bench_case *c, long n, double *resp) {
  char err[300];
  double t0 = cpu_seconds();
  if (lib->ops->batch(env, n, resp, err, sizeof(err)) != 0)
    fatal("%s raw %s: %s", c->label, lib->name, err);
  return cpu_seconds() - t0;
}

/* ---- m2mpsk -------------------------------------------------------------- */

typedef struct m2m_env {
  const bench_case *c;
  m2mpsk_keystore *ks_a, *ks_b; /* one record each */
  m2mpsk_config *cfg_a, *cfg_b;
  int64_t unix_time;
} m2m_env;

typedef struct m2m_pair {
  m2mpsk_assoc *a; /* initiator, Entity A */
  m2mpsk_assoc *b; /* responder, Entity B */
} m2m_pair;

static void m2m_env_init(m2m_env *env, const bench_case *c) {
  int rc;
  memset(env, 0, sizeof(*env));
  env->c = c;
  env->unix_time = (int64_t)time(NULL);
  if ((rc = m2mpsk_keystore_new(&env->ks_a, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_new(&env->ks_b, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_add(env->ks_a, BENCH_KPSA_ID, k_bench_kpsa,
                                sizeof(k_bench_kpsa), BENCH_ID_A, BENCH_ID_B, 0,
                                0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_add(env->ks_b, BENCH_KPSA_ID, k_bench_kpsa,
                                sizeof(k_bench_kpsa), BENCH_ID_A, BENCH_ID_B, 0,
                                0)) != M2MPSK_OK ||
      (rc = m2mpsk_config_new(&env->cfg_a)) != M2MPSK_OK ||
      (rc = m2mpsk_config_new(&env->cfg_b)) != M2MPSK_OK ||
      (rc = m2mpsk_config_add_local_id(env->cfg_b, BENCH_ID_B)) != M2MPSK_OK ||
      (rc = m2mpsk_config_set_suites(env->cfg_a, c->iana)) != M2MPSK_OK ||
      (rc = m2mpsk_config_set_suites(env->cfg_b, c->iana)) != M2MPSK_OK)
    fatal("%s: m2mpsk setup failed: %s", c->label, m2mpsk_strerror(rc));
}

static void m2m_env_free(m2m_env *env) {
  m2mpsk_config_free(env->cfg_a);
  m2mpsk_config_free(env->cfg_b);
  m2mpsk_keystore_free(env->ks_a);
  m2mpsk_keystore_free(env->ks_b);
}

/* One flight in transit: what one side drained, one drain per entry (a
 * datagram, for DTLS), to be fed to the other side one entry per feed. */
typedef struct flight {
  int n;
  size_t len[QUEUE_DGRAMS];
  size_t off[QUEUE_DGRAMS];
  uint8_t buf[QUEUE_BUF];
} flight;

static int flight_collect(m2mpsk_assoc *from, flight *f) {
  size_t used = 0, n;
  f->n = 0;
  while (f->n < QUEUE_DGRAMS && QUEUE_BUF - used >= WIRE_BUF &&
         m2mpsk_assoc_drain(from, f->buf + used, WIRE_BUF, &n) == M2MPSK_OK) {
    f->off[f->n] = used;
    f->len[f->n++] = n;
    used += n;
  }
  return f->n;
}

static int flight_deliver(m2mpsk_assoc *to, const flight *f, uint64_t now) {
  for (int i = 0; i < f->n; i++)
    if (m2mpsk_assoc_feed(to, f->buf + f->off[i], f->len[i], now) != M2MPSK_OK)
      return -1;
  return 0;
}

static void m2m_check(const bench_case *c, const m2m_pair *p) {
  if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED &&
      m2mpsk_assoc_state(p->b) == M2MPSK_STATE_ESTABLISHED)
    return;
  fatal("%s: m2mpsk handshake not established: initiator state %d "
        "(%s: %s), responder state %d (%s: %s)",
        c->label, (int)m2mpsk_assoc_state(p->a),
        m2mpsk_reason_name(m2mpsk_assoc_failure(p->a)),
        m2mpsk_assoc_failure_detail(p->a), (int)m2mpsk_assoc_state(p->b),
        m2mpsk_reason_name(m2mpsk_assoc_failure(p->b)),
        m2mpsk_assoc_failure_detail(p->b));
}

/* Creates both sides and runs the handshake until both are established;
 * exits with a message if they are not. With resp_cpu, adds the thread CPU
 * time of the responder's work: its creation and start, then each of its
 * turns (feeding it a flight and draining its answer). */
static void m2m_establish(const m2m_env *env, uint64_t now, m2m_pair *p,
                          double *resp_cpu) {
  static _Thread_local flight fa, fb;
  const bench_case *c = env->c;
  int rc;
  p->a = p->b = NULL;
  if ((rc = m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, c->transport,
                             env->cfg_a, env->ks_a, BENCH_KPSA_ID)) !=
      M2MPSK_OK)
    fatal("%s: m2mpsk_assoc_new failed: %s", c->label, m2mpsk_strerror(rc));
  double t0 = resp_cpu ? bench_thread_cpu() : 0;
  if ((rc = m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER, c->transport,
                             env->cfg_b, env->ks_b, NULL)) != M2MPSK_OK)
    fatal("%s: m2mpsk_assoc_new failed: %s", c->label, m2mpsk_strerror(rc));
  rc = m2mpsk_assoc_start(p->b, now, env->unix_time);
  if (resp_cpu)
    *resp_cpu += bench_thread_cpu() - t0;
  if (rc != M2MPSK_OK ||
      m2mpsk_assoc_start(p->a, now, env->unix_time) != M2MPSK_OK)
    m2m_check(c, p);
  for (int round = 0; round < MAX_ROUNDS; round++) {
    if (flight_collect(p->a, &fa) == 0)
      break;
    t0 = resp_cpu ? bench_thread_cpu() : 0;
    rc = flight_deliver(p->b, &fa, now);
    if (rc == 0)
      flight_collect(p->b, &fb);
    if (resp_cpu)
      *resp_cpu += bench_thread_cpu() - t0;
    if (rc != 0 || flight_deliver(p->a, &fb, now) != 0)
      break;
  }
  m2m_check(c, p);
}

static void m2m_free_responder(m2m_pair *p, double *resp_cpu) {
  double t0 = resp_cpu ? bench_thread_cpu() : 0;
  m2mpsk_assoc_free(p->b);
  if (resp_cpu)
    *resp_cpu += bench_thread_cpu() - t0;
}

/* n handshakes (create, handshake, free both sides). Not static and never
 * inlined: callgrind's --toggle-collect names it. */
void bench_m2m_batch(const m2m_env *env, long n, double *resp_cpu);
__attribute__((noinline, noclone)) void
bench_m2m_batch(const m2m_env *env, long n, double *resp_cpu) {
  uint64_t now = monotonic_ms();
  for (long i = 0; i < n; i++) {
    m2m_pair p;
    m2m_establish(env, now, &p, resp_cpu);
    m2mpsk_assoc_free(p.a);
    m2m_free_responder(&p, resp_cpu);
  }
}

static double m2m_batch_cpu(const m2m_env *env, long n, double *resp) {
  double t0 = cpu_seconds();
  bench_m2m_batch(env, n, resp);
  return cpu_seconds() - t0;
}

/* ---- handshakes ------------------------------------------------------------
 */

enum { W_M2M, W_BSSL, W_OSSL, N_WHO };
static const char *const k_who[N_WHO] = {"m2mpsk", "boringssl", "openssl"};

/* The cost of one timed section with nothing in it, in seconds, subtracted
 * RESP_SECTIONS times per handshake from every responder-alone figure. */
static double g_section_cost;

static void calibrate_sections(void) {
  double best = 1;
  for (int r = 0; r < 5; r++) {
    double sum = 0;
    for (int i = 0; i < 20000; i++) {
      double t0 = bench_thread_cpu();
      sum += bench_thread_cpu() - t0;
    }
    if (sum / 20000 < best)
      best = sum / 20000;
  }
  g_section_cost = best;
}

static void print_rows(const char *label, long n, const char *side,
                       double us[N_WHO][MAX_REPS], int reps) {
  for (int w = 0; w < N_WHO; w++) {
    summary s = summarize(us[w], reps);
    printf("%-15s %-9s %5ld  %-9s %8.2f %8.2f %8.2f %8.0f\n",
           w == 0 ? label : "", w == 0 ? side : "", n, k_who[w], s.median,
           s.min, s.max, 1e6 / s.median);
    json("{\"kind\":\"hs\",\"case\":\"%s\",\"side\":\"%s\",\"who\":\"%s\","
         "\"n\":%ld,\"reps\":%d,\"us_median\":%.3f,\"us_min\":%.3f,"
         "\"us_max\":%.3f,\"hs_per_s\":%.1f}",
         label, side, k_who[w], n, reps, s.median, s.min, s.max,
         1e6 / s.median);
  }
}

static void print_ratio(const char *label, const char *side, const char *what,
                        const double *ratio, const double *diff, int reps) {
  summary s = summarize(ratio, reps);
  summary d = summarize(diff, reps);
  printf("%-15s %-9s %5s  %-9s %8.3f %8.3f %8.3f   %+.1f us\n", "", "", "",
         what, s.median, s.min, s.max, d.median);
  json("{\"kind\":\"hs_ratio\",\"case\":\"%s\",\"side\":\"%s\","
       "\"what\":\"%s\",\"median\":%.4f,\"min\":%.4f,\"max\":%.4f,"
       "\"diff_us\":%.3f}",
       label, side, what, s.median, s.min, s.max, d.median);
}

/* Both sides (process CPU over a batch) then the responder alone (thread
 * CPU summed over its sections), R repetitions each, the three contenders'
 * batches in an order that rotates with the repetition. */
static void time_case(const bench_case *c, const bench_params *bp) {
  long n = c->ecdhe ? bp->n_ecdhe : bp->n_psk;
  m2m_env me;
  m2m_env_init(&me, c);
  raw_env *eb = raw_env_for(&g_bssl, c), *eo = raw_env_for(&g_ossl, c);

  long warm = n / 10 > 10 ? n / 10 : 10;
  m2m_batch_cpu(&me, warm, NULL);
  raw_batch_cpu(&g_bssl, eb, c, warm, NULL);
  raw_batch_cpu(&g_ossl, eo, c, warm, NULL);

  for (int resp_only = 0; resp_only < 2; resp_only++) {
    double us[N_WHO][MAX_REPS];
    double r_b[MAX_REPS], d_b[MAX_REPS], r_o[MAX_REPS], d_o[MAX_REPS];
    for (int r = 0; r < bp->reps; r++) {
      double t[N_WHO];
      for (int k = 0; k < N_WHO; k++) {
        int w = (k + r) % N_WHO;
        double resp = 0, *rp = resp_only ? &resp : NULL;
        double cpu = w == W_M2M    ? m2m_batch_cpu(&me, n, rp)
                     : w == W_BSSL ? raw_batch_cpu(&g_bssl, eb, c, n, rp)
                                   : raw_batch_cpu(&g_ossl, eo, c, n, rp);
        if (resp_only)
          cpu = resp - (double)(n * RESP_SECTIONS) * g_section_cost;
        t[w] = cpu;
        us[w][r] = cpu * 1e6 / (double)n;
      }
      r_b[r] = t[W_M2M] / t[W_BSSL];
      d_b[r] = us[W_M2M][r] - us[W_BSSL][r];
      r_o[r] = t[W_OSSL] / t[W_M2M]; /* how many times faster than OpenSSL */
      d_o[r] = us[W_OSSL][r] - us[W_M2M][r];
    }
    const char *side = resp_only ? "responder" : "both";
    print_rows(c->label, n, side, us, bp->reps);
    print_ratio(c->label, side, "m2m/bssl", r_b, d_b, bp->reps);
    print_ratio(c->label, side, "ossl/m2m", r_o, d_o, bp->reps);
    fflush(stdout);
  }
  m2m_env_free(&me);
  g_bssl.ops->env_free(eb);
  g_ossl.ops->env_free(eo);
}

/* ---- memory per established association ---------------------------------- */

typedef struct mem_figures {
  double initiator, responder, pair, leaked;
} mem_figures;

/* Holds k established pairs, then frees the responders, then the
 * initiators, reading the heap at each step. */
static mem_figures m2m_memory(const bench_case *c, long k) {
  m2m_env env;
  m2m_env_init(&env, c);
  m2m_pair *pairs = calloc((size_t)k, sizeof(*pairs));
  if (pairs == NULL)
    fatal("out of memory");
  uint64_t now = monotonic_ms();
  m2m_pair warm; /* lazily built shared state is not counted */
  m2m_establish(&env, now, &warm, NULL);
  m2mpsk_assoc_free(warm.a);
  m2mpsk_assoc_free(warm.b);

  double base = heap_in_use();
  for (long i = 0; i < k; i++)
    m2m_establish(&env, now, &pairs[i], NULL);
  double all = heap_in_use();
  for (long i = 0; i < k; i++)
    m2mpsk_assoc_free(pairs[i].b);
  double initiators = heap_in_use();
  for (long i = 0; i < k; i++)
    m2mpsk_assoc_free(pairs[i].a);
  double end = heap_in_use();
  free(pairs);
  m2m_env_free(&env);
  mem_figures f = {(initiators - base) / (double)k,
                   (all - initiators) / (double)k, (all - base) / (double)k,
                   (end - base) / (double)k};
  return f;
}

static mem_figures raw_memory(const raw_lib *lib, const bench_case *c, long k) {
  char err[300];
  raw_env *env = raw_env_for(lib, c);
  raw_pair *pairs = calloc((size_t)k, sizeof(*pairs));
  if (pairs == NULL)
    fatal("out of memory");
  raw_pair warm;
  if (lib->ops->establish(env, TRANSPORT_BUF, &warm, err, sizeof(err)) != 0)
    fatal("%s raw %s: %s", c->label, lib->name, err);
  lib->ops->free_server(&warm);
  lib->ops->free_client(&warm);

  double base = heap_in_use();
  for (long i = 0; i < k; i++)
    if (lib->ops->establish(env, TRANSPORT_BUF, &pairs[i], err, sizeof(err)))
      fatal("%s raw %s: %s", c->label, lib->name, err);
  double all = heap_in_use();
  for (long i = 0; i < k; i++)
    lib->ops->free_server(&pairs[i]);
  double initiators = heap_in_use();
  for (long i = 0; i < k; i++)
    lib->ops->free_client(&pairs[i]);
  double end = heap_in_use();
  free(pairs);
  lib->ops->env_free(env);
  mem_figures f = {(initiators - base) / (double)k,
                   (all - initiators) / (double)k, (all - base) / (double)k,
                   (end - base) / (double)k};
  return f;
}

/* Bytes per side of the harness's raw transport alone (no SSL). */
static double transport_memory(const raw_lib *lib, int dtls, long k) {
  void **ends = calloc((size_t)k * 2, sizeof(*ends));
  if (ends == NULL)
    fatal("out of memory");
  double base = heap_in_use();
  for (long i = 0; i < k; i++)
    if (lib->ops->transport_new(dtls, TRANSPORT_BUF, &ends[2 * i],
                                &ends[2 * i + 1]) != 0)
      fatal("cannot create a transport pair");
  double all = heap_in_use();
  for (long i = 0; i < k; i++)
    lib->ops->transport_free(ends[2 * i], ends[2 * i + 1]);
  free(ends);
  return (all - base) / (double)(2 * k);
}

static void memory_case(const bench_case *c, long k) {
  mem_figures m = m2m_memory(c, k);
  mem_figures r = raw_memory(&g_bssl, c, k);
  mem_figures o = raw_memory(&g_ossl, c, k);
  double t =
      transport_memory(&g_bssl, c->transport == M2MPSK_TRANSPORT_DTLS, k);
  const char *sides[3] = {"initiator", "responder", "pair"};
  double mv[3] = {m.initiator, m.responder, m.pair};
  double rv[3] = {r.initiator, r.responder, r.pair};
  double ov[3] = {o.initiator, o.responder, o.pair};
  double tv[3] = {t, t, 2 * t};
  for (int i = 0; i < 3; i++) {
    printf("%-15s %-9s %9.0f %9.0f %9.0f %9.0f %+9.0f %6.2f\n",
           i == 0 ? c->label : "", sides[i], mv[i], rv[i], rv[i] - tv[i],
           ov[i] - tv[i], mv[i] - (rv[i] - tv[i]), mv[i] / (rv[i] - tv[i]));
    json("{\"kind\":\"mem\",\"case\":\"%s\",\"side\":\"%s\",\"k\":%ld,"
         "\"m2mpsk\":%.1f,\"boringssl\":%.1f,\"boringssl_transport\":%.1f,"
         "\"openssl\":%.1f}",
         c->label, sides[i], k, mv[i], rv[i] - tv[i], tv[i], ov[i] - tv[i]);
  }
  if (m.leaked > LEAK_NOTICE || r.leaked > LEAK_NOTICE)
    printf("%-15s not returned after freeing all, per pair: m2mpsk %.0f, "
           "raw %.0f\n",
           "", m.leaked, r.leaked);
  fflush(stdout);
}

/* ---- application data ------------------------------------------------------
 */

static void m2m_transfer(const bench_case *c, m2m_pair *p, const uint8_t *data,
                         size_t chunk, size_t total, uint64_t now) {
  static uint8_t wire[WIRE_BUF], rbuf[16384];
  size_t n, w;
  for (size_t done = 0; done < total; done += chunk) {
    if (m2mpsk_assoc_write(p->a, data, chunk, &w) != M2MPSK_OK || w != chunk)
      fatal("%s: m2mpsk_assoc_write failed", c->label);
    while (m2mpsk_assoc_drain(p->a, wire, sizeof(wire), &n) == M2MPSK_OK)
      if (m2mpsk_assoc_feed(p->b, wire, n, now) != M2MPSK_OK)
        fatal("%s: m2mpsk_assoc_feed failed", c->label);
    size_t got = 0;
    while (got < chunk) {
      if (m2mpsk_assoc_read(p->b, rbuf, sizeof(rbuf), &n) != M2MPSK_OK)
        fatal("%s: m2mpsk_assoc_read failed", c->label);
      got += n;
    }
  }
}

static void throughput_case(const bench_case *c, const bench_params *bp) {
  static const size_t sizes[] = {64, 1024, 16384};
  static uint8_t data[16384];
  memset(data, 0x5a, sizeof(data));
  char err[300];
  m2m_env me;
  m2m_env_init(&me, c);
  m2m_pair mp;
  uint64_t now = monotonic_ms();
  m2m_establish(&me, now, &mp, NULL);
  raw_env *eb = raw_env_for(&g_bssl, c);
  raw_pair rp;
  if (g_bssl.ops->establish(eb, BULK_BUF, &rp, err, sizeof(err)) != 0)
    fatal("%s raw boringssl: %s", c->label, err);

  for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
    size_t chunk = sizes[si];
    size_t total = (size_t)bp->tp_bytes / chunk * chunk;
    double mbs_m[MAX_REPS], mbs_r[MAX_REPS], ratio[MAX_REPS];
    m2m_transfer(c, &mp, data, chunk, total / 10, now); /* warm-up */
    for (int r = 0; r < bp->reps; r++) {
      double tm = 0, tr = 0;
      for (int k = 0; k < 2; k++) {
        double t0 = cpu_seconds();
        if ((k + r) % 2 == 0) {
          m2m_transfer(c, &mp, data, chunk, total, now);
          tm = cpu_seconds() - t0;
        } else {
          if (g_bssl.ops->transfer(&rp, data, chunk, total, err, sizeof(err)))
            fatal("%s raw boringssl: %s", c->label, err);
          tr = cpu_seconds() - t0;
        }
      }
      mbs_m[r] = (double)total / tm / 1e6;
      mbs_r[r] = (double)total / tr / 1e6;
      ratio[r] = tr / tm;
    }
    summary sm = summarize(mbs_m, bp->reps), sr = summarize(mbs_r, bp->reps);
    summary sx = summarize(ratio, bp->reps);
    printf("%-15s %6zu B %9.1f %9.1f   %6.3f %6.3f %6.3f\n",
           si == 0 ? c->label : "", chunk, sm.median, sr.median, sx.median,
           sx.min, sx.max);
    json("{\"kind\":\"tp\",\"case\":\"%s\",\"size\":%zu,\"bytes\":%zu,"
         "\"m2mpsk_mbs\":%.2f,\"boringssl_mbs\":%.2f,\"ratio_median\":%.4f,"
         "\"ratio_min\":%.4f,\"ratio_max\":%.4f}",
         c->label, chunk, total, sm.median, sr.median, sx.median, sx.min,
         sx.max);
  }
  fflush(stdout);
  m2mpsk_assoc_free(mp.a);
  m2mpsk_assoc_free(mp.b);
  g_bssl.ops->free_server(&rp);
  g_bssl.ops->free_client(&rp);
  g_bssl.ops->env_free(eb);
  m2m_env_free(&me);
}

/* ---- two threads against one --------------------------------------------- */

typedef struct thr_job {
  int who; /* W_M2M or W_BSSL */
  const m2m_env *me;
  raw_env *re;
  const bench_case *c;
  long n;
} thr_job;

static void *thr_run(void *arg) {
  thr_job *j = arg;
  if (j->who == W_M2M)
    bench_m2m_batch(j->me, j->n, NULL);
  else
    raw_batch_cpu(&g_bssl, j->re, j->c, j->n, NULL);
  return NULL;
}

/* Wall seconds for `threads` threads doing j->n handshakes each. */
static double thr_wall(thr_job *j, int threads) {
  pthread_t t[2];
  double t0 = wall_seconds();
  for (int i = 0; i < threads; i++)
    if (pthread_create(&t[i], NULL, thr_run, j) != 0)
      fatal("pthread_create failed");
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  return wall_seconds() - t0;
}

static void threads_case(const bench_case *c, const bench_params *bp) {
  m2m_env me;
  m2m_env_init(&me, c);
  raw_env *eb = raw_env_for(&g_bssl, c);
  long n = c->ecdhe ? bp->thr_n / 4 : bp->thr_n;
  thr_job jobs[2] = {{W_M2M, &me, NULL, c, n}, {W_BSSL, NULL, eb, c, n}};
  thr_job warm[2] = {{W_M2M, &me, NULL, c, n / 10},
                     {W_BSSL, NULL, eb, c, n / 10}};
  thr_wall(&warm[0], 2);
  thr_wall(&warm[1], 2);
  double sc[2][MAX_REPS], hs1[2][MAX_REPS], hs2[2][MAX_REPS];
  for (int r = 0; r < bp->reps; r++) {
    for (int k = 0; k < 2; k++) {
      int w = (k + r) % 2;
      double w1 = thr_wall(&jobs[w], 1);
      double w2 = thr_wall(&jobs[w], 2);
      hs1[w][r] = (double)n / w1;
      hs2[w][r] = 2.0 * (double)n / w2;
      sc[w][r] = hs2[w][r] / hs1[w][r];
    }
  }
  for (int w = 0; w < 2; w++) {
    summary s = summarize(sc[w], bp->reps);
    summary a = summarize(hs1[w], bp->reps), b = summarize(hs2[w], bp->reps);
    printf("%-15s %-9s %9.0f %9.0f   %6.3f %6.3f %6.3f\n",
           w == 0 ? c->label : "", k_who[w], a.median, b.median, s.median,
           s.min, s.max);
    json("{\"kind\":\"thr\",\"case\":\"%s\",\"who\":\"%s\",\"n\":%ld,"
         "\"hs1\":%.1f,\"hs2\":%.1f,\"scale_median\":%.4f,"
         "\"scale_min\":%.4f,\"scale_max\":%.4f}",
         c->label, k_who[w], n, a.median, b.median, s.median, s.min, s.max);
  }
  fflush(stdout);
  g_bssl.ops->env_free(eb);
  m2m_env_free(&me);
}

/* ---- keystore ------------------------------------------------------------ */

static void ks_id(long i, char *out, size_t cap) {
  snprintf(out, cap, "dev%07ld@bench.example.com", i);
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* A key file of `count` records, mode 0600, each a 32-byte key. */
static void ks_write_file(const char *path, long count) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (f == NULL)
    fatal("cannot create %s: %s", path, strerror(errno));
  static const char hex[] = "0123456789abcdef";
  uint64_t seed = 42;
  for (long i = 0; i < count; i++) {
    char id[64], key[65];
    ks_id(i, id, sizeof(id));
    for (int j = 0; j < 4; j++) {
      uint64_t v = splitmix(&seed);
      for (int b = 0; b < 16; b++)
        key[j * 16 + b] = hex[(v >> (4 * b)) & 15];
    }
    key[64] = '\0';
    fprintf(f, "kpsa-id=%s kpsa=hex:%s idb=//m2m.example.com/cse-in\n", id,
            key);
  }
  if (fclose(f) != 0)
    fatal("cannot write %s", path);
}

typedef struct lookup_job {
  const m2mpsk_keystore *ks;
  long count; /* records */
  long n;     /* lookups */
  uint64_t seed;
  double ns;     /* out: wall time per lookup */
  double cpu_ns; /* out: this thread's CPU time per lookup */
} lookup_job;

static void *lookup_run(void *arg) {
  lookup_job *j = arg;
  char id[64], idb[M2MPSK_ID_MAX + 1];
  uint64_t s = j->seed;
  long ok = 0;
  /* Random KpsaIDs built on the fly; the cost of building one is measured
   * apart and subtracted. */
  double t0 = wall_seconds(), c0 = bench_thread_cpu();
  for (long i = 0; i < j->n; i++) {
    ks_id((long)(splitmix(&s) % (uint64_t)j->count), id, sizeof(id));
    ok += m2mpsk_keystore_lookup(j->ks, id, NULL, 0, idb, sizeof(idb), NULL,
                                 NULL, NULL) == M2MPSK_OK;
  }
  double t1 = wall_seconds(), c1 = bench_thread_cpu();
  s = j->seed;
  volatile char sink = 0;
  for (long i = 0; i < j->n; i++) {
    ks_id((long)(splitmix(&s) % (uint64_t)j->count), id, sizeof(id));
    sink = (char)(sink + id[3]);
  }
  double t2 = wall_seconds(), c2 = bench_thread_cpu();
  if (ok != j->n)
    fatal("keystore lookup failed (%ld of %ld found)", ok, j->n);
  j->ns = ((t1 - t0) - (t2 - t1)) * 1e9 / (double)j->n;
  j->cpu_ns = ((c1 - c0) - (c2 - c1)) * 1e9 / (double)j->n;
  return NULL;
}

/* Mean wall time per lookup over the threads; *cpu_ns gets their mean CPU
 * time per lookup, which time spent waiting for a core (other work on a
 * shared machine) does not inflate, while contention between the threads
 * (cache lines moving between cores) does. */
static double lookup_ns(const m2mpsk_keystore *ks, long count, long n,
                        int threads, int rep, double *cpu_ns) {
  pthread_t t[2];
  lookup_job j[2];
  for (int i = 0; i < threads; i++) {
    j[i] = (lookup_job){ks, count, n, (uint64_t)(rep * 2 + i + 1), 0, 0};
    if (pthread_create(&t[i], NULL, lookup_run, &j[i]) != 0)
      fatal("pthread_create failed");
  }
  double sum = 0, cpu = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    sum += j[i].ns;
    cpu += j[i].cpu_ns;
  }
  *cpu_ns = cpu / threads;
  return sum / threads;
}

/* Drops CAP_IPC_LOCK, so that RLIMIT_MEMLOCK applies as to an ordinary
 * service account (root ignores it). 0 on success. */
static int drop_ipc_lock(void) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  if (syscall(SYS_capget, &h, d) != 0)
    return -1;
  d[0].effective &= ~(1u << CAP_IPC_LOCK);
  d[0].permitted &= ~(1u << CAP_IPC_LOCK);
  d[0].inheritable &= ~(1u << CAP_IPC_LOCK);
  return (int)syscall(SYS_capset, &h, d);
}

typedef struct memlock_result {
  int dropped;
  long soft, hard; /* RLIMIT_MEMLOCK, bytes, -1 unlimited */
  int load_rc, load_locked;
  double load_s;
  long load_key_memory;
  int req_load_rc;
  double req_load_s;
  long req_count_at_refusal;
  int req_add_rc;
  long flip_count; /* records when is_locked went to 0 (flags 0), or -1 */
  long flip_key_memory;
  int done;
} memlock_result;

static void memlock_child(const char *path, long count, memlock_result *m) {
  m->dropped = drop_ipc_lock() == 0;
  struct rlimit rl;
  getrlimit(RLIMIT_MEMLOCK, &rl);
  m->soft = rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
  m->hard = rl.rlim_max == RLIM_INFINITY ? -1 : (long)rl.rlim_max;
  m2mpsk_keystore *ks;
  size_t line;
  /* flags 0: the whole file */
  if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK)
    _exit(3);
  double t0 = wall_seconds();
  m->load_rc = m2mpsk_keystore_load_file(ks, path, &line);
  m->load_s = wall_seconds() - t0;
  m->load_locked = m2mpsk_keystore_is_locked(ks);
  m->load_key_memory = (long)m2mpsk_keystore_key_memory(ks);
  m2mpsk_keystore_free(ks);
  /* flags 0, one record at a time: when does is_locked drop to 0? */
  uint8_t key[32];
  memset(key, 7, sizeof(key));
  char id[64];
  if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK)
    _exit(3);
  m->flip_count = -1;
  for (long i = 0; i < count; i++) {
    ks_id(i, id, sizeof(id));
    if (m2mpsk_keystore_add(ks, id, key, sizeof(key), NULL, BENCH_ID_B, 0, 0))
      break;
    if (m2mpsk_keystore_is_locked(ks) != 1) {
      m->flip_count = i; /* records held before the one that flipped it */
      m->flip_key_memory = (long)m2mpsk_keystore_key_memory(ks);
      break;
    }
  }
  m2mpsk_keystore_free(ks);
  /* REQUIRE_LOCKED: the whole file, then one record at a time */
  if (m2mpsk_keystore_new(&ks, M2MPSK_KEYSTORE_REQUIRE_LOCKED) != M2MPSK_OK)
    _exit(3);
  t0 = wall_seconds();
  m->req_load_rc = m2mpsk_keystore_load_file(ks, path, &line);
  m->req_load_s = wall_seconds() - t0;
  m2mpsk_keystore_free(ks);
  if (m2mpsk_keystore_new(&ks, M2MPSK_KEYSTORE_REQUIRE_LOCKED) != M2MPSK_OK)
    _exit(3);
  m->req_count_at_refusal = -1;
  m->req_add_rc = M2MPSK_OK;
  for (long i = 0; i < count; i++) {
    ks_id(i, id, sizeof(id));
    int rc =
        m2mpsk_keystore_add(ks, id, key, sizeof(key), NULL, BENCH_ID_B, 0, 0);
    if (rc != M2MPSK_OK) {
      m->req_add_rc = rc;
      m->req_count_at_refusal = (long)m2mpsk_keystore_count(ks);
      break;
    }
  }
  m2mpsk_keystore_free(ks);
  m->done = 1;
}

/* What the unit suite checked at 1,000,000 records before the scale moved
 * here: every record of the file is in, next to the one held before, and
 * nothing else is. Fatal otherwise. */
static void ks_check_loaded(const m2mpsk_keystore *ks, long count) {
  char id[64], idb[M2MPSK_ID_MAX + 1];
  if ((long)m2mpsk_keystore_count(ks) != count + 1)
    fatal("keystore holds %zu records after loading %ld into 1",
          m2mpsk_keystore_count(ks), count);
  for (long i = 0; i < count; i += count / 97 + 1) {
    ks_id(i, id, sizeof(id));
    if (m2mpsk_keystore_lookup(ks, id, NULL, 0, idb, sizeof(idb), NULL, NULL,
                               NULL) != M2MPSK_OK ||
        strcmp(idb, "//m2m.example.com/cse-in") != 0)
      fatal("record %s missing or wrong after the load", id);
  }
  ks_id(count, id, sizeof(id));
  if (m2mpsk_keystore_lookup(ks, id, NULL, 0, NULL, 0, NULL, NULL, NULL) !=
          M2MPSK_E_NOT_FOUND ||
      m2mpsk_keystore_lookup(ks, "pre@bench.example.com", NULL, 0, NULL, 0,
                             NULL, NULL, NULL) != M2MPSK_OK)
    fatal("the keystore holds a record it should not, or lost one");
}

/* ---- keystore built one record at a time --------------------------------- */

static void ks_add_key(long i, uint64_t *seed, char *id, size_t cap,
                       uint8_t key[32]) {
  ks_id(i, id, cap);
  for (int j = 0; j < 4; j++) {
    uint64_t v = splitmix(seed);
    memcpy(key + j * 8, &v, 8);
  }
}

/* m2mpsk_keystore_add of `count` records (32-byte keys) into one keystore,
 * then lookups of random KpsaIDs, then m2mpsk_keystore_free: the time of
 * each, and the memory per record. Once the unit suite's
 * keystore.one_million_records. */
static void keystore_add_bench(const bench_params *bp) {
  long count = bp->ks_records;
  m2mpsk_keystore *ks;
  if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK)
    fatal("m2mpsk_keystore_new failed");
  char id[64];
  uint8_t key[32];
  uint64_t seed = 7;
  double h0 = heap_in_use(), r0 = rss_bytes();
  double c0 = cpu_seconds(), w0 = wall_seconds();
  for (long i = 0; i < count; i++) {
    ks_add_key(i, &seed, id, sizeof(id), key);
    int rc = m2mpsk_keystore_add(ks, id, key, sizeof(key), NULL,
                                 "//m2m.example.com/cse-in", 0, 0);
    if (rc != M2MPSK_OK)
      fatal("m2mpsk_keystore_add %s: %s", id, m2mpsk_strerror(rc));
  }
  double c1 = cpu_seconds(), w1 = wall_seconds();
  /* What making the ids and keys cost, measured apart and subtracted. */
  seed = 7;
  volatile uint8_t sink = 0;
  for (long i = 0; i < count; i++) {
    ks_add_key(i, &seed, id, sizeof(id), key);
    sink = (uint8_t)(sink + key[i & 31] + (uint8_t)id[3]);
  }
  double add_cpu = (c1 - c0) - (cpu_seconds() - c1);
  double add_wall = (w1 - w0) - (wall_seconds() - w1);
  double heap_pr = (heap_in_use() - h0) / (double)count;
  double rss_pr = (rss_bytes() - r0) / (double)count;
  double key_pr = (double)m2mpsk_keystore_key_memory(ks) / (double)count;
  int locked = m2mpsk_keystore_is_locked(ks);
  if ((long)m2mpsk_keystore_count(ks) != count)
    fatal("keystore holds %zu records after %ld adds",
          m2mpsk_keystore_count(ks), count);
  ks_id(count, id, sizeof(id));
  if (m2mpsk_keystore_lookup(ks, id, NULL, 0, NULL, 0, NULL, NULL, NULL) !=
      M2MPSK_E_NOT_FOUND)
    fatal("%s found, though never added", id);
  for (long i = 0; i < count; i++) {
    ks_id(i, id, sizeof(id));
    if (m2mpsk_keystore_lookup(ks, id, NULL, 0, NULL, 0, NULL, NULL, NULL) !=
        M2MPSK_OK)
      fatal("%s not found after it was added", id);
  }
  double cpu_ns;
  double ns = lookup_ns(ks, count, bp->lookups, 1, 0, &cpu_ns);
  double f0 = wall_seconds();
  m2mpsk_keystore_free(ks);
  double free_s = wall_seconds() - f0;
  printf("add %ld records one by one: %.2f s wall, %.3f us CPU per add; "
         "lookup %.0f ns CPU (%.0f ns wall); free %.3f s\n"
         "per record: locked key memory %.1f B (target < 70 B), heap %.1f B, "
         "RSS growth %.1f B; is_locked %d\n",
         count, add_wall, add_cpu * 1e6 / (double)count, cpu_ns, ns, free_s,
         key_pr, heap_pr, rss_pr, locked);
  json("{\"kind\":\"ks_add\",\"records\":%ld,\"add_wall\":%.4f,"
       "\"add_cpu_us\":%.4f,\"lookup_cpu_ns\":%.1f,\"lookup_ns\":%.1f,"
       "\"free_s\":%.4f,\"locked_per_record\":%.2f,"
       "\"heap_per_record\":%.2f,\"rss_per_record\":%.2f,\"is_locked\":%d}",
       count, add_wall, add_cpu * 1e6 / (double)count, cpu_ns, ns, free_s,
       key_pr, heap_pr, rss_pr, locked);
}

static void keystore_bench(const bench_params *bp) {
  char path[4096];
  long count = bp->ks_records;
  snprintf(path, sizeof(path), "%s/m2mpsk-bench-keys-%ld", bp->workdir,
           (long)getpid());
  double t0 = wall_seconds();
  ks_write_file(path, count);
  printf("key file: %ld records written in %.2f s\n", count,
         wall_seconds() - t0);

  double load_s[MAX_REPS], load_cpu[MAX_REPS];
  m2mpsk_keystore *keep = NULL;
  double heap_pr = 0, key_pr = 0, rss_pr = 0;
  int locked = 0;
  for (int r = 0; r < bp->ks_reps; r++) {
    m2mpsk_keystore *ks;
    size_t line = 0;
    /* The file is merged into a keystore that already holds a record, as
     * a service adding a file to what it has would. */
    static const uint8_t pre_key[16] = {1};
    if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK ||
        m2mpsk_keystore_add(ks, "pre@bench.example.com", pre_key,
                            sizeof(pre_key), NULL, BENCH_ID_B, 0,
                            0) != M2MPSK_OK)
      fatal("m2mpsk_keystore_new failed");
    double h0 = heap_in_use(), r0 = rss_bytes();
    double c0 = cpu_seconds(), w0 = wall_seconds();
    int rc = m2mpsk_keystore_load_file(ks, path, &line);
    load_s[r] = wall_seconds() - w0;
    load_cpu[r] = cpu_seconds() - c0;
    if (rc != M2MPSK_OK)
      fatal("loading %s: %s (line %zu)", path, m2mpsk_strerror(rc), line);
    ks_check_loaded(ks, count);
    heap_pr = (heap_in_use() - h0) / (double)count;
    rss_pr = (rss_bytes() - r0) / (double)count;
    key_pr = (double)m2mpsk_keystore_key_memory(ks) / (double)count;
    locked = m2mpsk_keystore_is_locked(ks);
    if (r == bp->ks_reps - 1)
      keep = ks;
    else
      m2mpsk_keystore_free(ks);
  }
  summary sl = summarize(load_s, bp->ks_reps);
  summary sc = summarize(load_cpu, bp->ks_reps);
  printf("load %ld records: wall median %.3f s (min %.3f, max %.3f), CPU "
         "median %.3f s\n",
         count, sl.median, sl.min, sl.max, sc.median);
  printf("per record: locked key memory %.1f B, heap %.1f B, total %.1f B "
         "(RSS growth %.1f B); is_locked %d (as uid %d)\n",
         key_pr, heap_pr, key_pr + heap_pr, rss_pr, locked, (int)getuid());
  json("{\"kind\":\"ks_load\",\"records\":%ld,\"reps\":%d,\"wall_median\":%.4f,"
       "\"wall_min\":%.4f,\"wall_max\":%.4f,\"cpu_median\":%.4f,"
       "\"locked_per_record\":%.2f,\"heap_per_record\":%.2f,"
       "\"rss_per_record\":%.2f,\"is_locked\":%d,\"uid\":%d}",
       count, bp->ks_reps, sl.median, sl.min, sl.max, sc.median, key_pr,
       heap_pr, rss_pr, locked, (int)getuid());

  double l1[MAX_REPS], l2[MAX_REPS], c1[MAX_REPS], c2[MAX_REPS];
  for (int r = 0; r < bp->reps; r++) {
    l1[r] = lookup_ns(keep, count, bp->lookups, 1, r, &c1[r]);
    l2[r] = lookup_ns(keep, count, bp->lookups, 2, r, &c2[r]);
  }
  summary s1 = summarize(l1, bp->reps), s2 = summarize(l2, bp->reps);
  summary sc1 = summarize(c1, bp->reps), sc2 = summarize(c2, bp->reps);
  printf("lookup (m2mpsk_keystore_lookup, random KpsaID of %ld): CPU time "
         "1 thread %.0f ns, 2 threads %.0f ns each (min %.0f, max %.0f); "
         "wall 1 thread %.0f ns, 2 threads %.0f ns (min %.0f, max %.0f)\n",
         count, sc1.median, sc2.median, sc2.min, sc2.max, s1.median, s2.median,
         s2.min, s2.max);
  json("{\"kind\":\"ks_lookup\",\"records\":%ld,\"lookups\":%ld,"
       "\"ns1_median\":%.1f,\"ns2_median\":%.1f,\"ns2_min\":%.1f,"
       "\"ns2_max\":%.1f,\"cpu1_median\":%.1f,\"cpu2_median\":%.1f,"
       "\"cpu2_min\":%.1f,\"cpu2_max\":%.1f}",
       count, bp->lookups, s1.median, s2.median, s2.min, s2.max, sc1.median,
       sc2.median, sc2.min, sc2.max);
  m2mpsk_keystore_free(keep);

  /* RLIMIT_MEMLOCK, in a child without CAP_IPC_LOCK */
  memlock_result *m = mmap(NULL, sizeof(*m), PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    fatal("mmap failed");
  memset(m, 0, sizeof(*m));
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    memlock_child(path, count, m);
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  if (!m->done)
    fatal("the RLIMIT_MEMLOCK child did not finish (status %d)", st);
  printf("RLIMIT_MEMLOCK soft %ld hard %ld (CAP_IPC_LOCK dropped: %s):\n"
         "  flags 0: load %s, is_locked %d, %ld B of key memory, %.3f s; "
         "is_locked drops to 0 at record %ld (%ld B of key memory)\n"
         "  REQUIRE_LOCKED: load returns %s after %.3f s; adding one by one "
         "refused (%s) after %ld records\n",
         m->soft, m->hard, m->dropped ? "yes" : "no",
         m2mpsk_strerror(m->load_rc), m->load_locked, m->load_key_memory,
         m->load_s, m->flip_count, m->flip_key_memory,
         m2mpsk_strerror(m->req_load_rc), m->req_load_s,
         m2mpsk_strerror(m->req_add_rc), m->req_count_at_refusal);
  json("{\"kind\":\"ks_memlock\",\"records\":%ld,\"cap_dropped\":%d,"
       "\"soft\":%ld,\"hard\":%ld,\"load_rc\":\"%s\",\"load_locked\":%d,"
       "\"load_key_memory\":%ld,\"load_s\":%.4f,\"flip_count\":%ld,"
       "\"flip_key_memory\":%ld,\"req_load_rc\":\"%s\",\"req_load_s\":%.4f,"
       "\"req_add_rc\":\"%s\",\"req_count_at_refusal\":%ld}",
       count, m->dropped, m->soft, m->hard, m2mpsk_strerror(m->load_rc),
       m->load_locked, m->load_key_memory, m->load_s, m->flip_count,
       m->flip_key_memory, m2mpsk_strerror(m->req_load_rc), m->req_load_s,
       m2mpsk_strerror(m->req_add_rc), m->req_count_at_refusal);
  munmap(m, sizeof(*m));
  unlink(path);
}

/* ---- callgrind ----------------------------------------------------------- */

/* One contender, one case, n handshakes after a few uncounted ones: run
 * under valgrind --tool=callgrind --toggle-collect=bench_m2m_batch (or
 * bench_raw_batch). */
static int callgrind_run(size_t ci, const char *who, long n) {
  const bench_case *c = &k_cases[ci];
  if (strcmp(who, "m2mpsk") == 0) {
    m2m_env me;
    m2m_env_init(&me, c);
    bench_m2m_batch(&me, 5, NULL);
    bench_m2m_batch(&me, n, NULL);
    m2m_env_free(&me);
  } else {
    raw_env *eb = raw_env_for(&g_bssl, c);
    raw_batch_cpu(&g_bssl, eb, c, 5, NULL);
    raw_batch_cpu(&g_bssl, eb, c, n, NULL);
    g_bssl.ops->env_free(eb);
  }
  return 0;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(FILE *f) {
  fputs(
      "usage: m2mpsk-bench [--quick] [--json FILE] [--sections LIST]\n"
      "                    [--modules DIR] [--workdir DIR]\n"
      "       m2mpsk-bench --callgrind CASE m2mpsk|boringssl N\n"
      "  Handshake CPU (both sides, responder alone), memory per\n"
      "  association, application data, 2 threads against 1 and the\n"
      "  keystore at scale, m2mpsk against raw BoringSSL and OpenSSL 3\n"
      "  in one run. LIST: hs,mem,tp,thr,ks,ksadd (default all). CASE: 0-3.\n",
      f);
}

static void modules_dir(char *out, size_t cap) {
  ssize_t n = readlink("/proc/self/exe", out, cap - 1);
  if (n <= 0)
    fatal("cannot find the executable's directory");
  out[n] = '\0';
  char *slash = strrchr(out, '/');
  if (slash != NULL)
    *slash = '\0';
}

int main(int argc, char **argv) {
  bench_params bp = {0, 7,      2000,    500,  10000, 1000000,
                     3, 500000, 8 << 20, 2000, NULL,  "/tmp"};
  char moddir[4096] = "";
  const char *json_path = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0) {
      bp.quick = 1;
      bp.reps = 3;
      bp.n_psk = 200;
      bp.n_ecdhe = 50;
      bp.k = 1000;
      bp.ks_records = 100000;
      bp.ks_reps = 1;
      bp.lookups = 100000;
      bp.tp_bytes = 1 << 20;
      bp.thr_n = 300;
    } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (strcmp(argv[i], "--sections") == 0 && i + 1 < argc) {
      bp.sections = argv[++i];
    } else if (strcmp(argv[i], "--modules") == 0 && i + 1 < argc) {
      snprintf(moddir, sizeof(moddir), "%s", argv[++i]);
    } else if (strcmp(argv[i], "--workdir") == 0 && i + 1 < argc) {
      bp.workdir = argv[++i];
    } else if (strcmp(argv[i], "--callgrind") == 0 && i + 3 < argc) {
      if (moddir[0] == '\0')
        modules_dir(moddir, sizeof(moddir));
      raw_load(&g_bssl, moddir);
      size_t ci = (size_t)atoi(argv[i + 1]);
      if (ci >= N_CASES)
        fatal("no case %zu", ci);
      return callgrind_run(ci, argv[i + 2], atol(argv[i + 3]));
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return EXIT_SUCCESS;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (moddir[0] == '\0')
    modules_dir(moddir, sizeof(moddir));
  raw_load(&g_bssl, moddir);
  raw_load(&g_ossl, moddir);
  if (json_path != NULL && (g_json = fopen(json_path, "w")) == NULL)
    fatal("cannot write %s", json_path);
  json("{\"kind\":\"run\",\"m2mpsk\":\"%s\",\"backend\":\"%s\","
       "\"boringssl\":\"%s\",\"openssl\":\"%s\",\"quick\":%d,\"reps\":%d}",
       m2mpsk_version_string(), m2mpsk_backend_name(), g_bssl.ops->version(),
       g_ossl.ops->version(), bp.quick, bp.reps);
  printf("m2mpsk-bench: m2mpsk %s (backend %s) against raw %s and raw %s, "
         "one process, one run%s\n",
         m2mpsk_version_string(), m2mpsk_backend_name(), g_bssl.ops->version(),
         g_ossl.ops->version(), bp.quick ? " (--quick)" : "");

  if (section_on(&bp, "hs")) {
    calibrate_sections();
    json("{\"kind\":\"section_cost\",\"ns\":%.1f}", g_section_cost * 1e9);
    printf("\nHandshake CPU, us per handshake (create both, handshake, free "
           "both), %d repetitions;\n"
           "both = process CPU of both sides; responder = thread CPU of the "
           "responder's calls\n"
           "(%d sections per handshake, %.0f ns each subtracted). "
           "m2m/bssl: m2mpsk over raw BoringSSL;\n"
           "ossl/m2m: raw OpenSSL 3 over m2mpsk (times faster). Ratios are "
           "per repetition.\n\n",
           bp.reps, RESP_SECTIONS, g_section_cost * 1e9);
    printf("%-15s %-9s %5s  %-9s %8s %8s %8s %8s\n", "case", "side", "N", "who",
           "median", "min", "max", "hs/s");
    for (size_t i = 0; i < N_CASES; i++)
      time_case(&k_cases[i], &bp);
  }
  if (section_on(&bp, "mem")) {
    printf("\nMemory per established association, %ld held at once: glibc "
           "heap growth / %ld, bytes.\n"
           "raw columns exclude the harness's transport BIO (%d B per "
           "direction); extra = m2mpsk - raw BoringSSL.\n\n",
           bp.k, bp.k, TRANSPORT_BUF);
    printf("%-15s %-9s %9s %9s %9s %9s %9s %6s\n", "case", "side", "m2mpsk",
           "bssl+BIO", "bssl", "openssl", "extra", "ratio");
    for (size_t i = 0; i < N_CASES; i++)
      memory_case(&k_cases[i], bp.k);
  }
  if (section_on(&bp, "tp")) {
    printf("\nApplication data, initiator to responder, CPU MB/s; ratio = "
           "m2mpsk / raw BoringSSL throughput\n\n");
    printf("%-15s %8s %9s %9s   %6s %6s %6s\n", "case", "write", "m2mpsk",
           "bssl", "ratio", "min", "max");
    throughput_case(&k_cases[0], &bp);
    throughput_case(&k_cases[2], &bp);
  }
  if (section_on(&bp, "thr")) {
    printf("\nTwo threads against one: handshakes per wall second, scale = "
           "2-thread / 1-thread\n\n");
    printf("%-15s %-9s %9s %9s   %6s %6s %6s\n", "case", "who", "1 thread",
           "2 threads", "scale", "min", "max");
    threads_case(&k_cases[0], &bp);
    threads_case(&k_cases[1], &bp);
  }
  if (section_on(&bp, "ks")) {
    printf("\nKeystore\n\n");
    keystore_bench(&bp);
  }
  if (section_on(&bp, "ksadd")) {
    printf("\nKeystore built one record at a time\n\n");
    keystore_add_bench(&bp);
  }
  if (g_json != NULL)
    fclose(g_json);
  return EXIT_SUCCESS;
}
