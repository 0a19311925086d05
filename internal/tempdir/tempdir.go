// Package tempdir gives tests a temporary directory removed at their
// end, like testing.T.TempDir, that can also be removed under Wine: Go's
// os.RemoveAll on Windows deletes through FileDispositionInformationEx,
// which Wine 8.0 answers with "Invalid function", failing every test's
// cleanup there. New removes file by file with os.Remove instead, which
// Wine handles.
package tempdir

import (
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
)

// New returns a new temporary directory, removed when t ends.
func New(t testing.TB) string {
	t.Helper()
	if runtime.GOOS != "windows" {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(dir) })
	return dir
}

// removeAll removes dir's files, then its directories deepest first.
func removeAll(dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		} else {
			os.Remove(p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		os.Remove(d)
	}
}
