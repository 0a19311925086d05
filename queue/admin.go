package queue

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/spool"
)

// Item is a message as the queue tools show it.
type Item struct {
	spool.Meta
	// State is queued (waiting for its first or next attempt), deferred
	// (an attempt failed; it will be retried), delivering, or dead.
	State string `json:"state"`
}

// States of an Item.
const (
	StateQueued     = "queued"
	StateDeferred   = "deferred"
	StateDelivering = "delivering"
	StateDead       = "dead"
)

// Manager is what `smtpbridge queue` does, against a running daemon (the
// Queue itself, reached through Handler and Client) or a stopped spool
// (Offline).
type Manager interface {
	List() ([]Item, error)
	Dead() ([]Item, error)
	Show(id string) (Item, error)
	// Retry makes a queued message due now; RetryAll all of them;
	// RetryMailbox those of one mailbox, lifting its hold.
	Retry(id string) error
	RetryAll() (int, error)
	RetryMailbox(mailbox string) (int, error)
	// Drop deletes a queued message or a dead letter.
	Drop(id string) error
	// Requeue moves a dead letter back into the queue, due now.
	Requeue(id string) error
	// Select lists a page of the messages f selects, oldest first,
	// after the continuation after ("" from the start), at most limit
	// (0: DefaultPage); the bridge holds no more than the page for it.
	Select(f Filter, after string, limit int) (Page, error)
	// RetryWhere and DropWhere retry or drop what f selects.
	RetryWhere(f Filter) (int, error)
	DropWhere(f Filter) (int, error)
}

// Errors of a Manager.
var (
	ErrNotFound = spool.ErrNotFound
	ErrBusy     = errors.New("the message is being delivered right now; try again in a moment")
)

func stateOf(m spool.Meta) string {
	if m.LastReply != "" {
		return StateDeferred
	}
	return StateQueued
}

// item describes a queued entry as memory has it (what the filters and
// the listing's order need: no sender, recipients or size; full reads
// the rest); q.mu is held.
func (e *entry) item() Item {
	m := spool.Meta{ID: e.id, Device: e.device, Tenant: e.tenant, Mailbox: e.mailbox, LastReply: e.lastReply,
		Received: e.received, NextAttempt: e.due}
	if e.running {
		return Item{Meta: m, State: StateDelivering}
	}
	return Item{Meta: m, State: stateOf(m)}
}

// full reads the items' whole records from the spool, q.mu released;
// an item whose record went meanwhile (delivered) keeps what it has.
func (q *Queue) full(items []Item) {
	for i := range items {
		if m, err := q.o.Spool.Get(items[i].ID); err == nil {
			items[i].Meta = m
		}
	}
}

// CountByTenant counts the queued messages of each tenant, from memory.
func (q *Queue) CountByTenant() map[string]int {
	q.waitLoaded()
	q.mu.Lock()
	defer q.mu.Unlock()
	n := map[string]int{}
	for _, e := range q.entries {
		n[e.tenant]++
	}
	return n
}

func deadItems(s *spool.Spool) ([]Item, error) {
	metas, err := s.Dead()
	items := make([]Item, 0, len(metas))
	for _, m := range metas {
		items = append(items, Item{Meta: m, State: StateDead})
	}
	return items, err
}

func showDead(s *spool.Spool, id string) (Item, error) {
	m, err := s.GetDead(id)
	if err != nil {
		return Item{}, err
	}
	return Item{Meta: m, State: StateDead}, nil
}

var _ Manager = (*Queue)(nil)

// List implements Manager.
func (q *Queue) List() ([]Item, error) {
	q.waitLoaded()
	q.mu.Lock()
	items := make([]Item, 0, len(q.entries))
	for _, e := range q.entries {
		items = append(items, e.item())
	}
	q.mu.Unlock()
	sortItems(items)
	q.full(items)
	return items, nil
}

func sortItems(items []Item) {
	slices.SortFunc(items, func(a, b Item) int {
		if c := a.Received.Compare(b.Received); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// Dead implements Manager.
func (q *Queue) Dead() ([]Item, error) { return deadItems(q.o.Spool) }

// Show implements Manager.
func (q *Queue) Show(id string) (Item, error) {
	q.waitLoaded()
	q.mu.Lock()
	e := q.entries[id]
	var it Item
	if e != nil {
		it = e.item()
	}
	q.mu.Unlock()
	if e != nil {
		items := []Item{it}
		q.full(items)
		return items[0], nil
	}
	return showDead(q.o.Spool, id)
}

// Retry implements Manager. It also lifts the mailbox's pause, so that an
// admin who fixed the cause sees the result at once.
func (q *Queue) Retry(id string) error {
	q.waitLoaded()
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.entries[id]
	if e == nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	e.due = time.Now()
	if l := q.lanes[keyOf(e)]; l != nil {
		l.pausedUntil = time.Time{}
	}
	q.kick()
	return nil
}

// RetryAll implements Manager. An admin's "go now" lifts every pause and
// hold too.
func (q *Queue) RetryAll() (int, error) { return q.retry("", true), nil }

// RetryMailbox implements Manager: after a fix (Sent Items emptied, a
// grant, Set-CASMailbox), the mailbox's hold and pause are lifted and its
// messages go now.
func (q *Queue) RetryMailbox(mailbox string) (int, error) {
	return q.retry(strings.ToLower(mailbox), true), nil
}

// DueAll makes every queued message due now, but a held mailbox's,
// which wait for its probe (smtpbridge drain).
func (q *Queue) DueAll() int { return q.retry("", false) }

// retry makes the queued messages of mailbox ("" for all) due now,
// lifting their mailboxes' pauses, and their holds with lift.
func (q *Queue) retry(mailbox string, lift bool) int {
	q.waitLoaded()
	q.mu.Lock()
	now := time.Now()
	n := 0
	for _, e := range q.entries {
		if mailbox == "" || keyOf(e).mailbox == mailbox {
			e.due, e.retryNow = now, e.running
			n++
		}
	}
	var changes []*holdChange
	for k, l := range q.lanes {
		if mailbox != "" && k.mailbox != mailbox {
			continue
		}
		l.pausedUntil = time.Time{}
		if l.hold == nil {
			continue
		}
		if lift {
			changes = append(changes, q.releaseLane(k, l))
		} else if l.hold.probe == "" {
			l.hold.next = now
		}
	}
	q.mu.Unlock()
	q.announce(changes...)
	q.kick()
	return n
}

// Drop implements Manager.
func (q *Queue) Drop(id string) error {
	q.waitLoaded()
	q.mu.Lock()
	e := q.entries[id]
	switch {
	case e != nil && (e.running || e.rewriting):
		q.mu.Unlock()
		return ErrBusy
	case e != nil:
		known := e.item().Meta
		delete(q.entries, id)
		q.mu.Unlock()
		m, err := q.o.Spool.Get(id)
		if err != nil {
			m = known
		}
		ev := event(audit.Dropped, m)
		ev.Detail = "queued message"
		q.o.Events.Observe(ev)
		return q.o.Spool.Remove(id)
	}
	q.mu.Unlock()
	m, _ := q.o.Spool.GetDead(id)
	if err := q.o.Spool.RemoveDead(id); err != nil {
		return err
	}
	ev := event(audit.Dropped, m)
	ev.MsgID, ev.Detail = id, "dead letter"
	q.o.Events.Observe(ev)
	return nil
}

// Requeue implements Manager.
func (q *Queue) Requeue(id string) error {
	m, err := q.o.Spool.Requeue(id)
	if err != nil {
		return err
	}
	q.mu.Lock()
	q.entries[id] = q.entryOf(m, time.Now())
	q.mu.Unlock()
	q.kick()
	q.o.Events.Observe(event(audit.Requeued, m))
	return nil
}

// Offline manages a stopped bridge's spool directly. Open holds the
// spool's lock, so it fails while a bridge runs on the same spool.
type Offline struct {
	s      *spool.Spool
	unlock func()
}

// OpenOffline locks and opens the spool at dir.
func OpenOffline(dir string) (*Offline, error) {
	unlock, err := spool.Lock(dir)
	if err != nil {
		return nil, err
	}
	s, err := spool.Open(dir)
	if err != nil {
		unlock()
		return nil, err
	}
	return &Offline{s: s, unlock: unlock}, nil
}

// Close releases the spool.
func (o *Offline) Close() { o.unlock() }

var _ Manager = (*Offline)(nil)

// List implements Manager.
func (o *Offline) List() ([]Item, error) {
	metas, err := o.s.List()
	items := make([]Item, 0, len(metas))
	for _, m := range metas {
		items = append(items, Item{Meta: m, State: stateOf(m)})
	}
	return items, err
}

// Dead implements Manager.
func (o *Offline) Dead() ([]Item, error) { return deadItems(o.s) }

// Show implements Manager.
func (o *Offline) Show(id string) (Item, error) {
	if m, err := o.s.Get(id); err == nil {
		return Item{Meta: m, State: stateOf(m)}, nil
	}
	return showDead(o.s, id)
}

// Retry implements Manager: the message is due as soon as the bridge
// starts.
func (o *Offline) Retry(id string) error {
	m, err := o.s.Get(id)
	if err != nil {
		return err
	}
	m.NextAttempt = time.Now().UTC()
	return o.s.Update(m)
}

// RetryAll implements Manager.
func (o *Offline) RetryAll() (int, error) {
	metas, err := o.s.List()
	n := 0
	for _, m := range metas {
		m.NextAttempt = time.Now().UTC()
		if uerr := o.s.Update(m); uerr != nil {
			err = errors.Join(err, uerr)
			continue
		}
		n++
	}
	return n, err
}

// RetryMailbox implements Manager.
func (o *Offline) RetryMailbox(mailbox string) (int, error) {
	metas, err := o.s.List()
	n := 0
	for _, m := range metas {
		if !strings.EqualFold(m.Mailbox, mailbox) {
			continue
		}
		m.NextAttempt = time.Now().UTC()
		if uerr := o.s.Update(m); uerr != nil {
			err = errors.Join(err, uerr)
			continue
		}
		n++
	}
	return n, err
}

// Drop implements Manager.
func (o *Offline) Drop(id string) error {
	if err := o.s.Remove(id); !errors.Is(err, spool.ErrNotFound) {
		return err
	}
	return o.s.RemoveDead(id)
}

// Requeue implements Manager.
func (o *Offline) Requeue(id string) error {
	_, err := o.s.Requeue(id)
	return err
}

// Stats is a summary of the queue for metrics and the status page.
type Stats struct {
	Queued   int // waiting for the first attempt, or being delivered
	Deferred int // an attempt failed; waiting for the next
	Dead     int
	// Oldest is when the oldest queued message was received; zero when
	// the queue is empty.
	Oldest time.Time
	// Waiting says why deferred messages wait: their last replies, the
	// most common first, at most maxWaitReasons.
	Waiting []WaitReason
}

// WaitReason is why some deferred messages wait.
type WaitReason struct {
	Reply string    // the last attempt's reply, e.g. 451 4.2.0 ...
	Count int       // messages waiting for it
	Next  time.Time // the soonest next attempt among them
}

// maxWaitReasons bounds Stats.Waiting.
const maxWaitReasons = 5

// Stats summarises the queue: the queued messages from memory, the dead
// letters by counting their files (not reading them).
func (q *Queue) Stats() Stats {
	dead, _ := q.o.Spool.DeadCount()
	q.mu.Lock()
	defer q.mu.Unlock()
	st := Stats{Dead: dead}
	why := map[string]*WaitReason{}
	for _, e := range q.entries {
		if e.lastReply != "" {
			st.Deferred++
			w := why[e.lastReply]
			if w == nil {
				w = &WaitReason{Reply: e.lastReply, Next: e.due}
				why[e.lastReply] = w
			}
			w.Count++
			if e.due.Before(w.Next) {
				w.Next = e.due
			}
		} else {
			st.Queued++
		}
		if st.Oldest.IsZero() || e.received.Before(st.Oldest) {
			st.Oldest = e.received
		}
	}
	for _, w := range why {
		st.Waiting = append(st.Waiting, *w)
	}
	slices.SortFunc(st.Waiting, func(a, b WaitReason) int {
		return cmp.Or(b.Count-a.Count, a.Next.Compare(b.Next), strings.Compare(a.Reply, b.Reply))
	})
	if len(st.Waiting) > maxWaitReasons {
		st.Waiting = st.Waiting[:maxWaitReasons]
	}
	return st
}
