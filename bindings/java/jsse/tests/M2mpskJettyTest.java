import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.IOException;
import java.io.InputStream;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLSession;
import javax.servlet.http.HttpServlet;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;
import org.eclipse.jetty.server.HttpConfiguration;
import org.eclipse.jetty.server.HttpConnectionFactory;
import org.eclipse.jetty.server.SecureRequestCustomizer;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.server.SslConnectionFactory;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;
import org.eclipse.jetty.util.ssl.SslContextFactory;
import org.junit.AfterClass;
import org.junit.BeforeClass;
import org.junit.Test;
import org.m2mpsk.jsse.M2mpskContexts;
import org.m2mpsk.jsse.M2mpskSession;

/**
 * Jetty 9.4 from Debian serving a oneM2M CSE over TLS-PSK through the
 * m2mpsk SSLContext, and HttpsURLConnection as Entity A.
 */
public class M2mpskJettyTest {
  static final String AE_KPSA_ID = "ae1@onem2m.com";
  static final String CRED_KPSA_ID = "cred@onem2m.com";
  static final String IDB = "//m2m.example.com/cse-in";
  static final String AE_ID = "/cse-in/Cae1";
  static final byte[] KEY = new byte[32];
  static Keystore ks;
  static Server server;
  static int port;

  static {
    for (int i = 0; i < KEY.length; i++) KEY[i] = (byte) (0x40 + i);
  }

  /**
   * The CSE: every request is checked against the identity its TLS-PSK
   * session is bound to; a forged X-M2M-Origin gets 4106.
   */
  public static final class CseServlet extends HttpServlet {
    private static final long serialVersionUID = 1L;

    @Override
    protected void service(HttpServletRequest req, HttpServletResponse resp) throws IOException {
      M2mpskSession s = (M2mpskSession) req.getAttribute(
          "org.eclipse.jetty.servlet.request.ssl_session");
      int verdict;
      try {
        verdict = s.originatorCheck(req.getHeader("X-M2M-Origin"));
      } catch (SSLException e) { // a malformed originator
        verdict = 4000;
      }
      resp.setHeader("X-M2M-RI", req.getHeader("X-M2M-RI"));
      resp.setHeader("X-M2M-RSC", verdict == 0 ? "2000" : Integer.toString(verdict));
      resp.setContentType("text/plain");
      resp.setStatus(verdict == 0 ? 200 : verdict == 4000 ? 400 : 403);
      resp.getWriter().print("bound to " + s.peerId() + " over " + s.getProtocol() + " "
          + s.getCipherSuite() + " (" + req.getAttribute("javax.servlet.request.cipher_suite")
          + ")");
    }
  }

  /** What it takes to serve a servlet over PSK with Jetty: these statements. */
  static Server serve(SSLContext psk, HttpServlet servlet) throws Exception {
    Server server = new Server();
    SslContextFactory.Server tls = new SslContextFactory.Server();
    tls.setSslContext(psk);
    HttpConfiguration https = new HttpConfiguration();
    https.addCustomizer(new SecureRequestCustomizer());
    ServerConnector connector = new ServerConnector(server,
        new SslConnectionFactory(tls, "http/1.1"), new HttpConnectionFactory(https));
    connector.setHost("127.0.0.1"); // a test detail: loopback, any port
    server.addConnector(connector);
    ServletContextHandler context = new ServletContextHandler();
    context.addServlet(new ServletHolder(servlet), "/*");
    server.setHandler(context);
    server.start();
    return server;
  }

  @BeforeClass
  public static void start() throws Exception {
    M2mpsk.load();
    ks = new Keystore();
    ks.add(AE_KPSA_ID, KEY, AE_ID, IDB);
    ks.add(CRED_KPSA_ID, KEY, null, IDB);
    server = serve(M2mpskContexts.server(ks, IDB), new CseServlet());
    port = ((ServerConnector) server.getConnectors()[0]).getLocalPort();
  }

  @AfterClass
  public static void stop() throws Exception {
    if (server != null) server.stop();
    if (ks != null) ks.close();
  }

  static final class Answer {
    int status;
    String rsc;
    String body;
  }

  /** Entity A: a oneM2M RETRIEVE with HttpsURLConnection over m2mpsk. */
  static Answer get(SSLContext a, String origin) throws IOException {
    return get(a, origin, port);
  }

  static Answer get(SSLContext a, String origin, int port) throws IOException {
    HttpsURLConnection c = (HttpsURLConnection) new URL("https://127.0.0.1:" + port + "/cse-in")
        .openConnection();
    c.setSSLSocketFactory(a.getSocketFactory());
    // No certificate to check a host name against: the server proved it
    // holds Kpsa, and is bound to the IdB of Entity A's own record.
    c.setHostnameVerifier(M2mpskContexts.hostnameVerifier());
    c.setConnectTimeout(20000);
    c.setReadTimeout(20000);
    c.setRequestProperty("X-M2M-Origin", origin);
    c.setRequestProperty("X-M2M-RI", "req-1");
    c.setRequestProperty("X-M2M-RVI", "3");
    Answer r = new Answer();
    r.status = c.getResponseCode();
    r.rsc = c.getHeaderField("X-M2M-RSC");
    InputStream in = r.status < 400 ? c.getInputStream() : c.getErrorStream();
    r.body = new String(in.readAllBytes(), StandardCharsets.UTF_8);
    assertTrue(c.getCipherSuite(), c.getCipherSuite().contains("_PSK_"));
    c.disconnect();
    return r;
  }

  @Test(timeout = 60000)
  public void boundIdentityAccepted() throws Exception {
    Answer r = get(M2mpskContexts.client(ks, AE_KPSA_ID), "Cae1");
    assertEquals(r.body, 200, r.status);
    assertEquals("2000", r.rsc);
    assertTrue(r.body, r.body.startsWith("bound to " + AE_ID + " over TLSv1.2 TLS_"));
  }

  @Test(timeout = 60000)
  public void forgedOriginatorRejected() throws Exception {
    Answer r = get(M2mpskContexts.client(ks, AE_KPSA_ID), "Cforged");
    assertEquals(403, r.status);
    assertEquals("4106", r.rsc);
    // A Credential-ID binding is not an AE-ID either.
    r = get(M2mpskContexts.client(ks, CRED_KPSA_ID), "Cae1");
    assertEquals("4106", r.rsc);
    assertTrue(r.body, r.body.startsWith("bound to 12-" + CRED_KPSA_ID));
    // A malformed originator is an error, not a verdict.
    r = get(M2mpskContexts.client(ks, AE_KPSA_ID), "no-such-form");
    assertEquals(400, r.status);
  }

  @Test(timeout = 60000)
  public void wrongKeyRefused() throws Exception {
    try (Keystore other = new Keystore()) {
      other.add(AE_KPSA_ID, new byte[32], AE_ID, IDB);
      get(M2mpskContexts.client(other, AE_KPSA_ID), "Cae1");
      fail("a wrong key must not get an answer");
    } catch (javax.net.ssl.SSLHandshakeException expected) {
    }
  }

  /**
   * With HttpsURLConnection's default verifier the JDK hands the host check
   * to the socket's endpoint identification, which a PSK session satisfies
   * by the key itself: no verifier needs setting. A verifier that is set is
   * consulted, and refuses what it does not know.
   */
  @Test(timeout = 60000)
  public void hostnameVerifiers() throws Exception {
    SSLContext a = M2mpskContexts.client(ks, AE_KPSA_ID);
    HttpsURLConnection c = (HttpsURLConnection) new URL("https://127.0.0.1:" + port + "/cse-in")
        .openConnection();
    c.setSSLSocketFactory(a.getSocketFactory());
    c.setRequestProperty("X-M2M-Origin", "Cae1");
    c.setConnectTimeout(20000);
    c.setReadTimeout(20000);
    assertEquals(200, c.getResponseCode());
    c.disconnect();
    c = (HttpsURLConnection) new URL("https://127.0.0.1:" + port + "/cse-in").openConnection();
    c.setSSLSocketFactory(a.getSocketFactory());
    c.setHostnameVerifier((host, session) -> false);
    c.setConnectTimeout(20000);
    c.setReadTimeout(20000);
    try {
      c.getResponseCode();
      fail("a verifier that refuses");
    } catch (IOException expected) {
      assertTrue(expected.getMessage(), expected.getMessage().contains("hostname"));
    }
    // M2mpskContexts.hostnameVerifier() refuses a session that is not m2mpsk's.
    assertFalse(M2mpskContexts.hostnameVerifier().verify("127.0.0.1", null));
  }

  @Test(timeout = 120000)
  public void concurrentClients() throws Exception {
    SSLContext a = M2mpskContexts.client(ks, AE_KPSA_ID);
    java.util.concurrent.ExecutorService pool =
        java.util.concurrent.Executors.newFixedThreadPool(8);
    try {
      java.util.List<java.util.concurrent.Future<Integer>> done = new java.util.ArrayList<>();
      for (int i = 0; i < 40; i++) {
        String origin = i % 4 == 0 ? "Cforged" : "Cae1";
        done.add(pool.submit(() -> Integer.parseInt(get(a, origin).rsc)));
      }
      for (int i = 0; i < done.size(); i++) {
        assertEquals(i % 4 == 0 ? 4106 : 2000,
            (int) done.get(i).get(60, java.util.concurrent.TimeUnit.SECONDS));
      }
    } finally {
      pool.shutdownNow();
    }
  }

  /** Plain HTTP on the PSK port: Jetty gets the engine's handshake failure
   * and closes the connection (after an alert), without answering. */
  @Test(timeout = 60000)
  public void plainHttpIsRefused() throws Exception {
    try (java.net.Socket s = new java.net.Socket("127.0.0.1", port)) {
      s.setSoTimeout(20000);
      s.getOutputStream().write(
          "GET /cse-in HTTP/1.1\r\nHost: x\r\n\r\n".getBytes(StandardCharsets.US_ASCII));
      byte[] got = s.getInputStream().readAllBytes();
      assertFalse(new String(got, StandardCharsets.ISO_8859_1).contains("HTTP/1.1"));
      // Whatever came back is TLS: an alert record, if anything.
      if (got.length > 0) assertEquals(21, got[0]);
    }
    assertEquals(200, get(M2mpskContexts.client(ks, AE_KPSA_ID), "Cae1").status);
  }

  @Test(timeout = 60000)
  public void manyRequestsInTurn() throws Exception {
    SSLContext a = M2mpskContexts.client(ks, AE_KPSA_ID);
    for (int i = 0; i < 20; i++) assertEquals(200, get(a, "Cae1").status);
  }

  /** A CSE whose keystore starts empty: the key comes from an asynchronous
   * source (50 ms), while Jetty runs the engine's delegated task. */
  @Test(timeout = 60000)
  public void keysFromAnAsyncSource() throws Exception {
    java.util.concurrent.atomic.AtomicInteger calls = new java.util.concurrent.atomic.AtomicInteger();
    try (Keystore empty = new Keystore()) {
      empty.setKeySource((id, sni) -> {
        calls.incrementAndGet();
        return java.util.concurrent.CompletableFuture.supplyAsync(
            () -> AE_KPSA_ID.equals(id) ? new org.m2mpsk.KeyRecord(KEY.clone(), AE_ID, IDB) : null,
            java.util.concurrent.CompletableFuture.delayedExecutor(
                50, java.util.concurrent.TimeUnit.MILLISECONDS));
      }, 16);
      Server cse = serve(M2mpskContexts.server(empty, IDB), new CseServlet());
      try {
        int p = ((ServerConnector) cse.getConnectors()[0]).getLocalPort();
        SSLContext a = M2mpskContexts.client(ks, AE_KPSA_ID);
        for (int i = 0; i < 3; i++) {
          Answer r = get(a, "Cae1", p);
          assertEquals(r.body, 200, r.status);
          assertTrue(r.body, r.body.startsWith("bound to " + AE_ID));
        }
        assertEquals(1, calls.get()); // the record is held after the first
        // A KpsaID the source does not have: the handshake fails.
        try {
          get(M2mpskContexts.client(ks, CRED_KPSA_ID), "Cae1", p);
          fail("a handshake without a record");
        } catch (IOException expected) {
          // SSLHandshakeException, or the connection closed
        }
        assertEquals(2, calls.get());
      } finally {
        cse.stop();
      }
    }
  }
}
