/* m2mpsk gateway: options, the shared state, the worker threads. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

int gw_main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "m2mpsk: gateway: not implemented yet\n");
  return 2;
}
