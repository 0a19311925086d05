package tokenstore_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/pki"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

const (
	tenantID     = "11111111-2222-3333-4444-555555555555"
	clientID     = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	clientSecret = "s3cr3t~Value.Of-The_Secret"
)

type env struct {
	entra *fakeentra.Server
	ca    *pki.CA
}

// newEnv is the test World's Entra ID with a tenant of the tests' own,
// whose apps each test registers.
func newEnv(t *testing.T) *env {
	t.Helper()
	w, _ := testenv.Start(t)
	w.AddTenant(tenantID, "contoso.example")
	return &env{entra: w.Entra, ca: w.CA}
}

func (e *env) tenant(cred secret.Credential) tokenstore.Tenant {
	return tokenstore.Tenant{
		Name:          "contoso",
		TenantID:      tenantID,
		ClientID:      clientID,
		Credential:    cred,
		AuthorityHost: e.entra.URL(),
		Scope:         "https://outlook.office365.com/.default",
		RootCAs:       e.ca.Pool(),
	}
}

func newStore(t *testing.T, tenants ...tokenstore.Tenant) *tokenstore.Store {
	t.Helper()
	s, err := tokenstore.New(tenants, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestOneGrantForManyRequests(t *testing.T) {
	e := newEnv(t)
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	s := newStore(t, e.tenant(secret.NewClientSecret(clientSecret)))

	var first string
	for i := range 50 {
		tok, err := s.Token(context.Background(), "contoso", "")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if i == 0 {
			first = tok.AccessToken
			if tok.FromCache {
				t.Error("first token claims to come from the cache")
			}
			claims, err := e.entra.Verify(tok.AccessToken)
			if err != nil {
				t.Fatalf("issued token does not verify: %v", err)
			}
			if claims.Audience != fakeentra.Resource || claims.AppID != clientID || claims.TenantID != tenantID {
				t.Errorf("claims = %+v", claims)
			}
			if d := time.Until(tok.ExpiresOn); d < 50*time.Minute || d > 61*time.Minute {
				t.Errorf("expires in %v, want about an hour", d)
			}
		} else {
			if tok.AccessToken != first {
				t.Fatalf("request %d got a different token", i)
			}
			if !tok.FromCache {
				t.Errorf("request %d not served from the cache", i)
			}
		}
		if strings.Contains(tok.String(), tok.AccessToken) {
			t.Fatal("Token.String reveals the token")
		}
	}
	if g := e.entra.Grants(clientID); g != 1 {
		t.Errorf("grants = %d, want 1", g)
	}
}

func TestConcurrentRequestsShareOneGrant(t *testing.T) {
	e := newEnv(t)
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	s := newStore(t, e.tenant(secret.NewClientSecret(clientSecret)))

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			if _, err := s.Token(context.Background(), "contoso", ""); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if g := e.entra.Grants(clientID); g != 1 {
		t.Errorf("grants = %d, want 1", g)
	}
	if r := e.entra.Requests(); r != 1 {
		t.Errorf("token requests = %d, want 1", r)
	}
}

func TestCertificateCredential(t *testing.T) {
	e := newEnv(t)
	cert, err := pki.NewAppCert("smtpbridge", time.Now().Add(365*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Certificates: []*x509.Certificate{cert.Cert}})
	s := newStore(t, e.tenant(secret.NewCertificate([]*x509.Certificate{cert.Cert}, cert.Key)))
	tok, err := s.Token(context.Background(), "contoso", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.entra.Verify(tok.AccessToken); err != nil {
		t.Fatal(err)
	}

	// A certificate the app does not know is AADSTS700027.
	other, err := pki.NewAppCert("other", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tn := e.tenant(secret.NewCertificate([]*x509.Certificate{other.Cert}, other.Key))
	tn.Name = "other"
	s = newStore(t, tn)
	_, err = s.Token(context.Background(), "other", "")
	wantEntraError(t, err, 700027, false)
}

func TestEntraErrors(t *testing.T) {
	e := newEnv(t)
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: "expired-app", Secrets: []fakeentra.Secret{{Value: clientSecret, Expires: time.Now().Add(-time.Hour)}}})

	tests := []struct {
		name      string
		edit      func(*tokenstore.Tenant)
		code      int
		hint      string
		temporary bool
	}{
		{"wrong secret", func(tn *tokenstore.Tenant) { tn.Credential = secret.NewClientSecret("not-the-secret") }, 7000215, "secret's Value", false},
		{"unknown tenant", func(tn *tokenstore.Tenant) { tn.TenantID = "nosuch.example" }, 90002, "Tenant not found. Use the Directory (tenant) ID", false},
		{"unknown app", func(tn *tokenstore.Tenant) { tn.ClientID = "00000000-0000-0000-0000-000000000000" }, 700016, "No app with this client_id in this tenant", false},
		{"expired secret", func(tn *tokenstore.Tenant) { tn.ClientID = "expired-app" }, 7000222, "expired", false},
		{"bad scope", func(tn *tokenstore.Tenant) { tn.Scope = "https://outlook.office365.com/SMTP.Send" }, 1002012, "/.default", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tn := e.tenant(secret.NewClientSecret(clientSecret))
			tc.edit(&tn)
			s := newStore(t, tn)
			_, err := s.Token(context.Background(), "contoso", "")
			te := wantEntraError(t, err, tc.code, tc.temporary)
			if te != nil && !strings.Contains(err.Error(), tc.hint) {
				t.Errorf("error %q lacks hint %q", err, tc.hint)
			}
			for _, s := range []string{clientSecret, "not-the-secret"} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error reveals the secret: %q", err)
				}
			}
		})
	}
}

func TestTransientFailureRecovers(t *testing.T) {
	e := newEnv(t)
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	e.entra.Fail(fakeentra.Failure{Status: 503, Code: "temporarily_unavailable", AADSTS: 90033, Description: "A transient error has occurred. Please try again."})
	s := newStore(t, e.tenant(secret.NewClientSecret(clientSecret)))

	_, err := s.Token(context.Background(), "contoso", "")
	var te *tokenstore.Error
	if !errors.As(err, &te) || !te.Temporary || te.RetryAt.IsZero() {
		t.Fatalf("err = %v, want a temporary *tokenstore.Error with the end of the pause", err)
	}
	// During the pause every caller gets the failure at once, and Entra
	// is not asked.
	requests := e.entra.Requests()
	for i := 0; i < 20; i++ {
		if _, err := s.Token(context.Background(), "contoso", ""); !errors.As(err, &te) || te.AADSTS != 90033 {
			t.Fatalf("during the pause: %v", err)
		}
	}
	if n := e.entra.Requests(); n != requests {
		t.Errorf("%d requests to Entra during the pause", n-requests)
	}
	time.Sleep(time.Until(te.RetryAt))
	if _, err := s.Token(context.Background(), "contoso", ""); err != nil {
		t.Fatalf("after the pause: %v", err)
	}
}

// Failures in a row lengthen the pause; a token ends it.
func TestPauseBacksOff(t *testing.T) {
	e := newEnv(t)
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	e.entra.SetDown(&fakeentra.Failure{Status: 503, Code: "temporarily_unavailable", AADSTS: 90033, Description: "A transient error has occurred."})
	s := newStore(t, e.tenant(secret.NewClientSecret(clientSecret)))
	var pauses []time.Duration
	for i := 0; i < 3; i++ {
		start := time.Now()
		_, err := s.Token(context.Background(), "contoso", "")
		var te *tokenstore.Error
		if !errors.As(err, &te) {
			t.Fatal(err)
		}
		pauses = append(pauses, te.RetryAt.Sub(start))
		time.Sleep(time.Until(te.RetryAt))
	}
	if !(pauses[1] > pauses[0] && pauses[2] > pauses[0]*2) {
		t.Errorf("pauses %v do not grow", pauses)
	}
	e.entra.SetDown(nil)
	if _, err := s.Token(context.Background(), "contoso", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(context.Background(), "contoso", ""); err != nil {
		t.Fatalf("a token ends the pause: %v", err)
	}
}

func TestUnreachableAndUntrusted(t *testing.T) {
	e := newEnv(t)
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})

	t.Run("untrusted certificate", func(t *testing.T) {
		tn := e.tenant(secret.NewClientSecret(clientSecret))
		other, err := pki.NewCA("someone else")
		if err != nil {
			t.Fatal(err)
		}
		tn.RootCAs = other.Pool()
		s := newStore(t, tn)
		_, err = s.Token(context.Background(), "contoso", "")
		var te *tokenstore.Error
		if !errors.As(err, &te) || !te.Temporary {
			t.Fatalf("err = %v, want a temporary *tokenstore.Error", err)
		}
		if !strings.Contains(err.Error(), "SSL_CERT_FILE") {
			t.Errorf("error %q does not say how to trust the issuer", err)
		}
	})

	t.Run("nothing listening", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		tn := e.tenant(secret.NewClientSecret(clientSecret))
		tn.AuthorityHost = "https://" + addr
		s := newStore(t, tn)
		_, err = s.Token(context.Background(), "contoso", "")
		var te *tokenstore.Error
		if !errors.As(err, &te) || !te.Temporary || te.HTTPStatus != 0 {
			t.Fatalf("err = %#v, want a temporary network *tokenstore.Error", err)
		}
		if !strings.Contains(err.Error(), "not reachable") {
			t.Errorf("error = %q", err)
		}
	})

	t.Run("unknown tenant name", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Token(context.Background(), "nope", ""); !errors.Is(err, tokenstore.ErrUnknownTenant) {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("caller gives up", func(t *testing.T) {
		s := newStore(t, e.tenant(secret.NewClientSecret(clientSecret)))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := s.Token(ctx, "contoso", ""); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

func wantEntraError(t *testing.T, err error, code int, temporary bool) *tokenstore.Error {
	t.Helper()
	var te *tokenstore.Error
	if !errors.As(err, &te) {
		t.Fatalf("err = %v (%T), want *tokenstore.Error", err, err)
	}
	if te.AADSTS != code {
		t.Errorf("AADSTS = %d, want %d (err: %v)", te.AADSTS, code, err)
	}
	if te.Temporary != temporary {
		t.Errorf("Temporary = %v, want %v", te.Temporary, temporary)
	}
	return te
}

func TestIsMicrosoftAuthority(t *testing.T) {
	for authority, want := range map[string]bool{
		"https://login.microsoftonline.com":          true,
		"https://LOGIN.microsoftonline.us/":          true,
		"https://login.partner.microsoftonline.cn":   true,
		"https://127.0.0.1:8443":                     false,
		"https://login.microsoftonline.com.evil.net": false,
		"not a url %": false,
	} {
		if got := tokenstore.IsMicrosoftAuthority(authority); got != want {
			t.Errorf("IsMicrosoftAuthority(%q) = %v, want %v", authority, got, want)
		}
	}
}
