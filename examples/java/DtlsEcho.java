import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.DatagramChannel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLEngineResult.Status;
import javax.net.ssl.SSLException;
import org.m2mpsk.Keystore;
import org.m2mpsk.jsse.M2mpskContexts;
import org.m2mpsk.jsse.M2mpskDtlsListener;
import org.m2mpsk.jsse.M2mpskParameters;
import org.m2mpsk.jsse.M2mpskSSLEngine;
import org.m2mpsk.jsse.M2mpskSession;

/**
 * DTLS 1.2 PSK over a {@link DatagramChannel} through the m2mpsk
 * {@link SSLEngine}: the loop the JDK's DTLS engine asks for (wrap while
 * NEED_WRAP, one datagram per wrap; unwrap each datagram received; when a
 * timer is due, wrap again to retransmit), with no m2mpsk call in it but
 * the cookie exchange. The server serves many peers on one channel: a map
 * from address to engine, and {@link M2mpskDtlsListener} answering new
 * addresses without keeping anything until they prove they own them.
 *
 * <pre>
 * java -Djava.library.path=build/lib \
 *     -cp build/lib/m2mpsk.jar:build/lib/m2mpsk-jsse.jar:. DtlsEcho --self-test
 * </pre>
 *
 * --self-test runs Entity B (an echo server on 127.0.0.1) and 20 Entities A
 * at once, each with its own record and a fresh random key, and exits 0
 * when every A gets its message back from B and B bound every A's address
 * to that A's identity.
 */
public class DtlsEcho {
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

  /**
   * Entity B: an echo server for many peers on one channel. A peer without
   * an engine is first answered statelessly by the cookie exchange
   * ({@link M2mpskDtlsListener}); only a ClientHello carrying a valid
   * cookie for its address gets an engine, which is then driven by the
   * datagrams it receives and by its own timer (a wrap once
   * {@code nextTimeoutMillis()} has passed retransmits its last flight).
   * Each message received is sent back prefixed with "echo: ". What a
   * peer can make it hold is bounded: at most {@link #MAX_PEERS} engines
   * (a valid cookie beyond that is dropped, and the client retransmits
   * later), and a peer silent for {@link #IDLE_MS} is sent close_notify and
   * forgotten; the handshake itself is bounded by the engine's timeout.
   */
  static final class Server {
    static final int MAX_PEERS = 1024;
    static final long IDLE_MS = 300_000;
    final DatagramChannel ch;
    final Selector sel;
    final M2mpskDtlsListener listener;
    final Map<SocketAddress, SSLEngine> engines = new HashMap<>();
    /** Each peer's identity, as bound by its handshake. */
    final Map<SocketAddress, String> bound = new ConcurrentHashMap<>();
    /** The random of the ClientHello that opened each engine. */
    private final Map<SocketAddress, byte[]> hellos = new HashMap<>();
    /** When each peer was last heard from (monotonic ms). */
    private final Map<SocketAddress, Long> lastSeen = new HashMap<>();
    int cookiesSent;
    int dropped;
    int replaced;
    private final ByteBuffer in = ByteBuffer.allocate(M2mpskDtlsListener.MAX_DATAGRAM);
    private final ByteBuffer out = ByteBuffer.allocate(17_000);
    private final ByteBuffer app = ByteBuffer.allocate(17_000);
    private final ByteBuffer reply = ByteBuffer.allocate(M2mpskDtlsListener.MAX_REPLY);

    Server(SSLContext ctx, DatagramChannel ch, Selector sel) throws Exception {
      this.ch = ch;
      this.sel = sel;
      this.listener = M2mpskContexts.dtlsListener(ctx);
    }

    /** Serves until the deadline (monotonic ms) or until stop is set. */
    void serve(long deadline, AtomicBoolean stop) throws Exception {
      while (!stop.get() && now() < deadline) {
        in.clear();
        if (sel.select(Math.max(1, Math.min(100, nextTimer() - now()))) > 0) {
          sel.selectedKeys().clear();
          SocketAddress from;
          while ((from = ch.receive(in)) != null) {
            in.flip();
            datagram(from);
            in.clear();
          }
        }
        for (SocketAddress peer : new ArrayList<>(engines.keySet())) {
          SSLEngine e = engines.get(peer);
          if (now() - lastSeen.get(peer) > IDLE_MS) { // silent: close_notify, then forget it
            e.closeOutbound();
            flush(peer, e, false);
            forget(peer);
            continue;
          }
          long due = ((M2mpskSSLEngine) e).nextTimeoutMillis();
          if (due < 0 || now() < due) continue;
          try {
            flush(peer, e, true); // retransmits the last flight
          } catch (SSLException ex) { // e.g. the handshake timed out
            failed(peer, e, ex);
          }
        }
      }
    }

    /** The earliest timer of all engines, or 100 ms from now. */
    private long nextTimer() {
      long t = now() + 100;
      for (SSLEngine e : engines.values()) {
        long due = ((M2mpskSSLEngine) e).nextTimeoutMillis();
        if (due >= 0) t = Math.min(t, due);
      }
      return t;
    }

    private void datagram(SocketAddress from) throws Exception {
      SSLEngine e = engines.get(from);
      if (e == null || restarted(from, e)) {
        reply.clear();
        switch (listener.accept(from, in, reply)) {
          case REPLY: // a HelloVerifyRequest; nothing is kept
            reply.flip();
            ch.send(reply, from);
            cookiesSent++;
            return;
          case DROP:
            dropped++;
            return;
          case ACCEPT: // a valid cookie: this datagram opens the handshake
            if (e == null && engines.size() >= MAX_PEERS) { // full: the client will retransmit
              dropped++;
              return;
            }
            if (e != null) { // the restarted client's old engine goes
              replaced++;
              bound.remove(from);
            }
            e = listener.newEngine(from);
            e.beginHandshake();
            engines.put(from, e);
            hellos.put(from, random(in));
            break;
        }
      }
      lastSeen.put(from, now());
      try {
        app.clear();
        SSLEngineResult r = e.unwrap(in, app);
        if (r.bytesProduced() > 0) {
          app.flip();
          String text = StandardCharsets.UTF_8.decode(app).toString();
          send(e, ch, from, out, ByteBuffer.wrap(("echo: " + text).getBytes(StandardCharsets.UTF_8)));
        }
        flush(from, e, false);
        if (isEstablished(e)) bound.putIfAbsent(from, ((M2mpskSession) e.getSession()).peerId());
        if (r.getStatus() == Status.CLOSED) forget(from);
      } catch (SSLException ex) {
        failed(from, e, ex);
      }
    }

    /** A failed handshake or association: its alert, if any, goes out, and
     * the engine goes. */
    private void failed(SocketAddress peer, SSLEngine e, SSLException ex) throws Exception {
      System.err.println("B: " + peer + ": " + ex.getMessage());
      flush(peer, e, false);
      forget(peer);
    }

    /** Sends what the engine has to send; with retransmit, wraps once even
     * when it does not ask to (its timer is due). */
    private void flush(SocketAddress peer, SSLEngine e, boolean retransmit) throws Exception {
      if (retransmit) send(e, ch, peer, out, EMPTY);
      while (e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) send(e, ch, peer, out, EMPTY);
      if (e.isOutboundDone() && e.isInboundDone()) forget(peer);
    }

    private void forget(SocketAddress peer) {
      engines.remove(peer);
      hellos.remove(peer);
      lastSeen.remove(peer);
    }

    /**
     * Whether a datagram for an established peer is a new ClientHello
     * (epoch 0, another random than the one that opened its engine): the
     * client restarted on the same address (RFC 6347 4.2.8). It goes to
     * the listener: only with a valid cookie does it replace the engine.
     */
    private boolean restarted(SocketAddress from, SSLEngine e) {
      int p = in.position();
      return isEstablished(e) && in.remaining() > 59 && in.get(p) == 22 && in.get(p + 13) == 1
          && in.get(p + 3) == 0 && in.get(p + 4) == 0
          && !Arrays.equals(random(in), hellos.get(from));
    }

    /** A ClientHello's random: 32 bytes after the record header (13), the
     * handshake header (12) and client_version (2). */
    private static byte[] random(ByteBuffer hello) {
      byte[] r = new byte[32];
      ByteBuffer d = hello.duplicate();
      d.position(d.position() + 27);
      d.get(r);
      return r;
    }

    private static boolean isEstablished(SSLEngine e) {
      return e.getHandshakeStatus() == HandshakeStatus.NOT_HANDSHAKING
          && ((M2mpskSession) e.getSession()).peerId() != null;
    }
  }

  /**
   * Entity A: one client on its own channel. Handshakes with the server,
   * sends text, returns the echo, then closes; fails unless the server was
   * bound to IDB.
   */
  static String client(SSLContext ctx, SocketAddress server, String text, DatagramChannel ch,
      Selector sel) throws Exception {
    SSLEngine e = ctx.createSSLEngine();
    e.setUseClientMode(true);
    handshake(e, ch, sel, server, null);
    M2mpskSession s = (M2mpskSession) e.getSession();
    if (!IDB.equals(s.peerId()) || !"DTLSv1.2".equals(s.getProtocol())) {
      throw new IllegalStateException("A: bound to " + s.peerId() + " over " + s.getProtocol());
    }
    ByteBuffer out = ByteBuffer.allocate(e.getSession().getPacketBufferSize());
    send(e, ch, server, out, ByteBuffer.wrap(text.getBytes(StandardCharsets.UTF_8)));
    String reply = receiveText(e, ch, sel);
    e.closeOutbound();
    while (e.getHandshakeStatus() == HandshakeStatus.NEED_WRAP) send(e, ch, server, out, EMPTY);
    return reply;
  }

  /**
   * Runs Entity B on one channel and `clients` Entities A at once, each on
   * its own channel with its own record (KpsaID dtls-echo-N@m2m.example.com,
   * a fresh random key). Returns 0 when every client got its own message
   * back and B bound every client's address to that client's identity.
   */
  static int selfTest(int clients) throws Exception {
    SecureRandom random = new SecureRandom();
    Keystore serverKeys = new Keystore();
    SSLContext[] a = new SSLContext[clients];
    for (int i = 0; i < clients; i++) {
      byte[] key = new byte[32];
      random.nextBytes(key);
      serverKeys.add(kpsaId(i), key, null, IDB);
      a[i] = M2mpskContexts.dtls(M2mpskParameters.client(kpsaId(i)).key(kpsaId(i), key, null, IDB));
      Arrays.fill(key, (byte) 0); // each keystore holds its own copy
    }
    SSLContext b = M2mpskContexts.dtls(M2mpskParameters.server(IDB).keystore(serverKeys));
    InetSocketAddress loopback = new InetSocketAddress(InetAddress.getLoopbackAddress(), 0);
    ExecutorService pool = Executors.newFixedThreadPool(clients);
    AtomicBoolean stop = new AtomicBoolean();
    try (Selector sb = Selector.open(); DatagramChannel cb = open(loopback, sb)) {
      Server server = new Server(b, cb, sb);
      SocketAddress at = cb.getLocalAddress();
      List<Future<String>> replies = new ArrayList<>();
      SocketAddress[] from = new SocketAddress[clients];
      for (int i = 0; i < clients; i++) {
        final int n = i;
        replies.add(pool.submit(() -> {
          try (Selector sa = Selector.open(); DatagramChannel ca = open(loopback, sa)) {
            from[n] = ca.getLocalAddress();
            return client(a[n], at, "hello from " + n, ca, sa);
          }
        }));
      }
      Future<?> done = pool.submit(() -> {
        for (Future<String> f : replies) f.get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
        return null;
      });
      Thread stopper = new Thread(() -> {
        try {
          done.get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
          Thread.sleep(200); // let B read the last close_notify
        } catch (Exception ignored) {
          // a client failed: B stops at its deadline
        } finally {
          stop.set(true);
        }
      });
      stopper.start();
      server.serve(now() + TIMEOUT_MS, stop);
      stopper.join();
      int ok = 0;
      for (int i = 0; i < clients; i++) {
        String reply = replies.get(i).get(1, TimeUnit.SECONDS);
        String saw = server.bound.get(from[i]);
        boolean good = ("echo: hello from " + i).equals(reply) && ("12-" + kpsaId(i)).equals(saw);
        if (good) ok++;
        else System.out.println("client " + i + ": received \"" + reply + "\", B bound " + saw);
      }
      System.out.println("B: " + clients + " clients on one channel, " + ok + " echoed and bound"
          + " to their own identity; " + server.cookiesSent + " cookies sent, "
          + server.engines.size() + " engines left");
      return ok == clients && server.cookiesSent >= clients ? 0 : 1;
    } finally {
      stop.set(true);
      pool.shutdownNow();
      serverKeys.close();
    }
  }

  static String kpsaId(int i) {
    return "dtls-echo-" + i + "@m2m.example.com";
  }

  public static void main(String[] argv) throws Exception {
    if (argv.length != 1 || !argv[0].equals("--self-test")) {
      System.err.println("usage: DtlsEcho --self-test");
      System.exit(2);
    }
    System.exit(selfTest(20));
  }
}
