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

// OwnLikeDir does nothing here.
func OwnLikeDir(string) error { return nil }
