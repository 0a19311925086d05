package queue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
)

// The queue tools page through a big queue by filters: device, mailbox
// (any case), tenant, state, age; each page holds at most its limit, in
// the order received, and the continuation goes on without a gap or a
// repeat, on the running queue and on a stopped spool alike. Drop needs
// a filter; retry and drop act on what the filter selects only.
func TestSelectPagesAndFilters(t *testing.T) {
	dir := t.TempDir()
	sp, err := spool.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(queue.Options{Spool: sp, Transport: &blocking{release: make(chan struct{})}, Log: zerolog.Nop(), Settings: queue.Settings{
		RetryInitial: time.Minute, RetryMax: time.Hour, MaxAge: time.Hour, SyncTimeout: time.Second,
		Concurrency: func(string) int { return 1 }}})
	if err != nil {
		t.Fatal(err)
	}
	// Not started: everything stays queued.
	for i := range 300 {
		dev, mb, tenant := fmt.Sprintf("d%d", i%3+1), "a@contoso.example", "contoso"
		if i%3 == 2 {
			mb, tenant = "b@fabrikam.example", "fabrikam"
		}
		if _, err := q.Deliver(context.Background(), &message.Message{ID: message.NewID(), Device: dev, Tenant: tenant, Mailbox: mb, From: mb,
			To: []string{"x@contoso.example"}, Body: strings.NewReader("Subject: s\r\n\r\nb\r\n")}); err != nil {
			t.Fatal(err)
		}
	}
	pageAll := func(m queue.Manager, f queue.Filter, limit int) (ids []string, matched, pages int) {
		t.Helper()
		after := ""
		var last time.Time
		for {
			p, err := m.Select(f, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if len(p.Items) > limit {
				t.Fatalf("a page of %d items, limit %d", len(p.Items), limit)
			}
			for _, it := range p.Items {
				if it.Received.Before(last) {
					t.Fatalf("%s received before the item ahead of it", it.ID)
				}
				last = it.Received
				ids = append(ids, it.ID)
			}
			matched = p.Matched
			if p.Next == "" {
				return ids, matched, pages
			}
			after = p.Next
		}
	}
	check := func(m queue.Manager, name string) {
		ids, matched, pages := pageAll(m, queue.Filter{Device: "d1"}, 30)
		seen := map[string]bool{}
		for _, id := range ids {
			if seen[id] {
				t.Errorf("%s: %s listed twice", name, id)
			}
			seen[id] = true
		}
		if len(ids) != 100 || matched != 100 || pages != 4 {
			t.Errorf("%s: device d1: %d listed, %d matched, %d pages; want 100, 100, 4", name, len(ids), matched, pages)
		}
		if ids, _, _ := pageAll(m, queue.Filter{Mailbox: "B@Fabrikam.example"}, 1000); len(ids) != 100 {
			t.Errorf("%s: mailbox in other case: %d, want 100", name, len(ids))
		}
		if ids, _, _ := pageAll(m, queue.Filter{Tenant: "contoso", Device: "d2"}, 1000); len(ids) != 100 {
			t.Errorf("%s: tenant and device: %d, want 100", name, len(ids))
		}
		if ids, _, _ := pageAll(m, queue.Filter{State: queue.StateDead}, 10); len(ids) != 0 {
			t.Errorf("%s: %d dead letters, want none", name, len(ids))
		}
		if ids, _, _ := pageAll(m, queue.Filter{OlderThan: time.Hour}, 10); len(ids) != 0 {
			t.Errorf("%s: %d older than an hour, want none", name, len(ids))
		}
		if _, err := m.Select(queue.Filter{}, "nonsense", 10); err == nil {
			t.Errorf("%s: a bad continuation is taken", name)
		}
		if _, err := m.DropWhere(queue.Filter{}); err == nil {
			t.Errorf("%s: drop without a filter drops everything", name)
		}
	}
	check(q, "running")

	if n, err := q.DropWhere(queue.Filter{Device: "d3"}); err != nil || n != 100 {
		t.Fatalf("drop d3: %d, %v", n, err)
	}
	if p, _ := q.Select(queue.Filter{}, "", 1); p.Matched != 200 {
		t.Errorf("after dropping d3's 100, %d left, want 200", p.Matched)
	}
	if n, err := q.RetryWhere(queue.Filter{Device: "d2"}); err != nil || n != 100 {
		t.Errorf("retry d2: %d, %v", n, err)
	}
	q.Close(time.Second)

	off, err := queue.OpenOffline(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	if ids, _, _ := pageAll(off, queue.Filter{}, 64); len(ids) != 200 {
		t.Errorf("stopped spool: %d queued, want 200", len(ids))
	}
	if ids, _, _ := pageAll(off, queue.Filter{Device: "d1"}, 30); len(ids) != 100 {
		t.Errorf("stopped spool: d1 has %d, want 100", len(ids))
	}
	if n, err := off.DropWhere(queue.Filter{Device: "d1"}); err != nil || n != 100 {
		t.Errorf("stopped spool: drop d1: %d, %v", n, err)
	}
}
