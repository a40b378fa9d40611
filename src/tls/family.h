/* What the two backends share: BoringSSL keeps OpenSSL's API, so suite
 * name translation and reading a failure out of the error queue are the
 * same code for both. Static functions, compiled into each backend module;
 * included only by src/tls/<backend>.c, after <openssl/ssl.h> and
 * <openssl/err.h> of its own TLS library. */
#ifndef M2MPSK_TLS_FAMILY_H
#define M2MPSK_TLS_FAMILY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "m2mpsk/m2mpsk.h"

/* An IANA suite name and the TLS library's name for it. */
typedef struct suite_name {
  const char *iana;
  const char *backend;
} suite_name;

static const char *family_backend_suite(const suite_name *t, size_t n,
                                        const char *iana, size_t len) {
  for (size_t i = 0; i < n; i++) {
    if (strlen(t[i].iana) == len && memcmp(t[i].iana, iana, len) == 0)
      return t[i].backend;
  }
  return NULL;
}

/* Translates a colon-separated IANA list into the library's names through
 * table `t` (n entries); out may be NULL to check only.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (empty list or name, no room) or
 * M2MPSK_E_SUITE (a name not in the table). */
static int family_translate_suites(const suite_name *t, size_t n,
                                   const char *iana, char *out, size_t cap) {
  if (iana == NULL || *iana == '\0')
    return M2MPSK_E_INVALID;
  size_t used = 0;
  const char *p = iana;
  for (;;) {
    const char *end = strchr(p, ':');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 0)
      return M2MPSK_E_INVALID;
    const char *name = family_backend_suite(t, n, p, len);
    if (name == NULL)
      return M2MPSK_E_SUITE;
    if (out != NULL) {
      size_t k = strlen(name);
      if (used + k + 2 > cap)
        return M2MPSK_E_INVALID;
      if (used > 0)
        out[used++] = ':';
      memcpy(out + used, name, k + 1);
      used += k;
    }
    if (end == NULL)
      return M2MPSK_OK;
    p = end + 1;
  }
}

/* A failure as the TLS library reported it: a reason and a detail made of
 * two static strings, "what" and (when not NULL) "name". */
typedef struct family_failure {
  m2mpsk_reason reason;
  const char *what;
  const char *name;
} family_failure;

/* Takes the thread's error queue after a call failed with `ssl_error`
 * (SSL_get_error()), says what it means, and leaves the queue empty. Must
 * run right after the failing call, on the same thread. */
static family_failure family_classify(int ssl_error) {
  /* A cipher error (BAD_DECRYPT) may come first; the SSL-level reason
   * that follows it says what it means for the protocol. */
  unsigned long code = ERR_peek_error(), err;
  while ((err = ERR_get_error()) != 0) {
    if (ERR_GET_LIB(err) == ERR_LIB_SSL) {
      code = err;
      break;
    }
  }
  ERR_clear_error();
  if (code == 0 || ERR_GET_LIB(code) != ERR_LIB_SSL) {
    const char *why = code ? ERR_reason_error_string(code) : NULL;
    return (family_failure){ssl_error == SSL_ERROR_SYSCALL
                                ? M2MPSK_REASON_PROTOCOL
                                : M2MPSK_REASON_INTERNAL,
                            "TLS library error", why ? why : "unexpected end"};
  }
  int r = ERR_GET_REASON(code);
  if (r >= SSL_AD_REASON_OFFSET && r < SSL_AD_REASON_OFFSET + 256) {
    int alert = r - SSL_AD_REASON_OFFSET;
    const char *name = SSL_alert_desc_string_long(alert);
    switch (alert) {
    case SSL_AD_BAD_RECORD_MAC:
    case SSL_AD_DECRYPT_ERROR:
      return (family_failure){M2MPSK_REASON_BAD_KEY, "peer sent fatal alert",
                              name};
    case SSL_AD_UNKNOWN_PSK_IDENTITY:
      return (family_failure){M2MPSK_REASON_UNKNOWN_IDENTITY,
                              "peer sent fatal alert", name};
    case SSL_AD_UNRECOGNIZED_NAME:
      return (family_failure){M2MPSK_REASON_ID_MISMATCH,
                              "peer sent fatal alert", name};
    case SSL_AD_HANDSHAKE_FAILURE:
      return (family_failure){M2MPSK_REASON_PEER_ALERT,
                              "peer sent fatal alert: handshake failure "
                              "(often no shared cipher suite)",
                              NULL};
    default:
      return (family_failure){M2MPSK_REASON_PEER_ALERT, "peer sent fatal alert",
                              name};
    }
  }
  switch (r) {
  case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
#ifdef SSL_R_DECRYPTION_FAILED
  case SSL_R_DECRYPTION_FAILED:
#endif
  case SSL_R_DIGEST_CHECK_FAILED:
    return (family_failure){
        M2MPSK_REASON_BAD_KEY,
        "peer's Finished or record did not verify (different keys)", NULL};
  case SSL_R_NO_SHARED_CIPHER:
    return (family_failure){
        M2MPSK_REASON_PROTOCOL,
        "no shared cipher suite: the peer offered none we enable", NULL};
  case SSL_R_PSK_IDENTITY_NOT_FOUND:
    return (family_failure){M2MPSK_REASON_UNKNOWN_IDENTITY,
                            "no key for identity", NULL};
  case SSL_R_READ_TIMEOUT_EXPIRED:
    return (family_failure){M2MPSK_REASON_TIMEOUT,
                            "too many DTLS retransmissions", NULL};
  default:
    return (family_failure){M2MPSK_REASON_PROTOCOL, "protocol error",
                            ERR_reason_error_string(code)};
  }
}

/* ---- the key's residue on the stack ------------------------------------
 *
 * During the call that hands Kpsa to the TLS library, copies of it land on
 * the calling thread's stack, below our frame: the library's own PSK
 * buffer, temporaries of its premaster and PRF code, and vector registers that
 * glibc's lazy symbol binding or a signal frame saves there while they still
 * hold key bytes. They outlive the call in dead frames until something
 * overwrites them, and a core dump would carry them. Measured before this
 * existed: two 32-byte copies 3 KiB below the handshake call with BoringSSL,
 * three with OpenSSL 3.0, still there after every object was freed and the
 * thread had exited.
 *
 * So after any call in which a PSK callback gave out the key, the backend
 * calls family_burn_stack(), whose own frame covers the dead frames that
 * call left (it is called from the same frame, so its array starts where
 * the library's frames did) and wipes them. FAMILY_STACK_BURN bounds the
 * depth: measured from a thread's entry, a whole handshake (both sides,
 * frees included) writes at most 6.3 KiB of stack with BoringSSL and 8.3
 * KiB with OpenSSL 3.0, so 16 KiB leaves a margin; tests/test_hygiene.c
 * checks that no copy survives, per backend, transport and key exchange. Once
 * per handshake per side; 16 KiB cost 0.12 us here with the stack in cache. */
#ifndef FAMILY_STACK_BURN
#define FAMILY_STACK_BURN 16384
#endif

__attribute__((noinline)) static void family_burn_stack(void) {
  unsigned char dead[FAMILY_STACK_BURN];
  OPENSSL_cleanse(dead, sizeof(dead));
  /* Keep the array, and the wipe, from being optimised away. */
  __asm__ __volatile__("" : : "r"(dead) : "memory");
}

/* ---- the engine's common fields ----------------------------------------- */

/* The per-record path is grouped (.text.hot) so that it spans few
 * instruction-cache lines between the TLS library's own; failure handling
 * is kept out of its way. */
#define HOT __attribute__((hot))
#define COLD __attribute__((cold))

/* Room inside the engine for one small record in flight, in whichever
 * direction needs it: a 64-byte message in a CBC-SHA1 record takes 117
 * bytes over TLS, 127 over DTLS with its length prefix. Small messages,
 * most of M2M traffic, then cost no allocation per record. */
enum { SMALL_BUF = 128 };

typedef struct bytebuf {
  uint8_t *p;
  size_t off; /* start of unread data */
  size_t len; /* bytes of unread data */
  size_t cap;
} bytebuf;

#define FAMILY_CTX_FIELDS                                                      \
  SSL_CTX *ssl_ctx;                                                            \
  int dtls;                                                                    \
  int server

/* The failure detail is "what: name", both static strings (literals, or
 * the TLS library's tables of alert and reason names): formatted only when
 * asked for, so that an association carries no text buffer. */
#define FAMILY_ENGINE_FIELDS                                                   \
  SSL *ssl;                                                                    \
  m2mpsk_assoc *owner;                                                         \
  bytebuf in;                                                                  \
  bytebuf out;                                                                 \
  const char *what;                                                            \
  const char *name;                                                            \
  m2mpsk_reason reason;                                                        \
  uint8_t dtls;                                                                \
  uint8_t server;                                                              \
  uint8_t nomem;                                                               \
  uint8_t stopped;     /* abort() ran: nothing more from the library */        \
  uint8_t established; /* the handshake completed: release emptied buffers */  \
  /* DTLS responder: a Finished that fails its MAC is dropped silently by      \
   * DTLS, so a wrong key would look like loss. These spot it. */              \
  uint8_t psk_given;                                                           \
  uint8_t key_out; /* a PSK callback gave out the key in this call */          \
  uint8_t ccs_seen;                                                            \
  uint8_t bad_finished;                                                        \
  uint8_t small[SMALL_BUF] /* in.p or out.p, at most one of them */

#endif /* M2MPSK_TLS_FAMILY_H */
