// Package sandbox runs smtpbridge's whole upstream path without a Microsoft
// tenant: an Entra ID-like token issuer and an Exchange Online-like
// submission endpoint (the test fakes) on loopback, with real TLS from a
// throw-away CA, set up from the config so that every configured tenant,
// app and device mailbox is known and correctly permitted. What the fake
// Exchange accepts is written to a directory as .eml files.
//
// It is for trying the bridge and testing devices. It must never be used
// to send real mail: nothing leaves the machine.
package sandbox

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/pki"
)

// Sandbox is a running pair of fakes.
type Sandbox struct {
	CA       *pki.CA
	Entra    *fakeentra.Server
	Exchange *fakeexchange.Server
	MailDir  string

	mu      sync.Mutex
	apps    map[string]string // tenant ID + client ID -> service principal object ID
	tenants map[string]bool   // tenant IDs registered
}

// Start starts the fakes on loopback and registers cfg's tenants and
// device mailboxes. Messages go to mailDir, which is created.
func Start(cfg *config.Config, mailDir string) (*Sandbox, error) {
	if err := os.MkdirAll(mailDir, 0o750); err != nil {
		return nil, fmt.Errorf("sandbox mail directory: %w", err)
	}
	ca, err := pki.NewCA("smtpbridge sandbox CA")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	entra, err := fakeentra.New()
	if err != nil {
		return nil, err
	}
	if err := entra.Start("127.0.0.1:0", leaf.TLS); err != nil {
		return nil, fmt.Errorf("sandbox token issuer: %w", err)
	}
	exo := fakeexchange.New(entra)
	exo.SetMailDir(mailDir)
	if err := exo.Start("127.0.0.1:0", leaf.TLS); err != nil {
		entra.Close()
		return nil, fmt.Errorf("sandbox submission endpoint: %w", err)
	}
	sb := &Sandbox{CA: ca, Entra: entra, Exchange: exo, MailDir: mailDir, apps: map[string]string{}, tenants: map[string]bool{}}
	if err := sb.Register(cfg); err != nil {
		sb.Close()
		return nil, err
	}
	return sb, nil
}

// Register makes cfg's tenants, apps and device mailboxes known to the
// fakes, correctly permitted. It may be called again after a reload: what
// was registered before keeps its IDs, so tokens already issued stay
// valid, and a changed secret or certificate replaces the old one.
func (sb *Sandbox) Register(cfg *config.Config) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	objectIDs := map[string]string{} // tenant name -> service principal object ID
	for _, t := range cfg.Tenants {
		if !sb.tenants[strings.ToLower(t.TenantID)] {
			sb.Entra.AddTenant(t.TenantID)
			sb.tenants[strings.ToLower(t.TenantID)] = true
		}
		key := strings.ToLower(t.TenantID + "/" + t.ClientID)
		app := fakeentra.App{ClientID: t.ClientID, ObjectID: sb.apps[key]}
		if t.Credential.IsCertificate() {
			certs, _ := t.Credential.Certificate()
			app.Certificates = certs[:1]
		} else if s := t.Credential.Secret(); s != "" {
			app.Secrets = []fakeentra.Secret{{Value: s}}
		} else {
			return errors.New("sandbox: tenant " + t.Name + " has no credential")
		}
		a := sb.Entra.AddApp(t.TenantID, app)
		sb.apps[key] = a.ObjectID
		sb.Exchange.AddServicePrincipal(t.TenantID, t.ClientID, a.ObjectID)
		objectIDs[t.Name] = a.ObjectID
	}
	for _, d := range cfg.Devices {
		t := cfg.Tenant(d.Tenant)
		if t == nil {
			continue
		}
		sb.Exchange.AddMailbox(fakeexchange.Mailbox{
			Address:    d.Mailbox,
			TenantID:   t.TenantID,
			FullAccess: []string{objectIDs[t.Name]},
			SendAs:     sendAs(d),
		})
	}
	return nil
}

// sendAs grants the mailbox SendAs for the plain addresses in allowed_from,
// as an admin would with Add-RecipientPermission.
func sendAs(d config.Device) []string {
	var out []string
	for _, a := range d.AllowedFrom {
		if strings.Contains(a, "@") && !strings.HasPrefix(a, "*@") {
			out = append(out, a)
		}
	}
	return out
}

// Apply points cfg's tenants at the fakes.
func (sb *Sandbox) Apply(cfg *config.Config) {
	for i := range cfg.Tenants {
		cfg.Tenants[i].AuthorityHost = sb.AuthorityHost()
		cfg.Tenants[i].SMTPHost = sb.SMTPHost()
	}
}

// AuthorityHost is what tenants' authority_host becomes in sandbox mode.
func (sb *Sandbox) AuthorityHost() string { return sb.Entra.URL() }

// SMTPHost is what tenants' smtp_host becomes in sandbox mode.
func (sb *Sandbox) SMTPHost() string { return sb.Exchange.Addr() }

// RootCAs trusts the sandbox's certificates.
func (sb *Sandbox) RootCAs() *x509.CertPool { return sb.CA.Pool() }

// Close stops both fakes.
func (sb *Sandbox) Close() error {
	return errors.Join(sb.Exchange.Close(), sb.Entra.Close())
}
