package m2mpsk

import (
	"runtime"
	"sync"
	"sync/atomic"

	"m2mpsk.org/m2mpsk/internal/capi"
)

// liveHandles counts the library handles (keystores, configs,
// associations) not yet freed, so that a test can see finalizers run.
var liveHandles atomic.Int64

// Keystore holds association records, each keyed by its KpsaID. Keys live
// in the library's guarded memory (locked, excluded from core dumps, wiped
// on removal and on Close), never on the Go heap. Safe for concurrent use;
// associations keep their own reference, so a keystore may be closed while
// connections made with it still run.
type Keystore struct {
	mu sync.RWMutex
	h  capi.Keystore // nil once closed

	// The key source (keysource.go) and, per KpsaID, the request open.
	srcMu sync.Mutex
	src   KeySource
	waits map[string]*keyWait
}

// NewKeystore creates an empty keystore. With requireLocked, adding a key
// fails (E_UNLOCKED) when its memory cannot be locked in RAM.
func NewKeystore(requireLocked bool) (ks *Keystore, err error) {
	var flags uint
	if requireLocked {
		flags = uint(KEYSTORE_REQUIRE_LOCKED)
	}
	defer catch(&err)
	h := capi.NewKeystore(flags)
	ks = &Keystore{h: h}
	liveHandles.Add(1)
	// A safety net only: Close() is the way to release it.
	runtime.SetFinalizer(ks, (*Keystore).Close)
	return ks, nil
}

// LoadKeystore creates a keystore and loads a key file into it: the
// preferred way to provision keys, since they never pass through Go memory.
func LoadKeystore(path string) (*Keystore, error) {
	ks, err := NewKeystore(false)
	if err != nil {
		return nil, err
	}
	if err := ks.LoadFile(path); err != nil {
		ks.Close()
		return nil, err
	}
	return ks, nil
}

// Close releases the keystore now, wiping its keys unless an association
// still holds it. Closing again does nothing; any other method of a closed
// keystore returns E_INVALID.
func (ks *Keystore) Close() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.h != nil {
		ks.h.Close()
		capi.DeleteKeystore(ks.h)
		ks.h = nil
		liveHandles.Add(-1)
		runtime.SetFinalizer(ks, nil)
	}
	return nil
}

// use runs f with the handle under the read lock: Close waits for it.
func (ks *Keystore) use(f func(h capi.Keystore)) (err error) {
	if ks == nil {
		return invalid("nil keystore")
	}
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if ks.h == nil {
		return closedHandle()
	}
	defer catch(&err)
	f(ks.h)
	return nil
}

// LoadFile loads every record of a key file, all or nothing. The file must
// be a regular file that neither group nor others may access; one record
// per line: kpsa-id=ID kpsa=hex:... (or base64:...) idb=IDB [ida=IDA]
// [not-before=T] [not-after=T]. Errors: E_IO, E_KEYFILE_PERMS,
// E_KEYFILE_SYNTAX, E_KEYFILE_ENCODING, a validation code of Add,
// E_UNLOCKED or E_NOMEM; the detail names the line at fault.
func (ks *Keystore) LoadFile(path string) error {
	if err := noNUL("path", path); err != nil {
		return err
	}
	return ks.use(func(h capi.Keystore) { h.Load_file(path) })
}

// Add adds a record with no validity window. key (KEY_MIN to KEY_MAX
// bytes) is copied into locked memory during the call; the slice stays the
// caller's, and so does wiping it afterwards (for i := range key { key[i]
// = 0 }). Prefer LoadFile, which keeps keys off the Go heap altogether. ida
// "" means no IdA: a responder then binds the Credential-ID "12-<KpsaID>".
// Errors: E_INVALID, E_KPSA_ID, E_KPSA_ID_LENGTH, E_KEY_LENGTH, E_IDA,
// E_IDB, E_ID_LENGTH, E_DUPLICATE, E_UNLOCKED, E_NOMEM.
func (ks *Keystore) Add(kpsaID string, key []byte, ida, idb string) error {
	return ks.AddValid(kpsaID, key, ida, idb, 0, 0)
}

// AddValid is Add with a validity window in Unix seconds (0: unbounded on
// that side); E_VALIDITY when notAfter precedes notBefore.
func (ks *Keystore) AddValid(kpsaID string, key []byte, ida, idb string, notBefore, notAfter int64) error {
	if err := noNUL("argument", kpsaID, ida, idb); err != nil {
		return err
	}
	return ks.use(func(h capi.Keystore) { h.Add(kpsaID, key, ida, idb, notBefore, notAfter) })
}

// AddDerived derives a remotely provisioned Kpsa from the enrolment key ke
// (TS-0003 10.3.3) and adds it as Add would; ke is read in place and stays
// the caller's to wipe.
func (ks *Keystore) AddDerived(kpsaID string, ke []byte, enroleeBID, ida, idb string, notBefore, notAfter int64) error {
	if err := noNUL("argument", kpsaID, enroleeBID, ida, idb); err != nil {
		return err
	}
	return ks.use(func(h capi.Keystore) {
		h.Add_derived(kpsaID, ke, enroleeBID, ida, idb, notBefore, notAfter)
	})
}

// Remove removes a record and wipes its key (E_NOT_FOUND).
func (ks *Keystore) Remove(kpsaID string) error {
	if err := noNUL("kpsaID", kpsaID); err != nil {
		return err
	}
	return ks.use(func(h capi.Keystore) { h.Remove(kpsaID) })
}

// Revoke wipes a record's key but keeps its KpsaID, so that handshakes
// with it fail with REASON_REVOKED (E_NOT_FOUND).
func (ks *Keystore) Revoke(kpsaID string) error {
	if err := noNUL("kpsaID", kpsaID); err != nil {
		return err
	}
	return ks.use(func(h capi.Keystore) { h.Revoke(kpsaID) })
}

// Record is a keystore record without its key.
type Record struct {
	IdA, IdB            string // IdA "" when none
	NotBefore, NotAfter int64  // Unix seconds, 0 unbounded
	Revoked             bool
}

// Lookup returns a record (E_NOT_FOUND); never the key.
func (ks *Keystore) Lookup(kpsaID string) (rec Record, err error) {
	if err := noNUL("kpsaID", kpsaID); err != nil {
		return rec, err
	}
	err = ks.use(func(h capi.Keystore) {
		r := h.Lookup(kpsaID)
		defer capi.DeleteRecord(r)
		rec = Record{IdA: r.GetIda(), IdB: r.GetIdb(), NotBefore: r.GetNot_before(),
			NotAfter: r.GetNot_after(), Revoked: r.GetRevoked() != 0}
	})
	return rec, err
}

// Count is the number of records, revoked ones included.
func (ks *Keystore) Count() (n int, err error) {
	err = ks.use(func(h capi.Keystore) { n = int(h.Count()) })
	return n, err
}

// IsLocked reports whether all key memory is locked in RAM.
func (ks *Keystore) IsLocked() (locked bool, err error) {
	err = ks.use(func(h capi.Keystore) { locked = h.Is_locked() })
	return locked, err
}

// handle is the live handle for making associations, with the read lock
// held until release is called.
func (ks *Keystore) handle() (capi.Keystore, func(), error) {
	if ks == nil {
		return nil, nil, invalid("no keystore (Config.Keystore or Config.KeyFile)")
	}
	ks.mu.RLock()
	if ks.h == nil {
		ks.mu.RUnlock()
		return nil, nil, closedHandle()
	}
	return ks.h, ks.mu.RUnlock, nil
}
