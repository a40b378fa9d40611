package m2mpsk

import (
	"context"
	"errors"
	"sync"
	"time"

	"m2mpsk.org/m2mpsk/internal/capi"
)

// KeySource answers a keystore's requests for records it does not hold:
// keys kept elsewhere (a database, a secrets service, a MAF). Each request
// goes to the source in a goroutine of its own, once per KpsaID however
// many connections wait for that record. The source may block (a query)
// and answers with req.Supply or req.Absent; one that returns without
// answering has answered Absent. Meanwhile the connections that need the
// record wait in their handshake, within its timeout and their context,
// and no byte of the peer's past its identity is read. To the peer, a
// KpsaID the source does not have looks like a wrong key, as an unknown
// one does without a source.
type KeySource func(req *KeyRequest)

// KeyRequest is one request of a keystore's key source.
type KeyRequest struct {
	// KpsaID is the KpsaID asked for: the one a client presented to a
	// server, or the one a client connection was made for.
	KpsaID string
	// ServerName is the SNI host the client sent to the server that asks
	// ("" when it sent none, and for a client's request).
	ServerName string
	// Initiator is true when a client connection asks (its Config's
	// KpsaID is not in the keystore).
	Initiator bool

	ks *Keystore
	w  *keyWait
	mu sync.Mutex
	h  capi.KeyRequest // nil once answered or released
}

// keyWait is what the connections waiting for one request wait on.
type keyWait struct{ done chan struct{} }

// SetKeySource makes the keystore ask src for the records it lacks, with
// at most maxPending requests open at once (past that, an unknown KpsaID
// is at once one the source does not have). Set it before connections
// use the keystore; setting it again replaces src. Connections (Conn)
// wait for the answers; an Association used directly sees
// STATE_WAITING_KEY instead and is not served by src. Errors: E_INVALID
// (nil src, maxPending below 1, a closed keystore).
func (ks *Keystore) SetKeySource(src KeySource, maxPending int) error {
	if src == nil {
		return invalid("nil KeySource")
	}
	if maxPending < 1 {
		return invalid("maxPending must be at least 1")
	}
	if err := ks.use(func(h capi.Keystore) { h.Set_source_queue(int64(maxPending)) }); err != nil {
		return err
	}
	ks.srcMu.Lock()
	ks.src = src
	if ks.waits == nil {
		ks.waits = make(map[string]*keyWait)
	}
	ks.srcMu.Unlock()
	return nil
}

// awaitKey hands a's key request to the source (the first connection to
// wait for its KpsaID does) and waits until it is answered, ctx is done
// or deadline passes. The caller resumes a afterwards.
func (ks *Keystore) awaitKey(ctx context.Context, a *Association, deadline time.Time) error {
	var req capi.KeyRequest
	if err := a.do(func(h capi.Association) { req = h.Key_request() }); err != nil {
		return err
	}
	if req == nil || req.Swigcptr() == 0 {
		return nil // not waiting any more
	}
	release := func() {
		req.Close()
		capi.DeleteKeyRequest(req)
	}
	ks.srcMu.Lock()
	src := ks.src
	if src == nil {
		ks.srcMu.Unlock()
		release()
		return invalid("the association waits for a key, and its keystore has no KeySource")
	}
	if req.Answered() {
		ks.srcMu.Unlock()
		release()
		return nil
	}
	id := req.Kpsa_id()
	w := ks.waits[id]
	if w == nil {
		w = &keyWait{done: make(chan struct{})}
		ks.waits[id] = w
		r := &KeyRequest{KpsaID: id, ServerName: req.Server_name(),
			Initiator: req.Role() == ROLE_INITIATOR, ks: ks, w: w, h: req}
		ks.srcMu.Unlock()
		go r.serve(src)
	} else {
		ks.srcMu.Unlock()
		release()
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return &Error{Code: E_FAILED, Reason: REASON_TIMEOUT,
			Detail: "handshake timed out waiting for the key source"}
	}
}

// serve runs the source on r, and answers Absent for it if it did not.
func (r *KeyRequest) serve(src KeySource) {
	defer func() {
		p := recover()
		_ = r.Absent()
		if p != nil {
			panic(p)
		}
	}()
	src(r)
}

// Supply answers with the record, added to the keystore as Keystore.AddValid
// would add it under the request's KpsaID, and wakes the connections that
// wait for it. key is copied into locked memory during the call and stays
// the caller's to wipe. When a record for the KpsaID appeared meanwhile,
// that record wins: E_DUPLICATE, the request being answered all the same.
// After any other error the request stays open (Supply again, or Absent).
// Errors: E_STATE (answered already), E_INVALID (a NUL in an identity),
// E_KEY_LENGTH, E_IDA, E_IDB, E_ID_LENGTH, E_VALIDITY, E_DUPLICATE; a
// keystore that cannot hold the key fails it as AddValid would.
func (r *KeyRequest) Supply(key []byte, ida, idb string, notBefore, notAfter int64) (err error) {
	if err := noNUL("argument", ida, idb); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return &Error{Code: E_STATE, Reason: REASON_NONE, Detail: "the request was answered already"}
	}
	func() {
		defer catch(&err)
		r.h.Supply(key, ida, idb, notBefore, notAfter)
	}()
	if err == nil || errors.Is(err, &Error{Code: E_DUPLICATE}) {
		r.finishLocked()
	}
	return err
}

// Absent answers that there is no record for the KpsaID: a waiting server
// goes on as with an unknown identity (a wrong key to its peer), a waiting
// client fails with REASON_UNKNOWN_IDENTITY. Answering again does nothing.
func (r *KeyRequest) Absent() (err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return nil
	}
	func() {
		defer catch(&err)
		r.h.Absent()
	}()
	// E_STATE: answered otherwise (its source turned off); done either way.
	r.finishLocked()
	if errors.Is(err, ErrState) {
		return nil
	}
	return err
}

// finishLocked releases the request and wakes its waiters.
func (r *KeyRequest) finishLocked() {
	r.h.Close()
	capi.DeleteKeyRequest(r.h)
	r.h = nil
	ks := r.ks
	ks.srcMu.Lock()
	if ks.waits[r.KpsaID] == r.w {
		delete(ks.waits, r.KpsaID)
	}
	ks.srcMu.Unlock()
	close(r.w.done)
}
