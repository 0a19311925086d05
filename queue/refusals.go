package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
)

// Refusals keeps a mailbox from earning Exchange's continuous-error
// throttling (550 5.2.252 and 5.2.255 "Sender throttled due to
// continuous send as denied / invalid recipients errors"), which blocks
// the mailbox for every application: for a window it remembers, per
// mailbox, the senders Exchange refused as Send As (5.7.60, 5.2.252 and
// 5.2.0 SendAsDenied, Graph's ErrorSendAsDenied) and the recipients it
// refused as unknown (5.1.10, Graph's ErrorInvalidRecipients), and
// refuses a message that repeats one itself, with Exchange's reply,
// without submitting it. A reload or the window's end forgets them.
//
// It wraps the transport and is a Deliverer like it, so that every
// delivery mode goes through it.
type Refusals struct {
	next Deliverer
	obs  RefusalObserver

	mu      sync.Mutex
	window  time.Duration
	senders map[refusalKey]remembered
	rcpts   map[refusalKey]remembered
}

// RefusalObserver counts the messages (or recipients) the bridge refused
// itself; reason is "send_as" or "unknown_recipient".
type RefusalObserver interface {
	RefusedLocally(tenant, reason string)
}

type refusalKey struct{ tenant, mailbox, addr string }

type remembered struct {
	reply message.Reply
	stage message.Stage
	at    time.Time
}

// DefaultRefusalWindow is how long a refusal is remembered by default.
const DefaultRefusalWindow = time.Hour

// NewRefusals wraps next; window 0 remembers nothing.
func NewRefusals(next Deliverer, window time.Duration, obs RefusalObserver) *Refusals {
	return &Refusals{next: next, obs: obs, window: window,
		senders: map[refusalKey]remembered{}, rcpts: map[refusalKey]remembered{}}
}

// Reset forgets every refusal and takes a new window (a reload).
func (r *Refusals) Reset(window time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.window = window
	clear(r.senders)
	clear(r.rcpts)
}

func key(m *message.Message, addr string) refusalKey {
	return refusalKey{m.Tenant, strings.ToLower(m.Mailbox), strings.ToLower(addr)}
}

// recall returns what is remembered of k, forgetting it past the window;
// r.mu is held.
func (r *Refusals) recall(set map[refusalKey]remembered, k refusalKey, now time.Time) (remembered, bool) {
	v, ok := set[k]
	if ok && now.Sub(v.at) >= r.window {
		delete(set, k)
		return remembered{}, false
	}
	return v, ok
}

// Deliver implements Deliverer.
func (r *Refusals) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	now := time.Now()
	r.mu.Lock()
	var sender *remembered
	var senderAddr string
	for _, a := range []string{m.HeaderFrom, m.From} {
		if a == "" || strings.EqualFold(a, m.Mailbox) {
			continue
		}
		if v, ok := r.recall(r.senders, key(m, a), now); ok {
			sender, senderAddr = &v, a
			break
		}
	}
	var pre []*message.Error
	var to []string
	for _, rcpt := range m.To {
		if v, ok := r.recall(r.rcpts, key(m, rcpt), now); ok {
			pre = append(pre, v.error(m, rcpt, "recipient "+rcpt))
		} else {
			to = append(to, rcpt)
		}
	}
	r.mu.Unlock()
	if sender != nil {
		r.count(m.Tenant, "send_as", 1)
		return message.Receipt{}, sender.error(m, "", "sender "+senderAddr)
	}
	if len(pre) > 0 {
		r.count(m.Tenant, "unknown_recipient", len(pre))
		if len(to) == 0 || m.AllRecipients {
			// Nobody left, or the device retries all or none (sync):
			// refused as a whole, as the transports refuse a message
			// whose every recipient Exchange refused.
			return message.Receipt{Refused: pre}, pre[0]
		}
	}
	mm := *m
	mm.To = to
	receipt, err := r.next.Deliver(ctx, &mm)
	r.learn(m, receipt, err, now)
	receipt.Refused = append(receipt.Refused, pre...)
	return receipt, err
}

// error is the refusal remembered, for the message m, as Exchange gave it.
func (v remembered) error(m *message.Message, rcpt, what string) *message.Error {
	return &message.Error{Class: message.Permanent, Stage: v.stage, Reply: v.reply, Recipient: rcpt,
		Note: fmt.Sprintf("refused by the bridge, not sent: Exchange Online refused %s for mailbox %s at %s; repeating it would earn the mailbox continuous-error throttling",
			what, m.Mailbox, v.at.UTC().Format(time.RFC3339))}
}

// learn remembers the Send As and unknown-recipient refusals of one
// delivery.
func (r *Refusals) learn(m *message.Message, receipt message.Receipt, err error, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.window <= 0 {
		return
	}
	var e *message.Error
	if errors.As(err, &e) {
		switch {
		case message.SendAsRefusal(e):
			// At MAIL it is the envelope sender; after the data (and
			// through Graph) the header From.
			addr := m.HeaderFrom
			if e.Stage == message.StageMail || addr == "" {
				addr = m.From
			}
			if addr != "" && !strings.EqualFold(addr, m.Mailbox) {
				r.senders[key(m, addr)] = remembered{e.Reply, e.Stage, now}
			}
		case message.UnknownRecipient(e):
			for _, rcpt := range refusedRecipients(e, m.To) {
				r.rcpts[key(m, rcpt)] = remembered{e.Reply, e.Stage, now}
			}
		}
	}
	for _, re := range receipt.Refused {
		if message.UnknownRecipient(re) && re.Recipient != "" {
			r.rcpts[key(m, re.Recipient)] = remembered{re.Reply, re.Stage, now}
		}
	}
}

// refusedRecipients are the recipients an unknown-recipient refusal of a
// whole message is about: the one it names, those of to its text names
// (Graph's ErrorInvalidRecipients), or the only one.
func refusedRecipients(e *message.Error, to []string) []string {
	if e.Recipient != "" {
		return []string{e.Recipient}
	}
	var named []string
	text := strings.ToLower(e.Reply.Text)
	for _, rcpt := range to {
		if strings.Contains(text, strings.ToLower(rcpt)) {
			named = append(named, rcpt)
		}
	}
	if len(named) == 0 && len(to) == 1 {
		return to
	}
	return named
}

func (r *Refusals) count(tenant, reason string, n int) {
	if r.obs == nil {
		return
	}
	for range n {
		r.obs.RefusedLocally(tenant, reason)
	}
}
