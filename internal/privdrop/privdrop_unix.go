//go:build unix

package privdrop

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ToOwnerOf makes the process run, for the rest of its life, as the
// owner of path (or of its nearest existing parent, when path does not
// exist yet), with that owner's group and no supplementary groups. It
// does so only when the process runs as root and another user owns the
// directory; otherwise it returns the zero User and changes nothing.
//
// Call it after everything only root may read (the config, its secrets)
// is read, and before any file is written. On Linux, Go applies the
// change to every thread of the process.
func ToOwnerOf(path string) (User, error) {
	if os.Geteuid() != 0 {
		return User{}, nil
	}
	fi, err := nearest(path)
	if err != nil {
		return User{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return User{}, nil
	}
	u := User{UID: int(st.Uid), GID: int(st.Gid)}
	// Go reads the system's trust store at its first use, and it may be
	// a file only root can read (SSL_CERT_FILE): read it now.
	x509.SystemCertPool()
	// The order matters: groups and group while still root, the user
	// last, after which nothing can be taken back.
	if err := syscall.Setgroups([]int{}); err != nil {
		return User{}, fmt.Errorf("drop supplementary groups: %w", err)
	}
	if err := syscall.Setgid(u.GID); err != nil {
		return User{}, fmt.Errorf("become group %d (the owner of %s): %w", u.GID, path, err)
	}
	if err := syscall.Setuid(u.UID); err != nil {
		return User{}, fmt.Errorf("become user %d (the owner of %s): %w", u.UID, path, err)
	}
	if os.Geteuid() != u.UID || os.Getuid() != u.UID || os.Getegid() != u.GID {
		return User{}, fmt.Errorf("still running as %d:%d after becoming %d:%d, the owner of %s", os.Geteuid(), os.Getegid(), u.UID, u.GID, path)
	}
	return u, nil
}

// nearest stats path, or its nearest existing parent.
func nearest(path string) (fs.FileInfo, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	for {
		fi, err := os.Stat(p)
		if err == nil {
			return fi, nil
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, fs.ErrNotExist) || parent == p {
			return nil, err
		}
		p = parent
	}
}
