/* The oneM2M part of the gateway, the same for HTTP and CoAP: which
 * requests may reach the CSE over an association, and which identity the
 * association is bound to after an AE registered (TS-0003 §8.2.2.1,
 * TS-0004 §7.3.2.1). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gw.h"

int gw_gate_request(const m2mpsk_assoc *a, const char *from, int ae_create,
                    const char **why) {
  const char *dummy;
  if (why == NULL)
    why = &dummy;
  if (m2mpsk_assoc_state(a) != M2MPSK_STATE_ESTABLISHED) {
    *why = "no security association";
    return 4107;
  }
  m2mpsk_originator_verdict v;
  int rc = m2mpsk_assoc_originator_check(
      a, from && *from ? from : NULL,
      ae_create ? M2MPSK_ORIGINATOR_AE_CREATE : 0, &v);
  if (rc != M2MPSK_OK) {
    *why = from == NULL || *from == '\0' ? "no originator"
                                         : "malformed originator";
    return 4106;
  }
  if (v == M2MPSK_ORIGINATOR_ACCEPT) {
    *why = "accepted";
    return 0;
  }
  if (v == M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED) {
    *why = "security association required";
    return 4107;
  }
  if (m2mpsk_assoc_peer_id_is_credential(a))
    *why = ae_create ? "originator not allowed to register over this "
                       "association"
                     : "only an AE registration is allowed before an AE-ID "
                       "is bound";
  else if (from == NULL || *from == '\0')
    *why = "no originator";
  else
    *why = "originator does not match the security association";
  return 4106;
}

/* An AE-ID from the CSE's answer, made SP-relative or absolute: a stem
 * "Cx" goes under the local CSE-ID, "Sx" under its SP. */
static int full_ae_id(const char *aei, const char *local, char *out,
                      size_t cap) {
  int n;
  if (aei[0] == '/')
    n = snprintf(out, cap, "%s", aei);
  else if (aei[0] == 'C')
    n = snprintf(out, cap, "%s/%s", local, aei);
  else if (aei[0] == 'S') {
    size_t sp = 0;
    if (strncmp(local, "//", 2) == 0) {
      const char *slash = strchr(local + 2, '/');
      sp = slash ? (size_t)(slash - local) : strlen(local);
    }
    n = snprintf(out, cap, "%.*s/%s", (int)sp, local, aei);
  } else
    return -1;
  return n > 0 && (size_t)n < cap ? 0 : -1;
}

int gw_gate_response(m2mpsk_assoc *a, int ae_create, int rsc, const void *body,
                     size_t len, const char **why) {
  const char *dummy;
  if (why == NULL)
    why = &dummy;
  *why = "";
  if (!ae_create || rsc != 2001 || !m2mpsk_assoc_peer_id_is_credential(a))
    return 0;
  const char *local = m2mpsk_assoc_local_id(a);
  if (body == NULL || len == 0 || local == NULL || len > (1u << 24)) {
    *why = "the CSE's AE CREATE response has no body";
    return -1;
  }
  json_tokener *tok = json_tokener_new();
  if (tok == NULL) {
    *why = "out of memory";
    return -1;
  }
  json_object *root = json_tokener_parse_ex(tok, body, (int)len);
  json_tokener_free(tok);
  json_object *ae = NULL, *aei = NULL;
  int result = -1;
  if (root == NULL)
    *why = "the CSE's AE CREATE response is not JSON";
  else if (!json_object_object_get_ex(root, "m2m:ae", &ae) ||
           !json_object_object_get_ex(ae, "aei", &aei) ||
           !json_object_is_type(aei, json_type_string))
    *why = "the CSE's AE CREATE response has no m2m:ae.aei";
  else {
    char id[M2MPSK_ID_MAX + 2];
    const char *s = json_object_get_string(aei);
    int rc;
    if (full_ae_id(s, local, id, sizeof(id)) != 0)
      *why = "the CSE assigned an AE-ID that is not one";
    else if ((rc = m2mpsk_assoc_bind_ae_id(a, id)) != M2MPSK_OK)
      *why = m2mpsk_strerror(rc);
    else
      result = 1;
  }
  json_object_put(root);
  return result;
}

const char *gw_gate_identity(const m2mpsk_assoc *a) {
  return m2mpsk_assoc_peer_id(a);
}

size_t gw_gate_dbg_body(const char *why, char *out, size_t cap) {
  static const char head[] = "{\"m2m:dbg\":\"", tail[] = "\"}";
  if (cap < sizeof(head) + sizeof(tail)) {
    if (cap > 0)
      out[0] = '\0';
    return 0;
  }
  size_t n = 0, room = cap - sizeof(tail); /* tail and its NUL */
  memcpy(out, head, sizeof(head) - 1);
  n = sizeof(head) - 1;
  for (const char *p = why ? why : ""; *p && n + 2 < room; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch == '"' || ch == '\\') {
      out[n++] = '\\';
      out[n++] = (char)ch;
    } else if (ch >= 0x20 && ch < 0x7f)
      out[n++] = (char)ch;
    else
      out[n++] = '?';
  }
  memcpy(out + n, tail, sizeof(tail));
  return n + sizeof(tail) - 1;
}

int gw_gate_content_type_ty(const char *ctype) {
  const char *p = ctype ? strchr(ctype, ';') : NULL;
  while (p != NULL) {
    p++;
    while (*p == ' ' || *p == '\t')
      p++;
    if (strncasecmp(p, "ty=", 3) == 0 && p[3] >= '0' && p[3] <= '9') {
      char *end;
      long v = strtol(p + 3, &end, 10);
      while (*end == ' ' || *end == '\t')
        end++;
      if (v >= 0 && v <= 1000000 && (*end == '\0' || *end == ';'))
        return (int)v;
    }
    p = strchr(p, ';');
  }
  return -1;
}
