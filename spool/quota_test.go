package spool

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
)

func write(t *testing.T, s *Spool, device string, n int) (Meta, error) {
	t.Helper()
	w, err := s.Create(Meta{Device: device, To: []string{"a@b.example"}})
	if err != nil {
		return Meta{}, err
	}
	if _, err := io.Copy(w, bytes.NewReader(make([]byte, n))); err != nil {
		w.Abort()
		return Meta{}, err
	}
	return w.Commit()
}

// A device over its share gets ErrDeviceQuota while the others go on; the
// spool as a whole stops at MaxBytes; what leaves frees its room; usage
// is counted again at Open.
func TestQuota(t *testing.T) {
	dir := tempdir.New(t)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.SetQuota(Quota{MaxBytes: 10_000, DeviceMaxBytes: func(d string) int64 {
		if d == "small" {
			return 3_000
		}
		return 0
	}})
	a, err := write(t, s, "small", 2_000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := write(t, s, "small", 2_000); !errors.Is(err, ErrDeviceQuota) {
		t.Fatalf("over the device's share: %v", err)
	}
	if _, err := write(t, s, "big", 7_000); err != nil {
		t.Fatalf("another device: %v", err)
	}
	if _, err := write(t, s, "big", 2_000); !errors.Is(err, ErrFull) {
		t.Fatalf("over the spool's bound: %v", err)
	}
	if u := s.Usage(); u.Bytes != 9_000 || u.Devices["small"] != 2_000 || u.Devices["big"] != 7_000 {
		t.Fatalf("usage %+v", u)
	}
	if err := s.CanTake(2_000); !errors.Is(err, ErrFull) {
		t.Errorf("CanTake(2000) with 1000 left: %v", err)
	}
	// Dead letters still count; removing one frees its room.
	if err := s.Bury(a, "test"); err != nil {
		t.Fatal(err)
	}
	if u := s.Usage(); u.Devices["small"] != 2_000 {
		t.Errorf("a dead letter stopped counting: %+v", u)
	}
	if err := s.RemoveDead(a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := write(t, s, "small", 2_500); err != nil {
		t.Fatalf("after the dead letter went: %v", err)
	}
	// Counted again at Open.
	again, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u := again.Usage(); u.Bytes != 9_500 || u.Devices["small"] != 2_500 {
		t.Errorf("after Open: %+v", u)
	}
	// A free-space reserve larger than the disk refuses everything.
	again.SetQuota(Quota{MinFreeBytes: 1 << 62})
	if _, err := write(t, again, "big", 10); !errors.Is(err, ErrFull) {
		t.Errorf("with no free space left: %v", err)
	}
	if err := again.CanTake(1); !errors.Is(err, ErrFull) {
		t.Errorf("CanTake with no free space left: %v", err)
	}
}

// An attempt's temporary files take the spool's room while they exist:
// a device's message does not fit beside them, and fits once they go;
// no device's share is charged.
func TestScratch(t *testing.T) {
	s, err := Open(tempdir.New(t))
	if err != nil {
		t.Fatal(err)
	}
	s.SetQuota(Quota{MaxBytes: 10_000})
	if err := s.TakeScratch(8_000); err != nil {
		t.Fatal(err)
	}
	if err := s.TakeScratch(3_000); !errors.Is(err, ErrFull) {
		t.Errorf("scratch past the bound: %v", err)
	}
	if _, err := write(t, s, "mfp", 3_000); !errors.Is(err, ErrFull) {
		t.Errorf("a message beside the scratch: %v", err)
	}
	if u := s.Usage(); u.Bytes != 8_000 || len(u.Devices) != 0 {
		t.Errorf("usage %+v: the scratch counts, for no device", u)
	}
	s.ReleaseScratch(8_000)
	if _, err := write(t, s, "mfp", 3_000); err != nil {
		t.Errorf("after the scratch went: %v", err)
	}
}

// A spool opened in the background counts what it holds while it takes
// and removes messages: each message found is counted once, and one
// removed or buried before its turn neither counts nor drives the count
// below what is left.
func TestOpenBackgroundCountsOnce(t *testing.T) {
	dir := tempdir.New(t) // t.TempDir cannot remove it under Wine
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var metas []Meta
	for i := range 400 {
		metas = append(metas, put(t, s, strings.Repeat("x", 100+i)))
	}
	defer func(f func()) { beforeCount = f }(beforeCount)
	for run := range 5 {
		// The count starts after the changes in even runs, during them
		// in odd ones.
		hold := make(chan struct{})
		beforeCount = func() {
			if run%2 == 0 {
				<-hold
			}
		}
		s2, err := OpenBackground(dir)
		if err != nil {
			t.Fatal(err)
		}
		// While it counts: a new message, some removed, some buried.
		fresh := put(t, s2, strings.Repeat("y", 1000))
		var left int64 = fresh.Size
		for i, m := range metas {
			switch i % 4 {
			case 0:
				if err := s2.Remove(m.ID); err != nil {
					t.Fatal(err)
				}
				continue
			case 1:
				if err := s2.Bury(m, "test"); err != nil {
					t.Fatal(err)
				}
			}
			left += m.Size
		}
		if run%2 == 0 {
			// The queue's load lists the spool while the count waits:
			// what it reads is counted then, and not again.
			if _, err := s2.List(); err != nil {
				t.Fatal(err)
			}
			if _, err := s2.Dead(); err != nil {
				t.Fatal(err)
			}
			if u := s2.Usage(); u.Bytes != left {
				t.Fatalf("run %d: %d bytes counted after the listing, %d in the spool", run, u.Bytes, left)
			}
		}
		close(hold)
		<-s2.Counted()
		if u := s2.Usage(); u.Bytes != left || u.Devices["mfp"] != left {
			t.Fatalf("run %d: %d bytes counted (%d for the device), %d left in the spool", run, u.Bytes, u.Devices["mfp"], left)
		}
		// What is left, buried ones included, for the next run.
		q, _ := s2.List()
		d, _ := s2.Dead()
		if nq, _ := s2.QueuedCount(); nq != len(q) {
			t.Fatalf("run %d: QueuedCount %d, %d listed", run, nq, len(q))
		}
		if nd, _ := s2.DeadCount(); nd != len(d) {
			t.Fatalf("run %d: DeadCount %d, %d listed", run, nd, len(d))
		}
		for _, m := range d {
			if err := s2.RemoveDead(m.ID); err != nil {
				t.Fatal(err)
			}
		}
		metas = q
		if u := s2.Usage(); u.Bytes < 0 {
			t.Fatalf("run %d: negative count %d", run, u.Bytes)
		}
	}
}
