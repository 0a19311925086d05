//go:build integration

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// Tests with real clients: swaks, curl and Python's smtplib drive the
// binary as devices do. .ci/run installs them.

func TestRealClients(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	cfg := u.config(t, plain, secure, httpAddr)
	p := startBridge(t, []string{"SSL_CERT_FILE=" + u.caFile, "TEST_CLIENT_SECRET=" + clientSecret},
		[]string{plain, secure}, "serve", "--config", cfg)

	swaks, curl, python := testenv.LookTool(t, "swaks"), testenv.LookTool(t, "curl"), testenv.LookTool(t, "python3")
	msgFile := filepath.Join(u.dir, "msg.eml")
	writeFile(t, msgFile, "From: Scanner <scan@printer.lan>\r\nTo: bob@contoso.example\r\nSubject: curl scan\r\n\r\nscanned page\r\n")

	sent := 0
	clients := []struct {
		name string
		cmd  []string
		want string
	}{
		{"swaks AUTH LOGIN", []string{swaks, "--server", plain, "--auth", "LOGIN", "--auth-user", "mfp-2f", "--auth-password", password,
			"--from", "scan@printer.lan", "--to", "bob@contoso.example", "--h-Subject", "swaks login"}, "250 2.0.0 OK"},
		{"swaks AUTH PLAIN over STARTTLS", []string{swaks, "--server", secure, "-tls", "--auth", "PLAIN", "--auth-user", "mfp-2f", "--auth-password", password,
			"--from", "scan@printer.lan", "--to", "bob@contoso.example"}, "250 2.0.0 OK"},
		{"swaks on the certificate tenant", []string{swaks, "--server", plain, "--auth", "LOGIN", "--auth-user", "fab-mfp", "--auth-password", password,
			"--from", "x@printer.lan", "--to", "ann@fabrikam.example"}, "250 2.0.0 OK"},
		{"curl smtp:// with STARTTLS", []string{curl, "-sS", "-v", "--ssl-reqd", "--cacert", u.caFile, "smtp://" + secure,
			"--mail-from", "scan@printer.lan", "--mail-rcpt", "bob@contoso.example", "--user", "mfp-2f:" + password, "--upload-file", msgFile}, "250 2.0.0 OK"},
		{"curl smtp:// plaintext AUTH LOGIN", []string{curl, "-sS", "-v", "smtp://" + plain, "--login-options", "AUTH=LOGIN",
			"--mail-from", "scan@printer.lan", "--mail-rcpt", "bob@contoso.example", "--user", "mfp-2f:" + password, "--upload-file", msgFile}, "250 2.0.0 OK"},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			out, err := runCmd(t, "", c.cmd[0], c.cmd[1:]...)
			if err != nil || !strings.Contains(out, c.want) {
				t.Fatalf("%v\n%s", err, out)
			}
			sent++
		})
	}
	t.Run("python smtplib", func(t *testing.T) {
		script := `
import smtplib, ssl, sys
from email.message import EmailMessage
plain, secure, ca, pw = sys.argv[1:5]
def msg(subject):
    m = EmailMessage()
    m["From"] = "ERP <erp@app.lan>"
    m["To"] = "bob@contoso.example"
    m["Subject"] = subject
    m.set_content("invoice attached\n")
    return m
h, p = secure.rsplit(":", 1)
with smtplib.SMTP(h, int(p), timeout=30) as s:
    s.starttls(context=ssl.create_default_context(cafile=ca))
    s.login("mfp-2f", pw)
    s.send_message(msg("smtplib starttls plain"))
h, p = plain.rsplit(":", 1)
with smtplib.SMTP(h, int(p), timeout=30) as s:
    s.ehlo()
    s.user, s.password = "mfp-2f", pw
    s.auth("LOGIN", s.auth_login)
    s.send_message(msg("smtplib login"))
try:
    with smtplib.SMTP(h, int(p), timeout=30) as s:
        s.login("mfp-2f", "wrong")
except smtplib.SMTPAuthenticationError as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
print("ok")
`
		out, err := runCmd(t, "", python, "-c", script, plain, secure, u.caFile, password)
		if err != nil || !strings.Contains(out, "refused 535 5.7.8") || !strings.HasSuffix(strings.TrimSpace(out), "ok") {
			t.Fatalf("%v\n%s", err, out)
		}
		sent += 2
	})

	msgs := u.exo.Messages()
	if len(msgs) != sent {
		t.Errorf("exchange got %d messages, want %d", len(msgs), sent)
	}
	for _, m := range msgs {
		if m.AuthUser != m.From || m.HeaderFrom != m.From {
			t.Errorf("message sent as %q with envelope %q and From %q", m.AuthUser, m.From, m.HeaderFrom)
		}
	}
	if g := u.entra.Grants(clientID); g != 1 {
		t.Errorf("secret tenant: %d token grants for %d messages, want 1", g, sent-1)
	}
	if g := u.entra.Grants(certClientID); g != 1 {
		t.Errorf("certificate tenant: %d token grants, want 1", g)
	}
	if u.exo.InlineAuths() != 0 {
		t.Error("the token was sent on the AUTH line")
	}
	if _, err := os.Stat(filepath.Join(u.dir, "spool")); err != nil {
		t.Errorf("spool.dir not created: %v", err)
	}

	metrics, err := runCmd(t, "", curl, "-sS", "http://"+httpAddr+"/metrics")
	if err != nil || !strings.Contains(metrics, `smtpbridge_token_requests_total{result="success",source="identity_provider",tenant="contoso"} 1`) {
		t.Errorf("metrics: %v\n%s", err, testenv.Grep(metrics, "smtpbridge_token"))
	}

	p.stop(t)
	logs := p.logs.String()
	for _, canary := range []string{clientSecret, password, "Bearer", "eyJ0eXAi", "scanned page", "invoice attached"} {
		if strings.Contains(logs, canary) {
			t.Errorf("log contains %q", canary)
		}
	}
	for _, want := range []string{`"event":"delivered"`, `"event":"auth_failed"`, `"message":"stopped"`,
		`"smtp_host is not a known Exchange Online endpoint`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("bridge log:\n%s", logs)
	}
}

// TestSandboxQuickStart runs the shipped examples/sandbox.yaml (on free
// ports) the way the README's quick start does, named by
// SMTPBRIDGE_CONFIG, and sends the README's swaks command to it.
func TestSandboxQuickStart(t *testing.T) {
	swaks := testenv.LookTool(t, "swaks")
	data, err := os.ReadFile("../../examples/sandbox.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	smtpAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	cfg := strings.Replace(string(data), `"127.0.0.1:2525"`, `"`+smtpAddr+`"`, 1)
	if cfg == string(data) {
		t.Fatal("examples/sandbox.yaml no longer listens on 127.0.0.1:2525; update the README and this test")
	}
	cfg += fmt.Sprintf("\nhttp:\n  address: %q\n", httpAddr)
	path := filepath.Join(dir, "conf", "sandbox.yaml")
	os.MkdirAll(filepath.Dir(path), 0o755)
	writeFile(t, path, cfg)

	p := startBridge(t, []string{"SMTPBRIDGE_CONFIG=" + path}, []string{smtpAddr}, "serve")
	out, err := runCmd(t, "", swaks, "--server", smtpAddr, "--auth", "LOGIN", "--auth-user", "mfp-sandbox", "--auth-password", "scan-to-mail",
		"--from", "printer@lan.example", "--to", "someone@example.com", "--body", "sandbox body text")
	if err != nil || !strings.Contains(out, "250 2.0.0 OK") {
		t.Fatalf("swaks: %v\n%s\nbridge log:\n%s", err, out, p.logs.String())
	}
	// sandbox.dir is ../sandbox-mail relative to the config file.
	emls, _ := filepath.Glob(filepath.Join(dir, "sandbox-mail", "*.eml"))
	if len(emls) != 1 {
		t.Fatalf("%d .eml files in %s, want 1\n%s", len(emls), dir, p.logs.String())
	}
	eml, _ := os.ReadFile(emls[0])
	for _, want := range []string{"X-Sandbox-Rcpt-To: someone@example.com", "From: <scanner@sandbox.example>",
		"Reply-To: <printer@lan.example>", "sandbox body text"} {
		if !strings.Contains(string(eml), want) {
			t.Errorf(".eml lacks %q:\n%s", want, eml)
		}
	}
	if !strings.Contains(p.logs.String(), "SANDBOX MODE") {
		t.Errorf("no sandbox warning in the log:\n%s", p.logs.String())
	}

	// The sandbox's Graph device goes through the fake Microsoft Graph.
	out, err = runCmd(t, "", swaks, "--server", smtpAddr, "--auth", "LOGIN", "--auth-user", "erp-sandbox", "--auth-password", "scan-to-mail",
		"--from", "erp@lan.example", "--to", "someone@example.com", "--body", "graph body text")
	if err != nil || !strings.Contains(out, "250 2.0.0 OK") {
		t.Fatalf("swaks through Graph: %v\n%s\nbridge log:\n%s", err, out, p.logs.String())
	}
	emls, _ = filepath.Glob(filepath.Join(dir, "sandbox-mail", "*-graph-*.eml"))
	if len(emls) != 1 {
		t.Fatalf("%d Graph .eml files, want 1\n%s", len(emls), p.logs.String())
	}
	if eml, _ := os.ReadFile(emls[0]); !strings.Contains(string(eml), "graph body text") || !strings.Contains(string(eml), "To: <someone@example.com>") {
		t.Errorf("the Graph .eml:\n%s", eml)
	}
	p.stop(t)
}
