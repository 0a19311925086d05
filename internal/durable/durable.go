// Package durable makes file changes survive a crash or a power cut on
// each system the bridge runs on: a rename that replaces its target, and
// the directory entry it changed, on stable storage before the caller
// acknowledges anything; and an exclusive lock on a file that a second
// process cannot take.
//
// On Unix, a rename is made durable by fsyncing its directory. On
// Windows a directory cannot be opened for a flush; NTFS journals its
// metadata, and MoveFileEx with MOVEFILE_WRITE_THROUGH returns only once
// the rename is on disk, so SyncDir has nothing to do there. File data
// is flushed with (*os.File).Sync on both (FlushFileBuffers on Windows).
package durable

import "errors"

// ErrLocked is returned by Lock when another process holds the lock.
var ErrLocked = errors.New("locked by another process")

// Errors of the checks on files root writes in another user's directory.
var (
	ErrNotDir       = errors.New("not a directory")
	ErrNotRegular   = errors.New("not a regular file")
	ErrForeignOwner = errors.New("owned by another user")
)
