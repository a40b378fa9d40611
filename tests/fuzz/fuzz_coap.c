/* The gateway's CoAP codec (src/gateway/coap.c, built with
 * GW_COAP_CODEC_ONLY): libcoap3's coap_pdu_parse on bytes a device sent
 * (decrypted from its association) and on bytes the CSE sent, then what
 * the gateway builds from them: the request toward the CSE (options in
 * order, the identity option replaced), the response relayed to the
 * device (the device's token and message ID), and the gateway's own
 * answers (4.03 with oneM2M-RSC and the RQI copied).
 *
 * Only what the gateway would relay is encoded: requests (class 0, not
 * empty) from the device, responses (class 2 to 5) from the CSE.
 *
 * Oracle: whatever the gateway encodes from a message libcoap accepted
 * must parse again with libcoap, with the same code, the same options in
 * the same order (but for the identity option, present exactly once with
 * the identity) and the same payload; the oneM2M view (FR, RQI, TY) must
 * agree with a walk over the parsed options.
 *
 * Input:  opts hi lo device-message cse-message
 *   opts bit 0: --identity-option on; bits 1-2 choose its number
 *               (2100, 256 = oneM2M-FR itself, 11 = Uri-Path, 65000)
 *   opts bit 3: the device's request was NON (else CON)
 *   hi lo: the device message's length (big-endian); the rest is the
 *          CSE's message */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <coap3/coap.h>

#include "coap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "fuzz_coap: check failed: %s (line %d)\n", #c,           \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static const char k_identity[] = "//m2m.example.com/cse-in/Cae-fuzz";

typedef struct opt_list {
  uint16_t num[512];
  const uint8_t *val[512];
  size_t len[512];
  size_t n;
  int truncated;
} opt_list;

static void list_options(const coap_pdu_t *pdu, opt_list *l) {
  coap_opt_iterator_t oi;
  coap_opt_t *opt;
  l->n = 0;
  l->truncated = 0;
  coap_option_iterator_init(pdu, &oi, COAP_OPT_ALL);
  while ((opt = coap_option_next(&oi)) != NULL) {
    if (l->n == 512) {
      l->truncated = 1;
      return;
    }
    l->num[l->n] = oi.number;
    l->val[l->n] = coap_opt_value(opt);
    l->len[l->n] = coap_opt_length(opt);
    l->n++;
  }
}

static void same_payload(const coap_pdu_t *a, const coap_pdu_t *b) {
  size_t la = 0, lb = 0;
  const uint8_t *da = NULL, *db = NULL;
  int ha = coap_get_data(a, &la, &da), hb = coap_get_data(b, &lb, &db);
  CHECK(ha == hb && la == lb);
  CHECK(la == 0 || memcmp(da, db, la) == 0);
}

/* `b` has a's options, except that every option numbered `skip` (when not
 * 0) is gone from a and present once in b with `id`. */
static void same_options(const coap_pdu_t *a, const coap_pdu_t *b,
                         uint16_t skip, const char *id) {
  static opt_list la, lb;
  list_options(a, &la);
  list_options(b, &lb);
  if (la.truncated || lb.truncated)
    return;
  size_t i = 0, j = 0, ids = 0;
  for (;;) {
    while (skip != 0 && i < la.n && la.num[i] == skip)
      i++;
    while (skip != 0 && j < lb.n && lb.num[j] == skip) {
      CHECK(lb.len[j] == strlen(id) && memcmp(lb.val[j], id, lb.len[j]) == 0);
      ids++;
      j++;
    }
    if (i == la.n || j == lb.n)
      break;
    CHECK(la.num[i] == lb.num[j] && la.len[i] == lb.len[j]);
    CHECK(la.len[i] == 0 || memcmp(la.val[i], lb.val[j], la.len[i]) == 0);
    i++;
    j++;
  }
  CHECK(i == la.n && j == lb.n);
  CHECK(skip == 0 || ids == 1);
}

static void check_view(const coap_pdu_t *pdu) {
  gw_coap_request_info v;
  gw_coap_view(pdu, &v);
  static opt_list l;
  list_options(pdu, &l);
  if (l.truncated)
    return;
  int froms = 0, have_rqi = 0, have_ty = 0;
  for (size_t i = 0; i < l.n; i++) {
    if (l.num[i] == 256) {
      if (froms++ == 0)
        CHECK(v.from == l.val[i] && v.from_len == l.len[i]);
    } else if (l.num[i] == 257 && !have_rqi) {
      have_rqi = 1;
      CHECK(v.rqi == l.val[i] && v.rqi_len == l.len[i]);
    } else if (l.num[i] == 267 && !have_ty) {
      have_ty = 1;
      CHECK(v.ty >= 0);
    }
  }
  CHECK(v.from_count == froms);
  CHECK(have_rqi == (v.rqi != NULL));
  CHECK(have_ty == (v.ty >= 0));
}

static uint8_t g_out[70000];

static void device_side(const uint8_t *msg, size_t len, uint16_t idopt,
                        int non) {
  coap_pdu_t *pdu = gw_coap_parse(msg, len, 16385);
  if (pdu == NULL)
    return;
  check_view(pdu);
  unsigned code = coap_pdu_get_code(pdu);
  if (code == 0 || (code >> 5) != 0) {
    /* Not a request: the gateway forwards none of these. */
    coap_delete_pdu(pdu);
    return;
  }
  gw_coap_request_info v;
  gw_coap_view(pdu, &v);

  /* Toward the CSE. */
  size_t n =
      gw_coap_encode_forward(pdu, idopt, k_identity, 0x1234,
                             0x0102030405060708ull, g_out, sizeof(g_out));
  CHECK(n > 0); /* 70000 bytes fit any 16 KiB request and the identity */
  coap_pdu_t *fwd = gw_coap_parse(g_out, n, n);
  CHECK(fwd != NULL);
  CHECK(coap_pdu_get_code(fwd) == coap_pdu_get_code(pdu));
  CHECK(coap_pdu_get_type(fwd) == COAP_MESSAGE_CON);
  CHECK(coap_pdu_get_mid(fwd) == 0x1234);
  CHECK(coap_pdu_get_token(fwd).length == 8);
  same_options(pdu, fwd, idopt, k_identity);
  same_payload(pdu, fwd);
  coap_delete_pdu(fwd);

  /* The gateway's own answer: a refusal with the RQI copied. */
  coap_bin_const_t tok = coap_pdu_get_token(pdu);
  n = gw_coap_encode_answer(g_out, sizeof(g_out), non ? 1 : 2, (4 << 5) | 3,
                            (uint16_t)coap_pdu_get_mid(pdu), tok.s, tok.length,
                            v.rqi, v.rqi_len, 4106, "originator \"refused\"\n");
  CHECK(n > 0);
  coap_pdu_t *ans = gw_coap_parse(g_out, n, n);
  CHECK(ans != NULL);
  coap_bin_const_t atok = coap_pdu_get_token(ans);
  CHECK(atok.length == tok.length &&
        (tok.length == 0 || memcmp(atok.s, tok.s, tok.length) == 0));
  gw_coap_request_info av;
  gw_coap_view(ans, &av);
  CHECK(av.rqi_len == v.rqi_len &&
        (v.rqi_len == 0 || memcmp(av.rqi, v.rqi, v.rqi_len) == 0));
  coap_delete_pdu(ans);
  coap_delete_pdu(pdu);
}

static void cse_side(const uint8_t *msg, size_t len, int non) {
  coap_pdu_t *pdu = gw_coap_parse(msg, len, 65536);
  if (pdu == NULL)
    return;
  if ((coap_pdu_get_code(pdu) >> 5) < 2) {
    /* Only responses are relayed; empty ACKs and RSTs are consumed. */
    coap_delete_pdu(pdu);
    return;
  }
  static const uint8_t dev_tok[4] = {9, 8, 7, 6};
  int rsc;
  const uint8_t *body;
  size_t body_len;
  size_t n = gw_coap_encode_relay(pdu, non ? 1 : 2, 0x4321, dev_tok, 4, g_out,
                                  sizeof(g_out), &rsc, &body, &body_len);
  CHECK(n > 0);
  coap_pdu_t *rel = gw_coap_parse(g_out, n, n);
  CHECK(rel != NULL);
  CHECK(coap_pdu_get_code(rel) == coap_pdu_get_code(pdu));
  CHECK(coap_pdu_get_mid(rel) == 0x4321);
  coap_bin_const_t t = coap_pdu_get_token(rel);
  CHECK(t.length == 4 && memcmp(t.s, dev_tok, 4) == 0);
  same_options(pdu, rel, 0, NULL);
  same_payload(pdu, rel);
  CHECK(rsc >= -1);
  coap_delete_pdu(rel);
  coap_delete_pdu(pdu);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint16_t numbers[4] = {2100, 256, 11, 65000};
  if (size < 3)
    return 0;
  uint8_t opts = data[0];
  size_t dlen = (size_t)data[1] << 8 | data[2];
  data += 3;
  size -= 3;
  if (dlen > size)
    dlen = size;
  uint16_t idopt = (opts & 1) ? numbers[(opts >> 1) & 3] : 0;
  int non = (opts >> 3) & 1;
  device_side(data, dlen, idopt, non);
  cse_side(data + dlen, size - dlen, non);
  return 0;
}
