/* The HTTP binding (TS-0009) over TLS-PSK.
 *
 * Toward devices the gateway runs its own small server on libevent's loop:
 * an evconnlistener accepts; each connection is one struct (`conn`) that
 * embeds one event for its socket and one timer, and an http_parser
 * (httpreq.c: Debian's http-parser assembles each request; nothing here
 * parses HTTP by hand). Ciphertext goes through the m2mpsk association;
 * the gateway writes its responses itself (status line, headers,
 * Content-Length, body) through m2mpsk_assoc_write(). Toward the CSE,
 * evhttp_connection clients, kept alive in a pool per thread, parse and
 * write HTTP.
 *
 * Memory: an idle established connection holds its conn struct and its
 * association, nothing else. Buffers exist only while they hold bytes: the
 * request being assembled (httpreq.c), plaintext not yet parsed (`pin`),
 * the response not yet encrypted (`pout`), ciphertext the socket has not
 * taken (`wout`) and ciphertext the association could not take yet
 * (`cin`); each is freed when it empties.
 *
 * Bounds (see gw.h): a request's head is bounded by min(--max-request,
 * 64 KiB) (over it: 431), its body by --max-request (413), the CSE's answer
 * by --max-response (502). One request at a time: from a request's last
 * byte until its response is written, the socket is not read, and at most
 * one read of plaintext (16 KiB, or --max-buffer if smaller) waits
 * unparsed. The response is encrypted only while less than --max-buffer
 * bytes of ciphertext wait for the peer. So a peer holds at most about
 * max-request + max-response + max-buffer + 32 KiB + the association's own
 * input bound (m2mpsk_config_set_max_input()) in the gateway.
 *
 * Each connection has one timer: the handshake deadline, then the idle
 * deadline (checked lazily: input only stamps the time); it also runs
 * deferred work (a kick) and frees a connection outside its callbacks. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "gw.h"
#include "httpreq.h"

#define CHUNK 16384 /* one TLS record of plaintext */
#define BACKEND_IDLE_MAX 64
#define HEADERS_MAX 65536
#define EVICT_SCAN 32
#define READS_PER_TURN 16 /* socket reads per connection and loop turn */

typedef struct conn conn;
typedef struct gw_http_worker hworker;

/* Bytes while they wait; no allocation while empty. */
typedef struct gbuf {
  uint8_t *p;
  size_t off, len, cap;
} gbuf;

/* A request on its way to the CSE. */
typedef struct fwd {
  hworker *hw;
  conn *c; /* NULL once the device's connection is gone */
  struct evhttp_connection *bconn;
  int ae_create, head;
  int timed_out; /* evhttp reported EVREQ_HTTP_TIMEOUT */
  char *ri;      /* the request's X-M2M-RI, for the gateway's own answer */
  struct fwd *prev, *next; /* the worker's requests in flight */
} fwd;

struct conn {
  hworker *hw;
  struct event ev;    /* the socket; added with `io` */
  struct event timer; /* deadlines, kicks, the deferred free */
  m2mpsk_assoc *a;
  fwd *fwd;
  conn *prev, *next;       /* the worker's connections */
  conn *hs_prev, *hs_next; /* in handshake, oldest first */
  gw_hreq req;
  gbuf cin, pin, pout, wout;
  uint64_t deadline_ms, last_input_ms;
  union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
  } addr;
  evutil_socket_t fd;
  short io;
  unsigned admitted : 1, established : 1, killed : 1, close_after : 1,
      plain : 1, /* plaintext HTTP, outside any association: 4107 only */
      in_hs : 1, seen_input : 1,
      busy : 1,    /* from a request's end until its response is written */
      replied : 1, /* the response is all in pout */
      kick : 1, http10 : 1, oom : 1;
  char peer[56];
};

struct gw_http_worker {
  gw_worker *w;
  gw_gateway *gw;
  struct evconnlistener *lst;
  struct event *accept_resume;
  conn *conns;
  conn *hs_head, *hs_tail;
  fwd *fwds;
  size_t n_conns;
  size_t n_admitted; /* counted by gw_admit() from this worker */
  size_t share;      /* its share of --max-conn */
  size_t busy;       /* requests at the CSE */
  size_t read_cap;   /* plaintext read at once: CHUNK or --max-buffer */
  uint32_t max_head;
  struct evhttp_connection *idle[BACKEND_IDLE_MAX];
  size_t n_idle;
  char backend_host[80];
  unsigned short backend_port;
  int stopping, freeing;
};

/* ---- buffers --------------------------------------------------------------
 */

/* Room for n more bytes at the end: where to write them (then add n to
 * len), or NULL. */
static uint8_t *gbuf_reserve(gbuf *b, size_t n) {
  if (b->off + b->len + n > b->cap) {
    if (b->off > 0) {
      memmove(b->p, b->p + b->off, b->len);
      b->off = 0;
    }
    if (b->len + n > b->cap) {
      size_t cap = b->cap ? b->cap : 512;
      while (cap < b->len + n)
        cap *= 2;
      uint8_t *p = realloc(b->p, cap);
      if (p == NULL)
        return NULL;
      b->p = p;
      b->cap = cap;
    }
  }
  return b->p + b->off + b->len;
}

static int gbuf_add(gbuf *b, const void *data, size_t n) {
  if (n == 0)
    return 0;
  uint8_t *tail = gbuf_reserve(b, n);
  if (tail == NULL)
    return -1;
  memcpy(tail, data, n);
  b->len += n;
  return 0;
}

static void gbuf_free(gbuf *b) {
  free(b->p);
  memset(b, 0, sizeof(*b));
}

static void gbuf_take(gbuf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (b->len == 0)
    gbuf_free(b);
}

static uint8_t *gbuf_data(const gbuf *b) {
  return b->p + b->off;
}

/* ---- the handshake list ---------------------------------------------------
 */

static void hs_remove(hworker *hw, conn *c) {
  if (!c->in_hs)
    return;
  if (c->hs_prev)
    c->hs_prev->hs_next = c->hs_next;
  else
    hw->hs_head = c->hs_next;
  if (c->hs_next)
    c->hs_next->hs_prev = c->hs_prev;
  else
    hw->hs_tail = c->hs_prev;
  c->hs_prev = c->hs_next = NULL;
  c->in_hs = 0;
}

static void hs_append(hworker *hw, conn *c) {
  c->hs_prev = hw->hs_tail;
  c->hs_next = NULL;
  if (hw->hs_tail)
    hw->hs_tail->hs_next = c;
  else
    hw->hs_head = c;
  hw->hs_tail = c;
  c->in_hs = 1;
}

/* ---- lifetime ------------------------------------------------------------ */

static void on_io(evutil_socket_t fd, short what, void *arg);

static void arm(conn *c, uint64_t at_ms) {
  /* A pending kick runs the timer now, and the timer re-arms itself:
   * rescheduling it here would cancel the kick. */
  if (c->kick)
    return;
  uint64_t now = gw_now_ms(), d = at_ms > now ? at_ms - now : 0;
  struct timeval tv = {(time_t)(d / 1000), (suseconds_t)(d % 1000) * 1000};
  evtimer_add(&c->timer, &tv);
}

/* Runs in_progress() from the timer, outside whatever callback asked. */
static void kick(conn *c) {
  if (c->killed || c->kick)
    return;
  c->kick = 1;
  event_active(&c->timer, EV_TIMEOUT, 1);
}

/* Watches the socket for `want` (EV_READ, EV_WRITE, both or none). */
static void set_io(conn *c, short want) {
  if (c->killed)
    want = 0;
  if (c->io == want)
    return;
  if (c->io != 0)
    event_del(&c->ev);
  c->io = want;
  if (want != 0) {
    event_assign(&c->ev, c->hw->w->base, c->fd, (short)(want | EV_PERSIST),
                 on_io, c);
    event_add(&c->ev, NULL);
  }
}

/* Reads while no request waits for its response and the peer takes what
 * is sent; writes while ciphertext waits. */
static void update_io(conn *c) {
  short want = 0;
  if (!c->busy && c->wout.len < c->hw->gw->opts.max_buffer)
    want |= EV_READ;
  if (c->wout.len > 0)
    want |= EV_WRITE;
  set_io(c, want);
}

static void release(conn *c) {
  if (c->admitted) {
    gw_release(c->hw->gw, &c->addr.sa);
    c->admitted = 0;
    c->hw->n_admitted--;
  }
}

/* Ends a connection: its slot, descriptor, association and buffers are
 * free at once; the struct itself from the timer, outside any callback
 * that may still hold it. */
static void conn_kill(conn *c) {
  if (c->killed)
    return;
  set_io(c, 0);
  c->killed = 1;
  release(c);
  hs_remove(c->hw, c);
  if (c->fd >= 0) {
    /* Unread bytes at close() make the kernel send a reset, which can
     * destroy what the peer has not read yet (an alert, the last
     * response): discard what has arrived, a bounded amount. */
    uint8_t sink[4096];
    for (int i = 0; i < 16 && recv(c->fd, sink, sizeof(sink), 0) > 0; i++)
      ;
    evutil_closesocket(c->fd);
  }
  c->fd = -1;
  /* Its handshake slot in the library is free at once, too. */
  m2mpsk_assoc_free(c->a);
  c->a = NULL;
  if (c->fwd != NULL)
    c->fwd->c = NULL;
  c->fwd = NULL;
  gw_hreq_reset(&c->req);
  gbuf_free(&c->cin);
  gbuf_free(&c->pin);
  gbuf_free(&c->pout);
  gbuf_free(&c->wout);
  struct timeval zero = {0, 0};
  evtimer_add(&c->timer, &zero);
}

static void conn_free(conn *c) {
  hworker *hw = c->hw;
  event_del(&c->timer);
  if (c->prev)
    c->prev->next = c->next;
  else
    hw->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  hw->n_conns--;
  free(c);
}

/* Sends what the socket takes now and keeps the rest. */
static void wire_send(conn *c, const uint8_t *p, size_t n) {
  if (c->killed)
    return;
  if (c->wout.len == 0) {
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        gw_trace("closed peer=%s: %s", c->peer, strerror(errno));
        conn_kill(c);
        return;
      }
      w = 0;
    }
    p += w;
    n -= (size_t)w;
  }
  if (n > 0 && gbuf_add(&c->wout, p, n) != 0) {
    gw_log("peer=%s: out of memory", c->peer);
    conn_kill(c);
  }
}

/* Writes what waits in wout. */
static void wire_write(conn *c) {
  while (!c->killed && c->wout.len > 0) {
    ssize_t w = send(c->fd, gbuf_data(&c->wout), c->wout.len, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        gw_trace("closed peer=%s: %s", c->peer, strerror(errno));
        conn_kill(c);
      }
      return;
    }
    gbuf_take(&c->wout, (size_t)w);
  }
}

static void flush_assoc(conn *c) {
  uint8_t buf[CHUNK + 512];
  size_t n;
  while (!c->killed && c->a != NULL &&
         m2mpsk_assoc_drain(c->a, buf, sizeof(buf), &n) == M2MPSK_OK)
    wire_send(c, buf, n);
}

/* Ends an established association with close_notify first (best effort:
 * what the socket does not take now is dropped), then the connection. */
static void graceful_close(conn *c) {
  if (c->killed)
    return;
  if (c->a != NULL && c->established && !c->plain &&
      m2mpsk_assoc_state(c->a) == M2MPSK_STATE_ESTABLISHED) {
    int rc = m2mpsk_assoc_close(c->a);
    if (rc == M2MPSK_OK || rc == M2MPSK_E_FAILED) {
      uint8_t buf[1024];
      size_t n;
      wire_write(c);
      while (!c->killed && c->wout.len == 0 &&
             m2mpsk_assoc_drain(c->a, buf, sizeof(buf), &n) == M2MPSK_OK)
        if (send(c->fd, buf, n, MSG_NOSIGNAL) != (ssize_t)n)
          break;
    }
  }
  conn_kill(c);
}

static void log_failure(conn *c) {
  const char *kpsa = m2mpsk_assoc_kpsa_id(c->a);
  gw_log("failure peer=%s kpsa-id=%s reason=%s detail=\"%s\"", c->peer,
         kpsa ? kpsa : "-", m2mpsk_reason_name(m2mpsk_assoc_failure(c->a)),
         m2mpsk_assoc_failure_detail(c->a));
}

/* The oldest connection still in its handshake makes room, so that silent
 * sockets cannot starve accept; among the EVICT_SCAN oldest, the one whose
 * address holds the most connections, so that an attacker refilling from
 * a few addresses evicts itself, not the device that came in between. */
static void evict(hworker *hw) {
  conn *victim = hw->hs_head;
  unsigned most = 0;
  int scanned = 0;
  for (conn *v = hw->hs_head; v != NULL && scanned < EVICT_SCAN;
       v = v->hs_next, scanned++) {
    unsigned n = gw_addr_count(hw->gw, &v->addr.sa);
    if (n > most) {
      most = n;
      victim = v;
    }
  }
  gw_trace("dropped peer=%s: oldest handshake, making room", victim->peer);
  conn_kill(victim);
}

/* Admission, right after accept: the connection caps, then an
 * association. 0, or -1 (killed). */
static int conn_admit(conn *c) {
  hworker *hw = c->hw;
  gw_gateway *gw = hw->gw;
  /* Each worker keeps to its share of --max-conn, so that one whose
   * listener drew the silent sockets makes room among its own, and the
   * others are never full for want of something to evict. */
  if (hw->n_admitted >= hw->share && hw->hs_head != NULL &&
      gw_addr_count(gw, &c->addr.sa) < gw->opts.max_per_addr)
    evict(hw);
  int rc = gw_admit(gw, &c->addr.sa);
  if (rc == GW_ADMIT_FULL && hw->hs_head != NULL) {
    evict(hw);
    rc = gw_admit(gw, &c->addr.sa);
  }
  if (rc != GW_ADMIT_OK) {
    gw_log("refused peer=%s: %s", c->peer,
           rc == GW_ADMIT_ADDR ? "too many connections from its address"
                               : "too many connections");
    conn_kill(c);
    return -1;
  }
  c->admitted = 1;
  hw->n_admitted++;
  char host[sizeof(c->peer)];
  gw_format_addr(&c->addr.sa, 0, host, sizeof(host));
  rc = gw_assoc_new(gw, M2MPSK_TRANSPORT_TLS, host, &c->a);
  if (rc == M2MPSK_E_FAILED) {
    log_failure(c);
    conn_kill(c);
    return -1;
  }
  if (rc != M2MPSK_OK) {
    gw_log("refused peer=%s: %s", c->peer, m2mpsk_strerror(rc));
    conn_kill(c);
    return -1;
  }
  c->deadline_ms = gw_now_ms() + gw->opts.handshake_timeout_ms;
  hs_append(hw, c);
  arm(c, c->deadline_ms);
  return 0;
}

static void check_state(conn *c) {
  m2mpsk_state st = m2mpsk_assoc_state(c->a);
  if (st == M2MPSK_STATE_ESTABLISHED && !c->established) {
    c->established = 1;
    c->last_input_ms = gw_now_ms();
    hs_remove(c->hw, c);
    const char *kpsa = m2mpsk_assoc_kpsa_id(c->a);
    gw_trace("association peer=%s kpsa-id=%s bound=%s suite=%s", c->peer,
             kpsa ? kpsa : "-", m2mpsk_assoc_peer_id(c->a),
             m2mpsk_assoc_suite(c->a));
    arm(c, c->last_input_ms + c->hw->gw->opts.idle_timeout_ms);
  } else if (st == M2MPSK_STATE_FAILED) {
    log_failure(c);
    conn_kill(c);
  }
}

/* ---- responses ------------------------------------------------------------
 */

static void out_pump(conn *c);

static void put(conn *c, const char *s, size_t n) {
  if (gbuf_add(&c->pout, s, n) != 0)
    c->oom = 1;
}

static void put_str(conn *c, const char *s) {
  put(c, s, strlen(s));
}

static void put_header(conn *c, const char *name, const char *value) {
  put_str(c, name);
  put(c, ": ", 2);
  put_str(c, value);
  put(c, "\r\n", 2);
}

static void put_status(conn *c, int code, const char *reason) {
  char line[96];
  int n = snprintf(line, sizeof(line), "HTTP/1.1 %d %.60s\r\n", code, reason);
  put(c, line, (size_t)n);
}

/* Content-Length (unless -1), Connection, the blank line. */
static void put_end(conn *c, long long length) {
  char num[32];
  if (length >= 0) {
    snprintf(num, sizeof(num), "%lld", length);
    put_header(c, "Content-Length", num);
  }
  if (c->close_after)
    put_header(c, "Connection", "close");
  else if (c->http10)
    put_header(c, "Connection", "keep-alive");
  put(c, "\r\n", 2);
}

/* The response is in pout: send it. */
static void respond(conn *c) {
  if (c->oom) {
    gw_log("peer=%s: out of memory for a response", c->peer);
    conn_kill(c);
    return;
  }
  c->replied = 1;
  out_pump(c);
}

/* The gateway's own answer, with X-M2M-RSC (when rsc > 0), X-M2M-RI `ri`
 * (when not NULL) and an m2m:dbg body (none for a HEAD). */
static void reply_json_ri(conn *c, int code, const char *reason, int rsc,
                          const char *why, const char *ri, int head) {
  char num[16], body[256];
  size_t blen = gw_gate_dbg_body(why, body, sizeof(body));
  put_status(c, code, reason);
  if (rsc > 0) {
    snprintf(num, sizeof(num), "%d", rsc);
    put_header(c, "X-M2M-RSC", num);
  }
  if (ri != NULL)
    put_header(c, "X-M2M-RI", ri);
  put_header(c, "Content-Type", "application/json");
  put_end(c, (long long)blen);
  if (!head)
    put(c, body, blen);
}

/* reply_json_ri() for the request in c->req. */
static void reply_json(conn *c, int code, const char *reason, int rsc,
                       const char *why) {
  reply_json_ri(c, code, reason, rsc, why,
                gw_hreq_header(&c->req, "X-M2M-RI"),
                c->req.p.method == HTTP_HEAD &&
                    c->req.state != GW_HREQ_ERROR);
}

static void response_done(conn *c) {
  c->busy = 0;
  c->replied = 0;
  if (c->close_after || c->hw->stopping) {
    graceful_close(c);
    return;
  }
  c->last_input_ms = gw_now_ms();
}

/* Encrypts the response while less than --max-buffer of ciphertext waits,
 * and sends. */
static void out_pump(conn *c) {
  size_t bound = c->hw->gw->opts.max_buffer;
  while (!c->killed) {
    wire_write(c);
    if (c->killed || c->wout.len >= bound || c->pout.len == 0)
      break;
    size_t n = c->pout.len < CHUNK ? c->pout.len : CHUNK;
    if (c->plain) {
      wire_send(c, gbuf_data(&c->pout), n);
    } else {
      size_t w;
      int rc = m2mpsk_assoc_write(c->a, gbuf_data(&c->pout), n, &w);
      if (rc != M2MPSK_OK) {
        gw_trace("peer=%s: cannot write: %s", c->peer, m2mpsk_strerror(rc));
        flush_assoc(c);
        conn_kill(c);
        return;
      }
      flush_assoc(c);
    }
    if (!c->killed)
      gbuf_take(&c->pout, n);
  }
  if (c->killed)
    return;
  if (c->busy && c->replied && c->fwd == NULL && c->pout.len == 0 &&
      c->wout.len == 0)
    response_done(c);
  if (!c->killed)
    update_io(c);
}

/* ---- requests ------------------------------------------------------------
 */

static int header_is(const char *name, const char *const *list) {
  for (; *list; list++)
    if (strcasecmp(name, *list) == 0)
      return 1;
  return 0;
}

static const char *const k_hop[] = {
    "Connection",        "Keep-Alive", "Proxy-Connection", "TE",   "Trailer",
    "Transfer-Encoding", "Upgrade",    "Content-Length",   "Host", NULL};

static struct evhttp_connection *backend_get(hworker *hw) {
  if (hw->n_idle > 0)
    return hw->idle[--hw->n_idle];
  struct evhttp_connection *b = evhttp_connection_base_new(
      hw->w->base, NULL, hw->backend_host, hw->backend_port);
  if (b == NULL)
    return NULL;
  evhttp_connection_set_retries(b, 0);
  evhttp_connection_set_max_body_size(b, (ev_ssize_t)hw->gw->opts.max_response);
  evhttp_connection_set_max_headers_size(b, HEADERS_MAX);
  /* --cse-timeout: how long the CSE may stay silent while it is sent a
   * request or answers one (evhttp's read and write timeouts); past it the
   * device gets 504. */
  uint32_t ms = hw->gw->opts.cse_timeout_ms ? hw->gw->opts.cse_timeout_ms
                                            : 30000;
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  evhttp_connection_set_timeout_tv(b, &tv);
  return b;
}

static void free_backend(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evhttp_connection_free(arg);
}

/* Called from the connection's own request callback: what is not kept is
 * freed from the loop, once evhttp is done with it. */
static void backend_put(hworker *hw, struct evhttp_connection *b) {
  struct timeval zero = {0, 0};
  if (hw->n_idle < BACKEND_IDLE_MAX)
    hw->idle[hw->n_idle++] = b;
  else if (event_base_once(hw->w->base, -1, EV_TIMEOUT, free_backend, b,
                           &zero) != 0)
    evhttp_connection_free_on_completion(b);
}

static void fwd_unlink(hworker *hw, fwd *f) {
  if (f->prev)
    f->prev->next = f->next;
  else
    hw->fwds = f->next;
  if (f->next)
    f->next->prev = f->prev;
  f->prev = f->next = NULL;
}

/* No body and no Content-Length (RFC 9110 §6.4.1, §8.6). */
static int status_without_body(int code) {
  return (code >= 100 && code < 200) || code == 204 || code == 304;
}

static void on_backend_response(struct evhttp_request *breq, void *arg) {
  fwd *f = arg;
  hworker *hw = f->hw;
  if (hw->freeing)
    return; /* gw_http_worker_free() frees f */
  conn *c = f->c;
  fwd_unlink(hw, f);
  hw->busy--;
  backend_put(hw, f->bconn);
  int head = f->head, ae_create = f->ae_create, timed_out = f->timed_out;
  char *ri = f->ri;
  free(f);
  if (c != NULL) {
    c->fwd = NULL;
    c->last_input_ms = gw_now_ms(); /* idle from the answer on */
  }
  int code = breq ? evhttp_request_get_response_code(breq) : 0;
  if (code == 0) {
    gw_log("request peer=%s: the CSE did not answer%s", c ? c->peer : "-",
           timed_out ? " in time" : "");
    if (c != NULL) {
      if (timed_out)
        reply_json_ri(c, 504, "Gateway Timeout", 0,
                      "the CSE did not answer in time", ri, head);
      else
        reply_json_ri(c, 502, "Bad Gateway", 0, "the CSE did not answer", ri,
                      head);
      respond(c);
      if (!c->killed && !c->busy)
        kick(c);
    }
    free(ri);
    return;
  }
  free(ri);
  if (c == NULL)
    return;
  struct evkeyvalq *bin = evhttp_request_get_input_headers(breq);
  struct evbuffer *body = evhttp_request_get_input_buffer(breq);
  size_t len = evbuffer_get_length(body);
  const char *rsc_s = evhttp_find_header(bin, "X-M2M-RSC");
  int rsc = rsc_s ? atoi(rsc_s) : 0;
  if (c->a != NULL && rsc == 2001 && m2mpsk_assoc_peer_id_is_credential(c->a)) {
    const char *why;
    int bound = gw_gate_response(c->a, ae_create, rsc,
                                 evbuffer_pullup(body, -1), len, &why);
    if (bound == 1)
      gw_log("bound peer=%s to AE-ID %s", c->peer, m2mpsk_assoc_peer_id(c->a));
    else if (bound < 0)
      gw_log("peer=%s: AE-ID not bound: %s", c->peer, why);
  }
  const char *reason = evhttp_request_get_response_code_line(breq);
  put_status(c, code, reason ? reason : "");
  for (struct evkeyval *h = bin->tqh_first; h != NULL; h = h->next.tqe_next)
    if (!header_is(h->key, k_hop))
      put_header(c, h->key, h->value);
  if (status_without_body(code)) {
    put_end(c, -1);
  } else if (head) {
    /* HEAD: the length a GET would have had, when the CSE said it. */
    const char *cl = evhttp_find_header(bin, "Content-Length");
    long long v = cl != NULL ? strtoll(cl, NULL, 10) : 0;
    put_end(c, v > 0 ? v : 0);
  } else {
    put_end(c, (long long)len);
    /* Moved a piece at a time: evhttp's copy shrinks as ours grows. */
    uint8_t *tail = c->oom ? NULL : gbuf_reserve(&c->pout, len);
    if (tail == NULL && len > 0)
      c->oom = 1;
    for (size_t done = 0; tail != NULL && done < len;) {
      size_t n = len - done < CHUNK ? len - done : CHUNK;
      if (evbuffer_remove(body, tail + done, n) != (int)n) {
        c->oom = 1;
        break;
      }
      done += n;
      c->pout.len += n;
    }
  }
  respond(c);
  if (!c->killed && !c->busy)
    kick(c); /* a pipelined request may wait */
}

static enum evhttp_cmd_type evhttp_cmd(unsigned method) {
  switch (method) {
  case HTTP_POST: return EVHTTP_REQ_POST;
  case HTTP_PUT: return EVHTTP_REQ_PUT;
  case HTTP_DELETE: return EVHTTP_REQ_DELETE;
  case HTTP_HEAD: return EVHTTP_REQ_HEAD;
  case HTTP_OPTIONS: return EVHTTP_REQ_OPTIONS;
  case HTTP_PATCH: return EVHTTP_REQ_PATCH;
  default: /* httpreq.c lets only these and GET through */
    return EVHTTP_REQ_GET;
  }
}

static const char *status_reason(unsigned code) {
  switch (code) {
  case 400: return "Bad Request";
  case 413: return "Payload Too Large";
  case 431: return "Request Header Fields Too Large";
  case 501: return "Not Implemented";
  case 505: return "HTTP Version Not Supported";
  default: return "Service Unavailable";
  }
}

/* Called by evhttp before on_backend_response(NULL) when a request fails. */
static void on_backend_error(enum evhttp_request_error e, void *arg) {
  fwd *f = arg;
  if (e == EVREQ_HTTP_TIMEOUT)
    f->timed_out = 1;
}

/* Forwards the whole request in c->req to the CSE; 0, or -1 (answered). */
static int forward(conn *c, const char *from, int ae_create) {
  hworker *hw = c->hw;
  gw_hreq *r = &c->req;
  fwd *f = calloc(1, sizeof(*f));
  struct evhttp_connection *b = f ? backend_get(hw) : NULL;
  struct evhttp_request *breq =
      b ? evhttp_request_new(on_backend_response, f) : NULL;
  if (breq == NULL) {
    if (b)
      backend_put(hw, b);
    free(f);
    reply_json(c, 503, "Service Unavailable", 0, "out of memory");
    return -1;
  }
  evhttp_request_set_error_cb(breq, on_backend_error);
  struct evkeyvalq *bout = evhttp_request_get_output_headers(breq);
  const char *idh = hw->gw->opts.identity_header;
  size_t it = 0;
  const char *name, *value;
  while (gw_hreq_header_next(r, &it, &name, &value))
    if (!header_is(name, k_hop) && !(idh && strcasecmp(name, idh) == 0))
      evhttp_add_header(bout, name, value);
  char host[100];
  snprintf(host, sizeof(host), "%s:%u", hw->backend_host, hw->backend_port);
  evhttp_add_header(bout, "Host", host);
  if (idh != NULL)
    evhttp_add_header(bout, idh, gw_gate_identity(c->a));
  size_t blen;
  const uint8_t *body = gw_hreq_body(r, &blen);
  if (blen > 0)
    evbuffer_add(evhttp_request_get_output_buffer(breq), body, blen);
  f->hw = hw;
  f->c = c;
  f->bconn = b;
  f->ae_create = ae_create;
  f->head = gw_hreq_method(r) == HTTP_HEAD;
  const char *ri = gw_hreq_header(r, "X-M2M-RI");
  f->ri = ri != NULL ? strdup(ri) : NULL; /* NULL too: answered without */
  const char *target = gw_hreq_target(r);
  gw_trace("request peer=%s from=%s %s -> CSE", c->peer, from ? from : "-",
           target);
  if (evhttp_make_request(b, breq, evhttp_cmd(gw_hreq_method(r)), target) !=
      0) {
    /* evhttp freed breq. */
    backend_put(hw, b);
    free(f->ri);
    free(f);
    reply_json(c, 502, "Bad Gateway", 0, "the CSE cannot be reached");
    return -1;
  }
  f->next = hw->fwds;
  if (hw->fwds)
    hw->fwds->prev = f;
  hw->fwds = f;
  c->fwd = f;
  hw->busy++;
  return 0;
}

/* A whole request (or one that cannot be), in c->req. */
static void on_request(conn *c, gw_hreq_status st) {
  hworker *hw = c->hw;
  gw_hreq *r = &c->req;
  c->busy = 1;
  c->replied = 0;
  c->http10 = gw_hreq_major(r) == 1 && gw_hreq_minor(r) == 0;
  if (st == GW_HREQ_ERROR) {
    unsigned code = gw_hreq_error(r);
    gw_trace("request peer=%s: refused %u %s", c->peer, code,
             status_reason(code));
    c->close_after = 1;
    reply_json(c, (int)code, status_reason(code), 0, status_reason(code));
  } else if (c->plain || !c->established || c->a == NULL) {
    gw_log("refused peer=%s rsc=4107: a request outside any security "
           "association",
           c->peer);
    c->close_after = 1;
    reply_json(c, 403, "Forbidden", 4107, "security association required");
  } else {
    if (!gw_hreq_keep_alive(r))
      c->close_after = 1;
    const char *from = gw_hreq_header(r, "X-M2M-Origin");
    int ae_create =
        gw_hreq_method(r) == HTTP_POST &&
        gw_gate_content_type_ty(gw_hreq_header(r, "Content-Type")) == 2;
    const char *why;
    int rsc = gw_gate_request(c->a, from, ae_create, &why);
    if (rsc != 0) {
      gw_log("refused peer=%s from=%s bound=%s rsc=%d: %s", c->peer,
             from ? from : "-", m2mpsk_assoc_peer_id(c->a), rsc, why);
      reply_json(c, 403, "Forbidden", rsc, why);
    } else if (hw->stopping) {
      reply_json(c, 503, "Service Unavailable", 0, "the gateway is stopping");
    } else if (forward(c, from, ae_create) == 0) {
      gw_hreq_reset(r); /* the request lives on in evhttp's */
      update_io(c);
      return;
    }
  }
  gw_hreq_reset(r);
  respond(c);
}

/* Parses plaintext; a whole request goes on at once. Returns the bytes
 * consumed. */
static size_t parse(conn *c, const uint8_t *p, size_t n) {
  gw_hreq_status st;
  size_t used = gw_hreq_feed(&c->req, p, n, &st);
  if (st != GW_HREQ_MORE)
    on_request(c, st);
  return used;
}

/* Parses plaintext from a read; what follows a whole request waits in
 * pin. */
static void parse_read(conn *c, const uint8_t *p, size_t n) {
  size_t used = parse(c, p, n);
  if (!c->killed && used < n && gbuf_add(&c->pin, p + used, n - used) != 0) {
    gw_log("peer=%s: out of memory", c->peer);
    conn_kill(c);
  }
}

/* Reads the socket, the association and the plaintext waiting, while no
 * request waits for its response. */
static void in_progress(conn *c) {
  uint8_t buf[CHUNK];
  size_t cap = c->hw->read_cap;
  int reads = 0;
  while (!c->killed && !c->busy) {
    if (c->pin.len > 0) {
      size_t used = parse(c, gbuf_data(&c->pin), c->pin.len);
      if (!c->killed)
        gbuf_take(&c->pin, used);
      continue;
    }
    if (c->established) {
      size_t n;
      int rc = m2mpsk_assoc_read(c->a, buf, cap, &n);
      if (rc == M2MPSK_OK) {
        parse_read(c, buf, n);
        continue;
      }
      if (rc != M2MPSK_E_AGAIN) {
        if (rc == M2MPSK_E_FAILED)
          log_failure(c);
        else
          gw_trace("closed peer=%s: %s", c->peer, m2mpsk_strerror(rc));
        flush_assoc(c);
        conn_kill(c);
        return;
      }
    }
    if (c->cin.len > 0) {
      int rc =
          m2mpsk_assoc_feed(c->a, gbuf_data(&c->cin), c->cin.len, gw_now_ms());
      if (rc != M2MPSK_OK) {
        /* E_LIMIT with nothing to read: a record over the input bound. */
        gw_trace("closed peer=%s: %s", c->peer, m2mpsk_strerror(rc));
        flush_assoc(c);
        conn_kill(c);
        return;
      }
      gbuf_free(&c->cin);
      flush_assoc(c);
      continue;
    }
    if (reads++ == READS_PER_TURN) {
      kick(c); /* the other connections' turn */
      return;
    }
    ssize_t got = recv(c->fd, buf, cap, 0);
    if (got == 0) {
      conn_kill(c); /* the peer closed */
      return;
    }
    if (got < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        gw_trace("closed peer=%s: %s", c->peer, strerror(errno));
        conn_kill(c);
        return;
      }
      break;
    }
    size_t n = (size_t)got;
    uint64_t now = gw_now_ms();
    c->last_input_ms = now;
    if (!c->seen_input && !c->established &&
        m2mpsk_assoc_state(c->a) == M2MPSK_STATE_HANDSHAKING) {
      /* A TLS record starts with its type (22 for a ClientHello); an HTTP
       * request with a method in capitals. The request gets parsed and a
       * 4107, never the CSE. */
      c->plain = buf[0] >= 'A' && buf[0] <= 'Z';
    }
    c->seen_input = 1;
    if (c->plain) {
      parse_read(c, buf, n);
      continue;
    }
    int rc = m2mpsk_assoc_feed(c->a, buf, n, now);
    if (rc == M2MPSK_E_LIMIT) {
      if (gbuf_add(&c->cin, buf, n) != 0) {
        gw_log("peer=%s: out of memory", c->peer);
        conn_kill(c);
        return;
      }
      continue;
    }
    if (rc != M2MPSK_OK) {
      flush_assoc(c);
      if (m2mpsk_assoc_state(c->a) == M2MPSK_STATE_FAILED)
        log_failure(c);
      conn_kill(c);
      return;
    }
    flush_assoc(c);
    if (!c->killed)
      check_state(c);
  }
  if (!c->killed)
    update_io(c);
}

static void on_io(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  conn *c = arg;
  if (what & EV_WRITE) {
    out_pump(c);
    if (c->killed)
      return;
    if (!c->busy)
      what |= EV_READ; /* a response went out: a pipelined request next */
  }
  if (what & EV_READ)
    in_progress(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  conn *c = arg;
  if (c->killed) {
    conn_free(c);
    return;
  }
  if (c->kick) {
    c->kick = 0;
    in_progress(c);
    if (c->killed)
      return;
  }
  uint64_t now = gw_now_ms();
  gw_gateway *gw = c->hw->gw;
  if (!c->established) {
    if (now >= c->deadline_ms) {
      gw_log("failure peer=%s reason=timeout detail=\"no handshake within "
             "%u ms\"",
             c->peer, gw->opts.handshake_timeout_ms);
      conn_kill(c);
    } else {
      arm(c, c->deadline_ms);
    }
    return;
  }
  uint64_t idle_end = c->last_input_ms + gw->opts.idle_timeout_ms;
  if (c->fwd != NULL || now < idle_end) {
    arm(c, c->fwd != NULL ? now + gw->opts.idle_timeout_ms : idle_end);
    return;
  }
  gw_trace("idle peer=%s: no input for %u ms, association ended", c->peer,
           gw->opts.idle_timeout_ms);
  graceful_close(c);
}

/* ---- the listener -------------------------------------------------------- */

static void on_accept(struct evconnlistener *lst, evutil_socket_t fd,
                      struct sockaddr *sa, int socklen, void *arg) {
  (void)lst;
  hworker *hw = arg;
  conn *c = calloc(1, sizeof(*c));
  if (c == NULL || socklen <= 0 || (size_t)socklen > sizeof(c->addr)) {
    if (c == NULL)
      gw_log("out of memory for a new connection");
    free(c);
    evutil_closesocket(fd);
    return;
  }
  c->hw = hw;
  c->fd = fd;
  memcpy(&c->addr, sa, (size_t)socklen);
  gw_format_addr(sa, 1, c->peer, sizeof(c->peer));
  gw_hreq_init(&c->req, hw->max_head, (uint32_t)hw->gw->opts.max_request);
  evtimer_assign(&c->timer, hw->w->base, on_timer, c);
  c->next = hw->conns;
  if (hw->conns)
    hw->conns->prev = c;
  hw->conns = c;
  hw->n_conns++;
  if (hw->stopping) {
    conn_kill(c);
    return;
  }
  if (conn_admit(c) != 0)
    return;
  update_io(c);
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  hworker *hw = arg;
  if (!hw->stopping && hw->lst)
    evconnlistener_enable(hw->lst);
}

/* Out of descriptors: pause accepting for a moment, as nghttpx does,
 * instead of spinning on a listener that is always ready. */
static void on_accept_error(struct evconnlistener *lst, void *arg) {
  hworker *hw = arg;
  int err = EVUTIL_SOCKET_ERROR();
  gw_log("accept: %s; pausing the listener for 100 ms",
         evutil_socket_error_to_string(err));
  evconnlistener_disable(lst);
  struct timeval tv = {0, 100000};
  evtimer_add(hw->accept_resume, &tv);
}

int gw_http_worker_start(gw_worker *w) {
  gw_gateway *gw = w->gw;
  hworker *hw = calloc(1, sizeof(*hw));
  if (hw == NULL)
    return -1;
  w->http = hw;
  hw->w = w;
  hw->gw = gw;
  hw->share = gw->opts.max_conn / gw->n_workers;
  if (hw->share == 0)
    hw->share = 1;
  hw->read_cap = gw->opts.max_buffer < CHUNK ? gw->opts.max_buffer : CHUNK;
  hw->max_head =
      (uint32_t)(gw->opts.max_request < HEADERS_MAX ? gw->opts.max_request
                                                    : HEADERS_MAX);
  char err[300];
  struct sockaddr_storage ss;
  socklen_t len;
  if (gw_resolve(gw->opts.http_backend, SOCK_STREAM, 0, &ss, &len, err,
                 sizeof(err)) != 0) {
    fprintf(stderr, "m2mpsk: --http-backend: %s\n", err);
    return -1;
  }
  char addr[80];
  gw_format_addr((struct sockaddr *)&ss, 0, addr, sizeof(addr));
  /* evhttp takes an IPv6 literal without brackets. */
  size_t n = strlen(addr);
  if (addr[0] == '[' && n > 2)
    snprintf(hw->backend_host, sizeof(hw->backend_host), "%.*s", (int)(n - 2),
             addr + 1);
  else
    snprintf(hw->backend_host, sizeof(hw->backend_host), "%s", addr);
  hw->backend_port =
      ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                     : ((struct sockaddr_in *)&ss)->sin_port);
  if (w->index == 0) {
    if (gw_resolve(gw->opts.http_listen, SOCK_STREAM, 1, &gw->http_addr,
                   &gw->http_addr_len, err, sizeof(err)) != 0) {
      fprintf(stderr, "m2mpsk: --http-listen: %s\n", err);
      return -1;
    }
  }
  int fd = gw_bind_reuseport(SOCK_STREAM, (struct sockaddr *)&gw->http_addr,
                             gw->http_addr_len);
  if (fd < 0) {
    fprintf(stderr, "m2mpsk: cannot listen on %s: %s\n", gw->opts.http_listen,
            strerror(errno));
    return -1;
  }
  if (w->index == 0) {
    gw->http_addr_len = sizeof(gw->http_addr);
    getsockname(fd, (struct sockaddr *)&gw->http_addr, &gw->http_addr_len);
  }
  hw->lst =
      evconnlistener_new(w->base, on_accept, hw,
                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
  hw->accept_resume = evtimer_new(w->base, on_accept_resume, hw);
  if (hw->lst == NULL || hw->accept_resume == NULL) {
    if (hw->lst == NULL)
      close(fd);
    return -1;
  }
  evconnlistener_set_error_cb(hw->lst, on_accept_error);
  return 0;
}

void gw_http_worker_stop(gw_worker *w) {
  hworker *hw = w->http;
  hw->stopping = 1;
  if (hw->lst != NULL) {
    evconnlistener_free(hw->lst);
    hw->lst = NULL;
  }
  if (hw->accept_resume != NULL)
    evtimer_del(hw->accept_resume);
  /* Idle associations end now, with close_notify; one with a request
   * once its response is written. */
  for (conn *c = hw->conns; c != NULL; c = c->next) {
    if (c->killed)
      continue;
    if (c->busy)
      c->close_after = 1;
    else
      graceful_close(c);
  }
}

void gw_http_worker_keys_changed(gw_worker *w) {
  hworker *hw = w->http;
  if (hw == NULL)
    return;
  uint64_t now = gw_now_ms();
  /* conn_kill() leaves the struct in the list (the timer frees it), so
   * the walk goes on safely. */
  for (conn *c = hw->conns; c != NULL; c = c->next) {
    if (c->killed || c->plain || c->a == NULL)
      continue;
    if (!c->established) {
      /* A handshake that waited for the key source goes on once its
       * request is answered (or fails as an unknown identity would). */
      if (m2mpsk_assoc_state(c->a) != M2MPSK_STATE_WAITING_KEY ||
          m2mpsk_key_request_answered(m2mpsk_assoc_key_request(c->a)) != 1)
        continue;
      int rc = m2mpsk_assoc_resume(c->a, now);
      flush_assoc(c);
      if (c->killed)
        continue;
      if (rc != M2MPSK_OK && m2mpsk_assoc_state(c->a) != M2MPSK_STATE_FAILED) {
        gw_trace("closed peer=%s: %s", c->peer, m2mpsk_strerror(rc));
        conn_kill(c);
        continue;
      }
      check_state(c);
      if (!c->killed)
        update_io(c);
      continue;
    }
    if (m2mpsk_assoc_handle_timeout(c->a, now) != M2MPSK_E_FAILED)
      continue;
    flush_assoc(c); /* the alert, ahead of the close */
    if (c->killed)
      continue;
    log_failure(c);
    conn_kill(c);
  }
}

size_t gw_http_worker_busy(gw_worker *w) {
  hworker *hw = w->http;
  /* Stopping, every connection ends once its answer is written: until
   * then it counts. */
  return hw ? hw->busy + (hw->stopping ? hw->n_conns : 0) : 0;
}

void gw_http_worker_free(gw_worker *w) {
  hworker *hw = w->http;
  if (hw == NULL)
    return;
  if (hw->lst != NULL)
    evconnlistener_free(hw->lst);
  /* Requests still at the CSE (the stop's deadline passed): evhttp frees
   * them with their connections; their callbacks see `freeing`. */
  hw->freeing = 1;
  while (hw->fwds != NULL) {
    fwd *f = hw->fwds;
    fwd_unlink(hw, f);
    evhttp_connection_free(f->bconn);
    free(f->ri);
    free(f);
  }
  while (hw->conns != NULL) {
    conn *c = hw->conns;
    conn_kill(c);
    conn_free(c);
  }
  for (size_t i = 0; i < hw->n_idle; i++)
    evhttp_connection_free(hw->idle[i]);
  if (hw->accept_resume)
    event_free(hw->accept_resume);
  free(hw);
  w->http = NULL;
}
