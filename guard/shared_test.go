package guard

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"
)

// memShared is the shared store of several guards in memory, as Redis
// holds it for package cluster; down makes it fail like an unreachable
// Redis, and wipe forgets everything like a restarted one.
type memShared struct {
	mu        sync.Mutex
	down      bool
	failures  map[string][]time.Time
	blocks    map[string]Block
	unblocked map[string]time.Time
	version   int
	now       func() time.Time
}

var errDown = errors.New("redis: connection refused")

func newMemShared(now func() time.Time) *memShared {
	m := &memShared{now: now}
	m.wipe()
	return m
}

func (m *memShared) wipe() {
	m.failures, m.blocks, m.unblocked = map[string][]time.Time{}, map[string]Block{}, map[string]time.Time{}
	m.version = 0
}

func (m *memShared) Failure(_ context.Context, client string, window time.Duration) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return 0, errDown
	}
	m.failures[client] = append(recent(m.failures[client], m.now(), window), m.now())
	return len(m.failures[client]), nil
}

func (m *memShared) Block(_ context.Context, b Block) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return errDown
	}
	m.blocks[b.Addr] = b
	delete(m.unblocked, b.Addr)
	m.version++
	return nil
}

func (m *memShared) Unblock(_ context.Context, client string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return false, errDown
	}
	_, was := m.blocks[client]
	delete(m.blocks, client)
	delete(m.failures, client)
	m.unblocked[client] = m.now().Truncate(time.Millisecond) // Redis's TIME, in ms
	m.version++
	return was, nil
}

func (m *memShared) Blocks(_ context.Context, version string, _ time.Duration) ([]Block, map[string]time.Time, string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, nil, "", false, errDown
	}
	cur := "v" + strconv.Itoa(m.version)
	if cur == version {
		return nil, nil, cur, false, nil
	}
	var out []Block
	for _, b := range m.blocks {
		out = append(out, b)
	}
	un := map[string]time.Time{}
	for k, v := range m.unblocked {
		un[k] = v
	}
	return out, un, cur, true, nil
}

// twoReplicas returns replicas a and b's guards sharing one memShared,
// on one clock.
func twoReplicas(st Settings) (a, b *Guard, c *clock, m *memShared) {
	a, c = newGuard(st)
	b = New(st)
	b.now = c.now
	m = newMemShared(c.now)
	a.Share(m, "a")
	b.Share(m, "b")
	return a, b, c, m
}

// Two replicas' guards: failures counted together, a block applied on
// the other at its Sync, an unblock lifting it on both, and a block made
// while the store is down shared when it is back, even after it forgot
// everything.
func TestShared(t *testing.T) {
	st := Settings{MaxFailures: 4, Window: 10 * time.Minute, Block: time.Hour}
	a, b, c, m := twoReplicas(st)
	sync := func() {
		t.Helper()
		for _, g := range []*Guard{a, b} {
			if _, err := g.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}

	a.AuthFailed(attacker, "x", "")
	b.AuthFailed(attacker, "x", "")
	a.AuthFailed(attacker, "x", "")
	c.add(time.Second)
	_, block := b.AuthFailed(attacker, "x", "")
	if block == nil || block.Replica != "b" || block.Failures != 4 {
		t.Fatalf("the 4th failure, 2 on each replica: block %+v", block)
	}
	if a.Blocked(attacker) {
		t.Fatal("blocked on a before its Sync")
	}
	applied, err := a.Sync(context.Background())
	if err != nil || len(applied) != 1 || applied[0].Replica != "b" || !a.Blocked(attacker) {
		t.Fatalf("a's Sync: %+v %v; blocked %v", applied, err, a.Blocked(attacker))
	}
	if again, _ := a.Sync(context.Background()); len(again) != 0 {
		t.Errorf("a block applied twice: %+v", again)
	}

	c.add(time.Second)
	if was, err := a.Unblock(attacker); !was || err != nil {
		t.Fatalf("Unblock on a: %v %v", was, err)
	}
	sync()
	if a.Blocked(attacker) || b.Blocked(attacker) {
		t.Fatal("the unblock on a did not lift the block on b")
	}
	if _, block := b.AuthFailed(attacker, "x", ""); block != nil {
		t.Error("the failures before the unblock still counted on b")
	}

	// The store down: b blocks on its own count; the unblock it cannot
	// pass on says so.
	m.mu.Lock()
	m.down = true
	m.mu.Unlock()
	for range 4 {
		c.add(time.Second)
		b.AuthFailed(monitor, "y", "")
	}
	if !b.Blocked(monitor) {
		t.Fatal("with the store down, b does not block on its own count")
	}
	if _, err := b.Sync(context.Background()); err == nil {
		t.Error("Sync with the store down reports no error")
	}
	if _, err := a.Unblock(printer); err == nil {
		t.Error("an unblock that could not be shared reports no error")
	}
	// Back, and empty: b's block is shared again.
	m.mu.Lock()
	m.down = false
	m.wipe()
	m.mu.Unlock()
	sync()
	sync()
	if !a.Blocked(monitor) {
		t.Error("b's block made while the store was down is not on a once it is back")
	}
}

// An unblock in the millisecond of the block lifts it: the shared store
// keeps the unblock's time in milliseconds, the block's is finer.
func TestUnblockInTheBlocksMillisecond(t *testing.T) {
	st := Settings{MaxFailures: 1, Window: time.Minute, Block: time.Hour}
	a, b, c, _ := twoReplicas(st)
	c.add(1500 * time.Microsecond)
	if _, block := a.AuthFailed(attacker, "x", ""); block == nil {
		t.Fatal("no block after the one failure allowed")
	}
	if _, err := b.Sync(context.Background()); err != nil || !b.Blocked(attacker) {
		t.Fatalf("the block not shared: %v", err)
	}
	if was, err := b.Unblock(attacker); !was || err != nil {
		t.Fatalf("Unblock: %v %v", was, err)
	}
	if _, err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.Blocked(attacker) {
		t.Error("an unblock in the block's millisecond did not lift it on the replica that made it")
	}
}
