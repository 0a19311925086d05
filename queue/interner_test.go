package queue

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/smtpbridge/smtpbridge/spool"
)

// Queued messages keep one copy of what they repeat: two metas read
// separately (as from the spool at a restart) share their strings once
// interned; the interner forgets all past its bound rather than grow.
func TestInternerShares(t *testing.T) {
	var in interner
	mk := func() spool.Meta {
		// New strings each time, as JSON decoding makes them.
		return spool.Meta{Device: strings.Clone("mfp-3f"), Tenant: strings.Clone("contoso"), Mailbox: strings.Clone("scans@contoso.example"),
			LastReply: strings.Clone("451 4.4.1 Exchange Online could not be reached, try again later")}
	}
	a, b := in.meta(mk()), in.meta(mk())
	for _, f := range []func(spool.Meta) string{
		func(m spool.Meta) string { return m.Device }, func(m spool.Meta) string { return m.Tenant },
		func(m spool.Meta) string { return m.Mailbox }, func(m spool.Meta) string { return m.LastReply },
	} {
		if unsafe.StringData(f(a)) != unsafe.StringData(f(b)) {
			t.Errorf("%q is kept twice", f(a))
		}
	}
	for i := range maxInterned + 10 {
		in.get(fmt.Sprintf("reply naming message %d", i))
	}
	if n := len(in.m); n > maxInterned {
		t.Errorf("the interner holds %d strings, bound %d", n, maxInterned)
	}
}

// BenchmarkQueueMemory reports the heap a queued message costs, with its
// strings interned and without, in the same run.
func BenchmarkQueueMemory(b *testing.B) {
	const n = 20000
	build := func(intern bool) float64 {
		var in interner
		var before, after runtimeMem
		before.read()
		entries := make(map[string]*entry, n)
		for i := range n {
			m := spool.Meta{ID: fmt.Sprintf("001a%022d", i), Device: fmt.Sprintf("mfp-%03d", i%100), Tenant: strings.Clone("contoso"),
				Mailbox: fmt.Sprintf("scans-%03d@contoso.example", i%100), From: fmt.Sprintf("scans-%03d@contoso.example", i%100),
				To: []string{"bob@contoso.example"}, LastReply: strings.Clone("451 4.4.1 Exchange Online could not be reached (dial tcp 52.96.0.1:587: connect: connection refused), try again later")}
			if intern {
				m = in.meta(m)
			}
			entries[m.ID] = &entry{meta: m}
		}
		after.read()
		runtime.KeepAlive(entries)
		return (float64(after.heap) - float64(before.heap)) / n
	}
	for b.Loop() {
		plain, interned := build(false), build(true)
		b.ReportMetric(plain, "B/msg-plain")
		b.ReportMetric(interned, "B/msg-interned")
		b.ReportMetric(interned/plain, "ratio")
	}
}

type runtimeMem struct{ heap uint64 }

func (r *runtimeMem) read() {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.heap = ms.HeapAlloc
}
