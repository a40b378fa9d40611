import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.DatagramChannel;
import java.nio.channels.Selector;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLException;
import org.junit.AfterClass;
import org.junit.BeforeClass;
import org.junit.Test;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;
import org.m2mpsk.M2mpskHandshakeException;
import org.m2mpsk.jsse.M2mpskContexts;
import org.m2mpsk.jsse.M2mpskDtlsListener;
import org.m2mpsk.jsse.M2mpskDtlsListener.Verdict;
import org.m2mpsk.jsse.M2mpskParameters;
import org.m2mpsk.jsse.M2mpskSession;

/** The DTLS server's stateless cookie exchange (M2mpskDtlsListener), in
 * memory, and 20 peers on one channel (the DtlsEcho example's server). */
public class M2mpskDtlsListenerTest {
  static final String KPSA_ID = "test@onem2m.com";
  static final String IDB = "//m2m.example.com/cse-in";
  static final ByteBuffer EMPTY = ByteBuffer.allocate(0);
  static Keystore ks;
  static SSLContext server;
  static SSLContext client;
  static InetSocketAddress peerA;
  static InetSocketAddress peerB;

  @BeforeClass
  public static void setUp() throws Exception {
    M2mpsk.load();
    ks = new Keystore();
    byte[] key = new byte[32];
    for (int i = 0; i < key.length; i++) key[i] = (byte) (i * 7);
    ks.add(KPSA_ID, key, null, IDB);
    server = M2mpskContexts.dtls(M2mpskParameters.server(IDB).keystore(ks));
    client = M2mpskContexts.dtls(M2mpskParameters.client(KPSA_ID).keystore(ks));
    InetAddress lo = InetAddress.getByName("127.0.0.1");
    peerA = new InetSocketAddress(lo, 40001);
    peerB = new InetSocketAddress(lo, 40002);
  }

  @AfterClass
  public static void tearDown() {
    ks.close();
  }

  static SSLEngine newClient(SSLContext c) throws SSLException {
    SSLEngine e = c.createSSLEngine();
    e.setUseClientMode(true);
    e.beginHandshake();
    return e;
  }

  /** The next datagram an engine sends (empty when it has none). */
  static ByteBuffer wrap(SSLEngine e) throws SSLException {
    ByteBuffer d = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
    e.wrap(EMPTY, d);
    d.flip();
    return d;
  }

  static ByteBuffer reply() {
    return ByteBuffer.allocate(M2mpskDtlsListener.MAX_REPLY);
  }

  static byte[] bytes(ByteBuffer b) {
    byte[] out = new byte[b.remaining()];
    b.duplicate().get(out);
    return out;
  }

  /** The handshake message type of a datagram's first record. */
  static int handshakeType(ByteBuffer d) {
    assertEquals("a handshake record", 22, d.get(d.position()));
    return d.get(d.position() + 13) & 0xff;
  }

  /** message_seq of a datagram's first handshake message. */
  static int messageSeq(ByteBuffer d) {
    int p = d.position() + 13 + 4;
    return ((d.get(p) & 0xff) << 8) | (d.get(p + 1) & 0xff);
  }

  /** The client's ClientHello carrying the cookie listener answered for
   * peer with; asserts the exchange. */
  static ByteBuffer cookieHello(SSLEngine c, M2mpskDtlsListener listener, SocketAddress peer)
      throws SSLException {
    ByteBuffer ch1 = wrap(c);
    ByteBuffer hvr = reply();
    assertEquals(Verdict.REPLY, listener.accept(peer, ch1, hvr));
    hvr.flip();
    c.unwrap(hvr, ByteBuffer.allocate(16384));
    assertEquals(HandshakeStatus.NEED_WRAP, c.getHandshakeStatus());
    return wrap(c);
  }

  /** Runs a client and server engine to the end of their handshake, from
   * the server's first flight (sent); returns how many reported FINISHED. */
  static int finish(SSLEngine c, SSLEngine s, ByteBuffer sent) throws SSLException {
    List<ByteBuffer> toS = new ArrayList<>(), toC = new ArrayList<>();
    toC.add(sent);
    int finished = 0;
    for (int i = 0; i < 50 && finished < 2; i++) {
      for (Object[] d : new Object[][] {{s, toS, toC}, {c, toC, toS}}) {
        SSLEngine e = (SSLEngine) d[0];
        @SuppressWarnings("unchecked")
        List<ByteBuffer> in = (List<ByteBuffer>) d[1];
        @SuppressWarnings("unchecked")
        List<ByteBuffer> out = (List<ByteBuffer>) d[2];
        while (!in.isEmpty()) {
          SSLEngineResult r = e.unwrap(in.remove(0), ByteBuffer.allocate(16384));
          if (r.getHandshakeStatus() == HandshakeStatus.FINISHED) finished++;
        }
        while (e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) {
          ByteBuffer dg = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
          SSLEngineResult r = e.wrap(EMPTY, dg);
          dg.flip();
          if (dg.hasRemaining()) out.add(dg);
          if (r.getHandshakeStatus() == HandshakeStatus.FINISHED) finished++;
        }
      }
    }
    return finished;
  }

  /** A ClientHello without a cookie: REPLY with a HelloVerifyRequest, the
   * datagram untouched, and nothing kept: the same ClientHello gets the
   * same answer, and another listener of the context accepts the cookie. */
  @Test
  public void noCookieIsAnsweredStatelessly() throws Exception {
    M2mpskDtlsListener listener = M2mpskContexts.dtlsListener(server);
    assertTrue("the default engine choice has the cookie exchange", listener.cookies());
    SSLEngine c = newClient(client);
    ByteBuffer ch1 = wrap(c);
    assertEquals(1, handshakeType(ch1)); // ClientHello
    int pos = ch1.position(), lim = ch1.limit();
    ByteBuffer hvr = ByteBuffer.allocate(3 + M2mpskDtlsListener.MAX_REPLY);
    hvr.position(3); // written at the position
    assertEquals(Verdict.REPLY, listener.accept(peerA, ch1, hvr));
    assertEquals(pos, ch1.position());
    assertEquals(lim, ch1.limit());
    assertTrue(hvr.position() > 3 + 13);
    hvr.flip().position(3);
    assertEquals(3, handshakeType(hvr)); // HelloVerifyRequest
    ByteBuffer again = reply();
    assertEquals(Verdict.REPLY, listener.accept(peerA, ch1, again));
    again.flip();
    assertArrayEquals(bytes(hvr), bytes(again));
    c.unwrap(hvr, ByteBuffer.allocate(16384));
    ByteBuffer ch2 = wrap(c);
    M2mpskDtlsListener other = M2mpskContexts.dtlsListener(server);
    assertEquals(Verdict.ACCEPT, other.accept(peerA, ch2, reply()));
  }

  /** A valid cookie: ACCEPT, and the engine made for the address continues
   * the handshake the HelloVerifyRequest began (ClientHello message_seq 1,
   * answered with a ServerHello, not a second HelloVerifyRequest). */
  @Test
  public void validCookieIsAcceptedAndTheHandshakeCompletes() throws Exception {
    M2mpskDtlsListener listener = M2mpskContexts.dtlsListener(server);
    SSLEngine c = newClient(client);
    ByteBuffer ch2 = cookieHello(c, listener, peerA);
    assertEquals(1, handshakeType(ch2));
    assertEquals(1, messageSeq(ch2));
    ByteBuffer rep = reply();
    assertEquals(Verdict.ACCEPT, listener.accept(peerA, ch2, rep));
    assertEquals(0, rep.position());
    SSLEngine s = listener.newEngine(peerA);
    assertFalse(s.getUseClientMode());
    assertEquals("127.0.0.1", s.getPeerHost());
    assertEquals(peerA.getPort(), s.getPeerPort());
    s.beginHandshake();
    int len = ch2.remaining();
    assertEquals(len, s.unwrap(ch2, ByteBuffer.allocate(16384)).bytesConsumed());
    ByteBuffer flight = wrap(s);
    assertEquals("a ServerHello, not another HelloVerifyRequest", 2, handshakeType(flight));
    assertEquals(2, finish(c, s, flight));
    assertEquals(IDB, ((M2mpskSession) c.getSession()).peerId());
    assertEquals("12-" + KPSA_ID, ((M2mpskSession) s.getSession()).peerId());
  }

  /** A cookie is bound to the address it was sent to: from another port or
   * another IP it is answered again (REPLY), never accepted. */
  @Test
  public void cookieFromAnotherAddressIsNotAccepted() throws Exception {
    M2mpskDtlsListener listener = M2mpskContexts.dtlsListener(server);
    SSLEngine c = newClient(client);
    ByteBuffer ch2 = cookieHello(c, listener, peerA);
    InetSocketAddress otherIp = new InetSocketAddress(InetAddress.getByName("127.0.0.2"),
        peerA.getPort());
    for (SocketAddress other : new SocketAddress[] {peerB, otherIp}) {
      ByteBuffer rep = reply();
      assertEquals(other.toString(), Verdict.REPLY, listener.accept(other, ch2, rep));
      rep.flip();
      assertEquals(3, handshakeType(rep));
    }
    assertEquals(Verdict.ACCEPT, listener.accept(peerA, ch2, reply()));
    // Nor does an engine made for another address: its association asks
    // for a cookie of its own with a HelloVerifyRequest of message_seq 0,
    // which the client, past its own ClientHello of message_seq 1, ignores
    // (the handshake would time out): why the engine must be newEngine's.
    SSLEngine s = listener.newEngine(peerB);
    s.beginHandshake();
    s.unwrap(ch2, ByteBuffer.allocate(16384));
    ByteBuffer hvr = wrap(s);
    assertEquals(3, handshakeType(hvr));
    assertEquals(0, messageSeq(hvr));
    c.unwrap(hvr, ByteBuffer.allocate(16384));
    assertEquals(0, wrap(c).remaining());
    assertEquals(HandshakeStatus.NEED_UNWRAP, c.getHandshakeStatus());
  }

  /** Whatever is not a ClientHello, or is too long, is dropped, the reply
   * untouched. */
  @Test
  public void garbageIsDropped() throws Exception {
    M2mpskDtlsListener listener = M2mpskContexts.dtlsListener(server);
    byte[] hello = bytes(wrap(newClient(client)));
    byte[] notHandshake = hello.clone();
    notHandshake[0] = 23; // application data
    byte[] serverHello = hello.clone();
    serverHello[13] = 2;
    byte[] truncated = Arrays.copyOf(hello, 30); // a ClientHello's first bytes
    byte[] huge = Arrays.copyOf(hello, M2mpskDtlsListener.MAX_DATAGRAM + 1);
    byte[] noise = new byte[200];
    new java.util.Random(17).nextBytes(noise);
    noise[0] = 22;
    noise[13] = 1; // looks like a ClientHello in its first bytes only
    for (byte[] d : new byte[][] {new byte[0], new byte[] {22}, notHandshake, serverHello,
        truncated, huge, noise}) {
      ByteBuffer rep = reply();
      assertEquals(Verdict.DROP, listener.accept(peerA, ByteBuffer.wrap(d), rep));
      assertEquals(0, rep.position());
    }
    assertEquals(Verdict.REPLY, listener.accept(peerA, ByteBuffer.wrap(hello), reply()));
  }

  /** A caller's bugs: a peer without an IP address, a reply buffer too
   * small or read-only, an m2mpsk TLS context. */
  @Test
  public void callersBugs() throws Exception {
    M2mpskDtlsListener listener = M2mpskContexts.dtlsListener(server);
    ByteBuffer ch1 = wrap(newClient(client));
    Object[][] bad = {
      {InetSocketAddress.createUnresolved("example.com", 5684), reply()},
      {null, reply()},
      {peerA, ByteBuffer.allocate(M2mpskDtlsListener.MAX_REPLY - 1)},
      {peerA, reply().asReadOnlyBuffer()},
    };
    for (Object[] b : bad) {
      try {
        listener.accept((SocketAddress) b[0], ch1, (ByteBuffer) b[1]);
        fail("accepted " + Arrays.toString(b));
      } catch (IllegalArgumentException expected) {
      }
    }
    try {
      M2mpskContexts.dtlsListener(M2mpskContexts.server(ks, IDB));
      fail("a TLS context");
    } catch (IllegalArgumentException expected) {
    }
    try {
      M2mpskContexts.dtlsListener(SSLContext.getDefault());
      fail("the JDK's context");
    } catch (IllegalArgumentException expected) {
    }
  }

  /** A config naming BoringSSL has no cookie exchange: cookies() is false,
   * every ClientHello is accepted at once (and anything else still
   * dropped), and the handshake then runs without a cookie. */
  @Test
  public void boringSslConfigAcceptsWithoutCookies() throws Exception {
    SSLContext boring;
    try {
      boring = M2mpskContexts.dtls(M2mpskParameters.server(IDB).keystore(ks)
          .engine(M2mpsk.ENGINE_BORINGSSL));
    } catch (java.security.GeneralSecurityException e) {
      org.junit.Assume.assumeTrue("this build has no BoringSSL engine", false);
      return;
    }
    M2mpskDtlsListener listener = M2mpskContexts.dtlsListener(boring);
    assertFalse(listener.cookies());
    assertTrue(listener.toString().contains("no cookies"));
    SSLEngine c = newClient(client);
    ByteBuffer ch1 = wrap(c);
    assertEquals(0, messageSeq(ch1));
    ByteBuffer rep = reply();
    assertEquals(Verdict.ACCEPT, listener.accept(peerA, ch1, rep));
    assertEquals(0, rep.position());
    assertEquals(Verdict.DROP, listener.accept(peerA, ByteBuffer.wrap(new byte[] {23, 1}), rep));
    SSLEngine s = listener.newEngine(peerA);
    s.beginHandshake();
    s.unwrap(ch1, ByteBuffer.allocate(16384));
    ByteBuffer flight = wrap(s);
    assertEquals(2, handshakeType(flight)); // ServerHello: no HelloVerifyRequest
    assertEquals(2, finish(c, s, flight));
    assertEquals("12-" + KPSA_ID, ((M2mpskSession) s.getSession()).peerId());
  }

  /** An engine whose association cannot be made (an unknown KpsaID, a
   * closed keystore) is closed in both directions once it has thrown. */
  @Test
  public void engineWithoutAssociationIsClosed() throws Exception {
    Keystore closed = new Keystore();
    closed.add(KPSA_ID, new byte[32], null, IDB);
    SSLContext closedCtx = M2mpskContexts.dtls(M2mpskParameters.client(KPSA_ID).keystore(closed));
    closed.close();
    SSLContext[] contexts = {
      M2mpskContexts.dtls(M2mpskParameters.client("no-such@in.provider.com").keystore(ks)),
      M2mpskContexts.client(ks, "no-such@in.provider.com"),
      closedCtx,
    };
    for (SSLContext ctx : contexts) {
      SSLEngine e = ctx.createSSLEngine();
      e.setUseClientMode(true);
      assertFalse(e.isOutboundDone());
      try {
        e.wrap(EMPTY, ByteBuffer.allocate(20000));
        fail("no association to begin with");
      } catch (M2mpskHandshakeException expected) {
        assertEquals(M2mpsk.E_NOT_FOUND, expected.getCode());
      } catch (IllegalStateException expected) { // the closed keystore
        assertNotNull(expected.getCause());
      }
      assertTrue(e.isInboundDone());
      assertTrue(e.isOutboundDone());
      assertEquals(HandshakeStatus.NOT_HANDSHAKING, e.getHandshakeStatus());
      SSLEngineResult r = e.wrap(EMPTY, ByteBuffer.allocate(20000));
      assertEquals(SSLEngineResult.Status.CLOSED, r.getStatus());
      assertEquals(0, r.bytesProduced());
      r = e.unwrap(ByteBuffer.wrap(new byte[20]), ByteBuffer.allocate(20000));
      assertEquals(SSLEngineResult.Status.CLOSED, r.getStatus());
      assertEquals(0, r.bytesConsumed());
      try {
        e.beginHandshake();
        fail("a handshake on a closed engine");
      } catch (SSLException expected) {
      }
    }
  }

  /** A client that restarts on the same address (its old association
   * lost, not closed) gets a new engine once its new ClientHello carries a
   * cookie; the old one goes (DtlsEcho's server). */
  @Test(timeout = 60000)
  public void clientRestartedOnTheSameAddress() throws Exception {
    InetSocketAddress loopback = new InetSocketAddress(InetAddress.getLoopbackAddress(), 0);
    AtomicBoolean stop = new AtomicBoolean();
    try (Selector sb = Selector.open(); DatagramChannel cb = DtlsEcho.open(loopback, sb);
         Selector sa = Selector.open(); DatagramChannel ca = DtlsEcho.open(loopback, sa)) {
      DtlsEcho.Server srv = new DtlsEcho.Server(server, cb, sb);
      Thread t = new Thread(() -> {
        try {
          srv.serve(DtlsEcho.now() + 30000, stop);
        } catch (Exception e) {
          throw new RuntimeException(e);
        }
      });
      t.start();
      SocketAddress at = cb.getLocalAddress();
      try {
        for (int run = 0; run < 2; run++) {
          SSLEngine c = client.createSSLEngine();
          c.setUseClientMode(true);
          DtlsEcho.handshake(c, ca, sa, at, null);
          ByteBuffer out = ByteBuffer.allocate(c.getSession().getPacketBufferSize());
          DtlsEcho.send(c, ca, at, out,
              ByteBuffer.wrap(("run " + run).getBytes(StandardCharsets.UTF_8)));
          assertEquals("echo: run " + run, DtlsEcho.receiveText(c, ca, sa));
          // No close_notify: the client "crashes" and starts again.
        }
      } finally {
        stop.set(true);
        t.join(10000);
      }
      assertEquals(1, srv.replaced);
      assertEquals(1, srv.engines.size());
      assertEquals(2, srv.cookiesSent);
      assertEquals("12-" + KPSA_ID, srv.bound.get(ca.getLocalAddress()));
    }
  }

  /** 20 peers at once on one DatagramChannel: each established, bound to
   * its own identity and echoed (DtlsEcho's server, with its listener). */
  @Test(timeout = 120000)
  public void twentyPeersOnOneChannel() throws Exception {
    assertEquals(0, DtlsEcho.selfTest(20));
  }
}
