/* m2mpsk-gwbench-backend: the plain HTTP/1.1 server that every contender of
 * the gateway benchmark forwards to (tests/bench/gateway/README section of
 * tests/bench/README.md). libevent's evhttp, one thread, keep-alive, and
 * one fixed answer: a small oneM2M <contentInstance> in JSON, with the
 * request's X-M2M-RI copied back, as a CSE would answer a retrieve.
 *
 *   m2mpsk-gwbench-backend [PORT]     (0 or none: the kernel chooses)
 *
 * Prints "listening PORT" on stdout once bound, then serves until SIGTERM
 * or SIGINT. Counts requests, and prints the count on exit. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char k_body[] =
    "{\"m2m:cin\":{\"rn\":\"cin_0001\",\"ty\":4,\"ri\":\"/cse-in/cin_0001\","
    "\"pi\":\"/cse-in/cnt_bench\",\"ct\":\"20260101T000000,000000\","
    "\"lt\":\"20260101T000000,000000\",\"st\":1,\"cnf\":\"text/plain:0\","
    "\"cs\":4,\"con\":\"22.5\"}}";

static unsigned long long g_requests;

static void on_request(struct evhttp_request *req, void *arg) {
  (void)arg;
  struct evkeyvalq *in = evhttp_request_get_input_headers(req);
  struct evkeyvalq *out = evhttp_request_get_output_headers(req);
  const char *ri = evhttp_find_header(in, "X-M2M-RI");
  evhttp_add_header(out, "Content-Type", "application/json");
  evhttp_add_header(out, "X-M2M-RSC", "2000");
  if (ri != NULL)
    evhttp_add_header(out, "X-M2M-RI", ri);
  struct evbuffer *body = evhttp_request_get_output_buffer(req);
  evbuffer_add_reference(body, k_body, sizeof(k_body) - 1, NULL, NULL);
  evhttp_send_reply(req, 200, "OK", NULL);
  g_requests++;
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  event_base_loopbreak(arg);
}

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  if (argc > 2 || port < 0 || port > 65535) {
    fputs("usage: m2mpsk-gwbench-backend [PORT]\n", stderr);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct event_base *base = event_base_new();
  struct evhttp *http = base ? evhttp_new(base) : NULL;
  if (http == NULL) {
    fputs("m2mpsk-gwbench-backend: libevent setup failed\n", stderr);
    return 1;
  }
  /* The proxies hold their backend connections for as long as the
   * benchmark holds its associations idle: never time them out here. */
  evhttp_set_timeout(http, 3600);
  evhttp_set_gencb(http, on_request, NULL);
  struct evhttp_bound_socket *bound =
      evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)port);
  if (bound == NULL) {
    fprintf(stderr, "m2mpsk-gwbench-backend: cannot listen on port %d\n", port);
    return 1;
  }
  struct sockaddr_in sin;
  socklen_t len = sizeof(sin);
  if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin,
                  &len) != 0) {
    perror("getsockname");
    return 1;
  }
  printf("listening %u\n", (unsigned)ntohs(sin.sin_port));
  fflush(stdout);
  struct event *term = evsignal_new(base, SIGTERM, on_signal, base);
  struct event *intr = evsignal_new(base, SIGINT, on_signal, base);
  if (term == NULL || intr == NULL || event_add(term, NULL) != 0 ||
      event_add(intr, NULL) != 0) {
    fputs("m2mpsk-gwbench-backend: signal setup failed\n", stderr);
    return 1;
  }
  event_base_dispatch(base);
  fprintf(stderr, "m2mpsk-gwbench-backend: %llu requests\n", g_requests);
  event_free(term);
  event_free(intr);
  evhttp_free(http);
  event_base_free(base);
  return 0;
}
