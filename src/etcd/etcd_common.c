/* The etcd URL, the KEK file, the record format and blocking calls to
 * etcd's v3 JSON gateway, shared by the sync thread and `m2mpsk keys`. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "etcd_internal.h"
#include "etcd_keys.h"

void etcd_say(char *err, size_t cap, const char *fmt, ...) {
  if (err == NULL || cap == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  /* Reasons may quote what a server said: no control bytes to a log or
   * a terminal. */
  etcd_printable(err);
}

void etcd_printable(char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      *s = '?';
}

int m2mpsk_etcd_is_url(const char *spec) {
  return spec != NULL && strncmp(spec, "etcd://", 7) == 0;
}

/* ---- URL ------------------------------------------------------------- */

int etcd_url_parse(const char *url, etcd_url *out, char *err, size_t cap) {
  memset(out, 0, sizeof(*out));
  if (url == NULL || strncmp(url, "etcd://", 7) != 0) {
    etcd_say(err, cap,
             "not an etcd URL (etcd://HOST:PORT[,HOST:PORT...]/PREFIX)");
    return M2MPSK_E_INVALID;
  }
  const char *hosts = url + 7, *slash = strchr(hosts, '/');
  if (slash == NULL || slash == hosts) {
    etcd_say(err, cap, "%s: no HOST:PORT before /PREFIX", url);
    return M2MPSK_E_INVALID;
  }
  const char *p = hosts;
  while (p < slash) {
    const char *comma = memchr(p, ',', (size_t)(slash - p));
    const char *end = comma ? comma : slash;
    size_t n = (size_t)(end - p);
    const char *colon = NULL;
    for (const char *q = p; q < end; q++)
      if (*q == ':')
        colon = q;
    if (n == 0 || colon == NULL || colon == p || colon + 1 == end || n > 64) {
      etcd_say(err, cap, "%s: endpoint '%.*s' is not HOST:PORT", url, (int)n,
               p);
      return M2MPSK_E_INVALID;
    }
    for (const char *q = colon + 1; q < end; q++) {
      if (*q < '0' || *q > '9') {
        etcd_say(err, cap, "%s: endpoint '%.*s' has a bad port", url, (int)n,
                 p);
        return M2MPSK_E_INVALID;
      }
    }
    long port = strtol(colon + 1, NULL, 10);
    if (port < 1 || port > 65535 || end - colon > 6) {
      etcd_say(err, cap, "%s: endpoint '%.*s' has a bad port", url, (int)n, p);
      return M2MPSK_E_INVALID;
    }
    for (const char *q = p; q < colon; q++) {
      /* Host names and IPv4 (and bracketed IPv6) only: nothing that
       * changes the meaning of the http:// URL built from it. */
      if (!(*q == '.' || *q == '-' || *q == '[' || *q == ']' || *q == ':' ||
            (*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'z') ||
            (*q >= 'A' && *q <= 'Z'))) {
        etcd_say(err, cap, "%s: endpoint '%.*s' has a bad host", url, (int)n,
                 p);
        return M2MPSK_E_INVALID;
      }
    }
    if (out->n == ETCD_MAX_ENDPOINTS) {
      etcd_say(err, cap, "%s: more than %d endpoints", url, ETCD_MAX_ENDPOINTS);
      return M2MPSK_E_INVALID;
    }
    snprintf(out->base[out->n++], sizeof(out->base[0]), "http://%.*s", (int)n,
             p);
    p = comma ? comma + 1 : slash;
    if (comma && p == slash) {
      etcd_say(err, cap, "%s: empty endpoint", url);
      return M2MPSK_E_INVALID;
    }
  }
  const char *prefix = slash + 1;
  size_t plen = strlen(prefix);
  while (plen > 0 && prefix[plen - 1] == '/')
    plen--;
  if (plen == 0 || plen > ETCD_PREFIX_MAX) {
    etcd_say(err, cap, "%s: the PREFIX must be 1 to %d bytes", url,
             ETCD_PREFIX_MAX);
    return M2MPSK_E_INVALID;
  }
  for (size_t i = 0; i < plen; i++) {
    unsigned char ch = (unsigned char)prefix[i];
    if (ch <= ' ' || ch >= 0x7f) {
      etcd_say(err, cap, "%s: the PREFIX has a space or control byte", url);
      return M2MPSK_E_INVALID;
    }
  }
  memcpy(out->prefix, prefix, plen);
  out->prefix[plen] = '\0';
  out->keys_prefix_len = (size_t)snprintf(
      out->keys_prefix, sizeof(out->keys_prefix), "/%s/keys/", out->prefix);
  return M2MPSK_OK;
}

/* ---- KEK --------------------------------------------------------------- */

int etcd_kek_load(const char *path, uint8_t kek[ETCD_KEK_BYTES], char *err,
                  size_t cap) {
  if (path == NULL) {
    etcd_say(err, cap, "no KEK file (--kek FILE)");
    return M2MPSK_E_IO;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    etcd_say(err, cap, "KEK file %s: %s", path, strerror(errno));
    if (fd >= 0)
      close(fd);
    return M2MPSK_E_IO;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    etcd_say(err, cap, "KEK file %s is not a regular file", path);
    return M2MPSK_E_IO;
  }
  if (st.st_mode & 077) {
    close(fd);
    etcd_say(err, cap,
             "KEK file %s is accessible to others than its owner (mode %04o; "
             "chmod 600 it)",
             path, (unsigned)(st.st_mode & 07777));
    return M2MPSK_E_IO;
  }
  char buf[160];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  int rc = M2MPSK_E_IO;
  if (n < 0) {
    etcd_say(err, cap, "KEK file %s: %s", path, strerror(errno));
    goto out;
  }
  buf[n] = '\0';
  size_t len = (size_t)n;
  while (len > 0 &&
         (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
    buf[--len] = '\0';
  size_t got = 0;
  if (strncmp(buf, "hex:", 4) == 0 && len == 4 + 2 * ETCD_KEK_BYTES) {
    if (sodium_hex2bin(kek, ETCD_KEK_BYTES, buf + 4, len - 4, NULL, &got,
                       NULL) != 0)
      got = 0;
  } else if (strncmp(buf, "base64:", 7) == 0) {
    if (sodium_base642bin(kek, ETCD_KEK_BYTES, buf + 7, len - 7, NULL, &got,
                          NULL, sodium_base64_VARIANT_ORIGINAL) != 0)
      got = 0;
  }
  if (got != ETCD_KEK_BYTES || memchr(buf, '\n', len) != NULL) {
    sodium_memzero(kek, ETCD_KEK_BYTES);
    etcd_say(err, cap,
             "KEK file %s is malformed: one line 'hex:<64 hex digits>' or "
             "'base64:<44 characters>' (32 bytes) expected",
             path);
    goto out;
  }
  rc = M2MPSK_OK;
out:
  sodium_memzero(buf, sizeof(buf));
  return rc;
}

/* ---- records ------------------------------------------------------------
 * Version 1, all integers big-endian:
 *   u8 version (1), u8 state (0 active, 1 revoked),
 *   i64 not_before, i64 not_after (Unix seconds, 0: unbounded),
 *   u16 idb length, idb, u16 ida length (0: none), ida,
 *   active only: 24-byte nonce, then the Kpsa sealed with
 *   XChaCha20-Poly1305 (16 to 64 bytes + a 16-byte tag).
 * Associated data: "m2mpsk-etcd-v1", a NUL, the KpsaID, a NUL, then every
 * byte of the record before the nonce: a sealed key moved to another
 * KpsaID, or given other identities or another validity, does not open. */

#define REC_HEADER_FIXED 18
#define AD_LABEL "m2mpsk-etcd-v1"

static void put64(uint8_t *p, int64_t v) {
  uint64_t u = (uint64_t)v;
  for (int i = 7; i >= 0; i--) {
    p[i] = (uint8_t)u;
    u >>= 8;
  }
}

static int64_t get64(const uint8_t *p) {
  uint64_t u = 0;
  for (int i = 0; i < 8; i++)
    u = u << 8 | p[i];
  return (int64_t)u;
}

static size_t make_ad(uint8_t *ad, size_t cap, const char *kpsa_id,
                      const uint8_t *header, size_t hlen) {
  size_t id_len = strlen(kpsa_id), n = sizeof(AD_LABEL) + id_len + 1 + hlen;
  if (n > cap)
    return 0;
  memcpy(ad, AD_LABEL, sizeof(AD_LABEL));
  memcpy(ad + sizeof(AD_LABEL), kpsa_id, id_len + 1);
  memcpy(ad + sizeof(AD_LABEL) + id_len + 1, header, hlen);
  return n;
}

size_t etcd_record_encode(const etcd_record *r, const char *kpsa_id,
                          const uint8_t *kek, uint8_t *out) {
  size_t idb_len = strlen(r->idb), ida_len = strlen(r->ida);
  if (idb_len > M2MPSK_ID_MAX || ida_len > M2MPSK_ID_MAX ||
      strlen(kpsa_id) > M2MPSK_KPSA_ID_MAX)
    return 0;
  if (!r->revoked && (r->key_len < M2MPSK_KEY_MIN ||
                      r->key_len > M2MPSK_KEY_MAX || kek == NULL))
    return 0;
  size_t n = 0;
  out[n++] = 1;
  out[n++] = r->revoked ? 1 : 0;
  put64(out + n, r->not_before);
  put64(out + n + 8, r->not_after);
  n += 16;
  out[n++] = (uint8_t)(idb_len >> 8);
  out[n++] = (uint8_t)idb_len;
  memcpy(out + n, r->idb, idb_len);
  n += idb_len;
  out[n++] = (uint8_t)(ida_len >> 8);
  out[n++] = (uint8_t)ida_len;
  memcpy(out + n, r->ida, ida_len);
  n += ida_len;
  if (r->revoked)
    return n;
  uint8_t ad[sizeof(AD_LABEL) + M2MPSK_KPSA_ID_MAX + 1 + ETCD_VALUE_MAX];
  size_t ad_len = make_ad(ad, sizeof(ad), kpsa_id, out, n);
  uint8_t *nonce = out + n;
  randombytes_buf(nonce, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
  n += crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(out + n, &clen, r->key, r->key_len,
                                             ad, ad_len, NULL, nonce, kek);
  return n + (size_t)clen;
}

int etcd_record_decode(const uint8_t *v, size_t len, const char *kpsa_id,
                       const uint8_t *kek, etcd_record *r, char *err,
                       size_t cap) {
  memset(r, 0, sizeof(*r));
  if (len < REC_HEADER_FIXED + 4 || v[0] != 1) {
    etcd_say(err, cap,
             len > 0 && v[0] != 1 ? "unknown record version %u"
                                  : "record too short",
             len > 0 ? v[0] : 0);
    return M2MPSK_E_PROTOCOL;
  }
  if (v[1] > 1) {
    etcd_say(err, cap, "unknown record state %u", v[1]);
    return M2MPSK_E_PROTOCOL;
  }
  r->revoked = v[1];
  r->not_before = get64(v + 2);
  r->not_after = get64(v + 10);
  size_t n = REC_HEADER_FIXED;
  size_t idb_len = (size_t)v[n] << 8 | v[n + 1];
  n += 2;
  if (idb_len == 0 || idb_len > M2MPSK_ID_MAX || n + idb_len + 2 > len) {
    etcd_say(err, cap, "record has a bad IdB length");
    return M2MPSK_E_PROTOCOL;
  }
  memcpy(r->idb, v + n, idb_len);
  n += idb_len;
  size_t ida_len = (size_t)v[n] << 8 | v[n + 1];
  n += 2;
  if (ida_len > M2MPSK_ID_MAX || n + ida_len > len) {
    etcd_say(err, cap, "record has a bad IdA length");
    return M2MPSK_E_PROTOCOL;
  }
  memcpy(r->ida, v + n, ida_len);
  n += ida_len;
  if (memchr(r->idb, '\0', idb_len) || memchr(r->ida, '\0', ida_len)) {
    etcd_say(err, cap, "record has a NUL in an identity");
    return M2MPSK_E_PROTOCOL;
  }
  if (r->revoked) {
    if (n != len) {
      etcd_say(err, cap, "revoked record has trailing bytes");
      return M2MPSK_E_PROTOCOL;
    }
    return M2MPSK_OK;
  }
  const size_t np = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
               tag = crypto_aead_xchacha20poly1305_ietf_ABYTES;
  if (len < n + np + tag + M2MPSK_KEY_MIN ||
      len > n + np + tag + M2MPSK_KEY_MAX) {
    etcd_say(err, cap, "record has a sealed key of a bad length");
    return M2MPSK_E_PROTOCOL;
  }
  if (kek == NULL)
    return M2MPSK_OK;
  uint8_t ad[sizeof(AD_LABEL) + M2MPSK_KPSA_ID_MAX + 1 + ETCD_VALUE_MAX];
  size_t ad_len = make_ad(ad, sizeof(ad), kpsa_id, v, n);
  unsigned long long klen = 0;
  if (ad_len == 0 || crypto_aead_xchacha20poly1305_ietf_decrypt(
                         r->key, &klen, NULL, v + n + np, len - n - np, ad,
                         ad_len, v + n, kek) != 0) {
    sodium_memzero(r->key, sizeof(r->key));
    etcd_say(err, cap,
             "the sealed key does not open with this KEK (wrong KEK "
             "or tampered record)");
    return M2MPSK_E_FAILED;
  }
  r->key_len = (size_t)klen;
  return M2MPSK_OK;
}

/* ---- base64, buffers ------------------------------------------------------
 */

size_t etcd_b64(const void *in, size_t n, char *out, size_t cap) {
  size_t need = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
  if (need > cap)
    return 0;
  sodium_bin2base64(out, cap, in, n, sodium_base64_VARIANT_ORIGINAL);
  return need - 1;
}

long etcd_unb64(const char *in, size_t n, uint8_t *out, size_t cap) {
  size_t got = 0;
  const char *end = NULL;
  if (sodium_base642bin(out, cap, in, n, NULL, &got, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != in + n)
    return -1;
  return (long)got;
}

int etcd_buf_append(etcd_buf *b, const void *data, size_t n) {
  if (n > b->max - b->len) {
    b->overflow = 1;
    return -1;
  }
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL)
      return -1;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

void etcd_buf_free(etcd_buf *b) {
  free(b->p);
  memset(b, 0, sizeof(*b));
}

uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- HTTP -------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
  return etcd_buf_append(arg, data, size * n) == 0 ? size * n : 0;
}

static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c,
                       curl_off_t d) {
  (void)a, (void)b, (void)c, (void)d;
  atomic_int *stop = arg;
  return stop != NULL && atomic_load(stop) ? 1 : 0;
}

/* What every call of the client sets: its time bounds, plain HTTP only,
 * never a proxy (etcd is reached directly), no signals (threads), and the
 * stop flag, which aborts a transfer in progress. */
static void call_opts(const etcd_client *c, CURL *h) {
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, c->stop);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
}

int etcd_client_init(etcd_client *c, const char *url, char *err, size_t cap) {
  memset(c, 0, sizeof(*c));
  int rc = etcd_url_parse(url, &c->url, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0 ||
      (c->curl = curl_easy_init()) == NULL) {
    etcd_say(err, cap, "cannot initialise libcurl or libsodium");
    return M2MPSK_E_NOMEM;
  }
  c->timeout_ms = 15000;
  c->max_response = ETCD_RESPONSE_MAX;
  return M2MPSK_OK;
}

void etcd_client_free(etcd_client *c) {
  if (c->curl)
    curl_easy_cleanup(c->curl);
  c->curl = NULL;
}

/* An etcd error body: {"error": "...", "code": N, "message": "..."}. */
static int etcd_error(const ej *j, const char *where, char *err, size_t cap) {
  const ej *e = ej_get(j, "error");
  const char *msg = ej_str(ej_get(j, "message"));
  if (msg == NULL)
    msg = ej_str(e);
  if (msg == NULL)
    msg = "no reason given";
  if (strstr(msg, "compacted") != NULL) {
    etcd_say(err, cap, "%s: %s", where, msg);
    return ETCD_COMPACTED;
  }
  etcd_say(err, cap, "%s: etcd error: %.200s", where, msg);

  return M2MPSK_E_PROTOCOL;
}

int etcd_call(etcd_client *c, const char *path, const char *body, ej **out,
              char *err, size_t cap) {
  *out = NULL;
  CURL *h = c->curl;
  int rc = M2MPSK_E_IO;
  for (size_t tries = 0; tries < c->url.n; tries++) {
    if (c->stop && atomic_load(c->stop)) {
      etcd_say(err, cap, "stopped");
      return M2MPSK_E_CLOSED;
    }
    size_t ep = (c->cur + tries) % c->url.n;
    char url[160];
    snprintf(url, sizeof(url), "%s%s", c->url.base[ep], path);
    etcd_buf resp = {.max = c->max_response};
    struct curl_slist *hdr =
        curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    call_opts(c, h);
    uint64_t t0 = now_us();
    CURLcode cc = curl_easy_perform(h);
    c->http_us += now_us() - t0;
    curl_slist_free_all(hdr);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (cc == CURLE_ABORTED_BY_CALLBACK) {
      etcd_buf_free(&resp);
      etcd_say(err, cap, "stopped");
      return M2MPSK_E_CLOSED;
    }
    if (cc == CURLE_WRITE_ERROR && resp.overflow) {
      etcd_say(err, cap, "%s: the answer is larger than %zu bytes", url,
               resp.max);
      etcd_buf_free(&resp);
      return M2MPSK_E_PROTOCOL;
    }
    if (cc != CURLE_OK) {
      etcd_say(err, cap, "%s: %s", url, curl_easy_strerror(cc));
      etcd_buf_free(&resp);
      rc = M2MPSK_E_IO;
      if (tries + 1 < c->url.n)
        c->failovers++;
      continue; /* the next endpoint */
    }
    /* This endpoint answered: it is the one to ask first from now on. */
    c->cur = ep;
    const char *why = "empty answer";
    t0 = now_us();
    ej *j = resp.p ? ej_parse(resp.p, resp.len, &why) : NULL;
    c->parse_us += now_us() - t0;
    if (j == NULL || !ej_is_object(j)) {
      etcd_say(err, cap, "%s: HTTP %ld, not a JSON object (%s)", url, code,
               j ? "another JSON value" : why);
      ej_free(j);
      etcd_buf_free(&resp);
      return M2MPSK_E_PROTOCOL;
    }
    etcd_buf_free(&resp);
    if (code != 200 || ej_get(j, "error") != NULL) {
      rc = etcd_error(j, url, err, cap);
      if (rc == M2MPSK_E_PROTOCOL && code != 200 &&
          ej_get(j, "error") == NULL && ej_get(j, "message") == NULL)
        etcd_say(err, cap, "%s: HTTP %ld", url, code);
      ej_free(j);
      return rc;
    }
    *out = j;
    return M2MPSK_OK;
  }
  return rc;
}

int etcd_json_int(const ej *obj, const char *field, int64_t *out) {
  const ej *v = ej_get(obj, field);
  *out = 0;
  if (v == NULL)
    return 0;
  if (ej_is_integer(v)) {
    *out = (int64_t)json_object_get_int64(v);
    return *out >= 0 ? 0 : -1;
  }
  const char *s = ej_str(v);
  if (s == NULL || *s == '\0' || strlen(s) > 18)
    return -1; /* revisions never come near 10^18 */
  int64_t n = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9')
      return -1;
    n = n * 10 + (*s - '0');
  }
  *out = n;
  return 0;
}

int etcd_key_b64(const etcd_url *u, const char *kpsa_id, char *out,
                 size_t cap) {
  char key[ETCD_KEY_MAX + 1];
  int n = snprintf(key, sizeof(key), "%s%s", u->keys_prefix, kpsa_id);
  if (n < 0 || (size_t)n >= sizeof(key))
    return -1;
  return etcd_b64(key, (size_t)n, out, cap) > 0 ? 0 : -1;
}

void etcd_prefix_b64(const etcd_url *u, char *key, char *range_end,
                     size_t cap) {
  char end[sizeof(u->keys_prefix)];
  memcpy(end, u->keys_prefix, u->keys_prefix_len);
  end[u->keys_prefix_len - 1]++; /* "/" + 1 = "0" */
  etcd_b64(u->keys_prefix, u->keys_prefix_len, key, cap);
  etcd_b64(end, u->keys_prefix_len, range_end, cap);
}

/* The KpsaID of an etcd key under the prefix. M2MPSK_OK or
 * M2MPSK_E_NOT_FOUND (not a record's key). */
static int kpsa_of_key(const etcd_url *u, const char *key, size_t n,
                       char *out) {
  if (n <= u->keys_prefix_len ||
      memcmp(key, u->keys_prefix, u->keys_prefix_len) != 0 ||
      n - u->keys_prefix_len > M2MPSK_KPSA_ID_MAX ||
      memchr(key, '\0', n) != NULL)
    return M2MPSK_E_NOT_FOUND;
  memcpy(out, key + u->keys_prefix_len, n - u->keys_prefix_len);
  out[n - u->keys_prefix_len] = '\0';
  return M2MPSK_OK;
}

int etcd_kv_parse(const etcd_url *u, const ej *kv, int want_value, etcd_kv *out,
                  char *err, size_t cap) {
  const char *k = ej_str(ej_get(kv, "key"));
  if (!ej_is_object(kv) || k == NULL) {
    etcd_say(err, cap, "a key-value without a key");
    return M2MPSK_E_PROTOCOL;
  }
  char key[ETCD_KEY_MAX + 1];
  size_t klen = strlen(k);
  long n = klen <= 4 * ((ETCD_KEY_MAX + 2) / 3)
               ? etcd_unb64(k, klen, (uint8_t *)key, ETCD_KEY_MAX)
               : -1;
  if (n < 0) {
    etcd_say(err, cap, "a key that is not base64 or longer than %d bytes",
             ETCD_KEY_MAX);
    return M2MPSK_E_PROTOCOL;
  }
  if (kpsa_of_key(u, key, (size_t)n, out->kpsa_id) != M2MPSK_OK)
    return M2MPSK_E_NOT_FOUND;
  if (etcd_json_int(kv, "mod_revision", &out->mod_revision) != 0 ||
      etcd_json_int(kv, "create_revision", &out->create_revision) != 0) {
    etcd_say(err, cap, "%s: a revision that is not a number", out->kpsa_id);
    return M2MPSK_E_PROTOCOL;
  }
  out->value_len = 0;
  if (!want_value)
    return M2MPSK_OK;
  const ej *jv = ej_get(kv, "value");
  const char *v = ej_str(jv);
  if (jv != NULL && v == NULL) {
    etcd_say(err, cap, "%s: a value that is not a string", out->kpsa_id);
    return M2MPSK_E_PROTOCOL;
  }
  if (v == NULL)
    v = "";
  size_t vlen = strlen(v);
  n = vlen <= 4 * ((ETCD_VALUE_MAX + 2) / 3)
          ? etcd_unb64(v, vlen, out->value, sizeof(out->value))
          : -1;
  if (n < 0) {
    /* Not ours to judge further: the record is skipped by the caller. */
    out->value_len = SIZE_MAX;
    return M2MPSK_OK;
  }
  out->value_len = (size_t)n;
  return M2MPSK_OK;
}

/* ---- range pages ---------------------------------------------------------
 * A snapshot of a million records is mostly etcd's time: its JSON gateway
 * renders about 30,000 records a second on this machine, its gRPC service
 * several times more. So pages are fetched over gRPC when the endpoint
 * speaks it (HTTP/2 without TLS, the RangeRequest and RangeResponse
 * messages encoded here: six fields in, eleven out), and through the JSON
 * gateway otherwise. */

typedef struct page_out {
  int64_t rev;
  int more;
  size_t count;
  char last[ETCD_KEY_MAX + 1];
  size_t last_len;
} page_out;

static size_t pb_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

static size_t pb_bytes(uint8_t *p, unsigned field, const void *b, size_t len) {
  size_t n = pb_varint(p, field << 3 | 2);
  n += pb_varint(p + n, len);
  memcpy(p + n, b, len);
  return n + len;
}

typedef struct pb {
  const uint8_t *p, *end;
} pb;

static int pb_read_varint(pb *r, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end)
      return -1;
    uint8_t b = *r->p++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

/* The next field: 1 (field, and either *v or data/len), 0 at the end, -1
 * malformed. */
static int pb_next(pb *r, unsigned *field, uint64_t *v, const uint8_t **data,
                   size_t *len) {
  if (r->p == r->end)
    return 0;
  uint64_t tag;
  if (pb_read_varint(r, &tag) != 0 || (tag >> 3) == 0 || (tag >> 3) > 1000)
    return -1;
  *field = (unsigned)(tag >> 3);
  *data = NULL;
  *len = 0;
  switch (tag & 7) {
  case 0: return pb_read_varint(r, v) == 0 ? 1 : -1;
  case 1:
    if (r->end - r->p < 8)
      return -1;
    r->p += 8;
    return 1;
  case 5:
    if (r->end - r->p < 4)
      return -1;
    r->p += 4;
    return 1;
  case 2: {
    uint64_t n;
    if (pb_read_varint(r, &n) != 0 || n > (uint64_t)(r->end - r->p))
      return -1;
    *data = r->p;
    *len = (size_t)n;
    r->p += n;
    return 1;
  }
  default: return -1;
  }
}

typedef struct grpc_hdr {
  int status; /* -1 until a grpc-status header or trailer is seen */
  char message[200];
} grpc_hdr;

static size_t on_grpc_header(char *data, size_t size, size_t n, void *arg) {
  grpc_hdr *g = arg;
  size_t len = size * n;
  if (len > 12 && strncasecmp(data, "grpc-status:", 12) == 0)
    g->status = atoi(data + 12);
  else if (len > 13 && strncasecmp(data, "grpc-message:", 13) == 0) {
    size_t m = len - 13;
    if (m >= sizeof(g->message))
      m = sizeof(g->message) - 1;
    memcpy(g->message, data + 13, m);
    g->message[m] = '\0';
    g->message[strcspn(g->message, "\r\n")] = '\0';
  }
  return len;
}

/* A gRPC Range call in flight. Two alternate, so that etcd prepares the
 * next page while this process opens the records of the last one. */
typedef struct grpc_xfer {
  CURL *h;
  etcd_buf resp;
  grpc_hdr g;
  struct curl_slist *hdr;
  uint8_t req[5 + 2 * (ETCD_KEY_MAX + 8) + 40];
  size_t req_len;
  char url[160];
  int active, done;
  CURLcode cc;
} grpc_xfer;

static int grpc_begin(etcd_client *c, CURLM *m, grpc_xfer *x, const char *start,
                      size_t start_len, const char *end, size_t end_len,
                      size_t limit, int64_t rev) {
  if (x->h == NULL && (x->h = curl_easy_init()) == NULL)
    return M2MPSK_E_NOMEM;
  size_t n = 5;
  n += pb_bytes(x->req + n, 1, start, start_len);
  n += pb_bytes(x->req + n, 2, end, end_len);
  n += pb_varint(x->req + n, 3 << 3);
  n += pb_varint(x->req + n, limit);
  if (rev > 0) {
    n += pb_varint(x->req + n, 4 << 3);
    n += pb_varint(x->req + n, (uint64_t)rev);
  }
  x->req[0] = 0;
  x->req[1] = (uint8_t)((n - 5) >> 24);
  x->req[2] = (uint8_t)((n - 5) >> 16);
  x->req[3] = (uint8_t)((n - 5) >> 8);
  x->req[4] = (uint8_t)(n - 5);
  x->req_len = n;
  snprintf(x->url, sizeof(x->url), "%s/etcdserverpb.KV/Range",
           c->url.base[c->cur]);
  x->resp.len = 0;
  x->resp.overflow = 0;
  x->resp.max = c->max_response;
  memset(&x->g, 0, sizeof(x->g));
  x->g.status = -1;
  if (x->hdr == NULL) {
    x->hdr = curl_slist_append(NULL, "Content-Type: application/grpc");
    x->hdr = curl_slist_append(x->hdr, "TE: trailers");
  }
  CURL *h = x->h;
  curl_easy_reset(h);
  curl_easy_setopt(h, CURLOPT_URL, x->url);
  curl_easy_setopt(h, CURLOPT_HTTP_VERSION,
                   (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
  /* libcurl 7.88 fails the second request on a reused prior-knowledge
   * HTTP/2 connection to etcd ("Error in the HTTP2 framing layer"): one
   * connection per page, a cost lost in a page's milliseconds. */
  curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->hdr);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, (const char *)x->req);
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)n);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &x->resp);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_grpc_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &x->g);
  call_opts(c, h);
  x->active = 1;
  x->done = 0;
  curl_multi_add_handle(m, h);
  return M2MPSK_OK;
}

/* Lets transfers in flight progress without waiting. */
static void grpc_pump(CURLM *m, grpc_xfer *xs, size_t n) {
  int running = 0, left = 0;
  curl_multi_perform(m, &running);
  CURLMsg *msg;
  while ((msg = curl_multi_info_read(m, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    for (size_t i = 0; i < n; i++) {
      if (xs[i].active && xs[i].h == msg->easy_handle) {
        xs[i].cc = msg->data.result;
        xs[i].done = 1;
      }
    }
  }
}

static void grpc_cancel(CURLM *m, grpc_xfer *x) {
  if (x->active)
    curl_multi_remove_handle(m, x->h);
  x->active = x->done = 0;
}

/* Waits for x to end and classifies it: M2MPSK_OK (x->resp holds one
 * message), M2MPSK_E_PROTOCOL, ETCD_COMPACTED, M2MPSK_E_CLOSED, or
 * M2MPSK_E_UNSUPPORTED (the endpoint does not speak gRPC here). */
static int grpc_wait(etcd_client *c, CURLM *m, grpc_xfer *xs, size_t nx,
                     grpc_xfer *x, char *err, size_t cap) {
  uint64_t t0 = now_us();
  while (!x->done) {
    grpc_pump(m, xs, nx);
    if (!x->done) {
      int n = 0;
      curl_multi_poll(m, NULL, 0, 100, &n);
    }
  }
  c->http_us += now_us() - t0;
  curl_multi_remove_handle(m, x->h);
  x->active = 0;
  if (x->cc == CURLE_ABORTED_BY_CALLBACK) {
    etcd_say(err, cap, "stopped");
    return M2MPSK_E_CLOSED;
  }
  if (x->cc == CURLE_WRITE_ERROR && x->resp.overflow) {
    etcd_say(err, cap, "%s: the answer is larger than %zu bytes", x->url,
             x->resp.max);
    return M2MPSK_E_PROTOCOL;
  }
  if (x->cc != CURLE_OK || x->g.status < 0) {
    etcd_say(err, cap, "%s: %s", x->url,
             x->cc != CURLE_OK ? curl_easy_strerror(x->cc) : "no grpc-status");
    /* Nobody there (another endpoint may be), or someone who does not
     * speak gRPC (the JSON gateway may). */
    c->grpc_down =
        x->cc == CURLE_COULDNT_CONNECT || x->cc == CURLE_OPERATION_TIMEDOUT;
    return M2MPSK_E_UNSUPPORTED;
  }
  if (x->g.status != 0) {
    etcd_say(err, cap, "%s: etcd error: %s", x->url, x->g.message);
    return strstr(x->g.message, "compacted") ? ETCD_COMPACTED
                                             : M2MPSK_E_PROTOCOL;
  }
  const uint8_t *p = (const uint8_t *)x->resp.p;
  size_t mlen = x->resp.len >= 5 ? (size_t)p[1] << 24 | (size_t)p[2] << 16 |
                                       (size_t)p[3] << 8 | p[4]
                                 : 0;
  if (x->resp.len < 5 || p[0] != 0 || mlen != x->resp.len - 5) {
    etcd_say(err, cap, "%s: not one uncompressed gRPC message", x->url);
    return M2MPSK_E_PROTOCOL;
  }
  return M2MPSK_OK;
}

/* The parts of a KeyValue this component reads. -1 when malformed. */
static int pb_kv(const uint8_t *d, size_t len, const uint8_t **key,
                 size_t *key_len, const uint8_t **val, size_t *val_len,
                 etcd_kv *kv) {
  pb k = {d, d + len};
  unsigned field;
  uint64_t v = 0;
  int got;
  *key = *val = NULL;
  *key_len = *val_len = 0;
  kv->mod_revision = kv->create_revision = 0;
  while ((got = pb_next(&k, &field, &v, &d, &len)) == 1) {
    if (field == 1 && d) {
      *key = d;
      *key_len = len;
    } else if (field == 5 && d) {
      *val = d;
      *val_len = len;
    } else if (field == 2 && !d) {
      kv->create_revision = (int64_t)v;
    } else if (field == 3 && !d) {
      kv->mod_revision = (int64_t)v;
    }
  }
  return got < 0 || *key == NULL || *key_len > ETCD_KEY_MAX ? -1 : 0;
}

/* A first pass over a RangeResponse: the revision, `more`, the count and
 * the last key (what the next request needs), without opening records. */
static int grpc_scan(const grpc_xfer *x, page_out *po, char *err, size_t cap) {
  pb r = {(const uint8_t *)x->resp.p + 5,
          (const uint8_t *)x->resp.p + x->resp.len};
  unsigned field;
  uint64_t v;
  const uint8_t *d, *last = NULL;
  size_t len, last_len = 0;
  int got;
  memset(po, 0, sizeof(*po));
  while ((got = pb_next(&r, &field, &v, &d, &len)) == 1) {
    if (field == 1 && d) {
      pb hd = {d, d + len};
      while ((got = pb_next(&hd, &field, &v, &d, &len)) == 1)
        if (field == 3 && !d)
          po->rev = (int64_t)v;
      if (got < 0)
        break;
    } else if (field == 2 && d) {
      last = d;
      last_len = len;
      po->count++;
    } else if (field == 3 && !d) {
      po->more = v != 0;
    }
  }
  if (got == 0 && last != NULL) {
    etcd_kv kv;
    const uint8_t *key, *val;
    size_t key_len, val_len;
    if (pb_kv(last, last_len, &key, &key_len, &val, &val_len, &kv) != 0)
      got = -1;
    else {
      memcpy(po->last, key, key_len);
      po->last_len = key_len;
    }
  }
  if (got != 0) {
    etcd_say(err, cap, "%s: a malformed RangeResponse", x->url);
    return M2MPSK_E_PROTOCOL;
  }
  if (po->rev <= 0) {
    etcd_say(err, cap, "%s: a RangeResponse without a revision", x->url);
    return M2MPSK_E_PROTOCOL;
  }
  return M2MPSK_OK;
}

/* The second pass: every record to fn, letting the next page's transfer
 * progress every few thousand. */
static int grpc_records(etcd_client *c, CURLM *m, grpc_xfer *xs, size_t nx,
                        const grpc_xfer *x, etcd_kv *kv, etcd_kv_fn fn,
                        void *ctx, char *err, size_t cap) {
  pb r = {(const uint8_t *)x->resp.p + 5,
          (const uint8_t *)x->resp.p + x->resp.len};
  unsigned field;
  uint64_t v;
  const uint8_t *d;
  size_t len, i = 0;
  int rc = M2MPSK_OK;
  while (rc == M2MPSK_OK && pb_next(&r, &field, &v, &d, &len) == 1) {
    if (field != 2 || d == NULL)
      continue;
    const uint8_t *key, *val;
    size_t key_len, val_len;
    if (pb_kv(d, len, &key, &key_len, &val, &val_len, kv) != 0) {
      etcd_say(err, cap, "%s: a malformed KeyValue", x->url);
      return M2MPSK_E_PROTOCOL;
    }
    if (++i % 4096 == 0)
      grpc_pump(m, xs, nx);
    if (kpsa_of_key(&c->url, (const char *)key, key_len, kv->kpsa_id) !=
        M2MPSK_OK)
      continue;
    if (val_len > sizeof(kv->value)) {
      kv->value_len = SIZE_MAX; /* skipped by the caller */
    } else {
      if (val_len)
        memcpy(kv->value, val, val_len);
      kv->value_len = val_len;
    }
    rc = fn(ctx, kv);
  }
  return rc;
}

/* One page through the JSON gateway. */
static int json_page(etcd_client *c, const char *start, size_t start_len,
                     const char *end, size_t end_len, size_t limit, int64_t rev,
                     etcd_kv *kv, etcd_kv_fn fn, void *ctx, page_out *po,
                     char *err, size_t cap) {
  char s64[4 * ETCD_KEY_MAX], e64[4 * ETCD_KEY_MAX], body[3 * 4 * ETCD_KEY_MAX];
  etcd_b64(start, start_len, s64, sizeof(s64));
  etcd_b64(end, end_len, e64, sizeof(e64));
  if (rev > 0)
    snprintf(body, sizeof(body),
             "{\"key\":\"%s\",\"range_end\":\"%s\",\"limit\":%zu,"
             "\"revision\":%lld}",
             s64, e64, limit, (long long)rev);
  else
    snprintf(body, sizeof(body),
             "{\"key\":\"%s\",\"range_end\":\"%s\",\"limit\":%zu}", s64, e64,
             limit);
  ej *j = NULL;
  int rc = etcd_call(c, "/v3/kv/range", body, &j, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  memset(po, 0, sizeof(*po));
  const ej *kvs = ej_get(j, "kvs");
  const ej *more = ej_get(j, "more");
  if (etcd_json_int(ej_get(j, "header"), "revision", &po->rev) != 0 ||
      po->rev <= 0 || (kvs != NULL && !ej_is_array(kvs)) ||
      (more != NULL && !ej_is_boolean(more))) {
    etcd_say(err, cap,
             "range: the answer has no header revision, or kvs is "
             "not an array");
    ej_free(j);
    return M2MPSK_E_PROTOCOL;
  }
  po->more = ej_is_true(more);
  size_t count = ej_size(kvs);
  for (size_t i = 0; i < count && rc == M2MPSK_OK; i++) {
    const ej *item = ej_at(kvs, i);
    int prc = etcd_kv_parse(&c->url, item, 1, kv, err, cap);
    if (prc == M2MPSK_E_PROTOCOL) {
      rc = prc;
      break;
    }
    const char *k = ej_str(ej_get(item, "key"));
    long n = etcd_unb64(k, strlen(k), (uint8_t *)po->last, ETCD_KEY_MAX);
    po->last_len = n > 0 ? (size_t)n : 0;
    po->count++;
    if (prc == M2MPSK_OK)
      rc = fn(ctx, kv);
  }
  ej_free(j);
  return rc;
}

/* The next page's first key: just past the last one (the key + "\0"). */
static int next_start(char *start, size_t *start_len, const page_out *po,
                      char *err, size_t cap) {
  if (po->count == 0 || po->last_len == 0) {
    etcd_say(err, cap, "range: 'more' with no key to continue from");
    return M2MPSK_E_PROTOCOL;
  }
  /* Each page must end past where it began: a server that keeps answering
   * the same page must not keep this loop going. */
  size_t common = po->last_len < *start_len ? po->last_len : *start_len;
  int cmp = memcmp(po->last, start, common);
  if (cmp < 0 || (cmp == 0 && po->last_len < *start_len)) {
    etcd_say(err, cap, "range: a page ends before it starts");
    return M2MPSK_E_PROTOCOL;
  }
  memcpy(start, po->last, po->last_len);
  start[po->last_len] = '\0';
  *start_len = po->last_len + 1;
  return M2MPSK_OK;
}

/* Every page over gRPC, the next one requested before this one's records
 * are opened. M2MPSK_E_UNSUPPORTED before any record was passed on: use
 * JSON instead. */
static int range_grpc(etcd_client *c, size_t page, int64_t *revision,
                      etcd_kv *kv, page_out *po, etcd_kv_fn fn,
                      etcd_page_fn page_done, void *ctx, char *err,
                      size_t cap) {
  char start[ETCD_KEY_MAX + 2], end[sizeof(c->url.keys_prefix)];
  size_t start_len = c->url.keys_prefix_len, end_len = start_len;
  memcpy(start, c->url.keys_prefix, start_len);
  memcpy(end, c->url.keys_prefix, end_len);
  end[end_len - 1]++; /* "/" + 1 = "0": every key under the prefix */
  CURLM *m = curl_multi_init();
  grpc_xfer *xs = calloc(2, sizeof(*xs));
  int rc = m && xs ? M2MPSK_OK : M2MPSK_E_NOMEM;
  int64_t rev = *revision;
  size_t cur = 0, pages = 0;
  if (rc == M2MPSK_OK)
    rc = grpc_begin(c, m, &xs[0], start, start_len, end, end_len, page, rev);
  while (rc == M2MPSK_OK) {
    grpc_xfer *x = &xs[cur];
    rc = grpc_wait(c, m, xs, 2, x, err, cap);
    if (rc == M2MPSK_E_UNSUPPORTED && pages > 0)
      rc = M2MPSK_E_IO; /* it spoke gRPC a page ago: a failure now */
    if (rc == M2MPSK_OK)
      rc = grpc_scan(x, po, err, cap);
    if (rc != M2MPSK_OK)
      break;
    if (rev == 0)
      rev = po->rev;
    int more = po->more;
    if (more && (rc = next_start(start, &start_len, po, err, cap)) == M2MPSK_OK)
      rc = grpc_begin(c, m, &xs[1 - cur], start, start_len, end, end_len, page,
                      rev);
    if (rc == M2MPSK_OK)
      rc = grpc_records(c, m, xs, 2, x, kv, fn, ctx, err, cap);
    if (rc == M2MPSK_OK && page_done)
      rc = page_done(ctx);
    pages++;
    if (!more)
      break;
    cur = 1 - cur;
  }
  for (size_t i = 0; xs && i < 2; i++) {
    grpc_cancel(m, &xs[i]);
    if (xs[i].h)
      curl_easy_cleanup(xs[i].h);
    curl_slist_free_all(xs[i].hdr);
    etcd_buf_free(&xs[i].resp);
  }
  free(xs);
  if (m)
    curl_multi_cleanup(m);
  *revision = rev;
  return rc;
}

int etcd_range_all(etcd_client *c, size_t page, int64_t *revision,
                   etcd_kv_fn fn, etcd_page_fn page_done, void *ctx, char *err,
                   size_t cap) {
  etcd_kv *kv = malloc(sizeof(*kv));
  page_out *po = malloc(sizeof(*po));
  int rc = kv && po ? M2MPSK_OK : M2MPSK_E_NOMEM;
  for (size_t tries = 0; rc == M2MPSK_OK && !c->no_grpc; tries++) {
    c->grpc_down = 0;
    rc = range_grpc(c, page, revision, kv, po, fn, page_done, ctx, err, cap);
    if (rc == M2MPSK_E_UNSUPPORTED && c->grpc_down && tries + 1 < c->url.n) {
      c->cur = (c->cur + 1) % c->url.n;
      c->failovers++;
      rc = M2MPSK_OK;
      continue;
    }
    if (rc == M2MPSK_E_UNSUPPORTED && c->grpc_down) {
      /* err is both the detail and the destination: copy it first. */
      char why[256];
      snprintf(why, sizeof(why), "%s", err);
      etcd_say(err, cap, "no etcd endpoint answered (%s)", why);
      rc = M2MPSK_E_IO;
      goto done;
    }
    if (rc == M2MPSK_E_UNSUPPORTED) {
      /* Not gRPC here (or this endpoint is down): the JSON gateway, which
       * also fails over to the other endpoints. */
      c->no_grpc = 1;
      rc = M2MPSK_OK;
      break;
    }
    goto done;
  }
  char start[ETCD_KEY_MAX + 2], end[sizeof(c->url.keys_prefix)];
  size_t start_len = c->url.keys_prefix_len, end_len = start_len;
  memcpy(start, c->url.keys_prefix, start_len);
  memcpy(end, c->url.keys_prefix, end_len);
  end[end_len - 1]++;
  int64_t rev = *revision;
  while (rc == M2MPSK_OK) {
    rc = json_page(c, start, start_len, end, end_len, page, rev, kv, fn, ctx,
                   po, err, cap);
    if (rc != M2MPSK_OK)
      break;
    if (rev == 0)
      rev = po->rev;
    if (page_done && (rc = page_done(ctx)) != M2MPSK_OK)
      break;
    if (!po->more)
      break;
    rc = next_start(start, &start_len, po, err, cap);
  }
  *revision = rev;
done:
  if (kv)
    sodium_memzero(kv, sizeof(*kv));
  free(kv);
  free(po);
  return rc;
}
