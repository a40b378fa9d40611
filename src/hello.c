/* The peer's ClientHello, read before any engine exists, and the engine
 * choice it drives (hello.h). Wire formats: RFC 5246 §6.2 and §7.4.1.2
 * (TLS 1.2), RFC 6347 §4.1 and §4.2.2 (DTLS 1.2), RFC 6066 §3
 * (server_name). */
#include "hello.h"

#include <limits.h>
#include <string.h>

#define GOT M2MPSK_HELLO_OK
#define MORE M2MPSK_HELLO_MORE
#define NOT M2MPSK_HELLO_NOT

#define TRY(x)                                                                 \
  do {                                                                         \
    int rc_ = (x);                                                             \
    if (rc_ != GOT)                                                            \
      return rc_;                                                              \
  } while (0)

/* RFC 5246 §6.2.1 and RFC 6347 §4.1: a plaintext record's payload. */
#define RECORD_MAX 16384
#define CONTENT_HANDSHAKE 22
#define HANDSHAKE_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0
#define NAME_TYPE_HOST_NAME 0
#define TLS_HEADER 5
#define DTLS_HEADER 13
#define DTLS_HANDSHAKE_HEADER 12

/* Reads the handshake message as one byte string, wherever the record
 * boundaries fall, without copying it first: the TLS message may come in
 * records of one byte each. Two budgets are kept, so that a length field
 * that overruns its container is refused (NOT) as soon as it is read, and
 * only a shortage of bytes that may still come gives MORE.
 *
 * The usual hello is "flat": all there, in one record (TLS) or datagram
 * (DTLS). The parser is written once and compiled twice (the `flat`
 * argument is a constant wherever it is used), so that the flat case pays
 * one comparison per field: the parse has a budget of 1% of a BoringSSL
 * PSK handshake. */
typedef struct reader {
  const uint8_t *data;
  size_t len;
  size_t pos;      /* next unread byte of data */
  size_t rec_left; /* payload the current record declares, not yet read */
  size_t msg_left; /* bytes the enclosing field declares, not yet read */
} reader;

#define INLINE inline __attribute__((always_inline))

/* Steps over the next record header (TLS, not flat). */
static int next_record(reader *r) {
  const uint8_t *h = r->data + r->pos;
  size_t have = r->len - r->pos;
  /* Byte by byte, so that a stream that is no handshake record is refused
   * before its header is complete, not waited for. */
  if (have >= 1 && h[0] != CONTENT_HANDSHAKE)
    return NOT;
  /* Any {03,xx}: RFC 5246 Appendix E.1 lets a client put any such record
   * version on its first flight ({03,00} to {03,03} in practice), and
   * both engines accept any until they have a version. */
  if (have >= 2 && h[1] != 3)
    return NOT;
  if (have >= 4 && h[3] > (RECORD_MAX >> 8))
    return NOT;
  if (have < TLS_HEADER)
    return MORE;
  size_t n = (size_t)h[3] << 8 | h[4];
  /* RFC 5246 §6.2.1: no empty handshake fragments. */
  if (n == 0 || n > RECORD_MAX)
    return NOT;
  r->pos += TLS_HEADER;
  r->rec_left = n;
  return GOT;
}

/* take() across record headers, or when the bytes are not all there. */
static int take_slow(reader *r, uint8_t *dst, size_t n) {
  if (n > r->msg_left)
    return NOT;
  r->msg_left -= n;
  while (n > 0) {
    if (r->rec_left == 0)
      TRY(next_record(r));
    size_t k = r->len - r->pos;
    if (k == 0)
      return MORE;
    if (k > r->rec_left)
      k = r->rec_left;
    if (k > n)
      k = n;
    if (dst != NULL) {
      memcpy(dst, r->data + r->pos, k);
      dst += k;
    }
    r->pos += k;
    r->rec_left -= k;
    n -= k;
  }
  return GOT;
}

/* Reads n bytes of the current field into dst, or skips them (dst NULL).
 * flat: the caller checked that the whole message is in data. */
static INLINE int take(reader *r, uint8_t *dst, size_t n, int flat) {
  if (flat ? n <= r->msg_left
           : n <= r->msg_left && n <= r->rec_left && n <= r->len - r->pos) {
    if (dst != NULL)
      memcpy(dst, r->data + r->pos, n);
    r->pos += n;
    r->rec_left -= flat ? 0 : n;
    r->msg_left -= n;
    return GOT;
  }
  return flat ? NOT : take_slow(r, dst, n);
}

static INLINE int u8(reader *r, size_t *v, int flat) {
  uint8_t b;
  TRY(take(r, &b, 1, flat));
  *v = b;
  return GOT;
}

static INLINE int u16(reader *r, size_t *v, int flat) {
  uint8_t b[2];
  TRY(take(r, b, 2, flat));
  *v = (size_t)b[0] << 8 | b[1];
  return GOT;
}

/* A length-prefixed vector's length, which must fit what is left. */
static INLINE int vec_len(reader *r, size_t prefix, size_t *n, int flat) {
  TRY(prefix == 1 ? u8(r, n, flat) : u16(r, n, flat));
  return *n <= r->msg_left ? GOT : NOT;
}

/* RFC 6066 §3, as both engines read it: a list holding exactly one
 * host_name entry, non-empty, at most 255 bytes, no NUL. `ext_len` bytes
 * of extension data follow. */
static INLINE int parse_server_name(reader *r, size_t ext_len, char *sni,
                                    int flat) {
  size_t after = r->msg_left - ext_len, n;
  r->msg_left = ext_len;
  TRY(vec_len(r, 2, &n, flat));
  if (n != r->msg_left)
    return NOT;
  TRY(u8(r, &n, flat));
  if (n != NAME_TYPE_HOST_NAME)
    return NOT;
  TRY(vec_len(r, 2, &n, flat));
  if (n == 0 || n > 255 || n != r->msg_left)
    return NOT;
  TRY(take(r, (uint8_t *)sni, n, flat));
  if (memchr(sni, '\0', n) != NULL)
    return NOT;
  sni[n] = '\0';
  r->msg_left = after;
  return GOT;
}

/* The ClientHello body (RFC 5246 §7.4.1.2; RFC 6347 §4.2.1 adds the
 * cookie), r->msg_left bytes of it. */
static INLINE int parse_body(reader *r, m2mpsk_hello *out, int dtls, int flat) {
  size_t v, n;
  TRY(u16(r, &v, flat));
  /* Only a 1.2 handshake can follow: the engines offer nothing else. A
   * newer client_version negotiates down to 1.2 (RFC 5246 Appendix E.1);
   * DTLS numbers its versions downwards. */
  if (dtls ? (v >> 8 != 0xfe || (v & 0xff) > 0xfd)
           : (v >> 8 != 0x03 || (v & 0xff) < 0x03))
    return NOT;
  out->version = (uint16_t)v;
  TRY(take(r, NULL, 32, flat)); /* random */
  TRY(vec_len(r, 1, &n, flat));
  if (n > 32)
    return NOT;
  TRY(take(r, NULL, n, flat)); /* session_id */
  if (dtls) {
    TRY(vec_len(r, 1, &n, flat));
    out->has_cookie = n > 0;
    TRY(take(r, NULL, n, flat));
  }
  TRY(vec_len(r, 2, &n, flat));
  if (n == 0 || n % 2 != 0 || n / 2 > M2MPSK_HELLO_MAX_SUITES)
    return NOT;
  /* In one take: a real list is 20 to 60 suites. */
  uint8_t raw[2 * M2MPSK_HELLO_MAX_SUITES];
  TRY(take(r, raw, n, flat));
  for (size_t i = 0; i < n / 2; i++)
    out->suites[i] = (uint16_t)(raw[2 * i] << 8 | raw[2 * i + 1]);
  out->n_suites = n / 2;
  TRY(vec_len(r, 1, &n, flat));
  if (n == 0)
    return NOT;
  uint8_t comp[255];
  TRY(take(r, comp, n, flat));
  /* RFC 5246 §7.4.1.2: the list MUST contain null; both engines check. */
  if (memchr(comp, 0, n) == NULL)
    return NOT;
  if (r->msg_left == 0)
    return GOT; /* no extensions block: allowed */
  TRY(vec_len(r, 2, &n, flat));
  if (n != r->msg_left)
    return NOT;
  int seen_server_name = 0;
  while (r->msg_left > 0) {
    size_t type, len;
    TRY(u16(r, &type, flat));
    TRY(vec_len(r, 2, &len, flat));
    if (type == EXT_SERVER_NAME) {
      /* RFC 5246 §7.4.1.4: no extension twice; here it would leave two
       * names to choose from. */
      if (seen_server_name)
        return NOT;
      seen_server_name = 1;
      TRY(parse_server_name(r, len, out->sni, flat));
    } else {
      TRY(take(r, NULL, len, flat));
    }
  }
  return GOT;
}

/* The two instances; the reader stays in registers. */
static int parse_body_flat(reader *r, m2mpsk_hello *out, int dtls) {
  reader local = *r;
  int rc = dtls ? parse_body(&local, out, 1, 1) : parse_body(&local, out, 0, 1);
  *r = local;
  return rc;
}

static int parse_body_records(reader *r, m2mpsk_hello *out) {
  return parse_body(r, out, 0, 0);
}

static size_t be(const uint8_t *p, size_t n) {
  size_t v = 0;
  for (size_t i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

/* The handshake header (RFC 5246 §7.4): type, then a 24-bit length. */
static int handshake_header(reader *r, int flat) {
  size_t type, hi, lo;
  TRY(u8(r, &type, flat));
  if (type != HANDSHAKE_CLIENT_HELLO)
    return NOT;
  TRY(u8(r, &hi, flat));
  if (hi != 0)
    return NOT;
  TRY(u16(r, &lo, flat));
  if (lo > M2MPSK_HELLO_MAX_BYTES)
    return NOT;
  r->msg_left = lo;
  return GOT;
}

static int parse_tls(const uint8_t *data, size_t len, m2mpsk_hello *out) {
  /* Flat: the first record is all there and holds just the hello. */
  if (len >= TLS_HEADER + 4 && data[0] == CONTENT_HANDSHAKE && data[1] == 3) {
    size_t rl = be(data + 3, 2);
    if (rl <= RECORD_MAX && rl <= len - TLS_HEADER && rl >= 4 &&
        4 + be(data + TLS_HEADER + 1, 3) == rl) {
      reader r = {data, TLS_HEADER + rl, TLS_HEADER, 0, 4};
      TRY(handshake_header(&r, 1));
      TRY(parse_body_flat(&r, out, 0));
      out->consumed = TLS_HEADER + rl;
      return GOT;
    }
  }
  reader r = {data, len, 0, 0, 4};
  TRY(handshake_header(&r, 0));
  TRY(parse_body_records(&r, out));
  /* Nothing may follow the ClientHello in its record: a 1.2 client waits
   * for the server's flight. */
  if (r.rec_left != 0)
    return NOT;
  out->consumed = r.pos;
  return GOT;
}

static int parse_dtls(const uint8_t *data, size_t len, m2mpsk_hello *out) {
  if (len < DTLS_HEADER + DTLS_HANDSHAKE_HEADER)
    return NOT;
  /* Record (RFC 6347 §4.1): type, version, epoch, sequence_number(48),
   * length. Any {fe,xx} version, as both engines accept before they have
   * one: clients that can fall back put DTLS 1.0's {fe,ff} on their first
   * hello. */
  if (data[0] != CONTENT_HANDSHAKE || data[1] != 0xfe || be(data + 3, 2) != 0)
    return NOT;
  size_t rl = be(data + 11, 2);
  if (rl > len - DTLS_HEADER || rl > RECORD_MAX)
    return NOT;
  /* Handshake header (§4.2.2): type, length(24), message_seq,
   * fragment_offset(24), fragment_length(24). */
  const uint8_t *m = data + DTLS_HEADER;
  if (rl < DTLS_HANDSHAKE_HEADER || m[0] != HANDSHAKE_CLIENT_HELLO)
    return NOT;
  size_t length = be(m + 1, 3);
  if (length > M2MPSK_HELLO_MAX_BYTES || be(m + 6, 3) != 0 ||
      be(m + 9, 3) != length || DTLS_HANDSHAKE_HEADER + length != rl)
    return NOT;
  size_t body = DTLS_HEADER + DTLS_HANDSHAKE_HEADER;
  reader r = {data, body + length, body, 0, length};
  /* Flat: the bounds above leave no byte to wait for. */
  TRY(parse_body_flat(&r, out, 1));
  out->message_seq = (uint16_t)be(m + 4, 2);
  out->consumed = DTLS_HEADER + rl;
  return GOT;
}

int m2mpsk_hello_parse(const uint8_t *data, size_t len, int dtls,
                       m2mpsk_hello *out) {
  if (out == NULL)
    return NOT;
  /* Not the whole struct: suites past n_suites are never read. */
  out->n_suites = 0;
  out->version = 0;
  out->has_cookie = 0;
  out->message_seq = 0;
  out->sni[0] = '\0';
  out->consumed = 0;
  int rc;
  if (data == NULL && len > 0)
    rc = NOT;
  else if (len == 0)
    rc = dtls ? NOT : MORE;
  else
    rc = dtls ? parse_dtls(data, len, out) : parse_tls(data, len, out);
  if (rc != GOT)
    memset(out, 0, sizeof(*out));
  return rc;
}

int m2mpsk_hello_offers(const m2mpsk_hello *h, uint16_t suite) {
  if (h == NULL)
    return 0;
  size_t n = h->n_suites < M2MPSK_HELLO_MAX_SUITES ? h->n_suites
                                                   : M2MPSK_HELLO_MAX_SUITES;
  for (size_t i = 0; i < n; i++)
    if (h->suites[i] == suite)
      return 1;
  return 0;
}

int m2mpsk_hello_choose(const m2mpsk_hello *h,
                        const m2mpsk_engine_suites *engines, size_t n_engines) {
  if (h == NULL || engines == NULL)
    return -1;
  for (size_t e = 0; e < n_engines && e <= INT_MAX; e++) {
    if (engines[e].ids == NULL)
      continue;
    for (size_t i = 0; i < engines[e].n; i++)
      if (m2mpsk_hello_offers(h, engines[e].ids[i]))
        return (int)e;
  }
  return -1;
}

/* ---- suite names and ids -------------------------------------------------
 * IANA's TLS Cipher Suites registry (RFC 4279, 4785, 5487, 5489, 6655,
 * 7905): every suite of either engine and of the TS-0003 profile.
 * tests/test_hello.c checks them against `openssl ciphers -stdname -V`. */
static const struct {
  const char *name;
  uint16_t id;
} k_suites[] = {
    {"TLS_PSK_WITH_AES_128_CBC_SHA", 0x008C},
    {"TLS_PSK_WITH_AES_256_CBC_SHA", 0x008D},
    {"TLS_DHE_PSK_WITH_AES_128_CBC_SHA", 0x0090},
    {"TLS_DHE_PSK_WITH_AES_256_CBC_SHA", 0x0091},
    {"TLS_PSK_WITH_AES_128_GCM_SHA256", 0x00A8},
    {"TLS_PSK_WITH_AES_256_GCM_SHA384", 0x00A9},
    {"TLS_DHE_PSK_WITH_AES_128_GCM_SHA256", 0x00AA},
    {"TLS_DHE_PSK_WITH_AES_256_GCM_SHA384", 0x00AB},
    {"TLS_PSK_WITH_AES_128_CBC_SHA256", 0x00AE},
    {"TLS_PSK_WITH_AES_256_CBC_SHA384", 0x00AF},
    {"TLS_DHE_PSK_WITH_AES_128_CBC_SHA256", 0x00B2},
    {"TLS_DHE_PSK_WITH_AES_256_CBC_SHA384", 0x00B3},
    {"TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", 0xC035},
    {"TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA", 0xC036},
    {"TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256", 0xC037},
    {"TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA384", 0xC038},
    {"TLS_PSK_WITH_AES_128_CCM", 0xC0A4},
    {"TLS_PSK_WITH_AES_256_CCM", 0xC0A5},
    {"TLS_DHE_PSK_WITH_AES_128_CCM", 0xC0A6},
    {"TLS_DHE_PSK_WITH_AES_256_CCM", 0xC0A7},
    {"TLS_PSK_WITH_AES_128_CCM_8", 0xC0A8},
    {"TLS_PSK_WITH_AES_256_CCM_8", 0xC0A9},
    {"TLS_PSK_DHE_WITH_AES_128_CCM_8", 0xC0AA},
    {"TLS_PSK_DHE_WITH_AES_256_CCM_8", 0xC0AB},
    {"TLS_PSK_WITH_CHACHA20_POLY1305_SHA256", 0xCCAB},
    {"TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256", 0xCCAC},
};

#define N_SUITES (sizeof(k_suites) / sizeof(k_suites[0]))

static int lookup(const char *name, size_t len, uint16_t *id) {
  for (size_t i = 0; i < N_SUITES; i++)
    if (strlen(k_suites[i].name) == len &&
        memcmp(k_suites[i].name, name, len) == 0) {
      *id = k_suites[i].id;
      return M2MPSK_OK;
    }
  return M2MPSK_E_SUITE;
}

int m2mpsk_suite_id(const char *iana_name, uint16_t *id) {
  if (iana_name == NULL || id == NULL)
    return M2MPSK_E_INVALID;
  return lookup(iana_name, strlen(iana_name), id);
}

const char *m2mpsk_suite_iana(uint16_t id) {
  for (size_t i = 0; i < N_SUITES; i++)
    if (k_suites[i].id == id)
      return k_suites[i].name;
  return NULL;
}

int m2mpsk_suite_ids(const char *list, uint16_t *ids, size_t cap, size_t *n) {
  if (n != NULL)
    *n = 0;
  if (list == NULL || n == NULL || (ids == NULL && cap > 0) || *list == '\0')
    return M2MPSK_E_INVALID;
  size_t count = 0;
  for (const char *p = list;;) {
    const char *end = strchr(p, ':');
    size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
    if (len == 0)
      return M2MPSK_E_INVALID;
    uint16_t id;
    if (lookup(p, len, &id) != M2MPSK_OK)
      return M2MPSK_E_SUITE;
    if (count == cap)
      return M2MPSK_E_BUFFER;
    ids[count++] = id;
    if (end == NULL)
      break;
    p = end + 1;
  }
  *n = count;
  return M2MPSK_OK;
}

/* ---- the ClientKeyExchange's psk_identity ------------------------------- */

static uint32_t be24(const uint8_t *p) {
  return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

/* The identity at the start of a ClientKeyExchange body of `n` bytes. */
static int cke_identity(const uint8_t *body, size_t n, const uint8_t **id,
                        size_t *id_len) {
  if (n < 2)
    return M2MPSK_CKE_NOT;
  size_t len = (size_t)body[0] << 8 | body[1];
  if (n - 2 < len)
    return M2MPSK_CKE_NOT;
  *id = body + 2;
  *id_len = len;
  return M2MPSK_CKE_FOUND;
}

int m2mpsk_cke_tls_record(const uint8_t *body, size_t n, uint32_t *hs_left,
                          const uint8_t **id, size_t *id_len) {
  size_t p = *hs_left < n ? *hs_left : n;
  *hs_left -= (uint32_t)p;
  while (p < n) {
    if (n - p < 4)
      return M2MPSK_CKE_NOT; /* a header split over records */
    uint8_t type = body[p];
    size_t len = be24(body + p + 1);
    p += 4;
    if (type == 16) /* client_key_exchange: whole in this record, or not */
      return cke_identity(body + p, len < n - p ? len : n - p, id, id_len);
    if (len > n - p) {
      *hs_left = (uint32_t)(len - (n - p));
      return M2MPSK_CKE_MORE;
    }
    p += len;
  }
  return M2MPSK_CKE_MORE;
}

int m2mpsk_cke_dtls(const uint8_t *d, size_t n, const uint8_t **id,
                    size_t *id_len) {
  size_t p = 0;
  while (n - p >= 13) {
    const uint8_t *h = d + p;
    size_t rlen = (size_t)h[11] << 8 | h[12];
    if (n - p - 13 < rlen)
      return M2MPSK_CKE_MORE;
    if (h[0] == 22 && h[3] == 0 && h[4] == 0) {
      const uint8_t *body = h + 13;
      size_t q = 0;
      while (rlen - q >= 12) {
        uint32_t off = be24(body + q + 6), flen = be24(body + q + 9);
        if (rlen - q - 12 < flen)
          break;
        if (body[q] == 16)
          return off != 0 ? M2MPSK_CKE_NOT
                          : cke_identity(body + q + 12, flen, id, id_len);
        q += 12 + flen;
      }
    }
    p += 13 + rlen;
  }
  return M2MPSK_CKE_MORE;
}
