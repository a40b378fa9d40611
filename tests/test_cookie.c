/* The DTLS cookie exchange (m2mpsk_dtls_listen), RFC 6347 §4.2.1.
 *
 * The statelessness claim is checked three ways: no association and no
 * handshake in progress exist after a HelloVerifyRequest; the allocator
 * shows no block outliving a call (this executable interposes malloc, as
 * test_alloc does); and 10,000 calls for different peers do not grow the
 * resident set. With BoringSSL, which has no HelloVerifyRequest, the call
 * says M2MPSK_E_UNSUPPORTED and DTLS works as before. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "link.h"

#define NOW0 1000000u
#define TAG "192.0.2.7:5684"
#define OTHER_TAG "192.0.2.8:5684"

/* ---- counting (and failing) allocator ------------------------------------ */

#define ALLOC_HOOK_STORAGE static _Thread_local
#include "alloc_hook.h"

/* ---- helpers ---------------------------------------------------------------
 */

static int have_cookies(void) {
  return strcmp(m2mpsk_backend_name(), "openssl") == 0;
}

typedef struct world {
  m2mpsk_keystore *ks_a, *ks_b;
  m2mpsk_config *cfg_a, *cfg_b;
} world;

static void world_init(world *w) {
  memset(w, 0, sizeof(*w));
  cr_assert_eq(m2mpsk_keystore_new(&w->ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&w->ks_b, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(w->ks_a, M2MT_KPSA_ID, m2mt_key, 32,
                                   M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(w->ks_b, M2MT_KPSA_ID, m2mt_key, 32,
                                   M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&w->cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&w->cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(w->cfg_b, M2MT_IDB), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_event_queue(w->cfg_b, 64), M2MPSK_OK);
}

static void world_free(world *w) {
  m2mpsk_config_free(w->cfg_a);
  m2mpsk_config_free(w->cfg_b);
  m2mpsk_keystore_free(w->ks_a);
  m2mpsk_keystore_free(w->ks_b);
}

static m2mpsk_assoc *initiator(world *w) {
  m2mpsk_assoc *a;
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_DTLS, w->cfg_a, w->ks_a,
                                M2MT_KPSA_ID),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(a, NOW0, 0), M2MPSK_OK);
  return a;
}

static m2mpsk_assoc *responder(world *w, const char *tag) {
  m2mpsk_assoc *b;
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_DTLS, w->cfg_b, w->ks_b, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(b, tag), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(b, NOW0, 0), M2MPSK_OK);
  return b;
}

typedef struct dgram {
  uint8_t p[2048];
  size_t n;
} dgram;

static void drain_one(m2mpsk_assoc *x, dgram *d) {
  cr_assert_eq(m2mpsk_assoc_drain(x, d->p, sizeof(d->p), &d->n), M2MPSK_OK);
}

/* The handshake message type of a datagram's first record, or -1. */
static int hs_type(const dgram *d) {
  return d->n > 13 && d->p[0] == 22 ? d->p[13] : -1;
}

/* Where a ClientHello's cookie is (record 13 + handshake 12 + version 2 +
 * random 32, then session_id, then the cookie), and its length. */
static size_t cookie_at(const dgram *d, size_t *len) {
  size_t off = 13 + 12 + 2 + 32;
  cr_assert_lt(off, d->n);
  off += 1 + d->p[off];
  cr_assert_lt(off, d->n);
  *len = d->p[off];
  return off + 1;
}

static int do_listen(world *w, const char *tag, const dgram *in, dgram *out) {
  return m2mpsk_dtls_listen(w->cfg_b, tag, in->p, in->n, out->p, sizeof(out->p),
                            &out->n);
}

/* A's first ClientHello, B's HelloVerifyRequest, A's ClientHello with the
 * cookie for `tag`. */
static void exchange(world *w, m2mpsk_assoc *a, const char *tag, dgram *ch2,
                     dgram *ch1) {
  dgram first, hvr;
  if (ch1 == NULL)
    ch1 = &first;
  drain_one(a, ch1);
  cr_assert_eq(hs_type(ch1), 1);
  cr_assert_eq(do_listen(w, tag, ch1, &hvr), M2MPSK_LISTEN_REPLY);
  cr_assert_eq(hs_type(&hvr), 3, "a HelloVerifyRequest");
  cr_assert_leq(hvr.n, 64);
  cr_assert_eq(m2mpsk_assoc_feed(a, hvr.p, hvr.n, NOW0), M2MPSK_OK);
  drain_one(a, ch2);
  cr_assert_eq(hs_type(ch2), 1);
  size_t clen;
  (void)cookie_at(ch2, &clen);
  cr_assert_eq(clen, 16);
}

static size_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long size = 0, resident = 0;
  cr_assert_not_null(f);
  cr_assert_eq(fscanf(f, "%lu %lu", &size, &resident), 2);
  fclose(f);
  return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static size_t events_queued(m2mpsk_config *cfg) {
  size_t n = 0;
  m2mpsk_event *ev;
  while (m2mpsk_config_next_event(cfg, &ev) == M2MPSK_OK) {
    m2mpsk_event_free(ev);
    n++;
  }
  return n;
}

#define NEED_COOKIES()                                                         \
  do {                                                                         \
    if (!have_cookies())                                                       \
      cr_skip_test("the %s backend has no cookie exchange",                    \
                   m2mpsk_backend_name());                                     \
  } while (0)

/* ---- the exchange ----------------------------------------------------------
 */

Test(cookie, stateless_exchange_then_handshake_binds_identities) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch2;
  exchange(&w, a, TAG, &ch2, NULL);
  /* The HelloVerifyRequest left nothing behind. */
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  cr_assert_eq(events_queued(w.cfg_b), 0);

  dgram none;
  cr_assert_eq(do_listen(&w, TAG, &ch2, &none), M2MPSK_OK);
  cr_assert_eq(none.n, 0);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);

  /* The host now makes the association and feeds it the same datagram: it
   * verifies the cookie itself and answers with its ServerHello flight. */
  m2mpsk_assoc *b = responder(&w, TAG);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 1);
  cr_assert_eq(m2mpsk_assoc_feed(b, ch2.p, ch2.n, NOW0), M2MPSK_OK);
  dgram sh;
  drain_one(b, &sh);
  cr_assert_eq(hs_type(&sh), 2, "a ServerHello, not another HVR");
  cr_assert_eq(m2mpsk_assoc_feed(a, sh.p, sh.n, NOW0), M2MPSK_OK);

  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(a, b, NULL, &now, 200), 0);
  cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(a));
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(a), M2MT_IDB);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(b), M2MT_IDA);
  cr_assert_str_eq(m2mpsk_assoc_kpsa_id(b), M2MT_KPSA_ID);
  cr_assert_str_eq(m2mpsk_assoc_suite(b), "TLS_PSK_WITH_AES_128_CCM_8");
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  world_free(&w);
}

Test(cookie, responder_without_listen_sends_its_own_hello_verify_request) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  m2mpsk_assoc *b = responder(&w, TAG);
  dgram ch1, hvr;
  drain_one(a, &ch1);
  cr_assert_eq(m2mpsk_assoc_feed(b, ch1.p, ch1.n, NOW0), M2MPSK_OK);
  drain_one(b, &hvr);
  cr_assert_eq(hs_type(&hvr), 3);
  cr_assert_eq(m2mpsk_assoc_feed(a, hvr.p, hvr.n, NOW0), M2MPSK_OK);
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(a, b, NULL, &now, 200), 0);
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(b), M2MT_IDA);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  world_free(&w);
}

Test(cookie, cookie_for_one_peer_tag_is_refused_for_another) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch2, out;
  exchange(&w, a, TAG, &ch2, NULL);
  cr_assert_eq(do_listen(&w, OTHER_TAG, &ch2, &out), M2MPSK_LISTEN_REPLY);
  cr_assert_eq(hs_type(&out), 3);
  /* An association tagged with the other peer refuses it too. */
  m2mpsk_assoc *b = responder(&w, OTHER_TAG);
  cr_assert_eq(m2mpsk_assoc_feed(b, ch2.p, ch2.n, NOW0), M2MPSK_OK);
  drain_one(b, &out);
  cr_assert_eq(hs_type(&out), 3);
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_HANDSHAKING);
  m2mpsk_assoc_free(b);
  /* And another config (another secret) does not know it. */
  m2mpsk_config *other;
  cr_assert_eq(m2mpsk_config_new(&other), M2MPSK_OK);
  cr_assert_eq(m2mpsk_dtls_listen(other, TAG, ch2.p, ch2.n, out.p,
                                  sizeof(out.p), &out.n),
               M2MPSK_LISTEN_REPLY);
  m2mpsk_config_free(other);
  m2mpsk_assoc_free(a);
  world_free(&w);
}

Test(cookie, garbled_or_replayed_cookie_is_refused) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a1 = initiator(&w);
  m2mpsk_assoc *a2 = initiator(&w);
  dgram ch_a1, ch_a2, out;
  exchange(&w, a1, TAG, &ch_a1, NULL);
  exchange(&w, a2, TAG, &ch_a2, NULL);
  size_t len1, len2;
  size_t off1 = cookie_at(&ch_a1, &len1), off2 = cookie_at(&ch_a2, &len2);

  /* Each bit of the cookie matters. */
  for (size_t i = 0; i < len1; i++) {
    dgram g = ch_a1;
    g.p[off1 + i] ^= 0x01;
    cr_assert_eq(do_listen(&w, TAG, &g, &out), M2MPSK_LISTEN_REPLY, "byte %zu",
                 i);
  }
  /* A cookie replayed in another ClientHello from the same peer (another
   * random) is refused: it covers the ClientHello it was made for. */
  dgram replay = ch_a2;
  memcpy(replay.p + off2, ch_a1.p + off1, len1);
  cr_assert_eq(len1, len2);
  cr_assert_eq(do_listen(&w, TAG, &replay, &out), M2MPSK_LISTEN_REPLY);
  /* The genuine ones still pass. */
  cr_assert_eq(do_listen(&w, TAG, &ch_a1, &out), M2MPSK_OK);
  cr_assert_eq(do_listen(&w, TAG, &ch_a2, &out), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  m2mpsk_assoc_free(a1);
  m2mpsk_assoc_free(a2);
  world_free(&w);
}

/* The peer's garbage is M2MPSK_E_PROTOCOL, never M2MPSK_E_INVALID, which is
 * kept for the caller's own mistakes. */
Test(cookie, input_that_is_not_a_client_hello_is_a_protocol_error) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch1, hvr, out;
  drain_one(a, &ch1);
  cr_assert_eq(do_listen(&w, TAG, &ch1, &hvr), M2MPSK_LISTEN_REPLY);

  dgram junk = {.n = 100};
  memset(junk.p, 0x5a, junk.n);
  cr_assert_eq(do_listen(&w, TAG, &junk, &out), M2MPSK_E_PROTOCOL);
  cr_assert_eq(out.n, 0);
  /* A HelloVerifyRequest is a handshake record, but not a ClientHello. */
  cr_assert_eq(do_listen(&w, TAG, &hvr, &out), M2MPSK_E_PROTOCOL);
  /* A truncated ClientHello, a TLS (not DTLS) one, an epoch-1 record, a
   * ClientHello fragment that does not start at 0. */
  dgram cut = ch1;
  cut.n = 40;
  cr_assert_eq(do_listen(&w, TAG, &cut, &out), M2MPSK_E_PROTOCOL);
  dgram tls = ch1;
  tls.p[1] = 3;
  tls.p[2] = 3;
  cr_assert_eq(do_listen(&w, TAG, &tls, &out), M2MPSK_E_PROTOCOL);
  dgram epoch1 = ch1;
  epoch1.p[4] = 1;
  cr_assert_eq(do_listen(&w, TAG, &epoch1, &out), M2MPSK_E_PROTOCOL);
  dgram frag = ch1;
  frag.p[13 + 8] = 1; /* fragment_offset */
  cr_assert_eq(do_listen(&w, TAG, &frag, &out), M2MPSK_E_PROTOCOL);
  dgram tiny = {.p = {22}, .n = 1};
  cr_assert_eq(do_listen(&w, TAG, &tiny, &out), M2MPSK_E_PROTOCOL);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  m2mpsk_assoc_free(a);
  world_free(&w);
}

/* Each outcome has its own status, and none reuses one that means
 * something else elsewhere: "send this" is the positive
 * M2MPSK_LISTEN_REPLY, not M2MPSK_E_AGAIN ("nothing yet"); the peer's
 * garbage is M2MPSK_E_PROTOCOL, not M2MPSK_E_INVALID (the caller's
 * mistake); a zero-size buffer is M2MPSK_E_BUFFER. */
Test(cookie, each_outcome_has_its_own_status) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch1, hvr, ch2, out;
  drain_one(a, &ch1);
  int reply = do_listen(&w, TAG, &ch1, &hvr);
  cr_assert_eq(reply, M2MPSK_LISTEN_REPLY);
  cr_assert_gt(reply, 0);
  cr_assert_gt(hvr.n, 0);
  cr_assert_eq(m2mpsk_assoc_feed(a, hvr.p, hvr.n, NOW0), M2MPSK_OK);
  drain_one(a, &ch2);
  cr_assert_eq(do_listen(&w, TAG, &ch2, &out), M2MPSK_LISTEN_ACCEPT);
  cr_assert_eq(M2MPSK_LISTEN_ACCEPT, M2MPSK_OK);
  cr_assert_eq(out.n, 0);
  cr_assert_eq(do_listen(&w, TAG, &hvr, &out), M2MPSK_E_PROTOCOL);
  cr_assert_eq(out.n, 0);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, ch1.p, ch1.n, out.p, 0, &out.n),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, ch1.p, ch1.n, out.p, 8, &out.n),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, "", ch1.p, ch1.n, out.p,
                                  sizeof(out.p), &out.n),
               M2MPSK_E_INVALID);
  cr_assert_str_eq(m2mpsk_strerror(M2MPSK_E_PROTOCOL),
                   "malformed or unexpected bytes from the peer");
  m2mpsk_assoc_free(a);
  world_free(&w);
}

/* ---- arguments and errors --------------------------------------------------
 */

Test(cookie, arguments_are_checked_before_anything_else) {
  world w;
  world_init(&w);
  uint8_t d[64] = {22, 0xfe, 0xfd}, out[64];
  size_t n = 99;
  char long_tag[M2MPSK_PEER_TAG_MAX + 2];
  memset(long_tag, 'a', sizeof(long_tag) - 1);
  long_tag[sizeof(long_tag) - 1] = '\0';
  cr_assert_eq(m2mpsk_dtls_listen(NULL, TAG, d, 64, out, 64, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, NULL, d, 64, out, 64, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, NULL, 64, out, 64, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, d, 64, NULL, 64, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, d, 64, out, 64, NULL),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, d, 0, out, 64, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, d, 65536, out, 64, &n),
               M2MPSK_E_INVALID);
  /* A zero-size output buffer is M2MPSK_E_BUFFER, as everywhere. */
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, d, 64, out, 0, &n),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, "", d, 64, out, 64, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, long_tag, d, 64, out, 64, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, "a\tb", d, 64, out, 64, &n),
               M2MPSK_E_INVALID);
  /* The longest tag the association takes is taken here too. */
  long_tag[M2MPSK_PEER_TAG_MAX] = '\0';
  int rc = m2mpsk_dtls_listen(w.cfg_b, long_tag, d, 64, out, 64, &n);
  cr_assert(rc == M2MPSK_E_PROTOCOL /* not a ClientHello */ ||
            rc == M2MPSK_E_UNSUPPORTED);
  cr_assert_eq(n, 0);
  cr_assert_str_eq(m2mpsk_strerror(M2MPSK_E_UNSUPPORTED),
                   "not supported by this build's TLS backend");
  world_free(&w);
}

Test(cookie, hello_verify_request_larger_than_cap_is_a_buffer_error) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch1, hvr;
  drain_one(a, &ch1);
  uint8_t small[16];
  size_t n = 99;
  cr_assert_eq(
      m2mpsk_dtls_listen(w.cfg_b, TAG, ch1.p, ch1.n, small, sizeof(small), &n),
      M2MPSK_E_BUFFER);
  cr_assert_eq(n, 0);
  cr_assert_eq(do_listen(&w, TAG, &ch1, &hvr), M2MPSK_LISTEN_REPLY);
  uint8_t exact[64];
  cr_assert_eq(m2mpsk_dtls_listen(w.cfg_b, TAG, ch1.p, ch1.n, exact, hvr.n, &n),
               M2MPSK_LISTEN_REPLY);
  cr_assert_eq(n, hvr.n);
  m2mpsk_assoc_free(a);
  world_free(&w);
}

/* ---- keeping nothing -------------------------------------------------------
 */

Test(cookie, ten_thousand_peers_leave_nothing_behind) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch1, hvr;
  drain_one(a, &ch1);
  char tag[64];
  /* Warm up: OpenSSL caches its algorithm fetches and per-thread error
   * state on first use. */
  for (int i = 0; i < 1000; i++) {
    snprintf(tag, sizeof(tag), "198.51.100.%d:%d", i % 256, 1024 + i);
    cr_assert_eq(do_listen(&w, tag, &ch1, &hvr), M2MPSK_LISTEN_REPLY);
  }
  size_t rss0 = rss_bytes();
#ifdef ALLOC_HOOK
  long live0 = alloc_live;
#endif
  for (int i = 0; i < 10000; i++) {
    snprintf(tag, sizeof(tag), "203.0.113.%d:%d", i % 256, 1024 + i);
    cr_assert_eq(do_listen(&w, tag, &ch1, &hvr), M2MPSK_LISTEN_REPLY);
#ifdef ALLOC_HOOK
    cr_assert_eq(alloc_live, live0, "call %d left %ld blocks allocated", i,
                 alloc_live - live0);
#endif
  }
  size_t rss1 = rss_bytes();
  cr_assert_lt(rss1, rss0 + 256 * 1024, "RSS grew from %zu to %zu", rss0, rss1);
  cr_assert_eq(m2mpsk_config_handshakes_in_progress(w.cfg_b), 0);
  cr_assert_eq(events_queued(w.cfg_b), 0);
  m2mpsk_assoc_free(a);
  world_free(&w);
}

#ifdef ALLOC_HOOK
/* Every allocation a call makes fails in turn: each failure is reported as
 * a documented status, and nothing is left allocated. */
Test(cookie, every_allocation_failure_is_reported) {
  NEED_COOKIES();
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch1, hvr, ch2, out;
  exchange(&w, a, TAG, &ch2, &ch1);
  const dgram *inputs[2] = {&ch1, &ch2};
  for (int k = 0; k < 2; k++) {
    int nomem = 0, ok = 0;
    for (long n = 0; n < 10000 && !ok; n++) {
      /* The same failure three times: OpenSSL keeps some per-thread state
       * (its error queue's buffers) after the first, never more. */
      long live1 = 0;
      for (int rep = 0; rep < 3; rep++) {
        (void)do_listen(&w, TAG, inputs[k], &hvr); /* warm */
        alloc_count = 0;
        alloc_fail_at = n;
        alloc_armed = 1;
        int rc = do_listen(&w, TAG, inputs[k], &out);
        int failed = alloc_count > n;
        alloc_armed = 0;
        if (!failed) {
          cr_assert_eq(rc, k == 0 ? M2MPSK_LISTEN_REPLY : M2MPSK_OK);
          ok = 1;
          break;
        }
        /* A cookie that cannot be checked for want of memory is answered
         * like a wrong one, with a HelloVerifyRequest. */
        cr_assert(rc == M2MPSK_E_NOMEM || rc == M2MPSK_E_INTERNAL ||
                      rc == M2MPSK_LISTEN_REPLY || (k == 1 && rc == M2MPSK_OK),
                  "allocation %ld: %s", n, m2mpsk_strerror(rc));
        nomem += rc == M2MPSK_E_NOMEM;
        /* What a forged address can make us do, answer with a
         * HelloVerifyRequest, leaks nothing even when it fails. (OpenSSL
         * 3.0 itself loses a few blocks when buffering an accepted
         * ClientHello runs out of memory, in DTLSv1_listen().) */
        if (rep == 0)
          live1 = alloc_live;
        else if (k == 0)
          cr_assert_eq(alloc_live, live1, "allocation %ld leaked %ld blocks", n,
                       alloc_live - live1);
      }
    }
    cr_assert(ok);
    cr_assert_gt(nomem, 0);
  }
  m2mpsk_assoc_free(a);
  world_free(&w);
}
#endif

/* ---- BoringSSL
 * --------------------------------------------------------------- */

Test(cookie, backend_without_cookies_says_so_and_dtls_is_unchanged) {
  if (have_cookies())
    cr_skip_test("this backend has the cookie exchange");
  world w;
  world_init(&w);
  m2mpsk_assoc *a = initiator(&w);
  dgram ch1, out;
  drain_one(a, &ch1);
  cr_assert_eq(do_listen(&w, TAG, &ch1, &out), M2MPSK_E_UNSUPPORTED);
  cr_assert_eq(out.n, 0);
  /* Nothing was built: the config is not even frozen. */
  cr_assert_eq(m2mpsk_config_set_handshake_timeout(w.cfg_b, 30000), M2MPSK_OK);
  m2mpsk_assoc *b = responder(&w, TAG);
  cr_assert_eq(m2mpsk_assoc_feed(b, ch1.p, ch1.n, NOW0), M2MPSK_OK);
  drain_one(b, &out);
  cr_assert_eq(hs_type(&out), 2, "a ServerHello at once");
  cr_assert_eq(m2mpsk_assoc_feed(a, out.p, out.n, NOW0), M2MPSK_OK);
  uint64_t now = NOW0;
  cr_assert_geq(m2mt_run_handshake(a, b, NULL, &now, 200), 0);
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(b), M2MT_IDA);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  world_free(&w);
}
