package bridge

import (
	"net/netip"
	"testing"
	"time"

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
	d, err := NewDirectory([]Device{
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
