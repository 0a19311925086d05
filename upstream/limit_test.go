package upstream

import (
	"context"
	"errors"
	"fmt"
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
			if err := l.Submit(context.Background(), mb, 1); err != nil {
				t.Error(err)
				return
			}
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
