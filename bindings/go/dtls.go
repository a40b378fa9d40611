package m2mpsk

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DTLSListener serves DTLS-PSK to many peers on one UDP socket. A new
// peer's first datagrams go through the stateless cookie exchange (RFC 6347
// 4.2.1), so that a forged source address costs no state; only a
// ClientHello with a valid cookie makes a peer, up to Config.MaxPeers. Its
// handshake runs in the listener, bounded by Config.HandshakeTimeout (with
// the retransmission timers), and Accept returns the established peers as
// *Conn: one Write is one datagram, one Read one record. A peer silent for
// Config.IdleTimeout is closed.
type DTLSListener struct {
	pc       net.PacketConn
	cfg      *Config
	st       *configState
	maxPeers int
	idle     time.Duration

	mu    sync.Mutex
	peers map[string]*dtlsPeer

	accepts   chan *Conn
	done      chan struct{}
	closeOnce sync.Once

	cookiesSent atomic.Int64 // HelloVerifyRequests sent (for tests)
}

// ListenDTLS listens on network ("udp", "udp4", "udp6") at addr.
func ListenDTLS(network, addr string, cfg *Config) (*DTLSListener, error) {
	if err := cfg.checkServer(); err != nil {
		return nil, err
	}
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		return nil, err
	}
	return NewDTLSListener(pc, cfg)
}

// NewDTLSListener serves DTLS on pc, which it owns from then on.
func NewDTLSListener(pc net.PacketConn, cfg *Config) (*DTLSListener, error) {
	if err := cfg.checkServer(); err != nil {
		return nil, err
	}
	st, _ := cfg.build()
	l := &DTLSListener{pc: pc, cfg: cfg, st: st, maxPeers: cfg.MaxPeers, idle: cfg.IdleTimeout,
		peers: map[string]*dtlsPeer{}, accepts: make(chan *Conn, 64), done: make(chan struct{})}
	if l.maxPeers <= 0 {
		l.maxPeers = 1024
	}
	if l.idle <= 0 {
		l.idle = 5 * time.Minute
	}
	go l.serve()
	go l.reap()
	return l, nil
}

// Accept returns the next peer whose handshake completed.
func (l *DTLSListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.accepts:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close closes the socket and every peer.
func (l *DTLSListener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = l.pc.Close()
		l.mu.Lock()
		peers := make([]*dtlsPeer, 0, len(l.peers))
		for _, p := range l.peers {
			peers = append(peers, p)
		}
		l.mu.Unlock()
		for _, p := range peers {
			p.conn.Close()
		}
		for {
			select {
			case c := <-l.accepts:
				c.Close()
			default:
				return
			}
		}
	})
	return err
}

// Addr is the socket's address.
func (l *DTLSListener) Addr() net.Addr { return l.pc.LocalAddr() }

// Peers is the number of peers held now (handshaking or established).
func (l *DTLSListener) Peers() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.peers)
}

func (l *DTLSListener) serve() {
	buf := make([]byte, 64*1024)
	hvr := make([]byte, 64)
	for {
		n, addr, err := l.pc.ReadFrom(buf)
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.Close()
			return
		}
		if n == 0 {
			continue
		}
		key := addr.String()
		l.mu.Lock()
		p := l.peers[key]
		full := len(l.peers) >= l.maxPeers
		l.mu.Unlock()
		if p != nil {
			p.deliver(buf[:n])
			continue
		}
		if full || len(key) > PEER_TAG_MAX {
			continue // dropped: the peer retransmits, or gives up
		}
		m, err := l.st.dtlsListen(key, buf[:n], hvr)
		if err != nil {
			if e := asError(err); e == nil || e.Code != E_UNSUPPORTED {
				continue // not a ClientHello: dropped
			}
			// The engine has no cookie exchange (BoringSSL): the peer
			// is made at once, still within MaxPeers.
		} else if m > 0 {
			l.cookiesSent.Add(1) // before the peer can see it
			_, _ = l.pc.WriteTo(hvr[:m], addr)
			continue
		}
		p = l.newPeer(key, addr)
		if p == nil {
			continue
		}
		p.deliver(buf[:n])
		go l.handshake(p)
	}
}

func (l *DTLSListener) newPeer(key string, addr net.Addr) *dtlsPeer {
	p := &dtlsPeer{l: l, key: key, addr: addr, in: make(chan []byte, 64),
		closed: make(chan struct{}), dlChanged: make(chan struct{}),
		plain: make(chan []byte, maxQueuedRecords), ended: make(chan struct{})}
	p.lastSeen.Store(Now())
	p.conn = Server(p, l.cfg)
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.done:
		return nil
	default:
	}
	l.peers[key] = p
	return p
}

func (l *DTLSListener) handshake(p *dtlsPeer) {
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.handshakeTimeout())
	defer cancel()
	if err := p.conn.HandshakeContext(ctx); err != nil {
		p.conn.Close()
		return
	}
	// From now on the peer's datagrams are fed by pump, whether or not
	// the application reads: set before the Conn is handed out.
	p.conn.pumped = p
	go p.pump()
	select {
	case l.accepts <- p.conn:
	default:
		p.conn.Close() // nobody accepts: the backlog is full
	case <-l.done:
		p.conn.Close()
	}
}

// reap closes the peers idle longer than IdleTimeout.
func (l *DTLSListener) reap() {
	period := l.idle / 4
	if period < 20*time.Millisecond {
		period = 20 * time.Millisecond
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
		}
		limit := Now() - l.idle.Milliseconds()
		var idle []*dtlsPeer
		l.mu.Lock()
		for _, p := range l.peers {
			if p.lastSeen.Load() < limit {
				idle = append(idle, p)
			}
		}
		l.mu.Unlock()
		for _, p := range idle {
			p.conn.Close()
		}
	}
}

// maxQueuedRecords bounds a peer's decrypted records that wait for the
// application's Read (at most 64 x 16384 bytes); beyond it a record is
// dropped, as a full UDP socket buffer drops a datagram.
const maxQueuedRecords = 64

// dtlsPeer is one peer's view of the shared socket: a datagram net.Conn
// whose Read takes the datagrams the listener routes to it, during the
// handshake. Once established, pump feeds them to the association itself
// and queues the plaintext for the Conn's Read (readPlain).
type dtlsPeer struct {
	l        *DTLSListener
	key      string
	addr     net.Addr
	in       chan []byte
	closed   chan struct{}
	once     sync.Once
	lastSeen atomic.Int64
	conn     *Conn

	plain   chan []byte   // decrypted records for Read
	ended   chan struct{} // closed when pump stops; endErr is then set
	endErr  error
	dropped atomic.Int64 // records dropped on a full plain queue

	dlMu      sync.Mutex
	readDL    time.Time
	dlChanged chan struct{}
}

func (p *dtlsPeer) isDatagram() {}

// deliver queues a copy of a datagram; a full queue drops it, as a socket
// buffer would.
func (p *dtlsPeer) deliver(d []byte) {
	p.lastSeen.Store(Now())
	select {
	case p.in <- append([]byte(nil), d...):
	default:
	}
}

// pump feeds the established association each datagram the peer sends,
// under the Conn's read lock, so that the handshake's last retransmission
// is answered, and alerts and close_notify take effect, even when the
// application does not read; the plaintext waits in p.plain (bounded).
func (p *dtlsPeer) pump() {
	c := p.conn
	a := c.assoc()
	buf := make([]byte, maxRecord)
	for {
		var t *time.Timer
		var due <-chan time.Time
		if at, ok, _ := a.NextTimeout(); ok {
			t = time.NewTimer(time.Until(clockStart.Add(time.Duration(at) * time.Millisecond)))
			due = t.C
		}
		var d []byte
		stop := false
		select {
		case d = <-p.in:
		case <-due:
		case <-p.closed:
			stop = true
		}
		if t != nil {
			t.Stop()
		}
		if stop {
			return
		}
		c.readMu.Lock()
		var err error
		if d != nil {
			err = c.feed(a, d)
		} else if err = a.HandleTimeout(Now()); err == nil && a.Pending() > 0 {
			_ = c.flush()
		}
		for err == nil {
			n, rerr := a.Read(buf)
			if n > 0 {
				select {
				case p.plain <- append([]byte(nil), buf[:n]...):
				default:
					p.dropped.Add(1)
				}
				continue
			}
			if rerr != nil {
				if errors.Is(rerr, ErrClosed) {
					err = io.EOF
				} else {
					_ = c.flush()
					err = c.closedErr(rerr)
				}
			}
			break
		}
		c.readMu.Unlock()
		if err != nil {
			p.endErr = err
			close(p.ended)
			return
		}
	}
}

// Read takes the next datagram (the handshake's input).
func (p *dtlsPeer) Read(b []byte) (int, error) { return p.recv(p.in, nil, b) }

// readPlain takes the next decrypted record; once pump has stopped, what
// stopped it (io.EOF after close_notify).
func (p *dtlsPeer) readPlain(b []byte) (int, error) { return p.recv(p.plain, p.ended, b) }

// recv waits for the next item of ch, bounded by the read deadline and by
// Close; ended (when not nil) ends the wait with endErr once ch is empty.
func (p *dtlsPeer) recv(ch chan []byte, ended chan struct{}, b []byte) (int, error) {
	for {
		select {
		case d := <-ch:
			return copy(b, d), nil
		default:
		}
		p.dlMu.Lock()
		dl, changed := p.readDL, p.dlChanged
		p.dlMu.Unlock()
		var expired <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			expired = t.C
		}
		n, err, again := 0, error(nil), false
		select {
		case d := <-ch:
			n = copy(b, d)
		case <-ended:
			select {
			case d := <-ch:
				n = copy(b, d)
			default:
				err = p.endErr
			}
		case <-p.closed:
			err = net.ErrClosed
		case <-expired:
			err = os.ErrDeadlineExceeded
		case <-changed:
			again = true
		}
		if t != nil {
			t.Stop()
		}
		if !again {
			return n, err
		}
	}
}

func (p *dtlsPeer) Write(b []byte) (int, error) {
	select {
	case <-p.closed:
		return 0, net.ErrClosed
	default:
	}
	return p.l.pc.WriteTo(b, p.addr)
}

func (p *dtlsPeer) Close() error {
	p.once.Do(func() {
		close(p.closed)
		p.l.mu.Lock()
		if p.l.peers[p.key] == p {
			delete(p.l.peers, p.key)
		}
		p.l.mu.Unlock()
	})
	return nil
}

func (p *dtlsPeer) LocalAddr() net.Addr  { return p.l.pc.LocalAddr() }
func (p *dtlsPeer) RemoteAddr() net.Addr { return p.addr }

func (p *dtlsPeer) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

func (p *dtlsPeer) SetReadDeadline(t time.Time) error {
	p.dlMu.Lock()
	p.readDL = t
	close(p.dlChanged)
	p.dlChanged = make(chan struct{})
	p.dlMu.Unlock()
	return nil
}

// SetWriteDeadline does nothing: a datagram write does not wait.
func (p *dtlsPeer) SetWriteDeadline(time.Time) error { return nil }

// DialDTLS dials a DTLS server over UDP ("udp", "udp4", "udp6") and
// completes the handshake, retransmitting as RFC 6347 says.
func DialDTLS(network, addr string, cfg *Config) (*Conn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, invalid("DialDTLS needs a udp network")
	}
	return Dial(network, addr, cfg)
}
