package org.m2mpsk.jsse;

import java.security.Principal;
import java.security.SecureRandom;
import java.security.cert.Certificate;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLPeerUnverifiedException;
import javax.net.ssl.SSLSession;
import javax.net.ssl.SSLSessionBindingEvent;
import javax.net.ssl.SSLSessionBindingListener;
import javax.net.ssl.SSLSessionContext;

/**
 * The session of one {@link M2mpskSSLEngine} (or {@link javax.net.ssl.SSLSocket}
 * over one): the identity the association is bound to and what was
 * negotiated. There are no certificates: {@link #getPeerCertificates()}
 * throws {@link SSLPeerUnverifiedException}, and the peer's identity is
 * {@link #getPeerPrincipal()}, an {@link M2mpskPrincipal}. Sessions are not
 * resumed; {@link #getSessionContext()} is null.
 *
 * <p>Beside the {@link SSLSession} methods: {@link #peerId()},
 * {@link #kpsaId()}, {@link #credential()}, {@link #localId()} and the
 * oneM2M originator check of a request that arrived on this session,
 * {@link #originatorCheck(String)}.
 */
public final class M2mpskSession implements SSLSession {
  /** The largest plaintext of one record (TLS and DTLS 1.2). */
  static final int MAX_PLAINTEXT = 16384;
  /** The most a record adds to its plaintext, past its header: explicit
   * IV, MAC (or tag) and CBC padding (at most 256 bytes). */
  static final int MAX_EXPANSION = 16 + 48 + 256;
  static final int TLS_HEADER = 5;
  static final int DTLS_HEADER = 13;

  private static final SecureRandom RANDOM = new SecureRandom();

  private final M2mpskSSLEngine engine;
  private final boolean dtls;
  private final byte[] id = new byte[32];
  private final long creationTime = System.currentTimeMillis();
  private final Map<String, Object> values = new ConcurrentHashMap<>();
  private volatile long lastAccessed = creationTime;
  private volatile boolean invalid;
  // Set once, when the handshake completes (under the engine's lock).
  private volatile boolean established;
  private volatile String peerId;
  private volatile boolean credential;
  private volatile String localId;
  private volatile String kpsaId;
  private volatile String suite;
  private volatile String protocol;

  M2mpskSession(M2mpskSSLEngine engine, boolean dtls) {
    this.engine = engine;
    this.dtls = dtls;
    RANDOM.nextBytes(id);
  }

  /** Called by the engine when the association is established. */
  void established(Native n) {
    peerId = n.peerId();
    credential = n.peerIdIsCredential();
    localId = n.localId();
    kpsaId = n.kpsaId();
    suite = n.suite();
    protocol = n.version();
    established = true;
  }

  /** Called by the engine after bindAeId(). */
  void rebound(Native n) {
    peerId = n.peerId();
    credential = n.peerIdIsCredential();
  }

  void accessed() {
    lastAccessed = System.currentTimeMillis();
  }

  // ---- oneM2M ----------------------------------------------------------

  /** The identity the session is bound to: Entity A sees IdB; Entity B sees
   * IdA, or the Credential-ID "12-&lt;KpsaID&gt;" when the record has no
   * IdA ({@link #credential()}). Null before the handshake completes. */
  public String peerId() {
    return peerId;
  }

  /** True when {@link #peerId()} is a Credential-ID. */
  public boolean credential() {
    return credential;
  }

  /** The KpsaID the handshake used; null before it is known. */
  public String kpsaId() {
    return kpsaId;
  }

  /** The identity this side assumed: Entity B's IdB, Entity A's IdA (null
   * when its record has none). */
  public String localId() {
    return localId;
  }

  /**
   * Decides whether a request that arrived on this session may carry the
   * originator {@code from} (its X-M2M-Origin; null or "" when absent), as
   * TS-0004 7.3.2.1 asks of a CSE. Returns 0 (accept), 4106
   * (ORIGINATOR_NOT_AUTHENTICATED) or 4107. Throws
   * {@link org.m2mpsk.M2mpskException} for a malformed {@code from} (E_IDA), on an
   * Entity A without a CSE-ID (E_IDB), or once the session is closed
   * (E_STATE).
   */
  public int originatorCheck(String from) throws SSLException {
    return engine.originatorCheck(from, 0);
  }

  /** The check for an &lt;AE&gt; CREATE (an AE registering), which may
   * carry no From or a new one; see {@link #originatorCheck(String)}. */
  public int originatorCheckAeCreate(String from) throws SSLException {
    return engine.originatorCheck(from, Native.ORIGINATOR_AE_CREATE);
  }

  /** Binds the AE-ID the CSE assigned at registration to a session bound to
   * a Credential-ID (Entity B only); {@link #peerId()} is then the AE-ID. */
  public void bindAeId(String aeId) throws SSLException {
    engine.bindAeId(aeId);
  }

  /** RFC 5705 keying material for label (and context, or null). */
  public byte[] exportKeyingMaterial(String label, byte[] context, int length)
      throws SSLException {
    return engine.exportKeyingMaterial(length, label, context);
  }

  // ---- SSLSession ------------------------------------------------------

  @Override
  public byte[] getId() {
    return id.clone();
  }

  @Override
  public SSLSessionContext getSessionContext() {
    return null;
  }

  @Override
  public long getCreationTime() {
    return creationTime;
  }

  @Override
  public long getLastAccessedTime() {
    return lastAccessed;
  }

  @Override
  public void invalidate() {
    invalid = true;
  }

  @Override
  public boolean isValid() {
    return established && !invalid;
  }

  @Override
  public void putValue(String name, Object value) {
    if (name == null || value == null) throw new IllegalArgumentException("null name or value");
    Object old = values.put(name, value);
    if (old instanceof SSLSessionBindingListener) {
      ((SSLSessionBindingListener) old).valueUnbound(new SSLSessionBindingEvent(this, name));
    }
    if (value instanceof SSLSessionBindingListener) {
      ((SSLSessionBindingListener) value).valueBound(new SSLSessionBindingEvent(this, name));
    }
  }

  @Override
  public Object getValue(String name) {
    if (name == null) throw new IllegalArgumentException("null name");
    return values.get(name);
  }

  @Override
  public void removeValue(String name) {
    if (name == null) throw new IllegalArgumentException("null name");
    Object old = values.remove(name);
    if (old instanceof SSLSessionBindingListener) {
      ((SSLSessionBindingListener) old).valueUnbound(new SSLSessionBindingEvent(this, name));
    }
  }

  @Override
  public String[] getValueNames() {
    return values.keySet().toArray(new String[0]);
  }

  /** Always throws: a PSK session has no certificates. */
  @Override
  public Certificate[] getPeerCertificates() throws SSLPeerUnverifiedException {
    throw new SSLPeerUnverifiedException("m2mpsk: no certificates (PSK); see getPeerPrincipal()");
  }

  @Override
  public Certificate[] getLocalCertificates() {
    return null;
  }

  /** Always throws: a PSK session has no certificates. */
  @Override
  @SuppressWarnings({"deprecation", "removal"})
  public javax.security.cert.X509Certificate[] getPeerCertificateChain()
      throws SSLPeerUnverifiedException {
    throw new SSLPeerUnverifiedException("m2mpsk: no certificates (PSK); see getPeerPrincipal()");
  }

  /** The identity the session is bound to; throws before the handshake
   * completes. */
  @Override
  public Principal getPeerPrincipal() throws SSLPeerUnverifiedException {
    String p = peerId;
    if (p == null) throw new SSLPeerUnverifiedException("m2mpsk: the handshake is not complete");
    return new M2mpskPrincipal(p, credential);
  }

  /** The identity this side assumed, or null. */
  @Override
  public Principal getLocalPrincipal() {
    String l = localId;
    return l == null ? null : new M2mpskPrincipal(l, false);
  }

  /** The IANA name, e.g. "TLS_PSK_WITH_AES_128_CBC_SHA256";
   * "SSL_NULL_WITH_NULL_NULL" before the handshake completes. */
  @Override
  public String getCipherSuite() {
    String s = suite;
    return s == null ? "SSL_NULL_WITH_NULL_NULL" : s;
  }

  /** "TLSv1.2" or "DTLSv1.2"; "NONE" before the handshake completes. */
  @Override
  public String getProtocol() {
    String p = protocol;
    return p == null ? "NONE" : p;
  }

  @Override
  public String getPeerHost() {
    return engine.getPeerHost();
  }

  @Override
  public int getPeerPort() {
    return engine.getPeerPort();
  }

  /** The largest record this session sends or accepts. */
  @Override
  public int getPacketBufferSize() {
    return (dtls ? DTLS_HEADER : TLS_HEADER) + MAX_PLAINTEXT + MAX_EXPANSION;
  }

  /** The largest plaintext one record carries. */
  @Override
  public int getApplicationBufferSize() {
    return MAX_PLAINTEXT;
  }

  /** Names the peer and the suite, never key material. */
  @Override
  public String toString() {
    return "M2mpskSession[" + getProtocol() + " " + getCipherSuite() + ", peer=" + peerId
        + ", kpsaId=" + kpsaId + "]";
  }
}
