import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.ReadOnlyBufferException;
import java.nio.charset.StandardCharsets;
import java.security.KeyManagementException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.KeyManager;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLEngineResult.Status;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLHandshakeException;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLPeerUnverifiedException;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSession;
import javax.net.ssl.SSLSocket;
import org.m2mpsk.KeyRecord;
import org.m2mpsk.KeySource;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;
import org.m2mpsk.M2mpskException;
import org.m2mpsk.M2mpskHandshakeException;
import org.m2mpsk.M2mpskUsageException;
import org.junit.AfterClass;
import org.junit.BeforeClass;
import org.junit.Test;
import org.m2mpsk.jsse.M2mpskContexts;
import org.m2mpsk.jsse.M2mpskParameters;
import org.m2mpsk.jsse.M2mpskPrincipal;
import org.m2mpsk.jsse.M2mpskProvider;
import org.m2mpsk.jsse.M2mpskSSLEngine;
import org.m2mpsk.jsse.M2mpskSession;

/** The JSSE drop-in: engine statuses in memory, sockets, openssl interop. */
public class M2mpskJsseTest {
  static final String KPSA_ID = "test@onem2m.com";
  static final String AE_KPSA_ID = "ae1@onem2m.com";
  static final String IDB = "//m2m.example.com/cse-in";
  static final String AE_ID = "/cse-in/Cae1";
  static final byte[] KEY = new byte[32];
  static Keystore ks;
  static SSLContext server;
  static SSLContext client;
  static SSLContext aeClient;

  static {
    for (int i = 0; i < KEY.length; i++) KEY[i] = (byte) i;
  }

  static String hex(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (byte x : b) s.append(String.format("%02x", x));
    return s.toString();
  }

  @BeforeClass
  public static void setUp() throws Exception {
    M2mpsk.load();
    ks = new Keystore();
    ks.add(KPSA_ID, KEY, null, IDB);
    ks.add(AE_KPSA_ID, KEY, AE_ID, IDB);
    server = M2mpskContexts.server(ks, IDB);
    client = M2mpskContexts.client(ks, KPSA_ID);
    aeClient = M2mpskContexts.client(ks, AE_KPSA_ID);
  }

  @AfterClass
  public static void tearDown() {
    ks.close();
  }

  // ---- an in-memory engine pair ---------------------------------------------

  /** One side of a pair: its engine and the network bytes it has sent. */
  static final class Side {
    final SSLEngine e;
    final ByteBuffer out; // what it wrapped, for the peer to unwrap (read mode)
    final ByteBuffer app; // what it unwrapped
    final List<HandshakeStatus> seen = new ArrayList<>();

    Side(SSLEngine e) {
      this.e = e;
      out = ByteBuffer.allocate(1 << 17);
      out.flip();
      app = ByteBuffer.allocate(1 << 17);
    }

    void wrap(ByteBuffer src) throws SSLException {
      out.compact();
      SSLEngineResult r = e.wrap(src, out);
      out.flip();
      seen.add(r.getHandshakeStatus());
      assertTrue(r.toString(), r.getStatus() == Status.OK || r.getStatus() == Status.CLOSED);
    }

    /** Unwraps what the peer sent, record by record, until underflow. */
    void unwrapFrom(Side peer) throws SSLException {
      while (true) {
        SSLEngineResult r = e.unwrap(peer.out, app);
        seen.add(r.getHandshakeStatus());
        if (r.getStatus() == Status.BUFFER_UNDERFLOW || r.getStatus() == Status.CLOSED) return;
        assertEquals(r.toString(), Status.OK, r.getStatus());
        if (r.bytesConsumed() == 0 && r.bytesProduced() == 0) return;
      }
    }

    String read() {
      app.flip();
      String s = StandardCharsets.UTF_8.decode(app).toString();
      app.clear();
      return s;
    }
  }

  static final ByteBuffer EMPTY = ByteBuffer.allocate(0);

  /** Runs both engines until neither needs to wrap or unwrap. */
  static void handshake(Side a, Side b) throws SSLException {
    a.e.beginHandshake();
    b.e.beginHandshake();
    for (int i = 0; i < 50; i++) {
      boolean moved = false;
      for (Side[] d : new Side[][] {{a, b}, {b, a}}) {
        while (d[0].e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) {
          d[0].wrap(EMPTY);
          moved = true;
        }
        if (d[1].out.hasRemaining()) {
          d[0].unwrapFrom(d[1]);
          moved = true;
        }
      }
      if (!moved) break;
    }
  }

  static Side[] pair(SSLContext cctx, SSLContext sctx) throws SSLException {
    SSLEngine ce = cctx.createSSLEngine("127.0.0.1", 4433);
    ce.setUseClientMode(true);
    SSLEngine se = sctx.createSSLEngine("127.0.0.1", 50000);
    se.setUseClientMode(false);
    return new Side[] {new Side(ce), new Side(se)};
  }

  @Test
  public void provider() throws Exception {
    M2mpskProvider provider = new M2mpskProvider();
    assertEquals("M2MPSK", provider.getName());
    assertEquals(M2mpsk.versionString(), provider.getVersionStr());
    SSLContext c = SSLContext.getInstance("M2MPSK", provider);
    assertEquals("M2MPSK", c.getProtocol());
    assertEquals("M2MPSK-DTLS", SSLContext.getInstance("M2MPSK-DTLS", provider).getProtocol());
    try {
      c.init(null, null, null);
      fail("init without M2mpskParameters");
    } catch (KeyManagementException expected) {
      assertTrue(expected.getMessage().contains("M2mpskParameters"));
    }
    try {
      c.init(new KeyManager[] {M2mpskParameters.server(IDB)}, null, null);
      fail("init without a keystore");
    } catch (KeyManagementException expected) {
      assertTrue(expected.getMessage().contains("keystore"));
    }
    SSLEngine e = server.createSSLEngine();
    assertArrayEquals(new String[] {"TLSv1.2"}, e.getSupportedProtocols());
    assertArrayEquals(new String[] {"DTLSv1.2"},
        M2mpskContexts.dtls(M2mpskParameters.server(IDB).keystore(ks)).createSSLEngine()
            .getSupportedProtocols());
    assertTrue(e.getSupportedCipherSuites().length > 0);
    for (String s : e.getSupportedCipherSuites()) assertTrue(s, s.contains("_PSK_"));
    assertTrue(Arrays.asList(e.getSupportedCipherSuites())
        .containsAll(Arrays.asList(e.getEnabledCipherSuites())));
    try {
      e.setEnabledCipherSuites(new String[] {"TLS_RSA_WITH_AES_128_CBC_SHA"});
      fail("a certificate suite");
    } catch (IllegalArgumentException expected) {
    }
    try {
      e.setEnabledProtocols(new String[] {"TLSv1.3"});
      fail("TLS 1.3");
    } catch (IllegalArgumentException expected) {
    }
    try {
      e.wrap(EMPTY, ByteBuffer.allocate(100));
      fail("wrap before setUseClientMode");
    } catch (IllegalStateException expected) {
    }
    assertEquals(HandshakeStatus.NOT_HANDSHAKING, e.getHandshakeStatus());
    assertNull(e.getDelegatedTask());
    SSLParameters params = e.getSSLParameters();
    params.setEndpointIdentificationAlgorithm("HTTPS");
    params.setCipherSuites(new String[] {e.getEnabledCipherSuites()[0]});
    e.setSSLParameters(params);
    assertEquals("HTTPS", e.getSSLParameters().getEndpointIdentificationAlgorithm());
    assertEquals(1, e.getEnabledCipherSuites().length);
    assertEquals(0, e.getSSLParameters().getMaximumPacketSize()); // TLS: no MTU
    // The session before the handshake, and the sizes a caller allocates.
    SSLSession s = e.getSession();
    assertEquals("SSL_NULL_WITH_NULL_NULL", s.getCipherSuite());
    assertEquals("NONE", s.getProtocol());
    assertFalse(s.isValid());
    assertEquals(16384, s.getApplicationBufferSize());
    assertTrue(s.getPacketBufferSize() >= 16384 + 5 + 256);
    try {
      s.getPeerPrincipal();
      fail("no peer before the handshake");
    } catch (SSLPeerUnverifiedException expected) {
    }
    // toString() names identities, never the key.
    String keyHex = hex(KEY);
    assertFalse(M2mpskParameters.client(KPSA_ID).keystore(ks).toString().contains(keyHex));
  }

  @Test
  public void tlsHandshakeStatuses() throws Exception {
    Side[] p = pair(client, server);
    Side a = p[0], b = p[1];
    assertEquals(HandshakeStatus.NOT_HANDSHAKING, a.e.getHandshakeStatus());
    a.e.beginHandshake();
    b.e.beginHandshake();
    assertEquals(HandshakeStatus.NEED_WRAP, a.e.getHandshakeStatus());
    assertEquals(HandshakeStatus.NEED_UNWRAP, b.e.getHandshakeStatus());
    assertNotNull(a.e.getHandshakeSession());
    // A wrap while waiting for the peer produces nothing.
    SSLEngineResult r = b.e.wrap(EMPTY, ByteBuffer.allocate(20000));
    assertEquals(Status.OK, r.getStatus());
    assertEquals(0, r.bytesProduced());
    assertEquals(HandshakeStatus.NEED_UNWRAP, r.getHandshakeStatus());
    handshake(a, b);
    // FINISHED once per side, then NOT_HANDSHAKING; never NEED_TASK.
    for (Side s : p) {
      assertEquals(1, s.seen.stream().filter(h -> h == HandshakeStatus.FINISHED).count());
      assertFalse(s.seen.contains(HandshakeStatus.NEED_TASK));
      assertEquals(HandshakeStatus.NOT_HANDSHAKING, s.e.getHandshakeStatus());
      assertNull(s.e.getHandshakeSession());
    }
    try {
      a.e.beginHandshake();
      fail("renegotiation");
    } catch (SSLException expected) {
      assertTrue(expected.getMessage().contains("renegotiation"));
    }
    M2mpskSession sa = (M2mpskSession) a.e.getSession();
    M2mpskSession sb = (M2mpskSession) b.e.getSession();
    assertEquals("TLSv1.2", sa.getProtocol());
    assertTrue(sa.getCipherSuite(), sa.getCipherSuite().contains("_PSK_"));
    assertEquals(sa.getCipherSuite(), sb.getCipherSuite());
    assertTrue(sa.isValid());
    assertEquals(IDB, sa.peerId());
    assertEquals(IDB, sa.getPeerPrincipal().getName());
    assertEquals("12-" + KPSA_ID, sb.peerId());
    assertTrue(sb.credential());
    assertTrue(((M2mpskPrincipal) sb.getPeerPrincipal()).isCredential());
    assertEquals(KPSA_ID, sb.kpsaId());
    assertEquals(IDB, sb.localId());
    assertEquals("127.0.0.1", sb.getPeerHost());
    assertEquals(50000, sb.getPeerPort());
    try {
      sb.getPeerCertificates();
      fail("a PSK session has no certificates");
    } catch (SSLPeerUnverifiedException expected) {
    }
    assertArrayEquals(sa.exportKeyingMaterial("EXPERIMENTAL m2mpsk", null, 32),
        sb.exportKeyingMaterial("EXPERIMENTAL m2mpsk", null, 32));
    // Credential-ID binding: a registration (<AE> CREATE) is accepted, any
    // other originator is not.
    assertEquals(0, sb.originatorCheckAeCreate(null));
    assertEquals(4106, sb.originatorCheck("Cae1"));
    sb.bindAeId(AE_ID);
    assertEquals(AE_ID, sb.peerId());
    assertFalse(sb.credential());
    assertEquals(0, sb.originatorCheck("Cae1"));
    assertEquals(4106, sb.originatorCheck("Cforged"));
    // Application data, with the arrays-and-offsets wrap.
    ByteBuffer[] srcs = {ByteBuffer.wrap("xx".getBytes(StandardCharsets.UTF_8)),
        ByteBuffer.wrap("hello ".getBytes(StandardCharsets.UTF_8)),
        ByteBuffer.wrap("B".getBytes(StandardCharsets.UTF_8))};
    a.out.compact();
    r = a.e.wrap(srcs, 1, 2, a.out);
    a.out.flip();
    assertEquals(Status.OK, r.getStatus());
    assertEquals(7, r.bytesConsumed());
    assertEquals(2, srcs[0].remaining());
    b.unwrapFrom(a);
    assertEquals("hello B", b.read());
    // unwrap into several destinations, with an offset.
    b.wrap(ByteBuffer.wrap("0123456789".getBytes(StandardCharsets.UTF_8)));
    ByteBuffer[] dsts = {ByteBuffer.allocate(0), ByteBuffer.allocate(4), ByteBuffer.allocate(16384)};
    r = a.e.unwrap(b.out, dsts, 1, 2);
    assertEquals(Status.OK, r.getStatus());
    assertEquals(10, r.bytesProduced());
    assertEquals(4, dsts[1].position());
    assertEquals(6, dsts[2].position());
  }

  @Test
  public void enabledSuitesAreWhatIsOffered() throws Exception {
    String[] all = server.createSSLEngine().getEnabledCipherSuites();
    assertTrue(all.length >= 2);
    String last = all[all.length - 1];
    Side[] p = pair(client, server);
    p[0].e.setEnabledCipherSuites(new String[] {last});
    handshake(p[0], p[1]);
    assertEquals(last, p[1].e.getSession().getCipherSuite());
    // No suite in common: the handshake fails.
    Side[] q = pair(client, server);
    q[0].e.setEnabledCipherSuites(new String[] {all[0]});
    q[1].e.setEnabledCipherSuites(new String[] {last});
    try {
      handshake(q[0], q[1]);
      fail("no common suite");
    } catch (SSLHandshakeException expected) {
    }
  }

  @Test
  public void underflowAndOverflow() throws Exception {
    Side[] p = pair(aeClient, server);
    Side a = p[0], b = p[1];
    handshake(a, b);
    a.wrap(ByteBuffer.wrap(new byte[1000]));
    int whole = a.out.remaining();
    assertTrue(whole > 1000);
    // Part of a record: BUFFER_UNDERFLOW, nothing consumed.
    ByteBuffer part = ByteBuffer.wrap(Arrays.copyOf(a.out.array(), 3));
    SSLEngineResult r = b.e.unwrap(part, ByteBuffer.allocate(20000));
    assertEquals(Status.BUFFER_UNDERFLOW, r.getStatus());
    assertEquals(0, r.bytesConsumed());
    part = ByteBuffer.wrap(Arrays.copyOf(a.out.array(), whole - 1));
    r = b.e.unwrap(part, ByteBuffer.allocate(20000));
    assertEquals(Status.BUFFER_UNDERFLOW, r.getStatus());
    assertEquals(0, part.position());
    // Too little room for the plaintext: BUFFER_OVERFLOW, nothing consumed.
    r = b.e.unwrap(a.out, ByteBuffer.allocate(999));
    assertEquals(Status.BUFFER_OVERFLOW, r.getStatus());
    assertEquals(0, r.bytesConsumed());
    assertEquals(whole, a.out.remaining());
    ByteBuffer dst = ByteBuffer.allocate(b.e.getSession().getApplicationBufferSize());
    r = b.e.unwrap(a.out, dst);
    assertEquals(Status.OK, r.getStatus());
    assertEquals(whole, r.bytesConsumed());
    assertEquals(1000, r.bytesProduced());
    // wrap into too small a buffer: BUFFER_OVERFLOW, nothing consumed.
    ByteBuffer src = ByteBuffer.wrap(new byte[100]);
    r = a.e.wrap(src, ByteBuffer.allocate(50));
    assertEquals(Status.BUFFER_OVERFLOW, r.getStatus());
    assertEquals(0, r.bytesConsumed());
    assertEquals(100, src.remaining());
    // A large write goes out in records of at most 16384 bytes, each fitting
    // getPacketBufferSize().
    ByteBuffer big = ByteBuffer.wrap(new byte[40000]);
    ByteBuffer net = ByteBuffer.allocate(a.e.getSession().getPacketBufferSize());
    int records = 0;
    while (big.hasRemaining()) {
      net.clear();
      r = a.e.wrap(big, net);
      assertEquals(Status.OK, r.getStatus());
      assertTrue(r.bytesConsumed() <= 16384);
      records++;
    }
    assertEquals(3, records);
    // Read-only destinations are refused.
    try {
      a.e.wrap(EMPTY, ByteBuffer.allocate(100).asReadOnlyBuffer());
      fail("read-only dst");
    } catch (ReadOnlyBufferException expected) {
    }
  }

  @Test
  public void closeNotify() throws Exception {
    Side[] p = pair(client, server);
    Side a = p[0], b = p[1];
    handshake(a, b);
    a.e.closeOutbound();
    assertFalse(a.e.isOutboundDone());
    assertEquals(HandshakeStatus.NEED_WRAP, a.e.getHandshakeStatus());
    a.out.compact();
    SSLEngineResult r = a.e.wrap(EMPTY, a.out);
    a.out.flip();
    assertEquals(Status.CLOSED, r.getStatus());
    assertTrue(r.bytesProduced() > 0);
    assertTrue(a.e.isOutboundDone());
    // Writing after the close: CLOSED, nothing consumed.
    r = a.e.wrap(ByteBuffer.wrap(new byte[10]), ByteBuffer.allocate(20000));
    assertEquals(Status.CLOSED, r.getStatus());
    assertEquals(0, r.bytesConsumed());
    // The peer reads close_notify: CLOSED, and answers it (NEED_WRAP).
    r = b.e.unwrap(a.out, b.app);
    assertEquals(Status.CLOSED, r.getStatus());
    assertTrue(b.e.isInboundDone());
    assertEquals(HandshakeStatus.NEED_WRAP, r.getHandshakeStatus());
    b.out.compact();
    r = b.e.wrap(EMPTY, b.out);
    b.out.flip();
    assertEquals(Status.CLOSED, r.getStatus());
    assertTrue(b.e.isOutboundDone());
    assertEquals(HandshakeStatus.NOT_HANDSHAKING, b.e.getHandshakeStatus());
    b.e.closeInbound(); // close_notify was received: no exception
    // Both sides done: the associations are freed, the sessions keep what
    // they were bound to, and what needs the association says it is gone.
    M2mpskSession sb = (M2mpskSession) b.e.getSession();
    assertEquals("12-" + KPSA_ID, sb.peerId());
    try {
      sb.originatorCheck("Cae1");
      fail("an originator check on a closed session");
    } catch (M2mpskException expected) {
      assertEquals(M2mpsk.E_STATE, expected.getCode());
      assertTrue(expected.getMessage().contains("closed"));
    }
    // A peer that stops without close_notify: closeInbound() throws.
    Side[] q = pair(client, server);
    handshake(q[0], q[1]);
    try {
      q[1].e.closeInbound();
      fail("closeInbound without close_notify");
    } catch (SSLException expected) {
      assertTrue(expected.getMessage().contains("close_notify"));
    }
    assertTrue(q[1].e.isInboundDone());
    assertEquals(HandshakeStatus.NEED_WRAP, q[1].e.getHandshakeStatus()); // its own close_notify
  }

  /** unwrap feeds the record in place from any kind of buffer: direct, a
   * heap slice (a nonzero array offset), read-only (which the core copies);
   * it consumes that record and nothing around it. */
  @Test
  public void unwrapFromEveryKindOfBuffer() throws Exception {
    Side[] p = pair(client, server);
    handshake(p[0], p[1]);
    for (String kind : new String[] {"direct", "slice", "read-only"}) {
      assertFalse(p[0].out.hasRemaining());
      p[0].wrap(ByteBuffer.wrap(kind.getBytes(StandardCharsets.UTF_8)));
      byte[] rec = new byte[p[0].out.remaining()];
      p[0].out.get(rec);
      byte[] around = new byte[3 + rec.length + 7]; // 3 bytes before, 7 after
      System.arraycopy(rec, 0, around, 3, rec.length);
      ByteBuffer src;
      if (kind.equals("direct")) {
        src = ByteBuffer.allocateDirect(around.length).put(around);
        src.clear();
      } else if (kind.equals("slice")) {
        byte[] wider = new byte[5 + around.length];
        System.arraycopy(around, 0, wider, 5, around.length);
        src = ByteBuffer.wrap(wider, 5, around.length).slice();
        assertEquals(5, src.arrayOffset());
      } else {
        src = ByteBuffer.wrap(around).asReadOnlyBuffer();
      }
      src.position(3);
      SSLEngineResult r = p[1].e.unwrap(src, p[1].app);
      assertEquals(r.toString(), Status.OK, r.getStatus());
      assertEquals(rec.length, r.bytesConsumed());
      assertEquals(3 + rec.length, src.position());
      assertEquals(kind, p[1].read());
    }
  }

  @Test
  public void wrongKey() throws Exception {
    try (Keystore other = new Keystore()) {
      other.add(KPSA_ID, new byte[32], null, IDB);
      SSLContext bad = M2mpskContexts.client(other, KPSA_ID);
      Side[] p = pair(bad, server);
      try {
        handshake(p[0], p[1]);
        fail("a wrong key must fail the handshake");
      } catch (SSLHandshakeException e) {
        assertTrue(e instanceof M2mpskHandshakeException);
        M2mpskHandshakeException m = (M2mpskHandshakeException) e;
        assertEquals(M2mpsk.E_FAILED, m.getCode());
        assertFalse(m.getReasonName(), m.getReasonName().equals("none"));
        assertFalse(e.getMessage().contains(hex(KEY)));
      }
      // The side that failed sends its alert, then is closed.
      for (Side s : p) {
        if (s.e.isInboundDone()) {
          if (s.e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) {
            SSLEngineResult r = s.e.wrap(EMPTY, ByteBuffer.allocate(20000));
            assertEquals(Status.CLOSED, r.getStatus());
            assertTrue(r.bytesProduced() > 0);
          }
          assertTrue(s.e.isOutboundDone());
        }
      }
    }
  }

  @Test
  public void unknownRecordIsAHandshakeFailure() throws Exception {
    SSLEngine b = server.createSSLEngine();
    b.setUseClientMode(false);
    try {
      b.unwrap(ByteBuffer.wrap("GET / HTTP/1.1\r\n\r\n".getBytes(StandardCharsets.US_ASCII)),
          ByteBuffer.allocate(20000));
      fail("plain HTTP on a PSK port");
    } catch (SSLHandshakeException expected) {
    }
    assertTrue(b.isInboundDone());
  }

  @Test
  public void dtlsEnginePair() throws Exception {
    SSLContext ds = M2mpskContexts.dtls(M2mpskParameters.server(IDB).keystore(ks));
    SSLContext dc = M2mpskContexts.dtls(M2mpskParameters.client(KPSA_ID).keystore(ks));
    SSLEngine a = dc.createSSLEngine();
    a.setUseClientMode(true);
    SSLEngine b = ds.createSSLEngine("127.0.0.1", 5684);
    b.setUseClientMode(false);
    // The JDK's way to set the MTU: SSLParameters' maximum packet size.
    assertEquals(1400, b.getSSLParameters().getMaximumPacketSize());
    final int mtu = 600;
    for (SSLEngine e : new SSLEngine[] {a, b}) {
      SSLParameters p = e.getSSLParameters();
      p.setMaximumPacketSize(mtu);
      e.setSSLParameters(p);
      assertEquals(mtu, e.getSSLParameters().getMaximumPacketSize());
    }
    SSLParameters tooSmall = a.getSSLParameters();
    tooSmall.setMaximumPacketSize(100);
    try {
      a.setSSLParameters(tooSmall);
      fail("an MTU below MTU_MIN");
    } catch (IllegalArgumentException expected) {
    }
    // Datagrams, one per wrap; each unwrap takes one whole datagram.
    List<ByteBuffer> toB = new ArrayList<>(), toA = new ArrayList<>();
    a.beginHandshake();
    b.beginHandshake();
    int finished = 0;
    for (int i = 0; i < 100 && finished < 2; i++) {
      for (Object[] d : new Object[][] {{a, toB}, {b, toA}}) {
        SSLEngine e = (SSLEngine) d[0];
        @SuppressWarnings("unchecked")
        List<ByteBuffer> q = (List<ByteBuffer>) d[1];
        while (e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) {
          ByteBuffer dg = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
          SSLEngineResult r = e.wrap(EMPTY, dg);
          dg.flip();
          assertTrue(dg.remaining() <= mtu);
          if (dg.hasRemaining()) q.add(dg);
          if (r.getHandshakeStatus() == HandshakeStatus.FINISHED) finished++;
        }
      }
      for (Object[] d : new Object[][] {{b, toB}, {a, toA}}) {
        SSLEngine e = (SSLEngine) d[0];
        @SuppressWarnings("unchecked")
        List<ByteBuffer> q = (List<ByteBuffer>) d[1];
        while (!q.isEmpty()) {
          ByteBuffer dg = q.remove(0);
          int len = dg.remaining();
          SSLEngineResult r = e.unwrap(dg, ByteBuffer.allocate(16384));
          assertEquals(len, r.bytesConsumed());
          if (r.getHandshakeStatus() == HandshakeStatus.FINISHED) finished++;
        }
      }
    }
    assertEquals(2, finished);
    assertEquals("DTLSv1.2", a.getSession().getProtocol());
    assertEquals(IDB, ((M2mpskSession) a.getSession()).peerId());
    // A large write goes out in datagrams within the MTU.
    ByteBuffer big = ByteBuffer.wrap(new byte[2000]);
    ByteBuffer dg = ByteBuffer.allocate(a.getSession().getPacketBufferSize());
    SSLEngineResult r = a.wrap(big, dg);
    assertTrue(r.bytesConsumed() > 0 && r.bytesConsumed() < 2000);
    assertTrue(dg.position() <= mtu);
    dg.flip();
    assertEquals(r.bytesConsumed(), b.unwrap(dg, ByteBuffer.allocate(16384)).bytesProduced());
    dg.clear();
    r = a.wrap(ByteBuffer.wrap("ping".getBytes(StandardCharsets.UTF_8)), dg);
    assertEquals(4, r.bytesConsumed());
    dg.flip();
    ByteBuffer got = ByteBuffer.allocate(16384);
    r = b.unwrap(dg, got);
    assertEquals(Status.OK, r.getStatus());
    got.flip();
    assertEquals("ping", StandardCharsets.UTF_8.decode(got).toString());
    // An empty datagram buffer is an underflow.
    r = b.unwrap(EMPTY, ByteBuffer.allocate(16384));
    assertEquals(Status.BUFFER_UNDERFLOW, r.getStatus());
  }

  @Test(timeout = 30000)
  public void dtlsRetransmitsOnWrapAfterTimeout() throws Exception {
    SSLContext ds = M2mpskContexts.dtls(M2mpskParameters.server(IDB).keystore(ks));
    SSLContext dc = M2mpskContexts.dtls(M2mpskParameters.client(KPSA_ID).keystore(ks));
    M2mpskSSLEngine a = (M2mpskSSLEngine) dc.createSSLEngine();
    a.setUseClientMode(true);
    SSLEngine b = ds.createSSLEngine("127.0.0.1", 5684);
    b.setUseClientMode(false);
    a.beginHandshake();
    ByteBuffer lost = ByteBuffer.allocate(a.getSession().getPacketBufferSize());
    a.wrap(EMPTY, lost); // the first ClientHello, lost on the way
    assertTrue(lost.position() > 0);
    assertEquals(HandshakeStatus.NEED_UNWRAP, a.getHandshakeStatus());
    long due = a.nextTimeoutMillis();
    assertTrue(due > 0);
    // Before the timer: a wrap retransmits nothing.
    SSLEngineResult r = a.wrap(EMPTY, ByteBuffer.allocate(20000));
    assertEquals(0, r.bytesProduced());
    while (System.nanoTime() / 1_000_000 < due) Thread.sleep(20);
    ByteBuffer again = ByteBuffer.allocate(a.getSession().getPacketBufferSize());
    r = a.wrap(EMPTY, again);
    assertTrue(r.bytesProduced() > 0);
    again.flip();
    // The retransmitted ClientHello starts the handshake at B.
    b.beginHandshake();
    r = b.unwrap(again, ByteBuffer.allocate(16384));
    assertEquals(HandshakeStatus.NEED_WRAP, r.getHandshakeStatus());
  }

  /** A core exception raised while handshaking that is not already a
   * handshake exception (here E_NOT_FOUND: Entity A names a record its
   * keystore lacks) becomes one, same code, reason and detail, the core's
   * as its cause. */
  @Test
  public void coreExceptionWhileHandshakingBecomesAHandshakeException() throws Exception {
    SSLEngine a = M2mpskContexts.client(ks, "no-such-kpsa-id@in.provider.com").createSSLEngine();
    a.setUseClientMode(true);
    try {
      a.wrap(EMPTY, ByteBuffer.allocate(20000));
      fail("an unknown KpsaID must fail the handshake");
    } catch (M2mpskHandshakeException e) {
      assertEquals(M2mpsk.E_NOT_FOUND, e.getCode());
      assertTrue(e.getCause() instanceof M2mpskException);
      M2mpskException cause = (M2mpskException) e.getCause();
      assertEquals(cause.getCode(), e.getCode());
      assertEquals(cause.getReason(), e.getReason());
      assertEquals(cause.getDetail(), e.getDetail());
      assertEquals(cause.getMessage(), e.getMessage());
    }
  }

  /** Outside a handshake the core's exceptions come out as they are: a
   * checked M2mpskException for a refused value, the unchecked
   * M2mpskUsageException (an IllegalArgumentException) for a caller's bug. */
  @Test
  public void coreExceptionsOutsideAHandshake() throws Exception {
    try {
      M2mpskParameters.server(IDB).key(KPSA_ID, new byte[3], null, IDB);
      fail("a 3-byte Kpsa");
    } catch (M2mpskException e) {
      assertEquals(M2mpsk.E_KEY_LENGTH, e.getCode());
    }
    try {
      M2mpskParameters.server(IDB).key(KPSA_ID, null, null, IDB);
      fail("a null Kpsa");
    } catch (IllegalArgumentException e) {
      assertTrue(e instanceof M2mpskUsageException);
      assertEquals(M2mpsk.E_INVALID, ((M2mpskUsageException) e).getCode());
    }
    Side[] p = pair(aeClient, server);
    handshake(p[0], p[1]);
    M2mpskSession sb = (M2mpskSession) p[1].e.getSession();
    try {
      sb.originatorCheck("not an originator");
      fail("a malformed originator");
    } catch (SSLException e) {
      assertFalse(e instanceof SSLHandshakeException);
      assertTrue(e instanceof M2mpskException);
      assertEquals(M2mpsk.E_IDA, ((M2mpskException) e).getCode());
    }
  }

  /** A keystore closed under a context: the engine cannot begin, an
   * IllegalStateException as SSLEngine has for a state it cannot work in,
   * with the core's M2mpskUsageException (E_INVALID) as its cause. */
  @Test
  public void closedKeystoreIsAnIllegalState() throws Exception {
    Keystore other = new Keystore();
    other.add(KPSA_ID, KEY, null, IDB);
    SSLEngine a = M2mpskContexts.client(other, KPSA_ID).createSSLEngine();
    a.setUseClientMode(true);
    other.close();
    try {
      a.wrap(EMPTY, ByteBuffer.allocate(20000));
      fail("a closed keystore");
    } catch (IllegalStateException e) {
      assertTrue(e.getCause() instanceof M2mpskUsageException);
      assertEquals(M2mpsk.E_INVALID, ((M2mpskUsageException) e.getCause()).getCode());
    }
  }

  @Test(timeout = 30000)
  public void handshakeTimeout() throws Exception {
    SSLContext c = M2mpskContexts.tls(
        M2mpskParameters.client(KPSA_ID).keystore(ks).handshakeTimeoutMs(50));
    SSLEngine a = c.createSSLEngine();
    a.setUseClientMode(true);
    a.wrap(EMPTY, ByteBuffer.allocate(20000)); // wrap begins the handshake
    assertEquals(HandshakeStatus.NEED_UNWRAP, a.getHandshakeStatus());
    Thread.sleep(200);
    try {
      a.wrap(EMPTY, ByteBuffer.allocate(20000));
      fail("the handshake timeout must fail the handshake");
    } catch (M2mpskHandshakeException e) {
      assertEquals(M2mpsk.E_FAILED, e.getCode());
      assertEquals("timeout", e.getReasonName());
    }
    assertTrue(a.isInboundDone());
  }

  @Test
  public void closeBeforeHandshake() throws Exception {
    SSLEngine a = client.createSSLEngine();
    a.setUseClientMode(true);
    a.closeOutbound();
    assertTrue(a.isOutboundDone());
    assertTrue(a.isInboundDone());
    SSLEngineResult r = a.wrap(ByteBuffer.wrap(new byte[5]), ByteBuffer.allocate(20000));
    assertEquals(Status.CLOSED, r.getStatus());
    assertEquals(0, r.bytesProduced());
    a.closeInbound(); // nothing had begun: no truncation to report
    try {
      a.beginHandshake();
      fail("a handshake on a closed engine");
    } catch (SSLException expected) {
    }
    SSLEngine b = client.createSSLEngine();
    b.setUseClientMode(true);
    b.beginHandshake();
    try {
      b.setUseClientMode(false);
      fail("a mode change once the handshake has begun");
    } catch (IllegalArgumentException expected) {
    }
  }

  // ---- blocking sockets ---------------------------------------------------------

  @Test(timeout = 60000)
  public void sslSocketEcho() throws Exception {
    ExecutorService pool = Executors.newSingleThreadExecutor();
    try (SSLServerSocket ss = (SSLServerSocket) server.getServerSocketFactory()
             .createServerSocket(0, 5, InetAddress.getLoopbackAddress())) {
      Future<String> peer = pool.submit(() -> {
        try (SSLSocket s = (SSLSocket) ss.accept()) {
          s.setSoTimeout(20000);
          BufferedReader in = new BufferedReader(
              new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
          String line = in.readLine();
          OutputStream out = s.getOutputStream();
          out.write(("echo " + line + "\n").getBytes(StandardCharsets.UTF_8));
          out.flush();
          return ((M2mpskSession) s.getSession()).peerId();
        }
      });
      try (SSLSocket s = (SSLSocket) aeClient.getSocketFactory()
               .createSocket(InetAddress.getLoopbackAddress(), ss.getLocalPort())) {
        s.setSoTimeout(20000);
        s.startHandshake();
        assertEquals(IDB, s.getSession().getPeerPrincipal().getName());
        assertEquals("TLSv1.2", s.getSession().getProtocol());
        s.getOutputStream().write("hello\n".getBytes(StandardCharsets.UTF_8));
        BufferedReader in = new BufferedReader(
            new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
        assertEquals("echo hello", in.readLine());
        assertNull(in.readLine()); // the server's close_notify: end of stream
      }
      assertEquals(AE_ID, peer.get(30, TimeUnit.SECONDS));
    } finally {
      pool.shutdownNow();
    }
  }

  @Test(timeout = 60000)
  public void sslSocketWrongKey() throws Exception {
    ExecutorService pool = Executors.newSingleThreadExecutor();
    try (Keystore other = new Keystore();
         SSLServerSocket ss = (SSLServerSocket) server.getServerSocketFactory()
             .createServerSocket(0, 5, InetAddress.getLoopbackAddress())) {
      other.add(KPSA_ID, new byte[32], null, IDB);
      Future<Exception> peer = pool.submit(() -> {
        try (SSLSocket s = (SSLSocket) ss.accept()) {
          s.setSoTimeout(20000);
          s.startHandshake();
          return null;
        } catch (Exception e) {
          return e;
        }
      });
      try (SSLSocket s = (SSLSocket) M2mpskContexts.client(other, KPSA_ID).getSocketFactory()
               .createSocket(InetAddress.getLoopbackAddress(), ss.getLocalPort())) {
        s.setSoTimeout(20000);
        s.startHandshake();
        fail("a wrong key must fail the handshake");
      } catch (SSLHandshakeException expected) {
      }
      assertTrue(peer.get(30, TimeUnit.SECONDS) instanceof SSLHandshakeException);
    } finally {
      pool.shutdownNow();
    }
  }

  // ---- openssl interop ----------------------------------------------------------

  static String openssl() {
    String o = System.getProperty("m2mpsk.openssl");
    return o == null || o.isEmpty() || o.endsWith("NOTFOUND") ? "openssl" : o;
  }

  static int freePort() throws IOException {
    try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return s.getLocalPort();
    }
  }

  static String drain(InputStream in) throws IOException {
    ByteArrayOutputStream b = new ByteArrayOutputStream();
    in.transferTo(b);
    return b.toString(StandardCharsets.UTF_8);
  }

  /** Our engine as Entity A (client) against openssl s_server -psk. */
  @Test(timeout = 60000)
  public void opensslServer() throws Exception {
    int port = freePort();
    Process p = new ProcessBuilder(openssl(), "s_server", "-accept", "127.0.0.1:" + port,
        "-nocert", "-psk", hex(KEY), "-psk_identity", KPSA_ID, "-tls1_2", "-cipher", "PSK",
        "-naccept", "1", "-rev").redirectErrorStream(true).start();
    try {
      Socket plain = null;
      for (int i = 0; i < 100 && plain == null; i++) {
        try {
          plain = new Socket(InetAddress.getLoopbackAddress(), port);
        } catch (IOException notYet) {
          Thread.sleep(100);
        }
      }
      assertNotNull("openssl s_server did not listen", plain);
      try (SSLSocket s = (SSLSocket) client.getSocketFactory()
               .createSocket(plain, "127.0.0.1", port, true)) {
        s.setSoTimeout(20000);
        s.startHandshake();
        assertEquals(IDB, ((M2mpskSession) s.getSession()).peerId());
        s.getOutputStream().write("hello\n".getBytes(StandardCharsets.UTF_8));
        BufferedReader in = new BufferedReader(
            new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
        assertEquals("olleh", in.readLine());
      }
    } finally {
      p.destroy();
      p.waitFor(10, TimeUnit.SECONDS);
    }
  }

  /** Our engine as Entity B (server) for openssl s_client -psk. */
  @Test(timeout = 60000)
  public void opensslClient() throws Exception {
    ExecutorService pool = Executors.newSingleThreadExecutor();
    try (SSLServerSocket ss = (SSLServerSocket) server.getServerSocketFactory()
             .createServerSocket(0, 5, InetAddress.getLoopbackAddress())) {
      Future<String> peer = pool.submit(() -> {
        try (SSLSocket s = (SSLSocket) ss.accept()) {
          s.setSoTimeout(20000);
          BufferedReader in = new BufferedReader(
              new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
          String line = in.readLine();
          s.getOutputStream().write(("echo " + line + "\n").getBytes(StandardCharsets.UTF_8));
          return ((M2mpskSession) s.getSession()).peerId();
        }
      });
      Process p = new ProcessBuilder(openssl(), "s_client", "-connect",
          "127.0.0.1:" + ss.getLocalPort(), "-psk", hex(KEY), "-psk_identity", KPSA_ID,
          "-tls1_2", "-cipher", "PSK", "-quiet").redirectErrorStream(true).start();
      try {
        p.getOutputStream().write("ping\n".getBytes(StandardCharsets.UTF_8));
        p.getOutputStream().flush();
        assertEquals("12-" + KPSA_ID, peer.get(30, TimeUnit.SECONDS));
        assertTrue(p.waitFor(30, TimeUnit.SECONDS));
        String out = drain(p.getInputStream());
        assertTrue(out, out.contains("echo ping"));
      } finally {
        p.destroy();
      }
    } finally {
      pool.shutdownNow();
    }
  }

  // ---- key sources (since 0.4): NEED_TASK --------------------------------

  /** A source answering after delayMs with the record (or null). */
  static KeySource delayed(long delayMs, boolean has, AtomicInteger calls) {
    return (id, sni) -> {
      calls.incrementAndGet();
      return CompletableFuture.supplyAsync(() -> has ? new KeyRecord(KEY.clone(), null, IDB) : null,
          CompletableFuture.delayedExecutor(delayMs, TimeUnit.MILLISECONDS));
    };
  }

  /** handshake() that also runs delegated tasks; true when a side asked
   * for one. */
  static boolean handshakeWithTasks(Side a, Side b) throws SSLException {
    a.e.beginHandshake();
    b.e.beginHandshake();
    boolean tasks = false;
    for (int i = 0; i < 100; i++) {
      boolean moved = false;
      for (Side[] d : new Side[][] {{a, b}, {b, a}}) {
        if (d[0].e.getHandshakeStatus() == HandshakeStatus.NEED_TASK) {
          tasks = true;
          for (Runnable t; (t = d[0].e.getDelegatedTask()) != null; ) t.run();
          moved = true;
        }
        while (d[0].e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) {
          d[0].wrap(EMPTY);
          moved = true;
        }
        if (d[1].out.hasRemaining()
            && d[0].e.getHandshakeStatus() != HandshakeStatus.NEED_TASK) {
          d[0].unwrapFrom(d[1]);
          moved = true;
        }
      }
      if (!moved) break;
    }
    return tasks;
  }

  @Test(timeout = 30000)
  public void engineWaitsForTheKeySourceInADelegatedTask() throws Exception {
    AtomicInteger calls = new AtomicInteger();
    try (Keystore empty = new Keystore()) {
      empty.setKeySource(delayed(50, true, calls), 8);
      SSLContext sctx = M2mpskContexts.server(empty, IDB);
      for (int round = 0; round < 2; round++) {
        Side[] p = pair(client, sctx);
        boolean tasks = handshakeWithTasks(p[0], p[1]);
        assertEquals(round == 0, tasks); // the second finds the record
        assertTrue(p[1].seen.contains(HandshakeStatus.FINISHED));
        assertEquals(KPSA_ID, ((M2mpskSession) p[1].e.getSession()).kpsaId());
      }
      assertEquals(1, calls.get());
      assertEquals(1, empty.count());
    }
  }

  @Test(timeout = 30000)
  public void engineWithAnAbsentRecordFailsLikeAWrongKey() throws Exception {
    AtomicInteger calls = new AtomicInteger();
    try (Keystore empty = new Keystore()) {
      empty.setKeySource(delayed(20, false, calls), 8);
      Side[] p = pair(client, M2mpskContexts.server(empty, IDB));
      try {
        handshakeWithTasks(p[0], p[1]);
        fail("the handshake completed without a record");
      } catch (SSLHandshakeException expected) {
        // one side or the other: the server's alert reads as a wrong key
      }
      assertEquals(1, calls.get());
      assertEquals(0, empty.count());
    }
  }

  @Test(timeout = 30000)
  public void engineKeySourceThatNeverAnswersTimesOut() throws Exception {
    try (Keystore empty = new Keystore()) {
      empty.setKeySource((id, sni) -> new CompletableFuture<>(), 8);
      SSLContext sctx = M2mpskContexts.tls(
          M2mpskParameters.server(IDB).keystore(empty).handshakeTimeoutMs(200));
      Side[] p = pair(client, sctx);
      long t0 = System.nanoTime();
      try {
        handshakeWithTasks(p[0], p[1]);
        // the task returned at the deadline: the next call fails it
        p[1].wrap(EMPTY);
        fail("no timeout");
      } catch (SSLHandshakeException expected) {
        assertTrue(expected.getMessage(), expected instanceof M2mpskHandshakeException);
        assertEquals(M2mpsk.REASON_TIMEOUT, ((M2mpskHandshakeException) expected).getReason());
      }
      long ms = (System.nanoTime() - t0) / 1_000_000;
      assertTrue(ms + " ms", ms >= 150 && ms < 10000);
    }
  }

  @Test(timeout = 60000)
  public void sslSocketsWithAnAsyncKeySource() throws Exception {
    AtomicInteger calls = new AtomicInteger();
    ExecutorService pool = Executors.newFixedThreadPool(4);
    try (Keystore empty = new Keystore()) {
      empty.setKeySource(delayed(50, true, calls), 8);
      SSLContext sctx = M2mpskContexts.server(empty, IDB);
      try (SSLServerSocket ss = (SSLServerSocket) sctx.getServerSocketFactory()
               .createServerSocket(0, 8, InetAddress.getLoopbackAddress())) {
        List<Future<String>> served = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
          served.add(pool.submit(() -> {
            try (SSLSocket s = (SSLSocket) ss.accept()) {
              s.setSoTimeout(20000);
              BufferedReader in = new BufferedReader(
                  new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8));
              String line = in.readLine();
              s.getOutputStream().write(("echo " + line + "\n").getBytes(StandardCharsets.UTF_8));
              s.getOutputStream().flush();
              return line;
            }
          }));
        }
        List<Future<String>> clients = new ArrayList<>();
        ExecutorService cpool = Executors.newFixedThreadPool(4);
        try {
          for (int i = 0; i < 4; i++) {
            final int n = i;
            clients.add(cpool.submit(() -> {
              try (SSLSocket s = (SSLSocket) client.getSocketFactory()
                       .createSocket(InetAddress.getLoopbackAddress(), ss.getLocalPort())) {
                s.setSoTimeout(20000);
                s.getOutputStream().write(("c" + n + "\n").getBytes(StandardCharsets.UTF_8));
                return new BufferedReader(
                    new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8)).readLine();
              }
            }));
          }
          for (int i = 0; i < 4; i++) {
            assertEquals("echo c" + i, clients.get(i).get(30, TimeUnit.SECONDS));
          }
        } finally {
          cpool.shutdownNow();
        }
        for (Future<String> f : served) assertNotNull(f.get(30, TimeUnit.SECONDS));
      }
      assertEquals(1, calls.get()); // four clients, one KpsaID, one lookup
    } finally {
      pool.shutdownNow();
    }
  }
}
