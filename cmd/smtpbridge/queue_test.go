package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// appendConfig adds top-level YAML to a config file.
func appendConfig(t *testing.T, path, yaml string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(yaml); err != nil {
		t.Fatal(err)
	}
}

// sendOne submits a message to bob as device mfp-2f on a new connection;
// it returns the final reply text, or an error for a refusal or a broken
// connection.
func sendOne(addr, subject string) (string, error) {
	return sendTo(addr, subject, "bob@contoso.example")
}

// sendAs submits a message as a device on a new connection and returns
// the final reply text.
func sendAs(addr, user, from string, to []string, data string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
		return "", err
	}
	text, err := sendMessage(c, from, to, data)
	if err != nil {
		return "", err
	}
	c.Quit()
	return text, nil
}

// sendOn sends one message to bob on an authenticated connection and
// returns the final reply text.
func sendOn(c *smtp.Client, subject string) (string, error) {
	return sendMessage(c, "scan@printer.lan", []string{"bob@contoso.example"}, fmt.Sprintf("Subject: %s\r\n\r\nscan %s\r\n", subject, subject))
}

// sendMessage sends one message on an authenticated connection and
// returns the final reply text.
func sendMessage(c *smtp.Client, from string, to []string, data string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(data)); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func delivered(exo *fakeexchange.Server) map[string]int {
	got := map[string]int{}
	for _, m := range exo.Messages() {
		for _, line := range bytes.Split(m.Data, []byte("\r\n")) {
			if s, ok := bytes.CutPrefix(line, []byte("Subject: ")); ok {
				got[string(s)]++
				break
			}
		}
	}
	return got
}

// Crash safety: SIGKILL in the middle of a burst, with Exchange throttling
// so that messages sit in the queue. After a restart every message a
// device got a 250 for reaches Exchange.
func TestCrashSafety(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	appendConfig(t, path, "delivery:\n  mode: hybrid\n  retry_initial: 2s\n  retry_max: 4s\n")
	// Above Exchange's 30 a minute (a warning), so that the restart's
	// backlog is not held back by the rate limit for a minute.
	data, _ := os.ReadFile(path)
	writeFile(t, path, strings.Replace(string(data), "  - name: contoso\n", "  - name: contoso\n    max_messages_per_minute: 1000\n", 1))
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	// Exchange throttles the first submissions: their devices get
	// "queued", and the messages are on disk when the bridge dies.
	var throttle []fakeexchange.Reply
	for i := 0; i < 40; i++ {
		throttle = append(throttle, fakeexchange.Reply{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "STOREDRV.ClientSubmit; sender thread limit exceeded"})
	}
	u.exo.Script(fakeexchange.StageMail, throttle...)
	p := startBridge(t, env, []string{plain}, "serve", "--config", path)

	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				subject := fmt.Sprintf("crash-%d-%03d", g, i)
				if text, err := sendOne(plain, subject); err == nil && strings.Contains(text, "OK") {
					mu.Lock()
					acked = append(acked, subject)
					mu.Unlock()
				}
			}
		}()
	}
	// Kill once enough messages were acknowledged, while sessions are
	// still sending.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 40 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	p.exited <- nil
	close(stop)
	wg.Wait()

	queued, _ := filepath.Glob(filepath.Join(u.dir, "spool", "queue", "*.json"))
	mu.Lock()
	want := append([]string(nil), acked...)
	mu.Unlock()
	before := len(delivered(u.exo))
	t.Logf("killed with %d messages acknowledged, %d delivered, %d in the spool", len(want), before, len(queued))
	if len(queued) == 0 {
		t.Fatal("nothing was in the spool at the kill; the test did not exercise recovery")
	}

	p2 := startBridge(t, env, []string{plain}, "serve", "--config", path)
	end := time.Now().Add(60 * time.Second)
	for {
		got := delivered(u.exo)
		var missing []string
		for _, s := range want {
			if got[s] == 0 {
				missing = append(missing, s)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d acknowledged messages never reached Exchange after the restart, e.g. %v\n%s", len(missing), missing[:min(5, len(missing))], p2.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	dups := 0
	for _, n := range delivered(u.exo) {
		if n > 1 {
			dups++
		}
	}
	// At-least-once: a kill between Exchange's 250 and the spool's
	// removal may deliver a message twice; the normal path never does.
	t.Logf("all %d acknowledged messages delivered; %d delivered twice (killed between Exchange's 250 and the spool removal)", len(want), dups)
	if peak := u.exo.PeakConnections("scanner@contoso.example"); peak > 3 {
		t.Errorf("peak %d connections for the mailbox, Exchange allows 3", peak)
	}
	p2.stop(t)
}

// The queue command against a running bridge (admin API) and a stopped
// one (the spool directory).
func TestQueueCommand(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	// remember_refusals 1ms: the second message to the recipient Exchange
	// refused goes to Exchange too (TestRefusalsRemembered has the rest).
	appendConfig(t, path, "delivery:\n  mode: queue\n  retry_initial: 1h\n  retry_max: 2h\n  remember_refusals: 1ms\n")
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	// The first message is refused for good (a dead letter); the second
	// is throttled (deferred, next attempt in an hour).
	u.exo.Script(fakeexchange.StageRcpt, fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound"})
	u.exo.Script(fakeexchange.StageMail, fakeexchange.Reply{}, fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error"})
	p := startBridge(t, env, []string{plain}, "serve", "--config", path)
	for _, s := range []string{"cli-dead", "cli-deferred"} {
		if text, err := sendOne(plain, s); err != nil || !strings.Contains(text, "queued") {
			t.Fatalf("%s: %q %v", s, text, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	cli := func(wantErr bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(binary, append(args, "--config", path)...)
		cmd.Env = append(os.Environ(), env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if (err != nil) != wantErr {
			t.Fatalf("smtpbridge %v: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		if wantErr {
			return stdout.String() + stderr.String()
		}
		return stdout.String()
	}
	var items []struct {
		ID         string `json:"id"`
		State      string `json:"state"`
		LastReply  string `json:"last_reply"`
		DeadReason string `json:"dead_reason"`
		Device     string `json:"device"`
	}
	waitFor := func(what string, args ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			out := cli(false, args...)
			items = nil
			if err := json.Unmarshal([]byte(out), &items); err != nil {
				t.Fatalf("queue %v --json: %v\n%s", args, err, out)
			}
			if len(items) == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: %s\n%s", what, out, p.logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("one deferred message", "queue", "list", "--json")
	deferred := items[0]
	if deferred.State != "deferred" || !strings.Contains(deferred.LastReply, "451") || deferred.Device != "mfp-2f" {
		t.Errorf("queued item %+v", deferred)
	}
	waitFor("one dead letter", "queue", "dead", "--json")
	dead := items[0]
	if !strings.Contains(dead.DeadReason, "5.1.10") {
		t.Errorf("dead letter %+v", dead)
	}
	if out := cli(false, "queue", "list"); !strings.Contains(out, deferred.ID) || !strings.Contains(out, "1 deferred") || !strings.Contains(out, "bridge at "+filepath.Join(u.dir, "spool", "admin.sock")) {
		t.Errorf("queue list:\n%s", out)
	}
	// Filters through the running bridge's admin API.
	waitFor("the device's deferred message", "queue", "list", "--device", "mfp-2f", "--state", "deferred", "--limit", "5", "--json")
	if out := cli(false, "queue", "list", "--device", "nobody", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("queue list --device nobody:\n%s", out)
	}
	if out := cli(false, "queue", "dead", "--mailbox", "SCANNER@contoso.example", "--older-than", "1h"); !strings.Contains(out, "no messages") {
		t.Errorf("queue dead --older-than 1h lists a message received just now:\n%s", out)
	}
	if out := cli(true, "queue", "list", "--state", "stuck"); !strings.Contains(out, `unknown state "stuck"`) {
		t.Errorf("queue list --state stuck:\n%s", out)
	}
	if out := cli(false, "queue", "show", dead.ID); !strings.Contains(out, "Dead because:") || !strings.Contains(out, "RESOLVER.ADR.RecipientNotFound") {
		t.Errorf("queue show:\n%s", out)
	}
	if out := cli(true, "queue", "show", "nosuchid"); !strings.Contains(out, "not in the spool") {
		t.Errorf("queue show of an unknown ID:\n%s", out)
	}
	// retry makes the deferred message due now; Exchange takes it.
	cli(false, "queue", "retry", deferred.ID)
	deadline := time.Now().Add(10 * time.Second)
	for delivered(u.exo)["cli-deferred"] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("retried message not delivered\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.stop(t)

	// Stopped bridge: the same commands work on the spool directly.
	if out := cli(false, "queue", "dead"); !strings.Contains(out, dead.ID) || !strings.Contains(out, "stopped bridge") {
		t.Errorf("queue dead on a stopped bridge:\n%s", out)
	}
	cli(false, "queue", "requeue", dead.ID)
	if out := cli(false, "queue", "list", "--json"); !strings.Contains(out, dead.ID) {
		t.Errorf("requeued message not listed:\n%s", out)
	}
	if out := cli(false, "queue", "drop", "--device", "mfp-2f", "--state", "deferred"); !strings.Contains(out, "dropped 1 message(s)") {
		t.Errorf("queue drop --device mfp-2f --state deferred:\n%s\n%s", out, cli(false, "queue", "list", "--json"))
	}
	if out := cli(false, "queue", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("queue not empty after drop:\n%s", out)
	}
	if out, err := runCmd(t, "", binary, "queue", "drop"); err == nil || !strings.Contains(out, "give one message ID") {
		t.Errorf("queue drop without an ID: %v\n%s", err, out)
	}
}

// smtpbridge drain: /readyz says not ready at once; what Exchange still
// defers is listed when the timeout passes (exit 1), and once Exchange
// takes mail again, a second drain makes it due now and ends with the
// queue empty (exit 0).
func TestDrain(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	appendConfig(t, path, "delivery:\n  mode: queue\n  retry_initial: 1h\n  retry_max: 2h\n")
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	busy := fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error"}
	// Each message's first attempt and the first drain's retry.
	u.exo.Script(fakeexchange.StageMail, busy, busy, busy, busy)
	p := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	for _, s := range []string{"drain-1", "drain-2"} {
		if text, err := sendOne(plain, s); err != nil || !strings.Contains(text, "queued") {
			t.Fatalf("%s: %q %v", s, text, err)
		}
	}
	testenv.Eventually(t, "both attempts deferred", 10*time.Second, func() bool {
		return strings.Count(p.logs.String(), `"event":"deferred"`) >= 2
	})
	if r := get(t, "http://"+httpAddr+"/readyz"); !strings.HasPrefix(r, "ready") {
		t.Fatalf("/readyz before the drain: %q", r)
	}
	out, err := runCmd(t, "", binary, "drain", "--config", path, "--timeout", "1s")
	if err == nil || !strings.Contains(out, "2 queued message(s) due now") || !strings.Contains(out, "2 message(s) left") || !strings.Contains(out, "2 message(s) still queued after 1s") || !strings.Contains(out, "451") {
		t.Errorf("drain while Exchange defers: %v\n%s", err, out)
	}
	if r := get(t, "http://"+httpAddr+"/readyz"); !strings.Contains(r, "not ready: draining") {
		t.Errorf("/readyz while draining: %q", r)
	}
	// Exchange takes mail again (the scripted replies are used up).
	out, err = runCmd(t, "", binary, "drain", "--config", path, "--timeout", "20s")
	if err != nil || !strings.Contains(out, "2 queued message(s) due now") || !strings.Contains(out, "drained: the queue is empty") {
		t.Errorf("drain: %v\n%s", err, out)
	}
	if d := delivered(u.exo); d["drain-1"] != 1 || d["drain-2"] != 1 {
		t.Errorf("delivered after the drain: %v", d)
	}
	p.stop(t)
}
