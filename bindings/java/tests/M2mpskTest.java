import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.ReadOnlyBufferException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Supplier;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLHandshakeException;
import org.m2mpsk.Association;
import org.m2mpsk.Config;
import org.m2mpsk.Event;
import org.m2mpsk.KeyRecord;
import org.m2mpsk.KeyRequest;
import org.m2mpsk.KeySource;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;
import org.m2mpsk.M2mpskException;
import org.m2mpsk.M2mpskHandshakeException;
import org.m2mpsk.M2mpskStatus;
import org.m2mpsk.M2mpskUsageException;
import org.junit.Test;

/** The Java binding: in-memory handshakes, error paths, limits and events,
 * the oneM2M checks, AE-ID binding, SA2, the TS-0003 profile and DTLS
 * cookies (with the backend M2MPSK_TLS names), and real sockets against
 * openssl s_server -psk. */
public class M2mpskTest {

  static final String KPSA_ID = "test@onem2m.com";
  /** The TLS backend this build is expected to have: ctest passes the
   * build's M2MPSK_TLS, so a library loading another backend fails. */
  static final String BACKEND =
      System.getenv("M2MPSK_TLS") != null ? System.getenv("M2MPSK_TLS") : "boringssl";
  /** What backendName() answers: the build's engines joined by "+". */
  static final String BACKEND_NAME =
      System.getenv("M2MPSK_BACKEND_NAME") != null ? System.getenv("M2MPSK_BACKEND_NAME") : BACKEND;
  static final String IDB = "//m2m.example.com/cse-in";
  static final byte[] KEY = new byte[32];

  static {
    for (int i = 0; i < KEY.length; i++) KEY[i] = (byte) i;
  }

  static long now() {
    return System.nanoTime() / 1_000_000;
  }

  static Keystore keystore() throws Exception {
    Keystore ks = new Keystore();
    ks.add(KPSA_ID, KEY, null, IDB);
    return ks;
  }

  /** Moves bytes both ways until neither side has anything to send. */
  static M2mpskStatus pump(Association a, Association b) throws Exception {
    M2mpskStatus failure = null;
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
          } catch (SSLException e) {
            failure = (M2mpskStatus) e;
          }
        }
      }
      if (!moved) break;
    }
    return failure;
  }

  void handshake(int transport) throws Exception {
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
  public void handshakeTls() throws Exception {
    handshake(M2mpsk.TRANSPORT_TLS);
  }

  @Test
  public void handshakeDtls() throws Exception {
    handshake(M2mpsk.TRANSPORT_DTLS);
  }

  /** A call that may throw, for expect(). */
  interface Call {
    void run() throws Exception;
  }

  /** Runs r, which must throw the exception of this package for code:
   * M2mpskUsageException (unchecked) for E_INVALID, else an SSLException. */
  static M2mpskStatus expect(int code, Call r) throws Exception {
    try {
      r.run();
    } catch (Exception e) {
      if (!(e instanceof M2mpskStatus)) throw new AssertionError("threw " + e, e);
      M2mpskStatus st = (M2mpskStatus) e;
      assertEquals(e.getMessage(), code, st.getCode());
      assertTrue(st.getDetail().length() > 0);
      assertEquals(e.toString(), code == M2mpsk.E_INVALID, e instanceof M2mpskUsageException);
      assertEquals(e.toString(), code != M2mpsk.E_INVALID, e instanceof SSLException);
      return st;
    }
    fail("expected " + M2mpsk.strerror(code));
    return null;
  }

  @Test
  public void errorPaths() throws Exception {
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
        M2mpskStatus e = expect(M2mpsk.E_FAILED, () -> a.start(now()));
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
        M2mpskStatus e = pump(a, b);
        assertEquals(M2mpsk.E_FAILED, e.getCode());
        assertEquals(M2mpsk.REASON_BAD_KEY, e.getReason());
        assertEquals(M2mpsk.REASON_BAD_KEY, b.failure());
      }
    }
  }

  // ---- exceptions: checked SSLException, SSLHandshakeException, usage -----

  @Test
  public void handshakeFailuresAreSslHandshakeExceptions() throws Exception {
    byte[] other = new byte[32];
    Arrays.fill(other, (byte) 0x5a);
    try (Keystore ka = keystore(); Keystore kb = new Keystore(); Config ca = new Config();
        Config cb = new Config()) {
      kb.add(KPSA_ID, other, null, IDB);
      cb.addLocalId(IDB);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ka, KPSA_ID);
          Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, kb)) {
        b.start(now());
        a.start(now());
        byte[] hello = a.drain();
        b.feed(hello, now());
        byte[] flight = b.drain();
        a.feed(flight, now());
        M2mpskHandshakeException e = null;
        try {
          b.feed(a.drain(), now());
        } catch (M2mpskHandshakeException x) {
          e = x;
        }
        assertNotNull("the responder's bad-key failure", e);
        assertTrue(e instanceof SSLHandshakeException);
        assertEquals(M2mpsk.E_FAILED, e.getCode());
        assertEquals(M2mpsk.REASON_BAD_KEY, e.getReason());
        assertEquals("bad-key", e.getReasonName());
        for (String text : new String[] {e.getMessage(), e.toString(), e.getDetail()}) {
          for (byte[] k : new byte[][] {KEY, other}) {
            assertFalse(text, text.toLowerCase().contains(hex(k).substring(0, 16)));
            assertFalse(text, text.contains(java.util.Base64.getEncoder().encodeToString(k)
                .substring(0, 12)));
          }
        }
        // The initiator learns it from the alert: a handshake failure too.
        byte[] alert = b.drain();
        assertTrue(alert.length > 0);
        M2mpskStatus st = expect(M2mpsk.E_FAILED, () -> a.feed(alert, now()));
        assertTrue(st instanceof M2mpskHandshakeException);
        // Once failed, the same call is no handshake any more: E_STATE.
        assertFalse(expect(M2mpsk.E_STATE, () -> a.feed(alert, now()))
            instanceof SSLHandshakeException);
      }
    }
    // Refused at start() (revoked record): a handshake failure as well.
    try (Keystore ks = keystore(); Config cfg = new Config()) {
      ks.revoke(KPSA_ID);
      try (Association a =
          new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, KPSA_ID)) {
        M2mpskStatus st = expect(M2mpsk.E_FAILED, () -> a.start(now()));
        assertTrue(st instanceof M2mpskHandshakeException);
        assertEquals(M2mpsk.REASON_REVOKED, st.getReason());
      }
    }
  }

  @Test
  public void failuresAfterTheHandshakeAreSslExceptions() throws Exception {
    try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config()) {
      cb.addLocalId(IDB);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ks, KPSA_ID);
          Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ks)) {
        b.start(now());
        a.start(now());
        assertNull(pump(a, b));
        a.write(new byte[] {1, 2, 3});
        byte[] record = a.drain();
        record[record.length - 1] ^= 1; // the MAC no longer verifies
        b.feed(record, now()); // stored: records are opened by read()
        M2mpskStatus st = expect(M2mpsk.E_FAILED, () -> b.read());
        assertTrue(st instanceof M2mpskException);
        assertFalse(st instanceof SSLHandshakeException);
        assertEquals(M2mpsk.STATE_FAILED, b.state());
        // E_CLOSED is a plain SSLException as well.
        a.closeNotify();
        assertFalse(expect(M2mpsk.E_CLOSED, () -> a.write(new byte[] {1}))
            instanceof SSLHandshakeException);
      }
    }
  }

  @Test
  public void usageErrorsAreUncheckedIllegalArgumentExceptions() throws Exception {
    try (Config cfg = new Config()) {
      M2mpskStatus st = expect(M2mpsk.E_INVALID, () -> cfg.setMaxInput(-1));
      assertTrue(st instanceof IllegalArgumentException);
      assertEquals(M2mpsk.REASON_NONE, st.getReason());
      cfg.close();
      st = expect(M2mpsk.E_INVALID, () -> cfg.suites(M2mpsk.TRANSPORT_TLS));
      assertEquals("the handle is closed", st.getDetail());
    }
    assertFalse(Exception.class.isAssignableFrom(M2mpskUsageException.class)
        && !RuntimeException.class.isAssignableFrom(M2mpskUsageException.class));
  }

  @Test
  public void methodsDeclareWhatTheyThrow() throws Exception {
    Set<Class<?>> allowed = new HashSet<>(Arrays.asList(M2mpskException.class,
        M2mpskHandshakeException.class));
    Set<String> handshake = new HashSet<>();
    for (Class<?> c : new Class<?>[] {M2mpsk.class, Keystore.class, Config.class,
                                      Association.class, Event.class, KeyRequest.class}) {
      for (Method m : c.getDeclaredMethods()) {
        if (!Modifier.isPublic(m.getModifiers())) continue;
        for (Class<?> x : m.getExceptionTypes()) {
          assertTrue(m + " throws " + x, allowed.contains(x));
          if (x == M2mpskHandshakeException.class) handshake.add(m.getName());
        }
      }
    }
    assertEquals(new HashSet<>(Arrays.asList("start", "feed", "handleTimeout", "resume")),
        handshake);
    assertEquals(0, Association.class.getMethod("state").getExceptionTypes().length);
    assertEquals(0, Association.class.getMethod("peerId").getExceptionTypes().length);
    assertEquals(Arrays.asList(M2mpskException.class),
        Arrays.asList(Association.class.getMethod("drain").getExceptionTypes()));
  }

  // ---- ByteBuffer overloads -------------------------------------------------

  /** An initiator and a responder, established, over transport. */
  static Association[] established(Keystore ks, Config ca, Config cb, int transport)
      throws Exception {
    cb.addLocalId(IDB);
    Association a = new Association(M2mpsk.ROLE_INITIATOR, transport, ca, ks, KPSA_ID);
    Association b = new Association(M2mpsk.ROLE_RESPONDER, transport, cb, ks);
    b.start(now());
    a.start(now());
    assertNull(pump(a, b));
    assertEquals(M2mpsk.STATE_ESTABLISHED, b.state());
    return new Association[] {a, b};
  }

  /** A buffer of the kind: direct, or heap with a nonzero array offset. */
  static ByteBuffer buffer(boolean direct, int capacity) {
    if (direct) return ByteBuffer.allocateDirect(capacity);
    ByteBuffer b = ByteBuffer.allocate(capacity + 7);
    b.position(7);
    return b.slice(); // arrayOffset() 7: the overloads must add it
  }

  @Test
  public void byteBuffersDirectAndHeap() throws Exception {
    for (boolean direct : new boolean[] {true, false}) {
      try (Keystore ks = new Keystore(); Config ca = new Config(); Config cb = new Config()) {
        // The key from a buffer's position..limit, the bytes around it not part of it.
        ByteBuffer key = buffer(direct, KEY.length + 6);
        key.put(new byte[] {9, 9, 9}).put(KEY).put(new byte[] {9, 9, 9});
        key.position(3).limit(3 + KEY.length);
        ks.add(KPSA_ID, key, null, IDB);
        assertEquals(3 + KEY.length, key.position());
        // A handshake driven through buffers only, both ways.
        cb.addLocalId(IDB);
        try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ks, KPSA_ID);
            Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ks)) {
          b.start(now());
          a.start(now());
          ByteBuffer wire = buffer(direct, 20000);
          for (int round = 0; round < 10 && b.state() == M2mpsk.STATE_HANDSHAKING; round++) {
            for (Association[] d : new Association[][] {{a, b}, {b, a}}) {
              wire.clear();
              wire.put((byte) 0x55); // a byte before the position, not sent
              int n = d[0].drain(wire);
              assertEquals(1 + n, wire.position());
              if (n == 0 || d[1].state() != M2mpsk.STATE_HANDSHAKING) continue;
              wire.flip().position(1);
              d[1].feed(wire, now());
              assertEquals(wire.limit(), wire.position());
            }
          }
          assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
          assertEquals(M2mpsk.STATE_ESTABLISHED, b.state());
          // write: only position..limit goes out.
          ByteBuffer msg = buffer(direct, 16);
          msg.put("xxhello world".getBytes(StandardCharsets.UTF_8)).flip().position(2).limit(7);
          a.write(msg);
          assertEquals(7, msg.position());
          pump(a, b);
          // read: at the position, within remaining(); the rest waits.
          ByteBuffer in = buffer(direct, 64);
          in.position(10).limit(13);
          assertEquals(3, b.read(in));
          assertEquals(13, in.position());
          in.limit(64);
          assertEquals(2, b.read(in));
          assertEquals(0, b.read(in)); // nothing more: not an exception
          byte[] got = new byte[5];
          in.position(10);
          in.get(got);
          assertEquals("hello", new String(got, StandardCharsets.UTF_8));
          // No room: E_BUFFER, for both.
          a.write(new byte[] {1});
          ByteBuffer full = buffer(direct, 4);
          full.position(4);
          assertEquals(M2mpsk.E_BUFFER, expect(M2mpsk.E_BUFFER, () -> a.drain(full)).getCode());
          pump(a, b);
          expect(M2mpsk.E_BUFFER, () -> b.read(full));
          // A read-only destination is refused as the JDK's buffers refuse it.
          ByteBuffer ro = buffer(direct, 64).asReadOnlyBuffer();
          try {
            b.read(ro);
            fail("read into a read-only buffer");
          } catch (ReadOnlyBufferException e) {
            assertEquals(0, ro.position());
          }
          try {
            a.drain(ro);
            fail("drain into a read-only buffer");
          } catch (ReadOnlyBufferException e) {
            assertEquals(0, ro.position());
          }
          // A read-only source is fine (copied: it has no accessible array).
          ByteBuffer rsrc = ByteBuffer.wrap("ro".getBytes(StandardCharsets.UTF_8)).asReadOnlyBuffer();
          a.write(rsrc);
          assertEquals(2, rsrc.position());
          pump(a, b);
          assertEquals(1, b.read().length); // one record per read: the {1} first
          assertEquals("ro", new String(b.read(), StandardCharsets.UTF_8));
        }
      }
    }
  }

  @Test
  public void byteBufferTooSmallForADatagram() throws Exception {
    for (boolean direct : new boolean[] {true, false}) {
      try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config()) {
        Association[] ab = established(ks, ca, cb, M2mpsk.TRANSPORT_DTLS);
        try (Association a = ab[0]; Association b = ab[1]) {
          a.write(new byte[100]);
          long size = a.pending();
          assertTrue(size > 100);
          ByteBuffer small = buffer(direct, 64);
          // DTLS: the datagram must fit whole; it stays queued.
          expect(M2mpsk.E_BUFFER, () -> a.drain(small));
          assertEquals(0, small.position());
          assertEquals(size, a.pending());
          ByteBuffer big = buffer(direct, 2048);
          assertEquals(size, a.drain(big));
          big.flip();
          b.feed(big, now());
          assertEquals(100, b.read(buffer(direct, 2048)));
          // TLS would have put 64 bytes and kept the rest: see
          // byteBuffersDirectAndHeap's read(); drain of a stream is the same.
        }
      }
      try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config()) {
        Association[] ab = established(ks, ca, cb, M2mpsk.TRANSPORT_TLS);
        try (Association a = ab[0]; Association b = ab[1]) {
          a.write(new byte[100]);
          long size = a.pending();
          ByteBuffer small = buffer(direct, 64);
          assertEquals(64, a.drain(small));
          assertEquals(size - 64, a.pending());
          small.flip();
          b.feed(small, now());
          b.feed(ByteBuffer.wrap(a.drain()), now());
          assertEquals(100, b.read().length);
        }
      }
    }
  }

  @Test
  public void collectedHandlesNeverDoubleFree() throws Exception {
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

  static List<Event> drainEvents(Config cfg) throws Exception {
    List<Event> evs = new ArrayList<>();
    for (Event e = cfg.nextEvent(); e != null; e = cfg.nextEvent()) evs.add(e);
    return evs;
  }

  @Test
  public void limitConstantsAndSetters() throws Exception {
    assertEquals(-33, M2mpsk.E_LIMIT);
    assertEquals(-35, M2mpsk.E_PROTOCOL); // the peer's garbage (dtlsListen)
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
  public void maxHandshakesRefusesWithLimit() throws Exception {
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
  static int attempt(Config cb, Keystore ksB, Keystore ksA, String tag) throws Exception {
    try (Config ca = new Config();
        Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ksA, KPSA_ID);
        Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ksB)) {
      b.setPeerTag(tag);
      try {
        b.start(now());
      } catch (M2mpskHandshakeException e) {
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
  public void peerBlockedAfterWrongKeyHandshakes() throws Exception {
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
  public void eventsEstablishedThenClosed() throws Exception {
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
  public void originatorCheckTable() throws Exception {
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

  static byte[] unhex(String s) throws Exception {
    byte[] b = new byte[s.length() / 2];
    for (int i = 0; i < b.length; i++) b[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
    return b;
  }

  /** The responder's failure reason after a TLS handshake from ksA to ksB;
   * REASON_NONE when both are established. */
  static int handshakeWith(Keystore ksA, Keystore ksB) throws Exception {
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
  public void bindAeIdAfterACredentialBinding() throws Exception {
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
          // The same, with the binding read from the association.
          assertEquals(M2mpsk.ORIGINATOR_ACCEPT, b.originatorCheck("Cae1", 0L));
          assertEquals(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED, b.originatorCheck("Cae2", 0L));
          assertEquals(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED, b.originatorCheck(null, 0L));
          expect(M2mpsk.E_IDA, () -> b.originatorCheck("ae1", 0L));
          expect(M2mpsk.E_INVALID, () -> b.originatorCheck("Cae1", 0x100L));
          expect(M2mpsk.E_IDB, () -> a.originatorCheck(IDB, 0L)); // no IdA: no CSE-ID to check for
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
  public void sa2RolesReversed() throws Exception {
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
  public void ts0003ProfileIsBackendAware() throws Exception {
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

  static int handshakeType(byte[] d) throws Exception {
    return d.length > 13 && d[0] == 22 ? d[13] : -1;
  }

  @Test
  public void dtlsListen() throws Exception {
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
        expect(M2mpsk.E_PROTOCOL, () -> cb.dtlsListen(tag, hvr)); // not a ClientHello
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

  /** When drive() stops. */
  interface Until {
    boolean done() throws Exception;
  }

  static void drive(Association a, Link link, Until until) throws Exception {
    long end = System.currentTimeMillis() + 20000;
    while (System.currentTimeMillis() < end) {
      for (byte[] out = a.drain(); out.length > 0; out = a.drain()) link.send(out);
      if (until.done()) return;
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

  /** The engines (since 0.3): each one the build has is listed with its
   * suites, a config can name it, and every pair of engines interoperates
   * over both transports, each side running the engine it was given. */
  @Test
  public void engines() throws Exception {
    assertEquals("auto", M2mpsk.engineName(M2mpsk.ENGINE_AUTO));
    assertEquals("boringssl", M2mpsk.engineName(M2mpsk.ENGINE_BORINGSSL));
    assertEquals("openssl", M2mpsk.engineName(M2mpsk.ENGINE_OPENSSL));
    assertNull(M2mpsk.engineName(7));
    List<Integer> have = new ArrayList<>();
    for (String name : BACKEND_NAME.split("\\+")) {
      int e = name.equals("openssl") ? M2mpsk.ENGINE_OPENSSL : M2mpsk.ENGINE_BORINGSSL;
      have.add(e);
      assertEquals(1, M2mpsk.engineAvailable(e));
      long n = M2mpsk.engineSuiteCount(e);
      assertTrue(n > 0);
      assertNotNull(M2mpsk.engineSuiteName(e, n - 1));
      assertNull(M2mpsk.engineSuiteName(e, n));
    }
    assertEquals(M2mpsk.suiteCount(), M2mpsk.engineSuiteCount(M2mpsk.ENGINE_AUTO));
    try (Config cfg = new Config()) {
      expect(M2mpsk.E_INVALID, () -> cfg.setEngine(7));
    }
    for (int transport : new int[] {M2mpsk.TRANSPORT_TLS, M2mpsk.TRANSPORT_DTLS}) {
      for (int client : have) {
        for (int server : have) {
          try (Keystore ks = keystore(); Config ca = new Config(); Config cb = new Config()) {
            ca.setEngine(client);
            cb.setEngine(server);
            cb.addLocalId(IDB);
            try (Association a = new Association(M2mpsk.ROLE_INITIATOR, transport, ca, ks, KPSA_ID);
                Association b = new Association(M2mpsk.ROLE_RESPONDER, transport, cb, ks)) {
              b.start(now());
              a.start(now());
              assertNull(pump(a, b));
              assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
              assertEquals(M2mpsk.STATE_ESTABLISHED, b.state());
              assertEquals(client, a.engine());
              assertEquals(server, b.engine());
            }
          }
        }
      }
    }
  }

  @Test
  public void freeFunctions() throws Exception {
    assertEquals(BACKEND_NAME, M2mpsk.backendName());
    assertEquals("", M2mpsk.backendError());
    assertTrue(M2mpsk.suiteCount() > 0);
    assertNull(M2mpsk.suiteName(M2mpsk.suiteCount()));
    assertEquals("bad-key", M2mpsk.reasonName(M2mpsk.REASON_BAD_KEY));
    assertEquals("m2m.example.com", M2mpsk.idbServerName(IDB));
    assertNull(M2mpsk.idbServerName("/cse-in"));
    assertTrue(M2mpsk.versionString().matches("\\d+\\.\\d+\\.\\d+"));
  }

  // ---- closed handles and null arguments, for every public method -------

  /** The handle classes; closedHandlesThrow checks that none is missing. */
  static final Class<?>[] HANDLES = {Keystore.class, Config.class, Association.class, Event.class,
                                     KeyRequest.class};

  /** Valid arguments for every public method of the handle classes, by
   * "Class.method/arity", so that a call's only fault is the closed handle
   * (or the one null). A new method missing here fails the tests below
   * until it is added. */
  static final Map<String, Object[]> SAMPLES = new HashMap<>();
  /** "Class.method/arity#index" of the parameters for which null is a
   * value: no IdA, no exporter context. */
  static final Set<String> NULLABLE = new HashSet<>(Arrays.asList(
      "Keystore.add/4#2", "Keystore.add/6#2", "Keystore.addDerived/5#3",
      "Keystore.addDerived/7#3", "Association.exportKeyingMaterial/3#2",
      "Association.originatorCheck/2#0", "Keystore.put/6#2", "Keystore.setKeySource/2#0",
      "Keystore.setKeySource/3#0", "Keystore.setKeySource/3#2", "KeyRequest.supply/5#1",
      "KeyRequest.supplyOnce/5#1"));
  // A ByteBuffer overload shares its twin's sample: a byte[] is wrapped, a
  // size allocated.

  static void sample(String method, Object... args) {
    SAMPLES.put(method + "/" + args.length, args);
  }

  static {
    String tag = "192.0.2.7:40000";
    sample("Keystore.add", "other@onem2m.com", KEY, null, IDB);
    sample("Config.setEngine", M2mpsk.ENGINE_AUTO);
    sample("Keystore.add", "other@onem2m.com", KEY, null, IDB, 0, 0);
    sample("Keystore.addDerived", "other@onem2m.com", KEY, IDA, null, IDB);
    sample("Keystore.addDerived", "other@onem2m.com", KEY, IDA, null, IDB, 0, 0);
    sample("Keystore.remove", KPSA_ID);
    sample("Keystore.revoke", KPSA_ID);
    sample("Keystore.lookup", KPSA_ID);
    sample("Keystore.count");
    sample("Keystore.isLocked");
    sample("Keystore.keyMemory");
    sample("Keystore.loadFile", "/dev/null");
    sample("Config.setSuites", M2mpsk.suiteName(0));
    sample("Config.addLocalId", IDB);
    sample("Config.setHandshakeTimeout", 1000);
    sample("Config.setRevealUnknownIdentity", true);
    sample("Config.setRolesReversed", true);
    sample("Config.setProfile", M2mpsk.PROFILE_TS0003);
    sample("Config.suites", M2mpsk.TRANSPORT_TLS);
    sample("Config.setMaxHandshakes", 1);
    sample("Config.setMaxInput", M2mpsk.MAX_INPUT_MIN);
    sample("Config.setRateLimit", M2mpsk.RATE_PEER, 1, 1, 1, 1);
    sample("Config.peerBlocked", tag, 1000);
    sample("Config.handshakesInProgress");
    sample("Config.setEventQueue", 1);
    sample("Config.nextEvent");
    sample("Config.eventsDropped");
    sample("Config.dtlsListen", tag, new byte[64]);
    sample("Association.setMtu", 1400);
    sample("Association.setPeerTag", tag);
    sample("Association.peerTag");
    sample("Association.start", 1000);
    sample("Association.start", 1000, 0);
    sample("Association.feed", new byte[] {1}, 1000);
    sample("Association.write", new byte[] {1});
    sample("Association.pending");
    sample("Association.nextTimeout");
    sample("Association.handleTimeout", 1000);
    sample("Association.state");
    sample("Association.closeNotify");
    sample("Association.peerId");
    sample("Association.originatorCheck", "Cae1", 0L);
    sample("Association.peerIdIsCredential");
    sample("Association.bindAeId", AE_ID);
    sample("Association.localId");
    sample("Association.kpsaId");
    sample("Association.engine");
    sample("Association.suite");
    sample("Association.version");
    sample("Association.failure");
    sample("Association.failureDetail");
    sample("Association.drain");
    sample("Association.read");
    sample("Association.read", 16384);
    sample("Association.drain", new byte[64]);
    sample("Association.exportKeyingMaterial", 16, "EXPERIMENTAL m2mpsk", null);
    for (String m : new String[] {"type", "reason", "role", "transport", "timeMs", "kpsaId",
                                  "peerId", "peerIdIsCredential", "peerTag", "detail"}) {
      sample("Event." + m);
    }
    KeySource none = (id, sni) -> null;
    sample("Keystore.put", "other@onem2m.com", KEY, null, IDB, 0, 0);
    sample("Keystore.setSourceQueue", 1);
    sample("Keystore.nextRequest");
    sample("Keystore.setKeySource", none, 1);
    sample("Keystore.setKeySource", none, 1, null);
    sample("Keystore.dispatchKeyRequests");
    sample("Keystore.whenAnswered", (Supplier<Object>) M2mpskTest::openRequest);
    sample("Association.keyRequest");
    sample("Association.resume", 1000);
    for (String m : new String[] {"kpsaId", "serverName", "role", "answered", "absent"}) {
      sample("KeyRequest." + m);
    }
    sample("KeyRequest.supply", KEY, null, IDB, 0, 0);
    sample("KeyRequest.supplyOnce", KEY, null, IDB, 0, 0);
  }

  /** An open key request: an initiator's, whose KpsaID only the key
   * source may have. */
  static KeyRequest openRequest() {
    try (Keystore ks = new Keystore(); Config cfg = new Config()) {
      ks.setSourceQueue(1);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks,
               "absent@onem2m.com")) {
        a.start(1000);
        assertEquals(M2mpsk.STATE_WAITING_KEY, a.state());
        KeyRequest r = ks.nextRequest();
        assertNotNull(r);
        return r;
      }
    } catch (Exception e) {
      throw new AssertionError(e);
    }
  }

  /** Every public instance method of a handle class but the release ones
   * (close, and SWIG's delete). */
  static List<Method> methods(Class<?> cls) {
    List<Method> out = new ArrayList<>();
    for (Method m : cls.getDeclaredMethods()) {
      int mod = m.getModifiers();
      if (!Modifier.isPublic(mod) || Modifier.isStatic(mod) || m.isSynthetic()) continue;
      if (m.getName().equals("close") || m.getName().equals("delete")) continue;
      out.add(m);
    }
    out.sort(Comparator.comparing(Method::toString));
    return out;
  }

  static String key(Method m) {
    return m.getDeclaringClass().getSimpleName() + "." + m.getName() + "/" + m.getParameterCount();
  }

  /** The sample arguments of m, converted to its parameter types. */
  static Object[] args(Method m) {
    Object[] s = SAMPLES.get(key(m));
    assertNotNull("add a valid sample to SAMPLES for " + key(m), s);
    Class<?>[] types = m.getParameterTypes();
    Object[] a = new Object[types.length];
    for (int i = 0; i < types.length; i++) {
      Object v = s[i];
      if (v instanceof Supplier) v = ((Supplier<?>) v).get();
      if (types[i] == long.class) v = ((Number) v).longValue();
      else if (types[i] == int.class) v = ((Number) v).intValue();
      else if (types[i] == ByteBuffer.class && v instanceof byte[]) v = ByteBuffer.wrap((byte[]) v);
      else if (types[i] == ByteBuffer.class) v = ByteBuffer.allocate(((Number) v).intValue());
      a[i] = v;
    }
    return a;
  }

  /** An open handle of cls. */
  static AutoCloseable open(Class<?> cls, Keystore ks) throws Exception {
    if (cls == Keystore.class) return new Keystore();
    if (cls == Config.class) return new Config();
    if (cls == Association.class) {
      return new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, new Config(), ks, KPSA_ID);
    }
    if (cls == KeyRequest.class) return openRequest();
    // An event: a responder past the config's handshake limit queues one.
    try (Config cfg = new Config()) {
      cfg.addLocalId(IDB);
      cfg.setEventQueue(4);
      cfg.setMaxHandshakes(1);
      try (Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cfg, ks)) {
        expect(M2mpsk.E_LIMIT,
            () -> new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cfg, ks));
      }
      Event ev = cfg.nextEvent();
      assertEquals(M2mpsk.EVENT_RATE_LIMITED, ev.type());
      return ev;
    }
  }

  /** Calls m on h, which must throw M2mpskUsageException (E_INVALID). */
  static M2mpskUsageException invalid(Method m, Object h, Object[] a) throws Exception {
    try {
      m.invoke(h, a);
    } catch (InvocationTargetException e) {
      if (!(e.getCause() instanceof M2mpskUsageException)) {
        throw new AssertionError(key(m) + " threw " + e.getCause(), e.getCause());
      }
      M2mpskUsageException x = (M2mpskUsageException) e.getCause();
      assertEquals(key(m) + ": " + x.getMessage(), M2mpsk.E_INVALID, x.getCode());
      return x;
    } catch (IllegalAccessException e) {
      throw new AssertionError(e);
    }
    fail(key(m) + " returned instead of throwing E_INVALID");
    return null;
  }

  static void release(AutoCloseable h, String how) throws Exception {
    switch (how) {
      case "close":
        h.close();
        break;
      case "delete": // what the collector does
        h.getClass().getMethod("delete").invoke(h);
        break;
      default:
        try (AutoCloseable x = h) {
        }
    }
  }

  @Test
  public void closedHandlesThrow() throws Exception {
    // Every AutoCloseable class of the jar is a handle class listed here.
    Set<Class<?>> handles = new HashSet<>();
    File jar = new File(M2mpsk.class.getProtectionDomain().getCodeSource().getLocation().toURI());
    try (JarFile j = new JarFile(jar)) {
      for (JarEntry e : java.util.Collections.list(j.entries())) {
        String n = e.getName();
        if (!n.startsWith("org/m2mpsk/") || !n.endsWith(".class")) continue;
        Class<?> c = Class.forName(n.substring(0, n.length() - 6).replace('/', '.'));
        if (AutoCloseable.class.isAssignableFrom(c)) handles.add(c);
      }
    }
    assertEquals(new HashSet<>(Arrays.asList(HANDLES)), handles);
    try (Keystore ks = keystore()) {
      for (Class<?> cls : HANDLES) {
        for (String how : new String[] {"close", "delete", "try"}) {
          AutoCloseable h = open(cls, ks);
          release(h, how);
          h.close(); // again: nothing happens
          int n = 0;
          for (Method m : methods(cls)) {
            M2mpskUsageException e = invalid(m, h, args(m));
            assertTrue(key(m) + ": " + e.getDetail(), e.getDetail().contains("closed"));
            n++;
          }
          assertTrue(cls + " has methods", n > 0);
          h.close();
          release(h, "delete");
        }
      }
    }
  }

  @Test
  public void closedAssociationGettersThrowInsteadOfDefaults() throws Exception {
    // Issue 14: state() gave STATE_FAILED and peerId() null for a closed
    // association, as if it had failed or had no peer.
    try (Keystore ks = keystore(); Config cfg = new Config()) {
      Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, KPSA_ID);
      a.close();
      expect(M2mpsk.E_INVALID, () -> a.state());
      expect(M2mpsk.E_INVALID, () -> a.peerId());
      expect(M2mpsk.E_INVALID, () -> a.nextTimeout());
      a.close();
    }
  }

  @Test
  public void nullArgumentsThrow() throws Exception {
    List<String> checked = new ArrayList<>();
    try (Keystore ks = keystore()) {
      for (Class<?> cls : HANDLES) {
        for (Method m : methods(cls)) {
          Class<?>[] types = m.getParameterTypes();
          for (int i = 0; i < types.length; i++) {
            if (types[i].isPrimitive() || NULLABLE.contains(key(m) + "#" + i)) continue;
            Object[] a = args(m);
            a[i] = null;
            AutoCloseable h = open(cls, ks);
            try {
              M2mpskUsageException e = invalid(m, h, a);
              assertFalse(key(m) + ": " + e.getDetail(), e.getDetail().contains("closed"));
            } finally {
              h.close();
            }
            checked.add(key(m) + "#" + i);
          }
        }
      }
      assertTrue(checked.toString(), checked.contains("Association.feed/2#0"));
      assertTrue(checked.toString(), checked.contains("Keystore.add/4#1"));
      // A null handle argument.
      try (Config cfg = new Config()) {
        expect(M2mpsk.E_INVALID,
            () -> new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, null, ks, KPSA_ID));
        expect(M2mpsk.E_INVALID,
            () -> new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, null, KPSA_ID));
      }
    }
  }

  @Test
  public void feedNullIsNotAnEmptyFeed() throws Exception {
    // Issue 14: feed(null) reached the library as (NULL, 0), an empty feed
    // that succeeds.
    try (Keystore ks = keystore(); Config cfg = new Config();
         Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks,
             KPSA_ID)) {
      a.start(1000);
      assertEquals("data is null", expect(M2mpsk.E_INVALID, () -> a.feed((byte[]) null, 1000)).getDetail());
      a.feed(new byte[0], 1000); // an empty array is an empty feed
      expect(M2mpsk.E_INVALID, () -> a.write((byte[]) null));
      expect(M2mpsk.E_INVALID, () -> a.write((ByteBuffer) null));
      expect(M2mpsk.E_INVALID, () -> a.feed((ByteBuffer) null, 1000));
      assertEquals(M2mpsk.STATE_HANDSHAKING, a.state());
    }
  }

  @Test
  public void nullForFreeFunctionsThrows() throws Exception {
    expect(M2mpsk.E_INVALID, () -> M2mpsk.kpsaIdValidate(null));
    expect(M2mpsk.E_INVALID, () -> M2mpsk.idbValidate(null));
    expect(M2mpsk.E_INVALID, () -> M2mpsk.idaValidate(null));
    expect(M2mpsk.E_INVALID, () -> M2mpsk.idbServerName(null));
    expect(M2mpsk.E_INVALID,
        () -> M2mpsk.originatorCheck(M2mpsk.PEER_NONE, null, null, "/cse-mn"));
  }

  // ---- key sources (since 0.4) ---------------------------------------------

  /** A source holding every KpsaID in `ids`, answering after delayMs on
   * another thread; counts its lookups by KpsaID. */
  static final class CountingSource implements KeySource {
    final Set<String> ids;
    final long delayMs;
    final Map<String, AtomicInteger> calls = new ConcurrentHashMap<>();
    final List<byte[]> given = java.util.Collections.synchronizedList(new ArrayList<>());
    boolean once; // answer with KeyRecord.once (since 0.6)

    CountingSource(long delayMs, String... ids) {
      this.ids = new HashSet<>(Arrays.asList(ids));
      this.delayMs = delayMs;
    }

    @Override
    public CompletableFuture<KeyRecord> lookup(String kpsaId, String serverName) {
      calls.computeIfAbsent(kpsaId, k -> new AtomicInteger()).incrementAndGet();
      return CompletableFuture.supplyAsync(() -> {
        if (!ids.contains(kpsaId)) return null;
        byte[] k = KEY.clone();
        given.add(k);
        return once ? KeyRecord.once(k, null, IDB, 0, 0) : new KeyRecord(k, null, IDB);
      }, CompletableFuture.delayedExecutor(delayMs, TimeUnit.MILLISECONDS));
    }

    int calls(String id) {
      AtomicInteger n = calls.get(id);
      return n == null ? 0 : n.get();
    }
  }

  /** Drives a waiting association the low-level way: dispatch, wait for
   * the answer (bounded), resume. */
  static void awaitKey(Keystore ks, Association x) throws Exception {
    assertEquals(M2mpsk.STATE_WAITING_KEY, x.state());
    ks.dispatchKeyRequests();
    try (KeyRequest req = x.keyRequest()) {
      assertNotNull(req);
      ks.whenAnswered(req).get(5, TimeUnit.SECONDS);
      assertTrue(req.answered());
    }
    x.resume(now());
  }

  static Association responder(Config cfg, Keystore ks) throws Exception {
    Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cfg, ks);
    b.start(now());
    return b;
  }

  static Association initiator(Keystore ks, String id) throws Exception {
    Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, new Config(),
        ks, id);
    a.start(now());
    return a;
  }

  @Test
  public void keySourceAnswerGivenOnceIsNotKept() throws Exception {
    CountingSource src = new CountingSource(20, KPSA_ID);
    src.once = true;
    try (Keystore ks = new Keystore(); Keystore ka = keystore(); Config cfg = new Config()) {
      cfg.addLocalId(IDB);
      ks.setKeySource(src, 8);
      for (int round = 1; round <= 2; round++) {
        Association a = initiator(ka, KPSA_ID);
        Association b = responder(cfg, ks);
        pump(a, b);
        assertEquals(M2mpsk.STATE_WAITING_KEY, b.state());
        awaitKey(ks, b);
        pump(a, b);
        assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
        assertEquals(M2mpsk.STATE_ESTABLISHED, b.state());
        assertEquals("12-" + KPSA_ID, b.peerId());
        assertEquals(round, src.calls(KPSA_ID)); // asked again: not kept
        assertEquals(0, ks.count());
        a.close();
        b.close();
      }
      assertArrayEquals(new byte[32], src.given.get(0)); // wiped once supplied
      assertTrue(KeyRecord.once(KEY.clone(), null, IDB, 0, 0).isOnce());
      assertTrue(KeyRecord.once(KEY.clone(), null, IDB, 0, 0).toString().endsWith(", once]"));
    }
  }

  @Test
  public void keySourceAnswersAfter50msAndTheHandshakeResumes() throws Exception {
    CountingSource src = new CountingSource(50, KPSA_ID);
    try (Keystore ks = new Keystore(); Keystore ka = keystore(); Config cfg = new Config()) {
      cfg.addLocalId(IDB);
      ks.setKeySource(src, 8);
      Association a = initiator(ka, KPSA_ID);
      Association b = responder(cfg, ks);
      pump(a, b);
      assertEquals(M2mpsk.STATE_WAITING_KEY, b.state());
      try (KeyRequest req = b.keyRequest()) {
        assertEquals(KPSA_ID, req.kpsaId());
        assertEquals("m2m.example.com", req.serverName());
        assertEquals(M2mpsk.ROLE_RESPONDER, req.role());
      }
      awaitKey(ks, b);
      pump(a, b);
      assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
      assertEquals(M2mpsk.STATE_ESTABLISHED, b.state());
      assertEquals(1, src.calls(KPSA_ID));
      assertArrayEquals(new byte[32], src.given.get(0)); // wiped once supplied
      assertEquals(IDB, ks.lookup(KPSA_ID).getIdb());
      expect(M2mpsk.E_STATE, () -> b.resume(now()));
      a.close();
      b.close();
    }
  }

  @Test
  public void keySourceIsAskedOncePerKpsaId() throws Exception {
    String[] ids = {"d1@onem2m.com", "d2@onem2m.com"};
    CountingSource src = new CountingSource(50, ids);
    try (Keystore ks = new Keystore(); Keystore ka = new Keystore(); Config cfg = new Config()) {
      cfg.addLocalId(IDB);
      for (String id : ids) ka.add(id, KEY, null, IDB);
      ks.setKeySource(src, 8);
      List<Association[]> pairs = new ArrayList<>();
      for (String id : ids) {
        for (int i = 0; i < 4; i++) {
          Association a = initiator(ka, id);
          Association b = responder(cfg, ks);
          pump(a, b);
          pairs.add(new Association[] {a, b});
        }
      }
      for (Association[] p : pairs) {
        awaitKey(ks, p[1]);
        pump(p[0], p[1]);
        assertEquals(M2mpsk.STATE_ESTABLISHED, p[1].state());
        p[0].close();
        p[1].close();
      }
      for (String id : ids) assertEquals(id, 1, src.calls(id));
    }
  }

  @Test
  public void absentRecordFailsLikeAWrongKey() throws Exception {
    // null, a future of null, and a failed future (logged without the key)
    KeySource[] sources = {
        (id, sni) -> null,
        (id, sni) -> CompletableFuture.completedFuture(null),
        (id, sni) -> CompletableFuture.failedFuture(new IllegalStateException("down")),
        (id, sni) -> {
          throw new IllegalStateException("thrown");
        }};
    for (KeySource source : sources) {
      try (Keystore ks = new Keystore(); Keystore ka = keystore(); Config cfg = new Config()) {
        cfg.addLocalId(IDB);
        ks.setKeySource(source, 8);
        Association a = initiator(ka, KPSA_ID);
        Association b = responder(cfg, ks);
        pump(a, b);
        try {
          awaitKey(ks, b);
        } catch (M2mpskHandshakeException e) {
          // the waiting input failed at once
        }
        pump(a, b);
        assertEquals(M2mpsk.STATE_FAILED, b.state());
        assertEquals(M2mpsk.STATE_FAILED, a.state());
        assertEquals(M2mpsk.REASON_BAD_KEY, a.failure());
        assertEquals(0, ks.count());
        a.close();
        b.close();
      }
    }
  }

  @Test
  public void initiatorKeyFromTheSource() throws Exception {
    CountingSource src = new CountingSource(20, KPSA_ID);
    try (Keystore ka = new Keystore(); Keystore kb = keystore(); Config cfg = new Config()) {
      cfg.addLocalId(IDB);
      ka.setKeySource(src, 4);
      Association a = initiator(ka, KPSA_ID);
      try (KeyRequest req = a.keyRequest()) {
        assertEquals(M2mpsk.ROLE_INITIATOR, req.role());
        assertNull(req.serverName());
      }
      awaitKey(ka, a);
      Association b = responder(cfg, kb);
      pump(a, b);
      assertEquals(M2mpsk.STATE_ESTABLISHED, a.state());
      a.close();
      b.close();
      // absent for an initiator: resume() fails it
      Association c = initiator(ka, "other@onem2m.com");
      M2mpskStatus st = expectHandshake(() -> awaitKey(ka, c));
      assertEquals(M2mpsk.REASON_UNKNOWN_IDENTITY, st.getReason());
      c.close();
    }
  }

  static M2mpskStatus expectHandshake(Call r) throws Exception {
    try {
      r.run();
    } catch (M2mpskHandshakeException e) {
      return e;
    }
    fail("expected a handshake failure");
    return null;
  }

  @Test
  public void aSourceThatNeverAnswersMeetsTheHandshakeTimeout() throws Exception {
    CompletableFuture<KeyRecord> never = new CompletableFuture<>();
    try (Keystore ks = new Keystore(); Keystore ka = keystore(); Config cfg = new Config()) {
      cfg.addLocalId(IDB);
      cfg.setHandshakeTimeout(200);
      ks.setKeySource((id, sni) -> never, 4);
      Association a = initiator(ka, KPSA_ID);
      Association b = responder(cfg, ks);
      pump(a, b);
      ks.dispatchKeyRequests();
      long t = b.nextTimeout();
      assertTrue("the wait has a deadline", t >= 0 && t <= now() + 250);
      try (KeyRequest req = b.keyRequest()) {
        try {
          ks.whenAnswered(req).get(Math.max(1, t - now()) + 50, TimeUnit.MILLISECONDS);
          fail("answered");
        } catch (TimeoutException expected) {
          // nothing came
        }
      }
      M2mpskStatus st = expectHandshake(() -> b.handleTimeout(now()));
      assertEquals(M2mpsk.REASON_TIMEOUT, st.getReason());
      a.close();
      b.close();
    }
  }

  @Test
  public void keySourceArguments() throws Exception {
    try (Keystore ks = new Keystore()) {
      expect(M2mpsk.E_INVALID, () -> ks.setKeySource((id, sni) -> null, 0));
      expect(M2mpsk.E_INVALID, () -> ks.setSourceQueue(-1));
      assertEquals(0, ks.dispatchKeyRequests()); // no source: nothing
      assertNull(ks.nextRequest());
      ks.put(KPSA_ID, KEY, null, IDB, 0, 0);
      ks.put(KPSA_ID, KEY, null, IDB, 0, 0); // the same again: no E_DUPLICATE
      expect(M2mpsk.E_KEY_LENGTH, () -> ks.put(KPSA_ID, new byte[3], null, IDB, 0, 0));
      expect(M2mpsk.E_INVALID, () -> new KeyRecord(null, null, IDB));
      assertFalse(new KeyRecord(KEY.clone(), null, IDB).toString().contains("0, 1, 2"));
      ks.setSourceQueue(1);
      Association a = initiator(ks, "absent@onem2m.com");
      KeyRequest r = ks.nextRequest();
      expect(M2mpsk.E_KEY_LENGTH, () -> r.supply(new byte[3], null, IDB, 0, 0));
      assertFalse(r.answered()); // a refused record leaves it open
      r.absent();
      expect(M2mpsk.E_STATE, () -> r.absent());
      expect(M2mpsk.E_STATE, () -> r.supply(KEY, null, IDB, 0, 0));
      r.close();
      a.close();
    }
  }

  @Test
  public void aBlockingSourceRunsOnTheExecutor() throws Exception {
    java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newSingleThreadExecutor();
    List<String> threads = java.util.Collections.synchronizedList(new ArrayList<>());
    try (Keystore ks = new Keystore(); Keystore ka = keystore(); Config cfg = new Config()) {
      cfg.addLocalId(IDB);
      ks.setKeySource((id, sni) -> {
        threads.add(Thread.currentThread().getName());
        try {
          Thread.sleep(20); // a blocking lookup
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
        return CompletableFuture.completedFuture(new KeyRecord(KEY.clone(), null, IDB));
      }, 4, pool);
      Association a = initiator(ka, KPSA_ID);
      Association b = responder(cfg, ks);
      pump(a, b);
      awaitKey(ks, b);
      pump(a, b);
      assertEquals(M2mpsk.STATE_ESTABLISHED, b.state());
      assertEquals(1, threads.size());
      assertFalse(threads.get(0).equals(Thread.currentThread().getName()));
      a.close();
      b.close();
      ks.setKeySource(null, 0); // removed: an unknown KpsaID fails at once
      Association c = responder(cfg, ks);
      Association d = initiator(keystoreWith("gone@onem2m.com"), "gone@onem2m.com");
      pump(d, c);
      assertEquals(M2mpsk.STATE_FAILED, c.state());
      c.close();
      d.close();
    } finally {
      pool.shutdownNow();
    }
  }

  static Keystore keystoreWith(String id) throws Exception {
    Keystore k = new Keystore();
    k.add(id, KEY, null, IDB);
    return k;
  }
}
