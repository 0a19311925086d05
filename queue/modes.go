package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/countio"
	"github.com/smtpbridge/smtpbridge/message"
)

// Modes hands each message to the Deliverer of its device's delivery
// mode (message.ModeHybrid, ModeQueue, ModeSync).
type Modes map[string]Deliverer

// Deliver implements Deliverer.
func (ms Modes) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	d := ms[m.Mode]
	if d == nil {
		return message.Receipt{}, fmt.Errorf("no delivery mode %q", m.Mode)
	}
	return d.Deliver(ctx, m)
}

// Hybrid is hybrid mode: the queue plus a wait. The device gets
// Exchange's answer when the first attempt ends within sync_timeout
// (delivered, or refused for good), and "queued" otherwise: a temporary
// failure, throttling, an outage or the deadline. A scanner that would
// drop a scan on a 4xx therefore never sees one for a problem on
// Exchange's side.
func (q *Queue) Hybrid() Deliverer { return hybrid{q} }

type hybrid struct{ q *Queue }

func (h hybrid) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	p, err := h.q.spool(m, true)
	if err != nil {
		return message.Receipt{}, err
	}
	receipt, err, done := p.wait(ctx, h.q.settings().SyncTimeout)
	switch {
	case done && err == nil:
		return receipt, nil
	case done && message.IsPermanent(err):
		// The queue has dropped it: the device is told.
		return message.Receipt{}, err
	}
	return message.Receipt{Queued: true}, nil
}

// Sync is sync mode: the message goes straight to the transport while the
// device waits, and nothing is kept. A failure the device may retry is
// its to retry (it gets a 4xx).
type Sync struct {
	Transport Deliverer
	Events    audit.Observer
	// Holds are the mailboxes' holds, which sync mode keeps to as the
	// queue does: a held mailbox's message is not sent (the device gets
	// a 451 naming why), and a mailbox-wide refusal holds the mailbox
	// for the queue too. Nil: none.
	Holds Holder
}

// Holder keeps the mailboxes' holds: the Queue.
type Holder interface {
	HoldOf(tenant, mailbox string) (HoldState, bool)
	NoteHold(tenant, mailbox string, err error)
}

// Deliver implements Deliverer.
func (s Sync) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	start := time.Now()
	if s.Holds != nil {
		if h, held := s.Holds.HoldOf(m.Tenant, m.Mailbox); held {
			err := heldError(h)
			ev := syncEvent(audit.Deferred, m, 0)
			ev.Reply, ev.RetryBy, ev.Err = message.ReplyOf(err).String(), audit.RetryByDevice, err
			ev.Detail = "not sent: its mailbox is held (" + h.Reason.Words() + ")"
			ev.SetupProblem = h.Reason == message.HoldSetup
			s.observe(ev)
			return message.Receipt{}, err
		}
	}
	counted := &countio.Reader{R: m.Body}
	mm := *m
	mm.Body = counted
	// The device can only retry all recipients: all or none.
	mm.AllRecipients = true
	receipt, err := s.Transport.Deliver(ctx, &mm)
	if s.Holds != nil && message.StageOf(err) != message.StageSource {
		s.Holds.NoteHold(m.Tenant, m.Mailbox, err)
	}
	if message.StageOf(err) == message.StageSource {
		// The device's data did not arrive: nothing was taken, and the
		// device side reports it.
		return receipt, err
	}
	ev := syncEvent(audit.Received, m, counted.N)
	ev.To, ev.Remote, ev.MessageID = m.To, m.Remote, m.MessageID
	if err == nil || message.IsPermanent(err) {
		s.observe(ev)
	}
	took := time.Since(start)
	switch {
	case err == nil:
		ev = syncEvent(audit.Delivered, m, counted.N)
		ev.Reply, ev.UpstreamID, ev.Accepted, ev.Duration = receipt.Reply.String(), receipt.UpstreamID, start, took
	case message.IsPermanent(err):
		ev = syncEvent(audit.Bounced, m, counted.N)
		ev.Reply, ev.Reason, ev.Err, ev.Duration, ev.Detail = message.ReplyOf(err).String(), audit.ReasonPermanent, err, took, noteOf(err)
	default:
		ev = syncEvent(audit.Deferred, m, counted.N)
		ev.Reply, ev.RetryBy, ev.Err, ev.Duration = message.ReplyOf(err).String(), audit.RetryByDevice, err, took
		ev.SetupProblem = message.ClassOf(err) == message.Setup
	}
	s.observe(ev)
	return receipt, err
}

func (s Sync) observe(ev audit.Event) {
	if s.Events != nil {
		s.Events.Observe(ev)
	}
}

func syncEvent(k audit.Kind, m *message.Message, size int64) audit.Event {
	return audit.Event{Kind: k, MsgID: m.ID, Device: m.Device, Tenant: m.Tenant, Mailbox: m.Mailbox,
		From: m.From, Rcpts: len(m.To), Size: size, Mode: m.Mode}
}
