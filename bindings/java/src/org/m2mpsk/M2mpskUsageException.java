package org.m2mpsk;

/**
 * A programming error, status {@code E_INVALID}: a null where a value is
 * needed, a call on a handle after {@code close()}, a value out of range
 * (a negative time, an unknown flag or constant, an MTU on a TLS
 * association, an empty DTLS datagram), or a too-small or read-only
 * {@code ByteBuffer}. Unchecked, as {@link IllegalArgumentException}, which
 * it extends: a correct program never sees it, so it is not declared.
 * {@link #getDetail()} says what was wrong ("data is null", "the handle is
 * closed"...).
 */
public class M2mpskUsageException extends IllegalArgumentException implements M2mpskStatus {
  private static final long serialVersionUID = 1L;

  private final int code;
  private final int reason;
  private final String detail;

  /**
   * Creates the exception.
   *
   * @param code the status, {@code M2mpsk.E_INVALID}
   * @param reason the failure reason, normally {@code M2mpsk.REASON_NONE}
   * @param detail what was wrong
   */
  public M2mpskUsageException(int code, int reason, String detail) {
    super(M2mpskException.message(code, reason, detail));
    this.code = code;
    this.reason = reason;
    this.detail = detail;
  }

  /**
   * Returns value, or throws when it is null: what the C library answers
   * for a NULL argument, checked on the Java side for the array and buffer
   * arguments, which would otherwise reach it as an empty buffer.
   */
  static <T> T requireNonNull(T value, String name) {
    if (value == null) {
      throw new M2mpskUsageException(M2mpsk.E_INVALID, M2mpsk.REASON_NONE, name + " is null");
    }
    return value;
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
