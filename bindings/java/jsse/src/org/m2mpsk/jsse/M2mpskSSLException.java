package org.m2mpsk.jsse;

import javax.net.ssl.SSLException;

/**
 * An m2mpsk association failed, or a call on it was refused, outside a
 * handshake. {@link #getCode()} is the library's status (an {@code E_*}
 * constant of the core binding), {@link #getReason()} the association's
 * failure reason (a {@code REASON_*} constant), {@link #getReasonName()} its
 * name, e.g. {@code "bad-key"}. The message never contains key material.
 */
public class M2mpskSSLException extends SSLException {
  private static final long serialVersionUID = 1L;

  private final int code;
  private final int reason;
  private final String reasonName;

  public M2mpskSSLException(String message, int code, int reason, String reasonName,
      Throwable cause) {
    super(message, cause);
    this.code = code;
    this.reason = reason;
    this.reasonName = reasonName;
  }

  /** The status code, an {@code E_*} constant. */
  public int getCode() {
    return code;
  }

  /** The failure reason, a {@code REASON_*} constant. */
  public int getReason() {
    return reason;
  }

  /** The failure reason's name, e.g. "bad-key", "peer-alert". */
  public String getReasonName() {
    return reasonName;
  }
}
