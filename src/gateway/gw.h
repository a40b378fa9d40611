/* m2mpsk gateway: Entity B for devices, a plain client of the CSE behind
 * it (issue 16). TLS-PSK + HTTP (http.c) and DTLS-PSK + CoAP (coap.c) in
 * front, plain HTTP and CoAP to the CSE.
 *
 * What the bindings share is declared here and kept stable:
 *  - gw_opts: every option (command line and --config file);
 *  - gw_gateway / gw_worker: the shared config and keystore (swapped on
 *    SIGHUP), the per-address and total association counters, and one
 *    libevent loop per worker thread;
 *  - gate.c: the protocol-neutral oneM2M decisions;
 *  - log.c: the one throttled logger.
 *
 * Threads: gw_gateway is shared by every worker; the functions below that
 * take it are safe from any thread unless they say otherwise. A gw_worker
 * and everything on its event_base belong to its thread. */
#ifndef M2MPSK_GW_H
#define M2MPSK_GW_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "m2mpsk/m2mpsk.h"

struct event_base;
struct event;

/* `m2mpsk gateway ...`: argv[0] is "gateway". Exit codes as the tool's:
 * 0, 1 failure, 2 usage, 3 key file. */
int gw_main(int argc, char **argv);

/* ---- options ------------------------------------------------------------ */

/* Every option, with the defaults gw_opts_defaults() sets. Strings are
 * owned (heap copies), freed by gw_opts_free(). */
typedef struct gw_opts {
  char *keys; /* --keys FILE or etcd://... URL */
  char *kek;  /* --kek FILE: with an etcd URL, the key-encryption key */
  unsigned etcd_fail_closed; /* --etcd-fail-closed SECONDS, 0: default */
  char *pin_file;  /* --pin-file FILE: with pkcs11:, the token's user PIN */
  char *init_args; /* --pkcs11-init-args: C_Initialize's pReserved */
  char **ids;                /* --id IDB, repeatable */
  size_t n_ids;
  char *http_listen;             /* --http-listen ADDR:PORT, NULL: none */
  char *http_backend;            /* --http-backend HOST:PORT */
  char *coap_listen;             /* --coap-listen ADDR:PORT, NULL: none */
  char *coap_backend;            /* --coap-backend HOST:PORT */
  char *identity_header;         /* --identity-header NAME, NULL: none */
  unsigned identity_option;      /* --identity-option N, 0: none */
  m2mpsk_engine_id engine;       /* --engine */
  char *suites;                  /* --suites, NULL: the default */
  unsigned threads;              /* --threads, default: CPUs */
  unsigned max_conn;             /* --max-conn: associations in total */
  unsigned max_per_addr;         /* --max-per-addr: per source address */
  uint32_t handshake_timeout_ms; /* --handshake-timeout */
  uint32_t idle_timeout_ms;      /* --idle-timeout */
  uint32_t cse_timeout_ms;       /* --cse-timeout: the CSE's time to answer
                                    one forwarded request */
  size_t max_request;            /* --max-request: one request, bytes */
  size_t max_response;           /* --max-response: one response, bytes */
  size_t max_buffer;   /* --max-buffer: bytes buffered per association and
                          direction before reading stops */
  unsigned rate_limit; /* --rate-limit: failed handshakes per KpsaID per
                          10 s window (0: off) */
  unsigned log_rate;   /* --log-rate: lines per second */
  int verbose;         /* -v */
  char *config;        /* --config FILE */
} gw_opts;

/* ---- the gateway and its workers ---------------------------------------- */

typedef struct gw_gateway gw_gateway;
typedef struct gw_worker gw_worker;
struct gw_http_worker; /* http.c */
struct gw_coap_worker; /* coap.c */

/* One thread, one event_base. The bindings keep their per-thread state in
 * `http` and `coap`. */
struct gw_worker {
  gw_gateway *gw;
  struct event_base *base;
  unsigned index; /* 0 .. n_workers - 1 */
  pthread_t thread;
  struct gw_http_worker *http;
  struct gw_coap_worker *coap;
  struct event *stop_ev;  /* activated (from any thread) to stop */
  struct event *drain_ev; /* the worker's "in flight yet?" check */
  struct event *keys_ev;  /* activated (from the etcd thread) after the
                             keystore changed: live associations re-check
                             their record */
  uint64_t stop_deadline_ms;
  int stopping;
};

struct gw_gateway {
  gw_opts opts;
  /* One config for every association of both bindings: frozen by the
   * first one; thread-safe. */
  m2mpsk_config *cfg;
  /* The keystore new associations are made from; swapped on SIGHUP
   * (established associations keep theirs). Use gw_assoc_new(). */
  pthread_mutex_t keys_lock;
  m2mpsk_keystore *keys;
  /* --keys etcd://...: the thread that keeps `keys` in step (then never
   * swapped: SIGHUP does nothing); NULL with a key file. keys_wake is 1
   * while the workers' keys_ev exist (the thread wakes them). */
  struct m2mpsk_etcd_sync *sync;
  /* --keys pkcs11:MODULE:TOKEN: the key source's thread, which answers
   * the keystore's requests and wakes the workers like `sync`; NULL
   * otherwise. */
  struct m2mpsk_p11_source *p11;
  atomic_int keys_wake;
  /* Associations in total (both bindings), against opts.max_conn. */
  atomic_uint n_conn;
  /* Per source address counts, against opts.max_per_addr (gate by
   * gw_admit()). */
  pthread_mutex_t addr_lock;
  struct gw_addr_entry **addr_table;
  size_t addr_buckets;
  /* Where the listeners are bound (the real port when 0 was asked):
   * worker 0 binds first and fills these; the others bind the same
   * address with SO_REUSEPORT. */
  struct sockaddr_storage http_addr, coap_addr;
  socklen_t http_addr_len, coap_addr_len;
  /* Backends, resolved once. */
  struct sockaddr_storage coap_backend_addr;
  socklen_t coap_backend_addr_len;
  gw_worker *workers;
  unsigned n_workers;
  atomic_int stopping;
};

/* Creates, sets the peer tag of, and starts a responder association from
 * the gateway's config and current keystore (the one in force now: a
 * SIGHUP reload affects only associations made after it). `peer_tag` is
 * the peer's address without the port (rate limiting by address), or
 * NULL. Returns an m2mpsk status: M2MPSK_OK; M2MPSK_E_FAILED (refused at
 * start, e.g. a rate-limited peer: *out is set, check
 * m2mpsk_assoc_failure(), then free it); M2MPSK_E_LIMIT (too many
 * handshakes; *out NULL); others (*out NULL). */
int gw_assoc_new(gw_gateway *gw, m2mpsk_transport transport,
                 const char *peer_tag, m2mpsk_assoc **out);

/* Admission of a new association from `sa` (its port ignored): counts it
 * against --max-conn and --max-per-addr. GW_ADMIT_OK means counted: call
 * gw_release() with the same address when it goes. */
enum { GW_ADMIT_OK = 0, GW_ADMIT_FULL = 1, GW_ADMIT_ADDR = 2 };
int gw_admit(gw_gateway *gw, const struct sockaddr *sa);
void gw_release(gw_gateway *gw, const struct sockaddr *sa);
/* Associations counted now for `sa`'s address (to choose whom to drop
 * when full: the address holding the most goes first). */
unsigned gw_addr_count(gw_gateway *gw, const struct sockaddr *sa);

/* "HOST:PORT", "[v6]:PORT": resolves (numeric or a name) for `socktype`
 * (SOCK_STREAM, SOCK_DGRAM). 0, or -1 with a message in `err`. */
int gw_resolve(const char *hostport, int socktype, int passive,
               struct sockaddr_storage *out, socklen_t *out_len, char *err,
               size_t err_cap);

/* A non-blocking, close-on-exec socket bound to `sa` with SO_REUSEADDR and
 * SO_REUSEPORT (TCP: also listening, backlog 1024). The fd, or -1 (errno
 * set). */
int gw_bind_reuseport(int socktype, const struct sockaddr *sa, socklen_t len);

/* Monotonic milliseconds. */
uint64_t gw_now_ms(void);

/* "127.0.0.1:4433" / "[::1]:4433"; the host part only with `with_port`
 * 0 (the rate limiter's peer tag). */
void gw_format_addr(const struct sockaddr *sa, int with_port, char *out,
                    size_t cap);

/* ---- the CoAP binding (coap.c; absent from a build without it) --------- */

/* Called in the main thread for each worker in index order, before the
 * loops run: worker 0 binds opts.coap_listen (port 0: any) and fills
 * gw->coap_addr; the others bind gw->coap_addr. 0, or -1 (logged). */
int gw_coap_worker_start(gw_worker *w);
/* In the worker's thread at SIGTERM: take no new association or request.
 */
void gw_coap_worker_stop(gw_worker *w);
/* In the worker's thread: requests in flight (0: done). */
size_t gw_coap_worker_busy(gw_worker *w);
/* After the loop ended: free everything (associations too). */
void gw_coap_worker_free(gw_worker *w);
/* In the worker's thread, after the keystore changed: every established
 * association re-checks its record now; one whose record was revoked,
 * removed or replaced gets its alert and ends. */
void gw_coap_worker_keys_changed(gw_worker *w);

/* ---- the HTTP binding (http.c) ------------------------------------------ */

int gw_http_worker_start(gw_worker *w);
void gw_http_worker_stop(gw_worker *w);
size_t gw_http_worker_busy(gw_worker *w);
void gw_http_worker_free(gw_worker *w);
void gw_http_worker_keys_changed(gw_worker *w); /* as the CoAP one */

/* ---- gate.c: the oneM2M decisions, once for both bindings ---------------
 */

/* What to do with a request that arrived over `a` (established) with the
 * originator `from` (NULL or "": absent); `ae_create` is 1 for an <AE>
 * CREATE (HTTP POST with ty=2, CoAP POST with oneM2M-TY 2). Returns 0
 * (forward), 4106 or 4107 (answer it with that RSC; never forward). *why
 * (if not NULL) receives a static reason for the m2m:dbg body and the log.
 * Thread safety: one thread at a time per association. */
int gw_gate_request(const m2mpsk_assoc *a, const char *from, int ae_create,
                    const char **why);

/* After the CSE answered a forwarded request: for an <AE> CREATE
 * (`ae_create`) on an association bound to a Credential-ID, with RSC 2001
 * (`rsc`), reads m2m:ae.aei from the JSON `body` and binds it with
 * m2mpsk_assoc_bind_ae_id() (an AE-ID-Stem "Cx" is taken under the local
 * CSE-ID, "Sx" under its SP). Returns 1 (bound), 0 (nothing to bind) or
 * -1 (should have bound and could not: *why says why; the association
 * stays bound to the Credential-ID, so only an AE CREATE passes). */
int gw_gate_response(m2mpsk_assoc *a, int ae_create, int rsc, const void *body,
                     size_t len, const char **why);

/* The resource type in a Content-Type's "ty" parameter
 * ("application/json;ty=2" gives 2), -1 when there is none or it is not a
 * number. */
int gw_gate_content_type_ty(const char *ctype);

/* The identity the association is bound to now (for --identity-header /
 * --identity-option), NULL before the handshake. Borrowed from `a`. */
const char *gw_gate_identity(const m2mpsk_assoc *a);

/* Writes {"m2m:dbg":"<why>"} (JSON-escaped, cut to fit) into out. Returns
 * its length. */
size_t gw_gate_dbg_body(const char *why, char *out, size_t cap);

/* ---- log.c: one throttled logger ---------------------------------------- */

/* At most `lines_per_s` lines a second (token bucket, burst of the same
 * size); what is over is counted and reported by one line
 * "m2mpsk: gateway: N log lines suppressed" once tokens are back. 0 turns
 * throttling off. Call once, before any thread logs. */
void gw_log_init(unsigned lines_per_s, int verbose);
/* "m2mpsk: gateway: <message>" on stderr, throttled. Thread-safe. */
void gw_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* As gw_log, only with -v. */
void gw_trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "m2mpsk: gateway <message>": the lifecycle lines the contract fixes
 * (listening, ready, keys reloaded, stopping), never throttled. */
void gw_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reports what is suppressed and not reported yet, when a token is there
 * (the gateway calls it every second, so a flood that stops is still
 * reported). */
void gw_log_flush(void);
/* Lines suppressed so far (tests, the stop line). */
uint64_t gw_log_suppressed(void);

#endif
