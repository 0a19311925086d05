package guard

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newGuard(st Settings) (*Guard, *clock) {
	c := &clock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	g := New(st)
	g.now = c.now
	return g, c
}

var (
	attacker = netip.MustParseAddr("203.0.113.9")
	printer  = netip.MustParseAddr("10.20.0.15")
	monitor  = netip.MustParseAddr("10.99.0.1")
)

func TestBlockAfterFailures(t *testing.T) {
	g, c := newGuard(Settings{MaxFailures: 5, Window: 10 * time.Minute, Block: 15 * time.Minute,
		Exempt: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")}})
	var last time.Duration
	for i := 1; i <= 5; i++ {
		delay, b := g.AuthFailed(attacker, fmt.Sprintf("user%d", i), fmt.Sprintf("user%d", i))
		if delay <= last {
			t.Errorf("failure %d delayed %s, not more than the last (%s)", i, delay, last)
		}
		last = delay
		if (b != nil) != (i == 5) {
			t.Fatalf("failure %d: block %v", i, b)
		}
		if i == 5 && (b.Addr != attacker.String() || b.Failures != 5 || b.Until != c.t.Add(15*time.Minute) || b.Username != "user5") {
			t.Errorf("block = %+v", b)
		}
		c.add(time.Second)
	}
	if !g.Blocked(attacker) || g.Blocked(printer) {
		t.Error("the attacker is not blocked, or the printer is")
	}
	if _, reason := g.Admit(attacker); reason != RefusedBlocked {
		t.Errorf("Admit(blocked) = %q", reason)
	}
	// A sixth failure does not make a second block.
	if _, b := g.AuthFailed(attacker, "x", "x"); b != nil {
		t.Error("a blocked address was blocked again")
	}
	if bs := g.Blocks(); len(bs) != 1 || bs[0].Addr != attacker.String() {
		t.Errorf("Blocks() = %+v", bs)
	}
	c.add(15 * time.Minute)
	if g.Blocked(attacker) || len(g.Blocks()) != 0 {
		t.Error("the block did not end after auth_block")
	}

	// Failures spread wider than the window do not add up.
	for i := 0; i < 10; i++ {
		if _, b := g.AuthFailed(printer, "mfp", "mfp"); b != nil {
			t.Fatalf("failure %d spread over 2 hours blocked the printer", i)
		}
		c.add(3 * time.Minute)
	}
	// Exempt networks are never blocked.
	for i := 0; i < 20; i++ {
		if _, b := g.AuthFailed(monitor, "probe", "probe"); b != nil {
			t.Fatal("an exempt address was blocked")
		}
	}
}

func TestUsernamesSlowButNeverBlock(t *testing.T) {
	g, _ := newGuard(Settings{MaxFailures: 3, Window: time.Minute, Block: time.Hour})
	var last time.Duration
	// A distributed guess at one username: many addresses, one try each.
	for i := 0; i < 10; i++ {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
		delay, b := g.AuthFailed(a, "mfp-2f", "mfp-2f")
		if b != nil {
			t.Fatalf("one failure from %s blocked it", a)
		}
		if delay < last {
			t.Errorf("failure %d on the username delayed %s, less than before", i, delay)
		}
		last = delay
	}
	if last != min(10*slowStep, slowMax) {
		t.Errorf("10 failures on one username delay %s, want %s", last, min(10*slowStep, slowMax))
	}
	if n := len(g.byUser["mfp-2f"]); n != 10 {
		t.Errorf("%d failures counted for the username, want 10", n)
	}
	if _, reason := g.Admit(printer); reason != "" {
		t.Errorf("the printer's own address was refused: %s", reason)
	}
}

func TestUnblockAndReconfigure(t *testing.T) {
	g, _ := newGuard(Settings{MaxFailures: 1, Window: time.Minute, Block: time.Hour})
	g.AuthFailed(attacker, "x", "x")
	g.AuthFailed(printer, "y", "y")
	if was, _ := g.Unblock(attacker); !was || g.Blocked(attacker) {
		t.Error("Unblock")
	}
	if was, _ := g.Unblock(attacker); was {
		t.Error("Unblock")
	}
	g.Reconfigure(Settings{MaxFailures: 1, Window: time.Minute, Block: time.Hour, Exempt: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if g.Blocked(printer) {
		t.Error("an address made exempt by a reload stays blocked")
	}
}

func TestConnectionLimits(t *testing.T) {
	g, _ := newGuard(Settings{MaxConnections: 3, MaxConnectionsPerIP: 2})
	r1, _ := g.Admit(attacker)
	r2, _ := g.Admit(attacker)
	if _, reason := g.Admit(attacker); reason != RefusedLimitIP {
		t.Errorf("third connection from one address: %q", reason)
	}
	r3, reason := g.Admit(printer)
	if reason != "" {
		t.Fatalf("another address refused: %q", reason)
	}
	if _, reason := g.Admit(monitor); reason != RefusedLimit {
		t.Errorf("fourth connection in all: %q", reason)
	}
	r1()
	r1() // release is idempotent
	if _, reason := g.Admit(monitor); reason != "" {
		t.Errorf("after a release: %q", reason)
	}
	r2()
	r3()
	// ::ffff:a.b.c.d and a.b.c.d are one address.
	g2, _ := newGuard(Settings{MaxConnectionsPerIP: 1})
	g2.Admit(netip.MustParseAddr("::ffff:10.20.0.15"))
	if _, reason := g2.Admit(printer); reason != RefusedLimitIP {
		t.Error("a v4-mapped address counted apart from its IPv4 form")
	}
}

func TestAllowMessage(t *testing.T) {
	g, c := newGuard(Settings{})
	for i := 0; i < 5; i++ {
		if !g.AllowMessage("mfp", 5) {
			t.Fatalf("message %d refused", i+1)
		}
		c.add(10 * time.Minute)
	}
	if g.AllowMessage("mfp", 5) {
		t.Error("a sixth message within the hour was allowed")
	}
	if !g.AllowMessage("erp", 5) || !g.AllowMessage("mfp", 0) {
		t.Error("another device, or no limit, was refused")
	}
	c.add(11 * time.Minute) // the first message is now more than an hour old
	if !g.AllowMessage("mfp", 5) {
		t.Error("the window did not slide")
	}
	if g.AllowMessage("mfp", 5) {
		t.Error("the window slid too far")
	}
}

func TestSweepBoundsMemory(t *testing.T) {
	g, c := newGuard(Settings{MaxFailures: 100, Window: time.Minute, Block: time.Hour})
	for i := 0; i < 5000; i++ {
		g.AuthFailed(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), fmt.Sprint("u", i), "u")
		c.add(100 * time.Millisecond)
	}
	if n := len(g.byAddr) + len(g.byUser); n > 2*1024+1300 {
		t.Errorf("%d entries kept for failures mostly older than the window", n)
	}
}

func TestOffGuard(t *testing.T) {
	g, _ := newGuard(Settings{})
	for i := 0; i < 50; i++ {
		if d, b := g.AuthFailed(attacker, "x", "x"); d != 0 || b != nil {
			t.Fatal("a guard without max failures slowed or blocked")
		}
	}
	if g.AuthDuration() != 0 {
		t.Error("a guard that is off imposes a login time")
	}
	on, _ := newGuard(Settings{MaxFailures: 5})
	seen := map[time.Duration]bool{}
	for i := 0; i < 20; i++ {
		d := on.AuthDuration()
		if d < authMin || d >= authMin+authJitter {
			t.Fatalf("AuthDuration = %s, want in [%s, %s)", d, authMin, authMin+authJitter)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Error("AuthDuration has no jitter")
	}
}

func TestLongUsernamesBounded(t *testing.T) {
	g, _ := newGuard(Settings{MaxFailures: 5, Window: time.Hour, Block: time.Hour})
	long := strings.Repeat("u", 64<<10)
	for i := 0; i < 100; i++ {
		g.AuthFailed(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), long+fmt.Sprint(i), "hint")
	}
	size := 0
	for u := range g.byUser {
		size += len(u)
	}
	if size > 100*maxUsernameKey {
		t.Errorf("%d bytes of usernames kept for 100 failures", size)
	}
}

// An IPv6 client is its /64: a new address for each connection or each
// guess does not escape the block or max_connections_per_ip; another /64
// is another client, and IPv6Prefix 128 counts each address.
func TestIPv6Networks(t *testing.T) {
	st := Settings{MaxFailures: 3, Window: 10 * time.Minute, Block: 15 * time.Minute, MaxConnectionsPerIP: 2,
		Exempt: []netip.Prefix{netip.MustParsePrefix("2001:db8:99::1/128")}}
	g, _ := newGuard(st)
	addr := func(net string, i int) netip.Addr {
		return netip.MustParseAddr(fmt.Sprintf("%s::%x:%x", net, i, 7*i+1))
	}

	// Connections from ever new addresses of one /64.
	var releases []func()
	for i := 0; i < 2; i++ {
		release, reason := g.Admit(addr("2001:db8:1:2", i))
		if reason != "" {
			t.Fatalf("connection %d refused: %s", i, reason)
		}
		releases = append(releases, release)
	}
	if _, reason := g.Admit(addr("2001:db8:1:2", 99)); reason != RefusedLimitIP {
		t.Errorf("a third address of the /64: %q, want %q", reason, RefusedLimitIP)
	}
	if _, reason := g.Admit(addr("2001:db8:1:3", 1)); reason != "" {
		t.Errorf("another /64 was refused: %q", reason)
	}
	for _, r := range releases {
		r()
	}

	// Guesses from ever new addresses of one /64 block the /64.
	var block *Block
	for i := 0; i < 3; i++ {
		_, block = g.AuthFailed(addr("2001:db8:1:2", 100+i), "mfp", "mfp")
	}
	if block == nil || block.Addr != "2001:db8:1:2::/64" {
		t.Fatalf("block %+v, want the /64", block)
	}
	for _, a := range []netip.Addr{addr("2001:db8:1:2", 5000), netip.MustParseAddr("2001:db8:1:2:ffff:ffff:ffff:ffff")} {
		if !g.Blocked(a) {
			t.Errorf("%s in the blocked /64 is not blocked", a)
		}
		if _, reason := g.Admit(a); reason != RefusedBlocked {
			t.Errorf("%s: %q", a, reason)
		}
	}
	if g.Blocked(addr("2001:db8:1:3", 1)) || g.Blocked(attacker) {
		t.Error("a block reached beyond its /64")
	}
	if bs := g.Blocks(); len(bs) != 1 || bs[0].Addr != "2001:db8:1:2::/64" {
		t.Errorf("Blocks() = %+v", bs)
	}
	// Unblocking any address of the /64 (its network address, as the
	// command line sends it) lifts the block.
	if was, _ := g.Unblock(netip.MustParseAddr("2001:db8:1:2::")); !was || g.Blocked(addr("2001:db8:1:2", 1)) {
		t.Error("the /64 is still blocked")
	}

	// IPv4 is per address.
	for i := 0; i < 3; i++ {
		g.AuthFailed(netip.MustParseAddr("198.51.100.7"), "x", "")
	}
	if !g.Blocked(netip.MustParseAddr("198.51.100.7")) || g.Blocked(netip.MustParseAddr("198.51.100.8")) {
		t.Error("IPv4 is not counted per address")
	}
	// An IPv4-mapped IPv6 address is its IPv4 address.
	if !g.Blocked(netip.MustParseAddr("::ffff:198.51.100.7")) {
		t.Error("the mapped address escaped the block")
	}

	// An exempt address inside a blocked /64 still gets in.
	for i := 0; i < 3; i++ {
		g.AuthFailed(addr("2001:db8:99", 200+i), "x", "")
	}
	if !g.Blocked(addr("2001:db8:99", 1)) || g.Blocked(netip.MustParseAddr("2001:db8:99::1")) {
		t.Error("the exempt address was blocked with its /64, or the /64 was not")
	}

	// ipv6_prefix 128: each address on its own, the blocks in force
	// re-keyed.
	st.IPv6Prefix = 128
	g.Reconfigure(st)
	g.AuthFailed(netip.MustParseAddr("2001:db8:5::1"), "x", "")
	g.AuthFailed(netip.MustParseAddr("2001:db8:5::2"), "x", "")
	_, block = g.AuthFailed(netip.MustParseAddr("2001:db8:5::3"), "x", "")
	if block != nil {
		t.Errorf("with /128, three addresses made a block: %+v", block)
	}
	release, _ := g.Admit(netip.MustParseAddr("2001:db8:5::1"))
	release2, _ := g.Admit(netip.MustParseAddr("2001:db8:5::1"))
	if _, reason := g.Admit(netip.MustParseAddr("2001:db8:5::2")); reason != "" {
		t.Errorf("with /128, another address was refused: %q", reason)
	}
	release()
	release2()
}

// Blocks survive a restart: Save writes those in force, Load restores
// those not yet ended, under the settings in force then.
func TestBlocksSaved(t *testing.T) {
	st := Settings{MaxFailures: 2, Window: 10 * time.Minute, Block: 15 * time.Minute}
	g, c := newGuard(st)
	path := t.TempDir() + "/blocks.json"
	if err := g.Load(path); err != nil {
		t.Fatalf("no file yet: %v", err)
	}
	for _, a := range []string{"203.0.113.9", "2001:db8:1:2::5", "10.99.0.1"} {
		g.AuthFailed(netip.MustParseAddr(a), "mfp", "mfp")
		g.AuthFailed(netip.MustParseAddr(a), "mfp", "mfp")
	}
	c.add(5 * time.Minute)
	g.AuthFailed(printer, "x", "")
	g.AuthFailed(printer, "x", "") // blocked until 20 minutes from now
	if err := g.Save(path); err != nil {
		t.Fatal(err)
	}

	// A restart 12 minutes later, with 10.99.0.0/16 now exempt.
	st.Exempt = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")}
	g2, c2 := newGuard(st)
	c2.t = c.t.Add(7 * time.Minute)
	if err := g2.Load(path); err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{
		"203.0.113.9":     true,
		"2001:db8:1:2::9": true, // the same /64
		"10.20.0.15":      true,
		"10.99.0.1":       false, // exempt now
		"198.51.100.1":    false,
	} {
		if got := g2.Blocked(netip.MustParseAddr(a)); got != want {
			t.Errorf("after the restart, %s blocked: %v, want %v", a, got, want)
		}
	}
	// The blocks end when they would have.
	c2.add(4 * time.Minute) // 16 minutes after the first blocks
	if g2.Blocked(attacker) || !g2.Blocked(printer) {
		t.Error("restored blocks do not end at their own time")
	}
	// An unchanged guard does not rewrite the file; an unblock does.
	os.Remove(path)
	if err := g2.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("Save wrote blocks that did not change")
	}
	g2.Unblock(printer)
	if err := g2.Save(path); err != nil {
		t.Fatal(err)
	}
	g3, c3 := newGuard(st)
	c3.t = c2.t
	g3.Load(path)
	if len(g3.Blocks()) != 0 {
		t.Errorf("an unblocked address came back: %+v", g3.Blocks())
	}

	// A damaged file is an error, and blocks nothing.
	os.WriteFile(path, []byte("[{"), 0o600)
	if err := g3.Load(path); err == nil {
		t.Error("no error for a damaged file")
	}
}

// The saved blocks are bounded, keeping those that end last.
func TestBlocksSavedBounded(t *testing.T) {
	g, c := newGuard(Settings{MaxFailures: 1, Window: time.Hour, Block: time.Hour})
	for i := 0; i < maxSavedBlocks+50; i++ {
		g.AuthFailed(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), "x", "")
		if i == 40 {
			c.add(time.Second)
		}
	}
	path := t.TempDir() + "/blocks.json"
	if err := g.Save(path); err != nil {
		t.Fatal(err)
	}
	g2, c2 := newGuard(Settings{MaxFailures: 1, Window: time.Hour, Block: time.Hour})
	c2.t = c.t
	if err := g2.Load(path); err != nil {
		t.Fatal(err)
	}
	if n := len(g2.Blocks()); n != maxSavedBlocks {
		t.Errorf("%d blocks restored, want %d", n, maxSavedBlocks)
	}
	if g2.Blocked(netip.AddrFrom4([4]byte{10, 0, 0, 0})) {
		t.Error("a block that ends first was kept over one that ends last")
	}
}
