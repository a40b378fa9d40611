/* Entity B, the responder, fed arbitrary input from an unauthenticated
 * peer: stream bytes over TLS (built as fuzz_responder_tls) or datagrams
 * over DTLS (fuzz_responder_dtls, with FZ_DTLS defined).
 *
 * Input:  opts chunk*
 *   opts bit 0:    reveal unknown identities (second config)
 *   opts bits 1-2: wall clock at start: 0 and 3 FZ_UNIX_TIME, 1 none (0),
 *                  2 after FZ_KPSA_WINDOW's window
 *   opts bit 3:    DTLS MTU 256 instead of the default
 *   chunk:         see common.h (one feed call each)
 * Time is injected: FZ_T0, +10 ms per chunk, timers fired on request. */
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#ifdef FZ_DTLS
#define FZ_TRANSPORT M2MPSK_TRANSPORT_DTLS
#else
#define FZ_TRANSPORT M2MPSK_TRANSPORT_TLS
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  static const int64_t clocks[4] = {FZ_UNIX_TIME, 0, FZ_WINDOW_NA + 1000,
                                    FZ_UNIX_TIME};
  m2mpsk_assoc *b = NULL;
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, FZ_TRANSPORT,
                            fz_responder_cfg(opts & 1), fz_responder_ks(),
                            NULL) == M2MPSK_OK,
           "assoc_new");
  if (FZ_TRANSPORT == M2MPSK_TRANSPORT_DTLS && (opts & 8))
    fz_check(m2mpsk_assoc_set_mtu(b, M2MPSK_MTU_MIN) == M2MPSK_OK, "set_mtu");
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_start(b, now, clocks[(opts >> 1) & 3]) == M2MPSK_OK,
           "assoc_start");
  fz_feed_chunks(b, &r, &now);
  m2mpsk_assoc_free(b);
  return 0;
}
