//go:build integration

package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/redis"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// guards are n replicas' guards sharing one redis-server.
func guards(t *testing.T, r *testenv.Redis, n int) []*guard.Guard {
	t.Helper()
	var out []*guard.Guard
	for i := range n {
		rdb := redis.New(redis.Options{Addr: r.Addr, Timeout: 200 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		g := guard.New(guard.Settings{MaxFailures: 4, Window: time.Minute, Block: time.Hour})
		name := fmt.Sprintf("replica-%d", i)
		g.Share(NewGuard(rdb, "test:", name), name)
		out = append(out, g)
	}
	return out
}

func syncAll(t *testing.T, gs []*guard.Guard) {
	t.Helper()
	for _, g := range gs {
		if _, err := g.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// Failures spread over the replicas block the address on all of them;
// unblocking it on any lifts it everywhere; a block made while Redis is
// down, or forgotten by its restart, is shared when it answers.
func TestGuardShared(t *testing.T) {
	r := testenv.StartRedis(t)
	gs := guards(t, r, 3)
	attacker := netip.MustParseAddr("192.0.2.7")

	// Four failures, one or two per replica: the fourth blocks.
	var block *guard.Block
	for i := range 4 {
		_, block = gs[i%3].AuthFailed(attacker, "mfp-01", "mfp-01")
	}
	if block == nil {
		t.Fatal("4 failures across three replicas did not block (limit 4)")
	}
	if block.Replica != "replica-0" || block.Failures != 4 {
		t.Errorf("block = %+v, want made by replica-0 after 4 failures", *block)
	}
	if gs[1].Blocked(attacker) || gs[2].Blocked(attacker) {
		t.Fatal("blocked elsewhere before a sync") // the sync is what applies it
	}
	syncAll(t, gs)
	for i, g := range gs {
		if !g.Blocked(attacker) {
			t.Errorf("replica %d does not refuse the address blocked by replica 0", i)
		}
	}

	// Unblocked through replica 2: lifted everywhere, failures forgotten.
	if was, err := gs[2].Unblock(attacker); err != nil || !was {
		t.Fatalf("Unblock = %v, %v", was, err)
	}
	syncAll(t, gs)
	for i, g := range gs {
		if g.Blocked(attacker) {
			t.Errorf("replica %d still refuses the address unblocked through replica 2", i)
		}
	}
	if _, b := gs[1].AuthFailed(attacker, "mfp-01", "mfp-01"); b != nil {
		t.Error("one failure after the unblock blocked again: the failures were not forgotten")
	}

	// Redis down: replica 1 blocks on its own (its own count).
	r.Stop()
	other := netip.MustParseAddr("192.0.2.9")
	for range 4 {
		gs[1].AuthFailed(other, "x", "")
	}
	if !gs[1].Blocked(other) {
		t.Fatal("with Redis down, a replica does not block on its own count")
	}
	if _, err := gs[1].Sync(context.Background()); err == nil {
		t.Error("Sync with Redis down reports no error")
	}
	// Back, empty (no persistence): the block is shared again.
	r.Start()
	testenv.Eventually(t, "the block shared after Redis returned", 5*time.Second, func() bool {
		for _, g := range gs {
			g.Sync(context.Background())
		}
		return gs[0].Blocked(other) && gs[2].Blocked(other)
	})
}
