// Package sandbox runs smtpbridge's whole upstream path without a Microsoft
// tenant: a fake Entra ID, Exchange Online and Microsoft Graph
// (fakeworld.World) on loopback, with real TLS from a throw-away CA, set up
// so that every configured tenant, app and device mailbox is known and
// correctly permitted. What the fake Exchange accepts is written to a
// directory as .eml files.
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

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/secret"
)

// Tenant is what the sandbox needs of a configured tenant.
type Tenant struct {
	Name, TenantID, ClientID string
	Credential               secret.Credential
}

// Mailbox is a device's mailbox: the tenant name it belongs to, and the
// device's allowed_from, whose plain addresses get SendAs.
type Mailbox struct {
	Address, Tenant string
	AllowedFrom     []string
}

// Sandbox is a running pair of fakes.
type Sandbox struct {
	World   *fakeworld.World
	MailDir string

	mu   sync.Mutex
	apps map[string]string // tenant ID + client ID -> service principal object ID
}

// Start starts the fakes on loopback and registers the tenants and
// mailboxes. Messages go to mailDir, which is created.
func Start(mailDir string, tenants []Tenant, mailboxes []Mailbox) (*Sandbox, error) {
	if err := os.MkdirAll(mailDir, 0o750); err != nil {
		return nil, fmt.Errorf("sandbox mail directory: %w", err)
	}
	// The bridge trusts the fakes' CA in memory (RootCAs): no files.
	w, err := fakeworld.New()
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	w.Exchange.SetMailDir(mailDir)
	w.Graph.SetMailDir(mailDir)
	if err := w.Listen(); err != nil {
		w.Close()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	sb := &Sandbox{World: w, MailDir: mailDir, apps: map[string]string{}}
	if err := sb.Register(tenants, mailboxes); err != nil {
		sb.Close()
		return nil, err
	}
	return sb, nil
}

// Register makes the tenants, apps and mailboxes known to the fakes,
// correctly permitted. It may be called again after a reload: what was
// registered before keeps its IDs, so tokens already issued stay valid,
// and a changed secret or certificate replaces the old one.
func (sb *Sandbox) Register(tenants []Tenant, mailboxes []Mailbox) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	apps := map[string]*fakeentra.App{} // tenant name -> its app
	for _, t := range tenants {
		key := strings.ToLower(t.TenantID + "/" + t.ClientID)
		app := fakeentra.App{ClientID: t.ClientID, ObjectID: sb.apps[key]}
		if t.Credential.IsCertificate() {
			certs, _ := t.Credential.Certificate()
			app.Certificates = certs[:1]
		} else if s := t.Credential.Secret(); s != "" {
			app.Secrets = []fakeentra.Secret{{Value: s}}
		} else if _, mi := t.Credential.ManagedIdentity(); mi {
			return errors.New("sandbox: tenant " + t.Name + " uses managed_identity, which only Azure provides; give it a client_id and a client_secret (any value) to try it in the sandbox")
		} else if t.Credential.Delegated() {
			return errors.New("sandbox: tenant " + t.Name + " uses auth: delegated, which needs a person to sign in at Entra ID; remove auth and give it a client_secret (any value) to try it in the sandbox")
		} else if t.Credential.FederatedTokenFile() != "" {
			return errors.New("sandbox: tenant " + t.Name + " uses federated_token_file, whose tokens only the real Entra ID can check; give it a client_secret (any value) to try it in the sandbox")
		} else {
			return errors.New("sandbox: tenant " + t.Name + " has no credential")
		}
		a := sb.World.AddApp(t.TenantID, app)
		sb.apps[key] = a.ObjectID
		apps[t.Name] = a
	}
	tenantIDs := map[string]string{}
	for _, t := range tenants {
		tenantIDs[t.Name] = t.TenantID
	}
	for _, m := range mailboxes {
		app := apps[m.Tenant]
		if app == nil {
			continue
		}
		sb.World.AddMailbox(m.Address, tenantIDs[m.Tenant], app, sendAs(m.AllowedFrom)...)
	}
	return nil
}

// sendAs grants the mailbox SendAs for the plain addresses in allowed_from,
// as an admin would with Add-RecipientPermission.
func sendAs(allowedFrom []string) []string {
	var out []string
	for _, a := range allowedFrom {
		if strings.Contains(a, "@") && !strings.HasPrefix(a, "*@") {
			out = append(out, a)
		}
	}
	return out
}

// AuthorityHost is the tenants' authority_host in sandbox mode.
func (sb *Sandbox) AuthorityHost() string { return sb.World.Entra.URL() }

// SMTPHost is the tenants' smtp_host in sandbox mode.
func (sb *Sandbox) SMTPHost() string { return sb.World.Exchange.Addr() }

// GraphHost is the fake Microsoft Graph's URL, for graph_host.
func (sb *Sandbox) GraphHost() string { return sb.World.Graph.URL() }

// GraphScope is the token scope the fake Entra ID issues Graph tokens
// for (the real Graph's: the fake's audience).
func (sb *Sandbox) GraphScope() string { return fakeentra.GraphResource + "/.default" }

// RootCAs trusts the sandbox's certificates.
func (sb *Sandbox) RootCAs() *x509.CertPool { return sb.World.CA.Pool() }

// Close stops both fakes.
func (sb *Sandbox) Close() error { return sb.World.Close() }
