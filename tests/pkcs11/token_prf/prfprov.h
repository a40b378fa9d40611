/*
 * "prfhsm": an in-process OpenSSL 3.0 provider whose TLS1-PRF computes the
 * master secret of an RFC 4279 PSK premaster inside a token when the PSK in
 * the premaster is a one-handshake handle; every other call goes to the
 * default provider's TLS1-PRF (issue 20).
 */
#ifndef M2MPSK_TEST_PRFPROV_H
#define M2MPSK_TEST_PRFPROV_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/types.h>

#define PRFPROV_NAME "prfhsm"
#define PRFPROV_MAX_PSK 64

/* Where the token is: returns 0 (CKR_OK) or a CK_RV. */
struct prf_token {
    unsigned long (*prf)(void *ctx, const uint8_t *prefix, size_t plen, int sha384,
                         const uint8_t *seed, size_t slen, uint8_t *out, size_t olen);
    void *ctx;
    size_t klen; /* Kpsa's length: the handle's */
    unsigned long last_rv;
};

struct prfprov_stats {
    unsigned long token_ms;         /* master secrets computed in the token */
    unsigned long token_fail;       /* a handle matched, the token or digest refused */
    unsigned long delegated;        /* calls passed to default's TLS1-PRF */
    unsigned long delegated_handle; /* ... whose secret contained a handle (must stay 0) */
    unsigned long issued, released;
};

/* OSSL_PROVIDER_add_builtin + load prfhsm and default into libctx. */
int prfprov_load(OSSL_LIB_CTX *libctx);
int prfprov_handle_new(struct prf_token *tok, unsigned char *handle);
void prfprov_handle_release(const unsigned char *handle, size_t len);
void prfprov_stats(struct prfprov_stats *s);
/* Unload both providers (before OSSL_LIB_CTX_free). */
void prfprov_cleanup(void);

#endif
