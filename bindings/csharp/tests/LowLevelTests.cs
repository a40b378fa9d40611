// The SWIG layer: handles, bytes in and out, every error path a caller can
// provoke, and handshakes between two associations in memory.
using System;
using System.Diagnostics;
using System.IO;
using System.Security.Authentication;

namespace Org.M2mpsk.Tests {
  static class Fx {
    public const string KpsaId = "test@onem2m.com";
    public const string Idb = "/cse-1";
    static readonly Stopwatch clock = Stopwatch.StartNew();

    public static long Now => clock.ElapsedMilliseconds;

    public static byte[] Key(byte seed = 1) {
      var k = new byte[32];
      for (int i = 0; i < k.Length; i++)
        k[i] = (byte)(seed + i);
      return k;
    }

    public static Keystore Store(byte seed = 1, string ida = null) {
      var ks = new Keystore();
      byte[] key = Key(seed);
      ks.Add(KpsaId, key, ida, Idb);
      Array.Clear(key, 0, key.Length); // the keystore has its own copy
      return ks;
    }

    public static Config ServerConfig() {
      var c = new Config();
      c.AddLocalId(Idb);
      return c;
    }

    /// Moves what each side drains to the other until neither has
    /// anything to send; DTLS one datagram at a time.
    public static void Pump(Association a, Association b) {
      for (int round = 0; round < 50; round++) {
        bool moved = Move(a, b) | Move(b, a);
        if (!moved)
          return;
      }
      throw new AssertionFailed("the handshake did not settle in 50 rounds");
    }

    static bool Move(Association from, Association to) {
      bool moved = false;
      for (;;) {
        byte[] d = from.Drain();
        if (d.Length == 0)
          return moved;
        moved = true;
        to.Feed(d, Now);
      }
    }
  }

  public static class LowLevelTests {
    static void Handshake(int transport) {
      using (var cks = Fx.Store())
      using (var sks = Fx.Store())
      using (var ccfg = new Config())
      using (var scfg = Fx.ServerConfig())
      using (var c = new Association(M2mpsk.ROLE_INITIATOR, transport, ccfg, cks, Fx.KpsaId))
      using (var s = new Association(M2mpsk.ROLE_RESPONDER, transport, scfg, sks)) {
        s.Start(Fx.Now);
        c.Start(Fx.Now);
        Fx.Pump(c, s);
        Check.Equal(M2mpsk.STATE_ESTABLISHED, c.State(), "client state");
        Check.Equal(M2mpsk.STATE_ESTABLISHED, s.State(), "server state");
        Check.Equal(Fx.Idb, c.PeerId(), "client's peer");
        Check.Equal("12-" + Fx.KpsaId, s.PeerId(), "server's peer (Credential-ID)");
        Check.True(s.PeerIdIsCredential(), "credential binding");
        Check.Equal(Fx.KpsaId, s.KpsaId(), "server's KpsaID");
        Check.True(c.Suite().StartsWith("TLS_PSK_"), "suite " + c.Suite());
        Check.Equal(transport == M2mpsk.TRANSPORT_TLS ? "TLSv1.2" : "DTLSv1.2", c.Version(), "version");
        byte[] msg = System.Text.Encoding.ASCII.GetBytes("hello over psk");
        c.Write(msg);
        Fx.Pump(c, s);
        Check.Bytes(msg, s.Read(), "server read");
        var buf = new byte[64];
        s.Write(msg, 6, 4);
        Fx.Pump(c, s);
        int n = c.Read(buf, 10, 54);
        Check.Equal(4, n, "client read count");
        Check.Equal((byte)'o', buf[10], "client read into the offset");
        Check.Bytes(c.ExportKeyingMaterial(32, "EXPORTER-test"),
                    s.ExportKeyingMaterial(32, "EXPORTER-test"), "exported keys agree");
        Check.Equal(0, s.Read().Length, "nothing more to read");
        Check.Equal(M2mpsk.ORIGINATOR_ACCEPT, s.OriginatorCheck("C123", M2mpsk.ORIGINATOR_AE_CREATE),
                    "AE create over a credential binding");
        Check.Equal(M2mpsk.ORIGINATOR_NOT_AUTHENTICATED, s.OriginatorCheck("/cse-9"),
                    "another CSE");
        c.CloseNotify();
        Fx.Pump(c, s);
        Check.Code(M2mpsk.E_CLOSED, () => s.Read(), "read after close_notify");
      }
    }

    /// Key sources (since 0.4), queued: the responder's keystore starts
    /// empty and the request is answered here.
    public static void KeySourceQueue() {
      using (var cks = Fx.Store())
      using (var sks = new Keystore())
      using (var ccfg = new Config())
      using (var scfg = Fx.ServerConfig())
      using (var c = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ccfg, cks, Fx.KpsaId))
      using (var s = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, scfg, sks)) {
        Check.Code(M2mpsk.E_INVALID, () => sks.SetSourceQueue(-1), "negative max_pending");
        sks.SetSourceQueue(4);
        Check.True(sks.NextRequest() == null, "nothing asked yet");
        s.Start(Fx.Now);
        c.Start(Fx.Now);
        Fx.Pump(c, s);
        Check.Equal(M2mpsk.STATE_WAITING_KEY, s.State(), "the responder waits");
        using (var req = sks.NextRequest()) {
          Check.True(req != null && sks.NextRequest() == null, "one request, handed out once");
          Check.True(req.KpsaId() == Fx.KpsaId, "its KpsaID");
          Check.Equal(M2mpsk.ROLE_RESPONDER, req.Role(), "its role");
          Check.True(!req.Answered(), "open");
          Check.Code(M2mpsk.E_INVALID, () => req.Supply(null, null, Fx.Idb), "null key");
          Check.Code(M2mpsk.E_KEY_LENGTH, () => req.Supply(new byte[3], null, Fx.Idb), "short key");
          using (var mine = s.KeyRequest())
            Check.True(mine.KpsaId() == Fx.KpsaId && !mine.Answered(), "the association's request");
          byte[] key = Fx.Key(1);
          req.Supply(key, null, Fx.Idb);
          Array.Clear(key, 0, key.Length);
          Check.True(req.Answered(), "answered");
          Check.Code(M2mpsk.E_STATE, () => req.Absent(), "answered already");
          req.Dispose();
          Check.Code(M2mpsk.E_INVALID, () => req.KpsaId(), "a disposed request");
        }
        s.Resume(Fx.Now);
        Fx.Pump(c, s);
        Check.Equal(M2mpsk.STATE_ESTABLISHED, s.State(), "established with the supplied key");
        Check.Code(M2mpsk.E_STATE, () => s.Resume(Fx.Now), "not waiting any more");
        Check.True(s.KeyRequest() == null, "no request");
        sks.Put(Fx.KpsaId, Fx.Key(1), null, Fx.Idb, 0, 4102444800);
        Check.Equal(4102444800L, sks.Lookup(Fx.KpsaId).NotAfter, "put replaced the window");
        Check.Code(M2mpsk.E_KEY_LENGTH, () => sks.Put(Fx.KpsaId, new byte[3], null, Fx.Idb), "put checks");
      }
    }

    public static void TlsHandshakeInMemory() {
      Handshake(M2mpsk.TRANSPORT_TLS);
    }

    public static void DtlsHandshakeInMemory() {
      Handshake(M2mpsk.TRANSPORT_DTLS);
    }

    public static void WrongKeyFailsTheHandshake() {
      using (var cks = Fx.Store(1))
      using (var sks = Fx.Store(2))
      using (var ccfg = new Config())
      using (var scfg = Fx.ServerConfig())
      using (var c = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ccfg, cks, Fx.KpsaId))
      using (var s = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, scfg, sks)) {
        s.Start(Fx.Now);
        c.Start(Fx.Now);
        var e = Check.Throws<M2mpskAuthenticationException>(() => Fx.Pump(c, s), "wrong key");
        Check.Equal(M2mpsk.E_FAILED, e.Code, "code");
        Check.True(e.Reason != M2mpsk.REASON_NONE, "a reason");
        Check.True(e is AuthenticationException, "an AuthenticationException, as SslStream's");
        Check.True(e.Message.Contains(M2mpsk.ReasonName(e.Reason)), "message names the reason: " + e.Message);
        Check.True(c.State() == M2mpsk.STATE_FAILED || s.State() == M2mpsk.STATE_FAILED, "a side failed");
      }
    }

    public static void GarbageBytesFailTheResponder() {
      using (var sks = Fx.Store())
      using (var scfg = Fx.ServerConfig())
      using (var s = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, scfg, sks)) {
        s.Start(Fx.Now);
        var junk = new byte[200];
        new Random(7).NextBytes(junk);
        var e = Check.Code(M2mpsk.E_FAILED, () => s.Feed(junk, Fx.Now), "garbage");
        Check.True(e is M2mpskAuthenticationException, "a handshake failure");
        Check.Equal(M2mpsk.STATE_FAILED, s.State(), "failed");
        Check.Equal(M2mpsk.REASON_PROTOCOL, e.Reason, "reason");
        Check.Code(M2mpsk.E_STATE, () => s.Feed(junk, Fx.Now), "feed after failure");
        s.Drain(); // an alert may wait; draining a failed association is allowed
      }
    }

    public static void DisposedHandlesRaiseInvalid() {
      var ks = Fx.Store();
      var cfg = new Config();
      var a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, Fx.KpsaId);
      ks.Dispose();
      ks.Dispose(); // twice is harmless
      cfg.Close();
      var e = Check.Code(M2mpsk.E_INVALID, () => ks.Count(), "keystore after Dispose");
      Check.True(e is M2mpskException, "M2mpskException");
      Check.Code(M2mpsk.E_INVALID, () => cfg.AddLocalId("/cse-2"), "config after Close");
      // The association holds its own references: still usable.
      a.Start(Fx.Now);
      Check.True(a.Drain().Length > 0, "ClientHello drained");
      a.Dispose();
      Check.Code(M2mpsk.E_INVALID, () => a.Feed(new byte[3], Fx.Now), "feed after Dispose");
      Check.Code(M2mpsk.E_INVALID, () => a.Drain(), "drain after Dispose");
      Check.Code(M2mpsk.E_INVALID, () => a.State(), "state after Dispose");
      Check.Code(M2mpsk.E_INVALID, () => a.PeerId(), "accessor after Dispose");
      Check.Code(M2mpsk.E_INVALID,
                 () => new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg,
                                       Fx.Store(), Fx.KpsaId),
                 "a closed config");
    }

    public static void NullArgumentsRaiseInvalid() {
      using (var ks = new Keystore())
      using (var cfg = new Config()) {
        Check.Code(M2mpsk.E_INVALID, () => ks.Add(Fx.KpsaId, null, null, Fx.Idb), "null key");
        Check.Code(M2mpsk.E_INVALID, () => ks.Add(null, Fx.Key(), null, Fx.Idb), "null KpsaID");
        Check.Code(M2mpsk.E_INVALID, () => ks.Add(Fx.KpsaId, Fx.Key(), 30, 8, null, Fx.Idb), "range past the end");
        Check.Code(M2mpsk.E_INVALID,
                   () => new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, null, ks, Fx.KpsaId),
                   "null config");
        Check.Code(M2mpsk.E_INVALID,
                   () => new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, null, Fx.KpsaId),
                   "null keystore");
        Check.Code(M2mpsk.E_INVALID, () => M2mpsk.KpsaIdValidate(null), "null KpsaID to validate");
        ks.Add(Fx.KpsaId, Fx.Key(), null, Fx.Idb);
        using (var a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, Fx.KpsaId)) {
          a.Start(Fx.Now);
          Check.Code(M2mpsk.E_INVALID, () => a.Feed(null, Fx.Now), "null data");
          Check.Code(M2mpsk.E_INVALID, () => a.Drain(null, 0, 0), "null buffer");
          Check.Code(M2mpsk.E_INVALID, () => a.Read(new byte[4], 2, 3), "read range");
          Check.Code(M2mpsk.E_INVALID, () => a.Feed(new byte[4], -1), "negative time");
        }
      }
    }

    public static void KeystoreErrors() {
      Check.Code(M2mpsk.E_INVALID, () => new Keystore(-1), "negative flags");
      Check.Code(M2mpsk.E_INVALID, () => new Keystore(1 << 20), "an unknown flag");
      using (var locked = new Keystore(M2mpsk.KEYSTORE_REQUIRE_LOCKED))
        Check.Equal(0u, locked.Count(), "empty");
      using (var ks = new Keystore()) {
        Check.Code(M2mpsk.E_KEY_LENGTH, () => ks.Add(Fx.KpsaId, new byte[3], null, Fx.Idb), "short key");
        Check.Code(M2mpsk.E_KEY_LENGTH, () => ks.Add(Fx.KpsaId, new byte[0], null, Fx.Idb), "empty key");
        Check.Code(M2mpsk.E_KEY_LENGTH, () => ks.Add(Fx.KpsaId, new byte[64], 60, 4, null, Fx.Idb),
                   "a short region of a long array");
        Check.Code(M2mpsk.E_KPSA_ID, () => ks.Add("no-at-sign", Fx.Key(), null, Fx.Idb), "bad KpsaID");
        Check.Code(M2mpsk.E_IDB, () => ks.Add(Fx.KpsaId, Fx.Key(), null, "cse"), "bad IdB");
        Check.Code(M2mpsk.E_IDA, () => ks.Add(Fx.KpsaId, Fx.Key(), "x y", Fx.Idb), "bad IdA");
        Check.Code(M2mpsk.E_VALIDITY, () => ks.Add(Fx.KpsaId, Fx.Key(), null, Fx.Idb, 200, 100), "bad window");
        ks.Add(Fx.KpsaId, Fx.Key(), "/cse-2", Fx.Idb, 100, 0);
        Check.Code(M2mpsk.E_DUPLICATE, () => ks.Add(Fx.KpsaId, Fx.Key(), null, Fx.Idb), "duplicate");
        Check.Equal(1u, ks.Count(), "count");
        using (Record r = ks.Lookup(Fx.KpsaId)) {
          Check.Equal("/cse-2", r.Ida, "IdA");
          Check.Equal(Fx.Idb, r.Idb, "IdB");
          Check.Equal(100L, r.NotBefore, "not before");
          r.Dispose();
          Check.Code(M2mpsk.E_INVALID, () => { var x = r.Ida; }, "a disposed Record");
          Check.Code(M2mpsk.E_INVALID, () => { var x = r.NotAfter; }, "a disposed Record's number");
        }
        Check.Code(M2mpsk.E_NOT_FOUND, () => ks.Lookup("other@onem2m.com"), "lookup");
        Check.Code(M2mpsk.E_NOT_FOUND, () => ks.Remove("other@onem2m.com"), "remove");
        Check.Code(M2mpsk.E_IO, () => ks.LoadFile("/nonexistent/keys"), "missing key file");
        string path = Path.GetTempFileName();
        try {
          File.WriteAllText(path, "kpsa-id=a@b.com kpsa=hex:zz idb=/cse-1\n");
          var e = Check.Code(M2mpsk.E_KEYFILE_ENCODING, () => ks.LoadFile(path), "bad hex");
          Check.True(e.Detail.Contains("line 1"), "the detail names the line: " + e.Detail);
          using (var chmod = System.Diagnostics.Process.Start("chmod", "644 " + path))
            chmod.WaitForExit(10000);
          Check.Code(M2mpsk.E_KEYFILE_PERMS, () => ks.LoadFile(path), "0644 key file");
        } finally {
          File.Delete(path);
        }
        ks.Revoke(Fx.KpsaId);
        using (var cfg = new Config())
        using (var a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, Fx.KpsaId)) {
          var e = Check.Code(M2mpsk.E_FAILED, () => a.Start(Fx.Now, 1000), "revoked record");
          Check.Equal(M2mpsk.REASON_REVOKED, e.Reason, "reason");
        }
      }
    }

    public static void StateErrors() {
      using (var ks = Fx.Store())
      using (var cfg = new Config())
      using (var a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, Fx.KpsaId)) {
        Check.Code(M2mpsk.E_STATE, () => a.Drain(), "drain before start");
        Check.Code(M2mpsk.E_STATE, () => a.Feed(new byte[5], Fx.Now), "feed before start");
        a.Start(Fx.Now);
        Check.Code(M2mpsk.E_STATE, () => a.Start(Fx.Now), "start twice");
        Check.Code(M2mpsk.E_STATE, () => a.Write(new byte[5]), "write while handshaking");
        Check.Code(M2mpsk.E_STATE, () => a.ExportKeyingMaterial(16, "EXPORTER-x"), "export while handshaking");
        Check.Code(M2mpsk.E_INVALID, () => a.SetMtu(1000), "an MTU for TLS");
        Check.True(a.NextTimeout() >= 0, "a handshake deadline");
        Check.Code(M2mpsk.E_INVALID, () => a.ExportKeyingMaterial(0, "x"), "zero length");
      }
      using (var ks = Fx.Store())
      using (var cfg = new Config()) {
        Check.Code(M2mpsk.E_NO_LOCAL_ID,
                   () => new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, cfg, ks),
                   "a responder without IdB");
        Check.Code(M2mpsk.E_NOT_FOUND,
                   () => new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, cfg, ks, "x@y.com"),
                   "an unknown record");
      }
    }

    public static void DtlsListenCookies() {
      using (var cks = Fx.Store())
      using (var sks = Fx.Store())
      using (var ccfg = new Config())
      using (var scfg = Fx.ServerConfig())
      using (var c = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_DTLS, ccfg, cks, Fx.KpsaId)) {
        Check.Code(M2mpsk.E_INVALID, () => scfg.DtlsListen("127.0.0.1:9", new byte[0]), "empty datagram");
        Check.Code(M2mpsk.E_INVALID, () => scfg.DtlsListen("bad tag\n", new byte[40]), "unprintable peer tag");
        Check.Code(M2mpsk.E_PROTOCOL, () => scfg.DtlsListen("127.0.0.1:9", new byte[40]), "garbage datagram");
        Check.Code(M2mpsk.E_INVALID, () => scfg.DtlsListen("127.0.0.1:9", null), "null datagram");
        if (M2mpsk.EngineAvailable(M2mpsk.ENGINE_OPENSSL) == 0)
          return; // no cookie exchange with BoringSSL alone (E_UNSUPPORTED)
        c.Start(Fx.Now);
        byte[] hello = c.Drain();
        byte[] hvr = scfg.DtlsListen("127.0.0.1:9", hello);
        Check.True(hvr != null && hvr.Length > 0, "HelloVerifyRequest");
        c.Feed(hvr, Fx.Now);
        byte[] hello2 = c.Drain();
        Check.True(scfg.DtlsListen("127.0.0.1:9", hello2) == null, "accepted with the cookie");
        Check.True(scfg.DtlsListen("127.0.0.1:10", hello2) != null, "the cookie is bound to the peer tag");
        using (var s = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_DTLS, scfg, sks)) {
          s.SetPeerTag("127.0.0.1:9");
          s.Start(Fx.Now);
          s.Feed(hello2, Fx.Now);
          Fx.Pump(c, s);
          Check.Equal(M2mpsk.STATE_ESTABLISHED, s.State(), "established after the cookie");
        }
      }
    }

    public static void ModuleFunctions() {
      Check.Equal(M2mpskInfo.ManagedVersion, M2mpsk.VersionString(), "version");
      // The library of this build, not another one found first.
      string backend = Environment.GetEnvironmentVariable("M2MPSK_BACKEND_NAME");
      if (backend != null)
        Check.Equal(backend, M2mpsk.BackendName(), "backend");
      Check.True(M2mpsk.Strerror(M2mpsk.E_INVALID).Length > 0, "strerror");
      Check.Code(M2mpsk.E_KPSA_ID, () => M2mpsk.KpsaIdValidate("nope"), "KpsaID");
      M2mpsk.IdbValidate("//m2m.example.com/cse-1");
      Check.Equal("m2m.example.com", M2mpsk.IdbServerName("//m2m.example.com/cse-1"), "SNI");
      Check.True(M2mpsk.IdbServerName("/cse-1") == null, "no SNI for a relative IdB");
      Check.Equal(M2mpsk.ORIGINATOR_ACCEPT,
                  M2mpsk.OriginatorCheck(M2mpsk.PEER_CSE, "/cse-2", "/cse-1", "/cse-2"), "check");
      Check.Code(M2mpsk.E_INVALID,
                 () => M2mpsk.OriginatorCheck(M2mpsk.PEER_CSE, "/cse-2", "/cse-1", "/cse-2", -1),
                 "negative flags");
    }

    static object Arg(Type t) {
      if (t == typeof(string))
        return "x";
      if (t == typeof(byte[]))
        return new byte[4];
      if (t == typeof(bool))
        return false;
      if (t.IsValueType)
        return Convert.ChangeType(1, t);
      return null;
    }

    /// Every public method and property of a disposed handle, found by
    /// reflection, throws M2mpskException E_INVALID (Dispose and Close
    /// excepted, which do nothing).
    public static void EveryMemberOfADisposedHandleRaisesInvalid() {
      var ks = Fx.Store();
      var scfg = Fx.ServerConfig();
      scfg.SetEventQueue(8);
      Event ev;
      using (var cks = Fx.Store())
      using (var ccfg = new Config())
      using (var c = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, ccfg, cks, Fx.KpsaId))
      using (var s = new Association(M2mpsk.ROLE_RESPONDER, M2mpsk.TRANSPORT_TLS, scfg, ks)) {
        s.Start(Fx.Now);
        c.Start(Fx.Now);
        Fx.Pump(c, s);
        ev = scfg.NextEvent();
        Check.True(ev != null, "an event");
      }
      var a = new Association(M2mpsk.ROLE_INITIATOR, M2mpsk.TRANSPORT_TLS, new Config(), ks, Fx.KpsaId);
      var rec = ks.Lookup(Fx.KpsaId);
      var handles = new IDisposable[] { ks, scfg, a, ev, rec };
      int checkedCount = 0;
      foreach (IDisposable h in handles) {
        h.Dispose();
        foreach (var m in h.GetType().GetMethods(System.Reflection.BindingFlags.Public |
                                                 System.Reflection.BindingFlags.Instance |
                                                 System.Reflection.BindingFlags.DeclaredOnly)) {
          if (m.Name == "Dispose" || m.Name == "Close" || m.Name.StartsWith("set_"))
            continue;
          var args = Array.ConvertAll(m.GetParameters(), p => Arg(p.ParameterType));
          string what = h.GetType().Name + "." + m.Name + "(" + args.Length + " args)";
          Check.Code(M2mpsk.E_INVALID, () => {
            try {
              m.Invoke(h, args);
            } catch (System.Reflection.TargetInvocationException e) {
              throw e.InnerException;
            }
          }, what);
          checkedCount++;
        }
        h.Dispose(); // again: nothing
      }
      Check.True(checkedCount > 60, "methods checked: " + checkedCount);
    }
  }
}
