package org.m2mpsk.jsse;

import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.SocketException;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import javax.net.ssl.HandshakeCompletedEvent;
import javax.net.ssl.HandshakeCompletedListener;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLHandshakeException;
import javax.net.ssl.SSLSession;
import javax.net.ssl.SSLSocket;

/**
 * A blocking {@link SSLSocket} over an {@link M2mpskSSLEngine} and a plain
 * TCP socket (layered: the socket options, timeouts and addresses are the
 * plain socket's). The handshake runs on {@link #startHandshake()}, or on
 * the first read or write. Reads and writes may come from two threads at
 * once. Half-close ({@code shutdownInput/Output}) is not supported, as with
 * TLS 1.2 in the JDK before 11.
 */
final class M2mpskSSLSocket extends SSLSocket {
  private final Socket sock;
  private final boolean autoClose;
  private final M2mpskSSLEngine engine;
  private final Object handshakeLock = new Object();
  private final Object readLock = new Object();
  private final Object writeLock = new Object();
  private final List<HandshakeCompletedListener> listeners = new CopyOnWriteArrayList<>();
  private final ByteBuffer netIn;
  private final ByteBuffer appIn;
  private final ByteBuffer netOut;
  private volatile boolean handshakeDone;
  private volatile boolean closed;
  private boolean eof;
  private final InputStream in = new AppInput();
  private final OutputStream out = new AppOutput();

  M2mpskSSLSocket(ContextState ctx, Socket sock, String host, int port, boolean autoClose,
      boolean client) {
    this.sock = sock;
    this.autoClose = autoClose;
    this.engine = new M2mpskSSLEngine(ctx, host, port);
    engine.setUseClientMode(client);
    SSLSession s = engine.getSession();
    netIn = ByteBuffer.allocate(s.getPacketBufferSize());
    netIn.flip();
    appIn = ByteBuffer.allocate(s.getApplicationBufferSize());
    appIn.flip();
    netOut = ByteBuffer.allocate(s.getPacketBufferSize());
  }

  /** The engine underneath, for its session's oneM2M accessors. */
  M2mpskSSLEngine engine() {
    return engine;
  }

  // ---- handshake ----------------------------------------------------------

  @Override
  public void startHandshake() throws IOException {
    if (closed) throw new SocketException("socket closed");
    synchronized (handshakeLock) {
      if (handshakeDone) return;
      synchronized (readLock) {
        synchronized (writeLock) {
          handshake();
        }
      }
    }
    HandshakeCompletedEvent ev = new HandshakeCompletedEvent(this, engine.getSession());
    for (HandshakeCompletedListener l : listeners) l.handshakeCompleted(ev);
  }

  private void handshake() throws IOException {
    try {
      engine.beginHandshake();
      while (true) {
        HandshakeStatus hs = engine.getHandshakeStatus();
        if (hs == HandshakeStatus.NEED_WRAP) {
          if (flushOne() == HandshakeStatus.FINISHED) break;
        } else if (hs == HandshakeStatus.NEED_UNWRAP) {
          if (unwrapOne(true) == HandshakeStatus.FINISHED) break;
        } else if (hs == HandshakeStatus.NEED_TASK) {
          // The key source is looking the key up: wait here, bounded by
          // the handshake timeout.
          for (Runnable t; (t = engine.getDelegatedTask()) != null; ) t.run();
          if (engine.getHandshakeStatus() == HandshakeStatus.NEED_TASK) {
            engine.wrap(ByteBuffer.allocate(0), ByteBuffer.allocate(0)); // throws the failure
          }
        } else {
          break;
        }
      }
    } catch (SSLException e) {
      sendPending(); // the alert telling the peer why
      throw e;
    }
    if (engine.getSession().getPeerPrincipal() == null) {
      throw new SSLHandshakeException("m2mpsk: the handshake did not complete");
    }
    handshakeDone = true;
  }

  /** One wrap with nothing to encrypt, written out; its handshake status. */
  private HandshakeStatus flushOne() throws IOException {
    netOut.clear();
    SSLEngineResult r = engine.wrap(ByteBuffer.allocate(0), netOut);
    netOut.flip();
    sock.getOutputStream().write(netOut.array(), 0, netOut.limit());
    sock.getOutputStream().flush();
    return r.getHandshakeStatus();
  }

  /** Writes out what the engine still has to send (alerts, close_notify). */
  private void sendPending() {
    try {
      for (int i = 0; i < 16 && engine.getHandshakeStatus() == HandshakeStatus.NEED_WRAP; i++) {
        flushOne();
      }
    } catch (IOException ignored) {
      // the connection is going away
    }
  }

  /** One unwrap into appIn, reading from the socket as needed. */
  private HandshakeStatus unwrapOne(boolean handshaking) throws IOException {
    while (true) {
      appIn.compact();
      SSLEngineResult r;
      try {
        r = engine.unwrap(netIn, appIn);
      } finally {
        appIn.flip();
      }
      switch (r.getStatus()) {
        case BUFFER_UNDERFLOW:
          if (!fill()) {
            eof = true;
            if (handshaking) {
              throw new SSLHandshakeException("m2mpsk: the peer closed during the handshake");
            }
            engine.closeInbound(); // throws: no close_notify came
            return r.getHandshakeStatus();
          }
          continue;
        case BUFFER_OVERFLOW:
          return r.getHandshakeStatus(); // appIn is full: read it first
        case CLOSED:
          eof = true;
          if (r.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) {
            synchronized (writeLock) {
              sendPending();
            }
          }
          if (handshaking) throw new SSLHandshakeException("m2mpsk: closed during the handshake");
          return r.getHandshakeStatus();
        default:
          return r.getHandshakeStatus();
      }
    }
  }

  /** Reads more from the socket into netIn; false at end of stream. */
  private boolean fill() throws IOException {
    netIn.compact();
    try {
      int k = sock.getInputStream().read(netIn.array(), netIn.position(), netIn.remaining());
      if (k < 0) return false;
      netIn.position(netIn.position() + k);
      return true;
    } finally {
      netIn.flip();
    }
  }

  // ---- streams ----------------------------------------------------------------

  private final class AppInput extends InputStream {
    @Override
    public int read() throws IOException {
      byte[] b = new byte[1];
      int k = read(b, 0, 1);
      return k < 0 ? -1 : b[0] & 0xff;
    }

    @Override
    public int read(byte[] b, int off, int len) throws IOException {
      if (off < 0 || len < 0 || len > b.length - off) throw new IndexOutOfBoundsException();
      if (len == 0) return 0;
      startHandshake();
      synchronized (readLock) {
        while (!appIn.hasRemaining()) {
          if (eof || closed) return -1;
          unwrapOne(false);
        }
        int k = Math.min(len, appIn.remaining());
        appIn.get(b, off, k);
        return k;
      }
    }

    @Override
    public int available() {
      synchronized (readLock) {
        return appIn.remaining();
      }
    }

    @Override
    public void close() throws IOException {
      M2mpskSSLSocket.this.close();
    }
  }

  private final class AppOutput extends OutputStream {
    @Override
    public void write(int b) throws IOException {
      write(new byte[] {(byte) b}, 0, 1);
    }

    @Override
    public void write(byte[] b, int off, int len) throws IOException {
      if (off < 0 || len < 0 || len > b.length - off) throw new IndexOutOfBoundsException();
      startHandshake();
      ByteBuffer src = ByteBuffer.wrap(b, off, len);
      synchronized (writeLock) {
        while (src.hasRemaining()) {
          if (closed) throw new SocketException("socket closed");
          netOut.clear();
          SSLEngineResult r = engine.wrap(src, netOut);
          netOut.flip();
          sock.getOutputStream().write(netOut.array(), 0, netOut.limit());
          if (r.getStatus() == SSLEngineResult.Status.CLOSED) {
            throw new SocketException("m2mpsk: the connection is closed");
          }
        }
        sock.getOutputStream().flush();
      }
    }

    @Override
    public void close() throws IOException {
      M2mpskSSLSocket.this.close();
    }
  }

  @Override
  public InputStream getInputStream() throws IOException {
    if (closed) throw new SocketException("socket closed");
    return in;
  }

  @Override
  public OutputStream getOutputStream() throws IOException {
    if (closed) throw new SocketException("socket closed");
    return out;
  }

  /** Sends close_notify (when the handshake completed), then closes the
   * plain socket unless it was layered with autoClose false. */
  @Override
  public void close() throws IOException {
    if (closed) return;
    closed = true;
    engine.closeOutbound();
    synchronized (writeLock) {
      sendPending();
    }
    if (autoClose) sock.close();
  }

  // ---- SSLSocket ------------------------------------------------------------------

  @Override
  public SSLSession getSession() {
    try {
      startHandshake();
    } catch (IOException e) {
      // as the JDK: an invalid session, its suite SSL_NULL_WITH_NULL_NULL
    }
    return engine.getSession();
  }

  @Override
  public SSLSession getHandshakeSession() {
    return engine.getHandshakeSession();
  }

  @Override
  public String[] getSupportedCipherSuites() {
    return engine.getSupportedCipherSuites();
  }

  @Override
  public String[] getEnabledCipherSuites() {
    return engine.getEnabledCipherSuites();
  }

  @Override
  public void setEnabledCipherSuites(String[] suites) {
    engine.setEnabledCipherSuites(suites);
  }

  @Override
  public String[] getSupportedProtocols() {
    return engine.getSupportedProtocols();
  }

  @Override
  public String[] getEnabledProtocols() {
    return engine.getEnabledProtocols();
  }

  @Override
  public void setEnabledProtocols(String[] protocols) {
    engine.setEnabledProtocols(protocols);
  }

  @Override
  public void addHandshakeCompletedListener(HandshakeCompletedListener l) {
    if (l == null) throw new IllegalArgumentException("null listener");
    listeners.add(l);
  }

  @Override
  public void removeHandshakeCompletedListener(HandshakeCompletedListener l) {
    if (!listeners.remove(l)) throw new IllegalArgumentException("listener not registered");
  }

  @Override
  public void setUseClientMode(boolean mode) {
    engine.setUseClientMode(mode);
  }

  @Override
  public boolean getUseClientMode() {
    return engine.getUseClientMode();
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
  public void setEnableSessionCreation(boolean flag) {
    engine.setEnableSessionCreation(flag);
  }

  @Override
  public boolean getEnableSessionCreation() {
    return engine.getEnableSessionCreation();
  }

  @Override
  public String getApplicationProtocol() {
    return engine.getApplicationProtocol();
  }

  // ---- the plain socket's ---------------------------------------------------------

  @Override
  public void connect(SocketAddress endpoint) throws IOException {
    sock.connect(endpoint);
  }

  @Override
  public void connect(SocketAddress endpoint, int timeout) throws IOException {
    sock.connect(endpoint, timeout);
  }

  @Override
  public void bind(SocketAddress local) throws IOException {
    sock.bind(local);
  }

  @Override
  public InetAddress getInetAddress() {
    return sock.getInetAddress();
  }

  @Override
  public InetAddress getLocalAddress() {
    return sock.getLocalAddress();
  }

  @Override
  public int getPort() {
    return sock.getPort();
  }

  @Override
  public int getLocalPort() {
    return sock.getLocalPort();
  }

  @Override
  public SocketAddress getRemoteSocketAddress() {
    return sock.getRemoteSocketAddress();
  }

  @Override
  public SocketAddress getLocalSocketAddress() {
    return sock.getLocalSocketAddress();
  }

  @Override
  public void setTcpNoDelay(boolean on) throws SocketException {
    sock.setTcpNoDelay(on);
  }

  @Override
  public boolean getTcpNoDelay() throws SocketException {
    return sock.getTcpNoDelay();
  }

  @Override
  public void setSoLinger(boolean on, int linger) throws SocketException {
    sock.setSoLinger(on, linger);
  }

  @Override
  public int getSoLinger() throws SocketException {
    return sock.getSoLinger();
  }

  @Override
  public void setSoTimeout(int timeout) throws SocketException {
    sock.setSoTimeout(timeout);
  }

  @Override
  public int getSoTimeout() throws SocketException {
    return sock.getSoTimeout();
  }

  @Override
  public void setKeepAlive(boolean on) throws SocketException {
    sock.setKeepAlive(on);
  }

  @Override
  public boolean getKeepAlive() throws SocketException {
    return sock.getKeepAlive();
  }

  @Override
  public void setSendBufferSize(int size) throws SocketException {
    sock.setSendBufferSize(size);
  }

  @Override
  public int getSendBufferSize() throws SocketException {
    return sock.getSendBufferSize();
  }

  @Override
  public void setReceiveBufferSize(int size) throws SocketException {
    sock.setReceiveBufferSize(size);
  }

  @Override
  public int getReceiveBufferSize() throws SocketException {
    return sock.getReceiveBufferSize();
  }

  @Override
  public boolean isConnected() {
    return sock.isConnected();
  }

  @Override
  public boolean isBound() {
    return sock.isBound();
  }

  @Override
  public boolean isClosed() {
    return closed || sock.isClosed();
  }

  @Override
  public boolean isInputShutdown() {
    return eof || sock.isInputShutdown();
  }

  @Override
  public boolean isOutputShutdown() {
    return engine.isOutboundDone() || sock.isOutputShutdown();
  }

  @Override
  public void shutdownInput() throws IOException {
    throw new UnsupportedOperationException("m2mpsk: no half-close over TLS 1.2");
  }

  @Override
  public void shutdownOutput() throws IOException {
    throw new UnsupportedOperationException("m2mpsk: no half-close over TLS 1.2");
  }

  @Override
  public String toString() {
    return "M2mpskSSLSocket[" + sock + ", " + engine.getSession() + "]";
  }
}
