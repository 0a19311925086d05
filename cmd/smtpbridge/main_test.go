package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/pki"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// These tests build the smtpbridge binary and drive it the way devices
// and admins do: with swaks, curl and Python's smtplib, against a fake
// Entra ID and a fake Exchange Online that it reaches over HTTPS and
// STARTTLS on loopback, trusting them only through SSL_CERT_FILE.

var binary string

func TestMain(m *testing.M) {
	if addr := os.Getenv("SQUATTER_ADDR"); addr != "" {
		// TestAdminSquatter's other program, run as another user, who
		// could not build the binary.
		runSquatter(addr, os.Getenv("SQUATTER_LOG"))
		return
	}
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

// nobody is the user the tests give the spool to, or run another
// program as, when they run as root, to play another user.
const nobody = 65534

const (
	tenantID     = testenv.TenantID
	certTenantID = testenv.CertTenantID
	clientID     = testenv.ClientID
	certClientID = testenv.CertClientID
	clientSecret = testenv.ClientSecret
	password     = testenv.DevicePassword
)

// fakes is the fake Microsoft side, independent of the bridge process:
// the test World, with Contoso's mailbox scanner@contoso.example and
// Fabrikam's mfp@fabrikam.example, and Fabrikam's app certificate in
// dir/app.pem.
type fakes struct {
	*fakeworld.World
	entra  *fakeentra.Server
	exo    *fakeexchange.Server
	caFile string
	dir    string
	app    *fakeentra.App // the secret tenant's app, as registered
}

func startFakes(t *testing.T) *fakes {
	t.Helper()
	w, std := testenv.Start(t)
	u := &fakes{World: w, entra: w.Entra, exo: w.Exchange, caFile: w.CAFile, dir: w.Dir, app: std.Secret}
	writeFile(t, filepath.Join(u.dir, "app.pem"), string(std.AppCert.PEM))
	w.AddMailbox("scanner@contoso.example", tenantID, std.Secret)
	w.AddMailbox("mfp@fabrikam.example", certTenantID, std.Cert)
	return u
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
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

// configFrom renders a config from a text/template with named fields:
// the fakes' (TenantID, ClientID, CertTenantID, CertClientID, Authority,
// SMTPHost, GraphHost) and the test's own in vars. {{q .X}} writes X
// quoted for YAML; {{template "contoso" .}} the secret tenant's list item
// (its further keys may follow, indented as its own).
// contosoTenant is the tenant with a client secret, as the configs list
// it.
const contosoTenant = `{{define "contoso"}}  - name: contoso
    tenant_id: {{q .TenantID}}
    client_id: {{q .ClientID}}
    client_secret: "${TEST_CLIENT_SECRET}"
    authority_host: {{q .Authority}}
    smtp_host: {{q .SMTPHost}}
{{end}}`

func (u *fakes) configFrom(t *testing.T, text string, vars map[string]any) string {
	t.Helper()
	data := map[string]any{"TenantID": tenantID, "ClientID": clientID, "CertTenantID": certTenantID, "CertClientID": certClientID,
		"Authority": u.entra.URL(), "SMTPHost": u.exo.Addr(), "GraphHost": u.Graph.URL()}
	for k, v := range vars {
		data[k] = v
	}
	tmpl, err := template.New("config").Option("missingkey=error").
		Funcs(template.FuncMap{"q": func(v any) string { return strconv.Quote(fmt.Sprint(v)) }}).Parse(contosoTenant + text)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func (u *fakes) config(t *testing.T, plain, tlsAddr, httpAddr string) string {
	t.Helper()
	hash, err := passwd.NewArgon2id([]byte(password))
	if err != nil {
		t.Fatal(err)
	}
	cfg := u.configFrom(t, `
hostname: bridge.test
listeners:
  - name: lan
    address: {{q .Plain}}
    tls: none
    allow_insecure_auth: true
  - name: secure
    address: {{q .TLS}}
    tls: starttls
    cert_file: listener.crt
    key_file: listener.key
tenants:
{{template "contoso" .}}  - name: fabrikam
    tenant_id: {{q .CertTenantID}}
    client_id: {{q .CertClientID}}
    certificate_file: app.pem
    authority_host: {{q .Authority}}
    smtp_host: {{q .SMTPHost}}
devices:
  - name: mfp-2f
    username: mfp-2f
    password_hash: {{q .Hash}}
    tenant: contoso
    mailbox: scanner@contoso.example
  - name: fab-mfp
    username: fab-mfp
    password_hash: {{q .Hash}}
    tenant: fabrikam
    mailbox: mfp@fabrikam.example
spool:
  dir: spool
log:
  level: debug
http:
  address: {{q .HTTP}}
`, map[string]any{"Plain": plain, "TLS": tlsAddr, "Hash": hash, "HTTP": httpAddr})
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
				p.exited <- err // for the cleanup
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

// TestProductionExample keeps examples/smtpbridge.yaml valid: as shipped
// (and installed by the packages) check-config refuses it, naming each
// device whose password is still the placeholder and the command that
// makes one; with the devices' own passwords, its certificate in place
// and CONTOSO_SECRET set, it accepts it; the sandbox's password, whether
// the shipped hash or a hash made anew, is refused outside sandbox mode.
func TestProductionExample(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../../examples/smtpbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "smtpbridge.yaml")
	writeFile(t, path, string(data))
	exampleFiles(t, dir)
	check := func(env []string) (string, error) {
		cmd := exec.Command(binary, "check-config", "--config", path)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	withSecret := append(os.Environ(), "CONTOSO_SECRET=example-secret-value")

	out, err := check(withSecret)
	if err == nil || strings.Count(out, "still the example's placeholder: give device") != 2 || !strings.Contains(out, "smtpbridge hash-password") ||
		!strings.Contains(out, "devices[0].password_hash") || !strings.Contains(out, "devices[1].password_hash") {
		t.Fatalf("the example as shipped: %v\n%s", err, out)
	}
	const placeholder = `"REPLACE with the output of: smtpbridge hash-password"`
	mfpHash := strconv.Quote(hashOf(t, "mfp-2f's own password"))
	own := strings.Replace(string(data), placeholder, mfpHash, 1)
	own = strings.Replace(own, placeholder, strconv.Quote(hashOf(t, "the ERP's own password")), 1)
	writeFile(t, path, own)
	out, err = check(withSecret)
	if err != nil || !strings.Contains(out, "OK (2 listener(s), 1 tenant(s), 3 device(s)") {
		t.Fatalf("with the devices' own passwords: %v\n%s", err, out)
	}
	if strings.Contains(out, "example-secret-value") {
		t.Errorf("check-config printed the secret:\n%s", out)
	}
	out, err = check(filterEnv(os.Environ(), "CONTOSO_SECRET"))
	if err == nil || !strings.Contains(out, "CONTOSO_SECRET") {
		t.Errorf("a missing ${CONTOSO_SECRET} is not reported: %v\n%s", err, out)
	}
	// The packages keep the secret in secrets.env beside the config, for
	// systemd: check-config reads it too, as the README's steps say.
	writeFile(t, filepath.Join(dir, "secrets.env"), "# for systemd\nCONTOSO_SECRET=example-secret-value\n")
	out, err = check(filterEnv(os.Environ(), "CONTOSO_SECRET"))
	if err != nil || !strings.Contains(out, "OK (") || strings.Contains(out, "example-secret-value") {
		t.Errorf("check-config with the secret in secrets.env: %v\n%s", err, out)
	}
	os.Remove(filepath.Join(dir, "secrets.env"))

	// The sandbox's password: the hash the README's examples carry, and
	// one made anew with hash-password.
	sandboxYAML, err := os.ReadFile("../../examples/sandbox.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shipped := regexp.MustCompile(`\$argon2id\$[^"]+`).FindString(string(sandboxYAML))
	fresh, err := runCmd(t, "scan-to-mail", binary, "hash-password")
	if err != nil || !strings.Contains(fresh, "warning: this is the sandbox's password") {
		t.Fatalf("hash-password of the sandbox's password: %v\n%s", err, fresh)
	}
	fresh = regexp.MustCompile(`\$argon2id\$\S+`).FindString(fresh)
	for name, h := range map[string]string{"the shipped hash": shipped, "a fresh hash": fresh} {
		writeFile(t, path, strings.Replace(own, mfpHash, strconv.Quote(h), 1))
		out, err := check(withSecret)
		if err == nil || !strings.Contains(out, "devices[0].password_hash") || !strings.Contains(out, "the sandbox's") || !strings.Contains(out, "scan-to-mail") {
			t.Errorf("%s of the sandbox's password outside sandbox mode: %v\n%s", name, err, out)
		}
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

func hashOf(t *testing.T, pw string) string {
	t.Helper()
	h, err := passwd.NewBcrypt([]byte(pw), 4)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// A plain go build in a checkout names its commit: smtpbridge version
// prints the revision (and whether the tree had changes), so a bug
// report says which code it is about.
func TestVersionNamesTheRevision(t *testing.T) {
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse HEAD (the tests run in a git checkout): %v", err)
	}
	bin := filepath.Join(t.TempDir(), "smtpbridge")
	cmd := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := runCmd(t, "", bin, "version")
	if rev := strings.TrimSpace(string(head))[:12]; err != nil || !strings.Contains(out, rev) {
		t.Errorf("version of a build at %s: %v %q", rev, err, out)
	}
}

// No help text ends with an empty section, and the usage of a command
// that takes an ID names its alternatives.
func TestHelpTexts(t *testing.T) {
	for _, c := range [][]string{{"reload"}, {"blocks"}, {"device"}, {"device", "add"}, {"drain"}, {"trace"}, {"service"},
		{"queue"}, {"queue", "list"}, {"discover"}, {"doctor"}, {"check-config"}, {"send-test"}, {"exchange-script"}} {
		out, _ := runCmd(t, "", binary, append(c, "--help")...)
		if strings.HasSuffix(strings.TrimSpace(out), "Flags:") {
			t.Errorf("smtpbridge %s --help ends with an empty Flags: section:\n%s", strings.Join(c, " "), out)
		}
	}
	out, _ := runCmd(t, "", binary, "queue", "retry", "--spool", t.TempDir())
	if !strings.Contains(out, "--all") {
		t.Errorf("queue retry without an ID does not name --all: %s", out)
	}
}

// exampleFiles writes beside the shipped example what it names: the
// listener's certificate and key in tls/ and metrics.password; it
// returns the CA that signed the certificate.
func exampleFiles(t *testing.T, dir string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("example CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("smtpbridge.contoso.local")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "tls"), 0o755)
	writeFile(t, filepath.Join(dir, "tls", "smtpbridge.contoso.local.crt"), string(leaf.CertPEM))
	writeFile(t, filepath.Join(dir, "tls", "smtpbridge.contoso.local.key"), string(leaf.KeyPEM))
	writeFile(t, filepath.Join(dir, "metrics.password"), "3f1d0c5e9a7b2c4d6e8f0a1b2c3d4e5f\n")
	return ca
}

// withOwnPasswords is the shipped example with its two devices'
// placeholder hashes replaced by hashes of passwords of their own, as an
// admin does before the first start.
func withOwnPasswords(t *testing.T, example string) string {
	t.Helper()
	const placeholder = `"REPLACE with the output of: smtpbridge hash-password"`
	own := strings.Replace(example, placeholder, strconv.Quote(hashOf(t, "mfp-2f's own password")), 1)
	return strings.Replace(own, placeholder, strconv.Quote(hashOf(t, "the ERP's own password")), 1)
}
