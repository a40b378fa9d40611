/* Shared helpers for the libFuzzer targets in tests/fuzz/. Not part of the
 * library; no criterion (libFuzzer provides main()). */
#ifndef M2MPSK_FUZZ_COMMON_H
#define M2MPSK_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

/* Identities shared by the targets and the corpus generator. The responder
 * fixture holds one record per path worth reaching (see fz_responder_ks). */
#define FZ_KPSA_ID "test@onem2m.com"        /* IdA bound */
#define FZ_KPSA_NOIDA "noida@onem2m.com"    /* Credential-ID bound */
#define FZ_KPSA_REVOKED "revoked@onem2m.com" /* revoked */
#define FZ_KPSA_WINDOW "window@onem2m.com"  /* validity window */
#define FZ_KPSA_OTHER "other@onem2m.com"    /* IdB not served */
#define FZ_KPSA_UNKNOWN "nobody@onem2m.com" /* not in the keystore */
#define FZ_IDA "//m2m.example.com/cse-in/Cae1"
#define FZ_IDB "//m2m.example.com/cse-in"
#define FZ_IDB_REL "/cse-rel"
#define FZ_IDB_OTHER "//other.example.org/cse-x"
/* Wall-clock time handed to m2mpsk_assoc_start (inside the window). */
#define FZ_UNIX_TIME 1800000000
#define FZ_WINDOW_NB 1700000000
#define FZ_WINDOW_NA 1800000100 /* expires 100 s into a session */
#define FZ_T0 1000              /* monotonic start, ms */

extern const uint8_t fz_key[32];

/* Aborts with a message: fixture setup must never fail. */
void fz_check(int cond, const char *what);

/* Judges the status of a call made with fuzzed input: any status the header
 * documents is a fine answer to hostile bytes, but a value that is no status
 * (positive, or without a name) is a bug, and so is M2MPSK_E_INVALID when
 * `args_valid` says the harness passed valid arguments. Aborts on either. */
void fz_status(int rc, int args_valid, const char *what);

/* ---- chunked input ------------------------------------------------------
 * The transport targets read their input as a sequence of chunks:
 *
 *   chunk := hdr_hi hdr_lo payload[len]
 *   len   := ((hdr_hi & 0x3f) << 8 | hdr_lo), truncated to what is left
 *   hdr_hi bit 7: before feeding, advance time to the next timer and call
 *                 m2mpsk_assoc_handle_timeout (DTLS retransmission, the
 *                 handshake deadline)
 *   hdr_hi bit 6: drain with a small buffer (partial TLS drains, DTLS
 *                 M2MPSK_E_BUFFER) before the normal drain
 *
 * A chunk is one feed call: a stream segment (TLS) or one datagram (DTLS). */
typedef struct fz_reader {
  const uint8_t *p;
  size_t left;
} fz_reader;

typedef struct fz_chunk {
  const uint8_t *data;
  size_t len;
  int timeout_first;
  int small_drain;
} fz_chunk;

/* Next chunk; 0 when the input is exhausted. */
int fz_next_chunk(fz_reader *r, fz_chunk *c);
/* One byte (0 when exhausted). */
uint8_t fz_byte(fz_reader *r);

/* Appends one chunk header + payload to `out` (corpus generator). Returns
 * the new length, or 0 if it would not fit. */
size_t fz_put_chunk(uint8_t *out, size_t cap, size_t at, const uint8_t *data,
                    size_t len, int flags);

/* ---- driving an association --------------------------------------------- */

/* Drains everything `a` has queued (and discards it). `small` first drains
 * with a 7-byte buffer (TLS: partial drains; DTLS: E_BUFFER). */
void fz_drain_all(m2mpsk_assoc *a, int small);

/* Advances *now to the next timer of `a` (if any) and handles it. */
void fz_fire_timer(m2mpsk_assoc *a, uint64_t *now);

/* Exercises an established (or closed) association: reads what is there,
 * writes a little, queries its results. */
void fz_poke(m2mpsk_assoc *a, const uint8_t *data, size_t len);

/* Feeds each chunk of the input to `a`, driving it as a host would.
 * Returns when the input is exhausted. */
void fz_feed_chunks(m2mpsk_assoc *a, fz_reader *r, uint64_t *now);

/* Moves everything `from` has queued into `to`, one feed per drained piece
 * (a TLS flight or one datagram). `tap`, if not NULL, sees each piece
 * first. Stops feeding once `to` failed. Returns the number of pieces. */
typedef void (*fz_tap)(void *ctx, const m2mpsk_assoc *from, const uint8_t *p,
                       size_t n);
int fz_transfer(m2mpsk_assoc *from, m2mpsk_assoc *to, uint64_t now,
                fz_tap tap, void *ctx);

/* Runs a lossless handshake between initiator `a` and responder `b` (both
 * started) until neither is handshaking; returns 1 when both are
 * ESTABLISHED. Bounded. */
int fz_handshake(m2mpsk_assoc *a, m2mpsk_assoc *b, uint64_t *now, fz_tap tap,
                 void *ctx);

/* With M2MPSK_FUZZ_DEBUG set in the environment, prints the state and
 * failure of `a` to stderr (to check what a seed reaches). */
void fz_debug(const m2mpsk_assoc *a, const char *where);
/* The same for a line of its own. */
void fz_note(const char *what);

/* ---- fixtures ------------------------------------------------------------ */

/* The responder's keystore (built once per process, never modified):
 *   FZ_KPSA_ID      -> IdA FZ_IDA, IdB FZ_IDB
 *   FZ_KPSA_NOIDA   -> no IdA (binds the Credential-ID), IdB FZ_IDB_REL
 *   FZ_KPSA_REVOKED -> revoked
 *   FZ_KPSA_WINDOW  -> validity window [FZ_WINDOW_NB, FZ_WINDOW_NA]
 *   FZ_KPSA_OTHER   -> IdB FZ_IDB_OTHER, which the responder does not serve
 * all with key fz_key. */
m2mpsk_keystore *fz_responder_ks(void);

/* The initiator's keystore: FZ_KPSA_ID, FZ_KPSA_NOIDA and FZ_KPSA_WINDOW as
 * above. */
m2mpsk_keystore *fz_initiator_ks(void);

/* Configs, one per variant, built once and frozen on first use. All offer
 * every suite this build supports. A responder config serves FZ_IDB and
 * FZ_IDB_REL; `variant` bit 0 turns reveal-unknown-identity on. */
m2mpsk_config *fz_responder_cfg(unsigned variant);
m2mpsk_config *fz_initiator_cfg(void);

/* Builds a config offering exactly suite `suite` (index into
 * m2mpsk_suite_name), as a responder (serving FZ_IDB) or an initiator. The
 * caller frees it. */
m2mpsk_config *fz_cfg_with_suite(size_t suite, int responder);

#endif
