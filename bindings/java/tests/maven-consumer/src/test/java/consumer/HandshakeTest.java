package consumer;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import org.m2mpsk.M2mpsk;
import org.junit.Test;

public class HandshakeTest {
  @Test
  public void versionIsTheDependencys() {
    assertEquals(System.getProperty("m2mpsk.version"), M2mpsk.versionString());
  }

  @Test
  public void tlsHandshake() throws Exception {
    String[] r = Handshake.run(M2mpsk.TRANSPORT_TLS);
    assertEquals(Handshake.IDB, r[0]);
    assertEquals("12-" + Handshake.KPSA_ID, r[1]);
    assertTrue(r[2], r[2].startsWith("TLS_PSK_"));
    System.out.println("TLS: A bound to " + r[0] + ", B bound to " + r[1] + ", " + r[2]);
  }

  @Test
  public void dtlsHandshake() throws Exception {
    String[] r = Handshake.run(M2mpsk.TRANSPORT_DTLS);
    assertEquals(Handshake.IDB, r[0]);
    assertEquals("12-" + Handshake.KPSA_ID, r[1]);
    System.out.println("DTLS: A bound to " + r[0] + ", B bound to " + r[1] + ", " + r[2]);
  }
}
