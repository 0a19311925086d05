// Package testenv is the one test environment of smtpbridge: Microsoft's
// side faked on loopback (fakeworld's World, which sandbox mode runs on
// too) set up with the identities and canary secrets tests use, an SMTP
// dialogue helper that talks to a listener the way a device does, a
// redis-server launcher, and Eventually. Every package's tests use it;
// the shipping binary must not link it (HACKING.md has the check).
//
// It does not import package testing: a test passes its *testing.T as a
// TB. Nothing here may be used to send real mail: everything stays on
// loopback.
package testenv

import (
	"crypto/x509"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/pki"
)

// TB is the part of testing.TB the helpers use.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Test identities. The secrets double as canaries: no log line, reply,
// spool file or page may carry them (CheckNoSecrets).
const (
	TenantID       = "11111111-aaaa-4000-8000-000000000001" // Contoso: a client secret
	CertTenantID   = "22222222-bbbb-4000-8000-000000000002" // Fabrikam: a certificate
	ClientID       = "aaaaaaaa-0000-4000-8000-00000000000a"
	CertClientID   = "bbbbbbbb-0000-4000-8000-00000000000b"
	ClientSecret   = "Zq8~client-secret-canary-7f3a"
	DevicePassword = "pr1nter-password-canary"
	// BodyCanary is in the bodies tests send: no log may carry it.
	BodyCanary = "This is the body canary"
	// TokenScope is Exchange Online's, as the config's default.
	TokenScope = "https://outlook.office365.com/.default"
)

// shared is one CA and leaf per test process: RSA key generation is the
// slowest part of starting a World, more so under -race.
var shared = sync.OnceValues(func() (*pki.Leaf, error) {
	ca, err := pki.NewCA("smtpbridge test CA")
	if err != nil {
		return nil, err
	}
	sharedCA = ca
	return ca.Issue("127.0.0.1", "localhost", "login."+ProxiedDomain, "graph."+ProxiedDomain, "smtp."+ProxiedDomain)
})

// ProxiedDomain names the fakes where only a proxy finds them (its own
// hosts file maps the names to 127.0.0.1; this host cannot resolve
// them): a bridge that reaches them went through the proxy.
const ProxiedDomain = "proxied.test"

var sharedCA *pki.CA

// Standard is what Start sets up besides the fakes.
type Standard struct {
	// Secret is Contoso's app (ClientID, ClientSecret); Cert is
	// Fabrikam's (CertClientID, AppCert).
	Secret, Cert *fakeentra.App
	AppCert      *pki.AppCert
}

// Start starts a World for a test, stopped at its end, with two tenants:
// Contoso (TenantID, contoso.example) whose app has ClientSecret, and
// Fabrikam (CertTenantID, fabrikam.example) whose app has a certificate.
// setup, if given, runs before the fake Exchange listens. Add mailboxes
// with AddMailbox.
func Start(t TB, setup ...func(*fakeworld.World)) (*fakeworld.World, Standard) {
	t.Helper()
	leaf, err := shared()
	if err != nil {
		t.Fatalf("test CA: %v", err)
	}
	w, err := fakeworld.NewWith(sharedCA, leaf)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { w.Close() })
	if err := w.WriteFiles(t.TempDir()); err != nil {
		t.Fatalf("%v", err)
	}
	w.AddTenant(TenantID, "contoso.example")
	w.AddTenant(CertTenantID, "fabrikam.example")
	var st Standard
	st.Secret = w.AddApp(TenantID, fakeentra.App{ClientID: ClientID, Secrets: []fakeentra.Secret{{Value: ClientSecret}}})
	if st.AppCert, err = appCert(); err != nil {
		t.Fatalf("app certificate: %v", err)
	}
	st.Cert = w.AddApp(CertTenantID, fakeentra.App{ClientID: CertClientID, Certificates: []*x509.Certificate{st.AppCert.Cert}})
	for _, f := range setup {
		f(w)
	}
	if err := w.Listen(); err != nil {
		t.Fatalf("%v", err)
	}
	return w, st
}

var appCert = sync.OnceValues(func() (*pki.AppCert, error) {
	return pki.NewAppCert("smtpbridge fabrikam", time.Now().AddDate(1, 0, 0))
})

// Hash is a bcrypt hash of DevicePassword at the lowest cost, which keeps
// the suite fast; the bridge's timing logic does not depend on the cost.
var Hash = sync.OnceValue(func() string {
	h, err := passwd.NewBcrypt([]byte(DevicePassword), 4)
	if err != nil {
		panic(err)
	}
	return h
})
