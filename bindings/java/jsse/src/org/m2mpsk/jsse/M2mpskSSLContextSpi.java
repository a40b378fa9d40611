package org.m2mpsk.jsse;

import java.security.KeyManagementException;
import java.security.SecureRandom;
import javax.net.ssl.KeyManager;
import javax.net.ssl.SSLContextSpi;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLServerSocketFactory;
import javax.net.ssl.SSLSessionContext;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.TrustManager;

/**
 * The {@code SSLContextSpi} behind {@code SSLContext.getInstance("M2MPSK")}
 * and {@code "M2MPSK-DTLS"}. {@code init} takes one
 * {@link M2mpskParameters} among its key managers; trust managers and the
 * random source are ignored (a PSK handshake authenticates both sides).
 */
public abstract class M2mpskSSLContextSpi extends SSLContextSpi {
  private final boolean dtls;
  private volatile ContextState state;

  M2mpskSSLContextSpi(boolean dtls) {
    this.dtls = dtls;
  }

  /** "M2MPSK": TLS 1.2. */
  public static final class Tls extends M2mpskSSLContextSpi {
    public Tls() {
      super(false);
    }
  }

  /** "M2MPSK-DTLS": DTLS 1.2. */
  public static final class Dtls extends M2mpskSSLContextSpi {
    public Dtls() {
      super(true);
    }
  }

  @Override
  protected void engineInit(KeyManager[] km, TrustManager[] tm, SecureRandom sr)
      throws KeyManagementException {
    M2mpskParameters params = null;
    if (km != null) {
      for (KeyManager k : km) {
        if (k instanceof M2mpskParameters) params = ((M2mpskParameters) k).copy();
      }
    }
    if (params == null) {
      throw new KeyManagementException("an m2mpsk context needs M2mpskParameters as a KeyManager");
    }
    if (params.keystore() == null) {
      throw new KeyManagementException("M2mpskParameters without a keystore");
    }
    try {
      state = new ContextState(params, dtls);
    } catch (SSLException e) {
      throw new KeyManagementException(e.getMessage(), e);
    }
  }

  ContextState state() {
    ContextState s = state;
    if (s == null) throw new IllegalStateException("SSLContext not initialised");
    return s;
  }

  @Override
  protected SSLEngine engineCreateSSLEngine() {
    return new M2mpskSSLEngine(state(), null, -1);
  }

  @Override
  protected SSLEngine engineCreateSSLEngine(String host, int port) {
    return new M2mpskSSLEngine(state(), host, port);
  }

  @Override
  protected SSLSocketFactory engineGetSocketFactory() {
    if (dtls) throw new UnsupportedOperationException("no sockets for DTLS: use the SSLEngine");
    return new M2mpskSocketFactory(state());
  }

  @Override
  protected SSLServerSocketFactory engineGetServerSocketFactory() {
    if (dtls) throw new UnsupportedOperationException("no sockets for DTLS: use the SSLEngine");
    return new M2mpskServerSocketFactory(state());
  }

  /** Null: sessions are not resumed. */
  @Override
  protected SSLSessionContext engineGetServerSessionContext() {
    return null;
  }

  /** Null: sessions are not resumed. */
  @Override
  protected SSLSessionContext engineGetClientSessionContext() {
    return null;
  }
}
