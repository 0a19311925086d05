package upstream

import (
	"fmt"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/statefile"
	"github.com/smtpbridge/smtpbridge/message"
)

// DayBuckets is how finely the rolling day of a recipient quota is
// counted, here and in the replicas' Redis: minutes, for a day.
const DayBuckets = 1440

// daily counts recipients over a rolling window in DayBuckets buckets,
// so that its memory does not grow with the messages.
type daily struct {
	start [DayBuckets]int64 // the bucket's start, in units of the window / DayBuckets
	count [DayBuckets]int
}

func unitOf(window time.Duration) time.Duration { return max(window/DayBuckets, time.Nanosecond) }

// total is the count within the window ending at now.
func (d *daily) total(now int64) int {
	n := 0
	for i := range d.start {
		if now-d.start[i] < DayBuckets {
			n += d.count[i]
		}
	}
	return n
}

func (d *daily) add(now int64, n int) {
	i := now % DayBuckets
	if d.start[i] != now {
		d.start[i], d.count[i] = now, 0
	}
	d.count[i] += n
}

// adjust corrects the count of unit, if it is still in the window.
func (d *daily) adjust(unit int64, delta int) {
	if i := unit % DayBuckets; d.start[i] == unit {
		d.count[i] = max(d.count[i]+delta, 0)
	}
}

// frees returns the first unit at which at least need recipients have
// left the window.
func (d *daily) frees(now int64, need int) int64 {
	freed := 0
	for u := now - DayBuckets + 1; u <= now; u++ {
		i := u % DayBuckets
		if d.start[i] == u {
			freed += d.count[i]
		}
		if freed >= need {
			return u + DayBuckets
		}
	}
	return now + DayBuckets
}

// QuotaError is the failure of a message that would take a mailbox over
// its recipients per day: it waits until the window frees.
func QuotaError(mb Mailbox, limit, used int, retryAt time.Time) *message.Error {
	return &message.Error{Class: message.Throttled, Stage: message.StageQuota, RetryAt: retryAt,
		Err: fmt.Errorf("%s has sent to %d of its %d recipients a day; the message waits until %s", mb.Address, used, limit,
			retryAt.UTC().Format(time.RFC3339))}
}

// Recipients returns, per mailbox, the recipients counted in the rolling
// day.
func (l *Local) Recipients() map[Mailbox]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.unitNow()
	out := map[Mailbox]int{}
	for mb, b := range l.boxes {
		if n := b.day.total(now); n > 0 {
			out[mb] = n
		}
	}
	return out
}

// DailyLimit is the tenant's recipients a day per mailbox; 0 for none.
func (l *Local) DailyLimit(tenant string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limits[tenant].RecipientsPerDay
}

func (l *Local) unitNow() int64 { return time.Now().UnixNano() / int64(unitOf(l.Day)) }

func (l *Local) unitTime(u int64) time.Time { return time.Unix(0, u*int64(unitOf(l.Day))) }

// savedDay is a mailbox's count on disk.
type savedDay struct {
	Tenant  string     `json:"tenant"`
	Mailbox string     `json:"mailbox"`
	Counts  [][2]int64 `json:"counts"` // [bucket start (Unix ns), recipients]
}

// Save writes the recipient counts to path, so that a restart keeps the
// daily quota: write temp, sync, rename.
func (l *Local) Save(path string) error {
	l.mu.Lock()
	var out []savedDay
	now := l.unitNow()
	unit := int64(unitOf(l.Day))
	for mb, b := range l.boxes {
		s := savedDay{Tenant: mb.Tenant, Mailbox: mb.Address}
		for i := range b.day.start {
			if b.day.count[i] > 0 && now-b.day.start[i] < DayBuckets {
				s.Counts = append(s.Counts, [2]int64{b.day.start[i] * unit, int64(b.day.count[i])})
			}
		}
		if len(s.Counts) > 0 {
			out = append(out, s)
		}
	}
	l.mu.Unlock()
	if err := statefile.WriteJSON(path, out); err != nil {
		return fmt.Errorf("save recipient counts: %w", err)
	}
	return nil
}

// Load reads what Save wrote; a missing file is no error.
func (l *Local) Load(path string) error {
	var in []savedDay
	if _, err := statefile.ReadJSON(path, &in); err != nil {
		return fmt.Errorf("recipient counts: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.unitNow()
	unit := int64(unitOf(l.Day))
	for _, s := range in {
		b := l.box(MailboxOf(s.Tenant, s.Mailbox))
		for _, c := range s.Counts {
			if u := c[0] / unit; now-u < DayBuckets && u <= now {
				b.day.add(u, int(c[1]))
			}
		}
	}
	return nil
}
