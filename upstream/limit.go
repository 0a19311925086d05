package upstream

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Mailbox is one tenant's sending mailbox: the unit Exchange Online
// limits.
type Mailbox struct {
	Tenant  string
	Address string // lower case
}

// MailboxOf names a tenant's mailbox.
func MailboxOf(tenant, address string) Mailbox {
	return Mailbox{Tenant: tenant, Address: strings.ToLower(address)}
}

// Limiter keeps each mailbox within Exchange Online's limits (EXCHANGE.md,
// "Limits"): connections open at once, submissions started per minute,
// and recipients per day. A caller over a limit waits; nothing is refused.
// Local is the one for a single process; a limiter shared between
// replicas implements the same interface.
type Limiter interface {
	// Connect waits for one of the mailbox's connection slots, held for
	// as long as the connection stays open, idle time included: Exchange
	// counts idle connections too.
	Connect(ctx context.Context, mb Mailbox) (Lease, error)
	// Submit waits until the mailbox may start one more submission, of
	// rcpts recipients. A message the mailbox's recipients per day leave
	// no room for does not wait: it gets a *message.Error of class
	// Throttled whose RetryAt says when the window frees. done tells how
	// many recipients Exchange took, which is what the quota counts.
	Submit(ctx context.Context, mb Mailbox, rcpts int) (done func(accepted int), err error)
}

// Lease is a connection slot.
type Lease interface {
	// Held says whether the slot still counts within the mailbox's
	// limit: false once the limit was lowered below the connections
	// open (or a shared lease was lost). A connection whose lease is not
	// held closes when its submission ends, instead of idling.
	Held() bool
	// Release gives the slot back; the connection has closed.
	Release()
}

// RateWindow is the span PerMinute counts starts over: a minute, and a
// second more, for the time between the count and the MAIL reaching
// Exchange, which varies with the network and Exchange's load, so that
// Exchange itself never sees more than PerMinute in its minute.
const RateWindow = time.Minute + time.Second

// Limits are one tenant's per-mailbox limits.
type Limits struct {
	// Connections is how many may be open at once (Exchange Online
	// allows 3; beyond, 432 4.3.2).
	Connections int
	// PerMinute is how many submissions may start in any 60 seconds (30
	// for Exchange Online, which delays the excess), counted over
	// RateWindow; 0 for no limit.
	PerMinute int
	// RecipientsPerDay is how many recipients the mailbox may send to in
	// any 24 hours (10,000 for Exchange Online, which refuses the excess
	// with 554 5.2.0 SubmissionQuotaExceeded); 0 for no limit.
	RecipientsPerDay int
}

// Local is the Limiter of one process.
type Local struct {
	window time.Duration // a minute; tests shorten it
	// Day is the recipient quota's rolling window: 24 hours. Set it
	// before use (tests shorten it).
	Day time.Duration

	mu     sync.Mutex
	limits map[string]Limits // by tenant
	boxes  map[Mailbox]*box
}

// box is one mailbox's state.
type box struct {
	open    int         // connection slots held
	leaving int         // of those, the ones told they are over the limit
	started []time.Time // submission starts in the last window, oldest first
	day     daily       // recipients in the rolling day
	changed chan struct{}
}

// NewLocal returns a limiter with limits per tenant name.
func NewLocal(limits map[string]Limits) *Local {
	return &Local{window: RateWindow, Day: 24 * time.Hour, limits: limits, boxes: map[Mailbox]*box{}}
}

// SetLimits replaces the limits (a config reload). A lower connection
// limit applies to connections opened from now on; those above it close
// as their submissions end (Lease.Held).
func (l *Local) SetLimits(limits map[string]Limits) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.limits = limits
	for _, b := range l.boxes {
		b.broadcast()
	}
}

// box returns mb's state; l.mu is held.
func (l *Local) box(mb Mailbox) *box {
	b := l.boxes[mb]
	if b == nil {
		b = &box{changed: make(chan struct{})}
		l.boxes[mb] = b
	}
	return b
}

// broadcast wakes every waiter; l.mu is held.
func (b *box) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// limitsOf returns the tenant's limits; l.mu is held.
func (l *Local) limitsOf(mb Mailbox) (Limits, error) {
	lim, ok := l.limits[mb.Tenant]
	if !ok || lim.Connections <= 0 {
		return Limits{}, fmt.Errorf("no connection limit for tenant %q", mb.Tenant)
	}
	return lim, nil
}

// Connect implements Limiter.
func (l *Local) Connect(ctx context.Context, mb Mailbox) (Lease, error) {
	for {
		l.mu.Lock()
		lim, err := l.limitsOf(mb)
		if err != nil {
			l.mu.Unlock()
			return nil, err
		}
		b := l.box(mb)
		if b.open < lim.Connections {
			b.open++
			l.mu.Unlock()
			return &localLease{l: l, mb: mb, b: b}, nil
		}
		ch := b.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a free connection to Exchange (limit %d per mailbox): %w", lim.Connections, context.Cause(ctx))
		}
	}
}

// Submit implements Limiter. The recipients are counted from the start
// and corrected by done, so that submissions running at once cannot
// together pass the quota.
func (l *Local) Submit(ctx context.Context, mb Mailbox, rcpts int) (func(int), error) {
	for {
		l.mu.Lock()
		lim, err := l.limitsOf(mb)
		if err != nil {
			l.mu.Unlock()
			return nil, err
		}
		b := l.box(mb)
		unit := l.unitNow()
		// A message with more recipients than a whole day's quota goes
		// when the day is empty: it could never go otherwise.
		if used := b.day.total(unit); lim.RecipientsPerDay > 0 && used+rcpts > lim.RecipientsPerDay && used > 0 {
			retry := l.unitTime(b.day.frees(unit, used+rcpts-lim.RecipientsPerDay))
			l.mu.Unlock()
			return nil, QuotaError(mb, lim.RecipientsPerDay, used, retry)
		}
		now := time.Now()
		for len(b.started) > 0 && now.Sub(b.started[0]) >= l.window {
			b.started = b.started[1:]
		}
		if lim.PerMinute <= 0 || len(b.started) < lim.PerMinute {
			if lim.PerMinute > 0 {
				b.started = append(b.started, now)
			}
			b.day.add(unit, rcpts)
			l.mu.Unlock()
			var once sync.Once
			return func(accepted int) {
				once.Do(func() {
					if accepted == rcpts {
						return
					}
					l.mu.Lock()
					b.day.adjust(unit, accepted-rcpts)
					l.mu.Unlock()
				})
			}, nil
		}
		wait := b.started[0].Add(l.window).Sub(now)
		ch := b.changed
		l.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ch: // the limits changed
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting to submit within %d messages a minute per mailbox: %w", lim.PerMinute, context.Cause(ctx))
		}
		t.Stop()
	}
}

// Seed makes mb's counts those given: the submissions started in the
// window (the ones older than it are dropped) and the recipients of the
// day, counted from now. A replica falling back to local limits starts
// from what the replicas had done together.
func (l *Local) Seed(mb Mailbox, starts []time.Time, recipients int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.box(mb)
	now := time.Now()
	b.started = b.started[:0]
	for _, s := range starts {
		if now.Sub(s) < l.window {
			b.started = append(b.started, s)
		}
	}
	slices.SortFunc(b.started, time.Time.Compare)
	b.day = daily{}
	b.day.add(l.unitNow(), recipients)
	b.broadcast()
}

type localLease struct {
	l       *Local
	mb      Mailbox
	b       *box
	leaving bool // told it is over the limit; it closes
	once    sync.Once
}

// Held implements Lease. Of the connections over a lowered limit, each
// asking is told to leave in turn, and counted as leaving until it
// releases its slot, so that connections asking at once do not all
// leave: exactly the limit's number stays.
func (le *localLease) Held() bool {
	le.l.mu.Lock()
	defer le.l.mu.Unlock()
	if le.leaving {
		return false
	}
	lim, err := le.l.limitsOf(le.mb)
	if err == nil && le.b.open-le.b.leaving <= lim.Connections {
		return true
	}
	le.leaving = true
	le.b.leaving++
	return false
}

func (le *localLease) Release() {
	le.once.Do(func() {
		le.l.mu.Lock()
		le.b.open--
		if le.leaving {
			le.b.leaving--
		}
		le.b.broadcast()
		le.l.mu.Unlock()
	})
}
