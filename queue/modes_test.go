package queue_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
)

type transportFunc func(*message.Message) (message.Receipt, error)

func (f transportFunc) Deliver(_ context.Context, m *message.Message) (message.Receipt, error) {
	io.Copy(io.Discard, m.Body)
	return f(m)
}

type events struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (e *events) Observe(ev audit.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, ev)
}

func (e *events) take() []audit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.evs
	e.evs = nil
	return out
}

// Sync mode reports what happened to a message the device waited for, in
// the audit log's one reply format: Exchange's reply when there was one,
// else the reply the device got.
func TestSyncEvents(t *testing.T) {
	var next func() (message.Receipt, error)
	evs := &events{}
	s := queue.Sync{Transport: transportFunc(func(*message.Message) (message.Receipt, error) { return next() }), Events: evs}
	m := func() *message.Message {
		return &message.Message{ID: "id1", Device: "mfp", Tenant: "contoso", Mailbox: "scanner@contoso.example", From: "scanner@contoso.example",
			To: []string{"a@x.example", "b@x.example"}, Mode: message.ModeSync, Body: strings.NewReader("Subject: s\r\n\r\nbody\r\n")}
	}
	for _, tc := range []struct {
		name  string
		out   func() (message.Receipt, error)
		kinds string
		reply string
	}{
		{"delivered", func() (message.Receipt, error) {
			return message.Receipt{Reply: message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "OK <X1@outlook>"}, UpstreamID: "X1@outlook"}, nil
		}, "received delivered", "250 2.0.0 OK <X1@outlook>"},
		{"refused", func() (message.Receipt, error) {
			return message.Receipt{}, message.Classify("h", message.StageData, message.Reply{Code: 554, Enhanced: [3]int{5, 2, 252}, Text: "SendAsDenied"}, "")
		}, "received bounced", "554 5.2.252 SendAsDenied"},
		{"unreachable", func() (message.Receipt, error) {
			return message.Receipt{}, &message.Error{Class: message.Broken, Stage: message.StageConnect, Err: errors.New("refused")}
		}, "deferred", "451 4.4.1 Exchange Online not reachable, try again later"},
		{"login refused", func() (message.Receipt, error) {
			return message.Receipt{}, message.Classify("h", message.StageAuth, message.Reply{Code: 535, Enhanced: [3]int{5, 7, 3}, Text: "Authentication unsuccessful"}, "")
		}, "deferred", "535 5.7.3 Authentication unsuccessful"},
		{"the device went away", func() (message.Receipt, error) {
			return message.Receipt{}, &message.Error{Stage: message.StageSource, Err: io.ErrUnexpectedEOF}
		}, "", ""},
	} {
		next = tc.out
		_, err := s.Deliver(context.Background(), m())
		got := evs.take()
		var kinds []string
		for _, ev := range got {
			kinds = append(kinds, string(ev.Kind))
		}
		if strings.Join(kinds, " ") != tc.kinds {
			t.Errorf("%s: events %v, want %s", tc.name, kinds, tc.kinds)
			continue
		}
		if len(got) == 0 {
			continue
		}
		last := got[len(got)-1]
		if last.Reply != tc.reply || last.Size != int64(len("Subject: s\r\n\r\nbody\r\n")) || last.Rcpts != 2 || last.Mode != message.ModeSync {
			t.Errorf("%s: event %+v", tc.name, last)
		}
		if last.Kind == audit.Deferred && (last.RetryBy != audit.RetryByDevice || last.SetupProblem != (tc.name == "login refused")) {
			t.Errorf("%s: deferred event %+v", tc.name, last)
		}
		if (err == nil) != (tc.name == "delivered") {
			t.Errorf("%s: err %v", tc.name, err)
		}
	}
}

func TestModesUnknown(t *testing.T) {
	ms := queue.Modes{message.ModeSync: transportFunc(func(*message.Message) (message.Receipt, error) { return message.Receipt{}, nil })}
	if _, err := ms.Deliver(context.Background(), &message.Message{Mode: message.ModeSync, Body: strings.NewReader("")}); err != nil {
		t.Error(err)
	}
	if _, err := ms.Deliver(context.Background(), &message.Message{Mode: "later", Body: strings.NewReader("")}); err == nil {
		t.Error("a message of an unknown mode was taken")
	}
}

func TestSettingsCheck(t *testing.T) {
	if err := (queue.Settings{}).Check(); err == nil {
		t.Error("zero settings accepted: the queue has no defaults of its own")
	}
}
