/*
 * m2mpsk.i: the SWIG interface shared by every language binding.
 *
 * The public header is the manual; this file only decides what each
 * language sees:
 *  - a whitelist: every m2mpsk_ / M2MPSK_ name of the header is ignored, and
 *    the ones listed below are exposed by name with the prefix stripped;
 *  - five proxy classes, Keystore, Config, Association, Event and
 *    KeyRequest (since 0.4), each a
 *    small holder around one opaque handle, so that an explicit close() and
 *    the garbage collector can both release it and the second one does
 *    nothing, and every other method of a closed one raises E_INVALID;
 *  - one %exception that turns a negative status into the language's
 *    exception, carrying the code, the failure reason and a detail string.
 *
 * Byte buffers and the exception classes are per language, each in its
 * folder: <lang>/m2mpsk_<lang>.swg before the declarations and
 * <lang>/m2mpsk_<lang>_tail.swg after them, for python, java, go, csharp
 * and node (SWIG's -javascript -node).
 */
#if defined(SWIGJAVA) || defined(SWIGCSHARP)
%module(docstring="oneM2M security associations with pre-provisioned symmetric keys (TS-0003 8.2.2.1).") M2mpsk
#else
%module(docstring="oneM2M security associations with pre-provisioned symmetric keys (TS-0003 8.2.2.1).") m2mpsk
#endif

%{
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "m2mpsk/m2mpsk.h"

/* The proxy classes. A holder outlives its handle: close() frees the handle
 * and clears the pointer, the destructor (explicit or from the collector)
 * frees what is left, so no path frees a handle twice. The library counts
 * references on keystores and configs, so an association keeps both alive
 * whatever the language does with their holders. */
typedef struct Keystore { m2mpsk_keystore *h; } Keystore;
typedef struct Config { m2mpsk_config *h; } Config;
typedef struct Association { m2mpsk_assoc *h; } Association;
/* An event taken from a config's queue; it owns the event, not the config. */
typedef struct Event { m2mpsk_event *h; } Event;
/* One reference to a key request (since 0.4). */
typedef struct KeyRequest { m2mpsk_key_request *h; } KeyRequest;

/* The handle of a holder; null for a null holder, which Java passes once
 * delete() has run. */
#define M2MPSK_SWIG_H(x) ((x) != NULL ? (x)->h : NULL)

/* One keystore record as m2mpsk_keystore_lookup() returns it. */
typedef struct Record {
  char ida[M2MPSK_ID_MAX + 1];
  char idb[M2MPSK_ID_MAX + 1];
  int64_t not_before;
  int64_t not_after;
  int revoked;
} Record;

/* The status of the call in progress, from the glue below to %exception.
 * SWIG gives a wrapper no other channel: constructors must return the
 * holder, accessors their value. It is set and consumed within one wrapper
 * call on one thread, so it is never state a caller could observe. */
typedef struct m2mpsk_swig_status {
  int code;
  const m2mpsk_assoc *assoc; /* for the reason and detail, or NULL */
  size_t line;               /* key file line, or 0 */
  const char *detail;        /* a fixed detail, or NULL */
} m2mpsk_swig_status;

/* Node's wrapper is C++, the others C11. */
#ifdef __cplusplus
#define M2MPSK_SWIG_THREAD_LOCAL thread_local
#else
#define M2MPSK_SWIG_THREAD_LOCAL _Thread_local
#endif
static M2MPSK_SWIG_THREAD_LOCAL m2mpsk_swig_status m2mpsk_swig_pending;

/* Records a failure for %exception; returns nonzero when there is one.
 * Every negative status is one, E_AGAIN included: a caller for which
 * E_AGAIN means "nothing yet" handles it before calling this, so a status
 * the C function was not documented to return still raises instead of
 * vanishing. */
static int m2mpsk_swig_fail(int code, const m2mpsk_assoc *a) {
  if (code >= 0)
    return 0;
  m2mpsk_swig_pending.code = code;
  m2mpsk_swig_pending.assoc = a;
  return 1;
}

/* A holder whose handle was closed: a use-after-close is the caller's bug,
 * reported as an invalid argument instead of reaching the library. Every
 * method but close() and the destructor starts with this check, accessors
 * included: a closed handle has no state to report, and the C accessors'
 * answers for NULL (STATE_FAILED, NULL, 0) would pass for real ones. A null
 * holder is what Java passes once delete() has run, or for a null
 * argument. */
static int m2mpsk_swig_closed(const void *holder, const void *handle) {
  if (holder != NULL && handle != NULL)
    return 0;
  m2mpsk_swig_pending.code = M2MPSK_E_INVALID;
  m2mpsk_swig_pending.detail =
      holder != NULL ? "the handle is closed" : "the handle is closed (or null)";
  return 1;
}

/* A count or time the C function takes as uint32_t, from the 64-bit value
 * the glue takes (so that Java, which has no unsigned types, cannot wrap a
 * negative value around); out of range is E_INVALID. */
static int m2mpsk_swig_u32(int64_t v, uint32_t *out) {
  if (v < 0 || v > (int64_t)UINT32_MAX) {
    m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
    return 0;
  }
  *out = (uint32_t)v;
  return 1;
}

/* A copy of `s` for SWIG to hand over and free (%newobject); null with
 * E_NOMEM recorded when memory is short. */
static char *m2mpsk_swig_strdup(const char *s) {
  char *c = (char *)malloc(strlen(s) + 1);
  if (c == NULL) {
    m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
    return NULL;
  }
  return strcpy(c, s);
}

/* The failure reason and detail an exception carries for `st`. */
static int m2mpsk_swig_reason(const m2mpsk_swig_status *st) {
  return st->assoc != NULL ? (int)m2mpsk_assoc_failure(st->assoc)
                           : M2MPSK_REASON_NONE;
}

static void m2mpsk_swig_detail(const m2mpsk_swig_status *st, char *out,
                               size_t cap) {
  const char *d = st->detail;
  if (d == NULL && st->assoc != NULL)
    d = m2mpsk_assoc_failure_detail(st->assoc);
  if (d == NULL || d[0] == '\0')
    d = m2mpsk_strerror(st->code);
  if (st->line > 0)
    snprintf(out, cap, "%s (line %zu)", d, st->line);
  else
    snprintf(out, cap, "%s", d);
}
%}

%include <stdint.i>

/* ---- the whitelist ------------------------------------------------------ */
%rename("$ignore", regextarget=1) "^m2mpsk_";
%rename("$ignore", regextarget=1) "^M2MPSK_";

/* Free functions of the header, exposed as they are. */
%rename("%(strip:[m2mpsk_])s") m2mpsk_strerror;
%rename("%(strip:[m2mpsk_])s") m2mpsk_reason_name;
%rename("%(strip:[m2mpsk_])s") m2mpsk_version_string;
%rename("%(strip:[m2mpsk_])s") m2mpsk_version_number;
%rename("%(strip:[m2mpsk_])s") m2mpsk_backend_name;
%rename("%(strip:[m2mpsk_])s") m2mpsk_backend_error;
%rename("%(strip:[m2mpsk_])s") m2mpsk_suite_count;
%rename("%(strip:[m2mpsk_])s") m2mpsk_suite_name;
%rename("%(strip:[m2mpsk_])s") m2mpsk_event_type_name;

/* Constants: every value of the status, limits, keystore flag, role,
 * transport, profile, state, reason, rate key, event type, peer kind,
 * originator flag and verdict enums. The enums themselves must be let through for
 * SWIG to look at their values. */
%rename("%(strip:[m2mpsk_])s") m2mpsk_status;
%rename("%(strip:[m2mpsk_])s") m2mpsk_limits;
%rename("%(strip:[m2mpsk_])s") m2mpsk_keystore_flags;
%rename("%(strip:[m2mpsk_])s") m2mpsk_role;
%rename("%(strip:[m2mpsk_])s") m2mpsk_transport;
%rename("%(strip:[m2mpsk_])s") m2mpsk_state;
%rename("%(strip:[m2mpsk_])s") m2mpsk_reason;
%rename("%(strip:[m2mpsk_])s") m2mpsk_rate_key;
%rename("%(strip:[m2mpsk_])s") m2mpsk_event_type;
%rename("%(strip:[m2mpsk_])s") m2mpsk_peer_kind;
%rename("%(strip:[m2mpsk_])s") m2mpsk_originator_flags;
%rename("%(strip:[m2mpsk_])s") m2mpsk_originator_verdict;
%rename("%(strip:[m2mpsk_])s") m2mpsk_profile;
%define M2MPSK_CONSTANTS(PATTERN)
%rename("%(strip:[M2MPSK_])s", regextarget=1) PATTERN;
%enddef
M2MPSK_CONSTANTS("^M2MPSK_(OK|E_[A-Z_]+)$")
M2MPSK_CONSTANTS("^M2MPSK_(KEY_MIN|KEY_MAX|KPSA_ID_MAX|ID_MAX|MTU_MIN|MTU_MAX)$")
M2MPSK_CONSTANTS("^M2MPSK_(PEER_TAG_MAX|MAX_INPUT_MIN)$")
M2MPSK_CONSTANTS("^M2MPSK_KEYSTORE_REQUIRE_LOCKED$")
M2MPSK_CONSTANTS("^M2MPSK_(ROLE|TRANSPORT|STATE|REASON|RATE|EVENT)_[A-Z_]+$")
M2MPSK_CONSTANTS("^M2MPSK_PEER_(NONE|AE|CSE|CREDENTIAL)$")
M2MPSK_CONSTANTS("^M2MPSK_ORIGINATOR_[A-Z_]+$")
M2MPSK_CONSTANTS("^M2MPSK_PROFILE_[A-Z0-9_]+$")
%rename("%(strip:[m2mpsk_])s") m2mpsk_engine_id;
M2MPSK_CONSTANTS("^M2MPSK_ENGINE_(AUTO|BORINGSSL|OPENSSL)$")

/* The glue functions, exposed under the names of the C functions they
 * stand for. */
%rename(kpsa_id_validate) m2mpsk_swig_kpsa_id_validate;
%rename(idb_validate) m2mpsk_swig_idb_validate;
%rename(ida_validate) m2mpsk_swig_ida_validate;
%rename(idb_server_name) m2mpsk_swig_idb_server_name;
%newobject m2mpsk_swig_idb_server_name;
%rename(originator_check) m2mpsk_swig_originator_check;
%rename(profile_missing) m2mpsk_swig_profile_missing;
%newobject m2mpsk_swig_profile_missing;
%rename(profile_suites) m2mpsk_swig_profile_suites;
%newobject m2mpsk_swig_profile_suites;
%rename(engine_available) m2mpsk_swig_engine_available;
%rename(engine_name) m2mpsk_swig_engine_name;
%rename(engine_suite_count) m2mpsk_swig_engine_suite_count;
%rename(engine_suite_name) m2mpsk_swig_engine_suite_name;

/* ---- per-language typemaps, exception classes and names ---------------- */
#if defined(SWIGPYTHON)
%include "python/m2mpsk_python.swg"
#elif defined(SWIGJAVA)
%include "java/m2mpsk_java.swg"
#elif defined(SWIGGO)
%include "go/m2mpsk_go.swg"
#elif defined(SWIGCSHARP)
%include "csharp/m2mpsk_csharp.swg"
#elif defined(SWIGJAVASCRIPT)
%include "node/m2mpsk_node.swg"
#else
#error "m2mpsk.i: no typemaps for this language (see bindings/README.md)"
#endif

/* ---- the one exception mapping ------------------------------------------ */
/* Every wrapper clears the pending status, runs, and raises what the glue
 * recorded. M2MPSK_SWIG_RAISE is the language's way to build the exception
 * from (code, reason, detail) and leave the wrapper. */
%exception {
  memset(&m2mpsk_swig_pending, 0, sizeof m2mpsk_swig_pending);
  $action
  if (m2mpsk_swig_pending.code < 0) {
    M2MPSK_SWIG_RAISE
  }
}

/* ---- the header's declarations: constants and free functions ------------ */
#define M2MPSK_API
#define M2MPSK_MUST_CHECK
/* The header's comments are prose with '@' in KpsaIDs, not Doxygen
 * commands. */
#pragma SWIG nowarn=560
%include "m2mpsk/m2mpsk.h"

/* ---- validators: a status becomes an exception ------------------------- */
%inline %{
/** Validates a KpsaID: Issuer_Relative_KpsaID\@Issuer-FQDN, the relative
 * part made of letters, digits, '.', '_' and '-', the FQDN of LDH labels,
 * at most KPSA_ID_MAX bytes in all. Raises the error E_KPSA_ID or
 * E_KPSA_ID_LENGTH (E_INVALID for a null value). Thread-safe. */
static void m2mpsk_swig_kpsa_id_validate(const char *kpsa_id) {
  m2mpsk_swig_fail(m2mpsk_kpsa_id_validate(kpsa_id), NULL);
}

/** Validates an IdB: a CSE-ID, SP-relative ("/cse-1") or absolute
 * ("//m2m.example.com/cse-1"). Raises the error E_IDB or E_ID_LENGTH
 * (E_INVALID for a null value). Thread-safe. */
static void m2mpsk_swig_idb_validate(const char *idb) {
  m2mpsk_swig_fail(m2mpsk_idb_validate(idb), NULL);
}

/** Validates an IdA: a CSE-ID, or an AE-ID ("/cse-1/C123", "/S123",
 * "//m2m.example.com/cse-1/C123"), SP-relative or absolute. Raises the
 * error E_IDA or E_ID_LENGTH (E_INVALID for a null value). Thread-safe. */
static void m2mpsk_swig_ida_validate(const char *ida) {
  m2mpsk_swig_fail(m2mpsk_ida_validate(ida), NULL);
}

/** The SNI host name an initiator sends for `idb`: the FQDN of an absolute
 * CSE-ID ("//m2m.example.com/cse-1" gives "m2m.example.com"), lower-cased;
 * null for an SP-relative IdB or an address literal, for which no SNI is
 * sent. Raises E_IDB or E_ID_LENGTH (E_INVALID for a null value). */
static char *m2mpsk_swig_idb_server_name(const char *idb) {
  char buf[256];
  int rc = m2mpsk_idb_server_name(idb, buf, sizeof buf);
  if (rc == M2MPSK_E_NOT_FOUND || m2mpsk_swig_fail(rc, NULL))
    return NULL;
  return m2mpsk_swig_strdup(buf);
}
%}

/* ---- suite profiles ------------------------------------------------------ */
%inline %{
/** The colon-separated IANA names of the suites that profile (a PROFILE_
 * constant) mandates and this build's backend lacks: "" when it has them
 * all; with BoringSSL, "TLS_PSK_WITH_AES_128_CBC_SHA256:
 * TLS_PSK_WITH_AES_128_CCM_8". Raises E_INVALID (unknown profile) or
 * E_BACKEND. Thread-safe. */
static char *m2mpsk_swig_profile_missing(int profile) {
  char buf[128];
  if (m2mpsk_swig_fail(m2mpsk_profile_missing((m2mpsk_profile)profile, buf, sizeof buf),
                       NULL))
    return NULL;
  return m2mpsk_swig_strdup(buf);
}

/** The suites profile offers over transport (TRANSPORT_TLS or
 * TRANSPORT_DTLS) with this build's backend, colon-separated, in
 * preference order. Raises E_INVALID (unknown profile or transport) or
 * E_BACKEND. Thread-safe. */
static char *m2mpsk_swig_profile_suites(int profile, int transport) {
  char buf[1024];
  if (m2mpsk_swig_fail(m2mpsk_profile_suites((m2mpsk_profile)profile,
                                             (m2mpsk_transport)transport, buf,
                                             sizeof buf),
                       NULL))
    return NULL;
  return m2mpsk_swig_strdup(buf);
}
%}

/* ---- TLS engines (since 0.3) --------------------------------------------- */
%inline %{
/** 1 when engine e (an ENGINE_ constant) can be loaded in this process,
 * else 0; for ENGINE_AUTO, 1 when any can. Loads it on first use.
 * Thread-safe. */
static int m2mpsk_swig_engine_available(int e) {
  return m2mpsk_engine_available((m2mpsk_engine_id)e);
}
/** "auto", "boringssl" or "openssl"; null for an unknown value. */
static const char *m2mpsk_swig_engine_name(int e) {
  return m2mpsk_engine_name((m2mpsk_engine_id)e);
}
/** Number of suites engine e supports (ENGINE_AUTO: the union); 0 when it
 * cannot be loaded. Thread-safe. */
static size_t m2mpsk_swig_engine_suite_count(int e) {
  return m2mpsk_engine_suite_count((m2mpsk_engine_id)e);
}
/** IANA name of engine e's suite i, or null past the end. Thread-safe. */
static const char *m2mpsk_swig_engine_suite_name(int e, size_t i) {
  return m2mpsk_engine_suite_name((m2mpsk_engine_id)e, i);
}
%}

/* ---- the oneM2M originator check ---------------------------------------- */
/* The verdict is the result; an error status raises instead (the C
 * function's verdict is then NOT_AUTHENTICATED, which a caller that raises
 * never sees). Declared apart from its body so that flags can default to 0
 * where the language has default arguments. */
%{
static int m2mpsk_swig_originator_check(int bound_kind, const char *bound_id,
                                        const char *local_id,
                                        const char *from_, int64_t flags) {
  m2mpsk_originator_verdict v = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED;
  if (flags < 0 || flags > (int64_t)UINT_MAX) {
    m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
    return (int)v;
  }
  m2mpsk_swig_fail(m2mpsk_originator_check((m2mpsk_peer_kind)bound_kind,
                                           bound_id, local_id, from_,
                                           (unsigned)flags, &v),
                   NULL);
  return (int)v;
}
%}
/** Decides whether a request a CSE received may carry the originator
 * from_ (its From; null or "" when absent), given what the association it
 * arrived on is bound to (TS-0004 7.3.2.1, TS-0003 7.2.1). bound_kind is
 * PEER_NONE (no association; bound_id null), PEER_AE, PEER_CSE or
 * PEER_CREDENTIAL, and bound_id the association's peer_id(); local_id is
 * the receiving CSE's own CSE-ID (the association's local_id()); flags is
 * 0 or ORIGINATOR_AE_CREATE | ORIGINATOR_ALLOW_UNSECURED_AE. Returns the
 * verdict: ORIGINATOR_ACCEPT (0), or the oneM2M Response Status Code to
 * answer with, ORIGINATOR_NOT_AUTHENTICATED (4106) or
 * ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED (4107). Raises, instead of
 * returning a verdict, E_INVALID (a missing local_id, an unknown kind or
 * flag, a bound_id given with PEER_NONE or missing with another kind),
 * E_IDB (local_id is not a CSE-ID), E_IDA (bound_id is not of its kind's
 * form, or from_ is malformed), E_ID_LENGTH, E_KPSA_ID or E_KPSA_ID_LENGTH
 * (the KpsaID of a Credential-ID). Thread-safe; no state. */
int m2mpsk_swig_originator_check(int bound_kind, const char *bound_id,
                                 const char *local_id, const char *from_,
                                 int64_t flags = 0);

/* ---- Record ------------------------------------------------------------- */
/** One keystore record, as Keystore.lookup() returns it. Never holds the
 * key. ida is "" when the record has no IdA; not_before and not_after are
 * Unix seconds, 0 meaning unbounded; revoked is 1 for a revoked record. */
%immutable;
typedef struct Record {
  /** IdA, or "" when none is configured. */
  char ida[M2MPSK_ID_MAX + 1];
  /** IdB, the Registrar's CSE-ID. */
  char idb[M2MPSK_ID_MAX + 1];
  /** Start of the validity window in Unix seconds; 0 for unbounded. */
  int64_t not_before;
  /** End of the validity window in Unix seconds; 0 for unbounded. */
  int64_t not_after;
  /** 1 when the record is revoked, else 0. */
  int revoked;
} Record;
%mutable;
%extend Record {
  Record() { return (Record *)calloc(1, sizeof(Record)); }
  ~Record() { free($self); }
}

/* ---- KeyRequest (since 0.4) --------------------------------------------- */
/** A key request: an association needs a record the keystore does not
 * hold, and waits (STATE_WAITING_KEY) until the request is answered with
 * supply() or absent(). Keystore.next_request() and
 * Association.key_request() give one; each holds its own reference to the
 * request, which close() (or the collector) releases. Answering from any
 * thread is safe. A request dropped without an answer stays open until
 * every association waiting on it has timed out. */
%nodefaultctor KeyRequest; /* only next_request() and key_request() make one */
typedef struct KeyRequest {} KeyRequest;
%{
/* A holder owning `req` (a reference the caller already holds); null with
 * E_NOMEM recorded, the reference released, when memory is short. */
static KeyRequest *m2mpsk_swig_key_request(m2mpsk_key_request *req) {
  KeyRequest *k = (KeyRequest *)calloc(1, sizeof *k);
  if (k == NULL) {
    m2mpsk_key_request_free(req);
    m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
    return NULL;
  }
  k->h = req;
  return k;
}
%}
%extend KeyRequest {
  ~KeyRequest() {
    if ($self != NULL)
      m2mpsk_key_request_free($self->h);
    free($self);
  }
  /** Releases this reference now; the request itself stays as it is
   * (answered or open). Calling it again does nothing; any other call
   * afterwards raises E_INVALID. */
  void close() {
    if ($self == NULL)
      return;
    m2mpsk_key_request_free($self->h);
    $self->h = NULL;
  }
  /** The KpsaID asked for. */
  const char *kpsa_id() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_key_request_kpsa_id(M2MPSK_SWIG_H($self));
  }
  /** The SNI host name the client sent to the responder that opened the
   * request; null when none was sent, and for an initiator's request. */
  const char *server_name() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_key_request_server_name(M2MPSK_SWIG_H($self));
  }
  /** The role of the association that opened it: ROLE_INITIATOR or
   * ROLE_RESPONDER. */
  int role() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return M2MPSK_ROLE_RESPONDER;
    return (int)m2mpsk_key_request_role(M2MPSK_SWIG_H($self));
  }
  /** True once the request has been answered (or its source removed). */
  bool answered() {
    int r;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return false;
    r = m2mpsk_key_request_answered(M2MPSK_SWIG_H($self));
    m2mpsk_swig_fail(r, NULL);
    return r == 1;
  }
  /** Answers with the record: adds it to the keystore as Keystore.add()
   * would for the request's KpsaID, and closes the request. key is read
   * in place and not kept. When a record for the KpsaID appeared
   * meanwhile, that record wins and E_DUPLICATE is raised, the request
   * being closed all the same; after any other error it stays open.
   * Raises E_INVALID, E_STATE (already answered, or the keystore is
   * gone), E_KEY_LENGTH, E_IDA, E_IDB, E_ID_LENGTH, E_VALIDITY,
   * E_DUPLICATE, E_UNLOCKED or E_NOMEM. Thread-safe. */
  void supply(const uint8_t *key, size_t key_len, const char *ida, const char *idb,
              int64_t not_before = 0, int64_t not_after = 0) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_key_request_supply(M2MPSK_SWIG_H($self), key, key_len, ida,
                                               idb, not_before, not_after),
                     NULL);
  }
  /** Answers a responder's request for the handshakes that waited only
   * (since 0.6): nothing is added to the keystore, and the next handshake
   * with the KpsaID asks again. An association made this way follows its
   * record's not_after, not the keystore (a revoke does not reach it).
   * key is read in place and not kept. The request stays open after any
   * error. Raises E_INVALID (also for an initiator's request), E_STATE
   * (already answered, or the keystore is gone), E_KEY_LENGTH, E_IDA,
   * E_IDB, E_ID_LENGTH, E_VALIDITY, E_LIMIT (8192 such keys held) or
   * E_NOMEM. Thread-safe. */
  void supply_once(const uint8_t *key, size_t key_len, const char *ida,
                   const char *idb, int64_t not_before = 0,
                   int64_t not_after = 0) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_key_request_supply_once(M2MPSK_SWIG_H($self), key,
                                                    key_len, ida, idb,
                                                    not_before, not_after),
                     NULL);
  }
  /** Answers that there is no record for the KpsaID: waiting responders
   * go on as with an unknown identity (a wrong key on the wire), waiting
   * initiators fail with REASON_UNKNOWN_IDENTITY. Raises E_STATE (already
   * answered). Thread-safe. */
  void absent() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_key_request_absent(M2MPSK_SWIG_H($self)), NULL);
  }
}

/* ---- Keystore ----------------------------------------------------------- */
/** A set of association records, each keyed by its KpsaID. Keys live in
 * libsodium guarded memory, locked, excluded from core dumps and wiped when
 * their record is removed or the keystore is freed. May be shared by any
 * number of associations on any number of threads. An association keeps
 * its keystore alive after the keystore is closed. */
typedef struct Keystore {} Keystore;
%newobject Keystore::lookup;
%newobject Keystore::next_request;
%extend Keystore {
  /** Creates an empty keystore. flags is 0 or KEYSTORE_REQUIRE_LOCKED
   * (refuse to hold keys in memory that mlock() could not lock). Raises
   * E_INVALID (unknown flag) or E_NOMEM. */
  Keystore(unsigned flags = 0) {
    Keystore *k = (Keystore *)calloc(1, sizeof *k);
    if (k == NULL) {
      m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
      return NULL;
    }
    if (m2mpsk_swig_fail(m2mpsk_keystore_new(&k->h, flags), NULL)) {
      free(k);
      return NULL;
    }
    return k;
  }
  ~Keystore() {
    if ($self != NULL)
      m2mpsk_keystore_free($self->h);
    free($self);
  }
  /** Releases this reference now; associations keep their own. Calling it
   * again does nothing; any other call afterwards raises E_INVALID. */
  void close() {
    if ($self == NULL)
      return;
    m2mpsk_keystore_free($self->h);
    $self->h = NULL;
  }
  /** Adds a record. key (KEY_MIN to KEY_MAX bytes) is copied into locked
   * memory at once. ida may be null (no IdA: a responder then binds the
   * Credential-ID "12-<KpsaID>"). not_before and not_after are Unix seconds,
   * 0 meaning unbounded on that side. On any error the keystore is
   * unchanged. Raises E_INVALID, E_KPSA_ID, E_KPSA_ID_LENGTH, E_KEY_LENGTH,
   * E_IDA, E_IDB, E_ID_LENGTH, E_VALIDITY, E_DUPLICATE, E_UNLOCKED or
   * E_NOMEM. Thread-safe. */
  void add(const char *kpsa_id, const uint8_t *key, size_t key_len,
           const char *ida, const char *idb, int64_t not_before = 0,
           int64_t not_after = 0) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_keystore_add(M2MPSK_SWIG_H($self), kpsa_id, key, key_len, ida,
                                         idb, not_before, not_after),
                     NULL);
  }
  /** Derives a remotely provisioned Kpsa from the enrolment key ke
   * (TS-0003 10.3.3) and adds it as a record, as add() would: Kpsa =
   * HMAC-SHA-256(ke, "oneM2M Enrolment Key to Provisioned Secure Connection
   * Key derivation" || enrolee_b_id). ke (KEY_MIN to KEY_MAX bytes) is read
   * in place and never kept; the derived key exists only in wiped, locked
   * memory and then in the keystore. enrolee_b_id is a CSE-ID or AE-ID
   * whose bytes are used exactly as given, so both ends must use the same
   * form (absolute or SP-relative). The other arguments are add()'s; the
   * key must not outlive ke, so pass ke's end of life as not_after. On any
   * error the keystore is unchanged. Raises E_INVALID, E_KEY_LENGTH,
   * E_IDA (enrolee_b_id or ida), E_ID_LENGTH or any other error of add().
   * Thread-safe. */
  void add_derived(const char *kpsa_id, const uint8_t *ke, size_t ke_len,
                   const char *enrolee_b_id, const char *ida, const char *idb,
                   int64_t not_before = 0, int64_t not_after = 0) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_keystore_add_derived(M2MPSK_SWIG_H($self), kpsa_id, ke, ke_len,
                                                 enrolee_b_id, ida, idb, not_before,
                                                 not_after),
                     NULL);
  }
  /** Removes a record and wipes its key. Associations that have not yet
   * used it fail with REASON_REVOKED (initiator) or as an unknown identity
   * (responder). Raises E_NOT_FOUND. Thread-safe. */
  void remove(const char *kpsa_id) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_keystore_remove(M2MPSK_SWIG_H($self), kpsa_id), NULL);
  }
  /** Revokes a record: wipes its key but keeps its KpsaID, so handshakes
   * using it fail with REASON_REVOKED. Revoking again is harmless. Raises
   * E_NOT_FOUND. Thread-safe. */
  void revoke(const char *kpsa_id) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_keystore_revoke(M2MPSK_SWIG_H($self), kpsa_id), NULL);
  }
  /** Looks a record up; never reveals the key. Raises E_NOT_FOUND.
   * Thread-safe. */
  Record *lookup(const char *kpsa_id) {
    Record *r;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    r = (Record *)calloc(1, sizeof *r);
    if (r == NULL) {
      m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
      return NULL;
    }
    if (m2mpsk_swig_fail(m2mpsk_keystore_lookup(M2MPSK_SWIG_H($self), kpsa_id, r->ida,
                                                sizeof r->ida, r->idb,
                                                sizeof r->idb, &r->not_before,
                                                &r->not_after, &r->revoked),
                         NULL)) {
      free(r);
      return NULL;
    }
    return r;
  }
  /** Number of records, revoked ones included. Thread-safe. */
  size_t count() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return m2mpsk_keystore_count(M2MPSK_SWIG_H($self));
  }
  /** True when every byte of key memory is locked in RAM (mlock
   * succeeded); false when some is not (typically RLIMIT_MEMLOCK). */
  bool is_locked() {
    int r;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return false;
    r = m2mpsk_keystore_is_locked(M2MPSK_SWIG_H($self));
    m2mpsk_swig_fail(r, NULL);
    return r == 1;
  }
  /** Bytes of guarded key memory the keystore has allocated. */
  size_t key_memory() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return m2mpsk_keystore_key_memory(M2MPSK_SWIG_H($self));
  }
  /** Adds a record, or replaces the one held for kpsa_id (an upsert).
   * Arguments and errors are add()'s, except E_DUPLICATE. When only the
   * validity window changes, live associations go on; when the key or an
   * identity changes, those using the old record fail with
   * REASON_REVOKED. On any error the keystore is unchanged. Thread-safe.
   * Since 0.4. */
  void put(const char *kpsa_id, const uint8_t *key, size_t key_len, const char *ida,
           const char *idb, int64_t not_before = 0, int64_t not_after = 0) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_keystore_put(M2MPSK_SWIG_H($self), kpsa_id, key, key_len, ida,
                                         idb, not_before, not_after),
                     NULL);
  }
  /** Turns the key source on (max_pending > 0) or off (0). With it on,
   * an association that needs a KpsaID the keystore does not hold opens a
   * key request (one per KpsaID, shared by every association waiting for
   * it) and waits in STATE_WAITING_KEY; the requests queue here until
   * next_request() takes them. At most max_pending are open at once:
   * past that, an unknown KpsaID is at once one the source does not have.
   * Turning it off answers the open requests as absent. Raises E_INVALID
   * (negative). Thread-safe. Since 0.4. */
  void set_source_queue(int64_t max_pending) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    if (max_pending < 0 || (uint64_t)max_pending > (uint64_t)SIZE_MAX) {
      m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
      return;
    }
    m2mpsk_swig_fail(m2mpsk_keystore_set_source(M2MPSK_SWIG_H($self), NULL, NULL,
                                                (size_t)max_pending),
                     NULL);
  }
  /** Takes the oldest new key request, which the caller now answers;
   * null (None in Python) when none is queued, which is not an error.
   * Each request is handed out once. Thread-safe. Since 0.4. */
  KeyRequest *next_request() {
    m2mpsk_key_request *req = NULL;
    int rc;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    rc = m2mpsk_keystore_next_request(M2MPSK_SWIG_H($self), &req);
    if (rc == M2MPSK_E_AGAIN || m2mpsk_swig_fail(rc, NULL))
      return NULL;
    return m2mpsk_swig_key_request(req);
  }
  /** Loads every record of a key file, all or nothing. The file must be a
   * regular file that neither group nor others may access. One record per
   * line: kpsa-id=ID kpsa=hex:... (or base64:...) idb=IDB [ida=IDA]
   * [not-before=T] [not-after=T]. Raises E_IO, E_KEYFILE_PERMS,
   * E_KEYFILE_SYNTAX, E_KEYFILE_ENCODING, a validation code of add(),
   * E_UNLOCKED or E_NOMEM; the detail names the line at fault. */
  void load_file(const char *path) {
    size_t line = 0;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    if (m2mpsk_swig_fail(m2mpsk_keystore_load_file(M2MPSK_SWIG_H($self), path, &line),
                         NULL))
      m2mpsk_swig_pending.line = line;
  }
}

/* ---- Event -------------------------------------------------------------- */
/** One audit event, as Config.next_event() returns it: what happened to
 * which association, never with key material. It owns a copy of the
 * event, independent of the config and the association; close() frees it
 * now, and the collector otherwise. Every accessor of a closed event raises
 * E_INVALID, as for the other handles. */
%nodefaultctor Event; /* only Config.next_event() makes one */
typedef struct Event {} Event;
%extend Event {
  ~Event() {
    if ($self != NULL)
      m2mpsk_event_free($self->h);
    free($self);
  }
  /** Frees the event now. Calling it again does nothing; any other call
   * afterwards raises E_INVALID. */
  void close() {
    if ($self == NULL)
      return;
    m2mpsk_event_free($self->h);
    $self->h = NULL;
  }
  /** What happened: EVENT_ESTABLISHED, EVENT_FAILED, EVENT_REVOKED,
   * EVENT_RATE_LIMITED or EVENT_CLOSED (see event_type_name()). */
  int type() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return M2MPSK_EVENT_NONE;
    return (int)m2mpsk_event_get_type(M2MPSK_SWIG_H($self));
  }
  /** Why, a REASON_ constant, for EVENT_FAILED, EVENT_REVOKED and
   * EVENT_RATE_LIMITED; REASON_NONE for the others. */
  int reason() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return M2MPSK_REASON_NONE;
    return (int)m2mpsk_event_reason(M2MPSK_SWIG_H($self));
  }
  /** The role of the association that reported it: ROLE_INITIATOR or
   * ROLE_RESPONDER. */
  int role() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return (int)m2mpsk_event_role(M2MPSK_SWIG_H($self));
  }
  /** Its transport: TRANSPORT_TLS or TRANSPORT_DTLS. */
  int transport() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return (int)m2mpsk_event_transport(M2MPSK_SWIG_H($self));
  }
  /** The caller's monotonic time (ms) when it happened. */
  int64_t time_ms() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return (int64_t)m2mpsk_event_time_ms(M2MPSK_SWIG_H($self));
  }
  /** The KpsaID: an initiator's, or the one a client presented when it was
   * well-formed; null when not known. */
  const char *kpsa_id() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_event_kpsa_id(M2MPSK_SWIG_H($self));
  }
  /** The identity the session was bound to (as Association.peer_id()),
   * null when none was. */
  const char *peer_id() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_event_peer_id(M2MPSK_SWIG_H($self));
  }
  /** True when peer_id() is a Credential-ID ("12-<KpsaID>"). */
  bool peer_id_is_credential() {
    int r;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return false;
    r = m2mpsk_event_peer_id_is_credential(M2MPSK_SWIG_H($self));
    m2mpsk_swig_fail(r, NULL);
    return r == 1;
  }
  /** The association's peer tag (Association.set_peer_tag()), null when
   * none was set. */
  const char *peer_tag() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_event_peer_tag(M2MPSK_SWIG_H($self));
  }
  /** A readable detail (as Association.failure_detail()); "" when none. */
  const char *detail() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_event_detail(M2MPSK_SWIG_H($self));
  }
}

/* ---- Config ------------------------------------------------------------- */
/** Settings shared by many associations: suites, handshake timeout, the
 * identities a responder serves. Frozen once an association has been
 * created from it (setters then raise E_STATE). May be shared by any number
 * of associations on any number of threads. */
typedef struct Config {} Config;
%newobject Config::next_event;
%newobject Config::suites;
%extend Config {
  /** Creates a config with the defaults: the RFC 4279 plain-PSK suites this
   * build supports, a 60 s handshake timeout, no local identities, unknown
   * identities indistinguishable from wrong keys. Raises E_NOMEM. */
  Config() {
    Config *c = (Config *)calloc(1, sizeof *c);
    if (c == NULL) {
      m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
      return NULL;
    }
    if (m2mpsk_swig_fail(m2mpsk_config_new(&c->h), NULL)) {
      free(c);
      return NULL;
    }
    return c;
  }
  ~Config() {
    if ($self != NULL)
      m2mpsk_config_free($self->h);
    free($self);
  }
  /** Releases this reference now; associations keep their own. Calling it
   * again does nothing; any other call afterwards raises E_INVALID. */
  void close() {
    if ($self == NULL)
      return;
    m2mpsk_config_free($self->h);
    $self->h = NULL;
  }
  /** Sets the offered/accepted cipher suites, in preference order, as a
   * colon-separated list of IANA names. Every name must be a PSK suite this
   * build supports (see suite_name()), or nothing changes. Raises
   * E_INVALID, E_SUITE, E_STATE (frozen), E_BACKEND or E_NOMEM. */
  void set_suites(const char *iana_names) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_suites(M2MPSK_SWIG_H($self), iana_names), NULL);
  }
  /** Adds an identity (IdB, a CSE-ID) that a responder using this config
   * serves; a responder needs at least one. Raises E_IDB, E_ID_LENGTH,
   * E_DUPLICATE, E_STATE or E_NOMEM. */
  void add_local_id(const char *idb) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_config_add_local_id(M2MPSK_SWIG_H($self), idb), NULL);
  }
  /** Sets the handshake timeout in milliseconds (1 to 3600000). Raises
   * E_INVALID or E_STATE. */
  void set_handshake_timeout(uint32_t ms) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_handshake_timeout(M2MPSK_SWIG_H($self), ms), NULL);
  }
  /** When true, a responder answers an unknown KpsaID with the
   * unknown_psk_identity alert (and an IdB mismatch with unrecognized_name).
   * By default both look like a wrong key, so that identities cannot be
   * probed. Raises E_STATE. */
  void set_reveal_unknown_identity(bool on) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_reveal_unknown_identity(M2MPSK_SWIG_H($self), on),
                     NULL);
  }

  /* SA2 and suite profiles (since 0.2). */

  /** SA2 (TS-0003 8.2.1): when true, associations made from this config
   * run with the roles reversed, for a second association that Entity B
   * opens towards an Entity A reachable for requests, with the same
   * records. The initiator (the (D)TLS client) is then Entity B: it binds
   * IdA, or the Credential-ID "12-<KpsaID>" when the record has none, and
   * its local identity is IdB. The responder is Entity A: it binds IdB,
   * needs no add_local_id(), and neither sends nor checks SNI. Default
   * false. Raises E_STATE (frozen). */
  void set_roles_reversed(bool on) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_roles_reversed(M2MPSK_SWIG_H($self), on), NULL);
  }
  /** Offers and accepts the suites of profile (a PROFILE_ constant) per
   * transport, replacing any set_suites() list; a later set_suites()
   * replaces the profile in turn. When the backend lacks a suite the
   * profile mandates, nothing changes and E_SUITE is raised:
   * profile_missing() names them. Raises E_INVALID (unknown profile),
   * E_SUITE, E_STATE (frozen) or E_BACKEND. */
  void set_profile(int profile) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_profile(M2MPSK_SWIG_H($self), (m2mpsk_profile)profile),
                     NULL);
  }
  /** Chooses the TLS engine (an ENGINE_ constant) this config's
   * associations run on; ENGINE_AUTO, the default, picks per association.
   * Raises E_INVALID (unknown engine), E_STATE (frozen), E_UNSUPPORTED
   * (this process cannot load that engine; see backend_error()) or
   * E_BACKEND. Since 0.3. */
  void set_engine(int engine) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_engine(M2MPSK_SWIG_H($self),
                                              (m2mpsk_engine_id)engine),
                     NULL);
  }
  /** The suites associations made from this config offer and accept over
   * transport (TRANSPORT_TLS or TRANSPORT_DTLS), colon-separated, in
   * preference order: the set_suites() list, else the profile's, else the
   * default. Raises E_INVALID (unknown transport), E_BACKEND or E_NOMEM.
   * Thread-safe. */
  char *suites(int transport) {
    size_t cap;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    /* 1024 bytes hold any profile or the default; a set_suites() list
     * needs its own length, so grow until it fits. */
    for (cap = 1024;; cap *= 2) {
      char *out = (char *)malloc(cap);
      int rc;
      if (out == NULL) {
        m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
        return NULL;
      }
      rc = m2mpsk_config_suites(M2MPSK_SWIG_H($self), (m2mpsk_transport)transport, out, cap);
      if (rc != M2MPSK_E_BUFFER || cap >= ((size_t)1 << 24)) {
        if (!m2mpsk_swig_fail(rc, NULL))
          return out;
        free(out);
        return NULL;
      }
      free(out);
    }
  }

  /* Resource limits, rate limiting and audit events (since 0.2). Every
   * association made from the config shares its counters, rate limiter and
   * event queue. */

  /** Bounds the responder handshakes in progress at once among
   * associations made from this config (from creation until established,
   * failed or closed). Past it, creating a responder Association raises
   * E_LIMIT at once and queues an EVENT_RATE_LIMITED event with
   * REASON_LIMIT. 0 means unlimited; the default is 4096. Raises E_INVALID
   * (negative or above 2^32 - 1) or E_STATE (frozen). */
  void set_max_handshakes(int64_t n) {
    uint32_t v;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)) || !m2mpsk_swig_u32(n, &v))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_max_handshakes(M2MPSK_SWIG_H($self), v), NULL);
  }
  /** Bounds the input an association holds fed but not yet consumed, in
   * bytes (MAX_INPUT_MIN to 1 GiB; default 262144). A feed() that would go
   * past it consumes nothing and raises E_LIMIT: once established, read()
   * what is waiting and feed the same bytes again (TLS), or drop the
   * datagram (DTLS); during a handshake the association fails with
   * REASON_LIMIT instead. Raises E_INVALID (out of range) or E_STATE. */
  void set_max_input(int64_t bytes) {
    uint32_t v;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)) || !m2mpsk_swig_u32(bytes, &v))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_max_input(M2MPSK_SWIG_H($self), v), NULL);
  }
  /** Sets a rate limit on failed responder handshakes. key is RATE_PEER
   * (counted by the association's peer tag, checked in start() with
   * nothing sent) or RATE_KPSA_ID (by the psk_identity a client presents).
   * When max_failures handshakes of one key fail within window_ms, the key
   * is blocked for block_ms, each further block twice the previous one up
   * to block_max_ms; a success forgets the key. A blocked key's handshakes
   * fail with REASON_RATE_LIMITED and queue EVENT_RATE_LIMITED.
   * max_failures 0 turns the limit off. Defaults: by peer, 10 failures in
   * 10 s block for 1 s up to 60 s; by KpsaID, 20 in 10 s, 1 s up to 60 s.
   * Raises E_INVALID (unknown key, a zero window or block, block_max_ms
   * below block_ms, a time above 24 h, a negative value) or E_STATE. */
  void set_rate_limit(int key, int64_t max_failures, int64_t window_ms,
                      int64_t block_ms, int64_t block_max_ms) {
    uint32_t n, w, b, bmax;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)) ||
        !m2mpsk_swig_u32(max_failures, &n) || !m2mpsk_swig_u32(window_ms, &w) ||
        !m2mpsk_swig_u32(block_ms, &b) || !m2mpsk_swig_u32(block_max_ms, &bmax))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_rate_limit(M2MPSK_SWIG_H($self), (m2mpsk_rate_key)key,
                                                  n, w, b, bmax),
                     NULL);
  }
  /** Whether peer_tag is blocked by the rate limit at now_ms (the clock
   * given to associations), so that a host can drop a new peer's first
   * datagram or connection without creating an association. Returns the
   * time the block ends, or -1 (None in Python) when it is not blocked.
   * Raises E_INVALID (null peer_tag, negative now_ms). Thread-safe. */
  int64_t peer_blocked(const char *peer_tag, int64_t now_ms) {
    uint64_t until = 0;
    int rc;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return -1;
    if (now_ms < 0) {
      m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
      return -1;
    }
    rc = m2mpsk_config_peer_blocked(M2MPSK_SWIG_H($self), peer_tag, (uint64_t)now_ms, &until);
    if (m2mpsk_swig_fail(rc, NULL) || rc == 0)
      return -1;
    return (int64_t)until;
  }
  /** Responder handshakes in progress now (see set_max_handshakes()).
   * Thread-safe. */
  uint32_t handshakes_in_progress() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return m2mpsk_config_handshakes_in_progress(M2MPSK_SWIG_H($self));
  }
  /** Turns the audit event queue on with room for capacity events (1 to
   * 1048576), or off with 0 (the default). Every association made from the
   * config queues its events, in both roles; they never carry key
   * material. When the queue is full new events are dropped and counted
   * (events_dropped()); an association never fails for want of room.
   * Raises E_INVALID (out of range) or E_STATE (frozen). */
  void set_event_queue(int64_t capacity) {
    uint32_t v;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)) || !m2mpsk_swig_u32(capacity, &v))
      return;
    m2mpsk_swig_fail(m2mpsk_config_set_event_queue(M2MPSK_SWIG_H($self), v), NULL);
  }
  /** Takes the oldest queued event, owned by the caller; null (None in
   * Python) when the queue is empty or off, which is not an error.
   * Pull-based: no callback runs inside the library. Thread-safe. */
  Event *next_event() {
    Event *e;
    m2mpsk_event *ev = NULL;
    int rc;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    rc = m2mpsk_config_next_event(M2MPSK_SWIG_H($self), &ev);
    if (rc == M2MPSK_E_AGAIN || m2mpsk_swig_fail(rc, NULL))
      return NULL;
    e = (Event *)calloc(1, sizeof *e);
    if (e == NULL) {
      m2mpsk_event_free(ev);
      m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
      return NULL;
    }
    e->h = ev;
    return e;
  }
  /** Events dropped because the queue was full (or memory short).
   * Thread-safe. */
  int64_t events_dropped() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return (int64_t)m2mpsk_config_events_dropped(M2MPSK_SWIG_H($self));
  }
}

/* ---- Association -------------------------------------------------------- */
/** One security association (one (D)TLS session), sans-IO: feed what the
 * peer sent, drain what to send, pass a monotonic time in milliseconds.
 * Used by one thread at a time. */
typedef struct Association {} Association;
%newobject Association::key_request;
%extend Association {
  /** Creates an association. role is ROLE_INITIATOR (Entity A, the client)
   * or ROLE_RESPONDER (Entity B, the server); transport is TRANSPORT_TLS or
   * TRANSPORT_DTLS. An initiator names its record by kpsa_id; a responder
   * passes null and needs a config with at least one local identity. The
   * association holds its own references to config and keystore, which may
   * be closed first, and freezes the config. Raises E_INVALID, E_KPSA_ID,
   * E_KPSA_ID_LENGTH, E_NOT_FOUND, E_NO_LOCAL_ID, E_LIMIT (a responder past
   * the config's set_max_handshakes()), E_BACKEND, E_NOMEM or E_INTERNAL. */
  Association(int role, int transport, Config *config, Keystore *keystore,
              const char *kpsa_id = NULL) {
    Association *x;
    if (m2mpsk_swig_closed(config, config ? config->h : NULL) ||
        m2mpsk_swig_closed(keystore, keystore ? keystore->h : NULL))
      return NULL;
    x = (Association *)calloc(1, sizeof *x);
    if (x == NULL) {
      m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
      return NULL;
    }
    if (m2mpsk_swig_fail(m2mpsk_assoc_new(&x->h, (m2mpsk_role)role,
                                          (m2mpsk_transport)transport,
                                          config->h, keystore->h, kpsa_id),
                         NULL)) {
      free(x);
      return NULL;
    }
    return x;
  }
  ~Association() {
    if ($self != NULL)
      m2mpsk_assoc_free($self->h);
    free($self);
  }
  /** Frees the association now, wiping its key material. Calling it again
   * does nothing; any other call afterwards raises E_INVALID. (To send
   * close_notify, use close_notify().) */
  void close() {
    if ($self == NULL)
      return;
    m2mpsk_assoc_free($self->h);
    $self->h = NULL;
  }
  /** Sets the DTLS MTU (MTU_MIN to MTU_MAX; default 1400), before start().
   * Raises E_INVALID (out of range, or a TLS association) or E_STATE. */
  void set_mtu(unsigned mtu) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_assoc_set_mtu(M2MPSK_SWIG_H($self), mtu), M2MPSK_SWIG_H($self));
  }
  /** Tags the association with the caller's name for its peer, typically
   * its address ("192.0.2.7:5684"): 1 to PEER_TAG_MAX bytes of printable
   * ASCII. A responder's rate limit (RATE_PEER) counts failures by it, and
   * events carry it. Only before start(); a second call replaces the
   * first. Raises E_INVALID (empty, too long or not printable), E_STATE
   * (started) or E_NOMEM. */
  void set_peer_tag(const char *tag) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_assoc_set_peer_tag(M2MPSK_SWIG_H($self), tag), NULL);
  }
  /** The peer tag, or null when none was set. */
  const char *peer_tag() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_assoc_peer_tag(M2MPSK_SWIG_H($self));
  }
  /** Starts the handshake. now_ms is the caller's monotonic clock;
   * unix_time the wall-clock time in Unix seconds, or 0 without a wall
   * clock (a record with a validity window then fails with REASON_MISUSE).
   * An initiator queues its ClientHello, to be drained. Raises E_INVALID,
   * E_STATE (already started) or E_FAILED (e.g. the record is expired or
   * revoked, or a responder's peer tag is blocked by the rate limit:
   * REASON_RATE_LIMITED, with nothing to send). */
  void start(int64_t now_ms, int64_t unix_time = 0) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    if (now_ms < 0) {
      m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
      return;
    }
    m2mpsk_swig_fail(m2mpsk_assoc_start(M2MPSK_SWIG_H($self), (uint64_t)now_ms, unix_time),
                     M2MPSK_SWIG_H($self));
  }
  /** Feeds received input: any number of stream bytes (TLS), or exactly
   * one whole datagram (DTLS). All input is consumed unless E_LIMIT is
   * raised; check state() and drain afterwards. Raises E_INVALID (an empty
   * or oversized datagram), E_STATE (not started, or closed/failed),
   * E_FAILED (this input failed the association: drain once more, an alert
   * may be queued; also input past the config's set_max_input() during a
   * handshake, with REASON_LIMIT), E_LIMIT (an established association's
   * input would go past set_max_input(): nothing was consumed, so read()
   * what is waiting and feed the same bytes again, or drop the datagram)
   * or E_NOMEM. */
  void feed(const uint8_t *data, size_t len, int64_t now_ms) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    if (now_ms < 0) {
      m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
      return;
    }
    m2mpsk_swig_fail(m2mpsk_assoc_feed(M2MPSK_SWIG_H($self), data, len, (uint64_t)now_ms),
                     M2MPSK_SWIG_H($self));
  }
  /** Encrypts application data for sending (all of it); drain the records
   * afterwards. For DTLS the data must fit one record (16384 bytes) and
   * goes out as one datagram. Raises E_INVALID, E_STATE (not established),
   * E_CLOSED, E_FAILED or E_NOMEM. */
  void write(const uint8_t *data, size_t len) {
    size_t written = 0;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_assoc_write(M2MPSK_SWIG_H($self), data, len, &written),
                     M2MPSK_SWIG_H($self));
  }
  /** Number of bytes waiting to be sent: for DTLS, the size of the next
   * datagram. 0 when nothing waits. */
  size_t pending() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return 0;
    return m2mpsk_assoc_pending(M2MPSK_SWIG_H($self));
  }
  /** The monotonic time (ms) at which handle_timeout() must be called: the
   * earliest of the next DTLS retransmission, the handshake deadline and
   * the record's expiry (not_after). Nothing due (idle, closed, failed, or
   * established with no timer and no not_after) gives -1 (None in Python). */
  int64_t next_timeout() {
    uint64_t t = 0;
    int rc;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return -1;
    rc = m2mpsk_assoc_next_timeout(M2MPSK_SWIG_H($self), &t);
    if (rc == M2MPSK_E_AGAIN)
      return -1;
    m2mpsk_swig_fail(rc, M2MPSK_SWIG_H($self));
    return (int64_t)t;
  }
  /** Handles what is due at now_ms: retransmits a DTLS flight (drain it
   * afterwards), fails the handshake with REASON_TIMEOUT, or fails the
   * association with REASON_EXPIRED once its record has expired. Early
   * calls do nothing. Raises E_STATE (not started) or E_FAILED. */
  void handle_timeout(int64_t now_ms) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    if (now_ms < 0) {
      m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
      return;
    }
    m2mpsk_swig_fail(m2mpsk_assoc_handle_timeout(M2MPSK_SWIG_H($self), (uint64_t)now_ms),
                     M2MPSK_SWIG_H($self));
  }
  /** The key request this association waits on in STATE_WAITING_KEY (a
   * holder with a reference of its own), else null (None in Python).
   * Since 0.4. */
  KeyRequest *key_request() {
    m2mpsk_key_request *req;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    req = m2mpsk_assoc_key_request(M2MPSK_SWIG_H($self));
    if (req == NULL)
      return NULL;
    return m2mpsk_swig_key_request(m2mpsk_key_request_ref(req));
  }
  /** Goes on with a handshake in STATE_WAITING_KEY once its request is
   * answered: the waiting input reaches the TLS engine (drain
   * afterwards), or an initiator queues its ClientHello. While the request
   * is open it does nothing. Raises E_STATE (not waiting for a key) or
   * E_FAILED (the record is absent for an initiator, or the waiting input
   * failed the handshake; an alert may be queued). Since 0.4. */
  void resume(int64_t now_ms) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    if (now_ms < 0) {
      m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
      return;
    }
    m2mpsk_swig_fail(m2mpsk_assoc_resume(M2MPSK_SWIG_H($self), (uint64_t)now_ms),
                     M2MPSK_SWIG_H($self));
  }
  /** Current state: STATE_IDLE, STATE_HANDSHAKING, STATE_WAITING_KEY
   * (since 0.4), STATE_ESTABLISHED, STATE_CLOSED or STATE_FAILED. */
  int state() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return M2MPSK_STATE_FAILED;
    return (int)m2mpsk_assoc_state(M2MPSK_SWIG_H($self));
  }
  /** Sends close_notify (drain it afterwards) and moves to STATE_CLOSED.
   * Calling it again, or after the peer closed, is harmless. Raises
   * E_STATE (not established) or E_FAILED (the alert could not be
   * written: the association failed). */
  void close_notify() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_assoc_close(M2MPSK_SWIG_H($self)), M2MPSK_SWIG_H($self));
  }
  /** The identity the session is bound to, once established: an initiator
   * sees IdB; a responder sees IdA, or "12-<KpsaID>" when the record has no
   * IdA. Null before. */
  const char *peer_id() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_assoc_peer_id(M2MPSK_SWIG_H($self));
  }
  /** True when peer_id() is a Credential-ID ("12-<KpsaID>"). */
  bool peer_id_is_credential() {
    int r;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return false;
    r = m2mpsk_assoc_peer_id_is_credential(M2MPSK_SWIG_H($self));
    m2mpsk_swig_fail(r, NULL);
    return r == 1;
  }
  /** Binds the AE-ID a CSE assigned when an AE registered (<AE> CREATE)
   * over an association bound to a Credential-ID: peer_id() then returns
   * ae_id and peer_id_is_credential() false, so that the AE's later
   * requests are checked against its AE-ID. Allowed once, and only on an
   * established (or closed) Entity B (the responder, or the initiator with
   * Config.set_roles_reversed()) whose binding is a Credential-ID. ae_id
   * is an AE-ID, SP-relative or absolute (a one-segment one, "/S..." or
   * "//sp/S...", must be S-type). Raises E_INVALID (null), E_STATE (not
   * such an Entity B, or already bound), E_IDA (not an AE-ID),
   * E_ID_LENGTH or E_NOMEM; nothing changes on error. */
  void bind_ae_id(const char *ae_id) {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_assoc_bind_ae_id(M2MPSK_SWIG_H($self), ae_id), NULL);
  }
  /** Decides whether a request that arrived on this association may carry
   * the originator from_ (its From; null or "" when absent): the module's
   * originator_check() with the binding and the local CSE-ID taken from
   * the association, so they cannot be mismatched. flags is 0 or
   * ORIGINATOR_AE_CREATE | ORIGINATOR_ALLOW_UNSECURED_AE. Returns
   * ORIGINATOR_ACCEPT (0), ORIGINATOR_NOT_AUTHENTICATED (4106) or
   * ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED (4107). Raises E_INVALID (an
   * unknown flag), E_STATE (not established), E_IDB (this side has no
   * CSE-ID: an initiator whose IdA is absent or an AE-ID), E_IDA (from_
   * malformed) or E_ID_LENGTH. Since 0.3. */
  int originator_check(const char *from_, int64_t flags = 0) {
    m2mpsk_originator_verdict v = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED;
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return (int)v;
    if (flags < 0 || flags > (int64_t)UINT_MAX) {
      m2mpsk_swig_fail(M2MPSK_E_INVALID, NULL);
      return (int)v;
    }
    m2mpsk_swig_fail(m2mpsk_assoc_originator_check(M2MPSK_SWIG_H($self),
                                                   from_ && *from_ ? from_ : NULL,
                                                   (unsigned)flags, &v),
                     NULL);
    return (int)v;
  }
  /** The identity this side assumed, once established: a responder's IdB,
   * an initiator's IdA (null if its record has none). */
  const char *local_id() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_assoc_local_id(M2MPSK_SWIG_H($self));
  }
  /** The KpsaID in use once known (initiator: always), else null. */
  const char *kpsa_id() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_assoc_kpsa_id(M2MPSK_SWIG_H($self));
  }
  /** The engine running the association (ENGINE_BORINGSSL or
   * ENGINE_OPENSSL) once chosen, else ENGINE_AUTO. Since 0.3. */
  int engine() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return M2MPSK_ENGINE_AUTO;
    return (int)m2mpsk_assoc_engine(M2MPSK_SWIG_H($self));
  }
  /** IANA name of the negotiated suite once established, else null. */
  const char *suite() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_assoc_suite(M2MPSK_SWIG_H($self));
  }
  /** "TLSv1.2" or "DTLSv1.2" once established, else null. */
  const char *version() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_assoc_version(M2MPSK_SWIG_H($self));
  }
  /** Why the association failed: a REASON_ constant, REASON_NONE unless
   * the state is STATE_FAILED. */
  int failure() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return M2MPSK_REASON_NONE;
    return (int)m2mpsk_assoc_failure(M2MPSK_SWIG_H($self));
  }
  /** A readable detail of the failure (alert names, what did not match),
   * never containing key bytes; "" when none. */
  const char *failure_detail() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return NULL;
    return m2mpsk_assoc_failure_detail(M2MPSK_SWIG_H($self));
  }
}

/* Per-language additions that need the classes declared above. */
#if defined(SWIGPYTHON)
%include "python/m2mpsk_python_tail.swg"
#elif defined(SWIGJAVA)
%include "java/m2mpsk_java_tail.swg"
#elif defined(SWIGGO)
%include "go/m2mpsk_go_tail.swg"
#elif defined(SWIGCSHARP)
%include "csharp/m2mpsk_csharp_tail.swg"
#elif defined(SWIGJAVASCRIPT)
%include "node/m2mpsk_node_tail.swg"
#endif
