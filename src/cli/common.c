/* What the commands share: time, logging, key files, configs. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

int cli_verbose;

uint64_t cli_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int64_t cli_unix_time(void) {
  return (int64_t)time(NULL);
}

__attribute__((format(printf, 1, 0))) static void vlog(const char *fmt,
                                                       va_list ap) {
  char line[1024];
  vsnprintf(line, sizeof(line), fmt, ap);
  fprintf(stderr, "m2mpsk: %s\n", line);
  fflush(stderr);
}

void cli_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

void cli_trace(const char *fmt, ...) {
  if (!cli_verbose)
    return;
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

m2mpsk_keystore *cli_load_keys(const char *path) {
  m2mpsk_keystore *ks = NULL;
  int rc = m2mpsk_keystore_new(&ks, 0);
  if (rc != M2MPSK_OK) {
    cli_log("cannot create a keystore: %s", m2mpsk_strerror(rc));
    return NULL;
  }
  size_t line = 0;
  rc = m2mpsk_keystore_load_file(ks, path, &line);
  if (rc != M2MPSK_OK) {
    if (rc == M2MPSK_E_IO)
      cli_log("%s: %s (%s)", path, m2mpsk_strerror(rc), strerror(errno));
    else if (line > 0)
      cli_log("%s:%zu: %s", path, line, m2mpsk_strerror(rc));
    else
      cli_log("%s: %s", path, m2mpsk_strerror(rc));
    m2mpsk_keystore_free(ks);
    return NULL;
  }
  if (m2mpsk_keystore_is_locked(ks) != 1)
    cli_log("warning: key memory is not locked (RLIMIT_MEMLOCK); keys may "
            "be swapped out");
  cli_trace("%zu records loaded from %s", m2mpsk_keystore_count(ks), path);
  return ks;
}

int cli_parse_engine(const char *s, m2mpsk_engine_id *out) {
  static const m2mpsk_engine_id ids[] = {
      M2MPSK_ENGINE_AUTO, M2MPSK_ENGINE_BORINGSSL, M2MPSK_ENGINE_OPENSSL};
  for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
    if (strcmp(s, m2mpsk_engine_name(ids[i])) == 0) {
      *out = ids[i];
      return 0;
    }
  cli_log("--engine must be auto, boringssl or openssl, not '%s'", s);
  return -1;
}

/* Expands "all" into every suite the engine (AUTO: any engine) supports. */
static int set_all_suites(m2mpsk_config *cfg, m2mpsk_engine_id engine) {
  char list[1024] = "";
  size_t used = 0;
  for (size_t i = 0; i < m2mpsk_engine_suite_count(engine); i++) {
    int n = snprintf(list + used, sizeof(list) - used, "%s%s", i ? ":" : "",
                     m2mpsk_engine_suite_name(engine, i));
    if (n < 0 || (size_t)n >= sizeof(list) - used)
      return M2MPSK_E_INVALID;
    used += (size_t)n;
  }
  return m2mpsk_config_set_suites(cfg, list);
}

m2mpsk_config *cli_make_config(m2mpsk_engine_id engine, const char *suites,
                               uint32_t timeout_ms, const char *const *ids,
                               size_t n_ids, int reveal) {
  m2mpsk_config *cfg = NULL;
  int rc = m2mpsk_config_new(&cfg);
  if (rc != M2MPSK_OK) {
    cli_log("cannot create a config: %s", m2mpsk_strerror(rc));
    return NULL;
  }
  /* Before the suites, which a named engine must have. */
  if ((rc = m2mpsk_config_set_engine(cfg, engine)) != M2MPSK_OK) {
    cli_log("--engine %s: %s%s%s", m2mpsk_engine_name(engine),
            m2mpsk_strerror(rc), *m2mpsk_backend_error() ? ": " : "",
            m2mpsk_backend_error());
    goto fail;
  }
  if (suites != NULL && strcmp(suites, "ts0003") == 0) {
    rc = m2mpsk_config_set_profile(cfg, M2MPSK_PROFILE_TS0003);
    char missing[128] = "";
    if (rc == M2MPSK_E_SUITE &&
        m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, missing,
                               sizeof(missing)) == M2MPSK_OK) {
      cli_log("--suites ts0003: the %s backend lacks %s", m2mpsk_backend_name(),
              missing);
      goto fail;
    }
  } else if (suites != NULL) {
    rc = strcmp(suites, "all") == 0 ? set_all_suites(cfg, engine)
                                    : m2mpsk_config_set_suites(cfg, suites);
  }
  if (rc != M2MPSK_OK) {
    cli_log("--suites %s: %s", suites, m2mpsk_strerror(rc));
    goto fail;
  }
  if (timeout_ms != 0 && (rc = m2mpsk_config_set_handshake_timeout(
                              cfg, timeout_ms)) != M2MPSK_OK) {
    cli_log("--timeout: %s", m2mpsk_strerror(rc));
    goto fail;
  }
  for (size_t i = 0; i < n_ids; i++) {
    if ((rc = m2mpsk_config_add_local_id(cfg, ids[i])) != M2MPSK_OK) {
      cli_log("--id %s: %s", ids[i], m2mpsk_strerror(rc));
      goto fail;
    }
  }
  if (reveal &&
      (rc = m2mpsk_config_set_reveal_unknown_identity(cfg, 1)) != M2MPSK_OK) {
    cli_log("--reveal-unknown: %s", m2mpsk_strerror(rc));
    goto fail;
  }
  return cfg;
fail:
  m2mpsk_config_free(cfg);
  return NULL;
}

void cli_format_addr(const struct sockaddr *sa, char *out, size_t cap) {
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
    snprintf(out, cap, "%s:%u", host, port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 =
        (const struct sockaddr_in6 *)(const void *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
    snprintf(out, cap, "[%s]:%u", host, port);
  } else {
    snprintf(out, cap, "unknown");
  }
}

void cli_log_outcome(const char *peer, const m2mpsk_assoc *a) {
  if (m2mpsk_assoc_peer_id(a) != NULL) {
    cli_log("association peer=%s kpsa-id=%s bound=%s credential=%d suite=%s "
            "version=%s engine=%s",
            peer, m2mpsk_assoc_kpsa_id(a), m2mpsk_assoc_peer_id(a),
            m2mpsk_assoc_peer_id_is_credential(a), m2mpsk_assoc_suite(a),
            m2mpsk_assoc_version(a),
            m2mpsk_engine_name(m2mpsk_assoc_engine(a)));
  } else {
    cli_log("failure peer=%s reason=%s detail=\"%s\"", peer,
            m2mpsk_reason_name(m2mpsk_assoc_failure(a)),
            m2mpsk_assoc_failure_detail(a));
  }
}

int cli_write_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int cli_parse_uint(const char *s, unsigned long lo, unsigned long hi,
                   unsigned long *out) {
  if (s == NULL || *s < '0' || *s > '9')
    return -1;
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

/* --not-before/--not-after: what a key file accepts (keyfile.c), Unix
 * seconds or "YYYY-MM-DDTHH:MM:SSZ" from 1970 on. */
int cli_parse_time(const char *s, int64_t *out) {
  size_t n = strlen(s), i = 0;
  while (i < n && s[i] >= '0' && s[i] <= '9')
    i++;
  if (n > 0 && i == n) {
    int64_t v = 0;
    for (i = 0; i < n; i++) {
      if (v > (INT64_MAX - 9) / 10)
        return -1;
      v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
  }
  struct tm tm = {0};
  const char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (n != 20 || end == NULL || *end != '\0' || tm.tm_year < 70)
    return -1;
  struct tm check = tm;
  time_t t = timegm(&check);
  /* timegm normalises 02-30 into March: such a date is not one. */
  if (t == (time_t)-1 || check.tm_mday != tm.tm_mday ||
      check.tm_mon != tm.tm_mon || check.tm_hour != tm.tm_hour ||
      check.tm_min != tm.tm_min || check.tm_sec != tm.tm_sec)
    return -1;
  *out = (int64_t)t;
  return 0;
}

/* A Unix time as "YYYY-MM-DDTHH:MM:SSZ", or "-" for 0 (none). */
void cli_fmt_time(int64_t t, char *out, size_t cap) {
  if (t == 0) {
    snprintf(out, cap, "-");
    return;
  }
  time_t tt = (time_t)t;
  struct tm tm;
  if (gmtime_r(&tt, &tm) == NULL ||
      strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(out, cap, "%" PRId64, t);
}
