package tokenstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// signIns records what a SignInObserver is told.
type signIns struct {
	mu     sync.Mutex
	needed map[string]bool
	tokens int // ObserveToken calls: token requests
}

func (s *signIns) ObserveToken(string, tokenstore.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens++
}

func (s *signIns) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens
}

func (s *signIns) ObserveSignIn(tenant, mailbox string, needed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.needed[tenant+"/"+mailbox] = needed
}

func (s *signIns) get(k string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.needed[k]
}

// Delegated sign-in in process, for the race detector: a token per
// mailbox from its own sign-in, concurrent callers, a revoked refresh
// token refused at once (not asked again) until a new Login, and a
// sign-in as the wrong user not kept.
func TestDelegated(t *testing.T) {
	e := newEnv(t)
	e.entra.AddApp(tenantID, fakeentra.App{ClientID: clientID, PublicClient: true})
	const mailbox, other = "scans@contoso.example", "other@contoso.example"
	e.entra.AddUser(tenantID, mailbox)
	e.entra.AddUser(tenantID, other)
	e.entra.SetUserTokenLifetime(300 * time.Second) // every request refreshes
	tn := e.tenant(secret.NewDelegated())
	tn.DelegatedScope = "https://outlook.office.com/SMTP.Send"
	tn.Cache = &tokenstore.Cache{Dir: t.TempDir(), Key: []byte(strings.Repeat("k", 32))}
	obs := &signIns{needed: map[string]bool{}}
	s, err := tokenstore.New([]tokenstore.Tenant{tn}, obs)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var te *tokenstore.Error
	if _, err := s.Token(ctx, "contoso", mailbox); !errors.As(err, &te) || !te.SignIn || te.Mailbox != mailbox || te.Temporary {
		t.Fatalf("before any sign-in: %v", err)
	}
	if !obs.get("contoso/" + mailbox) {
		t.Error("the observer was not told the mailbox needs a sign-in")
	}
	login := func(as string) error {
		done := make(chan struct{})
		go func() {
			defer close(done)
			code, err := e.entra.NextUserCode(10 * time.Second)
			if err == nil {
				err = e.entra.ApproveDeviceCode(code, as)
			}
			if err != nil {
				t.Error(err)
			}
		}()
		_, err := tokenstore.Login(ctx, tn, mailbox, func(p tokenstore.LoginPrompt) {
			if p.UserCode == "" || !strings.Contains(p.Message, p.UserCode) {
				t.Errorf("prompt without the code: %+v", p)
			}
		})
		<-done
		return err
	}
	if err := login(other); err == nil || !strings.Contains(err.Error(), "not "+mailbox) {
		t.Fatalf("a sign-in as another user: %v", err)
	}
	if err := login(mailbox); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(tn.Cache.Dir, "*.cache"))
	if len(files) != 1 {
		t.Fatalf("%d cache files, want 1", len(files))
	}
	data, _ := os.ReadFile(files[0])
	if strings.Contains(string(data), mailbox) || strings.Contains(string(data), "rt-") {
		t.Error("the cache file is readable")
	}
	// The pause after the failure before the sign-in is short here.
	var tok tokenstore.Token
	deadline := time.Now().Add(5 * time.Second)
	for {
		if tok, err = s.Token(ctx, "contoso", mailbox); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after the sign-in: %v", err)
	}
	if c, err := e.entra.Verify(tok.AccessToken); err != nil || c.UPN != mailbox || c.Scope != "SMTP.Send" || c.Audience != fakeentra.OutlookResource {
		t.Fatalf("the token's claims: %+v %v", c, err)
	}
	if obs.get("contoso/" + mailbox) {
		t.Error("the observer still thinks the mailbox needs a sign-in")
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Token(ctx, "contoso", mailbox); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()

	e.entra.RevokeSignIns(mailbox)
	if _, err := s.Token(ctx, "contoso", mailbox); !errors.As(err, &te) || !te.SignIn || te.AADSTS != 50173 ||
		!strings.Contains(err.Error(), "smtpbridge tenant login --tenant contoso --mailbox "+mailbox) {
		t.Fatalf("after the revocation: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // past the pause
	before, observed := e.entra.Requests(), obs.requests()
	if _, err := s.Token(ctx, "contoso", mailbox); !errors.As(err, &te) || !te.SignIn {
		t.Fatalf("asked again: %v", err)
	}
	if n := e.entra.Requests() - before; n != 0 {
		t.Errorf("%d requests to Entra with the refused refresh token, want none until a new sign-in", n)
	}
	if n := obs.requests() - observed; n != 0 {
		t.Errorf("the refusal given again counted as %d token requests, want none", n)
	}
	if !obs.get("contoso/" + mailbox) {
		t.Error("the observer was not told the mailbox needs a sign-in")
	}
	if err := login(mailbox); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := s.Token(ctx, "contoso", mailbox); err != nil {
		t.Fatalf("after the new sign-in: %v", err)
	}
}
