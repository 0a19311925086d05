// Package secret holds the values smtpbridge must never print: a secret
// string (a client secret, a certificate password) and a tenant's resolved
// client credential. Both print as "[redacted]" with every fmt verb, in
// JSON, YAML and zerolog, so that a config or an error dumped by mistake
// shows no secret. Read them only where they are used: MSAL's credential.
package secret

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"time"
)

const redacted = "[redacted]"

// String holds a client secret or password. It prints as "[redacted]" with
// every fmt verb, in JSON and in zerolog, so a config dumped by mistake
// shows no secret. Use Value to read it.
type String string

// Value returns the secret itself.
func (s String) Value() string { return string(s) }

// String implements fmt.Stringer.
func (s String) String() string { return redactIfSet(s != "") }

// Credential labels, for the status page and doctor: what kind of
// credential a tenant has, never its contents.
const (
	LabelClientSecret    = "client secret"
	LabelCertificate     = "certificate"
	LabelFederatedToken  = "federated token"
	LabelDelegated       = "delegated sign-in"
	LabelManagedIdentity = "managed identity"
	// LabelManagedIdentityFederated: a managed identity whose token is
	// an app registration's client assertion.
	LabelManagedIdentityFederated = "managed identity as federated credential"
	LabelNone                     = "none"
)

// Label says what kind of credential c is (one of the Label constants).
// appClientID is the tenant's client_id: with one, a managed identity is
// that app registration's federated credential.
func (c Credential) Label(appClientID string) string {
	switch {
	case c.delegated:
		return LabelDelegated
	case c.managed && appClientID != "":
		return LabelManagedIdentityFederated
	case c.managed:
		return LabelManagedIdentity
	case c.IsCertificate():
		return LabelCertificate
	case c.tokenFile != "":
		return LabelFederatedToken
	case c.secret != "":
		return LabelClientSecret
	}
	return LabelNone
}

// GoString implements fmt.GoStringer.
func (s String) GoString() string { return s.String() }

// Format implements fmt.Formatter for every verb, including %x and %q.
func (s String) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// MarshalJSON implements json.Marshaler.
func (s String) MarshalJSON() ([]byte, error) { return []byte(`"` + s.String() + `"`), nil }

// MarshalText implements encoding.TextMarshaler (used by YAML and zerolog).
func (s String) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func redactIfSet(set bool) string {
	if set {
		return redacted
	}
	return ""
}

// Credential is a tenant's resolved client credential: a secret, or a
// certificate with its RSA private key. Like Secret it never prints its
// contents.
type Credential struct {
	secret String
	certs  []*x509.Certificate
	key    crypto.PrivateKey
	// tokenFile holds an OIDC token (a Kubernetes service account
	// token, say) that Entra ID accepts as the app's client assertion
	// through a federated credential; read on each use.
	tokenFile string
	// managed: the host's managed identity (managedID: a user-assigned
	// one's client ID, or "" for the system-assigned one).
	managed   bool
	managedID string
	// delegated: no credential; a person signs in for each mailbox
	// (smtpbridge tenant login) and the bridge keeps the refresh token.
	delegated bool
}

// NewDelegated returns the credential of a public client: none, tokens
// come from each mailbox's sign-in.
func NewDelegated() Credential { return Credential{delegated: true} }

// Delegated says whether the tenant's tokens come from a person's
// sign-in per mailbox rather than from an app credential.
func (c Credential) Delegated() bool { return c.delegated }

// NewManagedIdentity returns a credential that is the host's managed
// identity: clientID picks a user-assigned one, "" the system-assigned.
func NewManagedIdentity(clientID string) Credential {
	return Credential{managed: true, managedID: clientID}
}

// ManagedIdentity says whether the credential is a managed identity, and
// which (a user-assigned one's client ID, or "" for system-assigned).
func (c Credential) ManagedIdentity() (clientID string, ok bool) { return c.managedID, c.managed }

// NewFederatedTokenFile returns a credential that is the token in path,
// read each time one is needed (workload identity federation).
func NewFederatedTokenFile(path string) Credential { return Credential{tokenFile: path} }

// FederatedTokenFile returns the token file's path, or "".
func (c Credential) FederatedTokenFile() string { return c.tokenFile }

// NewClientSecret returns a credential holding a client secret.
func NewClientSecret(secret string) Credential { return Credential{secret: String(secret)} }

// NewCertificate returns a credential holding a certificate chain (the
// app's certificate first) and its private key.
func NewCertificate(certs []*x509.Certificate, key crypto.PrivateKey) Credential {
	return Credential{certs: certs, key: key}
}

// Secret returns the client secret, or "" for a certificate credential.
func (c Credential) Secret() string { return c.secret.Value() }

// Certificate returns the chain and key, or nil for a secret credential.
func (c Credential) Certificate() ([]*x509.Certificate, crypto.PrivateKey) { return c.certs, c.key }

// IsCertificate reports whether the credential is a certificate.
func (c Credential) IsCertificate() bool { return len(c.certs) > 0 }

// NotAfter returns the certificate's expiry, or the zero time for a secret.
func (c Credential) NotAfter() time.Time {
	if len(c.certs) == 0 {
		return time.Time{}
	}
	return c.certs[0].NotAfter
}

// Equal says whether c and o are the same credential.
func (c Credential) Equal(o Credential) bool {
	if c.secret != o.secret || c.tokenFile != o.tokenFile || c.managed != o.managed || c.managedID != o.managedID || c.delegated != o.delegated || len(c.certs) != len(o.certs) {
		return false
	}
	for i := range c.certs {
		if !c.certs[i].Equal(o.certs[i]) {
			return false
		}
	}
	if c.key == nil || o.key == nil {
		return c.key == nil && o.key == nil
	}
	k, ok := c.key.(interface{ Equal(crypto.PrivateKey) bool })
	return ok && k.Equal(o.key)
}

// String implements fmt.Stringer without revealing the credential.
func (c Credential) String() string {
	switch {
	case c.IsCertificate():
		return fmt.Sprintf("certificate %q (expires %s)", c.certs[0].Subject.CommonName, c.certs[0].NotAfter.Format(time.DateOnly))
	case c.secret != "":
		return "client secret " + redacted
	case c.tokenFile != "":
		return "federated token file " + c.tokenFile
	case c.managed && c.managedID != "":
		return "user-assigned managed identity " + c.managedID
	case c.managed:
		return "system-assigned managed identity"
	}
	return "none"
}

// GoString implements fmt.GoStringer.
func (c Credential) GoString() string { return c.String() }

// Format implements fmt.Formatter for every verb.
func (c Credential) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }
