package spool

import (
	"bytes"
	"errors"
	"io"
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
