package main

import (
	"crypto/x509"
	"strings"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/doctor"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/sandbox"
	"github.com/smtpbridge/smtpbridge/metrics"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/status"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

// What each part of the bridge takes from a config, at start and on each
// reload: the config is read here, and every part gets a settings type of
// its own.

// microsoft is where the tenants' Entra ID and Exchange Online are: as
// configured, or in sandbox mode the in-process fakes.
type microsoft struct {
	sb *sandbox.Sandbox // nil in production
}

func (ms microsoft) authorityHost(t *config.Tenant) string {
	if ms.sb != nil {
		return ms.sb.AuthorityHost()
	}
	return t.AuthorityHost
}

func (ms microsoft) smtpHost(t *config.Tenant) string {
	if ms.sb != nil {
		return ms.sb.SMTPHost()
	}
	return t.SMTPHost
}

// roots is the trust store for Entra and Exchange: nil (the system's,
// which honours SSL_CERT_FILE) in production.
func (ms microsoft) roots() *x509.CertPool {
	if ms.sb != nil {
		return ms.sb.RootCAs()
	}
	return nil
}

// tokenTenant is what the token store needs of tenant t, for SMTP's
// scope: the tenant's credential, its authority and the token cache.
func (ms microsoft) tokenTenant(cfg *config.Config, t *config.Tenant) tokenstore.Tenant {
	var cache *tokenstore.Cache
	if k := cfg.TokenCache.Key.Value(); k != "" && ms.sb == nil {
		cache = &tokenstore.Cache{Dir: cfg.TokenCache.Dir, Key: []byte(k)}
	}
	return tokenstore.Tenant{Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID, Credential: t.Credential,
		AuthorityHost: ms.authorityHost(t), Scope: t.TokenScope, DelegatedScope: t.DelegatedScope(false),
		RootCAs: ms.roots(), Cache: cache}
}

func (ms microsoft) tokenTenants(cfg *config.Config) []tokenstore.Tenant {
	out := make([]tokenstore.Tenant, 0, len(cfg.Tenants))
	for i := range cfg.Tenants {
		out = append(out, ms.tokenTenant(cfg, &cfg.Tenants[i]))
	}
	return out
}

func (ms microsoft) route(t *config.Tenant) upsmtp.Route {
	return upsmtp.Route{Host: ms.smtpHost(t), RootCAs: ms.roots()}
}

func (ms microsoft) routes(cfg *config.Config) map[string]upsmtp.Route {
	out := map[string]upsmtp.Route{}
	for i := range cfg.Tenants {
		out[cfg.Tenants[i].Name] = ms.route(&cfg.Tenants[i])
	}
	return out
}

// sandboxSetup is what the sandbox registers: every tenant's app and
// every device's mailbox.
func sandboxSetup(cfg *config.Config) ([]sandbox.Tenant, []sandbox.Mailbox) {
	var ts []sandbox.Tenant
	for _, t := range cfg.Tenants {
		ts = append(ts, sandbox.Tenant{Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID, Credential: t.Credential})
	}
	var ms []sandbox.Mailbox
	for _, d := range cfg.Devices {
		ms = append(ms, sandbox.Mailbox{Address: d.Mailbox, Tenant: d.Tenant, AllowedFrom: d.AllowedFrom})
	}
	return ts, ms
}

// mailboxTransports lists the mailboxes tenant's devices send as, each
// once, in the config's order, with the transports (smtp, graph) their
// devices use, by lower-case address.
func mailboxTransports(cfg *config.Config, tenant string) (mailboxes []string, transports map[string]map[string]bool) {
	transports = map[string]map[string]bool{}
	for _, d := range cfg.Devices {
		if d.Tenant != tenant {
			continue
		}
		k := strings.ToLower(d.Mailbox)
		if transports[k] == nil {
			mailboxes, transports[k] = append(mailboxes, d.Mailbox), map[string]bool{}
		}
		transports[k][d.Parsed.Transport] = true
	}
	return mailboxes, transports
}

func mailboxLimits(cfg *config.Config) map[string]upstream.Limits {
	out := map[string]upstream.Limits{}
	for _, t := range cfg.Tenants {
		out[t.Name] = upstream.Limits{Connections: t.MaxConnectionsPerMailbox, PerMinute: t.MaxMessagesPerMinute,
			RecipientsPerDay: t.MaxRecipientsPerDay}
	}
	return out
}

func queueSettings(cfg *config.Config) queue.Settings {
	d := cfg.Delivery
	limits := mailboxLimits(cfg)
	return queue.Settings{RetryInitial: d.RetryInitial, RetryMax: d.RetryMax, MaxAge: d.MaxAge,
		SyncTimeout: d.SyncTimeout, BounceTo: bounceTo(cfg),
		Concurrency: func(tenant string) int { return limits[tenant].Connections }}
}

// bounceTo resolves a device's bounce address, its own or the global one.
func bounceTo(cfg *config.Config) func(string) string {
	byName := map[string]string{}
	for _, d := range cfg.Devices {
		byName[d.Name] = d.Parsed.BounceTo
	}
	global := cfg.Delivery.BounceTo
	return func(device string) string {
		if b, ok := byName[device]; ok {
			return b
		}
		return global // a device since removed from the config
	}
}

func spoolQuota(cfg *config.Config) spool.Quota {
	byDevice := map[string]int64{}
	for _, d := range cfg.Devices {
		byDevice[d.Name] = d.Parsed.MaxQueuedBytes
	}
	global := cfg.Limits.MaxQueuedBytesPerDevice
	return spool.Quota{MaxBytes: cfg.Spool.MaxBytes, MinFreeBytes: cfg.Spool.MinFreeBytes,
		DeviceMaxBytes: func(device string) int64 {
			if n, ok := byDevice[device]; ok {
				return n
			}
			return global // a device since removed from the config
		}}
}

func guardSettings(cfg *config.Config) guard.Settings {
	sec := cfg.Security
	return guard.Settings{MaxFailures: sec.AuthMaxFailures, Window: sec.AuthWindow, Block: sec.AuthBlock, Exempt: sec.ExemptNetworks,
		IPv6Prefix:     sec.IPv6Prefix,
		MaxConnections: cfg.Limits.MaxConnections, MaxConnectionsPerIP: cfg.Limits.MaxConnectionsPerIP}
}

// serverSettings is the device side's part: listeners, limits, devices.
func serverSettings(cfg *config.Config) (bridge.Settings, error) {
	dir, err := bridge.NewDirectory(devices(cfg))
	if err != nil {
		return bridge.Settings{}, err
	}
	if cfg.Sandbox.Dir != "" {
		dir.AllowDocumentedPasswords()
	}
	l := cfg.Limits
	return bridge.Settings{Listeners: listeners(cfg.Listeners), Directory: dir, Limits: bridge.Limits{
		MaxMessageBytes: l.MaxMessageBytes, MaxRecipients: l.MaxRecipients, CommandTimeout: l.CommandTimeout,
		SessionTimeout: l.SessionTimeout, MaxErrors: l.MaxErrors, MaxLineLength: l.MaxLineLength,
	}}, nil
}

func listeners(ls []config.Listener) []bridge.Listener {
	out := make([]bridge.Listener, 0, len(ls))
	for _, l := range ls {
		out = append(out, bridge.Listener{Name: l.Name, Address: l.Address, TLS: bridge.TLSMode(l.TLS),
			Certificate: l.Certificate, MinTLSVersion: l.MinVersion, LegacyCiphers: l.LegacyCiphers,
			AllowInsecureAuth: l.AllowInsecureAuth, Networks: l.Networks, AllowUnauthenticated: l.AllowUnauthenticated})
	}
	return out
}

func devices(cfg *config.Config) []bridge.Device {
	out := make([]bridge.Device, 0, len(cfg.Devices))
	for _, d := range cfg.Devices {
		p := d.Parsed
		out = append(out, bridge.Device{Name: d.Name, Username: d.Username, Tenant: d.Tenant, Mailbox: p.Mailbox,
			EnforceFrom: d.FromPolicy == config.FromEnforce, AllowedFrom: p.AllowedFrom, AllowedRecipients: p.AllowedRecipients,
			Networks: p.Networks, Mode: p.Mode, Unauthenticated: d.Auth == config.AuthNone, MaxPerHour: d.MaxMessagesPerHour,
			PasswordHash: p.PasswordHash})
	}
	return out
}

func metricsInventory(cfg *config.Config) metrics.Inventory {
	var inv metrics.Inventory
	for _, l := range cfg.Listeners {
		inv.Listeners = append(inv.Listeners, l.Name)
	}
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		inv.Tenants = append(inv.Tenants, metrics.Tenant{Name: t.Name, CredentialExpiry: t.CredentialExpiry(),
			RecipientsPerDay: t.MaxRecipientsPerDay})
	}
	for _, d := range cfg.Devices {
		inv.Devices = append(inv.Devices, metrics.Device{Name: d.Name, Tenant: d.Tenant, Mailbox: d.Mailbox, ExpectEvery: d.ExpectEvery})
	}
	return inv
}

func (ms microsoft) statusInventory(cfg *config.Config) status.Inventory {
	var inv status.Inventory
	for _, d := range cfg.Devices {
		inv.Devices = append(inv.Devices, status.Device{Name: d.Name, Tenant: d.Tenant, Mailbox: d.Mailbox,
			Mode: d.Parsed.Mode, ExpectEvery: d.ExpectEvery})
	}
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		cred := "client secret"
		switch {
		case t.Credential.IsCertificate():
			cred = "certificate"
		case t.Credential.FederatedTokenFile() != "":
			cred = "federated token"
		}
		if t.Credential.Delegated() {
			cred = status.CredentialDelegated
		}
		if _, ok := t.Credential.ManagedIdentity(); ok {
			cred = "managed identity"
			if t.ClientID != "" {
				cred = "managed identity as federated credential"
			}
		}
		inv.Tenants = append(inv.Tenants, status.Tenant{Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID,
			Credential: cred, CredentialExpiry: t.CredentialExpiry(), SMTPHost: ms.smtpHost(t)})
	}
	return inv
}

// doctorTenants is what doctor and exchange-script check: each tenant
// with the devices that send through it.
func (ms microsoft) doctorTenants(cfg *config.Config) []doctor.Tenant {
	var out []doctor.Tenant
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		dt := doctor.Tenant{Tenant: ms.tokenTenant(cfg, t), SecretExpires: t.SecretExpires, SMTP: ms.route(t)}
		scope := t.GraphScope()
		if ms.sb != nil {
			scope = ms.sb.GraphScope()
		}
		dt.Graph = &doctor.Graph{Scope: scope, DelegatedScope: t.DelegatedScope(true), Route: ms.graphRoutes(cfg)[t.Name]}
		for _, d := range cfg.Devices {
			if d.Tenant == t.Name {
				dt.Devices = append(dt.Devices, doctor.Device{Name: d.Name, Mailbox: d.Mailbox,
					EnforceFrom: d.FromPolicy == config.FromEnforce, AllowedFrom: d.AllowedFrom,
					Graph: d.Parsed.Transport == config.TransportGraph})
			}
		}
		out = append(out, dt)
	}
	return out
}
