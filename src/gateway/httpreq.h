/* The HTTP binding's request assembly: peer plaintext in, one whole
 * request out, with the gateway's bounds. Sans-IO, so that it is fuzzed
 * (tests/fuzz/fuzz_httpreq.c) exactly as http.c runs it.
 *
 * Debian's http-parser (libhttp-parser-dev 2.9) does the parsing; this
 * file only collects what its callbacks give and bounds it. Its successor
 * llhttp is not in Debian bookworm.
 *
 * Memory: an idle gw_hreq is its http_parser and a few counters, embedded
 * in the connection; the message (target, headers, body) is allocated at
 * a request's first byte and freed by gw_hreq_reset().
 *
 * Threads: a gw_hreq belongs to one thread. */
#ifndef M2MPSK_GW_HTTPREQ_H
#define M2MPSK_GW_HTTPREQ_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_hmsg gw_hmsg; /* httpreq.c */

typedef enum gw_hreq_status {
  GW_HREQ_MORE = 0,     /* all input consumed, the request is not whole */
  GW_HREQ_COMPLETE = 1, /* a whole request: read it, then gw_hreq_reset() */
  GW_HREQ_ERROR = 2     /* answer gw_hreq_error() and close */
} gw_hreq_status;

typedef struct gw_hreq {
  http_parser p;
  gw_hmsg *m;         /* NULL while idle */
  uint32_t max_head;  /* request line and headers, bytes */
  uint32_t max_body;  /* body after dechunking (and trailers), bytes */
  uint32_t head_used; /* bytes fed since the request began, in its head */
  uint16_t error;     /* the HTTP status to answer with, on GW_HREQ_ERROR */
  uint8_t state;      /* gw_hreq_status */
  uint8_t head_done;
  uint8_t keep_alive;
} gw_hreq;

/* Initialises `r` (no allocation). `max_head` bounds the request line and
 * headers (over it: 431), `max_body` the body (over it: 413). */
void gw_hreq_init(gw_hreq *r, uint32_t max_head, uint32_t max_body);

/* Feeds plaintext. Returns the bytes consumed: all of them with
 * GW_HREQ_MORE, up to the request's end with GW_HREQ_COMPLETE (the rest
 * belongs to the next request: feed it after gw_hreq_reset()), and any
 * count with GW_HREQ_ERROR. *status receives the outcome. Once COMPLETE
 * or ERROR, further feeds consume nothing until gw_hreq_reset(). */
size_t gw_hreq_feed(gw_hreq *r, const uint8_t *data, size_t len,
                    gw_hreq_status *status);

/* Frees the message and makes `r` ready for the next request. */
void gw_hreq_reset(gw_hreq *r);

/* On GW_HREQ_ERROR: 400 (malformed), 413 (body over max_body), 431 (head
 * over max_head) or 501 (a method the gateway does not forward). */
unsigned gw_hreq_error(const gw_hreq *r);

/* Whether any byte of a request has arrived (a message is held). */
int gw_hreq_started(const gw_hreq *r);

/* On GW_HREQ_COMPLETE (borrowed from r until gw_hreq_reset()): */
/* http-parser's method (enum http_method) and version. */
unsigned gw_hreq_method(const gw_hreq *r);
unsigned gw_hreq_major(const gw_hreq *r);
unsigned gw_hreq_minor(const gw_hreq *r);
/* Whether the connection may carry another request (HTTP/1.1 without
 * Connection: close, or HTTP/1.0 with Connection: keep-alive). */
int gw_hreq_keep_alive(const gw_hreq *r);
/* The request target, as sent (NUL-terminated). */
const char *gw_hreq_target(const gw_hreq *r);
/* The body (NULL when empty). */
const uint8_t *gw_hreq_body(const gw_hreq *r, size_t *len);
/* Headers in order: *it starts at 0; 1 with *name and *value set, 0 at the
 * end. Names and values are NUL-terminated and hold no CR, LF or NUL. */
int gw_hreq_header_next(const gw_hreq *r, size_t *it, const char **name,
                        const char **value);
/* The first header named `name` (any case), or NULL. Also usable after
 * GW_HREQ_ERROR for what arrived whole (to copy X-M2M-RI). */
const char *gw_hreq_header(const gw_hreq *r, const char *name);

#endif
