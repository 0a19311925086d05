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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakegraph"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
)

// Sandbox is a running pair of fakes.
type Sandbox struct {
	World   *fakeworld.World
	MailDir string

	mu   sync.Mutex
	apps map[string]string // tenant ID + client ID -> service principal object ID
}

// Start starts the fakes on loopback and registers the inventory's
// tenants and the mailboxes its devices send as. Messages go to mailDir,
// which is created.
func Start(mailDir string, inv inventory.Inventory) (*Sandbox, error) {
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
	if err := sb.Register(inv); err != nil {
		sb.Close()
		return nil, err
	}
	return sb, nil
}

// Register makes the tenants, apps and mailboxes known to the fakes,
// correctly permitted. It may be called again after a reload: what was
// registered before keeps its IDs, so tokens already issued stay valid,
// and a changed secret or certificate replaces the old one.
func (sb *Sandbox) Register(inv inventory.Inventory) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	apps := map[string]*fakeentra.App{} // tenant name -> its app
	for _, t := range inv.Tenants {
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
		// The grant smtpbridge discover needs, as given with
		// exchange-script --discover.
		app.GraphRoles = []string{fakeentra.RoleMailSend, fakeentra.RoleMailReadWrite, fakeentra.RoleReportsRead, fakeentra.RoleAuditLogRead}
		a := sb.World.AddApp(t.TenantID, app)
		sb.apps[key] = a.ObjectID
		apps[t.Name] = a
	}
	sb.legacySenders(inv)
	for _, d := range inv.Devices {
		app := apps[d.Tenant]
		if app == nil {
			continue
		}
		// SendAs for the plain addresses in allowed_from, as an admin
		// would grant with Add-RecipientPermission.
		var sendAs []string
		for _, a := range d.AllowedFrom.Addresses() {
			sendAs = append(sendAs, a.String())
		}
		sb.World.AddMailbox(d.Mailbox.String(), inv.Tenant(d.Tenant).TenantID, app, sendAs...)
	}
	return nil
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

// legacySenders gives each tenant a month of SMTP AUTH activity for
// smtpbridge discover to find: its devices' mailboxes, and two more
// that nothing in the config sends as yet (a copier and an ERP system
// still sending with a password).
func (sb *Sandbox) legacySenders(inv inventory.Inventory) {
	now := time.Now().UTC()
	for _, t := range inv.Tenants {
		domain := "sandbox.example"
		mailboxes := []string{}
		for _, d := range inv.Devices {
			if d.Tenant == t.Name && !slices.Contains(mailboxes, d.Mailbox.String()) {
				mailboxes = append(mailboxes, d.Mailbox.String())
				domain = d.Mailbox.Domain
			}
		}
		mailboxes = append(mailboxes, "copier-3f@"+domain, "erp@"+domain)
		act := fakegraph.Activity{Premium: true}
		for i, m := range mailboxes {
			act.Usage = append(act.Usage, fakegraph.Usage{UPN: m, LastActivity: now.Add(-time.Duration(i%5) * 24 * time.Hour), SMTP: true})
			for j := range 3 + i%4 {
				act.SignIns = append(act.SignIns, fakegraph.SignIn{UPN: m, IP: fmt.Sprintf("203.0.113.%d", 10+i%3),
					Time: now.Add(-time.Duration(j*7+i) * time.Hour), ClientApp: "Authenticated SMTP"})
			}
		}
		sb.World.Graph.SetActivity(t.TenantID, act)
	}
}
