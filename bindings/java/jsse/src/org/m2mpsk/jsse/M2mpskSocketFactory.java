package org.m2mpsk.jsse;

import java.io.IOException;
import java.net.InetAddress;
import java.net.Socket;
import javax.net.ssl.SSLSocketFactory;

/**
 * Client-mode (Entity A) {@code SSLSocket}s over TCP, as
 * {@code SSLContext.getSocketFactory()} of an m2mpsk context returns them:
 * for {@code HttpsURLConnection.setSSLSocketFactory()} and other blocking
 * code.
 */
final class M2mpskSocketFactory extends SSLSocketFactory {
  private final ContextState ctx;

  M2mpskSocketFactory(ContextState ctx) {
    this.ctx = ctx;
  }

  @Override
  public String[] getDefaultCipherSuites() {
    return ctx.defaultSuites().toArray(new String[0]);
  }

  @Override
  public String[] getSupportedCipherSuites() {
    return ctx.supportedSuites().toArray(new String[0]);
  }

  /** An unconnected socket; connect() it, then read or write. */
  @Override
  public Socket createSocket() {
    return new M2mpskSSLSocket(ctx, new Socket(), null, -1, true, true);
  }

  @Override
  public Socket createSocket(Socket s, String host, int port, boolean autoClose) {
    return new M2mpskSSLSocket(ctx, s, host, port, autoClose, true);
  }

  @Override
  public Socket createSocket(String host, int port) throws IOException {
    return layered(new Socket(host, port), host, port);
  }

  @Override
  public Socket createSocket(String host, int port, InetAddress localHost, int localPort)
      throws IOException {
    return layered(new Socket(host, port, localHost, localPort), host, port);
  }

  @Override
  public Socket createSocket(InetAddress host, int port) throws IOException {
    return layered(new Socket(host, port), host.getHostAddress(), port);
  }

  @Override
  public Socket createSocket(InetAddress host, int port, InetAddress localAddress,
      int localPort) throws IOException {
    return layered(new Socket(host, port, localAddress, localPort), host.getHostAddress(), port);
  }

  private Socket layered(Socket s, String host, int port) {
    return new M2mpskSSLSocket(ctx, s, host, port, true, true);
  }

}
