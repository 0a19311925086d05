package trace

import (
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
)

// writeLog writes n messages' events (received, deferred for every
// tenth, delivered or dead) to path through the audit logger, as the
// bridge writes them, and returns the bytes written.
func writeLog(t testing.TB, path string, n int, start time.Time) int64 {
	t.Helper()
	l := audit.NewLogger(zerolog.Nop())
	if err := l.SetFile(path); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range n {
		id := fmt.Sprintf("msg%08d", i)
		dev := fmt.Sprintf("mfp-%03d", i%200)
		to := []string{fmt.Sprintf("user%05d@contoso.example", i%20000)}
		base := audit.Event{MsgID: id, Device: dev, Tenant: "contoso", Mailbox: "scanner@contoso.example", From: "scanner@contoso.example", Rcpts: 1}
		ev := base
		ev.Kind, ev.To, ev.Remote, ev.Size, ev.Mode, ev.MessageID = audit.Received, to, "10.20.0.15", 180_000, "hybrid", id+"@printer.lan"
		l.Observe(ev)
		if i%10 == 0 {
			ev = base
			ev.Kind, ev.Attempt, ev.Reply, ev.RetryBy = audit.Deferred, 1, "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", audit.RetryByQueue
			l.Observe(ev)
		}
		ev = base
		if i%1000 == 999 {
			ev.Kind, ev.Reason, ev.Reply = audit.Dead, audit.ReasonPermanent, "550 5.7.60 SendAsDenied; scanner@contoso.example not allowed to send as x"
		} else {
			ev.Kind, ev.Attempt, ev.UpstreamID, ev.Reply = audit.Delivered, 1, id+"@FAKE.prod.outlook.com", "250 2.0.0 OK <"+id+"@FAKE.prod.outlook.com>"
		}
		l.Observe(ev)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestSearch(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.log")
	writeLog(t, log, 3000, time.Now())
	// A rotated, compressed file with an older message.
	old := filepath.Join(dir, "audit.log.1.gz")
	f, _ := os.Create(old)
	gz := gzip.NewWriter(f)
	gz.Write([]byte(`{"level":"info","event":"received","msg_id":"oldmsg","device":"MFP-Old","to":["Rare@Example.com"],"time":"2026-11-01T10:00:00Z"}` + "\n" +
		`{"level":"info","event":"delivered","msg_id":"oldmsg","device":"MFP-Old","upstream_id":"OLD1@x","reply":"250 2.0.0 OK","time":"2026-11-01T10:00:01Z"}` + "\n"))
	gz.Close()
	f.Close()
	os.Chtimes(old, time.Now().Add(-30*24*time.Hour), time.Now().Add(-30*24*time.Hour))
	files, err := Files(log)
	if err != nil || len(files) != 2 || files[0] != old {
		t.Fatalf("Files = %v, %v", files, err)
	}
	for _, tc := range []struct {
		name string
		q    Query
		want int
	}{
		{"a recipient, any case", Query{To: "USER00042@contoso.example"}, 1},
		{"a device", Query{Device: "mfp-007"}, 15},
		{"a device and a code", Query{Device: "mfp-199", Code: "5.7.60"}, 3},
		{"a code", Query{Code: "432"}, 300},
		{"an upstream ID", Query{ID: "<msg00000017@FAKE.prod.outlook.com>"}, 1},
		{"a Message-ID", Query{ID: "msg00000018@printer.lan"}, 1},
		{"in the gzipped file, any case", Query{To: "rare@example.com", Device: "mfp-old"}, 1},
		{"since skips it", Query{To: "rare@example.com", Since: time.Now().Add(-time.Hour)}, 0},
		{"nothing", Query{To: "nobody@example.com"}, 0},
	} {
		stories, _, err := Search(context.Background(), files, tc.q, 0, Limits{})
		if err != nil || len(stories) != tc.want {
			t.Errorf("%s: %d stories, want %d (%v)", tc.name, len(stories), tc.want, err)
		}
	}
	// A story has all of its message's events, in order.
	stories, st, _ := Search(context.Background(), files, Query{Code: "5.7.60", Device: "mfp-199"}, 1, Limits{})
	if len(stories) != 1 || st.More != 2 {
		t.Fatalf("limit 1: %d stories, %d more; want 1 and 2 more", len(stories), st.More)
	}
	var kinds []string
	for _, e := range stories[0].Events {
		kinds = append(kinds, e.Kind)
	}
	if got := strings.Join(kinds, ","); got != "received,dead" || stories[0].ID != "msg00002999" && stories[0].ID != "msg00002799" {
		t.Errorf("the newest match: %s %s", stories[0].ID, got)
	}
}

// A search's bounds: it stops at its budget of bytes, saying so, with
// what it found; it keeps track of at most MaxTracked messages, the
// newest, counting the others; it stops when its context ends.
func TestSearchLimits(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.log")
	size := writeLog(t, log, 3000, time.Now())
	files, _ := Files(log)
	ctx := context.Background()
	all, st, err := Search(ctx, files, Query{Code: "432"}, 0, Limits{})
	if err != nil || len(all) != 300 || st.Incomplete != "" || st.More != 0 {
		t.Fatalf("unbounded: %d stories, %+v, %v", len(all), st, err)
	}
	// A budget of a third of the log: the first pass stops there, the
	// stories found are whole as far as read, and the page can say so.
	part, st, err := Search(ctx, files, Query{Code: "432"}, 0, Limits{MaxBytes: size / 3})
	if err != nil || len(part) == 0 || len(part) >= 300 || !strings.Contains(st.Incomplete, "stopped after reading") || st.Bytes > size/3+1<<20 {
		t.Errorf("a third of the log: %d stories, %+v, %v", len(part), st, err)
	}
	// Tracking 20: the 20 newest are the newest of all, the rest counted.
	newest, st, err := Search(ctx, files, Query{Code: "432"}, 0, Limits{MaxTracked: 20})
	if err != nil || len(newest) != 20 || st.More != 280 || newest[19].ID != all[299].ID || newest[0].ID != all[280].ID {
		t.Errorf("tracking 20: %d stories, %+v, %v", len(newest), st, err)
	}
	// Two filters, tracking few: what was forgotten half-matched is said.
	_, st, _ = Search(ctx, files, Query{Code: "5.7.60", Device: "mfp-199"}, 0, Limits{MaxTracked: 5})
	if !strings.Contains(st.Incomplete, "not followed") {
		t.Errorf("two filters, tracking 5: %+v", st)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, st, err := Search(cancelled, files, Query{Code: "432"}, 0, Limits{}); !errors.Is(err, context.Canceled) || st.Bytes > 0 {
		t.Errorf("a cancelled search: %v, %d bytes read", err, st.Bytes)
	}
}

var benchSize = flag.Int64("trace.size", 64<<20, "the audit log's size for BenchmarkSearch, in bytes (1<<30 for the README's figure)")

// BenchmarkSearch searches a generated audit log of -trace.size bytes
// for one recipient's messages, against a baseline that only reads the
// file's lines, and prints both and their ratio.
func BenchmarkSearch(b *testing.B) {
	dir := b.TempDir()
	log := filepath.Join(dir, "audit.log")
	// About 360 bytes an event, 2.1 events a message.
	n := int(*benchSize / 760)
	size := writeLog(b, log, n, time.Now())
	files, _ := Files(log)
	var st Stats
	read := func() time.Duration {
		start := time.Now()
		r := &reader{ctx: context.Background(), st: &st}
		r.eachLine(log, func([]byte) error { return nil })
		return time.Since(start)
	}
	search := func(q Query) (time.Duration, int) {
		start := time.Now()
		stories, _, err := Search(context.Background(), files, q, 0, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), len(stories)
	}
	b.ResetTimer()
	for range b.N {
		base := read()
		to, found := search(Query{To: "user00042@contoso.example"})
		dev, _ := search(Query{Device: "mfp-007", Code: "5.7.60"})
		b.ReportMetric(float64(size)/1e6, "MB")
		b.ReportMetric(to.Seconds(), "s/search-to")
		b.ReportMetric(dev.Seconds(), "s/search-device-code")
		b.ReportMetric(base.Seconds(), "s/read-baseline")
		b.Logf("audit log %.0f MB, %d messages: reading its lines %s; --to %s (%d found) %s, %.1fx the read; --device --code %s, %.1fx",
			float64(size)/1e6, n, base.Round(time.Millisecond), "user00042@contoso.example", found, to.Round(time.Millisecond),
			to.Seconds()/base.Seconds(), dev.Round(time.Millisecond), dev.Seconds()/base.Seconds())
	}
}

// A message deferred five times for a token failure: its story gives
// the hint once, where it first applies, and Entra's code on each line.
func TestStoryTellsAHintOnce(t *testing.T) {
	s := Story{ID: "001a"}
	for i := range 5 {
		s.Events = append(s.Events, Event{Time: time.Date(2026, 12, 6, 3, i, 0, 0, time.UTC), Kind: "deferred", Attempt: i + 1,
			Reply: "451 4.7.0 the bridge could not get a token from Entra ID",
			Error: "token for tenant contoso: AADSTS7000215: Invalid client secret provided.", Hint: "The client secret is wrong: copy its Value, not its ID."})
	}
	var b strings.Builder
	s.Text(&b, time.UTC)
	out := b.String()
	if n := strings.Count(out, "hint: "); n != 1 {
		t.Errorf("the hint is told %d times, want once:\n%s", n, out)
	}
	if n := strings.Count(out, "[AADSTS7000215]"); n != 5 {
		t.Errorf("Entra's code is on %d lines, want each of the 5:\n%s", n, out)
	}
	if strings.Index(out, "hint: ") > strings.Index(out, "(attempt 2)") {
		t.Errorf("the hint is not under the first event it applies to:\n%s", out)
	}
}
