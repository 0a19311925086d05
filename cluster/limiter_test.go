//go:build integration

package cluster

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/internal/redis"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/upstream"
)

var mb = upstream.MailboxOf("contoso", "scanner@contoso.example")

// replicas are n limiters sharing one redis-server, as n bridges would.
func replicas(t *testing.T, r *testenv.Redis, n int, lim upstream.Limits) ([]*Limiter, *syncbuf.Buffer) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	var out []*Limiter
	for i := range n {
		rdb := redis.New(redis.Options{Addr: r.Addr, Timeout: 200 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		l := New(Options{Client: rdb, Prefix: "test:", Instance: fmt.Sprintf("replica-%d", i),
			Limits: map[string]upstream.Limits{"contoso": lim}, Log: zerolog.New(logs)})
		t.Cleanup(l.Close)
		out = append(out, l)
	}
	return out, logs
}

func shorten(t *testing.T) {
	t.Helper()
	ttl, poll, probe := LeaseTTL, pollEvery, probeEvery
	LeaseTTL, pollEvery, probeEvery = time.Second, 20*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { LeaseTTL, pollEvery, probeEvery = ttl, poll, probe })
}

// Three replicas with 30 workers never hold more than the mailbox's 3
// connections between them, and every worker gets its turn.
func TestConnectionsShared(t *testing.T) {
	shorten(t)
	r := testenv.StartRedis(t)
	ls, _ := replicas(t, r, 3, upstream.Limits{Connections: 3})
	var held, peak, served atomic.Int32
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			le, err := ls[i%3].Connect(context.Background(), mb)
			if err != nil {
				t.Error(err)
				return
			}
			n := held.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(10 * time.Millisecond)
			held.Add(-1)
			le.Release()
			served.Add(1)
		})
	}
	wg.Wait()
	if peak.Load() > 3 || served.Load() != 30 {
		t.Errorf("peak %d connections at once (limit 3), %d of 30 served", peak.Load(), served.Load())
	}
}

// A replica that dies holding its slots (no release, no renewal) loses
// them within the TTL: the others get them, never later.
func TestDeadReplicaLosesItsLeases(t *testing.T) {
	shorten(t)
	r := testenv.StartRedis(t)
	ls, _ := replicas(t, r, 2, upstream.Limits{Connections: 3})
	for range 3 {
		if _, err := ls[0].Connect(context.Background(), mb); err != nil {
			t.Fatal(err)
		}
	}
	ls[0].Close() // SIGKILL: it renews nothing more
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 3 {
		if _, err := ls[1].Connect(ctx, mb); err != nil {
			t.Fatalf("the other replica never got the dead one's slots: %v", err)
		}
	}
	if d := time.Since(start); d < LeaseTTL/2 || d > 2*LeaseTTL {
		t.Errorf("the slots came free after %s, want about the TTL (%s)", d, LeaseTTL)
	}
}

// Renewed leases outlive the TTL: a long submission keeps its slot.
func TestLeaseRenewal(t *testing.T) {
	shorten(t)
	r := testenv.StartRedis(t)
	ls, _ := replicas(t, r, 2, upstream.Limits{Connections: 1})
	le, err := ls[0].Connect(context.Background(), mb)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*LeaseTTL)
	defer cancel()
	if _, err := ls[1].Connect(ctx, mb); err == nil {
		t.Fatal("a renewed slot was given to another replica")
	}
	own := le.(*lease)
	own.mu.Lock()
	lost := own.lost
	own.mu.Unlock()
	if lost {
		t.Error("the renewed lease was lost")
	}
	// The other replica waited: the holder is told, and its connection
	// will give the slot up when it idles.
	select {
	case <-own.Wanted():
	default:
		t.Error("the holder was not told that another replica waits")
	}
	if le.Held() {
		t.Error("a lease another replica waits for says it is held (its connection would idle on)")
	}
	le.Release()
	if _, err := ls[1].Connect(context.Background(), mb); err != nil {
		t.Fatal(err)
	}
}

// Starts per minute and recipients per day are counted across replicas.
func TestRatesShared(t *testing.T) {
	shorten(t)
	r := testenv.StartRedis(t)
	ls, _ := replicas(t, r, 3, upstream.Limits{Connections: 3, PerMinute: 6, RecipientsPerDay: 10})
	for _, l := range ls {
		l.SetWindows(time.Second, 24*time.Hour)
	}
	var times []time.Time
	for i := range 9 {
		if _, err := ls[i%3].Submit(context.Background(), mb, 1); err != nil {
			t.Fatal(err)
		}
		times = append(times, time.Now())
	}
	// At most 6 starts in any second across the three.
	for i := 6; i < len(times); i++ {
		if d := times[i].Sub(times[i-6]); d < 900*time.Millisecond {
			t.Errorf("starts %d and %d were %s apart: more than 6 in a second", i-6, i, d)
		}
	}
	// 9 recipients counted; 2 more pass the day's 10.
	if _, err := ls[1].Submit(context.Background(), mb, 2); err == nil {
		t.Error("the day's quota was passed across replicas")
	}
	done, err := ls[2].Submit(context.Background(), mb, 1)
	if err != nil {
		t.Fatalf("the 10th recipient: %v", err)
	}
	done(0) // refused: it does not count
	if _, err := ls[0].Submit(context.Background(), mb, 1); err != nil {
		t.Errorf("a recipient Exchange refused still counted: %v", err)
	}
}

// When Redis goes, the fallback's per-minute and daily shares start from
// what the replicas had done together: six starts a minute, all taken
// before Redis went, leave none to any replica until the minute has
// passed, where a fresh 1/3 share each would have allowed six more.
func TestFallbackCountsWhatWasShared(t *testing.T) {
	shorten(t)
	r := testenv.StartRedis(t)
	ls, _ := replicas(t, r, 3, upstream.Limits{Connections: 3, PerMinute: 6, RecipientsPerDay: 30})
	testenv.Eventually(t, "each replica counting three", 5*time.Second, func() bool {
		for _, l := range ls {
			l.mu.Lock()
			n := l.replicas
			l.mu.Unlock()
			if n != 3 {
				return false
			}
		}
		return true
	})
	for i := range 6 {
		if _, err := ls[i%3].Submit(context.Background(), mb, 4); err != nil {
			t.Fatal(err)
		}
	}
	r.Stop()
	for i, l := range ls {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := l.Submit(ctx, mb, 1)
		cancel()
		if err == nil {
			t.Errorf("replica %d submitted a 7th message in the minute after Redis went", i)
		}
		if l.Shared() {
			t.Errorf("replica %d still says its limits are shared", i)
		}
	}
}

// With Redis gone each replica falls back to 1 connection, and says so;
// when Redis returns, the slots held meanwhile are counted there, so
// that the limit holds across the change.
func TestRedisDownAndBack(t *testing.T) {
	shorten(t)
	r := testenv.StartRedis(t)
	ls, logs := replicas(t, r, 3, upstream.Limits{Connections: 3, PerMinute: 30})
	r.Stop()
	var held []upstream.Lease
	for _, l := range ls {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		le, err := l.Connect(ctx, mb)
		cancel()
		if err != nil {
			t.Fatalf("no fallback slot: %v", err)
		}
		held = append(held, le)
		if l.Shared() {
			t.Error("a replica still says its limits are shared with Redis down")
		}
		ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
		if _, err := l.Connect(ctx, mb); err == nil {
			t.Error("a second fallback slot on one replica")
		}
		cancel()
	}
	if !strings.Contains(logs.String(), "Redis is out of reach") {
		t.Errorf("no log line for the fallback:\n%s", logs.String())
	}
	r.Start()
	testenv.Eventually(t, "shared limits again", 5*time.Second, func() bool {
		return ls[0].Shared() && ls[1].Shared() && ls[2].Shared()
	})
	// The three fallback slots count in Redis: a fourth waits.
	ctx, cancel := context.WithTimeout(context.Background(), 2*LeaseTTL)
	defer cancel()
	if _, err := ls[0].Connect(ctx, mb); err == nil {
		t.Error("a fourth slot while three adopted ones are held")
	}
	for _, le := range held {
		le.Release()
	}
	if _, err := ls[1].Connect(context.Background(), mb); err != nil {
		t.Fatal(err)
	}
}

// A Redis that restarts empty forgets the window's starts; on reconnect
// each replica adds back the starts it saw before the outage (every
// replica's, one killed meanwhile included, once the others had a
// renewal to see its last), so that the window holds no more than the
// limit across the restart. With Redis only cut off, not
// restarted, adding them again counts nothing twice.
func TestRedisRestartKeepsTheWindow(t *testing.T) {
	shorten(t)
	for _, restart := range []bool{true, false} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) {
			r := testenv.StartRedis(t)
			ls, _ := replicas(t, r, 3, upstream.Limits{Connections: 3, PerMinute: 6})
			for _, l := range ls {
				l.SetWindows(10*time.Second, 24*time.Hour)
			}
			// Five of the six starts, the last by the replica that dies.
			for i := range 5 {
				if _, err := ls[i%3].Submit(context.Background(), mb, 1); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(LeaseTTL / 2) // the others see its start at a renewal
			ls[1].Close()            // SIGKILLed: it will not add back its own
			if restart {
				r.Stop()
				r.Start() // empty: no persistence
			} else {
				r.Stop()
				time.Sleep(300 * time.Millisecond)
				r.Start()
			}
			// The survivors notice, fall back, and come back.
			taken := 5
			for _, i := range []int{0, 2} {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				if _, err := ls[i].Submit(ctx, mb, 1); err == nil { // fails over, or waits: either way no more than the share
					taken++
				}
				cancel()
			}
			testenv.Eventually(t, "shared again", 5*time.Second, func() bool { return ls[0].Shared() && ls[2].Shared() })
			rdb := redis.New(redis.Options{Addr: r.Addr})
			defer rdb.Close()
			n, err := rdb.Do(context.Background(), "ZCARD", ls[0].key("rate", mb)).Int()
			if err != nil {
				t.Fatal(err)
			}
			// The five starts before count (the dying replica's last one
			// too: the others saw it at their renewals).
			if n < 5 {
				t.Errorf("after the Redis %s, the window counts %d starts, want at least the 5 before",
					map[bool]string{true: "restart", false: "cut"}[restart], n)
			}
			// None more starts in the window than the limit.
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			for taken < 10 {
				if _, err := ls[0].Submit(ctx, mb, 1); err != nil {
					break
				}
				taken++
			}
			if taken > 6 {
				t.Errorf("%d starts in the window after Redis came back, limit 6", taken)
			}
		})
	}
}

// A Redis that restarts empty after the replica that made the minute's
// last starts died (it had submitted after the others): the survivors
// know its starts from their renewals, not only from their own last
// submissions, and put them back; the window holds its limit. Without the
// renewals' look at the window, replica 0 would know 1 start of 5.
func TestRedisRestartAfterTheReplicaThatKnewMost(t *testing.T) {
	shorten(t)
	r := testenv.StartRedis(t)
	ls, logs := replicas(t, r, 3, upstream.Limits{Connections: 3, PerMinute: 6})
	const window = 6 * time.Second
	for _, l := range ls {
		l.SetWindows(window, 24*time.Hour)
	}
	// One start by replica 0, then four by replica 1, which dies.
	for i, l := range []*Limiter{ls[0], ls[1], ls[1], ls[1], ls[1]} {
		if _, err := l.Submit(context.Background(), mb, 1); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
	}
	made := time.Now()
	time.Sleep(3 * LeaseTTL / 3) // a renewal or two
	ls[1].Close()
	r.Stop()
	r.Start() // empty: no persistence
	// Replica 0 notices within a renewal, without submitting.
	testenv.Eventually(t, "the window restored", 5*time.Second, func() bool {
		return strings.Contains(logs.String(), `"starts":5`)
	})
	// Five starts happened in the window; one more fits before the first
	// of them expires. Replica 2 never saw the mailbox: it counts on
	// what replica 0 put back.
	taken := 0
	ctx, cancel := context.WithDeadline(context.Background(), made.Add(window-time.Second))
	defer cancel()
	for taken < 10 {
		if _, err := ls[taken%2*2].Submit(ctx, mb, 1); err != nil {
			break
		}
		taken++
	}
	if taken > 1 {
		t.Errorf("%d starts within the window after the restart; 5 were made before it, limit 6:\n%s", taken, logs.String())
	}
}

// Redis lost in the first seconds, before the heartbeats have counted
// every replica: the fallback's shares count the replicas whose starts
// each one saw in the window, not only the heartbeat's count (1 for the
// first replica up). Together they stay within the minute's limit.
// Before, the first replica took the whole limit less what it saw, and
// Exchange got 33 submissions in a minute of 30 (TestReplicasPerMinuteAcrossRedisRestart).
func TestFallbackBeforeTheReplicasAreCounted(t *testing.T) {
	// No heartbeat during the test: each replica's count stays what it
	// was at its start (1, 2, 3).
	ttl, probe := LeaseTTL, probeEvery
	LeaseTTL, probeEvery = time.Hour, time.Hour
	t.Cleanup(func() { LeaseTTL, probeEvery = ttl, probe })
	r := testenv.StartRedis(t)
	ls, _ := replicas(t, r, 3, upstream.Limits{Connections: 3, PerMinute: 9, RecipientsPerDay: 100})
	// Each starts once, the first last: its submission reads the window
	// with all three replicas' starts.
	for _, i := range []int{1, 2, 0} {
		if _, err := ls[i].Submit(context.Background(), mb, 1); err != nil {
			t.Fatal(err)
		}
	}
	ls[0].mu.Lock()
	counted := ls[0].replicas
	ls[0].mu.Unlock()
	if counted != 1 {
		t.Fatalf("the first replica counts %d replicas at its start, want 1 (the others start after it)", counted)
	}
	r.Stop()
	more := 0
	for _, l := range ls {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err := l.Submit(ctx, mb, 1)
			cancel()
			if err != nil {
				break
			}
			more++
		}
	}
	if 3+more > 9 {
		t.Errorf("with Redis gone, the replicas started %d more in the minute: %d in all, limit 9", more, 3+more)
	}
}
