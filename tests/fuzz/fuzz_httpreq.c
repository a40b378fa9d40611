/* m2mpsk gateway: the assembly of a device's HTTP requests
 * (src/gateway/httpreq.c, built into the target) from the plaintext a peer
 * controls, as http.c runs it: http-parser's callbacks, the head and body
 * bounds, the header collection, pipelined requests (what follows a whole
 * request is fed after gw_hreq_reset()), and an error ending the stream.
 *
 * Checks every whole request (allowed method, HTTP/1.x, a target, header
 * names that are tokens, no CR, LF or NUL, the bounds held), every error's
 * status, and that the outcome does not depend on how the stream was cut: the
 * same bytes fed at once must give the same requests and end the same way.
 *
 * Input:  opts chunk*
 *   opts bits 0-1: the head bound (64, 300, 4096, 65536 bytes)
 *   opts bits 2-3: the body bound (0, 16, 1000, 1 MiB)
 *   chunk := hi lo payload, common.h's format: one feed with len
 *            ((hi & 0x3f) << 8 | lo) bytes; hi's bits 6 and 7 are ignored */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "httpreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint32_t k_head[4] = {64, 300, 4096, 65536};
static const uint32_t k_body[4] = {0, 16, 1000, 1u << 20};

/* What a stream gave: a running hash of the requests and the end. */
typedef struct outcome {
  uint64_t hash;
  unsigned requests;
  unsigned error;
} outcome;

static void mix(outcome *o, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    o->hash = (o->hash ^ b[i]) * 1099511628211ull;
  o->hash = (o->hash ^ 0xff) * 1099511628211ull; /* a separator */
}

static void check_request(const gw_hreq *r, outcome *o) {
  unsigned m = gw_hreq_method(r);
  fz_check(m == HTTP_GET || m == HTTP_POST || m == HTTP_PUT ||
               m == HTTP_DELETE || m == HTTP_HEAD || m == HTTP_OPTIONS ||
               m == HTTP_PATCH,
           "an allowed method");
  fz_check(gw_hreq_major(r) == 1, "HTTP/1.x");
  const char *target = gw_hreq_target(r);
  size_t head = strlen(target);
  fz_check(head > 0 && head <= r->max_head, "a target within the bound");
  mix(o, &m, sizeof(m));
  mix(o, target, head);
  size_t it = 0;
  const char *name, *value;
  while (gw_hreq_header_next(r, &it, &name, &value)) {
    size_t nl = strlen(name), vl = strlen(value);
    fz_check(strpbrk(name, "\r\n") == NULL && strpbrk(value, "\r\n") == NULL,
             "no CR or LF in a header");
    fz_check(nl > 0 && strpbrk(name, " \t:()<>@,;\\\"/[]?={}") == NULL,
             "a header name is a token");
    head += nl + vl;
    fz_check(gw_hreq_header(r, name) != NULL, "a header is found by name");
    mix(o, name, nl);
    mix(o, value, vl);
  }
  fz_check(head <= r->max_head, "the head within its bound");
  size_t blen;
  const uint8_t *body = gw_hreq_body(r, &blen);
  fz_check(blen <= r->max_body && (blen == 0) == (body == NULL),
           "the body within its bound");
  if (blen > 0)
    mix(o, body, blen);
  int ka = gw_hreq_keep_alive(r);
  mix(o, &ka, sizeof(ka));
  o->requests++;
}

/* Feeds one piece, request after request; 1 when the stream ended (an
 * error, after which http.c answers and closes). */
static int feed(gw_hreq *r, const uint8_t *p, size_t n, outcome *o) {
  while (n > 0) {
    gw_hreq_status st;
    size_t used = gw_hreq_feed(r, p, n, &st);
    fz_check(used <= n, "consumed at most what was fed");
    if (st == GW_HREQ_MORE) {
      fz_check(used == n, "MORE consumes everything");
      fz_check(gw_hreq_error(r) == 0, "no error while MORE");
      return 0;
    }
    if (st == GW_HREQ_ERROR) {
      unsigned e = gw_hreq_error(r);
      fz_check(e == 400 || e == 413 || e == 431 || e == 501 || e == 505,
               "an error status");
      (void)gw_hreq_header(r, "X-M2M-RI"); /* http.c echoes it */
      o->error = e;
      gw_hreq_reset(r);
      fz_check(!gw_hreq_started(r), "reset");
      return 1;
    }
    fz_check(used > 0, "a whole request took bytes");
    check_request(r, o);
    /* Fed again while complete: nothing is consumed. */
    gw_hreq_status again;
    fz_check(gw_hreq_feed(r, p + used, n - used, &again) == 0 &&
                 again == GW_HREQ_COMPLETE,
             "complete until reset");
    gw_hreq_reset(r);
    fz_check(!gw_hreq_started(r), "reset");
    p += used;
    n -= used;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader rd = {data, size};
  uint8_t opts = fz_byte(&rd);
  uint32_t max_head = k_head[opts & 3], max_body = k_body[(opts >> 2) & 3];

  /* Pieces as given, and the whole stream for the comparison. */
  uint8_t *all = malloc(size + 1);
  fz_check(all != NULL, "malloc");
  size_t total = 0;
  gw_hreq r;
  gw_hreq_init(&r, max_head, max_body);
  outcome cut = {14695981039346656037ull, 0, 0};
  int ended = 0;
  fz_chunk c;
  while (fz_next_chunk(&rd, &c)) {
    memcpy(all + total, c.data, c.len);
    total += c.len;
    if (!ended)
      ended = feed(&r, c.data, c.len, &cut);
  }
  gw_hreq_reset(&r);

  gw_hreq_init(&r, max_head, max_body);
  outcome whole = {14695981039346656037ull, 0, 0};
  (void)feed(&r, all, total, &whole);
  gw_hreq_reset(&r);
  fz_check(whole.requests == cut.requests && whole.hash == cut.hash &&
               (whole.error != 0) == (cut.error != 0),
           "the same requests however the stream is cut");
  /* http-parser hands over a token's bytes at the end of each piece, so a
   * bound may be passed (413, 431) in a piece before the byte that makes
   * the whole stream malformed (400) is seen: the stream ends either
   * way. */
  fz_check(whole.error == cut.error || whole.error == 400 || cut.error == 400,
           "the same error however the stream is cut");
  free(all);
  return 0;
}
