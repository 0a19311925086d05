// Package fakeworld is Microsoft's side of smtpbridge, faked on loopback
// with real TLS: a private CA, a fake Entra ID (fakeentra), a fake
// Exchange Online (fakeexchange) and a fake Microsoft Graph (fakegraph),
// wired to each other as the real services are (an app registered in
// Entra is a service principal in Exchange; a mailbox is known to both
// Exchange and Graph).
//
// Sandbox mode runs on it, and the tests build on it through
// internal/testenv, which adds the test identities and helpers; the
// shipping binary links this package, never testenv. Nothing here may be
// used to send real mail: everything stays on loopback.
package fakeworld

import (
	"bytes"
	"errors"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/fakegraph"
	"github.com/smtpbridge/smtpbridge/internal/pki"
)

// World is Microsoft's side, faked: a fake Entra ID, a fake Exchange
// Online and a fake Microsoft Graph on loopback, with certificates from a
// private CA.
type World struct {
	CA       *pki.CA
	Leaf     *pki.Leaf // for 127.0.0.1 and localhost: the fakes' and the tests' listeners
	Entra    *fakeentra.Server
	Exchange *fakeexchange.Server
	// Graph is the fake Microsoft Graph, for tenants on transport: graph.
	Graph *fakegraph.Server
	// CAFile, CertFile and KeyFile hold the CA certificate (for
	// SSL_CERT_FILE) and the leaf's certificate and key (for a
	// listener's cert_file and key_file), in Dir, once WriteFiles has
	// written them.
	Dir                       string
	CAFile, CertFile, KeyFile string

	mu      sync.Mutex
	tenants map[string]bool
}

// New starts the fake Entra ID with a fresh CA. Set the fake Exchange
// and Graph up (Script, DisableStartTLS, SetMailDir), then Listen.
func New() (*World, error) {
	ca, err := pki.NewCA("smtpbridge fake Microsoft CA")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	return NewWith(ca, leaf)
}

// NewWith is New with a CA and a leaf certificate made before (tests
// share one per process: RSA key generation is the slowest part).
func NewWith(ca *pki.CA, leaf *pki.Leaf) (*World, error) {
	w := &World{CA: ca, Leaf: leaf, tenants: map[string]bool{}}
	var err error
	if w.Entra, err = fakeentra.New(); err != nil {
		return nil, err
	}
	if err := w.Entra.Start("127.0.0.1:0", leaf.TLS); err != nil {
		return nil, fmt.Errorf("fake Entra ID: %w", err)
	}
	w.Exchange = fakeexchange.New(w.Entra)
	w.Graph = fakegraph.New(w.Entra)
	// One mailbox store: what Exchange takes over SMTP AUTH has its copy
	// in the mailbox's Sent Items, which Graph sees.
	w.Exchange.SetOnAccepted(func(m fakeexchange.Message) {
		it := fakegraph.SentItem{Sent: time.Now().UTC(), Size: m.Size}
		if m.Data != nil {
			if msg, err := mail.ReadMessage(bytes.NewReader(m.Data)); err == nil {
				it.InternetMessageID, it.Subject = strings.TrimSpace(msg.Header.Get("Message-Id")), msg.Header.Get("Subject")
			}
		}
		w.Graph.AddSentItem(m.AuthUser, it)
	})
	return w, nil
}

// WriteFiles writes the CA certificate and the leaf's certificate and
// key to dir, for programs that read files (SSL_CERT_FILE, a listener's
// cert_file), and sets Dir, CAFile, CertFile and KeyFile.
func (w *World) WriteFiles(dir string) error {
	w.Dir, w.CAFile, w.CertFile, w.KeyFile = dir, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "listener.crt"), filepath.Join(dir, "listener.key")
	for path, data := range map[string][]byte{w.CAFile: w.CA.CertPEM(), w.CertFile: w.Leaf.CertPEM, w.KeyFile: w.Leaf.KeyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return fmt.Errorf("fake world: %w", err)
		}
	}
	return nil
}

// Listen starts the fake Exchange and the fake Graph; set them up
// (Script, DisableStartTLS, SetMailDir) before.
func (w *World) Listen() error {
	if err := w.Exchange.Start("127.0.0.1:0", w.Leaf.TLS); err != nil {
		return fmt.Errorf("fake Exchange Online: %w", err)
	}
	if err := w.Graph.Start("127.0.0.1:0", w.Leaf.TLS); err != nil {
		return fmt.Errorf("fake Microsoft Graph: %w", err)
	}
	return nil
}

// Close stops the fakes.
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
// SendAs for the addresses given, in Exchange and Graph.
func (w *World) AddMailbox(address, tenantID string, app *fakeentra.App, sendAs ...string) {
	w.Exchange.AddMailbox(fakeexchange.Mailbox{Address: address, TenantID: tenantID,
		FullAccess: []string{app.ObjectID}, SendAs: sendAs})
	w.Graph.AddMailbox(address, tenantID)
}
