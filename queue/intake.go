package queue

import (
	"context"
	"io"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/spool"
)

// How a device's message enters the queue: stored, committed, queued, and
// for hybrid mode waited for.

// Deliver implements Deliverer for queue mode: the message is stored and
// queued, and the receipt says Queued. A *message.Error at StageSource
// (the device's data could not be read) or StageSpool (it could not be
// stored) means nothing was queued.
func (q *Queue) Deliver(_ context.Context, m *message.Message) (message.Receipt, error) {
	if _, err := q.spool(m, false); err != nil {
		return message.Receipt{}, err
	}
	return message.Receipt{Queued: true}, nil
}

// spool stores a device's message and queues it; with wait, its pending
// can wait for the first attempt.
func (q *Queue) spool(m *message.Message, wait bool) (*pending, error) {
	now := time.Now().UTC()
	meta := spool.Meta{
		ID: m.ID, Device: m.Device, Tenant: m.Tenant, Mailbox: m.Mailbox, From: m.From, HeaderFrom: m.HeaderFrom, To: m.To, DSN: m.DSN, Received: now,
		// The first attempt follows at once; the record says so already,
		// so that a crash during it makes the restart wait before the next.
		Attempts: 1, NextAttempt: now.Add(q.backoff(1)),
	}
	return q.add(meta, m.Body, wait, func(meta spool.Meta) {
		ev := event(audit.Received, meta)
		ev.Mode, ev.To, ev.Remote, ev.MessageID = m.Mode, m.To, m.Remote, m.MessageID
		q.o.Events.Observe(ev)
	})
}

// add stores a message and queues it. committed, if set, is called once
// the message is safe on disk and before its first attempt starts.
func (q *Queue) add(meta spool.Meta, body io.Reader, wait bool, committed func(spool.Meta)) (*pending, error) {
	// The first attempt starts at once, paid for by this record: the
	// record says it is under way (the poison rule).
	meta.Attempting = true
	w, err := q.o.Spool.Create(meta)
	if err != nil {
		return nil, &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: err}
	}
	src := &message.SourceReader{R: body}
	if _, err := io.Copy(w, src); err != nil {
		w.Abort()
		if src.Err != nil {
			return nil, &message.Error{Class: message.Temporary, Stage: message.StageSource, Err: src.Err}
		}
		return nil, &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: err}
	}
	meta, err = w.Commit()
	if err != nil {
		return nil, &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: err}
	}
	if committed != nil {
		committed(meta)
	}
	e := q.entryOf(meta, time.Now())
	e.paid, e.paidAt = true, e.due
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

// pending is a spooled message whose first attempt a device may wait for.
type pending struct {
	q  *Queue
	id string
	ch chan result
}

// wait waits up to d (or until ctx ends) for the first attempt. done is
// false if it did not finish in time: the queue then owns the message's
// fate.
func (p *pending) wait(ctx context.Context, d time.Duration) (message.Receipt, error, bool) {
	if p.ch == nil {
		return message.Receipt{}, nil, false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-p.ch:
		return r.receipt, r.err, true
	case <-t.C:
	case <-ctx.Done():
	}
	p.q.mu.Lock()
	defer p.q.mu.Unlock()
	if e := p.q.entries[p.id]; e != nil && e.waiter == p.ch {
		e.waiter = nil // from now on the queue alone decides
		return message.Receipt{}, nil, false
	}
	// settle took the waiter and sent the result under the same lock.
	r := <-p.ch
	return r.receipt, r.err, true
}
