package bridge

import (
	"context"
	"errors"
	"io"
	"time"
)

// Message is one message on its way to Exchange Online, after the device's
// policy was applied.
type Message struct {
	ID      string // the bridge's message ID, in logs and the Received field
	Device  *Device
	Tenant  string
	Mailbox string   // the XOAUTH2 user
	From    string   // envelope sender (the mailbox under the rewrite policy)
	To      []string // envelope recipients
	Mode    string   // the device's delivery mode (hybrid, queue, sync)
	// Size is the message's size when known (spooled), declared to
	// Exchange with SIZE= so that it refuses a too-large message at MAIL
	// FROM, before the upload.
	Size int64
	// Body is the whole message, header block first. It is read once,
	// as it arrives from the device; a read error aborts the submission.
	Body io.Reader
}

// Receipt is what the upstream said when it took a message.
type Receipt struct {
	// Reply is Exchange's final reply text, e.g.
	// "2.0.0 OK <...@...prod.outlook.com> [Hostname=...]".
	Reply string
	// QueueID is Exchange's message ID from Reply, when it has one.
	QueueID string
	// Enhanced is the reply's enhanced status code (2.0.0).
	Enhanced [3]int
}

// Deliverer hands a message to the next hop. The session calls it while
// the device waits in sync mode; the queue calls it for spooled messages.
//
// Errors should be *UpstreamError, *tokenstore.Error or wrap a source read
// error; anything else is answered as a temporary failure.
type Deliverer interface {
	Deliver(ctx context.Context, m *Message) (Receipt, error)
}

// Spooler takes responsibility for a message in hybrid and queue mode;
// *queue.Queue is one.
type Spooler interface {
	// Spool reads m.Body to its end into durable storage and queues the
	// message. It returns once the message is safe, or an error: a
	// *SourceError if the device's data could not be read, a
	// *StorageError if it could not be stored. Either way nothing is
	// queued. With wait, the caller may Wait for the first attempt.
	Spool(m *Message, wait bool) (Pending, error)
}

// Pending is a spooled message whose first delivery attempt a device
// may wait for.
type Pending interface {
	// Wait waits up to d for the first attempt. done is false if it did
	// not finish in time: the queue then owns the message's fate. If done
	// and err is permanent (see Permanent), the queue has dropped the
	// message and the device is to be told; if err is temporary, the
	// queue retries it.
	Wait(d time.Duration) (r Receipt, err error, done bool)
}

// StorageError is a failure to write a message to the spool (disk full,
// permissions). The device gets 452 4.3.1 and nothing was accepted.
type StorageError struct{ Err error }

func (e *StorageError) Error() string { return "spool: " + e.Err.Error() }
func (e *StorageError) Unwrap() error { return e.Err }

// Permanent says whether a delivery error means Exchange will never take
// the message as it is: a 5xx refusal of the message itself. Everything
// else (4xx, network, TLS, tokens, Exchange refusing the bridge's own
// login) is worth another attempt.
func Permanent(err error) bool {
	var ue *UpstreamError
	return errors.As(err, &ue) && !ue.Temporary
}
