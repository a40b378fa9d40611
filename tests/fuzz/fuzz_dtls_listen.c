/* The DTLS responder's stateless cookie exchange, m2mpsk_dtls_listen(),
 * driven as a host drives it: every datagram from a peer without an
 * association goes to m2mpsk_dtls_listen(); once one is admitted (M2MPSK_OK)
 * a responder association is made for the peer, started, and fed that same
 * datagram and the rest of the input, as in fuzz_responder_dtls.
 *
 * Built only with the OpenSSL backend: with BoringSSL the call returns
 * M2MPSK_E_UNSUPPORTED before it reads the datagram.
 *
 * Input:  opts chunk*   (chunks as in common.h; one chunk is one datagram)
 *   opts bit 0: answer the cookie. A datagram that gets a
 *               HelloVerifyRequest is given again with the cookie of that
 *               HelloVerifyRequest in place of its own, as a client
 *               answers. The cookie secret is drawn at random in each
 *               process, so a cookie recorded in the corpus is never valid
 *               when replayed; this is how an input reaches the valid
 *               cookie path, the same way every run.
 *   opts bit 1: the association's peer tag is not the one the cookie was
 *               made for
 *   opts bit 2: the answer buffer holds 16 bytes (M2MPSK_E_BUFFER)
 *   opts bit 3: reveal-unknown-identity on (fz_responder_cfg variant 1)
 * At most 64 datagrams go to m2mpsk_dtls_listen. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TAG "192.0.2.7:5684"
#define OTHER_TAG "192.0.2.8:5684"

/* Offsets in a DTLS 1.2 datagram that starts with a ClientHello record:
 * record header (13), handshake header (12), client_version (2), random
 * (32), then the session id and the cookie, each with a 1-byte length. */
enum {
  REC_LEN = 11,   /* record length, 2 bytes */
  HS_TYPE = 13,   /* handshake type */
  HS_LEN = 14,    /* message length, 3 bytes */
  FRAG_LEN = 22,  /* fragment length, 3 bytes */
  SID_LEN = 59,   /* session id length */
  HVR_COOKIE = 27 /* HelloVerifyRequest: cookie length, then the cookie */
};

static uint32_t get24(const uint8_t *p) {
  return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

static void put24(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 16);
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)v;
}

/* Writes to `out` the datagram `d` with its ClientHello cookie replaced by
 * the HelloVerifyRequest's, the three length fields moved by the
 * difference (whatever they said). Returns the new length, or 0 when
 * either does not have the layout to splice into. */
static size_t splice_cookie(const uint8_t *d, size_t n, const uint8_t *hvr,
                            size_t hvr_len, uint8_t *out, size_t cap) {
  if (n <= SID_LEN || d[HS_TYPE] != 1 || hvr_len <= HVR_COOKIE)
    return 0;
  size_t c = SID_LEN + 1 + d[SID_LEN]; /* the ClientHello's cookie length */
  if (c >= n || c + 1 + d[c] > n)
    return 0;
  size_t old = d[c], fresh = hvr[HVR_COOKIE];
  if (HVR_COOKIE + 1 + fresh > hvr_len || n - old + fresh > cap)
    return 0;
  memcpy(out, d, c);
  out[c] = (uint8_t)fresh;
  memcpy(out + c + 1, hvr + HVR_COOKIE + 1, fresh);
  memcpy(out + c + 1 + fresh, d + c + 1 + old, n - c - 1 - old);
  uint32_t delta = (uint32_t)fresh - (uint32_t)old; /* mod 2^32 */
  uint32_t rec = ((uint32_t)out[REC_LEN] << 8 | out[REC_LEN + 1]) + delta;
  out[REC_LEN] = (uint8_t)(rec >> 8);
  out[REC_LEN + 1] = (uint8_t)rec;
  put24(out + HS_LEN, (get24(out + HS_LEN) + delta) & 0xffffff);
  put24(out + FRAG_LEN, (get24(out + FRAG_LEN) + delta) & 0xffffff);
  return n - old + fresh;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uint8_t spliced[0x4000 + 256];
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  m2mpsk_config *cfg = fz_responder_cfg((opts >> 3) & 1);
  uint8_t out[512];
  size_t cap = (opts & 4) ? 16 : sizeof(out);
  const uint8_t *admitted = NULL;
  size_t admitted_len = 0;
  fz_chunk c;
  for (int i = 0; i < 64 && admitted == NULL && fz_next_chunk(&r, &c); i++) {
    if (c.len == 0)
      continue;
    size_t n = 0;
    int rc = m2mpsk_dtls_listen(cfg, TAG, c.data, c.len, out, cap, &n);
    fz_check(rc == M2MPSK_LISTEN_ACCEPT || rc == M2MPSK_LISTEN_REPLY ||
                 rc == M2MPSK_E_PROTOCOL || rc == M2MPSK_E_BUFFER ||
                 rc == M2MPSK_E_NOMEM || rc == M2MPSK_E_INTERNAL,
             "m2mpsk_dtls_listen returns a documented status");
    if (rc == M2MPSK_LISTEN_REPLY) {
      fz_check(n > 0 && n <= cap, "HelloVerifyRequest within the buffer");
      size_t len = (opts & 1) ? splice_cookie(c.data, c.len, out, n, spliced,
                                              sizeof(spliced))
                              : 0;
      if (len > 0 && m2mpsk_dtls_listen(cfg, TAG, spliced, len, out, cap, &n) ==
                         M2MPSK_OK) {
        admitted = spliced;
        admitted_len = len;
      }
    } else if (rc == M2MPSK_OK) {
      admitted = c.data;
      admitted_len = c.len;
    } else {
      /* Garbage is dropped, and nothing is written for it. */
      fz_check(n == 0, "no answer without M2MPSK_LISTEN_REPLY");
    }
  }
  if (admitted == NULL) {
    fz_note("end of input: not admitted");
    return 0;
  }

  m2mpsk_assoc *b = NULL;
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_DTLS,
                            cfg, fz_responder_ks(), NULL) == M2MPSK_OK,
           "assoc_new");
  fz_check(m2mpsk_assoc_set_peer_tag(b, (opts & 2) ? OTHER_TAG : TAG) ==
               M2MPSK_OK,
           "set_peer_tag");
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_start(b, now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  fz_status(m2mpsk_assoc_feed(b, admitted, admitted_len, now), 0, "assoc_feed");
  fz_drain_all(b, 0);
  now += 10;
  fz_feed_chunks(b, &r, &now);
  m2mpsk_assoc_free(b);
  return 0;
}
