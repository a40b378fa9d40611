/* Which engine runs an association. The one place that decides it, so
 * that inspecting the ClientHello (a responder's offered suites) changes
 * only this file and its caller in assoc.c.
 *
 * The engines in order of handshake cost, cheapest first: BoringSSL's TLS
 * PSK handshakes cost about a quarter of OpenSSL's (issue 15), but only
 * OpenSSL has TS-0003's mandated suites and the DTLS cookie exchange. */
#include "hello.h"
#include "internal.h"
#include "tls/engine.h"

static const m2mpsk_engine_id k_fastest_first[] = {M2MPSK_ENGINE_BORINGSSL,
                                                   M2MPSK_ENGINE_OPENSSL};

m2mpsk_engine_id m2mpsk_engine_choose(m2mpsk_engine_id wanted, m2mpsk_role role,
                                      m2mpsk_transport transport,
                                      const char *suites) {
  if (wanted != M2MPSK_ENGINE_AUTO)
    return m2mpsk_tls_engine(wanted) != NULL ? wanted : M2MPSK_ENGINE_AUTO;
  const m2mpsk_engine_ops *openssl = m2mpsk_tls_engine(M2MPSK_ENGINE_OPENSSL);
  /* A DTLS responder may be handed the ClientHello that m2mpsk_dtls_listen
   * (always OpenSSL's, for cookies) has verified: its message_seq is 1,
   * which only the engine that sent the HelloVerifyRequest expects.
   * Measured: BoringSSL's DTLS server fed that hello answers nothing and
   * waits for message_seq 0, so the handshake would only time out. */
  if (role == M2MPSK_ROLE_RESPONDER && transport == M2MPSK_TRANSPORT_DTLS &&
      openssl != NULL && openssl->dtls_listen != NULL)
    return M2MPSK_ENGINE_OPENSSL;
  /* The fastest engine that can offer (initiator) or accept (responder)
   * every suite the config enables: then the choice costs the peer
   * nothing. Until the responder reads the ClientHello, it cannot know
   * which suites the peer needs, so it takes the same rule. */
  for (size_t i = 0; i < sizeof(k_fastest_first) / sizeof(k_fastest_first[0]);
       i++) {
    const m2mpsk_engine_ops *o = m2mpsk_tls_engine(k_fastest_first[i]);
    if (o != NULL && suites != NULL && o->check_suites(suites) == M2MPSK_OK)
      return k_fastest_first[i];
  }
  /* Else the engine with the most suites. */
  if (openssl != NULL)
    return M2MPSK_ENGINE_OPENSSL;
  return m2mpsk_tls_engine(M2MPSK_ENGINE_BORINGSSL) != NULL
             ? M2MPSK_ENGINE_BORINGSSL
             : M2MPSK_ENGINE_AUTO;
}

int m2mpsk_engine_waits_for_hello(m2mpsk_engine_id wanted,
                                  m2mpsk_transport transport) {
  /* DTLS: OpenSSL, for the cookies (above), needs no hello. */
  return wanted == M2MPSK_ENGINE_AUTO && transport == M2MPSK_TRANSPORT_TLS &&
         m2mpsk_tls_engine(M2MPSK_ENGINE_BORINGSSL) != NULL &&
         m2mpsk_tls_engine(M2MPSK_ENGINE_OPENSSL) != NULL;
}

m2mpsk_engine_id m2mpsk_engine_choose_hello(m2mpsk_config *cfg,
                                            m2mpsk_transport transport,
                                            const m2mpsk_hello *h) {
  enum { N = sizeof(k_fastest_first) / sizeof(k_fastest_first[0]) };
  if (h == NULL)
    return M2MPSK_ENGINE_AUTO;
  m2mpsk_engine_suites lists[N];
  for (size_t i = 0; i < N; i++) {
    m2mpsk_engine_id id = k_fastest_first[i];
    int rc;
    lists[i].ids = NULL;
    lists[i].n = 0;
    /* Made once per config: later hellos only read the lists. */
    if (m2mpsk_config_engine_ctx(cfg, M2MPSK_ROLE_RESPONDER, transport, &id,
                                 &rc) != NULL)
      lists[i].ids = m2mpsk_config_engine_ids(cfg, id, M2MPSK_ROLE_RESPONDER,
                                              transport, &lists[i].n);
  }
  int i = m2mpsk_hello_choose(h, lists, N);
  return i >= 0 ? k_fastest_first[i] : M2MPSK_ENGINE_AUTO;
}
