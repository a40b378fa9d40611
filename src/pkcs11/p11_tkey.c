/* Token keys of the PKCS#11 component: a token-only Kpsa stays in the
 * token, and the TLS 1.2 master secret the handshake needs of it is
 * computed there (m2mpsk.h, "Token keys"):
 *
 *   C_DeriveKey(CKM_CONCATENATE_DATA_AND_BASE, data = prefix, base = Kpsa)
 *     -> a session key (not extractable, sensitive, CKA_SIGN)
 *   P_SHA256 / P_SHA384 of RFC 5246 section 5 with C_Sign(CKM_SHA*_HMAC)
 *   C_DestroyObject of the session key
 *
 * master_secret runs on the threads that drive handshakes, several at
 * once, while the key source's thread uses the token's own session: each
 * call takes a session of its own from a small pool (a PKCS#11 session is
 * never used by two threads at once), with a guarded scratch buffer for
 * the P_hash intermediates, wiped after each use. */
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11_internal.h"

/* Sessions kept for reuse; more may be open while handshakes overlap. */
#define POOL_MAX 16
/* A(i) and one P_hash block: two HMAC outputs of at most 64 bytes. */
#define SCRATCH 128

typedef struct p11_sess {
  CK_SESSION_HANDLE s;
  uint8_t *scratch; /* sodium_malloc(SCRATCH) */
} p11_sess;

struct p11_tk_shared {
  pthread_mutex_t mu; /* refs, pool, the keys' cached handles */
  unsigned refs;
  m2mpsk_p11_token *tok;
  p11_sess pool[POOL_MAX];
  size_t n_pool;
  /* The probe: the source's thread only. */
  int probed, can_derive;
  char why[160];
};

typedef struct p11_tk_key {
  p11_tk_shared *sh;
  CK_OBJECT_HANDLE h; /* cached under sh->mu; CK_INVALID_HANDLE: unknown */
  char id[M2MPSK_KPSA_ID_MAX + 1];
} p11_tk_key;

#define ATTR(t, p, l)                                                          \
  { (t), (void *)(uintptr_t)(p), (CK_ULONG)(l) }

static const CK_BBOOL k_true = CK_TRUE, k_false = CK_FALSE;
static const CK_OBJECT_CLASS k_secret = CKO_SECRET_KEY;
static const CK_KEY_TYPE k_generic = CKK_GENERIC_SECRET;

int p11_tk_shared_new(p11_tk_shared **out, m2mpsk_p11_token *tok) {
  *out = NULL;
  p11_tk_shared *sh = calloc(1, sizeof(*sh));
  if (sh == NULL || pthread_mutex_init(&sh->mu, NULL) != 0) {
    free(sh);
    m2mpsk_p11_close(tok);
    return M2MPSK_E_NOMEM;
  }
  sh->refs = 1;
  sh->tok = tok;
  *out = sh;
  return M2MPSK_OK;
}

m2mpsk_p11_token *p11_tk_token(p11_tk_shared *sh) {
  return sh->tok;
}

static void sess_close(p11_tk_shared *sh, p11_sess *ps) {
  /* Closing a session destroys its session objects, if any were left. */
  (void)sh->tok->f->C_CloseSession(ps->s);
  sodium_free(ps->scratch);
  ps->scratch = NULL;
}

void p11_tk_shared_unref(p11_tk_shared *sh) {
  if (sh == NULL)
    return;
  pthread_mutex_lock(&sh->mu);
  unsigned left = --sh->refs;
  pthread_mutex_unlock(&sh->mu);
  if (left > 0)
    return;
  for (size_t i = 0; i < sh->n_pool; i++)
    sess_close(sh, &sh->pool[i]);
  m2mpsk_p11_close(sh->tok);
  pthread_mutex_destroy(&sh->mu);
  free(sh);
}

/* A session of the pool, or a new one; 0 or -1. */
static int sess_take(p11_tk_shared *sh, p11_sess *ps) {
  pthread_mutex_lock(&sh->mu);
  if (sh->n_pool > 0) {
    *ps = sh->pool[--sh->n_pool];
    pthread_mutex_unlock(&sh->mu);
    return 0;
  }
  pthread_mutex_unlock(&sh->mu);
  ps->scratch = sodium_malloc(SCRATCH);
  if (ps->scratch == NULL)
    return -1;
  /* Read-only: session objects only. The login is the token's, shared by
   * every session of this process. */
  CK_RV rv = sh->tok->f->C_OpenSession(sh->tok->slot, CKF_SERIAL_SESSION, NULL,
                                       NULL, &ps->s);
  if (rv != CKR_OK) {
    sodium_free(ps->scratch);
    ps->scratch = NULL;
    return -1;
  }
  return 0;
}

/* Back to the pool when it was left clean (ok), else closed. */
static void sess_give(p11_tk_shared *sh, p11_sess *ps, int ok) {
  sodium_memzero(ps->scratch, SCRATCH);
  if (ok) {
    pthread_mutex_lock(&sh->mu);
    if (sh->n_pool < POOL_MAX) {
      sh->pool[sh->n_pool++] = *ps;
      pthread_mutex_unlock(&sh->mu);
      return;
    }
    pthread_mutex_unlock(&sh->mu);
  }
  sess_close(sh, ps);
}

/* The key object of k (CKA_LABEL and CKA_ID its KpsaID, a token object);
 * CK_INVALID_HANDLE unless exactly one. */
static CK_OBJECT_HANDLE find_key(p11_tk_shared *sh, CK_SESSION_HANDLE s,
                                 const p11_tk_key *k, int *clean) {
  CK_FUNCTION_LIST_PTR f = sh->tok->f;
  size_t n = strlen(k->id);
  CK_ATTRIBUTE tm[] = {
      ATTR(CKA_CLASS, &k_secret, sizeof(k_secret)),
      ATTR(CKA_KEY_TYPE, &k_generic, sizeof(k_generic)),
      ATTR(CKA_TOKEN, &k_true, sizeof(CK_BBOOL)),
      ATTR(CKA_LABEL, k->id, n),
      ATTR(CKA_ID, k->id, n),
  };
  CK_OBJECT_HANDLE hs[2];
  CK_ULONG got = 0;
  CK_RV rv = f->C_FindObjectsInit(s, tm, sizeof(tm) / sizeof(tm[0]));
  if (rv != CKR_OK)
    return CK_INVALID_HANDLE;
  rv = f->C_FindObjects(s, hs, 2, &got);
  CK_RV frv = f->C_FindObjectsFinal(s);
  if (frv != CKR_OK)
    *clean = 0;
  return rv == CKR_OK && got == 1 ? hs[0] : CK_INVALID_HANDLE;
}

/* HMAC of a || b with key `key` into out (*out_len: its room, then the
 * length). On failure the session may hold an unfinished operation. */
static CK_RV hmac(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s,
                  CK_MECHANISM_TYPE mt, CK_OBJECT_HANDLE key, const uint8_t *a,
                  size_t al, const uint8_t *b, size_t bl, uint8_t *out,
                  CK_ULONG *out_len) {
  CK_MECHANISM m = {mt, NULL, 0};
  CK_RV rv = f->C_SignInit(s, &m, key);
  if (rv != CKR_OK)
    return rv;
  if (al > 0 && (rv = f->C_SignUpdate(s, (CK_BYTE_PTR)(uintptr_t)a,
                                      (CK_ULONG)al)) != CKR_OK)
    return rv;
  if (bl > 0 && (rv = f->C_SignUpdate(s, (CK_BYTE_PTR)(uintptr_t)b,
                                      (CK_ULONG)bl)) != CKR_OK)
    return rv;
  return f->C_SignFinal(s, out, out_len);
}

/* C_DeriveKey(CKM_CONCATENATE_DATA_AND_BASE): data || base, a session key
 * that cannot leave the token and that can only sign. */
static CK_RV concat(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s,
                    CK_OBJECT_HANDLE base, const uint8_t *data, size_t len,
                    CK_OBJECT_HANDLE *out) {
  CK_KEY_DERIVATION_STRING_DATA sd = {(CK_BYTE_PTR)(uintptr_t)data,
                                      (CK_ULONG)len};
  CK_MECHANISM m = {CKM_CONCATENATE_DATA_AND_BASE, &sd, sizeof(sd)};
  CK_ATTRIBUTE tm[] = {
      ATTR(CKA_CLASS, &k_secret, sizeof(k_secret)),
      ATTR(CKA_KEY_TYPE, &k_generic, sizeof(k_generic)),
      ATTR(CKA_TOKEN, &k_false, sizeof(CK_BBOOL)),
      ATTR(CKA_SENSITIVE, &k_true, sizeof(CK_BBOOL)),
      ATTR(CKA_EXTRACTABLE, &k_false, sizeof(CK_BBOOL)),
      ATTR(CKA_SIGN, &k_true, sizeof(CK_BBOOL)),
  };
  *out = CK_INVALID_HANDLE;
  return f->C_DeriveKey(s, &m, base, tm, sizeof(tm) / sizeof(tm[0]), out);
}

int p11_tk_master_secret(void *ctx, const char *digest, const uint8_t *prefix,
                         size_t prefix_len, const uint8_t *seed,
                         size_t seed_len, uint8_t *out, size_t out_len) {
  p11_tk_key *k = ctx;
  CK_MECHANISM_TYPE mt;
  if (k == NULL || digest == NULL || out == NULL || seed == NULL ||
      (prefix == NULL && prefix_len > 0))
    return -1;
  p11_tk_shared *sh = k->sh;
  CK_FUNCTION_LIST_PTR f = sh->tok->f;
  if (strcmp(digest, "SHA256") == 0)
    mt = CKM_SHA256_HMAC;
  else if (strcmp(digest, "SHA384") == 0)
    mt = CKM_SHA384_HMAC;
  else
    return -1;
  p11_sess ps;
  if (sess_take(sh, &ps) != 0)
    return -1;
  int clean = 1, rc = -1;
  CK_OBJECT_HANDLE pms = CK_INVALID_HANDLE;
  CK_RV rv = CKR_GENERAL_ERROR;
  for (int attempt = 0; attempt < 2; attempt++) {
    pthread_mutex_lock(&sh->mu);
    CK_OBJECT_HANDLE h = k->h;
    pthread_mutex_unlock(&sh->mu);
    if (h == CK_INVALID_HANDLE) {
      h = find_key(sh, ps.s, k, &clean);
      if (h == CK_INVALID_HANDLE)
        break; /* gone (revoked, deleted), or several */
      pthread_mutex_lock(&sh->mu);
      k->h = h;
      pthread_mutex_unlock(&sh->mu);
    }
    rv = concat(f, ps.s, h, prefix, prefix_len, &pms);
    if (rv == CKR_OK || attempt > 0 ||
        (rv != CKR_KEY_HANDLE_INVALID && rv != CKR_OBJECT_HANDLE_INVALID))
      break;
    /* The cached handle went stale: look the object up again, once. */
    pthread_mutex_lock(&sh->mu);
    if (k->h == h)
      k->h = CK_INVALID_HANDLE;
    pthread_mutex_unlock(&sh->mu);
  }
  if (rv == CKR_OK) {
    uint8_t *a = ps.scratch, *blk = ps.scratch + 64;
    CK_ULONG al = 64;
    size_t done = 0;
    rv = hmac(f, ps.s, mt, pms, seed, seed_len, NULL, 0, a, &al); /* A(1) */
    while (rv == CKR_OK && done < out_len) {
      CK_ULONG bl = 64;
      rv = hmac(f, ps.s, mt, pms, a, al, seed, seed_len, blk, &bl);
      if (rv != CKR_OK)
        break;
      size_t take = out_len - done < bl ? out_len - done : (size_t)bl;
      memcpy(out + done, blk, take);
      done += take;
      if (done < out_len) {
        CK_ULONG an = 64;
        rv = hmac(f, ps.s, mt, pms, a, al, NULL, 0, a, &an); /* A(i+1) */
        al = an;
      }
    }
    rc = rv == CKR_OK ? 0 : -1;
    if (rv != CKR_OK) {
      clean = 0; /* maybe an unfinished signature */
      sodium_memzero(out, out_len);
    }
    if (f->C_DestroyObject(ps.s, pms) != CKR_OK)
      clean = 0; /* the session's close destroys it */
  } else if (pms != CK_INVALID_HANDLE) {
    clean = 0;
  }
  sess_give(sh, &ps, clean);
  return rc;
}

void p11_tk_release(void *ctx) {
  p11_tk_key *k = ctx;
  if (k == NULL)
    return;
  p11_tk_shared *sh = k->sh;
  free(k);
  p11_tk_shared_unref(sh);
}

void *p11_tk_key_new(p11_tk_shared *sh, const char *kpsa_id) {
  if (sh == NULL || kpsa_id == NULL || strlen(kpsa_id) > M2MPSK_KPSA_ID_MAX)
    return NULL;
  p11_tk_key *k = calloc(1, sizeof(*k));
  if (k == NULL)
    return NULL;
  snprintf(k->id, sizeof(k->id), "%s", kpsa_id);
  k->h = CK_INVALID_HANDLE;
  k->sh = sh;
  pthread_mutex_lock(&sh->mu);
  sh->refs++;
  pthread_mutex_unlock(&sh->mu);
  return k;
}

/* ---- the probe ------------------------------------------------------------
 */

static int probe_fail(p11_tk_shared *sh, const char *what, CK_RV rv) {
  char b[32];
  snprintf(sh->why, sizeof(sh->why), "%s: %s", what,
           m2mpsk_p11_ckr_name(rv, b, sizeof(b)));
  return 0;
}

/* On a session of its own, closed after: an operation a failure leaves
 * unfinished, or an object it could not destroy, goes with it. */
static int probe(p11_tk_shared *sh) {
  m2mpsk_p11_token *t = sh->tok;
  CK_FUNCTION_LIST_PTR f = t->f;
  CK_SESSION_HANDLE s;
  CK_RV rv = f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
  if (rv != CKR_OK)
    return probe_fail(sh, "C_OpenSession", rv);
  CK_ULONG vl = 32;
  CK_ATTRIBUTE tm[] = {
      ATTR(CKA_CLASS, &k_secret, sizeof(k_secret)),
      ATTR(CKA_KEY_TYPE, &k_generic, sizeof(k_generic)),
      ATTR(CKA_TOKEN, &k_false, sizeof(CK_BBOOL)),
      ATTR(CKA_SENSITIVE, &k_true, sizeof(CK_BBOOL)),
      ATTR(CKA_EXTRACTABLE, &k_false, sizeof(CK_BBOOL)),
      ATTR(CKA_DERIVE, &k_true, sizeof(CK_BBOOL)),
      ATTR(CKA_VALUE_LEN, &vl, sizeof(vl)),
  };
  CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
  CK_OBJECT_HANDLE base = CK_INVALID_HANDLE, pms = CK_INVALID_HANDLE;
  int ok = 0;
  rv = f->C_GenerateKey(s, &gen, tm, sizeof(tm) / sizeof(tm[0]), &base);
  if (rv != CKR_OK) {
    probe_fail(sh, "C_GenerateKey (a session key to probe with)", rv);
  } else if ((rv = concat(f, s, base, (const uint8_t *)"\0\x20\0\0\0\x20", 6,
                          &pms)) != CKR_OK) {
    probe_fail(sh, "C_DeriveKey (CKM_CONCATENATE_DATA_AND_BASE)", rv);
  } else {
    uint8_t mac[64];
    CK_ULONG ml = sizeof(mac);
    rv = hmac(f, s, CKM_SHA256_HMAC, pms, (const uint8_t *)"probe", 5, NULL, 0,
              mac, &ml);
    sodium_memzero(mac, sizeof(mac));
    if (rv != CKR_OK)
      probe_fail(sh, "C_Sign (CKM_SHA256_HMAC) with the derived key", rv);
    else
      ok = 1;
  }
  /* Closing the session destroys the probe's session objects. */
  rv = f->C_CloseSession(s);
  if (rv != CKR_OK && ok)
    ok = probe_fail(sh, "C_CloseSession (the probe's)", rv);
  return ok;
}

int p11_tk_can_derive(p11_tk_shared *sh, const char **why) {
  if (!sh->probed) {
    sh->can_derive = probe(sh);
    sh->probed = 1;
  }
  *why = sh->why;
  return sh->can_derive;
}
