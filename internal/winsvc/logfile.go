package winsvc

import (
	"errors"
	"os"
	"sync"
)

// LogFile is the service's log file, reopened under the same name on
// each reload so that it can be rotated. Writes between a Close and the
// next Reopen fail.
type LogFile struct {
	Path string
	mu   sync.Mutex
	f    *os.File
}

// Reopen opens the file at Path again (creating it, appending), and
// closes the one open before.
func (r *LogFile) Reopen() error {
	f, err := os.OpenFile(r.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	r.mu.Lock()
	old := r.f
	r.f = f
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Write writes to the file open now.
func (r *LogFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, errors.New("log file closed")
	}
	return r.f.Write(p)
}

// Close closes the file.
func (r *LogFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}
