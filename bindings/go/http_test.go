package m2mpsk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A oneM2M-style handler: the request's From (X-M2M-Origin) must be the
// identity the connection is bound to, else the Response Status Code the
// originator check gives (4106) goes back in X-M2M-RSC.
func oneM2MHandler(w http.ResponseWriter, r *http.Request) {
	c := FromContext(r.Context())
	if c == nil {
		http.Error(w, "not over m2mpsk", http.StatusInternalServerError)
		return
	}
	// An AE's registration (a CREATE of resource type 2) is the one
	// request a Credential-ID binding accepts.
	var flags uint
	if r.Method == "POST" && strings.Contains(r.Header.Get("Content-Type"), "ty=2") {
		flags = uint(ORIGINATOR_AE_CREATE)
	}
	v, err := c.OriginatorCheck(r.Header.Get("X-M2M-Origin"), flags)
	if err != nil || v != ORIGINATOR_ACCEPT {
		w.Header().Set("X-M2M-RSC", strconv.Itoa(v))
		w.WriteHeader(http.StatusForbidden)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	sum := sha256.Sum256(body)
	w.Header().Set("X-M2M-RSC", "2000")
	w.Header().Set("X-Peer-ID", c.ConnectionState().PeerID)
	w.Header().Set("X-Body-SHA256", hex.EncodeToString(sum[:]))
	w.Write(body)
}

func httpServe(t *testing.T, srv *Config) string {
	t.Helper()
	l, err := Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(oneM2MHandler), ConnContext: ConnContext,
		ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return l.Addr().String()
}

func httpClient(cli *Config) *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: (&Dialer{Config: cli}).DialContext},
		Timeout:   20 * time.Second,
	}
}

func TestHTTPOriginator(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB}
	defer srv.Close()
	addr := httpServe(t, srv)
	for _, tc := range []struct {
		kpsa, from, ctype, rsc, peer string
	}{
		{testKpsa, testIdA, "application/json", "2000", testIdA},
		{testKpsa, "/cse-forged", "application/json", "4106", ""},
		{testKpsaCred, "C", "application/json;ty=2", "2000", "12-" + testKpsaCred},
		{testKpsaCred, "Cmy-ae", "application/json", "4106", ""},
		{testKpsaCred, testIdA, "application/json", "4106", ""},
	} {
		cli := &Config{Keystore: ks, KpsaID: tc.kpsa}
		hc := httpClient(cli)
		req, _ := http.NewRequest("POST", "http://"+addr+"/cse-1", bytes.NewReader([]byte("{}")))
		req.Header.Set("X-M2M-Origin", tc.from)
		req.Header.Set("Content-Type", tc.ctype)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("X-M2M-RSC"); got != tc.rsc {
			t.Errorf("%s from %s: RSC %s, want %s", tc.kpsa, tc.from, got, tc.rsc)
		}
		if got := resp.Header.Get("X-Peer-ID"); got != tc.peer {
			t.Errorf("%s: server saw peer %q, want %q", tc.kpsa, got, tc.peer)
		}
		hc.CloseIdleConnections()
		cli.Close()
	}
	// A client with the wrong key gets no response at all.
	other, _ := NewKeystore(false)
	defer other.Close()
	other.Add(testKpsa, bytes.Repeat([]byte{9}, 32), testIdA, testIdB)
	_, err := httpClient(&Config{Keystore: other, KpsaID: testKpsa}).Get("http://" + addr + "/")
	if e := asError(err); e == nil || e.Code != E_FAILED {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestHTTPLargeBody(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB}
	defer srv.Close()
	addr := httpServe(t, srv)
	cli := &Config{Keystore: ks, KpsaID: testKpsa}
	defer cli.Close()
	body := make([]byte, 8<<20)
	for i := range body {
		body[i] = byte(i * 7)
	}
	req, _ := http.NewRequest("PUT", "http://"+addr+"/big", bytes.NewReader(body))
	req.Header.Set("X-M2M-Origin", testIdA)
	resp, err := httpClient(cli).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("8 MiB echo: %d bytes, %v", len(got), err)
	}
	sum := sha256.Sum256(body)
	if resp.Header.Get("X-Body-SHA256") != hex.EncodeToString(sum[:]) {
		t.Fatal("the server read another body")
	}
}

func TestHTTPConcurrentClients(t *testing.T) {
	ks := testKeystore(t)
	srv := &Config{Keystore: ks, LocalID: testIdB, MaxConns: 64}
	defer srv.Close()
	addr := httpServe(t, srv)
	cli := &Config{Keystore: ks, KpsaID: testKpsa}
	defer cli.Close()
	const clients = 50
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// One client (so one connection) each.
			hc := httpClient(cli)
			defer hc.CloseIdleConnections()
			for j := 0; j < 4; j++ {
				msg := fmt.Sprintf("client %d request %d", i, j)
				req, _ := http.NewRequestWithContext(context.Background(), "POST",
					"http://"+addr+"/", bytes.NewReader([]byte(msg)))
				req.Header.Set("X-M2M-Origin", testIdA)
				resp, err := hc.Do(req)
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(got) != msg {
					errs <- fmt.Errorf("%s: got %q, %v", msg, got, err)
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
}
