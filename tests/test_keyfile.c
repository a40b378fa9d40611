/* The key file loader: format, all-or-nothing errors with line numbers,
 * permissions, scale. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, nftw */
#endif
#include <criterion/criterion.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "keystore.h"

#include "mlock_fake.h"

static char dir[64];

static void setup(void) {
  /* mkdtemp's template: the prefix and six placeholder letters. */
  size_t n = (size_t)snprintf(dir, sizeof(dir), "/tmp/m2mpsk-keyfile-");
  memset(dir + n, 'X', 6);
  dir[n + 6] = '\0';
  cr_assert_not_null(mkdtemp(dir));
}

static int rm_entry(const char *path, const struct stat *st, int type,
                    struct FTW *ftw) {
  (void)st;
  (void)type;
  (void)ftw;
  return remove(path);
}

static void teardown(void) {
  nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(keyfile, .init = setup, .fini = teardown);

/* Writes `len` bytes into dir/name with `mode`; returns the path (static
 * buffer, overwritten by the next call). */
static const char *write_bytes(const char *name, const char *data, size_t len,
                               mode_t mode) {
  static char path[128];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, data, len), (ssize_t)len);
  cr_assert_eq(fchmod(fd, mode), 0);
  close(fd);
  return path;
}

static const char *write_file(const char *name, const char *text) {
  return write_bytes(name, text, strlen(text), 0600);
}

static m2mpsk_keystore *new_ks(void) {
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  return ks;
}

static void range_key(uint8_t *k, size_t n) {
  for (size_t i = 0; i < n; i++)
    k[i] = (uint8_t)i;
}

static void expect_key(const m2mpsk_keystore *ks, const char *id,
                       const uint8_t *want, size_t len) {
  uint8_t got[M2MPSK_KEY_MAX];
  size_t got_len = 0;
  cr_assert_eq(m2mpsk_keystore_fetch(ks, id, NULL, got, &got_len), M2MPSK_OK,
               "fetch %s", id);
  cr_assert_eq(got_len, len, "%s", id);
  cr_assert_arr_eq(got, want, len, "%s", id);
}

#define HEX16 "000102030405060708090a0b0c0d0e0f"
#define B64_16 "AAECAwQFBgcICQoLDA0ODw=="
#define B64_32 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

/* ---- good files -------------------------------------------------------- */

Test(keyfile, loads_every_form_of_a_good_file) {
  const char *text =
      "# m2mpsk key file\n"
      "\n"
      "   \t \n"
      "kpsa-id=test@onem2m.com kpsa=hex:" HEX16
      " idb=//m2m.example.com/cse-in ida=//m2m.example.com/cse-in/Cae1"
      " not-before=2026-01-01T00:00:00Z not-after=1798761600\n"
      "  # indented comment\n"
      "\tkpsa=base64:" B64_32 "\tkpsa-id=b64@onem2m.com   idb=/cse-in\r\n"
      "kpsa-id=upper@onem2m.com kpsa=hex:000102030405060708090A0B0C0D0E0F "
      "idb=/cse-in not-after=2024-02-29T23:59:59Z ida=/S123\r\n"
      "kpsa-id=last@onem2m.com kpsa=base64:" B64_16 " idb=/cse-2 ";
  m2mpsk_keystore *ks = new_ks();
  size_t line = 99;
  cr_assert_eq(m2mpsk_keystore_load_file(ks, write_file("k", text), &line),
               M2MPSK_OK);
  cr_assert_eq(line, 0);
  cr_assert_eq(m2mpsk_keystore_count(ks), 4);

  uint8_t k[32];
  range_key(k, sizeof(k));
  expect_key(ks, "test@onem2m.com", k, 16);
  expect_key(ks, "b64@onem2m.com", k, 32);
  expect_key(ks, "upper@onem2m.com", k, 16);
  expect_key(ks, "last@onem2m.com", k, 16);

  m2mpsk_record_view v;
  cr_assert_eq(m2mpsk_keystore_fetch(ks, "test@onem2m.com", &v, NULL, NULL),
               M2MPSK_OK);
  cr_assert_str_eq(v.ida, "//m2m.example.com/cse-in/Cae1");
  cr_assert_str_eq(v.idb, "//m2m.example.com/cse-in");
  cr_assert_eq(v.not_before, 1767225600);
  cr_assert_eq(v.not_after, 1798761600);
  cr_assert_eq(m2mpsk_keystore_fetch(ks, "b64@onem2m.com", &v, NULL, NULL),
               M2MPSK_OK);
  cr_assert_str_eq(v.ida, "");
  cr_assert_str_eq(v.idb, "/cse-in");
  cr_assert_eq(v.not_before, 0);
  cr_assert_eq(v.not_after, 0);
  cr_assert_eq(m2mpsk_keystore_fetch(ks, "upper@onem2m.com", &v, NULL, NULL),
               M2MPSK_OK);
  cr_assert_eq(v.not_after, 1709251199);
  cr_assert_str_eq(v.ida, "/S123");
  cr_assert_eq(m2mpsk_keystore_fetch(ks, "last@onem2m.com", &v, NULL, NULL),
               M2MPSK_OK);
  cr_assert_str_eq(v.idb, "/cse-2");
  m2mpsk_keystore_free(ks);
}

Test(keyfile, empty_and_comment_only_files_load_nothing) {
  m2mpsk_keystore *ks = new_ks();
  cr_assert_eq(m2mpsk_keystore_load_file(ks, write_file("e", ""), NULL),
               M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_load_file(ks, write_file("c", "# a\n\n#b"), NULL),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_count(ks), 0);
  m2mpsk_keystore_free(ks);
}

Test(keyfile, adds_to_existing_records) {
  m2mpsk_keystore *ks = new_ks();
  uint8_t k[16];
  range_key(k, 16);
  cr_assert_eq(m2mpsk_keystore_add(ks, "pre@x.com", k, 16, NULL, "/cse", 0, 0),
               M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_load_file(
          ks,
          write_file("k", "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n"
                          "kpsa-id=b@x.com kpsa=hex:" HEX16 " idb=/cse\n"),
          NULL),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_count(ks), 3);
  expect_key(ks, "pre@x.com", k, 16);
  expect_key(ks, "a@x.com", k, 16);
  expect_key(ks, "b@x.com", k, 16);
  m2mpsk_keystore_free(ks);
}

Test(keyfile, line_of_4096_bytes_is_accepted) {
  char line[4096 + 3];
  const char *rec = "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse";
  size_t n = strlen(rec);
  memcpy(line, rec, n);
  memset(line + n, ' ', 4096 - n);
  memcpy(line + 4096, "\r\n", 3);
  m2mpsk_keystore *ks = new_ks();
  cr_assert_eq(m2mpsk_keystore_load_file(ks, write_file("k", line), NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_count(ks), 1);
  m2mpsk_keystore_free(ks);
}

/* ---- bad files --------------------------------------------------------- */

typedef struct {
  const char *what;
  const char *line; /* the bad line, at line 3 of the file */
  int rc;
} bad_case;

#define REC(fields) "kpsa-id=c@x.com " fields
#define KEY " kpsa=hex:" HEX16
#define IDB_OK " idb=/cse"

static const bad_case bad_cases[] = {
    {"bad hex digit", REC("kpsa=hex:0g0102030405060708090a0b0c0d0e0f" IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"odd hex length", REC("kpsa=hex:" HEX16 "0" IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"bad base64 char", REC("kpsa=base64:AAECAwQFBgcICQoLDA0OD*==" IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"base64 without padding", REC("kpsa=base64:AAECAwQFBgcICQoLDA0ODw" IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"base64 padding inside",
     REC("kpsa=base64:AAEC=wQFBgcICQoLDA0ODw==" IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"base64 url alphabet", REC("kpsa=base64:AAECAwQFBgcICQoLDA0OD_==" IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"no encoding prefix", REC("kpsa=" HEX16 IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"unknown encoding", REC("kpsa=base32:AAAAAAAA" IDB_OK),
     M2MPSK_E_KEYFILE_ENCODING},
    {"short hex key", REC("kpsa=hex:000102030405060708090a0b0c0d0e" IDB_OK),
     M2MPSK_E_KEY_LENGTH},
    {"long hex key", REC("kpsa=hex:" HEX16 HEX16 HEX16 HEX16 "40" IDB_OK),
     M2MPSK_E_KEY_LENGTH},
    {"empty key", REC("kpsa=hex:" IDB_OK), M2MPSK_E_KEY_LENGTH},
    {"short base64 key", REC("kpsa=base64:AAECAwQFBgcICQoLDA0O" IDB_OK),
     M2MPSK_E_KEY_LENGTH},
    {"long base64 key",
     REC("kpsa=base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJ"
         "ygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A=" IDB_OK),
     M2MPSK_E_KEY_LENGTH},
    {"bad kpsa-id", "kpsa-id=no-at-sign" KEY IDB_OK, M2MPSK_E_KPSA_ID},
    {"long kpsa-id",
     "kpsa-id=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@x.com" KEY
         IDB_OK,
     M2MPSK_E_KPSA_ID_LENGTH},
    {"bad ida", REC(KEY IDB_OK " ida=/cse/Sx"), M2MPSK_E_IDA},
    {"bad idb", REC(KEY " idb=cse"), M2MPSK_E_IDB},
    {"empty idb", REC(KEY " idb="), M2MPSK_E_IDB},
    {"window ends first", REC(KEY IDB_OK " not-before=20 not-after=10"),
     M2MPSK_E_VALIDITY},
    {"duplicate in file", "kpsa-id=b@x.com" KEY IDB_OK, M2MPSK_E_DUPLICATE},
    {"duplicate of existing", "kpsa-id=pre@x.com" KEY IDB_OK,
     M2MPSK_E_DUPLICATE},
    {"unknown field", REC(KEY IDB_OK " colour=blue"), M2MPSK_E_KEYFILE_SYNTAX},
    {"field name case", REC(KEY " IDB=/cse"), M2MPSK_E_KEYFILE_SYNTAX},
    {"missing '='", REC(KEY IDB_OK " ida"), M2MPSK_E_KEYFILE_SYNTAX},
    {"missing kpsa-id", KEY IDB_OK, M2MPSK_E_KEYFILE_SYNTAX},
    {"missing kpsa", REC(IDB_OK), M2MPSK_E_KEYFILE_SYNTAX},
    {"missing idb", REC(KEY), M2MPSK_E_KEYFILE_SYNTAX},
    {"repeated field", REC(KEY IDB_OK " idb=/cse"), M2MPSK_E_KEYFILE_SYNTAX},
    {"repeated kpsa", REC(KEY KEY IDB_OK), M2MPSK_E_KEYFILE_SYNTAX},
    {"space in base64", REC("kpsa=base64:AAECAwQFBgcI CQoLDA0ODw==" IDB_OK),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"trailing comment", REC(KEY IDB_OK " # note"), M2MPSK_E_KEYFILE_SYNTAX},
    {"bad time", REC(KEY IDB_OK " not-after=tomorrow"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"negative time", REC(KEY IDB_OK " not-before=-1"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"empty time", REC(KEY IDB_OK " not-after="), M2MPSK_E_KEYFILE_SYNTAX},
    {"time overflow", REC(KEY IDB_OK " not-after=9223372036854775808"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"no leap day", REC(KEY IDB_OK " not-after=2023-02-29T00:00:00Z"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"month 13", REC(KEY IDB_OK " not-after=2026-13-01T00:00:00Z"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"hour 24", REC(KEY IDB_OK " not-after=2026-01-01T24:00:00Z"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"no zone", REC(KEY IDB_OK " not-after=2026-01-01T00:00:00"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"offset zone", REC(KEY IDB_OK " not-after=2026-01-01T00:00:00+01:00"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"before 1970", REC(KEY IDB_OK " not-before=1969-12-31T23:59:59Z"),
     M2MPSK_E_KEYFILE_SYNTAX},
    {"date only", REC(KEY IDB_OK " not-after=2026-01-01"),
     M2MPSK_E_KEYFILE_SYNTAX},
};

/* A keystore holding one record "pre@x.com", to check it survives. */
static m2mpsk_keystore *ks_with_pre(uint8_t *k) {
  m2mpsk_keystore *ks = new_ks();
  for (size_t i = 0; i < 16; i++)
    k[i] = (uint8_t)(0xa0 + i);
  cr_assert_eq(
      m2mpsk_keystore_add(ks, "pre@x.com", k, 16, "/cse/C1", "/cse", 5, 6),
      M2MPSK_OK);
  return ks;
}

static void expect_unchanged(const m2mpsk_keystore *ks, const uint8_t *k,
                             const char *what) {
  cr_expect_eq(m2mpsk_keystore_count(ks), 1, "%s", what);
  expect_key(ks, "pre@x.com", k, 16);
  m2mpsk_record_view v;
  cr_assert_eq(m2mpsk_keystore_fetch(ks, "pre@x.com", &v, NULL, NULL),
               M2MPSK_OK);
  cr_expect_str_eq(v.ida, "/cse/C1", "%s", what);
  cr_expect_eq(v.not_before, 5, "%s", what);
  cr_expect_eq(
      m2mpsk_keystore_lookup(ks, "a@x.com", NULL, 0, NULL, 0, NULL, NULL, NULL),
      M2MPSK_E_NOT_FOUND, "%s", what);
}

Test(keyfile, each_bad_line_is_reported_with_its_line_and_changes_nothing) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  char text[1024];
  for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
    const bad_case *c = &bad_cases[i];
    /* Good records before and after the bad one, which is on line 4. */
    snprintf(text, sizeof(text),
             "# comment\n"
             "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n"
             "kpsa-id=b@x.com kpsa=hex:" HEX16 " idb=/cse\n"
             "%s\n"
             "kpsa-id=d@x.com kpsa=hex:" HEX16 " idb=/cse\n",
             c->line);
    size_t line = 0;
    cr_expect_eq(m2mpsk_keystore_load_file(ks, write_file("bad", text), &line),
                 c->rc, "%s", c->what);
    cr_expect_eq(line, 4, "%s: line %zu", c->what, line);
    expect_unchanged(ks, k, c->what);
  }
  m2mpsk_keystore_free(ks);
}

Test(keyfile, first_bad_line_wins) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  size_t line = 0;
  const char *text = "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n"
                     "kpsa-id=pre@x.com kpsa=hex:" HEX16 " idb=/cse\n"
                     "\n"
                     "kpsa-id=bad kpsa=hex:" HEX16 " idb=/cse\n";
  /* Line 4 fails while parsing, before line 2 is found to clash with the
   * keystore at merge time. */
  cr_assert_eq(m2mpsk_keystore_load_file(ks, write_file("k", text), &line),
               M2MPSK_E_KPSA_ID);
  cr_assert_eq(line, 4);
  expect_unchanged(ks, k, "first_bad_line_wins");
  m2mpsk_keystore_free(ks);
}

Test(keyfile, duplicate_of_existing_reports_first_clashing_line) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  cr_assert_eq(m2mpsk_keystore_add(ks, "z@x.com", k, 16, NULL, "/cse", 0, 0),
               M2MPSK_OK);
  const char *text = "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n"
                     "kpsa-id=b@x.com kpsa=hex:" HEX16 " idb=/cse\n"
                     "kpsa-id=pre@x.com kpsa=hex:" HEX16 " idb=/cse\n"
                     "kpsa-id=z@x.com kpsa=hex:" HEX16 " idb=/cse\n";
  size_t line = 0;
  cr_assert_eq(m2mpsk_keystore_load_file(ks, write_file("k", text), &line),
               M2MPSK_E_DUPLICATE);
  cr_assert_eq(line, 3);
  cr_assert_eq(m2mpsk_keystore_count(ks), 2);
  /* Loading the same file twice clashes on its first record. */
  m2mpsk_keystore *fresh = new_ks();
  const char *good = "#\nkpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n";
  cr_assert_eq(m2mpsk_keystore_load_file(fresh, write_file("g", good), NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_load_file(fresh, write_file("g", good), &line),
               M2MPSK_E_DUPLICATE);
  cr_assert_eq(line, 2);
  cr_assert_eq(m2mpsk_keystore_count(fresh), 1);
  m2mpsk_keystore_free(fresh);
  m2mpsk_keystore_free(ks);
}

Test(keyfile, line_over_4096_bytes_is_syntax_error) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  char text[8192];
  const char *first = "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n";
  size_t n = strlen(first);
  memcpy(text, first, n);
  const char *rec = "kpsa-id=b@x.com kpsa=hex:" HEX16 " idb=/cse";
  size_t r = strlen(rec);
  memcpy(text + n, rec, r);
  memset(text + n + r, ' ', 4097 - r);
  memcpy(text + n + 4097, "\n", 2);
  size_t line = 0;
  cr_assert_eq(m2mpsk_keystore_load_file(ks, write_file("k", text), &line),
               M2MPSK_E_KEYFILE_SYNTAX);
  cr_assert_eq(line, 2);
  expect_unchanged(ks, k, "4097");
  m2mpsk_keystore_free(ks);
}

Test(keyfile, huge_line_is_refused_without_reading_it_all) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  size_t len = 1 << 20;
  char *text = malloc(len);
  cr_assert_not_null(text);
  memset(text, 'x', len);
  memcpy(text, "#\n#\n", 4);
  size_t line = 0;
  cr_assert_eq(
      m2mpsk_keystore_load_file(ks, write_bytes("k", text, len, 0600), &line),
      M2MPSK_E_KEYFILE_SYNTAX);
  cr_assert_eq(line, 3);
  expect_unchanged(ks, k, "huge");
  free(text);
  m2mpsk_keystore_free(ks);
}

Test(keyfile, nul_byte_is_syntax_error) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  const char text[] =
      "#\nkpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\0 ida=/cse/C1\n";
  size_t line = 0;
  cr_assert_eq(m2mpsk_keystore_load_file(
                   ks, write_bytes("k", text, sizeof(text) - 1, 0600), &line),
               M2MPSK_E_KEYFILE_SYNTAX);
  cr_assert_eq(line, 2);
  expect_unchanged(ks, k, "nul");
  m2mpsk_keystore_free(ks);
}

/* ---- file access -------------------------------------------------------- */

static const char *GOOD = "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n";

Test(keyfile, group_or_other_access_is_refused) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  const mode_t bad[] = {0644, 0640, 0604, 0610, 0601, 0620, 0602, 0700 | 0004};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    size_t line = 7;
    cr_expect_eq(m2mpsk_keystore_load_file(
                     ks, write_bytes("k", GOOD, strlen(GOOD), bad[i]), &line),
                 M2MPSK_E_KEYFILE_PERMS, "mode %o", (unsigned)bad[i]);
    cr_expect_eq(line, 0);
    expect_unchanged(ks, k, "perms");
  }
  m2mpsk_keystore_free(ks);
}

Test(keyfile, owner_only_modes_are_accepted) {
  const mode_t good[] = {0600, 0400, 0700};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    m2mpsk_keystore *ks = new_ks();
    cr_expect_eq(m2mpsk_keystore_load_file(
                     ks, write_bytes("k", GOOD, strlen(GOOD), good[i]), NULL),
                 M2MPSK_OK, "mode %o", (unsigned)good[i]);
    cr_expect_eq(m2mpsk_keystore_count(ks), 1);
    m2mpsk_keystore_free(ks);
  }
}

Test(keyfile, directory_and_fifo_are_refused) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  char path[128];
  snprintf(path, sizeof(path), "%s/sub", dir);
  cr_assert_eq(mkdir(path, 0700), 0);
  size_t line = 7;
  cr_assert_eq(m2mpsk_keystore_load_file(ks, path, &line),
               M2MPSK_E_KEYFILE_PERMS);
  cr_assert_eq(line, 0);
  snprintf(path, sizeof(path), "%s/fifo", dir);
  cr_assert_eq(mkfifo(path, 0600), 0);
  cr_assert_eq(m2mpsk_keystore_load_file(ks, path, &line),
               M2MPSK_E_KEYFILE_PERMS);
  expect_unchanged(ks, k, "dir");
  m2mpsk_keystore_free(ks);
}

Test(keyfile, symlink_to_private_file_is_followed) {
  char target[128], link[128];
  snprintf(target, sizeof(target), "%s", write_file("real", GOOD));
  snprintf(link, sizeof(link), "%s/link", dir);
  cr_assert_eq(symlink(target, link), 0);
  m2mpsk_keystore *ks = new_ks();
  cr_assert_eq(m2mpsk_keystore_load_file(ks, link, NULL), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_count(ks), 1);
  /* The mode checked is the target's, not the link's (always 0777). */
  cr_assert_eq(chmod(target, 0644), 0);
  m2mpsk_keystore *ks2 = new_ks();
  cr_assert_eq(m2mpsk_keystore_load_file(ks2, link, NULL),
               M2MPSK_E_KEYFILE_PERMS);
  m2mpsk_keystore_free(ks2);
  m2mpsk_keystore_free(ks);
}

Test(keyfile, missing_file_is_io_error) {
  uint8_t k[16];
  m2mpsk_keystore *ks = ks_with_pre(k);
  char path[128];
  snprintf(path, sizeof(path), "%s/absent", dir);
  size_t line = 7;
  cr_assert_eq(m2mpsk_keystore_load_file(ks, path, &line), M2MPSK_E_IO);
  cr_assert_eq(line, 0);
  cr_assert_eq(m2mpsk_keystore_load_file(ks, "", &line), M2MPSK_E_IO);
  expect_unchanged(ks, k, "missing");
  m2mpsk_keystore_free(ks);
}

Test(keyfile, null_arguments_are_invalid) {
  m2mpsk_keystore *ks = new_ks();
  size_t line = 7;
  cr_assert_eq(m2mpsk_keystore_load_file(NULL, write_file("k", GOOD), &line),
               M2MPSK_E_INVALID);
  cr_assert_eq(line, 0);
  cr_assert_eq(m2mpsk_keystore_load_file(ks, NULL, &line), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_keystore_count(ks), 0);
  m2mpsk_keystore_free(ks);
}

/* Removes CAP_IPC_LOCK from the effective set, so that RLIMIT_MEMLOCK binds
 * even for root. */
static int drop_ipc_lock(void) {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  if (syscall(SYS_capget, &hdr, data) != 0)
    return -1;
  data[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
  return (int)syscall(SYS_capset, &hdr, data);
}

Test(keyfile, require_locked_applies_to_loaded_keys) {
  if (MLOCK_IS_FAKE)
    cr_skip_test("mlock is not real under AddressSanitizer");
  const char *path =
      write_file("k", "#\n"
                      "kpsa-id=a@x.com kpsa=hex:" HEX16 " idb=/cse\n");
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    struct rlimit zero = {0, 0};
    if (drop_ipc_lock() != 0 || setrlimit(RLIMIT_MEMLOCK, &zero) != 0)
      _exit(10);
    m2mpsk_keystore *ks = NULL;
    if (m2mpsk_keystore_new(&ks, M2MPSK_KEYSTORE_REQUIRE_LOCKED) != M2MPSK_OK)
      _exit(11);
    size_t line = 0;
    if (m2mpsk_keystore_load_file(ks, path, &line) != M2MPSK_E_UNLOCKED)
      _exit(12);
    if (line != 2 || m2mpsk_keystore_count(ks) != 0)
      _exit(13);
    m2mpsk_keystore_free(ks);
    /* Without the flag the same file loads, reported as unlocked. */
    if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK ||
        m2mpsk_keystore_load_file(ks, path, NULL) != M2MPSK_OK ||
        m2mpsk_keystore_is_locked(ks) != 0)
      _exit(14);
    m2mpsk_keystore_free(ks);
    _exit(0);
  }
  int st = 0;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status 0x%x", st);
}

/* ---- scale -------------------------------------------------------------- */

/* 10,000 records merged into a keystore that already holds one: all of
 * them land, with their own keys. The load time of 1,000,000 records is
 * the benchmark's "ks" section (tests/bench/README.md), which checks the
 * same count; it is too slow for the unit suite. */
#define SCALE 10000u

Test(keyfile, loads_ten_thousand_records) {
  char path[128];
  snprintf(path, sizeof(path), "%s/scale", dir);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  cr_assert_eq(fchmod(fileno(f), 0600), 0);
  for (unsigned i = 0; i < SCALE; i++) {
    fprintf(f,
            "kpsa-id=dev-%07u@m2m.example.com kpsa=hex:%08x%024x "
            "idb=//m2m.example.com/cse-in not-after=1798761600\n",
            i, i, 0u);
  }
  cr_assert_eq(fclose(f), 0);

  m2mpsk_keystore *ks = new_ks();
  uint8_t k[16] = {0};
  cr_assert_eq(m2mpsk_keystore_add(ks, "pre@x.com", k, 16, NULL, "/cse", 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_load_file(ks, path, NULL), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_count(ks), SCALE + 1);
  for (unsigned i = 0; i < SCALE; i += 997) {
    char id[40];
    uint8_t want[16] = {0};
    snprintf(id, sizeof(id), "dev-%07u@m2m.example.com", i);
    want[0] = (uint8_t)(i >> 24);
    want[1] = (uint8_t)(i >> 16);
    want[2] = (uint8_t)(i >> 8);
    want[3] = (uint8_t)i;
    expect_key(ks, id, want, 16);
  }
  expect_key(ks, "dev-0009999@m2m.example.com",
             (const uint8_t[16]){0, 0, 0x27, 0x0f}, 16);
  expect_key(ks, "pre@x.com", k, 16);
  m2mpsk_keystore_free(ks);
}
