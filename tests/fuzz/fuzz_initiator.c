/* Entity A, the initiator, after m2mpsk_assoc_start() (its ClientHello
 * drained), fed arbitrary input as the responder's: stream bytes over TLS
 * or datagrams over DTLS.
 *
 * Input:  opts chunk*
 *   opts bit 0:    DTLS (else TLS)
 *   opts bits 1-2: record: 0 and 3 FZ_KPSA_ID, 1 FZ_KPSA_NOIDA (relative
 *                  IdB, no SNI), 2 FZ_KPSA_WINDOW (validity window)
 *   opts bit 3:    wall clock past FZ_KPSA_WINDOW's window (else
 *                  FZ_UNIX_TIME); with record 2 the start fails
 *   opts bit 4:    DTLS MTU 256 instead of the default
 *   chunk:         see common.h (one feed call each)
 * Time is injected: FZ_T0, +10 ms per chunk, timers fired on request. */
#include <stddef.h>
#include <stdint.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  static const char *const ids[4] = {FZ_KPSA_ID, FZ_KPSA_NOIDA, FZ_KPSA_WINDOW,
                                     FZ_KPSA_ID};
  m2mpsk_transport t =
      (opts & 1) ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS;
  m2mpsk_assoc *a = NULL;
  fz_check(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, fz_initiator_cfg(),
                            fz_initiator_ks(),
                            ids[(opts >> 1) & 3]) == M2MPSK_OK,
           "assoc_new");
  if (t == M2MPSK_TRANSPORT_DTLS && (opts & 16))
    fz_check(m2mpsk_assoc_set_mtu(a, M2MPSK_MTU_MIN) == M2MPSK_OK, "set_mtu");
  uint64_t now = FZ_T0;
  int64_t unix_time = (opts & 8) ? FZ_WINDOW_NA + 1000 : FZ_UNIX_TIME;
  if (m2mpsk_assoc_start(a, now, unix_time) == M2MPSK_OK) {
    fz_drain_all(a, 0); /* the ClientHello */
    fz_feed_chunks(a, &r, &now);
  } else {
    fz_drain_all(a, 0);
  }
  m2mpsk_assoc_free(a);
  return 0;
}
