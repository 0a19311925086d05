package sentitems

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
)

// graphStub answers the searches with what found says and records the
// purges.
type graphStub struct {
	mu      sync.Mutex
	found   map[string][]string // filter value -> internetMessageIds of the results
	status  int
	purged  []string
	filters []string
}

func (g *graphStub) Request(_ context.Context, tenant, mailbox, method, pq string) (int, []byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.status != 0 {
		return g.status, []byte(`{"error":{"code":"ErrorAccessDenied"}}`), nil
	}
	if method == "POST" {
		g.purged = append(g.purged, strings.TrimSuffix(strings.TrimPrefix(pq, "/messages/"), "/permanentDelete"))
		return 204, nil, nil
	}
	u, _ := url.Parse(pq)
	f := u.Query().Get("$filter")
	g.filters = append(g.filters, f)
	var b strings.Builder
	b.WriteString(`{"value":[`)
	for i, id := range g.found[f] {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"id":"item-` + strings.Trim(strings.Split(id, "@")[0], "<") + `","internetMessageId":"` + strings.ReplaceAll(id, `"`, `\"`) + `"}`)
	}
	b.WriteString("]}")
	return 200, []byte(b.String()), nil
}

// A delivered message of a device with keep is recorded with its
// Message-ID and purged once due, the search's other results left
// alone (only the very message goes); a Message-ID that could escape
// the filter is not recorded; Graph's refusal keeps the entry and is
// logged once; the journal survives a restart and skips lines it cannot
// read.
func TestCleaner(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sent-items.jsonl")
	g := &graphStub{found: map[string][]string{
		"internetMessageId eq '<scan-1@printer.lan>'":   {"<scan-1@printer.lan>", "<other@contoso.example>"},
		"internetMessageId eq '<o''brien@printer.lan>'": {"<o'brien@printer.lan>"},
	}}
	var log strings.Builder
	keep := func(device string) time.Duration {
		if device == "mfp" {
			return time.Millisecond
		}
		return 0
	}
	c, err := New(path, g, keep, zerolog.New(&log))
	if err != nil {
		t.Fatal(err)
	}
	deliver := func(id, dev, messageID string) {
		c.Observe(audit.Event{Kind: audit.Received, MsgID: id, Device: dev, Tenant: "contoso", Mailbox: "Scans@contoso.example", MessageID: messageID})
		c.Observe(audit.Event{Kind: audit.Delivered, MsgID: id, Device: dev, Tenant: "contoso", Mailbox: "Scans@contoso.example", Rcpts: 1})
	}
	deliver("1", "mfp", "scan-1@printer.lan")
	deliver("2", "mfp", "o'brien@printer.lan")
	deliver("3", "mfp", "x> or true <y")      // could escape the filter
	deliver("4", "other", "kept@printer.lan") // its device keeps its copies
	if c.Len() != 2 {
		t.Fatalf("%d entries, want the two of mfp with clean Message-IDs", c.Len())
	}

	g.status = 403
	time.Sleep(5 * time.Millisecond)
	c.Sweep(context.Background())
	c.Sweep(context.Background())
	if c.Len() != 2 || strings.Count(log.String(), "Mail.ReadWrite") != 1 {
		t.Fatalf("after refusals: %d entries, log:\n%s", c.Len(), log.String())
	}

	// A restart: the journal (with a line it cannot read) comes back.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("not json\n")
	f.Close()
	c2, err := New(path, g, keep, zerolog.Nop())
	if err != nil || c2.Len() != 2 {
		t.Fatalf("after a restart: %d entries, %v", c2.Len(), err)
	}
	g.status = 0
	if n := c2.Sweep(context.Background()); n != 2 {
		t.Errorf("%d copies deleted, want 2", n)
	}
	if strings.Join(g.purged, ",") != "item-scan-1,item-o%27brien" {
		t.Errorf("purged %v: want scan-1 and o'brien only", g.purged)
	}
	if c2.Len() != 0 {
		t.Errorf("%d entries left", c2.Len())
	}
}
