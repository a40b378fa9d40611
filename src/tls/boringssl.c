/* The BoringSSL backend (Debian android-libboringssl-dev).
 *
 * Each association owns one SSL whose single BIO is ours: input the caller
 * fed waits in `in`, output waits in `out` until drained. For DTLS both
 * buffers hold whole datagrams, each behind a 2-byte length, because a
 * memory BIO would merge them. BoringSSL's clock is the caller's monotonic
 * time, handed over per thread: its time callback gets no SSL pointer.
 *
 * Residual copy: during a handshake BoringSSL copies the PSK into a stack
 * buffer of its own and derives the master secret from it; that copy and
 * the session keys live in BoringSSL's memory, outside our control. */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "engine.h"
#include "family.h"

/* The per-record path is grouped (.text.hot) so that it spans few
 * instruction-cache lines between BoringSSL's own; failure handling is
 * kept out of its way. */
#define HOT __attribute__((hot))
#define COLD __attribute__((cold))

/* Set once by m2mpsk_tls_module(), before any other call. */
static const m2mpsk_engine_hooks *g_hooks;

static void bssl_abort(m2mpsk_engine *e, uint8_t alert);

struct m2mpsk_engine_ctx {
  SSL_CTX *ssl_ctx;
  int dtls;
  int server;
};

typedef struct bytebuf {
  uint8_t *p;
  size_t off; /* start of unread data */
  size_t len; /* bytes of unread data */
  size_t cap;
} bytebuf;

/* Room inside the engine for one small record in flight, in whichever
 * direction needs it: a 64-byte message in a CBC-SHA1 record takes 117
 * bytes over TLS, 127 over DTLS with its length prefix. Small messages,
 * most of M2M traffic, then cost no allocation per record. */
enum { SMALL_BUF = 128 };

struct m2mpsk_engine {
  SSL *ssl;
  m2mpsk_assoc *owner;
  bytebuf in;
  bytebuf out;
  /* The failure detail, "what: name", both static strings: formatted only
   * when asked for, so that an association carries no text buffer. */
  const char *what;
  const char *name;
  m2mpsk_reason reason;
  uint8_t dtls;
  uint8_t server;
  uint8_t nomem;
  uint8_t established; /* the handshake completed: release emptied buffers */
  /* DTLS responder: a Finished that fails its MAC is dropped silently by
   * DTLS, so a wrong key would look like loss. These spot it. */
  uint8_t psk_given;
  uint8_t key_out; /* a PSK callback gave out the key in this call */
  uint8_t ccs_seen;
  uint8_t bad_finished;
  uint8_t small[SMALL_BUF]; /* in.p or out.p, at most one of them */
};

/* ---- suites -------------------------------------------------------------- */

/* The PSK suites BoringSSL implements (TLS 1.2 / DTLS 1.2). */
static const suite_name k_suites[] = {
    {"TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA"},
    {"TLS_PSK_WITH_AES_256_CBC_SHA", "PSK-AES256-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", "ECDHE-PSK-AES128-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA", "ECDHE-PSK-AES256-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
     "ECDHE-PSK-CHACHA20-POLY1305"},
};

static const char *bssl_backend_name(void) {
  return "boringssl";
}

static size_t bssl_suite_count(void) {
  return sizeof(k_suites) / sizeof(k_suites[0]);
}

static const char *bssl_suite_name(size_t i) {
  return i < bssl_suite_count() ? k_suites[i].iana : NULL;
}

static const char *bssl_default_suites(void) {
  return "TLS_PSK_WITH_AES_128_CBC_SHA:TLS_PSK_WITH_AES_256_CBC_SHA";
}

/* Translates the IANA list into BoringSSL's names; out may be NULL. */
static int translate_suites(const char *iana, char *out, size_t cap) {
  return family_translate_suites(
      k_suites, sizeof(k_suites) / sizeof(k_suites[0]), iana, out, cap);
}

static int bssl_check_suites(const char *iana_names) {
  return translate_suites(iana_names, NULL, 0);
}

/* ---- buffers ------------------------------------------------------------- */

/* A first heap allocation small enough for glibc's per-thread cache
 * (tcache, up to 1032 bytes). */
enum { BUF_MIN = 1024 };

static int buf_reserve(m2mpsk_engine *e, bytebuf *b, size_t extra) {
  if (b->off > 0 && b->off + b->len + extra > b->cap) {
    memmove(b->p, b->p + b->off, b->len);
    b->off = 0;
  }
  if (b->len + extra <= b->cap)
    return 1;
  /* Here off is 0. */
  const bytebuf *other = b == &e->in ? &e->out : &e->in;
  if (b->p == NULL && extra <= SMALL_BUF && other->p != e->small) {
    b->p = e->small;
    b->cap = SMALL_BUF;
    return 1;
  }
  size_t cap = b->cap > BUF_MIN ? b->cap : BUF_MIN;
  while (cap < b->len + extra) {
    if (cap > SIZE_MAX / 2)
      return 0;
    cap *= 2;
  }
  uint8_t *p;
  if (b->p == e->small) {
    p = malloc(cap);
    if (p != NULL)
      memcpy(p, b->p, b->len);
  } else {
    p = b->p == NULL ? malloc(cap) : realloc(b->p, cap);
  }
  if (p == NULL)
    return 0;
  b->p = p;
  b->cap = cap;
  return 1;
}

static int buf_append(m2mpsk_engine *e, bytebuf *b, const uint8_t *data,
                      size_t len) {
  if (!buf_reserve(e, b, len))
    return 0;
  memcpy(b->p + b->off + b->len, data, len);
  b->len += len;
  return 1;
}

static void buf_release(m2mpsk_engine *e, bytebuf *b) {
  if (b->p != e->small)
    free(b->p);
  b->p = NULL;
  b->off = 0;
  b->len = 0;
  b->cap = 0;
}

/* During the handshake an emptied buffer is kept for the next flight. Once
 * established, an emptied buffer is released: an idle association then
 * holds no heap buffer at all, which is most of its life. The buffers only
 * ever hold records as they travel on the wire, so there is nothing to
 * wipe. */
static void buf_consume(m2mpsk_engine *e, bytebuf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (b->len == 0) {
    b->off = 0;
    if (e->established || b->p == e->small)
      buf_release(e, b);
  }
}

static int buf_push_datagram(m2mpsk_engine *e, bytebuf *b, const uint8_t *data,
                             size_t len) {
  uint8_t hdr[2] = {(uint8_t)(len >> 8), (uint8_t)len};
  if (len > 0xffff || !buf_reserve(e, b, len + 2))
    return 0;
  buf_append(e, b, hdr, 2);
  buf_append(e, b, data, len);
  return 1;
}

static size_t buf_next_datagram(const bytebuf *b) {
  if (b->len < 2)
    return 0;
  return ((size_t)b->p[b->off] << 8) | b->p[b->off + 1];
}

/* ---- our BIO ------------------------------------------------------------- */

static HOT int bio_read(BIO *bio, char *out, int outl) {
  m2mpsk_engine *e = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (e->in.len == 0 || outl <= 0) {
    BIO_set_retry_read(bio);
    return -1;
  }
  size_t n;
  if (e->dtls) {
    size_t dlen = buf_next_datagram(&e->in);
    n = dlen < (size_t)outl ? dlen : (size_t)outl;
    memcpy(out, e->in.p + e->in.off + 2, n);
    buf_consume(e, &e->in, dlen + 2);
  } else {
    n = e->in.len < (size_t)outl ? e->in.len : (size_t)outl;
    memcpy(out, e->in.p + e->in.off, n);
    buf_consume(e, &e->in, n);
  }
  return (int)n;
}

static HOT int bio_write(BIO *bio, const char *data, int len) {
  m2mpsk_engine *e = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (len < 0)
    return -1;
  const uint8_t *d = (const uint8_t *)data;
  int ok = e->dtls ? buf_push_datagram(e, &e->out, d, (size_t)len)
                   : buf_append(e, &e->out, d, (size_t)len);
  if (!ok) {
    e->nomem = 1;
    return -1;
  }
  return len;
}

static long bio_ctrl(BIO *bio, int cmd, long larg, void *parg) {
  (void)larg;
  (void)parg;
  m2mpsk_engine *e = BIO_get_data(bio);
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_CTRL_PENDING: return e ? (long)e->in.len : 0;
  case BIO_CTRL_WPENDING: return e ? (long)e->out.len : 0;
  default: return 0;
  }
}

static int bio_create(BIO *bio) {
  BIO_set_init(bio, 1);
  return 1;
}

/* Built once and kept for the life of the process, then read without the
 * lock. Not pthread_once: a failed allocation must leave the next caller
 * free to try again. */
static _Atomic(BIO_METHOD *) g_bio_method;
static pthread_mutex_t g_bio_lock = PTHREAD_MUTEX_INITIALIZER;

static BIO_METHOD *bio_method(void) {
  BIO_METHOD *m = atomic_load_explicit(&g_bio_method, memory_order_acquire);
  if (m != NULL)
    return m;
  pthread_mutex_lock(&g_bio_lock);
  m = atomic_load_explicit(&g_bio_method, memory_order_relaxed);
  if (m == NULL) {
    m = BIO_meth_new(0, "m2mpsk");
    if (m != NULL &&
        (!BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
         !BIO_meth_set_ctrl(m, bio_ctrl) ||
         !BIO_meth_set_create(m, bio_create))) {
      BIO_meth_free(m);
      m = NULL;
    }
    atomic_store_explicit(&g_bio_method, m, memory_order_release);
  }
  pthread_mutex_unlock(&g_bio_lock);
  return m;
}

/* ---- clock --------------------------------------------------------------- */

static _Thread_local uint64_t t_now_ms;

static HOT void bssl_set_now(uint64_t now_ms) {
  t_now_ms = now_ms;
}

static void time_cb(const SSL *ssl, struct timeval *out) {
  (void)ssl;
  out->tv_sec = (time_t)(t_now_ms / 1000);
  out->tv_usec = (suseconds_t)((t_now_ms % 1000) * 1000);
}

/* ---- callbacks into assoc.c ---------------------------------------------- */

/* The engine behind an SSL: our BIO's data. Cheaper than ex_data, which
 * costs two allocations per SSL and a lock when the SSL is freed. */
static m2mpsk_engine *engine_of(const SSL *ssl) {
  return BIO_get_data(SSL_get_rbio(ssl));
}

static unsigned client_psk_cb(SSL *ssl, const char *hint, char *identity,
                              unsigned max_identity_len, uint8_t *psk,
                              unsigned max_psk_len) {
  (void)hint;
  m2mpsk_engine *e = engine_of(ssl);
  unsigned n = g_hooks->on_client_psk(
      e->owner, identity, (size_t)max_identity_len + 1, psk, max_psk_len);
  e->key_out |= n > 0;
  return n;
}

static unsigned server_psk_cb(SSL *ssl, const char *identity, uint8_t *psk,
                              unsigned max_psk_len) {
  m2mpsk_engine *e = engine_of(ssl);
  unsigned n = g_hooks->on_server_psk(e->owner, identity, psk, max_psk_len);
  if (n > 0)
    e->psk_given = e->key_out = 1;
  return n;
}

static int server_name_cb(SSL *ssl, int *out_alert, void *arg) {
  (void)arg;
  m2mpsk_engine *e = engine_of(ssl);
  const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (g_hooks->on_server_name(e->owner, host) != 0) {
    *out_alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

/* ---- contexts ------------------------------------------------------------ */

static int bssl_ctx_new(m2mpsk_engine_ctx **out, m2mpsk_role role,
                        m2mpsk_transport transport, const char *iana_names) {
  char list[512];
  int rc = translate_suites(iana_names, list, sizeof(list));
  if (rc != M2MPSK_OK)
    return rc;
  if (bio_method() == NULL) {
    ERR_clear_error();
    return M2MPSK_E_NOMEM;
  }

  m2mpsk_engine_ctx *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return M2MPSK_E_NOMEM;
  c->dtls = transport == M2MPSK_TRANSPORT_DTLS;
  c->server = role == M2MPSK_ROLE_RESPONDER;
  c->ssl_ctx = SSL_CTX_new(c->dtls ? DTLS_method() : TLS_method());
  if (c->ssl_ctx == NULL) {
    free(c);
    return M2MPSK_E_NOMEM;
  }
  SSL_CTX *s = c->ssl_ctx;
  uint16_t v = c->dtls ? DTLS1_2_VERSION : TLS1_2_VERSION;
  if (!SSL_CTX_set_min_proto_version(s, v) ||
      !SSL_CTX_set_max_proto_version(s, v) ||
      !SSL_CTX_set_strict_cipher_list(s, list)) {
    ERR_clear_error();
    SSL_CTX_free(s);
    free(c);
    return M2MPSK_E_INTERNAL;
  }
  /* Every association runs a full PSK handshake, so that the keystore
   * (validity, revocation) is consulted each time: no resumption. */
  SSL_CTX_set_options(s, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU |
                             SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_current_time_cb(s, time_cb);
  if (c->server) {
    SSL_CTX_set_psk_server_callback(s, server_psk_cb);
    SSL_CTX_set_tlsext_servername_callback(s, server_name_cb);
  } else {
    SSL_CTX_set_psk_client_callback(s, client_psk_cb);
  }
  *out = c;
  return M2MPSK_OK;
}

static void bssl_ctx_free(m2mpsk_engine_ctx *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ssl_ctx);
  free(ctx);
}

/* ---- connections --------------------------------------------------------- */

static int bssl_new(m2mpsk_engine **out, m2mpsk_engine_ctx *ctx,
                    m2mpsk_assoc *owner) {
  m2mpsk_engine *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return M2MPSK_E_NOMEM;
  e->owner = owner;
  e->dtls = ctx->dtls;
  e->server = ctx->server;
  e->ssl = SSL_new(ctx->ssl_ctx);
  BIO *bio = BIO_new(bio_method());
  if (e->ssl == NULL || bio == NULL) {
    BIO_free(bio);
    SSL_free(e->ssl);
    free(e);
    ERR_clear_error();
    return M2MPSK_E_NOMEM;
  }
  BIO_set_data(bio, e); /* the callbacks find the engine here */
  SSL_set_bio(e->ssl, bio, bio);
  if (e->server)
    SSL_set_accept_state(e->ssl);
  else
    SSL_set_connect_state(e->ssl);
  if (e->dtls)
    SSL_set_mtu(e->ssl, 1400);
  *out = e;
  return M2MPSK_OK;
}

static void bssl_free(m2mpsk_engine *e) {
  if (e == NULL)
    return;
  SSL_free(e->ssl);
  buf_release(e, &e->in);
  buf_release(e, &e->out);
  free(e);
}

static int bssl_set_mtu(m2mpsk_engine *e, unsigned mtu) {
  return SSL_set_mtu(e->ssl, mtu) ? M2MPSK_OK : M2MPSK_E_INVALID;
}

static int bssl_set_server_name(m2mpsk_engine *e, const char *host) {
  return SSL_set_tlsext_host_name(e->ssl, host) ? M2MPSK_OK : M2MPSK_E_NOMEM;
}

/* Looks at a datagram's DTLS records (type, epoch) without trusting them:
 * a ChangeCipherSpec after the key exchange, then an epoch-1 handshake
 * record (the Finished), means the handshake should complete now. */
static void dtls_note_records(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  int psk_before = e->psk_given;
  int hs0 = 0;
  while (n >= 13) {
    uint8_t type = d[0];
    unsigned epoch = ((unsigned)d[3] << 8) | d[4];
    size_t len = ((size_t)d[11] << 8) | d[12];
    if (type == 22 && epoch == 0)
      hs0 = 1;
    if (type == 20 && epoch == 0 && (psk_before || hs0))
      e->ccs_seen = 1;
    if (type == 22 && epoch == 1 && e->ccs_seen)
      e->bad_finished = 1;
    if (len > n - 13)
      break;
    d += 13 + len;
    n -= 13 + len;
  }
}

static HOT size_t bssl_buffered(const m2mpsk_engine *e) {
  return e->in.len;
}

static HOT int bssl_push(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  if (e->dtls) {
    if (e->server && !SSL_is_init_finished(e->ssl))
      dtls_note_records(e, data, len);
    return buf_push_datagram(e, &e->in, data, len) ? M2MPSK_OK : M2MPSK_E_NOMEM;
  }
  return buf_append(e, &e->in, data, len) ? M2MPSK_OK : M2MPSK_E_NOMEM;
}

/* `what` and `name` must be static strings (literals, or BoringSSL's
 * tables of alert and reason names). */
static void set_failure(m2mpsk_engine *e, m2mpsk_reason reason,
                        const char *what, const char *name) {
  e->reason = reason;
  e->what = what;
  e->name = name;
}

/* Clearing the thread's error queue walks all its slots; most calls find
 * it empty, and looking costs less.
 *
 * This module is the only user of its private BoringSSL (loaded
 * RTLD_LOCAL), and every path here that can leave an error queued clears
 * it (classify(), the waits, close, abort, export): the queue is empty
 * between calls. SSL_read and SSL_write, the per-record calls, therefore
 * skip the look before they run; a handshake still clears first. */
static void clear_errors(void) {
  if (ERR_peek_error() != 0)
    ERR_clear_error();
}

/* Turns the TLS library's error into a reason. Must run right after the
 * failing call, on the same thread (the error queue is thread-local). */
static COLD void classify(m2mpsk_engine *e, int ssl_error) {
  family_failure f = family_classify(ssl_error);
  if (e->nomem)
    set_failure(e, M2MPSK_REASON_INTERNAL, "out of memory buffering output",
                NULL);
  else
    set_failure(e, f.reason, f.what, f.name);
}

static int bssl_handshake(m2mpsk_engine *e) {
  clear_errors();
  int r = SSL_do_handshake(e->ssl);
  if (e->key_out) {
    /* The key passed through frames below this one (family.h). */
    e->key_out = 0;
    family_burn_stack();
  }
  if (r == 1) {
    /* Hold no handshake-only buffers once established. */
    e->established = 1;
    if (e->in.len == 0)
      buf_release(e, &e->in);
    if (e->out.len == 0)
      buf_release(e, &e->out);
    return M2MPSK_ENG_DONE;
  }
  int err = SSL_get_error(e->ssl, r);
  if (err == SSL_ERROR_WANT_READ && !e->nomem) {
    clear_errors();
    if (e->bad_finished && e->psk_given) {
      /* The peer's Finished arrived after its key exchange and did not
       * verify; DTLS dropped it silently. Say so instead of timing out. */
      set_failure(e, M2MPSK_REASON_BAD_KEY,
                  "peer's Finished did not verify (different keys)", NULL);
      bssl_abort(e, SSL_AD_DECRYPT_ERROR);
      return M2MPSK_ENG_FAIL;
    }
    e->bad_finished = 0;
    return M2MPSK_ENG_WANT;
  }
  classify(e, err);
  return M2MPSK_ENG_FAIL;
}

static HOT size_t bssl_pending(const m2mpsk_engine *e) {
  return e->dtls ? buf_next_datagram(&e->out) : e->out.len;
}

static HOT int bssl_drain(m2mpsk_engine *e, uint8_t *out, size_t cap,
                          size_t *out_len) {
  if (e->out.len == 0)
    return M2MPSK_E_AGAIN;
  if (e->dtls) {
    size_t n = buf_next_datagram(&e->out);
    if (n > cap)
      return M2MPSK_E_BUFFER;
    memcpy(out, e->out.p + e->out.off + 2, n);
    buf_consume(e, &e->out, n + 2);
    *out_len = n;
    return M2MPSK_OK;
  }
  size_t n = e->out.len < cap ? e->out.len : cap;
  memcpy(out, e->out.p + e->out.off, n);
  buf_consume(e, &e->out, n);
  *out_len = n;
  return M2MPSK_OK;
}

static HOT int bssl_read(m2mpsk_engine *e, uint8_t *out, size_t cap,
                         size_t *out_len) {
  int r = SSL_read(e->ssl, out, cap > INT_MAX ? INT_MAX : (int)cap);
  if (r > 0) {
    *out_len = (size_t)r;
    return M2MPSK_OK;
  }
  int err = SSL_get_error(e->ssl, r);
  if (err == SSL_ERROR_ZERO_RETURN) {
    clear_errors();
    return M2MPSK_E_CLOSED;
  }
  if (err == SSL_ERROR_WANT_READ && !e->nomem) {
    clear_errors();
    return M2MPSK_E_AGAIN;
  }
  classify(e, err);
  return M2MPSK_E_FAILED;
}

static HOT int bssl_write(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  while (len > 0) {
    int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
    int r = SSL_write(e->ssl, data, chunk);
    if (r <= 0) {
      int err = SSL_get_error(e->ssl, r);
      int nomem = e->nomem;
      classify(e, err);
      return nomem ? M2MPSK_E_NOMEM : M2MPSK_E_FAILED;
    }
    data += r;
    len -= (size_t)r;
  }
  return M2MPSK_OK;
}

static int bssl_close(m2mpsk_engine *e) {
  ERR_clear_error();
  int r = SSL_shutdown(e->ssl);
  if (r < 0) {
    classify(e, SSL_get_error(e->ssl, r));
    return M2MPSK_E_FAILED;
  }
  return M2MPSK_OK;
}

static void bssl_abort(m2mpsk_engine *e, uint8_t alert) {
  ERR_clear_error();
  SSL_send_fatal_alert(e->ssl, alert);
  ERR_clear_error();
}

static int bssl_timer(const m2mpsk_engine *e, uint64_t *remaining_ms) {
  struct timeval tv;
  if (!e->dtls || !DTLSv1_get_timeout(e->ssl, &tv))
    return 0;
  *remaining_ms =
      (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
  return 1;
}

static int bssl_on_timer(m2mpsk_engine *e) {
  if (!e->dtls)
    return M2MPSK_OK;
  ERR_clear_error();
  if (DTLSv1_handle_timeout(e->ssl) < 0) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_E_FAILED;
  }
  return M2MPSK_OK;
}

static const char *bssl_suite(const m2mpsk_engine *e) {
  const SSL_CIPHER *c = SSL_get_current_cipher(e->ssl);
  return c ? SSL_CIPHER_standard_name(c) : NULL;
}

static const char *bssl_version(const m2mpsk_engine *e) {
  return SSL_get_version(e->ssl);
}

static const char *bssl_psk_identity(const m2mpsk_engine *e) {
  return SSL_get_psk_identity(e->ssl);
}

static int bssl_export(const m2mpsk_engine *e, uint8_t *out, size_t out_len,
                       const char *label, const uint8_t *context,
                       size_t context_len) {
  ERR_clear_error();
  int ok =
      SSL_export_keying_material(e->ssl, out, out_len, label, strlen(label),
                                 context, context_len, context != NULL);
  ERR_clear_error();
  return ok ? M2MPSK_OK : M2MPSK_E_INTERNAL;
}

static m2mpsk_reason bssl_failure(m2mpsk_engine *e, char *detail,
                                  size_t detail_cap) {
  if (detail_cap > 0)
    snprintf(detail, detail_cap, "%s%s%s", e->what ? e->what : "",
             e->name ? ": " : "", e->name ? e->name : "");
  return e->reason;
}

static const m2mpsk_engine_ops k_ops = {
    .abi = M2MPSK_ENGINE_ABI,
    .backend_name = bssl_backend_name,
    .suite_count = bssl_suite_count,
    .suite_name = bssl_suite_name,
    .check_suites = bssl_check_suites,
    .default_suites = bssl_default_suites,
    .ctx_new = bssl_ctx_new,
    .ctx_free = bssl_ctx_free,
    .set_now = bssl_set_now,
    .engine_new = bssl_new,
    .engine_free = bssl_free,
    .set_mtu = bssl_set_mtu,
    .set_server_name = bssl_set_server_name,
    .push = bssl_push,
    .buffered = bssl_buffered,
    .handshake = bssl_handshake,
    .pending = bssl_pending,
    .drain = bssl_drain,
    .read = bssl_read,
    .write = bssl_write,
    .close = bssl_close,
    .abort = bssl_abort,
    .timer = bssl_timer,
    .on_timer = bssl_on_timer,
    .suite = bssl_suite,
    .version = bssl_version,
    .psk_identity = bssl_psk_identity,
    .export_keying = bssl_export,
    .failure = bssl_failure,
};

/* Exported from the module (default visibility), and linked directly into
 * the static library used by the unit tests. */
__attribute__((visibility("default"))) const m2mpsk_engine_ops *
m2mpsk_tls_module(const m2mpsk_engine_hooks *hooks) {
  g_hooks = hooks;
  return &k_ops;
}
