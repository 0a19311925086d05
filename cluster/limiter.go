// Package cluster shares what several bridge replicas must agree on
// through Redis (or Valkey): each mailbox's connections to Exchange, its
// submissions per minute and its recipients per day (Limiter); the
// addresses blocked for failed logins (NewGuard); and each replica's
// account of what its spool holds (Roster), for the status page and the
// queue command. Each replica keeps its own spool and delivers only what
// it holds: messages are never shared.
//
// A connection slot is a lease in Redis with a short TTL that its holder
// renews: a replica killed with SIGKILL loses its leases within the TTL,
// never for good. When Redis cannot be reached, the limiter falls back
// to conservative local limits (one connection per mailbox, and this
// replica's share of the per-minute and daily limits), says so, and goes
// back to the shared limits when Redis returns, counting in Redis what it
// holds and did meanwhile, so that no limit is passed across the change.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/internal/redis"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// Timing; tests shorten them.
var (
	// LeaseTTL is how long a connection slot outlives its holder.
	LeaseTTL = 15 * time.Second
	// pollEvery is how often a waiter for a slot or a start asks again.
	pollEvery = 100 * time.Millisecond
	// probeEvery is how often a fallen-back limiter tries Redis.
	probeEvery = 2 * time.Second
	// opTimeout bounds one Redis call: past it, Redis is down.
	opTimeout = time.Second
)

// Observer is told when the limiter falls back to local limits and back.
type Observer interface {
	SharedLimits(ok bool)
}

// Options configure a Limiter.
type Options struct {
	Client   *redis.Client
	Prefix   string // key prefix, e.g. "smtpbridge:"
	Instance string // this replica's name, in lease IDs
	Limits   map[string]upstream.Limits
	Log      zerolog.Logger
	Observer Observer
	// LeaseTTL overrides the package's LeaseTTL when set.
	LeaseTTL time.Duration
}

// Limiter is an upstream.Limiter shared through Redis.
type Limiter struct {
	rdb      *redis.Client
	prefix   string
	instance string
	log      zerolog.Logger
	obs      Observer
	window   time.Duration // a minute; tests shorten it
	day      time.Duration
	ttl      time.Duration // a lease's

	mu       sync.Mutex
	limits   map[string]upstream.Limits
	local    *upstream.Local // the fallback
	shared   bool
	fellAt   time.Time
	leases   map[*lease]struct{} // held, for renewal and adoption
	starts   map[upstream.Mailbox][]time.Time
	rcpts    map[upstream.Mailbox]int // recipients counted locally while down
	replicas int                      // live replicas last seen, for the fallback's share
	seen     map[upstream.Mailbox]bool
	// known is, per mailbox, what the last shared submission saw of the
	// replicas' starts and recipients: the fallback starts from it.
	known map[upstream.Mailbox]known
	// epochs are, per mailbox, the epoch of its keys in Redis this
	// replica last saw: another means Redis lost them (restoreWindow).
	epochs map[upstream.Mailbox]string
	// graceUntil: after Redis returns, until the other replicas have
	// had the time to count their fallback slots there, each of them is
	// assumed to hold one.
	graceUntil time.Time
	stop       chan struct{}
	done       chan struct{}
	closing    sync.Once
}

var _ upstream.Limiter = (*Limiter)(nil)

// New returns a limiter and starts its renewals; Close stops them.
func New(o Options) *Limiter {
	l := &Limiter{rdb: o.Client, prefix: o.Prefix, instance: o.Instance, log: o.Log, obs: o.Observer,
		window: upstream.RateWindow, day: 24 * time.Hour, limits: o.Limits, shared: true,
		leases: map[*lease]struct{}{}, starts: map[upstream.Mailbox][]time.Time{}, rcpts: map[upstream.Mailbox]int{},
		replicas: 1, seen: map[upstream.Mailbox]bool{}, known: map[upstream.Mailbox]known{}, epochs: map[upstream.Mailbox]string{},
		stop: make(chan struct{}), done: make(chan struct{})}
	l.local = upstream.NewLocal(fallbackLimits(o.Limits, 1))
	l.ttl = LeaseTTL
	if o.LeaseTTL > 0 {
		l.ttl = o.LeaseTTL
	}
	if l.obs != nil {
		l.obs.SharedLimits(true)
	}
	// Count the replicas now: the fallback's shares depend on it. A
	// replica that starts with Redis down counts itself alone.
	l.renew()
	go l.run()
	return l
}

// SetWindows shortens the per-minute and daily windows (tests).
func (l *Limiter) SetWindows(minute, day time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.window, l.day = minute, day
}

// Shared says whether the limits are shared now (Redis reachable).
func (l *Limiter) Shared() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.shared
}

// SetLimits replaces the limits (a config reload).
func (l *Limiter) SetLimits(limits map[string]upstream.Limits) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.limits = limits
	l.local.SetLimits(fallbackLimits(limits, l.replicasLocked()))
}

// replicasLocked is how many replicas share the limits, for the
// fallback's share: those the last heartbeat counted, and at least as
// many as this replica saw starts from in the mailboxes' windows. Just
// after a start the heartbeat may not yet count the others (each counts
// every few seconds), while their starts are already in the windows a
// submission read. l.mu is held.
func (l *Limiter) replicasLocked() int {
	seen := map[string]bool{}
	for _, k := range l.known {
		for _, s := range k.starts {
			if i := strings.LastIndexByte(s.id, '/'); i > 0 {
				seen[s.id[:i]] = true
			}
		}
	}
	return max(l.replicas, len(seen))
}

// fallbackLimits are a replica's share while Redis is down: one
// connection per mailbox, and the per-minute and daily limits divided by
// the replicas last seen (at least 1 each).
func fallbackLimits(limits map[string]upstream.Limits, replicas int) map[string]upstream.Limits {
	out := map[string]upstream.Limits{}
	replicas = max(replicas, 1)
	for t, lim := range limits {
		f := upstream.Limits{Connections: 1}
		if lim.PerMinute > 0 {
			f.PerMinute = max(1, lim.PerMinute/replicas)
		}
		if lim.RecipientsPerDay > 0 {
			f.RecipientsPerDay = max(1, lim.RecipientsPerDay/replicas)
		}
		out[t] = f
	}
	return out
}

// Close stops the renewals; leases still held expire within the TTL.
func (l *Limiter) Close() {
	l.closing.Do(func() { close(l.stop) })
	<-l.done
}

func (l *Limiter) key(kind string, mb upstream.Mailbox) string {
	return l.prefix + kind + ":{" + mb.Tenant + "/" + mb.Address + "}"
}

func (l *Limiter) limitsOf(mb upstream.Mailbox) (upstream.Limits, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.limits[mb.Tenant]
	if !ok || lim.Connections <= 0 {
		return upstream.Limits{}, fmt.Errorf("no connection limit for tenant %q", mb.Tenant)
	}
	return lim, nil
}

// fail notes that Redis failed: the limiter falls back.
func (l *Limiter) fail(err error) {
	l.mu.Lock()
	if !l.shared {
		l.mu.Unlock()
		return
	}
	l.shared, l.fellAt = false, time.Now()
	replicas := l.replicasLocked()
	l.local.SetLimits(fallbackLimits(l.limits, replicas))
	// The fallback counts what the replicas did before Redis went, as
	// far as this one saw: each replica's share is then what is left of
	// the limit after what it saw, so that together they stay within it.
	for mb, k := range l.known {
		l.local.Seed(mb, k.times(), k.used)
	}
	var shared []*lease
	for le := range l.leases {
		if le.inner == nil {
			shared = append(shared, le)
		}
	}
	l.mu.Unlock()
	// The connections opened under the shared limits close: idle ones
	// now, busy ones when their submission ends. Until they have, the
	// fallback opens none for their mailbox.
	for _, le := range shared {
		le.wantedOnce.Do(func() { close(le.wanted) })
		le.mu.Lock()
		at := le.expires
		le.mu.Unlock()
		time.AfterFunc(time.Until(at), le.lapse)
	}
	l.log.Warn().Err(err).Int("replicas", replicas).
		Msg("Redis is out of reach: each mailbox's limits are now this replica's conservative share (1 connection, 1/n of the per-minute and daily limits) until it returns")
	if l.obs != nil {
		l.obs.SharedLimits(false)
	}
}

func newID(instance string) string {
	b := make([]byte, 8)
	rand.Read(b)
	return instance + "/" + hex.EncodeToString(b)
}

func ctxOp(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
}

// Connect implements upstream.Limiter.
func (l *Limiter) Connect(ctx context.Context, mb upstream.Mailbox) (upstream.Lease, error) {
	waiting := "" // this caller's entry among the mailbox's waiters
	for {
		lim, err := l.limitsOf(mb)
		if err != nil {
			return nil, err
		}
		if !l.Shared() {
			le, err := l.localLease(ctx, mb)
			if errors.Is(err, errSharedAgain) {
				continue
			}
			return le, err
		}
		le := &lease{l: l, mb: mb, id: newID(l.instance), wanted: make(chan struct{}), gone: make(chan struct{}),
			expires: time.Now().Add(l.ttl)}
		limit := lim.Connections
		l.mu.Lock()
		if time.Now().Before(l.graceUntil) {
			limit -= l.replicasLocked() - 1
		}
		l.mu.Unlock()
		octx, cancel := ctxOp(ctx)
		got, err := connectScript.Run(octx, l.rdb, []string{l.key("conn", mb)}, l.ttl.Milliseconds(), limit, le.id).Int()
		cancel()
		if err != nil {
			l.fail(err)
			continue
		}
		if got == 1 {
			l.mu.Lock()
			l.leases[le] = struct{}{}
			l.mu.Unlock()
			if waiting != "" {
				octx, cancel := ctxOp(ctx)
				l.rdb.Do(octx, "ZREM", l.key("want", mb), waiting)
				cancel()
			}
			return le, nil
		}
		// Say that this replica waits, so that the others' idle
		// connections give their slots up.
		if waiting == "" {
			waiting = le.id
		}
		octx, cancel = ctxOp(ctx)
		l.rdb.Do(octx, "ZADD", l.key("want", mb), float64(time.Now().Add(l.ttl).UnixMilli()), waiting)
		l.rdb.Do(octx, "PEXPIRE", l.key("want", mb), (2 * l.ttl).Milliseconds())
		cancel()
		select {
		case <-time.After(pollEvery):
		case <-ctx.Done():
			octx, cancel := ctxOp(ctx)
			l.rdb.Do(octx, "ZREM", l.key("want", mb), waiting)
			cancel()
			return nil, fmt.Errorf("waiting for a free connection to Exchange (limit %d per mailbox, shared by the replicas): %w", lim.Connections, context.Cause(ctx))
		}
	}
}

// localLease is a slot of the fallback, counted in Redis when it returns.
func (l *Limiter) localLease(ctx context.Context, mb upstream.Mailbox) (upstream.Lease, error) {
	// Every replica's leases were last renewed before Redis went: by a
	// TTL (and a renewal period for the replicas that noticed later)
	// after this one noticed, they have all lapsed and their
	// connections closed. Only then do the fallback's slots open.
	l.mu.Lock()
	safe := l.fellAt.Add(l.ttl + l.ttl/3)
	l.mu.Unlock()
	for time.Now().Before(safe) || l.sharedHeld(mb) {
		select {
		case <-time.After(pollEvery):
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the slots taken under the shared limits to lapse: %w", context.Cause(ctx))
		}
		if l.Shared() {
			return nil, errSharedAgain
		}
	}
	inner, err := l.local.Connect(ctx, mb)
	if err != nil {
		return nil, err
	}
	le := &lease{l: l, mb: mb, id: newID(l.instance), inner: inner, wanted: make(chan struct{}), gone: make(chan struct{})}
	l.mu.Lock()
	l.leases[le] = struct{}{}
	l.mu.Unlock()
	return le, nil
}

// sharedHeld says whether this replica still holds a slot of mb taken
// under the shared limits.
func (l *Limiter) sharedHeld(mb upstream.Mailbox) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for le := range l.leases {
		if le.inner == nil && le.mb == mb {
			return true
		}
	}
	return false
}

// Submit implements upstream.Limiter.
func (l *Limiter) Submit(ctx context.Context, mb upstream.Mailbox, rcpts int) (func(int), error) {
	l.mu.Lock()
	l.seen[mb] = true
	l.mu.Unlock()
	for {
		lim, err := l.limitsOf(mb)
		if err != nil {
			return nil, err
		}
		if !l.Shared() {
			done, err := l.local.Submit(ctx, mb, rcpts)
			if err != nil {
				return nil, err
			}
			now := time.Now()
			l.mu.Lock()
			l.starts[mb] = append(l.starts[mb], now)
			l.rcpts[mb] += rcpts
			l.mu.Unlock()
			return func(accepted int) {
				done(accepted)
				l.mu.Lock()
				l.rcpts[mb] += accepted - rcpts
				l.mu.Unlock()
			}, nil
		}
		l.mu.Lock()
		window, day := l.window, l.day
		l.mu.Unlock()
		unit := max(day/upstream.DayBuckets, time.Millisecond)
		octx, cancel := ctxOp(ctx)
		l.mu.Lock()
		epoch := l.epochs[mb]
		l.mu.Unlock()
		raw, err := submitScript.Run(octx, l.rdb, []string{l.key("rate", mb), l.key("rcpt", mb), l.key("epoch", mb)},
			lim.PerMinute, window.Milliseconds(), lim.RecipientsPerDay, upstream.DayBuckets, unit.Milliseconds(), rcpts, newID(l.instance),
			epoch, newID(l.instance)).Slice()
		cancel()
		if err == nil && len(raw) == 2 {
			if code, _ := raw[0].(int64); code == 2 {
				// Redis forgot the mailbox's window since this replica
				// last asked (it restarted empty, and the new
				// connection hid it): the starts it knows go back first.
				l.restoreWindow(ctx, mb, fmt.Sprint(raw[1]))
				continue
			}
		}
		var res []int64
		var starts []start
		if err == nil {
			res, starts, err = parseSubmit(raw)
		}
		if err != nil {
			l.fail(err)
			continue
		}
		switch res[0] {
		case 1:
			bucket := res[1]
			l.saw(mb, res[2], res[3], starts)
			var once sync.Once
			return func(accepted int) {
				once.Do(func() {
					if accepted == rcpts {
						return
					}
					octx, cancel := ctxOp(ctx)
					defer cancel()
					if err := l.rdb.Do(octx, "HINCRBY", l.key("rcpt", mb), strconv.FormatInt(bucket, 10), int64(accepted-rcpts)).Err(); err != nil {
						l.fail(err)
					}
				})
			}, nil
		case -1:
			return nil, upstream.QuotaError(mb, lim.RecipientsPerDay, int(res[2]), time.UnixMilli(res[1]))
		}
		wait := time.Duration(res[1]) * time.Millisecond
		select {
		case <-time.After(min(max(wait, time.Millisecond), time.Second)):
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting to submit within %d messages a minute per mailbox, shared by the replicas: %w", lim.PerMinute, context.Cause(ctx))
		}
	}
}

// lease is a connection slot: in Redis, renewed until released, or of
// the fallback (inner), counted in Redis once it returns.
type lease struct {
	l     *Limiter
	mb    upstream.Mailbox
	id    string
	inner upstream.Lease // the fallback's slot, while Redis is down

	mu       sync.Mutex
	lost     bool // the lease expired in Redis: its slot may be another's
	over     bool // the shared count is above the limit and this one is of the surplus
	released bool
	// wanted is closed when another replica waits for one of the
	// mailbox's slots: an idle connection then closes, and a busy one
	// after its submission, so that an idle replica does not keep the
	// mailbox from the others.
	wanted     chan struct{}
	wantedOnce sync.Once
	// expires is when Redis drops the lease unless renewed; gone is
	// closed then, if it was not renewed: its connection must close,
	// even mid-submission, since another replica may have its slot.
	expires  time.Time
	gone     chan struct{}
	goneOnce sync.Once
}

// Gone is closed when the lease lapsed in Redis (Redis out of reach past
// its TTL): its connection closes at once, even mid-submission.
func (le *lease) Gone() <-chan struct{} { return le.gone }

// lapse marks the lease gone, unless it was renewed (or counted in Redis
// again) since.
func (le *lease) lapse() {
	le.mu.Lock()
	renewed := time.Now().Before(le.expires)
	le.mu.Unlock()
	if !renewed {
		le.goneOnce.Do(func() { close(le.gone) })
	}
}

// Wanted is closed when another replica waits for a slot of the mailbox.
func (le *lease) Wanted() <-chan struct{} { return le.wanted }

// Held implements upstream.Lease.
func (le *lease) Held() bool {
	le.mu.Lock()
	inner, lost, over := le.inner, le.lost, le.over
	le.mu.Unlock()
	if inner != nil {
		return inner.Held() && le.l.Shared() == false
	}
	select {
	case <-le.wanted:
		return false
	default:
	}
	return !lost && !over
}

// Release implements upstream.Lease.
func (le *lease) Release() {
	le.mu.Lock()
	if le.released {
		le.mu.Unlock()
		return
	}
	le.released = true
	inner := le.inner
	le.mu.Unlock()
	le.l.mu.Lock()
	delete(le.l.leases, le)
	le.l.mu.Unlock()
	if inner != nil {
		inner.Release()
	}
	ctx, cancel := ctxOp(context.Background())
	defer cancel()
	// An adopted fallback slot is in Redis too; one never adopted is not,
	// and ZREM of a missing member is harmless.
	if err := le.l.rdb.Do(ctx, "ZREM", le.l.key("conn", le.mb), le.id).Err(); err != nil && le.l.Shared() {
		le.l.fail(err)
	}
}

// run renews the leases, counts the replicas, and, while fallen back,
// tries Redis and goes back to shared limits when it answers.
func (l *Limiter) run() {
	defer close(l.done)
	t := time.NewTicker(min(l.ttl/3, probeEvery))
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if l.Shared() {
			l.renew()
		} else {
			l.probe()
		}
	}
}

// renew extends every Redis lease, and notes those lost or over a
// lowered limit; it heartbeats this replica.
func (l *Limiter) renew() {
	l.mu.Lock()
	var leases []*lease
	for le := range l.leases {
		if le.inner == nil {
			leases = append(leases, le)
		}
	}
	l.mu.Unlock()
	ctx, cancel := ctxOp(context.Background())
	defer cancel()
	n, err := heartbeatScript.Run(ctx, l.rdb, []string{l.prefix + "instances"}, l.instance, (3 * l.ttl).Milliseconds()).Int()
	if err != nil {
		l.fail(err)
		return
	}
	l.mu.Lock()
	l.replicas = max(n, 1)
	l.mu.Unlock()
	l.checkEpochs(ctx)
	if !l.Shared() {
		return
	}
	for _, le := range leases {
		lim, err := l.limitsOf(le.mb)
		if err != nil {
			continue
		}
		res, err := renewScript.Run(ctx, l.rdb, []string{l.key("conn", le.mb), l.key("want", le.mb)}, l.ttl.Milliseconds(), le.id, lim.Connections, l.instance+"/").Int64Slice()
		if err != nil {
			l.fail(err)
			return
		}
		le.mu.Lock()
		le.lost = res[0] == 0
		le.over = res[0] == 2
		if !le.lost {
			le.expires = time.Now().Add(l.ttl)
		}
		le.mu.Unlock()
		if res[0] == 0 {
			le.lapse()
		}
		if len(res) > 1 && res[1] > 0 {
			le.wantedOnce.Do(func() { close(le.wanted) })
		}
	}
}

// probe tries Redis; when it answers, what the fallback holds and did is
// counted there, and the limits are shared again.
func (l *Limiter) probe() {
	ctx, cancel := ctxOp(context.Background())
	defer cancel()
	if err := l.rdb.Do(ctx, "PING").Err(); err != nil {
		return
	}
	l.mu.Lock()
	var local, held []*lease
	for le := range l.leases {
		if le.inner != nil {
			local = append(local, le)
		} else {
			held = append(held, le)
		}
	}
	starts, rcpts := l.starts, l.rcpts
	l.starts, l.rcpts = map[upstream.Mailbox][]time.Time{}, map[upstream.Mailbox]int{}
	window, day := l.window, l.day
	l.mu.Unlock()
	unit := max(day/upstream.DayBuckets, time.Millisecond)
	// Adopt: the fallback's slots and starts count in Redis from now,
	// so that the shared limits see them.
	for _, le := range local {
		if err := l.rdb.Do(ctx, "ZADD", l.key("conn", le.mb), float64(time.Now().Add(l.ttl).UnixMilli()), le.id).Err(); err != nil {
			return
		}
	}
	// The slots taken under the shared limits and still open: a Redis
	// that restarted has forgotten them.
	for _, le := range held {
		select {
		case <-le.gone:
			continue // lapsed: its connection is closed
		default:
		}
		if err := l.rdb.Do(ctx, "ZADD", l.key("conn", le.mb), float64(time.Now().Add(l.ttl).UnixMilli()), le.id).Err(); err != nil {
			return
		}
		le.mu.Lock()
		le.expires = time.Now().Add(l.ttl)
		le.mu.Unlock()
	}
	for mb, ts := range starts {
		for _, at := range ts {
			if time.Since(at) < window {
				l.rdb.Do(ctx, "ZADD", l.key("rate", mb), float64(at.UnixMilli()), newID(l.instance))
			}
		}
	}
	for mb, n := range rcpts {
		if n > 0 {
			l.rdb.Do(ctx, "HINCRBY", l.key("rcpt", mb), strconv.FormatInt(time.Now().UnixMilli()/unit.Milliseconds(), 10), int64(n))
		}
	}
	for _, le := range local {
		// From now on the slot is renewed in Redis like any other; the
		// fallback's slot goes with it when it is released.
		le.mu.Lock()
		inner := le.inner
		le.inner = nil
		le.mu.Unlock()
		inner.Release()
	}
	l.mu.Lock()
	l.shared = true
	l.graceUntil = time.Now().Add(2 * probeEvery)
	down := time.Since(l.fellAt).Round(time.Second)
	l.mu.Unlock()
	l.log.Info().Dur("down", down).Msg("Redis answers again: the mailboxes' limits are shared by the replicas again")
	if l.obs != nil {
		l.obs.SharedLimits(true)
	}
	// A Redis that restarted empty gets the minute back now.
	l.checkEpochs(ctx)
}

// restoreWindow adds back to Redis the mailbox's starts in the window as
// this replica last saw them (every replica's, a dead one's too), under
// their own members, so that a Redis that restarted empty does not let
// the minute pass its limit; then it takes epoch as the keys' new one.
// Where Redis kept them, adding them again changes nothing.
func (l *Limiter) restoreWindow(ctx context.Context, mb upstream.Mailbox, epoch string) {
	l.mu.Lock()
	k, window := l.known[mb], l.window
	l.epochs[mb] = epoch
	l.mu.Unlock()
	octx, cancel := ctxOp(ctx)
	defer cancel()
	n := 0
	for _, st := range k.starts {
		if time.Since(st.at) < window {
			l.rdb.Do(octx, "ZADD", l.key("rate", mb), float64(st.redisMs), st.id)
			n++
		}
	}
	if n > 0 {
		l.rdb.Do(octx, "PEXPIRE", l.key("rate", mb), (2 * window).Milliseconds())
		l.log.Warn().Str("tenant", mb.Tenant).Str("mailbox", mb.Address).Int("starts", n).
			Msg("Redis lost the mailbox's rate window (a restart?): the starts this replica saw in it are counted there again")
	}
}

// checkEpochs looks, at every renewal, at the window of each mailbox
// this replica saw busy within the last window. Where Redis still has its
// epoch, the replica takes the window's starts as what it knows (so that
// it knows the other replicas' starts of the last second, not only those
// before its own last submission); where Redis lost it (a restart,
// empty), it puts back what it knew. Either way a Redis restart gets the
// minute back within a renewal, whichever replica made the starts, as
// long as that replica lived until then.
func (l *Limiter) checkEpochs(ctx context.Context) {
	l.mu.Lock()
	window := l.window
	var mbs []upstream.Mailbox
	var mine []string
	for mb, k := range l.known {
		if time.Since(k.seen) < window {
			mbs = append(mbs, mb)
			mine = append(mine, l.epochs[mb])
		}
	}
	l.mu.Unlock()
	if len(mbs) == 0 {
		return
	}
	// One round trip for all of them; a script only where it changed.
	cmds := [][]any{{"TIME"}}
	for _, mb := range mbs {
		cmds = append(cmds, []any{"GET", l.key("epoch", mb)}, []any{"ZRANGE", l.key("rate", mb), 0, -1, "WITHSCORES"})
	}
	replies := l.rdb.Pipeline(ctx, cmds...)
	now, err := redisTime(replies[0])
	for _, r := range replies[1:] {
		if err == nil && !errors.Is(r.Err(), redis.Nil) {
			err = r.Err()
		}
	}
	if err != nil {
		l.fail(err)
		return
	}
	for i, mb := range mbs {
		get, window := replies[1+2*i], replies[2+2*i]
		if cur, err := get.Text(); err == nil && cur == mine[i] {
			starts, err := withScores(window)
			if err != nil {
				l.fail(err)
				return
			}
			l.refresh(mb, now, starts)
			continue
		}
		epoch, err := epochScript.Run(ctx, l.rdb, []string{l.key("epoch", mb)}, newID(l.instance)).Text()
		if err != nil {
			l.fail(err)
			return
		}
		if epoch != mine[i] {
			l.restoreWindow(ctx, mb, epoch)
		}
	}
}

// refresh takes the mailbox's window as Redis has it now (its clock
// redisNow) as what this replica knows; a window with starts keeps the
// mailbox among those checked.
func (l *Limiter) refresh(mb upstream.Mailbox, redisNow time.Time, starts []start) {
	local := time.Now()
	placeStarts(starts, redisNow.UnixMilli(), local)
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.known[mb]
	k.starts = starts
	if len(starts) > 0 {
		k.seen = local
	}
	l.known[mb] = k
}

// redisTime reads TIME: seconds and microseconds.
func redisTime(r *redis.Reply) (time.Time, error) {
	v, err := r.Slice()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis TIME: %w", err)
	}
	if len(v) == 2 {
		s, _ := v[0].(string)
		us, _ := v[1].(string)
		sec, err1 := strconv.ParseInt(s, 10, 64)
		usec, err2 := strconv.ParseInt(us, 10, 64)
		if err1 == nil && err2 == nil {
			return time.Unix(sec, usec*1000), nil
		}
	}
	return time.Time{}, fmt.Errorf("redis TIME: %d elements, not seconds and microseconds", len(v))
}

// withScores reads a rate window (ZRANGE … WITHSCORES): its starts'
// members and times on Redis's clock.
func withScores(r *redis.Reply) ([]start, error) {
	v, err := r.Slice()
	if err != nil {
		return nil, fmt.Errorf("read a rate window: %w", err)
	}
	if len(v)%2 != 0 {
		return nil, fmt.Errorf("read a rate window: %d elements, not pairs", len(v))
	}
	starts := make([]start, 0, len(v)/2)
	for i := 0; i < len(v); i += 2 {
		id, ok := v[i].(string)
		score, _ := v[i+1].(string)
		ms, err := strconv.ParseFloat(score, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("read a rate window: a member %q with the score %q", id, score)
		}
		starts = append(starts, start{id: id, redisMs: int64(ms)})
	}
	return starts, nil
}

// known is what a shared submission saw of a mailbox.
type known struct {
	starts []start   // in the window, every replica's
	used   int       // recipients in the day
	seen   time.Time // when
}

// start is a submission start in Redis's rate window: its member there,
// its time on Redis's clock, and on this replica's.
type start struct {
	id      string
	redisMs int64
	at      time.Time
}

// parseSubmit reads the submit script's answer: its numbers, and the
// window's starts when it said go.
func parseSubmit(raw []any) ([]int64, []start, error) {
	num := func(v any) (int64, bool) {
		n, ok := v.(int64)
		return n, ok
	}
	var res []int64
	for i, v := range raw {
		if i >= 4 && len(res) > 0 && res[0] == 1 {
			break
		}
		n, ok := num(v)
		if !ok {
			return nil, nil, fmt.Errorf("redis: unexpected answer %v", raw)
		}
		res = append(res, n)
	}
	if len(res) == 0 {
		return nil, nil, fmt.Errorf("redis: empty answer")
	}
	var starts []start
	if res[0] == 1 {
		for i := 4; i+1 < len(raw); i += 2 {
			id, ok1 := raw[i].(string)
			ms, ok2 := num(raw[i+1])
			if !ok1 || !ok2 {
				return nil, nil, fmt.Errorf("redis: unexpected start %v %v", raw[i], raw[i+1])
			}
			starts = append(starts, start{id: id, redisMs: ms})
		}
	}
	return res, starts, nil
}

// saw notes what a shared submission saw: Redis's clock (ms), the day's
// recipients, and the window's starts.
func (l *Limiter) saw(mb upstream.Mailbox, redisNow, used int64, starts []start) {
	now := time.Now()
	placeStarts(starts, redisNow, now)
	l.mu.Lock()
	l.known[mb] = known{used: int(used), starts: starts, seen: now}
	l.mu.Unlock()
}

// placeStarts sets each start's time on this replica's clock, now, from
// its time on Redis's, whose clock said redisNowMs then.
func placeStarts(starts []start, redisNowMs int64, now time.Time) {
	for i := range starts {
		starts[i].at = now.Add(-time.Duration(redisNowMs-starts[i].redisMs) * time.Millisecond)
	}
}

func (k known) times() []time.Time {
	out := make([]time.Time, len(k.starts))
	for i, s := range k.starts {
		out[i] = s.at
	}
	return out
}

// Scripts run atomically in Redis, on its clock.
var (
	// connect: KEYS[1] the mailbox's leases; ARGV ttl, limit, id.
	connectScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 4 * tonumber(ARGV[1]))
  return 1
end
return 0`)
	// renew: KEYS[1] the leases, KEYS[2] the waiters; ARGV ttl, id,
	// limit, this replica's ID prefix. {0}: lost; {2}: over the limit (a
	// lowered one), to close; {1}: held; and the callers of the other
	// replicas waiting for a slot.
	renewScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {0, 0} end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 4 * tonumber(ARGV[1]))
local n = redis.call('ZCARD', KEYS[1])
local waiting = 0
for _, w in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(w, 1, #ARGV[4]) ~= ARGV[4] then waiting = waiting + 1 end
end
if n > tonumber(ARGV[3]) and redis.call('ZRANK', KEYS[1], ARGV[2]) >= tonumber(ARGV[3]) then return {2, waiting} end
return {1, waiting}`)
	// submit: KEYS[1] the starts, KEYS[2] the recipients per time unit,
	// KEYS[3] the mailbox's epoch; ARGV perMinute, windowMs, perDay,
	// dayUnits, unitMs, rcpts, id, the epoch this replica last saw, a new
	// epoch should there be none. {2, epoch}: Redis lost the mailbox's
	// keys since this replica last saw them (a restart, empty): it adds
	// back the window's starts it knows, then asks again.
	// {1, unit, nowMs, used, id, startMs, id, startMs...}: go, with the
	// recipients of the day and the starts of the window, this one's
	// included; {0, waitMs}: wait; {-1, retryAtMs, used}: the day's quota
	// is full.
	submitScript = redis.NewScript(`
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[9]
  redis.call('SET', KEYS[3], epoch)
end
if epoch ~= ARGV[8] then return {2, epoch} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local perMinute, window, perDay = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local units, unitMs, rcpts = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local unit = math.floor(now / unitMs)
local used = 0
local buckets = {}
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  local u, c = tonumber(h[i]), tonumber(h[i + 1])
  if u <= unit - units then
    redis.call('HDEL', KEYS[2], h[i])
  else
    used = used + c
    table.insert(buckets, {u, c})
  end
end
if perDay > 0 and used > 0 and used + rcpts > perDay then
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  local need, freed = used + rcpts - perDay, 0
  for _, b in ipairs(buckets) do
    freed = freed + b[2]
    if freed >= need then return {-1, (b[1] + units) * unitMs, used} end
  end
  return {-1, now + units * unitMs, used}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if perMinute > 0 then
  if redis.call('ZCARD', KEYS[1]) >= perMinute then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, tonumber(oldest[2]) + window - now}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[7])
  redis.call('PEXPIRE', KEYS[1], 2 * window)
end
redis.call('HINCRBY', KEYS[2], unit, rcpts)
redis.call('PEXPIRE', KEYS[2], (units + 1) * unitMs)
local out = {1, unit, now, used + rcpts}
if perMinute > 0 then
  local s = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #s, 2 do
    table.insert(out, s[i])
    table.insert(out, tonumber(s[i + 1]))
  end
end
return out`)
	// epoch: KEYS[1] the mailbox's epoch; ARGV a new one should there be
	// none. Returns the epoch.
	epochScript = redis.NewScript(`
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return epoch`)
	// heartbeat: KEYS[1] the replicas; ARGV instance, ttl. Returns the
	// replicas alive.
	heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])`)
)

// errSharedAgain: Redis returned while a caller waited for a fallback
// slot; it asks Redis instead.
var errSharedAgain = errors.New("the limits are shared again")
