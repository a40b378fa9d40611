package org.m2mpsk.jsse;

import java.security.GeneralSecurityException;
import javax.net.ssl.HostnameVerifier;
import javax.net.ssl.KeyManager;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLException;
import org.m2mpsk.Keystore;

/**
 * Initialised m2mpsk {@link SSLContext}s in one call.
 *
 * <pre>{@code
 * SSLContext b = M2mpskContexts.server(keystore, "//m2m.example.com/cse-in");
 * SSLContext a = M2mpskContexts.client(keystore, "ae1@m2m.example.com");
 * }</pre>
 */
public final class M2mpskContexts {
  private static final M2mpskProvider PROVIDER = new M2mpskProvider();

  private M2mpskContexts() {}

  /** The provider these contexts come from. */
  public static M2mpskProvider provider() {
    return PROVIDER;
  }

  /** A TLS context from the parameters. */
  public static SSLContext tls(M2mpskParameters params) throws GeneralSecurityException {
    return of("M2MPSK", params);
  }

  /** A DTLS context from the parameters. */
  public static SSLContext dtls(M2mpskParameters params) throws GeneralSecurityException {
    return of("M2MPSK-DTLS", params);
  }

  /** Entity B over TLS, serving the CSE-IDs localIds. */
  public static SSLContext server(Keystore keystore, String... localIds)
      throws GeneralSecurityException {
    return tls(M2mpskParameters.server(localIds).keystore(keystore));
  }

  /** Entity A over TLS, with the record kpsaId. */
  public static SSLContext client(Keystore keystore, String kpsaId)
      throws GeneralSecurityException {
    return tls(M2mpskParameters.client(kpsaId).keystore(keystore));
  }

  /**
   * The stateless cookie exchange for a DTLS server on an m2mpsk DTLS
   * context: see {@link M2mpskDtlsListener}.
   *
   * @param dtlsContext an initialised m2mpsk DTLS context
   *     ({@link #dtls(M2mpskParameters)})
   * @return the listener; it holds no per-peer state
   * @throws SSLException the core's exception when the context's config
   *     cannot make its DTLS server context (E_BACKEND, E_NOMEM)
   * @throws IllegalArgumentException a context that is not an m2mpsk DTLS
   *     one
   */
  public static M2mpskDtlsListener dtlsListener(SSLContext dtlsContext) throws SSLException {
    SSLEngine e = dtlsContext.createSSLEngine();
    if (!(e instanceof M2mpskSSLEngine)) {
      throw new IllegalArgumentException("not an m2mpsk context: " + dtlsContext.getProvider());
    }
    return new M2mpskDtlsListener(dtlsContext, ((M2mpskSSLEngine) e).contextState());
  }

  private static SSLContext of(String algorithm, M2mpskParameters params)
      throws GeneralSecurityException {
    SSLContext c = SSLContext.getInstance(algorithm, PROVIDER);
    c.init(new KeyManager[] {params}, null, null);
    return c;
  }

  /**
   * A {@link HostnameVerifier} for {@code HttpsURLConnection} over an
   * m2mpsk socket factory, when a verifier is set at all (with the JDK's
   * default one, the connection hands the check to the socket's endpoint
   * identification, which a PSK session satisfies). A PSK session has no
   * certificate to match a host name against; what authenticates the server
   * is that it proved it holds Kpsa, and the identity it is bound to is the
   * IdB of Entity A's own record. This verifier accepts exactly the sessions
   * an m2mpsk handshake established and refuses any other, so that it
   * cannot weaken a certificate-based connection it is given by mistake.
   */
  public static HostnameVerifier hostnameVerifier() {
    return (host, session) -> session instanceof M2mpskSession && session.isValid()
        && ((M2mpskSession) session).peerId() != null;
  }
}
