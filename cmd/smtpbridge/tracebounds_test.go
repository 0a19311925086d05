package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// writeAuditLog writes an audit log of about size bytes: messages
// received and delivered, in the bridge's own format.
func writeAuditLog(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	start := time.Now().Add(-24 * time.Hour).UTC()
	var n int64
	for i := 0; n < size; i++ {
		at := start.Add(time.Duration(i) * 100 * time.Millisecond).Format(time.RFC3339Nano)
		id := fmt.Sprintf("msg%09d", i)
		k, _ := fmt.Fprintf(w, `{"level":"info","event":"received","msg_id":"%s","device":"mfp-%03d","tenant":"contoso","mailbox":"scanner@contoso.example","from":"scanner@contoso.example","rcpts":1,"to":["user%05d@contoso.example"],"remote":"10.20.0.15","message_id":"%s@printer.lan","size":180000,"mode":"hybrid","time":"%s","message":"message received"}`+"\n",
			id, i%200, i%20000, id, at)
		l, _ := fmt.Fprintf(w, `{"level":"info","event":"delivered","msg_id":"%s","device":"mfp-%03d","tenant":"contoso","mailbox":"scanner@contoso.example","rcpts":1,"reply":"250 2.0.0 OK <%s@FAKE.prod.outlook.com>","upstream_id":"%s@FAKE.prod.outlook.com","attempt":1,"time":"%s","message":"message delivered to Exchange Online"}`+"\n",
			id, i%200, id, id, at)
		n += int64(k + l)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// The status page's message trace against a 250 MB audit log, as the
// review tried it: 40 searches that match every message, each closed
// right after it is sent. The bridge's memory stays under 128 MiB, it
// answers /readyz throughout, and its searches stop with their clients;
// a cross-site request is refused before any search.
func TestTraceSearchFlood(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	writeFile(t, path, strings.Replace(testenv.ReadFile(t, path), "log:\n  level: debug\n", "log:\n  level: info\n  audit_file: audit.log\n", 1))
	writeAuditLog(t, filepath.Join(u.dir, "audit.log"), 250<<20)
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain, httpAddr}, "serve", "--config", path)
	pid := p.cmd.Process.Pid
	base := "http://" + httpAddr

	for _, h := range []struct{ name, value string }{{"Sec-Fetch-Site", "cross-site"}, {"Origin", "http://evil.example"}} {
		for _, page := range []string{"/trace?code=250", "/message/msg000000001", "/", "/metrics"} {
			req, _ := http.NewRequest("GET", base+page, nil)
			req.Header.Set(h.name, h.value)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s with %s: %s: %d, want 403", page, h.name, h.value, resp.StatusCode)
			}
		}
	}

	rss0 := procStatus(t, pid, "VmRSS:")
	for range 40 {
		c, err := net.Dial("tcp", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /trace?code=250 HTTP/1.1\r\nHost: %s\r\n\r\n", httpAddr)
		c.Close()
	}
	// /readyz answers throughout, promptly.
	client := &http.Client{Timeout: 2 * time.Second}
	for i := range 20 {
		resp, err := client.Get(base + "/readyz")
		if err != nil {
			t.Fatalf("/readyz %d after the flood: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/readyz: %d", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The searches stopped with their clients: the bridge is idle.
	cpu0 := procCPU(t, pid)
	time.Sleep(2 * time.Second)
	if cpu := procCPU(t, pid) - cpu0; cpu > 500*time.Millisecond {
		t.Errorf("the bridge used %s of CPU in the 2 s after the clients hung up: their searches go on", cpu)
	}
	peak := peakRSS(t, pid)
	t.Logf("40 whole-log searches hung up at once against 250 MB: RSS %.1f MiB before, peak %.1f MiB", float64(rss0)/(1<<20), float64(peak)/(1<<20))
	if peak >= 128<<20 {
		t.Errorf("peak RSS %d MiB, want under 128", peak>>20)
	}

	// A search that stays: the newest 50, saying more matched.
	start := time.Now()
	resp, err := http.Get(base + "/trace?code=250")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "50 message(s), newest first;") || !strings.Contains(string(body), "more, older, matched") {
		t.Errorf("a whole-log search: %d\n%s", resp.StatusCode, testenv.Grep(string(body), "message(s)"))
	}
	t.Logf("a search matching every message of 250 MB took %s; peak RSS now %.1f MiB", time.Since(start).Round(time.Millisecond), float64(peakRSS(t, pid))/(1<<20))
	if peak := peakRSS(t, pid); peak >= 128<<20 {
		t.Errorf("peak RSS %d MiB after a whole search, want under 128", peak>>20)
	}
}
