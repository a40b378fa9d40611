// A program outside the module, as a user writes it: net/http served over
// TLS-PSK and called by http.Client, with the lines docs/go.md leads with.
// Run by tests/consumer.sh (ctest go_consumer) against the build tree's
// module through a replace directive, offline.
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"

	"m2mpsk.org/m2mpsk"
)

func main() {
	keys := os.Args[1] // a key file: kpsa-id=... kpsa=hex:... idb=/cse-1 ida=/cse-a

	// Server: http.Server over an m2mpsk listener.
	ln, err := m2mpsk.Listen("tcp", "127.0.0.1:0", &m2mpsk.Config{KeyFile: keys, LocalID: "/cse-1"})
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{ConnContext: m2mpsk.ConnContext, Handler: http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			conn := m2mpsk.FromContext(r.Context())
			if v, _ := conn.OriginatorCheck(r.Header.Get("X-M2M-Origin"), 0); v != m2mpsk.ORIGINATOR_ACCEPT {
				w.Header().Set("X-M2M-RSC", fmt.Sprint(v)) // 4106
				w.WriteHeader(http.StatusForbidden)
				return
			}
			fmt.Fprintf(w, "hello %s", conn.ConnectionState().PeerID)
		})}
	go srv.Serve(ln)
	defer srv.Close()

	// Client: plain http:// URLs, each connection dialled over TLS-PSK.
	client := &http.Client{Transport: &http.Transport{
		DialContext: (&m2mpsk.Dialer{Config: &m2mpsk.Config{KeyFile: keys, KpsaID: "test@onem2m.com"}}).DialContext,
	}}
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/cse-1", nil)
	req.Header.Set("X-M2M-Origin", "/cse-a")
	resp, err := client.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("%d %s\n", resp.StatusCode, body)

	req.Header.Set("X-M2M-Origin", "/cse-forged")
	resp, err = client.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Printf("%d %s\n", resp.StatusCode, resp.Header.Get("X-M2M-RSC"))
}
