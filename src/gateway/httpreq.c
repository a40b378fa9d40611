/* Request assembly over http-parser (httpreq.h). http-parser checks the
 * syntax; here every piece its callbacks hand over is copied into one
 * message, with the gateway's bounds, and nothing is parsed by hand. */
#include "httpreq.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The message of the request being assembled. `head` holds the target and
 * the headers as "target\0name\0value\0name\0value\0...", always with a NUL
 * at head[head_len]. */
struct gw_hmsg {
  char *head;
  uint32_t head_len, head_cap;
  uint8_t *body;
  size_t body_len, body_cap;
  size_t trailers; /* bytes of chunked trailers: counted, not kept */
  uint32_t piece;  /* where the piece being appended starts */
  uint8_t in;      /* what was appended last: 0 target, 1 name, 2 value */
};

enum { IN_TARGET = 0, IN_NAME = 1, IN_VALUE = 2, IN_DONE = 3 };

static int fail(gw_hreq *r, unsigned code) {
  if (r->state != GW_HREQ_ERROR) {
    r->state = GW_HREQ_ERROR;
    r->error = (uint16_t)code;
  }
  return -1;
}

static int head_append(gw_hreq *r, const char *at, size_t len) {
  gw_hmsg *m = r->m;
  /* The head is bounded by max_head bytes fed (gw_hreq_feed), plus one
   * separator per piece: never more than twice max_head. */
  if (len > (size_t)UINT32_MAX - m->head_len - 2 ||
      m->head_len + len + 2 > 2 * (size_t)r->max_head + 16)
    return fail(r, 431);
  size_t need = m->head_len + len + 1;
  if (need > m->head_cap) {
    size_t cap = m->head_cap ? m->head_cap : 256;
    while (cap < need)
      cap *= 2;
    char *p = realloc(m->head, cap);
    if (p == NULL)
      return fail(r, 503);
    m->head = p;
    m->head_cap = (uint32_t)cap;
  }
  memcpy(m->head + m->head_len, at, len);
  m->head_len += (uint32_t)len;
  m->head[m->head_len] = '\0';
  return 0;
}

/* No control character (CR, LF and NUL among them) but HTAB reaches a
 * header or target the gateway writes again. */
static int clean(const char *at, size_t len) {
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)at[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return 0;
  }
  return 1;
}

/* A header name is a token (RFC 9110 §5.6.2): http-parser as Debian
 * builds it lets a space into a name ("Bad Name: x"). */
static int token(const char *s, size_t len) {
  static const char tchar[] = "!#$%&'*+-.^_`|~";
  if (len == 0)
    return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
          (ch >= 'A' && ch <= 'Z') || (ch != 0 && strchr(tchar, ch))))
      return 0;
  }
  return 1;
}

/* Moves on to the next piece (a NUL between them). http-parser leaves a
 * value's trailing whitespace in it (RFC 9110 §5.5: not part of it). */
static int head_switch(gw_hreq *r, uint8_t to) {
  gw_hmsg *m = r->m;
  if (m->in == to)
    return 0;
  if (m->in == IN_NAME && !token(m->head + m->piece, m->head_len - m->piece))
    return fail(r, 400);
  if (m->in == IN_VALUE)
    while (m->head_len > m->piece && (m->head[m->head_len - 1] == ' ' ||
                                      m->head[m->head_len - 1] == '\t'))
      m->head[--m->head_len] = '\0';
  m->in = to;
  if (head_append(r, "", 1) != 0) /* the string literal's NUL */
    return -1;
  m->piece = m->head_len;
  return 0;
}

static int on_message_begin(http_parser *p) {
  gw_hreq *r = p->data;
  if (r->m != NULL)
    return 0;
  r->m = calloc(1, sizeof(*r->m));
  if (r->m == NULL)
    return fail(r, 503);
  return head_append(r, "", 0);
}

static int on_url(http_parser *p, const char *at, size_t len) {
  gw_hreq *r = p->data;
  if (!clean(at, len))
    return fail(r, 400);
  return head_append(r, at, len);
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  gw_hreq *r = p->data;
  if (r->head_done) { /* a chunked body's trailers: counted, dropped */
    r->m->trailers += len;
    return r->m->trailers + r->m->body_len > r->max_body ? fail(r, 413) : 0;
  }
  if (!clean(at, len) || head_switch(r, IN_NAME) != 0)
    return fail(r, 400);
  return head_append(r, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  gw_hreq *r = p->data;
  if (r->head_done) {
    r->m->trailers += len;
    return r->m->trailers + r->m->body_len > r->max_body ? fail(r, 413) : 0;
  }
  if (!clean(at, len) || head_switch(r, IN_VALUE) != 0)
    return fail(r, 400);
  return head_append(r, at, len);
}

static int on_headers_complete(http_parser *p) {
  gw_hreq *r = p->data;
  if (head_switch(r, IN_DONE) != 0)
    return -1;
  r->head_done = 1;
  switch (p->method) {
  case HTTP_GET:
  case HTTP_POST:
  case HTTP_PUT:
  case HTTP_DELETE:
  case HTTP_HEAD:
  case HTTP_OPTIONS:
  case HTTP_PATCH: break;
  default: return fail(r, 501);
  }
  if (p->http_major != 1)
    return fail(r, 505);
  /* http-parser leaves content_length at ULLONG_MAX without the header. */
  if (p->content_length != ULLONG_MAX && p->content_length > r->max_body)
    return fail(r, 413);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  gw_hreq *r = p->data;
  gw_hmsg *m = r->m;
  if (len > r->max_body - m->body_len || m->body_len + len > r->max_body)
    return fail(r, 413);
  size_t need = m->body_len + len;
  if (need > m->body_cap) {
    size_t cap = m->body_cap ? m->body_cap : 1024;
    /* A Content-Length (within max_body) is allocated at once. */
    if (p->content_length != ULLONG_MAX &&
        p->content_length <= r->max_body - need)
      cap = need + (size_t)p->content_length;
    while (cap < need)
      cap *= 2;
    if (cap > r->max_body)
      cap = r->max_body;
    uint8_t *b = realloc(m->body, cap);
    if (b == NULL)
      return fail(r, 503);
    m->body = b;
    m->body_cap = cap;
  }
  memcpy(m->body + m->body_len, at, len);
  m->body_len += len;
  return 0;
}

static int on_message_complete(http_parser *p) {
  gw_hreq *r = p->data;
  r->keep_alive = (uint8_t)(http_should_keep_alive(p) != 0);
  r->state = GW_HREQ_COMPLETE;
  /* http_parser_execute() returns at this request's last byte. */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings k_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void gw_hreq_init(gw_hreq *r, uint32_t max_head, uint32_t max_body) {
  memset(r, 0, sizeof(*r));
  r->max_head = max_head;
  r->max_body = max_body;
  http_parser_init(&r->p, HTTP_REQUEST);
  r->p.data = r;
}

void gw_hreq_reset(gw_hreq *r) {
  if (r->m != NULL) {
    free(r->m->head);
    free(r->m->body);
    free(r->m);
  }
  gw_hreq_init(r, r->max_head, r->max_body);
}

size_t gw_hreq_feed(gw_hreq *r, const uint8_t *data, size_t len,
                    gw_hreq_status *status) {
  size_t total = 0;
  while (r->state == GW_HREQ_MORE && total < len) {
    size_t n = len - total;
    if (!r->head_done) {
      /* The head is bounded by what is fed before it ends, blank lines
       * and whitespace included. */
      size_t room = r->max_head - r->head_used;
      if (room == 0) {
        (void)fail(r, 431);
        break;
      }
      if (n > room)
        n = room;
    }
    int in_head = !r->head_done;
    size_t used =
        http_parser_execute(&r->p, &k_settings, (const char *)data + total, n);
    if (in_head)
      r->head_used += (uint32_t)used;
    total += used;
    if (r->state != GW_HREQ_MORE)
      break;
    enum http_errno e = HTTP_PARSER_ERRNO(&r->p);
    if (e != HPE_OK || used < n) {
      (void)fail(r, e == HPE_HEADER_OVERFLOW ? 431 : 400);
      break;
    }
  }
  *status = (gw_hreq_status)r->state;
  return total;
}

unsigned gw_hreq_error(const gw_hreq *r) {
  return r->state == GW_HREQ_ERROR ? r->error : 0;
}

int gw_hreq_started(const gw_hreq *r) {
  return r->m != NULL || r->head_used > 0;
}

unsigned gw_hreq_method(const gw_hreq *r) {
  return r->p.method;
}
unsigned gw_hreq_major(const gw_hreq *r) {
  return r->p.http_major;
}
unsigned gw_hreq_minor(const gw_hreq *r) {
  return r->p.http_minor;
}
int gw_hreq_keep_alive(const gw_hreq *r) {
  return r->keep_alive;
}

const char *gw_hreq_target(const gw_hreq *r) {
  return r->m != NULL && r->m->head != NULL ? r->m->head : "";
}

const uint8_t *gw_hreq_body(const gw_hreq *r, size_t *len) {
  *len = r->m != NULL ? r->m->body_len : 0;
  return *len > 0 ? r->m->body : NULL;
}

int gw_hreq_header_next(const gw_hreq *r, size_t *it, const char **name,
                        const char **value) {
  const gw_hmsg *m = r->m;
  if (m == NULL || m->head == NULL)
    return 0;
  size_t off = *it;
  if (off == 0)
    off = strlen(m->head) + 1;
  if (off >= m->head_len)
    return 0;
  const char *n = m->head + off;
  off += strlen(n) + 1;
  if (off > m->head_len)
    return 0; /* a name whose value has not arrived */
  const char *v = m->head + off;
  off += strlen(v) + 1;
  *name = n;
  *value = v;
  *it = off;
  return 1;
}

const char *gw_hreq_header(const gw_hreq *r, const char *name) {
  size_t it = 0;
  const char *n, *v;
  while (gw_hreq_header_next(r, &it, &n, &v))
    if (strcasecmp(n, name) == 0)
      return v;
  return NULL;
}
