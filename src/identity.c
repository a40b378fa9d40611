/* Identifier syntax: KpsaID (TS-0003 §10.5), CSE-ID and AE-ID in
 * SP-relative and absolute form (TS-0001 §7.2), the Credential-ID
 * (TS-0003 §10.4) and the SNI host name derived from an IdB. */
#include <string.h>

#include "identity.h"
#include "internal.h"

/* An FQDN's presentation form is at most 253 bytes (RFC 1035 §2.3.4 less
 * the length octets). */
#define FQDN_MAX 253
#define LABEL_MAX 63

/* Character classes, one table lookup per byte: these checks run on every
 * KpsaID a peer presents and every record a key file loads. */
enum { C_ALNUM = 1, C_HYPHEN = 2, C_UNRESERVED = 4, C_KPSA = 8 };

static const unsigned char k_class[256] = {
#define ALNUM_ (C_ALNUM | C_UNRESERVED | C_KPSA)
    ['0' ... '9'] = ALNUM_,
    ['a' ... 'z'] = ALNUM_,
    ['A' ... 'Z'] = ALNUM_,
#undef ALNUM_
    ['-'] = C_HYPHEN | C_UNRESERVED | C_KPSA,
    ['.'] = C_UNRESERVED | C_KPSA,
    ['_'] = C_UNRESERVED | C_KPSA,
    ['~'] = C_UNRESERVED,
};

/* RFC 3986 unreserved, as TS-0001 allows in CSE-IDs and AE-ID stems. */
static int is_unreserved(unsigned char c) {
  return k_class[c] & C_UNRESERVED;
}

static int is_kpsa_relative(unsigned char c) {
  return k_class[c] & C_KPSA;
}

/* Letters, digits and hyphens, dot-separated labels of 1..63 bytes that
 * neither start nor end with a hyphen (RFC 1123 §2.1). */
static int fqdn_valid(const char *s, size_t len) {
  if (len == 0 || len > FQDN_MAX)
    return 0;
  size_t start = 0; /* of the current label */
  for (size_t i = 0; i <= len; i++) {
    unsigned char c = i == len ? '.' : (unsigned char)s[i];
    if (c == '.') {
      size_t label = i - start;
      if (label == 0 || label > LABEL_MAX || s[i - 1] == '-' ||
          s[start] == '-')
        return 0;
      start = i + 1;
    } else if (!(k_class[c] & (C_ALNUM | C_HYPHEN))) {
      return 0;
    }
  }
  return 1;
}

int m2mpsk_kpsa_id_validate(const char *kpsa_id) {
  if (kpsa_id == NULL)
    return M2MPSK_E_INVALID;
  /* Bounded so that an unterminated or huge input is not scanned whole. */
  size_t len = strnlen(kpsa_id, (size_t)M2MPSK_KPSA_ID_MAX + 1);
  if (len > M2MPSK_KPSA_ID_MAX)
    return M2MPSK_E_KPSA_ID_LENGTH;
  const char *at = memchr(kpsa_id, '@', len);
  if (at == NULL || at == kpsa_id)
    return M2MPSK_E_KPSA_ID;
  for (const char *p = kpsa_id; p < at; p++) {
    if (!is_kpsa_relative((unsigned char)*p))
      return M2MPSK_E_KPSA_ID;
  }
  /* A second '@' fails the FQDN's character check. */
  if (!fqdn_valid(at + 1, len - (size_t)(at + 1 - kpsa_id)))
    return M2MPSK_E_KPSA_ID;
  return M2MPSK_OK;
}

/* A parsed CSE-ID or AE-ID: an optional authority ("//fqdn") then one or
 * two '/'-prefixed non-empty segments of unreserved characters. */
typedef struct parsed_id {
  const char *fqdn; /* NULL for SP-relative */
  size_t fqdn_len;
  const char *seg[2];
  size_t seg_len[2];
  size_t nseg;
} parsed_id;

/* Returns 1 and fills *out when `s` (len bytes) has the shape above. */
static int id_parse(const char *s, size_t len, parsed_id *out) {
  memset(out, 0, sizeof(*out));
  if (len < 2 || s[0] != '/')
    return 0;
  const char *p = s;
  const char *end = s + len;
  if (s[1] == '/') {
    const char *host = s + 2;
    const char *slash = memchr(host, '/', (size_t)(end - host));
    if (slash == NULL || !fqdn_valid(host, (size_t)(slash - host)))
      return 0;
    out->fqdn = host;
    out->fqdn_len = (size_t)(slash - host);
    p = slash;
  }
  /* Here *p == '/' starts the first segment. */
  while (p < end) {
    if (out->nseg == 2)
      return 0;
    const char *seg = ++p;
    while (p < end && *p != '/') {
      if (!is_unreserved((unsigned char)*p))
        return 0;
      p++;
    }
    if (p == seg)
      return 0; /* empty segment, e.g. a trailing or doubled '/' */
    out->seg[out->nseg] = seg;
    out->seg_len[out->nseg] = (size_t)(p - seg);
    out->nseg++;
  }
  return out->nseg >= 1;
}

/* Measures an identity, bounded like the KpsaID. */
static int id_length(const char *id, size_t *len) {
  *len = strnlen(id, (size_t)M2MPSK_ID_MAX + 1);
  return *len <= M2MPSK_ID_MAX;
}

int m2mpsk_idb_validate(const char *idb) {
  if (idb == NULL)
    return M2MPSK_E_INVALID;
  size_t len;
  if (!id_length(idb, &len))
    return M2MPSK_E_ID_LENGTH;
  parsed_id id;
  if (!id_parse(idb, len, &id) || id.nseg != 1)
    return M2MPSK_E_IDB;
  return M2MPSK_OK;
}

int m2mpsk_ida_validate(const char *ida) {
  if (ida == NULL)
    return M2MPSK_E_INVALID;
  size_t len;
  if (!id_length(ida, &len))
    return M2MPSK_E_ID_LENGTH;
  parsed_id id;
  if (!id_parse(ida, len, &id))
    return M2MPSK_E_IDA;
  /* One segment: a CSE-ID, or an S-type AE-ID (same shape). Two: a CSE-ID
   * then a Registrar-assigned (C-type) AE-ID stem. */
  if (id.nseg == 2 && id.seg[1][0] != 'C')
    return M2MPSK_E_IDA;
  return M2MPSK_OK;
}

int m2mpsk_idb_server_name(const char *idb, char *out, size_t out_cap) {
  if (idb == NULL || out == NULL)
    return M2MPSK_E_INVALID;
  /* Before the IdB is judged, so that a zero-size buffer gives the same
   * status whatever the IdB, as in every function that takes a buffer. */
  if (out_cap == 0)
    return M2MPSK_E_BUFFER;
  out[0] = '\0';
  size_t len;
  if (!id_length(idb, &len))
    return M2MPSK_E_ID_LENGTH;
  parsed_id id;
  if (!id_parse(idb, len, &id) || id.nseg != 1)
    return M2MPSK_E_IDB;
  if (id.fqdn == NULL)
    return M2MPSK_E_NOT_FOUND;
  /* RFC 6066 §3 forbids address literals in SNI; an all-digit last label
   * is never a DNS name (RFC 3696 §2), so "//192.0.2.1/cse" has no SNI. */
  size_t last = id.fqdn_len;
  while (last > 0 && id.fqdn[last - 1] != '.')
    last--;
  int numeric = 1;
  for (size_t i = last; i < id.fqdn_len; i++)
    numeric &= id.fqdn[i] >= '0' && id.fqdn[i] <= '9';
  if (numeric)
    return M2MPSK_E_NOT_FOUND;
  if (out_cap < id.fqdn_len + 1)
    return M2MPSK_E_BUFFER;
  /* DNS names compare case-insensitively; SNI matching wants one form. */
  for (size_t i = 0; i < id.fqdn_len; i++) {
    char c = id.fqdn[i];
    out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
  }
  out[id.fqdn_len] = '\0';
  return M2MPSK_OK;
}

int m2mpsk_idb_sni_of_valid(const char *idb, char *out, size_t out_cap) {
  /* As m2mpsk_idb_server_name(), for an IdB that is known to be valid:
   * "//" then an FQDN up to the next '/'. */
  if (idb[0] != '/' || idb[1] != '/')
    return 0;
  const char *host = idb + 2;
  const char *slash = strchr(host, '/');
  size_t len = slash != NULL ? (size_t)(slash - host) : 0;
  if (len == 0 || len + 1 > out_cap)
    return 0;
  size_t last = len; /* start of the last label */
  while (last > 0 && host[last - 1] != '.')
    last--;
  size_t digits = last;
  while (digits < len && host[digits] >= '0' && host[digits] <= '9')
    digits++;
  if (digits == len)
    return 0; /* an address literal */
  for (size_t i = 0; i < len; i++) {
    char c = host[i];
    out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
  }
  out[len] = '\0';
  return 1;
}

int m2mpsk_credential_id(const char *kpsa_id, char *out, size_t out_cap) {
  if (kpsa_id == NULL || out == NULL)
    return M2MPSK_E_INVALID;
  int rc = m2mpsk_kpsa_id_validate(kpsa_id);
  if (rc != M2MPSK_OK)
    return rc;
  size_t len = strlen(kpsa_id);
  if (out_cap < 3 + len + 1) {
    if (out_cap > 0)
      out[0] = '\0';
    return M2MPSK_E_BUFFER;
  }
  memcpy(out, "12-", 3);
  memcpy(out + 3, kpsa_id, len + 1);
  return M2MPSK_OK;
}
