/* The library reads no clock of its own: DTLS retransmissions happen at the
 * deadlines the caller's clock reaches, whatever the system's clock does.
 *
 * OpenSSL 3.0 reads its DTLS timer with gettimeofday(); the OpenSSL engine
 * steers that timer onto the caller's clock through a field only OpenSSL
 * 3.0.x passes it (src/tls/openssl.c). This file defines gettimeofday()
 * itself, so that the TLS library linked into it sees a system clock that
 * stands still or jumps, while the caller's clock follows the schedule. If
 * the engine fell back to the library's own timer (another OpenSSL, a
 * changed field), the retransmissions would not follow the injected
 * deadlines and these tests fail. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>

#include "link.h"

/* Far from any real monotonic reading, so that a mix-up shows. */
#define NOW0 7000000000000u
#define UNIX0 1800000000 /* 2027-01-15 */

/* The system clock as the TLS library sees it: frozen at a fixed second,
 * plus a jump the test sets. */
static volatile long long g_wall_jump_s;
static volatile unsigned long g_wall_reads;

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
  (void)tz;
  g_wall_reads++;
  tv->tv_sec = (time_t)(1700000000LL + g_wall_jump_s);
  tv->tv_usec = 0;
  return 0;
}

/* Drops the initiator's ClientHello flights and checks that each
 * retransmission comes exactly at the deadline next_timeout reported, on
 * the injected clock: 1 s, then doubling, until the 60 s handshake timeout.
 * `jump_s` moves the system clock before every step. */
static void check_schedule(long long jump_s) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  uint8_t buf[2048];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  static const uint8_t stray[14] = {22, 0xfe, 0xfd, 0, 5, 0, 0,
                                    0,  0,    1,    0, 0, 1, 0};
  uint64_t gap = 1000, at = NOW0, d;
  int sent = 0;
  for (;;) {
    g_wall_jump_s += jump_s;
    cr_assert_eq(m2mpsk_assoc_next_timeout(p.a, &d), M2MPSK_OK);
    if (at + gap >= NOW0 + 60000) {
      cr_assert_eq(d, NOW0 + 60000, "handshake deadline, got +%llu ms",
                   (unsigned long long)(d - NOW0));
      break;
    }
    cr_assert_eq(d, at + gap,
                 "retransmission %d due at +%llu ms, reported at +%llu ms "
                 "(the TLS library's own clock?)",
                 sent + 1, (unsigned long long)(at + gap - NOW0),
                 (unsigned long long)(d - NOW0));
    /* 50 ms early: BoringSSL counts the last 15 ms as due. A stray
     * datagram (a record of an epoch not in use, which DTLS drops) makes
     * the TLS library read, where OpenSSL consults its own timer. */
    cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d - 50), M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_feed(p.a, stray, sizeof(stray), d - 50),
                 M2MPSK_OK);
    cr_assert_eq(m2mpsk_assoc_pending(p.a), 0, "retransmitted early");
    g_wall_jump_s += jump_s;
    cr_assert_eq(m2mpsk_assoc_handle_timeout(p.a, d), M2MPSK_OK);
    cr_assert_gt(m2mpsk_assoc_pending(p.a), 0,
                 "retransmission %d not made at its deadline", sent + 1);
    while (m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n) == M2MPSK_OK)
      ;
    sent++;
    at = d;
    gap *= 2;
  }
  cr_assert_eq(sent, 5, "1 + 2 + 4 + 8 + 16 s fit in 60 s, made %d", sent);
  m2mt_pair_free(&p);
}

Test(clock,
     retransmissions_follow_the_injected_clock_while_the_system_clock_stands) {
  check_schedule(0);
}

/* A system clock that jumps over an hour at every step (OpenSSL starts its
 * own timer for an hour) must not make OpenSSL retransmit by itself, even
 * when a stray datagram makes it read. */
Test(clock,
     retransmissions_follow_the_injected_clock_while_the_system_clock_jumps) {
  check_schedule(4000);
}

/* The system clock stepping back must not delay a retransmission either. */
Test(
    clock,
    retransmissions_follow_the_injected_clock_while_the_system_clock_steps_back) {
  check_schedule(-4000);
}

/* Proves the stand-in above is the clock the OpenSSL engine would read
 * (else the tests above prove nothing for it). */
Test(clock, the_stand_in_system_clock_is_what_openssl_reads) {
  if (strcmp(m2mpsk_backend_name(), "openssl") != 0)
    cr_skip_test("BoringSSL reads the injected clock through its callback");
  g_wall_reads = 0;
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, NOW0, UNIX0);
  cr_assert_gt(g_wall_reads, 0, "OpenSSL started its DTLS timer unseen");
  m2mt_pair_free(&p);
}
