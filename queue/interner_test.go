package queue

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/smtpbridge/smtpbridge/spool"
)

// Queued messages keep one copy of what they repeat: two entries made
// from metas read separately (as from the spool at a restart) share
// their strings; the interner forgets all past its bound rather than
// grow.
func TestInternerShares(t *testing.T) {
	var q Queue
	mk := func() spool.Meta {
		// New strings each time, as JSON decoding makes them.
		return spool.Meta{ID: strings.Clone("001a"), Device: strings.Clone("mfp-3f"), Tenant: strings.Clone("contoso"), Mailbox: strings.Clone("scans@contoso.example"),
			LastReply: strings.Clone("451 4.4.1 Exchange Online could not be reached, try again later")}
	}
	a, b := q.entryOf(mk(), time.Time{}), q.entryOf(mk(), time.Time{})
	for _, f := range []func(*entry) string{
		func(e *entry) string { return e.device }, func(e *entry) string { return e.tenant },
		func(e *entry) string { return e.mailbox }, func(e *entry) string { return e.lastReply },
	} {
		if unsafe.StringData(f(a)) != unsafe.StringData(f(b)) {
			t.Errorf("%q is kept twice", f(a))
		}
	}
	in := &q.strs
	for i := range maxInterned + 10 {
		in.get(fmt.Sprintf("reply naming message %d", i))
	}
	if n := len(in.m); n > maxInterned {
		t.Errorf("the interner holds %d strings, bound %d", n, maxInterned)
	}
}

// BenchmarkQueueMemory reports the heap a queued message costs in the
// queue's memory, against the baseline of keeping its whole record (as
// the queue did before its entries were slimmed), in the same run.
func BenchmarkQueueMemory(b *testing.B) {
	const n = 20000
	meta := func(i int) spool.Meta {
		return spool.Meta{ID: fmt.Sprintf("001a%022d", i), Device: fmt.Sprintf("mfp-%03d", i%100), Tenant: strings.Clone("contoso"),
			Mailbox: fmt.Sprintf("scans-%03d@contoso.example", i%100), From: fmt.Sprintf("scans-%03d@contoso.example", i%100),
			To: []string{fmt.Sprintf("bob-%d@contoso.example", i%7)}, Size: 2048, Received: time.Now().UTC(), Attempts: 2, NextAttempt: time.Now().UTC(),
			LastReply: strings.Clone("451 4.4.1 Exchange Online could not be reached (dial tcp 52.96.0.1:587: connect: connection refused), try again later")}
	}
	whole := func() float64 {
		var before, after runtimeMem
		before.read()
		records := make(map[string]*spool.Meta, n)
		for i := range n {
			m := meta(i)
			records[m.ID] = &m
		}
		after.read()
		runtime.KeepAlive(records)
		return (float64(after.heap) - float64(before.heap)) / n
	}
	slim := func() float64 {
		var q Queue
		var before, after runtimeMem
		before.read()
		entries := make(map[string]*entry, n)
		for i := range n {
			m := meta(i)
			entries[m.ID] = q.entryOf(m, m.NextAttempt)
		}
		after.read()
		runtime.KeepAlive(entries)
		return (float64(after.heap) - float64(before.heap)) / n
	}
	for b.Loop() {
		w, s := whole(), slim()
		b.ReportMetric(w, "B/msg-whole-record")
		b.ReportMetric(s, "B/msg-entry")
		b.ReportMetric(s/w, "ratio")
	}
}

type runtimeMem struct{ heap uint64 }

func (r *runtimeMem) read() {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.heap = ms.HeapAlloc
}
