/* The key file loader: strict line-oriented parsing into a private staging
 * keystore, merged into the caller's keystore in one step so that a file is
 * loaded all or nothing. Everything read from the file passes through a
 * guarded, wiped buffer; decoded keys through a stack buffer that is wiped
 * after each line. */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "keystore.h"

#define LINE_MAX_BYTES 4096
/* Large enough to hold any line plus a sizeable read. */
#define READ_BUF_BYTES (64 * 1024)

enum field {
  F_KPSA_ID,
  F_KPSA,
  F_IDB,
  F_IDA,
  F_NOT_BEFORE,
  F_NOT_AFTER,
  F_COUNT
};

static const char *const field_names[F_COUNT] = {
    "kpsa-id", "kpsa", "idb", "ida", "not-before", "not-after"};

static int is_blank(char c) {
  return c == ' ' || c == '\t';
}

static int is_digit(char c) {
  return c >= '0' && c <= '9';
}

static int hex_value(char c) {
  if (is_digit(c))
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int is_b64(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) ||
         c == '+' || c == '/';
}

/* Proleptic Gregorian date to days since 1970-01-01 (H. Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static int digits(const char *s, size_t n, unsigned *out) {
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (!is_digit(s[i]))
      return 0;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  *out = v;
  return 1;
}

/* Unix seconds (digits only) or "YYYY-MM-DDTHH:MM:SSZ" from 1970 on. */
static int parse_time(const char *s, int64_t *out) {
  size_t n = strlen(s);
  if (n == 0)
    return 0;
  size_t i = 0;
  while (i < n && is_digit(s[i]))
    i++;
  if (i == n) {
    int64_t v = 0;
    for (i = 0; i < n; i++) {
      int d = s[i] - '0';
      if (v > (INT64_MAX - d) / 10)
        return 0;
      v = v * 10 + d;
    }
    *out = v;
    return 1;
  }
  unsigned y, mo, d, h, mi, sec;
  if (n != 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
      s[16] != ':' || s[19] != 'Z' || !digits(s, 4, &y) ||
      !digits(s + 5, 2, &mo) || !digits(s + 8, 2, &d) ||
      !digits(s + 11, 2, &h) || !digits(s + 14, 2, &mi) ||
      !digits(s + 17, 2, &sec))
    return 0;
  static const unsigned char mdays[12] = {31, 28, 31, 30, 31, 30,
                                          31, 31, 30, 31, 30, 31};
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 ||
      d > mdays[mo - 1] + (unsigned)(mo == 2 && leap) || h > 23 || mi > 59 ||
      sec > 59)
    return 0;
  *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
  return 1;
}

/* Decodes "hex:..." or "base64:..." into key (M2MPSK_KEY_MAX bytes). The
 * encoding is checked before the length, so that a damaged key reads as
 * damaged rather than as the wrong size. */
static int decode_key(const char *v, uint8_t *key, size_t *key_len) {
  size_t bin_len = 0;
  const char *end = NULL;
  if (strncmp(v, "hex:", 4) == 0) {
    const char *hex = v + 4;
    size_t n = strlen(hex);
    for (size_t i = 0; i < n; i++) {
      if (hex_value(hex[i]) < 0)
        return M2MPSK_E_KEYFILE_ENCODING;
    }
    if (n % 2 != 0)
      return M2MPSK_E_KEYFILE_ENCODING;
    if (n / 2 < M2MPSK_KEY_MIN || n / 2 > M2MPSK_KEY_MAX)
      return M2MPSK_E_KEY_LENGTH;
    if (sodium_hex2bin(key, M2MPSK_KEY_MAX, hex, n, NULL, &bin_len, &end) !=
            0 ||
        end != hex + n || bin_len != n / 2)
      return M2MPSK_E_KEYFILE_ENCODING;
  } else if (strncmp(v, "base64:", 7) == 0) {
    const char *b64 = v + 7;
    size_t n = strlen(b64);
    size_t pad = 0;
    if (n % 4 != 0)
      return M2MPSK_E_KEYFILE_ENCODING;
    for (size_t i = 0; i < n; i++) {
      if (b64[i] == '=' && i + 2 >= n && (i + 1 == n || b64[i + 1] == '='))
        pad++;
      else if (!is_b64(b64[i]))
        return M2MPSK_E_KEYFILE_ENCODING;
    }
    size_t len = n / 4 * 3 - pad;
    if (len < M2MPSK_KEY_MIN || len > M2MPSK_KEY_MAX)
      return M2MPSK_E_KEY_LENGTH;
    if (sodium_base642bin(key, M2MPSK_KEY_MAX, b64, n, NULL, &bin_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        end != b64 + n || bin_len != len)
      return M2MPSK_E_KEYFILE_ENCODING;
  } else {
    return M2MPSK_E_KEYFILE_ENCODING;
  }
  *key_len = bin_len;
  return M2MPSK_OK;
}

/* Parses one line (without its '\n'; `line[len]` is writable) and stages
 * its record. */
static int load_line(m2mpsk_keystore *staging, char *line, size_t len,
                     size_t lineno) {
  if (len > 0 && line[len - 1] == '\r')
    len--;
  if (len > LINE_MAX_BYTES || memchr(line, '\0', len) != NULL)
    return M2MPSK_E_KEYFILE_SYNTAX;
  line[len] = '\0';
  char *p = line;
  while (is_blank(*p))
    p++;
  if (*p == '\0' || *p == '#')
    return M2MPSK_OK;

  const char *val[F_COUNT] = {NULL};
  while (*p != '\0') {
    char *tok = p;
    while (*p != '\0' && !is_blank(*p))
      p++;
    if (*p != '\0')
      *p++ = '\0';
    while (is_blank(*p))
      p++;
    char *eq = strchr(tok, '=');
    if (eq == NULL)
      return M2MPSK_E_KEYFILE_SYNTAX;
    *eq = '\0';
    int f = 0;
    while (f < F_COUNT && strcmp(tok, field_names[f]) != 0)
      f++;
    if (f == F_COUNT || val[f] != NULL)
      return M2MPSK_E_KEYFILE_SYNTAX;
    val[f] = eq + 1;
  }
  if (val[F_KPSA_ID] == NULL || val[F_KPSA] == NULL || val[F_IDB] == NULL)
    return M2MPSK_E_KEYFILE_SYNTAX;
  int64_t not_before = 0, not_after = 0;
  if ((val[F_NOT_BEFORE] != NULL &&
       !parse_time(val[F_NOT_BEFORE], &not_before)) ||
      (val[F_NOT_AFTER] != NULL && !parse_time(val[F_NOT_AFTER], &not_after)))
    return M2MPSK_E_KEYFILE_SYNTAX;

  uint8_t key[M2MPSK_KEY_MAX];
  size_t key_len = 0;
  int rc = decode_key(val[F_KPSA], key, &key_len);
  if (rc == M2MPSK_OK) {
    uint32_t tag = lineno < UINT32_MAX ? (uint32_t)lineno : UINT32_MAX - 1;
    rc = m2mpsk_keystore_add_tagged(staging, val[F_KPSA_ID], key, key_len,
                                    val[F_IDA], val[F_IDB], not_before,
                                    not_after, tag);
  }
  sodium_memzero(key, sizeof(key));
  return rc;
}

/* Reads the file line by line into `staging`. */
static int load_fd(m2mpsk_keystore *staging, int fd, size_t *err_line) {
  /* One spare byte so that a last line without '\n' can be terminated. */
  char *buf = sodium_malloc(READ_BUF_BYTES + 1);
  if (buf == NULL)
    return M2MPSK_E_NOMEM;
  size_t have = 0;
  size_t lineno = 0;
  int rc = M2MPSK_OK;
  int eof = 0;
  while (rc == M2MPSK_OK && !eof) {
    ssize_t n = read(fd, buf + have, READ_BUF_BYTES - have);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      rc = M2MPSK_E_IO;
      break;
    }
    eof = n == 0;
    have += (size_t)n;
    size_t start = 0;
    while (rc == M2MPSK_OK) {
      char *nl = memchr(buf + start, '\n', have - start);
      size_t end;
      if (nl != NULL)
        end = (size_t)(nl - buf);
      else if (eof && start < have)
        end = have;
      else
        break;
      lineno++;
      rc = load_line(staging, buf + start, end - start, lineno);
      if (rc != M2MPSK_OK)
        *err_line = lineno;
      start = nl != NULL ? end + 1 : have;
    }
    if (rc != M2MPSK_OK || eof)
      break;
    /* A partial line longer than any valid one (plus its '\r') can stop the
     * load now instead of filling the buffer. */
    if (have - start > LINE_MAX_BYTES + 1) {
      rc = M2MPSK_E_KEYFILE_SYNTAX;
      *err_line = lineno + 1;
      break;
    }
    memmove(buf, buf + start, have - start);
    have -= start;
  }
  sodium_free(buf); /* wipes */
  return rc;
}

int m2mpsk_keystore_load_file(m2mpsk_keystore *ks, const char *path,
                              size_t *err_line) {
  size_t line_dummy;
  if (err_line == NULL)
    err_line = &line_dummy;
  *err_line = 0;
  if (ks == NULL || path == NULL)
    return M2MPSK_E_INVALID;
  /* Symlinks are followed on purpose: deployments point at keys through
   * them (Kubernetes secret volumes, /etc/alternatives-style switches),
   * and what matters, the type and mode of the file actually read, is
   * checked on the opened descriptor. O_NONBLOCK keeps a FIFO from blocking
   * the open; it is rejected by the type check right after. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return M2MPSK_E_IO;
  struct stat st;
  int rc;
  if (fstat(fd, &st) != 0) {
    rc = M2MPSK_E_IO;
  } else if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
    rc = M2MPSK_E_KEYFILE_PERMS;
  } else {
    m2mpsk_keystore *staging = NULL;
    rc = m2mpsk_keystore_new_staging(ks, &staging);
    if (rc == M2MPSK_OK)
      rc = load_fd(staging, fd, err_line);
    if (rc == M2MPSK_OK) {
      uint32_t tag = 0;
      rc = m2mpsk_keystore_merge(ks, staging, &tag);
      if (rc == M2MPSK_E_DUPLICATE)
        *err_line = tag;
    }
    m2mpsk_keystore_free(staging);
  }
  close(fd);
  return rc;
}
