package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// cardValue is a key's value in a text device card.
func cardValue(t *testing.T, card, key string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `: (.*)$`).FindStringSubmatch(card)
	if m == nil {
		t.Fatalf("the card has no %q line:\n%s", key, card)
	}
	return m[1]
}

// deviceLogin logs in as user with pw on addr and says whether the
// bridge took it.
func deviceLogin(t *testing.T, addr, user, pw string) bool {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.Auth(sasl.NewPlainClient("", user, pw)) == nil
}

// Enrolling a device in one command on a running bridge: device add
// writes it into the config (keeping the rest of the file), reloads the
// bridge and prints a card whose password logs in at once, with the
// listeners' ports and TLS settings; passwd makes the old password fail
// and the new one work; remove takes it out; list shows when each was
// last seen. The password is in no file and no log.
func TestDeviceEnrollment(t *testing.T) {
	u := startFakes(t)
	plain, tlsAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, tlsAddr, httpAddr)
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret}
	p := startBridge(t, env, []string{plain, tlsAddr}, "serve", "--config", path)
	before, _ := os.ReadFile(path)

	out, code := runBridge(t, env, "device", "add", "--config", path, "--name", "mfp-3f", "--tenant", "contoso",
		"--mailbox", "scanner@contoso.example", "--networks", "127.0.0.0/8")
	if code != 0 {
		t.Fatalf("device add: exit %d\n%s", code, out)
	}
	pw := cardValue(t, out, "password")
	if !regexp.MustCompile(`^[A-Za-z0-9]{16,}$`).MatchString(pw) || strings.ContainsAny(pw, "0O1lIi") {
		t.Errorf("password %q: want 16 or more letters and digits without look-alikes", pw)
	}
	if cardValue(t, out, "username") != "mfp-3f" || cardValue(t, out, "sender") != "scanner@contoso.example" {
		t.Errorf("card:\n%s", out)
	}
	_, plainPort, _ := strings.Cut(plain, ":")
	_, tlsPort, _ := strings.Cut(tlsAddr, ":")
	if cardValue(t, out, "port (1)") != plainPort || !strings.HasPrefix(cardValue(t, out, "security (1)"), "none") ||
		cardValue(t, out, "port (2)") != tlsPort || !strings.HasPrefix(cardValue(t, out, "security (2)"), "STARTTLS") {
		t.Errorf("the card's ports and TLS modes are not the listeners':\n%s", out)
	}
	if !strings.Contains(out, "reloaded") {
		t.Errorf("the bridge was not reloaded:\n%s", out)
	}
	after, _ := os.ReadFile(path)
	if strings.Contains(string(after), pw) {
		t.Error("the config holds the password itself")
	}
	if !deviceLogin(t, plain, "mfp-3f", pw) {
		t.Fatalf("the new device cannot log in with its card's password on the running bridge\n%s", p.logs.String())
	}

	out, code = runBridge(t, env, "device", "passwd", "--config", path, "--name", "mfp-3f")
	if code != 0 {
		t.Fatalf("device passwd: exit %d\n%s", code, out)
	}
	pw2 := cardValue(t, out, "password")
	if pw2 == pw || deviceLogin(t, plain, "mfp-3f", pw) || !deviceLogin(t, plain, "mfp-3f", pw2) {
		t.Errorf("after passwd: the old password must fail and the new one work")
	}

	out, code = runBridge(t, env, "device", "list", "--config", path)
	if code != 0 || !regexp.MustCompile(`(?m)^mfp-3f\s+mfp-3f\s+contoso\s+scanner@contoso.example\s+\d{4}-\d\d-\d\d \d\d:\d\d$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^fab-mfp .* never$`).MatchString(out) {
		t.Errorf("device list: exit %d\n%s", code, out)
	}

	out, code = runBridge(t, env, "device", "add", "--config", path, "--name", "bad", "--tenant", "nowhere", "--mailbox", "x@contoso.example")
	if code == 0 || !strings.Contains(out, "nothing was written") {
		t.Errorf("a device of an unknown tenant: exit %d\n%s", code, out)
	}
	if now, _ := os.ReadFile(path); strings.Contains(string(now), "nowhere") {
		t.Error("a config that would not load was written")
	}

	if out, code = runBridge(t, env, "device", "remove", "--config", path, "--name", "mfp-3f"); code != 0 {
		t.Fatalf("device remove: exit %d\n%s", code, out)
	}
	if deviceLogin(t, plain, "mfp-3f", pw2) {
		t.Error("a removed device still logs in")
	}
	if now, _ := os.ReadFile(path); string(now) != string(before) {
		t.Errorf("add then remove did not give the file back byte for byte:\n%s", now)
	}
	for _, secret := range []string{pw, pw2} {
		if strings.Contains(p.logs.String(), secret) {
			t.Error("the bridge's log holds a device password")
		}
	}
}

// device add on the shipped example config, as an admin has it once the
// example's two placeholder hashes are replaced: every line of it stays
// as it was (comments and all), the new device logs in over STARTTLS
// with the card's password on the running bridge without a restart, and
// the card names the lan listener's port and STARTTLS.
func TestDeviceAddOnTheShippedExample(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../../examples/smtpbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ca := exampleFiles(t, dir)
	lan, legacy, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	text := withOwnPasswords(t, string(data))
	for from, to := range map[string]string{`"0.0.0.0:587"`: strconv.Quote(lan), `"0.0.0.0:2525"`: strconv.Quote(legacy),
		"/var/lib/smtpbridge/spool": filepath.Join(dir, "spool"), "/var/lib/smtpbridge/audit.log": filepath.Join(dir, "audit.log")} {
		if !strings.Contains(text, from) {
			t.Fatalf("the example no longer has %s", from)
		}
		text = strings.ReplaceAll(text, from, to)
	}
	path := filepath.Join(dir, "smtpbridge.yaml")
	writeFile(t, path, text)
	env := []string{"CONTOSO_SECRET=example-secret-value", "SMTPBRIDGE_HTTP_ADDRESS=" + httpAddr}
	p := startBridge(t, env, []string{lan, legacy}, "serve", "--config", path)

	out, code := runBridge(t, env, "device", "add", "--config", path, "--name", "mfp-3f", "--tenant", "contoso",
		"--mailbox", "scans@contoso.com", "--networks", "127.0.0.0/8")
	if code != 0 {
		t.Fatalf("device add on the example: exit %d\n%s", code, out)
	}
	after, _ := os.ReadFile(path)
	before := strings.SplitAfter(text, "\n")
	now := strings.SplitAfter(string(after), "\n")
	i := 0
	for i < len(before) && before[i] == now[i] {
		i++
	}
	added := len(now) - len(before)
	if added <= 0 || strings.Join(now[:i], "")+strings.Join(now[i+added:], "") != text {
		t.Fatalf("device add changed lines of the example besides adding the device:\n%s", after)
	}
	_, lanPort, _ := strings.Cut(lan, ":")
	if cardValue(t, out, "port (1)") != lanPort || !strings.HasPrefix(cardValue(t, out, "security (1)"), "STARTTLS") {
		t.Errorf("the card does not name the lan listener's port %s and STARTTLS:\n%s", lanPort, out)
	}
	c, err := smtp.DialStartTLS(lan, &tls.Config{ServerName: "smtpbridge.contoso.local", RootCAs: ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "mfp-3f", cardValue(t, out, "password"))); err != nil {
		t.Fatalf("the new device's login with its card's password on the running bridge: %v\n%s", err, p.logs.String())
	}
}
