/* The m2mpsk command-line tool: the only code in the project that opens
 * sockets. It drives the sans-IO library with a poll loop. */
#ifndef M2MPSK_CLI_H
#define M2MPSK_CLI_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "m2mpsk/m2mpsk.h"

/* Exit codes, stable for scripts. */
enum {
  CLI_OK = 0,     /* established, ended normally */
  CLI_FAILED = 1, /* the association failed */
  CLI_USAGE = 2,  /* bad arguments */
  CLI_IO = 3      /* unreachable peer; a key file unreadable, unsafe,
                     malformed, not writable, or without (or already with)
                     the KpsaID asked for */
};

extern int cli_verbose;

uint64_t cli_now_ms(void);
int64_t cli_unix_time(void);

/* Prints "m2mpsk: ..." on stderr. */
void cli_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like cli_log, only with -v. */
void cli_trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Loads a key file into a new keystore; prints the error and returns NULL
 * on failure. */
m2mpsk_keystore *cli_load_keys(const char *path);

/* --engine: "auto", "boringssl" or "openssl". 0, or -1 (message printed). */
int cli_parse_engine(const char *s, m2mpsk_engine_id *out);

/* Builds a config from --engine, --suites (NULL, "all" or IANA names), the
 * handshake timeout (0: default) and, for a responder, its identities.
 * Prints the error and returns NULL on failure. */
m2mpsk_config *cli_make_config(m2mpsk_engine_id engine, const char *suites,
                               uint32_t timeout_ms, const char *const *ids,
                               size_t n_ids, int reveal);

/* "127.0.0.1:4433" or "[::1]:4433". */
void cli_format_addr(const struct sockaddr *sa, char *out, size_t cap);

/* Logs the outcome of an association: one "association" or "failure"
 * line naming the peer. */
void cli_log_outcome(const char *peer, const m2mpsk_assoc *a);

/* Parses a decimal number within [lo, hi]; 0 on success. */
int cli_parse_uint(const char *s, unsigned long lo, unsigned long hi,
                   unsigned long *out);

/* --not-before/--not-after: what a key file accepts (keyfile.c), Unix
 * seconds or "YYYY-MM-DDTHH:MM:SSZ" from 1970 on. 0, or -1 for anything
 * else (an impossible date such as 02-30 included). */
int cli_parse_time(const char *s, int64_t *out);
/* A Unix time as "YYYY-MM-DDTHH:MM:SSZ", or "-" for 0 (none). */
void cli_fmt_time(int64_t t, char *out, size_t cap);

/* One record of a key file line (keyline.c; built with the etcd or the
 * PKCS#11 component): hold it in guarded memory and wipe it after use. */
typedef struct cli_key_record {
  char kpsa_id[M2MPSK_KPSA_ID_MAX + 1];
  char ida[M2MPSK_ID_MAX + 1]; /* "" when none */
  char idb[M2MPSK_ID_MAX + 1];
  int64_t not_before, not_after; /* 0: unbounded */
  size_t key_len;
  uint8_t key[M2MPSK_KEY_MAX];
} cli_key_record;

/* Reads the fields of one line of a key file that the library's loader has
 * already checked; tokenises `line` in place. 1 for a record, 0 for a
 * blank or comment line, -1 malformed. */
int cli_parse_key_line(char *line, cli_key_record *r);

/* Writes all `len` bytes to `fd`, retrying after signals; 0 or -1. */
int cli_write_all(int fd, const void *data, size_t len);

/* -v: one line per (D)TLS record or handshake message that crossed the
 * wire, read like `openssl s_client -msg`: ">>>" for what this side sent,
 * "<<<" for what it received, the record's version and content type, the
 * handshake message (ClientHello ... Finished, HelloVerifyRequest), the
 * alert's level and description when it is in the clear, and the length
 * in hex. Only headers are parsed: never key material, never payload.
 * One cli_wire per direction of an association (a TLS record may span
 * reads); zero-initialised, `dtls` set; freed with cli_wire_free(). */
/* A TLS record header and its largest body. */
#define CLI_WIRE_MAX (5 + 18432)
typedef struct cli_wire {
  int dtls;
  int encrypted; /* TLS: a ChangeCipherSpec went this way */
  int finished;  /* TLS: the encrypted Finished went this way */
  int garbage;   /* TLS: lost track of record boundaries */
  uint8_t *buf;  /* TLS: an incomplete record, CLI_WIRE_MAX bytes */
  size_t len;
} cli_wire;
void cli_trace_wire(cli_wire *w, int sent, const char *peer,
                    const uint8_t *data, size_t len);
void cli_wire_free(cli_wire *w);

/* --keys for serve and gateway: a key file (mode 0600), or an etcd URL
 * (etcd://HOST:PORT[,HOST:PORT...]/PREFIX) with --kek and
 * --etcd-fail-closed. With a URL the snapshot is loaded before this
 * returns (one log line counts it) and *sync keeps the keystore in step
 * until m2mpsk_etcd_sync_stop(); `on_change` is called from its thread
 * after each change (see src/etcd/etcd_keys.h). */
struct m2mpsk_etcd_sync;
struct m2mpsk_p11_source;
typedef struct cli_keys_opts {
  const char *spec;       /* --keys */
  const char *kek;        /* --kek FILE, or NULL */
  uint32_t fail_closed_s; /* --etcd-fail-closed, 0: the component's default */
  void (*on_change)(void *arg);
  void *arg;
  /* --keys pkcs11:MODULE:TOKEN (issue 20): the PIN file (NULL:
   * $M2MPSK_PKCS11_PIN), and where the key source goes. A host that
   * leaves `p11` NULL refuses such a spec. */
  const char *pin_file;
  struct m2mpsk_p11_source **p11;
  /* --pkcs11-init-args (NULL: $M2MPSK_PKCS11_INIT_ARGS, else none):
   * C_Initialize's pReserved, e.g. NSS softoken's configdir=... */
  const char *init_args;
} cli_keys_opts;
/* CLI_OK, or CLI_USAGE / CLI_IO with the reason logged. A URL in a build
 * without etcd support is CLI_USAGE, said so. */
int cli_keys_open(const cli_keys_opts *o, m2mpsk_keystore **ks,
                  struct m2mpsk_etcd_sync **sync);
/* 1 when `spec` is an etcd URL (in any build). */
int cli_keys_is_url(const char *spec);
/* 1 when `spec` is "pkcs11:..." (in any build). */
int cli_keys_is_pkcs11(const char *spec);
/* Stops the PKCS#11 key source and frees it; NULL is a no-op. */
void cli_keys_close_p11(struct m2mpsk_p11_source *src);
/* Stops the sync thread and frees it; NULL is a no-op. */
void cli_keys_close(struct m2mpsk_etcd_sync *sync);

int cli_keygen(int argc, char **argv);
int cli_import(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_connect(int argc, char **argv);
/* m2mpsk keys (src/cli/keys.c; only when built with etcd support). */
int cli_keys(int argc, char **argv);
/* m2mpsk keys --pkcs11 (src/cli/keys_p11.c; only when built with the
 * PKCS#11 component). */
int cli_keys_pkcs11(int argc, char **argv);
extern const char cli_keys_p11_usage[];
/* The PIN from a 0600 file of ours (trailing newline stripped) or, with
 * pin_file NULL, $M2MPSK_PKCS11_PIN, into sodium_malloc memory (the caller
 * sodium_free()s it). CLI_OK, CLI_USAGE (no PIN given) or CLI_IO (the
 * file unreadable or unsafe), logged; never the PIN itself. */
int cli_p11_read_pin(const char *pin_file, uint8_t **pin, size_t *len);
/* The C_Initialize parameters: `opt` (--pkcs11-init-args), else
 * $M2MPSK_PKCS11_INIT_ARGS, else NULL. */
const char *cli_p11_init_args(const char *opt);

#endif
