/* Keystore internals shared with keyfile.c and the unit tests. Not
 * installed; internal.h has what associations need. */
#ifndef M2MPSK_KEYSTORE_H
#define M2MPSK_KEYSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* Creates an empty, private keystore with the same flags and index key as
 * `like`, to stage records that m2mpsk_keystore_merge() later moves into
 * `like` in one step.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID or M2MPSK_E_NOMEM. */
int m2mpsk_keystore_new_staging(const m2mpsk_keystore *like,
                                m2mpsk_keystore **out);

/* m2mpsk_keystore_add() that also stores `tag` with the record (the key file
 * loader's line number), reported back by m2mpsk_keystore_merge(). */
int m2mpsk_keystore_add_tagged(m2mpsk_keystore *ks, const char *kpsa_id,
                               const uint8_t *key, size_t key_len,
                               const char *ida, const char *idb,
                               int64_t not_before, int64_t not_after,
                               uint32_t tag);

/* Moves every record of `staging` (from m2mpsk_keystore_new_staging(dst),
 * used by no other thread) into `dst` under dst's write lock, all or
 * nothing. The key arenas change owner; no key is copied. Records get fresh
 * serials from dst. On success `staging` is left empty.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID, M2MPSK_E_DUPLICATE (a KpsaID is
 * already in dst; *conflict_tag, if not NULL, is the smallest tag among the
 * conflicting staged records) or M2MPSK_E_NOMEM. */
int m2mpsk_keystore_merge(m2mpsk_keystore *dst, m2mpsk_keystore *staging,
                          uint32_t *conflict_tag);

/* ---- test hooks: they defeat the protection, so tests only -------------
 * Compiled only into m2mpsk_static (CMakeLists.txt), which defines
 * M2MPSK_TEST_HOOKS; the shipped library has none of them. */
#ifdef M2MPSK_TEST_HOOKS

/* Address of the key slot of `kpsa_id` inside its (inaccessible) arena, or
 * NULL when there is no such record or it is revoked. Reading through it
 * faults, which is what a test wants to prove. */
const uint8_t *m2mpsk_keystore_debug_slot(const m2mpsk_keystore *ks,
                                          const char *kpsa_id);

/* Copies `len` bytes at `p`, which must lie within one page of one of the
 * keystore's arenas, opening that page for reading meanwhile.
 * Returns M2MPSK_OK or M2MPSK_E_INVALID (not inside an arena). */
int m2mpsk_keystore_debug_peek(const m2mpsk_keystore *ks, const uint8_t *p,
                               uint8_t *out, size_t len);

/* Makes keystores created afterwards in this process guard their arenas
 * with mprotect even where protection keys exist, so that tests cover both
 * guards. Call before the first keystore. */
void m2mpsk_keystore_debug_refuse_pkeys(void);

/* Makes reads and writes of closed (mprotect-guarded) arenas open the page
 * instead of going through /proc/self/mem. Call before the first key. */
void m2mpsk_keystore_debug_refuse_procmem(void);

/* The descriptor reads and writes of closed arenas use: >= 0, or -1 (not
 * opened yet) or -2 (unavailable: they open the page). */
int m2mpsk_keystore_debug_procmem_fd(void);

/* mprotect calls made on key arenas by this process so far. */
unsigned long m2mpsk_keystore_debug_page_opens(void);

/* 1 when the keystore's arenas are guarded by a protection key. */
int m2mpsk_keystore_debug_uses_pkeys(const m2mpsk_keystore *ks);

#endif /* M2MPSK_TEST_HOOKS */

#endif /* M2MPSK_KEYSTORE_H */
