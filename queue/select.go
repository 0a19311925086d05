package queue

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/spool"
)

// Filter selects messages for the queue tools: every field set must
// match. State "" is every queued message (queued, deferred,
// delivering); "dead" the dead letters.
type Filter struct {
	Device, Mailbox, Tenant string
	State                   string
	// OlderThan selects messages received longer ago than this.
	OlderThan time.Duration
}

// Empty says whether the filter selects every queued message.
func (f Filter) Empty() bool { return f == Filter{} }

// Check says what is wrong with the filter, if anything.
func (f Filter) Check() error {
	switch f.State {
	case "", StateQueued, StateDeferred, StateDelivering, StateDead:
	default:
		return fmt.Errorf("unknown state %q: use queued, deferred, delivering or dead", f.State)
	}
	if f.OlderThan < 0 {
		return errors.New("older-than must not be negative")
	}
	return nil
}

// Match says whether it is selected.
func (f Filter) Match(it Item, now time.Time) bool {
	switch {
	case f.Device != "" && it.Device != f.Device,
		f.Mailbox != "" && !strings.EqualFold(it.Mailbox, f.Mailbox),
		f.Tenant != "" && it.Tenant != f.Tenant,
		f.OlderThan > 0 && now.Sub(it.Received) < f.OlderThan:
		return false
	case f.State == "":
		return it.State != StateDead
	}
	return it.State == f.State
}

// Values is the filter as URL query parameters; FilterOf reads them.
func (f Filter) Values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"device": f.Device, "mailbox": f.Mailbox, "tenant": f.Tenant, "state": f.State} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if f.OlderThan > 0 {
		v.Set("older_than", f.OlderThan.String())
	}
	return v
}

// FilterOf reads a filter from URL query parameters.
func FilterOf(v url.Values) (Filter, error) {
	f := Filter{Device: v.Get("device"), Mailbox: v.Get("mailbox"), Tenant: v.Get("tenant"), State: v.Get("state")}
	if s := v.Get("older_than"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return f, fmt.Errorf("older_than: %w", err)
		}
		f.OlderThan = d
	}
	return f, f.Check()
}

// Page is a page of the messages a filter selects, oldest first.
type Page struct {
	Items []Item `json:"messages"`
	// Next continues the listing after this page (Select's after); ""
	// when there is no more.
	Next string `json:"next,omitempty"`
	// Matched is how many messages the filter selects in all.
	Matched int `json:"matched"`
}

// Page sizes: the most one page holds, and what a request without a
// limit gets.
const (
	MaxPage     = 5000
	DefaultPage = 1000
)

// cursor is an item's place in the listing's order: received, then ID.
func cursor(it Item) string {
	return strconv.FormatInt(it.Received.UnixNano(), 36) + "." + it.ID
}

func before(a, b Item) int {
	return cmp.Or(a.Received.Compare(b.Received), strings.Compare(a.ID, b.ID))
}

// selection gathers the page of matching items after a cursor, in
// memory bounded by the page, not by the queue.
type selection struct {
	f      Filter
	now    time.Time
	after  Item // zero: from the start
	hasCur bool
	limit  int
	items  []Item
	n      int
}

func newSelection(f Filter, after string, limit int) (*selection, error) {
	s := &selection{f: f, now: time.Now(), limit: min(max(limit, 1), MaxPage)}
	if limit <= 0 {
		s.limit = DefaultPage
	}
	if after != "" {
		ts, id, ok := strings.Cut(after, ".")
		ns, err := strconv.ParseInt(ts, 36, 64)
		if !ok || err != nil || id == "" {
			return nil, fmt.Errorf("bad continuation %q: use the next value of the previous page", after)
		}
		s.after, s.hasCur = Item{Meta: spool.Meta{ID: id, Received: time.Unix(0, ns)}}, true
	}
	return s, nil
}

// add considers one item.
func (s *selection) add(it Item) {
	if !s.f.Match(it, s.now) {
		return
	}
	s.n++
	if s.hasCur && before(it, s.after) <= 0 {
		return
	}
	s.items = append(s.items, it)
	if len(s.items) > 2*s.limit {
		s.trim()
	}
}

// trim keeps the first limit+1 items (one more says whether a next page
// exists).
func (s *selection) trim() {
	slices.SortFunc(s.items, before)
	if len(s.items) > s.limit+1 {
		s.items = slices.Clip(s.items[:s.limit+1])
	}
}

func (s *selection) page() Page {
	s.trim()
	p := Page{Items: s.items, Matched: s.n}
	if len(p.Items) > s.limit {
		p.Items = p.Items[:s.limit]
		p.Next = cursor(p.Items[len(p.Items)-1])
	}
	if p.Items == nil {
		p.Items = []Item{}
	}
	return p
}

// Select implements Manager: the queued messages are read from memory,
// the dead letters (state dead) from the spool.
func (q *Queue) Select(f Filter, after string, limit int) (Page, error) {
	q.waitLoaded()
	s, err := newSelection(f, after, limit)
	if err != nil {
		return Page{}, err
	}
	if f.State == StateDead {
		items, err := q.Dead()
		for _, it := range items {
			s.add(it)
		}
		return s.page(), err
	}
	q.mu.Lock()
	for _, e := range q.entries {
		s.add(e.item())
	}
	q.mu.Unlock()
	p := s.page()
	q.full(p.Items)
	return p, nil
}

// RetryWhere implements Manager: the selected queued messages are due
// now, and their mailboxes' pauses and holds lifted (the admin says the
// cause is fixed).
func (q *Queue) RetryWhere(f Filter) (int, error) {
	q.waitLoaded()
	if f.State == StateDead {
		return 0, errors.New("dead letters are not retried: requeue them (smtpbridge queue requeue ID)")
	}
	now := time.Now()
	q.mu.Lock()
	n := 0
	lanes := map[laneKey]bool{}
	for _, e := range q.entries {
		if f.Match(e.item(), now) {
			e.due = now
			lanes[keyOf(e)] = true
			n++
		}
	}
	var changes []*holdChange
	for k := range lanes {
		l := q.lanes[k]
		if l == nil {
			continue
		}
		l.pausedUntil = time.Time{}
		if l.hold != nil {
			changes = append(changes, q.releaseLane(k, l))
		}
	}
	q.mu.Unlock()
	q.announce(changes...)
	q.kick()
	return n, nil
}

// DropWhere implements Manager: the selected messages are deleted, each
// logged; a message being delivered is left (and counted in busy).
func (q *Queue) DropWhere(f Filter) (int, error) {
	q.waitLoaded()
	if f.Empty() {
		return 0, errors.New("name what to drop: a device, mailbox, tenant, state or age")
	}
	now := time.Now()
	if f.State == StateDead {
		items, err := q.Dead()
		n := 0
		for _, it := range items {
			if !f.Match(it, now) {
				continue
			}
			if rerr := q.Drop(it.ID); rerr != nil && !errors.Is(rerr, ErrNotFound) {
				err = errors.Join(err, rerr)
				continue
			}
			n++
		}
		return n, err
	}
	q.mu.Lock()
	var ids []string
	for id, e := range q.entries {
		if !e.running && !e.rewriting && f.Match(e.item(), now) {
			ids = append(ids, id)
		}
	}
	q.mu.Unlock()
	var err error
	n := 0
	for _, id := range ids {
		if derr := q.Drop(id); derr != nil {
			if !errors.Is(derr, ErrNotFound) && !errors.Is(derr, ErrBusy) {
				err = errors.Join(err, derr)
			}
			continue
		}
		n++
	}
	return n, err
}

// Select implements Manager.
func (o *Offline) Select(f Filter, after string, limit int) (Page, error) {
	s, err := newSelection(f, after, limit)
	if err != nil {
		return Page{}, err
	}
	items, err := o.among(f)
	for _, it := range items {
		s.add(it)
	}
	return s.page(), err
}

// among reads the messages f chooses from: the dead letters for state
// dead, else the queued ones.
func (o *Offline) among(f Filter) ([]Item, error) {
	if f.State == StateDead {
		return o.Dead()
	}
	return o.List()
}

// RetryWhere implements Manager.
func (o *Offline) RetryWhere(f Filter) (int, error) {
	if f.State == StateDead {
		return 0, errors.New("dead letters are not retried: requeue them (smtpbridge queue requeue ID)")
	}
	items, err := o.List()
	n, now := 0, time.Now()
	for _, it := range items {
		if !f.Match(it, now) {
			continue
		}
		it.NextAttempt = now.UTC()
		if uerr := o.s.Update(it.Meta); uerr != nil {
			err = errors.Join(err, uerr)
			continue
		}
		n++
	}
	return n, err
}

// DropWhere implements Manager.
func (o *Offline) DropWhere(f Filter) (int, error) {
	if f.Empty() {
		return 0, errors.New("name what to drop: a device, mailbox, tenant, state or age")
	}
	items, err := o.among(f)
	n, now := 0, time.Now()
	for _, it := range items {
		if !f.Match(it, now) {
			continue
		}
		if derr := o.Drop(it.ID); derr != nil {
			err = errors.Join(err, derr)
			continue
		}
		n++
	}
	return n, err
}
