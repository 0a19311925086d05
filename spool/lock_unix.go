//go:build unix

package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// ErrLocked is returned by Lock when another process holds the spool.
var ErrLocked = errors.New("the spool is in use by another smtpbridge process")

// Lock takes the spool directory's exclusive lock, which the daemon holds
// while it runs and `smtpbridge queue` takes to work on a stopped spool,
// so that two processes never deliver or change the same messages. The
// lock goes with the process, crash included.
func Lock(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("spool: lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
