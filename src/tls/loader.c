/* Finds the TLS backend and forwards the engine interface to it.
 *
 * Debian's BoringSSL exports unversioned names that are also OpenSSL's. A
 * library linked to it directly would have its calls bound to OpenSSL's
 * functions in any process that loaded OpenSSL first (Node.js, PHP, Python
 * after `import ssl`, C servers), and crash. So libm2mpsk does not link
 * BoringSSL at all: the backend is a module, "m2mpsk/tls-boringssl.so"
 * (or, in an OpenSSL build, "m2mpsk/tls-openssl.so") beside the library
 * file, loaded with RTLD_LOCAL (its symbols stay out of
 * the global scope) and RTLD_DEEPBIND (its own names, and BoringSSL's, are
 * looked up in its own dependencies before the process's). The static
 * library the unit tests use links the backend directly instead. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "tls/engine.h"

/* The build names the backend's module (-DM2MPSK_TLS=boringssl|openssl). */
#ifdef M2MPSK_TLS_MODULE_NAME
#define MODULE_PATH M2MPSK_TLS_MODULE_NAME
#else
#define MODULE_PATH "m2mpsk/tls-boringssl.so"
#endif

/* The sanitizer runtimes refuse RTLD_DEEPBIND (it would bind the module's
 * malloc and friends past their interceptors), so a sanitizer build loads
 * the backend without it. Only that build differs: it is not isolated from
 * an OpenSSL the host loaded first, and .ci/sanitize leaves out the
 * coexistence tests that prove the isolation. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define M2MPSK_SANITIZED 1 /* gcc */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||     \
    __has_feature(memory_sanitizer)
#define M2MPSK_SANITIZED 1 /* clang defines neither macro above */
#endif
#endif
#ifdef M2MPSK_SANITIZED
#define MODULE_DLOPEN_FLAGS (RTLD_NOW | RTLD_LOCAL)
#else
#define MODULE_DLOPEN_FLAGS (RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND)
#endif

static const m2mpsk_engine_hooks k_hooks = {
    .on_client_psk = m2mpsk_assoc_on_client_psk,
    .on_server_psk = m2mpsk_assoc_on_server_psk,
    .on_server_name = m2mpsk_assoc_on_server_name,
    .peer_tag = m2mpsk_assoc_peer_tag,
};

static _Atomic(const m2mpsk_engine_ops *) g_ops;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_error[300];

#ifdef M2MPSK_STATIC_ENGINE
static const m2mpsk_engine_ops *load(void) {
  return m2mpsk_tls_module(&k_hooks);
}
#else
static const m2mpsk_engine_ops *load(void) {
  Dl_info info;
  if (dladdr((const void *)&k_hooks, &info) == 0 || info.dli_fname == NULL) {
    snprintf(g_error, sizeof(g_error), "cannot locate libm2mpsk");
    return NULL;
  }
  const char *slash = strrchr(info.dli_fname, '/');
  int dir = slash ? (int)(slash - info.dli_fname) + 1 : 0;
  char path[4096];
  if (snprintf(path, sizeof(path), "%.*s%s", dir, info.dli_fname,
               MODULE_PATH) >= (int)sizeof(path)) {
    snprintf(g_error, sizeof(g_error), "path too long");
    return NULL;
  }
  void *module = dlopen(path, MODULE_DLOPEN_FLAGS);
  if (module == NULL) {
    snprintf(g_error, sizeof(g_error), "%s", dlerror());
    return NULL;
  }
  m2mpsk_tls_module_fn entry;
  void *sym = dlsym(module, "m2mpsk_tls_module");
  memcpy(&entry, &sym, sizeof(entry)); /* object to function pointer */
  const m2mpsk_engine_ops *ops = sym ? entry(&k_hooks) : NULL;
  if (ops == NULL || ops->abi != M2MPSK_ENGINE_ABI) {
    snprintf(g_error, sizeof(g_error), "%.200s is not a backend for this build",
             path);
    dlclose(module);
    return NULL;
  }
  /* Never unloaded: its functions may be running on other threads. */
  return ops;
}
#endif

const m2mpsk_engine_ops *m2mpsk_tls(void) {
  const m2mpsk_engine_ops *ops = atomic_load(&g_ops);
  if (ops != NULL)
    return ops;
  pthread_mutex_lock(&g_lock);
  ops = atomic_load(&g_ops);
  if (ops == NULL) {
    ops = load();
    atomic_store(&g_ops, ops);
  }
  pthread_mutex_unlock(&g_lock);
  return ops;
}

/* An engine only exists once the backend is loaded, so past context
 * creation the table is read without checks. */
static const m2mpsk_engine_ops *ops(void) {
  return atomic_load(&g_ops);
}

const char *m2mpsk_backend_name(void) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o ? o->backend_name() : "unavailable";
}

const char *m2mpsk_backend_error(void) {
  return m2mpsk_tls() ? "" : g_error;
}

size_t m2mpsk_suite_count(void) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o ? o->suite_count() : 0;
}

const char *m2mpsk_suite_name(size_t i) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o ? o->suite_name(i) : NULL;
}

int m2mpsk_engine_check_suites(const char *iana_names) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o ? o->check_suites(iana_names) : M2MPSK_E_BACKEND;
}

const char *m2mpsk_engine_default_suites(void) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o ? o->default_suites() : NULL;
}

int m2mpsk_engine_ctx_new(m2mpsk_engine_ctx **out, m2mpsk_role role,
                          m2mpsk_transport transport, const char *iana_names) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o ? o->ctx_new(out, role, transport, iana_names) : M2MPSK_E_BACKEND;
}

void m2mpsk_engine_ctx_free(m2mpsk_engine_ctx *ctx) {
  if (ctx != NULL)
    ops()->ctx_free(ctx);
}

void m2mpsk_engine_set_now(uint64_t now_ms) {
  ops()->set_now(now_ms);
}

int m2mpsk_engine_new(m2mpsk_engine **out, m2mpsk_engine_ctx *ctx,
                      m2mpsk_assoc *owner) {
  return ops()->engine_new(out, ctx, owner);
}

void m2mpsk_engine_free(m2mpsk_engine *e) {
  if (e != NULL)
    ops()->engine_free(e);
}

int m2mpsk_engine_set_mtu(m2mpsk_engine *e, unsigned mtu) {
  return ops()->set_mtu(e, mtu);
}

int m2mpsk_engine_set_server_name(m2mpsk_engine *e, const char *host) {
  return ops()->set_server_name(e, host);
}

int m2mpsk_engine_push(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  return ops()->push(e, data, len);
}

size_t m2mpsk_engine_buffered(const m2mpsk_engine *e) {
  return ops()->buffered(e);
}

int m2mpsk_engine_handshake(m2mpsk_engine *e) {
  return ops()->handshake(e);
}

size_t m2mpsk_engine_pending(const m2mpsk_engine *e) {
  return ops()->pending(e);
}

int m2mpsk_engine_drain(m2mpsk_engine *e, uint8_t *out, size_t cap,
                        size_t *out_len) {
  return ops()->drain(e, out, cap, out_len);
}

int m2mpsk_engine_read(m2mpsk_engine *e, uint8_t *out, size_t cap,
                       size_t *out_len) {
  return ops()->read(e, out, cap, out_len);
}

int m2mpsk_engine_write(m2mpsk_engine *e, const uint8_t *data, size_t len) {
  return ops()->write(e, data, len);
}

int m2mpsk_engine_close(m2mpsk_engine *e) {
  return ops()->close(e);
}

void m2mpsk_engine_abort(m2mpsk_engine *e, uint8_t alert) {
  ops()->abort(e, alert);
}

int m2mpsk_engine_timer(const m2mpsk_engine *e, uint64_t *remaining_ms) {
  return ops()->timer(e, remaining_ms);
}

int m2mpsk_engine_on_timer(m2mpsk_engine *e) {
  return ops()->on_timer(e);
}

const char *m2mpsk_engine_suite(const m2mpsk_engine *e) {
  return ops()->suite(e);
}

const char *m2mpsk_engine_version(const m2mpsk_engine *e) {
  return ops()->version(e);
}

const char *m2mpsk_engine_psk_identity(const m2mpsk_engine *e) {
  return ops()->psk_identity(e);
}

int m2mpsk_engine_export(const m2mpsk_engine *e, uint8_t *out, size_t out_len,
                         const char *label, const uint8_t *context,
                         size_t context_len) {
  return ops()->export_keying(e, out, out_len, label, context, context_len);
}

m2mpsk_reason m2mpsk_engine_failure(m2mpsk_engine *e, char *detail,
                                    size_t detail_cap) {
  return ops()->failure(e, detail, detail_cap);
}

int m2mpsk_engine_has_cookies(void) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o != NULL && o->dtls_listen != NULL;
}

int m2mpsk_engine_dtls_listen(m2mpsk_engine_ctx *ctx, const char *peer_tag,
                              const uint8_t *datagram, size_t len, uint8_t *out,
                              size_t cap, size_t *out_len) {
  if (ops()->dtls_listen == NULL)
    return M2MPSK_E_UNSUPPORTED;
  return ops()->dtls_listen(ctx, peer_tag, datagram, len, out, cap, out_len);
}
