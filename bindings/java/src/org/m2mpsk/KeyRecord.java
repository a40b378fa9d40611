package org.m2mpsk;

import java.util.Arrays;

/**
 * A record a {@link KeySource} supplies (since 0.4): the key, the
 * identities and the validity window, as
 * {@link Keystore#add(String, byte[], String, String, long, long)} takes
 * them. The record holds the caller's key array, not a copy, and the
 * keystore wipes that array (zeroes) once it has taken the key into its
 * locked memory, or refused it: hand over an array nothing else needs.
 *
 * <p>A record made with {@link #once(byte[], String, String, long, long)}
 * (since 0.6) serves a responder's handshakes that waited for it and is not
 * kept by the keystore ({@link KeyRequest#supplyOnce}): the next handshake
 * with the KpsaID asks the source again. An initiator's request keeps it
 * all the same.
 */
public final class KeyRecord {
  private final byte[] key;
  private final String ida;
  private final String idb;
  private final long notBefore;
  private final long notAfter;
  private final boolean once;

  /**
   * A record.
   *
   * @param key the key, {@code KEY_MIN} to {@code KEY_MAX} bytes; wiped
   *     once supplied
   * @param ida IdA, or null for none
   * @param idb IdB, the Registrar's CSE-ID
   * @param notBefore start of validity in Unix seconds, 0 for unbounded
   * @param notAfter end of validity in Unix seconds, 0 for unbounded
   * @throws M2mpskUsageException a null key or idb
   */
  public KeyRecord(byte[] key, String ida, String idb, long notBefore, long notAfter) {
    this(key, ida, idb, notBefore, notAfter, false);
  }

  private KeyRecord(byte[] key, String ida, String idb, long notBefore, long notAfter,
      boolean once) {
    this.key = M2mpskUsageException.requireNonNull(key, "key");
    this.ida = ida;
    this.idb = M2mpskUsageException.requireNonNull(idb, "idb");
    this.notBefore = notBefore;
    this.notAfter = notAfter;
    this.once = once;
  }

  /**
   * A record for the responder handshakes waiting for it only, which the
   * keystore does not keep (since 0.6).
   *
   * @param key the key, {@code KEY_MIN} to {@code KEY_MAX} bytes; wiped
   *     once supplied
   * @param ida IdA, or null for none
   * @param idb IdB, the Registrar's CSE-ID
   * @param notBefore start of validity in Unix seconds, 0 for unbounded
   * @param notAfter end of validity in Unix seconds, 0 for unbounded
   * @return the record
   * @throws M2mpskUsageException a null key or idb
   */
  public static KeyRecord once(byte[] key, String ida, String idb, long notBefore,
      long notAfter) {
    return new KeyRecord(key, ida, idb, notBefore, notAfter, true);
  }

  /** @return whether the keystore is to keep the record (false) or not */
  public boolean isOnce() {
    return once;
  }

  /**
   * A record with no validity window.
   *
   * @param key the key; wiped once supplied
   * @param ida IdA, or null for none
   * @param idb IdB, the Registrar's CSE-ID
   */
  public KeyRecord(byte[] key, String ida, String idb) {
    this(key, ida, idb, 0, 0);
  }

  /** @return IdA, or null */
  public String ida() {
    return ida;
  }

  /** @return IdB */
  public String idb() {
    return idb;
  }

  /** @return the start of validity in Unix seconds, 0 for unbounded */
  public long notBefore() {
    return notBefore;
  }

  /** @return the end of validity in Unix seconds, 0 for unbounded */
  public long notAfter() {
    return notAfter;
  }

  /** Supplies the record to a request, then wipes the key array. */
  void supplyTo(KeyRequest req) throws M2mpskException {
    try {
      if (once && req.role() == M2mpsk.ROLE_RESPONDER) {
        req.supplyOnce(key, ida, idb, notBefore, notAfter);
      } else {
        req.supply(key, ida, idb, notBefore, notAfter);
      }
    } finally {
      Arrays.fill(key, (byte) 0);
    }
  }

  /** Never shows the key. */
  @Override
  public String toString() {
    return "KeyRecord[ida=" + ida + ", idb=" + idb + ", notBefore=" + notBefore
        + ", notAfter=" + notAfter + (once ? ", once" : "") + "]";
  }
}
