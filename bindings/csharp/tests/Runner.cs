// A self-contained test runner (Debian's mono-devel has no NUnit):
// `mono M2mpskTests.exe GROUP` runs every public static method of the
// group's class, each in its own thread under a deadline, and exits 1 when
// any fails or hangs.
using System;
using System.Diagnostics;
using System.Reflection;
using System.Threading;

namespace Org.M2mpsk.Tests {
  sealed class AssertionFailed : Exception {
    public AssertionFailed(string m) : base(m) {}
  }

  static class Check {
    public static void True(bool c, string what) {
      if (!c)
        throw new AssertionFailed(what);
    }

    public static void Equal<T>(T expected, T actual, string what) {
      if (!Equals(expected, actual))
        throw new AssertionFailed(what + ": expected <" + expected + ">, got <" + actual + ">");
    }

    public static void Bytes(byte[] expected, byte[] actual, string what) {
      True(actual != null && expected.Length == actual.Length, what + ": length " +
           expected.Length + " vs " + (actual == null ? "null" : actual.Length.ToString()));
      for (int i = 0; i < expected.Length; i++)
        if (expected[i] != actual[i])
          throw new AssertionFailed(what + ": differs at byte " + i);
    }

    /// The exception f throws, which must be a T; anything else fails.
    public static T Throws<T>(Action f, string what) where T : Exception {
      try {
        f();
      } catch (T e) {
        return e;
      } catch (Exception e) {
        throw new AssertionFailed(what + ": expected " + typeof(T).Name + ", got " + e);
      }
      throw new AssertionFailed(what + ": expected " + typeof(T).Name + ", nothing thrown");
    }

    /// f must throw an m2mpsk error (either class) with this code.
    public static IM2mpskError Code(int code, Action f, string what) {
      try {
        f();
      } catch (Exception e) when (e is IM2mpskError) {
        var m = (IM2mpskError)e;
        if (m.Code != code)
          throw new AssertionFailed(what + ": expected code " + code + ", got " + e);
        True(m.Detail.Length > 0, what + ": empty detail");
        True(e.Message.Contains(m.Detail), what + ": message lacks the detail");
        return m;
      } catch (Exception e) {
        throw new AssertionFailed(what + ": expected code " + code + ", got " + e);
      }
      throw new AssertionFailed(what + ": expected code " + code + ", nothing thrown");
    }
  }

  static class Runner {
    static int Main(string[] args) {
      if (args.Length < 1) {
        Console.Error.WriteLine("usage: M2mpskTests.exe lowlevel|stream|openssl|dtls [test...]");
        return 2;
      }
      Type t;
      switch (args[0]) {
      case "lowlevel": t = typeof(LowLevelTests); break;
      case "stream": t = typeof(StreamTests); break;
      case "openssl": t = typeof(OpensslTests); break;
      case "dtls": t = typeof(DtlsTests); break;
      default: Console.Error.WriteLine("unknown group " + args[0]); return 2;
      }
      int failed = 0, run = 0;
      var total = Stopwatch.StartNew();
      foreach (MethodInfo m in t.GetMethods(BindingFlags.Public | BindingFlags.Static)) {
        if (m.GetParameters().Length != 0 || m.ReturnType != typeof(void))
          continue;
        if (args.Length > 1 && Array.IndexOf(args, m.Name, 1) < 0)
          continue;
        run++;
        Exception error = null;
        var sw = Stopwatch.StartNew();
        var th = new Thread(() => {
          try {
            m.Invoke(null, null);
          } catch (TargetInvocationException e) {
            error = e.InnerException;
          }
        });
        th.IsBackground = true;
        th.Start();
        if (!th.Join(TimeSpan.FromSeconds(25)))
          error = new TimeoutException("did not finish within 25 s");
        if (error == null) {
          Console.WriteLine("ok   {0} ({1} ms)", m.Name, sw.ElapsedMilliseconds);
        } else {
          failed++;
          Console.WriteLine("FAIL {0} ({1} ms): {2}", m.Name, sw.ElapsedMilliseconds, error);
        }
      }
      Console.WriteLine("{0}: {1} run, {2} failed, {3} ms", args[0], run, failed,
                        total.ElapsedMilliseconds);
      if (run == 0)
        return 1;
      // A hung test's thread is a background thread: exit does not wait.
      return failed == 0 ? 0 : 1;
    }
  }
}
