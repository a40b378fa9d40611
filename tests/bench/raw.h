/* The interface between m2mpsk-bench and its raw baselines.
 *
 * raw_tls.c is built twice, as bench-raw-boringssl.so against BoringSSL
 * and as bench-raw-openssl.so against OpenSSL 3. Both export OpenSSL's
 * unversioned names, so they cannot share one executable: the driver
 * (which links only libm2mpsk) dlopens each module with RTLD_LOCAL |
 * RTLD_DEEPBIND, as libm2mpsk loads its own backend, and reaches it through
 * the one function it exports. Nothing here includes <openssl/...>. */
#ifndef M2MPSK_BENCH_RAW_H
#define M2MPSK_BENCH_RAW_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* The record both sides hold: KpsaID, Kpsa, IdA, IdB. */
#define BENCH_KPSA_ID "bench@m2m.example.com"
#define BENCH_ID_A "//m2m.example.com/cse-in/Cbench-ae"
#define BENCH_ID_B "//m2m.example.com/cse-in"
/* The SNI an m2mpsk initiator derives from BENCH_ID_B; raw sends the same. */
#define BENCH_SNI "m2m.example.com"
#define BENCH_DTLS_MTU 1400 /* m2mpsk's default, set on raw as well */

static const uint8_t k_bench_kpsa[32] = {
    0x6d, 0x32, 0x6d, 0x70, 0x73, 0x6b, 0x20, 0x62, 0x65, 0x6e, 0x63,
    0x68, 0x20, 0x6b, 0x65, 0x79, 0x10, 0x21, 0x32, 0x43, 0x54, 0x65,
    0x76, 0x87, 0x98, 0xa9, 0xba, 0xcb, 0xdc, 0xed, 0xfe, 0x0f};

/* CPU seconds of the calling thread. The responder-alone figures sum it
 * around the responder's calls only (see README.md). */
static inline double bench_thread_cpu(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct raw_env raw_env; /* one SSL_CTX per role, for one case */

/* One established connection pair: opaque SSL pointers. */
typedef struct raw_pair {
  void *client;
  void *server;
} raw_pair;

#define BENCH_RAW_ABI 2

typedef struct bench_raw_ops {
  unsigned abi;
  /* "BoringSSL", "OpenSSL 3.0.x ..." */
  const char *(*version)(void);
  /* Contexts for one case: `suite` in OpenSSL's naming. NULL on failure,
   * with a message in err. */
  raw_env *(*env_new)(int dtls, const char *suite, char *err, size_t cap);
  void (*env_free)(raw_env *env);
  /* Creates both sides joined by a transport of `tbuf` bytes per direction
   * and runs the handshake until both are established. 0, or -1 + err. */
  int (*establish)(raw_env *env, size_t tbuf, raw_pair *out, char *err,
                   size_t cap);
  void (*free_server)(raw_pair *p);
  void (*free_client)(raw_pair *p);
  /* n handshakes: create both sides, handshake, free both. When resp_cpu is
   * not NULL, adds the thread CPU seconds spent in the server's calls (in
   * four timed sections per handshake). 0, or -1 + err. */
  int (*batch)(raw_env *env, long n, double *resp_cpu, char *err, size_t cap);
  /* The harness's transport alone, for subtracting it from memory figures. */
  int (*transport_new)(int dtls, size_t tbuf, void **a, void **b);
  void (*transport_free)(void *a, void *b);
  /* Application data over an established pair made with a transport large
   * enough for one record: the client writes `total` bytes in writes of
   * `chunk` from `data`, the server reads each write before the next.
   * 0, or -1 + err. */
  int (*transfer)(raw_pair *p, const uint8_t *data, size_t chunk, size_t total,
                  char *err, size_t cap);
  /* As env_new; with cookies (DTLS, OpenSSL only), the server runs the
   * stateful cookie exchange (SSL_OP_COOKIE_EXCHANGE: a HelloVerifyRequest
   * with an HMAC-SHA-256 cookie over a fixed peer tag, then the second
   * ClientHello), as m2mpsk's OpenSSL DTLS responder does. NULL + err when
   * the library has no cookie exchange (BoringSSL). */
  raw_env *(*env_new_ex)(int dtls, const char *suite, int cookies, char *err,
                         size_t cap);
} bench_raw_ops;

typedef const bench_raw_ops *(*bench_raw_module_fn)(void);

#endif /* M2MPSK_BENCH_RAW_H */
