/* Resource limits, rate limiting and audit events (issue 7): each limit
 * proven by reaching it, each event by provoking it. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "link.h"
#include "tls/engine.h"

#define NOW0 1000000u
#define UNIX0 1800000000 /* 2027-01-15 */

#define GOOD "good@onem2m.com"   /* same key on both sides */
#define BAD "bad@onem2m.com"     /* A holds the wrong key */
#define GHOST "ghost@onem2m.com" /* B has no record */
#define SHORT "short@onem2m.com" /* B's record expires at UNIX0 + 5 */

/* Two keystores and two configs; associations are made per attempt, so
 * each test sets the configs up before the first one freezes them. */
typedef struct world {
  m2mpsk_keystore *ks_a, *ks_b;
  m2mpsk_config *cfg_a, *cfg_b;
} world;

static void world_init(world *w) {
  memset(w, 0, sizeof(*w));
  cr_assert_eq(m2mpsk_keystore_new(&w->ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&w->ks_b, 0), M2MPSK_OK);
  const char *ids[] = {GOOD, BAD, GHOST, SHORT};
  for (int i = 0; i < 4; i++) {
    const uint8_t *ka = strcmp(ids[i], BAD) == 0 ? m2mt_other_key : m2mt_key;
    cr_assert_eq(m2mpsk_keystore_add(w->ks_a, ids[i], ka, 32, M2MT_IDA,
                                     M2MT_IDB, 0, 0),
                 M2MPSK_OK);
    if (strcmp(ids[i], GHOST) != 0)
      cr_assert_eq(m2mpsk_keystore_add(
                       w->ks_b, ids[i], m2mt_key, 32, M2MT_IDA, M2MT_IDB, 0,
                       strcmp(ids[i], SHORT) == 0 ? UNIX0 + 5 : 0),
                   M2MPSK_OK);
  }
  cr_assert_eq(m2mpsk_config_new(&w->cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&w->cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(w->cfg_b, M2MT_IDB), M2MPSK_OK);
}

static void world_free(world *w) {
  m2mpsk_config_free(w->cfg_a);
  m2mpsk_config_free(w->cfg_b);
  m2mpsk_keystore_free(w->ks_a);
  m2mpsk_keystore_free(w->ks_b);
}

/* Only the responder's limits matter here. */
static void peer_limit_only(world *w, uint32_t n, uint32_t block,
                            uint32_t block_max) {
  cr_assert_eq(m2mpsk_config_set_rate_limit(w->cfg_b, M2MPSK_RATE_PEER, n,
                                            10000, block, block_max),
               M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_config_set_rate_limit(w->cfg_b, M2MPSK_RATE_KPSA_ID, 0, 0, 0, 0),
      M2MPSK_OK);
}

static void kpsa_limit_only(world *w, uint32_t n) {
  cr_assert_eq(
      m2mpsk_config_set_rate_limit(w->cfg_b, M2MPSK_RATE_PEER, 0, 0, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_rate_limit(w->cfg_b, M2MPSK_RATE_KPSA_ID, n,
                                            10000, 1000, 8000),
               M2MPSK_OK);
}

typedef struct outcome {
  int start_rc;       /* the responder's m2mpsk_assoc_start() */
  size_t first_bytes; /* what the responder had to send after start */
  m2mpsk_state a_state, b_state;
  m2mpsk_reason a_reason, b_reason;
  char b_detail[192];
} outcome;

/* One handshake at time `now` between a fresh initiator using `kpsa_id`
 * and a fresh responder tagged `tag` (NULL: none). If keep_b is not NULL,
 * the responder is handed over instead of freed (and *keep_a likewise). */
static outcome attempt_ex(world *w, m2mpsk_transport t, const char *kpsa_id,
                          const char *tag, uint64_t now, m2mpsk_assoc **keep_a,
                          m2mpsk_assoc **keep_b) {
  outcome o;
  memset(&o, 0, sizeof(o));
  m2mpsk_assoc *a = NULL, *b = NULL;
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, w->cfg_a,
                                w->ks_a, kpsa_id),
               M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, w->cfg_b, w->ks_b, NULL),
      M2MPSK_OK);
  if (tag != NULL)
    cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, tag), M2MPSK_OK);
  o.start_rc = m2mpsk_assoc_start(b, now, UNIX0);
  o.first_bytes = m2mpsk_assoc_pending(b);
  cr_assert_eq(m2mpsk_assoc_start(a, now, UNIX0), M2MPSK_OK);
  if (o.start_rc == M2MPSK_OK) {
    uint64_t clock = now;
    cr_assert_geq(m2mt_run_handshake(a, b, NULL, &clock, 200), 0);
  }
  o.a_state = m2mpsk_assoc_state(a);
  o.b_state = m2mpsk_assoc_state(b);
  o.a_reason = m2mpsk_assoc_failure(a);
  o.b_reason = m2mpsk_assoc_failure(b);
  snprintf(o.b_detail, sizeof(o.b_detail), "%s",
           m2mpsk_assoc_failure_detail(b));
  if (keep_a)
    *keep_a = a;
  else
    m2mpsk_assoc_free(a);
  if (keep_b)
    *keep_b = b;
  else
    m2mpsk_assoc_free(b);
  return o;
}

static outcome attempt(world *w, const char *kpsa_id, const char *tag,
                       uint64_t now) {
  return attempt_ex(w, M2MPSK_TRANSPORT_TLS, kpsa_id, tag, now, NULL, NULL);
}

/* Takes every queued event, checks none carries key bytes, and returns
 * how many there were; types[] receives their types in order. */
static size_t take_events(m2mpsk_config *cfg, m2mpsk_event **evs, size_t cap);

/* ---- settings ------------------------------------------------------------ */

Test(limits, setters_validate_and_freeze) {
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_max_handshakes(NULL, 1), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_max_handshakes(cfg, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_max_input(NULL, 65536), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_max_input(cfg, M2MPSK_MAX_INPUT_MIN - 1),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_max_input(cfg, (1u << 30) + 1),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_max_input(cfg, M2MPSK_MAX_INPUT_MIN),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_rate_limit(NULL, M2MPSK_RATE_PEER, 1, 1, 1, 1),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, (m2mpsk_rate_key)2, 1, 1, 1, 1),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, M2MPSK_RATE_PEER, 1, 0, 1, 1),
               M2MPSK_E_INVALID, "zero window");
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, M2MPSK_RATE_PEER, 1, 1, 0, 1),
               M2MPSK_E_INVALID, "zero block");
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, M2MPSK_RATE_PEER, 1, 1, 5, 4),
               M2MPSK_E_INVALID, "ceiling below block");
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, M2MPSK_RATE_KPSA_ID, 1,
                                            86400001, 1, 1),
               M2MPSK_E_INVALID, "window above a day");
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, M2MPSK_RATE_KPSA_ID, 1, 1, 1,
                                            86400001),
               M2MPSK_E_INVALID, "ceiling above a day");
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, M2MPSK_RATE_KPSA_ID, 0, 0, 0,
                                            0),
               M2MPSK_OK, "off needs no times");
  cr_assert_eq(m2mpsk_config_set_event_queue(NULL, 1), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_event_queue(cfg, (1u << 20) + 1),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_set_event_queue(cfg, 1u << 20), M2MPSK_OK);

  /* Nothing is counted or queued before an association exists. */
  m2mpsk_event *ev = (m2mpsk_event *)&ev;
  cr_assert_eq(m2mpsk_config_next_event(cfg, &ev), M2MPSK_E_AGAIN);
  cr_assert_null(ev);
  cr_assert_eq(m2mpsk_config_next_event(NULL, &ev), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_next_event(cfg, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_events_dropped(cfg), 0);
  cr_assert_eq(m2mpsk_config_events_dropped(NULL), 0);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(cfg), 0);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(NULL), 0);
  cr_assert_eq(m2mpsk_config_peer_blocked(cfg, "x", 0, NULL), 0);
  cr_assert_eq(m2mpsk_config_peer_blocked(NULL, "x", 0, NULL),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_config_peer_blocked(cfg, NULL, 0, NULL),
               M2MPSK_E_INVALID);

  /* An association freezes the config: every setter then refuses. */
  m2mpsk_keystore *ks;
  m2mpsk_assoc *a;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(ks, GOOD, m2mt_key, 32, NULL, M2MT_IDB, 0,
                                   0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_TLS, cfg, ks, GOOD),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_max_handshakes(cfg, 1), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_config_set_max_input(cfg, 65536), M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_config_set_rate_limit(cfg, M2MPSK_RATE_PEER, 1, 1, 1, 1),
               M2MPSK_E_STATE);
  cr_assert_eq(m2mpsk_config_set_event_queue(cfg, 1), M2MPSK_E_STATE);
  m2mpsk_assoc_free(a);
  m2mpsk_keystore_free(ks);
  m2mpsk_config_free(cfg);

  cr_assert_str_eq(m2mpsk_strerror(M2MPSK_E_LIMIT),
                   "a configured resource limit was reached");
  cr_assert_str_eq(m2mpsk_reason_name(M2MPSK_REASON_RATE_LIMITED),
                   "rate-limited");
  cr_assert_str_eq(m2mpsk_reason_name(M2MPSK_REASON_LIMIT), "limit");
  const char *names[] = {"none",    "established",  "failed",
                         "revoked", "rate-limited", "closed"};
  for (int i = 0; i < 6; i++)
    cr_assert_str_eq(m2mpsk_event_type_name(i), names[i]);
  cr_assert_str_eq(m2mpsk_event_type_name(6), "unknown");
  cr_assert_str_eq(m2mpsk_event_type_name(-1), "unknown");
}

Test(limits, peer_tag_is_validated_and_set_only_before_start) {
  world w;
  world_init(&w);
  m2mpsk_assoc *b;
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
               M2MPSK_OK);
  char long_tag[M2MPSK_PEER_TAG_MAX + 2];
  memset(long_tag, 'x', sizeof(long_tag) - 1);
  long_tag[sizeof(long_tag) - 1] = '\0';
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(NULL, "x"), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, ""), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, long_tag), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, "10.0.0.1\n:1"), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, "h\xc3\xa9te"), M2MPSK_E_INVALID);
  cr_assert_null(m2mpsk_assoc_peer_tag(b), "a refused tag leaves none");
  long_tag[M2MPSK_PEER_TAG_MAX] = '\0';
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, long_tag), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, "[::1]:5684"), M2MPSK_OK);
  cr_assert_str_eq(m2mpsk_assoc_peer_tag(b), "[::1]:5684");
  cr_assert_eq(m2mpsk_assoc_start(b, NOW0, UNIX0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, "other"), M2MPSK_E_STATE);
  cr_assert_str_eq(m2mpsk_assoc_peer_tag(b), "[::1]:5684");
  cr_assert_null(m2mpsk_assoc_peer_tag(NULL));
  m2mpsk_assoc_free(b);
  world_free(&w);
}

/* ---- handshakes in progress ---------------------------------------------- */

Test(limits, max_handshakes_fails_fast_and_frees_places) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_max_handshakes(w.cfg_b, 2), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_b, 16), M2MPSK_OK);
  m2mpsk_assoc *b[3] = {NULL, NULL, NULL}, *extra = NULL;
  for (int i = 0; i < 2; i++)
    cr_assert_eq(m2mpsk_assoc_new(&b[i], M2MPSK_ROLE_RESPONDER,
                                  M2MPSK_TRANSPORT_DTLS, w.cfg_b, w.ks_b, NULL),
                 M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 2);
  b[2] = (m2mpsk_assoc *)&b;
  cr_assert_eq(m2mpsk_assoc_new(&b[2], M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
               M2MPSK_E_LIMIT);
  cr_assert_null(b[2]);
  m2mpsk_event *ev;
  cr_assert_eq(m2mpsk_config_next_event(w.cfg_b, &ev), M2MPSK_OK);
  cr_assert_eq(m2mpsk_event_get_type(ev), M2MPSK_EVENT_RATE_LIMITED);
  cr_assert_eq(m2mpsk_event_reason(ev), M2MPSK_REASON_LIMIT);
  cr_assert_eq(m2mpsk_event_role(ev), M2MPSK_ROLE_RESPONDER);
  cr_assert_eq(m2mpsk_event_transport(ev), M2MPSK_TRANSPORT_TLS);
  cr_assert_null(m2mpsk_event_kpsa_id(ev));
  cr_assert_null(m2mpsk_event_peer_tag(ev));
  cr_assert_str_eq(m2mpsk_event_detail(ev), "too many handshakes in progress");
  m2mpsk_event_free(ev);

  /* Initiators are not counted against a responder's bound. */
  m2mpsk_assoc *a;
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_a, GOOD),
               M2MPSK_OK);
  m2mpsk_assoc_free(a);

  /* An idle association freed gives its place back... */
  m2mpsk_assoc_free(b[0]);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 1);
  cr_assert_eq(m2mpsk_assoc_new(&b[0], M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
               M2MPSK_OK);
  /* ...so does a failed one, while it still exists... */
  cr_assert_eq(m2mpsk_assoc_start(b[1], NOW0, UNIX0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(b[1], NOW0 + 3600000),
               M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(b[1]), M2MPSK_REASON_TIMEOUT);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 1);
  cr_assert_eq(m2mpsk_assoc_new(&extra, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 2);
  m2mpsk_assoc_free(b[1]);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 2,
               "freeing a failed association does not count it twice");
  m2mpsk_assoc_free(b[0]);
  m2mpsk_assoc_free(extra);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);

  /* ...and so does an established one. */
  m2mpsk_assoc *kb;
  outcome o = attempt_ex(&w, M2MPSK_TRANSPORT_TLS, GOOD, NULL, NOW0, NULL,
                         &kb);
  cr_assert_eq(o.b_state, M2MPSK_STATE_ESTABLISHED, "%s", o.b_detail);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  m2mpsk_assoc_free(kb);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  world_free(&w);
}

Test(limits, max_handshakes_zero_is_unlimited) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_max_handshakes(w.cfg_b, 0), M2MPSK_OK);
  enum { N = 5000 }; /* past the default of 4096 */
  m2mpsk_assoc **b = calloc(N, sizeof(*b));
  cr_assert_not_null(b);
  for (int i = 0; i < N; i++)
    cr_assert_eq(m2mpsk_assoc_new(&b[i], M2MPSK_ROLE_RESPONDER,
                                  M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
                 M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), N);
  for (int i = 0; i < N; i++)
    m2mpsk_assoc_free(b[i]);
  free(b);
  world_free(&w);
}

Test(limits, default_bound_is_4096_handshakes) {
  world w;
  world_init(&w);
  enum { N = 4096 };
  m2mpsk_assoc **b = calloc(N + 1, sizeof(*b));
  cr_assert_not_null(b);
  for (int i = 0; i < N; i++)
    cr_assert_eq(m2mpsk_assoc_new(&b[i], M2MPSK_ROLE_RESPONDER,
                                  M2MPSK_TRANSPORT_DTLS, w.cfg_b, w.ks_b, NULL),
                 M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&b[N], M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_DTLS, w.cfg_b, w.ks_b, NULL),
               M2MPSK_E_LIMIT);
  for (int i = 0; i < N; i++)
    m2mpsk_assoc_free(b[i]);
  free(b);
  world_free(&w);
}

/* ---- buffered input ------------------------------------------------------ */

/* Drains everything `from` has queued into a growing buffer. */
static uint8_t *drain_all(m2mpsk_assoc *from, size_t *len) {
  size_t cap = 1 << 16, n = 0;
  uint8_t *buf = malloc(cap);
  cr_assert_not_null(buf);
  for (;;) {
    if (cap - n < 20000) {
      cap *= 2;
      buf = realloc(buf, cap);
      cr_assert_not_null(buf);
    }
    size_t got;
    int rc = m2mpsk_assoc_drain(from, buf + n, cap - n, &got);
    if (rc == M2MPSK_E_AGAIN)
      break;
    cr_assert_eq(rc, M2MPSK_OK);
    n += got;
  }
  *len = n;
  return buf;
}

Test(limits, tls_input_past_the_bound_is_refused_whole_then_accepted) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_max_input(w.cfg_b, 65536), M2MPSK_OK);
  m2mpsk_assoc *a, *b;
  outcome o = attempt_ex(&w, M2MPSK_TRANSPORT_TLS, GOOD, NULL, NOW0, &a, &b);
  cr_assert_eq(o.b_state, M2MPSK_STATE_ESTABLISHED, "%s", o.b_detail);

  /* 96 KiB of application data in flight, fed in one go. */
  static uint8_t msg[96 * 1024];
  for (size_t i = 0; i < sizeof(msg); i++)
    msg[i] = (uint8_t)(i * 7);
  for (size_t off = 0; off < sizeof(msg); off += 16384) {
    size_t wr;
    cr_assert_eq(m2mpsk_assoc_write(a, msg + off, 16384, &wr), M2MPSK_OK);
  }
  size_t len;
  uint8_t *wire = drain_all(a, &len);
  cr_assert_gt(len, 65536);
  cr_assert_eq(m2mpsk_assoc_feed(b, wire, len, NOW0), M2MPSK_E_LIMIT);
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED);
  uint8_t out[256];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_read(b, out, sizeof(out), &n), M2MPSK_E_AGAIN,
               "nothing was consumed");

  /* Fed within the bound, reading as it goes, all of it arrives intact. */
  static uint8_t got[sizeof(msg)];
  size_t fed = 0, have = 0, refused = 0;
  for (int round = 0; have < sizeof(msg) && round < 1000; round++) {
    size_t chunk = len - fed < 40000 ? len - fed : 40000;
    if (chunk > 0) {
      int rc = m2mpsk_assoc_feed(b, wire + fed, chunk, NOW0);
      if (rc == M2MPSK_E_LIMIT)
        refused++;
      else {
        cr_assert_eq(rc, M2MPSK_OK);
        fed += chunk;
      }
    }
    /* Read one record at most per round, so that input piles up. */
    int rc = m2mpsk_assoc_read(b, got + have, sizeof(got) - have, &n);
    if (rc == M2MPSK_OK)
      have += n;
    else
      cr_assert_eq(rc, M2MPSK_E_AGAIN);
  }
  cr_assert_gt(refused, 0, "the bound was reached on the way");
  cr_assert_arr_eq(got, msg, sizeof(msg));
  free(wire);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  world_free(&w);
}

Test(limits, dtls_datagrams_past_the_bound_are_refused) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_max_input(w.cfg_b, 65536), M2MPSK_OK);
  m2mpsk_assoc *a, *b;
  outcome o = attempt_ex(&w, M2MPSK_TRANSPORT_DTLS, GOOD, NULL, NOW0, &a, &b);
  cr_assert_eq(o.b_state, M2MPSK_STATE_ESTABLISHED, "%s", o.b_detail);
  uint8_t msg[1000], dg[2048];
  memset(msg, 'd', sizeof(msg));
  int accepted = 0, refused = 0;
  for (int i = 0; i < 200; i++) {
    size_t wr, n;
    cr_assert_eq(m2mpsk_assoc_write(a, msg, sizeof(msg), &wr), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_drain(a, dg, sizeof(dg), &n), M2MPSK_OK);
    int rc = m2mpsk_assoc_feed(b, dg, n, NOW0);
    if (rc == M2MPSK_OK)
      accepted++;
    else {
      cr_assert_eq(rc, M2MPSK_E_LIMIT);
      refused++;
    }
  }
  /* About 65536 / (1000 + overhead) datagrams fit. */
  cr_assert(accepted >= 50 && accepted <= 66, "accepted %d", accepted);
  cr_assert_eq(accepted + refused, 200);
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED);
  uint8_t out[2048];
  size_t n;
  int read = 0;
  while (m2mpsk_assoc_read(b, out, sizeof(out), &n) == M2MPSK_OK) {
    cr_assert_eq(n, sizeof(msg));
    read++;
  }
  cr_assert_eq(read, accepted, "every accepted datagram is delivered");
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  world_free(&w);
}

Test(limits, input_flood_during_handshake_fails_with_limit) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_b, 4), M2MPSK_OK);
  m2mpsk_assoc *b;
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(b, NOW0, UNIX0), M2MPSK_OK);
  /* The start of a ClientHello record that claims to go on: the engine
   * waits for the rest, so everything fed stays buffered. */
  static uint8_t flood[300000];
  memset(flood, 0x41, sizeof(flood));
  flood[0] = 22, flood[1] = 3, flood[2] = 1, flood[3] = 0x40, flood[4] = 0;
  cr_assert_eq(m2mpsk_assoc_feed(b, flood, 5, NOW0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_feed(b, flood + 5, sizeof(flood) - 5, NOW0),
               M2MPSK_E_FAILED);
  cr_assert_eq(m2mpsk_assoc_failure(b), M2MPSK_REASON_LIMIT);
  cr_assert(strstr(m2mpsk_assoc_failure_detail(b), "262144") != NULL, "%s",
            m2mpsk_assoc_failure_detail(b));
  m2mpsk_event *ev;
  cr_assert_eq(m2mpsk_config_next_event(w.cfg_b, &ev), M2MPSK_OK);
  cr_assert_eq(m2mpsk_event_get_type(ev), M2MPSK_EVENT_FAILED);
  cr_assert_eq(m2mpsk_event_reason(ev), M2MPSK_REASON_LIMIT);
  m2mpsk_event_free(ev);
  m2mpsk_assoc_free(b);
  world_free(&w);
}

/* ---- rate limiting ------------------------------------------------------- */

Test(limits, peer_tag_blocked_after_failures_with_doubling_backoff) {
  world w;
  world_init(&w);
  peer_limit_only(&w, 3, 1000, 4000);
  const char *tag = "192.0.2.7:40000";
  uint64_t now = NOW0;
  for (int i = 0; i < 3; i++) {
    outcome o = attempt(&w, BAD, tag, now);
    cr_assert_eq(o.b_reason, M2MPSK_REASON_BAD_KEY, "%s", o.b_detail);
  }
  uint64_t until = 0;
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now, &until), 1);
  cr_assert_eq(until, now + 1000);

  /* Blocked: refused at start, before any handshake work, nothing sent,
   * even with the right key. */
  outcome o = attempt(&w, GOOD, tag, now + 500);
  cr_assert_eq(o.start_rc, M2MPSK_E_FAILED);
  cr_assert_eq(o.b_reason, M2MPSK_REASON_RATE_LIMITED);
  cr_assert_eq(o.first_bytes, 0);
  cr_assert(strstr(o.b_detail, tag) != NULL && strstr(o.b_detail, "500 ms"),
            "%s", o.b_detail);
  /* Another peer is not affected. */
  o = attempt(&w, GOOD, "192.0.2.8:40000", now + 500);
  cr_assert_eq(o.b_state, M2MPSK_STATE_ESTABLISHED, "%s", o.b_detail);
  /* Refusals while blocked do not extend the block. */
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now + 999, &until), 1);
  cr_assert_eq(until, now + 1000);
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now + 1000, &until),
               0);
  cr_assert_eq(until, 0);

  /* Each further block lasts twice as long, up to the ceiling. */
  uint64_t expect[] = {2000, 4000, 4000};
  now += 1000;
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 3; i++)
      cr_assert_eq(attempt(&w, BAD, tag, now).b_reason,
                   M2MPSK_REASON_BAD_KEY);
    cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now, &until), 1);
    cr_assert_eq(until, now + expect[round], "round %d: %llu", round,
                 (unsigned long long)(until - now));
    now = until;
  }
  /* A success forgets the peer: the next block is short again. */
  cr_assert_eq(attempt(&w, GOOD, tag, now).b_state,
               M2MPSK_STATE_ESTABLISHED);
  for (int i = 0; i < 3; i++)
    attempt(&w, BAD, tag, now);
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now, &until), 1);
  cr_assert_eq(until, now + 1000);
  world_free(&w);
}

Test(limits, failures_outside_the_window_do_not_add_up) {
  world w;
  world_init(&w);
  peer_limit_only(&w, 3, 1000, 4000); /* window 10 s */
  const char *tag = "peer-a";
  uint64_t now = NOW0;
  for (int i = 0; i < 10; i++) {
    attempt(&w, BAD, tag, now);
    attempt(&w, BAD, tag, now + 1);
    now += 10000; /* two failures per window, never three */
    cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now, NULL), 0);
  }
  /* A long quiet period forgives the backoff level. */
  for (int i = 0; i < 3; i++)
    attempt(&w, BAD, tag, now);
  uint64_t until;
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now, &until), 1);
  now = until;
  for (int i = 0; i < 3; i++)
    attempt(&w, BAD, tag, now);
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now, &until), 1);
  cr_assert_eq(until - now, 2000);
  now = until + 2 * 4000;
  for (int i = 0; i < 3; i++)
    attempt(&w, BAD, tag, now);
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, tag, now, &until), 1);
  cr_assert_eq(until - now, 1000, "forgiven after twice the ceiling");
  world_free(&w);
}

Test(limits, kpsa_id_blocked_whether_or_not_a_record_has_it) {
  world w;
  world_init(&w);
  kpsa_limit_only(&w, 4);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_b, 64), M2MPSK_OK);
  uint64_t now = NOW0;
  char tag[32];
  /* Failures from many peers with one KpsaID, known (BAD) or not (GHOST). */
  for (int i = 0; i < 4; i++) {
    snprintf(tag, sizeof(tag), "peer-%d", i);
    cr_assert_eq(attempt(&w, BAD, tag, now).b_reason, M2MPSK_REASON_BAD_KEY);
    cr_assert_eq(attempt(&w, GHOST, tag, now).b_reason,
                 M2MPSK_REASON_UNKNOWN_IDENTITY);
  }
  const char *ids[] = {BAD, GHOST};
  for (int k = 0; k < 2; k++) {
    outcome o = attempt(&w, ids[k], "peer-new", now + 10);
    cr_assert_eq(o.start_rc, M2MPSK_OK, "the peer itself is not blocked");
    cr_assert_eq(o.b_reason, M2MPSK_REASON_RATE_LIMITED, "%s: %s", ids[k],
                 o.b_detail);
    cr_assert_eq(o.a_state, M2MPSK_STATE_FAILED, "the client is told");
    cr_assert(strstr(o.b_detail, ids[k]) != NULL, "%s", o.b_detail);
  }
  /* Other KpsaIDs go on. */
  cr_assert_eq(attempt(&w, GOOD, "peer-new", now + 10).b_state,
               M2MPSK_STATE_ESTABLISHED);
  /* The block ends. */
  cr_assert_eq(attempt(&w, GHOST, "peer-new", now + 1000).b_reason,
               M2MPSK_REASON_UNKNOWN_IDENTITY);

  /* Events: the refusals are RATE_LIMITED, carrying KpsaID and tag. */
  m2mpsk_event *ev;
  int limited = 0, failed = 0;
  while (m2mpsk_config_next_event(w.cfg_b, &ev) == M2MPSK_OK) {
    if (m2mpsk_event_get_type(ev) == M2MPSK_EVENT_RATE_LIMITED) {
      limited++;
      cr_assert_eq(m2mpsk_event_reason(ev), M2MPSK_REASON_RATE_LIMITED);
      cr_assert_str_eq(m2mpsk_event_peer_tag(ev), "peer-new");
      cr_assert_not_null(m2mpsk_event_kpsa_id(ev));
      cr_assert_null(m2mpsk_event_peer_id(ev));
    } else if (m2mpsk_event_get_type(ev) == M2MPSK_EVENT_FAILED) {
      failed++;
    }
    m2mpsk_event_free(ev);
  }
  cr_assert_eq(limited, 2);
  cr_assert_eq(failed, 9);
  world_free(&w);
}

Test(limits, host_and_internal_faults_are_not_counted) {
  world w;
  world_init(&w);
  peer_limit_only(&w, 2, 1000, 1000);
  cr_assert_eq(m2mpsk_config_set_rate_limit(w.cfg_b, M2MPSK_RATE_KPSA_ID, 2,
                                            10000, 1000, 1000),
               M2MPSK_OK);
  /* SHORT has a validity window: without a wall clock that is the host's
   * misuse, not the peer's failure. */
  for (int i = 0; i < 5; i++) {
    m2mpsk_assoc *a, *b;
    cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER,
                                  M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                  M2MPSK_TRANSPORT_TLS, w.cfg_a, w.ks_a, SHORT),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, "host"), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(b, NOW0, 0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(a, NOW0, UNIX0), M2MPSK_OK);
    uint64_t now = NOW0;
    cr_assert_geq(m2mt_run_handshake(a, b, NULL, &now, 200), 0);
    cr_assert_eq(m2mpsk_assoc_failure(b), M2MPSK_REASON_MISUSE);
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
  }
  cr_assert_eq(m2mpsk_config_peer_blocked(w.cfg_b, "host", NOW0, NULL), 0);
  cr_assert_eq(attempt(&w, SHORT, "host", NOW0).b_state,
               M2MPSK_STATE_ESTABLISHED, "KpsaID not blocked either");
  world_free(&w);
}

Test(limits, malformed_identities_share_one_key) {
  /* A client that presents garbage as psk_identity cannot lock out a real
   * KpsaID with it: every malformed identity counts under one key. Our
   * initiator cannot send one (its KpsaID is validated), so the responder's
   * PSK hook is called directly, as the TLS engine would call it. */
  world w;
  world_init(&w);
  kpsa_limit_only(&w, 2);
  m2mpsk_assoc *b;
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER,
                                  M2MPSK_TRANSPORT_TLS, w.cfg_b, w.ks_b, NULL),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(b, NOW0, UNIX0), M2MPSK_OK);
    uint8_t psk[64];
    const char *garbage[] = {"no-at-sign", "bad\x01@x.com", "@"};
    unsigned n = m2mpsk_assoc_on_server_psk(b, garbage[i], psk, sizeof(psk));
    if (i < 2) {
      cr_assert_eq(n, 32, "a decoy key");
      /* End it as the engine would after the Finished fails. */
      cr_assert_eq(m2mpsk_assoc_handle_timeout(b, NOW0 + 3600000),
                   M2MPSK_E_FAILED);
      cr_assert_eq(m2mpsk_assoc_failure(b), M2MPSK_REASON_TIMEOUT);
    } else {
      cr_assert_eq(n, 0, "refused at once");
    }
    cr_assert_null(m2mpsk_assoc_kpsa_id(b));
    m2mpsk_assoc_free(b);
  }
  /* A real KpsaID is not affected. */
  cr_assert_eq(attempt(&w, GOOD, NULL, NOW0).b_state,
               M2MPSK_STATE_ESTABLISHED);
  world_free(&w);
}

/* ---- events -------------------------------------------------------------- */

static void assert_no_key_bytes(const char *s) {
  if (s == NULL)
    return;
  char hex[65];
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", m2mt_key[i]);
  cr_assert_null(strstr(s, hex), "hex key in \"%s\"", s);
  hex[16] = '\0';
  cr_assert_null(strstr(s, hex), "hex key prefix in \"%s\"", s);
  cr_assert_null(memmem(s, strlen(s), m2mt_key, 8), "raw key in an event");
}

static size_t take_events(m2mpsk_config *cfg, m2mpsk_event **evs, size_t cap) {
  size_t n = 0;
  m2mpsk_event *ev;
  while (m2mpsk_config_next_event(cfg, &ev) == M2MPSK_OK) {
    assert_no_key_bytes(m2mpsk_event_kpsa_id(ev));
    assert_no_key_bytes(m2mpsk_event_peer_id(ev));
    assert_no_key_bytes(m2mpsk_event_peer_tag(ev));
    assert_no_key_bytes(m2mpsk_event_detail(ev));
    cr_assert_lt(n, cap);
    evs[n++] = ev;
  }
  return n;
}

static void free_events(m2mpsk_event **evs, size_t n) {
  for (size_t i = 0; i < n; i++)
    m2mpsk_event_free(evs[i]);
}

Test(events, lifecycle_of_an_association_in_both_roles) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_a, 8), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_b, 8), M2MPSK_OK);
  m2mpsk_assoc *a, *b;
  outcome o = attempt_ex(&w, M2MPSK_TRANSPORT_DTLS, GOOD, "198.51.100.1:5684",
                         NOW0, &a, &b);
  cr_assert_eq(o.b_state, M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_close(a), M2MPSK_OK);
  m2mt_transfer(a, b, NULL, NOW0);
  uint8_t buf[16];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_read(b, buf, sizeof(buf), &n), M2MPSK_E_CLOSED);
  cr_assert_eq(m2mpsk_assoc_close(b), M2MPSK_OK);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);

  m2mpsk_event *evs[8];
  size_t nb = take_events(w.cfg_b, evs, 8);
  cr_assert_eq(nb, 2);
  cr_assert_eq(m2mpsk_event_get_type(evs[0]), M2MPSK_EVENT_ESTABLISHED);
  cr_assert_eq(m2mpsk_event_role(evs[0]), M2MPSK_ROLE_RESPONDER);
  cr_assert_eq(m2mpsk_event_transport(evs[0]), M2MPSK_TRANSPORT_DTLS);
  cr_assert_eq(m2mpsk_event_reason(evs[0]), M2MPSK_REASON_NONE);
  cr_assert_geq(m2mpsk_event_time_ms(evs[0]), NOW0);
  cr_assert_str_eq(m2mpsk_event_kpsa_id(evs[0]), GOOD);
  cr_assert_str_eq(m2mpsk_event_peer_id(evs[0]), M2MT_IDA);
  cr_assert_eq(m2mpsk_event_peer_id_is_credential(evs[0]), 0);
  cr_assert_str_eq(m2mpsk_event_peer_tag(evs[0]), "198.51.100.1:5684");
  cr_assert(strstr(m2mpsk_event_detail(evs[0]), "DTLSv1.2") != NULL);
  cr_assert_eq(m2mpsk_event_get_type(evs[1]), M2MPSK_EVENT_CLOSED);
  cr_assert_str_eq(m2mpsk_event_detail(evs[1]), "close_notify received");
  cr_assert_str_eq(m2mpsk_event_peer_id(evs[1]), M2MT_IDA);
  free_events(evs, nb);

  size_t na = take_events(w.cfg_a, evs, 8);
  cr_assert_eq(na, 2);
  cr_assert_eq(m2mpsk_event_get_type(evs[0]), M2MPSK_EVENT_ESTABLISHED);
  cr_assert_eq(m2mpsk_event_role(evs[0]), M2MPSK_ROLE_INITIATOR);
  cr_assert_str_eq(m2mpsk_event_peer_id(evs[0]), M2MT_IDB);
  cr_assert_null(m2mpsk_event_peer_tag(evs[0]));
  cr_assert_eq(m2mpsk_event_get_type(evs[1]), M2MPSK_EVENT_CLOSED);
  cr_assert_str_eq(m2mpsk_event_detail(evs[1]), "close_notify sent");
  free_events(evs, na);
  world_free(&w);
}

Test(events, failure_revocation_expiry_and_abandonment) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_b, 16), M2MPSK_OK);
  /* A failed handshake: the KpsaID presented, no bound identity. */
  cr_assert_eq(attempt(&w, BAD, "t1", NOW0).b_reason, M2MPSK_REASON_BAD_KEY);
  /* A live association whose record is revoked. */
  m2mpsk_assoc *a, *b;
  attempt_ex(&w, M2MPSK_TRANSPORT_TLS, GOOD, "t2", NOW0, &a, &b);
  cr_assert_eq(m2mpsk_keystore_revoke(w.ks_b, GOOD), M2MPSK_OK);
  size_t wr;
  cr_assert_eq(m2mpsk_assoc_write(b, (const uint8_t *)"x", 1, &wr),
               M2MPSK_E_FAILED);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  /* A live association whose record expires. */
  attempt_ex(&w, M2MPSK_TRANSPORT_TLS, SHORT, "t3", NOW0, &a, &b);
  cr_assert_eq(m2mpsk_assoc_handle_timeout(b, NOW0 + 6000), M2MPSK_E_FAILED);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  /* One freed while established, with the Credential-ID bound. */
  cr_assert_eq(m2mpsk_keystore_remove(w.ks_b, GOOD), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(w.ks_b, GOOD, m2mt_key, 32, NULL, M2MT_IDB,
                                   0, 0),
               M2MPSK_OK);
  attempt_ex(&w, M2MPSK_TRANSPORT_TLS, GOOD, "t4", NOW0, &a, &b);
  m2mpsk_assoc_free(b);
  m2mpsk_assoc_free(a);

  m2mpsk_event *evs[16];
  size_t n = take_events(w.cfg_b, evs, 16);
  cr_assert_eq(n, 7);
  cr_assert_eq(m2mpsk_event_get_type(evs[0]), M2MPSK_EVENT_FAILED);
  cr_assert_eq(m2mpsk_event_reason(evs[0]), M2MPSK_REASON_BAD_KEY);
  cr_assert_str_eq(m2mpsk_event_kpsa_id(evs[0]), BAD);
  cr_assert_null(m2mpsk_event_peer_id(evs[0]));
  cr_assert_str_eq(m2mpsk_event_peer_tag(evs[0]), "t1");

  cr_assert_eq(m2mpsk_event_get_type(evs[1]), M2MPSK_EVENT_ESTABLISHED);
  cr_assert_eq(m2mpsk_event_get_type(evs[2]), M2MPSK_EVENT_REVOKED);
  cr_assert_eq(m2mpsk_event_reason(evs[2]), M2MPSK_REASON_REVOKED);
  cr_assert_str_eq(m2mpsk_event_peer_id(evs[2]), M2MT_IDA);
  cr_assert_str_eq(m2mpsk_event_peer_tag(evs[2]), "t2");

  cr_assert_eq(m2mpsk_event_get_type(evs[3]), M2MPSK_EVENT_ESTABLISHED);
  cr_assert_eq(m2mpsk_event_get_type(evs[4]), M2MPSK_EVENT_REVOKED);
  cr_assert_eq(m2mpsk_event_reason(evs[4]), M2MPSK_REASON_EXPIRED);
  cr_assert_str_eq(m2mpsk_event_kpsa_id(evs[4]), SHORT);

  cr_assert_eq(m2mpsk_event_get_type(evs[5]), M2MPSK_EVENT_ESTABLISHED);
  cr_assert_eq(m2mpsk_event_peer_id_is_credential(evs[5]), 1);
  cr_assert_str_eq(m2mpsk_event_peer_id(evs[5]), "12-" GOOD);
  cr_assert_eq(m2mpsk_event_get_type(evs[6]), M2MPSK_EVENT_CLOSED);
  cr_assert_str_eq(m2mpsk_event_detail(evs[6]), "freed while established");
  free_events(evs, n);
  world_free(&w);
}

Test(events, queue_is_bounded_and_counts_what_it_drops) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_b, 3), M2MPSK_OK);
  peer_limit_only(&w, 0, 0, 0);
  for (int i = 0; i < 10; i++)
    attempt(&w, BAD, NULL, NOW0);
  cr_assert_eq(m2mpsk_config_events_dropped(w.cfg_b), 7);
  m2mpsk_event *evs[3];
  cr_assert_eq(take_events(w.cfg_b, evs, 3), 3, "the oldest are kept");
  free_events(evs, 3);
  attempt(&w, BAD, NULL, NOW0);
  cr_assert_eq(take_events(w.cfg_b, evs, 3), 1, "room again once taken");
  free_events(evs, 1);
  cr_assert_eq(m2mpsk_config_events_dropped(w.cfg_b), 7);
  world_free(&w);
}

Test(events, queue_off_by_default_and_null_accessors) {
  world w;
  world_init(&w);
  attempt(&w, GOOD, NULL, NOW0);
  m2mpsk_event *ev;
  cr_assert_eq(m2mpsk_config_next_event(w.cfg_b, &ev), M2MPSK_E_AGAIN);
  cr_assert_eq(m2mpsk_config_events_dropped(w.cfg_b), 0);
  cr_assert_eq(m2mpsk_event_get_type(NULL), M2MPSK_EVENT_NONE);
  cr_assert_eq(m2mpsk_event_reason(NULL), M2MPSK_REASON_NONE);
  cr_assert_eq(m2mpsk_event_time_ms(NULL), 0);
  cr_assert_null(m2mpsk_event_kpsa_id(NULL));
  cr_assert_null(m2mpsk_event_peer_id(NULL));
  cr_assert_null(m2mpsk_event_peer_tag(NULL));
  cr_assert_eq(m2mpsk_event_peer_id_is_credential(NULL), 0);
  cr_assert_str_eq(m2mpsk_event_detail(NULL), "");
  cr_assert_eq(m2mpsk_event_role(NULL), M2MPSK_ROLE_INITIATOR);
  cr_assert_eq(m2mpsk_event_transport(NULL), M2MPSK_TRANSPORT_TLS);
  m2mpsk_event_free(NULL);
  world_free(&w);
}

/* ---- many threads, one config ------------------------------------------- */

typedef struct worker {
  world *w;
  int id;
  int good, bad;
} worker;

static void *work(void *arg) {
  worker *k = arg;
  char tag[32];
  for (int i = 0; i < 60; i++) {
    snprintf(tag, sizeof(tag), "w%d-%d", k->id, i % 7);
    int wrong = i % 3 == 0;
    outcome o = attempt(k->w, wrong ? BAD : GOOD, tag, NOW0 + (uint64_t)i);
    if (o.b_state == M2MPSK_STATE_ESTABLISHED)
      k->good++;
    else
      k->bad++;
  }
  return NULL;
}

Test(limits, shared_counters_stay_exact_across_threads) {
  world w;
  world_init(&w);
  cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_b, 1000), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_max_handshakes(w.cfg_b, 64), M2MPSK_OK);
  pthread_t th[4];
  worker k[4];
  for (int i = 0; i < 4; i++) {
    k[i] = (worker){&w, i, 0, 0};
    cr_assert_eq(pthread_create(&th[i], NULL, work, &k[i]), 0);
  }
  int good = 0, bad = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    good += k[i].good;
    bad += k[i].bad;
  }
  cr_assert_eq(good, 4 * 40);
  cr_assert_eq(bad, 4 * 20);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  m2mpsk_event **evs = calloc(1000, sizeof(*evs));
  size_t n = take_events(w.cfg_b, evs, 1000);
  int est = 0, failed = 0, closed = 0, limited = 0;
  for (size_t i = 0; i < n; i++) {
    switch (m2mpsk_event_get_type(evs[i])) {
    case M2MPSK_EVENT_ESTABLISHED: est++; break;
    case M2MPSK_EVENT_FAILED: failed++; break;
    case M2MPSK_EVENT_CLOSED: closed++; break;
    case M2MPSK_EVENT_RATE_LIMITED: limited++; break;
    default: cr_assert_fail("unexpected event type");
    }
  }
  cr_assert_eq(est, good);
  cr_assert_eq(closed, good, "each freed while established");
  /* 80 wrong-key handshakes with one KpsaID against the default limit of
   * 20 in 10 s: at least 20 fail before the block (more if they were in
   * flight when it began); the rest are refused. */
  cr_assert_geq(failed, 20);
  cr_assert_geq(limited, 1);
  cr_assert_eq(failed + limited, bad);
  cr_assert_eq(m2mpsk_config_events_dropped(w.cfg_b), 0);
  free_events(evs, n);
  free(evs);
  world_free(&w);
}

/* A record revoked after the initiator fetched its key but before the
 * handshake completed: the association must not come up believing the
 * record is still good (its first operation fails with revoked). */
Test(limits, revocation_between_key_fetch_and_completion_is_seen) {
  for (int t = 0; t < 2; t++) {
    world w;
    world_init(&w);
    cr_assert_eq(m2mpsk_config_set_event_queue(w.cfg_a, 8), M2MPSK_OK);
    m2mpsk_assoc *a, *b;
    cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                  (m2mpsk_transport)t, w.cfg_a, w.ks_a, GOOD),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER,
                                  (m2mpsk_transport)t, w.cfg_b, w.ks_b, NULL),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(b, NOW0, UNIX0), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_start(a, NOW0, UNIX0), M2MPSK_OK);
    m2mt_transfer(a, b, NULL, NOW0); /* ClientHello */
    if (t == M2MPSK_TRANSPORT_DTLS &&
        strcmp(m2mpsk_backend_name(), "openssl") == 0) {
      m2mt_transfer(b, a, NULL, NOW0); /* HelloVerifyRequest */
      m2mt_transfer(a, b, NULL, NOW0); /* ClientHello with the cookie */
    }
    m2mt_transfer(b, a, NULL, NOW0); /* B's flight: A fetches its key */
    cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_HANDSHAKING);
    cr_assert_eq(m2mpsk_keystore_revoke(w.ks_a, GOOD), M2MPSK_OK);
    uint64_t now = NOW0;
    cr_assert_geq(m2mt_run_handshake(a, b, NULL, &now, 100), 0);
    size_t wr;
    cr_assert_eq(m2mpsk_assoc_write(a, (const uint8_t *)"x", 1, &wr),
                 M2MPSK_E_FAILED);
    cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(a), M2MPSK_REASON_REVOKED, "%s",
                 m2mpsk_assoc_failure_detail(a));
    /* It did come up (the key was fetched before the revocation), and its
     * first operation afterwards ended it. */
    m2mpsk_event *evs[8];
    size_t n = take_events(w.cfg_a, evs, 8);
    cr_assert_eq(n, 2);
    cr_assert_eq(m2mpsk_event_get_type(evs[0]), M2MPSK_EVENT_ESTABLISHED);
    cr_assert_eq(m2mpsk_event_get_type(evs[1]), M2MPSK_EVENT_REVOKED);
    free_events(evs, n);
    m2mpsk_assoc_free(a);
    m2mpsk_assoc_free(b);
    world_free(&w);
  }
}
