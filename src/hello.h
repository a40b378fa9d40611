/* A peer's (D)TLS 1.2 ClientHello, read before any TLS engine exists, and
 * the engine choice it drives (engine "auto" as responder). Pure code: no
 * TLS library, no allocation, no clock, no global state, so every function
 * here is safe to call from any thread at once. Not installed. */
#ifndef M2MPSK_HELLO_H
#define M2MPSK_HELLO_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

/* At most this many cipher suites are kept; a hello offering more is
 * M2MPSK_HELLO_NOT (real clients offer a few dozen). */
#define M2MPSK_HELLO_MAX_SUITES 256
/* At most this many bytes of ClientHello body (after the handshake
 * header), as BoringSSL's own bound; a longer one is M2MPSK_HELLO_NOT. */
#define M2MPSK_HELLO_MAX_BYTES 16384

#define M2MPSK_HELLO_OK 1
#define M2MPSK_HELLO_MORE 0
#define M2MPSK_HELLO_NOT (-1)

typedef struct m2mpsk_hello {
  uint16_t suites[M2MPSK_HELLO_MAX_SUITES]; /* offered, in the peer's order */
  size_t n_suites;                          /* >= 1 */
  uint16_t version;     /* client_version: 0x0303 TLS 1.2, 0xfefd DTLS 1.2 */
  int has_cookie;       /* DTLS: a non-empty cookie; TLS: 0 */
  uint16_t message_seq; /* DTLS handshake message_seq; TLS: 0 */
  char sni[256]; /* server_name host_name as sent (1..255 bytes, no NUL in
                    it), NUL-terminated; "" when the extension is absent */
  /* TLS: bytes of `data` up to the end of the record that completes the
   * ClientHello; DTLS: bytes up to the end of the first record. */
  size_t consumed;
} m2mpsk_hello;

/* Parses the ClientHello at the start of `data` (len bytes; data may be
 * NULL when len is 0), as a TLS byte stream (dtls = 0) or as one DTLS
 * datagram (dtls != 0). Reads nothing past data[len - 1], keeps no pointer
 * into data, and does work linear in len.
 *
 * TLS: one or more handshake records (type 22, record version 0x03xx, as
 * RFC 5246 Appendix E.1 allows; payload 1..16384 bytes) carrying exactly one
 * ClientHello (client_version 0x0303 or above, body at most
 * M2MPSK_HELLO_MAX_BYTES), the last record ending where the ClientHello ends.
 * Bytes after that record are not looked at. DTLS: the datagram's first record
 * is a handshake record (version 0xfexx) of epoch 0 holding exactly one
 * complete, unfragmented ClientHello (fragment_offset 0, fragment_length ==
 * length; client_version 0xfefd or newer). Records after the first are not
 * looked at. Either way every length field is checked: session_id at most 32
 * bytes, cipher_suites even and non-empty (at most M2MPSK_HELLO_MAX_SUITES),
 * compression_methods non-empty and holding null, the extensions block (if
 * any) consumed exactly by whole extensions, at most one server_name
 * extension, and that one a list of exactly one host_name entry of 1..255
 * bytes without NUL (what both engines accept). Other extensions are
 * skipped unread. An SSLv2-format hello is M2MPSK_HELLO_NOT.
 *
 * Returns
 *   M2MPSK_HELLO_OK   *out filled;
 *   M2MPSK_HELLO_MORE TLS only: no violation in the bytes so far, but the
 *                     ClientHello (or the record completing it) is not all
 *                     there yet; call again with the whole buffer, longer;
 *   M2MPSK_HELLO_NOT  not a ClientHello this library could accept, or out
 *                     is NULL, or data is NULL with len > 0; the caller
 *                     then leaves the bytes to an engine.
 * On OK, suites[n_suites..] are left as they were; on MORE and NOT, *out
 * (when not NULL) is zeroed. Thread safety: safe
 * from any thread; `out` belongs to the caller. */
int m2mpsk_hello_parse(const uint8_t *data, size_t len, int dtls,
                       m2mpsk_hello *out);

/* 1 when the hello offers `suite` (an IANA id), else 0 (also for NULL).
 * Thread safety: safe from any thread. */
int m2mpsk_hello_offers(const m2mpsk_hello *h, uint16_t suite);

/* The IANA ids an engine would accept for one association: the config's
 * enabled suites intersected with the engine's, in the config's preference
 * order. Borrowed: the caller owns ids. */
typedef struct m2mpsk_engine_suites {
  const uint16_t *ids;
  size_t n;
} m2mpsk_engine_suites;

/* engines[0..n_engines) are listed fastest first. Returns the index of the
 * first engine sharing at least one suite with the hello, or -1 when none
 * does, or h or engines is NULL (the caller then uses the first engine,
 * which fails the handshake as before). An engine whose ids is NULL shares
 * nothing. The preference order inside each list does not matter: only
 * whether the lists meet. Work: n_engines x n x h->n_suites at most.
 * Thread safety: safe from any thread. */
int m2mpsk_hello_choose(const m2mpsk_hello *h,
                        const m2mpsk_engine_suites *engines, size_t n_engines);

/* The IANA id of a suite the project knows (every suite of either engine
 * and of the TS-0003 profile), by its IANA name.
 * Returns M2MPSK_OK with *id set, M2MPSK_E_SUITE (unknown name) or
 * M2MPSK_E_INVALID (NULL). Thread safety: safe from any thread. */
int m2mpsk_suite_id(const char *iana_name, uint16_t *id);

/* The IANA name of a known suite id (static storage), or NULL. Thread
 * safety: safe from any thread. */
const char *m2mpsk_suite_iana(uint16_t id);

/* Translates a colon-separated list of IANA names (as the configs and
 * engines give them) into ids, in order, into ids[0..cap); *n gets the
 * count. Returns M2MPSK_OK, M2MPSK_E_SUITE (an unknown name; *n is 0),
 * M2MPSK_E_BUFFER (more than cap names; *n is 0) or M2MPSK_E_INVALID
 * (NULL list, n, or ids with cap > 0; an empty list or name).
 * Thread safety: safe from any thread. */
int m2mpsk_suite_ids(const char *list, uint16_t *ids, size_t cap, size_t *n);

/* ---- the ClientKeyExchange's psk_identity (key sources, issue 19) --------
 * A responder whose keystore has a key source reads the identity a client
 * presents before any engine does, so that it can wait for the key with
 * the flight unread. RFC 4279 (§2, §3, §4) and RFC 5489 put psk_identity
 * first in every PSK ClientKeyExchange: uint16 length, then the bytes.
 * Only an identity whole within one record (TLS) or within the first
 * fragment of the message (DTLS) is read; anything else is NOT, and the
 * caller leaves the identity to the engine. Same guarantees as
 * m2mpsk_hello_parse(): no allocation, nothing read past the input. */

#define M2MPSK_CKE_FOUND 1  /* *id, *id_len: the identity, inside the input */
#define M2MPSK_CKE_MORE 0   /* no ClientKeyExchange here: look at what follows \
                             */
#define M2MPSK_CKE_NOT (-1) /* it cannot be read early: stop looking */

/* One whole TLS handshake record's payload (`n` bytes after the 5-byte
 * record header). Handshake messages may span records (a long
 * ClientHello): *hs_left carries the bytes of one still to come, 0 at the
 * start of the stream. FOUND sets *id (into `body`) and *id_len (possibly 0
 * or longer than any KpsaID: the caller judges it). NOT when a handshake
 * header is split across records, or the identity does not fit in this
 * record. Thread safety: safe from any thread. */
int m2mpsk_cke_tls_record(const uint8_t *body, size_t n, uint32_t *hs_left,
                          const uint8_t **id, size_t *id_len);

/* One DTLS datagram: the first ClientKeyExchange fragment in an epoch-0
 * handshake record. Other records are skipped; a truncated record ends the
 * look (MORE: the engine judges it). NOT when the fragment does not start
 * at offset 0 or does not hold the whole identity.
 * Thread safety: safe from any thread. */
int m2mpsk_cke_dtls(const uint8_t *d, size_t n, const uint8_t **id,
                    size_t *id_len);

#endif /* M2MPSK_HELLO_H */
