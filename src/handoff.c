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
 * Where the copy lives: one region for the process, made on first use by
 * sodium_malloc (locked in memory, guard pages on both sides, excluded
 * from core dumps), of HANDOFF_SLOTS slots of M2MPSK_KEY_MAX bytes. It is
 * writable, as is the buffer any handshake copies its key into; it is not
 * the closed arena a key rests in. So a copy lives only while the answer
 * is on its way: it is wiped when an association takes it, or when the
 * request that carries it is freed (every waiting association resumed or
 * freed, and the host dropped its reference), whichever comes first.
 *
 * When the region is full, or could not be made, an answer carries no
 * copy and associations read the arena as before: nothing fails for want
 * of a slot. Handles are 1-based (0: none). */
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

#define HANDOFF_SLOTS 512u
#define SLOT_SIZE ((size_t)M2MPSK_KEY_MAX)

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *g_mem;    /* HANDOFF_SLOTS * SLOT_SIZE, or NULL */
static int g_state;       /* 0: not tried yet, 1: ready, -1: unavailable */
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

/* Under g_mu. */
static int ready(void) {
  if (g_state == 0) {
    g_state = -1;
    if (sodium_init() >= 0 && pthread_atfork(NULL, NULL, atfork_child) == 0 &&
        (g_mem = sodium_malloc(HANDOFF_SLOTS * SLOT_SIZE)) != NULL) {
      sodium_memzero(g_mem, HANDOFF_SLOTS * SLOT_SIZE);
      for (unsigned i = 0; i < HANDOFF_SLOTS; i++)
        g_free[i] = (uint16_t)(HANDOFF_SLOTS - 1 - i);
      g_nfree = HANDOFF_SLOTS;
      g_state = 1;
    }
  }
  return g_state > 0;
}

/* Under g_mu: wipes slot h and gives it back. */
static void release(int h) {
  unsigned i = (unsigned)h - 1;
  sodium_memzero(g_mem + (size_t)i * SLOT_SIZE, SLOT_SIZE);
  g_len[i] = 0;
  g_free[g_nfree++] = (uint16_t)i;
}

static int valid(int h) {
  return h > 0 && (unsigned)h <= HANDOFF_SLOTS && g_len[h - 1] != 0;
}

int m2mpsk_handoff_put(const uint8_t *key, size_t len) {
  if (key == NULL || len == 0 || len > SLOT_SIZE)
    return 0;
  int h = 0;
  pthread_mutex_lock(&g_mu);
  if (ready() && g_nfree > 0 && HANDOFF_SLOTS - g_nfree < g_limit) {
    unsigned i = g_free[--g_nfree];
    memcpy(g_mem + (size_t)i * SLOT_SIZE, key, len);
    g_len[i] = (uint8_t)len;
    h = (int)i + 1;
  }
  pthread_mutex_unlock(&g_mu);
  return h;
}

size_t m2mpsk_handoff_take(int h, uint8_t *out) {
  size_t len = 0;
  pthread_mutex_lock(&g_mu);
  if (g_mem != NULL && valid(h)) {
    len = g_len[h - 1];
    memcpy(out, g_mem + (size_t)(h - 1) * SLOT_SIZE, len);
    release(h);
#ifdef M2MPSK_TEST_HOOKS
    g_taken++;
#endif
  }
  pthread_mutex_unlock(&g_mu);
  return len;
}

void m2mpsk_handoff_drop(int h) {
  pthread_mutex_lock(&g_mu);
  if (g_mem != NULL && valid(h))
    release(h);
  pthread_mutex_unlock(&g_mu);
}

#ifdef M2MPSK_TEST_HOOKS
unsigned m2mpsk_handoff_debug_in_use(void) {
  pthread_mutex_lock(&g_mu);
  unsigned n = g_state > 0 ? HANDOFF_SLOTS - g_nfree : 0;
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
  for (unsigned i = 0; g_mem != NULL && i < HANDOFF_SLOTS && !found; i++)
    found = g_len[i] == len &&
            sodium_memcmp(g_mem + (size_t)i * SLOT_SIZE, key, len) == 0;
  pthread_mutex_unlock(&g_mu);
  return found;
}
#endif
