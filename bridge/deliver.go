package bridge

import (
	"context"

	"github.com/smtpbridge/smtpbridge/message"
)

// Deliverer takes a message the device sent, once the device's policy
// was applied: the session ends each message with one call of it. In the
// bridge it is the device's delivery mode (package queue): the queue,
// the queue with a wait, or straight to Exchange.
//
// The receipt says whether the message was delivered or queued. An error
// is a *message.Error whose class and stage decide the device's reply;
// at message.StageSource or StageSpool nothing was taken.
type Deliverer interface {
	Deliver(ctx context.Context, m *message.Message) (message.Receipt, error)
}
