package memlimit

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func TestChoose(t *testing.T) {
	dir := t.TempDir()
	v2 := filepath.Join(dir, "memory.max")
	defer func(f []string) { cgroupFiles = f }(cgroupFiles)
	cgroupFiles = []string{v2}

	write := func(s string) {
		if err := os.WriteFile(v2, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("134217728") // a 128 MiB container
	if l := Choose(0, ""); l.Source != "cgroup" || l.Bytes != 107374182 {
		t.Errorf("128 MiB cgroup: %+v", l)
	}
	if l := Choose(64<<20, ""); l.Source != "limits.max_memory_bytes" || l.Bytes != 64<<20 {
		t.Errorf("configured: %+v", l)
	}
	if l := Choose(-1, ""); l.Source != "none" {
		t.Errorf("configured off: %+v", l)
	}
	write("max")
	if l := Choose(0, ""); l.Source != "none" {
		t.Errorf("no cgroup limit: %+v", l)
	}
	os.Remove(v2)
	if l := Choose(0, ""); l.Source != "none" {
		t.Errorf("no cgroup: %+v", l)
	}
	if l := Choose(64<<20, "50MiB"); l.Source != "GOMEMLIMIT" {
		t.Errorf("GOMEMLIMIT set: %+v", l)
	}
}

func TestApply(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	if l := Apply(96 << 20); l.Bytes != 96<<20 {
		t.Fatalf("Apply: %+v", l)
	}
	if got := debug.SetMemoryLimit(-1); got != 96<<20 {
		t.Errorf("the runtime's limit is %d, want %d", got, 96<<20)
	}
}
