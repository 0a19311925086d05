package queue

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/human"
)

// WriteList writes items as the queue command's table, with a summary
// line naming where they are (the bridge, or a stopped spool); dead
// items show their reason instead of their last reply.
func WriteList(w io.Writer, items []Item, dead bool, where string) {
	if len(items) == 0 {
		fmt.Fprintf(w, "no messages (%s)\n", where)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	last := "LAST REPLY"
	if dead {
		last = "REASON"
	}
	fmt.Fprintf(tw, "ID\tSTATE\tAGE\tATTEMPTS\tNEXT\tDEVICE\tRCPTS\tSIZE\t%s\n", last)
	counts := map[string]int{}
	now := time.Now()
	for _, it := range items {
		counts[it.State]++
		next := "-"
		if !dead {
			next = "now"
			if d := it.NextAttempt.Sub(now); d > 0 {
				next = "in " + human.Duration(d)
			}
		}
		reason := it.LastReply
		if dead {
			reason = it.DeadReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", it.ID, it.State, human.Duration(now.Sub(it.Received)),
			it.Attempts, next, it.Device, len(it.To), it.Size, truncate(reason, 60))
	}
	tw.Flush()
	var parts []string
	for _, s := range []string{StateQueued, StateDeferred, StateDelivering, StateDead} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	fmt.Fprintf(w, "%d message(s): %s (%s)\n", len(items), strings.Join(parts, ", "), where)
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
