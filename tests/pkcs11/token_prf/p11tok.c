/* See p11tok.h. */
#include "p11tok.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

const char *p11tok_rv(CK_RV rv)
{
    static char buf[32];
    switch (rv) {
    case CKR_OK: return "CKR_OK";
    case CKR_MECHANISM_INVALID: return "CKR_MECHANISM_INVALID";
    case CKR_MECHANISM_PARAM_INVALID: return "CKR_MECHANISM_PARAM_INVALID";
    case CKR_KEY_TYPE_INCONSISTENT: return "CKR_KEY_TYPE_INCONSISTENT";
    case CKR_ATTRIBUTE_SENSITIVE: return "CKR_ATTRIBUTE_SENSITIVE";
    case CKR_ARGUMENTS_BAD: return "CKR_ARGUMENTS_BAD";
    case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
    case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
    case CKR_DEVICE_ERROR: return "CKR_DEVICE_ERROR";
    case CKR_TOKEN_NOT_PRESENT: return "CKR_TOKEN_NOT_PRESENT";
    case CKR_USER_NOT_LOGGED_IN: return "CKR_USER_NOT_LOGGED_IN";
    case CKR_PIN_INCORRECT: return "CKR_PIN_INCORRECT";
    default: break;
    }
    snprintf(buf, sizeof buf, "CKR_0x%lx", (unsigned long)rv);
    return buf;
}

CK_RV p11tok_open(struct p11tok *t, const char *module, const char *params,
                  unsigned slot_index, const char *pin, int so_init)
{
    CK_C_GetFunctionList gfl;
    CK_C_INITIALIZE_ARGS ia;
    CK_SLOT_ID ids[16];
    CK_ULONG n = 16;
    CK_RV rv;

    memset(t, 0, sizeof *t);
    t->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (t->dl == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", module, dlerror());
        return CKR_GENERAL_ERROR;
    }
    *(void **)&gfl = dlsym(t->dl, "C_GetFunctionList");
    if (gfl == NULL || gfl(&t->f) != CKR_OK)
        return CKR_GENERAL_ERROR;
    memset(&ia, 0, sizeof ia);
    ia.flags = CKF_OS_LOCKING_OK;
    ia.pReserved = (void *)(uintptr_t)params;
    if ((rv = t->f->C_Initialize(&ia)) != CKR_OK)
        return rv;
    t->initialized = 1;
    if ((rv = t->f->C_GetSlotList(CK_TRUE, ids, &n)) != CKR_OK)
        return rv;
    if (slot_index >= n)
        return CKR_TOKEN_NOT_PRESENT;
    t->slot = ids[slot_index];
    rv = t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &t->sess);
    if (rv != CKR_OK)
        return rv;
    if (so_init) {
        if ((rv = t->f->C_Login(t->sess, CKU_SO, (CK_UTF8CHAR_PTR) "", 0)) != CKR_OK)
            return rv;
        rv = t->f->C_InitPIN(t->sess, (CK_UTF8CHAR_PTR)(uintptr_t)pin, strlen(pin));
        t->f->C_Logout(t->sess);
        if (rv != CKR_OK)
            return rv;
    }
    if (pin != NULL) {
        rv = t->f->C_Login(t->sess, CKU_USER, (CK_UTF8CHAR_PTR)(uintptr_t)pin, strlen(pin));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
            return rv;
    }
    return CKR_OK;
}

void p11tok_close(struct p11tok *t)
{
    if (t->f != NULL && t->initialized) {
        t->f->C_CloseAllSessions(t->slot);
        t->f->C_Finalize(NULL);
    }
    /* No dlclose(): NSS softoken and SoftHSM2 keep atexit handlers and
     * thread-local state; the module stays mapped until exit. */
    memset(t, 0, sizeof *t);
}

CK_RV p11tok_find(struct p11tok *t, const char *label, CK_OBJECT_HANDLE *obj, size_t *len)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE tmpl[] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_LABEL, (void *)(uintptr_t)label, strlen(label) },
    };
    CK_ULONG n = 0, vl = 0;
    CK_ATTRIBUTE a = { CKA_VALUE_LEN, &vl, sizeof vl };
    CK_RV rv = t->f->C_FindObjectsInit(t->sess, tmpl, 2);

    if (rv != CKR_OK)
        return rv;
    rv = t->f->C_FindObjects(t->sess, obj, 1, &n);
    t->f->C_FindObjectsFinal(t->sess);
    if (rv != CKR_OK)
        return rv;
    if (n == 0)
        return CKR_ARGUMENTS_BAD;
    rv = t->f->C_GetAttributeValue(t->sess, *obj, &a, 1);
    *len = vl;
    return rv;
}

CK_RV p11tok_import(struct p11tok *t, const char *label, const uint8_t *key, size_t len)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL tru = CK_TRUE, fal = CK_FALSE;
    CK_OBJECT_HANDLE obj;
    CK_ATTRIBUTE tmpl[] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_KEY_TYPE, &kt, sizeof kt },
        { CKA_TOKEN, &tru, sizeof tru },
        { CKA_PRIVATE, &tru, sizeof tru },
        { CKA_SENSITIVE, &tru, sizeof tru },
        { CKA_EXTRACTABLE, &fal, sizeof fal },
        { CKA_DERIVE, &tru, sizeof tru },
        { CKA_LABEL, (void *)(uintptr_t)label, strlen(label) },
        { CKA_VALUE, (void *)(uintptr_t)key, len },
    };
    return t->f->C_CreateObject(t->sess, tmpl, sizeof tmpl / sizeof tmpl[0], &obj);
}

static CK_RV hmac(struct p11tok *t, CK_MECHANISM_TYPE mt, CK_OBJECT_HANDLE k,
                  const uint8_t *a, size_t al, const uint8_t *b, size_t bl,
                  uint8_t *out, CK_ULONG *ol)
{
    CK_MECHANISM m = { mt, NULL, 0 };
    CK_RV rv = t->f->C_SignInit(t->sess, &m, k);

    if (rv != CKR_OK)
        return rv;
    if (al != 0 && (rv = t->f->C_SignUpdate(t->sess, (CK_BYTE_PTR)(uintptr_t)a, al)) != CKR_OK)
        goto fail;
    if (bl != 0 && (rv = t->f->C_SignUpdate(t->sess, (CK_BYTE_PTR)(uintptr_t)b, bl)) != CKR_OK)
        goto fail;
    return t->f->C_SignFinal(t->sess, out, ol);
fail: {
        uint8_t tmp[64];
        CK_ULONG tl = sizeof tmp;
        t->f->C_SignFinal(t->sess, tmp, &tl); /* ends the operation */
    }
    return rv;
}

CK_RV p11tok_psk_prf(struct p11tok *t, CK_OBJECT_HANDLE kpsa, const uint8_t *prefix,
                     size_t plen, int sha384, const uint8_t *seed, size_t slen,
                     uint8_t *out, size_t olen)
{
    CK_KEY_DERIVATION_STRING_DATA sd = { (CK_BYTE_PTR)(uintptr_t)prefix, plen };
    CK_MECHANISM m = { CKM_CONCATENATE_DATA_AND_BASE, &sd, sizeof sd };
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL tru = CK_TRUE, fal = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_KEY_TYPE, &kt, sizeof kt },
        { CKA_TOKEN, &fal, sizeof fal },
        { CKA_SENSITIVE, &tru, sizeof tru },
        { CKA_EXTRACTABLE, &fal, sizeof fal },
        { CKA_SIGN, &tru, sizeof tru },
    };
    CK_OBJECT_HANDLE pms = CK_INVALID_HANDLE;
    CK_MECHANISM_TYPE hm = sha384 ? CKM_SHA384_HMAC : CKM_SHA256_HMAC;
    uint8_t A[64], blk[64];
    CK_ULONG al = sizeof A, bl;
    size_t done = 0;
    CK_RV rv;

    rv = t->f->C_DeriveKey(t->sess, &m, kpsa, tmpl, sizeof tmpl / sizeof tmpl[0], &pms);
    if (rv != CKR_OK)
        return rv;
    rv = hmac(t, hm, pms, seed, slen, NULL, 0, A, &al); /* A(1) */
    while (rv == CKR_OK && done < olen) {
        size_t k;
        bl = sizeof blk;
        if ((rv = hmac(t, hm, pms, A, al, seed, slen, blk, &bl)) != CKR_OK)
            break;
        k = olen - done < bl ? olen - done : bl;
        memcpy(out + done, blk, k);
        done += k;
        if (done < olen) {
            CK_ULONG an = sizeof A;
            rv = hmac(t, hm, pms, A, al, NULL, 0, A, &an); /* A(i+1) */
            al = an;
        }
    }
    t->f->C_DestroyObject(t->sess, pms);
    memset(A, 0, sizeof A);
    memset(blk, 0, sizeof blk);
    return rv;
}
