package durable

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
)

// WriteFile replaces the file whole, with the mode asked, leaves no
// temporary file, and flushes the directory after the rename (counted
// through the seam: a power cut between the two is not testable here).
func TestWriteFile(t *testing.T) {
	dir := tempdir.New(t)
	path := filepath.Join(dir, "state.json")
	var synced []string
	old := dirSync
	dirSync = func(d string) error { synced = append(synced, d); return old(d) }
	defer func() { dirSync = old }()
	for _, content := range []string{"first", "second, longer than the first"} {
		if err := WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(path); string(b) != content {
			t.Errorf("read back %q, want %q", b, content)
		}
	}
	if len(synced) != 2 || synced[0] != dir {
		t.Errorf("the directory was synced %v, want twice, %s", synced, dir)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 && fi.Mode().Perm() != 0o666 {
		t.Errorf("mode %v %v", fi, err) // 0666 under Wine, which has no Unix modes
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), TempSuffix) {
			t.Errorf("a temporary file is left: %s", e.Name())
		}
	}
	if err := WriteFile(filepath.Join(dir, "missing", "x"), nil, 0o600); err == nil {
		t.Error("WriteFile into a missing directory succeeded")
	}
}
