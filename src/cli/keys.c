/* m2mpsk keys: the records a cluster shares through etcd (issue 19). Every
 * Kpsa is sealed with the KEK before it leaves this process; nothing here
 * prints a key. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "etcd_internal.h"
#include "etcd_keys.h"

static const char k_keys_usage[] =
    "usage: m2mpsk keys SUBCOMMAND --etcd URL [--kek FILE] [OPTIONS]\n"
    "\n"
    "Manages the records a cluster of m2mpsk nodes shares through etcd\n"
    "(URL: etcd://HOST:PORT[,HOST:PORT...]/PREFIX; records live under\n"
    "/PREFIX/keys/<KpsaID>). Every Kpsa is sealed with the key-encryption\n"
    "key (--kek FILE, mode 0600) before it is written: etcd never holds a\n"
    "plaintext key. --keys URL is a synonym of --etcd URL.\n"
    "\n"
    "subcommands:\n"
    "  put     --kpsa-id ID --idb IDB [--ida IDA] [--not-before T]\n"
    "          [--not-after T] (--key-file F | --generate BYTES --out F)\n"
    "          adds or replaces a record (F: a 0600 file 'hex:...' or\n"
    "          'base64:...'; a generated key is written to F, never printed)\n"
    "  revoke  --kpsa-id ID   marks the record revoked (nodes remove it and\n"
    "          end the associations using it)\n"
    "  delete  --kpsa-id ID   deletes the record (the same on nodes)\n"
    "  list    [--kek FILE]   one line per record: KpsaID, IdB, IdA,\n"
    "          validity, state (with --kek, records that do not open are\n"
    "          'undecryptable'); never key bytes\n"
    "  rotate  --kpsa-id OLD --new-kpsa-id NEW --overlap SECONDS\n"
    "          (--key-file F | --generate BYTES --out F) [--not-after T]\n"
    "          adds NEW (OLD's identities, valid from now) and ends OLD's\n"
    "          validity SECONDS from now, in one etcd transaction\n"
    "  import  --keys-file FILE [--batch N] [--parallel P]\n"
    "          writes every record of a key file to etcd, N per\n"
    "          transaction (default 128, etcd's --max-txn-ops), P\n"
    "          transactions at once (default 4)\n"
    "  kek     --out FILE     creates a new KEK file (0600, not overwritten)\n"
    "  sync    --kek FILE [--fail-closed S] [--for S] [--page N]\n"
    "          [--max-records N]\n"
    "          runs what serve runs with --keys etcd://: loads the snapshot\n"
    "          into a keystore, then follows the watch; prints a 'stats'\n"
    "          line on stdout after the load and after every change, until\n"
    "          SIGTERM or --for S seconds (for tests and measurements)\n"
    "\n"
    "  -v      say more (never key bytes)\n"
    "\n"
    "Exit codes: 0 done; 1 etcd refused or answered unexpectedly, no such\n"
    "record, or a concurrent change; 2 usage; 3 I/O: no etcd endpoint\n"
    "answered, a KEK or key file unreadable, unsafe or malformed.\n"
    "\n"
    "PKCS#11 tokens (issue 20): m2mpsk keys --pkcs11 MODULE:TOKEN\n"
    "generate|import|list|revoke|delete [--pin-file FILE] ... manages the\n"
    "records kept in a token instead; `m2mpsk keys --pkcs11 X --help`\n"
    "lists its options (docs/pkcs11.md).\n";

typedef struct keys_args {
  const char *url, *kek, *id, *new_id, *idb, *ida, *nb_s, *na_s;
  const char *key_file, *out, *keys_file;
  unsigned long generate, overlap, batch, fail_closed, for_s, parallel, page,
      max_records;
  int have_overlap;
} keys_args;

static int status_exit(int rc) {
  switch (rc) {
  case M2MPSK_OK: return CLI_OK;
  case M2MPSK_E_IO: return CLI_IO;
  case M2MPSK_E_INVALID: return CLI_USAGE;
  default: return CLI_FAILED;
  }
}

/* The KEK into locked memory, closed between uses. NULL (logged) on
 * failure. */
static uint8_t *load_kek(const char *path) {
  uint8_t *kek = sodium_malloc(ETCD_KEK_BYTES);
  char err[512];
  if (kek == NULL) {
    cli_log("out of memory");
    return NULL;
  }
  if (etcd_kek_load(path, kek, err, sizeof(err)) != M2MPSK_OK) {
    cli_log("%s", err);
    sodium_free(kek);
    return NULL;
  }
  return kek;
}

/* Reads a key file of one line 'hex:...' or 'base64:...' (16 to 64 bytes)
 * that only its owner may access. 0 or CLI_IO (logged). */
static int read_key_file(const char *path, uint8_t *key, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    cli_log("%s: %s", path, strerror(errno));
    if (fd >= 0)
      close(fd);
    return CLI_IO;
  }
  if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
    close(fd);
    cli_log("%s must be a regular file only its owner may access (chmod "
            "600)",
            path);
    return CLI_IO;
  }
  char buf[256];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  int rc = CLI_IO;
  size_t got = 0, l = n > 0 ? (size_t)n : 0;
  buf[l] = '\0';
  while (l > 0 && (buf[l - 1] == '\n' || buf[l - 1] == '\r'))
    buf[--l] = '\0';
  if (strncmp(buf, "hex:", 4) == 0) {
    if (sodium_hex2bin(key, M2MPSK_KEY_MAX, buf + 4, l - 4, NULL, &got, NULL) !=
            0 ||
        got * 2 != l - 4)
      got = 0;
  } else if (strncmp(buf, "base64:", 7) == 0) {
    const char *end = NULL;
    if (sodium_base642bin(key, M2MPSK_KEY_MAX, buf + 7, l - 7, NULL, &got, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        end != buf + l)
      got = 0;
  }
  if (got >= M2MPSK_KEY_MIN && got <= M2MPSK_KEY_MAX) {
    *len = got;
    rc = CLI_OK;
  } else {
    sodium_memzero(key, M2MPSK_KEY_MAX);
    cli_log("%s: one line 'hex:...' or 'base64:...' of %d to %d bytes "
            "expected",
            path, M2MPSK_KEY_MIN, M2MPSK_KEY_MAX);
  }
  sodium_memzero(buf, sizeof(buf));
  return rc;
}

/* Writes 'hex:<key>' to a new file (0600, O_EXCL). 0 or CLI_IO. */
static int write_key_file(const char *path, const uint8_t *key, size_t len) {
  int fd =
      open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    cli_log("cannot create %s: %s", path, strerror(errno));
    return CLI_IO;
  }
  char line[4 + 2 * M2MPSK_KEY_MAX + 2];
  memcpy(line, "hex:", 4);
  sodium_bin2hex(line + 4, sizeof(line) - 4, key, len);
  size_t n = 4 + 2 * len;
  line[n++] = '\n';
  int ok = cli_write_all(fd, line, n) == 0 && fsync(fd) == 0;
  int err = errno;
  sodium_memzero(line, sizeof(line));
  if (close(fd) != 0)
    ok = 0;
  if (!ok) {
    cli_log("cannot write %s: %s", path, strerror(err));
    unlink(path);
    return CLI_IO;
  }
  return CLI_OK;
}

/* The new Kpsa of put and rotate: from --key-file, or --generate'd and
 * written to --out. */
static int obtain_key(const keys_args *a, uint8_t *key, size_t *len) {
  if ((a->key_file != NULL) == (a->generate != 0)) {
    cli_log("give either --key-file F or --generate BYTES --out F");
    return CLI_USAGE;
  }
  if (a->key_file)
    return read_key_file(a->key_file, key, len);
  if (a->out == NULL) {
    cli_log("--generate needs --out FILE (a generated key is never "
            "printed)");
    return CLI_USAGE;
  }
  *len = a->generate;
  randombytes_buf(key, *len);
  return write_key_file(a->out, key, *len);
}

static void undo_out(const keys_args *a) {
  if (a->generate && a->out)
    unlink(a->out);
}

/* Reads one record: 0 with *found 0 or 1, or a CLI exit code. */
static int get_record(etcd_client *c, const char *id, etcd_kv *kv, int *found) {
  char key[4 * ETCD_KEY_MAX], body[5 * ETCD_KEY_MAX], err[512];
  etcd_key_b64(&c->url, id, key, sizeof(key));
  snprintf(body, sizeof(body), "{\"key\":\"%s\"}", key);
  ej *j = NULL;
  int rc = etcd_call(c, "/v3/kv/range", body, &j, err, sizeof(err));
  if (rc != M2MPSK_OK) {
    cli_log("%s", err);
    return status_exit(rc);
  }
  const ej *kvs = ej_get(j, "kvs");
  *found = ej_size(kvs) > 0;
  if (*found) {
    rc = etcd_kv_parse(&c->url, ej_at(kvs, 0), 1, kv, err, sizeof(err));
    if (rc != M2MPSK_OK || kv->value_len == SIZE_MAX) {
      cli_log("%s: %s", id, rc != M2MPSK_OK ? err : "value is not base64");
      ej_free(j);
      return CLI_FAILED;
    }
  }
  ej_free(j);
  return CLI_OK;
}

/* A request_put object for a txn, into out. */
static int txn_put(const etcd_url *u, const char *id, const uint8_t *v,
                   size_t vlen, char *out, size_t cap) {
  char key[4 * ETCD_KEY_MAX], val[4 * ETCD_VALUE_MAX];
  etcd_key_b64(u, id, key, sizeof(key));
  etcd_b64(v, vlen, val, sizeof(val));
  int n =
      snprintf(out, cap, "{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\"}}",
               key, val);
  return n > 0 && (size_t)n < cap ? n : -1;
}

/* Runs a txn; 0 with *ok the outcome, or an exit code. */
static int run_txn(etcd_client *c, const char *body, int *ok, int64_t *rev) {
  ej *j = NULL;
  char err[512];
  int rc = etcd_call(c, "/v3/kv/txn", body, &j, err, sizeof(err));
  if (rc != M2MPSK_OK) {
    cli_log("%s", err);
    return status_exit(rc);
  }
  *ok = ej_is_true(ej_get(j, "succeeded"));
  etcd_json_int(ej_get(j, "header"), "revision", rev);
  ej_free(j);
  return CLI_OK;
}

static int connect_etcd(etcd_client *c, const char *url) {
  char err[512];
  if (url == NULL) {
    cli_log("keys needs --etcd URL (etcd://HOST:PORT[,...]/PREFIX)");
    return CLI_USAGE;
  }
  if (etcd_client_init(c, url, err, sizeof(err)) != M2MPSK_OK) {
    cli_log("%s", err);
    return CLI_USAGE;
  }
  return CLI_OK;
}

/* ---- put ------------------------------------------------------------------
 */

static int keys_put(etcd_client *c, const keys_args *a) {
  if (a->id == NULL || a->idb == NULL) {
    cli_log("keys put needs --kpsa-id and --idb");
    return CLI_USAGE;
  }
  int rc;
  if ((rc = m2mpsk_kpsa_id_validate(a->id)) != M2MPSK_OK ||
      (rc = m2mpsk_idb_validate(a->idb)) != M2MPSK_OK ||
      (a->ida && (rc = m2mpsk_ida_validate(a->ida)) != M2MPSK_OK)) {
    cli_log("keys put: %s", m2mpsk_strerror(rc));
    return CLI_USAGE;
  }
  etcd_record *r = sodium_malloc(sizeof(*r));
  if (r == NULL)
    return CLI_FAILED;
  memset(r, 0, sizeof(*r));
  snprintf(r->idb, sizeof(r->idb), "%s", a->idb);
  snprintf(r->ida, sizeof(r->ida), "%s", a->ida ? a->ida : "");
  if ((a->nb_s && cli_parse_time(a->nb_s, &r->not_before) != 0) ||
      (a->na_s && cli_parse_time(a->na_s, &r->not_after) != 0) ||
      (r->not_before && r->not_after && r->not_after < r->not_before)) {
    cli_log("--not-before/--not-after: Unix seconds or "
            "YYYY-MM-DDTHH:MM:SSZ, not-after not before not-before");
    sodium_free(r);
    return CLI_USAGE;
  }
  uint8_t *kek = load_kek(a->kek);
  if (kek == NULL) {
    sodium_free(r);
    return CLI_IO;
  }
  int ex = obtain_key(a, r->key, &r->key_len);
  uint8_t value[ETCD_VALUE_MAX];
  size_t vlen = ex == CLI_OK ? etcd_record_encode(r, a->id, kek, value) : 0;
  sodium_free(r);
  sodium_free(kek);
  if (ex != CLI_OK)
    return ex;
  char body[8 * ETCD_VALUE_MAX];
  if (vlen == 0 ||
      txn_put(&c->url, a->id, value, vlen, body, sizeof(body)) < 0) {
    undo_out(a);
    cli_log("the record does not fit");
    return CLI_FAILED;
  }
  /* A txn with only a success branch: the same as /v3/kv/put, one code
   * path for every write. */
  char txn[sizeof(body) + 32];
  snprintf(txn, sizeof(txn), "{\"success\":[%s]}", body);
  int ok = 0;
  int64_t rev = 0;
  ex = run_txn(c, txn, &ok, &rev);
  if (ex != CLI_OK) {
    undo_out(a);
    return ex;
  }
  cli_log("put %s at revision %" PRId64, a->id, rev);
  return CLI_OK;
}

/* ---- revoke, delete -------------------------------------------------------
 */

static int keys_revoke(etcd_client *c, const keys_args *a) {
  if (a->id == NULL) {
    cli_log("keys revoke needs --kpsa-id");
    return CLI_USAGE;
  }
  for (int attempt = 0; attempt < 5; attempt++) {
    etcd_kv *kv = &(etcd_kv){0};
    int found = 0;
    int ex = get_record(c, a->id, kv, &found);
    if (ex != CLI_OK)
      return ex;
    if (!found) {
      cli_log("no record %s in etcd", a->id);
      return CLI_FAILED;
    }
    etcd_record r;
    char err[256];
    if (etcd_record_decode(kv->value, kv->value_len, a->id, NULL, &r, err,
                           sizeof(err)) != M2MPSK_OK) {
      /* Unreadable: still revocable, as a record with no identities is
       * not; delete it instead. */
      cli_log("%s: %s; use keys delete", a->id, err);
      return CLI_FAILED;
    }
    if (r.revoked) {
      cli_log("%s is already revoked", a->id);
      return CLI_OK;
    }
    r.revoked = 1;
    r.key_len = 0;
    uint8_t value[ETCD_VALUE_MAX];
    size_t vlen = etcd_record_encode(&r, a->id, NULL, value);
    char put[8 * ETCD_VALUE_MAX], key[4 * ETCD_KEY_MAX],
        txn[sizeof(put) + sizeof(key) + 256];
    etcd_key_b64(&c->url, a->id, key, sizeof(key));
    txn_put(&c->url, a->id, value, vlen, put, sizeof(put));
    snprintf(txn, sizeof(txn),
             "{\"compare\":[{\"key\":\"%s\",\"target\":\"MOD\","
             "\"result\":\"EQUAL\",\"mod_revision\":%" PRId64
             "}],\"success\":[%s]}",
             key, kv->mod_revision, put);
    int ok = 0;
    int64_t rev = 0;
    if ((ex = run_txn(c, txn, &ok, &rev)) != CLI_OK)
      return ex;
    if (ok) {
      cli_log("revoked %s at revision %" PRId64, a->id, rev);
      return CLI_OK;
    }
  }
  cli_log("%s keeps changing; not revoked", a->id);
  return CLI_FAILED;
}

static int keys_delete(etcd_client *c, const keys_args *a) {
  if (a->id == NULL) {
    cli_log("keys delete needs --kpsa-id");
    return CLI_USAGE;
  }
  char key[4 * ETCD_KEY_MAX], body[5 * ETCD_KEY_MAX], err[512];
  etcd_key_b64(&c->url, a->id, key, sizeof(key));
  snprintf(body, sizeof(body), "{\"key\":\"%s\"}", key);
  ej *j = NULL;
  int rc = etcd_call(c, "/v3/kv/deleterange", body, &j, err, sizeof(err));
  if (rc != M2MPSK_OK) {
    cli_log("%s", err);
    return status_exit(rc);
  }
  int64_t deleted = 0, rev = 0;
  etcd_json_int(j, "deleted", &deleted);
  etcd_json_int(ej_get(j, "header"), "revision", &rev);
  ej_free(j);
  if (deleted == 0) {
    cli_log("no record %s in etcd", a->id);
    return CLI_FAILED;
  }
  cli_log("deleted %s at revision %" PRId64, a->id, rev);
  return CLI_OK;
}

/* ---- list -------------------------------------------------------------------
 */

typedef struct list_ctx {
  const uint8_t *kek;
  size_t n;
} list_ctx;

static int list_kv(void *arg, const etcd_kv *kv) {
  list_ctx *l = arg;
  etcd_record *r = &(etcd_record){0};
  char err[256], nb[32], na[32];
  int rc = kv->value_len == SIZE_MAX
               ? M2MPSK_E_PROTOCOL
               : etcd_record_decode(kv->value, kv->value_len, kv->kpsa_id,
                                    l->kek, r, err, sizeof(err));
  sodium_memzero(r->key, sizeof(r->key));
  l->n++;
  if (rc == M2MPSK_E_PROTOCOL) {
    printf("%s state=malformed\n", kv->kpsa_id);
    cli_trace("%s: %s", kv->kpsa_id,
              kv->value_len == SIZE_MAX ? "value is not base64" : err);
    return M2MPSK_OK;
  }
  cli_fmt_time(r->not_before, nb, sizeof(nb));
  cli_fmt_time(r->not_after, na, sizeof(na));
  printf("%s idb=%s ida=%s not-before=%s not-after=%s state=%s\n", kv->kpsa_id,
         r->idb, r->ida[0] ? r->ida : "-", nb, na,
         rc == M2MPSK_E_FAILED ? "undecryptable"
                               : (r->revoked ? "revoked" : "active"));
  if (rc == M2MPSK_E_FAILED)
    cli_log("%s: %s", kv->kpsa_id, err);
  return M2MPSK_OK;
}

static int keys_list(etcd_client *c, const keys_args *a) {
  list_ctx l = {0};
  uint8_t *kek = NULL;
  if (a->kek && (kek = load_kek(a->kek)) == NULL)
    return CLI_IO;
  l.kek = kek;
  int64_t rev = 0;
  char err[512];
  int rc = etcd_range_all(c, 50000, &rev, list_kv, NULL, &l, err, sizeof(err));
  if (kek)
    sodium_free(kek);
  if (fflush(stdout) != 0)
    return CLI_IO;
  if (rc != M2MPSK_OK) {
    cli_log("%s", err);
    return status_exit(rc);
  }
  cli_trace("%zu records at revision %" PRId64, l.n, rev);
  return CLI_OK;
}

/* ---- rotate
 * -------------------------------------------------------------------- */

static int keys_rotate(etcd_client *c, const keys_args *a) {
  if (a->id == NULL || a->new_id == NULL || !a->have_overlap) {
    cli_log("keys rotate needs --kpsa-id, --new-kpsa-id and --overlap");
    return CLI_USAGE;
  }
  int rc = m2mpsk_kpsa_id_validate(a->new_id);
  if (rc != M2MPSK_OK || strcmp(a->id, a->new_id) == 0) {
    cli_log("--new-kpsa-id %s: %s", a->new_id,
            rc != M2MPSK_OK ? m2mpsk_strerror(rc) : "same as --kpsa-id");
    return CLI_USAGE;
  }
  int64_t na_new = 0;
  if (a->na_s && cli_parse_time(a->na_s, &na_new) != 0) {
    cli_log("--not-after: Unix seconds or YYYY-MM-DDTHH:MM:SSZ");
    return CLI_USAGE;
  }
  uint8_t *kek = load_kek(a->kek);
  if (kek == NULL)
    return CLI_IO;
  etcd_kv *kv = &(etcd_kv){0};
  int found = 0, ex = get_record(c, a->id, kv, &found);
  etcd_record *old = sodium_malloc(sizeof(*old)),
              *neu = sodium_malloc(sizeof(*neu));
  uint8_t v_old[ETCD_VALUE_MAX], v_new[ETCD_VALUE_MAX];
  size_t l_old = 0, l_new = 0;
  char err[256];
  if (old == NULL || neu == NULL) {
    ex = CLI_FAILED;
    goto out;
  }
  if (ex != CLI_OK)
    goto out;
  if (!found) {
    cli_log("no record %s in etcd", a->id);
    ex = CLI_FAILED;
    goto out;
  }
  rc = etcd_record_decode(kv->value, kv->value_len, a->id, kek, old, err,
                          sizeof(err));
  if (rc != M2MPSK_OK || old->revoked) {
    cli_log("%s: %s", a->id, rc != M2MPSK_OK ? err : "revoked");
    ex = CLI_FAILED;
    goto out;
  }
  int64_t now = (int64_t)time(NULL), end = now + (int64_t)a->overlap;
  memset(neu, 0, sizeof(*neu));
  memcpy(neu->idb, old->idb, sizeof(neu->idb));
  memcpy(neu->ida, old->ida, sizeof(neu->ida));
  neu->not_before = now;
  neu->not_after = na_new;
  if (na_new && na_new < now) {
    cli_log("--not-after is in the past");
    ex = CLI_USAGE;
    goto out;
  }
  if ((ex = obtain_key(a, neu->key, &neu->key_len)) != CLI_OK)
    goto out;
  /* OLD stays valid for the overlap, no longer (nor longer than it was). */
  if (old->not_after == 0 || old->not_after > end)
    old->not_after = end;
  if (old->not_before > old->not_after)
    old->not_before = old->not_after;
  l_old = etcd_record_encode(old, a->id, kek, v_old);
  l_new = etcd_record_encode(neu, a->new_id, kek, v_new);
  char p_old[8 * ETCD_VALUE_MAX], p_new[8 * ETCD_VALUE_MAX];
  char k_old[4 * ETCD_KEY_MAX], k_new[4 * ETCD_KEY_MAX];
  char txn[2 * sizeof(p_old) + 2 * sizeof(k_old) + 512];
  etcd_key_b64(&c->url, a->id, k_old, sizeof(k_old));
  etcd_key_b64(&c->url, a->new_id, k_new, sizeof(k_new));
  if (l_old == 0 || l_new == 0 ||
      txn_put(&c->url, a->id, v_old, l_old, p_old, sizeof(p_old)) < 0 ||
      txn_put(&c->url, a->new_id, v_new, l_new, p_new, sizeof(p_new)) < 0) {
    cli_log("the records do not fit");
    undo_out(a);
    ex = CLI_FAILED;
    goto out;
  }
  snprintf(txn, sizeof(txn),
           "{\"compare\":[{\"key\":\"%s\",\"target\":\"MOD\","
           "\"result\":\"EQUAL\",\"mod_revision\":%" PRId64
           "},{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
           "\"create_revision\":0}],\"success\":[%s,%s]}",
           k_old, kv->mod_revision, k_new, p_new, p_old);
  int ok = 0;
  int64_t rev = 0;
  if ((ex = run_txn(c, txn, &ok, &rev)) != CLI_OK) {
    undo_out(a);
    goto out;
  }
  if (!ok) {
    cli_log("%s changed meanwhile, or %s exists already: nothing rotated",
            a->id, a->new_id);
    undo_out(a);
    ex = CLI_FAILED;
    goto out;
  }
  char t[32];
  cli_fmt_time(end, t, sizeof(t));
  cli_log("rotated %s to %s at revision %" PRId64 "; %s valid until %s", a->id,
          a->new_id, rev, a->id, t);
out:
  sodium_memzero(kv, sizeof(*kv));
  if (old)
    sodium_free(old);
  if (neu)
    sodium_free(neu);
  sodium_free(kek);
  return ex;
}

/* ---- import
 * ------------------------------------------------------------------- */

/* One key file line into id and r (cli_parse_key_line(), through `k`,
 * guarded memory). 1 for a record, 0 for a blank or comment line, -1
 * malformed. */
static int parse_line(char *line, cli_key_record *k, char *id, etcd_record *r) {
  memset(r, 0, sizeof(*r));
  int got = cli_parse_key_line(line, k);
  if (got == 1) {
    memcpy(id, k->kpsa_id, sizeof(k->kpsa_id));
    memcpy(r->ida, k->ida, sizeof(r->ida));
    memcpy(r->idb, k->idb, sizeof(r->idb));
    r->not_before = k->not_before;
    r->not_after = k->not_after;
    memcpy(r->key, k->key, k->key_len);
    r->key_len = k->key_len;
  }
  sodium_memzero(k, sizeof(*k));
  return got;
}

/* Import transactions in flight at once, each on its own connection: etcd
 * applies one at a time, but encodes, decodes and answers them in
 * parallel. */
#define IMPORT_PARALLEL_MAX 16

typedef struct txn_slot {
  CURL *h;
  char *body; /* sealed values only: no key in the clear */
  size_t len, n, cap;
  etcd_buf resp;
  int busy;
} txn_slot;

typedef struct txn_pool {
  CURLM *m;
  txn_slot s[IMPORT_PARALLEL_MAX];
  size_t n;
  struct curl_slist *hdr;
  char url[160];
  size_t done, total;
  int ex;
} txn_pool;

static size_t pool_body(char *data, size_t size, size_t n, void *arg) {
  return etcd_buf_append(arg, data, size * n) == 0 ? size * n : 0;
}

static void pool_finish(txn_pool *p, txn_slot *t, CURLcode cc) {
  long code = 0;
  curl_easy_getinfo(t->h, CURLINFO_RESPONSE_CODE, &code);
  curl_multi_remove_handle(p->m, t->h);
  t->busy = 0;
  const char *why = "empty answer";
  ej *j = t->resp.p ? ej_parse(t->resp.p, t->resp.len, &why) : NULL;
  if (cc != CURLE_OK) {
    if (p->ex == CLI_OK)
      cli_log("%s: %s", p->url, curl_easy_strerror(cc));
    p->ex = CLI_IO;
  } else if (code != 200 || !ej_is_object(ej_get(j, "header"))) {
    const char *m = ej_str(ej_get(j, "message"));
    if (m == NULL)
      m = ej_str(ej_get(j, "error"));
    if (p->ex == CLI_OK)
      cli_log("%s: HTTP %ld: %.200s", p->url, code,
              m ? m : (j ? "an unexpected answer" : why));
    p->ex = CLI_FAILED;
  } else {
    p->done += t->n;
    cli_trace("%zu of %zu records written", p->done, p->total);
  }
  ej_free(j);
  t->resp.len = 0;
  t->len = t->n = 0;
}

/* Runs transfers until none is in flight (all) or one slot is free. */
static int pool_waiting(const txn_pool *p, int all) {
  size_t busy = 0;
  for (size_t i = 0; i < p->n; i++)
    busy += (size_t)p->s[i].busy;
  return busy > 0 && (all || busy == p->n);
}

static void pool_run(txn_pool *p, int all) {
  while (pool_waiting(p, all)) {
    int running = 0, left = 0;
    curl_multi_perform(p->m, &running);
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(p->m, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      for (size_t i = 0; i < p->n; i++)
        if (p->s[i].busy && p->s[i].h == msg->easy_handle)
          pool_finish(p, &p->s[i], msg->data.result);
    }
    if (pool_waiting(p, all))
      curl_multi_poll(p->m, NULL, 0, 100, &left);
  }
}

static txn_slot *pool_slot(txn_pool *p) {
  pool_run(p, 0);
  for (size_t i = 0; i < p->n; i++)
    if (!p->s[i].busy)
      return &p->s[i];
  return NULL;
}

static void pool_send(txn_pool *p, txn_slot *t) {
  memcpy(t->body + t->len, "]}", 3);
  curl_easy_reset(t->h);
  curl_easy_setopt(t->h, CURLOPT_URL, p->url);
  curl_easy_setopt(t->h, CURLOPT_HTTPHEADER, p->hdr);
  curl_easy_setopt(t->h, CURLOPT_POSTFIELDS, t->body);
  curl_easy_setopt(t->h, CURLOPT_WRITEFUNCTION, pool_body);
  curl_easy_setopt(t->h, CURLOPT_WRITEDATA, &t->resp);
  curl_easy_setopt(t->h, CURLOPT_TIMEOUT_MS, 60000L);
  curl_easy_setopt(t->h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
  curl_easy_setopt(t->h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(t->h, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(t->h, CURLOPT_NOPROXY, "*");
  t->busy = 1;
  curl_multi_add_handle(p->m, t->h);
}

static void pool_free(txn_pool *p) {
  for (size_t i = 0; i < p->n; i++) {
    if (p->s[i].busy)
      curl_multi_remove_handle(p->m, p->s[i].h);
    if (p->s[i].h)
      curl_easy_cleanup(p->s[i].h);
    free(p->s[i].body);
    etcd_buf_free(&p->s[i].resp);
  }
  if (p->m)
    curl_multi_cleanup(p->m);
  curl_slist_free_all(p->hdr);
}

static int keys_import(etcd_client *c, const keys_args *a) {
  if (a->keys_file == NULL) {
    cli_log("keys import needs --keys-file FILE");
    return CLI_USAGE;
  }
  uint64_t t0 = cli_now_ms();
  /* The library's loader checks the whole file first (permissions,
   * syntax, every value, duplicates), with its line numbers. */
  m2mpsk_keystore *ks = NULL;
  size_t bad = 0;
  int rc = m2mpsk_keystore_new(&ks, 0);
  if (rc == M2MPSK_OK)
    rc = m2mpsk_keystore_load_file(ks, a->keys_file, &bad);
  size_t total = m2mpsk_keystore_count(ks);
  m2mpsk_keystore_free(ks);
  if (rc != M2MPSK_OK) {
    cli_log("%s: %s%s%zu", a->keys_file, m2mpsk_strerror(rc),
            bad ? " at line " : "", bad);
    return CLI_IO;
  }
  uint64_t t_check = cli_now_ms() - t0;
  uint8_t *kek = load_kek(a->kek);
  if (kek == NULL)
    return CLI_IO;
  int fd = open(a->keys_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    cli_log("%s: %s", a->keys_file, strerror(errno));
    sodium_free(kek);
    return CLI_IO;
  }
  size_t batch = a->batch ? a->batch : 128;
  size_t cap = batch * (8 * ETCD_VALUE_MAX) + 64;
  txn_pool pool = {.n = a->parallel ? a->parallel : 4, .total = total};
  pool.m = curl_multi_init();
  pool.hdr = curl_slist_append(NULL, "Content-Type: application/json");
  /* No "Expect: 100-continue" round trip before each body. */
  pool.hdr = curl_slist_append(pool.hdr, "Expect:");
  snprintf(pool.url, sizeof(pool.url), "%s/v3/kv/txn", c->url.base[c->cur]);
  int ok_alloc = pool.m != NULL && pool.hdr != NULL;
  for (size_t i = 0; i < pool.n && ok_alloc; i++) {
    pool.s[i].h = curl_easy_init();
    pool.s[i].body = malloc(cap);
    pool.s[i].cap = cap;
    pool.s[i].resp.max = 1 << 20;
    ok_alloc = pool.s[i].h != NULL && pool.s[i].body != NULL;
  }
  etcd_record *r = sodium_malloc(sizeof(*r));
  cli_key_record *k = sodium_malloc(sizeof(*k));
  /* Lines are read through locked memory, wiped when freed. */
  const size_t rd_cap = 1 << 16;
  char *rd = sodium_malloc(rd_cap + 1);
  size_t rd_len = 0, rd_off = 0;
  int ex = CLI_OK;
  txn_slot *cur = NULL;
  if (!ok_alloc || r == NULL || k == NULL || rd == NULL) {
    cli_log("out of memory");
    ex = CLI_FAILED;
    goto out;
  }
  size_t lineno = 0;
  int eof = 0;
  while (!eof && pool.ex == CLI_OK) {
    int got = 0;
    char id[M2MPSK_KPSA_ID_MAX + 1];
    char *line = rd + rd_off, *nl = memchr(line, '\n', rd_len - rd_off);
    if (nl == NULL && rd_off > 0) {
      /* Keep the incomplete line, then read more after it. */
      memmove(rd, rd + rd_off, rd_len - rd_off);
      rd_len -= rd_off;
      rd_off = 0;
      sodium_memzero(rd + rd_len, rd_cap - rd_len);
      continue;
    }
    if (nl == NULL) {
      ssize_t n = rd_len < rd_cap ? read(fd, rd + rd_len, rd_cap - rd_len) : -2;
      if (n > 0) {
        rd_len += (size_t)n;
        continue;
      }
      if (n < 0) {
        cli_log("%s: %s", a->keys_file,
                n == -2 ? "a line is too long" : strerror(errno));
        ex = CLI_IO;
        break;
      }
      if (rd_len == 0)
        eof = 1;
      else
        nl = rd + rd_len; /* the last line, without its newline */
    }
    if (!eof) {
      *nl = '\0';
      rd_off = (size_t)(nl - rd) + 1;
      if (rd_off > rd_len) /* the last line: all consumed */
        rd_off = rd_len = 0;
      lineno++;
      got = parse_line(line, k, id, r);
      if (got < 0) {
        cli_log("%s:%zu: malformed", a->keys_file, lineno);
        ex = CLI_IO;
        break;
      }
    }
    if (got == 1) {
      uint8_t v[ETCD_VALUE_MAX];
      size_t vlen = etcd_record_encode(r, id, kek, v);
      if (cur == NULL && (cur = pool_slot(&pool)) == NULL)
        break;
      if (cur->len == 0)
        cur->len = (size_t)snprintf(cur->body, cap, "{\"success\":[");
      else
        cur->body[cur->len++] = ',';
      int n = txn_put(&c->url, id, v, vlen, cur->body + cur->len,
                      cap - cur->len - 3);
      if (vlen == 0 || n < 0) {
        cli_log("%s:%zu: the record does not fit", a->keys_file, lineno);
        ex = CLI_FAILED;
        break;
      }
      cur->len += (size_t)n;
      cur->n++;
    }
    if (cur != NULL && cur->n > 0 && (cur->n == batch || eof)) {
      pool_send(&pool, cur);
      cur = NULL;
    }
  }
  pool_run(&pool, 1);
  if (ex == CLI_OK)
    ex = pool.ex;
  if (ex == CLI_OK)
    cli_log("imported %zu records from %s in %" PRIu64 " ms (checking the "
            "file %" PRIu64 " ms)",
            pool.done, a->keys_file, cli_now_ms() - t0, t_check);
  else
    cli_log("%zu of %zu records written before the error", pool.done, total);
out:
  close(fd);
  pool_free(&pool);
  if (r)
    sodium_free(r);
  if (k)
    sodium_free(k);
  if (rd)
    sodium_free(rd);
  sodium_free(kek);
  return ex;
}

/* ---- sync: the component as serve runs it, for tests and measurements - */

static int sync_pipe[2] = {-1, -1};

static void sync_wake(void *arg) {
  (void)arg;
  char b = 'c';
  ssize_t n = write(sync_pipe[1], &b, 1); /* full pipe: already woken */
  (void)n;
}

static void sync_signal(int sig) {
  (void)sig;
  char b = 'q';
  ssize_t n = write(sync_pipe[1], &b, 1);
  (void)n;
}

static void print_stats(const m2mpsk_etcd_sync *s, m2mpsk_keystore *ks) {
  m2mpsk_etcd_stats st;
  m2mpsk_etcd_sync_stats(s, &st);
  printf("stats revision=%" PRIu64 " records=%" PRIu64 " keystore=%zu "
         "puts=%" PRIu64 " removals=%" PRIu64 " resyncs=%" PRIu64
         " failovers=%" PRIu64 " fail_closed=%d snapshot_ms=%" PRIu64 "\n",
         st.revision, st.records, m2mpsk_keystore_count(ks), st.puts,
         st.removals, st.resyncs, st.failovers, st.fail_closed, st.snapshot_ms);
  fflush(stdout);
}

static int keys_sync(const keys_args *a) {
  if (pipe2(sync_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    cli_log("pipe: %s", strerror(errno));
    return CLI_IO;
  }
  signal(SIGTERM, sync_signal);
  signal(SIGINT, sync_signal);
  m2mpsk_keystore *ks = NULL;
  if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK) {
    cli_log("cannot create a keystore");
    return CLI_FAILED;
  }
  m2mpsk_etcd_options o = {.url = a->url,
                           .kek_file = a->kek,
                           .fail_closed_ms = (uint32_t)(a->fail_closed * 1000),
                           .on_change = sync_wake,
                           .page_size = a->page,
                           .max_records = a->max_records};
  m2mpsk_etcd_sync *s = NULL;
  char err[512];
  int rc = m2mpsk_etcd_sync_start(&s, ks, &o, err, sizeof(err));
  if (rc != M2MPSK_OK) {
    cli_log("%s (%s)", err, m2mpsk_strerror(rc));
    m2mpsk_keystore_free(ks);
    return status_exit(rc);
  }
  print_stats(s, ks);
  uint64_t end = a->for_s ? cli_now_ms() + a->for_s * 1000 : 0;
  for (;;) {
    int wait = 1000;
    if (end) {
      uint64_t now = cli_now_ms();
      if (now >= end)
        break;
      if (end - now < 1000)
        wait = (int)(end - now);
    }
    struct pollfd p = {.fd = sync_pipe[0], .events = POLLIN};
    if (poll(&p, 1, wait) <= 0)
      continue;
    char buf[64];
    ssize_t n = read(sync_pipe[0], buf, sizeof(buf));
    if (n > 0 && memchr(buf, 'q', (size_t)n))
      break;
    print_stats(s, ks);
  }
  uint64_t t0 = cli_now_ms();
  m2mpsk_etcd_sync_stop(s);
  cli_trace("keys: sync stopped in %" PRIu64 " ms", cli_now_ms() - t0);
  m2mpsk_keystore_free(ks);
  return CLI_OK;
}

/* ---- kek
 * ------------------------------------------------------------------------ */

static int keys_kek(const keys_args *a) {
  if (a->out == NULL) {
    cli_log("keys kek needs --out FILE");
    return CLI_USAGE;
  }
  uint8_t *kek = sodium_malloc(ETCD_KEK_BYTES);
  if (kek == NULL)
    return CLI_FAILED;
  randombytes_buf(kek, ETCD_KEK_BYTES);
  int ex = write_key_file(a->out, kek, ETCD_KEK_BYTES);
  sodium_free(kek);
  if (ex == CLI_OK)
    cli_log("wrote a new KEK to %s", a->out);
  return ex;
}

int cli_keys(int argc, char **argv) {
  static const struct option opts[] = {
      {"etcd", required_argument, NULL, 'E'},
      {"keys", required_argument, NULL, 'E'},
      {"kek", required_argument, NULL, 'K'},
      {"kpsa-id", required_argument, NULL, 'i'},
      {"new-kpsa-id", required_argument, NULL, 'N'},
      {"idb", required_argument, NULL, 'b'},
      {"ida", required_argument, NULL, 'a'},
      {"not-before", required_argument, NULL, 'B'},
      {"not-after", required_argument, NULL, 'A'},
      {"key-file", required_argument, NULL, 'f'},
      {"generate", required_argument, NULL, 'g'},
      {"out", required_argument, NULL, 'o'},
      {"overlap", required_argument, NULL, 'O'},
      {"keys-file", required_argument, NULL, 'F'},
      {"batch", required_argument, NULL, 'n'},
      {"page", required_argument, NULL, 'G'},
      {"max-records", required_argument, NULL, 'M'},
      {"fail-closed", required_argument, NULL, 'C'},
      {"parallel", required_argument, NULL, 'P'},
      {"for", required_argument, NULL, 'T'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
      strcmp(argv[1], "-h") == 0) {
    fputs(k_keys_usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_USAGE : CLI_OK;
  }
  const char *sub = argv[1];
  static const char *const subs[] = {"put",    "revoke", "delete", "list",
                                     "rotate", "import", "kek",    "sync"};
  size_t which = 0;
  while (which < sizeof(subs) / sizeof(subs[0]) && strcmp(sub, subs[which]))
    which++;
  if (which == sizeof(subs) / sizeof(subs[0])) {
    cli_log("keys: unknown subcommand '%s'", sub);
    fputs(k_keys_usage, stderr);
    return CLI_USAGE;
  }
  keys_args a = {0};
  argc--;
  argv++;
  int ch;
  while ((ch = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
    switch (ch) {
    case 'v': cli_verbose = 1; break;
    case 'E':
      /* `--keys FILE` with import names the key file, as elsewhere. */
      if (which == 5 && !m2mpsk_etcd_is_url(optarg))
        a.keys_file = optarg;
      else
        a.url = optarg;
      break;
    case 'K': a.kek = optarg; break;
    case 'i': a.id = optarg; break;
    case 'N': a.new_id = optarg; break;
    case 'b': a.idb = optarg; break;
    case 'a': a.ida = optarg; break;
    case 'B': a.nb_s = optarg; break;
    case 'A': a.na_s = optarg; break;
    case 'f': a.key_file = optarg; break;
    case 'o': a.out = optarg; break;
    case 'F': a.keys_file = optarg; break;
    case 'g':
      if (cli_parse_uint(optarg, M2MPSK_KEY_MIN, M2MPSK_KEY_MAX, &a.generate)) {
        cli_log("--generate must be %d to %d", M2MPSK_KEY_MIN, M2MPSK_KEY_MAX);
        return CLI_USAGE;
      }
      break;
    case 'O':
      if (cli_parse_uint(optarg, 0, 100UL * 366 * 86400, &a.overlap)) {
        cli_log("--overlap must be seconds, at most 100 years");
        return CLI_USAGE;
      }
      a.have_overlap = 1;
      break;
    case 'n':
      if (cli_parse_uint(optarg, 1, 100000, &a.batch)) {
        cli_log("--batch must be 1 to 100000");
        return CLI_USAGE;
      }
      break;
    case 'M':
      if (cli_parse_uint(optarg, 1, 1UL << 30, &a.max_records)) {
        cli_log("--max-records must be 1 to 2^30");
        return CLI_USAGE;
      }
      break;
    case 'G':
      if (cli_parse_uint(optarg, 1, 1000000, &a.page)) {
        cli_log("--page must be 1 to 1000000");
        return CLI_USAGE;
      }
      break;
    case 'P':
      if (cli_parse_uint(optarg, 1, IMPORT_PARALLEL_MAX, &a.parallel)) {
        cli_log("--parallel must be 1 to %d", IMPORT_PARALLEL_MAX);
        return CLI_USAGE;
      }
      break;
    case 'C':
      if (cli_parse_uint(optarg, 1, 86400, &a.fail_closed)) {
        cli_log("--fail-closed must be 1 to 86400 seconds");
        return CLI_USAGE;
      }
      break;
    case 'T':
      if (cli_parse_uint(optarg, 0, 86400 * 365, &a.for_s)) {
        cli_log("--for must be seconds");
        return CLI_USAGE;
      }
      break;
    case 'h': fputs(k_keys_usage, stdout); return CLI_OK;
    default: fputs(k_keys_usage, stderr); return CLI_USAGE;
    }
  }
  if (optind != argc) {
    cli_log("keys %s: unexpected argument '%s'", sub, argv[optind]);
    return CLI_USAGE;
  }
  if (a.id && m2mpsk_kpsa_id_validate(a.id) != M2MPSK_OK) {
    cli_log("--kpsa-id %s: %s", a.id,
            m2mpsk_strerror(m2mpsk_kpsa_id_validate(a.id)));
    return CLI_USAGE;
  }
  if (sodium_init() < 0) {
    cli_log("cannot initialise libsodium");
    return CLI_FAILED;
  }
  if (which == 6)
    return keys_kek(&a);
  if (which == 7) {
    if (a.url == NULL) {
      cli_log("keys sync needs --etcd URL");
      return CLI_USAGE;
    }
    return keys_sync(&a);
  }
  etcd_client c;
  int ex = connect_etcd(&c, a.url);
  if (ex != CLI_OK)
    return ex;
  switch (which) {
  case 0: ex = keys_put(&c, &a); break;
  case 1: ex = keys_revoke(&c, &a); break;
  case 2: ex = keys_delete(&c, &a); break;
  case 3: ex = keys_list(&c, &a); break;
  case 4: ex = keys_rotate(&c, &a); break;
  default: ex = keys_import(&c, &a); break;
  }
  etcd_client_free(&c);
  return ex;
}
