/* The OpenSSL engine's TLS1-PRF provider: how a token key's handshake gets
 * its master secret without Kpsa ever entering the process (issue 20; see
 * docs/pkcs11.md for the evidence from OpenSSL 3.0's source).
 *
 * OpenSSL 3 computes every TLS 1.2 / DTLS 1.2 PRF through
 * EVP_KDF_fetch(ssl_ctx->libctx, "TLS1-PRF", ssl_ctx->propq): the master
 * secret from the premaster (ssl_generate_master_secret ->
 * tls1_generate_master_secret, with or without the extended master secret),
 * then the key block and the Finished from the master secret. Every
 * SSL_CTX of this engine lives in a private library context holding this
 * provider and "default", and asks for "?provider=m2mpsk-prf": the
 * TLS1-PRF comes from here, everything else from "default".
 *
 * For a token key the PSK callback hands OpenSSL a random handle of the
 * key's length. OpenSSL builds the RFC 4279 premaster around it
 * (uint16 other_len, other, uint16 psk_len, psk), so a derive whose secret
 * has that shape, on the thread of an association's SSL_do_handshake()
 * (t_current), is offered to the core (hooks->token_master_secret): if the
 * tail is that association's handle, the host's token computes
 * P_hash(prefix || Kpsa, seed); a failure fails the derive, never falls
 * back. Anything else goes to the default provider's TLS1-PRF, unchanged.
 *
 * Included once, by openssl.c, after g_hooks and struct m2mpsk_engine. */
#ifndef M2MPSK_TLS_OPENSSL_PRF_H
#define M2MPSK_TLS_OPENSSL_PRF_H

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>

#define PRF_PROVIDER "m2mpsk-prf"
#define PRF_SEED_MAX 1024 /* OpenSSL's TLS1_PRF_MAXBUF */

/* The association whose SSL_do_handshake() runs on this thread. */
static _Thread_local m2mpsk_engine *t_current;

static OSSL_LIB_CTX *g_libctx;
static EVP_KDF *g_default_prf; /* "default"'s TLS1-PRF, in g_libctx */
static pthread_once_t g_libctx_once = PTHREAD_ONCE_INIT;

typedef struct prf_ctx {
  char md[64];
  char propq[128];
  uint8_t *secret;
  size_t secret_len;
  uint8_t seed[PRF_SEED_MAX];
  size_t seed_len;
} prf_ctx;

static void *prf_new(void *provctx) {
  (void)provctx;
  return OPENSSL_zalloc(sizeof(prf_ctx));
}

static void prf_reset(void *vctx) {
  prf_ctx *c = vctx;
  OPENSSL_clear_free(c->secret, c->secret_len);
  OPENSSL_cleanse(c, sizeof(*c));
}

static void prf_free(void *vctx) {
  if (vctx != NULL) {
    prf_reset(vctx);
    OPENSSL_free(vctx);
  }
}

static void *prf_dup(void *vctx) {
  const prf_ctx *s = vctx;
  prf_ctx *d = OPENSSL_memdup(s, sizeof(*s));
  if (d != NULL && s->secret != NULL &&
      (d->secret = OPENSSL_memdup(s->secret, s->secret_len)) == NULL) {
    OPENSSL_clear_free(d, sizeof(*d));
    d = NULL;
  }
  return d;
}

/* As OpenSSL's own TLS1-PRF: a SECRET replaces, SEEDs append. */
static int prf_set(void *vctx, const OSSL_PARAM params[]) {
  prf_ctx *c = vctx;
  const OSSL_PARAM *p;
  char *s;
  if (params == NULL)
    return 1;
  if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DIGEST)) != NULL &&
      !OSSL_PARAM_get_utf8_string(p, (s = c->md, &s), sizeof(c->md)))
    return 0;
  if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_PROPERTIES)) !=
          NULL &&
      !OSSL_PARAM_get_utf8_string(p, (s = c->propq, &s), sizeof(c->propq)))
    return 0;
  if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SECRET)) != NULL) {
    OPENSSL_clear_free(c->secret, c->secret_len);
    c->secret = NULL;
    c->secret_len = 0;
    if (!OSSL_PARAM_get_octet_string(p, (void **)&c->secret, 0, &c->secret_len))
      return 0;
  }
  for (p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SEED); p != NULL;
       p = OSSL_PARAM_locate_const(p + 1, OSSL_KDF_PARAM_SEED)) {
    void *dst = c->seed + c->seed_len;
    size_t n = 0;
    if (p->data_size != 0 && p->data != NULL &&
        !OSSL_PARAM_get_octet_string(p, &dst, sizeof(c->seed) - c->seed_len,
                                     &n))
      return 0;
    c->seed_len += n;
  }
  return 1;
}

static const OSSL_PARAM *prf_settable(void *vctx, void *provctx) {
  static const OSSL_PARAM k[] = {
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, NULL, 0),
      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, NULL, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SECRET, NULL, 0),
      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SEED, NULL, 0), OSSL_PARAM_END};
  (void)vctx;
  (void)provctx;
  return k;
}

static const OSSL_PARAM *prf_gettable(void *vctx, void *provctx) {
  static const OSSL_PARAM k[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, NULL),
                                 OSSL_PARAM_END};
  (void)vctx;
  (void)provctx;
  return k;
}

static int prf_get(void *vctx, OSSL_PARAM params[]) {
  OSSL_PARAM *p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE);
  (void)vctx;
  return p == NULL ? -2 : OSSL_PARAM_set_size_t(p, SIZE_MAX);
}

/* "SHA256" or "SHA384" for the PRF's digest, NULL for any other. */
static const char *prf_digest(const char *md) {
  const char *r = NULL;
  EVP_MD *m = EVP_MD_fetch(g_libctx, md, "provider=default");
  if (m != NULL)
    r = EVP_MD_is_a(m, "SHA2-256")   ? "SHA256"
        : EVP_MD_is_a(m, "SHA2-384") ? "SHA384"
                                     : NULL;
  EVP_MD_free(m);
  return r;
}

/* The length of the psk at the end of an RFC 4279 premaster, or 0 when the
 * secret does not have that shape. */
static size_t premaster_psk_len(const uint8_t *s, size_t n) {
  if (n < 4)
    return 0;
  size_t other = ((size_t)s[0] << 8) | s[1];
  if (n < 4 + other)
    return 0;
  size_t psk = ((size_t)s[2 + other] << 8) | s[3 + other];
  return n == 4 + other + psk ? psk : 0;
}

static int prf_default(prf_ctx *c, uint8_t *out, size_t out_len) {
  EVP_KDF_CTX *k = EVP_KDF_CTX_new(g_default_prf);
  if (k == NULL)
    return 0;
  OSSL_PARAM p[5], *q = p;
  *q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, c->md, 0);
  if (c->propq[0] != '\0')
    *q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_PROPERTIES, c->propq,
                                            0);
  *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, c->secret,
                                           c->secret_len);
  *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, c->seed,
                                           c->seed_len);
  *q = OSSL_PARAM_construct_end();
  int ok = EVP_KDF_derive(k, out, out_len, p) > 0;
  EVP_KDF_CTX_free(k);
  return ok;
}

static int prf_derive(void *vctx, unsigned char *out, size_t out_len,
                      const OSSL_PARAM params[]) {
  prf_ctx *c = vctx;
  if (!prf_set(c, params) || c->md[0] == '\0' || c->secret == NULL ||
      c->seed_len == 0 || out_len == 0)
    return 0;
  m2mpsk_engine *e = t_current;
  size_t psk_len = premaster_psk_len(c->secret, c->secret_len);
  if (e != NULL && psk_len > 0) {
    size_t prefix_len = c->secret_len - psk_len;
    int r = g_hooks->token_master_secret(
        e->owner, prf_digest(c->md), c->secret, prefix_len,
        c->secret + prefix_len, psk_len, c->seed, c->seed_len, out, out_len);
    if (r != 0)
      return r > 0;
  }
  return prf_default(c, out, out_len);
}

#define PRF_FN(f) ((void (*)(void))(f))
static const OSSL_DISPATCH k_prf_fns[] = {
    {OSSL_FUNC_KDF_NEWCTX, PRF_FN(prf_new)},
    {OSSL_FUNC_KDF_DUPCTX, PRF_FN(prf_dup)},
    {OSSL_FUNC_KDF_FREECTX, PRF_FN(prf_free)},
    {OSSL_FUNC_KDF_RESET, PRF_FN(prf_reset)},
    {OSSL_FUNC_KDF_DERIVE, PRF_FN(prf_derive)},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, PRF_FN(prf_settable)},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, PRF_FN(prf_set)},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, PRF_FN(prf_gettable)},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, PRF_FN(prf_get)},
    {0, NULL}};

static const OSSL_ALGORITHM k_prf_algs[] = {
    {"TLS1-PRF", "provider=" PRF_PROVIDER, k_prf_fns,
     "TLS1-PRF; a token key's master secret is computed by its host"},
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM *prf_query(void *provctx, int op, int *no_cache) {
  (void)provctx;
  *no_cache = 0;
  return op == OSSL_OP_KDF ? k_prf_algs : NULL;
}

static const OSSL_DISPATCH k_prf_provider[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, PRF_FN(prf_query)}, {0, NULL}};

static int prf_provider_init(const OSSL_CORE_HANDLE *handle,
                             const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
                             void **provctx) {
  static int ours; /* the provider keeps no state */
  (void)handle;
  (void)in;
  *out = k_prf_provider;
  *provctx = &ours;
  return 1;
}

/* The private library context, made once per process; it lives as long as
 * the process (the module is never unloaded). */
static void libctx_init(void) {
  OSSL_LIB_CTX *l = OSSL_LIB_CTX_new();
  if (l == NULL)
    return;
  if (!OSSL_PROVIDER_add_builtin(l, PRF_PROVIDER, prf_provider_init) ||
      OSSL_PROVIDER_load(l, PRF_PROVIDER) == NULL ||
      OSSL_PROVIDER_load(l, "default") == NULL ||
      (g_default_prf = EVP_KDF_fetch(l, OSSL_KDF_NAME_TLS1_PRF,
                                     "provider=default")) == NULL) {
    ERR_clear_error();
    OSSL_LIB_CTX_free(l);
    return;
  }
  g_libctx = l;
}

/* Every association runs in the default library context but those that
 * may hand OpenSSL a token key's handle: theirs is an SSL_CTX of the
 * private one, set up as the context's own, made when the first of them
 * comes, so that the provider costs nothing to a process without token
 * keys. */
static SSL_CTX *backend_token_ssl_ctx(m2mpsk_engine_ctx *c) {
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  SSL_CTX *s = atomic_load_explicit(&c->token_ssl_ctx, memory_order_acquire);
  if (s != NULL)
    return s;
  pthread_once(&g_libctx_once, libctx_init);
  if (g_libctx == NULL)
    return NULL;
  pthread_mutex_lock(&mu);
  s = atomic_load_explicit(&c->token_ssl_ctx, memory_order_relaxed);
  if (s == NULL &&
      (s = SSL_CTX_new_ex(g_libctx, "?provider=" PRF_PROVIDER,
                          c->dtls ? DTLS_method() : TLS_method())) != NULL) {
    if (ssl_ctx_setup(c, s, c->suites) == M2MPSK_OK) {
      atomic_store_explicit(&c->token_ssl_ctx, s, memory_order_release);
    } else {
      SSL_CTX_free(s);
      s = NULL;
    }
  }
  if (s == NULL)
    ERR_clear_error();
  pthread_mutex_unlock(&mu);
  return s;
}

#endif /* M2MPSK_TLS_OPENSSL_PRF_H */
