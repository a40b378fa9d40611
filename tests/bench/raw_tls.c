/* A raw baseline for m2mpsk-bench: the same (D)TLS 1.2 PSK handshake that
 * an m2mpsk association runs, driven directly on the TLS library through
 * in-memory transports. Built once against BoringSSL and once against
 * OpenSSL 3, each as a module of its own (raw.h says why).
 *
 * Per handshake: SSL_new for both roles on contexts made once, the same
 * single suite, SSL_OP_NO_TICKET, SSL_OP_NO_QUERY_MTU, the session cache
 * off, PSK callbacks handing over the same fixed 32-byte key (the server
 * checks the identity), the SNI m2mpsk derives from IdB, MTU 1400 for DTLS;
 * SSL_do_handshake on each side in turn until both return 1; SSL_free. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>

#include "raw.h"

enum { MAX_ROUNDS = 16 };

struct raw_env {
  int dtls;
  SSL_CTX *client;
  SSL_CTX *server;
};

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t cap,
                                                      const char *fmt, ...) {
  char lib[200];
  unsigned long e = ERR_get_error();
  if (e != 0)
    ERR_error_string_n(e, lib, sizeof(lib));
  else
    snprintf(lib, sizeof(lib), "no error queued");
  ERR_clear_error();
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < cap)
    snprintf(err + n, cap - (size_t)n, ": %s", lib);
  return -1;
}

/* ---- a datagram-preserving BIO pair ---------------------------------------
 *
 * A BIO_new_bio_pair is a byte stream: it hands the library a whole flight
 * per read, merging datagrams. This pair keeps datagram boundaries, like UDP
 * and like m2mpsk's own BIO: each end owns its receive queue of datagrams,
 * each behind a 2-byte length. */

typedef struct dgram_end {
  struct dgram_end *peer;
  size_t off; /* first unread byte */
  size_t len; /* unread bytes */
  size_t cap;
  uint8_t buf[];
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
  if (to == NULL || inl < 0 || (size_t)inl + 2 > to->cap - to->len)
    return -1; /* the peer is gone, or a flight overflows: fails loudly */
  if (to->off + to->len + (size_t)inl + 2 > to->cap) {
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

static int dgram_pair_new(size_t tbuf, BIO **out1, BIO **out2) {
  BIO *b1 = BIO_new(g_dgram_method), *b2 = BIO_new(g_dgram_method);
  dgram_end *e1 = malloc(sizeof(*e1) + tbuf), *e2 = malloc(sizeof(*e2) + tbuf);
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
  e1->cap = e2->cap = tbuf;
  BIO_set_data(b1, e1);
  BIO_set_data(b2, e2);
  BIO_set_init(b1, 1);
  BIO_set_init(b2, 1);
  *out1 = b1;
  *out2 = b2;
  return 1;
}

static int transport_pair(int dtls, size_t tbuf, BIO **client, BIO **server) {
  return dtls ? dgram_pair_new(tbuf, client, server)
              : BIO_new_bio_pair(client, tbuf, server, tbuf);
}

static int raw_transport_new(int dtls, size_t tbuf, void **a, void **b) {
  BIO *x, *y;
  if (!transport_pair(dtls, tbuf, &x, &y))
    return -1;
  *a = x;
  *b = y;
  return 0;
}

static void raw_transport_free(void *a, void *b) {
  BIO_free(a);
  BIO_free(b);
}

/* ---- contexts ------------------------------------------------------------ */

static unsigned client_psk(SSL *ssl, const char *hint, char *identity,
                           unsigned max_identity_len, unsigned char *psk,
                           unsigned max_psk_len) {
  (void)ssl;
  (void)hint;
  if (strlen(BENCH_KPSA_ID) > max_identity_len ||
      sizeof(k_bench_kpsa) > max_psk_len)
    return 0;
  memcpy(identity, BENCH_KPSA_ID, sizeof(BENCH_KPSA_ID));
  memcpy(psk, k_bench_kpsa, sizeof(k_bench_kpsa));
  return sizeof(k_bench_kpsa);
}

static unsigned server_psk(SSL *ssl, const char *identity, unsigned char *psk,
                           unsigned max_psk_len) {
  (void)ssl;
  if (strcmp(identity, BENCH_KPSA_ID) != 0 ||
      sizeof(k_bench_kpsa) > max_psk_len)
    return 0;
  memcpy(psk, k_bench_kpsa, sizeof(k_bench_kpsa));
  return sizeof(k_bench_kpsa);
}

static SSL_CTX *ctx_new(int dtls, const char *suite, int server) {
  int v = dtls ? DTLS1_2_VERSION : TLS1_2_VERSION;
  SSL_CTX *ctx = SSL_CTX_new(dtls ? DTLS_method() : TLS_method());
  if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, v) ||
      !SSL_CTX_set_max_proto_version(ctx, v) ||
#ifdef OPENSSL_IS_BORINGSSL
      !SSL_CTX_set_strict_cipher_list(ctx, suite)
#else
      !SSL_CTX_set_cipher_list(ctx, suite)
#endif
  ) {
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (server)
    SSL_CTX_set_psk_server_callback(ctx, server_psk);
  else
    SSL_CTX_set_psk_client_callback(ctx, client_psk);
  return ctx;
}

#ifndef OPENSSL_IS_BORINGSSL
static const uint8_t k_cookie_secret[32] = {0x63, 0x6f, 0x6f, 0x6b, 0x69, 0x65};

/* HMAC-SHA-256 over a peer tag (the address a UDP server would bind the
 * cookie to), truncated to 16 bytes: the work of m2mpsk's cookie. (Not the
 * client random as m2mpsk also does: OpenSSL verifies the cookie before it
 * stores the second hello's random.) */
static int cookie_make(SSL *ssl, uint8_t out[16]) {
  static const char tag[] = "127.0.0.1:5684";
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  (void)ssl;
  if (HMAC(EVP_sha256(), k_cookie_secret, sizeof(k_cookie_secret),
           (const uint8_t *)tag, sizeof(tag) - 1, mac, &len) == NULL ||
      len < 16)
    return 0;
  memcpy(out, mac, 16);
  return 1;
}

static int cookie_generate(SSL *ssl, unsigned char *cookie,
                           unsigned int *cookie_len) {
  if (!cookie_make(ssl, cookie))
    return 0;
  *cookie_len = 16;
  return 1;
}

static int cookie_verify(SSL *ssl, const unsigned char *cookie,
                         unsigned int cookie_len) {
  uint8_t want[16];
  return cookie_len == 16 && cookie_make(ssl, want) &&
         CRYPTO_memcmp(want, cookie, 16) == 0;
}
#endif

static raw_env *raw_env_new_ex(int dtls, const char *suite, int cookies,
                               char *err, size_t cap);
static void raw_env_free(raw_env *env);

static raw_env *raw_env_new(int dtls, const char *suite, char *err,
                            size_t cap) {
  return raw_env_new_ex(dtls, suite, 0, err, cap);
}

static raw_env *raw_env_new_ex(int dtls, const char *suite, int cookies,
                               char *err, size_t cap) {
  raw_env *env = calloc(1, sizeof(*env));
  if (env == NULL) {
    fail(err, cap, "out of memory");
    return NULL;
  }
  env->dtls = dtls;
  env->client = ctx_new(dtls, suite, 0);
  env->server = ctx_new(dtls, suite, 1);
  if (env->client == NULL || env->server == NULL) {
    fail(err, cap, "SSL_CTX setup for %s failed", suite);
    SSL_CTX_free(env->client);
    SSL_CTX_free(env->server);
    free(env);
    return NULL;
  }
  if (cookies) {
#ifdef OPENSSL_IS_BORINGSSL
    fail(err, cap, "BoringSSL has no DTLS cookie exchange");
    raw_env_free(env);
    return NULL;
#else
    SSL_CTX_set_options(env->server, SSL_OP_COOKIE_EXCHANGE);
    SSL_CTX_set_cookie_generate_cb(env->server, cookie_generate);
    SSL_CTX_set_cookie_verify_cb(env->server, cookie_verify);
#endif
  }
  return env;
}

static void raw_env_free(raw_env *env) {
  if (env == NULL)
    return;
  SSL_CTX_free(env->client);
  SSL_CTX_free(env->server);
  free(env);
}

/* ---- handshakes ---------------------------------------------------------- */

/* 1 when SSL_do_handshake's result means "feed me and call again". */
static int wants_more(const SSL *ssl, int r) {
  int e = SSL_get_error(ssl, r);
  return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

/* The server side's setup, kept apart so that it can be timed alone. */
static SSL *server_new(raw_env *env, BIO *bio) {
  SSL *s = SSL_new(env->server);
  if (s == NULL)
    return NULL;
  SSL_set_bio(s, bio, bio);
  SSL_set_accept_state(s);
  if (env->dtls && !SSL_set_mtu(s, BENCH_DTLS_MTU)) {
    SSL_free(s);
    return NULL;
  }
  return s;
}

static int handshake(raw_env *env, size_t tbuf, raw_pair *out, double *resp_cpu,
                     char *err, size_t cap) {
  BIO *bc, *bs;
  if (!transport_pair(env->dtls, tbuf, &bc, &bs))
    return fail(err, cap, "transport pair");
  SSL *c = SSL_new(env->client);
  if (c == NULL) {
    BIO_free(bc);
    BIO_free(bs);
    return fail(err, cap, "SSL_new");
  }
  SSL_set_bio(c, bc, bc);
  SSL_set_connect_state(c);
  if (!SSL_set_tlsext_host_name(c, BENCH_SNI) ||
      (env->dtls && !SSL_set_mtu(c, BENCH_DTLS_MTU))) {
    SSL_free(c);
    BIO_free(bs);
    return fail(err, cap, "client setup");
  }
  double t0 = resp_cpu ? bench_thread_cpu() : 0;
  SSL *s = server_new(env, bs);
  if (resp_cpu)
    *resp_cpu += bench_thread_cpu() - t0;
  if (s == NULL) {
    SSL_free(c);
    BIO_free(bs);
    return fail(err, cap, "server setup");
  }
  int rc = 0, rs = 0;
  for (int round = 0; round < MAX_ROUNDS && (rc != 1 || rs != 1); round++) {
    if (rc != 1 && (rc = SSL_do_handshake(c)) != 1 && !wants_more(c, rc))
      break;
    if (rs != 1) {
      t0 = resp_cpu ? bench_thread_cpu() : 0;
      rs = SSL_do_handshake(s);
      if (resp_cpu)
        *resp_cpu += bench_thread_cpu() - t0;
      if (rs != 1 && !wants_more(s, rs))
        break;
    }
  }
  if (rc != 1 || rs != 1) {
    fail(err, cap, "handshake not established: client %d, server %d", rc, rs);
    SSL_free(c);
    SSL_free(s);
    return -1;
  }
  out->client = c;
  out->server = s;
  return 0;
}

static int raw_establish(raw_env *env, size_t tbuf, raw_pair *out, char *err,
                         size_t cap) {
  return handshake(env, tbuf, out, NULL, err, cap);
}

static void raw_free_server(raw_pair *p) {
  SSL_free(p->server);
  p->server = NULL;
}

static void raw_free_client(raw_pair *p) {
  SSL_free(p->client);
  p->client = NULL;
}

/* Not static and never inlined: callgrind's --toggle-collect names it. */
int bench_raw_batch(raw_env *env, long n, double *resp_cpu, char *err,
                    size_t cap);
__attribute__((noinline, noclone, visibility("default"))) int
bench_raw_batch(raw_env *env, long n, double *resp_cpu, char *err, size_t cap) {
  for (long i = 0; i < n; i++) {
    raw_pair p;
    if (handshake(env, 4096, &p, resp_cpu, err, cap) != 0)
      return -1;
    SSL_free(p.client);
    double t0 = resp_cpu ? bench_thread_cpu() : 0;
    SSL_free(p.server);
    if (resp_cpu)
      *resp_cpu += bench_thread_cpu() - t0;
  }
  return 0;
}

/* ---- application data ---------------------------------------------------- */

static int raw_transfer(raw_pair *p, const uint8_t *data, size_t chunk,
                        size_t total, char *err, size_t cap) {
  static _Thread_local uint8_t rbuf[16384];
  SSL *c = p->client, *s = p->server;
  for (size_t done = 0; done < total; done += chunk) {
    int w = SSL_write(c, data, (int)chunk);
    if (w != (int)chunk)
      return fail(err, cap, "SSL_write returned %d", w);
    size_t got = 0;
    while (got < chunk) {
      int r = SSL_read(s, rbuf, sizeof(rbuf));
      if (r <= 0)
        return fail(err, cap, "SSL_read returned %d", r);
      got += (size_t)r;
    }
  }
  return 0;
}

/* ---- the module's one export --------------------------------------------- */

static const char *raw_version(void) {
  return OpenSSL_version(OPENSSL_VERSION);
}

static const bench_raw_ops k_ops = {
    .abi = BENCH_RAW_ABI,
    .version = raw_version,
    .env_new = raw_env_new,
    .env_free = raw_env_free,
    .establish = raw_establish,
    .free_server = raw_free_server,
    .free_client = raw_free_client,
    .batch = bench_raw_batch,
    .transport_new = raw_transport_new,
    .transport_free = raw_transport_free,
    .transfer = raw_transfer,
    .env_new_ex = raw_env_new_ex,
};

const bench_raw_ops *bench_raw_module(void);
__attribute__((visibility("default"))) const bench_raw_ops *
bench_raw_module(void) {
  if (g_dgram_method == NULL) {
    BIO_METHOD *m = BIO_meth_new(0, "bench-dgram-pair");
    if (m == NULL || !BIO_meth_set_read(m, dgram_read) ||
        !BIO_meth_set_write(m, dgram_write) ||
        !BIO_meth_set_ctrl(m, dgram_ctrl) ||
        !BIO_meth_set_destroy(m, dgram_destroy))
      return NULL;
    g_dgram_method = m;
  }
  return &k_ops;
}
