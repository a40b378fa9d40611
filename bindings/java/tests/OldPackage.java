import java.nio.charset.StandardCharsets;
import m2mpsk.Association;
import m2mpsk.Config;
import m2mpsk.Event;
import m2mpsk.Keystore;
import m2mpsk.M2mpsk;
import m2mpsk.M2mpskException;
import m2mpsk.Record;

/**
 * Code written for 0.2's package m2mpsk, unchanged: ctest java_old_package
 * compiles it against the deprecated alias (which must warn) and runs it.
 * It uses what 0.2's docs showed: static functions and constants of
 * M2mpsk, the handles with try-with-resources, an event from the queue, a
 * record, and M2mpskException caught unchecked, with no throws clause
 * anywhere. Prints "ok" and exits 0, or throws.
 */
public class OldPackage {
  static {
    System.loadLibrary("m2mpskjni");
  }

  static final String KPSA_ID = "test@onem2m.com";
  static final String IDB = "//m2m.example.com/cse-in";

  static void check(boolean ok, String what) {
    if (!ok) throw new AssertionError(what);
  }

  /** Moves bytes both ways until neither side has anything to send. */
  static M2mpskException pump(Association a, Association b) {
    M2mpskException failure = null;
    for (int round = 0; round < 50; round++) {
      boolean moved = false;
      Association[][] dirs = {{a, b}, {b, a}};
      for (Association[] d : dirs) {
        for (byte[] out = d[0].drain(); out.length > 0; out = d[0].drain()) {
          moved = true;
          int st = d[1].state();
          if (st == M2mpsk.STATE_FAILED || st == M2mpsk.STATE_CLOSED) continue;
          try {
            d[1].feed(out, System.nanoTime() / 1_000_000);
          } catch (M2mpskException e) {
            failure = e;
          }
        }
      }
      if (!moved) break;
    }
    return failure;
  }

  public static void main(String[] args) {
    byte[] key = new byte[32];
    check(M2mpsk.versionString().startsWith("0."), "versionString");
    check(M2mpsk.E_INVALID == -1, "constants resolve through M2mpsk");
    check(m2mpsk.M2mpskConstants.STATE_FAILED == M2mpsk.STATE_FAILED, "M2mpskConstants");
    try {
      M2mpsk.kpsaIdValidate("nope");
      check(false, "kpsaIdValidate accepted nope");
    } catch (M2mpskException e) {
      check(e.getCode() == M2mpsk.E_KPSA_ID, "code " + e.getCode());
    }
    try (Keystore ks = new Keystore(); Config ca = new Config(); Config cb = new Config()) {
      ks.add(KPSA_ID, key, null, IDB);
      Record r = ks.lookup(KPSA_ID);
      check(r.getIdb().equals(IDB), "lookup");
      cb.addLocalId(IDB);
      cb.setEventQueue(8);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ks,
               KPSA_ID);
           Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, ks)) {
        b.start(0);
        a.start(0);
        check(pump(a, b) == null, "handshake");
        check(a.state() == M2mpsk.STATE_ESTABLISHED, "established");
        a.write("hello".getBytes(StandardCharsets.UTF_8));
        pump(a, b);
        check(new String(b.read(), StandardCharsets.UTF_8).equals("hello"), "read");
      }
      Event ev = cb.nextEvent();
      check(ev != null && ev.type() == M2mpsk.EVENT_ESTABLISHED, "event");
      ev.close();
      try {
        ev.type();
        check(false, "a closed event answered");
      } catch (M2mpskException e) {
        check(e.getCode() == M2mpsk.E_INVALID, "closed event: " + e.getCode());
      }
    }
    // A wrong key: caught as the unchecked M2mpskException, with its reason.
    try (Keystore ka = new Keystore(); Keystore kb = new Keystore(); Config ca = new Config();
         Config cb = new Config()) {
      ka.add(KPSA_ID, key, null, IDB);
      kb.add(KPSA_ID, new byte[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, null, IDB);
      cb.addLocalId(IDB);
      try (Association a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ca, ka,
               KPSA_ID);
           Association b = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cb, kb)) {
        b.start(0);
        a.start(0);
        M2mpskException e = pump(a, b);
        check(e != null && e.getCode() == M2mpsk.E_FAILED, "bad key fails");
        check(e.getReason() == M2mpsk.REASON_BAD_KEY, "reason " + e.getReasonName());
        check(e instanceof RuntimeException, "unchecked");
      }
    }
    System.out.println("ok");
  }
}
