package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// The delivery side of the abuse suite, on the binary: what Exchange and
// Entra ID do to a busy site (a refused recipient among several, the
// daily recipient quota, an Entra outage) costs no mail and floods
// nothing.

// sendTo submits one message as mfp-2f on a new connection and returns
// the final reply text.
func sendTo(addr, subject string, to ...string) (string, error) {
	return sendAs(addr, "mfp-2f", "scan@printer.lan", to, fmt.Sprintf("Subject: %s\r\n\r\nscan %s\r\n", subject, subject))
}

// deliveredTo counts, per recipient, the messages with the subject that
// Exchange accepted.
func deliveredTo(exo *fakeexchange.Server, subject string) map[string]int {
	got := map[string]int{}
	for _, m := range exo.Messages() {
		if strings.Contains(string(m.Data), "Subject: "+subject+"\r\n") {
			for _, to := range m.To {
				got[to]++
			}
		}
	}
	return got
}

// One refused recipient among three: the other two get the message once,
// the device its 250, bounce_to a report naming the third; a recipient
// refused for now is retried alone and gets it once.
func TestAbusePerRecipient(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	appendConfig(t, path, "delivery:\n  mode: hybrid\n  retry_initial: 1s\n  retry_max: 2s\n  bounce_to: it@contoso.example\n")
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain}, "serve", "--config", path)

	u.exo.RefuseRecipient("carol@contoso.example", fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 10},
		Text: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"})
	text, err := sendTo(plain, "three", "alice@contoso.example", "carol@contoso.example", "dave@contoso.example")
	if err != nil || !strings.Contains(text, "OK") {
		t.Fatalf("the device got %q %v, want 250", text, err)
	}
	var report string
	testenv.Eventually(t, "the report to bounce_to", 10*time.Second, func() bool {
		for _, m := range u.exo.Messages() {
			if len(m.To) == 1 && m.To[0] == "it@contoso.example" {
				report = string(m.Data)
			}
		}
		return report != ""
	})
	if got := deliveredTo(u.exo, "three"); got["alice@contoso.example"] != 1 || got["dave@contoso.example"] != 1 || got["carol@contoso.example"] != 0 {
		t.Errorf("delivered %v", got)
	}
	if !strings.Contains(report, "Final-Recipient: rfc822; carol@contoso.example") || strings.Contains(report, "rfc822; alice@") {
		t.Errorf("the report:\n%s", report)
	}

	u.exo.RefuseRecipient("erin@contoso.example", fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error"})
	if text, err := sendTo(plain, "two", "frank@contoso.example", "erin@contoso.example"); err != nil {
		t.Fatalf("%q %v", text, err)
	}
	testenv.Eventually(t, "the retried recipient", 15*time.Second, func() bool { return deliveredTo(u.exo, "two")["erin@contoso.example"] == 1 })
	time.Sleep(2 * time.Second) // a second delivery would come by now
	if got := deliveredTo(u.exo, "two"); got["frank@contoso.example"] != 1 || got["erin@contoso.example"] != 1 {
		t.Errorf("delivered %v, want each once", got)
	}
	p.stop(t)
	for _, want := range []string{`"recipient":"carol@contoso.example"`, `"recipient":"erin@contoso.example"`} {
		if !strings.Contains(p.logs.String(), want) {
			t.Errorf("the log lacks %s", want)
		}
	}
}

// The daily recipient quota at 5: the sixth recipient's message waits in
// the queue, and the status page and /metrics say why; Exchange's own
// 554 5.2.0 quota refusal pauses the mailbox and loses nothing.
func TestAbuseDailyQuota(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	data := testenv.ReadFile(t, path)
	writeFile(t, path, strings.Replace(data, "  - name: contoso\n", "  - name: contoso\n    max_recipients_per_day: 5\n", 1))
	appendConfig(t, path, "delivery:\n  mode: hybrid\n  retry_initial: 1s\n  retry_max: 2s\n")
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	p := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	for i := 0; i < 5; i++ {
		if text, err := sendTo(plain, fmt.Sprintf("q%d", i), "bob@contoso.example"); err != nil || !strings.Contains(text, "OK") {
			t.Fatalf("message %d: %q %v", i, text, err)
		}
	}
	text, err := sendTo(plain, "sixth", "bob@contoso.example")
	if err != nil || !strings.Contains(text, "queued") {
		t.Fatalf("the sixth recipient: %q %v, want 250 ... queued", text, err)
	}
	time.Sleep(3 * time.Second) // retries come and go; the window does not free
	if deliveredTo(u.exo, "sixth")["bob@contoso.example"] != 0 {
		t.Fatal("the sixth recipient was delivered beyond the quota")
	}
	_, page := httpGet(t, "http://"+httpAddr+"/")
	if !strings.Contains(page, `id="waiting"`) || !strings.Contains(page, "451 4.2.0") || !strings.Contains(page, "recipients a day") {
		t.Errorf("the status page does not say why the message waits:\n%s", testenv.Grep(page, "4.2.0"))
	}
	if !strings.Contains(page, `<td data-label="Last 24 hours" class="num">5</td>`) {
		t.Error("the status page does not show the mailbox's quota")
	}
	_, m := httpGet(t, "http://"+httpAddr+"/metrics")
	if !strings.Contains(m, `smtpbridge_mailbox_recipients_day{mailbox="scanner@contoso.example",tenant="contoso"} 5`) {
		t.Errorf("/metrics: %s", testenv.Grep(m, "recipients"))
	}
	// The queue keeps it across a restart (the count is saved too).
	p.stop(t)
	p = startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	time.Sleep(2 * time.Second)
	if deliveredTo(u.exo, "sixth")["bob@contoso.example"] != 0 {
		t.Fatal("a restart reset the quota")
	}
	out, err := runCmd(t, "", binary, "queue", "list", "--config", path)
	if err != nil || !strings.Contains(out, "451 4.2.0") {
		t.Errorf("queue list: %v\n%s", err, out)
	}
	p.stop(t)

	// Exchange's own quota refusal, for the other tenant's mailbox.
	u2 := u.exo
	u2.Script(fakeexchange.StageData, fakeexchange.Reply{Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
		Text: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception"})
	p = startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	c, err := smtp.Dial(plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "fab-mfp", password)); err != nil {
		t.Fatal(err)
	}
	if text, err := sendOn(c, "exchange-quota"); err != nil || !strings.Contains(text, "queued") {
		t.Fatalf("after Exchange's 554 5.2.0: %q %v, want 250 ... queued", text, err)
	}
	c.Quit()
	testenv.Eventually(t, "delivery after the pause", 15*time.Second, func() bool { return delivered(u.exo)["exchange-quota"] == 1 })
	if strings.Contains(p.logs.String(), `"event":"dead"`) || strings.Contains(p.logs.String(), `"event":"bounced"`) {
		t.Error("a quota refusal failed the message")
	}
	p.stop(t)
}

// Entra ID down for 60 s with 500 messages arriving: the tenant pauses
// its token requests (5 s, 10 s, 20 s, ...), devices get "queued" at once
// instead of each message asking Entra, the log warns once per state
// change, and everything is delivered once Entra is back.
func TestAbuseEntraOutage(t *testing.T) {
	t.Parallel() // a minute of waiting, beside the other tests
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	data := testenv.ReadFile(t, path)
	writeFile(t, path, strings.Replace(data, "  - name: contoso\n", "  - name: contoso\n    max_messages_per_minute: 100000\n", 1))
	u.entra.SetDown(&fakeentra.Failure{Status: 400, Code: "temporarily_unavailable", AADSTS: 90033,
		Description: "AADSTS90033: A transient error has occurred. Please try again."})
	start := time.Now()
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain}, "serve", "--config", path)

	const sessions, each = 10, 50
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		queued int
		slow   time.Duration
		errs   []error
	)
	for g := 0; g < sessions; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(plain)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", "mfp-2f", password)); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			for i := 0; i < each; i++ {
				t0 := time.Now()
				text, err := sendOn(c, fmt.Sprintf("outage-%d-%d", g, i))
				took := time.Since(t0)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if strings.Contains(text, "queued") {
					queued++
				}
				slow = max(slow, took)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d messages refused, e.g. %v", len(errs), errs[0])
	}
	sent := time.Since(start)
	time.Sleep(60*time.Second - sent)
	requests := u.entra.Requests()
	u.entra.SetDown(nil)
	defer func() {
		if t.Failed() {
			t.Logf("delivered %d; log:\n%s", len(delivered(u.exo)), tail(testenv.Grep(p.logs.String(), "level\":\"warn"), 20))
		}
	}()
	testenv.Eventually(t, "every message delivered", 100*time.Second, func() bool { return len(delivered(u.exo)) == sessions*each })
	t.Logf("%d messages sent in %s (%d answered queued, the slowest reply %s); %d token requests in the 60 s outage; all delivered %s after the outage",
		sessions*each, sent.Round(time.Millisecond), queued, slow.Round(time.Millisecond), requests, time.Since(start.Add(60*time.Second)).Round(time.Second))
	// Pauses of 5, 10, 20, 40 s: at most 5 requests in 60 s, however many
	// messages.
	if requests > 6 {
		t.Errorf("Entra got %d token requests in a 60 s outage", requests)
	}
	if queued < sessions*each-10 {
		t.Errorf("only %d of %d messages were answered queued at once", queued, sessions*each)
	}
	p.stop(t)
	logs := p.logs.String()
	if n := strings.Count(logs, `"level":"error"`); n > 0 {
		t.Errorf("%d error-level log lines for a transient outage:\n%s", n, testenv.Grep(logs, `"level":"error"`))
	}
	// The tenant's state changes are logged once each (paused, back);
	// each message has its own audit events (deferred, delivered).
	var stateLines, deferred []string
	for _, line := range strings.Split(logs, "\n") {
		switch {
		case strings.Contains(line, `"event":"deferred"`):
			deferred = append(deferred, line)
		case strings.Contains(line, "AADSTS90033") && !strings.Contains(line, `"msg_id"`):
			stateLines = append(stateLines, line)
		}
	}
	if len(stateLines) > 2 || len(stateLines) == 0 {
		t.Errorf("%d log lines about the tenant's token state:\n%s", len(stateLines), strings.Join(stateLines, "\n"))
	}
	if len(deferred) > 2*sessions*each {
		t.Errorf("%d deferred events for %d messages: they retried on their own", len(deferred), sessions*each)
	}
	t.Logf("the tenant's token state: %d log line(s); %d deferred events for %d messages", len(stateLines), len(deferred), sessions*each)
}
