package m2mpsk

import (
	"runtime"
	"sync"
	"time"

	"m2mpsk.org/m2mpsk/internal/capi"
)

// Config configures connections, as tls.Config does for crypto/tls. A
// Config may be shared by any number of connections; it must not be
// modified once used (the library settings it makes are frozen then).
type Config struct {
	// Keystore holds the records; or KeyFile names a key file that is
	// loaded into a keystore of the Config's own on first use (preferred:
	// the keys never pass through Go memory).
	Keystore *Keystore
	KeyFile  string

	// KpsaID is the record an initiator (client) uses, relative@fqdn.
	KpsaID string
	// LocalID is the CSE-ID (IdB) a responder (server) serves, e.g.
	// "/cse-1"; LocalIDs adds more. A server needs at least one (unless
	// RolesReversed).
	LocalID  string
	LocalIDs []string

	// Suites, colon-separated IANA names in preference order; "" for the
	// library's default (the RFC 4279 plain-PSK suites of the build), or
	// Profile's. Profile is 0 or PROFILE_TS0003 (the suites TS-0003
	// mandates per transport; E_SUITE when the engine lacks one).
	Suites  string
	Profile int
	// Engine is ENGINE_AUTO (0, per association), ENGINE_OPENSSL or
	// ENGINE_BORINGSSL (E_UNSUPPORTED when this process cannot load it).
	Engine int
	// RolesReversed runs SA2 (TS-0003 8.2.1): the client is Entity B.
	RolesReversed bool
	// RevealUnknownIdentity answers an unknown KpsaID with its own alert
	// instead of looking like a wrong key.
	RevealUnknownIdentity bool

	// HandshakeTimeout bounds a handshake (default 10 s): the library's
	// own timer and the socket deadline both use it.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds a server's handshakes in progress at once
	// (default 4096; past it new connections fail with E_LIMIT).
	MaxHandshakes int
	// MaxConns bounds the connections a Listener has open at once (0:
	// unbounded); Accept waits for one to close.
	MaxConns int
	// MaxInput bounds the input an association holds unconsumed, in
	// bytes (default 262144; at least MAX_INPUT_MIN).
	MaxInput int
	// EventQueue turns the audit event queue on with that capacity (1 to
	// 1048576; 0: off): NextEvent takes what the Config's associations
	// reported, never key material.
	EventQueue int

	// DTLS only: MTU (default 1400); MaxPeers bounds a DTLS listener's
	// peers (default 1024); IdleTimeout closes a DTLS peer silent that long
	// (default 5 minutes). Cookies are always exchanged first.
	MTU         int
	MaxPeers    int
	IdleTimeout time.Duration

	once  sync.Once
	state *configState
	err   error
}

// configState is what the first connection makes of a Config: the
// library's config (frozen from then on) and the keystore.
type configState struct {
	mu      sync.RWMutex
	cfg     capi.Config // nil once closed
	ks      *Keystore
	ownKeys bool // ks was loaded from KeyFile: Close closes it
}

func (c *Config) handshakeTimeout() time.Duration {
	if c.HandshakeTimeout > 0 {
		return c.HandshakeTimeout
	}
	return 10 * time.Second
}

// build makes the library config once.
func (c *Config) build() (*configState, error) {
	if c == nil {
		return nil, invalid("nil Config")
	}
	c.once.Do(func() { c.state, c.err = c.newState() })
	return c.state, c.err
}

func (c *Config) newState() (st *configState, err error) {
	st = &configState{ks: c.Keystore}
	if st.ks == nil {
		if c.KeyFile == "" {
			return nil, invalid("Config needs a Keystore or a KeyFile")
		}
		if st.ks, err = LoadKeystore(c.KeyFile); err != nil {
			return nil, err
		}
		st.ownKeys = true
	}
	ids := c.LocalIDs
	if c.LocalID != "" {
		ids = append([]string{c.LocalID}, ids...)
	}
	if err = noNUL("Config string", append([]string{c.Suites, c.KpsaID}, ids...)...); err != nil {
		return nil, err
	}
	ms := c.handshakeTimeout().Milliseconds()
	if ms < 1 || ms > 3600000 {
		return nil, invalid("HandshakeTimeout out of range (1 ms to 1 h)")
	}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	defer catch(&err)
	st.cfg = capi.NewConfig()
	liveHandles.Add(1)
	runtime.SetFinalizer(st, (*configState).close)
	if c.Engine != ENGINE_AUTO {
		st.cfg.Set_engine(c.Engine)
	}
	if c.Profile != 0 {
		st.cfg.Set_profile(c.Profile)
	}
	if c.Suites != "" {
		st.cfg.Set_suites(c.Suites)
	}
	for _, id := range ids {
		st.cfg.Add_local_id(id)
	}
	st.cfg.Set_handshake_timeout(uint(ms))
	st.cfg.Set_reveal_unknown_identity(c.RevealUnknownIdentity)
	st.cfg.Set_roles_reversed(c.RolesReversed)
	if c.MaxHandshakes > 0 {
		st.cfg.Set_max_handshakes(int64(c.MaxHandshakes))
	}
	if c.MaxInput > 0 {
		st.cfg.Set_max_input(int64(c.MaxInput))
	}
	if c.EventQueue > 0 {
		st.cfg.Set_event_queue(int64(c.EventQueue))
	}
	return st, nil
}

func (st *configState) close() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.cfg != nil {
		st.cfg.Close()
		capi.DeleteConfig(st.cfg)
		st.cfg = nil
		liveHandles.Add(-1)
	}
	if st.ownKeys && st.ks != nil {
		st.ks.Close()
	}
	runtime.SetFinalizer(st, nil)
}

// Close releases the library config the Config made, and the keystore it
// loaded from KeyFile (a Keystore given in the Config stays the caller's
// to close). Connections already made keep what they use. Afterwards the
// Config makes no new connection (E_INVALID).
func (c *Config) Close() error {
	if c == nil {
		return nil
	}
	c.once.Do(func() { c.err = closedHandle() })
	if c.state != nil {
		c.state.close()
	}
	return nil
}

// NewAssociation makes a sans-IO association from the Config: role is
// ROLE_INITIATOR (uses c.KpsaID) or ROLE_RESPONDER, transport
// TRANSPORT_TLS or TRANSPORT_DTLS. Conn drives one for you; use this to
// run the protocol over your own transport. Errors: E_INVALID, E_KPSA_ID,
// E_NOT_FOUND (no record for KpsaID), E_NO_LOCAL_ID, E_LIMIT (a server
// past MaxHandshakes), E_BACKEND, E_NOMEM.
func (c *Config) NewAssociation(role, transport int) (a *Association, err error) {
	st, err := c.build()
	if err != nil {
		return nil, err
	}
	kpsa := ""
	if role == ROLE_INITIATOR {
		kpsa = c.KpsaID
	}
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.cfg == nil {
		return nil, closedHandle()
	}
	ksh, release, err := st.ks.handle()
	if err != nil {
		return nil, err
	}
	defer release()
	defer catch(&err)
	h := capi.NewAssociation(role, transport, st.cfg, ksh, kpsa)
	a = &Association{h: h, transport: transport}
	liveHandles.Add(1)
	runtime.SetFinalizer(a, (*Association).Close)
	return a, nil
}

// dtlsListen runs the stateless cookie exchange on a datagram from a new
// peer: a HelloVerifyRequest to send back (reply non-nil), or accept.
func (st *configState) dtlsListen(peerTag string, datagram, out []byte) (n int, err error) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.cfg == nil {
		return 0, closedHandle()
	}
	defer catch(&err)
	return int(st.cfg.Dtls_listen_into(peerTag, datagram, out)), nil
}

// DTLSListen is the DTLS server's stateless cookie exchange (RFC 6347
// 4.2.1) for a datagram from a peer that has no association yet, for
// servers of your own (DTLSListener does it for you). peerTag names the
// peer (its address), as Association.SetPeerTag does. It returns the
// HelloVerifyRequest to send back (nothing is kept), or accept true when
// the datagram is a ClientHello with a valid cookie: then make a responder
// association, set the same peer tag, Start it and Feed it this datagram.
// Errors: E_INVALID (bad peer tag, empty datagram), E_PROTOCOL (not a
// ClientHello: drop it), E_UNSUPPORTED (the engine has no cookie exchange:
// make the association at once), E_BACKEND, E_NOMEM.
func (c *Config) DTLSListen(peerTag string, datagram []byte) (reply []byte, accept bool, err error) {
	if err := noNUL("peerTag", peerTag); err != nil {
		return nil, false, err
	}
	st, err := c.build()
	if err != nil {
		return nil, false, err
	}
	// 64 bytes always hold the HelloVerifyRequest.
	out := make([]byte, 64)
	in := append([]byte(nil), datagram...) // cgo: the caller's slice may lie among pointers
	n, err := st.dtlsListen(peerTag, in, out)
	if err != nil {
		return nil, false, err
	}
	if n == 0 {
		return nil, true, nil
	}
	return out[:n], false, nil
}

// HandshakesInProgress is the number of server handshakes running now.
func (c *Config) HandshakesInProgress() (n int, err error) {
	st, err := c.build()
	if err != nil {
		return 0, err
	}
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.cfg == nil {
		return 0, closedHandle()
	}
	defer catch(&err)
	return int(st.cfg.Handshakes_in_progress()), nil
}

// Event is one audit event: what happened to which association.
type Event struct {
	Type             int // EVENT_ESTABLISHED, EVENT_FAILED, EVENT_REVOKED, EVENT_RATE_LIMITED, EVENT_CLOSED
	Reason           int // a REASON_ constant for the failures
	Role, Transport  int
	TimeMs           int64 // the associations' clock (Now())
	KpsaID, PeerID   string
	PeerIsCredential bool
	PeerTag          string // the peer's address, for a server
	Detail           string
}

// TypeName is the event type's name, e.g. "established".
func (e *Event) TypeName() string { return capi.Event_type_name(e.Type) }

// NextEvent takes the oldest queued event (Config.EventQueue), or returns
// nil when there is none. Pull-based: nothing runs inside the library.
func (c *Config) NextEvent() (ev *Event, err error) {
	st, err := c.build()
	if err != nil {
		return nil, err
	}
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.cfg == nil {
		return nil, closedHandle()
	}
	defer catch(&err)
	h := st.cfg.Next_event()
	if h == nil || h.Swigcptr() == 0 {
		return nil, nil
	}
	defer capi.DeleteEvent(h)
	return &Event{Type: h.EventType(), Reason: h.Reason(), Role: h.Role(),
		Transport: h.Transport(), TimeMs: h.Time_ms(), KpsaID: h.Kpsa_id(),
		PeerID: h.Peer_id(), PeerIsCredential: h.Peer_id_is_credential(),
		PeerTag: h.Peer_tag(), Detail: h.Detail()}, nil
}
