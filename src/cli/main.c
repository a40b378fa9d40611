/* m2mpsk: keygen, import, serve (Entity B) and connect (Entity A). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#if M2MPSK_GATEWAY
#include "gw.h"
#endif

static const char k_usage[] =
    "usage: m2mpsk COMMAND [OPTIONS]\n"
    "       m2mpsk --version | -V | --help | -h\n"
    "\n"
    "oneM2M TS-0003 8.2.2.1 security associations with pre-provisioned\n"
    "symmetric keys (TLS 1.2 / DTLS 1.2 PSK).\n"
    "\n"
    "commands:\n"
    "  keygen   add a record with a fresh random Kpsa to a key file\n"
    "  import   add the records of a GnuTLS psktool file to a key file\n"
    "  serve    run Entity B (the (D)TLS server, a CSE)\n"
    "  connect  run Entity A (the (D)TLS client, an AE or a CSE)\n"
    "  gateway  run a TLS-PSK/DTLS-PSK gateway in front of a CSE: checks\n"
    "           each oneM2M request's originator, forwards HTTP and CoAP\n"
    "           to the CSE's plain ports\n"
    "  keys     manage the records a cluster shares through etcd (put,\n"
    "           revoke, delete, list, rotate, import, kek), or, with\n"
    "           --pkcs11, those kept in a PKCS#11 token\n"
    "  version  print the versions of m2mpsk and its TLS library, its\n"
    "           suites, and whether it has the TS-0003 profile's\n"
    "           mandated suites (also --version, -V)\n"
    "\n"
    "Run 'm2mpsk COMMAND --help' for a command's options.\n"
    "Exit codes: 0 success (association established), 1 association\n"
    "failed, 2 usage, 3 I/O or key file (unreadable, unsafe, malformed,\n"
    "a KpsaID missing from it or already in it).\n";

static const char k_keygen_usage[] =
    "usage: m2mpsk keygen --keys FILE --kpsa-id ID --idb IDB [--ida IDA]\n"
    "                     [--bytes N] [--not-before TIME] [--not-after TIME]\n"
    "                     [--print hex|gnutls] [-v]\n"
    "\n"
    "Adds one record with a fresh random Kpsa to FILE, creating it with\n"
    "mode 0600. An existing FILE must be private to its owner and must not\n"
    "hold ID already. FILE is replaced atomically (a temporary file in its\n"
    "directory, synced, renamed over it) with its mode and owner kept and\n"
    "its lines unchanged; on any error it is left as it was.\n"
    "\n"
    "  --keys FILE       key file to add to\n"
    "  --kpsa-id ID      KpsaID, e.g. test@onem2m.com\n"
    "  --idb IDB         Entity B's CSE-ID, e.g. //m2m.example.com/cse-in\n"
    "  --ida IDA         Entity A's CSE-ID or AE-ID (omit: B binds 12-<ID>)\n"
    "  --bytes N         key length, 16 to 64 (default 32)\n"
    "  --not-before TIME the record is valid from TIME (Unix seconds or\n"
    "                    YYYY-MM-DDTHH:MM:SSZ)\n"
    "  --not-after TIME  the record is valid until TIME\n"
    "  --print hex       also print the key in hex (for openssl -psk)\n"
    "  --print gnutls    also print an 'ID:hexkey' line (gnutls --pskpasswd)\n"
    "  -v                say what was added (never key bytes)\n"
    "\n"
    "Exit codes: 0 added; 2 usage; 3 FILE unreadable, unsafe, malformed,\n"
    "already holding ID, or not writable.\n";

static const char k_import_usage[] =
    "usage: m2mpsk import --psktool PSKFILE --keys FILE --idb IDB\n"
    "                     [--ida IDA] [--kpsa-id ID]\n"
    "                     [--not-before TIME] [--not-after TIME] [-v]\n"
    "\n"
    "Adds the records of PSKFILE, a GnuTLS psktool file ('identity:hexkey'\n"
    "lines, an identity may be '#hex'), to the key file FILE, each with the\n"
    "oneM2M fields given here. Each identity must be a valid KpsaID not in\n"
    "FILE yet, each key 16 to 64 bytes. All records or none: FILE is\n"
    "replaced atomically as by keygen, and left as it was on any error.\n"
    "Errors name PSKFILE's line, never its key bytes.\n"
    "\n"
    "  --psktool PSKFILE  the psktool file to read\n"
    "  --keys FILE        key file to add to (created with mode 0600)\n"
    "  --idb IDB          Entity B's CSE-ID, for every record\n"
    "  --ida IDA          Entity A's CSE-ID or AE-ID, for every record\n"
    "                     (omit: B binds 12-<ID>)\n"
    "  --kpsa-id ID       import only ID's line (repeatable)\n"
    "  --not-before TIME  valid from TIME (Unix seconds or\n"
    "                     YYYY-MM-DDTHH:MM:SSZ), for every record\n"
    "  --not-after TIME   valid until TIME, for every record\n"
    "  -v                 name each record added (never key bytes)\n"
    "\n"
    "Exit codes: 0 imported; 2 usage; 3 PSKFILE or FILE unreadable,\n"
    "malformed or unsafe, a KpsaID already in FILE or not in PSKFILE, or\n"
    "FILE not writable.\n";

static const char k_version_usage[] =
    "usage: m2mpsk version   (or m2mpsk --version, m2mpsk -V)\n"
    "\n"
    "Prints the version of m2mpsk and its TLS engines, one 'suite' line\n"
    "for each cipher suite any engine supports, whether they have the\n"
    "TS-0003 profile's mandated suites, then for each engine (boringssl,\n"
    "openssl) an 'engine NAME: N suites' line (or 'unavailable') and one\n"
    "'engine NAME suite SUITE' line per suite it supports.\n";

static void to_hex(const uint8_t *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static int hex_value(int ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* Decodes n hex digits into out (cap bytes); the byte count, or -1. */
static long from_hex(const char *in, size_t n, uint8_t *out, size_t cap) {
  if (n % 2 != 0 || n / 2 > cap)
    return -1;
  for (size_t i = 0; i < n; i += 2) {
    int hi = hex_value((unsigned char)in[i]),
        lo = hex_value((unsigned char)in[i + 1]);
    if (hi < 0 || lo < 0)
      return -1;
    out[i / 2] = (uint8_t)(hi << 4 | lo);
  }
  return (long)(n / 2);
}

/* The fields every new record gets from the options. */
typedef struct record_opts {
  const char *idb, *ida;
  const char *not_before, *not_after; /* as given, NULL: unbounded */
  int64_t nb, na;
} record_opts;

/* Checks the shared fields; prints the error. 0 or CLI_USAGE. */
static int check_record_opts(record_opts *o) {
  int rc;
  if ((rc = m2mpsk_idb_validate(o->idb)) != M2MPSK_OK) {
    cli_log("--idb %s: %s", o->idb, m2mpsk_strerror(rc));
    return CLI_USAGE;
  }
  if (o->ida && (rc = m2mpsk_ida_validate(o->ida)) != M2MPSK_OK) {
    cli_log("--ida %s: %s", o->ida, m2mpsk_strerror(rc));
    return CLI_USAGE;
  }
  if (o->not_before && cli_parse_time(o->not_before, &o->nb) != 0) {
    cli_log("--not-before %s: not Unix seconds or YYYY-MM-DDTHH:MM:SSZ",
            o->not_before);
    return CLI_USAGE;
  }
  if (o->not_after && cli_parse_time(o->not_after, &o->na) != 0) {
    cli_log("--not-after %s: not Unix seconds or YYYY-MM-DDTHH:MM:SSZ",
            o->not_after);
    return CLI_USAGE;
  }
  if (o->not_before && o->not_after && o->na < o->nb) {
    cli_log("--not-after is before --not-before");
    return CLI_USAGE;
  }
  return CLI_OK;
}

/* Adds one record to `ks` (which holds the key file's records: this finds
 * duplicates and checks every value as a load would) and writes its line
 * to `fd`. `where` names the record's origin for errors. The key is only
 * ever on the stack, and wiped. Returns CLI_OK or CLI_IO. */
static int put_record(m2mpsk_keystore *ks, int fd, const char *where,
                      const char *id, const uint8_t *key, size_t key_len,
                      const record_opts *o) {
  int rc =
      m2mpsk_keystore_add(ks, id, key, key_len, o->ida, o->idb, o->nb, o->na);
  if (rc == M2MPSK_E_DUPLICATE) {
    cli_log("%s: the key file already holds KpsaID %s", where, id);
    return CLI_IO;
  }
  if (rc != M2MPSK_OK) {
    cli_log("%s: KpsaID %s: %s", where, id, m2mpsk_strerror(rc));
    return CLI_IO;
  }
  char hex[2 * M2MPSK_KEY_MAX + 1];
  char line[2 * M2MPSK_KEY_MAX + 3 * M2MPSK_ID_MAX + 128];
  to_hex(key, key_len, hex);
  int n = snprintf(
      line, sizeof(line), "kpsa-id=%s kpsa=hex:%s idb=%s%s%s%s%s%s%s\n", id,
      hex, o->idb, o->ida ? " ida=" : "", o->ida ? o->ida : "",
      o->not_before ? " not-before=" : "", o->not_before ? o->not_before : "",
      o->not_after ? " not-after=" : "", o->not_after ? o->not_after : "");
  int ok = n > 0 && (size_t)n < sizeof(line) &&
           cli_write_all(fd, line, (size_t)n) == 0;
  int err = errno;
  explicit_bzero(hex, sizeof(hex));
  explicit_bzero(line, sizeof(line));
  if (!ok) {
    cli_log("cannot write the new key file: %s", strerror(err));
    return CLI_IO;
  }
  return CLI_OK;
}

/* Copies the original key file into the temporary one in the kernel
 * (copy_file_range), so that its keys never pass through this process's
 * heap; a stack buffer, wiped, where the kernel cannot. 0 or -1. */
static int copy_keys(int from, int to, off_t size) {
  off_t done = 0;
  while (done < size) {
    ssize_t n = copy_file_range(from, NULL, to, NULL, (size_t)(size - done), 0);
    if (n > 0) {
      done += n;
      continue;
    }
    if (n == 0 || (errno != EXDEV && errno != ENOSYS && errno != EINVAL &&
                   errno != EOPNOTSUPP))
      return -1;
    char buf[4096];
    int ok = 1;
    while (ok && done < size) {
      ssize_t r = pread(from, buf, sizeof(buf), done);
      ok = r > 0 && cli_write_all(to, buf, (size_t)r) == 0;
      done += ok ? r : 0;
    }
    explicit_bzero(buf, sizeof(buf));
    return ok ? 0 : -1;
  }
  return 0;
}

typedef int (*records_fn)(void *ctx, m2mpsk_keystore *ks, int fd);

/* Writes the key file at `path` anew: its existing bytes, a newline if its
 * last line lacks one, then the records `fn` adds and writes. Atomic: a
 * temporary file in the same directory, synced, checked by loading it,
 * renamed over the original (same mode and owner), the directory synced.
 * An exclusive flock on the original serialises writers; one that finds
 * the file replaced meanwhile starts again. On any error the original is
 * untouched and the temporary file removed. CLI_OK, CLI_IO, or fn's code. */
static int update_key_file(const char *path, records_fn fn, void *ctx) {
  char dir_buf[4096], base_buf[4096];
  if (strlen(path) >= sizeof(dir_buf)) {
    cli_log("%s: path too long", path);
    return CLI_IO;
  }
  strcpy(dir_buf, path);
  strcpy(base_buf, path);
  const char *dir = dirname(dir_buf), *base = basename(base_buf);
  for (int attempt = 0; attempt < 20; attempt++) {
    struct stat st = {0}, now;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ELOOP) {
      cli_log("%s is a symbolic link: give the file it points to", path);
      return CLI_IO;
    }
    if (fd < 0 && errno != ENOENT) {
      cli_log("cannot open %s: %s", path, strerror(errno));
      return CLI_IO;
    }
    if (fd >= 0) {
      if (flock(fd, LOCK_EX) != 0 || fstat(fd, &st) != 0) {
        cli_log("cannot lock %s: %s", path, strerror(errno));
        close(fd);
        return CLI_IO;
      }
      if (lstat(path, &now) != 0 || now.st_ino != st.st_ino ||
          now.st_dev != st.st_dev) {
        close(fd); /* replaced while we waited: the new one */
        continue;
      }
      if (!S_ISREG(st.st_mode)) {
        cli_log("%s is not a regular file", path);
        close(fd);
        return CLI_IO;
      }
    }
    m2mpsk_keystore *ks = NULL;
    if (fd >= 0) {
      ks = cli_load_keys(path);
    } else {
      int rc = m2mpsk_keystore_new(&ks, 0);
      if (rc != M2MPSK_OK) {
        cli_log("cannot create a keystore: %s", m2mpsk_strerror(rc));
        ks = NULL;
      }
    }
    if (ks == NULL) {
      if (fd >= 0)
        close(fd);
      return CLI_IO;
    }

    char tmp[8192];
    snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", dir, base);
    int out = mkostemp(tmp, O_CLOEXEC);
    if (out < 0) {
      cli_log("cannot create a temporary file in %s: %s", dir, strerror(errno));
      m2mpsk_keystore_free(ks);
      if (fd >= 0)
        close(fd);
      return CLI_IO;
    }
    int result = CLI_IO;
    const char *step = "write";
    if (fd >= 0) {
      char last = '\n';
      step = "keep the owner of";
      if ((st.st_uid != geteuid() || st.st_gid != getegid()) &&
          fchown(out, st.st_uid, st.st_gid) != 0)
        goto fail;
      step = "keep the mode of";
      if (fchmod(out, st.st_mode & 07777) != 0)
        goto fail;
      step = "copy";
      if (copy_keys(fd, out, st.st_size) != 0 ||
          (st.st_size > 0 && pread(fd, &last, 1, st.st_size - 1) != 1) ||
          (last != '\n' && cli_write_all(out, "\n", 1) != 0))
        goto fail;
      explicit_bzero(&last, sizeof(last));
    } else {
      step = "set the mode of";
      if (fchmod(out, 0600) != 0)
        goto fail;
    }
    if ((result = fn(ctx, ks, out)) != CLI_OK) {
      cli_log("%s is unchanged", path);
      goto fail_quiet;
    }
    result = CLI_IO;
    step = "sync";
    if (fsync(out) != 0)
      goto fail;
    step = "close";
    if (close(out) != 0) {
      out = -1;
      goto fail;
    }
    out = -1;
    /* What is about to replace the key file must load. */
    m2mpsk_keystore_free(ks);
    ks = NULL;
    int rc = m2mpsk_keystore_new(&ks, 0);
    size_t bad_line = 0;
    if (rc == M2MPSK_OK)
      rc = m2mpsk_keystore_load_file(ks, tmp, &bad_line);
    if (rc != M2MPSK_OK) {
      cli_log("the new key file would not load (line %zu: %s); %s is "
              "unchanged",
              bad_line, m2mpsk_strerror(rc), path);
      goto fail_quiet;
    }
    if (fd >= 0) {
      step = "replace";
      if (rename(tmp, path) != 0)
        goto fail;
    } else {
      /* link() fails if another writer created the file meanwhile. */
      if (link(tmp, path) != 0) {
        if (errno == EEXIST) {
          unlink(tmp);
          m2mpsk_keystore_free(ks);
          continue;
        }
        step = "create";
        goto fail;
      }
      unlink(tmp);
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0)
      cli_log("warning: cannot sync directory %s: %s", dir, strerror(errno));
    if (dfd >= 0)
      close(dfd);
    m2mpsk_keystore_free(ks);
    if (fd >= 0)
      close(fd);
    return CLI_OK;
  fail:
    cli_log("cannot %s %s: %s; %s is unchanged", step,
            fd >= 0 && strcmp(step, "replace") != 0 ? "the new key file" : path,
            strerror(errno), path);
  fail_quiet:
    if (out >= 0)
      close(out);
    unlink(tmp);
    m2mpsk_keystore_free(ks);
    if (fd >= 0)
      close(fd);
    return result;
  }
  cli_log("%s keeps being replaced by another writer", path);
  return CLI_IO;
}

/* ---- keygen ------------------------------------------------------------ */

typedef struct keygen_ctx {
  const char *keys, *id;
  size_t bytes;
  record_opts o;
  uint8_t key[M2MPSK_KEY_MAX];
} keygen_ctx;

static int keygen_records(void *ctx, m2mpsk_keystore *ks, int fd) {
  keygen_ctx *k = ctx;
  return put_record(ks, fd, k->keys, k->id, k->key, k->bytes, &k->o);
}

int cli_keygen(int argc, char **argv) {
  static const struct option opts[] = {
      {"keys", required_argument, NULL, 'k'},
      {"kpsa-id", required_argument, NULL, 'i'},
      {"idb", required_argument, NULL, 'b'},
      {"ida", required_argument, NULL, 'a'},
      {"bytes", required_argument, NULL, 'n'},
      {"not-before", required_argument, NULL, 'B'},
      {"not-after", required_argument, NULL, 'A'},
      {"print", required_argument, NULL, 'p'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  keygen_ctx k = {.bytes = 32};
  const char *print = NULL;
  unsigned long bytes = 32;
  int c;
  while ((c = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
    switch (c) {
    case 'v': cli_verbose = 1; break;
    case 'k': k.keys = optarg; break;
    case 'i': k.id = optarg; break;
    case 'b': k.o.idb = optarg; break;
    case 'a': k.o.ida = optarg; break;
    case 'B': k.o.not_before = optarg; break;
    case 'A': k.o.not_after = optarg; break;
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
  if (optind != argc || k.keys == NULL || k.id == NULL || k.o.idb == NULL) {
    cli_log("keygen needs --keys, --kpsa-id and --idb");
    fputs(k_keygen_usage, stderr);
    return CLI_USAGE;
  }
  if (print && strcmp(print, "hex") != 0 && strcmp(print, "gnutls") != 0) {
    cli_log("--print takes hex or gnutls");
    return CLI_USAGE;
  }
  int rc = m2mpsk_kpsa_id_validate(k.id);
  if (rc != M2MPSK_OK) {
    cli_log("--kpsa-id %s: %s", k.id, m2mpsk_strerror(rc));
    return CLI_USAGE;
  }
  if ((rc = check_record_opts(&k.o)) != CLI_OK)
    return rc;
  k.bytes = bytes;
  if (getrandom(k.key, k.bytes, 0) != (ssize_t)k.bytes) {
    cli_log("no randomness: %s", strerror(errno));
    return CLI_IO;
  }
  rc = update_key_file(k.keys, keygen_records, &k);
  if (rc == CLI_OK && print) {
    char hex[2 * M2MPSK_KEY_MAX + 1];
    to_hex(k.key, k.bytes, hex);
    if (strcmp(print, "hex") == 0)
      printf("%s\n", hex);
    else
      printf("%s:%s\n", k.id, hex);
    fflush(stdout);
    explicit_bzero(hex, sizeof(hex));
  }
  explicit_bzero(k.key, sizeof(k.key));
  if (rc == CLI_OK)
    cli_trace("added a %zu-byte key for %s to %s", k.bytes, k.id, k.keys);
  return rc;
}

/* ---- import ---------------------------------------------------------------
 */

#define PSK_LINE_MAX 4096

typedef struct import_ctx {
  const char *psk_path, *keys;
  int psk_fd;
  const char **only; /* --kpsa-id, NULL-terminated; NULL: all */
  size_t n_only;
  size_t imported;
  record_opts o;
} import_ctx;

/* Reads the psktool file a line at a time through a stack buffer, so that
 * its keys never reach the heap. */
typedef struct line_reader {
  int fd;
  char buf[2 * PSK_LINE_MAX];
  size_t len;
  int eof;
} line_reader;

/* The next line, without its LF (and CR), NUL-terminated in `out`:
 * 1, 0 at the end, -1 on a read error, -2 for a line that is too long. */
static int next_line(line_reader *r, char *out, size_t cap) {
  for (;;) {
    char *nl = memchr(r->buf, '\n', r->len);
    if (nl != NULL || (r->eof && r->len > 0)) {
      size_t n = nl ? (size_t)(nl - r->buf) : r->len;
      size_t used = nl ? n + 1 : n;
      if (n > 0 && r->buf[n - 1] == '\r')
        n--;
      int rc = n < cap ? 1 : -2;
      if (rc == 1) {
        memcpy(out, r->buf, n);
        out[n] = '\0';
      }
      memmove(r->buf, r->buf + used, r->len - used);
      explicit_bzero(r->buf + r->len - used, used);
      r->len -= used;
      return rc;
    }
    if (r->eof)
      return 0;
    if (r->len == sizeof(r->buf))
      return -2;
    ssize_t got = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      return -1;
    if (got == 0)
      r->eof = 1;
    r->len += (size_t)got;
  }
}

static int import_records(void *ctx, m2mpsk_keystore *ks, int fd) {
  import_ctx *im = ctx;
  line_reader r = {.fd = im->psk_fd};
  char line[PSK_LINE_MAX + 1], where[4200], name[M2MPSK_KPSA_ID_MAX + 2];
  uint8_t key[M2MPSK_KEY_MAX];
  int result = CLI_OK, got;
  size_t lineno = 0;
  int found[64] = {0};
  if (lseek(im->psk_fd, 0, SEEK_SET) != 0) {
    cli_log("cannot read %s: %s", im->psk_path, strerror(errno));
    return CLI_IO;
  }
  while (result == CLI_OK && (got = next_line(&r, line, sizeof(line))) != 0) {
    lineno++;
    snprintf(where, sizeof(where), "%s:%zu", im->psk_path, lineno);
    if (got == -1) {
      cli_log("cannot read %s: %s", im->psk_path, strerror(errno));
      result = CLI_IO;
      break;
    }
    if (got == -2) {
      cli_log("%s: longer than %d bytes", where, PSK_LINE_MAX);
      result = CLI_IO;
      break;
    }
    if (line[strspn(line, " \t")] == '\0')
      continue; /* blank */
    /* The key is after the last ':' (hex has none); an identity may hold
     * one only in psktool's '#hex' form, but a KpsaID never does. */
    char *colon = strchr(line, ':');
    if (colon == NULL || colon == line) {
      cli_log("%s: not 'identity:hexkey'", where);
      result = CLI_IO;
      break;
    }
    *colon = '\0';
    const char *id = line;
    if (line[0] == '#') {
      long n = from_hex(line + 1, strlen(line + 1), (uint8_t *)name,
                        sizeof(name) - 1);
      if (n <= 0 || memchr(name, '\0', (size_t)n) != NULL) {
        cli_log("%s: the '#' identity is not hex", where);
        result = CLI_IO;
        break;
      }
      name[n] = '\0';
      id = name;
    }
    int rc = m2mpsk_kpsa_id_validate(id);
    if (rc != M2MPSK_OK) {
      cli_log("%s: the identity is not a KpsaID: %s", where,
              m2mpsk_strerror(rc));
      result = CLI_IO;
      break;
    }
    const char *hex = colon + 1;
    size_t hex_len = strlen(hex);
    long key_len = from_hex(hex, hex_len, key, sizeof(key));
    if (key_len < 0 && hex_len / 2 > sizeof(key) && hex_len % 2 == 0 &&
        strspn(hex, "0123456789abcdefABCDEF") == hex_len)
      key_len = (long)(hex_len / 2); /* only too long: say so below */
    if (key_len < 0) {
      cli_log("%s: the key of %s is not hex digits", where, id);
      result = CLI_IO;
      break;
    }
    if (key_len < M2MPSK_KEY_MIN || key_len > M2MPSK_KEY_MAX) {
      cli_log("%s: the key of %s is %ld bytes, not %d to %d", where, id,
              key_len, M2MPSK_KEY_MIN, M2MPSK_KEY_MAX);
      result = CLI_IO;
      break;
    }
    int wanted = im->only == NULL;
    for (size_t i = 0; i < im->n_only; i++) {
      if (strcmp(im->only[i], id) == 0) {
        wanted = 1;
        found[i] = 1;
      }
    }
    if (!wanted)
      continue;
    result = put_record(ks, fd, where, id, key, (size_t)key_len, &im->o);
    if (result == CLI_OK) {
      im->imported++;
      cli_trace("%s: KpsaID %s, a %ld-byte key", where, id, key_len);
    }
  }
  explicit_bzero(line, sizeof(line));
  explicit_bzero(key, sizeof(key));
  explicit_bzero(&r, sizeof(r));
  for (size_t i = 0; result == CLI_OK && i < im->n_only; i++) {
    if (!found[i]) {
      cli_log("%s has no line for KpsaID %s", im->psk_path, im->only[i]);
      result = CLI_IO;
    }
  }
  if (result == CLI_OK && im->imported == 0) {
    cli_log("%s has no records", im->psk_path);
    result = CLI_IO;
  }
  return result;
}

int cli_import(int argc, char **argv) {
  static const struct option opts[] = {
      {"psktool", required_argument, NULL, 'P'},
      {"keys", required_argument, NULL, 'k'},
      {"kpsa-id", required_argument, NULL, 'i'},
      {"idb", required_argument, NULL, 'b'},
      {"ida", required_argument, NULL, 'a'},
      {"not-before", required_argument, NULL, 'B'},
      {"not-after", required_argument, NULL, 'A'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  static const char *only[64];
  import_ctx im = {.psk_fd = -1};
  int c;
  while ((c = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
    switch (c) {
    case 'v': cli_verbose = 1; break;
    case 'P': im.psk_path = optarg; break;
    case 'k': im.keys = optarg; break;
    case 'b': im.o.idb = optarg; break;
    case 'a': im.o.ida = optarg; break;
    case 'B': im.o.not_before = optarg; break;
    case 'A': im.o.not_after = optarg; break;
    case 'i': {
      int rc = m2mpsk_kpsa_id_validate(optarg);
      if (rc != M2MPSK_OK) {
        cli_log("--kpsa-id %s: %s", optarg, m2mpsk_strerror(rc));
        return CLI_USAGE;
      }
      if (im.n_only == sizeof(only) / sizeof(only[0])) {
        cli_log("at most 64 --kpsa-id");
        return CLI_USAGE;
      }
      only[im.n_only++] = optarg;
      im.only = only;
      break;
    }
    case 'h': fputs(k_import_usage, stdout); return CLI_OK;
    default: fputs(k_import_usage, stderr); return CLI_USAGE;
    }
  }
  if (optind != argc || im.psk_path == NULL || im.keys == NULL ||
      im.o.idb == NULL) {
    cli_log("import needs --psktool, --keys and --idb");
    fputs(k_import_usage, stderr);
    return CLI_USAGE;
  }
  int rc = check_record_opts(&im.o);
  if (rc != CLI_OK)
    return rc;
  im.psk_fd = open(im.psk_path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (im.psk_fd < 0 || fstat(im.psk_fd, &st) != 0) {
    cli_log("cannot read %s: %s", im.psk_path, strerror(errno));
    if (im.psk_fd >= 0)
      close(im.psk_fd);
    return CLI_IO;
  }
  if (!S_ISREG(st.st_mode)) {
    cli_log("%s is not a regular file", im.psk_path);
    close(im.psk_fd);
    return CLI_IO;
  }
  if (st.st_mode & 077)
    cli_log("warning: %s is readable by others than its owner: its keys "
            "may be known",
            im.psk_path);
  rc = update_key_file(im.keys, import_records, &im);
  close(im.psk_fd);
  if (rc == CLI_OK)
    cli_log("imported %zu record%s from %s into %s", im.imported,
            im.imported == 1 ? "" : "s", im.psk_path, im.keys);
  return rc;
}

/* ---- version and dispatch -------------------------------------------------
 */

static int print_version(void) {
  printf("m2mpsk %s (%s)\n", m2mpsk_version_string(), m2mpsk_backend_name());
  for (size_t i = 0; m2mpsk_suite_name(i) != NULL; i++)
    printf("suite %s\n", m2mpsk_suite_name(i));
  char missing[128];
  if (m2mpsk_profile_missing(M2MPSK_PROFILE_TS0003, missing, sizeof(missing)) ==
      M2MPSK_OK)
    printf("profile ts0003: %s%s\n", missing[0] ? "lacks " : "complete",
           missing);
  /* Then each engine of this build, loadable or not, with its own suites. */
  static const m2mpsk_engine_id engines[] = {M2MPSK_ENGINE_BORINGSSL,
                                             M2MPSK_ENGINE_OPENSSL};
  for (size_t e = 0; e < sizeof(engines) / sizeof(engines[0]); e++) {
    const char *name = m2mpsk_engine_name(engines[e]);
    if (!m2mpsk_engine_available(engines[e])) {
      printf("engine %s: unavailable\n", name);
      continue;
    }
    printf("engine %s: %zu suites\n", name,
           m2mpsk_engine_suite_count(engines[e]));
    for (size_t i = 0; m2mpsk_engine_suite_name(engines[e], i) != NULL; i++)
      printf("engine %s suite %s\n", name,
             m2mpsk_engine_suite_name(engines[e], i));
  }
  return fflush(stdout) == 0 ? CLI_OK : CLI_IO;
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
  if (strcmp(cmd, "keygen") == 0)
    return cli_keygen(argc, argv);
  if (strcmp(cmd, "import") == 0)
    return cli_import(argc, argv);
  if (strcmp(cmd, "serve") == 0)
    return cli_serve(argc, argv);
  if (strcmp(cmd, "connect") == 0)
    return cli_connect(argc, argv);
  if (strcmp(cmd, "keys") == 0) {
    /* --pkcs11 MODULE:TOKEN picks the token's records (issue 20); else
     * etcd's, also in a build without etcd (which then says so). */
    int p11 = 0;
    for (int i = 1; i < argc; i++)
      if (strcmp(argv[i], "--") == 0)
        break;
      else if (strcmp(argv[i], "--pkcs11") == 0 ||
               strncmp(argv[i], "--pkcs11=", 9) == 0)
        p11 = 1;
    if (p11) {
#if M2MPSK_PKCS11
      return cli_keys_pkcs11(argc, argv);
#else
      cli_log("this m2mpsk was built without PKCS#11 support (p11-kit's "
              "pkcs11.h was missing at build time: apt-get install "
              "libp11-kit-dev, then rebuild)");
      return CLI_USAGE;
#endif
    }
#if M2MPSK_ETCD
    return cli_keys(argc, argv);
#else
    cli_log("this m2mpsk was built without etcd support (libcurl or "
            "json-c was missing at build time: apt-get install "
            "libcurl4-openssl-dev libjson-c-dev, then rebuild)");
    return CLI_USAGE;
#endif
  }
  if (strcmp(cmd, "gateway") == 0) {
#if M2MPSK_GATEWAY
    return gw_main(argc, argv);
#else
    cli_log("this m2mpsk was built without the gateway (libevent, json-c "
            "or libcoap3 was missing at build time: apt-get install "
            "libevent-dev libjson-c-dev libcoap3-dev, then rebuild)");
    return CLI_USAGE;
#endif
  }
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0 ||
      strcmp(cmd, "-V") == 0) {
    if (argc == 2 &&
        (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
      fputs(k_version_usage, stdout);
      return CLI_OK;
    }
    if (argc != 1) {
      cli_log("%s takes no arguments", cmd);
      fputs(k_version_usage, stderr);
      return CLI_USAGE;
    }
    return print_version();
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
