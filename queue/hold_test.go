package queue_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
)

// fullMailbox is a transport whose mailbox is full until emptied.
type fullMailbox struct {
	full     atomic.Bool
	attempts atomic.Int32
	mu       sync.Mutex
	got      []string
}

func (f *fullMailbox) Deliver(_ context.Context, m *message.Message) (message.Receipt, error) {
	f.attempts.Add(1)
	if f.full.Load() {
		return message.Receipt{}, message.Classify("exo", message.StageData, message.Reply{Code: 554, Enhanced: [3]int{5, 2, 2},
			Text: "mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded"}, "")
	}
	f.mu.Lock()
	f.got = append(f.got, m.ID)
	f.mu.Unlock()
	return message.Receipt{Accepted: m.To, Reply: message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "OK"}}, nil
}

type holdLog struct {
	mu      sync.Mutex
	changes []string
}

func (h *holdLog) MailboxHold(s queue.HoldState, held bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.changes = append(h.changes, s.Mailbox+" "+string(s.Reason)+" "+map[bool]string{true: "held", false: "released"}[held])
}

func (h *holdLog) list() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.changes, "; ")
}

// A full mailbox holds its messages: one probe at a time, sync mode's
// device told 451 with the reason without an attempt, the hold rebuilt
// from the spool after a restart, and lifted by RetryMailbox.
func TestHoldSyncRestartAndLift(t *testing.T) {
	dir := tempdir.New(t)
	tr := &fullMailbox{}
	tr.full.Store(true)
	obs := &holdLog{}
	q, _ := holdQueue(t, tr, dir, obs)
	q.Start()
	for i := range 3 {
		queueMessage(t, q, "poison@contoso.example", "held-"+string(rune('a'+i)))
	}
	testenv.Eventually(t, "the mailbox held", 5*time.Second, func() bool { _, held := q.HoldOf("contoso", "poison@contoso.example"); return held })
	time.Sleep(300 * time.Millisecond)
	if n := tr.attempts.Load(); n > 2 {
		t.Errorf("%d attempts at a full mailbox's 3 messages in 300 ms, want the first and no more than one probe", n)
	}
	// Sync mode keeps to the hold: no attempt, a 451 naming the reason.
	before := tr.attempts.Load()
	sync := queue.Sync{Transport: tr, Holds: q}
	_, err := sync.Deliver(context.Background(), &message.Message{ID: message.NewID(), Tenant: "contoso", Mailbox: "poison@contoso.example",
		From: "poison@contoso.example", To: []string{"bob@contoso.example"}, Body: strings.NewReader("x")})
	if r := message.ReplyFor(err); r.Code != 451 || !strings.Contains(r.Text, "it is full") || tr.attempts.Load() != before {
		t.Errorf("sync mode on a held mailbox: %v (%d attempts more)", r, tr.attempts.Load()-before)
	}
	// A restart keeps the hold.
	q.Close(time.Second)
	q, _ = holdQueue(t, tr, dir, obs)
	q.Start()
	defer q.Close(time.Second)
	if h, held := q.HoldOf("contoso", "poison@contoso.example"); !held || h.Reason != message.HoldMailboxFull {
		t.Fatalf("after a restart the mailbox is not held: %+v", h)
	}
	tr.full.Store(false)
	if n, err := q.RetryMailbox("POISON@contoso.example"); err != nil || n != 3 {
		t.Errorf("RetryMailbox: %d, %v", n, err)
	}
	testenv.Eventually(t, "the three delivered", 5*time.Second, func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.got) == 3
	})
	if _, held := q.HoldOf("contoso", "poison@contoso.example"); held {
		t.Error("still held after RetryMailbox")
	}
	if got := obs.list(); !strings.Contains(got, "mailbox_full held") || !strings.Contains(got, "mailbox_full released") {
		t.Errorf("the observer was told %q", got)
	}
}
