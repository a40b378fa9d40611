import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.DatagramChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLEngineResult.Status;
import org.m2mpsk.jsse.M2mpskContexts;
import org.m2mpsk.jsse.M2mpskParameters;
import org.m2mpsk.jsse.M2mpskSSLEngine;
import org.m2mpsk.jsse.M2mpskSession;

/**
 * DTLS 1.2 PSK over a {@link DatagramChannel} through the m2mpsk
 * {@link SSLEngine}: the loop the JDK's DTLS engine asks for (wrap while
 * NEED_WRAP, one datagram per wrap; unwrap each datagram received; on a
 * receive timeout, wrap again to retransmit), with no m2mpsk call in it.
 *
 * <pre>
 * java -Djava.library.path=build/lib \
 *     -cp build/lib/m2mpsk.jar:build/lib/m2mpsk-jsse.jar:. DtlsEcho --self-test
 * </pre>
 *
 * --self-test runs Entity B (an echo server) and Entity A on 127.0.0.1 with
 * a fresh random key, and exits 0 when A gets its message back from B over
 * the association, with both sides bound to the expected identities.
 */
public class DtlsEcho {
  static final String KPSA_ID = "dtls-echo@m2m.example.com";
  static final String IDB = "//m2m.example.com/cse-in";
  static final long TIMEOUT_MS = 30_000;
  static final ByteBuffer EMPTY = ByteBuffer.allocate(0);

  static long now() {
    return System.nanoTime() / 1_000_000;
  }

  /**
   * Waits for one datagram into buf until the engine's next timer (or at
   * most 1 s); returns its sender, or null on timeout.
   */
  static SocketAddress receive(DatagramChannel ch, Selector sel, SSLEngine e, ByteBuffer buf)
      throws Exception {
    long due = ((M2mpskSSLEngine) e).nextTimeoutMillis();
    long wait = due < 0 ? 1000 : Math.max(1, Math.min(1000, due - now()));
    buf.clear();
    if (sel.select(wait) == 0) return null;
    sel.selectedKeys().clear();
    SocketAddress from = ch.receive(buf);
    buf.flip();
    return from;
  }

  static void send(SSLEngine e, DatagramChannel ch, SocketAddress peer, ByteBuffer out,
      ByteBuffer data) throws Exception {
    out.clear();
    SSLEngineResult r = e.wrap(data, out);
    out.flip();
    if (out.hasRemaining()) ch.send(out, peer);
    if (r.getStatus() == Status.BUFFER_OVERFLOW) throw new IllegalStateException("overflow");
  }

  /** Runs the handshake; first, when not null, is a datagram already received. */
  static void handshake(SSLEngine e, DatagramChannel ch, Selector sel, SocketAddress peer,
      ByteBuffer first) throws Exception {
    ByteBuffer in = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
    ByteBuffer out = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
    ByteBuffer app = ByteBuffer.allocate(e.getSession().getApplicationBufferSize());
    long deadline = now() + TIMEOUT_MS;
    e.beginHandshake();
    if (first != null && e.unwrap(first, app).getHandshakeStatus() == HandshakeStatus.FINISHED) {
      return;
    }
    while (now() < deadline) {
      HandshakeStatus hs = e.getHandshakeStatus();
      if (hs == HandshakeStatus.NEED_WRAP) {
        out.clear();
        SSLEngineResult r = e.wrap(EMPTY, out);
        out.flip();
        if (out.hasRemaining()) ch.send(out, peer);
        if (r.getHandshakeStatus() == HandshakeStatus.FINISHED) return;
      } else if (hs == HandshakeStatus.NEED_UNWRAP) {
        if (receive(ch, sel, e, in) == null) {
          send(e, ch, peer, out, EMPTY); // timed out: retransmit if due
          continue;
        }
        if (e.unwrap(in, app).getHandshakeStatus() == HandshakeStatus.FINISHED) return;
      } else {
        return;
      }
    }
    throw new IllegalStateException("handshake: no answer in time");
  }

  /** Receives one message of application data (null once the peer closed). */
  static String receiveText(SSLEngine e, DatagramChannel ch, Selector sel) throws Exception {
    ByteBuffer in = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
    ByteBuffer app = ByteBuffer.allocate(e.getSession().getApplicationBufferSize());
    long deadline = now() + TIMEOUT_MS;
    while (now() < deadline) {
      if (receive(ch, sel, e, in) == null) continue;
      SSLEngineResult r = e.unwrap(in, app);
      if (r.getStatus() == Status.CLOSED) return null;
      if (r.bytesProduced() > 0) {
        app.flip();
        return StandardCharsets.UTF_8.decode(app).toString();
      }
    }
    throw new IllegalStateException("no data in time");
  }

  static DatagramChannel open(SocketAddress bind, Selector sel) throws Exception {
    DatagramChannel ch = DatagramChannel.open();
    ch.bind(bind);
    ch.configureBlocking(false);
    ch.register(sel, SelectionKey.OP_READ);
    return ch;
  }

  /** Entity B: echoes one message to one peer, then waits for its close. */
  static String serve(SSLContext ctx, DatagramChannel ch, Selector sel) throws Exception {
    ByteBuffer first = ByteBuffer.allocate(17000);
    SocketAddress peer = null;
    for (long end = now() + TIMEOUT_MS; peer == null && now() < end; ) {
      if (sel.select(1000) > 0) {
        sel.selectedKeys().clear();
        peer = ch.receive(first);
      }
    }
    if (peer == null) throw new IllegalStateException("no client");
    first.flip();
    InetSocketAddress p = (InetSocketAddress) peer;
    SSLEngine e = ctx.createSSLEngine(p.getAddress().getHostAddress(), p.getPort());
    e.setUseClientMode(false);
    handshake(e, ch, sel, peer, first);
    String bound = ((M2mpskSession) e.getSession()).peerId();
    String text = receiveText(e, ch, sel);
    ByteBuffer out = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
    send(e, ch, peer, out, ByteBuffer.wrap(("echo: " + text).getBytes(StandardCharsets.UTF_8)));
    if (receiveText(e, ch, sel) != null) throw new IllegalStateException("expected close_notify");
    while (e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) send(e, ch, peer, out, EMPTY);
    return bound;
  }

  static int selfTest() throws Exception {
    byte[] key = new byte[32];
    new SecureRandom().nextBytes(key);
    SSLContext b = M2mpskContexts.dtls(M2mpskParameters.server(IDB).key(KPSA_ID, key, null, IDB));
    SSLContext a = M2mpskContexts.dtls(M2mpskParameters.client(KPSA_ID).key(KPSA_ID, key, null, IDB));
    java.util.Arrays.fill(key, (byte) 0); // each keystore holds its own copy
    InetSocketAddress loopback = new InetSocketAddress(InetAddress.getLoopbackAddress(), 0);
    try (Selector sb = Selector.open(); Selector sa = Selector.open();
         DatagramChannel cb = open(loopback, sb); DatagramChannel ca = open(loopback, sa)) {
      final String[] serverSaw = new String[1];
      final Exception[] serverFailed = new Exception[1];
      Thread server = new Thread(() -> {
        try {
          serverSaw[0] = serve(b, cb, sb);
        } catch (Exception ex) {
          serverFailed[0] = ex;
        }
      });
      server.start();
      SocketAddress peer = cb.getLocalAddress();
      SSLEngine e = a.createSSLEngine();
      e.setUseClientMode(true);
      handshake(e, ca, sa, peer, null);
      M2mpskSession s = (M2mpskSession) e.getSession();
      System.out.println("A: bound to " + s.peerId() + " over " + s.getProtocol() + " "
          + s.getCipherSuite());
      ByteBuffer out = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
      send(e, ca, peer, out, ByteBuffer.wrap("hello over DTLS".getBytes(StandardCharsets.UTF_8)));
      String reply = receiveText(e, ca, sa);
      System.out.println("A: received \"" + reply + "\"");
      e.closeOutbound();
      while (e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) send(e, ca, peer, out, EMPTY);
      server.join(TIMEOUT_MS);
      if (serverFailed[0] != null) throw serverFailed[0];
      System.out.println("B: the client was bound to " + serverSaw[0]);
      boolean ok = "echo: hello over DTLS".equals(reply) && IDB.equals(s.peerId())
          && ("12-" + KPSA_ID).equals(serverSaw[0]) && "DTLSv1.2".equals(s.getProtocol());
      return ok ? 0 : 1;
    }
  }

  public static void main(String[] argv) throws Exception {
    if (argv.length != 1 || !argv[0].equals("--self-test")) {
      System.err.println("usage: DtlsEcho --self-test");
      System.exit(2);
    }
    System.exit(selfTest());
  }
}
