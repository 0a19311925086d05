package trace

import (
	"cmp"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Text writes the story for a person: a heading with the message's
// device, tenant and mailbox, then a line per event.
func (s Story) Text(w io.Writer, loc *time.Location) {
	var dev, tenant, mailbox string
	for _, e := range s.Events {
		dev, tenant, mailbox = cmp.Or(dev, e.Device), cmp.Or(tenant, e.Tenant), cmp.Or(mailbox, e.Mailbox)
	}
	fmt.Fprintf(w, "%s  %s", s.ID, cmp.Or(dev, "(no device)"))
	if tenant != "" {
		fmt.Fprintf(w, " → %s as %s", tenant, mailbox)
	}
	fmt.Fprintln(w)
	for i, e := range s.Events {
		fmt.Fprintf(w, "  %s  %s\n", e.Time.In(loc).Format("2006-01-02 15:04:05"), e.Line())
		if !s.HintShownBefore(i) {
			e.writeHint(w, hintIndent)
		}
	}
}

// HintShownBefore says whether event i's hint is an earlier event's
// already: a story tells each hint once, where it first applies (five
// deferrals for one token failure are not five times the same advice).
func (s Story) HintShownBefore(i int) bool {
	h := s.Events[i].Hint
	for _, e := range s.Events[:i] {
		if e.Hint == h {
			return true
		}
	}
	return false
}

// hintIndent puts a hint under the event's text.
const hintIndent = "                       "

// writeHint writes the event's hint, if any, on a line of its own
// after indent.
func (e Event) writeHint(w io.Writer, indent string) {
	if e.Hint != "" {
		fmt.Fprintf(w, "%shint: %s\n", indent, e.Hint)
	}
}

// FollowLine is how --follow prints an event: its time, message, device
// and Line, and its hint on the next line.
func (e Event) FollowLine(w io.Writer) {
	fmt.Fprintf(w, "%s  %s  %s  %s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.MsgID, cmp.Or(e.Device, "-"), e.Line())
	e.writeHint(w, hintIndent)
}

// aadstsRE is an Entra ID error code in an event's error.
var aadstsRE = regexp.MustCompile(`AADSTS[0-9]{4,8}`)

// Line tells the event in one line (its hint apart: Hint).
func (e Event) Line() string {
	var b strings.Builder
	b.WriteString(e.Kind)
	if e.Attempt > 0 {
		fmt.Fprintf(&b, " (attempt %d)", e.Attempt)
	}
	switch e.Kind {
	case "received":
		if e.Remote != "" {
			fmt.Fprintf(&b, " from %s", e.Remote)
		}
		if e.From != "" {
			fmt.Fprintf(&b, ", sender %s", e.From)
		}
		if len(e.To) > 0 {
			fmt.Fprintf(&b, ", to %s", strings.Join(e.To, ", "))
		} else if e.Rcpts > 0 {
			fmt.Fprintf(&b, ", %d recipient(s)", e.Rcpts)
		}
		if e.Size > 0 {
			fmt.Fprintf(&b, ", %d bytes", e.Size)
		}
		if e.Mode != "" {
			fmt.Fprintf(&b, ", %s mode", e.Mode)
		}
		if e.MessageID != "" {
			fmt.Fprintf(&b, ", Message-ID <%s>", e.MessageID)
		}
	case "delivered":
		if e.UpstreamID != "" {
			fmt.Fprintf(&b, " as %s", e.UpstreamID)
		}
	case "rejected":
		if e.Stage != "" {
			fmt.Fprintf(&b, " at %s", strings.ToUpper(e.Stage))
		}
	}
	if e.Recipient != "" {
		fmt.Fprintf(&b, ", recipient %s", e.Recipient)
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, ", %s", e.Reason)
	}
	if e.Reply != "" {
		fmt.Fprintf(&b, ": %s", e.Reply)
	}
	if code := aadstsRE.FindString(e.Error); code != "" && !strings.Contains(b.String(), code) && !strings.Contains(e.Detail, code) {
		// A token failure: Entra's own code, which its docs and the
		// hints are indexed by.
		fmt.Fprintf(&b, " [%s]", code)
	}
	if e.Detail != "" && (e.Reply == "" || !strings.Contains(e.Detail, e.Reply)) {
		fmt.Fprintf(&b, " (%s)", e.Detail)
	}
	if !e.NextAttempt.IsZero() {
		fmt.Fprintf(&b, "; next attempt %s", e.NextAttempt.Local().Format("15:04:05"))
	}
	if e.RetryBy == "device" {
		b.WriteString("; the device retries")
	}
	return b.String()
}
