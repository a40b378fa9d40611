/* The internal interface between the association state machine (assoc.c)
 * and a TLS backend (one file per backend in src/tls/). Only backends
 * include <openssl/...>. */
#ifndef M2MPSK_TLS_ENGINE_H
#define M2MPSK_TLS_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "m2mpsk/m2mpsk.h"

typedef struct m2mpsk_engine_ctx m2mpsk_engine_ctx; /* per config and role */
typedef struct m2mpsk_engine m2mpsk_engine;         /* per association */

/* ---- implemented by assoc.c, called from inside the backend ------------ */

/* Initiator: write the NUL-terminated KpsaID into `identity` and the key
 * into `psk`; return the key length, or 0 to abort (reason recorded). */
unsigned m2mpsk_assoc_on_client_psk(m2mpsk_assoc *a, char *identity,
                                    size_t identity_cap, uint8_t *psk,
                                    size_t psk_cap);
/* Responder: return the key for `identity`, a decoy key (the refusal is
 * recorded and will surface when the Finished fails), or 0 to make the
 * backend send unknown_psk_identity. */
unsigned m2mpsk_assoc_on_server_psk(m2mpsk_assoc *a, const char *identity,
                                    uint8_t *psk, size_t psk_cap);
/* A token key's handshake (ABI 4): when the PSK that on_*_psk gave `a`'s
 * engine was a token key's handle and `psk` (the premaster's last psk_len
 * bytes) is that handle, computes the master secret
 * P_<digest>(prefix || Kpsa, seed) into out and returns 1, or -1 when it
 * cannot (the handshake must fail: never the engine's own PRF then).
 * 0: not a handle of `a`'s; the engine's own PRF applies. `digest` is
 * "SHA256" or "SHA384" (NULL for another: -1 if it was a handle). */
int m2mpsk_assoc_token_master_secret(m2mpsk_assoc *a, const char *digest,
                                     const uint8_t *prefix, size_t prefix_len,
                                     const uint8_t *psk, size_t psk_len,
                                     const uint8_t *seed, size_t seed_len,
                                     uint8_t *out, size_t out_len);
/* 1 when the association may hand its engine a token key's handle (ABI 4):
 * its engine object is then made in the backend's token context. */
int m2mpsk_assoc_wants_token_keys(const m2mpsk_assoc *a);
/* Responder: the ClientHello's SNI host, or NULL. Returns 0 to go on, or 1
 * to refuse with unrecognized_name (reason recorded). */
int m2mpsk_assoc_on_server_name(m2mpsk_assoc *a, const char *host);

/* ---- the backend, as a table of functions -------------------------------
 * A backend is a shared module that libm2mpsk loads with dlopen() and
 * RTLD_LOCAL | RTLD_DEEPBIND (src/tls/loader.c), so that its TLS library's
 * OpenSSL-like names never meet a host's OpenSSL. It exports one function,
 * m2mpsk_tls_module, and reaches back into libm2mpsk only through hooks. */

typedef struct m2mpsk_engine_hooks {
  unsigned (*on_client_psk)(m2mpsk_assoc *a, char *identity,
                            size_t identity_cap, uint8_t *psk, size_t psk_cap);
  unsigned (*on_server_psk)(m2mpsk_assoc *a, const char *identity, uint8_t *psk,
                            size_t psk_cap);
  int (*on_server_name)(m2mpsk_assoc *a, const char *host);
  /* The association's peer tag, or NULL (ABI 3): what a DTLS cookie is
   * bound to. */
  const char *(*peer_tag)(const m2mpsk_assoc *a);
  /* m2mpsk_assoc_wants_token_keys() and m2mpsk_assoc_token_master_secret()
   * (ABI 4). */
  int (*wants_token_keys)(const m2mpsk_assoc *a);
  int (*token_master_secret)(m2mpsk_assoc *a, const char *digest,
                             const uint8_t *prefix, size_t prefix_len,
                             const uint8_t *psk, size_t psk_len,
                             const uint8_t *seed, size_t seed_len, uint8_t *out,
                             size_t out_len);
} m2mpsk_engine_hooks;

#define M2MPSK_ENGINE_ABI 5

typedef struct m2mpsk_engine_ops {
  unsigned abi; /* M2MPSK_ENGINE_ABI */
  const char *(*backend_name)(void);
  size_t (*suite_count)(void);
  const char *(*suite_name)(size_t i);
  int (*check_suites)(const char *iana_names);
  const char *(*default_suites)(void);
  int (*ctx_new)(m2mpsk_engine_ctx **out, m2mpsk_role role,
                 m2mpsk_transport transport, const char *iana_names);
  void (*ctx_free)(m2mpsk_engine_ctx *ctx);
  void (*set_now)(uint64_t now_ms);
  int (*engine_new)(m2mpsk_engine **out, m2mpsk_engine_ctx *ctx,
                    m2mpsk_assoc *owner);
  void (*engine_free)(m2mpsk_engine *e);
  int (*set_mtu)(m2mpsk_engine *e, unsigned mtu);
  int (*set_server_name)(m2mpsk_engine *e, const char *host);
  int (*push)(m2mpsk_engine *e, const uint8_t *data, size_t len);
  int (*handshake)(m2mpsk_engine *e);
  size_t (*pending)(const m2mpsk_engine *e);
  int (*drain)(m2mpsk_engine *e, uint8_t *out, size_t cap, size_t *out_len);
  int (*read)(m2mpsk_engine *e, uint8_t *out, size_t cap, size_t *out_len);
  int (*write)(m2mpsk_engine *e, const uint8_t *data, size_t len);
  int (*close)(m2mpsk_engine *e);
  void (*abort)(m2mpsk_engine *e, uint8_t alert);
  int (*timer)(const m2mpsk_engine *e, uint64_t *remaining_ms);
  int (*on_timer)(m2mpsk_engine *e);
  const char *(*suite)(const m2mpsk_engine *e);
  const char *(*version)(const m2mpsk_engine *e);
  const char *(*psk_identity)(const m2mpsk_engine *e);
  int (*export_keying)(const m2mpsk_engine *e, uint8_t *out, size_t out_len,
                       const char *label, const uint8_t *context,
                       size_t context_len);
  m2mpsk_reason (*failure)(m2mpsk_engine *e, char *detail, size_t cap);
  /* Bytes pushed but not yet consumed by the TLS library (ABI 2). */
  size_t (*buffered)(const m2mpsk_engine *e);
  /* The stateless DTLS cookie exchange on a responder DTLS context, for a
   * datagram from a peer that has no association (ABI 3): M2MPSK_OK for a
   * ClientHello whose cookie is valid for `peer_tag`, M2MPSK_E_AGAIN with a
   * HelloVerifyRequest in `out`, M2MPSK_E_INVALID (not a ClientHello),
   * M2MPSK_E_BUFFER, M2MPSK_E_NOMEM or M2MPSK_E_INTERNAL. Keeps nothing.
   * NULL when the backend cannot do it (BoringSSL). */
  int (*dtls_listen)(m2mpsk_engine_ctx *ctx, const char *peer_tag,
                     const uint8_t *datagram, size_t len, uint8_t *out,
                     size_t cap, size_t *out_len);
  /* 1 when the engine computes a token key's master secret through
   * hooks->token_master_secret (ABI 4): the OpenSSL engine. */
  int token_keys;
  /* A responder engine about to wait for a key source, the client's
   * flight held back by the association (ABI 5): release what the next
   * handshake step or timer rebuilds. That call fails the association
   * (reason INTERNAL) if it cannot. NULL when the engine keeps nothing worth
   * releasing (BoringSSL frees its record buffers whenever they empty). */
  void (*rest)(m2mpsk_engine *e);
} m2mpsk_engine_ops;

/* The one symbol a backend module exports. */
typedef const m2mpsk_engine_ops *(*m2mpsk_tls_module_fn)(
    const m2mpsk_engine_hooks *hooks);
const m2mpsk_engine_ops *m2mpsk_tls_module(const m2mpsk_engine_hooks *hooks);

enum { M2MPSK_ENG_FAIL = -1, M2MPSK_ENG_WANT = 0, M2MPSK_ENG_DONE = 1 };

/* Engine ids run from M2MPSK_ENGINE_AUTO (0) to below this. */
#define M2MPSK_ENGINE_COUNT 3

/* ---- the loader (loader.c) ----------------------------------------------
 * Each engine's module is loaded on first use, on its own; an association
 * holds its engine's table and calls it directly. */

/* Engine `id`'s table, or NULL when this build or process cannot load it
 * (m2mpsk_backend_error() says why). Thread-safe. */
const m2mpsk_engine_ops *m2mpsk_tls_engine(m2mpsk_engine_id id);
/* The first engine that loads, fastest first (BoringSSL, then OpenSSL), or
 * NULL when none does. Thread-safe. */
const m2mpsk_engine_ops *m2mpsk_tls(void);
/* Which engine a loaded table is; M2MPSK_ENGINE_AUTO for none. */
m2mpsk_engine_id m2mpsk_tls_engine_id(const m2mpsk_engine_ops *ops);

/* Checks a colon-separated IANA suite list: every name must be supported
 * by engine `e`, or for M2MPSK_ENGINE_AUTO by some loaded engine.
 * M2MPSK_OK, M2MPSK_E_INVALID, M2MPSK_E_SUITE or M2MPSK_E_BACKEND. */
int m2mpsk_engine_check_suites(m2mpsk_engine_id e, const char *iana_names);
/* The default list when no profile applies: the RFC 4279 plain-PSK suites
 * of the first engine that loads. */
const char *m2mpsk_engine_default_suites(void);
/* The names of `iana_names` that `ops` supports, in order, into out:
 * M2MPSK_OK, M2MPSK_E_SUITE (none), M2MPSK_E_INVALID or M2MPSK_E_BUFFER. */
int m2mpsk_engine_filter_suites(const m2mpsk_engine_ops *ops,
                                const char *iana_names, char *out, size_t cap);

/* ---- the engine choice (engine_choice.c) --------------------------------
 * The one place that decides which engine runs an association. */

/* For a config that asks for `wanted` and enables `suites` over
 * `transport`: the engine to run an association in `role`, or
 * M2MPSK_ENGINE_AUTO when none can be loaded. */
m2mpsk_engine_id m2mpsk_engine_choose(m2mpsk_engine_id wanted, m2mpsk_role role,
                                      m2mpsk_transport transport,
                                      const char *suites);
/* 1 when a responder of a config that asks for `wanted` over `transport`
 * waits for the peer's ClientHello before choosing its engine: AUTO over
 * TLS, with more than one engine loadable. */
int m2mpsk_engine_waits_for_hello(m2mpsk_engine_id wanted,
                                  m2mpsk_transport transport);
struct m2mpsk_hello;
/* For such a responder: the fastest engine whose suites (the config's,
 * that the engine has) share one with the ClientHello `h`, or
 * M2MPSK_ENGINE_AUTO when none does or h is NULL (not a ClientHello):
 * then the config's own choice applies. */
m2mpsk_engine_id m2mpsk_engine_choose_hello(m2mpsk_config *cfg,
                                            m2mpsk_transport transport,
                                            const struct m2mpsk_hello *h);

#endif /* M2MPSK_TLS_ENGINE_H */
