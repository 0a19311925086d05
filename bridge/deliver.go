package bridge

import (
	"context"
	"io"
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
}

// Deliverer hands a message to the next hop. The session calls it while
// the device waits; a spool can stand in front of it later.
//
// Errors should be *UpstreamError, *tokenstore.Error or wrap a source read
// error; anything else is answered as a temporary failure.
type Deliverer interface {
	Deliver(ctx context.Context, m *Message) (Receipt, error)
}
