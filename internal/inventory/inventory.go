// Package inventory is what a config describes, compiled once: the
// listeners' names, the tenants, and the devices with the mailboxes they
// send as. config.Load builds it; the device side (bridge), the metrics,
// the status page, doctor and the sandbox take it as it is, rather than
// each copying the fields it needs into a type of its own.
//
// It holds no secret's value: a tenant's credential is a secret.Credential,
// which never prints its contents, and a device's password only as its
// hash.
package inventory

import (
	"net/netip"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/secret"
)

// Transports: how a device's mail reaches Exchange Online.
const (
	TransportSMTP  = "smtp"  // SMTP AUTH with XOAUTH2
	TransportGraph = "graph" // Microsoft Graph's sendMail
)

// Inventory is a config's listeners, tenants and devices.
type Inventory struct {
	Listeners []string // their names
	Tenants   []Tenant
	Devices   []Device
}

// Tenant is a configured tenant: an Entra ID app registration in a
// Microsoft 365 tenant, as the parts that describe it need it. How its
// tokens are requested is tokenstore.Tenant's, made from the config.
type Tenant struct {
	Name, TenantID, ClientID string
	// Credential is the app's credential; only its kind and expiry are
	// shown anywhere.
	Credential secret.Credential
	// CredentialExpiry is the certificate's NotAfter or the configured
	// client_secret_expires; zero when unknown.
	CredentialExpiry time.Time
	// SMTPHost is where its SMTP submissions go (the sandbox's fake in
	// sandbox mode); Transport is its default transport (smtp, graph).
	SMTPHost, Transport string
	// RecipientsPerDay is each mailbox's quota (max_recipients_per_day).
	RecipientsPerDay int
}

// CredentialLabel says what kind of credential the tenant has, for the
// status page and doctor.
func (t *Tenant) CredentialLabel() string { return t.Credential.Label(t.ClientID) }

// Device is a configured device, compiled: what the session checks at
// each login and message, and what the metrics, the status page and
// doctor say about it. config.Device is the other declaration: the
// device's entry as written in the YAML file, strings unparsed.
type Device struct {
	Name     string
	Username string // "" for a device without AUTH
	Tenant   string
	// Mailbox is the mailbox the device sends as: the XOAUTH2 user.
	Mailbox mailaddr.Address
	// EnforceFrom is from_policy: enforce (senders outside AllowedFrom
	// are refused); otherwise the From is rewritten to the mailbox.
	EnforceFrom       bool
	AllowedFrom       mailaddr.Patterns
	AllowedRecipients mailaddr.Patterns // empty: any
	Networks          []netip.Prefix    // empty: any
	// Mode is the device's delivery mode (message.ModeHybrid, ...), its
	// own or the global one; BounceTo likewise.
	Mode, BounceTo string
	// Transport is the device's transport (TransportSMTP,
	// TransportGraph), its own or its tenant's.
	Transport string
	// SentItemsKeep is how long the copies of its messages stay in the
	// mailbox's Sent Items before the bridge deletes them; zero: kept.
	SentItemsKeep time.Duration
	// Unauthenticated devices (auth: none) are recognised by their source
	// address among Networks, on listeners that allow it.
	Unauthenticated bool
	// MaxPerHour bounds the messages the device may send in any hour; 0
	// for no bound.
	MaxPerHour int
	// MaxQueuedBytes is the device's share of the spool, its own or
	// limits.max_queued_bytes_per_device.
	MaxQueuedBytes int64
	// ExpectEvery is how often the device is expected to send; zero for
	// devices that send when people use them.
	ExpectEvery time.Duration
	// PasswordHash checks the device's password; nil without AUTH.
	PasswordHash passwd.Hash
}

// SenderAllowed is the enforce policy: the mailbox itself, or an address
// in allowed_from. Exchange will still refuse (5.7.60, 5.2.252) an
// allowed_from address the mailbox has no SendAs right for.
func (d *Device) SenderAllowed(a mailaddr.Address) bool {
	return a.Equal(d.Mailbox) || d.AllowedFrom.Match(a)
}

// ViaGraph says whether the device's mail goes through Microsoft Graph.
func (d *Device) ViaGraph() bool { return d.Transport == TransportGraph }

// RecipientAllowed checks allowed_recipients; an empty list allows any.
func (d *Device) RecipientAllowed(a mailaddr.Address) bool {
	return len(d.AllowedRecipients) == 0 || d.AllowedRecipients.Match(a)
}

// AllowedFromNetwork says whether remote is in the device's networks (any
// address when it has none).
func (d *Device) AllowedFromNetwork(remote netip.Addr) bool {
	if len(d.Networks) == 0 {
		return true
	}
	remote = remote.Unmap()
	for _, p := range d.Networks {
		if p.Contains(remote) {
			return true
		}
	}
	return false
}

// SendAs are the addresses the device may send as besides its mailbox,
// which need a SendAs grant on it: with from_policy: enforce, the plain
// addresses in allowed_from (a domain pattern cannot be granted).
func (d *Device) SendAs() []mailaddr.Address {
	if !d.EnforceFrom {
		return nil
	}
	var out []mailaddr.Address
	for _, a := range d.AllowedFrom.Addresses() {
		if !a.Equal(d.Mailbox) {
			out = append(out, a)
		}
	}
	return out
}

// Tenant returns the tenant named name, or nil.
func (inv *Inventory) Tenant(name string) *Tenant {
	for i := range inv.Tenants {
		if inv.Tenants[i].Name == name {
			return &inv.Tenants[i]
		}
	}
	return nil
}

// Device returns the device named name, or nil.
func (inv *Inventory) Device(name string) *Device {
	for i := range inv.Devices {
		if inv.Devices[i].Name == name {
			return &inv.Devices[i]
		}
	}
	return nil
}

// Mailbox is a tenant's sending mailbox, with the transports its devices
// use.
type Mailbox struct {
	Tenant     string
	Address    mailaddr.Address
	Transports []string // smtp, graph: each once, in the devices' order
}

// Mailboxes lists the mailboxes the devices send as, each once per
// tenant (addresses compared without case), in the config's order.
func (inv *Inventory) Mailboxes() []Mailbox {
	var out []Mailbox
	at := map[[2]string]int{}
	for _, d := range inv.Devices {
		k := [2]string{d.Tenant, strings.ToLower(d.Mailbox.String())}
		i, ok := at[k]
		if !ok {
			i = len(out)
			at[k] = i
			out = append(out, Mailbox{Tenant: d.Tenant, Address: d.Mailbox})
		}
		if !containsString(out[i].Transports, d.Transport) {
			out[i].Transports = append(out[i].Transports, d.Transport)
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
