package consumer;

import javax.net.ssl.SSLException;
import org.m2mpsk.Association;
import org.m2mpsk.Config;
import org.m2mpsk.Keystore;
import org.m2mpsk.M2mpsk;

/**
 * Entity A and Entity B in memory, bytes moved between them by hand. The
 * library loads itself (the build tree's, or Debian's /usr/lib/<multiarch>/jni).
 */
public final class Handshake {
  static final String KPSA_ID = "test@onem2m.com";
  static final String IDB = "//m2m.example.com/cse-in";

  private Handshake() {}

  /** The peer IDs A and B are bound to, once both are established. */
  public static String[] run(int transport) throws SSLException {
    byte[] key = new byte[32];
    for (int i = 0; i < key.length; i++) key[i] = (byte) i;
    try (Keystore ks = new Keystore(); Config ca = new Config(); Config cb = new Config()) {
      ks.add(KPSA_ID, key, null, IDB);
      cb.addLocalId(IDB);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, transport, ca, ks, KPSA_ID);
          Association b = new Association(M2mpsk.ROLE_RESPONDER, transport, cb, ks)) {
        b.start(1000);
        a.start(1000);
        for (int round = 0; round < 20; round++) {
          boolean moved = false;
          for (byte[] o = a.drain(); o.length > 0; o = a.drain()) {
            b.feed(o, 1000);
            moved = true;
          }
          for (byte[] o = b.drain(); o.length > 0; o = b.drain()) {
            a.feed(o, 1000);
            moved = true;
          }
          if (!moved) break;
        }
        if (a.state() != M2mpsk.STATE_ESTABLISHED || b.state() != M2mpsk.STATE_ESTABLISHED)
          throw new IllegalStateException("A: " + a.failureDetail() + ", B: " + b.failureDetail());
        return new String[] {a.peerId(), b.peerId(), a.suite()};
      }
    }
  }

  public static void main(String[] args) throws SSLException {
    System.out.println("m2mpsk " + M2mpsk.versionString());
    for (int t : new int[] {M2mpsk.TRANSPORT_TLS, M2mpsk.TRANSPORT_DTLS}) {
      String[] r = run(t);
      System.out.println("A bound to " + r[0] + ", B bound to " + r[1] + ", " + r[2]);
    }
  }
}
