/* src/gateway/httpreq.c: assembling a device's HTTP requests over
 * http-parser, each bound and refusal provoked. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "httpreq.h"

/* Feeds `text` in pieces of `cut` bytes (0: at once) until the request
 * ends; returns the status, *used the bytes consumed in all. */
static gw_hreq_status feed(gw_hreq *r, const char *text, size_t cut,
                           size_t *used) {
  size_t len = strlen(text), at = 0;
  gw_hreq_status st = GW_HREQ_MORE;
  if (cut == 0)
    cut = len;
  while (at < len && st == GW_HREQ_MORE) {
    size_t n = len - at < cut ? len - at : cut;
    at += gw_hreq_feed(r, (const uint8_t *)text + at, n, &st);
  }
  if (used)
    *used = at;
  return st;
}

Test(httpreq, a_request_whole_in_any_pieces) {
  const char *req =
      "POST /cse-in?x=1 HTTP/1.1\r\nHost: cse\r\n"
      "X-M2M-Origin:   Cae-1 \t\r\nContent-Length: 5\r\n\r\nhello";
  for (size_t cut = 0; cut < 8; cut++) {
    gw_hreq r;
    gw_hreq_init(&r, 4096, 1024);
    cr_assert_eq(feed(&r, req, cut, NULL), GW_HREQ_COMPLETE);
    cr_assert_eq(gw_hreq_method(&r), HTTP_POST);
    cr_assert_str_eq(gw_hreq_target(&r), "/cse-in?x=1");
    cr_assert_str_eq(gw_hreq_header(&r, "x-m2m-origin"), "Cae-1",
                     "trailing whitespace is not part of a value");
    size_t len;
    const uint8_t *body = gw_hreq_body(&r, &len);
    cr_assert(len == 5 && memcmp(body, "hello", 5) == 0);
    cr_assert(gw_hreq_keep_alive(&r));
    gw_hreq_reset(&r);
    cr_assert(!gw_hreq_started(&r));
  }
}

Test(httpreq, pipelined_requests_stop_at_each_end) {
  const char *two = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.0\r\n\r\n";
  gw_hreq r;
  gw_hreq_init(&r, 4096, 1024);
  size_t used;
  cr_assert_eq(feed(&r, two, 0, &used), GW_HREQ_COMPLETE);
  cr_assert_eq(used, strlen("GET /a HTTP/1.1\r\n\r\n"));
  cr_assert_str_eq(gw_hreq_target(&r), "/a");
  gw_hreq_status st;
  cr_assert_eq(gw_hreq_feed(&r, (const uint8_t *)two + used, 5, &st), 0,
               "nothing more is taken until the reset");
  cr_assert_eq(st, GW_HREQ_COMPLETE);
  gw_hreq_reset(&r);
  cr_assert_eq(feed(&r, two + used, 0, NULL), GW_HREQ_COMPLETE);
  cr_assert_str_eq(gw_hreq_target(&r), "/b");
  cr_assert(!gw_hreq_keep_alive(&r), "HTTP/1.0 without keep-alive");
  gw_hreq_reset(&r);
}

Test(httpreq, the_head_bound_is_exact) {
  const char *req = "GET / HTTP/1.1\r\nX-A: b\r\n\r\n"; /* 26 bytes */
  gw_hreq r;
  gw_hreq_init(&r, (uint32_t)strlen(req), 0);
  cr_assert_eq(feed(&r, req, 0, NULL), GW_HREQ_COMPLETE);
  gw_hreq_reset(&r);
  gw_hreq_init(&r, (uint32_t)strlen(req) - 1, 0);
  cr_assert_eq(feed(&r, req, 3, NULL), GW_HREQ_ERROR);
  cr_assert_eq(gw_hreq_error(&r), 431);
  gw_hreq_reset(&r);
  gw_hreq_init(&r, 64, 0);
  cr_assert_eq(feed(&r,
                    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
                    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n",
                    0, NULL),
               GW_HREQ_MORE, "blank lines count toward the head");
  cr_assert_eq(feed(&r, "\r\n\r\n\r\n\r\n\r\n\r\n\r\n", 0, NULL), GW_HREQ_ERROR,
               "past 64 bytes");
  cr_assert_eq(gw_hreq_error(&r), 431);
  gw_hreq_reset(&r);
}

Test(httpreq, the_body_bound_is_exact) {
  gw_hreq r;
  gw_hreq_init(&r, 4096, 4);
  cr_assert_eq(
      feed(&r, "PUT / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", 0, NULL),
      GW_HREQ_COMPLETE);
  gw_hreq_reset(&r);
  cr_assert_eq(feed(&r,
                    "PUT / HTTP/1.1\r\nX-M2M-RI: r9\r\nContent-Length: 5\r\n"
                    "\r\n",
                    0, NULL),
               GW_HREQ_ERROR, "refused at the headers, before the body");
  cr_assert_eq(gw_hreq_error(&r), 413);
  cr_assert_str_eq(gw_hreq_header(&r, "X-M2M-RI"), "r9");
  gw_hreq_reset(&r);
  cr_assert_eq(feed(&r,
                    "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                    1, NULL),
               GW_HREQ_ERROR, "a chunked body counts after dechunking");
  cr_assert_eq(gw_hreq_error(&r), 413);
  gw_hreq_reset(&r);
  cr_assert_eq(feed(&r,
                    "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "2\r\nab\r\n0\r\nX-Trailer: 123\r\n\r\n",
                    0, NULL),
               GW_HREQ_ERROR, "trailers count with the body");
  cr_assert_eq(gw_hreq_error(&r), 413);
  gw_hreq_reset(&r);
}

Test(httpreq, refusals) {
  static const struct {
    const char *text;
    unsigned code;
  } cases[] = {
      {"NOT HTTP\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
       "\r\n0\r\n\r\n",
       400},
      {"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400},
      {"CONNECT cse:443 HTTP/1.1\r\n\r\n", 501},
      {"TRACE / HTTP/1.1\r\n\r\n", 501},
      {"GET / HTTP/2.0\r\n\r\n", 505},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    gw_hreq r;
    gw_hreq_init(&r, 4096, 1024);
    cr_assert_eq(feed(&r, cases[i].text, 0, NULL), GW_HREQ_ERROR, "%s",
                 cases[i].text);
    cr_assert_eq(gw_hreq_error(&r), cases[i].code, "%s: %u", cases[i].text,
                 gw_hreq_error(&r));
    gw_hreq_reset(&r);
  }
}

Test(httpreq, an_idle_parser_holds_no_memory) {
  gw_hreq r;
  gw_hreq_init(&r, 4096, 1024);
  cr_assert(!gw_hreq_started(&r) && r.m == NULL);
  cr_assert_eq(feed(&r, "GET / HTTP/1.1\r\n\r\n", 0, NULL), GW_HREQ_COMPLETE);
  cr_assert(r.m != NULL);
  gw_hreq_reset(&r);
  cr_assert(r.m == NULL);
}
