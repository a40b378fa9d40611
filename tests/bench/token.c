/* m2mpsk-token-bench (issue 20): handshakes per second with Kpsa in a
 * PKCS#11 token against Kpsa in the keystore, both roles, in one run.
 *
 * The token is NSS's softoken (Debian libnss3), the Debian token that can
 * compute the TLS 1.2 master secret inside (CKM_CONCATENATE_DATA_AND_BASE,
 * then CKM_SHA256_HMAC; SoftHSM2 2.6 cannot, docs/pkcs11.md), loaded in
 * this process: the figure is the cost of the token's computation and of
 * the provider path, not of a trip to a separate HSM. Both sides run the
 * OpenSSL engine (the only one that takes token keys) in one thread, over
 * TLS 1.2 with TLS_PSK_WITH_AES_128_CBC_SHA256 (TS-0003's mandated suite),
 * one handshake after the other, each side freed and made anew. The
 * contenders, in an order that rotates with the repetition:
 *   memory     both keys in the keystores
 *   token-b    the responder's key is a token key (the initiator's in memory)
 *   token-a    the initiator's key is a token key
 * Printed: handshakes per second (median, min-max) and the ratio to memory
 * per repetition. Exits 77 when NSS's softoken or the OpenSSL engine is
 * missing, 1 when a handshake fails. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../pkcs11/token_prf/p11tok.h"
#include "m2mpsk/m2mpsk.h"

#define KPSA_ID "bench@token.example.com"
#define IDB "//m2m.example.com/cse-in"
#define SUITE "TLS_PSK_WITH_AES_128_CBC_SHA256"
#define NSS_MODULE "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
#define PIN "bench-pin"

static struct p11tok g_tok;
static CK_OBJECT_HANDLE g_key;
static pthread_mutex_t g_tok_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long g_token_calls;

static int token_master_secret(void *ctx, const char *digest,
                               const uint8_t *prefix, size_t prefix_len,
                               const uint8_t *seed, size_t seed_len,
                               uint8_t *out, size_t out_len) {
  (void)ctx;
  pthread_mutex_lock(&g_tok_mu);
  CK_RV rv = p11tok_psk_prf(&g_tok, g_key, prefix, prefix_len,
                            strcmp(digest, "SHA384") == 0, seed, seed_len, out,
                            out_len);
  g_token_calls++;
  pthread_mutex_unlock(&g_tok_mu);
  return rv == CKR_OK ? 0 : -1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "m2mpsk-token-bench: %s: %s\n", what, m2mpsk_strerror(rc));
  exit(1);
}

/* Moves what `from` has to send into `to`; returns the bytes moved. */
static size_t move(m2mpsk_assoc *from, m2mpsk_assoc *to, uint64_t now) {
  uint8_t buf[17000];
  size_t total = 0, n = 0;
  while (m2mpsk_assoc_drain(from, buf, sizeof(buf), &n) == M2MPSK_OK && n > 0) {
    int rc = m2mpsk_assoc_feed(to, buf, n, now);
    if (rc != M2MPSK_OK && rc != M2MPSK_E_FAILED)
      die("feed", rc);
    total += n;
  }
  return total;
}

typedef struct side {
  m2mpsk_keystore *ks;
  m2mpsk_config *cfg;
} side;

static void side_init(side *s, int responder, int token, const uint8_t *key) {
  int rc;
  if ((rc = m2mpsk_keystore_new(&s->ks, 0)) != M2MPSK_OK)
    die("keystore", rc);
  rc = token ? m2mpsk_keystore_add_token_key(s->ks, KPSA_ID, 32,
                                             token_master_secret, NULL, NULL,
                                             NULL, IDB, 0, 0)
             : m2mpsk_keystore_add(s->ks, KPSA_ID, key, 32, NULL, IDB, 0, 0);
  if (rc != M2MPSK_OK)
    die("record", rc);
  if ((rc = m2mpsk_config_new(&s->cfg)) != M2MPSK_OK ||
      (rc = m2mpsk_config_set_engine(s->cfg, M2MPSK_ENGINE_OPENSSL)) !=
          M2MPSK_OK ||
      (rc = m2mpsk_config_set_suites(s->cfg, SUITE)) != M2MPSK_OK ||
      (responder &&
       (rc = m2mpsk_config_add_local_id(s->cfg, IDB)) != M2MPSK_OK) ||
      (rc = m2mpsk_config_set_max_handshakes(s->cfg, 0)) != M2MPSK_OK)
    die("config", rc);
}

static void side_free(side *s) {
  m2mpsk_config_free(s->cfg);
  m2mpsk_keystore_free(s->ks);
}

static void one_handshake(side *a, side *b, uint64_t *now) {
  m2mpsk_assoc *x = NULL, *y = NULL;
  int rc;
  if ((rc = m2mpsk_assoc_new(&x, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_TLS,
                             a->cfg, a->ks, KPSA_ID)) != M2MPSK_OK ||
      (rc = m2mpsk_assoc_new(&y, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_TLS,
                             b->cfg, b->ks, NULL)) != M2MPSK_OK)
    die("assoc_new", rc);
  if ((rc = m2mpsk_assoc_start(y, *now, 1800000000)) != M2MPSK_OK ||
      (rc = m2mpsk_assoc_start(x, *now, 1800000000)) != M2MPSK_OK)
    die("start", rc);
  for (int i = 0; i < 16; i++)
    if (move(x, y, *now) + move(y, x, *now) == 0)
      break;
  if (m2mpsk_assoc_state(x) != M2MPSK_STATE_ESTABLISHED ||
      m2mpsk_assoc_state(y) != M2MPSK_STATE_ESTABLISHED) {
    fprintf(stderr, "m2mpsk-token-bench: handshake failed: %s / %s\n",
            m2mpsk_assoc_failure_detail(x), m2mpsk_assoc_failure_detail(y));
    exit(1);
  }
  m2mpsk_assoc_free(x);
  m2mpsk_assoc_free(y);
  (*now)++;
}

static double rate(side *a, side *b, double window) {
  uint64_t now = 1000000;
  for (int i = 0; i < 20; i++) /* warm-up */
    one_handshake(a, b, &now);
  unsigned long n = 0;
  double t0 = now_s(), t;
  do {
    one_handshake(a, b, &now);
    n++;
  } while ((t = now_s() - t0) < window);
  return (double)n / t;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

enum { C_MEMORY, C_TOKEN_B, C_TOKEN_A, NC };
static const char *const k_names[NC] = {"memory", "token-b", "token-a"};

int main(int argc, char **argv) {
  int reps = 5;
  double window = 1.0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--smoke") == 0) {
      reps = 1;
      window = 0.05;
    } else if (strcmp(argv[i], "--quick") == 0) {
      reps = 3;
      window = 0.3;
    } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: m2mpsk-token-bench [--smoke | --quick] "
                      "[--reps R]\n");
      return 2;
    }
  }
  if (reps < 1 || reps > 50)
    reps = 5;
  if (access(NSS_MODULE, R_OK) != 0) {
    printf("SKIP: %s not found (Debian libnss3)\n", NSS_MODULE);
    return 77;
  }
  if (!m2mpsk_engine_available(M2MPSK_ENGINE_OPENSSL)) {
    printf("SKIP: the OpenSSL engine is not available: %s\n",
           m2mpsk_backend_error());
    return 77;
  }
  char dir[] = "/tmp/m2mpsk-token-bench-XXXXXX";
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  char params[512];
  snprintf(params, sizeof(params),
           "configdir='sql:%s' certPrefix='' keyPrefix='' "
           "secmod='secmod.db' flags=",
           dir);
  /* NSS's user slot is the second the module lists. */
  CK_RV rv = p11tok_open(&g_tok, NSS_MODULE, params, 1, PIN, 1);
  uint8_t key[32];
  FILE *ur = fopen("/dev/urandom", "rb");
  if (ur == NULL || fread(key, 1, sizeof(key), ur) != sizeof(key)) {
    perror("/dev/urandom");
    return 1;
  }
  fclose(ur);
  size_t klen = 0;
  if (rv != CKR_OK ||
      (rv = p11tok_import(&g_tok, KPSA_ID, key, sizeof(key))) != CKR_OK ||
      (rv = p11tok_find(&g_tok, KPSA_ID, &g_key, &klen)) != CKR_OK) {
    fprintf(stderr, "m2mpsk-token-bench: NSS softoken: %s\n", p11tok_rv(rv));
    return 1;
  }
  side mem_a, mem_b, tok_a, tok_b;
  side_init(&mem_a, 0, 0, key);
  side_init(&mem_b, 1, 0, key);
  side_init(&tok_a, 0, 1, key);
  side_init(&tok_b, 1, 1, key);
  memset(key, 0, sizeof(key));

  printf("m2mpsk-token-bench: m2mpsk %s, engine openssl, %s over TLS 1.2, "
         "token: NSS softoken in process\n",
         m2mpsk_version_string(), SUITE);
  printf("%d repetitions of %.2f s per contender; hs/s = handshakes "
         "(both sides, one thread) per second; ratio = contender / memory "
         "per repetition\n\n",
         reps, window);
  double r[NC][50], ratio[NC][50];
  for (int rep = 0; rep < reps; rep++) {
    for (int k = 0; k < NC; k++) {
      int c = (k + rep) % NC;
      side *a = c == C_TOKEN_A ? &tok_a : &mem_a;
      side *b = c == C_TOKEN_B ? &tok_b : &mem_b;
      r[c][rep] = rate(a, b, window);
    }
    for (int c = 0; c < NC; c++)
      ratio[c][rep] = r[c][rep] / r[C_MEMORY][rep];
  }
  printf("%-9s %10s %10s %10s %8s %8s %8s\n", "who", "hs/s", "min", "max",
         "ratio", "min", "max");
  for (int c = 0; c < NC; c++) {
    qsort(r[c], (size_t)reps, sizeof(double), cmp_double);
    qsort(ratio[c], (size_t)reps, sizeof(double), cmp_double);
    printf("%-9s %10.0f %10.0f %10.0f", k_names[c], r[c][reps / 2], r[c][0],
           r[c][reps - 1]);
    if (c == C_MEMORY)
      printf("\n");
    else
      printf(" %8.3f %8.3f %8.3f\n", ratio[c][reps / 2], ratio[c][0],
             ratio[c][reps - 1]);
  }
  printf("\ntoken master secrets computed: %lu\n", g_token_calls);
  side_free(&mem_a);
  side_free(&mem_b);
  side_free(&tok_a);
  side_free(&tok_b);
  p11tok_close(&g_tok);
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "m2mpsk-token-bench: could not remove %s\n", dir);
  return g_token_calls > 0 ? 0 : 1;
}
