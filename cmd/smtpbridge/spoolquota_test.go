package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
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

// The spool's quotas on the binary: a device whose queued mail fills its
// max_queued_bytes gets 452 4.3.1 while another device keeps delivering;
// with too little free disk space /readyz says so; and every message a
// device was told was taken is delivered once in the end.
func TestSpoolQuota(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	insertDevices(t, path, fmt.Sprintf(`  - name: hog
    username: hog
    password_hash: %q
    tenant: contoso
    mailbox: scanner@contoso.example
    max_queued_bytes: 100000
`, hashOf(t, password)))
	base, _ := os.ReadFile(path)
	limits := "limits:\n  max_message_bytes: 50000\ndelivery:\n  mode: hybrid\n  retry_initial: 1h\n  retry_max: 2h\n"
	writeFile(t, path, string(base)+limits)
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	// Exchange defers the hog's recipient: its messages stay queued.
	var later []fakeexchange.Reply
	for range 3 { // each first attempt of the 3 that fit
		later = append(later, fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 4, 1}, Text: "held for the test"})
	}
	u.exo.RefuseRecipient("held@contoso.example", later...)
	p := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)

	send := func(user, rcpt, subject string, size int) (string, error) {
		c, err := smtp.Dial(plain)
		if err != nil {
			return "", err
		}
		defer c.Close()
		if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
			return "", err
		}
		if err := c.Mail("scan@printer.lan", nil); err != nil {
			return "", err
		}
		if err := c.Rcpt(rcpt, nil); err != nil {
			return "", err
		}
		w, err := c.Data()
		if err != nil {
			return "", err
		}
		fmt.Fprintf(w, "Subject: %s\r\n\r\n%s\r\n", subject, strings.Repeat(strings.Repeat("x", 78)+"\r\n", size/80))
		resp, err := w.CloseWithResponse()
		if err != nil {
			return "", err
		}
		c.Quit()
		return resp.StatusText, nil
	}

	// The hog and mfp-2f send side by side.
	var (
		wg       sync.WaitGroup
		hogAcked []string
		hogOver  error
		mfpAcked []string
		mfpErr   error
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 10; i++ {
			subject := fmt.Sprintf("hog-%d", i)
			if _, err := send("hog", "held@contoso.example", subject, 30000); err != nil {
				hogOver = err
				return
			}
			hogAcked = append(hogAcked, subject)
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 5; i++ {
			subject := fmt.Sprintf("mfp-%d", i)
			if _, err := send("mfp-2f", "bob@contoso.example", subject, 30000); err != nil {
				mfpErr = err
				return
			}
			mfpAcked = append(mfpAcked, subject)
		}
	}()
	wg.Wait()
	var se *smtp.SMTPError
	if !errors.As(hogOver, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) {
		t.Fatalf("the hog after %d messages: %v; want 452 4.3.1", len(hogAcked), hogOver)
	}
	if len(hogAcked) != 3 { // 3 × ~30 kB of 100,000 bytes
		t.Errorf("the hog got %d messages in, want 3", len(hogAcked))
	}
	if mfpErr != nil || len(mfpAcked) != 5 {
		t.Fatalf("the other device meanwhile: %d sent, %v", len(mfpAcked), mfpErr)
	}
	if got := delivered(u.exo); got["mfp-4"] != 1 {
		t.Errorf("the other device's messages did not reach Exchange: %v", got)
	}
	_, m := httpGet(t, "http://"+httpAddr+"/metrics")
	for _, want := range []string{`smtpbridge_device_spool_bytes{device="hog"} 9`, `smtpbridge_spool_free_bytes `} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, testenv.Grep(m, "spool"))
		}
	}
	if code, body := httpGet(t, "http://"+httpAddr+"/readyz"); code != 200 {
		t.Errorf("/readyz with one device over its share: %d %q", code, body)
	}

	// A device over its share is the device's doing, not the bridge's.
	if strings.Contains(p.logs.String(), `"level":"error"`) {
		t.Errorf("errors logged:\n%s", testenv.Grep(p.logs.String(), `"level":"error"`))
	}

	// The disk "full": a free-space reserve beyond what the disk has.
	writeFile(t, path, strings.Replace(string(base), "spool:\n  dir: spool\n", "spool:\n  dir: spool\n  min_free_bytes: 1000000000000000000\n", 1)+limits)
	p.cmd.Process.Signal(syscall.SIGHUP)
	defer func() {
		if t.Failed() {
			t.Log(tail(p.logs.String(), 30))
		}
	}()
	testenv.Eventually(t, "/readyz 503", 10*time.Second, func() bool {
		code, body := httpGet(t, "http://"+httpAddr+"/readyz")
		return code == 503 && strings.Contains(body, "spool is full") && strings.Contains(body, "bytes free")
	})
	if _, err := send("mfp-2f", "bob@contoso.example", "disk-full", 1000); !errors.As(err, &se) || se.Code != 452 {
		t.Errorf("a message with the disk full: %v, want 452 4.3.1", err)
	}

	// Room again; the held messages go out.
	writeFile(t, path, string(base)+limits)
	p.cmd.Process.Signal(syscall.SIGHUP)
	testenv.Eventually(t, "/readyz 200", 10*time.Second, func() bool {
		code, _ := httpGet(t, "http://"+httpAddr+"/readyz")
		return code == 200
	})
	cli := exec.Command(binary, "queue", "retry", "--all", "--config", path)
	cli.Env = append(os.Environ(), env...)
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("queue retry --all: %v\n%s", err, out)
	}
	testenv.Eventually(t, "the held messages", 10*time.Second, func() bool {
		got := delivered(u.exo)
		for _, s := range hogAcked {
			if got[s] == 0 {
				return false
			}
		}
		return true
	})
	got := delivered(u.exo)
	for _, s := range append(hogAcked, mfpAcked...) {
		if got[s] != 1 {
			t.Errorf("%s delivered %d times, want once", s, got[s])
		}
	}
	if got["disk-full"] != 0 {
		t.Error("a message refused for a full disk was delivered")
	}
	p.stop(t)
}
