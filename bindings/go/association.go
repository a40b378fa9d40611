package m2mpsk

import (
	"runtime"
	"sync"
	"time"

	"m2mpsk.org/m2mpsk/internal/capi"
)

// Association is one security association, sans-IO: Feed what the peer
// sent, Drain what to send, pass a monotonic time in milliseconds (Now()).
// Conn runs one over a net.Conn; use an Association directly for another
// transport. Its methods may be called from several goroutines (they are
// serialized). After Close, every method returns E_INVALID, and the
// accessors return zero values.
type Association struct {
	mu        sync.Mutex
	h         capi.Association // nil once closed
	transport int
}

var clockStart = time.Now()

// Now is the monotonic clock in milliseconds that associations use.
func Now() int64 { return time.Since(clockStart).Milliseconds() }

// Close frees the association now, wiping its keys (to send close_notify
// first, use CloseNotify). Closing again does nothing.
func (a *Association) Close() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.h != nil {
		a.h.Close()
		capi.DeleteAssociation(a.h)
		a.h = nil
		liveHandles.Add(-1)
		runtime.SetFinalizer(a, nil)
	}
	return nil
}

// do runs f with the handle, serialized, turning a raise into err.
func (a *Association) do(f func(h capi.Association)) (err error) {
	if a == nil {
		return invalid("nil association")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.h == nil {
		return closedHandle()
	}
	defer catch(&err)
	f(a.h)
	return nil
}

// SetMTU sets the DTLS MTU (MTU_MIN to MTU_MAX), before Start.
func (a *Association) SetMTU(mtu int) error {
	if mtu < 0 {
		return invalid("negative MTU")
	}
	return a.do(func(h capi.Association) { h.Set_mtu(uint(mtu)) })
}

// SetPeerTag names the peer (its address) for the rate limit and events.
func (a *Association) SetPeerTag(tag string) error {
	if err := noNUL("tag", tag); err != nil {
		return err
	}
	return a.do(func(h capi.Association) { h.Set_peer_tag(tag) })
}

// Start starts the handshake at nowMs (an initiator queues its
// ClientHello: Drain it), with the wall clock for validity windows.
func (a *Association) Start(nowMs int64) error {
	return a.do(func(h capi.Association) { h.Start(nowMs, time.Now().Unix()) })
}

// Feed feeds what the peer sent: any bytes (TLS) or one whole datagram
// (DTLS). Errors: E_INVALID, E_STATE, E_FAILED (drain once more: an alert
// may wait), E_LIMIT (nothing consumed), E_NOMEM.
func (a *Association) Feed(data []byte, nowMs int64) error {
	return a.do(func(h capi.Association) { h.Feed(data, nowMs) })
}

// Write encrypts application data (all of it; for DTLS one record of at
// most 16384 bytes); Drain the records afterwards.
func (a *Association) Write(data []byte) error {
	return a.do(func(h capi.Association) { h.Write(data) })
}

// Pending is the number of bytes waiting to be sent (DTLS: the next
// datagram's size).
func (a *Association) Pending() (n int) {
	_ = a.do(func(h capi.Association) { n = int(h.Pending()) })
	return n
}

// DrainInto writes waiting output into buf and returns its length, 0 when
// none waits. For DTLS it is one datagram, and buf must hold Pending()
// bytes (E_BUFFER).
func (a *Association) DrainInto(buf []byte) (n int, err error) {
	err = a.do(func(h capi.Association) { n = int(h.Drain_into(buf)) })
	return n, err
}

// Drain returns the next output to send (all waiting bytes for TLS, one
// datagram for DTLS), nil when none waits.
func (a *Association) Drain() (out []byte, err error) {
	err = a.do(func(h capi.Association) {
		p := h.Pending()
		if p == 0 {
			// Still asked (into a spare byte), so that its own status
			// (E_STATE before Start) decides.
			var spare [1]byte
			h.Drain_into(spare[:])
			return
		}
		out = make([]byte, p)
		out = out[:h.Drain_into(out)]
	})
	return out, err
}

// Read writes decrypted application data into buf: 0 when no whole record
// has arrived. Errors: E_CLOSED (the peer sent close_notify), E_STATE (not
// established), E_FAILED, E_INVALID (empty buf).
func (a *Association) Read(buf []byte) (n int, err error) {
	err = a.do(func(h capi.Association) { n = int(h.Read_into(buf)) })
	return n, err
}

// NextTimeout is the monotonic time (ms) at which HandleTimeout must be
// called; ok is false when nothing is due.
func (a *Association) NextTimeout() (t int64, ok bool, err error) {
	err = a.do(func(h capi.Association) { t = h.Next_timeout() })
	return t, err == nil && t >= 0, err
}

// HandleTimeout handles what is due at nowMs: a DTLS retransmission (Drain
// it), a handshake timeout or the record's expiry (E_FAILED).
func (a *Association) HandleTimeout(nowMs int64) error {
	return a.do(func(h capi.Association) { h.Handle_timeout(nowMs) })
}

// Resume goes on with a handshake in STATE_WAITING_KEY once its key
// request is answered (Conn does this itself): the input that waited
// reaches the TLS engine, or a client queues its ClientHello; Drain
// afterwards. While the request is open it does nothing. Errors: E_STATE
// (not waiting for a key), E_FAILED (the record is absent for a client,
// or the input that waited failed the handshake).
func (a *Association) Resume(nowMs int64) error {
	return a.do(func(h capi.Association) { h.Resume(nowMs) })
}

// State is STATE_IDLE, STATE_HANDSHAKING, STATE_WAITING_KEY (its
// keystore's key source is asked for the record), STATE_ESTABLISHED,
// STATE_CLOSED or STATE_FAILED (also for a closed handle).
func (a *Association) State() int {
	s := STATE_FAILED
	_ = a.do(func(h capi.Association) { s = h.State() })
	return s
}

// CloseNotify queues close_notify (Drain it) and moves to STATE_CLOSED.
func (a *Association) CloseNotify() error {
	return a.do(func(h capi.Association) { h.Close_notify() })
}

// BindAEID binds the AE-ID a CSE assigned at registration on an
// association bound to a Credential-ID (see the C API).
func (a *Association) BindAEID(aeID string) error {
	if err := noNUL("aeID", aeID); err != nil {
		return err
	}
	return a.do(func(h capi.Association) { h.Bind_ae_id(aeID) })
}

// OriginatorCheck decides whether a request that arrived on this
// association may carry the originator from (its From; "" when absent):
// ORIGINATOR_ACCEPT (0), ORIGINATOR_NOT_AUTHENTICATED (4106) or
// ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED (4107), the Response Status Code
// to answer with. flags: 0 or ORIGINATOR_AE_CREATE |
// ORIGINATOR_ALLOW_UNSECURED_AE. On error the verdict is 4106, never 0.
func (a *Association) OriginatorCheck(from string, flags uint) (verdict int, err error) {
	verdict = ORIGINATOR_NOT_AUTHENTICATED
	if err := noNUL("from", from); err != nil {
		return verdict, err
	}
	err = a.do(func(h capi.Association) { verdict = h.Originator_check(from, int64(flags)) })
	if err != nil {
		verdict = ORIGINATOR_NOT_AUTHENTICATED
	}
	return verdict, err
}

// ExportKeyingMaterial is the RFC 5705 exporter, once established;
// context nil means none.
func (a *Association) ExportKeyingMaterial(label string, context []byte, length int) (out []byte, err error) {
	if length <= 0 {
		return nil, invalid("length must be positive")
	}
	if err := noNUL("label", label); err != nil {
		return nil, err
	}
	out = make([]byte, length)
	err = a.do(func(h capi.Association) { h.Export_into(out, label, context) })
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (a *Association) str(f func(h capi.Association) string) (s string) {
	_ = a.do(func(h capi.Association) { s = f(h) })
	return s
}

// PeerID is the identity the session is bound to once established: IdB
// for an initiator; IdA, or the Credential-ID "12-<KpsaID>", for a
// responder. "" before.
func (a *Association) PeerID() string { return a.str(capi.Association.Peer_id) }

// PeerIsCredential reports whether PeerID is a Credential-ID.
func (a *Association) PeerIsCredential() (b bool) {
	_ = a.do(func(h capi.Association) { b = h.Peer_id_is_credential() })
	return b
}

// LocalID is this side's identity once established ("" if none).
func (a *Association) LocalID() string { return a.str(capi.Association.Local_id) }

// KpsaID is the KpsaID in use once known.
func (a *Association) KpsaID() string { return a.str(capi.Association.Kpsa_id) }

// Suite is the negotiated suite's IANA name once established.
func (a *Association) Suite() string { return a.str(capi.Association.Suite) }

// Version is "TLSv1.2" or "DTLSv1.2" once established.
func (a *Association) Version() string { return a.str(capi.Association.Version) }

// Failure is why the association failed (a REASON_ constant).
func (a *Association) Failure() (r int) {
	_ = a.do(func(h capi.Association) { r = h.Failure() })
	return r
}

// FailureDetail is a readable detail of the failure, never key bytes.
func (a *Association) FailureDetail() string { return a.str(capi.Association.Failure_detail) }

// PeerKind is what PeerID is, as the originator check reads it (PeerNone
// before the association is established).
func (a *Association) PeerKind() PeerKind { return peerKindOf(a.PeerID(), a.PeerIsCredential()) }
