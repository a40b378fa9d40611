/* --keys for the servers (serve, gateway): a key file, an etcd URL whose
 * records a background thread keeps in step (src/etcd/etcd_keys.h), or a
 * PKCS#11 token that a key source asks (src/pkcs11/p11_keys.h). */
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "../etcd/etcd_keys.h"
#include "cli.h"
#if defined(M2MPSK_PKCS11) && M2MPSK_PKCS11
#define HAVE_PKCS11 1
#include "../pkcs11/p11_keys.h"
#else
#define HAVE_PKCS11 0
#endif

/* M2MPSK_ETCD is 0 when CMake left the component out (no libcurl or
 * json-c): then only this file knows, and says so. */
#if !defined(M2MPSK_ETCD) || M2MPSK_ETCD
#define HAVE_ETCD 1
#else
#define HAVE_ETCD 0
#endif

int cli_keys_is_url(const char *spec) {
#if HAVE_ETCD
  return m2mpsk_etcd_is_url(spec);
#else
  return spec != NULL && strncmp(spec, "etcd://", 7) == 0;
#endif
}

void cli_keys_close(m2mpsk_etcd_sync *sync) {
#if HAVE_ETCD
  m2mpsk_etcd_sync_stop(sync);
#else
  (void)sync;
#endif
}

int cli_keys_is_pkcs11(const char *spec) {
  return spec != NULL && strncmp(spec, "pkcs11:", 7) == 0;
}

void cli_keys_close_p11(struct m2mpsk_p11_source *src) {
#if HAVE_PKCS11
  m2mpsk_p11_source_stop(src);
#else
  (void)src;
#endif
}

/* --keys pkcs11:MODULE:TOKEN: an empty keystore whose key source asks the
 * token for each KpsaID a handshake names. */
static int open_pkcs11(const cli_keys_opts *o, m2mpsk_keystore **ks) {
  if (o->kek != NULL || o->fail_closed_s != 0) {
    cli_log("--kek and --etcd-fail-closed go with --keys etcd://...");
    return CLI_USAGE;
  }
  if (o->p11 == NULL) {
    cli_log("--keys %s: this command does not take PKCS#11 keys (serve "
            "and gateway do)",
            o->spec);
    return CLI_USAGE;
  }
#if !HAVE_PKCS11
  cli_log("--keys %s: this m2mpsk was built without PKCS#11 support (it "
          "needs p11-kit's pkcs11.h: apt-get install libp11-kit-dev)",
          o->spec);
  return CLI_USAGE;
#else
  const char *spec = o->spec + 7;
  if (strchr(spec, ':') == NULL) {
    cli_log("--keys pkcs11:MODULE:TOKEN expected, not '%s'", o->spec);
    return CLI_USAGE;
  }
  if (sodium_init() < 0) {
    cli_log("cannot initialise libsodium");
    return CLI_IO;
  }
  uint8_t *pin = NULL;
  size_t pin_len = 0;
  int ex = cli_p11_read_pin(o->pin_file, &pin, &pin_len);
  if (ex != CLI_OK)
    return ex;
  /* Token-only records become token keys: responders must pick the
   * OpenSSL engine before the ClientKeyExchange names the KpsaID. */
  int rc = m2mpsk_keystore_new(ks, M2MPSK_KEYSTORE_TOKEN_KEYS);
  if (rc != M2MPSK_OK) {
    sodium_free(pin);
    cli_log("cannot create a keystore: %s", m2mpsk_strerror(rc));
    return CLI_IO;
  }
  m2mpsk_p11_source_options po = {.on_change = o->on_change,
                                  .arg = o->arg,
                                  .init_args = cli_p11_init_args(o->init_args)};
  char err[512] = "";
  rc = m2mpsk_p11_source_start(o->p11, *ks, spec, pin, pin_len, &po, err,
                               sizeof(err));
  sodium_free(pin);
  if (rc != M2MPSK_OK) {
    cli_log("keys: %s", err[0] ? err : m2mpsk_strerror(rc));
    m2mpsk_keystore_free(*ks);
    *ks = NULL;
    return rc == M2MPSK_E_INVALID ? CLI_USAGE : CLI_IO;
  }
  cli_log("keys: PKCS#11 token open, keys asked for on demand");
  return CLI_OK;
#endif
}

int cli_keys_open(const cli_keys_opts *o, m2mpsk_keystore **ks,
                  m2mpsk_etcd_sync **sync) {
  *ks = NULL;
  *sync = NULL;
  if (o->p11 != NULL)
    *o->p11 = NULL;
  if (cli_keys_is_pkcs11(o->spec))
    return open_pkcs11(o, ks);
  if (o->pin_file != NULL || o->init_args != NULL) {
    cli_log("--pin-file and --pkcs11-init-args go with --keys "
            "pkcs11:MODULE:TOKEN");
    return CLI_USAGE;
  }
  if (!cli_keys_is_url(o->spec)) {
    if (o->kek != NULL || o->fail_closed_s != 0) {
      cli_log("--kek and --etcd-fail-closed go with --keys etcd://...");
      return CLI_USAGE;
    }
    *ks = cli_load_keys(o->spec);
    return *ks != NULL ? CLI_OK : CLI_IO;
  }
  if (o->kek == NULL) {
    cli_log("--keys %s needs --kek FILE (the key-encryption key)", o->spec);
    return CLI_USAGE;
  }
#if !HAVE_ETCD
  cli_log("--keys %s: this m2mpsk was built without etcd support (it "
          "needs libcurl and json-c)",
          o->spec);
  return CLI_USAGE;
#else
  int rc = m2mpsk_keystore_new(ks, 0);
  if (rc != M2MPSK_OK) {
    cli_log("cannot create a keystore: %s", m2mpsk_strerror(rc));
    return CLI_IO;
  }
  m2mpsk_etcd_options eo = {.url = o->spec,
                            .kek_file = o->kek,
                            .fail_closed_ms = o->fail_closed_s * 1000u,
                            .on_change = o->on_change,
                            .arg = o->arg};
  char err[512] = "";
  rc = m2mpsk_etcd_sync_start(sync, *ks, &eo, err, sizeof(err));
  if (rc != M2MPSK_OK) {
    cli_log("keys: %s: %s", o->spec, err[0] ? err : m2mpsk_strerror(rc));
    m2mpsk_keystore_free(*ks);
    *ks = NULL;
    *sync = NULL;
    /* A build without the component, or a URL it refuses, is a usage
     * error; an etcd that cannot be reached or a bad KEK file is I/O. */
    return rc == M2MPSK_E_UNSUPPORTED || rc == M2MPSK_E_INVALID ? CLI_USAGE
                                                                : CLI_IO;
  }
  /* The component itself logged "keys: N records from etcd at revision R
   * in T ms", the line the cluster tests and operators read. */
  if (m2mpsk_keystore_is_locked(*ks) != 1)
    cli_log("warning: key memory is not locked (RLIMIT_MEMLOCK); keys may "
            "be swapped out");
  return CLI_OK;
#endif
}
