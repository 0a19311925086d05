package message

import (
	"errors"
	"fmt"
	"strings"
)

// Reply is an SMTP reply: Exchange's, or one the bridge gives.
type Reply struct {
	Code int
	// Enhanced is the RFC 3463 enhanced status code; all zero when the
	// reply has none.
	Enhanced [3]int
	Text     string
}

// String is the one form a reply takes in logs, the audit log, the spool
// and the status page: "550 5.7.60 text".
func (r Reply) String() string {
	if r.Code == 0 {
		return ""
	}
	if r.Enhanced == ([3]int{}) {
		return fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], r.Text)
}

// EnhancedString is the enhanced code alone, "5.7.60"; "" for none.
func (r Reply) EnhancedString() string {
	if r.Enhanced == ([3]int{}) {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])
}

// ReplyFor is the one mapper from a delivery failure to the reply the
// device gets. A device gets a permanent 5xx only when Exchange will never
// take the message as it is; everything else, the bridge's own set-up
// problems included, is a 4xx it may retry, because a scanner that
// drops a scan on a 5xx loses it. The text never carries the text of an
// internal error; Exchange's own reply text is passed on, cleaned and
// bounded.
func ReplyFor(err error) Reply {
	var e *Error
	if err == nil {
		return Reply{}
	}
	if !errors.As(err, &e) {
		return replyInternal
	}
	switch e.Stage {
	case StageSpool:
		if errors.Is(err, ErrDeviceSpoolFull) {
			return Reply{452, [3]int{4, 3, 1}, "This device's queued mail fills its share of the bridge's spool; try again later"}
		}
		return Reply{452, [3]int{4, 3, 1}, "Insufficient system storage, message not accepted; try again later"}
	case StageSource:
		switch {
		case errors.Is(err, ErrTooLarge):
			return Reply{552, [3]int{5, 3, 4}, "Message size exceeds fixed maximum message size"}
		case errors.Is(err, ErrLineTooLong):
			return Reply{554, [3]int{5, 6, 0}, "Message has a line longer than this server accepts"}
		}
		var ce *ContentError
		if errors.As(err, &ce) && e.Class == Permanent {
			return Reply{554, [3]int{5, 6, 0}, bound("Message content not accepted: " + CleanText(ce.Reason))}
		}
		return replyInternal
	case StageToken:
		return Reply{451, [3]int{4, 7, 0}, "Could not get an access token for this device's mailbox, try again later"}
	case StageConfig:
		return Reply{451, [3]int{4, 3, 5}, "This device's tenant is not configured on the bridge, try again later"}
	case StageQuota:
		return Reply{451, [3]int{4, 2, 0}, "This device's mailbox reached its recipients a day at Exchange Online, try again later"}
	}
	if e.Reply.Code == 0 {
		switch e.Stage {
		case StageStartTLS:
			return Reply{451, [3]int{4, 7, 5}, "Secure connection to Exchange Online failed, try again later"}
		case StageConnect:
			return Reply{451, [3]int{4, 4, 1}, "Exchange Online not reachable, try again later"}
		case StageAuth:
			return Reply{451, [3]int{4, 7, 0}, "Exchange Online login not possible, try again later"}
		}
		return Reply{451, [3]int{4, 4, 2}, "Connection to Exchange Online lost, try again later"}
	}
	text := CleanText(e.Reply.Text)
	switch e.Class {
	case Permanent:
		code, enh := e.Reply.Code, e.Reply.Enhanced
		if code/100 != 5 {
			code = 554
		}
		if enh[0] != 5 {
			enh = [3]int{5, 0, 0}
		}
		return Reply{code, enh, bound("Exchange Online: " + text)}
	case Setup:
		// Exchange refused the bridge's login (535 5.7.3, 5.7.139): the
		// message is fine, the tenant's set-up is not.
		return Reply{451, [3]int{4, 7, 0}, bound("Exchange Online refused the bridge's login for this mailbox (" + text + "), try again later")}
	case Held:
		// The mailbox is blocked, not the message: a 4xx with Exchange's
		// detail, so that the device may send it again later.
		enh := e.Reply.Enhanced
		if enh[0] != 0 {
			enh[0] = 4
		} else {
			enh = [3]int{4, 2, 0}
		}
		return Reply{451, enh, bound("This device's mailbox is held: " + e.Hold.Words() + " (Exchange Online: " + text + "), try again later")}
	}
	enh := e.Reply.Enhanced
	switch enh[0] {
	case 4:
	case 5:
		// A 5xx worth trying again (the daily quota): its detail, as
		// the transient class.
		enh[0] = 4
	default:
		enh = [3]int{4, 0, 0}
	}
	return Reply{451, enh, bound("Exchange Online: " + text)}
}

var replyInternal = Reply{451, [3]int{4, 3, 0}, "Temporary local problem, try again later"}

// ReplyOf is what the audit log, the spool and the status page keep of a
// failed delivery: Exchange's reply when there was one (naming the
// recipient it refused), else the reply the device gets for it (ReplyFor).
func ReplyOf(err error) Reply {
	var e *Error
	if errors.As(err, &e) && e.Reply.Code != 0 {
		r := e.Reply
		r.Text = CleanText(r.Text)
		if e.Recipient != "" {
			r.Text += " (recipient " + e.Recipient + ")"
		}
		return r
	}
	return ReplyFor(err)
}

// CleanText makes a remote reply text, or anything a device sent, safe to
// log and to repeat to a device: printable ASCII on one line.
func CleanText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

// bound keeps a reply line short enough for any device to show.
func bound(s string) string {
	if len(s) > 300 {
		return s[:297] + "..."
	}
	return s
}

// ParseReply reads a reply as String writes it: "550 5.7.60 text", or
// "451 text" without an enhanced code.
func ParseReply(s string) (Reply, bool) {
	code, rest, _ := strings.Cut(strings.TrimSpace(s), " ")
	var r Reply
	if len(code) != 3 || code[0] < '2' || code[0] > '5' {
		return Reply{}, false
	}
	fmt.Sscanf(code, "%d", &r.Code)
	if enh, text, ok := strings.Cut(rest, " "); ok || enh != "" {
		var a, b, c int
		if n, _ := fmt.Sscanf(enh, "%d.%d.%d", &a, &b, &c); n == 3 && a == r.Code/100 {
			r.Enhanced, rest = [3]int{a, b, c}, text
		}
	}
	r.Text = rest
	return r, r.Code != 0
}

// HoldOfReply is the hold a reply puts its mailbox in, whatever the
// stage it came at: HoldOf's, or HoldSetup for a refused login (530,
// 535, 501 5.5.124).
func HoldOfReply(r Reply) Hold {
	if r.Code == 530 || r.Code == 535 || r.Code == 501 && r.Enhanced == [3]int{5, 5, 124} {
		return HoldSetup
	}
	return HoldOf(r)
}
