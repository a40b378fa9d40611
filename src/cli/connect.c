/* m2mpsk connect: Entity A. Sets up one association with HOST:PORT, then
 * carries stdin to the peer and the peer's data to stdout, like
 * openssl s_client. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char k_connect_usage[] =
    "usage: m2mpsk connect HOST:PORT --keys FILE --kpsa-id ID [--udp]\n"
    "                      [--suites LIST|all|ts0003] [--timeout MS] [--linger "
    "MS]\n"
    "                      [--engine auto|boringssl|openssl] [-v]\n"
    "\n"
    "Runs Entity A: sets up an association with Entity B at HOST:PORT\n"
    "(HOST a name, an IPv4 address or [IPv6]), reports the binding on\n"
    "stderr, then carries stdin to the peer and the peer's data to stdout.\n"
    "At the end of stdin it sends close_notify and waits up to --linger ms\n"
    "for the peer to close.\n"
    "\n"
    "  --keys FILE     key file (mode 0600) holding the KpsaID's record\n"
    "  --kpsa-id ID    the record to use; its IdB is what we bind to\n"
    "  --udp           DTLS over UDP (default: TLS over TCP)\n"
    "  --suites LIST   colon-separated IANA names, all, or ts0003 (the\n"
    "                  TS-0003 profile; refused, naming what is missing,\n"
    "                  where the backend lacks its suites)\n"
    "  --engine NAME   the TLS engine: auto (the default: the fastest that\n"
    "                  has every suite offered, else openssl), boringssl\n"
    "                  or openssl\n"
    "  --timeout MS    handshake (and TCP connect) timeout (default 60000);\n"
    "                  over DTLS a peer that drops a Finished made with\n"
    "                  another key sends nothing, so a wrong key ends here\n"
    "  --linger MS     wait for the peer's close after stdin ends (1000)\n"
    "  --tcp           TLS over TCP (the default)\n"
    "  -v              trace each record sent (>>>) and received (<<<),\n"
    "                  like openssl s_client -msg (never key bytes)\n"
    "\n"
    "Exit codes: 0 established; 1 the association failed (also a peer\n"
    "that closes or resets the connection during the handshake); 2 usage;\n"
    "3 peer unreachable (cannot resolve, connect, or no route), key file\n"
    "unreadable, unsafe or malformed, or the KpsaID not in it.\n";

#define BUF_SIZE 16384

typedef struct client {
  int fd;
  int udp;
  char peer[300];
  m2mpsk_assoc *a;
  uint8_t *out;
  size_t out_len;
  int io_error;
  cli_wire sent, received; /* -v */
} client;

/* Splits "host:port" or "[v6]:port". */
static int split_target(const char *target, char *host, size_t host_cap,
                        const char **port) {
  const char *colon;
  if (target[0] == '[') {
    const char *close = strchr(target, ']');
    if (close == NULL || close[1] != ':')
      return -1;
    if ((size_t)(close - target - 1) >= host_cap)
      return -1;
    memcpy(host, target + 1, (size_t)(close - target - 1));
    host[close - target - 1] = '\0';
    colon = close + 1;
  } else {
    colon = strrchr(target, ':');
    if (colon == NULL || (size_t)(colon - target) >= host_cap ||
        colon == target)
      return -1;
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
  }
  unsigned long p;
  if (cli_parse_uint(colon + 1, 1, 65535, &p))
    return -1;
  *port = colon + 1;
  return 0;
}

/* Connects a socket to the first address that answers. */
static int open_socket(client *cl, const char *host, const char *port,
                       uint32_t timeout_ms) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = cl->udp ? SOCK_DGRAM : SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    cli_log("cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  int err = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    int fd = socket(ai->ai_family,
                    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = errno;
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      cl->fd = fd;
      break;
    }
    err = errno;
    if (err == EINPROGRESS) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      socklen_t len = sizeof(err);
      err = ETIMEDOUT;
      if (poll(&p, 1, (int)timeout_ms) == 1 &&
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        cl->fd = fd;
        break;
      }
    }
    close(fd);
  }
  freeaddrinfo(res);
  if (cl->fd < 0) {
    cli_log("cannot connect to %s: %s", cl->peer, strerror(err));
    return -1;
  }
  return 0;
}

/* Sends what the association has to send; TCP leftovers wait for POLLOUT. */
static void flush(client *cl) {
  uint8_t buf[BUF_SIZE + 1024];
  size_t n;
  while (m2mpsk_assoc_drain(cl->a, buf, sizeof(buf), &n) == M2MPSK_OK) {
    cli_trace_wire(&cl->sent, 1, cl->peer, buf, n);
    if (cl->udp) {
      (void)send(cl->fd, buf, n, MSG_NOSIGNAL);
      continue;
    }
    uint8_t *grown = realloc(cl->out, cl->out_len + n);
    if (grown == NULL) {
      cl->io_error = ENOMEM;
      return;
    }
    cl->out = grown;
    memcpy(cl->out + cl->out_len, buf, n);
    cl->out_len += n;
  }
  while (!cl->udp && cl->out_len > 0) {
    ssize_t w = send(cl->fd, cl->out, cl->out_len, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (w <= 0) {
      cl->io_error = errno ? errno : EPIPE;
      cl->out_len = 0;
      return;
    }
    memmove(cl->out, cl->out + w, cl->out_len - (size_t)w);
    cl->out_len -= (size_t)w;
  }
}

/* Blocks until every queued byte has left (bounded by the caller's poll). */
static void flush_all(client *cl) {
  flush(cl);
  for (int i = 0; i < 100 && !cl->udp && cl->out_len > 0 && !cl->io_error;
       i++) {
    struct pollfd p = {.fd = cl->fd, .events = POLLOUT};
    if (poll(&p, 1, 50) < 0)
      break;
    flush(cl);
  }
}

/* Moves the peer's data to stdout: 0, 1 at its close_notify, -1 when the
 * association failed (logged), -2 when stdout failed. */
static int read_to_stdout(client *cl, uint8_t *buf, size_t cap) {
  for (;;) {
    size_t n;
    int rc = m2mpsk_assoc_read(cl->a, buf, cap, &n);
    if (rc == M2MPSK_OK) {
      if (cli_write_all(STDOUT_FILENO, buf, n) != 0)
        return -2;
      continue;
    }
    if (rc == M2MPSK_E_CLOSED)
      return 1;
    if (rc == M2MPSK_E_FAILED) {
      cli_log("failure peer=%s reason=%s detail=\"%s\"", cl->peer,
              m2mpsk_reason_name(m2mpsk_assoc_failure(cl->a)),
              m2mpsk_assoc_failure_detail(cl->a));
      return -1;
    }
    return 0; /* E_AGAIN, or E_STATE while handshaking */
  }
}

/* Runs the association to its end; returns the exit code. */
static int run(client *cl, uint64_t linger_ms) {
  int logged = 0, stdin_open = 1;
  uint64_t linger_until = 0;
  uint8_t buf[BUF_SIZE];
  flush(cl);
  for (;;) {
    m2mpsk_state st = m2mpsk_assoc_state(cl->a);
    if (st == M2MPSK_STATE_FAILED) {
      flush_all(cl);
      cli_log_outcome(cl->peer, cl->a);
      return CLI_FAILED;
    }
    if (!logged && st != M2MPSK_STATE_HANDSHAKING) {
      cli_log_outcome(cl->peer, cl->a);
      logged = 1;
    }
    if (cl->io_error) {
      cli_log("connection to %s lost: %s", cl->peer, strerror(cl->io_error));
      return logged ? CLI_OK : CLI_IO;
    }
    /* The peer's data, and its close_notify. */
    int got = logged ? read_to_stdout(cl, buf, sizeof(buf)) : 0;
    if (got == -2)
      return CLI_IO;
    if (got == -1) {
      flush_all(cl);
      return CLI_FAILED;
    }
    if (got == 1) {
      cli_trace("close_notify received from %s", cl->peer);
      /* E_STATE: we had closed already; nothing more to send. */
      if (m2mpsk_assoc_close(cl->a) == M2MPSK_OK)
        cli_trace("sending close_notify to %s", cl->peer);
      flush_all(cl);
      return CLI_OK;
    }
    flush(cl);

    uint64_t now = cli_now_ms();
    if (linger_until && now >= linger_until)
      return CLI_OK;
    int wait = -1;
    uint64_t d;
    if (m2mpsk_assoc_next_timeout(cl->a, &d) == M2MPSK_OK)
      wait = d > now ? (int)(d - now < 60000 ? d - now : 60000) : 0;
    if (linger_until) {
      int left = (int)(linger_until - now);
      if (wait < 0 || left < wait)
        wait = left;
    }
    struct pollfd p[2] = {
        {.fd = cl->fd, .events = (short)(POLLIN | (cl->out_len ? POLLOUT : 0))},
        {.fd = STDIN_FILENO, .events = POLLIN}};
    nfds_t np = logged && stdin_open && !linger_until ? 2 : 1;
    int ready = poll(p, np, wait);
    if (ready < 0 && errno != EINTR) {
      cli_log("poll: %s", strerror(errno));
      return CLI_IO;
    }
    now = cli_now_ms();
    if (ready > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = recv(cl->fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        /* A TCP peer that accepted, then reset, was reached: its refusal
         * (a rate limit, a crash) fails the association. A UDP error is
         * an ICMP unreachable: no one is there. */
        if (logged) {
          cli_log("connection to %s lost: %s", cl->peer, strerror(errno));
          return CLI_OK;
        }
        if (cl->udp) {
          cli_log("cannot reach %s: %s", cl->peer, strerror(errno));
          return CLI_IO;
        }
        cli_log("failure peer=%s reason=protocol-error detail=\"connection "
                "reset by the peer during the handshake (%s)\"",
                cl->peer, strerror(errno));
        return CLI_FAILED;
      }
      if (n == 0) {
        if (!logged) {
          cli_log("failure peer=%s reason=protocol-error detail=\"connection "
                  "closed by the peer during the handshake\"",
                  cl->peer);
          return CLI_FAILED;
        }
        cli_trace("%s closed the connection", cl->peer);
        return CLI_OK;
      }
      if (n > 0) {
        cli_trace_wire(&cl->received, 0, cl->peer, buf, (size_t)n);
        int rc = m2mpsk_assoc_feed(cl->a, buf, (size_t)n, now);
        /* Over its input limit: what it holds goes to stdout first. */
        for (int i = 0; rc == M2MPSK_E_LIMIT && i < 64; i++) {
          uint8_t out[BUF_SIZE];
          int got2 = read_to_stdout(cl, out, sizeof(out));
          if (got2 != 0)
            break; /* handled at the top of the loop */
          rc = m2mpsk_assoc_feed(cl->a, buf, (size_t)n, now);
        }
        if (rc != M2MPSK_OK && rc != M2MPSK_E_FAILED && rc != M2MPSK_E_STATE)
          cli_trace("input from %s dropped: %s", cl->peer, m2mpsk_strerror(rc));
        if (!cl->udp && rc != M2MPSK_OK && rc != M2MPSK_E_FAILED &&
            m2mpsk_assoc_state(cl->a) == M2MPSK_STATE_ESTABLISHED) {
          /* A stream that lost bytes cannot go on. */
          cli_log("connection to %s: input lost (%s)", cl->peer,
                  m2mpsk_strerror(rc));
          return CLI_IO;
        }
      }
    }
    if (ready > 0 && (p[0].revents & POLLOUT))
      flush(cl);
    if (ready > 0 && np == 2 && (p[1].revents & (POLLIN | POLLHUP))) {
      ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
      size_t w;
      if (n > 0) {
        /* DTLS: one record each, at most 16384 bytes (BUF_SIZE). */
        int rc = m2mpsk_assoc_write(cl->a, buf, (size_t)n, &w);
        if (rc != M2MPSK_OK)
          cli_log("cannot send %zd bytes to %s: %s", n, cl->peer,
                  m2mpsk_strerror(rc));
      } else if (n == 0 || errno != EINTR) {
        stdin_open = 0;
        if (m2mpsk_assoc_close(cl->a) == M2MPSK_OK)
          cli_trace("end of input: sending close_notify to %s", cl->peer);
        linger_until = now + linger_ms;
      }
    }
    if (m2mpsk_assoc_next_timeout(cl->a, &d) == M2MPSK_OK && d <= now &&
        m2mpsk_assoc_handle_timeout(cl->a, now) == M2MPSK_OK)
      cli_trace("timer: retransmitting to %s", cl->peer); /* else FAILED */
  }
}

int cli_connect(int argc, char **argv) {
  static const struct option opts[] = {
      {"keys", required_argument, NULL, 'k'},
      {"kpsa-id", required_argument, NULL, 'i'},
      {"udp", no_argument, NULL, 'U'},
      {"tcp", no_argument, NULL, 'T'},
      {"suites", required_argument, NULL, 's'},
      {"engine", required_argument, NULL, 'E'},
      {"timeout", required_argument, NULL, 't'},
      {"linger", required_argument, NULL, 'l'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *keys = NULL, *id = NULL, *suites = NULL;
  m2mpsk_engine_id engine = M2MPSK_ENGINE_AUTO;
  unsigned long timeout = 60000, linger = 1000;
  int udp = 0, tcp = 0, c;
  while ((c = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
    switch (c) {
    case 'k': keys = optarg; break;
    case 'i': id = optarg; break;
    case 'U': udp = 1; break;
    case 'T': tcp = 1; break;
    case 's': suites = optarg; break;
    case 'E':
      if (cli_parse_engine(optarg, &engine) != 0)
        return CLI_USAGE;
      break;
    case 't':
      if (cli_parse_uint(optarg, 1, 3600000, &timeout)) {
        cli_log("--timeout must be 1 to 3600000 ms");
        return CLI_USAGE;
      }
      break;
    case 'l':
      if (cli_parse_uint(optarg, 0, 3600000, &linger)) {
        cli_log("--linger must be 0 to 3600000 ms");
        return CLI_USAGE;
      }
      break;
    case 'v': cli_verbose = 1; break;
    case 'h': fputs(k_connect_usage, stdout); return CLI_OK;
    default: fputs(k_connect_usage, stderr); return CLI_USAGE;
    }
  }
  if (optind != argc - 1 || keys == NULL || id == NULL) {
    cli_log("connect needs HOST:PORT, --keys and --kpsa-id");
    fputs(k_connect_usage, stderr);
    return CLI_USAGE;
  }
  if (tcp && udp) {
    cli_log("--tcp and --udp exclude each other");
    return CLI_USAGE;
  }
  char host[256];
  const char *port;
  if (split_target(argv[optind], host, sizeof(host), &port) != 0) {
    cli_log("'%s' is not HOST:PORT", argv[optind]);
    return CLI_USAGE;
  }
  int rc = m2mpsk_kpsa_id_validate(id);
  if (rc != M2MPSK_OK) {
    cli_log("--kpsa-id %s: %s", id, m2mpsk_strerror(rc));
    return CLI_USAGE;
  }
  m2mpsk_config *cfg =
      cli_make_config(engine, suites, (uint32_t)timeout, NULL, 0, 0);
  if (cfg == NULL)
    return CLI_USAGE;
  m2mpsk_keystore *ks = cli_load_keys(keys);
  if (ks == NULL) {
    m2mpsk_config_free(cfg);
    return CLI_IO;
  }
  client cl = {.fd = -1, .udp = udp};
  cl.sent.dtls = cl.received.dtls = udp;
  snprintf(cl.peer, sizeof(cl.peer), "%s", argv[optind]);
  signal(SIGPIPE, SIG_IGN);

  int result = CLI_IO;
  rc = m2mpsk_assoc_new(&cl.a, M2MPSK_ROLE_INITIATOR,
                        udp ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS, cfg,
                        ks, id);
  if (rc != M2MPSK_OK) {
    /* The KpsaID is valid (checked above): one the key file lacks is the
     * key file's fault (3), like any other failure to use it. */
    cli_log("%s in %s: %s", id, keys, m2mpsk_strerror(rc));
    result = CLI_IO;
  } else if (open_socket(&cl, host, port, (uint32_t)timeout) == 0) {
    if (m2mpsk_assoc_start(cl.a, cli_now_ms(), cli_unix_time()) != M2MPSK_OK) {
      cli_log_outcome(cl.peer, cl.a);
      result = CLI_FAILED;
    } else {
      result = run(&cl, linger);
    }
  }
  if (cl.fd >= 0)
    close(cl.fd);
  free(cl.out);
  cli_wire_free(&cl.sent);
  cli_wire_free(&cl.received);
  m2mpsk_assoc_free(cl.a);
  m2mpsk_config_free(cfg);
  m2mpsk_keystore_free(ks);
  return result;
}
