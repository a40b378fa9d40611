import java.io.IOException;
import java.io.InputStream;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLException;
import javax.servlet.http.HttpServlet;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import org.eclipse.jetty.server.HttpConfiguration;
import org.eclipse.jetty.server.HttpConnectionFactory;
import org.eclipse.jetty.server.SecureRequestCustomizer;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.server.SslConnectionFactory;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;
import org.eclipse.jetty.util.ssl.SslContextFactory;
import org.m2mpsk.*;
import org.m2mpsk.jsse.*;

/**
 * The drop-in path: a oneM2M CSE as a servlet, served by Jetty 9.4 over
 * TLS-PSK through the m2mpsk {@link SSLContext}, and an AE calling it with
 * {@link HttpsURLConnection}, both in this process on 127.0.0.1. Jetty and
 * the servlet know nothing of PSK: the context is the only change.
 *
 * <pre>
 * J=/usr/share/java
 * CP=$J/m2mpsk.jar:$J/m2mpsk-jsse.jar:$J/jetty9-server.jar:$J/jetty9-http.jar:$J/jetty9-io.jar:\
 * $J/jetty9-util.jar:$J/jetty9-servlet.jar:$J/jetty9-security.jar:$J/servlet-api.jar
 * javac -cp $CP JettyCse.java &amp;&amp; java -cp $CP:. JettyCse
 * </pre>
 *
 * (Debian: libm2mpsk-java and libjetty9-java; from a build tree, the two
 * m2mpsk jars of build/lib and -Djava.library.path=build/lib.) Entity B, the CSE,
 * checks each request's X-M2M-Origin against the identity its session is
 * bound to and answers 4106 (ORIGINATOR_NOT_AUTHENTICATED) when they differ.
 * Entity A sends one honest RETRIEVE and one with a forged originator. Exit
 * status: 0 when the honest request is answered 2000 and the forged one
 * 4106, 1 otherwise.
 */
public class JettyCse {
  static final String KPSA_ID = "jetty-example@m2m.example.com";
  static final String IDB = "//m2m.example.com/cse-in"; // the CSE: Entity B
  static final String IDA = "//m2m.example.com/cse-in/Cjetty-ae"; // the AE: Entity A

  /** Entity B's servlet: an ordinary HttpServlet. */
  public static final class Cse extends HttpServlet {
    private static final long serialVersionUID = 1L;

    @Override
    protected void service(HttpServletRequest req, HttpServletResponse resp) throws IOException {
      // Jetty hands the TLS session over as a request attribute; with the
      // m2mpsk context it is an M2mpskSession, bound to Entity A's identity.
      M2mpskSession s = (M2mpskSession) req.getAttribute(
          "org.eclipse.jetty.servlet.request.ssl_session");
      String origin = req.getHeader("X-M2M-Origin");
      int rsc;
      try {
        rsc = s.originatorCheck(origin); // 0: accepted; 4106 or 4107
      } catch (SSLException e) { // not an originator at all
        rsc = 4000;
      }
      System.err.println("Entity B: request from " + origin + ", bound to " + s.peerId()
          + " over " + s.getProtocol() + " " + s.getCipherSuite()
          + ": originatorCheck() = " + rsc);
      resp.setHeader("X-M2M-RI", req.getHeader("X-M2M-RI"));
      resp.setHeader("X-M2M-RSC", rsc == 0 ? "2000" : Integer.toString(rsc));
      resp.setStatus(rsc == 0 ? 200 : rsc == 4000 ? 400 : 403);
      if (rsc == 0) {
        resp.setContentType("application/json");
        resp.getWriter().print("{\"m2m:cb\":{\"csi\":\"/cse-in\",\"bound-to\":\"" + s.peerId()
            + "\"}}");
      }
    }
  }

  /** Jetty serving the servlet over HTTPS, with the SSLContext it is given. */
  static Server serve(SSLContext tlsPsk) throws Exception {
    Server server = new Server();
    SslContextFactory.Server tls = new SslContextFactory.Server();
    tls.setSslContext(tlsPsk); // the m2mpsk line of Entity B's Jetty setup
    HttpConfiguration https = new HttpConfiguration();
    https.addCustomizer(new SecureRequestCustomizer()); // the ssl_session attribute
    ServerConnector connector = new ServerConnector(server,
        new SslConnectionFactory(tls, "http/1.1"), new HttpConnectionFactory(https));
    connector.setHost("127.0.0.1"); // loopback, any free port
    server.addConnector(connector);
    ServletContextHandler context = new ServletContextHandler();
    context.addServlet(new ServletHolder(new Cse()), "/cse-in");
    server.setHandler(context);
    server.start();
    return server;
  }

  /** Entity A: a oneM2M RETRIEVE of the CSEBase; returns X-M2M-RSC. */
  static String retrieve(SSLContext tlsPsk, int port, String origin) throws Exception {
    HttpsURLConnection c = (HttpsURLConnection)
        new URL("https://127.0.0.1:" + port + "/cse-in").openConnection();
    c.setSSLSocketFactory(tlsPsk.getSocketFactory()); // the m2mpsk line of Entity A
    c.setConnectTimeout(10_000);
    c.setReadTimeout(10_000);
    c.setRequestProperty("X-M2M-Origin", origin);
    c.setRequestProperty("X-M2M-RI", "req-" + origin.substring(origin.length() - 6));
    c.setRequestProperty("X-M2M-RVI", "3");
    try {
      c.connect(); // the TLS-PSK handshake
      M2mpskSession s = (M2mpskSession) c.getSSLSession().orElseThrow();
      System.err.println("Entity A: bound to " + s.peerId() + " over " + s.getProtocol()
          + " " + s.getCipherSuite());
      int status = c.getResponseCode();
      InputStream body = status < 400 ? c.getInputStream() : c.getErrorStream();
      String rsc = c.getHeaderField("X-M2M-RSC");
      System.err.println("Entity A: X-M2M-Origin " + origin + ": HTTP " + status
          + ", X-M2M-RSC " + rsc + " "
          + (body == null ? "" : new String(body.readAllBytes(), StandardCharsets.UTF_8)));
      return rsc;
    } finally {
      c.disconnect();
    }
  }

  /**
   * One record with a fresh random Kpsa, in the key file format that
   * {@code m2mpsk keygen} writes (mode 0600: the library refuses any other).
   */
  static Path writeKeyFile(Path dir) throws IOException {
    byte[] kpsa = new byte[32];
    new SecureRandom().nextBytes(kpsa);
    StringBuilder hex = new StringBuilder();
    for (byte b : kpsa) hex.append(String.format("%02x", b));
    Path keys = Files.createFile(dir.resolve("keys"),
        PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
    Files.writeString(keys, "kpsa-id=" + KPSA_ID + " kpsa=hex:" + hex + " idb=" + IDB
        + " ida=" + IDA + "\n");
    return keys;
  }

  public static void main(String[] args) throws Exception {
    Path dir = Files.createTempDirectory("jetty-cse");
    String honest;
    String forged;
    try (Keystore ks = new Keystore()) {
      ks.loadFile(writeKeyFile(dir).toString());
      // The m2mpsk lines: one SSLContext for each entity, from the keystore.
      SSLContext b = M2mpskContexts.server(ks, IDB);
      SSLContext a = M2mpskContexts.client(ks, KPSA_ID);
      Server server = serve(b);
      try {
        int port = ((ServerConnector) server.getConnectors()[0]).getLocalPort();
        honest = retrieve(a, port, IDA);
        forged = retrieve(a, port, "//m2m.example.com/cse-in/Cforged");
      } finally {
        server.stop();
      }
    } finally {
      Files.deleteIfExists(dir.resolve("keys"));
      Files.delete(dir);
    }
    boolean ok = "2000".equals(honest) && "4106".equals(forged);
    System.err.println("JettyCse: " + (ok ? "OK" : "FAILED") + " (honest " + honest
        + ", forged " + forged + ")");
    System.exit(ok ? 0 : 1);
  }
}
