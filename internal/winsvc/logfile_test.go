package winsvc

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
)

// A rotated log file: after Reopen the lines go to the new file, the
// rotated one keeps what it had; after Close writes fail. (Windows does
// not rename a file open for writing: there Reopen appends to the file
// under the name, whatever a rotation tool made of it.)
func TestLogFileReopen(t *testing.T) {
	dir := tempdir.New(t)
	path := filepath.Join(dir, "smtpbridge.log")
	lf := &LogFile{Path: path}
	if err := lf.Reopen(); err != nil {
		t.Fatal(err)
	}
	lf.Write([]byte("before\n"))
	rotated := runtime.GOOS != "windows"
	if rotated {
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
		lf.Write([]byte("still the old file\n"))
	}
	if err := lf.Reopen(); err != nil {
		t.Fatal(err)
	}
	lf.Write([]byte("after\n"))
	if err := lf.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := lf.Write([]byte("closed\n")); err == nil {
		t.Error("a write after Close succeeded")
	}
	cur, _ := os.ReadFile(path)
	if !rotated {
		if string(cur) != "before\nafter\n" {
			t.Errorf("the log file holds %q", cur)
		}
		return
	}
	old, _ := os.ReadFile(path + ".1")
	if string(old) != "before\nstill the old file\n" || string(cur) != "after\n" {
		t.Errorf("rotated file %q, new file %q", old, cur)
	}
}
