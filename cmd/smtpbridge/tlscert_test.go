package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// tlsCertBridge makes a certificate with tls-cert and runs the bridge
// with a STARTTLS listener and a legacy (TLS 1.0, RSA key exchange) one
// on it; it returns the listeners and the printed SHA-256 fingerprint.
func tlsCertBridge(t *testing.T) (starttls, legacy, fingerprint string) {
	t.Helper()
	u := startFakes(t)
	dir := filepath.Join(u.dir, "tls")
	out, err := runCmd(t, "", binary, "tls-cert", "--host", "printer-gw.lan", "--ip", "127.0.0.1", "--out", dir)
	if err != nil {
		t.Fatalf("tls-cert: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`SHA-256: ([0-9A-F:]{95})`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "cert_file: "+filepath.Join(dir, "printer-gw.lan.crt")) {
		t.Fatalf("tls-cert's output lacks the fingerprint or the listener lines:\n%s", out)
	}
	if info, err := os.Stat(filepath.Join(dir, "printer-gw.lan.key")); err != nil || info.Mode().Perm()&0o007 != 0 {
		t.Errorf("the key file: %v, mode %v (others must not read it)", err, info.Mode())
	}
	if out, err := runCmd(t, "", binary, "tls-cert", "--host", "printer-gw.lan", "--out", dir); err == nil || !strings.Contains(out, "exists") {
		t.Errorf("tls-cert over existing files: %v\n%s", err, out)
	}
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	starttls, legacy = testenv.FreePort(t), testenv.FreePort(t)
	cfg := u.configFrom(t, `
listeners:
  - {name: lan, address: {{q .S}}, tls: starttls, cert_file: tls/printer-gw.lan.crt, key_file: tls/printer-gw.lan.key}
  - {name: legacy, address: {{q .L}}, tls: starttls, cert_file: tls/printer-gw.lan.crt, key_file: tls/printer-gw.lan.key, min_tls_version: "1.0", legacy_ciphers: true}
tenants:
{{template "contoso" .}}devices:
  - {name: mfp-2f, username: mfp-2f, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example}
spool: {dir: spool}
http: {address: {{q .HTTP}}}
`, map[string]any{"S": starttls, "L": legacy, "Hash": hash, "HTTP": testenv.FreePort(t)})
	path := filepath.Join(u.dir, "tlscert.yaml")
	writeFile(t, path, cfg)
	startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret}, []string{starttls, legacy}, "serve", "--config", path)
	return starttls, legacy, m[1]
}

// pinned is a TLS config that trusts exactly the certificate with this
// SHA-256 fingerprint, as a device that pins one does.
func pinned(fingerprint string) *tls.Config {
	want := strings.ReplaceAll(fingerprint, ":", "")
	return &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
		sum := sha256.Sum256(raw[0])
		if !strings.EqualFold(hex.EncodeToString(sum[:]), want) {
			return errors.New("not the pinned certificate")
		}
		return nil
	}}
}

// smtpbridge tls-cert makes files a STARTTLS listener loads: a client
// pinning the printed fingerprint logs in over STARTTLS, and a TLS 1.0
// client with RSA key exchange (an old printer) on the legacy listener.
func TestTLSCert(t *testing.T) {
	starttls, legacy, fp := tlsCertBridge(t)
	c, err := smtp.DialStartTLS(starttls, pinned(fp))
	if err != nil {
		t.Fatalf("STARTTLS pinning the printed fingerprint: %v", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "mfp-2f", password)); err != nil {
		t.Errorf("login over STARTTLS: %v", err)
	}
	c.Close()
	old := pinned(fp)
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
	old.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_CBC_SHA}
	c, err = smtp.DialStartTLS(legacy, old)
	if err != nil {
		t.Fatalf("TLS 1.0 with RSA key exchange on the legacy listener: %v", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "mfp-2f", password)); err != nil {
		t.Errorf("login over TLS 1.0: %v", err)
	}
	// (The handshake happens at the first command after STARTTLS.)
	state, _ := c.TLSConnectionState()
	if state.Version != tls.VersionTLS10 || state.CipherSuite != tls.TLS_RSA_WITH_AES_128_CBC_SHA {
		t.Errorf("negotiated %x/%x, want TLS 1.0 with TLS_RSA_WITH_AES_128_CBC_SHA", state.Version, state.CipherSuite)
	}
}
