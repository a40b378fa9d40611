/* The engine layer both backends share: buffers, the datagram BIO, record
 * notes, the PSK callbacks' glue, and the per-record calls (push, drain,
 * read, write). BoringSSL keeps OpenSSL's API, so this is one source; it is
 * included once by each backend file, after that backend has defined
 *   - struct m2mpsk_engine_ctx, starting with FAMILY_CTX_FIELDS,
 *   - struct m2mpsk_engine, starting with FAMILY_ENGINE_FIELDS,
 *   - k_suites[] (suite_name) and g_hooks,
 * and compiled into each backend module against that module's own TLS
 * library (the two export the same symbol names, so shared code that calls
 * SSL_* cannot be linked once for both). Where the backends differ, the
 * backend defines the static functions declared under "what each backend
 * provides" below. */
#ifndef M2MPSK_TLS_COMMON_H
#define M2MPSK_TLS_COMMON_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "family.h"

/* ---- what each backend provides ------------------------------------------ */

/* A datagram (DTLS) the BIO hands the library, and what the library wrote
 * (either transport). */
static void backend_on_read(m2mpsk_engine *e, const uint8_t *d, size_t n);
static void backend_on_write(m2mpsk_engine *e, const uint8_t *d, size_t n);
/* A BIO control beyond flush and the pending counts; returns its result. */
static long backend_ctrl(m2mpsk_engine *e, int cmd, void *parg);
/* The library's options for a new context (suites in `list`, in the
 * library's names), and for a new SSL; M2MPSK_OK or a status. */
static int backend_ctx_setup(m2mpsk_engine_ctx *c, SSL_CTX *s,
                             const char *list);
static int backend_engine_setup(m2mpsk_engine *e);
/* What the context and the engine hold beyond the common fields, freed
 * with them. */
static void backend_ctx_clear(m2mpsk_engine_ctx *c);
static void backend_engine_clear(m2mpsk_engine *e);
/* Before SSL_do_handshake(): BEGIN_GO_ON, else an M2MPSK_ENG_* result
 * (M2MPSK_ENG_FAIL with the failure set). After it, with its return
 * value. */
enum { BEGIN_GO_ON = 2 };
static int backend_handshake_begin(m2mpsk_engine *e);
static void backend_handshake_end(m2mpsk_engine *e, int r);
/* Application data arrived from the peer. */
static void backend_on_data(m2mpsk_engine *e);
static void engine_abort(m2mpsk_engine *e, uint8_t alert);
/* The SSL_CTX for an association that may hand its engine a token key's
 * handle: one of the backend's own, made on first use (OpenSSL's PRF
 * provider), or c->ssl_ctx where the backend cannot use token keys
 * (BoringSSL: the PSK callback refuses them). NULL when it cannot be made. */
static SSL_CTX *backend_token_ssl_ctx(m2mpsk_engine_ctx *c);

/* ---- suites -------------------------------------------------------------- */

static size_t fam_suite_count(void) {
  return sizeof(k_suites) / sizeof(k_suites[0]);
}

static const char *fam_suite_name(size_t i) {
  return i < fam_suite_count() ? k_suites[i].iana : NULL;
}

/* Translates the IANA list into the library's names; out may be NULL. */
static int translate_suites(const char *iana, char *out, size_t cap) {
  return family_translate_suites(k_suites, fam_suite_count(), iana, out, cap);
}

static int fam_check_suites(const char *iana_names) {
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
  /* Here off is 0. Only `in` and `out` may borrow the engine's room. */
  if (b->p == NULL && extra <= SMALL_BUF && (b == &e->in || b == &e->out) &&
      e->in.p != e->small && e->out.p != e->small) {
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
    backend_on_read(e, (const uint8_t *)out, n);
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
  backend_on_write(e, d, (size_t)len);
  return len;
}

static long bio_ctrl(BIO *bio, int cmd, long larg, void *parg) {
  (void)larg;
  m2mpsk_engine *e = BIO_get_data(bio);
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_CTRL_PENDING: return e ? (long)e->in.len : 0;
  case BIO_CTRL_WPENDING: return e ? (long)e->out.len : 0;
  default: return e ? backend_ctrl(e, cmd, parg) : 0;
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
#ifdef OPENSSL_IS_BORINGSSL
    m = BIO_meth_new(0, "m2mpsk");
#else
    m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "m2mpsk");
#endif
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

static HOT void fam_set_now(uint64_t now_ms) {
  t_now_ms = now_ms;
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
  unsigned n = g_hooks->on_server_psk(e->owner, identity ? identity : "", psk,
                                      max_psk_len);
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

static void fam_ctx_free(m2mpsk_engine_ctx *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ssl_ctx);
  backend_ctx_clear(ctx);
  free(ctx);
}

/* One SSL_CTX of a context: TLS 1.2 or DTLS 1.2 only, no resumption, the
 * PSK callbacks, and the backend's own settings. */
static int ssl_ctx_setup(m2mpsk_engine_ctx *c, SSL_CTX *s, const char *list) {
  uint16_t v = c->dtls ? DTLS1_2_VERSION : TLS1_2_VERSION;
  if (!SSL_CTX_set_min_proto_version(s, v) ||
      !SSL_CTX_set_max_proto_version(s, v))
    return M2MPSK_E_INTERNAL;
  /* Every association runs a full PSK handshake, so that the keystore
   * (validity, revocation) is consulted each time: no resumption. */
  SSL_CTX_set_options(s, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU |
                             SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
  if (c->server) {
    SSL_CTX_set_psk_server_callback(s, server_psk_cb);
    SSL_CTX_set_tlsext_servername_callback(s, server_name_cb);
  } else {
    SSL_CTX_set_psk_client_callback(s, client_psk_cb);
  }
  return backend_ctx_setup(c, s, list);
}

static int fam_ctx_new(m2mpsk_engine_ctx **out, m2mpsk_role role,
                       m2mpsk_transport transport, const char *iana_names) {
  char list[1024];
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
    ERR_clear_error();
    free(c);
    return M2MPSK_E_NOMEM;
  }
  rc = ssl_ctx_setup(c, c->ssl_ctx, list);
  if (rc != M2MPSK_OK) {
    ERR_clear_error();
    fam_ctx_free(c);
    return rc;
  }
  *out = c;
  return M2MPSK_OK;
}

/* ---- connections --------------------------------------------------------- */

static int fam_new(m2mpsk_engine **out, m2mpsk_engine_ctx *ctx,
                   m2mpsk_assoc *owner) {
  m2mpsk_engine *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return M2MPSK_E_NOMEM;
  e->owner = owner;
  e->dtls = (uint8_t)ctx->dtls;
  e->server = (uint8_t)ctx->server;
  /* An association that may hand over a token key's handle runs in the
   * backend's token context (openssl_prf.h). */
  SSL_CTX *sc = g_hooks->wants_token_keys(owner) ? backend_token_ssl_ctx(ctx)
                                                 : ctx->ssl_ctx;
  e->ssl = sc != NULL ? SSL_new(sc) : NULL;
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
  int rc = backend_engine_setup(e);
  if (rc != M2MPSK_OK) {
    SSL_free(e->ssl);
    free(e);
    ERR_clear_error();
    return rc;
  }
  *out = e;
  return M2MPSK_OK;
}

static void fam_free(m2mpsk_engine *e) {
  if (e == NULL)
    return;
  SSL_free(e->ssl);
  buf_release(e, &e->in);
  buf_release(e, &e->out);
  backend_engine_clear(e);
  free(e);
}

static int fam_set_mtu(m2mpsk_engine *e, unsigned mtu) {
  return SSL_set_mtu(e->ssl, mtu) ? M2MPSK_OK : M2MPSK_E_INVALID;
}

static int fam_set_server_name(m2mpsk_engine *e, const char *host) {
#ifdef OPENSSL_IS_BORINGSSL
  int ok = SSL_set_tlsext_host_name(e->ssl, host);
#else
  /* SSL_set_tlsext_host_name() itself, whose cast drops const (clang's
   * -Wcast-qual): OpenSSL copies the name and never writes to it. */
  int ok = (int)SSL_ctrl(e->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME,
                         TLSEXT_NAMETYPE_host_name, (void *)(uintptr_t)host);
#endif
  ERR_clear_error();
  return ok ? M2MPSK_OK : M2MPSK_E_NOMEM;
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

static HOT size_t fam_buffered(const m2mpsk_engine *e) {
  return e->in.len;
}

static HOT int fam_push(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  if (e->dtls) {
    if (e->server && !SSL_is_init_finished(e->ssl))
      dtls_note_records(e, data, len);
    return buf_push_datagram(e, &e->in, data, len) ? M2MPSK_OK : M2MPSK_E_NOMEM;
  }
  return buf_append(e, &e->in, data, len) ? M2MPSK_OK : M2MPSK_E_NOMEM;
}

/* `what` and `name` must be static strings. */
static void set_failure(m2mpsk_engine *e, m2mpsk_reason reason,
                        const char *what, const char *name) {
  e->reason = reason;
  e->what = what;
  e->name = name;
}

/* Before a per-record call (SSL_read, SSL_write). BoringSSL: clearing the
 * thread's error queue walks all its slots, and this module is the only
 * user of its private BoringSSL (loaded RTLD_LOCAL); every path here that
 * can leave an error queued clears it (classify(), the waits, close,
 * abort, export), so the queue is empty between calls and the per-record
 * calls skip the look. OpenSSL is the system's, which other code in the
 * process may leave errors in: clear it. */
static HOT void clear_before_record(void) {
#ifndef OPENSSL_IS_BORINGSSL
  ERR_clear_error();
#endif
}

/* Clearing the queue costs more than looking, and most calls find it
 * empty. */
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
  else if (e->stopped)
    set_failure(e, M2MPSK_REASON_INTERNAL, "association aborted", NULL);
  else
    set_failure(e, f.reason, f.what, f.name);
}

static int fam_handshake(m2mpsk_engine *e) {
  if (e->stopped) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_ENG_FAIL;
  }
  int pre = backend_handshake_begin(e);
  if (pre != BEGIN_GO_ON)
    return pre;
  clear_errors();
  int r = SSL_do_handshake(e->ssl);
  backend_handshake_end(e, r);
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
      engine_abort(e, SSL_AD_DECRYPT_ERROR);
      return M2MPSK_ENG_FAIL;
    }
    e->bad_finished = 0;
    return M2MPSK_ENG_WANT;
  }
  classify(e, err);
  return M2MPSK_ENG_FAIL;
}

static HOT size_t fam_pending(const m2mpsk_engine *e) {
  return e->dtls ? buf_next_datagram(&e->out) : e->out.len;
}

static HOT int fam_drain(m2mpsk_engine *e, uint8_t *out, size_t cap,
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

static HOT int fam_read(m2mpsk_engine *e, uint8_t *out, size_t cap,
                        size_t *out_len) {
  if (e->stopped) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_E_FAILED;
  }
  clear_before_record();
  int r = SSL_read(e->ssl, out, cap > INT_MAX ? INT_MAX : (int)cap);
  if (r > 0) {
    backend_on_data(e);
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

static HOT int fam_write(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  if (e->stopped) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_E_FAILED;
  }
  while (len > 0) {
    int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
    clear_before_record();
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

static int fam_close(m2mpsk_engine *e) {
  if (e->stopped)
    return M2MPSK_E_FAILED;
  ERR_clear_error();
  int r = SSL_shutdown(e->ssl);
  if (r < 0) {
    classify(e, SSL_get_error(e->ssl, r));
    return M2MPSK_E_FAILED;
  }
  return M2MPSK_OK;
}

/* DTLSv1_get_timeout()'s answer in whole milliseconds, rounded up. */
static int fam_library_timer(const m2mpsk_engine *e, uint64_t *remaining_ms) {
  struct timeval tv;
  if (!e->dtls || e->stopped || !DTLSv1_get_timeout(e->ssl, &tv))
    return 0;
  *remaining_ms =
      (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
  return 1;
}

static int fam_handle_timeout(m2mpsk_engine *e) {
  ERR_clear_error();
  if (DTLSv1_handle_timeout(e->ssl) < 0) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_E_FAILED;
  }
  ERR_clear_error();
  return M2MPSK_OK;
}

static const char *fam_suite(const m2mpsk_engine *e) {
  const SSL_CIPHER *c = SSL_get_current_cipher(e->ssl);
  return c ? SSL_CIPHER_standard_name(c) : NULL;
}

static const char *fam_version(const m2mpsk_engine *e) {
  return SSL_get_version(e->ssl);
}

static const char *fam_psk_identity(const m2mpsk_engine *e) {
  return SSL_get_psk_identity(e->ssl);
}

static int fam_export(const m2mpsk_engine *e, uint8_t *out, size_t out_len,
                      const char *label, const uint8_t *context,
                      size_t context_len) {
  ERR_clear_error();
  int ok =
      SSL_export_keying_material(e->ssl, out, out_len, label, strlen(label),
                                 context, context_len, context != NULL);
  ERR_clear_error();
  return ok == 1 ? M2MPSK_OK : M2MPSK_E_INTERNAL;
}

static m2mpsk_reason fam_failure(m2mpsk_engine *e, char *detail,
                                 size_t detail_cap) {
  if (detail_cap > 0)
    snprintf(detail, detail_cap, "%s%s%s", e->what ? e->what : "",
             e->name ? ": " : "", e->name ? e->name : "");
  return e->reason;
}

/* The ops both backends fill alike; each adds its own name, default suites,
 * set_now, abort, timer, on_timer and any optional slot. */
#define FAMILY_OPS                                                             \
  .abi = M2MPSK_ENGINE_ABI, .suite_count = fam_suite_count,                    \
  .suite_name = fam_suite_name, .check_suites = fam_check_suites,              \
  .ctx_new = fam_ctx_new, .ctx_free = fam_ctx_free, .set_now = fam_set_now,    \
  .engine_new = fam_new, .engine_free = fam_free, .set_mtu = fam_set_mtu,      \
  .set_server_name = fam_set_server_name, .buffered = fam_buffered,            \
  .handshake = fam_handshake, .pending = fam_pending, .drain = fam_drain,      \
  .read = fam_read, .write = fam_write, .close = fam_close,                    \
  .suite = fam_suite, .version = fam_version,                                  \
  .psk_identity = fam_psk_identity, .export_keying = fam_export,               \
  .failure = fam_failure

#endif /* M2MPSK_TLS_COMMON_H */
