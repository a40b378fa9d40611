/*
 * m2mpsk.i: the SWIG interface shared by every language binding.
 *
 * The public header is the manual; this file only decides what each
 * language sees:
 *  - a whitelist: every m2mpsk_ / M2MPSK_ name of the header is ignored, and
 *    the ones listed below are exposed by name with the prefix stripped;
 *  - three proxy classes, Keystore, Config and Association, each a small
 *    holder around one opaque handle, so that an explicit close() and the
 *    garbage collector can both release it and the second one does nothing;
 *  - one %exception that turns a negative status into the language's
 *    exception, carrying the code, the failure reason and a detail string.
 *
 * Byte buffers and the exception classes are per language:
 * python/m2mpsk_python.swg and java/m2mpsk_java.swg.
 */
#if defined(SWIGJAVA)
%module(docstring="oneM2M security associations with pre-provisioned symmetric keys (TS-0003 8.2.2.1).") M2mpsk
#else
%module(docstring="oneM2M security associations with pre-provisioned symmetric keys (TS-0003 8.2.2.1).") m2mpsk
#endif

%{
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

static _Thread_local m2mpsk_swig_status m2mpsk_swig_pending;

/* Records a failure for %exception; returns nonzero when there is one. */
static int m2mpsk_swig_fail(int code, const m2mpsk_assoc *a) {
  if (code >= 0 || code == M2MPSK_E_AGAIN)
    return 0;
  m2mpsk_swig_pending.code = code;
  m2mpsk_swig_pending.assoc = a;
  return 1;
}

/* A holder whose handle was closed: a use-after-close is the caller's bug,
 * reported as an invalid argument instead of reaching the library. */
static int m2mpsk_swig_closed(const void *holder, const void *handle) {
  if (holder != NULL && handle != NULL)
    return 0;
  m2mpsk_swig_pending.code = M2MPSK_E_INVALID;
  m2mpsk_swig_pending.detail = "the handle is closed";
  return 1;
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

/* Constants: every value of the status, limits, keystore flag, role,
 * transport, state and reason enums. The enums themselves must be let
 * through for SWIG to look at their values. */
%rename("%(strip:[m2mpsk_])s") m2mpsk_status;
%rename("%(strip:[m2mpsk_])s") m2mpsk_limits;
%rename("%(strip:[m2mpsk_])s") m2mpsk_keystore_flags;
%rename("%(strip:[m2mpsk_])s") m2mpsk_role;
%rename("%(strip:[m2mpsk_])s") m2mpsk_transport;
%rename("%(strip:[m2mpsk_])s") m2mpsk_state;
%rename("%(strip:[m2mpsk_])s") m2mpsk_reason;
%define M2MPSK_CONSTANTS(PATTERN)
%rename("%(strip:[M2MPSK_])s", regextarget=1) PATTERN;
%enddef
M2MPSK_CONSTANTS("^M2MPSK_(OK|E_[A-Z_]+)$")
M2MPSK_CONSTANTS("^M2MPSK_(KEY_MIN|KEY_MAX|KPSA_ID_MAX|ID_MAX|MTU_MIN|MTU_MAX)$")
M2MPSK_CONSTANTS("^M2MPSK_KEYSTORE_REQUIRE_LOCKED$")
M2MPSK_CONSTANTS("^M2MPSK_(ROLE|TRANSPORT|STATE|REASON)_[A-Z_]+$")

/* The glue functions, exposed under the names of the C functions they
 * stand for. */
%rename(kpsa_id_validate) m2mpsk_swig_kpsa_id_validate;
%rename(idb_validate) m2mpsk_swig_idb_validate;
%rename(ida_validate) m2mpsk_swig_ida_validate;
%rename(idb_server_name) m2mpsk_swig_idb_server_name;
%newobject m2mpsk_swig_idb_server_name;

/* ---- per-language typemaps, exception classes and names ---------------- */
#if defined(SWIGPYTHON)
%include "python/m2mpsk_python.swg"
#elif defined(SWIGJAVA)
%include "java/m2mpsk_java.swg"
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
  char *s;
  int rc = m2mpsk_idb_server_name(idb, buf, sizeof buf);
  if (rc == M2MPSK_E_NOT_FOUND || m2mpsk_swig_fail(rc, NULL))
    return NULL;
  s = (char *)malloc(strlen(buf) + 1);
  if (s == NULL) {
    m2mpsk_swig_fail(M2MPSK_E_NOMEM, NULL);
    return NULL;
  }
  return strcpy(s, buf);
}
%}

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

/* ---- Keystore ----------------------------------------------------------- */
/** A set of association records, each keyed by its KpsaID. Keys live in
 * libsodium guarded memory, locked, excluded from core dumps and wiped when
 * their record is removed or the keystore is freed. May be shared by any
 * number of associations on any number of threads. An association keeps
 * its keystore alive after the keystore is closed. */
typedef struct Keystore {} Keystore;
%newobject Keystore::lookup;
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
  size_t count() { return m2mpsk_keystore_count(M2MPSK_SWIG_H($self)); }
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
  size_t key_memory() { return m2mpsk_keystore_key_memory(M2MPSK_SWIG_H($self)); }
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

/* ---- Config ------------------------------------------------------------- */
/** Settings shared by many associations: suites, handshake timeout, the
 * identities a responder serves. Frozen once an association has been
 * created from it (setters then raise E_STATE). May be shared by any number
 * of associations on any number of threads. */
typedef struct Config {} Config;
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
}

/* ---- Association -------------------------------------------------------- */
/** One security association (one (D)TLS session), sans-IO: feed what the
 * peer sent, drain what to send, pass a monotonic time in milliseconds.
 * Used by one thread at a time. */
typedef struct Association {} Association;
%extend Association {
  /** Creates an association. role is ROLE_INITIATOR (Entity A, the client)
   * or ROLE_RESPONDER (Entity B, the server); transport is TRANSPORT_TLS or
   * TRANSPORT_DTLS. An initiator names its record by kpsa_id; a responder
   * passes null and needs a config with at least one local identity. The
   * association holds its own references to config and keystore, which may
   * be closed first, and freezes the config. Raises E_INVALID, E_KPSA_ID,
   * E_KPSA_ID_LENGTH, E_NOT_FOUND, E_NO_LOCAL_ID, E_BACKEND, E_NOMEM or
   * E_INTERNAL. */
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
  /** Starts the handshake. now_ms is the caller's monotonic clock;
   * unix_time the wall-clock time in Unix seconds, or 0 without a wall
   * clock (a record with a validity window then fails with REASON_MISUSE).
   * An initiator queues its ClientHello, to be drained. Raises E_INVALID,
   * E_STATE (already started) or E_FAILED (e.g. the record is expired or
   * revoked). */
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
   * one whole datagram (DTLS). All input is consumed; check state() and
   * drain afterwards. Raises E_INVALID (an empty or oversized datagram),
   * E_STATE (not started, or closed/failed), E_FAILED (this input failed
   * the association: drain once more, an alert may be queued) or E_NOMEM. */
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
  size_t pending() { return m2mpsk_assoc_pending(M2MPSK_SWIG_H($self)); }
  /** The monotonic time (ms) at which handle_timeout() must be called: the
   * next DTLS retransmission or the handshake deadline. No timer running
   * (idle, established, closed, failed) gives -1 (None in Python). */
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
  /** Handles timers due at now_ms: retransmits a DTLS flight (drain it
   * afterwards) or fails the handshake with REASON_TIMEOUT. Early calls do
   * nothing. Raises E_STATE (not started) or E_FAILED (timed out). */
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
  /** Current state: STATE_IDLE, STATE_HANDSHAKING, STATE_ESTABLISHED,
   * STATE_CLOSED or STATE_FAILED. */
  int state() { return (int)m2mpsk_assoc_state(M2MPSK_SWIG_H($self)); }
  /** Sends close_notify (drain it afterwards) and moves to STATE_CLOSED.
   * Calling it again, or after the peer closed, is harmless. Raises
   * E_STATE (not established). */
  void close_notify() {
    if (m2mpsk_swig_closed($self, M2MPSK_SWIG_H($self)))
      return;
    m2mpsk_swig_fail(m2mpsk_assoc_close(M2MPSK_SWIG_H($self)), M2MPSK_SWIG_H($self));
  }
  /** The identity the session is bound to, once established: an initiator
   * sees IdB; a responder sees IdA, or "12-<KpsaID>" when the record has no
   * IdA. Null before. */
  const char *peer_id() { return m2mpsk_assoc_peer_id(M2MPSK_SWIG_H($self)); }
  /** True when peer_id() is a Credential-ID ("12-<KpsaID>"). */
  bool peer_id_is_credential() {
    return m2mpsk_assoc_peer_id_is_credential(M2MPSK_SWIG_H($self)) == 1;
  }
  /** The identity this side assumed, once established: a responder's IdB,
   * an initiator's IdA (null if its record has none). */
  const char *local_id() { return m2mpsk_assoc_local_id(M2MPSK_SWIG_H($self)); }
  /** The KpsaID in use once known (initiator: always), else null. */
  const char *kpsa_id() { return m2mpsk_assoc_kpsa_id(M2MPSK_SWIG_H($self)); }
  /** IANA name of the negotiated suite once established, else null. */
  const char *suite() { return m2mpsk_assoc_suite(M2MPSK_SWIG_H($self)); }
  /** "TLSv1.2" or "DTLSv1.2" once established, else null. */
  const char *version() { return m2mpsk_assoc_version(M2MPSK_SWIG_H($self)); }
  /** Why the association failed: a REASON_ constant, REASON_NONE unless
   * the state is STATE_FAILED. */
  int failure() { return (int)m2mpsk_assoc_failure(M2MPSK_SWIG_H($self)); }
  /** A readable detail of the failure (alert names, what did not match),
   * never containing key bytes; "" when none. */
  const char *failure_detail() { return m2mpsk_assoc_failure_detail(M2MPSK_SWIG_H($self)); }
}

/* Per-language additions that need the classes declared above. */
#if defined(SWIGPYTHON)
%include "python/m2mpsk_python_tail.swg"
#elif defined(SWIGJAVA)
%include "java/m2mpsk_java_tail.swg"
#endif
