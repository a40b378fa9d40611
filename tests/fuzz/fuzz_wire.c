/* The CLI's -v record tracer (src/cli/wire.c), compiled into this target:
 * it parses record and handshake headers out of bytes the peer controls.
 * (Until issue 16 this target also fuzzed `serve --http`'s hand-written
 * HTTP parser, gone since: the gateway's device-side HTTP is
 * fuzz_httpreq's, and its oneM2M decisions are fuzz_gateway's.)
 *
 * Each piece is one read (TLS, records may span pieces) or one datagram
 * (DTLS) given to cli_trace_wire() with -v on.
 *
 * Input:  opts chunk*
 *   opts bit 0: DTLS (else TLS)
 *   opts bit 1: ignored (it chose the tracer over the HTTP parser; the
 *               seeds keep it set)
 *   opts bit 2: the pieces were sent (else received)
 *   chunk := hi lo payload, common.h's format: one call with len
 *            ((hi & 0x3f) << 8 | lo) bytes (0 is a valid piece); hi's
 *            bits 6 and 7 are ignored here */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The CLI's logging (common.c), without the output unless
 * M2MPSK_FUZZ_DEBUG is set (to see what a seed reaches): the format and
 * its arguments are evaluated either way, so a bad argument is found. */
int cli_verbose;

__attribute__((format(printf, 1, 0))) static void vlog(const char *fmt,
                                                       va_list ap) {
  static int debug = -1;
  char line[1024];
  (void)vsnprintf(line, sizeof(line), fmt, ap);
  if (debug < 0)
    debug = getenv("M2MPSK_FUZZ_DEBUG") != NULL;
  if (debug)
    fprintf(stderr, "m2mpsk: %s\n", line);
}

void cli_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

void cli_trace(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  cli_wire w = {.dtls = opts & 1};
  fz_chunk c;
  cli_verbose = 1;
  while (fz_next_chunk(&r, &c))
    cli_trace_wire(&w, (opts & 4) != 0, "192.0.2.1:4433", c.data, c.len);
  cli_wire_free(&w);
  return 0;
}
