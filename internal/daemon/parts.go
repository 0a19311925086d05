package daemon

import (
	"crypto/x509"
	"time"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/doctor"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/sandbox"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	"github.com/smtpbridge/smtpbridge/upstream/egress"
	"github.com/smtpbridge/smtpbridge/upstream/graph"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

// What each part of the bridge takes from a config, at start and on each
// reload: the config is read here, and every part gets a settings type of
// its own.

// Microsoft is where the tenants' Entra ID, Exchange Online and Graph
// are. The zero value is each tenant's own configured hosts and the
// system's trust store (which honours SSL_CERT_FILE); sandbox mode and
// the tests point every tenant at fakes on loopback.
type Microsoft struct {
	AuthorityHost, SMTPHost, GraphHost string
	// GraphScope is the token scope for Graph when GraphHost is set.
	GraphScope string
	// RootCAs trusts the fakes' certificates; nil: the system's.
	RootCAs *x509.CertPool
}

// SandboxHosts is where a running sandbox's fakes are.
func SandboxHosts(sb *sandbox.Sandbox) Microsoft {
	return Microsoft{AuthorityHost: sb.AuthorityHost(), SMTPHost: sb.SMTPHost(), GraphHost: sb.GraphHost(),
		GraphScope: sb.GraphScope(), RootCAs: sb.RootCAs()}
}

// StartSandbox starts the in-process fakes for a sandbox config (one
// with sandbox.dir), so that a command other than serve (doctor,
// send-test) sees the same fake world; for any other config it returns
// the zero Microsoft and starts nothing.
func StartSandbox(cfg *config.Config) (Microsoft, func(), error) {
	if cfg.Sandbox.Dir == "" {
		return Microsoft{}, func() {}, nil
	}
	sb, err := sandbox.Start(cfg.Sandbox.Dir, cfg.Inventory())
	if err != nil {
		return Microsoft{}, nil, err
	}
	return SandboxHosts(sb), func() { sb.Close() }, nil
}

func pick(override, configured string) string {
	if override != "" {
		return override
	}
	return configured
}

// Inventory is the config's inventory, with the SMTP hosts the bridge
// really uses.
func (ms Microsoft) Inventory(cfg *config.Config) inventory.Inventory {
	inv := cfg.Inventory()
	for i := range inv.Tenants {
		inv.Tenants[i].SMTPHost = pick(ms.SMTPHost, inv.Tenants[i].SMTPHost)
	}
	return inv
}

// TokenTenant is what the token store needs of tenant t, for SMTP's
// scope: the tenant's credential, its authority and the token cache. The
// cache is for the real Entra ID's tokens only: with the authority
// pointed at a fake (the sandbox, tests), nothing is cached on disk.
func (ms Microsoft) TokenTenant(cfg *config.Config, t *config.Tenant) tokenstore.Tenant {
	var cache *tokenstore.Cache
	if k := cfg.TokenCache.Key.Value(); k != "" && ms.AuthorityHost == "" {
		cache = &tokenstore.Cache{Dir: cfg.TokenCache.Dir, Key: []byte(k)}
	}
	return tokenstore.Tenant{Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID, Credential: t.Credential,
		AuthorityHost: pick(ms.AuthorityHost, t.AuthorityHost), Scope: t.TokenScope, DelegatedScope: t.DelegatedScope(false),
		RootCAs: ms.RootCAs, Egress: EgressOf(cfg), Cache: cache}
}

// EgressOf is the config's way out to Microsoft (network).
func EgressOf(cfg *config.Config) egress.Settings {
	n := cfg.Network
	return egress.Settings{Proxy: n.Proxy, User: n.ProxyUser, Password: n.ProxyPassword, CAPEM: n.CAPEM, SMTPViaProxy: n.SMTPViaProxy}
}

// GraphTokenTenant is TokenTenant with Graph's token scope: a Graph
// token is its own grant, cached for its lifetime beside the SMTP one.
func (ms Microsoft) GraphTokenTenant(cfg *config.Config, t *config.Tenant) tokenstore.Tenant {
	tt := ms.TokenTenant(cfg, t)
	tt.Scope, tt.DelegatedScope = pick(ms.GraphScope, t.GraphScope()), t.DelegatedScope(true)
	return tt
}

// Route is where tenant t's SMTP submissions go.
func (ms Microsoft) Route(cfg *config.Config, t *config.Tenant) upsmtp.Route {
	e := EgressOf(cfg)
	e.CAPEM = "" // the proxy's CA is for Entra ID and Graph: SMTP's TLS runs end to end
	return upsmtp.Route{Host: pick(ms.SMTPHost, t.SMTPHost), RootCAs: ms.RootCAs, Egress: e}
}

// GraphRoute is where tenant t's Graph requests go.
func (ms Microsoft) GraphRoute(cfg *config.Config, t *config.Tenant) graph.Route {
	return graph.Route{Host: pick(ms.GraphHost, t.GraphHost), RootCAs: ms.RootCAs, Egress: EgressOf(cfg)}
}

// Parts are the settings of each part of the message's path, from a
// config (PartsOf) or, in a part's tests, built by hand.
type Parts struct {
	Hostname string
	// Inventory is the devices and tenants; the device side's
	// directory is made from its devices.
	Inventory inventory.Inventory
	Listeners []bridge.Listener
	Limits    bridge.Limits
	// DocumentedPasswords lets devices log in with the sandbox's
	// documented password (sandbox mode only).
	DocumentedPasswords bool
	Guard               guard.Settings
	Queue               queue.Settings
	Spool               spool.Quota
	// Tokens and GraphTokens are the tenants as the token stores need
	// them, for SMTP's and Graph's scopes.
	Tokens, GraphTokens []tokenstore.Tenant
	// MailboxLimits are each tenant's per-mailbox limits.
	MailboxLimits map[string]upstream.Limits
	Routes        map[string]upsmtp.Route
	GraphRoutes   map[string]graph.Route
	// RememberRefusals is delivery.remember_refusals.
	RememberRefusals time.Duration
}

// PartsOf is what each part takes from cfg, with Microsoft where ms says.
func PartsOf(cfg *config.Config, ms Microsoft) Parts {
	p := Parts{Hostname: cfg.Hostname, Inventory: ms.Inventory(cfg), Listeners: listeners(cfg.Listeners),
		DocumentedPasswords: cfg.Sandbox.Dir != "", Guard: guardSettings(cfg),
		MailboxLimits: map[string]upstream.Limits{}, Routes: map[string]upsmtp.Route{}, GraphRoutes: map[string]graph.Route{},
		RememberRefusals: cfg.Delivery.RememberRefusals}
	l := cfg.Limits
	p.Limits = bridge.Limits{MaxMessageBytes: l.MaxMessageBytes, MaxRecipients: l.MaxRecipients, CommandTimeout: l.CommandTimeout,
		SessionTimeout: l.SessionTimeout, MaxErrors: l.MaxErrors, MaxLineLength: l.MaxLineLength}
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		p.Tokens = append(p.Tokens, ms.TokenTenant(cfg, t))
		p.GraphTokens = append(p.GraphTokens, ms.GraphTokenTenant(cfg, t))
		p.MailboxLimits[t.Name] = upstream.Limits{Connections: t.MaxConnectionsPerMailbox, PerMinute: t.MaxMessagesPerMinute,
			RecipientsPerDay: t.MaxRecipientsPerDay}
		p.Routes[t.Name], p.GraphRoutes[t.Name] = ms.Route(cfg, t), ms.GraphRoute(cfg, t)
	}
	d := cfg.Delivery
	p.Queue = queue.Settings{RetryInitial: d.RetryInitial, RetryMax: d.RetryMax, MaxAge: d.MaxAge, SyncTimeout: d.SyncTimeout,
		BounceTo:    byDevice(p.Inventory, func(dev *inventory.Device) string { return dev.BounceTo }, d.BounceTo),
		Concurrency: func(tenant string) int { return p.MailboxLimits[tenant].Connections }}
	p.Spool = spool.Quota{MaxBytes: cfg.Spool.MaxBytes, MinFreeBytes: cfg.Spool.MinFreeBytes,
		DeviceMaxBytes: byDevice(p.Inventory, func(dev *inventory.Device) int64 { return dev.MaxQueuedBytes }, cfg.Limits.MaxQueuedBytesPerDevice)}
	return p
}

// byDevice looks a device's setting up by its name; a device since
// removed from the config (a message queued before a reload) gets the
// global one.
func byDevice[T any](inv inventory.Inventory, of func(*inventory.Device) T, global T) func(string) T {
	m := map[string]T{}
	for i := range inv.Devices {
		m[inv.Devices[i].Name] = of(&inv.Devices[i])
	}
	return func(device string) T {
		if v, ok := m[device]; ok {
			return v
		}
		return global
	}
}

func guardSettings(cfg *config.Config) guard.Settings {
	sec := cfg.Security
	return guard.Settings{MaxFailures: sec.AuthMaxFailures, Window: sec.AuthWindow, Block: sec.AuthBlock, Exempt: sec.ExemptNetworks,
		IPv6Prefix: sec.IPv6Prefix, MaxConnections: cfg.Limits.MaxConnections, MaxConnectionsPerIP: cfg.Limits.MaxConnectionsPerIP}
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

// DoctorTenants is what doctor and exchange-script check: each tenant
// with the devices that send through it.
func DoctorTenants(cfg *config.Config, ms Microsoft) []doctor.Tenant {
	inv := ms.Inventory(cfg)
	var out []doctor.Tenant
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		dt := doctor.Tenant{Tenant: ms.TokenTenant(cfg, t), SecretExpires: t.SecretExpires, SMTP: ms.Route(cfg, t)}
		gt := ms.GraphTokenTenant(cfg, t)
		dt.Graph = &doctor.Graph{Scope: gt.Scope, DelegatedScope: gt.DelegatedScope, Route: ms.GraphRoute(cfg, t)}
		for _, d := range inv.Devices {
			if d.Tenant == t.Name {
				dt.Devices = append(dt.Devices, d)
			}
		}
		out = append(out, dt)
	}
	return out
}
