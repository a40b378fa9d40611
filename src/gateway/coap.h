/* The gateway's CoAP binding (oneM2M TS-0008) over DTLS-PSK.
 *
 * One gw_coap per event loop (thread): it reads the datagrams of one UDP
 * socket, answers every unknown peer's ClientHello statelessly
 * (m2mpsk_dtls_listen: no state before a valid cookie), keeps one
 * association per peer address (hash table bounded by max_conn and
 * max_per_addr), parses each decrypted datagram with libcoap3's
 * coap_pdu_parse, applies the oneM2M originator gate (gate.c) and forwards
 * what passes to the CSE's plain CoAP endpoint over UDP, mapping message
 * IDs and tokens so that each response reaches the device it answers.
 *
 * Everything runs on the event base's thread: no call may be made from
 * another thread. */
#ifndef M2MPSK_GATEWAY_COAP_H
#define M2MPSK_GATEWAY_COAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "gw.h"
#include "m2mpsk/m2mpsk.h"

struct event_base;

/* Times toward the CSE: a request is sent as CON and retransmitted after
 * GW_COAP_ACK_TIMEOUT_MS, then twice that, GW_COAP_MAX_RETRANSMIT times;
 * with no response GW_COAP_EXCHANGE_MS after it was first sent, the device
 * gets 5.04 Gateway Timeout. Requests in flight per association are
 * bounded by GW_COAP_MAX_INFLIGHT: past it the device gets 5.03. */
enum {
  GW_COAP_ACK_TIMEOUT_MS = 1000,
  GW_COAP_MAX_RETRANSMIT = 2,
  GW_COAP_EXCHANGE_MS = 5000,
  GW_COAP_MAX_INFLIGHT = 8,
  /* UDP sockets toward the CSE per gw_coap: each has its own 16-bit
   * message ID space, so that the CSE's deduplication (by endpoint and
   * message ID, for EXCHANGE_LIFETIME) sees no reuse below about
   * GW_COAP_BACKEND_SOCKETS * 65536 / 247 requests per second. */
  GW_COAP_BACKEND_SOCKETS = 4
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
 * finish (each is bounded by GW_COAP_EXCHANGE_MS), closes every
 * association with close_notify as its last request completes, and then
 * removes its events, so that the event loop can end. */
void gw_coap_shutdown(gw_coap *gc);

/* 1 when a shut-down binding has nothing left in flight. */
int gw_coap_idle(const gw_coap *gc);

void gw_coap_get_stats(const gw_coap *gc, gw_coap_stats *out);

/* Frees everything: associations (without notice), exchanges, sockets,
 * events. NULL is a no-op. */
void gw_coap_free(gw_coap *gc);

#endif /* M2MPSK_GATEWAY_COAP_H */
