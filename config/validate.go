package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/secret"
)

var (
	guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
)

// now is the clock used for certificate expiry checks; tests replace it.
var now = time.Now

func (l *loader) validate(c *Config) {
	if c.Hostname != "" {
		if err := mailaddr.CheckDomain(c.Hostname); err != nil {
			l.errorf("hostname", "%q is not a host name", c.Hostname)
		}
	}
	l.validateListeners(c)
	l.validateTenants(c)
	l.validateDevices(c)
	l.validateDelivery(c)
	l.validateGlobals(c)
	l.validateNetwork(c)
}

// validateNetwork checks network: the proxy's URL (no credential in it),
// its password file, the CA file.
func (l *loader) validateNetwork(c *Config) {
	n := &c.Network
	if n.Proxy != "" {
		u, err := url.Parse(n.Proxy)
		switch {
		case err != nil || u.Host == "" || u.Scheme != "http":
			l.errorf("network.proxy", "%q is not an http:// proxy URL; write e.g. http://proxy.example.com:3128 (the connection to the proxy is plain HTTP; TLS to Microsoft runs inside it)", n.Proxy)
		case u.User != nil:
			l.errorf("network.proxy", "the URL holds a user or password; write the user in network.proxy_user and the password in a file named by network.proxy_password_file")
		case u.Path != "" && u.Path != "/" || u.RawQuery != "":
			l.errorf("network.proxy", "%q has a path or query; a proxy URL is only http://host:port", n.Proxy)
		}
	}
	if (n.ProxyUser != "") != (n.ProxyPasswordFile != "") {
		l.errorf("network.proxy_user", "set both network.proxy_user and network.proxy_password_file, or neither")
	}
	if n.ProxyUser != "" && n.Proxy == "" {
		l.errorf("network.proxy_user", "a proxy user needs network.proxy (the environment's HTTPS_PROXY carries its own credential)")
	}
	if n.ProxyPasswordFile != "" {
		n.ProxyPasswordFile = l.path(n.ProxyPasswordFile)
		if data, err := os.ReadFile(n.ProxyPasswordFile); err != nil {
			l.errorf("network.proxy_password_file", "%v", err)
		} else {
			l.checkSecretFile("network.proxy_password_file", n.ProxyPasswordFile)
			n.ProxyPassword = secret.String(strings.TrimRight(string(data), "\r\n"))
		}
	}
	if n.CAFile != "" {
		n.CAFile = l.path(n.CAFile)
		if data, err := os.ReadFile(n.CAFile); err != nil {
			l.errorf("network.ca_file", "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(data) {
			l.errorf("network.ca_file", "%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", n.CAFile)
		} else {
			n.CAPEM = string(data)
		}
	}
	if n.SMTPViaProxy && n.Proxy == "" && os.Getenv("HTTPS_PROXY") == "" && os.Getenv("https_proxy") == "" {
		l.errorf("network.smtp_via_proxy", "no proxy to go through: set network.proxy (or HTTPS_PROXY in the service's environment)")
	}
}

// checkPort says what is wrong with a listener's port, "" if nothing:
// a number from 1 to 65535, or a service name the system knows (smtp).
func checkPort(port string) string {
	n, err := strconv.Atoi(port)
	if err != nil {
		if _, err := net.LookupPort("tcp", port); err != nil {
			return fmt.Sprintf("%q is neither a port number nor a service name this host knows; write a number such as 2525", port)
		}
		return ""
	}
	if n < 1 || n > 65535 {
		return fmt.Sprintf("port %d is out of range: use 1 to 65535", n)
	}
	return ""
}

func (l *loader) validateListeners(c *Config) {
	if len(c.Listeners) == 0 {
		l.errorf("listeners", "at least one listener is required, e.g. {name: lan, address: \"0.0.0.0:2525\", tls: starttls, ...}")
	}
	names := map[string]bool{}
	addrs := map[string]string{}
	for i := range c.Listeners {
		ls := &c.Listeners[i]
		k := fmt.Sprintf("listeners[%d]", i)
		l.checkName(k+".name", ls.Name, names)
		if ls.Address == "" {
			l.errorf(k+".address", "required, e.g. \"0.0.0.0:2525\" (all interfaces) or \"127.0.0.1:2525\"")
		} else if _, port, err := net.SplitHostPort(ls.Address); err != nil || port == "" {
			l.errorf(k+".address", "%q is not host:port; write e.g. \"0.0.0.0:2525\" or \"127.0.0.1:587\"", ls.Address)
		} else if msg := checkPort(port); msg != "" {
			l.errorf(k+".address", "%q: %s", ls.Address, msg)
		} else if other, dup := addrs[ls.Address]; dup {
			l.errorf(k+".address", "%s is already used by listener %q", ls.Address, other)
		} else {
			addrs[ls.Address] = ls.Name
		}
		switch ls.TLS {
		case TLSNone:
			if ls.CertFile != "" || ls.KeyFile != "" {
				l.warnf(k+".tls", "cert_file/key_file are set but tls is none; they are ignored")
			}
			if !ls.AllowInsecureAuth {
				l.errorf(k+".tls", "tls is none and allow_insecure_auth is false, so no device could ever log in here; "+
					"set tls: starttls (or implicit) with cert_file and key_file, or allow_insecure_auth: true for a trusted LAN")
			}
		case TLSStartTLS, TLSImplicit:
			l.checkListenerCert(k, ls)
		default:
			l.errorf(k+".tls", "%q is not one of none, starttls, implicit", ls.TLS)
		}
		if v, err := ParseTLSVersion(ls.MinTLSVersion); err != nil {
			l.errorf(k+".min_tls_version", "%v", err)
		} else {
			ls.MinVersion = v
		}
		ls.Networks = l.networks(k+".allowed_networks", ls.AllowedNetworks)
		l.checkExposure(k, ls)
	}
}

// networks parses a list of CIDRs or addresses, reporting each bad one.
func (l *loader) networks(key string, list []string) []netip.Prefix {
	var out []netip.Prefix
	for j, n := range list {
		p, err := ParseNetwork(n)
		if err != nil {
			l.errorf(fmt.Sprintf("%s[%d]", key, j), "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// checkExposure warns when a legacy or unauthenticated switch is on for a
// listener that public addresses can reach: bound to all interfaces or to
// a public address, and not limited to private allowed_networks.
func (l *loader) checkExposure(k string, ls *Listener) {
	host, _, err := net.SplitHostPort(ls.Address)
	if err != nil {
		return
	}
	public := host == "" || host == "0.0.0.0" || host == "::"
	if a, err := netip.ParseAddr(host); err == nil && !public {
		public = !Private(a)
	}
	if !public {
		return
	}
	if len(ls.Networks) > 0 && !slices.ContainsFunc(ls.Networks, func(p netip.Prefix) bool { return !PrivatePrefix(p) }) {
		return // only private sources may connect
	}
	for _, sw := range []struct {
		on       bool
		key, why string
	}{
		{ls.AllowInsecureAuth, "allow_insecure_auth", "device passwords cross the network in clear text"},
		{ls.LegacyCiphers, "legacy_ciphers", "TLS without forward secrecy and with CBC and 3DES suites"},
		{ls.AllowUnauthenticated, "allow_unauthenticated", "mail is accepted by source address alone"},
	} {
		if sw.on {
			l.warnf(k+"."+sw.key, "is on for a listener on %s, which may be reachable from outside private address ranges (%s); "+
				"bind it to a LAN address or set allowed_networks to your device subnets", ls.Address, sw.why)
		}
	}
}

// Private reports whether a is loopback, link-local, RFC 1918, RFC 6598
// (carrier-grade NAT) or IPv6 unique local: an address the Internet cannot
// reach directly.
func Private(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || cgnat.Contains(a)
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// PrivatePrefix reports whether every address of p is private.
func PrivatePrefix(p netip.Prefix) bool {
	p = p.Masked()
	if p.Bits() == 0 || !Private(p.Addr()) {
		return false
	}
	last := p.Addr().AsSlice()
	for i := p.Bits(); i < len(last)*8; i++ {
		last[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(last)
	return Private(a)
}

// tlsCertHint is the command that makes a missing listener certificate,
// when its files are named as tls-cert names them (DIR/NAME.crt and
// DIR/NAME.key).
func tlsCertHint(certFile, keyFile string, err error) string {
	if !errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	dir, base := filepath.Split(certFile)
	name, ok := strings.CutSuffix(base, ".crt")
	if !ok || name == "" || keyFile != filepath.Join(dir, name+".key") {
		return "; make them (PEM) or set cert_file and key_file to yours"
	}
	return fmt.Sprintf("; make them with: smtpbridge tls-cert --host %s --out %s", name, filepath.Clean(dir))
}

func (l *loader) checkListenerCert(k string, ls *Listener) {
	if ls.CertFile == "" || ls.KeyFile == "" {
		l.errorf(k, "tls: %s needs cert_file and key_file (PEM)", ls.TLS)
		return
	}
	ls.CertFile, ls.KeyFile = l.path(ls.CertFile), l.path(ls.KeyFile)
	pair, err := tls.LoadX509KeyPair(ls.CertFile, ls.KeyFile)
	if err != nil {
		l.errorf(k+".cert_file", "cannot load the certificate and key: %v%s", err, tlsCertHint(ls.CertFile, ls.KeyFile, err))
		return
	}
	ls.Certificate = &pair
	switch leaf := pair.Leaf; {
	case leaf == nil:
	case now().After(leaf.NotAfter):
		l.warnf(k+".cert_file", "the certificate expired on %s; devices that check it will refuse to connect (smtpbridge tls-cert makes a new one)", leaf.NotAfter.Format(time.DateOnly))
	case now().Add(CredentialWarnBefore).After(leaf.NotAfter):
		l.warnf(k+".cert_file", "the certificate expires on %s; make a new one before then (smtpbridge tls-cert) and give devices that pin it the new fingerprint", leaf.NotAfter.Format(time.DateOnly))
	}
}

// ParseTLSVersion parses "1.0" .. "1.3".
func ParseTLSVersion(s string) (uint16, error) {
	switch s {
	case "1.0":
		return tls.VersionTLS10, nil
	case "1.1":
		return tls.VersionTLS11, nil
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q is not one of \"1.0\", \"1.1\", \"1.2\", \"1.3\"", s)
}

func (l *loader) validateTenants(c *Config) {
	if len(c.Tenants) == 0 {
		l.errorf("tenants", "at least one tenant (an Entra ID app registration) is required")
	}
	names := map[string]bool{}
	for i := range c.Tenants {
		t := &c.Tenants[i]
		k := fmt.Sprintf("tenants[%d]", i)
		l.checkName(k+".name", t.Name, names)
		l.checkSentItems(k+".sent_items.keep", t.SentItems)
		switch {
		case t.TenantID == "":
			l.errorf(k+".tenant_id", "required: the Directory (tenant) ID from the app registration's Overview page, or a verified domain")
		case strings.EqualFold(t.TenantID, "common"), strings.EqualFold(t.TenantID, "organizations"), strings.EqualFold(t.TenantID, "consumers"):
			l.errorf(k+".tenant_id", "%q does not work for app-only tokens; use the Directory (tenant) ID or a verified domain", t.TenantID)
		case !guidRE.MatchString(t.TenantID) && mailaddr.CheckDomain(t.TenantID) != nil:
			l.errorf(k+".tenant_id", "%q is neither a GUID nor a domain name", t.TenantID)
		}
		if t.Auth != AuthApp && t.Auth != AuthDelegated {
			l.errorf(k+".auth", "%q: use app (the app registration's own credential, the default) or delegated (a person signs in for each mailbox with smtpbridge tenant login)", t.Auth)
		}
		switch {
		case t.ManagedIdentity != nil && t.ClientID != "" && !guidRE.MatchString(t.ClientID):
			l.errorf(k+".client_id", "%q is not the Application (client) ID, a GUID; with managed_identity, client_id names the app registration whose federated credential the managed identity is (omit it to send as the managed identity itself)", t.ClientID)
		case t.ManagedIdentity != nil:
			if id := t.ManagedIdentity.ClientID; id != "" && !guidRE.MatchString(id) {
				l.errorf(k+".managed_identity.client_id", "%q is not a user-assigned identity's client ID, a GUID", id)
			}
		case !guidRE.MatchString(t.ClientID):
			l.errorf(k+".client_id", "%q is not the Application (client) ID, a GUID like 11111111-2222-3333-4444-555555555555", t.ClientID)
		}
		l.loadCredential(k, t)
		if u, err := url.Parse(t.AuthorityHost); err != nil || u.Scheme != "https" || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
			l.errorf(k+".authority_host", "%q must be an https URL with no path, e.g. %s", t.AuthorityHost, DefaultAuthorityHost)
		} else {
			t.AuthorityHost = "https://" + u.Host
		}
		if host, port, err := net.SplitHostPort(t.SMTPHost); err != nil || host == "" {
			l.errorf(k+".smtp_host", "%q is not host:port, e.g. %s", t.SMTPHost, DefaultSMTPHost)
		} else if port != "587" {
			l.warnf(k+".smtp_host", "port %s: Exchange Online takes SMTP AUTH submissions on 587 with STARTTLS (smtpbridge always uses STARTTLS)", port)
		}
		if t.Transport != TransportSMTP && t.Transport != TransportGraph {
			l.errorf(k+".transport", "%q: use smtp (SMTP AUTH with XOAUTH2, the default) or graph (Microsoft Graph, where SMTP AUTH is off)", t.Transport)
		}
		if u, err := url.Parse(t.GraphHost); err != nil || u.Scheme != "https" || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
			l.errorf(k+".graph_host", "%q must be an https URL with no path, e.g. %s (national clouds: https://graph.microsoft.us, https://dod-graph.microsoft.us, https://microsoftgraph.chinacloudapi.cn)", t.GraphHost, DefaultGraphHost)
		} else {
			t.GraphHost = "https://" + u.Host
		}
		if t.GraphTokenScope != "" && !strings.HasSuffix(t.GraphTokenScope, "/.default") {
			l.errorf(k+".graph_token_scope", "%q must end in /.default for client-credential tokens, e.g. %s/.default", t.GraphTokenScope, DefaultGraphHost)
		}
		if !strings.HasSuffix(t.TokenScope, "/.default") {
			l.errorf(k+".token_scope", "%q must end in /.default for client-credential tokens, e.g. %s", t.TokenScope, DefaultTokenScope)
		}
		if t.MaxConnectionsPerMailbox < 0 {
			l.errorf(k+".max_connections_per_mailbox", "must be positive (Exchange Online allows %d)", DefaultMaxConnectionsPerMailbox)
		} else if t.MaxConnectionsPerMailbox > DefaultMaxConnectionsPerMailbox {
			l.warnf(k+".max_connections_per_mailbox", "%d is above Exchange Online's limit of %d; the extra connections get 432 4.3.2",
				t.MaxConnectionsPerMailbox, DefaultMaxConnectionsPerMailbox)
		}
		if t.MaxMessagesPerMinute < 0 {
			l.errorf(k+".max_messages_per_minute", "must be positive (Exchange Online allows %d)", DefaultMaxMessagesPerMinute)
		} else if t.MaxMessagesPerMinute > DefaultMaxMessagesPerMinute {
			l.warnf(k+".max_messages_per_minute", "%d is above Exchange Online's limit of %d; Exchange delays the excess",
				t.MaxMessagesPerMinute, DefaultMaxMessagesPerMinute)
		}
		if t.MaxRecipientsPerDay < 0 {
			l.errorf(k+".max_recipients_per_day", "must be positive (Exchange Online allows %d)", DefaultMaxRecipientsPerDay)
		} else if t.MaxRecipientsPerDay > DefaultMaxRecipientsPerDay {
			l.warnf(k+".max_recipients_per_day", "%d is above Exchange Online's quota of %d; Exchange refuses the excess with 554 5.2.0 until its window frees",
				t.MaxRecipientsPerDay, DefaultMaxRecipientsPerDay)
		}
	}
}

func (l *loader) validateDevices(c *Config) {
	if len(c.Devices) == 0 {
		l.errorf("devices", "at least one device is required; see the README's config reference")
	}
	names := map[string]bool{}
	users := map[string]string{}
	for i := range c.Devices {
		d := &c.Devices[i]
		k := fmt.Sprintf("devices[%d]", i)
		l.checkName(k+".name", d.Name, names)
		p := &d.Parsed
		p.Name, p.Username, p.Tenant = d.Name, d.Username, d.Tenant
		p.Unauthenticated, p.MaxPerHour, p.ExpectEvery = d.Auth == AuthNone, d.MaxMessagesPerHour, d.ExpectEvery
		l.deviceLogin(c, k, d, users)
		l.deviceRoute(c, k, d)
		l.devicePolicy(k, d)
		l.deviceDelivery(c, k, d)
	}
}

// deviceLogin checks how device d logs in: its username, unique, and
// password hash, or its networks without AUTH.
func (l *loader) deviceLogin(c *Config, k string, d *Device, users map[string]string) {
	switch {
	case d.Auth == AuthNone:
		if d.Username != "" || d.PasswordHash != "" {
			l.errorf(k+".auth", "a device with auth: none has no username or password_hash; remove them, or use auth: password")
		}
	case d.Username == "":
		l.errorf(k+".username", "required: the user name the device logs in with")
	case users[d.Username] != "":
		l.errorf(k+".username", "%q is already used by device %q", d.Username, users[d.Username])
	default:
		users[d.Username] = d.Name
	}
	switch d.Auth {
	case AuthPassword, AuthNone:
	default:
		l.errorf(k+".auth", "%q is not one of password, none", d.Auth)
	}
	switch {
	case d.Auth == AuthNone:
		l.checkUnauthenticated(c, k, d)
	case d.PasswordHash == "":
		l.errorf(k+".password_hash", "required: create one with `smtpbridge hash-password`")
	case strings.HasPrefix(d.PasswordHash, passwordPlaceholder):
		l.errorf(k+".password_hash", "still the example's placeholder: give device %s a password of its own: run `smtpbridge hash-password` (it asks for the password twice) and put the hash it prints here", d.Name)
	default:
		h, err := passwd.Parse(d.PasswordHash)
		if err != nil {
			l.errorf(k+".password_hash", "%v; create one with `smtpbridge hash-password` (never put the password itself here)", err)
			return
		}
		d.Parsed.PasswordHash = h
		if passwd.IsDocumentedHash(d.PasswordHash) && c.Sandbox.Dir == "" {
			l.errorf(k+".password_hash", "is the hash of the sandbox's password, which the README prints (%s): anyone who read it could log in as device %s; outside sandbox mode give it a password of its own with `smtpbridge hash-password`", strings.Join(passwd.Documented(), ", "), d.Name)
		}
	}
}

// checkSentItems bounds sent_items.keep.
func (l *loader) checkSentItems(key string, s SentItems) {
	switch keep := time.Duration(s.Keep); {
	case keep < 0:
		l.errorf(key, "must not be negative; leave it out (or 0) to keep every copy")
	case keep > 0 && keep < time.Hour:
		l.warnf(key, "%s: the copies of the bridge's messages leave Sent Items within the hour; people looking there for a scan they sent will not find it", keep)
	}
}

// deviceRoute checks where device d's mail goes: its tenant, transport
// and mailbox.
func (l *loader) deviceRoute(c *Config, k string, d *Device) {
	p := &d.Parsed
	if d.Tenant == "" {
		l.errorf(k+".tenant", "required: the name of one of the tenants")
	} else if t := c.Tenant(d.Tenant); t == nil {
		l.errorf(k+".tenant", "unknown tenant %q (known: %s)", d.Tenant, tenantNames(c))
	} else {
		p.Transport = t.Transport
		p.SentItemsKeep = time.Duration(t.SentItems.Keep)
	}
	if d.SentItems != nil {
		p.SentItemsKeep = time.Duration(d.SentItems.Keep)
		l.checkSentItems(k+".sent_items.keep", *d.SentItems)
	}
	switch d.Transport {
	case "":
	case TransportSMTP, TransportGraph:
		p.Transport = d.Transport
	default:
		l.errorf(k+".transport", "%q: use smtp or graph, or leave it out for the tenant's", d.Transport)
	}
	if a, err := mailaddr.Parse(d.Mailbox); err != nil {
		l.errorf(k+".mailbox", "%q: %v; this is the mailbox the device sends as, e.g. scanner@contoso.com", d.Mailbox, err)
	} else {
		p.Mailbox = a
	}
}

// devicePolicy checks what device d may send: its senders, recipients,
// networks and rate.
func (l *loader) devicePolicy(k string, d *Device) {
	p := &d.Parsed
	switch d.FromPolicy {
	case FromRewrite:
		if len(d.AllowedFrom) > 0 {
			l.warnf(k+".allowed_from", "only used with from_policy: enforce; with rewrite every message is sent as the mailbox")
		}
	case FromEnforce:
		p.EnforceFrom = true
	default:
		l.errorf(k+".from_policy", "%q is not one of rewrite, enforce", d.FromPolicy)
	}
	p.AllowedFrom = l.patterns(k+".allowed_from", d.AllowedFrom, "write an address, or contoso.com or *@contoso.com for a whole domain")
	p.AllowedRecipients = l.patterns(k+".allowed_recipients", d.AllowedRecipients, "write contoso.com, *@contoso.com or bob@partner.org")
	p.Networks = l.networks(k+".networks", d.Networks)
	if d.MaxMessagesPerHour < 0 {
		l.errorf(k+".max_messages_per_hour", "must be positive, e.g. 200")
	}
	if d.ExpectEvery < 0 {
		l.errorf(k+".expect_every", "%s must be positive, e.g. 24h", d.ExpectEvery)
	} else if d.ExpectEvery > 0 && d.ExpectEvery < time.Minute {
		l.errorf(k+".expect_every", "%s is too short to tell silence from a pause; use 1m or more, e.g. 24h for a daily test mail", d.ExpectEvery)
	}
}

// deviceDelivery checks device d's delivery: its mode, bounce address
// and share of the spool, its own or the global ones.
func (l *loader) deviceDelivery(c *Config, k string, d *Device) {
	p := &d.Parsed
	l.checkMode(k+".delivery.mode", d.Delivery.Mode, true)
	l.checkAddress(k+".delivery.bounce_to", d.Delivery.BounceTo)
	switch {
	case d.MaxQueuedBytes < 0:
		l.errorf(k+".max_queued_bytes", "must be positive, e.g. 1073741824 (1 GiB)")
	case d.MaxQueuedBytes > 0:
		p.MaxQueuedBytes = d.MaxQueuedBytes
	default:
		p.MaxQueuedBytes = c.Limits.MaxQueuedBytesPerDevice
	}
	if p.MaxQueuedBytes > 0 && p.MaxQueuedBytes < c.Limits.MaxMessageBytes {
		l.warnf(k+".max_queued_bytes", "%d is below limits.max_message_bytes (%d): a message that large never fits in the device's share of the spool",
			p.MaxQueuedBytes, c.Limits.MaxMessageBytes)
	}
	p.Mode, p.BounceTo = c.Delivery.Mode, c.Delivery.BounceTo
	if d.Delivery.Mode != "" {
		p.Mode = d.Delivery.Mode
	}
	if d.Delivery.BounceTo != "" {
		p.BounceTo = d.Delivery.BounceTo
	}
}

// patterns parses a list of address patterns, reporting each bad one.
func (l *loader) patterns(key string, list []string, hint string) mailaddr.Patterns {
	out := make(mailaddr.Patterns, 0, len(list))
	for j, s := range list {
		p, err := mailaddr.ParsePattern(s)
		if err != nil {
			l.errorf(fmt.Sprintf("%s[%d]", key, j), "%q: %v; %s", s, err, hint)
			continue
		}
		out = append(out, p)
	}
	return out
}

// checkUnauthenticated checks a device with auth: none: it needs networks,
// no other auth: none device may claim the same ones, and some listener
// must allow it.
func (l *loader) checkUnauthenticated(c *Config, k string, d *Device) {
	if len(d.Networks) == 0 {
		l.errorf(k+".networks", "required with auth: none: the device is recognised by its source address, e.g. [\"10.20.0.15\"]")
		return
	}
	for _, n := range d.Networks {
		p, err := ParseNetwork(n)
		if err != nil {
			continue
		}
		if !PrivatePrefix(p) {
			l.warnf(k+".networks", "%s includes public addresses: anyone there could send as this device without a password", n)
		}
		for _, o := range c.Devices {
			if o.Name == d.Name || o.Auth != AuthNone {
				continue
			}
			for _, on := range o.Networks {
				if op, err := ParseNetwork(on); err == nil && op == p {
					l.errorf(k+".networks", "%s is also device %q's; a source address must name one device without AUTH", n, o.Name)
				}
			}
		}
	}
	if !slices.ContainsFunc(c.Listeners, func(ls Listener) bool { return ls.AllowUnauthenticated }) {
		l.warnf(k+".auth", "no listener sets allow_unauthenticated: true, so this device cannot send")
	}
}

func (l *loader) checkMode(key, mode string, emptyOK bool) {
	switch mode {
	case ModeHybrid, ModeQueue, ModeSync:
	case "":
		if !emptyOK {
			l.errorf(key, "required")
		}
	default:
		l.errorf(key, "%q is not one of hybrid, queue, sync", mode)
	}
}

func (l *loader) checkAddress(key, addr string) {
	if addr == "" {
		return
	}
	if _, err := mailaddr.Parse(addr); err != nil {
		l.errorf(key, "%q: %v; write an address such as it-alerts@contoso.com", addr, err)
	}
}

func (l *loader) validateDelivery(c *Config) {
	d := &c.Delivery
	l.checkMode("delivery.mode", d.Mode, false)
	l.checkAddress("delivery.bounce_to", d.BounceTo)
	positive := func(key string, v time.Duration) bool {
		if v < 0 {
			l.errorf(key, "%s must be positive, e.g. 1m", v)
			return false
		}
		return true
	}
	if positive("delivery.sync_timeout", d.SyncTimeout) && d.SyncTimeout > 5*time.Minute {
		l.warnf("delivery.sync_timeout", "%s: most devices give up long before; 20s is the default", d.SyncTimeout)
	}
	if positive("delivery.retry_initial", d.RetryInitial) && positive("delivery.retry_max", d.RetryMax) &&
		d.RetryMax < d.RetryInitial {
		l.errorf("delivery.retry_max", "%s is shorter than retry_initial (%s)", d.RetryMax, d.RetryInitial)
	}
	if positive("delivery.max_age", d.MaxAge) && d.MaxAge < d.RetryInitial {
		l.errorf("delivery.max_age", "%s is shorter than retry_initial (%s): a message would die before its first retry", d.MaxAge, d.RetryInitial)
	}
	if positive("delivery.remember_refusals", d.RememberRefusals) && d.RememberRefusals > 7*24*time.Hour {
		l.errorf("delivery.remember_refusals", "%s: use at most 168h (1h by default); a reload forgets them anyway", d.RememberRefusals)
	}
}

// ParseNetwork parses a CIDR prefix or a single IP address.
func ParseNetwork(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR (192.168.10.0/24) or an IP address", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

func (l *loader) validateGlobals(c *Config) {
	switch {
	case c.Limits.MaxMessageBytes < 0:
		l.errorf("limits.max_message_bytes", "must be positive")
	case c.Limits.MaxMessageBytes > ExchangeMaxMessageBytes:
		l.warnf("limits.max_message_bytes", "%d is above Exchange Online's largest MaxSendSize (%d); Exchange will refuse such messages",
			c.Limits.MaxMessageBytes, ExchangeMaxMessageBytes)
	}
	if c.Limits.MaxRecipients < 0 {
		l.errorf("limits.max_recipients", "must be positive")
	}
	l.validateLimits(c)
	l.validateSecurity(c)
	c.Spool.Dir = l.statePath(c.Spool.Dir)
	if c.Spool.MaxBytes < 0 {
		l.errorf("spool.max_bytes", "must be positive, e.g. 10737418240 (10 GiB); leave it out for no bound but min_free_bytes")
	} else if c.Spool.MaxBytes > 0 && c.Spool.MaxBytes < c.Limits.MaxMessageBytes {
		l.errorf("spool.max_bytes", "%d is below limits.max_message_bytes (%d): the spool could not take one message", c.Spool.MaxBytes, c.Limits.MaxMessageBytes)
	}
	if c.Spool.MinFreeBytes < 0 {
		l.errorf("spool.min_free_bytes", "must be positive, e.g. %d", DefaultMinFreeBytes)
	}
	if c.Sandbox.Dir != "" {
		c.Sandbox.Dir = l.statePath(c.Sandbox.Dir)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		l.errorf("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		l.errorf("log.format", "%q is not one of json, console", c.Log.Format)
	}
	if c.Log.AuditFile != "" {
		c.Log.AuditFile = l.statePath(c.Log.AuditFile)
		if fi, err := os.Stat(filepath.Dir(c.Log.AuditFile)); err != nil || !fi.IsDir() {
			// A warning: check-config may run on another machine than
			// the bridge. The bridge itself refuses to start without it.
			l.warnf("log.audit_file", "the directory of %s does not exist here; the bridge will not start until it does", c.Log.AuditFile)
		}
	}
	if _, port, err := net.SplitHostPort(c.HTTP.Address); err != nil || port == "" {
		l.errorf("http.address", "%q is not host:port, e.g. %s", c.HTTP.Address, DefaultHTTPAddress)
	} else if msg := checkPort(port); msg != "" {
		l.errorf("http.address", "%q: %s", c.HTTP.Address, msg)
	}
	l.validateHTTPAuth(c)
	l.validateCluster(c)
	l.validateTokenCache(c)
	for i, t := range c.Tenants {
		if t.Auth == AuthDelegated && c.TokenCache.Key == "" {
			l.errorf(fmt.Sprintf("tenants[%d].auth", i), "delegated needs token_cache.key_file or token_cache.key_env: the refresh tokens tenant login stores are kept there, encrypted (make a key with: openssl rand -hex 32 > token-cache.key && chmod 600 token-cache.key)")
		}
	}
	for i, h := range c.HTTP.AllowedHosts {
		if !hostnameRE.MatchString(h) {
			l.errorf(fmt.Sprintf("http.allowed_hosts[%d]", i), "%q is not a host name (no port, scheme or wildcard), e.g. smtpbridge.internal", h)
		}
	}
}

// hostnameRE matches a DNS host name.
var hostnameRE = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$`)

func (l *loader) checkName(key, name string, seen map[string]bool) {
	switch {
	case name == "":
		l.errorf(key, "required")
	case !nameRE.MatchString(name):
		l.errorf(key, "%q: use letters, digits, '-', '_' and '.' (it appears in logs and metric labels)", name)
	case seen[name]:
		l.errorf(key, "%q is used twice", name)
	}
	seen[name] = true
}

func tenantNames(c *Config) string {
	var names []string
	for _, t := range c.Tenants {
		names = append(names, strconv.Quote(t.Name))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func (l *loader) validateLimits(c *Config) {
	lim := &c.Limits
	for _, v := range []struct {
		key string
		n   int
		eg  string
	}{
		{"limits.max_connections", lim.MaxConnections, "200"},
		{"limits.max_connections_per_ip", lim.MaxConnectionsPerIP, "20"},
		{"limits.max_errors", lim.MaxErrors, "20"},
	} {
		if v.n < 0 {
			l.errorf(v.key, "must be positive, e.g. %s", v.eg)
		}
	}
	if lim.MaxConnectionsPerIP > lim.MaxConnections && lim.MaxConnections > 0 {
		l.warnf("limits.max_connections_per_ip", "%d is above max_connections (%d), which then is the limit", lim.MaxConnectionsPerIP, lim.MaxConnections)
	}
	if lim.CommandTimeout < 0 || lim.CommandTimeout > 0 && lim.CommandTimeout < 10*time.Second {
		l.errorf("limits.command_timeout", "%s is too short for a slow device; use 10s or more (RFC 5321 section 4.5.3.2 suggests 5m)", lim.CommandTimeout)
	}
	if lim.SessionTimeout < 0 || lim.SessionTimeout > 0 && lim.SessionTimeout < lim.CommandTimeout {
		l.errorf("limits.session_timeout", "%s is shorter than command_timeout (%s)", lim.SessionTimeout, lim.CommandTimeout)
	}
	if lim.MaxQueuedBytesPerDevice < 0 {
		l.errorf("limits.max_queued_bytes_per_device", "must be positive, e.g. %d (1 GiB)", DefaultMaxQueuedBytesPerDevice)
	}
	if lim.MaxMemoryBytes < -1 || lim.MaxMemoryBytes > 0 && lim.MaxMemoryBytes < 32<<20 {
		l.errorf("limits.max_memory_bytes", "%d is not a memory limit the bridge can run in: use 32 MiB (33554432) or more, 0 for 80%% of the container's limit, or -1 for none", lim.MaxMemoryBytes)
	}
	if lim.MaxLineLength < 0 || lim.MaxLineLength > 0 && lim.MaxLineLength < 1000 {
		l.errorf("limits.max_line_length", "%d is below RFC 5321's minimum of 1000 (section 4.5.3.1.6); the default is %d", lim.MaxLineLength, DefaultMaxLineLength)
	}
}

func (l *loader) validateSecurity(c *Config) {
	sec := &c.Security
	if sec.AuthMaxFailures < 0 {
		l.errorf("security.auth_max_failures", "must be positive, e.g. %d", DefaultAuthMaxFailures)
	}
	if sec.AuthWindow < 0 {
		l.errorf("security.auth_window", "must be positive, e.g. %s", DefaultAuthWindow)
	}
	if sec.AuthBlock < 0 {
		l.errorf("security.auth_block", "must be positive, e.g. %s", DefaultAuthBlock)
	}
	if sec.IPv6Prefix < 32 || sec.IPv6Prefix > 128 {
		l.errorf("security.ipv6_prefix", "%d is not a prefix length from 32 to 128; the default %d counts a /64 as one client, 128 each address", sec.IPv6Prefix, DefaultIPv6Prefix)
	}
	sec.ExemptNetworks = l.networks("security.auth_exempt_networks", sec.AuthExemptNetworks)
	for _, p := range sec.ExemptNetworks {
		if p.Bits() == 0 {
			l.warnf("security.auth_exempt_networks", "%s exempts every address: password guessing is never blocked", p)
		}
	}
}

// minHTTPPassword is the shortest password_file content taken: the page
// and /metrics may face a network.
const minHTTPPassword = 12

func (l *loader) validateHTTPAuth(c *Config) {
	a := c.HTTP.Auth
	if a == nil {
		if host, _, err := net.SplitHostPort(c.HTTP.Address); err == nil && !loopbackHost(host) {
			l.warnf("http.address", "%s serves the status page and /metrics (devices, mailboxes, tenant and app IDs, source addresses) to every client that reaches it, without a credential; set http.auth, or bind it to 127.0.0.1", c.HTTP.Address)
		}
		return
	}
	if a.Username == "" || strings.ContainsAny(a.Username, ":\r\n") {
		l.errorf("http.auth.username", "required, without a colon: the name Prometheus and the browser log in with")
	}
	switch {
	case a.PasswordHash != "" && a.PasswordFile != "":
		l.errorf("http.auth", "set one of password_hash and password_file, not both")
	case a.PasswordHash != "":
		h, err := passwd.Parse(a.PasswordHash)
		if err != nil {
			l.errorf("http.auth.password_hash", "%v; create one with `smtpbridge hash-password`", err)
			return
		}
		a.Hash = h
	case a.PasswordFile != "":
		a.PasswordFile = l.path(a.PasswordFile)
		data, err := os.ReadFile(a.PasswordFile)
		if err != nil {
			l.errorf("http.auth.password_file", "%v", err)
			return
		}
		l.checkSecretFile("http.auth.password_file", a.PasswordFile)
		pw := strings.TrimRight(string(data), "\r\n")
		if len(pw) < minHTTPPassword {
			l.errorf("http.auth.password_file", "%s holds a password of %d characters; use at least %d, e.g. from `openssl rand -hex 16`", a.PasswordFile, len(pw), minHTTPPassword)
			return
		}
		a.Password = secret.String(pw)
	default:
		l.errorf("http.auth", "set password_hash (from `smtpbridge hash-password`) or password_file (a file holding the password, which Prometheus can read too)")
	}
}

// loopbackHost says whether a listen host reaches only this host.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// validateCluster checks cluster.redis: one way to reach Redis, and its
// password file.
func (l *loader) validateCluster(c *Config) {
	r := &c.Cluster.Redis
	if !c.Cluster.Enabled() {
		return
	}
	ways := 0
	for _, set := range []bool{r.Address != "", len(r.SentinelAddresses) > 0, len(r.ClusterAddresses) > 0} {
		if set {
			ways++
		}
	}
	if ways > 1 {
		l.errorf("cluster.redis", "set one of address, sentinel_addresses (with master_name) and cluster_addresses")
	}
	if len(r.SentinelAddresses) > 0 && r.MasterName == "" {
		l.errorf("cluster.redis.master_name", "required with sentinel_addresses: the name Sentinel knows the primary by")
	}
	for _, a := range append(append([]string{r.Address}, r.SentinelAddresses...), r.ClusterAddresses...) {
		if a == "" {
			continue
		}
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			l.errorf("cluster.redis", "%q is not host:port, e.g. redis:6379", a)
		}
	}
	if r.KeyPrefix == "" {
		r.KeyPrefix = DefaultRedisKeyPrefix
	}
	if strings.ContainsAny(r.KeyPrefix, "{}") {
		// The keys' own hash tags ({mailbox}) keep each script's keys in
		// one slot of a Redis Cluster; a brace in the prefix would change
		// which part of a key is hashed.
		l.errorf("cluster.redis.key_prefix", "%q has { or }: leave braces out (the bridge puts its own hash tags after the prefix, so that a Redis Cluster keeps each mailbox's keys together)", r.KeyPrefix)
	}
	if r.PasswordFile != "" {
		r.PasswordFile = l.path(r.PasswordFile)
		data, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			l.errorf("cluster.redis.password_file", "%v", err)
		} else {
			l.checkSecretFile("cluster.redis.password_file", r.PasswordFile)
			r.Password = secret.String(strings.TrimRight(string(data), "\r\n"))
		}
	}
	if r.CAFile != "" {
		r.CAFile = l.path(r.CAFile)
		switch data, err := os.ReadFile(r.CAFile); {
		case err != nil:
			l.errorf("cluster.redis.ca_file", "%v", err)
		case !r.TLS:
			l.errorf("cluster.redis.ca_file", "set tls: true too: the CA checks Redis's certificate, which only a TLS connection has")
		default:
			r.RootCAs = x509.NewCertPool()
			if !r.RootCAs.AppendCertsFromPEM(data) {
				l.errorf("cluster.redis.ca_file", "%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", r.CAFile)
			}
		}
	}
	if c.Cluster.Instance == "" {
		c.Cluster.Instance, _ = os.Hostname()
	}
	switch ttl := &c.Cluster.LeaseTTL; {
	case *ttl == 0:
		*ttl = DefaultLeaseTTL
	case *ttl < time.Second || *ttl > 10*time.Minute:
		l.errorf("cluster.lease_ttl", "%s: use 1s to 10m (15s by default): how long a dead replica's connections count against the mailbox", *ttl)
	}
}

// validateTokenCache reads the token cache's key (32 bytes: raw in
// key_file, or 64 hex digits in key_file or key_env).
func (l *loader) validateTokenCache(c *Config) {
	tc := &c.TokenCache
	if tc.KeyFile != "" && tc.KeyEnv != "" {
		l.errorf("token_cache", "set key_file or key_env, not both")
		return
	}
	var raw []byte
	switch {
	case tc.KeyFile != "":
		tc.KeyFile = l.path(tc.KeyFile)
		data, err := os.ReadFile(tc.KeyFile)
		if err != nil {
			l.errorf("token_cache.key_file", "%v; create one with: openssl rand -hex 32 > %s && chmod 600 %s", err, tc.KeyFile, tc.KeyFile)
			return
		}
		l.checkSecretFile("token_cache.key_file", tc.KeyFile)
		raw = data
	case tc.KeyEnv != "":
		v, ok := l.lookup(tc.KeyEnv)
		if !ok {
			l.errorf("token_cache.key_env", "environment variable %s is not set", tc.KeyEnv)
			return
		}
		raw = []byte(v)
	default:
		if tc.Dir != "" {
			l.warnf("token_cache.dir", "set without key_file or key_env: no token is kept on disk (set a key to keep them, encrypted)")
		}
		return
	}
	key, err := parseCacheKey(raw)
	if err != nil {
		key := "token_cache.key_file"
		if tc.KeyEnv != "" {
			key = "token_cache.key_env"
		}
		l.errorf(key, "%v; make one with: openssl rand -hex 32", err)
		return
	}
	tc.Key = secret.String(key)
	if tc.Dir == "" {
		tc.Dir = filepath.Join(c.Spool.Dir, DefaultTokenCacheSubdir)
	} else {
		tc.Dir = l.path(tc.Dir)
	}
}

// parseCacheKey takes 32 raw bytes, or 64 hex digits (with a newline).
func parseCacheKey(b []byte) (string, error) {
	if len(b) == 32 {
		return string(b), nil
	}
	t := strings.TrimSpace(string(b))
	if len(t) == 64 {
		if k, err := hex.DecodeString(t); err == nil {
			return string(k), nil
		}
	}
	return "", fmt.Errorf("the key must be 32 random bytes, raw or as 64 hex digits (found %d bytes)", len(b))
}
