/* The token side of the PKCS#11 key component: loading the module, the
 * object model of p11_keys.h, and the records' data objects. */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#include "cli.h" /* cli_parse_time: the key files' times */
#include "p11_internal.h"

#define DATA_MAX (64 + 2 * M2MPSK_ID_MAX + 128)

static const struct {
  CK_RV rv;
  const char *name;
} k_ckr[] = {
    {CKR_OK, "CKR_OK"},
    {CKR_CANCEL, "CKR_CANCEL"},
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY"},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
    {CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY"},
    {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE"},
    {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID"},
    {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID"},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY"},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"},
    {CKR_ENCRYPTED_DATA_INVALID, "CKR_ENCRYPTED_DATA_INVALID"},
    {CKR_ENCRYPTED_DATA_LEN_RANGE, "CKR_ENCRYPTED_DATA_LEN_RANGE"},
    {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED"},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"},
    {CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE"},
    {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT"},
    {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED"},
    {CKR_KEY_NOT_WRAPPABLE, "CKR_KEY_NOT_WRAPPABLE"},
    {CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE"},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"},
    {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"},
    {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED"},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID"},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE"},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED"},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED"},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED"},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT"},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
    {CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY"},
    {CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE"},
    {CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT"},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED"},
    {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED"},
    {CKR_UNWRAPPING_KEY_HANDLE_INVALID, "CKR_UNWRAPPING_KEY_HANDLE_INVALID"},
    {CKR_UNWRAPPING_KEY_SIZE_RANGE, "CKR_UNWRAPPING_KEY_SIZE_RANGE"},
    {CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
     "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT"},
    {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN"},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
    {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED"},
    {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID"},
    {CKR_WRAPPED_KEY_INVALID, "CKR_WRAPPED_KEY_INVALID"},
    {CKR_WRAPPED_KEY_LEN_RANGE, "CKR_WRAPPED_KEY_LEN_RANGE"},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
    {CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED"},
};

const char *m2mpsk_p11_ckr_name(unsigned long rv, char *buf, size_t cap) {
  for (size_t i = 0; i < sizeof(k_ckr) / sizeof(k_ckr[0]); i++)
    if (k_ckr[i].rv == rv)
      return k_ckr[i].name;
  snprintf(buf, cap, "CKR_0x%lx", rv);
  return buf;
}

/* "what: CKR_NAME" into err; returns M2MPSK_E_IO. */
int p11_fail(char *err, size_t cap, const char *what, CK_RV rv) {
  char b[32];
  if (err != NULL && cap > 0)
    snprintf(err, cap, "%s: %s", what, m2mpsk_p11_ckr_name(rv, b, sizeof(b)));
  return M2MPSK_E_IO;
}

static int say(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int say(char *err, size_t cap, int rc, const char *fmt, ...) {
  if (err != NULL && cap > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
  }
  return rc;
}

/* ---- open, close -------------------------------------------------------- */

int m2mpsk_p11_open(m2mpsk_p11_token **out, const char *spec,
                    const char *init_args, const uint8_t *pin, size_t pin_len,
                    char *err, size_t err_cap) {
  if (err != NULL && err_cap > 0)
    err[0] = '\0';
  if (out == NULL || spec == NULL || (pin == NULL && pin_len > 0))
    return say(err, err_cap, M2MPSK_E_INVALID, "no token spec");
  *out = NULL;
  const char *colon = strrchr(spec, ':');
  if (colon == NULL || colon == spec || colon[1] == '\0' ||
      strlen(colon + 1) > 32)
    return say(err, err_cap, M2MPSK_E_INVALID,
               "'%s' is not MODULE:TOKEN (a module path, a colon, a token "
               "label of at most 32 bytes)",
               spec);
  m2mpsk_p11_token *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return M2MPSK_E_NOMEM;
  size_t mlen = (size_t)(colon - spec);
  char *module = strndup(spec, mlen);
  const char *label = colon + 1;
  int rc = M2MPSK_E_IO;
  if (module == NULL) {
    free(t);
    return M2MPSK_E_NOMEM;
  }
  t->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
  if (t->dl == NULL) {
    const char *why = dlerror();
    say(err, err_cap, M2MPSK_E_IO, "cannot load the PKCS#11 module %s: %s",
        module, why ? why : "?");
    goto fail;
  }
  CK_C_GetFunctionList get =
      (CK_C_GetFunctionList)(uintptr_t)dlsym(t->dl, "C_GetFunctionList");
  if (get == NULL) {
    say(err, err_cap, M2MPSK_E_IO, "%s has no C_GetFunctionList", module);
    goto fail;
  }
  CK_RV rv = get(&t->f);
  if (rv != CKR_OK || t->f == NULL) {
    p11_fail(err, err_cap, "C_GetFunctionList", rv);
    goto fail;
  }
  CK_C_INITIALIZE_ARGS ia = {0};
  ia.flags = CKF_OS_LOCKING_OK;
  /* NSS softoken's parameters string (configdir=...), else none. */
  ia.pReserved = (void *)(uintptr_t)init_args;
  rv = t->f->C_Initialize(&ia);
  if (rv == CKR_OK)
    t->initialized = 1;
  else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    p11_fail(err, err_cap, "C_Initialize", rv);
    t->f = NULL;
    goto fail;
  }
  CK_ULONG n = 0;
  rv = t->f->C_GetSlotList(CK_TRUE, NULL, &n);
  CK_SLOT_ID *slots = NULL;
  if (rv == CKR_OK && n > 0) {
    slots = calloc(n, sizeof(*slots));
    if (slots == NULL) {
      rc = M2MPSK_E_NOMEM;
      goto fail;
    }
    rv = t->f->C_GetSlotList(CK_TRUE, slots, &n);
  }
  if (rv != CKR_OK) {
    free(slots);
    p11_fail(err, err_cap, "C_GetSlotList", rv);
    goto fail;
  }
  int found = 0;
  CK_SLOT_ID slot = 0;
  for (CK_ULONG i = 0; i < n && !found; i++) {
    CK_TOKEN_INFO ti;
    if (t->f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
      continue;
    size_t l = sizeof(ti.label);
    while (l > 0 && (ti.label[l - 1] == ' ' || ti.label[l - 1] == '\0'))
      l--;
    if (l == strlen(label) && memcmp(ti.label, label, l) == 0) {
      found = 1;
      slot = slots[i];
    }
  }
  free(slots);
  if (!found) {
    say(err, err_cap, M2MPSK_E_IO, "no token labelled '%s' in %s", label,
        module);
    goto fail;
  }
  rv = t->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                           NULL, &t->s);
  if (rv != CKR_OK) {
    p11_fail(err, err_cap, "C_OpenSession", rv);
    goto fail;
  }
  t->open = 1;
  t->slot = slot;
  snprintf(t->label, sizeof(t->label), "%s", label);
  rv = t->f->C_Login(t->s, CKU_USER, (CK_UTF8CHAR_PTR)(uintptr_t)pin,
                     (CK_ULONG)pin_len);
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    char what[96];
    snprintf(what, sizeof(what), "cannot log in to token '%s'", label);
    p11_fail(err, err_cap, what, rv);
    goto fail;
  }
  t->logged_in = rv == CKR_OK;
  free(module);
  *out = t;
  return M2MPSK_OK;
fail:
  free(module);
  m2mpsk_p11_close(t);
  return rc;
}

void m2mpsk_p11_close(m2mpsk_p11_token *t) {
  if (t == NULL)
    return;
  if (t->f != NULL) {
    if (t->logged_in)
      (void)t->f->C_Logout(t->s);
    if (t->open)
      (void)t->f->C_CloseSession(t->s);
    if (t->initialized)
      (void)t->f->C_Finalize(NULL);
  }
  /* SoftHSM2 and others register atexit handlers and thread keys: the
   * module stays mapped for the life of the process. */
  free(t);
}

/* ---- finding objects ------------------------------------------------------
 */

/* Every object matching the template, into a malloc'd array. */
int p11_find(m2mpsk_p11_token *t, CK_ATTRIBUTE *tmpl, CK_ULONG n,
             CK_OBJECT_HANDLE **out, size_t *count, char *err, size_t cap) {
  *out = NULL;
  *count = 0;
  CK_RV rv = t->f->C_FindObjectsInit(t->s, tmpl, n);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_FindObjectsInit", rv);
  size_t have = 0, room = 0;
  CK_OBJECT_HANDLE *hs = NULL;
  int rc = M2MPSK_OK;
  for (;;) {
    if (have == room) {
      size_t grow = room ? room * 2 : 16;
      CK_OBJECT_HANDLE *g = realloc(hs, grow * sizeof(*g));
      if (g == NULL) {
        rc = M2MPSK_E_NOMEM;
        break;
      }
      hs = g;
      room = grow;
    }
    CK_ULONG got = 0;
    rv = t->f->C_FindObjects(t->s, hs + have, (CK_ULONG)(room - have), &got);
    if (rv != CKR_OK) {
      rc = p11_fail(err, cap, "C_FindObjects", rv);
      break;
    }
    if (got == 0)
      break;
    have += got;
  }
  rv = t->f->C_FindObjectsFinal(t->s);
  if (rc == M2MPSK_OK && rv != CKR_OK)
    rc = p11_fail(err, cap, "C_FindObjectsFinal", rv);
  if (rc != M2MPSK_OK) {
    free(hs);
    return rc;
  }
  *out = hs;
  *count = have;
  return M2MPSK_OK;
}

static const CK_BBOOL k_true = CK_TRUE, k_false = CK_FALSE;
static const CK_OBJECT_CLASS k_data = CKO_DATA, k_secret = CKO_SECRET_KEY;
static const CK_KEY_TYPE k_generic = CKK_GENERIC_SECRET, k_aes = CKK_AES;

#define ATTR(t, p, l)                                                          \
  { (t), (void *)(uintptr_t)(p), (CK_ULONG)(l) }

/* The fields objects kept as keys. NSS softoken refuses token CKO_DATA
 * objects ("no private or token data objects": CKR_ATTRIBUTE_VALUE_INVALID),
 * makes every token secret key sensitive, and keeps one secret key per
 * CKA_ID (a second one replaces the first). There the oneM2M fields of K
 * are a CKO_SECRET_KEY that is no key (a random value, no usage at all)
 * with CKA_ID = FIELDS_PREFIX K and the record's text as its CKA_LABEL,
 * which is never sensitive. The Kpsa's CKA_ID is K itself. */
#define FIELDS_PREFIX "m2mpsk-fields:"
#define FIELDS_PREFIX_LEN (sizeof(FIELDS_PREFIX) - 1)

/* The KpsaID of a fields object's CKA_ID ("" if not one) into id. */
static int fields_id(m2mpsk_p11_token *t, CK_OBJECT_HANDLE h, char *id,
                     size_t cap) {
  char b[FIELDS_PREFIX_LEN + M2MPSK_KPSA_ID_MAX + 1];
  CK_ATTRIBUTE a = ATTR(CKA_ID, b, sizeof(b) - 1);
  id[0] = '\0';
  CK_RV rv = t->f->C_GetAttributeValue(t->s, h, &a, 1);
  if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
      a.ulValueLen <= FIELDS_PREFIX_LEN ||
      memcmp(b, FIELDS_PREFIX, FIELDS_PREFIX_LEN) != 0)
    return 0;
  b[a.ulValueLen] = '\0';
  snprintf(id, cap, "%s", b + FIELDS_PREFIX_LEN);
  return 1;
}

/* Appends the matches of tm to *out. */
static int find_more(m2mpsk_p11_token *t, CK_ATTRIBUTE *tm, CK_ULONG n,
                     CK_OBJECT_HANDLE **out, size_t *count, int fields_only,
                     char *err, size_t cap) {
  CK_OBJECT_HANDLE *more;
  size_t m;
  int rc = p11_find(t, tm, n, &more, &m, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  size_t k = 0;
  for (size_t i = 0; i < m; i++) {
    char id[M2MPSK_KPSA_ID_MAX + 1];
    if (!fields_only || fields_id(t, more[i], id, sizeof(id)))
      more[k++] = more[i];
  }
  if (k > 0) {
    CK_OBJECT_HANDLE *all = realloc(*out, (*count + k) * sizeof(*all));
    if (all == NULL) {
      free(more);
      return M2MPSK_E_NOMEM;
    }
    memcpy(all + *count, more, k * sizeof(*all));
    *out = all;
    *count += k;
  }
  free(more);
  return M2MPSK_OK;
}

/* The data objects (data 1: CKO_DATA with CKA_APPLICATION "m2mpsk", then
 * the fields objects kept as keys) or key objects (data 0: CKA_LABEL and
 * CKA_ID `id`) of KpsaID `id`, or every m2mpsk data object (id NULL). */
static int find_by_label(m2mpsk_p11_token *t, int data, const char *id,
                         CK_OBJECT_HANDLE **out, size_t *count, char *err,
                         size_t cap) {
  CK_ATTRIBUTE tm[5] = {
      ATTR(CKA_CLASS, data ? &k_data : &k_secret, sizeof(CK_OBJECT_CLASS)),
      ATTR(CKA_TOKEN, &k_true, sizeof(CK_BBOOL))};
  CK_ULONG n = 2;
  if (data)
    tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_APPLICATION, M2MPSK_P11_APPLICATION,
                                 strlen(M2MPSK_P11_APPLICATION));
  else
    tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &k_generic, sizeof(k_generic));
  if (id != NULL)
    tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, id, strlen(id));
  if (!data && id != NULL)
    tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_ID, id, strlen(id));
  int rc = p11_find(t, tm, n, out, count, err, cap);
  if (rc != M2MPSK_OK || !data)
    return rc;
  /* And the fields objects kept as keys: by CKA_ID, or all (filtered). */
  char fid[FIELDS_PREFIX_LEN + M2MPSK_KPSA_ID_MAX + 1];
  CK_ATTRIBUTE ft[3] = {ATTR(CKA_CLASS, &k_secret, sizeof(k_secret)),
                        ATTR(CKA_TOKEN, &k_true, sizeof(CK_BBOOL))};
  n = 2;
  if (id != NULL) {
    snprintf(fid, sizeof(fid), "%s%s", FIELDS_PREFIX, id);
    ft[n++] = (CK_ATTRIBUTE)ATTR(CKA_ID, fid, strlen(fid));
  }
  rc = find_more(t, ft, n, out, count, id == NULL, err, cap);
  if (rc != M2MPSK_OK) {
    free(*out);
    *out = NULL;
    *count = 0;
  }
  return rc;
}

/* 1 when h is a fields object kept as a key (not a CKO_DATA). */
static int is_fields_key(m2mpsk_p11_token *t, CK_OBJECT_HANDLE h) {
  CK_OBJECT_CLASS c = CKO_DATA;
  CK_ATTRIBUTE a = ATTR(CKA_CLASS, &c, sizeof(c));
  return t->f->C_GetAttributeValue(t->s, h, &a, 1) == CKR_OK &&
         c == CKO_SECRET_KEY;
}

/* An attribute into a new buffer (NUL-terminated, not counted), from
 * sodium_malloc when `secret`. */
static int get_attr(m2mpsk_p11_token *t, CK_OBJECT_HANDLE h,
                    CK_ATTRIBUTE_TYPE type, int secret, uint8_t **out,
                    size_t *len, size_t max, char *err, size_t cap) {
  CK_ATTRIBUTE a = {type, NULL, 0};
  *out = NULL;
  *len = 0;
  CK_RV rv = t->f->C_GetAttributeValue(t->s, h, &a, 1);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_GetAttributeValue", rv);
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > max)
    return say(err, cap, M2MPSK_E_PROTOCOL, "an attribute is %s",
               a.ulValueLen == CK_UNAVAILABLE_INFORMATION ? "unavailable"
                                                          : "too long");
  size_t l = (size_t)a.ulValueLen;
  uint8_t *b = secret ? sodium_malloc(l + 1) : malloc(l + 1);
  if (b == NULL)
    return M2MPSK_E_NOMEM;
  a.pValue = b;
  rv = t->f->C_GetAttributeValue(t->s, h, &a, 1);
  if (rv != CKR_OK || a.ulValueLen != l) {
    if (secret) {
      sodium_free(b);
    } else {
      free(b);
    }
    return p11_fail(err, cap, "C_GetAttributeValue",
                    rv != CKR_OK ? rv : CKR_GENERAL_ERROR);
  }
  b[l] = '\0';
  *out = b;
  *len = l;
  return M2MPSK_OK;
}

/* ---- the data object's text --------------------------------------------- */

static size_t data_format(const m2mpsk_p11_record *r, char *out, size_t cap) {
  int n =
      snprintf(out, cap,
               "v=1\nida=%s\nidb=%s\nnot_before=%" PRId64 "\nnot_after=%" PRId64
               "\nrevoked=%d\nkind=%s\n",
               r->ida, r->idb, r->not_before, r->not_after, r->revoked ? 1 : 0,
               r->token_only ? "token-only" : "readable");
  return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* The next "name=value\n" line; NULL (and *why) if it is not that. */
static const char *field(const char **p, const char *end, const char *name,
                         size_t *vlen, const char **why) {
  size_t nl = strlen(name);
  const char *s = *p;
  if ((size_t)(end - s) < nl + 2 || memcmp(s, name, nl) != 0 || s[nl] != '=') {
    *why = name;
    return NULL;
  }
  const char *v = s + nl + 1, *e = memchr(v, '\n', (size_t)(end - v));
  if (e == NULL || memchr(v, '\0', (size_t)(e - v)) != NULL) {
    *why = name;
    return NULL;
  }
  *vlen = (size_t)(e - v);
  *p = e + 1;
  return v;
}

static int parse_int(const char *v, size_t n, int64_t *out) {
  if (n == 0 || n > 18)
    return -1;
  int64_t x = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    x = x * 10 + (v[i] - '0');
  }
  *out = x;
  return 0;
}

/* Strict parse; 0, or -1 with a reason in err. */
static int data_parse(const uint8_t *buf, size_t len, m2mpsk_p11_record *r,
                      char *err, size_t cap) {
  const char *p = (const char *)buf, *end = p + len, *v, *why = NULL;
  size_t n;
  char tmp[32];
  if ((v = field(&p, end, "v", &n, &why)) == NULL || n != 1 || v[0] != '1') {
    say(err, cap, 0, "not a version 1 record ('v=1' first)");
    return -1;
  }
  why = "ida";
  if ((v = field(&p, end, "ida", &n, &why)) == NULL || n > M2MPSK_ID_MAX)
    goto bad;
  memcpy(r->ida, v, n);
  r->ida[n] = '\0';
  why = "idb";
  if ((v = field(&p, end, "idb", &n, &why)) == NULL || n > M2MPSK_ID_MAX)
    goto bad;
  memcpy(r->idb, v, n);
  r->idb[n] = '\0';
  why = "not_before";
  if ((v = field(&p, end, "not_before", &n, &why)) == NULL ||
      parse_int(v, n, &r->not_before) != 0)
    goto bad;
  why = "not_after";
  if ((v = field(&p, end, "not_after", &n, &why)) == NULL ||
      parse_int(v, n, &r->not_after) != 0)
    goto bad;
  why = "revoked";
  if ((v = field(&p, end, "revoked", &n, &why)) == NULL || n != 1 ||
      (v[0] != '0' && v[0] != '1'))
    goto bad;
  r->revoked = v[0] == '1';
  why = "kind";
  if ((v = field(&p, end, "kind", &n, &why)) == NULL || n >= sizeof(tmp))
    goto bad;
  memcpy(tmp, v, n);
  tmp[n] = '\0';
  if (strcmp(tmp, "readable") == 0)
    r->token_only = 0;
  else if (strcmp(tmp, "token-only") == 0)
    r->token_only = 1;
  else
    goto bad;
  if (p != end) {
    say(err, cap, 0, "data after the kind line");
    return -1;
  }
  if ((r->ida[0] && m2mpsk_ida_validate(r->ida) != M2MPSK_OK) ||
      m2mpsk_idb_validate(r->idb) != M2MPSK_OK) {
    say(err, cap, 0, "an identity is not valid (ida/idb)");
    return -1;
  }
  if (r->not_before && r->not_after && r->not_after < r->not_before) {
    say(err, cap, 0, "not_after before not_before");
    return -1;
  }
  return 0;
bad:
  say(err, cap, 0, "bad or missing '%s' line", why ? why : "?");
  return -1;
}

/* ---- records ---------------------------------------------------------------
 */

static int check_fields(const char *kpsa_id, size_t key_len, const char *ida,
                        const char *idb, int64_t nb, int64_t na, char *err,
                        size_t cap) {
  int rc;
  if (kpsa_id == NULL || idb == NULL)
    return say(err, cap, M2MPSK_E_INVALID, "a KpsaID and an IdB are needed");
  if ((rc = m2mpsk_kpsa_id_validate(kpsa_id)) != M2MPSK_OK)
    return say(err, cap, rc, "KpsaID '%s': %s", kpsa_id, m2mpsk_strerror(rc));
  if ((rc = m2mpsk_idb_validate(idb)) != M2MPSK_OK)
    return say(err, cap, rc, "IdB '%s': %s", idb, m2mpsk_strerror(rc));
  if (ida != NULL && ida[0] && (rc = m2mpsk_ida_validate(ida)) != M2MPSK_OK)
    return say(err, cap, rc, "IdA '%s': %s", ida, m2mpsk_strerror(rc));
  if (nb < 0 || na < 0 || (nb && na && na < nb))
    return say(err, cap, M2MPSK_E_VALIDITY, "not-after is before not-before");
  if (key_len != 0 && (key_len < M2MPSK_KEY_MIN || key_len > M2MPSK_KEY_MAX))
    return say(err, cap, M2MPSK_E_KEY_LENGTH, "a key is %d to %d bytes",
               M2MPSK_KEY_MIN, M2MPSK_KEY_MAX);
  return M2MPSK_OK;
}

/* M2MPSK_E_DUPLICATE if a data or key object has the label. */
static int refuse_duplicate(m2mpsk_p11_token *t, const char *id, char *err,
                            size_t cap) {
  for (int data = 0; data < 2; data++) {
    CK_OBJECT_HANDLE *hs;
    size_t n;
    int rc = find_by_label(t, data, id, &hs, &n, err, cap);
    if (rc != M2MPSK_OK)
      return rc;
    free(hs);
    if (n > 0)
      return say(err, cap, M2MPSK_E_DUPLICATE,
                 "the token already has a record %s", id);
  }
  return M2MPSK_OK;
}

static int create_data(m2mpsk_p11_token *t, const char *id,
                       const m2mpsk_p11_record *r, char *err, size_t cap) {
  char text[DATA_MAX];
  size_t n = data_format(r, text, sizeof(text));
  if (n == 0)
    return say(err, cap, M2MPSK_E_INVALID, "the record does not fit");
  CK_ATTRIBUTE tm[] = {
      ATTR(CKA_CLASS, &k_data, sizeof(k_data)),
      ATTR(CKA_TOKEN, &k_true, sizeof(CK_BBOOL)),
      ATTR(CKA_APPLICATION, M2MPSK_P11_APPLICATION,
           strlen(M2MPSK_P11_APPLICATION)),
      ATTR(CKA_LABEL, id, strlen(id)),
      ATTR(CKA_VALUE, text, n),
      ATTR(CKA_PRIVATE, &k_true, sizeof(CK_BBOOL)), /* last: see below */
  };
  CK_ULONG tn = sizeof(tm) / sizeof(tm[0]);
  CK_OBJECT_HANDLE h;
  CK_RV rv = t->f->C_CreateObject(t->s, tm, tn, &h);
  if (rv == CKR_ATTRIBUTE_VALUE_INVALID) {
    /* NSS softoken refuses token data objects: a fields object kept as a
     * key (FIELDS_PREFIX above), its text the label. */
    char fid[FIELDS_PREFIX_LEN + M2MPSK_KPSA_ID_MAX + 1];
    snprintf(fid, sizeof(fid), "%s%s", FIELDS_PREFIX, id);
    CK_ULONG vl = 16;
    CK_ATTRIBUTE ft[] = {
        ATTR(CKA_CLASS, &k_secret, sizeof(k_secret)),
        ATTR(CKA_KEY_TYPE, &k_generic, sizeof(k_generic)),
        ATTR(CKA_TOKEN, &k_true, sizeof(CK_BBOOL)),
        ATTR(CKA_PRIVATE, &k_true, sizeof(CK_BBOOL)),
        ATTR(CKA_LABEL, text, n),
        ATTR(CKA_ID, fid, strlen(fid)),
        ATTR(CKA_DERIVE, &k_false, sizeof(CK_BBOOL)),
        ATTR(CKA_SIGN, &k_false, sizeof(CK_BBOOL)),
        ATTR(CKA_VERIFY, &k_false, sizeof(CK_BBOOL)),
        ATTR(CKA_ENCRYPT, &k_false, sizeof(CK_BBOOL)),
        ATTR(CKA_DECRYPT, &k_false, sizeof(CK_BBOOL)),
        ATTR(CKA_WRAP, &k_false, sizeof(CK_BBOOL)),
        ATTR(CKA_UNWRAP, &k_false, sizeof(CK_BBOOL)),
        ATTR(CKA_VALUE_LEN, &vl, sizeof(vl)),
    };
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    rv = t->f->C_GenerateKey(t->s, &gen, ft, sizeof(ft) / sizeof(ft[0]), &h);
  }
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_CreateObject (data object)", rv);
  return M2MPSK_OK;
}

/* The key template of p11_keys.h; `extra` (CKA_VALUE or CKA_VALUE_LEN)
 * last, or none. Returns the attribute count. */
static CK_ULONG key_template(CK_ATTRIBUTE *tm, const char *id, int token_only,
                             const CK_ATTRIBUTE *extra) {
  CK_ULONG n = 0;
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &k_secret, sizeof(k_secret));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &k_generic, sizeof(k_generic));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_TOKEN, &k_true, sizeof(CK_BBOOL));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_PRIVATE, &k_true, sizeof(CK_BBOOL));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, id, strlen(id));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_ID, id, strlen(id));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_DERIVE, &k_true, sizeof(CK_BBOOL));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_SIGN, &k_true, sizeof(CK_BBOOL));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_SENSITIVE, token_only ? &k_true : &k_false,
                               sizeof(CK_BBOOL));
  tm[n++] = (CK_ATTRIBUTE)ATTR(CKA_EXTRACTABLE, token_only ? &k_false : &k_true,
                               sizeof(CK_BBOOL));
  if (extra != NULL)
    tm[n++] = *extra;
  return n;
}

static void fill_record(m2mpsk_p11_record *r, const char *id, const char *ida,
                        const char *idb, int64_t nb, int64_t na,
                        int token_only) {
  memset(r, 0, sizeof(*r));
  snprintf(r->kpsa_id, sizeof(r->kpsa_id), "%s", id);
  snprintf(r->ida, sizeof(r->ida), "%s", ida ? ida : "");
  snprintf(r->idb, sizeof(r->idb), "%s", idb);
  r->not_before = nb;
  r->not_after = na;
  r->token_only = token_only;
}

/* The data object after the key: on failure the key goes again. */
static int finish_record(m2mpsk_p11_token *t, CK_OBJECT_HANDLE key,
                         const m2mpsk_p11_record *r, char *err, size_t cap) {
  int rc = create_data(t, r->kpsa_id, r, err, cap);
  if (rc != M2MPSK_OK)
    (void)t->f->C_DestroyObject(t->s, key);
  return rc;
}

int m2mpsk_p11_generate(m2mpsk_p11_token *t, const char *id, size_t key_len,
                        const char *ida, const char *idb, int64_t nb,
                        int64_t na, int token_only, char *err, size_t cap) {
  if (t == NULL)
    return M2MPSK_E_INVALID;
  if (key_len == 0)
    key_len = 32;
  int rc = check_fields(id, key_len, ida, idb, nb, na, err, cap);
  if (rc == M2MPSK_OK)
    rc = refuse_duplicate(t, id, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  CK_ULONG vl = (CK_ULONG)key_len;
  CK_ATTRIBUTE len_attr = ATTR(CKA_VALUE_LEN, &vl, sizeof(vl));
  CK_ATTRIBUTE tm[12];
  CK_ULONG n = key_template(tm, id, token_only, &len_attr);
  CK_MECHANISM mech = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
  CK_OBJECT_HANDLE h;
  CK_RV rv = t->f->C_GenerateKey(t->s, &mech, tm, n, &h);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_GenerateKey", rv);
  m2mpsk_p11_record r;
  fill_record(&r, id, ida, idb, nb, na, token_only);
  return finish_record(t, h, &r, err, cap);
}

/* One record of the key file into the token. */
static int create_key(m2mpsk_p11_token *t, const m2mpsk_p11_record *r,
                      const uint8_t *key, size_t key_len, char *err,
                      size_t cap) {
  int rc = refuse_duplicate(t, r->kpsa_id, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  CK_ATTRIBUTE val = ATTR(CKA_VALUE, key, key_len);
  CK_ATTRIBUTE tm[12];
  CK_ULONG n = key_template(tm, r->kpsa_id, r->token_only, &val);
  CK_OBJECT_HANDLE h;
  CK_RV rv = t->f->C_CreateObject(t->s, tm, n, &h);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_CreateObject (key)", rv);
  return finish_record(t, h, r, err, cap);
}

int m2mpsk_p11_import_file(m2mpsk_p11_token *t, const char *path,
                           int token_only, size_t *done, char *err,
                           size_t cap) {
  if (done != NULL)
    *done = 0;
  if (t == NULL || path == NULL)
    return M2MPSK_E_INVALID;
  /* The library's loader checks the whole file first (permissions,
   * syntax, every value, duplicates), with its line numbers. */
  m2mpsk_keystore *ks = NULL;
  size_t bad = 0;
  int rc = m2mpsk_keystore_new(&ks, 0);
  if (rc == M2MPSK_OK)
    rc = m2mpsk_keystore_load_file(ks, path, &bad);
  m2mpsk_keystore_free(ks);
  if (rc != M2MPSK_OK) {
    if (bad)
      return say(err, cap, rc, "%s: %s at line %zu", path, m2mpsk_strerror(rc),
                 bad);
    return say(err, cap, rc, "%s: %s", path, m2mpsk_strerror(rc));
  }
  FILE *fp = fopen(path, "re");
  if (fp == NULL)
    return say(err, cap, M2MPSK_E_IO, "%s: %s", path, strerror(errno));
  /* Lines are read through guarded memory, wiped when freed; stdio's own
   * buffer is turned off so that no copy is left there. */
  setvbuf(fp, NULL, _IONBF, 0);
  const size_t line_cap = 4096 + 3;
  char *line = sodium_malloc(line_cap);
  cli_key_record *k = sodium_malloc(sizeof(*k));
  m2mpsk_p11_record *r = malloc(sizeof(*r));
  if (line == NULL || k == NULL || r == NULL) {
    rc = M2MPSK_E_NOMEM;
    goto out;
  }
  size_t lineno = 0;
  while (fgets(line, (int)line_cap, fp) != NULL) {
    lineno++;
    line[strcspn(line, "\n")] = '\0';
    int got = cli_parse_key_line(line, k);
    if (got < 0) {
      rc = say(err, cap, M2MPSK_E_KEYFILE_SYNTAX, "%s:%zu: malformed", path,
               lineno);
      break;
    }
    if (got == 0)
      continue;
    memset(r, 0, sizeof(*r));
    memcpy(r->kpsa_id, k->kpsa_id, sizeof(r->kpsa_id));
    memcpy(r->ida, k->ida, sizeof(r->ida));
    memcpy(r->idb, k->idb, sizeof(r->idb));
    r->not_before = k->not_before;
    r->not_after = k->not_after;
    r->token_only = token_only;
    rc = create_key(t, r, k->key, k->key_len, err, cap);
    sodium_memzero(k, sizeof(*k));
    if (rc != M2MPSK_OK)
      break;
    if (done != NULL)
      (*done)++;
  }
out:
  fclose(fp);
  if (line != NULL)
    sodium_free(line);
  if (k != NULL)
    sodium_free(k);
  free(r);
  return rc;
}

int m2mpsk_p11_import_wrapped(m2mpsk_p11_token *t, const char *id,
                              const uint8_t *wrapped, size_t wrapped_len,
                              const char *unwrap_label, const char *ida,
                              const char *idb, int64_t nb, int64_t na,
                              int token_only, char *err, size_t cap) {
  if (t == NULL || wrapped == NULL || unwrap_label == NULL)
    return M2MPSK_E_INVALID;
  int rc = check_fields(id, 0, ida, idb, nb, na, err, cap);
  if (rc == M2MPSK_OK)
    rc = refuse_duplicate(t, id, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  CK_ATTRIBUTE ut[] = {
      ATTR(CKA_CLASS, &k_secret, sizeof(k_secret)),
      ATTR(CKA_KEY_TYPE, &k_aes, sizeof(k_aes)),
      ATTR(CKA_LABEL, unwrap_label, strlen(unwrap_label)),
  };
  CK_OBJECT_HANDLE *hs;
  size_t n;
  rc = p11_find(t, ut, 3, &hs, &n, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  if (n != 1) {
    free(hs);
    return say(err, cap, n == 0 ? M2MPSK_E_NOT_FOUND : M2MPSK_E_INVALID,
               n == 0 ? "no AES key labelled '%s' in the token"
                      : "more than one AES key labelled '%s'",
               unwrap_label);
  }
  CK_OBJECT_HANDLE kek = hs[0];
  free(hs);
  CK_ATTRIBUTE tm[12];
  CK_ULONG tn = key_template(tm, id, token_only, NULL);
  CK_MECHANISM mech = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
  CK_OBJECT_HANDLE h;
  CK_RV rv =
      t->f->C_UnwrapKey(t->s, &mech, kek, (CK_BYTE_PTR)(uintptr_t)wrapped,
                        (CK_ULONG)wrapped_len, tm, tn, &h);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_UnwrapKey (CKM_AES_KEY_WRAP_PAD)", rv);
  CK_ULONG vl = 0;
  CK_ATTRIBUTE la = ATTR(CKA_VALUE_LEN, &vl, sizeof(vl));
  rv = t->f->C_GetAttributeValue(t->s, h, &la, 1);
  if (rv == CKR_OK && vl == 0) {
    /* SoftHSM2 leaves CKA_VALUE_LEN 0 on unwrapped generic secrets: a
     * readable key tells its length by CKA_VALUE's size; a token-only one
     * only by the wrapping (RFC 5649: the padded length, 8 more). */
    CK_ATTRIBUTE va = {CKA_VALUE, NULL, 0};
    if (!token_only &&
        (rv = t->f->C_GetAttributeValue(t->s, h, &va, 1)) == CKR_OK)
      vl = va.ulValueLen;
    else if (token_only)
      vl = wrapped_len > 8 ? (CK_ULONG)(wrapped_len - 8) : 0;
  }
  if (rv != CKR_OK || vl < M2MPSK_KEY_MIN || vl > M2MPSK_KEY_MAX) {
    (void)t->f->C_DestroyObject(t->s, h);
    if (rv != CKR_OK)
      return p11_fail(err, cap, "C_GetAttributeValue (CKA_VALUE_LEN)", rv);
    return say(err, cap, M2MPSK_E_KEY_LENGTH,
               "the unwrapped key is %lu bytes, not %d to %d",
               (unsigned long)vl, M2MPSK_KEY_MIN, M2MPSK_KEY_MAX);
  }
  m2mpsk_p11_record r;
  fill_record(&r, id, ida, idb, nb, na, token_only);
  return finish_record(t, h, &r, err, cap);
}

/* ---- list, lookup, revoke, delete ----------------------------------------
 */

/* Reads and parses one data object. M2MPSK_E_PROTOCOL: malformed (err). */
static int read_data(m2mpsk_p11_token *t, CK_OBJECT_HANDLE h,
                     m2mpsk_p11_record *r, char *label, size_t label_cap,
                     char *err, size_t cap) {
  uint8_t *b;
  size_t n;
  memset(r, 0, sizeof(*r));
  label[0] = '\0';
  int rc;
  int as_key = is_fields_key(t, h);
  if (as_key) {
    /* A fields object kept as a key: K in its CKA_ID, the text its
     * label. */
    char id[M2MPSK_KPSA_ID_MAX + 1];
    (void)fields_id(t, h, id, sizeof(id));
    snprintf(label, label_cap, "%s", id);
  } else {
    rc =
        get_attr(t, h, CKA_LABEL, 0, &b, &n, M2MPSK_KPSA_ID_MAX + 64, err, cap);
    if (rc != M2MPSK_OK)
      return rc;
    snprintf(label, label_cap, "%s", (char *)b);
    free(b);
    if (strlen(label) != n)
      label[0] = '\0';
  }
  if (m2mpsk_kpsa_id_validate(label) != M2MPSK_OK)
    return say(err, cap, M2MPSK_E_PROTOCOL, "its label is not a KpsaID");
  snprintf(r->kpsa_id, sizeof(r->kpsa_id), "%s", label);
  rc = get_attr(t, h, as_key ? CKA_LABEL : CKA_VALUE, 0, &b, &n, DATA_MAX, err,
                cap);
  if (rc != M2MPSK_OK)
    return rc;
  char why[160];
  int bad = data_parse(b, n, r, why, sizeof(why));
  free(b);
  if (bad)
    return say(err, cap, M2MPSK_E_PROTOCOL, "%s", why);
  return M2MPSK_OK;
}

/* The key object labelled like r: has_key, key_len and, with `key`, the
 * key itself. */
static int read_key(m2mpsk_p11_token *t, m2mpsk_p11_record *r, uint8_t *key,
                    char *err, size_t cap) {
  CK_OBJECT_HANDLE *hs;
  size_t n;
  r->key_object = 0;
  int rc = find_by_label(t, 0, r->kpsa_id, &hs, &n, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  r->has_key = n > 0;
  CK_OBJECT_HANDLE h = n > 0 ? hs[0] : 0;
  r->key_object = (unsigned long)h;
  free(hs);
  if (n > 1)
    return say(err, cap, M2MPSK_E_PROTOCOL, "more than one key object");
  if (!r->has_key)
    return M2MPSK_OK;
  CK_BBOOL sens = CK_TRUE, extr = CK_FALSE;
  CK_ATTRIBUTE q[] = {ATTR(CKA_SENSITIVE, &sens, sizeof(sens)),
                      ATTR(CKA_EXTRACTABLE, &extr, sizeof(extr))};
  CK_RV rv = t->f->C_GetAttributeValue(t->s, h, q, 2);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_GetAttributeValue", rv);
  CK_ATTRIBUTE sz = {CKA_VALUE, NULL, 0};
  if (!sens && extr) {
    rv = t->f->C_GetAttributeValue(t->s, h, &sz, 1);
    /* NSS softoken keeps the value of its token secret keys to itself,
     * whatever CKA_SENSITIVE says: such a key is token-only too. */
    if (rv == CKR_ATTRIBUTE_SENSITIVE)
      sens = CK_TRUE;
    else if (rv != CKR_OK)
      return p11_fail(err, cap, "C_GetAttributeValue (the key's size)", rv);
  }
  if (sens || !extr) {
    /* The object decides, whatever the data object says. Its length is
     * CKA_VALUE_LEN (0 when the token does not say: not usable). */
    r->token_only = 1;
    CK_ULONG vl = 0;
    CK_ATTRIBUTE la = ATTR(CKA_VALUE_LEN, &vl, sizeof(vl));
    rv = t->f->C_GetAttributeValue(t->s, h, &la, 1);
    if (rv == CKR_OK && vl >= M2MPSK_KEY_MIN && vl <= M2MPSK_KEY_MAX)
      r->key_len = (size_t)vl;
    return M2MPSK_OK;
  }
  if (r->token_only)
    return say(err, cap, M2MPSK_E_PROTOCOL,
               "kind=token-only but the key object is readable");
  /* CKA_VALUE's size (above), not CKA_VALUE_LEN: SoftHSM2 leaves the
   * latter 0 on unwrapped keys. */
  CK_ULONG vl = sz.ulValueLen;
  if (vl < M2MPSK_KEY_MIN || vl > M2MPSK_KEY_MAX)
    return say(err, cap, M2MPSK_E_PROTOCOL, "the key is %lu bytes",
               (unsigned long)vl);
  r->key_len = (size_t)vl;
  if (key == NULL)
    return M2MPSK_OK;
  CK_ATTRIBUTE v = ATTR(CKA_VALUE, key, M2MPSK_KEY_MAX);
  rv = t->f->C_GetAttributeValue(t->s, h, &v, 1);
  if (rv != CKR_OK || v.ulValueLen != vl) {
    sodium_memzero(key, M2MPSK_KEY_MAX);
    return p11_fail(err, cap, "C_GetAttributeValue (CKA_VALUE)",
                    rv != CKR_OK ? rv : CKR_GENERAL_ERROR);
  }
  return M2MPSK_OK;
}

int m2mpsk_p11_list(m2mpsk_p11_token *t, m2mpsk_p11_list_fn fn, void *arg,
                    char *err, size_t cap) {
  if (t == NULL || fn == NULL)
    return M2MPSK_E_INVALID;
  CK_OBJECT_HANDLE *hs;
  size_t n;
  int rc = find_by_label(t, 1, NULL, &hs, &n, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  m2mpsk_p11_record *r = malloc(sizeof(*r));
  if (r == NULL) {
    free(hs);
    return M2MPSK_E_NOMEM;
  }
  for (size_t i = 0; i < n && rc == M2MPSK_OK; i++) {
    char label[M2MPSK_KPSA_ID_MAX + 1], why[256];
    int got = read_data(t, hs[i], r, label, sizeof(label), why, sizeof(why));
    if (got == M2MPSK_OK)
      got = read_key(t, r, NULL, why, sizeof(why));
    if (got == M2MPSK_E_PROTOCOL)
      rc = fn(arg, NULL, label, why);
    else if (got == M2MPSK_OK)
      rc = fn(arg, r, label, NULL);
    else
      rc = say(err, cap, got, "%s", why);
  }
  free(r);
  free(hs);
  return rc;
}

/* The single data object of a KpsaID. */
static int data_handle(m2mpsk_p11_token *t, const char *id, CK_OBJECT_HANDLE *h,
                       char *err, size_t cap) {
  if (t == NULL || id == NULL)
    return M2MPSK_E_INVALID;
  CK_OBJECT_HANDLE *hs;
  size_t n;
  int rc = find_by_label(t, 1, id, &hs, &n, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  *h = n > 0 ? hs[0] : 0;
  free(hs);
  if (n == 0)
    return say(err, cap, M2MPSK_E_NOT_FOUND, "no record %s in the token", id);
  if (n > 1)
    return say(err, cap, M2MPSK_E_PROTOCOL, "%s: more than one data object",
               id);
  return M2MPSK_OK;
}

int m2mpsk_p11_lookup(m2mpsk_p11_token *t, const char *id, m2mpsk_p11_record *r,
                      uint8_t *key, char *err, size_t cap) {
  CK_OBJECT_HANDLE h;
  int rc = data_handle(t, id, &h, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  char label[M2MPSK_KPSA_ID_MAX + 1];
  rc = read_data(t, h, r, label, sizeof(label), err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  if (strcmp(r->kpsa_id, id) != 0)
    return say(err, cap, M2MPSK_E_PROTOCOL, "label mismatch");
  return read_key(t, r, r->revoked ? NULL : key, err, cap);
}

static int destroy_keys(m2mpsk_p11_token *t, const char *id, char *err,
                        size_t cap) {
  CK_OBJECT_HANDLE *hs;
  size_t n;
  int rc = find_by_label(t, 0, id, &hs, &n, err, cap);
  for (size_t i = 0; rc == M2MPSK_OK && i < n; i++) {
    CK_RV rv = t->f->C_DestroyObject(t->s, hs[i]);
    if (rv != CKR_OK)
      rc = p11_fail(err, cap, "C_DestroyObject (key)", rv);
  }
  free(hs);
  return rc;
}

int m2mpsk_p11_revoke(m2mpsk_p11_token *t, const char *id, char *err,
                      size_t cap) {
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  int rc = data_handle(t, id, &h, err, cap);
  m2mpsk_p11_record r;
  char label[M2MPSK_KPSA_ID_MAX + 1];
  if (rc == M2MPSK_OK)
    rc = read_data(t, h, &r, label, sizeof(label), err, cap);
  /* The key goes first: a record half revoked is still unusable. */
  if (rc == M2MPSK_OK || rc == M2MPSK_E_PROTOCOL) {
    int drc = destroy_keys(t, id, err, cap);
    if (drc != M2MPSK_OK)
      return drc;
  }
  if (rc != M2MPSK_OK)
    return rc;
  if (r.revoked)
    return M2MPSK_OK;
  r.revoked = 1;
  char text[DATA_MAX];
  size_t n = data_format(&r, text, sizeof(text));
  CK_ATTRIBUTE v = ATTR(is_fields_key(t, h) ? CKA_LABEL : CKA_VALUE, text, n);
  CK_RV rv = t->f->C_SetAttributeValue(t->s, h, &v, 1);
  if (rv == CKR_OK)
    return M2MPSK_OK;
  if (rv != CKR_ATTRIBUTE_READ_ONLY)
    return p11_fail(err, cap, "C_SetAttributeValue (revoked=1)", rv);
  /* A data object's CKA_VALUE may be fixed at creation (SoftHSM2): the
   * tombstone replaces it. Old one first, so that an interruption leaves
   * the record deleted, never two of them; the key is gone already. */
  rv = t->f->C_DestroyObject(t->s, h);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_DestroyObject (data object)", rv);
  return create_data(t, id, &r, err, cap);
}

int m2mpsk_p11_delete(m2mpsk_p11_token *t, const char *id, char *err,
                      size_t cap) {
  CK_OBJECT_HANDLE h;
  int rc = data_handle(t, id, &h, err, cap);
  if (rc == M2MPSK_E_PROTOCOL) {
    /* Several data objects: delete means all of them. */
    CK_OBJECT_HANDLE *hs;
    size_t n;
    rc = find_by_label(t, 1, id, &hs, &n, err, cap);
    for (size_t i = 0; rc == M2MPSK_OK && i < n; i++) {
      CK_RV rv = t->f->C_DestroyObject(t->s, hs[i]);
      if (rv != CKR_OK)
        rc = p11_fail(err, cap, "C_DestroyObject (data object)", rv);
    }
    free(hs);
    return rc == M2MPSK_OK ? destroy_keys(t, id, err, cap) : rc;
  }
  if (rc != M2MPSK_OK)
    return rc;
  rc = destroy_keys(t, id, err, cap);
  if (rc != M2MPSK_OK)
    return rc;
  CK_RV rv = t->f->C_DestroyObject(t->s, h);
  if (rv != CKR_OK)
    return p11_fail(err, cap, "C_DestroyObject (data object)", rv);
  return M2MPSK_OK;
}
