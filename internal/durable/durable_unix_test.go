//go:build unix

package durable

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A file root writes into a directory another user owns becomes that
// user's; as anyone else, nothing changes.
func TestOwnLikeDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tokens")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if err := OwnLikeDir(path); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(path)
		if int(fi.Sys().(*syscall.Stat_t).Uid) != os.Geteuid() {
			t.Fatal("the owner changed without root")
		}
		return
	}
	const nobody = 65534
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	if err := OwnLikeDir(path); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobody || st.Gid != nobody {
		t.Errorf("owner %d:%d, want the directory's %d:%d", st.Uid, st.Gid, nobody, nobody)
	}
}
