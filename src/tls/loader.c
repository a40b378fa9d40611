/* Finds the TLS engines and answers the questions about them that do not
 * concern one association.
 *
 * Debian's BoringSSL exports unversioned names that are also OpenSSL's. A
 * library linked to it directly would have its calls bound to OpenSSL's
 * functions in any process that loaded OpenSSL first (Node.js, PHP, Python
 * after `import ssl`, C servers), and crash; and BoringSSL and OpenSSL 3
 * cannot both be linked into one object. So libm2mpsk links neither: each
 * engine is a module, "m2mpsk/tls-boringssl.so" and "m2mpsk/tls-openssl.so"
 * beside the library file, loaded on first use with RTLD_LOCAL (its
 * symbols stay out of the global scope) and RTLD_DEEPBIND (its own names,
 * and its TLS library's, are looked up in its own dependencies before the
 * process's). Each is loaded on its own: one that fails leaves the other
 * usable. An association calls its engine's table directly (assoc.c); what
 * is here spans engines. The static library the unit tests use links one
 * backend directly instead (M2MPSK_STATIC_ENGINE). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "tls/engine.h"

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
    .wants_token_keys = m2mpsk_assoc_wants_token_keys,
    .token_master_secret = m2mpsk_assoc_token_master_secret,
};

/* Indexed by m2mpsk_engine_id; [0] (AUTO) unused. */
static const char *const k_names[M2MPSK_ENGINE_COUNT] = {"auto", "boringssl",
                                                         "openssl"};

typedef struct slot {
  _Atomic(const m2mpsk_engine_ops *) ops;
  atomic_int tried; /* set once the load was attempted, either way */
  char error[300];  /* why it failed; written before tried is set */
} slot;

static slot g_slots[M2MPSK_ENGINE_COUNT];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

/* Whether this build made the engine's module at all (-DM2MPSK_TLS=). */
static int built(m2mpsk_engine_id id) {
#ifdef M2MPSK_STATIC_ENGINE
  return strcmp(M2MPSK_STATIC_ENGINE_NAME, k_names[id]) == 0;
#else
  return id == M2MPSK_ENGINE_BORINGSSL ? M2MPSK_HAVE_BORINGSSL
                                       : M2MPSK_HAVE_OPENSSL;
#endif
}

#ifdef M2MPSK_STATIC_ENGINE
static const m2mpsk_engine_ops *load(m2mpsk_engine_id id, char *err,
                                     size_t cap) {
  (void)id, (void)err, (void)cap; /* built() let only the linked one by */
  return m2mpsk_tls_module(&k_hooks);
}
#else
static const m2mpsk_engine_ops *load(m2mpsk_engine_id id, char *err,
                                     size_t cap) {
  Dl_info info;
  if (dladdr((const void *)&k_hooks, &info) == 0 || info.dli_fname == NULL) {
    snprintf(err, cap, "cannot locate libm2mpsk");
    return NULL;
  }
  const char *slash = strrchr(info.dli_fname, '/');
  int dir = slash ? (int)(slash - info.dli_fname) + 1 : 0;
  char path[4096];
  if (snprintf(path, sizeof(path), "%.*sm2mpsk/tls-%s.so", dir, info.dli_fname,
               k_names[id]) >= (int)sizeof(path)) {
    snprintf(err, cap, "path too long");
    return NULL;
  }
  void *module = dlopen(path, MODULE_DLOPEN_FLAGS);
  if (module == NULL) {
    snprintf(err, cap, "%s", dlerror());
    return NULL;
  }
  m2mpsk_tls_module_fn entry;
  void *sym = dlsym(module, "m2mpsk_tls_module");
  memcpy(&entry, &sym, sizeof(entry)); /* object to function pointer */
  const m2mpsk_engine_ops *ops = sym ? entry(&k_hooks) : NULL;
  if (ops == NULL || ops->abi != M2MPSK_ENGINE_ABI ||
      strcmp(ops->backend_name(), k_names[id]) != 0) {
    snprintf(err, cap, "%.200s is not a %s engine for this build", path,
             k_names[id]);
    dlclose(module);
    return NULL;
  }
  /* Never unloaded: its functions may be running on other threads. */
  return ops;
}
#endif

const m2mpsk_engine_ops *m2mpsk_tls_engine(m2mpsk_engine_id id) {
  if (id <= M2MPSK_ENGINE_AUTO || id >= M2MPSK_ENGINE_COUNT)
    return NULL;
  slot *s = &g_slots[id];
  const m2mpsk_engine_ops *ops = atomic_load(&s->ops);
  if (ops != NULL || atomic_load(&s->tried))
    return ops;
  pthread_mutex_lock(&g_lock);
  if (!atomic_load(&s->tried)) {
    if (built(id)) {
      ops = load(id, s->error, sizeof(s->error));
    } else {
      snprintf(s->error, sizeof(s->error),
               "this build has no %s engine (-DM2MPSK_TLS=)", k_names[id]);
      ops = NULL;
    }
    atomic_store(&s->ops, ops);
    atomic_store(&s->tried, 1);
  }
  ops = atomic_load(&s->ops);
  pthread_mutex_unlock(&g_lock);
  return ops;
}

const m2mpsk_engine_ops *m2mpsk_tls(void) {
  for (int id = 1; id < M2MPSK_ENGINE_COUNT; id++) {
    const m2mpsk_engine_ops *o = m2mpsk_tls_engine((m2mpsk_engine_id)id);
    if (o != NULL)
      return o;
  }
  return NULL;
}

m2mpsk_engine_id m2mpsk_tls_engine_id(const m2mpsk_engine_ops *ops) {
  for (int id = 1; id < M2MPSK_ENGINE_COUNT; id++)
    if (ops != NULL && atomic_load(&g_slots[id].ops) == ops)
      return (m2mpsk_engine_id)id;
  return M2MPSK_ENGINE_AUTO;
}

/* ---- public queries -------------------------------------------------- */

int m2mpsk_engine_available(m2mpsk_engine_id e) {
  if (e == M2MPSK_ENGINE_AUTO)
    return m2mpsk_tls() != NULL;
  return m2mpsk_tls_engine(e) != NULL;
}

const char *m2mpsk_engine_name(m2mpsk_engine_id e) {
  return e >= M2MPSK_ENGINE_AUTO && e < M2MPSK_ENGINE_COUNT ? k_names[e] : NULL;
}

/* The union of the loaded engines' suites, fastest engine first, each name
 * once: entry i of what m2mpsk_suite_name() lists. */
static const char *union_suite(size_t i, size_t *count) {
  size_t n = 0;
  for (int id = 1; id < M2MPSK_ENGINE_COUNT; id++) {
    const m2mpsk_engine_ops *o = m2mpsk_tls_engine((m2mpsk_engine_id)id);
    if (o == NULL)
      continue;
    for (size_t k = 0; k < o->suite_count(); k++) {
      const char *name = o->suite_name(k);
      int seen = 0;
      for (int prev = 1; prev < id && !seen; prev++) {
        const m2mpsk_engine_ops *p = m2mpsk_tls_engine((m2mpsk_engine_id)prev);
        seen = p != NULL && p->check_suites(name) == M2MPSK_OK;
      }
      if (seen)
        continue;
      if (n == i && count == NULL)
        return name;
      n++;
    }
  }
  if (count != NULL)
    *count = n;
  return NULL;
}

size_t m2mpsk_engine_suite_count(m2mpsk_engine_id e) {
  if (e == M2MPSK_ENGINE_AUTO) {
    size_t n = 0;
    union_suite(0, &n);
    return n;
  }
  const m2mpsk_engine_ops *o = m2mpsk_tls_engine(e);
  return o ? o->suite_count() : 0;
}

const char *m2mpsk_engine_suite_name(m2mpsk_engine_id e, size_t i) {
  if (e == M2MPSK_ENGINE_AUTO)
    return union_suite(i, NULL);
  const m2mpsk_engine_ops *o = m2mpsk_tls_engine(e);
  return o ? o->suite_name(i) : NULL;
}

size_t m2mpsk_suite_count(void) {
  return m2mpsk_engine_suite_count(M2MPSK_ENGINE_AUTO);
}

const char *m2mpsk_suite_name(size_t i) {
  return m2mpsk_engine_suite_name(M2MPSK_ENGINE_AUTO, i);
}

const char *m2mpsk_backend_name(void) {
  int b = m2mpsk_tls_engine(M2MPSK_ENGINE_BORINGSSL) != NULL;
  int o = m2mpsk_tls_engine(M2MPSK_ENGINE_OPENSSL) != NULL;
  if (b && o)
    return "boringssl+openssl";
  return b ? "boringssl" : o ? "openssl" : "unavailable";
}

const char *m2mpsk_backend_error(void) {
  /* Every engine this build has is tried first, so that the answer does
   * not depend on which one a caller happened to touch. */
  static char joined[2 * sizeof(g_slots[0].error) + 8];
  int bad[M2MPSK_ENGINE_COUNT] = {0}, any_bad = 0;
  for (int id = 1; id < M2MPSK_ENGINE_COUNT; id++) {
    if (!built((m2mpsk_engine_id)id))
      continue;
    bad[id] = m2mpsk_tls_engine((m2mpsk_engine_id)id) == NULL;
    any_bad |= bad[id];
  }
  if (!any_bad)
    return "";
  /* The errors never change once set, so the joined text is built once
   * under the loader's lock and is then static. */
  pthread_mutex_lock(&g_lock);
  if (joined[0] == '\0') {
    size_t n = 0;
    for (int id = 1; id < M2MPSK_ENGINE_COUNT; id++)
      if (bad[id])
        n += (size_t)snprintf(joined + n, sizeof(joined) - n, "%s%s: %s",
                              n ? "; " : "", k_names[id], g_slots[id].error);
  }
  pthread_mutex_unlock(&g_lock);
  return joined;
}

/* ---- across engines, for config.c and profile.c ------------------------ */

/* Calls fn on each name of a colon-separated list; stops at the first
 * non-zero answer and returns it. -1 for an empty name or list. */
static int each_name(const char *list, int (*fn)(const char *name, void *arg),
                     void *arg) {
  if (list == NULL || *list == '\0')
    return -1;
  const char *p = list;
  for (;;) {
    const char *end = strchr(p, ':');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    char name[128];
    if (n == 0 || n >= sizeof(name))
      return n == 0 ? -1 : 1; /* longer than any suite name */
    memcpy(name, p, n);
    name[n] = '\0';
    int rc = fn(name, arg);
    if (rc != 0)
      return rc;
    if (end == NULL)
      return 0;
    p = end + 1;
  }
}

static int supported_by_any(const char *name, void *arg) {
  m2mpsk_engine_id only = *(const m2mpsk_engine_id *)arg;
  for (int id = 1; id < M2MPSK_ENGINE_COUNT; id++) {
    if (only != M2MPSK_ENGINE_AUTO && id != (int)only)
      continue;
    const m2mpsk_engine_ops *o = m2mpsk_tls_engine((m2mpsk_engine_id)id);
    if (o != NULL && o->check_suites(name) == M2MPSK_OK)
      return 0;
  }
  return 1;
}

int m2mpsk_engine_check_suites(m2mpsk_engine_id e, const char *iana_names) {
  if (e == M2MPSK_ENGINE_AUTO ? m2mpsk_tls() == NULL
                              : m2mpsk_tls_engine(e) == NULL)
    return M2MPSK_E_BACKEND;
  int rc = each_name(iana_names, supported_by_any, &e);
  return rc == 0 ? M2MPSK_OK : rc == 1 ? M2MPSK_E_SUITE : M2MPSK_E_INVALID;
}

const char *m2mpsk_engine_default_suites(void) {
  const m2mpsk_engine_ops *o = m2mpsk_tls();
  return o ? o->default_suites() : NULL;
}

typedef struct filter_arg {
  const m2mpsk_engine_ops *ops;
  char *out;
  size_t cap, n;
} filter_arg;

static int keep_supported(const char *name, void *arg) {
  filter_arg *f = arg;
  if (f->ops->check_suites(name) != M2MPSK_OK)
    return 0;
  size_t len = strlen(name), sep = f->n > 0;
  if (f->n + sep + len + 1 > f->cap)
    return 1;
  if (sep)
    f->out[f->n++] = ':';
  memcpy(f->out + f->n, name, len + 1);
  f->n += len;
  return 0;
}

int m2mpsk_engine_filter_suites(const m2mpsk_engine_ops *ops,
                                const char *iana_names, char *out, size_t cap) {
  filter_arg f = {ops, out, cap, 0};
  if (cap == 0)
    return M2MPSK_E_BUFFER;
  out[0] = '\0';
  int rc = each_name(iana_names, keep_supported, &f);
  if (rc == 1)
    return M2MPSK_E_BUFFER;
  if (rc != 0)
    return M2MPSK_E_INVALID;
  return f.n > 0 ? M2MPSK_OK : M2MPSK_E_SUITE;
}
