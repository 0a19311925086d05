package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

func lines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}

func TestLogger(t *testing.T) {
	// The bridge sets the process's log level globally (log.level); the
	// audit file must not depend on it.
	defer zerolog.SetGlobalLevel(zerolog.GlobalLevel())
	zerolog.SetGlobalLevel(zerolog.WarnLevel)
	var proc bytes.Buffer
	// The process log shows warnings and worse only; the file gets all.
	l := NewLogger(zerolog.New(&proc))
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := l.SetFile(path); err != nil {
		t.Fatal(err)
	}
	accepted := time.Now().Add(-3 * time.Second)
	l.Observe(Event{Kind: Received, MsgID: "m1", Device: "mfp", Tenant: "contoso", Mailbox: "scanner@contoso.example",
		From: "scanner@contoso.example", Rcpts: 2, Size: 1234, Mode: "hybrid"})
	l.Observe(Event{Kind: Delivered, MsgID: "m1", Device: "mfp", Reply: "250 2.0.0 OK <id@x>", UpstreamID: "id@x", Attempt: 1, Accepted: accepted})
	l.Observe(Event{Kind: Deferred, MsgID: "m2", Device: "erp", Tenant: "contoso", Reply: "535 5.7.3 Authentication unsuccessful",
		SetupProblem: true, RetryBy: RetryByQueue, NextAttempt: accepted, Err: errors.New("exchange refused the login")})
	l.Observe(Event{Kind: Dead, MsgID: "m3", Device: "erp", Reason: ReasonExpired})

	file := lines(t, testenv.ReadFile(t, path))
	if len(file) != 4 {
		t.Fatalf("audit file has %d lines, want 4", len(file))
	}
	want := map[string]any{"event": "received", "msg_id": "m1", "device": "mfp", "tenant": "contoso", "mailbox": "scanner@contoso.example",
		"from": "scanner@contoso.example", "rcpts": 2.0, "size": 1234.0, "mode": "hybrid"}
	for k, v := range want {
		if file[0][k] != v {
			t.Errorf("received line: %s = %v, want %v", k, file[0][k], v)
		}
	}
	if file[1]["upstream_id"] != "id@x" || file[1]["latency_ms"].(float64) < 3000 {
		t.Errorf("delivered line: %v", file[1])
	}
	if file[2]["reply"] != "535 5.7.3 Authentication unsuccessful" || file[2]["error"] != "exchange refused the login" {
		t.Errorf("deferred line: %v", file[2])
	}
	if h, _ := file[2]["hint"].(string); !strings.Contains(h, "New-ServicePrincipal") {
		t.Errorf("the deferred line's hint: %q", h)
	}
	for _, m := range file {
		if _, ok := m["time"]; !ok {
			t.Errorf("audit file line without a time: %v", m)
		}
	}

	p := lines(t, proc.String())
	if len(p) != 2 || p[0]["level"] != "error" || p[0]["problem"] != "tenant set-up" || p[1]["level"] != "warn" || p[1]["reason"] != "expired" {
		t.Errorf("process log: %v", p)
	}

	// Rotation: rename, reopen, and the next line goes to a new file.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.SetFile(path); err != nil {
		t.Fatal(err)
	}
	l.Observe(Event{Kind: Rejected, MsgID: "m4", Device: "mfp", Reason: ReasonPolicy})
	if got := lines(t, testenv.ReadFile(t, path)); len(got) != 1 || got[0]["event"] != "rejected" {
		t.Errorf("after reopening: %v", got)
	}
	if got := lines(t, testenv.ReadFile(t, path+".1")); len(got) != 4 {
		t.Errorf("the rotated file changed: %d lines", len(got))
	}
	if err := l.SetFile(filepath.Join(t.TempDir(), "missing", "audit.log")); err == nil {
		t.Error("SetFile into a missing directory succeeded")
	}
	l.Observe(Event{Kind: Dropped, MsgID: "m5"})
	if got := lines(t, testenv.ReadFile(t, path)); len(got) != 2 {
		t.Errorf("a failed SetFile did not keep the previous file: %d lines", len(got))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}
