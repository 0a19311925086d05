package status

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteReplicas writes what each replica's spool holds, as the queue
// command shows it: each delivers only its own.
func WriteReplicas(w io.Writer, reps []Replica) {
	fmt.Fprintln(w, "\nReplicas (each delivers only what its own spool holds):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tQUEUED\tDEFERRED\tDEAD\tLAST HEARD")
	now := time.Now()
	for _, rep := range reps {
		name := rep.Instance
		if rep.This {
			name += " (this one)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s ago\n", name, rep.Queued, rep.Deferred, rep.Dead, human(now.Sub(rep.At)))
	}
	tw.Flush()
}
