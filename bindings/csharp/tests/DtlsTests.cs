// DTLS over UdpClient: PskDatagramClient and PskDatagramServer (cookies,
// many peers on one socket, max peers, timeouts).
using System;
using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Org.M2mpsk.Tests {
  public static class DtlsTests {
    static PskDatagramServer EchoServer(Keystore ks, int handshakeMs = 3000) {
      var s = new PskDatagramServer(new IPEndPoint(IPAddress.Loopback, 0),
                                    new PskServerOptions { Keystore = ks, LocalId = Fx.Idb,
                                                           HandshakeTimeoutMs = handshakeMs },
                                    (peer, data) => peer.Send(data));
      s.Start();
      return s;
    }

    static PskDatagramClient Connect(PskDatagramServer s, Keystore ks, int ms = 5000) {
      return PskDatagramClient.Connect(s.LocalEndPoint,
                                       new PskClientOptions { Keystore = ks, KpsaId = Fx.KpsaId,
                                                              HandshakeTimeoutMs = ms });
    }

    static void WaitFor(Func<bool> cond, int ms, string what) {
      var sw = System.Diagnostics.Stopwatch.StartNew();
      while (!cond()) {
        if (sw.ElapsedMilliseconds > ms)
          throw new AssertionFailed("timed out waiting for " + what);
        Thread.Sleep(20);
      }
    }

    public static void ClientAndServerOverUdp() {
      string seen = null;
      int verdict = -1;
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = new PskDatagramServer(new IPEndPoint(IPAddress.Loopback, 0),
                                                new PskServerOptions { Keystore = sks, LocalId = Fx.Idb },
                                                (peer, data) => {
                                                  seen = peer.PeerId + "|" + peer.IsCredential;
                                                  verdict = peer.OriginatorCheck("/cse-9");
                                                  peer.Send(data);
                                                })) {
        server.Start();
        using (var c = Connect(server, cks)) {
          Check.Equal(Fx.Idb, c.PeerId, "client's peer");
          Check.True(c.CipherSuite.StartsWith("TLS_PSK_"), "suite");
          Check.Equal("DTLSv1.2", c.Association.Version(), "version");
          for (int i = 0; i < 3; i++) {
            byte[] msg = Encoding.ASCII.GetBytes("datagram " + i);
            c.Send(msg);
            Check.Bytes(msg, c.Receive(3000), "echo " + i);
          }
          Check.Equal(1, server.PeerCount, "one peer");
        }
        Check.Equal("12-" + Fx.KpsaId + "|True", seen, "server's view");
        Check.Equal(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED, verdict, "originator check");
        WaitFor(() => server.PeerCount == 0, 3000, "close_notify to free the peer");
      }
    }

    public static void ManyPeersOnOneSocket() {
      const int n = 10;
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = EchoServer(sks)) {
        var tasks = new Task[n];
        var connected = new CountdownEvent(n);
        var release = new ManualResetEventSlim();
        for (int i = 0; i < n; i++) {
          int id = i;
          tasks[i] = Task.Factory.StartNew(() => {
            using (var c = Connect(server, cks)) {
                connected.Signal();
              byte[] msg = Encoding.ASCII.GetBytes("peer " + id);
              c.Send(msg);
              Check.Bytes(msg, c.Receive(5000), "echo " + id);
              release.Wait(10000);
            }
          }, TaskCreationOptions.LongRunning); // a thread each, at once
        }
        Check.True(connected.Wait(15000), "all connected");
        WaitFor(() => server.PeerCount == n, 3000, n + " peers at once");
        release.Set();
        Check.True(Task.WaitAll(tasks, 10000), "clients done");
      }
    }

    public static void MaxPeersIsEnforced() {
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = EchoServer(sks)) {
        server.MaxPeers = 2;
        using (var a = Connect(server, cks))
        using (var b = Connect(server, cks)) {
          var e = Check.Throws<M2mpskAuthenticationException>(() => Connect(server, cks, 700), "a third peer");
          Check.Equal(M2mpsk.REASON_TIMEOUT, e.Reason, "ignored, so it times out");
          Check.True(server.Dropped > 0, "dropped datagrams counted");
          Check.Equal(2, server.PeerCount, "still two");
        }
      }
    }

    public static void MaxHandshakesIsEnforced() {
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = EchoServer(sks, 1500))
      using (var udp = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0)))
      using (var ccfg = new Config())
      using (var half = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_DTLS, ccfg, cks, Fx.KpsaId)) {
        server.MaxHandshakes = 1;
        // A peer that answers the cookie and then goes silent holds the one
        // handshake slot until the handshake timeout.
        half.Start(Fx.Now);
        byte[] hello = half.Drain();
        udp.Send(hello, hello.Length, server.LocalEndPoint);
        IPEndPoint from = null;
        udp.Client.ReceiveTimeout = 3000;
        byte[] hvr = udp.Receive(ref from);
        half.Feed(hvr, Fx.Now);
        byte[] hello2 = half.Drain();
        udp.Send(hello2, hello2.Length, server.LocalEndPoint);
        WaitFor(() => server.PeerCount == 1, 3000, "the half-open peer");
        var e = Check.Throws<M2mpskAuthenticationException>(() => Connect(server, cks, 500), "a second handshake");
        Check.Equal(M2mpsk.REASON_TIMEOUT, e.Reason, "ignored while the slot is taken");
        WaitFor(() => server.PeerCount == 0, 5000, "the half-open peer to time out");
        Check.True(server.HandshakeFailures >= 1, "counted as a failure");
        using (var c = Connect(server, cks)) {
          c.Send(new byte[] { 1 });
          Check.Bytes(new byte[] { 1 }, c.Receive(3000), "the slot is free again");
        }
      }
    }

    public static void WrongKeyFails() {
      using (var sks = Fx.Store(1))
      using (var cks = Fx.Store(2))
      using (var server = EchoServer(sks)) {
        var e = Check.Throws<AuthenticationException>(() => Connect(server, cks, 3000), "wrong key");
        Check.Equal(M2mpsk.E_FAILED, ((IM2mpskError)e).Code, "code");
        WaitFor(() => server.HandshakeFailures == 1 && server.PeerCount == 0, 3000, "the server to drop the peer");
      }
    }

    public static void GarbageCostsNoState() {
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = EchoServer(sks))
      using (var udp = new UdpClient(AddressFamily.InterNetwork)) {
        var junk = new byte[100];
        new Random(5).NextBytes(junk);
        for (int i = 0; i < 20; i++)
          udp.Send(junk, junk.Length, server.LocalEndPoint);
        WaitFor(() => server.Dropped >= 20, 3000, "garbage dropped");
        Check.Equal(0, server.PeerCount, "no peer for garbage");
        using (var c = Connect(server, cks)) {
          c.Send(new byte[] { 9 });
          Check.Bytes(new byte[] { 9 }, c.Receive(3000), "still serving");
        }
      }
    }

    public static void IdlePeersAreClosed() {
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = EchoServer(sks)) {
        server.IdleTimeoutMs = 300;
        using (var c = Connect(server, cks)) {
          Check.Equal(1, server.PeerCount, "connected");
          Check.True(c.Receive(3000) == null, "close_notify from the server after 300 ms idle");
          Check.Equal(0, server.PeerCount, "forgotten");
        }
      }
    }

    public static void SilentServerTimesOut() {
      using (var cks = Fx.Store())
      using (var silent = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0))) {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Check.Throws<M2mpskAuthenticationException>(
            () => PskDatagramClient.Connect((IPEndPoint)silent.Client.LocalEndPoint,
                                            new PskClientOptions { Keystore = cks, KpsaId = Fx.KpsaId,
                                                                   HandshakeTimeoutMs = 600 }),
            "silent server");
        Check.Equal(M2mpsk.REASON_TIMEOUT, e.Reason, "reason");
        Check.True(sw.ElapsedMilliseconds < 3000, "bounded");
        Check.True(silent.Available > 0, "the ClientHello was sent");
      }
    }

    public static void DisposedClientRefusesUse() {
      using (var sks = Fx.Store())
      using (var cks = Fx.Store())
      using (var server = EchoServer(sks)) {
        var c = Connect(server, cks);
        c.Dispose();
        c.Dispose();
        Check.Throws<ObjectDisposedException>(() => c.Send(new byte[1]), "send after Dispose");
        Check.Throws<ArgumentNullException>(() => PskDatagramClient.Connect(null, new PskClientOptions()), "null server");
      }
    }
  }
}
