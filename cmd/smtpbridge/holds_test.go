package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// holdBridge is a bridge in hybrid mode with retry_initial 2s, its audit
// log and status page on, and two devices on two mailboxes of contoso:
// mfp-2f as scanner@ (the one Exchange refuses in the tests) and erp as
// erp@ (the one that keeps working), erp allowed to send as billing@.
type holdBridge struct {
	u                 *fakes
	p                 *bridgeProc
	path, plain, http string
}

const (
	heldMailbox  = "scanner@contoso.example"
	otherMailbox = "erp@contoso.example"
)

func startHoldBridge(t *testing.T, extra string) *holdBridge {
	t.Helper()
	u := startFakes(t)
	u.AddMailbox(otherMailbox, tenantID, u.app)
	plain, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	hash := strconv.Quote(hashOf(t, password))
	cfg := u.configFrom(t, `
hostname: bridge.test
listeners:
  - {name: lan, address: {{q .Plain}}, tls: none, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}devices:
  - {name: mfp-2f, username: mfp-2f, password_hash: {{.Hash}}, tenant: contoso, mailbox: {{.Held}}, from_policy: enforce, allowed_from: [{{.Held}}, billing@contoso.example]}
  - {name: erp, username: erp, password_hash: {{.Hash}}, tenant: contoso, mailbox: {{.Other}}}
delivery: {mode: hybrid, retry_initial: 2s, retry_max: 30s, sync_timeout: 10s}
limits: {max_recipients: 1000}
spool: {dir: spool}
log: {level: debug, audit_file: audit.log}
http: {address: {{q .HTTP}}}
{{.Extra}}`, map[string]any{"Plain": plain, "Hash": hash, "Held": heldMailbox, "Other": otherMailbox, "HTTP": httpAddr, "Extra": extra})
	path := filepath.Join(u.dir, "holds.yaml")
	writeFile(t, path, cfg)
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain, httpAddr}, "serve", "--config", path)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bridge log:\n%s", tail(p.logs.String(), 60))
		}
	})
	return &holdBridge{u: u, p: p, path: path, plain: plain, http: httpAddr}
}

// send sends a message as device user with the envelope and header From
// from and returns the device's reply, or the refusal.
func (b *holdBridge) send(user, from, subject string, to ...string) string {
	return b.sendFrom(user, from, from, subject, to...)
}

// sendFrom is send with an envelope sender of its own.
func (b *holdBridge) sendFrom(user, envelope, from, subject string, to ...string) string {
	if len(to) == 0 {
		to = []string{"bob@contoso.example"}
	}
	reply, err := sendAs(b.plain, user, envelope, to, "From: <"+from+">\r\nSubject: "+subject+"\r\n\r\nscan\r\n")
	if err != nil {
		if se, ok := err.(*smtp.SMTPError); ok {
			return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		}
		return err.Error()
	}
	return "250 " + reply
}

// arrived counts the messages with subject at Exchange.
func (b *holdBridge) arrived(subject string) int {
	n := 0
	for _, m := range b.u.exo.Messages() {
		if strings.Contains(string(m.Data), "Subject: "+subject+"\r\n") {
			n++
		}
	}
	return n
}

// Exchange refuses the scanner's mailbox itself, in Microsoft's words:
// its messages are held (the device told "queued"), Exchange sees at most
// 2 submissions from the mailbox in 10 s instead of one per message and
// retry, another mailbox delivers meanwhile, the hold shows on the status
// page, in the gauge and in each message's story, and once Exchange takes
// the mailbox again (found by the probe, or lifted with queue retry
// --mailbox) each message arrives exactly once.
func TestMailboxHeld(t *testing.T) {
	for _, c := range []struct {
		name   string
		stage  fakeexchange.Stage
		reply  fakeexchange.Reply
		reason string
		lift   bool // queue retry --mailbox, rather than the probe
	}{
		{"5.2.251", fakeexchange.StageMail, fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 2, 251},
			Text: "Sender throttled due to continuous mailbox full errors. [MN2PR05CA0004.namprd05.prod.outlook.com 2026-12-05T20:59:57.214Z 08DBB276B7E699C4]"}, "throttled", false},
		{"5.2.252", fakeexchange.StageMail, fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 2, 252},
			Text: "Sender throttled due to continuous send as denied errors."}, "throttled", true},
		{"5.2.255", fakeexchange.StageMail, fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 2, 255},
			Text: "Sender throttled due to continuous invalid recipients errors. [Hostname=DM5SPR00MB2471.namprd08.prod.outlook.com]"}, "throttled", false},
		{"mailbox full", fakeexchange.StageData, fakeexchange.Reply{Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 2},
			Text: "mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message."}, "mailbox_full", true},
		{"daily quota", fakeexchange.StageData, fakeexchange.Reply{Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
			Text: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message."}, "daily_quota", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := startHoldBridge(t, "")
			b.u.exo.Refuse(heldMailbox, c.stage, c.reply)
			mails0 := b.u.exo.Mails(heldMailbox)
			start := time.Now()
			for i := range 3 {
				if r := b.send("mfp-2f", heldMailbox, fmt.Sprintf("held-%d", i)); !strings.HasPrefix(r, "250 ") || !strings.Contains(r, "queued") {
					t.Fatalf("message %d: %q, want 250 ... queued", i, r)
				}
			}
			if r := b.send("erp", otherMailbox, "other mailbox"); !strings.Contains(r, "delivered") {
				t.Errorf("the other mailbox's device: %q, want it delivered while the scanner's is held", r)
			}
			// The hold, everywhere an admin looks.
			page, metrics := "http://"+b.http+"/", "http://"+b.http+"/metrics"
			testenv.Eventually(t, "the hold on the status page and in the gauge", 5*time.Second, func() bool {
				_, body := httpGet(t, page)
				_, m := httpGet(t, metrics)
				return strings.Contains(body, `id="held-`+heldMailbox+`"`) && strings.Contains(body, "mailbox held: "+c.reason) &&
					strings.Contains(m, fmt.Sprintf(`smtpbridge_mailbox_held{mailbox=%q,reason=%q,tenant="contoso"} 1`, heldMailbox, c.reason))
			})
			out, err := runCmd(t, "", binary, "trace", "--config", b.path, "--to", "bob@contoso.example", "--device", "mfp-2f")
			if err != nil || strings.Count(out, "its mailbox is held") < 2 {
				t.Errorf("trace does not tell the held messages' story: %v\n%s", err, out)
			}
			time.Sleep(time.Until(start.Add(10 * time.Second)))
			if n := b.u.exo.Mails(heldMailbox) - mails0; n > 2 {
				t.Errorf("Exchange saw %d submissions from the held mailbox in 10 s, want at most 2", n)
			}
			t.Logf("%s: %d submissions from the held mailbox in 10 s for 3 messages", c.name, b.u.exo.Mails(heldMailbox)-mails0)
			if strings.Count(b.p.logs.String(), `"event":"mailbox_held"`) != 1 {
				t.Errorf("the hold was not logged once:\n%s", testenv.Grep(b.p.logs.String(), "mailbox_held"))
			}
			// Exchange takes the mailbox again.
			b.u.exo.Allow(heldMailbox)
			if c.lift {
				if out, err := runCmd(t, "", binary, "queue", "retry", "--mailbox", heldMailbox, "--config", b.path); err != nil || !strings.Contains(out, "3 message(s) due now") {
					t.Errorf("queue retry --mailbox: %v\n%s", err, out)
				}
			}
			testenv.Eventually(t, "the held messages delivered", 40*time.Second, func() bool {
				return b.arrived("held-0") == 1 && b.arrived("held-1") == 1 && b.arrived("held-2") == 1
			})
			testenv.Eventually(t, "the hold gone from the page and the gauge", 5*time.Second, func() bool {
				_, body := httpGet(t, page)
				_, m := httpGet(t, metrics)
				return !strings.Contains(body, `id="held-`) && !strings.Contains(m, "smtpbridge_mailbox_held{")
			})
			time.Sleep(time.Second)
			for i := range 3 {
				if n := b.arrived(fmt.Sprintf("held-%d", i)); n != 1 {
					t.Errorf("held-%d arrived %d times, want once", i, n)
				}
			}
		})
	}
}

// Exchange refuses the bridge's login for the mailbox (a set-up to fix):
// five held messages cost at most one login per hold step, not one per
// message and retry, and each arrives once after the fix.
func TestLoginRefusedHoldsTheMailbox(t *testing.T) {
	for _, c := range []struct {
		name  string
		stage fakeexchange.Stage
		reply fakeexchange.Reply
	}{
		{"535 5.7.3", fakeexchange.StageAuth, fakeexchange.Reply{Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 3}, Text: "Authentication unsuccessful [SN4PR0601CA0002.namprd06.prod.outlook.com]"}},
		{"535 5.7.139 tenant", fakeexchange.StageAuth, fakeexchange.Reply{Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 139},
			Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."}},
		{"535 5.7.139 mailbox", fakeexchange.StageAuth, fakeexchange.Reply{Code: 535, Enhanced: smtp.EnhancedCode{5, 7, 139},
			Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."}},
		{"530 5.7.57", fakeexchange.StageMail, fakeexchange.Reply{Code: 530, Enhanced: smtp.EnhancedCode{5, 7, 57}, Text: "Client not authenticated to send mail."}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := startHoldBridge(t, "")
			b.u.exo.Refuse(heldMailbox, c.stage, c.reply)
			tries := func() int {
				if c.stage == fakeexchange.StageAuth {
					return b.u.exo.AuthLogins()
				}
				return b.u.exo.Mails(heldMailbox)
			}
			before, start := tries(), time.Now()
			for i := range 5 {
				if r := b.send("mfp-2f", heldMailbox, fmt.Sprintf("setup-%d", i)); !strings.Contains(r, "queued") {
					t.Fatalf("message %d: %q, want 250 ... queued", i, r)
				}
			}
			time.Sleep(time.Until(start.Add(10 * time.Second)))
			n := tries() - before
			t.Logf("%s: %d login attempts in 10 s for 5 held messages", c.name, n)
			if n > 4 {
				t.Errorf("%d login attempts in 10 s for 5 held messages, want at most 4 (one per hold step)", n)
			}
			if _, body := httpGet(t, "http://"+b.http+"/"); !strings.Contains(body, "mailbox held: setup") {
				t.Error("the status page does not show the mailbox held for its set-up")
			}
			b.u.exo.Allow(heldMailbox)
			testenv.Eventually(t, "the held messages delivered after the fix", 40*time.Second, func() bool {
				for i := range 5 {
					if b.arrived(fmt.Sprintf("setup-%d", i)) != 1 {
						return false
					}
				}
				return true
			})
		})
	}
}

// After Exchange refused header sender billing@ as Send As, ten more
// messages from it reach Exchange zero times, each device told the same
// refusal; the mailbox's own From still goes. The same for a recipient
// Exchange does not know. A reload forgets them.
func TestRefusalsRemembered(t *testing.T) {
	t.Parallel()
	b := startHoldBridge(t, "")
	// The header From billing@, the envelope the mailbox: Exchange
	// refuses it after the data.
	first := b.sendFrom("mfp-2f", heldMailbox, "billing@contoso.example", "sendas-0")
	if !strings.HasPrefix(first, "554 5.2.252") || !strings.Contains(first, "SendAsDenied") {
		t.Fatalf("the first message from billing@: %q, want Exchange's 554 5.2.252 SendAsDenied", first)
	}
	mails := b.u.exo.Mails(heldMailbox)
	for i := 1; i <= 10; i++ {
		if r := b.sendFrom("mfp-2f", heldMailbox, "billing@contoso.example", fmt.Sprintf("sendas-%d", i)); r != first {
			t.Errorf("message %d from billing@: %q, want the same refusal %q", i, r, first)
		}
	}
	if n := b.u.exo.Mails(heldMailbox) - mails; n != 0 {
		t.Errorf("Exchange saw %d more submissions from billing@ after its SendAsDenied, want 0", n)
	}
	if r := b.send("mfp-2f", heldMailbox, "own-from"); !strings.Contains(r, "delivered") {
		t.Errorf("a message with the mailbox's own From: %q", r)
	}
	// An unknown recipient, refused once by Exchange at RCPT.
	gone := fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}
	b.u.exo.RefuseRecipient("gone@contoso.example", gone)
	first = b.send("mfp-2f", heldMailbox, "gone-0", "gone@contoso.example")
	if !strings.HasPrefix(first, "550 5.1.10") {
		t.Fatalf("the first message to gone@: %q", first)
	}
	mails = b.u.exo.Mails(heldMailbox)
	for i := 1; i <= 10; i++ {
		if r := b.send("mfp-2f", heldMailbox, fmt.Sprintf("gone-%d", i), "gone@contoso.example"); !strings.HasPrefix(r, "550 5.1.10") {
			t.Errorf("message %d to gone@: %q, want 550 5.1.10", i, r)
		}
	}
	if n := b.u.exo.Mails(heldMailbox) - mails; n != 0 {
		t.Errorf("Exchange saw %d more submissions to gone@, want 0", n)
	}
	// With another recipient beside it, the message goes to that one.
	if r := b.send("mfp-2f", heldMailbox, "gone-and-bob", "gone@contoso.example", "bob@contoso.example"); !strings.Contains(r, "delivered") {
		t.Errorf("gone@ and bob@: %q", r)
	}
	for _, m := range b.u.exo.Messages() {
		if strings.Contains(string(m.Data), "Subject: gone-and-bob\r\n") && strings.Join(m.To, ",") != "bob@contoso.example" {
			t.Errorf("gone-and-bob went to %v", m.To)
		}
	}
	_, m := httpGet(t, "http://"+b.http+"/metrics")
	for _, want := range []string{`smtpbridge_refusals_repeated_total{reason="send_as",tenant="contoso"} 10`, `smtpbridge_refusals_repeated_total{reason="unknown_recipient",tenant="contoso"} 11`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, testenv.Grep(m, "refusals_repeated"))
		}
	}
	out, _ := runCmd(t, "", binary, "trace", "--config", b.path, "--code", "5.2.252")
	if !strings.Contains(out, "refused by the bridge, not sent") {
		t.Errorf("trace does not say the bridge refused it itself:\n%s", out)
	}
	// A reload forgets: the next message from billing@ goes to Exchange.
	if out, err := runCmd(t, "", binary, "reload", "--config", b.path); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	b.sendFrom("mfp-2f", heldMailbox, "billing@contoso.example", "after-reload")
	if n := b.u.exo.Mails(heldMailbox) - mails; n != 2 {
		t.Errorf("after the reload, %d submissions (gone-and-bob, after-reload), want 2", n)
	}
}

// 600 recipients in one message, Exchange taking 500 a transaction (452
// 4.5.3 beyond): each recipient gets it once, in two transactions; the
// message is never sent whole again.
func TestTooManyRecipients(t *testing.T) {
	t.Parallel()
	b := startHoldBridge(t, "")
	b.u.exo.SetMaxRecipients(500)
	var to []string
	for i := range 600 {
		to = append(to, fmt.Sprintf("staff%03d@contoso.example", i))
	}
	if r := b.send("mfp-2f", heldMailbox, "six-hundred", to...); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("600 recipients: %q", r)
	}
	testenv.Eventually(t, "every recipient served", 30*time.Second, func() bool {
		n := 0
		for _, m := range b.u.exo.Messages() {
			if strings.Contains(string(m.Data), "Subject: six-hundred\r\n") {
				n += len(m.To)
			}
		}
		return n >= 600
	})
	got := map[string]int{}
	var sizes []int
	for _, m := range b.u.exo.Messages() {
		if strings.Contains(string(m.Data), "Subject: six-hundred\r\n") {
			sizes = append(sizes, len(m.To))
			for _, r := range m.To {
				got[r]++
			}
		}
	}
	if len(sizes) != 2 || sizes[0] != 500 || sizes[1] != 100 {
		t.Errorf("transactions of %v recipients, want [500 100]", sizes)
	}
	for _, r := range to {
		if got[r] != 1 {
			t.Errorf("%s got the message %d times", r, got[r])
		}
	}
}

// Exchange's passing refusals, in its words: the device gets 250 and the
// message arrives once.
func TestPassingRefusals(t *testing.T) {
	t.Parallel()
	b := startHoldBridge(t, "")
	var mu sync.Mutex
	for i, c := range []struct {
		stage fakeexchange.Stage
		reply fakeexchange.Reply
	}{
		{fakeexchange.StageMail, fakeexchange.Reply{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=DM5SPR00MB2471.namprd08.prod.outlook.com]"}},
		{fakeexchange.StageMail, fakeexchange.Reply{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information. [MN2PR05CA0004.namprd05.prod.outlook.com 2026-12-05T20:59:57.214Z 08DBB276B7E699C4]"}},
		{fakeexchange.StageAuth, fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error. Please try again later. PRX4 [BN9PR03CA0345.namprd03.prod.outlook.com]"}},
		{fakeexchange.StageData, fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 3, 111}, Text: "Temporary server error. Please try again later. MRH1 [BN9PR03CA0345.namprd03.prod.outlook.com]"}},
		{fakeexchange.StageData, fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 500}, Text: "Server busy. Please try again later from [203.0.113.5]. (AS761)"}},
	} {
		mu.Lock()
		b.u.exo.Script(c.stage, c.reply)
		subject := fmt.Sprintf("passing-%d", i)
		r := b.send("erp", otherMailbox, subject)
		mu.Unlock()
		if !strings.HasPrefix(r, "250 ") {
			t.Errorf("%d %s: the device got %q, want 250", c.reply.Code, c.reply.Text, r)
		}
		testenv.Eventually(t, subject+" delivered", 30*time.Second, func() bool { return b.arrived(subject) >= 1 })
		time.Sleep(200 * time.Millisecond)
		if n := b.arrived(subject); n != 1 {
			t.Errorf("%s arrived %d times", subject, n)
		}
	}
}
