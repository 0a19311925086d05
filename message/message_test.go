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
	if quota.Class != Held || quota.Hold != HoldDailyQuota || quota.Pauses() || quota.Permanent() {
		t.Errorf("the daily quota: %s %s", quota.Class, quota.Hold)
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

// Exchange's replies as Microsoft's articles and the field write them
// ("Continuous error throttling for SMTP AUTH submissions", "SMTP AUTH
// submission improvements", "Non-delivery reports in Exchange Online",
// "Fix issues with printers, scanners, and LOB applications that send
// email using Microsoft 365"), with the front-end suffixes they end in:
// each in its class and hold, whatever the suffix.
func TestClassifyExchangeTexts(t *testing.T) {
	suffixes := []string{"", " [Hostname=DM5SPR00MB2471.namprd08.prod.outlook.com]",
		" [MN2PR05CA0004.namprd05.prod.outlook.com 2023-09-12T20:59:57.214Z 08DBB276B7E699C4]"}
	for _, c := range []struct {
		stage Stage
		reply string
		class Class
		hold  Hold
	}{
		{StageData, "550 5.2.251 Sender throttled due to continuous mailbox full errors.", Held, HoldThrottled},
		{StageData, "550 5.2.252 Sender throttled due to continuous send as denied errors.", Held, HoldThrottled},
		{StageMail, "550 5.2.253 Sender throttled due to continuous invalid license errors.", Held, HoldThrottled},
		{StageData, "550 5.2.254 Sender throttled due to continuous too many recipients errors.", Held, HoldThrottled},
		{StageData, "550 5.2.255 Sender throttled due to continuous invalid recipients errors.", Held, HoldThrottled},
		{StageData, "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.", Held, HoldMailboxFull},
		{StageData, "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionQuotaExceeded", Held, HoldMailboxFull},
		{StageData, "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.", Held, HoldDailyQuota},
		{StageMail, "550 5.1.8 Access denied, bad outbound sender", Held, HoldSenderBlocked},
		{StageMail, "550 5.7.501 Access denied, spam abuse detected", Held, HoldSenderBlocked},
		{StageMail, "550 5.7.705 Access denied, tenant has exceeded threshold", Held, HoldSenderBlocked},
		{StageMail, "550 5.7.708 Access denied, traffic not accepted from this IP", Held, HoldSenderBlocked},
		{StageMail, "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains", Held, HoldSenderBlocked},
		{StageAuth, "535 5.7.3 Authentication unsuccessful", Setup, HoldSetup},
		{StageAuth, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.", Setup, HoldSetup},
		{StageAuth, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.", Setup, HoldSetup},
		{StageAuth, "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator.", Setup, HoldSetup},
		{StageMail, "530 5.7.57 Client not authenticated to send mail. Error: 535 5.7.139 Authentication unsuccessful", Setup, HoldSetup},
		{StageAuth, "501 5.5.124 Authentication failed", Setup, HoldSetup},
		{StageData, "554 5.2.252 SendAsDenied; scanner@contoso.com not allowed to send as billing@contoso.com; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.", Permanent, ""},
		{StageMail, "550 5.7.60 SMTP; Client does not have permissions to send as this sender", Permanent, ""},
		{StageRcpt, "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", Permanent, ""},
		{StageRcpt, "452 4.5.3 Too many recipients", Temporary, ""},
		{StageRcpt, "550 5.5.3 Too many recipients", Temporary, ""},
		{StageMail, "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", Throttled, ""},
		{StageMail, "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.", Throttled, ""},
		{StageAuth, "451 4.7.0 Temporary server error. Please try again later. PRX4", Throttled, ""},
		{StageData, "451 4.3.111 Temporary server error. Please try again later. MRH1", Throttled, ""},
		{StageData, "451 4.7.500 Server busy. Please try again later from [203.0.113.5]. (AS761)", Throttled, ""},
	} {
		for _, suffix := range suffixes {
			r := parseReply(t, c.reply+suffix)
			e := Classify("smtp.office365.com:587", c.stage, r, "")
			if e.Class != c.class || e.Hold != c.hold {
				t.Errorf("%q: %s/%q, want %s/%q", c.reply+suffix, e.Class, e.Hold, c.class, c.hold)
			}
		}
	}
	sendAs := Classify("h", StageData, parseReply(t, "554 5.2.252 SendAsDenied; x not allowed to send as y"), "")
	if !SendAsRefusal(sendAs) || UnknownRecipient(sendAs) {
		t.Error("SendAsDenied is a Send As refusal")
	}
	unknown := Classify("h", StageRcpt, parseReply(t, "550 5.1.10 RESOLVER.ADR.RecipientNotFound"), "gone@x.example")
	if !UnknownRecipient(unknown) || SendAsRefusal(unknown) {
		t.Error("5.1.10 is an unknown recipient")
	}
	if r := ReplyFor(Classify("h", StageData, parseReply(t, "550 5.2.251 Sender throttled due to continuous mailbox full errors."), "")); r.Code != 451 ||
		r.EnhancedString() != "4.2.251" || !strings.Contains(r.Text, "mailbox is held") {
		t.Errorf("a sync device's reply to a held mailbox: %v", r)
	}
}

// parseReply reads "550 5.2.251 text" as a Reply.
func parseReply(t *testing.T, s string) Reply {
	t.Helper()
	var r Reply
	var a, b, c int
	if n, _ := fmt.Sscanf(s, "%d %d.%d.%d", &r.Code, &a, &b, &c); n != 4 {
		t.Fatalf("not a reply: %q", s)
	}
	r.Enhanced = [3]int{a, b, c}
	r.Text = strings.SplitN(s, " ", 3)[2]
	return r
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
