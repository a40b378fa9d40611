/* The ClientHello parser (src/hello.c) that picks a responder's engine
 * before any engine sees the peer's bytes, and the engine choice.
 *
 * Input: an option byte, then the bytes as they came from the peer.
 * Option bit 0: DTLS (the rest is one datagram), else a TLS stream; bits
 * 1-7: the record size (1 + value) for re-recording an accepted TLS hello.
 *
 * Invariants checked, beyond the sanitizers' (each parse reads a heap
 * block of exactly its length, so a read past len is an overflow):
 *  - the result is OK, MORE or NOT, and DTLS never gives MORE;
 *  - OK: 1..256 suites, 0 < consumed <= len, sni NUL-terminated and free
 *    of NUL inside, TLS has no cookie and message_seq 0, the version is a
 *    1.2-or-newer one of the transport; otherwise *out is all zero;
 *  - parsing is deterministic, and ignores what follows `consumed`: the
 *    first `consumed` bytes alone, or with other bytes after them, give
 *    the same result;
 *  - DTLS: the datagram cut short of `consumed` is NOT;
 *  - TLS: no prefix of an input that is OK or MORE gives NOT, and every
 *    prefix shorter than `consumed` of an OK one gives MORE;
 *  - TLS: the same ClientHello cut into records of another size parses to
 *    the same fields, and a hello in one record (the parser's flat path)
 *    gets the same answer, NOT included, cut into smaller records;
 *  - the engine choice agrees with m2mpsk_hello_offers();
 *  - the ClientKeyExchange scanners (m2mpsk_cke_tls_record() on the input
 *    as one record's payload, and on it cut in two at `record` with the
 *    state carried over; m2mpsk_cke_dtls() on it as a datagram) answer
 *    FOUND, MORE or NOT, deterministically, and a FOUND identity lies
 *    inside the input. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BUG(...)                                                               \
  do {                                                                         \
    fprintf(stderr, "fuzz_hello: " __VA_ARGS__);                               \
    fprintf(stderr, "\n");                                                     \
    __builtin_trap();                                                          \
  } while (0)

static int parse_copy(const uint8_t *p, size_t len, int dtls, m2mpsk_hello *h) {
  uint8_t *copy = malloc(len ? len : 1);
  if (copy == NULL)
    BUG("malloc");
  if (len)
    memcpy(copy, p, len);
  /* Not zero: a result other than OK must clear it. */
  memset(h, 0xa5, sizeof(*h));
  int rc = m2mpsk_hello_parse(copy, len, dtls, h);
  free(copy);
  return rc;
}

/* The scanners, each on a heap copy of exactly its input. */
static void check_cke(const uint8_t *in, size_t len, size_t cut) {
  uint8_t *copy = malloc(len ? len : 1);
  if (copy == NULL)
    BUG("malloc");
  if (len)
    memcpy(copy, in, len);
  for (int dtls = 0; dtls < 2; dtls++) {
    const uint8_t *id = NULL, *id2 = NULL;
    size_t id_len = 0, id2_len = 0;
    uint32_t left = 0, left2 = 0;
    int rc = dtls ? m2mpsk_cke_dtls(copy, len, &id, &id_len)
                  : m2mpsk_cke_tls_record(copy, len, &left, &id, &id_len);
    int rc2 = dtls ? m2mpsk_cke_dtls(copy, len, &id2, &id2_len)
                   : m2mpsk_cke_tls_record(copy, len, &left2, &id2, &id2_len);
    if (rc != M2MPSK_CKE_FOUND && rc != M2MPSK_CKE_MORE && rc != M2MPSK_CKE_NOT)
      BUG("cke result %d", rc);
    if (rc != rc2 || id != id2 || id_len != id2_len || left != left2)
      BUG("cke not deterministic");
    if (rc == M2MPSK_CKE_FOUND &&
        (id < copy || id_len > len || id - copy > (ptrdiff_t)(len - id_len)))
      BUG("identity outside the input");
  }
  /* Two records: whatever the first leaves in hs_left is honoured. */
  if (cut < len) {
    uint32_t left = 0;
    const uint8_t *id = NULL;
    size_t id_len = 0;
    int rc = m2mpsk_cke_tls_record(copy, cut, &left, &id, &id_len);
    if (rc == M2MPSK_CKE_MORE) {
      rc = m2mpsk_cke_tls_record(copy + cut, len - cut, &left, &id, &id_len);
      if (rc == M2MPSK_CKE_FOUND &&
          (id < copy + cut || id_len > len - cut ||
           id - (copy + cut) > (ptrdiff_t)(len - cut - id_len)))
        BUG("identity outside the second record");
    } else if (rc == M2MPSK_CKE_FOUND && (id < copy || id_len > cut))
      BUG("identity outside the first record");
  }
  free(copy);
}

static int all_zero(const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != 0)
      return 0;
  return 1;
}

static void check_ok(const m2mpsk_hello *h, size_t len, int dtls) {
  if (h->n_suites == 0 || h->n_suites > M2MPSK_HELLO_MAX_SUITES)
    BUG("OK with %zu suites", h->n_suites);
  if (h->consumed == 0 || h->consumed > len)
    BUG("consumed %zu of %zu", h->consumed, len);
  const char *nul = memchr(h->sni, '\0', sizeof(h->sni));
  if (nul == NULL)
    BUG("sni not terminated");
  if (dtls ? (h->version >> 8 != 0xfe || (h->version & 0xff) > 0xfd)
           : (h->version >> 8 != 0x03 || (h->version & 0xff) < 0x03))
    BUG("version %04x", h->version);
  if (!dtls && (h->has_cookie || h->message_seq != 0))
    BUG("TLS with DTLS fields");
  if (h->has_cookie != 0 && h->has_cookie != 1)
    BUG("has_cookie %d", h->has_cookie);
}

/* The handshake bytes of an accepted TLS hello, its records removed. */
static size_t tls_payload(const uint8_t *p, size_t n, uint8_t *out) {
  size_t k = 0;
  for (size_t at = 0; at + 5 <= n;) {
    size_t rl = (size_t)p[at + 3] << 8 | p[at + 4];
    memcpy(out + k, p + at + 5, rl);
    k += rl;
    at += 5 + rl;
  }
  return k;
}

static size_t tls_records(const uint8_t *msg, size_t n, size_t size,
                          uint8_t *out) {
  size_t k = 0;
  for (size_t at = 0; at < n;) {
    size_t c = n - at < size ? n - at : size;
    out[k++] = 22;
    out[k++] = 3;
    out[k++] = 3;
    out[k++] = (uint8_t)(c >> 8);
    out[k++] = (uint8_t)c;
    memcpy(out + k, msg + at, c);
    k += c;
    at += c;
  }
  return k;
}

/* Suites past n_suites are not part of the result. */
static int same_fields(const m2mpsk_hello *a, const m2mpsk_hello *b) {
  return a->n_suites == b->n_suites &&
         memcmp(a->suites, b->suites, a->n_suites * sizeof(a->suites[0])) ==
             0 &&
         a->version == b->version && a->has_cookie == b->has_cookie &&
         a->message_seq == b->message_seq && strcmp(a->sni, b->sni) == 0;
}

/* The two engines' suites (src/tls/boringssl.c, src/tls/openssl.c). */
static const uint16_t k_bssl[] = {0x008C, 0x008D, 0xC035, 0xC036, 0xCCAC};
static const uint16_t k_ossl[] = {
    0x00AE, 0xC0A8, 0x008C, 0x008D, 0x00AF, 0x00A8, 0x00A9, 0xC0A4, 0xC0A5,
    0xC0A9, 0x0090, 0x0091, 0x00B2, 0x00B3, 0x00AA, 0x00AB, 0xC0A6, 0xC0A7,
    0xC0AA, 0xC0AB, 0xC035, 0xC036, 0xC037, 0xC038, 0xCCAC};

static int shares(const m2mpsk_hello *h, const m2mpsk_engine_suites *e) {
  for (size_t i = 0; i < e->n; i++)
    if (m2mpsk_hello_offers(h, e->ids[i]))
      return 1;
  return 0;
}

static void check_choice(const m2mpsk_hello *h) {
  m2mpsk_engine_suites e[2] = {{k_bssl, sizeof(k_bssl) / 2},
                               {k_ossl, sizeof(k_ossl) / 2}};
  int c = m2mpsk_hello_choose(h, e, 2);
  int want = shares(h, &e[0]) ? 0 : shares(h, &e[1]) ? 1 : -1;
  if (c != want)
    BUG("choose %d, want %d", c, want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  int dtls = data[0] & 1;
  size_t record = 1 + (data[0] >> 1);
  const uint8_t *in = data + 1;
  size_t len = size - 1;

  m2mpsk_hello h, again;
  int rc = parse_copy(in, len, dtls, &h);
  if (rc != M2MPSK_HELLO_OK && rc != M2MPSK_HELLO_MORE &&
      rc != M2MPSK_HELLO_NOT)
    BUG("result %d", rc);
  if (dtls && rc == M2MPSK_HELLO_MORE)
    BUG("DTLS gave MORE");
  if (rc != M2MPSK_HELLO_OK && !all_zero(&h, sizeof(h)))
    BUG("result %d left fields set", rc);
  if (parse_copy(in, len, dtls, &again) != rc || !same_fields(&h, &again) ||
      h.consumed != again.consumed)
    BUG("not deterministic");
  check_choice(&h);
  if (rc == M2MPSK_HELLO_OK)
    check_ok(&h, len, dtls);
  check_cke(in, len, record);

  if (rc == M2MPSK_HELLO_OK) {
    /* What follows `consumed` is not looked at. */
    if (parse_copy(in, h.consumed, dtls, &again) != M2MPSK_HELLO_OK ||
        !same_fields(&h, &again) || h.consumed != again.consumed)
      BUG("the first %zu bytes alone differ", h.consumed);
    static uint8_t more[8192 + 64];
    memcpy(more, in, h.consumed);
    memset(more + h.consumed, 0xee, 16);
    if (parse_copy(more, h.consumed + 16, dtls, &again) != M2MPSK_HELLO_OK ||
        !same_fields(&h, &again) || h.consumed != again.consumed)
      BUG("bytes after the hello changed it");
  }

  if (dtls && rc == M2MPSK_HELLO_OK &&
      parse_copy(in, h.consumed - 1, 1, &again) != M2MPSK_HELLO_NOT)
    BUG("a datagram cut short was accepted");

  if (!dtls && rc != M2MPSK_HELLO_NOT) {
    /* Every prefix when short, else a sample: 64 spread out and the last
     * 8 (bounded work per input). */
    size_t step = len <= 256 ? 1 : len / 64;
    for (size_t k = 0; k < len; k += step) {
      int p = parse_copy(in, k, 0, &again);
      if (p == M2MPSK_HELLO_NOT)
        BUG("prefix %zu of a valid %zu gave NOT", k, len);
      if (rc == M2MPSK_HELLO_OK && k < h.consumed && p != M2MPSK_HELLO_MORE)
        BUG("prefix %zu before consumed %zu gave %d", k, h.consumed, p);
    }
    for (size_t k = len > 8 ? len - 8 : 0; k < len; k++)
      if (parse_copy(in, k, 0, &again) == M2MPSK_HELLO_NOT)
        BUG("prefix %zu of a valid %zu gave NOT", k, len);
  }

  /* The parser's flat path (a hello all in its first record) against its
   * general one (the same record cut smaller): the same answer, NOT
   * included. */
  if (!dtls && len >= 9 && in[0] == 22 && in[1] == 3) {
    size_t rl = (size_t)in[3] << 8 | in[4];
    size_t hl = (size_t)in[6] << 16 | (size_t)in[7] << 8 | in[8];
    if (rl >= 4 && rl <= 16384 && rl <= len - 5 && hl + 4 == rl) {
      static uint8_t rec[8192 * 6 + 64];
      m2mpsk_hello flat, split;
      int a = parse_copy(in, 5 + rl, 0, &flat);
      size_t k = tls_records(in + 5, rl, record, rec);
      int b = parse_copy(rec, k, 0, &split);
      if (a != b || (a == M2MPSK_HELLO_OK && !same_fields(&flat, &split)))
        BUG("flat %d, in records of %zu %d", a, record, b);
    }
  }

  if (!dtls && rc == M2MPSK_HELLO_OK) {
    static uint8_t msg[8192], rec[8192 * 6 + 64];
    size_t n = tls_payload(in, h.consumed, msg);
    size_t k = tls_records(msg, n, record, rec);
    if (parse_copy(rec, k, 0, &again) != M2MPSK_HELLO_OK ||
        !same_fields(&h, &again) || again.consumed != k)
      BUG("the same hello in records of %zu differs", record);
  }
  return 0;
}
