// Package tokenstore gets OAuth 2.0 access tokens for Exchange Online and
// Microsoft Graph from Entra ID with MSAL for Go: the client-credentials
// flow with one confidential client per app registration (a secret, a
// certificate, a federated token or a managed identity), or a managed
// identity's own tokens, or with delegated sign-in a public client per
// mailbox whose refresh token a person's device code sign-in (Login)
// left in the encrypted cache. Tokens are served from MSAL's cache, kept
// on disk when the cache has a key, and concurrent requests for one
// tenant (or mailbox) share a single grant.
//
// It knows nothing about SMTP. It must never log, print or put in an error
// a client secret, a client assertion or an access token: errors carry only
// what Entra's error response says (AADSTS code, description, correlation ID).
package tokenstore

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/managedidentity"
	"golang.org/x/sync/singleflight"

	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/upstream/egress"
)

// Tenant is what the store needs to know about one app registration.
type Tenant struct {
	Name          string // the config name, used in errors and metrics
	TenantID      string
	ClientID      string
	Credential    secret.Credential
	AuthorityHost string // e.g. https://login.microsoftonline.com
	Scope         string // e.g. https://outlook.office365.com/.default
	// RootCAs, if set, replaces the system roots for this tenant's
	// authority (sandbox mode). Production leaves it nil: the system trust
	// store, which honours SSL_CERT_FILE, is used.
	RootCAs *x509.CertPool
	// Egress is the way to the authority: a proxy, a proxy's CA.
	Egress egress.Settings
	// Cache, if it has a key, keeps the tenant's tokens on disk,
	// encrypted, across restarts.
	Cache *Cache
	// DelegatedScope is the delegated permissions asked for when the
	// credential is Delegated, space-separated scopes of one resource:
	// https://outlook.office.com/SMTP.Send, or Graph's Mail.Send and
	// Mail.ReadWrite.
	DelegatedScope string
}

// Token is an access token. String does not reveal it.
type Token struct {
	AccessToken string
	ExpiresOn   time.Time
	// FromCache is true when MSAL served the token without asking Entra.
	FromCache bool
}

// String implements fmt.Stringer without the token itself.
func (t Token) String() string {
	return fmt.Sprintf("token(expires %s, cached %v)", t.ExpiresOn.Format(time.RFC3339), t.FromCache)
}

// GoString implements fmt.GoStringer.
func (t Token) GoString() string { return t.String() }

// Observer is told about every token request; metrics implement it.
type Observer interface {
	ObserveToken(tenant string, tok Token, err error)
}

// requestTimeout bounds one grant, discovery included.
var requestTimeout = 30 * time.Second

// After a failed request a tenant is paused: no request goes to Entra
// before the pause ends, and every caller meanwhile gets the failure at
// once, with its end as RetryAt. The pause doubles with each failure in a
// row, from pauseMin to pauseMax, with ±20% jitter; a token ends it. So
// an outage of Entra, or a wrong secret, costs Entra one request per pause
// for the whole tenant, not one per message: Entra throttles an
// application that asks more. Tests shorten them.
var (
	pauseMin = 5 * time.Second
	pauseMax = 5 * time.Minute
)

// Store hands out tokens per tenant name.
type Store struct {
	mu       sync.RWMutex
	clients  map[string]*client
	group    singleflight.Group
	observer Observer
}

type client struct {
	tenant Tenant
	// mailbox is the signed-in mailbox of a delegated tenant's client;
	// "" for an app's.
	mailbox string
	// mailboxes are a delegated tenant's clients, one per signed-in
	// mailbox, made on first use.
	mbMu      sync.Mutex
	mailboxes map[string]*client
	// signIn, for a mailbox's client, remembers a sign-in that Entra
	// refused, until tenant login writes the cache again.
	signIn *signInState
	// acquire gets a token for the tenant's scope: from MSAL's cache, or
	// a new grant.
	acquire func(ctx context.Context) (Token, error)

	mu       sync.Mutex
	failures int       // failed requests in a row
	paused   time.Time // no request before
	lastErr  *Error
}

// pausedErr returns the failure that paused the tenant, if the pause
// still runs.
func (c *client) pausedErr(now time.Time) *Error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastErr == nil || !now.Before(c.paused) {
		return nil
	}
	e := *c.lastErr
	return &e
}

// failed starts or lengthens the pause after e.
func (c *client) failed(e *Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	d := pauseMin
	for i := 1; i < c.failures && d < pauseMax; i++ {
		d *= 2
	}
	d = min(time.Duration(float64(d)*(0.8+0.4*rand.Float64())), pauseMax)
	if e.SignIn {
		// Asking again costs Entra nothing until tenant login has
		// written the cache (see signInState): look often, so that the
		// mailbox's messages go soon after.
		d = pauseMin
	}
	c.paused = time.Now().Add(d)
	e.RetryAt = c.paused
	c.lastErr = e
}

func (c *client) succeeded() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures, c.paused, c.lastErr = 0, time.Time{}, nil
}

// ErrUnknownTenant is returned by Token for a tenant name not configured.
var ErrUnknownTenant = errors.New("unknown tenant")

// New builds one MSAL confidential client per tenant. obs may be nil.
func New(tenants []Tenant, obs Observer) (*Store, error) {
	s := &Store{clients: map[string]*client{}, observer: obs}
	for _, t := range tenants {
		c, err := newClient(t)
		if err != nil {
			return nil, fmt.Errorf("tenant %s: %w", t.Name, err)
		}
		s.clients[t.Name] = c
	}
	return s, nil
}

// Reconfigure replaces the tenants (a config reload). A tenant whose
// settings are unchanged keeps its MSAL client and so its cached token;
// a new or changed one gets a new client, which asks Entra for a token on
// first use. It is all or nothing: on error nothing changes.
func (s *Store) Reconfigure(tenants []Tenant) error {
	s.mu.RLock()
	old := s.clients
	s.mu.RUnlock()
	next := make(map[string]*client, len(tenants))
	for _, t := range tenants {
		if c, ok := old[t.Name]; ok && c.tenant.equal(t) {
			next[t.Name] = c
			continue
		}
		c, err := newClient(t)
		if err != nil {
			return fmt.Errorf("tenant %s: %w", t.Name, err)
		}
		next[t.Name] = c
	}
	s.mu.Lock()
	s.clients = next
	s.mu.Unlock()
	return nil
}

// equal says whether two tenants need the same MSAL client.
func (t Tenant) equal(o Tenant) bool {
	return t.Name == o.Name && t.TenantID == o.TenantID && t.ClientID == o.ClientID &&
		t.AuthorityHost == o.AuthorityHost && t.Scope == o.Scope && t.RootCAs.Equal(o.RootCAs) && t.Egress == o.Egress &&
		t.Credential.Equal(o.Credential) && t.Cache.equal(o.Cache) && t.DelegatedScope == o.DelegatedScope
}

// httpClientFor is the HTTP client for t's authority: the system's trust
// store, or t.RootCAs, with t.Egress's proxy and CA.
func httpClientFor(t Tenant) *http.Client {
	return &http.Client{Transport: t.Egress.Transport(t.RootCAs), Timeout: requestTimeout}
}

func newClient(t Tenant) (*client, error) {
	if t.Credential.Delegated() {
		if t.Cache == nil || len(t.Cache.Key) == 0 {
			return nil, errNoCache
		}
		// One client per mailbox, made on first use (forMailbox).
		return &client{tenant: t, mailboxes: map[string]*client{}}, nil
	}
	httpClient := httpClientFor(t)
	var (
		cred confidential.Credential
		err  error
	)
	if id, ok := t.Credential.ManagedIdentity(); ok {
		if t.ClientID == "" {
			return newManagedClient(t, id, httpClient)
		}
		// The managed identity is a federated credential of the app
		// registration: its token for Entra's token exchange audience is
		// the app's client assertion. MSAL's managed identity client
		// caches that token; it is asked each time the app needs one.
		mi, err := managedIdentity(id, httpClient)
		if err != nil {
			return nil, err
		}
		cred = confidential.NewCredFromAssertionCallback(func(ctx context.Context, _ confidential.AssertionRequestOptions) (string, error) {
			res, err := mi.AcquireToken(ctx, TokenExchangeAudience)
			if err != nil {
				return "", fmt.Errorf("managed identity (the app's federated credential): %w", err)
			}
			return res.AccessToken, nil
		})
	} else if path := t.Credential.FederatedTokenFile(); path != "" {
		// Read on every request: the kubelet replaces the projected
		// token before it expires.
		cred = confidential.NewCredFromAssertionCallback(func(context.Context, confidential.AssertionRequestOptions) (string, error) {
			return readFederatedToken(path)
		})
	} else if t.Credential.IsCertificate() {
		certs, key := t.Credential.Certificate()
		cred, err = confidential.NewCredFromCert(certs, key)
	} else {
		cred, err = confidential.NewCredFromSecret(t.Credential.Secret())
	}
	if err != nil {
		// MSAL's messages here name no secret ("secret can't be empty string").
		return nil, fmt.Errorf("credential: %w", err)
	}
	opts := []confidential.Option{
		confidential.WithHTTPClient(httpClient),
	}
	fc, err := newFileCache(t.Cache, t, "")
	if err != nil {
		return nil, err
	}
	if fc != nil {
		opts = append(opts, confidential.WithCache(fc))
	}
	if !IsMicrosoftAuthority(t.AuthorityHost) {
		// A national cloud proxy or a test issuer: MSAL would otherwise ask
		// login.microsoftonline.com to validate the host and fail.
		opts = append(opts, confidential.WithInstanceDiscovery(false))
	}
	authority := strings.TrimRight(t.AuthorityHost, "/") + "/" + t.TenantID
	m, err := confidential.New(authority, t.ClientID, cred, opts...)
	if err != nil {
		return nil, fmt.Errorf("MSAL client for %s: %w", authority, err)
	}
	return &client{tenant: t, acquire: func(ctx context.Context) (Token, error) {
		res, err := m.AcquireTokenByCredential(ctx, []string{t.Scope})
		if err != nil {
			return Token{}, err
		}
		return Token{AccessToken: res.AccessToken, ExpiresOn: res.ExpiresOn,
			FromCache: res.Metadata.TokenSource == confidential.TokenSourceCache}, nil
	}}, nil
}

// newManagedClient gets tokens from the host's managed identity (the
// endpoint MSAL finds from the environment: IDENTITY_ENDPOINT and
// IDENTITY_HEADER on App Service and Container Apps, Azure Arc's agent,
// or the VM's instance metadata service); clientID picks a user-assigned
// identity.
func newManagedClient(t Tenant, clientID string, httpClient *http.Client) (*client, error) {
	m, err := managedIdentity(clientID, httpClient)
	if err != nil {
		return nil, err
	}
	// A managed identity is asked for a resource, not a scope.
	resource := strings.TrimSuffix(t.Scope, "/.default")
	return &client{tenant: t, acquire: func(ctx context.Context) (Token, error) {
		res, err := m.AcquireToken(ctx, resource)
		if err != nil {
			return Token{}, fmt.Errorf("managed identity: %w", err)
		}
		return Token{AccessToken: res.AccessToken, ExpiresOn: res.ExpiresOn,
			FromCache: res.Metadata.TokenSource == managedidentity.TokenSourceCache}, nil
	}}, nil
}

// TokenExchangeAudience is the audience Entra ID expects of a token
// presented as a federated credential.
const TokenExchangeAudience = "api://AzureADTokenExchange"

// managedIdentity is MSAL's client for the host's managed identity:
// clientID picks a user-assigned one, "" the system-assigned one.
func managedIdentity(clientID string, httpClient *http.Client) (managedidentity.Client, error) {
	id := managedidentity.SystemAssigned()
	if clientID != "" {
		id = managedidentity.UserAssignedClientID(clientID)
	}
	m, err := managedidentity.New(id, managedidentity.WithHTTPClient(httpClient))
	if err != nil {
		return m, fmt.Errorf("managed identity: %w", err)
	}
	return m, nil
}

// readFederatedToken reads the OIDC token a federated credential
// presents as the client assertion.
func readFederatedToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("federated_token_file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("federated_token_file %s is empty", path)
	}
	return tok, nil
}

func hostOf(authority string) string {
	u, err := url.Parse(authority)
	if err != nil {
		return ""
	}
	return strings.ToLower(u.Hostname())
}

// microsoftAuthorities are the Entra ID hosts of the public and national
// clouds, for which MSAL's instance discovery stays on.
var microsoftAuthorities = map[string]bool{
	"login.microsoftonline.com":        true,
	"login.microsoft.com":              true,
	"login.windows.net":                true,
	"sts.windows.net":                  true,
	"login.microsoftonline.us":         true,
	"login-us.microsoftonline.com":     true,
	"login.usgovcloudapi.net":          true,
	"login.partner.microsoftonline.cn": true,
	"login.chinacloudapi.cn":           true,
	"login.microsoftonline.de":         true,
}

// IsMicrosoftAuthority reports whether an authority_host URL names a known
// Entra ID host.
func IsMicrosoftAuthority(authority string) bool {
	return microsoftAuthorities[strings.ToLower(hostOf(authority))]
}

// Token returns a valid access token for the named tenant, to send as
// mailbox: the app's token, whatever the mailbox, or with delegated
// sign-in the mailbox's own. Tokens come from MSAL's cache while they
// have more than five minutes left; concurrent callers for one tenant
// (and mailbox) share one request to Entra ID.
func (s *Store) Token(ctx context.Context, tenant, mailbox string) (Token, error) {
	s.mu.RLock()
	c, ok := s.clients[tenant]
	s.mu.RUnlock()
	if !ok {
		return Token{}, fmt.Errorf("%w %q", ErrUnknownTenant, tenant)
	}
	if c.mailboxes != nil {
		var err error
		if c, err = c.forMailbox(mailbox); err != nil {
			return Token{}, fmt.Errorf("token for tenant %s, mailbox %s: %w", tenant, mailbox, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return Token{}, fmt.Errorf("token for tenant %s: %w", tenant, err)
	}
	if e := c.pausedErr(time.Now()); e != nil {
		return Token{}, e
	}
	// The key names the client, so that a reload's new credential never
	// shares a grant made with the old one.
	ch := s.group.DoChan(fmt.Sprintf("%s/%p", tenant, c), func() (any, error) {
		if e := c.signIn.stillRefused(); e != nil {
			c.failed(e)
			return Token{}, e
		}
		// Detached from the first caller: its cancellation must not fail
		// the grant for everyone waiting on it.
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
		defer cancel()
		tok, err := c.acquire(gctx)
		if err != nil {
			e := classify(c.tenant, err)
			if c.signIn != nil {
				c.signIn.refused(e, c.mailbox)
			}
			c.failed(e)
			return Token{}, e
		}
		c.succeeded()
		if c.signIn != nil {
			c.signIn.accepted()
		}
		return tok, nil
	})
	select {
	case <-ctx.Done():
		return Token{}, fmt.Errorf("token for tenant %s: %w", tenant, ctx.Err())
	case r := <-ch:
		tok, _ := r.Val.(Token)
		var e *Error
		failed := errors.As(r.Err, &e)
		if s.observer != nil {
			if !failed || !e.remembered {
				s.observer.ObserveToken(tenant, tok, r.Err)
			}
			if o, ok := s.observer.(SignInObserver); ok && c.signIn != nil {
				o.ObserveSignIn(tenant, c.mailbox, failed && e.SignIn)
			}
		}
		return tok, r.Err
	}
}
