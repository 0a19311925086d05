package secret

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

func TestSecretsNeverPrint(t *testing.T) {
	s := String("hunter2-secret")
	c := NewClientSecret("hunter2-secret")
	tn := struct {
		Name                string
		ClientSecret        String
		CertificatePassword String
		Credential          Credential
	}{"x", s, "pfx-pass", c}
	js, _ := json.Marshal(tn)
	var logged strings.Builder
	log := zerolog.New(&logged)
	log.Info().Interface("tenant", tn).Stringer("secret", s).Msg("")
	outputs := []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x", s, s, s, s, s, s),
		fmt.Sprintf("%v %+v %#v", tn, tn, tn), fmt.Sprintf("%v %+v %#v %x", c, c, c, c), string(js), logged.String(),
	}
	for _, out := range outputs {
		if strings.Contains(out, "hunter2") || strings.Contains(out, "pfx-pass") || strings.Contains(out, "68756e74657232") {
			t.Errorf("secret leaked: %s", out)
		}
		if !strings.Contains(out, "[redacted]") {
			t.Errorf("no [redacted] in %s", out)
		}
	}
	if s.Value() != "hunter2-secret" || c.Secret() != "hunter2-secret" {
		t.Error("Value/Secret do not return the secret")
	}
	if String("").String() != "" || !c.Equal(NewClientSecret("hunter2-secret")) || c.Equal(NewClientSecret("other")) {
		t.Error("empty secret or Equal")
	}
}

// Each kind of credential has its label, and none shows its contents.
func TestCredentialLabel(t *testing.T) {
	for _, c := range []struct {
		cred     Credential
		clientID string
		want     string
	}{
		{NewClientSecret("Zq8~canary"), "app", LabelClientSecret},
		{NewCertificate([]*x509.Certificate{{}}, nil), "app", LabelCertificate},
		{NewFederatedTokenFile("/var/run/token"), "app", LabelFederatedToken},
		{NewDelegated(), "app", LabelDelegated},
		{NewManagedIdentity(""), "", LabelManagedIdentity},
		{NewManagedIdentity("user-assigned"), "app", LabelManagedIdentityFederated},
		{Credential{}, "app", LabelNone},
	} {
		if got := c.cred.Label(c.clientID); got != c.want || strings.Contains(got, "canary") {
			t.Errorf("%v.Label(%q) = %q, want %q", c.cred, c.clientID, got, c.want)
		}
	}
}
