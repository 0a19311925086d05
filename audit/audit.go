// Package audit is smtpbridge's mail log: one structured line per message
// event (received, delivered, deferred, bounced, dead, ...), in the spirit
// of chasquid's maillog. The session and the queue describe what happened
// to a message as an Event; a Logger writes it to the process log and,
// optionally, to a file of its own, and other Observers (metrics, the
// status page) count the same events, so that the log, the metrics and the
// page never disagree.
//
// An Event carries the envelope sender, the recipient count, the size and
// Exchange's reply. It must never carry a password, a client secret, a
// token or any part of a message body.
package audit

import (
	"time"
)

// Kind is what happened to a message.
type Kind string

// Message events, in the order a message meets them.
const (
	// Received: the bridge took the message from the device: it is in
	// the spool (hybrid and queue mode), or was read in full and handed
	// to Exchange (sync mode).
	Received Kind = "received"
	// Rejected: the bridge refused the message or a recipient itself
	// (policy, size, recipients, a malformed header); nothing was kept.
	Rejected Kind = "rejected"
	// Delivered: Exchange Online answered 250; UpstreamID is its ID.
	Delivered Kind = "delivered"
	// Deferred: an attempt failed for now. RetryBy says who tries again:
	// the queue (at NextAttempt) or, in sync mode, the device, which was
	// told 451.
	Deferred Kind = "deferred"
	// Bounced: Exchange refused the message for good. In hybrid and sync
	// mode the device got the refusal; a queued message becomes a dead
	// letter next.
	Bounced Kind = "bounced"
	// Dead: the message moved to the dead letters; Reason is permanent
	// (Exchange or the bridge refused it), expired (older than max_age)
	// or poison (its attempts failed to end twice in a row).
	Dead Kind = "dead"
	// DSN: a delivery status notification about a dead letter was
	// queued for bounce_to.
	DSN Kind = "dsn"
	// Dropped and Requeued are an admin's queue commands.
	Dropped  Kind = "dropped"
	Requeued Kind = "requeued"
)

// Reasons, in Event.Reason.
const (
	// Rejected.
	ReasonPolicy     = "policy"     // sender or recipient not allowed, or not a plain address
	ReasonSize       = "size"       // larger than max_message_bytes, or an overlong line or header
	ReasonRecipients = "recipients" // more than max_recipients
	ReasonMalformed  = "malformed"  // the header block could not be parsed
	ReasonRate       = "rate"       // the device's max_messages_per_hour
	// Bounced and Dead.
	ReasonPermanent = "permanent" // Exchange refused the message
	ReasonExpired   = "expired"   // not delivered within max_age
	// ReasonPoison: the message's attempts panicked, ran past their
	// time bound or ended with the bridge twice in a row.
	ReasonPoison = "poison"
)

// Who retries a deferred message, in Event.RetryBy.
const (
	RetryByQueue  = "queue"
	RetryByDevice = "device"
)

// Event is one thing that happened to one message.
type Event struct {
	Kind    Kind
	MsgID   string
	Device  string
	Tenant  string
	Mailbox string // the mailbox it is sent as
	From    string // the envelope sender given to Exchange
	Rcpts   int    // recipient count
	// To are the envelope recipients, on Received (the message trace
	// finds a message by them).
	To []string
	// Remote is the device's address and MessageID its Message-ID
	// header, on Received.
	Remote    string
	MessageID string
	// Recipient is set on the events of one recipient's own outcome
	// (refused for good, or for now, while others were delivered).
	Recipient string
	Size      int64  // bytes, as submitted (with the bridge's Received field)
	Mode      string // the delivery mode: hybrid, queue, sync
	// Reply is Exchange's reply ("550 5.7.60 ..."), or for Rejected the
	// bridge's own reply to the device.
	Reply      string
	UpstreamID string // Exchange's message ID, for Delivered
	Attempt    int    // the attempt number, for queue events
	Reason     string // see the Reason constants
	RetryBy    string // for Deferred
	// Accepted is when the bridge took the message, for the delivery
	// latency of Delivered.
	Accepted    time.Time
	NextAttempt time.Time     // for Deferred by the queue
	Duration    time.Duration // of the attempt or session step
	// Stage is where a rejection happened (mail, rcpt, data).
	Stage string
	// SetupProblem marks a failure that is the tenant's configuration,
	// not the message (a refused token, Exchange refusing the bridge's
	// login): it is logged at error level.
	SetupProblem bool
	// Err is the failure, for the log. Its text must be free of secrets;
	// the bridge's errors carry replies and Entra's error descriptions,
	// never requests.
	Err error
	// DSNFor is set on the events of a delivery status notification the
	// bridge made: the ID of the message it reports. Such a message was
	// never received from a device, so counters of device messages skip
	// it.
	DSNFor string
	// Detail is a free-form note: the DSN's ID and address, the admin
	// action.
	Detail string
}

// Observer is told about every message event.
type Observer interface {
	Observe(Event)
}

// Tee sends each event to several observers, in order.
type Tee []Observer

// Observe implements Observer.
func (t Tee) Observe(e Event) {
	for _, o := range t {
		if o != nil {
			o.Observe(e)
		}
	}
}

// Nop is an Observer that ignores every event.
type Nop struct{}

// Observe implements Observer.
func (Nop) Observe(Event) {}
