package message

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		stage  Stage
		code   int
		enh    [3]int
		want   Class
		pauses bool
		reuse  bool
	}{
		{StageData, 554, [3]int{5, 2, 252}, Permanent, false, true},
		{StageMail, 550, [3]int{5, 7, 60}, Permanent, false, true},
		{StageRcpt, 550, [3]int{}, Permanent, false, true},
		{StageAuth, 535, [3]int{5, 7, 3}, Setup, false, true},
		{StageAuth, 535, [3]int{5, 7, 139}, Setup, false, true},
		{StageAuth, 504, [3]int{5, 5, 4}, Setup, false, true},
		{StageMail, 530, [3]int{5, 7, 57}, Setup, false, true},
		{StageMail, 432, [3]int{4, 3, 2}, Throttled, true, true},
		{StageMail, 452, [3]int{4, 3, 2}, Throttled, true, true},
		{StageData, 451, [3]int{4, 7, 0}, Throttled, true, true},
		{StageAuth, 421, [3]int{4, 7, 66}, Throttled, true, false},
		{StageAuth, 454, [3]int{4, 7, 0}, Temporary, false, true},
		{StageRcpt, 450, [3]int{4, 2, 1}, Temporary, false, true},
	}
	quota := Classify("h", StageData, Reply{554, [3]int{5, 2, 0}, "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"}, "")
	if quota.Class != Throttled || !quota.Pauses() {
		t.Errorf("the daily quota: %s", quota.Class)
	}
	for _, tc := range tests {
		e := Classify("h:587", tc.stage, Reply{tc.code, tc.enh, "x"}, "")
		if e.Class != tc.want || e.Pauses() != tc.pauses || e.ConnectionUsable() != tc.reuse {
			t.Errorf("%s %d %v: class %s pauses %v reuse %v, want %s %v %v",
				tc.stage, tc.code, tc.enh, e.Class, e.Pauses(), e.ConnectionUsable(), tc.want, tc.pauses, tc.reuse)
		}
	}
	broken := &Error{Class: Broken, Stage: StageData, Err: io.ErrUnexpectedEOF}
	if !broken.Pauses() || broken.ConnectionUsable() || broken.Permanent() {
		t.Error("a broken connection must pause the mailbox, be closed and be retried")
	}
	if ClassOf(errors.New("x")) != Temporary || ClassOf(fmt.Errorf("w: %w", broken)) != Broken {
		t.Error("ClassOf")
	}
}

// TestReplyFor is the table of every reply a device can get for a failed
// delivery.
func TestReplyFor(t *testing.T) {
	up := func(stage Stage, code int, enh [3]int) error {
		return fmt.Errorf("deliver: %w", Classify("h:587", stage, Reply{code, enh, "text from exchange"}, ""))
	}
	network := func(stage Stage) error {
		return &Error{Class: Broken, Host: "h:587", Stage: stage, Err: errors.New("dial tcp: secret-ish internal detail")}
	}
	tests := []struct {
		name string
		err  error
		want string // "code x.y.z"
	}{
		{"SendAsDenied passes through", up(StageData, 554, [3]int{5, 2, 252}), "554 5.2.252"},
		{"5.7.60 at MAIL passes through", up(StageMail, 550, [3]int{5, 7, 60}), "550 5.7.60"},
		{"size passes through", up(StageData, 552, [3]int{5, 3, 4}), "552 5.3.4"},
		{"5xx without enhanced code", up(StageRcpt, 550, [3]int{}), "550 5.0.0"},
		{"535 5.7.3 is the tenant's problem", up(StageAuth, 535, [3]int{5, 7, 3}), "451 4.7.0"},
		{"535 5.7.139", up(StageAuth, 535, [3]int{5, 7, 139}), "451 4.7.0"},
		{"530 5.7.57 at MAIL", up(StageMail, 530, [3]int{5, 7, 57}), "451 4.7.0"},
		{"432 4.3.2 keeps its enhanced code", up(StageMail, 432, [3]int{4, 3, 2}), "451 4.3.2"},
		{"421 4.7.66", up(StageAuth, 421, [3]int{4, 7, 66}), "451 4.7.66"},
		{"451 4.7.0", up(StageData, 451, [3]int{4, 7, 0}), "451 4.7.0"},
		{"4xx without enhanced code", up(StageData, 450, [3]int{}), "451 4.0.0"},
		{"the daily quota is tried again", fmt.Errorf("w: %w", Classify("h", StageData, Reply{554, [3]int{5, 2, 0}, "SubmissionQuotaExceededException"}, "")), "451 4.2.0"},
		{"connect", network(StageConnect), "451 4.4.1"},
		{"starttls", network(StageStartTLS), "451 4.7.5"},
		{"no XOAUTH2", network(StageAuth), "451 4.7.0"},
		{"dropped", network(StageData), "451 4.4.2"},
		{"token", &Error{Class: Setup, Stage: StageToken, Err: errors.New("AADSTS7000215 internal")}, "451 4.7.0"},
		{"no route", &Error{Class: Setup, Stage: StageConfig, Err: errors.New("no route internal")}, "451 4.3.5"},
		{"spool full", &Error{Stage: StageSpool, Err: errors.New("no space left internal")}, "452 4.3.1"},
		{"device too large", &Error{Stage: StageSource, Err: fmt.Errorf("read: %w", ErrTooLarge)}, "552 5.3.4"},
		{"line too long", &Error{Stage: StageSource, Err: ErrLineTooLong}, "554 5.6.0"},
		{"device went away", &Error{Stage: StageSource, Err: io.ErrUnexpectedEOF}, "451 4.3.0"},
		{"MIME past the bounds", &Error{Class: Permanent, Stage: StageSource, Err: &ContentError{Reason: "nested too deep"}}, "554 5.6.0"},
		{"a content error not yet known permanent", &Error{Class: Temporary, Stage: StageSource, Err: &ContentError{Reason: "x"}}, "451 4.3.0"},
		{"anything else", errors.New("boom: internal"), "451 4.3.0"},
		{"cancelled", context.Canceled, "451 4.3.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := ReplyFor(tc.err)
			if got := fmt.Sprintf("%d %s", r.Code, r.EnhancedString()); got != tc.want {
				t.Errorf("ReplyFor = %s %q, want %s", got, r.Text, tc.want)
			}
			if strings.Contains(r.Text, "internal") {
				t.Errorf("reply leaks the internal error: %q", r.Text)
			}
			if r.Text == "" {
				t.Error("empty reply text")
			}
		})
	}
}

func TestReplyOf(t *testing.T) {
	e := Classify("h:587", StageRcpt, Reply{550, [3]int{5, 1, 10}, "Recipient\r\nnot found"}, "bob@x.example")
	if got := ReplyOf(e).String(); got != "550 5.1.10 Recipient not found (recipient bob@x.example)" {
		t.Errorf("ReplyOf = %q", got)
	}
	if got := ReplyOf(&Error{Class: Broken, Stage: StageConnect}).String(); got != "451 4.4.1 Exchange Online not reachable, try again later" {
		t.Errorf("ReplyOf without Exchange's reply = %q", got)
	}
	if got := (Reply{Code: 250, Text: "ok"}).String(); got != "250 ok" {
		t.Errorf("a reply without an enhanced code: %q", got)
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if len(id) != 26 || strings.Trim(id, "0123456789abcdefghijklmnopqrstuvwxyz") != "" || seen[id] {
			t.Fatalf("bad or repeated ID %q", id)
		}
		seen[id] = true
	}
}
