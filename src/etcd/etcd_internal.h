/* What the etcd sync (etcd_sync.c) and `m2mpsk keys` (src/cli/keys.c)
 * share: the URL, the KEK, the record format, HTTP calls to the v3 JSON
 * gateway. Not a public interface. */
#ifndef M2MPSK_ETCD_INTERNAL_H
#define M2MPSK_ETCD_INTERNAL_H

#include "etcd_json.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

#define ETCD_MAX_ENDPOINTS 16
#define ETCD_PREFIX_MAX 256
#define ETCD_KEK_BYTES 32
/* The largest etcd key this component writes or accepts: the prefix,
 * "/keys/" and a KpsaID. */
#define ETCD_KEY_MAX (1 + ETCD_PREFIX_MAX + 6 + M2MPSK_KPSA_ID_MAX)
/* The largest record value: header, two identities, nonce, sealed key. */
#define ETCD_VALUE_MAX                                                         \
  (2 + 16 + 4 + 2 * M2MPSK_ID_MAX + 24 + M2MPSK_KEY_MAX + 16)
/* Default bound on one HTTP response (a range page) or one line of the
 * watch stream (a watch response: every event of one etcd txn). */
#define ETCD_RESPONSE_MAX ((size_t)64 << 20)

/* Internal status beyond the public ones: etcd compacted the revision
 * asked for (a resync is due). */
#define ETCD_COMPACTED 1

typedef struct etcd_url {
  size_t n;
  char base[ETCD_MAX_ENDPOINTS][80]; /* "http://HOST:PORT" */
  char prefix[ETCD_PREFIX_MAX + 1];  /* "PREFIX" without slashes around */
  /* The etcd key of a record is keys_prefix + KpsaID. */
  char keys_prefix[ETCD_PREFIX_MAX + 8]; /* "/PREFIX/keys/" */
  size_t keys_prefix_len;
} etcd_url;

/* Replaces control bytes in s (a server's words, about to be logged). */
void etcd_printable(char *s);

/* Writes a reason into err (cap bytes; nothing when err is NULL or cap 0),
 * with control bytes replaced: reasons may quote what a server said. */
__attribute__((format(printf, 3, 4))) void etcd_say(char *err, size_t cap,
                                                    const char *fmt, ...);

/* Parses "etcd://HOST:PORT[,HOST:PORT...]/PREFIX". M2MPSK_OK or
 * M2MPSK_E_INVALID with the reason in err. */
int etcd_url_parse(const char *url, etcd_url *out, char *err, size_t cap);

/* Reads the KEK file (regular, 0600 or stricter, one line hex:/base64: of
 * 32 bytes) into `kek` (the caller's locked memory). M2MPSK_OK or
 * M2MPSK_E_IO with the reason. */
int etcd_kek_load(const char *path, uint8_t kek[ETCD_KEK_BYTES], char *err,
                  size_t cap);

/* A record as this component sees it. */
typedef struct etcd_record {
  int revoked;
  int64_t not_before, not_after;
  char idb[M2MPSK_ID_MAX + 1];
  char ida[M2MPSK_ID_MAX + 1]; /* "" when none */
  size_t key_len;              /* 0 for a revoked record */
  uint8_t key[M2MPSK_KEY_MAX]; /* wipe after use */
} etcd_record;

/* Encodes `r` for `kpsa_id` into out (ETCD_VALUE_MAX bytes), sealing the
 * key with the KEK (a random nonce). Returns the length, or 0 on a
 * record that does not fit. */
size_t etcd_record_encode(const etcd_record *r, const char *kpsa_id,
                          const uint8_t *kek, uint8_t *out);

/* Decodes a value. With `kek`, opens the key (r->key); without, leaves
 * key_len 0 and checks only the layout. M2MPSK_OK, M2MPSK_E_PROTOCOL
 * (layout; reason in err) or M2MPSK_E_FAILED (does not decrypt: wrong KEK
 * or tampered). On failure r->key holds nothing. */
int etcd_record_decode(const uint8_t *v, size_t len, const char *kpsa_id,
                       const uint8_t *kek, etcd_record *r, char *err,
                       size_t cap);

/* Base64 (RFC 4648, padded) of `n` bytes into out (cap); the length or 0. */
size_t etcd_b64(const void *in, size_t n, char *out, size_t cap);
/* Decodes base64; the byte count, or -1. */
long etcd_unb64(const char *in, size_t n, uint8_t *out, size_t cap);

/* A growing buffer with a bound. */
typedef struct etcd_buf {
  char *p;
  size_t len, cap, max;
  int overflow;
} etcd_buf;
int etcd_buf_append(etcd_buf *b, const void *data, size_t n);
void etcd_buf_free(etcd_buf *b);

/* A blocking client over the endpoints: one libcurl handle, the endpoint
 * that last answered first. */
typedef struct etcd_client {
  etcd_url url;
  size_t cur;
  void *curl;
  long timeout_ms;
  size_t max_response;
  atomic_int *stop; /* aborts a transfer when set; may be NULL */
  uint64_t failovers;
  uint64_t http_us, parse_us; /* time spent, for the snapshot's log line */
  int no_grpc;                /* 1: range pages through the JSON gateway only */
  int grpc_down;              /* the last gRPC call found nobody listening */
} etcd_client;

uint64_t now_us(void);

int etcd_client_init(etcd_client *c, const char *url, char *err, size_t cap);
void etcd_client_free(etcd_client *c);

/* POSTs `body` (JSON) to `path` ("/v3/kv/range") on the current endpoint,
 * failing over to the others in turn, and parses the answer.
 * M2MPSK_OK (*out: the JSON object), M2MPSK_E_IO (no endpoint answered),
 * M2MPSK_E_PROTOCOL (not JSON, too large, an etcd error),
 * ETCD_COMPACTED, M2MPSK_E_CLOSED (stopped). Reason in err. */
int etcd_call(etcd_client *c, const char *path, const char *body, ej **out,
              char *err, size_t cap);

/* A 64-bit integer field the gateway writes as a string ("123") or a
 * number; absent is 0. -1 when malformed. */
int etcd_json_int(const ej *obj, const char *field, int64_t *out);

/* The key of `kpsa_id` under the URL's prefix, base64'd into out. */
int etcd_key_b64(const etcd_url *u, const char *kpsa_id, char *out, size_t cap);
/* base64 of the keys prefix and of its range end (the prefix with its last
 * byte incremented). */
void etcd_prefix_b64(const etcd_url *u, char *key, char *range_end, size_t cap);

/* One record of a range or watch: its KpsaID (the rest of the key) and raw
 * value. */
typedef struct etcd_kv {
  char kpsa_id[M2MPSK_KPSA_ID_MAX + 1];
  uint8_t value[ETCD_VALUE_MAX];
  size_t value_len;
  int64_t mod_revision, create_revision;
} etcd_kv;

/* Reads kv (a JSON object with key, value, mod_revision) into out.
 * M2MPSK_OK, M2MPSK_E_NOT_FOUND (a key under the prefix that is not a
 * record: skipped) or M2MPSK_E_PROTOCOL. */
int etcd_kv_parse(const etcd_url *u, const ej *kv, int want_value, etcd_kv *out,
                  char *err, size_t cap);

/* Range over every record at one revision, `page` records per call; fn is
 * called per record, then page_done per page (may be NULL). *revision: 0
 * for the current one, set to the revision read. M2MPSK_OK, fn's nonzero
 * return, or etcd_call's codes. */
typedef int (*etcd_kv_fn)(void *ctx, const etcd_kv *kv);
typedef int (*etcd_page_fn)(void *ctx);
int etcd_range_all(etcd_client *c, size_t page, int64_t *revision,
                   etcd_kv_fn fn, etcd_page_fn page_done, void *ctx, char *err,
                   size_t cap);

#endif
