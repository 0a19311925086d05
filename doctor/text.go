package doctor

import (
	"fmt"
	"io"
	"strings"
)

// Printer writes steps as they finish (Options.Progress), under a
// heading per tenant and mailbox: the doctor command's output.
type Printer struct {
	W               io.Writer
	tenant, mailbox string
}

var marks = map[Status]string{Pass: "[ ok ]", Warn: "[warn]", Fail: "[FAIL]", Skip: "[skip]"}

// Step writes one step, with what it means and the fix when it has them.
func (p *Printer) Step(s Step) {
	if s.Tenant != p.tenant {
		p.tenant, p.mailbox = s.Tenant, ""
		fmt.Fprintf(p.W, "\ntenant %s\n", s.Tenant)
	}
	if s.Mailbox != "" && s.Mailbox != p.mailbox {
		fmt.Fprintf(p.W, "  mailbox %s (device %s)\n", s.Mailbox, strings.Join(s.Devices, ", "))
	}
	// A tenant's step between two of a mailbox's (Graph's, then SMTP's)
	// ends the mailbox's section: the next one is headed again.
	p.mailbox = s.Mailbox
	indent := "  "
	if s.Mailbox != "" {
		indent = "    "
	}
	// The widest step name (graph mailbox) and a space: a name never
	// runs into its detail.
	fmt.Fprintf(p.W, "%s%s %-13s %s\n", indent, marks[s.Status], s.Name, s.Detail)
	pad := indent + strings.Repeat(" ", 7)
	if s.Code != "" || s.Meaning != "" {
		code := ""
		if s.Code != "" {
			code = s.Code + ": "
		}
		fmt.Fprintf(p.W, "%smeans: %s%s\n", pad, code, s.Meaning)
	}
	if s.Fix != "" {
		fmt.Fprintf(p.W, "%sfix:   %s\n", pad, s.Fix)
	}
}
