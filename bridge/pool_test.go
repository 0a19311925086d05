package bridge

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The pool never lets more than maxConns submissions run at once, and
// never starts more than perMinute in one window; callers over a limit
// wait instead of failing.
func TestMailboxPoolLimits(t *testing.T) {
	p := newMailboxPool(3, 10)
	p.window = 300 * time.Millisecond
	var (
		active, peak atomic.Int32
		wg           sync.WaitGroup
		mu           sync.Mutex
		starts       []time.Time
	)
	for i := 0; i < 25; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			if c != nil {
				t.Error("an idle connection appeared from nowhere")
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
			time.Sleep(5 * time.Millisecond)
			active.Add(-1)
			p.release(nil, false)
		}()
	}
	wg.Wait()
	if got := peak.Load(); got > 3 {
		t.Errorf("%d submissions at once, limit 3", got)
	}
	// Any window-long stretch holds at most 10 starts.
	for i := range starts {
		n := 0
		for _, s := range starts {
			if !s.Before(starts[i]) && s.Sub(starts[i]) < p.window-10*time.Millisecond {
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

// A waiting caller gives up when its context ends.
func TestMailboxPoolWaitCancelled(t *testing.T) {
	p := newMailboxPool(1, 0)
	if _, err := p.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.acquire(ctx); err == nil {
		t.Fatal("a second connection was granted over a limit of 1")
	}
}
