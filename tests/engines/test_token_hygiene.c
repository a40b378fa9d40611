/* Token keys never enter the process (issue 20), shown with the memory
 * scan of tests/test_hygiene.c (tests/support/memscan.c), through the
 * shared library libm2mpsk.
 *
 * Before anything else each test forks a token: a child process that draws
 * Kpsa and sends this process only its needle (Kpsa XOR mask, and the
 * mask), then answers master-secret requests over a socketpair with
 * P_hash(prefix || Kpsa, seed), HMAC from libcrypto.so.3 loaded RTLD_LOCAL
 * in the child only. This process never holds Kpsa. Both sides' record
 * M2MT_KPSA_ID is a token key whose master_secret forwards to the child; the
 * configs leave the engine to m2mpsk (token keys run on OpenSSL). A
 * handshake runs on a thread whose stack is mapped here, data flows both
 * ways, and with both associations alive the whole process is scanned:
 *  - Kpsa: 0 copies (test_hygiene finds exactly the two keystore slots for
 *    an ordinary key, in the same place of the same scan);
 *  - controls, bytes this process does hold: a random marker in a heap
 *    buffer (found there) and one on the handshaking thread's stack (found
 *    in that stack), so a 0 is the scanner's answer, not its blindness;
 * then, everything freed and the dead stack still mapped, Kpsa: 0 copies.
 * The token is asked exactly one master secret per side. */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "link.h"
#include "m2mpsk/m2mpsk.h"
#include "memscan.h"
#include "phash.h"

#define NOW0 1000000u
#define UNIX0 1800000000
#define KEY_LEN M2MT_NEEDLE_LEN
#define MAX_PREFIX 1024
#define MAX_SEED 1024
#define MAX_OUT 64

/* ---- the wire ------------------------------------------------------------
 * hello   child -> parent: u8 ready (0: libcrypto.so.3 not loadable), then
 *                          when ready the needle (masked, mask: 2 x 32 bytes)
 * 'M'     parent -> child: u8 'M', u8 digest length, digest name, u32 prefix
 *                          length, prefix, u32 seed length, seed, u32 out_len
 *         child -> parent: i32 status (0 or -1), then out_len bytes when 0
 * 'C'     parent -> child: u8 'C'
 *         child -> parent: u32 master secrets computed so far
 * End of file on the socket ends the child. */

static int write_full(int fd, const void *p, size_t len) {
  const uint8_t *b = p;
  while (len > 0) {
    ssize_t n = write(fd, b, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    b += n;
    len -= (size_t)n;
  }
  return 0;
}

static int read_full(int fd, void *p, size_t len) {
  uint8_t *b = p;
  while (len > 0) {
    ssize_t n = read(fd, b, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    b += n;
    len -= (size_t)n;
  }
  return 0;
}

/* ---- the token process ---------------------------------------------------
 */

/* The child's life; returns its exit status. */
static int token_main(int fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  m2mt_hmac hm;
  uint8_t ready = m2mt_hmac_load(&hm) == 0;
  if (write_full(fd, &ready, 1) != 0 || !ready)
    return ready ? 2 : 0;

  uint8_t key[KEY_LEN];
  m2mt_needle nd;
  if (getrandom(key, KEY_LEN, 0) != KEY_LEN)
    return 3;
  for (int i = 0; i < KEY_LEN; i++) {
    uint8_t m = 0;
    if (getrandom(&m, 1, 0) != 1)
      return 3;
    nd.mask[i] = m;
    nd.masked[i] = key[i] ^ m;
  }
  if (write_full(fd, &nd, sizeof(nd)) != 0)
    return 4;

  uint32_t computed = 0;
  static uint8_t prefix[MAX_PREFIX], seed[MAX_SEED];
  for (;;) {
    uint8_t op;
    if (read_full(fd, &op, 1) != 0)
      break; /* the parent is done */
    if (op == 'C') {
      if (write_full(fd, &computed, sizeof(computed)) != 0)
        return 5;
      continue;
    }
    if (op != 'M')
      return 6;
    uint8_t dl;
    char digest[16];
    uint32_t pl, sl, ol;
    if (read_full(fd, &dl, 1) != 0 || dl >= sizeof(digest) ||
        read_full(fd, digest, dl) != 0 || read_full(fd, &pl, 4) != 0 ||
        pl > MAX_PREFIX || read_full(fd, prefix, pl) != 0 ||
        read_full(fd, &sl, 4) != 0 || sl > MAX_SEED ||
        read_full(fd, seed, sl) != 0 || read_full(fd, &ol, 4) != 0 ||
        ol > MAX_OUT)
      return 7;
    digest[dl] = '\0';
    uint8_t out[MAX_OUT];
    int32_t st =
        m2mt_p_hash(&hm, digest, prefix, pl, key, KEY_LEN, seed, sl, out, ol);
    explicit_bzero(prefix, pl);
    computed += st == 0;
    if (write_full(fd, &st, sizeof(st)) != 0 ||
        (st == 0 && write_full(fd, out, ol) != 0))
      return 8;
    explicit_bzero(out, sizeof(out));
  }
  explicit_bzero(key, sizeof(key));
  return 0;
}

/* ---- the parent's view of the token --------------------------------------
 */

typedef struct token_proc {
  pid_t pid;
  int fd;
  pthread_mutex_t mu; /* one request at a time on the socket */
  m2mt_needle key;    /* Kpsa's needle, as the child sent it */
} token_proc;

/* One side's token key: the ctx of its record. */
typedef struct token_side {
  token_proc *tp;
  atomic_int calls, released;
  char last_digest[16];
  size_t last_out_len;
} token_side;

/* Forks the token. Skips when the child cannot load libcrypto.so.3. */
static void token_start(token_proc *tp) {
  int sv[2];
  cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0,
               "socketpair: %s", strerror(errno));
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  if (pid == 0) {
    close(sv[0]);
    _exit(token_main(sv[1]));
  }
  close(sv[1]);
  tp->pid = pid;
  tp->fd = sv[0];
  pthread_mutex_init(&tp->mu, NULL);
  uint8_t ready = 0;
  cr_assert_eq(read_full(tp->fd, &ready, 1), 0, "the token did not start");
  if (!ready)
    cr_skip_test("libcrypto.so.3 not loadable in the token process");
  cr_assert_eq(read_full(tp->fd, &tp->key, sizeof(tp->key)), 0,
               "the token sent no needle");
}

/* Master secrets the token computed. */
static uint32_t token_computed(token_proc *tp) {
  uint32_t n = 0;
  uint8_t op = 'C';
  pthread_mutex_lock(&tp->mu);
  int rc =
      write_full(tp->fd, &op, 1) == 0 ? read_full(tp->fd, &n, sizeof(n)) : -1;
  pthread_mutex_unlock(&tp->mu);
  cr_assert_eq(rc, 0, "the token did not answer");
  return n;
}

/* Ends the token (end of file) and checks it exited cleanly. */
static void token_stop(token_proc *tp) {
  close(tp->fd);
  int st = 0;
  cr_assert_eq(waitpid(tp->pid, &st, 0), tp->pid);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
            "the token process ended with status %#x", st);
  pthread_mutex_destroy(&tp->mu);
}

static int forward_master_secret(void *ctx, const char *digest,
                                 const uint8_t *prefix, size_t prefix_len,
                                 const uint8_t *seed, size_t seed_len,
                                 uint8_t *out, size_t out_len) {
  token_side *s = ctx;
  atomic_fetch_add(&s->calls, 1);
  snprintf(s->last_digest, sizeof(s->last_digest), "%s", digest);
  s->last_out_len = out_len;
  size_t dl = strlen(digest);
  if (dl > 15 || prefix_len > MAX_PREFIX || seed_len > MAX_SEED ||
      out_len > MAX_OUT)
    return -1;
  /* The request in one buffer, wiped after: the prefix is secret for
   * (EC)DHE-PSK. */
  uint8_t req[1 + 1 + 15 + 4 + MAX_PREFIX + 4 + MAX_SEED + 4];
  size_t n = 0;
  uint32_t u;
  req[n++] = 'M';
  req[n++] = (uint8_t)dl;
  memcpy(req + n, digest, dl);
  n += dl;
  u = (uint32_t)prefix_len;
  memcpy(req + n, &u, 4);
  n += 4;
  memcpy(req + n, prefix, prefix_len);
  n += prefix_len;
  u = (uint32_t)seed_len;
  memcpy(req + n, &u, 4);
  n += 4;
  memcpy(req + n, seed, seed_len);
  n += seed_len;
  u = (uint32_t)out_len;
  memcpy(req + n, &u, 4);
  n += 4;
  int32_t st = -1;
  pthread_mutex_lock(&s->tp->mu);
  if (write_full(s->tp->fd, req, n) == 0 &&
      read_full(s->tp->fd, &st, sizeof(st)) == 0 && st == 0 &&
      read_full(s->tp->fd, out, out_len) != 0)
    st = -1;
  pthread_mutex_unlock(&s->tp->mu);
  explicit_bzero(req, sizeof(req));
  return st == 0 ? 0 : -1;
}

static void count_release(void *ctx) {
  token_side *s = ctx;
  atomic_fetch_add(&s->released, 1);
}

/* The host's two functions, as the API takes them. */
#define TOKEN_FNS forward_master_secret, count_release

/* ---- the handshaking thread ----------------------------------------------
 */

/* No criterion assertion runs on the thread: it records what it saw, and
 * the test asserts on it after the join. */
typedef struct hs_job {
  m2mpsk_transport transport;
  const char *suite;
  token_side *tok_a, *tok_b;
  int setup_rc;                /* first failing m2mpsk status, or 0 */
  int established, data_flows; /* both sides; both ways */
  m2mpsk_engine_id engine_a, engine_b;
  char detail_a[160], detail_b[160];
  m2mt_needle stack_marker; /* of bytes on this thread's stack */
  sem_t handshaken, may_free;
} hs_job;

static int first_error(int *acc, int rc) {
  if (*acc == 0 && rc != M2MPSK_OK)
    *acc = rc;
  return rc == M2MPSK_OK;
}

static void *handshake_thread(void *arg) {
  hs_job *job = arg;
  /* The stack control: bytes this thread holds while the scan runs. */
  volatile uint8_t marker[KEY_LEN];
  {
    uint8_t m[KEY_LEN];
    m2mt_random_bytes(m, KEY_LEN);
    for (int i = 0; i < KEY_LEN; i++)
      marker[i] = m[i];
    explicit_bzero(m, sizeof(m));
    for (int i = 0; i < KEY_LEN; i++)
      m[i] = marker[i];
    m2mt_needle_from(&job->stack_marker, m);
    explicit_bzero(m, sizeof(m));
  }
  m2mt_pair p;
  memset(&p, 0, sizeof(p));
  int *e = &job->setup_rc;
  int ok =
      first_error(e, m2mpsk_keystore_new(&p.ks_a, 0)) &&
      first_error(e, m2mpsk_keystore_new(&p.ks_b, 0)) &&
      first_error(e, m2mpsk_keystore_add_token_key(
                         p.ks_a, M2MT_KPSA_ID, KEY_LEN, TOKEN_FNS, job->tok_a,
                         M2MT_IDA, M2MT_IDB, 0, 0)) &&
      first_error(e, m2mpsk_keystore_add_token_key(
                         p.ks_b, M2MT_KPSA_ID, KEY_LEN, TOKEN_FNS, job->tok_b,
                         M2MT_IDA, M2MT_IDB, 0, 0)) &&
      first_error(e, m2mpsk_config_new(&p.cfg_a)) &&
      first_error(e, m2mpsk_config_new(&p.cfg_b)) &&
      first_error(e, m2mpsk_config_add_local_id(p.cfg_b, M2MT_IDB)) &&
      first_error(e, m2mpsk_config_set_engine(p.cfg_a, M2MPSK_ENGINE_AUTO)) &&
      first_error(e, m2mpsk_config_set_engine(p.cfg_b, M2MPSK_ENGINE_AUTO)) &&
      first_error(e, m2mpsk_config_set_suites(p.cfg_a, job->suite)) &&
      first_error(e, m2mpsk_config_set_suites(p.cfg_b, job->suite)) &&
      first_error(e,
                  m2mpsk_assoc_new(&p.a, M2MPSK_ROLE_INITIATOR, job->transport,
                                   p.cfg_a, p.ks_a, M2MT_KPSA_ID)) &&
      first_error(e, m2mpsk_assoc_new(&p.b, M2MPSK_ROLE_RESPONDER,
                                      job->transport, p.cfg_b, p.ks_b, NULL)) &&
      first_error(e, m2mpsk_assoc_start(p.b, NOW0, UNIX0)) &&
      first_error(e, m2mpsk_assoc_start(p.a, NOW0, UNIX0));
  if (ok) {
    uint64_t now = NOW0;
    m2mt_run_handshake(p.a, p.b, NULL, &now, 200);
    job->established = m2mpsk_assoc_state(p.a) == M2MPSK_STATE_ESTABLISHED &&
                       m2mpsk_assoc_state(p.b) == M2MPSK_STATE_ESTABLISHED;
    snprintf(job->detail_a, sizeof(job->detail_a), "%s",
             m2mpsk_assoc_failure_detail(p.a));
    snprintf(job->detail_b, sizeof(job->detail_b), "%s",
             m2mpsk_assoc_failure_detail(p.b));
    job->engine_a = m2mpsk_assoc_engine(p.a);
    job->engine_b = m2mpsk_assoc_engine(p.b);
    /* Application data both ways: the master secrets the token computed
     * for the two sides agree. */
    static const uint8_t msg[] = "oneM2M request";
    m2mpsk_assoc *from[2] = {p.a, p.b}, *to[2] = {p.b, p.a};
    int flows = job->established;
    for (int i = 0; i < 2 && flows; i++) {
      size_t w = 0, got = 0;
      uint8_t buf[64];
      flows = m2mpsk_assoc_write(from[i], msg, sizeof(msg), &w) == M2MPSK_OK &&
              m2mt_transfer(from[i], to[i], NULL, now) >= 0 &&
              m2mpsk_assoc_read(to[i], buf, sizeof(buf), &got) == M2MPSK_OK &&
              got == sizeof(msg) && memcmp(buf, msg, got) == 0;
    }
    job->data_flows = flows;
  }
  sem_post(&job->handshaken);
  while (sem_wait(&job->may_free) != 0)
    ;
  m2mpsk_assoc_free(p.a);
  m2mpsk_assoc_free(p.b);
  m2mpsk_config_free(p.cfg_a);
  m2mpsk_config_free(p.cfg_b);
  m2mpsk_keystore_free(p.ks_a);
  m2mpsk_keystore_free(p.ks_b);
  for (int i = 0; i < KEY_LEN; i++)
    marker[i] = 0;
  return NULL;
}

/* ---- the test ------------------------------------------------------------
 */

static void token_key_never_in_process(m2mpsk_transport transport,
                                       const char *suite) {
  m2mt_skip_if_unscannable();
  /* The token first: it is forked before this process has made any
   * keystore, config or association. */
  token_proc tp;
  memset(&tp, 0, sizeof(tp));
  token_start(&tp);
  if (!m2mpsk_engine_available(M2MPSK_ENGINE_OPENSSL))
    cr_skip_test("engine openssl not available: %s", m2mpsk_backend_error());

  /* The heap control. */
  uint8_t *heap_marker = malloc(KEY_LEN);
  cr_assert_not_null(heap_marker);
  m2mt_random_bytes(heap_marker, KEY_LEN);
  m2mt_needle heap_nd;
  m2mt_needle_from(&heap_nd, heap_marker);

  const size_t stack_size = 16u << 20;
  void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  cr_assert_neq(stack, MAP_FAILED);
  const uintptr_t s_lo = (uintptr_t)stack, s_hi = s_lo + stack_size;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  cr_assert_eq(pthread_attr_setstack(&attr, stack, stack_size), 0);
  token_side tok_a = {.tp = &tp}, tok_b = {.tp = &tp};
  hs_job job;
  memset(&job, 0, sizeof(job));
  job.transport = transport;
  job.suite = suite;
  job.tok_a = &tok_a;
  job.tok_b = &tok_b;
  cr_assert_eq(sem_init(&job.handshaken, 0, 0), 0);
  cr_assert_eq(sem_init(&job.may_free, 0, 0), 0);
  pthread_t th;
  int rc = pthread_create(&th, &attr, handshake_thread, &job);
  cr_assert_eq(rc, 0, "pthread_create: %s", strerror(rc));
  while (sem_wait(&job.handshaken) != 0)
    ;

  /* Alive: Kpsa nowhere; the controls where they are. */
  m2mt_scan_result live = m2mt_scan_memory(&tp.key, 0, 0);
  m2mt_log_hits("established, associations alive", "Kpsa", &live);
  m2mt_scan_result heap = m2mt_scan_memory(&heap_nd, 0, 0);
  m2mt_log_hits("control, alive", "the heap marker", &heap);
  m2mt_scan_result stk = m2mt_scan_memory(&job.stack_marker, 0, 0);
  m2mt_log_hits("control, alive", "the stack marker", &stk);
  uint32_t computed = token_computed(&tp);

  sem_post(&job.may_free);
  cr_assert_eq(pthread_join(th, NULL), 0);
  pthread_attr_destroy(&attr);

  /* Freed, the dead stack still mapped: Kpsa still nowhere. */
  m2mt_scan_result after = m2mt_scan_memory(&tp.key, 0, 0);
  m2mt_log_hits("after free, dead stack still mapped", "Kpsa", &after);
  cr_log_info("token: %u master secrets computed; asked %d by the initiator, "
              "%d by the responder",
              computed, atomic_load(&tok_a.calls), atomic_load(&tok_b.calls));

  cr_assert_eq(job.setup_rc, 0, "setup failed: %s",
               m2mpsk_strerror(job.setup_rc));
  cr_assert(job.established,
            "the handshake must succeed: initiator \"%s\", "
            "responder \"%s\"",
            job.detail_a, job.detail_b);
  cr_assert(job.data_flows, "application data must flow both ways");
  cr_assert_eq(job.engine_a, M2MPSK_ENGINE_OPENSSL);
  cr_assert_eq(job.engine_b, M2MPSK_ENGINE_OPENSSL);

  cr_assert_gt(heap.hits, 0, "control: the heap marker was not found");
  cr_assert_eq(m2mt_hit_at(&heap, (uintptr_t)heap_marker), 1,
               "control: the heap marker not found at %p", heap_marker);
  cr_assert_gt(stk.hits, 0, "control: the stack marker was not found");
  cr_assert_geq(m2mt_hit_inside(&stk, s_lo, s_hi), 1,
                "control: the stack marker not in the thread's stack");

  cr_assert_eq(live.hits, 0,
               "Kpsa is in this process while the associations are alive: "
               "%zu copies, first at %#lx in %s",
               live.hits, (unsigned long)live.where[0], live.name[0]);
  cr_assert_eq(after.hits, 0,
               "Kpsa is in this process after free: %zu copies, first at "
               "%#lx in %s (%d on the dead stack)",
               after.hits, (unsigned long)after.where[0], after.name[0],
               m2mt_hit_inside(&after, s_lo, s_hi));

  /* One master secret per side, 48 bytes with the suite's digest, all
   * computed by the token. */
  cr_assert_eq(atomic_load(&tok_a.calls), 1);
  cr_assert_eq(atomic_load(&tok_b.calls), 1);
  cr_assert_str_eq(tok_a.last_digest, "SHA256");
  cr_assert_str_eq(tok_b.last_digest, "SHA256");
  cr_assert_eq(tok_a.last_out_len, 48);
  cr_assert_eq(tok_b.last_out_len, 48);
  cr_assert_eq(computed, 2);
  cr_assert_eq(token_computed(&tp), 2, "no master secret after the handshake");
  /* The keystores let go of each token key once, when freed. */
  cr_assert_eq(atomic_load(&tok_a.released), 1);
  cr_assert_eq(atomic_load(&tok_b.released), 1);

  token_stop(&tp);
  munmap(stack, stack_size);
  sem_destroy(&job.handshaken);
  sem_destroy(&job.may_free);
  explicit_bzero(heap_marker, KEY_LEN);
  free(heap_marker);
}

/* Disabled under ASan as test_hygiene's scans are (memscan.h). */
Test(token_hygiene, no_kpsa_in_process_tls_psk, .disabled = M2MT_UNDER_ASAN,
     .timeout = 60) {
  token_key_never_in_process(M2MPSK_TRANSPORT_TLS,
                             "TLS_PSK_WITH_AES_128_CBC_SHA256");
}

Test(token_hygiene, no_kpsa_in_process_dtls_psk, .disabled = M2MT_UNDER_ASAN,
     .timeout = 60) {
  token_key_never_in_process(M2MPSK_TRANSPORT_DTLS,
                             "TLS_PSK_WITH_AES_128_CCM_8");
}

Test(token_hygiene, no_kpsa_in_process_tls_ecdhe_psk,
     .disabled = M2MT_UNDER_ASAN, .timeout = 60) {
  token_key_never_in_process(M2MPSK_TRANSPORT_TLS,
                             "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256");
}
