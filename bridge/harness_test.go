package bridge_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/pki"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// Test identities. The secrets double as canaries: no log line may carry
// them.
const (
	secretTenantID = "11111111-aaaa-4000-8000-000000000001"
	certTenantID   = "22222222-bbbb-4000-8000-000000000002"
	secretClientID = "aaaaaaaa-0000-4000-8000-00000000000a"
	certClientID   = "bbbbbbbb-0000-4000-8000-00000000000b"
	clientSecret   = "Zq8~client-secret-canary-7f3a"
	devicePassword = "pr1nter-password-canary"
)

// env is a bridge in front of a fake Entra ID and a fake Exchange Online,
// all on loopback with real TLS.
type env struct {
	t       *testing.T
	ca      *pki.CA
	entra   *fakeentra.Server
	exo     *fakeexchange.Server
	srv     *bridge.Server
	store   *tokenstore.Store
	logs    *syncbuf.Buffer
	secret  *fakeentra.App
	cert    *fakeentra.App
	leafPEM [2]string // listener cert and key files
	// settings are the server's as started, for reload tests.
	settings bridge.Settings
}

type envOptions struct {
	devices   []config.Device
	listeners []config.Listener
	limits    config.Limits
	// exoSetup runs before the fake Exchange starts.
	exoSetup func(*fakeexchange.Server)
	// smtpHost overrides the route for the secret tenant.
	smtpHost string
	// untrusted makes the bridge verify Exchange against the system roots,
	// which do not know the test CA.
	untrusted bool
}

var testHash = sync.OnceValue(func() string {
	// Low bcrypt cost keeps the suite fast; the directory's timing logic
	// does not depend on the cost.
	h, err := passwd.NewBcrypt([]byte(devicePassword), 4)
	if err != nil {
		panic(err)
	}
	return h
})

// device returns a device on the secret tenant sending as mailbox.
func device(name, mailbox string) config.Device {
	return config.Device{Name: name, Username: name, PasswordHash: testHash(), Tenant: "secret",
		Mailbox: mailbox, FromPolicy: config.FromRewrite}
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, logs: &syncbuf.Buffer{}}
	var err error
	if e.ca, err = pki.NewCA("bridge test CA"); err != nil {
		t.Fatal(err)
	}
	leaf, err := e.ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e.leafPEM = [2]string{filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")}
	os.WriteFile(e.leafPEM[0], leaf.CertPEM, 0o600)
	os.WriteFile(e.leafPEM[1], leaf.KeyPEM, 0o600)

	if e.entra, err = fakeentra.New(); err != nil {
		t.Fatal(err)
	}
	if err := e.entra.Start("127.0.0.1:0", leaf.TLS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.entra.Close() })
	e.entra.AddTenant(secretTenantID, "contoso.example")
	e.entra.AddTenant(certTenantID, "fabrikam.example")
	e.secret = e.entra.AddApp(secretTenantID, fakeentra.App{ClientID: secretClientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	appCert, err := pki.NewAppCert("smtpbridge fabrikam", time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	e.cert = e.entra.AddApp(certTenantID, fakeentra.App{ClientID: certClientID, Certificates: []*x509.Certificate{appCert.Cert}})

	e.exo = fakeexchange.New(e.entra)
	e.exo.AddServicePrincipal(secretTenantID, secretClientID, e.secret.ObjectID)
	e.exo.AddServicePrincipal(certTenantID, certClientID, e.cert.ObjectID)
	for _, mb := range []string{"scanner@contoso.example", "erp@contoso.example", "alarm@contoso.example"} {
		e.exo.AddMailbox(fakeexchange.Mailbox{Address: mb, TenantID: secretTenantID, FullAccess: []string{e.secret.ObjectID},
			SendAs: []string{"billing@contoso.example"}})
	}
	e.exo.AddMailbox(fakeexchange.Mailbox{Address: "mfp@fabrikam.example", TenantID: certTenantID, FullAccess: []string{e.cert.ObjectID}})
	if o.exoSetup != nil {
		o.exoSetup(e.exo)
	}
	if err := e.exo.Start("127.0.0.1:0", leaf.TLS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.exo.Close() })

	certs, key, err := config.ParseCertificateCredential(appCert.PEM, "")
	if err != nil {
		t.Fatal(err)
	}
	e.store, err = tokenstore.New([]tokenstore.Tenant{
		{Name: "secret", TenantID: secretTenantID, ClientID: secretClientID, Credential: config.NewSecretCredential(clientSecret),
			AuthorityHost: e.entra.URL(), Scope: config.DefaultTokenScope, RootCAs: e.ca.Pool()},
		{Name: "cert", TenantID: certTenantID, ClientID: certClientID, Credential: config.NewCertCredential(certs, key),
			AuthorityHost: e.entra.URL(), Scope: config.DefaultTokenScope, RootCAs: e.ca.Pool()},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	smtpHost := e.exo.Addr()
	if o.smtpHost != "" {
		smtpHost = o.smtpHost
	}
	routes := map[string]bridge.Route{
		"secret": {SMTPHost: smtpHost, RootCAs: e.ca.Pool()},
		"cert":   {SMTPHost: e.exo.Addr(), RootCAs: e.ca.Pool()},
	}
	if o.untrusted {
		r := routes["secret"]
		r.RootCAs = nil // system roots, which do not know the test CA
		routes["secret"] = r
	}

	devices := o.devices
	if devices == nil {
		devices = []config.Device{device("mfp", "scanner@contoso.example")}
	}
	dirc, err := bridge.NewDirectory(devices)
	if err != nil {
		t.Fatal(err)
	}
	listeners := o.listeners
	if listeners == nil {
		listeners = []config.Listener{{Name: "plain", Address: "127.0.0.1:0", TLS: config.TLSNone, AllowInsecureAuth: true, MinTLSVersion: "1.2"}}
	}
	for i := range listeners {
		if listeners[i].TLS != config.TLSNone {
			listeners[i].CertFile, listeners[i].KeyFile = e.leafPEM[0], e.leafPEM[1]
		}
		if listeners[i].MinTLSVersion == "" {
			listeners[i].MinTLSVersion = "1.2"
		}
	}
	limits := o.limits
	if limits.MaxMessageBytes == 0 {
		limits.MaxMessageBytes = config.DefaultMaxMessageBytes
	}
	if limits.MaxRecipients == 0 {
		limits.MaxRecipients = config.DefaultMaxRecipients
	}
	log := zerolog.New(e.logs).Level(zerolog.DebugLevel)
	e.settings = bridge.Settings{Listeners: listeners, Limits: limits, Directory: dirc, Mode: config.ModeSync}
	e.srv, err = bridge.NewServer(bridge.Options{
		Hostname: "bridge.test", Listeners: listeners, Limits: limits, Directory: dirc, Mode: config.ModeSync,
		Deliverer: &bridge.Upstream{Tokens: e.store, Routes: routes, Hostname: "bridge.test"},
		Events:    audit.NewLogger(log), Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	e.srv.Serve()
	t.Cleanup(func() {
		e.srv.Shutdown(t.Context())
		e.checkLogs()
	})
	return e
}

// checkLogs fails the test if any log line carries a secret.
func (e *env) checkLogs() {
	logs := e.logs.String()
	for _, canary := range []string{clientSecret, devicePassword, base64.StdEncoding.EncodeToString([]byte(devicePassword)),
		"Bearer", "eyJ0eXAi", "auth=", "This is the body"} {
		if strings.Contains(logs, canary) {
			e.t.Errorf("log output contains %q:\n%s", canary, logs)
		}
	}
}

func (e *env) addr(listener string) string {
	a := e.srv.Addr(listener)
	if a == nil {
		e.t.Fatalf("no listener %q", listener)
	}
	return a.String()
}

// dialog is a scripted SMTP conversation for exact device behaviour.
type dialog struct {
	t    *testing.T
	conn net.Conn
	text *textproto.Conn
}

func dial(t *testing.T, addr string) *dialog {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	return newDialog(t, c, err)
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) *dialog {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	return newDialog(t, c, err)
}

// newDialog starts a dialog on a fresh connection and reads the greeting.
func newDialog(t *testing.T, c net.Conn, dialErr error) *dialog {
	t.Helper()
	if dialErr != nil {
		t.Fatal(dialErr)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	d := &dialog{t: t, conn: c, text: textproto.NewConn(c)}
	t.Cleanup(func() { c.Close() })
	d.expect("220")
	return d
}

// cmd sends a line and checks that the reply starts with want (e.g.
// "250" or "535 5.7.8"). It returns the reply's last line.
func (d *dialog) cmd(line, want string) string {
	d.t.Helper()
	if err := d.text.PrintfLine("%s", line); err != nil {
		d.t.Fatalf("send %q: %v", line, err)
	}
	return d.expect(want)
}

func (d *dialog) expect(want string) string {
	d.t.Helper()
	var last string
	for {
		line, err := d.text.ReadLine()
		if err != nil {
			d.t.Fatalf("waiting for %q: %v", want, err)
		}
		last = line
		if len(line) < 4 || line[3] != '-' {
			break
		}
	}
	if !strings.HasPrefix(last, want) {
		d.t.Fatalf("got %q, want %q", last, want)
	}
	return last
}

func (d *dialog) data(msg, want string) string {
	d.t.Helper()
	d.cmd("DATA", "354")
	w := d.text.DotWriter()
	w.Write([]byte(msg))
	w.Close()
	return d.expect(want)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func plainAuth(user, pass string) string { return b64("\x00" + user + "\x00" + pass) }

// login authenticates with AUTH PLAIN and the initial response.
func (d *dialog) login(user string) {
	d.t.Helper()
	d.cmd("EHLO device.lan", "250")
	d.cmd("AUTH PLAIN "+plainAuth(user, devicePassword), "235 2.0.0")
}

const simpleMessage = "From: Scanner <scan@printer.lan>\r\nTo: bob@contoso.example\r\nSubject: scan\r\n\r\nThis is the body.\r\n"
