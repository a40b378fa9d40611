package org.m2mpsk.jsse;

import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLServerSocketFactory;

/**
 * Server-mode (Entity B) {@code SSLServerSocket}s over TCP: each accepted
 * connection is an {@code SSLSocket} whose handshake runs on its first read
 * or write (or {@code startHandshake()}), on the caller's thread.
 */
final class M2mpskServerSocketFactory extends SSLServerSocketFactory {
  private final ContextState ctx;

  M2mpskServerSocketFactory(ContextState ctx) {
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

  @Override
  public ServerSocket createServerSocket() throws IOException {
    return new Server(ctx);
  }

  @Override
  public ServerSocket createServerSocket(int port) throws IOException {
    return new Server(ctx, port, 50, null);
  }

  @Override
  public ServerSocket createServerSocket(int port, int backlog) throws IOException {
    return new Server(ctx, port, backlog, null);
  }

  @Override
  public ServerSocket createServerSocket(int port, int backlog, InetAddress ifAddress)
      throws IOException {
    return new Server(ctx, port, backlog, ifAddress);
  }

  static final class Server extends SSLServerSocket {
    private final ContextState ctx;
    private String[] suites;
    private String[] protocols;
    private boolean clientMode;
    private boolean sessionCreation = true;

    Server(ContextState ctx) throws IOException {
      super();
      this.ctx = ctx;
      init();
    }

    Server(ContextState ctx, int port, int backlog, InetAddress addr) throws IOException {
      super(port, backlog, addr);
      this.ctx = ctx;
      init();
    }

    private void init() {
      suites = ctx.defaultSuites().toArray(new String[0]);
      protocols = new String[] {ctx.protocol()};
    }

    /** The next connection, in server mode unless setUseClientMode(true). */
    @Override
    public Socket accept() throws IOException {
      Socket s = new Socket();
      implAccept(s);
      M2mpskSSLSocket t = new M2mpskSSLSocket(ctx, s, s.getInetAddress().getHostAddress(),
          s.getPort(), true, clientMode);
      t.setEnabledCipherSuites(suites);
      t.setEnabledProtocols(protocols);
      t.setEnableSessionCreation(sessionCreation);
      return t;
    }

    @Override
    public synchronized String[] getEnabledCipherSuites() {
      return suites.clone();
    }

    @Override
    public synchronized void setEnabledCipherSuites(String[] s) {
      ctx.checkSuites(s); // as an engine checks them
      suites = s.clone();
    }

    @Override
    public String[] getSupportedCipherSuites() {
      return ctx.supportedSuites().toArray(new String[0]);
    }

    @Override
    public String[] getSupportedProtocols() {
      return new String[] {ctx.protocol()};
    }

    @Override
    public synchronized String[] getEnabledProtocols() {
      return protocols.clone();
    }

    @Override
    public synchronized void setEnabledProtocols(String[] p) {
      ctx.checkProtocols(p);
      protocols = p.clone();
    }

    @Override
    public void setNeedClientAuth(boolean need) {}

    @Override
    public boolean getNeedClientAuth() {
      return true;
    }

    @Override
    public void setWantClientAuth(boolean want) {}

    @Override
    public boolean getWantClientAuth() {
      return true;
    }

    @Override
    public synchronized void setUseClientMode(boolean mode) {
      clientMode = mode;
    }

    @Override
    public synchronized boolean getUseClientMode() {
      return clientMode;
    }

    @Override
    public synchronized void setEnableSessionCreation(boolean flag) {
      sessionCreation = flag;
    }

    @Override
    public synchronized boolean getEnableSessionCreation() {
      return sessionCreation;
    }
  }
}
