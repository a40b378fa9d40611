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
#include <dirent.h>
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

#include "hello.h" /* src/hello.c is compiled into the driver */
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

/* The engine the sections that compare m2mpsk with raw BoringSSL pin
 * (hs, mem, tp, thr): BoringSSL when this process can load it, else
 * whatever AUTO picks (an -DM2MPSK_TLS=openssl build). Without the pin,
 * AUTO would run DTLS responders on OpenSSL and those rows would compare
 * two libraries. Set in main, after the resident-cost measurement. */
static m2mpsk_engine_id g_engine = M2MPSK_ENGINE_AUTO;

/* Both sides' keystores and configs. suites_a / suites_b: the suites each
 * side enables, NULL for the config's default (the TS-0003 profile). */
static void m2m_env_setup(m2m_env *env, const bench_case *c,
                          m2mpsk_engine_id engine_a, m2mpsk_engine_id engine_b,
                          const char *suites_a, const char *suites_b) {
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
      (rc = m2mpsk_config_set_engine(env->cfg_a, engine_a)) != M2MPSK_OK ||
      (rc = m2mpsk_config_set_engine(env->cfg_b, engine_b)) != M2MPSK_OK ||
      (rc = m2mpsk_config_add_local_id(env->cfg_b, BENCH_ID_B)) != M2MPSK_OK ||
      (suites_a != NULL &&
       (rc = m2mpsk_config_set_suites(env->cfg_a, suites_a)) != M2MPSK_OK) ||
      (suites_b != NULL &&
       (rc = m2mpsk_config_set_suites(env->cfg_b, suites_b)) != M2MPSK_OK))
    fatal("%s: m2mpsk setup (engines %s, %s) failed: %s", c->label,
          m2mpsk_engine_name(engine_a), m2mpsk_engine_name(engine_b),
          m2mpsk_strerror(rc));
}

static void m2m_env_init(m2m_env *env, const bench_case *c) {
  m2m_env_setup(env, c, g_engine, g_engine, c->iana, c->iana);
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
static mem_figures m2m_memory_env(m2m_env env, long k) {
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

static mem_figures m2m_memory(const bench_case *c, long k) {
  m2m_env env;
  m2m_env_init(&env, c);
  return m2m_memory_env(env, k);
}

static mem_figures raw_memory_ex(const raw_lib *lib, const bench_case *c,
                                 long k, int cookies) {
  char err[300];
  raw_env *env = lib->ops->env_new_ex(c->transport == M2MPSK_TRANSPORT_DTLS,
                                      c->ossl, cookies, err, sizeof(err));
  if (env == NULL)
    fatal("%s raw %s: %s", c->label, lib->name, err);
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

static mem_figures raw_memory(const raw_lib *lib, const bench_case *c, long k) {
  return raw_memory_ex(lib, c, k, 0);
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

/* --mem-limit: the most bytes an association may hold above the raw
 * library it ran on (the target of the mem and engmem sections, 1 KiB),
 * and the sides found above it. */
static long g_mem_limit = -1;
static int g_mem_over;

static void mem_limit_check(const char *label, const char *side,
                            const char *lib, double extra) {
  if (g_mem_limit < 0 || extra <= g_mem_limit)
    return;
  printf("%-15s %s %s: %+.0f B above raw %s, more than the limit of %ld\n",
         "", label, side, extra, lib, g_mem_limit);
  g_mem_over++;
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
    if (i < 2)
      mem_limit_check(c->label, sides[i], "boringssl", mv[i] - (rv[i] - tv[i]));
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

  /* The same records through one keystore batch (staged, then merged):
   * what a bulk loader such as the etcd snapshot pays instead. */
  double gen_cpu = cpu_seconds(), gen_wall = wall_seconds();
  seed = 7;
  for (long i = 0; i < count; i++) {
    ks_add_key(i, &seed, id, sizeof(id), key);
    sink = (uint8_t)(sink + key[i & 31] + (uint8_t)id[3]);
  }
  gen_cpu = cpu_seconds() - gen_cpu;
  gen_wall = wall_seconds() - gen_wall;
  m2mpsk_keystore_batch *b = NULL;
  if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK ||
      m2mpsk_keystore_batch_new(ks, &b) != M2MPSK_OK)
    fatal("m2mpsk_keystore_new or m2mpsk_keystore_batch_new failed");
  seed = 7;
  c0 = cpu_seconds();
  w0 = wall_seconds();
  for (long i = 0; i < count; i++) {
    ks_add_key(i, &seed, id, sizeof(id), key);
    int rc = m2mpsk_keystore_batch_add(b, id, key, sizeof(key), NULL,
                                       "//m2m.example.com/cse-in", 0, 0);
    if (rc != M2MPSK_OK)
      fatal("m2mpsk_keystore_batch_add %s: %s", id, m2mpsk_strerror(rc));
  }
  int crc = m2mpsk_keystore_batch_commit(b, NULL);
  if (crc != M2MPSK_OK)
    fatal("m2mpsk_keystore_batch_commit: %s", m2mpsk_strerror(crc));
  double batch_cpu = cpu_seconds() - c0 - gen_cpu;
  double batch_wall = wall_seconds() - w0 - gen_wall;
  m2mpsk_keystore_batch_free(b);
  if ((long)m2mpsk_keystore_count(ks) != count)
    fatal("keystore holds %zu records after a batch of %ld",
          m2mpsk_keystore_count(ks), count);
  m2mpsk_keystore_free(ks);
  printf("add %ld records in one batch (m2mpsk_keystore_batch_*): %.2f s "
         "wall, %.3f us CPU per record (%.1fx less than one by one)\n",
         count, batch_wall, batch_cpu * 1e6 / (double)count,
         batch_cpu > 0 ? add_cpu / batch_cpu : 0.0);
  json("{\"kind\":\"ks_add_batch\",\"records\":%ld,\"wall\":%.4f,"
       "\"cpu_us\":%.4f}",
       count, batch_wall, batch_cpu * 1e6 / (double)count);
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

/* ---- the ClientHello inspection and engine choice ------------------------ */

enum { MAX_HELLOS = 48, HELLO_CAP = 4096 };

typedef struct hello_sample {
  char name[80];
  int dtls;
  size_t len;
  uint8_t buf[HELLO_CAP];
} hello_sample;

/* The suites an AUTO responder's engines would accept from a default
 * config, per transport, fastest engine first, as m2mpsk_engine_choose_hello
 * hands them to m2mpsk_hello_choose: the config's suites intersected with
 * each engine's, in the config's order (the library builds these once per
 * config; here once per run). */
typedef struct choice_lists {
  uint16_t ids[2][M2MPSK_HELLO_MAX_SUITES];
  m2mpsk_engine_suites lists[2];
} choice_lists;

static const m2mpsk_engine_id k_fastest_first[2] = {M2MPSK_ENGINE_BORINGSSL,
                                                    M2MPSK_ENGINE_OPENSSL};

static void choice_lists_make(m2mpsk_transport t, choice_lists *cl) {
  m2mpsk_config *cfg;
  char list[1024];
  uint16_t cfg_ids[M2MPSK_HELLO_MAX_SUITES];
  size_t n_cfg = 0;
  if (m2mpsk_config_new(&cfg) != M2MPSK_OK ||
      m2mpsk_config_suites(cfg, t, list, sizeof(list)) != M2MPSK_OK ||
      m2mpsk_suite_ids(list, cfg_ids, M2MPSK_HELLO_MAX_SUITES, &n_cfg) !=
          M2MPSK_OK)
    fatal("cannot read the default config's suites");
  m2mpsk_config_free(cfg);
  for (int e = 0; e < 2; e++) {
    size_t n = 0;
    cl->lists[e].ids = NULL;
    cl->lists[e].n = 0;
    if (!m2mpsk_engine_available(k_fastest_first[e]))
      continue;
    for (size_t i = 0; i < n_cfg; i++) {
      const char *name;
      for (size_t j = 0;
           (name = m2mpsk_engine_suite_name(k_fastest_first[e], j)) != NULL;
           j++) {
        uint16_t id;
        if (m2mpsk_suite_id(name, &id) == M2MPSK_OK && id == cfg_ids[i]) {
          cl->ids[e][n++] = id;
          break;
        }
      }
    }
    cl->lists[e].ids = cl->ids[e];
    cl->lists[e].n = n;
  }
}

static int hello_name_cmp(const void *a, const void *b) {
  return strcmp(((const hello_sample *)a)->name,
                ((const hello_sample *)b)->name);
}

/* The captures of tests/data/hello (*.bin; DTLS when the name says so),
 * then the first flight of an m2mpsk initiator on each engine this process
 * loads, default config, both transports. */
static int hellos_load(const char *dir, hello_sample *out, int cap) {
  int n = 0;
  DIR *d = dir != NULL ? opendir(dir) : NULL;
  for (struct dirent *de; d != NULL && (de = readdir(d)) != NULL && n < cap;) {
    size_t l = strlen(de->d_name);
    if (l < 5 || strcmp(de->d_name + l - 4, ".bin") != 0 ||
        l >= sizeof(out[n].name))
      continue;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
      continue;
    hello_sample *h = &out[n];
    h->len = fread(h->buf, 1, sizeof(h->buf), f);
    fclose(f);
    snprintf(h->name, sizeof(h->name), "%.*s", (int)(l - 4), de->d_name);
    h->dtls = strstr(h->name, "dtls") != NULL;
    if (h->len > 0)
      n++;
  }
  if (d != NULL)
    closedir(d);
  qsort(out, (size_t)n, sizeof(*out), hello_name_cmp);
  for (int e = 0; e < 2 && n < cap; e++) {
    if (!m2mpsk_engine_available(k_fastest_first[e]))
      continue;
    for (int dtls = 0; dtls < 2 && n < cap; dtls++) {
      m2mpsk_keystore *ks;
      m2mpsk_config *cfg;
      m2mpsk_assoc *a;
      hello_sample *h = &out[n];
      if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK ||
          m2mpsk_keystore_add(ks, BENCH_KPSA_ID, k_bench_kpsa,
                              sizeof(k_bench_kpsa), BENCH_ID_A, BENCH_ID_B, 0,
                              0) != M2MPSK_OK ||
          m2mpsk_config_new(&cfg) != M2MPSK_OK ||
          m2mpsk_config_set_engine(cfg, k_fastest_first[e]) != M2MPSK_OK ||
          m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                           dtls ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS,
                           cfg, ks, BENCH_KPSA_ID) != M2MPSK_OK ||
          m2mpsk_assoc_start(a, monotonic_ms(), (int64_t)time(NULL)) !=
              M2MPSK_OK ||
          m2mpsk_assoc_drain(a, h->buf, sizeof(h->buf), &h->len) != M2MPSK_OK)
        fatal("cannot capture an m2mpsk initiator's ClientHello");
      snprintf(h->name, sizeof(h->name), "live: m2mpsk %s initiator, %s",
               m2mpsk_engine_name(k_fastest_first[e]), dtls ? "DTLS" : "TLS");
      h->dtls = dtls;
      n++;
      m2mpsk_assoc_free(a);
      m2mpsk_config_free(cfg);
      m2mpsk_keystore_free(ks);
    }
  }
  return n;
}

/* What an AUTO responder does with a hello before any engine exists:
 * parse it, then choose the engine. Returns the engine index or -1.
 * Never inlined, so that the loop below cannot fold it away. */
__attribute__((noinline)) static int hello_inspect(const hello_sample *h,
                                                   const choice_lists *cl) {
  m2mpsk_hello parsed;
  if (m2mpsk_hello_parse(h->buf, h->len, h->dtls, &parsed) != M2MPSK_HELLO_OK)
    return -2;
  return m2mpsk_hello_choose(&parsed, cl->lists, 2);
}

static void hello_bench(const bench_params *bp, const char *dir) {
  static hello_sample hs[MAX_HELLOS];
  choice_lists cl[2];
  choice_lists_make(M2MPSK_TRANSPORT_TLS, &cl[0]);
  choice_lists_make(M2MPSK_TRANSPORT_DTLS, &cl[1]);
  int n = hellos_load(dir, hs, MAX_HELLOS);
  if (n == 0)
    fatal("no ClientHello to time");
  const bench_case *c = &k_cases[0]; /* TLS PSK, the cheapest handshake */
  raw_env *eb = raw_env_for(&g_bssl, c);
  long iters = bp->quick ? 2000 : 20000;
  long nhs = bp->n_psk;
  raw_batch_cpu(&g_bssl, eb, c, nhs / 10 > 10 ? nhs / 10 : 10, NULL);
  static double ns[MAX_HELLOS][MAX_REPS];
  double raw_us[MAX_REPS], worst[MAX_REPS], mean[MAX_REPS];
  volatile int sink = 0;
  for (int r = 0; r < bp->reps; r++) {
    for (int k = 0; k < 2; k++) {
      if ((k + r) % 2 == 0) {
        raw_us[r] =
            raw_batch_cpu(&g_bssl, eb, c, nhs, NULL) * 1e6 / (double)nhs;
        continue;
      }
      for (int i = 0; i < n; i++) {
        const choice_lists *l = &cl[hs[i].dtls];
        double t0 = cpu_seconds();
        for (long j = 0; j < iters; j++)
          sink += hello_inspect(&hs[i], l);
        ns[i][r] = (cpu_seconds() - t0) * 1e9 / (double)iters;
      }
    }
    worst[r] = mean[r] = 0;
    for (int i = 0; i < n; i++) {
      mean[r] += ns[i][r] / n;
      if (ns[i][r] > worst[r])
        worst[r] = ns[i][r];
    }
  }
  (void)sink;
  for (int i = 0; i < n; i++) {
    m2mpsk_hello p;
    int pr = m2mpsk_hello_parse(hs[i].buf, hs[i].len, hs[i].dtls, &p);
    int ch = hello_inspect(&hs[i], &cl[hs[i].dtls]);
    const char *eng = ch >= 0    ? m2mpsk_engine_name(k_fastest_first[ch])
                      : ch == -1 ? "none"
                                 : "not parsed";
    summary s = summarize(ns[i], bp->reps);
    printf("%-44s %-4s %5zu %6zu %-10s %7.1f %7.1f %7.1f\n", hs[i].name,
           hs[i].dtls ? "DTLS" : "TLS", hs[i].len,
           pr == M2MPSK_HELLO_OK ? p.n_suites : 0, eng, s.median, s.min, s.max);
    json("{\"kind\":\"hello\",\"name\":\"%s\",\"dtls\":%d,\"bytes\":%zu,"
         "\"suites\":%zu,\"parsed\":%d,\"engine\":\"%s\",\"iters\":%ld,"
         "\"ns_median\":%.2f,\"ns_min\":%.2f,\"ns_max\":%.2f}",
         hs[i].name, hs[i].dtls, hs[i].len,
         pr == M2MPSK_HELLO_OK ? p.n_suites : 0, pr == M2MPSK_HELLO_OK, eng,
         iters, s.median, s.min, s.max);
  }
  double rw[MAX_REPS], rm[MAX_REPS];
  for (int r = 0; r < bp->reps; r++) {
    rw[r] = worst[r] / (raw_us[r] * 1e3);
    rm[r] = mean[r] / (raw_us[r] * 1e3);
  }
  summary sr = summarize(raw_us, bp->reps), sw = summarize(worst, bp->reps),
          sm = summarize(mean, bp->reps), srw = summarize(rw, bp->reps),
          srm = summarize(rm, bp->reps);
  printf("%d hellos: mean %.1f ns, slowest %.1f ns per hello; raw BoringSSL "
         "TLS PSK handshake (both sides, N %ld) %.2f us\n"
         "ratio inspection / raw handshake: slowest hello %.5f (%.5f-%.5f), "
         "mean %.5f (target <= 0.01)\n",
         n, sm.median, sw.median, nhs, sr.median, srw.median, srw.min, srw.max,
         srm.median);
  json("{\"kind\":\"hello_ratio\",\"hellos\":%d,\"n\":%ld,\"reps\":%d,"
       "\"raw_us\":%.3f,\"mean_ns\":%.2f,\"worst_ns\":%.2f,"
       "\"median\":%.6f,\"min\":%.6f,\"max\":%.6f,\"mean_ratio\":%.6f}",
       n, nhs, bp->reps, sr.median, sm.median, sw.median, srw.median, srw.min,
       srw.max, srm.median);
  fflush(stdout);
  g_bssl.ops->env_free(eb);
}

/* ---- engine AUTO against raw, for each suite a peer may force ------------ */

typedef struct auto_case {
  const char *label;
  bench_case c;            /* transport and suite */
  int forced_by_responder; /* 0: the initiator enables only the suite */
} auto_case;

#define AUTO_CASE(label, t, iana, ossl, by)                                    \
  { label, {label, t, iana, ossl, 0}, by }

static const auto_case k_auto_cases[] = {
    AUTO_CASE("TLS CBC_SHA, initiator forces", M2MPSK_TRANSPORT_TLS,
              "TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA", 0),
    AUTO_CASE("TLS CBC_SHA256, initiator forces", M2MPSK_TRANSPORT_TLS,
              "TLS_PSK_WITH_AES_128_CBC_SHA256", "PSK-AES128-CBC-SHA256", 0),
    AUTO_CASE("DTLS CBC_SHA, initiator forces", M2MPSK_TRANSPORT_DTLS,
              "TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA", 0),
    AUTO_CASE("DTLS CCM_8, initiator forces", M2MPSK_TRANSPORT_DTLS,
              "TLS_PSK_WITH_AES_128_CCM_8", "PSK-AES128-CCM8", 0),
    AUTO_CASE("TLS CBC_SHA, responder forces", M2MPSK_TRANSPORT_TLS,
              "TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA", 1),
    AUTO_CASE("TLS CBC_SHA256, responder forces", M2MPSK_TRANSPORT_TLS,
              "TLS_PSK_WITH_AES_128_CBC_SHA256", "PSK-AES128-CBC-SHA256", 1),
    AUTO_CASE("DTLS CBC_SHA, responder forces", M2MPSK_TRANSPORT_DTLS,
              "TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA", 1),
    AUTO_CASE("DTLS CCM_8, responder forces", M2MPSK_TRANSPORT_DTLS,
              "TLS_PSK_WITH_AES_128_CCM_8", "PSK-AES128-CCM8", 1),
};

/* One handshake: the forced suite must be negotiated; *ea and *eb get the
 * engine each side ran on. */
static void auto_check(const auto_case *ac, const m2m_env *env,
                       m2mpsk_engine_id *ea, m2mpsk_engine_id *eb) {
  m2m_pair p;
  m2m_establish(env, monotonic_ms(), &p, NULL);
  const char *got = m2mpsk_assoc_suite(p.a);
  if (got == NULL || strcmp(got, ac->c.iana) != 0)
    fatal("%s: negotiated %s", ac->label, got ? got : "nothing");
  *ea = m2mpsk_assoc_engine(p.a);
  *eb = m2mpsk_assoc_engine(p.b);
  m2mpsk_assoc_free(p.a);
  m2mpsk_assoc_free(p.b);
}

static void auto_case_run(const auto_case *ac, const bench_params *bp) {
  const bench_case *c = &ac->c;
  long n = bp->n_psk / 2 > 10 ? bp->n_psk / 2 : 10;
  m2m_env me, mp;
  /* The peer forcing the suite enables it alone; the other side keeps the
   * default config (engine AUTO, the TS-0003 profile). */
  const char *sa = ac->forced_by_responder ? NULL : c->iana,
             *sb_ = ac->forced_by_responder ? c->iana : NULL;
  m2mpsk_engine_id ea, eb_;
  m2m_env_setup(&me, c, M2MPSK_ENGINE_AUTO, M2MPSK_ENGINE_AUTO, sa, sb_);
  auto_check(ac, &me, &ea, &eb_);
  /* The same configs with each side's engine named: what AUTO itself costs
   * (buffering and inspecting the ClientHello, choosing) is the difference. */
  m2mpsk_engine_id pa, pb;
  m2m_env_setup(&mp, c, ea, eb_, sa, sb_);
  auto_check(ac, &mp, &pa, &pb);
  if (pa != ea || pb != eb_)
    fatal("%s: named engines ran on %s/%s", ac->label, m2mpsk_engine_name(pa),
          m2mpsk_engine_name(pb));
  char err[300];
  /* BoringSSL lacks CBC_SHA256 and CCM_8: no raw BoringSSL row then. */
  raw_env *eb = g_bssl.ops->env_new(c->transport == M2MPSK_TRANSPORT_DTLS,
                                    c->ossl, err, sizeof(err));
  /* An OpenSSL DTLS responder in m2mpsk always runs the cookie exchange
   * (one more round trip): raw OpenSSL runs it too, so that the ratio
   * measures m2mpsk, not the protocol. */
  int cookies =
      c->transport == M2MPSK_TRANSPORT_DTLS && eb_ == M2MPSK_ENGINE_OPENSSL;
  raw_env *eo = g_ossl.ops->env_new_ex(c->transport == M2MPSK_TRANSPORT_DTLS,
                                       c->ossl, cookies, err, sizeof(err));
  if (eo == NULL)
    fatal("%s raw openssl: %s", ac->label, err);
  long warm = n / 10 > 5 ? n / 10 : 5;
  m2m_batch_cpu(&me, warm, NULL);
  m2m_batch_cpu(&mp, warm, NULL);
  if (eb != NULL)
    raw_batch_cpu(&g_bssl, eb, c, warm, NULL);
  raw_batch_cpu(&g_ossl, eo, c, warm, NULL);
  enum { A_AUTO, A_NAMED, A_BSSL, A_OSSL, A_N };
  double us[A_N][MAX_REPS], rb[MAX_REPS], ro[MAX_REPS], rn[MAX_REPS];
  for (int r = 0; r < bp->reps; r++) {
    for (int k = 0; k < A_N; k++) {
      int w = (k + r) % A_N;
      if (w == A_BSSL && eb == NULL) {
        us[w][r] = 0;
        continue;
      }
      double cpu = w == A_AUTO    ? m2m_batch_cpu(&me, n, NULL)
                   : w == A_NAMED ? m2m_batch_cpu(&mp, n, NULL)
                   : w == A_BSSL  ? raw_batch_cpu(&g_bssl, eb, c, n, NULL)
                                  : raw_batch_cpu(&g_ossl, eo, c, n, NULL);
      us[w][r] = cpu * 1e6 / (double)n;
    }
    rb[r] = eb != NULL ? us[A_AUTO][r] / us[A_BSSL][r] : 0;
    ro[r] = us[A_AUTO][r] / us[A_OSSL][r];
    rn[r] = us[A_AUTO][r] / us[A_NAMED][r];
  }
  summary sm = summarize(us[A_AUTO], bp->reps),
          sn = summarize(us[A_NAMED], bp->reps),
          sb = summarize(us[A_BSSL], bp->reps),
          so = summarize(us[A_OSSL], bp->reps);
  summary xn = summarize(rn, bp->reps);
  summary xb = summarize(rb, bp->reps), xo = summarize(ro, bp->reps);
  /* The target compares with the raw library both sides ran on; a pair
   * split over two engines has no single raw baseline. */
  const char *target = ea != eb_                       ? "none"
                       : ea == M2MPSK_ENGINE_BORINGSSL ? "m2m/bssl"
                                                       : "m2m/ossl";
  printf("%-33s %5ld %-9s %-9s %8.1f %8.1f %8s %8.1f%s %6.3f %6.3f %6s  "
         "target %s\n",
         ac->label, n, m2mpsk_engine_name(ea), m2mpsk_engine_name(eb_),
         sm.median, sn.median, eb != NULL ? "" : "-", so.median,
         cookies ? "c" : " ", xn.median, xo.median, "", target);
  if (eb != NULL)
    printf("%-33s %5s %-9s %-9s %8s %8s %8.1f %8s  %6s %6s %6.3f\n", "", "", "",
           "", "", "", sb.median, "", "", "", xb.median);
  json("{\"kind\":\"auto\",\"case\":\"%s\",\"transport\":\"%s\","
       "\"suite\":\"%s\",\"forced_by\":\"%s\",\"n\":%ld,\"reps\":%d,"
       "\"engine_initiator\":\"%s\",\"engine_responder\":\"%s\","
       "\"m2mpsk_us\":%.3f,\"m2mpsk_min\":%.3f,\"m2mpsk_max\":%.3f,"
       "\"boringssl_us\":%.3f,\"openssl_us\":%.3f,"
       "\"bssl_ratio\":%.4f,\"bssl_ratio_min\":%.4f,\"bssl_ratio_max\":%.4f,"
       "\"ossl_ratio\":%.4f,\"ossl_ratio_min\":%.4f,\"ossl_ratio_max\":%.4f,"
       "\"has_bssl\":%d,\"target\":\"%s\",\"raw_cookies\":%d,"
       "\"named_us\":%.3f,\"auto_ratio\":%.4f,\"auto_ratio_min\":%.4f,"
       "\"auto_ratio_max\":%.4f}",
       ac->label, c->transport == M2MPSK_TRANSPORT_DTLS ? "DTLS" : "TLS",
       c->iana, ac->forced_by_responder ? "responder" : "initiator", n,
       bp->reps, m2mpsk_engine_name(ea), m2mpsk_engine_name(eb_), sm.median,
       sm.min, sm.max, eb != NULL ? sb.median : 0.0, so.median, xb.median,
       xb.min, xb.max, xo.median, xo.min, xo.max, eb != NULL, target, cookies,
       sn.median, xn.median, xn.min, xn.max);
  fflush(stdout);
  if (eb != NULL)
    g_bssl.ops->env_free(eb);
  g_ossl.ops->env_free(eo);
  m2m_env_free(&me);
  m2m_env_free(&mp);
}

/* ---- memory per engine and the resident cost of loading the engines ----- */

typedef struct proc_mem {
  double rss, size; /* VmRSS, VmSize: bytes */
} proc_mem;

static proc_mem proc_mem_now(void) {
  proc_mem m = {0, 0};
  char line[256];
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL)
    return m;
  while (fgets(line, sizeof(line), f) != NULL) {
    long kb;
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
      m.rss = (double)kb * 1024;
    else if (sscanf(line, "VmSize: %ld kB", &kb) == 1)
      m.size = (double)kb * 1024;
  }
  fclose(f);
  return m;
}

/* Taken in main before anything loads an engine module or a raw baseline
 * (which would map the same TLS libraries). */
typedef struct engine_rss {
  int measured;
  proc_mem before, after[2]; /* after loading BoringSSL's, then OpenSSL's */
  int loaded[2];
} engine_rss;

static engine_rss g_rss;

static void engine_rss_measure(void) {
  g_rss.before = proc_mem_now();
  for (int e = 0; e < 2; e++) {
    g_rss.loaded[e] = m2mpsk_engine_available(k_fastest_first[e]);
    g_rss.after[e] = proc_mem_now();
  }
  g_rss.measured = 1;
}

static void engine_rss_report(void) {
  if (!g_rss.measured)
    return;
  proc_mem prev = g_rss.before;
  for (int e = 0; e < 2; e++) {
    const char *name = m2mpsk_engine_name(k_fastest_first[e]);
    double drss = g_rss.after[e].rss - prev.rss,
           dsize = g_rss.after[e].size - prev.size;
    printf("loading the %-9s module: %s; VmRSS %+8.0f KiB, mapped (VmSize) "
           "%+8.0f KiB\n",
           name, g_rss.loaded[e] ? "loaded" : "not loadable", drss / 1024,
           dsize / 1024);
    json("{\"kind\":\"engine_rss\",\"engine\":\"%s\",\"loaded\":%d,"
         "\"rss_before\":%.0f,\"rss_after\":%.0f,\"size_before\":%.0f,"
         "\"size_after\":%.0f}",
         name, g_rss.loaded[e], prev.rss, g_rss.after[e].rss, prev.size,
         g_rss.after[e].size);
    prev = g_rss.after[e];
  }
  printf("both modules: VmRSS %+.0f KiB (%.0f -> %.0f KiB), mapped %+.0f KiB "
         "(%.0f -> %.0f KiB)\n",
         (g_rss.after[1].rss - g_rss.before.rss) / 1024,
         g_rss.before.rss / 1024, g_rss.after[1].rss / 1024,
         (g_rss.after[1].size - g_rss.before.size) / 1024,
         g_rss.before.size / 1024, g_rss.after[1].size / 1024);
  json("{\"kind\":\"engine_rss_total\",\"rss_before\":%.0f,\"rss_after\":%.0f,"
       "\"size_before\":%.0f,\"size_after\":%.0f}",
       g_rss.before.rss, g_rss.after[1].rss, g_rss.before.size,
       g_rss.after[1].size);
}

/* Memory per association on each engine (and AUTO), next to raw BoringSSL
 * and raw OpenSSL 3, for plain PSK over TLS and DTLS (a suite both engines
 * have). */
static void engine_memory_case(const bench_case *c, long k) {
  double t =
      transport_memory(&g_bssl, c->transport == M2MPSK_TRANSPORT_DTLS, k);
  /* m2mpsk's OpenSSL DTLS responder runs the cookie exchange: raw
   * OpenSSL's does too, as in the auto section. */
  mem_figures rb = raw_memory(&g_bssl, c, k),
              ro = raw_memory_ex(&g_ossl, c, k,
                                 c->transport == M2MPSK_TRANSPORT_DTLS);
  static const m2mpsk_engine_id engines[] = {
      M2MPSK_ENGINE_BORINGSSL, M2MPSK_ENGINE_OPENSSL, M2MPSK_ENGINE_AUTO};
  for (size_t e = 0; e < sizeof(engines) / sizeof(engines[0]); e++) {
    if (!m2mpsk_engine_available(engines[e]))
      continue;
    m2m_env env;
    m2m_env_setup(&env, c, engines[e], engines[e], c->iana, c->iana);
    m2m_pair p;
    m2m_establish(&env, monotonic_ms(), &p, NULL);
    m2mpsk_engine_id ea = m2mpsk_assoc_engine(p.a),
                     eb = m2mpsk_assoc_engine(p.b);
    m2mpsk_assoc_free(p.a);
    m2mpsk_assoc_free(p.b);
    mem_figures m = m2m_memory_env(env, k);
    /* The raw figure of the library each side ran on. */
    double ri =
        (ea == M2MPSK_ENGINE_BORINGSSL ? rb.initiator : ro.initiator) - t;
    double rr =
        (eb == M2MPSK_ENGINE_BORINGSSL ? rb.responder : ro.responder) - t;
    printf("%-9s %-9s %-9s/%-9s %9.0f %9.0f %+7.0f %9.0f %9.0f %+7.0f\n",
           e == 0 ? c->label : "", m2mpsk_engine_name(engines[e]),
           m2mpsk_engine_name(ea), m2mpsk_engine_name(eb), m.initiator, ri,
           m.initiator - ri, m.responder, rr, m.responder - rr);
    json("{\"kind\":\"engine_mem\",\"case\":\"%s\",\"engine\":\"%s\","
         "\"engine_initiator\":\"%s\",\"engine_responder\":\"%s\",\"k\":%ld,"
         "\"initiator\":%.1f,\"responder\":%.1f,\"raw_initiator\":%.1f,"
         "\"raw_responder\":%.1f,\"boringssl_initiator\":%.1f,"
         "\"boringssl_responder\":%.1f,\"openssl_initiator\":%.1f,"
         "\"openssl_responder\":%.1f}",
         c->label, m2mpsk_engine_name(engines[e]), m2mpsk_engine_name(ea),
         m2mpsk_engine_name(eb), k, m.initiator, m.responder, ri, rr,
         rb.initiator - t, rb.responder - t, ro.initiator - t,
         ro.responder - t);
    mem_limit_check(c->label, "initiator", m2mpsk_engine_name(ea),
                    m.initiator - ri);
    mem_limit_check(c->label, "responder", m2mpsk_engine_name(eb),
                    m.responder - rr);
  }
  fflush(stdout);
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
  fputs("usage: m2mpsk-bench [--quick] [--json FILE] [--sections LIST]\n"
        "                    [--modules DIR] [--workdir DIR] [--hellos DIR]\n"
        "                    [--mem-limit BYTES]\n"
        "       m2mpsk-bench --callgrind CASE m2mpsk|boringssl N\n"
        "  Handshake CPU (both sides, responder alone), memory per\n"
        "  association, application data, 2 threads against 1 and the\n"
        "  keystore at scale, m2mpsk against raw BoringSSL and OpenSSL 3\n"
        "  in one run; the ClientHello inspection, engine AUTO per forced\n"
        "  suite, memory per engine and the engines' resident cost.\n"
        "  LIST: hs,mem,tp,thr,ks,ksadd,hello,auto,engmem (default all).\n"
        "  CASE: 0-3. DIR of --hellos: ClientHello captures (*.bin).\n"
        "  --mem-limit: exit 1 when a side of the mem or engmem sections\n"
        "  holds more than BYTES above the raw library it ran on (ctest's\n"
        "  membench_check: 1024).\n",
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
  const char *hello_dir = M2MPSK_BENCH_HELLO_DIR;
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
    } else if (strcmp(argv[i], "--mem-limit") == 0 && i + 1 < argc) {
      char *end;
      g_mem_limit = strtol(argv[++i], &end, 10);
      if (*end != '\0' || g_mem_limit < 0) {
        usage(stderr);
        return 2;
      }
    } else if (strcmp(argv[i], "--hellos") == 0 && i + 1 < argc) {
      hello_dir = argv[++i];
    } else if (strcmp(argv[i], "--workdir") == 0 && i + 1 < argc) {
      bp.workdir = argv[++i];
    } else if (strcmp(argv[i], "--callgrind") == 0 && i + 3 < argc) {
      if (moddir[0] == '\0')
        modules_dir(moddir, sizeof(moddir));
      raw_load(&g_bssl, moddir);
      /* The same engine as the timed handshake sections, which the
       * counts stand beside: auto would put a DTLS responder on OpenSSL. */
      if (m2mpsk_engine_available(M2MPSK_ENGINE_BORINGSSL))
        g_engine = M2MPSK_ENGINE_BORINGSSL;
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
  if (g_mem_limit >= 0) {
    if (!section_on(&bp, "mem") && !section_on(&bp, "engmem")) {
      fprintf(stderr, "m2mpsk-bench: --mem-limit needs the mem or engmem "
                      "section\n");
      return 2;
    }
#if defined(__SANITIZE_ADDRESS__)
    /* mallinfo2() reads glibc's heap, which ASan's allocator replaces. */
    printf("m2mpsk-bench: --mem-limit: skipped, the heap is ASan's\n");
    return 77;
#endif
  }
  /* Before anything maps a TLS library into the process. */
  if (section_on(&bp, "engmem"))
    engine_rss_measure();
  if (m2mpsk_engine_available(M2MPSK_ENGINE_BORINGSSL))
    g_engine = M2MPSK_ENGINE_BORINGSSL;
  else if (g_mem_limit >= 0) {
    fprintf(stderr, "m2mpsk-bench: --mem-limit judges the BoringSSL engine, "
                    "which this build lacks\n");
    return 2;
  }
  if (moddir[0] == '\0')
    modules_dir(moddir, sizeof(moddir));
  raw_load(&g_bssl, moddir);
  raw_load(&g_ossl, moddir);
  if (json_path != NULL && (g_json = fopen(json_path, "w")) == NULL)
    fatal("cannot write %s", json_path);
  json("{\"kind\":\"run\",\"m2mpsk\":\"%s\",\"backend\":\"%s\","
       "\"boringssl\":\"%s\",\"openssl\":\"%s\",\"quick\":%d,\"reps\":%d,"
       "\"engine\":\"%s\"}",
       m2mpsk_version_string(), m2mpsk_backend_name(), g_bssl.ops->version(),
       g_ossl.ops->version(), bp.quick, bp.reps, m2mpsk_engine_name(g_engine));
  printf("m2mpsk-bench: m2mpsk %s (backend %s; sections hs, mem, tp, thr on "
         "engine %s) against raw %s and raw %s, one process, one run%s\n",
         m2mpsk_version_string(), m2mpsk_backend_name(),
         m2mpsk_engine_name(g_engine), g_bssl.ops->version(),
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
  if (section_on(&bp, "hello")) {
    printf("\nClientHello inspection and engine choice (m2mpsk_hello_parse + "
           "m2mpsk_hello_choose, default config's\nsuites per engine), ns "
           "CPU per hello, %d repetitions, against a raw BoringSSL TLS PSK "
           "handshake\n\n",
           bp.reps);
    printf("%-44s %-4s %5s %6s %-10s %7s %7s %7s\n", "hello", "", "bytes",
           "suites", "engine", "median", "min", "max");
    hello_bench(&bp, hello_dir);
  }
  if (section_on(&bp, "auto")) {
    printf("\nEngine AUTO against raw, for each suite a peer may force: us "
           "CPU per handshake, both sides.\nThe forcing side enables only "
           "that suite; the other keeps the default config. Ratios are per\n"
           "repetition. named: the same configs with each side's engine named "
           "(the one AUTO chose);\nauto / named is what AUTO itself costs. "
           "a/bssl on a second line where BoringSSL has the\nsuite. Target "
           "<= 1.05 against the raw library both sides ran on. c: raw "
           "OpenSSL's DTLS server\nruns the cookie exchange, as m2mpsk's "
           "OpenSSL DTLS responder does.\n\n");
    printf("%-33s %5s %-9s %-9s %8s %8s %8s %8s  %6s %6s %6s\n", "case", "N",
           "initiator", "responder", "auto", "named", "bssl", "openssl",
           "a/name", "a/ossl", "a/bssl");
    for (size_t i = 0; i < sizeof(k_auto_cases) / sizeof(k_auto_cases[0]); i++)
      auto_case_run(&k_auto_cases[i], &bp);
  }
  if (section_on(&bp, "engmem")) {
    printf("\nResident cost of loading the engine modules "
           "(m2mpsk_engine_available), before any TLS library is mapped\n\n");
    engine_rss_report();
    printf("\nMemory per established association per engine, %ld held at "
           "once: glibc heap bytes; raw = the raw\nlibrary that side ran on, "
           "without the harness's transport; extra = m2mpsk - raw "
           "(target <= 1 KiB)\n\n",
           bp.k);
    printf("%-9s %-9s %-19s %9s %9s %7s %9s %9s %7s\n", "case", "engine",
           "ran on (A/B)", "initiatr", "raw", "extra", "respondr", "raw",
           "extra");
    engine_memory_case(&k_cases[0], bp.k);
    engine_memory_case(&k_cases[2], bp.k);
  }
  if (g_json != NULL)
    fclose(g_json);
  if (g_mem_over > 0) {
    printf("m2mpsk-bench: %d side%s above the memory limit of %ld B\n",
           g_mem_over, g_mem_over == 1 ? "" : "s", g_mem_limit);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
