package m2mpsk;

/**
 * The exception of the deprecated package {@code m2mpsk}: unchecked, as it
 * was before 0.3, with the status code, failure reason and detail. Every
 * method of the {@code m2mpsk} alias classes throws it where the
 * {@code org.m2mpsk} method throws one of that package's exceptions (the
 * original is its cause).
 *
 * @deprecated Use the package {@code org.m2mpsk} and its
 *     {@link org.m2mpsk.M2mpskException}. This alias lasts through 0.x.
 */
@Deprecated
public class M2mpskException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final int code;
  private final int reason;
  private final String detail;

  /**
   * Creates the exception for a status.
   *
   * @param code the status, an {@code E_*} constant
   * @param reason the failure reason, a {@code REASON_*} constant
   * @param detail the failure detail, or the status description
   */
  public M2mpskException(int code, int reason, String detail) {
    this(code, reason, detail, null);
  }

  M2mpskException(int code, int reason, String detail, Throwable cause) {
    super(message(code, reason, detail), cause);
    this.code = code;
    this.reason = reason;
    this.detail = detail;
  }

  private static String message(int code, int reason, String detail) {
    String status = org.m2mpsk.M2mpsk.strerror(code);
    StringBuilder s = new StringBuilder(status).append(" (").append(code).append(")");
    if (reason != org.m2mpsk.M2mpsk.REASON_NONE) {
      s.append(" [").append(org.m2mpsk.M2mpsk.reasonName(reason)).append("]");
    }
    if (detail != null && !detail.isEmpty() && !detail.equals(status)) {
      s.append(": ").append(detail);
    }
    return s.toString();
  }

  /** A call into {@code org.m2mpsk}, for {@link #call(Call)}. */
  interface Call<T> {
    T call() throws Exception;
  }

  /**
   * Runs c, turning an exception of {@code org.m2mpsk} into this one;
   * other unchecked exceptions pass through.
   */
  static <T> T call(Call<T> c) {
    try {
      return c.call();
    } catch (RuntimeException | Error e) {
      throw convert(e);
    } catch (Exception e) {
      throw convert(e);
    }
  }

  private static RuntimeException convert(Throwable e) {
    if (e instanceof org.m2mpsk.M2mpskStatus) {
      org.m2mpsk.M2mpskStatus s = (org.m2mpsk.M2mpskStatus) e;
      return new M2mpskException(s.getCode(), s.getReason(), s.getDetail(), e);
    }
    if (e instanceof RuntimeException) {
      return (RuntimeException) e;
    }
    if (e instanceof Error) {
      throw (Error) e;
    }
    return new IllegalStateException(e);
  }

  /** The status code, an {@code E_*} constant. */
  public int getCode() {
    return code;
  }

  /** The failure reason, a {@code REASON_*} constant. */
  public int getReason() {
    return reason;
  }

  /** The failure detail, or the status description. */
  public String getDetail() {
    return detail;
  }

  /** The reason's name, e.g. "bad-key". */
  public String getReasonName() {
    return org.m2mpsk.M2mpsk.reasonName(reason);
  }
}
