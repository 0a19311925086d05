//go:build unix

package privdrop

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

const nobody = 65534

// Run as root in a child process (a process cannot become root again):
// after ToOwnerOf on a directory nobody owns, the child is nobody, its
// files are nobody's, and a file only root may read is out of its
// reach. As anyone else, nothing changes.
func TestToOwnerOf(t *testing.T) {
	if dir := os.Getenv("PRIVDROP_CHILD"); dir != "" {
		u, err := ToOwnerOf(filepath.Join(dir, "spool", "tokens", "not-yet"))
		if err != nil {
			t.Fatal(err)
		}
		if u != (User{nobody, nobody}) {
			t.Fatalf("became %+v, want nobody", u)
		}
		if err := os.WriteFile(filepath.Join(dir, "spool", "written"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := os.ReadFile(filepath.Join(dir, "root-only")); !errors.Is(err, fs.ErrPermission) {
			t.Fatalf("reading root's file after the drop: %v, want permission denied", err)
		}
		return
	}
	if os.Geteuid() != 0 {
		u, err := ToOwnerOf(t.TempDir())
		if err != nil || u.Changed() {
			t.Fatalf("as a user: %+v, %v; want no change", u, err)
		}
		t.Log("the drop itself needs root; checked in CI, which runs as root")
		return
	}
	dir := t.TempDir()
	// nobody must get through t.TempDir's directories (0700, root's).
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	spool := filepath.Join(dir, "spool")
	os.Mkdir(spool, 0o700)
	os.Chown(spool, nobody, nobody)
	os.WriteFile(filepath.Join(dir, "root-only"), []byte("secret"), 0o600)
	cmd := exec.Command(os.Args[0], "-test.run=^TestToOwnerOf$", "-test.v")
	cmd.Env = append(os.Environ(), "PRIVDROP_CHILD="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(spool, "written"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobody || st.Gid != nobody {
		t.Errorf("the child's file is %d:%d, want nobody's", st.Uid, st.Gid)
	}
	// The root process itself is unchanged.
	if os.Geteuid() != 0 {
		t.Fatal("the test process lost root")
	}
}
