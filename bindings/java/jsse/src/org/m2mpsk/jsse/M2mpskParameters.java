package org.m2mpsk.jsse;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Objects;
import javax.net.ssl.KeyManager;
import javax.net.ssl.SSLException;
import org.m2mpsk.Keystore;

/**
 * What an m2mpsk {@link javax.net.ssl.SSLContext} needs in place of
 * certificates: the keystore, Entity A's KpsaID (for client-mode engines),
 * Entity B's own CSE-IDs (for server-mode engines) and the config settings.
 * It is a {@link KeyManager} so that it travels through the JDK's
 * {@code SSLContext.init(KeyManager[], TrustManager[], SecureRandom)}:
 *
 * <pre>{@code
 * SSLContext ctx = SSLContext.getInstance("M2MPSK", new M2mpskProvider());
 * ctx.init(new KeyManager[] {M2mpskParameters.server("//m2m.example.com/cse-in")
 *     .keyFile("/etc/m2mpsk/keys")}, null, null);
 * }</pre>
 *
 * <p>Trust managers and the random source are not used: a PSK handshake
 * authenticates both sides by the key, and the TLS engine draws its own
 * randomness. The parameters are read when the context is initialised;
 * changing them afterwards does not change that context.
 */
public final class M2mpskParameters implements KeyManager {
  private Keystore keystore;
  private String kpsaId;
  private final List<String> localIds = new ArrayList<>();
  private Integer profile;
  private Integer engine;
  private long handshakeTimeoutMs;
  private boolean rolesReversed;
  private int mtu;

  /** Parameters for Entity B (server mode) serving the given CSE-IDs. */
  public static M2mpskParameters server(String... localIds) {
    M2mpskParameters p = new M2mpskParameters();
    for (String id : localIds) p.localId(id);
    return p;
  }

  /** Parameters for Entity A (client mode) using the record kpsaId. */
  public static M2mpskParameters client(String kpsaId) {
    return new M2mpskParameters().kpsaId(kpsaId);
  }

  /** The keystore every association draws its key from. It is shared, not
   * copied: records added or revoked later take effect on the next
   * handshake. */
  public M2mpskParameters keystore(Keystore keystore) {
    this.keystore = Objects.requireNonNull(keystore, "keystore");
    return this;
  }

  /** Loads a key file (see the key file format in the core binding) into a
   * new keystore and uses it. Throws the core's
   * {@link org.m2mpsk.M2mpskException} naming the line at fault. */
  public M2mpskParameters keyFile(String path) throws SSLException {
    this.keystore = Native.loadKeystore(Objects.requireNonNull(path, "path"));
    return this;
  }

  /** Uses a new keystore holding one record; key is copied into locked
   * memory at once and may be wiped by the caller afterwards. */
  public M2mpskParameters key(String kpsaId, byte[] key, String ida, String idb)
      throws SSLException {
    this.keystore = Native.keystoreOf(kpsaId, key, ida, idb);
    return this;
  }

  /** Entity A's record, for client-mode engines. */
  public M2mpskParameters kpsaId(String kpsaId) {
    this.kpsaId = Objects.requireNonNull(kpsaId, "kpsaId");
    return this;
  }

  /** Adds a CSE-ID (IdB) that server-mode engines serve. */
  public M2mpskParameters localId(String idb) {
    localIds.add(Objects.requireNonNull(idb, "idb"));
    return this;
  }

  /** A suite profile, a {@code PROFILE_*} constant of the core binding. */
  public M2mpskParameters profile(int profile) {
    this.profile = profile;
    return this;
  }

  /** The TLS engine, an {@code ENGINE_*} constant of the core binding. */
  public M2mpskParameters engine(int engine) {
    this.engine = engine;
    return this;
  }

  /** The handshake timeout in milliseconds (default 60 s). */
  public M2mpskParameters handshakeTimeoutMs(long ms) {
    this.handshakeTimeoutMs = ms;
    return this;
  }

  /** SA2 (TS-0003 8.2.1): Entity B is the client, Entity A the server. */
  public M2mpskParameters rolesReversed(boolean on) {
    this.rolesReversed = on;
    return this;
  }

  /** The DTLS path MTU (default 1400). */
  public M2mpskParameters mtu(int mtu) {
    this.mtu = mtu;
    return this;
  }

  Keystore keystore() {
    return keystore;
  }

  String kpsaId() {
    return kpsaId;
  }

  List<String> localIds() {
    return Collections.unmodifiableList(localIds);
  }

  Integer profile() {
    return profile;
  }

  Integer engine() {
    return engine;
  }

  long handshakeTimeoutMs() {
    return handshakeTimeoutMs;
  }

  boolean rolesReversed() {
    return rolesReversed;
  }

  int mtu() {
    return mtu;
  }

  /** A copy, so that a context is not changed by later setter calls. */
  M2mpskParameters copy() {
    M2mpskParameters p = new M2mpskParameters();
    p.keystore = keystore;
    p.kpsaId = kpsaId;
    p.localIds.addAll(localIds);
    p.profile = profile;
    p.engine = engine;
    p.handshakeTimeoutMs = handshakeTimeoutMs;
    p.rolesReversed = rolesReversed;
    p.mtu = mtu;
    return p;
  }

  /** Names the KpsaID and local identities, never key material. */
  @Override
  public String toString() {
    return "M2mpskParameters[kpsaId=" + kpsaId + ", localIds=" + localIds + "]";
  }
}
