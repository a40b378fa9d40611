/* The BoringSSL backend (Debian android-libboringssl-dev).
 *
 * Each association owns one SSL whose single BIO is ours: input the caller
 * fed waits in `in`, output waits in `out` until drained. For DTLS both
 * buffers hold whole datagrams, each behind a 2-byte length, because a
 * memory BIO would merge them. All of that is shared with the OpenSSL
 * backend (common.h); this file keeps what differs. BoringSSL's clock is
 * the caller's monotonic time, handed over per thread: its time callback
 * gets no SSL pointer.
 *
 * Residual copy: during a handshake BoringSSL copies the PSK into a stack
 * buffer of its own and derives the master secret from it; that copy and
 * the session keys live in BoringSSL's memory, outside our control. */
#include <stdint.h>
#include <sys/time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "engine.h"
#include "family.h"

/* Set once by m2mpsk_tls_module(), before any other call. */
static const m2mpsk_engine_hooks *g_hooks;

/* The PSK suites BoringSSL implements (TLS 1.2 / DTLS 1.2). */
static const suite_name k_suites[] = {
    {"TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA"},
    {"TLS_PSK_WITH_AES_256_CBC_SHA", "PSK-AES256-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", "ECDHE-PSK-AES128-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA", "ECDHE-PSK-AES256-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
     "ECDHE-PSK-CHACHA20-POLY1305"},
};

struct m2mpsk_engine_ctx {
  FAMILY_CTX_FIELDS;
};

struct m2mpsk_engine {
  FAMILY_ENGINE_FIELDS;
};

#include "common.h"

static const char *bssl_backend_name(void) {
  return "boringssl";
}

static const char *bssl_default_suites(void) {
  return "TLS_PSK_WITH_AES_128_CBC_SHA:TLS_PSK_WITH_AES_256_CBC_SHA";
}

/* ---- what differs: nothing to watch in the BIO --------------------------- */

static void backend_on_read(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  (void)e, (void)d, (void)n;
}

static void backend_on_write(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  (void)e, (void)d, (void)n;
}

static long backend_ctrl(m2mpsk_engine *e, int cmd, void *parg) {
  (void)e, (void)cmd, (void)parg;
  return 0;
}

static void backend_on_data(m2mpsk_engine *e) {
  (void)e;
}

/* ---- clock --------------------------------------------------------------- */

static void time_cb(const SSL *ssl, struct timeval *out) {
  (void)ssl;
  out->tv_sec = (time_t)(t_now_ms / 1000);
  out->tv_usec = (suseconds_t)((t_now_ms % 1000) * 1000);
}

/* ---- contexts and connections -------------------------------------------- */

static int backend_ctx_setup(m2mpsk_engine_ctx *c, SSL_CTX *s,
                             const char *list) {
  (void)c;
  if (!SSL_CTX_set_strict_cipher_list(s, list))
    return M2MPSK_E_INTERNAL;
  SSL_CTX_set_current_time_cb(s, time_cb);
  return M2MPSK_OK;
}

static void backend_ctx_clear(m2mpsk_engine_ctx *c) {
  (void)c;
}

static int backend_engine_setup(m2mpsk_engine *e) {
  (void)e;
  return M2MPSK_OK;
}

static void backend_engine_clear(m2mpsk_engine *e) {
  (void)e;
}

static int backend_handshake_begin(m2mpsk_engine *e) {
  (void)e;
  return BEGIN_GO_ON;
}

static void backend_handshake_end(m2mpsk_engine *e, int r) {
  (void)e, (void)r;
}

static void engine_abort(m2mpsk_engine *e, uint8_t alert) {
  ERR_clear_error();
  SSL_send_fatal_alert(e->ssl, alert);
  ERR_clear_error();
}

/* BoringSSL's DTLS timer runs on time_cb(), the caller's clock. */
static int bssl_timer(const m2mpsk_engine *e, uint64_t *remaining_ms) {
  return fam_library_timer(e, remaining_ms);
}

static int bssl_on_timer(m2mpsk_engine *e) {
  return e->dtls ? fam_handle_timeout(e) : M2MPSK_OK;
}

/* BoringSSL has no way to replace its PRF: no context for token keys. */
static SSL_CTX *backend_token_ssl_ctx(m2mpsk_engine_ctx *c) {
  return c->ssl_ctx;
}

static const m2mpsk_engine_ops k_ops = {
    FAMILY_OPS,
    .backend_name = bssl_backend_name,
    .default_suites = bssl_default_suites,
    .push = fam_push,
    .abort = engine_abort,
    .timer = bssl_timer,
    .on_timer = bssl_on_timer,
};

/* Exported from the module (default visibility), and linked directly into
 * the static library used by the unit tests. */
__attribute__((visibility("default"))) const m2mpsk_engine_ops *
m2mpsk_tls_module(const m2mpsk_engine_hooks *hooks) {
  g_hooks = hooks;
  return &k_ops;
}
