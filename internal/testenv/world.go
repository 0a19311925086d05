// Package testenv is the one test environment of smtpbridge: Microsoft's
// side faked on loopback with real TLS (a private CA, a fake Entra ID and
// a fake Exchange Online, the World), the identities and canary secrets
// tests use, an SMTP dialogue helper that talks to a listener the way a
// device does, and Eventually. Every package's tests use it, and sandbox
// mode runs on its World.
//
// It does not import package testing: a test passes its *testing.T as a
// TB. Nothing here may be used to send real mail: everything stays on
// loopback.
package testenv

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/fakegraph"
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

// World is Microsoft's side, faked: a fake Entra ID and a fake Exchange
// Online on loopback, with certificates from a private CA.
type World struct {
	CA       *pki.CA
	Leaf     *pki.Leaf // for 127.0.0.1 and localhost: the fakes' and the tests' listeners
	Entra    *fakeentra.Server
	Exchange *fakeexchange.Server
	// Graph is the fake Microsoft Graph, for tenants on transport: graph.
	Graph *fakegraph.Server
	// CAFile, CertFile and KeyFile hold the CA certificate (for
	// SSL_CERT_FILE) and the leaf's certificate and key (for a
	// listener's cert_file and key_file), in Dir.
	Dir                       string
	CAFile, CertFile, KeyFile string

	mu      sync.Mutex
	tenants map[string]bool
}

// NewWorld starts the fakes with a fresh CA, writing its files to dir.
func NewWorld(dir string) (*World, error) {
	ca, err := pki.NewCA("smtpbridge test CA")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	return newWorld(dir, ca, leaf)
}

func newWorld(dir string, ca *pki.CA, leaf *pki.Leaf) (*World, error) {
	w := &World{CA: ca, Leaf: leaf, Dir: dir, tenants: map[string]bool{},
		CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "listener.crt"), KeyFile: filepath.Join(dir, "listener.key")}
	for path, data := range map[string][]byte{w.CAFile: ca.CertPEM(), w.CertFile: leaf.CertPEM, w.KeyFile: leaf.KeyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	var err error
	if w.Entra, err = fakeentra.New(); err != nil {
		return nil, err
	}
	if err := w.Entra.Start("127.0.0.1:0", leaf.TLS); err != nil {
		return nil, fmt.Errorf("fake Entra ID: %w", err)
	}
	w.Exchange = fakeexchange.New(w.Entra)
	w.Graph = fakegraph.New(w.Entra)
	return w, nil
}

// Listen starts the fake Exchange; set it up (Script, DisableStartTLS,
// SetMailDir) before.
func (w *World) Listen() error {
	if err := w.Exchange.Start("127.0.0.1:0", w.Leaf.TLS); err != nil {
		return fmt.Errorf("fake Exchange Online: %w", err)
	}
	if err := w.Graph.Start("127.0.0.1:0", w.Leaf.TLS); err != nil {
		return fmt.Errorf("fake Microsoft Graph: %w", err)
	}
	return nil
}

// Close stops both fakes.
func (w *World) Close() error {
	var errs []error
	if w.Exchange != nil {
		errs = append(errs, w.Exchange.Close())
	}
	if w.Graph != nil {
		errs = append(errs, w.Graph.Close())
	}
	return errors.Join(append(errs, w.Entra.Close())...)
}

// AddTenant makes a tenant known to Entra, once.
func (w *World) AddTenant(id string, domains ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tenants[strings.ToLower(id)] {
		return
	}
	w.tenants[strings.ToLower(id)] = true
	w.Entra.AddTenant(id, domains...)
}

// AddApp registers an app registration (its client secrets or
// certificates in app) in a tenant, and its service principal in
// Exchange, as an admin would with New-ServicePrincipal. Registering the
// same client ID again replaces its credentials and keeps its object ID.
func (w *World) AddApp(tenantID string, app fakeentra.App) *fakeentra.App {
	w.AddTenant(tenantID)
	a := w.Entra.AddApp(tenantID, app)
	w.Exchange.AddServicePrincipal(tenantID, app.ClientID, a.ObjectID)
	return a
}

// AddMailbox makes a mailbox the app may send as (FullAccess), with
// SendAs for the addresses given.
func (w *World) AddMailbox(address, tenantID string, app *fakeentra.App, sendAs ...string) {
	w.Exchange.AddMailbox(fakeexchange.Mailbox{Address: address, TenantID: tenantID,
		FullAccess: []string{app.ObjectID}, SendAs: sendAs})
	w.Graph.AddMailbox(address, tenantID)
}

// shared is one CA and leaf per test process: RSA key generation is the
// slowest part of starting a World, more so under -race.
var shared = sync.OnceValues(func() (*pki.Leaf, error) {
	ca, err := pki.NewCA("smtpbridge test CA")
	if err != nil {
		return nil, err
	}
	sharedCA = ca
	return ca.Issue("127.0.0.1", "localhost")
})

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
func Start(t TB, setup ...func(*World)) (*World, Standard) {
	t.Helper()
	leaf, err := shared()
	if err != nil {
		t.Fatalf("test CA: %v", err)
	}
	w, err := newWorld(t.TempDir(), sharedCA, leaf)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { w.Close() })
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
