package m2mpsk

import (
	"errors"
	"fmt"
	"runtime"
	"strings"

	"m2mpsk.org/m2mpsk/internal/capi"
)

// Error is what every call of this package returns on failure: the status
// (an E_ constant), the association's failure reason (a REASON_ constant;
// REASON_NONE when the call was not on an association or it has not
// failed) and a readable detail, never containing key bytes.
//
// errors.Is(err, m2mpsk.ErrFailed) compares the code; a target whose
// Reason is set compares the reason too.
type Error struct {
	Code   int
	Reason int
	Detail string
}

func (e *Error) Error() string {
	desc := capi.Strerror(e.Code)
	var b strings.Builder
	fmt.Fprintf(&b, "m2mpsk: %s (%d)", desc, e.Code)
	if e.Reason != REASON_NONE {
		fmt.Fprintf(&b, " [%s]", capi.Reason_name(e.Reason))
	}
	if e.Detail != "" && e.Detail != desc {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	return b.String()
}

// Is reports whether target is an *Error with the same code (and reason,
// when target's is not REASON_NONE).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code && (t.Reason == REASON_NONE || t.Reason == e.Reason)
}

// ReasonName is the reason's name, e.g. "bad-key".
func (e *Error) ReasonName() string { return capi.Reason_name(e.Reason) }

// Sentinels for errors.Is.
var (
	ErrInvalid  = &Error{Code: E_INVALID}
	ErrFailed   = &Error{Code: E_FAILED}
	ErrClosed   = &Error{Code: E_CLOSED}
	ErrState    = &Error{Code: E_STATE}
	ErrLimit    = &Error{Code: E_LIMIT}
	ErrNotFound = &Error{Code: E_NOT_FOUND}
)

// catch turns a panic raised by the generated wrapper into *err. It must
// be deferred directly by the function that calls into internal/capi. Any
// other panic (a bug) goes on.
func catch(err *error) {
	r := recover()
	if r == nil {
		return
	}
	code, reason, detail, ok := capi.Recovered(r)
	if !ok {
		// cgo's pointer check refuses a []byte inside memory that holds
		// Go pointers (e.g. a [n]byte field of a struct with pointers):
		// the caller's mistake, so an error, not a crash.
		if re, isRT := r.(runtime.Error); isRT && strings.Contains(re.Error(), "cgo argument has Go pointer") {
			*err = &Error{Code: E_INVALID, Reason: REASON_NONE,
				Detail: "a []byte argument lies in memory that holds Go pointers; pass a slice from make([]byte, n)"}
			return
		}
		panic(r)
	}
	*err = &Error{Code: code, Reason: reason, Detail: detail}
}

// invalid is the E_INVALID error for a bad argument caught on the Go side.
func invalid(detail string) error {
	return &Error{Code: E_INVALID, Reason: REASON_NONE, Detail: detail}
}

// closedHandle is the error for a use after Close (as the C glue's).
func closedHandle() error { return invalid("the handle is closed") }

// noNUL refuses strings the C side would cut at a NUL byte.
func noNUL(name string, values ...string) error {
	for _, v := range values {
		if strings.IndexByte(v, 0) >= 0 {
			return invalid(name + " contains a NUL byte")
		}
	}
	return nil
}

// asError is err as an *Error, or nil.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// Strerror is the library's description of a status code.
func Strerror(code int) string { return capi.Strerror(code) }

// ReasonName is the name of a REASON_ constant.
func ReasonName(reason int) string { return capi.Reason_name(reason) }

// Version is the library's version string.
func Version() string { return capi.Version_string() }

// Suites are the IANA names of the cipher suites this build supports, in
// preference order.
func Suites() []string {
	n := capi.Suite_count()
	out := make([]string, 0, n)
	for i := int64(0); i < n; i++ {
		out = append(out, capi.Suite_name(i))
	}
	return out
}

// ValidateKpsaID checks a KpsaID (relative@fqdn): E_KPSA_ID or
// E_KPSA_ID_LENGTH, E_INVALID for "".
func ValidateKpsaID(id string) (err error) {
	if err = noNUL("kpsaID", id); err != nil {
		return err
	}
	defer catch(&err)
	capi.Kpsa_id_validate(id)
	return nil
}

// ValidateIdB checks a CSE-ID: E_IDB or E_ID_LENGTH.
func ValidateIdB(id string) (err error) {
	if err = noNUL("idb", id); err != nil {
		return err
	}
	defer catch(&err)
	capi.Idb_validate(id)
	return nil
}

// ValidateIdA checks a CSE-ID or AE-ID: E_IDA or E_ID_LENGTH.
func ValidateIdA(id string) (err error) {
	if err = noNUL("ida", id); err != nil {
		return err
	}
	defer catch(&err)
	capi.Ida_validate(id)
	return nil
}

// OriginatorCheck is the oneM2M originator check without an association
// (see Conn.OriginatorCheck for the usual form): the verdict is
// ORIGINATOR_ACCEPT (0), ORIGINATOR_NOT_AUTHENTICATED (4106) or
// ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED (4107). boundKind is a PEER_
// constant, boundID "" with PEER_NONE.
func OriginatorCheck(boundKind int, boundID, localID, from string, flags uint) (verdict int, err error) {
	if err = noNUL("argument", boundID, localID, from); err != nil {
		return ORIGINATOR_NOT_AUTHENTICATED, err
	}
	// A failed call keeps this verdict, never ACCEPT (0).
	verdict = ORIGINATOR_NOT_AUTHENTICATED
	defer catch(&err)
	verdict = capi.Originator_check(boundKind, boundID, localID, from, int64(flags))
	return verdict, nil
}
