/* A counting, failing allocator for tests, after nghttp2's. A test
 * executable that includes this (once) interposes malloc, calloc, realloc
 * and free, so that allocations libsodium and the TLS library make on our
 * behalf are counted and can fail too.
 *
 * While alloc_armed, allocations are numbered from alloc_count and the one
 * numbered alloc_fail_at fails (alloc_failed counts those); alloc_live is
 * the number of blocks allocated and not yet freed. The sanitizers own
 * malloc, so under them nothing is interposed and ALLOC_HOOK is not
 * defined. ALLOC_HOOK_STORAGE may be defined first (e.g. "static
 * _Thread_local") to keep the counters per thread. */
#ifndef M2MPSK_TEST_ALLOC_HOOK_H
#define M2MPSK_TEST_ALLOC_HOOK_H

#include <stddef.h>

#ifndef ALLOC_HOOK_STORAGE
#define ALLOC_HOOK_STORAGE static
#endif

/* Unused where the sanitizers leave ALLOC_HOOK undefined and the test
 * reads them only under #ifdef ALLOC_HOOK. */
ALLOC_HOOK_STORAGE __attribute__((unused)) int alloc_armed;
ALLOC_HOOK_STORAGE __attribute__((unused)) long alloc_count;
ALLOC_HOOK_STORAGE __attribute__((unused)) long alloc_fail_at = -1;
ALLOC_HOOK_STORAGE __attribute__((unused)) long alloc_failed;
ALLOC_HOOK_STORAGE __attribute__((unused)) long alloc_live;

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define ALLOC_HOOK 1

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static int alloc_should_fail(void) {
  if (!alloc_armed || alloc_count++ != alloc_fail_at)
    return 0;
  alloc_failed++;
  return 1;
}

void *malloc(size_t n) {
  void *p = alloc_should_fail() ? NULL : __libc_malloc(n);
  alloc_live += p != NULL;
  return p;
}

void *calloc(size_t n, size_t m) {
  void *p = alloc_should_fail() ? NULL : __libc_calloc(n, m);
  alloc_live += p != NULL;
  return p;
}

void *realloc(void *p, size_t n) {
  if (p == NULL)
    return malloc(n);
  return alloc_should_fail() ? NULL : __libc_realloc(p, n);
}

void free(void *p) {
  alloc_live -= p != NULL;
  __libc_free(p);
}
#endif

#endif /* M2MPSK_TEST_ALLOC_HOOK_H */
