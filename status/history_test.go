package status

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
)

// The charts count what happened per 10 minutes, survive a Save and a
// Load into a new board (a restart), and draw every count.
func TestHistory(t *testing.T) {
	b := NewBoard()
	b.Configure(inventory.Inventory{Devices: []inventory.Device{{Name: "mfp-2f"}, {Name: "erp"}}})
	for i := range 5 {
		b.Observe(audit.Event{Kind: audit.Received, MsgID: "m", Device: "mfp-2f"})
		if i < 4 {
			b.Observe(audit.Event{Kind: audit.Delivered, MsgID: "m", Device: "mfp-2f", Reply: "250 2.0.0 OK"})
		}
	}
	b.Observe(audit.Event{Kind: audit.Deferred, Device: "mfp-2f", Reply: "432 4.3.2 throttled"})
	b.Observe(audit.Event{Kind: audit.Bounced, Device: "mfp-2f", Reply: "550 5.1.10 unknown"})
	b.Observe(audit.Event{Kind: audit.Received, Device: "erp"})
	b.SampleQueue(7)
	b.SampleQueue(3)
	path := filepath.Join(t.TempDir(), "status.json")
	if err := b.Load(path); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(); err != nil {
		t.Fatal(err)
	}
	restarted := NewBoard()
	restarted.Configure(inventory.Inventory{Devices: []inventory.Device{{Name: "mfp-2f"}, {Name: "erp"}}})
	if err := restarted.Load(path); err != nil {
		t.Fatal(err)
	}
	v := restarted.view(PageInfo{}, Sources{}, listQuery{Sort: sortProblems, Page: 1, TPage: 1}, time.Now())
	values := func(svg, series string) string {
		m := regexp.MustCompile(`data-series="` + series + `" data-values="([0-9,]*)"`).FindStringSubmatch(svg)
		if m == nil {
			t.Fatalf("no %s series in %s", series, svg)
		}
		return m[1]
	}
	sum := func(vals string) int {
		n := 0
		for _, s := range strings.Split(vals, ",") {
			x, err := strconv.Atoi(s)
			if err != nil {
				t.Fatalf("data-values %q: %v", vals, err)
			}
			n += x
		}
		return n
	}
	for _, tc := range []struct {
		svg, series string
		want        int
	}{
		{string(v.Messages), "received", 6}, {string(v.Messages), "delivered", 4}, {string(v.Messages), "failed", 1},
		{string(v.QueueChart), "queue depth", 7},
		{string(v.Replies), "2xx", 4}, {string(v.Replies), "4xx", 1}, {string(v.Replies), "5xx", 1},
	} {
		vals := values(tc.svg, tc.series)
		if n := strings.Count(vals, ",") + 1; n != buckets {
			t.Errorf("%s: %d points, want %d", tc.series, n, buckets)
		}
		if got := sum(vals); got != tc.want {
			t.Errorf("%s after a restart: %d, want %d", tc.series, got, tc.want)
		}
	}
	var spark string
	for _, d := range v.Devices {
		if d.Name == "mfp-2f" {
			spark = string(d.Spark)
		}
	}
	if got := sum(values(spark, "received")); got != 5 {
		t.Errorf("mfp-2f's sparkline: %d received, want 5", got)
	}
	// Old buckets leave the window.
	var h history
	h.at(time.Now().Add(-25 * time.Hour)).Received = 9
	for _, x := range h.series(time.Now(), func(x *bucket) int { return x.Received }) {
		if x != 0 {
			t.Fatal("a bucket 25 h old is still drawn")
		}
	}
}
