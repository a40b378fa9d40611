// PskStream, the SslStream-shaped drop-in, over TcpClient/TcpListener.
using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Org.M2mpsk.Tests {
  /// A loopback server on a free port, running handler on each connection
  /// (in its own thread) once the PskStream is authenticated; failures of
  /// the server side are collected for the test to look at.
  sealed class TestServer : IDisposable {
    readonly TcpListener listener = new TcpListener(IPAddress.Loopback, 0);
    readonly Thread thread;
    readonly List<Thread> conns = new List<Thread>();
    public readonly List<Exception> Errors = new List<Exception>();
    public int Port => ((IPEndPoint)listener.LocalEndpoint).Port;

    public TestServer(PskServerOptions options, Action<PskStream> handler) {
      listener.Start();
      thread = new Thread(() => {
        for (;;) {
          TcpClient c;
          try {
            c = listener.AcceptTcpClient();
          } catch (Exception) {
            return; // stopped
          }
          var t = new Thread(() => {
            try {
              c.NoDelay = true;
              using (c)
              using (var s = new PskStream(c.GetStream())) {
                s.AuthenticateAsServer(options);
                handler(s);
              }
            } catch (Exception e) {
              lock (Errors)
                Errors.Add(e);
            }
          });
          t.IsBackground = true;
          lock (conns)
            conns.Add(t);
          t.Start();
        }
      });
      thread.IsBackground = true;
      thread.Start();
    }

    /// Waits for the connections' threads to end.
    public void Drain(int ms = 5000) {
      Thread[] ts;
      lock (conns)
        ts = conns.ToArray();
      foreach (var t in ts)
        Check.True(t.Join(ms), "a server connection did not end");
    }

    /// Stops accepting and waits for the connections: the test's keystore
    /// is disposed next, and a handle must not be disposed while another
    /// thread is still using it.
    public void Dispose() {
      listener.Stop();
      thread.Join(2000);
      Thread[] ts;
      lock (conns)
        ts = conns.ToArray();
      foreach (var t in ts)
        t.Join(5000);
    }
  }

  public static class StreamTests {
    public static void Echo(PskStream s) {
      var buf = new byte[8192];
      int n;
      while ((n = s.Read(buf, 0, buf.Length)) > 0)
        s.Write(buf, 0, n);
    }

    public static PskServerOptions ServerOptions(Keystore ks) {
      return new PskServerOptions { Keystore = ks, LocalId = Fx.Idb, HandshakeTimeoutMs = 5000 };
    }

    public static PskStream Connect(int port, Keystore ks, string kpsaId = Fx.KpsaId) {
      var tcp = new TcpClient { NoDelay = true };
      tcp.Connect(IPAddress.Loopback, port);
      var s = new PskStream(tcp.GetStream());
      try {
        s.AuthenticateAsClient(new PskClientOptions { Keystore = ks, KpsaId = kpsaId,
                                                      HandshakeTimeoutMs = 5000 });
      } catch {
        s.Dispose();
        tcp.Close();
        throw;
      }
      return s;
    }

    static byte[] ReadExactly(Stream s, int n) {
      var b = new byte[n];
      int got = 0;
      while (got < n) {
        int r = s.Read(b, got, n - got);
        if (r == 0)
          throw new AssertionFailed("end of stream after " + got + " of " + n + " bytes");
        got += r;
      }
      return b;
    }

    public static void ClientAndServerOverTcp() {
      string seen = null;
      int verdictAe = -1, verdictCse = -1, kind = -1;
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = new TestServer(ServerOptions(sks), s => {
               seen = s.PeerId + "|" + s.KpsaId + "|" + s.IsCredential + "|" + s.LocalId + "|" + s.IsServer;
               kind = s.PeerKind;
               verdictAe = s.OriginatorCheck("C123", M2mpsk.ORIGINATOR_AE_CREATE);
               verdictCse = s.OriginatorCheck("/cse-9");
               Echo(s);
             })) {
        using (var c = Connect(server.Port, cks)) {
          Check.True(c.IsAuthenticated, "authenticated");
          Check.Equal(Fx.Idb, c.PeerId, "client's peer");
          Check.Equal(M2mpsk.PEER_CSE, c.PeerKind, "client's peer kind");
          Check.True(c.CipherSuite.StartsWith("TLS_PSK_"), "suite " + c.CipherSuite);
          Check.Equal("TLSv1.2", c.Protocol, "protocol");
          byte[] msg = Encoding.UTF8.GetBytes("ping over TLS-PSK");
          c.Write(msg, 0, msg.Length);
          Check.Bytes(msg, ReadExactly(c, msg.Length), "echo");
          Check.Bytes(c.ExportKeyingMaterial(16, "EXPORTER-x"), c.ExportKeyingMaterial(16, "EXPORTER-x"),
                      "exporter is stable");
        } // Dispose: close_notify, so the server's Read returns 0 and its handler ends
        server.Drain();
        Check.Equal(0, server.Errors.Count, "server errors: " + string.Join("; ", server.Errors));
        Check.Equal("12-" + Fx.KpsaId + "|" + Fx.KpsaId + "|True|" + Fx.Idb + "|True", seen, "server's view");
        Check.Equal(M2mpsk.PEER_CREDENTIAL, kind, "server's peer kind");
        Check.Equal(M2mpsk.ORIGINATOR_ACCEPT, verdictAe, "AE create");
        Check.Equal(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED, verdictCse, "another CSE");
        Check.Equal(4106, verdictCse, "RSC 4106");
      }
    }

    public static void ConcurrentClients() {
      const int clients = 12;
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = new TestServer(ServerOptions(sks), Echo)) {
        var tasks = new Task[clients];
        for (int i = 0; i < clients; i++) {
          int id = i;
          tasks[i] = Task.Factory.StartNew(() => {
            using (var c = Connect(server.Port, cks)) {
              for (int round = 0; round < 5; round++) {
                byte[] msg = Encoding.ASCII.GetBytes("client " + id + " round " + round);
                c.Write(msg, 0, msg.Length);
                Check.Bytes(msg, ReadExactly(c, msg.Length), "echo " + id);
              }
            }
          }, TaskCreationOptions.LongRunning); // a thread each, at once
        }
        Check.True(Task.WaitAll(tasks, 20000), "clients finished");
        server.Drain();
        Check.Equal(0, server.Errors.Count, "server errors: " + string.Join("; ", server.Errors));
      }
    }

    public static void LargeTransferBothWays() {
      var data = new byte[4 << 20];
      new Random(3).NextBytes(data);
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = new TestServer(ServerOptions(sks), Echo))
      using (var c = Connect(server.Port, cks)) {
        // One thread writes while this one reads the echo: a reader and a
        // writer at once, as SslStream allows.
        var writer = Task.Run(() => {
          for (int off = 0; off < data.Length; off += 100000)
            c.Write(data, off, Math.Min(100000, data.Length - off));
        });
        byte[] back = ReadExactly(c, data.Length);
        Check.True(writer.Wait(10000), "writer done");
        Check.Bytes(data, back, "4 MiB echoed");
      }
    }

    public static void WrongKeyIsAnAuthenticationException() {
      using (var sks = Fx.Store(1))
      using (var cks = Fx.Store(2))
      using (var server = new TestServer(ServerOptions(sks), Echo)) {
        var e = Check.Throws<AuthenticationException>(() => Connect(server.Port, cks), "wrong key");
        var m = (IM2mpskError)e;
        Check.Equal(M2mpsk.E_FAILED, m.Code, "code");
        Check.True(m.Reason == M2mpsk.REASON_BAD_KEY || m.Reason == M2mpsk.REASON_PEER_ALERT,
                   "reason " + M2mpsk.ReasonName(m.Reason));
        server.Drain();
        Check.Equal(1, server.Errors.Count, "the server failed too");
        var se = server.Errors[0] as M2mpskAuthenticationException;
        Check.True(se != null, "server: " + server.Errors[0]);
        Check.Equal(M2mpsk.REASON_BAD_KEY, se.Reason, "server's reason");
      }
    }

    public static void UnknownRecordIsNotFound() {
      using (var cks = Fx.Store())
      using (var server = new TestServer(ServerOptions(cks), Echo)) {
        Check.Code(M2mpsk.E_NOT_FOUND, () => Connect(server.Port, cks, "other@onem2m.com"), "unknown KpsaID");
      }
    }

    public static void SilentServerTimesOut() {
      var listener = new TcpListener(IPAddress.Loopback, 0);
      listener.Start();
      try {
        using (var cks = Fx.Store())
        using (var tcp = new TcpClient()) {
          tcp.Connect(IPAddress.Loopback, ((IPEndPoint)listener.LocalEndpoint).Port);
          using (var s = new PskStream(tcp.GetStream(), true)) {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var e = Check.Throws<M2mpskAuthenticationException>(
                () => s.AuthenticateAsClient(new PskClientOptions { Keystore = cks, KpsaId = Fx.KpsaId,
                                                                    HandshakeTimeoutMs = 500 }),
                "silent server");
            Check.Equal(M2mpsk.REASON_TIMEOUT, e.Reason, "reason");
            Check.True(sw.ElapsedMilliseconds < 3000, "bounded: " + sw.ElapsedMilliseconds + " ms");
            Check.Throws<InvalidOperationException>(() => s.Write(new byte[1], 0, 1), "use after a failed handshake");
            Check.True(!s.IsAuthenticated, "not authenticated");
          }
        }
      } finally {
        listener.Stop();
      }
    }

    public static void DisposeAfterAFailedHandshakeClosesTheInnerStream() {
      using (var sks = Fx.Store(1))
      using (var cks = Fx.Store(2))
      using (var server = new TestServer(ServerOptions(sks), Echo))
      using (var tcp = new TcpClient()) {
        tcp.Connect(IPAddress.Loopback, server.Port);
        NetworkStream ns = tcp.GetStream();
        var s = new PskStream(ns);
        Check.Throws<AuthenticationException>(
            () => s.AuthenticateAsClient(new PskClientOptions { Keystore = cks, KpsaId = Fx.KpsaId }), "wrong key");
        s.Dispose();
        Check.Throws<ObjectDisposedException>(() => ns.Write(new byte[1], 0, 1), "inner stream closed");
      }
    }

    public static void PendingReadAsyncDoesNotBlockWriteAsync() {
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = new TestServer(ServerOptions(sks), Echo))
      using (var c = Connect(server.Port, cks)) {
        var back = new byte[3];
        Task<int> read = c.ReadAsync(back, 0, 3); // waits for the echo of the write below
        Thread.Sleep(50);
        Check.True(c.WriteAsync(new byte[] { 7, 8, 9 }, 0, 3).Wait(5000), "write while a read is pending");
        Check.True(read.Wait(5000), "the echo arrived");
        Check.True(read.Result > 0 && back[0] == 7, "echoed");
      }
    }

    public static void PeerHangsUpDuringHandshake() {
      var listener = new TcpListener(IPAddress.Loopback, 0);
      listener.Start();
      try {
        var closer = Task.Run(() => listener.AcceptTcpClient().Close());
        using (var cks = Fx.Store())
        using (var tcp = new TcpClient()) {
          tcp.Connect(IPAddress.Loopback, ((IPEndPoint)listener.LocalEndpoint).Port);
          using (var s = new PskStream(tcp.GetStream())) {
            var e = Check.Throws<AuthenticationException>(
                () => s.AuthenticateAsClient(new PskClientOptions { Keystore = cks, KpsaId = Fx.KpsaId }),
                "hang-up");
            Check.True(e is IM2mpskError, "carries a code");
          }
        }
        closer.Wait(2000);
      } finally {
        listener.Stop();
      }
    }

    public static void GarbageFromTheClient() {
      using (var sks = Fx.Store())
      using (var server = new TestServer(ServerOptions(sks), Echo))
      using (var tcp = new TcpClient()) {
        tcp.Connect(IPAddress.Loopback, server.Port);
        var junk = Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        tcp.GetStream().Write(junk, 0, junk.Length);
        tcp.GetStream().ReadTimeout = 5000;
        var buf = new byte[100];
        while (tcp.GetStream().Read(buf, 0, buf.Length) > 0) {
          // the alert, then the server's close
        }
        server.Drain();
        Check.Equal(1, server.Errors.Count, "server failed the handshake");
        Check.True(server.Errors[0] is M2mpskAuthenticationException, "server: " + server.Errors[0]);
      }
    }

    public static void MisuseIsReported() {
      using (var ms = new MemoryStream())
      using (var s = new PskStream(ms, true)) {
        Check.Throws<InvalidOperationException>(() => s.Write(new byte[1], 0, 1), "write before authenticating");
        Check.Throws<InvalidOperationException>(() => { var p = s.PeerId; }, "peer before authenticating");
        Check.Throws<ArgumentNullException>(() => s.Read(null, 0, 1), "null buffer");
        Check.Throws<ArgumentOutOfRangeException>(() => s.Read(new byte[2], 1, 2), "range");
        Check.Throws<ArgumentNullException>(() => s.AuthenticateAsClient(new PskClientOptions()), "no keystore");
        Check.Throws<ArgumentNullException>(() => new PskStream(null), "null inner stream");
        s.Dispose();
        Check.Throws<ObjectDisposedException>(() => s.Read(new byte[2], 0, 2), "read after Dispose");
      }
    }

    public static void AsyncAuthentication() {
      using (var sks = Fx.Store())
      using (var cks = Fx.Store()) {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try {
          var serverTask = Task.Run(async () => {
            using (var c = await listener.AcceptTcpClientAsync())
            using (var s = new PskStream(c.GetStream())) {
              await s.AuthenticateAsServerAsync(ServerOptions(sks));
              var b = new byte[4];
              int n = await s.ReadAsync(b, 0, 4);
              await s.WriteAsync(b, 0, n);
            }
          });
          using (var tcp = new TcpClient()) {
            tcp.Connect(IPAddress.Loopback, ((IPEndPoint)listener.LocalEndpoint).Port);
            using (var s = new PskStream(tcp.GetStream())) {
              Check.True(s.AuthenticateAsClientAsync(new PskClientOptions { Keystore = cks, KpsaId = Fx.KpsaId })
                          .Wait(5000), "async handshake");
              s.WriteAsync(new byte[] { 1, 2, 3, 4 }, 0, 4).Wait(5000);
              var back = new byte[4];
              Check.True(s.ReadAsync(back, 0, 4).Wait(5000), "read");
              Check.Equal((byte)4, back[3], "echo");
            }
          }
          Check.True(serverTask.Wait(5000), "server done");
        } finally {
          listener.Stop();
        }
      }
    }

    public static void HttpRequestOverPsk() {
      var listener = new TcpListener(IPAddress.Loopback, 0);
      listener.Start();
      try {
        using (var sks = Fx.Store())
        using (var cks = Fx.Store()) {
          var ep = (IPEndPoint)listener.LocalEndpoint;
          string body;
          // An AE registering over the Credential-ID binding: accepted.
          var served = Task.Factory.StartNew(() => Examples.HttpOverPsk.ServeOne(listener, sks, Fx.Idb),
                                             TaskCreationOptions.LongRunning);
          string status = Examples.HttpOverPsk.Request(ep, cks, Fx.KpsaId, "POST", "/cse-1", "C123",
                                                       "application/json;ty=2", "{\"m2m:ae\":{}}", out body);
          Check.True(served.Wait(5000), "served");
          Check.Equal("HTTP/1.1 201 Created rsc=2001", status, "AE create");
          Check.True(body.Contains("C123"), "body " + body);
          // A request claiming another CSE's identity: 4106.
          served = Task.Factory.StartNew(() => Examples.HttpOverPsk.ServeOne(listener, sks, Fx.Idb),
                                         TaskCreationOptions.LongRunning);
          status = Examples.HttpOverPsk.Request(ep, cks, Fx.KpsaId, "GET", "/cse-1", "/cse-9",
                                                "application/json", "", out body);
          Check.True(served.Wait(5000), "served");
          Check.Equal("HTTP/1.1 403 Forbidden rsc=4106", status, "impersonation");
        }
      } finally {
        listener.Stop();
      }
    }
  }
}
