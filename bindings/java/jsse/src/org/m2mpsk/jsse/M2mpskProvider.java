package org.m2mpsk.jsse;

import java.security.Provider;

/**
 * The JCA provider "M2MPSK": {@code SSLContext} algorithms "M2MPSK" (TLS 1.2
 * PSK) and "M2MPSK-DTLS" (DTLS 1.2 PSK), both over libm2mpsk.
 *
 * <pre>{@code
 * SSLContext ctx = SSLContext.getInstance("M2MPSK", new M2mpskProvider());
 * ctx.init(new KeyManager[] {params}, null, null);   // params: M2mpskParameters
 * }</pre>
 *
 * It need not be installed with {@code Security.addProvider}: pass it to
 * {@code getInstance}. {@link M2mpskContexts} does both steps.
 */
public final class M2mpskProvider extends Provider {
  private static final long serialVersionUID = 1L;

  public M2mpskProvider() {
    super("M2MPSK", Native.libraryVersion(),
        "oneM2M TS-0003 pre-shared key security associations (libm2mpsk)");
    putService(new Service(this, "SSLContext", "M2MPSK", M2mpskSSLContextSpi.Tls.class.getName(),
        null, null));
    putService(new Service(this, "SSLContext", "M2MPSK-DTLS",
        M2mpskSSLContextSpi.Dtls.class.getName(), null, null));
  }
}
