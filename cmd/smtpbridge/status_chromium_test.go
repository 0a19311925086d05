//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// layout is what the measuring script reports of the page as Chromium
// lays it out: each list row's height against its cells' line height,
// and the columns' right edges against the window.
type layout struct {
	Width     int `json:"width"`
	Scroll    int `json:"scroll"` // the document's scroll width
	LineH     float64
	Rows      []layoutRow `json:"rows"`
	OffScreen []string    `json:"offscreen"` // headers past the window's right edge
}

type layoutRow struct {
	ID     string  `json:"id"`
	Class  string  `json:"class"`
	Height float64 `json:"height"`
	Max    float64 `json:"max"` // two lines of text, with the cell's padding
}

// measureJS runs in the page served through the test's proxy (the bridge
// serves no script; its Content-Security-Policy would refuse one).
const measureJS = `<script>
addEventListener('load', () => {
  const out = {width: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth, rows: [], offscreen: []};
  for (const tr of document.querySelectorAll('table.list tbody tr')) {
    const td = tr.querySelector('td'); if (!td) continue;
    const cs = getComputedStyle(td);
    const lh = parseFloat(cs.lineHeight) || parseFloat(cs.fontSize) * 1.45;
    const pad = parseFloat(cs.paddingTop) + parseFloat(cs.paddingBottom) + parseFloat(cs.borderBottomWidth);
    out.LineH = lh;
    out.rows.push({id: tr.id, class: tr.className, height: tr.getBoundingClientRect().height, max: 2 * lh + pad + 1});
  }
  for (const th of document.querySelectorAll('table.list th')) {
    if (th.getBoundingClientRect().right > out.width + 0.5) out.offscreen.push(th.textContent);
  }
  const pre = document.createElement('pre'); pre.id = 'measure'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>`

// measuringProxy serves the bridge's page with measureJS added.
func measuringProxy(t *testing.T, httpAddr string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get("http://" + httpAddr + r.URL.RequestURI())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		io.WriteString(w, strings.Replace(string(body), "</body>", measureJS+"</body>", 1))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func measure(t *testing.T, url string) layout {
	t.Helper()
	dom := chromium(t, "--window-size=1280,2000", "--virtual-time-budget=5000", "--dump-dom", url)
	m := regexp.MustCompile(`<pre id="measure">(.*?)</pre>`).FindStringSubmatch(dom)
	if m == nil {
		t.Fatalf("the measuring script did not run:\n%s", tail(dom, 20))
	}
	var l layout
	if err := json.Unmarshal([]byte(strings.ReplaceAll(m[1], "&quot;", `"`)), &l); err != nil {
		t.Fatalf("%v: %s", err, m[1])
	}
	return l
}

// The status page at 1280 px with a failing tenant (Entra refusing its
// token with its long AADSTS text, every device's message deferred) and
// after it recovers: no list row taller than two lines of text, no
// column past the window's right edge, and after recovery the rows that
// were amber are neutral. The screenshots are kept as test artifacts.
func TestStatusPageLayoutInChromium(t *testing.T) {
	u := startFakes(t)
	smtpAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"mfp-01", "mfp-02", "konica-minolta-bizhub-c450i-third-floor-east-wing-copy-room", "erp-production-invoicing-batch-runner"}
	var devs strings.Builder
	for _, n := range names {
		fmt.Fprintf(&devs, "  - {name: %s, username: %s, password_hash: %q, tenant: contoso, mailbox: scanner@contoso.example}\n", n, n, hash)
	}
	path := filepath.Join(u.dir, "layout.yaml")
	writeFile(t, path, u.configFrom(t, `
hostname: bridge.test
listeners:
  - {name: lan, address: {{q .SMTP}}, tls: none, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}devices:
{{.Devices}}delivery: {mode: hybrid, retry_initial: 1s, retry_max: 2s, sync_timeout: 2s}
spool: {dir: spool-layout}
http: {address: {{q .HTTP}}}
`, map[string]any{"SMTP": smtpAddr, "HTTP": httpAddr, "Devices": devs.String()}))
	u.entra.SetDown(&fakeentra.Failure{Status: 401, Code: "invalid_client", AADSTS: 7000215,
		Description: "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '" + clientID + "'. Trace ID: 0f7e3a2c-9d41-4b8e-a6f1-3c2d1e0b9a87 Correlation ID: 5b6c7d8e-1f2a-4b3c-8d9e-0a1b2c3d4e5f Timestamp: 2026-12-05 10:00:00Z"})
	startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{smtpAddr, httpAddr}, "serve", "--config", path)
	for _, n := range names {
		if reply, err := sendAs(smtpAddr, n, "scan@printer.lan", []string{"bob@contoso.example"}, "Subject: layout\r\n\r\nscan\r\n"); err != nil {
			t.Fatalf("%s: %q %v", n, reply, err)
		}
	}
	proxy := measuringProxy(t, httpAddr)
	check := func(stage string, wantWarn bool) {
		t.Helper()
		shot := filepath.Join(artifacts(t), "status-"+stage+".png")
		chromium(t, "--window-size=1280,2000", "--hide-scrollbars", "--screenshot="+shot, "http://"+httpAddr+"/")
		checkPNG(t, shot, 1280)
		l := measure(t, proxy+"/")
		t.Logf("%s: %d list rows, line height %.1f px, document %d px wide in a %d px window", stage, len(l.Rows), l.LineH, l.Scroll, l.Width)
		if len(l.Rows) < len(names) {
			t.Fatalf("%s: %d list rows measured", stage, len(l.Rows))
		}
		for _, r := range l.Rows {
			if r.Height > r.Max {
				t.Errorf("%s: row %q is %.0f px tall, more than two lines (%.0f px)", stage, r.ID, r.Height, r.Max)
			}
		}
		if len(l.OffScreen) > 0 || l.Scroll > l.Width {
			t.Errorf("%s: columns past the window's edge: %v (document %d px wide, window %d)", stage, l.OffScreen, l.Scroll, l.Width)
		}
		warn := 0
		for _, r := range l.Rows {
			if strings.HasPrefix(r.ID, "device-") && r.Class == "warn" {
				warn++
			}
		}
		if wantWarn && warn != len(names) {
			t.Errorf("%s: %d amber device rows, want the %d failing", stage, warn, len(names))
		}
		if !wantWarn && warn != 0 {
			t.Errorf("%s: %d device rows still amber after the recovery", stage, warn)
		}
	}
	testenv.Eventually(t, "the failing tenant on the page", 30*time.Second, func() bool {
		_, page := httpGet(t, "http://"+httpAddr+"/")
		return strings.Count(page, `<tr class="warn" id="device-`) == len(names) && strings.Contains(page, "AADSTS7000215")
	})
	check("failing", true)

	u.entra.SetDown(nil)
	testenv.Eventually(t, "every message delivered after the recovery", 60*time.Second, func() bool {
		return len(u.exo.Messages()) >= len(names)
	})
	testenv.Eventually(t, "the rows neutral on the page", 15*time.Second, func() bool {
		_, page := httpGet(t, "http://"+httpAddr+"/")
		return !strings.Contains(page, `<tr class="warn" id="device-`)
	})
	check("recovered", false)
}
