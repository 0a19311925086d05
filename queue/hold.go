package queue

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/spool"
)

// Holds: Exchange blocks whole sending mailboxes (EXCHANGE.md,
// "Mailbox-level rules"): continuous-error throttling, a full mailbox,
// the daily quota, a mailbox refused as a sender, a login refused. While
// a mailbox is held, none of its messages is attempted but one probe at
// a time, the oldest, at growing intervals: from twice retry_initial,
// doubling, up to holdCap for the reason. The probe's success ends the
// hold and the rest go; a probe refused the same way makes the next
// wait longer. Trying each message instead is what earns the mailbox
// Microsoft's continuous-error throttling, which also stops every other
// application sending as it.

// holdCap is the longest wait between two probes of a held mailbox.
func holdCap(h message.Hold) time.Duration {
	switch h {
	case message.HoldThrottled, message.HoldSenderBlocked, message.HoldDailyQuota:
		return time.Hour // Microsoft's throttle and blocks last; the quota's window frees slowly
	}
	return 15 * time.Minute // an admin's fix: Sent Items emptied, a grant, Set-CASMailbox
}

// hold is a held mailbox; q.mu guards it.
type hold struct {
	reason message.Hold
	reply  string // the reply that began or last renewed it
	since  time.Time
	next   time.Time // when the next probe may go
	step   int       // probes refused so far, plus one
	probe  string    // the probe in flight, "" when none
	id     int64     // tells this hold from an earlier one of the lane
}

// HoldState is a held mailbox as the status page, the metrics and the
// log see it.
type HoldState struct {
	Tenant, Mailbox string
	Reason          message.Hold
	// Reply is Exchange's reply that began the hold or last renewed it.
	Reply     string
	Since     time.Time
	NextProbe time.Time
}

// HoldObserver is told when a mailbox's hold begins, changes (a probe
// refused for another reason), or ends (held false).
type HoldObserver interface {
	MailboxHold(s HoldState, held bool)
}

func (k laneKey) state(h *hold) HoldState {
	return HoldState{Tenant: k.tenant, Mailbox: k.mailbox, Reason: h.reason, Reply: h.reply, Since: h.since, NextProbe: h.next}
}

// holdWait is the wait before probe step of a hold for reason.
func (q *Queue) holdWait(step int, reason message.Hold) time.Duration {
	d := q.settings().RetryInitial
	for i := 0; i < step && d < holdCap(reason); i++ {
		d *= 2
	}
	return min(d, holdCap(reason))
}

// holdLane begins or renews the hold of lane k after an attempt refused
// with e (whose Hold is set), and returns when the lane's next probe
// may go; q.mu is held. Only the probe's refusal renews a hold: the
// attempts that were under way when it began do not make it longer.
// The change, if any, is returned for the observers.
func (q *Queue) holdLane(k laneKey, l *lane, e *message.Error, msgID string, now time.Time) (time.Time, *holdChange) {
	reply := message.ReplyOf(e).String()
	h := l.hold
	var ch *holdChange
	switch {
	case h == nil:
		q.holdSeq++
		h = &hold{reason: e.Hold, reply: reply, since: now, step: 1, id: q.holdSeq}
		h.next = now.Add(q.holdWait(h.step, h.reason))
		l.hold = h
		ch = &holdChange{state: k.state(h), held: true}
	case h.probe == msgID:
		h.probe = ""
		h.step++
		h.next = now.Add(q.holdWait(h.step, e.Hold))
		if h.reason != e.Hold {
			h.reason, h.reply = e.Hold, reply
			ch = &holdChange{state: k.state(h), held: true}
		}
		h.reply = reply
	}
	if e.RetryAt.After(h.next) {
		h.next = e.RetryAt
	}
	return h.next, ch
}

// releaseLane ends lane k's hold, if any; q.mu is held.
func (q *Queue) releaseLane(k laneKey, l *lane) *holdChange {
	if l == nil || l.hold == nil {
		return nil
	}
	ch := &holdChange{state: k.state(l.hold), held: false}
	l.hold = nil
	return ch
}

// holdChange is a hold that began, changed or ended, to tell the log and
// the observers once q.mu is released.
type holdChange struct {
	state HoldState
	held  bool
}

func (q *Queue) announce(changes ...*holdChange) {
	for _, ch := range changes {
		if ch == nil {
			continue
		}
		s := ch.state
		log := q.o.Log.With().Str("tenant", s.Tenant).Str("mailbox", s.Mailbox).Str("reason", string(s.Reason)).Logger()
		if ch.held {
			log.Error().Str("reply", s.Reply).Time("next_probe", s.NextProbe).Str("event", "mailbox_held").
				Msg("mailbox held: Exchange Online refuses the mailbox, not the message (" + s.Reason.Words() +
					"); its messages wait, and one probe at a time finds out when it is over")
		} else {
			log.Info().Dur("held_for", time.Since(s.Since).Round(time.Second)).Str("event", "mailbox_released").
				Msg("mailbox hold lifted: its messages go")
		}
		if q.o.Holds != nil {
			q.o.Holds.MailboxHold(s, ch.held)
		}
	}
}

// Holds returns the mailboxes held now.
func (q *Queue) Holds() []HoldState {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []HoldState
	for k, l := range q.lanes {
		if l.hold != nil {
			out = append(out, k.state(l.hold))
		}
	}
	slices.SortFunc(out, func(a, b HoldState) int {
		return strings.Compare(a.Tenant+"/"+a.Mailbox, b.Tenant+"/"+b.Mailbox)
	})
	return out
}

// HoldOf returns the hold of a tenant's mailbox, if it is held.
func (q *Queue) HoldOf(tenant, mailbox string) (HoldState, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	k := laneKey{tenant, strings.ToLower(mailbox)}
	if l := q.lanes[k]; l != nil && l.hold != nil {
		return k.state(l.hold), true
	}
	return HoldState{}, false
}

// NoteHold begins the hold of a tenant's mailbox after a refusal that
// did not go through the queue (sync mode), or ends it after a success
// (err nil); a failure that is not the mailbox's changes nothing.
func (q *Queue) NoteHold(tenant, mailbox string, err error) {
	k := laneKey{tenant, strings.ToLower(mailbox)}
	var e *message.Error
	q.mu.Lock()
	var ch *holdChange
	switch {
	case err == nil:
		ch = q.releaseLane(k, q.lanes[k])
	case errors.As(err, &e) && e.Hold != "":
		if l := q.lane(k); l.hold == nil {
			_, ch = q.holdLane(k, l, e, "", time.Now())
		}
	}
	q.mu.Unlock()
	q.announce(ch)
	q.kick()
}

// heldError is what a message that meets a hold is told: the hold's
// reply, in the hold's class, so that a hybrid device gets "queued" and
// a sync device a 451 naming the reason.
func heldError(s HoldState) error {
	class := message.Held
	if s.Reason == message.HoldSetup {
		class = message.Setup
	}
	e := &message.Error{Class: class, Stage: message.StageMail, Hold: s.Reason}
	if r, ok := message.ParseReply(s.Reply); ok {
		e.Reply = r
	} else {
		e.Err = errors.New("the mailbox is held")
	}
	return e
}

// meetHold is what dispatch found to do about an entry of a held lane:
// tell its waiting session, and record once per hold that it waits.
type meetHold struct {
	known   spool.Meta // what the entry knew; the event reads the record
	state   HoldState
	waiter  chan result
	persist bool // the record on disk still says an attempt is under way
}

// met does what dispatch found, q.mu released.
func (q *Queue) met(ms []meetHold) {
	for _, m := range ms {
		err := heldError(m.state)
		if m.waiter != nil {
			m.waiter <- result{err: err}
		}
		meta, gerr := q.o.Spool.Get(m.known.ID)
		if gerr != nil {
			meta = m.known
		}
		if m.persist && gerr == nil {
			meta.Attempting = false
			if uerr := q.o.Spool.Update(meta); uerr != nil && !errors.Is(uerr, spool.ErrNotFound) {
				q.o.Log.Error().Err(uerr).Str("msg_id", meta.ID).Msg("could not record in the spool that the message waits for its mailbox's hold")
			}
		}
		ev := event(audit.Deferred, meta)
		ev.Reply, ev.RetryBy, ev.NextAttempt, ev.Err = m.state.Reply, audit.RetryByQueue, m.state.NextProbe, err
		ev.Detail = fmt.Sprintf("not attempted: its mailbox is held (%s); the mailbox's oldest message probes it, next at %s",
			m.state.Reason.Words(), m.state.NextProbe.UTC().Format(time.RFC3339))
		ev.SetupProblem = m.state.Reason == message.HoldSetup
		q.o.Events.Observe(ev)
	}
}

// holdsFromSpool rebuilds, at start, the holds the last run had: a lane
// whose messages' last reply is a mailbox-wide refusal is held again,
// its first probe when the earliest of them was due. Without this every
// held message would be due at once after a restart.
func (q *Queue) holdsFromSpool(metas []spool.Meta) {
	for _, m := range metas {
		r, ok := message.ParseReply(m.LastReply)
		if !ok {
			continue
		}
		reason := message.HoldOfReply(r)
		if reason == "" {
			continue
		}
		k := laneKey{m.Tenant, strings.ToLower(m.Mailbox)}
		l := q.lane(k)
		if l.hold == nil {
			q.holdSeq++
			l.hold = &hold{reason: reason, reply: m.LastReply, since: time.Now(), step: 1, next: m.NextAttempt, id: q.holdSeq}
		} else if m.NextAttempt.Before(l.hold.next) {
			l.hold.next = m.NextAttempt
		}
	}
}
