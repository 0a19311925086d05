package status

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/trace"
)

type fakeQueue struct {
	stats queue.Stats
	dead  []queue.Item
}

func (f fakeQueue) Stats() queue.Stats          { return f.stats }
func (f fakeQueue) Dead() ([]queue.Item, error) { return f.dead, nil }

func render(t *testing.T, b *Board, q QueueView) string {
	t.Helper()
	until := time.Now().Add(14 * time.Minute)
	srv := httptest.NewServer(b.Handler(PageInfo{Version: "1.2.3", Hostname: "bridge.test"}, Sources{Queue: q, Blocks: func() []guard.Block {
		return []guard.Block{{Addr: "203.0.113.9", Since: time.Now().Add(-time.Minute),
			Until: until, Failures: 5}, {Addr: "2001:db8:1:2::/64", Since: time.Now().Add(-time.Minute),
			Until: until, Failures: 5, Username: "mfp-2f"}}
	}, Spool: func() SpoolUsage {
		return SpoolUsage{Bytes: 900 << 20, MaxBytes: 1 << 30, Free: 50 << 20, MinFree: 100 << 20,
			Devices: map[string]int64{"mfp": 300 << 20, "hog": 600 << 20},
			Share:   func(d string) int64 { return 600 << 20 }}
	}, Quotas: func() []MailboxQuota {
		return []MailboxQuota{{Tenant: "contoso", Mailbox: "scanner@contoso.example", Used: 9500, Limit: 10000}}
	}}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / = %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("no strict Content-Security-Policy: %q", csp)
	}
	if r, _ := srv.Client().Get(srv.URL + "/other"); r == nil || r.StatusCode != 404 {
		t.Error("the page answers paths other than /")
	}
	return string(body)
}

func contains(t *testing.T, page string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(page, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

func TestPage(t *testing.T) {
	b := NewBoard()
	b.started = time.Now().Add(-48 * time.Hour)
	b.Configure(inventory.Inventory{
		Devices: []inventory.Device{
			{Name: "mfp-2f", Tenant: "contoso", Mailbox: mailaddr.MustParse("scanner@contoso.example"), Mode: "hybrid"},
			{Name: "alarm", Tenant: "contoso", Mailbox: mailaddr.MustParse("alarm@contoso.example"), ExpectEvery: 24 * time.Hour},
			{Name: "erp", Tenant: "fabrikam", Mailbox: mailaddr.MustParse("erp@fabrikam.example")},
		},
		Tenants: []inventory.Tenant{
			{Name: "contoso", TenantID: "contoso.example", ClientID: "c1", Credential: secret.NewClientSecret("s"),
				CredentialExpiry: time.Now().Add(10 * 24 * time.Hour)},
			{Name: "fabrikam", TenantID: "fabrikam.example", ClientID: "c2", Credential: secret.NewCertificate([]*x509.Certificate{{}}, nil),
				CredentialExpiry: time.Now().Add(-time.Hour)},
		},
	})
	remote := netip.MustParseAddr("10.20.0.7")
	b.AuthAttempt("lan", "LOGIN", "success", "mfp-2f", remote)
	b.AuthAttempt("lan", "PLAIN", "bad_credentials", "erp", remote)
	ev := audit.Event{MsgID: "msg1", Device: "mfp-2f", Tenant: "contoso"}
	for _, k := range []audit.Kind{audit.Received, audit.Delivered, audit.Received} {
		ev.Kind = k
		b.Observe(ev)
	}
	b.Observe(audit.Event{Kind: audit.Rejected, MsgID: "msg2", Device: "mfp-2f", Tenant: "contoso", Reason: audit.ReasonPolicy,
		Reply: "550 5.7.1 Recipient not allowed for this device", Detail: "recipient <script>alert(1)</script>@x"})
	b.Observe(audit.Event{Kind: audit.Deferred, MsgID: "msg3", Device: "erp", Tenant: "fabrikam", RetryBy: audit.RetryByQueue,
		NextAttempt: time.Now().Add(time.Minute), Reply: "535 5.7.3 Authentication unsuccessful", SetupProblem: true})
	b.Observe(audit.Event{Kind: audit.Dead, MsgID: "msg4", Device: "mfp-2f", Tenant: "contoso", Reason: audit.ReasonExpired,
		Reply: "451 4.7.0 Temporary server error"})
	// The bridge's own report neither counts nor shows as a device's.
	b.Observe(audit.Event{Kind: audit.Received, MsgID: "dsn1", Device: "erp", Tenant: "fabrikam", DSNFor: "msg4"})
	b.ObserveToken("contoso", tokenstore.Token{ExpiresOn: time.Now().Add(time.Hour)}, nil)
	b.ObserveToken("fabrikam", tokenstore.Token{}, errors.New("token for tenant fabrikam: Entra ID refused: AADSTS7000215 invalid_client"))
	b.Reloaded(false, []string{"smtpbridge.yaml:12: devices[0].tenant: unknown tenant \"nope\""})

	q := fakeQueue{
		stats: queue.Stats{Queued: 1, Deferred: 2, Dead: 1, Oldest: time.Now().Add(-45 * time.Minute),
			Waiting: []queue.WaitReason{{Reply: "451 4.2.0 This device's mailbox reached its recipients a day at Exchange Online, try again later",
				Count: 2, Next: time.Now().Add(90 * time.Minute)}}},
		dead: []queue.Item{{State: queue.StateDead, Meta: spool.Meta{ID: "001deadletter", Device: "mfp-2f",
			To: []string{"a@x", "b@x"}, Received: time.Now().Add(-time.Hour), DeadReason: "refused by Exchange Online: 554 5.2.0 quota"}}},
	}
	page := render(t, b, q)
	contains(t, page,
		"smtpbridge on bridge.test", "version 1.2.3",
		`id="device-mfp-2f"`, "scanner@contoso.example",
		`<td data-label="Received" class="num">2</td>`, `<td data-label="Delivered" class="num">1</td>`,
		`<td data-label="Failed" class="num text-bad">1</td>`, `<td data-label="Rejected" class="num text-warn">1</td>`,
		// alarm: expected daily, never seen, bridge up for two days.
		`silent for 2d, expected every 24h`, `1 silent`,
		// erp: a wrong password and its tenant's broken login.
		`bad_credentials from 10.20.0.7`,
		"failing since", "AADSTS7000215", "535 5.7.3 Authentication unsuccessful",
		// credentials: contoso in 10 days (warn), fabrikam expired.
		`(in 9d 23h)`, `(expired 1h ago)`,
		"OK, valid until",
		`<b>3</b><span class="muted" id="queue-waiting">1 queued · 2 deferred</span>`, "oldest 45m", `<b id="dead-count">1</b>`,
		"001deadletter", "554 5.2.0 quota",
		"last reload failed", "unknown tenant &#34;nope&#34;",
		"dead letter (expired): 451 4.7.0 Temporary server error",
		`id="blocks"`, "203.0.113.9", "in 13m", "(not a device&#39;s; not shown)", "2001:db8:1:2::/64", "mfp-2f",

		// why deferred messages wait, the spool, the daily quota
		`id="waiting"`, "reached its recipients a day", `<td data-label="Messages" class="num">2</td>`, "in 1h 29m",
		`<p id="spool" class="bad">Spool: <b>900.0 MiB of 1.0 GiB</b>`, "50.0 MiB free, 100.0 MiB kept free",
		`<tr class="bad">
<td data-label="Device">hog</td>`, `<td data-label="In the spool" class="num">600.0 MiB</td>`,
		`<tr class="warn">
<td data-label="Mailbox" class="wrap">scanner@contoso.example`, `<td data-label="Last 24 hours" class="num">9500</td>`,
	)
	if strings.Contains(page, "<script") {
		t.Error("a device-controlled string reached the page unescaped")
	}
	if strings.Contains(page, "dsn1") {
		t.Error("the bridge's own report shows on the page")
	}
}

func TestPageEmpty(t *testing.T) {
	b := NewBoard()
	b.Configure(inventory.Inventory{Devices: []inventory.Device{{Name: "mfp", Tenant: "t", Mailbox: mailaddr.MustParse("m@x")}}, Tenants: []inventory.Tenant{{Name: "t"}}})
	page := render(t, b, fakeQueue{})
	contains(t, page, "config loaded", "none failing or silent", "1 never seen", ">never<", "not requested yet", "no delivery yet",
		"None since the bridge started", `<b id="dead-count">0</b>`)
}

// Last-seen times survive a restart; counts do not (the page says so).
func TestPersistLastSeen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.json")
	b := NewBoard()
	if err := b.Load(path); err != nil {
		t.Fatal(err)
	}
	b.Configure(inventory.Inventory{Devices: []inventory.Device{{Name: "mfp"}}})
	b.AuthAttempt("lan", "LOGIN", "success", "mfp", netip.Addr{})
	b.Observe(audit.Event{Kind: audit.Received, Device: "mfp"})
	if err := b.Save(); err != nil {
		t.Fatal(err)
	}
	seen := b.LastSeen()["mfp"]

	b2 := NewBoard()
	if err := b2.Load(path); err != nil {
		t.Fatal(err)
	}
	b2.Configure(inventory.Inventory{Devices: []inventory.Device{{Name: "mfp"}}})
	if got := b2.LastSeen()["mfp"]; !got.Equal(seen.UTC()) || got.IsZero() {
		t.Errorf("last seen after restart = %v, want %v", got, seen)
	}
	if b2.devices["mfp"].LastMessage.IsZero() {
		t.Error("last message not restored")
	}
	if b2.devices["mfp"].received != 0 {
		t.Error("counts were persisted")
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Second:                 "5s",
		12 * time.Minute:                "12m",
		3*time.Hour + 5*time.Minute:     "3h 5m",
		30 * time.Hour:                  "30h",
		4*24*time.Hour + 2*time.Hour:    "4d 2h",
		10 * 24 * time.Hour:             "10d",
		47*time.Hour + 59*time.Minute:   "47h 59m",
		48*time.Hour + 30*time.Minute:   "2d",
		time.Minute - time.Millisecond:  "59s",
		time.Hour - time.Nanosecond:     "59m",
		2*time.Hour + 30*time.Second:    "2h",
		24*time.Hour + 60*time.Minute*2: "26h",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%s) = %q, want %q", d, got, want)
		}
	}
}

// A delegated mailbox that needs a sign-in is on the page, with the
// command, until a token comes, or until the config no longer sends as
// it through a delegated tenant.
func TestSignInLine(t *testing.T) {
	b := NewBoard()
	inv := inventory.Inventory{Devices: []inventory.Device{{Name: "mfp", Tenant: "t", Mailbox: mailaddr.MustParse("scans@x.example")}},
		Tenants: []inventory.Tenant{{Name: "t", Credential: secret.NewDelegated()}}}
	b.Configure(inv)
	b.ObserveSignIn("t", "scans@x.example", true)
	contains(t, render(t, b, fakeQueue{}), `id="sign-in-scans@x.example"`, "smtpbridge tenant login --config FILE --tenant t --mailbox scans@x.example")
	b.ObserveSignIn("t", "scans@x.example", false)
	if strings.Contains(render(t, b, fakeQueue{}), "sign-in needed") {
		t.Error("the line stays after a token came")
	}
	b.ObserveSignIn("t", "scans@x.example", true)
	inv.Tenants[0].Credential = secret.NewClientSecret("s")
	b.Configure(inv)
	if strings.Contains(render(t, b, fakeQueue{}), "sign-in needed") {
		t.Error("the line stays after the tenant stopped using delegated sign-in")
	}
}

// The trace page takes "since" as the CLI does: 7d or an RFC 3339
// time as well as 2h; anything else is an error on the page, with no
// search.
func TestTraceSince(t *testing.T) {
	var got []trace.Query
	h := TraceHandler(PageInfo{Hostname: "bridge.test"}, func(_ context.Context, q trace.Query, _ int, _ trace.Limits) ([]trace.Story, trace.Stats, error) {
		got = append(got, q)
		return nil, trace.Stats{}, nil
	})
	get := func(since string) string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/trace?to=bob@x.example&since="+since, nil))
		return rec.Body.String()
	}
	get("7d")
	get("2026-11-30T08:00:00Z")
	if len(got) != 2 || time.Since(got[0].Since) < 7*24*time.Hour-time.Minute || time.Since(got[0].Since) > 7*24*time.Hour+time.Minute ||
		!got[1].Since.Equal(time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)) {
		t.Fatalf("since 7d and an RFC 3339 time searched as %+v", got)
	}
	if page := get("yesterday"); !strings.Contains(page, "since: &#34;yesterday&#34; is neither a duration") || len(got) != 2 {
		t.Errorf("since=yesterday: searched %d times; page:\n%s", len(got), testenv.Grep(page, "since"))
	}
}

// A search on the page is bounded: a time alone is no search, at most
// maxSearches run at once (the next gets 503 and Retry-After), each runs
// within the page's limits and stops when its client hangs up, and the
// page says how many more matched and why a search was incomplete.
func TestTraceBounds(t *testing.T) {
	release := make(chan struct{})
	started := make(chan context.Context, 10)
	var limits []trace.Limits
	var mu sync.Mutex
	h := TraceHandler(PageInfo{Hostname: "bridge.test"}, func(ctx context.Context, q trace.Query, _ int, lim trace.Limits) ([]trace.Story, trace.Stats, error) {
		mu.Lock()
		limits = append(limits, lim)
		mu.Unlock()
		switch q.To {
		case "slow@x.example":
			started <- ctx
			select {
			case <-release:
			case <-ctx.Done():
				return nil, trace.Stats{}, ctx.Err()
			}
		case "hang@x.example": // only its context ends it
			started <- ctx
			<-ctx.Done()
			return nil, trace.Stats{}, ctx.Err()
		}
		return []trace.Story{{ID: "m1"}}, trace.Stats{More: 7, Incomplete: "stopped after reading 512 MB"}, nil
	})
	get := func(ctx context.Context, query string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/trace?"+query, nil).WithContext(ctx))
		return rec
	}
	bg := context.Background()
	if rec := get(bg, "since=2h"); !strings.Contains(rec.Body.String(), "a time alone matches every message") || len(limits) != 0 {
		t.Errorf("since alone: %d searches; page:\n%s", len(limits), testenv.Grep(rec.Body.String(), "time"))
	}
	rec := get(bg, "to=bob@x.example")
	if page := rec.Body.String(); !strings.Contains(page, "7 more, older, matched") || !strings.Contains(page, `id="incomplete"`) ||
		len(limits) != 1 || limits[0] != pageLimits {
		t.Errorf("a bounded search: limits %+v; page:\n%s", limits, testenv.Grep(page, "more"))
	}
	// Two slow searches hold the two places; a third is turned away.
	var wg sync.WaitGroup
	for range maxSearches {
		wg.Add(1)
		go func() { defer wg.Done(); get(bg, "to=slow@x.example") }()
	}
	for range maxSearches {
		<-started
	}
	if rec := get(bg, "to=bob@x.example"); rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Errorf("a third search at once: %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	close(release)
	wg.Wait()
	// A client that hangs up stops its search.
	ctx, cancel := context.WithCancel(bg)
	done := make(chan struct{})
	go func() { get(ctx, "to=hang@x.example"); close(done) }()
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the search went on after its client hung up")
	}
	if rec := get(bg, "to=bob@x.example"); rec.Code != http.StatusOK {
		t.Errorf("after the others ended, a search is refused: %d", rec.Code)
	}
}
