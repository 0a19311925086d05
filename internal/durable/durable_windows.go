//go:build windows

package durable

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

// Rename renames from to to, replacing to if it exists, and returns once
// the rename is on disk (MOVEFILE_WRITE_THROUGH).
func Rename(from, to string) error {
	f, err := windows.UTF16PtrFromString(from)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	t, err := windows.UTF16PtrFromString(to)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	if err := retrySharing(func() error {
		return windows.MoveFileEx(f, t, windows.MOVEFILE_REPLACE_EXISTING|windows.MOVEFILE_WRITE_THROUGH)
	}); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// Remove removes path. A reader holding the file open (the spool's
// listing at start reads every record) makes Windows refuse with a
// sharing violation for the length of its read: Remove tries again.
func Remove(path string) error {
	return retrySharing(func() error { return os.Remove(path) })
}

// retrySharing runs op until it succeeds or fails for another reason
// than a sharing violation, for about a second at most.
func retrySharing(op func() error) error {
	var err error
	for range 100 {
		if err = op(); err == nil || !errors.Is(err, windows.ERROR_SHARING_VIOLATION) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// SyncDir has nothing to do on Windows: Rename writes through, and a
// directory cannot be flushed.
func SyncDir(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return err
	}
	return nil
}

// Lock takes an exclusive lock on path (created if missing), held until
// unlock or the process's end, crash included. Another process gets
// ErrLocked.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	ol := new(windows.Overlapped)
	err = windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
	if err != nil {
		f.Close()
		if errors.Is(err, windows.ERROR_LOCK_VIOLATION) || errors.Is(err, windows.ERROR_IO_PENDING) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// FreeBytes is the space left to the process's user on dir's volume.
func FreeBytes(dir string) (int64, error) {
	p, err := windows.UTF16PtrFromString(dir)
	if err != nil {
		return 0, err
	}
	var avail, total, free uint64
	if err := windows.GetDiskFreeSpaceEx(p, &avail, &total, &free); err != nil {
		return 0, err
	}
	return int64(avail), nil
}

// ChownLikeDir does nothing on Windows: files inherit the directory's ACL.
func ChownLikeDir(*os.File, string) error { return nil }

// MkdirLikeParent makes dir and its parents; they inherit their ACLs.
func MkdirLikeParent(dir string) error { return os.MkdirAll(dir, 0o700) }

// CheckDir refuses a dir that is not a directory.
func CheckDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: %w", dir, ErrNotDir)
	}
	return nil
}

// OpenNoFollow opens a regular file for reading.
func OpenNoFollow(path string) (*os.File, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w", path, ErrNotRegular)
	}
	return os.Open(path)
}

// OpenAppend opens path for appending, creating it with perm, refusing
// a path that is not a regular file.
func OpenAppend(path string, perm os.FileMode) (*os.File, error) {
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w", path, ErrNotRegular)
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, perm)
}
