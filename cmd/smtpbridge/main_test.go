package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/pki"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
)

// These tests build the smtpbridge binary and drive it the way devices
// and admins do: with swaks, curl and Python's smtplib, against a fake
// Entra ID and a fake Exchange Online that it reaches over HTTPS and
// STARTTLS on loopback, trusting them only through SSL_CERT_FILE.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "smtpbridge-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "smtpbridge")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build smtpbridge: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	tenantID     = "0b5c1c5e-7d2f-4d1e-9a63-000000000001"
	certTenantID = "0b5c1c5e-7d2f-4d1e-9a63-000000000002"
	clientID     = "5f0c6a0e-3b7d-4c55-8f43-00000000000a"
	certClientID = "5f0c6a0e-3b7d-4c55-8f43-00000000000b"
	clientSecret = "Qx9~binary-test-client-secret"
	password     = "device-pass-word-canary"
)

// upstream is the fake Microsoft side, independent of the bridge process.
type upstream struct {
	entra  *fakeentra.Server
	exo    *fakeexchange.Server
	caFile string
	dir    string
	leaf   *pki.Leaf
	app    *fakeentra.App // the secret tenant's app, as registered
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("binary test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{dir: dir, caFile: filepath.Join(dir, "ca.pem"), leaf: leaf}
	writeFile(t, u.caFile, string(ca.CertPEM()))
	writeFile(t, filepath.Join(dir, "listener.crt"), string(leaf.CertPEM))
	writeFile(t, filepath.Join(dir, "listener.key"), string(leaf.KeyPEM))

	if u.entra, err = fakeentra.New(); err != nil {
		t.Fatal(err)
	}
	if err := u.entra.Start("127.0.0.1:0", leaf.TLS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.entra.Close() })
	u.entra.AddTenant(tenantID, "contoso.example")
	u.entra.AddTenant(certTenantID, "fabrikam.example")
	app := u.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	u.app = app
	appCert, err := pki.NewAppCert("fabrikam smtpbridge", time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "app.pem"), string(appCert.PEM))
	certApp := u.entra.AddApp(certTenantID, fakeentra.App{ClientID: certClientID, Certificates: []*x509.Certificate{appCert.Cert}})

	u.exo = fakeexchange.New(u.entra)
	u.exo.AddServicePrincipal(tenantID, clientID, app.ObjectID)
	u.exo.AddServicePrincipal(certTenantID, certClientID, certApp.ObjectID)
	u.exo.AddMailbox(fakeexchange.Mailbox{Address: "scanner@contoso.example", TenantID: tenantID, FullAccess: []string{app.ObjectID}})
	u.exo.AddMailbox(fakeexchange.Mailbox{Address: "mfp@fabrikam.example", TenantID: certTenantID, FullAccess: []string{certApp.ObjectID}})
	if err := u.exo.Start("127.0.0.1:0", leaf.TLS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.exo.Close() })
	return u
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// bridgeProc is a running smtpbridge process.
type bridgeProc struct {
	cmd    *exec.Cmd
	logs   *syncbuf.Buffer
	plain  string
	tls    string
	http   string
	exited chan error
}

func (u *upstream) config(t *testing.T, plain, tlsAddr, httpAddr string) string {
	t.Helper()
	hash, err := passwd.NewArgon2id([]byte(password))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`
hostname: bridge.test
listeners:
  - name: lan
    address: %q
    tls: none
    allow_insecure_auth: true
  - name: secure
    address: %q
    tls: starttls
    cert_file: listener.crt
    key_file: listener.key
tenants:
  - name: contoso
    tenant_id: %q
    client_id: %q
    client_secret: "${TEST_CLIENT_SECRET}"
    authority_host: %q
    smtp_host: %q
  - name: fabrikam
    tenant_id: %q
    client_id: %q
    certificate_file: app.pem
    authority_host: %q
    smtp_host: %q
devices:
  - name: mfp-2f
    username: mfp-2f
    password_hash: %q
    tenant: contoso
    mailbox: scanner@contoso.example
  - name: fab-mfp
    username: fab-mfp
    password_hash: %q
    tenant: fabrikam
    mailbox: mfp@fabrikam.example
spool:
  dir: spool
log:
  level: debug
http:
  address: %q
`, plain, tlsAddr, tenantID, clientID, u.entra.URL(), u.exo.Addr(),
		certTenantID, certClientID, u.entra.URL(), u.exo.Addr(), hash, hash, httpAddr)
	path := filepath.Join(u.dir, "smtpbridge.yaml")
	writeFile(t, path, cfg)
	return path
}

// startBridge runs `smtpbridge serve` and waits until it listens.
func startBridge(t *testing.T, env []string, addrs []string, args ...string) *bridgeProc {
	t.Helper()
	p := &bridgeProc{logs: &syncbuf.Buffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.logs
	p.cmd.Stdout = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	for _, a := range addrs {
		deadline := time.Now().Add(20 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case err := <-p.exited:
				t.Fatalf("smtpbridge exited: %v\n%s", err, p.logs.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("smtpbridge not listening on %s:\n%s", a, p.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return p
}

// stop sends SIGTERM and expects a clean exit.
func (p *bridgeProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Errorf("smtpbridge exited with %v after SIGTERM\n%s", err, p.logs.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatal("smtpbridge did not stop after SIGTERM")
	}
}

func runCmd(t *testing.T, stdin string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install it (see .ci/run) to run this test", name)
	}
	return p
}

func TestRealClients(t *testing.T) {
	u := startUpstream(t)
	plain, secure, httpAddr := freePort(t), freePort(t), freePort(t)
	cfg := u.config(t, plain, secure, httpAddr)
	p := startBridge(t, []string{"SSL_CERT_FILE=" + u.caFile, "TEST_CLIENT_SECRET=" + clientSecret},
		[]string{plain, secure}, "serve", "--config", cfg)

	swaks, curl, python := lookTool(t, "swaks"), lookTool(t, "curl"), lookTool(t, "python3")
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
		t.Errorf("metrics: %v\n%s", err, grep(metrics, "smtpbridge_token"))
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

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestSandboxQuickStart runs the shipped examples/sandbox.yaml (on free
// ports) the way the README's quick start does, named by
// SMTPBRIDGE_CONFIG, and sends the README's swaks command to it.
func TestSandboxQuickStart(t *testing.T) {
	swaks := lookTool(t, "swaks")
	data, err := os.ReadFile("../../examples/sandbox.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	smtpAddr, httpAddr := freePort(t), freePort(t)
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
	p.stop(t)
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, `
listeners:
  - name: lan
    address: "0.0.0.0:2525"
    tls: starttls
    min_tls_version: "1.4"
tenants:
  - name: contoso
    tenant_id: contoso.example
    client_id: abc
    client_secret: "${NOT_SET_ANYWHERE_42}"
devices:
  - name: mfp
    username: mfp
    password_hash: "hunter2"
    tenant: contosoo
    mailbox: "not an address"
    alowed_recipients: []
log:
  level: loud
`)
	out, err := runCmd(t, "", binary, "check-config", "--config", bad)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want status 2\n%s", err, out)
	}
	for _, want := range []string{
		"cert_file", "min_tls_version", "NOT_SET_ANYWHERE_42", "password_hash", "hash-password",
		`unknown tenant "contosoo"`, "mailbox", "alowed_recipients", "allowed_recipients", "log.level",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("check-config printed the password_hash value:\n%s", out)
	}
	good, err := runCmd(t, "", binary, "check-config", "--config", "../../examples/sandbox.yaml")
	if err != nil || !strings.Contains(good, "OK") {
		t.Errorf("sandbox example: %v\n%s", err, good)
	}
	if out, err := runCmd(t, "", binary, "check-config"); err == nil || !strings.Contains(out, "SMTPBRIDGE_CONFIG") {
		t.Errorf("no config: %v\n%s", err, out)
	}
}

func TestHashPassword(t *testing.T) {
	for _, algo := range []string{"argon2id", "bcrypt"} {
		out, err := runCmd(t, "s3cret pass\n", binary, "hash-password", "--algorithm", algo)
		if err != nil {
			t.Fatalf("%s: %v\n%s", algo, err, out)
		}
		h, err := passwd.Parse(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("%s: output %q: %v", algo, out, err)
		}
		if !h.Verify([]byte("s3cret pass")) || h.Verify([]byte("s3cret pass\n")) {
			t.Errorf("%s: hash does not verify the password without its newline", algo)
		}
	}
	if out, err := runCmd(t, "", binary, "hash-password"); err == nil || !strings.Contains(out, "empty password") {
		t.Errorf("empty stdin: %v %q", err, out)
	}
	out, err := runCmd(t, "", binary, "version")
	if err != nil || !strings.HasPrefix(out, "smtpbridge ") {
		t.Errorf("version: %v %q", err, out)
	}
}

// TestProductionExample keeps examples/smtpbridge.yaml valid: with its
// certificate in place and CONTOSO_SECRET set, check-config accepts it.
func TestProductionExample(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../../examples/smtpbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "smtpbridge.yaml"), string(data))
	ca, err := pki.NewCA("example CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("smtpbridge.contoso.local")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "tls"), 0o755)
	writeFile(t, filepath.Join(dir, "tls", "smtpbridge.crt"), string(leaf.CertPEM))
	writeFile(t, filepath.Join(dir, "tls", "smtpbridge.key"), string(leaf.KeyPEM))

	cmd := exec.Command(binary, "check-config", "--config", filepath.Join(dir, "smtpbridge.yaml"))
	cmd.Env = append(os.Environ(), "CONTOSO_SECRET=example-secret-value")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "OK (2 listener(s), 1 tenant(s), 3 device(s)") {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.Contains(string(out), "example-secret-value") {
		t.Errorf("check-config printed the secret:\n%s", out)
	}

	cmd = exec.Command(binary, "check-config", "--config", filepath.Join(dir, "smtpbridge.yaml"))
	cmd.Env = filterEnv(os.Environ(), "CONTOSO_SECRET")
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "CONTOSO_SECRET") {
		t.Errorf("a missing ${CONTOSO_SECRET} is not reported: %v\n%s", err, out)
	}
}

func filterEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
