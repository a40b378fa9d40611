/* The keystore: association records indexed by KpsaID, keys in guarded
 * arenas.
 *
 * Key memory. sodium_malloc costs three or four pages per call, so keys
 * share arenas ("slabs") of fixed M2MPSK_KEY_MAX-byte slots. A slab is one
 * sodium_malloc of a page multiple (hence page-aligned), mlocked, excluded
 * from core dumps and inaccessible at rest, in one of two ways:
 *  - Where the CPU and kernel have memory protection keys (x86 PKU), every
 *    arena is tagged with one process-wide key whose access is disabled in
 *    every thread. A thread enables it for itself alone for the length of
 *    one copy: two WRPKRU instructions, no system call, and no other thread
 *    can read the key meanwhile. mprotect here costs 3 to 9 us a call.
 *  - Elsewhere arenas are PROT_NONE. A read (every handshake) goes through
 *    /proc/self/mem: the kernel copies the key from the closed page into
 *    the caller's buffer, one pread, no window in which another thread
 *    could read the page (see mem_read). Writes and wipes go the same way
 *    with pwrite (mem_write). Where /proc/self/mem is unavailable, copies
 *    open only the page that holds the slot, for the length of one copy:
 *    mprotect costs grow with the pages
 *    changed, and a smaller window exposes fewer keys. Each slab's mutex
 *    serialises those open-copy-close sequences, so that one thread never
 *    closes a page under another's copy.
 *
 * Records. Metadata is ordinary heap memory, one allocation per record with
 * the strings inline, chained in a SipHash-keyed table (a random key per
 * keystore, so that KpsaIDs chosen by a peer cannot force collisions).
 *
 * Locking. A rwlock guards the index and the slot allocator; readers copy
 * keys while holding it, so a concurrent remove cannot wipe or reuse a slot
 * mid-copy. Every change is prepared (allocations first) before anything
 * visible is modified, so that a failure leaves the keystore as it was.
 * The rwlock is striped: a reader takes the read lock of its thread's
 * stripe only, each stripe on a cache line of its own, so that lookups on
 * several cores do not bounce one lock word between them; a writer takes
 * every stripe's write lock, in order. A staging keystore, private to one
 * thread, has a single stripe. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "keystore.h"

#define SLOT_SIZE ((size_t)M2MPSK_KEY_MAX)
#define SLAB_MAX ((size_t)1 << 20)
#define NO_SLAB UINT32_MAX
#define BUCKETS_MIN 64
#ifndef M2MPSK_KS_STRIPES
#define M2MPSK_KS_STRIPES 8
#endif
#define STRIPES M2MPSK_KS_STRIPES /* a power of two */
#define CACHE_LINE 64

typedef struct ks_slab {
  uint8_t *mem;
  int pkey; /* the protection key tagging it, or -1 */
  size_t size;
  uint32_t nslots;
  uint32_t used; /* slots handed out from the never-used tail */
  pthread_mutex_t mu;
} ks_slab;

typedef struct ks_record {
  struct ks_record *next;
  uint64_t hash;
  int64_t not_before;
  int64_t not_after;
  uint64_t serial;
  uint32_t slab; /* NO_SLAB once revoked */
  uint32_t slot;
  uint32_t tag;
  uint16_t ida_len;
  uint16_t idb_len;
  uint8_t kpsa_len;
  uint8_t key_len;
  uint8_t revoked;
  m2mpsk_tkey *tk; /* a token key (no slot: slab is NO_SLAB), or NULL */
  char data[];     /* kpsa_id NUL ida NUL idb NUL */
} ks_record;

typedef union ks_stripe {
  pthread_rwlock_t rw;
  char line[CACHE_LINE];
} ks_stripe;

struct m2mpsk_keystore {
  /* Read by every lookup: kept apart from the counters written by
   * associations being created and freed on other cores. */
  unsigned flags;
  int pkey; /* arena_pkey() at creation, or -1 */
  size_t page;
  /* Behind a pointer so that const (read-only) entry points can lock them;
   * aligned to a cache line inside locks_mem. */
  ks_stripe *locks;
  void *locks_mem;
  uint32_t nstripes;
  unsigned char hash_key[crypto_shorthash_KEYBYTES];

  ks_record **buckets;
  size_t nbuckets; /* a power of two */
  atomic_size_t count;
  /* Bumped by every remove and revoke, so that live associations re-check
   * their record only when something may have happened to it. */
  atomic_uint_fast64_t generation;
  uint64_t next_serial;

  ks_slab **slabs;
  uint32_t nslabs;
  uint32_t slabs_cap;
  uint32_t alloc_hint; /* no slab below it has an unused tail */
  /* Freed slots as (slab << 32 | slot). Its capacity always covers every
   * slot, so freeing one never allocates and remove/revoke cannot fail. */
  uint64_t *free_slots;
  size_t nfree;
  size_t free_cap;
  size_t total_slots;
  atomic_size_t key_memory;
  atomic_size_t unlocked_slabs;
  int bulk;           /* a staging keystore, see bulk_close() */
  uint32_t open_slab; /* the arena a staging keystore keeps writable */
  /* The key source and its open requests (keysource.c): src_mu guards
   * src; has_source is read without it, once per responder handshake. */
  pthread_mutex_t src_mu;
  struct m2mpsk_key_sources *src;
  atomic_int has_source;
  /* M2MPSK_KEYSTORE_TOKEN_KEYS, given or set by a token key's add. */
  atomic_int token_keys;
  char pad_[CACHE_LINE];
  atomic_size_t refs; /* changed by every association's new and free */
  char pad2_[CACHE_LINE];
};

/* ---- locking ------------------------------------------------------------ */

/* The stripe of the CPU the thread runs on: threads on different cores
 * take different locks. Where the CPU is unknown, stripe 0. The caller
 * unlocks the stripe it locked, wherever it runs by then. */
static pthread_rwlock_t *read_lock(const m2mpsk_keystore *ks) {
  int cpu = sched_getcpu();
  uint32_t i = cpu > 0 ? (uint32_t)cpu & (ks->nstripes - 1) : 0;
  pthread_rwlock_t *l = &ks->locks[i].rw;
  pthread_rwlock_rdlock(l);
  return l;
}

static void read_unlock(pthread_rwlock_t *l) {
  pthread_rwlock_unlock(l);
}

static void write_lock(const m2mpsk_keystore *ks) {
  for (uint32_t i = 0; i < ks->nstripes; i++)
    pthread_rwlock_wrlock(&ks->locks[i].rw);
}

static void write_unlock(const m2mpsk_keystore *ks) {
  for (uint32_t i = ks->nstripes; i-- > 0;)
    pthread_rwlock_unlock(&ks->locks[i].rw);
}

static const char *rec_kpsa_id(const ks_record *r) {
  return r->data;
}
static const char *rec_ida(const ks_record *r) {
  return r->data + r->kpsa_len + 1;
}
static const char *rec_idb(const ks_record *r) {
  return r->data + r->kpsa_len + 1 + r->ida_len + 1;
}

static uint64_t kpsa_hash(const m2mpsk_keystore *ks, const char *id,
                          size_t len) {
  unsigned char h[crypto_shorthash_BYTES];
  crypto_shorthash(h, (const unsigned char *)id, len, ks->hash_key);
  uint64_t v;
  memcpy(&v, h, sizeof(v));
  return v;
}

static ks_record **find_link(const m2mpsk_keystore *ks, const char *id,
                             size_t len, uint64_t hash) {
  ks_record **link = &ks->buckets[hash & (ks->nbuckets - 1)];
  for (; *link != NULL; link = &(*link)->next) {
    const ks_record *r = *link;
    if (r->hash == hash && r->kpsa_len == len &&
        memcmp(rec_kpsa_id(r), id, len) == 0)
      return link;
  }
  return NULL;
}

/* A name longer than any KpsaID is simply absent; the bound also keeps an
 * unterminated argument from being scanned past it. */
static ks_record *find(const m2mpsk_keystore *ks, const char *id) {
  size_t len = strnlen(id, (size_t)M2MPSK_KPSA_ID_MAX + 1);
  if (len > M2MPSK_KPSA_ID_MAX)
    return NULL;
  ks_record **link = find_link(ks, id, len, kpsa_hash(ks, id, len));
  return link != NULL ? *link : NULL;
}

/* ---- guarded slots ------------------------------------------------------ */

static int g_pkey = -1;
static pthread_once_t g_pkey_once = PTHREAD_ONCE_INIT;
/* The switches that weaken the guard, and the counter of page opens, exist
 * only with the test hooks; in the shipped library they are constants. */
#ifdef M2MPSK_TEST_HOOKS
static int g_pkeys_refused;
#else
#define g_pkeys_refused 0
#endif

static void pkey_setup(void) {
  if (!g_pkeys_refused)
    g_pkey = pkey_alloc(0, PKEY_DISABLE_ACCESS);
}

/* The process-wide protection key for key arenas, or -1 without PKU. */
static int arena_pkey(void) {
  pthread_once(&g_pkey_once, pkey_setup);
  return g_pkey < 0 ? -1 : g_pkey;
}

static uint8_t *slot_addr(const ks_slab *s, uint32_t slot) {
  return s->mem + (size_t)slot * SLOT_SIZE;
}

static uint8_t *slot_page(const m2mpsk_keystore *ks, const ks_slab *s,
                          uint32_t slot) {
  size_t off = (size_t)slot * SLOT_SIZE;
  return s->mem + (off & ~(ks->page - 1));
}

#ifdef M2MPSK_TEST_HOOKS
static atomic_ulong g_page_opens; /* mprotect calls, for the tests */
#define COUNT_PAGE_OPEN()                                                      \
  atomic_fetch_add_explicit(&g_page_opens, 1, memory_order_relaxed)
#else
#define COUNT_PAGE_OPEN() ((void)0)
#endif

/* mprotect on our own page-aligned mapping fails only when the kernel cannot
 * split the mapping (vm.max_map_count). Going on would leave a key either
 * unwritten or readable, so the process stops, as libsodium does when its
 * guarded memory is compromised. */
static void page_protect(void *page, size_t len, int prot) {
  COUNT_PAGE_OPEN();
  if (mprotect(page, len, prot) != 0)
    abort();
}

/* ---- reading a closed arena through /proc/self/mem ----------------------
 *
 * Without protection keys, opening a page for one copy costs two mprotect
 * calls (11.7 us together on this machine type), each taking the process's
 * mmap lock for writing and shooting down the TLB entry on every core that
 * runs one of our threads, so that two threads handshaking at once go
 * slower than one. pread on /proc/self/mem costs one system call (1.7 us),
 * takes that lock shared, changes no mapping, and leaves the page closed
 * throughout: the kernel copies the key straight into the caller's buffer.
 *
 * The descriptor is opened on first use with O_CLOEXEC and moved above
 * MEM_FD_MIN, out of the way of ordinary open() calls. It is bound to the
 * memory of the process that opened it, so a forked child drops its copy
 * (pthread_atfork) and opens its own. Where /proc is missing, the open is
 * denied, or the kernel refuses such reads (proc_mem.force_override), the
 * probe read at open fails, the descriptor is closed, and the process uses
 * mprotect from then on. A host that closes descriptors it does not own
 * makes the next read fail with EBADF: the descriptor is reopened, the
 * stale number left alone. If the host reuses that number for a file that
 * answers any offset (/dev/zero), handshakes fail with a wrong key; no key
 * is exposed. */
#define MEM_FD_MIN 512
#define MEM_FD_CLOSED (-1)
#define MEM_FD_OFF (-2)

static atomic_int g_mem_fd = MEM_FD_CLOSED;
static atomic_int g_mem_writable; /* g_mem_fd was opened O_RDWR */
/* Identity of the descriptor opened, checked before every write: a number
 * the host closed and reused for one of its files must never receive a
 * key (a read through it only yields a wrong key, a write would store the
 * key in the host's file). */
static atomic_ulong g_mem_dev, g_mem_ino;
static pthread_mutex_t g_mem_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_mem_once = PTHREAD_ONCE_INIT;
#ifdef M2MPSK_TEST_HOOKS
static int g_mem_refused;
#else
#define g_mem_refused 0
#endif

static void mem_atfork_child(void) {
  int fd = atomic_load(&g_mem_fd);
  if (fd >= 0)
    close(fd);
  atomic_store(&g_mem_fd, fd == MEM_FD_OFF ? MEM_FD_OFF : MEM_FD_CLOSED);
  pthread_mutex_init(&g_mem_mu, NULL);
}

static void mem_setup(void) {
  if (pthread_atfork(NULL, NULL, mem_atfork_child) != 0)
    atomic_store(&g_mem_fd, MEM_FD_OFF);
}

/* Opens a descriptor in place of `stale`, unless another thread already
 * has, and proves it by reading `len` bytes at `src` into `dst`, setting
 * *done. Returns the descriptor now in use, or MEM_FD_OFF. */
static int mem_reopen(int stale, void *dst, const void *src, size_t len,
                      int *done) {
  pthread_once(&g_mem_once, mem_setup);
  pthread_mutex_lock(&g_mem_mu);
  int fd = atomic_load(&g_mem_fd);
  if (fd == stale && fd != MEM_FD_OFF) {
    /* Read-write so that key writes and wipes skip mprotect too; a host
     * that allows only reading still gets the reads. */
    int writable = 0;
    if (!g_mem_refused) {
      fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
      writable = fd >= 0;
      if (fd < 0)
        fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    } else {
      fd = -1;
    }
    if (fd >= 0 && fd < MEM_FD_MIN) {
      int high = fcntl(fd, F_DUPFD_CLOEXEC, MEM_FD_MIN);
      if (high >= 0) {
        close(fd);
        fd = high;
      }
    }
    if (fd >= 0) {
      if (pread(fd, dst, len, (off_t)(uintptr_t)src) == (ssize_t)len) {
        *done = 1;
      } else {
        close(fd);
        fd = -1;
      }
    }
    struct stat st;
    if (fd >= 0 && writable && fstat(fd, &st) == 0) {
      atomic_store(&g_mem_dev, (unsigned long)st.st_dev);
      atomic_store(&g_mem_ino, (unsigned long)st.st_ino);
    } else {
      writable = 0;
    }
    fd = fd >= 0 ? fd : MEM_FD_OFF;
    atomic_store(&g_mem_writable, fd >= 0 && writable);
    atomic_store(&g_mem_fd, fd);
  }
  pthread_mutex_unlock(&g_mem_mu);
  return fd;
}

/* Copies `len` bytes at `src` (in a closed arena) to `dst`. Returns 0, or
 * -1 when /proc/self/mem cannot serve and the caller must open the page. */
static int mem_read(void *dst, const void *src, size_t len) {
  int fd = atomic_load_explicit(&g_mem_fd, memory_order_acquire);
  if (fd == MEM_FD_OFF)
    return -1;
  if (fd >= 0 && pread(fd, dst, len, (off_t)(uintptr_t)src) == (ssize_t)len)
    return 0;
  /* Not opened yet, or not ours any more (closed, or the number reused). */
  int done = 0;
  int now = mem_reopen(fd, dst, src, len, &done);
  if (done)
    return 0;
  return now >= 0 && pread(now, dst, len, (off_t)(uintptr_t)src) == (ssize_t)len
             ? 0
             : -1;
}

/* Writes `len` bytes from `src` (NULL: zeros) to `dst` in a closed arena,
 * like mem_read: one pwrite, the page stays closed and no mapping changes,
 * where mprotect costs two calls (an add measured 4.8 us against 1.15 us).
 * Returns 0, or -1 when the caller must open the page instead; a failed or
 * short write leaves nothing the fallback does not overwrite. Before each
 * write, fstat proves the descriptor is still the one opened (see
 * g_mem_ino); if not, this write falls back, and the next read reopens. */
static int mem_write(void *dst, const void *src, size_t len) {
  static const uint8_t zeros[SLOT_SIZE];
  if (src == NULL) {
    if (len > sizeof(zeros))
      return -1;
    src = zeros;
  }
  int fd = atomic_load_explicit(&g_mem_fd, memory_order_acquire);
  if (fd == MEM_FD_CLOSED) {
    /* Not opened yet: open it with a probe read of the closed slot. */
    uint8_t probe[1];
    if (mem_read(probe, dst, 1) != 0)
      return -1;
    sodium_memzero(probe, sizeof(probe));
    fd = atomic_load_explicit(&g_mem_fd, memory_order_acquire);
  }
  struct stat st;
  if (fd < 0 || !atomic_load_explicit(&g_mem_writable, memory_order_relaxed) ||
      fstat(fd, &st) != 0 ||
      (unsigned long)st.st_dev !=
          atomic_load_explicit(&g_mem_dev, memory_order_relaxed) ||
      (unsigned long)st.st_ino !=
          atomic_load_explicit(&g_mem_ino, memory_order_relaxed))
    return -1;
  return pwrite(fd, src, len, (off_t)(uintptr_t)dst) == (ssize_t)len ? 0 : -1;
}

static void slot_copy(const m2mpsk_keystore *ks, uint32_t slab, uint32_t slot,
                      int prot, void *dst, const void *src, size_t len) {
  ks_slab *s = ks->slabs[slab];
  if (s->pkey >= 0) {
    /* Rights are per thread: no lock, and no one else gains access. */
    if (pkey_set(s->pkey, prot == PROT_READ ? PKEY_DISABLE_WRITE : 0) != 0)
      abort();
    if (src == NULL)
      sodium_memzero(dst, len);
    else
      memcpy(dst, src, len);
    if (pkey_set(s->pkey, PKEY_DISABLE_ACCESS) != 0)
      abort();
    return;
  }
  int open = ks->open_slab == slab;
  uint8_t *page = slot_page(ks, s, slot);
  pthread_mutex_lock(&s->mu);
  if (!open)
    page_protect(page, ks->page, prot);
  if (src == NULL)
    sodium_memzero(dst, len);
  else
    memcpy(dst, src, len);
  if (!open)
    page_protect(page, ks->page, PROT_NONE);
  pthread_mutex_unlock(&s->mu);
}

/* A staging keystore has no other user, so it keeps the arena it is filling
 * writable instead of paying two mprotect calls per key; the arena is closed
 * when the next one is opened and before the records are merged. */
static void bulk_close(m2mpsk_keystore *ks) {
  if (ks->open_slab == NO_SLAB)
    return;
  ks_slab *s = ks->slabs[ks->open_slab];
  page_protect(s->mem, s->size, PROT_NONE);
  ks->open_slab = NO_SLAB;
}

static void slot_write(m2mpsk_keystore *ks, uint32_t slab, uint32_t slot,
                       const uint8_t *key, size_t len) {
  ks_slab *s = ks->slabs[slab];
  if (ks->bulk && s->pkey < 0 && ks->open_slab != slab) {
    bulk_close(ks);
    page_protect(s->mem, s->size, PROT_READ | PROT_WRITE);
    ks->open_slab = slab;
  }
  if (s->pkey < 0 && ks->open_slab != slab &&
      mem_write(slot_addr(s, slot), key, len) == 0)
    return;
  slot_copy(ks, slab, slot, PROT_READ | PROT_WRITE, slot_addr(s, slot), key,
            len);
}

static void slot_read(const m2mpsk_keystore *ks, uint32_t slab, uint32_t slot,
                      uint8_t *out, size_t len) {
  const ks_slab *s = ks->slabs[slab];
  if (s->pkey < 0 && ks->open_slab != slab &&
      mem_read(out, slot_addr(s, slot), len) == 0)
    return;
  slot_copy(ks, slab, slot, PROT_READ, out, slot_addr(s, slot), len);
}

static void slot_wipe(const m2mpsk_keystore *ks, uint32_t slab, uint32_t slot) {
  const ks_slab *s = ks->slabs[slab];
  if (s->pkey < 0 && ks->open_slab != slab &&
      mem_write(slot_addr(s, slot), NULL, SLOT_SIZE) == 0)
    return;
  slot_copy(ks, slab, slot, PROT_READ | PROT_WRITE,
            slot_addr(ks->slabs[slab], slot), NULL, SLOT_SIZE);
}

static void slab_destroy(ks_slab *s) {
  if (s == NULL)
    return;
  /* sodium_free makes the region writable, wipes and unlocks it; its
   * mprotect keeps a protection key, so give the pages back to key 0. */
  if (s->pkey >= 0 &&
      pkey_mprotect(s->mem, s->size, PROT_READ | PROT_WRITE, 0) != 0)
    abort();
  sodium_free(s->mem);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* Grows a uint64_t array to hold at least `need` entries. */
static int reserve_u64(uint64_t **arr, size_t *cap, size_t need) {
  if (need <= *cap)
    return 1;
  size_t n = *cap ? *cap : 64;
  while (n < need)
    n *= 2;
  if (n > SIZE_MAX / sizeof(uint64_t))
    return 0;
  uint64_t *p = realloc(*arr, n * sizeof(uint64_t));
  if (p == NULL)
    return 0;
  *arr = p;
  *cap = n;
  return 1;
}

static int reserve_slabs(m2mpsk_keystore *ks, size_t need) {
  if (need <= ks->slabs_cap)
    return 1;
  if (need >= NO_SLAB)
    return 0;
  size_t n = ks->slabs_cap ? ks->slabs_cap : 8;
  while (n < need)
    n *= 2;
  ks_slab **p = realloc(ks->slabs, n * sizeof(*p));
  if (p == NULL)
    return 0;
  ks->slabs = p;
  ks->slabs_cap = (uint32_t)n;
  return 1;
}

/* Adds a slab, each twice the previous one up to SLAB_MAX. */
static int slab_add(m2mpsk_keystore *ks) {
  size_t size = ks->page;
  for (uint32_t i = 0; i < ks->nslabs && size < SLAB_MAX; i++)
    size *= 2;
  uint32_t nslots = (uint32_t)(size / SLOT_SIZE);
  if (!reserve_slabs(ks, (size_t)ks->nslabs + 1) ||
      !reserve_u64(&ks->free_slots, &ks->free_cap, ks->total_slots + nslots))
    return M2MPSK_E_NOMEM;

  ks_slab *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return M2MPSK_E_NOMEM;
  s->mem = sodium_malloc(size);
  if (s->mem == NULL) {
    free(s);
    return M2MPSK_E_NOMEM;
  }
  /* sodium_malloc ignores a failing mlock; ask again to learn the truth.
   * This also marks the pages MADV_DONTDUMP. */
  int locked = sodium_mlock(s->mem, size) == 0;
  if (!locked && (ks->flags & M2MPSK_KEYSTORE_REQUIRE_LOCKED)) {
    sodium_free(s->mem);
    free(s);
    return M2MPSK_E_UNLOCKED;
  }
  s->pkey = ks->pkey;
  if (pthread_mutex_init(&s->mu, NULL) != 0) {
    sodium_free(s->mem);
    free(s);
    return M2MPSK_E_NOMEM;
  }
  int guarded =
      s->pkey >= 0
          ? pkey_mprotect(s->mem, size, PROT_READ | PROT_WRITE, s->pkey) == 0
          : sodium_mprotect_noaccess(s->mem) == 0;
  if (!guarded) {
    pthread_mutex_destroy(&s->mu);
    sodium_free(s->mem);
    free(s);
    return M2MPSK_E_NOMEM;
  }
  s->size = size;
  s->nslots = nslots;
  ks->slabs[ks->nslabs++] = s;
  ks->total_slots += nslots;
  atomic_fetch_add(&ks->key_memory, size);
  if (!locked)
    atomic_fetch_add(&ks->unlocked_slabs, 1);
  return M2MPSK_OK;
}

static int slot_alloc(m2mpsk_keystore *ks, uint32_t *slab, uint32_t *slot) {
  if (ks->nfree > 0) {
    uint64_t v = ks->free_slots[--ks->nfree];
    *slab = (uint32_t)(v >> 32);
    *slot = (uint32_t)v;
    return M2MPSK_OK;
  }
  while (ks->alloc_hint < ks->nslabs &&
         ks->slabs[ks->alloc_hint]->used == ks->slabs[ks->alloc_hint]->nslots)
    ks->alloc_hint++;
  if (ks->alloc_hint == ks->nslabs) {
    int rc = slab_add(ks);
    if (rc != M2MPSK_OK)
      return rc;
  }
  ks_slab *s = ks->slabs[ks->alloc_hint];
  *slab = ks->alloc_hint;
  *slot = s->used++;
  return M2MPSK_OK;
}

static void slot_free(m2mpsk_keystore *ks, uint32_t slab, uint32_t slot) {
  ks->free_slots[ks->nfree++] = (uint64_t)slab << 32 | slot;
}

/* ---- index ------------------------------------------------------------- */

/* Makes room for `n` records at a load factor of at most 1. A failure
 * leaves the old table in place. */
static int table_reserve(m2mpsk_keystore *ks, size_t n) {
  if (n <= ks->nbuckets)
    return 1;
  size_t nb = ks->nbuckets;
  while (nb < n) {
    if (nb > SIZE_MAX / 2 / sizeof(ks_record *))
      return 0;
    nb *= 2;
  }
  ks_record **b = calloc(nb, sizeof(*b));
  if (b == NULL)
    return 0;
  for (size_t i = 0; i < ks->nbuckets; i++) {
    ks_record *r = ks->buckets[i];
    while (r != NULL) {
      ks_record *next = r->next;
      ks_record **head = &b[r->hash & (nb - 1)];
      r->next = *head;
      *head = r;
      r = next;
    }
  }
  free(ks->buckets);
  ks->buckets = b;
  ks->nbuckets = nb;
  return 1;
}

static void table_insert(m2mpsk_keystore *ks, ks_record *r) {
  ks_record **head = &ks->buckets[r->hash & (ks->nbuckets - 1)];
  r->next = *head;
  *head = r;
}

/* ---- lifetime ----------------------------------------------------------- */

/* Read-lock stripes: one per CPU the machine can have, as a power of two,
 * at most STRIPES. A reader takes its CPU's stripe, so more stripes than
 * CPUs only cost writers, who take them all: with a key source every new
 * KpsaID is a write (on 2 CPUs, 8 stripes made an add take 16 lock
 * operations on 8 cold cache lines where 4 on 2 do). */
static uint32_t stripes_for_cpus(void) {
  long cpus = sysconf(_SC_NPROCESSORS_CONF);
  uint32_t n = 1;
  while (n < STRIPES && (long)n < cpus)
    n *= 2;
  return n;
}

static int keystore_create(m2mpsk_keystore **out, unsigned flags,
                           const unsigned char *hash_key) {
  m2mpsk_keystore *ks = calloc(1, sizeof(*ks));
  if (ks == NULL)
    return M2MPSK_E_NOMEM;
  ks->flags = flags;
  ks->pkey = arena_pkey();
  long page = sysconf(_SC_PAGESIZE);
  ks->page = page > 0 ? (size_t)page : 4096;
  ks->nbuckets = BUCKETS_MIN;
  ks->buckets = calloc(ks->nbuckets, sizeof(*ks->buckets));
  ks->nstripes = hash_key != NULL ? 1 : stripes_for_cpus(); /* staging: one */
  ks->locks_mem = malloc((ks->nstripes + 1) * sizeof(ks_stripe));
  if (ks->buckets == NULL || ks->locks_mem == NULL)
    goto fail;
  ks->locks = (ks_stripe *)(((uintptr_t)ks->locks_mem + CACHE_LINE - 1) &
                            ~(uintptr_t)(CACHE_LINE - 1));
  pthread_rwlockattr_t attr;
  if (pthread_rwlockattr_init(&attr) != 0)
    goto fail;
#ifdef __GLIBC__
  /* glibc's default lets a stream of lookups starve add and remove. */
  pthread_rwlockattr_setkind_np(&attr,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
  uint32_t inited = 0;
  while (inited < ks->nstripes &&
         pthread_rwlock_init(&ks->locks[inited].rw, &attr) == 0)
    inited++;
  pthread_rwlockattr_destroy(&attr);
  if (inited < ks->nstripes) {
    while (inited-- > 0)
      pthread_rwlock_destroy(&ks->locks[inited].rw);
    goto fail;
  }
  if (hash_key != NULL)
    memcpy(ks->hash_key, hash_key, sizeof(ks->hash_key));
  else
    crypto_shorthash_keygen(ks->hash_key);
  if (pthread_mutex_init(&ks->src_mu, NULL) != 0) {
    for (uint32_t i = 0; i < ks->nstripes; i++)
      pthread_rwlock_destroy(&ks->locks[i].rw);
    goto fail;
  }
  atomic_init(&ks->has_source, 0);
  atomic_init(&ks->token_keys, (flags & M2MPSK_KEYSTORE_TOKEN_KEYS) != 0);
  atomic_init(&ks->refs, 1);
  atomic_init(&ks->count, 0);
  atomic_init(&ks->key_memory, 0);
  atomic_init(&ks->unlocked_slabs, 0);
  ks->next_serial = 1;
  ks->open_slab = NO_SLAB;
  *out = ks;
  return M2MPSK_OK;
fail:
  free(ks->buckets);
  free(ks->locks_mem);
  free(ks);
  return M2MPSK_E_NOMEM;
}

int m2mpsk_keystore_new(m2mpsk_keystore **out, unsigned flags) {
  if (out == NULL)
    return M2MPSK_E_INVALID;
  *out = NULL;
  if ((flags & ~(unsigned)(M2MPSK_KEYSTORE_REQUIRE_LOCKED |
                           M2MPSK_KEYSTORE_TOKEN_KEYS)) != 0)
    return M2MPSK_E_INVALID;
  if (sodium_init() < 0)
    return M2MPSK_E_NOMEM;
  return keystore_create(out, flags, NULL);
}

int m2mpsk_keystore_new_staging(const m2mpsk_keystore *like,
                                m2mpsk_keystore **out) {
  if (like == NULL || out == NULL)
    return M2MPSK_E_INVALID;
  *out = NULL;
  /* The same index key lets merge reuse every record's hash. */
  int rc = keystore_create(out, like->flags, like->hash_key);
  if (rc == M2MPSK_OK)
    (*out)->bulk = 1;
  return rc;
}

static void keystore_destroy(m2mpsk_keystore *ks) {
  /* Open requests outlive their keystore only as answered, detached ones:
   * a request holds no reference to it (no cycle), so this is where they
   * learn that it is gone. */
  m2mpsk_key_sources_destroy(ks->src);
  ks->src = NULL;
  pthread_mutex_destroy(&ks->src_mu);
  for (size_t i = 0; i < ks->nbuckets; i++) {
    ks_record *r = ks->buckets[i];
    while (r != NULL) {
      ks_record *next = r->next;
      m2mpsk_tkey_unref(r->tk);
      free(r);
      r = next;
    }
  }
  free(ks->buckets);
  for (uint32_t i = 0; i < ks->nslabs; i++)
    slab_destroy(ks->slabs[i]);
  free(ks->slabs);
  free(ks->free_slots);
  for (uint32_t i = 0; i < ks->nstripes; i++)
    pthread_rwlock_destroy(&ks->locks[i].rw);
  free(ks->locks_mem);
  sodium_memzero(ks->hash_key, sizeof(ks->hash_key));
  free(ks);
}

void m2mpsk_keystore_ref(m2mpsk_keystore *ks) {
  if (ks != NULL)
    atomic_fetch_add_explicit(&ks->refs, 1, memory_order_relaxed);
}

int m2mpsk_keystore_try_ref(m2mpsk_keystore *ks) {
  size_t n = atomic_load(&ks->refs);
  while (n != 0) {
    if (atomic_compare_exchange_weak(&ks->refs, &n, n + 1))
      return 1;
  }
  return 0;
}

pthread_mutex_t *m2mpsk_keystore_src_mu(m2mpsk_keystore *ks) {
  return &ks->src_mu;
}

struct m2mpsk_key_sources **m2mpsk_keystore_src(m2mpsk_keystore *ks) {
  return &ks->src;
}

int m2mpsk_keystore_has_source(const m2mpsk_keystore *ks) {
  return atomic_load_explicit(&ks->has_source, memory_order_relaxed);
}

void m2mpsk_keystore_set_has_source(m2mpsk_keystore *ks, int on) {
  atomic_store(&ks->has_source, on);
}

void m2mpsk_keystore_free(m2mpsk_keystore *ks) {
  if (ks == NULL)
    return;
  if (atomic_fetch_sub_explicit(&ks->refs, 1, memory_order_acq_rel) == 1)
    keystore_destroy(ks);
}

/* ---- records ----------------------------------------------------------- */

int m2mpsk_record_check(const char *kpsa_id, size_t key_len, const char *ida,
                        const char *idb, int64_t not_before,
                        int64_t not_after) {
  int rc = m2mpsk_kpsa_id_validate(kpsa_id);
  if (rc != M2MPSK_OK)
    return rc;
  return m2mpsk_record_check_rest(key_len, ida, idb, not_before, not_after);
}

int m2mpsk_record_check_rest(size_t key_len, const char *ida, const char *idb,
                             int64_t not_before, int64_t not_after) {
  int rc;
  if (key_len < M2MPSK_KEY_MIN || key_len > M2MPSK_KEY_MAX)
    return M2MPSK_E_KEY_LENGTH;
  if (ida != NULL && (rc = m2mpsk_ida_validate(ida)) != M2MPSK_OK)
    return rc;
  if ((rc = m2mpsk_idb_validate(idb)) != M2MPSK_OK)
    return rc;
  if (not_before < 0 || not_after < 0 ||
      (not_before != 0 && not_after != 0 && not_after < not_before))
    return M2MPSK_E_VALIDITY;
  return M2MPSK_OK;
}

/* Checks add()'s arguments and builds the record (key not yet stored).
 * Returns M2MPSK_OK with *out, or add()'s validation codes / E_NOMEM. */
static int record_build(m2mpsk_keystore *ks, const char *kpsa_id,
                        size_t key_len, const char *ida, const char *idb,
                        int64_t not_before, int64_t not_after, uint32_t tag,
                        ks_record **out) {
  int rc = m2mpsk_record_check(kpsa_id, key_len, ida, idb, not_before,
                               not_after);
  if (rc != M2MPSK_OK)
    return rc;

  size_t kpsa_len = strlen(kpsa_id);
  size_t ida_len = ida != NULL ? strlen(ida) : 0;
  size_t idb_len = strlen(idb);
  uint64_t hash = kpsa_hash(ks, kpsa_id, kpsa_len);
  ks_record *r = malloc(sizeof(*r) + kpsa_len + 1 + ida_len + 1 + idb_len + 1);
  if (r == NULL)
    return M2MPSK_E_NOMEM;
  r->next = NULL;
  r->hash = hash;
  r->not_before = not_before;
  r->not_after = not_after;
  r->serial = 0;
  r->slab = NO_SLAB;
  r->slot = 0;
  r->tag = tag;
  r->kpsa_len = (uint8_t)kpsa_len;
  r->ida_len = (uint16_t)ida_len;
  r->idb_len = (uint16_t)idb_len;
  r->key_len = (uint8_t)key_len;
  r->revoked = 0;
  r->tk = NULL;
  char *p = r->data;
  memcpy(p, kpsa_id, kpsa_len + 1);
  p += kpsa_len + 1;
  if (ida != NULL)
    memcpy(p, ida, ida_len);
  p[ida_len] = '\0';
  p += ida_len + 1;
  memcpy(p, idb, idb_len + 1);
  *out = r;
  return M2MPSK_OK;
}

static int add_record(m2mpsk_keystore *ks, const char *kpsa_id,
                      const uint8_t *key, size_t key_len, const char *ida,
                      const char *idb, int64_t not_before, int64_t not_after,
                      uint32_t tag, uint64_t *serial) {
  if (ks == NULL || kpsa_id == NULL || key == NULL || idb == NULL)
    return M2MPSK_E_INVALID;
  ks_record *r = NULL;
  int rc = record_build(ks, kpsa_id, key_len, ida, idb, not_before, not_after,
                        tag, &r);
  if (rc != M2MPSK_OK)
    return rc;

  write_lock(ks);
  if (find_link(ks, kpsa_id, r->kpsa_len, r->hash) != NULL) {
    rc = M2MPSK_E_DUPLICATE;
    goto out;
  }
  if (!table_reserve(ks, atomic_load(&ks->count) + 1)) {
    rc = M2MPSK_E_NOMEM;
    goto out;
  }
  if ((rc = slot_alloc(ks, &r->slab, &r->slot)) != M2MPSK_OK)
    goto out;
  slot_write(ks, r->slab, r->slot, key, key_len);
  r->serial = ks->next_serial++;
  if (serial != NULL)
    *serial = r->serial;
  table_insert(ks, r);
  atomic_fetch_add(&ks->count, 1);
  r = NULL;
out:
  write_unlock(ks);
  free(r);
  return rc;
}

int m2mpsk_keystore_add_tagged(m2mpsk_keystore *ks, const char *kpsa_id,
                               const uint8_t *key, size_t key_len,
                               const char *ida, const char *idb,
                               int64_t not_before, int64_t not_after,
                               uint32_t tag) {
  return add_record(ks, kpsa_id, key, key_len, ida, idb, not_before,
                    not_after, tag, NULL);
}

int m2mpsk_keystore_add_serial(m2mpsk_keystore *ks, const char *kpsa_id,
                               const uint8_t *key, size_t key_len,
                               const char *ida, const char *idb,
                               int64_t not_before, int64_t not_after,
                               uint64_t *serial) {
  return add_record(ks, kpsa_id, key, key_len, ida, idb, not_before,
                    not_after, 0, serial);
}

int m2mpsk_keystore_add(m2mpsk_keystore *ks, const char *kpsa_id,
                        const uint8_t *key, size_t key_len, const char *ida,
                        const char *idb, int64_t not_before,
                        int64_t not_after) {
  return m2mpsk_keystore_add_tagged(ks, kpsa_id, key, key_len, ida, idb,
                                    not_before, not_after, 0);
}

/* ---- token keys (since 0.5) --------------------------------------------- */

struct m2mpsk_tkey {
  m2mpsk_token_master_secret_fn master_secret;
  m2mpsk_token_release_fn release;
  void *ctx;
  atomic_size_t refs;
};

void m2mpsk_tkey_ref(m2mpsk_tkey *tk) {
  atomic_fetch_add_explicit(&tk->refs, 1, memory_order_relaxed);
}

void m2mpsk_tkey_unref(m2mpsk_tkey *tk) {
  if (tk == NULL ||
      atomic_fetch_sub_explicit(&tk->refs, 1, memory_order_acq_rel) != 1)
    return;
  if (tk->release != NULL)
    tk->release(tk->ctx);
  free(tk);
}

int m2mpsk_tkey_master_secret(const m2mpsk_tkey *tk, const char *digest,
                              const uint8_t *prefix, size_t prefix_len,
                              const uint8_t *seed, size_t seed_len,
                              uint8_t *out, size_t out_len) {
  return tk->master_secret(tk->ctx, digest, prefix, prefix_len, seed, seed_len,
                           out, out_len) == 0
             ? 0
             : -1;
}

int m2mpsk_keystore_token_keys(const m2mpsk_keystore *ks) {
  return atomic_load_explicit(&ks->token_keys, memory_order_relaxed);
}

int m2mpsk_keystore_add_token_key(m2mpsk_keystore *ks, const char *kpsa_id,
                                  size_t key_len,
                                  m2mpsk_token_master_secret_fn master_secret,
                                  m2mpsk_token_release_fn release, void *ctx,
                                  const char *ida, const char *idb,
                                  int64_t not_before, int64_t not_after) {
  if (ks == NULL || kpsa_id == NULL || idb == NULL || master_secret == NULL)
    return M2MPSK_E_INVALID;
  ks_record *r = NULL;
  int rc = record_build(ks, kpsa_id, key_len, ida, idb, not_before, not_after,
                        0, &r);
  if (rc != M2MPSK_OK)
    return rc;
  m2mpsk_tkey *tk = malloc(sizeof(*tk));
  if (tk == NULL) {
    free(r);
    return M2MPSK_E_NOMEM;
  }
  tk->master_secret = master_secret;
  tk->release = release;
  tk->ctx = ctx;
  atomic_init(&tk->refs, 1);
  write_lock(ks);
  if (find_link(ks, kpsa_id, r->kpsa_len, r->hash) != NULL) {
    rc = M2MPSK_E_DUPLICATE;
  } else if (!table_reserve(ks, atomic_load(&ks->count) + 1)) {
    rc = M2MPSK_E_NOMEM;
  } else {
    r->tk = tk;
    r->serial = ks->next_serial++;
    table_insert(ks, r);
    atomic_fetch_add(&ks->count, 1);
    atomic_store(&ks->token_keys, 1);
    r = NULL;
    tk = NULL;
  }
  write_unlock(ks);
  free(r);
  free(tk); /* on failure the caller keeps ctx: no release */
  return rc;
}

/* Wipes a record's key and returns its slot; lets go of a token key (its
 * release runs when no handshake needs it any more). */
static void record_drop_key(m2mpsk_keystore *ks, ks_record *r) {
  m2mpsk_tkey_unref(r->tk);
  r->tk = NULL;
  if (r->slab == NO_SLAB)
    return;
  slot_wipe(ks, r->slab, r->slot);
  slot_free(ks, r->slab, r->slot);
  r->slab = NO_SLAB;
  r->slot = 0;
}

int m2mpsk_keystore_remove(m2mpsk_keystore *ks, const char *kpsa_id) {
  if (ks == NULL || kpsa_id == NULL)
    return M2MPSK_E_INVALID;
  size_t len = strnlen(kpsa_id, (size_t)M2MPSK_KPSA_ID_MAX + 1);
  if (len > M2MPSK_KPSA_ID_MAX)
    return M2MPSK_E_NOT_FOUND;
  uint64_t hash = kpsa_hash(ks, kpsa_id, len);
  write_lock(ks);
  ks_record **link = find_link(ks, kpsa_id, len, hash);
  ks_record *r = link != NULL ? *link : NULL;
  if (r != NULL) {
    record_drop_key(ks, r);
    *link = r->next;
    atomic_fetch_sub(&ks->count, 1);
    atomic_fetch_add(&ks->generation, 1);
  }
  write_unlock(ks);
  if (r == NULL)
    return M2MPSK_E_NOT_FOUND;
  free(r);
  return M2MPSK_OK;
}

int m2mpsk_keystore_revoke(m2mpsk_keystore *ks, const char *kpsa_id) {
  if (ks == NULL || kpsa_id == NULL)
    return M2MPSK_E_INVALID;
  write_lock(ks);
  ks_record *r = find(ks, kpsa_id);
  if (r != NULL) {
    record_drop_key(ks, r);
    r->revoked = 1;
    atomic_fetch_add(&ks->generation, 1);
  }
  write_unlock(ks);
  return r != NULL ? M2MPSK_OK : M2MPSK_E_NOT_FOUND;
}

/* Whether `r` (not revoked) holds exactly `key` and the identities of `n`. */
static int same_record(const m2mpsk_keystore *ks, const ks_record *r,
                       const ks_record *n, const uint8_t *key, size_t key_len) {
  if (r->revoked || r->tk != NULL || r->key_len != key_len ||
      r->ida_len != n->ida_len || r->idb_len != n->idb_len ||
      memcmp(rec_ida(r), rec_ida(n), r->ida_len) != 0 ||
      memcmp(rec_idb(r), rec_idb(n), r->idb_len) != 0)
    return 0;
  uint8_t old[M2MPSK_KEY_MAX];
  slot_read(ks, r->slab, r->slot, old, key_len);
  int same = sodium_memcmp(old, key, key_len) == 0;
  sodium_memzero(old, sizeof(old));
  return same;
}

int m2mpsk_keystore_put(m2mpsk_keystore *ks, const char *kpsa_id,
                        const uint8_t *key, size_t key_len, const char *ida,
                        const char *idb, int64_t not_before,
                        int64_t not_after) {
  if (ks == NULL || kpsa_id == NULL || key == NULL || idb == NULL)
    return M2MPSK_E_INVALID;
  ks_record *r = NULL, *old = NULL;
  int rc = record_build(ks, kpsa_id, key_len, ida, idb, not_before, not_after,
                        0, &r);
  if (rc != M2MPSK_OK)
    return rc;

  write_lock(ks);
  ks_record **link = find_link(ks, kpsa_id, r->kpsa_len, r->hash);
  if (link != NULL && same_record(ks, *link, r, key, key_len)) {
    ks_record *cur = *link;
    if (cur->not_before != not_before || cur->not_after != not_after) {
      /* Same key, same identities: the associations using it go on; the
       * generation tells them to read the new window (record_still_good
       * in assoc.c follows not_after). */
      cur->not_before = not_before;
      cur->not_after = not_after;
      atomic_fetch_add(&ks->generation, 1);
    }
    goto out; /* r is freed below: nothing of it was stored */
  }
  if (link == NULL && !table_reserve(ks, atomic_load(&ks->count) + 1)) {
    rc = M2MPSK_E_NOMEM;
    goto out;
  }
  /* The new slot first: a failure leaves the old record as it was. */
  if ((rc = slot_alloc(ks, &r->slab, &r->slot)) != M2MPSK_OK)
    goto out;
  slot_write(ks, r->slab, r->slot, key, key_len);
  r->serial = ks->next_serial++;
  if (link != NULL) {
    /* Replaced: a new serial, so that every association made from the old
     * record fails as revoked when it next looks. */
    old = *link;
    record_drop_key(ks, old);
    r->next = old->next;
    *link = r;
    atomic_fetch_add(&ks->generation, 1);
  } else {
    table_insert(ks, r);
    atomic_fetch_add(&ks->count, 1);
  }
  r = NULL;
out:
  write_unlock(ks);
  free(r);
  free(old);
  return rc;
}

static int copy_id(char *dst, size_t cap, const char *src, size_t len) {
  if (dst == NULL)
    return 1;
  if (cap < len + 1)
    return 0;
  memcpy(dst, src, len + 1);
  return 1;
}

int m2mpsk_keystore_lookup(const m2mpsk_keystore *ks, const char *kpsa_id,
                           char *ida, size_t ida_cap, char *idb, size_t idb_cap,
                           int64_t *not_before, int64_t *not_after,
                           int *revoked) {
  if (ks == NULL || kpsa_id == NULL)
    return M2MPSK_E_INVALID;
  if ((ida != NULL && ida_cap == 0) || (idb != NULL && idb_cap == 0))
    return M2MPSK_E_BUFFER;
  int rc = M2MPSK_OK;
  pthread_rwlock_t *lk = read_lock(ks);
  const ks_record *r = find(ks, kpsa_id);
  if (r == NULL) {
    rc = M2MPSK_E_NOT_FOUND;
  } else if ((ida != NULL && ida_cap < (size_t)r->ida_len + 1) ||
             (idb != NULL && idb_cap < (size_t)r->idb_len + 1)) {
    rc = M2MPSK_E_BUFFER;
  } else {
    copy_id(ida, ida_cap, rec_ida(r), r->ida_len);
    copy_id(idb, idb_cap, rec_idb(r), r->idb_len);
    if (not_before != NULL)
      *not_before = r->not_before;
    if (not_after != NULL)
      *not_after = r->not_after;
    if (revoked != NULL)
      *revoked = r->revoked;
  }
  read_unlock(lk);
  return rc;
}

uint64_t m2mpsk_keystore_hash(const m2mpsk_keystore *ks, const char *kpsa_id) {
  size_t len = strnlen(kpsa_id, (size_t)M2MPSK_KPSA_ID_MAX + 1);
  return len > M2MPSK_KPSA_ID_MAX ? 0 : kpsa_hash(ks, kpsa_id, len);
}

int m2mpsk_keystore_fetch_hashed(const m2mpsk_keystore *ks, const char *kpsa_id,
                                 uint64_t hash, m2mpsk_record_view *view,
                                 uint8_t *key_out, size_t *key_len) {
  if (ks == NULL || kpsa_id == NULL)
    return M2MPSK_E_INVALID;
  size_t len = strnlen(kpsa_id, (size_t)M2MPSK_KPSA_ID_MAX + 1);
  if (len > M2MPSK_KPSA_ID_MAX)
    return M2MPSK_E_NOT_FOUND;
  int rc = M2MPSK_OK;
  pthread_rwlock_t *lk = read_lock(ks);
  ks_record **link = find_link(ks, kpsa_id, len, hash);
  const ks_record *r = link != NULL ? *link : NULL;
  if (r == NULL) {
    rc = M2MPSK_E_NOT_FOUND;
    goto out;
  }
  if (view != NULL) {
    memcpy(view->ida, rec_ida(r), (size_t)r->ida_len + 1);
    memcpy(view->idb, rec_idb(r), (size_t)r->idb_len + 1);
    view->not_before = r->not_before;
    view->not_after = r->not_after;
    view->revoked = r->revoked;
    view->serial = r->serial;
    view->token = r->tk != NULL;
    view->tk = NULL;
    /* A token key is handed out with a reference, in place of its bytes. */
    if (key_out != NULL && r->tk != NULL && !r->revoked) {
      m2mpsk_tkey_ref(r->tk);
      view->tk = r->tk;
    }
  }
  if (key_out != NULL && !r->revoked && r->tk == NULL)
    slot_read(ks, r->slab, r->slot, key_out, r->key_len);
  if (key_len != NULL)
    *key_len = r->revoked || (r->tk != NULL && view == NULL) ? 0 : r->key_len;
out:
  read_unlock(lk);
  return rc;
}

int m2mpsk_keystore_fetch(const m2mpsk_keystore *ks, const char *kpsa_id,
                          m2mpsk_record_view *view, uint8_t *key_out,
                          size_t *key_len) {
  if (ks == NULL || kpsa_id == NULL)
    return M2MPSK_E_INVALID;
  return m2mpsk_keystore_fetch_hashed(
      ks, kpsa_id, m2mpsk_keystore_hash(ks, kpsa_id), view, key_out, key_len);
}

uint64_t m2mpsk_keystore_generation(const m2mpsk_keystore *ks) {
  return atomic_load(&ks->generation);
}

size_t m2mpsk_keystore_count(const m2mpsk_keystore *ks) {
  return ks != NULL ? atomic_load(&ks->count) : 0;
}

int m2mpsk_keystore_is_locked(const m2mpsk_keystore *ks) {
  if (ks == NULL)
    return M2MPSK_E_INVALID;
  return atomic_load(&ks->unlocked_slabs) == 0;
}

size_t m2mpsk_keystore_key_memory(const m2mpsk_keystore *ks) {
  return ks != NULL ? atomic_load(&ks->key_memory) : 0;
}

/* ---- bulk loading ------------------------------------------------------ */

int m2mpsk_keystore_merge(m2mpsk_keystore *dst, m2mpsk_keystore *staging,
                          uint32_t *conflict_tag) {
  if (dst == NULL || staging == NULL || dst == staging ||
      memcmp(dst->hash_key, staging->hash_key, sizeof(dst->hash_key)) != 0)
    return M2MPSK_E_INVALID;
  bulk_close(staging);
  size_t add = atomic_load(&staging->count);
  if (add == 0)
    return M2MPSK_OK;
  int rc = M2MPSK_OK;
  write_lock(dst);

  /* Check everything and allocate everything before changing anything. */
  uint32_t conflict = UINT32_MAX;
  if (atomic_load(&dst->count) > 0) {
    for (size_t i = 0; i < staging->nbuckets; i++) {
      for (ks_record *r = staging->buckets[i]; r != NULL; r = r->next) {
        if (find_link(dst, rec_kpsa_id(r), r->kpsa_len, r->hash) != NULL &&
            r->tag < conflict)
          conflict = r->tag;
      }
    }
  }
  if (conflict != UINT32_MAX) {
    if (conflict_tag != NULL)
      *conflict_tag = conflict;
    rc = M2MPSK_E_DUPLICATE;
    goto out;
  }
  if (!table_reserve(dst, atomic_load(&dst->count) + add) ||
      !reserve_slabs(dst, (size_t)dst->nslabs + staging->nslabs) ||
      !reserve_u64(&dst->free_slots, &dst->free_cap,
                   dst->total_slots + staging->total_slots)) {
    rc = M2MPSK_E_NOMEM;
    goto out;
  }

  uint32_t base = dst->nslabs;
  for (uint32_t i = 0; i < staging->nslabs; i++)
    dst->slabs[base + i] = staging->slabs[i];
  for (size_t i = 0; i < staging->nfree; i++)
    dst->free_slots[dst->nfree++] =
        staging->free_slots[i] + ((uint64_t)base << 32);
  for (size_t i = 0; i < staging->nbuckets; i++) {
    ks_record *r = staging->buckets[i];
    while (r != NULL) {
      ks_record *next = r->next;
      if (r->slab != NO_SLAB)
        r->slab += base;
      r->serial = dst->next_serial++;
      table_insert(dst, r);
      r = next;
    }
    staging->buckets[i] = NULL;
  }
  /* The tail of dst's last slab stays usable through alloc_hint, which
   * only moves forward past full slabs. */
  if (dst->alloc_hint == base)
    dst->alloc_hint = base + staging->alloc_hint;
  dst->nslabs += staging->nslabs;
  dst->total_slots += staging->total_slots;
  atomic_fetch_add(&dst->count, add);
  atomic_fetch_add(&dst->key_memory, atomic_load(&staging->key_memory));
  atomic_fetch_add(&dst->unlocked_slabs, atomic_load(&staging->unlocked_slabs));

  staging->nslabs = 0;
  staging->alloc_hint = 0;
  staging->nfree = 0;
  staging->total_slots = 0;
  atomic_store(&staging->count, 0);
  atomic_store(&staging->key_memory, 0);
  atomic_store(&staging->unlocked_slabs, 0);
out:
  write_unlock(dst);
  return rc;
}

/* A batch is a staging keystore and the keystore it will be merged into.
 * Its records are tagged with their position, which the merge reports for
 * the first KpsaID that is already in the target. */
struct m2mpsk_keystore_batch {
  m2mpsk_keystore *ks;      /* a reference */
  m2mpsk_keystore *staging; /* NULL once committed */
  uint32_t count;           /* records added, the next tag */
};

int m2mpsk_keystore_batch_new(m2mpsk_keystore *ks,
                              m2mpsk_keystore_batch **out) {
  if (out != NULL)
    *out = NULL;
  if (ks == NULL || out == NULL)
    return M2MPSK_E_INVALID;
  m2mpsk_keystore_batch *b = calloc(1, sizeof(*b));
  if (b == NULL)
    return M2MPSK_E_NOMEM;
  int rc = m2mpsk_keystore_new_staging(ks, &b->staging);
  if (rc != M2MPSK_OK) {
    free(b);
    return rc;
  }
  m2mpsk_keystore_ref(ks);
  b->ks = ks;
  *out = b;
  return M2MPSK_OK;
}

int m2mpsk_keystore_batch_add(m2mpsk_keystore_batch *b, const char *kpsa_id,
                              const uint8_t *key, size_t key_len,
                              const char *ida, const char *idb,
                              int64_t not_before, int64_t not_after) {
  if (b == NULL)
    return M2MPSK_E_INVALID;
  if (b->staging == NULL)
    return M2MPSK_E_STATE;
  /* Tags are 32 bits and the merge uses UINT32_MAX for "no conflict". */
  if (b->count >= UINT32_MAX - 1)
    return M2MPSK_E_NOMEM;
  int rc = m2mpsk_keystore_add_tagged(b->staging, kpsa_id, key, key_len, ida,
                                      idb, not_before, not_after, b->count);
  if (rc == M2MPSK_OK)
    b->count++;
  return rc;
}

int m2mpsk_keystore_batch_commit(m2mpsk_keystore_batch *b, size_t *err_index) {
  if (err_index != NULL)
    *err_index = 0;
  if (b == NULL)
    return M2MPSK_E_INVALID;
  if (b->staging == NULL)
    return M2MPSK_E_STATE;
  uint32_t tag = 0;
  int rc = m2mpsk_keystore_merge(b->ks, b->staging, &tag);
  if (rc == M2MPSK_E_DUPLICATE && err_index != NULL)
    *err_index = tag;
  if (rc == M2MPSK_OK) {
    m2mpsk_keystore_free(b->staging); /* empty now */
    b->staging = NULL;
  }
  return rc;
}

void m2mpsk_keystore_batch_free(m2mpsk_keystore_batch *b) {
  if (b == NULL)
    return;
  m2mpsk_keystore_free(b->staging); /* wipes what was never committed */
  m2mpsk_keystore_free(b->ks);
  free(b);
}

/* ---- test hooks (m2mpsk_static only: see keystore.h) ------------------ */

#ifdef M2MPSK_TEST_HOOKS
void m2mpsk_keystore_debug_refuse_pkeys(void) {
  g_pkeys_refused = 1;
}

int m2mpsk_keystore_debug_uses_pkeys(const m2mpsk_keystore *ks) {
  return ks->pkey >= 0;
}

void m2mpsk_keystore_debug_refuse_procmem(void) {
  g_mem_refused = 1;
}

int m2mpsk_keystore_debug_procmem_fd(void) {
  return atomic_load(&g_mem_fd);
}

unsigned long m2mpsk_keystore_debug_page_opens(void) {
  return atomic_load(&g_page_opens);
}

const uint8_t *m2mpsk_keystore_debug_slot(const m2mpsk_keystore *ks,
                                          const char *kpsa_id) {
  if (ks == NULL || kpsa_id == NULL)
    return NULL;
  const uint8_t *p = NULL;
  pthread_rwlock_t *lk = read_lock(ks);
  const ks_record *r = find(ks, kpsa_id);
  if (r != NULL && r->slab != NO_SLAB)
    p = slot_addr(ks->slabs[r->slab], r->slot);
  read_unlock(lk);
  return p;
}

int m2mpsk_keystore_debug_peek(const m2mpsk_keystore *ks, const uint8_t *p,
                               uint8_t *out, size_t len) {
  if (ks == NULL || p == NULL || out == NULL)
    return M2MPSK_E_INVALID;
  int rc = M2MPSK_E_INVALID;
  pthread_rwlock_t *lk = read_lock(ks);
  for (uint32_t i = 0; i < ks->nslabs; i++) {
    ks_slab *s = ks->slabs[i];
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)s->mem;
    if (a < lo || a - lo >= s->size)
      continue;
    size_t off = a - lo;
    if ((off & (ks->page - 1)) + len > ks->page)
      break;
    slot_copy(ks, i, (uint32_t)(off / SLOT_SIZE), PROT_READ, out, p, len);
    rc = M2MPSK_OK;
    break;
  }
  read_unlock(lk);
  return rc;
}
#endif /* M2MPSK_TEST_HOOKS */
