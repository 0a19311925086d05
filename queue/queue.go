// Package queue delivers spooled messages: the forward in
// store-and-forward. A session hands it a message (Spool); the queue writes
// it to the spool, makes the first attempt at once, and retries temporary
// failures with exponential backoff until Exchange takes the message or it
// outlives max_age. Messages that fail for good become dead letters, with
// a delivery status notification to bounce_to if one is configured.
//
// The queue keeps each mailbox within Exchange Online's limits: no more
// attempts in flight than the mailbox's connection limit, and after a
// throttling reply (432 4.3.2, 421, 451) or an unreachable Exchange it
// pauses that mailbox instead of trying every queued message.
//
// Every attempt's next-attempt time is on disk before the attempt starts,
// so a crash neither loses a message nor makes the restart hammer
// Exchange with it.
package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/spool"
)

// Options configure a Queue.
type Options struct {
	Spool     *spool.Spool
	Deliverer bridge.Deliverer
	// RetryInitial, RetryMax bound the backoff; MaxAge is when a message
	// is given up. Zero values take the config package's defaults.
	RetryInitial time.Duration
	RetryMax     time.Duration
	MaxAge       time.Duration
	// Concurrency is the most attempts in flight for one mailbox of a
	// tenant (its connection limit); 0 or missing means 3.
	Concurrency map[string]int
	// BounceTo returns where a device's dead letters are reported; ""
	// for nowhere.
	BounceTo func(device string) string
	// Hostname names the bridge in delivery status notifications.
	Hostname string
	Log      zerolog.Logger
	// Events is told about every message event (audit log, metrics,
	// status page); nil means nobody listens.
	Events audit.Observer
}

// Queue is the delivery queue over a spool.
type Queue struct {
	o   Options // fixed at New; the reloadable part is in cur
	cur atomic.Pointer[Options]
	ctx context.Context // attempts run under it
	// cancel aborts attempts still running when Close's grace ends.
	cancel context.CancelFunc
	wake   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup // attempts in flight

	mu      sync.Mutex
	entries map[string]*entry
	lanes   map[laneKey]*lane
	started bool
	closed  bool
}

// entry is a queued message as the runner sees it.
type entry struct {
	meta spool.Meta
	due  time.Time // when the runner may start the next attempt
	// paid means the spool already counts the next attempt (Attempts and
	// NextAttempt written at commit), so it need not be written again.
	paid    bool
	running bool
	waiter  chan result // a hybrid session waiting for the first attempt
}

type result struct {
	receipt bridge.Receipt
	err     error
}

type laneKey struct{ tenant, mailbox string }

// lane is one mailbox's share of the runner.
type lane struct {
	active      int
	max         int
	pausedUntil time.Time
	pauses      int // consecutive throttled or failed attempts
}

// New loads the spool's queued messages and returns a queue; Start runs
// it.
func New(o Options) (*Queue, error) {
	if o.Events == nil {
		o.Events = audit.Nop{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{o: o, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
		entries: map[string]*entry{}, lanes: map[laneKey]*lane{}}
	q.cur.Store(normalize(o))
	metas, err := o.Spool.List()
	if err != nil {
		// Unreadable metadata stays on disk for an admin; the rest runs.
		o.Log.Error().Err(err).Msg("some queued messages could not be read; they stay in the spool untouched")
	}
	for _, m := range metas {
		q.entries[m.ID] = &entry{meta: m, due: m.NextAttempt}
	}
	if len(metas) > 0 {
		o.Log.Info().Int("messages", len(metas)).Msg("queue reloaded from the spool")
	}
	return q, nil
}

func normalize(o Options) *Options {
	if o.RetryInitial <= 0 {
		o.RetryInitial = time.Minute
	}
	if o.RetryMax < o.RetryInitial {
		o.RetryMax = max(30*time.Minute, o.RetryInitial)
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 48 * time.Hour
	}
	if o.BounceTo == nil {
		o.BounceTo = func(string) string { return "" }
	}
	return &o
}

// opts returns the current reloadable settings.
func (q *Queue) opts() *Options { return q.cur.Load() }

// Reconfigure takes the retry schedule, max_age, per-tenant concurrency
// and bounce addresses from o (its other fields are ignored). Messages
// already deferred keep their next attempt; later ones use the new
// schedule.
func (q *Queue) Reconfigure(o Options) {
	cur := *q.opts()
	cur.RetryInitial, cur.RetryMax, cur.MaxAge = o.RetryInitial, o.RetryMax, o.MaxAge
	cur.Concurrency, cur.BounceTo = o.Concurrency, o.BounceTo
	q.cur.Store(normalize(cur))
	q.mu.Lock()
	for k, l := range q.lanes {
		l.max = concurrency(q.opts(), k.tenant)
	}
	q.mu.Unlock()
	q.kick()
}

func concurrency(o *Options, tenant string) int {
	if n := o.Concurrency[tenant]; n > 0 {
		return n
	}
	return 3
}

// Start runs the queue until Close.
func (q *Queue) Start() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.started && !q.closed {
		q.started = true
		go q.run()
	}
}

// Close stops starting attempts, gives those in flight up to grace to
// finish, then aborts the rest. Queued messages stay on disk.
func (q *Queue) Close(grace time.Duration) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	started := q.started
	q.mu.Unlock()
	close(q.stop)
	if started {
		<-q.done
	}
	finished := make(chan struct{})
	go func() { q.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(grace):
		q.cancel()
		<-finished
	}
	q.cancel()
}

func (q *Queue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue) run() {
	defer close(q.done)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		next := q.dispatch(time.Now())
		t.Reset(next)
		select {
		case <-q.stop:
			return
		case <-q.wake:
		case <-t.C:
		}
	}
}

// idleWait is how long the runner sleeps with nothing due.
const idleWait = time.Minute

// dispatch starts every attempt that is due and allowed, and returns how
// long until the next one may be.
func (q *Queue) dispatch(now time.Time) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return idleWait
	}
	next := now.Add(idleWait)
	var ready []*entry
	for _, e := range q.entries {
		if e.running {
			continue
		}
		due := e.due
		if l := q.lanes[keyOf(e)]; e.waiter == nil && l != nil && l.pausedUntil.After(due) {
			due = l.pausedUntil
		}
		if e.waiter != nil || !due.After(now) {
			ready = append(ready, e)
		} else if due.Before(next) {
			next = due
		}
	}
	// Sessions waiting first, then the longest-due messages.
	slices.SortFunc(ready, func(a, b *entry) int {
		if (a.waiter != nil) != (b.waiter != nil) {
			if a.waiter != nil {
				return -1
			}
			return 1
		}
		if c := a.due.Compare(b.due); c != 0 {
			return c
		}
		return strings.Compare(a.meta.ID, b.meta.ID)
	})
	for _, e := range ready {
		l := q.lane(keyOf(e), e.meta.Tenant)
		if l.active >= l.max {
			continue
		}
		l.active++
		e.running = true
		q.wg.Add(1)
		go q.attempt(e, l)
	}
	return max(next.Sub(now), time.Millisecond)
}

func keyOf(e *entry) laneKey {
	return laneKey{e.meta.Tenant, strings.ToLower(e.meta.Mailbox)}
}

func (q *Queue) lane(k laneKey, tenant string) *lane {
	l := q.lanes[k]
	if l == nil {
		l = &lane{max: concurrency(q.opts(), tenant)}
		q.lanes[k] = l
	}
	return l
}

// attempt delivers e once and settles the outcome.
func (q *Queue) attempt(e *entry, l *lane) {
	defer q.wg.Done()
	q.mu.Lock()
	m := e.meta
	paid := e.paid
	e.paid = false
	q.mu.Unlock()

	log := q.o.Log.With().Str("msg_id", m.ID).Str("device", m.Device).Str("tenant", m.Tenant).Logger()
	if !paid {
		m.Attempts++
		m.NextAttempt = time.Now().Add(q.backoff(m.Attempts)).UTC()
		if err := q.o.Spool.Update(m); err != nil {
			// Go on: the message is safe on disk, only its schedule is
			// stale, and a restart would try it a little early.
			log.Error().Err(err).Msg("could not record the next attempt in the spool")
		}
	}
	start := time.Now()
	receipt, err := q.deliver(m)
	q.settle(e, l, m, receipt, err, time.Since(start), log)
}

func (q *Queue) deliver(m spool.Meta) (bridge.Receipt, error) {
	f, err := q.o.Spool.Open(m.ID)
	if err != nil {
		return bridge.Receipt{}, fmt.Errorf("open spooled message: %w", err)
	}
	defer f.Close()
	msg := &bridge.Message{ID: m.ID, Tenant: m.Tenant, Mailbox: m.Mailbox, From: m.From, To: m.To, Size: m.Size, Body: f}
	return q.o.Deliverer.Deliver(q.ctx, msg)
}

// settle records an attempt's outcome in memory, tells a waiting session,
// then updates the spool.
func (q *Queue) settle(e *entry, l *lane, m spool.Meta, receipt bridge.Receipt, err error, took time.Duration, log zerolog.Logger) {
	now := time.Now()
	o := q.opts()
	permanent := bridge.Permanent(err)
	expired := err != nil && !permanent && now.Sub(m.Since()) >= o.MaxAge
	if err != nil {
		m.LastReply = bridge.ReplyOf(err)
	}

	q.mu.Lock()
	l.active--
	e.running = false
	waiter := e.waiter
	e.waiter = nil
	switch {
	case err == nil:
		l.pauses, l.pausedUntil = 0, time.Time{}
		delete(q.entries, m.ID)
	case permanent || expired:
		delete(q.entries, m.ID)
	default:
		e.meta, e.due = m, m.NextAttempt
		if throttled(err) {
			l.pauses++
			l.pausedUntil = now.Add(q.backoff(l.pauses))
		}
	}
	if waiter != nil {
		waiter <- result{receipt, err}
	}
	q.mu.Unlock()
	q.kick()

	ev := event(audit.Delivered, m)
	ev.Attempt, ev.Duration, ev.Err = m.Attempts, took, err
	switch {
	case err == nil:
		ev.Reply, ev.UpstreamID, ev.Accepted = "250 "+receipt.Reply, receipt.QueueID, m.Received
		q.o.Events.Observe(ev)
		q.remove(m.ID, log)
	case permanent:
		ev.Kind, ev.Reply, ev.Reason = audit.Bounced, m.LastReply, audit.ReasonPermanent
		if waiter != nil {
			// The session passes the refusal on to the device.
			ev.Detail = "the device was told"
			q.o.Events.Observe(ev)
			q.remove(m.ID, log)
			return
		}
		q.o.Events.Observe(ev)
		q.bury(m, audit.ReasonPermanent, "refused by Exchange Online: "+m.LastReply, log)
	case expired:
		q.bury(m, audit.ReasonExpired, fmt.Sprintf("not delivered within %s; last reply: %s", o.MaxAge, m.LastReply), log)
	default:
		ev.Kind, ev.Reply, ev.RetryBy, ev.NextAttempt = audit.Deferred, m.LastReply, audit.RetryByQueue, m.NextAttempt
		ev.SetupProblem = bridge.SetupProblem(err)
		q.o.Events.Observe(ev)
		if uerr := q.o.Spool.Update(m); uerr != nil && !errors.Is(uerr, spool.ErrNotFound) {
			log.Error().Err(uerr).Msg("could not record the last reply in the spool")
		}
	}
}

// event describes a queued message.
func event(k audit.Kind, m spool.Meta) audit.Event {
	return audit.Event{Kind: k, MsgID: m.ID, Device: m.Device, Tenant: m.Tenant, Mailbox: m.Mailbox,
		From: m.From, Rcpts: len(m.To), Size: m.Size, DSNFor: m.DSNFor}
}

func (q *Queue) remove(id string, log zerolog.Logger) {
	if err := q.o.Spool.Remove(id); err != nil && !errors.Is(err, spool.ErrNotFound) {
		// At worst the message is delivered again after a restart.
		log.Error().Err(err).Msg("could not remove the delivered message from the spool")
	}
}

// backoff is the wait before attempt n+1: RetryInitial doubled per
// attempt, with ±20% jitter so that messages queued together spread out,
// kept within [RetryInitial, RetryMax].
func (q *Queue) backoff(n int) time.Duration {
	o := q.opts()
	d := o.RetryInitial
	for i := 1; i < n && d < o.RetryMax; i++ {
		d *= 2
	}
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return min(max(d, o.RetryInitial), o.RetryMax)
}

// throttled says whether err means Exchange wants the mailbox to slow
// down, or cannot be reached: the mailbox's other messages wait too.
func throttled(err error) bool {
	var ue *bridge.UpstreamError
	if !errors.As(err, &ue) {
		return false
	}
	switch {
	case ue.Code == 0:
		return true // unreachable, TLS failure, connection lost
	case ue.Code == 421 || ue.Code == 451:
		return true
	case ue.Code == 432 || ue.Enhanced == smtp.EnhancedCode{4, 3, 2}:
		return true
	}
	return false
}

// Spool implements bridge.Spooler.
func (q *Queue) Spool(m *bridge.Message, wait bool) (bridge.Pending, error) {
	now := time.Now().UTC()
	meta := spool.Meta{
		ID: m.ID, Tenant: m.Tenant, Mailbox: m.Mailbox, From: m.From, To: m.To, Received: now,
		// The first attempt follows at once; the record says so already,
		// so that a crash during it makes the restart wait before the next.
		Attempts: 1, NextAttempt: now.Add(q.backoff(1)),
	}
	if m.Device != nil {
		meta.Device = m.Device.Name
	}
	return q.add(meta, m.Body, wait, func(meta spool.Meta) {
		ev := event(audit.Received, meta)
		ev.Mode = m.Mode
		q.o.Events.Observe(ev)
	})
}

// add stores a message and queues it. committed, if set, is called once
// the message is safe on disk and before its first attempt starts.
func (q *Queue) add(meta spool.Meta, body io.Reader, wait bool, committed func(spool.Meta)) (bridge.Pending, error) {
	w, err := q.o.Spool.Create(meta)
	if err != nil {
		return nil, &bridge.StorageError{Err: err}
	}
	src := &bridge.SourceReader{R: body}
	if _, err := io.Copy(w, src); err != nil {
		w.Abort()
		if src.Err != nil {
			return nil, &bridge.SourceError{Err: src.Err}
		}
		return nil, &bridge.StorageError{Err: err}
	}
	meta, err = w.Commit()
	if err != nil {
		return nil, &bridge.StorageError{Err: err}
	}
	if committed != nil {
		committed(meta)
	}
	e := &entry{meta: meta, due: time.Now(), paid: true}
	p := &pending{q: q, id: meta.ID}
	if wait {
		e.waiter = make(chan result, 1)
		p.ch = e.waiter
	}
	q.mu.Lock()
	q.entries[meta.ID] = e
	q.mu.Unlock()
	q.kick()
	return p, nil
}

type pending struct {
	q  *Queue
	id string
	ch chan result
}

func (p *pending) Wait(d time.Duration) (bridge.Receipt, error, bool) {
	if p.ch == nil {
		return bridge.Receipt{}, nil, false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-p.ch:
		return r.receipt, r.err, true
	case <-t.C:
	}
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	if e := p.q.entries[p.id]; e != nil && e.waiter == p.ch {
		e.waiter = nil // from now on the queue alone decides
		return bridge.Receipt{}, nil, false
	}
	// settle took the waiter and sent the result under the same lock.
	r := <-p.ch
	return r.receipt, r.err, true
}
