/*
 * m2mpsk: oneM2M security associations with pre-provisioned symmetric keys
 * (TS-0003 §8.2.2.1, "Kpsa"/"KpsaID", called Kaa/KaaId in early drafts).
 *
 * Entity A (an AE or a CSE) is always the (D)TLS client, the *initiator*.
 * Entity B (a CSE, A's Registrar) is always the (D)TLS server, the
 * *responder*. Both hold the same key Kpsa and its identifier KpsaID, and run
 * a TLS 1.2 or DTLS 1.2 PSK handshake (RFC 4279) with psk_identity = KpsaID.
 * Afterwards A binds the session to IdB, and B binds it to IdA, or to the
 * Credential-ID "12-<KpsaID>" when no IdA is configured.
 *
 * The library is sans-IO: it opens no socket and reads no clock. The caller
 * feeds received bytes (or one datagram per call), drains bytes (or one
 * datagram per call) to send, and passes a monotonic time in milliseconds.
 * One exception: the OpenSSL engine, built or run with an OpenSSL other
 * than 3.0.x, leaves DTLS retransmission to OpenSSL's own timer, which
 * reads the system clock (gettimeofday()): there
 * m2mpsk_assoc_next_timeout() reports, and m2mpsk_assoc_handle_timeout()
 * and m2mpsk_assoc_feed() act on, OpenSSL's deadlines as that clock
 * measures them. With BoringSSL, and with OpenSSL 3.0.x, retransmissions
 * follow the caller's clock alone (tests/test_clock.c checks it, and fails
 * where the exception applies).
 *
 * Conventions that hold for every function below:
 *  - Status codes are negative ints (enum m2mpsk_status); M2MPSK_OK is 0.
 *    Codes are never renumbered, and each means one thing everywhere: see
 *    the table above enum m2mpsk_status. m2mpsk_strerror() names each one.
 *    Every function that returns a status is declared M2MPSK_MUST_CHECK:
 *    the compiler warns when its result is ignored.
 *  - There is no thread-local error state. An association's failure reason
 *    is read from the association itself.
 *  - Inputs are borrowed for the duration of the call; whatever the library
 *    keeps, it copies. A returned `const char *` is borrowed from the handle
 *    it came from and stays valid until that handle is freed, unless the
 *    function says otherwise.
 *  - Handles are opaque. Every _new has a _free, and _free(NULL) is a no-op.
 *  - A key enters only as (const uint8_t *key, size_t len). It is copied into
 *    locked, access-protected memory at once, and the caller may wipe its own
 *    copy as soon as the call returns.
 *
 * Threads. Every function ends its comment with a "Thread safety:" line in
 * one of these words:
 *  - "safe from any thread": it uses no handle, or none that the caller
 *    must keep to one thread (what it shares, it synchronises itself);
 *  - "safe to call concurrently on the same keystore" (config, event): a
 *    keystore and a config may be shared by any number of associations on
 *    any number of threads; an event never changes once taken;
 *  - "one thread at a time per association": an association is not
 *    synchronised, so the caller serialises the calls on each one. Distinct
 *    associations may run on distinct threads at once, also when they share
 *    a keystore and a config;
 *  - "not concurrently with other calls on this reference": a _free ends
 *    the caller's use of its handle. Keystores and configs count
 *    references, so freeing the caller's own does not disturb the
 *    associations that hold theirs.
 */
#ifndef M2MPSK_M2MPSK_H
#define M2MPSK_M2MPSK_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(M2MPSK_BUILDING) && defined(__GNUC__)
#define M2MPSK_API __attribute__((visibility("default")))
#else
#define M2MPSK_API
#endif

#if defined(__GNUC__)
#define M2MPSK_MUST_CHECK __attribute__((warn_unused_result))
#else
#define M2MPSK_MUST_CHECK
#endif

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */
/* ------------------------------------------------------------------------ */

/**
 * Status codes. Stable: values are never renumbered or reused. Each code
 * means one thing in every function; a function's comment lists the codes
 * it returns and what causes each there.
 *
 *  M2MPSK_OK (0)  Success.
 *  M2MPSK_E_INVALID (-1)  The caller's arguments are wrong: a NULL pointer,
 *      a value out of range or of the wrong form, a handle of the wrong kind
 *      for the call. Nothing was changed; the same call will fail again.
 *  M2MPSK_E_NOMEM (-2)  Memory could not be allocated. Nothing was changed,
 *      unless the function says what was lost.
 *  M2MPSK_E_AGAIN (-3)  Not an error: nothing is available yet (no data to
 *      read, nothing to drain, no event queued, no timer running). Call
 *      again after more input or time. Never means "act on this".
 *  M2MPSK_E_CLOSED (-4)  The association was closed with close_notify, by
 *      the peer or by us.
 *  M2MPSK_E_FAILED (-5)  The association failed, now or earlier;
 *      m2mpsk_assoc_failure() says why. Drain it once more (an alert may be
 *      queued), then free it.
 *  M2MPSK_E_STATE (-6)  The call is not valid in the handle's current
 *      state (not started, not established, a frozen config, ...).
 *  M2MPSK_E_BUFFER (-7)  The caller's output buffer is zero-sized or too
 *      small for the result. Nothing was delivered (a string buffer of at
 *      least one byte holds ""); a DTLS datagram stays queued. The function
 *      says what size suffices.
 *  M2MPSK_E_INTERNAL (-8)  The TLS library failed in an unexpected way.
 *  M2MPSK_E_KPSA_ID (-10)  A KpsaID is not Issuer_Relative_KpsaID@Issuer-
 *      FQDN (TS-0003 §10.5).
 *  M2MPSK_E_KPSA_ID_LENGTH (-11)  A KpsaID is longer than
 *      M2MPSK_KPSA_ID_MAX bytes.
 *  M2MPSK_E_KEY_LENGTH (-12)  A key (Kpsa, Ke) is shorter than
 *      M2MPSK_KEY_MIN or longer than M2MPSK_KEY_MAX bytes.
 *  M2MPSK_E_IDA (-13)  An IdA or AE-ID is not a CSE-ID or AE-ID in
 *      SP-relative or absolute form (also a malformed oneM2M From).
 *  M2MPSK_E_IDB (-14)  An IdB is not a CSE-ID in SP-relative or absolute
 *      form.
 *  M2MPSK_E_ID_LENGTH (-15)  An identity is longer than M2MPSK_ID_MAX bytes.
 *  M2MPSK_E_VALIDITY (-16)  A validity window ends before it starts.
 *  M2MPSK_E_DUPLICATE (-17)  It is already there: a record with this
 *      KpsaID, or a config's local identity.
 *  M2MPSK_E_NOT_FOUND (-18)  What was named does not exist: no record with
 *      this KpsaID, no SNI host for this IdB.
 *  M2MPSK_E_UNLOCKED (-19)  Key memory could not be locked, and the
 *      keystore requires it (M2MPSK_KEYSTORE_REQUIRE_LOCKED).
 *  M2MPSK_E_IO (-20)  A key file could not be opened or read.
 *  M2MPSK_E_KEYFILE_PERMS (-21)  A key file is not a regular file, or group
 *      or others may access it.
 *  M2MPSK_E_KEYFILE_SYNTAX (-22)  A key file line is malformed (field,
 *      value, length); see err_line.
 *  M2MPSK_E_KEYFILE_ENCODING (-23)  A key in a key file is not valid hex or
 *      base64.
 *  M2MPSK_E_SUITE (-30)  A cipher suite name is unknown or not supported by
 *      this build, or the backend lacks a suite a profile mandates.
 *  M2MPSK_E_NO_LOCAL_ID (-31)  A local identity was given to an initiator,
 *      or none to a responder.
 *  M2MPSK_E_BACKEND (-32)  The TLS backend module could not be loaded; see
 *      m2mpsk_backend_error().
 *  M2MPSK_E_LIMIT (-33)  A configured resource limit was reached
 *      (handshakes in progress, buffered input); nothing was consumed or
 *      created. Since 0.2.
 *  M2MPSK_E_UNSUPPORTED (-34)  This build's TLS backend cannot do what was
 *      asked (e.g. the DTLS cookie exchange with BoringSSL). Since 0.2.
 *  M2MPSK_E_PROTOCOL (-35)  Bytes from the peer, handed over by the caller
 *      to a call that keeps no state for that peer, are malformed or not
 *      what the call accepts (m2mpsk_dtls_listen(): not a DTLS
 *      ClientHello). Nothing was kept: drop them. (Within an association,
 *      bad peer bytes fail the association instead: M2MPSK_E_FAILED with
 *      M2MPSK_REASON_PROTOCOL.) Since 0.3.
 */
typedef enum m2mpsk_status {
  M2MPSK_OK = 0,
  M2MPSK_E_INVALID = -1,
  M2MPSK_E_NOMEM = -2,
  M2MPSK_E_AGAIN = -3,
  M2MPSK_E_CLOSED = -4,
  M2MPSK_E_FAILED = -5,
  M2MPSK_E_STATE = -6,
  M2MPSK_E_BUFFER = -7,
  M2MPSK_E_INTERNAL = -8,
  M2MPSK_E_KPSA_ID = -10,
  M2MPSK_E_KPSA_ID_LENGTH = -11,
  M2MPSK_E_KEY_LENGTH = -12,
  M2MPSK_E_IDA = -13,
  M2MPSK_E_IDB = -14,
  M2MPSK_E_ID_LENGTH = -15,
  M2MPSK_E_VALIDITY = -16,
  M2MPSK_E_DUPLICATE = -17,
  M2MPSK_E_NOT_FOUND = -18,
  M2MPSK_E_UNLOCKED = -19,
  M2MPSK_E_IO = -20,
  M2MPSK_E_KEYFILE_PERMS = -21,
  M2MPSK_E_KEYFILE_SYNTAX = -22,
  M2MPSK_E_KEYFILE_ENCODING = -23,
  M2MPSK_E_SUITE = -30,
  M2MPSK_E_NO_LOCAL_ID = -31,
  M2MPSK_E_BACKEND = -32,
  M2MPSK_E_LIMIT = -33,
  M2MPSK_E_UNSUPPORTED = -34,
  M2MPSK_E_PROTOCOL = -35
} m2mpsk_status;

/**
 * Returns a static, human-readable description of a status code, or
 * "unknown status" for a value that is not one. Never NULL.
 * Thread safety: safe from any thread.
 */
M2MPSK_API const char *m2mpsk_strerror(int status);

/* ------------------------------------------------------------------------ */
/* Limits                                                                    */
/* ------------------------------------------------------------------------ */

/** Limits, as enum values so that bindings can see them. */
enum m2mpsk_limits {
  /** Shortest Kpsa accepted, in bytes. */
  M2MPSK_KEY_MIN = 16,
  /** Longest Kpsa accepted, in bytes. */
  M2MPSK_KEY_MAX = 64,
  /** Longest KpsaID, in bytes (RFC 4279 psk_identity as TLS stacks cap it). */
  M2MPSK_KPSA_ID_MAX = 128,
  /** Longest IdA or IdB, in bytes. */
  M2MPSK_ID_MAX = 512,
  /** Smallest and largest DTLS MTU accepted by m2mpsk_assoc_set_mtu(). */
  M2MPSK_MTU_MIN = 256,
  M2MPSK_MTU_MAX = 16384,
  /** Longest peer tag (m2mpsk_assoc_set_peer_tag()), in bytes. Since 0.2. */
  M2MPSK_PEER_TAG_MAX = 128,
  /** Smallest buffered-input bound (m2mpsk_config_set_max_input()): one
   *  whole TLS record or datagram always fits. Since 0.2. */
  M2MPSK_MAX_INPUT_MIN = 65536
};

/* ------------------------------------------------------------------------ */
/* Version                                                                   */
/* ------------------------------------------------------------------------ */

/** Runtime version as "MAJOR.MINOR.PATCH". Static; never NULL.
 * Thread safety: safe from any thread. */
M2MPSK_API const char *m2mpsk_version_string(void);
/** Runtime version as MAJOR*10000 + MINOR*100 + PATCH.
 * Thread safety: safe from any thread. */
M2MPSK_API unsigned m2mpsk_version_number(void);

/* ------------------------------------------------------------------------ */
/* TLS backend                                                               */
/* ------------------------------------------------------------------------ */

/**
 * The TLS engines this process can load: "boringssl+openssl" (the default
 * build, both engines), "boringssl", "openssl" (a build restricted with
 * -DM2MPSK_TLS=, or one whose other module cannot be loaded), or
 * "unavailable" when none can. Static. The public API and ABI are the same
 * whatever the engines; m2mpsk_engine_suite_name() and
 * m2mpsk_profile_missing() say what each offers.
 *
 * The TLS libraries are not linked into libm2mpsk: each sits in a private
 * module ("m2mpsk/tls-boringssl.so", "m2mpsk/tls-openssl.so" beside the
 * library), loaded on first use with RTLD_LOCAL | RTLD_DEEPBIND so that
 * it cannot clash with an OpenSSL already in the process, nor with the
 * other engine. See abi/README.md.
 * Thread safety: safe from any thread.
 */
M2MPSK_API const char *m2mpsk_backend_name(void);

/** Why a TLS engine module this build has could not be loaded, as
 *  "<engine>: <reason>" for each (separated by "; "); "" when every one
 *  loads. Static.
 * Thread safety: safe from any thread. */
M2MPSK_API const char *m2mpsk_backend_error(void);

/** Number of cipher suites the engines this process can load support,
 * each counted once (m2mpsk_engine_suite_count(M2MPSK_ENGINE_AUTO)).
 * Thread safety: safe from any thread. */
M2MPSK_API size_t m2mpsk_suite_count(void);

/**
 * IANA name of supported suite `i` (0 to m2mpsk_suite_count() - 1), in the
 * order m2mpsk prefers them; NULL past the end. Static.
 * Thread safety: safe from any thread.
 */
M2MPSK_API const char *m2mpsk_suite_name(size_t i);

/* ------------------------------------------------------------------------ */
/* TLS engines (since 0.3)                                                   */
/* ------------------------------------------------------------------------ */

/**
 * The TLS engines a process can run associations on. A build that found
 * both libraries carries both (-DM2MPSK_TLS=all, the default), each in its
 * own module ("m2mpsk/tls-boringssl.so", "m2mpsk/tls-openssl.so"), loaded on
 * first use, independently: one that fails to load leaves the other usable.
 * BoringSSL's PSK handshakes are the cheaper; only OpenSSL has TS-0003's
 * mandated suites (TLS_PSK_WITH_AES_128_CBC_SHA256,
 * TLS_PSK_WITH_AES_128_CCM_8) and the DTLS cookie exchange. Since 0.3.
 */
typedef enum m2mpsk_engine_id {
  /** Let m2mpsk choose per association (m2mpsk_config_set_engine()). */
  M2MPSK_ENGINE_AUTO = 0,
  M2MPSK_ENGINE_BORINGSSL = 1,
  M2MPSK_ENGINE_OPENSSL = 2
} m2mpsk_engine_id;

/**
 * 1 when engine `e` can be loaded in this process, else 0 (then
 * m2mpsk_backend_error() says why); loads its module on first use. For
 * M2MPSK_ENGINE_AUTO: 1 when any engine can. 0 for an unknown value.
 * Since 0.3.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_engine_available(m2mpsk_engine_id e);

/**
 * The engine's name: "auto", "boringssl" or "openssl"; NULL for an unknown
 * value. Static. Loads nothing. Since 0.3.
 * Thread safety: safe from any thread.
 */
M2MPSK_API const char *m2mpsk_engine_name(m2mpsk_engine_id e);

/**
 * Number of cipher suites engine `e` supports; 0 when it cannot be
 * loaded. For M2MPSK_ENGINE_AUTO, the union over the engines that load
 * (what m2mpsk_suite_count() answers). Since 0.3.
 * Thread safety: safe from any thread.
 */
M2MPSK_API size_t m2mpsk_engine_suite_count(m2mpsk_engine_id e);

/**
 * IANA name of suite `i` (0 to m2mpsk_engine_suite_count(e) - 1) of engine
 * `e`, in its order of preference; for M2MPSK_ENGINE_AUTO, of the union,
 * BoringSSL's first. NULL past the end or when the engine cannot be
 * loaded. Static. Since 0.3.
 * Thread safety: safe from any thread.
 */
M2MPSK_API const char *m2mpsk_engine_suite_name(m2mpsk_engine_id e, size_t i);

/* ------------------------------------------------------------------------ */
/* Identifiers                                                               */
/* ------------------------------------------------------------------------ */

/**
 * Validates a KpsaID: Issuer_Relative_KpsaID@Issuer-FQDN, the relative part
 * made of letters, digits, '.', '_' and '-', the FQDN of LDH labels, at most
 * M2MPSK_KPSA_ID_MAX bytes in all.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_KPSA_ID or
 * M2MPSK_E_KPSA_ID_LENGTH.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_kpsa_id_validate(const char *kpsa_id) M2MPSK_MUST_CHECK;

/**
 * Validates an IdB: a CSE-ID, SP-relative ("/cse-1") or absolute
 * ("//m2m.example.com/cse-1").
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_IDB or
 * M2MPSK_E_ID_LENGTH.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_idb_validate(const char *idb) M2MPSK_MUST_CHECK;

/**
 * Validates an IdA: a CSE-ID, or an AE-ID ("/cse-1/C123", "/S123",
 * "//m2m.example.com/cse-1/C123"), SP-relative or absolute.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_IDA or
 * M2MPSK_E_ID_LENGTH.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_ida_validate(const char *ida) M2MPSK_MUST_CHECK;

/* ------------------------------------------------------------------------ */
/* Keystore                                                                  */
/* ------------------------------------------------------------------------ */

/** A set of association records, each keyed by its KpsaID. Opaque. */
typedef struct m2mpsk_keystore m2mpsk_keystore;

/** Flags for m2mpsk_keystore_new(). */
enum m2mpsk_keystore_flags {
  /** Refuse to hold keys in memory that mlock() could not lock. */
  M2MPSK_KEYSTORE_REQUIRE_LOCKED = 1,
  /** The keystore holds, or a key source will supply, token keys
   * (m2mpsk_keystore_add_token_key(), since 0.5): responders whose config
   * leaves the engine to m2mpsk (M2MPSK_ENGINE_AUTO) run on the OpenSSL
   * engine, the one that can use them. A responder must choose its engine
   * before the ClientKeyExchange names the KpsaID, hence a keystore-wide
   * flag. Adding a token key sets it. */
  M2MPSK_KEYSTORE_TOKEN_KEYS = 2
};

/**
 * Creates an empty keystore. `flags` is 0 or any of
 * M2MPSK_KEYSTORE_REQUIRE_LOCKED and M2MPSK_KEYSTORE_TOKEN_KEYS.
 * Keys live in libsodium guarded memory, inaccessible except while one is
 * being handed to the TLS engine, excluded from core dumps, and wiped when
 * their record is removed or the keystore is freed.
 * On success *out owns a reference, released with m2mpsk_keystore_free().
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (out NULL, unknown flag) or
 * M2MPSK_E_NOMEM (also when libsodium cannot be initialised).
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_keystore_new(m2mpsk_keystore **out,
                                   unsigned flags) M2MPSK_MUST_CHECK;

/**
 * Releases the caller's reference. Associations hold their own reference, so
 * the keystore (and every key in it, wiped) goes away when the last of them
 * is freed. NULL is a no-op.
 * Thread safety: not concurrently with other calls on this reference.
 */
M2MPSK_API void m2mpsk_keystore_free(m2mpsk_keystore *ks);

/**
 * Adds a record. `key` is copied into locked memory; the caller may wipe it
 * on return. `ida` may be NULL (no IdA configured: a responder then binds
 * the Credential-ID). `not_before` and `not_after` are Unix times in seconds;
 * 0 means unbounded on that side.
 * On any error the keystore is unchanged.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL ks, kpsa_id, key or idb),
 * M2MPSK_E_KPSA_ID, M2MPSK_E_KPSA_ID_LENGTH, M2MPSK_E_KEY_LENGTH,
 * M2MPSK_E_IDA, M2MPSK_E_IDB, M2MPSK_E_ID_LENGTH, M2MPSK_E_VALIDITY,
 * M2MPSK_E_DUPLICATE, M2MPSK_E_UNLOCKED (REQUIRE_LOCKED and mlock failed) or
 * M2MPSK_E_NOMEM.
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_add(m2mpsk_keystore *ks, const char *kpsa_id,
                                   const uint8_t *key, size_t key_len,
                                   const char *ida, const char *idb,
                                   int64_t not_before,
                                   int64_t not_after) M2MPSK_MUST_CHECK;

/**
 * Removes a record and wipes its key. Every association using it, live or
 * not yet established, fails closed on its next operation with
 * M2MPSK_REASON_REVOKED and tells the peer: an access_denied alert with
 * BoringSSL; with OpenSSL 3, which has no way to send a fatal alert once a
 * direction is encrypted, close_notify after the handshake. A responder
 * that had not reached the key yet treats the KpsaID as unknown.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_NOT_FOUND (also
 * for a KpsaID that could never be stored, e.g. too long).
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_remove(m2mpsk_keystore *ks,
                                      const char *kpsa_id) M2MPSK_MUST_CHECK;

/**
 * Revokes a record: wipes its key but keeps its KpsaID, so that handshakes
 * using it fail with M2MPSK_REASON_REVOKED rather than as unknown, and live
 * associations using it fail closed on their next operation. A revoked
 * record can be removed, but not re-added until it is; revoking it again
 * returns M2MPSK_OK.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_NOT_FOUND (also
 * for a KpsaID that could never be stored, e.g. too long).
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_revoke(m2mpsk_keystore *ks,
                                      const char *kpsa_id) M2MPSK_MUST_CHECK;

/**
 * Looks a record up. Each output pointer may be NULL when not wanted. The
 * identities are copied, NUL-terminated, into the caller's buffers; an IdA
 * that is not configured comes back as "". *revoked is set to 1 for a
 * revoked record. Never reveals the key.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL ks or kpsa_id),
 * M2MPSK_E_BUFFER (a buffer given with capacity 0, checked first, or too
 * small for the record's identity; M2MPSK_ID_MAX + 1 bytes always suffice)
 * or M2MPSK_E_NOT_FOUND (also for a KpsaID that could never be stored).
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_lookup(const m2mpsk_keystore *ks,
                                      const char *kpsa_id, char *ida,
                                      size_t ida_cap, char *idb, size_t idb_cap,
                                      int64_t *not_before, int64_t *not_after,
                                      int *revoked) M2MPSK_MUST_CHECK;

/** Number of records, revoked ones included. 0 for NULL.
 * Thread safety: safe to call concurrently on the same keystore. */
M2MPSK_API size_t m2mpsk_keystore_count(const m2mpsk_keystore *ks);

/**
 * Returns 1 when every byte of key memory the keystore holds is locked in
 * RAM (mlock succeeded), 0 when some is not (typically RLIMIT_MEMLOCK), and
 * M2MPSK_E_INVALID for NULL. An empty keystore reports 1.
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int
m2mpsk_keystore_is_locked(const m2mpsk_keystore *ks) M2MPSK_MUST_CHECK;

/**
 * Bytes of guarded key memory the keystore has allocated (the arenas, not
 * counting libsodium's guard pages). 0 for NULL.
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API size_t m2mpsk_keystore_key_memory(const m2mpsk_keystore *ks);

/**
 * Loads every record of a key file, all or nothing: on any error the
 * keystore is unchanged and, for an error on a line, *err_line (if not NULL)
 * is set to its 1-based number (0 otherwise). The file must be a regular
 * file that neither group nor others may access (like ssh's private keys).
 *
 * Format: one record per line, fields separated by spaces or tabs, '#'
 * starts a comment line, blank lines are ignored:
 *
 *   kpsa-id=test@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff
 *       idb=//m2m.example.com/cse-in ida=//m2m.example.com/cse-in/Cae1
 *       not-before=2026-01-01T00:00:00Z not-after=1798761600
 *
 * (one line in the file). kpsa-id, kpsa and idb are required; ida,
 * not-before and not-after are optional; each field at most once. kpsa is
 * "hex:<hex digits>" or "base64:<RFC 4648 base64>" (no prefix is an
 * encoding error). Times are Unix seconds or UTC "YYYY-MM-DDTHH:MM:SSZ",
 * not before 1970. '#' starts a comment only as a line's first non-blank
 * character. Lines are at most 4096 bytes, not counting the line ending
 * (LF or CRLF). A symbolic link is followed, and the permission check
 * applies to its target. Read buffers are wiped before they are released.
 *
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL ks or path), M2MPSK_E_IO,
 * M2MPSK_E_KEYFILE_PERMS, M2MPSK_E_KEYFILE_SYNTAX,
 * M2MPSK_E_KEYFILE_ENCODING, any validation code of m2mpsk_keystore_add()
 * for a record's values (M2MPSK_E_KPSA_ID ... M2MPSK_E_DUPLICATE, also for a
 * KpsaID repeated within the file), M2MPSK_E_UNLOCKED or M2MPSK_E_NOMEM.
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_load_file(m2mpsk_keystore *ks, const char *path,
                                         size_t *err_line) M2MPSK_MUST_CHECK;

/* ------------------------------------------------------------------------ */
/* Config                                                                    */
/* ------------------------------------------------------------------------ */

/** Which entity this side is. */
typedef enum m2mpsk_role {
  /** Entity A, the (D)TLS client. */
  M2MPSK_ROLE_INITIATOR = 0,
  /** Entity B, the (D)TLS server. */
  M2MPSK_ROLE_RESPONDER = 1
} m2mpsk_role;

/** Transport under the association. */
typedef enum m2mpsk_transport {
  /** TLS 1.2 over a byte stream (TCP). */
  M2MPSK_TRANSPORT_TLS = 0,
  /** DTLS 1.2 over datagrams (UDP): one datagram per feed/drain call. */
  M2MPSK_TRANSPORT_DTLS = 1
} m2mpsk_transport;

/** Settings shared by many associations. Opaque. */
typedef struct m2mpsk_config m2mpsk_config;

/**
 * Creates a config with the defaults: engine M2MPSK_ENGINE_AUTO, the
 * RFC 4279 plain-PSK suites the engines support in the order of the TS-0003
 * profile when they have both mandated suites (TS-0003 §10.2.2; the
 * default build), a 60 s handshake timeout, no local
 * identities, unknown identities indistinguishable from wrong keys.
 * A config is frozen once an association has been created from it: setters
 * then return M2MPSK_E_STATE.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (out NULL) or M2MPSK_E_NOMEM.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_config_new(m2mpsk_config **out) M2MPSK_MUST_CHECK;

/** Releases the caller's reference; associations keep their own.
 * Thread safety: not concurrently with other calls on this reference. */
M2MPSK_API void m2mpsk_config_free(m2mpsk_config *cfg);

/**
 * Sets the offered/accepted cipher suites, in preference order, as a
 * colon-separated list of IANA names, e.g.
 * "TLS_PSK_WITH_AES_128_CBC_SHA:TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256".
 * Every name must be a PSK suite that an engine this process can load
 * supports (the engine m2mpsk_config_set_engine() named, if any), or
 * nothing changes.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, empty, or an empty name),
 * M2MPSK_E_SUITE, M2MPSK_E_STATE (frozen), M2MPSK_E_BACKEND or
 * M2MPSK_E_NOMEM.
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int
m2mpsk_config_set_suites(m2mpsk_config *cfg,
                         const char *iana_names) M2MPSK_MUST_CHECK;

/** Suite profiles. Since 0.2. */
typedef enum m2mpsk_profile {
  /**
   * TS-0003 §10.2.2: RFC 4279's PSK key exchange only, the suite mandated
   * for the transport first (TLS_PSK_WITH_AES_128_CBC_SHA256 for TLS,
   * TLS_PSK_WITH_AES_128_CCM_8 for DTLS), then the other PSK suites the
   * backend has (GCM, CCM, CBC), CCM_8 last for TLS. The default of a
   * config whose backend has both mandated suites.
   */
  M2MPSK_PROFILE_TS0003 = 1
} m2mpsk_profile;

/**
 * Offers and accepts the suites of `profile` (per transport), replacing
 * any m2mpsk_config_set_suites() list; a later m2mpsk_config_set_suites()
 * replaces the profile in turn. When the backend lacks a suite the profile
 * mandates, nothing changes and M2MPSK_E_SUITE is returned:
 * m2mpsk_profile_missing() names them. Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, unknown profile),
 * M2MPSK_E_SUITE, M2MPSK_E_STATE (frozen) or M2MPSK_E_BACKEND.
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int
m2mpsk_config_set_profile(m2mpsk_config *cfg,
                          m2mpsk_profile profile) M2MPSK_MUST_CHECK;

/**
 * Writes into `out` the colon-separated IANA names of the suites that
 * `profile` mandates and this build's backend lacks ("" when it has them
 * all; with BoringSSL, "TLS_PSK_WITH_AES_128_CBC_SHA256:
 * TLS_PSK_WITH_AES_128_CCM_8"). Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (unknown profile, NULL out),
 * M2MPSK_E_BUFFER (cap 0 or too small; 128 bytes always suffice) or
 * M2MPSK_E_BACKEND.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_profile_missing(m2mpsk_profile profile, char *out,
                                      size_t cap) M2MPSK_MUST_CHECK;

/**
 * Writes into `out` the suites `profile` offers over `transport` with this
 * build's backend, colon-separated, in preference order.
 * Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (unknown profile or transport, NULL
 * out), M2MPSK_E_BUFFER (cap 0 or too small; 1024 bytes always suffice) or
 * M2MPSK_E_BACKEND.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_profile_suites(m2mpsk_profile profile,
                                     m2mpsk_transport transport, char *out,
                                     size_t cap) M2MPSK_MUST_CHECK;

/**
 * Writes into `out` the suites associations made from this config offer
 * and accept over `transport`, colon-separated, in preference order: the
 * m2mpsk_config_set_suites() list, else the profile's, else the default.
 * Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, unknown transport),
 * M2MPSK_E_BUFFER (cap 0 or too small; 1024 bytes suffice for any profile
 * or default; a
 * m2mpsk_config_set_suites() list needs its own length + 1) or
 * M2MPSK_E_BACKEND.
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_suites(m2mpsk_config *cfg,
                                    m2mpsk_transport transport, char *out,
                                    size_t cap) M2MPSK_MUST_CHECK;

/**
 * Chooses the TLS engine this config's associations run on:
 * M2MPSK_ENGINE_AUTO (the default), M2MPSK_ENGINE_BORINGSSL or
 * M2MPSK_ENGINE_OPENSSL. With a named engine, the suites in effect are
 * those of the config's list that the engine supports (association
 * creation fails with M2MPSK_E_SUITE if none is). With AUTO, m2mpsk picks
 * per association: an initiator runs on the fastest engine (BoringSSL,
 * then OpenSSL) that supports every suite the config enables for the
 * transport, else on OpenSSL (so the default config of a build with both
 * engines offers the mandated suites from OpenSSL); a TLS responder reads
 * the peer's ClientHello first (buffering what is fed, up to
 * m2mpsk_config_set_max_input()) and runs on the fastest engine that
 * shares a suite the config enables with it; a DTLS responder runs on
 * OpenSSL whenever it can be loaded, as m2mpsk_dtls_listen() does.
 * m2mpsk_assoc_engine() says which engine runs an association. Since 0.3.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL cfg, unknown engine),
 * M2MPSK_E_STATE (frozen), M2MPSK_E_UNSUPPORTED (this process cannot load
 * that engine: this build lacks it or its module fails to load; see
 * m2mpsk_backend_error()) or M2MPSK_E_BACKEND (AUTO, and no engine loads).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_set_engine(m2mpsk_config *cfg,
                                        m2mpsk_engine_id e) M2MPSK_MUST_CHECK;

/**
 * Adds an identity (IdB, a CSE-ID) that a responder using this config
 * serves. A responder needs at least one. When a ClientHello carries SNI,
 * only identities whose SNI host (see m2mpsk_idb_server_name()) equals it
 * are candidates.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_IDB,
 * M2MPSK_E_ID_LENGTH, M2MPSK_E_DUPLICATE, M2MPSK_E_STATE or M2MPSK_E_NOMEM.
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_add_local_id(m2mpsk_config *cfg,
                                          const char *idb) M2MPSK_MUST_CHECK;

/**
 * Sets the handshake timeout in milliseconds (1 to 3600000). A handshake not
 * complete that long after m2mpsk_assoc_start() fails with
 * M2MPSK_REASON_TIMEOUT once m2mpsk_assoc_handle_timeout() is called.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID or M2MPSK_E_STATE.
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int
m2mpsk_config_set_handshake_timeout(m2mpsk_config *cfg,
                                    uint32_t ms) M2MPSK_MUST_CHECK;

/**
 * When `on` is non-zero a responder answers an unknown KpsaID with the
 * unknown_psk_identity alert (and an IdB mismatch with unrecognized_name).
 * By default (0) both look exactly like a wrong key on the wire, so that
 * identities cannot be probed (RFC 4279 §2).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID or M2MPSK_E_STATE.
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int
m2mpsk_config_set_reveal_unknown_identity(m2mpsk_config *cfg,
                                          int on) M2MPSK_MUST_CHECK;

/**
 * SA2 (TS-0003 §8.2.1): when `on` is non-zero, associations made from this
 * config run with the roles reversed, for a second association that Entity
 * B opens towards an Entity A reachable for requests, with the same
 * records. The initiator (the (D)TLS client) is then Entity B: it binds IdA,
 * or the Credential-ID "12-<KpsaID>" when the record has none, and its
 * local identity is IdB. The responder is Entity A: it binds IdB, needs no
 * local identity (m2mpsk_config_add_local_id() is not required), and
 * neither sends nor checks SNI, as Entity A serves no authority. Records,
 * validity, revocation, limits and events work as in the usual direction.
 * Default 0. Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_STATE (frozen).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_set_roles_reversed(m2mpsk_config *cfg,
                                                int on) M2MPSK_MUST_CHECK;

/**
 * Writes into `out` the SNI host name an initiator sends for `idb`: the FQDN
 * of an absolute CSE-ID ("//m2m.example.com/cse-1" gives
 * "m2m.example.com"), lower-cased. An SP-relative IdB has no authority, and
 * SNI may not carry an address literal ("//192.0.2.1/cse-1"), so no SNI is
 * sent for those and this returns M2MPSK_E_NOT_FOUND.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_BUFFER (out_cap 0,
 * checked first, or too small; 254 bytes always suffice), M2MPSK_E_IDB,
 * M2MPSK_E_ID_LENGTH or M2MPSK_E_NOT_FOUND.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_idb_server_name(const char *idb, char *out,
                                      size_t out_cap) M2MPSK_MUST_CHECK;

/* ------------------------------------------------------------------------ */
/* Association                                                               */
/* ------------------------------------------------------------------------ */

/** One security association (one (D)TLS session). Opaque. */
typedef struct m2mpsk_assoc m2mpsk_assoc;

/** Association state. */
typedef enum m2mpsk_state {
  /** Created, m2mpsk_assoc_start() not yet called. */
  M2MPSK_STATE_IDLE = 0,
  M2MPSK_STATE_HANDSHAKING = 1,
  /** Handshake done, identities bound, application data flows. */
  M2MPSK_STATE_ESTABLISHED = 2,
  /** close_notify sent or received. */
  M2MPSK_STATE_CLOSED = 3,
  /** Failed; see m2mpsk_assoc_failure(). Only drain and free remain. */
  M2MPSK_STATE_FAILED = 4,
  /** Since 0.4: the handshake waits for the keystore's key source to answer
   * m2mpsk_assoc_key_request(); then call m2mpsk_assoc_resume(). Only an
   * association whose keystore has a source (m2mpsk_keystore_set_source())
   * ever enters it. */
  M2MPSK_STATE_WAITING_KEY = 5
} m2mpsk_state;

/** Why an association failed. Stable values. */
typedef enum m2mpsk_reason {
  M2MPSK_REASON_NONE = 0,
  /** The responder has no record for the KpsaID (or, on an initiator, the
   *  responder said so with unknown_psk_identity). */
  M2MPSK_REASON_UNKNOWN_IDENTITY = 1,
  /** The keys differ: a Finished or record MAC did not verify. */
  M2MPSK_REASON_BAD_KEY = 2,
  /** The peer sent a fatal alert not covered by a more specific reason. */
  M2MPSK_REASON_PEER_ALERT = 3,
  /** Malformed or unexpected input. */
  M2MPSK_REASON_PROTOCOL = 4,
  /** The handshake did not complete within the configured timeout. */
  M2MPSK_REASON_TIMEOUT = 5,
  /** The record is outside its validity window (also when it expires
   *  during a live association: checked on each feed, read, write and
   *  handle_timeout against the caller's clock). */
  M2MPSK_REASON_EXPIRED = 6,
  /** The record was revoked, removed or replaced (also during a live
   *  association, which then fails on its next operation). */
  M2MPSK_REASON_REVOKED = 7,
  /** The caller broke the API contract: a record with a validity window was
   *  used without a wall-clock time at m2mpsk_assoc_start(). */
  M2MPSK_REASON_MISUSE = 8,
  /** The record's IdB is not an identity this responder serves, or the SNI
   *  names none of them. */
  M2MPSK_REASON_ID_MISMATCH = 9,
  /** Internal error (memory, TLS library). */
  M2MPSK_REASON_INTERNAL = 10,
  /** Refused without a handshake: this peer tag or KpsaID failed too many
   *  handshakes lately and is blocked for a while (see
   *  m2mpsk_config_set_rate_limit()). Since 0.2. */
  M2MPSK_REASON_RATE_LIMITED = 11,
  /** A resource limit of the config was reached: too many handshakes in
   *  progress, or more input during a handshake than
   *  m2mpsk_config_set_max_input() allows. Since 0.2. */
  M2MPSK_REASON_LIMIT = 12
} m2mpsk_reason;

/** Static name of a reason, e.g. "bad-key"; "unknown" for other values.
 * Thread safety: safe from any thread. */
M2MPSK_API const char *m2mpsk_reason_name(int reason);

/**
 * Creates an association. An initiator names the record it uses by
 * `kpsa_id`, which must be in the keystore, unless (since 0.4) the keystore
 * has a key source: the record is then asked for at m2mpsk_assoc_start()
 * (see "Key sources"); a responder passes NULL and
 * needs a config with at least one local identity (unless its roles are
 * reversed, SA2). The association holds
 * references to `config` and `keystore`, which the caller may free first.
 * Freezes the config.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL out/config/keystore, bad role or
 * transport, kpsa_id NULL for an initiator or non-NULL for a responder),
 * M2MPSK_E_KPSA_ID, M2MPSK_E_KPSA_ID_LENGTH, M2MPSK_E_NOT_FOUND (no
 * record and no key source), M2MPSK_E_NO_LOCAL_ID, M2MPSK_E_LIMIT (a
 * responder past
 * m2mpsk_config_set_max_handshakes()), M2MPSK_E_BACKEND, M2MPSK_E_NOMEM or
 * M2MPSK_E_INTERNAL.
 * Thread safety: safe to call concurrently with the same config and keystore.
 */
M2MPSK_API int m2mpsk_assoc_new(m2mpsk_assoc **out, m2mpsk_role role,
                                m2mpsk_transport transport,
                                m2mpsk_config *config,
                                m2mpsk_keystore *keystore,
                                const char *kpsa_id) M2MPSK_MUST_CHECK;

/** Frees an association, wiping its key material. NULL is a no-op.
 * Thread safety: not concurrently with other calls on this reference. */
M2MPSK_API void m2mpsk_assoc_free(m2mpsk_assoc *a);

/**
 * Sets the DTLS MTU (the largest datagram drained), M2MPSK_MTU_MIN to
 * M2MPSK_MTU_MAX; the default is 1400. Only before m2mpsk_assoc_start().
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, out of range, or a TLS
 * association) or M2MPSK_E_STATE.
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_set_mtu(m2mpsk_assoc *a,
                                    unsigned mtu) M2MPSK_MUST_CHECK;

/**
 * Tags the association with the caller's name for its peer, typically the
 * address ("192.0.2.7:5684"), 1 to M2MPSK_PEER_TAG_MAX bytes of printable
 * ASCII. A responder's rate limit counts failures by it, and events carry
 * it. Only before m2mpsk_assoc_start(); a second call replaces the first.
 * Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, empty, too long or not
 * printable), M2MPSK_E_STATE (started) or M2MPSK_E_NOMEM.
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_set_peer_tag(m2mpsk_assoc *a,
                                         const char *tag) M2MPSK_MUST_CHECK;

/** The peer tag, or NULL when none was set. Borrowed from `a`. Since 0.2.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API const char *m2mpsk_assoc_peer_tag(const m2mpsk_assoc *a);

/**
 * Starts the handshake. `now_ms` is the caller's monotonic clock;
 * `unix_time` is the current wall-clock time in Unix seconds, used (advanced
 * by the monotonic clock) to check validity windows, or 0 when the caller
 * has no wall clock: a record with a validity window then fails with
 * M2MPSK_REASON_MISUSE rather than being judged against 1970. An initiator
 * queues its ClientHello, to be drained; since 0.4, one made before its
 * record existed opens a key request instead, enters
 * M2MPSK_STATE_WAITING_KEY and queues nothing until m2mpsk_assoc_resume()
 * (when the source cannot take the request, past its max_pending or
 * removed, it fails at once with M2MPSK_REASON_UNKNOWN_IDENTITY). A
 * responder reads whether its keystore has a key source here: a source set
 * later serves later handshakes.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, negative unix_time),
 * M2MPSK_E_STATE (already started) or M2MPSK_E_FAILED (e.g. the initiator's
 * record is expired or revoked, or the responder's peer tag is blocked by
 * the rate limit: see m2mpsk_assoc_failure()).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_start(m2mpsk_assoc *a, uint64_t now_ms,
                                  int64_t unix_time) M2MPSK_MUST_CHECK;

/**
 * Feeds received input: any number of stream bytes (TLS), or exactly one
 * whole datagram (DTLS). Drives the handshake; afterwards, check
 * m2mpsk_assoc_state() and drain. All input is consumed, unless the
 * call returns M2MPSK_E_LIMIT. Since 0.4, in M2MPSK_STATE_WAITING_KEY input
 * is held for the TLS engine until m2mpsk_assoc_resume(): over TLS up to
 * m2mpsk_config_set_max_input() (past it the association fails with
 * M2MPSK_REASON_LIMIT), over DTLS up to 8 datagrams (more are dropped, as
 * if lost).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL a, NULL data with len > 0, an
 * empty or oversized datagram), M2MPSK_E_STATE (not started, or already
 * closed/failed), M2MPSK_E_FAILED (this input failed the association: drain
 * once more, an alert may be queued; also, since 0.2, input past
 * m2mpsk_config_set_max_input() during a handshake), M2MPSK_E_LIMIT (since
 * 0.2: an established association's input would go past
 * m2mpsk_config_set_max_input(); nothing was consumed: read what is
 * waiting, then feed again, or drop the datagram) or M2MPSK_E_NOMEM (the input
 * was dropped: a TLS association then fails, since its stream lost bytes; for
 * DTLS it is like a lost datagram). Thread safety: one thread at a time per
 * association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_feed(m2mpsk_assoc *a, const uint8_t *data,
                                 size_t len, uint64_t now_ms) M2MPSK_MUST_CHECK;

/**
 * Number of bytes waiting to be sent: for DTLS, the size of the next
 * datagram. 0 for NULL or when nothing waits.
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API size_t m2mpsk_assoc_pending(const m2mpsk_assoc *a);

/**
 * Copies output to send into `out`: up to `cap` stream bytes (TLS), or
 * exactly one datagram (DTLS). *out_len receives the count. Valid in every
 * state after start, including FAILED (to flush a final alert).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_BUFFER (cap 0; or,
 * DTLS, the datagram is larger than cap: it stays queued), M2MPSK_E_AGAIN
 * (nothing to send) or M2MPSK_E_STATE (not started).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_drain(m2mpsk_assoc *a, uint8_t *out, size_t cap,
                                  size_t *out_len) M2MPSK_MUST_CHECK;

/**
 * Writes into *deadline_ms the monotonic time at which
 * m2mpsk_assoc_handle_timeout() must be called: the earliest of the next
 * DTLS retransmission (none while waiting for a key), the handshake
 * deadline (while handshaking or, since 0.4, waiting for a key) and the
 * expiry of the record in use (its not_after, on the caller's monotonic
 * clock by way of the wall-clock time given to m2mpsk_assoc_start(): the
 * first millisecond at which that time, advanced in whole seconds, is past
 * not_after). A responder knows its record once the client's psk_identity
 * has been checked. The deadline may already be past; call
 * m2mpsk_assoc_handle_timeout() then. Call again after every feed, write,
 * read and handle_timeout: the deadline moves.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_AGAIN (nothing is
 * due: idle, closed or failed, or established with no DTLS timer running
 * and a record without not_after).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int
m2mpsk_assoc_next_timeout(const m2mpsk_assoc *a,
                          uint64_t *deadline_ms) M2MPSK_MUST_CHECK;

/**
 * Handles what is due at `now_ms`: retransmits a DTLS flight (drain it
 * afterwards), fails the handshake with M2MPSK_REASON_TIMEOUT (also one
 * waiting for a key, which then stops waiting on its request), or, once the
 * record in use has expired, fails the association with
 * M2MPSK_REASON_EXPIRED exactly as input at that time would: an
 * established one queues an alert for the peer (drain it) and the event
 * M2MPSK_EVENT_REVOKED, a handshake the event M2MPSK_EVENT_FAILED. It also
 * fails an established association whose record was revoked or removed
 * (M2MPSK_REASON_REVOKED). Calling it early, or with nothing due, does
 * nothing.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_STATE (not started,
 * or failed earlier for a reason other than the handshake timeout) or
 * M2MPSK_E_FAILED (failed now, or the handshake timed out before).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_handle_timeout(m2mpsk_assoc *a,
                                           uint64_t now_ms) M2MPSK_MUST_CHECK;

/** Current state; M2MPSK_STATE_FAILED for NULL.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API m2mpsk_state m2mpsk_assoc_state(const m2mpsk_assoc *a);

/**
 * Encrypts application data for sending; drain the records afterwards.
 * Writes all `len` bytes and sets *written to len. For DTLS, `len` must fit
 * one record (at most 16384 bytes) and goes out as one datagram.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, or a DTLS write too large),
 * M2MPSK_E_STATE (not established), M2MPSK_E_CLOSED, M2MPSK_E_FAILED or
 * M2MPSK_E_NOMEM (the association then fails with M2MPSK_REASON_INTERNAL).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_write(m2mpsk_assoc *a, const uint8_t *data,
                                  size_t len,
                                  size_t *written) M2MPSK_MUST_CHECK;

/**
 * Reads decrypted application data that has been fed. *out_len receives the
 * count (at least 1 on M2MPSK_OK).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_BUFFER (cap 0),
 * M2MPSK_E_AGAIN (no
 * whole record yet), M2MPSK_E_CLOSED (the peer sent close_notify),
 * M2MPSK_E_STATE (handshake not complete) or M2MPSK_E_FAILED (a record
 * failed to verify, or the peer sent a fatal alert).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_read(m2mpsk_assoc *a, uint8_t *out, size_t cap,
                                 size_t *out_len) M2MPSK_MUST_CHECK;

/**
 * Sends close_notify (drain it afterwards) and moves to CLOSED. Calling it
 * again, or after the peer closed, is harmless.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_STATE (not
 * established or closed) or M2MPSK_E_FAILED (the TLS library could not
 * write the alert: the association failed, see m2mpsk_assoc_failure()).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_close(m2mpsk_assoc *a) M2MPSK_MUST_CHECK;

/**
 * The identity the session is bound to, once ESTABLISHED (and after CLOSED):
 * an initiator sees IdB; a responder sees IdA, or "12-<KpsaID>" when the
 * record has no IdA. NULL before. Borrowed from `a`.
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API const char *m2mpsk_assoc_peer_id(const m2mpsk_assoc *a);

/** 1 when m2mpsk_assoc_peer_id() is a Credential-ID, 0 otherwise.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API int m2mpsk_assoc_peer_id_is_credential(const m2mpsk_assoc *a);

/**
 * Binds the AE-ID a CSE assigned when an AE registered (<AE> CREATE) over
 * an association bound to a Credential-ID: m2mpsk_assoc_peer_id() then
 * returns `ae_id` and m2mpsk_assoc_peer_id_is_credential() 0, so that the
 * AE's later requests are checked against its AE-ID. Allowed once, and only
 * on an established (or closed) Entity B (the responder, or the initiator
 * with m2mpsk_config_set_roles_reversed()) whose binding is a Credential-ID;
 * a record with an IdA is bound to it from the start and cannot be
 * rebound. `ae_id` is an AE-ID in SP-relative or absolute form (a
 * one-segment one, "/S..." or "//sp/S...", must be S-type). Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_STATE (not such an
 * Entity B, or already bound), M2MPSK_E_IDA (not an AE-ID),
 * M2MPSK_E_ID_LENGTH or M2MPSK_E_NOMEM (nothing changed).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_bind_ae_id(m2mpsk_assoc *a,
                                       const char *ae_id) M2MPSK_MUST_CHECK;

/**
 * The identity this side assumed, once ESTABLISHED: a responder's IdB, an
 * initiator's IdA (NULL if its record has none). Borrowed from `a`.
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API const char *m2mpsk_assoc_local_id(const m2mpsk_assoc *a);

/** The KpsaID in use once known (initiator: always), else NULL. Borrowed.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API const char *m2mpsk_assoc_kpsa_id(const m2mpsk_assoc *a);

/** IANA name of the negotiated suite once ESTABLISHED, else NULL. Static.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API const char *m2mpsk_assoc_suite(const m2mpsk_assoc *a);

/** The engine running the association (M2MPSK_ENGINE_BORINGSSL or
 * M2MPSK_ENGINE_OPENSSL) once chosen, M2MPSK_ENGINE_AUTO before (or for a
 * NULL `a`). An initiator's is chosen at creation; a responder's no later
 * than its first m2mpsk_assoc_feed(). Since 0.3.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API m2mpsk_engine_id m2mpsk_assoc_engine(const m2mpsk_assoc *a);

/** "TLSv1.2" or "DTLSv1.2" once ESTABLISHED, else NULL. Static.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API const char *m2mpsk_assoc_version(const m2mpsk_assoc *a);

/**
 * RFC 5705 keying material exporter, once ESTABLISHED. `context` may be
 * NULL (no context) or a buffer of context_len bytes (possibly 0).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL a/out/label, NULL context with
 * context_len > 0), M2MPSK_E_BUFFER (out_len 0), M2MPSK_E_STATE (not
 * established) or M2MPSK_E_INTERNAL.
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_export(const m2mpsk_assoc *a, uint8_t *out,
                                   size_t out_len, const char *label,
                                   const uint8_t *context,
                                   size_t context_len) M2MPSK_MUST_CHECK;

/** Why the association failed; M2MPSK_REASON_NONE unless FAILED.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API m2mpsk_reason m2mpsk_assoc_failure(const m2mpsk_assoc *a);

/**
 * A readable detail of the failure (alert names, what did not match), never
 * containing key bytes; "" when none. Borrowed from `a`.
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API const char *m2mpsk_assoc_failure_detail(const m2mpsk_assoc *a);

/** What m2mpsk_dtls_listen() asks of the caller when it does not fail.
 *  Since 0.3. */
typedef enum m2mpsk_listen_result {
  /** A ClientHello with a valid cookie: create the association (equal to
   *  M2MPSK_OK). */
  M2MPSK_LISTEN_ACCEPT = 0,
  /** Send the HelloVerifyRequest written to `out` back to the peer. */
  M2MPSK_LISTEN_REPLY = 1
} m2mpsk_listen_result;

/**
 * The DTLS responder's stateless cookie exchange (RFC 6347 §4.2.1). Call it
 * with each datagram from a peer that has no association yet, before
 * creating one, so that a forged source address costs no per-peer state.
 * `peer_tag` names the peer as m2mpsk_assoc_set_peer_tag() does (typically
 * its address); the cookie is bound to it. Since 0.2.
 *
 *  - M2MPSK_LISTEN_ACCEPT (M2MPSK_OK, 0): `datagram` is a ClientHello with
 *    a valid cookie for `peer_tag`. Create a responder DTLS association
 *    from `cfg`, set the same peer tag, start it and feed it this same
 *    datagram. *out_len is 0.
 *  - M2MPSK_LISTEN_REPLY (1, positive): send the HelloVerifyRequest
 *    written to `out` (*out_len bytes; 64 bytes always suffice) back to the
 *    peer. Nothing is kept: the peer's next ClientHello will carry the
 *    cookie. (Until 0.2 this outcome was M2MPSK_E_AGAIN.)
 *  - M2MPSK_E_PROTOCOL: the datagram is not a DTLS ClientHello whose cookie
 *    is in its first fragment: drop it. (Until 0.2, M2MPSK_E_INVALID.)
 *  - any other negative status: an error, as listed below.
 *
 * The cookie is HMAC-SHA-256, truncated to 16 bytes, over the peer tag and
 * the ClientHello's random (which a client keeps when it resends), under a
 * 32-byte secret drawn at random when the config's responder DTLS context
 * is made (by the first such association or call) and wiped when the
 * config goes. The secret is not rotated: to change it, replace the
 * config. The call uses a scratch TLS object from that context, made and
 * freed within it; nothing allocated outlives the call.
 * Freezes the config, as m2mpsk_assoc_new() does.
 *
 * The OpenSSL engine does the exchange, whatever the config's engine
 * (AUTO or OPENSSL; since 0.3 a config of the default build), and AUTO
 * runs DTLS responders on it, so that the returned ClientHello reaches the
 * engine that expects it. On the OpenSSL engine every DTLS responder
 * association requires a
 * valid cookie: a first ClientHello without one (a host that does not call
 * this) is answered with a HelloVerifyRequest by the association itself,
 * which is correct but stateful. OpenSSL, GnuTLS, BoringSSL and tinydtls
 * clients, and m2mpsk's initiators, all answer HelloVerifyRequest.
 *
 * Returns M2MPSK_LISTEN_ACCEPT (M2MPSK_OK), M2MPSK_LISTEN_REPLY,
 * M2MPSK_E_INVALID (NULL cfg, peer_tag, datagram, out or out_len; len 0 or
 * above 65535; a peer tag that m2mpsk_assoc_set_peer_tag() would refuse),
 * M2MPSK_E_BUFFER (cap 0, or the HelloVerifyRequest does not fit in `cap`;
 * nothing written), M2MPSK_E_PROTOCOL, M2MPSK_E_UNSUPPORTED (no cookie
 * exchange: the OpenSSL engine cannot be loaded, or the config names
 * BoringSSL, whose DTLS server sends no HelloVerifyRequest; create the
 * association at once instead), M2MPSK_E_BACKEND, M2MPSK_E_NOMEM or
 * M2MPSK_E_INTERNAL.
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_dtls_listen(m2mpsk_config *cfg, const char *peer_tag,
                                  const uint8_t *datagram, size_t len,
                                  uint8_t *out, size_t cap,
                                  size_t *out_len) M2MPSK_MUST_CHECK;

/* ------------------------------------------------------------------------ */
/* Resource limits, rate limiting and audit events (since 0.2)               */
/* ------------------------------------------------------------------------ */

/* A responder faces peers that may be hostile. These bound what they can
 * make it hold, and report what happened. Every association made from a
 * config shares its counters, rate limiter and event queue. */

/**
 * Bounds the handshakes in progress at once among responder associations
 * made from this config: from m2mpsk_assoc_new() until established, failed
 * or freed. Past it, m2mpsk_assoc_new() fails fast with M2MPSK_E_LIMIT
 * before allocating anything, and a M2MPSK_EVENT_RATE_LIMITED event with
 * M2MPSK_REASON_LIMIT is queued. 0 means unlimited; the default is 4096.
 * Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_STATE (frozen).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_set_max_handshakes(m2mpsk_config *cfg,
                                                uint32_t n) M2MPSK_MUST_CHECK;

/**
 * Bounds the input an association holds fed but not yet consumed, in bytes
 * (M2MPSK_MAX_INPUT_MIN to 1 GiB; default 262144). A m2mpsk_assoc_feed()
 * that would exceed it consumes nothing and returns M2MPSK_E_LIMIT: once
 * established, read the application data waiting (TLS) and feed the rest
 * again, or drop the datagram (DTLS); during a handshake, when there is no
 * application data to read, the association fails with
 * M2MPSK_REASON_LIMIT. Applies to both roles. Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, out of range) or
 * M2MPSK_E_STATE (frozen).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_set_max_input(m2mpsk_config *cfg,
                                           uint32_t bytes) M2MPSK_MUST_CHECK;

/** What a rate limit counts failed handshakes by. Since 0.2. */
typedef enum m2mpsk_rate_key {
  /** The caller's peer tag (m2mpsk_assoc_set_peer_tag()), e.g. its
   *  address. Checked in m2mpsk_assoc_start(), before any handshake work. */
  M2MPSK_RATE_PEER = 0,
  /** The psk_identity a client presented, whether or not a record has it
   *  (so that the limiter reveals nothing about which KpsaIDs exist).
   *  Checked when the ClientKeyExchange arrives. */
  M2MPSK_RATE_KPSA_ID = 1
} m2mpsk_rate_key;

/**
 * Sets a rate limit on failed responder handshakes, modelled on
 * Californium's MAC-error filter. When `max_failures` handshakes keyed by
 * the same peer tag (or KpsaID) fail within `window_ms`, that key is
 * blocked for `block_ms`; each further block of the same key lasts twice
 * the previous one, up to `block_max_ms`, until the key has had no failure
 * for twice `block_max_ms`. A successful handshake forgets the key. A
 * blocked key's handshakes fail at once with M2MPSK_REASON_RATE_LIMITED
 * (queuing a M2MPSK_EVENT_RATE_LIMITED event): by peer tag in
 * m2mpsk_assoc_start(), with nothing sent; by KpsaID as soon as it arrives,
 * with an alert. Failures counted: every handshake failure except
 * M2MPSK_REASON_INTERNAL, M2MPSK_REASON_MISUSE and the limiter's own
 * refusals, which do not extend a block.
 * The limiter remembers at most 1024 keys per kind, as keyed hashes; with
 * more keys failing at once the oldest counts are forgotten first. Mind
 * that a limit by KpsaID lets whoever knows a KpsaID lock its owner out
 * for a while: keep its threshold above the peer limit's, or set it off.
 * `max_failures` 0 turns the limit off (the other values are then not
 * checked). Defaults: by peer, 10 failures in 10 s block for 1 s up to
 * 60 s; by KpsaID, 20 failures in 10 s block for 1 s up to 60 s.
 * Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL cfg, unknown key, a zero
 * window or block, block_max_ms below block_ms, or any time above 24 h) or
 * M2MPSK_E_STATE (frozen).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int
m2mpsk_config_set_rate_limit(m2mpsk_config *cfg, m2mpsk_rate_key key,
                             uint32_t max_failures, uint32_t window_ms,
                             uint32_t block_ms,
                             uint32_t block_max_ms) M2MPSK_MUST_CHECK;

/**
 * Whether `peer_tag` is blocked by the rate limit at `now_ms` (the clock
 * given to associations), so that a host can drop a new peer's first
 * datagram or connection without creating an association. *until_ms (if
 * not NULL) receives the time the block ends. Since 0.2.
 * Returns 1 (blocked), 0 (not blocked, also before any association was
 * made from the config) or M2MPSK_E_INVALID (NULL cfg or peer_tag).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_peer_blocked(m2mpsk_config *cfg,
                                          const char *peer_tag, uint64_t now_ms,
                                          uint64_t *until_ms) M2MPSK_MUST_CHECK;

/** Responder handshakes in progress now (see
 *  m2mpsk_config_set_max_handshakes()); 0 for NULL. Since
 *  0.2.
 * Thread safety: safe to call concurrently on the same config. */
M2MPSK_API uint32_t
m2mpsk_config_handshakes_in_progress(const m2mpsk_config *cfg);

/** One audit event, owned by whoever took it from the queue. Opaque. Since
 *  0.2. */
typedef struct m2mpsk_event m2mpsk_event;

/** What happened. Stable values. Since 0.2. */
typedef enum m2mpsk_event_type {
  /** Not an event (a NULL argument to m2mpsk_event_get_type()). */
  M2MPSK_EVENT_NONE = 0,
  /** A handshake completed and the session is bound to the peer id. */
  M2MPSK_EVENT_ESTABLISHED = 1,
  /** A handshake, or an established association, failed; see the reason. */
  M2MPSK_EVENT_FAILED = 2,
  /** A live association ended because its record was revoked, removed or
   *  replaced (reason revoked) or expired (reason expired). */
  M2MPSK_EVENT_REVOKED = 3,
  /** A peer was refused by a limit: rate limiting (reason rate-limited) or
   *  too many handshakes in progress (reason limit). */
  M2MPSK_EVENT_RATE_LIMITED = 4,
  /** An established association ended without failing: close_notify sent
   *  or received, or freed while established. */
  M2MPSK_EVENT_CLOSED = 5
} m2mpsk_event_type;

/** Static name of an event type, e.g. "established"; "unknown" for other
 *  values. Since 0.2.
 * Thread safety: safe from any thread. */
M2MPSK_API const char *m2mpsk_event_type_name(int type);

/**
 * Turns the audit event queue on with room for `capacity` events (1 to
 * 1048576), or off with 0 (the default). Events are queued by every
 * association made from the config, in both roles, and never carry key
 * material. When the queue is full, new events are dropped and counted
 * (m2mpsk_config_events_dropped()); an association never fails for want of
 * room. Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL, capacity too large) or
 * M2MPSK_E_STATE (frozen).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int
m2mpsk_config_set_event_queue(m2mpsk_config *cfg,
                              uint32_t capacity) M2MPSK_MUST_CHECK;

/**
 * Takes the oldest queued event. On M2MPSK_OK the caller owns *out and
 * frees it with m2mpsk_event_free(). Pull-based: no callback runs inside
 * the library. Since 0.2.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_AGAIN (the queue is
 * empty or off; *out is set to NULL).
 * Thread safety: safe to call concurrently on the same config.
 */
M2MPSK_API int m2mpsk_config_next_event(m2mpsk_config *cfg,
                                        m2mpsk_event **out) M2MPSK_MUST_CHECK;

/** Events dropped because the queue was full (or memory short); 0 for
 *  NULL. Since 0.2.
 * Thread safety: safe to call concurrently on the same config. */
M2MPSK_API uint64_t m2mpsk_config_events_dropped(const m2mpsk_config *cfg);

/** Frees an event. NULL is a no-op. Since 0.2.
 * Thread safety: not concurrently with other calls on this reference. */
M2MPSK_API void m2mpsk_event_free(m2mpsk_event *ev);

/* Event accessors (since 0.2). Strings are borrowed from the event; each
 * accessor returns NULL (or 0, or M2MPSK_EVENT_NONE) for a NULL event. */

/** What happened.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API m2mpsk_event_type m2mpsk_event_get_type(const m2mpsk_event *ev);
/** Why, for FAILED, REVOKED and RATE_LIMITED; M2MPSK_REASON_NONE else.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API m2mpsk_reason m2mpsk_event_reason(const m2mpsk_event *ev);
/** The role of the association that reported it.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API m2mpsk_role m2mpsk_event_role(const m2mpsk_event *ev);
/** Its transport.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API m2mpsk_transport m2mpsk_event_transport(const m2mpsk_event *ev);
/** The caller's monotonic time when it happened.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API uint64_t m2mpsk_event_time_ms(const m2mpsk_event *ev);
/** The KpsaID: an initiator's, or the one a client presented when it was a
 *  well-formed KpsaID; NULL when not known.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API const char *m2mpsk_event_kpsa_id(const m2mpsk_event *ev);
/** The identity the session was bound to (as m2mpsk_assoc_peer_id()),
 *  NULL when none was.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API const char *m2mpsk_event_peer_id(const m2mpsk_event *ev);
/** 1 when the peer id is a Credential-ID.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API int m2mpsk_event_peer_id_is_credential(const m2mpsk_event *ev);
/** The caller's peer tag, NULL when none was set.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API const char *m2mpsk_event_peer_tag(const m2mpsk_event *ev);
/** A readable detail (as m2mpsk_assoc_failure_detail()); "" when none.
 * Thread safety: safe to call concurrently on the same event. */
M2MPSK_API const char *m2mpsk_event_detail(const m2mpsk_event *ev);

/* ------------------------------------------------------------------------ */
/* oneM2M request checks and key derivation                                  */
/* ------------------------------------------------------------------------ */

/**
 * What a receiving CSE's security association is bound to, for
 * m2mpsk_originator_check(). Since 0.2.
 */
typedef enum m2mpsk_peer_kind {
  /** The request arrived outside any security association. */
  M2MPSK_PEER_NONE = 0,
  /** Bound to a Registree AE's AE-ID ("peer is an AE", TS-0003 §8.2.2.1). */
  M2MPSK_PEER_AE = 1,
  /** Bound to a Registree CSE's CSE-ID ("peer is a CSE"). */
  M2MPSK_PEER_CSE = 2,
  /** Bound to the Credential-ID "12-<KpsaID>": an AE whose AE-ID is not
   *  known yet (m2mpsk_assoc_peer_id_is_credential() is 1). */
  M2MPSK_PEER_CREDENTIAL = 3
} m2mpsk_peer_kind;

/** Flags for m2mpsk_originator_check(). Since 0.2. */
enum m2mpsk_originator_flags {
  /** The request is an AE registration: CREATE (op 1) of an <AE>
   *  resource (ty 2). */
  M2MPSK_ORIGINATOR_AE_CREATE = 1,
  /** The host's policy lets this AE work without a security association
   *  (e.g. its <serviceSubscribedAppRule> lists the Credential-ID "None"). */
  M2MPSK_ORIGINATOR_ALLOW_UNSECURED_AE = 2
};

/**
 * The outcome of m2mpsk_originator_check(). Apart from ACCEPT, the values
 * are the oneM2M Response Status Codes to answer with. Since 0.2.
 */
typedef enum m2mpsk_originator_verdict {
  /** The From is consistent with the association (not an RSC). */
  M2MPSK_ORIGINATOR_ACCEPT = 0,
  /** ORIGINATOR_NOT_AUTHENTICATED. */
  M2MPSK_ORIGINATOR_NOT_AUTHENTICATED = 4106,
  /** SECURITY_ASSOCIATION_REQUIRED. */
  M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED = 4107
} m2mpsk_originator_verdict;

/**
 * Decides whether a request that a CSE received may carry the originator
 * `from`, given what the association it arrived on is bound to (TS-0004
 * §7.3.2.1, TS-0003 §7.2.1). Since 0.2.
 *
 * Arguments (all borrowed for the call):
 *  - `bound_kind`, `bound_id`: the binding. M2MPSK_PEER_NONE with a NULL
 *    bound_id; otherwise m2mpsk_assoc_peer_id(): an AE-ID (C-type
 *    "/cse/Cx" or S-type "/Sx"), a CSE-ID, or "12-<KpsaID>", SP-relative or
 *    absolute.
 *  - `local_id`: the receiving CSE's own CSE-ID (m2mpsk_assoc_local_id()).
 *    It resolves the CSE-relative AE-ID-Stems "Cx" (= local CSE-ID + "/Cx")
 *    and "Sx" (= "/Sx"), and an SP-relative identifier takes its SP-ID:
 *    give it in absolute form for "/cse/C1" and "//sp/cse/C1" to match.
 *    When it is SP-relative, an absolute identifier never equals an
 *    SP-relative one. SP-IDs compare without case, the rest exactly.
 *  - `from`: the request's From: an AE-ID-Stem ("C..." or "S..."), or an
 *    AE-ID or CSE-ID, SP-relative or absolute. NULL or "" means absent.
 *  - `flags`: 0 or M2MPSK_ORIGINATOR_* bits.
 *  - `verdict`: receives the outcome on M2MPSK_OK, and
 *    M2MPSK_ORIGINATOR_NOT_AUTHENTICATED on any error.
 *
 * A one-segment identifier ("/x", "//sp/x") is read as an S-type AE-ID when
 * it starts with 'S' and as a CSE-ID otherwise (TS-0001 §7.2), except that
 * any one naming the bound CSE is that CSE.
 *
 * Verdicts:
 *  - No From: ACCEPT only as below for an AE registration, otherwise
 *    NOT_AUTHENTICATED.
 *  - M2MPSK_PEER_NONE: a CSE-ID gets SECURITY_ASSOCIATION_REQUIRED; so does
 *    an AE (any AE form, or no From at registration) unless
 *    M2MPSK_ORIGINATOR_ALLOW_UNSECURED_AE, which makes it ACCEPT: the
 *    identity is then not authenticated at all.
 *  - M2MPSK_PEER_AE: ACCEPT when `from` names the bound AE-ID in any form,
 *    registration included; otherwise NOT_AUTHENTICATED.
 *  - M2MPSK_PEER_CSE: ACCEPT for the bound CSE-ID, a C-type AE-ID under it,
 *    or an S-type AE-ID in the bound CSE's SP (which no identifier ties to
 *    a CSE). NOT_AUTHENTICATED for another CSE-ID, a C-type AE-ID under
 *    another CSE (a bare "Cx" is under the receiving CSE), or another SP.
 *    Requests relayed from the Registree's descendant CSEs are among these:
 *    a host that accepts them must check its <remoteCSE> records itself.
 *  - M2MPSK_PEER_CREDENTIAL: the AE-ID is not known until the host binds
 *    one at registration, so only an AE registration is accepted, from no
 *    From, a stem for the Registrar or SP to assign ("C", "S") or an
 *    AE-ID-Stem, an S-type AE-ID of the receiving CSE's SP, or a C-type
 *    AE-ID under the receiving CSE. Anything else, a CSE-ID included (a
 *    CSE's association always has its CSE-ID configured), is
 *    NOT_AUTHENTICATED. The host still checks the Credential-ID against
 *    <serviceSubscribedAppRule> (applicableCredIDs).
 *
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL verdict or local_id, unknown
 * bound_kind or flag, bound_id NULL with a kind other than
 * M2MPSK_PEER_NONE or non-NULL with it), M2MPSK_E_IDB (local_id is not a
 * CSE-ID), M2MPSK_E_IDA (bound_id is not of its kind's form, or `from` is
 * malformed, e.g. "ae1", "/cse/S1"), M2MPSK_E_ID_LENGTH (an identity is
 * longer than M2MPSK_ID_MAX bytes), M2MPSK_E_KPSA_ID or
 * M2MPSK_E_KPSA_ID_LENGTH (the KpsaID of a Credential-ID bound_id).
 * Thread safety: safe from any thread.
 */
M2MPSK_API int
m2mpsk_originator_check(m2mpsk_peer_kind bound_kind, const char *bound_id,
                        const char *local_id, const char *from, unsigned flags,
                        m2mpsk_originator_verdict *verdict) M2MPSK_MUST_CHECK;

/**
 * m2mpsk_originator_check() for a request that arrived on association `a`:
 * the binding (its kind read from m2mpsk_assoc_peer_id() as that function
 * reads identifiers: a Credential-ID, else an AE-ID when it has two
 * segments or one starting with 'S', else a CSE-ID) and the receiving
 * CSE's own CSE-ID (m2mpsk_assoc_local_id()) come from the association, so
 * a host cannot pass a kind that does not match what the handshake bound.
 * It is what a CSE calls for every request; `from` and `flags` are as
 * there. Since 0.3.
 *
 * `a` must be ESTABLISHED: on a responder (Entity B) the local identity is
 * its IdB; on an initiator, its record's IdA, which must then be a CSE-ID
 * (a Registree CSE checking what its Registrar sends).
 *
 * Returns M2MPSK_OK with the verdict, or, with *verdict set to
 * M2MPSK_ORIGINATOR_NOT_AUTHENTICATED: M2MPSK_E_INVALID (NULL a or
 * verdict, or an unknown flag), M2MPSK_E_STATE (`a` is not ESTABLISHED),
 * M2MPSK_E_IDB (this side has no CSE-ID: an initiator whose IdA is absent
 * or an AE-ID), or m2mpsk_originator_check()'s M2MPSK_E_IDA (`from` is
 * malformed) and M2MPSK_E_ID_LENGTH (`from` is too long).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_originator_check(
    const m2mpsk_assoc *a, const char *from, unsigned flags,
    m2mpsk_originator_verdict *verdict) M2MPSK_MUST_CHECK;

/**
 * Derives a remotely provisioned Kpsa from the enrolment key Ke (TS-0003
 * §10.3.3) and adds it as a record, as m2mpsk_keystore_add() would:
 *
 *   Kpsa = HMAC-SHA-256(Ke, "oneM2M Enrolment Key to Provisioned Secure
 *          Connection Key derivation" || Enrolee-B-ID)
 *
 * (the label in one line, no separator, no NUL). The 32-byte Kpsa exists
 * only in a transient sodium_malloc buffer, mlocked where RLIMIT_MEMLOCK
 * allows and wiped on return, and then in the keystore's locked memory.
 * Since 0.2.
 *
 * `ke` (ke_len bytes, M2MPSK_KEY_MIN to M2MPSK_KEY_MAX) is borrowed; the
 * caller may wipe it on return. `enrolee_b_id` is a CSE-ID or AE-ID,
 * SP-relative or absolute, as m2mpsk_ida_validate() accepts; its bytes are
 * used exactly as given (printable ASCII, so already NFKC), so both ends
 * must use the same form. The other arguments are m2mpsk_keystore_add()'s.
 * Per §10.7 the key is not valid beyond Ke's lifetime: pass it in
 * `not_after`. On any error the keystore is unchanged.
 *
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL ks, kpsa_id, ke, enrolee_b_id
 * or idb), M2MPSK_E_KEY_LENGTH (ke_len), M2MPSK_E_IDA (enrolee_b_id or
 * ida), M2MPSK_E_ID_LENGTH (enrolee_b_id, ida or idb), or any other code of
 * m2mpsk_keystore_add(): M2MPSK_E_KPSA_ID, M2MPSK_E_KPSA_ID_LENGTH,
 * M2MPSK_E_IDB, M2MPSK_E_VALIDITY, M2MPSK_E_DUPLICATE, M2MPSK_E_UNLOCKED or
 * M2MPSK_E_NOMEM (also when the transient buffer cannot be allocated).
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_add_derived(
    m2mpsk_keystore *ks, const char *kpsa_id, const uint8_t *ke, size_t ke_len,
    const char *enrolee_b_id, const char *ida, const char *idb,
    int64_t not_before, int64_t not_after) M2MPSK_MUST_CHECK;

/* ------------------------------------------------------------------------ */
/* Key sources (since 0.4)                                                   */
/* ------------------------------------------------------------------------ */

/**
 * Keys that come from elsewhere (docs/key-sources.md). A keystore may have
 * a key source: when an
 * association needs a KpsaID the keystore has no record for (a responder:
 * the psk_identity of the client's ClientKeyExchange; an initiator: its
 * own KpsaID, at m2mpsk_assoc_start()), the keystore opens a key request
 * for it and the association enters M2MPSK_STATE_WAITING_KEY. It consumes
 * nothing past the identity: the client's flight waits, unread by the TLS
 * engine, until the request is answered. The host answers with
 * m2mpsk_key_request_supply() (the record, added to the keystore) or
 * m2mpsk_key_request_absent(), from any thread, at any later time, and then
 * calls m2mpsk_assoc_resume() on each association waiting for it.
 *
 * One request is open per KpsaID: every association that needs the same
 * KpsaID meanwhile waits on it. The defences do not change: an absent
 * record fails the handshake exactly as an unknown identity does (a wrong
 * key, on the wire), failures count for the rate limits as before, and the
 * handshake timeout covers the wait. An answer that comes after every
 * waiting association was freed still adds (or not) the record, and is
 * otherwise harmless. A KpsaID that the rate limiter blocks, or that the
 * keystore holds revoked, is not asked for.
 *
 * The responder reads the psk_identity, which RFC 4279 puts first in every
 * PSK ClientKeyExchange, from the TLS record that carries the message, or
 * from the message's first fragment in an epoch-0 DTLS record. An identity
 * split across records or fragments, or a malformed one, is left to the
 * TLS engine as without a source (an unknown KpsaID then fails as unknown);
 * no mainstream TLS stack sends it so.
 *
 * A request is reference-counted: the keystore holds one while it is open,
 * each waiting association one, and the host one per reference it was
 * given (m2mpsk_key_request_free()).
 */
typedef struct m2mpsk_key_request m2mpsk_key_request;

/**
 * Called once per new key request, synchronously on the thread whose
 * m2mpsk_assoc_feed() or m2mpsk_assoc_start() opened it, with a new
 * reference to `req` that the callee owns. It must not block and must not
 * call into that association; it typically starts a lookup whose
 * completion answers the request. No keystore lock is held.
 */
typedef void (*m2mpsk_key_source_fn)(void *arg, m2mpsk_key_request *req);

/**
 * Sets, replaces or removes the keystore's key source. With `fn`, each new
 * request is handed to fn(arg, req). With `fn` NULL and `max_pending` > 0,
 * new requests queue until the host takes them with
 * m2mpsk_keystore_next_request(). `max_pending` bounds the requests open at
 * once: past it, an unknown KpsaID is treated at once as one the source
 * does not have (no request is opened); a request already open for the
 * same KpsaID is still joined. `max_pending` 0 removes the source: requests
 * still open are answered as absent, and queued ones leave the queue.
 * Requests already handed out keep going to their host. A responder reads
 * whether a source is set at m2mpsk_assoc_start().
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL ks; fn with max_pending 0) or
 * M2MPSK_E_NOMEM (nothing changed).
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_set_source(m2mpsk_keystore *ks,
                                          m2mpsk_key_source_fn fn, void *arg,
                                          size_t max_pending) M2MPSK_MUST_CHECK;

/**
 * Takes the oldest queued request of a source set without a callback:
 * *out receives a new reference (free it with m2mpsk_key_request_free()).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_AGAIN (none
 * queued; *out is NULL).
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int
m2mpsk_keystore_next_request(m2mpsk_keystore *ks,
                             m2mpsk_key_request **out) M2MPSK_MUST_CHECK;

/** The KpsaID asked for (well-formed, as m2mpsk_kpsa_id_validate() checks);
 * NULL for NULL. Borrowed from the request.
 * Thread safety: safe from any thread. */
M2MPSK_API const char *
m2mpsk_key_request_kpsa_id(const m2mpsk_key_request *req);

/** The SNI host name the client sent to the responder that opened the
 * request, or NULL (none, an initiator's request, or NULL req). Borrowed.
 * Thread safety: safe from any thread. */
M2MPSK_API const char *
m2mpsk_key_request_server_name(const m2mpsk_key_request *req);

/** The role of the association that opened the request;
 * M2MPSK_ROLE_RESPONDER for NULL.
 * Thread safety: safe from any thread. */
M2MPSK_API m2mpsk_role m2mpsk_key_request_role(const m2mpsk_key_request *req);

/** 1 once the request has been answered (or its source removed), 0 while
 * it is open, M2MPSK_E_INVALID for NULL.
 * Thread safety: safe from any thread. */
M2MPSK_API int
m2mpsk_key_request_answered(const m2mpsk_key_request *req) M2MPSK_MUST_CHECK;

/**
 * Answers with the record: adds it to the keystore exactly as
 * m2mpsk_keystore_add() would (same arguments, for the request's KpsaID),
 * and closes the request. `key` is borrowed; the caller may wipe it on
 * return. If a record for the KpsaID appeared meanwhile, that record wins,
 * the request is closed all the same and M2MPSK_E_DUPLICATE is returned.
 * On any other error the request stays open (answer again, or absent).
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL req or key, NULL idb),
 * M2MPSK_E_STATE (already answered, or its keystore is gone), and the
 * codes of m2mpsk_keystore_add(): M2MPSK_E_KEY_LENGTH, M2MPSK_E_IDA,
 * M2MPSK_E_IDB, M2MPSK_E_ID_LENGTH, M2MPSK_E_VALIDITY, M2MPSK_E_DUPLICATE,
 * M2MPSK_E_UNLOCKED or M2MPSK_E_NOMEM.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_key_request_supply(m2mpsk_key_request *req,
                                         const uint8_t *key, size_t key_len,
                                         const char *ida, const char *idb,
                                         int64_t not_before,
                                         int64_t not_after) M2MPSK_MUST_CHECK;

/**
 * Answers a responder's request with a record for the waiting handshakes
 * only (since 0.6): nothing is added to the keystore. Every association
 * that waited on this request uses the record; the next handshake that
 * presents the KpsaID asks the source again. For a source that is the
 * system of record and answers each handshake (a MAF, a secrets service),
 * it spares the keystore's work (the record, the index, the key's write
 * into its closed arena) and leaves no key behind.
 *
 * The key is held in locked memory, between guard pages and out of core
 * dumps, but not closed like the keystore's arenas, and only while the
 * request lives: it is wiped when the request is freed (every waiting
 * association resumed or freed, and every reference the host took
 * dropped). The engine's copy follows the rules of any handshake.
 *
 * An association established this way has no keystore record:
 * m2mpsk_keystore_remove() and m2mpsk_keystore_revoke() of its KpsaID do
 * not reach it (free it to end it), and the record's not_after still ends
 * it. Arguments are checked as by m2mpsk_keystore_add(). On any error the
 * request stays open (answer again, or absent).
 *
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL req or key, NULL idb, or an
 * initiator's request: initiators keep their records), M2MPSK_E_STATE
 * (already answered, or its keystore is gone), m2mpsk_keystore_add()'s
 * validation codes (M2MPSK_E_KEY_LENGTH, M2MPSK_E_IDA, M2MPSK_E_IDB,
 * M2MPSK_E_ID_LENGTH, M2MPSK_E_VALIDITY), M2MPSK_E_LIMIT (8192 answers
 * given once or on their way are held already) or M2MPSK_E_NOMEM.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_key_request_supply_once(
    m2mpsk_key_request *req, const uint8_t *key, size_t key_len,
    const char *ida, const char *idb, int64_t not_before,
    int64_t not_after) M2MPSK_MUST_CHECK;

/**
 * Answers that the source has no record for the KpsaID: waiting responders
 * go on as with an unknown identity, waiting initiators fail with
 * M2MPSK_REASON_UNKNOWN_IDENTITY.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL) or M2MPSK_E_STATE (already
 * answered). Thread safety: safe from any thread.
 */
M2MPSK_API int
m2mpsk_key_request_absent(m2mpsk_key_request *req) M2MPSK_MUST_CHECK;

/** Releases one reference. NULL is a no-op. An open request the host drops
 * without answering stays open until its waiters time out; the keystore
 * then closes it as absent when no association waits on it any more.
 * Thread safety: safe from any thread. */
M2MPSK_API void m2mpsk_key_request_free(m2mpsk_key_request *req);

/** The request an association in M2MPSK_STATE_WAITING_KEY waits on, else
 * NULL. Borrowed: valid while the association waits; take a reference of
 * your own with m2mpsk_key_request_ref() to keep it.
 * Thread safety: one thread at a time per association; see Threads. */
M2MPSK_API m2mpsk_key_request *m2mpsk_assoc_key_request(const m2mpsk_assoc *a);

/** Takes one more reference to `req` and returns it (NULL for NULL).
 * Thread safety: safe from any thread. */
M2MPSK_API m2mpsk_key_request *m2mpsk_key_request_ref(m2mpsk_key_request *req);

/**
 * Goes on with a handshake in M2MPSK_STATE_WAITING_KEY once its request
 * has been answered: the waiting input reaches the TLS engine (drain
 * afterwards), or an initiator queues its ClientHello. While the request
 * is still open it does nothing and the state stays WAITING_KEY.
 * Returns M2MPSK_OK (check the state and drain), M2MPSK_E_INVALID (NULL),
 * M2MPSK_E_STATE (not waiting for a key) or M2MPSK_E_FAILED (the handshake
 * failed now: an absent record for an initiator, or what the waiting input
 * caused; see m2mpsk_assoc_failure()).
 * Thread safety: one thread at a time per association; see Threads.
 */
M2MPSK_API int m2mpsk_assoc_resume(m2mpsk_assoc *a,
                                   uint64_t now_ms) M2MPSK_MUST_CHECK;

/**
 * Adds a record, or replaces the record already held for `kpsa_id` (an
 * upsert, as a replicated store applies a put). Arguments and validation
 * are m2mpsk_keystore_add()'s. If only the validity window changed, the
 * record is updated in place and live associations using it go on (their
 * expiry follows the new not_after). If the key or an identity changed, or
 * the old record was revoked, the old record is removed (live associations
 * fail closed with M2MPSK_REASON_REVOKED, as with m2mpsk_keystore_remove())
 * and the new one added, in one step. Putting an identical record changes
 * nothing. On any error the keystore is unchanged.
 * Returns M2MPSK_OK and the codes of m2mpsk_keystore_add() except
 * M2MPSK_E_DUPLICATE.
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_put(m2mpsk_keystore *ks, const char *kpsa_id,
                                   const uint8_t *key, size_t key_len,
                                   const char *ida, const char *idb,
                                   int64_t not_before,
                                   int64_t not_after) M2MPSK_MUST_CHECK;

/**
 * A batch of records added to a keystore in one step, all or none (since
 * 0.4). Records are checked and their keys copied into locked, guarded
 * memory as they are added to the batch, apart from the keystore; the
 * commit moves them all in under one write lock, so that readers never see
 * part of a batch and a bulk load costs a fraction of
 * m2mpsk_keystore_add() per record (which opens and closes the key memory
 * around each key). m2mpsk_keystore_load_file() loads the same way.
 * The batch holds a reference to its keystore.
 */
typedef struct m2mpsk_keystore_batch m2mpsk_keystore_batch;

/**
 * Starts an empty batch for `ks`.
 * Returns M2MPSK_OK (*out set, freed with m2mpsk_keystore_batch_free()),
 * M2MPSK_E_INVALID (NULL ks or out; *out is set to NULL when out is not
 * NULL) or M2MPSK_E_NOMEM.
 * Thread safety: safe from any thread.
 */
M2MPSK_API int
m2mpsk_keystore_batch_new(m2mpsk_keystore *ks,
                          m2mpsk_keystore_batch **out) M2MPSK_MUST_CHECK;

/**
 * Adds a record to the batch, not yet to the keystore. Arguments and
 * checks are m2mpsk_keystore_add()'s: `key` is copied into locked memory
 * and the caller may wipe it on return. A KpsaID already in the batch is
 * M2MPSK_E_DUPLICATE now; one already in the keystore is found by
 * m2mpsk_keystore_batch_commit(). On any error the record is not added
 * and the batch stays usable. Records are numbered from 0 in the order
 * they were added successfully.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL b, kpsa_id, key or idb),
 * M2MPSK_E_STATE (the batch was committed), M2MPSK_E_KPSA_ID,
 * M2MPSK_E_KPSA_ID_LENGTH, M2MPSK_E_KEY_LENGTH, M2MPSK_E_IDA,
 * M2MPSK_E_IDB, M2MPSK_E_ID_LENGTH, M2MPSK_E_VALIDITY, M2MPSK_E_DUPLICATE,
 * M2MPSK_E_UNLOCKED (REQUIRE_LOCKED and mlock failed) or M2MPSK_E_NOMEM
 * (also past 2^32 - 2 records).
 * Thread safety: one thread at a time per batch.
 */
M2MPSK_API int m2mpsk_keystore_batch_add(m2mpsk_keystore_batch *b,
                                         const char *kpsa_id,
                                         const uint8_t *key, size_t key_len,
                                         const char *ida, const char *idb,
                                         int64_t not_before,
                                         int64_t not_after) M2MPSK_MUST_CHECK;

/**
 * Adds every record of the batch to its keystore, all or none. On success
 * the batch is spent (m2mpsk_keystore_batch_add() answers M2MPSK_E_STATE;
 * free it). On an error the keystore and the batch are unchanged: the
 * caller may retry or free the batch, which wipes its keys. An empty batch
 * commits successfully.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL b), M2MPSK_E_STATE (already
 * committed), M2MPSK_E_DUPLICATE (a KpsaID of the batch is already in the
 * keystore; *err_index, if err_index is not NULL, is the number of the
 * first such record, else 0) or M2MPSK_E_NOMEM.
 * Thread safety: one thread at a time per batch; safe concurrently with
 * any other call on the keystore.
 */
M2MPSK_API int
m2mpsk_keystore_batch_commit(m2mpsk_keystore_batch *b,
                             size_t *err_index) M2MPSK_MUST_CHECK;

/**
 * Releases a batch: records never committed are wiped and dropped, and the
 * batch's keystore reference is released. NULL is a no-op.
 * Thread safety: not concurrently with other calls on this batch.
 */
M2MPSK_API void m2mpsk_keystore_batch_free(m2mpsk_keystore_batch *b);

/* ---- Token keys: Kpsa never enters the process (since 0.5) -------------
 *
 * A token key is a Kpsa that stays in a secure environment: a PKCS#11
 * token, a TPM, a TEE, an HSM across the network. The keystore holds no key
 * bytes for it, only operations the host implements. During a handshake the
 * TLS library is handed a random one-handshake handle of the key's length
 * in place of the key, and the TLS 1.2 / DTLS 1.2 master secret, the one
 * computation of the handshake that needs Kpsa, is asked of the host:
 *
 *   master_secret = P_<digest>(prefix || Kpsa, seed), its first out_len bytes
 *
 * where P_hash is RFC 5246 §5's, `prefix` is the RFC 4279 §2 premaster up to
 * the key (uint16 length of the other secret, the other secret: zeros for
 * plain PSK, the (EC)DH shared secret for ECDHE-PSK and DHE-PSK, uint16
 * length of the key), and `seed` is the label followed by the seed ("master
 * secret" and both randoms, or "extended master secret" and the session
 * hash). A PKCS#11 token computes it with CKM_CONCATENATE_DATA_AND_BASE and
 * CKM_SHA256_HMAC / CKM_SHA384_HMAC (docs/pkcs11.md).
 *
 * Only the OpenSSL engine can use token keys: OpenSSL 3 fetches its
 * TLS1-PRF through the library context of the SSL_CTX, where m2mpsk's own
 * provider recognises the handle; BoringSSL has no such hook. An
 * association on another engine fails with M2MPSK_REASON_INTERNAL and a
 * detail that says so. Initiators with a token key and responders whose
 * keystore has M2MPSK_KEYSTORE_TOKEN_KEYS run on the OpenSSL engine when
 * their config leaves the choice to m2mpsk. TLS 1.2 and DTLS 1.2 only, and
 * suites whose PRF is SHA-256 or SHA-384 (every PSK suite of TLS 1.2).
 */

/**
 * A token key's master secret: computes the master secret defined above
 * into out[0..out_len). `digest` is "SHA256" or "SHA384". Returns 0, or -1
 * on failure (the handshake then fails with M2MPSK_REASON_INTERNAL, "the
 * token key of KpsaID ... could not compute the master secret"). `ctx` is
 * what the record was added with. Called on the thread driving the
 * handshake, possibly for several handshakes at once on several threads;
 * it must not call into m2mpsk. It sees `prefix`, which is secret for
 * (EC)DHE-PSK: wipe any copy.
 */
typedef int (*m2mpsk_token_master_secret_fn)(
    void *ctx, const char *digest, const uint8_t *prefix, size_t prefix_len,
    const uint8_t *seed, size_t seed_len, uint8_t *out, size_t out_len);

/**
 * Called once when the last user of a token key lets go of it: its record
 * left the keystore (removed, revoked, replaced, or the keystore freed) and
 * no handshake still needs it. Must not call into the keystore.
 */
typedef void (*m2mpsk_token_release_fn)(void *ctx);

/**
 * Adds a record whose key is a token key of `key_len` bytes (the length of
 * Kpsa in the token, M2MPSK_KEY_MIN to M2MPSK_KEY_MAX), computed with
 * `master_secret` and released with `release` (may be NULL). The other
 * arguments and checks are m2mpsk_keystore_add()'s. On success the keystore
 * owns `ctx` and calls release(ctx) when done with it; on failure the
 * caller keeps it. Sets M2MPSK_KEYSTORE_TOKEN_KEYS.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL ks, kpsa_id, master_secret or
 * idb),
 * M2MPSK_E_KPSA_ID, M2MPSK_E_KPSA_ID_LENGTH, M2MPSK_E_KEY_LENGTH,
 * M2MPSK_E_IDA, M2MPSK_E_IDB, M2MPSK_E_ID_LENGTH, M2MPSK_E_VALIDITY,
 * M2MPSK_E_DUPLICATE or M2MPSK_E_NOMEM.
 * Thread safety: safe to call concurrently on the same keystore.
 */
M2MPSK_API int m2mpsk_keystore_add_token_key(
    m2mpsk_keystore *ks, const char *kpsa_id, size_t key_len,
    m2mpsk_token_master_secret_fn master_secret,
    m2mpsk_token_release_fn release, void *ctx, const char *ida,
    const char *idb, int64_t not_before, int64_t not_after) M2MPSK_MUST_CHECK;

/**
 * Answers a key request with a token key: m2mpsk_key_request_supply() with
 * m2mpsk_keystore_add_token_key() in place of m2mpsk_keystore_add(). On
 * M2MPSK_E_DUPLICATE (a record appeared meanwhile; it wins and the request
 * is closed) and on every other error the caller keeps `ctx`.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID, M2MPSK_E_STATE (already answered, or
 * its keystore is gone) and the codes of m2mpsk_keystore_add_token_key().
 * Thread safety: safe from any thread.
 */
M2MPSK_API int m2mpsk_key_request_supply_token_key(
    m2mpsk_key_request *req, size_t key_len,
    m2mpsk_token_master_secret_fn master_secret,
    m2mpsk_token_release_fn release, void *ctx, const char *ida,
    const char *idb, int64_t not_before, int64_t not_after) M2MPSK_MUST_CHECK;

#ifdef __cplusplus
}
#endif

#endif /* M2MPSK_M2MPSK_H */
