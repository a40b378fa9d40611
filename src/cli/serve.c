/* m2mpsk serve: Entity B. One poll loop serves many associations: over TCP
 * one socket each, over UDP one socket for all, told apart by the peer's
 * address. Every association gets one log line; application data is
 * echoed back. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cli.h"

static const char k_serve_usage[] =
    "usage: m2mpsk serve --keys FILE|URL|pkcs11:MODULE:TOKEN --id IDB\n"
    "                    [--id IDB ...]\n"
    "                    [--kek FILE] [--etcd-fail-closed SECONDS]\n"
    "                    [--pin-file FILE] [--pkcs11-init-args STRING]\n"
    "                    [--listen ADDR]\n"
    "                    [--port N] [--tcp | --udp] [--once] [--max-conn N]\n"
    "                    [--suites LIST|all|ts0003] [--reveal-unknown]\n"
    "                    [--timeout MS] [--idle MS] [--rate-limit N]\n"
    "                    [--engine auto|boringssl|openssl] [--audit] [-v]\n"
    "\n"
    "Runs Entity B: accepts (D)TLS-PSK associations, logs one line for each\n"
    "(peer, KpsaID, bound identity, suite and version, or the failure\n"
    "reason) on stderr, and echoes application data back. For oneM2M\n"
    "requests (HTTP over TLS, CoAP over DTLS) in front of a CSE, see\n"
    "`m2mpsk gateway --help`.\n"
    "\n"
    "  --keys FILE        key file (mode 0600)\n"
    "  --keys URL         etcd://HOST:PORT[,HOST:PORT...]/PREFIX: the\n"
    "                     records under /PREFIX/keys/ in etcd, loaded at\n"
    "                     start and kept in step; a record revoked, deleted\n"
    "                     or replaced there ends the live associations\n"
    "                     using it at once (see docs/etcd.md)\n"
    "  --keys pkcs11:MODULE:TOKEN\n"
    "                     the records of a PKCS#11 token (MODULE: the\n"
    "                     module's path; TOKEN: its label), asked for when\n"
    "                     a handshake names a KpsaID; a record revoked or\n"
    "                     deleted there ends the live associations using it\n"
    "                     within a second (see docs/pkcs11.md)\n"
    "  --pin-file FILE    with pkcs11: the token's user PIN (a 0600 file;\n"
    "                     else $M2MPSK_PKCS11_PIN; never on the command\n"
    "                     line). Token-only records are used without the\n"
    "                     key leaving the token when it can derive with\n"
    "                     CKM_CONCATENATE_DATA_AND_BASE (NSS softoken);\n"
    "                     the engine is then openssl\n"
    "  --pkcs11-init-args STRING\n"
    "                     with pkcs11: C_Initialize's pReserved (else\n"
    "                     $M2MPSK_PKCS11_INIT_ARGS), e.g. NSS softoken's\n"
    "                     \"configdir='sql:DIR' certPrefix='' keyPrefix=''\n"
    "                     secmod='secmod.db' flags=\"\n"
    "  --kek FILE         with an etcd URL: the key-encryption key (a file\n"
    "                     of mode 0600; `m2mpsk keys kek` makes one)\n"
    "  --etcd-fail-closed SECONDS\n"
    "                     with an etcd URL: how long to go on serving the\n"
    "                     keys held while no etcd endpoint answers; then\n"
    "                     every key is refused until etcd is back\n"
    "                     (default 30)\n"
    "  --id IDB           a CSE-ID this server is (repeatable; SNI picks)\n"
    "  --listen ADDR      address to listen on: a name, an IPv4 address,\n"
    "                     an IPv6 address with or without brackets, or\n"
    "                     HOST:PORT / [IPv6]:PORT (default 127.0.0.1; ::\n"
    "                     for every IPv6 and IPv4 address)\n"
    "  --port N           port (default 0: any free port, logged)\n"
    "  --tcp, --udp       TLS over TCP (default) or DTLS over UDP\n"
    "  --once             exit after the first association ends: 0 if it\n"
    "                     was established, 1 if it failed\n"
    "  --max-conn N       at most N associations at once (default 64)\n"
    "  --suites LIST      colon-separated IANA names, all, or ts0003 (the\n"
    "                     TS-0003 profile; refused, naming what is\n"
    "                     missing, where the backend lacks its suites)\n"
    "  --engine NAME      the TLS engine: auto (the default: the fastest\n"
    "                     that has every suite accepted, else openssl; over\n"
    "                     UDP openssl, for cookies), boringssl or openssl\n"
    "  --reveal-unknown   answer unknown KpsaIDs with unknown_psk_identity\n"
    "  --timeout MS       handshake timeout (default 60000)\n"
    "  --idle MS          end an association idle that long (default\n"
    "                     300000); over UDP a peer may vanish silently\n"
    "  --rate-limit N     block an address for 1 s (doubling up to 60 s)\n"
    "                     after N failed handshakes within 10 s (default\n"
    "                     10; 0: off). Blocked TCP peers are refused and\n"
    "                     logged; blocked UDP peers' datagrams are dropped\n"
    "  --audit            log the library's audit events, one \"audit\" line\n"
    "                     each (established, failed, revoked, rate-limited,\n"
    "                     closed)\n"
    "  -v                 trace each record sent (>>>) and received (<<<),\n"
    "                     like openssl s_client -msg (never key bytes)\n"
    "\n"
    "Exit codes: 0 stopped by SIGINT or SIGTERM, or with --once the\n"
    "association was established; 1 with --once it failed; 2 usage;\n"
    "3 cannot listen, or the key file unreadable, unsafe or malformed, or\n"
    "etcd unreachable or the KEK file unreadable, unsafe or malformed, or\n"
    "the PKCS#11 module, token, login or PIN file failed.\n";

#define BUF_SIZE 17408

typedef struct conn {
  int fd; /* TCP: its own socket; UDP: -1 */
  struct sockaddr_storage addr;
  socklen_t addr_len;
  char peer[64];
  char host[64]; /* peer without the port: the rate limiter's peer tag */
  m2mpsk_assoc *a;
  uint8_t *out; /* TCP bytes drained but not yet sent */
  size_t out_len;
  uint64_t last_input;     /* monotonic ms */
  cli_wire sent, received; /* -v */
  int logged;
  int done;
} conn;

typedef struct server {
  int fd;
  int udp;
  int once;
  int once_result; /* -1 until the first association ended */
  int audit;
  size_t max_conn;
  uint64_t idle_ms;
  m2mpsk_config *cfg;
  m2mpsk_keystore *ks;
  /* --keys etcd://... or pkcs11:...: the thread keeping ks in step (or
   * answering its key requests) writes to keys_fd after every change it
   * applied; the loop then resumes the associations whose key request was
   * answered and re-checks every live one. -1 with a key file. */
  int keys_fd;
  conn **conns;
  size_t n;
} server;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

static int same_addr(const struct sockaddr_storage *x, socklen_t xl,
                     const struct sockaddr_storage *y, socklen_t yl) {
  return xl == yl && memcmp(x, y, xl) == 0;
}

/* Sends what the association has to send. */
static void flush(server *s, conn *c) {
  uint8_t buf[BUF_SIZE];
  size_t n;
  while (m2mpsk_assoc_drain(c->a, buf, sizeof(buf), &n) == M2MPSK_OK) {
    cli_trace_wire(&c->sent, 1, c->peer, buf, n);
    if (s->udp) {
      /* A datagram that cannot go out now is lost, as on the wire. */
      (void)sendto(s->fd, buf, n, MSG_NOSIGNAL, (struct sockaddr *)&c->addr,
                   c->addr_len);
      continue;
    }
    uint8_t *grown = realloc(c->out, c->out_len + n);
    if (grown == NULL) {
      c->done = 1;
      return;
    }
    c->out = grown;
    memcpy(c->out + c->out_len, buf, n);
    c->out_len += n;
  }
  while (!s->udp && c->out_len > 0) {
    ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (w <= 0) {
      c->out_len = 0;
      c->done = 1;
      return;
    }
    memmove(c->out, c->out + w, c->out_len - (size_t)w);
    c->out_len -= (size_t)w;
  }
}

static void end_conn(server *s, conn *c, int established) {
  c->done = 1;
  if (s->once && s->once_result < 0)
    s->once_result = established ? 0 : 1;
}

/* Moves the association along after input or a timer. */
static void process(server *s, conn *c);

static void process(server *s, conn *c) {
  m2mpsk_state st = m2mpsk_assoc_state(c->a);
  if (!c->logged && (st == M2MPSK_STATE_ESTABLISHED ||
                     st == M2MPSK_STATE_CLOSED || st == M2MPSK_STATE_FAILED)) {
    cli_log_outcome(c->peer, c->a);
    c->logged = 1;
  }
  uint8_t buf[BUF_SIZE];
  while (st == M2MPSK_STATE_ESTABLISHED || st == M2MPSK_STATE_CLOSED) {
    size_t n, w;
    int rc = m2mpsk_assoc_read(c->a, buf, sizeof(buf), &n);
    if (rc == M2MPSK_OK) {
      cli_trace("%s: %zu bytes of application data, echoed", c->peer, n);
      if ((rc = m2mpsk_assoc_write(c->a, buf, n, &w)) != M2MPSK_OK) {
        cli_log("peer=%s: cannot echo: %s", c->peer, m2mpsk_strerror(rc));
        if (m2mpsk_assoc_close(c->a) == M2MPSK_OK)
          cli_trace("%s: sending close_notify", c->peer);
        end_conn(s, c, 1);
        break;
      }
    } else if (rc == M2MPSK_E_CLOSED) {
      cli_trace("%s: close_notify received", c->peer);
      /* E_STATE: closed already, nothing more to send. */
      if (m2mpsk_assoc_close(c->a) == M2MPSK_OK)
        cli_trace("%s: sending close_notify", c->peer);
      end_conn(s, c, 1);
      break;
    } else if (rc == M2MPSK_E_FAILED) {
      cli_log("failure peer=%s reason=%s detail=\"%s\"", c->peer,
              m2mpsk_reason_name(m2mpsk_assoc_failure(c->a)),
              m2mpsk_assoc_failure_detail(c->a));
      end_conn(s, c, 1);
      break;
    } else {
      break;
    }
    st = m2mpsk_assoc_state(c->a);
  }
  if (m2mpsk_assoc_state(c->a) == M2MPSK_STATE_FAILED && !c->done)
    end_conn(s, c, c->logged && m2mpsk_assoc_peer_id(c->a) != NULL);
  flush(s, c);
}

/* The etcd thread's on_change: wakes the poll loop, nothing more. A full
 * counter (it never is) would only mean a wake-up already pending. */
static void keys_changed(void *arg) {
  uint64_t one = 1;
  ssize_t w = write(*(int *)arg, &one, sizeof(one));
  (void)w;
}

/* After the keystore changed: each live association checks its record now
 * (m2mpsk_assoc_handle_timeout() fails one whose record was revoked,
 * removed or replaced, and queues the alert), rather than at its next
 * input. One pass over the associations per batch of changes. */
static void on_keys_changed(server *s) {
  uint64_t count;
  if (read(s->keys_fd, &count, sizeof(count)) != sizeof(count))
    return;
  uint64_t now = cli_now_ms();
  for (size_t i = 0; i < s->n; i++) {
    conn *c = s->conns[i];
    if (c->done)
      continue;
    /* A key source answered: the handshake goes on (or fails as with an
     * unknown identity). One still open stays waiting. */
    if (m2mpsk_assoc_state(c->a) == M2MPSK_STATE_WAITING_KEY) {
      if (m2mpsk_key_request_answered(m2mpsk_assoc_key_request(c->a)) == 1 &&
          m2mpsk_assoc_resume(c->a, now) != M2MPSK_OK)
        cli_trace("%s: resumed handshake failed", c->peer);
      process(s, c);
      continue;
    }
    /* A handshake checks its record when the key is handed over; only
     * established associations hold one that can go. */
    if (m2mpsk_assoc_state(c->a) != M2MPSK_STATE_ESTABLISHED)
      continue;
    if (m2mpsk_assoc_handle_timeout(c->a, now) == M2MPSK_E_FAILED)
      cli_log("failure peer=%s reason=%s detail=\"%s\"", c->peer,
              m2mpsk_reason_name(m2mpsk_assoc_failure(c->a)),
              m2mpsk_assoc_failure_detail(c->a));
    process(s, c); /* sends the alert; a failed one ends */
  }
}

/* Feeds what came in, and moves the association along. */
static void feed(server *s, conn *c, const uint8_t *buf, size_t n) {
  c->last_input = cli_now_ms();
  int rc = m2mpsk_assoc_feed(c->a, buf, n, c->last_input);
  /* Over its input limit: what it holds is answered first. */
  for (int i = 0; rc == M2MPSK_E_LIMIT && i < 64 && !c->done; i++) {
    process(s, c);
    rc = m2mpsk_assoc_feed(c->a, buf, n, c->last_input);
  }
  if (rc != M2MPSK_OK && rc != M2MPSK_E_FAILED && rc != M2MPSK_E_STATE) {
    cli_trace("%s: input dropped: %s", c->peer, m2mpsk_strerror(rc));
    if (!s->udp && m2mpsk_assoc_state(c->a) == M2MPSK_STATE_ESTABLISHED) {
      /* A stream that lost bytes cannot go on. */
      cli_log("peer=%s: input lost (%s), association ended", c->peer,
              m2mpsk_strerror(rc));
      end_conn(s, c, 1);
    }
  }
  process(s, c);
}

/* "192.0.2.1:4433" gives "192.0.2.1", "[::1]:4433" gives "[::1]". */
static void peer_host(const char *peer, char *out, size_t cap) {
  const char *colon = strrchr(peer, ':');
  size_t n = colon ? (size_t)(colon - peer) : strlen(peer);
  snprintf(out, cap, "%.*s", (int)n, peer);
}

static void log_events(server *s) {
  m2mpsk_event *ev;
  while (s->audit && m2mpsk_config_next_event(s->cfg, &ev) == M2MPSK_OK) {
    const char *kpsa = m2mpsk_event_kpsa_id(ev);
    const char *bound = m2mpsk_event_peer_id(ev);
    const char *tag = m2mpsk_event_peer_tag(ev);
    cli_log("audit type=%s reason=%s kpsa-id=%s bound=%s tag=%s "
            "detail=\"%s\"",
            m2mpsk_event_type_name(m2mpsk_event_get_type(ev)),
            m2mpsk_reason_name(m2mpsk_event_reason(ev)), kpsa ? kpsa : "-",
            bound ? bound : "-", tag ? tag : "-", m2mpsk_event_detail(ev));
    m2mpsk_event_free(ev);
  }
  uint64_t dropped = m2mpsk_config_events_dropped(s->cfg);
  static uint64_t reported;
  if (s->audit && dropped > reported) {
    cli_log("audit dropped=%llu events (queue full)",
            (unsigned long long)(dropped - reported));
    reported = dropped;
  }
}

static conn *add_conn(server *s, int fd, const struct sockaddr_storage *addr,
                      socklen_t addr_len) {
  conn *c = calloc(1, sizeof(*c));
  conn **grown = realloc(s->conns, (s->n + 1) * sizeof(*grown));
  if (c == NULL || grown == NULL) {
    free(c);
    if (grown)
      s->conns = grown;
    return NULL;
  }
  s->conns = grown;
  c->fd = fd;
  c->sent.dtls = c->received.dtls = s->udp;
  c->addr = *addr;
  c->addr_len = addr_len;
  cli_format_addr((const struct sockaddr *)addr, c->peer, sizeof(c->peer));
  peer_host(c->peer, c->host, sizeof(c->host));
  int rc =
      m2mpsk_assoc_new(&c->a, M2MPSK_ROLE_RESPONDER,
                       s->udp ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS,
                       s->cfg, s->ks, NULL);
  if (rc == M2MPSK_OK)
    rc = m2mpsk_assoc_set_peer_tag(c->a, c->host);
  if (rc == M2MPSK_OK)
    rc = m2mpsk_assoc_start(c->a, cli_now_ms(), cli_unix_time());
  if (rc == M2MPSK_E_FAILED) {
    /* Refused before any handshake work (the rate limit). */
    cli_log_outcome(c->peer, c->a);
    if (s->once && s->once_result < 0)
      s->once_result = 1;
    m2mpsk_assoc_free(c->a);
    free(c);
    return NULL;
  }
  if (rc != M2MPSK_OK) {
    cli_log("cannot start an association for %s: %s", c->peer,
            m2mpsk_strerror(rc));
    m2mpsk_assoc_free(c->a);
    free(c);
    return NULL;
  }
  c->last_input = cli_now_ms();
  cli_trace("%s: new association", c->peer);
  s->conns[s->n++] = c;
  return c;
}

static void free_conn(conn *c) {
  if (c->fd >= 0)
    close(c->fd);
  m2mpsk_assoc_free(c->a);
  cli_wire_free(&c->sent);
  cli_wire_free(&c->received);
  free(c->out);
  free(c);
}

static void reap(server *s) {
  size_t j = 0;
  for (size_t i = 0; i < s->n; i++) {
    conn *c = s->conns[i];
    if (!c->done) {
      s->conns[j++] = c;
      continue;
    }
    if (!c->logged) {
      cli_log("failure peer=%s reason=protocol-error detail=\"connection "
              "closed during the handshake\"",
              c->peer);
      if (s->once && s->once_result < 0)
        s->once_result = 1;
    }
    free_conn(c);
  }
  s->n = j;
}

static void on_tcp_accept(server *s) {
  for (;;) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    int fd = accept4(s->fd, (struct sockaddr *)&addr, &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    if (s->n >= s->max_conn || (s->once && s->once_result >= 0) ||
        add_conn(s, fd, &addr, len) == NULL) {
      close(fd);
      continue;
    }
  }
}

static void on_tcp_input(server *s, conn *c) {
  uint8_t buf[BUF_SIZE];
  ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0) {
    cli_trace("%s: connection closed", c->peer);
    end_conn(s, c, c->logged && m2mpsk_assoc_peer_id(c->a) != NULL);
    return;
  }
  cli_trace_wire(&c->received, 0, c->peer, buf, (size_t)n);
  feed(s, c, buf, (size_t)n);
}

static void on_udp_input(server *s) {
  uint8_t buf[BUF_SIZE];
  for (;;) {
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    ssize_t n = recvfrom(s->fd, buf, sizeof(buf), MSG_DONTWAIT,
                         (struct sockaddr *)&addr, &len);
    if (n <= 0)
      return;
    conn *c = NULL;
    for (size_t i = 0; i < s->n && c == NULL; i++)
      if (same_addr(&s->conns[i]->addr, s->conns[i]->addr_len, &addr, len))
        c = s->conns[i];
    if (c == NULL) {
      if (s->n >= s->max_conn || (s->once && s->once_result >= 0))
        continue;
      /* A blocked address gets no association at all: not even the
       * memory for one. */
      char peer[64], host[64];
      cli_format_addr((const struct sockaddr *)&addr, peer, sizeof(peer));
      peer_host(peer, host, sizeof(host));
      if (m2mpsk_config_peer_blocked(s->cfg, host, cli_now_ms(), NULL) == 1) {
        cli_trace("%s: rate-limited, datagram dropped", peer);
        continue;
      }
      /* Nor before it proves it receives at its address: its ClientHello
       * gets a HelloVerifyRequest, and only the one that returns the
       * cookie makes an association (BoringSSL has no cookies). The
       * cookie is bound to the association's peer tag, the host. */
      static int no_cookies;
      if (!no_cookies) {
        uint8_t hvr[256];
        size_t hvr_len;
        int rc = m2mpsk_dtls_listen(s->cfg, host, buf, (size_t)n, hvr,
                                    sizeof(hvr), &hvr_len);
        if (rc == M2MPSK_LISTEN_REPLY) {
          cli_wire in = {.dtls = 1}, out = {.dtls = 1};
          cli_trace_wire(&in, 0, peer, buf, (size_t)n);
          cli_trace_wire(&out, 1, peer, hvr, hvr_len);
          (void)sendto(s->fd, hvr, hvr_len, MSG_NOSIGNAL,
                       (struct sockaddr *)&addr, len);
          continue;
        }
        if (rc == M2MPSK_E_UNSUPPORTED) {
          no_cookies = 1;
        } else if (rc != M2MPSK_OK) {
          cli_trace("%s: datagram dropped (%s)", peer, m2mpsk_strerror(rc));
          continue;
        }
      }
      if ((c = add_conn(s, -1, &addr, len)) == NULL)
        continue;
    }
    if (c->done)
      continue;
    cli_trace_wire(&c->received, 0, c->peer, buf, (size_t)n);
    feed(s, c, buf, (size_t)n);
  }
}

/* --listen: "host", "v4:port", "[v6]", "[v6]:port", or a bare IPv6
 * address (two or more colons: no port). *port is NULL when none. */
static int split_listen(const char *arg, char *host, size_t cap,
                        const char **port) {
  const char *end, *colon = NULL;
  *port = NULL;
  if (arg[0] == '[') {
    const char *close = strchr(arg, ']');
    if (close == NULL || close == arg + 1 ||
        (close[1] != '\0' && close[1] != ':'))
      return -1;
    arg++;
    end = close;
    colon = close[1] == ':' ? close + 1 : NULL;
  } else {
    const char *first = strchr(arg, ':');
    colon = first != NULL && strchr(first + 1, ':') == NULL ? first : NULL;
    end = colon ? colon : arg + strlen(arg);
  }
  if (end == arg || (size_t)(end - arg) >= cap)
    return -1;
  memcpy(host, arg, (size_t)(end - arg));
  host[end - arg] = '\0';
  if (colon != NULL) {
    unsigned long p;
    if (cli_parse_uint(colon + 1, 0, 65535, &p))
      return -1;
    *port = colon + 1;
  }
  return 0;
}

static int open_listener(server *s, const char *host, const char *port) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = s->udp ? SOCK_DGRAM : SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    cli_log("cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd < 0)
      continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6) {
      int zero = 0; /* "::" serves IPv4 too */
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
        (!s->udp && listen(fd, 128) != 0)) {
      cli_log("cannot listen on %s port %s: %s", host, port, strerror(errno));
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0)
    return -1;
  struct sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  char where[64];
  getsockname(fd, (struct sockaddr *)&addr, &len);
  cli_format_addr((struct sockaddr *)&addr, where, sizeof(where));
  cli_log("listening on %s (%s)", where, s->udp ? "udp" : "tcp");
  s->fd = fd;
  return 0;
}

/* Milliseconds until the earliest timer, or -1 for none. */
static int next_wait(server *s, uint64_t now) {
  int wait = -1;
  for (size_t i = 0; i < s->n; i++) {
    uint64_t d;
    if (m2mpsk_assoc_next_timeout(s->conns[i]->a, &d) != M2MPSK_OK ||
        d > s->conns[i]->last_input + s->idle_ms)
      d = s->conns[i]->last_input + s->idle_ms;
    uint64_t left = d > now ? d - now : 0;
    if (left > 60000)
      left = 60000;
    if (wait < 0 || (int)left < wait)
      wait = (int)left;
  }
  return wait;
}

static int serve_loop(server *s) {
  struct pollfd *pfd = NULL;
  int result = CLI_OK;
  while (!g_stop) {
    if (s->once && s->once_result >= 0 && s->n == 0) {
      result = s->once_result;
      break;
    }
    struct pollfd *grown = realloc(pfd, (s->n + 2) * sizeof(*pfd));
    if (grown == NULL) {
      result = CLI_IO;
      break;
    }
    pfd = grown;
    size_t np = 0;
    pfd[np++] = (struct pollfd){.fd = s->fd, .events = POLLIN};
    if (!s->udp && (s->n >= s->max_conn || (s->once && s->once_result >= 0)))
      pfd[0].events = 0;
    for (size_t i = 0; !s->udp && i < s->n; i++)
      pfd[np++] = (struct pollfd){
          .fd = s->conns[i]->fd,
          .events = (short)(POLLIN | (s->conns[i]->out_len ? POLLOUT : 0))};
    /* Last, so that the connections' entries stay at 1 .. n. */
    size_t keys_at = np;
    pfd[np++] = (struct pollfd){.fd = s->keys_fd, .events = POLLIN};
    int ready = poll(pfd, np, next_wait(s, cli_now_ms()));
    if (ready < 0 && errno != EINTR) {
      cli_log("poll: %s", strerror(errno));
      result = CLI_IO;
      break;
    }
    if (ready > 0 && (pfd[0].revents & POLLIN))
      s->udp ? on_udp_input(s) : on_tcp_accept(s);
    if (ready > 0 && (pfd[keys_at].revents & POLLIN))
      on_keys_changed(s);
    for (size_t i = 1; ready > 0 && i < keys_at; i++) {
      conn *c = s->conns[i - 1];
      if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
        on_tcp_input(s, c);
      if (pfd[i].revents & POLLOUT)
        flush(s, c);
    }
    uint64_t now = cli_now_ms();
    for (size_t i = 0; i < s->n; i++) {
      conn *c = s->conns[i];
      uint64_t d;
      if (!c->done && m2mpsk_assoc_next_timeout(c->a, &d) == M2MPSK_OK &&
          d <= now) {
        if (m2mpsk_assoc_handle_timeout(c->a, now) == M2MPSK_OK)
          cli_trace("%s: timer: retransmitting", c->peer); /* else FAILED */
        process(s, c);
      }
      if (!c->done && now >= c->last_input + s->idle_ms &&
          m2mpsk_assoc_state(c->a) != M2MPSK_STATE_HANDSHAKING) {
        cli_log("idle peer=%s: no input for %llu ms, association ended",
                c->peer, (unsigned long long)(now - c->last_input));
        end_conn(s, c, m2mpsk_assoc_peer_id(c->a) != NULL);
      }
    }
    reap(s);
    log_events(s);
  }
  free(pfd);
  return result;
}

int cli_serve(int argc, char **argv) {
  static const struct option opts[] = {
      {"keys", required_argument, NULL, 'k'},
      {"kek", required_argument, NULL, 'K'},
      {"etcd-fail-closed", required_argument, NULL, 'F'},
      {"pin-file", required_argument, NULL, 'P'},
      {"pin", required_argument, NULL, 'X'},
      {"pkcs11-init-args", required_argument, NULL, 'N'},
      {"id", required_argument, NULL, 'i'},
      {"listen", required_argument, NULL, 'l'},
      {"port", required_argument, NULL, 'p'},
      {"tcp", no_argument, NULL, 'T'},
      {"udp", no_argument, NULL, 'U'},
      {"once", no_argument, NULL, 'o'},
      {"max-conn", required_argument, NULL, 'm'},
      {"suites", required_argument, NULL, 's'},
      {"engine", required_argument, NULL, 'E'},
      {"reveal-unknown", no_argument, NULL, 'r'},
      {"timeout", required_argument, NULL, 't'},
      {"idle", required_argument, NULL, 'I'},
      {"rate-limit", required_argument, NULL, 'R'},
      {"audit", no_argument, NULL, 'A'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  unsigned long idle = 300000, rate_limit = 10, fail_closed = 0;
  int audit = 0;
  const char *kek = NULL, *pin_file = NULL, *init_args = NULL;
  const char *keys = NULL, *listen_on = "127.0.0.1", *port = NULL,
             *suites = NULL;
  m2mpsk_engine_id engine = M2MPSK_ENGINE_AUTO;
  const char **ids = calloc((size_t)argc, sizeof(*ids));
  size_t n_ids = 0;
  unsigned long max_conn = 64, timeout = 0, num;
  int udp = 0, tcp = 0, once = 0, reveal = 0, c;
  const char *port_opt = NULL;
  if (ids == NULL)
    return CLI_IO;
  while ((c = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
    switch (c) {
    case 'k': keys = optarg; break;
    case 'K': kek = optarg; break;
    case 'P': pin_file = optarg; break;
    case 'N': init_args = optarg; break;
    case 'X':
      cli_log("--pin is refused: a PIN on the command line is visible to "
              "every user (ps, /proc); use --pin-file FILE (mode 0600) or "
              "M2MPSK_PKCS11_PIN");
      free(ids);
      return CLI_USAGE;
    case 'F':
      if (cli_parse_uint(optarg, 1, 86400, &fail_closed)) {
        cli_log("--etcd-fail-closed must be 1 to 86400 seconds");
        free(ids);
        return CLI_USAGE;
      }
      break;
    case 'i': ids[n_ids++] = optarg; break;
    case 'l': listen_on = optarg; break;
    case 'p':
      if (cli_parse_uint(optarg, 0, 65535, &num)) {
        cli_log("--port must be 0 to 65535");
        free(ids);
        return CLI_USAGE;
      }
      port_opt = optarg;
      break;
    case 'T': tcp = 1; break;
    case 'U': udp = 1; break;
    case 'o': once = 1; break;
    case 'm':
      if (cli_parse_uint(optarg, 1, 100000, &max_conn)) {
        cli_log("--max-conn must be 1 to 100000");
        free(ids);
        return CLI_USAGE;
      }
      break;
    case 's': suites = optarg; break;
    case 'E':
      if (cli_parse_engine(optarg, &engine) != 0) {
        free(ids);
        return CLI_USAGE;
      }
      break;
    case 'r': reveal = 1; break;
    case 't':
      if (cli_parse_uint(optarg, 1, 3600000, &timeout)) {
        cli_log("--timeout must be 1 to 3600000 ms");
        free(ids);
        return CLI_USAGE;
      }
      break;
    case 'I':
      if (cli_parse_uint(optarg, 1, 86400000, &idle)) {
        cli_log("--idle must be 1 to 86400000 ms");
        free(ids);
        return CLI_USAGE;
      }
      break;
    case 'R':
      if (cli_parse_uint(optarg, 0, 1000000, &rate_limit)) {
        cli_log("--rate-limit must be 0 to 1000000");
        free(ids);
        return CLI_USAGE;
      }
      break;
    case 'A': audit = 1; break;
    case 'v': cli_verbose = 1; break;
    case 'h':
      fputs(k_serve_usage, stdout);
      free(ids);
      return CLI_OK;
    default:
      fputs(k_serve_usage, stderr);
      free(ids);
      return CLI_USAGE;
    }
  }
  if (optind != argc || keys == NULL || n_ids == 0) {
    cli_log("serve needs --keys and at least one --id");
    fputs(k_serve_usage, stderr);
    free(ids);
    return CLI_USAGE;
  }
  if (tcp && udp) {
    cli_log("--tcp and --udp exclude each other");
    free(ids);
    return CLI_USAGE;
  }
  char host[256];
  if (split_listen(listen_on, host, sizeof(host), &port) != 0) {
    cli_log("--listen '%s' is not ADDR, [IPv6], HOST:PORT or [IPv6]:PORT",
            listen_on);
    free(ids);
    return CLI_USAGE;
  }
  if (port != NULL && port_opt != NULL && strcmp(port, port_opt) != 0) {
    cli_log("--listen %s and --port %s name different ports", listen_on,
            port_opt);
    free(ids);
    return CLI_USAGE;
  }
  if (port == NULL)
    port = port_opt ? port_opt : "0";
  server s = {.fd = -1,
              .keys_fd = -1,
              .udp = udp,
              .once = once,
              .once_result = -1,
              .max_conn = max_conn,
              .idle_ms = idle,
              .audit = audit};
  s.cfg =
      cli_make_config(engine, suites, (uint32_t)timeout, ids, n_ids, reveal);
  free(ids);
  if (s.cfg == NULL)
    return CLI_USAGE;
  /* Limits the host sets before the first association freezes the config.
   * By KpsaID the library's default stays: a limit per address is what a
   * server facing the network needs first. */
  if (m2mpsk_config_set_rate_limit(s.cfg, M2MPSK_RATE_PEER,
                                   (uint32_t)rate_limit, 10000, 1000,
                                   60000) != M2MPSK_OK ||
      m2mpsk_config_set_event_queue(s.cfg, audit ? 1024 : 0) != M2MPSK_OK) {
    cli_log("cannot configure the limits");
    m2mpsk_config_free(s.cfg);
    return CLI_USAGE;
  }
  /* With etcd, the snapshot is loaded (and the watch running) before the
   * listener opens: the first handshake already sees every key. */
  struct m2mpsk_etcd_sync *sync = NULL;
  struct m2mpsk_p11_source *p11 = NULL;
  if ((cli_keys_is_url(keys) || cli_keys_is_pkcs11(keys)) &&
      (s.keys_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
    cli_log("eventfd: %s", strerror(errno));
    m2mpsk_config_free(s.cfg);
    return CLI_IO;
  }
  cli_keys_opts ko = {.spec = keys,
                      .kek = kek,
                      .fail_closed_s = (uint32_t)fail_closed,
                      .on_change = keys_changed,
                      .arg = &s.keys_fd,
                      .pin_file = pin_file,
                      .p11 = &p11,
                      .init_args = init_args};
  /* SIGINT and SIGTERM must reach this thread, whose poll() they
   * interrupt: the etcd thread starts with them blocked. */
  sigset_t stop_sigs, old_mask;
  sigemptyset(&stop_sigs);
  sigaddset(&stop_sigs, SIGINT);
  sigaddset(&stop_sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_sigs, &old_mask);
  int krc = cli_keys_open(&ko, &s.ks, &sync);
  pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
  if (krc != CLI_OK) {
    if (s.keys_fd >= 0)
      close(s.keys_fd);
    m2mpsk_config_free(s.cfg);
    return krc;
  }
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  int result = CLI_IO;
  if (open_listener(&s, host, port) == 0) {
    result = serve_loop(&s);
    close(s.fd);
  }
  /* The thread goes before the keystore it writes to and the descriptor
   * it wakes. */
  cli_keys_close(sync);
  cli_keys_close_p11(p11);
  if (s.keys_fd >= 0)
    close(s.keys_fd);
  for (size_t i = 0; i < s.n; i++)
    free_conn(s.conns[i]);
  free(s.conns);
  m2mpsk_config_free(s.cfg);
  m2mpsk_keystore_free(s.ks);
  return result;
}
