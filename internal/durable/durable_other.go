//go:build !unix && !windows

package durable

import (
	"errors"
	"os"
)

// Rename renames from to to.
func Rename(from, to string) error { return os.Rename(from, to) }

// SyncDir does nothing here.
func SyncDir(dir string) error { return nil }

// Lock does nothing here: no file locking is known.
func Lock(path string) (unlock func(), err error) { return func() {}, nil }

// FreeBytes cannot tell the free space here.
func FreeBytes(string) (int64, error) { return 0, errors.New("free space unknown on this system") }

// ChownLikeDir does nothing here.
func ChownLikeDir(*os.File, string) error { return nil }

// MkdirLikeParent makes dir and its parents.
func MkdirLikeParent(dir string) error { return os.MkdirAll(dir, 0o700) }

// CheckDir does nothing here.
func CheckDir(string) error { return nil }

// OpenNoFollow opens path for reading.
func OpenNoFollow(path string) (*os.File, error) { return os.Open(path) }

// OpenAppend opens path for appending, creating it with perm.
func OpenAppend(path string, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, perm)
}

// Remove removes path.
func Remove(path string) error { return os.Remove(path) }
