package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// The shipped Prometheus and Grafana files (examples/) against the bridge's
// real metrics: every name they use is one the bridge exports, the rules
// pass promtool and their unit tests, and the README documents every
// metric.

const examples = "../examples"

// exported returns every metric name the bridge exposes, histogram series
// included, with every label set present.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	m := New("dev", inventory.Inventory{
		Listeners: []string{"lan"},
		Tenants:   []inventory.Tenant{{Name: "contoso", CredentialExpiry: time.Now().Add(time.Hour), RecipientsPerDay: 10000}},
		Devices:   []inventory.Device{{Name: "alarm", Tenant: "contoso", ExpectEvery: time.Hour}},
	}, Options{PerDevice: true})
	// The series that appear at their first occurrence.
	m.Observe(audit.Event{Kind: audit.Rejected, Device: "alarm", Reason: audit.ReasonPolicy})
	m.Observe(audit.Event{Kind: audit.Bounced, Device: "alarm", Tenant: "contoso", Recipient: "x@example.com"})
	m.Observe(audit.Event{Kind: audit.Delivered, Device: "alarm", Tenant: "contoso", Accepted: time.Now()})
	m.UpstreamStage("contoso", "data", time.Millisecond)
	m.UpstreamReply("contoso", 250, [3]int{2, 0, 0})
	m.UpstreamError("contoso", "connect")
	m.RefusedLocally("contoso", "send_as")
	m.ObserveToken("contoso", tokenstore.Token{ExpiresOn: time.Now().Add(time.Hour)}, nil)
	m.ObserveSignIn("contoso", "a@contoso.example", true)
	m.MailboxHold("contoso", "a@contoso.example", "throttled", true)
	m.SetSources(Sources{UpstreamConnections: func() map[string]int { return map[string]int{"contoso": 1} }, MailboxRecipients: func() map[upstream.Mailbox]int {
		return map[upstream.Mailbox]int{{Tenant: "contoso", Address: "a@contoso.example"}: 1}
	}})
	names := map[string]bool{}
	for _, line := range strings.Split(scrape(t, m), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}
	return names
}

var metricNameRE = regexp.MustCompile(`\b(smtpbridge_[a-z_]+|process_[a-z_]+|go_[a-z_]+)\b`)

func checkNames(t *testing.T, where, expr string, names map[string]bool) int {
	t.Helper()
	found := metricNameRE.FindAllString(expr, -1)
	for _, n := range found {
		if !names[n] {
			t.Errorf("%s uses %s, which the bridge does not export: %s", where, n, expr)
		}
	}
	return len(found)
}

type dashboard struct {
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ X, Y, W, H int } `json:"gridPos"`
		Targets []struct {
			Expr       string `json:"expr"`
			RefID      string `json:"refId"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(examples, "grafana", "dashboards", "smtpbridge.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("the dashboard is not valid JSON: %v", err)
	}
	return d
}

// dashboardExprs returns every PromQL expression of the shipped dashboard.
func dashboardExprs(t *testing.T) []string {
	var out []string
	for _, p := range loadDashboard(t).Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

func TestDashboard(t *testing.T) {
	names := exported(t)
	d := loadDashboard(t)
	if d.UID != "smtpbridge" {
		t.Errorf("dashboard uid %q; links and the compose home dashboard expect smtpbridge", d.UID)
	}
	n := 0
	occupied := map[[2]int]string{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := occupied[[2]int{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
				}
				occupied[[2]int{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if refs[tg.RefID] || tg.RefID == "" {
				t.Errorf("panel %q: refId %q missing or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %s does not use the ${datasource} variable", p.Title, tg.RefID)
			}
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q target %s ignores the $instance variable: %s", p.Title, tg.RefID, tg.Expr)
			}
			n += checkNames(t, "dashboard panel "+p.Title, tg.Expr, names)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
	for _, v := range d.Templating.List {
		q, _ := json.Marshal(v.Query)
		n += checkNames(t, "dashboard variable "+v.Name, string(q), names)
	}
	if n < 20 {
		t.Errorf("only %d metric references found in the dashboard; is the parser broken?", n)
	}
	// What the page promises: every device, when it was last seen, its
	// messages and failures, token and certificate health, the queue.
	var all strings.Builder
	for _, e := range dashboardExprs(t) {
		all.WriteString(e + "\n")
	}
	for _, want := range []string{"smtpbridge_device_last_seen_timestamp_seconds", "smtpbridge_messages_received_total",
		"smtpbridge_messages_failed_total", "smtpbridge_token_expiry_timestamp_seconds", "smtpbridge_credential_expiry_timestamp_seconds",
		"smtpbridge_queue_messages", "smtpbridge_queue_oldest_message_age_seconds"} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}

func TestGrafanaProvisioning(t *testing.T) {
	var ds struct {
		Datasources []struct {
			Type, URL string
		}
	}
	readYAML(t, filepath.Join(examples, "grafana", "provisioning", "datasources", "prometheus.yml"), &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("datasource provisioning: %+v", ds)
	}
	var dp struct {
		Providers []struct {
			Options struct{ Path string }
		}
	}
	readYAML(t, filepath.Join(examples, "grafana", "provisioning", "dashboards", "smtpbridge.yml"), &dp)
	compose, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(dp.Providers) != 1 || !strings.Contains(string(compose), "./examples/grafana/dashboards:"+dp.Providers[0].Options.Path) {
		t.Errorf("the dashboard provider's path is not where docker-compose.yml mounts the dashboards: %+v", dp)
	}
	for _, want := range []string{"./examples/grafana/provisioning:/etc/grafana/provisioning", "./examples/prometheus:/etc/prometheus",
		`SMTPBRIDGE_HTTP_ADDRESS: "0.0.0.0:9464"`} {
		if !strings.Contains(string(compose), want) {
			t.Errorf("docker-compose.yml lacks %s", want)
		}
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestAlertRulesUseExportedMetrics(t *testing.T) {
	names := exported(t)
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
			}
		}
	}
	readYAML(t, filepath.Join(examples, "prometheus", "alerts.yml"), &rules)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Alert == "SmtpbridgeDown" {
				continue // up is Prometheus' own
			}
			if checkNames(t, "alert "+r.Alert, r.Expr, names) == 0 {
				t.Errorf("alert %s uses no smtpbridge metric: %s", r.Alert, r.Expr)
			}
		}
	}
	// The alerts the operations issue asks for.
	for _, want := range []string{"SmtpbridgeQueueBackingUp", "SmtpbridgeOldestMessageTooOld", "SmtpbridgeDeadLetters",
		"SmtpbridgeTokenFailures", "SmtpbridgeUpstreamRejections", "SmtpbridgeAuthFailureSpike",
		"SmtpbridgeCredentialExpiring", "SmtpbridgeDeviceSilent"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alerts.yml lacks %s", want)
		}
	}
}

// TestREADMEDocumentsMetrics keeps the README's metric reference complete.
func TestREADMEDocumentsMetrics(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	families := map[string]bool{}
	for name := range exported(t) {
		families[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] = true
	}
	for base := range families {
		short := strings.TrimPrefix(base, "smtpbridge_")
		if strings.HasPrefix(base, "smtpbridge_") && !strings.Contains(string(readme), "`"+base+"`") &&
			!strings.Contains(string(readme), "`"+short+"`") && !strings.Contains(string(readme), "`"+short+"{") {
			t.Errorf("README.md does not document %s", base)
		}
	}
}
