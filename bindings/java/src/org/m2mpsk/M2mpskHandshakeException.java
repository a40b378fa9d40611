package org.m2mpsk;

import javax.net.ssl.SSLHandshakeException;

/**
 * The handshake failed: {@code E_FAILED} from a call made before the
 * association was established ({@code Association.start},
 * {@code feed} or {@code handleTimeout}). {@link #getReason()} says why:
 * {@code REASON_BAD_KEY} (the keys differ), {@code REASON_UNKNOWN_IDENTITY},
 * {@code REASON_ID_MISMATCH}, {@code REASON_TIMEOUT}, {@code REASON_EXPIRED},
 * {@code REASON_REVOKED}, {@code REASON_RATE_LIMITED}, {@code REASON_LIMIT},
 * {@code REASON_PEER_ALERT}, {@code REASON_PROTOCOL}... Drain the
 * association once more: an alert for the peer may be waiting. A failure
 * after the handshake is a plain {@link M2mpskException} with
 * {@code E_FAILED}. The message never holds key bytes.
 */
public class M2mpskHandshakeException extends SSLHandshakeException implements M2mpskStatus {
  private static final long serialVersionUID = 1L;

  private final int code;
  private final int reason;
  private final String detail;

  /**
   * Creates the exception for a failed handshake.
   *
   * @param code the status, {@code M2mpsk.E_FAILED}
   * @param reason the failure reason, an {@code M2mpsk.REASON_*} constant
   * @param detail the failure detail, or the status description
   */
  public M2mpskHandshakeException(int code, int reason, String detail) {
    super(M2mpskException.message(code, reason, detail));
    this.code = code;
    this.reason = reason;
    this.detail = detail;
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
