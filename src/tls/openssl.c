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
 * schedule into the engine; dtls1_start_timer() reports each (re)start
 * through BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT, which arms our deadline on the
 * injected clock and moves OpenSSL's own deadline out of reach of any
 * system clock (through the pointer that control passes: OpenSSL 3.0 passes
 * &s->d1->next_timeout itself), so that its wall-clock timer never fires;
 * and when our deadline passes, on_timer marks OpenSSL's timer expired
 * through the same pointer before DTLSv1_handle_timeout(). That pointer is
 * only used where it is known to be the field: OpenSSL 3.0.x, checked at
 * build and run time (3.2 passes a copy on its stack). Anywhere else the
 * backend falls back to OpenSSL's own wall-clock timer, reported through
 * DTLSv1_get_timeout(): the exception include/m2mpsk/m2mpsk.h states, and
 * tests/test_clock.c fails there.
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
#include <stdint.h>
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

/* While we steer: the duration OpenSSL's own timer is started with (an
 * hour), and the deadline it is then moved to (some 34,000 years after
 * 1970), so that no system clock, however it jumps, expires it. */
#define WALL_TIMER_US 3600000000u
#define WALL_FAR ((time_t)1 << 40)

/* DTLS cookies: the length sent, and the secret they are made with. */
#define COOKIE_LEN 16
#define COOKIE_SECRET_LEN 32

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

struct m2mpsk_engine_ctx {
  FAMILY_CTX_FIELDS;
  /* DTLS responder: drawn at creation, wiped at free; never rotated. */
  uint8_t cookie_secret[COOKIE_SECRET_LEN];
  /* For token keys (openssl_prf.h): the context in the provider's library
   * context, made on first use from the same suite list. */
  _Atomic(SSL_CTX *) token_ssl_ctx;
  char *suites;
};

struct m2mpsk_engine {
  FAMILY_ENGINE_FIELDS;
  /* The flags first, in the bytes after the family's small area: every
   * byte of an established association counts (tests/bench/README.md). */
  /* What we sent: whether our records are encrypted yet (below: the next
   * epoch-0 DTLS sequence number, for an alert of our own). TLS records
   * are followed across writes: out_hdr collects a header, out_skip is
   * what is left of the current record's body. */
  uint8_t write_encrypted;
  uint8_t out_hdr[5];
  uint8_t timer_on; /* DTLS retransmission timer on the caller's clock */
  /* DTLS responder: capture the flight that completes the handshake. */
  uint8_t capture;
  /* DTLS responder, until a ClientHello with a valid cookie: every
   * handshake step goes through DTLSv1_listen() (listen_tag and
   * hello_random below). */
  uint8_t listening;
  uint8_t have_random;
  uint8_t rested; /* ossl_rest() freed the record buffers */
  uint32_t duration_ms;
  uint64_t next_seq0;
  size_t out_hdr_len;
  size_t out_skip;
  uint64_t deadline_ms;
  struct timeval *ossl_deadline; /* OpenSSL's own, when g_steer */
  /* DTLS responder: the flight that completed the handshake (datagrams,
   * as sent), kept until the peer shows it has it (see ossl_push). */
  bytebuf last_flight;
  /* While listening: listen_tag is the scratch engine's peer tag
   * (ossl_dtls_listen), else the owner's is asked for; hello_random is
   * the random of the last ClientHello read, which the cookie covers. */
  const char *listen_tag;
  uint8_t hello_random[32];
};

#include "common.h"
#include "openssl_prf.h"

static const char *ossl_backend_name(void) {
  return "openssl";
}

/* The plain-PSK suites, mandated ones first. */
static const char *ossl_default_suites(void) {
  return "TLS_PSK_WITH_AES_128_CBC_SHA256:TLS_PSK_WITH_AES_128_CCM_8:"
         "TLS_PSK_WITH_AES_128_CBC_SHA:TLS_PSK_WITH_AES_256_CBC_SHA:"
         "TLS_PSK_WITH_AES_256_CBC_SHA384:TLS_PSK_WITH_AES_128_GCM_SHA256:"
         "TLS_PSK_WITH_AES_256_GCM_SHA384:TLS_PSK_WITH_AES_128_CCM:"
         "TLS_PSK_WITH_AES_256_CCM:TLS_PSK_WITH_AES_256_CCM_8";
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

/* ---- what our BIO does beyond the common one ---------------------------- */

/* A ClientHello in its first fragment: record header (13 bytes), handshake
 * header (12), client_version (2), then the random. DTLSv1_listen() checks
 * the rest before it asks for a cookie. */
static void note_hello_random(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  e->have_random = n >= 13 + 12 + 2 + 32 && d[0] == 22 && d[13] == 1;
  if (e->have_random)
    memcpy(e->hello_random, d + 13 + 12 + 2, 32);
}

static void backend_on_read(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  if (e->listening)
    note_hello_random(e, d, n);
}

static void backend_on_write(m2mpsk_engine *e, const uint8_t *d, size_t n) {
  if (e->dtls) {
    note_sent_datagram(e, d, n);
    if (e->capture && !buf_push_datagram(e, &e->last_flight, d, n))
      e->capture = 0; /* only a retransmission aid: go without */
  } else
    note_sent_stream(e, d, n);
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
  if (g_steer) {
    tv->tv_sec = WALL_FAR;
    tv->tv_usec = 0;
    e->ossl_deadline = tv;
  }
}

static long backend_ctrl(m2mpsk_engine *e, int cmd, void *parg) {
  if (cmd != BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT)
    return 0;
  if (e->dtls)
    timer_event(e, parg);
  return 1;
}

/* Data from the peer: it has our last flight. */
static void backend_on_data(m2mpsk_engine *e) {
  buf_consume(e, &e->last_flight, e->last_flight.len);
}

/* ---- clock --------------------------------------------------------------- */

/* OpenSSL's schedule (RFC 6347 §4.2.4.1): 1 s, doubling, at most 60 s.
 * prev_us is 0 when a timer starts afresh. */
static unsigned int timer_cb(SSL *ssl, unsigned int prev_us) {
  m2mpsk_engine *e = engine_of(ssl);
  if (prev_us == 0 || e->duration_ms == 0)
    e->duration_ms = 1000;
  else if ((e->duration_ms *= 2) > 60000)
    e->duration_ms = 60000;
  return g_steer ? WALL_TIMER_US : e->duration_ms * 1000u;
}

/* ---- DTLS cookies -------------------------------------------------------- */

/* HMAC-SHA-256(secret, len(tag) || tag || ClientHello.random). The tag is
 * the scratch engine's, or the association's (none counts as ""). */
static int make_cookie(SSL *ssl, uint8_t mac[32]) {
  const m2mpsk_engine *e = engine_of(ssl);
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

/* ---- contexts and connections -------------------------------------------- */

static int backend_ctx_setup(m2mpsk_engine_ctx *c, SSL_CTX *s,
                             const char *list) {
  /* Security level 2 whatever the system's openssl.cnf says: every suite
   * above passes it, and a DHE_PSK initiator refuses groups under 2048
   * bits. The list names TLS 1.2 suites only; TLS 1.3's are emptied. */
  SSL_CTX_set_security_level(s, 2);
  if (!SSL_CTX_set_cipher_list(s, list) || !SSL_CTX_set_ciphersuites(s, "") ||
      (c->server && !SSL_CTX_set_dh_auto(s, 1)))
    return M2MPSK_E_INTERNAL;
  /* No renegotiation, no compression either. */
  SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
  /* The first context: keep its list for a token context (made later,
   * openssl_prf.h), which shares the cookie secret drawn here. */
  int first = c->suites == NULL;
  if (first && (c->suites = strdup(list)) == NULL)
    return M2MPSK_E_NOMEM;
  if (c->dtls && c->server) {
    if ((first &&
         RAND_bytes(c->cookie_secret, sizeof(c->cookie_secret)) != 1) ||
        !SSL_CTX_set_app_data(s, c))
      return M2MPSK_E_INTERNAL;
    SSL_CTX_set_options(s, SSL_OP_COOKIE_EXCHANGE);
    SSL_CTX_set_cookie_generate_cb(s, gen_cookie_cb);
    SSL_CTX_set_cookie_verify_cb(s, verify_cookie_cb);
  }
  return M2MPSK_OK;
}

static void backend_ctx_clear(m2mpsk_engine_ctx *c) {
  OPENSSL_cleanse(c->cookie_secret, sizeof(c->cookie_secret));
  SSL_CTX_free(atomic_load(&c->token_ssl_ctx));
  free(c->suites);
}

static int backend_engine_setup(m2mpsk_engine *e) {
  if (e->dtls) {
    DTLS_set_timer_cb(e->ssl, timer_cb);
    e->listening = e->server;
  }
  return M2MPSK_OK;
}

static void backend_engine_clear(m2mpsk_engine *e) {
  buf_release(e, &e->last_flight);
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
  if (f->len > 0 && buf_reserve(e, &e->out, f->len))
    buf_append(e, &e->out, f->p + f->off, f->len);
}

static int ossl_push(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  if (e->dtls && e->server && SSL_is_init_finished(e->ssl) &&
      has_ccs0(data, len))
    resend_last_flight(e);
  return fam_push(e, data, len);
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

/* Back from a wait for a key (ossl_rest): the record buffers again,
 * before anything can make OpenSSL read or write a record (a handshake
 * step, a retransmission). 0, the failure set, without memory. */
static int ossl_wake(m2mpsk_engine *e) {
  if (!e->rested)
    return 1;
  if (!SSL_alloc_buffers(e->ssl)) {
    ERR_clear_error();
    set_failure(e, M2MPSK_REASON_INTERNAL,
                "out of memory restoring the record buffers", NULL);
    return 0;
  }
  e->rested = 0;
  return 1;
}

static int backend_handshake_begin(m2mpsk_engine *e) {
  if (!ossl_wake(e))
    return M2MPSK_ENG_FAIL;
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
  /* A DTLS responder's handshake ends in the call that writes its last
   * flight: keep a copy of what that call writes. */
  e->capture = e->dtls && e->server;
  buf_consume(e, &e->last_flight, e->last_flight.len);
  t_current = e; /* for a token key's master secret (openssl_prf.h) */
  return BEGIN_GO_ON;
}

/* The last flight stays until the peer shows it has it: in an established
 * DTLS responder that hears nothing more, for its whole life. It takes no
 * more room than its bytes (a CCS and a Finished: about 100), not the
 * BUF_MIN it was collected in. */
static void last_flight_fit(m2mpsk_engine *e) {
  bytebuf *b = &e->last_flight;
  if (b->len == 0) {
    buf_release(e, b);
    return;
  }
  if (b->off != 0 || b->cap <= b->len)
    return;
  uint8_t *p = realloc(b->p, b->len);
  if (p != NULL) {
    b->p = p;
    b->cap = b->len;
  }
}

static void backend_handshake_end(m2mpsk_engine *e, int r) {
  t_current = NULL;
  e->capture = 0;
  if (r != 1)
    buf_consume(e, &e->last_flight, e->last_flight.len);
  else
    last_flight_fit(e);
}

/* OpenSSL cannot be told to send a fatal alert. While our records are
 * still plaintext, we write it ourselves; after that it would need the
 * session keys, and close_notify is what OpenSSL can send. */
static void engine_abort(m2mpsk_engine *e, uint8_t alert) {
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
      (void)buf_push_datagram(e, &e->out, rec, sizeof(rec));
    } else {
      const uint8_t rec[7] = {21, 3, 3, 0, 2, 2, alert};
      (void)buf_append(e, &e->out, rec, sizeof(rec));
    }
  } else if (SSL_is_init_finished(e->ssl)) {
    (void)SSL_shutdown(e->ssl);
  }
  ERR_clear_error();
}

static int ossl_timer(const m2mpsk_engine *e, uint64_t *remaining_ms) {
  if (!g_steer)
    return fam_library_timer(e, remaining_ms);
  if (!e->dtls || e->stopped || !e->timer_on)
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
  /* A flight held back through the wait may not have reached OpenSSL (a
   * datagram dropped for want of memory): the retransmission writes. */
  if (!ossl_wake(e))
    return M2MPSK_E_FAILED;
  return fam_handle_timeout(e);
}

/* The stateless exchange: a scratch engine on the responder DTLS context,
 * listening to one datagram, then freed. It keeps nothing of the peer. */
static int ossl_dtls_listen(m2mpsk_engine_ctx *ctx, const char *peer_tag,
                            const uint8_t *datagram, size_t len, uint8_t *out,
                            size_t cap, size_t *out_len) {
  if (!ctx->dtls || !ctx->server)
    return M2MPSK_E_INVALID;
  m2mpsk_engine *e;
  int rc = fam_new(&e, ctx, NULL);
  if (rc != M2MPSK_OK)
    return rc;
  e->listen_tag = peer_tag;
  if (!buf_push_datagram(e, &e->in, datagram, len)) {
    fam_free(e);
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
  fam_free(e);
  return rc;
}

/* A DTLS responder waiting for a key holds OpenSSL's read and write
 * buffers (about 17 KiB each): SSL_MODE_RELEASE_BUFFERS frees them only
 * for TLS. Nothing is in them between flights, and the association holds
 * the client's flight back until the key comes; ossl_wake() gets them
 * back before OpenSSL reads it or retransmits. Measured by test_keysource
 * (waiting_responder_holds_no_record_buffers): 76 KB held per waiting
 * DTLS responder before, 41 KB after, about what a TLS one holds. */
static void ossl_rest(m2mpsk_engine *e) {
  if (e->in.len == 0)
    buf_release(e, &e->in);
  if (e->out.len == 0)
    buf_release(e, &e->out);
  /* TLS: SSL_MODE_RELEASE_BUFFERS has freed them already. */
  if (e->dtls && !e->rested && !e->stopped && SSL_free_buffers(e->ssl))
    e->rested = 1;
}

static const m2mpsk_engine_ops k_ops = {
    FAMILY_OPS,
    .backend_name = ossl_backend_name,
    .default_suites = ossl_default_suites,
    .push = ossl_push,
    .abort = engine_abort,
    .timer = ossl_timer,
    .on_timer = ossl_on_timer,
    .dtls_listen = ossl_dtls_listen,
    .token_keys = 1,
    .rest = ossl_rest,
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
