package org.m2mpsk;

import java.util.Arrays;

/**
 * A record a {@link KeySource} supplies (since 0.4): the key, the
 * identities and the validity window, as
 * {@link Keystore#add(String, byte[], String, String, long, long)} takes
 * them. The record holds the caller's key array, not a copy, and the
 * keystore wipes that array (zeroes) once it has taken the key into its
 * locked memory, or refused it: hand over an array nothing else needs.
 */
public final class KeyRecord {
  private final byte[] key;
  private final String ida;
  private final String idb;
  private final long notBefore;
  private final long notAfter;

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
    this.key = M2mpskUsageException.requireNonNull(key, "key");
    this.ida = ida;
    this.idb = M2mpskUsageException.requireNonNull(idb, "idb");
    this.notBefore = notBefore;
    this.notAfter = notAfter;
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
      req.supply(key, ida, idb, notBefore, notAfter);
    } finally {
      Arrays.fill(key, (byte) 0);
    }
  }

  /** Never shows the key. */
  @Override
  public String toString() {
    return "KeyRecord[ida=" + ida + ", idb=" + idb + ", notBefore=" + notBefore
        + ", notAfter=" + notAfter + "]";
  }
}
