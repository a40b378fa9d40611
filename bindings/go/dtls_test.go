package m2mpsk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"m2mpsk.org/m2mpsk/internal/capi"
)

func dtlsServe(t *testing.T, srv *Config) *DTLSListener {
	t.Helper()
	l, err := ListenDTLS("udp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	// Echo each datagram back, as it came.
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, maxRecord)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}(c)
		}
	}()
	return l
}

func TestDTLSManyPeers(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, HandshakeTimeout: 5 * time.Second}
	defer srv.Close()
	l := dtlsServe(t, srv)
	const peers = 8
	var wg sync.WaitGroup
	errs := make(chan error, peers)
	for i := 0; i < peers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			kpsa := testKpsa
			if i%2 == 1 {
				kpsa = testKpsaCred
			}
			cli := &Config{Keystore: ks, KpsaID: kpsa, HandshakeTimeout: 5 * time.Second}
			defer cli.Close()
			c, err := DialDTLS("udp", l.Addr().String(), cli)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if st := c.ConnectionState(); st.Version != "DTLSv1.2" || st.PeerID != testIdB {
				errs <- fmt.Errorf("state %+v", st)
				return
			}
			// Datagram boundaries are kept: each write comes back whole.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, maxRecord)
			for _, size := range []int{1, 100, 1200, 5000, maxRecord} {
				msg := bytes.Repeat([]byte{byte(i)}, size)
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				n, err := c.Read(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) {
					errs <- fmt.Errorf("peer %d size %d: got %d bytes, %v", i, size, n, err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if l.cookiesSent.Load() < peers {
		t.Errorf("%d cookies sent for %d peers", l.cookiesSent.Load(), peers)
	}
	// Too big for one record: an error, nothing sent.
	cli := &Config{Keystore: ks, KpsaID: testKpsa}
	defer cli.Close()
	c, err := DialDTLS("udp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, maxRecord+1)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("oversized write: %v", err)
	}
}

// Garbage and ClientHellos without a cookie cost the server no peer; past
// MaxPeers a new peer is not served; an idle peer is closed.
func TestDTLSBounds(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, MaxPeers: 2, IdleTimeout: 400 * time.Millisecond,
		HandshakeTimeout: 2 * time.Second}
	defer srv.Close()
	l := dtlsServe(t, srv)

	raw, err := net.Dial("udp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for i := 0; i < 50; i++ {
		raw.Write([]byte(fmt.Sprintf("garbage %d", i)))
	}
	// A real ClientHello, never followed by its cookie: only a
	// HelloVerifyRequest comes back.
	a, _ := (&Config{Keystore: ks, KpsaID: testKpsa}).NewAssociation(ROLE_INITIATOR, TRANSPORT_DTLS)
	defer a.Close()
	a.Start(Now())
	hello, _ := a.Drain()
	before := l.cookiesSent.Load()
	raw.Write(hello)
	raw.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := raw.Read(make([]byte, 2048)); err != nil || n == 0 {
		t.Fatalf("no HelloVerifyRequest: %v", err)
	}
	if l.cookiesSent.Load() != before+1 || l.Peers() != 0 {
		t.Fatalf("cookies %d, peers %d", l.cookiesSent.Load()-before, l.Peers())
	}

	// Two peers fill MaxPeers; a third handshake gets no answer.
	cli := &Config{Keystore: ks, KpsaID: testKpsa, HandshakeTimeout: 2 * time.Second}
	defer cli.Close()
	c1, err := DialDTLS("udp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := DialDTLS("udp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if l.Peers() != 2 {
		t.Fatalf("peers %d", l.Peers())
	}
	short := &Config{Keystore: ks, KpsaID: testKpsa, HandshakeTimeout: 300 * time.Millisecond}
	defer short.Close()
	if _, err := DialDTLS("udp", l.Addr().String(), short); err == nil {
		t.Fatal("a third peer past MaxPeers 2")
	} else if e := asError(err); e == nil || e.Reason != REASON_TIMEOUT {
		t.Fatalf("third peer: %v", err)
	}
	// Idle: both are closed by the server within a few IdleTimeouts, and
	// a new peer gets in.
	deadline := time.Now().Add(3 * time.Second)
	for l.Peers() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if l.Peers() != 0 {
		t.Fatalf("idle peers still held: %d", l.Peers())
	}
	c3, err := DialDTLS("udp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	c3.Close()
	if _, err := DialDTLS("tcp", l.Addr().String(), cli); !errors.Is(err, ErrInvalid) {
		t.Fatalf("DialDTLS over tcp: %v", err)
	}
}

// A lossy path: the proxy drops the first datagram each way, and the
// retransmission timers recover.
func TestDTLSRetransmission(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB}
	defer srv.Close()
	l := dtlsServe(t, srv)
	proxy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	up, err := net.Dial("udp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	var client net.Addr
	var mu sync.Mutex
	var dropped [2]int
	go func() { // client -> server, dropping the first
		buf := make([]byte, 65536)
		for {
			n, from, err := proxy.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			client = from
			drop := dropped[0] == 0
			if drop {
				dropped[0]++
			}
			mu.Unlock()
			if !drop {
				up.Write(buf[:n])
			}
		}
	}()
	go func() { // server -> client, dropping the first
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			to := client
			drop := dropped[1] == 0
			if drop {
				dropped[1]++
			}
			mu.Unlock()
			if !drop && to != nil {
				proxy.WriteTo(buf[:n], to)
			}
		}
	}()
	cli := &Config{Keystore: ks, KpsaID: testKpsa, HandshakeTimeout: 10 * time.Second}
	defer cli.Close()
	start := time.Now()
	c, err := DialDTLS("udp", proxy.LocalAddr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("handshake over a lossy path: %v", time.Since(start))
	mu.Lock()
	if dropped != [2]int{1, 1} {
		t.Fatalf("dropped %v", dropped)
	}
	mu.Unlock()
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 100)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("echo: %q %v", buf[:n], err)
	}
}

// Each engine this process can load serves DTLS: OpenSSL with the cookie
// exchange, BoringSSL (which has none) by making the peer at once.
func TestDTLSEngines(t *testing.T) {
	ks := testKeystore(t)
	for _, eng := range []int{ENGINE_OPENSSL, ENGINE_BORINGSSL} {
		name := capi.Engine_name(eng)
		t.Run(name, func(t *testing.T) {
			if capi.Engine_available(eng) == 0 {
				t.Skipf("engine %s not available", name)
			}
			srv := &Config{Keystore: ks, LocalID: testIdB, Engine: eng}
			defer srv.Close()
			l := dtlsServe(t, srv)
			cli := &Config{Keystore: ks, KpsaID: testKpsa, Engine: eng, HandshakeTimeout: 5 * time.Second}
			defer cli.Close()
			for i := 0; i < 2; i++ {
				c, err := DialDTLS("udp", l.Addr().String(), cli)
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte("ping"))
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				buf := make([]byte, 100)
				if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
					t.Fatalf("echo: %q %v", buf[:n], err)
				}
				c.Close()
			}
			wantCookies := eng == ENGINE_OPENSSL
			if got := l.cookiesSent.Load() > 0; got != wantCookies {
				t.Fatalf("cookies sent: %d", l.cookiesSent.Load())
			}
		})
	}
	_, err := (&Config{Keystore: ks, LocalID: testIdB, Engine: 99}).NewAssociation(ROLE_RESPONDER, TRANSPORT_DTLS)
	wantCode(t, err, E_INVALID)
}

// TestDTLSServerFinalFlightLost drops the server's last flight
// (ChangeCipherSpec and its epoch-1 Finished) on its way to the client,
// while the server's application accepts but does not read: the client's
// retransmission must still be answered, by the listener itself. Then the
// records the server application does not read are bounded.
func TestDTLSServerFinalFlightLost(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, HandshakeTimeout: 10 * time.Second}
	defer srv.Close()
	l, err := ListenDTLS("udp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	// The lossy path: client <-> proxy <-> server.
	proxy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	up, err := net.Dial("udp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	var client atomic.Pointer[net.UDPAddr]
	var dropped atomic.Int32
	go func() {
		buf := make([]byte, 64*1024)
		for {
			n, addr, err := proxy.ReadFrom(buf)
			if err != nil {
				return
			}
			client.Store(addr.(*net.UDPAddr))
			_, _ = up.Write(buf[:n])
		}
	}()
	go func() {
		buf := make([]byte, 64*1024)
		dropCCS, dropFin := true, true
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if d := buf[:n]; n >= 13 {
				// A DTLS record: type, version, epoch (bytes 3-4).
				epoch := int(d[3])<<8 | int(d[4])
				if d[0] == 20 && dropCCS {
					dropCCS = false
					dropped.Add(1)
					continue
				}
				if d[0] == 22 && epoch == 1 && dropFin {
					dropFin = false
					dropped.Add(1)
					continue
				}
			}
			if a := client.Load(); a != nil {
				_, _ = proxy.WriteTo(buf[:n], a)
			}
		}
	}()

	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c // and not read until the client is done
		}
	}()
	cli := &Config{Keystore: ks, KpsaID: testKpsa, HandshakeTimeout: 8 * time.Second}
	defer cli.Close()
	start := time.Now()
	c, err := DialDTLS("udp", proxy.LocalAddr().String(), cli)
	if err != nil {
		t.Fatalf("client handshake, the server's last flight lost and its application not reading: %v", err)
	}
	defer c.Close()
	if el := time.Since(start); el > 6*time.Second {
		t.Fatalf("client handshake took %v", el)
	}
	if dropped.Load() == 0 {
		t.Fatal("the lossy path dropped nothing")
	}
	var sc net.Conn
	select {
	case sc = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no peer accepted")
	}
	defer sc.Close()

	// The server application still does not read: the listener queues at
	// most maxQueuedRecords records and drops the rest.
	const sent = maxQueuedRecords + 16
	for i := 0; i < sent; i++ {
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // no loss in the socket's own buffer
	}
	p := sc.(*Conn).pumped
	deadline := time.Now().Add(5 * time.Second)
	for p.dropped.Load() < sent-maxQueuedRecords && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := p.dropped.Load(); got != sent-maxQueuedRecords {
		t.Fatalf("dropped %d records, want %d", got, sent-maxQueuedRecords)
	}
	buf := make([]byte, maxRecord)
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < maxQueuedRecords; i++ {
		n, err := sc.Read(buf)
		if err != nil || n != 1 || buf[0] != byte(i) {
			t.Fatalf("record %d: %v %v", i, buf[:n], err)
		}
	}
	// close_notify ends the server's reads with io.EOF.
	c.Close()
	if n, err := sc.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after close_notify: %d %v", n, err)
	}
}
