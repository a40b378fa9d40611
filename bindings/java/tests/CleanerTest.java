package org.m2mpsk;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import org.junit.Test;

/** The Cleaner that replaced finalize(): in the package org.m2mpsk to read
 * Handles.live(), the count of native handles not yet freed. */
public class CleanerTest {
  static final byte[] KEY = new byte[32];
  static final String KPSA_ID = "test@onem2m.com";

  /** Makes n associations and drops them, with their keystore and config,
   * unclosed. */
  static void dropAssociations(int n) throws Exception {
    Keystore ks = new Keystore();
    ks.add(KPSA_ID, KEY, null, "//m2m.example.com/cse-in");
    Config cfg = new Config();
    for (int i = 0; i < n; i++) {
      Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, KPSA_ID);
      a.start(0);
    }
  }

  @Test
  public void unreachableHandlesAreFreed() throws Exception {
    long before = Handles.live();
    dropAssociations(500);
    assertTrue(Handles.live() >= before + 502 - 500 /* some may be freed already */);
    long deadline = System.nanoTime() + 20_000_000_000L;
    while (Handles.live() > before && System.nanoTime() < deadline) {
      System.gc();
      Thread.sleep(20);
    }
    assertTrue("still live: " + (Handles.live() - before), Handles.live() <= before);
  }

  @Test
  public void closeAndDeleteFreeOnceAndDisarm() throws Exception {
    List<Long> freed = Collections.synchronizedList(new ArrayList<>());
    Handles.Free f = new Handles.Free(freed::add, 42);
    f.run();
    f.run(); // once only
    assertEquals(Collections.singletonList(42L), freed);
    Handles.Free g = new Handles.Free(freed::add, 43);
    Handles.register(new Object(), g);
    g.disarm(); // ownership handed over: never freed here
    g.run();
    assertEquals(Collections.singletonList(42L), freed);
    // A proxy: delete() frees now, twice is harmless, close() after too.
    Keystore ks = new Keystore();
    ks.delete();
    ks.delete();
    ks.close();
    assertEquals(0, Keystore.getCPtr(ks));
    // swigRelease hands the handle over (what the alias classes do).
    Config c = new Config();
    long p = Config.swigRelease(c);
    assertTrue(p != 0);
    Config d = new Config(p, true);
    d.setHandshakeTimeout(1000); // the handle lives on in d
    d.delete();
  }

  @Test
  public void noClassHasFinalize() throws Exception {
    File jar = new File(M2mpsk.class.getProtectionDomain().getCodeSource().getLocation().toURI());
    int n = 0;
    try (JarFile j = new JarFile(jar)) {
      for (JarEntry e : Collections.list(j.entries())) {
        String name = e.getName();
        if (!name.endsWith(".class")) continue;
        Class<?> c = Class.forName(name.substring(0, name.length() - 6).replace('/', '.'), false,
            CleanerTest.class.getClassLoader());
        for (Method m : c.getDeclaredMethods()) {
          assertTrue(c + " has finalize()", !m.getName().equals("finalize"));
        }
        n++;
      }
    }
    assertTrue(n > 10);
  }
}
