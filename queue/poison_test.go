package queue_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/internal/tempdir"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
)

// misbehaving is a transport whose attempts at the poison mailbox's
// messages go wrong as told; every other message is delivered.
type misbehaving struct {
	how     string // "panic", "slow" (ends when its context does), "stuck" (ignores it until release)
	release chan struct{}
	poison  atomic.Int32 // attempts at poison messages
	others  atomic.Int32 // messages delivered
}

func (m *misbehaving) Deliver(ctx context.Context, msg *message.Message) (message.Receipt, error) {
	if msg.Mailbox != "poison@contoso.example" {
		m.others.Add(1)
		return message.Receipt{Accepted: msg.To}, nil
	}
	m.poison.Add(1)
	switch m.how {
	case "panic":
		var parts []int
		_ = parts[len(msg.To)+2] // a runtime error, as a bug in a walker would make
	case "slow":
		<-ctx.Done()
		return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageData, Err: ctx.Err()}
	case "stuck":
		<-m.release
	}
	return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageData}
}

func poisonQueue(t *testing.T, tr queue.Deliverer, dir string, log *strings.Builder) (*queue.Queue, *spool.Spool) {
	t.Helper()
	sp, err := spool.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	lw := zerolog.New(zerolog.SyncWriter(&lockedBuilder{b: log}))
	q, err := queue.New(queue.Options{Spool: sp, Transport: tr, Log: lw, Hostname: "bridge.test",
		Settings: queue.Settings{RetryInitial: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond, MaxAge: time.Hour,
			SyncTimeout: time.Second, AttemptLimit: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	return q, sp
}

// holdQueue is a queue over dir with retry_initial 1s and a hold
// observer.
func holdQueue(t *testing.T, tr queue.Deliverer, dir string, obs queue.HoldObserver) (*queue.Queue, *spool.Spool) {
	t.Helper()
	sp, err := spool.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(queue.Options{Spool: sp, Transport: tr, Log: zerolog.Nop(), Hostname: "bridge.test", Holds: obs,
		Settings: queue.Settings{RetryInitial: time.Second, RetryMax: 2 * time.Second, MaxAge: time.Hour, SyncTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	return q, sp
}

type lockedBuilder struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func queueMessage(t *testing.T, q *queue.Queue, mailbox, subject string) {
	t.Helper()
	data := "Subject: " + subject + "\r\n\r\n" + testenv.BodyCanary + "\r\n"
	if _, err := q.Deliver(context.Background(), &message.Message{ID: message.NewID(), Device: "mfp", Tenant: "contoso",
		Mailbox: mailbox, From: mailbox, To: []string{"bob@contoso.example"}, Size: int64(len(data)), Body: strings.NewReader(data)}); err != nil {
		t.Fatal(err)
	}
}

// An attempt that panics, or runs past its limit, is a strike; the
// second in a row buries the message with the reason, after exactly two
// attempts, while the mailbox's other messages go on.
func TestPoisonRule(t *testing.T) {
	defer queue.SetAbandonAfter(300 * time.Millisecond)()
	for _, how := range []string{"panic", "slow"} {
		t.Run(how, func(t *testing.T) {
			tr := &misbehaving{how: how}
			var log strings.Builder
			q, sp := poisonQueue(t, tr, tempdir.New(t), &log)
			q.Start()
			defer q.Close(time.Second)
			queueMessage(t, q, "poison@contoso.example", "poison")
			queueMessage(t, q, "scans@contoso.example", "fine-1")
			testenv.Eventually(t, "the poison message buried", 10*time.Second, func() bool {
				d, _ := sp.Dead()
				return len(d) == 1
			})
			d, _ := sp.Dead()
			want := map[string]string{"panic": "the attempt panicked (runtime error: index out of range", "slow": "ran past its limit of 200ms"}[how]
			if !strings.Contains(d[0].DeadReason, want) || !strings.Contains(d[0].DeadReason, "failed to end 2 times in a row") {
				t.Errorf("dead reason %q, want it to say %q", d[0].DeadReason, want)
			}
			if n := tr.poison.Load(); n != 2 {
				t.Errorf("%d attempts at the poison message, want 2", n)
			}
			queueMessage(t, q, "scans@contoso.example", "fine-2")
			testenv.Eventually(t, "the other messages delivered and the queue empty", 5*time.Second, func() bool {
				queued, _ := sp.List()
				return tr.others.Load() == 2 && len(queued) == 0
			})
			if how == "panic" && (!strings.Contains(log.String(), `"stack"`) || strings.Contains(log.String(), testenv.BodyCanary)) {
				t.Errorf("the panic's log line has no stack, or has the message's body:\n%s", log.String())
			}
		})
	}
}

// An attempt that does not stop when its limit tells it to is abandoned:
// a strike, its lane free for the mailbox's other messages, and the
// message not tried again while the abandoned attempt may still send it;
// once that ends, it is.
func TestPoisonAbandoned(t *testing.T) {
	defer queue.SetAbandonAfter(200 * time.Millisecond)()
	tr := &misbehaving{how: "stuck", release: make(chan struct{})}
	var log strings.Builder
	q, sp := poisonQueue(t, tr, tempdir.New(t), &log)
	q.Start()
	defer q.Close(time.Second)
	queueMessage(t, q, "poison@contoso.example", "stuck")
	testenv.Eventually(t, "the attempt abandoned", 5*time.Second, func() bool {
		m, _ := sp.List()
		return len(m) == 1 && m[0].Strikes == 1 && !m[0].Attempting
	})
	if !strings.Contains(log.String(), "abandoned") {
		t.Errorf("the log does not say the attempt was abandoned:\n%s", log.String())
	}
	// The mailbox's lane is free: another of its messages would go
	// (here the transport delivers only other mailboxes, so use one).
	queueMessage(t, q, "scans@contoso.example", "beside")
	testenv.Eventually(t, "another message delivered", 5*time.Second, func() bool { return tr.others.Load() == 1 })
	time.Sleep(500 * time.Millisecond) // several backoffs
	if n := tr.poison.Load(); n != 1 {
		t.Fatalf("the message was attempted %d times while its abandoned attempt ran", n)
	}
	close(tr.release)
	testenv.Eventually(t, "attempted again once the abandoned attempt ended", 5*time.Second, func() bool { return tr.poison.Load() >= 2 })
}

// An attempt the bridge ended during (a crash, a kill) is a strike found
// at the next start, from the mark on disk: the first makes the message
// wait its turn, the second buries it. A settled attempt clears both.
func TestPoisonStrikeFromLastRun(t *testing.T) {
	dir := tempdir.New(t)
	tr := &misbehaving{how: "stuck", release: make(chan struct{})}
	defer close(tr.release)
	var log strings.Builder
	q, sp := poisonQueue(t, tr, dir, &log)
	// The crash comes long before the attempt's limit.
	q.Reconfigure(queue.Settings{RetryInitial: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond, MaxAge: time.Hour,
		SyncTimeout: time.Second, AttemptLimit: time.Hour})
	q.Start()
	queueMessage(t, q, "poison@contoso.example", "crashes-the-bridge")
	testenv.Eventually(t, "an attempt under way", 5*time.Second, func() bool { return tr.poison.Load() == 1 })
	// A crash: nothing settles. The mark is on disk.
	if m, _ := sp.List(); len(m) != 1 || !m[0].Attempting {
		t.Fatalf("during the attempt the spool has %+v, want the message marked as being attempted", m)
	}
	for run := 1; run <= 2; run++ {
		q2, sp2 := poisonQueue(t, &misbehaving{}, dir, &log)
		m, _ := sp2.List()
		d, _ := sp2.Dead()
		switch run {
		case 1:
			if len(m) != 1 || m[0].Strikes != 1 || m[0].Attempting {
				t.Fatalf("after the first crash: queued %+v", m)
			}
			// It is attempted again, and the bridge crashes again.
			m[0].Attempting = true
			if err := sp2.Update(m[0]); err != nil {
				t.Fatal(err)
			}
		case 2:
			if len(m) != 0 || len(d) != 1 || !strings.Contains(d[0].DeadReason, "the bridge stopped") {
				t.Fatalf("after the second crash: queued %+v, dead %+v", m, d)
			}
		}
		q2.Close(0)
	}
	// A message whose attempt settles has no strikes, whatever it had.
	q3, sp3 := poisonQueue(t, &misbehaving{}, tempdir.New(t), &log)
	q3.Start()
	defer q3.Close(time.Second)
	queueMessage(t, q3, "poison@contoso.example", "fails-normally")
	testenv.Eventually(t, "a normal deferral", 5*time.Second, func() bool {
		m, _ := sp3.List()
		return len(m) == 1 && m[0].Attempts >= 1 && !m[0].Attempting
	})
	if m, _ := sp3.List(); m[0].Strikes != 0 {
		t.Errorf("a settled attempt left %d strikes", m[0].Strikes)
	}
}

// Close returns within its grace even when an attempt never stops.
func TestCloseWithinGrace(t *testing.T) {
	defer queue.SetAbandonAfter(100 * time.Millisecond)()
	tr := &misbehaving{how: "stuck", release: make(chan struct{})}
	defer close(tr.release)
	var log strings.Builder
	q, _ := poisonQueue(t, tr, tempdir.New(t), &log)
	q.Reconfigure(queue.Settings{RetryInitial: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond, MaxAge: time.Hour,
		SyncTimeout: time.Second, AttemptLimit: time.Hour})
	q.Start()
	queueMessage(t, q, "poison@contoso.example", "stuck")
	testenv.Eventually(t, "an attempt under way", 5*time.Second, func() bool { return tr.poison.Load() == 1 })
	start := time.Now()
	q.Close(time.Second)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("Close(1s) took %s", took)
	}
}

// backlogOfFive starts a queue over a spool in dir whose mailbox takes
// one connection at a time, and queues five messages to it: the first
// is attempted through tr, the other four wait for their first attempt.
func backlogOfFive(t *testing.T, tr queue.Deliverer, dir string) (*queue.Queue, *spool.Spool) {
	t.Helper()
	sp, err := spool.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(queue.Options{Spool: sp, Transport: tr, Log: zerolog.Nop(), Hostname: "bridge.test",
		Settings: queue.Settings{RetryInitial: time.Minute, RetryMax: time.Hour, MaxAge: time.Hour, SyncTimeout: time.Second,
			AttemptLimit: time.Hour, Concurrency: func(string) int { return 1 }}})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	for i := range 5 {
		queueMessage(t, q, "poison@contoso.example", fmt.Sprintf("backlog-%d", i))
	}
	return q, sp
}

// A backlog that waits for its first attempts (its mailbox's one
// connection busy, Exchange slow or down) is not struck by a restart:
// only the message whose attempt was under way is. Before, every message
// of the backlog kept "attempt under way" on disk from its commit, so
// two restarts in a row buried the whole backlog as poison, and each
// restart rewrote every record.
func TestBacklogSurvivesRestarts(t *testing.T) {
	defer queue.SetAbandonAfter(100 * time.Millisecond)()
	defer queue.SetUnpayAfter(200 * time.Millisecond)()
	// The stuck attempt is never released: released, it would settle
	// into the spool while the test's directory is removed. Its
	// goroutine ends with the test binary.
	tr := &misbehaving{how: "stuck", release: make(chan struct{})}
	dir := tempdir.New(t)
	var log strings.Builder
	q, sp := backlogOfFive(t, tr, dir)
	testenv.Eventually(t, "the waiting four marked as not under way", 5*time.Second, func() bool {
		m, _ := sp.List()
		n := 0
		for _, x := range m {
			if !x.Attempting {
				n++
			}
		}
		return tr.poison.Load() == 1 && n == 4
	})
	q.Close(0) // the bridge stops with one attempt stuck
	for run := 1; run <= 2; run++ {
		q2, sp2 := poisonQueue(t, &misbehaving{}, dir, &log)
		m, _ := sp2.List()
		d, _ := sp2.Dead()
		struck := 0
		for _, x := range m {
			struck += x.Strikes
			if x.Strikes == 0 && x.Attempts != 0 {
				t.Errorf("run %d: %s counts %d attempts, none was made", run, x.ID, x.Attempts)
			}
		}
		if run == 1 && (len(m) != 5 || struck != 1) {
			t.Errorf("after the first stop: %d queued with %d strikes; want 5 with the one stuck attempt's", len(m), struck)
		}
		if run == 2 && (len(m) != 5 || len(d) != 0) {
			t.Errorf("after the second stop: %d queued, %d dead; want the whole backlog queued", len(m), len(d))
		}
		q2.Close(0)
	}
}

// A graceful stop (systemctl restart) while messages wait for their
// first attempt, just taken (their records say "under way" from their
// commit, to save a write), strikes none of them: Close writes them as
// waiting. Before, each restart within seconds of a message's arrival
// struck it, and two buried it as poison.
func TestGracefulStopStrikesNothing(t *testing.T) {
	defer queue.SetUnpayAfter(time.Hour)()
	tr := &misbehaving{how: "slow"} // the first attempt ends when told to stop
	dir := tempdir.New(t)
	q, _ := backlogOfFive(t, tr, dir)
	testenv.Eventually(t, "the first attempt under way", 5*time.Second, func() bool { return tr.poison.Load() == 1 })
	q.Close(3 * time.Second)
	var log strings.Builder
	for run := 1; run <= 2; run++ {
		q2, sp2 := poisonQueue(t, &misbehaving{how: "slow"}, dir, &log)
		m, _ := sp2.List()
		d, _ := sp2.Dead()
		struck := 0
		for _, x := range m {
			struck += x.Strikes
		}
		if len(m) != 5 || len(d) != 0 || struck != 0 {
			t.Errorf("restart %d: %d queued with %d strikes, %d dead; want 5 queued, no strike", run, len(m), struck, len(d))
		}
		q2.Close(time.Second)
	}
}

// A bridge stopped while many attempts were under way counts a strike
// against each at its next start; with the queue loaded in the
// background, the strikes are written after the queue is scheduled, and
// no message is attempted before its record has its strike (the attempt
// would otherwise not count it, and a second crash not bury it).
func TestStrikesWrittenBeforeTheNextAttempt(t *testing.T) {
	dir := tempdir.New(t)
	sp, err := spool.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		m := spool.Meta{ID: message.NewID(), Device: "mfp", Tenant: "contoso", Mailbox: fmt.Sprintf("box-%d@contoso.example", i%20),
			From: "scans@contoso.example", To: []string{"bob@contoso.example"}, Attempts: 1, Attempting: true}
		w, err := sp.Create(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, "Subject: x\r\n\r\nbody\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	sp2, err := spool.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tr := &strikeWatcher{sp: sp2}
	q, err := queue.New(queue.Options{Spool: sp2, Transport: tr, Log: zerolog.Nop(), Hostname: "bridge.test", LoadInBackground: true,
		Settings: queue.Settings{RetryInitial: time.Second, RetryMax: time.Second, MaxAge: time.Hour, SyncTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer q.Close(time.Second)
	testenv.Eventually(t, "every message delivered", 20*time.Second, func() bool { return tr.attempts.Load() == n })
	if bad := tr.unstruck.Load(); bad != 0 {
		t.Errorf("%d of %d attempts read a record without the strike of the last run", bad, n)
	}
}

// strikeWatcher delivers every message, noting those whose record did
// not have a strike when their attempt began.
type strikeWatcher struct {
	sp                 *spool.Spool
	attempts, unstruck atomic.Int32
}

func (s *strikeWatcher) Deliver(ctx context.Context, msg *message.Message) (message.Receipt, error) {
	if m, err := s.sp.Get(msg.ID); err != nil || m.Strikes != 1 {
		s.unstruck.Add(1)
	}
	s.attempts.Add(1)
	return message.Receipt{Accepted: msg.To}, nil
}
