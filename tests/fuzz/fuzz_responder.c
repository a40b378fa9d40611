/* Entity B, the responder, fed arbitrary input from an unauthenticated
 * peer: stream bytes over TLS (built as fuzz_responder_tls) or datagrams
 * over DTLS (fuzz_responder_dtls, with FZ_DTLS defined).
 *
 * Input:  opts chunk*
 *   opts bit 0:    reveal unknown identities (second config)
 *   opts bits 1-2: wall clock at start: 0 and 3 FZ_UNIX_TIME, 1 none (0),
 *                  2 after FZ_KPSA_WINDOW's window
 *   opts bit 3:    DTLS MTU 256 instead of the default
 *   opts bit 4:    the keystore has a key source (queue mode): the
 *                  responder reads the ClientKeyExchange before the engine
 *                  and may wait; after the input, queued requests are
 *                  answered and the association resumed
 *   opts bit 5:    with bit 4, answer with the record (else as absent)
 *   chunk:         see common.h (one feed call each)
 * Time is injected: FZ_T0, +10 ms per chunk, timers fired on request. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

#ifdef FZ_DTLS
#define FZ_TRANSPORT M2MPSK_TRANSPORT_DTLS
#else
#define FZ_TRANSPORT M2MPSK_TRANSPORT_TLS
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The responder's records, in a keystore of its own with a key source. */
static m2mpsk_keystore *source_ks(void) {
  static m2mpsk_keystore *ks;
  if (ks == NULL) {
    fz_check(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore_new");
    fz_check(m2mpsk_keystore_add(ks, FZ_KPSA_ID, fz_key, sizeof(fz_key), FZ_IDA,
                                 FZ_IDB, 0, 0) == M2MPSK_OK,
             "keystore_add");
    fz_check(m2mpsk_keystore_set_source(ks, NULL, NULL, 4) == M2MPSK_OK,
             "set_source");
  }
  return ks;
}

/* Answers what the input made the keystore ask for, resumes, and leaves
 * the keystore as it was (no supplied record survives the run). */
static void answer_and_resume(m2mpsk_assoc *b, m2mpsk_keystore *ks, int supply,
                              int once, uint64_t *now) {
  char supplied[M2MPSK_KPSA_ID_MAX + 1] = "";
  m2mpsk_key_request *req = NULL;
  while (m2mpsk_keystore_next_request(ks, &req) == M2MPSK_OK) {
    const char *id = m2mpsk_key_request_kpsa_id(req);
    fz_check(id != NULL && m2mpsk_kpsa_id_validate(id) == M2MPSK_OK,
             "request for a well-formed KpsaID");
    if (supply && supplied[0] == '\0' && once) {
      /* Nothing kept: nothing to remove afterwards. */
      fz_status(m2mpsk_key_request_supply_once(req, fz_key, sizeof(fz_key),
                                               FZ_IDA, FZ_IDB, 0, 0),
                1, "key_request_supply_once");
    } else if (supply && supplied[0] == '\0') {
      fz_status(m2mpsk_key_request_supply(req, fz_key, sizeof(fz_key), FZ_IDA,
                                          FZ_IDB, 0, 0),
                1, "key_request_supply");
      memcpy(supplied, id, strlen(id) + 1);
    } else {
      fz_status(m2mpsk_key_request_absent(req), 1, "key_request_absent");
    }
    fz_check(m2mpsk_key_request_answered(req) == 1, "answered");
    m2mpsk_key_request_free(req);
  }
  if (m2mpsk_assoc_state(b) == M2MPSK_STATE_WAITING_KEY) {
    fz_check(m2mpsk_assoc_key_request(b) != NULL, "waits on a request");
    int rc = m2mpsk_assoc_resume(b, *now);
    fz_check(rc == M2MPSK_OK || rc == M2MPSK_E_FAILED, "resume");
    fz_check(m2mpsk_assoc_state(b) != M2MPSK_STATE_WAITING_KEY,
             "an answered request ends the wait");
  } else {
    fz_check(m2mpsk_assoc_resume(b, *now) == M2MPSK_E_STATE,
             "resume while not waiting");
  }
  fz_drain_all(b, 0);
  fz_fire_timer(b, now);
  fz_drain_all(b, 0);
  m2mpsk_assoc_free(b);
  if (supplied[0] != '\0' && strcmp(supplied, FZ_KPSA_ID) != 0)
    (void)!m2mpsk_keystore_remove(ks, supplied);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  static const int64_t clocks[4] = {FZ_UNIX_TIME, 0, FZ_WINDOW_NA + 1000,
                                    FZ_UNIX_TIME};
  m2mpsk_assoc *b = NULL;
  m2mpsk_keystore *ks = (opts & 16) ? source_ks() : fz_responder_ks();
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, FZ_TRANSPORT,
                            fz_responder_cfg(opts & 1), ks, NULL) == M2MPSK_OK,
           "assoc_new");
  if (FZ_TRANSPORT == M2MPSK_TRANSPORT_DTLS && (opts & 8))
    fz_check(m2mpsk_assoc_set_mtu(b, M2MPSK_MTU_MIN) == M2MPSK_OK, "set_mtu");
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_start(b, now, clocks[(opts >> 1) & 3]) == M2MPSK_OK,
           "assoc_start");
  fz_feed_chunks(b, &r, &now);
  if (opts & 16) {
    answer_and_resume(b, ks, opts & 32, opts & 64, &now);
    return 0;
  }
  m2mpsk_assoc_free(b);
  return 0;
}
