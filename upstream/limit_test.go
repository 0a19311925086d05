package upstream

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// The limiter never lets more than Connections slots be held at once,
// never starts more than PerMinute submissions in one window, and makes
// callers over a limit wait instead of failing.
func TestLocalLimits(t *testing.T) {
	l := NewLocal(map[string]Limits{"contoso": {Connections: 3, PerMinute: 10}})
	l.window = 300 * time.Millisecond
	mb := MailboxOf("contoso", "Scanner@Contoso.example")
	var (
		active, peak atomic.Int32
		wg           sync.WaitGroup
		mu           sync.Mutex
		starts       []time.Time
	)
	for i := 0; i < 25; i++ {
		wg.Go(func() {
			done, err := l.Submit(context.Background(), mb, 1)
			if err != nil {
				t.Error(err)
				return
			}
			defer done(1)
			lease, err := l.Connect(context.Background(), mb)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			n := active.Add(1)
			for {
				old := peak.Load()
				if n <= old || peak.CompareAndSwap(old, n) {
					break
				}
			}
			if !lease.Held() {
				t.Error("a lease within the limit is not held")
			}
			time.Sleep(5 * time.Millisecond)
			active.Add(-1)
			lease.Release()
			lease.Release() // twice is harmless
		})
	}
	wg.Wait()
	if got := peak.Load(); got > 3 {
		t.Errorf("%d connections at once, limit 3", got)
	}
	// Any window-long stretch holds at most 10 starts.
	for i := range starts {
		n := 0
		for _, s := range starts {
			if !s.Before(starts[i]) && s.Sub(starts[i]) < l.window-10*time.Millisecond {
				n++
			}
		}
		if n > 10 {
			t.Fatalf("%d starts within one window, limit 10", n)
		}
	}
	if len(starts) != 25 {
		t.Fatalf("%d of 25 submissions started", len(starts))
	}
}

// A waiting caller gives up when its context ends; a tenant without
// limits gets an error, not a wait.
func TestLocalWaitCancelled(t *testing.T) {
	l := NewLocal(map[string]Limits{"contoso": {Connections: 1}})
	mb := MailboxOf("contoso", "a@contoso.example")
	if _, err := l.Connect(context.Background(), mb); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.Connect(ctx, mb); err == nil {
		t.Fatal("a second connection was granted over a limit of 1")
	}
	if _, err := l.Connect(context.Background(), MailboxOf("gone", "a@x.example")); err == nil {
		t.Fatal("a tenant without limits got a connection")
	}
	// Another mailbox of the tenant has its own slots.
	if _, err := l.Connect(context.Background(), MailboxOf("contoso", "b@contoso.example")); err != nil {
		t.Fatal(err)
	}
}

// A lowered limit: the connections above it are no longer held, and close
// one by one until the rest fit.
func TestLocalLoweredLimit(t *testing.T) {
	l := NewLocal(map[string]Limits{"contoso": {Connections: 3}})
	mb := MailboxOf("contoso", "a@contoso.example")
	var leases []Lease
	for i := 0; i < 3; i++ {
		le, err := l.Connect(context.Background(), mb)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, le)
	}
	l.SetLimits(map[string]Limits{"contoso": {Connections: 1}})
	held := 0
	for _, le := range leases {
		if le.Held() {
			held++
			continue
		}
		le.Release()
	}
	if held != 1 {
		t.Errorf("%d connections stay after lowering the limit to 1", held)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.Connect(ctx, mb); err == nil {
		t.Error("a new connection beyond the lowered limit")
	}
}

func TestTokenError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want message.Class
	}{
		{&tokenstore.Error{Tenant: "t", AADSTS: 7000215}, message.Setup},
		{fmt.Errorf("token: %w", &tokenstore.Error{Tenant: "t", AADSTS: 50049, Temporary: true}), message.Temporary},
		{context.DeadlineExceeded, message.Temporary},
	} {
		e := TokenError(tc.err)
		if e.Class != tc.want || e.Stage != message.StageToken || !errors.Is(e, tc.err) {
			t.Errorf("%v: class %s stage %s, want %s", tc.err, e.Class, e.Stage, tc.want)
		}
	}
}

// The recipients per day: a message the rolling window has no room for
// does not wait, it fails as throttled with the time the window frees;
// recipients Exchange did not take are not counted; the counts survive a
// restart.
func TestLocalDailyQuota(t *testing.T) {
	l := NewLocal(map[string]Limits{"contoso": {Connections: 3, RecipientsPerDay: 5}})
	l.Day = 2 * time.Second
	mb := MailboxOf("contoso", "a@contoso.example")
	submit := func(rcpts, accepted int) error {
		t.Helper()
		done, err := l.Submit(context.Background(), mb, rcpts)
		if err == nil {
			done(accepted)
		}
		return err
	}
	if err := submit(3, 3); err != nil {
		t.Fatal(err)
	}
	if err := submit(2, 1); err != nil { // one recipient refused: not counted
		t.Fatal(err)
	}
	if got := l.Recipients()[mb]; got != 4 {
		t.Fatalf("%d recipients counted, want 4", got)
	}
	if err := submit(1, 1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := submit(1, 1)
	var e *message.Error
	if !errors.As(err, &e) || e.Class != message.Throttled || e.Stage != message.StageQuota ||
		e.RetryAt.Before(start) || e.RetryAt.After(start.Add(2500*time.Millisecond)) {
		t.Fatalf("over the quota: %v (retry at %v)", err, e)
	}
	if r := message.ReplyFor(err); r.Code != 451 {
		t.Errorf("a device is told %s", r)
	}
	path := filepath.Join(t.TempDir(), "quota.json")
	if err := l.Save(path); err != nil {
		t.Fatal(err)
	}
	restarted := NewLocal(map[string]Limits{"contoso": {Connections: 3, RecipientsPerDay: 5}})
	restarted.Day = 2 * time.Second
	if err := restarted.Load(path); err != nil {
		t.Fatal(err)
	}
	if got := restarted.Recipients()[mb]; got != 5 {
		t.Errorf("after a restart %d recipients counted, want 5", got)
	}
	time.Sleep(time.Until(e.RetryAt) + 10*time.Millisecond)
	if err := submit(1, 1); err != nil {
		t.Errorf("at RetryAt the window still has no room: %v", err)
	}
	// A message larger than a whole day's quota goes on an empty day.
	other := MailboxOf("contoso", "b@contoso.example")
	if _, err := l.Submit(context.Background(), other, 7); err != nil {
		t.Errorf("7 recipients on an empty day: %v", err)
	}
}

// Connections over a lowered limit that ask at once whether they still
// count do not all leave: exactly the limit's number stays.
func TestLoweredLimitKeepsTheLimit(t *testing.T) {
	l := NewLocal(map[string]Limits{"t": {Connections: 3}})
	mb := MailboxOf("t", "a@b.c")
	var leases []Lease
	for i := 0; i < 3; i++ {
		le, err := l.Connect(context.Background(), mb)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, le)
	}
	l.SetLimits(map[string]Limits{"t": {Connections: 1}})
	held := 0
	for _, le := range leases { // all ask before any releases
		if le.Held() {
			held++
		}
	}
	if held != 1 {
		t.Fatalf("%d of 3 connections stay under a limit of 1", held)
	}
	// Asking again does not change the answer.
	again := 0
	for _, le := range leases {
		if le.Held() {
			again++
		}
	}
	if again != 1 {
		t.Errorf("asked again, %d stay", again)
	}
	// The leaving ones release; no new connection fits until they have.
	for _, le := range leases {
		if !le.Held() {
			le.Release()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := l.Connect(ctx, mb); err == nil {
		t.Error("a second connection opened under a limit of 1")
	}
}
