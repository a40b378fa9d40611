// Package capi is the SWIG-generated binding of libm2mpsk (m2mpsk.go and
// m2mpsk_wrap.c, written by `go generate` in the module's root or by the
// CMake build) plus this file. It is internal: its calls report errors by
// panicking, and package m2mpsk turns each panic into an *m2mpsk.Error.
package capi

// The library comes from pkg-config (m2mpsk.pc from `make install`, or the
// build tree's uninstalled one that the CMake build writes).

// #cgo pkg-config: m2mpsk
import "C"

import (
	"strconv"
	"strings"
)

const panicPrefix = "m2mpsk-error:"

// Recovered turns the value of a recovered panic into (code, reason,
// detail) when the panic was raised by the wrapper's %exception (see
// m2mpsk_go.swg); ok is false for any other panic, which the caller
// re-panics.
func Recovered(r interface{}) (code, reason int, detail string, ok bool) {
	s, isString := r.(string)
	if !isString {
		return 0, 0, "", false
	}
	if !strings.HasPrefix(s, panicPrefix) {
		return 0, 0, "", false
	}
	msg := s[len(panicPrefix):]
	parts := strings.SplitN(msg, ":", 3)
	if len(parts) != 3 {
		return int(E_INTERNAL), int(REASON_NONE), msg, true
	}
	c, err1 := strconv.Atoi(parts[0])
	re, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return int(E_INTERNAL), int(REASON_NONE), msg, true
	}
	return c, re, parts[2], true
}
