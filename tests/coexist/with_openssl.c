/* A C program linked against the system's OpenSSL 3 that uses it, runs
 * m2mpsk associations in both roles over TLS and DTLS, and uses OpenSSL
 * again. Built twice, with OpenSSL first and last on the link line. */
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

#include "handshake.h"

/* An OpenSSL TLS operation: a client writes its ClientHello into a memory
 * BIO. Returns the number of bytes, or -1. */
static int openssl_client_hello(void) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl = ctx ? SSL_new(ctx) : NULL;
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  if (ssl == NULL || rb == NULL || wb == NULL)
    return -1;
  SSL_set_bio(ssl, rb, wb);
  SSL_set_connect_state(ssl);
  (void)SSL_do_handshake(ssl);
  int n = (int)BIO_pending(wb);
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return n;
}

static int openssl_digest_ok(void) {
  unsigned char md[32];
  unsigned int len = 0;
  return EVP_Digest("abc", 3, md, &len, EVP_sha256(), NULL) == 1 && len == 32 &&
         md[0] == 0xba && md[31] == 0xad;
}

int main(void) {
  printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION));
  int hello = openssl_client_hello();
  if (hello <= 0 || !openssl_digest_ok()) {
    printf("FAIL OpenSSL before m2mpsk\n");
    return 1;
  }
  printf("OpenSSL ClientHello: %d bytes\n", hello);
  for (int t = 0; t < 2; t++) {
    char pa[600], pb[600];
    if (coexist_handshake((m2mpsk_transport)t, pa, pb, sizeof(pa)) != 0) {
      printf("FAIL m2mpsk %s handshake\n", t ? "DTLS" : "TLS");
      return 1;
    }
    printf("m2mpsk %s (backend %s): A bound %s, B bound %s\n",
           t ? "DTLS" : "TLS", m2mpsk_backend_name(), pa, pb);
  }
  if (openssl_client_hello() != hello || !openssl_digest_ok()) {
    printf("FAIL OpenSSL after m2mpsk\n");
    return 1;
  }
  printf("OpenSSL still works after m2mpsk\n");
  return 0;
}
