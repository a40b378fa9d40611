/* See phash.h. */
#include "phash.h"

#include <dlfcn.h>
#include <string.h>

#define PREFIX_MAX 1024
#define SEED_MAX 1024
#define KEY_MAX 64

int m2mt_hmac_load(m2mt_hmac *h) {
  memset(h, 0, sizeof(*h));
  void *lib = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL)
    return -1;
  *(void **)&h->hmac = dlsym(lib, "HMAC");
  *(void **)&h->sha256 = dlsym(lib, "EVP_sha256");
  *(void **)&h->sha384 = dlsym(lib, "EVP_sha384");
  return h->hmac && h->sha256 && h->sha384 ? 0 : -1;
}

int m2mt_p_hash(const m2mt_hmac *h, const char *digest, const uint8_t *prefix,
                size_t prefix_len, const uint8_t *key, size_t key_len,
                const uint8_t *seed, size_t seed_len, uint8_t *out,
                size_t out_len) {
  const void *md = strcmp(digest, "SHA384") == 0   ? h->sha384()
                   : strcmp(digest, "SHA256") == 0 ? h->sha256()
                                                   : NULL;
  if (md == NULL || prefix_len > PREFIX_MAX || key_len > KEY_MAX ||
      seed_len > SEED_MAX)
    return -1;
  uint8_t secret[PREFIX_MAX + KEY_MAX], a[64], buf[64 + SEED_MAX], block[64];
  memcpy(secret, prefix, prefix_len);
  memcpy(secret + prefix_len, key, key_len);
  int sl = (int)(prefix_len + key_len);
  unsigned hl = 0;
  int ok = h->hmac(md, secret, sl, seed, seed_len, a, &hl) != NULL; /* A(1) */
  for (size_t done = 0; ok && done < out_len;) {
    memcpy(buf, a, hl);
    memcpy(buf + hl, seed, seed_len);
    unsigned bl = 0;
    ok = h->hmac(md, secret, sl, buf, hl + seed_len, block, &bl) != NULL;
    size_t n = out_len - done < bl ? out_len - done : bl;
    memcpy(out + done, block, n);
    done += n;
    ok = ok && h->hmac(md, secret, sl, a, hl, a, &hl) != NULL; /* A(i+1) */
  }
  explicit_bzero(secret, sizeof(secret));
  explicit_bzero(buf, sizeof(buf));
  explicit_bzero(block, sizeof(block));
  explicit_bzero(a, sizeof(a));
  return ok ? 0 : -1;
}
