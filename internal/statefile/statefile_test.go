package statefile

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
)

func TestRoundTrip(t *testing.T) {
	dir := tempdir.New(t)
	path := filepath.Join(dir, "state.json")
	var got map[string]int
	if found, err := ReadJSON(path, &got); found || err != nil {
		t.Fatalf("a missing file: %v %v", found, err)
	}
	if err := WriteJSON(path, map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(path, map[string]int{"b": 2}); err != nil {
		t.Fatal(err)
	}
	if found, err := ReadJSON(path, &got); !found || err != nil || got["b"] != 2 || len(got) != 1 {
		t.Fatalf("read back %v %v %v", got, found, err)
	}
	// Windows has no modes: the ACL of the directory it is in decides.
	if fi, _ := os.Stat(path); runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	os.WriteFile(path, []byte("{broken"), 0o600)
	if found, err := ReadJSON(path, &got); !found || err == nil {
		t.Errorf("a broken file: %v %v", found, err)
	}
	if err := WriteJSON(filepath.Join(dir, "missing", "x.json"), 1); err == nil {
		t.Error("no error for a missing directory")
	}
}
