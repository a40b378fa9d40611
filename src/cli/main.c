/* m2mpsk: keygen, serve (Entity B) and connect (Entity A). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static const char k_usage[] =
    "usage: m2mpsk COMMAND [OPTIONS]\n"
    "\n"
    "oneM2M TS-0003 8.2.2.1 security associations with pre-provisioned\n"
    "symmetric keys (TLS 1.2 / DTLS 1.2 PSK).\n"
    "\n"
    "commands:\n"
    "  keygen   append a record with a fresh random Kpsa to a key file\n"
    "  serve    run Entity B (the (D)TLS server, a CSE)\n"
    "  connect  run Entity A (the (D)TLS client, an AE or a CSE)\n"
    "  version  print the versions of m2mpsk and its TLS library, its\n"
    "           suites, and whether it has the TS-0003 profile's\n"
    "           mandated suites\n"
    "\n"
    "Run 'm2mpsk COMMAND --help' for a command's options.\n"
    "Exit codes: 0 success, 1 association failed, 2 usage, 3 I/O or key "
    "file.\n";

static const char k_keygen_usage[] =
    "usage: m2mpsk keygen --keys FILE --kpsa-id ID --idb IDB [--ida IDA]\n"
    "                     [--bytes N] [--print hex|gnutls]\n"
    "\n"
    "Appends one record with a fresh random Kpsa to FILE, creating it with\n"
    "mode 0600. An existing FILE must be private to its owner and must not\n"
    "hold ID already.\n"
    "\n"
    "  --keys FILE     key file to append to\n"
    "  --kpsa-id ID    KpsaID, e.g. test@onem2m.com\n"
    "  --idb IDB       Entity B's CSE-ID, e.g. //m2m.example.com/cse-in\n"
    "  --ida IDA       Entity A's CSE-ID or AE-ID (omit: B binds 12-<ID>)\n"
    "  --bytes N       key length, 16 to 64 (default 32)\n"
    "  --print hex     also print the key in hex (for openssl -psk)\n"
    "  --print gnutls  also print an 'ID:hexkey' line (gnutls --pskpasswd)\n";

static void to_hex(const uint8_t *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

int cli_keygen(int argc, char **argv) {
  static const struct option opts[] = {
      {"keys", required_argument, NULL, 'k'},
      {"kpsa-id", required_argument, NULL, 'i'},
      {"idb", required_argument, NULL, 'b'},
      {"ida", required_argument, NULL, 'a'},
      {"bytes", required_argument, NULL, 'n'},
      {"print", required_argument, NULL, 'p'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  const char *keys = NULL, *id = NULL, *idb = NULL, *ida = NULL, *print = NULL;
  unsigned long bytes = 32;
  int c;
  while ((c = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
    switch (c) {
    case 'v': break;
    case 'k': keys = optarg; break;
    case 'i': id = optarg; break;
    case 'b': idb = optarg; break;
    case 'a': ida = optarg; break;
    case 'p': print = optarg; break;
    case 'n':
      if (cli_parse_uint(optarg, M2MPSK_KEY_MIN, M2MPSK_KEY_MAX, &bytes)) {
        cli_log("--bytes must be %d to %d", M2MPSK_KEY_MIN, M2MPSK_KEY_MAX);
        return CLI_USAGE;
      }
      break;
    case 'h': fputs(k_keygen_usage, stdout); return CLI_OK;
    default: fputs(k_keygen_usage, stderr); return CLI_USAGE;
    }
  }
  if (optind != argc || keys == NULL || id == NULL || idb == NULL) {
    cli_log("keygen needs --keys, --kpsa-id and --idb");
    fputs(k_keygen_usage, stderr);
    return CLI_USAGE;
  }
  if (print && strcmp(print, "hex") != 0 && strcmp(print, "gnutls") != 0) {
    cli_log("--print takes hex or gnutls");
    return CLI_USAGE;
  }
  int rc;
  if ((rc = m2mpsk_kpsa_id_validate(id)) != M2MPSK_OK ||
      (rc = m2mpsk_idb_validate(idb)) != M2MPSK_OK ||
      (ida && (rc = m2mpsk_ida_validate(ida)) != M2MPSK_OK)) {
    cli_log("%s", m2mpsk_strerror(rc));
    return CLI_USAGE;
  }
  /* An existing file must load (private, well formed) and not hold ID. */
  struct stat st;
  if (stat(keys, &st) == 0) {
    m2mpsk_keystore *ks = cli_load_keys(keys);
    if (ks == NULL)
      return CLI_IO;
    int found = m2mpsk_keystore_lookup(ks, id, NULL, 0, NULL, 0, NULL, NULL,
                                       NULL) == M2MPSK_OK;
    m2mpsk_keystore_free(ks);
    if (found) {
      cli_log("%s already holds KpsaID %s", keys, id);
      return CLI_USAGE;
    }
  }

  uint8_t key[M2MPSK_KEY_MAX];
  char hex[2 * M2MPSK_KEY_MAX + 1];
  char line[2 * M2MPSK_KEY_MAX + 3 * M2MPSK_ID_MAX];
  if (getrandom(key, bytes, 0) != (ssize_t)bytes) {
    cli_log("no randomness: %s", strerror(errno));
    return CLI_IO;
  }
  to_hex(key, bytes, hex);
  int n = snprintf(line, sizeof(line), "kpsa-id=%s kpsa=hex:%s idb=%s%s%s\n",
                   id, hex, idb, ida ? " ida=" : "", ida ? ida : "");
  int fd =
      open(keys, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  int ok = fd >= 0 && n > 0 && (size_t)n < sizeof(line) &&
           cli_write_all(fd, line, (size_t)n) == 0 && fsync(fd) == 0;
  int err = errno;
  if (fd >= 0)
    close(fd);
  explicit_bzero(line, sizeof(line));
  explicit_bzero(key, sizeof(key));
  if (!ok) {
    explicit_bzero(hex, sizeof(hex));
    cli_log("cannot write %s: %s", keys, strerror(err));
    return CLI_IO;
  }
  if (print && strcmp(print, "hex") == 0)
    printf("%s\n", hex);
  else if (print)
    printf("%s:%s\n", id, hex);
  explicit_bzero(hex, sizeof(hex));
  cli_trace("appended a %lu-byte key for %s to %s", bytes, id, keys);
  return CLI_OK;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(k_usage, stderr);
    return CLI_USAGE;
  }
  const char *cmd = argv[1];
  /* Each command parses its own options, with argv[0] = the command. */
  argc--;
  argv++;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0)
      cli_verbose = 1;
  }
  if (strcmp(cmd, "keygen") == 0)
    return cli_keygen(argc, argv);
  if (strcmp(cmd, "serve") == 0)
    return cli_serve(argc, argv);
  if (strcmp(cmd, "connect") == 0)
    return cli_connect(argc, argv);
  if (strcmp(cmd, "version") == 0) {
    printf("m2mpsk %s (%s)\n", m2mpsk_version_string(), m2mpsk_backend_name());
    for (size_t i = 0; m2mpsk_suite_name(i) != NULL; i++)
      printf("suite %s\n", m2mpsk_suite_name(i));
    char missing[128];
    if (m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, missing,
                               sizeof(missing)) == M2MPSK_OK)
      printf("profile ts0003: %s%s\n", missing[0] ? "lacks " : "complete",
             missing);
    return CLI_OK;
  }
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 ||
      strcmp(cmd, "help") == 0) {
    fputs(k_usage, stdout);
    return CLI_OK;
  }
  cli_log("unknown command '%s'", cmd);
  fputs(k_usage, stderr);
  return CLI_USAGE;
}
