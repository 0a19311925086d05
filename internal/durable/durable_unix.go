//go:build unix

package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Rename renames from to to, replacing to if it exists. The rename is
// durable once SyncDir of to's directory returns.
func Rename(from, to string) error { return os.Rename(from, to) }

// SyncDir flushes dir's entries (names created, renamed or removed in it)
// to stable storage.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Lock takes an exclusive lock on path (created if missing), held until
// unlock or the process's end, crash included. Another process gets
// ErrLocked.
func Lock(path string) (unlock func(), err error) {
	// O_NOFOLLOW: a lock file swapped for a link to another file (the
	// spool's owner can, and root runs smtpbridge queue) is refused, not
	// created or locked at the link's target.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// FreeBytes is the space left to unprivileged users on dir's filesystem.
func FreeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// The functions below are for files root writes into a directory the
// service's user owns (sudo smtpbridge tenant login, before it drops to
// that user; see internal/privdrop). That user may swap any name in the
// directory for a symbolic link at any moment, so nothing here acts on
// a name after creating it: ownership changes go through the open file
// descriptor (fchown), directories are opened O_NOFOLLOW, and files are
// created O_EXCL, which never follows a link.

// openDir opens dir itself, never a symbolic link in its place.
func openDir(dir string) (*os.File, error) {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.ENOTDIR) {
			return nil, fmt.Errorf("%s is not a directory (a symbolic link or a file in its place): %w", dir, ErrNotDir)
		}
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// owner is who owns the open file f.
func owner(f *os.File) (uid, gid int, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("%s: no owner known", f.Name())
	}
	return int(st.Uid), int(st.Gid), nil
}

// dirOwner is who owns dir (a symbolic link to a directory is followed:
// an admin may have moved the spool). Only root can give a file away,
// so it says nothing to do (ok false) for anyone else, or when root owns
// dir.
func dirOwner(dir string) (uid, gid int, ok bool, err error) {
	if os.Geteuid() != 0 {
		return 0, 0, false, nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, 0, false, err
	}
	st, isUnix := fi.Sys().(*syscall.Stat_t)
	if !isUnix || st.Uid == 0 {
		return 0, 0, false, nil
	}
	return int(st.Uid), int(st.Gid), true, nil
}

// ChownLikeDir gives the open file f the owner and group of dir, its
// directory, when root writes it there and another user owns dir, so
// that the service's user can read and replace it. It changes the file
// through its descriptor (fchown): a name swapped for a symbolic link
// after the file was created is never followed. Call it before closing f.
func ChownLikeDir(f *os.File, dir string) error {
	uid, gid, ok, err := dirOwner(dir)
	if err != nil || !ok {
		return err
	}
	if err := f.Chown(uid, gid); err != nil {
		return fmt.Errorf("give %s to the owner of %s: %w", f.Name(), dir, err)
	}
	return nil
}

// MkdirLikeParent makes dir (mode 0700, with its missing parents) if it
// does not exist, and when root makes it in a directory another user
// owns, gives it to that user, through a descriptor opened O_NOFOLLOW: a
// symbolic link put in its place in the meantime makes it fail, and is
// never followed. An existing dir is left as it is (see CheckDir).
func MkdirLikeParent(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return err
		}
		err = os.Mkdir(dir, 0o700)
	}
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	uid, gid, ok, err := dirOwner(filepath.Dir(dir))
	if err != nil || !ok {
		return err
	}
	d, err := openDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Chown(uid, gid); err != nil {
		return fmt.Errorf("give %s to the owner of its directory: %w", dir, err)
	}
	return nil
}

// CheckDir refuses a directory that root should not write secrets in: a
// symbolic link, not a directory, or owned by someone other than root,
// this process's user, or the owner of its parent (the service's user,
// who owns the spool).
func CheckDir(dir string) error {
	d, err := openDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	uid, _, err := owner(d)
	if err != nil {
		return err
	}
	if uid == 0 || uid == os.Geteuid() {
		return nil
	}
	if fi, err := os.Stat(filepath.Dir(dir)); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid {
			return nil
		}
	}
	return fmt.Errorf("%s is owned by user %d, neither root, this process's user nor the owner of its parent directory: %w", dir, uid, ErrForeignOwner)
}

// OpenNoFollow opens a regular file for reading, never through a
// symbolic link.
func OpenNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link: %w", path, ErrNotRegular)
	}
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, ErrNotRegular)
	}
	return f, nil
}

// OpenAppend opens path for appending, creating it with perm, and never
// through a symbolic link (a file written as root must not be one an
// unprivileged user pointed elsewhere).
func OpenAppend(path string, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link: %w", path, ErrNotRegular)
	}
	return f, err
}

// Remove removes path.
func Remove(path string) error { return os.Remove(path) }
