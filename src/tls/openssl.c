/* The OpenSSL 3 backend (Debian libssl-dev), chosen at configure time with
 * -DM2MPSK_TLS=openssl. It brings the two suites TS-0003 §10.2.2 mandates
 * and Debian's BoringSSL lacks.
 *
 * Suites (TLS 1.2 and DTLS 1.2 only; IANA name = OpenSSL name):
 *   plain PSK, RFC 4279 / 5487 / 6655 (these ten are the default list, in
 *   this order):
 *     TLS_PSK_WITH_AES_128_CBC_SHA256        PSK-AES128-CBC-SHA256 (TLS)
 *     TLS_PSK_WITH_AES_128_CCM_8             PSK-AES128-CCM8       (DTLS)
 *     TLS_PSK_WITH_AES_128_CBC_SHA           PSK-AES128-CBC-SHA
 *     TLS_PSK_WITH_AES_256_CBC_SHA           PSK-AES256-CBC-SHA
 *     TLS_PSK_WITH_AES_256_CBC_SHA384        PSK-AES256-CBC-SHA384
 *     TLS_PSK_WITH_AES_128_GCM_SHA256        PSK-AES128-GCM-SHA256
 *     TLS_PSK_WITH_AES_256_GCM_SHA384        PSK-AES256-GCM-SHA384
 *     TLS_PSK_WITH_AES_128_CCM               PSK-AES128-CCM
 *     TLS_PSK_WITH_AES_256_CCM               PSK-AES256-CCM
 *     TLS_PSK_WITH_AES_256_CCM_8             PSK-AES256-CCM8
 *   DHE_PSK, RFC 4279 / 5487 / 6655:
 *     TLS_DHE_PSK_WITH_AES_{128,256}_CBC_SHA, _AES_128_CBC_SHA256,
 *     _AES_256_CBC_SHA384, _AES_128_GCM_SHA256, _AES_256_GCM_SHA384,
 *     _AES_{128,256}_CCM, TLS_PSK_DHE_WITH_AES_{128,256}_CCM_8
 *   ECDHE_PSK, RFC 5489 (and RFC 7905's ChaCha20, which BoringSSL has):
 *     TLS_ECDHE_PSK_WITH_AES_{128,256}_CBC_SHA, _AES_128_CBC_SHA256,
 *     _AES_256_CBC_SHA384, TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256
 * Left out: RSA_PSK (needs a server certificate, a non-goal), the NULL
 * ciphers (no confidentiality), Camellia (RFC 6367) and ARIA (RFC 6209).
 *
 * As in the BoringSSL backend, each association owns one SSL whose single
 * BIO is ours; for DTLS both buffers hold whole datagrams, each behind a
 * 2-byte length. OpenSSL writes one DTLS record per datagram; BoringSSL
 * packs a flight.
 *
 * Time. OpenSSL 3.0 reads the DTLS retransmission clock with gettimeofday()
 * (ssl/d1_lib.c, get_current_time(), called by dtls1_start_timer() and
 * dtls1_get_timeout()); it has no time callback, and DTLS_set_timer_cb()
 * only chooses durations. It also checks that timer on its own at every
 * record read (dtls1_read_bytes()). So here the timer runs on the
 * caller's clock: DTLS_set_timer_cb() mirrors OpenSSL's 1 s, doubling, 60 s
 * schedule into the engine and gives OpenSSL itself an hour, so that its
 * wall-clock timer never fires; dtls1_start_timer() reports each (re)start
 * through BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT, which arms our deadline on the
 * injected clock; and when that deadline passes, on_timer marks OpenSSL's
 * timer expired through the pointer that control passed us (OpenSSL 3.0
 * passes &s->d1->next_timeout itself) before DTLSv1_handle_timeout(). That
 * pointer is only used where it is known to be the field: OpenSSL 3.0.x,
 * checked at build and run time (3.2 passes a copy on its stack). Anywhere
 * else the backend falls back to OpenSSL's own wall-clock timer, reported
 * through DTLSv1_get_timeout().
 *
 * Differences from the BoringSSL backend:
 * - OpenSSL 3 has no public call that sends a fatal alert (BoringSSL's
 *   SSL_send_fatal_alert). abort() writes a plaintext fatal alert itself
 *   while our side has not switched to the negotiated keys (the DTLS
 *   responder's wrong-key case); once it has, the alert would have to be
 *   encrypted, and abort() sends close_notify instead: a peer of an
 *   association that fails closed (record revoked, removed, expired) sees
 *   an orderly close, not access_denied.
 * - default_suites() is one list for both transports (the ops table has
 *   no per-transport default). The core's TS-0003 profile (src/profile.c)
 *   orders per transport where a backend has both mandated suites, as
 *   this one does: CBC_SHA256 first over TLS, CCM_8 first over DTLS.
 * - With CBC suites, encrypt-then-MAC (RFC 7366) is negotiated with peers
 *   that offer it (OpenSSL, GnuTLS; BoringSSL does not), and OpenSSL then
 *   fails a record whose MAC does not verify with a fatal bad_record_mac
 *   even over DTLS, where BoringSSL drops it silently.
 * - A DTLS responder resends its last flight, as it was sent, when the
 *   initiator retransmits its ChangeCipherSpec (see ossl_push); OpenSSL
 *   itself answers only a retransmitted Finished.
 * - The DTLS responder runs the cookie exchange (HelloVerifyRequest),
 *   which BoringSSL's DTLS server lacks. ossl_dtls_listen() does it with
 *   no state for a peer that has no association (a scratch SSL, made and
 *   freed within the call), and every responder association starts in
 *   DTLSv1_listen(), so that a ClientHello without a valid cookie gets a
 *   HelloVerifyRequest there too, and one with a cookie continues with
 *   the message and record sequence numbers RFC 6347 §4.2.2 expects (a
 *   cookie-bearing ClientHello fed straight to SSL_accept() stalls). The
 *   cookie is HMAC-SHA-256 under a per-context random secret over the
 *   peer tag and the ClientHello's random, which our BIO picks out of the
 *   datagram DTLSv1_listen() reads (its callbacks are not given it).
 *
 * Residual copies: OpenSSL copies the PSK into a stack buffer and a heap
 * copy during the handshake and wipes those two (OPENSSL_cleanse,
 * OPENSSL_clear_free) once the master secret is derived, but its premaster
 * and PRF code still leave copies in dead frames (three measured): the
 * handshake step wipes them as BoringSSL's does (family.h). The session
 * keys live in OpenSSL's memory, outside our control. */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/opensslv.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "engine.h"
#include "family.h"

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "the OpenSSL backend needs OpenSSL 3 (Debian: libssl-dev)"
#endif

/* Set once by m2mpsk_tls_module(), before any other call. */
static const m2mpsk_engine_hooks *g_hooks;
/* Whether DTLS timers may be steered through OpenSSL's own deadline (see
 * the header comment); set with g_hooks. */
static int g_steer;

static void ossl_abort(m2mpsk_engine *e, uint8_t alert);

/* DTLS cookies: the length sent, and the secret they are made with. */
#define COOKIE_LEN 16
#define COOKIE_SECRET_LEN 32

struct m2mpsk_engine_ctx {
  SSL_CTX *ssl_ctx;
  int dtls;
  int server;
  /* DTLS responder: drawn at creation, wiped at free; never rotated. */
  uint8_t cookie_secret[COOKIE_SECRET_LEN];
};

typedef struct bytebuf {
  uint8_t *p;
  size_t off; /* start of unread data */
  size_t len; /* bytes of unread data */
  size_t cap;
} bytebuf;

struct m2mpsk_engine {
  SSL *ssl;
  m2mpsk_assoc *owner;
  int dtls;
  int server;
  bytebuf in;
  bytebuf out;
  int nomem;
  int stopped; /* abort() ran: nothing more from OpenSSL */
  /* DTLS responder: a Finished that fails its MAC is dropped silently by
   * DTLS, so a wrong key would look like loss. These spot it. */
  int psk_given;
  int key_out; /* a PSK callback gave out the key in this call */
  int ccs_seen;
  int bad_finished;
  /* What we sent: whether our records are encrypted yet, and the next
   * epoch-0 DTLS sequence number (for an alert of our own). TLS records
   * are followed across writes: out_hdr collects a header, out_skip is
   * what is left of the current record's body. */
  int write_encrypted;
  uint64_t next_seq0;
  uint8_t out_hdr[5];
  size_t out_hdr_len;
  size_t out_skip;
  /* DTLS retransmission timer on the caller's clock. */
  int timer_on;
  uint64_t deadline_ms;
  uint32_t duration_ms;
  struct timeval *ossl_deadline; /* OpenSSL's own, when g_steer */
  /* DTLS responder: the flight that completed the handshake (datagrams,
   * as sent), kept until the peer shows it has it (see ossl_push). */
  int capture;
  bytebuf last_flight;
  /* DTLS responder, until a ClientHello with a valid cookie: every
   * handshake step goes through DTLSv1_listen(). listen_tag is the scratch
   * engine's peer tag (ossl_dtls_listen), else the owner's is asked for.
   * hello_random is the random of the last ClientHello read while
   * listening, which the cookie covers. */
  int listening;
  const char *listen_tag;
  int have_random;
  uint8_t hello_random[32];
  m2mpsk_reason reason;
  char detail[160];
};

/* ---- suites -------------------------------------------------------------- */

static const suite_name k_suites[] = {
    /* Plain PSK: TS-0003's mandated suites first (TLS, then DTLS). */
    {"TLS_PSK_WITH_AES_128_CBC_SHA256", "PSK-AES128-CBC-SHA256"},
    {"TLS_PSK_WITH_AES_128_CCM_8", "PSK-AES128-CCM8"},
    {"TLS_PSK_WITH_AES_128_CBC_SHA", "PSK-AES128-CBC-SHA"},
    {"TLS_PSK_WITH_AES_256_CBC_SHA", "PSK-AES256-CBC-SHA"},
    {"TLS_PSK_WITH_AES_256_CBC_SHA384", "PSK-AES256-CBC-SHA384"},
    {"TLS_PSK_WITH_AES_128_GCM_SHA256", "PSK-AES128-GCM-SHA256"},
    {"TLS_PSK_WITH_AES_256_GCM_SHA384", "PSK-AES256-GCM-SHA384"},
    {"TLS_PSK_WITH_AES_128_CCM", "PSK-AES128-CCM"},
    {"TLS_PSK_WITH_AES_256_CCM", "PSK-AES256-CCM"},
    {"TLS_PSK_WITH_AES_256_CCM_8", "PSK-AES256-CCM8"},
    /* DHE_PSK */
    {"TLS_DHE_PSK_WITH_AES_128_CBC_SHA", "DHE-PSK-AES128-CBC-SHA"},
    {"TLS_DHE_PSK_WITH_AES_256_CBC_SHA", "DHE-PSK-AES256-CBC-SHA"},
    {"TLS_DHE_PSK_WITH_AES_128_CBC_SHA256", "DHE-PSK-AES128-CBC-SHA256"},
    {"TLS_DHE_PSK_WITH_AES_256_CBC_SHA384", "DHE-PSK-AES256-CBC-SHA384"},
    {"TLS_DHE_PSK_WITH_AES_128_GCM_SHA256", "DHE-PSK-AES128-GCM-SHA256"},
    {"TLS_DHE_PSK_WITH_AES_256_GCM_SHA384", "DHE-PSK-AES256-GCM-SHA384"},
    {"TLS_DHE_PSK_WITH_AES_128_CCM", "DHE-PSK-AES128-CCM"},
    {"TLS_DHE_PSK_WITH_AES_256_CCM", "DHE-PSK-AES256-CCM"},
    {"TLS_PSK_DHE_WITH_AES_128_CCM_8", "DHE-PSK-AES128-CCM8"},
    {"TLS_PSK_DHE_WITH_AES_256_CCM_8", "DHE-PSK-AES256-CCM8"},
    /* ECDHE_PSK */
    {"TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA", "ECDHE-PSK-AES128-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA", "ECDHE-PSK-AES256-CBC-SHA"},
    {"TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256", "ECDHE-PSK-AES128-CBC-SHA256"},
    {"TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA384", "ECDHE-PSK-AES256-CBC-SHA384"},
    {"TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
     "ECDHE-PSK-CHACHA20-POLY1305"},
};

static const char *ossl_backend_name(void) {
  return "openssl";
}

static size_t ossl_suite_count(void) {
  return sizeof(k_suites) / sizeof(k_suites[0]);
}

static const char *ossl_suite_name(size_t i) {
  return i < ossl_suite_count() ? k_suites[i].iana : NULL;
}

/* The plain-PSK suites, mandated ones first. */
static const char *ossl_default_suites(void) {
  return "TLS_PSK_WITH_AES_128_CBC_SHA256:TLS_PSK_WITH_AES_128_CCM_8:"
         "TLS_PSK_WITH_AES_128_CBC_SHA:TLS_PSK_WITH_AES_256_CBC_SHA:"
         "TLS_PSK_WITH_AES_256_CBC_SHA384:TLS_PSK_WITH_AES_128_GCM_SHA256:"
         "TLS_PSK_WITH_AES_256_GCM_SHA384:TLS_PSK_WITH_AES_128_CCM:"
         "TLS_PSK_WITH_AES_256_CCM:TLS_PSK_WITH_AES_256_CCM_8";
}

/* Translates the IANA list into OpenSSL's names; out may be NULL. */
static int translate_suites(const char *iana, char *out, size_t cap) {
  return family_translate_suites(
      k_suites, sizeof(k_suites) / sizeof(k_suites[0]), iana, out, cap);
}

static int ossl_check_suites(const char *iana_names) {
  return translate_suites(iana_names, NULL, 0);
}

/* ---- buffers ------------------------------------------------------------- */

static int buf_reserve(bytebuf *b, size_t extra) {
  if (b->off > 0 && b->off + b->len + extra > b->cap) {
    memmove(b->p, b->p + b->off, b->len);
    b->off = 0;
  }
  if (b->len + extra <= b->cap)
    return 1;
  size_t cap = b->cap ? b->cap : 2048;
  while (cap < b->len + extra) {
    if (cap > SIZE_MAX / 2)
      return 0;
    cap *= 2;
  }
  uint8_t *p = realloc(b->p, cap);
  if (p == NULL)
    return 0;
  b->p = p;
  b->cap = cap;
  return 1;
}

static int buf_append(bytebuf *b, const uint8_t *data, size_t len) {
  if (!buf_reserve(b, len))
    return 0;
  memcpy(b->p + b->off + b->len, data, len);
  b->len += len;
  return 1;
}

/* An emptied buffer is released (an idle association holds none). The
 * buffers only hold records as they travel on the wire: nothing to wipe. */
static void buf_consume(bytebuf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (b->len == 0) {
    free(b->p);
    b->p = NULL;
    b->off = 0;
    b->cap = 0;
  }
}

static int buf_push_datagram(bytebuf *b, const uint8_t *data, size_t len) {
  uint8_t hdr[2] = {(uint8_t)(len >> 8), (uint8_t)len};
  if (len > 0xffff || !buf_reserve(b, len + 2))
    return 0;
  buf_append(b, hdr, 2);
  buf_append(b, data, len);
  return 1;
}

static size_t buf_next_datagram(const bytebuf *b) {
  if (b->len < 2)
    return 0;
  return ((size_t)b->p[b->off] << 8) | b->p[b->off + 1];
}

/* ---- what we send -------------------------------------------------------- */

/* DTLS: one datagram's records. Epoch > 0 means encrypted; otherwise the
 * sequence number is remembered for an alert of our own. */
static void note_sent_datagram(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  while (n >= 13) {
    unsigned epoch = ((unsigned)d[3] << 8) | d[4];
    uint64_t seq = 0;
    for (int i = 5; i < 11; i++)
      seq = (seq << 8) | d[i];
    size_t len = ((size_t)d[11] << 8) | d[12];
    if (epoch > 0)
      e->write_encrypted = 1;
    else if (seq + 1 > e->next_seq0)
      e->next_seq0 = seq + 1;
    if (len > n - 13)
      break;
    d += 13 + len;
    n -= 13 + len;
  }
}

/* TLS: follows the record stream; our ChangeCipherSpec means every later
 * record is encrypted. */
static void note_sent_stream(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  while (n > 0 && !e->write_encrypted) {
    if (e->out_skip > 0) {
      size_t k = n < e->out_skip ? n : e->out_skip;
      e->out_skip -= k;
      d += k;
      n -= k;
      continue;
    }
    e->out_hdr[e->out_hdr_len++] = *d++;
    n--;
    if (e->out_hdr_len == 5) {
      if (e->out_hdr[0] == 20)
        e->write_encrypted = 1;
      e->out_skip = ((size_t)e->out_hdr[3] << 8) | e->out_hdr[4];
      e->out_hdr_len = 0;
    }
  }
}

/* ---- our BIO ------------------------------------------------------------- */

/* A ClientHello in its first fragment: record header (13 bytes), handshake
 * header (12), client_version (2), then the random. DTLSv1_listen() checks
 * the rest before it asks for a cookie. */
static void note_hello_random(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  e->have_random = n >= 13 + 12 + 2 + 32 && d[0] == 22 && d[13] == 1;
  if (e->have_random)
    memcpy(e->hello_random, d + 13 + 12 + 2, 32);
}

static _Thread_local uint64_t t_now_ms;

static int bio_read(BIO *bio, char *out, int outl) {
  m2mpsk_engine *e = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (e->in.len == 0 || outl <= 0) {
    BIO_set_retry_read(bio);
    return -1;
  }
  size_t n;
  if (e->dtls) {
    size_t dlen = buf_next_datagram(&e->in);
    n = dlen < (size_t)outl ? dlen : (size_t)outl;
    memcpy(out, e->in.p + e->in.off + 2, n);
    if (e->listening)
      note_hello_random(e, (const uint8_t *)out, n);
    buf_consume(&e->in, dlen + 2);
  } else {
    n = e->in.len < (size_t)outl ? e->in.len : (size_t)outl;
    memcpy(out, e->in.p + e->in.off, n);
    buf_consume(&e->in, n);
  }
  return (int)n;
}

static int bio_write(BIO *bio, const char *data, int len) {
  m2mpsk_engine *e = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (len < 0)
    return -1;
  const uint8_t *d = (const uint8_t *)data;
  int ok = e->dtls ? buf_push_datagram(&e->out, d, (size_t)len)
                   : buf_append(&e->out, d, (size_t)len);
  if (!ok) {
    e->nomem = 1;
    return -1;
  }
  if (e->dtls) {
    note_sent_datagram(e, d, (size_t)len);
    if (e->capture && !buf_push_datagram(&e->last_flight, d, (size_t)len))
      e->capture = 0; /* only a retransmission aid: go without */
  } else
    note_sent_stream(e, d, (size_t)len);
  return len;
}

/* dtls1_start_timer() and dtls1_stop_timer() report OpenSSL's deadline
 * here: a zero time stops the timer, any other (re)starts it for the
 * duration timer_cb() just chose. */
static void timer_event(m2mpsk_engine *e, struct timeval *tv) {
  if (tv == NULL || (tv->tv_sec == 0 && tv->tv_usec == 0)) {
    e->timer_on = 0;
    return;
  }
  e->timer_on = 1;
  e->deadline_ms = t_now_ms + e->duration_ms;
  if (g_steer)
    e->ossl_deadline = tv;
}

static long bio_ctrl(BIO *bio, int cmd, long larg, void *parg) {
  (void)larg;
  m2mpsk_engine *e = BIO_get_data(bio);
  switch (cmd) {
  case BIO_CTRL_FLUSH: return 1;
  case BIO_CTRL_PENDING: return e ? (long)e->in.len : 0;
  case BIO_CTRL_WPENDING: return e ? (long)e->out.len : 0;
  case BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT:
    if (e != NULL && e->dtls)
      timer_event(e, parg);
    return 1;
  default: return 0;
  }
}

static int bio_create(BIO *bio) {
  BIO_set_init(bio, 1);
  return 1;
}

/* Built once and kept for the life of the process. Not pthread_once: a
 * failed allocation must leave the next caller free to try again. */
static BIO_METHOD *g_bio_method;
static pthread_mutex_t g_bio_lock = PTHREAD_MUTEX_INITIALIZER;

static BIO_METHOD *bio_method(void) {
  pthread_mutex_lock(&g_bio_lock);
  if (g_bio_method == NULL) {
    BIO_METHOD *m =
        BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "m2mpsk");
    if (m != NULL &&
        (!BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write) ||
         !BIO_meth_set_ctrl(m, bio_ctrl) ||
         !BIO_meth_set_create(m, bio_create))) {
      BIO_meth_free(m);
      m = NULL;
    }
    g_bio_method = m;
  }
  BIO_METHOD *m = g_bio_method;
  pthread_mutex_unlock(&g_bio_lock);
  return m;
}

/* ---- clock --------------------------------------------------------------- */

/* What OpenSSL's own wall-clock timer gets while we steer it: longer than
 * any handshake, so it never fires by itself. */
#define WALL_TIMER_US 3600000000u

static void ossl_set_now(uint64_t now_ms) {
  t_now_ms = now_ms;
}

/* OpenSSL's schedule (RFC 6347 §4.2.4.1): 1 s, doubling, at most 60 s.
 * prev_us is 0 when a timer starts afresh. */
static unsigned int timer_cb(SSL *ssl, unsigned int prev_us) {
  m2mpsk_engine *e = SSL_get_app_data(ssl);
  if (prev_us == 0 || e->duration_ms == 0)
    e->duration_ms = 1000;
  else if ((e->duration_ms *= 2) > 60000)
    e->duration_ms = 60000;
  return g_steer ? WALL_TIMER_US : e->duration_ms * 1000u;
}

/* ---- callbacks into assoc.c ---------------------------------------------- */

static unsigned client_psk_cb(SSL *ssl, const char *hint, char *identity,
                              unsigned max_identity_len, unsigned char *psk,
                              unsigned max_psk_len) {
  (void)hint;
  m2mpsk_engine *e = SSL_get_app_data(ssl);
  unsigned n = g_hooks->on_client_psk(
      e->owner, identity, (size_t)max_identity_len + 1, psk, max_psk_len);
  e->key_out |= n > 0;
  return n;
}

static unsigned server_psk_cb(SSL *ssl, const char *identity,
                              unsigned char *psk, unsigned max_psk_len) {
  m2mpsk_engine *e = SSL_get_app_data(ssl);
  unsigned n = g_hooks->on_server_psk(e->owner, identity ? identity : "", psk,
                                      max_psk_len);
  if (n > 0)
    e->psk_given = e->key_out = 1;
  return n;
}

static int server_name_cb(SSL *ssl, int *out_alert, void *arg) {
  (void)arg;
  m2mpsk_engine *e = SSL_get_app_data(ssl);
  const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (g_hooks->on_server_name(e->owner, host) != 0) {
    *out_alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

/* ---- DTLS cookies ----------------------------------------------------------
 */

/* HMAC-SHA-256(secret, len(tag) || tag || ClientHello.random). The tag is
 * the scratch engine's, or the association's (none counts as ""). */
static int make_cookie(SSL *ssl, uint8_t mac[32]) {
  const m2mpsk_engine *e = SSL_get_app_data(ssl);
  const m2mpsk_engine_ctx *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
  if (e == NULL || c == NULL || !e->have_random)
    return 0;
  const char *tag = e->listen_tag;
  if (tag == NULL && e->owner != NULL)
    tag = g_hooks->peer_tag(e->owner);
  if (tag == NULL)
    tag = "";
  size_t n = strlen(tag);
  uint8_t msg[1 + M2MPSK_PEER_TAG_MAX + 32];
  if (n > M2MPSK_PEER_TAG_MAX)
    return 0;
  msg[0] = (uint8_t)n;
  memcpy(msg + 1, tag, n);
  memcpy(msg + 1 + n, e->hello_random, 32);
  unsigned mac_len = 0;
  int ok = HMAC(EVP_sha256(), c->cookie_secret, COOKIE_SECRET_LEN, msg,
                1 + n + 32, mac, &mac_len) != NULL &&
           mac_len == 32;
  ERR_clear_error();
  return ok;
}

static int gen_cookie_cb(SSL *ssl, unsigned char *cookie,
                         unsigned int *cookie_len) {
  uint8_t mac[32];
  if (!make_cookie(ssl, mac))
    return 0;
  memcpy(cookie, mac, COOKIE_LEN);
  *cookie_len = COOKIE_LEN;
  OPENSSL_cleanse(mac, sizeof(mac));
  return 1;
}

static int verify_cookie_cb(SSL *ssl, const unsigned char *cookie,
                            unsigned int cookie_len) {
  uint8_t mac[32];
  int ok = cookie_len == COOKIE_LEN && make_cookie(ssl, mac) &&
           CRYPTO_memcmp(mac, cookie, COOKIE_LEN) == 0;
  OPENSSL_cleanse(mac, sizeof(mac));
  return ok;
}

/* ---- contexts ------------------------------------------------------------ */

static void ossl_ctx_free(m2mpsk_engine_ctx *ctx);

static int ossl_ctx_new(m2mpsk_engine_ctx **out, m2mpsk_role role,
                        m2mpsk_transport transport, const char *iana_names) {
  char list[1024];
  int rc = translate_suites(iana_names, list, sizeof(list));
  if (rc != M2MPSK_OK)
    return rc;
  if (bio_method() == NULL) {
    ERR_clear_error();
    return M2MPSK_E_NOMEM;
  }

  m2mpsk_engine_ctx *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return M2MPSK_E_NOMEM;
  c->dtls = transport == M2MPSK_TRANSPORT_DTLS;
  c->server = role == M2MPSK_ROLE_RESPONDER;
  c->ssl_ctx = SSL_CTX_new(c->dtls ? DTLS_method() : TLS_method());
  if (c->ssl_ctx == NULL) {
    ERR_clear_error();
    free(c);
    return M2MPSK_E_NOMEM;
  }
  SSL_CTX *s = c->ssl_ctx;
  int v = c->dtls ? DTLS1_2_VERSION : TLS1_2_VERSION;
  /* Security level 2 whatever the system's openssl.cnf says: every suite
   * above passes it, and a DHE_PSK initiator refuses groups under 2048
   * bits. The list names TLS 1.2 suites only; TLS 1.3's are emptied. */
  SSL_CTX_set_security_level(s, 2);
  if (!SSL_CTX_set_min_proto_version(s, v) ||
      !SSL_CTX_set_max_proto_version(s, v) ||
      !SSL_CTX_set_cipher_list(s, list) || !SSL_CTX_set_ciphersuites(s, "") ||
      (c->server && !SSL_CTX_set_dh_auto(s, 1))) {
    ERR_clear_error();
    SSL_CTX_free(s);
    free(c);
    return M2MPSK_E_INTERNAL;
  }
  /* Every association runs a full PSK handshake, so that the keystore
   * (validity, revocation) is consulted each time: no resumption, no
   * renegotiation, no compression. */
  SSL_CTX_set_options(s, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU |
                             SSL_OP_CIPHER_SERVER_PREFERENCE |
                             SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
  if (c->dtls && c->server) {
    if (RAND_bytes(c->cookie_secret, sizeof(c->cookie_secret)) != 1 ||
        !SSL_CTX_set_app_data(s, c)) {
      ERR_clear_error();
      ossl_ctx_free(c);
      return M2MPSK_E_INTERNAL;
    }
    SSL_CTX_set_options(s, SSL_OP_COOKIE_EXCHANGE);
    SSL_CTX_set_cookie_generate_cb(s, gen_cookie_cb);
    SSL_CTX_set_cookie_verify_cb(s, verify_cookie_cb);
  }
  if (c->server) {
    SSL_CTX_set_psk_server_callback(s, server_psk_cb);
    SSL_CTX_set_tlsext_servername_callback(s, server_name_cb);
  } else {
    SSL_CTX_set_psk_client_callback(s, client_psk_cb);
  }
  *out = c;
  return M2MPSK_OK;
}

static void ossl_ctx_free(m2mpsk_engine_ctx *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ssl_ctx);
  OPENSSL_cleanse(ctx->cookie_secret, sizeof(ctx->cookie_secret));
  free(ctx);
}

/* ---- connections --------------------------------------------------------- */

static int ossl_new(m2mpsk_engine **out, m2mpsk_engine_ctx *ctx,
                    m2mpsk_assoc *owner) {
  m2mpsk_engine *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return M2MPSK_E_NOMEM;
  e->owner = owner;
  e->dtls = ctx->dtls;
  e->server = ctx->server;
  e->ssl = SSL_new(ctx->ssl_ctx);
  BIO *bio = BIO_new(bio_method());
  if (e->ssl == NULL || bio == NULL) {
    BIO_free(bio);
    SSL_free(e->ssl);
    free(e);
    ERR_clear_error();
    return M2MPSK_E_NOMEM;
  }
  BIO_set_data(bio, e);
  SSL_set_bio(e->ssl, bio, bio);
  /* Storing the pointer may allocate; the callbacks rely on it. */
  if (!SSL_set_app_data(e->ssl, e)) {
    SSL_free(e->ssl);
    free(e);
    ERR_clear_error();
    return M2MPSK_E_NOMEM;
  }
  if (e->server)
    SSL_set_accept_state(e->ssl);
  else
    SSL_set_connect_state(e->ssl);
  if (e->dtls) {
    DTLS_set_timer_cb(e->ssl, timer_cb);
    SSL_set_mtu(e->ssl, 1400);
    e->listening = e->server;
  }
  *out = e;
  return M2MPSK_OK;
}

static void ossl_free(m2mpsk_engine *e) {
  if (e == NULL)
    return;
  SSL_free(e->ssl);
  free(e->in.p);
  free(e->out.p);
  free(e->last_flight.p);
  free(e);
}

static int ossl_set_mtu(m2mpsk_engine *e, unsigned mtu) {
  return SSL_set_mtu(e->ssl, (long)mtu) ? M2MPSK_OK : M2MPSK_E_INVALID;
}

static int ossl_set_server_name(m2mpsk_engine *e, const char *host) {
  /* SSL_set_tlsext_host_name() itself, whose cast drops const (clang's
   * -Wcast-qual): OpenSSL copies the name and never writes to it. */
  int ok = (int)SSL_ctrl(e->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME,
                         TLSEXT_NAMETYPE_host_name, (void *)(uintptr_t)host);
  ERR_clear_error();
  return ok ? M2MPSK_OK : M2MPSK_E_NOMEM;
}

/* Looks at a datagram's DTLS records (type, epoch) without trusting them:
 * a ChangeCipherSpec after the key exchange, then an epoch-1 handshake
 * record (the Finished), means the handshake should complete now. */
static void dtls_note_records(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  int psk_before = e->psk_given;
  int hs0 = 0;
  while (n >= 13) {
    uint8_t type = d[0];
    unsigned epoch = ((unsigned)d[3] << 8) | d[4];
    size_t len = ((size_t)d[11] << 8) | d[12];
    if (type == 22 && epoch == 0)
      hs0 = 1;
    if (type == 20 && epoch == 0 && (psk_before || hs0))
      e->ccs_seen = 1;
    if (type == 22 && epoch == 1 && e->ccs_seen)
      e->bad_finished = 1;
    if (len > n - 13)
      break;
    d += 13 + len;
    n -= 13 + len;
  }
}

static size_t ossl_buffered(const m2mpsk_engine *e) {
  return e->in.len;
}

/* Whether a datagram carries an epoch-0 ChangeCipherSpec: after the
 * handshake, the peer retransmitting the flight that ended it. */
static int has_ccs0(const uint8_t *d, size_t n) {
  while (n >= 13) {
    size_t len = ((size_t)d[11] << 8) | d[12];
    if (d[0] == 20 && d[3] == 0 && d[4] == 0)
      return 1;
    if (len > n - 13)
      break;
    d += 13 + len;
    n -= 13 + len;
  }
  return 0;
}

/* The DTLS responder's last flight was lost if the initiator retransmits
 * its own. OpenSSL answers only a retransmitted Finished, so a flight whose
 * Finished was lost again would go unanswered; the ChangeCipherSpec answers
 * it too, with our flight resent as it was. To the initiator that is a
 * duplicate: a record it has seen is dropped, one it lost is taken. */
static void resend_last_flight(m2mpsk_engine *e) {
  const bytebuf *f = &e->last_flight;
  if (f->len > 0 && buf_reserve(&e->out, f->len))
    buf_append(&e->out, f->p + f->off, f->len);
}

static int ossl_push(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  if (e->dtls) {
    if (e->server && !SSL_is_init_finished(e->ssl))
      dtls_note_records(e, data, len);
    else if (e->server && has_ccs0(data, len))
      resend_last_flight(e);
    return buf_push_datagram(&e->in, data, len) ? M2MPSK_OK : M2MPSK_E_NOMEM;
  }
  return buf_append(&e->in, data, len) ? M2MPSK_OK : M2MPSK_E_NOMEM;
}

static void set_failure(m2mpsk_engine *e, m2mpsk_reason reason,
                        const char *what, const char *name) {
  e->reason = reason;
  snprintf(e->detail, sizeof(e->detail), "%s%s%s", what, name ? ": " : "",
           name ? name : "");
}

/* Turns the TLS library's error into a reason. Must run right after the
 * failing call, on the same thread (the error queue is thread-local). */
static void classify(m2mpsk_engine *e, int ssl_error) {
  family_failure f = family_classify(ssl_error);
  if (e->nomem)
    set_failure(e, M2MPSK_REASON_INTERNAL, "out of memory buffering output",
                NULL);
  else if (e->stopped)
    set_failure(e, M2MPSK_REASON_INTERNAL, "association aborted", NULL);
  else
    set_failure(e, f.reason, f.what, f.name);
}

/* A DTLS responder's first step: DTLSv1_listen() answers a ClientHello
 * without a valid cookie with a HelloVerifyRequest and drops anything else;
 * for one with a valid cookie it returns 1, with the ClientHello buffered
 * for SSL_do_handshake() and the sequence numbers set to follow it. It
 * wants somewhere to put the peer's address, which our BIO does not have. */
static int listen_step(m2mpsk_engine *e) {
  BIO_ADDR *peer = BIO_ADDR_new();
  if (peer == NULL) {
    e->nomem = 1;
    return -1;
  }
  ERR_clear_error();
  int r = DTLSv1_listen(e->ssl, peer);
  BIO_ADDR_free(peer);
  if (r > 0)
    e->listening = 0;
  return r;
}

/* Whether the error queue holds an allocation failure. Empties it. */
static int malloc_failed(void) {
  unsigned long err;
  int found = 0;
  while ((err = ERR_get_error()) != 0)
    found |= ERR_GET_REASON(err) == ERR_R_MALLOC_FAILURE;
  return found;
}

static int ossl_handshake(m2mpsk_engine *e) {
  if (e->stopped) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_ENG_FAIL;
  }
  if (e->listening) {
    /* A HelloVerifyRequest that could not be made is like a lost one. */
    int r = listen_step(e);
    if (r < 0) {
      classify(e, SSL_ERROR_SSL);
      return M2MPSK_ENG_FAIL;
    }
    if (r == 0) {
      ERR_clear_error();
      return M2MPSK_ENG_WANT;
    }
  }
  ERR_clear_error();
  /* A DTLS responder's handshake ends in the call that writes its last
   * flight: keep a copy of what that call writes. */
  e->capture = e->dtls && e->server;
  buf_consume(&e->last_flight, e->last_flight.len);
  int r = SSL_do_handshake(e->ssl);
  e->capture = 0;
  if (e->key_out) {
    /* The key passed through frames below this one (family.h). */
    e->key_out = 0;
    family_burn_stack();
  }
  if (r == 1)
    return M2MPSK_ENG_DONE;
  buf_consume(&e->last_flight, e->last_flight.len);
  int err = SSL_get_error(e->ssl, r);
  if (err == SSL_ERROR_WANT_READ && !e->nomem) {
    ERR_clear_error();
    if (e->bad_finished && e->psk_given) {
      /* The peer's Finished arrived after its key exchange and did not
       * verify; DTLS dropped it silently. Say so instead of timing out. */
      set_failure(e, M2MPSK_REASON_BAD_KEY,
                  "peer's Finished did not verify (different keys)", NULL);
      ossl_abort(e, SSL_AD_DECRYPT_ERROR);
      return M2MPSK_ENG_FAIL;
    }
    e->bad_finished = 0;
    return M2MPSK_ENG_WANT;
  }
  classify(e, err);
  return M2MPSK_ENG_FAIL;
}

static size_t ossl_pending(const m2mpsk_engine *e) {
  return e->dtls ? buf_next_datagram(&e->out) : e->out.len;
}

static int ossl_drain(m2mpsk_engine *e, uint8_t *out, size_t cap,
                      size_t *out_len) {
  if (e->out.len == 0)
    return M2MPSK_E_AGAIN;
  if (e->dtls) {
    size_t n = buf_next_datagram(&e->out);
    if (n > cap)
      return M2MPSK_E_BUFFER;
    memcpy(out, e->out.p + e->out.off + 2, n);
    buf_consume(&e->out, n + 2);
    *out_len = n;
    return M2MPSK_OK;
  }
  size_t n = e->out.len < cap ? e->out.len : cap;
  memcpy(out, e->out.p + e->out.off, n);
  buf_consume(&e->out, n);
  *out_len = n;
  return M2MPSK_OK;
}

static int ossl_read(m2mpsk_engine *e, uint8_t *out, size_t cap,
                     size_t *out_len) {
  if (e->stopped) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_E_FAILED;
  }
  ERR_clear_error();
  int r = SSL_read(e->ssl, out, cap > INT_MAX ? INT_MAX : (int)cap);
  if (r > 0) {
    /* Data from the peer: it has our last flight. */
    buf_consume(&e->last_flight, e->last_flight.len);
    *out_len = (size_t)r;
    return M2MPSK_OK;
  }
  int err = SSL_get_error(e->ssl, r);
  if (err == SSL_ERROR_ZERO_RETURN) {
    ERR_clear_error();
    return M2MPSK_E_CLOSED;
  }
  if (err == SSL_ERROR_WANT_READ && !e->nomem) {
    ERR_clear_error();
    return M2MPSK_E_AGAIN;
  }
  classify(e, err);
  return M2MPSK_E_FAILED;
}

static int ossl_write(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  if (e->stopped) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_E_FAILED;
  }
  while (len > 0) {
    int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
    ERR_clear_error();
    int r = SSL_write(e->ssl, data, chunk);
    if (r <= 0) {
      int err = SSL_get_error(e->ssl, r);
      int nomem = e->nomem;
      classify(e, err);
      return nomem ? M2MPSK_E_NOMEM : M2MPSK_E_FAILED;
    }
    data += r;
    len -= (size_t)r;
  }
  return M2MPSK_OK;
}

static int ossl_close(m2mpsk_engine *e) {
  if (e->stopped)
    return M2MPSK_E_FAILED;
  ERR_clear_error();
  int r = SSL_shutdown(e->ssl);
  if (r < 0) {
    classify(e, SSL_get_error(e->ssl, r));
    return M2MPSK_E_FAILED;
  }
  return M2MPSK_OK;
}

/* OpenSSL cannot be told to send a fatal alert. While our records are
 * still plaintext, we write it ourselves; after that it would need the
 * session keys, and close_notify is what OpenSSL can send. */
static void ossl_abort(m2mpsk_engine *e, uint8_t alert) {
  if (e->stopped)
    return;
  e->stopped = 1;
  ERR_clear_error();
  if (!e->write_encrypted) {
    if (e->dtls) {
      uint8_t rec[15] = {21, 0xfe, 0xfd, 0, 0};
      for (int i = 0; i < 6; i++)
        rec[5 + i] = (uint8_t)(e->next_seq0 >> (8 * (5 - i)));
      rec[12] = 2;
      rec[13] = 2; /* fatal */
      rec[14] = alert;
      e->next_seq0++;
      (void)buf_push_datagram(&e->out, rec, sizeof(rec));
    } else {
      const uint8_t rec[7] = {21, 3, 3, 0, 2, 2, alert};
      (void)buf_append(&e->out, rec, sizeof(rec));
    }
  } else if (SSL_is_init_finished(e->ssl)) {
    (void)SSL_shutdown(e->ssl);
  }
  ERR_clear_error();
}

static int ossl_timer(const m2mpsk_engine *e, uint64_t *remaining_ms) {
  if (!e->dtls || e->stopped)
    return 0;
  if (!g_steer) {
    struct timeval tv;
    if (!DTLSv1_get_timeout(e->ssl, &tv))
      return 0;
    *remaining_ms =
        (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
    return 1;
  }
  if (!e->timer_on)
    return 0;
  *remaining_ms = e->deadline_ms > t_now_ms ? e->deadline_ms - t_now_ms : 0;
  return 1;
}

static int ossl_on_timer(m2mpsk_engine *e) {
  if (!e->dtls || e->stopped)
    return M2MPSK_OK;
  if (g_steer) {
    if (!e->timer_on || t_now_ms < e->deadline_ms || e->ossl_deadline == NULL)
      return M2MPSK_OK;
    /* Any non-zero time in the past: OpenSSL's timer has expired. */
    e->ossl_deadline->tv_sec = 0;
    e->ossl_deadline->tv_usec = 1;
  }
  ERR_clear_error();
  if (DTLSv1_handle_timeout(e->ssl) < 0) {
    classify(e, SSL_ERROR_SSL);
    return M2MPSK_E_FAILED;
  }
  ERR_clear_error();
  return M2MPSK_OK;
}

static const char *ossl_suite(const m2mpsk_engine *e) {
  const SSL_CIPHER *c = SSL_get_current_cipher(e->ssl);
  return c ? SSL_CIPHER_standard_name(c) : NULL;
}

static const char *ossl_version(const m2mpsk_engine *e) {
  return SSL_get_version(e->ssl);
}

static const char *ossl_psk_identity(const m2mpsk_engine *e) {
  return SSL_get_psk_identity(e->ssl);
}

static int ossl_export(const m2mpsk_engine *e, uint8_t *out, size_t out_len,
                       const char *label, const uint8_t *context,
                       size_t context_len) {
  ERR_clear_error();
  int ok =
      SSL_export_keying_material(e->ssl, out, out_len, label, strlen(label),
                                 context, context_len, context != NULL);
  ERR_clear_error();
  return ok == 1 ? M2MPSK_OK : M2MPSK_E_INTERNAL;
}

static m2mpsk_reason ossl_failure(m2mpsk_engine *e, char *detail,
                                  size_t detail_cap) {
  if (detail_cap > 0)
    snprintf(detail, detail_cap, "%s", e->detail);
  return e->reason;
}

/* The stateless exchange: a scratch engine on the responder DTLS context,
 * listening to one datagram, then freed. It keeps nothing of the peer. */
static int ossl_dtls_listen(m2mpsk_engine_ctx *ctx, const char *peer_tag,
                            const uint8_t *datagram, size_t len, uint8_t *out,
                            size_t cap, size_t *out_len) {
  if (!ctx->dtls || !ctx->server)
    return M2MPSK_E_INVALID;
  m2mpsk_engine *e;
  int rc = ossl_new(&e, ctx, NULL);
  if (rc != M2MPSK_OK)
    return rc;
  e->listen_tag = peer_tag;
  if (!buf_push_datagram(&e->in, datagram, len)) {
    ossl_free(e);
    return M2MPSK_E_NOMEM;
  }
  int r = listen_step(e);
  int nomem = malloc_failed() || e->nomem;
  size_t n = buf_next_datagram(&e->out);
  if (r > 0) {
    rc = M2MPSK_OK;
  } else if (r == 0 && e->out.len > 0) {
    if (n > cap) {
      rc = M2MPSK_E_BUFFER;
    } else {
      memcpy(out, e->out.p + e->out.off + 2, n);
      *out_len = n;
      rc = M2MPSK_E_AGAIN;
    }
  } else if (nomem) {
    rc = M2MPSK_E_NOMEM;
  } else {
    /* r == 0: dropped, not a ClientHello */
    rc = r == 0 ? M2MPSK_E_INVALID : M2MPSK_E_INTERNAL;
  }
  ossl_free(e);
  return rc;
}

static const m2mpsk_engine_ops k_ops = {
    .abi = M2MPSK_ENGINE_ABI,
    .backend_name = ossl_backend_name,
    .suite_count = ossl_suite_count,
    .suite_name = ossl_suite_name,
    .check_suites = ossl_check_suites,
    .default_suites = ossl_default_suites,
    .ctx_new = ossl_ctx_new,
    .ctx_free = ossl_ctx_free,
    .set_now = ossl_set_now,
    .engine_new = ossl_new,
    .engine_free = ossl_free,
    .set_mtu = ossl_set_mtu,
    .set_server_name = ossl_set_server_name,
    .push = ossl_push,
    .buffered = ossl_buffered,
    .handshake = ossl_handshake,
    .pending = ossl_pending,
    .drain = ossl_drain,
    .read = ossl_read,
    .write = ossl_write,
    .close = ossl_close,
    .abort = ossl_abort,
    .timer = ossl_timer,
    .on_timer = ossl_on_timer,
    .suite = ossl_suite,
    .version = ossl_version,
    .psk_identity = ossl_psk_identity,
    .export_keying = ossl_export,
    .failure = ossl_failure,
    .dtls_listen = ossl_dtls_listen,
};

/* Exported from the module (default visibility), and linked directly into
 * the static library used by the unit tests. */
__attribute__((visibility("default"))) const m2mpsk_engine_ops *
m2mpsk_tls_module(const m2mpsk_engine_hooks *hooks) {
  g_hooks = hooks;
  /* Steering needs dtls1_start_timer() to pass its own next_timeout field
   * (OpenSSL 3.0.x); built and running against that, or not at all. */
#if OPENSSL_VERSION_NUMBER < 0x30100000L
  unsigned long v = OpenSSL_version_num();
  g_steer = v >= 0x30000000UL && v < 0x30100000UL;
#else
  g_steer = 0;
#endif
  return &k_ops;
}
