//go:build integration

package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// TestReloadUnderLoad reloads the running binary's config (SIGHUP and
// POST /-/reload, good configs and a bad one) while devices keep sending
// on long-lived connections: no session is dropped, no message is lost or
// sent twice, and the new config's device can send at once.
func TestReloadUnderLoad(t *testing.T) {
	swaks := testenv.LookTool(t, "swaks")
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	// Above Exchange's 30 a minute (a warning), so that the load is not
	// held back by the bridge's rate limit.
	original := strings.Replace(testenv.ReadFile(t, path), "  - name: contoso\n", "  - name: contoso\n    max_messages_per_minute: 100000\n", 1)
	writeFile(t, path, original)
	// v2: a new device, and mfp-2f restricted to its own domain (which
	// the load sends to, so it keeps going).
	v2 := strings.Replace(original, "\ndevices:\n", fmt.Sprintf(`
devices:
  - name: new-scanner
    username: new-scanner
    password_hash: %q
    tenant: contoso
    mailbox: scanner@contoso.example
`, hashOf(t, password)), 1)
	v2 = strings.Replace(v2, "    mailbox: scanner@contoso.example\n  - name: fab-mfp", "    mailbox: scanner@contoso.example\n    allowed_recipients: [contoso.example]\n  - name: fab-mfp", 1)
	if v2 == original {
		t.Fatal("could not make the second config")
	}
	bad := strings.Replace(v2, "    tenant: fabrikam\n", "    tenant: nosuchtenant\n", 1)

	env := []string{"SSL_CERT_FILE=" + u.caFile, "TEST_CLIENT_SECRET=" + clientSecret}
	p := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	base := "http://" + httpAddr
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bridge log:\n%s", p.logs.String())
		}
	})

	const senders = 4
	var (
		mu     sync.Mutex
		acked  []string
		errs   []string
		wg     sync.WaitGroup
		stop   = make(chan struct{})
		counts = make([]int, senders)
	)
	for g := 0; g < senders; g++ {
		wg.Go(func() {
			// One connection per device for the whole test: a reload
			// must not drop it.
			c, err := smtp.Dial(plain)
			if err == nil {
				err = c.Auth(sasl.NewPlainClient("", "mfp-2f", password))
			}
			fail := func(err error) {
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
			}
			if err != nil {
				fail(err)
				return
			}
			defer c.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					if err := c.Quit(); err != nil {
						fail(fmt.Errorf("QUIT: %w", err))
					}
					return
				default:
				}
				subject := fmt.Sprintf("reload-%d-%04d", g, i)
				text, err := sendOn(c, subject)
				if err == nil && !strings.Contains(text, "OK") {
					err = fmt.Errorf("reply %q", text)
				}
				if err != nil {
					fail(fmt.Errorf("%s: %w", subject, err))
					return
				}
				mu.Lock()
				acked = append(acked, subject)
				counts[g]++
				mu.Unlock()
			}
		})
	}

	sent := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	testenv.Eventually(t, "load", 20*time.Second, func() bool { return sent() >= 20 })

	writeFile(t, path, v2)
	p.cmd.Process.Signal(syscall.SIGHUP)
	testenv.Eventually(t, "the SIGHUP reload", 10*time.Second, func() bool { return strings.Count(p.logs.String(), "configuration reloaded") == 1 })
	before := sent()
	testenv.Eventually(t, "load after the reload", 20*time.Second, func() bool { return sent() >= before+20 })

	writeFile(t, path, bad)
	if code, body := postAdmin(t, base+"/-/reload", filepath.Join(u.dir, "spool")); code != 422 || !strings.Contains(body, "nosuchtenant") {
		t.Errorf("bad config: POST /-/reload = %d %s", code, body)
	}
	before = sent()
	testenv.Eventually(t, "load after the failed reload", 20*time.Second, func() bool { return sent() >= before+20 })

	writeFile(t, path, v2)
	for i := 0; i < 3; i++ {
		if code, body := postAdmin(t, base+"/-/reload", filepath.Join(u.dir, "spool")); code != 200 {
			t.Errorf("POST /-/reload = %d %s", code, body)
		}
	}
	out, err := runCmd(t, "", swaks, "--server", plain, "--auth", "LOGIN", "--auth-user", "new-scanner", "--auth-password", password,
		"--from", "x@printer.lan", "--to", "bob@contoso.example", "--h-Subject", "from the new device")
	if err != nil || !strings.Contains(out, "250 2.0.0 OK") {
		t.Errorf("the reloaded config's new device: %v\n%s", err, out)
	}
	// mfp-2f's new recipient policy holds on a new connection.
	out, _ = runCmd(t, "", swaks, "--server", plain, "--auth", "LOGIN", "--auth-user", "mfp-2f", "--auth-password", password,
		"--from", "x@printer.lan", "--to", "someone@partner.example")
	if !strings.Contains(out, "550 5.7.1") {
		t.Errorf("mfp-2f's new allowed_recipients not applied:\n%s", out)
	}
	before = sent()
	testenv.Eventually(t, "load after the last reload", 20*time.Second, func() bool { return sent() >= before+20 })
	close(stop)
	wg.Wait()

	for _, e := range errs {
		t.Errorf("sender: %s", e)
	}
	for g, n := range counts {
		if n == 0 {
			t.Errorf("sender %d sent nothing", g)
		}
	}
	testenv.Eventually(t, "every message at Exchange", 30*time.Second, func() bool { return len(delivered(u.exo)) >= len(acked)+1 })
	got := delivered(u.exo)
	for _, s := range acked {
		if got[s] != 1 {
			t.Errorf("%s arrived %d times, want once", s, got[s])
		}
	}
	if got["from the new device"] != 1 {
		t.Error("the new device's message did not arrive")
	}
	_, m := httpGet(t, base+"/metrics")
	if !strings.Contains(m, "smtpbridge_config_reload_success 1") || !strings.Contains(m, `smtpbridge_messages_received_total{device="new-scanner",tenant="contoso"} 1`) {
		t.Errorf("metrics after the reloads:\n%s", testenv.Grep(m, "reload_success\n"))
	}
	t.Logf("%d messages on %d connections through 5 reloads (one refused)", len(acked), senders)
	p.stop(t)
}
