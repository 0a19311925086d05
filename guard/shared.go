package guard

import (
	"context"
	"net/netip"
	"time"
)

// Shared is where several replicas share failed logins and blocks, so
// that an address blocked by one is refused by all and unblocking it
// anywhere lifts it everywhere. Package cluster implements it on Redis.
// Each call is bounded by its context; an error leaves the guard counting
// and blocking on its own until the next Sync succeeds.
type Shared interface {
	// Failure counts a failed login from client and returns the failures
	// counted within window across the replicas, this one included.
	Failure(ctx context.Context, client string, window time.Duration) (int, error)
	// Block shares a block.
	Block(ctx context.Context, b Block) error
	// Unblock lifts client's block everywhere and forgets its failures;
	// it reports whether a block was shared.
	Unblock(ctx context.Context, client string) (bool, error)
	// Blocks returns the shared blocks in force and, per client, when it
	// was last unblocked (kept for keep), unless nothing changed since
	// the call that returned version (then changed is false).
	Blocks(ctx context.Context, version string, keep time.Duration) (blocks []Block, unblocked map[string]time.Time, next string, changed bool, err error)
}

// sharedTimeout bounds a shared call made while a device waits for its
// reply: a slow Redis must not slow logins down further.
const sharedTimeout = 300 * time.Millisecond

// Share makes the guard count failures and keep blocks with the other
// replicas through s; instance names this replica in the blocks it
// makes.
func (g *Guard) Share(s Shared, instance string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shared, g.instance = s, instance
	g.version = ""
}

// Sync brings the shared blocks here and this replica's there: a block
// made by another replica is applied, one lifted anywhere is lifted
// here, and one made here that the shared store lacks (made while it was
// out of reach, or lost by a restart of it) is shared again. The bridge
// calls it every second; it returns the blocks that came from other
// replicas, for its log.
func (g *Guard) Sync(ctx context.Context) (applied []Block, err error) {
	g.mu.Lock()
	s, version, keep := g.shared, g.version, g.st.Block
	pending := len(g.unshared) > 0
	g.mu.Unlock()
	if s == nil {
		return nil, nil
	}
	if pending {
		version = "" // read everything: some blocks are to be shared
	}
	blocks, unblocked, next, changed, err := s.Blocks(ctx, version, keep)
	if err != nil {
		return nil, err
	}
	if !changed {
		return nil, nil
	}
	var push []Block
	g.mu.Lock()
	now := g.now()
	there := map[netip.Prefix]bool{}
	for _, b := range blocks {
		k, ok := g.clientKey(b.Addr)
		if !ok || !now.Before(b.Until) {
			continue
		}
		there[k] = true
		if g.exemptKey(k) {
			continue
		}
		if old := g.blocks[k]; old == nil || old.Until.Before(b.Until) {
			if old == nil {
				applied = append(applied, b)
			}
			cp := b
			cp.Addr = keyString(k)
			g.blocks[k] = &cp
			g.dirty = true
		}
	}
	for k, b := range g.blocks {
		// Redis keeps the unblock's time in milliseconds: one in the
		// block's millisecond lifts it.
		if at, ok := unblocked[keyString(k)]; ok && !at.Before(b.Since.Truncate(time.Millisecond)) {
			g.lift(k)
			continue
		}
		if !there[k] && g.blockedLocked(k) {
			push = append(push, *b)
		}
	}
	g.unshared = map[netip.Prefix]bool{}
	g.version = next
	g.mu.Unlock()
	for _, b := range push {
		if err := s.Block(ctx, b); err != nil {
			g.notShared(b)
			return applied, err
		}
	}
	return applied, nil
}

// notShared remembers that b could not be shared, for the next Sync.
func (g *Guard) notShared(b Block) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if k, ok := g.clientKey(b.Addr); ok {
		g.unshared[k] = true
	}
}

// clientKey parses a Block's Addr (an address or an IPv6 network) into
// the client it is under the current settings; g.mu is held.
func (g *Guard) clientKey(s string) (netip.Prefix, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		p, perr := netip.ParsePrefix(s)
		if perr != nil {
			return netip.Prefix{}, false
		}
		a = p.Masked().Addr()
	}
	return g.key(a), true
}
