/* m2mpsk-gwbench-load: the client of the gateway benchmark. One thread, one
 * epoll loop, nonblocking sockets, a bounded number of connections, a
 * bounded time. The same code drives every contender: TLS-PSK through
 * m2mpsk's initiator (the same suite, key and identities for all), or plain
 * HTTP for the backend reached directly.
 *
 *   m2mpsk-gwbench-load --port P --mode assoc|keepalive|idle [--tls
 *       --keys FILE --kpsa-id ID [--suites LIST]] [--conc C] [--warmup S]
 *       [--seconds S] [--n N] [--hold S] [--origin FROM] [--no-request]
 *
 * Modes:
 *  - assoc: C connections at a time, each a new association: TCP connect,
 *    full handshake, one request, its response, close_notify, close.
 *  - keepalive: C associations established during the warm-up, then
 *    requests one after another on each (keep-alive, no pipelining).
 *  - idle: N associations, C at a time in the making, each with one request
 *    answered, then all held idle until a line (or EOF) on stdin, or --hold
 *    seconds. With --no-request, each is held as soon as it is established
 *    (TLS) or connected (plain), without a request.
 *
 * Output, on stdout: "go" when the timed window starts, "stop" when it
 * ends (the driver reads the servers' CPU time at both), "idle N" when N
 * associations are idle, then one JSON line of results. Exit 0, or 1 when
 * the setup failed or nothing completed. */
#define _GNU_SOURCE
#include <m2mpsk/m2mpsk.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { MODE_ASSOC, MODE_KEEPALIVE, MODE_IDLE };
enum cstate { C_FREE, C_CONNECTING, C_HANDSHAKE, C_WAIT, C_IDLE };

#define RESP_CAP 16384
#define CONN_TIMEOUT_NS (10ull * 1000000000ull)

typedef struct conn {
  int fd;
  enum cstate st;
  m2mpsk_assoc *a;
  uint64_t t_open, t_req; /* connect started, request sent */
  uint8_t *out;           /* bytes the socket did not take yet */
  size_t out_len, out_cap;
  char resp[RESP_CAP];
  size_t resp_len;
  int want_out;
} conn;

static struct {
  enum mode mode;
  int port, tls, conc, n, no_request;
  double warmup, seconds, hold;
  const char *keys, *kpsa_id, *suites, *origin;
  m2mpsk_keystore *ks;
  m2mpsk_config *cfg;
  int ep;
  conn *c;
  char req[512];
  size_t req_len;
  /* counters; "in" ones only inside the timed window */
  int timing, done_timing;
  uint64_t t_go, t_stop;
  unsigned long long completed_in, completed_all, hs_fail, conn_fail, http_fail,
      closed_by_peer, timeouts, idle_now, dropped_idle;
  uint64_t *lat; /* ns, inside the window */
  size_t lat_n, lat_cap;
  uint64_t *alat; /* assoc mode: connect to response, ns */
  size_t alat_n, alat_cap;
  char last_error[200];
} g = {.mode = MODE_ASSOC,
       .conc = 16,
       .n = 1000,
       .warmup = 1,
       .seconds = 3,
       .hold = 60,
       .origin = "Cbench"};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

__attribute__((format(printf, 1, 2))) static void note_error(const char *fmt,
                                                             ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g.last_error, sizeof(g.last_error), fmt, ap);
  va_end(ap);
}

static void push(uint64_t **arr, size_t *n, size_t *cap, uint64_t v) {
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 65536;
    uint64_t *p = realloc(*arr, nc * sizeof(**arr));
    if (p == NULL)
      return; /* a latency sample lost, not a result */
    *arr = p;
    *cap = nc;
  }
  (*arr)[(*n)++] = v;
}

static void ep_set(conn *c, int want_out) {
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u),
                           .data.ptr = c};
  if (want_out != c->want_out) {
    c->want_out = want_out;
    (void)epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
  }
}

static void conn_close(conn *c) {
  if (c->st == C_FREE)
    return;
  if (c->st == C_IDLE)
    g.idle_now--;
  m2mpsk_assoc_free(c->a);
  c->a = NULL;
  (void)epoll_ctl(g.ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  c->out_len = 0;
  c->resp_len = 0;
  c->st = C_FREE;
}

/* Sends what is queued: 0, or -1 when the socket failed. */
static int conn_send(conn *c, const uint8_t *data, size_t len) {
  if (c->out_len == 0 && len > 0) {
    ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return -1;
    if (w > 0) {
      data += w;
      len -= (size_t)w;
    }
  }
  if (len > 0) {
    if (c->out_len + len > c->out_cap) {
      size_t nc = c->out_len + len + 4096;
      uint8_t *p = realloc(c->out, nc);
      if (p == NULL)
        return -1;
      c->out = p;
      c->out_cap = nc;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
  }
  ep_set(c, c->out_len > 0 || c->st == C_CONNECTING);
  return 0;
}

static int conn_flush_out(conn *c) {
  while (c->out_len > 0) {
    ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    memmove(c->out, c->out + w, c->out_len - (size_t)w);
    c->out_len -= (size_t)w;
  }
  ep_set(c, c->out_len > 0);
  return 0;
}

/* Moves whatever the association has to send onto the socket. */
static int tls_flush(conn *c) {
  uint8_t buf[16384 + 2048];
  size_t n;
  while (m2mpsk_assoc_drain(c->a, buf, sizeof(buf), &n) == M2MPSK_OK)
    if (conn_send(c, buf, n) != 0)
      return -1;
  return 0;
}

/* Idle mode: this association is up (and, unless --no-request, has had
 * its request answered); it stays as it is until released. */
static void mark_idle(conn *c) {
  c->st = C_IDLE;
  g.idle_now++;
  if (g.no_request)
    g.completed_all++;
}

static int send_request(conn *c) {
  c->resp_len = 0;
  c->t_req = now_ns();
  c->st = C_WAIT;
  if (!g.tls)
    return conn_send(c, (const uint8_t *)g.req, g.req_len);
  size_t written;
  if (m2mpsk_assoc_write(c->a, (const uint8_t *)g.req, g.req_len, &written) !=
      M2MPSK_OK) {
    note_error("%s", "m2mpsk_assoc_write failed");
    return -1;
  }
  return tls_flush(c);
}

static int conn_open(conn *c) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    note_error("socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  struct sockaddr_in sin = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)g.port)};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  c->fd = fd;
  c->t_open = now_ns();
  c->want_out = 1;
  c->st = C_CONNECTING;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    note_error("epoll_ctl: %s", strerror(errno));
    close(fd);
    c->st = C_FREE;
    return -1;
  }
  if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 &&
      errno != EINPROGRESS) {
    note_error("connect: %s", strerror(errno));
    conn_close(c);
    g.conn_fail++;
    return -1;
  }
  return 0;
}

/* The TCP connection is up: start the handshake, or send the request. */
static int on_connected(conn *c) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    note_error("connect: %s", strerror(err ? err : errno));
    g.conn_fail++;
    return -1;
  }
  if (!g.tls) {
    if (g.no_request) {
      mark_idle(c);
      return 0;
    }
    return send_request(c);
  }
  c->st = C_HANDSHAKE;
  int rc = m2mpsk_assoc_new(&c->a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                            g.cfg, g.ks, g.kpsa_id);
  if (rc == M2MPSK_OK)
    rc = m2mpsk_assoc_start(c->a, now_ns() / 1000000, (int64_t)time(NULL));
  if (rc != M2MPSK_OK) {
    note_error("initiator: %s", m2mpsk_strerror(rc));
    g.hs_fail++;
    return -1;
  }
  return tls_flush(c);
}

/* A whole response in c->resp: 1, with *status set; 0 when more is
 * needed; -1 when it cannot be parsed. */
static int response_complete(conn *c, int *status) {
  c->resp[c->resp_len < RESP_CAP ? c->resp_len : RESP_CAP - 1] = '\0';
  char *end = strstr(c->resp, "\r\n\r\n");
  if (end == NULL)
    return c->resp_len >= RESP_CAP - 1 ? -1 : 0;
  if (strncmp(c->resp, "HTTP/1.", 7) != 0 || c->resp_len < 12)
    return -1;
  *status = atoi(c->resp + 9);
  size_t head = (size_t)(end - c->resp) + 4;
  long clen = -1;
  int chunked = 0;
  for (char *p = strstr(c->resp, "\r\n"); p != NULL && p < end;
       p = strstr(p + 2, "\r\n")) {
    if (strncasecmp(p + 2, "Content-Length:", 15) == 0)
      clen = strtol(p + 17, NULL, 10);
    else if (strncasecmp(p + 2, "Transfer-Encoding:", 18) == 0 &&
             strstr(p + 2, "chunked") != NULL)
      chunked = 1;
  }
  if (chunked) {
    c->resp[c->resp_len] = '\0';
    return strstr(c->resp + head, "\r\n0\r\n\r\n") != NULL ||
                   strncmp(c->resp + head, "0\r\n\r\n", 5) == 0
               ? 1
               : 0;
  }
  if (clen < 0)
    clen = 0;
  return c->resp_len >= head + (size_t)clen ? 1 : 0;
}

static void start_next(conn *c);

static void finish_conn(conn *c, int closing_ok) {
  if (g.mode == MODE_ASSOC && closing_ok && g.tls && c->a != NULL) {
    if (m2mpsk_assoc_close(c->a) == M2MPSK_OK)
      (void)tls_flush(c);
  }
  conn_close(c);
}

/* A response arrived whole. */
static void on_response(conn *c, int status) {
  uint64_t t = now_ns();
  if (status != 200) {
    g.http_fail++;
    note_error("HTTP status %d", status);
  } else {
    g.completed_all++;
    if (g.timing) {
      g.completed_in++;
      push(&g.lat, &g.lat_n, &g.lat_cap, t - c->t_req);
      if (g.mode == MODE_ASSOC)
        push(&g.alat, &g.alat_n, &g.alat_cap, t - c->t_open);
    }
  }
  switch (g.mode) {
  case MODE_ASSOC:
    finish_conn(c, 1);
    start_next(c);
    break;
  case MODE_KEEPALIVE:
    if (send_request(c) != 0) {
      conn_close(c);
      start_next(c);
    }
    break;
  case MODE_IDLE: mark_idle(c); break;
  }
}

static void on_readable(conn *c) {
  uint8_t buf[32768];
  for (;;) {
    ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (r <= 0) {
      if (c->st == C_IDLE)
        g.dropped_idle++;
      else if (c->st == C_HANDSHAKE)
        g.hs_fail++;
      else
        g.closed_by_peer++;
      note_error("%s",
                 r == 0 ? "peer closed the connection" : "connection reset");
      conn_close(c);
      start_next(c);
      return;
    }
    if (!g.tls) {
      size_t room = RESP_CAP - 1 - c->resp_len;
      if ((size_t)r > room)
        r = (ssize_t)room;
      memcpy(c->resp + c->resp_len, buf, (size_t)r);
      c->resp_len += (size_t)r;
    } else {
      int rc = m2mpsk_assoc_feed(c->a, buf, (size_t)r, now_ns() / 1000000);
      if (rc != M2MPSK_OK && rc != M2MPSK_E_LIMIT) {
        if (rc == M2MPSK_E_FAILED)
          note_error("handshake failed: %s",
                     m2mpsk_reason_name(m2mpsk_assoc_failure(c->a)));
        else
          note_error("feed: %s", m2mpsk_strerror(rc));
        (void)tls_flush(c);
        if (c->st == C_HANDSHAKE)
          g.hs_fail++;
        else
          g.closed_by_peer++;
        conn_close(c);
        start_next(c);
        return;
      }
      if (tls_flush(c) != 0) {
        g.closed_by_peer++;
        conn_close(c);
        start_next(c);
        return;
      }
      if (c->st == C_HANDSHAKE) {
        if (m2mpsk_assoc_state(c->a) != M2MPSK_STATE_ESTABLISHED)
          continue;
        if (g.no_request) {
          mark_idle(c);
          return;
        }
        if (send_request(c) != 0) {
          g.hs_fail++;
          conn_close(c);
          start_next(c);
          return;
        }
      }
      size_t n;
      while (c->resp_len < RESP_CAP - 1 &&
             (rc = m2mpsk_assoc_read(c->a, (uint8_t *)c->resp + c->resp_len,
                                     RESP_CAP - 1 - c->resp_len, &n)) ==
                 M2MPSK_OK)
        c->resp_len += n;
      if (rc == M2MPSK_E_CLOSED || rc == M2MPSK_E_FAILED) {
        if (c->st == C_IDLE)
          g.dropped_idle++;
        else
          g.closed_by_peer++;
        note_error("%s", rc == M2MPSK_E_CLOSED ? "peer sent close_notify"
                                               : "association failed");
        conn_close(c);
        start_next(c);
        return;
      }
    }
    if (c->st == C_WAIT) {
      int status = 0;
      int done = response_complete(c, &status);
      if (done < 0) {
        g.http_fail++;
        note_error("%s", "unparsable response");
        conn_close(c);
        start_next(c);
        return;
      }
      if (done)
        on_response(c, status);
      if (c->st == C_FREE || g.mode == MODE_ASSOC)
        return;
    }
  }
}

/* Whether a new connection may start now. */
static int may_start(void) {
  /* idle mode: one slot per association, a failed one starts again */
  return !g.done_timing;
}

static void start_next(conn *c) {
  if (c->st != C_FREE || !may_start())
    return;
  if (conn_open(c) != 0)
    c->st = C_FREE;
}

static void handle(conn *c, uint32_t events) {
  if (c->st == C_CONNECTING) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
      return;
    if (on_connected(c) != 0) {
      conn_close(c);
      start_next(c);
      return;
    }
  }
  if ((events & EPOLLOUT) && c->st != C_FREE && conn_flush_out(c) != 0) {
    g.closed_by_peer++;
    conn_close(c);
    start_next(c);
    return;
  }
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c->st != C_FREE)
    on_readable(c);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(uint64_t *v, size_t n, double p) {
  if (n == 0)
    return -1;
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return (double)v[i] / 1000.0;
}

static void usage(void) {
  fputs("usage: m2mpsk-gwbench-load --port P --mode assoc|keepalive|idle\n"
        "  [--tls --keys FILE --kpsa-id ID [--suites LIST]] [--conc C]\n"
        "  [--warmup S] [--seconds S] [--n N] [--hold S] [--origin FROM]\n"
        "  [--no-request]\n",
        stderr);
}

static int parse_args(int argc, char **argv) {
  static const struct option opts[] = {
      {"port", required_argument, NULL, 'p'},
      {"mode", required_argument, NULL, 'm'},
      {"tls", no_argument, NULL, 't'},
      {"keys", required_argument, NULL, 'k'},
      {"kpsa-id", required_argument, NULL, 'i'},
      {"suites", required_argument, NULL, 's'},
      {"conc", required_argument, NULL, 'c'},
      {"warmup", required_argument, NULL, 'w'},
      {"seconds", required_argument, NULL, 'S'},
      {"n", required_argument, NULL, 'n'},
      {"hold", required_argument, NULL, 'H'},
      {"origin", required_argument, NULL, 'o'},
      {"no-request", no_argument, NULL, 'R'},
      {NULL, 0, NULL, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (o) {
    case 'p': g.port = atoi(optarg); break;
    case 'm':
      if (strcmp(optarg, "assoc") == 0)
        g.mode = MODE_ASSOC;
      else if (strcmp(optarg, "keepalive") == 0)
        g.mode = MODE_KEEPALIVE;
      else if (strcmp(optarg, "idle") == 0)
        g.mode = MODE_IDLE;
      else
        return -1;
      break;
    case 't': g.tls = 1; break;
    case 'k': g.keys = optarg; break;
    case 'i': g.kpsa_id = optarg; break;
    case 's': g.suites = optarg; break;
    case 'c': g.conc = atoi(optarg); break;
    case 'w': g.warmup = atof(optarg); break;
    case 'S': g.seconds = atof(optarg); break;
    case 'n': g.n = atoi(optarg); break;
    case 'H': g.hold = atof(optarg); break;
    case 'o': g.origin = optarg; break;
    case 'R': g.no_request = 1; break;
    default: return -1;
    }
  }
  if (optind != argc || g.port <= 0 || g.port > 65535 || g.conc < 1 ||
      g.conc > 100000 || g.n < 1 || g.seconds <= 0 || g.warmup < 0 ||
      g.hold <= 0 || (g.tls && (g.keys == NULL || g.kpsa_id == NULL)))
    return -1;
  return 0;
}

static int setup_tls(void) {
  size_t line = 0;
  int rc = m2mpsk_keystore_new(&g.ks, 0);
  if (rc == M2MPSK_OK)
    rc = m2mpsk_keystore_load_file(g.ks, g.keys, &line);
  if (rc != M2MPSK_OK) {
    fprintf(stderr, "m2mpsk-gwbench-load: key file %s: %s (line %zu)\n", g.keys,
            m2mpsk_strerror(rc), line);
    return -1;
  }
  rc = m2mpsk_config_new(&g.cfg);
  if (rc == M2MPSK_OK && g.suites != NULL)
    rc = m2mpsk_config_set_suites(g.cfg, g.suites);
  if (rc != M2MPSK_OK) {
    fprintf(stderr, "m2mpsk-gwbench-load: config: %s\n", m2mpsk_strerror(rc));
    return -1;
  }
  return 0;
}

/* Idle mode: waits for a line or EOF on stdin, or --hold seconds, while
 * noticing associations the server drops. */
static void hold_idle(void) {
  uint64_t until = now_ns() + (uint64_t)(g.hold * 1e9);
  struct epoll_event stdin_ev = {.events = EPOLLIN, .data.ptr = NULL};
  (void)epoll_ctl(g.ep, EPOLL_CTL_ADD, STDIN_FILENO, &stdin_ev);
  for (;;) {
    uint64_t t = now_ns();
    if (t >= until)
      return;
    struct epoll_event evs[64];
    int n = epoll_wait(g.ep, evs, 64, (int)((until - t) / 1000000) + 1);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == NULL)
        return;
      handle(evs[i].data.ptr, evs[i].events);
    }
  }
}

int main(int argc, char **argv) {
  if (parse_args(argc, argv) != 0) {
    usage();
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
  /* Whatever happens, the process ends: the window, the warm-up, the hold
   * and a minute for the rest. */
  alarm((unsigned)(g.warmup + g.seconds + g.hold + 60));
  if (g.tls && setup_tls() != 0)
    return 1;
  g.req_len = (size_t)snprintf(g.req, sizeof(g.req),
                               "GET /cse-in/cnt_bench/la HTTP/1.1\r\n"
                               "Host: 127.0.0.1:%d\r\n"
                               "X-M2M-Origin: %s\r\n"
                               "X-M2M-RI: gwbench\r\n"
                               "X-M2M-RVI: 3\r\n"
                               "Accept: application/json\r\n\r\n",
                               g.port, g.origin);
  int slots = g.mode == MODE_IDLE ? g.n : g.conc;
  g.c = calloc((size_t)slots, sizeof(*g.c));
  g.ep = epoll_create1(EPOLL_CLOEXEC);
  if (g.c == NULL || g.ep < 0) {
    perror("m2mpsk-gwbench-load");
    return 1;
  }
  for (int i = 0; i < slots; i++)
    g.c[i].fd = -1;
  /* Idle mode: at most --conc connections in the making at a time. */
  int active = g.mode == MODE_IDLE ? (g.conc < g.n ? g.conc : g.n) : g.conc;
  for (int i = 0; i < active; i++)
    start_next(&g.c[i]);

  uint64_t t0 = now_ns();
  uint64_t warm_end = t0 + (uint64_t)(g.warmup * 1e9);
  uint64_t hard_end = warm_end + (uint64_t)((g.seconds + 30) * 1e9);
  uint64_t last_scan = t0;
  double cpu0 = 0, cpu1 = 0;
  int next_idle = active;
  for (;;) {
    uint64_t t = now_ns();
    if (t >= hard_end) {
      note_error("%s", "the run did not finish in time");
      break;
    }
    if (g.mode != MODE_IDLE) {
      int all_up = 1;
      if (g.mode == MODE_KEEPALIVE)
        for (int i = 0; i < g.conc; i++)
          all_up &= g.c[i].st == C_WAIT;
      if (!g.timing && !g.done_timing && t >= warm_end && all_up) {
        g.timing = 1;
        g.t_go = t;
        cpu0 = cpu_s();
        puts("go");
        fflush(stdout);
      }
      if (g.timing && t >= g.t_go + (uint64_t)(g.seconds * 1e9)) {
        g.timing = 0;
        g.done_timing = 1;
        g.t_stop = t;
        cpu1 = cpu_s();
        puts("stop");
        fflush(stdout);
        break;
      }
    } else {
      /* refill the window of connections in the making */
      while (next_idle < g.n) {
        int making = 0;
        for (int i = 0; i < next_idle; i++)
          making += g.c[i].st != C_FREE && g.c[i].st != C_IDLE;
        if (making >= g.conc)
          break;
        start_next(&g.c[next_idle]);
        if (g.c[next_idle].st == C_FREE)
          break;
        next_idle++;
      }
      if (g.idle_now >= (unsigned long long)g.n)
        break;
    }
    if (t - last_scan > 200000000ull) {
      last_scan = t;
      for (int i = 0; i < slots; i++) {
        conn *c = &g.c[i];
        uint64_t since = c->st == C_WAIT ? c->t_req : c->t_open;
        if (c->st != C_FREE && c->st != C_IDLE && t > since &&
            t - since > CONN_TIMEOUT_NS) {
          g.timeouts++;
          note_error("%s", "a connection made no progress in 10 s");
          conn_close(c);
          start_next(c);
        }
      }
    }
    struct epoll_event evs[256];
    int n = epoll_wait(g.ep, evs, 256, 50);
    for (int i = 0; i < n; i++)
      handle(evs[i].data.ptr, evs[i].events);
  }

  double wall = 0;
  if (g.mode == MODE_IDLE) {
    printf("idle %llu\n", g.idle_now);
    fflush(stdout);
    if (g.idle_now >= (unsigned long long)g.n)
      hold_idle();
  } else {
    wall = (double)(g.t_stop - g.t_go) / 1e9;
  }
  if (g.lat_n > 0)
    qsort(g.lat, g.lat_n, sizeof(*g.lat), cmp_u64);
  if (g.alat_n > 0)
    qsort(g.alat, g.alat_n, sizeof(*g.alat), cmp_u64);
  printf("{\"mode\":\"%s\",\"tls\":%d,\"conc\":%d,\"wall_s\":%.6f,"
         "\"completed\":%llu,\"completed_all\":%llu,\"client_cpu_s\":%.6f,"
         "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
         "\"assoc_p50_us\":%.1f,\"assoc_p99_us\":%.1f,"
         "\"idle\":%llu,\"dropped_idle\":%llu,\"hs_fail\":%llu,"
         "\"conn_fail\":%llu,\"http_fail\":%llu,\"closed_by_peer\":%llu,"
         "\"timeouts\":%llu,\"last_error\":\"%s\"}\n",
         g.mode == MODE_ASSOC       ? "assoc"
         : g.mode == MODE_KEEPALIVE ? "keepalive"
                                    : "idle",
         g.tls, g.conc, wall, g.completed_in, g.completed_all, cpu1 - cpu0,
         pct(g.lat, g.lat_n, 0.5), pct(g.lat, g.lat_n, 0.99),
         pct(g.lat, g.lat_n, 0.999), pct(g.alat, g.alat_n, 0.5),
         pct(g.alat, g.alat_n, 0.99), g.idle_now, g.dropped_idle, g.hs_fail,
         g.conn_fail, g.http_fail, g.closed_by_peer, g.timeouts, g.last_error);
  fflush(stdout);
  int ok = g.mode == MODE_IDLE ? g.idle_now >= (unsigned long long)g.n
                               : g.completed_in > 0;
  for (int i = 0; i < slots; i++) {
    conn_close(&g.c[i]);
    free(g.c[i].out);
  }
  m2mpsk_config_free(g.cfg);
  m2mpsk_keystore_free(g.ks);
  free(g.c);
  free(g.lat);
  free(g.alat);
  close(g.ep);
  return ok ? 0 : 1;
}
