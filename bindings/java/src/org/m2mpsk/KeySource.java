package org.m2mpsk;

import java.util.concurrent.CompletableFuture;

/**
 * Where a keystore finds the records it does not hold (since 0.4): a
 * database, a secrets service, a MAF. Set with
 * {@link Keystore#setKeySource(KeySource, int, java.util.concurrent.Executor)}.
 *
 * <p>{@link #lookup} is called once per KpsaID that associations are
 * waiting for, however many wait. It must not block the thread that calls
 * it (the one whose handshake needs the key) unless an executor was given:
 * start the lookup and return its future.
 */
@FunctionalInterface
public interface KeySource {
  /**
   * Starts looking a record up.
   *
   * @param kpsaId the KpsaID the peer presented (an initiator: its own)
   * @param serverName the SNI host name the client sent to the responder,
   *     or null (none, or an initiator's request)
   * @return a future of the record; null, a future completed with null, or
   *     one completed exceptionally mean the source has no record (the
   *     handshake then fails as with a wrong key). The exception is logged
   *     without key material.
   */
  CompletableFuture<KeyRecord> lookup(String kpsaId, String serverName);
}
