package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

var testInventory = inventory.Inventory{
	Listeners: []string{"lan"},
	Tenants:   []inventory.Tenant{{Name: "contoso", CredentialExpiry: time.Unix(1900000000, 0)}, {Name: "fabrikam"}},
	Devices: []inventory.Device{
		{Name: "mfp-2f", Tenant: "contoso"},
		{Name: "alarm", Tenant: "contoso", ExpectEvery: 24 * time.Hour},
		{Name: "erp", Tenant: "contoso", MaxQueuedBytes: 10000},
	},
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantLines(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w+"\n") {
			t.Errorf("/metrics lacks %s", w)
		}
	}
}

func TestMetricsCountEvents(t *testing.T) {
	m := New("1.2.3", testInventory, Options{PerDevice: true})
	seen := time.Unix(1800000000, 0)
	m.SetSources(Sources{
		Queue: func() queue.Stats {
			return queue.Stats{Queued: 2, Deferred: 1, Dead: 4, Oldest: time.Now().Add(-90 * time.Second)}
		},
		UpstreamConnections: func() map[string]int { return map[string]int{"contoso": 2} },
		DeviceLastSeen:      func() map[string]time.Time { return map[string]time.Time{"mfp-2f": seen} },
		Spool: func() spool.Usage {
			return spool.Usage{Bytes: 2<<20 + 1000, Free: 1 << 30, Devices: map[string]int64{"mfp-2f": 2 << 20, "alarm": 1000, "erp": 6000}}
		},
	})
	m.Connection("lan")
	m.Connection("lan")
	m.ConnectionClosed("lan", false)
	m.AuthAttempt("lan", "LOGIN", "bad_credentials", "mfp-2f", netip.MustParseAddr("10.0.0.5"))
	m.AuthAttempt("lan", "PLAIN", "blocked", "", netip.MustParseAddr("10.0.0.6"))

	ev := audit.Event{MsgID: "m1", Device: "mfp-2f", Tenant: "contoso", Size: 5000}
	for _, k := range []audit.Kind{audit.Received, audit.Received, audit.Delivered} {
		ev.Kind = k
		ev.Accepted = time.Now().Add(-2 * time.Second)
		m.Observe(ev)
	}
	m.Observe(audit.Event{Kind: audit.Rejected, Device: "mfp-2f", Reason: audit.ReasonPolicy})
	m.Observe(audit.Event{Kind: audit.Bounced, Device: "mfp-2f", Tenant: "contoso"})
	// A bounce of a queued message is also a dead letter: counted once.
	m.Observe(audit.Event{Kind: audit.Dead, Device: "mfp-2f", Tenant: "contoso", Reason: audit.ReasonPermanent})
	m.Observe(audit.Event{Kind: audit.Dead, Device: "alarm", Tenant: "contoso", Reason: audit.ReasonExpired})
	// The bridge's own reports do not count as device messages.
	m.Observe(audit.Event{Kind: audit.Delivered, Device: "mfp-2f", Tenant: "contoso", DSNFor: "m0"})

	m.UpstreamStage("contoso", "data", 40*time.Millisecond)
	m.UpstreamReply("contoso", 250, [3]int{2, 0, 0})
	m.UpstreamReply("contoso", 432, [3]int{4, 3, 2})
	m.UpstreamReply("contoso", 550, [3]int{5, 9, 9})
	m.UpstreamError("contoso", "connect")

	exp := time.Unix(1900000000, 0)
	m.ObserveToken("contoso", tokenstore.Token{ExpiresOn: exp}, nil)
	m.ObserveToken("contoso", tokenstore.Token{ExpiresOn: exp, FromCache: true}, nil)
	m.ObserveToken("contoso", tokenstore.Token{}, errors.New("AADSTS7000215"))

	body := scrape(t, m)
	wantLines(t, body,
		`smtpbridge_build_info{goversion="`+goVersion()+`",version="1.2.3"} 1`,
		`smtpbridge_connections_total{listener="lan"} 2`,
		`smtpbridge_connections_active{listener="lan"} 1`,
		`smtpbridge_auth_attempts_total{listener="lan",mechanism="LOGIN",result="bad_credentials"} 1`,
		`smtpbridge_auth_attempts_total{listener="lan",mechanism="PLAIN",result="blocked"} 1`,
		`smtpbridge_messages_received_total{device="mfp-2f",tenant="contoso"} 2`,
		`smtpbridge_messages_delivered_total{device="mfp-2f",tenant="contoso"} 1`,
		`smtpbridge_messages_rejected_total{device="mfp-2f",reason="policy"} 1`,
		`smtpbridge_messages_failed_total{device="mfp-2f",reason="permanent",tenant="contoso"} 1`,
		`smtpbridge_messages_failed_total{device="alarm",reason="expired",tenant="contoso"} 1`,
		`smtpbridge_message_size_bytes_count 2`,
		`smtpbridge_message_size_bytes_bucket{le="16384"} 2`,
		`smtpbridge_delivery_latency_seconds_count{tenant="contoso"} 1`,
		`smtpbridge_delivery_latency_seconds_bucket{tenant="contoso",le="1"} 0`,
		`smtpbridge_delivery_latency_seconds_bucket{tenant="contoso",le="2.5"} 1`,
		`smtpbridge_upstream_replies_total{code_class="2xx",enhanced="2.0.0",tenant="contoso"} 1`,
		`smtpbridge_upstream_replies_total{code_class="4xx",enhanced="4.3.2",tenant="contoso"} 1`,
		`smtpbridge_upstream_replies_total{code_class="5xx",enhanced="other",tenant="contoso"} 1`,
		`smtpbridge_upstream_errors_total{stage="connect",tenant="contoso"} 1`,
		`smtpbridge_upstream_duration_seconds_count{stage="data",tenant="contoso"} 1`,
		`smtpbridge_upstream_connections{tenant="contoso"} 2`,
		`smtpbridge_token_requests_total{result="success",source="identity_provider",tenant="contoso"} 1`,
		`smtpbridge_token_requests_total{result="success",source="cache",tenant="contoso"} 1`,
		`smtpbridge_token_requests_total{result="failure",source="identity_provider",tenant="contoso"} 1`,
		`smtpbridge_token_expiry_timestamp_seconds{tenant="contoso"} 1.9e+09`,
		`smtpbridge_credential_expiry_timestamp_seconds{tenant="contoso"} 1.9e+09`,
		`smtpbridge_queue_messages{state="queued"} 2`,
		`smtpbridge_queue_messages{state="deferred"} 1`,
		`smtpbridge_queue_messages{state="dead"} 4`,
		`smtpbridge_device_last_seen_timestamp_seconds{device="mfp-2f"} 1.8e+09`,
		`smtpbridge_device_last_seen_timestamp_seconds{device="alarm"} 0`,
		`smtpbridge_device_expected_interval_seconds{device="alarm"} 86400`,
		`smtpbridge_config_reload_success 1`,
		`smtpbridge_device_spool_bytes{device="mfp-2f"} 2.097152e+06`,
		`smtpbridge_device_spool_bytes{device="erp"} 6000`, // past half its share
	)
	if !strings.Contains(body, "smtpbridge_queue_oldest_message_age_seconds 9") {
		t.Errorf("oldest message age is not about 90 s:\n%s", testenv.Grep(body, "oldest"))
	}
	for _, absent := range []string{
		`smtpbridge_credential_expiry_timestamp_seconds{tenant="fabrikam"}`, // unknown
		`smtpbridge_device_expected_interval_seconds{device="mfp-2f"}`,      // none configured
		`smtpbridge_upstream_errors_total{stage="token"`,                    // not an upstream stage
		`smtpbridge_device_spool_bytes{device="alarm"}`,                     // under 1 MiB and half its share
	} {
		if strings.Contains(body, absent) {
			t.Errorf("/metrics has %s", absent)
		}
	}
	if !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_start_time_seconds") {
		t.Error("the Go and process collectors are missing")
	}
}

// The series an operator watches before anything happens are there, at
// zero: rate() then sees the first event. The others (a rejection's
// reason, a reply's code, a stage's histogram) appear with their first
// occurrence, so that the series do not grow with reasons × devices.
func TestMetricsZeroInitialised(t *testing.T) {
	body := scrape(t, New("dev", testInventory, Options{PerDevice: true}))
	wantLines(t, body,
		`smtpbridge_connections_total{listener="lan"} 0`,
		`smtpbridge_connections_active{listener="lan"} 0`,
		`smtpbridge_messages_received_total{device="alarm",tenant="contoso"} 0`,
		`smtpbridge_messages_delivered_total{device="alarm",tenant="contoso"} 0`,
		`smtpbridge_messages_failed_total{device="alarm",reason="permanent",tenant="contoso"} 0`,
		`smtpbridge_device_last_seen_timestamp_seconds{device="alarm"} 0`,
		`smtpbridge_upstream_replies_total{code_class="5xx",enhanced="5.7.3",tenant="fabrikam"} 0`,
		`smtpbridge_upstream_replies_total{code_class="5xx",enhanced="5.7.139",tenant="fabrikam"} 0`,
		`smtpbridge_queue_messages{state="dead"} 0`,
		`smtpbridge_queue_oldest_message_age_seconds 0`,
	)
	for _, res := range AuthResults {
		for _, mech := range Mechanisms {
			wantLines(t, body, `smtpbridge_auth_attempts_total{listener="lan",mechanism="`+mech+`",result="`+res+`"} 0`)
		}
	}
	for _, lazy := range []string{`smtpbridge_messages_rejected_total{`, `reason="expired"`, `smtpbridge_recipients_refused_total{`,
		`smtpbridge_delivery_latency_seconds_count{`, `smtpbridge_upstream_duration_seconds_count{`, `enhanced="2.0.0"`, `smtpbridge_device_spool_bytes{`, `smtpbridge_upstream_connections{`} {
		if strings.Contains(body, lazy) {
			t.Errorf("/metrics has %s before it happened:\n%s", lazy, testenv.Grep(body, lazy))
		}
	}
}

// At 10,000 devices and 200 tenants, a fleet's /metrics is at most 4
// series a device plus about 10 a tenant, under 42,000 series and
// 3.5 MB; with per_device: false under 2,000 series and 300 KB, the
// message counters then per tenant (device ""). Switching on a reload
// drops the other kind's series.
func TestMetricsSeriesAtScale(t *testing.T) {
	const devices, tenants = 10000, 200
	inv := inventory.Inventory{Listeners: []string{"lan", "tls"}}
	for i := range tenants {
		inv.Tenants = append(inv.Tenants, inventory.Tenant{Name: fmt.Sprintf("t%03d", i), RecipientsPerDay: 10000})
	}
	for i := range devices {
		inv.Devices = append(inv.Devices, inventory.Device{Name: fmt.Sprintf("mfp-%05d", i), Tenant: fmt.Sprintf("t%03d", i%tenants)})
	}
	count := func(body string, prefix string) int {
		n := 0
		for _, line := range strings.Split(body, "\n") {
			if line != "" && !strings.HasPrefix(line, "#") && strings.HasPrefix(line, prefix) {
				n++
			}
		}
		return n
	}
	seen := map[string]time.Time{}
	for _, d := range inv.Devices {
		seen[d.Name] = time.Unix(1800000000, 0)
	}
	m := New("dev", inv, Options{PerDevice: true})
	m.SetSources(Sources{DeviceLastSeen: func() map[string]time.Time { return seen }})
	for _, t := range inv.Tenants {
		m.ObserveToken(t.Name, tokenstore.Token{ExpiresOn: time.Now().Add(time.Hour)}, nil)
	}
	body := scrape(t, m)
	all, perDevice := count(body, ""), strings.Count(body, `device="mfp-`)
	t.Logf("per device: %d series (%d with a device label), %.2f MB", all, perDevice, float64(len(body))/1e6)
	if perDevice > 4*devices {
		t.Errorf("%d series with a device label for %d devices, want at most 4 each", perDevice, devices)
	}
	if all >= 42000 || len(body) >= 3.5e6 {
		t.Errorf("%d series, %d bytes; want under 42,000 and 3.5 MB", all, len(body))
	}
	m.Observe(audit.Event{Kind: audit.Received, Device: "mfp-00007", Tenant: "t007"})
	m.Configure(inv, Options{PerDevice: false})
	m.Observe(audit.Event{Kind: audit.Received, Device: "mfp-00007", Tenant: "t007"})
	body = scrape(t, m)
	all = count(body, "")
	t.Logf("per_device: false: %d series, %.1f KB", all, float64(len(body))/1e3)
	if all >= 2000 || len(body) >= 300e3 {
		t.Errorf("per_device: false: %d series, %d bytes; want under 2,000 and 300 KB", all, len(body))
	}
	if strings.Contains(body, `device="mfp-`) {
		t.Errorf("per_device: false keeps device series:\n%s", testenv.Grep(body, `device="mfp-`))
	}
	wantLines(t, body, `smtpbridge_messages_received_total{device="",tenant="t007"} 1`)
	m.Configure(inv, Options{PerDevice: true})
	body = scrape(t, m)
	if strings.Contains(body, `device=""`) {
		t.Errorf("per_device: true keeps the per-tenant series:\n%s", testenv.Grep(body, `device=""`))
	}
	wantLines(t, body, `smtpbridge_messages_received_total{device="mfp-00007",tenant="t007"} 0`)
}

// A reload adds the new devices' series and drops the removed ones', so a
// removed device neither shows as silent nor lingers in dashboards.
func TestMetricsConfigure(t *testing.T) {
	m := New("dev", testInventory, Options{PerDevice: true})
	m.Observe(audit.Event{Kind: audit.Received, Device: "alarm", Tenant: "contoso", Size: 10})
	m.Configure(inventory.Inventory{
		Listeners: []string{"lan"},
		Tenants:   []inventory.Tenant{{Name: "contoso"}},
		Devices:   []inventory.Device{{Name: "mfp-2f", Tenant: "contoso"}, {Name: "erp", Tenant: "contoso", ExpectEvery: time.Hour}},
	}, Options{PerDevice: true})
	m.Reloaded(false)
	body := scrape(t, m)
	wantLines(t, body,
		`smtpbridge_messages_received_total{device="erp",tenant="contoso"} 0`,
		`smtpbridge_device_expected_interval_seconds{device="erp"} 3600`,
		`smtpbridge_device_last_seen_timestamp_seconds{device="erp"} 0`,
		`smtpbridge_config_reload_success 0`,
	)
	for _, gone := range []string{`device="alarm"`, `tenant="fabrikam"`, `smtpbridge_credential_expiry_timestamp_seconds{tenant="contoso"}`} {
		if strings.Contains(body, gone) {
			t.Errorf("/metrics still has %s after the reload:\n%s", gone, testenv.Grep(body, gone))
		}
	}
}

func TestReplyLabels(t *testing.T) {
	for _, c := range []struct {
		code       int
		enh        [3]int
		class, enc string
	}{
		{250, [3]int{2, 0, 0}, "2xx", "2.0.0"},
		{535, [3]int{5, 7, 3}, "5xx", "5.7.3"},
		{535, [3]int{5, 7, 139}, "5xx", "5.7.139"},
		{432, [3]int{4, 3, 2}, "4xx", "4.3.2"},
		{554, [3]int{5, 2, 0}, "5xx", "5.2.0"},
		{550, [3]int{5, 1, 1}, "5xx", "other"},   // not one of Exchange's known codes
		{451, [3]int{0, 0, 0}, "4xx", "other"},   // no enhanced code
		{451, [3]int{5, 7, 3}, "4xx", "other"},   // class and enhanced code disagree
		{999, [3]int{9, 9, 9}, "other", "other"}, // nonsense
	} {
		class, enh := replyLabels(c.code, c.enh)
		if class != c.class || enh != c.enc {
			t.Errorf("replyLabels(%d, %v) = %s, %s; want %s, %s", c.code, c.enh, class, enh, c.class, c.enc)
		}
	}
}

func goVersion() string { return runtime.Version() }

// The sign-in gauge is 1 while a delegated mailbox needs a sign-in, and
// goes when a token comes or when no device sends as the mailbox.
func TestSignInRequired(t *testing.T) {
	inv := inventory.Inventory{Tenants: []inventory.Tenant{{Name: "t"}}, Devices: []inventory.Device{{Name: "mfp", Tenant: "t", Mailbox: mailaddr.MustParse("scans@x.example")}}}
	m := New("dev", inv, Options{PerDevice: true})
	const series = `smtpbridge_mailbox_sign_in_required{mailbox="scans@x.example",tenant="t"} 1`
	m.ObserveSignIn("t", "scans@x.example", true)
	if !strings.Contains(scrape(t, m), series) {
		t.Fatal("no series for the mailbox that needs a sign-in")
	}
	m.ObserveSignIn("t", "scans@x.example", false)
	if strings.Contains(scrape(t, m), "smtpbridge_mailbox_sign_in_required{") {
		t.Fatal("the series stays after a token came")
	}
	m.ObserveSignIn("t", "scans@x.example", true)
	m.Configure(inventory.Inventory{Tenants: []inventory.Tenant{{Name: "t"}}, Devices: []inventory.Device{{Name: "mfp", Tenant: "t", Mailbox: mailaddr.MustParse("other@x.example")}}}, Options{PerDevice: true})
	if strings.Contains(scrape(t, m), "smtpbridge_mailbox_sign_in_required{") {
		t.Fatal("the series stays after the config stopped sending as the mailbox")
	}
}
