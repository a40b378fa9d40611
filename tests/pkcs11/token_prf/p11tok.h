/*
 * A PKCS#11 token seen by test_token_prf: a dlopen()ed module with one
 * logged-in session, and the RFC 4279 PSK master-secret derivation done
 * inside the token (issue 20).
 */
#ifndef M2MPSK_TEST_P11TOK_H
#define M2MPSK_TEST_P11TOK_H

#include <stddef.h>
#include <stdint.h>
#include <p11-kit/pkcs11.h>

struct p11tok {
    void *dl;
    CK_FUNCTION_LIST_PTR f;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE sess;
    int initialized;
};

const char *p11tok_rv(CK_RV rv);
/* params: NSS softoken's LibraryParameters (C_Initialize pReserved) or NULL.
 * slot_index: index in C_GetSlotList(CK_TRUE) order.  so_init: first use of
 * an NSS database (C_Login(SO, "") then C_InitPIN(pin)). */
CK_RV p11tok_open(struct p11tok *t, const char *module, const char *params,
                  unsigned slot_index, const char *pin, int so_init);
void p11tok_close(struct p11tok *t);
CK_RV p11tok_find(struct p11tok *t, const char *label, CK_OBJECT_HANDLE *obj, size_t *len);
/* A token object: CKO_SECRET_KEY, generic, TOKEN, PRIVATE, SENSITIVE,
 * EXTRACTABLE=FALSE, DERIVE. */
CK_RV p11tok_import(struct p11tok *t, const char *label, const uint8_t *key, size_t len);
/* out = P_SHA256/384(prefix || Kpsa, seed): C_DeriveKey
 * (CKM_CONCATENATE_DATA_AND_BASE) then C_Sign (CKM_SHA*_HMAC). */
CK_RV p11tok_psk_prf(struct p11tok *t, CK_OBJECT_HANDLE kpsa, const uint8_t *prefix,
                     size_t plen, int sha384, const uint8_t *seed, size_t slen,
                     uint8_t *out, size_t olen);

#endif
