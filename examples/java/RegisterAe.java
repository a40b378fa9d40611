import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.UUID;
import org.m2mpsk.Association;
import org.m2mpsk.Config;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;
import org.m2mpsk.M2mpskException;
import org.m2mpsk.M2mpskHandshakeException;

/**
 * Entity A registers an AE with its Registrar CSE over an m2mpsk security
 * association: a TLS 1.2 PSK handshake on a TCP socket, then a oneM2M HTTP
 * binding request (TS-0009) creating an AE (ty=2), and the response printed.
 *
 * <pre>
 * java -Djava.library.path=build/lib -cp build/lib/m2mpsk.jar:. RegisterAe \
 *     HOST PORT --kpsa-id ID (--keys FILE | --key-hex HEX --idb IDB)
 *     [--retrieve] [--timeout SECONDS]
 * </pre>
 *
 * --retrieve sends a RETRIEVE of the CSEBase (GET) instead of the CREATE:
 * openssl s_server -www, a stand-in CSE, answers only GET. Exit status: 0
 * when a response came back, 1 when the association failed, 2 on usage or
 * I/O errors, 3 when the CSE closed without answering.
 */
public class RegisterAe {

  static long now() {
    return System.nanoTime() / 1_000_000;
  }

  static void flush(Association a, OutputStream out) throws Exception {
    for (byte[] b = a.drain(); b.length > 0; b = a.drain()) out.write(b);
    out.flush();
  }

  /** Waits up to ms for bytes from the CSE; null on timeout, empty at EOF. */
  static byte[] receive(Socket s, InputStream in, long ms) throws Exception {
    byte[] buf = new byte[16384];
    s.setSoTimeout((int) Math.max(1, ms));
    try {
      int n = in.read(buf);
      return n < 0 ? new byte[0] : Arrays.copyOf(buf, n);
    } catch (SocketTimeoutException e) {
      return null;
    }
  }

  static byte[] request(String path, String host, String origin, String name, boolean retrieve) {
    StringBuilder h = new StringBuilder()
        .append(retrieve ? "GET " : "POST ").append(path).append(" HTTP/1.1\r\n")
        .append("Host: ").append(host).append("\r\n")
        .append("X-M2M-Origin: ").append(origin).append("\r\n")
        .append("X-M2M-RI: req-").append(UUID.randomUUID()).append("\r\n")
        .append("X-M2M-RVI: 3\r\n")
        .append("Accept: application/json\r\n")
        .append("Connection: close\r\n");
    if (retrieve) return h.append("\r\n").toString().getBytes(StandardCharsets.UTF_8);
    byte[] body = ("{\"m2m:ae\": {\"rn\": \"" + name + "\", \"api\": \"N" + name
        + "\", \"rr\": true, \"srv\": [\"3\"]}}").getBytes(StandardCharsets.UTF_8);
    h.append("Content-Type: application/json;ty=2\r\n")
        .append("Content-Length: ").append(body.length).append("\r\n\r\n");
    byte[] head = h.toString().getBytes(StandardCharsets.UTF_8);
    byte[] all = Arrays.copyOf(head, head.length + body.length);
    System.arraycopy(body, 0, all, head.length, body.length);
    return all;
  }

  static int run(String[] argv) throws Exception {
    String host = null, kpsaId = null, keys = null, keyHex = null, idbArg = null;
    String origin = "Cregister-ae-example", name = "register-ae-example";
    int port = -1;
    boolean retrieve = false;
    double timeout = 10;
    for (int i = 0; i < argv.length; i++) {
      String a = argv[i];
      switch (a) {
        case "--kpsa-id": kpsaId = argv[++i]; break;
        case "--keys": keys = argv[++i]; break;
        case "--key-hex": keyHex = argv[++i]; break;
        case "--idb": idbArg = argv[++i]; break;
        case "--origin": origin = argv[++i]; break;
        case "--name": name = argv[++i]; break;
        case "--timeout": timeout = Double.parseDouble(argv[++i]); break;
        case "--retrieve": retrieve = true; break;
        default:
          if (host == null) host = a;
          else if (port < 0) port = Integer.parseInt(a);
          else throw new IllegalArgumentException("unexpected " + a);
      }
    }
    if (host == null || port < 0 || kpsaId == null || (keys == null) == (keyHex == null)
        || (keyHex != null && idbArg == null)) {
      System.err.println("usage: RegisterAe HOST PORT --kpsa-id ID "
          + "(--keys FILE | --key-hex HEX --idb IDB) [--retrieve] [--timeout S]");
      return 2;
    }
    long deadline = now() + (long) (timeout * 1000);
    try (Keystore ks = new Keystore(); Config cfg = new Config()) {
      if (keys != null) {
        ks.loadFile(keys);
      } else {
        byte[] key = new byte[keyHex.length() / 2];
        for (int i = 0; i < key.length; i++)
          key[i] = (byte) Integer.parseInt(keyHex.substring(2 * i, 2 * i + 2), 16);
        ks.add(kpsaId, key, null, idbArg);
        Arrays.fill(key, (byte) 0); // the keystore holds its own copy
      }
      String idb = ks.lookup(kpsaId).getIdb();
      try (Socket s = new Socket(host, port);
          Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, kpsaId)) {
        InputStream in = s.getInputStream();
        OutputStream out = s.getOutputStream();
        a.start(now(), System.currentTimeMillis() / 1000);
        try {
          while (true) {
            flush(a, out);
            if (a.state() != M2mpsk.STATE_HANDSHAKING) break;
            if (now() >= deadline) throw new IllegalStateException("handshake: no answer in time");
            long t = a.nextTimeout();
            byte[] got = receive(s, in, Math.min(deadline, t < 0 ? deadline : t) - now());
            if (got == null) a.handleTimeout(now());
            else if (got.length == 0) throw new IllegalStateException("handshake: the peer closed");
            else a.feed(got, now());
          }
        } catch (M2mpskHandshakeException e) {
          flush(a, out); // the alert telling the CSE why
          System.err.println("association failed: " + e.getMessage());
          return 1;
        }
        if (a.state() != M2mpsk.STATE_ESTABLISHED) {
          System.err.println("association failed: " + M2mpsk.reasonName(a.failure())
              + " (" + a.failureDetail() + ")");
          return 1;
        }
        System.err.println("association established: bound to " + a.peerId() + " over "
            + a.version() + " " + a.suite());
        // Path and host from the identity the session is bound to.
        String path = "/" + idb.substring(idb.lastIndexOf('/') + 1);
        String sni = M2mpsk.idbServerName(idb);
        byte[] req = request(path, sni != null ? sni : host, origin, name, retrieve);
        a.write(req);
        System.err.println("sent: " + (retrieve ? "GET " : "POST ") + path + " HTTP/1.1");
        ByteArrayOutputStream response = new ByteArrayOutputStream();
        read:
        while (now() < deadline) {
          flush(a, out);
          byte[] got = receive(s, in, deadline - now());
          if (got == null || got.length == 0) break;
          a.feed(got, now());
          try {
            for (byte[] d = a.read(); d.length > 0; d = a.read()) response.write(d);
          } catch (M2mpskException e) {
            if (e.getCode() == M2mpsk.E_CLOSED) break read;
            throw e;
          }
        }
        if (a.state() == M2mpsk.STATE_ESTABLISHED) {
          a.closeNotify();
          flush(a, out);
        }
        if (response.size() == 0) {
          System.err.println("no response: the CSE closed without answering");
          return 3;
        }
        System.out.print(response.toString(StandardCharsets.UTF_8));
        return 0;
      }
    }
  }

  public static void main(String[] argv) {
    int rc;
    try {
      rc = run(argv);
    } catch (java.io.IOException | IllegalStateException e) { // SSLException included
      System.err.println("RegisterAe: " + e.getMessage());
      rc = 2;
    } catch (Exception e) {
      System.err.println("RegisterAe: " + e);
      rc = 2;
    }
    System.exit(rc);
  }
}
