package queue_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
)

// blocking is a transport that holds mailbox A's submissions until
// released and counts them.
type blocking struct {
	release chan struct{}

	mu          sync.Mutex
	inA, peakA  int
	deliveredTo map[string]int
}

func (b *blocking) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	io.Copy(io.Discard, m.Body)
	if m.Mailbox == "a@contoso.example" {
		b.mu.Lock()
		b.inA++
		b.peakA = max(b.peakA, b.inA)
		b.mu.Unlock()
		select {
		case <-b.release:
		case <-ctx.Done():
		}
		b.mu.Lock()
		b.inA--
		b.mu.Unlock()
	}
	b.mu.Lock()
	b.deliveredTo[m.Mailbox]++
	b.mu.Unlock()
	return message.Receipt{Reply: message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "OK"}}, nil
}

func (b *blocking) delivered(mb string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.deliveredTo[mb]
}

// laneLimit is the test's connection limit per mailbox.
var laneLimit = 2

// A mailbox with a backlog gets no more attempts in flight than its
// connection limit, and another mailbox's message goes meanwhile: no
// attempt waits in the transport while another mailbox's could go.
func TestLanesShareTheQueue(t *testing.T) {
	sp, err := spool.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tr := &blocking{release: make(chan struct{}), deliveredTo: map[string]int{}}
	q, err := queue.New(queue.Options{Spool: sp, Transport: tr, Log: zerolog.Nop(), Settings: queue.Settings{
		RetryInitial: time.Minute, RetryMax: time.Hour, MaxAge: time.Hour, SyncTimeout: time.Second,
		Concurrency: func(string) int { return laneLimit }}})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Close(time.Second)
	add := func(mb string) {
		t.Helper()
		if _, err := q.Deliver(context.Background(), &message.Message{ID: message.NewID(), Tenant: "contoso", Mailbox: mb, From: mb,
			To: []string{"x@contoso.example"}, Body: strings.NewReader("Subject: s\r\n\r\nb\r\n")}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 150; i++ { // more than the queue's global bound of attempts in flight
		add("a@contoso.example")
	}
	add("b@contoso.example")
	testenv.Eventually(t, "b's message while a's are held", 5*time.Second, func() bool { return tr.delivered("b@contoso.example") == 1 })
	close(tr.release)
	testenv.Eventually(t, "a's messages", 10*time.Second, func() bool { return tr.delivered("a@contoso.example") == 150 })
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.peakA > 2 {
		t.Errorf("%d of a's attempts in flight at once; its limit is 2", tr.peakA)
	}
}

// deferOnce is a transport whose first attempt waits until released and
// then defers (451); later attempts deliver.
type deferOnce struct {
	started, release chan struct{}
	calls            chan struct{}
}

func (d *deferOnce) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	io.Copy(io.Discard, m.Body)
	d.calls <- struct{}{}
	select {
	case d.started <- struct{}{}: // the first attempt
		<-d.release
		return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageData,
			Reply: message.Reply{Code: 451, Enhanced: [3]int{4, 3, 0}, Text: "try later"}, Err: io.ErrUnexpectedEOF}
	default:
		return message.Receipt{Reply: message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "OK"}}, nil
	}
}

// An admin's "retry now" that comes while the message's attempt is under
// way holds: the attempt's deferral does not put the message back to its
// backoff (an hour here), it is tried again at once.
func TestRetryDuringAnAttempt(t *testing.T) {
	sp, err := spool.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tr := &deferOnce{started: make(chan struct{}), release: make(chan struct{}), calls: make(chan struct{}, 10)}
	q, err := queue.New(queue.Options{Spool: sp, Transport: tr, Log: zerolog.Nop(), Settings: queue.Settings{
		RetryInitial: time.Hour, RetryMax: time.Hour, MaxAge: 48 * time.Hour, SyncTimeout: time.Second,
		Concurrency: func(string) int { return 1 }}})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Close(time.Second)
	go q.Deliver(context.Background(), &message.Message{ID: message.NewID(), Tenant: "contoso", Mailbox: "a@contoso.example",
		From: "a@contoso.example", To: []string{"x@contoso.example"}, Body: strings.NewReader("Subject: s\r\n\r\nb\r\n")})
	<-tr.started
	if n, err := q.RetryAll(); err != nil || n != 1 {
		t.Fatalf("RetryAll during the attempt: %d, %v", n, err)
	}
	close(tr.release)
	<-tr.calls // the first attempt
	select {
	case <-tr.calls:
	case <-time.After(20 * time.Second):
		t.Fatal("the retry asked for during the attempt was lost: the message waits for its backoff (an hour)")
	}
	testenv.Eventually(t, "the queue empty", 10*time.Second, func() bool { l, _ := q.List(); return len(l) == 0 })
}
