/* The gateway's CoAP binding (oneM2M TS-0008) over DTLS-PSK.
 *
 * One gw_coap per event loop (worker thread, gw.h's gw_coap_worker_*): it
 * reads the datagrams of one UDP socket (SO_REUSEPORT: the kernel keeps a
 * peer's datagrams on one worker) and
 *  - answers every unknown peer statelessly: a ClientHello gets a
 *    HelloVerifyRequest (m2mpsk_dtls_listen; sent only when no larger than
 *    the ClientHello), a plain CoAP request 4.03 with oneM2M-RSC 4107 (no
 *    payload, no larger than the request), anything else nothing; only a
 *    ClientHello with a valid cookie, admitted by gw_admit() (--max-conn,
 *    --max-per-addr), makes an association;
 *  - keeps one association per peer address and port in a keyed hash,
 *    with one timer each: the DTLS retransmissions and handshake deadline
 *    (m2mpsk_assoc_next_timeout) and --idle-timeout (close_notify); a
 *    cookie-proven ClientHello from an established peer's address and
 *    port replaces its association (a device that restarted);
 *  - parses each decrypted datagram with libcoap3 (coap_pdu_parse):
 *    unparseable ones are dropped, a CoAP ping gets RST, a retransmitted
 *    CON is answered from memory (answers up to RECENT_MAX bytes) or
 *    ignored while in flight;
 *  - applies the gate to each request (gw_gate_request: oneM2M-FR against
 *    the binding; more than one FR is refused; a Credential-ID binding
 *    passes only an <AE> CREATE, POST with oneM2M-TY 2) and answers
 *    refusals itself: 4.03, oneM2M-RSC 4106/4107, the RQI copied, a JSON
 *    {"m2m:dbg": ...}; never forwarded;
 *  - forwards the rest as CON over UDP to --coap-backend, from one of
 *    GW_COAP_BACKEND_SOCKETS sockets, under a token and message ID of its
 *    own (the device's options, in order, with --identity-option
 *    replaced), retransmitted as RFC 7252 does, and relays the CSE's
 *    response (piggybacked, or separate after an empty ACK, which the
 *    gateway acknowledges) with the device's token and message ID: an ACK
 *    for a CON, a NON for a NON. A 2.01 with RSC 2001 to an <AE> CREATE
 *    binds the AE-ID (gw_gate_response);
 *  - bounds: a request over --max-request gets 4.13, a response over
 *    --max-response 5.02, more than GW_COAP_MAX_INFLIGHT requests in flight
 *    on one association 5.03, no response within --cse-timeout 5.04
 *    (each with the RQI copied).
 * Not relayed: Observe notifications and anything else the CSE sends after
 * its response (an unknown token: RST), requests from the CSE to devices.
 * Block-wise transfers pass through, each block a request of its own.
 *
 * Everything runs on the event base's thread: no call may be made from
 * another thread. Logs go through gw_log/gw_trace only (libcoap's own
 * logging is silenced); no key byte is ever logged. */
#ifndef M2MPSK_GATEWAY_COAP_H
#define M2MPSK_GATEWAY_COAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "gw.h"
#include "m2mpsk/m2mpsk.h"

struct event_base;
struct coap_pdu_t;

/* Times toward the CSE: a request is sent as CON and retransmitted after
 * GW_COAP_ACK_TIMEOUT_MS, then twice that, GW_COAP_MAX_RETRANSMIT times;
 * with no response --cse-timeout after it was first sent (gw_opts'
 * cse_timeout_ms; GW_COAP_EXCHANGE_MS where that is 0), the device gets
 * 5.04 Gateway Timeout. Requests in flight per association are
 * bounded by GW_COAP_MAX_INFLIGHT: past it the device gets 5.03. */
enum {
  GW_COAP_ACK_TIMEOUT_MS = 1000,
  GW_COAP_MAX_RETRANSMIT = 2,
  GW_COAP_EXCHANGE_MS = 5000,
  GW_COAP_MAX_INFLIGHT = 8,
  /* UDP sockets toward the CSE per gw_coap: each has its own 16-bit
   * message ID space, so that the CSE's deduplication (by endpoint and
   * message ID, for EXCHANGE_LIFETIME) sees no reuse below about
   * GW_COAP_BACKEND_SOCKETS * 65536 / 247 requests per second per
   * worker (4,245 with 16). */
  GW_COAP_BACKEND_SOCKETS = 16
};

typedef struct gw_coap gw_coap;

typedef struct gw_coap_opts {
  struct event_base *base;
  /* A bound, nonblocking UDP socket (SO_REUSEPORT when threads share the
   * port). Owned by the gw_coap on success, closed by gw_coap_free(). */
  int fd;
  /* The gateway: its shared config and keystore (gw_assoc_new), admission
   * (gw_admit: --max-conn, --max-per-addr), the CSE's address
   * (coap_backend_addr) and the limits in gw->opts (--idle-timeout,
   * --max-request, --max-response, --identity-option). Borrowed for the
   * gw_coap's life. */
  gw_gateway *gw;
} gw_coap_opts;

/* Counters, for tests and the benchmark. */
typedef struct gw_coap_stats {
  uint64_t associations; /* live now */
  uint64_t hello_verify; /* HelloVerifyRequests sent */
  uint64_t created;      /* associations created */
  uint64_t forwarded;    /* requests sent to the CSE */
  uint64_t refused;      /* 4106/4107 answered by the gateway */
  uint64_t timeouts;     /* 5.04 answered */
  uint64_t malformed;    /* datagrams libcoap could not parse, dropped */
  uint64_t dropped;      /* datagrams dropped for a limit */
  uint64_t retransmits;  /* DTLS timer runs (retransmissions) */
} gw_coap_stats;

/* Creates the binding on o->base and starts reading o->fd. On failure
 * returns NULL with a message in err (never key bytes) and leaves o->fd
 * open. gw.h's gw_coap_worker_start() makes one per worker. */
gw_coap *gw_coap_new(const gw_coap_opts *o, char *err, size_t errlen);

/* Stops taking new datagrams from devices, lets the requests in flight
 * finish (each is bounded by --cse-timeout), closes every
 * association with close_notify as its last request completes, and then
 * removes its events, so that the event loop can end. */
void gw_coap_shutdown(gw_coap *gc);

/* 1 when a shut-down binding has nothing left in flight. */
int gw_coap_idle(const gw_coap *gc);

void gw_coap_get_stats(const gw_coap *gc, gw_coap_stats *out);

/* Frees everything: associations (without notice), exchanges, sockets,
 * events. NULL is a no-op. */
void gw_coap_free(gw_coap *gc);

/* ---- the codec: libcoap parses, these encode (also for the fuzzer) ---- */

/* Parses one CoAP-over-UDP message (RFC 7252) of at most `max` bytes with
 * libcoap's coap_pdu_parse. The PDU, freed with coap_delete_pdu(), or NULL
 * (malformed, too large, out of memory). Thread-safe. */
struct coap_pdu_t *gw_coap_parse(const uint8_t *data, size_t len, size_t max);

/* The oneM2M options of a request, borrowed from the PDU. */
typedef struct gw_coap_request_info {
  const uint8_t *from; /* the first oneM2M-FR (256), NULL: none */
  size_t from_len;
  int from_count;     /* how many FR options */
  const uint8_t *rqi; /* oneM2M-RQI (257), NULL: none */
  size_t rqi_len;
  int ty; /* oneM2M-TY (267), -1: absent, GW_COAP_TY_INVALID: longer than
             2 bytes */
} gw_coap_request_info;

enum { GW_COAP_TY_INVALID = 0x10000 };

void gw_coap_view(const struct coap_pdu_t *pdu, gw_coap_request_info *v);

/* The request as sent to the CSE: CON, the code, `mid`, the 8-byte
 * `token`, the device's options in order except any numbered
 * `identity_option` (when not 0), which is replaced by one carrying
 * `identity`, and the payload. Its length, or 0 when it does not fit
 * `cap`. */
size_t gw_coap_encode_forward(const struct coap_pdu_t *pdu,
                              uint16_t identity_option, const char *identity,
                              uint16_t mid, uint64_t token, uint8_t *buf,
                              size_t cap);

/* The CSE's response as relayed to the device: `type`, `mid` and the
 * device's token, the CSE's code, options and payload. *rsc receives the
 * oneM2M-RSC (-1: none, 0: longer than 2 bytes), *body the payload (borrowed
 * from the PDU). Its length, or 0 when it does not fit `cap`. */
size_t gw_coap_encode_relay(const struct coap_pdu_t *pdu, unsigned type,
                            uint16_t mid, const uint8_t *tok, size_t toklen,
                            uint8_t *buf, size_t cap, int *rsc,
                            const uint8_t **body, size_t *body_len);

/* An answer of the gateway's own: Content-Format JSON and a body
 * {"m2m:dbg":why} unless `why` is NULL, the RQI when not NULL, the RSC
 * when not 0. Its length, or 0 when it does not fit `cap`. */
size_t gw_coap_encode_answer(uint8_t *buf, size_t cap, unsigned type,
                             unsigned code, uint16_t mid, const uint8_t *tok,
                             size_t toklen, const uint8_t *rqi, size_t rqi_len,
                             unsigned rsc, const char *why);

#endif /* M2MPSK_GATEWAY_COAP_H */
