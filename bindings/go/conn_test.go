package m2mpsk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tlsPair is a listener serving testIdB and a client config for testKpsa.
func tlsPair(t *testing.T) (net.Listener, *Config, *Config) {
	t.Helper()
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, HandshakeTimeout: 5 * time.Second}
	cli := &Config{Keystore: ks, KpsaID: testKpsa, HandshakeTimeout: 5 * time.Second}
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); srv.Close(); cli.Close() })
	return l, srv, cli
}

func TestConnEcho(t *testing.T) {
	l, _, cli := tlsPair(t)
	type result struct {
		st  ConnectionState
		v   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		mc := c.(*Conn)
		if _, err := io.Copy(c, io.LimitReader(c, 1<<20)); err != nil {
			done <- result{err: err}
			return
		}
		v, err := mc.OriginatorCheck("/cse-forged", 0)
		done <- result{st: mc.ConnectionState(), v: v, err: err}
	}()
	c, err := Dial("tcp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := c.ConnectionState()
	if !st.HandshakeComplete || st.PeerID != testIdB || st.Version != "TLSv1.2" || st.Suite == "" {
		t.Fatalf("client state %+v", st)
	}
	// 1 MiB both ways, in records of 16 KiB.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	go func() { c.Write(payload) }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo: %v", err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.st.PeerID != testIdA || r.st.KpsaID != testKpsa || r.st.LocalID != testIdB {
		t.Fatalf("server state %+v", r.st)
	}
	if r.v != ORIGINATOR_NOT_AUTHENTICATED {
		t.Fatalf("forged originator: %d", r.v)
	}
	// The server closed with close_notify: EOF, not an error.
	if _, err := c.Read(make([]byte, 10)); err != io.EOF {
		t.Fatalf("after the peer's close: %v", err)
	}
	c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	if _, err := c.OriginatorCheck(testIdB, 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("originator check after Close: %v", err)
	}
}

func TestConnWrongKey(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, EventQueue: 8}
	defer srv.Close()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, _ := NewKeystore(false)
	defer other.Close()
	other.Add(testKpsa, bytes.Repeat([]byte{7}, 32), testIdA, testIdB)
	srvErr := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		srvErr <- c.(*Conn).Handshake()
	}()
	_, err = Dial("tcp", l.Addr().String(), &Config{Keystore: other, KpsaID: testKpsa})
	if e := asError(err); e == nil || e.Code != E_FAILED || e.Reason == REASON_NONE {
		t.Fatalf("client: %v", err)
	}
	if e := asError(<-srvErr); e == nil || e.Code != E_FAILED || e.Reason != REASON_BAD_KEY {
		t.Fatalf("server: %v", e)
	}
	// The server's audit queue tells the same, with the peer's address.
	ev, err := srv.NextEvent()
	if err != nil || ev == nil {
		t.Fatalf("no event: %v", err)
	}
	if ev.Type != EVENT_FAILED || ev.Reason != REASON_BAD_KEY || ev.KpsaID != testKpsa ||
		ev.Role != ROLE_RESPONDER || ev.PeerTag == "" || ev.TypeName() == "" {
		t.Fatalf("event %+v", ev)
	}
	if ev, err := srv.NextEvent(); ev != nil || err != nil {
		t.Fatalf("a second event: %+v %v", ev, err)
	}
	srv.Close()
	if _, err := srv.NextEvent(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("NextEvent after Close: %v", err)
	}
	_, err = (&Config{Keystore: ks, EventQueue: -1 + 1<<21}).NextEvent()
	wantCode(t, err, E_INVALID)
}

// A peer that connects and says nothing, or garbage, costs the server at
// most its handshake timeout.
func TestConnHandshakeBounds(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, HandshakeTimeout: 300 * time.Millisecond}
	defer srv.Close()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, send := range []string{"", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"} {
		raw, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		raw.Write([]byte(send))
		c, _ := l.Accept()
		start := time.Now()
		err = c.(*Conn).Handshake()
		if time.Since(start) > 2*time.Second {
			t.Fatalf("handshake took %v", time.Since(start))
		}
		e := asError(err)
		if e == nil || e.Code != E_FAILED {
			t.Fatalf("%q: %v", send, err)
		}
		if send == "" && e.Reason != REASON_TIMEOUT {
			t.Fatalf("silent peer: %v", e)
		}
		if send != "" && e.Reason != REASON_PROTOCOL {
			t.Fatalf("an HTTP request: %v", e)
		}
		t.Logf("%q: %v", send, e)
		c.Close()
		raw.Close()
	}
	// Bad configs fail at Listen, not at the first connection.
	_, err = Listen("tcp", "127.0.0.1:0", &Config{Keystore: ks})
	wantCode(t, err, E_NO_LOCAL_ID)
	if _, err := Listen("tcp", "127.0.0.1:0", &Config{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("config without keys: %v", err)
	}
	if _, err := Listen("tcp", "127.0.0.1:0", nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil config: %v", err)
	}
}

func TestConnMaxConns(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, MaxConns: 1}
	defer srv.Close()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r1, _ := net.Dial("tcp", l.Addr().String())
	defer r1.Close()
	r2, _ := net.Dial("tcp", l.Addr().String())
	defer r2.Close()
	c1, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		second <- c
	}()
	select {
	case <-second:
		t.Fatal("a second connection past MaxConns 1")
	case <-time.After(200 * time.Millisecond):
	}
	c1.Close()
	select {
	case c := <-second:
		c.Close()
	case <-time.After(2 * time.Second):
		t.Fatal("the slot was not released")
	}
}

// HandshakeContext gives up when its context is cancelled, with the
// context's error.
func TestConnHandshakeContext(t *testing.T) {
	ks := testKeystore(t)
	mute, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	raw, err := net.Dial("tcp", mute.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cli := &Config{Keystore: ks, KpsaID: testKpsa}
	defer cli.Close()
	c := Client(raw, cli)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err = c.HandshakeContext(ctx)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 3*time.Second {
		t.Fatalf("after %v: %v", time.Since(start), err)
	}
	// The failure sticks; Close releases everything.
	if _, err := c.Write([]byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("write after a failed handshake: %v", err)
	}
	c.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

// A connection does not outlive its record: at not_after the association
// fails with REASON_EXPIRED, even while Read waits.
func TestConnRecordExpiry(t *testing.T) {
	// Only the client's copy of the record expires, so that the expiry
	// is seen here and not as the server's alert.
	ks := testKeystore(t)
	if err := ks.Add("short@onem2m.com", testKey, testIdA, testIdB); err != nil {
		t.Fatal(err)
	}
	cks, _ := NewKeystore(false)
	defer cks.Close()
	if err := cks.AddValid("short@onem2m.com", testKey, testIdA, testIdB, 0, time.Now().Unix()+2); err != nil {
		t.Fatal(err)
	}
	srv := &Config{Keystore: ks, LocalID: testIdB}
	defer srv.Close()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	cli := &Config{Keystore: cks, KpsaID: "short@onem2m.com"}
	defer cli.Close()
	c, err := Dial("tcp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Read(make([]byte, 10))
	if e := asError(err); e == nil || e.Code != E_FAILED || e.Reason != REASON_EXPIRED {
		t.Fatalf("after %v: %v", time.Since(start), err)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatalf("expired after %v", time.Since(start))
	}
	// A caller's deadline before the expiry still applies.
	c2, err := Dial("tcp", l.Addr().String(), &Config{Keystore: ks, KpsaID: testKpsa})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if _, err := c2.Read(make([]byte, 10)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("deadline: %v", err)
	}
}

// MaxHandshakes bounds the handshakes a server runs at once: past it, a
// new connection fails at once with E_LIMIT.
func TestConnMaxHandshakes(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, MaxHandshakes: 1, HandshakeTimeout: time.Second}
	defer srv.Close()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Two peers that connect and stall.
	var conns []*Conn
	for i := 0; i < 2; i++ {
		raw, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c.(*Conn))
	}
	first := make(chan error, 1)
	go func() { first <- conns[0].Handshake() }()
	deadline := time.Now().Add(2 * time.Second)
	for n, _ := srv.HandshakesInProgress(); n == 0 && time.Now().Before(deadline); n, _ = srv.HandshakesInProgress() {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	wantCode(t, conns[1].Handshake(), E_LIMIT)
	if time.Since(start) > time.Second {
		t.Fatalf("E_LIMIT took %v", time.Since(start))
	}
	if e := asError(<-first); e == nil || e.Reason != REASON_TIMEOUT {
		t.Fatalf("the stalled handshake: %v", e)
	}
	if n, _ := srv.HandshakesInProgress(); n != 0 {
		t.Fatalf("%d handshakes still counted", n)
	}
}

// TestConnPeerKind: ConnectionState.PeerKind for an IdA that is an AE-ID
// (two segments, or one starting with 'S'), one that is a CSE-ID
// (SP-relative or absolute), no IdA (the Credential-ID), and after
// BindAEID; each as the library's originator check reads the binding.
func TestConnPeerKind(t *testing.T) {
	if PeerNone != PeerKind(PEER_NONE) || PeerAE != PeerKind(PEER_AE) ||
		PeerCSE != PeerKind(PEER_CSE) || PeerCredential != PeerKind(PEER_CREDENTIAL) {
		t.Fatal("PeerKind constants differ from the C API's")
	}
	ks := testKeystore(t)
	key := bytes.Repeat([]byte{9}, 32)
	cases := []struct {
		kpsa, idA string
		want      PeerKind
	}{
		{"ae2@onem2m.com", "/cse-1/Cae2", PeerAE},
		{"ae3@onem2m.com", "/Sae3", PeerAE},
		{"ae4@onem2m.com", "//m2m.example.com/cse-1/Cae4", PeerAE},
		{"cse2@onem2m.com", "/cse-2", PeerCSE},
		{"cse3@onem2m.com", "//m2m.example.com/cse-3", PeerCSE},
		{"cred2@onem2m.com", "", PeerCredential},
	}
	for _, tc := range cases {
		if err := ks.Add(tc.kpsa, key, tc.idA, testIdB); err != nil {
			t.Fatalf("%s: %v", tc.idA, err)
		}
	}
	srv := &Config{Keystore: ks, LocalID: testIdB, HandshakeTimeout: 5 * time.Second}
	defer srv.Close()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if (ConnectionState{}).PeerKind != PeerNone {
		t.Fatal("the zero state's kind")
	}
	for _, tc := range cases {
		accepted := make(chan *Conn, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				accepted <- nil
				return
			}
			mc := c.(*Conn)
			mc.Handshake()
			accepted <- mc
		}()
		cli := &Config{Keystore: ks, KpsaID: tc.kpsa, HandshakeTimeout: 5 * time.Second}
		c, err := Dial("tcp", l.Addr().String(), cli)
		if err != nil {
			t.Fatalf("%s: %v", tc.kpsa, err)
		}
		if k := c.ConnectionState().PeerKind; k != PeerCSE {
			t.Fatalf("%s: the client's peer kind %v, want CSE", tc.kpsa, k)
		}
		s := <-accepted
		if s == nil {
			t.Fatal("accept failed")
		}
		st := s.ConnectionState()
		if st.PeerKind != tc.want || st.PeerIsCredential != (tc.want == PeerCredential) {
			t.Fatalf("%q: peer kind %v (credential %v), want %v", tc.idA, st.PeerKind, st.PeerIsCredential, tc.want)
		}
		// The library, told this kind, judges as the connection does.
		for _, from := range []string{st.PeerID, "/cse-1/Cother", "/cse-2", "Cae2", "/Sae3"} {
			v1, err1 := s.OriginatorCheck(from, 0)
			v2, err2 := OriginatorCheck(int(st.PeerKind), st.PeerID, testIdB, from, 0)
			if v1 != v2 || (err1 == nil) != (err2 == nil) {
				t.Fatalf("%q from %q: connection %d %v, kind %v %d %v", tc.idA, from, v1, err1, st.PeerKind, v2, err2)
			}
		}
		if tc.want == PeerCredential {
			if err := s.BindAEID("/cse-1/Cbound"); err != nil {
				t.Fatal(err)
			}
			if st := s.ConnectionState(); st.PeerKind != PeerAE || st.PeerID != "/cse-1/Cbound" {
				t.Fatalf("after BindAEID: %+v", st)
			}
		}
		s.Close()
		c.Close()
		cli.Close()
	}
	if PeerKind(7).String() != "PeerKind(7)" || PeerCredential.String() != "credential" {
		t.Fatal("PeerKind.String")
	}
}
