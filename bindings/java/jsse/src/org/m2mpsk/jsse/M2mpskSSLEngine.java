package org.m2mpsk.jsse;

import java.nio.ByteBuffer;
import java.nio.ReadOnlyBufferException;
import java.util.ArrayDeque;
import java.util.Arrays;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLEngineResult.Status;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLHandshakeException;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSession;

/**
 * An {@link SSLEngine} over one m2mpsk association: TLS 1.2 or DTLS 1.2
 * with a pre-shared key (oneM2M TS-0003 8.2.2.1). Client mode is Entity A
 * (the initiator, naming its record by KpsaID), server mode Entity B (the
 * responder, serving its CSE-IDs). Made by an m2mpsk
 * {@link javax.net.ssl.SSLContext} ({@link M2mpskProvider}).
 *
 * <p>It behaves as the JDK documents for {@code SSLEngine}:
 * <ul>
 * <li>{@code unwrap} consumes one whole TLS record, or one whole datagram
 * (DTLS: the source buffer holds what one receive returned), and reports
 * {@code BUFFER_UNDERFLOW} without consuming anything while the source holds
 * less, and {@code BUFFER_OVERFLOW} without consuming anything when the
 * destinations have less room than the record's plaintext may need.</li>
 * <li>{@code wrap} produces whole records, one datagram per call in DTLS
 * mode, and reports {@code BUFFER_OVERFLOW} without consuming anything when
 * the destination cannot hold the next one
 * ({@link SSLSession#getPacketBufferSize()} always can).</li>
 * <li>The handshake status is {@code NEED_WRAP} while records wait to be
 * sent, {@code NEED_UNWRAP} while the handshake waits for the peer, and
 * {@code FINISHED} in the result of the call that completes the handshake.
 * {@code NEED_TASK} while the handshake waits for a key the keystore's
 * key source is looking up ({@link org.m2mpsk.Keystore#setKeySource}):
 * {@link #getDelegatedTask()} then returns a task that waits, bounded by
 * the handshake timeout, until the source has answered; the next call
 * goes on with the handshake (or fails it: no record, or the timeout).</li>
 * <li>{@link #closeOutbound()} queues close_notify; a close_notify received
 * makes {@code unwrap} return {@code CLOSED} and queues the answering
 * close_notify ({@code NEED_WRAP}). TLS 1.2 closes both directions at once,
 * so after {@code closeOutbound()} the engine reads no more input.
 * {@link #closeInbound()} before the peer's close_notify throws, as the JDK
 * does, since the data may have been truncated.</li>
 * <li>A failed handshake throws the core's
 * {@link org.m2mpsk.M2mpskHandshakeException} (with the reason, e.g.
 * "bad-key"); the alert telling the peer is then queued, and {@code wrap}
 * returns it with status {@code CLOSED}. Other failures throw the core's
 * {@link org.m2mpsk.M2mpskException}; both carry the library's status
 * ({@link org.m2mpsk.M2mpskStatus}). A call the core refuses as a caller's
 * bug (E_INVALID) throws {@link org.m2mpsk.M2mpskUsageException}, an
 * {@code IllegalArgumentException}; a handshake begun on a keystore the
 * caller has closed throws {@code IllegalStateException}, with it as
 * cause. An engine that could not make its association at all (that, or
 * an unknown KpsaID) has no alert to send and is closed in both directions
 * once it has thrown.</li>
 * <li>A DTLS server engine made with the peer's host and port names its
 * association by both ("192.0.2.7:5684"), the address the handshake rate
 * limit counts by and {@link M2mpskDtlsListener}'s cookies are bound to;
 * other engines by the host alone.</li>
 * <li>In DTLS mode, a {@code wrap} or {@code unwrap} call after the
 * retransmission timer has passed retransmits the last flight (the JDK's
 * DTLS engine does the same on {@code wrap}): call {@code wrap} when a
 * receive times out during the handshake.</li>
 * </ul>
 *
 * <p>Renegotiation is not supported. The engine serializes its methods, so
 * {@link M2mpskSession#originatorCheck(String)} may be called from another
 * thread (a servlet's) than the one wrapping and unwrapping.
 */
public final class M2mpskSSLEngine extends SSLEngine {
  private static final HandshakeStatus NEED_WRAP = HandshakeStatus.NEED_WRAP;
  private static final HandshakeStatus NEED_UNWRAP = HandshakeStatus.NEED_UNWRAP;
  private static final HandshakeStatus FINISHED = HandshakeStatus.FINISHED;
  private static final HandshakeStatus NOT_HANDSHAKING = HandshakeStatus.NOT_HANDSHAKING;

  private final ContextState ctx;
  private final boolean dtls;
  private final M2mpskSession session;
  private boolean modeSet;
  private boolean clientMode;
  private String[] enabledSuites;
  private String[] enabledProtocols;
  private boolean sessionCreation = true;
  private String endpointIdentification;
  private int maximumPacketSize; // DTLS: the MTU; 0 for the parameters'

  private Native n; // null until the handshake begins
  private boolean finishedReported;
  private boolean inboundDone;
  private boolean outboundClosed;
  private boolean peerClosed;
  private boolean failed;
  // A failure found while answering getHandshakeStatus() or
  // getDelegatedTask(), which cannot throw it: the next wrap or unwrap does.
  private SSLException deferred;
  /** Records (TLS: a byte stream of whole records) or datagrams (DTLS)
   * drained from the association, not yet handed out by wrap. */
  private final ArrayDeque<byte[]> netOut = new ArrayDeque<>();
  /** Decrypted data not yet handed out by unwrap. */
  private byte[] appIn = new byte[0];
  private int appInPos;

  M2mpskSSLEngine(ContextState ctx, String host, int port) {
    super(host, port);
    this.ctx = ctx;
    this.dtls = ctx.dtls;
    this.session = new M2mpskSession(this, dtls);
    this.enabledSuites = ctx.defaultSuites().toArray(new String[0]);
    this.enabledProtocols = new String[] {ctx.protocol()};
  }

  // ---- configuration ----------------------------------------------------

  @Override
  public synchronized void setUseClientMode(boolean mode) {
    if (n != null) throw new IllegalArgumentException("the handshake has begun");
    clientMode = mode;
    modeSet = true;
  }

  @Override
  public synchronized boolean getUseClientMode() {
    return clientMode;
  }

  /** Every PSK suite this build's engines support. */
  @Override
  public String[] getSupportedCipherSuites() {
    return ctx.supportedSuites().toArray(new String[0]);
  }

  @Override
  public synchronized String[] getEnabledCipherSuites() {
    return enabledSuites.clone();
  }

  /** Takes effect for a handshake not yet begun. Throws
   * IllegalArgumentException for a suite that is not supported. */
  @Override
  public synchronized void setEnabledCipherSuites(String[] suites) {
    enabledSuites = ctx.checkSuites(suites);
  }

  /** "TLSv1.2", or "DTLSv1.2" for a DTLS context's engines. */
  @Override
  public String[] getSupportedProtocols() {
    return new String[] {ctx.protocol()};
  }

  @Override
  public synchronized String[] getEnabledProtocols() {
    return enabledProtocols.clone();
  }

  @Override
  public synchronized void setEnabledProtocols(String[] protocols) {
    enabledProtocols = ctx.checkProtocols(protocols);
  }

  /** True: a PSK handshake always authenticates the client (Entity A
   * proves it holds Kpsa). The setter changes nothing. */
  @Override
  public boolean getNeedClientAuth() {
    return true;
  }

  @Override
  public void setNeedClientAuth(boolean need) {}

  @Override
  public boolean getWantClientAuth() {
    return true;
  }

  @Override
  public void setWantClientAuth(boolean want) {}

  @Override
  public synchronized void setEnableSessionCreation(boolean flag) {
    sessionCreation = flag;
  }

  @Override
  public synchronized boolean getEnableSessionCreation() {
    return sessionCreation;
  }

  /** The base class's parameters, plus the endpoint identification
   * algorithm as set (a PSK session satisfies it by the key: there is no
   * certificate to check a name against) and, for DTLS, the MTU as the
   * maximum packet size. */
  @Override
  public synchronized SSLParameters getSSLParameters() {
    SSLParameters p = super.getSSLParameters();
    p.setEndpointIdentificationAlgorithm(endpointIdentification);
    p.setMaximumPacketSize(dtls ? mtu() : 0);
    return p;
  }

  /** Takes the suites, protocols, the endpoint identification algorithm
   * and, for DTLS before the handshake, a maximum packet size (the MTU:
   * MTU_MIN to MTU_MAX, or 0 for the default). Throws
   * IllegalArgumentException for an unsupported suite or protocol, or a
   * packet size out of range. */
  @Override
  public synchronized void setSSLParameters(SSLParameters p) {
    int max = p.getMaximumPacketSize();
    if (dtls && max != 0 && (max < Native.MTU_MIN || max > Native.MTU_MAX)) {
      throw new IllegalArgumentException("maximum packet size out of range: " + max);
    }
    super.setSSLParameters(p);
    endpointIdentification = p.getEndpointIdentificationAlgorithm();
    if (dtls && n == null) maximumPacketSize = max;
  }

  /** The session; its peer identity is known once the handshake has
   * finished. */
  @Override
  public SSLSession getSession() {
    return session;
  }

  @Override
  public synchronized SSLSession getHandshakeSession() {
    return n != null && !finishedReported ? session : null;
  }

  /** "" once the handshake is done (there is no ALPN), null before. */
  @Override
  public synchronized String getApplicationProtocol() {
    return finishedReported ? "" : null;
  }

  @Override
  public String getHandshakeApplicationProtocol() {
    return null;
  }

  /** A task that waits for the key the handshake needs, or null. */
  @Override
  public synchronized Runnable getDelegatedTask() {
    if (n == null || failed) return null;
    try {
      return n.keyWaitTask();
    } catch (SSLException e) {
      fail();
      deferred = e;
      return null;
    }
  }

  /** Goes on with a handshake whose key has come, or fails one whose
   * wait has timed out; either way its output is pulled. */
  private void keyProgress() throws SSLException {
    if (deferred != null) {
      SSLException e = deferred;
      deferred = null;
      throw e;
    }
    if (n == null || failed || n.state() != Native.STATE_WAITING_KEY) return;
    try {
      n.resumeIfAnswered();
    } catch (SSLException e) {
      fail();
      throw e;
    }
    pullOutput();
  }

  /** After a call that may have left the handshake waiting for its key:
   * the key source starts looking it up at once. */
  private void keyDispatch() throws SSLException {
    if (n != null && !failed && n.state() == Native.STATE_WAITING_KEY) n.dispatchKeys();
  }

  // ---- handshake ----------------------------------------------------------

  @Override
  public synchronized void beginHandshake() throws SSLException {
    if (!modeSet) throw new IllegalStateException("client/server mode not yet set");
    if (outboundClosed || inboundDone) throw new SSLException("m2mpsk: the engine is closed");
    if (n == null) {
      begin();
    } else if (finishedReported) {
      throw new SSLException("m2mpsk: renegotiation is not supported");
    }
  }

  private void begin() throws SSLException {
    try {
      if (!sessionCreation) throw new SSLHandshakeException("session creation is disabled");
      if (enabledProtocols.length == 0) {
        throw new SSLHandshakeException("no protocol is enabled");
      }
      n = ctx.open(clientMode, Arrays.asList(enabledSuites), maximumPacketSize);
    } catch (SSLException | RuntimeException e) {
      // No association (an unknown KpsaID, a closed keystore, no suite):
      // the handshake failed before a byte was sent, so there is no alert
      // to wrap out and the engine is done in both directions at once.
      fail();
      throw e;
    }
    try {
      n.start(clientMode ? null : peerTag());
      keyDispatch(); // an initiator's own key, from the source
    } catch (SSLException e) {
      fail();
      throw e;
    }
    pullOutput();
  }

  /** The peer's address, which a responder's rate limit counts by: the
   * host, or for DTLS with a port the host and port, the tag
   * {@link M2mpskDtlsListener} binds its cookies to. */
  private String peerTag() {
    String h = getPeerHost();
    if (dtls && getPeerPort() > 0) return M2mpskDtlsListener.tag(h, getPeerPort());
    if (h == null || h.isEmpty() || h.length() > 64) return null;
    for (int i = 0; i < h.length(); i++) {
      char c = h.charAt(i);
      if (c <= ' ' || c > '~') return null;
    }
    return h;
  }

  @Override
  public synchronized HandshakeStatus getHandshakeStatus() {
    if (n != null && !failed && deferred == null && n.state() == Native.STATE_WAITING_KEY) {
      // The task has run: go on now, so that the status is the next step.
      // A failure is thrown by the next wrap or unwrap, as SSLEngine's are.
      try {
        runTimers();
        keyProgress();
      } catch (SSLException e) {
        deferred = e;
      }
    }
    return status();
  }

  private HandshakeStatus status() {
    if (n == null) return NOT_HANDSHAKING;
    if (!netOut.isEmpty()) return NEED_WRAP;
    if (failed || outboundClosed || peerClosed) return NOT_HANDSHAKING;
    int s = n.state();
    if (s == Native.STATE_IDLE || s == Native.STATE_HANDSHAKING) return NEED_UNWRAP;
    if (s == Native.STATE_WAITING_KEY) return HandshakeStatus.NEED_TASK;
    return NOT_HANDSHAKING;
  }

  /** The status a result reports: FINISHED once, in the call after which the
   * association is established and its last flight is handed out. */
  private HandshakeStatus resultStatus() {
    HandshakeStatus hs = status();
    if (!finishedReported && hs == NOT_HANDSHAKING && !failed && n != null
        && n.state() == Native.STATE_ESTABLISHED) {
      finishedReported = true;
      return FINISHED;
    }
    return hs;
  }

  private void begun() throws SSLException {
    if (!modeSet) throw new IllegalStateException("client/server mode not yet set");
    if (n == null && !outboundClosed && !inboundDone) begin();
  }

  /** Moves what the association has to send into netOut, and notes an
   * established association in the session. */
  private void pullOutput() throws SSLException {
    if (n == null) return;
    while (n.pending() > 0) {
      byte[] b = n.drain();
      if (b.length == 0) break;
      netOut.add(b);
    }
    if (!failed && session.peerId() == null && n.state() == Native.STATE_ESTABLISHED) {
      session.established(n);
    }
  }

  /** The association failed: what it queued (an alert) is still sent, and
   * nothing more is read or written. */
  private void fail() {
    failed = true;
    inboundDone = true;
    outboundClosed = true;
    try {
      pullOutput();
    } catch (SSLException ignored) {
      // no alert to send
    }
  }

  private void runTimers() throws SSLException {
    if (n == null || failed) return;
    try {
      n.runTimers();
    } catch (SSLException e) {
      fail();
      throw e;
    }
    pullOutput();
  }

  // ---- wrap -----------------------------------------------------------------

  @Override
  public synchronized SSLEngineResult wrap(ByteBuffer[] srcs, int offset, int length,
      ByteBuffer dst) throws SSLException {
    checkArrays(srcs, offset, length, dst == null);
    if (dst.isReadOnly()) throw new ReadOnlyBufferException();
    begun();
    runTimers();
    keyProgress();
    session.accessed();
    if (!netOut.isEmpty()) {
      int produced = emit(dst);
      if (produced == 0) return result(Status.BUFFER_OVERFLOW, 0, 0, status());
      Status st = netOut.isEmpty() && (outboundClosed || peerClosed) ? Status.CLOSED : Status.OK;
      return result(st, 0, produced, resultStatus());
    }
    if (outboundClosed || failed || n == null) return result(Status.CLOSED, 0, 0, status());
    if (n.state() != Native.STATE_ESTABLISHED) return result(Status.OK, 0, 0, status());
    long available = 0;
    for (int i = offset; i < offset + length; i++) available += srcs[i].remaining();
    if (available == 0) return result(Status.OK, 0, 0, resultStatus());
    int header = dtls ? M2mpskSession.DTLS_HEADER : M2mpskSession.TLS_HEADER;
    int room = dst.remaining() - header - M2mpskSession.MAX_EXPANSION;
    int max = dtls ? Math.min(M2mpskSession.MAX_PLAINTEXT, dtlsPlaintextMax())
        : M2mpskSession.MAX_PLAINTEXT;
    int take = (int) Math.min(Math.min(available, max), room);
    if (take <= 0) return result(Status.BUFFER_OVERFLOW, 0, 0, status());
    byte[] data = new byte[take];
    int got = 0;
    for (int i = offset; i < offset + length && got < take; i++) {
      int k = Math.min(srcs[i].remaining(), take - got);
      srcs[i].get(data, got, k);
      got += k;
    }
    try {
      n.write(data);
    } catch (SSLException e) {
      fail();
      throw e;
    } finally {
      Arrays.fill(data, (byte) 0);
    }
    pullOutput();
    int produced = emit(dst);
    return result(Status.OK, take, produced, resultStatus());
  }

  /** The DTLS MTU: setSSLParameters()'s maximum packet size, else the
   * context's, else the library's default. */
  private int mtu() {
    return maximumPacketSize > 0 ? maximumPacketSize : ctx.params.mtu() > 0 ? ctx.params.mtu() : 1400;
  }

  /** The plaintext one DTLS datagram carries within the MTU. */
  private int dtlsPlaintextMax() {
    int mtu = mtu();
    return Math.max(1, mtu - M2mpskSession.DTLS_HEADER - M2mpskSession.MAX_EXPANSION);
  }

  /** Copies whole records (TLS) or one datagram (DTLS) from netOut into
   * dst, as many as fit; returns the bytes copied. */
  private int emit(ByteBuffer dst) {
    int produced = 0;
    while (!netOut.isEmpty()) {
      byte[] head = netOut.peek();
      if (dtls) {
        if (head.length > dst.remaining()) break;
        dst.put(netOut.poll());
        produced += head.length;
        break; // one datagram per wrap
      }
      // TLS: hand out whole records; the first record that does not fit
      // stops (records never straddle two drained chunks).
      int pos = 0;
      while (pos + 5 <= head.length) {
        int len = 5 + (((head[pos + 3] & 0xff) << 8) | (head[pos + 4] & 0xff));
        if (pos + len > head.length || len > dst.remaining()) break;
        dst.put(head, pos, len);
        produced += len;
        pos += len;
      }
      if (pos == head.length) {
        netOut.poll();
        continue;
      }
      if (pos > 0) {
        netOut.poll();
        netOut.addFirst(Arrays.copyOfRange(head, pos, head.length));
      } else if (pos + 5 > head.length || head.length <= dst.remaining()) {
        // Not a whole record (cannot happen with the library's output):
        // hand it out as a stream rather than hold it forever.
        int k = Math.min(head.length, dst.remaining());
        if (k == 0) break;
        dst.put(head, 0, k);
        produced += k;
        netOut.poll();
        if (k < head.length) netOut.addFirst(Arrays.copyOfRange(head, k, head.length));
        continue;
      }
      break;
    }
    return produced;
  }

  // ---- unwrap -------------------------------------------------------------

  @Override
  public synchronized SSLEngineResult unwrap(ByteBuffer src, ByteBuffer[] dsts, int offset,
      int length) throws SSLException {
    if (src == null) throw new IllegalArgumentException("null src");
    checkArrays(dsts, offset, length, false);
    for (int i = offset; i < offset + length; i++) {
      if (dsts[i].isReadOnly()) throw new ReadOnlyBufferException();
    }
    begun();
    runTimers();
    keyProgress();
    session.accessed();
    long room = 0;
    for (int i = offset; i < offset + length; i++) room += dsts[i].remaining();
    if (appInPos < appIn.length) {
      if (room == 0) return result(Status.BUFFER_OVERFLOW, 0, 0, status());
      int produced = deliver(dsts, offset, length);
      return result(Status.OK, 0, produced, resultStatus());
    }
    if (inboundDone || n == null) return result(Status.CLOSED, 0, 0, status());
    if (n.state() == Native.STATE_WAITING_KEY) {
      // Nothing more is read until the key has come: the peer's flight
      // waits in the library, and more of it here in src.
      return result(Status.OK, 0, 0, status());
    }
    int take;
    int header = dtls ? M2mpskSession.DTLS_HEADER : M2mpskSession.TLS_HEADER;
    if (dtls) {
      take = src.remaining();
      if (take == 0) return result(Status.BUFFER_UNDERFLOW, 0, 0, status());
    } else {
      if (src.remaining() < header) return result(Status.BUFFER_UNDERFLOW, 0, 0, status());
      int p = src.position();
      int type = src.get(p) & 0xff;
      int major = src.get(p + 1) & 0xff;
      int len = ((src.get(p + 3) & 0xff) << 8) | (src.get(p + 4) & 0xff);
      if (type < 20 || type > 24 || major != 3
          || len > M2mpskSession.MAX_PLAINTEXT + 2048) {
        // Not TLS: let the association refuse it (and queue its alert).
        take = src.remaining();
      } else {
        take = header + len;
        if (src.remaining() < take) return result(Status.BUFFER_UNDERFLOW, 0, 0, status());
      }
    }
    boolean wasEstablished = n.state() == Native.STATE_ESTABLISHED;
    if (wasEstablished && room < Math.min(take - header, M2mpskSession.MAX_PLAINTEXT)) {
      return result(Status.BUFFER_OVERFLOW, 0, 0, status());
    }
    // The record, fed in place; src's position moves past it, but on an
    // established TLS association's E_LIMIT.
    int at = src.position();
    ByteBuffer rec = src.duplicate();
    rec.limit(at + take);
    try {
      n.feed(rec);
    } catch (SSLException e) {
      if (Native.hasCode(e, Native.E_LIMIT) && wasEstablished) {
        if (!dtls) throw e; // nothing was consumed: the record stays in src
        src.position(at + take);
        return result(Status.OK, take, 0, status()); // the datagram is dropped
      }
      src.position(at + take);
      fail();
      throw e;
    }
    src.position(at + take);
    try {
      keyDispatch();
    } catch (SSLException e) {
      fail();
      throw e;
    }
    pullOutput();
    readPlaintext();
    int produced = deliver(dsts, offset, length);
    Status st = peerClosed && appInPos >= appIn.length ? Status.CLOSED : Status.OK;
    return result(st, take, produced, resultStatus());
  }

  /** Reads what the association has decrypted into appIn; notes the
   * peer's close_notify and answers it. */
  private void readPlaintext() throws SSLException {
    int s = n.state();
    if (s != Native.STATE_ESTABLISHED && s != Native.STATE_CLOSED) return;
    java.io.ByteArrayOutputStream got = new java.io.ByteArrayOutputStream();
    got.write(appIn, appInPos, appIn.length - appInPos);
    try {
      for (byte[] d = n.read(M2mpskSession.MAX_PLAINTEXT); d.length > 0;
          d = n.read(M2mpskSession.MAX_PLAINTEXT)) {
        got.write(d, 0, d.length);
      }
    } catch (SSLException e) {
      if (!Native.hasCode(e, Native.E_CLOSED)) {
        fail();
        throw e;
      }
      peerClosed = true;
      inboundDone = true;
      if (!outboundClosed) {
        outboundClosed = true;
        try {
          n.closeNotify();
        } catch (SSLException ignored) {
          // the peer has gone; nothing to answer
        }
        pullOutput();
      }
    }
    appIn = got.toByteArray();
    appInPos = 0;
  }

  private int deliver(ByteBuffer[] dsts, int offset, int length) {
    int produced = 0;
    for (int i = offset; i < offset + length && appInPos < appIn.length; i++) {
      int k = Math.min(dsts[i].remaining(), appIn.length - appInPos);
      dsts[i].put(appIn, appInPos, k);
      appInPos += k;
      produced += k;
    }
    if (appInPos >= appIn.length) {
      Arrays.fill(appIn, (byte) 0);
      appIn = new byte[0];
      appInPos = 0;
    }
    return produced;
  }

  // ---- closing --------------------------------------------------------------

  /** Queues close_notify (wrap it out); reads no more input afterwards
   * (TLS 1.2 closes both directions). Before the handshake completes, ends
   * it without an alert. */
  @Override
  public synchronized void closeOutbound() {
    if (outboundClosed) return;
    outboundClosed = true;
    inboundDone = true;
    if (n == null) return;
    if (n.state() == Native.STATE_ESTABLISHED) {
      try {
        n.closeNotify();
        pullOutput();
      } catch (SSLException e) {
        fail();
      }
    }
    release();
  }

  @Override
  public synchronized boolean isOutboundDone() {
    return outboundClosed && netOut.isEmpty() && (n == null || n.pending() == 0);
  }

  /** Throws when the handshake had begun and the peer's close_notify has
   * not been received (the input may have been truncated); closes the
   * outbound side too. */
  @Override
  public synchronized void closeInbound() throws SSLException {
    if (inboundDone) return;
    inboundDone = true;
    boolean begun = n != null && !failed;
    closeOutbound();
    release();
    if (begun && !peerClosed) {
      throw new SSLException("m2mpsk: inbound closed before the peer's close_notify "
          + "(possible truncation)");
    }
  }

  @Override
  public synchronized boolean isInboundDone() {
    return inboundDone && appInPos >= appIn.length;
  }

  /** What this engine's context shares. */
  ContextState contextState() {
    return ctx;
  }

  // ---- for the session --------------------------------------------------------

  synchronized int originatorCheck(String from, long flags) throws SSLException {
    if (n == null || session.peerId() == null) {
      throw new SSLException("m2mpsk: the handshake is not complete");
    }
    return n.originatorCheck(from, flags);
  }

  synchronized void bindAeId(String aeId) throws SSLException {
    if (n == null) throw new SSLException("m2mpsk: the handshake is not complete");
    n.bindAeId(aeId);
    session.rebound(n);
  }

  synchronized byte[] exportKeyingMaterial(int length, String label, byte[] context)
      throws SSLException {
    if (n == null) throw new SSLException("m2mpsk: the handshake is not complete");
    return n.exportKeyingMaterial(length, label, context);
  }

  /** The monotonic time (System.nanoTime() / 1000000) at which the next
   * timer is due (DTLS retransmission, handshake deadline), or -1. */
  public synchronized long nextTimeoutMillis() {
    return n == null || failed ? -1 : n.nextTimeout();
  }

  /** The failure reason's name after a failure (e.g. "bad-key"), else null. */
  synchronized String failureReason() {
    return failed && n != null ? Native.reasonName(n.failure()) : null;
  }

  // ---- helpers ------------------------------------------------------------------

  private SSLEngineResult result(Status st, int consumed, int produced, HandshakeStatus hs) {
    release();
    return new SSLEngineResult(st, hs, consumed, produced);
  }

  /** Frees the association (wiping its keys) once both directions are done
   * and everything has been handed out; the session keeps its identities. */
  private void release() {
    if (n != null && inboundDone && outboundClosed && netOut.isEmpty()
        && appInPos >= appIn.length && n.pending() == 0) {
      n.close();
    }
  }

  private static void checkArrays(ByteBuffer[] bufs, int offset, int length, boolean nullOther) {
    if (bufs == null || nullOther) throw new IllegalArgumentException("null buffer");
    if (offset < 0 || length < 0 || offset > bufs.length - length) {
      throw new IndexOutOfBoundsException();
    }
    for (int i = offset; i < offset + length; i++) {
      if (bufs[i] == null) throw new IllegalArgumentException("null buffer at " + i);
    }
  }

  @Override
  public String toString() {
    return "M2mpskSSLEngine[" + (clientMode ? "client" : "server") + " " + ctx.protocol() + ", "
        + session + "]";
  }
}
