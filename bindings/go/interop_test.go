package m2mpsk

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The suites both sides offer: plain PSK, as TS-0003 8.2.2.1 profiles.
const opensslCiphers = "PSK-AES128-GCM-SHA256:PSK-AES128-CBC-SHA256:PSK-AES128-CBC-SHA"

// opensslPeer is a running `openssl s_server` or `s_client` whose stdout
// is read line by line.
type opensslPeer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	seen  []string
}

func opensslBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("M2MPSK_OPENSSL")
	if bin == "" {
		if p, err := exec.LookPath("openssl"); err == nil {
			bin = p
		}
	}
	if bin == "" {
		t.Skip("openssl not found (apt-get install openssl)")
	}
	return bin
}

func startOpenSSL(t *testing.T, args ...string) *opensslPeer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	cmd := exec.CommandContext(ctx, opensslBin(t), args...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	p := &opensslPeer{cmd: cmd, stdin: stdin, lines: make(chan string, 1024)}
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			p.lines <- s.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		cancel()
	})
	return p
}

// waitFor returns the submatches of the first line matching re.
func (p *opensslPeer) waitFor(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("openssl ended before %q; it said:\n%s", re, strings.Join(p.seen, "\n"))
			}
			p.seen = append(p.seen, l)
			if m := rx.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-timeout:
			t.Fatalf("no %q from openssl in 10 s; it said:\n%s", re, strings.Join(p.seen, "\n"))
		}
	}
}

func interopTransports() []struct {
	name string
	dtls bool
} {
	return []struct {
		name string
		dtls bool
	}{{"TLS", false}, {"DTLS", true}}
}

// Go's client against openssl s_server.
func TestInteropOpenSSLServer(t *testing.T) {
	for _, tr := range interopTransports() {
		t.Run(tr.name, func(t *testing.T) {
			args := []string{"s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-nocert",
				"-psk", hex.EncodeToString(testKey), "-psk_identity", testKpsa,
				"-cipher", opensslCiphers}
			network := "tcp"
			if tr.dtls {
				args = append(args, "-dtls1_2")
				network = "udp"
			}
			srv := startOpenSSL(t, args...)
			port := srv.waitFor(t, `^ACCEPT 127\.0\.0\.1:(\d+)$`)[1]
			ks := testKeystore(t)
			cli := &Config{Keystore: ks, KpsaID: testKpsa, HandshakeTimeout: 10 * time.Second}
			defer cli.Close()
			c, err := Dial(network, "127.0.0.1:"+port, cli)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			st := c.ConnectionState()
			if !st.HandshakeComplete || st.PeerID != testIdB {
				t.Fatalf("state %+v", st)
			}
			srv.waitFor(t, `^CIPHER is (\S+)$`)
			// Our data reaches s_server's stdout, its stdin reaches us.
			if _, err := c.Write([]byte("hello from go\n")); err != nil {
				t.Fatal(err)
			}
			srv.waitFor(t, `^hello from go$`)
			fmt.Fprintf(srv.stdin, "hello from openssl\n")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, maxRecord)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != "hello from openssl\n" {
				t.Fatalf("read %q %v", buf[:n], err)
			}
			t.Logf("%s with openssl s_server: %s", st.Version, st.Suite)
		})
	}
}

// openssl s_client against Go's server.
func TestInteropOpenSSLClient(t *testing.T) {
	for _, tr := range interopTransports() {
		t.Run(tr.name, func(t *testing.T) {
			opensslBin(t)
			ks := testKeystore(t)
			srvCfg := &Config{Keystore: ks, LocalID: testIdB, HandshakeTimeout: 10 * time.Second}
			defer srvCfg.Close()
			var l net.Listener
			var err error
			if tr.dtls {
				l, err = ListenDTLS("udp", "127.0.0.1:0", srvCfg)
			} else {
				l, err = Listen("tcp", "127.0.0.1:0", srvCfg)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			type result struct {
				st   ConnectionState
				line string
				err  error
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
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, maxRecord)
				n, err := c.Read(buf)
				if err != nil {
					done <- result{err: err}
					return
				}
				line := string(buf[:n])
				_, err = c.Write([]byte("echo: " + line))
				done <- result{st: mc.ConnectionState(), line: line, err: err}
			}()
			args := []string{"s_client", "-connect", l.Addr().String(), "-nocommands",
				"-psk", hex.EncodeToString(testKey), "-psk_identity", testKpsa,
				"-cipher", opensslCiphers}
			if tr.dtls {
				args = append(args, "-dtls1_2")
			}
			cli := startOpenSSL(t, args...)
			cli.waitFor(t, `Cipher is (\S+)$`)
			fmt.Fprintf(cli.stdin, "ping from openssl\n")
			cli.waitFor(t, `^echo: ping from openssl$`)
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the server saw nothing")
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.line != "ping from openssl\n" || r.st.PeerID != testIdA || r.st.KpsaID != testKpsa {
				t.Fatalf("server got %q, state %+v", r.line, r.st)
			}
			t.Logf("%s with openssl s_client: %s", r.st.Version, r.st.Suite)
		})
	}
}
