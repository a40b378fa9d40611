package org.m2mpsk.jsse;

import javax.net.ssl.SSLHandshakeException;

/**
 * The handshake failed: wrong key, unknown KpsaID, a peer alert, a timeout,
 * an expired or revoked record. Carries the same status code and failure
 * reason as {@link M2mpskSSLException}; {@link #getReasonName()} says which
 * (for a wrong key, {@code "bad-key"} on the side that detected it).
 */
public class M2mpskSSLHandshakeException extends SSLHandshakeException {
  private static final long serialVersionUID = 1L;

  private final int code;
  private final int reason;
  private final String reasonName;

  public M2mpskSSLHandshakeException(String message, int code, int reason, String reasonName,
      Throwable cause) {
    super(message);
    if (cause != null) initCause(cause);
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

  /** The failure reason's name, e.g. "bad-key", "timeout". */
  public String getReasonName() {
    return reasonName;
  }
}
