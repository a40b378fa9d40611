package m2mpsk

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is a TLS-PSK or DTLS-PSK connection, as tls.Conn is for crypto/tls:
// a net.Conn whose Read and Write carry application data, with the
// handshake run on first use (or by Handshake). Over a stream (TCP) it
// runs TLS 1.2; over a datagram conn (a net.PacketConn, such as a
// connected *net.UDPConn, or a DTLS listener's peer) DTLS 1.2, one Write
// being one datagram and one Read one record.
//
// Read and Write may run concurrently, with Close from any goroutine.
type Conn struct {
	raw      net.Conn
	cfg      *Config
	client   bool
	datagram bool
	onClose  func()    // a listener's slot, released once
	pumped   *dtlsPeer // a DTLS listener's peer: its pump reads the association

	handshakeMu   sync.Mutex
	handshakeErr  error
	handshakeDone atomic.Bool

	mu     sync.Mutex // guards a (its pointer) and closed
	a      *Association
	closed bool

	// The buffers the library reads and writes are the Conn's own: cgo
	// refuses a caller's slice that lies in memory holding Go pointers.
	readMu  sync.Mutex
	rawBuf  []byte
	plain   []byte // decrypted data not yet returned by Read
	unfed   []byte // input the association refused (E_LIMIT), fed again after reading
	writeMu sync.Mutex
	outBuf  []byte
	inBuf   []byte // Write's copy of the caller's data

	deadlineMu      sync.Mutex
	readDL, writeDL time.Time
	state           ConnectionState
	closeOnce       sync.Once
	closeErr        error
}

// ConnectionState is what the handshake established.
type ConnectionState struct {
	HandshakeComplete bool
	Version           string // "TLSv1.2" or "DTLSv1.2"
	Suite             string // IANA name
	KpsaID            string
	// PeerID is the identity the association is bound to: IdB for a
	// client; for a server the peer's IdA, or the Credential-ID
	// "12-<KpsaID>" when its record has none (PeerIsCredential).
	PeerID           string
	PeerIsCredential bool
	// PeerKind is what PeerID is, as the originator check reads it:
	// PeerCSE for a client (IdB), PeerAE or PeerCSE for a server's IdA,
	// PeerCredential for a Credential-ID (PeerAE after BindAEID).
	PeerKind PeerKind
	LocalID  string
}

// PeerKind is what a connection is bound to (the C API's
// m2mpsk_peer_kind; its values are the ABI's: PeerAE == PEER_AE...).
type PeerKind int

// The kinds of peer binding.
const (
	PeerNone       PeerKind = 0 // no association (the zero ConnectionState)
	PeerAE         PeerKind = 1 // a Registree AE's AE-ID
	PeerCSE        PeerKind = 2 // a Registree (or Registrar) CSE's CSE-ID
	PeerCredential PeerKind = 3 // the Credential-ID "12-<KpsaID>": an AE not registered yet
)

func (k PeerKind) String() string {
	switch k {
	case PeerNone:
		return "none"
	case PeerAE:
		return "AE"
	case PeerCSE:
		return "CSE"
	case PeerCredential:
		return "credential"
	}
	return "PeerKind(" + strconv.Itoa(int(k)) + ")"
}

// peerKindOf reads a bound identifier as the library's originator check
// does (src/onem2m.c, assoc_bound_kind): the C API has no accessor for
// it. Past an absolute form's "//SP-ID", an identifier of one segment is
// a CSE-ID unless it starts with 'S' (an AE-ID-Stem, TS-0001 7.2); of two
// segments ("/cse-1/Cae"), an AE-ID.
func peerKindOf(id string, credential bool) PeerKind {
	switch {
	case id == "":
		return PeerNone
	case credential:
		return PeerCredential
	}
	if strings.HasPrefix(id, "//") {
		i := strings.IndexByte(id[2:], '/')
		if i < 0 {
			return PeerCSE // not an identifier: the check refuses it
		}
		id = id[2+i:]
	}
	if !strings.HasPrefix(id, "/") {
		return PeerCSE // not an identifier: the check refuses it
	}
	segs := strings.SplitN(id[1:], "/", 2)
	if len(segs) == 1 && !strings.HasPrefix(segs[0], "S") {
		return PeerCSE
	}
	return PeerAE
}

// maxRecord is the most application data one record (and one DTLS Write)
// carries.
const maxRecord = 16384

// Client returns a client (initiator) connection over conn, using
// cfg.KpsaID's record.
func Client(conn net.Conn, cfg *Config) *Conn { return newConn(conn, cfg, true) }

// Server returns a server (responder) connection over conn, serving
// cfg.LocalID.
func Server(conn net.Conn, cfg *Config) *Conn { return newConn(conn, cfg, false) }

func newConn(conn net.Conn, cfg *Config, client bool) *Conn {
	_, datagram := conn.(net.PacketConn)
	if _, ok := conn.(interface{ isDatagram() }); ok {
		datagram = true
	}
	return &Conn{raw: conn, cfg: cfg, client: client, datagram: datagram}
}

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.raw }

// LocalAddr returns the local network address.
func (c *Conn) LocalAddr() net.Addr { return c.raw.LocalAddr() }

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// SetDeadline sets the read and write deadlines (see net.Conn); the
// handshake uses its own and then restores these.
func (c *Conn) SetDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.readDL, c.writeDL = t, t
	c.deadlineMu.Unlock()
	return c.raw.SetDeadline(t)
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.readDL = t
	c.deadlineMu.Unlock()
	return c.raw.SetReadDeadline(t)
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	c.writeDL = t
	c.deadlineMu.Unlock()
	return c.raw.SetWriteDeadline(t)
}

// Handshake runs the handshake if it has not run yet.
func (c *Conn) Handshake() error { return c.HandshakeContext(context.Background()) }

// HandshakeContext runs the handshake, bounded by ctx and by the Config's
// HandshakeTimeout. A failed handshake's error is returned again by every
// later call.
func (c *Conn) HandshakeContext(ctx context.Context) error {
	if c.handshakeDone.Load() {
		return nil
	}
	c.handshakeMu.Lock()
	defer c.handshakeMu.Unlock()
	if c.handshakeDone.Load() {
		return nil
	}
	if c.handshakeErr != nil {
		return c.handshakeErr
	}
	err := c.handshake(ctx)
	if err != nil {
		c.handshakeErr = err
		return err
	}
	c.handshakeDone.Store(true)
	return nil
}

func (c *Conn) handshake(ctx context.Context) error {
	if c.cfg == nil {
		return invalid("nil Config")
	}
	role, transport := ROLE_RESPONDER, TRANSPORT_TLS
	if c.client {
		role = ROLE_INITIATOR
	}
	if c.datagram {
		transport = TRANSPORT_DTLS
	}
	a, err := c.cfg.NewAssociation(role, transport)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		a.Close()
		return net.ErrClosed
	}
	c.a = a
	c.mu.Unlock()
	if c.datagram && c.cfg.MTU > 0 {
		if err := a.SetMTU(c.cfg.MTU); err != nil {
			return err
		}
	}
	if !c.client {
		// The rate limit counts a peer's failures by its address.
		if tag := c.raw.RemoteAddr().String(); len(tag) <= PEER_TAG_MAX {
			_ = a.SetPeerTag(tag)
		}
	}
	if err := a.Start(Now()); err != nil {
		return err
	}

	deadline := time.Now().Add(c.cfg.handshakeTimeout())
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// ctx's cancellation interrupts a read or write in progress. The
	// watcher is gone before the caller's deadlines are restored, so that
	// a late cancellation cannot leave its deadline on an established
	// connection.
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-ctx.Done():
			_ = c.raw.SetDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	defer func() {
		close(stop)
		<-exited
		c.restoreDeadlines()
	}()
	_ = c.raw.SetWriteDeadline(deadline)

	buf := make([]byte, 17*1024)
	for {
		if err := c.flush(); err != nil {
			return c.ctxErr(ctx, err)
		}
		switch a.State() {
		case STATE_ESTABLISHED:
			c.state = ConnectionState{HandshakeComplete: true, Version: a.Version(),
				Suite: a.Suite(), KpsaID: a.KpsaID(), PeerID: a.PeerID(),
				PeerIsCredential: a.PeerIsCredential(), LocalID: a.LocalID()}
			c.state.PeerKind = peerKindOf(c.state.PeerID, c.state.PeerIsCredential)
			return nil
		case STATE_HANDSHAKING:
		case STATE_WAITING_KEY:
			// The keystore's source is asked for the record (keysource.go);
			// the peer's bytes past its identity wait in the association.
			if err := c.waitKey(ctx, a, deadline); err != nil {
				return err
			}
			if err := a.Resume(Now()); err != nil {
				_ = c.flush() // the alert, if one is queued
				return err
			}
			continue
		default:
			return c.failure(a)
		}
		// Wait for input until the next timer (a DTLS retransmission)
		// or the deadline.
		wait := deadline
		if t, ok, _ := a.NextTimeout(); ok {
			if at := clockStart.Add(time.Duration(t) * time.Millisecond); at.Before(wait) {
				wait = at
			}
		}
		_ = c.raw.SetReadDeadline(wait)
		n, rerr := c.raw.Read(buf)
		if n > 0 {
			if ferr := a.Feed(buf[:n], Now()); ferr != nil {
				_ = c.flush() // the alert, if one is queued
				if !c.datagram || a.State() == STATE_FAILED {
					return ferr
				}
				// A stray datagram does not end a DTLS handshake.
			}
		}
		if rerr != nil {
			var ne net.Error
			if errors.As(rerr, &ne) && ne.Timeout() && ctx.Err() == nil {
				if !time.Now().Before(deadline) {
					// The library fails it as REASON_TIMEOUT.
					_ = a.HandleTimeout(Now() + c.cfg.handshakeTimeout().Milliseconds())
					return &Error{Code: E_FAILED, Reason: REASON_TIMEOUT,
						Detail: "handshake timed out"}
				}
				if err := a.HandleTimeout(Now()); err != nil {
					_ = c.flush()
					return err
				}
				continue
			}
			if n == 0 {
				if rerr == io.EOF {
					rerr = io.ErrUnexpectedEOF
				}
				return c.ctxErr(ctx, rerr)
			}
		}
	}
}

// ctxErr prefers ctx's error to the one its cancellation caused.
// waitKey waits until a's key request is answered, ctx is done or the
// handshake's deadline passes; at the deadline the library fails a as
// timed out, as it does for a silent peer.
func (c *Conn) waitKey(ctx context.Context, a *Association, deadline time.Time) error {
	st, err := c.cfg.build()
	if err != nil {
		return err
	}
	err = st.ks.awaitKey(ctx, a, deadline)
	if errors.Is(err, &Error{Code: E_FAILED, Reason: REASON_TIMEOUT}) {
		_ = a.HandleTimeout(Now() + c.cfg.handshakeTimeout().Milliseconds())
		_ = c.flush()
	}
	return err
}

func (c *Conn) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// failure is the error of a failed association.
func (c *Conn) failure(a *Association) error {
	r := a.Failure()
	d := a.FailureDetail()
	if d == "" {
		d = Strerror(E_FAILED)
	}
	return &Error{Code: E_FAILED, Reason: r, Detail: d}
}

func (c *Conn) restoreDeadlines() {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	_ = c.raw.SetReadDeadline(c.readDL)
	_ = c.raw.SetWriteDeadline(c.writeDL)
}

// flush sends what the association has to send, in order: the write lock
// keeps one drain-and-send at a time.
func (c *Conn) flush() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.flushLocked()
}

func (c *Conn) flushLocked() error {
	a := c.assoc()
	for {
		p := a.Pending()
		if p == 0 {
			return nil
		}
		if cap(c.outBuf) < p {
			c.outBuf = make([]byte, p)
		}
		n, err := a.DrainInto(c.outBuf[:p])
		if err != nil {
			return c.closedErr(err)
		}
		if n == 0 {
			return nil
		}
		if _, err := c.raw.Write(c.outBuf[:n]); err != nil {
			return err
		}
	}
}

func (c *Conn) assoc() *Association {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.a
}

// closedErr is net.ErrClosed for what a closed Conn's calls return.
func (c *Conn) closedErr(err error) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed && err != nil {
		return net.ErrClosed
	}
	return err
}

// Read reads application data: io.EOF once the peer sent close_notify,
// io.ErrUnexpectedEOF when the transport ended without it. For DTLS, b
// should hold a whole record (16384 bytes).
func (c *Conn) Read(b []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, c.closedErr(err)
	}
	if len(b) == 0 {
		return 0, nil
	}
	if c.pumped != nil {
		n, err := c.pumped.readPlain(b)
		return n, c.closedErr(err)
	}
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if len(c.plain) > 0 {
		n := copy(b, c.plain)
		c.plain = c.plain[n:]
		return n, nil
	}
	a := c.assoc()
	if c.rawBuf == nil {
		c.rawBuf = make([]byte, 17*1024)
	}
	for {
		n, err := a.Read(c.rawBuf[:maxRecord])
		if n > 0 {
			m := copy(b, c.rawBuf[:n])
			if m < n {
				if c.datagram {
					// A datagram's rest is dropped, as a UDP read does.
					return m, nil
				}
				c.plain = append(c.plain[:0], c.rawBuf[m:n]...)
			}
			return m, nil
		}
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return 0, io.EOF
			}
			_ = c.flush()
			return 0, c.closedErr(err)
		}
		if len(c.unfed) > 0 {
			// Read has made room: feed what was refused.
			in := c.unfed
			c.unfed = nil
			if err := c.feed(a, in); err != nil {
				return 0, err
			}
			continue
		}
		// The association's own timer (its record's not_after) bounds
		// the wait as much as the caller's deadline does.
		timer, err := c.armTimer(a)
		if err != nil {
			return 0, err
		}
		m, rerr := c.raw.Read(c.rawBuf)
		if timer {
			c.deadlineMu.Lock()
			_ = c.raw.SetReadDeadline(c.readDL)
			c.deadlineMu.Unlock()
		}
		if m > 0 {
			if err := c.feed(a, c.rawBuf[:m]); err != nil {
				return 0, err
			}
		}
		var ne net.Error
		if rerr != nil && m == 0 && timer && errors.As(rerr, &ne) && ne.Timeout() && !c.readExpired() {
			continue // the association's timer, not the caller's deadline
		}
		if rerr != nil && m == 0 {
			if rerr == io.EOF {
				rerr = io.ErrUnexpectedEOF
			}
			return 0, c.closedErr(rerr)
		}
	}
}

// armTimer handles the association's timer when it is due, else makes
// the next read wait no longer than it (true when it set a deadline).
func (c *Conn) armTimer(a *Association) (bool, error) {
	t, ok, _ := a.NextTimeout()
	if !ok {
		return false, nil
	}
	at := clockStart.Add(time.Duration(t) * time.Millisecond)
	if !at.After(time.Now()) {
		if err := a.HandleTimeout(Now()); err != nil {
			_ = c.flush()
			return false, c.closedErr(err)
		}
		if a.Pending() > 0 {
			_ = c.flush()
		}
		return false, nil
	}
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	if !c.readDL.IsZero() && c.readDL.Before(at) {
		return false, nil
	}
	_ = c.raw.SetReadDeadline(at)
	return true, nil
}

// readExpired reports whether the caller's read deadline has passed.
func (c *Conn) readExpired() bool {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	return !c.readDL.IsZero() && !time.Now().Before(c.readDL)
}

// feed feeds input to the association and sends what it answers.
func (c *Conn) feed(a *Association, in []byte) error {
	err := a.Feed(in, Now())
	if err != nil && errors.Is(err, ErrLimit) && !c.datagram {
		// Nothing consumed: keep it until Read has taken what waits.
		c.unfed = append([]byte(nil), in...)
		err = nil
	}
	if a.Pending() > 0 {
		if ferr := c.flush(); ferr != nil && err == nil {
			err = ferr
		}
	}
	if err != nil && c.datagram && a.State() == STATE_ESTABLISHED {
		// A stray or oversized datagram is dropped, as UDP would.
		return nil
	}
	return c.closedErr(err)
}

// Write writes application data. For DTLS, b is one datagram, at most
// 16384 bytes (E_INVALID beyond).
func (c *Conn) Write(b []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, c.closedErr(err)
	}
	if c.datagram && len(b) > maxRecord {
		return 0, invalid("a DTLS write is one record: at most 16384 bytes")
	}
	if len(b) == 0 {
		return 0, nil
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	a := c.assoc()
	if c.inBuf == nil {
		c.inBuf = make([]byte, maxRecord)
	}
	written := 0
	for written < len(b) {
		n := copy(c.inBuf, b[written:])
		if err := a.Write(c.inBuf[:n]); err != nil {
			return written, c.closedErr(err)
		}
		if err := c.flushLocked(); err != nil {
			return written, err
		}
		written += n
	}
	return written, nil
}

// Close sends close_notify (when the handshake is complete; bounded by one
// second) and closes the connection, freeing the association.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		a := c.a
		c.mu.Unlock()
		if a != nil && c.handshakeDone.Load() && a.State() == STATE_ESTABLISHED {
			_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
			c.writeMu.Lock()
			if a.CloseNotify() == nil {
				_ = c.flushLocked()
			}
			c.writeMu.Unlock()
		}
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.closeErr = c.raw.Close()
		if a != nil {
			a.Close()
		}
		if c.onClose != nil {
			c.onClose()
		}
	})
	return c.closeErr
}

// ConnectionState returns what the handshake established (zero before).
func (c *Conn) ConnectionState() ConnectionState {
	if !c.handshakeDone.Load() {
		return ConnectionState{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// OriginatorCheck decides whether a request received on this connection
// may carry the originator from (its From, "" when absent), against the
// identity the connection is bound to: ORIGINATOR_ACCEPT (0), or the
// Response Status Code to answer with, ORIGINATOR_NOT_AUTHENTICATED (4106)
// or ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED (4107). flags: 0 or
// ORIGINATOR_AE_CREATE (an AE registering) | ORIGINATOR_ALLOW_UNSECURED_AE.
// On error the verdict is 4106, never 0.
func (c *Conn) OriginatorCheck(from string, flags uint) (int, error) {
	if !c.handshakeDone.Load() {
		return ORIGINATOR_NOT_AUTHENTICATED, &Error{Code: E_STATE, Detail: "handshake not complete"}
	}
	v, err := c.assoc().OriginatorCheck(from, flags)
	return v, c.closedErr(err)
}

// BindAEID binds the AE-ID a CSE assigned when an AE registered over a
// connection bound to a Credential-ID (see Association.BindAEID).
func (c *Conn) BindAEID(aeID string) error {
	if !c.handshakeDone.Load() {
		return &Error{Code: E_STATE, Detail: "handshake not complete"}
	}
	err := c.assoc().BindAEID(aeID)
	if err == nil {
		c.mu.Lock()
		c.state.PeerID, c.state.PeerIsCredential = aeID, false
		c.state.PeerKind = peerKindOf(aeID, false)
		c.mu.Unlock()
	}
	return c.closedErr(err)
}

// ExportKeyingMaterial is the RFC 5705 exporter (context nil: none).
func (c *Conn) ExportKeyingMaterial(label string, context []byte, length int) ([]byte, error) {
	if !c.handshakeDone.Load() {
		return nil, &Error{Code: E_STATE, Detail: "handshake not complete"}
	}
	out, err := c.assoc().ExportKeyingMaterial(label, context, length)
	return out, c.closedErr(err)
}
