/* Status codes, reason names and the version: the static strings of the
 * public API, kept in one place so that they cannot drift apart. */
#include "internal.h"

const char *m2mpsk_strerror(int status) {
  switch (status) {
  case M2MPSK_OK: return "success";
  case M2MPSK_E_INVALID: return "invalid argument";
  case M2MPSK_E_NOMEM: return "out of memory";
  case M2MPSK_E_AGAIN: return "nothing available yet (not an error)";
  case M2MPSK_E_CLOSED: return "association closed";
  case M2MPSK_E_FAILED: return "association failed";
  case M2MPSK_E_STATE: return "call not valid in the current state";
  case M2MPSK_E_BUFFER: return "buffer too small";
  case M2MPSK_E_INTERNAL: return "internal TLS library error";
  case M2MPSK_E_KPSA_ID:
    return "KpsaID is not Issuer_Relative_KpsaID@Issuer-FQDN";
  case M2MPSK_E_KPSA_ID_LENGTH: return "KpsaID is longer than 128 bytes";
  case M2MPSK_E_KEY_LENGTH: return "Kpsa must be 16 to 64 bytes";
  case M2MPSK_E_IDA: return "IdA is not a valid CSE-ID or AE-ID";
  case M2MPSK_E_IDB: return "IdB is not a valid CSE-ID";
  case M2MPSK_E_ID_LENGTH: return "identity is longer than 512 bytes";
  case M2MPSK_E_VALIDITY: return "validity window is invalid";
  case M2MPSK_E_DUPLICATE: return "KpsaID or identity already present";
  case M2MPSK_E_NOT_FOUND: return "no such record";
  case M2MPSK_E_UNLOCKED: return "key memory could not be locked";
  case M2MPSK_E_IO: return "key file could not be opened or read";
  case M2MPSK_E_KEYFILE_PERMS:
    return "key file is not a regular file private to its owner";
  case M2MPSK_E_KEYFILE_SYNTAX: return "key file line is malformed";
  case M2MPSK_E_KEYFILE_ENCODING: return "key is not valid hex or base64";
  case M2MPSK_E_SUITE: return "cipher suite unknown or unsupported";
  case M2MPSK_E_NO_LOCAL_ID:
    return "responder config has no local identity (IdB)";
  case M2MPSK_E_BACKEND: return "TLS backend module could not be loaded";
  case M2MPSK_E_LIMIT: return "a configured resource limit was reached";
  case M2MPSK_E_UNSUPPORTED: return "not supported by this build's TLS backend";
  case M2MPSK_E_PROTOCOL: return "malformed or unexpected bytes from the peer";
  default: return "unknown status";
  }
}

const char *m2mpsk_reason_name(int reason) {
  switch (reason) {
  case M2MPSK_REASON_NONE: return "none";
  case M2MPSK_REASON_UNKNOWN_IDENTITY: return "unknown-identity";
  case M2MPSK_REASON_BAD_KEY: return "bad-key";
  case M2MPSK_REASON_PEER_ALERT: return "peer-alert";
  case M2MPSK_REASON_PROTOCOL: return "protocol-error";
  case M2MPSK_REASON_TIMEOUT: return "timeout";
  case M2MPSK_REASON_EXPIRED: return "expired";
  case M2MPSK_REASON_REVOKED: return "revoked";
  case M2MPSK_REASON_MISUSE: return "misuse";
  case M2MPSK_REASON_ID_MISMATCH: return "identity-mismatch";
  case M2MPSK_REASON_INTERNAL: return "internal";
  case M2MPSK_REASON_RATE_LIMITED: return "rate-limited";
  case M2MPSK_REASON_LIMIT: return "limit";
  default: return "unknown";
  }
}

const char *m2mpsk_event_type_name(int type) {
  switch (type) {
  case M2MPSK_EVENT_NONE: return "none";
  case M2MPSK_EVENT_ESTABLISHED: return "established";
  case M2MPSK_EVENT_FAILED: return "failed";
  case M2MPSK_EVENT_REVOKED: return "revoked";
  case M2MPSK_EVENT_RATE_LIMITED: return "rate-limited";
  case M2MPSK_EVENT_CLOSED: return "closed";
  default: return "unknown";
  }
}

const char *m2mpsk_version_string(void) {
  return M2MPSK_VERSION_STRING;
}

unsigned m2mpsk_version_number(void) {
  return M2MPSK_VERSION_NUMBER;
}
