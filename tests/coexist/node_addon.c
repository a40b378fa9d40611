/* A minimal Node-API addon: handshake() runs m2mpsk associations in both
 * roles, over TLS and DTLS, inside the node process (whose binary exports
 * OpenSSL's symbols), and returns what each side bound. */
#include <node_api.h>
#include <stdio.h>

#include "handshake.h"

static napi_value handshake(napi_env env, napi_callback_info info) {
  (void)info;
  char out[1500] = "", pa[600], pb[600];
  size_t used = 0;
  for (int t = 0; t < 2; t++) {
    if (coexist_handshake((m2mpsk_transport)t, pa, pb, sizeof(pa)) != 0) {
      napi_throw_error(env, NULL, "m2mpsk handshake failed");
      return NULL;
    }
    used += (size_t)snprintf(out + used, sizeof(out) - used,
                             "%s (backend %s): A bound %s, B bound %s\n",
                             t ? "DTLS" : "TLS", m2mpsk_backend_name(), pa, pb);
  }
  napi_value result;
  napi_create_string_utf8(env, out, NAPI_AUTO_LENGTH, &result);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "handshake", NAPI_AUTO_LENGTH, handshake, NULL,
                       &fn);
  napi_set_named_property(env, exports, "handshake", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
