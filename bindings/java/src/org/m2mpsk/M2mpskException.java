package org.m2mpsk;

/**
 * A libm2mpsk call failed. {@link #getCode()} is the status (an
 * {@code M2mpsk.E_*} constant), {@link #getReason()} the association's
 * failure reason (an {@code M2mpsk.REASON_*} constant; {@code REASON_NONE}
 * when the call was not on an association or the association has not
 * failed), and {@link #getDetail()} the association's failure detail, or the
 * status description.
 *
 * <p>Unchecked, like {@link IllegalArgumentException}: most codes report a
 * broken contract or a failed association, which callers handle at the
 * association's level rather than around each call.
 */
public class M2mpskException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final int code;
  private final int reason;
  private final String detail;

  public M2mpskException(int code, int reason, String detail) {
    super(message(code, reason, detail));
    this.code = code;
    this.reason = reason;
    this.detail = detail;
  }

  private static String message(int code, int reason, String detail) {
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

  /**
   * Returns value, or throws {@code E_INVALID} when it is null: what the C
   * library answers for a NULL argument, checked on the Java side for the
   * byte[] arguments, which would otherwise reach it as an empty buffer.
   */
  static <T> T requireNonNull(T value, String name) {
    if (value == null) {
      throw new M2mpskException(M2mpsk.E_INVALID, M2mpsk.REASON_NONE, name + " is null");
    }
    return value;
  }

  /** The status code, an {@code M2mpsk.E_*} constant. */
  public int getCode() {
    return code;
  }

  /** The failure reason, an {@code M2mpsk.REASON_*} constant. */
  public int getReason() {
    return reason;
  }

  /** The failure detail, or the status description. */
  public String getDetail() {
    return detail;
  }

  /** The reason's name, e.g. "bad-key". */
  public String getReasonName() {
    return M2mpsk.reasonName(reason);
  }
}
