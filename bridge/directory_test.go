package bridge

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

func newTestDirectory(tb testing.TB) *Directory {
	tb.Helper()
	enc, err := passwd.NewArgon2id([]byte("right password"))
	if err != nil {
		tb.Fatal(err)
	}
	hash, err := passwd.Parse(enc)
	if err != nil {
		tb.Fatal(err)
	}
	mbox, _ := mailaddr.Parse("scanner@contoso.example")
	d, err := NewDirectory([]inventory.Device{
		{Name: "mfp", Username: "mfp", PasswordHash: hash, Tenant: "t", Mailbox: mbox},
		{Name: "lab", Username: "lab", PasswordHash: hash, Tenant: "t", Mailbox: mbox,
			Networks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func TestAuthenticate(t *testing.T) {
	d := newTestDirectory(t)
	lan := netip.MustParseAddr("10.0.0.5")
	tests := []struct {
		user, pass string
		from       netip.Addr
		want       AuthResult
	}{
		{"mfp", "right password", lan, AuthSuccess},
		{"mfp", "wrong", lan, AuthBadCredentials},
		{"MFP", "right password", lan, AuthUnknownUser},
		{"nobody", "right password", lan, AuthUnknownUser},
		{"lab", "right password", lan, AuthNetworkDenied},
		{"lab", "right password", netip.MustParseAddr("192.0.2.77"), AuthSuccess},
		{"lab", "right password", netip.MustParseAddr("::ffff:192.0.2.77"), AuthSuccess},
		{"lab", "wrong", netip.MustParseAddr("192.0.2.77"), AuthBadCredentials},
	}
	for _, tc := range tests {
		dev, got, err := d.Authenticate(tc.user, []byte(tc.pass), tc.from)
		if got != tc.want || (got == AuthSuccess) != (err == nil) || (got == AuthSuccess) != (dev != nil) {
			t.Errorf("%s/%s from %s: %v %v %v, want %v", tc.user, tc.pass, tc.from, dev, got, err, tc.want)
		}
	}
}

// BenchmarkLoginTiming measures a wrong password for a known device and
// any password for an unknown username in the same process, and reports
// their ratio: it should stay near 1, so that timing does not reveal which
// usernames exist.
func BenchmarkLoginTiming(b *testing.B) {
	d := newTestDirectory(b)
	lan := netip.MustParseAddr("10.0.0.5")
	var known, unknown time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		d.Authenticate("mfp", []byte("wrong"), lan)
		known += time.Since(start)
		start = time.Now()
		d.Authenticate("nobody", []byte("wrong"), lan)
		unknown += time.Since(start)
	}
	b.ReportMetric(float64(known.Microseconds())/float64(b.N), "µs/wrong-password")
	b.ReportMetric(float64(unknown.Microseconds())/float64(b.N), "µs/unknown-user")
	b.ReportMetric(float64(unknown)/float64(known), "unknown/wrong-ratio")
}

// countingHash counts the password checks that reach the hash.
type countingHash struct {
	passwd.Hash
	checks *atomic.Int32
}

func (h countingHash) Verify(pw []byte) bool {
	h.checks.Add(1)
	return h.Hash.Verify(pw)
}

func countingDevices(t *testing.T, checks *atomic.Int32, password string) []inventory.Device {
	t.Helper()
	enc, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	hash, err := passwd.Parse(enc)
	if err != nil {
		t.Fatal(err)
	}
	mbox, _ := mailaddr.Parse("scanner@contoso.example")
	h := countingHash{hash, checks}
	return []inventory.Device{
		{Name: "mfp", Username: "mfp", PasswordHash: h, Tenant: "t", Mailbox: mbox},
		{Name: "lab", Username: "lab", PasswordHash: h, Tenant: "t", Mailbox: mbox,
			Networks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
	}
}

// A repeat login with the same credentials is answered from the cache,
// without a password check; a wrong password still pays the full check,
// and the network is checked every time.
func TestLoginCache(t *testing.T) {
	var checks atomic.Int32
	d, err := NewDirectory(countingDevices(t, &checks, "right password"))
	if err != nil {
		t.Fatal(err)
	}
	lan, lab := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("192.0.2.9")
	try := func(user, pass string, from netip.Addr, want AuthResult, wantChecks int32) {
		t.Helper()
		before := checks.Load()
		if _, got, _ := d.Authenticate(user, []byte(pass), from); got != want {
			t.Errorf("%s/%s: %s, want %s", user, pass, got, want)
		}
		if n := checks.Load() - before; n != wantChecks {
			t.Errorf("%s/%s: %d password checks, want %d", user, pass, n, wantChecks)
		}
	}
	try("mfp", "right password", lan, AuthSuccess, 1)
	try("mfp", "right password", lan, AuthSuccess, 0)
	try("mfp", "wrong", lan, AuthBadCredentials, 1)
	try("mfp", "right passwordX", lan, AuthBadCredentials, 1)
	try("mfp", "right password", lan, AuthSuccess, 0)
	try("lab", "right password", lab, AuthSuccess, 1)
	try("lab", "right password", lan, AuthNetworkDenied, 0) // cached, yet from the wrong network
	try("lab", "right password", lab, AuthSuccess, 0)

	if dump := fmt.Sprintf("%+v", d.logins.entries); strings.Contains(dump, "right password") {
		t.Errorf("the cache holds the password: %s", dump)
	}

	defer func(ttl time.Duration) { loginCacheTTL = ttl }(loginCacheTTL)
	loginCacheTTL = 0
	d.logins.add("mfp", []byte("right password"), loginOf(d.byUser["mfp"]), time.Now())
	try("mfp", "right password", lan, AuthSuccess, 1) // expired
}

// A reload drops the cached logins of devices removed, or whose password
// or networks changed, and keeps the others'.
func TestLoginCacheReload(t *testing.T) {
	var checks atomic.Int32
	old, err := NewDirectory(countingDevices(t, &checks, "right password"))
	if err != nil {
		t.Fatal(err)
	}
	lab := netip.MustParseAddr("192.0.2.9")
	for _, u := range []string{"mfp", "lab"} {
		if _, got, _ := old.Authenticate(u, []byte("right password"), lab); got != AuthSuccess {
			t.Fatalf("%s: %s", u, got)
		}
	}

	// Same devices: both logins stay cached.
	devs := countingDevices(t, &checks, "right password")
	devs[0].PasswordHash, devs[1].PasswordHash = old.byUser["mfp"].PasswordHash, old.byUser["lab"].PasswordHash
	same, _ := NewDirectory(devs)
	same.Inherit(old)
	if n := same.logins.len(); n != 2 {
		t.Fatalf("%d cached logins after a reload that changed nothing, want 2", n)
	}
	before := checks.Load()
	if _, got, _ := same.Authenticate("mfp", []byte("right password"), lab); got != AuthSuccess || checks.Load() != before {
		t.Errorf("unchanged device after a reload: %s, %d checks", got, checks.Load()-before)
	}

	// lab's networks change, mfp's password changes.
	devs = countingDevices(t, &checks, "new password")
	devs[1].PasswordHash = old.byUser["lab"].PasswordHash
	devs[1].Networks = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/25")}
	changed, _ := NewDirectory(devs)
	changed.Inherit(same)
	if n := changed.logins.len(); n != 0 {
		t.Errorf("%d cached logins after both devices changed, want 0", n)
	}
	if _, got, _ := changed.Authenticate("mfp", []byte("right password"), lab); got != AuthBadCredentials {
		t.Errorf("old password after the change: %s", got)
	}

	// mfp removed.
	gone, _ := NewDirectory(devs[1:])
	changed.Authenticate("mfp", []byte("new password"), lab)
	gone.Inherit(changed)
	if gone.logins.verified("mfp", []byte("new password"), loginOf(&devs[0]), time.Now()) {
		t.Error("a removed device's login is still cached")
	}
}

// The cache stays within its bound however many usernames log in.
func TestLoginCacheBound(t *testing.T) {
	defer func(n int) { loginCacheMax = n }(loginCacheMax)
	loginCacheMax = 100
	c := newLoginCache()
	now := time.Now()
	for i := 0; i < 1000; i++ {
		c.add(fmt.Sprintf("user%d", i), []byte("pw"), "of", now.Add(time.Duration(i)*time.Millisecond))
	}
	if n := c.len(); n > 100 {
		t.Fatalf("%d entries, bound 100", n)
	}
	if !c.verified("user999", []byte("pw"), "of", now.Add(time.Second)) {
		t.Error("the newest login was evicted")
	}
}

// A device whose password is the sandbox's (a hash of it made anew, so
// that the config's own check by text did not catch it) cannot log in,
// even with the right password, but in sandbox mode; the failure says
// why in its result, and the cache of verified logins does not let it in
// on the second try.
func TestDocumentedPasswordRefused(t *testing.T) {
	enc, err := passwd.NewArgon2id([]byte("scan-to-mail"))
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := passwd.Parse(enc)
	mbox, _ := mailaddr.Parse("scanner@contoso.example")
	lan := netip.MustParseAddr("10.0.0.5")
	for _, sandbox := range []bool{false, true} {
		d, err := NewDirectory([]inventory.Device{{Name: "mfp", Username: "mfp", PasswordHash: hash, Tenant: "t", Mailbox: mbox}})
		if err != nil {
			t.Fatal(err)
		}
		want := AuthDocumentedPassword
		if sandbox {
			d.AllowDocumentedPasswords()
			want = AuthSuccess
		}
		for try := range 2 {
			if _, got, _ := d.Authenticate("mfp", []byte("scan-to-mail"), lan); got != want {
				t.Errorf("sandbox %v, try %d: %s, want %s", sandbox, try, got, want)
			}
		}
		if _, got, _ := d.Authenticate("mfp", []byte("wrong"), lan); got != AuthBadCredentials {
			t.Errorf("sandbox %v, a wrong password: %s", sandbox, got)
		}
	}
}
