/* The HTTP binding (TS-0009) over TLS-PSK.
 *
 * evhttp parses and writes HTTP, on both sides; nothing here parses HTTP by
 * hand. Toward devices, each accepted connection is a bufferevent filter
 * (evhttp_set_bevcb) over the socket's bufferevent, in the way
 * bufferevent_openssl wraps SSL: the input filter feeds ciphertext to the
 * m2mpsk association and hands evhttp the plaintext; the output filter
 * encrypts evhttp's responses. Toward the CSE, evhttp_connection clients,
 * kept alive in a pool per thread.
 *
 * Bounds (see gw.h): the socket bufferevent stops reading at --max-buffer
 * bytes of ciphertext waiting, the filter stops decrypting at --max-buffer
 * bytes of plaintext evhttp has not taken, evhttp stops at --max-request,
 * the CSE's answer at --max-response, and the filter stops encrypting
 * while --max-buffer bytes wait for a peer that does not read; evhttp reads
 * no further request until a response has gone into the filter. So a peer
 * holds at most about max-request + max-response + 2 max-buffer + the
 * association's own input bound (m2mpsk_config_set_max_input()) in the
 * gateway.
 *
 * Each connection has one timer: admission (right after accept), then the
 * handshake deadline, then the idle deadline (checked lazily: input only
 * stamps the time). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "gw.h"

#define CHUNK 16384 /* one TLS record of plaintext */
#define BACKEND_IDLE_MAX 64
#define HEADERS_MAX 65536
#define EVICT_SCAN 32

typedef struct conn conn;
typedef struct gw_http_worker hworker;

/* A request on its way to the CSE. */
typedef struct fwd {
  hworker *hw;
  conn *c; /* NULL once the device's connection is gone */
  struct evhttp_request *req;
  struct evhttp_connection *bconn;
  int ae_create;
} fwd;

struct conn {
  hworker *hw;
  struct bufferevent *under, *filter;
  struct event *timer;
  struct event *kick; /* runs the output filter once evhttp enabled writing */
  m2mpsk_assoc *a;
  struct sockaddr_storage addr;
  char peer[64], host[64];
  int admitted, established, killed, close_after;
  int plain; /* plaintext HTTP, outside any association: 4107 only */
  uint64_t deadline_ms, last_input_ms;
  fwd *fwd;
  conn *hs_prev, *hs_next; /* in handshake, oldest first */
  int in_hs;
  conn *hnext; /* the worker's table, by filter */
};

struct gw_http_worker {
  gw_worker *w;
  gw_gateway *gw;
  struct evhttp *http;
  struct evhttp_bound_socket *bound;
  struct evconnlistener *lst;
  struct event *accept_resume;
  conn *hs_head, *hs_tail;
  conn **table;
  size_t table_size;
  size_t n_conns;
  size_t n_admitted; /* counted by gw_admit() from this worker */
  size_t share;      /* its share of --max-conn */
  size_t busy;
  struct evhttp_connection *idle[BACKEND_IDLE_MAX];
  size_t n_idle;
  char backend_host[80];
  unsigned short backend_port;
  int stopping;
};

/* ---- the connection table and handshake list ---------------------------- */

static size_t slot(hworker *hw, const struct bufferevent *bev) {
  uintptr_t p = (uintptr_t)bev;
  return (size_t)((p >> 4) * 11400714819323198485ull) & (hw->table_size - 1);
}

static conn *find_conn(hworker *hw, const struct bufferevent *bev) {
  conn *c = hw->table[slot(hw, bev)];
  while (c != NULL && c->filter != bev)
    c = c->hnext;
  return c;
}

static void table_remove(hworker *hw, conn *c) {
  conn **pp = &hw->table[slot(hw, c->filter)];
  while (*pp != NULL && *pp != c)
    pp = &(*pp)->hnext;
  if (*pp == c)
    *pp = c->hnext;
}

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

static void on_wire_drained(struct evbuffer *buf,
                            const struct evbuffer_cb_info *info, void *arg);
static void on_plain_added(struct evbuffer *buf,
                           const struct evbuffer_cb_info *info, void *arg);

static void arm(conn *c, uint64_t at_ms) {
  uint64_t now = gw_now_ms(), d = at_ms > now ? at_ms - now : 0;
  struct timeval tv = {(time_t)(d / 1000), (suseconds_t)(d % 1000) * 1000};
  evtimer_add(c->timer, &tv);
}

static void release(conn *c) {
  if (c->admitted) {
    gw_release(c->hw->gw, (struct sockaddr *)&c->addr);
    c->admitted = 0;
    c->hw->n_admitted--;
  }
}

/* Ends a connection: its slot is free at once; evhttp frees it from the
 * timer, outside any of its callbacks. */
static void conn_kill(conn *c) {
  if (c->killed)
    return;
  c->killed = 1;
  release(c);
  hs_remove(c->hw, c);
  /* Its handshake slot in the library is free at once, too. */
  m2mpsk_assoc_free(c->a);
  c->a = NULL;
  struct timeval zero = {0, 0};
  evtimer_add(c->timer, &zero);
}

/* The filter's free_context: evhttp freed the connection. */
static void conn_free(void *arg) {
  conn *c = arg;
  hworker *hw = c->hw;
  release(c);
  hs_remove(hw, c);
  table_remove(hw, c);
  hw->n_conns--;
  if (c->fwd)
    c->fwd->c = NULL;
  /* The buffers may outlive c by a loop turn (libevent finalizes
   * bufferevents later): nothing of theirs may call back into it. */
  evbuffer_remove_cb(bufferevent_get_output(c->under), on_wire_drained, c);
  evbuffer_remove_cb(bufferevent_get_output(c->filter), on_plain_added, c);
  if (c->timer)
    event_free(c->timer);
  if (c->kick)
    event_free(c->kick);
  m2mpsk_assoc_free(c->a);
  free(c);
}

static void flush_assoc(conn *c, struct evbuffer *dst) {
  uint8_t buf[CHUNK + 512];
  size_t n;
  while (m2mpsk_assoc_drain(c->a, buf, sizeof(buf), &n) == M2MPSK_OK)
    evbuffer_add(dst, buf, n);
}

/* Pushes what waits for the peer into the socket now, so that a response
 * evhttp considers sent is in the kernel before evhttp may close. */
static void write_now(conn *c, struct evbuffer *dst) {
  evutil_socket_t fd = bufferevent_getfd(c->under);
  if (fd >= 0 && evbuffer_get_length(dst) > 0)
    (void)evbuffer_write(dst, fd);
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
    unsigned n = gw_addr_count(hw->gw, (struct sockaddr *)&v->addr);
    if (n > most) {
      most = n;
      victim = v;
    }
  }
  gw_trace("dropped peer=%s: oldest handshake, making room", victim->peer);
  conn_kill(victim);
}

/* Admission, right after accept (or at the first bytes): the connection
 * caps, then an association. 0, or -1 (killed). */
static int conn_admit(conn *c) {
  hworker *hw = c->hw;
  gw_gateway *gw = hw->gw;
  socklen_t len = sizeof(c->addr);
  evutil_socket_t fd = bufferevent_getfd(c->under);
  if (fd < 0 || getpeername(fd, (struct sockaddr *)&c->addr, &len) != 0) {
    conn_kill(c);
    return -1;
  }
  gw_format_addr((struct sockaddr *)&c->addr, 1, c->peer, sizeof(c->peer));
  gw_format_addr((struct sockaddr *)&c->addr, 0, c->host, sizeof(c->host));
  /* Each worker keeps to its share of --max-conn, so that one whose
   * listener drew the silent sockets makes room among its own, and the
   * others are never full for want of something to evict. */
  if (hw->n_admitted >= hw->share && hw->hs_head != NULL &&
      gw_addr_count(gw, (struct sockaddr *)&c->addr) < gw->opts.max_per_addr)
    evict(hw);
  int rc = gw_admit(gw, (struct sockaddr *)&c->addr);
  if (rc == GW_ADMIT_FULL && hw->hs_head != NULL) {
    evict(hw);
    rc = gw_admit(gw, (struct sockaddr *)&c->addr);
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
  rc = gw_assoc_new(gw, M2MPSK_TRANSPORT_TLS, c->host, &c->a);
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

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  conn *c = arg;
  if (c->killed) {
    /* evhttp frees the connection (and calls conn_free). */
    bufferevent_trigger_event(c->filter, BEV_EVENT_ERROR, 0);
    return;
  }
  if (c->a == NULL) {
    (void)conn_admit(c);
    return;
  }
  uint64_t now = gw_now_ms();
  if (!c->established) {
    if (now >= c->deadline_ms) {
      gw_log("failure peer=%s reason=timeout detail=\"no handshake within "
             "%u ms\"",
             c->peer, c->hw->gw->opts.handshake_timeout_ms);
      conn_kill(c);
    } else {
      arm(c, c->deadline_ms);
    }
    return;
  }
  uint64_t idle_end = c->last_input_ms + c->hw->gw->opts.idle_timeout_ms;
  if (c->fwd != NULL || now < idle_end) {
    arm(c, c->fwd != NULL ? now + c->hw->gw->opts.idle_timeout_ms : idle_end);
    return;
  }
  gw_trace("idle peer=%s: no input for %u ms, association ended", c->peer,
           c->hw->gw->opts.idle_timeout_ms);
  conn_kill(c);
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

/* ---- the filters ---------------------------------------------------------
 */

static enum bufferevent_filter_result
filter_in(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
          enum bufferevent_flush_mode mode, void *arg) {
  (void)mode;
  conn *c = arg;
  if (!c->killed && c->a == NULL)
    (void)conn_admit(c);
  if (c->killed) {
    evbuffer_drain(src, evbuffer_get_length(src));
    return BEV_NEED_MORE;
  }
  struct evbuffer *wire = bufferevent_get_output(c->under);
  if (!c->established && !c->plain && evbuffer_get_length(src) > 0 &&
      m2mpsk_assoc_state(c->a) == M2MPSK_STATE_HANDSHAKING) {
    /* A TLS record starts with its type (22 for a ClientHello); an HTTP
     * request with a method in capitals. The request gets evhttp's
     * parsing and a 4107, never the CSE. */
    uint8_t first;
    if (evbuffer_copyout(src, &first, 1) == 1 && first >= 'A' && first <= 'Z')
      c->plain = 1;
  }
  if (c->plain) {
    size_t n = evbuffer_get_length(src);
    if (limit >= 0 && (size_t)limit < n)
      n = (size_t)limit;
    evbuffer_remove_buffer(src, dst, n);
    return n > 0 ? BEV_OK : BEV_NEED_MORE;
  }
  uint8_t buf[CHUNK];
  int produced = 0;
  uint64_t now = gw_now_ms();
  if (evbuffer_get_length(src) > 0)
    c->last_input_ms = now;
  for (;;) {
    int progress = 0;
    /* Plaintext first, up to what evhttp may hold. */
    while (c->established &&
           (limit < 0 || evbuffer_get_length(dst) < (size_t)limit)) {
      size_t n;
      int rc = m2mpsk_assoc_read(c->a, buf, sizeof(buf), &n);
      if (rc == M2MPSK_OK) {
        evbuffer_add(dst, buf, n);
        produced = progress = 1;
        continue;
      }
      if (rc != M2MPSK_E_AGAIN) {
        if (rc == M2MPSK_E_FAILED)
          log_failure(c);
        else
          gw_trace("closed peer=%s: %s", c->peer, m2mpsk_strerror(rc));
        flush_assoc(c, wire);
        conn_kill(c);
        evbuffer_drain(src, evbuffer_get_length(src));
        return produced ? BEV_OK : BEV_NEED_MORE;
      }
      break;
    }
    size_t avail = evbuffer_get_length(src);
    if (avail == 0 || (limit >= 0 && evbuffer_get_length(dst) >= (size_t)limit))
      break;
    size_t n = avail < CHUNK ? avail : CHUNK;
    const uint8_t *p = evbuffer_pullup(src, (ev_ssize_t)n);
    int rc = m2mpsk_assoc_feed(c->a, p, n, now);
    if (rc == M2MPSK_OK) {
      evbuffer_drain(src, n);
      progress = 1;
    } else if (rc != M2MPSK_E_LIMIT) {
      flush_assoc(c, wire);
      if (m2mpsk_assoc_state(c->a) == M2MPSK_STATE_FAILED)
        log_failure(c);
      conn_kill(c);
      evbuffer_drain(src, evbuffer_get_length(src));
      return produced ? BEV_OK : BEV_NEED_MORE;
    }
    flush_assoc(c, wire);
    check_state(c);
    if (c->killed) {
      evbuffer_drain(src, evbuffer_get_length(src));
      break;
    }
    if (!progress)
      break;
  }
  write_now(c, wire);
  return produced ? BEV_OK : BEV_NEED_MORE;
}

static enum bufferevent_filter_result
filter_out(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
           enum bufferevent_flush_mode mode, void *arg) {
  (void)mode;
  conn *c = arg;
  if (c->plain && !c->killed) {
    size_t n = evbuffer_get_length(src);
    evbuffer_remove_buffer(src, dst, n);
    write_now(c, dst);
    return n > 0 ? BEV_OK : BEV_NEED_MORE;
  }
  if (c->killed || c->a == NULL || !c->established)
    return BEV_NEED_MORE;
  int consumed = 0;
  while (evbuffer_get_length(src) > 0 &&
         (limit < 0 || evbuffer_get_length(dst) < (size_t)limit)) {
    size_t n = evbuffer_get_length(src);
    if (n > CHUNK)
      n = CHUNK;
    const uint8_t *p = evbuffer_pullup(src, (ev_ssize_t)n);
    size_t w;
    int rc = m2mpsk_assoc_write(c->a, p, n, &w);
    if (rc != M2MPSK_OK) {
      gw_trace("peer=%s: cannot write: %s", c->peer, m2mpsk_strerror(rc));
      conn_kill(c);
      break;
    }
    evbuffer_drain(src, n);
    flush_assoc(c, dst);
    consumed = 1;
    write_now(c, dst);
  }
  return consumed ? BEV_OK : BEV_NEED_MORE;
}

/* After a response that asked for the connection to close: closed once
 * the last byte is in the kernel (evhttp would free it, and lose what it
 * had not written, at once). */
static void on_wire_drained(struct evbuffer *buf,
                            const struct evbuffer_cb_info *info, void *arg) {
  conn *c = arg;
  if (info->n_deleted > 0 && evbuffer_get_length(buf) == 0 && c->close_after &&
      c->fwd == NULL &&
      evbuffer_get_length(bufferevent_get_output(c->filter)) == 0)
    conn_kill(c);
}

/* evhttp writes a response into the filter before it enables writing,
 * and a filter runs its output filter on additions only: so the filter is
 * flushed once evhttp's call is over. */
static void on_kick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  conn *c = arg;
  if (!c->killed)
    bufferevent_flush(c->filter, EV_WRITE, BEV_NORMAL);
}

static void on_plain_added(struct evbuffer *buf,
                           const struct evbuffer_cb_info *info, void *arg) {
  (void)buf;
  conn *c = arg;
  if (info->n_added > 0)
    event_active(c->kick, EV_WRITE, 0);
}

/* evhttp_set_bevcb: every accepted connection. Never returns NULL: evhttp
 * would then serve plain HTTP on it. */
static struct bufferevent *make_bev(struct event_base *base, void *arg) {
  hworker *hw = arg;
  conn *c = calloc(1, sizeof(*c));
  if (c != NULL) {
    c->hw = hw;
    c->under = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(base, on_timer, c);
    c->kick = event_new(base, -1, 0, on_kick, c);
  }
  if (c != NULL && c->under != NULL && c->timer != NULL && c->kick != NULL)
    c->filter = bufferevent_filter_new(c->under, filter_in, filter_out,
                                       BEV_OPT_CLOSE_ON_FREE, conn_free, c);
  if (c == NULL || c->filter == NULL) {
    gw_log("out of memory for a new connection");
    abort(); /* failing closed: no plain HTTP, ever */
  }
  size_t bound = hw->gw->opts.max_buffer;
  bufferevent_setwatermark(c->under, EV_READ, 0, bound);
  bufferevent_setwatermark(c->under, EV_WRITE, 0, bound);
  bufferevent_setwatermark(c->filter, EV_READ, 0, bound);
  evbuffer_add_cb(bufferevent_get_output(c->under), on_wire_drained, c);
  evbuffer_add_cb(bufferevent_get_output(c->filter), on_plain_added, c);
  size_t s = slot(hw, c->filter);
  c->hnext = hw->table[s];
  hw->table[s] = c;
  hw->n_conns++;
  struct timeval zero = {0, 0};
  evtimer_add(c->timer, &zero); /* admission, once evhttp set the fd */
  return c->filter;
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

static void reply_json(struct evhttp_request *req, int code, const char *reason,
                       int rsc, const char *why) {
  struct evkeyvalq *out = evhttp_request_get_output_headers(req);
  const char *ri =
      evhttp_find_header(evhttp_request_get_input_headers(req), "X-M2M-RI");
  char num[16], body[256];
  if (rsc > 0) {
    snprintf(num, sizeof(num), "%d", rsc);
    evhttp_add_header(out, "X-M2M-RSC", num);
  }
  if (ri != NULL)
    evhttp_add_header(out, "X-M2M-RI", ri);
  evhttp_add_header(out, "Content-Type", "application/json");
  struct evbuffer *b = evbuffer_new();
  if (b != NULL)
    evbuffer_add(b, body, gw_gate_dbg_body(why, body, sizeof(body)));
  evhttp_send_reply(req, code, reason, b);
  if (b != NULL)
    evbuffer_free(b);
}

/* evhttp closes a connection at once after a response when the request
 * asked for it (Connection: close, HTTP/1.0): the gateway keeps it until
 * the response is written instead (on_wire_drained). */
static void keep_until_written(conn *c, struct evhttp_request *req) {
  struct evkeyvalq *in = evhttp_request_get_input_headers(req);
  const char *conn_hdr = evhttp_find_header(in, "Connection");
  int old = req->major == 1 && req->minor == 0;
  int close =
      (conn_hdr != NULL && strcasecmp(conn_hdr, "close") == 0) ||
      (old && (conn_hdr == NULL || strcasecmp(conn_hdr, "keep-alive") != 0));
  if (!close)
    return;
  c->close_after = 1;
  evhttp_remove_header(in, "Connection");
  if (old)
    evhttp_add_header(in, "Connection", "keep-alive");
}

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
  /* The CSE gets the idle time to answer, and never less than 30 s: a
   * device's short idle timeout is no reason to cut a slow CSE off. */
  unsigned secs = hw->gw->opts.idle_timeout_ms / 1000;
  evhttp_connection_set_timeout(b, secs > 30 ? (int)secs : 30);
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

static void on_backend_response(struct evhttp_request *breq, void *arg) {
  fwd *f = arg;
  hworker *hw = f->hw;
  conn *c = f->c;
  hw->busy--;
  if (c != NULL) {
    c->fwd = NULL;
    c->last_input_ms = gw_now_ms(); /* idle from the answer on */
  }
  backend_put(hw, f->bconn);
  struct evhttp_request *req = f->req;
  free(f);
  int code = breq ? evhttp_request_get_response_code(breq) : 0;
  if (code == 0) {
    gw_log("request peer=%s: the CSE did not answer", c ? c->peer : "-");
    reply_json(req, 502, "Bad Gateway", 0, "the CSE did not answer");
    return;
  }
  struct evkeyvalq *bin = evhttp_request_get_input_headers(breq);
  struct evkeyvalq *out = evhttp_request_get_output_headers(req);
  for (struct evkeyval *h = bin->tqh_first; h != NULL; h = h->next.tqe_next)
    if (!header_is(h->key, k_hop))
      evhttp_add_header(out, h->key, h->value);
  struct evbuffer *body = evhttp_request_get_input_buffer(breq);
  const char *rsc_s = evhttp_find_header(bin, "X-M2M-RSC");
  int rsc = rsc_s ? atoi(rsc_s) : 0;
  if (c != NULL && c->a != NULL && rsc == 2001 &&
      m2mpsk_assoc_peer_id_is_credential(c->a)) {
    size_t len = evbuffer_get_length(body);
    const char *why;
    int bound =
        gw_gate_response(c->a, 1, rsc, evbuffer_pullup(body, -1), len, &why);
    if (bound == 1)
      gw_log("bound peer=%s to AE-ID %s", c->peer, m2mpsk_assoc_peer_id(c->a));
    else if (bound < 0)
      gw_log("peer=%s: AE-ID not bound: %s", c->peer, why);
  }
  const char *reason = evhttp_request_get_response_code_line(breq);
  evhttp_send_reply(req, code, reason ? reason : "", body);
}

static void on_request(struct evhttp_request *req, void *arg) {
  hworker *hw = arg;
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  conn *c =
      evcon ? find_conn(hw, evhttp_connection_get_bufferevent(evcon)) : NULL;
  if (c == NULL || c->a == NULL || !c->established || c->killed) {
    if (c != NULL) {
      gw_log("refused peer=%s rsc=4107: a request outside any security "
             "association",
             c->peer);
      c->close_after = 1;
    }
    reply_json(req, 403, "Forbidden", 4107, "security association required");
    return;
  }
  keep_until_written(c, req);
  struct evkeyvalq *in = evhttp_request_get_input_headers(req);
  const char *from = evhttp_find_header(in, "X-M2M-Origin");
  enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
  int ae_create =
      cmd == EVHTTP_REQ_POST &&
      gw_gate_content_type_ty(evhttp_find_header(in, "Content-Type")) == 2;
  const char *why;
  int rsc = gw_gate_request(c->a, from, ae_create, &why);
  if (rsc != 0) {
    gw_log("refused peer=%s from=%s bound=%s rsc=%d: %s", c->peer,
           from ? from : "-", m2mpsk_assoc_peer_id(c->a), rsc, why);
    reply_json(req, 403, "Forbidden", rsc, why);
    return;
  }
  if (hw->stopping) {
    reply_json(req, 503, "Service Unavailable", 0, "the gateway is stopping");
    return;
  }
  fwd *f = calloc(1, sizeof(*f));
  struct evhttp_connection *b = f ? backend_get(hw) : NULL;
  struct evhttp_request *breq =
      b ? evhttp_request_new(on_backend_response, f) : NULL;
  if (breq == NULL) {
    if (b)
      backend_put(hw, b);
    free(f);
    reply_json(req, 503, "Service Unavailable", 0, "out of memory");
    return;
  }
  struct evkeyvalq *bout = evhttp_request_get_output_headers(breq);
  const char *idh = hw->gw->opts.identity_header;
  for (struct evkeyval *h = in->tqh_first; h != NULL; h = h->next.tqe_next)
    if (!header_is(h->key, k_hop) && !(idh && strcasecmp(h->key, idh) == 0))
      evhttp_add_header(bout, h->key, h->value);
  char host[100];
  snprintf(host, sizeof(host), "%s:%u", hw->backend_host, hw->backend_port);
  evhttp_add_header(bout, "Host", host);
  if (idh != NULL)
    evhttp_add_header(bout, idh, gw_gate_identity(c->a));
  evbuffer_add_buffer(evhttp_request_get_output_buffer(breq),
                      evhttp_request_get_input_buffer(req));
  f->hw = hw;
  f->c = c;
  f->req = req;
  f->bconn = b;
  f->ae_create = ae_create;
  gw_trace("request peer=%s from=%s %s -> CSE", c->peer, from ? from : "-",
           evhttp_request_get_uri(req));
  if (evhttp_make_request(b, breq, cmd, evhttp_request_get_uri(req)) != 0) {
    /* evhttp freed breq. */
    backend_put(hw, b);
    free(f);
    reply_json(req, 502, "Bad Gateway", 0, "the CSE cannot be reached");
    return;
  }
  c->fwd = f;
  hw->busy++;
}

/* ---- the listener -------------------------------------------------------- */

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
  size_t want = 2 * (size_t)gw->opts.max_conn / gw->n_workers + 64;
  hw->table_size = 64;
  while (hw->table_size < want && hw->table_size < (1u << 20))
    hw->table_size <<= 1;
  hw->table = calloc(hw->table_size, sizeof(*hw->table));
  hw->share = gw->opts.max_conn / gw->n_workers;
  if (hw->share == 0)
    hw->share = 1;
  if (hw->table == NULL)
    return -1;
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
      evconnlistener_new(w->base, NULL, NULL,
                         LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
  hw->http = evhttp_new(w->base);
  hw->accept_resume = evtimer_new(w->base, on_accept_resume, hw);
  if (hw->lst == NULL || hw->http == NULL || hw->accept_resume == NULL) {
    if (hw->lst == NULL)
      close(fd);
    return -1;
  }
  evhttp_set_bevcb(hw->http, make_bev, hw);
  evhttp_set_gencb(hw->http, on_request, hw);
  evhttp_set_allowed_methods(hw->http,
                             EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                 EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD |
                                 EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
  evhttp_set_max_body_size(hw->http, (ev_ssize_t)gw->opts.max_request);
  evhttp_set_max_headers_size(hw->http,
                              (ev_ssize_t)(gw->opts.max_request < HEADERS_MAX
                                               ? gw->opts.max_request
                                               : HEADERS_MAX));
  /* The gateway's own timers end connections; evhttp's only backs them. */
  evhttp_set_timeout(hw->http, (int)(gw->opts.idle_timeout_ms / 1000) + 5);
  hw->bound = evhttp_bind_listener(hw->http, hw->lst);
  if (hw->bound == NULL)
    return -1;
  evconnlistener_set_error_cb(hw->lst, on_accept_error);
  return 0;
}

void gw_http_worker_stop(gw_worker *w) {
  hworker *hw = w->http;
  hw->stopping = 1;
  if (hw->bound != NULL) {
    evhttp_del_accept_socket(hw->http, hw->bound);
    hw->bound = NULL;
    hw->lst = NULL;
  }
  /* Idle connections end now; one with a request at the CSE once it is
   * answered. */
  for (size_t i = 0; i < hw->table_size; i++)
    for (conn *c = hw->table[i]; c != NULL; c = c->hnext) {
      if (c->fwd != NULL)
        c->close_after = 1;
      else
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
  if (hw->http != NULL)
    evhttp_free(hw->http); /* every connection, through conn_free */
  /* bufferevents are finalized from the loop: let conn_free run while hw
   * is still there. */
  for (int i = 0; i < 100 && hw->n_conns > 0; i++)
    event_base_loop(w->base, EVLOOP_NONBLOCK);
  for (size_t i = 0; i < hw->n_idle; i++)
    evhttp_connection_free(hw->idle[i]);
  if (hw->accept_resume)
    event_free(hw->accept_resume);
  free(hw->table);
  free(hw);
  w->http = NULL;
}
