/* A failing-allocator suite, after nghttp2's: the whole life of a pair of
 * associations is run again and again, the Nth allocation failing in run N,
 * until a run sees no failure. Every call must then report a documented
 * status (M2MPSK_E_NOMEM, or a failed association with a reason), leave the
 * handles usable for free, and never crash.
 *
 * The executable interposes malloc, calloc and realloc, so allocations made
 * by libsodium and BoringSSL on our behalf fail too. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc_hook.h"
#include "link.h"

/* Returns 1 when the status is what an allocation failure may produce. */
static int allowed(int rc) {
  return rc == M2MPSK_OK || rc == M2MPSK_E_NOMEM || rc == M2MPSK_E_FAILED ||
         rc == M2MPSK_E_INTERNAL;
}

#define CHECK(call)                                                            \
  do {                                                                         \
    int rc_ = (call);                                                          \
    cr_assert(allowed(rc_), "%s -> %d (%s) at allocation %ld", #call, rc_,     \
              m2mpsk_strerror(rc_), alloc_fail_at);                            \
    if (rc_ != M2MPSK_OK)                                                      \
      goto out;                                                                \
  } while (0)

/* One full life: keystore, config, handshake, data, close, free. Returns 1
 * when every step succeeded. */
static int one_life(m2mpsk_transport t) {
  m2mpsk_keystore *ks = NULL;
  m2mpsk_config *cfg_a = NULL, *cfg_b = NULL;
  m2mpsk_assoc *a = NULL, *b = NULL;
  int ok = 0;
  alloc_armed = 1;
  CHECK(m2mpsk_keystore_new(&ks, 0));
  int rc = m2mpsk_keystore_add(ks, M2MT_KPSA_ID, m2mt_key, 32, M2MT_IDA,
                               M2MT_IDB, 0, 0);
  cr_assert(allowed(rc));
  if (rc != M2MPSK_OK) {
    cr_assert_eq(m2mpsk_keystore_count(ks), 0, "a failed add changes nothing");
    goto out;
  }
  CHECK(m2mpsk_config_new(&cfg_a));
  CHECK(m2mpsk_config_new(&cfg_b));
  CHECK(m2mpsk_config_set_suites(cfg_a, "TLS_PSK_WITH_AES_128_CBC_SHA:"
                                        "TLS_PSK_WITH_AES_256_CBC_SHA"));
  CHECK(m2mpsk_config_add_local_id(cfg_b, M2MT_IDB));
  CHECK(m2mpsk_config_set_event_queue(cfg_b, 16));
  CHECK(
      m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, cfg_a, ks, M2MT_KPSA_ID));
  CHECK(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, cfg_b, ks, NULL));
  CHECK(m2mpsk_assoc_set_peer_tag(b, "192.0.2.1"));
  CHECK(m2mpsk_assoc_start(b, 1000, 1800000000));
  CHECK(m2mpsk_assoc_start(a, 1000, 1800000000));
  uint64_t now = 1000;
  m2mt_run_handshake(a, b, NULL, &now, 200);
  for (int i = 0; i < 2; i++) {
    m2mpsk_assoc *x = i ? b : a;
    if (m2mpsk_assoc_state(x) == M2MPSK_STATE_FAILED) {
      cr_assert_neq(m2mpsk_assoc_failure(x), M2MPSK_REASON_NONE);
      cr_assert_not_null(m2mpsk_assoc_failure_detail(x));
      goto out;
    }
  }
  if (m2mpsk_assoc_state(a) != M2MPSK_STATE_ESTABLISHED ||
      m2mpsk_assoc_state(b) != M2MPSK_STATE_ESTABLISHED)
    goto out; /* a lost flight, e.g. a failed buffer: timed out */
  size_t w, n;
  uint8_t buf[64];
  rc = m2mpsk_assoc_write(a, (const uint8_t *)"ping", 4, &w);
  cr_assert(allowed(rc));
  if (rc == M2MPSK_E_NOMEM)
    cr_assert_eq(m2mpsk_assoc_failure(a), M2MPSK_REASON_INTERNAL);
  if (rc != M2MPSK_OK)
    goto out;
  uint8_t rec[256];
  size_t rec_len;
  CHECK(m2mpsk_assoc_drain(a, rec, sizeof(rec), &rec_len));
  rc = m2mpsk_assoc_feed(b, rec, rec_len, now);
  cr_assert(allowed(rc));
  if (rc == M2MPSK_E_NOMEM && t == M2MPSK_TRANSPORT_TLS)
    cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_FAILED);
  if (rc != M2MPSK_OK)
    goto out;
  CHECK(m2mpsk_assoc_read(b, buf, sizeof(buf), &n));
  uint8_t secret[32];
  CHECK(
      m2mpsk_assoc_export(a, secret, sizeof(secret), "EXPORTER-test", NULL, 0));
  CHECK(m2mpsk_assoc_close(a));
  ok = 1;
out:
  alloc_armed = 0;
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(cfg_a);
  m2mpsk_config_free(cfg_b);
  m2mpsk_keystore_free(ks);
  return ok;
}

/* One life of a sweep, run with the allocator armed: 1 when every step
 * succeeded. `tally` counts what the life wants counted. */
typedef int (*life_fn)(m2mpsk_transport t, int *tally);

/* Runs `life` again and again, the Nth allocation failing in run N, until
 * a run sees no failure; no run may leak. Returns the number of failure
 * points. */
static long sweep_lives(life_fn life, m2mpsk_transport t, int *tally) {
  long points = 0;
  int openssl = strcmp(m2mpsk_backend_name(), "openssl") == 0;
  /* A first clean life sets up the libraries' lazy global state. */
  alloc_fail_at = -1;
  cr_assert(life(t, tally));
  long live = alloc_live;
  for (alloc_fail_at = 0; alloc_fail_at < 100000; alloc_fail_at++) {
    alloc_count = 0;
    alloc_failed = 0;
    int ok = life(t, tally);
    long failed = alloc_failed;
    if (alloc_live != live && openssl) {
      /* OpenSSL 3 keeps process-wide caches (algorithms fetched from its
       * providers) that a failed allocation can leave fuller or emptier
       * than a clean run does. The same failure twice more settles them:
       * a leak is what still grows. */
      alloc_count = 0;
      (void)life(t, tally);
      long settled = alloc_live;
      alloc_count = 0;
      (void)life(t, tally);
      cr_assert_eq(alloc_live, settled, "leak after failing allocation %ld",
                   alloc_fail_at);
      live = alloc_live;
      alloc_failed = failed;
    }
    cr_assert_eq(alloc_live, live, "leak after failing allocation %ld",
                 alloc_fail_at);
    if (alloc_failed == 0) {
      cr_assert(ok, "the run without a failed allocation must succeed");
      break;
    }
    points++;
  }
  return points;
}

static int whole_life(m2mpsk_transport t, int *tally) {
  (void)tally;
  return one_life(t);
}

static void sweep(m2mpsk_transport t) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  long points = sweep_lives(whole_life, t, NULL);
  cr_log_info("%s: %ld allocation failure points survived",
              t == M2MPSK_TRANSPORT_TLS ? "TLS" : "DTLS", points);
  cr_assert_gt(points, 50, "the sweep reached into the TLS library");
}

Test(alloc, every_allocation_failure_in_a_tls_life_is_reported,
     .timeout = 300) {
  sweep(M2MPSK_TRANSPORT_TLS);
}

Test(alloc, every_allocation_failure_in_a_dtls_life_is_reported,
     .timeout = 300) {
  sweep(M2MPSK_TRANSPORT_DTLS);
}

/* The two calls that allocate for an existing association: each refuses
 * with M2MPSK_E_NOMEM and changes nothing, then works once memory is
 * back. */
Test(alloc, peer_tag_and_ae_id_binding_refuse_cleanly_without_memory) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, NULL, NULL);
  alloc_count = 0;
  alloc_fail_at = 0;
  alloc_armed = 1;
  int rc = m2mpsk_assoc_set_peer_tag(p.b, "192.0.2.1");
  alloc_armed = 0;
  cr_assert_eq(rc, M2MPSK_E_NOMEM);
  cr_assert_null(m2mpsk_assoc_peer_tag(p.b));
  cr_assert_eq(m2mpsk_assoc_set_peer_tag(p.b, "192.0.2.1"), M2MPSK_OK);

  m2mt_pair_start(&p, 0, 0);
  uint64_t now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), "12-" M2MT_KPSA_ID);
  alloc_count = 0;
  alloc_armed = 1;
  rc = m2mpsk_assoc_bind_ae_id(p.b, "/cse-in/Cae1");
  alloc_armed = 0;
  cr_assert_eq(rc, M2MPSK_E_NOMEM);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), "12-" M2MT_KPSA_ID);
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.b), 1);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, "/cse-in/Cae1"), M2MPSK_OK);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), "/cse-in/Cae1");
  m2mt_pair_free(&p);
}

/* The failure detail is made when the first failure is written (since 0.5:
 * an association that never fails carries none). Without memory for it the
 * failure is still reported, with its reason, its event and a detail that
 * says what was lost; with memory, the detail is the failure's own. */
Test(alloc, a_failure_without_memory_for_its_detail_still_reports) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  for (int starve = 1; starve >= 0; starve--) {
    m2mt_pair p;
    m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, NULL, NULL);
    m2mt_pair_start(&p, 1000, 0);
    cr_assert_str_eq(m2mpsk_assoc_failure_detail(p.a), "");
    alloc_count = 0;
    alloc_failed = 0;
    alloc_fail_at = starve ? 0 : -1;
    alloc_armed = 1;
    int rc = m2mpsk_assoc_handle_timeout(p.a, 1000 + 3600 * 1000);
    alloc_armed = 0;
    cr_assert_eq(rc, M2MPSK_E_FAILED);
    cr_assert_eq(alloc_failed, starve, "the detail's buffer was the one asked");
    cr_assert_eq(m2mpsk_assoc_state(p.a), M2MPSK_STATE_FAILED);
    cr_assert_eq(m2mpsk_assoc_failure(p.a), M2MPSK_REASON_TIMEOUT);
    const char *d = m2mpsk_assoc_failure_detail(p.a);
    if (starve)
      cr_assert_str_eq(d, "(no detail: out of memory when it was written)");
    else
      cr_assert(strstr(d, "handshake not complete after") == d, "%s", d);
    m2mt_pair_free(&p);
  }
}

/* Key sources and put (0.4): each allocation they make fails in turn; the
 * call reports M2MPSK_E_NOMEM and leaves everything as it was. */
Test(alloc, put_set_source_and_supply_refuse_cleanly_without_memory) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_add(ks, M2MT_KPSA_ID, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  /* put: a replacement needs its record; nothing changes without it. */
  int rc = M2MPSK_E_NOMEM;
  long nomem = 0;
  for (long at = 0; rc == M2MPSK_E_NOMEM && at < 100; at++) {
    alloc_count = 0;
    alloc_fail_at = at;
    alloc_armed = 1;
    rc = m2mpsk_keystore_put(ks, M2MT_KPSA_ID, m2mt_other_key, 32, NULL,
                             M2MT_IDB, 0, 0);
    alloc_armed = 0;
    if (rc == M2MPSK_E_NOMEM) {
      nomem++;
      cr_assert_eq(m2mpsk_keystore_count(ks), 1);
      cr_assert_eq(m2mpsk_keystore_lookup(ks, M2MT_KPSA_ID, NULL, 0, NULL, 0,
                                          NULL, NULL, NULL),
                   M2MPSK_OK);
    }
  }
  cr_assert_eq(rc, M2MPSK_OK);
  cr_assert_geq(nomem, 1);

  /* set_source: its state and table. */
  rc = M2MPSK_E_NOMEM;
  nomem = 0;
  for (long at = 0; rc == M2MPSK_E_NOMEM && at < 100; at++) {
    alloc_count = 0;
    alloc_fail_at = at;
    alloc_armed = 1;
    rc = m2mpsk_keystore_set_source(ks, NULL, NULL, 4);
    alloc_armed = 0;
    nomem += rc == M2MPSK_E_NOMEM;
  }
  cr_assert_eq(rc, M2MPSK_OK);
  cr_assert_geq(nomem, 1);

  /* supply: the record cannot be added; the request stays open. */
  m2mpsk_assoc *a = NULL;
  m2mpsk_config *cfg = NULL;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                                cfg, ks, "new@b.c"),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(a, 0, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_WAITING_KEY);
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(ks, &req), M2MPSK_OK);
  rc = M2MPSK_E_NOMEM;
  nomem = 0;
  for (long at = 0; rc == M2MPSK_E_NOMEM && at < 100; at++) {
    alloc_count = 0;
    alloc_fail_at = at;
    alloc_armed = 1;
    rc = m2mpsk_key_request_supply(req, m2mt_key, 32, NULL, M2MT_IDB, 0, 0);
    alloc_armed = 0;
    if (rc == M2MPSK_E_NOMEM) {
      nomem++;
      cr_assert_eq(m2mpsk_key_request_answered(req), 0);
    }
  }
  cr_assert_eq(rc, M2MPSK_OK);
  cr_assert_geq(nomem, 1);
  cr_assert_eq(m2mpsk_key_request_answered(req), 1);
  cr_assert_eq(m2mpsk_assoc_resume(a, 1), M2MPSK_OK);
  cr_assert_gt(m2mpsk_assoc_pending(a), 0);
  m2mpsk_key_request_free(req);
  m2mpsk_assoc_free(a);
  m2mpsk_config_free(cfg);
  m2mpsk_keystore_free(ks);
}

/* Batches (0.4): each allocation of batch_new, batch_add and commit fails
 * in turn; the call reports M2MPSK_E_NOMEM, the keystore is unchanged and
 * the batch stays usable. */
Test(alloc, batch_calls_refuse_cleanly_without_memory) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_add(ks, M2MT_KPSA_ID, m2mt_key, 32, NULL, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  m2mpsk_keystore_batch *b = NULL;
  int rc = M2MPSK_E_NOMEM;
  long nomem = 0;
  for (long at = 0; rc == M2MPSK_E_NOMEM && at < 100; at++) {
    alloc_count = 0;
    alloc_fail_at = at;
    alloc_armed = 1;
    rc = m2mpsk_keystore_batch_new(ks, &b);
    alloc_armed = 0;
    if (rc == M2MPSK_E_NOMEM) {
      nomem++;
      cr_assert_null(b);
    }
  }
  cr_assert_eq(rc, M2MPSK_OK);
  cr_assert_geq(nomem, 1);

  /* Enough records that the staging table grows and a second arena is
   * taken, so the loop meets those allocations too. */
  char id[32];
  long add_nomem = 0;
  for (unsigned i = 0; i < 300; i++) {
    snprintf(id, sizeof(id), "k%u@b.c", i);
    rc = M2MPSK_E_NOMEM;
    for (long at = 0; rc == M2MPSK_E_NOMEM && at < 100; at++) {
      alloc_count = 0;
      alloc_fail_at = at;
      alloc_armed = 1;
      rc = m2mpsk_keystore_batch_add(b, id, m2mt_key, 32, NULL, M2MT_IDB, 0, 0);
      alloc_armed = 0;
      add_nomem += rc == M2MPSK_E_NOMEM;
    }
    cr_assert_eq(rc, M2MPSK_OK, "%s", id);
  }
  cr_assert_geq(add_nomem, 300);
  cr_assert_eq(m2mpsk_keystore_count(ks), 1);

  rc = M2MPSK_E_NOMEM;
  nomem = 0;
  for (long at = 0; rc == M2MPSK_E_NOMEM && at < 100; at++) {
    alloc_count = 0;
    alloc_fail_at = at;
    alloc_armed = 1;
    rc = m2mpsk_keystore_batch_commit(b, NULL);
    alloc_armed = 0;
    if (rc == M2MPSK_E_NOMEM) {
      nomem++;
      cr_assert_eq(m2mpsk_keystore_count(ks), 1);
    }
  }
  cr_assert_eq(rc, M2MPSK_OK);
  cr_assert_geq(nomem, 1);
  cr_assert_eq(m2mpsk_keystore_count(ks), 301);
  m2mpsk_keystore_batch_free(b);
  m2mpsk_keystore_free(ks);
}

/* A pair whose responder waits for its key source (the allocator not
 * armed): the responder's record goes, a source without a callback is
 * asked instead. Returns the source's request (the caller's reference). */
static m2mpsk_key_request *waiting_pair(m2mt_pair *p, m2mpsk_transport t) {
  m2mt_pair_init(p, t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  cr_assert_eq(m2mpsk_keystore_remove(p->ks_b, M2MT_KPSA_ID), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_set_source(p->ks_b, NULL, NULL, 4), M2MPSK_OK);
  m2mt_pair_start(p, 1000, 1800000000);
  for (int i = 0; i < 8 && m2mpsk_assoc_state(p->b) != M2MPSK_STATE_WAITING_KEY;
       i++) {
    (void)m2mt_transfer(p->a, p->b, NULL, 1000);
    (void)m2mt_transfer(p->b, p->a, NULL, 1000);
  }
  cr_assert_eq(m2mpsk_assoc_state(p->b), M2MPSK_STATE_WAITING_KEY);
  m2mpsk_key_request *req = NULL;
  cr_assert_eq(m2mpsk_keystore_next_request(p->ks_b, &req), M2MPSK_OK);
  return req;
}

/* An answer given once (0.6) keeps its record in the request when its
 * identities fit, in an allocation of its own otherwise (an IdA of 150
 * bytes here): without memory for that it is refused with M2MPSK_E_NOMEM
 * and the request stays open; once memory is back the waiting responder
 * completes. */
#define LONG_IDA                                                               \
  "//m2m.example.com/cse-in/C"                                                 \
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"   \
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
Test(alloc, supply_once_refuses_cleanly_without_memory) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  m2mt_pair p;
  m2mpsk_key_request *req = waiting_pair(&p, M2MPSK_TRANSPORT_TLS);
  m2mpsk_assoc *a = p.a, *b = p.b;
  m2mpsk_keystore *ks_b = p.ks_b;
  int rc = M2MPSK_E_NOMEM;
  long nomem = 0;
  for (long at = 0; rc == M2MPSK_E_NOMEM && at < 100; at++) {
    alloc_count = 0;
    alloc_fail_at = at;
    alloc_armed = 1;
    rc = m2mpsk_key_request_supply_once(req, m2mt_key, 32, LONG_IDA, M2MT_IDB,
                                        0, 0);
    alloc_armed = 0;
    if (rc == M2MPSK_E_NOMEM) {
      nomem++;
      cr_assert_eq(m2mpsk_key_request_answered(req), 0);
    }
  }
  cr_assert_eq(rc, M2MPSK_OK);
  cr_assert_geq(nomem, 1);
  cr_assert_eq(m2mpsk_assoc_resume(b, 1001), M2MPSK_OK);
  uint64_t now = 1001;
  cr_assert_geq(m2mt_run_handshake(a, b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(b), LONG_IDA);
  cr_assert_eq(m2mpsk_keystore_count(ks_b), 0);
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
}

/* Identities that fit in the request need no allocation: the answer is
 * given with every allocation failing, and the handshake completes. */
Test(alloc, supply_once_with_short_identities_allocates_nothing) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  m2mt_pair p;
  m2mpsk_key_request *req = waiting_pair(&p, M2MPSK_TRANSPORT_TLS);
  alloc_count = 0;
  alloc_fail_at = 0;
  alloc_armed = 1;
  int rc = m2mpsk_key_request_supply_once(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB,
                                          0, 0);
  alloc_armed = 0;
  cr_assert_eq(rc, M2MPSK_OK, "%s", m2mpsk_strerror(rc));
  cr_assert_eq(alloc_count, 0);
  cr_assert_eq(m2mpsk_assoc_resume(p.b, 1001), M2MPSK_OK);
  uint64_t now = 1001;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(p.b));
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), M2MT_IDA);
  m2mpsk_key_request_free(req);
  m2mt_pair_free(&p);
}

/* A responder resumed after its key source answered, the Nth allocation
 * failing in run N: every run ends established, or failed with a reason
 * and a detail, and leaks nothing. On OpenSSL over DTLS the responder
 * gave its record buffers back for the wait (engine op `rest`); one of
 * the failures is getting them back, and it says so. */
static int resume_life(m2mpsk_transport t, int *restore_failed) {
  m2mt_pair p;
  m2mpsk_key_request *req = waiting_pair(&p, t);
  cr_assert_eq(
      m2mpsk_key_request_supply(req, m2mt_key, 32, M2MT_IDA, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  m2mpsk_key_request_free(req);
  alloc_armed = 1;
  int rc = m2mpsk_assoc_resume(p.b, 1001);
  cr_assert(allowed(rc), "resume -> %d at allocation %ld", rc, alloc_fail_at);
  uint64_t now = 1001;
  if (rc == M2MPSK_OK)
    (void)m2mt_run_handshake(p.a, p.b, NULL, &now, 100);
  alloc_armed = 0;
  int ok = m2mpsk_assoc_state(p.b) == M2MPSK_STATE_ESTABLISHED;
  if (m2mpsk_assoc_state(p.b) == M2MPSK_STATE_FAILED) {
    cr_assert_neq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_NONE);
    const char *d = m2mpsk_assoc_failure_detail(p.b);
    cr_assert_not_null(d);
    if (strstr(d, "restoring the record buffers") != NULL) {
      cr_assert_eq(m2mpsk_assoc_failure(p.b), M2MPSK_REASON_INTERNAL);
      (*restore_failed)++;
    }
  }
  m2mt_pair_free(&p);
  return ok;
}

static void resume_sweep(m2mpsk_transport t) {
#ifndef ALLOC_HOOK
  cr_skip_test("the allocator cannot be interposed under AddressSanitizer");
#endif
  int restore_failed = 0;
  long points = sweep_lives(resume_life, t, &restore_failed);
  cr_log_info("%s resume: %ld allocation failure points, %d restoring the "
              "record buffers",
              t == M2MPSK_TRANSPORT_TLS ? "TLS" : "DTLS", points,
              restore_failed);
  cr_assert_gt(points, 5, "the sweep reached into the TLS library");
  if (strcmp(m2mpsk_backend_name(), "openssl") == 0 &&
      t == M2MPSK_TRANSPORT_DTLS)
    cr_assert_gt(restore_failed, 0, "no run failed restoring the buffers");
  else
    cr_assert_eq(restore_failed, 0, "only OpenSSL's DTLS engine rests");
}

Test(alloc, every_allocation_failure_while_resuming_is_reported,
     .timeout = 120) {
  resume_sweep(M2MPSK_TRANSPORT_TLS);
  resume_sweep(M2MPSK_TRANSPORT_DTLS);
}
