/* Keys handed over with a key source's answer (issue 19).
 *
 * A responder that waited for its record needs the key as soon as it
 * resumes, right after the answer wrote that key into its closed arena.
 * Without protection keys, reading it back costs a system call (pread on
 * /proc/self/mem: 1.7 us where system calls are dear, one in every
 * handshake whose key came from a source). So the answer keeps a copy for
 * the associations that asked, and the first of them to need the key takes
 * it from here instead (keysource.c, assoc.c).
 *
 * Where the copy lives: regions of HANDOFF_CHUNK slots of M2MPSK_KEY_MAX
 * bytes, made on demand (at most HANDOFF_CHUNKS of them, for the process)
 * by sodium_malloc: locked in memory, guard pages on both sides, excluded
 * from core dumps. They are writable, as is the buffer any handshake copies
 * its key into; they are not the closed arena a key rests in. So a copy
 * lives only while the answer is on its way: it is wiped when an
 * association takes it, or when the request that carries it is freed
 * (every waiting association resumed or freed, and the host dropped its
 * reference), whichever comes first.
 *
 * An answer given once (m2mpsk_key_request_supply_once) has no arena copy
 * at all: its slot is the only place its key lives, every association that
 * waited reads it (m2mpsk_handoff_read), and it is wiped with the request.
 *
 * When every region is full, or none could be made, an ordinary answer
 * carries no copy and associations read the arena as before: nothing fails
 * for want of a slot; an answer given once is refused. Handles are 1-based
 * (0: none). */
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

#define HANDOFF_CHUNK 512u
#define HANDOFF_CHUNKS 16u /* 8192 slots, 512 KiB locked at most */
#define HANDOFF_SLOTS (HANDOFF_CHUNK * HANDOFF_CHUNKS)
#define SLOT_SIZE ((size_t)M2MPSK_KEY_MAX)

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *g_mem[HANDOFF_CHUNKS]; /* HANDOFF_CHUNK * SLOT_SIZE each */
static unsigned g_chunks;              /* regions made */
static int g_atfork; /* the fork handler is registered */
static unsigned g_limit = HANDOFF_SLOTS; /* a test may lower it */
static uint8_t g_len[HANDOFF_SLOTS];     /* 0: the slot is free */
static uint16_t g_free[HANDOFF_SLOTS];   /* free slots, a stack */
static unsigned g_nfree;
#ifdef M2MPSK_TEST_HOOKS
static unsigned long g_taken; /* takes so far */
#endif

/* A child forked while another thread held the mutex would never see it
 * released: it starts with a fresh one (the slots are as they were). */
static void atfork_child(void) {
  pthread_mutex_init(&g_mu, NULL);
}

static uint8_t *slot(unsigned i) {
  return g_mem[i / HANDOFF_CHUNK] + (size_t)(i % HANDOFF_CHUNK) * SLOT_SIZE;
}

/* Under g_mu: a free slot exists, making a region if every one is full.
 * 1, or 0 (*why: M2MPSK_E_LIMIT when every region is made and full or the
 * test limit is reached, M2MPSK_E_NOMEM when a region could not be made). */
static int room(int *why) {
  if (g_chunks * HANDOFF_CHUNK - g_nfree >= g_limit) {
    *why = M2MPSK_E_LIMIT;
    return 0;
  }
  if (g_nfree > 0)
    return 1;
  *why = M2MPSK_E_LIMIT;
  if (g_chunks == HANDOFF_CHUNKS)
    return 0;
  *why = M2MPSK_E_NOMEM;
  if (!g_atfork) {
    if (sodium_init() < 0 || pthread_atfork(NULL, NULL, atfork_child) != 0)
      return 0;
    g_atfork = 1;
  }
  uint8_t *mem = sodium_malloc(HANDOFF_CHUNK * SLOT_SIZE);
  if (mem == NULL)
    return 0;
  sodium_memzero(mem, HANDOFF_CHUNK * SLOT_SIZE);
  unsigned base = g_chunks * HANDOFF_CHUNK;
  g_mem[g_chunks++] = mem;
  for (unsigned i = HANDOFF_CHUNK; i-- > 0;)
    g_free[g_nfree++] = (uint16_t)(base + i);
  return 1;
}

/* Under g_mu: wipes slot h and gives it back. */
static void release(int h) {
  unsigned i = (unsigned)h - 1;
  sodium_memzero(slot(i), SLOT_SIZE);
  g_len[i] = 0;
  g_free[g_nfree++] = (uint16_t)i;
}

static int valid(int h) {
  return h > 0 && (unsigned)h <= g_chunks * HANDOFF_CHUNK && g_len[h - 1] != 0;
}

int m2mpsk_handoff_put(const uint8_t *key, size_t len, int *why) {
  int dummy;
  if (why == NULL)
    why = &dummy;
  *why = M2MPSK_E_INVALID;
  if (key == NULL || len == 0 || len > SLOT_SIZE)
    return 0;
  int h = 0;
  pthread_mutex_lock(&g_mu);
  if (room(why)) {
    unsigned i = g_free[--g_nfree];
    memcpy(slot(i), key, len);
    g_len[i] = (uint8_t)len;
    h = (int)i + 1;
  }
  pthread_mutex_unlock(&g_mu);
  return h;
}

/* Copies slot `h` into `out`; `take`: then wipes and frees it. */
static size_t copy_out(int h, uint8_t *out, int take) {
  size_t len = 0;
  pthread_mutex_lock(&g_mu);
  if (valid(h)) {
    len = g_len[h - 1];
    memcpy(out, slot((unsigned)h - 1), len);
    if (take) {
      release(h);
#ifdef M2MPSK_TEST_HOOKS
      g_taken++;
#endif
    }
  }
  pthread_mutex_unlock(&g_mu);
  return len;
}

size_t m2mpsk_handoff_read(int h, uint8_t *out) {
  return copy_out(h, out, 0);
}

size_t m2mpsk_handoff_take(int h, uint8_t *out) {
  return copy_out(h, out, 1);
}

void m2mpsk_handoff_drop(int h) {
  pthread_mutex_lock(&g_mu);
  if (valid(h))
    release(h);
  pthread_mutex_unlock(&g_mu);
}

#ifdef M2MPSK_TEST_HOOKS
unsigned m2mpsk_handoff_debug_in_use(void) {
  pthread_mutex_lock(&g_mu);
  unsigned n = g_chunks * HANDOFF_CHUNK - g_nfree;
  pthread_mutex_unlock(&g_mu);
  return n;
}

unsigned long m2mpsk_handoff_debug_taken(void) {
  pthread_mutex_lock(&g_mu);
  unsigned long n = g_taken;
  pthread_mutex_unlock(&g_mu);
  return n;
}

void m2mpsk_handoff_debug_limit(unsigned n) {
  pthread_mutex_lock(&g_mu);
  g_limit = n < HANDOFF_SLOTS ? n : HANDOFF_SLOTS;
  pthread_mutex_unlock(&g_mu);
}

int m2mpsk_handoff_debug_contains(const uint8_t *key, size_t len) {
  int found = 0;
  pthread_mutex_lock(&g_mu);
  for (unsigned i = 0; i < g_chunks * HANDOFF_CHUNK && !found; i++)
    found = g_len[i] == len && sodium_memcmp(slot(i), key, len) == 0;
  pthread_mutex_unlock(&g_mu);
  return found;
}
#endif
