using System;
using System.IO;
using System.Security.Authentication;

namespace Org.M2mpsk {
  /// <summary>What every m2mpsk error carries: the status code (an E_
  /// constant of M2mpsk), the failure reason (a REASON_ constant,
  /// REASON_NONE when the association did not fail) and a readable detail
  /// that never contains key bytes.</summary>
  public interface IM2mpskError {
    int Code { get; }
    int Reason { get; }
    string Detail { get; }
  }

  static class ErrorText {
    internal static string Format(int code, int reason, string detail) {
      string s = M2mpsk.Strerror(code) + " (" + code + ")";
      if (reason != M2mpsk.REASON_NONE)
        s += ", reason " + M2mpsk.ReasonName(reason);
      if (!string.IsNullOrEmpty(detail))
        s += ": " + detail;
      return s;
    }
  }

  /// <summary>A failure of an m2mpsk call, or of a PskStream on an
  /// established association (an IOException, as SslStream throws for a
  /// broken record). E_INVALID (a null or closed handle, a bad argument)
  /// comes as this class too.</summary>
  public class M2mpskException : IOException, IM2mpskError {
    public int Code { get; private set; }
    public int Reason { get; private set; }
    public string Detail { get; private set; }

    public M2mpskException(int code, int reason, string detail)
        : base(ErrorText.Format(code, reason, detail)) {
      Code = code;
      Reason = reason;
      Detail = detail ?? "";
    }

    public M2mpskException(int code, int reason, string detail, Exception inner)
        : base(ErrorText.Format(code, reason, detail), inner) {
      Code = code;
      Reason = reason;
      Detail = detail ?? "";
    }
  }

  /// <summary>A failed handshake (E_FAILED while handshaking: wrong key,
  /// unknown identity, timeout, ...), an AuthenticationException as
  /// SslStream throws. Reason says why.</summary>
  public class M2mpskAuthenticationException : AuthenticationException, IM2mpskError {
    public int Code { get; private set; }
    public int Reason { get; private set; }
    public string Detail { get; private set; }

    public M2mpskAuthenticationException(int code, int reason, string detail)
        : base(ErrorText.Format(code, reason, detail)) {
      Code = code;
      Reason = reason;
      Detail = detail ?? "";
    }
  }
}
