// Package guard defends the device listeners: it counts failed logins per
// source address and per username, blocks an address that fails too often,
// slows each failure down a little more than the last, bounds connections
// in all and per address, and bounds how many messages a device sends an
// hour. It knows addresses, names and counts, nothing about SMTP.
//
// Usernames are counted but never locked out: an attacker could lock a
// printer out from anywhere by failing its username on purpose. Failures
// per username slow every failed attempt on it instead, and are logged.
//
// Blocks survive a restart through Save and Load.
//
// An IPv4 client is counted by its address; an IPv6 client by its
// network (a /64 by default, Settings.IPv6Prefix), because a host with a
// /64 can take a new address for every connection.
package guard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Settings are the guard's limits; zero values turn a limit off.
type Settings struct {
	// MaxFailures failed logins from one address within Window block it
	// for Block.
	MaxFailures int
	Window      time.Duration
	Block       time.Duration
	// Exempt addresses are never blocked.
	Exempt []netip.Prefix
	// MaxConnections bounds connections in all, MaxConnectionsPerIP those
	// from one address.
	MaxConnections      int
	MaxConnectionsPerIP int
	// IPv6Prefix is the length of the IPv6 network counted as one client
	// (blocks, failures, connections per address); 0 means 64, 128 one
	// address.
	IPv6Prefix int
}

// DefaultIPv6Prefix is the IPv6 network counted as one client: a /64 is
// what one customer or one LAN gets.
const DefaultIPv6Prefix = 64

// Login timing, when the guard is on (MaxFailures > 0). Every AUTH takes
// at least authMin plus up to authJitter, whatever its outcome, so that
// the reply's timing tells neither whether a username exists nor whether
// a password was close: a hash check takes tens of milliseconds, and
// varies. Each failed login then waits slowStep times the number of
// recent failures (of its address or its username, whichever is more), up
// to slowMax.
var (
	authMin    = 250 * time.Millisecond
	authJitter = 100 * time.Millisecond
	slowStep   = 200 * time.Millisecond
	slowMax    = 3 * time.Second
)

// Bounds on what failed logins may make the guard keep, whatever a
// distributed guess sends: usernames are cut to maxUsernameKey bytes, and
// at most maxTracked addresses and usernames are counted at once (past
// that, new ones are slowed as the first failure, and blocks of those
// already counted go on).
const (
	maxUsernameKey = 256
	maxTracked     = 100_000
)

// Guard is safe for concurrent use.
type Guard struct {
	now func() time.Time

	mu      sync.Mutex
	st      Settings
	byAddr  map[netip.Prefix][]time.Time // recent failures, per client (key)
	byUser  map[string][]time.Time
	blocks  map[netip.Prefix]*Block
	conns   map[netip.Prefix]int
	total   int
	devices map[string]*hourly
	dirty   bool // the blocks changed since the last Save

	// Shared with the other replicas (Share), or nil.
	shared   Shared
	instance string
	version  string                // of the shared blocks last read
	unshared map[netip.Prefix]bool // blocks made here not yet shared
}

// Block is a blocked client.
type Block struct {
	// Addr is the client: an IPv4 address, or an IPv6 network (an
	// address when IPv6Prefix is 128).
	Addr     string    `json:"addr"`
	Since    time.Time `json:"since"`
	Until    time.Time `json:"until"`
	Failures int       `json:"failures"`
	// Username is the last username tried from the client, as the caller
	// chose to show it: empty for a username no device has, which may be
	// a password typed in the wrong field.
	Username string `json:"username"`
	// Replica is the replica that made the block, when several share
	// their blocks.
	Replica string `json:"replica,omitempty"`
}

// New returns a guard with the given settings.
func New(st Settings) *Guard {
	return &Guard{now: time.Now, st: st, byAddr: map[netip.Prefix][]time.Time{}, byUser: map[string][]time.Time{},
		blocks: map[netip.Prefix]*Block{}, conns: map[netip.Prefix]int{}, devices: map[string]*hourly{},
		unshared: map[netip.Prefix]bool{}}
}

// key is the client an address belongs to: the address itself for IPv4,
// its network of IPv6Prefix bits for IPv6; g.mu is held.
func (g *Guard) key(a netip.Addr) netip.Prefix {
	return keyOf(a, g.st.IPv6Prefix)
}

func keyOf(a netip.Addr, v6bits int) netip.Prefix {
	a = a.Unmap()
	bits := a.BitLen()
	if a.Is6() {
		bits = v6bits
		if bits <= 0 || bits > 128 {
			bits = DefaultIPv6Prefix
		}
	}
	p, _ := a.Prefix(bits)
	return p
}

// keyString shows a client: an address, or an IPv6 network.
func keyString(k netip.Prefix) string {
	if k.IsSingleIP() {
		return k.Addr().String()
	}
	return k.String()
}

// Reconfigure changes the settings. Blocks in force stay until they end
// (or Unblock); an address now exempt is unblocked.
func (g *Guard) Reconfigure(st Settings) {
	g.mu.Lock()
	defer g.mu.Unlock()
	rekey := g.st.IPv6Prefix != st.IPv6Prefix
	g.st = st
	for k := range g.blocks {
		if g.exemptKey(k) {
			delete(g.blocks, k)
			g.dirty = true
		}
	}
	if rekey {
		// Failures and blocks counted per old network are counted per new
		// one; connections in progress keep their keys until they end.
		byAddr := map[netip.Prefix][]time.Time{}
		for k, ts := range g.byAddr {
			nk := g.key(k.Addr())
			byAddr[nk] = append(byAddr[nk], ts...)
			slices.SortFunc(byAddr[nk], time.Time.Compare)
		}
		g.byAddr = byAddr
		blocks := map[netip.Prefix]*Block{}
		for k, b := range g.blocks {
			nk := g.key(k.Addr())
			b.Addr = keyString(nk)
			if old := blocks[nk]; old == nil || old.Until.Before(b.Until) {
				blocks[nk] = b
			}
		}
		g.blocks = blocks
		g.dirty = true
	}
}

func (g *Guard) exempt(a netip.Addr) bool {
	return slices.ContainsFunc(g.st.Exempt, func(p netip.Prefix) bool { return p.Contains(a) })
}

// exemptKey says whether a client's network is exempt as a whole.
func (g *Guard) exemptKey(k netip.Prefix) bool {
	return slices.ContainsFunc(g.st.Exempt, func(p netip.Prefix) bool { return p.Bits() <= k.Bits() && p.Contains(k.Addr()) })
}

// AuthDuration is how long a failed AUTH should take at least: authMin plus a
// random jitter; 0 when the guard is off.
func (g *Guard) AuthDuration() time.Duration {
	g.mu.Lock()
	on := g.st.MaxFailures > 0
	g.mu.Unlock()
	if !on {
		return 0
	}
	return authMin + rand.N(authJitter)
}

// Refusals of Admit.
const (
	RefusedBlocked = "blocked"
	RefusedLimit   = "limit"    // max_connections
	RefusedLimitIP = "limit_ip" // max_connections_per_ip
)

// Admit decides whether a new connection from a may proceed. If it may,
// the caller must call release when the connection ends; otherwise reason
// says why not.
func (g *Guard) Admit(a netip.Addr) (release func(), reason string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.key(a)
	switch {
	case g.blockedLocked(k) && !g.exempt(a.Unmap()):
		return nil, RefusedBlocked
	case g.st.MaxConnections > 0 && g.total >= g.st.MaxConnections:
		return nil, RefusedLimit
	case g.st.MaxConnectionsPerIP > 0 && g.conns[k] >= g.st.MaxConnectionsPerIP:
		return nil, RefusedLimitIP
	}
	g.total++
	g.conns[k]++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.total--
			if g.conns[k]--; g.conns[k] <= 0 {
				delete(g.conns, k)
			}
		})
	}, ""
}

// Blocked says whether a is blocked now.
func (g *Guard) Blocked(a netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.blockedLocked(g.key(a)) && !g.exempt(a.Unmap())
}

func (g *Guard) blockedLocked(k netip.Prefix) bool {
	b := g.blocks[k]
	if b == nil {
		return false
	}
	if !g.now().Before(b.Until) {
		delete(g.blocks, k)
		return false
	}
	return true
}

// recent drops the times older than the window and returns the rest.
func recent(ts []time.Time, now time.Time, window time.Duration) []time.Time {
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= window {
		i++
	}
	return ts[i:]
}

// AuthFailed records a failed login from a as username (shown as shown in
// blocks). It returns how long the caller should delay the reply, and the
// block it caused, if this failure was the one too many. With other
// replicas (Share), the address's failures are counted across them.
func (g *Guard) AuthFailed(a netip.Addr, username, shown string) (delay time.Duration, blocked *Block) {
	a = a.Unmap()
	if len(username) > maxUsernameKey {
		// No device has such a username; the key only has to tell
		// guesses apart, not keep a client's 64 KiB line.
		username = username[:maxUsernameKey]
	}
	now := g.now()
	g.mu.Lock()
	k := g.key(a)
	window := g.st.Window
	g.sweep(now, window)
	fa := append(recent(g.byAddr[k], now, window), now)
	fu := append(recent(g.byUser[username], now, window), now)
	if len(g.byAddr) < maxTracked || g.byAddr[k] != nil {
		g.byAddr[k] = fa
	}
	if len(g.byUser) < maxTracked || g.byUser[username] != nil {
		g.byUser[username] = fu
	}
	if g.st.MaxFailures <= 0 || g.exempt(a) {
		on := g.st.MaxFailures > 0
		g.mu.Unlock()
		if !on {
			return 0, nil // the guard is off
		}
		return min(time.Duration(max(len(fa), len(fu)))*slowStep, slowMax), nil
	}
	failures := len(fa)
	s := g.shared
	g.mu.Unlock()
	if s != nil {
		// Across the replicas; when they cannot be asked, this one's
		// count stands.
		ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
		if n, err := s.Failure(ctx, keyString(k), window); err == nil {
			failures = max(failures, n)
		}
		cancel()
	}
	g.mu.Lock()
	delay = min(time.Duration(max(failures, len(fu)))*slowStep, slowMax)
	if failures >= g.st.MaxFailures && !g.blockedLocked(k) {
		b := &Block{Addr: keyString(k), Since: now, Until: now.Add(g.st.Block), Failures: failures, Username: shown, Replica: g.instance}
		g.blocks[k] = b
		g.dirty = true
		cp := *b
		blocked = &cp
	}
	g.mu.Unlock()
	if blocked != nil && s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
		if err := s.Block(ctx, *blocked); err != nil {
			g.notShared(*blocked)
		}
		cancel()
	}
	return delay, blocked
}

// sweep forgets addresses and usernames with no recent failures, so that
// a scan of many addresses does not grow the maps for ever; g.mu is held.
func (g *Guard) sweep(now time.Time, window time.Duration) {
	if len(g.byAddr)+len(g.byUser) < 1024 {
		return
	}
	for a, ts := range g.byAddr {
		if len(recent(ts, now, window)) == 0 {
			delete(g.byAddr, a)
		}
	}
	for u, ts := range g.byUser {
		if len(recent(ts, now, window)) == 0 {
			delete(g.byUser, u)
		}
	}
}

// Blocks returns the blocks in force, oldest first.
func (g *Guard) Blocks() []Block {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Block
	for k, b := range g.blocks {
		if g.blockedLocked(k) {
			out = append(out, *b)
		}
	}
	slices.SortFunc(out, func(x, y Block) int { return x.Since.Compare(y.Since) })
	return out
}

// Unblock lifts the block on a's client (for IPv6, its network) and
// forgets its failures, here and, with other replicas (Share),
// everywhere. It reports whether it was blocked; err says that the other
// replicas could not be told (the block is lifted here only).
func (g *Guard) Unblock(a netip.Addr) (was bool, err error) {
	g.mu.Lock()
	k := g.key(a)
	was = g.blockedLocked(k)
	g.lift(k)
	s := g.shared
	g.mu.Unlock()
	if s == nil {
		return was, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	there, err := s.Unblock(ctx, keyString(k))
	if err != nil {
		return was, fmt.Errorf("lifted on this replica only: the other replicas could not be told: %w", err)
	}
	return was || there, nil
}

// lift removes k's block, if any, and forgets its failures; g.mu is
// held.
func (g *Guard) lift(k netip.Prefix) {
	if g.blocks[k] != nil {
		g.dirty = true
	}
	delete(g.blocks, k)
	delete(g.byAddr, k)
	delete(g.unshared, k)
}

// hourly counts events in the last hour in one-minute buckets.
type hourly struct {
	minute [60]int64 // the Unix minute each bucket counts
	count  [60]int
}

func (h *hourly) total(now int64) int {
	n := 0
	for i := range h.minute {
		if now-h.minute[i] < 60 {
			n += h.count[i]
		}
	}
	return n
}

func (h *hourly) add(now int64) {
	i := now % 60
	if h.minute[i] != now {
		h.minute[i], h.count[i] = now, 0
	}
	h.count[i]++
}

// AllowMessage counts a message of device against limit messages an hour
// (0: no limit). It returns false, counting nothing, when the device has
// reached its limit.
func (g *Guard) AllowMessage(device string, limit int) bool {
	if limit <= 0 {
		return true
	}
	now := g.now().Unix() / 60
	g.mu.Lock()
	defer g.mu.Unlock()
	h := g.devices[device]
	if h == nil {
		h = &hourly{}
		g.devices[device] = h
	}
	if h.total(now) >= limit {
		return false
	}
	h.add(now)
	return true
}
