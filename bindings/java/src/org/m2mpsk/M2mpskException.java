package org.m2mpsk;

import javax.net.ssl.SSLException;

/**
 * A libm2mpsk call failed for a reason a correct program must expect: the
 * peer, the network, a key file, a record's validity, a resource limit, or
 * a call the association's state does not allow yet. A failed handshake is
 * a {@link M2mpskHandshakeException} instead, and a wrong argument (a null,
 * a closed handle, a value out of range) the unchecked
 * {@link M2mpskUsageException}.
 *
 * <p>{@link #getCode()} tells what to do next: {@code E_FAILED}, the
 * association failed ({@link #getReason()} says why; drain it once more to
 * flush a final alert); {@code E_CLOSED}, the peer sent close_notify;
 * {@code E_STATE}, the call came too early or too late; {@code E_LIMIT},
 * nothing was consumed and the association is still usable. The message
 * never holds key bytes.
 */
public class M2mpskException extends SSLException implements M2mpskStatus {
  private static final long serialVersionUID = 2L;

  private final int code;
  private final int reason;
  private final String detail;

  /**
   * Creates the exception for a status.
   *
   * @param code the status, an {@code M2mpsk.E_*} constant
   * @param reason the failure reason, an {@code M2mpsk.REASON_*} constant
   * @param detail the failure detail, or the status description
   */
  public M2mpskException(int code, int reason, String detail) {
    super(message(code, reason, detail));
    this.code = code;
    this.reason = reason;
    this.detail = detail;
  }

  /** The message of every exception of the package. */
  static String message(int code, int reason, String detail) {
    String status = M2mpsk.strerror(code);
    StringBuilder s = new StringBuilder(status).append(" (").append(code).append(")");
    if (reason != M2mpsk.REASON_NONE) {
      s.append(" [").append(M2mpsk.reasonName(reason)).append("]");
    }
    if (detail != null && !detail.isEmpty() && !detail.equals(status)) {
      s.append(": ").append(detail);
    }
    return s.toString();
  }

  @Override
  public int getCode() {
    return code;
  }

  @Override
  public int getReason() {
    return reason;
  }

  @Override
  public String getDetail() {
    return detail;
  }
}
