package bridge_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

// The device side's tests run the bridge in front of the whole path to a
// fake Exchange (sync mode: the device waits for Exchange's answer), on
// loopback with real TLS, so that what a device is told can be checked
// against what Exchange got.

const devicePassword = testenv.DevicePassword

// env is a bridge in front of the test World.
type env struct {
	t     *testing.T
	world *fakeworld.World
	std   testenv.Standard
	srv   *bridge.Server
	store *tokenstore.Store
	logs  *syncbuf.Buffer
	// settings are the server's as started, for reload tests.
	settings bridge.Settings
}

type envOptions struct {
	devices   []inventory.Device
	listeners []bridge.Listener
	limits    bridge.Limits
	// exoSetup runs before the fake Exchange starts.
	exoSetup func(*fakeexchange.Server)
	// smtpHost overrides the route for the secret tenant.
	smtpHost string
	// untrusted makes the bridge verify Exchange against the system roots,
	// which do not know the test CA.
	untrusted bool
	// observer, if set, hears of connections and logins.
	observer bridge.Observer
}

// testLimits are the config's defaults, with a short command timeout.
var testLimits = bridge.Limits{MaxMessageBytes: 36700160, MaxRecipients: 500, CommandTimeout: time.Minute,
	MaxErrors: 20, MaxLineLength: 64 << 10}

// withDefaults fills the zero fields of l from testLimits.
func withDefaults(l bridge.Limits) bridge.Limits {
	d := testLimits
	if l.MaxMessageBytes != 0 {
		d.MaxMessageBytes = l.MaxMessageBytes
	}
	if l.MaxRecipients != 0 {
		d.MaxRecipients = l.MaxRecipients
	}
	if l.CommandTimeout != 0 {
		d.CommandTimeout = l.CommandTimeout
	}
	if l.MaxErrors != 0 {
		d.MaxErrors = l.MaxErrors
	}
	if l.MaxLineLength != 0 {
		d.MaxLineLength = l.MaxLineLength
	}
	d.SessionTimeout = l.SessionTimeout
	return d
}

// device returns a device on the secret tenant sending as mailbox.
func device(name, mbox string) inventory.Device {
	h, err := passwd.Parse(testenv.Hash())
	if err != nil {
		panic(err)
	}
	return inventory.Device{Name: name, Username: name, PasswordHash: h, Tenant: "secret", Mailbox: addr(mbox), Mode: message.ModeSync}
}

func addr(s string) mailaddr.Address {
	a, err := mailaddr.Parse(s)
	if err != nil {
		panic(err)
	}
	return a
}

func patterns(s ...string) mailaddr.Patterns {
	ps, err := mailaddr.ParsePatterns(s)
	if err != nil {
		panic(err)
	}
	return ps
}

func network(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, logs: &syncbuf.Buffer{}}
	e.world, e.std = testenv.Start(t, func(w *fakeworld.World) {
		if o.exoSetup != nil {
			o.exoSetup(w.Exchange)
		}
	})
	for _, mb := range []string{"scanner@contoso.example", "erp@contoso.example", "alarm@contoso.example"} {
		e.world.AddMailbox(mb, testenv.TenantID, e.std.Secret, "billing@contoso.example")
	}
	e.world.AddMailbox("mfp@fabrikam.example", testenv.CertTenantID, e.std.Cert)

	pool := e.world.CA.Pool()
	tokens := []tokenstore.Tenant{
		{Name: "secret", TenantID: testenv.TenantID, ClientID: testenv.ClientID, Credential: secret.NewClientSecret(testenv.ClientSecret),
			AuthorityHost: e.world.Entra.URL(), Scope: testenv.TokenScope, RootCAs: pool},
		{Name: "cert", TenantID: testenv.CertTenantID, ClientID: testenv.CertClientID,
			Credential:    secret.NewCertificate([]*x509.Certificate{e.std.AppCert.Cert}, e.std.AppCert.Key),
			AuthorityHost: e.world.Entra.URL(), Scope: testenv.TokenScope, RootCAs: pool},
	}
	smtpHost := e.world.Exchange.Addr()
	if o.smtpHost != "" {
		smtpHost = o.smtpHost
	}
	routes := map[string]upsmtp.Route{
		"secret": {Host: smtpHost, RootCAs: pool},
		"cert":   {Host: e.world.Exchange.Addr(), RootCAs: pool},
	}
	if o.untrusted {
		routes["secret"] = upsmtp.Route{Host: smtpHost} // system roots, which do not know the test CA
	}
	devices := o.devices
	if devices == nil {
		devices = []inventory.Device{device("mfp", "scanner@contoso.example")}
	}
	listeners := o.listeners
	if listeners == nil {
		listeners = []bridge.Listener{{Name: "plain", Address: "127.0.0.1:0", TLS: bridge.TLSNone, AllowInsecureAuth: true}}
	}
	for i := range listeners {
		if listeners[i].TLS != bridge.TLSNone && listeners[i].Certificate == nil {
			listeners[i].Certificate = &e.world.Leaf.TLS
		}
		if listeners[i].MinTLSVersion == 0 {
			listeners[i].MinTLSVersion = tls.VersionTLS12
		}
	}
	// The product's wiring (daemon.Path) without a spool: the devices
	// here relay in sync mode, through the SMTP transport.
	log := zerolog.New(e.logs).Level(zerolog.DebugLevel)
	path, err := daemon.NewPath(daemon.Parts{Hostname: "bridge.test",
		Inventory: inventory.Inventory{Devices: devices, Tenants: []inventory.Tenant{
			{Name: "secret", Transport: inventory.TransportSMTP}, {Name: "cert", Transport: inventory.TransportSMTP}}},
		Listeners: listeners, Limits: withDefaults(o.limits), Tokens: tokens, GraphTokens: tokens, Routes: routes,
		MailboxLimits: map[string]upstream.Limits{"secret": {Connections: 3}, "cert": {Connections: 3}},
	}, daemon.PathOptions{Log: log, Events: audit.NewLogger(log), Conns: o.observer})
	if err != nil {
		t.Fatal(err)
	}
	e.srv, e.store, e.settings = path.Server, path.Tokens, *path.Server.Settings()
	if err := path.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		path.Stop(context.Background())
		testenv.CheckNoSecrets(t, "the bridge's log", e.logs.String())
	})
	return e
}

func (e *env) addr(listener string) string {
	a := e.srv.Addr(listener)
	if a == nil {
		e.t.Fatalf("no listener %q", listener)
	}
	return a.String()
}

func (e *env) exo() *fakeexchange.Server { return e.world.Exchange }

func dial(t *testing.T, addr string) *testenv.Dialog { return testenv.Dial(t, addr) }

func dialTLS(t *testing.T, addr string, cfg *tls.Config) *testenv.Dialog {
	return testenv.DialTLS(t, addr, cfg)
}

func plainAuth(user, pass string) string { return testenv.PlainAuth(user, pass) }

func b64(s string) string { return testenv.B64(s) }

// login authenticates as user with the test password.
func login(d *testenv.Dialog, user string) { d.Login(user, devicePassword) }

const simpleMessage = "From: Scanner <scan@printer.lan>\r\nTo: bob@contoso.example\r\nSubject: scan\r\n\r\n" + testenv.BodyCanary + ".\r\n"
