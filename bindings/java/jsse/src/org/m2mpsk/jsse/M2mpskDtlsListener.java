package org.m2mpsk.jsse;

import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLException;
import org.m2mpsk.Config;

/**
 * The DTLS server's stateless cookie exchange (RFC 6347 4.2.1), for a
 * {@link java.nio.channels.DatagramChannel} loop: call {@link #accept} with
 * each datagram from an address that has no engine yet, before making one,
 * so that a forged source address costs the server no engine and no
 * memory.
 *
 * <pre>{@code
 * M2mpskDtlsListener listener = M2mpskContexts.dtlsListener(sslContext);
 * SocketAddress from = channel.receive(datagram.clear());
 * datagram.flip();
 * SSLEngine e = engines.get(from);
 * if (e == null) {
 *   switch (listener.accept(from, datagram, reply.clear())) {
 *     case REPLY: channel.send(reply.flip(), from); break;        // keep nothing
 *     case ACCEPT: engines.put(from, e = listener.newEngine(from)); break;
 *     case DROP: break;
 *   }
 * }
 * if (e != null) e.unwrap(datagram, app);  // the same datagram
 * }</pre>
 *
 * <p>A cookie is bound to the peer's address, IP and port, and to the
 * ClientHello's random, under a secret of the context's config: a cookie
 * obtained from one address is not valid from another, and a listener
 * holds no state of its own (any listener of the same context accepts the
 * cookies another one sent). The engine for an accepted peer must be made
 * with the same address, by {@link #newEngine} (or
 * {@code sslContext.createSSLEngine(address.getHostAddress(), port)} in
 * server mode), and keep the context's default suites: its association then
 * checks the cookie again with the same secret and continues the handshake
 * the HelloVerifyRequest began, from the ClientHello of message_seq 1. An
 * engine made otherwise (another address, other suites, no address) cannot
 * take that ClientHello: it answers with a HelloVerifyRequest of its own,
 * which the client ignores, past that step, and the handshake times out.
 *
 * <p>The cookie exchange runs on the OpenSSL engine, which the default
 * engine choice ({@code ENGINE_AUTO}) gives DTLS servers. On a context
 * whose parameters name BoringSSL (whose DTLS server has no cookie
 * exchange), or in a process that cannot load OpenSSL's engine,
 * {@link #cookies()} is false and {@link #accept} answers ACCEPT at once
 * for every datagram that looks like a ClientHello, as the Python asyncio
 * server does: each new address then costs an engine, which the config's
 * handshake limit bounds. A server that wants cookies or nothing checks
 * {@link #cookies()} when it starts.
 *
 * <p>Thread-safe: accept may be called from several threads at once.
 */
public final class M2mpskDtlsListener {
  /** What to do with a datagram from an address that has no engine. */
  public enum Verdict {
    /** Send the reply buffer (a HelloVerifyRequest) back to the peer, and
     * keep nothing. */
    REPLY,
    /** A ClientHello with a valid cookie (or, without cookies, any
     * ClientHello): make the peer's engine ({@link #newEngine}) and unwrap
     * this same datagram with it. */
    ACCEPT,
    /** Not a ClientHello, or too long to be one: drop it. */
    DROP
  }

  /** The room a reply buffer needs: a HelloVerifyRequest never exceeds
   * it. */
  public static final int MAX_REPLY = 64;

  /** The longest datagram examined: one DTLS record of the largest size.
   * Longer ones are dropped. */
  public static final int MAX_DATAGRAM =
      M2mpskSession.DTLS_HEADER + M2mpskSession.MAX_PLAINTEXT + 2048;

  private final SSLContext context;
  private final Config config;
  private final boolean cookies;

  M2mpskDtlsListener(SSLContext context, ContextState state) throws SSLException {
    if (!state.dtls) throw new IllegalArgumentException("not a DTLS context");
    this.context = context;
    this.config = state.defaultConfig();
    this.cookies = probe(config);
  }

  /** Whether the config has the cookie exchange: a one-byte datagram is
   * refused as E_PROTOCOL with it, E_UNSUPPORTED without, before anything
   * is parsed. */
  private static boolean probe(Config config) throws SSLException {
    try {
      Native.dtlsListen(config, "probe", new byte[] {0});
      return true; // not reached: one byte is no ClientHello
    } catch (SSLException e) {
      if (Native.hasCode(e, Native.E_PROTOCOL)) return true;
      if (Native.hasCode(e, Native.E_UNSUPPORTED)) return false;
      throw e;
    }
  }

  /** Whether this listener answers with cookies (false on a BoringSSL
   * config: then {@link #accept} accepts every ClientHello at once). */
  public boolean cookies() {
    return cookies;
  }

  /**
   * Examines a datagram received from {@code peer}, an address that has no
   * engine yet. The datagram's position and limit are left as they were
   * (on ACCEPT, unwrap it as it is); on REPLY the HelloVerifyRequest is put
   * into {@code reply} at its position, which moves past it (flip it, then
   * send it to {@code peer}); otherwise reply is untouched.
   *
   * @param peer the datagram's source, an {@link InetSocketAddress} with an
   *     IP address (as {@code DatagramChannel.receive} returns)
   * @param datagram the datagram, between its position and limit
   * @param reply where a HelloVerifyRequest goes; at least
   *     {@link #MAX_REPLY} bytes remaining
   * @return REPLY, ACCEPT or DROP (see {@link Verdict})
   * @throws SSLException the core's {@link org.m2mpsk.M2mpskException} for
   *     a failure of the library's, not the peer's (E_BACKEND, E_NOMEM,
   *     E_INTERNAL)
   * @throws IllegalArgumentException a null argument, a peer that is not an
   *     {@code InetSocketAddress} with an IP address, a read-only reply or
   *     one with less than {@link #MAX_REPLY} bytes remaining
   */
  public Verdict accept(SocketAddress peer, ByteBuffer datagram, ByteBuffer reply)
      throws SSLException {
    String tag = peerTag(peer);
    if (datagram == null || reply == null) throw new IllegalArgumentException("null buffer");
    if (reply.isReadOnly() || reply.remaining() < MAX_REPLY) {
      throw new IllegalArgumentException("the reply buffer needs " + MAX_REPLY
          + " writable bytes");
    }
    int len = datagram.remaining();
    if (len == 0 || len > MAX_DATAGRAM || !isClientHello(datagram)) return Verdict.DROP;
    if (!cookies) return Verdict.ACCEPT;
    byte[] bytes = new byte[len];
    datagram.duplicate().get(bytes);
    byte[] hvr;
    try {
      hvr = Native.dtlsListen(config, tag, bytes);
    } catch (SSLException e) {
      if (Native.hasCode(e, Native.E_PROTOCOL)) return Verdict.DROP;
      throw e;
    }
    if (hvr == null) return Verdict.ACCEPT;
    reply.put(hvr);
    return Verdict.REPLY;
  }

  /**
   * A server-mode engine for {@code peer}, made by this listener's context
   * with the peer's IP address and port, which the cookie was bound to.
   * Leave its enabled suites as they are (the context's defaults, whose
   * config made the cookie): see the class description.
   *
   * @param peer the address {@link #accept} answered ACCEPT for
   * @return the engine, its handshake not yet begun
   * @throws IllegalArgumentException a peer that is not an
   *     {@code InetSocketAddress} with an IP address
   */
  public SSLEngine newEngine(SocketAddress peer) {
    InetSocketAddress a = inet(peer);
    SSLEngine e = context.createSSLEngine(a.getAddress().getHostAddress(), a.getPort());
    e.setUseClientMode(false);
    return e;
  }

  /** A DTLS handshake record (content type 22) whose first message is a
   * ClientHello (type 1): the only datagram that may open an association. */
  private static boolean isClientHello(ByteBuffer d) {
    int p = d.position();
    return d.remaining() > 13 && d.get(p) == 22 && d.get(p + 13) == 1;
  }

  private static InetSocketAddress inet(SocketAddress peer) {
    if (!(peer instanceof InetSocketAddress) || ((InetSocketAddress) peer).isUnresolved()) {
      throw new IllegalArgumentException("the peer must be an InetSocketAddress with an IP"
          + " address: " + peer);
    }
    return (InetSocketAddress) peer;
  }

  /** The peer tag of an address: "192.0.2.7:5684", "[2001:db8::7]:5684". */
  static String peerTag(SocketAddress peer) {
    InetSocketAddress a = inet(peer);
    String tag = tag(a.getAddress().getHostAddress(), a.getPort());
    if (tag == null) throw new IllegalArgumentException("unusable peer address: " + peer);
    return tag;
  }

  /** The peer tag of a host (an IP address as written by
   * InetAddress.getHostAddress()) and port, or null when it cannot be one
   * (the library's rule: 1 to 128 printable ASCII characters). An engine
   * made for the same host and port gets the same tag. */
  static String tag(String host, int port) {
    if (host == null || host.isEmpty() || port < 0) return null;
    String t = (host.indexOf(':') >= 0 ? "[" + host + "]" : host) + ":" + port;
    if (t.length() > 128) return null;
    for (int i = 0; i < t.length(); i++) {
      char c = t.charAt(i);
      if (c < ' ' || c > '~') return null;
    }
    return t;
  }

  @Override
  public String toString() {
    return "M2mpskDtlsListener[" + (cookies ? "cookies" : "no cookies") + "]";
  }
}
