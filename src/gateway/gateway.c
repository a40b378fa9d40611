/* m2mpsk gateway: options, the shared state, the worker threads. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>

#include "cli.h"
#include "gw.h"

uint64_t gw_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void gw_format_addr(const struct sockaddr *sa, int with_port, char *out,
                    size_t cap) {
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
    if (with_port)
      snprintf(out, cap, "%s:%u", host, port);
    else
      snprintf(out, cap, "%s", host);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
    if (with_port)
      snprintf(out, cap, "[%s]:%u", host, port);
    else
      snprintf(out, cap, "[%s]", host);
  } else {
    snprintf(out, cap, "?");
  }
}

int gw_resolve(const char *hostport, int socktype, int passive,
               struct sockaddr_storage *out, socklen_t *out_len, char *err,
               size_t err_cap) {
  char host[256];
  const char *port, *end;
  if (hostport[0] == '[') {
    end = strchr(hostport, ']');
    if (end == NULL || end[1] != ':') {
      snprintf(err, err_cap, "'%s' is not [IPv6]:PORT", hostport);
      return -1;
    }
    port = end + 2;
    hostport++;
  } else {
    end = strrchr(hostport, ':');
    if (end == NULL || strchr(hostport, ':') != end) {
      snprintf(err, err_cap, "'%s' is not HOST:PORT or [IPv6]:PORT", hostport);
      return -1;
    }
    port = end + 1;
  }
  size_t n = (size_t)(end - hostport);
  char *stop;
  errno = 0;
  unsigned long p = strtoul(port, &stop, 10);
  if (n == 0 || n >= sizeof(host) || *port == '\0' || *stop != '\0' ||
      p > 65535 || errno != 0) {
    snprintf(err, err_cap, "'%s': bad host or port", hostport);
    return -1;
  }
  memcpy(host, hostport, n);
  host[n] = '\0';
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = socktype;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0 || res == NULL) {
    snprintf(err, err_cap, "cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  memcpy(out, res->ai_addr, res->ai_addrlen);
  *out_len = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

int gw_bind_reuseport(int socktype, const struct sockaddr *sa, socklen_t len) {
  int fd = socket(sa->sa_family, socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
      bind(fd, sa, len) != 0 ||
      (socktype == SOCK_STREAM && listen(fd, 1024) != 0)) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

/* ---- per-address counts ------------------------------------------------- */

struct gw_addr_entry {
  struct gw_addr_entry *next;
  int family;
  uint8_t addr[16];
  unsigned count;
};

static size_t addr_key(const struct sockaddr *sa, uint8_t out[16], int *fam) {
  *fam = sa->sa_family;
  memset(out, 0, 16);
  if (sa->sa_family == AF_INET) {
    memcpy(out, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    return 4;
  }
  if (sa->sa_family == AF_INET6) {
    memcpy(out, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
           16);
    return 16;
  }
  return 0;
}

static size_t addr_hash(const uint8_t key[16], size_t buckets) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (int i = 0; i < 16; i++)
    h = (h ^ key[i]) * 1099511628211ull;
  return (size_t)(h % buckets);
}

int gw_admit(gw_gateway *gw, const struct sockaddr *sa) {
  unsigned n = atomic_fetch_add(&gw->n_conn, 1);
  if (n >= gw->opts.max_conn) {
    atomic_fetch_sub(&gw->n_conn, 1);
    return GW_ADMIT_FULL;
  }
  uint8_t key[16];
  int fam;
  addr_key(sa, key, &fam);
  size_t b = addr_hash(key, gw->addr_buckets);
  int result = GW_ADMIT_OK;
  pthread_mutex_lock(&gw->addr_lock);
  struct gw_addr_entry *e = gw->addr_table[b];
  while (e != NULL && (e->family != fam || memcmp(e->addr, key, 16) != 0))
    e = e->next;
  if (e == NULL) {
    e = calloc(1, sizeof(*e));
    if (e != NULL) {
      e->family = fam;
      memcpy(e->addr, key, 16);
      e->next = gw->addr_table[b];
      gw->addr_table[b] = e;
    }
  }
  if (e == NULL)
    result = GW_ADMIT_FULL;
  else if (e->count >= gw->opts.max_per_addr)
    result = GW_ADMIT_ADDR;
  else
    e->count++;
  pthread_mutex_unlock(&gw->addr_lock);
  if (result != GW_ADMIT_OK)
    atomic_fetch_sub(&gw->n_conn, 1);
  return result;
}

unsigned gw_addr_count(gw_gateway *gw, const struct sockaddr *sa) {
  uint8_t key[16];
  int fam;
  addr_key(sa, key, &fam);
  size_t b = addr_hash(key, gw->addr_buckets);
  unsigned n = 0;
  pthread_mutex_lock(&gw->addr_lock);
  for (struct gw_addr_entry *e = gw->addr_table[b]; e != NULL; e = e->next)
    if (e->family == fam && memcmp(e->addr, key, 16) == 0)
      n = e->count;
  pthread_mutex_unlock(&gw->addr_lock);
  return n;
}

void gw_release(gw_gateway *gw, const struct sockaddr *sa) {
  uint8_t key[16];
  int fam;
  addr_key(sa, key, &fam);
  size_t b = addr_hash(key, gw->addr_buckets);
  pthread_mutex_lock(&gw->addr_lock);
  struct gw_addr_entry **pp = &gw->addr_table[b];
  while (*pp != NULL &&
         ((*pp)->family != fam || memcmp((*pp)->addr, key, 16) != 0))
    pp = &(*pp)->next;
  if (*pp != NULL && --(*pp)->count == 0) {
    struct gw_addr_entry *e = *pp;
    *pp = e->next;
    free(e);
  }
  pthread_mutex_unlock(&gw->addr_lock);
  atomic_fetch_sub(&gw->n_conn, 1);
}

int gw_assoc_new(gw_gateway *gw, m2mpsk_transport transport,
                 const char *peer_tag, m2mpsk_assoc **out) {
  *out = NULL;
  m2mpsk_assoc *a = NULL;
  pthread_mutex_lock(&gw->keys_lock);
  int rc = m2mpsk_assoc_new(&a, M2MPSK_ROLE_RESPONDER, transport, gw->cfg,
                            gw->keys, NULL);
  pthread_mutex_unlock(&gw->keys_lock);
  if (rc != M2MPSK_OK)
    return rc;
  if (peer_tag != NULL &&
      (rc = m2mpsk_assoc_set_peer_tag(a, peer_tag)) != M2MPSK_OK) {
    m2mpsk_assoc_free(a);
    return rc;
  }
  rc = m2mpsk_assoc_start(a, gw_now_ms(), (int64_t)time(NULL));
  if (rc == M2MPSK_OK || rc == M2MPSK_E_FAILED) {
    *out = a;
    return rc;
  }
  m2mpsk_assoc_free(a);
  return rc;
}

/* ---- options ------------------------------------------------------------ */

static const char k_usage[] =
    "usage: m2mpsk gateway --keys FILE|URL|pkcs11:MODULE:TOKEN --id IDB\n"
    "               [--id IDB2 ...] [--kek FILE] [--etcd-fail-closed SECONDS]\n"
    "               [--pin-file FILE] [--pkcs11-init-args STRING]\n"
    "               [--http-listen ADDR:PORT] [--http-backend HOST:PORT]\n"
    "               [--coap-listen ADDR:PORT] [--coap-backend HOST:PORT]\n"
    "               [--identity-header NAME] [--identity-option N]\n"
    "               [--engine auto|boringssl|openssl] [--suites LIST]\n"
    "               [--threads N] [--max-conn N] [--max-per-addr N]\n"
    "               [--handshake-timeout MS] [--idle-timeout MS]\n"
    "               [--cse-timeout MS]\n"
    "               [--max-request BYTES] [--max-response BYTES]\n"
    "               [--max-buffer BYTES] [--rate-limit N] [--log-rate N]\n"
    "               [--config FILE] [-v] [--help]\n"
    "\n"
    "Entity B for devices in front of an unmodified CSE: terminates TLS-PSK\n"
    "(HTTP binding) and DTLS-PSK (CoAP binding) associations, checks each\n"
    "request's originator against the association (4106/4107 answered\n"
    "here, never forwarded), binds the AE-ID the CSE assigns at an <AE>\n"
    "CREATE over a Credential-ID association, and forwards the rest to the\n"
    "CSE's plain HTTP and CoAP ports.\n"
    "\n"
    "  --keys FILE              key file (mode 0600); reloaded on SIGHUP\n"
    "  --keys URL               etcd://HOST:PORT[,HOST:PORT...]/PREFIX: the\n"
    "                           records under /PREFIX/keys/ in etcd, loaded\n"
    "                           at start and kept in step; a record revoked,\n"
    "                           deleted or replaced there ends the live\n"
    "                           associations using it at once (TLS and\n"
    "                           DTLS); SIGHUP is then ignored\n"
    "  --kek FILE               with an etcd URL: the key-encryption key\n"
    "                           (mode 0600)\n"
    "  --etcd-fail-closed SECONDS\n"
    "                           with an etcd URL: serve the keys held that\n"
    "                           long while no etcd endpoint answers, then\n"
    "                           refuse every key until it does (default 30)\n"
    "  --keys pkcs11:MODULE:TOKEN\n"
    "                           the records of a PKCS#11 token (MODULE: the\n"
    "                           module's path; TOKEN: its label), asked for\n"
    "                           when a handshake names a KpsaID; a record\n"
    "                           revoked or deleted there ends the live\n"
    "                           associations using it (see docs/pkcs11.md);\n"
    "                           SIGHUP is then ignored\n"
    "  --pin-file FILE          with pkcs11: the token's user PIN (mode 0600;\n"
    "                           else $M2MPSK_PKCS11_PIN; never on the\n"
    "                           command line)\n"
    "  --pkcs11-init-args STRING\n"
    "                           with pkcs11: C_Initialize's pReserved (else\n"
    "                           $M2MPSK_PKCS11_INIT_ARGS)\n"
    "  --id IDB                 a CSE-ID the gateway serves (repeatable)\n"
    "  --http-listen ADDR:PORT  TLS-PSK + HTTP listener (port 0: any)\n"
    "  --http-backend HOST:PORT the CSE's plain HTTP\n"
    "  --coap-listen ADDR:PORT  DTLS-PSK + CoAP listener\n"
    "  --coap-backend HOST:PORT the CSE's plain CoAP\n"
    "  --identity-header NAME   add NAME: <bound identity> toward the CSE\n"
    "                           (removing any NAME the device sent)\n"
    "  --identity-option N      the same as a CoAP option number\n"
    "  --engine NAME            TLS engine (default auto)\n"
    "  --suites LIST            colon-separated IANA names, all or ts0003\n"
    "  --threads N              event loops (default: the CPUs)\n"
    "  --max-conn N             associations at once in all (default 10000);\n"
    "                           each thread keeps to its share: past it,\n"
    "                           the oldest one still in its handshake is\n"
    "                           dropped for a new one\n"
    "  --max-per-addr N         associations per source address (default "
    "100)\n"
    "  --handshake-timeout MS   (default 10000)\n"
    "  --idle-timeout MS        no traffic that long (and no request at the\n"
    "                           CSE) ends an association (default 60000)\n"
    "  --cse-timeout MS         the CSE's time to answer one request; past\n"
    "                           it the device gets 504 (HTTP) or 5.04\n"
    "                           (CoAP) (default 30000)\n"
    "  --max-request BYTES      one request, headers and body (default 1 "
    "MiB)\n"
    "  --max-response BYTES     one response from the CSE (default 8 MiB)\n"
    "  --max-buffer BYTES       bytes buffered per association and direction\n"
    "                           before the gateway stops reading from the\n"
    "                           side that produces them (default 262144)\n"
    "  --rate-limit N           failed handshakes per KpsaID in 10 s before\n"
    "                           it is blocked for a while (default 20; 0 off)\n"
    "  --log-rate N             log lines per second, then one line counting\n"
    "                           the suppressed ones (default 100; 0: no "
    "limit)\n"
    "  --config FILE            'key = value' lines with the option names\n"
    "                           ('#' comments); the command line overrides\n"
    "  -v                       trace each association and request\n"
    "\n"
    "Signals: SIGHUP reloads the key file (established associations keep\n"
    "going; with an etcd URL it is logged and ignored); SIGTERM or SIGINT\n"
    "stops taking new work, finishes what is in flight (at most 5 s) and\n"
    "exits 0.\n"
    "Exit codes: 0 stopped by a signal; 1 cannot run (threads, memory);\n"
    "2 usage (also a bad --config line, named FILE:LINE; an etcd URL in a\n"
    "build without etcd support); 3 the key file unreadable, unsafe or\n"
    "malformed, etcd unreachable, the KEK file unreadable, unsafe or\n"
    "malformed, or a listener or backend address that cannot be used.\n";

enum opt_kind { K_STR, K_LIST, K_UINT, K_ENGINE, K_FLAG };
typedef struct opt_def {
  const char *name;
  enum opt_kind kind;
  size_t offset;
  unsigned long lo, hi;
} opt_def;

#define OFF(f) offsetof(gw_opts, f)
static const opt_def k_opts[] = {
    {"keys", K_STR, OFF(keys), 0, 0},
    {"kek", K_STR, OFF(kek), 0, 0},
    {"etcd-fail-closed", K_UINT, OFF(etcd_fail_closed), 1, 86400},
    {"pin-file", K_STR, OFF(pin_file), 0, 0},
    {"pkcs11-init-args", K_STR, OFF(init_args), 0, 0},
    {"id", K_LIST, OFF(ids), 0, 0},
    {"http-listen", K_STR, OFF(http_listen), 0, 0},
    {"http-backend", K_STR, OFF(http_backend), 0, 0},
    {"coap-listen", K_STR, OFF(coap_listen), 0, 0},
    {"coap-backend", K_STR, OFF(coap_backend), 0, 0},
    {"identity-header", K_STR, OFF(identity_header), 0, 0},
    {"identity-option", K_UINT, OFF(identity_option), 1, 65535},
    {"engine", K_ENGINE, OFF(engine), 0, 0},
    {"suites", K_STR, OFF(suites), 0, 0},
    {"threads", K_UINT, OFF(threads), 1, 256},
    {"max-conn", K_UINT, OFF(max_conn), 1, 10000000},
    {"max-per-addr", K_UINT, OFF(max_per_addr), 1, 10000000},
    {"handshake-timeout", K_UINT, OFF(handshake_timeout_ms), 1, 3600000},
    {"idle-timeout", K_UINT, OFF(idle_timeout_ms), 1, 86400000},
    {"cse-timeout", K_UINT, OFF(cse_timeout_ms), 100, 3600000},
    {"max-request", K_UINT, OFF(max_request), 1024, 1u << 30},
    {"max-response", K_UINT, OFF(max_response), 1024, 1u << 30},
    {"max-buffer", K_UINT, OFF(max_buffer), 16384, 1u << 30},
    {"rate-limit", K_UINT, OFF(rate_limit), 0, 1000000},
    {"log-rate", K_UINT, OFF(log_rate), 0, 1000000},
    {"verbose", K_FLAG, OFF(verbose), 0, 0},
};
#define N_OPTS (sizeof(k_opts) / sizeof(k_opts[0]))

static void opts_defaults(gw_opts *o) {
  memset(o, 0, sizeof(*o));
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  o->threads = cpus > 0 && cpus <= 256 ? (unsigned)cpus : 1;
  o->max_conn = 10000;
  o->max_per_addr = 100;
  o->handshake_timeout_ms = 10000;
  o->idle_timeout_ms = 60000;
  o->cse_timeout_ms = 30000;
  o->max_request = 1u << 20;
  o->max_response = 8u << 20;
  o->max_buffer = 262144;
  o->rate_limit = 20;
  o->log_rate = 100;
  o->engine = M2MPSK_ENGINE_AUTO;
}

static void opts_free(gw_opts *o) {
  free(o->keys);
  free(o->kek);
  free(o->pin_file);
  free(o->init_args);
  for (size_t i = 0; i < o->n_ids; i++)
    free(o->ids[i]);
  free(o->ids);
  free(o->http_listen);
  free(o->http_backend);
  free(o->coap_listen);
  free(o->coap_backend);
  free(o->identity_header);
  free(o->suites);
  free(o->config);
}

static int is_token(const char *s) {
  if (*s == '\0')
    return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || strchr("!#$%&'*+-.^_`|~", *s)))
      return 0;
  return 1;
}

/* Sets one option from `value`; `where` names it in errors ("--max-conn"
 * or "FILE:LINE: max-conn"). `*fresh` marks a list the command line
 * replaces (its first value clears what the file gave). 0 or -1. */
static int set_opt(gw_opts *o, const opt_def *d, const char *value,
                   const char *where, int *fresh) {
  void *field = (char *)o + d->offset;
  switch (d->kind) {
  case K_STR: {
    char *copy = strdup(value);
    if (copy == NULL)
      return -1;
    if (strcmp(d->name, "identity-header") == 0 && !is_token(value)) {
      cli_log("%s: '%s' is not an HTTP header name", where, value);
      free(copy);
      return -1;
    }
    free(*(char **)field);
    *(char **)field = copy;
    return 0;
  }
  case K_LIST: {
    if (fresh != NULL && *fresh) {
      for (size_t i = 0; i < o->n_ids; i++)
        free(o->ids[i]);
      o->n_ids = 0;
      *fresh = 0;
    }
    int rc = m2mpsk_idb_validate(value);
    if (rc != M2MPSK_OK) {
      cli_log("%s: '%s': %s", where, value, m2mpsk_strerror(rc));
      return -1;
    }
    char **grown = realloc(o->ids, (o->n_ids + 1) * sizeof(*grown));
    if (grown == NULL)
      return -1;
    o->ids = grown;
    if ((o->ids[o->n_ids] = strdup(value)) == NULL)
      return -1;
    o->n_ids++;
    return 0;
  }
  case K_UINT: {
    unsigned long v;
    if (cli_parse_uint(value, d->lo, d->hi, &v) != 0) {
      cli_log("%s: '%s' is not a number from %lu to %lu", where, value, d->lo,
              d->hi);
      return -1;
    }
    if (d->offset == OFF(max_request) || d->offset == OFF(max_response) ||
        d->offset == OFF(max_buffer))
      *(size_t *)field = v;
    else if (d->offset == OFF(handshake_timeout_ms) ||
             d->offset == OFF(idle_timeout_ms) ||
             d->offset == OFF(cse_timeout_ms))
      *(uint32_t *)field = (uint32_t)v;
    else
      *(unsigned *)field = (unsigned)v;
    return 0;
  }
  case K_ENGINE:
    if (cli_parse_engine(value, &o->engine) != 0) {
      cli_log("%s: '%s' is not auto, boringssl or openssl", where, value);
      return -1;
    }
    return 0;
  case K_FLAG:
    if (strcmp(value, "1") == 0 || strcmp(value, "yes") == 0 ||
        strcmp(value, "true") == 0)
      *(int *)field = 1;
    else if (strcmp(value, "0") == 0 || strcmp(value, "no") == 0 ||
             strcmp(value, "false") == 0)
      *(int *)field = 0;
    else {
      cli_log("%s: '%s' is not yes or no", where, value);
      return -1;
    }
    return 0;
  }
  return -1;
}

static const opt_def *find_opt(const char *name) {
  for (size_t i = 0; i < N_OPTS; i++)
    if (strcmp(k_opts[i].name, name) == 0)
      return &k_opts[i];
  return NULL;
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
                   s[n - 1] == '\n'))
    s[--n] = '\0';
  return s;
}

/* --config FILE: "key = value" lines. 0, or -1 (the error names the file
 * and line). */
static int read_config(gw_opts *o, const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    cli_log("%s: %s", path, strerror(errno));
    return -1;
  }
  char line[4096], where[4200];
  size_t lineno = 0;
  int rc = 0;
  while (rc == 0 && fgets(line, sizeof(line), f) != NULL) {
    lineno++;
    size_t len = strlen(line);
    if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
      cli_log("%s:%zu: line too long", path, lineno);
      rc = -1;
      break;
    }
    char *s = trim(line);
    if (*s == '\0' || *s == '#')
      continue;
    char *eq = strchr(s, '=');
    if (eq == NULL) {
      cli_log("%s:%zu: not 'key = value'", path, lineno);
      rc = -1;
      break;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    const opt_def *d = find_opt(key);
    snprintf(where, sizeof(where), "%s:%zu: %s", path, lineno, key);
    if (d == NULL) {
      cli_log("%s:%zu: unknown key '%s'", path, lineno, key);
      rc = -1;
    } else if (*value == '\0') {
      cli_log("%s: no value", where);
      rc = -1;
    } else {
      rc = set_opt(o, d, value, where, NULL);
    }
  }
  if (rc == 0 && ferror(f)) {
    cli_log("%s: %s", path, strerror(errno));
    rc = -1;
  }
  fclose(f);
  return rc;
}

/* Options: the file first, then the command line over it. 0, 1 (--help
 * printed) or -1 (usage error, printed). */
static int parse_options(gw_opts *o, int argc, char **argv) {
  struct option lopts[N_OPTS + 3];
  for (size_t i = 0; i < N_OPTS; i++)
    lopts[i] = (struct option){k_opts[i].name,
                               k_opts[i].kind == K_FLAG ? no_argument
                                                        : required_argument,
                               NULL, 1000 + (int)i};
  lopts[N_OPTS] = (struct option){"config", required_argument, NULL, 'c'};
  lopts[N_OPTS + 1] = (struct option){"help", no_argument, NULL, 'h'};
  lopts[N_OPTS + 2] = (struct option){NULL, 0, NULL, 0};
  /* Pass 1: --config and --help only. */
  int c;
  opterr = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hv", lopts, NULL)) != -1) {
    if (c == 'h') {
      fputs(k_usage, stdout);
      return 1;
    }
    if (c == 'c') {
      free(o->config);
      o->config = strdup(optarg);
    }
  }
  if (o->config != NULL && read_config(o, o->config) != 0)
    return -1;
  opterr = 1;
  optind = 1;
  int fresh_ids = 1;
  while ((c = getopt_long(argc, argv, "hv", lopts, NULL)) != -1) {
    if (c == 'c')
      continue;
    if (c == 'v') {
      o->verbose = 1;
      continue;
    }
    if (c >= 1000 && c < 1000 + (int)N_OPTS) {
      const opt_def *d = &k_opts[c - 1000];
      char where[64];
      snprintf(where, sizeof(where), "--%s", d->name);
      if (set_opt(o, d, d->kind == K_FLAG ? "1" : optarg, where, &fresh_ids) !=
          0)
        return -1;
      continue;
    }
    fputs(k_usage, stderr);
    return -1;
  }
  if (optind != argc) {
    cli_log("gateway: unexpected argument '%s'", argv[optind]);
    return -1;
  }
  if (o->keys == NULL || o->n_ids == 0) {
    cli_log("gateway needs --keys and at least one --id");
    fputs(k_usage, stderr);
    return -1;
  }
  if (o->http_listen == NULL && o->coap_listen == NULL) {
    cli_log("gateway needs --http-listen or --coap-listen");
    return -1;
  }
  if ((o->http_listen != NULL) != (o->http_backend != NULL)) {
    cli_log("--http-listen and --http-backend go together");
    return -1;
  }
  if ((o->coap_listen != NULL) != (o->coap_backend != NULL)) {
    cli_log("--coap-listen and --coap-backend go together");
    return -1;
  }
#if !M2MPSK_GATEWAY_COAP
  if (o->coap_listen != NULL) {
    cli_log("--coap-listen: this m2mpsk was built without the CoAP binding");
    return -1;
  }
#endif
  return 0;
}

/* ---- keys ---------------------------------------------------------------- */

/* A new keystore from the key file, or NULL with the reason in `why`. */
static m2mpsk_keystore *load_keys(const char *path, char *why, size_t cap) {
  m2mpsk_keystore *ks = NULL;
  int rc = m2mpsk_keystore_new(&ks, 0);
  if (rc != M2MPSK_OK) {
    snprintf(why, cap, "%s", m2mpsk_strerror(rc));
    return NULL;
  }
  size_t line = 0;
  errno = 0;
  rc = m2mpsk_keystore_load_file(ks, path, &line);
  if (rc != M2MPSK_OK) {
    if (rc == M2MPSK_E_IO)
      snprintf(why, cap, "%s: %s (%s)", path, m2mpsk_strerror(rc),
               strerror(errno));
    else if (line > 0)
      snprintf(why, cap, "%s:%zu: %s", path, line, m2mpsk_strerror(rc));
    else
      snprintf(why, cap, "%s: %s", path, m2mpsk_strerror(rc));
    m2mpsk_keystore_free(ks);
    return NULL;
  }
  return ks;
}

static void reload_keys(gw_gateway *gw) {
  if (gw->sync != NULL || gw->p11 != NULL) {
    gw_notice("keys not reloaded: they come from %s (SIGHUP ignored)",
              gw->sync != NULL ? "etcd, kept in step" : "a PKCS#11 token");
    return;
  }
  char why[512];
  m2mpsk_keystore *ks = load_keys(gw->opts.keys, why, sizeof(why));
  if (ks == NULL) {
    gw_notice("keys not reloaded: %s", why);
    return;
  }
  pthread_mutex_lock(&gw->keys_lock);
  m2mpsk_keystore *old = gw->keys;
  gw->keys = ks;
  pthread_mutex_unlock(&gw->keys_lock);
  /* Associations hold their own references: established ones go on with
   * the old records. */
  m2mpsk_keystore_free(old);
  gw_notice("keys reloaded (%zu records)", m2mpsk_keystore_count(ks));
}

/* ---- workers ------------------------------------------------------------- */

static void drain_check(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  gw_worker *w = arg;
  size_t busy = gw_http_worker_busy(w);
#if M2MPSK_GATEWAY_COAP
  busy += gw_coap_worker_busy(w);
#endif
  if (busy == 0 || gw_now_ms() >= w->stop_deadline_ms) {
    event_base_loopbreak(w->base);
    return;
  }
  struct timeval tv = {0, 20000};
  evtimer_add(w->drain_ev, &tv);
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  gw_worker *w = arg;
  if (w->stopping)
    return;
  w->stopping = 1;
  w->stop_deadline_ms = gw_now_ms() + 5000;
  if (w->http)
    gw_http_worker_stop(w);
#if M2MPSK_GATEWAY_COAP
  if (w->coap)
    gw_coap_worker_stop(w);
#endif
  drain_check(-1, 0, w);
}

static void on_keys_changed(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  gw_worker *w = arg;
  if (w->stopping)
    return;
  if (w->http)
    gw_http_worker_keys_changed(w);
#if M2MPSK_GATEWAY_COAP
  if (w->coap)
    gw_coap_worker_keys_changed(w);
#endif
}

/* The etcd thread's on_change, or the PKCS#11 source's (after answers and
 * after a rescan that removed records): one wake-up per worker (an event
 * already active is not queued twice, so a burst of changes costs one
 * pass). */
static void keys_changed(void *arg) {
  gw_gateway *gw = arg;
  if (!atomic_load(&gw->keys_wake))
    return;
  for (unsigned i = 0; i < gw->n_workers; i++)
    event_active(gw->workers[i].keys_ev, EV_READ, 0);
}

static void *worker_run(void *arg) {
  gw_worker *w = arg;
  event_base_dispatch(w->base);
  return NULL;
}

typedef struct main_ctx {
  gw_gateway *gw;
  struct event_base *base;
} main_ctx;

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  main_ctx *m = arg;
  if (sig == SIGHUP) {
    reload_keys(m->gw);
    return;
  }
  if (atomic_exchange(&m->gw->stopping, 1))
    return;
  gw_notice("stopping");
  for (unsigned i = 0; i < m->gw->n_workers; i++)
    event_active(m->gw->workers[i].stop_ev, EV_READ, 0);
  event_base_loopexit(m->base, NULL);
}

static void on_log_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  gw_log_flush();
}

/* stunnel and nghttpx raise the soft descriptor limit to the hard one: a
 * gateway's connections are its descriptors. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int gw_main(int argc, char **argv) {
  gw_gateway *gw = calloc(1, sizeof(*gw));
  if (gw == NULL)
    return CLI_FAILED;
  opts_defaults(&gw->opts);
  int rc = parse_options(&gw->opts, argc, argv);
  if (rc != 0) {
    opts_free(&gw->opts);
    free(gw);
    return rc > 0 ? CLI_OK : CLI_USAGE;
  }
  gw_opts *o = &gw->opts;
  gw_log_init(o->log_rate, o->verbose);
  cli_verbose = o->verbose;
  int result = CLI_FAILED;
  main_ctx m = {.gw = gw};
  struct event *sig_hup = NULL, *sig_term = NULL, *sig_int = NULL, *tick = NULL;
  pthread_mutex_init(&gw->keys_lock, NULL);
  pthread_mutex_init(&gw->addr_lock, NULL);
  gw->addr_buckets = 4099;
  gw->addr_table = calloc(gw->addr_buckets, sizeof(*gw->addr_table));
  if (gw->addr_table == NULL)
    goto out;

  gw->cfg = cli_make_config(o->engine, o->suites, o->handshake_timeout_ms,
                            (const char *const *)o->ids, o->n_ids, 0);
  if (gw->cfg == NULL) {
    result = CLI_USAGE;
    goto out;
  }
  if (m2mpsk_config_set_rate_limit(gw->cfg, M2MPSK_RATE_KPSA_ID, o->rate_limit,
                                   10000, 1000, 60000) != M2MPSK_OK ||
      /* The gateway's own caps come first; the library's is a backstop
       * above them (threads free their associations at their own pace). */
      m2mpsk_config_set_max_handshakes(gw->cfg, o->max_conn + o->max_conn / 2 +
                                                    64) != M2MPSK_OK) {
    cli_log("gateway: cannot configure the limits");
    goto out;
  }
  char why[512];
  if (cli_keys_is_url(o->keys) || cli_keys_is_pkcs11(o->keys)) {
    /* The snapshot is loaded before any listener opens. The etcd thread,
     * or the PKCS#11 source's, starts with the signals blocked: they are
     * the main loop's. */
    cli_keys_opts ko = {.spec = o->keys,
                        .kek = o->kek,
                        .fail_closed_s = o->etcd_fail_closed,
                        .on_change = keys_changed,
                        .arg = gw,
                        .pin_file = o->pin_file,
                        .p11 = &gw->p11,
                        .init_args = o->init_args};
    sigset_t sigs, old_mask;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, &old_mask);
    int krc = cli_keys_open(&ko, &gw->keys, &gw->sync);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (krc != CLI_OK) {
      result = krc;
      goto out;
    }
  } else if (o->kek != NULL || o->etcd_fail_closed != 0) {
    cli_log("--kek and --etcd-fail-closed go with --keys etcd://...");
    result = CLI_USAGE;
    goto out;
  } else if (o->pin_file != NULL || o->init_args != NULL) {
    cli_log("--pin-file and --pkcs11-init-args go with --keys "
            "pkcs11:MODULE:TOKEN");
    result = CLI_USAGE;
    goto out;
  } else {
    if ((gw->keys = load_keys(o->keys, why, sizeof(why))) == NULL) {
      cli_log("%s", why);
      result = CLI_IO;
      goto out;
    }
    if (m2mpsk_keystore_is_locked(gw->keys) != 1)
      cli_log("warning: key memory is not locked (RLIMIT_MEMLOCK); keys "
              "may be swapped out");
  }
  raise_nofile();
  signal(SIGPIPE, SIG_IGN);
  if (evthread_use_pthreads() != 0) {
    cli_log("gateway: libevent has no thread support");
    goto out;
  }

  gw->n_workers = o->threads;
  gw->workers = calloc(gw->n_workers, sizeof(*gw->workers));
  if (gw->workers == NULL)
    goto out;
  for (unsigned i = 0; i < gw->n_workers; i++) {
    gw_worker *w = &gw->workers[i];
    w->gw = gw;
    w->index = i;
    w->base = event_base_new();
    if (w->base == NULL)
      goto out;
    w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
    w->drain_ev = evtimer_new(w->base, drain_check, w);
    w->keys_ev = event_new(w->base, -1, 0, on_keys_changed, w);
    if (w->stop_ev == NULL || w->drain_ev == NULL || w->keys_ev == NULL)
      goto out;
    if (o->http_listen != NULL) {
      if (gw_http_worker_start(w) != 0) {
        result = CLI_IO;
        goto out;
      }
      if (i == 0) {
        char addr[80];
        gw_format_addr((struct sockaddr *)&gw->http_addr, 1, addr,
                       sizeof(addr));
        gw_notice("listening http %s", addr);
      }
    }
#if M2MPSK_GATEWAY_COAP
    if (o->coap_listen != NULL) {
      if (gw_coap_worker_start(w) != 0) {
        result = CLI_IO;
        goto out;
      }
      if (i == 0) {
        char addr[80];
        gw_format_addr((struct sockaddr *)&gw->coap_addr, 1, addr,
                       sizeof(addr));
        gw_notice("listening coap %s", addr);
      }
    }
#endif
  }

  /* Signals go to the main thread only: the workers block them. */
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  m.base = event_base_new();
  if (m.base == NULL)
    goto out;
  sig_hup = evsignal_new(m.base, SIGHUP, on_signal, &m);
  sig_term = evsignal_new(m.base, SIGTERM, on_signal, &m);
  sig_int = evsignal_new(m.base, SIGINT, on_signal, &m);
  tick = event_new(m.base, -1, EV_PERSIST, on_log_tick, NULL);
  struct timeval one_s = {1, 0};
  if (sig_hup == NULL || sig_term == NULL || sig_int == NULL || tick == NULL ||
      evsignal_add(sig_hup, NULL) != 0 || evsignal_add(sig_term, NULL) != 0 ||
      evsignal_add(sig_int, NULL) != 0 || event_add(tick, &one_s) != 0)
    goto out;
  /* Every worker's keys_ev exists: the etcd thread may wake them. A change
   * applied before now is seen all the same: no association existed. */
  atomic_store(&gw->keys_wake, 1);
  pthread_sigmask(SIG_BLOCK, &set, &old);
  unsigned started = 0;
  for (; started < gw->n_workers; started++)
    if (pthread_create(&gw->workers[started].thread, NULL, worker_run,
                       &gw->workers[started]) != 0)
      break;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (started == gw->n_workers) {
    gw_notice("ready");
    event_base_dispatch(m.base);
    result = CLI_OK;
  } else {
    cli_log("gateway: cannot start threads: %s", strerror(errno));
    for (unsigned i = 0; i < started; i++)
      event_active(gw->workers[i].stop_ev, EV_READ, 0);
  }
  for (unsigned i = 0; i < started; i++)
    pthread_join(gw->workers[i].thread, NULL);
  gw_log_flush();

out:
  /* The etcd thread goes before the events it wakes and the keystore it
   * writes to. */
  cli_keys_close(gw->sync);
  gw->sync = NULL;
  cli_keys_close_p11(gw->p11);
  gw->p11 = NULL;
  atomic_store(&gw->keys_wake, 0);
  if (gw->workers != NULL) {
    for (unsigned i = 0; i < gw->n_workers; i++) {
      gw_worker *w = &gw->workers[i];
      if (w->http)
        gw_http_worker_free(w);
#if M2MPSK_GATEWAY_COAP
      if (w->coap)
        gw_coap_worker_free(w);
#endif
      if (w->stop_ev)
        event_free(w->stop_ev);
      if (w->drain_ev)
        event_free(w->drain_ev);
      if (w->keys_ev)
        event_free(w->keys_ev);
      if (w->base)
        event_base_free(w->base);
    }
    free(gw->workers);
  }
  if (sig_hup)
    event_free(sig_hup);
  if (sig_term)
    event_free(sig_term);
  if (sig_int)
    event_free(sig_int);
  if (tick)
    event_free(tick);
  if (m.base)
    event_base_free(m.base);
  m2mpsk_config_free(gw->cfg);
  m2mpsk_keystore_free(gw->keys);
  if (gw->addr_table != NULL) {
    for (size_t i = 0; i < gw->addr_buckets; i++) {
      while (gw->addr_table[i] != NULL) {
        struct gw_addr_entry *e = gw->addr_table[i];
        gw->addr_table[i] = e->next;
        free(e);
      }
    }
    free(gw->addr_table);
  }
  pthread_mutex_destroy(&gw->keys_lock);
  pthread_mutex_destroy(&gw->addr_lock);
  opts_free(&gw->opts);
  free(gw);
  return result;
}
