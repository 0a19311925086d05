package spool

import (
	"errors"
	"fmt"
	"maps"
	"sync"

	"github.com/smtpbridge/smtpbridge/message"
)

// Quota bounds what the spool takes; a zero value turns a bound off.
type Quota struct {
	// MaxBytes bounds the messages in all, queued and dead.
	MaxBytes int64
	// MinFreeBytes is the free space the filesystem keeps: the spool
	// takes nothing that would leave less.
	MinFreeBytes int64
	// DeviceMaxBytes bounds one device's messages, queued and dead, so
	// that one device cannot take every other device's room. The
	// bridge's own reports are not counted against it.
	DeviceMaxBytes func(device string) int64
}

// Errors of a Writer over a quota. Nothing of the message is kept.
var (
	ErrFull        = errors.New("the spool is full (spool.max_bytes, or spool.min_free_bytes of free disk space)")
	ErrDeviceQuota = message.ErrDeviceSpoolFull
)

// Usage is what the spool holds.
type Usage struct {
	Bytes   int64            // messages queued and dead, and being written
	Devices map[string]int64 // the same per device
	// Free is the filesystem's free space; -1 where it cannot be told.
	Free int64
}

// usage counts the spool's bytes: committed messages, and those being
// written, which count from their first byte so that writers at once
// cannot pass a bound together.
type usage struct {
	mu       sync.Mutex
	quota    Quota
	total    int64
	byDevice map[string]int64
	// uncounted are the messages Open found and has not counted yet.
	uncounted map[string]bool
}

// freeCheckEvery is how often, in bytes written, a writer asks the
// filesystem how much room is left.
const freeCheckEvery = 1 << 20

// SetQuota sets the bounds (at start and on a reload).
func (s *Spool) SetQuota(q Quota) {
	s.use.mu.Lock()
	defer s.use.mu.Unlock()
	s.use.quota = q
}

// Quota returns the bounds in force.
func (s *Spool) Quota() Quota {
	s.use.mu.Lock()
	defer s.use.mu.Unlock()
	return s.use.quota
}

// Usage reports what the spool holds.
func (s *Spool) Usage() Usage {
	s.use.mu.Lock()
	u := Usage{Bytes: s.use.total, Devices: maps.Clone(s.use.byDevice)}
	s.use.mu.Unlock()
	u.Free = -1
	if free, err := freeBytes(s.dir); err == nil {
		u.Free = free
	}
	return u
}

// CanTake says whether a message of n bytes from no device in particular
// fits within the quota and the free space now, and if not, why.
func (s *Spool) CanTake(n int64) error {
	s.use.mu.Lock()
	q, total := s.use.quota, s.use.total
	s.use.mu.Unlock()
	if q.MaxBytes > 0 && total+n > q.MaxBytes {
		return fmt.Errorf("%w: %d of %d bytes used, and a message may take %d", ErrFull, total, q.MaxBytes, n)
	}
	if free, err := freeBytes(s.dir); err == nil && q.MinFreeBytes > 0 && free-n < q.MinFreeBytes {
		return fmt.Errorf("%w: %d bytes free, %d kept free, and a message may take %d", ErrFull, free, q.MinFreeBytes, n)
	}
	return nil
}

// add counts n more bytes of a device's message (n < 0: fewer). With
// check, it refuses bytes beyond a bound instead.
func (u *usage) add(device string, own bool, n int64, check bool) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if check && n > 0 {
		if u.quota.MaxBytes > 0 && u.total+n > u.quota.MaxBytes {
			return ErrFull
		}
		if own && u.quota.DeviceMaxBytes != nil {
			if max := u.quota.DeviceMaxBytes(device); max > 0 && u.byDevice[device]+n > max {
				return ErrDeviceQuota
			}
		}
	}
	u.addLocked(device, n)
	return nil
}

// minFree is the free space to keep.
func (u *usage) minFree() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.quota.MinFreeBytes
}

// addLocked counts n more bytes of a device's message; u.mu is held.
func (u *usage) addLocked(device string, n int64) {
	u.total += n
	if u.byDevice == nil {
		u.byDevice = map[string]int64{}
	}
	if u.byDevice[device] += n; u.byDevice[device] <= 0 {
		delete(u.byDevice, device)
	}
}

// uncountedYet says whether id, found at Open, is still to be counted.
func (u *usage) uncountedYet(id string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.uncounted[id]
}

// found counts a message found at Open, once, whoever reads it first.
func (u *usage) found(id, device string, n int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.uncounted[id] {
		delete(u.uncounted, id)
		u.addLocked(device, n)
	}
}

// forget takes a removed message's bytes off, unless Open found it and
// it was never counted (then it is only struck from those to count).
func (u *usage) forget(id, device string, n int64, counts bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.uncounted[id] {
		delete(u.uncounted, id)
		return
	}
	if counts {
		u.addLocked(device, -n)
	}
}

// TakeScratch counts n bytes of an attempt's temporary files (a large
// message's attachments decoded for Microsoft Graph) against the spool's
// bounds until ReleaseScratch, or refuses with ErrFull: they are on the
// same disk as the spool and take its room while they exist.
func (s *Spool) TakeScratch(n int64) error {
	s.use.mu.Lock()
	defer s.use.mu.Unlock()
	q := s.use.quota
	if q.MaxBytes > 0 && s.use.total+n > q.MaxBytes {
		return fmt.Errorf("%w: an attempt's temporary files would pass spool.max_bytes", ErrFull)
	}
	if q.MinFreeBytes > 0 {
		if free, err := freeBytes(s.dir); err == nil && free-n < q.MinFreeBytes {
			return fmt.Errorf("%w: an attempt's temporary files would pass spool.min_free_bytes", ErrFull)
		}
	}
	s.use.total += n
	return nil
}

// ReleaseScratch gives back what TakeScratch counted.
func (s *Spool) ReleaseScratch(n int64) {
	s.use.mu.Lock()
	defer s.use.mu.Unlock()
	s.use.total -= n
}
