package status

import (
	"fmt"
	"html/template"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The charts' window: the last 24 hours in 10-minute buckets.
const (
	bucketSpan = 10 * time.Minute
	buckets    = 144
)

// bucket counts one 10-minute span.
type bucket struct {
	Start     int64 `json:"start"` // Unix time / bucketSpan
	Received  int   `json:"received,omitempty"`
	Delivered int   `json:"delivered,omitempty"`
	Failed    int   `json:"failed,omitempty"` // refused for good or dead
	Queue     int   `json:"queue,omitempty"`  // the deepest the queue was seen
	// Exchange's replies by class.
	R2xx int `json:"r2xx,omitempty"`
	R4xx int `json:"r4xx,omitempty"`
	R5xx int `json:"r5xx,omitempty"`
}

// history is a ring of buckets; the one of a span is at span % buckets.
type history [buckets]bucket

func spanOf(t time.Time) int64 { return t.Unix() / int64(bucketSpan/time.Second) }

// at returns the bucket of t's span, emptied if it held an older span.
func (h *history) at(t time.Time) *bucket {
	s := spanOf(t)
	b := &h[s%buckets]
	if b.Start != s {
		*b = bucket{Start: s}
	}
	return b
}

// series returns f of each span of the last 24 hours up to now, oldest
// first (0 for a span with nothing).
func (h *history) series(now time.Time, f func(*bucket) int) []int {
	end := spanOf(now)
	out := make([]int, buckets)
	for i := range out {
		s := end - buckets + 1 + int64(i)
		if b := &h[s%buckets]; b.Start == s {
			out[i] = f(b)
		}
	}
	return out
}

// merge adds a saved history's buckets still in the window.
func (h *history) merge(saved []bucket, now time.Time) {
	end := spanOf(now)
	for _, b := range saved {
		if b.Start <= end-buckets || b.Start > end {
			continue
		}
		cur := &h[b.Start%buckets]
		if cur.Start != b.Start {
			*cur = bucket{Start: b.Start}
		}
		cur.Received += b.Received
		cur.Delivered += b.Delivered
		cur.Failed += b.Failed
		cur.Queue = max(cur.Queue, b.Queue)
		cur.R2xx += b.R2xx
		cur.R4xx += b.R4xx
		cur.R5xx += b.R5xx
	}
}

// saved returns the buckets in the window, for the state file.
func (h *history) saved(now time.Time) []bucket {
	end := spanOf(now)
	var out []bucket
	for _, b := range h {
		if b.Start > end-buckets && b.Start <= end && b != (bucket{Start: b.Start}) {
			out = append(out, b)
		}
	}
	return out
}

// replyClass counts a reply of Exchange's in its class.
func (b *bucket) replyClass(reply string) {
	switch {
	case strings.HasPrefix(reply, "2"):
		b.R2xx++
	case strings.HasPrefix(reply, "4"):
		b.R4xx++
	case strings.HasPrefix(reply, "5"):
		b.R5xx++
	}
}

// coarse sums each n buckets of values into one: a sparkline's 48
// half-hours of the day's 144 ten-minute buckets.
func coarse(values []int, n int) []int {
	out := make([]int, 0, (len(values)+n-1)/n)
	for i := 0; i < len(values); i += n {
		sum := 0
		for _, v := range values[i:min(i+n, len(values))] {
			sum += v
		}
		out = append(out, sum)
	}
	return out
}

// line is one series of a chart.
type line struct {
	Name, Color string
	Values      []int
}

// chart draws series over the last 24 hours as inline SVG: no script, no
// external asset. Each polyline carries its values (data-values) and a
// title with the total, for a person hovering and for tests.
func chart(id string, w, h int, lines []line, axes bool) template.HTML {
	top := 1
	for _, l := range lines {
		for _, v := range l.Values {
			top = max(top, v)
		}
	}
	pad := 2
	if axes {
		pad = 14
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="%s" class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`,
		template.HTMLEscapeString(id), w, h, w, h, template.HTMLEscapeString(id))
	if axes {
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="currentColor" stroke-opacity=".3"/>`, pad, h-pad, w-2, h-pad)
		fmt.Fprintf(&b, `<text x="%d" y="10" font-size="9" fill="currentColor">%d</text>`, 0, top)
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="9" fill="currentColor">24 h ago</text><text x="%d" y="%d" font-size="9" fill="currentColor" text-anchor="end">now</text>`,
			pad, h-2, w-2, h-2)
	}
	coord := "%.1f,%.1f"
	if !axes {
		coord = "%.0f,%.0f" // a sparkline: whole pixels are enough
	}
	for i, l := range lines {
		if !axes && i > 0 && !slices.ContainsFunc(l.Values, func(v int) bool { return v != 0 }) {
			continue // a sparkline draws a second series only when it has something
		}
		var pts, vals strings.Builder
		total := 0
		for i, v := range l.Values {
			x := float64(pad) + float64(i)*float64(w-pad-2)/float64(len(l.Values)-1)
			y := float64(h-pad) - float64(v)*float64(h-2*pad)/float64(top)
			if i > 0 {
				pts.WriteByte(' ')
				vals.WriteByte(',')
			}
			fmt.Fprintf(&pts, coord, x, y)
			vals.WriteString(strconv.Itoa(v))
			total += v
		}
		fmt.Fprintf(&b, `<polyline class="series" data-series="%s" data-values="%s" points="%s" fill="none" stroke="%s" stroke-width="1.5"><title>%s: %d in 24 h</title></polyline>`,
			template.HTMLEscapeString(l.Name), vals.String(), pts.String(), l.Color, template.HTMLEscapeString(l.Name), total)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
