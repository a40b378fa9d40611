/* What a receiving CSE does with a bound identity: the originator check
 * (TS-0004 §7.3.2.1, TS-0003 §7.2.1), and the derivation of a remotely
 * provisioned Kpsa from an enrolment key straight into a keystore (TS-0003
 * §10.3.3). */
#include <sodium.h>
#include <string.h>
#include <strings.h>

#include "m2mpsk/m2mpsk.h"

/* An identifier with every relative part resolved against the receiving
 * CSE: an SP-ID (NULL when unknown), a CSE-ID segment (NULL for an S-type
 * AE-ID) and an AE-ID-Stem (NULL for a CSE-ID). */
typedef struct canon {
  const char *sp;
  size_t sp_len;
  const char *cse;
  size_t cse_len;
  const char *stem;
  size_t stem_len;
} canon;

/* How a From is written. */
enum form {
  FORM_ABSENT,
  FORM_STEM, /* "Cx" or "Sx": CSE-relative */
  FORM_ONE,  /* "/x" or "//sp/x": a CSE-ID, or an S-type AE-ID */
  FORM_TWO   /* "/cse/Cx" or "//sp/cse/Cx": a C-type AE-ID */
};

static int is_unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Splits an identifier that m2mpsk_ida_validate() accepted into its SP-ID
 * and one or two segments; returns the number of segments. */
static int split(const char *s, canon *sp, const char **seg, size_t *seg_len) {
  const char *p = s;
  sp->sp = NULL;
  sp->sp_len = 0;
  if (s[1] == '/') {
    const char *slash = strchr(s + 2, '/');
    sp->sp = s + 2;
    sp->sp_len = (size_t)(slash - (s + 2));
    p = slash;
  }
  int n = 0;
  while (*p == '/' && n < 2) {
    seg[n] = ++p;
    p += strcspn(p, "/");
    seg_len[n] = (size_t)(p - seg[n]);
    n++;
  }
  return n;
}

/* A parsed identifier: its form and segments, before resolution. */
typedef struct ident {
  enum form form;
  canon sp; /* only sp/sp_len used */
  const char *seg[2];
  size_t seg_len[2];
} ident;

/* Parses a CSE-ID or AE-ID (SP-relative or absolute); with `stems`, also a
 * bare AE-ID-Stem, and NULL or "" as absent. */
static int ident_parse(const char *s, int stems, ident *out) {
  memset(out, 0, sizeof(*out));
  if (stems && (s == NULL || s[0] == '\0')) {
    out->form = FORM_ABSENT;
    return M2MPSK_OK;
  }
  if (s == NULL)
    return M2MPSK_E_INVALID;
  size_t len = strnlen(s, (size_t)M2MPSK_ID_MAX + 1);
  if (len > M2MPSK_ID_MAX)
    return M2MPSK_E_ID_LENGTH;
  if (stems && s[0] != '/') {
    if (s[0] != 'C' && s[0] != 'S')
      return M2MPSK_E_IDA;
    for (size_t i = 0; i < len; i++) {
      if (!is_unreserved((unsigned char)s[i]))
        return M2MPSK_E_IDA;
    }
    out->form = FORM_STEM;
    out->seg[0] = s;
    out->seg_len[0] = len;
    return M2MPSK_OK;
  }
  int rc = m2mpsk_ida_validate(s);
  if (rc != M2MPSK_OK)
    return rc;
  out->form =
      split(s, &out->sp, out->seg, out->seg_len) == 1 ? FORM_ONE : FORM_TWO;
  return M2MPSK_OK;
}

static int starts_with_s(const ident *id) {
  return id->seg[0][0] == 'S';
}

/* The SP-ID an identifier is in: its own, else the receiving CSE's. */
static void resolve_sp(const ident *id, const canon *local, canon *out) {
  out->sp = id->sp.sp != NULL ? id->sp.sp : local->sp;
  out->sp_len = id->sp.sp != NULL ? id->sp.sp_len : local->sp_len;
}

/* Reads a parsed identifier as a CSE-ID. */
static canon as_cse(const ident *id, const canon *local) {
  canon c = {0};
  resolve_sp(id, local, &c);
  c.cse = id->seg[0];
  c.cse_len = id->seg_len[0];
  return c;
}

/* Reads a parsed identifier as an AE-ID. A one-segment form is an S-type
 * AE-ID only when it starts with 'S'; returns 0 when it is not an AE-ID. */
static int as_ae(const ident *id, const canon *local, canon *out) {
  memset(out, 0, sizeof(*out));
  resolve_sp(id, local, out);
  switch (id->form) {
  case FORM_STEM:
    if (starts_with_s(id)) {
      out->stem = id->seg[0];
      out->stem_len = id->seg_len[0];
    } else {
      out->cse = local->cse;
      out->cse_len = local->cse_len;
      out->stem = id->seg[0];
      out->stem_len = id->seg_len[0];
    }
    return 1;
  case FORM_ONE:
    if (!starts_with_s(id))
      return 0;
    out->stem = id->seg[0];
    out->stem_len = id->seg_len[0];
    return 1;
  case FORM_TWO:
    out->cse = id->seg[0];
    out->cse_len = id->seg_len[0];
    out->stem = id->seg[1];
    out->stem_len = id->seg_len[1];
    return 1;
  default: return 0;
  }
}

static int part_eq(const char *a, size_t al, const char *b, size_t bl) {
  if (a == NULL || b == NULL)
    return a == b;
  return al == bl && memcmp(a, b, al) == 0;
}

/* SP-IDs are host names: case-insensitive. Unknown equals only unknown. */
static int sp_eq(const canon *a, const canon *b) {
  if (a->sp == NULL || b->sp == NULL)
    return a->sp == b->sp;
  return a->sp_len == b->sp_len && strncasecmp(a->sp, b->sp, a->sp_len) == 0;
}

static int canon_eq(const canon *a, const canon *b) {
  return sp_eq(a, b) && part_eq(a->cse, a->cse_len, b->cse, b->cse_len) &&
         part_eq(a->stem, a->stem_len, b->stem, b->stem_len);
}

/* The bound identifier: an AE-ID of the right shape, a CSE-ID, or a
 * Credential-ID "12-<KpsaID>" whose value this check does not need. */
static int bound_parse(m2mpsk_peer_kind kind, const char *s, ident *out) {
  if (kind == M2MPSK_PEER_CREDENTIAL) {
    if (strncmp(s, "12-", 3) != 0)
      return M2MPSK_E_IDA;
    return m2mpsk_kpsa_id_validate(s + 3);
  }
  int rc = ident_parse(s, 0, out);
  if (rc != M2MPSK_OK)
    return rc;
  if (kind == M2MPSK_PEER_CSE && out->form != FORM_ONE)
    return M2MPSK_E_IDA;
  if (kind == M2MPSK_PEER_AE && out->form == FORM_ONE && !starts_with_s(out))
    return M2MPSK_E_IDA;
  return M2MPSK_OK;
}

static m2mpsk_originator_verdict judge(m2mpsk_peer_kind kind,
                                       const ident *bound, const canon *local,
                                       const ident *from, unsigned flags) {
  const m2mpsk_originator_verdict accept = M2MPSK_ORIGINATOR_ACCEPT;
  const m2mpsk_originator_verdict denied = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED;
  const m2mpsk_originator_verdict need_sa =
      M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED;
  int registering = (flags & M2MPSK_ORIGINATOR_AE_CREATE) != 0;
  canon f;
  int from_is_ae = as_ae(from, local, &f);

  if (from->form == FORM_ABSENT &&
      !(registering &&
        (kind == M2MPSK_PEER_NONE || kind == M2MPSK_PEER_CREDENTIAL)))
    return denied;

  switch (kind) {
  case M2MPSK_PEER_NONE:
    if (from->form == FORM_ONE && !from_is_ae)
      return need_sa; /* a CSE-ID */
    return (flags & M2MPSK_ORIGINATOR_ALLOW_UNSECURED_AE) ? accept : need_sa;

  case M2MPSK_PEER_AE: {
    canon b;
    as_ae(bound, local, &b);
    return from_is_ae && canon_eq(&f, &b) ? accept : denied;
  }

  case M2MPSK_PEER_CSE: {
    canon b = as_cse(bound, local);
    if (from->form == FORM_ONE) {
      canon c = as_cse(from, local);
      if (canon_eq(&c, &b))
        return accept; /* the Registree itself, even if it starts with S */
    }
    if (!from_is_ae)
      return denied; /* another CSE-ID */
    if (f.cse == NULL)
      return sp_eq(&f, &b) ? accept : denied; /* S-type AE-ID */
    return sp_eq(&f, &b) && part_eq(f.cse, f.cse_len, b.cse, b.cse_len)
               ? accept
               : denied;
  }

  case M2MPSK_PEER_CREDENTIAL:
    if (!registering)
      return denied;
    if (from->form == FORM_ABSENT || from->form == FORM_STEM)
      return accept;
    if (!from_is_ae)
      return denied; /* a CSE-ID */
    if (f.cse == NULL)
      return sp_eq(&f, local) ? accept : denied;
    return sp_eq(&f, local) &&
                   part_eq(f.cse, f.cse_len, local->cse, local->cse_len)
               ? accept
               : denied;
  }
  return denied;
}

/* Every flag m2mpsk_originator_check() knows. */
#define ORIGINATOR_FLAGS                                                       \
  (M2MPSK_ORIGINATOR_AE_CREATE | M2MPSK_ORIGINATOR_ALLOW_UNSECURED_AE)

int m2mpsk_originator_check(m2mpsk_peer_kind bound_kind, const char *bound_id,
                            const char *local_id, const char *from,
                            unsigned flags,
                            m2mpsk_originator_verdict *verdict) {
  if (verdict == NULL)
    return M2MPSK_E_INVALID;
  /* Fail closed for a caller that ignores the status. */
  *verdict = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED;
  if (local_id == NULL || (flags & ~ORIGINATOR_FLAGS) != 0 ||
      (unsigned)bound_kind > (unsigned)M2MPSK_PEER_CREDENTIAL ||
      (bound_kind == M2MPSK_PEER_NONE) != (bound_id == NULL))
    return M2MPSK_E_INVALID;

  int rc = m2mpsk_idb_validate(local_id);
  if (rc != M2MPSK_OK)
    return rc;
  ident local_parsed;
  const canon none = {0};
  (void)ident_parse(local_id, 0, &local_parsed);
  canon local = as_cse(&local_parsed, &none);

  ident bound;
  memset(&bound, 0, sizeof(bound));
  if (bound_kind != M2MPSK_PEER_NONE &&
      (rc = bound_parse(bound_kind, bound_id, &bound)) != M2MPSK_OK)
    return rc;

  ident f;
  if ((rc = ident_parse(from, 1, &f)) != M2MPSK_OK)
    return rc;

  *verdict = judge(bound_kind, &bound, &local, &f, flags);
  return M2MPSK_OK;
}

/* What the association is bound to, in m2mpsk_originator_check()'s terms:
 * a one-segment identifier is a CSE-ID unless it starts with 'S' (TS-0001
 * §7.2), as bound_parse() reads it. */
static m2mpsk_peer_kind assoc_bound_kind(const m2mpsk_assoc *a,
                                         const char **id) {
  *id = m2mpsk_assoc_peer_id(a);
  if (*id == NULL)
    return M2MPSK_PEER_NONE;
  if (m2mpsk_assoc_peer_id_is_credential(a))
    return M2MPSK_PEER_CREDENTIAL;
  ident parsed;
  if (ident_parse(*id, 0, &parsed) != M2MPSK_OK)
    return M2MPSK_PEER_CSE; /* not an identifier: the check refuses it */
  return parsed.form == FORM_ONE && !starts_with_s(&parsed) ? M2MPSK_PEER_CSE
                                                            : M2MPSK_PEER_AE;
}

int m2mpsk_assoc_originator_check(const m2mpsk_assoc *a, const char *from,
                                  unsigned flags,
                                  m2mpsk_originator_verdict *verdict) {
  if (verdict == NULL)
    return M2MPSK_E_INVALID;
  *verdict = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED;
  if (a == NULL || (flags & ~ORIGINATOR_FLAGS) != 0)
    return M2MPSK_E_INVALID;
  if (m2mpsk_assoc_state(a) != M2MPSK_STATE_ESTABLISHED)
    return M2MPSK_E_STATE;
  const char *local = m2mpsk_assoc_local_id(a);
  if (local == NULL || m2mpsk_idb_validate(local) != M2MPSK_OK)
    return M2MPSK_E_IDB;
  const char *bound;
  m2mpsk_peer_kind kind = assoc_bound_kind(a, &bound);
  if (kind == M2MPSK_PEER_NONE) /* ESTABLISHED is always bound */
    return M2MPSK_E_STATE;
  return m2mpsk_originator_check(kind, bound, local, from, flags, verdict);
}

/* TS-0003 §10.3.3, byte for byte. */
static const char kpsa_label[] = "oneM2M Enrolment Key to Provisioned Secure "
                                 "Connection Key derivation";

int m2mpsk_keystore_add_derived(m2mpsk_keystore *ks, const char *kpsa_id,
                                const uint8_t *ke, size_t ke_len,
                                const char *enrolee_b_id, const char *ida,
                                const char *idb, int64_t not_before,
                                int64_t not_after) {
  if (ks == NULL || kpsa_id == NULL || ke == NULL || enrolee_b_id == NULL ||
      idb == NULL)
    return M2MPSK_E_INVALID;
  if (ke_len < M2MPSK_KEY_MIN || ke_len > M2MPSK_KEY_MAX)
    return M2MPSK_E_KEY_LENGTH;
  int rc = m2mpsk_ida_validate(enrolee_b_id);
  if (rc != M2MPSK_OK)
    return rc;

  /* The HMAC state holds key-derived pads, so it is as secret as Kpsa:
   * both live in guarded memory, wiped by sodium_free(). The keystore
   * exists, so sodium_init() has run. */
  struct derivation {
    crypto_auth_hmacsha256_state st;
    uint8_t kpsa[crypto_auth_hmacsha256_BYTES];
  } *d = sodium_malloc(sizeof(*d));
  if (d == NULL)
    return M2MPSK_E_NOMEM;
  crypto_auth_hmacsha256_init(&d->st, ke, ke_len);
  crypto_auth_hmacsha256_update(&d->st, (const unsigned char *)kpsa_label,
                                sizeof(kpsa_label) - 1);
  crypto_auth_hmacsha256_update(&d->st, (const unsigned char *)enrolee_b_id,
                                strlen(enrolee_b_id));
  crypto_auth_hmacsha256_final(&d->st, d->kpsa);
  rc = m2mpsk_keystore_add(ks, kpsa_id, d->kpsa, sizeof(d->kpsa), ida, idb,
                           not_before, not_after);
  sodium_free(d);
  return rc;
}
