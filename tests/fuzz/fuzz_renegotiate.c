/* An established association whose genuine peer is a raw OpenSSL 3 TLS
 * object, so that the peer can do what no m2mpsk association can make its
 * peer do: renegotiate inside the session, encrypted (a ClientHello from a
 * client, a HelloRequest from a server), and close with the library's own
 * shutdown. m2mpsk refuses renegotiation (SSL_OP_NO_RENEGOTIATION); this
 * target drives that refusal and whatever the peer does after it, in both
 * roles and transports. Built only with the OpenSSL backend, whose library
 * the peer uses (a BoringSSL peer cannot start a renegotiation).
 *
 * Input:  opts op*
 *   opts bit 0:    DTLS (else TLS)
 *   opts bit 1:    the fuzzed side is the responder (the peer is a client)
 *   opts bits 2-4: cipher suite index (mod the number of suites)
 *   op := code args, code taken mod 7:
 *     0 n bytes[n]      peer writes n bytes; delivered, the fuzzed side reads
 *     1 how             peer starts a renegotiation (how%2: abbreviated),
 *                       and the two exchange what they send, four times
 *     2 hi lo bytes     raw chunk (common.h format) fed to the fuzzed side
 *     3 cap             fuzzed side reads (cap%256 + 1) and is queried
 *     4 n bytes[n]      fuzzed side writes n bytes; the peer reads them
 *     5                 peer shuts down (close_notify); delivered
 *     6                 fuzzed side sends close_notify; the peer reads it
 * At most 64 ops. The peer's contexts are made once per process; its
 * randoms, like BoringSSL's, cannot be fixed (README.md, Determinism). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned client_psk(SSL *ssl, const char *hint, char *identity,
                           unsigned max_identity_len, unsigned char *psk,
                           unsigned max_psk_len) {
  (void)ssl;
  (void)hint;
  if (sizeof(FZ_KPSA_ID) > max_identity_len || sizeof(fz_key) > max_psk_len)
    return 0;
  memcpy(identity, FZ_KPSA_ID, sizeof(FZ_KPSA_ID));
  memcpy(psk, fz_key, sizeof(fz_key));
  return sizeof(fz_key);
}

static unsigned server_psk(SSL *ssl, const char *identity, unsigned char *psk,
                           unsigned max_psk_len) {
  (void)ssl;
  if (identity == NULL || strcmp(identity, FZ_KPSA_ID) != 0 ||
      sizeof(fz_key) > max_psk_len)
    return 0;
  memcpy(psk, fz_key, sizeof(fz_key));
  return sizeof(fz_key);
}

/* The peer's context per transport and role, made once. */
static SSL_CTX *peer_ctx(int dtls, int client) {
  static SSL_CTX *ctx[2][2];
  if (ctx[dtls][client] == NULL) {
    SSL_CTX *c = SSL_CTX_new(dtls ? DTLS_method() : TLS_method());
    fz_check(c != NULL, "SSL_CTX_new");
    int v = dtls ? DTLS1_2_VERSION : TLS1_2_VERSION;
    fz_check(SSL_CTX_set_min_proto_version(c, v) == 1 &&
                 SSL_CTX_set_max_proto_version(c, v) == 1,
             "protocol version");
    fz_check(SSL_CTX_set_cipher_list(c, "PSK:ECDHE-PSK") == 1, "cipher list");
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU);
    SSL_CTX_clear_options(c, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    if (client)
      SSL_CTX_set_psk_client_callback(c, client_psk);
    else
      SSL_CTX_set_psk_server_callback(c, server_psk);
    ctx[dtls][client] = c;
  }
  return ctx[dtls][client];
}

typedef struct pair {
  m2mpsk_assoc *me;
  SSL *peer;
  BIO *to_peer, *from_peer; /* the peer's read and write BIOs */
  int dtls;
  uint64_t now;
} pair;

/* Everything the peer wrote, to the fuzzed side: a TLS stream in one feed,
 * DTLS one record per datagram (a memory BIO keeps no datagram
 * boundaries; one record is a datagram as good as the peer's). */
static void peer_to_me(pair *p) {
  static uint8_t buf[65536];
  int n = BIO_read(p->from_peer, buf, sizeof(buf));
  if (n <= 0)
    return;
  if (!p->dtls) {
    fz_status(m2mpsk_assoc_feed(p->me, buf, (size_t)n, p->now), 0,
              "assoc_feed");
  } else {
    size_t at = 0;
    while (at + 13 <= (size_t)n) {
      size_t len = 13 + ((size_t)buf[at + 11] << 8 | buf[at + 12]);
      if (at + len > (size_t)n)
        len = (size_t)n - at;
      fz_status(m2mpsk_assoc_feed(p->me, buf + at, len, p->now), 0,
                "assoc_feed");
      at += len;
    }
  }
}

/* Everything the fuzzed side has to send, to the peer. */
static void me_to_peer(pair *p) {
  static uint8_t buf[17000];
  size_t n;
  for (int i = 0; i < 256; i++) {
    if (m2mpsk_assoc_drain(p->me, buf, sizeof(buf), &n) != M2MPSK_OK)
      break;
    (void)BIO_write(p->to_peer, buf, (int)n);
  }
}

/* The peer reads whatever arrived (and so answers handshake messages). */
static void peer_reads(pair *p) {
  uint8_t buf[512];
  for (int i = 0; i < 16; i++)
    if (SSL_read(p->peer, buf, sizeof(buf)) <= 0)
      break;
  ERR_clear_error();
}

static void me_reads(pair *p) {
  uint8_t buf[512];
  size_t n;
  for (int i = 0; i < 16; i++)
    if (m2mpsk_assoc_read(p->me, buf, sizeof(buf), &n) != M2MPSK_OK)
      break;
}

static int handshake(pair *p) {
  for (int step = 0; step < 32; step++) {
    if (m2mpsk_assoc_state(p->me) == M2MPSK_STATE_ESTABLISHED &&
        SSL_is_init_finished(p->peer))
      return 1;
    if (m2mpsk_assoc_state(p->me) == M2MPSK_STATE_FAILED)
      return 0;
    (void)SSL_do_handshake(p->peer);
    ERR_clear_error();
    peer_to_me(p);
    me_to_peer(p);
    p->now += 1;
  }
  return 0;
}

static void take(fz_reader *r, size_t n, const uint8_t **q, size_t *got) {
  if (n > r->left)
    n = r->left;
  *q = r->p;
  *got = n;
  r->p += n;
  r->left -= n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static m2mpsk_config *cfg[8][2];
  fz_reader r = {data, size};
  uint8_t opts = fz_byte(&r);
  pair p = {.dtls = opts & 1, .now = FZ_T0};
  int responder = (opts & 2) != 0;
  size_t suite = ((opts >> 2) & 7) % m2mpsk_suite_count();
  if (cfg[suite][responder] == NULL)
    cfg[suite][responder] = fz_cfg_with_suite(suite, responder);
  m2mpsk_transport t = p.dtls ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS;
  fz_check(m2mpsk_assoc_new(
               &p.me, responder ? M2MPSK_ROLE_RESPONDER : M2MPSK_ROLE_INITIATOR,
               t, cfg[suite][responder],
               responder ? fz_responder_ks() : fz_initiator_ks(),
               responder ? NULL : FZ_KPSA_ID) == M2MPSK_OK,
           "assoc_new");
  p.peer = SSL_new(peer_ctx(p.dtls, responder));
  p.to_peer = BIO_new(BIO_s_mem());
  p.from_peer = BIO_new(BIO_s_mem());
  fz_check(p.peer != NULL && p.to_peer != NULL && p.from_peer != NULL,
           "SSL_new");
  BIO_set_mem_eof_return(p.to_peer, -1);
  SSL_set_bio(p.peer, p.to_peer, p.from_peer);
  if (p.dtls)
    SSL_set_mtu(p.peer, 1400);
  if (responder) {
    char host[256];
    fz_check(m2mpsk_idb_server_name(FZ_IDB, host, sizeof(host)) == M2MPSK_OK,
             "server name");
    SSL_set_tlsext_host_name(p.peer, host);
    SSL_set_connect_state(p.peer);
  } else {
    SSL_set_accept_state(p.peer);
  }
  fz_check(m2mpsk_assoc_start(p.me, p.now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  me_to_peer(&p);
  fz_check(handshake(&p), "handshake with the OpenSSL peer");

  for (int ops = 0; ops < 64 && r.left > 0; ops++) {
    uint8_t code = fz_byte(&r) % 7;
    const uint8_t *q;
    size_t n, w;
    switch (code) {
    case 0:
      take(&r, fz_byte(&r), &q, &n);
      if (n > 0)
        (void)SSL_write(p.peer, q, (int)n);
      ERR_clear_error();
      peer_to_me(&p);
      me_reads(&p);
      break;
    case 1:
      if (fz_byte(&r) % 2)
        (void)SSL_renegotiate_abbreviated(p.peer);
      else
        (void)SSL_renegotiate(p.peer);
      (void)SSL_do_handshake(p.peer);
      ERR_clear_error();
      for (int i = 0; i < 4; i++) {
        peer_to_me(&p);
        me_reads(&p);
        me_to_peer(&p);
        peer_reads(&p);
        (void)SSL_do_handshake(p.peer);
        ERR_clear_error();
      }
      break;
    case 2: {
      fz_chunk c;
      if (fz_next_chunk(&r, &c)) {
        fz_status(m2mpsk_assoc_feed(p.me, c.data, c.len, p.now), 0,
                  "assoc_feed");
      }
      break;
    }
    case 3: {
      uint8_t buf[256];
      size_t cap = (size_t)fz_byte(&r) % 256 + 1, got;
      fz_status(m2mpsk_assoc_read(p.me, buf, cap, &got), 1, "assoc_read");
      fz_poke(p.me, buf, 0);
      break;
    }
    case 4:
      take(&r, fz_byte(&r), &q, &n);
      (void)m2mpsk_assoc_write(p.me, q, n, &w);
      me_to_peer(&p);
      peer_reads(&p);
      break;
    case 5:
      (void)SSL_shutdown(p.peer);
      ERR_clear_error();
      peer_to_me(&p);
      me_reads(&p);
      break;
    default:
      (void)m2mpsk_assoc_close(p.me);
      me_to_peer(&p);
      peer_reads(&p);
      break;
    }
    /* What the fuzzed side answers (alerts) goes to the peer. */
    me_to_peer(&p);
    p.now += 1;
  }
  fz_poke(p.me, (const uint8_t *)"end", 3);
  fz_debug(p.me, "end of input");
  m2mpsk_assoc_free(p.me);
  SSL_free(p.peer);
  ERR_clear_error();
  return 0;
}
