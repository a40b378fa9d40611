import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.InputStream;
import java.io.OutputStream;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import m2mpsk.Association;
import m2mpsk.Config;
import m2mpsk.Event;
import m2mpsk.Keystore;
import m2mpsk.M2mpsk;
import m2mpsk.M2mpskException;
import org.junit.Test;

/** The Java binding: in-memory handshakes, error paths, limits and events,
 * the oneM2M checks, AE-ID binding, SA2, the TS-0003 profile and DTLS
 * cookies (with the backend M2MPSK_TLS names), and real sockets against
 * openssl s_server -psk. */
public class M2mpskTest {
  static {
    System.loadLibrary("m2mpskjni");
  }

  static final String KPSA_ID = "test@onem2m.com";
  /** The TLS backend this build is expected to have: ctest passes the
   * build's M2MPSK_TLS, so a library loading another backend fails. */
  static final String BACKEND =
      System.getenv("M2MPSK_TLS") != null ? System.getenv("M2MPSK_TLS") : "boringssl";
  static final String IDB = "//m2m.example.com/cse-in";
  static final byte[] KEY = new byte[32];

  static {
    for (int i = 0; i < KEY.length; i++) KEY[i] = (byte) i;
  }

  static long now() {
    return System.nanoTime() / 1_000_000;
  }

  static Keystore keystore() {
    Keystore ks = new Keystore();
    ks.add(KPSA_ID, KEY, null, IDB);
    return ks;
  }

  /** Moves bytes both ways until neither side has anything to send. */
  static M2mpskException pump(Association a, Association b) {
    M2mpskException failure = null;
    for (int round = 0; round < 50; round++) {
      boolean moved = false;
      Association[][] dirs = {{a, b}, {b, a}};
      for (Association[] d : dirs) {
        for (byte[] out = d[0].drain(); out.length > 0; out = d[0].drain()) {
          moved = true;
          int st = d[1].state();
          if (st == M2mpsk.STATE_FAILED || st == M2mpsk.STATE_CLOSED) continue;
          try {
            d[1].feed(out, now());
          } catch (M2mpskException e) {
            failure = e;
          }
        }
      }
      if (!moved) break;
    }
    return failure;
  }

  void handshake(int transport) {
    try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config()) {
      cb.addLocalId(IDB);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, transport, ca, ks, KPSA_ID);
          Association b = new Association(M2mpsk.ROLE_RESPONDER, transport, cb, ks)) {
        ks.close(); // the associations keep their own references
        b.start(now());
        a.start(now());
        assertNull(pump(a, b));
        assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
        assertEquals(M2mpsk.STATE_ESTABLISHED, b.state());
        assertEquals(IDB, a.peerId());
        assertEquals("12-" + KPSA_ID, b.peerId());
        assertTrue(b.peerIdIsCredential());
        assertEquals(transport == M2mpsk.TRANSPORT_TLS ? "TLSv1.2" : "DTLSv1.2", a.version());
        assertEquals(-1, a.nextTimeout());
        assertArrayEquals(a.exportKeyingMaterial(32, "EXPERIMENTAL m2mpsk", null),
            b.exportKeyingMaterial(32, "EXPERIMENTAL m2mpsk", null));
        a.write("from A".getBytes(StandardCharsets.UTF_8));
        pump(a, b);
        assertEquals("from A", new String(b.read(), StandardCharsets.UTF_8));
        b.write("from B".getBytes(StandardCharsets.UTF_8));
        pump(a, b);
        assertEquals("from B", new String(a.read(), StandardCharsets.UTF_8));
        a.closeNotify();
        pump(a, b);
        expect(M2mpsk.E_CLOSED, () -> b.read());
      }
    }
  }

  @Test
  public void handshakeTls() {
    handshake(M2mpsk.TRANSPORT_TLS);
  }

  @Test
  public void handshakeDtls() {
    handshake(M2mpsk.TRANSPORT_DTLS);
  }

  static M2mpskException expect(int code, Runnable r) {
    try {
      r.run();
    } catch (M2mpskException e) {
      assertEquals(e.getMessage(), code, e.getCode());
      assertTrue(e.getDetail().length() > 0);
      return e;
    }
    fail("expected " + M2mpsk.strerror(code));
    return null;
  }

  @Test
  public void errorPaths() {
    expect(M2mpsk.E_KPSA_ID, () -> M2mpsk.kpsaIdValidate("nope"));
    expect(M2mpsk.E_IDB, () -> M2mpsk.idbValidate("cse"));
    expect(M2mpsk.E_IDA, () -> M2mpsk.idaValidate("Cae1"));
    expect(M2mpsk.E_INVALID, () -> new Keystore(99));
    try (Keystore ks = keystore(); Config cfg = new Config()) {
      expect(M2mpsk.E_KEY_LENGTH, () -> ks.add("k@onem2m.com", new byte[8], null, IDB));
      expect(M2mpsk.E_DUPLICATE, () -> ks.add(KPSA_ID, KEY, null, IDB));
      expect(M2mpsk.E_VALIDITY, () -> ks.add("k@onem2m.com", KEY, null, IDB, 20, 10));
      expect(M2mpsk.E_NOT_FOUND, () -> ks.lookup("none@onem2m.com"));
      expect(M2mpsk.E_IO, () -> ks.loadFile("/nonexistent/keys"));
      expect(M2mpsk.E_SUITE, () -> cfg.setSuites("TLS_RSA_WITH_NULL_MD5"));
      expect(M2mpsk.E_NO_LOCAL_ID,
          () -> new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cfg, ks));
      expect(M2mpsk.E_NOT_FOUND, () -> new Association(
          M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, "x@onem2m.com"));
      try (Association a =
          new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, KPSA_ID)) {
        expect(M2mpsk.E_STATE, () -> cfg.setHandshakeTimeout(5)); // frozen
        expect(M2mpsk.E_INVALID, () -> a.setMtu(1400));
        expect(M2mpsk.E_STATE, () -> a.drain());
        a.start(now());
        expect(M2mpsk.E_STATE, () -> a.write(new byte[] {1}));
        a.close();
        expect(M2mpsk.E_INVALID, () -> a.start(now()));
      }
      ks.add("rev@onem2m.com", KEY, null, IDB);
      ks.revoke("rev@onem2m.com");
      try (Association a = new Association(
          M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, "rev@onem2m.com")) {
        M2mpskException e = expect(M2mpsk.E_FAILED, () -> a.start(now()));
        assertEquals(M2mpsk.REASON_REVOKED, e.getReason());
      }
    }
    // A wrong key: the responder fails with bad-key.
    try (Keystore ka = keystore(); Keystore kb = new Keystore(); Config ca = new Config();
        Config cb = new Config()) {
      kb.add(KPSA_ID, new byte[32], null, IDB);
      cb.addLocalId(IDB);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ka, KPSA_ID);
          Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, kb)) {
        b.start(now());
        a.start(now());
        M2mpskException e = pump(a, b);
        assertEquals(M2mpsk.E_FAILED, e.getCode());
        assertEquals(M2mpsk.REASON_BAD_KEY, e.getReason());
        assertEquals(M2mpsk.REASON_BAD_KEY, b.failure());
      }
    }
  }

  @Test
  public void collectedHandlesNeverDoubleFree() {
    try (Keystore ks = keystore(); Config cfg = new Config()) {
      for (int i = 0; i < 20000; i++) {
        Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, KPSA_ID);
        if (i % 2 == 0) a.close();
        if (i % 3 == 0) a.delete();
      }
      System.gc();
    }
  }

  // ---- resource limits, rate limiting and audit events ---------------------

  static List<Event> drainEvents(Config cfg) {
    List<Event> evs = new ArrayList<>();
    for (Event e = cfg.nextEvent(); e != null; e = cfg.nextEvent()) evs.add(e);
    return evs;
  }

  @Test
  public void limitConstantsAndSetters() {
    assertEquals(-33, M2mpsk.E_LIMIT);
    assertEquals(11, M2mpsk.REASON_RATE_LIMITED);
    assertEquals(12, M2mpsk.REASON_LIMIT);
    assertEquals(128, M2mpsk.PEER_TAG_MAX);
    assertEquals(65536, M2mpsk.MAX_INPUT_MIN);
    assertEquals(0, M2mpsk.RATE_PEER);
    assertEquals(1, M2mpsk.RATE_KPSA_ID);
    int[] types = {M2mpsk.EVENT_NONE, M2mpsk.EVENT_ESTABLISHED, M2mpsk.EVENT_FAILED,
        M2mpsk.EVENT_REVOKED, M2mpsk.EVENT_RATE_LIMITED, M2mpsk.EVENT_CLOSED};
    for (int i = 0; i < types.length; i++) assertEquals(i, types[i]);
    assertEquals("closed", M2mpsk.eventTypeName(M2mpsk.EVENT_CLOSED));
    assertEquals("unknown", M2mpsk.eventTypeName(99));
    try (Keystore ks = keystore(); Config cfg = new Config()) {
      expect(M2mpsk.E_INVALID, () -> cfg.setMaxHandshakes(-1)); // no unsigned wrap-around
      expect(M2mpsk.E_INVALID, () -> cfg.setMaxHandshakes(1L << 32));
      expect(M2mpsk.E_INVALID, () -> cfg.setMaxInput(M2mpsk.MAX_INPUT_MIN - 1));
      expect(M2mpsk.E_INVALID, () -> cfg.setRateLimit(M2mpsk.RATE_PEER, 1, 1, 5, 4));
      expect(M2mpsk.E_INVALID, () -> cfg.setEventQueue(1048577));
      expect(M2mpsk.E_INVALID, () -> cfg.peerBlocked(null, 0));
      assertNull(cfg.nextEvent());
      assertEquals(-1, cfg.peerBlocked("192.0.2.7:1", now()));
      cfg.setEventQueue(4);
      try (Association a =
          new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, KPSA_ID)) {
        expect(M2mpsk.E_STATE, () -> cfg.setMaxInput(M2mpsk.MAX_INPUT_MIN)); // frozen
        expect(M2mpsk.E_INVALID, () -> a.setPeerTag(""));
        a.setPeerTag("[::1]:5684");
        assertEquals("[::1]:5684", a.peerTag());
        a.start(now());
        expect(M2mpsk.E_STATE, () -> a.setPeerTag("other"));
      }
    }
  }

  @Test
  public void maxHandshakesRefusesWithLimit() {
    try (Keystore ks = keystore(); Config cb = new Config()) {
      cb.addLocalId(IDB);
      cb.setMaxHandshakes(2);
      cb.setEventQueue(8);
      Association b1 = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ks);
      Association b2 = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ks);
      assertEquals(2, cb.handshakesInProgress());
      expect(M2mpsk.E_LIMIT,
          () -> new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ks));
      List<Event> evs = drainEvents(cb);
      assertEquals(1, evs.size());
      assertEquals(M2mpsk.EVENT_RATE_LIMITED, evs.get(0).type());
      assertEquals(M2mpsk.REASON_LIMIT, evs.get(0).reason());
      assertEquals(M2mpsk.ROLE_RESPONDER, evs.get(0).role());
      evs.get(0).close();
      b1.close();
      assertEquals(1, cb.handshakesInProgress());
      new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ks).close();
      b2.close();
      assertEquals(0, cb.handshakesInProgress());
    }
  }

  /** One TLS handshake from an initiator of ksA to a fresh responder of cb
   * tagged tag; returns the responder's failure reason (REASON_NONE when
   * established). */
  static int attempt(Config cb, Keystore ksB, Keystore ksA, String tag) {
    try (Config ca = new Config();
        Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ksA, KPSA_ID);
        Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ksB)) {
      b.setPeerTag(tag);
      try {
        b.start(now());
      } catch (M2mpskException e) {
        assertEquals(M2mpsk.E_FAILED, e.getCode());
        assertEquals(0, b.drain().length); // refused with nothing sent
        return b.failure();
      }
      a.start(now());
      pump(a, b);
      return b.failure();
    }
  }

  @Test
  public void peerBlockedAfterWrongKeyHandshakes() {
    String tag = "192.0.2.7:40000";
    try (Keystore good = keystore(); Keystore wrong = new Keystore(); Config cb = new Config()) {
      byte[] other = KEY.clone();
      other[0] ^= 1;
      wrong.add(KPSA_ID, other, null, IDB);
      cb.addLocalId(IDB);
      cb.setRateLimit(M2mpsk.RATE_PEER, 3, 60000, 5000, 20000);
      cb.setRateLimit(M2mpsk.RATE_KPSA_ID, 0, 0, 0, 0);
      cb.setEventQueue(16);
      for (int i = 0; i < 3; i++) {
        assertEquals(-1, cb.peerBlocked(tag, now()));
        assertEquals(M2mpsk.REASON_BAD_KEY, attempt(cb, good, wrong, tag));
      }
      long t = now();
      long until = cb.peerBlocked(tag, t);
      assertTrue("until " + until + " at " + t, until > t && until <= t + 5000);
      assertEquals(M2mpsk.REASON_RATE_LIMITED, attempt(cb, good, good, tag));
      assertEquals(M2mpsk.REASON_NONE, attempt(cb, good, good, "192.0.2.8:40000"));
      assertEquals(-1, cb.peerBlocked(tag, until));

      List<Event> evs = drainEvents(cb);
      assertTrue(evs.size() >= 5);
      for (int i = 0; i < 3; i++) {
        assertEquals(M2mpsk.EVENT_FAILED, evs.get(i).type());
        assertEquals(M2mpsk.REASON_BAD_KEY, evs.get(i).reason());
        assertEquals(tag, evs.get(i).peerTag());
        assertEquals(KPSA_ID, evs.get(i).kpsaId());
      }
      assertEquals(M2mpsk.EVENT_RATE_LIMITED, evs.get(3).type());
      assertEquals(M2mpsk.REASON_RATE_LIMITED, evs.get(3).reason());
      assertTrue(evs.get(3).detail(), evs.get(3).detail().contains(tag));
      assertEquals(M2mpsk.EVENT_ESTABLISHED, evs.get(4).type());
      assertEquals("192.0.2.8:40000", evs.get(4).peerTag());
      for (Event e : evs) e.close();
    }
  }

  @Test
  public void eventsEstablishedThenClosed() {
    String tag = "198.51.100.1:5684";
    try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config()) {
      cb.addLocalId(IDB);
      ca.setEventQueue(8);
      cb.setEventQueue(8);
      long t0 = now();
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_DTLS, ca, ks, KPSA_ID);
          Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_DTLS, cb, ks)) {
        b.setPeerTag(tag);
        b.start(t0);
        a.start(t0);
        assertNull(pump(a, b));
        a.closeNotify();
        pump(a, b);
        expect(M2mpsk.E_CLOSED, () -> b.read());
      }
      long t1 = now();
      List<Event> evs = drainEvents(cb);
      assertEquals(2, evs.size());
      try (Event est = evs.get(0); Event closed = evs.get(1)) {
        assertEquals(M2mpsk.EVENT_ESTABLISHED, est.type());
        assertEquals(M2mpsk.REASON_NONE, est.reason());
        assertEquals(M2mpsk.ROLE_RESPONDER, est.role());
        assertEquals(M2mpsk.TRANSPORT_DTLS, est.transport());
        assertTrue(t0 <= est.timeMs() && est.timeMs() <= closed.timeMs() && closed.timeMs() <= t1);
        assertEquals(KPSA_ID, est.kpsaId());
        assertEquals("12-" + KPSA_ID, est.peerId());
        assertTrue(est.peerIdIsCredential());
        assertEquals(tag, est.peerTag());
        assertTrue(est.detail(), est.detail().contains("DTLSv1.2"));
        assertEquals(M2mpsk.EVENT_CLOSED, closed.type());
        assertEquals("close_notify received", closed.detail());
        assertEquals("12-" + KPSA_ID, closed.peerId());
        est.close();
        expect(M2mpsk.E_INVALID, () -> est.type()); // closed: no event left
      }
      assertNull(cb.nextEvent());
      assertEquals(0, cb.eventsDropped());
      evs = drainEvents(ca);
      assertEquals(2, evs.size());
      assertEquals(M2mpsk.EVENT_ESTABLISHED, evs.get(0).type());
      assertEquals(M2mpsk.ROLE_INITIATOR, evs.get(0).role());
      assertEquals(IDB, evs.get(0).peerId());
      assertFalse(evs.get(0).peerIdIsCredential());
      assertNull(evs.get(0).peerTag());
      assertEquals(M2mpsk.EVENT_CLOSED, evs.get(1).type());
      assertEquals("close_notify sent", evs.get(1).detail());
    }
  }

  // ---- oneM2M request checks and key derivation ----------------------------

  static final String LOCAL = "//m2m.example.com/cse-in";

  @Test
  public void originatorCheckTable() {
    assertEquals(0, M2mpsk.ORIGINATOR_ACCEPT);
    assertEquals(4106, M2mpsk.ORIGINATOR_NOT_AUTHENTICATED);
    assertEquals(4107, M2mpsk.ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED);
    assertEquals(1, M2mpsk.ORIGINATOR_AE_CREATE);
    assertEquals(2, M2mpsk.ORIGINATOR_ALLOW_UNSECURED_AE);
    assertEquals(3, M2mpsk.PEER_CREDENTIAL);
    assertEquals(M2mpsk.ORIGINATOR_ACCEPT,
        M2mpsk.originatorCheck(M2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL, "Cae1"));
    assertEquals(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED,
        M2mpsk.originatorCheck(M2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL, "Cae2"));
    assertEquals(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED,
        M2mpsk.originatorCheck(M2mpsk.PEER_CSE, "/cse-mn", LOCAL, "/cse-asn", 0));
    assertEquals(M2mpsk.ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED,
        M2mpsk.originatorCheck(M2mpsk.PEER_NONE, null, LOCAL, "/cse-mn"));
    assertEquals(M2mpsk.ORIGINATOR_ACCEPT, M2mpsk.originatorCheck(M2mpsk.PEER_NONE, null, LOCAL,
        null, M2mpsk.ORIGINATOR_AE_CREATE | M2mpsk.ORIGINATOR_ALLOW_UNSECURED_AE));
    assertEquals(M2mpsk.ORIGINATOR_ACCEPT, M2mpsk.originatorCheck(M2mpsk.PEER_CREDENTIAL,
        "12-" + KPSA_ID, LOCAL, "C", M2mpsk.ORIGINATOR_AE_CREATE));
    assertEquals(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED,
        M2mpsk.originatorCheck(M2mpsk.PEER_CREDENTIAL, "12-" + KPSA_ID, LOCAL, "Cae1"));
    // Errors throw instead of answering.
    expect(M2mpsk.E_IDA, () -> M2mpsk.originatorCheck(M2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL, "ae1"));
    expect(M2mpsk.E_IDB, () -> M2mpsk.originatorCheck(M2mpsk.PEER_AE, "/cse-in/Cae1", "cse-in", "Cae1"));
    expect(M2mpsk.E_INVALID, () -> M2mpsk.originatorCheck(M2mpsk.PEER_AE, "/cse-in/Cae1", null, "Cae1"));
    expect(M2mpsk.E_INVALID, () -> M2mpsk.originatorCheck(M2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL, "Cae1", 4));
    expect(M2mpsk.E_INVALID, () -> M2mpsk.originatorCheck(M2mpsk.PEER_AE, "/cse-in/Cae1", LOCAL, "Cae1", -1));
    expect(M2mpsk.E_INVALID, () -> M2mpsk.originatorCheck(M2mpsk.PEER_NONE, "/cse-in/Cae1", LOCAL, "Cae1"));
    expect(M2mpsk.E_KPSA_ID, () -> M2mpsk.originatorCheck(M2mpsk.PEER_CREDENTIAL, "12-test", LOCAL,
        null, M2mpsk.ORIGINATOR_AE_CREATE));
  }

  static final String VECTOR = "0a940138d9f28b1363bda9fe9250740c955ce433aa87ef28b1b080ad02bd40d9";

  static byte[] unhex(String s) {
    byte[] b = new byte[s.length() / 2];
    for (int i = 0; i < b.length; i++) b[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
    return b;
  }

  /** The responder's failure reason after a TLS handshake from ksA to ksB;
   * REASON_NONE when both are established. */
  static int handshakeWith(Keystore ksA, Keystore ksB) {
    try (Config ca = new Config(); Config cb = new Config()) {
      cb.addLocalId(IDB);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ksA, KPSA_ID);
          Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ksB)) {
        long unix = System.currentTimeMillis() / 1000;
        b.start(now(), unix);
        a.start(now(), unix);
        pump(a, b);
        if (b.state() == M2mpsk.STATE_ESTABLISHED) assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
        return b.failure();
      }
    }
  }

  @Test
  public void addDerivedIsTheVector() throws Exception {
    byte[] ke = KEY.clone(); // 0x00..0x1f
    byte[] vector = unhex(VECTOR);
    // The vector, computed here by the JDK, independently of the library.
    javax.crypto.Mac mac = javax.crypto.Mac.getInstance("HmacSHA256");
    mac.init(new javax.crypto.spec.SecretKeySpec(ke, "HmacSHA256"));
    mac.update("oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
        .getBytes(StandardCharsets.US_ASCII));
    assertArrayEquals(vector, mac.doFinal(IDB.getBytes(StandardCharsets.US_ASCII)));

    byte[] offByOne = vector.clone();
    offByOne[31] ^= 1;
    try (Keystore derived = new Keystore(); Keystore plain = new Keystore();
        Keystore wrong = new Keystore()) {
      derived.addDerived(KPSA_ID, ke, "//m2m.example.com/cse-in", null, IDB, 0, 1900000000);
      assertEquals(1900000000, derived.lookup(KPSA_ID).getNot_after());
      plain.add(KPSA_ID, vector, null, IDB);
      wrong.add(KPSA_ID, offByOne, null, IDB);
      assertEquals(M2mpsk.REASON_NONE, handshakeWith(derived, plain));
      assertEquals(M2mpsk.REASON_NONE, handshakeWith(plain, derived));
      assertEquals(M2mpsk.REASON_BAD_KEY, handshakeWith(derived, wrong));
      expect(M2mpsk.E_KEY_LENGTH, () -> derived.addDerived("k@onem2m.com", new byte[15],
          "//m2m.example.com/cse-in", null, IDB));
      expect(M2mpsk.E_IDA, () -> derived.addDerived("k@onem2m.com", ke, "cse-in", null, IDB));
      expect(M2mpsk.E_DUPLICATE, () -> derived.addDerived(KPSA_ID, ke, "/cse-in", null, IDB));
      assertEquals(1, derived.count());
    }
  }

  // ---- AE-ID binding, SA2, the TS-0003 profile, DTLS cookies (since 0.2) ---

  static final String IDA = "//m2m.example.com/cse-in/Cae1";
  static final String AE_ID = "/cse-in/Cae1";
  static final String CRED = "12-" + KPSA_ID;

  @Test
  public void bindAeIdAfterACredentialBinding() {
    for (int transport : new int[] {M2mpsk.TRANSPORT_TLS, M2mpsk.TRANSPORT_DTLS}) {
      try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config()) {
        cb.addLocalId(IDB);
        Association b = new Association(M2mpsk.ROLE_RESPONDER, transport, cb, ks);
        try (Association a = new Association(M2mpsk.ROLE_INITIATOR, transport, ca, ks, KPSA_ID)) {
          expect(M2mpsk.E_STATE, () -> b.bindAeId(AE_ID)); // idle: nothing bound yet
          b.start(now());
          a.start(now());
          assertNull(pump(a, b));
          assertEquals(b.failureDetail(), M2mpsk.STATE_ESTABLISHED, b.state());
          assertEquals(CRED, b.peerId());
          assertTrue(b.peerIdIsCredential());
          // The AE's registration: accepted over the Credential-ID binding.
          assertEquals(M2mpsk.ORIGINATOR_ACCEPT, M2mpsk.originatorCheck(M2mpsk.PEER_CREDENTIAL,
              b.peerId(), b.localId(), null, M2mpsk.ORIGINATOR_AE_CREATE));
          expect(M2mpsk.E_STATE, () -> a.bindAeId(AE_ID)); // Entity A binds IdB
          expect(M2mpsk.E_IDA, () -> b.bindAeId("Cae1"));
          expect(M2mpsk.E_IDA, () -> b.bindAeId("/cse-mn"));
          expect(M2mpsk.E_INVALID, () -> b.bindAeId(null));
          assertEquals(CRED, b.peerId()); // refusals change nothing
          b.bindAeId(AE_ID);
          assertEquals(AE_ID, b.peerId());
          assertFalse(b.peerIdIsCredential());
          assertEquals(IDB, b.localId());
          assertEquals(M2mpsk.ORIGINATOR_ACCEPT,
              M2mpsk.originatorCheck(M2mpsk.PEER_AE, b.peerId(), b.localId(), "Cae1"));
          assertEquals(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED,
              M2mpsk.originatorCheck(M2mpsk.PEER_AE, b.peerId(), b.localId(), "Cae2"));
          expect(M2mpsk.E_STATE, () -> b.bindAeId("/cse-in/Cother")); // once only
          assertEquals(AE_ID, b.peerId());
        } finally {
          b.close();
        }
        expect(M2mpsk.E_INVALID, () -> b.bindAeId(AE_ID)); // closed
      }
    }
  }

  /** SA2: Entity B dials Entity A with both configs reversed, over each
   * transport, with a record that has an IdA and one that has none. */
  @Test
  public void sa2RolesReversed() {
    for (int transport : new int[] {M2mpsk.TRANSPORT_TLS, M2mpsk.TRANSPORT_DTLS}) {
      for (String ida : new String[] {IDA, null}) {
        try (Keystore ks = new Keystore(); Config cfgA = new Config(); Config cfgB = new Config()) {
          ks.add(KPSA_ID, KEY, ida, IDB);
          expect(M2mpsk.E_NO_LOCAL_ID,
              () -> new Association(M2mpsk.ROLE_RESPONDER, transport, cfgA, ks));
          cfgA.setRolesReversed(true); // no addLocalId(): Entity A serves no IdB
          cfgB.setRolesReversed(true);
          try (Association b = new Association(M2mpsk.ROLE_INITIATOR, transport, cfgB, ks, KPSA_ID);
              Association a = new Association(M2mpsk.ROLE_RESPONDER, transport, cfgA, ks)) {
            expect(M2mpsk.E_STATE, () -> cfgA.setRolesReversed(false)); // frozen
            a.start(now());
            b.start(now());
            assertNull(pump(b, a));
            assertEquals(a.failureDetail(), M2mpsk.STATE_ESTABLISHED, a.state());
            assertEquals(b.failureDetail(), M2mpsk.STATE_ESTABLISHED, b.state());
            // A, the server, binds IdB; B, the client, binds IdA.
            assertEquals(IDB, a.peerId());
            assertFalse(a.peerIdIsCredential());
            assertEquals(IDB, b.localId());
            if (ida != null) {
              assertEquals(IDA, b.peerId());
              assertFalse(b.peerIdIsCredential());
              assertEquals(IDA, a.localId());
            } else {
              assertEquals(CRED, b.peerId());
              assertTrue(b.peerIdIsCredential());
              assertNull(a.localId());
              expect(M2mpsk.E_STATE, () -> a.bindAeId(AE_ID));
              b.bindAeId(AE_ID);
              assertEquals(AE_ID, b.peerId());
            }
            a.write("from Entity A".getBytes(StandardCharsets.UTF_8));
            pump(a, b);
            assertEquals("from Entity A", new String(b.read(), StandardCharsets.UTF_8));
          }
        }
      }
    }
  }

  static final String CBC256 = "TLS_PSK_WITH_AES_128_CBC_SHA256";
  static final String CCM8 = "TLS_PSK_WITH_AES_128_CCM_8";

  @Test
  public void ts0003ProfileIsBackendAware() {
    assertEquals(1, M2mpsk.PROFILE_TS0003);
    assertEquals(-34, M2mpsk.E_UNSUPPORTED);
    String tls = M2mpsk.profileSuites(M2mpsk.PROFILE_TS0003, M2mpsk.TRANSPORT_TLS);
    String dtls = M2mpsk.profileSuites(M2mpsk.PROFILE_TS0003, M2mpsk.TRANSPORT_DTLS);
    for (String name : (tls + ":" + dtls).split(":")) {
      assertTrue(name, name.startsWith("TLS_PSK_WITH_"));
    }
    try (Config cfg = new Config()) {
      String before = cfg.suites(M2mpsk.TRANSPORT_TLS);
      if (BACKEND.equals("boringssl")) {
        assertEquals(CBC256 + ":" + CCM8, M2mpsk.profileMissing(M2mpsk.PROFILE_TS0003));
        assertEquals("TLS_PSK_WITH_AES_128_CBC_SHA:TLS_PSK_WITH_AES_256_CBC_SHA", tls);
        expect(M2mpsk.E_SUITE, () -> cfg.setProfile(M2mpsk.PROFILE_TS0003));
        assertEquals(before, cfg.suites(M2mpsk.TRANSPORT_TLS)); // nothing changed
      } else {
        assertEquals("", M2mpsk.profileMissing(M2mpsk.PROFILE_TS0003));
        assertTrue(tls, tls.startsWith(CBC256 + ":"));
        assertTrue(dtls, dtls.startsWith(CCM8 + ":"));
        assertEquals(tls, before); // the profile is also the default
        cfg.setProfile(M2mpsk.PROFILE_TS0003);
        assertEquals(tls, cfg.suites(M2mpsk.TRANSPORT_TLS));
        assertEquals(dtls, cfg.suites(M2mpsk.TRANSPORT_DTLS));
      }
      cfg.setSuites("TLS_PSK_WITH_AES_256_CBC_SHA"); // a list replaces the profile
      assertEquals("TLS_PSK_WITH_AES_256_CBC_SHA", cfg.suites(M2mpsk.TRANSPORT_DTLS));
      expect(M2mpsk.E_INVALID, () -> M2mpsk.profileMissing(0));
      expect(M2mpsk.E_INVALID, () -> M2mpsk.profileSuites(M2mpsk.PROFILE_TS0003, 2));
      expect(M2mpsk.E_INVALID, () -> cfg.setProfile(9));
      expect(M2mpsk.E_INVALID, () -> cfg.suites(5));
      cfg.close();
      expect(M2mpsk.E_INVALID, () -> cfg.suites(M2mpsk.TRANSPORT_TLS));
    }
  }

  static int handshakeType(byte[] d) {
    return d.length > 13 && d[0] == 22 ? d[13] : -1;
  }

  @Test
  public void dtlsListen() {
    String tag = "192.0.2.7:5684";
    try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config();
        Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_DTLS, ca, ks, KPSA_ID)) {
      cb.addLocalId(IDB);
      a.start(now());
      byte[] ch1 = a.drain();
      assertEquals(1, handshakeType(ch1));
      expect(M2mpsk.E_INVALID, () -> cb.dtlsListen("", ch1));
      expect(M2mpsk.E_INVALID, () -> cb.dtlsListen(tag, new byte[0]));
      expect(M2mpsk.E_INVALID, () -> cb.dtlsListen(tag, null));
      byte[] ch = ch1;
      if (BACKEND.equals("boringssl")) {
        // No HelloVerifyRequest: create the association at once instead.
        expect(M2mpsk.E_UNSUPPORTED, () -> cb.dtlsListen(tag, ch1));
      } else {
        byte[] hvr = cb.dtlsListen(tag, ch1);
        assertNotNull(hvr);
        assertEquals(3, handshakeType(hvr)); // HelloVerifyRequest
        assertTrue(hvr.length <= 64);
        assertEquals(0, cb.handshakesInProgress()); // nothing kept
        expect(M2mpsk.E_INVALID, () -> cb.dtlsListen(tag, hvr)); // not a ClientHello
        a.feed(hvr, now());
        ch = a.drain();
        assertEquals(1, handshakeType(ch));
        assertEquals(3, handshakeType(cb.dtlsListen("192.0.2.8:5684", ch))); // another peer's
        assertNull(cb.dtlsListen(tag, ch)); // a valid cookie: create the association
      }
      try (Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_DTLS, cb, ks)) {
        b.setPeerTag(tag);
        b.start(now());
        b.feed(ch, now());
        assertNull(pump(a, b));
        assertEquals(b.failureDetail(), M2mpsk.STATE_ESTABLISHED, b.state());
        assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
        assertEquals(CRED, b.peerId());
        assertEquals(IDB, a.peerId());
      }
      cb.close();
      expect(M2mpsk.E_INVALID, () -> cb.dtlsListen(tag, ch1));
    }
  }

  // ---- real sockets against openssl s_server -------------------------------

  static String hex(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (byte x : b) s.append(String.format("%02x", x));
    return s.toString();
  }

  static Process sServer(boolean dtls) throws Exception {
    return new ProcessBuilder("openssl", "s_server", "-nocert", "-accept", "127.0.0.1:0",
            dtls ? "-dtls1_2" : "-tls1_2", "-psk", hex(KEY), "-psk_identity", KPSA_ID,
            "-cipher", "PSK")
        .redirectErrorStream(true)
        .start();
  }

  /** Reads the server's output until `regex` matches; returns the match. */
  static Matcher waitFor(Process p, String regex) throws Exception {
    InputStream in = p.getInputStream();
    StringBuilder seen = new StringBuilder();
    long end = System.currentTimeMillis() + 20000;
    Pattern pat = Pattern.compile(regex);
    while (System.currentTimeMillis() < end) {
      if (in.available() > 0) {
        seen.append((char) in.read());
        Matcher m = pat.matcher(seen);
        if (m.find()) return m;
      } else {
        Thread.sleep(10);
      }
    }
    throw new AssertionError("no " + regex + " in: " + seen);
  }

  interface Link {
    void send(byte[] b) throws Exception;
    byte[] recv(int timeoutMs) throws Exception; // null on timeout
  }

  static void drive(Association a, Link link, java.util.function.BooleanSupplier until)
      throws Exception {
    long end = System.currentTimeMillis() + 20000;
    while (System.currentTimeMillis() < end) {
      for (byte[] out = a.drain(); out.length > 0; out = a.drain()) link.send(out);
      if (until.getAsBoolean()) return;
      long t = a.nextTimeout();
      int wait = t < 0 ? 200 : (int) Math.max(1, Math.min(200, t - now()));
      byte[] in = link.recv(wait);
      if (in == null) a.handleTimeout(now());
      else a.feed(in, now());
    }
    throw new AssertionError("timed out in state " + a.state());
  }

  void toSServer(boolean dtls) throws Exception {
    Process server = sServer(dtls);
    try {
      int port = Integer.parseInt(waitFor(server, "ACCEPT.*:(\\d+)\\s").group(1));
      Link link;
      AutoCloseable sock;
      if (dtls) {
        DatagramSocket ds = new DatagramSocket();
        ds.connect(new InetSocketAddress("127.0.0.1", port));
        sock = ds;
        link = new Link() {
          public void send(byte[] b) throws Exception {
            ds.send(new DatagramPacket(b, b.length));
          }

          public byte[] recv(int ms) throws Exception {
            byte[] buf = new byte[17408];
            DatagramPacket p = new DatagramPacket(buf, buf.length);
            ds.setSoTimeout(ms);
            try {
              ds.receive(p);
            } catch (SocketTimeoutException e) {
              return null;
            }
            return java.util.Arrays.copyOf(buf, p.getLength());
          }
        };
      } else {
        Socket s = new Socket("127.0.0.1", port);
        sock = s;
        OutputStream os = s.getOutputStream();
        InputStream is = s.getInputStream();
        link = new Link() {
          public void send(byte[] b) throws Exception {
            os.write(b);
            os.flush();
          }

          public byte[] recv(int ms) throws Exception {
            byte[] buf = new byte[17408];
            s.setSoTimeout(ms);
            int n;
            try {
              n = is.read(buf);
            } catch (SocketTimeoutException e) {
              return null;
            }
            if (n < 0) throw new AssertionError("s_server closed the connection");
            return java.util.Arrays.copyOf(buf, n);
          }
        };
      }
      int transport = dtls ? M2mpsk.TRANSPORT_DTLS : M2mpsk.TRANSPORT_TLS;
      try (AutoCloseable c = sock; Keystore ks = keystore(); Config cfg = new Config();
          Association a = new Association(M2mpsk.ROLE_INITIATOR, transport, cfg, ks, KPSA_ID)) {
        a.start(now(), System.currentTimeMillis() / 1000);
        drive(a, link, () -> a.state() != M2mpsk.STATE_HANDSHAKING);
        assertEquals(a.failureDetail(), M2mpsk.STATE_ESTABLISHED, a.state());
        assertEquals(IDB, a.peerId());
        a.write("hello from java\n".getBytes(StandardCharsets.UTF_8));
        drive(a, link, () -> true);
        waitFor(server, "hello from java");
        OutputStream in = server.getOutputStream();
        in.write("hello from openssl\n".getBytes(StandardCharsets.UTF_8));
        in.flush();
        StringBuilder got = new StringBuilder();
        drive(a, link, () -> {
          got.append(new String(a.read(), StandardCharsets.UTF_8));
          return got.indexOf("\n") >= 0;
        });
        assertEquals("hello from openssl\n", got.toString());
        a.closeNotify();
        drive(a, link, () -> true);
      }
    } finally {
      server.destroyForcibly().waitFor();
    }
  }

  @Test
  public void socketToOpensslSServerTls() throws Exception {
    toSServer(false);
  }

  @Test
  public void datagramSocketToOpensslSServerDtls() throws Exception {
    toSServer(true);
  }

  @Test
  public void freeFunctions() {
    assertEquals(BACKEND, M2mpsk.backendName());
    assertEquals("", M2mpsk.backendError());
    assertTrue(M2mpsk.suiteCount() > 0);
    assertNull(M2mpsk.suiteName(M2mpsk.suiteCount()));
    assertEquals("bad-key", M2mpsk.reasonName(M2mpsk.REASON_BAD_KEY));
    assertEquals("m2m.example.com", M2mpsk.idbServerName(IDB));
    assertNull(M2mpsk.idbServerName("/cse-in"));
    assertTrue(M2mpsk.versionString().matches("\\d+\\.\\d+\\.\\d+"));
  }
}
