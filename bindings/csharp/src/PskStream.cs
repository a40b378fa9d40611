using System;
using System.IO;
using System.Threading;
using System.Threading.Tasks;

namespace Org.M2mpsk {
  /// <summary>What the client side of a PskStream needs: the keystore
  /// holding the record and the record's KpsaID.</summary>
  public sealed class PskClientOptions {
    /// <summary>The records; the stream's association holds its own
    /// reference, so the keystore may be disposed first.</summary>
    public Keystore Keystore { get; set; }
    /// <summary>The KpsaID of the record to use (relative@fqdn).</summary>
    public string KpsaId { get; set; }
    /// <summary>Settings (suites, profile, engine); null for the
    /// defaults.</summary>
    public Config Config { get; set; }
    /// <summary>The whole handshake's deadline, in milliseconds.</summary>
    public int HandshakeTimeoutMs { get; set; } = 10000;
  }

  /// <summary>What the server side of a PskStream needs: the keystore and
  /// either a Config with a local identity (IdB) or that identity.</summary>
  public sealed class PskServerOptions {
    public Keystore Keystore { get; set; }
    /// <summary>Settings with at least one local identity (AddLocalId); it
    /// may be shared by every connection of a server (it is frozen by the
    /// first one). Null: LocalId is used with the defaults.</summary>
    public Config Config { get; set; }
    /// <summary>This server's CSE-ID (IdB), when Config is null.</summary>
    public string LocalId { get; set; }
    public int HandshakeTimeoutMs { get; set; } = 10000;
  }

  /// <summary>
  /// A TLS 1.2 PSK security association (oneM2M TS-0003 8.2.2.1) over an
  /// inner stream, shaped like System.Net.Security.SslStream: construct it
  /// over a NetworkStream, authenticate as client or server, then Read and
  /// Write plaintext. Dispose sends close_notify and releases the
  /// association (and the inner stream unless leaveInnerStreamOpen).
  /// One reader and one writer may use it at the same time, as with
  /// SslStream.
  /// </summary>
  public class PskStream : Stream {
    const int RecordMax = 16384;
    readonly Stream inner;
    readonly bool leaveInnerStreamOpen;
    readonly object assocLock = new object(); // the association: one call at a time
    readonly object sendLock = new object();  // the inner stream's writes, in drain order
    readonly object readLock = new object();
    readonly object writeLock = new object();
    readonly byte[] sendBuf = new byte[RecordMax + 2048];
    readonly byte[] recvBuf = new byte[RecordMax + 2048];
    int recvLen; // bytes of recvBuf not yet consumed (E_LIMIT)
    Association assoc;
    Config ownedConfig;
    bool authenticated, innerEof, disposed;
    bool failed; // the handshake failed: the association is gone, the inner stream not
    static readonly System.Diagnostics.Stopwatch Clock = System.Diagnostics.Stopwatch.StartNew();

    public PskStream(Stream innerStream, bool leaveInnerStreamOpen = false) {
      if (innerStream == null)
        throw new ArgumentNullException(nameof(innerStream));
      inner = innerStream;
      this.leaveInnerStreamOpen = leaveInnerStreamOpen;
    }

    static long Now => Clock.ElapsedMilliseconds;
    static long UnixTime => DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>The inner stream.</summary>
    public Stream InnerStream => inner;
    public bool IsAuthenticated => authenticated && !disposed && !failed;
    public bool IsServer { get; private set; }
    /// <summary>The association underneath, for what the stream does not
    /// expose (events, keying material); null before authenticating.</summary>
    public Association Association => assoc;
    /// <summary>The identity the session is bound to: a client sees the
    /// server's CSE-ID (IdB); a server sees the client's IdA, or the
    /// Credential-ID "12-&lt;KpsaID&gt;" when the record has none.</summary>
    public string PeerId => Locked(a => a.PeerId());
    /// <summary>True when PeerId is a Credential-ID.</summary>
    public bool IsCredential => Locked(a => a.PeerIdIsCredential());
    /// <summary>PEER_CREDENTIAL when bound to a Credential-ID, else
    /// PEER_CSE (PeerId is a CSE-ID) or PEER_AE.</summary>
    public int PeerKind => Locked(a => a.PeerIdIsCredential() ? M2mpsk.PEER_CREDENTIAL
                                       : IsAeId(a.PeerId()) ? M2mpsk.PEER_AE : M2mpsk.PEER_CSE);
    /// <summary>The identity this side assumed (a server's IdB).</summary>
    public string LocalId => Locked(a => a.LocalId());
    /// <summary>The KpsaID in use.</summary>
    public string KpsaId => Locked(a => a.KpsaId());
    /// <summary>The IANA name of the negotiated suite.</summary>
    public string CipherSuite => Locked(a => a.Suite());
    /// <summary>"TLSv1.2".</summary>
    public string Protocol => Locked(a => a.Version());

    /// A CSE-ID is what IdbValidate accepts; any other binding is an AE-ID.
    static bool IsAeId(string id) {
      try {
        M2mpsk.IdbValidate(id);
        return false;
      } catch (M2mpskException) {
        return true;
      }
    }

    T Locked<T>(Func<Association, T> f) {
      lock (assocLock) {
        if (disposed)
          throw new ObjectDisposedException(nameof(PskStream));
        if (assoc == null || failed)
          throw new InvalidOperationException("the stream is not authenticated");
        return f(assoc);
      }
    }

    /// <summary>Decides whether a request that arrived on this association
    /// may carry the originator from (its From; null or "" when absent):
    /// returns 0 (ORIGINATOR_ACCEPT), 4106 (ORIGINATOR_NOT_AUTHENTICATED)
    /// or 4107 (ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED), the RSC to
    /// answer with. flags: 0 or ORIGINATOR_AE_CREATE |
    /// ORIGINATOR_ALLOW_UNSECURED_AE.</summary>
    public int OriginatorCheck(string from, long flags = 0) {
      return Locked(a => a.OriginatorCheck(from, flags));
    }

    /// <summary>Binds the AE-ID a CSE assigned at registration over a
    /// Credential-ID binding; see Association.BindAeId.</summary>
    public void BindAeId(string aeId) {
      Locked(a => { a.BindAeId(aeId); return 0; });
    }

    /// <summary>RFC 5705 keying material of the session.</summary>
    public byte[] ExportKeyingMaterial(int length, string label, byte[] context = null) {
      return Locked(a => a.ExportKeyingMaterial(length, label, context));
    }

    /// <summary>Runs the client's handshake. Throws
    /// M2mpskAuthenticationException when it fails (Code E_FAILED, Reason:
    /// REASON_BAD_KEY, REASON_UNKNOWN_IDENTITY, REASON_TIMEOUT, ...),
    /// M2mpskException for a bad record or configuration (E_NOT_FOUND,
    /// E_KPSA_ID, ...), IOException from the inner stream.</summary>
    public void AuthenticateAsClient(PskClientOptions options) {
      if (options == null || options.Keystore == null || options.KpsaId == null)
        throw new ArgumentNullException(nameof(options), "Keystore and KpsaId are required");
      Config cfg = options.Config;
      Begin();
      if (cfg == null)
        cfg = ownedConfig = new Config();
      Run(new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, options.Keystore,
                          options.KpsaId), options.HandshakeTimeoutMs, false);
    }

    /// <summary>Runs the server's handshake; see AuthenticateAsClient for
    /// what it throws.</summary>
    public void AuthenticateAsServer(PskServerOptions options) {
      if (options == null || options.Keystore == null ||
          (options.Config == null && options.LocalId == null))
        throw new ArgumentNullException(nameof(options), "Keystore and Config or LocalId are required");
      Config cfg = options.Config;
      Begin();
      if (cfg == null) {
        cfg = ownedConfig = new Config();
        cfg.AddLocalId(options.LocalId);
      }
      Run(new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cfg, options.Keystore),
          options.HandshakeTimeoutMs, true);
    }

    public Task AuthenticateAsClientAsync(PskClientOptions options) {
      return Task.Run(() => AuthenticateAsClient(options));
    }

    public Task AuthenticateAsServerAsync(PskServerOptions options) {
      return Task.Run(() => AuthenticateAsServer(options));
    }

    void Begin() {
      if (disposed)
        throw new ObjectDisposedException(nameof(PskStream));
      if (assoc != null)
        throw new InvalidOperationException("already authenticated (or tried)");
    }

    void Run(Association a, int timeoutMs, bool server) {
      lock (assocLock)
        assoc = a;
      IsServer = server;
      long deadline = Now + timeoutMs;
      int savedTimeout = inner.CanTimeout ? inner.ReadTimeout : Timeout.Infinite;
      try {
        lock (assocLock)
          a.Start(Now, UnixTime);
        SendPending();
        while (true) {
          lock (assocLock)
            if (a.State() == M2mpsk.STATE_ESTABLISHED)
              break;
          long left = deadline - Now;
          if (left <= 0)
            throw new M2mpskAuthenticationException(M2mpsk.E_FAILED, M2mpsk.REASON_TIMEOUT,
                                                    "no handshake within " + timeoutMs + " ms");
          if (inner.CanTimeout)
            inner.ReadTimeout = (int)left;
          int n;
          try {
            n = inner.Read(recvBuf, 0, recvBuf.Length);
          } catch (IOException e) when (Now >= deadline) {
            throw new M2mpskAuthenticationException(M2mpsk.E_FAILED, M2mpsk.REASON_TIMEOUT,
                                                    "no handshake within " + timeoutMs + " ms: " +
                                                    e.Message);
          }
          if (n == 0)
            throw new M2mpskAuthenticationException(M2mpsk.E_FAILED, M2mpsk.REASON_PROTOCOL,
                                                    "the peer closed the connection during the handshake");
          try {
            lock (assocLock)
              a.Feed(recvBuf, 0, n, Now);
          } catch (M2mpskAuthenticationException) {
            try {
              SendPending(); // the alert, if the peer is still there
            } catch (IOException) {
            }
            throw;
          }
          SendPending(); // the next flight
        }
        authenticated = true;
      } catch (Exception) {
        // The stream cannot be used after a failed handshake, as SslStream's;
        // Dispose still closes the inner stream.
        lock (assocLock) {
          a.Dispose();
          failed = true;
        }
        throw;
      } finally {
        if (inner.CanTimeout)
          try {
            inner.ReadTimeout = savedTimeout;
          } catch (Exception) {
            // The inner stream is already closed.
          }
      }
    }

    /// Writes whatever the association has to send, in order.
    void SendPending() {
      lock (sendLock) {
        bool any = false;
        for (;;) {
          int n;
          lock (assocLock) {
            if (assoc == null || failed || disposed)
              return;
            try {
              n = assoc.Drain(sendBuf, 0, sendBuf.Length);
            } catch (M2mpskException e) when (e.Code == M2mpsk.E_STATE || e.Code == M2mpsk.E_INVALID) {
              return; // not started, or disposed by another thread
            }
          }
          if (n == 0)
            break;
          inner.Write(sendBuf, 0, n);
          any = true;
        }
        if (any)
          inner.Flush();
      }
    }

    void CheckReady() {
      if (disposed)
        throw new ObjectDisposedException(nameof(PskStream));
      if (failed)
        throw new InvalidOperationException("the handshake failed");
      if (!authenticated)
        throw new InvalidOperationException("authenticate first (AuthenticateAsClient/AsServer)");
    }

    static void CheckArgs(byte[] buffer, int offset, int count) {
      if (buffer == null)
        throw new ArgumentNullException(nameof(buffer));
      if (offset < 0 || count < 0 || offset > buffer.Length - count)
        throw new ArgumentOutOfRangeException(nameof(offset), "outside the buffer");
    }

    /// <summary>Reads decrypted data; 0 at the end of the stream (the
    /// peer's close_notify, or the inner stream's end). Throws
    /// M2mpskException when a record fails (E_FAILED) and IOException
    /// from the inner stream.</summary>
    public override int Read(byte[] buffer, int offset, int count) {
      CheckArgs(buffer, offset, count);
      CheckReady();
      if (count == 0)
        return 0;
      lock (readLock) {
        for (;;) {
          int n;
          lock (assocLock) {
            if (disposed)
              throw new ObjectDisposedException(nameof(PskStream));
            try {
              n = assoc.Read(buffer, offset, count);
            } catch (M2mpskException e) when (e.Code == M2mpsk.E_CLOSED) {
              return 0;
            }
          }
          if (n > 0)
            return n;
          if (recvLen == 0) {
            if (innerEof)
              return 0;
            recvLen = inner.Read(recvBuf, 0, recvBuf.Length);
            if (recvLen == 0) {
              innerEof = true;
              return 0;
            }
          }
          try {
            lock (assocLock)
              assoc.Feed(recvBuf, 0, recvLen, Now);
            recvLen = 0;
          } catch (M2mpskException e) when (e.Code == M2mpsk.E_LIMIT) {
            // Nothing consumed: read what waits, then feed the same bytes.
          } finally {
            SendPending();
          }
        }
      }
    }

    /// <summary>Encrypts and sends all of buffer[offset .. offset + count).
    /// Throws M2mpskException (E_CLOSED after close, E_FAILED) and
    /// IOException from the inner stream.</summary>
    public override void Write(byte[] buffer, int offset, int count) {
      CheckArgs(buffer, offset, count);
      CheckReady();
      lock (writeLock) {
        while (count > 0) {
          int chunk = Math.Min(count, RecordMax);
          lock (assocLock) {
            if (disposed)
              throw new ObjectDisposedException(nameof(PskStream));
            assoc.Write(buffer, offset, chunk);
          }
          SendPending();
          offset += chunk;
          count -= chunk;
        }
      }
    }

    public override void Flush() {
      inner.Flush();
    }

    // Stream's own async methods run one operation at a time, reads and
    // writes together (its BeginRead/BeginWrite share a semaphore): a
    // pending ReadAsync would hold up every WriteAsync. SslStream allows
    // one of each at once, and so do these.
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count,
                                        CancellationToken cancellationToken) {
      CheckArgs(buffer, offset, count);
      return Task.Run(() => Read(buffer, offset, count), cancellationToken);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count,
                                    CancellationToken cancellationToken) {
      CheckArgs(buffer, offset, count);
      return Task.Run(() => Write(buffer, offset, count), cancellationToken);
    }

    public override Task FlushAsync(CancellationToken cancellationToken) {
      return inner.FlushAsync(cancellationToken);
    }

    /// <summary>Sends close_notify (once; later writes fail with
    /// E_CLOSED), as SslStream.ShutdownAsync does.</summary>
    public void Shutdown() {
      CheckReady();
      lock (assocLock)
        assoc.CloseNotify();
      SendPending();
    }

    protected override void Dispose(bool disposing) {
      try {
        if (disposing && !disposed) {
          if (authenticated) {
            try {
              lock (assocLock)
                if (assoc.State() == M2mpsk.STATE_ESTABLISHED)
                  assoc.CloseNotify();
              SendPending();
            } catch (Exception) {
              // The peer is gone or the association failed: nothing to say.
            }
          }
          lock (assocLock) {
            disposed = true;
            assoc?.Dispose();
            ownedConfig?.Dispose();
          }
          if (!leaveInnerStreamOpen)
            inner.Dispose();
        }
      } finally {
        base.Dispose(disposing);
      }
    }

    public override bool CanRead => !disposed && inner.CanRead;
    public override bool CanWrite => !disposed && inner.CanWrite;
    public override bool CanSeek => false;
    public override bool CanTimeout => inner.CanTimeout;
    public override int ReadTimeout {
      get { return inner.ReadTimeout; }
      set { inner.ReadTimeout = value; }
    }
    public override int WriteTimeout {
      get { return inner.WriteTimeout; }
      set { inner.WriteTimeout = value; }
    }
    public override long Length => throw new NotSupportedException();
    public override long Position {
      get { throw new NotSupportedException(); }
      set { throw new NotSupportedException(); }
    }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
  }
}
