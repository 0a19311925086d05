package queue_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
)

// exchange is a transport that refuses as told, and counts what reaches it.
type exchange struct {
	mu       sync.Mutex
	sendAs   map[string]bool // header From addresses refused as Send As
	unknown  map[string]bool // recipients refused as unknown
	messages int
}

func (x *exchange) Deliver(_ context.Context, m *message.Message) (message.Receipt, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.messages++
	if x.sendAs[m.HeaderFrom] {
		return message.Receipt{}, message.Classify("exo", message.StageData, message.Reply{Code: 554, Enhanced: [3]int{5, 2, 252},
			Text: "SendAsDenied; scanner@contoso.example not allowed to send as " + m.HeaderFrom}, "")
	}
	var r message.Receipt
	for _, to := range m.To {
		if x.unknown[to] {
			r.Refused = append(r.Refused, message.Classify("exo", message.StageRcpt, message.Reply{Code: 550, Enhanced: [3]int{5, 1, 10},
				Text: "RESOLVER.ADR.RecipientNotFound"}, to))
		} else {
			r.Accepted = append(r.Accepted, to)
		}
	}
	return r, nil
}

type counted map[string]int

func (c counted) RefusedLocally(_, reason string) { c[reason]++ }

func TestRefusalsRemembered(t *testing.T) {
	x := &exchange{sendAs: map[string]bool{"billing@contoso.example": true}, unknown: map[string]bool{"gone@contoso.example": true}}
	seen := counted{}
	r := queue.NewRefusals(x, time.Hour, seen)
	msg := func(from string, to ...string) *message.Message {
		return &message.Message{ID: message.NewID(), Tenant: "contoso", Mailbox: "scanner@contoso.example", From: "scanner@contoso.example",
			HeaderFrom: from, To: to, Body: strings.NewReader("x")}
	}
	ctx := context.Background()
	_, first := r.Deliver(ctx, msg("billing@contoso.example", "bob@contoso.example"))
	for range 3 {
		_, err := r.Deliver(ctx, msg("billing@contoso.example", "bob@contoso.example"))
		if message.ReplyFor(err) != message.ReplyFor(first) {
			t.Errorf("the same sender again: %v, want %v", err, first)
		}
	}
	if x.messages != 1 || seen["send_as"] != 3 {
		t.Errorf("%d messages reached Exchange, %d refused by the bridge; want 1 and 3", x.messages, seen["send_as"])
	}
	if _, err := r.Deliver(ctx, msg("scanner@contoso.example", "bob@contoso.example")); err != nil {
		t.Errorf("the mailbox's own From: %v", err)
	}
	rc, _ := r.Deliver(ctx, msg("scanner@contoso.example", "gone@contoso.example"))
	if len(rc.Refused) != 1 {
		t.Fatalf("the unknown recipient: %+v", rc)
	}
	before := x.messages
	rc, err := r.Deliver(ctx, msg("scanner@contoso.example", "gone@contoso.example"))
	if !message.IsPermanent(err) || len(rc.Refused) != 1 || rc.Refused[0].Reply.EnhancedString() != "5.1.10" || x.messages != before {
		t.Errorf("the unknown recipient again: %+v %v, %d messages at Exchange (was %d)", rc, err, x.messages, before)
	}
	rc, err = r.Deliver(ctx, msg("scanner@contoso.example", "gone@contoso.example", "bob@contoso.example"))
	if err != nil || len(rc.Accepted) != 1 || rc.Accepted[0] != "bob@contoso.example" || len(rc.Refused) != 1 {
		t.Errorf("gone and bob: %+v %v", rc, err)
	}
	r.Reset(time.Hour)
	before = x.messages
	r.Deliver(ctx, msg("billing@contoso.example", "bob@contoso.example"))
	if x.messages != before+1 {
		t.Error("after a reset, the sender is tried again")
	}
}
