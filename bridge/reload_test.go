package bridge_test

import (
	"crypto/tls"
	"net"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

// reload applies devices and limits to the running server, keeping its
// listeners.
func (e *env) reload(devices []config.Device, limits config.Limits, listeners []config.Listener) {
	e.t.Helper()
	dir, err := bridge.NewDirectory(devices)
	if err != nil {
		e.t.Fatal(err)
	}
	st := e.settings
	st.Directory = dir
	if limits != (config.Limits{}) {
		st.Limits = limits
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
	d.login("mfp")
	d.cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.cmd("RCPT TO:<bob@partner.example>", "250")
	d.data(simpleMessage, "250 2.0.0")

	restricted := device("mfp", "scanner@contoso.example")
	restricted.AllowedRecipients = []string{"contoso.example"}
	e.reload([]config.Device{restricted}, config.Limits{}, nil)

	// The same connection, no new login: the new policy applies.
	d.cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.cmd("RCPT TO:<bob@partner.example>", "550 5.7.1")
	d.cmd("RCPT TO:<bob@contoso.example>", "250")
	d.data(simpleMessage, "250 2.0.0")
	d.cmd("QUIT", "221")
	if n := len(e.exo.Messages()); n != 2 {
		t.Errorf("Exchange got %d messages, want 2", n)
	}
}

// A reload that removes a device or changes its password ends the logins
// made with the old one: the next MAIL FROM gets 530, and the device must
// connect and log in again, with the new password.
func TestReloadRevokesLogin(t *testing.T) {
	e := newEnv(t, envOptions{devices: []config.Device{device("mfp", "scanner@contoso.example"), device("erp", "erp@contoso.example")}})
	mfp := dial(t, e.addr("plain"))
	mfp.login("mfp")
	erp := dial(t, e.addr("plain"))
	erp.login("erp")

	newHash, err := passwd.NewBcrypt([]byte("a-new-password"), 4)
	if err != nil {
		t.Fatal(err)
	}
	changed := device("mfp", "scanner@contoso.example")
	changed.PasswordHash = newHash
	e.reload([]config.Device{changed}, config.Limits{}, nil) // erp removed

	mfp.cmd("MAIL FROM:<scan@printer.lan>", "530 5.7.0")
	mfp.cmd("MAIL FROM:<scan@printer.lan>", "530 5.7.0")
	mfp.cmd("QUIT", "221")
	mfp = dial(t, e.addr("plain"))
	mfp.cmd("EHLO device.lan", "250")
	mfp.cmd("AUTH PLAIN "+plainAuth("mfp", devicePassword), "535 5.7.8")
	mfp.cmd("AUTH PLAIN "+plainAuth("mfp", "a-new-password"), "235 2.0.0")
	mfp.cmd("MAIL FROM:<scan@printer.lan>", "250")
	mfp.cmd("RCPT TO:<bob@contoso.example>", "250")
	mfp.data(simpleMessage, "250 2.0.0")

	erp.cmd("MAIL FROM:<erp@contoso.example>", "530 5.7.0")
	erp = dial(t, e.addr("plain"))
	erp.cmd("EHLO device.lan", "250")
	erp.cmd("AUTH PLAIN "+plainAuth("erp", devicePassword), "535 5.7.8")
	if n := len(e.exo.Messages()); n != 1 {
		t.Errorf("Exchange got %d messages, want 1", n)
	}
}

// Limits change for connections made after the reload; a session that was
// open keeps the limits it started with until it ends.
func TestReloadLimitsForNewConnections(t *testing.T) {
	e := newEnv(t, envOptions{limits: config.Limits{MaxMessageBytes: 1 << 20, MaxRecipients: 3}})
	old := dial(t, e.addr("plain"))
	old.login("mfp")
	e.reload([]config.Device{device("mfp", "scanner@contoso.example")}, config.Limits{MaxMessageBytes: 2000, MaxRecipients: 1}, nil)

	fresh := dial(t, e.addr("plain"))
	if got := fresh.cmd("EHLO device.lan", "250"); got == "" {
		t.Fatal("no EHLO reply")
	}
	fresh.cmd("AUTH PLAIN "+plainAuth("mfp", devicePassword), "235")
	fresh.cmd("MAIL FROM:<scan@printer.lan> SIZE=5000", "552 5.3.4")
	fresh.cmd("MAIL FROM:<scan@printer.lan>", "250")
	fresh.cmd("RCPT TO:<a@contoso.example>", "250")
	fresh.cmd("RCPT TO:<b@contoso.example>", "452 4.5.3")

	// The open session: max_recipients is read per message, so the new
	// limit applies to it too; the size limit is its connection's.
	old.cmd("MAIL FROM:<scan@printer.lan> SIZE=5000", "250")
	old.cmd("RCPT TO:<a@contoso.example>", "250")
	old.cmd("RCPT TO:<b@contoso.example>", "452 4.5.3")
	old.data(simpleMessage+strings.Repeat("x", 3000)+"\r\n", "250 2.0.0")
}

// A reload can replace a listener's certificate: new connections get the
// new one, without a restart.
func TestReloadListenerCertificate(t *testing.T) {
	e := newEnv(t, envOptions{listeners: []config.Listener{{Name: "tls", Address: "127.0.0.1:0", TLS: config.TLSImplicit}}})
	first := peerCert(t, e.addr("tls"))

	leaf, err := e.ca.Issue("127.0.0.1", "renewed.example")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeTestFile(t, dir+"/new.crt", leaf.CertPEM)
	writeTestFile(t, dir+"/new.key", leaf.KeyPEM)
	ls := []config.Listener{{Name: "tls", Address: "127.0.0.1:0", TLS: config.TLSImplicit, CertFile: dir + "/new.crt", KeyFile: dir + "/new.key", MinTLSVersion: "1.2"}}
	e.reload([]config.Device{device("mfp", "scanner@contoso.example")}, config.Limits{}, ls)
	second := peerCert(t, e.addr("tls"))
	if first == second || !strings.Contains(second, "renewed.example") {
		t.Errorf("certificate after reload: %q (before: %q)", second, first)
	}

	// A certificate that does not load fails the reload and changes
	// nothing.
	bad := []config.Listener{{Name: "tls", Address: "127.0.0.1:0", TLS: config.TLSImplicit, CertFile: dir + "/missing.crt", KeyFile: dir + "/new.key", MinTLSVersion: "1.2"}}
	dirc, _ := bridge.NewDirectory(nil)
	st := e.settings
	st.Listeners, st.Directory = bad, dirc
	if err := e.srv.Reload(st); err == nil {
		t.Fatal("a reload with a missing certificate succeeded")
	}
	if got := peerCert(t, e.addr("tls")); got != second {
		t.Errorf("a failed reload changed the certificate to %q", got)
	}
	d := dialTLS(t, e.addr("tls"), &tls.Config{RootCAs: e.ca.Pool()})
	d.login("mfp") // the devices of the failed reload (none) were not applied
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
			d := &dialog{conn: c, text: textproto.NewConn(c)}
			for _, step := range []struct{ line, want string }{
				{"", "220"}, {"EHLO device.lan", "250"}, {"AUTH PLAIN " + plainAuth("mfp", devicePassword), "235"},
			} {
				if got := d.try(step.line, step.want); got != "" {
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
			if got := d.try("QUIT", "221"); got != "" {
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
			dir, err := bridge.NewDirectory([]config.Device{device("mfp", "scanner@contoso.example")})
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
	if n := len(e.exo.Messages()); n != senders*each {
		t.Errorf("Exchange got %d messages, want %d", n, senders*each)
	}
	if reloads < 3 {
		t.Errorf("only %d reloads happened during the load", reloads)
	}
	t.Logf("%d messages over %d sessions during %d reloads", senders*each, senders, reloads)
}

// sendOn sends one message on an authenticated dialog without failing the
// test from another goroutine; it returns what went wrong.
func sendOn(d *dialog) string {
	for _, step := range []struct{ line, want string }{
		{"MAIL FROM:<scan@printer.lan>", "250"},
		{"RCPT TO:<bob@contoso.example>", "250"},
		{"DATA", "354"},
	} {
		if got := d.try(step.line, step.want); got != "" {
			return got
		}
	}
	w := d.text.DotWriter()
	w.Write([]byte(simpleMessage))
	w.Close()
	line, err := d.text.ReadLine()
	if err != nil || !strings.HasPrefix(line, "250 2.0.0") {
		return "DATA: " + line
	}
	return ""
}

// try sends line (none if empty) and reads the reply; it returns "" if the
// reply starts with want, else what went wrong. Unlike cmd it may run on
// any goroutine.
func (d *dialog) try(line, want string) string {
	d.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if line != "" {
		if err := d.text.PrintfLine("%s", line); err != nil {
			return line + ": " + err.Error()
		}
	}
	for {
		got, err := d.text.ReadLine()
		if err != nil {
			return line + ": " + err.Error()
		}
		if len(got) >= 4 && got[3] == '-' {
			continue
		}
		if !strings.HasPrefix(got, want) {
			return line + ": got " + got + ", want " + want
		}
		return ""
	}
}

func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
