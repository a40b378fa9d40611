/* oneM2M request checks and key derivation: the originator check (TS-0004
 * §7.3.2.1, TS-0003 §7.2.1) case by case, and Kpsa derivation (TS-0003
 * §10.3.3) against a vector computed outside this library. */
#include <criterion/criterion.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "link.h"

#define NCASES(t) (sizeof(t) / sizeof((t)[0]))

#include "mlock_fake.h"

/* The receiving CSE, absolute and SP-relative. */
#define LOCAL_ABS "//m2m.example.com/cse-in"
#define LOCAL_REL "/cse-in"
#define CRED "12-test@onem2m.com"

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

/* ---- originator check: verdicts ---------------------------------------- */

enum {
  ACCEPT = M2MPSK_ORIGINATOR_ACCEPT,
  E4106 = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED,
  E4107 = M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED,
  CREATE = M2MPSK_ORIGINATOR_AE_CREATE,
  UNSECURED = M2MPSK_ORIGINATOR_ALLOW_UNSECURED_AE
};

typedef struct {
  m2mpsk_peer_kind kind;
  const char *bound;
  const char *local;
  const char *from;
  unsigned flags;
  int verdict;
} verdict_case;

static const verdict_case verdict_cases[] = {
    /* Registree AE with a C-type AE-ID, bound SP-relative. */
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/cse-in/Cae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "//m2m.example.com/cse-in/Cae1",
     0, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "//M2M.Example.COM/cse-in/Cae1",
     0, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS,
     "//other.example.com/cse-in/Cae1", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae2", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae10", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/cse-in/CAE1", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/CSE-IN/Cae1", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/cse-mn/Cae1", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/cse-in", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, LOCAL_ABS, 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Sae1", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, NULL, 0, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "", 0, E4106},
    /* Registration (TD_M2M_SE_01: From = the AE-ID). A known AE must
     * present its AE-ID; it may not ask for a new one. */
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", CREATE, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, NULL, CREATE, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "C", CREATE, E4106},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae2", CREATE, E4106},
    /* The unsecured-AE policy changes nothing inside an association. */
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae2", UNSECURED, E4106},
    /* Bound absolute: SP-relative forms match through local_id's SP-ID. */
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1", LOCAL_ABS, "Cae1", 0,
     ACCEPT},
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1", LOCAL_ABS, "/cse-in/Cae1",
     0, ACCEPT},
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1", LOCAL_ABS,
     "//m2m.example.com/cse-in/Cae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1", LOCAL_ABS,
     "//other.example.com/cse-in/Cae1", 0, E4106},
    /* An SP-relative local_id gives no SP-ID: absolute never equals
     * SP-relative, absolute equals absolute. */
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1", LOCAL_REL, "/cse-in/Cae1",
     0, E4106},
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1", LOCAL_REL, "Cae1", 0,
     E4106},
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in/Cae1", LOCAL_REL,
     "//m2m.example.com/cse-in/Cae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_REL, "Cae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_REL, "/cse-in/Cae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_REL, "//m2m.example.com/cse-in/Cae1",
     0, E4106},
    /* A bare C-stem is under the receiving CSE, not the bound AE's CSE. */
    {M2MPSK_PEER_AE, "/cse-mn/Cae1", LOCAL_ABS, "Cae1", 0, E4106},
    {M2MPSK_PEER_AE, "/cse-mn/Cae1", LOCAL_ABS, "/cse-mn/Cae1", 0, ACCEPT},

    /* Registree AE with an S-type AE-ID (SP-wide, no CSE). */
    {M2MPSK_PEER_AE, "/Sae1", LOCAL_ABS, "Sae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/Sae1", LOCAL_ABS, "/Sae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/Sae1", LOCAL_ABS, "//m2m.example.com/Sae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "/Sae1", LOCAL_ABS, "//other.example.com/Sae1", 0, E4106},
    {M2MPSK_PEER_AE, "/Sae1", LOCAL_ABS, "Sae2", 0, E4106},
    {M2MPSK_PEER_AE, "/Sae1", LOCAL_ABS, "Cae1", 0, E4106},
    {M2MPSK_PEER_AE, "/Sae1", LOCAL_ABS, "/cse-in/Cae1", 0, E4106},
    {M2MPSK_PEER_AE, "//m2m.example.com/Sae1", LOCAL_ABS, "Sae1", 0, ACCEPT},
    {M2MPSK_PEER_AE, "//m2m.example.com/Sae1", LOCAL_REL, "Sae1", 0, E4106},
    {M2MPSK_PEER_AE, "//m2m.example.com/Sae1", LOCAL_REL,
     "//m2m.example.com/Sae1", 0, ACCEPT},

    /* Registree CSE: itself, and AE-IDs under it. */
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-mn", 0, ACCEPT},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "//m2m.example.com/cse-mn", 0,
     ACCEPT},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-mn/Cae7", 0, ACCEPT},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "//m2m.example.com/cse-mn/Cae7", 0,
     ACCEPT},
    {M2MPSK_PEER_CSE, "//m2m.example.com/cse-mn", LOCAL_ABS, "/cse-mn", 0,
     ACCEPT},
    {M2MPSK_PEER_CSE, "//m2m.example.com/cse-mn", LOCAL_ABS, "/cse-mn/Cae7", 0,
     ACCEPT},
    /* S-type AE-IDs name no CSE: accepted within the Registree's SP. */
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "Sae7", 0, ACCEPT},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/Sae7", 0, ACCEPT},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "//m2m.example.com/Sae7", 0,
     ACCEPT},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "//other.example.com/Sae7", 0,
     E4106},
    /* Another CSE, or a C-type AE-ID under another CSE. */
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-mn2", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-m", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/CSE-MN", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-asn", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-in", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, LOCAL_ABS, 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "//other.example.com/cse-mn", 0,
     E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-asn/Cae7", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-in/Cae7", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "//other.example.com/cse-mn/Cae7",
     0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "Cae7", 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, NULL, 0, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, NULL, CREATE, E4106},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-asn", UNSECURED, E4106},
    {M2MPSK_PEER_CSE, "//m2m.example.com/cse-mn", LOCAL_REL, "/cse-mn", 0,
     E4106},
    /* A CSE-ID that starts with 'S' is still the bound CSE; any other
     * one-segment 'S' identifier reads as an S-type AE-ID. */
    {M2MPSK_PEER_CSE, "/Sgw", LOCAL_ABS, "/Sgw", 0, ACCEPT},
    {M2MPSK_PEER_CSE, "/Sgw", LOCAL_ABS, "/Sgw/Cae1", 0, ACCEPT},
    {M2MPSK_PEER_CSE, "/Sgw", LOCAL_ABS, "/Sgw2", 0, ACCEPT},
    {M2MPSK_PEER_CSE, "/Sgw", LOCAL_ABS, "/gw2", 0, E4106},

    /* No association: CSE-IDs need one; AEs too, unless policy allows. */
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "/cse-mn", 0, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "//m2m.example.com/cse-mn", 0, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "/cse-mn", UNSECURED, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "/cse-mn", CREATE | UNSECURED, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "Cae1", 0, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "Cae1", UNSECURED, ACCEPT},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "/cse-in/Cae1", 0, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "/cse-in/Cae1", UNSECURED, ACCEPT},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "/Sae1", 0, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "/Sae1", UNSECURED, ACCEPT},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "Sae1", UNSECURED, ACCEPT},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, NULL, CREATE, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "", CREATE, E4107},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, NULL, CREATE | UNSECURED, ACCEPT},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "C", CREATE | UNSECURED, ACCEPT},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, NULL, UNSECURED, E4106},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, NULL, 0, E4106},

    /* Credential-ID binding: the AE-ID is not known yet, so only an AE
     * registration passes, asking for or naming an AE-ID of this CSE. */
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, NULL, CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "C", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "S", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "Cae1", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "Sae1", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "/Sae1", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "//m2m.example.com/Sae1", CREATE,
     ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "//other.example.com/Sae1",
     CREATE, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "/cse-in/Cae1", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "//m2m.example.com/cse-in/Cae1",
     CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "/cse-mn/Cae1", CREATE, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "/cse-mn", CREATE, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "/cse-in", CREATE, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "Cae1", 0, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "Cae1", UNSECURED, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, "/cse-in/Cae1", 0, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, NULL, 0, E4106},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_REL, "/cse-in/Cae1", CREATE, ACCEPT},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_REL, "//m2m.example.com/cse-in/Cae1",
     CREATE, E4106},
};

static const char *str(const char *s) {
  return s != NULL ? s : "(null)";
}

Test(onem2m, originator_verdict_table) {
  for (size_t i = 0; i < NCASES(verdict_cases); i++) {
    const verdict_case *c = &verdict_cases[i];
    m2mpsk_originator_verdict v = (m2mpsk_originator_verdict)-1;
    int rc = m2mpsk_originator_check(c->kind, c->bound, c->local, c->from,
                                     c->flags, &v);
    cr_expect_eq(rc, M2MPSK_OK, "case %zu: status %d", i, rc);
    cr_expect_eq((int)v, c->verdict,
                 "case %zu: kind %d bound %s local %s from %s flags %u: "
                 "verdict %d, want %d",
                 i, (int)c->kind, str(c->bound), c->local, str(c->from),
                 c->flags, (int)v, c->verdict);
  }
}

Test(onem2m, verdicts_are_the_onem2m_response_status_codes) {
  cr_assert_eq(M2MPSK_ORIGINATOR_ACCEPT, 0);
  cr_assert_eq(M2MPSK_ORIGINATOR_NOT_AUTHENTICATED, 4106);
  cr_assert_eq(M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED, 4107);
}

/* ---- originator check: errors ------------------------------------------ */

typedef struct {
  m2mpsk_peer_kind kind;
  const char *bound;
  const char *local;
  const char *from;
  unsigned flags;
  int rc;
} error_case;

static const error_case error_cases[] = {
    /* Arguments. */
    {M2MPSK_PEER_AE, "/cse-in/Cae1", NULL, "Cae1", 0, M2MPSK_E_INVALID},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 4, M2MPSK_E_INVALID},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0x80000000u,
     M2MPSK_E_INVALID},
    {(m2mpsk_peer_kind)4, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0,
     M2MPSK_E_INVALID},
    {(m2mpsk_peer_kind)-1, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0,
     M2MPSK_E_INVALID},
    {M2MPSK_PEER_NONE, "/cse-in/Cae1", LOCAL_ABS, "Cae1", 0, M2MPSK_E_INVALID},
    {M2MPSK_PEER_AE, NULL, LOCAL_ABS, "Cae1", 0, M2MPSK_E_INVALID},
    {M2MPSK_PEER_CSE, NULL, LOCAL_ABS, "/cse-mn", 0, M2MPSK_E_INVALID},
    {M2MPSK_PEER_CREDENTIAL, NULL, LOCAL_ABS, NULL, CREATE, M2MPSK_E_INVALID},
    /* local_id must be a CSE-ID. */
    {M2MPSK_PEER_AE, "/cse-in/Cae1", "/cse-in/Cae1", "Cae1", 0, M2MPSK_E_IDB},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", "cse-in", "Cae1", 0, M2MPSK_E_IDB},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", "", "Cae1", 0, M2MPSK_E_IDB},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", "//m2m.example.com", "Cae1", 0,
     M2MPSK_E_IDB},
    {M2MPSK_PEER_NONE, NULL, "\xff\xfe", "/cse-mn", 0, M2MPSK_E_IDB},
    /* bound_id must have its kind's form. */
    {M2MPSK_PEER_AE, "/cse-in", LOCAL_ABS, "Cae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "//m2m.example.com/cse-in", LOCAL_ABS, "Cae1", 0,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "Cae1", LOCAL_ABS, "Cae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Sae1", LOCAL_ABS, "Sae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, CRED, LOCAL_ABS, "Cae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "", LOCAL_ABS, "Cae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_CSE, "/cse-in/Cae1", LOCAL_ABS, "/cse-in", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_CSE, "cse-mn", LOCAL_ABS, "/cse-mn", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_CSE, "/cse mn", LOCAL_ABS, "/cse-mn", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_CREDENTIAL, "test@onem2m.com", LOCAL_ABS, NULL, CREATE,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_CREDENTIAL, "13-test@onem2m.com", LOCAL_ABS, NULL, CREATE,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_CREDENTIAL, "/cse-in/Cae1", LOCAL_ABS, NULL, CREATE,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_CREDENTIAL, "12-", LOCAL_ABS, NULL, CREATE, M2MPSK_E_KPSA_ID},
    {M2MPSK_PEER_CREDENTIAL, "12-test", LOCAL_ABS, NULL, CREATE,
     M2MPSK_E_KPSA_ID},
    {M2MPSK_PEER_CREDENTIAL, "12-te st@onem2m.com", LOCAL_ABS, NULL, CREATE,
     M2MPSK_E_KPSA_ID},
    /* Malformed From. */
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "ae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "cae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae 1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "C/ae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "Cae1\n", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "C\xc3\xa9", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/cse-in/Sae1", 0,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/cse-in/Cae1/x", 0,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/cse-in/", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "/", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "//m2m.example.com", 0,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_AE, "/cse-in/Cae1", LOCAL_ABS, "//bad_host/cse-in/Cae1", 0,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_NONE, NULL, LOCAL_ABS, "12-test@onem2m.com", UNSECURED,
     M2MPSK_E_IDA},
    {M2MPSK_PEER_CSE, "/cse-mn", LOCAL_ABS, "/cse-mn//Cae1", 0, M2MPSK_E_IDA},
    {M2MPSK_PEER_CREDENTIAL, CRED, LOCAL_ABS, " C", CREATE, M2MPSK_E_IDA},
};

Test(onem2m, originator_error_table) {
  for (size_t i = 0; i < NCASES(error_cases); i++) {
    const error_case *c = &error_cases[i];
    m2mpsk_originator_verdict v = M2MPSK_ORIGINATOR_ACCEPT;
    int rc = m2mpsk_originator_check(c->kind, c->bound, c->local, c->from,
                                     c->flags, &v);
    cr_expect_eq(rc, c->rc,
                 "case %zu: kind %d bound %s local %s from %s flags %u: "
                 "status %d, want %d",
                 i, (int)c->kind, str(c->bound), str(c->local), str(c->from),
                 c->flags, rc, c->rc);
    /* A caller that ignores the status still refuses. */
    cr_expect_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED, "case %zu", i);
  }
}

Test(onem2m, originator_null_verdict_is_invalid) {
  cr_assert_eq(m2mpsk_originator_check(M2MPSK_PEER_AE, "/cse-in/Cae1",
                                       LOCAL_ABS, "Cae1", 0, NULL),
               M2MPSK_E_INVALID);
}

/* Every identifier argument is bounded by M2MPSK_ID_MAX, and is not read
 * past it even without a terminator. */
Test(onem2m, originator_oversized_identities) {
  m2mpsk_originator_verdict v;
  char *ok = build("/cse-in/C", 'x', M2MPSK_ID_MAX - 9, "");
  char *long_ae = build("/cse-in/C", 'x', M2MPSK_ID_MAX - 8, "");
  char *long_cse = build("/", 'c', M2MPSK_ID_MAX, "");
  char *long_stem = build("C", 'x', M2MPSK_ID_MAX, "");
  char *junk = build("", '?', 4 * M2MPSK_ID_MAX, "");
  cr_assert_eq(strlen(ok), M2MPSK_ID_MAX);
  cr_assert_eq(strlen(long_ae), M2MPSK_ID_MAX + 1);

  /* At the limit: fine, and equal to itself. */
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_AE, ok, LOCAL_ABS, ok, 0, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);

  const char *ids[] = {long_ae, long_cse, long_stem, junk};
  for (size_t i = 0; i < NCASES(ids); i++) {
    v = M2MPSK_ORIGINATOR_ACCEPT;
    cr_expect_eq(m2mpsk_originator_check(M2MPSK_PEER_AE, "/cse-in/Cae1",
                                         LOCAL_ABS, ids[i], 0, &v),
                 M2MPSK_E_ID_LENGTH, "from %zu", i);
    cr_expect_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
    cr_expect_eq(m2mpsk_originator_check(M2MPSK_PEER_NONE, NULL, ids[i],
                                         "/cse-mn", 0, &v),
                 M2MPSK_E_ID_LENGTH, "local %zu", i);
    cr_expect_eq(m2mpsk_originator_check(M2MPSK_PEER_AE, ids[i], LOCAL_ABS,
                                         "Cae1", 0, &v),
                 M2MPSK_E_ID_LENGTH, "bound %zu", i);
  }
  cr_expect_eq(m2mpsk_originator_check(M2MPSK_PEER_CSE, long_cse, LOCAL_ABS,
                                       "/cse-mn", 0, &v),
               M2MPSK_E_ID_LENGTH);

  /* A Credential-ID's KpsaID is bounded by M2MPSK_KPSA_ID_MAX. */
  char *cred_ok = build("12-", 'k', M2MPSK_KPSA_ID_MAX - 4, "@a.b");
  char *cred_long = build("12-", 'k', M2MPSK_KPSA_ID_MAX - 3, "@a.b");
  cr_assert_eq(m2mpsk_originator_check(M2MPSK_PEER_CREDENTIAL, cred_ok,
                                       LOCAL_ABS, NULL, CREATE, &v),
               M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(m2mpsk_originator_check(M2MPSK_PEER_CREDENTIAL, cred_long,
                                       LOCAL_ABS, NULL, CREATE, &v),
               M2MPSK_E_KPSA_ID_LENGTH);
  cr_assert_eq(m2mpsk_originator_check(M2MPSK_PEER_CREDENTIAL, junk, LOCAL_ABS,
                                       NULL, CREATE, &v),
               M2MPSK_E_IDA);

  /* Unterminated buffers: the scan stops after M2MPSK_ID_MAX + 1 bytes. */
  char *raw = malloc(M2MPSK_ID_MAX + 1);
  cr_assert_not_null(raw);
  memset(raw, 'C', M2MPSK_ID_MAX + 1);
  cr_assert_eq(m2mpsk_originator_check(M2MPSK_PEER_AE, "/cse-in/Cae1",
                                       LOCAL_ABS, raw, 0, &v),
               M2MPSK_E_ID_LENGTH);
  raw[0] = '/';
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_NONE, NULL, raw, "/cse-mn", 0, &v),
      M2MPSK_E_ID_LENGTH);
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_CSE, raw, LOCAL_ABS, "/x", 0, &v),
      M2MPSK_E_ID_LENGTH);
  free(raw);
  free(ok);
  free(long_ae);
  free(long_cse);
  free(long_stem);
  free(junk);
  free(cred_ok);
  free(cred_long);
}

/* What a responder binds is what the check takes, unchanged. */
Test(onem2m, originator_check_takes_the_association_binding) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, NULL, NULL);
  m2mt_pair_start(&p, 0, 0);
  uint64_t now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.b), 1);
  m2mpsk_originator_verdict v;
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_CREDENTIAL, m2mpsk_assoc_peer_id(p.b),
                              m2mpsk_assoc_local_id(p.b), "C", CREATE, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_CREDENTIAL, m2mpsk_assoc_peer_id(p.b),
                              m2mpsk_assoc_local_id(p.b), "Cae1", 0, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  m2mt_pair_free(&p);

  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, 0, 0);
  now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);
  /* M2MT_IDA is "//m2m.example.com/cse-in/Cae1", M2MT_IDB its Registrar. */
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_AE, m2mpsk_assoc_peer_id(p.b),
                              m2mpsk_assoc_local_id(p.b), "Cae1", CREATE, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_AE, m2mpsk_assoc_peer_id(p.b),
                              m2mpsk_assoc_local_id(p.b), "Cforged", 0, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  m2mt_pair_free(&p);
}

/* m2mpsk_assoc_originator_check(): the same verdicts as the table's, with
 * the binding and local CSE-ID read from the association, and each status
 * it documents provoked. */
Test(onem2m, assoc_originator_check) {
  m2mt_pair p;
  m2mpsk_originator_verdict v = M2MPSK_ORIGINATOR_ACCEPT;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, NULL, NULL);
  /* Before the handshake: E_STATE, and the verdict fails closed. */
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "C", CREATE, &v),
               M2MPSK_E_STATE);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  m2mt_pair_start(&p, 0, 0);
  uint64_t now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(p.b), M2MPSK_STATE_ESTABLISHED);

  /* Credential-ID: only a registration, then the bound AE-ID. */
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "C", CREATE, &v), M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, NULL, CREATE, &v),
               M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "Cae1", 0, &v), M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, "//m2m.example.com/cse-in/Cae7"),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "Cae7", 0, &v), M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "/cse-in/Cae7", 0, &v),
               M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "Cae8", 0, &v), M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, NULL, 0, &v), M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED, "no From");

  /* Each documented status. */
  v = M2MPSK_ORIGINATOR_ACCEPT;
  cr_assert_eq(m2mpsk_assoc_originator_check(NULL, "Cae7", 0, &v),
               M2MPSK_E_INVALID);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "Cae7", 0, NULL),
               M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "Cae7", 0x100, &v),
               M2MPSK_E_INVALID, "an unknown flag");
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "ae1", 0, &v), M2MPSK_E_IDA);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "/cse-in/S1", 0, &v),
               M2MPSK_E_IDA);
  char *long_from = build("/cse-in/C", 'a', M2MPSK_ID_MAX, "");
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, long_from, 0, &v),
               M2MPSK_E_ID_LENGTH);
  free(long_from);
  /* An initiator without IdA has no CSE-ID to check against. */
  cr_assert_eq(m2mpsk_assoc_originator_check(p.a, M2MT_IDB, 0, &v),
               M2MPSK_E_IDB);
  m2mt_pair_free(&p);

  /* An AE initiator (IdA an AE-ID): E_IDB too. */
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, 0, 0);
  now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.a, M2MT_IDB, 0, &v),
               M2MPSK_E_IDB);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "Cae1", 0, &v), M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT, "bound to IdA over DTLS");
  m2mt_pair_free(&p);

  /* A Registree CSE as initiator checks what its Registrar sends. */
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key,
                 "//m2m.example.com/cse-mn", NULL);
  m2mt_pair_start(&p, 0, 0);
  now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.a, M2MT_IDB, 0, &v), M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.a, "//m2m.example.com/cse-x",
                                             0, &v),
               M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "/cse-mn", 0, &v),
               M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT, "the responder, bound to a CSE");
  /* Closed: no longer ESTABLISHED. */
  cr_assert_eq(m2mpsk_assoc_close(p.b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_originator_check(p.b, "/cse-mn", 0, &v),
               M2MPSK_E_STATE);
  m2mt_pair_free(&p);
}

/* The flow of TS-0003 §8.2.2.1 for an AE without a configured IdA: the
 * association is bound to the Credential-ID, the AE registers, the CSE
 * binds the AE-ID it assigned, and later requests are checked against it. */
Test(onem2m, credential_binding_then_ae_id_at_registration) {
  m2mt_pair p;
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, NULL, NULL);
  const char *ae = "//m2m.example.com/cse-in/Cae7";
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, ae), M2MPSK_E_STATE, "idle");
  m2mt_pair_start(&p, 0, 0);
  uint64_t now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), CRED);

  /* Refusals leave the Credential-ID bound. */
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(NULL, ae), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, NULL), M2MPSK_E_INVALID);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, "Cae7"), M2MPSK_E_IDA,
               "a stem is not an AE-ID");
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, "/cse-mn"), M2MPSK_E_IDA,
               "a CSE-ID is not an AE-ID");
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, "//m2m.example.com/cse-mn"),
               M2MPSK_E_IDA);
  char big[M2MPSK_ID_MAX + 16] = "/cse-in/C";
  memset(big + 9, 'a', sizeof(big) - 10);
  big[sizeof(big) - 1] = '\0';
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, big), M2MPSK_E_ID_LENGTH);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.a, "/S1"), M2MPSK_E_STATE,
               "not on an initiator");
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), CRED);
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.b), 1);

  /* Registration: accepted over the Credential-ID binding, then bound. */
  m2mpsk_originator_verdict v;
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_CREDENTIAL, m2mpsk_assoc_peer_id(p.b),
                              m2mpsk_assoc_local_id(p.b), "C", CREATE, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, ae), M2MPSK_OK);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), ae);
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(p.b), 0);
  cr_assert_str_eq(m2mpsk_assoc_local_id(p.b), M2MT_IDB, "local id kept");
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, "/cse-in/Cother"), M2MPSK_E_STATE,
               "only once");
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), ae);

  /* Afterwards the AE's requests are checked against its AE-ID. */
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_AE, m2mpsk_assoc_peer_id(p.b),
                              m2mpsk_assoc_local_id(p.b), "Cae7", 0, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_ACCEPT);
  cr_assert_eq(
      m2mpsk_originator_check(M2MPSK_PEER_AE, m2mpsk_assoc_peer_id(p.b),
                              m2mpsk_assoc_local_id(p.b), "Cae8", 0, &v),
      M2MPSK_OK);
  cr_assert_eq(v, M2MPSK_ORIGINATOR_NOT_AUTHENTICATED);
  m2mt_pair_free(&p);

  /* An S-type AE-ID is one segment; a record with an IdA cannot be
   * rebound. */
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_DTLS, m2mt_key, m2mt_key, NULL, NULL);
  m2mt_pair_start(&p, 0, 0);
  now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, "/Sae9"), M2MPSK_OK);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), "/Sae9");
  m2mt_pair_free(&p);
  m2mt_pair_init(&p, M2MPSK_TRANSPORT_TLS, m2mt_key, m2mt_key, M2MT_IDA, NULL);
  m2mt_pair_start(&p, 0, 0);
  now = 0;
  cr_assert_geq(m2mt_run_handshake(p.a, p.b, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_bind_ae_id(p.b, ae), M2MPSK_E_STATE);
  cr_assert_str_eq(m2mpsk_assoc_peer_id(p.b), M2MT_IDA);
  m2mt_pair_free(&p);
}

/* SA2 (TS-0003 §8.2.1): the same records, Entity B as the (D)TLS client. */
static void sa2_round(m2mpsk_transport t, const char *ida, int reversed_a,
                      int reversed_b) {
  m2mpsk_keystore *ks_a, *ks_b;
  m2mpsk_config *cfg_a, *cfg_b; /* the configs of Entity A and Entity B */
  cr_assert_eq(m2mpsk_keystore_new(&ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&ks_b, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(ks_a, M2MT_KPSA_ID, m2mt_key, 32, ida,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add(ks_b, M2MT_KPSA_ID, m2mt_key, 32, ida,
                                   M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_roles_reversed(cfg_a, reversed_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_roles_reversed(cfg_b, reversed_b), M2MPSK_OK);
  /* Entity B dials, Entity A listens: A has no local identity at all. */
  m2mpsk_assoc *b, *a;
  cr_assert_eq(m2mpsk_assoc_new(&b, M2MPSK_ROLE_INITIATOR, t, cfg_b, ks_b,
                                M2MT_KPSA_ID),
               M2MPSK_OK);
  int rc = m2mpsk_assoc_new(&a, M2MPSK_ROLE_RESPONDER, t, cfg_a, ks_a, NULL);
  if (!reversed_a) {
    cr_assert_eq(rc, M2MPSK_E_NO_LOCAL_ID, "not reversed: needs an IdB");
    m2mpsk_assoc_free(b);
    goto out;
  }
  cr_assert_eq(rc, M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(a, 0, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(b, 0, 0), M2MPSK_OK);
  uint64_t now = 0;
  cr_assert_geq(m2mt_run_handshake(b, a, NULL, &now, 100), 0);
  cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(a));
  cr_assert_eq(m2mpsk_assoc_state(b), M2MPSK_STATE_ESTABLISHED, "%s",
               m2mpsk_assoc_failure_detail(b));
  /* Whatever the (D)TLS roles, A binds IdB and B binds IdA or the
   * Credential-ID; unless B forgot it is the client here, and then binds
   * IdB like an Entity A would. */
  cr_assert_str_eq(m2mpsk_assoc_peer_id(a), M2MT_IDB);
  cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(a), 0);
  if (!reversed_b) {
    cr_assert_str_eq(m2mpsk_assoc_peer_id(b), M2MT_IDB);
  } else if (ida != NULL) {
    cr_assert_str_eq(m2mpsk_assoc_peer_id(b), ida);
    cr_assert_str_eq(m2mpsk_assoc_local_id(b), M2MT_IDB);
    cr_assert_str_eq(m2mpsk_assoc_local_id(a), ida);
    cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(b), 0);
  } else {
    cr_assert_str_eq(m2mpsk_assoc_peer_id(b), CRED);
    cr_assert_eq(m2mpsk_assoc_peer_id_is_credential(b), 1);
    cr_assert_null(m2mpsk_assoc_local_id(a));
    /* B, the client here, may bind the AE-ID; A may not. */
    cr_assert_eq(m2mpsk_assoc_bind_ae_id(a, "/cse-in/Cae1"), M2MPSK_E_STATE);
    cr_assert_eq(m2mpsk_assoc_bind_ae_id(b, "/cse-in/Cae1"), M2MPSK_OK);
    cr_assert_str_eq(m2mpsk_assoc_peer_id(b), "/cse-in/Cae1");
  }
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
out:
  m2mpsk_config_free(cfg_a);
  m2mpsk_config_free(cfg_b);
  m2mpsk_keystore_free(ks_a);
  m2mpsk_keystore_free(ks_b);
}

Test(onem2m, sa2_roles_reversed_with_the_same_records) {
  for (int t = 0; t < 2; t++) {
    sa2_round((m2mpsk_transport)t, M2MT_IDA, 1, 1);
    sa2_round((m2mpsk_transport)t, NULL, 1, 1);
    sa2_round((m2mpsk_transport)t, M2MT_IDA, 1, 0);
    sa2_round((m2mpsk_transport)t, M2MT_IDA, 0, 1);
  }
  m2mpsk_config *cfg;
  cr_assert_eq(m2mpsk_config_new(&cfg), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_roles_reversed(NULL, 1), M2MPSK_E_INVALID);
  m2mpsk_keystore *ks;
  m2mpsk_assoc *x;
  cr_assert_eq(m2mpsk_keystore_new(&ks, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_roles_reversed(cfg, 1), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&x, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, cfg, ks, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_set_roles_reversed(cfg, 0), M2MPSK_E_STATE);
  m2mpsk_assoc_free(x);
  m2mpsk_keystore_free(ks);
  m2mpsk_config_free(cfg);
}

/* ---- Kpsa derivation (TS-0003 §10.3.3) ---------------------------------- */

/* Ke = bytes 0x00..0x1f, Enrolee-B-ID = "//m2m.example.com/cse-in":
 *   python3 -c 'import hmac,hashlib;print(hmac.new(bytes(range(32)),
 *   b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
 *   +b"//m2m.example.com/cse-in",hashlib.sha256).hexdigest())'
 * (one line) printed
 *   0a940138d9f28b1363bda9fe9250740c955ce433aa87ef28b1b080ad02bd40d9 */
static const uint8_t expected_kpsa[32] = {
    0x0a, 0x94, 0x01, 0x38, 0xd9, 0xf2, 0x8b, 0x13, 0x63, 0xbd, 0xa9,
    0xfe, 0x92, 0x50, 0x74, 0x0c, 0x95, 0x5c, 0xe4, 0x33, 0xaa, 0x87,
    0xef, 0x28, 0xb1, 0xb0, 0x80, 0xad, 0x02, 0xbd, 0x40, 0xd9};

/* The same with Enrolee-B-ID = "/cse-in" (SP-relative form of the same
 * CSE): a different key, so the form used matters.
 *   1ff7baf6a19f338a4fc044bd3a9e86b686c7dbc8aec42da49e7dbc42570ef37a */
static const uint8_t relative_form_kpsa[32] = {
    0x1f, 0xf7, 0xba, 0xf6, 0xa1, 0x9f, 0x33, 0x8a, 0x4f, 0xc0, 0x44,
    0xbd, 0x3a, 0x9e, 0x86, 0xb6, 0x86, 0xc7, 0xdb, 0xc8, 0xae, 0xc4,
    0x2d, 0xa4, 0x9e, 0x7d, 0xbc, 0x42, 0x57, 0x0e, 0xf3, 0x7a};

#define ENROLEE_B "//m2m.example.com/cse-in"

static void ke_fill(uint8_t ke[32]) {
  for (unsigned i = 0; i < 32; i++)
    ke[i] = (uint8_t)i;
}

static m2mpsk_keystore *new_ks(unsigned flags) {
  m2mpsk_keystore *ks = NULL;
  cr_assert_eq(m2mpsk_keystore_new(&ks, flags), M2MPSK_OK);
  return ks;
}

Test(onem2m, derived_key_is_the_python_vector) {
  m2mpsk_keystore *ks = new_ks(0);
  uint8_t ke[32];
  ke_fill(ke);
  cr_assert_eq(m2mpsk_keystore_add_derived(ks, M2MT_KPSA_ID, ke, sizeof(ke),
                                           ENROLEE_B, M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  /* The caller's Ke is not needed afterwards. */
  memset(ke, 0, sizeof(ke));
  uint8_t got[M2MPSK_KEY_MAX];
  size_t len = 0;
  m2mpsk_record_view view;
  cr_assert_eq(m2mpsk_keystore_fetch(ks, M2MT_KPSA_ID, &view, got, &len),
               M2MPSK_OK);
  cr_assert_eq(len, 32);
  cr_assert_arr_eq(got, expected_kpsa, 32);
  cr_assert_str_eq(view.ida, M2MT_IDA);
  cr_assert_str_eq(view.idb, M2MT_IDB);
  m2mpsk_keystore_free(ks);
}

/* Runs a handshake: A holds the derived key, B the key given as bytes.
 * Returns B's state, and the failure reasons through the pointers. */
static m2mpsk_state handshake_against(m2mpsk_transport t, const uint8_t *kb,
                                      m2mpsk_reason *ra, m2mpsk_reason *rb) {
  m2mpsk_keystore *ks_a = new_ks(0), *ks_b = new_ks(0);
  uint8_t ke[32];
  ke_fill(ke);
  cr_assert_eq(m2mpsk_keystore_add_derived(ks_a, M2MT_KPSA_ID, ke, sizeof(ke),
                                           ENROLEE_B, M2MT_IDA, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_add(ks_b, M2MT_KPSA_ID, kb, 32, M2MT_IDA, M2MT_IDB, 0, 0),
      M2MPSK_OK);
  m2mpsk_config *cfg_a = NULL, *cfg_b = NULL;
  cr_assert_eq(m2mpsk_config_new(&cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(cfg_b, M2MT_IDB), M2MPSK_OK);
  m2mpsk_assoc *a = NULL, *b = NULL;
  cr_assert_eq(
      m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, t, cfg_a, ks_a, M2MT_KPSA_ID),
      M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, t, cfg_b, ks_b, NULL),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(b, 0, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(a, 0, 0), M2MPSK_OK);
  uint64_t now = 0;
  cr_assert_geq(m2mt_run_handshake(a, b, NULL, &now, 1000), 0);
  m2mpsk_state st = m2mpsk_assoc_state(b);
  if (st == M2MPSK_STATE_ESTABLISHED) {
    cr_assert_eq(m2mpsk_assoc_state(a), M2MPSK_STATE_ESTABLISHED);
    cr_assert_str_eq(m2mpsk_assoc_peer_id(b), M2MT_IDA);
  }
  *ra = m2mpsk_assoc_failure(a);
  *rb = m2mpsk_assoc_failure(b);
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(cfg_a);
  m2mpsk_config_free(cfg_b);
  m2mpsk_keystore_free(ks_a);
  m2mpsk_keystore_free(ks_b);
  return st;
}

Test(onem2m, derived_key_handshakes_with_the_python_vector) {
  const m2mpsk_transport ts[] = {M2MPSK_TRANSPORT_TLS, M2MPSK_TRANSPORT_DTLS};
  for (size_t i = 0; i < NCASES(ts); i++) {
    m2mpsk_reason ra, rb;
    cr_assert_eq(handshake_against(ts[i], expected_kpsa, &ra, &rb),
                 M2MPSK_STATE_ESTABLISHED, "transport %d: %s / %s", (int)ts[i],
                 m2mpsk_reason_name(ra), m2mpsk_reason_name(rb));
  }
}

Test(onem2m, derived_key_refuses_a_wrong_vector) {
  const m2mpsk_transport ts[] = {M2MPSK_TRANSPORT_TLS, M2MPSK_TRANSPORT_DTLS};
  uint8_t flipped[32];
  memcpy(flipped, expected_kpsa, 32);
  flipped[31] ^= 1;
  const uint8_t *wrong[] = {relative_form_kpsa, flipped};
  for (size_t i = 0; i < NCASES(ts); i++) {
    for (size_t w = 0; w < NCASES(wrong); w++) {
      m2mpsk_reason ra, rb;
      cr_assert_eq(handshake_against(ts[i], wrong[w], &ra, &rb),
                   M2MPSK_STATE_FAILED, "transport %d, vector %zu", (int)ts[i],
                   w);
      cr_assert_eq(ra, M2MPSK_REASON_BAD_KEY, "A: %s", m2mpsk_reason_name(ra));
      cr_assert_eq(rb, M2MPSK_REASON_BAD_KEY, "B: %s", m2mpsk_reason_name(rb));
    }
  }
}

Test(onem2m, derived_key_depends_on_every_input) {
  m2mpsk_keystore *ks = new_ks(0);
  uint8_t ke[64];
  for (unsigned i = 0; i < sizeof(ke); i++)
    ke[i] = (uint8_t)i;
  /* Base, another Enrolee-B-ID, another Ke, a longer Ke. */
  cr_assert_eq(m2mpsk_keystore_add_derived(ks, "k0@b.c", ke, 32, ENROLEE_B,
                                           NULL, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add_derived(ks, "k1@b.c", ke, 32, "/cse-in",
                                           NULL, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add_derived(ks, "k2@b.c", ke + 1, 32, ENROLEE_B,
                                           NULL, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_add_derived(ks, "k3@b.c", ke, 64, ENROLEE_B,
                                           NULL, M2MT_IDB, 0, 0),
               M2MPSK_OK);
  uint8_t k[4][M2MPSK_KEY_MAX];
  size_t len;
  const char *ids[] = {"k0@b.c", "k1@b.c", "k2@b.c", "k3@b.c"};
  for (int i = 0; i < 4; i++) {
    cr_assert_eq(m2mpsk_keystore_fetch(ks, ids[i], NULL, k[i], &len),
                 M2MPSK_OK);
    cr_assert_eq(len, 32);
  }
  cr_assert_arr_eq(k[0], expected_kpsa, 32);
  cr_assert_arr_eq(k[1], relative_form_kpsa, 32);
  for (int i = 1; i < 4; i++)
    cr_assert_arr_neq(k[0], k[i], 32, "input %d changed nothing", i);
  m2mpsk_keystore_free(ks);
}

/* ---- Kpsa derivation: errors -------------------------------------------- */

static int derive(m2mpsk_keystore *ks, const char *kpsa_id, const uint8_t *ke,
                  size_t ke_len, const char *enrolee, const char *ida,
                  const char *idb, int64_t nb, int64_t na) {
  return m2mpsk_keystore_add_derived(ks, kpsa_id, ke, ke_len, enrolee, ida, idb,
                                     nb, na);
}

Test(onem2m, derive_errors_leave_the_keystore_unchanged) {
  m2mpsk_keystore *ks = new_ks(0);
  uint8_t ke[M2MPSK_KEY_MAX + 1] = {1};
  char *long_id = build("/cse-in/C", 'x', M2MPSK_ID_MAX, "");
  char *long_kpsa = build("", 'k', M2MPSK_KPSA_ID_MAX, "@a.b");
  struct {
    int rc;
    int got;
  } c[] = {
      {M2MPSK_E_INVALID,
       derive(NULL, "a@b.c", ke, 32, ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_INVALID,
       derive(ks, NULL, ke, 32, ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_INVALID,
       derive(ks, "a@b.c", NULL, 32, ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_INVALID,
       derive(ks, "a@b.c", ke, 32, NULL, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_INVALID,
       derive(ks, "a@b.c", ke, 32, ENROLEE_B, NULL, NULL, 0, 0)},
      {M2MPSK_E_KEY_LENGTH,
       derive(ks, "a@b.c", ke, 0, ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_KEY_LENGTH, derive(ks, "a@b.c", ke, M2MPSK_KEY_MIN - 1,
                                   ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_KEY_LENGTH, derive(ks, "a@b.c", ke, M2MPSK_KEY_MAX + 1,
                                   ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_IDA, derive(ks, "a@b.c", ke, 32, "", NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_IDA,
       derive(ks, "a@b.c", ke, 32, "cse-in", NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_IDA, derive(ks, "a@b.c", ke, 32, "Cae1", NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_IDA,
       derive(ks, "a@b.c", ke, 32, "/cse-in/Sae1", NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_IDA,
       derive(ks, "a@b.c", ke, 32, "/cse-\xc3\xa9", NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_IDA,
       derive(ks, "a@b.c", ke, 32, ENROLEE_B, "Cae1", M2MT_IDB, 0, 0)},
      {M2MPSK_E_ID_LENGTH,
       derive(ks, "a@b.c", ke, 32, long_id, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_ID_LENGTH,
       derive(ks, "a@b.c", ke, 32, ENROLEE_B, long_id, M2MT_IDB, 0, 0)},
      {M2MPSK_E_ID_LENGTH,
       derive(ks, "a@b.c", ke, 32, ENROLEE_B, NULL, long_id, 0, 0)},
      {M2MPSK_E_KPSA_ID,
       derive(ks, "no-at", ke, 32, ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_KPSA_ID_LENGTH,
       derive(ks, long_kpsa, ke, 32, ENROLEE_B, NULL, M2MT_IDB, 0, 0)},
      {M2MPSK_E_IDB,
       derive(ks, "a@b.c", ke, 32, ENROLEE_B, NULL, "/cse-in/Cae1", 0, 0)},
      {M2MPSK_E_VALIDITY,
       derive(ks, "a@b.c", ke, 32, ENROLEE_B, NULL, M2MT_IDB, 200, 100)},
      {M2MPSK_E_VALIDITY,
       derive(ks, "a@b.c", ke, 32, ENROLEE_B, NULL, M2MT_IDB, -1, 0)},
  };
  for (size_t i = 0; i < NCASES(c); i++)
    cr_expect_eq(c[i].got, c[i].rc, "case %zu: %d, want %d", i, c[i].got,
                 c[i].rc);
  cr_assert_eq(m2mpsk_keystore_count(ks), 0);

  /* Both ends of the Ke length range work. */
  cr_assert_eq(derive(ks, "min@b.c", ke, M2MPSK_KEY_MIN, ENROLEE_B, NULL,
                      M2MT_IDB, 0, 0),
               M2MPSK_OK);
  cr_assert_eq(derive(ks, "max@b.c", ke, M2MPSK_KEY_MAX, ENROLEE_B, NULL,
                      M2MT_IDB, 0, 0),
               M2MPSK_OK);
  /* A duplicate leaves the first record and its key in place. */
  uint8_t before[M2MPSK_KEY_MAX], after[M2MPSK_KEY_MAX];
  size_t len;
  cr_assert_eq(m2mpsk_keystore_fetch(ks, "min@b.c", NULL, before, &len),
               M2MPSK_OK);
  cr_assert_eq(derive(ks, "min@b.c", ke, 32, "/other", NULL, M2MT_IDB, 0, 0),
               M2MPSK_E_DUPLICATE);
  cr_assert_eq(m2mpsk_keystore_fetch(ks, "min@b.c", NULL, after, &len),
               M2MPSK_OK);
  cr_assert_arr_eq(before, after, 32);
  cr_assert_eq(m2mpsk_keystore_count(ks), 2);
  free(long_id);
  free(long_kpsa);
  m2mpsk_keystore_free(ks);
}

/* Resource failures run in a child, whose limits the test can lower. Exit
 * codes name the check that failed. */
static int in_child(void (*fn)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0)
    fn();
  int st = 0;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  return st;
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

static void unlocked_child(void) {
  m2mpsk_keystore *ks = NULL;
  if (m2mpsk_keystore_new(&ks, M2MPSK_KEYSTORE_REQUIRE_LOCKED) != M2MPSK_OK)
    _exit(10);
  struct rlimit zero = {0, 0};
  if (drop_ipc_lock() != 0 || setrlimit(RLIMIT_MEMLOCK, &zero) != 0)
    _exit(11);
  uint8_t ke[32] = {7};
  if (derive(ks, "a@b.c", ke, 32, ENROLEE_B, NULL, M2MT_IDB, 0, 0) !=
      M2MPSK_E_UNLOCKED)
    _exit(12);
  if (m2mpsk_keystore_count(ks) != 0)
    _exit(13);
  m2mpsk_keystore_free(ks);
  _exit(0);
}

Test(onem2m, derive_refuses_unlocked_memory_when_required) {
  if (MLOCK_IS_FAKE)
    cr_skip_test("mlock is not real under AddressSanitizer");
  int st = in_child(unlocked_child);
  cr_assert(WIFEXITED(st), "child died (status 0x%x)", st);
  cr_assert_eq(WEXITSTATUS(st), 0, "check %d failed in the child",
               WEXITSTATUS(st));
}

/* With the address space capped at its current size, the guarded buffer
 * for the derivation cannot be mapped. */
static void nomem_child(void) {
  m2mpsk_keystore *ks = NULL;
  if (m2mpsk_keystore_new(&ks, 0) != M2MPSK_OK)
    _exit(10);
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (f == NULL || fscanf(f, "%lu", &pages) != 1)
    _exit(11);
  fclose(f);
  rlim_t size = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
  struct rlimit rl = {size, size};
  if (setrlimit(RLIMIT_AS, &rl) != 0)
    _exit(12);
  uint8_t ke[32] = {7};
  if (derive(ks, "a@b.c", ke, 32, ENROLEE_B, NULL, M2MT_IDB, 0, 0) !=
      M2MPSK_E_NOMEM)
    _exit(13);
  if (m2mpsk_keystore_count(ks) != 0)
    _exit(14);
  _exit(0);
}

Test(onem2m, derive_reports_nomem) {
#if defined(__SANITIZE_ADDRESS__)
  cr_skip_test("AddressSanitizer reserves the address space");
#endif
  int st = in_child(nomem_child);
  cr_assert(WIFEXITED(st), "child died (status 0x%x)", st);
  cr_assert_eq(WEXITSTATUS(st), 0, "check %d failed in the child",
               WEXITSTATUS(st));
}
