/* Identifier syntax: KpsaID, IdA, IdB, Credential-ID, SNI host. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "identity.h"
#include "internal.h"

typedef struct {
  const char *s;
  int rc;
} id_case;

#define NCASES(t) (sizeof(t) / sizeof((t)[0]))

/* A string of `n` copies of `c`, prefixed and suffixed. Caller frees. */
static char *build(const char *prefix, char c, size_t n, const char *suffix) {
  size_t lp = strlen(prefix), ls = strlen(suffix);
  char *s = malloc(lp + n + ls + 1);
  cr_assert_not_null(s);
  memcpy(s, prefix, lp);
  memset(s + lp, c, n);
  memcpy(s + lp + n, suffix, ls + 1);
  return s;
}

/* ---- KpsaID -------------------------------------------------------------- */

static const id_case kpsa_cases[] = {
    {"test@onem2m.com", M2MPSK_OK},
    {"a@b", M2MPSK_OK},
    {"A.b_c-d9@x-y.Example.COM", M2MPSK_OK},
    {"dev.001@m2m.sp1.example", M2MPSK_OK},
    {"1@2.3", M2MPSK_OK},
    {"...@x.y", M2MPSK_OK},
    {"", M2MPSK_E_KPSA_ID},
    {"test", M2MPSK_E_KPSA_ID},
    {"@onem2m.com", M2MPSK_E_KPSA_ID},
    {"test@", M2MPSK_E_KPSA_ID},
    {"te st@onem2m.com", M2MPSK_E_KPSA_ID},
    {"te~st@onem2m.com", M2MPSK_E_KPSA_ID},
    {"a/b@onem2m.com", M2MPSK_E_KPSA_ID},
    {"a+b@onem2m.com", M2MPSK_E_KPSA_ID},
    {"a@@onem2m.com", M2MPSK_E_KPSA_ID},
    {"a@b@onem2m.com", M2MPSK_E_KPSA_ID},
    {"a@-onem2m.com", M2MPSK_E_KPSA_ID},
    {"a@onem2m-.com", M2MPSK_E_KPSA_ID},
    {"a@onem2m..com", M2MPSK_E_KPSA_ID},
    {"a@.onem2m.com", M2MPSK_E_KPSA_ID},
    {"a@onem2m.com.", M2MPSK_E_KPSA_ID},
    {"a@one_m2m.com", M2MPSK_E_KPSA_ID},
    {"a@one m2m.com", M2MPSK_E_KPSA_ID},
    {"a@onem2m.com\n", M2MPSK_E_KPSA_ID},
    {"\xc3\xa9@onem2m.com", M2MPSK_E_KPSA_ID},
    {"a@\xc3\xa9.com", M2MPSK_E_KPSA_ID},
};

Test(identity, kpsa_id_table) {
  for (size_t i = 0; i < NCASES(kpsa_cases); i++) {
    cr_expect_eq(m2mpsk_kpsa_id_validate(kpsa_cases[i].s), kpsa_cases[i].rc,
                 "KpsaID \"%s\"", kpsa_cases[i].s);
  }
}

Test(identity, kpsa_id_null_is_invalid) {
  cr_assert_eq(m2mpsk_kpsa_id_validate(NULL), M2MPSK_E_INVALID);
}

Test(identity, kpsa_id_length_boundary) {
  /* "aaa...@example.com": 12 bytes of suffix. */
  char *ok = build("", 'a', 128 - 12, "@example.com");
  char *over = build("", 'a', 129 - 12, "@example.com");
  cr_assert_eq(strlen(ok), 128);
  cr_assert_eq(m2mpsk_kpsa_id_validate(ok), M2MPSK_OK);
  cr_assert_eq(m2mpsk_kpsa_id_validate(over), M2MPSK_E_KPSA_ID_LENGTH);
  free(ok);
  free(over);
}

Test(identity, kpsa_id_length_checked_before_syntax) {
  char *s = build("", ' ', 300, "");
  cr_assert_eq(m2mpsk_kpsa_id_validate(s), M2MPSK_E_KPSA_ID_LENGTH);
  free(s);
}

Test(identity, kpsa_id_unterminated_is_not_overread) {
  /* No NUL anywhere: the scan must stop after 129 bytes. */
  char *s = malloc(129);
  cr_assert_not_null(s);
  memset(s, 'a', 129);
  cr_assert_eq(m2mpsk_kpsa_id_validate(s), M2MPSK_E_KPSA_ID_LENGTH);
  free(s);
}

Test(identity, kpsa_id_label_limit) {
  char *ok = build("a@", 'b', 63, ".com");
  char *bad = build("a@", 'b', 64, ".com");
  cr_assert_eq(m2mpsk_kpsa_id_validate(ok), M2MPSK_OK);
  cr_assert_eq(m2mpsk_kpsa_id_validate(bad), M2MPSK_E_KPSA_ID);
  free(ok);
  free(bad);
}

/* ---- IdB ---------------------------------------------------------------- */

static const id_case idb_cases[] = {
    {"/cse-1", M2MPSK_OK},
    {"/CSE_1.x~y", M2MPSK_OK},
    {"/in-cse", M2MPSK_OK},
    {"//m2m.example.com/cse-1", M2MPSK_OK},
    {"//M2M.Example.COM/in-cse", M2MPSK_OK},
    {"//localhost/cse", M2MPSK_OK},
    {"//a-1.b-2.c/x", M2MPSK_OK},
    {"", M2MPSK_E_IDB},
    {"cse-1", M2MPSK_E_IDB},
    {"/", M2MPSK_E_IDB},
    {"//", M2MPSK_E_IDB},
    {"///cse", M2MPSK_E_IDB},
    {"/cse-1/", M2MPSK_E_IDB},
    {"/cse-1/C123", M2MPSK_E_IDB},
    {"/cse-1//x", M2MPSK_E_IDB},
    {"/cse 1", M2MPSK_E_IDB},
    {"/cse%201", M2MPSK_E_IDB},
    {"/cse?x", M2MPSK_E_IDB},
    {"/cse@x", M2MPSK_E_IDB},
    {"//m2m.example.com", M2MPSK_E_IDB},
    {"//m2m.example.com/", M2MPSK_E_IDB},
    {"//m2m.example.com/cse/", M2MPSK_E_IDB},
    {"//m2m.example.com/cse/C1", M2MPSK_E_IDB},
    {"//m2m.example.com//cse", M2MPSK_E_IDB},
    {"//-m2m.example.com/cse", M2MPSK_E_IDB},
    {"//m2m-.example.com/cse", M2MPSK_E_IDB},
    {"//m2m..example.com/cse", M2MPSK_E_IDB},
    {"//m2m_x.example.com/cse", M2MPSK_E_IDB},
    {"//m2m.example.com./cse", M2MPSK_E_IDB},
    {"//m2m.example.com:8443/cse", M2MPSK_E_IDB},
    {"//user@m2m.example.com/cse", M2MPSK_E_IDB},
    {" /cse", M2MPSK_E_IDB},
    {"/cse\n", M2MPSK_E_IDB},
};

Test(identity, idb_table) {
  for (size_t i = 0; i < NCASES(idb_cases); i++) {
    cr_expect_eq(m2mpsk_idb_validate(idb_cases[i].s), idb_cases[i].rc,
                 "IdB \"%s\"", idb_cases[i].s);
  }
}

Test(identity, idb_null_is_invalid) {
  cr_assert_eq(m2mpsk_idb_validate(NULL), M2MPSK_E_INVALID);
}

Test(identity, idb_length_boundary) {
  char *ok = build("/", 'c', 511, "");
  char *over = build("/", 'c', 512, "");
  cr_assert_eq(m2mpsk_idb_validate(ok), M2MPSK_OK);
  cr_assert_eq(m2mpsk_idb_validate(over), M2MPSK_E_ID_LENGTH);
  /* Length is checked first, whatever the shape. */
  char *junk = build("", '?', 600, "");
  cr_assert_eq(m2mpsk_idb_validate(junk), M2MPSK_E_ID_LENGTH);
  free(ok);
  free(over);
  free(junk);
}

Test(identity, idb_fqdn_length_limit) {
  /* Four labels of 63 plus one of 1: 4 * 64 - 1 + 2 = 257; build exactly
   * 253 and 254 bytes instead. */
  char fqdn[300];
  size_t n = 0;
  for (int i = 0; i < 3; i++) {
    memset(fqdn + n, 'a', 63);
    n += 63;
    fqdn[n++] = '.';
  }
  memset(fqdn + n, 'b', 61); /* 3 * 64 + 61 = 253 */
  n += 61;
  fqdn[n] = '\0';
  cr_assert_eq(strlen(fqdn), 253);
  char id[320];
  snprintf(id, sizeof(id), "//%s/cse", fqdn);
  cr_assert_eq(m2mpsk_idb_validate(id), M2MPSK_OK);
  char host[254];
  cr_assert_eq(m2mpsk_idb_server_name(id, host, sizeof(host)), M2MPSK_OK);
  cr_assert_str_eq(host, fqdn);

  fqdn[n++] = 'b';
  fqdn[n] = '\0';
  snprintf(id, sizeof(id), "//%s/cse", fqdn);
  cr_assert_eq(m2mpsk_idb_validate(id), M2MPSK_E_IDB);
}

/* ---- IdA ---------------------------------------------------------------- */

static const id_case ida_cases[] = {
    {"/cse-1", M2MPSK_OK},
    {"//m2m.example.com/cse-1", M2MPSK_OK},
    {"/cse-1/C123", M2MPSK_OK},
    {"/cse-1/Cae.x~y_z-1", M2MPSK_OK},
    {"/S123", M2MPSK_OK},
    {"//m2m.example.com/cse-1/C123", M2MPSK_OK},
    {"//m2m.example.com/Sabc", M2MPSK_OK},
    {"", M2MPSK_E_IDA},
    {"C123", M2MPSK_E_IDA},
    {"S123", M2MPSK_E_IDA},
    {"cse-1/C123", M2MPSK_E_IDA},
    {"/", M2MPSK_E_IDA},
    {"//m2m.example.com", M2MPSK_E_IDA},
    {"//m2m.example.com/", M2MPSK_E_IDA},
    {"/cse-1/S123", M2MPSK_E_IDA},
    {"/cse-1/abc", M2MPSK_E_IDA},
    {"/cse-1/c123", M2MPSK_E_IDA},
    {"/cse-1/C123/x", M2MPSK_E_IDA},
    {"/cse-1/C123/", M2MPSK_E_IDA},
    {"/cse-1//C123", M2MPSK_E_IDA},
    {"/cse-1/", M2MPSK_E_IDA},
    {"/cse-1/C 1", M2MPSK_E_IDA},
    {"//m2m.example.com/cse/C1/extra", M2MPSK_E_IDA},
    {"//m2m.example.com/cse/S1", M2MPSK_E_IDA},
    {"//bad_host/cse/C1", M2MPSK_E_IDA},
    {"///cse/C1", M2MPSK_E_IDA},
};

Test(identity, ida_table) {
  for (size_t i = 0; i < NCASES(ida_cases); i++) {
    cr_expect_eq(m2mpsk_ida_validate(ida_cases[i].s), ida_cases[i].rc,
                 "IdA \"%s\"", ida_cases[i].s);
  }
}

Test(identity, ida_null_is_invalid) {
  cr_assert_eq(m2mpsk_ida_validate(NULL), M2MPSK_E_INVALID);
}

Test(identity, ida_length_boundary) {
  char *ok = build("/cse/C", 'x', 512 - 6, "");
  char *over = build("/cse/C", 'x', 513 - 6, "");
  cr_assert_eq(strlen(ok), 512);
  cr_assert_eq(m2mpsk_ida_validate(ok), M2MPSK_OK);
  cr_assert_eq(m2mpsk_ida_validate(over), M2MPSK_E_ID_LENGTH);
  free(ok);
  free(over);
}

Test(identity, every_valid_idb_is_a_valid_ida) {
  for (size_t i = 0; i < NCASES(idb_cases); i++) {
    if (idb_cases[i].rc == M2MPSK_OK)
      cr_expect_eq(m2mpsk_ida_validate(idb_cases[i].s), M2MPSK_OK, "%s",
                   idb_cases[i].s);
  }
}

/* ---- SNI host ----------------------------------------------------------- */

Test(identity, server_name_from_absolute_idb_is_lower_case) {
  char out[254];
  cr_assert_eq(
      m2mpsk_idb_server_name("//M2M.Example.COM/cse-1", out, sizeof(out)),
      M2MPSK_OK);
  cr_assert_str_eq(out, "m2m.example.com");
}

Test(identity, server_name_exact_buffer_fits) {
  char out[16];
  /* "m2m.example.com" is 15 bytes: 16 fit, 15 do not. */
  cr_assert_eq(m2mpsk_idb_server_name("//m2m.example.com/cse", out, 16),
               M2MPSK_OK);
  cr_assert_str_eq(out, "m2m.example.com");
  cr_assert_eq(m2mpsk_idb_server_name("//m2m.example.com/cse", out, 15),
               M2MPSK_E_BUFFER);
  cr_assert_eq(out[0], '\0');
  cr_assert_eq(m2mpsk_idb_server_name("//m2m.example.com/cse", out, 0),
               M2MPSK_E_BUFFER);
}

Test(identity, server_name_sp_relative_is_not_found) {
  char out[254];
  cr_assert_eq(m2mpsk_idb_server_name("/cse-1", out, sizeof(out)),
               M2MPSK_E_NOT_FOUND);
}

Test(identity, server_name_is_never_an_address_literal) {
  char out[64];
  cr_assert_eq(m2mpsk_idb_validate("//192.0.2.1/cse-1"), M2MPSK_OK);
  cr_assert_eq(m2mpsk_idb_server_name("//192.0.2.1/cse-1", out, sizeof(out)),
               M2MPSK_E_NOT_FOUND);
  /* A digit-led label before a real TLD is a host name. */
  cr_assert_eq(m2mpsk_idb_server_name("//1und1.de/cse-1", out, sizeof(out)),
               M2MPSK_OK);
  cr_assert_str_eq(out, "1und1.de");
}

Test(identity, server_name_rejects_bad_idb) {
  char out[254];
  cr_assert_eq(m2mpsk_idb_server_name("m2m.example.com", out, sizeof(out)),
               M2MPSK_E_IDB);
  /* An AE-ID is not an IdB. */
  cr_assert_eq(
      m2mpsk_idb_server_name("//m2m.example.com/cse/C1", out, sizeof(out)),
      M2MPSK_E_IDB);
  char *over = build("//m2m.example.com/", 'c', 600, "");
  cr_assert_eq(m2mpsk_idb_server_name(over, out, sizeof(out)),
               M2MPSK_E_ID_LENGTH);
  free(over);
}

Test(identity, server_name_null_is_invalid) {
  char out[8];
  cr_assert_eq(m2mpsk_idb_server_name(NULL, out, sizeof(out)),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_idb_server_name("//a.b/c", NULL, 8), M2MPSK_E_INVALID);
}

/* ---- internal helpers --------------------------------------------------- */

Test(identity, credential_id_is_type_12) {
  char out[M2MPSK_CREDENTIAL_ID_MAX + 1];
  cr_assert_eq(m2mpsk_credential_id("test@onem2m.com", out, sizeof(out)),
               M2MPSK_OK);
  cr_assert_str_eq(out, "12-test@onem2m.com");
  cr_assert_eq(m2mpsk_credential_id("test@onem2m.com", out, 18),
               M2MPSK_E_BUFFER);
  cr_assert_eq(m2mpsk_credential_id("test@onem2m.com", out, 19), M2MPSK_OK);
  cr_assert_eq(m2mpsk_credential_id("bad", out, sizeof(out)), M2MPSK_E_KPSA_ID);
  cr_assert_eq(m2mpsk_credential_id(NULL, out, sizeof(out)), M2MPSK_E_INVALID);

  char *max = build("", 'k', 128 - 4, "@a.b");
  cr_assert_eq(m2mpsk_credential_id(max, out, sizeof(out)), M2MPSK_OK);
  cr_assert_eq(strlen(out), M2MPSK_CREDENTIAL_ID_MAX);
  free(max);
}

