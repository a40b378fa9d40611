package org.m2mpsk;

/**
 * What every exception of this package carries: the libm2mpsk status, the
 * association's failure reason and a detail. Implemented by
 * {@link M2mpskException}, {@link M2mpskHandshakeException} and
 * {@link M2mpskUsageException}, whose superclasses differ (the JDK's
 * {@code SSLException}, {@code SSLHandshakeException} and
 * {@code IllegalArgumentException}), so that a caller can treat them alike:
 *
 * <pre>{@code
 * } catch (SSLException e) {
 *   M2mpskStatus s = (M2mpskStatus) e;
 *   log.warn(s.getReasonName() + ": " + s.getDetail());
 * }</pre>
 *
 * <p>No message, detail or {@code toString()} ever holds key bytes.
 */
public interface M2mpskStatus {
  /**
   * Returns the status.
   *
   * @return an {@code M2mpsk.E_*} constant (negative)
   */
  int getCode();

  /**
   * Returns why the association failed.
   *
   * @return an {@code M2mpsk.REASON_*} constant; {@code REASON_NONE} when
   *     the call was not on an association or the association has not
   *     failed
   */
  int getReason();

  /**
   * Returns the reason's name.
   *
   * @return e.g. {@code "bad-key"}; {@code "none"} for {@code REASON_NONE}
   */
  default String getReasonName() {
    return M2mpsk.reasonName(getReason());
  }

  /**
   * Returns the detail.
   *
   * @return the association's failure detail (alert names, what did not
   *     match), the key file line at fault, or else the status description
   */
  String getDetail();

}
