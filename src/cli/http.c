/* m2mpsk serve --http: Entity B answers oneM2M requests in the HTTP binding
 * (TS-0009) that arrive over each association, instead of echoing them.
 *
 * Only what TS-0003's originator check needs is implemented: the request
 * line, the headers (X-M2M-Origin is the From, X-M2M-RI is echoed,
 * Content-Type's ty parameter tells an <AE> CREATE) and a Content-Length
 * body, which is not interpreted. Every request is checked with
 * m2mpsk_originator_check() against what the association is bound to:
 *
 *  - accepted <AE> CREATE: 201, X-M2M-RSC 2001, {"m2m:ae":{"aei":...}}. On
 *    an association bound to a Credential-ID the AE-ID is assigned here and
 *    bound with m2mpsk_assoc_bind_ae_id(), so that later requests are
 *    checked against it;
 *  - any other accepted request: 200, X-M2M-RSC 2000;
 *  - 4106 / 4107: 403, X-M2M-RSC 4106 / 4107.
 *
 * Input is buffered per association and bounded (HTTP_HEAD_MAX bytes of
 * request line and headers, HTTP_BODY_MAX of body). Malformed or oversized
 * input is answered with 400 (X-M2M-RSC 4000) and the association is
 * closed. Every request gets one "request" log line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "cli.h"

#define HTTP_HEAD_MAX 8192  /* request line and headers, with line ends */
#define HTTP_BODY_MAX 16384 /* Content-Length */
#define HTTP_HEADERS_MAX 64 /* header lines */
#define HTTP_FIELD_MAX 1024 /* one value we keep (From, RI, RVI, type) */
/* Buffered input: what is left of one request (less than a whole one)
 * and the next read, with room to spare. */
#define HTTP_BUF_MAX (2 * (HTTP_HEAD_MAX + HTTP_BODY_MAX))

struct cli_http {
  uint8_t *buf;
  size_t len;
};

typedef struct request {
  char method[16];
  char target[HTTP_FIELD_MAX];
  char from[HTTP_FIELD_MAX]; /* "" when absent */
  char ri[HTTP_FIELD_MAX];
  char rvi[HTTP_FIELD_MAX];
  char ctype[HTTP_FIELD_MAX];
  int has_from, has_ri, has_rvi, has_ctype, has_length;
  size_t body_len;
  long ty; /* -1: no ty parameter */
} request;

enum { PARSE_MORE = 0, PARSE_OK = 1, PARSE_BAD = -1 };

void cli_http_free(cli_http *h) {
  if (h == NULL)
    return;
  free(h->buf);
  free(h);
}

static int is_tchar(int ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') ||
         (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* A copy of a header value for the log: printable, no spaces, bounded. */
static void log_safe(const char *in, char *out, size_t cap) {
  size_t j = 0;
  if (in == NULL || *in == '\0') {
    snprintf(out, cap, "-");
    return;
  }
  size_t i = 0;
  for (; in[i] != '\0' && j + 4 < cap; i++)
    out[j++] = (in[i] > ' ' && in[i] <= '~' && in[i] != '"') ? in[i] : '?';
  if (in[i] != '\0') { /* cut: room for "..." is left */
    memcpy(out + j, "...", 3);
    j += 3;
  }
  out[j] = '\0';
}

/* Copies a header value into one of the request's fields, once. */
static int keep(char *field, int *seen, const char *value, size_t n,
                const char **why) {
  if (*seen) {
    *why = "a header that must appear once is repeated";
    return -1;
  }
  if (n >= HTTP_FIELD_MAX) {
    *why = "a header value is too long";
    return -1;
  }
  memcpy(field, value, n);
  field[n] = '\0';
  *seen = 1;
  return 0;
}

/* Content-Type "application/json;ty=2": the ty parameter, -1 if none. */
static int parse_ty(const char *ctype, long *ty, const char **why) {
  *ty = -1;
  const char *p = strchr(ctype, ';');
  while (p != NULL) {
    p++;
    while (*p == ' ' || *p == '\t')
      p++;
    const char *end = strchr(p, ';');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
      n--;
    if (n > 3 && strncasecmp(p, "ty=", 3) == 0) {
      if (*ty != -1) {
        *why = "Content-Type has two ty parameters";
        return -1;
      }
      *ty = 0;
      for (size_t i = 3; i < n; i++) {
        if (p[i] < '0' || p[i] > '9' || i > 8) {
          *why = "Content-Type's ty is not a resource type number";
          return -1;
        }
        *ty = *ty * 10 + (p[i] - '0');
      }
    }
    p = end;
  }
  return 0;
}

/* One header line (CR already stripped), name ":" OWS value OWS. */
static int parse_header(request *r, const char *line, size_t n,
                        const char **why) {
  size_t colon = 0;
  while (colon < n && is_tchar((unsigned char)line[colon]))
    colon++;
  if (colon == 0 || colon >= n || line[colon] != ':') {
    *why = (n > 0 && (line[0] == ' ' || line[0] == '\t'))
               ? "folded header lines are not accepted"
               : "a header line is not 'name: value'";
    return -1;
  }
  size_t v = colon + 1, e = n;
  while (v < e && (line[v] == ' ' || line[v] == '\t'))
    v++;
  while (e > v && (line[e - 1] == ' ' || line[e - 1] == '\t'))
    e--;
  for (size_t i = v; i < e; i++) {
    unsigned char ch = (unsigned char)line[i];
    if ((ch < ' ' && ch != '\t') || ch > '~') {
      *why = "a header value has a control or non-ASCII byte";
      return -1;
    }
  }
  const char *value = line + v;
  size_t vn = e - v;
#define IS(name)                                                               \
  (colon == sizeof(name) - 1 && strncasecmp(line, name, colon) == 0)
  if (IS("X-M2M-Origin"))
    return keep(r->from, &r->has_from, value, vn, why);
  if (IS("X-M2M-RI"))
    return keep(r->ri, &r->has_ri, value, vn, why);
  if (IS("X-M2M-RVI"))
    return keep(r->rvi, &r->has_rvi, value, vn, why);
  if (IS("Content-Type"))
    return keep(r->ctype, &r->has_ctype, value, vn, why);
  if (IS("Transfer-Encoding")) {
    *why = "Transfer-Encoding is not supported; send Content-Length";
    return -1;
  }
  if (IS("Content-Length")) {
    if (r->has_length) {
      *why = "Content-Length is repeated";
      return -1;
    }
    size_t len = 0;
    if (vn == 0) {
      *why = "Content-Length is empty";
      return -1;
    }
    for (size_t i = 0; i < vn; i++) {
      if (value[i] < '0' || value[i] > '9') {
        *why = "Content-Length is not a number";
        return -1;
      }
      len = len * 10 + (size_t)(value[i] - '0');
      if (len > HTTP_BODY_MAX) {
        *why = "the body is larger than 16384 bytes";
        return -1;
      }
    }
    r->body_len = len;
    r->has_length = 1;
  }
#undef IS
  return 0;
}

/* "METHOD SP /target SP HTTP/1.x". */
static int parse_request_line(request *r, const char *line, size_t n,
                              const char **why) {
  const char *sp1 = memchr(line, ' ', n);
  const char *sp2 =
      sp1 ? memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - line)) : NULL;
  *why = "the request line is not 'METHOD /target HTTP/1.1'";
  if (sp1 == NULL || sp2 == NULL)
    return -1;
  size_t mn = (size_t)(sp1 - line), tn = (size_t)(sp2 - sp1 - 1);
  size_t vn = n - (size_t)(sp2 + 1 - line);
  if (mn == 0 || mn >= sizeof(r->method) || tn == 0 ||
      tn >= sizeof(r->target) || sp1[1] != '/')
    return -1;
  for (size_t i = 0; i < mn; i++)
    if (!is_tchar((unsigned char)line[i]))
      return -1;
  for (size_t i = 0; i < tn; i++)
    if (sp1[1 + i] <= ' ' || sp1[1 + i] > '~')
      return -1;
  if (!(vn == 8 && (memcmp(sp2 + 1, "HTTP/1.1", 8) == 0 ||
                    memcmp(sp2 + 1, "HTTP/1.0", 8) == 0)))
    return -1;
  memcpy(r->method, line, mn);
  r->method[mn] = '\0';
  memcpy(r->target, sp1 + 1, tn);
  r->target[tn] = '\0';
  return 0;
}

/* Parses the request at the start of buf[0..len). PARSE_OK sets *used to
 * its length (head and body); PARSE_MORE wants more input. */
static int parse(const uint8_t *buf, size_t len, request *r, size_t *used,
                 const char **why) {
  size_t pos = 0, lines = 0;
  int have_request_line = 0;
  memset(r, 0, sizeof(*r));
  r->ty = -1;
  for (;;) {
    if (pos > HTTP_HEAD_MAX) {
      *why = "the request line and headers are longer than 8192 bytes";
      return PARSE_BAD;
    }
    const uint8_t *nl = memchr(buf + pos, '\n', len - pos);
    if (nl == NULL) {
      if (len - pos > HTTP_HEAD_MAX) {
        *why = "the request line and headers are longer than 8192 bytes";
        return PARSE_BAD;
      }
      return PARSE_MORE;
    }
    size_t n = (size_t)(nl - (buf + pos));
    size_t next = pos + n + 1;
    if (next > HTTP_HEAD_MAX) {
      *why = "the request line and headers are longer than 8192 bytes";
      return PARSE_BAD;
    }
    if (n > 0 && buf[pos + n - 1] == '\r')
      n--;
    const char *line = (const char *)buf + pos;
    if (memchr(line, '\r', n) != NULL || memchr(line, '\0', n) != NULL) {
      *why = "a bare CR or a NUL byte in the head";
      return PARSE_BAD;
    }
    pos = next;
    if (!have_request_line) {
      if (n == 0 && lines++ < 4) /* RFC 9112 2.2: skip empty lines first */
        continue;
      if (parse_request_line(r, line, n, why) != 0)
        return PARSE_BAD;
      have_request_line = 1;
      lines = 0;
      continue;
    }
    if (n == 0)
      break; /* end of the head */
    if (++lines > HTTP_HEADERS_MAX) {
      *why = "more than 64 header lines";
      return PARSE_BAD;
    }
    if (parse_header(r, line, n, why) != 0)
      return PARSE_BAD;
  }
  if (r->has_ctype && parse_ty(r->ctype, &r->ty, why) != 0)
    return PARSE_BAD;
  if (len - pos < r->body_len)
    return PARSE_MORE;
  *used = pos + r->body_len;
  return PARSE_OK;
}

/* The operation TS-0009 maps the method to. */
static const char *operation(const request *r) {
  if (strcmp(r->method, "POST") == 0)
    return r->ty >= 0 ? "create" : "notify";
  if (strcmp(r->method, "GET") == 0)
    return "retrieve";
  if (strcmp(r->method, "PUT") == 0)
    return "update";
  if (strcmp(r->method, "DELETE") == 0)
    return "delete";
  return NULL;
}

/* Sends one response over the association. */
static int respond(m2mpsk_assoc *a, int status, const char *reason, int rsc,
                   const request *r, const char *ctype, const char *body,
                   int close_after) {
  char head[3 * HTTP_FIELD_MAX + 512];
  size_t body_len = body ? strlen(body) : 0;
  int n = snprintf(
      head, sizeof(head),
      "HTTP/1.1 %d %s\r\nX-M2M-RSC: %d\r\n%s%s%s%s%s%s%s%s%sContent-Length: "
      "%zu\r\n%s\r\n",
      status, reason, rsc, r && r->has_ri ? "X-M2M-RI: " : "",
      r && r->has_ri ? r->ri : "", r && r->has_ri ? "\r\n" : "",
      r && r->has_rvi ? "X-M2M-RVI: " : "", r && r->has_rvi ? r->rvi : "",
      r && r->has_rvi ? "\r\n" : "", ctype ? "Content-Type: " : "",
      ctype ? ctype : "", ctype ? "\r\n" : "", body_len,
      close_after ? "Connection: close\r\n" : "");
  if (n < 0 || (size_t)n >= sizeof(head))
    return -1;
  size_t total = (size_t)n + body_len, w;
  char *msg = malloc(total);
  if (msg == NULL)
    return -1;
  memcpy(msg, head, (size_t)n);
  if (body_len)
    memcpy(msg + n, body, body_len);
  int rc = m2mpsk_assoc_write(a, (const uint8_t *)msg, total, &w);
  free(msg);
  return rc == M2MPSK_OK ? 0 : -1;
}

/* The AE-ID to assign at registration over a Credential-ID binding: the
 * From if it is a full AE-ID, the stem under this CSE ("Cx") or SP ("Sx"),
 * or a fresh stem for a bare "C", "S" or no From. */
static int assign_ae_id(const char *local_id, const char *from, char *out,
                        size_t cap) {
  char fresh[24];
  uint8_t rnd[8];
  static const char hex[] = "0123456789abcdef";
  if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
    return -1;
  for (size_t i = 0; i < sizeof(rnd); i++) {
    fresh[2 * i] = hex[rnd[i] >> 4];
    fresh[2 * i + 1] = hex[rnd[i] & 15];
  }
  fresh[2 * sizeof(rnd)] = '\0';
  /* The SP part of the local CSE-ID: "//sp" of "//sp/cse", "" of "/cse". */
  size_t sp = 0;
  if (strncmp(local_id, "//", 2) == 0) {
    const char *slash = strchr(local_id + 2, '/');
    sp = slash ? (size_t)(slash - local_id) : strlen(local_id);
  }
  int n;
  if (from == NULL || from[0] == '\0' || strcmp(from, "C") == 0)
    n = snprintf(out, cap, "%s/C%s", local_id, fresh);
  else if (strcmp(from, "S") == 0)
    n = snprintf(out, cap, "%.*s/S%s", (int)sp, local_id, fresh);
  else if (from[0] == 'C')
    n = snprintf(out, cap, "%s/%s", local_id, from);
  else if (from[0] == 'S')
    n = snprintf(out, cap, "%.*s/%s", (int)sp, local_id, from);
  else
    n = snprintf(out, cap, "%s", from);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* Answers one parsed request. 0, or -1 to close the association. */
static int answer(m2mpsk_assoc *a, const char *peer, const request *r) {
  char from_log[160], ri_log[160], bound_log[160];
  const char *op = operation(r);
  int ae_create = op != NULL && strcmp(op, "create") == 0 && r->ty == 2;
  const char *bound = m2mpsk_assoc_peer_id(a);
  const char *local = m2mpsk_assoc_local_id(a);
  int credential = m2mpsk_assoc_peer_id_is_credential(a) == 1;
  log_safe(r->has_from ? r->from : NULL, from_log, sizeof(from_log));
  log_safe(r->has_ri ? r->ri : NULL, ri_log, sizeof(ri_log));
  log_safe(bound, bound_log, sizeof(bound_log));
  if (op == NULL) {
    cli_log("request peer=%s from=%s verdict=none op=- method=%s ri=%s "
            "status=405 rsc=4005",
            peer, from_log, r->method, ri_log);
    return respond(a, 405, "Method Not Allowed", 4005, r, NULL, NULL, 0);
  }
  if (!r->has_ri) {
    cli_log("request peer=%s from=%s verdict=none op=%s ri=- status=400 "
            "rsc=4000 detail=\"no X-M2M-RI\"",
            peer, from_log, op);
    (void)respond(a, 400, "Bad Request", 4000, r, NULL, NULL, 1);
    return -1;
  }
  m2mpsk_originator_verdict verdict;
  int rc = m2mpsk_originator_check(
      credential ? M2MPSK_PEER_CREDENTIAL : M2MPSK_PEER_AE, bound, local,
      r->has_from ? r->from : NULL, ae_create ? M2MPSK_ORIGINATOR_AE_CREATE : 0,
      &verdict);
  char detail[128] = "";
  if (rc != M2MPSK_OK)
    snprintf(detail, sizeof(detail), " detail=\"%s\"", m2mpsk_strerror(rc));
  if (verdict != M2MPSK_ORIGINATOR_ACCEPT) {
    int code = (int)verdict;
    cli_log("request peer=%s from=%s verdict=%d op=%s%s ri=%s bound=%s "
            "status=403 rsc=%d%s",
            peer, from_log, code, op, ae_create ? " ty=2" : "", ri_log,
            bound_log, code, detail);
    char body[96];
    snprintf(body, sizeof(body), "{\"m2m:dbg\":\"%s\"}",
             code == M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED
                 ? "SECURITY_ASSOCIATION_REQUIRED"
                 : "ORIGINATOR_NOT_AUTHENTICATED");
    return respond(a, 403, "Forbidden", code, r, "application/json", body, 0);
  }
  if (!ae_create) {
    cli_log("request peer=%s from=%s verdict=accept op=%s ri=%s bound=%s "
            "status=200 rsc=2000",
            peer, from_log, op, ri_log, bound_log);
    return respond(a, 200, "OK", 2000, r, NULL, NULL, 0);
  }
  char aei[M2MPSK_ID_MAX + 1];
  const char *bind_note = "";
  if (credential) {
    if (assign_ae_id(local, r->has_from ? r->from : NULL, aei, sizeof(aei)) !=
            0 ||
        (rc = m2mpsk_assoc_bind_ae_id(a, aei)) != M2MPSK_OK) {
      cli_log("request peer=%s from=%s verdict=accept op=create ty=2 ri=%s "
              "bound=%s status=500 rsc=5000 detail=\"cannot bind an AE-ID: "
              "%s\"",
              peer, from_log, ri_log, bound_log,
              rc != M2MPSK_OK ? m2mpsk_strerror(rc) : "no AE-ID to assign");
      return respond(a, 500, "Internal Server Error", 5000, r, NULL, NULL, 0);
    }
    bind_note = " bind=ae-id";
  } else {
    snprintf(aei, sizeof(aei), "%s", bound);
  }
  cli_log("request peer=%s from=%s verdict=accept op=create ty=2 ri=%s "
          "bound=%s status=201 rsc=2001 aei=%s%s",
          peer, from_log, ri_log, bound_log, aei, bind_note);
  char body[M2MPSK_ID_MAX + 64];
  snprintf(body, sizeof(body), "{\"m2m:ae\":{\"aei\":\"%s\"}}", aei);
  return respond(a, 201, "Created", 2001, r, "application/json;ty=2", body, 0);
}

int cli_http_input(cli_http **state, m2mpsk_assoc *a, const char *peer,
                   const uint8_t *data, size_t len) {
  cli_http *h = *state;
  if (h == NULL && (h = *state = calloc(1, sizeof(*h))) == NULL)
    return -1;
  const char *why = NULL;
  if (len > HTTP_BUF_MAX - h->len) {
    why = "more input than 49152 bytes waiting";
  } else if (len > 0) {
    /* Never realloc(buf, 0): with nothing buffered it frees buf and may
     * return NULL, leaving h->buf dangling for cli_http_free(). */
    uint8_t *grown = realloc(h->buf, h->len + len);
    if (grown == NULL)
      return -1;
    h->buf = grown;
    memcpy(h->buf + h->len, data, len);
    h->len += len;
  }
  while (why == NULL && h->len > 0) {
    request r;
    size_t used = 0;
    const char *bad = NULL;
    int p = parse(h->buf, h->len, &r, &used, &bad);
    if (p == PARSE_MORE)
      return 0;
    if (p == PARSE_BAD) {
      why = bad ? bad : "malformed request";
      break;
    }
    if (answer(a, peer, &r) != 0)
      return -1;
    memmove(h->buf, h->buf + used, h->len - used);
    h->len -= used;
  }
  if (why == NULL)
    return 0;
  cli_log("request peer=%s from=- verdict=none status=400 rsc=4000 "
          "detail=\"%s\"",
          peer, why);
  (void)respond(a, 400, "Bad Request", 4000, NULL, NULL, NULL, 1);
  h->len = 0;
  return -1;
}
