//go:build integration

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// The operations side as an admin meets it, on the built binary: metrics
// scraped by a real Prometheus server (with the shipped alert rules), the
// status page in a real headless Chromium, health endpoints, the audit
// file and its rotation, and reloads.

// prometheusServer is a real Prometheus (Debian's package) scraping the
// bridge every second and evaluating the shipped alert rules.
type prometheusServer struct {
	url  string
	logs *syncbuf.Buffer
}

// startPrometheus scrapes target with basic auth, as prometheus, with the
// password in passwordFile (as docker-compose.yml does).
func startPrometheus(t *testing.T, target, passwordFile string) *prometheusServer {
	t.Helper()
	bin := testenv.LookTool(t, "prometheus")
	dir := t.TempDir()
	rules, err := filepath.Abs("../../examples/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: smtpbridge
    basic_auth:
      username: prometheus
      password_file: %q
    static_configs:
      - targets: [%q]
`, rules, passwordFile, target)
	writeFile(t, filepath.Join(dir, "prometheus.yml"), cfg)
	addr := testenv.FreePort(t)
	p := &prometheusServer{url: "http://" + addr, logs: &syncbuf.Buffer{}}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--web.enable-lifecycle")
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(p.url + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("prometheus exited: %v\n%s", err, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready:\n%s", p.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p
}

type promVector struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

// query runs an instant query through Prometheus' HTTP API.
func (p *prometheusServer) query(t *testing.T, q string) promVector {
	t.Helper()
	_, body := httpGet(t, p.url+"/api/v1/query?query="+url.QueryEscape(q))
	var v promVector
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("query %s: %v\n%s", q, err, body)
	}
	return v
}

// value returns the single value of q, or "" while there is none.
func (p *prometheusServer) value(t *testing.T, q string) string {
	t.Helper()
	v := p.query(t, q)
	if v.Status != "success" {
		t.Fatalf("query %s: %s", q, v.Error)
	}
	if len(v.Data.Result) != 1 {
		return ""
	}
	s, _ := v.Data.Result[0].Value[1].(string)
	return s
}

// firing returns the names of the alerts firing now.
func (p *prometheusServer) firing(t *testing.T) map[string]map[string]string {
	t.Helper()
	_, body := httpGet(t, p.url+"/api/v1/alerts")
	var r struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("alerts: %v\n%s", err, body)
	}
	out := map[string]map[string]string{}
	for _, a := range r.Data.Alerts {
		if a.State == "firing" {
			out[a.Labels["alertname"]] = a.Labels
		}
	}
	return out
}

// chromium runs Debian's Chromium headless with the flags this machine's
// closed network needs, and returns what it printed.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	bin := testenv.LookTool(t, "chromium")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

func TestOperations(t *testing.T) {
	swaks := testenv.LookTool(t, "swaks")
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	// erp queues its mail, and sends as an address the mailbox has no
	// SendAs for: Exchange refuses it (550 5.7.60) and it becomes a dead
	// letter.
	insertDevices(t, path, fmt.Sprintf(`  - name: erp
    username: erp
    password_hash: %q
    tenant: contoso
    mailbox: scanner@contoso.example
    from_policy: enforce
    allowed_from: ["billing@contoso.example"]
    delivery: {mode: queue}
`, hashOf(t, password)))
	audit := filepath.Join(u.dir, "audit.log")
	data, _ := os.ReadFile(path)
	writeFile(t, path, strings.Replace(string(data), "log:\n  level: debug\n", "log:\n  level: debug\n  audit_file: audit.log\n", 1))
	// The status page and /metrics behind http.auth, the password in a
	// file that Prometheus reads too.
	pwFile := filepath.Join(u.dir, "metrics.password")
	const pagePassword = "ops-page-password-42"
	writeFile(t, pwFile, pagePassword+"\n")
	appendConfig(t, path, "  auth:\n    username: prometheus\n    password_file: metrics.password\n")
	env := []string{"SSL_CERT_FILE=" + u.caFile, "TEST_CLIENT_SECRET=" + clientSecret}
	p := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	prom := startPrometheus(t, httpAddr, pwFile)
	base := "http://" + httpAddr
	// page is base with http.auth's credential, as a browser or curl -u
	// sends it.
	page := "http://prometheus:" + pagePassword + "@" + httpAddr
	// Prometheus has seen the bridge before anything happens, so that the
	// alert rules see the counters change.
	testenv.Eventually(t, "the first scrape", 20*time.Second, func() bool { return prom.value(t, `up{job="smtpbridge"}`) == "1" })

	for _, c := range []struct {
		user, from, want string
	}{
		{"mfp-2f", "scan@printer.lan", "250 2.0.0 OK"},
		{"erp", "billing@contoso.example", "250 2.0.0 OK"}, // queued, then refused by Exchange
	} {
		out, err := runCmd(t, "", swaks, "--server", plain, "--auth", "LOGIN", "--auth-user", c.user, "--auth-password", password,
			"--from", c.from, "--to", "bob@contoso.example", "--h-Subject", "ops "+c.user, "--body", "ops body canary")
		if err != nil || !strings.Contains(out, c.want) {
			t.Fatalf("swaks as %s: %v\n%s", c.user, err, out)
		}
	}
	if out, _ := runCmd(t, "", swaks, "--server", plain, "--auth", "LOGIN", "--auth-user", "mfp-2f", "--auth-password", "wrong",
		"--from", "x@printer.lan", "--to", "bob@contoso.example"); !strings.Contains(out, "535 5.7.8") {
		t.Fatalf("wrong password:\n%s", out)
	}
	testenv.Eventually(t, "the dead letter", 20*time.Second, func() bool {
		_, m := httpGet(t, page+"/metrics")
		return strings.Contains(m, `smtpbridge_queue_messages{state="dead"} 1`)
	})
	deadID := auditID(t, audit, "dead")

	t.Run("health", func(t *testing.T) {
		if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("/healthz = %d %q", code, body)
		}
		if code, body := httpGet(t, base+"/readyz"); code != 200 || body != "ready\n" {
			t.Errorf("/readyz = %d %q", code, body)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		_, m := httpGet(t, page+"/metrics")
		for _, want := range []string{
			`smtpbridge_messages_received_total{device="mfp-2f",tenant="contoso"} 1`,
			`smtpbridge_messages_delivered_total{device="mfp-2f",tenant="contoso"} 1`,
			`smtpbridge_messages_received_total{device="erp",tenant="contoso"} 1`,
			`smtpbridge_messages_failed_total{device="erp",reason="permanent",tenant="contoso"} 1`,
			`smtpbridge_messages_delivered_total{device="fab-mfp",tenant="fabrikam"} 0`,
			`smtpbridge_auth_attempts_total{listener="lan",mechanism="LOGIN",result="bad_credentials"} 1`,
			`smtpbridge_upstream_replies_total{code_class="5xx",enhanced="5.7.60",tenant="contoso"} 1`,
			`smtpbridge_upstream_replies_total{code_class="2xx",enhanced="2.0.0",tenant="contoso"} 1`,
			`smtpbridge_connections_active{listener="lan"} 0`,
			`smtpbridge_config_reload_success 1`,
			`smtpbridge_credential_expiry_timestamp_seconds{tenant="fabrikam"}`,
		} {
			if !strings.Contains(m, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	t.Run("status page in Chromium", func(t *testing.T) {
		dom := chromium(t, "--dump-dom", page+"/")
		for _, want := range []string{
			"smtpbridge on bridge.test",
			`id="device-mfp-2f"`, `id="device-erp"`, `id="device-fab-mfp"`,
			`<td data-label="Received" class="num">1</td>`,
			`<td data-label="Delivered" class="num">1</td>`,
			`id="dead-letters"`, deadID, "5.7.60",
			`<b id="dead-count">1</b>`,
			"bad_credentials from 127.0.0.1",
			`id="tenant-fabrikam"`, "certificate",
		} {
			if !strings.Contains(dom, want) {
				t.Errorf("the page Chromium rendered lacks %q", want)
			}
		}
		// The device's row in the rendered DOM says it was seen.
		row := regexp.MustCompile(`(?s)id="device-mfp-2f".*?</tr>`).FindString(dom)
		seen := regexp.MustCompile(`data-label="Last seen"><span class="cut" title="20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC">(just now|\d+s ago)<`)
		if !seen.MatchString(row) {
			t.Errorf("mfp-2f's row does not show it as seen:\n%s", row)
		}
		// Its page has the one delivery's ID at Exchange.
		dev := chromium(t, "--dump-dom", page+"/device/mfp-2f")
		if !regexp.MustCompile(`Last delivery's ID at Microsoft</th><td class="id">[^<]*@`).MatchString(dev) {
			t.Errorf("mfp-2f's page lacks its delivery's ID at Exchange:\n%s", dev)
		}
		// On a phone-sized window the page renders and fits its width.
		shot := filepath.Join(t.TempDir(), "phone.png")
		chromium(t, "--window-size=390,844", "--hide-scrollbars", "--screenshot="+shot, page+"/")
		f, err := os.Open(shot)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		img, err := png.Decode(f)
		if err != nil || img.Bounds().Dx() != 390 {
			t.Errorf("phone screenshot: %v, %v", err, img)
		}
	})

	t.Run("Prometheus", func(t *testing.T) {
		testenv.Eventually(t, "Prometheus to read the delivered count", 20*time.Second, func() bool {
			return prom.value(t, `smtpbridge_messages_delivered_total{device="mfp-2f"}`) == "1"
		})
		if got := prom.value(t, `sum(smtpbridge_messages_delivered_total)`); got != "1" {
			t.Errorf("sum of delivered = %q, want 1", got)
		}
		// The shipped alert rules, evaluated by Prometheus on the real
		// metrics: the dead letter and Exchange's refusal fire.
		testenv.Eventually(t, "SmtpbridgeDeadLetters and SmtpbridgeUpstreamRejections to fire", 30*time.Second, func() bool {
			f := prom.firing(t)
			return f["SmtpbridgeDeadLetters"] != nil && f["SmtpbridgeUpstreamRejections"]["enhanced"] == "5.7.60"
		})
		t.Logf("firing: %v", prom.firing(t))
		if f := prom.firing(t); f["SmtpbridgeExchangeRefusesLogin"] != nil || f["SmtpbridgeTokenFailures"] != nil {
			t.Errorf("alerts fire that should not: %v", f)
		}
		// Every query of the shipped dashboard runs on this Prometheus.
		for _, expr := range dashboardQueries(t) {
			q := strings.ReplaceAll(expr, "$instance", ".*")
			if v := prom.query(t, q); v.Status != "success" {
				t.Errorf("dashboard query %s: %s", q, v.Error)
			}
		}
		v := prom.query(t, `max by (device) (smtpbridge_device_last_seen_timestamp_seconds{instance=~".*"}) * 1000`)
		if len(v.Data.Result) != 3 {
			t.Errorf("the dashboard's devices table would show %d devices, want 3: %+v", len(v.Data.Result), v.Data.Result)
		}
	})

	t.Run("audit log and rotation", func(t *testing.T) {
		log := testenv.ReadFile(t, audit)
		for _, want := range []string{`"event":"received"`, `"event":"delivered"`, `"event":"bounced"`, `"event":"dead"`,
			`"upstream_id":"`, `"reply":"550 5.7.60`, `"device":"erp"`, `"rcpts":1`} {
			if !strings.Contains(log, want) {
				t.Errorf("audit log lacks %s", want)
			}
		}
		if err := os.Rename(audit, audit+".1"); err != nil {
			t.Fatal(err)
		}
		p.cmd.Process.Signal(syscall.SIGHUP)
		testenv.Eventually(t, "the reload", 10*time.Second, func() bool { return strings.Contains(p.logs.String(), "configuration reloaded") })
		if _, err := sendOne(plain, "after rotation"); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "the new audit file", 10*time.Second, func() bool {
			b, _ := os.ReadFile(audit)
			return strings.Contains(string(b), `"event":"delivered"`)
		})
	})

	t.Run("failed reload keeps the config", func(t *testing.T) {
		good := testenv.ReadFile(t, path)
		writeFile(t, path, strings.Replace(good, "    tenant: fabrikam\n", "    tenant: nosuchtenant\n", 1))
		code, body := postAdmin(t, base+"/-/reload", filepath.Join(u.dir, "spool"))
		if code != 422 || !strings.Contains(body, `unknown tenant \"nosuchtenant\"`) {
			t.Errorf("POST /-/reload with a bad config = %d %s", code, body)
		}
		_, m := httpGet(t, page+"/metrics")
		if !strings.Contains(m, "smtpbridge_config_reload_success 0") {
			t.Error("config_reload_success is not 0 after a failed reload")
		}
		if _, page := httpGet(t, page+"/"); !strings.Contains(page, "last reload failed") || !strings.Contains(page, "nosuchtenant") {
			t.Error("the status page does not show the failed reload")
		}
		// The old config still serves.
		if _, err := sendOne(plain, "after failed reload"); err != nil {
			t.Errorf("sending after a failed reload: %v", err)
		}
		writeFile(t, path, good)
		if code, body := postAdmin(t, base+"/-/reload", filepath.Join(u.dir, "spool")); code != 200 || !strings.Contains(body, `"ok": true`) {
			t.Errorf("POST /-/reload with the good config = %d %s", code, body)
		}
		_, m = httpGet(t, page+"/metrics")
		if !strings.Contains(m, "smtpbridge_config_reload_success 1") {
			t.Error("config_reload_success is not 1 after a good reload")
		}
	})

	p.stop(t)
	rotated, _ := os.ReadFile(audit + ".1")
	logs := p.logs.String() + testenv.ReadFile(t, audit) + string(rotated)
	for _, canary := range []string{clientSecret, password, "Bearer", "ops body canary", "eyJ0eXAi"} {
		if strings.Contains(logs, canary) {
			t.Errorf("a log contains %q", canary)
		}
	}
	if t.Failed() {
		t.Logf("bridge log:\n%s", p.logs.String())
	}
}

// dashboardQueries returns the PromQL of every panel of the shipped
// Grafana dashboard.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(testenv.ReadFile(t, "../../examples/grafana/dashboards/smtpbridge.json")), &d); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	if len(out) < 20 {
		t.Fatalf("only %d dashboard queries", len(out))
	}
	return out
}
