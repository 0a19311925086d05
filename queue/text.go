package queue

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/human"
)

// ListWriter writes pages of items as the queue command's table, as
// they come: the header once, each page's rows aligned by page, and a
// summary at the end naming where they are (the bridge, or a stopped
// spool); dead items show their reason instead of their last reply.
type ListWriter struct {
	w      io.Writer
	dead   bool
	header bool
	counts map[string]int
	n      int
}

// NewListWriter returns a ListWriter to w.
func NewListWriter(w io.Writer, dead bool) *ListWriter {
	return &ListWriter{w: w, dead: dead, counts: map[string]int{}}
}

// Write writes a page's rows.
func (lw *ListWriter) Write(items []Item) {
	if len(items) == 0 {
		return
	}
	tw := tabwriter.NewWriter(lw.w, 0, 4, 2, ' ', 0)
	if !lw.header {
		last := "LAST REPLY"
		if lw.dead {
			last = "REASON"
		}
		fmt.Fprintf(tw, "ID\tSTATE\tAGE\tATTEMPTS\tNEXT\tDEVICE\tRCPTS\tSIZE\t%s\n", last)
		lw.header = true
	}
	now := time.Now()
	for _, it := range items {
		lw.counts[it.State]++
		lw.n++
		next := "-"
		if it.State != StateDead {
			next = "now"
			if d := it.NextAttempt.Sub(now); d > 0 {
				next = "in " + human.Duration(d)
			}
		}
		reason := it.LastReply
		if it.State == StateDead {
			reason = it.DeadReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", it.ID, it.State, human.Duration(now.Sub(it.Received)),
			it.Attempts, next, it.Device, len(it.To), it.Size, truncate(reason, 60))
	}
	tw.Flush()
}

// Close writes the summary: how many were shown of how many matched, and
// how to go on when there are more.
func (lw *ListWriter) Close(matched int, next, where string) {
	if lw.n == 0 {
		fmt.Fprintf(lw.w, "no messages (%s)\n", where)
		return
	}
	var parts []string
	for _, s := range []string{StateQueued, StateDeferred, StateDelivering, StateDead} {
		if lw.counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", lw.counts[s], s))
		}
	}
	shown := fmt.Sprintf("%d message(s)", lw.n)
	if matched > lw.n {
		shown = fmt.Sprintf("%d of %d message(s)", lw.n, matched)
	}
	fmt.Fprintf(lw.w, "%s: %s (%s)\n", shown, strings.Join(parts, ", "), where)
	if next != "" {
		fmt.Fprintf(lw.w, "more: add --after %s\n", next)
	}
}

// WriteList writes items as one table with its summary.
func WriteList(w io.Writer, items []Item, dead bool, where string) {
	lw := NewListWriter(w, dead)
	lw.Write(items)
	lw.Close(len(items), "", where)
}

// WriteItem writes one item as the queue command shows it.
func WriteItem(w io.Writer, it Item) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("ID", it.ID)
	row("State", it.State)
	row("Device", it.Device)
	row("Tenant", it.Tenant)
	row("Mailbox", it.Mailbox)
	row("From", it.From)
	row("To", strings.Join(it.To, ", "))
	row("Size", fmt.Sprintf("%d bytes", it.Size))
	row("Received", it.Received.Local().Format(time.RFC1123))
	if !it.Requeued.IsZero() {
		row("Requeued", it.Requeued.Local().Format(time.RFC1123))
	}
	row("Attempts", fmt.Sprint(it.Attempts))
	if it.State != StateDead {
		row("Next attempt", it.NextAttempt.Local().Format(time.RFC1123))
	}
	row("Last reply", it.LastReply)
	row("Dead because", it.DeadReason)
	row("Report of", it.DSNFor)
	tw.Flush()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
