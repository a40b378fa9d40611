/* Suite profiles: TS-0003 §10.2.2's, as lists of IANA names filtered by
 * what the loadable TLS engines implement (their union). */
#include <string.h>

#include "internal.h"
#include "tls/engine.h"

/* RFC 4279's PSK key exchange only (no ECDHE_PSK, which is RFC 5489), in
 * preference order per transport, the mandated suite first. The 8-octet
 * tag of CCM_8 is kept for DTLS, where constrained peers need it, and put
 * last for TLS. */
static const char *const k_ts0003_tls[] = {
    "TLS_PSK_WITH_AES_128_CBC_SHA256", /* mandated for TLS */
    "TLS_PSK_WITH_AES_128_GCM_SHA256",
    "TLS_PSK_WITH_AES_256_GCM_SHA384",
    "TLS_PSK_WITH_AES_128_CCM",
    "TLS_PSK_WITH_AES_256_CCM",
    "TLS_PSK_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_PSK_WITH_AES_256_CBC_SHA384",
    "TLS_PSK_WITH_AES_128_CBC_SHA",
    "TLS_PSK_WITH_AES_256_CBC_SHA",
    "TLS_PSK_WITH_AES_128_CCM_8", /* mandated for DTLS */
    "TLS_PSK_WITH_AES_256_CCM_8",
};
static const char *const k_ts0003_dtls[] = {
    "TLS_PSK_WITH_AES_128_CCM_8", /* mandated for DTLS */
    "TLS_PSK_WITH_AES_128_CBC_SHA256", /* mandated for TLS */
    "TLS_PSK_WITH_AES_128_GCM_SHA256",
    "TLS_PSK_WITH_AES_256_GCM_SHA384",
    "TLS_PSK_WITH_AES_128_CCM",
    "TLS_PSK_WITH_AES_256_CCM",
    "TLS_PSK_WITH_AES_256_CCM_8",
    "TLS_PSK_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_PSK_WITH_AES_256_CBC_SHA384",
    "TLS_PSK_WITH_AES_128_CBC_SHA",
    "TLS_PSK_WITH_AES_256_CBC_SHA",
};
/* What §10.2.2 says implementations "shall implement at least", and an
 * Infrastructure Node's server all of. */
static const char *const k_ts0003_mandated[] = {
    "TLS_PSK_WITH_AES_128_CBC_SHA256",
    "TLS_PSK_WITH_AES_128_CCM_8",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Appends `name` to the colon-separated list in out (used bytes *n).
 * 0, or -1 when it does not fit. */
static int append(char *out, size_t cap, size_t *n, const char *name) {
  size_t len = strlen(name), sep = *n > 0;
  if (*n + sep + len + 1 > cap)
    return -1;
  if (sep)
    out[(*n)++] = ':';
  memcpy(out + *n, name, len + 1);
  *n += len;
  return 0;
}

static int check_args(m2mpsk_profile p, char *out, size_t cap) {
  if (p != M2MPSK_PROFILE_TS0003 || out == NULL)
    return M2MPSK_E_INVALID;
  if (cap == 0)
    return M2MPSK_E_BUFFER;
  out[0] = '\0';
  /* M2MPSK_E_INVALID from a single valid-looking name never happens; the
   * backend answers M2MPSK_OK, M2MPSK_E_SUITE or M2MPSK_E_BACKEND. */
  return m2mpsk_tls() == NULL ? M2MPSK_E_BACKEND : M2MPSK_OK;
}

int m2mpsk_profile_missing(m2mpsk_profile p, char *out, size_t cap) {
  int rc = check_args(p, out, cap);
  if (rc != M2MPSK_OK)
    return rc;
  size_t n = 0;
  for (size_t i = 0; i < COUNT(k_ts0003_mandated); i++)
    if (m2mpsk_engine_check_suites(M2MPSK_ENGINE_AUTO, k_ts0003_mandated[i]) != M2MPSK_OK &&
        append(out, cap, &n, k_ts0003_mandated[i]) != 0) {
      out[0] = '\0';
      return M2MPSK_E_BUFFER;
    }
  return M2MPSK_OK;
}

int m2mpsk_profile_suites(m2mpsk_profile p, m2mpsk_transport t, char *out,
                          size_t cap) {
  if (t != M2MPSK_TRANSPORT_TLS && t != M2MPSK_TRANSPORT_DTLS)
    return M2MPSK_E_INVALID;
  int rc = check_args(p, out, cap);
  if (rc != M2MPSK_OK)
    return rc;
  const char *const *list =
      t == M2MPSK_TRANSPORT_TLS ? k_ts0003_tls : k_ts0003_dtls;
  size_t count =
      t == M2MPSK_TRANSPORT_TLS ? COUNT(k_ts0003_tls) : COUNT(k_ts0003_dtls);
  size_t n = 0;
  for (size_t i = 0; i < count; i++)
    if (m2mpsk_engine_check_suites(M2MPSK_ENGINE_AUTO, list[i]) == M2MPSK_OK &&
        append(out, cap, &n, list[i]) != 0) {
      out[0] = '\0';
      return M2MPSK_E_BUFFER;
    }
  return M2MPSK_OK;
}

int m2mpsk_profile_honoured(m2mpsk_profile p) {
  char missing[128];
  return m2mpsk_profile_missing(p, missing, sizeof(missing)) == M2MPSK_OK &&
         missing[0] == '\0';
}
