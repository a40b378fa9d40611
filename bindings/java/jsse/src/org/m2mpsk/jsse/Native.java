package org.m2mpsk.jsse;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import javax.net.ssl.SSLException;
import org.m2mpsk.Association;
import org.m2mpsk.Config;
import org.m2mpsk.KeyRequest;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;
import org.m2mpsk.M2mpskException;
import org.m2mpsk.M2mpskHandshakeException;
import org.m2mpsk.M2mpskStatus;
import org.m2mpsk.M2mpskUsageException;

/**
 * The one place this package calls the core binding: every call into
 * {@code org.m2mpsk.*} goes through here (beside it only imports name the
 * core: Keystore in M2mpskParameters and M2mpskContexts, Config in
 * ContextState). The core's exceptions come out as they are, but for one
 * rule: a {@link M2mpskException} raised while handshaking becomes a
 * {@link M2mpskHandshakeException} with the same code, reason and detail
 * (see {@link #convert}). {@code M2mpskUsageException} (E_INVALID, an
 * {@code IllegalArgumentException}) is a caller's bug and goes through as
 * it is, but from {@link #open}: there it means the caller's keystore was
 * closed, an {@code IllegalStateException} for an engine.
 *
 * <p>An instance holds one association. It is not thread-safe: the engine
 * that owns it serializes every call.
 */
final class Native implements AutoCloseable {
  static final int STATE_IDLE;
  static final int STATE_HANDSHAKING;
  static final int STATE_WAITING_KEY;
  static final int STATE_ESTABLISHED;
  static final int STATE_CLOSED;
  static final int STATE_FAILED;
  static final int E_CLOSED;
  static final int E_LIMIT;
  static final int E_PROTOCOL;
  static final int E_UNSUPPORTED;
  static final int REASON_NONE;
  static final int ORIGINATOR_ACCEPT;
  static final int ORIGINATOR_AE_CREATE;
  static final int MTU_MIN;
  static final int MTU_MAX;

  static {
    // The core loads its JNI library on first use; loading here makes a
    // missing library fail at once, naming every place it looked.
    M2mpsk.load();
    STATE_IDLE = M2mpsk.STATE_IDLE;
    STATE_HANDSHAKING = M2mpsk.STATE_HANDSHAKING;
    STATE_WAITING_KEY = M2mpsk.STATE_WAITING_KEY;
    STATE_ESTABLISHED = M2mpsk.STATE_ESTABLISHED;
    STATE_CLOSED = M2mpsk.STATE_CLOSED;
    STATE_FAILED = M2mpsk.STATE_FAILED;
    E_CLOSED = M2mpsk.E_CLOSED;
    E_LIMIT = M2mpsk.E_LIMIT;
    E_PROTOCOL = M2mpsk.E_PROTOCOL;
    E_UNSUPPORTED = M2mpsk.E_UNSUPPORTED;
    REASON_NONE = M2mpsk.REASON_NONE;
    ORIGINATOR_ACCEPT = M2mpsk.ORIGINATOR_ACCEPT;
    ORIGINATOR_AE_CREATE = M2mpsk.ORIGINATOR_AE_CREATE;
    MTU_MIN = M2mpsk.MTU_MIN;
    MTU_MAX = M2mpsk.MTU_MAX;
  }

  private final Association a;
  private final boolean dtls;
  private final Keystore keystore; // whose key source answers a waiting handshake
  // Once released, the state and failure it ended in.
  private boolean released;
  private int finalState;
  private int finalFailure;

  private Native(Association a, boolean dtls, Keystore keystore) {
    this.a = a;
    this.dtls = dtls;
    this.keystore = keystore;
  }

  /** Monotonic milliseconds, the clock every association is given. */
  static long now() {
    return System.nanoTime() / 1_000_000;
  }

  /** The exception for a binding failure: while handshaking, a
   * handshake exception (the core's own, or one made of it with the same
   * code, reason and detail and it as cause); otherwise the core's as it
   * is. */
  static SSLException convert(M2mpskException e, boolean handshaking) {
    if (!handshaking) return e;
    M2mpskHandshakeException h =
        new M2mpskHandshakeException(e.getCode(), e.getReason(), e.getDetail());
    h.initCause(e);
    return h;
  }

  /** The library's version, e.g. "0.6.0". */
  static String libraryVersion() {
    return M2mpsk.versionString();
  }

  /** The name of a REASON_ constant, e.g. "bad-key". */
  static String reasonName(int reason) {
    return M2mpsk.reasonName(reason);
  }

  /** Whether a binding exception carries the given status code. */
  static boolean hasCode(SSLException e, int code) {
    return e instanceof M2mpskStatus && ((M2mpskStatus) e).getCode() == code;
  }

  // ---- keystores and configs -------------------------------------------

  /** A keystore loaded from a key file (see Keystore.loadFile). */
  static Keystore loadKeystore(String path) throws SSLException {
    Keystore ks = null;
    try {
      ks = new Keystore();
      ks.loadFile(path);
      return ks;
    } catch (M2mpskException e) {
      if (ks != null) ks.close();
      throw convert(e, false);
    } catch (RuntimeException e) { // M2mpskUsageException: the caller's bug
      if (ks != null) ks.close();
      throw e;
    }
  }

  /** A keystore holding one record; key is copied into locked memory. */
  static Keystore keystoreOf(String kpsaId, byte[] key, String ida, String idb)
      throws SSLException {
    Keystore ks = null;
    try {
      ks = new Keystore();
      ks.add(kpsaId, key, ida, idb);
      return ks;
    } catch (M2mpskException e) {
      if (ks != null) ks.close();
      throw convert(e, false);
    } catch (RuntimeException e) { // M2mpskUsageException: the caller's bug
      if (ks != null) ks.close();
      throw e;
    }
  }

  /** A config built from the parameters, offering suites (a colon-separated
   * list of IANA names) when not null. */
  static Config newConfig(M2mpskParameters p, String suites) throws SSLException {
    Config c = null;
    try {
      c = new Config();
      if (p.engine() != null) c.setEngine(p.engine());
      if (p.profile() != null) c.setProfile(p.profile());
      if (suites != null) c.setSuites(suites);
      for (String id : p.localIds()) c.addLocalId(id);
      if (p.handshakeTimeoutMs() > 0) c.setHandshakeTimeout(p.handshakeTimeoutMs());
      if (p.rolesReversed()) c.setRolesReversed(true);
      return c;
    } catch (M2mpskException e) {
      if (c != null) c.close();
      throw convert(e, false);
    } catch (RuntimeException e) { // M2mpskUsageException: the caller's bug
      if (c != null) c.close();
      throw e;
    }
  }

  static void closeConfig(Config c) {
    c.close();
  }

  /** The suites a config offers over TLS or DTLS, in preference order. */
  static List<String> configSuites(Config c, boolean dtls) throws SSLException {
    try {
      return split(c.suites(dtls ? M2mpsk.TRANSPORT_DTLS : M2mpsk.TRANSPORT_TLS));
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  /** Every PSK suite this build supports, over either transport. */
  static List<String> supportedSuites() {
    List<String> out = new ArrayList<>();
    for (long i = 0, n = M2mpsk.suiteCount(); i < n; i++) out.add(M2mpsk.suiteName(i));
    return Collections.unmodifiableList(out);
  }

  private static List<String> split(String s) {
    List<String> out = new ArrayList<>();
    if (s != null) {
      for (String x : s.split(":")) {
        if (!x.isEmpty()) out.add(x);
      }
    }
    return Collections.unmodifiableList(out);
  }

  /** The stateless DTLS cookie exchange on a config (Config.dtlsListen):
   * the HelloVerifyRequest to send, or null for a ClientHello with a valid
   * cookie for peerTag. Throws the core's exception as it is: E_PROTOCOL
   * (drop the datagram), E_UNSUPPORTED (no cookie exchange), and the rest. */
  static byte[] dtlsListen(Config c, String peerTag, byte[] datagram) throws SSLException {
    try {
      return c.dtlsListen(peerTag, datagram);
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  // ---- associations ----------------------------------------------------

  /** An association: Entity A (initiator, naming its record by kpsaId) or
   * Entity B (responder, kpsaId null), over TLS or DTLS. */
  static Native open(boolean initiator, boolean dtls, Config config, Keystore keystore,
      String kpsaId, int mtu) throws SSLException {
    Association a = null;
    try {
      a = new Association(initiator ? M2mpsk.ROLE_INITIATOR : M2mpsk.ROLE_RESPONDER,
          dtls ? M2mpsk.TRANSPORT_DTLS : M2mpsk.TRANSPORT_TLS, config, keystore,
          initiator ? kpsaId : null);
      if (dtls && mtu > 0) a.setMtu(mtu);
      return new Native(a, dtls, keystore);
    } catch (M2mpskException e) {
      if (a != null) a.close();
      throw convert(e, true);
    } catch (M2mpskUsageException e) {
      // The keystore (the caller's) was closed: the engine cannot begin,
      // which SSLEngine reports as an IllegalStateException.
      if (a != null) a.close();
      throw new IllegalStateException(e.getMessage(), e);
    } catch (RuntimeException e) {
      if (a != null) a.close();
      throw e;
    }
  }

  private boolean handshaking() {
    int s = state();
    return s == M2mpsk.STATE_IDLE || s == M2mpsk.STATE_HANDSHAKING
        || s == M2mpsk.STATE_WAITING_KEY;
  }

  // ---- key sources (since 0.4) -----------------------------------------

  /** Hands the keystore's new key requests to its source (a waiting
   * handshake's among them). */
  void dispatchKeys() throws SSLException {
    if (released) return;
    try {
      keystore.dispatchKeyRequests();
    } catch (M2mpskException e) {
      throw convert(e, true);
    }
  }

  /** For a handshake waiting for its key: a task that waits, on the
   * caller's thread, until the key request is answered or the handshake
   * deadline passes; it never touches the association. Null when the
   * handshake does not wait. */
  Runnable keyWaitTask() throws SSLException {
    if (released || a.state() != M2mpsk.STATE_WAITING_KEY) return null;
    dispatchKeys();
    KeyRequest req;
    try {
      req = a.keyRequest();
    } catch (M2mpskException e) {
      throw convert(e, true);
    }
    if (req == null) return null;
    long deadline = a.nextTimeout(); // the handshake deadline covers the wait
    if (req.answered() || (deadline >= 0 && now() >= deadline)) {
      // Nothing to wait for: the engine's next call goes on (or times the
      // handshake out), so a loop running tasks until there are none ends.
      req.close();
      return null;
    }
    CompletableFuture<Void> answered = keystore.whenAnswered(req);
    return () -> {
      try {
        long wait = deadline < 0 ? Long.MAX_VALUE : Math.max(0, deadline - now()) + 1;
        answered.get(wait, TimeUnit.MILLISECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      } catch (TimeoutException | ExecutionException e) {
        // the engine's next call runs the timer, which fails the handshake
      } finally {
        req.close();
      }
    };
  }

  /** Resumes a handshake waiting for its key once the request is
   * answered; does nothing otherwise. */
  void resumeIfAnswered() throws SSLException {
    if (released || a.state() != M2mpsk.STATE_WAITING_KEY) return;
    try {
      try (KeyRequest req = a.keyRequest()) {
        if (req == null || !req.answered()) return;
      }
      a.resume(now());
    } catch (M2mpskException e) {
      throw convert(e, true);
    }
  }

  void start(String peerTag) throws SSLException {
    live();
    try {
      if (peerTag != null) a.setPeerTag(peerTag);
      a.start(now(), System.currentTimeMillis() / 1000);
    } catch (M2mpskException e) {
      throw convert(e, true);
    }
  }

  /** Feeds the bytes between data's position and limit, stream bytes
   * (TLS) or one datagram (DTLS), in place (the core reads a heap buffer
   * through its array); the position moves to the limit, or stays on an
   * exception. */
  void feed(ByteBuffer data) throws SSLException {
    live();
    boolean hs = handshaking();
    try {
      a.feed(data, now());
    } catch (M2mpskException e) {
      throw convert(e, hs);
    }
    if (a.state() == M2mpsk.STATE_FAILED) {
      // A failure feed() did not report as one (it always should).
      if (hs) throw new M2mpskHandshakeException(M2mpsk.E_FAILED, a.failure(), a.failureDetail());
      throw new M2mpskException(M2mpsk.E_FAILED, a.failure(), a.failureDetail());
    }
  }

  /** Everything waiting to be sent (TLS), or one datagram (DTLS); empty
   * when nothing waits. */
  byte[] drain() throws SSLException {
    live();
    try {
      return a.drain();
    } catch (M2mpskException e) {
      throw convert(e, handshaking());
    }
  }

  long pending() {
    return released ? 0 : a.pending();
  }

  /** Decrypted application data, at most max bytes; empty when none. Throws
   * with E_CLOSED once the peer's close_notify has been read. */
  byte[] read(int max) throws SSLException {
    live();
    try {
      return a.read(max);
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  void write(byte[] data) throws SSLException {
    live();
    try {
      a.write(data);
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  /** Sends close_notify (drain it afterwards). */
  void closeNotify() throws SSLException {
    live();
    try {
      a.closeNotify();
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  /** Runs a due timer (DTLS retransmission, handshake deadline, record
   * expiry); does nothing when none is due. */
  void runTimers() throws SSLException {
    if (released) return;
    boolean hs = handshaking();
    try {
      long t = a.nextTimeout();
      long now = now();
      if (t >= 0 && now >= t) a.handleTimeout(now);
    } catch (M2mpskException e) {
      throw convert(e, hs);
    }
  }

  /** The monotonic time (ms) of the next timer, or -1. */
  long nextTimeout() {
    return released ? -1 : a.nextTimeout();
  }

  int state() {
    return released ? finalState : a.state();
  }

  boolean isDtls() {
    return dtls;
  }

  String peerId() {
    return a.peerId();
  }

  boolean peerIdIsCredential() {
    return a.peerIdIsCredential();
  }

  String localId() {
    return a.localId();
  }

  String kpsaId() {
    return a.kpsaId();
  }

  String suite() {
    return a.suite();
  }

  String version() {
    return a.version();
  }

  int failure() {
    return released ? finalFailure : a.failure();
  }

  String failureDetail() {
    return a.failureDetail();
  }

  int originatorCheck(String from, long flags) throws SSLException {
    live();
    try {
      return a.originatorCheck(from, flags);
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  void bindAeId(String aeId) throws SSLException {
    live();
    try {
      a.bindAeId(aeId);
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  byte[] exportKeyingMaterial(int length, String label, byte[] context) throws SSLException {
    live();
    try {
      return a.exportKeyingMaterial(length, label, context);
    } catch (M2mpskException e) {
      throw convert(e, false);
    }
  }

  /** Frees the association now, wiping its key material; afterwards
   * state() and failure() report how it ended, and every call that needs it
   * throws. Calling it again does nothing. */
  @Override
  public void close() {
    if (released) return;
    finalState = a.state();
    finalFailure = a.failure();
    released = true;
    a.close();
  }

  private void live() throws SSLException {
    if (released) {
      throw new M2mpskException(M2mpsk.E_STATE, M2mpsk.REASON_NONE, "the session is closed");
    }
  }
}
