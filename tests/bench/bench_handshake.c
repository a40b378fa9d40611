/* m2mpsk-bench: what one oneM2M PSK security association costs through
 * m2mpsk, against the same (D)TLS 1.2 handshake driven on raw BoringSSL.
 *
 * Both contenders run in this one process, in one run, their batches
 * interleaved, so that the machine's noise falls on both alike; the figure
 * that matters is the ratio m2mpsk/raw measured within each repetition.
 *
 * One "handshake" is, for both contenders: create the initiator (client)
 * and the responder (server), run the full handshake in memory until both
 * are established, free both. What may be shared between associations (an
 * m2mpsk config and keystore, a BoringSSL SSL_CTX) is created once, before
 * any timing. m2mpsk is driven through its public API only.
 *
 * Memory: K established associations are held at once, for each contender,
 * and glibc's in-use heap (mallinfo2) is read before and after. See
 * README.md for how to read the output. */
#define _POSIX_C_SOURCE 200809L
#include <malloc.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "m2mpsk/m2mpsk.h"

/* The record both sides hold: KpsaID, Kpsa, IdA, IdB. */
#define KPSA_ID "bench@m2m.example.com"
#define ID_A "//m2m.example.com/cse-in/Cbench-ae"
#define ID_B "//m2m.example.com/cse-in"
/* The SNI an m2mpsk initiator derives from ID_B; raw sends the same. */
#define SNI_HOST "m2m.example.com"

static const uint8_t k_kpsa[32] = {
    0x6d, 0x32, 0x6d, 0x70, 0x73, 0x6b, 0x20, 0x62, 0x65, 0x6e, 0x63,
    0x68, 0x20, 0x6b, 0x65, 0x79, 0x10, 0x21, 0x32, 0x43, 0x54, 0x65,
    0x76, 0x87, 0x98, 0xa9, 0xba, 0xcb, 0xdc, 0xed, 0xfe, 0x0f};

enum {
  TARGET_RATIO_PCT = 105, /* m2mpsk may cost at most 5 % more than raw */
  MAX_REPS = 32,
  MAX_ROUNDS = 16,      /* flights per handshake before giving up */
  DTLS_MTU = 1400,      /* m2mpsk's default, set on raw as well */
  TRANSPORT_BUF = 4096, /* raw: bytes buffered per direction */
  WIRE_BUF = 17408,     /* m2mpsk: drain buffer, a whole datagram */
  LEAK_NOTICE = 24      /* bytes per pair left after freeing: say so */
};

typedef struct bench_case {
  const char *label;
  m2mpsk_transport transport;
  const char *iana; /* the suite as m2mpsk names it */
  const char *bssl; /* the same suite as BoringSSL names it */
  int ecdhe;
} bench_case;

static const bench_case k_cases[] = {
    {"TLS  PSK-AES128-CBC-SHA", M2MPSK_TRANSPORT_TLS,
     "TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA", 0},
    {"TLS  ECDHE-PSK-AES128-CBC-SHA", M2MPSK_TRANSPORT_TLS,
     "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", "ECDHE-PSK-AES128-CBC-SHA", 1},
    {"DTLS PSK-AES128-CBC-SHA", M2MPSK_TRANSPORT_DTLS,
     "TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA", 0},
    {"DTLS ECDHE-PSK-AES128-CBC-SHA", M2MPSK_TRANSPORT_DTLS,
     "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", "ECDHE-PSK-AES128-CBC-SHA", 1},
};
#define N_CASES (sizeof(k_cases) / sizeof(k_cases[0]))

typedef struct bench_params {
  int reps;
  long n_psk;
  long n_ecdhe;
  long k;
} bench_params;

/* ---- helpers ------------------------------------------------------------- */

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

static double cpu_seconds(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
    fatal("clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Bytes the process has allocated from glibc malloc and not freed:
 * small chunks (uordblks) plus chunks served by mmap (hblkhd). */
static double heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return (double)mi.uordblks + (double)mi.hblkhd;
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

static const char *ssl_error_text(void) {
  static char buf[256];
  uint32_t e = ERR_get_error();
  if (e == 0)
    return "no error queued";
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

/* ---- m2mpsk -------------------------------------------------------------- */

typedef struct m2m_env {
  m2mpsk_transport transport;
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
  env->transport = c->transport;
  env->unix_time = (int64_t)time(NULL);
  if ((rc = m2mpsk_keystore_new(&env->ks_a, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_new(&env->ks_b, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_add(env->ks_a, KPSA_ID, k_kpsa, sizeof(k_kpsa),
                                ID_A, ID_B, 0, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_add(env->ks_b, KPSA_ID, k_kpsa, sizeof(k_kpsa),
                                ID_A, ID_B, 0, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_config_new(&env->cfg_a)) != M2MPSK_OK ||
      (rc = m2mpsk_config_new(&env->cfg_b)) != M2MPSK_OK ||
      (rc = m2mpsk_config_add_local_id(env->cfg_b, ID_B)) != M2MPSK_OK ||
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

/* Moves everything `from` has to send into `to`, one drain (a datagram,
 * for DTLS) per feed. Returns the number of feeds, or -1 when one failed. */
static int m2m_pump(m2mpsk_assoc *from, m2mpsk_assoc *to, uint64_t now) {
  static uint8_t wire[WIRE_BUF];
  size_t n;
  int moved = 0;
  while (m2mpsk_assoc_drain(from, wire, sizeof(wire), &n) == M2MPSK_OK) {
    if (m2mpsk_assoc_feed(to, wire, n, now) != M2MPSK_OK)
      return -1;
    moved++;
  }
  return moved;
}

static void m2m_check(const bench_case *c, long iter, const m2m_pair *p) {
  if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED &&
      m2mpsk_assoc_state(p->b) == M2MPSK_STATE_ESTABLISHED)
    return;
  fatal("%s: m2mpsk handshake %ld not established: initiator state %d "
        "(%s: %s), responder state %d (%s: %s)",
        c->label, iter, (int)m2mpsk_assoc_state(p->a),
        m2mpsk_reason_name(m2mpsk_assoc_failure(p->a)),
        m2mpsk_assoc_failure_detail(p->a), (int)m2mpsk_assoc_state(p->b),
        m2mpsk_reason_name(m2mpsk_assoc_failure(p->b)),
        m2mpsk_assoc_failure_detail(p->b));
}

/* Creates both sides and runs the handshake until both are established;
 * exits with a message if they are not. */
static void m2m_establish(const m2m_env *env, const bench_case *c, long iter,
                          uint64_t now, m2m_pair *p) {
  int rc;
  p->a = p->b = NULL;
  if ((rc = m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, env->transport,
                             env->cfg_a, env->ks_a, KPSA_ID)) != M2MPSK_OK ||
      (rc = m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER, env->transport,
                             env->cfg_b, env->ks_b, NULL)) != M2MPSK_OK)
    fatal("%s: m2mpsk_assoc_new failed: %s", c->label, m2mpsk_strerror(rc));
  if ((rc = m2mpsk_assoc_start(p->b, now, env->unix_time)) != M2MPSK_OK ||
      (rc = m2mpsk_assoc_start(p->a, now, env->unix_time)) != M2MPSK_OK)
    m2m_check(c, iter, p);
  for (int round = 0; round < MAX_ROUNDS; round++) {
    int ab = m2m_pump(p->a, p->b, now);
    int ba = m2m_pump(p->b, p->a, now);
    if (ab < 0 || ba < 0 || (ab == 0 && ba == 0) ||
        (m2mpsk_assoc_state(p->a) != M2MPSK_STATE_HANDSHAKING &&
         m2mpsk_assoc_state(p->b) != M2MPSK_STATE_HANDSHAKING))
      break;
  }
  m2m_check(c, iter, p);
}

/* CPU seconds for n handshakes (create, handshake, free both sides). */
static double m2m_batch(const m2m_env *env, const bench_case *c, long n) {
  uint64_t now = monotonic_ms();
  double t0 = cpu_seconds();
  for (long i = 0; i < n; i++) {
    m2m_pair p;
    m2m_establish(env, c, i, now, &p);
    m2mpsk_assoc_free(p.a);
    m2mpsk_assoc_free(p.b);
  }
  return cpu_seconds() - t0;
}

/* ---- raw BoringSSL: a datagram-preserving BIO pair ------------------------
 *
 * A BIO_new_bio_pair is a byte stream: it completes DTLS handshakes in this
 * lockstep loop, but hands BoringSSL a whole flight per read, merging
 * datagrams, and splits a record when a flight does not fit its ring. This
 * pair keeps datagram boundaries, like UDP and like m2mpsk's own BIO: each
 * end owns its receive queue of datagrams, each behind a 2-byte length. */

typedef struct dgram_end {
  struct dgram_end *peer;
  size_t off; /* first unread byte */
  size_t len; /* unread bytes */
  uint8_t buf[TRANSPORT_BUF];
} dgram_end;

static BIO_METHOD *g_dgram_method;

static int dgram_read(BIO *bio, char *out, int outl) {
  dgram_end *e = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (outl <= 0)
    return 0;
  if (e->len == 0) {
    BIO_set_retry_read(bio);
    return -1;
  }
  size_t dlen = ((size_t)e->buf[e->off] << 8) | e->buf[e->off + 1];
  size_t n = dlen < (size_t)outl ? dlen : (size_t)outl; /* truncates, as recv */
  memcpy(out, e->buf + e->off + 2, n);
  e->off += dlen + 2;
  e->len -= dlen + 2;
  if (e->len == 0)
    e->off = 0;
  return (int)n;
}

static int dgram_write(BIO *bio, const char *in, int inl) {
  dgram_end *e = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  dgram_end *to = e->peer;
  if (to == NULL || inl < 0 || (size_t)inl + 2 > sizeof(to->buf) - to->len)
    return -1; /* the peer is gone, or a flight overflows: fails loudly */
  if (to->off + to->len + (size_t)inl + 2 > sizeof(to->buf)) {
    memmove(to->buf, to->buf + to->off, to->len);
    to->off = 0;
  }
  uint8_t *w = to->buf + to->off + to->len;
  w[0] = (uint8_t)((unsigned)inl >> 8);
  w[1] = (uint8_t)inl;
  memcpy(w + 2, in, (size_t)inl);
  to->len += (size_t)inl + 2;
  return inl;
}

static long dgram_ctrl(BIO *bio, int cmd, long larg, void *parg) {
  (void)larg;
  (void)parg;
  dgram_end *e = BIO_get_data(bio);
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_CTRL_PENDING: return e ? (long)e->len : 0;
  default: return 0;
  }
}

static int dgram_destroy(BIO *bio) {
  dgram_end *e = BIO_get_data(bio);
  if (e != NULL) {
    if (e->peer != NULL)
      e->peer->peer = NULL;
    free(e);
    BIO_set_data(bio, NULL);
  }
  return 1;
}

static void dgram_method_init(void) {
  BIO_METHOD *m = BIO_meth_new(0, "bench-dgram-pair");
  if (m == NULL || !BIO_meth_set_read(m, dgram_read) ||
      !BIO_meth_set_write(m, dgram_write) ||
      !BIO_meth_set_ctrl(m, dgram_ctrl) ||
      !BIO_meth_set_destroy(m, dgram_destroy))
    fatal("cannot create the datagram BIO method");
  g_dgram_method = m;
}

static int dgram_pair_new(BIO **out1, BIO **out2) {
  BIO *b1 = BIO_new(g_dgram_method), *b2 = BIO_new(g_dgram_method);
  dgram_end *e1 = malloc(sizeof(*e1)), *e2 = malloc(sizeof(*e2));
  if (b1 == NULL || b2 == NULL || e1 == NULL || e2 == NULL) {
    BIO_free(b1);
    BIO_free(b2);
    free(e1);
    free(e2);
    return 0;
  }
  e1->peer = e2;
  e2->peer = e1;
  e1->off = e1->len = e2->off = e2->len = 0;
  BIO_set_data(b1, e1);
  BIO_set_data(b2, e2);
  BIO_set_init(b1, 1);
  BIO_set_init(b2, 1);
  *out1 = b1;
  *out2 = b2;
  return 1;
}

static int transport_pair_new(int dtls, BIO **client, BIO **server) {
  return dtls ? dgram_pair_new(client, server)
              : BIO_new_bio_pair(client, TRANSPORT_BUF, server, TRANSPORT_BUF);
}

/* ---- raw BoringSSL: the handshake ---------------------------------------- */

typedef struct raw_env {
  int dtls;
  SSL_CTX *client;
  SSL_CTX *server;
} raw_env;

typedef struct raw_pair {
  SSL *c;
  SSL *s;
} raw_pair;

static unsigned raw_client_psk(SSL *ssl, const char *hint, char *identity,
                               unsigned max_identity_len, uint8_t *psk,
                               unsigned max_psk_len) {
  (void)ssl;
  (void)hint;
  if (strlen(KPSA_ID) > max_identity_len || sizeof(k_kpsa) > max_psk_len)
    return 0;
  memcpy(identity, KPSA_ID, sizeof(KPSA_ID));
  memcpy(psk, k_kpsa, sizeof(k_kpsa));
  return sizeof(k_kpsa);
}

static unsigned raw_server_psk(SSL *ssl, const char *identity, uint8_t *psk,
                               unsigned max_psk_len) {
  (void)ssl;
  if (strcmp(identity, KPSA_ID) != 0 || sizeof(k_kpsa) > max_psk_len)
    return 0;
  memcpy(psk, k_kpsa, sizeof(k_kpsa));
  return sizeof(k_kpsa);
}

static SSL_CTX *raw_ctx_new(const bench_case *c, int server) {
  int dtls = c->transport == M2MPSK_TRANSPORT_DTLS;
  uint16_t v = dtls ? DTLS1_2_VERSION : TLS1_2_VERSION;
  SSL_CTX *ctx = SSL_CTX_new(dtls ? DTLS_method() : TLS_method());
  if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, v) ||
      !SSL_CTX_set_max_proto_version(ctx, v) ||
      !SSL_CTX_set_strict_cipher_list(ctx, c->bssl))
    fatal("%s: raw SSL_CTX setup failed: %s", c->label, ssl_error_text());
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (server)
    SSL_CTX_set_psk_server_callback(ctx, raw_server_psk);
  else
    SSL_CTX_set_psk_client_callback(ctx, raw_client_psk);
  return ctx;
}

static void raw_env_init(raw_env *env, const bench_case *c) {
  env->dtls = c->transport == M2MPSK_TRANSPORT_DTLS;
  env->client = raw_ctx_new(c, 0);
  env->server = raw_ctx_new(c, 1);
}

static void raw_env_free(raw_env *env) {
  SSL_CTX_free(env->client);
  SSL_CTX_free(env->server);
}

/* 1 when SSL_do_handshake's result means "feed me and call again". */
static int raw_wants_more(const SSL *ssl, int r) {
  int err = SSL_get_error(ssl, r);
  return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE;
}

/* Creates both sides and runs the handshake until SSL_do_handshake has
 * returned 1 on both; exits with a message otherwise. */
static void raw_establish(const raw_env *env, const bench_case *c, long iter,
                          raw_pair *p) {
  BIO *bc, *bs;
  p->c = SSL_new(env->client);
  p->s = SSL_new(env->server);
  if (p->c == NULL || p->s == NULL || !transport_pair_new(env->dtls, &bc, &bs))
    fatal("%s: raw SSL_new failed: %s", c->label, ssl_error_text());
  SSL_set_bio(p->c, bc, bc);
  SSL_set_bio(p->s, bs, bs);
  SSL_set_connect_state(p->c);
  SSL_set_accept_state(p->s);
  if (!SSL_set_tlsext_host_name(p->c, SNI_HOST))
    fatal("%s: raw SSL_set_tlsext_host_name failed", c->label);
  if (env->dtls &&
      (!SSL_set_mtu(p->c, DTLS_MTU) || !SSL_set_mtu(p->s, DTLS_MTU)))
    fatal("%s: raw SSL_set_mtu failed", c->label);
  int rc = 0, rs = 0;
  for (int round = 0; round < MAX_ROUNDS && (rc != 1 || rs != 1); round++) {
    if (rc != 1 && (rc = SSL_do_handshake(p->c)) != 1 &&
        !raw_wants_more(p->c, rc))
      break;
    if (rs != 1 && (rs = SSL_do_handshake(p->s)) != 1 &&
        !raw_wants_more(p->s, rs))
      break;
  }
  if (rc != 1 || rs != 1)
    fatal("%s: raw handshake %ld not established: client %d, server %d: %s",
          c->label, iter, rc, rs, ssl_error_text());
}

static void raw_pair_free(raw_pair *p) {
  SSL_free(p->c);
  SSL_free(p->s);
}

/* CPU seconds for n handshakes (create, handshake, free both sides). */
static double raw_batch(const raw_env *env, const bench_case *c, long n) {
  double t0 = cpu_seconds();
  for (long i = 0; i < n; i++) {
    raw_pair p;
    raw_establish(env, c, i, &p);
    raw_pair_free(&p);
  }
  return cpu_seconds() - t0;
}

/* ---- CPU time ------------------------------------------------------------ */

static int time_case(const bench_case *c, const bench_params *bp) {
  long n = c->ecdhe ? bp->n_ecdhe : bp->n_psk;
  m2m_env me;
  raw_env re;
  m2m_env_init(&me, c);
  raw_env_init(&re, c);

  /* Warm-up, unreported: lazy contexts, caches, branch predictors. */
  long warm = n / 10 > 10 ? n / 10 : 10;
  m2m_batch(&me, c, warm);
  raw_batch(&re, c, warm);

  double us_m[MAX_REPS], us_r[MAX_REPS], ratio[MAX_REPS], extra[MAX_REPS];
  for (int r = 0; r < bp->reps; r++) {
    /* Alternate which contender goes first, so neither always follows. */
    double tm, tr;
    if (r % 2 == 0) {
      tm = m2m_batch(&me, c, n);
      tr = raw_batch(&re, c, n);
    } else {
      tr = raw_batch(&re, c, n);
      tm = m2m_batch(&me, c, n);
    }
    us_m[r] = tm * 1e6 / (double)n;
    us_r[r] = tr * 1e6 / (double)n;
    ratio[r] = tm / tr;
    extra[r] = us_m[r] - us_r[r];
  }
  m2m_env_free(&me);
  raw_env_free(&re);

  summary sm = summarize(us_m, bp->reps), sr = summarize(us_r, bp->reps);
  summary sx = summarize(ratio, bp->reps);
  summary sd = summarize(extra, bp->reps);
  int met = sx.median * 100.0 <= (double)TARGET_RATIO_PCT;
  printf("%-30s %5ld  m2mpsk  %8.2f %8.2f %8.2f %9.0f\n", c->label, n,
         sm.median, sm.min, sm.max, 1e6 / sm.median);
  printf("%-30s %5s  raw     %8.2f %8.2f %8.2f %9.0f\n", "", "", sr.median,
         sr.min, sr.max, 1e6 / sr.median);
  printf("%-30s %5s  ratio   %8.3f %8.3f %8.3f   %+.1f us; target <= %.2f: "
         "%s\n",
         "", "", sx.median, sx.min, sx.max, sd.median, TARGET_RATIO_PCT / 100.0,
         met ? "met" : "not met");
  fflush(stdout);
  return met;
}

/* ---- memory -------------------------------------------------------------- */

typedef struct mem_figures {
  double initiator; /* bytes per established initiator (client) */
  double responder; /* bytes per established responder (server) */
  double pair;      /* bytes per established pair, both sides */
  double leaked;    /* bytes per pair still in use after freeing all */
} mem_figures;

/* Holds k established pairs, then frees the responders, then the
 * initiators, reading the heap at each step. A pair's figure is the growth
 * with all k pairs held; a responder's is what freeing the k responders
 * released; an initiator's what remained until the initiators went. */
static mem_figures m2m_memory(const bench_case *c, long k) {
  m2m_env env;
  m2m_env_init(&env, c);
  m2m_pair *pairs = calloc((size_t)k, sizeof(*pairs));
  if (pairs == NULL)
    fatal("out of memory");
  uint64_t now = monotonic_ms();
  /* One pair first, so that lazily built shared state (per-config TLS
   * contexts, BoringSSL's globals) is not counted. */
  m2m_pair warm;
  m2m_establish(&env, c, -1, now, &warm);
  m2mpsk_assoc_free(warm.a);
  m2mpsk_assoc_free(warm.b);

  double base = heap_in_use();
  for (long i = 0; i < k; i++)
    m2m_establish(&env, c, i, now, &pairs[i]);
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

static mem_figures raw_memory(const bench_case *c, long k) {
  raw_env env;
  raw_env_init(&env, c);
  raw_pair *pairs = calloc((size_t)k, sizeof(*pairs));
  if (pairs == NULL)
    fatal("out of memory");
  raw_pair warm;
  raw_establish(&env, c, -1, &warm);
  raw_pair_free(&warm);

  double base = heap_in_use();
  for (long i = 0; i < k; i++)
    raw_establish(&env, c, i, &pairs[i]);
  double all = heap_in_use();
  for (long i = 0; i < k; i++)
    SSL_free(pairs[i].s);
  double initiators = heap_in_use();
  for (long i = 0; i < k; i++)
    SSL_free(pairs[i].c);
  double end = heap_in_use();
  free(pairs);
  raw_env_free(&env);

  mem_figures f = {(initiators - base) / (double)k,
                   (all - initiators) / (double)k, (all - base) / (double)k,
                   (end - base) / (double)k};
  return f;
}

/* Bytes per side of the harness's raw transport alone (no SSL). */
static double transport_memory(int dtls, long k) {
  BIO **bios = calloc((size_t)k * 2, sizeof(*bios));
  if (bios == NULL)
    fatal("out of memory");
  double base = heap_in_use();
  for (long i = 0; i < k; i++)
    if (!transport_pair_new(dtls, &bios[2 * i], &bios[2 * i + 1]))
      fatal("cannot create a transport pair");
  double all = heap_in_use();
  for (long i = 0; i < 2 * k; i++)
    BIO_free(bios[i]);
  free(bios);
  return (all - base) / (double)(2 * k);
}

static void memory_case(const bench_case *c, long k) {
  mem_figures m = m2m_memory(c, k);
  mem_figures r = raw_memory(c, k);
  double t = transport_memory(c->transport == M2MPSK_TRANSPORT_DTLS, k);
  printf("%-30s initiator %9.0f %9.0f %9.0f %6.2f\n", c->label, m.initiator,
         r.initiator, r.initiator - t, m.initiator / r.initiator);
  printf("%-30s responder %9.0f %9.0f %9.0f %6.2f\n", "", m.responder,
         r.responder, r.responder - t, m.responder / r.responder);
  printf("%-30s pair      %9.0f %9.0f %9.0f %6.2f\n", "", m.pair, r.pair,
         r.pair - 2 * t, m.pair / r.pair);
  if (m.leaked > LEAK_NOTICE || r.leaked > LEAK_NOTICE)
    printf("%-30s not returned after freeing all, per pair: m2mpsk %.0f, "
           "raw %.0f\n",
           "", m.leaked, r.leaked);
  fflush(stdout);
}

/* ---- main ---------------------------------------------------------------- */

static void usage(FILE *f) {
  fputs("usage: m2mpsk-bench [--quick]\n"
        "  Times full (D)TLS 1.2 PSK handshakes through m2mpsk against raw\n"
        "  BoringSSL, interleaved in one run, and measures the memory of\n"
        "  established associations. --quick: a smoke run of a few seconds\n"
        "  (3 repetitions, small batches, 1000 associations held).\n",
        f);
}

int main(int argc, char **argv) {
  bench_params bp = {7, 2000, 500, 10000};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0) {
      bp.reps = 3;
      bp.n_psk = 200;
      bp.n_ecdhe = 50;
      bp.k = 1000;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return EXIT_SUCCESS;
    } else {
      usage(stderr);
      return 2;
    }
  }
  dgram_method_init();

  printf("m2mpsk-bench: m2mpsk %s against raw %s, one process, one run\n",
         m2mpsk_version_string(), OpenSSL_version(OPENSSL_VERSION));
  printf("handshake = create initiator + responder, full handshake in "
         "memory, free both\n"
         "CPU time per handshake (CLOCK_PROCESS_CPUTIME_ID), both sides, "
         "%d repetitions of N,\n"
         "m2mpsk and raw batches alternating; ratio = m2mpsk/raw per "
         "repetition\n\n",
         bp.reps);
  printf("%-30s %5s  %-6s  %8s %8s %8s %9s\n", "case", "N", "who", "median",
         "min", "max", "hs/s");
  printf("%-30s %5s  %-6s  %8s %8s %8s %9s\n", "", "", "", "us", "us", "us",
         "(median)");
  int met = 0;
  for (size_t i = 0; i < N_CASES; i++)
    met += time_case(&k_cases[i], &bp);

  printf("\nMemory per established association: %ld pairs held at once, "
         "glibc heap in use\n"
         "(mallinfo2 uordblks + hblkhd) growth / %ld, in bytes. raw includes "
         "its transport BIO\n"
         "(%d-byte buffer per direction); raw-BIO excludes it. ratio = "
         "m2mpsk/raw.\n\n",
         bp.k, bp.k, TRANSPORT_BUF);
  printf("%-30s %-9s %9s %9s %9s %6s\n", "case", "side", "m2mpsk", "raw",
         "raw-BIO", "ratio");
  for (size_t i = 0; i < N_CASES; i++)
    memory_case(&k_cases[i], bp.k);

  printf("\nhandshake CPU target (m2mpsk/raw median <= %.2f): met in %d of "
         "%zu cases\n",
         TARGET_RATIO_PCT / 100.0, met, N_CASES);
  BIO_meth_free(g_dgram_method);
  return EXIT_SUCCESS;
}
