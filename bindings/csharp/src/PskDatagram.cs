using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading;

namespace Org.M2mpsk {
  static class DtlsClock {
    static readonly Stopwatch clock = Stopwatch.StartNew();
    internal static long Now => clock.ElapsedMilliseconds;
    internal static long UnixTime => DateTimeOffset.UtcNow.ToUnixTimeSeconds();
  }

  /// <summary>
  /// A DTLS 1.2 PSK client over a UDP socket connected to one server: the
  /// handshake (with retransmissions) on construction through Connect(),
  /// then one datagram per Send() and Receive(). Not thread-safe: use it
  /// from one thread at a time. Dispose sends close_notify.
  /// </summary>
  public sealed class PskDatagramClient : IDisposable {
    readonly UdpClient udp;
    readonly Association assoc;
    readonly Config ownedConfig;
    readonly byte[] buf = new byte[65536];
    bool disposed;

    PskDatagramClient(UdpClient udp, Association assoc, Config ownedConfig) {
      this.udp = udp;
      this.assoc = assoc;
      this.ownedConfig = ownedConfig;
    }

    /// <summary>Connects to server and runs the handshake. Throws
    /// M2mpskAuthenticationException when it fails (REASON_TIMEOUT when
    /// nothing answers within options.HandshakeTimeoutMs), M2mpskException
    /// for a bad record or configuration, SocketException.</summary>
    public static PskDatagramClient Connect(IPEndPoint server, PskClientOptions options) {
      if (server == null)
        throw new ArgumentNullException(nameof(server));
      if (options == null || options.Keystore == null || options.KpsaId == null)
        throw new ArgumentNullException(nameof(options), "Keystore and KpsaId are required");
      var udp = new UdpClient(server.AddressFamily);
      Config owned = null;
      Association a = null;
      try {
        udp.Connect(server);
        Config cfg = options.Config;
        if (cfg == null)
          cfg = owned = new Config();
        a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_DTLS, cfg, options.Keystore,
                            options.KpsaId);
        var c = new PskDatagramClient(udp, a, owned);
        c.Handshake(options.HandshakeTimeoutMs);
        return c;
      } catch {
        a?.Dispose();
        owned?.Dispose();
        udp.Close();
        throw;
      }
    }

    void Handshake(int timeoutMs) {
      long deadline = DtlsClock.Now + timeoutMs;
      assoc.Start(DtlsClock.Now, DtlsClock.UnixTime);
      SendPending();
      while (assoc.State() != M2mpsk.STATE_ESTABLISHED) {
        long now = DtlsClock.Now;
        if (now >= deadline)
          throw new M2mpskAuthenticationException(M2mpsk.E_FAILED, M2mpsk.REASON_TIMEOUT,
                                                  "no DTLS handshake within " + timeoutMs + " ms");
        long wait = deadline - now;
        long next = assoc.NextTimeout();
        if (next >= 0)
          wait = Math.Min(wait, Math.Max(0, next - now));
        if (udp.Client.Poll((int)Math.Min(wait, int.MaxValue / 1000) * 1000, SelectMode.SelectRead)) {
          int n;
          try {
            n = udp.Client.Receive(buf);
          } catch (SocketException) {
            continue; // ICMP port unreachable: the server may not be up yet
          }
          if (n == 0)
            continue;
          try {
            assoc.Feed(buf, 0, n, DtlsClock.Now);
          } catch (M2mpskAuthenticationException) {
            SendPending(); // the alert
            throw;
          }
        } else {
          assoc.HandleTimeout(DtlsClock.Now); // a retransmission, or REASON_TIMEOUT
        }
        SendPending();
      }
    }

    void SendPending() {
      for (;;) {
        int n = assoc.Drain(buf, 0, buf.Length);
        if (n == 0)
          return;
        try {
          udp.Client.Send(buf, n, SocketFlags.None);
        } catch (SocketException) {
          // Datagrams may be lost; the retransmission timer covers it.
        }
      }
    }

    void CheckOpen() {
      if (disposed)
        throw new ObjectDisposedException(nameof(PskDatagramClient));
    }

    public Association Association => assoc;
    public string PeerId { get { CheckOpen(); return assoc.PeerId(); } }
    public string KpsaId { get { CheckOpen(); return assoc.KpsaId(); } }
    public string CipherSuite { get { CheckOpen(); return assoc.Suite(); } }
    public IPEndPoint LocalEndPoint => (IPEndPoint)udp.Client.LocalEndPoint;

    /// <summary>Sends data[offset .. offset + count) as one record in one
    /// datagram (at most 16384 bytes).</summary>
    public void Send(byte[] data, int offset, int count) {
      CheckOpen();
      assoc.Write(data, offset, count);
      SendPending();
    }

    public void Send(byte[] data) {
      CheckOpen();
      assoc.Write(data);
      SendPending();
    }

    /// <summary>The next application datagram; null once the server has
    /// sent close_notify. Throws TimeoutException when nothing arrives
    /// within timeoutMs, M2mpskException when the association
    /// fails.</summary>
    public byte[] Receive(int timeoutMs) {
      CheckOpen();
      long deadline = DtlsClock.Now + timeoutMs;
      for (;;) {
        byte[] d;
        try {
          d = assoc.Read();
        } catch (M2mpskException e) when (e.Code == M2mpsk.E_CLOSED) {
          return null;
        }
        if (d.Length > 0)
          return d;
        long now = DtlsClock.Now;
        if (now >= deadline)
          throw new TimeoutException("no datagram within " + timeoutMs + " ms");
        long wait = deadline - now;
        long next = assoc.NextTimeout();
        if (next >= 0)
          wait = Math.Min(wait, Math.Max(0, next - now));
        if (!udp.Client.Poll((int)wait * 1000, SelectMode.SelectRead)) {
          if (next >= 0 && DtlsClock.Now >= next) {
            assoc.HandleTimeout(DtlsClock.Now);
            SendPending();
          }
          continue;
        }
        int n;
        try {
          n = udp.Client.Receive(buf);
        } catch (SocketException) {
          continue;
        }
        if (n == 0)
          continue;
        assoc.Feed(buf, 0, n, DtlsClock.Now);
        SendPending();
      }
    }

    /// <summary>See PskStream.OriginatorCheck.</summary>
    public int OriginatorCheck(string from, long flags = 0) {
      CheckOpen();
      return assoc.OriginatorCheck(from, flags);
    }

    public void Dispose() {
      if (disposed)
        return;
      disposed = true;
      try {
        if (assoc.State() == M2mpsk.STATE_ESTABLISHED) {
          assoc.CloseNotify();
          SendPending();
        }
      } catch (Exception) {
        // Nothing more to say to the peer.
      }
      assoc.Dispose();
      ownedConfig?.Dispose();
      udp.Close();
    }
  }

  /// <summary>One peer of a PskDatagramServer: its association, once
  /// established.</summary>
  public sealed class PskDatagramPeer {
    readonly PskDatagramServer server;
    internal readonly Association Assoc;
    internal long LastActivity;
    internal bool Announced;

    internal PskDatagramPeer(PskDatagramServer server, EndPoint endPoint, Association a) {
      this.server = server;
      EndPoint = endPoint;
      Assoc = a;
    }

    public EndPoint EndPoint { get; private set; }
    public string PeerId { get { lock (server.Gate) return Assoc.PeerId(); } }
    public string KpsaId { get { lock (server.Gate) return Assoc.KpsaId(); } }
    public bool IsCredential { get { lock (server.Gate) return Assoc.PeerIdIsCredential(); } }
    public string CipherSuite { get { lock (server.Gate) return Assoc.Suite(); } }

    /// <summary>See PskStream.OriginatorCheck.</summary>
    public int OriginatorCheck(string from, long flags = 0) {
      lock (server.Gate)
        return Assoc.OriginatorCheck(from, flags);
    }

    /// <summary>Sends one datagram (at most 16384 bytes) to this peer; from
    /// any thread.</summary>
    public void Send(byte[] data) {
      server.SendTo(this, data);
    }
  }

  /// <summary>
  /// A DTLS 1.2 PSK server for many peers on one UDP socket. A peer first
  /// goes through the stateless cookie exchange (Config.DtlsListen), so a
  /// forged source address costs nothing; then it gets an association,
  /// up to MaxPeers of them. A peer is dropped when its handshake fails or
  /// times out (the config's handshake timeout), or after IdleTimeoutMs
  /// without a datagram. OnMessage runs on the server's thread with each
  /// application datagram.
  /// </summary>
  public sealed class PskDatagramServer : IDisposable {
    internal readonly object Gate = new object();
    readonly Socket socket;
    readonly Keystore keystore;
    readonly Config config;
    readonly bool ownsConfig;
    readonly Action<PskDatagramPeer, byte[]> onMessage;
    readonly Dictionary<string, PskDatagramPeer> peers = new Dictionary<string, PskDatagramPeer>();
    readonly byte[] buf = new byte[65536];
    readonly byte[] sendBuf = new byte[65536];
    Thread thread;
    volatile bool stopping;
    int handshaking; // peers not yet established
    long nextTick;

    /// <summary>At most this many peers hold an association (handshaking
    /// or established); a new peer past it is ignored.</summary>
    public int MaxPeers { get; set; } = 256;
    /// <summary>At most this many of them still handshaking, below
    /// MaxPeers so that half-open handshakes cannot take every
    /// slot.</summary>
    public int MaxHandshakes { get; set; } = 64;
    /// <summary>A peer silent this long is closed and forgotten.</summary>
    public int IdleTimeoutMs { get; set; } = 60000;
    /// <summary>Datagrams dropped: garbage from unknown peers, peers past
    /// MaxPeers.</summary>
    public long Dropped { get; private set; }
    /// <summary>Handshakes that failed or timed out.</summary>
    public long HandshakeFailures { get; private set; }
    /// <summary>Called (on the server's thread) when an exception escapes
    /// OnMessage or a peer fails; may be null.</summary>
    public Action<Exception> OnError { get; set; }

    public PskDatagramServer(IPEndPoint bind, PskServerOptions options,
                             Action<PskDatagramPeer, byte[]> onMessage) {
      if (bind == null || onMessage == null)
        throw new ArgumentNullException(bind == null ? nameof(bind) : nameof(onMessage));
      if (options == null || options.Keystore == null ||
          (options.Config == null && options.LocalId == null))
        throw new ArgumentNullException(nameof(options), "Keystore and Config or LocalId are required");
      keystore = options.Keystore;
      config = options.Config;
      if (config == null) {
        config = new Config();
        ownsConfig = true;
        config.AddLocalId(options.LocalId);
        config.SetHandshakeTimeout((uint)options.HandshakeTimeoutMs);
      }
      this.onMessage = onMessage;
      socket = new Socket(bind.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
      socket.Bind(bind);
    }

    public IPEndPoint LocalEndPoint => (IPEndPoint)socket.LocalEndPoint;

    public int PeerCount {
      get {
        lock (Gate)
          return peers.Count;
      }
    }

    /// <summary>Starts serving on a background thread.</summary>
    public void Start() {
      if (thread != null)
        throw new InvalidOperationException("already started");
      thread = new Thread(Loop) { IsBackground = true, Name = "m2mpsk-dtls" };
      thread.Start();
    }

    void Loop() {
      while (!stopping) {
        bool readable;
        try {
          readable = socket.Poll(50 * 1000, SelectMode.SelectRead);
        } catch (ObjectDisposedException) {
          return;
        }
        if (readable) {
          EndPoint from = new IPEndPoint(socket.AddressFamily == AddressFamily.InterNetworkV6
                                             ? IPAddress.IPv6Any : IPAddress.Any, 0);
          int n;
          try {
            n = socket.ReceiveFrom(buf, ref from);
          } catch (SocketException) {
            continue; // an ICMP error for an earlier send
          } catch (ObjectDisposedException) {
            return;
          }
          if (n > 0)
            lock (Gate)
              OnDatagram(from, n);
        }
        lock (Gate)
          Tick();
      }
    }

    void Report(Exception e) {
      try {
        OnError?.Invoke(e);
      } catch (Exception) {
        // The error handler's own failure has nowhere to go.
      }
    }

    void OnDatagram(EndPoint from, int n) {
      string tag = from.ToString();
      long now = DtlsClock.Now;
      PskDatagramPeer p;
      if (!peers.TryGetValue(tag, out p)) {
        if (peers.Count >= MaxPeers || handshaking >= MaxHandshakes) {
          Dropped++;
          return;
        }
        byte[] hvr = null;
        try {
          hvr = config.DtlsListen(tag, buf, 0, n);
        } catch (M2mpskException e) when (e.Code == M2mpsk.E_UNSUPPORTED) {
          // No cookie exchange with this engine: take the peer at once.
        } catch (M2mpskException) {
          Dropped++; // not a ClientHello
          return;
        }
        if (hvr != null) {
          SendRaw(hvr, hvr.Length, from);
          return;
        }
        Association a;
        try {
          a = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_DTLS, config, keystore);
        } catch (M2mpskException e) {
          Dropped++; // E_LIMIT: the config's max handshakes
          Report(e);
          return;
        }
        p = new PskDatagramPeer(this, from, a);
        try {
          a.SetPeerTag(tag);
          a.Start(now, DtlsClock.UnixTime);
        } catch (M2mpskException e) {
          a.Dispose();
          HandshakeFailures++;
          Report(e);
          return;
        }
        peers[tag] = p;
        handshaking++;
      }
      p.LastActivity = now;
      try {
        p.Assoc.Feed(buf, 0, n, now);
      } catch (M2mpskException e) when (e.Code == M2mpsk.E_LIMIT) {
        // Nothing consumed: read what waits first; the datagram is dropped.
      } catch (Exception e) when (e is IM2mpskError) {
        Fail(p, e);
        return;
      }
      Flush(p);
      Deliver(p);
    }

    void Deliver(PskDatagramPeer p) {
      if (p.Assoc.State() != M2mpsk.STATE_ESTABLISHED)
        return;
      if (!p.Announced) {
        p.Announced = true;
        handshaking--;
      }
      for (;;) {
        byte[] d;
        try {
          d = p.Assoc.Read();
        } catch (M2mpskException e) when (e.Code == M2mpsk.E_CLOSED) {
          Remove(p, false);
          return;
        } catch (M2mpskException e) {
          Fail(p, e);
          return;
        }
        if (d.Length == 0)
          return;
        try {
          onMessage(p, d);
        } catch (Exception e) {
          Report(e);
        }
        if (!peers.ContainsKey(p.EndPoint.ToString()))
          return;
      }
    }

    // Timers are checked every 20 ms, not after every datagram: the scan
    // is over every peer.
    void Tick() {
      long now = DtlsClock.Now;
      if (now < nextTick)
        return;
      nextTick = now + 20;
      List<PskDatagramPeer> due = null;
      foreach (var p in peers.Values) {
        long next = p.Assoc.NextTimeout();
        if ((next >= 0 && next <= now) || now - p.LastActivity >= IdleTimeoutMs)
          (due ?? (due = new List<PskDatagramPeer>())).Add(p);
      }
      if (due == null)
        return;
      foreach (var p in due) {
        if (now - p.LastActivity >= IdleTimeoutMs) {
          Remove(p, true);
          continue;
        }
        try {
          p.Assoc.HandleTimeout(now);
          Flush(p);
        } catch (Exception e) when (e is IM2mpskError) {
          Fail(p, e);
        }
      }
    }

    void Fail(PskDatagramPeer p, Exception e) {
      if (!p.Announced)
        HandshakeFailures++;
      try {
        Flush(p); // the alert
      } catch (Exception) {
      }
      Report(e);
      Remove(p, false);
    }

    void Remove(PskDatagramPeer p, bool notify) {
      if (notify && p.Assoc.State() == M2mpsk.STATE_ESTABLISHED) {
        try {
          p.Assoc.CloseNotify();
          Flush(p);
        } catch (Exception) {
        }
      }
      if (peers.Remove(p.EndPoint.ToString()) && !p.Announced)
        handshaking--;
      p.Assoc.Dispose();
    }

    void Flush(PskDatagramPeer p) {
      for (;;) {
        int n = p.Assoc.Drain(sendBuf, 0, sendBuf.Length);
        if (n == 0)
          return;
        SendRaw(sendBuf, n, p.EndPoint);
      }
    }

    void SendRaw(byte[] b, int n, EndPoint to) {
      try {
        socket.SendTo(b, n, SocketFlags.None, to);
      } catch (SocketException) {
        // Lost like any datagram.
      }
    }

    internal void SendTo(PskDatagramPeer p, byte[] data) {
      lock (Gate) {
        if (!peers.ContainsKey(p.EndPoint.ToString()))
          throw new M2mpskException(M2mpsk.E_INVALID, M2mpsk.REASON_NONE, "the peer is gone");
        p.Assoc.Write(data);
        Flush(p);
      }
    }

    /// <summary>Stops the loop, sends close_notify to every established
    /// peer and frees everything.</summary>
    public void Dispose() {
      stopping = true;
      thread?.Join(2000);
      lock (Gate) {
        foreach (var p in new List<PskDatagramPeer>(peers.Values))
          Remove(p, true);
        socket.Close();
        if (ownsConfig)
          config.Dispose();
      }
    }
  }
}
