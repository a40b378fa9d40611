/* The etcd component's pure parts: the URL, the KEK file and the sealed
 * record (src/etcd/etcd_common.c). The network parts are tested by
 * etcd_tests.py against real and fake etcd servers. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "etcd_internal.h"
#include "etcd_keys.h"

static void init(void) {
  cr_assert(sodium_init() >= 0);
}

TestSuite(etcd_record, .init = init);

Test(etcd_record, urls) {
  etcd_url u;
  char err[256];
  cr_assert_eq(etcd_url_parse("etcd://127.0.0.1:2379,h-2.example:22379/m2m/",
                              &u, err, sizeof(err)),
               M2MPSK_OK, "%s", err);
  cr_assert_eq(u.n, 2);
  cr_assert_str_eq(u.base[0], "http://127.0.0.1:2379");
  cr_assert_str_eq(u.base[1], "http://h-2.example:22379");
  cr_assert_str_eq(u.keys_prefix, "/m2m/keys/");
  cr_assert(m2mpsk_etcd_is_url("etcd://x:1/p"));
  cr_assert(!m2mpsk_etcd_is_url("/etc/m2mpsk/keys"));
  cr_assert(!m2mpsk_etcd_is_url(NULL));
  static const char *bad[] = {NULL,
                              "etcd://",
                              "etcd:///p",
                              "etcd://h/p",
                              "etcd://h:/p",
                              "etcd://h:0/p",
                              "etcd://h:70000/p",
                              "etcd://h:1",
                              "etcd://h:1/",
                              "etcd://h:1,/p",
                              "etcd://h:1,,h:2/p",
                              "etcd://h?:1/p",
                              "etcd://h:1a/p",
                              "etcd://h:1/a b",
                              "http://h:1/p"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    err[0] = '\0';
    cr_assert_eq(etcd_url_parse(bad[i], &u, err, sizeof(err)), M2MPSK_E_INVALID,
                 "%s", bad[i] ? bad[i] : "NULL");
    cr_assert(err[0] != '\0');
  }
}

static etcd_record sample(void) {
  etcd_record r = {
      .not_before = 1700000000, .not_after = 1900000000, .key_len = 32};
  snprintf(r.idb, sizeof(r.idb), "//m2m.example.com/cse-in");
  snprintf(r.ida, sizeof(r.ida), "//m2m.example.com/cse-in/Cae1");
  for (size_t i = 0; i < r.key_len; i++)
    r.key[i] = (uint8_t)(0xa0 + i);
  return r;
}

Test(etcd_record, round_trip_and_no_plaintext) {
  uint8_t kek[ETCD_KEK_BYTES], v[ETCD_VALUE_MAX];
  randombytes_buf(kek, sizeof(kek));
  etcd_record r = sample(), out;
  size_t n = etcd_record_encode(&r, "a@x.com", kek, v);
  cr_assert_gt(n, 0);
  cr_assert_null(memmem(v, n, r.key, r.key_len), "the key is in the clear");
  char err[256];
  cr_assert_eq(etcd_record_decode(v, n, "a@x.com", kek, &out, err, sizeof(err)),
               M2MPSK_OK, "%s", err);
  cr_assert_eq(out.key_len, r.key_len);
  cr_assert_eq(memcmp(out.key, r.key, r.key_len), 0);
  cr_assert_str_eq(out.idb, r.idb);
  cr_assert_str_eq(out.ida, r.ida);
  cr_assert_eq(out.not_before, r.not_before);
  cr_assert_eq(out.not_after, r.not_after);
  cr_assert_eq(out.revoked, 0);
  /* Without the KEK: the fields, no key. */
  cr_assert_eq(
      etcd_record_decode(v, n, "a@x.com", NULL, &out, err, sizeof(err)),
      M2MPSK_OK);
  cr_assert_eq(out.key_len, 0);
  cr_assert_str_eq(out.idb, r.idb);
  /* Two seals of one key differ (random nonces). */
  uint8_t v2[ETCD_VALUE_MAX];
  cr_assert_eq(etcd_record_encode(&r, "a@x.com", kek, v2), n);
  cr_assert_neq(memcmp(v, v2, n), 0);
}

Test(etcd_record, bound_to_kpsa_id_fields_and_kek) {
  uint8_t kek[ETCD_KEK_BYTES], other[ETCD_KEK_BYTES], v[ETCD_VALUE_MAX];
  randombytes_buf(kek, sizeof(kek));
  randombytes_buf(other, sizeof(other));
  etcd_record r = sample(), out;
  size_t n = etcd_record_encode(&r, "a@x.com", kek, v);
  char err[256];
  cr_assert_eq(etcd_record_decode(v, n, "b@x.com", kek, &out, err, sizeof(err)),
               M2MPSK_E_FAILED);
  cr_assert_eq(out.key_len, 0);
  cr_assert_eq(
      etcd_record_decode(v, n, "a@x.com", other, &out, err, sizeof(err)),
      M2MPSK_E_FAILED);
  cr_assert(strstr(err, "does not open") != NULL, "%s", err);
  /* Every single-bit change anywhere is refused: never a record that
   * decodes to other values. */
  for (size_t i = 0; i < n; i++) {
    for (int bit = 0; bit < 8; bit += 3) {
      v[i] ^= (uint8_t)(1 << bit);
      int rc = etcd_record_decode(v, n, "a@x.com", kek, &out, err, sizeof(err));
      cr_assert(rc == M2MPSK_E_FAILED || rc == M2MPSK_E_PROTOCOL,
                "byte %zu bit %d: %d", i, bit, rc);
      cr_assert_eq(out.key_len, 0);
      v[i] ^= (uint8_t)(1 << bit);
    }
  }
  /* Every truncation is a layout error or does not open. */
  for (size_t len = 0; len < n; len++) {
    int rc = etcd_record_decode(v, len, "a@x.com", kek, &out, err, sizeof(err));
    cr_assert(rc == M2MPSK_E_FAILED || rc == M2MPSK_E_PROTOCOL, "%zu", len);
  }
}

Test(etcd_record, revoked_records_carry_no_key) {
  etcd_record r = sample(), out;
  r.revoked = 1;
  r.ida[0] = '\0';
  uint8_t v[ETCD_VALUE_MAX];
  size_t n = etcd_record_encode(&r, "a@x.com", NULL, v);
  cr_assert_gt(n, 0);
  cr_assert_null(memmem(v, n, r.key, 4));
  char err[256];
  cr_assert_eq(
      etcd_record_decode(v, n, "a@x.com", NULL, &out, err, sizeof(err)),
      M2MPSK_OK, "%s", err);
  cr_assert_eq(out.revoked, 1);
  cr_assert_str_eq(out.ida, "");
  /* An active record cannot be sealed without a KEK, nor with a key of a
   * bad length. */
  r.revoked = 0;
  cr_assert_eq(etcd_record_encode(&r, "a@x.com", NULL, v), 0);
  uint8_t kek[ETCD_KEK_BYTES] = {1};
  r.key_len = 8;
  cr_assert_eq(etcd_record_encode(&r, "a@x.com", kek, v), 0);
  /* Unknown versions and states are layout errors. */
  r = sample();
  n = etcd_record_encode(&r, "a@x.com", kek, v);
  v[0] = 2;
  cr_assert_eq(etcd_record_decode(v, n, "a@x.com", kek, &out, err, sizeof(err)),
               M2MPSK_E_PROTOCOL);
  v[0] = 1;
  v[1] = 7;
  cr_assert_eq(etcd_record_decode(v, n, "a@x.com", kek, &out, err, sizeof(err)),
               M2MPSK_E_PROTOCOL);
}

static void write_file(const char *path, const char *text, mode_t mode) {
  unlink(path);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  fchmod(fd, mode);
  close(fd);
}

Test(etcd_record, kek_files) {
  char dir[] = "/tmp/m2mpsk-kek-XXXXXX", path[64];
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/kek", dir);
  uint8_t kek[ETCD_KEK_BYTES];
  char err[256];
  write_file(path,
             "hex:000102030405060708090a0b0c0d0e0f"
             "101112131415161718191a1b1c1d1e1f\n",
             0600);
  cr_assert_eq(etcd_kek_load(path, kek, err, sizeof(err)), M2MPSK_OK, "%s",
               err);
  cr_assert_eq(kek[0], 0);
  cr_assert_eq(kek[31], 0x1f);
  write_file(path, "base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", 0400);
  cr_assert_eq(etcd_kek_load(path, kek, err, sizeof(err)), M2MPSK_OK, "%s",
               err);
  cr_assert_eq(kek[31], 0x1f);
  static const char *bad[] = {"", "hex:00", "0001020304", "base64:AAEC",
                              "hex:000102030405060708090a0b0c0d0e0f"
                              "101112131415161718191a1b1c1d1e1g"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    write_file(path, bad[i], 0600);
    cr_assert_eq(etcd_kek_load(path, kek, err, sizeof(err)), M2MPSK_E_IO, "%s",
                 bad[i]);
    cr_assert(strstr(err, "malformed") != NULL, "%s", err);
  }
  write_file(path,
             "hex:000102030405060708090a0b0c0d0e0f"
             "101112131415161718191a1b1c1d1e1f\n",
             0640);
  cr_assert_eq(etcd_kek_load(path, kek, err, sizeof(err)), M2MPSK_E_IO);
  cr_assert(strstr(err, "chmod 600") != NULL, "%s", err);
  unlink(path);
  cr_assert_eq(etcd_kek_load(path, kek, err, sizeof(err)), M2MPSK_E_IO);
  cr_assert_eq(etcd_kek_load(dir, kek, err, sizeof(err)), M2MPSK_E_IO);
  cr_assert_eq(etcd_kek_load(NULL, kek, err, sizeof(err)), M2MPSK_E_IO);
  rmdir(dir);
}
