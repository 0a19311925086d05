package durable

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
)

// Rename replaces an existing file, and the result is whole; SyncDir
// takes the directory.
func TestRenameOverExisting(t *testing.T) {
	dir := tempdir.New(t)
	from, to := filepath.Join(dir, "new"), filepath.Join(dir, "dir with spaces", "old")
	os.Mkdir(filepath.Dir(to), 0o700)
	os.WriteFile(from, []byte("new content"), 0o600)
	os.WriteFile(to, []byte("old"), 0o600)
	if err := Rename(from, to); err != nil {
		t.Fatal(err)
	}
	if err := SyncDir(filepath.Dir(to)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(to); string(b) != "new content" {
		t.Errorf("after Rename over it: %q", b)
	}
	if _, err := os.Stat(from); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the source is still there: %v", err)
	}
	if err := SyncDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("SyncDir of a missing directory succeeded")
	}
}

// A second process cannot take the lock while the first holds it; it
// can once the first lets go. The second process is this test binary.
func TestLockAcrossProcesses(t *testing.T) {
	if path := os.Getenv("DURABLE_LOCK_CHILD"); path != "" {
		if _, err := Lock(path); errors.Is(err, ErrLocked) {
			os.Exit(3)
		} else if err != nil {
			os.Exit(4)
		}
		os.Exit(0)
	}
	path := filepath.Join(tempdir.New(t), "lock")
	child := func() int {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLockAcrossProcesses$")
		cmd.Env = append(os.Environ(), "DURABLE_LOCK_CHILD="+path)
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	unlock, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	if code := child(); code != 3 {
		t.Errorf("a second process locking a held lock exited %d, want 3 (ErrLocked)", code)
	}
	unlock()
	if code := child(); code != 0 {
		t.Errorf("a second process locking a released lock exited %d, want 0", code)
	}
}

func TestFreeBytes(t *testing.T) {
	n, err := FreeBytes(tempdir.New(t))
	if err != nil || n <= 0 {
		t.Errorf("FreeBytes = %d, %v", n, err)
	}
}
