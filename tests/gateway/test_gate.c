/* src/gateway/gate.c: the gateway's oneM2M decisions, on associations
 * established by real in-memory handshakes. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "gw.h"
#include "link.h"

#define IDB "//m2m.example.com/cse-in"
#define IDB_REL "/cse-in"

static const uint8_t k_key[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                  12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                  23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

typedef struct pair {
  m2mpsk_keystore *ks_a, *ks_b;
  m2mpsk_config *cfg_a, *cfg_b;
  m2mpsk_assoc *a, *b;
} pair;

/* An established TLS pair; B's record has IdA `ida` (NULL: Credential-ID)
 * and IdB `idb`. */
static void establish(pair *p, const char *ida, const char *idb) {
  memset(p, 0, sizeof(*p));
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_a, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_keystore_new(&p->ks_b, 0), M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_add(p->ks_a, "t@onem2m.com", k_key, 32, ida, idb, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(
      m2mpsk_keystore_add(p->ks_b, "t@onem2m.com", k_key, 32, ida, idb, 0, 0),
      M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_a), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_new(&p->cfg_b), M2MPSK_OK);
  cr_assert_eq(m2mpsk_config_add_local_id(p->cfg_b, idb), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p->a, M2MPSK_ROLE_INITIATOR,
                                M2MPSK_TRANSPORT_TLS, p->cfg_a, p->ks_a,
                                "t@onem2m.com"),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_new(&p->b, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, p->cfg_b, p->ks_b, NULL),
               M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(p->b, 0, 0), M2MPSK_OK);
  cr_assert_eq(m2mpsk_assoc_start(p->a, 0, 0), M2MPSK_OK);
  uint64_t now = 0;
  cr_assert_geq(m2mt_run_handshake(p->a, p->b, NULL, &now, 1000), 0);
  cr_assert_eq(m2mpsk_assoc_state(p->b), M2MPSK_STATE_ESTABLISHED);
}

static void release(pair *p) {
  m2mpsk_assoc_free(p->a);
  m2mpsk_assoc_free(p->b);
  m2mpsk_config_free(p->cfg_a);
  m2mpsk_config_free(p->cfg_b);
  m2mpsk_keystore_free(p->ks_a);
  m2mpsk_keystore_free(p->ks_b);
}

static const char k_ae[] = "{\"m2m:ae\":{\"rn\":\"x\",\"aei\":\"%s\"}}";

static int respond(pair *p, const char *aei, int rsc, const char **why) {
  char body[256];
  snprintf(body, sizeof(body), k_ae, aei);
  return gw_gate_response(p->b, 1, rsc, body, strlen(body), why);
}

Test(gate, credential_lets_only_an_ae_create_through) {
  pair p;
  establish(&p, NULL, IDB);
  const char *why = NULL;
  cr_assert_eq(gw_gate_request(p.b, "C", 0, &why), 4106);
  cr_assert(strstr(why, "AE registration") != NULL, "%s", why);
  cr_assert_eq(gw_gate_request(p.b, "C", 1, &why), 0);
  cr_assert_eq(gw_gate_request(p.b, NULL, 1, &why), 0);
  cr_assert_eq(gw_gate_request(p.b, IDB, 1, &why), 4106); /* a CSE-ID */
  cr_assert_eq(gw_gate_request(p.b, "//other.example.com/cse/Cx", 1, &why),
               4106);
  cr_assert_str_eq(gw_gate_identity(p.b), "12-t@onem2m.com");
  release(&p);
}

Test(gate, binds_the_ae_id_the_cse_assigned) {
  pair p;
  establish(&p, NULL, IDB);
  const char *why = NULL;
  cr_assert_eq(respond(&p, "Cae-1", 2001, &why), 1, "%s", why);
  cr_assert_str_eq(gw_gate_identity(p.b), IDB "/Cae-1");
  cr_assert_eq(gw_gate_request(p.b, "Cae-1", 0, &why), 0);
  cr_assert_eq(gw_gate_request(p.b, IDB "/Cae-1", 0, &why), 0);
  cr_assert_eq(gw_gate_request(p.b, "/cse-in/Cae-1", 0, &why), 0);
  cr_assert_eq(gw_gate_request(p.b, "Cae-2", 0, &why), 4106);
  cr_assert_eq(gw_gate_request(p.b, NULL, 0, &why), 4106);
  cr_assert_str_eq(why, "no originator");
  /* Bound once: a second answer changes nothing. */
  cr_assert_eq(respond(&p, "Cae-9", 2001, &why), 0);
  cr_assert_str_eq(gw_gate_identity(p.b), IDB "/Cae-1");
  release(&p);
}

Test(gate, an_s_stem_goes_under_the_sp) {
  pair p;
  establish(&p, NULL, IDB);
  cr_assert_eq(respond(&p, "Sae-7", 2001, NULL), 1);
  cr_assert_str_eq(gw_gate_identity(p.b), "//m2m.example.com/Sae-7");
  cr_assert_eq(gw_gate_request(p.b, "Sae-7", 0, NULL), 0);
  release(&p);
  establish(&p, NULL, IDB_REL);
  cr_assert_eq(respond(&p, "Sae-8", 2001, NULL), 1);
  cr_assert_str_eq(gw_gate_identity(p.b), "/Sae-8");
  release(&p);
}

Test(gate, binds_nothing_without_a_2001_or_an_aei) {
  pair p;
  establish(&p, NULL, IDB);
  const char *why = NULL;
  cr_assert_eq(respond(&p, "Cae-1", 4000, &why), 0);
  cr_assert_eq(gw_gate_response(p.b, 0, 2001, "{}", 2, &why), 0);
  cr_assert_eq(gw_gate_response(p.b, 1, 2001, "not json", 8, &why), -1);
  cr_assert(strstr(why, "not JSON") != NULL, "%s", why);
  cr_assert_eq(gw_gate_response(p.b, 1, 2001, "{\"m2m:ae\":{}}", 13, &why), -1);
  cr_assert_eq(gw_gate_response(p.b, 1, 2001, NULL, 0, &why), -1);
  cr_assert_eq(respond(&p, "ae-no-stem", 2001, &why), -1);
  cr_assert_eq(respond(&p, "/cse-in/", 2001, &why), -1);
  cr_assert(m2mpsk_assoc_peer_id_is_credential(p.b));
  cr_assert_eq(gw_gate_request(p.b, "Cae-1", 0, &why), 4106);
  release(&p);
}

Test(gate, an_ida_record_is_bound_from_the_start) {
  pair p;
  establish(&p, IDB "/Cdev", IDB);
  const char *why;
  cr_assert_eq(gw_gate_request(p.b, "Cdev", 0, &why), 0);
  cr_assert_eq(gw_gate_request(p.b, IDB "/Cdev", 1, &why), 0);
  cr_assert_eq(gw_gate_request(p.b, "Cmallory", 0, &why), 4106);
  cr_assert_str_eq(why, "originator does not match the security association");
  cr_assert_eq(respond(&p, "Cother", 2001, &why), 0); /* never rebound */
  cr_assert_str_eq(gw_gate_identity(p.b), IDB "/Cdev");
  release(&p);
}

Test(gate, a_cse_record_passes_its_registrees) {
  pair p;
  establish(&p, "//m2m.example.com/mn-cse", IDB);
  cr_assert_eq(gw_gate_request(p.b, "//m2m.example.com/mn-cse", 0, NULL), 0);
  cr_assert_eq(gw_gate_request(p.b, "//m2m.example.com/mn-cse/Cae", 0, NULL),
               0);
  cr_assert_eq(gw_gate_request(p.b, "//m2m.example.com/other/Cae", 0, NULL),
               4106);
  release(&p);
}

Test(gate, no_association_is_4107) {
  pair p;
  establish(&p, NULL, IDB);
  m2mpsk_assoc *fresh = NULL;
  cr_assert_eq(m2mpsk_assoc_new(&fresh, M2MPSK_ROLE_RESPONDER,
                                M2MPSK_TRANSPORT_TLS, p.cfg_b, p.ks_b, NULL),
               M2MPSK_OK);
  const char *why;
  cr_assert_eq(gw_gate_request(fresh, "/cse-9", 0, &why), 4107);
  cr_assert_eq(gw_gate_request(NULL, "C", 1, &why), 4107);
  m2mpsk_assoc_free(fresh);
  release(&p);
}

Test(gate, content_type_ty) {
  cr_assert_eq(gw_gate_content_type_ty("application/json;ty=2"), 2);
  cr_assert_eq(gw_gate_content_type_ty("application/vnd.onem2m-res+json; "
                                       "ty=4"),
               4);
  cr_assert_eq(gw_gate_content_type_ty("application/json; charset=x;TY=2 "), 2);
  cr_assert_eq(gw_gate_content_type_ty("application/json"), -1);
  cr_assert_eq(gw_gate_content_type_ty("application/json;ty=2x"), -1);
  cr_assert_eq(gw_gate_content_type_ty("application/json;ty="), -1);
  cr_assert_eq(gw_gate_content_type_ty("application/json;ty=-2"), -1);
  cr_assert_eq(gw_gate_content_type_ty("ty=2"), -1);
  cr_assert_eq(gw_gate_content_type_ty(NULL), -1);
}

Test(gate, dbg_body_is_escaped_json_and_bounded) {
  char out[32];
  size_t n = gw_gate_dbg_body("a \"q\" \\ \n", out, sizeof(out));
  cr_assert_str_eq(out, "{\"m2m:dbg\":\"a \\\"q\\\" \\\\ ?\"}");
  cr_assert_eq(n, strlen(out));
  n = gw_gate_dbg_body("a very long reason that does not fit", out,
                       sizeof(out));
  cr_assert_lt(n, sizeof(out));
  cr_assert_eq(n, strlen(out));
  cr_assert(strncmp(out + n - 2, "\"}", 2) == 0);
}
