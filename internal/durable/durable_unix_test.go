//go:build unix

package durable

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

const nobody = 65534

func ownerOf(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

// A file root writes into a directory another user owns becomes that
// user's, through its descriptor; as anyone else, nothing changes.
func TestChownLikeDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tokens")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.CreateTemp(dir, "f-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := ChownLikeDir(f, dir); err != nil {
		t.Fatal(err)
	}
	uid, gid := ownerOf(t, f.Name())
	want := uint32(os.Geteuid())
	if os.Geteuid() == 0 {
		want = nobody
	}
	if uid != want || (os.Geteuid() == 0 && gid != nobody) {
		t.Errorf("owner %d:%d, want %d", uid, gid, want)
	}
}

// MkdirLikeParent makes the directory (and parents), gives it to the
// parent's owner when root makes it, and leaves an existing one alone.
func TestMkdirLikeParent(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(parent, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(parent, "tokens")
	if err := MkdirLikeParent(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("made %v, %v", fi, err)
	}
	if uid, _ := ownerOf(t, dir); os.Geteuid() == 0 && uid != nobody {
		t.Errorf("made as root in nobody's directory: owner %d, want %d", uid, nobody)
	}
	if err := MkdirLikeParent(dir); err != nil {
		t.Errorf("again: %v", err)
	}
	deep := filepath.Join(t.TempDir(), "a", "b", "tokens")
	if err := MkdirLikeParent(deep); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(deep); err != nil || !fi.IsDir() {
		t.Errorf("with missing parents: %v", err)
	}
}

// CheckDir refuses a link in a directory's place, a file, and a
// directory owned by a stranger (as root); it takes a real directory.
func TestCheckDir(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "tokens")
	os.Mkdir(dir, 0o700)
	if err := CheckDir(dir); err != nil {
		t.Errorf("a directory of our own: %v", err)
	}
	link := filepath.Join(base, "link")
	os.Symlink(dir, link)
	if err := CheckDir(link); !errors.Is(err, ErrNotDir) {
		t.Errorf("a link to a directory: %v, want ErrNotDir", err)
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	if err := CheckDir(file); !errors.Is(err, ErrNotDir) {
		t.Errorf("a file: %v, want ErrNotDir", err)
	}
	if os.Geteuid() != 0 {
		t.Log("the stranger's directory needs root to make; checked in CI, which runs as root")
		return
	}
	const stranger = 65533
	os.Chown(dir, stranger, stranger)
	if err := CheckDir(dir); !errors.Is(err, ErrForeignOwner) {
		t.Errorf("a stranger's directory in root's: %v, want ErrForeignOwner", err)
	}
	os.Chown(base, stranger, stranger)
	if err := CheckDir(dir); err != nil {
		t.Errorf("the directory's owner owns its parent too (the service's user): %v", err)
	}
}

// OpenNoFollow reads a file, not a link to one or a directory; Lock
// refuses a lock file swapped for a link and creates nothing at its
// target.
func TestNoFollow(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "target")
	os.WriteFile(target, []byte("secret"), 0o600)
	link := filepath.Join(base, "link")
	os.Symlink(target, link)
	if f, err := OpenNoFollow(target); err != nil {
		t.Errorf("a file: %v", err)
	} else {
		f.Close()
	}
	if _, err := OpenNoFollow(link); !errors.Is(err, ErrNotRegular) {
		t.Errorf("a link: %v, want ErrNotRegular", err)
	}
	if _, err := OpenNoFollow(base); !errors.Is(err, ErrNotRegular) {
		t.Errorf("a directory: %v, want ErrNotRegular", err)
	}
	missing := filepath.Join(base, "missing")
	lockLink := filepath.Join(base, "lock")
	os.Symlink(missing, lockLink)
	if unlock, err := Lock(lockLink); err == nil {
		unlock()
		t.Error("Lock took a lock file that is a link")
	}
	if _, err := os.Lstat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Lock created the link's target: %v", err)
	}
}
