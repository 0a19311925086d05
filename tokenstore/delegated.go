package tokenstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/public"
)

// Delegated sign-in: a tenant whose app registration is a public client
// (no credential). A person signs in once per mailbox with the device
// code flow (Login, run by smtpbridge tenant login); MSAL keeps the
// refresh token in the mailbox's encrypted cache file, and the bridge
// gets the mailbox's tokens from it silently. When Entra refuses the
// refresh token (revoked, expired, a password reset), the mailbox needs
// a new sign-in: its messages wait, and the error says so.

// SignInObserver is told whether a delegated mailbox needs a new
// sign-in, after each of its token requests. An Observer given to New
// may implement it.
type SignInObserver interface {
	ObserveSignIn(tenant, mailbox string, needed bool)
}

// errNoCache is the set-up error of a delegated tenant without a token
// cache key (config refuses it; Login and New check it too).
var errNoCache = errors.New("delegated sign-in needs token_cache with a key: the refresh tokens are kept there")

// errNotSignedIn is the failure of a mailbox with no sign-in stored.
var errNotSignedIn = errors.New("no sign-in is stored for the mailbox")

// signInCodes are the OAuth errors after which only a person signing in
// again helps.
var signInCodes = map[string]bool{"invalid_grant": true, "interaction_required": true, "consent_required": true}

// signInState remembers a refused sign-in, with the cache file's time
// then: until tenant login writes the file again, asking Entra with the
// same refresh token is pointless, and the refusal is given at once. In
// case a file system's coarse times hide a change, Entra is asked again
// after signInRecheck all the same.
type signInState struct {
	cache *fileCache
	mu    sync.Mutex
	err   *Error
	stamp time.Time // the cache file's modification time
	at    time.Time // when Entra refused
}

// signInRecheck is how long a refused sign-in is given without asking
// Entra, if the cache file seems unchanged.
const signInRecheck = 10 * time.Minute

// refused records e if it means the mailbox must sign in again.
func (s *signInState) refused(e *Error, mailbox string) {
	e.Mailbox = mailbox
	if !e.SignIn && !signInCodes[e.Code] {
		return
	}
	e.SignIn = true
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *e
	s.err, s.stamp, s.at = &c, s.cache.modTime(), time.Now()
}

func (s *signInState) accepted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = nil
}

// stillRefused returns the refusal if the cache has not changed since.
func (s *signInState) stillRefused() *Error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil || !s.cache.modTime().Equal(s.stamp) || time.Since(s.at) > signInRecheck {
		return nil
	}
	e := *s.err
	e.remembered = true
	return &e
}

// forMailbox returns the delegated tenant's client for mailbox.
func (c *client) forMailbox(mailbox string) (*client, error) {
	if mailbox == "" {
		return nil, errors.New("delegated sign-in needs the mailbox")
	}
	key := strings.ToLower(mailbox)
	c.mbMu.Lock()
	defer c.mbMu.Unlock()
	if mc, ok := c.mailboxes[key]; ok {
		return mc, nil
	}
	mc, err := newMailboxClient(c.tenant, mailbox)
	if err != nil {
		return nil, err
	}
	c.mailboxes[key] = mc
	return mc, nil
}

// publicClient is the MSAL public client of a delegated tenant, with the
// mailbox's cache file.
func publicClient(t Tenant, mailbox string) (public.Client, *fileCache, error) {
	fc, err := newFileCache(t.Cache, t, mailbox)
	if err != nil {
		return public.Client{}, nil, err
	}
	if fc == nil {
		return public.Client{}, nil, errNoCache
	}
	authority := strings.TrimRight(t.AuthorityHost, "/") + "/" + t.TenantID
	opts := []public.Option{public.WithAuthority(authority), public.WithCache(fc), public.WithHTTPClient(httpClientFor(t))}
	if !IsMicrosoftAuthority(t.AuthorityHost) {
		opts = append(opts, public.WithInstanceDiscovery(false))
	}
	pc, err := public.New(t.ClientID, opts...)
	if err != nil {
		return public.Client{}, nil, fmt.Errorf("MSAL public client for %s: %w", authority, err)
	}
	return pc, fc, nil
}

// account finds mailbox's account among those the cache holds.
func account(ctx context.Context, pc public.Client, mailbox string) (public.Account, bool, error) {
	accts, err := pc.Accounts(ctx)
	if err != nil {
		return public.Account{}, false, err
	}
	for _, a := range accts {
		if strings.EqualFold(a.PreferredUsername, mailbox) {
			return a, true, nil
		}
	}
	return public.Account{}, false, nil
}

func newMailboxClient(t Tenant, mailbox string) (*client, error) {
	pc, fc, err := publicClient(t, mailbox)
	if err != nil {
		return nil, err
	}
	c := &client{tenant: t, mailbox: mailbox, signIn: &signInState{cache: fc}}
	c.acquire = func(ctx context.Context) (Token, error) {
		acct, ok, err := account(ctx, pc, mailbox)
		if err != nil {
			return Token{}, err
		}
		if !ok {
			return Token{}, errNotSignedIn
		}
		res, err := pc.AcquireTokenSilent(ctx, strings.Fields(t.DelegatedScope), public.WithSilentAccount(acct))
		if err != nil {
			return Token{}, err
		}
		return Token{AccessToken: res.AccessToken, ExpiresOn: res.ExpiresOn,
			FromCache: res.Metadata.TokenSource == public.TokenSourceCache}, nil
	}
	return c, nil
}

// LoginPrompt is shown to the person signing in: Entra's message with
// the verification page and the code.
type LoginPrompt struct {
	Message, VerificationURL, UserCode string
	Expires                            time.Time
}

// LoginResult is a completed sign-in.
type LoginResult struct {
	Username  string // who signed in
	CacheFile string // where the refresh token is kept, encrypted
	Scopes    []string
}

// Login runs the device code flow for mailbox of the delegated tenant t:
// prompt shows the code, and Login returns once the person has signed in
// (or ctx ends, or the code expires). The refresh token goes to the
// mailbox's encrypted cache file, where a running bridge finds it. A
// sign-in as another user than mailbox is refused and not kept. extra
// are further scopes to check consent for (Graph's beside SMTP's).
func Login(ctx context.Context, t Tenant, mailbox string, prompt func(LoginPrompt), extra ...string) (LoginResult, error) {
	if !t.Credential.Delegated() {
		return LoginResult{}, fmt.Errorf("tenant %s does not use auth: delegated", t.Name)
	}
	pc, fc, err := publicClient(t, mailbox)
	if err != nil {
		return LoginResult{}, err
	}
	dc, err := pc.AcquireTokenByDeviceCode(ctx, strings.Fields(t.DelegatedScope))
	if err != nil {
		return LoginResult{}, classify(t, err)
	}
	prompt(LoginPrompt{Message: dc.Result.Message, VerificationURL: dc.Result.VerificationURL, UserCode: dc.Result.UserCode, Expires: dc.Result.ExpiresOn})
	res, err := dc.AuthenticationResult(ctx)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			return LoginResult{}, fmt.Errorf("nobody signed in before the code expired or the wait ended: %w", err)
		}
		return LoginResult{}, classify(t, err)
	}
	who := res.Account.PreferredUsername
	if !strings.EqualFold(who, mailbox) {
		// Not kept: the bridge would send as the wrong person.
		if rerr := pc.RemoveAccount(ctx, res.Account); rerr != nil {
			return LoginResult{}, fmt.Errorf("signed in as %s, not %s; removing that sign-in from %s failed: %w", who, mailbox, fc.path, rerr)
		}
		return LoginResult{}, fmt.Errorf("signed in as %s, not %s: sign in as the mailbox's user (a private browser window avoids an existing session)", who, mailbox)
	}
	out := LoginResult{Username: who, CacheFile: fc.path, Scopes: []string{t.DelegatedScope}}
	for _, sc := range extra {
		if _, err := pc.AcquireTokenSilent(ctx, strings.Fields(sc), public.WithSilentAccount(res.Account)); err != nil {
			return out, fmt.Errorf("signed in, but no token for %s: %w", sc, classify(t, err))
		}
		out.Scopes = append(out.Scopes, sc)
	}
	return out, nil
}
