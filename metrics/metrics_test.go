package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/tokenstore"
)

func TestMetrics(t *testing.T) {
	m := New("1.2.3", []string{"lan"}, []string{"contoso"})
	m.Connection("lan")
	m.AuthAttempt("lan", "LOGIN", "bad_credentials")
	exp := time.Unix(1900000000, 0)
	m.ObserveToken("contoso", tokenstore.Token{ExpiresOn: exp}, nil)
	m.ObserveToken("contoso", tokenstore.Token{ExpiresOn: exp, FromCache: true}, nil)
	m.ObserveToken("contoso", tokenstore.Token{ExpiresOn: exp, FromCache: true}, nil)
	m.ObserveToken("contoso", tokenstore.Token{}, errors.New("AADSTS7000215"))

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`smtpbridge_build_info{goversion="go`,
		`smtpbridge_connections_total{listener="lan"} 1`,
		`smtpbridge_auth_attempts_total{listener="lan",mechanism="LOGIN",result="bad_credentials"} 1`,
		// Pre-set to zero so rate() sees the first event.
		`smtpbridge_auth_attempts_total{listener="lan",mechanism="PLAIN",result="success"} 0`,
		`smtpbridge_token_requests_total{result="success",source="identity_provider",tenant="contoso"} 1`,
		`smtpbridge_token_requests_total{result="success",source="cache",tenant="contoso"} 2`,
		`smtpbridge_token_requests_total{result="failure",source="identity_provider",tenant="contoso"} 1`,
		`smtpbridge_token_expiry_timestamp_seconds{tenant="contoso"} 1.9e+09`,
		"go_goroutines", "process_",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if got := get(t, srv.URL+"/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := srv(url)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func srv(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
