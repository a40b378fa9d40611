/* The memory scanner of the key hygiene tests: see memscan.h. Extracted
 * from tests/test_hygiene.c (issue 7), unchanged in what it reads and
 * reports, so that tests/engines/test_token_hygiene.c (issue 20) scans the
 * same way. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mincore, explicit_bzero */
#endif
#include "memscan.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/types.h>
#include <unistd.h>

#define LEN M2MT_NEEDLE_LEN
#define MAX_REGIONS 8192
#define CHUNK (1u << 20)

void m2mt_random_bytes(uint8_t *out, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = getrandom(out + got, len - got, 0);
    cr_assert(n > 0 || errno == EINTR, "getrandom: %s", strerror(errno));
    if (n > 0)
      got += (size_t)n;
  }
}

void m2mt_needle_from(m2mt_needle *n, const uint8_t *secret) {
  m2mt_random_bytes(n->mask, LEN);
  for (int i = 0; i < LEN; i++)
    n->masked[i] = secret[i] ^ n->mask[i];
}

void m2mt_skip_if_unscannable(void) {
  if (M2MT_UNDER_ASAN)
    cr_skip_test("AddressSanitizer's shadow and quarantine cannot be scanned");
  FILE *f = fopen("/proc/self/maps", "r");
  cr_assert_not_null(f);
  char line[512];
  int vg = 0;
  while (fgets(line, sizeof(line), f) != NULL)
    vg |= strstr(line, "vgpreload") != NULL;
  fclose(f);
  if (vg)
    cr_skip_test("valgrind's guest memory cannot be scanned");
}

static m2mt_region g_regions[MAX_REGIONS];
static uint8_t *g_buf; /* mmap'd; never scanned itself */

static size_t read_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  cr_assert_not_null(f);
  size_t n = 0;
  char line[1024];
  while (fgets(line, sizeof(line), f) != NULL && n < MAX_REGIONS) {
    unsigned long lo, hi;
    int off = 0;
    if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &off) < 2)
      continue;
    m2mt_region *r = &g_regions[n++];
    r->lo = lo;
    r->hi = hi;
    snprintf(r->name, sizeof(r->name), "%s", off > 0 ? line + off : "");
    r->name[strcspn(r->name, "\n")] = '\0';
  }
  fclose(f);
  return n;
}

/* ASan's shadow memory on x86_64 (16 TiB, rw, mostly unbacked) holds
 * metadata, not the program's bytes (as tests/pkcs11/token_prf skips it).
 * The scans are skipped under ASan (m2mt_skip_if_unscannable); this keeps a
 * caller that scans anyway from reading terabytes. */
static int asan_shadow(uintptr_t lo, uintptr_t hi) {
  if (!M2MT_UNDER_ASAN)
    return 0;
  return lo >= 0x00007fff8000UL && hi <= 0x10007fff8000UL;
}

static void match(const m2mt_needle *nd, const uint8_t *buf, size_t len,
                  uintptr_t addr, const char *name, m2mt_scan_result *res) {
  const uint8_t first = nd->masked[0] ^ nd->mask[0];
  const uint8_t *p = buf, *end = buf + len;
  while (p + LEN <= end) {
    p = memchr(p, first, (size_t)(end - p) - (LEN - 1));
    if (p == NULL)
      break;
    int same = 1;
    for (int i = 1; i < LEN && same; i++)
      same = (p[i] ^ nd->mask[i]) == nd->masked[i];
    if (same) {
      if (res->hits < M2MT_MAX_HITS) {
        res->where[res->hits] = addr + (uintptr_t)(p - buf);
        snprintf(res->name[res->hits], sizeof(res->name[0]), "%s",
                 name[0] ? name : "[anon]");
      }
      res->hits++;
    }
    p++;
  }
}

/* Reads [lo, hi) through /proc/self/mem, only pages that are resident (a
 * page never touched holds zeros, and reading it would fault it in). */
static void scan_range(int mem, const m2mt_needle *nd, uintptr_t lo,
                       uintptr_t hi, const char *name, m2mt_scan_result *res) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  static unsigned char vec[CHUNK / 4096 + 1];
  for (uintptr_t a = lo; a < hi;) {
    size_t span = hi - a < CHUNK ? hi - a : CHUNK;
    if (mincore((void *)a, span, vec) != 0) {
      a += span;
      continue;
    }
    /* Runs of resident pages, read with LEN - 1 bytes of overlap so a
     * secret across two reads is still seen. */
    size_t npages = span / page;
    for (size_t i = 0; i < npages;) {
      if (!(vec[i] & 1)) {
        i++;
        continue;
      }
      size_t j = i;
      while (j < npages && (vec[j] & 1))
        j++;
      uintptr_t from = a + i * page, to = a + j * page;
      if (to < hi)
        to = to + LEN - 1 <= hi ? to + LEN - 1 : hi;
      size_t want = to - from;
      ssize_t got = pread(mem, g_buf, want, (off_t)from);
      if (got == (ssize_t)want) {
        res->bytes += want;
        match(nd, g_buf, want, from, name, res);
      } else {
        /* Page by page, so one unreadable page costs only itself. */
        for (uintptr_t pg = from; pg < a + j * page; pg += page) {
          size_t w = pg + page + LEN - 1 <= to ? page + LEN - 1 : to - pg;
          if (pread(mem, g_buf, w, (off_t)pg) == (ssize_t)w) {
            res->bytes += w;
            match(nd, g_buf, w, pg, name, res);
          } else {
            res->unreadable_pages++;
          }
        }
      }
      i = j;
    }
    a += span;
  }
  explicit_bzero(g_buf, CHUNK + LEN);
}

m2mt_scan_result m2mt_scan_memory(const m2mt_needle *nd, uintptr_t skip_lo,
                                  uintptr_t skip_hi) {
  if (g_buf == NULL) {
    void *b = mmap(NULL, CHUNK + 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(b, MAP_FAILED);
    g_buf = b;
  }
  m2mt_scan_result res;
  memset(&res, 0, sizeof(res));
  size_t n = read_maps();
  int mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  cr_assert_geq(mem, 0, "/proc/self/mem: %s", strerror(errno));
  const uintptr_t buf_lo = (uintptr_t)g_buf, buf_hi = buf_lo + CHUNK + 4096;
  for (size_t i = 0; i < n; i++) {
    m2mt_region *r = &g_regions[i];
    if (strstr(r->name, "[vvar") || strstr(r->name, "[vsyscall") ||
        asan_shadow(r->lo, r->hi))
      continue;
    uintptr_t lo = r->lo, hi = r->hi;
    /* Cut out the scanner's buffer and the caller's range. */
    uintptr_t cut[2][2] = {{buf_lo, buf_hi}, {skip_lo, skip_hi}};
    uintptr_t pieces[3][2] = {{lo, hi}};
    size_t np = 1;
    for (int c = 0; c < 2; c++) {
      if (cut[c][0] == cut[c][1])
        continue;
      size_t keep = 0;
      uintptr_t next[3][2];
      for (size_t k = 0; k < np; k++) {
        uintptr_t a = pieces[k][0], b = pieces[k][1];
        if (cut[c][1] <= a || cut[c][0] >= b) {
          next[keep][0] = a;
          next[keep++][1] = b;
          continue;
        }
        if (a < cut[c][0] && keep < 3) {
          next[keep][0] = a;
          next[keep++][1] = cut[c][0];
        }
        if (cut[c][1] < b && keep < 3) {
          next[keep][0] = cut[c][1];
          next[keep++][1] = b;
        }
      }
      memcpy(pieces, next, sizeof(next));
      np = keep;
    }
    for (size_t k = 0; k < np; k++)
      scan_range(mem, nd, pieces[k][0], pieces[k][1], r->name, &res);
  }
  close(mem);
  return res;
}

void m2mt_log_hits(const char *when, const char *what,
                   const m2mt_scan_result *r) {
  cr_log_info("%s: %zu cop%s of %s in %zu bytes scanned (%zu pages "
              "unreadable)",
              when, r->hits, r->hits == 1 ? "y" : "ies", what, r->bytes,
              r->unreadable_pages);
  for (size_t i = 0; i < r->hits && i < M2MT_MAX_HITS; i++)
    cr_log_info("  at %#lx in %s", (unsigned long)r->where[i], r->name[i]);
}

int m2mt_hit_inside(const m2mt_scan_result *r, uintptr_t lo, uintptr_t hi) {
  int n = 0;
  for (size_t i = 0; i < r->hits && i < M2MT_MAX_HITS; i++)
    n += r->where[i] >= lo && r->where[i] < hi;
  return n;
}

int m2mt_hit_at(const m2mt_scan_result *r, uintptr_t addr) {
  return m2mt_hit_inside(r, addr, addr + 1);
}

m2mt_region m2mt_region_of(const void *p) {
  size_t n = read_maps();
  for (size_t i = 0; i < n; i++)
    if ((uintptr_t)p >= g_regions[i].lo && (uintptr_t)p < g_regions[i].hi)
      return g_regions[i];
  cr_assert_fail("%p is not mapped", p);
  return g_regions[0];
}
