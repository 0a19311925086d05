//go:build integration

package main

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// The certificate tls-cert makes, with real clients: swaks over
// STARTTLS, and Python's ssl pinning the printed fingerprint.
func TestTLSCertRealClients(t *testing.T) {
	starttls, _, fp := tlsCertBridge(t)
	host, port, _ := net.SplitHostPort(starttls)
	out, err := exec.Command(testenv.LookTool(t, "swaks"), "--server", starttls, "--tls", "--auth", "LOGIN", "--auth-user", "mfp-2f",
		"--auth-password", password, "--quit-after", "AUTH").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "235 2.0.0") {
		t.Errorf("swaks --tls: %v\n%s", err, out)
	}
	script := `
import hashlib, smtplib, ssl, sys
host, port, want, user, pw = sys.argv[1:]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # pinned below instead, as a printer pins it
s = smtplib.SMTP(host, int(port), timeout=10)
s.starttls(context=ctx)
got = hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest().upper()
if got != want.replace(":", ""):
    sys.exit("fingerprint " + got + ", pinned " + want)
s.login(user, pw)
s.quit()
print("pinned and logged in")
`
	out, err = exec.Command(testenv.LookTool(t, "python3"), "-c", script, host, port, fp, "mfp-2f", password).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "pinned and logged in") {
		t.Errorf("python ssl with the pinned fingerprint: %v\n%s", err, out)
	}
}
