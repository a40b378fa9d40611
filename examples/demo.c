/* m2mpsk-demo: Entity A (an AE) and Entity B (its Registrar CSE) set up a
 * oneM2M security association with a pre-provisioned key, over TLS 1.2 and
 * DTLS 1.2, through the public API only. Both sides run in this process;
 * the bytes between them pass through this loop, as they would through a
 * socket. Prints what each side bound the session to. */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "m2mpsk/m2mpsk.h"

#define KPSA_ID "test@onem2m.com" /* TS-0013 TD_M2M_SE_01 */
#define ID_A "//m2m.example.com/cse-in/Cdemo-ae"
#define ID_B "//m2m.example.com/cse-in"

static uint64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Moves every pending datagram or byte from one side to the other. */
static int pump(m2mpsk_assoc *from, m2mpsk_assoc *to) {
  uint8_t buf[17408];
  size_t n;
  int moved = 0;
  while (m2mpsk_assoc_drain(from, buf, sizeof(buf), &n) == M2MPSK_OK) {
    int rc = m2mpsk_assoc_feed(to, buf, n, monotonic_ms());
    if (rc != M2MPSK_OK && rc != M2MPSK_E_FAILED)
      return rc;
    moved = 1;
  }
  return moved;
}

static void report(const char *who, const m2mpsk_assoc *x) {
  if (m2mpsk_assoc_state(x) != M2MPSK_STATE_ESTABLISHED) {
    printf("  %s: FAILED (%s: %s)\n", who,
           m2mpsk_reason_name(m2mpsk_assoc_failure(x)),
           m2mpsk_assoc_failure_detail(x));
    return;
  }
  const char *local = m2mpsk_assoc_local_id(x);
  printf("  %s: %s %s, KpsaID %s, as %s, bound to %s%s\n", who,
         m2mpsk_assoc_version(x), m2mpsk_assoc_suite(x),
         m2mpsk_assoc_kpsa_id(x), local ? local : "(no IdA)",
         m2mpsk_assoc_peer_id(x),
         m2mpsk_assoc_peer_id_is_credential(x) ? " (Credential-ID)" : "");
}

static int run(m2mpsk_transport t, const char *suites, const char *ida) {
  static const uint8_t kpsa[32] = {
      0x6f, 0x6e, 0x65, 0x4d, 0x32, 0x4d, 0x20, 0x4b, 0x70, 0x73, 0x61,
      0x20, 0x64, 0x65, 0x6d, 0x6f, 0x20, 0x6b, 0x65, 0x79, 0x00, 0x01,
      0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b};
  m2mpsk_keystore *ks_a = NULL, *ks_b = NULL;
  m2mpsk_config *cfg_a = NULL, *cfg_b = NULL;
  m2mpsk_assoc *a = NULL, *b = NULL;
  int rc;
  /* Both entities hold the same record: KpsaID, Kpsa, IdA, IdB. */
  if ((rc = m2mpsk_keystore_new(&ks_a, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_new(&ks_b, 0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_add(ks_a, KPSA_ID, kpsa, sizeof(kpsa), ida, ID_B, 0,
                                0)) != M2MPSK_OK ||
      (rc = m2mpsk_keystore_add(ks_b, KPSA_ID, kpsa, sizeof(kpsa), ida, ID_B, 0,
                                0)) != M2MPSK_OK ||
      (rc = m2mpsk_config_new(&cfg_a)) != M2MPSK_OK ||
      (rc = m2mpsk_config_new(&cfg_b)) != M2MPSK_OK ||
      (rc = m2mpsk_config_add_local_id(cfg_b, ID_B)) != M2MPSK_OK ||
      (suites && (rc = m2mpsk_config_set_suites(cfg_a, suites)) != M2MPSK_OK) ||
      (suites && (rc = m2mpsk_config_set_suites(cfg_b, suites)) != M2MPSK_OK) ||
      (rc = m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, cfg_a, ks_a,
                             KPSA_ID)) != M2MPSK_OK ||
      (rc = m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, cfg_b, ks_b,
                             NULL)) != M2MPSK_OK) {
    fprintf(stderr, "setup failed: %s\n", m2mpsk_strerror(rc));
    goto out;
  }
  /* The associations hold their own references. */
  m2mpsk_keystore_free(ks_a);
  m2mpsk_keystore_free(ks_b);
  m2mpsk_config_free(cfg_a);
  m2mpsk_config_free(cfg_b);
  ks_a = ks_b = NULL;
  cfg_a = cfg_b = NULL;

  int64_t now_unix = (int64_t)time(NULL);
  if ((rc = m2mpsk_assoc_start(b, monotonic_ms(), now_unix)) != M2MPSK_OK ||
      (rc = m2mpsk_assoc_start(a, monotonic_ms(), now_unix)) != M2MPSK_OK)
    goto out;
  for (int i = 0; i < 100; i++) {
    int moved = pump(a, b) | pump(b, a);
    if (moved <= 0 && m2mpsk_assoc_state(a) != M2MPSK_STATE_HANDSHAKING &&
        m2mpsk_assoc_state(b) != M2MPSK_STATE_HANDSHAKING)
      break;
  }
  printf("%s, %s:\n", t == M2MPSK_TRANSPORT_TLS ? "TLS 1.2" : "DTLS 1.2",
         suites ? suites : "default suites");
  report("Entity A (initiator)", a);
  report("Entity B (responder)", b);
  rc = M2MPSK_E_FAILED;
  if (m2mpsk_assoc_state(a) != M2MPSK_STATE_ESTABLISHED ||
      m2mpsk_assoc_state(b) != M2MPSK_STATE_ESTABLISHED)
    goto out;

  /* One oneM2M request each way, then close_notify both ways. */
  const char *req = "RETRIEVE /cse-in  X-M2M-Origin: " ID_A;
  uint8_t buf[256];
  size_t n = 0, w;
  if (m2mpsk_assoc_write(a, (const uint8_t *)req, strlen(req), &w) !=
          M2MPSK_OK ||
      pump(a, b) < 0 ||
      m2mpsk_assoc_read(b, buf, sizeof(buf) - 1, &n) != M2MPSK_OK)
    goto out;
  buf[n] = 0;
  printf("  B received %zu bytes from %s: \"%s\"\n", n, m2mpsk_assoc_peer_id(b),
         (char *)buf);
  uint8_t ka[16], kb[16];
  if (m2mpsk_assoc_export(a, ka, sizeof(ka), "EXPORTER-oneM2M-demo", NULL, 0) !=
          M2MPSK_OK ||
      m2mpsk_assoc_export(b, kb, sizeof(kb), "EXPORTER-oneM2M-demo", NULL, 0) !=
          M2MPSK_OK)
    goto out;
  printf("  RFC 5705 exporter agrees on both sides: %s\n",
         memcmp(ka, kb, sizeof(ka)) == 0 ? "yes" : "NO");
  if (m2mpsk_assoc_close(a) != M2MPSK_OK || pump(a, b) < 0 ||
      m2mpsk_assoc_read(b, buf, sizeof(buf), &n) != M2MPSK_E_CLOSED ||
      m2mpsk_assoc_close(b) != M2MPSK_OK || pump(b, a) < 0 ||
      m2mpsk_assoc_read(a, buf, sizeof(buf), &n) != M2MPSK_E_CLOSED)
    goto out;
  printf("  close_notify exchanged both ways\n");
  rc = memcmp(ka, kb, sizeof(ka)) == 0 ? M2MPSK_OK : M2MPSK_E_FAILED;
out:
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(cfg_a);
  m2mpsk_config_free(cfg_b);
  m2mpsk_keystore_free(ks_a);
  m2mpsk_keystore_free(ks_b);
  return rc;
}

int main(void) {
  printf("m2mpsk %s: TS-0003 8.2.2.1 pre-provisioned symmetric key "
         "associations\n\n",
         m2mpsk_version_string());
  int failures = 0;
  failures += run(M2MPSK_TRANSPORT_TLS, NULL, ID_A) != M2MPSK_OK;
  failures += run(M2MPSK_TRANSPORT_DTLS, NULL, ID_A) != M2MPSK_OK;
  /* No IdA configured: B binds the Credential-ID 12-<KpsaID>. */
  failures +=
      run(M2MPSK_TRANSPORT_TLS, "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256",
          NULL) != M2MPSK_OK;
  printf("\n%s\n", failures ? "FAILED" : "all associations established");
  return failures ? 1 : 0;
}
