package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/smtpbridge/smtpbridge/internal/durable"
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
	unlock, err = durable.Lock(filepath.Join(dir, "lock"))
	if errors.Is(err, durable.ErrLocked) {
		return nil, fmt.Errorf("%s: %w", dir, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return unlock, nil
}

// freeBytes is the space left to the bridge's user on dir's filesystem.
func freeBytes(dir string) (int64, error) { return durable.FreeBytes(dir) }
