// Package queue is the middle of the message's path, between the device
// side (package bridge) and an Exchange transport (package upstream): the
// three delivery modes a device can have, each a Deliverer like the
// transport it wraps.
//
//   - Queue (queue mode) stores the message in the spool and answers as
//     soon as it is safe on disk; it makes the first attempt at once and
//     retries temporary failures with exponential backoff until Exchange
//     takes the message or it outlives max_age. Messages that fail for
//     good become dead letters, with a delivery status notification to
//     bounce_to if one is configured.
//   - Hybrid (hybrid mode) is the queue plus a wait: the device gets
//     Exchange's answer if the first attempt ends within sync_timeout.
//   - Sync (sync mode) hands the message straight to the transport while
//     the device waits, and keeps nothing.
//
// Modes dispatches each message to its device's mode. The transport keeps
// each mailbox within Exchange Online's limits; the queue starts no more
// of a mailbox's attempts than the transport will take at once, and
// pauses a mailbox's messages after a throttling reply or while Exchange
// cannot be reached, instead of trying each of them.
//
// Every attempt's next-attempt time is on disk before the attempt starts,
// so a crash neither loses a message nor makes the restart hammer
// Exchange with it. The queue emits the audit events of the messages it
// handles; it must never log a message body.
package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/spool"
)

// Deliverer takes one message: a transport to Exchange, or one of the
// delivery modes here, which wrap one.
type Deliverer interface {
	Deliver(ctx context.Context, m *message.Message) (message.Receipt, error)
}

// Settings are the queue's reloadable settings; config holds their
// defaults.
type Settings struct {
	// RetryInitial and RetryMax bound the backoff; MaxAge is when a
	// message is given up.
	RetryInitial, RetryMax, MaxAge time.Duration
	// SyncTimeout is how long Hybrid waits for the first attempt.
	SyncTimeout time.Duration
	// BounceTo returns where a device's dead letters are reported; ""
	// for nowhere. Nil: nowhere.
	BounceTo func(device string) string
	// Concurrency is how many attempts of one mailbox of a tenant may be
	// in flight: the transport's connection limit for it, so that no
	// attempt waits in the transport for a connection slot while another
	// mailbox's message could go, and a pause stops a mailbox's attempts
	// before they reach Exchange. Nil or 0: no bound but the global one.
	Concurrency func(tenant string) int
	// AttemptLimit bounds one attempt (the poison rule); 0 means
	// DefaultAttemptLimit.
	AttemptLimit time.Duration
}

// Check says whether the settings can run a queue.
func (s Settings) Check() error {
	if s.RetryInitial <= 0 || s.RetryMax < s.RetryInitial || s.MaxAge <= 0 || s.SyncTimeout <= 0 {
		return fmt.Errorf("queue: retry_initial, retry_max, max_age and sync_timeout must be positive, retry_max at least retry_initial (%+v)", s)
	}
	return nil
}

// Options configure a Queue.
type Options struct {
	Settings
	Spool     *spool.Spool
	Transport Deliverer
	// Hostname names the bridge in delivery status notifications.
	Hostname string
	Log      zerolog.Logger
	// Events is told about every message event (audit log, metrics,
	// status page); nil means nobody listens.
	Events audit.Observer
	// Holds is told when a mailbox is held or released; nil: nobody.
	Holds HoldObserver
	// LoadInBackground reads the spool's queued messages when Start runs,
	// before the first attempt, instead of in New: the bridge listens at
	// once however long the queue, and takes new messages meanwhile.
	LoadInBackground bool
}

// Queue is the delivery queue over a spool: queue mode.
type Queue struct {
	o   Options // fixed at New; the reloadable part is in cur
	cur atomic.Pointer[Settings]
	ctx context.Context // attempts run under it
	// cancel aborts attempts still running when Close's grace ends.
	cancel context.CancelFunc
	wake   chan struct{}
	stop   chan struct{}
	// loaded is closed once the queued messages were read from the
	// spool (load).
	loaded chan struct{}
	// strs shares the strings that queued messages repeat.
	strs interner
	// unpaidAt is when unpaidLocked last looked; q.mu.
	unpaidAt time.Time
	done     chan struct{}
	wg       sync.WaitGroup // attempts in flight

	mu       sync.Mutex
	entries  map[string]*entry
	lanes    map[laneKey]*lane
	inFlight int // attempts running that no device waits for
	holdSeq  int64
	started  bool
	closed   bool
}

// maxInFlight bounds the attempts running at once, over all mailboxes,
// that no device waits for (each holds a spool file open).
const maxInFlight = 100

// entry is a queued message as the runner sees it: what scheduling,
// the status page and the tools' filters need, a few (shared) strings
// and times, about 200 bytes. The rest of its record (sender,
// recipients, size, what it asked of reports, strikes) stays in the
// spool, read at each attempt and for the page of messages a tool shows,
// so that a queue of 100,000 costs tens of MB, not hundreds.
type entry struct {
	id                      string
	device, tenant, mailbox string // interned
	lastReply               string // the last attempt's reply, "" before the first; interned
	received                time.Time
	due                     time.Time // when the runner may start the next attempt
	// paid means the spool already counts the next attempt (Attempts and
	// NextAttempt written at commit), so it need not be written again.
	paid bool
	// paidAt is when a paid entry was committed. rewriting is set while
	// its record is rewritten (as not under way, unpay; with a strike,
	// at start): it is not attempted or dropped meanwhile.
	paidAt    time.Time
	rewriting bool
	running   bool
	// retryNow is an admin's retry that came while the message's attempt
	// was under way: a deferral makes it due at once, not after its
	// backoff.
	retryNow bool
	waiter   chan result // a hybrid session waiting for the first attempt
	// abandoned is closed when an attempt that was abandoned (it did
	// not stop when told) returns at last; until then the message is
	// not tried again.
	abandoned <-chan struct{}
	// metHold is the hold of its mailbox the message was last found
	// waiting for (hold.id), so that it is recorded once per hold.
	metHold int64
}

type result struct {
	receipt message.Receipt
	err     error
}

type laneKey struct{ tenant, mailbox string }

// lane is one mailbox's share of the runner: its attempts in flight, its
// pause (after a throttling reply or while Exchange cannot be reached,
// its messages wait together), and its hold (Exchange refuses the
// mailbox itself: its messages wait for one probe, hold.go).
type lane struct {
	active      int
	pausedUntil time.Time
	pauses      int // consecutive throttled or failed attempts
	hold        *hold
}

// New loads the spool's queued messages and returns a queue; Start runs
// it.
func New(o Options) (*Queue, error) {
	if err := o.Settings.Check(); err != nil {
		return nil, err
	}
	if o.Events == nil {
		o.Events = audit.Nop{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{o: o, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
		entries: map[string]*entry{}, lanes: map[laneKey]*lane{}}
	q.cur.Store(&o.Settings)
	q.loaded = make(chan struct{})
	if !o.LoadInBackground {
		q.load()
	}
	return q, nil
}

// Loaded is closed once the queue has read the spool.
func (q *Queue) Loaded() <-chan struct{} { return q.loaded }

// waitLoaded waits, for the admin's tools, until the queue has read the
// spool (a background load takes a few seconds at 100,000 messages), so
// that what they list and change is the whole queue.
func (q *Queue) waitLoaded() {
	select {
	case <-q.loaded:
	case <-time.After(time.Minute):
	}
}

// load reads the queued messages from the spool: the strikes of those
// whose attempt the last run left under way, the holds the last run had,
// and an entry for each.
func (q *Queue) load() {
	start := time.Now()
	o := q.o
	metas, err := o.Spool.List()
	if err != nil {
		// Unreadable metadata stays on disk for an admin; the rest runs.
		o.Log.Error().Err(err).Msg("some queued messages could not be read; they stay in the spool untouched")
	}
	struck, buried := q.strikesFromLastRun(metas)
	isBuried := make(map[string]bool, len(buried))
	for _, b := range buried {
		isBuried[b.ID] = true
	}
	q.mu.Lock()
	q.holdsFromSpool(metas)
	for _, m := range metas {
		if !isBuried[m.ID] {
			q.entries[m.ID] = q.entryOf(m, m.NextAttempt)
		}
	}
	for _, m := range struck {
		q.entries[m.ID].rewriting = true
	}
	q.mu.Unlock()
	close(q.loaded)
	if len(metas) > 0 {
		o.Log.Info().Int("messages", len(metas)-len(buried)).Dur("took", time.Since(start)).Msg("queue reloaded from the spool")
	}
	if o.LoadInBackground {
		// The runner goes on meanwhile; the struck wait for their write.
		q.wg.Add(1)
		go func() { defer q.wg.Done(); q.recordStrikes(struck) }()
	} else {
		q.recordStrikes(struck)
	}
	for _, m := range buried {
		log := o.Log.With().Str("msg_id", m.ID).Str("device", m.Device).Str("tenant", m.Tenant).Logger()
		log.Error().Int("strikes", m.Strikes).Msg("the bridge stopped during this message's attempts twice in a row: it goes to the dead letters, not tried again")
		q.bury(m, audit.ReasonPoison, poisonReason(m.Strikes, errStopped), log)
	}
}

// settings returns the current reloadable settings.
func (q *Queue) settings() *Settings { return q.cur.Load() }

// Reconfigure takes new settings (which Check). Messages already
// deferred keep their next attempt; later ones use the new schedule.
func (q *Queue) Reconfigure(s Settings) {
	q.cur.Store(&s)
	q.kick()
}

func (q *Queue) bounceTo(device string) string {
	if f := q.settings().BounceTo; f != nil {
		return f(device)
	}
	return ""
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
// finish, then aborts the rest, and returns within grace whatever they
// do: an attempt that does not stop when told is abandoned (its message
// stays queued, marked as attempted, a strike at the next start).
// Queued messages stay on disk.
func (q *Queue) Close(grace time.Duration) {
	deadline := time.Now().Add(grace)
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
	// No attempt starts now. Messages committed as under way whose
	// attempt never began (their lane full or paused) are written as
	// waiting, within the grace like the attempts: the next start would
	// otherwise count a strike against each (the poison rule).
	q.mu.Lock()
	waiting := q.pickUnpaidLocked(time.Now(), 0)
	q.mu.Unlock()
	if len(waiting) > 0 {
		q.wg.Add(1)
		go func() { defer q.wg.Done(); q.unpay(waiting) }()
	}
	finished := make(chan struct{})
	go func() { q.wg.Wait(); close(finished) }()
	// Attempts are told to stop a moment before the end, to have that
	// moment to do so.
	stopping := min(closeStopping, grace/4)
	select {
	case <-finished:
	case <-time.After(time.Until(deadline) - stopping):
		q.cancel()
		select {
		case <-finished:
		case <-time.After(time.Until(deadline)):
			q.o.Log.Warn().Msg("attempts that did not stop at the end of the grace period are abandoned; their messages stay queued")
		}
	}
	q.cancel()
}

// closeStopping is how long before the end of Close's grace attempts in
// flight are told to stop.
const closeStopping = 2 * time.Second

func (q *Queue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue) run() {
	defer close(q.done)
	if q.o.LoadInBackground {
		q.load()
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		start := time.Now()
		next := q.dispatch(start)
		took := time.Since(start)
		t.Reset(next)
		select {
		case <-q.stop:
			return
		case <-q.wake:
			// A look over the queue costs in proportion to it (about
			// 13 ms at 100,000 messages): kicks that come faster (each
			// message taken, each attempt settled) are served together,
			// so that looking takes at most half of a core.
			if rest := took - time.Since(start) + took; took > time.Millisecond && rest > 0 {
				select {
				case <-q.stop:
					return
				case <-time.After(rest):
				}
			}
		case <-t.C:
		}
	}
}

// idleWait is how long the runner sleeps with nothing due.
const idleWait = time.Minute

// dispatch starts every attempt that is due and not paused, and returns
// how long until the next one may be. A held mailbox's messages are not
// started but for its probe; a session waiting on one is told at once
// (met, after q.mu is released).
func (q *Queue) dispatch(now time.Time) time.Duration {
	q.mu.Lock()
	next, met := q.dispatchLocked(now)
	unpay := q.unpaidLocked(now)
	q.mu.Unlock()
	q.met(met)
	q.unpay(unpay)
	if len(unpay) > 0 {
		return time.Millisecond // they may go now
	}
	return min(next, time.Duration(unpayAfter.Load()))
}

// unpayAfter is how long a message whose record says its first attempt
// is under way (paid, to save a write) may wait for that attempt (its
// lane full or paused, Exchange down) before the record is rewritten to
// say it is not: otherwise a restart would count a strike against every
// message of a backlog (the poison rule), and a second one bury them all.
var unpayAfter atomic.Int64 // a time.Duration; 5 s (init)

func init() { unpayAfter.Store(int64(5 * time.Second)) }

// unpaidLocked picks the paid entries that have waited past unpayAfter
// without their attempt starting, and marks them; q.mu is held.
func (q *Queue) unpaidLocked(now time.Time) []string {
	// A look over every entry: at most once a second, not at every
	// message's kick.
	if now.Sub(q.unpaidAt) < time.Second {
		return nil
	}
	q.unpaidAt = now
	return q.pickUnpaidLocked(now, time.Duration(unpayAfter.Load()))
}

// pickUnpaidLocked marks and returns the paid entries committed at least
// wait ago whose attempt has not started; q.mu is held.
func (q *Queue) pickUnpaidLocked(now time.Time, wait time.Duration) []string {
	var out []string
	for _, e := range q.entries {
		if !e.paid || e.running || e.rewriting || now.Sub(e.paidAt) < wait {
			continue
		}
		e.paid, e.rewriting = false, true
		out = append(out, e.id)
	}
	return out
}

// unpay rewrites the records unpaidLocked picked as not under way (the
// attempt counted at commit uncounted), then lets their entries go.
func (q *Queue) unpay(ids []string) {
	if len(ids) == 0 {
		return
	}
	writeEach(ids, func(id string) {
		m, err := q.o.Spool.Get(id)
		if err == nil {
			m.Attempting = false
			m.Attempts = max(m.Attempts-1, 0)
			err = q.o.Spool.Update(m)
		}
		if err != nil && !errors.Is(err, spool.ErrNotFound) {
			q.o.Log.Error().Err(err).Str("msg_id", id).Msg("could not record in the spool that the message waits for its first attempt")
		}
	})
	q.mu.Lock()
	for _, id := range ids {
		if e := q.entries[id]; e != nil {
			e.rewriting = false
		}
	}
	q.mu.Unlock()
}

func (q *Queue) dispatchLocked(now time.Time) (time.Duration, []meetHold) {
	if q.closed {
		return idleWait, nil
	}
	next := now.Add(idleWait)
	var ready []*entry
	var met []meetHold
	probes := map[laneKey]*entry{} // the oldest message of each held lane whose probe is due
	for _, e := range q.entries {
		if e.running || e.rewriting || e.abandoned != nil && !closedNow(e) {
			continue
		}
		k := keyOf(e)
		l := q.lanes[k]
		if l != nil && l.hold != nil {
			h := l.hold
			if e.metHold != h.id || e.waiter != nil {
				m := meetHold{known: e.item().Meta, state: k.state(h), waiter: e.waiter, persist: e.paid}
				e.paid = false
				e.metHold, e.waiter, e.due = h.id, nil, h.next
				met = append(met, m)
			}
			switch {
			case h.probe != "":
			case !h.next.After(now):
				if p := probes[k]; p == nil || olderThan(e, p) {
					probes[k] = e
				}
			case h.next.Before(next):
				next = h.next
			}
			continue
		}
		due := e.due
		if e.waiter == nil && l != nil && l.pausedUntil.After(due) {
			due = l.pausedUntil
		}
		if e.waiter != nil || !due.After(now) {
			ready = append(ready, e)
		} else if due.Before(next) {
			next = due
		}
	}
	for k, e := range probes {
		q.lanes[k].hold.probe = e.id
		ready = append(ready, e)
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
		return strings.Compare(a.id, b.id)
	})
	for _, e := range ready {
		l := q.lane(keyOf(e))
		if n := q.concurrency(e.tenant); n > 0 && l.active >= n {
			if l.hold != nil && l.hold.probe == e.id {
				l.hold.probe = "" // no room now: the next round
			}
			continue
		}
		counted := e.waiter == nil
		if counted && q.inFlight >= maxInFlight {
			if l.hold != nil && l.hold.probe == e.id {
				l.hold.probe = ""
			}
			continue
		}
		if counted {
			q.inFlight++
		}
		l.active++
		e.running = true
		q.wg.Add(1)
		go q.attempt(e, counted)
	}
	return max(next.Sub(now), time.Millisecond), met
}

// closedNow says whether e's abandoned attempt has ended at last, and
// forgets it if so; q.mu is held.
func closedNow(e *entry) bool {
	select {
	case <-e.abandoned:
		e.abandoned = nil
		return true
	default:
		return false
	}
}

// olderThan says whether a was received before b: the probe of a held
// mailbox is its oldest message.
func olderThan(a, b *entry) bool {
	if c := a.received.Compare(b.received); c != 0 {
		return c < 0
	}
	return a.id < b.id
}

func (q *Queue) concurrency(tenant string) int {
	if f := q.settings().Concurrency; f != nil {
		return f(tenant)
	}
	return 0
}

func keyOf(e *entry) laneKey {
	return laneKey{e.tenant, strings.ToLower(e.mailbox)}
}

func (q *Queue) lane(k laneKey) *lane {
	l := q.lanes[k]
	if l == nil {
		l = &lane{}
		q.lanes[k] = l
	}
	return l
}

// attempt delivers e once and settles the outcome.
func (q *Queue) attempt(e *entry, counted bool) {
	defer q.wg.Done()
	q.mu.Lock()
	paid := e.paid
	e.paid = false
	q.mu.Unlock()

	log := q.o.Log.With().Str("msg_id", e.id).Str("device", e.device).Str("tenant", e.tenant).Logger()
	m, err := q.o.Spool.Get(e.id)
	if err != nil {
		q.unreadable(e, counted, paid, err, log)
		return
	}
	if !paid {
		m.Attempts++
		m.NextAttempt = time.Now().Add(q.backoff(m.Attempts)).UTC()
		m.Attempting = true
		if err := q.o.Spool.Update(m); err != nil {
			// Go on: the message is safe on disk, only its schedule is
			// stale, and a restart would try it a little early.
			log.Error().Err(err).Msg("could not record the next attempt in the spool")
		}
	}
	start := time.Now()
	a := q.deliver(m, log)
	q.settle(e, counted, m, a, time.Since(start), log)
}

// unreadable ends an attempt whose record could not be read from the
// spool: the record is left as it is (an admin's to look at), the
// message is tried again after retry_max, and a waiting session is
// told to try later; a message that went meanwhile is forgotten.
func (q *Queue) unreadable(e *entry, counted, paid bool, err error, log zerolog.Logger) {
	gone := errors.Is(err, spool.ErrNotFound)
	if !gone {
		log.Error().Err(err).Msg("could not read the queued message's record in the spool; it is tried again later")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if counted {
		q.inFlight--
	}
	l := q.lane(keyOf(e))
	l.active--
	if l.hold != nil && l.hold.probe == e.id {
		l.hold.probe = ""
	}
	e.running, e.paid = false, paid
	if gone {
		delete(q.entries, e.id)
	} else {
		e.due = time.Now().Add(q.settings().RetryMax)
	}
	if e.waiter != nil {
		e.waiter <- result{err: &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: fmt.Errorf("read the spooled message's record: %w", err)}}
		e.waiter = nil
	}
	q.kick()
}

// attempted is how an attempt ended.
type attempted struct {
	receipt message.Receipt
	err     error
	// strike: it panicked or did not end by its limit (the poison
	// rule); abandoned, if not nil, is closed when its goroutine,
	// still running, returns.
	strike    bool
	abandoned <-chan struct{}
}

func (q *Queue) deliver(m spool.Meta, log zerolog.Logger) attempted {
	f, err := q.o.Spool.Open(m.ID)
	if err != nil {
		return attempted{err: &message.Error{Class: message.Temporary, Stage: message.StageSource,
			Err: fmt.Errorf("open spooled message: %w", err)}}
	}
	defer f.Close()
	msg := &message.Message{ID: m.ID, Device: m.Device, Tenant: m.Tenant, Mailbox: m.Mailbox, From: m.From, HeaderFrom: m.HeaderFrom, To: m.To,
		Size: m.Size, DSN: m.DSN, Body: f}
	var a attempted
	a.receipt, a.err, a.strike, a.abandoned = q.attemptOnce(msg, log)
	return a
}

// outcome is what an attempt means for a queued message.
type outcome int

const (
	outDelivered outcome = iota // every recipient has its outcome: the message leaves the queue
	outRefused                  // refused for good, as a whole
	outExpired                  // older than max_age: given up
	outDeferred                 // some or all recipients are tried again
	outPoison                   // its attempts failed to end too often: given up
)

var outcomeNames = [...]string{outDelivered: "delivered", outRefused: "refused", outExpired: "expired", outDeferred: "deferred", outPoison: "poison"}

func (o outcome) String() string { return outcomeNames[o] }

// verdict is what one attempt means for a message and its mailbox: the
// queue's rule, decided apart from the locks, spool writes and events
// that carry it out (settle).
type verdict struct {
	out outcome
	// meta is the message's metadata after the attempt: Attempting
	// cleared, Strikes counted, LastReply set and, when recipients had
	// outcomes of their own, To narrowed to those tried again.
	// NextAttempt is settle's, from the mailbox's state.
	meta spool.Meta
	// gone and again are the recipients Exchange refused for good and
	// for now, when it answered recipient by recipient (perRecipient).
	gone, again  []*message.Error
	perRecipient bool
	// pause is the failure that may make the mailbox wait, nil if none.
	pause *message.Error
	// held: the mailbox's failure, not the message's (Error.Hold): it
	// waits for the mailbox's probe. laneWide: the message waits with
	// its mailbox (held, throttled, out of reach, told when to come
	// back) rather than on a backoff of its own.
	held, laneWide bool
	// took: Exchange took the message or some of its recipients, which
	// ends the mailbox's pause. clears: the answer says the mailbox is
	// not refused now (Exchange took something, or refused the message
	// for a reason of its own), which ends a hold.
	took, clears bool
	// persist: the spool must record who is left before the session or
	// anything else hears of the outcome.
	persist bool
}

// decide is the queue's rule for one attempt of a message received (or
// requeued) at m.Since(): each recipient has its own outcome. Those
// Exchange took are done, those it refused for good are reported, those
// it refused for now stay queued, alone; a refusal of the whole message
// for good bounces it; a message older than maxAge is given up; two
// attempts in a row that did not end (a.strike) make it poison.
func decide(m spool.Meta, a attempted, now time.Time, maxAge time.Duration) verdict {
	receipt, err := a.receipt, a.err
	v := verdict{meta: m, perRecipient: len(receipt.Refused) > 0}
	v.meta.Attempting = false
	if a.strike {
		v.meta.Strikes++
	} else {
		v.meta.Strikes = 0
	}
	for _, r := range receipt.Refused {
		if r.Permanent() {
			v.gone = append(v.gone, r)
		} else {
			v.again = append(v.again, r)
		}
	}
	switch {
	case a.strike && v.meta.Strikes >= maxStrikes:
		v.out = outPoison
	case v.perRecipient && len(v.again) == 0 && len(receipt.Accepted) == 0:
		v.out = outRefused // every recipient refused for good: as a whole
	case err == nil && len(v.again) == 0:
		v.out = outDelivered
	case err != nil && !v.perRecipient && message.IsPermanent(err):
		v.out = outRefused
	case now.Sub(m.Since()) >= maxAge:
		v.out = outExpired
	default:
		v.out = outDeferred
	}
	if v.perRecipient && v.out != outRefused {
		// Only the recipients refused for now are tried again.
		v.meta.To = nil
		for _, r := range v.again {
			v.meta.To = append(v.meta.To, r.Recipient)
		}
	}
	switch {
	case err != nil:
		v.meta.LastReply = message.ReplyOf(err).String()
		errors.As(err, &v.pause)
	case len(v.again) > 0:
		v.meta.LastReply = message.ReplyOf(v.again[0]).String()
		v.pause = v.again[0]
	}
	p := v.pause
	deferred := v.out == outDeferred && p != nil
	v.held = deferred && p.Hold != ""
	v.laneWide = v.held || deferred && (p.Pauses() || !p.RetryAt.IsZero())
	v.took = err == nil || len(receipt.Accepted) > 0
	v.clears = v.took || p != nil && p.Hold == "" && !p.Pauses() && p.Reply.Code != 0
	v.persist = v.out == outDeferred && (err == nil || v.perRecipient || v.laneWide)
	return v
}

// settle carries out an attempt's verdict: the mailbox's hold or pause,
// the spool, a waiting session, then the events.
func (q *Queue) settle(e *entry, counted bool, m spool.Meta, a attempted, took time.Duration, log zerolog.Logger) {
	now := time.Now()
	v := decide(m, a, now, q.settings().MaxAge)
	l := q.settleLane(e, &v, now)
	if v.out == outDeferred {
		// The record, which the next attempt reads, says how this one
		// went before the entry is free. Where recipients were taken or
		// refused (persist) it says who is left before anything else, so
		// that a crash from here on gives nobody the message twice.
		uerr := q.o.Spool.Update(v.meta)
		switch {
		case uerr == nil, errors.Is(uerr, spool.ErrNotFound):
		case v.persist:
			log.Error().Err(uerr).Msg("could not record the recipients left in the spool; after a restart they may get the message twice")
		default:
			log.Error().Err(uerr).Msg("could not record the last reply in the spool")
		}
	}
	told := q.release(e, l, counted, v, a)
	q.kick()
	q.tell(v, a, told, took, log)
}

// settleLane applies the verdict to the message's mailbox: a hold begun,
// lifted or probed again, a pause; it sets v.meta.NextAttempt when the
// message waits with its mailbox.
func (q *Queue) settleLane(e *entry, v *verdict, now time.Time) *lane {
	var changes []*holdChange
	q.mu.Lock()
	k := keyOf(e)
	l := q.lane(k)
	switch {
	case v.held:
		// The mailbox's failure, not the message's: it waits for the
		// mailbox's probe.
		next, ch := q.holdLane(k, l, v.pause, v.meta.ID, now)
		v.meta.NextAttempt, changes = next.UTC(), append(changes, ch)
	case l.hold != nil && v.clears:
		// Exchange took a message, or answered a probe with something
		// else than the hold's refusal: the mailbox is not refused now.
		changes = append(changes, q.releaseLane(k, l))
	case l.hold != nil && l.hold.probe == v.meta.ID:
		// A probe that learnt nothing (Exchange out of reach,
		// throttling): another at the same step.
		l.hold.probe, l.hold.next = "", now.Add(q.holdWait(l.hold.step, l.hold.reason))
	}
	if v.laneWide && !v.held {
		// Not the message's own failure: it goes when its mailbox does,
		// not on a backoff of its own.
		v.meta.NextAttempt = q.pauseLane(l, v.pause, now).UTC()
	}
	q.mu.Unlock()
	q.announce(changes...)
	return l
}

// release ends the attempt in memory: the entry is rescheduled or gone,
// the lane's slot is free, and a waiting session gets the outcome, which
// it reports (told).
func (q *Queue) release(e *entry, l *lane, counted bool, v verdict, a attempted) (told bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if counted {
		q.inFlight--
	}
	e.running = false
	waiter := e.waiter
	e.waiter = nil
	l.active--
	if e.abandoned = a.abandoned; e.abandoned != nil {
		go func() { <-a.abandoned; q.kick() }() // its turn comes when it ends
	}
	if v.out == outDeferred {
		e.lastReply, e.due = q.strs.get(v.meta.LastReply), v.meta.NextAttempt
		if e.retryNow {
			e.due, e.retryNow = time.Now(), false
		}
	} else {
		delete(q.entries, v.meta.ID)
	}
	if v.took {
		l.pauses, l.pausedUntil = 0, time.Time{}
	}
	if waiter != nil {
		waiter <- result{a.receipt, a.err}
	}
	return waiter != nil
}

// tell records the verdict's events and does what is left of it in the
// spool: a delivered message removed, a failed one buried or reported.
func (q *Queue) tell(v verdict, a attempted, told bool, took time.Duration, log zerolog.Logger) {
	m, receipt, err := v.meta, a.receipt, a.err
	ev := event(audit.Delivered, m)
	ev.Attempt, ev.Duration = m.Attempts, took
	if len(receipt.Accepted) > 0 {
		ev.Rcpts, ev.Reply, ev.UpstreamID, ev.Accepted = len(receipt.Accepted), receipt.Reply.String(), receipt.UpstreamID, m.Received
		q.o.Events.Observe(ev)
	}
	if v.out != outRefused {
		for _, r := range v.gone {
			q.recipientEvent(ev, audit.Bounced, r, m)
		}
		if len(v.gone) > 0 {
			q.report(m, failures(v.gone), fmt.Sprintf("refused by Exchange Online for %d of the message's recipients", len(v.gone)), log)
		}
	}
	ev.Err, ev.Detail = err, noteOf(err)
	switch v.out {
	case outDelivered:
		q.remove(m.ID, log)
	case outRefused:
		ev.Kind, ev.Reply, ev.Reason = audit.Bounced, m.LastReply, audit.ReasonPermanent
		if told {
			// The session passes the refusal on to the device.
			ev.Detail = strings.TrimPrefix(ev.Detail+"; the device was told", "; ")
			q.o.Events.Observe(ev)
			q.remove(m.ID, log)
			return
		}
		q.o.Events.Observe(ev)
		q.bury(m, audit.ReasonPermanent, refusedBy(err)+m.LastReply, log)
	case outPoison:
		log.Error().Err(err).Int("strikes", m.Strikes).Msg("the message's attempts failed to end twice in a row: it goes to the dead letters, not tried again")
		q.bury(m, audit.ReasonPoison, poisonReason(m.Strikes, err), log)
	case outExpired:
		q.bury(m, audit.ReasonExpired, q.expiredReason(m), log)
	case outDeferred:
		q.deferred(v, ev, log)
	}
}

// deferred reports a message tried again later: each recipient refused
// for now, or the message as a whole, whose last reply the spool keeps.
func (q *Queue) deferred(v verdict, ev audit.Event, log zerolog.Logger) {
	m := v.meta
	if v.perRecipient || ev.Err == nil {
		for _, r := range v.again {
			q.recipientEvent(ev, audit.Deferred, r, m)
		}
		return
	}
	ev.Kind, ev.Reply, ev.RetryBy, ev.NextAttempt = audit.Deferred, m.LastReply, audit.RetryByQueue, m.NextAttempt
	ev.SetupProblem = message.ClassOf(ev.Err) == message.Setup
	q.o.Events.Observe(ev)
}

// expiredReason is the dead letter's reason for a message not delivered
// within max_age.
func (q *Queue) expiredReason(m spool.Meta) string {
	why := ""
	if r, ok := message.ParseReply(m.LastReply); ok && message.HoldOfReply(r) != "" {
		why = " (its mailbox was held: " + message.HoldOfReply(r).Words() + ")"
	}
	return fmt.Sprintf("not delivered within %s%s; last reply: %s", q.settings().MaxAge, why, m.LastReply)
}

// noteOf is what the bridge itself did about a failure (Error.Note).
func noteOf(err error) string {
	var e *message.Error
	if errors.As(err, &e) {
		return e.Note
	}
	return ""
}

// refusedBy says who refused a message for good: Exchange, or the
// bridge itself (a message it can never send as it is).
func refusedBy(err error) string {
	var e *message.Error
	if errors.As(err, &e) && e.Reply.Code == 0 && e.Stage == message.StageSource {
		return "refused by the bridge: "
	}
	if e != nil && e.Note != "" {
		return "refused by the bridge, as Exchange Online refused it before: "
	}
	return "refused by Exchange Online: "
}

// recipientEvent reports one recipient's own outcome: refused for good,
// or for now.
func (q *Queue) recipientEvent(base audit.Event, k audit.Kind, r *message.Error, m spool.Meta) {
	ev := base
	ev.Kind, ev.Recipient, ev.Rcpts, ev.Reply, ev.Err, ev.Detail = k, r.Recipient, 1, message.ReplyOf(r).String(), r, r.Note
	ev.UpstreamID, ev.Accepted = "", time.Time{}
	switch k {
	case audit.Bounced:
		ev.Reason = audit.ReasonPermanent
	case audit.Deferred:
		ev.RetryBy, ev.NextAttempt = audit.RetryByQueue, m.NextAttempt
		ev.SetupProblem = r.Class == message.Setup
	}
	q.o.Events.Observe(ev)
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

// pauseLane makes a mailbox wait after a failure that is not one
// message's (throttling, Exchange or Entra ID out of reach, the daily
// quota) and returns until when; q.mu is held. When the failure says when
// to come back (RetryAt: a paused tenant's token requests, the quota's
// window) that is the end; otherwise the pause doubles from RetryInitial
// with each pause in a row. A failure while the mailbox is paused already
// (an attempt that was under way, or a session's first attempt, which
// goes ahead of a pause) does not make the pause longer: 500 messages
// failing at once are one pause, not 500.
func (q *Queue) pauseLane(l *lane, pause *message.Error, now time.Time) time.Time {
	switch {
	case !pause.RetryAt.IsZero():
		if pause.RetryAt.After(l.pausedUntil) {
			l.pausedUntil = pause.RetryAt
		}
	case !now.Before(l.pausedUntil):
		l.pauses++
		l.pausedUntil = now.Add(q.backoff(l.pauses))
	}
	return l.pausedUntil
}

// backoff is the wait before attempt n+1: RetryInitial doubled per
// attempt, with ±20% jitter so that messages queued together spread out,
// kept within [RetryInitial, RetryMax].
func (q *Queue) backoff(n int) time.Duration {
	s := q.settings()
	d := s.RetryInitial
	for i := 1; i < n && d < s.RetryMax; i++ {
		d *= 2
	}
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return min(max(d, s.RetryInitial), s.RetryMax)
}

// interner shares the strings that many queued messages repeat (their
// device, tenant, mailbox and sender, the reply of an outage), so that a
// queue of 100,000 keeps each once, not 100,000 times. It forgets all
// when it holds maxInterned (replies that name a message each would
// otherwise grow it without end).
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

const maxInterned = 50000

func (in *interner) get(s string) string {
	if s == "" {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[s]; ok {
		return v
	}
	if in.m == nil || len(in.m) >= maxInterned {
		in.m = map[string]string{}
	}
	in.m[s] = s
	return s
}

// entryOf is m's entry, due at due, with its repeated strings shared.
func (q *Queue) entryOf(m spool.Meta, due time.Time) *entry {
	in := &q.strs
	return &entry{id: m.ID, device: in.get(m.Device), tenant: in.get(m.Tenant), mailbox: in.get(m.Mailbox),
		lastReply: in.get(m.LastReply), received: m.Received, due: due}
}
