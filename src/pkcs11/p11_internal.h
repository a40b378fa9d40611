/* Shared by the files of src/pkcs11/ only. */
#ifndef M2MPSK_P11_INTERNAL_H
#define M2MPSK_P11_INTERNAL_H

#include <p11-kit/pkcs11.h>

#include "p11_keys.h"

struct m2mpsk_p11_token {
  void *dl; /* stays mapped: modules keep atexit handlers and thread keys */
  CK_FUNCTION_LIST_PTR f;
  CK_SESSION_HANDLE s;
  CK_SLOT_ID slot;
  char label[33];  /* the token's label, without padding */
  int initialized; /* this handle called C_Initialize */
  int open, logged_in;
};

/* "what: CKR_NAME" into err; returns M2MPSK_E_IO. */
int p11_fail(char *err, size_t cap, const char *what, CK_RV rv);

/* Every object matching the template, in a malloc'd array. */
int p11_find(m2mpsk_p11_token *t, CK_ATTRIBUTE *tmpl, CK_ULONG n,
             CK_OBJECT_HANDLE **out, size_t *count, char *err, size_t cap);

/* ---- token keys (p11_tkey.c) ----------------------------------------------
 *
 * The state the token keys of one token share: the token itself (its
 * module, login and the key source's session), owned from
 * p11_tk_shared_new() on and closed when the last reference goes (the
 * source's, and one per token key the keystore holds: a keystore may
 * outlive the source), and a pool of sessions for the threads that drive
 * handshakes. */
typedef struct p11_tk_shared p11_tk_shared;

/* Takes `tok` (closed on failure too). M2MPSK_OK or M2MPSK_E_NOMEM. */
int p11_tk_shared_new(p11_tk_shared **out, m2mpsk_p11_token *tok);
/* The token, for the thread that owns its session (the source's). */
m2mpsk_p11_token *p11_tk_token(p11_tk_shared *sh);
/* Drops a reference; the last one closes the pool and the token. */
void p11_tk_shared_unref(p11_tk_shared *sh);

/* Whether the token derives with CKM_CONCATENATE_DATA_AND_BASE and HMACs
 * with the result: probed once (the source's thread only), on a session
 * of its own with throw-away session objects, closed after. 1 yes; 0 no,
 * and `why` names the call and the CKR_ code. */
int p11_tk_can_derive(p11_tk_shared *sh, const char **why);

/* The functions of the token keys (an m2mpsk_token_master_secret_fn and
 * an m2mpsk_token_release_fn), and a context for the key object of KpsaID
 * `kpsa_id` (CKA_LABEL and CKA_ID), holding a reference to `sh`;
 * p11_tk_release() frees it. NULL: out of memory. */
int p11_tk_master_secret(void *ctx, const char *digest, const uint8_t *prefix,
                         size_t prefix_len, const uint8_t *seed,
                         size_t seed_len, uint8_t *out, size_t out_len);
void p11_tk_release(void *ctx);
void *p11_tk_key_new(p11_tk_shared *sh, const char *kpsa_id);

#endif /* M2MPSK_P11_INTERNAL_H */
