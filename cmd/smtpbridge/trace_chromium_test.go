//go:build integration

package main

import (
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// The status page's trace and charts, as headless Chromium renders
// them: the search finds the mix of messages, the dead letter links to
// its story, and after a restart of the bridge the 24-hour charts still
// hold the run's counts. The screenshot's path is in the test output.
func TestTraceInChromium(t *testing.T) {
	tb := startTraceBridge(t)
	page := "http://" + tb.http

	// A restart: the charts come back from status.json.
	tb.p.stop(t)
	tb.p = startBridge(t, tb.env, []string{tb.plain, tb.http}, "serve", "--config", tb.path)

	dom := chromium(t, "--dump-dom", page+"/trace?to="+traceRcpt)
	if n := strings.Count(dom, `class="story"`); n != 4 {
		t.Errorf("the search shows %d stories in Chromium, want 4", n)
	}
	for _, want := range []string{"delivered", "432 4.3.2 STOREDRV.ClientSubmit", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "dead"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the search page Chromium rendered lacks %q", want)
		}
	}
	shot := filepath.Join(artifacts(t), "trace-search.png")
	chromium(t, "--window-size=1280,1600", "--hide-scrollbars", "--screenshot="+shot, page+"/trace?to="+traceRcpt)
	checkPNG(t, shot, 1280)

	status := chromium(t, "--dump-dom", page+"/")
	dead := regexp.MustCompile(`href="message/([0-9a-z]+)"`).FindStringSubmatch(status)
	if dead == nil {
		t.Fatal("no dead letter links to its story on the status page")
	}
	story := chromium(t, "--dump-dom", page+"/message/"+dead[1])
	if !strings.Contains(story, "dead") || !strings.Contains(story, "RESOLVER.ADR.RecipientNotFound") {
		t.Errorf("the dead letter's story page:\n%s", story)
	}
	sum := func(series string) int {
		m := regexp.MustCompile(`id="chart-messages".*?data-series="` + series + `" data-values="([0-9,]*)"`).FindStringSubmatch(status)
		if m == nil {
			t.Fatalf("no %s series in the messages chart", series)
		}
		n := 0
		for _, v := range strings.Split(m[1], ",") {
			x, _ := strconv.Atoi(v)
			n += x
		}
		if c := strings.Count(m[1], ",") + 1; c != 144 {
			t.Errorf("%s: %d points, want 144 (24 h of 10 minutes)", series, c)
		}
		return n
	}
	if r, d, f := sum("received"), sum("delivered"), sum("failed"); r != 4 || d != 2 || f != 2 {
		t.Errorf("after a restart the chart counts %d received, %d delivered, %d failed; sent 4, 2 delivered, 2 refused; the audit log:\n%s",
			r, d, f, testenv.ReadFile(t, filepath.Join(tb.u.dir, "audit.log")))
	}
	if !regexp.MustCompile(`id="spark-mfp-2f"[^>]*>.*?data-series="received" data-values="[0-9,]*3[0-9,]*"`).MatchString(status) {
		t.Error("mfp-2f's sparkline does not show its 3 messages")
	}
	shot = filepath.Join(artifacts(t), "status-charts.png")
	chromium(t, "--window-size=1280,2400", "--hide-scrollbars", "--screenshot="+shot, page+"/")
	checkPNG(t, shot, 1280)
}

// artifacts is where screenshots stay after the test, for a person to
// look at: $TEST_ARTIFACTS, or a directory under the system's temp.
func artifacts(t *testing.T) string {
	dir := os.Getenv("TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "smtpbridge-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func checkPNG(t *testing.T, path string, width int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() != width {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	fi, _ := f.Stat()
	t.Logf("screenshot: %s (%dx%d, %d bytes, %s)", path, img.Bounds().Dx(), img.Bounds().Dy(), fi.Size(), time.Now().Format(time.TimeOnly))
}
