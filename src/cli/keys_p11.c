/* m2mpsk keys --pkcs11 MODULE:TOKEN: the records kept in a PKCS#11 token
 * (issue 20; src/pkcs11/p11_keys.h). Nothing here prints a key or the
 * PIN, and the PIN never comes from the command line. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../pkcs11/p11_internal.h"
#include "cli.h"

const char cli_keys_p11_usage[] =
    "usage: m2mpsk keys --pkcs11 MODULE:TOKEN SUBCOMMAND [OPTIONS]\n"
    "\n"
    "Manages the records kept in a PKCS#11 token (MODULE: the path of the\n"
    "module, e.g. /usr/lib/softhsm/libsofthsm2.so; TOKEN: the token's\n"
    "label). The user PIN comes from --pin-file FILE (a regular file of\n"
    "mode 0600 or stricter, owned by this user; one line) or the\n"
    "environment variable M2MPSK_PKCS11_PIN, never from the command line.\n"
    "See docs/pkcs11.md.\n"
    "\n"
    "subcommands:\n"
    "  generate --kpsa-id ID --idb IDB [--ida IDA] [--key-bytes N]\n"
    "           [--not-before T] [--not-after T] [--token-only]\n"
    "           generates the Kpsa inside the token (N: 16 to 64, default\n"
    "           32); --token-only: it can never be read out; serve then\n"
    "           has the TLS master secret computed in the token, which\n"
    "           needs CKM_CONCATENATE_DATA_AND_BASE (NSS softoken: yes;\n"
    "           SoftHSM2: no, such records are refused there)\n"
    "  import   --keys-file FILE [--token-only]\n"
    "           every record of an m2mpsk key file into the token\n"
    "  import   --wrapped FILE --unwrap-key LABEL --kpsa-id ID --idb IDB\n"
    "           [--ida IDA] [--not-before T] [--not-after T] [--token-only]\n"
    "           one Kpsa wrapped with CKM_AES_KEY_WRAP_PAD (RFC 5649) under\n"
    "           the token's AES key LABEL, unwrapped inside the token\n"
    "  list     one line per record: KpsaID, kind, IdB, IdA, validity,\n"
    "           state; never key bytes\n"
    "  revoke   --kpsa-id ID  destroys the key, keeps a revoked tombstone\n"
    "  delete   --kpsa-id ID  destroys the key and the record\n"
    "\n"
    "  --pin-file FILE   the user PIN (else $M2MPSK_PKCS11_PIN)\n"
    "  --pkcs11-init-args STRING\n"
    "                    C_Initialize's pReserved (else\n"
    "                    $M2MPSK_PKCS11_INIT_ARGS): NSS softoken needs\n"
    "                    \"configdir='sql:DIR' certPrefix='' keyPrefix=''\n"
    "                    secmod='secmod.db' flags=\"; its token is labelled\n"
    "                    \"NSS Certificate DB\"\n"
    "  -v                say more (never key bytes or the PIN)\n"
    "\n"
    "Exit codes: 0 done; 1 no such record, already there, or the token\n"
    "refused; 2 usage; 3 I/O: the module, token, login, PIN file or key\n"
    "file.\n";

const char *cli_p11_init_args(const char *opt) {
  if (opt != NULL)
    return opt;
  const char *env = getenv("M2MPSK_PKCS11_INIT_ARGS");
  return env != NULL && env[0] != '\0' ? env : NULL;
}

int cli_p11_read_pin(const char *pin_file, uint8_t **pin, size_t *len) {
  enum { PIN_MAX = 256 };
  *pin = NULL;
  *len = 0;
  uint8_t *p = sodium_malloc(PIN_MAX + 1);
  if (p == NULL) {
    cli_log("out of memory");
    return CLI_IO;
  }
  size_t n = 0;
  if (pin_file != NULL) {
    int fd = open(pin_file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
      cli_log("--pin-file %s: %s", pin_file, strerror(errno));
      if (fd >= 0)
        close(fd);
      sodium_free(p);
      return CLI_IO;
    }
    if (!S_ISREG(st.st_mode) || (st.st_mode & 077) || st.st_uid != geteuid()) {
      close(fd);
      cli_log("--pin-file %s must be a regular file of this user that only "
              "its owner may access (chmod 600)",
              pin_file);
      sodium_free(p);
      return CLI_IO;
    }
    ssize_t got;
    while (n < PIN_MAX + 1 && ((got = read(fd, p + n, PIN_MAX + 1 - n)) > 0 ||
                               (got < 0 && errno == EINTR)))
      n += got > 0 ? (size_t)got : 0;
    close(fd);
    if (n > PIN_MAX) {
      cli_log("--pin-file %s: longer than %d bytes", pin_file, PIN_MAX);
      sodium_free(p);
      return CLI_IO;
    }
  } else {
    const char *env = getenv("M2MPSK_PKCS11_PIN");
    if (env == NULL) {
      cli_log("no PIN: give --pin-file FILE or set M2MPSK_PKCS11_PIN");
      sodium_free(p);
      return CLI_USAGE;
    }
    n = strlen(env);
    if (n > PIN_MAX) {
      cli_log("M2MPSK_PKCS11_PIN is longer than %d bytes", PIN_MAX);
      sodium_free(p);
      return CLI_USAGE;
    }
    memcpy(p, env, n);
  }
  if (n > 0 && p[n - 1] == '\n')
    n--;
  if (n > 0 && p[n - 1] == '\r')
    n--;
  if (n == 0 || memchr(p, '\n', n) != NULL) {
    cli_log("the PIN %s must be one non-empty line",
            pin_file ? "file" : "variable");
    sodium_free(p);
    return pin_file ? CLI_IO : CLI_USAGE;
  }
  sodium_memzero(p + n, PIN_MAX + 1 - n);
  *pin = p;
  *len = n;
  return CLI_OK;
}

static int status_exit(int rc) {
  switch (rc) {
  case M2MPSK_OK: return CLI_OK;
  case M2MPSK_E_IO:
  case M2MPSK_E_KEYFILE_PERMS:
  case M2MPSK_E_KEYFILE_SYNTAX:
  case M2MPSK_E_KEYFILE_ENCODING: return CLI_IO;
  case M2MPSK_E_INVALID:
  case M2MPSK_E_KPSA_ID:
  case M2MPSK_E_KPSA_ID_LENGTH:
  case M2MPSK_E_KEY_LENGTH:
  case M2MPSK_E_IDA:
  case M2MPSK_E_IDB:
  case M2MPSK_E_ID_LENGTH:
  case M2MPSK_E_VALIDITY: return CLI_USAGE;
  default: return CLI_FAILED;
  }
}

static int list_one(void *arg, const m2mpsk_p11_record *r, const char *label,
                    const char *malformed) {
  size_t *n = arg;
  (*n)++;
  if (r == NULL) {
    printf("%s malformed reason=\"%s\"\n", label[0] ? label : "-", malformed);
    return 0;
  }
  char nb[32], na[32];
  cli_fmt_time(r->not_before, nb, sizeof(nb));
  cli_fmt_time(r->not_after, na, sizeof(na));
  printf("%s kind=%s idb=%s ida=%s not-before=%s not-after=%s state=%s\n",
         r->kpsa_id, r->token_only ? "token-only" : "readable", r->idb,
         r->ida[0] ? r->ida : "-", nb, na,
         r->revoked   ? "revoked"
         : r->has_key ? "active"
                      : "no-key");
  return 0;
}

typedef struct p11_args {
  const char *spec, *pin_file, *id, *idb, *ida, *nb_s, *na_s, *keys_file,
      *wrapped, *unwrap, *init_args;
  unsigned long key_bytes;
  int token_only;
} p11_args;

/* The wrapped key file: raw bytes, at most 1 KiB. */
static int read_wrapped(const char *path, uint8_t *buf, size_t cap,
                        size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    cli_log("--wrapped %s: %s", path, strerror(errno));
    return CLI_IO;
  }
  size_t n = 0;
  ssize_t got;
  while (n < cap && (got = read(fd, buf + n, cap - n)) > 0)
    n += (size_t)got;
  close(fd);
  if (n == 0 || n == cap || n % 8 != 0) {
    cli_log("--wrapped %s: not an RFC 5649 wrapped key (a multiple of 8 "
            "bytes, 16 to 1016)",
            path);
    return CLI_IO;
  }
  *len = n;
  return CLI_OK;
}

static int run(m2mpsk_p11_token *tok, const char *sub, const p11_args *a) {
  char err[512] = "";
  int rc;
  int64_t nb = 0, na = 0;
  if ((a->nb_s && cli_parse_time(a->nb_s, &nb) != 0) ||
      (a->na_s && cli_parse_time(a->na_s, &na) != 0)) {
    cli_log("--not-before/--not-after: Unix seconds or "
            "YYYY-MM-DDTHH:MM:SSZ");
    return CLI_USAGE;
  }
  if (strcmp(sub, "generate") == 0) {
    rc = m2mpsk_p11_generate(tok, a->id, a->key_bytes, a->ida, a->idb, nb, na,
                             a->token_only, err, sizeof(err));
    if (rc == M2MPSK_OK)
      cli_log("generated %s (%s, %lu bytes) in the token", a->id,
              a->token_only ? "token-only" : "readable",
              a->key_bytes ? a->key_bytes : 32);
  } else if (strcmp(sub, "import") == 0 && a->keys_file != NULL) {
    size_t done = 0;
    rc = m2mpsk_p11_import_file(tok, a->keys_file, a->token_only, &done, err,
                                sizeof(err));
    if (rc == M2MPSK_OK)
      cli_log("imported %zu records from %s", done, a->keys_file);
    else if (done > 0)
      cli_log("%zu records imported before the error", done);
    /* A bad value in the key file is a malformed file (3), not usage. */
    if (rc != M2MPSK_OK && rc != M2MPSK_E_DUPLICATE &&
        status_exit(rc) == CLI_USAGE) {
      cli_log("keys import: %s", err[0] ? err : m2mpsk_strerror(rc));
      return CLI_IO;
    }
  } else if (strcmp(sub, "import") == 0) {
    uint8_t w[1024];
    size_t wl = 0;
    int ex = read_wrapped(a->wrapped, w, sizeof(w), &wl);
    if (ex != CLI_OK)
      return ex;
    rc = m2mpsk_p11_import_wrapped(tok, a->id, w, wl, a->unwrap, a->ida, a->idb,
                                   nb, na, a->token_only, err, sizeof(err));
    if (rc == M2MPSK_OK)
      cli_log("unwrapped %s into the token (%s)", a->id,
              a->token_only ? "token-only" : "readable");
  } else if (strcmp(sub, "list") == 0) {
    size_t n = 0;
    rc = m2mpsk_p11_list(tok, list_one, &n, err, sizeof(err));
    fflush(stdout);
    if (rc == M2MPSK_OK)
      cli_trace("%zu records", n);
  } else if (strcmp(sub, "revoke") == 0) {
    rc = m2mpsk_p11_revoke(tok, a->id, err, sizeof(err));
    if (rc == M2MPSK_OK)
      cli_log("revoked %s", a->id);
  } else {
    rc = m2mpsk_p11_delete(tok, a->id, err, sizeof(err));
    if (rc == M2MPSK_OK)
      cli_log("deleted %s", a->id);
  }
  if (rc != M2MPSK_OK)
    cli_log("keys %s: %s", sub, err[0] ? err : m2mpsk_strerror(rc));
  return status_exit(rc);
}

int cli_keys_pkcs11(int argc, char **argv) {
  static const struct option opts[] = {
      {"pkcs11", required_argument, NULL, 'P'},
      {"pin-file", required_argument, NULL, 'p'},
      {"pin", required_argument, NULL, 'X'},
      {"kpsa-id", required_argument, NULL, 'i'},
      {"idb", required_argument, NULL, 'b'},
      {"ida", required_argument, NULL, 'a'},
      {"key-bytes", required_argument, NULL, 'n'},
      {"not-before", required_argument, NULL, 'B'},
      {"not-after", required_argument, NULL, 'A'},
      {"token-only", no_argument, NULL, 'T'},
      {"keys-file", required_argument, NULL, 'F'},
      {"wrapped", required_argument, NULL, 'W'},
      {"unwrap-key", required_argument, NULL, 'U'},
      {"pkcs11-init-args", required_argument, NULL, 'I'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  static const char *const subs[] = {"generate", "import", "list", "revoke",
                                     "delete"};
  p11_args a = {0};
  const char *sub = NULL;
  int ch;
  /* The subcommand may come before or after --pkcs11. */
  optind = 1;
  while ((ch = getopt_long(argc, argv, "-hv", opts, NULL)) != -1) {
    switch (ch) {
    case 1:
      if (sub != NULL) {
        cli_log("keys: unexpected argument '%s'", optarg);
        return CLI_USAGE;
      }
      sub = optarg;
      break;
    case 'P': a.spec = optarg; break;
    case 'p': a.pin_file = optarg; break;
    case 'X':
      cli_log("--pin is refused: a PIN on the command line is visible to "
              "every user (ps, /proc); use --pin-file FILE (mode 0600) or "
              "M2MPSK_PKCS11_PIN");
      return CLI_USAGE;
    case 'i': a.id = optarg; break;
    case 'b': a.idb = optarg; break;
    case 'a': a.ida = optarg; break;
    case 'B': a.nb_s = optarg; break;
    case 'A': a.na_s = optarg; break;
    case 'T': a.token_only = 1; break;
    case 'F': a.keys_file = optarg; break;
    case 'W': a.wrapped = optarg; break;
    case 'U': a.unwrap = optarg; break;
    case 'I': a.init_args = optarg; break;
    case 'n':
      if (cli_parse_uint(optarg, M2MPSK_KEY_MIN, M2MPSK_KEY_MAX,
                         &a.key_bytes)) {
        cli_log("--key-bytes must be %d to %d", M2MPSK_KEY_MIN, M2MPSK_KEY_MAX);
        return CLI_USAGE;
      }
      break;
    case 'v': cli_verbose = 1; break;
    case 'h': fputs(cli_keys_p11_usage, stdout); return CLI_OK;
    default: fputs(cli_keys_p11_usage, stderr); return CLI_USAGE;
    }
  }
  size_t which = 0;
  while (sub && which < sizeof(subs) / sizeof(subs[0]) &&
         strcmp(sub, subs[which]))
    which++;
  if (sub == NULL || which == sizeof(subs) / sizeof(subs[0])) {
    cli_log("keys --pkcs11: %s subcommand%s%s", sub ? "unknown" : "no",
            sub ? " " : "", sub ? sub : "");
    fputs(cli_keys_p11_usage, stderr);
    return CLI_USAGE;
  }
  if (a.spec == NULL || strchr(a.spec, ':') == NULL) {
    cli_log("--pkcs11 needs MODULE:TOKEN (a module path and a token label)");
    return CLI_USAGE;
  }
  int need_id = which == 0 || which >= 3 || (which == 1 && a.wrapped);
  if (need_id && a.id == NULL) {
    cli_log("keys %s needs --kpsa-id", sub);
    return CLI_USAGE;
  }
  if ((which == 0 || (which == 1 && a.wrapped)) && a.idb == NULL) {
    cli_log("keys %s needs --idb", sub);
    return CLI_USAGE;
  }
  if (which == 1 && (a.keys_file != NULL) == (a.wrapped != NULL)) {
    cli_log("keys import needs either --keys-file FILE or --wrapped FILE "
            "--unwrap-key LABEL");
    return CLI_USAGE;
  }
  if (which == 1 && a.wrapped && a.unwrap == NULL) {
    cli_log("--wrapped needs --unwrap-key LABEL (the token's AES key)");
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
  uint8_t *pin = NULL;
  size_t pin_len = 0;
  int ex = cli_p11_read_pin(a.pin_file, &pin, &pin_len);
  if (ex != CLI_OK)
    return ex;
  m2mpsk_p11_token *tok = NULL;
  char err[512] = "";
  int rc = m2mpsk_p11_open(&tok, a.spec, cli_p11_init_args(a.init_args), pin,
                           pin_len, err, sizeof(err));
  sodium_free(pin);
  if (rc != M2MPSK_OK) {
    cli_log("keys: %s", err[0] ? err : m2mpsk_strerror(rc));
    return rc == M2MPSK_E_INVALID ? CLI_USAGE : CLI_IO;
  }
  ex = run(tok, sub, &a);
  m2mpsk_p11_close(tok);
  return ex;
}
