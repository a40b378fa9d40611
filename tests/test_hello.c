/* The ClientHello parser and the engine choice (src/hello.h).
 *
 * The hellos are real: captured from openssl s_client, gnutls-cli and
 * m2mpsk's own initiator with each backend (tests/data/hello/README.md
 * says how), and the initiator of the backend this executable links is
 * captured live. Malformed ones are built field by field, so that each
 * length field is broken alone, next to an unbroken control. */
#include <criterion/criterion.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hello.h"
#include "link.h"

#define OK M2MPSK_HELLO_OK
#define MORE M2MPSK_HELLO_MORE
#define NOT M2MPSK_HELLO_NOT
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- fixtures -------------------------------------------------------------
 */

typedef struct bytes {
  uint8_t b[40000];
  size_t n;
} bytes;

static void load(const char *name, bytes *out) {
  char here[4096], path[4200];
  snprintf(here, sizeof(here), "%s", __FILE__);
  snprintf(path, sizeof(path), "%s/data/hello/%s", dirname(here), name);
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "fixture %s", path);
  out->n = fread(out->b, 1, sizeof(out->b), f);
  fclose(f);
  cr_assert_gt(out->n, 0, "%s is empty", path);
}

/* Parses exactly len bytes from a heap block of that size, so that a read
 * past the end is a heap overflow under the sanitizers. */
static int parse_exact(const uint8_t *p, size_t len, int dtls,
                       m2mpsk_hello *h) {
  uint8_t *copy = malloc(len ? len : 1);
  cr_assert_not_null(copy);
  memcpy(copy, p, len);
  int rc = m2mpsk_hello_parse(copy, len, dtls, h);
  free(copy);
  return rc;
}

#define SNI "m2m.example.com"

typedef struct fixture {
  const char *file;
  int dtls;
  uint16_t version;
  int has_cookie;
  uint16_t message_seq;
  const char *sni;
  size_t n_suites;
  uint16_t first[11]; /* the first min(n_suites, 11) suites */
  uint16_t last;
} fixture;

/* Expected values read off the captures with an independent decoder, and
 * matching each client's command line (README.md): the suites asked for,
 * plus OpenSSL's renegotiation SCSV 0x00FF. */
static const fixture k_fixtures[] = {
    {"openssl_tls_cbc256.bin",
     0,
     0x0303,
     0,
     0,
     "",
     2,
     {0x00AE, 0x00FF},
     0x00FF},
    {"openssl_tls_psk_sni.bin",
     0,
     0x0303,
     0,
     0,
     SNI,
     61,
     {0x00AD, 0x00AB, 0xCCAE, 0xCCAD, 0xCCAC, 0xC0AB, 0xC0A7, 0xC06F, 0xC06D,
      0x00A9, 0xCCAB},
     0x00FF},
    /* A TLS 1.3-capable hello (default settings): client_version 0x0303. */
    {"openssl_tls_default.bin",
     0,
     0x0303,
     0,
     0,
     SNI,
     57,
     {0x1302, 0x1303, 0x1301, 0xC02C, 0xC030, 0x009F, 0xCCA9, 0xCCA8, 0xCCAA,
      0xC02B, 0xC02F},
     0x00FF},
    {"openssl_dtls_ccm8.bin", 1, 0xfefd, 0, 0, "", 2, {0xC0A8, 0x00FF}, 0x00FF},
    {"openssl_dtls_psk_sni.bin",
     1,
     0xfefd,
     0,
     0,
     SNI,
     49,
     {0x00AD, 0x00AB, 0xCCAE, 0xCCAD, 0xCCAC, 0xC0AB, 0xC0A7, 0xC06F, 0xC06D,
      0x00A9, 0xCCAB},
     0x00FF},
    /* The first and second hello of one exchange with a server that sends
     * a HelloVerifyRequest (openssl s_server -listen). */
    {"openssl_dtls_hello1.bin",
     1,
     0xfefd,
     0,
     0,
     SNI,
     3,
     {0xC0A8, 0x00AE, 0x00FF},
     0x00FF},
    {"openssl_dtls_hello2_cookie.bin",
     1,
     0xfefd,
     1,
     1,
     SNI,
     3,
     {0xC0A8, 0x00AE, 0x00FF},
     0x00FF},
    {"gnutls_tls_cbc256.bin", 0, 0x0303, 0, 0, "", 1, {0x00AE}, 0x00AE},
    {"gnutls_tls_psk_sni.bin",
     0,
     0x0303,
     0,
     0,
     SNI,
     24,
     {0x00A9, 0xCCAB, 0xC0A5, 0x008D, 0x00A8, 0xC0A4, 0x008C, 0x00AE, 0xC0A8,
      0xC0A9, 0xCCAC},
     0xC0AB},
    {"gnutls_dtls_ccm8.bin", 1, 0xfefd, 0, 0, SNI, 1, {0xC0A8}, 0xC0A8},
    {"m2mpsk_boringssl_tls.bin",
     0,
     0x0303,
     0,
     0,
     SNI,
     2,
     {0x008C, 0x008D},
     0x008D},
    {"m2mpsk_boringssl_tls_ecdhe.bin",
     0,
     0x0303,
     0,
     0,
     SNI,
     3,
     {0xCCAC, 0xC035, 0x008D},
     0x008D},
    {"m2mpsk_boringssl_dtls.bin",
     1,
     0xfefd,
     0,
     0,
     SNI,
     2,
     {0x008C, 0x008D},
     0x008D},
    {"m2mpsk_openssl_tls.bin",
     0,
     0x0303,
     0,
     0,
     SNI,
     11,
     {0x00AE, 0x00A8, 0x00A9, 0xC0A4, 0xC0A5, 0x00AF, 0x008C, 0x008D, 0xC0A8,
      0xC0A9, 0x00FF},
     0x00FF},
    {"m2mpsk_openssl_dtls.bin",
     1,
     0xfefd,
     0,
     0,
     SNI,
     11,
     {0xC0A8, 0x00AE, 0x00A8, 0x00A9, 0xC0A4, 0xC0A5, 0xC0A9, 0x00AF, 0x008C,
      0x008D, 0x00FF},
     0x00FF},
};

static void check_fixture(const fixture *f, const m2mpsk_hello *h) {
  cr_assert_eq(h->version, f->version, "%s: version %04x", f->file, h->version);
  cr_assert_eq(h->has_cookie, f->has_cookie, "%s", f->file);
  cr_assert_eq(h->message_seq, f->message_seq, "%s", f->file);
  cr_assert_str_eq(h->sni, f->sni, "%s", f->file);
  cr_assert_eq(h->n_suites, f->n_suites, "%s: %zu suites", f->file,
               h->n_suites);
  size_t k = f->n_suites < 11 ? f->n_suites : 11;
  for (size_t i = 0; i < k; i++)
    cr_assert_eq(h->suites[i], f->first[i], "%s: suite %zu is %04x", f->file, i,
                 h->suites[i]);
  cr_assert_eq(h->suites[h->n_suites - 1], f->last, "%s", f->file);
}

Test(hello, real_hellos_give_their_fields_exactly) {
  for (size_t i = 0; i < COUNT(k_fixtures); i++) {
    const fixture *f = &k_fixtures[i];
    bytes in;
    load(f->file, &in);
    m2mpsk_hello h;
    cr_assert_eq(parse_exact(in.b, in.n, f->dtls, &h), OK, "%s", f->file);
    check_fixture(f, &h);
    /* Each capture is exactly one hello: its records, or its datagram. */
    cr_assert_eq(h.consumed, in.n, "%s: consumed %zu of %zu", f->file,
                 h.consumed, in.n);
    /* Read as the other transport, it is no hello at all. */
    cr_assert_eq(parse_exact(in.b, in.n, !f->dtls, &h), NOT, "%s", f->file);
  }
}

Test(hello, offers_answers_from_the_parsed_list) {
  bytes in;
  load("openssl_dtls_hello2_cookie.bin", &in);
  m2mpsk_hello h;
  cr_assert_eq(m2mpsk_hello_parse(in.b, in.n, 1, &h), OK);
  cr_assert(m2mpsk_hello_offers(&h, 0xC0A8));
  cr_assert(m2mpsk_hello_offers(&h, 0x00AE));
  cr_assert(m2mpsk_hello_offers(&h, 0x00FF));
  cr_assert_not(m2mpsk_hello_offers(&h, 0x008C));
  cr_assert_not(m2mpsk_hello_offers(&h, 0x0000));
  cr_assert_not(m2mpsk_hello_offers(NULL, 0xC0A8));
}

/* Every strict prefix of a TLS hello is a valid beginning (MORE); of a
 * datagram, a truncated datagram (NOT). Never OK, never a crash. */
Test(hello, every_truncation_is_more_for_tls_and_not_for_dtls) {
  for (size_t i = 0; i < COUNT(k_fixtures); i++) {
    const fixture *f = &k_fixtures[i];
    bytes in;
    load(f->file, &in);
    for (size_t k = 0; k < in.n; k++) {
      m2mpsk_hello h;
      memset(&h, 0xa5, sizeof(h));
      int rc = parse_exact(in.b, k, f->dtls, &h);
      cr_assert_eq(rc, f->dtls ? NOT : MORE, "%s: prefix of %zu bytes: %d",
                   f->file, k, rc);
      cr_assert_eq(h.n_suites, 0, "zeroed on %d", rc);
      cr_assert_eq(h.sni[0], '\0');
    }
  }
  m2mpsk_hello h;
  cr_assert_eq(m2mpsk_hello_parse(NULL, 0, 0, &h), MORE);
  cr_assert_eq(m2mpsk_hello_parse(NULL, 0, 1, &h), NOT);
  cr_assert_eq(m2mpsk_hello_parse(NULL, 5, 0, &h), NOT);
  uint8_t one = 22;
  cr_assert_eq(m2mpsk_hello_parse(&one, 1, 0, NULL), NOT);
}

/* What follows the hello is not looked at: the next records of the
 * stream, the next records of the datagram. */
Test(hello, bytes_after_the_hello_are_left_alone) {
  static const uint8_t junk[] = {0x17, 0x03, 0x03, 0xff, 0xff, 0, 0, 0};
  for (size_t i = 0; i < COUNT(k_fixtures); i++) {
    const fixture *f = &k_fixtures[i];
    bytes in;
    load(f->file, &in);
    size_t n = in.n;
    memcpy(in.b + n, junk, sizeof(junk));
    for (size_t extra = 1; extra <= sizeof(junk); extra++) {
      m2mpsk_hello h;
      cr_assert_eq(parse_exact(in.b, n + extra, f->dtls, &h), OK, "%s + %zu",
                   f->file, extra);
      cr_assert_eq(h.consumed, n);
      check_fixture(f, &h);
    }
  }
}

/* ---- TLS records ------------------------------------------------------------
 */

/* The handshake message inside a TLS capture, records stripped. */
static void tls_message(const bytes *in, bytes *msg) {
  msg->n = 0;
  for (size_t p = 0; p < in->n;) {
    size_t rl = (size_t)in->b[p + 3] << 8 | in->b[p + 4];
    memcpy(msg->b + msg->n, in->b + p + 5, rl);
    msg->n += rl;
    p += 5 + rl;
  }
}

/* Cuts `msg` into records of the payload sizes in cuts[] (the last size
 * repeats; 0: one record), cycling the record version through 0x0301..3. */
static void tls_records(const uint8_t *msg, size_t n, const size_t *cuts,
                        size_t ncuts, bytes *out) {
  out->n = 0;
  size_t c = 0;
  for (size_t p = 0; p < n; c++) {
    size_t want =
        cuts == NULL || ncuts == 0 ? n : cuts[c < ncuts ? c : ncuts - 1];
    size_t k = want == 0 || want > n - p ? n - p : want;
    uint8_t *r = out->b + out->n;
    r[0] = 22;
    r[1] = 3;
    r[2] = (uint8_t)(1 + (cuts ? c % 3 : 2));
    r[3] = (uint8_t)(k >> 8);
    r[4] = (uint8_t)k;
    memcpy(r + 5, msg + p, k);
    out->n += 5 + k;
    p += k;
  }
}

Test(hello, a_hello_split_across_records_parses_the_same) {
  static const size_t one[] = {1};
  static const size_t three[] = {2, 40}; /* a cut inside the header */
  static const size_t odd[] = {5, 1, 33, 7};
  struct {
    const size_t *cuts;
    size_t n;
  } k_splits[] = {{one, 1}, {three, 2}, {odd, 4}};
  for (size_t i = 0; i < COUNT(k_fixtures); i++) {
    const fixture *f = &k_fixtures[i];
    if (f->dtls)
      continue;
    bytes in, msg, rec;
    load(f->file, &in);
    tls_message(&in, &msg);
    for (size_t s = 0; s < COUNT(k_splits); s++) {
      tls_records(msg.b, msg.n, k_splits[s].cuts, k_splits[s].n, &rec);
      m2mpsk_hello h;
      cr_assert_eq(parse_exact(rec.b, rec.n, 0, &h), OK, "%s split %zu",
                   f->file, s);
      check_fixture(f, &h);
      cr_assert_eq(h.consumed, rec.n);
      /* A record of the next flight right behind: not counted. */
      rec.b[rec.n] = 20;
      cr_assert_eq(parse_exact(rec.b, rec.n + 1, 0, &h), OK);
      cr_assert_eq(h.consumed, rec.n);
    }
    /* In 1-byte records, every prefix still waits for more. */
    tls_records(msg.b, msg.n, one, 1, &rec);
    for (size_t k = 0; k < rec.n; k++) {
      m2mpsk_hello h;
      cr_assert_eq(parse_exact(rec.b, k, 0, &h), MORE, "%s: %zu of %zu",
                   f->file, k, rec.n);
    }
  }
}

/* The 3-record case of the brief, with its consumed byte count exact. */
Test(hello, three_records_consumed_counts_their_headers) {
  bytes in, msg, rec;
  load("openssl_tls_cbc256.bin", &in);
  tls_message(&in, &msg);
  cr_assert_eq(msg.n, in.n - 5);
  size_t cuts[] = {1, 50, 0};
  tls_records(msg.b, msg.n, cuts, 3, &rec);
  cr_assert_eq(rec.n, msg.n + 15);
  m2mpsk_hello h;
  cr_assert_eq(parse_exact(rec.b, rec.n, 0, &h), OK);
  cr_assert_eq(h.consumed, msg.n + 15);
  cr_assert_eq(h.n_suites, 2);
  cr_assert_eq(h.suites[0], 0x00AE);
  /* Cut short inside the second record's header or payload: MORE. */
  cr_assert_eq(parse_exact(rec.b, 5 + 1 + 3, 0, &h), MORE);
  cr_assert_eq(parse_exact(rec.b, 5 + 1 + 5 + 20, 0, &h), MORE);
}

Test(hello, record_layer_violations_are_not) {
  bytes in, msg, rec;
  load("openssl_tls_cbc256.bin", &in);
  tls_message(&in, &msg);
  m2mpsk_hello h;
  struct {
    size_t at;
    uint8_t value;
    const char *what;
  } k_bad[] = {
      {0, 23, "application data"},        {0, 21, "alert"},
      {0, 0x80, "an SSLv2-format hello"}, {1, 2, "record major version 2"},
      {1, 4, "record major version 4"},
  };
  for (size_t i = 0; i < COUNT(k_bad); i++) {
    memcpy(rec.b, in.b, in.n);
    rec.b[k_bad[i].at] = k_bad[i].value;
    /* Refused as soon as the byte is there, not after the record. */
    cr_assert_eq(parse_exact(rec.b, k_bad[i].at + 1, 0, &h), NOT, "%s",
                 k_bad[i].what);
    cr_assert_eq(parse_exact(rec.b, in.n, 0, &h), NOT, "%s", k_bad[i].what);
  }
  /* Any {03,xx} record version (RFC 5246 Appendix E.1), as both engines
   * take on a first flight: {03,00} is what a client that still speaks
   * SSL 3.0 would send. */
  for (unsigned minor = 0; minor <= 4; minor++) {
    memcpy(rec.b, in.b, in.n);
    rec.b[2] = (uint8_t)minor;
    cr_assert_eq(parse_exact(rec.b, in.n, 0, &h), OK, "{03,%02x}", minor);
  }
  /* An empty handshake record (RFC 5246 §6.2.1), first or in the middle. */
  uint8_t empty[] = {22, 3, 3, 0, 0};
  cr_assert_eq(parse_exact(empty, 5, 0, &h), NOT);
  size_t cuts[] = {10};
  tls_records(msg.b, msg.n, cuts, 1, &rec);
  memmove(rec.b + 20, rec.b + 15, rec.n - 15);
  memcpy(rec.b + 15, empty, 5);
  cr_assert_eq(parse_exact(rec.b, rec.n + 5, 0, &h), NOT);
  /* A record longer than 2^14. */
  uint8_t big[] = {22, 3, 3, 0x40, 0x01};
  cr_assert_eq(parse_exact(big, 5, 0, &h), NOT);
  uint8_t huge[] = {22, 3, 3, 0x41};
  cr_assert_eq(parse_exact(huge, 4, 0, &h), NOT);
  /* A second record of another type in the middle of the hello. */
  tls_records(msg.b, msg.n, cuts, 1, &rec);
  rec.b[15] = 20;
  cr_assert_eq(parse_exact(rec.b, rec.n, 0, &h), NOT);
  /* The record that completes the hello holds more after it. */
  memcpy(rec.b, in.b, in.n);
  rec.b[4] = (uint8_t)(rec.b[4] + 1);
  rec.b[in.n] = 0;
  cr_assert_eq(parse_exact(rec.b, in.n + 1, 0, &h), NOT);
  cr_assert_eq(parse_exact(rec.b, in.n, 0, &h), NOT,
               "known from the record header already");
}

/* ---- a ClientHello built field by field -----------------------------------
 */

typedef struct spec {
  int dtls;
  unsigned version;
  size_t sid;
  int sid_delta; /* added to the length byte, not to the bytes */
  size_t cookie;
  int cookie_delta;
  const uint16_t *suites;
  size_t n_suites;
  int suites_delta;
  const uint8_t *comp;
  size_t n_comp;
  int comp_delta;
  int no_ext; /* no extensions block at all */
  const bytes *ext;
  int ext_delta;
} spec;

static const uint16_t k_three[] = {0x00AE, 0xC0A8, 0x008C};
static const uint8_t k_null[] = {0};

static void put(bytes *o, const void *p, size_t n) {
  if (n == 0)
    return; /* p may be NULL */
  cr_assert_leq(o->n + n, sizeof(o->b));
  memcpy(o->b + o->n, p, n);
  o->n += n;
}
static void put8(bytes *o, size_t v) {
  uint8_t b = (uint8_t)v;
  put(o, &b, 1);
}
static void put16(bytes *o, size_t v) {
  put8(o, v >> 8);
  put8(o, v);
}
static void put24(bytes *o, size_t v) {
  put8(o, v >> 16);
  put16(o, v);
}
static void fill(bytes *o, uint8_t v, size_t n) {
  cr_assert_leq(o->n + n, sizeof(o->b));
  memset(o->b + o->n, v, n);
  o->n += n;
}

static void ext_add(bytes *e, unsigned type, const void *data, size_t len,
                    int delta) {
  put16(e, type);
  put16(e, len + (size_t)delta);
  put(e, data, len);
}

/* server_name: one entry (name_type, host), optionally a second one. */
static void sni_ext(bytes *e, unsigned name_type, const char *host, size_t hlen,
                    int list_delta, int host_delta, int second) {
  bytes d = {.n = 0};
  size_t entry = 3 + hlen;
  put16(&d, entry * (second ? 2 : 1) + (size_t)list_delta);
  for (int k = 0; k <= second; k++) {
    put8(&d, name_type);
    put16(&d, hlen + (size_t)host_delta);
    put(&d, host, hlen);
  }
  ext_add(e, 0, d.b, d.n, 0);
}

/* The usual extensions: server_name, then two a parser skips. */
static void usual_ext(bytes *e) {
  e->n = 0;
  sni_ext(e, 0, SNI, strlen(SNI), 0, 0, 0);
  ext_add(e, 0x0017, NULL, 0, 0); /* extended_master_secret */
  static const uint8_t reneg[] = {0};
  ext_add(e, 0xff01, reneg, 1, 0); /* renegotiation_info */
}

static spec base(int dtls, const bytes *ext) {
  spec s = {.dtls = dtls,
            .version = dtls ? 0xfefd : 0x0303,
            .sid = 32,
            .suites = k_three,
            .n_suites = COUNT(k_three),
            .comp = k_null,
            .n_comp = 1,
            .ext = ext};
  return s;
}

static void body(const spec *s, bytes *o) {
  o->n = 0;
  put16(o, s->version);
  fill(o, 0x52, 32); /* random */
  put8(o, s->sid + (size_t)s->sid_delta);
  fill(o, 0x53, s->sid);
  if (s->dtls) {
    put8(o, s->cookie + (size_t)s->cookie_delta);
    fill(o, 0x43, s->cookie);
  }
  put16(o, 2 * s->n_suites + (size_t)s->suites_delta);
  for (size_t i = 0; i < s->n_suites; i++)
    put16(o, s->suites[i]);
  put8(o, s->n_comp + (size_t)s->comp_delta);
  put(o, s->comp, s->n_comp);
  if (!s->no_ext) {
    put16(o, s->ext->n + (size_t)s->ext_delta);
    put(o, s->ext->b, s->ext->n);
  }
}

/* Handshake header + body, in one TLS record. */
static void tls_wrap(const bytes *b, unsigned type, int len_delta, bytes *out) {
  bytes msg = {.n = 0};
  put8(&msg, type);
  put24(&msg, b->n + (size_t)len_delta);
  put(&msg, b->b, b->n);
  size_t cuts[] = {16384};
  tls_records(msg.b, msg.n, cuts, 1, out);
}

typedef struct dtls_opt {
  unsigned type, rec_version, epoch, seq;
  int len_delta, frag_len_delta, rec_len_delta;
  size_t frag_off;
} dtls_opt;

static const dtls_opt k_dtls = {.type = 1, .rec_version = 0xfeff};

static void dtls_wrap(const bytes *b, const dtls_opt *o, bytes *out) {
  out->n = 0;
  put8(out, 22);
  put16(out, o->rec_version);
  put16(out, o->epoch);
  put16(out, 0); /* sequence_number, 48 bits */
  put16(out, 0);
  put16(out, 7);
  put16(out, 12 + b->n + (size_t)o->rec_len_delta);
  put8(out, o->type);
  put24(out, b->n + (size_t)o->len_delta);
  put16(out, o->seq);
  put24(out, o->frag_off);
  put24(out, b->n + (size_t)o->frag_len_delta);
  put(out, b->b, b->n);
}

/* TLS: the same answer in one record (the parser's flat path) and in
 * records of 7 bytes (its general one). */
static int parse_spec(const spec *s, m2mpsk_hello *h) {
  static bytes b, w, msg, rec;
  body(s, &b);
  if (s->dtls) {
    dtls_wrap(&b, &k_dtls, &w);
    return parse_exact(w.b, w.n, 1, h);
  }
  tls_wrap(&b, 1, 0, &w);
  int rc = parse_exact(w.b, w.n, 0, h);
  tls_message(&w, &msg);
  size_t seven[] = {7};
  tls_records(msg.b, msg.n, seven, 1, &rec);
  m2mpsk_hello split;
  cr_assert_eq(parse_exact(rec.b, rec.n, 0, &split), rc,
               "one record and 7-byte records disagree");
  if (rc == OK) {
    cr_assert_eq(split.n_suites, h->n_suites);
    cr_assert_str_eq(split.sni, h->sni);
  }
  return rc;
}

Test(hello, the_built_hello_parses) {
  bytes ext;
  usual_ext(&ext);
  for (int dtls = 0; dtls <= 1; dtls++) {
    spec s = base(dtls, &ext);
    s.cookie = dtls ? 255 : 0;
    m2mpsk_hello h;
    cr_assert_eq(parse_spec(&s, &h), OK, "dtls=%d", dtls);
    cr_assert_eq(h.n_suites, 3);
    cr_assert_eq(h.suites[1], 0xC0A8);
    cr_assert_str_eq(h.sni, SNI);
    cr_assert_eq(h.has_cookie, dtls);
    /* No extensions block at all is allowed; an empty one too. */
    s.no_ext = 1;
    cr_assert_eq(parse_spec(&s, &h), OK);
    cr_assert_str_eq(h.sni, "");
    bytes none = {.n = 0};
    s.no_ext = 0;
    s.ext = &none;
    cr_assert_eq(parse_spec(&s, &h), OK);
    /* An empty session_id, and the longest. */
    s.sid = 0;
    cr_assert_eq(parse_spec(&s, &h), OK);
    /* Newer client_versions negotiate down. */
    s.version = dtls ? 0xfefc : 0x0304;
    cr_assert_eq(parse_spec(&s, &h), OK);
    /* The longest host name. */
    char host[256];
    memset(host, 'h', 255);
    bytes e = {.n = 0};
    sni_ext(&e, 0, host, 255, 0, 0, 0);
    s = base(dtls, &e);
    cr_assert_eq(parse_spec(&s, &h), OK);
    cr_assert_eq(strlen(h.sni), 255);
  }
}

Test(hello, each_broken_length_field_is_not) {
  bytes ext;
  usual_ext(&ext);
  for (int dtls = 0; dtls <= 1; dtls++) {
    struct {
      const char *what;
      spec s;
    } k_cases[32];
    size_t n = 0;
#define CASE(name, ...)                                                        \
  do {                                                                         \
    spec s_ = base(dtls, &ext);                                                \
    __VA_ARGS__;                                                               \
    k_cases[n].what = name;                                                    \
    k_cases[n++].s = s_;                                                       \
  } while (0)
    CASE("session_id of 33 bytes", s_.sid = 33);
    CASE("session_id length past the end", s_.sid = 0, s_.sid_delta = 250);
    CASE("session_id length 1 short", s_.sid_delta = -1);
    CASE("cipher_suites odd", s_.suites_delta = 1);
    CASE("cipher_suites empty", s_.n_suites = 0);
    CASE("cipher_suites length 2 short", s_.suites_delta = -2);
    CASE("cipher_suites length past the end", s_.suites_delta = 0x7000);
    CASE("compression_methods empty", s_.n_comp = 0);
    static const uint8_t deflate[] = {1};
    CASE("compression_methods without null", s_.comp = deflate);
    CASE("compression_methods length past the end", s_.comp_delta = 100);
    CASE("compression_methods length 1 short", s_.comp_delta = -1);
    CASE("extensions block 1 long", s_.ext_delta = 1);
    CASE("extensions block 1 short", s_.ext_delta = -1);
    CASE("client_version 1.1", s_.version = dtls ? 0xfeff : 0x0302);
    CASE("client_version of the other transport",
         s_.version = dtls ? 0x0303 : 0xfefd);
    if (dtls) {
      CASE("cookie length past the end", s_.cookie = 0, s_.cookie_delta = 200);
      CASE("cookie length 1 short", s_.cookie = 4, s_.cookie_delta = -1);
    }
#undef CASE
    for (size_t i = 0; i < n; i++) {
      m2mpsk_hello h;
      int rc = parse_spec(&k_cases[i].s, &h);
      cr_assert_eq(rc, NOT, "dtls=%d: %s: %d", dtls, k_cases[i].what, rc);
    }
  }
}

Test(hello, each_broken_extension_is_not) {
  for (int dtls = 0; dtls <= 1; dtls++) {
    struct {
      const char *what;
      bytes e;
    } c[16];
    size_t n = 0;
    static const uint8_t zero[] = {0, 0, 0, 0};
#define EXT(name) (c[n].what = name, c[n].e.n = 0, &c[n++].e)
    sni_ext(EXT("host_name 1 long"), 0, SNI, strlen(SNI), 0, 1, 0);
    sni_ext(EXT("host_name 1 short"), 0, SNI, strlen(SNI), 0, -1, 0);
    sni_ext(EXT("server_name list 1 long"), 0, SNI, strlen(SNI), 1, 0, 0);
    sni_ext(EXT("server_name list 1 short"), 0, SNI, strlen(SNI), -1, 0, 0);
    sni_ext(EXT("empty host_name"), 0, "", 0, 0, 0, 0);
    sni_ext(EXT("name_type 1"), 1, SNI, strlen(SNI), 0, 0, 0);
    sni_ext(EXT("two host_names"), 0, SNI, strlen(SNI), 0, 0, 1);
    sni_ext(EXT("NUL in the host"), 0, "a\0b", 3, 0, 0, 0);
    char host[256];
    memset(host, 'h', 256);
    sni_ext(EXT("host of 256 bytes"), 0, host, 256, 0, 0, 0);
    bytes *e = EXT("server_name twice");
    sni_ext(e, 0, SNI, strlen(SNI), 0, 0, 0);
    sni_ext(e, 0, SNI, strlen(SNI), 0, 0, 0);
    ext_add(EXT("server_name empty"), 0, NULL, 0, 0);
    ext_add(EXT("server_name of 1 byte"), 0, zero, 1, 0);
    ext_add(EXT("extension length past the block"), 0x0017, zero, 4, 1);
    ext_add(EXT("extension length 1 short"), 0x0017, zero, 4, -1);
    e = EXT("half an extension header");
    put16(e, 0x0017);
    put8(e, 0);
#undef EXT
    for (size_t i = 0; i < n; i++) {
      spec s = base(dtls, &c[i].e);
      m2mpsk_hello h;
      int rc = parse_spec(&s, &h);
      cr_assert_eq(rc, NOT, "dtls=%d: %s: %d", dtls, c[i].what, rc);
    }
  }
}

Test(hello, handshake_header_violations) {
  bytes ext, b, w;
  usual_ext(&ext);
  spec s = base(0, &ext);
  body(&s, &b);
  m2mpsk_hello h;
  tls_wrap(&b, 1, 0, &w);
  cr_assert_eq(parse_exact(w.b, w.n, 0, &h), OK, "control");
  tls_wrap(&b, 2, 0, &w);
  cr_assert_eq(parse_exact(w.b, w.n, 0, &h), NOT, "ServerHello");
  cr_assert_eq(parse_exact(w.b, 6, 0, &h), NOT, "known from its first byte");
  /* Declared 1 byte longer: known already, since the extensions block
   * no longer fills the message, whatever the next record holds. */
  tls_wrap(&b, 1, 1, &w);
  cr_assert_eq(parse_exact(w.b, w.n, 0, &h), NOT);
  /* Declared 1 byte shorter: the extensions overrun it. */
  tls_wrap(&b, 1, -1, &w);
  cr_assert_eq(parse_exact(w.b, w.n, 0, &h), NOT);
  /* Longer than 16 KiB, known from the header alone. */
  tls_wrap(&b, 1, 0x10000, &w);
  cr_assert_eq(parse_exact(w.b, 9, 0, &h), NOT);
  cr_assert_eq(parse_exact(w.b, 7, 0, &h), NOT, "a length of 2^16 or more");

  s = base(1, &ext);
  body(&s, &b);
  struct {
    const char *what;
    dtls_opt o;
  } k_bad[] = {
      {"ServerHello", {.type = 2, .rec_version = 0xfeff}},
      {"record version 0x0303", {.type = 1, .rec_version = 0x0303}},
      {"record version 0xff01", {.type = 1, .rec_version = 0xff01}},
      {"epoch 1", {.type = 1, .rec_version = 0xfeff, .epoch = 1}},
      {"fragment_offset 1", {.type = 1, .rec_version = 0xfeff, .frag_off = 1}},
      {"a fragment", {.type = 1, .rec_version = 0xfeff, .frag_len_delta = -1}},
      {"length 1 long", {.type = 1, .rec_version = 0xfeff, .len_delta = 1}},
      {"length 1 short", {.type = 1, .rec_version = 0xfeff, .len_delta = -1}},
      {"record 1 long", {.type = 1, .rec_version = 0xfeff, .rec_len_delta = 1}},
      {"record 1 short",
       {.type = 1, .rec_version = 0xfeff, .rec_len_delta = -1}},
  };
  dtls_wrap(&b, &k_dtls, &w);
  cr_assert_eq(parse_exact(w.b, w.n, 1, &h), OK, "control");
  dtls_opt v12 = k_dtls;
  v12.rec_version = 0xfefd;
  v12.seq = 1;
  dtls_wrap(&b, &v12, &w);
  cr_assert_eq(parse_exact(w.b, w.n, 1, &h), OK, "record version 1.2");
  cr_assert_eq(h.message_seq, 1);
  v12.rec_version = 0xfefc;
  dtls_wrap(&b, &v12, &w);
  cr_assert_eq(parse_exact(w.b, w.n, 1, &h), OK, "any {fe,xx}");
  for (size_t i = 0; i < COUNT(k_bad); i++) {
    dtls_wrap(&b, &k_bad[i].o, &w);
    int rc = parse_exact(w.b, w.n, 1, &h);
    cr_assert_eq(rc, NOT, "%s: %d", k_bad[i].what, rc);
  }
  /* A record of another type first. */
  dtls_wrap(&b, &k_dtls, &w);
  w.b[0] = 23;
  cr_assert_eq(parse_exact(w.b, w.n, 1, &h), NOT);
}

Test(hello, limits_on_suites_and_size) {
  bytes ext;
  usual_ext(&ext);
  static uint16_t many[300];
  for (size_t i = 0; i < COUNT(many); i++)
    many[i] = (uint16_t)(0x1000 + i);
  for (int dtls = 0; dtls <= 1; dtls++) {
    spec s = base(dtls, &ext);
    s.suites = many;
    s.n_suites = M2MPSK_HELLO_MAX_SUITES;
    m2mpsk_hello h;
    cr_assert_eq(parse_spec(&s, &h), OK);
    cr_assert_eq(h.n_suites, M2MPSK_HELLO_MAX_SUITES);
    cr_assert_eq(h.suites[255], 0x1000 + 255);
    s.n_suites = M2MPSK_HELLO_MAX_SUITES + 1;
    cr_assert_eq(parse_spec(&s, &h), NOT);
  }
  /* The body at the cap, and one byte over, padded by an unknown
   * extension; TLS carries it in two records. */
  for (int dtls = 0; dtls <= 1; dtls++) {
    /* DTLS: the record (header included) must stay within 2^14. */
    size_t cap = dtls ? 16384 - 12 : M2MPSK_HELLO_MAX_BYTES;
    for (int over = 0; over <= 1; over++) {
      bytes e = {.n = 0}, b;
      usual_ext(&e);
      spec s = base(dtls, &e);
      body(&s, &b);
      size_t pad = cap + (size_t)over - b.n - 4;
      static uint8_t zeros[20000];
      ext_add(&e, 0x0015, zeros, pad, 0); /* padding */
      m2mpsk_hello h;
      cr_assert_eq(parse_spec(&s, &h), over ? NOT : OK, "dtls=%d over=%d", dtls,
                   over);
      if (!over)
        cr_assert_str_eq(h.sni, SNI);
    }
  }
}

/* ---- the live initiator ---------------------------------------------------
 */

/* The initiator of the backend this executable links offers exactly its
 * config's suites (plus at most the renegotiation SCSV), and the SNI of
 * its IdB. */
static void live(m2mpsk_transport t) {
  m2mt_pair p;
  m2mt_pair_init(&p, t, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, 1000, 0);
  static uint8_t buf[20000];
  size_t n;
  cr_assert_eq(m2mpsk_assoc_drain(p.a, buf, sizeof(buf), &n), M2MPSK_OK);
  int dtls = t == M2MPSK_TRANSPORT_DTLS;
  m2mpsk_hello h;
  cr_assert_eq(parse_exact(buf, n, dtls, &h), OK, "%s", m2mpsk_backend_name());
  cr_assert_eq(h.consumed, n);
  char list[1024], host[256];
  cr_assert_eq(m2mpsk_config_suites(p.cfg_a, t, list, sizeof(list)), M2MPSK_OK);
  uint16_t ids[64];
  size_t k;
  cr_assert_eq(m2mpsk_suite_ids(list, ids, COUNT(ids), &k), M2MPSK_OK, "%s",
               list);
  size_t offered = h.n_suites;
  if (offered > 0 && h.suites[offered - 1] == 0x00FF)
    offered--;
  cr_assert_eq(offered, k, "%s", list);
  for (size_t i = 0; i < k; i++)
    cr_assert_eq(h.suites[i], ids[i], "%zu", i);
  cr_assert_eq(m2mpsk_idb_server_name(M2MT_IDB, host, sizeof(host)), M2MPSK_OK);
  cr_assert_str_eq(h.sni, host);
  cr_assert_eq(h.version, dtls ? 0xfefd : 0x0303);
  /* The linked engine, offering all it has, shares a suite with it. */
  uint16_t all[64];
  size_t m = 0;
  for (size_t i = 0; m2mpsk_suite_name(i) != NULL; i++)
    cr_assert_eq(m2mpsk_suite_id(m2mpsk_suite_name(i), &all[m++]), M2MPSK_OK);
  m2mpsk_engine_suites e = {all, m};
  cr_assert_eq(m2mpsk_hello_choose(&h, &e, 1), 0);
  m2mt_pair_free(&p);
}

Test(hello, the_linked_initiator_tls) {
  live(M2MPSK_TRANSPORT_TLS);
}
Test(hello, the_linked_initiator_dtls) {
  live(M2MPSK_TRANSPORT_DTLS);
}

/* ---- the engine choice ----------------------------------------------------
 */

/* The two engines' suites as src/tls/{boringssl,openssl}.c list them. */
static const uint16_t k_bssl[] = {0x008C, 0x008D, 0xC035, 0xC036, 0xCCAC};
static const uint16_t k_ossl[] = {
    0x00AE, 0xC0A8, 0x008C, 0x008D, 0x00AF, 0x00A8, 0x00A9, 0xC0A4, 0xC0A5,
    0xC0A9, 0x0090, 0x0091, 0x00B2, 0x00B3, 0x00AA, 0x00AB, 0xC0A6, 0xC0A7,
    0xC0AA, 0xC0AB, 0xC035, 0xC036, 0xC037, 0xC038, 0xCCAC};

static int choose_for(const char *file, int dtls, const uint16_t *a, size_t na,
                      const uint16_t *b, size_t nb) {
  bytes in;
  load(file, &in);
  m2mpsk_hello h;
  cr_assert_eq(m2mpsk_hello_parse(in.b, in.n, dtls, &h), OK, "%s", file);
  m2mpsk_engine_suites e[2] = {{a, na}, {b, nb}};
  return m2mpsk_hello_choose(&h, e, 2);
}

Test(hello, choose_picks_the_first_engine_sharing_a_suite) {
  /* Fastest first: BoringSSL, then OpenSSL. */
#define BOTH k_bssl, COUNT(k_bssl), k_ossl, COUNT(k_ossl)
  cr_assert_eq(choose_for("m2mpsk_boringssl_tls.bin", 0, BOTH), 0);
  cr_assert_eq(choose_for("m2mpsk_boringssl_tls_ecdhe.bin", 0, BOTH), 0);
  /* Peers forcing a mandated suite need OpenSSL. */
  cr_assert_eq(choose_for("gnutls_tls_cbc256.bin", 0, BOTH), 1);
  cr_assert_eq(choose_for("openssl_tls_cbc256.bin", 0, BOTH), 1);
  cr_assert_eq(choose_for("gnutls_dtls_ccm8.bin", 1, BOTH), 1);
  cr_assert_eq(choose_for("openssl_dtls_hello2_cookie.bin", 1, BOTH), 1);
  /* The OpenSSL initiator prefers CBC_SHA256 but offers CBC_SHA too:
   * BoringSSL serves it. */
  cr_assert_eq(choose_for("m2mpsk_openssl_tls.bin", 0, BOTH), 0);
  cr_assert_eq(choose_for("m2mpsk_openssl_dtls.bin", 1, BOTH), 0);
  /* The other order of engines picks the other one first. */
  cr_assert_eq(choose_for("m2mpsk_boringssl_tls.bin", 0, k_ossl, COUNT(k_ossl),
                          k_bssl, COUNT(k_bssl)),
               0);
  cr_assert_eq(choose_for("m2mpsk_boringssl_tls_ecdhe.bin", 0, k_ossl, 0,
                          k_bssl, COUNT(k_bssl)),
               1);
#undef BOTH
}

Test(hello, choose_with_no_shared_suite_is_minus_one) {
  /* A config enabling only the mandated suites: BoringSSL's share is
   * empty. */
  static const uint16_t mandated[] = {0x00AE, 0xC0A8};
  cr_assert_eq(choose_for("m2mpsk_boringssl_tls.bin", 0, NULL, 0, mandated,
                          COUNT(mandated)),
               -1);
  cr_assert_eq(choose_for("gnutls_tls_cbc256.bin", 0, NULL, 0, mandated,
                          COUNT(mandated)),
               1);
  /* A hello without any PSK suite (only the SCSV is common to none). */
  cr_assert_eq(
      choose_for("openssl_dtls_ccm8.bin", 1, k_bssl, COUNT(k_bssl), k_bssl, 0),
      -1);
  bytes in;
  load("gnutls_tls_cbc256.bin", &in);
  m2mpsk_hello h;
  cr_assert_eq(m2mpsk_hello_parse(in.b, in.n, 0, &h), OK);
  m2mpsk_engine_suites e = {k_ossl, COUNT(k_ossl)};
  cr_assert_eq(m2mpsk_hello_choose(&h, &e, 0), -1, "no engines");
  cr_assert_eq(m2mpsk_hello_choose(&h, NULL, 1), -1);
  cr_assert_eq(m2mpsk_hello_choose(NULL, &e, 1), -1);
  m2mpsk_engine_suites null_ids = {NULL, 3};
  cr_assert_eq(m2mpsk_hello_choose(&h, &null_ids, 1), -1);
}

/* Only whether the lists meet matters: not the config's preference order,
 * not the peer's. */
Test(hello, preference_order_does_not_change_the_engine) {
  for (size_t i = 0; i < COUNT(k_fixtures); i++) {
    const fixture *f = &k_fixtures[i];
    bytes in;
    load(f->file, &in);
    m2mpsk_hello h, r;
    cr_assert_eq(m2mpsk_hello_parse(in.b, in.n, f->dtls, &h), OK);
    uint16_t bssl_rev[COUNT(k_bssl)], ossl_rev[COUNT(k_ossl)];
    for (size_t k = 0; k < COUNT(k_bssl); k++)
      bssl_rev[k] = k_bssl[COUNT(k_bssl) - 1 - k];
    for (size_t k = 0; k < COUNT(k_ossl); k++)
      ossl_rev[k] = k_ossl[COUNT(k_ossl) - 1 - k];
    m2mpsk_engine_suites e[2] = {{k_bssl, COUNT(k_bssl)},
                                 {k_ossl, COUNT(k_ossl)}};
    m2mpsk_engine_suites er[2] = {{bssl_rev, COUNT(k_bssl)},
                                  {ossl_rev, COUNT(k_ossl)}};
    r = h;
    for (size_t k = 0; k < h.n_suites; k++)
      r.suites[k] = h.suites[h.n_suites - 1 - k];
    int want = m2mpsk_hello_choose(&h, e, 2);
    cr_assert_eq(m2mpsk_hello_choose(&h, er, 2), want, "%s", f->file);
    cr_assert_eq(m2mpsk_hello_choose(&r, e, 2), want, "%s", f->file);
    cr_assert_eq(m2mpsk_hello_choose(&r, er, 2), want, "%s", f->file);
  }
}

/* ---- suite names and ids --------------------------------------------------
 */

static const char *const k_known[] = {
    "TLS_PSK_WITH_AES_128_CBC_SHA",
    "TLS_PSK_WITH_AES_256_CBC_SHA",
    "TLS_DHE_PSK_WITH_AES_128_CBC_SHA",
    "TLS_DHE_PSK_WITH_AES_256_CBC_SHA",
    "TLS_PSK_WITH_AES_128_GCM_SHA256",
    "TLS_PSK_WITH_AES_256_GCM_SHA384",
    "TLS_DHE_PSK_WITH_AES_128_GCM_SHA256",
    "TLS_DHE_PSK_WITH_AES_256_GCM_SHA384",
    "TLS_PSK_WITH_AES_128_CBC_SHA256",
    "TLS_PSK_WITH_AES_256_CBC_SHA384",
    "TLS_DHE_PSK_WITH_AES_128_CBC_SHA256",
    "TLS_DHE_PSK_WITH_AES_256_CBC_SHA384",
    "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA384",
    "TLS_PSK_WITH_AES_128_CCM",
    "TLS_PSK_WITH_AES_256_CCM",
    "TLS_DHE_PSK_WITH_AES_128_CCM",
    "TLS_DHE_PSK_WITH_AES_256_CCM",
    "TLS_PSK_WITH_AES_128_CCM_8",
    "TLS_PSK_WITH_AES_256_CCM_8",
    "TLS_PSK_DHE_WITH_AES_128_CCM_8",
    "TLS_PSK_DHE_WITH_AES_256_CCM_8",
    "TLS_PSK_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
};

/* The id OpenSSL gives a standard name, from the saved output of
 * `openssl ciphers -stdname -V 'PSK:@SECLEVEL=0'`; 0 when absent. */
static unsigned openssl_id(const char *name) {
  char here[4096], path[4200], line[512];
  snprintf(here, sizeof(here), "%s", __FILE__);
  snprintf(path, sizeof(path), "%s/data/hello/openssl_ciphers_psk.txt",
           dirname(here));
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "%s", path);
  unsigned id = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    unsigned hi, lo;
    char std[128];
    if (sscanf(line, " 0x%x,0x%x - %127s", &hi, &lo, std) == 3 &&
        strcmp(std, name) == 0)
      id = hi << 8 | lo;
  }
  fclose(f);
  return id;
}

Test(hello, suite_ids_agree_with_openssl) {
  for (size_t i = 0; i < COUNT(k_known); i++) {
    uint16_t id = 0;
    cr_assert_eq(m2mpsk_suite_id(k_known[i], &id), M2MPSK_OK, "%s", k_known[i]);
    cr_assert_eq(id, openssl_id(k_known[i]), "%s: %04x", k_known[i], id);
    cr_assert_str_eq(m2mpsk_suite_iana(id), k_known[i]);
  }
  /* The ids of the brief, spelled out. */
  uint16_t id;
  cr_assert_eq(m2mpsk_suite_id("TLS_PSK_WITH_AES_128_CBC_SHA", &id), 0);
  cr_assert_eq(id, 0x008C);
  cr_assert_eq(m2mpsk_suite_id("TLS_PSK_WITH_AES_256_CBC_SHA", &id), 0);
  cr_assert_eq(id, 0x008D);
  cr_assert_eq(m2mpsk_suite_id("TLS_PSK_WITH_AES_128_CBC_SHA256", &id), 0);
  cr_assert_eq(id, 0x00AE);
  cr_assert_eq(m2mpsk_suite_id("TLS_PSK_WITH_AES_128_CCM_8", &id), 0);
  cr_assert_eq(id, 0xC0A8);
  cr_assert_eq(m2mpsk_suite_id("PSK-AES128-CBC-SHA", &id), M2MPSK_E_SUITE,
               "OpenSSL's names are not IANA's");
  cr_assert_eq(m2mpsk_suite_id("TLS_PSK_WITH_AES_128_CBC_SH", &id),
               M2MPSK_E_SUITE);
  cr_assert_eq(m2mpsk_suite_id(NULL, &id), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_suite_id("TLS_PSK_WITH_AES_128_CCM_8", NULL),
               M2MPSK_E_INVALID);
  cr_assert_null(m2mpsk_suite_iana(0x00FF));
  cr_assert_null(m2mpsk_suite_iana(0x1301));
}

/* Every name the linked backend and the profile use has an id. */
Test(hello, every_name_the_project_uses_has_an_id) {
  uint16_t id;
  for (size_t i = 0; m2mpsk_suite_name(i) != NULL; i++)
    cr_assert_eq(m2mpsk_suite_id(m2mpsk_suite_name(i), &id), M2MPSK_OK, "%s",
                 m2mpsk_suite_name(i));
  /* The profile lists only what the backend has; the names it may list
   * are in src/profile.c, and all are in k_known. */
  for (int t = 0; t < 2; t++) {
    char list[1024];
    uint16_t ids[64];
    size_t n;
    m2mpsk_transport tr = t ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS;
    cr_assert_eq(
        m2mpsk_profile_suites(M2MPSK_PROFILE_TS0003, tr, list, sizeof(list)),
        M2MPSK_OK);
    if (list[0] != '\0')
      cr_assert_eq(m2mpsk_suite_ids(list, ids, COUNT(ids), &n), M2MPSK_OK, "%s",
                   list);
  }
}

Test(hello, suite_ids_translates_a_list) {
  uint16_t ids[4];
  size_t n = 99;
  cr_assert_eq(m2mpsk_suite_ids("TLS_PSK_WITH_AES_128_CCM_8:"
                                "TLS_PSK_WITH_AES_128_CBC_SHA",
                                ids, COUNT(ids), &n),
               M2MPSK_OK);
  cr_assert_eq(n, 2);
  cr_assert_eq(ids[0], 0xC0A8);
  cr_assert_eq(ids[1], 0x008C);
  cr_assert_eq(
      m2mpsk_suite_ids("TLS_PSK_WITH_AES_128_CCM_8:NOPE", ids, COUNT(ids), &n),
      M2MPSK_E_SUITE);
  cr_assert_eq(n, 0);
  cr_assert_eq(m2mpsk_suite_ids("TLS_PSK_WITH_AES_128_CCM_8:"
                                "TLS_PSK_WITH_AES_128_CCM_8",
                                ids, 1, &n),
               M2MPSK_E_BUFFER);
  cr_assert_eq(n, 0);
  cr_assert_eq(m2mpsk_suite_ids("", ids, COUNT(ids), &n), M2MPSK_E_INVALID);
  cr_assert_eq(
      m2mpsk_suite_ids("TLS_PSK_WITH_AES_128_CCM_8:", ids, COUNT(ids), &n),
      M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_suite_ids(NULL, ids, COUNT(ids), &n), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_suite_ids("TLS_PSK_WITH_AES_128_CCM_8", NULL, 1, &n),
               M2MPSK_E_INVALID);
  cr_assert_eq(
      m2mpsk_suite_ids("TLS_PSK_WITH_AES_128_CCM_8", ids, COUNT(ids), NULL),
      M2MPSK_E_INVALID);
}

/* ---- the ClientKeyExchange's psk_identity ---------------------------------
 */

/* A TLS handshake message: type, 24-bit length, body. */
static size_t hs_msg(uint8_t *out, uint8_t type, const uint8_t *body,
                     size_t n) {
  out[0] = type;
  out[1] = (uint8_t)(n >> 16);
  out[2] = (uint8_t)(n >> 8);
  out[3] = (uint8_t)n;
  memcpy(out + 4, body, n);
  return 4 + n;
}

/* A ClientKeyExchange body: identity, then `extra` bytes (an ECPoint). */
static size_t cke_body(uint8_t *out, const char *id, size_t extra) {
  size_t n = strlen(id);
  out[0] = (uint8_t)(n >> 8);
  out[1] = (uint8_t)n;
  memcpy(out + 2, id, n);
  memset(out + 2 + n, 0x04, extra);
  return 2 + n + extra;
}

Test(cke, tls_identity_in_one_record) {
  uint8_t body[256], rec[300];
  size_t bn = cke_body(body, "dev@b.c", 33);
  size_t n = hs_msg(rec, 16, body, bn);
  uint32_t left = 0;
  const uint8_t *id = NULL;
  size_t id_len = 0;
  cr_assert_eq(m2mpsk_cke_tls_record(rec, n, &left, &id, &id_len),
               M2MPSK_CKE_FOUND);
  cr_assert_eq(id_len, 7);
  cr_assert_eq(id, rec + 6, "points into the record");
  cr_assert_arr_eq(id, "dev@b.c", 7);
  /* After other messages in the same record. */
  uint8_t two[400];
  size_t k = hs_msg(two, 11, (const uint8_t *)"xyz", 3);
  k += hs_msg(two + k, 16, body, bn);
  cr_assert_eq(m2mpsk_cke_tls_record(two, k, &left, &id, &id_len),
               M2MPSK_CKE_FOUND);
  cr_assert_arr_eq(id, "dev@b.c", 7);
  /* An empty identity is found; judging it is the caller's. */
  size_t en = cke_body(body, "", 0);
  n = hs_msg(rec, 16, body, en);
  cr_assert_eq(m2mpsk_cke_tls_record(rec, n, &left, &id, &id_len),
               M2MPSK_CKE_FOUND);
  cr_assert_eq(id_len, 0);
}

Test(cke, tls_messages_spanning_records_are_followed) {
  /* A 100-byte ClientHello in two records, then the ClientKeyExchange. */
  uint8_t hello[104], body[64], rec[128];
  uint8_t fill[100];
  memset(fill, 0x16, sizeof(fill)); /* bytes that look like types */
  hs_msg(hello, 1, fill, sizeof(fill));
  uint32_t left = 0;
  const uint8_t *id = NULL;
  size_t id_len = 0;
  cr_assert_eq(m2mpsk_cke_tls_record(hello, 40, &left, &id, &id_len),
               M2MPSK_CKE_MORE);
  cr_assert_eq(left, 64);
  cr_assert_eq(m2mpsk_cke_tls_record(hello + 40, 30, &left, &id, &id_len),
               M2MPSK_CKE_MORE);
  cr_assert_eq(left, 34);
  /* The hello's end and the ClientKeyExchange share a record. */
  uint8_t last[200];
  memcpy(last, hello + 70, 34);
  size_t n = 34 + hs_msg(last + 34, 16, body, cke_body(body, "a@b.c", 0));
  cr_assert_eq(m2mpsk_cke_tls_record(last, n, &left, &id, &id_len),
               M2MPSK_CKE_FOUND);
  cr_assert_eq(left, 0);
  cr_assert_arr_eq(id, "a@b.c", 5);
  (void)rec;
}

Test(cke, tls_split_identity_is_not_read) {
  uint8_t body[64], rec[128];
  size_t n = hs_msg(rec, 16, body, cke_body(body, "a@b.c", 0));
  const uint8_t *id = NULL;
  size_t id_len = 0;
  /* Every cut short of the whole identity. */
  for (size_t cut = 1; cut < n; cut++) {
    uint32_t left = 0;
    cr_assert_eq(m2mpsk_cke_tls_record(rec, cut, &left, &id, &id_len),
                 M2MPSK_CKE_NOT, "cut at %zu", cut);
  }
  /* A length longer than the message. */
  rec[4] = 0xff;
  uint32_t left = 0;
  cr_assert_eq(m2mpsk_cke_tls_record(rec, n, &left, &id, &id_len),
               M2MPSK_CKE_NOT);
}

/* A DTLS record (epoch, one handshake fragment). */
static size_t dtls_rec(uint8_t *out, uint8_t type, uint16_t epoch,
                       uint8_t hs_type, uint32_t frag_off, const uint8_t *body,
                       size_t n) {
  memset(out, 0, 25);
  out[0] = type;
  out[1] = 0xfe;
  out[2] = 0xfd;
  out[3] = (uint8_t)(epoch >> 8);
  out[4] = (uint8_t)epoch;
  out[11] = (uint8_t)((12 + n) >> 8);
  out[12] = (uint8_t)(12 + n);
  uint8_t *h = out + 13;
  h[0] = hs_type;
  h[3] = (uint8_t)(n + frag_off); /* total length, small here */
  h[8] = (uint8_t)frag_off;
  h[11] = (uint8_t)n;
  memcpy(h + 12, body, n);
  return 25 + n;
}

Test(cke, dtls_identity_in_the_first_fragment) {
  uint8_t body[64], d[256];
  size_t bn = cke_body(body, "d@b.c", 10);
  const uint8_t *id = NULL;
  size_t id_len = 0;
  size_t n = dtls_rec(d, 22, 0, 16, 0, body, bn);
  cr_assert_eq(m2mpsk_cke_dtls(d, n, &id, &id_len), M2MPSK_CKE_FOUND);
  cr_assert_arr_eq(id, "d@b.c", 5);
  cr_assert_eq(id, d + 13 + 12 + 2);
  /* After an epoch-1 record, which is skipped. */
  uint8_t two[512];
  size_t k = dtls_rec(two, 22, 1, 16, 0, (const uint8_t *)"\0\3zzz", 5);
  k += dtls_rec(two + k, 22, 0, 16, 0, body, bn);
  cr_assert_eq(m2mpsk_cke_dtls(two, k, &id, &id_len), M2MPSK_CKE_FOUND);
  cr_assert_arr_eq(id, "d@b.c", 5);
  /* A ChangeCipherSpec alone: nothing. */
  uint8_t ccs[14] = {20, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
  cr_assert_eq(m2mpsk_cke_dtls(ccs, sizeof(ccs), &id, &id_len),
               M2MPSK_CKE_MORE);
}

Test(cke, dtls_later_fragment_or_short_identity_is_not_read) {
  uint8_t body[64], d[256];
  size_t bn = cke_body(body, "d@b.c", 0);
  const uint8_t *id = NULL;
  size_t id_len = 0;
  size_t n = dtls_rec(d, 22, 0, 16, 3, body, bn);
  cr_assert_eq(m2mpsk_cke_dtls(d, n, &id, &id_len), M2MPSK_CKE_NOT);
  /* A first fragment that stops inside the identity. */
  n = dtls_rec(d, 22, 0, 16, 0, body, 4);
  cr_assert_eq(m2mpsk_cke_dtls(d, n, &id, &id_len), M2MPSK_CKE_NOT);
  /* A record cut short: left to the engine. */
  n = dtls_rec(d, 22, 0, 16, 0, body, bn);
  for (size_t cut = 0; cut < n; cut++)
    cr_assert_eq(m2mpsk_cke_dtls(d, cut, &id, &id_len), M2MPSK_CKE_MORE,
                 "cut at %zu", cut);
}
