import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
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
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import m2mpsk.Association;
import m2mpsk.Config;
import m2mpsk.Keystore;
import m2mpsk.M2mpsk;
import m2mpsk.M2mpskException;
import org.junit.Test;

/** The Java binding: in-memory handshakes, error paths, and real sockets
 * against openssl s_server -psk. */
public class M2mpskTest {
  static {
    System.loadLibrary("m2mpskjni");
  }

  static final String KPSA_ID = "test@onem2m.com";
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
    assertEquals("boringssl", M2mpsk.backendName());
    assertEquals("", M2mpsk.backendError());
    assertTrue(M2mpsk.suiteCount() > 0);
    assertNull(M2mpsk.suiteName(M2mpsk.suiteCount()));
    assertEquals("bad-key", M2mpsk.reasonName(M2mpsk.REASON_BAD_KEY));
    assertEquals("m2m.example.com", M2mpsk.idbServerName(IDB));
    assertNull(M2mpsk.idbServerName("/cse-in"));
    assertTrue(M2mpsk.versionString().matches("\\d+\\.\\d+\\.\\d+"));
  }
}
