/* A scan of this whole process's memory for a 32-byte secret, for the key
 * hygiene tests (tests/test_hygiene.c, tests/engines/test_token_hygiene.c).
 *
 * Every mapping in /proc/self/maps is read through /proc/self/mem, which
 * also reads PROT_NONE and protection-key guarded memory (the kernel reads
 * it on our behalf), and the stacks; only resident pages are read. The
 * secret is kept as a needle, secret XOR mask and the mask, so that the
 * secret itself never sits in the scanner's memory. The scanner's own read
 * buffer, the kernel's [vvar]/[vsyscall] pages and, under AddressSanitizer,
 * its shadow are not scanned.
 *
 * Failures are criterion assertions: the functions are for criterion
 * tests. */
#ifndef M2MPSK_TEST_MEMSCAN_H
#define M2MPSK_TEST_MEMSCAN_H

#include <stddef.h>
#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define M2MT_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define M2MT_UNDER_ASAN 1
#endif
#endif
#ifndef M2MT_UNDER_ASAN
#define M2MT_UNDER_ASAN 0
#endif

#define M2MT_NEEDLE_LEN 32
#define M2MT_MAX_HITS 16

/* A secret as two halves, neither of which is the secret. */
typedef struct m2mt_needle {
  uint8_t masked[M2MT_NEEDLE_LEN], mask[M2MT_NEEDLE_LEN];
} m2mt_needle;

/* A mapping of /proc/self/maps; `name` is its path or [heap], [stack]... */
typedef struct m2mt_region {
  uintptr_t lo, hi;
  char name[96];
} m2mt_region;

typedef struct m2mt_scan_result {
  size_t hits;
  size_t bytes; /* bytes read */
  size_t unreadable_pages;
  /* The first M2MT_MAX_HITS hits: address and mapping name. */
  uintptr_t where[M2MT_MAX_HITS];
  char name[M2MT_MAX_HITS][96];
} m2mt_scan_result;

/* getrandom() until `len` bytes are drawn. */
void m2mt_random_bytes(uint8_t *out, size_t len);

/* The needle of the M2MT_NEEDLE_LEN bytes at `secret`, with a fresh mask. */
void m2mt_needle_from(m2mt_needle *n, const uint8_t *secret);

/* Skips the test where this process's memory cannot be scanned
 * meaningfully: under ASan (shadow copies and quarantined blocks) and
 * under valgrind (guest memory). */
void m2mt_skip_if_unscannable(void);

/* Scans every mapping but the kernel's vvar/vsyscall pages, ASan's shadow
 * and the scanner's own buffer. `skip_lo`..`skip_hi` (may be 0) is left
 * out too. */
m2mt_scan_result m2mt_scan_memory(const m2mt_needle *nd, uintptr_t skip_lo,
                                  uintptr_t skip_hi);

/* Logs the count ("`when`: N copies of `what` in B bytes scanned") and
 * where each recorded hit is. */
void m2mt_log_hits(const char *when, const char *what,
                   const m2mt_scan_result *r);

/* How many of the recorded hits lie in [lo, hi). */
int m2mt_hit_inside(const m2mt_scan_result *r, uintptr_t lo, uintptr_t hi);

/* Whether `addr` is one of the recorded hits. */
int m2mt_hit_at(const m2mt_scan_result *r, uintptr_t addr);

/* The mapping holding `p` (asserts it is mapped). */
m2mt_region m2mt_region_of(const void *p);

#endif
