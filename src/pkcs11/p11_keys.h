/* Keys kept in a PKCS#11 token (issue 20, first part): a component of the
 * command-line tool, not of libm2mpsk, whose ABI does not change. The
 * module is dlopen()ed at run time (RTLD_NOW | RTLD_LOCAL) and reached
 * through C_GetFunctionList; the only build dependency is p11-kit's
 * pkcs11.h. docs/pkcs11.md is the operator's manual.
 *
 * This header is the contract between the component (src/pkcs11/) and its
 * users (src/cli/keys_p11.c, src/cli/keys_from.c, src/cli/serve.c).
 *
 * Object model, per record (KpsaID K), all objects CKA_TOKEN=TRUE and
 * CKA_PRIVATE=TRUE (visible only after C_Login as CKU_USER):
 *
 *  - the Kpsa: CKO_SECRET_KEY, CKK_GENERIC_SECRET, CKA_LABEL = K,
 *    CKA_ID = the bytes of K, CKA_DERIVE=TRUE, CKA_SIGN=TRUE, and either
 *      "readable"   CKA_SENSITIVE=FALSE, CKA_EXTRACTABLE=TRUE: the key is
 *                   read (after login) into libsodium guarded memory and
 *                   handed to the keystore for the handshake. This is the
 *                   fallback: the key enters this process's guarded
 *                   memory, never its logs;
 *      "token-only" CKA_SENSITIVE=TRUE, CKA_EXTRACTABLE=FALSE: never leaves
 *                   the token. The key source supplies it as a token key
 *                   (m2mpsk_key_request_supply_token_key()): the TLS 1.2
 *                   master secret is computed in the token
 *                   (CKM_CONCATENATE_DATA_AND_BASE, then HMAC P_hash with
 *                   C_Sign; p11_tkey.c). A token that cannot derive so
 *                   (SoftHSM2: CKR_MECHANISM_INVALID) has such requests
 *                   answered absent, logged once per KpsaID.
 *  - the oneM2M fields: CKO_DATA, CKA_APPLICATION = "m2mpsk",
 *    CKA_LABEL = K, CKA_VALUE = this text, strictly parsed (every line,
 *    in this order, LF-terminated, nothing else):
 *        v=1
 *        ida=<IdA or empty>
 *        idb=<IdB>
 *        not_before=<Unix seconds, 0: unbounded>
 *        not_after=<Unix seconds, 0: unbounded>
 *        revoked=0|1
 *        kind=readable|token-only
 *    A malformed value makes the record skipped with a readable reason,
 *    never a crash.
 *
 * Revoking destroys the key object and sets revoked=1 in the data object
 * (a tombstone); deleting destroys both.
 *
 * Nothing here logs or returns a PIN or key bytes; error strings name the
 * PKCS#11 return value (CKR_...) instead. */
#ifndef M2MPSK_P11_KEYS_H
#define M2MPSK_P11_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

/* The prefix of --keys for serve: "pkcs11:MODULE:TOKEN". */
#define M2MPSK_P11_SCHEME "pkcs11:"

/* The CKA_APPLICATION of the data objects. */
#define M2MPSK_P11_APPLICATION "m2mpsk"

typedef struct m2mpsk_p11_token m2mpsk_p11_token;

/* Loads the module, finds the token and logs in as CKU_USER, with one
 * read-write session. `spec` is "MODULE:TOKEN": MODULE a path to a .so
 * (the last ':' separates it from TOKEN), TOKEN the token's label,
 * compared without CK_TOKEN_INFO's space padding. `init_args` (may be
 * NULL) goes to C_Initialize as CK_C_INITIALIZE_ARGS.pReserved, with
 * CKF_OS_LOCKING_OK: NSS softoken needs its parameters there
 * ("configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db'
 * flags="). `pin` is borrowed and not kept. Only one thread may use a
 * token's session at a time.
 * Returns M2MPSK_OK (*out set; m2mpsk_p11_close() frees it),
 * M2MPSK_E_INVALID (NULL, or a spec without both parts), M2MPSK_E_IO (the
 * module does not load, has no C_GetFunctionList, C_Initialize fails, no
 * token has that label, login fails: `err` names the CKR_ code) or
 * M2MPSK_E_NOMEM. */
int m2mpsk_p11_open(m2mpsk_p11_token **out, const char *spec,
                    const char *init_args, const uint8_t *pin, size_t pin_len,
                    char *err, size_t err_cap);

/* Logs out, closes the session and finalizes the module. NULL: no-op. */
void m2mpsk_p11_close(m2mpsk_p11_token *tok);

/* A record as the token describes it: never the key. */
typedef struct m2mpsk_p11_record {
  char kpsa_id[M2MPSK_KPSA_ID_MAX + 1];
  char ida[M2MPSK_ID_MAX + 1]; /* "" when none */
  char idb[M2MPSK_ID_MAX + 1];
  int64_t not_before, not_after; /* 0: unbounded */
  int revoked;
  int token_only;
  int has_key;              /* the key object is there */
  size_t key_len;           /* CKA_VALUE's size, or a token-only key's
                               CKA_VALUE_LEN; 0 when unknown */
  unsigned long key_object; /* the key object's handle; 0 when none. A
                               record deleted and made again under the
                               same KpsaID has a new one. */
} m2mpsk_p11_record;

/* Generates a Kpsa of key_len bytes (16..64; 0: 32) inside the token with
 * CKM_GENERIC_SECRET_KEY_GEN, and its data object. `ida` may be NULL.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), the validators' codes
 * (M2MPSK_E_KPSA_ID ... M2MPSK_E_VALIDITY), M2MPSK_E_KEY_LENGTH,
 * M2MPSK_E_DUPLICATE (a record, even a revoked one, has that KpsaID),
 * M2MPSK_E_IO (the token refused; `err` says why) or M2MPSK_E_NOMEM. */
int m2mpsk_p11_generate(m2mpsk_p11_token *tok, const char *kpsa_id,
                        size_t key_len, const char *ida, const char *idb,
                        int64_t not_before, int64_t not_after, int token_only,
                        char *err, size_t err_cap);

/* Imports every record of an m2mpsk key file (the format of
 * m2mpsk_keystore_load_file(), which checks the whole file first: all or
 * nothing on a bad file) as readable or token-only records, with
 * C_CreateObject; each key passes through guarded memory, wiped after.
 * Stops at the first record the token refuses or that is already there
 * (records created before it stay; *done counts them).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID, the key file codes of
 * m2mpsk_keystore_load_file(), M2MPSK_E_DUPLICATE, M2MPSK_E_IO or
 * M2MPSK_E_NOMEM. */
int m2mpsk_p11_import_file(m2mpsk_p11_token *tok, const char *path,
                           int token_only, size_t *done, char *err,
                           size_t err_cap);

/* Imports one Kpsa wrapped with CKM_AES_KEY_WRAP_PAD (RFC 5649) under the
 * token's AES key labelled `unwrap_label` (CKA_UNWRAP=TRUE), with
 * C_UnwrapKey: the key is never in this process's memory. The unwrapped
 * length must be 16..64 bytes, or the new object is destroyed.
 * Returns what m2mpsk_p11_generate() returns, and M2MPSK_E_NOT_FOUND (no
 * such unwrapping key). */
int m2mpsk_p11_import_wrapped(m2mpsk_p11_token *tok, const char *kpsa_id,
                              const uint8_t *wrapped, size_t wrapped_len,
                              const char *unwrap_label, const char *ida,
                              const char *idb, int64_t not_before,
                              int64_t not_after, int token_only, char *err,
                              size_t err_cap);

/* Calls fn for each m2mpsk data object in the token, in the token's order:
 * with the record, or with r NULL and a reason for one that is malformed
 * (`label` is then its CKA_LABEL, maybe ""). A non-zero return from fn
 * stops the walk and is returned.
 * Returns M2MPSK_OK, fn's value, M2MPSK_E_IO or M2MPSK_E_NOMEM. */
typedef int (*m2mpsk_p11_list_fn)(void *arg, const m2mpsk_p11_record *r,
                                  const char *label, const char *malformed);
int m2mpsk_p11_list(m2mpsk_p11_token *tok, m2mpsk_p11_list_fn fn, void *arg,
                    char *err, size_t err_cap);

/* Revokes (destroys the key object, sets revoked=1; already revoked: OK)
 * or deletes (destroys both objects) a record.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID, M2MPSK_E_NOT_FOUND (no data object
 * with that KpsaID), M2MPSK_E_IO or M2MPSK_E_NOMEM. */
int m2mpsk_p11_revoke(m2mpsk_p11_token *tok, const char *kpsa_id, char *err,
                      size_t err_cap);
int m2mpsk_p11_delete(m2mpsk_p11_token *tok, const char *kpsa_id, char *err,
                      size_t err_cap);

/* Looks one record up; with `key` (a buffer of M2MPSK_KEY_MAX bytes, in
 * guarded memory) also reads a readable key into it (*r.key_len bytes).
 * Returns M2MPSK_OK, M2MPSK_E_NOT_FOUND (no data object),
 * M2MPSK_E_PROTOCOL (malformed: `err` says why), M2MPSK_E_IO or
 * M2MPSK_E_NOMEM. A revoked or token-only record, or one whose key object
 * is gone, is M2MPSK_OK with r's fields saying so and no key read. */
int m2mpsk_p11_lookup(m2mpsk_p11_token *tok, const char *kpsa_id,
                      m2mpsk_p11_record *r, uint8_t *key, char *err,
                      size_t err_cap);

/* The name of a CK_RV ("CKR_PIN_INCORRECT"), or "CKR_0x..." for one the
 * table lacks; `buf` holds the latter. */
const char *m2mpsk_p11_ckr_name(unsigned long rv, char *buf, size_t cap);

/* ---- the key source ------------------------------------------------------ */

typedef struct m2mpsk_p11_source m2mpsk_p11_source;

typedef struct m2mpsk_p11_source_options {
  /* Called from the component's thread after it answered requests or
   * removed records, so that the host resumes associations waiting for a
   * key (m2mpsk_assoc_resume()) and lets live ones notice a removal
   * (m2mpsk_assoc_handle_timeout()). Write to an eventfd, no more. May be
   * NULL. */
  void (*on_change)(void *arg);
  void *arg;
  /* How often the token is rescanned for records supplied earlier and
   * since revoked or deleted (ms; 0: 1000). */
  uint32_t poll_ms;
  /* The keystore's bound on open requests (0: 1024). */
  size_t max_pending;
  /* C_Initialize's pReserved (m2mpsk_p11_open()); NULL: none. */
  const char *init_args;
} m2mpsk_p11_source_options;

/* Opens the token (as m2mpsk_p11_open(); the PIN is not kept), installs a
 * key source on `ks` and starts the thread that answers its requests:
 * each request is queued to the thread, which looks the KpsaID up in the
 * token with its own session, supplies a readable record (the key through
 * guarded memory, wiped after), a token-only record as a token key (when
 * the token can derive; `ks` should have M2MPSK_KEYSTORE_TOKEN_KEYS so
 * that responders pick the OpenSSL engine) or answers absent (unknown,
 * revoked, malformed, token-only on a token that cannot derive), then
 * calls on_change. Every poll_ms it looks up again each KpsaID it
 * supplied, and removes from `ks` (as etcd's sync applies a removal:
 * m2mpsk_keystore_remove(), so live associations using it fail closed)
 * those revoked, deleted, without their key object or of another kind.
 * `ks` must outlive the source. The token stays open after
 * m2mpsk_p11_source_stop() while `ks` holds token keys of it: the last
 * one released closes it.
 * Returns M2MPSK_OK, or what m2mpsk_p11_open() returns, with `err`. */
int m2mpsk_p11_source_start(m2mpsk_p11_source **out, m2mpsk_keystore *ks,
                            const char *spec, const uint8_t *pin,
                            size_t pin_len,
                            const m2mpsk_p11_source_options *opts, char *err,
                            size_t err_cap);

/* Removes the key source from the keystore, stops the thread, answers the
 * requests still queued absent, closes the token (or leaves that to the
 * last token key released) and frees. NULL: no-op. The records supplied
 * stay in the keystore. */
void m2mpsk_p11_source_stop(m2mpsk_p11_source *src);

#endif /* M2MPSK_P11_KEYS_H */
