// Interop with OpenSSL's own PSK peers: openssl s_server and s_client, TLS
// and DTLS, each side of PskStream and of the datagram classes.
using System;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;

namespace Org.M2mpsk.Tests {
  /// An openssl s_server or s_client with its output collected; killed on
  /// Dispose.
  sealed class OpenSsl : IDisposable {
    readonly Process p;
    readonly StringBuilder output = new StringBuilder();
    readonly Thread reader;

    public OpenSsl(string args) {
      var psi = new ProcessStartInfo("openssl", args) {
        UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true,
        RedirectStandardError = true,
      };
      p = Process.Start(psi);
      reader = new Thread(() => Pump(p.StandardOutput)) { IsBackground = true };
      reader.Start();
      new Thread(() => Pump(p.StandardError)) { IsBackground = true }.Start();
    }

    void Pump(StreamReader r) {
      var b = new char[4096];
      int n;
      try {
        while ((n = r.Read(b, 0, b.Length)) > 0)
          lock (output)
            output.Append(b, 0, n);
      } catch (Exception) {
        // The process was killed.
      }
    }

    public string Output {
      get {
        lock (output)
          return output.ToString();
      }
    }

    /// The first group of pattern in the output, within ms.
    public string WaitFor(string pattern, int ms = 10000) {
      var sw = Stopwatch.StartNew();
      for (;;) {
        Match m = Regex.Match(Output, pattern);
        if (m.Success)
          return m.Groups.Count > 1 ? m.Groups[1].Value : m.Value;
        if (sw.ElapsedMilliseconds > ms)
          throw new AssertionFailed("openssl: no /" + pattern + "/ within " + ms + " ms; output: " + Output);
        Thread.Sleep(20);
      }
    }

    public void Send(string line) {
      p.StandardInput.Write(line);
      p.StandardInput.Flush();
    }

    public void Dispose() {
      try {
        if (!p.HasExited)
          p.Kill();
        p.WaitForExit(5000);
      } catch (Exception) {
        // Already gone.
      }
      p.Dispose();
    }
  }

  public static class OpensslTests {
    static string KeyHex() {
      return BitConverter.ToString(Fx.Key()).Replace("-", "").ToLowerInvariant();
    }

    static string PskArgs => "-psk " + KeyHex() + " -psk_identity " + Fx.KpsaId + " -cipher PSK";

    static OpenSsl Server(bool dtls) {
      return new OpenSsl("s_server -nocert -accept 127.0.0.1:0 " + (dtls ? "-dtls1_2 " : "-tls1_2 ") + PskArgs);
    }

    static int ServerPort(OpenSsl s) {
      return int.Parse(s.WaitFor(@"ACCEPT \S*:(\d+)"));
    }

    public static void PskStreamClientToOpensslServer() {
      using (var server = Server(false))
      using (var cks = Fx.Store())
      using (var tcp = new TcpClient()) {
        tcp.Connect(IPAddress.Loopback, ServerPort(server));
        using (var s = new PskStream(tcp.GetStream())) {
          s.AuthenticateAsClient(new PskClientOptions { Keystore = cks, KpsaId = Fx.KpsaId,
                                                        HandshakeTimeoutMs = 5000 });
          Check.True(s.CipherSuite.StartsWith("TLS_PSK_"), "suite " + s.CipherSuite);
          byte[] msg = Encoding.ASCII.GetBytes("from csharp\n");
          s.Write(msg, 0, msg.Length);
          server.WaitFor("from csharp");
          server.Send("from openssl\n");
          var buf = new byte[100];
          var got = new StringBuilder();
          s.ReadTimeout = 5000;
          while (!got.ToString().Contains("from openssl")) {
            int n = s.Read(buf, 0, buf.Length);
            Check.True(n > 0, "data before the end");
            got.Append(Encoding.ASCII.GetString(buf, 0, n));
          }
        }
      }
    }

    public static void OpensslClientToPskStreamServer() {
      using (var sks = Fx.Store())
      using (var server = new TestServer(StreamTests.ServerOptions(sks), s => {
               byte[] hello = Encoding.ASCII.GetBytes("hello from csharp\n");
               s.Write(hello, 0, hello.Length);
               StreamTests.Echo(s);
             }))
      using (var client = new OpenSsl("s_client -connect 127.0.0.1:" + server.Port + " -tls1_2 " + PskArgs)) {
        client.WaitFor("hello from csharp");
        client.Send("echo me\n");
        client.WaitFor("echo me");
        Check.True(client.WaitFor(@"Cipher is (\S+)").Contains("PSK"), "a PSK suite: " + client.Output);
      }
    }

    public static void DatagramClientToOpensslServer() {
      using (var server = Server(true))
      using (var cks = Fx.Store()) {
        int port = ServerPort(server);
        using (var c = PskDatagramClient.Connect(new IPEndPoint(IPAddress.Loopback, port),
                                                 new PskClientOptions { Keystore = cks, KpsaId = Fx.KpsaId,
                                                                        HandshakeTimeoutMs = 5000 })) {
          Check.Equal("DTLSv1.2", c.Association.Version(), "version");
          c.Send(Encoding.ASCII.GetBytes("dtls from csharp\n"));
          server.WaitFor("dtls from csharp");
          server.Send("dtls from openssl\n");
          byte[] d = c.Receive(5000);
          Check.True(d != null && Encoding.ASCII.GetString(d).Contains("dtls from openssl"), "received");
        }
      }
    }

    public static void OpensslClientToDatagramServer() {
      using (var sks = Fx.Store())
      using (var server = new PskDatagramServer(new IPEndPoint(IPAddress.Loopback, 0),
                                                new PskServerOptions { Keystore = sks, LocalId = Fx.Idb },
                                                (peer, data) => peer.Send(data))) {
        var errors = new System.Collections.Generic.List<Exception>();
        server.OnError = errors.Add;
        server.Start();
        using (var client = new OpenSsl("s_client -dtls1_2 -connect 127.0.0.1:" + server.LocalEndPoint.Port +
                                        " " + PskArgs)) {
          try {
            client.WaitFor(@"Cipher is (\S+)", 10000);
          } catch (AssertionFailed e) {
            throw new AssertionFailed(e.Message + "; server: dropped " + server.Dropped + ", failures " +
                                      server.HandshakeFailures + ", errors " + string.Join("; ", errors));
          }
          client.Send("datagram echo\n");
          client.WaitFor("datagram echo");
          Check.Equal(1, server.PeerCount, "one peer");
        }
      }
    }

    public static void OpensslClientWithAWrongKeyIsRefused() {
      using (var sks = Fx.Store(9))
      using (var server = new TestServer(StreamTests.ServerOptions(sks), StreamTests.Echo))
      using (var client = new OpenSsl("s_client -connect 127.0.0.1:" + server.Port + " -tls1_2 " + PskArgs)) {
        client.WaitFor("alert|error|errno", 10000);
        server.Drain();
        Check.Equal(1, server.Errors.Count, "the server failed the handshake");
        var e = server.Errors[0] as M2mpskAuthenticationException;
        Check.True(e != null, "an AuthenticationException: " + server.Errors[0]);
        Check.Equal(M2mpsk.REASON_BAD_KEY, e.Reason, "reason");
      }
    }
  }
}
