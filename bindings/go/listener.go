package m2mpsk

import (
	"context"
	"net"
	"sync"
)

// Listen listens on a stream network ("tcp", "tcp4", "tcp6", "unix") and
// returns a listener whose Accept returns server *Conns, as tls.Listen
// does. The Config is checked at once (a bad keystore or local identity
// is an error here, not at the first connection). For DTLS over UDP, see
// ListenDTLS.
func Listen(network, addr string, cfg *Config) (net.Listener, error) {
	if err := cfg.checkServer(); err != nil {
		return nil, err
	}
	inner, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return NewListener(inner, cfg), nil
}

// NewListener wraps a listener: Accept returns Server(conn, cfg), whose
// handshake runs on its first Read or Write (or Handshake). With
// cfg.MaxConns, Accept waits while that many connections are open.
func NewListener(inner net.Listener, cfg *Config) net.Listener {
	l := &listener{Listener: inner, cfg: cfg, done: make(chan struct{})}
	if cfg != nil && cfg.MaxConns > 0 {
		l.slots = make(chan struct{}, cfg.MaxConns)
	}
	return l
}

type listener struct {
	net.Listener
	cfg       *Config
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	if l.slots != nil {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	raw, err := l.Listener.Accept()
	if err != nil {
		if l.slots != nil {
			<-l.slots
		}
		return nil, err
	}
	c := Server(raw, l.cfg)
	if l.slots != nil {
		c.onClose = func() { <-l.slots }
	}
	return c, nil
}

func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Dialer dials m2mpsk connections: its DialContext fits
// http.Transport.DialContext. Over "udp", "udp4" or "udp6" it runs DTLS.
type Dialer struct {
	// NetDialer dials the transport (nil: a zero net.Dialer).
	NetDialer *net.Dialer
	Config    *Config
}

// DialContext dials addr and completes the handshake, bounded by ctx and
// the Config's HandshakeTimeout.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	nd := d.NetDialer
	if nd == nil {
		nd = &net.Dialer{}
	}
	if _, err := d.Config.build(); err != nil {
		return nil, err
	}
	raw, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := Client(raw, d.Config)
	if err := c.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Dial dials addr ("tcp" for TLS, "udp" for DTLS) and completes the
// handshake.
func Dial(network, addr string, cfg *Config) (*Conn, error) {
	c, err := (&Dialer{Config: cfg}).DialContext(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	return c.(*Conn), nil
}

// checkServer makes the library config and checks that it can serve.
func (c *Config) checkServer() error {
	if _, err := c.build(); err != nil {
		return err
	}
	if c.LocalID == "" && len(c.LocalIDs) == 0 && !c.RolesReversed {
		return &Error{Code: E_NO_LOCAL_ID, Detail: "a server Config needs LocalID"}
	}
	return nil
}

type connKey struct{}

// ConnContext is made for http.Server's ConnContext field: it puts the
// *Conn a request arrives on into the request's context, where
// FromContext finds it (for its ConnectionState and OriginatorCheck).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if mc, ok := c.(*Conn); ok {
		return context.WithValue(ctx, connKey{}, mc)
	}
	return ctx
}

// FromContext returns the *Conn that ConnContext stored, or nil.
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}
