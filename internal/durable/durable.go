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

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrLocked is returned by Lock when another process holds the lock.
var ErrLocked = errors.New("locked by another process")

// Errors of the checks on files root writes in another user's directory.
var (
	ErrNotDir       = errors.New("not a directory")
	ErrNotRegular   = errors.New("not a regular file")
	ErrForeignOwner = errors.New("owned by another user")
)

// WriteFile writes data to path whole or not at all, and durably: a
// temporary file in path's directory (created O_EXCL, so never a link's
// target; mode perm), written and flushed, given to the directory's owner
// when root writes it there (ChownLikeDir), renamed over path, and the
// directory flushed, so that neither a crash nor a power cut leaves half
// a file or brings the old one back. It is the one atomic write of the
// bridge: the spool's metadata, the token cache, the state files and the
// admin token.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+TempSuffix+"*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	merr := tmp.Chmod(perm)
	serr := tmp.Sync()
	oerr := ChownLikeDir(tmp, dir)
	cerr := tmp.Close()
	if err := errors.Join(werr, merr, serr, oerr, cerr); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	// The rename on disk too: a power cut must not bring back the old
	// file, or lose the new one.
	return dirSync(dir)
}

// TempSuffix marks WriteFile's temporary files ("." + name + TempSuffix
// + random): what a crash left of one is safe to remove.
const TempSuffix = ".tmp-"

// dirSync is SyncDir; tests count its calls.
var dirSync = SyncDir
