package queue

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/spool"
)

// TestDecide is the queue's rule as a table: for an attempt's result
// (the receipt or error) on a message, what happens to the message, its
// recipients and its mailbox.
func TestDecide(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	const maxAge = 24 * time.Hour
	fresh := spool.Meta{ID: "m1", To: []string{"a@x", "b@x", "c@x"}, Received: now.Add(-time.Hour), Attempting: true}
	old := fresh
	old.Received = now.Add(-maxAge)
	requeued := old
	requeued.Requeued = now.Add(-time.Minute)
	struck := fresh
	struck.Strikes = 1

	up := func(stage message.Stage, code int, enh [3]int, text, rcpt string) *message.Error {
		e := message.Classify("h:587", stage, message.Reply{Code: code, Enhanced: enh, Text: text}, "")
		e.Recipient = rcpt
		return e
	}
	ok := message.Receipt{Reply: message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "OK"}, Accepted: []string{"a@x", "b@x", "c@x"}}
	unknown := func(r string) *message.Error {
		return up(message.StageRcpt, 550, [3]int{5, 1, 10}, "RESOLVER.ADR.RecipNotFound", r)
	}
	busy := func(r string) *message.Error {
		return up(message.StageRcpt, 452, [3]int{4, 5, 3}, "Too many recipients", r)
	}
	mixed := message.Receipt{Reply: ok.Reply, Accepted: []string{"a@x"}, Refused: []*message.Error{unknown("b@x"), busy("c@x")}}
	someGone := message.Receipt{Reply: ok.Reply, Accepted: []string{"a@x"}, Refused: []*message.Error{unknown("b@x"), unknown("c@x")}}
	allGone := message.Receipt{Refused: []*message.Error{unknown("a@x"), unknown("b@x"), unknown("c@x")}}
	noneYet := message.Receipt{Refused: []*message.Error{busy("a@x"), unknown("b@x"), busy("c@x")}}

	sendAs := up(message.StageData, 554, [3]int{5, 2, 252}, "SendAsDenied; a@x not allowed to send as b@x", "")
	temp := up(message.StageData, 450, [3]int{4, 7, 1}, "Temporary local problem", "")
	throttled := up(message.StageMail, 432, [3]int{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded", "")
	held := up(message.StageMail, 550, [3]int{5, 2, 253}, "Sender throttled due to continuous invalid recipients errors", "")
	full := up(message.StageData, 554, [3]int{5, 2, 2}, "STOREDRV.Submission.Exception:QuotaExceededException", "")
	login := up(message.StageAuth, 535, [3]int{5, 7, 139}, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox", "")
	unreachable := &message.Error{Class: message.Broken, Stage: message.StageConnect, Err: fmt.Errorf("dial: refused")}
	quota := &message.Error{Class: message.Throttled, Stage: message.StageQuota, Err: fmt.Errorf("daily recipients"), RetryAt: now.Add(time.Hour)}
	content := &message.Error{Class: message.Permanent, Stage: message.StageSource, Err: &message.ContentError{Reason: "nested too deep"}}

	tests := []struct {
		name   string
		meta   spool.Meta
		a      attempted
		want   string
		wantTo string // the recipients left; "" when the same as before
	}{
		{"taken", fresh, attempted{receipt: ok}, "delivered took clears", ""},
		{"taken by a retry after max_age", old, attempted{receipt: ok}, "delivered took clears", ""},
		{"refused for good as a whole", fresh, attempted{err: sendAs}, "refused reply=554 5.2.252 pause clears", ""},
		{"refused by the bridge itself", fresh, attempted{err: content}, "refused reply=554 5.6.0 pause", ""},
		{"every recipient refused for good", fresh, attempted{receipt: allGone, err: allGone.Refused[0]}, "refused per-recipient gone=3 reply=550 5.1.10 pause clears", ""},
		{"some taken, the others refused for good", fresh, attempted{receipt: someGone}, "delivered per-recipient gone=2 took clears", "-"},
		{"some taken, some for good, some for now", fresh, attempted{receipt: mixed}, "deferred per-recipient gone=1 again=1 reply=452 4.5.3 pause took clears persist", "c@x"},
		{"none taken, some for now", fresh, attempted{receipt: noneYet, err: noneYet.Refused[0]}, "deferred per-recipient gone=1 again=2 reply=452 4.5.3 pause clears persist", "a@x c@x"},
		{"refused for now", fresh, attempted{err: temp}, "deferred reply=450 4.7.1 pause clears", ""},
		{"refused for now past max_age", old, attempted{err: temp}, "expired reply=450 4.7.1 pause clears", ""},
		{"requeued: max_age counts from the requeue", requeued, attempted{err: temp}, "deferred reply=450 4.7.1 pause clears", ""},
		{"throttled: the mailbox waits", fresh, attempted{err: throttled}, "deferred reply=432 4.3.2 pause lane-wide persist", ""},
		{"out of reach: the mailbox waits", fresh, attempted{err: unreachable}, "deferred reply=451 4.4.1 pause lane-wide persist", ""},
		{"told when to come back", fresh, attempted{err: quota}, "deferred reply=451 4.2.0 pause lane-wide persist", ""},
		{"continuous-error throttling holds the mailbox", fresh, attempted{err: held}, "deferred reply=550 5.2.253 pause held lane-wide persist", ""},
		{"mailbox full holds it", fresh, attempted{err: full}, "deferred reply=554 5.2.2 pause held lane-wide persist", ""},
		{"login refused holds it", fresh, attempted{err: login}, "deferred reply=535 5.7.139 pause held lane-wide persist", ""},
		{"a hold past max_age gives up, the mailbox still held", old, attempted{err: held}, "expired reply=550 5.2.253 pause", ""},
		{"first strike", fresh, attempted{err: temp, strike: true}, "deferred strikes=1 reply=450 4.7.1 pause clears", ""},
		{"second strike in a row", struck, attempted{err: temp, strike: true}, "poison strikes=2 reply=450 4.7.1 pause clears", ""},
		{"an attempt that ends clears the strikes", struck, attempted{err: temp}, "deferred reply=450 4.7.1 pause clears", ""},
		{"a strike that was taken anyway still counts", struck, attempted{receipt: ok, strike: true}, "poison strikes=2 took clears", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := decide(tc.meta, tc.a, now, maxAge)
			if got := describe(v); got != tc.want {
				t.Errorf("verdict\n got %s\nwant %s", got, tc.want)
			}
			wantTo := strings.Join(tc.meta.To, " ")
			switch tc.wantTo {
			case "-":
				wantTo = ""
			case "":
			default:
				wantTo = tc.wantTo
			}
			if got := strings.Join(v.meta.To, " "); got != wantTo {
				t.Errorf("recipients left %q, want %q", got, wantTo)
			}
			if v.meta.Attempting {
				t.Error("the attempt is still marked under way in the metadata")
			}
			if v.meta.NextAttempt != tc.meta.NextAttempt {
				t.Error("decide set the next attempt: that is the mailbox's state, settle's to set")
			}
		})
	}
}

// describe writes a verdict as the table's words.
func describe(v verdict) string {
	w := []string{v.out.String()}
	add := func(on bool, s string) {
		if on {
			w = append(w, s)
		}
	}
	add(v.perRecipient, "per-recipient")
	add(v.meta.Strikes > 0, fmt.Sprintf("strikes=%d", v.meta.Strikes))
	add(len(v.gone) > 0, fmt.Sprintf("gone=%d", len(v.gone)))
	add(len(v.again) > 0, fmt.Sprintf("again=%d", len(v.again)))
	if r, ok := message.ParseReply(v.meta.LastReply); ok {
		w = append(w, fmt.Sprintf("reply=%d %d.%d.%d", r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2]))
	}
	add(v.pause != nil, "pause")
	add(v.held, "held")
	add(v.laneWide, "lane-wide")
	add(v.took, "took")
	add(v.clears, "clears")
	add(v.persist, "persist")
	return strings.Join(w, " ")
}
