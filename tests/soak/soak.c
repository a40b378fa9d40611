/* Soak: N in-memory handshakes through the public API, against a mix of
 * good peers and misbehaving ones, over TLS and DTLS:
 *
 *   good      same key: must establish, exchange data and close;
 *   wrong     initiator with another key: must fail, never establish;
 *   unknown   KpsaID the responder does not hold: must fail;
 *   garbage   random bytes (some after a valid first flight) to the
 *             responder: must fail or stay handshaking, never establish;
 *   stall     the peer goes silent: injected time is driven past the
 *             handshake timeout, both sides must fail with reason timeout;
 *   abrupt    both sides freed mid-handshake, after one or two flights.
 *
 * Good peers come from many addresses, misbehaving ones from eight, given
 * to the responder as peer tags; the library's default rate limits apply,
 * so the misbehaving addresses spend much of the run blocked (refused at
 * start, counted apart), and no good peer may ever be refused. Injected
 * time advances 1 ms per handshake, plus what stalls and timeouts take.
 * The responder's audit event queue is drained after every handshake and
 * checked against what happened.
 *
 * Passes with zero crashes, every good handshake established, and RSS back
 * to its baseline (VmRSS after a warm-up of WARMUP handshakes versus at the
 * end, within TOLERANCE_KIB). Prints the figures.
 *
 *   soak [N]        default 10000; ctest runs `soak 100000`
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "m2mpsk/m2mpsk.h"

#define KPSA_ID "soak@onem2m.com"
#define UNKNOWN_ID "stranger@onem2m.com"
#define IDA "//m2m.example.com/cse-in/Csoak"
#define IDB "//m2m.example.com/cse-in"
#define NOW0 1000000u
#define UNIX0 1800000000
#define TIMEOUT_MS 2000u
#define WARMUP 2000u
#define TOLERANCE_KIB 2048L

/* ASan holds freed blocks in a quarantine (256 MiB by default): RSS says
 * nothing about leaks there, LeakSanitizer does. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_MEANINGFUL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSS_MEANINGFUL 0
#endif
#endif
#ifndef RSS_MEANINGFUL
#define RSS_MEANINGFUL 1
#endif

enum kind { GOOD, WRONG, UNKNOWN, GARBAGE, STALL, ABRUPT, KINDS };
static const char *const k_names[KINDS] = {"good",    "wrong", "unknown",
                                           "garbage", "stall", "abrupt"};
/* Out of 20: half good, the rest misbehaving. */
static const enum kind k_mix[20] = {
    GOOD,    GOOD,    GOOD,  GOOD,   GOOD,  GOOD,  GOOD,
    GOOD,    GOOD,    GOOD,  WRONG,  WRONG, WRONG, UNKNOWN,
    UNKNOWN, GARBAGE, GARBAGE, STALL, ABRUPT, ABRUPT};

static uint32_t g_rng = 0x9e3779b9u;
static uint32_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 17;
  g_rng ^= g_rng << 5;
  return g_rng;
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  while (f != NULL && fgets(line, sizeof(line), f) != NULL)
    if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
      break;
  if (f != NULL)
    fclose(f);
  return kib;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "soak: FAILED %s:%d: ", __FILE__, __LINE__);            \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

static uint8_t g_buf[20000];

/* Feeding peer bytes and firing timers may fail the association, which
 * each scenario checks by its state and reason; only a misuse is fatal. */
static void feed(m2mpsk_assoc *to, const uint8_t *p, size_t n, uint64_t now) {
  int rc = m2mpsk_assoc_feed(to, p, n, now);
  CHECK(rc != M2MPSK_E_INVALID, "feed: %s", m2mpsk_strerror(rc));
}

static void timers(m2mpsk_assoc *x, uint64_t now) {
  int rc = m2mpsk_assoc_handle_timeout(x, now);
  CHECK(rc != M2MPSK_E_INVALID, "handle_timeout: %s", m2mpsk_strerror(rc));
}

/* Moves everything `from` has to send into `to`. Returns the number of
 * records or datagrams moved. */
static int pump(m2mpsk_assoc *from, m2mpsk_assoc *to, uint64_t now) {
  int moved = 0;
  size_t n = 0;
  while (m2mpsk_assoc_drain(from, g_buf, sizeof(g_buf), &n) == M2MPSK_OK) {
    moved++;
    if (to != NULL && m2mpsk_assoc_state(to) != M2MPSK_STATE_FAILED)
      feed(to, g_buf, n, now);
  }
  return moved;
}

static int handshaking(const m2mpsk_assoc *x) {
  return m2mpsk_assoc_state(x) == M2MPSK_STATE_HANDSHAKING;
}

/* Runs until neither side handshakes, firing timers when nothing moves. */
static void run(m2mpsk_assoc *a, m2mpsk_assoc *b, uint64_t *now) {
  for (int step = 0; step < 400 && (handshaking(a) || handshaking(b));
       step++) {
    int moved = pump(a, b, *now) + pump(b, a, *now);
    if (moved)
      continue;
    uint64_t ta = UINT64_MAX, tb = UINT64_MAX;
    if (m2mpsk_assoc_next_timeout(a, &ta) != M2MPSK_OK)
      ta = UINT64_MAX;
    if (m2mpsk_assoc_next_timeout(b, &tb) != M2MPSK_OK)
      tb = UINT64_MAX;
    uint64_t t = ta < tb ? ta : tb;
    CHECK(t != UINT64_MAX, "both sides handshaking with no timer");
    if (t > *now)
      *now = t;
    timers(a, *now);
    timers(b, *now);
  }
}

typedef struct world {
  m2mpsk_keystore *ks_a, *ks_a_wrong, *ks_a_unknown, *ks_b;
  m2mpsk_config *cfg_a, *cfg_b;
} world;

static long g_count[KINDS], g_established[KINDS], g_failed[KINDS],
    g_refused[KINDS], g_b_established;
static long g_events[6];
static uint64_t g_clock = NOW0;

/* Takes the responder's events; none may be lost. */
static void drain_events(m2mpsk_config *cfg) {
  m2mpsk_event *ev;
  while (m2mpsk_config_next_event(cfg, &ev) == M2MPSK_OK) {
    int t = (int)m2mpsk_event_get_type(ev);
    CHECK(t >= 1 && t <= 5, "event type %d", t);
    g_events[t]++;
    m2mpsk_event_free(ev);
  }
  CHECK(m2mpsk_config_events_dropped(cfg) == 0, "events dropped");
}

static void one(world *w, enum kind k, m2mpsk_transport t) {
  m2mpsk_keystore *ks_a = k == WRONG     ? w->ks_a_wrong
                          : k == UNKNOWN ? w->ks_a_unknown
                                         : w->ks_a;
  m2mpsk_assoc *a = NULL, *b = NULL;
  CHECK(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, w->cfg_a, ks_a,
                         k == UNKNOWN ? UNKNOWN_ID : KPSA_ID) == M2MPSK_OK,
        "new initiator");
  CHECK(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, w->cfg_b, w->ks_b,
                         NULL) == M2MPSK_OK,
        "new responder");
  uint64_t now = g_clock;
  char tag[32];
  if (k == GOOD)
    snprintf(tag, sizeof(tag), "198.51.100.%u", rnd() % 250);
  else
    snprintf(tag, sizeof(tag), "203.0.113.%u", rnd() % 8);
  CHECK(m2mpsk_assoc_set_peer_tag(b, tag) == M2MPSK_OK, "peer tag");
  g_count[k]++;
  int rc = m2mpsk_assoc_start(b, now, UNIX0);
  if (rc == M2MPSK_E_FAILED) {
    /* A blocked address: refused before any handshake work. */
    CHECK(k != GOOD, "good peer %s refused: %s", tag,
          m2mpsk_assoc_failure_detail(b));
    CHECK(m2mpsk_assoc_failure(b) == M2MPSK_REASON_RATE_LIMITED &&
              m2mpsk_assoc_pending(b) == 0,
          "refusal");
    g_refused[k]++;
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
    g_clock++;
    return;
  }
  CHECK(rc == M2MPSK_OK, "start responder");
  CHECK(m2mpsk_assoc_start(a, now, UNIX0) == M2MPSK_OK, "start initiator");

  switch (k) {
  case GOOD:
  case WRONG:
  case UNKNOWN:
    run(a, b, &now);
    break;
  case GARBAGE: {
    /* Sometimes after a real ClientHello, sometimes instead of one. */
    if (rnd() & 1)
      pump(a, b, now);
    for (int i = 0; i < 4 && handshaking(b); i++) {
      size_t n = 1 + rnd() % (t == M2MPSK_TRANSPORT_DTLS ? 1200 : 3000);
      for (size_t j = 0; j < n; j++)
        g_buf[j] = (uint8_t)rnd();
      if (rnd() & 1) { /* a plausible record header */
        g_buf[0] = (uint8_t)(20 + rnd() % 4);
        g_buf[1] = t == M2MPSK_TRANSPORT_DTLS ? 0xfe : 3;
        g_buf[2] = t == M2MPSK_TRANSPORT_DTLS ? 0xfd : 3;
      }
      feed(b, g_buf, n, now);
      pump(b, NULL, now);
    }
    /* Whatever is left stalls, and the timeout ends it. */
    now += TIMEOUT_MS + 1;
    timers(b, now);
    timers(a, now);
    break;
  }
  case STALL:
    /* One flight each way, then the initiator falls silent. */
    pump(a, b, now);
    pump(b, NULL, now);
    for (uint64_t end = now + TIMEOUT_MS + 1; now < end;) {
      uint64_t tb = 0;
      if (m2mpsk_assoc_next_timeout(b, &tb) != M2MPSK_OK || tb > end)
        tb = end;
      now = tb > now ? tb : now + 1;
      timers(b, now);
      pump(b, NULL, now);
    }
    timers(a, now);
    CHECK(m2mpsk_assoc_failure(b) == M2MPSK_REASON_TIMEOUT &&
              m2mpsk_assoc_failure(a) == M2MPSK_REASON_TIMEOUT,
          "stall: reasons %s/%s",
          m2mpsk_reason_name(m2mpsk_assoc_failure(a)),
          m2mpsk_reason_name(m2mpsk_assoc_failure(b)));
    break;
  case ABRUPT:
    pump(a, b, now);
    if (rnd() & 1) {
      pump(b, a, now);
      pump(a, b, now);
    }
    break;
  default:
    break;
  }

  int est = m2mpsk_assoc_state(a) == M2MPSK_STATE_ESTABLISHED &&
            m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED;
  if (k == GOOD) {
    CHECK(est, "good handshake %ld over %s did not establish: %s (%s) / %s "
               "(%s)",
          g_count[k], t == M2MPSK_TRANSPORT_TLS ? "TLS" : "DTLS",
          m2mpsk_reason_name(m2mpsk_assoc_failure(a)),
          m2mpsk_assoc_failure_detail(a),
          m2mpsk_reason_name(m2mpsk_assoc_failure(b)),
          m2mpsk_assoc_failure_detail(b));
    CHECK(strcmp(m2mpsk_assoc_peer_id(b), IDA) == 0 &&
              strcmp(m2mpsk_assoc_peer_id(a), IDB) == 0,
          "bound identities");
    static const uint8_t msg[] = "soak";
    size_t wr = 0, got = 0;
    uint8_t in[64];
    CHECK(m2mpsk_assoc_write(a, msg, sizeof(msg), &wr) == M2MPSK_OK, "write");
    pump(a, b, now);
    CHECK(m2mpsk_assoc_read(b, in, sizeof(in), &got) == M2MPSK_OK &&
              got == sizeof(msg) && memcmp(in, msg, got) == 0,
          "read");
    if (rnd() & 1) { /* orderly close, or just free */
      CHECK(m2mpsk_assoc_close(a) == M2MPSK_OK, "close");
      pump(a, b, now);
    }
  } else {
    CHECK(!est, "%s handshake established", k_names[k]);
  }
  g_established[k] += est;
  /* The responder may be established alone: an abrupt end after A's
   * Finished reached it. */
  g_b_established += m2mpsk_assoc_state(b) == M2MPSK_STATE_ESTABLISHED ||
                     m2mpsk_assoc_state(b) == M2MPSK_STATE_CLOSED;
  g_failed[k] += m2mpsk_assoc_state(a) == M2MPSK_STATE_FAILED ||
                 m2mpsk_assoc_state(b) == M2MPSK_STATE_FAILED;
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  /* Peers arrive 1 ms apart, whatever time their own handshakes took. */
  g_clock++;
}

static m2mpsk_keystore *keystore(const char *id, const uint8_t *key) {
  m2mpsk_keystore *ks = NULL;
  CHECK(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore");
  CHECK(m2mpsk_keystore_add(ks, id, key, 32, IDA, IDB, 0, 0) == M2MPSK_OK,
        "add");
  return ks;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? strtol(argv[1], NULL, 10) : 10000;
  CHECK(n >= (long)WARMUP * 2, "N must be at least %u", 2 * WARMUP);
  uint8_t key[32], other[32];
  CHECK(getrandom(key, sizeof(key), 0) == (ssize_t)sizeof(key) &&
            getrandom(other, sizeof(other), 0) == (ssize_t)sizeof(other),
        "getrandom");
  world w;
  w.ks_a = keystore(KPSA_ID, key);
  w.ks_a_wrong = keystore(KPSA_ID, other);
  w.ks_a_unknown = keystore(UNKNOWN_ID, key);
  w.ks_b = keystore(KPSA_ID, key);
  explicit_bzero(key, sizeof(key));
  explicit_bzero(other, sizeof(other));
  CHECK(m2mpsk_config_new(&w.cfg_a) == M2MPSK_OK &&
            m2mpsk_config_new(&w.cfg_b) == M2MPSK_OK &&
            m2mpsk_config_add_local_id(w.cfg_b, IDB) == M2MPSK_OK &&
            m2mpsk_config_set_handshake_timeout(w.cfg_a, TIMEOUT_MS) ==
                M2MPSK_OK &&
            m2mpsk_config_set_handshake_timeout(w.cfg_b, TIMEOUT_MS) ==
                M2MPSK_OK &&
            m2mpsk_config_set_event_queue(w.cfg_b, 64) == M2MPSK_OK,
        "configs");

  long rss_start = rss_kib(), rss_base = 0, rss_peak = 0;
  double t0 = now_s(), t_base = 0;
  for (long i = 0; i < n; i++) {
    if (i == (long)WARMUP) {
      rss_base = rss_kib();
      t_base = now_s();
    }
    enum kind k = k_mix[rnd() % 20];
    one(&w, k, (m2mpsk_transport)(rnd() & 1));
    drain_events(w.cfg_b);
    if (i % 1000 == 999) {
      long r = rss_kib();
      if (r > rss_peak)
        rss_peak = r;
    }
  }
  double t_end = now_s();
  long rss_end = rss_kib();

  m2mpsk_config_free(w.cfg_a);
  m2mpsk_config_free(w.cfg_b);
  m2mpsk_keystore_free(w.ks_a);
  m2mpsk_keystore_free(w.ks_a_wrong);
  m2mpsk_keystore_free(w.ks_a_unknown);
  m2mpsk_keystore_free(w.ks_b);

  long refused = 0;
  for (int k = 0; k < KINDS; k++) {
    printf("soak: %-8s %7ld run, %7ld established, %7ld failed, %7ld "
           "refused (rate limit)\n",
           k_names[k], g_count[k], g_established[k], g_failed[k],
           g_refused[k]);
    refused += g_refused[k];
  }
  printf("soak: responder events: %ld established, %ld failed, %ld "
         "rate-limited, %ld closed; %.1f s of injected time\n",
         g_events[M2MPSK_EVENT_ESTABLISHED], g_events[M2MPSK_EVENT_FAILED],
         g_events[M2MPSK_EVENT_RATE_LIMITED], g_events[M2MPSK_EVENT_CLOSED],
         (double)(g_clock - NOW0) / 1000.0);
  printf("soak: %ld handshakes in %.1f s (%.0f/s); RSS start %ld KiB, "
         "baseline after %u %ld KiB, peak %ld KiB, end %ld KiB (%+ld KiB)\n",
         n, t_end - t0, (double)n / (t_end - t0), rss_start, WARMUP, rss_base,
         rss_peak, rss_end, rss_end - rss_base);
  (void)t_base;
  CHECK(g_established[GOOD] == g_count[GOOD], "good handshakes failed");
  CHECK(g_events[M2MPSK_EVENT_ESTABLISHED] == g_b_established &&
            g_events[M2MPSK_EVENT_CLOSED] == g_b_established,
        "an established and a closed event per responder established: "
        "%ld, %ld, %ld", g_events[M2MPSK_EVENT_ESTABLISHED],
        g_events[M2MPSK_EVENT_CLOSED], g_b_established);
  CHECK(g_events[M2MPSK_EVENT_RATE_LIMITED] >= refused,
        "a rate-limited event per refusal");
  CHECK(refused > 0, "the misbehaving addresses were never blocked");
  CHECK(!RSS_MEANINGFUL || rss_end - rss_base <= TOLERANCE_KIB,
        "RSS grew by %ld KiB after warm-up (tolerance %ld)",
        rss_end - rss_base, TOLERANCE_KIB);
  printf("soak: PASS\n");
  return 0;
}
