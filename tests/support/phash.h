/* A stand-in token's arithmetic, for the token-key tests: RFC 5246 §5
 * P_hash(prefix || key, seed) with OpenSSL's HMAC, from libcrypto.so.3
 * loaded RTLD_LOCAL so that its symbols never meet the engine modules'
 * (a sanitizer build loads those without RTLD_DEEPBIND). */
#ifndef M2MPSK_TEST_PHASH_H
#define M2MPSK_TEST_PHASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct m2mt_hmac {
  unsigned char *(*hmac)(const void *md, const void *key, int key_len,
                         const unsigned char *d, size_t n, unsigned char *out,
                         unsigned *out_len);
  const void *(*sha256)(void);
  const void *(*sha384)(void);
} m2mt_hmac;

/* Loads HMAC, EVP_sha256 and EVP_sha384; 0, or -1 when libcrypto.so.3 or
 * one of them is missing. */
int m2mt_hmac_load(m2mt_hmac *h);

/* The first out_len bytes of P_<digest>(prefix || key, seed), digest
 * "SHA256" or "SHA384"; prefix and seed at most 1024 bytes, key at most
 * 64. 0, or -1 (another digest, a length out of range, HMAC failed). */
int m2mt_p_hash(const m2mt_hmac *h, const char *digest, const uint8_t *prefix,
                size_t prefix_len, const uint8_t *key, size_t key_len,
                const uint8_t *seed, size_t seed_len, uint8_t *out,
                size_t out_len);

#endif
