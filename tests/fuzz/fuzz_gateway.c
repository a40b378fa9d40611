/* m2mpsk gateway: the oneM2M decisions on peer bytes (src/gateway/gate.c),
 * over a real established association. The device's X-M2M-Origin and
 * Content-Type and the CSE's X-M2M-RSC and JSON body come from the input;
 * fuzz_httpreq assembles the HTTP around them (http-parser) and the TLS
 * records are fuzz_responder's.
 *
 * Input: one byte (bit 0: the record with IdA or the Credential-ID one),
 * then NUL-separated fields: from, content-type, rsc, body, from2. */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *field(const uint8_t **p, size_t *left, char *buf,
                         size_t cap) {
  size_t n = 0;
  while (n < *left && (*p)[n] != 0)
    n++;
  size_t take = n < cap - 1 ? n : cap - 1;
  memcpy(buf, *p, take);
  buf[take] = '\0';
  size_t used = n < *left ? n + 1 : n;
  *p += used;
  *left -= used;
  return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const char *kpsa = (data[0] & 1) ? FZ_KPSA_NOIDA : FZ_KPSA_ID;
  const uint8_t *p = data + 1;
  size_t left = size - 1;
  static char from[1024], ctype[512], rsc_s[32], from2[1024];
  static char body[65536];
  field(&p, &left, from, sizeof(from));
  field(&p, &left, ctype, sizeof(ctype));
  field(&p, &left, rsc_s, sizeof(rsc_s));
  /* The body is binary: up to the next NUL, kept with its length. */
  size_t blen = 0;
  while (blen < left && blen < sizeof(body) && p[blen] != 0)
    blen++;
  memcpy(body, p, blen);
  p += blen < left ? blen + 1 : blen;
  left -= blen < left ? blen + 1 : blen;
  field(&p, &left, from2, sizeof(from2));

  m2mpsk_assoc *a = NULL, *b = NULL;
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                            fz_initiator_cfg(), fz_initiator_ks(),
                            kpsa) == M2MPSK_OK,
           "initiator");
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                            fz_responder_cfg(0), fz_responder_ks(),
                            NULL) == M2MPSK_OK,
           "responder");
  fz_check(m2mpsk_assoc_start(a, now, FZ_UNIX_TIME) == M2MPSK_OK &&
               m2mpsk_assoc_start(b, now, FZ_UNIX_TIME) == M2MPSK_OK,
           "start");
  fz_check(fz_handshake(a, b, &now, NULL, NULL), "handshake");

  int ty = gw_gate_content_type_ty(ctype);
  fz_check(ty >= -1, "ty");
  const char *why = NULL;
  int rsc = gw_gate_request(b, from, ty == 2, &why);
  fz_check((rsc == 0 || rsc == 4106 || rsc == 4107) && why != NULL, "verdict");
  if (rsc == 0) {
    int bound = gw_gate_response(b, ty == 2, atoi(rsc_s), body, blen, &why);
    fz_check(bound >= -1 && bound <= 1 && why != NULL, "response");
    if (bound == 1)
      fz_check(!m2mpsk_assoc_peer_id_is_credential(b), "bound");
    rsc = gw_gate_request(b, from2, 0, &why);
    fz_check(rsc == 0 || rsc == 4106 || rsc == 4107, "verdict 2");
  }
  char dbg[64];
  size_t n = gw_gate_dbg_body(from, dbg, sizeof(dbg));
  fz_check(n < sizeof(dbg) && dbg[n] == '\0' && n >= 14 &&
               memcmp(dbg, "{\"m2m:dbg\":\"", 12) == 0 &&
               memcmp(dbg + n - 2, "\"}", 2) == 0,
           "dbg body");
  for (size_t i = 12; i + 2 < n; i++)
    fz_check(dbg[i] != '"' || dbg[i - 1] == '\\', "dbg escaping");
  (void)gw_gate_identity(b);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  return 0;
}
