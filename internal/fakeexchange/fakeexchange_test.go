package fakeexchange_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/pki"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

const tenant = "33333333-0000-4000-8000-000000000003"

type xoauth2 struct{ user, token string }

func (x xoauth2) Start() (string, []byte, error) { return "XOAUTH2", nil, nil }
func (x xoauth2) Next(c []byte) ([]byte, error) {
	if len(c) > 0 {
		return []byte{}, nil
	}
	return []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

// TestExchangeChecks: the fake must refuse each set-up mistake with the
// reply Exchange Online gives, or the bridge's tests prove nothing.
func TestExchangeChecks(t *testing.T) {
	ca, _ := pki.NewCA("fake exchange test")
	leaf, _ := ca.Issue("127.0.0.1")
	entra, err := fakeentra.New()
	if err != nil {
		t.Fatal(err)
	}
	entra.Start("127.0.0.1:0", leaf.TLS)
	defer entra.Close()
	entra.AddTenant(tenant)
	good := entra.AddApp(tenant, fakeentra.App{ClientID: "good", Secrets: []fakeentra.Secret{{Value: "s"}}})
	wrongOID := entra.AddApp(tenant, fakeentra.App{ClientID: "wrong-oid", Secrets: []fakeentra.Secret{{Value: "s"}}})
	noRole := entra.AddApp(tenant, fakeentra.App{ClientID: "no-role", Roles: []string{}, Secrets: []fakeentra.Secret{{Value: "s"}}})
	rbac := entra.AddApp(tenant, fakeentra.App{ClientID: "rbac", Roles: []string{}, Secrets: []fakeentra.Secret{{Value: "s"}}})

	exo := fakeexchange.New(entra)
	exo.AddServicePrincipal(tenant, "good", good.ObjectID)
	exo.AddServicePrincipal(tenant, "wrong-oid", wrongOID.AppObjectID) // the classic mistake
	exo.AddServicePrincipal(tenant, "no-role", noRole.ObjectID)
	exo.AddServicePrincipal(tenant, "rbac", rbac.ObjectID)
	all := []string{good.ObjectID, wrongOID.ObjectID, noRole.ObjectID}
	exo.AddMailbox(fakeexchange.Mailbox{Address: "scanner@x.example", TenantID: tenant, FullAccess: all, RBACApps: []string{"rbac"}})
	exo.AddMailbox(fakeexchange.Mailbox{Address: "off@x.example", TenantID: tenant, FullAccess: all, SMTPAuthDisabled: true})
	if err := exo.Start("127.0.0.1:0", leaf.TLS); err != nil {
		t.Fatal(err)
	}
	defer exo.Close()

	token := func(client string) string {
		s, err := tokenstore.New([]tokenstore.Tenant{{Name: client, TenantID: tenant, ClientID: client,
			Credential: secret.NewClientSecret("s"), AuthorityHost: entra.URL(), Scope: "https://outlook.office365.com/.default", RootCAs: ca.Pool()}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := s.Token(context.Background(), client, "")
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	login := func(user, tok string) error {
		c, err := smtp.DialStartTLS(exo.Addr(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Auth(xoauth2{user, tok}); err != nil {
			return err
		}
		return c.Mail(user, nil)
	}
	tests := []struct {
		name, client, user, want string
	}{
		{"healthy", "good", "scanner@x.example", ""},
		{"RBAC for Applications, no role in the token", "rbac", "scanner@x.example", ""},
		{"service principal with the app registration's object ID", "wrong-oid", "scanner@x.example", "535 5.7.3"},
		{"no SMTP.SendAsApp role and no RBAC", "no-role", "scanner@x.example", "535 5.7.3"},
		{"mailbox without permission", "good", "nobody@x.example", "535 5.7.3"},
		{"SMTP AUTH disabled", "good", "off@x.example", "535 5.7.139"},
		{"garbage token", "", "scanner@x.example", "535 5.7.3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := "not.a.token"
			if tc.client != "" {
				tok = token(tc.client)
			}
			err := login(tc.user, tok)
			var se *smtp.SMTPError
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("err = %v", err)
			case tc.want != "" && !errors.As(err, &se):
				t.Fatalf("err = %v, want %s", err, tc.want)
			case tc.want != "":
				got := fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
				if got != tc.want {
					t.Errorf("got %s %s, want %s", got, se.Message, tc.want)
				}
			}
		})
	}

	t.Run("MAIL without AUTH, and as another sender", func(t *testing.T) {
		c, err := smtp.DialStartTLS(exo.Addr(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var se *smtp.SMTPError
		if err := c.Mail("scanner@x.example", nil); !errors.As(err, &se) || se.Code != 530 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 57}) {
			t.Errorf("MAIL before AUTH: %v", err)
		}
		if err := c.Auth(xoauth2{"scanner@x.example", token("good")}); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail("ceo@x.example", nil); !errors.As(err, &se) || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 60}) {
			t.Errorf("MAIL as another sender: %v", err)
		}
	})
}
