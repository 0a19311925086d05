package metrics

import (
	"errors"
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
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

var testInventory = inventory.Inventory{
	Listeners: []string{"lan"},
	Tenants:   []inventory.Tenant{{Name: "contoso", CredentialExpiry: time.Unix(1900000000, 0)}, {Name: "fabrikam"}},
	Devices: []inventory.Device{
		{Name: "mfp-2f", Tenant: "contoso"},
		{Name: "alarm", Tenant: "contoso", ExpectEvery: 24 * time.Hour},
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
	m := New("1.2.3", testInventory)
	seen := time.Unix(1800000000, 0)
	m.SetSources(Sources{
		Queue: func() queue.Stats {
			return queue.Stats{Queued: 2, Deferred: 1, Dead: 4, Oldest: time.Now().Add(-90 * time.Second)}
		},
		UpstreamConnections: func() map[string]int { return map[string]int{"contoso": 2} },
		DeviceLastSeen:      func() map[string]time.Time { return map[string]time.Time{"mfp-2f": seen} },
		DeviceLastMessage:   func() map[string]time.Time { return map[string]time.Time{"mfp-2f": seen.Add(-time.Hour)} },
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
		`smtpbridge_device_last_message_timestamp_seconds{device="mfp-2f"} 1.7999964e+09`,
		`smtpbridge_device_last_message_timestamp_seconds{device="alarm"} 0`,
		`smtpbridge_device_expected_interval_seconds{device="alarm"} 86400`,
		`smtpbridge_config_reload_success 1`,
	)
	if !strings.Contains(body, "smtpbridge_queue_oldest_message_age_seconds 9") {
		t.Errorf("oldest message age is not about 90 s:\n%s", testenv.Grep(body, "oldest"))
	}
	for _, absent := range []string{
		`smtpbridge_credential_expiry_timestamp_seconds{tenant="fabrikam"}`, // unknown
		`smtpbridge_device_expected_interval_seconds{device="mfp-2f"}`,      // none configured
		`smtpbridge_upstream_errors_total{stage="token"`,                    // not an upstream stage
	} {
		if strings.Contains(body, absent) {
			t.Errorf("/metrics has %s", absent)
		}
	}
	if !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_start_time_seconds") {
		t.Error("the Go and process collectors are missing")
	}
}

// Every label set the config defines is there, at zero, before anything
// happens: rate() then sees the first event.
func TestMetricsZeroInitialised(t *testing.T) {
	body := scrape(t, New("dev", testInventory))
	wantLines(t, body,
		`smtpbridge_connections_total{listener="lan"} 0`,
		`smtpbridge_connections_active{listener="lan"} 0`,
		`smtpbridge_messages_received_total{device="alarm",tenant="contoso"} 0`,
		`smtpbridge_messages_delivered_total{device="alarm",tenant="contoso"} 0`,
		`smtpbridge_messages_failed_total{device="alarm",reason="expired",tenant="contoso"} 0`,
		`smtpbridge_upstream_replies_total{code_class="5xx",enhanced="5.7.3",tenant="fabrikam"} 0`,
		`smtpbridge_upstream_connections{tenant="fabrikam"} 0`,
		`smtpbridge_delivery_latency_seconds_count{tenant="fabrikam"} 0`,
		`smtpbridge_queue_messages{state="dead"} 0`,
		`smtpbridge_queue_oldest_message_age_seconds 0`,
	)
	for _, res := range AuthResults {
		for _, mech := range Mechanisms {
			wantLines(t, body, `smtpbridge_auth_attempts_total{listener="lan",mechanism="`+mech+`",result="`+res+`"} 0`)
		}
	}
	for _, r := range RejectReasons {
		wantLines(t, body, `smtpbridge_messages_rejected_total{device="mfp-2f",reason="`+r+`"} 0`)
	}
}

// A reload adds the new devices' series and drops the removed ones', so a
// removed device neither shows as silent nor lingers in dashboards.
func TestMetricsConfigure(t *testing.T) {
	m := New("dev", testInventory)
	m.Observe(audit.Event{Kind: audit.Received, Device: "alarm", Tenant: "contoso", Size: 10})
	m.Configure(inventory.Inventory{
		Listeners: []string{"lan"},
		Tenants:   []inventory.Tenant{{Name: "contoso"}},
		Devices:   []inventory.Device{{Name: "mfp-2f", Tenant: "contoso"}, {Name: "erp", Tenant: "contoso", ExpectEvery: time.Hour}},
	})
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
	m := New("dev", inv)
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
	m.Configure(inventory.Inventory{Tenants: []inventory.Tenant{{Name: "t"}}, Devices: []inventory.Device{{Name: "mfp", Tenant: "t", Mailbox: mailaddr.MustParse("other@x.example")}}})
	if strings.Contains(scrape(t, m), "smtpbridge_mailbox_sign_in_required{") {
		t.Fatal("the series stays after the config stopped sending as the mailbox")
	}
}
