package trace

import (
	"compress/gzip"
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
		stories, _, err := Search(files, tc.q, 0)
		if err != nil || len(stories) != tc.want {
			t.Errorf("%s: %d stories, want %d (%v)", tc.name, len(stories), tc.want, err)
		}
	}
	// A story has all of its message's events, in order.
	stories, _, _ := Search(files, Query{Code: "5.7.60", Device: "mfp-199"}, 1)
	if len(stories) != 1 {
		t.Fatalf("limit 1: %d stories", len(stories))
	}
	var kinds []string
	for _, e := range stories[0].Events {
		kinds = append(kinds, e.Kind)
	}
	if got := strings.Join(kinds, ","); got != "received,dead" || stories[0].ID != "msg00002999" && stories[0].ID != "msg00002799" {
		t.Errorf("the newest match: %s %s", stories[0].ID, got)
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
		eachLine(log, &st, func([]byte) error { return nil })
		return time.Since(start)
	}
	search := func(q Query) (time.Duration, int) {
		start := time.Now()
		stories, _, err := Search(files, q, 0)
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
