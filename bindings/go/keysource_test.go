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
)

// fakeDB is a key source over a map, answering after a delay: what a
// database client does. It counts the requests per KpsaID.
type fakeDB struct {
	delay time.Duration
	mu    sync.Mutex
	keys  map[string][]byte
	asked map[string]int
	ida   string
}

func newFakeDB(delay time.Duration) *fakeDB {
	return &fakeDB{delay: delay, keys: map[string][]byte{}, asked: map[string]int{}, ida: testIdA}
}

func (db *fakeDB) source(req *KeyRequest) {
	time.Sleep(db.delay)
	db.mu.Lock()
	db.asked[req.KpsaID]++
	key := db.keys[req.KpsaID]
	db.mu.Unlock()
	if key == nil {
		return // answered Absent on return
	}
	if err := req.Supply(append([]byte(nil), key...), db.ida, testIdB, 0, 0); err != nil {
		panic(err)
	}
}

func (db *fakeDB) count(id string) int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.asked[id]
}

// keyFor is the key of device i, the same on both sides.
func keyFor(i int) []byte { return bytes.Repeat([]byte{byte(0x30 + i)}, 32) }

// sourcedKeystore is an empty keystore that asks src.
func sourcedKeystore(t *testing.T, src KeySource) *Keystore {
	t.Helper()
	ks, err := NewKeystore(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	if err := ks.SetKeySource(src, 64); err != nil {
		t.Fatal(err)
	}
	return ks
}

// sourcedServer is a TLS listener serving testIdB from a keystore that
// starts empty and asks src.
func sourcedServer(t *testing.T, src KeySource, timeout time.Duration) (net.Listener, *Keystore) {
	t.Helper()
	ks := sourcedKeystore(t, src)
	srv := &Config{Keystore: ks, LocalID: testIdB, HandshakeTimeout: timeout}
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); srv.Close() })
	return l, ks
}

// serveResults accepts n connections and reports each handshake's
// outcome (the bound peer, or the error), echoing one line on success.
func serveResults(l net.Listener, n int) <-chan error {
	out := make(chan error, n)
	go func() {
		for i := 0; i < n; i++ {
			c, err := l.Accept()
			if err != nil {
				out <- err
				continue
			}
			go func(c *Conn) {
				defer c.Close()
				if err := c.Handshake(); err != nil {
					out <- err
					return
				}
				st := c.ConnectionState()
				if st.PeerID != testIdA || st.LocalID != testIdB {
					out <- fmt.Errorf("server bound %+v", st)
					return
				}
				buf := make([]byte, 5)
				if _, err := io.ReadFull(c, buf); err != nil {
					out <- err
					return
				}
				_, err := c.Write(buf)
				out <- err
			}(c.(*Conn))
		}
	}()
	return out
}

func clientKeystore(t *testing.T, ids ...string) *Keystore {
	t.Helper()
	ks, err := NewKeystore(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ks.Close() })
	for i, id := range ids {
		if err := ks.Add(id, keyFor(i), testIdA, testIdB); err != nil {
			t.Fatal(err)
		}
	}
	return ks
}

// Twelve clients at once, eight of them for one KpsaID: every handshake
// completes with the bound identity, the source is asked once per KpsaID,
// and the records stay in the keystore afterwards.
func TestKeySourceTLS(t *testing.T) {
	db := newFakeDB(50 * time.Millisecond)
	ids := []string{"dev0@src.example.com", "dev1@src.example.com",
		"dev2@src.example.com", "dev3@src.example.com", "dev4@src.example.com"}
	for i, id := range ids {
		db.keys[id] = keyFor(i)
	}
	l, ks := sourcedServer(t, db.source, 5*time.Second)
	cks := clientKeystore(t, ids...)
	clients := []string{ids[0], ids[0], ids[0], ids[0], ids[0], ids[0], ids[0], ids[0],
		ids[1], ids[2], ids[3], ids[4]}
	results := serveResults(l, len(clients))
	var wg sync.WaitGroup
	var failed atomic.Int32
	start := time.Now()
	for _, id := range clients {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			cli := &Config{Keystore: cks, KpsaID: id, HandshakeTimeout: 5 * time.Second}
			defer cli.Close()
			c, err := Dial("tcp", l.Addr().String(), cli)
			if err != nil {
				t.Errorf("%s: %v", id, err)
				failed.Add(1)
				return
			}
			defer c.Close()
			if st := c.ConnectionState(); st.PeerID != testIdB || st.KpsaID != id {
				t.Errorf("client bound %+v", st)
			}
			c.Write([]byte("hello"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
				t.Errorf("%s: echo %q %v", id, buf, err)
			}
		}(id)
	}
	wg.Wait()
	for range clients {
		if err := <-results; err != nil {
			t.Errorf("server: %v", err)
		}
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("all done in %v: the source's delay did not apply", d)
	}
	for _, id := range ids {
		if n := db.count(id); n != 1 {
			t.Errorf("the source was asked %d times for %s", n, id)
		}
	}
	if n, _ := ks.Count(); n != len(ids) {
		t.Errorf("the keystore holds %d records, want %d", n, len(ids))
	}
	// Held now: a second handshake does not ask again.
	cli := &Config{Keystore: cks, KpsaID: ids[0]}
	defer cli.Close()
	results = serveResults(l, 1)
	c, err := Dial("tcp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("again"))
	io.ReadFull(c, make([]byte, 5))
	c.Close()
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	if n := db.count(ids[0]); n != 1 {
		t.Errorf("asked %d times after the record was held", n)
	}
}

// A KpsaID the source does not have fails as a wrong key does, on both
// sides, and the source returning without an answer is that answer.
func TestKeySourceAbsentLooksLikeAWrongKey(t *testing.T) {
	db := newFakeDB(10 * time.Millisecond)
	db.keys["known@src.example.com"] = keyFor(9) // not the client's key
	l, _ := sourcedServer(t, db.source, 5*time.Second)
	cks := clientKeystore(t, "unknown@src.example.com", "known@src.example.com")
	var got [2]*Error
	for i, id := range []string{"unknown@src.example.com", "known@src.example.com"} {
		results := serveResults(l, 1)
		cli := &Config{Keystore: cks, KpsaID: id}
		_, err := Dial("tcp", l.Addr().String(), cli)
		cli.Close()
		got[i] = asError(err)
		if got[i] == nil || got[i].Code != E_FAILED {
			t.Fatalf("%s: client %v", id, err)
		}
		se := asError(<-results)
		want := REASON_UNKNOWN_IDENTITY
		if i == 1 {
			want = REASON_BAD_KEY
		}
		if se == nil || se.Code != E_FAILED || se.Reason != want {
			t.Fatalf("%s: server %v, want reason %d", id, se, want)
		}
	}
	if got[0].Reason != got[1].Reason {
		t.Fatalf("the client tells an absent record (%v) from a wrong key (%v)", got[0], got[1])
	}
}

// A source that never answers: the server's handshake ends at its
// timeout (REASON_TIMEOUT), and the client's fails; nothing hangs.
func TestKeySourceSilentTimesOut(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	l, _ := sourcedServer(t, func(req *KeyRequest) { <-release }, 300*time.Millisecond)
	results := serveResults(l, 1)
	cks := clientKeystore(t, "slow@src.example.com")
	cli := &Config{Keystore: cks, KpsaID: "slow@src.example.com", HandshakeTimeout: 3 * time.Second}
	defer cli.Close()
	start := time.Now()
	if _, err := Dial("tcp", l.Addr().String(), cli); err == nil {
		t.Fatal("the client's handshake completed without a key")
	}
	se := asError(<-results)
	if se == nil || se.Reason != REASON_TIMEOUT {
		t.Fatalf("server: %v", se)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("ended after %v", d)
	}
}

// A client whose keystore lacks its KpsaID asks its own source before it
// sends anything; absent, it fails with REASON_UNKNOWN_IDENTITY.
func TestKeySourceClient(t *testing.T) {
	ks := testKeystore(t) // the server's: testKpsa
	srv := &Config{Keystore: ks, LocalID: testIdB}
	defer srv.Close()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var asked atomic.Int32
	cks := sourcedKeystore(t, func(req *KeyRequest) {
		asked.Add(1)
		if !req.Initiator || req.ServerName != "" {
			t.Errorf("request %+v", req)
		}
		if req.KpsaID == testKpsa {
			req.Supply(append([]byte(nil), testKey...), testIdA, testIdB, 0, 0)
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { c.(*Conn).Handshake(); c.Close() }()
		}
	}()
	cli := &Config{Keystore: cks, KpsaID: testKpsa}
	defer cli.Close()
	c, err := Dial("tcp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	if st := c.ConnectionState(); st.PeerID != testIdB {
		t.Fatalf("client bound %+v", st)
	}
	c.Close()
	other := &Config{Keystore: cks, KpsaID: "nobody@src.example.com"}
	defer other.Close()
	_, err = Dial("tcp", l.Addr().String(), other)
	if e := asError(err); e == nil || e.Reason != REASON_UNKNOWN_IDENTITY {
		t.Fatalf("absent for a client: %v", err)
	}
	if n := asked.Load(); n != 2 {
		t.Fatalf("asked %d times", n)
	}
}

// DTLS: the listener's handshakes wait for the source as TLS ones do.
func TestKeySourceDTLS(t *testing.T) {
	db := newFakeDB(30 * time.Millisecond)
	db.keys["udp0@src.example.com"] = keyFor(0)
	srv := &Config{Keystore: sourcedKeystore(t, db.source), LocalID: testIdB,
		HandshakeTimeout: 5 * time.Second}
	defer srv.Close()
	l := dtlsServe(t, srv)
	cks := clientKeystore(t, "udp0@src.example.com")
	cli := &Config{Keystore: cks, KpsaID: "udp0@src.example.com", HandshakeTimeout: 5 * time.Second}
	defer cli.Close()
	c, err := DialDTLS("udp", l.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("datagram")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "datagram" {
		t.Fatalf("echo %q %v", buf[:n], err)
	}
	if db.count("udp0@src.example.com") != 1 {
		t.Fatal("the source was not asked once")
	}
}

// Every error SetKeySource and the request's answers document.
func TestKeySourceErrors(t *testing.T) {
	ks, err := NewKeystore(false)
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, ks.SetKeySource(nil, 8), E_INVALID)
	wantCode(t, ks.SetKeySource(func(*KeyRequest) {}, 0), E_INVALID)
	ks.Close()
	wantCode(t, ks.SetKeySource(func(*KeyRequest) {}, 8), E_INVALID)

	// Answers: a bad one leaves the request open, a second one is E_STATE,
	// a record that appeared meanwhile wins with E_DUPLICATE.
	checked := make(chan error, 1)
	var sks *Keystore
	l, sks := sourcedServer(t, func(req *KeyRequest) {
		checked <- func() error {
			long := "/cse-" + string(bytes.Repeat([]byte("a"), ID_MAX))
			for _, c := range []struct {
				what          string
				key           []byte
				ida, idb      string
				notBef, notAf int64
				code          int
			}{
				{"short key", make([]byte, 3), testIdA, testIdB, 0, 0, E_KEY_LENGTH},
				{"bad IdA", testKey, "not an id", testIdB, 0, 0, E_IDA},
				{"bad IdB", testKey, testIdA, "not-a-cse", 0, 0, E_IDB},
				{"long IdA", testKey, long, testIdB, 0, 0, E_ID_LENGTH},
				{"bad window", testKey, testIdA, testIdB, 10, 5, E_VALIDITY},
				{"NUL", testKey, "a\x00b", testIdB, 0, 0, E_INVALID},
			} {
				err := req.Supply(c.key, c.ida, c.idb, c.notBef, c.notAf)
				if !errors.Is(err, &Error{Code: c.code}) {
					return fmt.Errorf("%s: %v", c.what, err)
				}
			}
			if err := sks.Add(req.KpsaID, testKey, testIdA, testIdB); err != nil {
				return err
			}
			if err := req.Supply(testKey, testIdA, testIdB, 0, 0); !errors.Is(err, &Error{Code: E_DUPLICATE}) {
				return fmt.Errorf("record there meanwhile: %v", err)
			}
			if err := req.Supply(testKey, testIdA, testIdB, 0, 0); !errors.Is(err, ErrState) {
				return fmt.Errorf("answered twice: %v", err)
			}
			if err := req.Absent(); err != nil {
				return fmt.Errorf("Absent after an answer: %v", err)
			}
			return nil
		}()
	}, 5*time.Second)
	results := serveResults(l, 1)
	cks := testKeystore(t)
	cli := &Config{Keystore: cks, KpsaID: testKpsa}
	defer cli.Close()
	c, err := Dial("tcp", l.Addr().String(), cli)
	if err != nil {
		t.Fatalf("the record added meanwhile did not serve: %v", err)
	}
	c.Write([]byte("hello"))
	io.ReadFull(c, make([]byte, 5))
	c.Close()
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	if err := <-results; err != nil {
		t.Fatal(err)
	}
}
