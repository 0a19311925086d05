package queue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
)

// Hybrid mode: Exchange's acceptance reaches the device, and the spool is
// empty afterwards.
func TestHybridDelivered(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeHybrid})
	code, text := s.send("mfp", "anyone@contoso.example", "hybrid-ok", "bob@contoso.example")
	if code != 250 || !strings.Contains(text, "delivered as <") {
		t.Fatalf("reply %d %q, want 250 ... delivered as <queue id>", code, text)
	}
	if got := w.subjects()["hybrid-ok"]; got != 1 {
		t.Fatalf("Exchange got the message %d times", got)
	}
	testenv.Eventually(t, "empty spool", 2*time.Second, func() bool { return len(s.queued()) == 0 })
	assertSpoolEmpty(t, s)
}

// Hybrid mode: a permanent refusal reaches the device as Exchange's 5xx,
// and the message leaves the spool (no dead letter: the device knows).
func TestHybridPermanentRefusal(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeHybrid, bounceTo: "it@contoso.example"})
	// billing@ is allowed by the device's policy, but the mailbox has no
	// SendAs for it: Exchange refuses at MAIL FROM.
	code, text := s.send("erp", "billing@contoso.example", "sendas", "bob@contoso.example")
	if code != 550 || !strings.Contains(text, "5.7.60") {
		t.Fatalf("reply %d %q, want Exchange's 550 5.7.60", code, text)
	}
	testenv.Eventually(t, "empty spool", 2*time.Second, func() bool { return len(s.queued()) == 0 })
	if d := s.dead(); len(d) != 0 {
		t.Fatalf("a refusal the device was told about became a dead letter: %+v", d)
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(w.exo.Messages()); n != 0 {
		t.Fatalf("Exchange got %d messages (a report was sent for a refusal the device saw)", n)
	}
	assertSpoolEmpty(t, s)
}

// Hybrid mode: a temporary failure gives "queued", and the queue delivers
// the message later, once.
func TestHybridTemporaryThenDelivered(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeHybrid})
	w.exo.Script(fakeexchange.StageMail, fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error"})
	code, text := s.send("mfp", "x@contoso.example", "temp", "bob@contoso.example")
	if code != 250 || !strings.Contains(text, "queued") {
		t.Fatalf("reply %d %q, want 250 ... queued", code, text)
	}
	testenv.Eventually(t, "delivery", 5*time.Second, func() bool { return w.subjects()["temp"] == 1 })
	testenv.Eventually(t, "empty spool", 2*time.Second, func() bool { return len(s.queued()) == 0 })
	time.Sleep(300 * time.Millisecond)
	if got := w.subjects()["temp"]; got != 1 {
		t.Fatalf("delivered %d times, want once", got)
	}
}

// Hybrid mode: when Exchange does not answer within sync_timeout the
// device gets "queued" at the deadline; the message arrives later.
func TestHybridDeadline(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeHybrid, syncTimeout: 300 * time.Millisecond})
	w.proxy.set("hang")
	start := time.Now()
	code, text := s.send("mfp", "x@contoso.example", "slow", "bob@contoso.example")
	took := time.Since(start)
	if code != 250 || !strings.Contains(text, "queued") {
		t.Fatalf("reply %d %q, want 250 ... queued", code, text)
	}
	if took > 3*time.Second {
		t.Fatalf("the device waited %s, sync_timeout is 300ms", took)
	}
	w.proxy.set("up")
	if _, err := s.q.RetryAll(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "delivery", 20*time.Second, func() bool { return w.subjects()["slow"] == 1 })
}

// Queue mode: 250 as soon as the message is on disk.
func TestQueueMode(t *testing.T) {
	w := newWorld(t)
	w.proxy.set("down")
	s := w.start(stackOptions{mode: message.ModeQueue})
	code, text := s.send("mfp", "x@contoso.example", "queued-1", "bob@contoso.example")
	if code != 250 || !strings.Contains(text, "queued") {
		t.Fatalf("reply %d %q, want 250 ... queued", code, text)
	}
	if q := s.queued(); len(q) != 1 || q[0].Device != "mfp" || q[0].Mailbox != mailbox {
		t.Fatalf("queue = %+v", q)
	}
	w.proxy.set("up")
	testenv.Eventually(t, "delivery", 5*time.Second, func() bool { return w.subjects()["queued-1"] == 1 })
}

// Throttling: Exchange answers 432 4.3.2 and 451 for a while and enforces
// 3 connections per mailbox. Every message arrives exactly once and the
// bridge never holds more than 3 connections for the mailbox.
func TestThrottling(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeQueue})
	var replies []fakeexchange.Reply
	for i := 0; i < 6; i++ {
		replies = append(replies,
			fakeexchange.Reply{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "STOREDRV.ClientSubmit; sender thread limit exceeded"},
			fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error"})
	}
	w.exo.Script(fakeexchange.StageMail, replies...)
	const n = 30
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, text := s.send("mfp", "x@contoso.example", fmt.Sprintf("burst-%02d", i), "bob@contoso.example"); code != 250 {
				t.Errorf("message %d: %d %s", i, code, text)
			}
		}()
	}
	wg.Wait()
	testenv.Eventually(t, "all delivered", 30*time.Second, func() bool { return len(w.subjects()) == n })
	testenv.Eventually(t, "empty queue", 5*time.Second, func() bool { return len(s.queued()) == 0 })
	for subj, c := range w.subjects() {
		if c != 1 {
			t.Errorf("%s delivered %d times", subj, c)
		}
	}
	if peak := w.exo.PeakConnections(mailbox); peak > 3 {
		t.Errorf("the bridge held %d connections for the mailbox at once; Exchange allows 3", peak)
	}
	if logins := w.exo.AuthLogins(); logins >= n {
		t.Errorf("%d logins for %d messages: connections are not reused", logins, n)
	}
	if !strings.Contains(s.logs.String(), "4.3.2") {
		t.Error("the 432 throttling replies were not logged")
	}
}

// Outage: Exchange unreachable, then back. Every message the devices got
// a 250 for arrives, none twice.
func TestOutage(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeHybrid})
	w.proxy.set("down")
	for i := 0; i < 10; i++ {
		if code, text := s.send("mfp", "x@contoso.example", fmt.Sprintf("outage-%d", i), "bob@contoso.example"); code != 250 || !strings.Contains(text, "queued") {
			t.Fatalf("message %d during the outage: %d %q, want 250 queued", i, code, text)
		}
	}
	time.Sleep(300 * time.Millisecond) // a few retry rounds against the dead host
	if len(w.exo.Messages()) != 0 {
		t.Fatal("messages delivered through a down proxy?")
	}
	w.proxy.set("up")
	testenv.Eventually(t, "all delivered", 20*time.Second, func() bool { return len(w.subjects()) == 10 })
	testenv.Eventually(t, "empty queue", 5*time.Second, func() bool { return len(s.queued()) == 0 })
	for subj, c := range w.subjects() {
		if c != 1 {
			t.Errorf("%s delivered %d times", subj, c)
		}
	}
}

// A restart reloads the queue from the spool and delivers what the last
// run left.
func TestRestartDeliversSpooled(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	w.proxy.set("down")
	s1 := w.start(stackOptions{mode: message.ModeQueue, spoolDir: dir, retryInitial: time.Hour, retryMax: time.Hour})
	for i := 0; i < 3; i++ {
		if code, _ := s1.send("mfp", "x@contoso.example", fmt.Sprintf("restart-%d", i), "bob@contoso.example"); code != 250 {
			t.Fatal("not accepted")
		}
	}
	// One attempt fails; the mailbox then pauses rather than trying the
	// others against a host that is down.
	testenv.Eventually(t, "a first attempt", 5*time.Second, func() bool {
		for _, it := range s1.queued() {
			if it.LastReply != "" {
				return true
			}
		}
		return false
	})
	s1.stop()
	w.proxy.set("up")
	s2 := w.start(stackOptions{mode: message.ModeQueue, spoolDir: dir, retryInitial: time.Hour, retryMax: time.Hour})
	if got := len(s2.queued()); got != 3 {
		t.Fatalf("after restart %d messages queued, want 3", got)
	}
	// Their next attempt is an hour away (persisted): a restart does not
	// hammer. An admin's retry makes them due now.
	time.Sleep(200 * time.Millisecond)
	if len(w.exo.Messages()) != 0 {
		t.Fatal("a restart retried messages before their persisted next attempt")
	}
	if _, err := s2.q.RetryAll(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "delivery after restart", 10*time.Second, func() bool { return len(w.subjects()) == 3 })
}

// A message Exchange refuses after it was queued becomes a dead letter, and
// bounce_to gets an RFC 3464 report with the original header. Requeue
// sends it again.
func TestDeadLetterAndDSN(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeQueue, bounceTo: "it@contoso.example"})
	w.exo.Script(fakeexchange.StageRcpt, fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound; Recipient not found"})
	if code, _ := s.send("mfp", "x@contoso.example", "doomed", "nobody@contoso.example"); code != 250 {
		t.Fatal("not accepted")
	}
	testenv.Eventually(t, "dead letter", 5*time.Second, func() bool { return len(s.dead()) == 1 })
	d := s.dead()[0]
	if !strings.Contains(d.DeadReason, "5.1.10") || d.Device != "mfp" {
		t.Errorf("dead letter %+v lacks the reply or the device", d)
	}
	testenv.Eventually(t, "report delivered", 5*time.Second, func() bool { return len(w.exo.Messages()) == 1 })
	dsn := w.exo.Messages()[0]
	body := string(dsn.Data)
	for _, want := range []string{
		"Content-Type: multipart/report; report-type=delivery-status",
		"Content-Type: message/delivery-status",
		"Final-Recipient: rfc822; nobody@contoso.example",
		"Action: failed",
		"Status: 5.1.10",
		"Diagnostic-Code: smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound",
		"Content-Type: text/rfc822-headers",
		"Subject: doomed",
		"Auto-Submitted: auto-replied",
		"smtpbridge queue requeue " + d.ID,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(body, bodyCanary) {
		t.Error("the report carries the original body; it should carry the header only")
	}
	if len(dsn.To) != 1 || dsn.To[0] != "it@contoso.example" || dsn.From != mailbox {
		t.Errorf("report envelope %s -> %v, want %s -> it@contoso.example", dsn.From, dsn.To, mailbox)
	}
	if err := s.q.Requeue(d.ID); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "requeued delivery", 5*time.Second, func() bool { return w.subjects()["doomed"] == 1 })
	if len(s.dead()) != 0 {
		t.Error("requeued message still among the dead letters")
	}
}

// A message that outlives max_age is given up with a 4.4.7 report.
func TestMaxAge(t *testing.T) {
	w := newWorld(t)
	w.proxy.set("down")
	s := w.start(stackOptions{mode: message.ModeQueue, maxAge: 300 * time.Millisecond, bounceTo: "it@contoso.example"})
	if code, _ := s.send("mfp", "x@contoso.example", "too-old", "bob@contoso.example"); code != 250 {
		t.Fatal("not accepted")
	}
	testenv.Eventually(t, "expiry", 10*time.Second, func() bool { return len(s.dead()) == 1 })
	if r := s.dead()[0].DeadReason; !strings.Contains(r, "not delivered within 300ms") {
		t.Errorf("dead reason %q", r)
	}
	w.proxy.set("up")
	if _, err := s.q.RetryAll(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "report", 10*time.Second, func() bool { return len(w.exo.Messages()) == 1 })
	if body := string(w.exo.Messages()[0].Data); !strings.Contains(body, "Status: 4.4.7") {
		t.Errorf("expiry report lacks Status: 4.4.7:\n%s", body)
	}
	if w.subjects()["too-old"] != 0 {
		t.Error("the expired message was delivered after all")
	}
}

// When the spool cannot be written the device gets 452 4.3.1, and nothing
// is queued or delivered.
func TestSpoolWriteFailure(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	s := w.start(stackOptions{mode: message.ModeHybrid, spoolDir: dir})
	// Replace tmp/ with a file: every new message file fails, even for
	// root, who ignores permissions.
	if err := os.RemoveAll(filepath.Join(dir, "tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, text := s.send("mfp", "x@contoso.example", "nospace", "bob@contoso.example")
	if code != 452 || !strings.HasPrefix(text, "4.3.1") {
		t.Fatalf("reply %d %q, want 452 4.3.1", code, text)
	}
	if len(s.queued()) != 0 {
		t.Error("a message the device was refused is queued")
	}
	time.Sleep(200 * time.Millisecond)
	if len(w.exo.Messages()) != 0 {
		t.Error("a message the device was refused was delivered")
	}
	if strings.Contains(s.logs.String(), bodyCanary) {
		t.Error("the body reached the log")
	}
}

// assertSpoolEmpty checks that no message file is left on disk (the
// queue forgets a message just before it deletes its files).
func assertSpoolEmpty(t *testing.T, s *stack) {
	t.Helper()
	testenv.Eventually(t, "no files left in the spool", 2*time.Second, func() bool {
		for _, sub := range []string{"queue", "dead", "tmp"} {
			if entries, _ := os.ReadDir(filepath.Join(s.sp.Dir(), sub)); len(entries) != 0 {
				return false
			}
		}
		return true
	})
}

// Each recipient has its own outcome: of three, the one Exchange refuses
// for good is reported to bounce_to while the other two get the message
// once and the device gets its 250; one refused for now is tried again
// alone, and gets the message once.
func TestPerRecipient(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeHybrid, bounceTo: "it@contoso.example"})
	w.exo.RefuseRecipient("typo@contoso.example", fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 10},
		Text: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"})
	w.exo.RefuseRecipient("busy@contoso.example", fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error"})
	code, text := s.send("mfp", "x@contoso.example", "three", "a@contoso.example", "typo@contoso.example", "b@contoso.example")
	if code != 250 || !strings.Contains(text, "delivered as <") {
		t.Fatalf("reply %d %q, want 250 delivered", code, text)
	}
	code, text = s.send("mfp", "x@contoso.example", "later", "c@contoso.example", "busy@contoso.example")
	if code != 250 {
		t.Fatalf("reply %d %q, want 250", code, text)
	}
	testenv.Eventually(t, "the retried recipient", 10*time.Second, func() bool { return len(s.queued()) == 0 && len(w.exo.Messages()) >= 4 })
	got := map[string]int{} // recipient -> times delivered, the report aside
	var report string
	for _, m := range w.exo.Messages() {
		if len(m.To) == 1 && m.To[0] == "it@contoso.example" {
			report = string(m.Data)
			continue
		}
		for _, to := range m.To {
			got[to]++
		}
	}
	want := map[string]int{"a@contoso.example": 1, "b@contoso.example": 1, "c@contoso.example": 1, "busy@contoso.example": 1}
	for rcpt, n := range want {
		if got[rcpt] != n {
			t.Errorf("%s got the message %d times, want %d (all: %v)", rcpt, got[rcpt], n, got)
		}
	}
	if got["typo@contoso.example"] != 0 || report == "" {
		t.Errorf("delivered %v", got)
	}
	for _, want := range []string{"Final-Recipient: rfc822; typo@contoso.example", "Status: 5.1.10", "RecipientNotFound"} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "Final-Recipient: rfc822; a@contoso.example") {
		t.Error("the report names a recipient that got the message")
	}
	if len(s.dead()) != 0 {
		t.Errorf("dead letters: %+v", s.dead())
	}
	logs := s.logs.String()
	for _, want := range []string{`"recipient":"typo@contoso.example"`, `"recipient":"busy@contoso.example"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the audit log lacks %s", want)
		}
	}
}

// After some recipients took the message, the spool says who is left:
// a retry, or a restart, sends it to them only.
func TestRecipientsLeftInTheSpool(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeQueue, retryInitial: time.Hour, retryMax: time.Hour})
	w.exo.RefuseRecipient("busy@contoso.example", fakeexchange.Reply{Code: 452, Enhanced: smtp.EnhancedCode{4, 2, 2}, Text: "mailbox full for now"})
	if code, _ := s.send("mfp", "x@contoso.example", "left", "a@contoso.example", "busy@contoso.example"); code != 250 {
		t.Fatal("not accepted")
	}
	testenv.Eventually(t, "the first attempt", 5*time.Second, func() bool {
		q := s.queued()
		return len(q) == 1 && q[0].LastReply != ""
	})
	it := s.queued()[0]
	if strings.Join(it.To, ",") != "busy@contoso.example" || !strings.HasPrefix(it.LastReply, "452 4.2.2") {
		t.Fatalf("queued after a partial delivery: to %v, last reply %q", it.To, it.LastReply)
	}
	onDisk, err := s.sp.List()
	if err != nil || len(onDisk) != 1 || strings.Join(onDisk[0].To, ",") != "busy@contoso.example" {
		t.Fatalf("the spool's record: %+v %v", onDisk, err)
	}
	if _, err := s.q.RetryAll(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the retry", 5*time.Second, func() bool { return len(s.queued()) == 0 })
	msgs := w.exo.Messages()
	if len(msgs) != 2 || strings.Join(msgs[0].To, ",") != "a@contoso.example" || strings.Join(msgs[1].To, ",") != "busy@contoso.example" {
		t.Errorf("Exchange got %+v", msgs)
	}
}

// DSN parameters go through the spool to Exchange, and the bridge's own
// report leaves out the recipients that asked for none (NOTIFY=NEVER).
func TestDSNThroughTheQueue(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeQueue, bounceTo: "it@contoso.example"})
	w.exo.RefuseRecipient("gone@contoso.example", fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 10}, Text: "RecipientNotFound"})
	d := testenv.Dial(t, s.addr())
	d.Login("mfp", devicePassword)
	d.Cmd("MAIL FROM:<x@contoso.example> RET=HDRS ENVID=job-42", "250")
	d.Cmd("RCPT TO:<a@contoso.example> NOTIFY=SUCCESS ORCPT=rfc822;a@contoso.example", "250")
	d.Cmd("RCPT TO:<gone@contoso.example> NOTIFY=NEVER", "250")
	d.Data("Subject: dsn\r\n\r\n"+bodyCanary+"\r\n", "250 2.0.0")
	testenv.Eventually(t, "delivery", 5*time.Second, func() bool { return len(s.queued()) == 0 && len(w.exo.Messages()) == 1 })
	m := w.exo.Messages()[0]
	if m.Ret != "HDRS" || m.EnvID != "job-42" || m.Notify["a@contoso.example"] != "SUCCESS" || strings.Join(m.To, ",") != "a@contoso.example" {
		t.Errorf("Exchange got %+v", m)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(w.exo.Messages()); n != 1 {
		t.Errorf("a report went out for a recipient with NOTIFY=NEVER (%d messages)", n)
	}
}

// The recipients per day: the message that would pass the quota waits in
// the queue, saying why, and goes when the window frees; Exchange's own
// 554 5.2.0 quota refusal pauses the mailbox and loses nothing.
func TestDailyQuota(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeHybrid, quota: 5, day: 3 * time.Second, retryInitial: 50 * time.Millisecond, retryMax: 100 * time.Millisecond})
	for i := 0; i < 5; i++ {
		if code, text := s.send("mfp", "x@contoso.example", fmt.Sprintf("q%d", i), "bob@contoso.example"); code != 250 || !strings.Contains(text, "delivered") {
			t.Fatalf("message %d: %d %s", i, code, text)
		}
	}
	start := time.Now()
	code, text := s.send("mfp", "x@contoso.example", "sixth", "bob@contoso.example")
	if code != 250 || !strings.Contains(text, "queued") {
		t.Fatalf("the sixth recipient: %d %s, want 250 queued", code, text)
	}
	q := s.queued()
	if len(q) != 1 || !strings.HasPrefix(q[0].LastReply, "451 4.2.0") || q[0].NextAttempt.Before(start.Add(time.Second)) {
		t.Fatalf("the waiting message: %+v", q)
	}
	// The deferred event is logged just after the queue has the message's
	// new state.
	testenv.Eventually(t, "the log to say why the message waits", 2*time.Second, func() bool {
		return strings.Contains(s.logs.String(), "recipients a day")
	})
	testenv.Eventually(t, "delivery once the window frees", 10*time.Second, func() bool { return w.subjects()["sixth"] == 1 })
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("delivered after %s, before the window freed", took)
	}

	// Exchange's own quota refusal.
	w.exo.Script(fakeexchange.StageData, fakeexchange.Reply{Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
		Text: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception"})
	if code, text := s.send("mfp", "x@contoso.example", "over", "bob@contoso.example"); code != 250 {
		t.Fatalf("%d %s", code, text)
	}
	testenv.Eventually(t, "delivery after Exchange's quota refusal", 10*time.Second, func() bool { return w.subjects()["over"] == 1 })
	if !strings.Contains(s.logs.String(), "SubmissionQuotaExceeded") {
		t.Error("Exchange's quota refusal was never met")
	}
	if len(s.dead()) != 0 {
		t.Errorf("a quota refusal made a dead letter: %+v", s.dead())
	}
}

// An Entra outage pauses the tenant's token requests: 500 queued messages
// cost Entra a request per pause, not one each, and are logged as a
// transient failure, not as an error per message.
func TestEntraOutage(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeQueue})
	w.tw.Entra.SetDown(&fakeentra.Failure{Status: 503, Code: "temporarily_unavailable", AADSTS: 90033,
		Description: "AADSTS90033: A transient error has occurred. Please try again."})
	before := w.tw.Entra.Requests()
	const n = 500
	for i := 0; i < n; i++ {
		if _, err := s.q.Deliver(context.Background(), &message.Message{ID: message.NewID(), Device: "mfp", Tenant: "contoso",
			Mailbox: mailbox, From: mailbox, To: []string{"bob@contoso.example"},
			Body: strings.NewReader(fmt.Sprintf("Subject: outage-%d\r\n\r\n%s\r\n", i, bodyCanary))}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	w.tw.Entra.SetDown(nil)
	testenv.Eventually(t, "every message delivered", 30*time.Second, func() bool { return len(w.subjects()) == n })
	requests := w.tw.Entra.Requests() - before
	if requests > 4 {
		t.Errorf("Entra got %d token requests for %d messages during a 2 s outage", requests, n)
	}
	if errs := strings.Count(s.logs.String(), `"level":"error"`); errs > 0 {
		t.Errorf("%d error-level log lines for a transient outage", errs)
	}
	t.Logf("%d messages, %d token requests", n, requests)
}

// A device whose queued mail fills its share of the spool gets 452 4.3.1
// while another device's message is still taken; what was acknowledged
// is delivered once, and the share frees as it goes.
func TestDeviceSpoolQuota(t *testing.T) {
	w := newWorld(t)
	w.proxy.set("down")
	s := w.start(stackOptions{mode: message.ModeQueue})
	s.sp.SetQuota(spool.Quota{DeviceMaxBytes: func(device string) int64 {
		if device == "mfp" {
			return 2000
		}
		return 0
	}})
	var accepted []string
	refused := ""
	for i := 0; i < 50 && refused == ""; i++ {
		subject := fmt.Sprintf("hog-%d", i)
		switch code, text := s.send("mfp", "x@contoso.example", subject, "bob@contoso.example"); code {
		case 250:
			accepted = append(accepted, subject)
		case 452:
			refused = text
		default:
			t.Fatalf("message %d: %d %s", i, code, text)
		}
	}
	if !strings.HasPrefix(refused, "4.3.1 This device's queued mail fills its share") || len(accepted) == 0 {
		t.Fatalf("after %d messages accepted: %q, want 452 4.3.1 for the device's share", len(accepted), refused)
	}
	if code, text := s.send("erp", "erp@contoso.example", "other-device", "bob@contoso.example"); code != 250 {
		t.Fatalf("another device, meanwhile: %d %s", code, text)
	}
	if u := s.sp.Usage(); u.Devices["mfp"] > 2000 || u.Devices["mfp"] == 0 {
		t.Errorf("the device's usage is %d bytes, its share 2000", u.Devices["mfp"])
	}
	if strings.Count(s.logs.String(), `"level":"error"`) != 0 {
		t.Errorf("a device over its share was logged as an error:\n%s", testenv.Grep(s.logs.String(), `"level":"error"`))
	}

	w.proxy.set("up")
	if _, err := s.q.RetryAll(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "delivery", 10*time.Second, func() bool { return len(s.queued()) == 0 })
	got := w.subjects()
	for _, subject := range append(accepted, "other-device") {
		if got[subject] != 1 {
			t.Errorf("%s was delivered %d times, want once", subject, got[subject])
		}
	}
	// The queue forgets a delivered message just before the spool
	// removes its files; the share frees with the files.
	testenv.Eventually(t, "the spool's count back to nothing", 5*time.Second, func() bool {
		u := s.sp.Usage()
		return u.Bytes == 0 && len(u.Devices) == 0
	})
	if code, text := s.send("mfp", "x@contoso.example", "after", "bob@contoso.example"); code != 250 {
		t.Errorf("the device once its mail left: %d %s", code, text)
	}
}

// Many messages failing at once for a reason of their mailbox's
// (Exchange's 432 throttling) are one pause of the mailbox, not one each:
// the pause does not grow with their number, and they go together when
// it ends, instead of each on a backoff of its own.
func TestPauseDoesNotGrowWithFailures(t *testing.T) {
	w := newWorld(t)
	s := w.start(stackOptions{mode: message.ModeQueue, retryInitial: 300 * time.Millisecond, retryMax: 20 * time.Second})
	const n = 30
	var throttle []fakeexchange.Reply
	for i := 0; i < n; i++ {
		throttle = append(throttle, fakeexchange.Reply{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "STOREDRV.ClientSubmit; sender thread limit exceeded"})
	}
	w.exo.Script(fakeexchange.StageMail, throttle...)
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := s.q.Deliver(context.Background(), &message.Message{ID: message.NewID(), Device: "mfp", Tenant: "contoso",
			Mailbox: mailbox, From: mailbox, To: []string{"bob@contoso.example"},
			Body: strings.NewReader(fmt.Sprintf("Subject: pause-%d\r\n\r\n%s\r\n", i, bodyCanary))}); err != nil {
			t.Fatal(err)
		}
	}
	// Pauses in a row double from 300 ms; 30 pauses, one per failure,
	// would reach retry_max (20 s).
	testenv.Eventually(t, "every message delivered", 10*time.Second, func() bool { return len(w.subjects()) == n })
	t.Logf("%d messages throttled %d times in all, delivered in %s", n, n, time.Since(start).Round(time.Millisecond))
}

// The queue keeps only an index of each message in memory and reads the
// rest of its record at each attempt: a record that became unreadable
// meanwhile is left on disk as it is (not overwritten with what memory
// knows), the error is logged, and the message stays queued; a
// readable record is delivered with the recipients it names.
func TestUnreadableRecordIsLeftAlone(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	w.proxy.set("down")
	s := w.start(stackOptions{mode: message.ModeQueue, spoolDir: dir, retryInitial: time.Hour, retryMax: time.Hour})
	for _, subj := range []string{"broken", "fine"} {
		if code, _ := s.send("mfp", "x@contoso.example", subj, "bob@contoso.example", "carol@contoso.example"); code != 250 {
			t.Fatal("not accepted")
		}
	}
	// The first attempt failed, and neither record is being written. The
	// second message may not have been tried: when it came after the
	// first's failure, it waits with its mailbox's pause (an hour).
	testenv.Eventually(t, "the first deferred, no attempt under way", 5*time.Second, func() bool {
		items := s.queued()
		return len(items) == 2 && items[0].LastReply != "" &&
			items[0].State != queue.StateDelivering && items[1].State != queue.StateDelivering
	})
	items := s.queued()
	if len(items[0].To) != 2 || items[0].Size == 0 {
		t.Fatalf("the listing does not show the record's recipients and size: %+v", items[0])
	}
	broken := filepath.Join(dir, "queue", items[0].ID+".json")
	garbage := []byte(`{"id": "` + items[0].ID + `", "to": [`)
	if err := os.WriteFile(broken, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	w.proxy.set("up")
	if _, err := s.q.RetryAll(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the readable message delivered", 10*time.Second, func() bool { return w.subjects()["fine"] == 1 })
	testenv.Eventually(t, "the unreadable record logged", 5*time.Second, func() bool {
		return strings.Contains(s.logs.String(), "could not read the queued message's record")
	})
	if got, _ := os.ReadFile(broken); string(got) != string(garbage) {
		t.Errorf("the unreadable record was rewritten: %q", got)
	}
	if w.subjects()["broken"] != 0 {
		t.Error("a message whose record cannot be read was sent")
	}
	if left := s.queued(); len(left) != 1 || left[0].ID != items[0].ID {
		t.Errorf("queued after the attempts: %+v, want the unreadable message only", left)
	}
	for _, m := range w.exo.Messages() {
		if len(m.To) != 2 {
			t.Errorf("delivered to %v, want the record's two recipients", m.To)
		}
	}
}
