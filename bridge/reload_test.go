package bridge_test

import (
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// reload applies devices and limits to the running server, keeping its
// listeners.
func (e *env) reload(devices []inventory.Device, limits bridge.Limits, listeners []bridge.Listener) {
	e.t.Helper()
	dir, err := bridge.NewDirectory(devices)
	if err != nil {
		e.t.Fatal(err)
	}
	st := e.settings
	st.Directory = dir
	if limits != (bridge.Limits{}) {
		st.Limits = withDefaults(limits)
	}
	if listeners != nil {
		st.Listeners = listeners
	}
	if err := e.srv.Reload(st); err != nil {
		e.t.Fatal(err)
	}
}

// A session open across a reload keeps working; from its next message on
// it follows the device's new policy.
func TestReloadPolicyAppliesToOpenSession(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := dial(t, e.addr("plain"))
	d.Login("mfp", devicePassword)
	d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.Cmd("RCPT TO:<bob@partner.example>", "250")
	d.Data(simpleMessage, "250 2.0.0")

	restricted := device("mfp", "scanner@contoso.example")
	restricted.AllowedRecipients = patterns("contoso.example")
	e.reload([]inventory.Device{restricted}, bridge.Limits{}, nil)

	// The same connection, no new login: the new policy applies.
	d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.Cmd("RCPT TO:<bob@partner.example>", "550 5.7.1")
	d.Cmd("RCPT TO:<bob@contoso.example>", "250")
	d.Data(simpleMessage, "250 2.0.0")
	d.Cmd("QUIT", "221")
	if n := len(e.world.Exchange.Messages()); n != 2 {
		t.Errorf("Exchange got %d messages, want 2", n)
	}
}

// A reload that removes a device or changes its password ends the logins
// made with the old one: the next MAIL FROM gets 530, and the device must
// connect and log in again, with the new password.
func TestReloadRevokesLogin(t *testing.T) {
	e := newEnv(t, envOptions{devices: []inventory.Device{device("mfp", "scanner@contoso.example"), device("erp", "erp@contoso.example")}})
	mfp := dial(t, e.addr("plain"))
	mfp.Login("mfp", devicePassword)
	erp := dial(t, e.addr("plain"))
	erp.Login("erp", devicePassword)

	enc, err := passwd.NewBcrypt([]byte("a-new-password"), 4)
	if err != nil {
		t.Fatal(err)
	}
	newHash, err := passwd.Parse(enc)
	if err != nil {
		t.Fatal(err)
	}
	changed := device("mfp", "scanner@contoso.example")
	changed.PasswordHash = newHash
	e.reload([]inventory.Device{changed}, bridge.Limits{}, nil) // erp removed

	mfp.Cmd("MAIL FROM:<scan@printer.lan>", "530 5.7.0")
	mfp.Cmd("MAIL FROM:<scan@printer.lan>", "530 5.7.0")
	mfp.Cmd("QUIT", "221")
	mfp = dial(t, e.addr("plain"))
	mfp.Cmd("EHLO device.lan", "250")
	mfp.Cmd("AUTH PLAIN "+plainAuth("mfp", devicePassword), "535 5.7.8")
	mfp.Cmd("AUTH PLAIN "+plainAuth("mfp", "a-new-password"), "235 2.0.0")
	mfp.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	mfp.Cmd("RCPT TO:<bob@contoso.example>", "250")
	mfp.Data(simpleMessage, "250 2.0.0")

	erp.Cmd("MAIL FROM:<erp@contoso.example>", "530 5.7.0")
	erp = dial(t, e.addr("plain"))
	erp.Cmd("EHLO device.lan", "250")
	erp.Cmd("AUTH PLAIN "+plainAuth("erp", devicePassword), "535 5.7.8")
	if n := len(e.world.Exchange.Messages()); n != 1 {
		t.Errorf("Exchange got %d messages, want 1", n)
	}
}

// Limits change for connections made after the reload; a session that was
// open keeps the limits it started with until it ends.
func TestReloadLimitsForNewConnections(t *testing.T) {
	e := newEnv(t, envOptions{limits: bridge.Limits{MaxMessageBytes: 1 << 20, MaxRecipients: 3}})
	old := dial(t, e.addr("plain"))
	old.Login("mfp", devicePassword)
	e.reload([]inventory.Device{device("mfp", "scanner@contoso.example")}, bridge.Limits{MaxMessageBytes: 2000, MaxRecipients: 1}, nil)

	fresh := dial(t, e.addr("plain"))
	if got := fresh.Cmd("EHLO device.lan", "250"); got == "" {
		t.Fatal("no EHLO reply")
	}
	fresh.Cmd("AUTH PLAIN "+plainAuth("mfp", devicePassword), "235")
	fresh.Cmd("MAIL FROM:<scan@printer.lan> SIZE=5000", "552 5.3.4")
	fresh.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	fresh.Cmd("RCPT TO:<a@contoso.example>", "250")
	fresh.Cmd("RCPT TO:<b@contoso.example>", "452 4.5.3")

	// The open session: max_recipients is read per message, so the new
	// limit applies to it too; the size limit is its connection's.
	old.Cmd("MAIL FROM:<scan@printer.lan> SIZE=5000", "250")
	old.Cmd("RCPT TO:<a@contoso.example>", "250")
	old.Cmd("RCPT TO:<b@contoso.example>", "452 4.5.3")
	old.Data(simpleMessage+strings.Repeat("x", 3000)+"\r\n", "250 2.0.0")
}

// A reload can replace a listener's certificate: new connections get the
// new one, without a restart.
func TestReloadListenerCertificate(t *testing.T) {
	e := newEnv(t, envOptions{listeners: []bridge.Listener{{Name: "tls", Address: "127.0.0.1:0", TLS: bridge.TLSImplicit}}})
	first := peerCert(t, e.addr("tls"))

	leaf, err := e.world.CA.Issue("127.0.0.1", "renewed.example")
	if err != nil {
		t.Fatal(err)
	}
	ls := []bridge.Listener{{Name: "tls", Address: "127.0.0.1:0", TLS: bridge.TLSImplicit, Certificate: &leaf.TLS, MinTLSVersion: tls.VersionTLS12}}
	e.reload([]inventory.Device{device("mfp", "scanner@contoso.example")}, bridge.Limits{}, ls)
	second := peerCert(t, e.addr("tls"))
	if first == second || !strings.Contains(second, "renewed.example") {
		t.Errorf("certificate after reload: %q (before: %q)", second, first)
	}

	// A TLS listener without a certificate fails the reload and changes
	// nothing.
	bad := []bridge.Listener{{Name: "tls", Address: "127.0.0.1:0", TLS: bridge.TLSImplicit, MinTLSVersion: tls.VersionTLS12}}
	dirc, _ := bridge.NewDirectory(nil)
	st := e.settings
	st.Listeners, st.Directory = bad, dirc
	if err := e.srv.Reload(st); err == nil {
		t.Fatal("a reload with a missing certificate succeeded")
	}
	if got := peerCert(t, e.addr("tls")); got != second {
		t.Errorf("a failed reload changed the certificate to %q", got)
	}
	d := dialTLS(t, e.addr("tls"), &tls.Config{RootCAs: e.world.CA.Pool()})
	d.Login("mfp", devicePassword) // the devices of the failed reload (none) were not applied
}

func peerCert(t *testing.T, addr string) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cert := c.ConnectionState().PeerCertificates[0]
	return strings.Join(cert.DNSNames, ",") + "/" + cert.SerialNumber.String()
}

// Sessions keep going while reloads happen one after another: no
// connection is dropped, every message gets its 250 and arrives once.
func TestReloadUnderLoad(t *testing.T) {
	e := newEnv(t, envOptions{})
	const senders, each = 6, 15
	var wg sync.WaitGroup
	errs := make(chan string, senders*each)
	addr := e.addr("plain")
	for i := 0; i < senders; i++ {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				errs <- err.Error()
				return
			}
			defer c.Close()
			d := testenv.Over(c)
			for _, step := range []struct{ line, want string }{
				{"", "220"}, {"EHLO device.lan", "250"}, {"AUTH PLAIN " + plainAuth("mfp", devicePassword), "235"},
			} {
				if got := d.Try(step.line, step.want); got != "" {
					errs <- got
					return
				}
			}
			for j := 0; j < each; j++ {
				if err := sendOn(d); err != "" {
					errs <- err
					return
				}
			}
			if got := d.Try("QUIT", "221"); got != "" {
				errs <- got
			}
		})
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	reloads := 0
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			dir, err := bridge.NewDirectory([]inventory.Device{device("mfp", "scanner@contoso.example")})
			if err == nil {
				st := e.settings
				st.Directory = dir
				err = e.srv.Reload(st)
			}
			if err != nil {
				errs <- "reload: " + err.Error()
				return
			}
			reloads++
		}
	}()
	wg.Wait()
	close(stop)
	<-stopped
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(e.world.Exchange.Messages()); n != senders*each {
		t.Errorf("Exchange got %d messages, want %d", n, senders*each)
	}
	if reloads < 3 {
		t.Errorf("only %d reloads happened during the load", reloads)
	}
	t.Logf("%d messages over %d sessions during %d reloads", senders*each, senders, reloads)
}

// sendOn sends one message on an authenticated dialog without failing the
// test from another goroutine; it returns what went wrong.
func sendOn(d *testenv.Dialog) string {
	for _, step := range []struct{ line, want string }{
		{"MAIL FROM:<scan@printer.lan>", "250"},
		{"RCPT TO:<bob@contoso.example>", "250"},
		{"DATA", "354"},
	} {
		if got := d.Try(step.line, step.want); got != "" {
			return got
		}
	}
	w := d.Text.DotWriter()
	w.Write([]byte(simpleMessage))
	w.Close()
	line, err := d.Text.ReadLine()
	if err != nil || !strings.HasPrefix(line, "250 2.0.0") {
		return "DATA: " + line
	}
	return ""
}
