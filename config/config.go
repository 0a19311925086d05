// Package config loads, checks and documents smtpbridge's YAML configuration.
//
// Load reads the file, replaces ${VAR} from the environment in every value,
// refuses unknown keys, fills in defaults, reads the files the config names
// (client secrets, certificates) and reports every problem it finds at once,
// each with the key, its line and how to fix it. It never prints a secret:
// secret values are held in types whose String and Format redact them.
//
// What Load returns is compiled: besides the values as written, every
// address, pattern, network, password hash, TLS version and credential is
// parsed once, here, into the fields marked yaml:"-", and every default is
// applied (this package holds them all). Only package main reads a Config:
// it hands each part of the bridge a small settings type of that part's
// own, so that no other package depends on the file's layout.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/message"
	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	// Hostname is the name the bridge uses in its SMTP greeting and in the
	// EHLO it sends to Exchange Online. Default: the machine's host name.
	Hostname  string     `yaml:"hostname"`
	Listeners []Listener `yaml:"listeners"`
	Tenants   []Tenant   `yaml:"tenants"`
	Devices   []Device   `yaml:"devices"`
	Limits    Limits     `yaml:"limits"`
	Security  Security   `yaml:"security"`
	Spool     Spool      `yaml:"spool"`
	Delivery  Delivery   `yaml:"delivery"`
	Log       Log        `yaml:"log"`
	HTTP      HTTP       `yaml:"http"`
	Metrics   Metrics    `yaml:"metrics"`
	Sandbox   Sandbox    `yaml:"sandbox"`
	Cluster   Cluster    `yaml:"cluster"`
	// TokenCache keeps the tenants' tokens on disk, encrypted, so that a
	// restart needs no new grant.
	TokenCache TokenCache `yaml:"token_cache"`
	// Network is how the bridge reaches Microsoft: a proxy, a CA.
	Network Network `yaml:"network"`

	// Path is the file the config was loaded from.
	Path string `yaml:"-"`
	// lines are the file's line of each key, for problems found after
	// Load (Line).
	lines map[string]int
	// Warnings are problems that do not stop the bridge from starting.
	Warnings []Problem `yaml:"-"`
}

// Listener is one local SMTP endpoint devices connect to.
type Listener struct {
	Name              string `yaml:"name"`
	Address           string `yaml:"address"`
	TLS               string `yaml:"tls"`
	CertFile          string `yaml:"cert_file"`
	KeyFile           string `yaml:"key_file"`
	MinTLSVersion     string `yaml:"min_tls_version"`
	LegacyCiphers     bool   `yaml:"legacy_ciphers"`
	AllowInsecureAuth bool   `yaml:"allow_insecure_auth"`
	// AllowedNetworks, if set, are the only sources this listener talks
	// to; others get 554 5.7.1 at the greeting.
	AllowedNetworks []string `yaml:"allowed_networks"`
	// AllowUnauthenticated lets devices declared with auth: none send
	// without AUTH, recognised by their source address.
	AllowUnauthenticated bool `yaml:"allow_unauthenticated"`

	// Networks is AllowedNetworks parsed.
	Networks []netip.Prefix `yaml:"-"`
	// Certificate is cert_file and key_file, loaded by Load; nil for
	// tls: none.
	Certificate *tls.Certificate `yaml:"-"`
	// MinVersion is MinTLSVersion parsed (a tls.VersionTLS1x).
	MinVersion uint16 `yaml:"-"`
}

// Listener TLS modes.
const (
	TLSNone     = "none"
	TLSStartTLS = "starttls"
	TLSImplicit = "implicit"
)

// Tenant is one Entra ID app registration in one Microsoft 365 tenant.
type Tenant struct {
	Name     string `yaml:"name"`
	TenantID string `yaml:"tenant_id"`
	ClientID string `yaml:"client_id"`
	// Auth is how the tenant's tokens are got: app (the app's own
	// credential, the default) or delegated (a person signs in once per
	// mailbox with smtpbridge tenant login; the app is a public client
	// with no credential).
	Auth             string        `yaml:"auth"`
	ClientSecret     secret.String `yaml:"client_secret"`
	ClientSecretFile string        `yaml:"client_secret_file"`
	// FederatedTokenFile holds an OIDC token that Entra ID accepts as the
	// app's client assertion (workload identity federation), read on each
	// token request: AKS sets AZURE_FEDERATED_TOKEN_FILE to it.
	FederatedTokenFile string `yaml:"federated_token_file"`
	// ManagedIdentity uses the host's Azure managed identity (an Azure
	// VM, App Service, Container Apps, an Azure Arc server): no secret at
	// all. {} is the system-assigned identity. Without client_id the
	// bridge sends as the managed identity itself; with it, the managed
	// identity's token is the client assertion of that app registration,
	// on which it is a federated credential.
	ManagedIdentity *ManagedIdentity `yaml:"managed_identity"`
	// ClientSecretExpires is the secret's expiry date as Entra shows it
	// (YYYY-MM-DD), for warnings and the credential expiry metric.
	ClientSecretExpires string        `yaml:"client_secret_expires"`
	CertificateFile     string        `yaml:"certificate_file"`
	CertificatePassword secret.String `yaml:"certificate_password"`
	// CertificatePasswordFile holds certificate_password, for secrets
	// kept out of the config file.
	CertificatePasswordFile string `yaml:"certificate_password_file"`
	AuthorityHost           string `yaml:"authority_host"`
	SMTPHost                string `yaml:"smtp_host"`
	TokenScope              string `yaml:"token_scope"`
	// Transport is how the tenant's mail reaches Exchange Online: smtp
	// (SMTP AUTH with XOAUTH2, the default) or graph (Microsoft Graph's
	// sendMail, for tenants that keep SMTP AUTH off). A device may
	// override it.
	Transport string `yaml:"transport"`
	// SentItems has the bridge delete its own submissions' copies from
	// the mailboxes' Sent Items (opt in); a device may override it.
	SentItems SentItems `yaml:"sent_items"`
	// GraphHost is Microsoft Graph's endpoint (national clouds differ);
	// its token scope is GraphHost + "/.default".
	GraphHost string `yaml:"graph_host"`
	// GraphTokenScope is the token scope for Graph: graph_host +
	// "/.default" unless set.
	GraphTokenScope string `yaml:"graph_token_scope"`
	// Exchange Online's per-mailbox limits the bridge keeps to; 0 means
	// the default (DefaultMaxConnectionsPerMailbox, DefaultMaxMessagesPerMinute).
	MaxConnectionsPerMailbox int `yaml:"max_connections_per_mailbox"`
	MaxMessagesPerMinute     int `yaml:"max_messages_per_minute"`
	// MaxRecipientsPerDay is the recipients a mailbox may send to in any
	// 24 hours (DefaultMaxRecipientsPerDay, Exchange Online's quota).
	MaxRecipientsPerDay int `yaml:"max_recipients_per_day"`

	// Credential is the secret or certificate, read and checked by Load.
	Credential secret.Credential `yaml:"-"`
	// SecretExpires is ClientSecretExpires parsed (end of that day, UTC).
	SecretExpires time.Time `yaml:"-"`
}

// CredentialExpiry is when the tenant's credential expires: the
// certificate's NotAfter, or client_secret_expires. Zero when unknown.
func (t *Tenant) CredentialExpiry() time.Time {
	if exp := t.Credential.NotAfter(); !exp.IsZero() {
		return exp
	}
	return t.SecretExpires
}

// Device is one legacy device (printer, scanner, application) that logs in
// with a username and password and sends as one mailbox: its entry as
// written in the file, strings unparsed. inventory.Device, the other
// declaration, is the same device compiled (Parsed), which the bridge
// runs; this one exists for the YAML and for the errors that name its
// keys.
type Device struct {
	Name string `yaml:"name"`
	// Auth is password (the default: AUTH PLAIN or LOGIN) or none (the
	// device cannot AUTH; it is recognised by its source address on
	// listeners with allow_unauthenticated).
	Auth              string   `yaml:"auth"`
	Username          string   `yaml:"username"`
	PasswordHash      string   `yaml:"password_hash"`
	Tenant            string   `yaml:"tenant"`
	Mailbox           string   `yaml:"mailbox"`
	FromPolicy        string   `yaml:"from_policy"`
	AllowedFrom       []string `yaml:"allowed_from"`
	AllowedRecipients []string `yaml:"allowed_recipients"`
	Networks          []string `yaml:"networks"`
	// Delivery overrides the global mode and bounce_to for this device.
	Delivery DeviceDelivery `yaml:"delivery"`
	// ExpectEvery says the device sends at least this often (an alarm
	// panel's daily test mail): alert rules and the status page flag it
	// when it stays silent longer. Zero: no expectation.
	ExpectEvery time.Duration `yaml:"expect_every"`
	// MaxMessagesPerHour bounds what the device may send in any hour, so
	// that a stolen device password does not become a spam run. Zero: no
	// bound.
	MaxMessagesPerHour int `yaml:"max_messages_per_hour"`
	// MaxQueuedBytes overrides limits.max_queued_bytes_per_device.
	MaxQueuedBytes int64 `yaml:"max_queued_bytes"`
	// Transport overrides the tenant's transport for this device.
	Transport string `yaml:"transport"`
	// SentItems overrides the tenant's sent_items for this device.
	SentItems *SentItems `yaml:"sent_items"`

	// Parsed is the device as Load compiled it: what the bridge runs.
	Parsed inventory.Device `yaml:"-"`
}

// Transports to Exchange Online.
const (
	TransportSMTP  = inventory.TransportSMTP
	TransportGraph = inventory.TransportGraph
)

// How a tenant's tokens are got (tenants[].auth).
const (
	AuthApp       = "app"
	AuthDelegated = "delegated"
)

// DelegatedScope is the delegated permissions a signed-in mailbox's
// token carries, space-separated: SMTP.Send on Exchange Online
// (outlook.office.com, as Microsoft documents it, for the public cloud's
// outlook.office365.com), or Mail.Send and Mail.ReadWrite on Microsoft
// Graph (a message over 3 MB goes as a draft, which needs the latter).
func (t *Tenant) DelegatedScope(graph bool) string {
	if graph {
		r := strings.TrimSuffix(t.GraphScope(), "/.default")
		return r + "/Mail.Send " + r + "/Mail.ReadWrite"
	}
	resource := strings.TrimSuffix(t.TokenScope, "/.default")
	if resource == "https://outlook.office365.com" {
		resource = "https://outlook.office.com"
	}
	return resource + "/SMTP.Send"
}

// GraphScope is the token scope for the tenant's Microsoft Graph.
func (t *Tenant) GraphScope() string {
	if t.GraphTokenScope != "" {
		return t.GraphTokenScope
	}
	return t.GraphHost + "/.default"
}

// Device authentication.
const (
	AuthPassword = "password"
	AuthNone     = "none"
)

// DeviceDelivery is a device's override of the global delivery settings.
// Empty fields take the global value.
type DeviceDelivery struct {
	Mode     string `yaml:"mode"`
	BounceTo string `yaml:"bounce_to"`
}

// Delivery says when a device gets its reply and how the queue retries.
type Delivery struct {
	// Mode is hybrid, queue or sync (see the Mode constants).
	Mode string `yaml:"mode"`
	// SyncTimeout is how long a hybrid session waits for Exchange before
	// it answers "queued".
	SyncTimeout time.Duration `yaml:"sync_timeout"`
	// RetryInitial and RetryMax bound the exponential backoff between
	// attempts; MaxAge is when the queue gives up.
	RetryInitial time.Duration `yaml:"retry_initial"`
	RetryMax     time.Duration `yaml:"retry_max"`
	MaxAge       time.Duration `yaml:"max_age"`
	// BounceTo receives a delivery status notification for each message
	// that becomes a dead letter. Empty: none is sent.
	BounceTo string `yaml:"bounce_to"`
	// RememberRefusals is how long the bridge remembers, per mailbox,
	// the senders Exchange refused as Send As and the recipients it
	// refused as unknown, and refuses a message that repeats one itself
	// rather than earn the mailbox continuous-error throttling.
	RememberRefusals time.Duration `yaml:"remember_refusals"`
}

// Delivery modes, as message defines them.
const (
	ModeHybrid = message.ModeHybrid
	ModeQueue  = message.ModeQueue
	ModeSync   = message.ModeSync
)

// Sender policies.
const (
	FromRewrite = "rewrite"
	FromEnforce = "enforce"
)

// Limits bound what one message, session and client may take.
type Limits struct {
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
	MaxRecipients   int   `yaml:"max_recipients"`
	// MaxConnections bounds device connections in all; MaxConnectionsPerIP
	// those from one address.
	MaxConnections      int `yaml:"max_connections"`
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// CommandTimeout is the longest wait for a client's next command (or
	// next data during DATA); SessionTimeout the longest a session lasts.
	CommandTimeout time.Duration `yaml:"command_timeout"`
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// MaxErrors is how many error replies a session gets before it is
	// closed.
	MaxErrors int `yaml:"max_errors"`
	// MaxLineLength bounds a command or message line.
	MaxLineLength int `yaml:"max_line_length"`
	// MaxQueuedBytesPerDevice bounds a device's messages in the spool,
	// queued and dead; devices[].max_queued_bytes overrides it.
	MaxQueuedBytesPerDevice int64 `yaml:"max_queued_bytes_per_device"`
	// MaxMemoryBytes is the Go runtime's soft memory limit: 0 for 80% of
	// the container's (cgroup) memory limit, if there is one; -1 for none.
	// GOMEMLIMIT, when set, wins.
	MaxMemoryBytes int64 `yaml:"max_memory_bytes"`
}

// Security is the brute-force defence.
type Security struct {
	// AuthMaxFailures failed logins from one address within AuthWindow
	// block it for AuthBlock.
	AuthMaxFailures int           `yaml:"auth_max_failures"`
	AuthWindow      time.Duration `yaml:"auth_window"`
	AuthBlock       time.Duration `yaml:"auth_block"`
	// AuthExemptNetworks are never blocked.
	AuthExemptNetworks []string `yaml:"auth_exempt_networks"`
	// IPv6Prefix is the IPv6 network counted as one client for blocks,
	// failed logins and max_connections_per_ip.
	IPv6Prefix int `yaml:"ipv6_prefix"`

	// ExemptNetworks is AuthExemptNetworks parsed.
	ExemptNetworks []netip.Prefix `yaml:"-"`
}

// Spool is where accepted messages are kept until Exchange takes them.
type Spool struct {
	Dir string `yaml:"dir"`
	// MaxBytes bounds the messages kept, queued and dead (0: no bound
	// but MinFreeBytes); MinFreeBytes is the free disk space the spool
	// never takes.
	MaxBytes     int64 `yaml:"max_bytes"`
	MinFreeBytes int64 `yaml:"min_free_bytes"`
}

// Log configures the process log and the audit log.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
	// AuditFile, if set, also receives every message event as one JSON
	// line, whatever the level. Reopened on reload (log rotation).
	AuditFile string `yaml:"audit_file"`
}

// Metrics are the settings of /metrics.
type Metrics struct {
	// PerDevice labels the message counters with each device and
	// exports its last-seen time (4 series a device); false keeps them
	// per tenant only, for fleets that want aggregates. Default true.
	PerDevice *bool `yaml:"per_device"`
}

// PerDeviceOn is metrics.per_device with its default.
func (m Metrics) PerDeviceOn() bool { return m.PerDevice == nil || *m.PerDevice }

// HTTP is the listener for metrics and health checks.
type HTTP struct {
	Address string `yaml:"address"`
	// AdminOverTCP serves the admin API (reload, the queue, the blocks,
	// the drain) on Address too, besides the admin socket in spool.dir
	// where it always is. Off by default: any local user can bind
	// Address while the bridge is down.
	AdminOverTCP bool `yaml:"admin_over_tcp"`
	// AllowedHosts are names the admin API accepts in a request's Host
	// besides loopback addresses and localhost.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// Auth, when set, asks for a username and password (HTTP basic
	// authentication) for the status page and /metrics.
	Auth *HTTPAuth `yaml:"auth"`
}

// HTTPAuth is the credential of the status page and /metrics: a password
// hash, or a file holding the password itself (which Prometheus can read
// too, as basic_auth.password_file).
type HTTPAuth struct {
	Username     string `yaml:"username"`
	PasswordHash string `yaml:"password_hash"`
	PasswordFile string `yaml:"password_file"`

	// Hash is PasswordHash parsed; Password the content of PasswordFile.
	Hash     passwd.Hash   `yaml:"-"`
	Password secret.String `yaml:"-"`
}

// Sandbox, when Dir is set, replaces Entra ID and Exchange Online with
// in-process fakes and writes what they receive to Dir as .eml files.
type Sandbox struct {
	Dir string `yaml:"dir"`
}

// TokenCache is where the tokens are kept on disk, and the key that
// encrypts them. Without a key nothing is written.
type TokenCache struct {
	Dir     string `yaml:"dir"`      // default: spool.dir/tokens
	KeyFile string `yaml:"key_file"` // 32 random bytes, raw or as 64 hex digits
	KeyEnv  string `yaml:"key_env"`  // or an environment variable with 64 hex digits

	// Key is the key, read by Load.
	Key secret.String `yaml:"-"`
}

// SentItems keeps a sending mailbox's Sent Items small: Exchange keeps
// a copy of every message submitted, and a scanner's mailbox fills up.
type SentItems struct {
	// Keep is how long the copies of the bridge's own submissions stay
	// in Sent Items before the bridge deletes them through Graph
	// (Mail.ReadWrite); zero keeps them all, as Exchange does.
	Keep Age `yaml:"keep"`
}

// Age is a duration written as Go writes them (36h, 90m) or in days
// (30d).
type Age time.Duration

// UnmarshalYAML reads 30d or a Go duration.
func (a *Age) UnmarshalYAML(n *yaml.Node) error {
	s := strings.TrimSpace(n.Value)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		v, err := strconv.ParseFloat(days, 64)
		if err != nil || v < 0 || v > 3650 {
			return fmt.Errorf("line %d: %q is not a number of days such as 30d", n.Line, s)
		}
		*a = Age(time.Duration(v * float64(24*time.Hour)))
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration: write e.g. 30d or 12h", n.Line, s)
	}
	*a = Age(d)
	return nil
}

// Network is how the bridge reaches Entra ID, Graph and Exchange:
// directly, or through the company's HTTP proxy.
type Network struct {
	// Proxy is an http:// URL; without it, HTTPS_PROXY and NO_PROXY
	// from the environment apply to Entra ID and Graph.
	Proxy string `yaml:"proxy"`
	// ProxyUser and ProxyPasswordFile authenticate to the proxy
	// (Basic); the password is never in the config.
	ProxyUser         string `yaml:"proxy_user"`
	ProxyPasswordFile string `yaml:"proxy_password_file"`
	// CAFile is a PEM file of CAs trusted for Entra ID and Graph beside
	// the system's: a TLS-inspecting proxy's.
	CAFile string `yaml:"ca_file"`
	// SMTPViaProxy sends SMTP to Exchange through the proxy (CONNECT).
	SMTPViaProxy bool `yaml:"smtp_via_proxy"`

	// ProxyPassword is proxy_password_file's content and CAPEM
	// ca_file's, read by Load.
	ProxyPassword secret.String `yaml:"-"`
	CAPEM         string        `yaml:"-"`
}

// ManagedIdentity is a tenant's managed identity.
type ManagedIdentity struct {
	// ClientID picks a user-assigned identity; empty for the
	// system-assigned one.
	ClientID string `yaml:"client_id"`
}

// Cluster shares the mailboxes' limits between replicas through Redis.
// Without redis, the bridge keeps its limits to itself.
type Cluster struct {
	Redis ClusterRedis `yaml:"redis"`
	// Instance is this replica's name in leases and logs; the host name
	// by default.
	Instance string `yaml:"instance"`
	// LeaseTTL is how long a replica's connection slot outlives it when
	// it dies without releasing it (SIGKILL, a lost node).
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// ClusterRedis is how to reach Redis (or Valkey): one address, Sentinel,
// or a Redis Cluster.
type ClusterRedis struct {
	Address           string   `yaml:"address"`
	SentinelAddresses []string `yaml:"sentinel_addresses"`
	MasterName        string   `yaml:"master_name"`
	ClusterAddresses  []string `yaml:"cluster_addresses"`
	Username          string   `yaml:"username"`
	PasswordFile      string   `yaml:"password_file"`
	TLS               bool     `yaml:"tls"`
	// CAFile is a PEM bundle of the CAs Redis's certificate is checked
	// against (with tls), instead of the system's: a private CA's, as
	// cert-manager's for the Helm chart's Redis.
	CAFile    string `yaml:"ca_file"`
	KeyPrefix string `yaml:"key_prefix"`

	// Password is password_file's content, read by Load.
	Password secret.String `yaml:"-"`
	// RootCAs is ca_file's certificates, read by Load; nil without it.
	RootCAs *x509.CertPool `yaml:"-"`
}

// Enabled says whether replicas share their limits.
func (c Cluster) Enabled() bool {
	r := c.Redis
	return r.Address != "" || len(r.SentinelAddresses) > 0 || len(r.ClusterAddresses) > 0
}

// Defaults: each key's default is stated here once, applied by
// applyDefaults (or, for keys that depend on others, where they are
// checked), and restated in the README's configuration tables, which
// TestREADMEDefaults holds to these. Exchange Online's own limits are
// documented in the README.
const (
	DefaultAuthorityHost   = "https://login.microsoftonline.com"
	DefaultSMTPHost        = "smtp.office365.com:587"
	DefaultGraphHost       = "https://graph.microsoft.com"
	DefaultTokenScope      = "https://outlook.office365.com/.default"
	DefaultMinTLSVersion   = "1.2"
	DefaultMaxMessageBytes = 36700160 // Exchange Online's default MaxSendSize, 35 MB
	DefaultMaxRecipients   = 500
	// Session and client limits.
	DefaultMaxConnections      = 200
	DefaultMaxConnectionsPerIP = 20
	DefaultCommandTimeout      = 5 * time.Minute
	DefaultSessionTimeout      = 30 * time.Minute
	DefaultMaxErrors           = 20
	// DefaultMaxLineLength is far above RFC 5322's 998: ERP systems send
	// HTML in one long line and Exchange takes it.
	DefaultMaxLineLength = 64 << 10
	// Brute-force defence.
	DefaultAuthMaxFailures = 5
	DefaultAuthWindow      = 10 * time.Minute
	DefaultAuthBlock       = 15 * time.Minute
	DefaultIPv6Prefix      = 64
	DefaultSpoolDir        = "./spool"
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "json"
	// Spool quotas: one device cannot fill the disk, and the disk keeps
	// room for the system.
	DefaultMaxQueuedBytesPerDevice = 1 << 30
	DefaultMinFreeBytes            = 100 << 20
	DefaultHTTPAddress             = "127.0.0.1:9464"
	DefaultSyncTimeout             = 20 * time.Second
	DefaultRetryInitial            = time.Minute
	DefaultRetryMax                = 30 * time.Minute
	DefaultMaxAge                  = 48 * time.Hour
	DefaultRememberRefusals        = time.Hour
	// Exchange Online's SMTP AUTH limits per mailbox.
	DefaultMaxConnectionsPerMailbox = 3
	DefaultMaxMessagesPerMinute     = 30
	DefaultMaxRecipientsPerDay      = 10000
	// Replicas: the prefix of their keys in Redis, and how long a dead
	// replica's connection slot lasts.
	DefaultRedisKeyPrefix = "smtpbridge:"
	DefaultLeaseTTL       = 15 * time.Second
	// DefaultTokenCacheSubdir is token_cache.dir's default, in spool.dir.
	DefaultTokenCacheSubdir = "tokens"
	// ExchangeMaxMessageBytes is the largest MaxSendSize Exchange Online
	// allows a mailbox (150 MB).
	ExchangeMaxMessageBytes = 157286400
	// CredentialWarnBefore is how long before a credential expires Load
	// starts to warn.
	CredentialWarnBefore = 30 * 24 * time.Hour
)

func (c *Config) applyDefaults() {
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.TLS == "" {
			l.TLS = TLSNone
		}
		if l.MinTLSVersion == "" {
			l.MinTLSVersion = DefaultMinTLSVersion
		}
	}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		if t.AuthorityHost == "" {
			t.AuthorityHost = DefaultAuthorityHost
		}
		if t.SMTPHost == "" {
			t.SMTPHost = DefaultSMTPHost
		}
		if t.TokenScope == "" {
			t.TokenScope = DefaultTokenScope
		}
		if t.Auth == "" {
			t.Auth = AuthApp
		}
		if t.Transport == "" {
			t.Transport = TransportSMTP
		}
		if t.GraphHost == "" {
			t.GraphHost = DefaultGraphHost
		}
		if t.MaxConnectionsPerMailbox == 0 {
			t.MaxConnectionsPerMailbox = DefaultMaxConnectionsPerMailbox
		}
		if t.MaxMessagesPerMinute == 0 {
			t.MaxMessagesPerMinute = DefaultMaxMessagesPerMinute
		}
		setDefault(&t.MaxRecipientsPerDay, DefaultMaxRecipientsPerDay)
	}
	for i := range c.Devices {
		if c.Devices[i].FromPolicy == "" {
			c.Devices[i].FromPolicy = FromRewrite
		}
		if c.Devices[i].Auth == "" {
			c.Devices[i].Auth = AuthPassword
		}
	}
	if c.Limits.MaxMessageBytes == 0 {
		c.Limits.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.Limits.MaxRecipients == 0 {
		c.Limits.MaxRecipients = DefaultMaxRecipients
	}
	lim := &c.Limits
	setDefault(&lim.MaxConnections, DefaultMaxConnections)
	setDefault(&lim.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP)
	setDefault(&lim.CommandTimeout, DefaultCommandTimeout)
	setDefault(&lim.SessionTimeout, DefaultSessionTimeout)
	setDefault(&lim.MaxErrors, DefaultMaxErrors)
	setDefault(&lim.MaxLineLength, DefaultMaxLineLength)
	sec := &c.Security
	setDefault(&sec.AuthMaxFailures, DefaultAuthMaxFailures)
	setDefault(&sec.AuthWindow, DefaultAuthWindow)
	setDefault(&sec.AuthBlock, DefaultAuthBlock)
	setDefault(&sec.IPv6Prefix, DefaultIPv6Prefix)
	if c.Spool.Dir == "" {
		c.Spool.Dir = DefaultSpoolDir
	}
	setDefault(&c.Spool.MinFreeBytes, DefaultMinFreeBytes)
	setDefault(&lim.MaxQueuedBytesPerDevice, DefaultMaxQueuedBytesPerDevice)
	d := &c.Delivery
	if d.Mode == "" {
		d.Mode = ModeHybrid
	}
	if d.SyncTimeout == 0 {
		d.SyncTimeout = DefaultSyncTimeout
	}
	if d.RetryInitial == 0 {
		d.RetryInitial = DefaultRetryInitial
	}
	if d.RetryMax == 0 {
		d.RetryMax = DefaultRetryMax
	}
	if d.MaxAge == 0 {
		d.MaxAge = DefaultMaxAge
	}
	if d.RememberRefusals == 0 {
		d.RememberRefusals = DefaultRememberRefusals
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	if c.HTTP.Address == "" {
		c.HTTP.Address = DefaultHTTPAddress
	}
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Tenant returns the tenant with the given name, or nil.
func (c *Config) Tenant(name string) *Tenant {
	for i := range c.Tenants {
		if c.Tenants[i].Name == name {
			return &c.Tenants[i]
		}
	}
	return nil
}

// Device returns the device with the given name, or nil.
func (c *Config) Device(name string) *Device {
	for i := range c.Devices {
		if c.Devices[i].Name == name {
			return &c.Devices[i]
		}
	}
	return nil
}

// Inventory is the config's listeners, tenants and devices, compiled: the
// one description of them the bridge's parts take.
func (c *Config) Inventory() inventory.Inventory {
	var inv inventory.Inventory
	for _, l := range c.Listeners {
		inv.Listeners = append(inv.Listeners, l.Name)
	}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		inv.Tenants = append(inv.Tenants, inventory.Tenant{Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID,
			Credential: t.Credential, CredentialExpiry: t.CredentialExpiry(), SMTPHost: t.SMTPHost, Transport: t.Transport,
			RecipientsPerDay: t.MaxRecipientsPerDay})
	}
	for _, d := range c.Devices {
		inv.Devices = append(inv.Devices, d.Parsed)
	}
	return inv
}
