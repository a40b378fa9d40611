package m2mpsk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"m2mpsk.org/m2mpsk/internal/capi"
)

// The test records: a KpsaID with an IdA, and one without (its responder
// binds the Credential-ID).
const (
	testKpsa     = "test@onem2m.com"
	testKpsaCred = "cred@onem2m.com"
	testIdA      = "/cse-a"
	testIdB      = "/cse-1"
)

var testKey = bytes.Repeat([]byte{0x5a}, 32)

func testKeystore(t *testing.T) *Keystore {
	t.Helper()
	ks, err := NewKeystore(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	key := append([]byte(nil), testKey...)
	if err := ks.Add(testKpsa, key, testIdA, testIdB); err != nil {
		t.Fatal(err)
	}
	if err := ks.Add(testKpsaCred, key, "", testIdB); err != nil {
		t.Fatal(err)
	}
	for i := range key {
		key[i] = 0
	}
	return ks
}

// wantCode fails unless err is an *Error with that code.
func wantCode(t *testing.T, err error, code int) *Error {
	t.Helper()
	e := asError(err)
	if e == nil {
		t.Fatalf("want error %d (%s), got %v", code, Strerror(code), err)
	}
	if e.Code != code {
		t.Fatalf("want error %d (%s), got %v", code, Strerror(code), e)
	}
	if e.Detail == "" || !strings.Contains(e.Error(), "m2mpsk:") {
		t.Fatalf("error without detail: %#v", e)
	}
	return e
}

// pump runs two associations against each other in memory until both are
// established or one fails.
func pump(t *testing.T, c, s *Association) error {
	t.Helper()
	for i := 0; i < 200; i++ {
		if c.State() == STATE_ESTABLISHED && s.State() == STATE_ESTABLISHED {
			return nil
		}
		moved := false
		for _, p := range [][2]*Association{{c, s}, {s, c}} {
			for {
				out, err := p[0].Drain()
				if err != nil {
					return err
				}
				if len(out) == 0 {
					break
				}
				moved = true
				if err := p[1].Feed(out, Now()); err != nil {
					return err
				}
			}
		}
		if !moved && (c.State() != STATE_HANDSHAKING || s.State() != STATE_HANDSHAKING) {
			break
		}
	}
	if c.State() != STATE_ESTABLISHED || s.State() != STATE_ESTABLISHED {
		t.Fatalf("no handshake: client %d, server %d", c.State(), s.State())
	}
	return nil
}

func pair(t *testing.T, transport int, cli, srv *Config) (*Association, *Association) {
	t.Helper()
	c, err := cli.NewAssociation(ROLE_INITIATOR, transport)
	if err != nil {
		t.Fatal(err)
	}
	s, err := srv.NewAssociation(ROLE_RESPONDER, transport)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	if err := c.Start(Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(Now()); err != nil {
		t.Fatal(err)
	}
	return c, s
}

func TestLowLevelHandshake(t *testing.T) {
	ks := testKeystore(t)
	for _, tr := range []struct {
		name      string
		transport int
		version   string
	}{{"TLS", TRANSPORT_TLS, "TLSv1.2"}, {"DTLS", TRANSPORT_DTLS, "DTLSv1.2"}} {
		t.Run(tr.name, func(t *testing.T) {
			cli := &Config{Keystore: ks, KpsaID: testKpsa}
			srv := &Config{Keystore: ks, LocalID: testIdB}
			defer cli.Close()
			defer srv.Close()
			c, s := pair(t, tr.transport, cli, srv)
			if c.PeerKind() != PeerNone || s.PeerKind() != PeerNone {
				t.Errorf("peer kinds before the handshake: %v %v", c.PeerKind(), s.PeerKind())
			}
			if err := pump(t, c, s); err != nil {
				t.Fatal(err)
			}
			if s.PeerKind() != PeerCSE || c.PeerKind() != PeerCSE {
				t.Errorf("peer kinds: server %v, client %v", s.PeerKind(), c.PeerKind())
			}
			if got := s.PeerID(); got != testIdA {
				t.Errorf("server PeerID %q, want %q", got, testIdA)
			}
			if got := c.PeerID(); got != testIdB {
				t.Errorf("client PeerID %q, want %q", got, testIdB)
			}
			if c.Version() != tr.version || c.Suite() == "" || s.KpsaID() != testKpsa {
				t.Errorf("version %q suite %q kpsa %q", c.Version(), c.Suite(), s.KpsaID())
			}
			// Application data both ways.
			msg := []byte("hello over " + tr.name)
			if err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			out, err := c.Drain()
			if err != nil || len(out) == 0 {
				t.Fatalf("drain: %v %d", err, len(out))
			}
			if err := s.Feed(out, Now()); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, err := s.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], msg) {
				t.Fatalf("read %q %v", buf[:n], err)
			}
			// Nothing more waiting: 0, no error.
			if n, err := s.Read(buf); n != 0 || err != nil {
				t.Fatalf("empty read: %d %v", n, err)
			}
			// Both ends export the same keying material.
			k1, err := c.ExportKeyingMaterial("EXPERIMENTAL m2mpsk", nil, 32)
			if err != nil {
				t.Fatal(err)
			}
			k2, err := s.ExportKeyingMaterial("EXPERIMENTAL m2mpsk", nil, 32)
			if err != nil || !bytes.Equal(k1, k2) {
				t.Fatalf("export differs: %v", err)
			}
			k3, _ := s.ExportKeyingMaterial("EXPERIMENTAL m2mpsk", []byte{}, 32)
			if bytes.Equal(k1, k3) {
				t.Fatal("an empty context exported what no context did")
			}
			// The originator check: the bound IdA passes, another is 4106.
			if v, err := s.OriginatorCheck(testIdA, 0); err != nil || v != ORIGINATOR_ACCEPT {
				t.Fatalf("originator %d %v", v, err)
			}
			if v, err := s.OriginatorCheck("/cse-forged", 0); err != nil || v != ORIGINATOR_NOT_AUTHENTICATED {
				t.Fatalf("forged originator %d %v", v, err)
			}
			// close_notify reaches the peer as E_CLOSED.
			if err := c.CloseNotify(); err != nil {
				t.Fatal(err)
			}
			out, _ = c.Drain()
			if err := s.Feed(out, Now()); err != nil {
				t.Fatal(err)
			}
			_, err = s.Read(buf)
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("after close_notify: %v", err)
			}
		})
	}
}

func TestLowLevelCredentialID(t *testing.T) {
	ks := testKeystore(t)
	cli := &Config{Keystore: ks, KpsaID: testKpsaCred}
	srv := &Config{Keystore: ks, LocalID: testIdB}
	defer cli.Close()
	defer srv.Close()
	c, s := pair(t, TRANSPORT_TLS, cli, srv)
	if err := pump(t, c, s); err != nil {
		t.Fatal(err)
	}
	if s.PeerID() != "12-"+testKpsaCred || !s.PeerIsCredential() {
		t.Fatalf("credential binding: %q %v", s.PeerID(), s.PeerIsCredential())
	}
	if s.PeerKind() != PeerCredential || c.PeerKind() != PeerCSE {
		t.Fatalf("peer kinds: server %v, client %v", s.PeerKind(), c.PeerKind())
	}
	// The AE registered: its AE-ID replaces the Credential-ID, once.
	wantCode(t, s.BindAEID("not an ae-id"), E_IDA)
	if err := s.BindAEID("/cse-1/Cmy-ae"); err != nil {
		t.Fatal(err)
	}
	if s.PeerID() != "/cse-1/Cmy-ae" || s.PeerIsCredential() {
		t.Fatalf("after BindAEID: %q %v", s.PeerID(), s.PeerIsCredential())
	}
	if s.PeerKind() != PeerAE {
		t.Fatalf("after BindAEID: kind %v", s.PeerKind())
	}
	wantCode(t, s.BindAEID("/cse-1/Cother"), E_STATE)
	wantCode(t, c.BindAEID("/cse-1/Cmy-ae"), E_STATE) // not Entity B
}

func TestLowLevelErrors(t *testing.T) {
	ks := testKeystore(t)

	// Wrong key: the handshake fails with a reason and a detail.
	other, _ := NewKeystore(false)
	defer other.Close()
	if err := other.Add(testKpsa, bytes.Repeat([]byte{1}, 32), testIdA, testIdB); err != nil {
		t.Fatal(err)
	}
	cli := &Config{Keystore: other, KpsaID: testKpsa}
	srv := &Config{Keystore: ks, LocalID: testIdB}
	defer cli.Close()
	defer srv.Close()
	c, s := pair(t, TRANSPORT_TLS, cli, srv)
	err := func() error {
		for i := 0; i < 20; i++ {
			for _, p := range [][2]*Association{{c, s}, {s, c}} {
				out, err := p[0].Drain()
				if err != nil {
					return err
				}
				if len(out) > 0 {
					if err := p[1].Feed(out, Now()); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}()
	e := wantCode(t, err, E_FAILED)
	if e.Reason == REASON_NONE || !errors.Is(err, ErrFailed) {
		t.Fatalf("no reason: %v", e)
	}
	t.Logf("wrong key: %v", e)

	// Keystore input.
	wantCode(t, ks.Add("no-at-sign", testKey, "", testIdB), E_KPSA_ID)
	wantCode(t, ks.Add("x@onem2m.com", testKey[:3], "", testIdB), E_KEY_LENGTH)
	wantCode(t, ks.Add("x@onem2m.com", nil, "", testIdB), E_INVALID)
	wantCode(t, ks.Add("x@onem2m.com", testKey, "", "not-a-cse"), E_IDB)
	wantCode(t, ks.Add(testKpsa, testKey, testIdA, testIdB), E_DUPLICATE)
	wantCode(t, ks.Add("x\x00y@onem2m.com", testKey, "", testIdB), E_INVALID)
	wantCode(t, ks.Remove("nobody@onem2m.com"), E_NOT_FOUND)
	if _, err := ks.Lookup("nobody@onem2m.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup: %v", err)
	}
	rec, err := ks.Lookup(testKpsa)
	if err != nil || rec.IdA != testIdA || rec.IdB != testIdB {
		t.Fatalf("lookup: %+v %v", rec, err)
	}
	wantCode(t, ValidateKpsaID(""), E_INVALID)
	wantCode(t, ValidateIdB("cse"), E_IDB)

	// Key files.
	dir := t.TempDir()
	wantCode(t, ks.LoadFile(filepath.Join(dir, "missing")), E_IO)
	open := filepath.Join(dir, "open.keys")
	line := "kpsa-id=f@onem2m.com kpsa=hex:" + strings.Repeat("ab", 32) + " idb=/cse-1\n"
	if err := os.WriteFile(open, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, ks.LoadFile(open), E_KEYFILE_PERMS)
	bad := filepath.Join(dir, "bad.keys")
	if err := os.WriteFile(bad, []byte(line+"garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e = wantCode(t, ks.LoadFile(bad), E_KEYFILE_SYNTAX)
	if !strings.Contains(e.Detail, "line 2") {
		t.Fatalf("detail without the line: %q", e.Detail)
	}
	good := filepath.Join(dir, "good.keys")
	if err := os.WriteFile(good, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile, err := LoadKeystore(good)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := fromFile.Count(); n != 1 {
		t.Fatalf("count %d", n)
	}
	fromFile.Close()

	// Configs.
	if _, err := (&Config{}).NewAssociation(ROLE_RESPONDER, TRANSPORT_TLS); !errors.Is(err, ErrInvalid) {
		t.Fatalf("config without keys: %v", err)
	}
	var nilCfg *Config
	wantCode(t, func() error { _, err := nilCfg.NewAssociation(ROLE_INITIATOR, TRANSPORT_TLS); return err }(), E_INVALID)
	_, err = (&Config{Keystore: ks, KpsaID: "nobody@onem2m.com"}).NewAssociation(ROLE_INITIATOR, TRANSPORT_TLS)
	wantCode(t, err, E_NOT_FOUND)
	_, err = (&Config{Keystore: ks}).NewAssociation(ROLE_RESPONDER, TRANSPORT_TLS)
	wantCode(t, err, E_NO_LOCAL_ID)
	_, err = (&Config{Keystore: ks, LocalID: "bad"}).NewAssociation(ROLE_RESPONDER, TRANSPORT_TLS)
	wantCode(t, err, E_IDB)
	_, err = (&Config{Keystore: ks, LocalID: testIdB, Suites: "TLS_NOPE"}).NewAssociation(ROLE_RESPONDER, TRANSPORT_TLS)
	wantCode(t, err, E_SUITE)

	// Garbage into a responder fails it; into an unstarted one, E_STATE.
	a, err := srv.NewAssociation(ROLE_RESPONDER, TRANSPORT_TLS)
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, a.Feed([]byte("GET / HTTP/1.1\r\n\r\n"), Now()), E_STATE)
	_, err = a.Drain()
	wantCode(t, err, E_STATE)
	a.Start(Now())
	wantCode(t, a.Feed([]byte("GET / HTTP/1.1\r\n\r\n"), Now()), E_FAILED)
	_, err = a.Read(make([]byte, 10))
	wantCode(t, err, E_FAILED)
	wantCode(t, func() error { _, err := a.ExportKeyingMaterial("x", nil, 16); return err }(), E_STATE)
	wantCode(t, func() error { _, err := a.Read(nil); return err }(), E_INVALID)
	if v, err := a.OriginatorCheck(testIdA, 0); err == nil || v != ORIGINATOR_NOT_AUTHENTICATED {
		t.Fatalf("originator check on a failed association: %d %v", v, err)
	}

	// DTLS cookie exchange: garbage is E_PROTOCOL.
	_, _, err = srv.DTLSListen("127.0.0.1:9", []byte("garbage"))
	wantCode(t, err, E_PROTOCOL)
	_, _, err = srv.DTLSListen("", []byte("garbage"))
	wantCode(t, err, E_INVALID)
	_, _, err = srv.DTLSListen("127.0.0.1:9", nil)
	wantCode(t, err, E_INVALID)

	// A slice inside memory holding Go pointers: cgo refuses it, and that
	// is an error, not a crash.
	withPtr := &struct {
		p   *int
		key [32]byte
	}{p: new(int)}
	copy(withPtr.key[:], testKey)
	e = wantCode(t, ks.Add("ptr@onem2m.com", withPtr.key[:], "", testIdB), E_INVALID)
	if !strings.Contains(e.Detail, "Go pointers") {
		t.Fatalf("detail: %q", e.Detail)
	}

	// Use after Close: E_INVALID, never a crash; Close twice is harmless.
	a.Close()
	a.Close()
	wantCode(t, a.Feed([]byte{1}, Now()), E_INVALID)
	wantCode(t, a.Start(Now()), E_INVALID)
	if a.State() != STATE_FAILED || a.PeerID() != "" {
		t.Fatal("accessors of a closed association")
	}
	ks2, _ := NewKeystore(false)
	ks2.Close()
	wantCode(t, ks2.Add(testKpsa, testKey, "", testIdB), E_INVALID)
	_, err = ks2.Count()
	wantCode(t, err, E_INVALID)
	var nilKs *Keystore
	wantCode(t, nilKs.Add(testKpsa, testKey, "", testIdB), E_INVALID)
	closedCfg := &Config{Keystore: ks, LocalID: testIdB}
	closedCfg.Close()
	_, err = closedCfg.NewAssociation(ROLE_RESPONDER, TRANSPORT_TLS)
	wantCode(t, err, E_INVALID)
	_, err = (&Config{Keystore: ks2, KpsaID: testKpsa}).NewAssociation(ROLE_INITIATOR, TRANSPORT_TLS)
	wantCode(t, err, E_INVALID)
}

// A failing call frees what it allocated: many failures, bounded memory
// (the raise frees the C string copies SWIG's freearg would have).
var raceEnabled bool

func TestLowLevelErrorsDoNotLeak(t *testing.T) {
	if raceEnabled {
		t.Skip("RSS is no measure under the race detector")
	}
	ks := testKeystore(t)
	ida := strings.Repeat("x", 400)
	fail := func(n int) {
		for i := 0; i < n; i++ {
			if err := ks.Add("bad", testKey, ida, testIdB); err == nil {
				t.Fatal("no error")
			}
		}
	}
	fail(20000) // warm up both allocators
	before := rssKiB(t)
	// 100000 leaked copies of ida would be 40 MB.
	fail(100000)
	if grown := rssKiB(t) - before; grown > 8192 {
		t.Fatalf("RSS grew by %d KiB over 100000 failing calls", grown)
	}
}

// rssKiB is the process's resident set size.
func rssKiB(t *testing.T) int {
	t.Helper()
	debug.FreeOSMemory() // the Go heap's garbage is not what is measured
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		var kb int
		if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &kb); err == nil {
			return kb
		}
	}
	t.Skip("no VmRSS")
	return 0
}

// Dropped handles are freed by their finalizers; closed ones at once.
func TestLowLevelFinalizers(t *testing.T) {
	// Other tests' garbage is freed first, so that base stays put.
	for i := 0; i < 5; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	base := liveHandles.Load()
	func() {
		for i := 0; i < 50; i++ {
			ks, err := NewKeystore(false)
			if err != nil {
				t.Fatal(err)
			}
			ks.Add(testKpsa, testKey, testIdA, testIdB)
			cfg := &Config{Keystore: ks, KpsaID: testKpsa}
			if _, err := cfg.NewAssociation(ROLE_INITIATOR, TRANSPORT_TLS); err != nil {
				t.Fatal(err)
			}
		}
	}()
	if liveHandles.Load() < base+150 {
		t.Fatalf("%d live handles, want %d more", liveHandles.Load()-base, 150)
	}
	deadline := time.Now().Add(5 * time.Second)
	for liveHandles.Load() > base && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := liveHandles.Load() - base; n > 0 {
		t.Fatalf("%d handles never freed", n)
	}
	before := liveHandles.Load()
	ks, _ := NewKeystore(false)
	ks.Close()
	if liveHandles.Load() > before {
		t.Fatal("Close did not free the keystore")
	}
}

// The cookie exchange by hand, as a server of one's own runs it: a
// HelloVerifyRequest first, then the ClientHello with the cookie is
// accepted and the handshake completes.
func TestLowLevelDTLSListen(t *testing.T) {
	ks := testKeystore(t)
	cli := &Config{Keystore: ks, KpsaID: testKpsa}
	srv := &Config{Keystore: ks, LocalID: testIdB, Engine: ENGINE_OPENSSL}
	defer cli.Close()
	defer srv.Close()
	if capi.Engine_available(ENGINE_OPENSSL) == 0 {
		t.Skip("no OpenSSL engine: no cookie exchange")
	}
	c, err := cli.NewAssociation(ROLE_INITIATOR, TRANSPORT_DTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Start(Now())
	hello, _ := c.Drain()
	const tag = "192.0.2.7:5684"
	hvr, accept, err := srv.DTLSListen(tag, hello)
	if err != nil || accept || len(hvr) == 0 {
		t.Fatalf("first hello: %d bytes, accept %v, %v", len(hvr), accept, err)
	}
	if err := c.Feed(hvr, Now()); err != nil {
		t.Fatal(err)
	}
	hello2, _ := c.Drain()
	// The cookie is bound to the peer: another address gets a new one.
	if _, accept, err := srv.DTLSListen("192.0.2.8:5684", hello2); accept || err != nil {
		t.Fatalf("cookie accepted from another peer: %v %v", accept, err)
	}
	if _, accept, err := srv.DTLSListen(tag, hello2); !accept || err != nil {
		t.Fatalf("second hello: accept %v, %v", accept, err)
	}
	s, err := srv.NewAssociation(ROLE_RESPONDER, TRANSPORT_DTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetPeerTag(tag)
	s.Start(Now())
	if err := s.Feed(hello2, Now()); err != nil {
		t.Fatal(err)
	}
	if err := pump(t, c, s); err != nil {
		t.Fatal(err)
	}
}

// Every method of a closed handle that returns an error returns
// E_INVALID, whatever its arguments (zero values here); the others
// (accessors) return zero values, and none panics. Found by reflection,
// so that a method added later is checked too.
func TestLowLevelEveryMethodOfAClosedHandle(t *testing.T) {
	ks := testKeystore(t)
	cfg := &Config{Keystore: ks, LocalID: testIdB, KpsaID: testKpsa}
	a, err := cfg.NewAssociation(ROLE_INITIATOR, TRANSPORT_TLS)
	if err != nil {
		t.Fatal(err)
	}
	closedKs, _ := NewKeystore(false)
	for _, h := range []interface{ Close() error }{a, cfg, closedKs} {
		h.Close()
		v := reflect.ValueOf(h)
		typ := v.Type()
		checked := 0
		for i := 0; i < typ.NumMethod(); i++ {
			m := typ.Method(i)
			if m.Name == "Close" {
				continue
			}
			args := []reflect.Value{v}
			for j := 1; j < m.Type.NumIn(); j++ {
				args = append(args, reflect.Zero(m.Type.In(j)))
			}
			out := m.Func.Call(args)
			last := m.Type.NumOut() - 1
			if last < 0 || m.Type.Out(last) != reflect.TypeOf((*error)(nil)).Elem() {
				continue // an accessor: it ran without panicking
			}
			err, _ := out[last].Interface().(error)
			if e := asError(err); e == nil || e.Code != E_INVALID {
				t.Errorf("%s.%s after Close: %v", typ, m.Name, err)
			}
			checked++
		}
		if checked < 3 {
			t.Errorf("%s: only %d methods checked", typ, checked)
		}
		if err := h.Close(); err != nil {
			t.Errorf("%s: Close again: %v", typ, err)
		}
	}
}
