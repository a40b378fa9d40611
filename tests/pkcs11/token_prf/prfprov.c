/* See prfprov.h.  Mirrors providers/implementations/kdfs/tls1_prf.c of
 * OpenSSL 3.0 for the parameters (SECRET replaces, SEEDs concatenate). */
#include "prfprov.h"

#include <string.h>
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

#define SEED_MAX 1024 /* TLS1_PRF_MAXBUF */
#define MAX_HANDLES 16

struct handle_ent {
    int used;
    unsigned char h[PRFPROV_MAX_PSK];
    size_t len;
    struct prf_token *tok;
};

/* The test is single-threaded: no lock. */
static struct handle_ent reg[MAX_HANDLES];
static struct prfprov_stats st;
static EVP_KDF *inner_kdf; /* default's TLS1-PRF, from the global libctx */

int prfprov_handle_new(struct prf_token *tok, unsigned char *handle)
{
    size_t i;
    if (tok->klen == 0 || tok->klen > PRFPROV_MAX_PSK || RAND_bytes(handle, (int)tok->klen) != 1)
        return 0;
    for (i = 0; i < MAX_HANDLES; i++) {
        if (!reg[i].used) {
            reg[i].used = 1;
            memcpy(reg[i].h, handle, tok->klen);
            reg[i].len = tok->klen;
            reg[i].tok = tok;
            st.issued++;
            return 1;
        }
    }
    return 0;
}

void prfprov_handle_release(const unsigned char *handle, size_t len)
{
    size_t i;
    for (i = 0; i < MAX_HANDLES; i++)
        if (reg[i].used && reg[i].len == len && CRYPTO_memcmp(reg[i].h, handle, len) == 0) {
            OPENSSL_cleanse(&reg[i], sizeof reg[i]);
            st.released++;
        }
}

void prfprov_stats(struct prfprov_stats *s) { *s = st; }

/* RFC 4279 section 2: uint16 other_len || other || uint16 psk_len || psk. */
static struct handle_ent *match_premaster(const unsigned char *s, size_t n)
{
    size_t ol, pl, i;
    if (n < 4)
        return NULL;
    ol = ((size_t)s[0] << 8) | s[1];
    if (n < 4 + ol)
        return NULL;
    pl = ((size_t)s[2 + ol] << 8) | s[3 + ol];
    if (n != 4 + ol + pl || pl == 0 || pl > PRFPROV_MAX_PSK)
        return NULL;
    for (i = 0; i < MAX_HANDLES; i++)
        if (reg[i].used && reg[i].len == pl && CRYPTO_memcmp(reg[i].h, s + 4 + ol, pl) == 0)
            return &reg[i];
    return NULL;
}

static int contains_handle(const unsigned char *s, size_t n)
{
    size_t i, off;
    for (i = 0; i < MAX_HANDLES; i++)
        if (reg[i].used && reg[i].len <= n)
            for (off = 0; off + reg[i].len <= n; off++)
                if (memcmp(s + off, reg[i].h, reg[i].len) == 0)
                    return 1;
    return 0;
}

struct prfctx {
    char mdname[64];
    char propq[256];
    unsigned char *sec;
    size_t seclen;
    unsigned char seed[SEED_MAX];
    size_t seedlen;
};

static void *prf_new(void *provctx)
{
    (void)provctx;
    return OPENSSL_zalloc(sizeof(struct prfctx));
}

static void prf_reset(void *vctx)
{
    struct prfctx *c = vctx;
    OPENSSL_clear_free(c->sec, c->seclen);
    OPENSSL_cleanse(c, sizeof *c);
}

static void prf_free(void *vctx)
{
    if (vctx != NULL) {
        prf_reset(vctx);
        OPENSSL_free(vctx);
    }
}

static void *prf_dup(void *vctx)
{
    struct prfctx *s = vctx, *d = OPENSSL_memdup(s, sizeof *s);
    if (d != NULL && s->sec != NULL && (d->sec = OPENSSL_memdup(s->sec, s->seclen)) == NULL) {
        OPENSSL_free(d);
        d = NULL;
    }
    return d;
}

static int prf_set(void *vctx, const OSSL_PARAM params[])
{
    struct prfctx *c = vctx;
    const OSSL_PARAM *p;
    char *q;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DIGEST)) != NULL) {
        q = c->mdname;
        if (!OSSL_PARAM_get_utf8_string(p, &q, sizeof c->mdname))
            return 0;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_PROPERTIES)) != NULL) {
        q = c->propq;
        if (!OSSL_PARAM_get_utf8_string(p, &q, sizeof c->propq))
            return 0;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SECRET)) != NULL) {
        OPENSSL_clear_free(c->sec, c->seclen);
        c->sec = NULL;
        c->seclen = 0;
        if (!OSSL_PARAM_get_octet_string(p, (void **)&c->sec, 0, &c->seclen))
            return 0;
    }
    for (p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SEED); p != NULL;
         p = OSSL_PARAM_locate_const(p + 1, OSSL_KDF_PARAM_SEED)) {
        void *dst = c->seed + c->seedlen;
        size_t sz = 0;
        if (p->data_size != 0 && p->data != NULL
            && !OSSL_PARAM_get_octet_string(p, &dst, SEED_MAX - c->seedlen, &sz))
            return 0;
        c->seedlen += sz;
    }
    return 1;
}

static const OSSL_PARAM *prf_settable(void *ctx, void *provctx)
{
    static const OSSL_PARAM s[] = {
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, NULL, 0),
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SECRET, NULL, 0),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SEED, NULL, 0),
        OSSL_PARAM_END
    };
    (void)ctx;
    (void)provctx;
    return s;
}

static const OSSL_PARAM *prf_gettable(void *ctx, void *provctx)
{
    static const OSSL_PARAM g[] = { OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, NULL), OSSL_PARAM_END };
    (void)ctx;
    (void)provctx;
    return g;
}

static int prf_get(void *vctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE);
    (void)vctx;
    return p == NULL ? -2 : OSSL_PARAM_set_size_t(p, SIZE_MAX);
}

/* 256, 384, or 0 (not done in the token: never fall back) */
static int digest_bits(const char *name)
{
    int r = 0;
    EVP_MD *md = EVP_MD_fetch(NULL, name, NULL);
    if (md != NULL)
        r = EVP_MD_is_a(md, "SHA2-256") ? 256 : EVP_MD_is_a(md, "SHA2-384") ? 384 : 0;
    EVP_MD_free(md);
    return r;
}

static int prf_derive(void *vctx, unsigned char *key, size_t keylen, const OSSL_PARAM params[])
{
    struct prfctx *c = vctx;
    struct handle_ent *e;
    EVP_KDF_CTX *k;
    OSSL_PARAM p[5], *pp = p;
    int ok;

    if (!prf_set(c, params))
        return 0;
    if (c->mdname[0] == 0 || c->sec == NULL || c->seedlen == 0 || keylen == 0)
        return 0;
    if ((e = match_premaster(c->sec, c->seclen)) != NULL) {
        int bits = digest_bits(c->mdname);
        unsigned long rv = 0x70; /* CKR_MECHANISM_INVALID */
        if (bits != 0) /* prefix: uint16 other_len || other || uint16 psk_len */
            rv = e->tok->prf(e->tok->ctx, c->sec, c->seclen - e->len, bits == 384,
                             c->seed, c->seedlen, key, keylen);
        e->tok->last_rv = rv;
        if (rv == 0)
            st.token_ms++;
        else
            st.token_fail++;
        return rv == 0;
    }
    st.delegated++;
    if (contains_handle(c->sec, c->seclen))
        st.delegated_handle++;
    if (inner_kdf == NULL
        && (inner_kdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_TLS1_PRF, "provider=default")) == NULL)
        return 0;
    if ((k = EVP_KDF_CTX_new(inner_kdf)) == NULL)
        return 0;
    *pp++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, c->mdname, 0);
    if (c->propq[0] != 0)
        *pp++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_PROPERTIES, c->propq, 0);
    *pp++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, c->sec, c->seclen);
    *pp++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, c->seed, c->seedlen);
    *pp = OSSL_PARAM_construct_end();
    ok = EVP_KDF_derive(k, key, keylen, p) > 0;
    EVP_KDF_CTX_free(k);
    return ok;
}

#define FN(f) ((void (*)(void))(f))
static const OSSL_DISPATCH prf_fns[] = {
    { OSSL_FUNC_KDF_NEWCTX, FN(prf_new) },
    { OSSL_FUNC_KDF_DUPCTX, FN(prf_dup) },
    { OSSL_FUNC_KDF_FREECTX, FN(prf_free) },
    { OSSL_FUNC_KDF_RESET, FN(prf_reset) },
    { OSSL_FUNC_KDF_DERIVE, FN(prf_derive) },
    { OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, FN(prf_settable) },
    { OSSL_FUNC_KDF_SET_CTX_PARAMS, FN(prf_set) },
    { OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, FN(prf_gettable) },
    { OSSL_FUNC_KDF_GET_CTX_PARAMS, FN(prf_get) },
    { 0, NULL }
};

static const OSSL_ALGORITHM prov_kdfs[] = {
    { "TLS1-PRF", "provider=" PRFPROV_NAME, prf_fns, "TLS1-PRF, PSK master secret in a PKCS#11 token" },
    { NULL, NULL, NULL, NULL }
};

static const OSSL_ALGORITHM *prov_query(void *provctx, int op, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    return op == OSSL_OP_KDF ? prov_kdfs : NULL;
}

static void prov_teardown(void *provctx) { (void)provctx; }

static const OSSL_DISPATCH prov_fns[] = {
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, FN(prov_query) },
    { OSSL_FUNC_PROVIDER_TEARDOWN, FN(prov_teardown) },
    { 0, NULL }
};

static int prov_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                     const OSSL_DISPATCH **out, void **provctx)
{
    (void)in;
    *out = prov_fns;
    *provctx = (void *)(uintptr_t)handle;
    return 1;
}

static OSSL_PROVIDER *prov_ours, *prov_default;

int prfprov_load(OSSL_LIB_CTX *libctx)
{
    return OSSL_PROVIDER_add_builtin(libctx, PRFPROV_NAME, prov_init)
           && (prov_ours = OSSL_PROVIDER_load(libctx, PRFPROV_NAME)) != NULL
           && (prov_default = OSSL_PROVIDER_load(libctx, "default")) != NULL;
}

void prfprov_cleanup(void)
{
    EVP_KDF_free(inner_kdf);
    inner_kdf = NULL;
    if (prov_default != NULL)
        OSSL_PROVIDER_unload(prov_default);
    if (prov_ours != NULL)
        OSSL_PROVIDER_unload(prov_ours);
    prov_ours = prov_default = NULL;
}
