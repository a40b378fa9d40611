/* The HTTP binding (TS-0009) over TLS-PSK. */
#include "gw.h"

int gw_http_worker_start(gw_worker *w) {
  (void)w;
  return -1;
}
void gw_http_worker_stop(gw_worker *w) {
  (void)w;
}
size_t gw_http_worker_busy(gw_worker *w) {
  (void)w;
  return 0;
}
void gw_http_worker_free(gw_worker *w) {
  (void)w;
}
