package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// traceBridge is a bridge with an audit log that has taken the mix of
// messages to traceRcpt the trace tests look for.
type traceBridge struct {
	u                 *fakes
	p                 *bridgeProc
	path, plain, http string
	env               []string
}

const traceRcpt = "someone@example.com"

// startTraceBridge starts a bridge and sends it, for traceRcpt: one
// message delivered, one throttled then delivered, one refused (the
// device told), one queued that Exchange refuses (dead).
func startTraceBridge(t *testing.T) *traceBridge {
	t.Helper()
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	data := testenv.ReadFile(t, path)
	writeFile(t, path, strings.Replace(data, "log:\n  level: debug\n", "log:\n  level: debug\n  audit_file: audit.log\n", 1))
	insertDevices(t, path, fmt.Sprintf("  - {name: erp, username: erp, password_hash: %q, tenant: contoso, mailbox: scanner@contoso.example, delivery: {mode: queue}}\n", hashOf(t, password)))
	// Each refusal here is to be Exchange's own, not repeated from the
	// bridge's memory of the one before (TestRefusalsRemembered).
	appendConfig(t, path, "delivery:\n  mode: hybrid\n  retry_initial: 1s\n  retry_max: 2s\n  remember_refusals: 1ms\n")
	tb := &traceBridge{u: u, path: path, plain: plain, http: httpAddr,
		env: []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}}
	tb.p = startBridge(t, tb.env, []string{plain, httpAddr}, "serve", "--config", path)
	if r := tb.send("mfp-2f", "trace-delivered", "Message-ID: <scan-42@printer.lan>\r\n"); !strings.HasPrefix(r, "2.0.0") {
		t.Fatalf("delivered: %q", r)
	}
	u.exo.Script(fakeexchange.StageMail, fakeexchange.Reply{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "STOREDRV.ClientSubmit; sender thread limit exceeded"})
	if r := tb.send("mfp-2f", "trace-throttled", ""); !strings.HasPrefix(r, "2.0.0") {
		t.Fatalf("throttled then delivered: %q", r)
	}
	// Its second attempt before the refusals are scripted: the fake's
	// scripts are taken in order by whichever attempt comes first, and a
	// retry after the next message's would take that one's refusal.
	audit := filepath.Join(u.dir, "audit.log")
	testenv.Eventually(t, "the throttled message delivered", 20*time.Second, func() bool {
		return strings.Count(testenv.ReadFile(t, audit), `"event":"delivered"`) == 2
	})
	refusal := fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"}
	u.exo.Script(fakeexchange.StageRcpt, refusal)
	if r := tb.send("mfp-2f", "trace-refused", ""); !strings.Contains(r, "550") {
		t.Fatalf("refused: %q", r)
	}
	u.exo.Script(fakeexchange.StageRcpt, refusal)
	if r := tb.send("erp", "trace-dead", ""); !strings.Contains(r, "queued") {
		t.Fatalf("queued: %q", r)
	}
	// Every message has its outcome before a test looks (or restarts).
	testenv.Eventually(t, "the queued message dead", 20*time.Second, func() bool {
		return strings.Contains(testenv.ReadFile(t, audit), `"event":"dead"`)
	})
	return tb
}

// send submits a message to traceRcpt as user and returns the reply.
func (tb *traceBridge) send(user, subject, extra string) string {
	reply, err := sendAs(tb.plain, user, "scan@printer.lan", []string{traceRcpt}, extra+"Subject: "+subject+"\r\n\r\nscan\r\n")
	if err != nil {
		return err.Error()
	}
	return reply
}

// smtpbridge trace after a mix of messages to one recipient: delivered,
// throttled then delivered, refused (the device told), and dead (a
// queued message Exchange refused). Each one's story is printed with
// Exchange's ID or its refusal and hint; --json parses; --id finds a
// message by the device's Message-ID; --follow shows a new message as it
// arrives.
func TestTrace(t *testing.T) {
	tb := startTraceBridge(t)
	p, path, httpAddr, send := tb.p, tb.path, tb.http, tb.send
	const rcpt = traceRcpt
	out, err := runCmd(t, "", binary, "trace", "--config", path, "--to", rcpt)
	if err != nil {
		t.Fatalf("trace: %v\n%s\n%s", err, out, p.logs.String())
	}
	t.Logf("smtpbridge trace --to %s:\n%s", rcpt, out)
	for _, want := range []string{
		"4 message(s)",
		"received from 127.0.0.1, sender scanner@contoso.example, to " + rcpt,
		"Message-ID <scan-42@printer.lan>",
		"delivered (attempt 1) as ",
		"deferred (attempt 1): 432 4.3.2 STOREDRV.ClientSubmit",
		"delivered (attempt 2) as ",
		"bounced",
		"550 5.1.10 RESOLVER.ADR.RecipientNotFound",
		"hint: ",
		"Get-Recipient <address>", // the refusal's hint
		"dead (attempt 1), permanent",
		"erp → contoso as scanner@contoso.example",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("trace output lacks %q", want)
		}
	}
	if strings.Contains(out, "scan\r\n") || strings.Contains(out, password) || strings.Contains(out, clientSecret) {
		t.Error("trace printed a body, a password or a secret")
	}

	out, err = runCmd(t, "", binary, "trace", "--config", path, "--to", rcpt, "--json")
	var stories []struct {
		ID     string
		Events []struct {
			Kind       string `json:"event"`
			UpstreamID string `json:"upstream_id"`
			Reply      string
		}
	}
	if err != nil || json.Unmarshal([]byte(out), &stories) != nil || len(stories) != 4 {
		t.Fatalf("trace --json: %v\n%s", err, out)
	}
	last := stories[3].Events[len(stories[3].Events)-1]
	if last.Kind != "dead" && last.Kind != "dsn" {
		t.Errorf("the dead message's last event is %q", last.Kind)
	}
	upstream := stories[0].Events[len(stories[0].Events)-1].UpstreamID
	if upstream == "" {
		t.Fatalf("the first message has no upstream ID: %+v", stories[0])
	}
	for _, id := range []string{"scan-42@printer.lan", upstream, stories[0].ID} {
		if out, err := runCmd(t, "", binary, "trace", "--config", path, "--id", id, "--json"); err != nil || !strings.Contains(out, stories[0].ID) || strings.Count(out, `"id":`) != 1 {
			t.Errorf("trace --id %s: %v\n%s", id, err, out)
		}
	}
	if out, err := runCmd(t, "", binary, "trace", "--config", path, "--code", "5.1.10", "--json"); err != nil || strings.Count(out, `"id":`) != 2 {
		t.Errorf("trace --code 5.1.10 (the refused and the dead): %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "trace", "--config", path, "--to", "nobody@example.com"); err == nil || !strings.Contains(out, "no message matches") {
		t.Errorf("trace for nobody: %v\n%s", err, out)
	}

	// The status page: the same search, each story's page, and the dead
	// letter's link to its story.
	page := get(t, "http://"+httpAddr+"/trace?to="+rcpt)
	if n := strings.Count(page, `class="story"`); n != 4 {
		t.Errorf("/trace?to=%s shows %d stories, want 4", rcpt, n)
	}
	for _, want := range []string{`href="./message/` + stories[0].ID + `"`, "432 4.3.2 STOREDRV.ClientSubmit", "Hint: ", "550 5.1.10"} {
		if !strings.Contains(page, want) {
			t.Errorf("/trace lacks %q", want)
		}
	}
	deadID := stories[3].ID
	if status := get(t, "http://"+httpAddr+"/"); !strings.Contains(status, `href="message/`+deadID+`"`) || !strings.Contains(status, `href="device/mfp-2f"`) {
		t.Error("the status page does not link the dead letter to its story, or the device to its page")
	}
	if dev := get(t, "http://"+httpAddr+"/device/mfp-2f"); !strings.Contains(dev, `href="../trace?device=mfp-2f"`) {
		t.Error("the device's page does not link its messages in the trace")
	}
	msgPage := get(t, "http://"+httpAddr+"/message/"+deadID)
	if !strings.Contains(msgPage, "dead") || !strings.Contains(msgPage, "RESOLVER.ADR.RecipientNotFound") || strings.Count(msgPage, `class="story"`) != 1 {
		t.Errorf("/message/%s:\n%s", deadID, msgPage)
	}
	if resp, err := http.Get("http://" + httpAddr + "/message/nosuchmessage"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown message's page: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	// --follow: a new message shows up as it arrives.
	follow := exec.Command(binary, "trace", "--config", path, "--to", rcpt, "--follow")
	outBuf := &syncbuf.Buffer{}
	follow.Stdout, follow.Stderr = outBuf, outBuf
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follow.Process.Kill(); follow.Wait() })
	testenv.Eventually(t, "trace --follow started", 10*time.Second, func() bool { return strings.Contains(outBuf.String(), "following") })
	if r := send("mfp-2f", "trace-followed", ""); !strings.HasPrefix(r, "2.0.0") {
		t.Fatalf("followed: %q", r)
	}
	testenv.Eventually(t, "the new message in trace --follow", 10*time.Second, func() bool {
		s := outBuf.String()
		return strings.Contains(s, "received from 127.0.0.1") && strings.Contains(s, "delivered (attempt 1) as")
	})
	lines := 0
	sc := bufio.NewScanner(strings.NewReader(outBuf.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "received") {
			lines++
		}
	}
	if lines != 1 {
		t.Errorf("--follow printed %d received events, want only the new message's:\n%s", lines, outBuf.String())
	}
	p.stop(t)
}
