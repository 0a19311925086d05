//go:build integration

package bridge_test

import (
	"context"
	"crypto/tls"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// TestLegacyTLS checks the claim in the README: a listener with
// min_tls_version "1.0" and legacy_ciphers lets a TLS 1.0 client that only
// speaks AES128-SHA (RSA key exchange) in, and the default listener does
// not. The clients are OpenSSL's s_client and Python's ssl module, as an
// old printer's TLS stack would be.
func TestLegacyTLS(t *testing.T) {
	e := newEnv(t, envOptions{listeners: []bridge.Listener{
		{Name: "legacy", Address: "127.0.0.1:0", TLS: bridge.TLSImplicit, MinTLSVersion: tls.VersionTLS10, LegacyCiphers: true},
		{Name: "legacy-starttls", Address: "127.0.0.1:0", TLS: bridge.TLSStartTLS, MinTLSVersion: tls.VersionTLS10, LegacyCiphers: true},
		{Name: "default", Address: "127.0.0.1:0", TLS: bridge.TLSImplicit},
	}})

	t.Run("openssl", func(t *testing.T) {
		openssl := testenv.LookTool(t, "openssl")
		run := func(addr string, extra ...string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			args := append([]string{"s_client", "-connect", addr, "-tls1", "-cipher", "AES128-SHA:@SECLEVEL=0", "-ign_eof"}, extra...)
			cmd := exec.CommandContext(ctx, openssl, args...)
			cmd.Stdin = strings.NewReader("EHLO old-printer\r\nQUIT\r\n")
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		out, err := run(e.addr("legacy"))
		if err != nil || !strings.Contains(out, "AES128-SHA") || !strings.Contains(out, "250-Hello old-printer") {
			t.Fatalf("TLS 1.0 AES128-SHA to the legacy listener failed: %v\n%s", err, out)
		}
		if !strings.Contains(out, "TLSv1\n") && !strings.Contains(out, "Protocol  : TLSv1\n") && !strings.Contains(out, "TLSv1,") {
			t.Errorf("protocol not TLSv1:\n%s", out)
		}
		out, err = run(e.addr("legacy-starttls"), "-starttls", "smtp")
		if err != nil || !strings.Contains(out, "AES128-SHA") || !strings.Contains(out, "AUTH PLAIN LOGIN") {
			t.Fatalf("TLS 1.0 via STARTTLS failed: %v\n%s", err, out)
		}
		out, err = run(e.addr("default"))
		if err == nil && strings.Contains(out, "250-Hello old-printer") {
			t.Fatalf("default listener accepted TLS 1.0 AES128-SHA:\n%s", out)
		}
	})

	t.Run("python", func(t *testing.T) {
		python := testenv.LookTool(t, "python3")
		script := `
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = ssl.TLSVersion.TLSv1
ctx.set_ciphers("AES128-SHA:@SECLEVEL=0")
try:
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            banner = b""
            while not banner.endswith(b"\r\n"):
                chunk = s.recv(512)
                if not chunk:
                    break
                banner += chunk
            banner = banner.decode()
            print(s.version(), s.cipher()[0], banner.split()[0])
except (ssl.SSLError, ConnectionError) as e:
    print("FAILED", e)
`
		run := func(addr string) string {
			out, err := exec.Command(python, "-W", "ignore", "-c", script, addr).Output()
			if err != nil {
				t.Fatalf("python: %v\n%s", err, out)
			}
			return strings.TrimSpace(string(out))
		}
		if got := run(e.addr("legacy")); got != "TLSv1 AES128-SHA 220" {
			t.Errorf("legacy listener: %q, want TLSv1 AES128-SHA 220", got)
		}
		if got := run(e.addr("default")); !strings.HasPrefix(got, "FAILED") {
			t.Errorf("default listener: %q, want a failed handshake", got)
		}
	})
}
