/* The CLI's parsers of bytes a peer controls, compiled into this target
 * from src/cli: the oneM2M HTTP-binding parser of `m2mpsk serve --http`
 * (http.c) and the -v record tracer (wire.c).
 *
 * HTTP: the CLI hands cli_http_input() whatever one m2mpsk_assoc_read()
 * returned, so a request arrives in arbitrary pieces, empty ones included;
 * this target does the same with the pieces of its input, on an
 * established responder association (its answers are drained and
 * discarded, as a peer that never reads would leave them). After the
 * pieces, the state is freed as serve's free_conn() does, also after
 * cli_http_input() returned -1 (serve closes the association then and
 * feeds it nothing more; so does this target).
 *
 * Tracer: each piece is one read (TLS, records may span pieces) or one
 * datagram (DTLS) given to cli_trace_wire() with -v on.
 *
 * Input:  opts chunk*
 *   opts bit 1: the pieces go to the tracer (else to the HTTP parser)
 *   opts bit 0: HTTP: the association is bound to the Credential-ID
 *               (record without IdA: an <AE> CREATE binds an AE-ID), else
 *               to IdA; tracer: DTLS (else TLS)
 *   opts bit 2: tracer: the pieces were sent (else received)
 *   chunk := hi lo payload, common.h's format: one call with len
 *            ((hi & 0x3f) << 8 | lo) bytes (0 is a valid piece); hi's
 *            bits 6 and 7 are ignored here
 *
 * One established pair per variant is kept across inputs (a handshake per
 * input would cost most of the time). An input that changed the pair (an
 * AE-ID bound, the association no longer established) has it rebuilt, so
 * that every input starts from the same state. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct pair {
  m2mpsk_assoc *a, *b;
  int credential;                /* b's binding when it was built */
  char bound[M2MPSK_ID_MAX + 1]; /* and what it was bound to */
} pair;

static void pair_free(pair *p) {
  m2mpsk_assoc_free(p->a);
  m2mpsk_assoc_free(p->b);
  p->a = p->b = NULL;
}

static void pair_build(pair *p, int credential) {
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                            fz_initiator_cfg(), fz_initiator_ks(),
                            credential ? FZ_KPSA_NOIDA : FZ_KPSA_ID) ==
               M2MPSK_OK,
           "assoc_new initiator");
  fz_check(m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                            fz_responder_cfg(0), fz_responder_ks(),
                            NULL) == M2MPSK_OK,
           "assoc_new responder");
  fz_check(m2mpsk_assoc_start(p->b, now, FZ_UNIX_TIME) == M2MPSK_OK,
           "start responder");
  fz_check(m2mpsk_assoc_start(p->a, now, FZ_UNIX_TIME) == M2MPSK_OK,
           "start initiator");
  fz_check(fz_handshake(p->a, p->b, &now, NULL, NULL), "handshake");
  p->credential = m2mpsk_assoc_peer_id_is_credential(p->b) == 1;
  fz_check(p->credential == credential, "binding of the fixture");
  snprintf(p->bound, sizeof(p->bound), "%s", m2mpsk_assoc_peer_id(p->b));
}

static void trace_pieces(fz_reader *r, int dtls, int sent) {
  cli_wire w = {.dtls = dtls};
  fz_chunk c;
  cli_verbose = 1;
  while (fz_next_chunk(r, &c))
    cli_trace_wire(&w, sent, "192.0.2.1:4433", c.data, c.len);
  cli_wire_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static pair pairs[2];
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  if (opts & 2) {
    trace_pieces(&r, opts & 1, (opts & 4) != 0);
    return 0;
  }
  int credential = opts & 1;
  pair *p = &pairs[credential];
  if (p->b == NULL)
    pair_build(p, credential);

  cli_http *http = NULL;
  fz_chunk c;
  while (fz_next_chunk(&r, &c)) {
    int rc = cli_http_input(&http, p->b, "192.0.2.1:4433", c.data, c.len);
    fz_drain_all(p->b, 0);
    if (rc != 0)
      break;
  }
  cli_http_free(http);

  /* The next input must find the pair as it was built. */
  if (m2mpsk_assoc_state(p->b) != M2MPSK_STATE_ESTABLISHED ||
      (m2mpsk_assoc_peer_id_is_credential(p->b) == 1) != p->credential ||
      strcmp(m2mpsk_assoc_peer_id(p->b), p->bound) != 0)
    pair_free(p);
  return 0;
}
