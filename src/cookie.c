/* The DTLS responder's stateless cookie exchange: m2mpsk_dtls_listen(). The
 * OpenSSL engine does the work on the config's responder DTLS context; this
 * file checks the arguments the way the rest of the API does. */
#include <string.h>

#include "internal.h"
#include "tls/engine.h"

/* The same rule as m2mpsk_assoc_set_peer_tag(), so that whatever tag a
 * cookie was made for can be given to the association. */
static int peer_tag_ok(const char *tag) {
  size_t n = strnlen(tag, M2MPSK_PEER_TAG_MAX + 1);
  if (n == 0 || n > M2MPSK_PEER_TAG_MAX)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (tag[i] < 0x20 || tag[i] > 0x7e)
      return 0;
  return 1;
}

int m2mpsk_dtls_listen(m2mpsk_config *cfg, const char *peer_tag,
                       const uint8_t *datagram, size_t len, uint8_t *out,
                       size_t cap, size_t *out_len) {
  if (cfg == NULL || peer_tag == NULL || datagram == NULL || out == NULL ||
      out_len == NULL || len == 0 || len > 0xffff || !peer_tag_ok(peer_tag))
    return M2MPSK_E_INVALID;
  *out_len = 0;
  if (cap == 0)
    return M2MPSK_E_BUFFER;
  if (m2mpsk_tls() == NULL)
    return M2MPSK_E_BACKEND;
  /* Only OpenSSL's engine has the cookie exchange: it answers for every
   * config that lets OpenSSL run the handshake (AUTO or OPENSSL), and
   * m2mpsk_engine_choose() sends the DTLS responders of those configs to
   * it. Checked before the context: a config that cannot have cookies is
   * neither frozen nor given a context for nothing. */
  const m2mpsk_engine_ops *ops = m2mpsk_tls_engine(M2MPSK_ENGINE_OPENSSL);
  if (ops == NULL || ops->dtls_listen == NULL ||
      m2mpsk_config_engine(cfg) == M2MPSK_ENGINE_BORINGSSL)
    return M2MPSK_E_UNSUPPORTED;
  int rc;
  m2mpsk_engine_id id = M2MPSK_ENGINE_OPENSSL;
  m2mpsk_engine_ctx *ctx = m2mpsk_config_engine_ctx(
      cfg, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_DTLS, &id, &rc);
  if (ctx == NULL)
    return rc;
  /* The engine's own contract (engine.h) predates the public one: it
   * answers M2MPSK_E_AGAIN for "send this" and M2MPSK_E_INVALID for a
   * datagram it dropped, the only E_INVALID left once the arguments and the
   * context (a responder DTLS one) are known good. */
  rc = ops->dtls_listen(ctx, peer_tag, datagram, len, out, cap, out_len);
  if (rc == M2MPSK_E_AGAIN)
    return M2MPSK_LISTEN_REPLY;
  if (rc == M2MPSK_E_INVALID)
    return M2MPSK_E_PROTOCOL;
  return rc;
}
