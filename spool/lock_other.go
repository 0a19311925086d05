//go:build !unix

package spool

import "errors"

// ErrLocked is returned by Lock when another process holds the spool.
var ErrLocked = errors.New("the spool is in use by another smtpbridge process")

// Lock is a no-op where flock is not available.
func Lock(dir string) (unlock func(), err error) { return func() {}, nil }
