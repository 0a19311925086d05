package guard

import (
	"cmp"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/human"
)

// WriteBlocks writes the blocked addresses as the blocks command shows
// them, with a summary naming where they are blocked.
func WriteBlocks(w io.Writer, blocks []Block, where string) {
	if len(blocks) == 0 {
		fmt.Fprintf(w, "no addresses blocked (%s)\n", where)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSINCE\tLIFTED IN\tFAILURES\tLAST USERNAME")
	now := time.Now()
	for _, b := range blocks {
		user := cmp.Or(b.Username, "(not a device's; not shown)")
		if b.Replica != "" {
			user += " (blocked by " + b.Replica + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", b.Addr, b.Since.Local().Format(time.DateTime), human.Duration(b.Until.Sub(now)), b.Failures, user)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d address(es) blocked (%s); lift one with: smtpbridge blocks unblock ADDR\n", len(blocks), where)
}
