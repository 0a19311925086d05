package config

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/pki"
)

func testHash(t *testing.T) string {
	t.Helper()
	h, err := passwd.NewBcrypt([]byte("pw"), 4)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func writeConfig(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "smtpbridge.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

const goodConfig = `
listeners:
  - name: lan
    address: "127.0.0.1:2525"
    allow_insecure_auth: true
tenants:
  - name: contoso
    tenant_id: contoso.onmicrosoft.com
    client_id: 11111111-2222-3333-4444-555555555555
    client_secret: "${CONTOSO_SECRET}"
devices:
  - name: mfp-2f
    username: mfp-2f
    password_hash: "%s"
    tenant: contoso
    mailbox: scanner@contoso.com
    allowed_recipients: [contoso.com, "bob@partner.org"]
    networks: ["192.168.10.0/24", "10.0.0.5"]
limits:
  max_recipients: ${MAXR}
`

func TestLoadGood(t *testing.T) {
	dir := t.TempDir()
	p := writeConfig(t, dir, fmt.Sprintf(goodConfig, testHash(t)))
	cfg, err := LoadWithEnv(p, env(map[string]string{"CONTOSO_SECRET": "s3cr3t: with yaml # chars", "MAXR": "42"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Tenants[0].Credential.Secret(); got != "s3cr3t: with yaml # chars" {
		t.Errorf("secret = %q", got)
	}
	if cfg.Limits.MaxRecipients != 42 {
		t.Errorf("max_recipients from env = %d, want 42", cfg.Limits.MaxRecipients)
	}
	// Defaults.
	tn := cfg.Tenants[0]
	if tn.AuthorityHost != DefaultAuthorityHost || tn.SMTPHost != DefaultSMTPHost || tn.TokenScope != DefaultTokenScope {
		t.Errorf("tenant defaults not applied: %+v", tn)
	}
	if cfg.Listeners[0].TLS != TLSNone || cfg.Listeners[0].MinTLSVersion != "1.2" {
		t.Errorf("listener defaults not applied: %+v", cfg.Listeners[0])
	}
	if cfg.Devices[0].FromPolicy != FromRewrite || cfg.Limits.MaxMessageBytes != DefaultMaxMessageBytes {
		t.Error("device/limit defaults not applied")
	}
	if cfg.Spool.Dir != filepath.Join(dir, "spool") {
		t.Errorf("spool dir %q not resolved against the config's directory", cfg.Spool.Dir)
	}
	if cfg.Log.Level != "info" || cfg.Log.Format != "json" || cfg.HTTP.Address != DefaultHTTPAddress {
		t.Error("log/http defaults not applied")
	}
	want := Delivery{Mode: ModeHybrid, SyncTimeout: 20 * time.Second, RetryInitial: time.Minute,
		RetryMax: 30 * time.Minute, MaxAge: 48 * time.Hour, RememberRefusals: time.Hour}
	if cfg.Delivery != want {
		t.Errorf("delivery defaults = %+v, want %+v", cfg.Delivery, want)
	}
	if tn.MaxConnectionsPerMailbox != 3 || tn.MaxMessagesPerMinute != 30 || tn.MaxRecipientsPerDay != 10000 {
		t.Errorf("tenant limits = %d conns, %d/min; want Exchange's 3 and 30", tn.MaxConnectionsPerMailbox, tn.MaxMessagesPerMinute)
	}
	// Compiled once, here, for the rest of the bridge.
	d := cfg.Devices[0].Parsed
	if d.PasswordHash == nil || !d.PasswordHash.Verify([]byte("pw")) || d.Mailbox.String() != cfg.Devices[0].Mailbox {
		t.Errorf("device not compiled: hash %v, mailbox %q", d.PasswordHash, d.Mailbox)
	}
	if len(d.Networks) != 2 || d.Networks[0].String() != "192.168.10.0/24" || d.Networks[1].String() != "10.0.0.5/32" {
		t.Errorf("device networks = %v", d.Networks)
	}
	if d.Mode != ModeHybrid || cfg.Listeners[0].MinVersion != tls.VersionTLS12 {
		t.Errorf("device mode %q, listener TLS version %x", d.Mode, cfg.Listeners[0].MinVersion)
	}
}

func TestDeliverySettings(t *testing.T) {
	dir := t.TempDir()
	base := fmt.Sprintf(goodConfig, testHash(t))
	const globalDelivery = `
delivery:
  mode: queue
  sync_timeout: 5s
  retry_initial: 30s
  retry_max: 10m
  max_age: 24h
  bounce_to: it@contoso.com
`
	good := strings.Replace(base+globalDelivery, "    networks:", "    delivery: {mode: sync, bounce_to: printers@contoso.com}\n    networks:", 1)
	cfg, err := LoadWithEnv(writeConfig(t, dir, good), env(map[string]string{"CONTOSO_SECRET": "x", "MAXR": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Delivery.RetryInitial != 30*time.Second || cfg.Delivery.MaxAge != 24*time.Hour {
		t.Errorf("delivery = %+v", cfg.Delivery)
	}
	if p := cfg.Devices[0].Parsed; p.Mode != ModeSync || p.BounceTo != "printers@contoso.com" {
		t.Errorf("device override: mode %q bounce_to %q", p.Mode, p.BounceTo)
	}
	global, err := LoadWithEnv(writeConfig(t, t.TempDir(), base+globalDelivery), env(map[string]string{"CONTOSO_SECRET": "x", "MAXR": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	if p := global.Devices[0].Parsed; p.Mode != ModeQueue || p.BounceTo != "it@contoso.com" {
		t.Errorf("global delivery: mode %q bounce_to %q", p.Mode, p.BounceTo)
	}

	bad := base + `
delivery:
  mode: later
  sync_timeout: 20
  retry_initial: 10m
  retry_max: 1m
  bounce_to: "not an address"
`
	bad = strings.Replace(bad, "    networks:", "    max_messages_per_minute: 1\n    delivery: {mode: sometimes}\n    networks:", 1)
	bad = strings.Replace(bad, "    client_secret:", "    max_connections_per_mailbox: -1\n    client_secret:", 1)
	_, err = LoadWithEnv(writeConfig(t, dir, bad), env(map[string]string{"CONTOSO_SECRET": "x", "MAXR": "1"}))
	if err == nil {
		t.Fatal("bad delivery settings accepted")
	}
	for _, w := range []string{
		`delivery.mode: "later" is not one of hybrid, queue, sync`,
		`delivery.sync_timeout: 20 has no unit: write a duration such as 20s`,
		`delivery.retry_max: 1m0s is shorter than retry_initial (10m0s)`,
		`delivery.bounce_to: "not an address"`,
		`devices[0].delivery.mode: "sometimes" is not one of hybrid, queue, sync`,
		`devices[0].max_messages_per_minute: unknown key`,
		`tenants[0].max_connections_per_mailbox: must be positive`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("problem list lacks %q\ngot: %v", w, err)
		}
	}
}

// A broken config lists every problem at once, each with its key and line.
func TestLoadListsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	body := `
hostname: "bad host"
listeners:
  - name: lan
    adress: "0.0.0.0:2525"
    tls: starttls
    min_tls_version: 1.0
  - name: lan
    address: "nonsense"
    tls: sometimes
    min_tls_version: 1.4
tenants:
  - name: contoso
    tenant_id: common
    client_id: not-a-guid
    client_secret: "${MISSING_SECRET}"
    client_secret_file: /nonexistent
    authority_host: "http://login.example.com/path"
    token_scope: "https://outlook.office365.com/SMTP.Send"
  - name: fabrikam
    tenant_id: 11111111-2222-3333-4444-555555555555
    client_id: 11111111-2222-3333-4444-555555555555
    client_secret: literal
    certificate_file: app.pem
devices:
  - name: mfp
    username: mfp
    password_hash: hunter2
    tenant: contso
    mailbox: "not an address"
    from_policy: sometimes
    allowed_recipients: ["*.contoso.com"]
    networks: ["192.168.1.1/24", "banana"]
  - name: mfp
    username: mfp
    password_hash: "$2a$04$invalid"
    tenant: contoso
    mailbox: a@b.c
limits:
  max_recipients: lots
log:
  level: chatty
`
	p := writeConfig(t, dir, body)
	_, err := LoadWithEnv(p, env(nil))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("want *config.Error, got %v", err)
	}
	text := err.Error()
	want := []string{
		`line 2: hostname: "bad host" is not a host name`,
		`line 4: listeners[0].address: required, e.g. "0.0.0.0:2525"`,
		`line 5: listeners[0].adress: unknown key; did you mean "address"?`,
		`listeners[0]: tls: starttls needs cert_file and key_file`,
		`listeners[1].min_tls_version: "1.4" is not one of`,
		`listeners[1].name: "lan" is used twice`,
		`listeners[1].address: "nonsense" is not host:port`,
		`listeners[1].tls: "sometimes" is not one of none, starttls, implicit`,
		`tenants[0].client_secret: environment variable MISSING_SECRET is not set`,
		`tenants[0].tenant_id: "common" does not work for app-only tokens`,
		`tenants[0].client_id: "not-a-guid" is not the Application (client) ID`,
		`tenants[1]: set exactly one of client_secret, client_secret_file, certificate_file, federated_token_file, managed_identity (found 2)`,
		`tenants[0].authority_host: "http://login.example.com/path" must be an https URL`,
		`tenants[0].token_scope: "https://outlook.office365.com/SMTP.Send" must end in /.default`,
		`devices[0].password_hash: not a bcrypt`,
		`devices[0].tenant: unknown tenant "contso" (known: "contoso", "fabrikam")`,
		`devices[0].mailbox: "not an address"`,
		`devices[0].from_policy: "sometimes" is not one of rewrite, enforce`,
		`devices[0].allowed_recipients[0]: "*.contoso.com"`,
		`devices[0].networks[0]: "192.168.1.1/24" has host bits set; did you mean 192.168.1.0/24?`,
		`devices[0].networks[1]: "banana" is not a CIDR`,
		`devices[1].name: "mfp" is used twice`,
		`devices[1].username: "mfp" is already used by device "mfp"`,
		`devices[1].password_hash: bcrypt hash`,
		`limits.max_recipients: wrong type`,
		`log.level: "chatty" is not one of debug, info, warn, error`,
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("problem list lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("got:\n%s", text)
	}
	if strings.Contains(text, "hunter2") && !strings.Contains(text, "never put the password itself here") {
		t.Error("a plaintext password in password_hash is echoed without the hint")
	}
}

func TestLoadEmptyAndInvalidYAML(t *testing.T) {
	dir := t.TempDir()
	for body, want := range map[string]string{
		"":                 "the file is empty",
		"listeners: [\n":   "not valid YAML",
		"- just\n- list\n": "top level must be a mapping",
	} {
		_, err := LoadWithEnv(writeConfig(t, dir, body), env(nil))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("body %q: error %v, want %q", body, err, want)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestEnvExpansion(t *testing.T) {
	l := &loader{lookup: env(map[string]string{"A": "x", "EMPTY": ""}), lines: map[string]int{}, fromEnv: map[string]bool{}}
	cases := map[string]string{
		"${A}":                  "x",
		"pre-${A}-post":         "pre-x-post",
		"$${A}":                 "${A}",
		"${EMPTY}":              "",
		"$2a$10$abc":            "$2a$10$abc",
		"cost $5 ${A}$$":        "cost $5 x$$",
		"${A:-d}":               "x",
		"${NOPE:-d}":            "d",
		"${EMPTY:-d}":           "d",
		"${NOPE:-}":             "",
		"${NOPE:-a:b:c}":        "a:b:c",
		"${NOPE:-1.2.3.4:9464}": "1.2.3.4:9464",
	}
	for in, want := range cases {
		n := scalar(in)
		l.expandEnv(n, "k")
		if n.Value != want {
			t.Errorf("expand %q = %q, want %q", in, n.Value, want)
		}
	}
	if len(l.problems) != 0 {
		t.Errorf("unexpected problems: %v", l.problems)
	}
	for _, bad := range []string{"${NOPE}", "${A", "${1X}", "${1X:-d}", "${:-d}"} {
		l.problems = nil
		l.expandEnv(scalar(bad), "k")
		if len(l.problems) != 1 {
			t.Errorf("expand %q: problems %v, want one", bad, l.problems)
		}
	}
}

func TestCertificateCredentials(t *testing.T) {
	dir := t.TempDir()
	app, err := pki.NewAppCert("smtpbridge-app", time.Now().AddDate(1, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	pemPath := filepath.Join(dir, "app.pem")
	os.WriteFile(pemPath, app.PEM, 0o600)
	pfx, err := pkcs12.Modern.WithRand(rand.Reader).Encode(app.Key, app.Cert, nil, "pfx-pass")
	if err != nil {
		t.Fatal(err)
	}
	pfxPath := filepath.Join(dir, "app.pfx")
	os.WriteFile(pfxPath, pfx, 0o600)
	soon, _ := pki.NewAppCert("soon", time.Now().Add(10*24*time.Hour))
	os.WriteFile(filepath.Join(dir, "soon.pem"), soon.PEM, 0o600)
	old, _ := pki.NewAppCert("old", time.Now().Add(-time.Hour))
	os.WriteFile(filepath.Join(dir, "old.pem"), old.PEM, 0o600)
	os.WriteFile(filepath.Join(dir, "certonly.pem"), app.PEM[:strings.Index(string(app.PEM), "-----BEGIN PRIVATE KEY")], 0o600)

	tenant := func(file, password string) string {
		return fmt.Sprintf(`
listeners: [{name: lan, address: "127.0.0.1:2525", allow_insecure_auth: true}]
tenants:
  - name: t
    tenant_id: 11111111-2222-3333-4444-555555555555
    client_id: 11111111-2222-3333-4444-555555555555
    certificate_file: %s
    certificate_password: %q
devices: [{name: d, username: d, password_hash: "%s", tenant: t, mailbox: a@b.c}]
`, file, password, testHash(t))
	}
	for _, tc := range []struct {
		file, password, wantErr, wantWarn string
	}{
		{file: "app.pem"},
		{file: "app.pfx", password: "pfx-pass"},
		{file: "app.pfx", password: "wrong", wantErr: "wrong certificate_password"},
		{file: "certonly.pem", wantErr: "no private key found"},
		{file: "missing.pem", wantErr: "no such file"},
		{file: "old.pem", wantErr: "the certificate expired"},
		{file: "soon.pem", wantWarn: "the certificate expires on"},
	} {
		cfg, err := LoadWithEnv(writeConfig(t, dir, tenant(tc.file, tc.password)), env(nil))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.file, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "pfx-pass") {
				t.Errorf("%s: error shows the password", tc.file)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		certs, key := cfg.Tenants[0].Credential.Certificate()
		if len(certs) == 0 || key == nil {
			t.Errorf("%s: no certificate loaded", tc.file)
		}
		var warned bool
		for _, w := range cfg.Warnings {
			warned = warned || tc.wantWarn != "" && strings.Contains(w.Message, tc.wantWarn)
		}
		if tc.wantWarn != "" && !warned {
			t.Errorf("%s: no warning %q in %v", tc.file, tc.wantWarn, cfg.Warnings)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add(fmt.Sprintf(goodConfig, "$2a$04$abcdefghijklmnopqrstuuN6YQ3Q6T6V8d8qJ3k9i5n7w5bQ0lX2e"))
	f.Add("listeners: [{name: x}]\ntenants: {}\n")
	f.Add("a: ${B}\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(dir, "f.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadWithEnv(p, env(map[string]string{"CONTOSO_SECRET": "x", "MAXR": "1"}))
		if (cfg == nil) == (err == nil) {
			t.Fatalf("Load returned cfg=%v err=%v", cfg != nil, err)
		}
	})
}

func scalar(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: v} }

// auth: delegated is a public client with its refresh tokens in the
// token cache: no credential, and a cache key.
func TestDelegatedAuth(t *testing.T) {
	dir := t.TempDir()
	tenants := `
  - name: signed-in
    tenant_id: contoso.onmicrosoft.com
    client_id: 11111111-2222-3333-4444-555555555555
    auth: delegated
`
	good := strings.Replace(fmt.Sprintf(goodConfig, testHash(t)), "tenants:\n", "tenants:"+tenants, 1)
	_, err := LoadWithEnv(writeConfig(t, dir, good), env(map[string]string{"CONTOSO_SECRET": "s", "MAXR": "5"}))
	if err == nil || !strings.Contains(err.Error(), "tenants[0].auth: delegated needs token_cache.key_file or token_cache.key_env") {
		t.Errorf("auth: delegated without a token cache key: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "cache.key"), []byte(strings.Repeat("ab", 32)), 0o600)
	cfg, err := LoadWithEnv(writeConfig(t, dir, good+"token_cache:\n  key_file: cache.key\n"), env(map[string]string{"CONTOSO_SECRET": "s", "MAXR": "5"}))
	if err != nil {
		t.Fatal(err)
	}
	tn := cfg.Tenants[0]
	if !tn.Credential.Delegated() || tn.Auth != AuthDelegated || cfg.Tenants[1].Auth != AuthApp {
		t.Errorf("auth: %q delegated=%v; the other tenant's auth %q", tn.Auth, tn.Credential.Delegated(), cfg.Tenants[1].Auth)
	}
	if s := tn.DelegatedScope(false); s != "https://outlook.office.com/SMTP.Send" {
		t.Errorf("SMTP's delegated scope: %s", s)
	}
	if s := tn.DelegatedScope(true); s != "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite" {
		t.Errorf("Graph's delegated scope: %s", s)
	}
	bad := strings.Replace(good, "    auth: delegated\n", "    auth: delegated\n    client_secret: x\n  - name: odd\n    tenant_id: fabrikam.example\n    client_id: 11111111-2222-3333-4444-555555555555\n    client_secret: y\n    auth: person\n", 1)
	_, err = LoadWithEnv(writeConfig(t, dir, bad+"token_cache:\n  key_file: cache.key\n"), env(map[string]string{"CONTOSO_SECRET": "s", "MAXR": "5"}))
	for _, want := range []string{
		"tenants[0]: auth: delegated is a public client: remove client_secret",
		`tenants[1].auth: "person": use app (the app registration's own credential, the default) or delegated`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("problem list lacks %q:\n%v", want, err)
		}
	}
}

// network: a proxy URL with a credential in it, an https:// or pathful
// proxy, half a credential, a CA file without a certificate and
// smtp_via_proxy with no proxy are each refused with the key and the
// fix; a good section loads the password and the CA.
func TestNetwork(t *testing.T) {
	dir := t.TempDir()
	base := fmt.Sprintf(goodConfig, testHash(t))
	vars := env(map[string]string{"CONTOSO_SECRET": "s", "MAXR": "10"})
	t.Setenv("HTTPS_PROXY", "")
	t.Setenv("https_proxy", "")
	for _, tc := range []struct{ network, key, want string }{
		{"{proxy: \"http://bob:hunter2@proxy.local:3128\"}", "network.proxy", "network.proxy_password_file"},
		{"{proxy: \"https://proxy.local:3128\"}", "network.proxy", "http://"},
		{"{proxy: \"http://proxy.local:3128/pac\"}", "network.proxy", "path"},
		{"{proxy: \"http://proxy.local:3128\", proxy_user: svc}", "network.proxy_user", "both"},
		{"{proxy_user: svc, proxy_password_file: pw}", "network.proxy_user", "needs network.proxy"},
		{"{ca_file: notpem.txt}", "network.ca_file", "no PEM certificate"},
		{"{smtp_via_proxy: true}", "network.smtp_via_proxy", "no proxy"},
	} {
		os.WriteFile(filepath.Join(dir, "notpem.txt"), []byte("hello"), 0o600)
		os.WriteFile(filepath.Join(dir, "pw"), []byte("pr0xy\n"), 0o600)
		_, err := LoadWithEnv(writeConfig(t, dir, base+"network: "+tc.network+"\n"), vars)
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%s: %v, want a config error", tc.network, err)
			continue
		}
		found := false
		for _, p := range ce.Problems {
			if p.Key == tc.key && strings.Contains(p.Message, tc.want) {
				found = true
			}
			if strings.Contains(p.Message, "hunter2") {
				t.Errorf("a problem shows the proxy password: %s", p.Message)
			}
		}
		if !found {
			t.Errorf("%s: problems %v, want one at %s saying %q", tc.network, ce.Problems, tc.key, tc.want)
		}
	}
	ca, err := pki.NewCA("Contoso inspection CA")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o600)
	c, err := LoadWithEnv(writeConfig(t, dir, base+"network: {proxy: \"http://proxy.local:3128\", proxy_user: svc, proxy_password_file: pw, ca_file: ca.pem, smtp_via_proxy: true}\n"), vars)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Network; n.ProxyPassword.Value() != "pr0xy" || n.CAPEM != string(ca.CertPEM()) || !n.SMTPViaProxy {
		t.Errorf("network loaded as %+v", n)
	}
}

// What serve would refuse at start is refused by the check first, with
// the key, the line and the fix: a port that is no number, one out of
// range, a duration without its unit.
func TestCheckRefusesWhatServeWould(t *testing.T) {
	dir := t.TempDir()
	base := fmt.Sprintf(goodConfig, testHash(t))
	vars := env(map[string]string{"CONTOSO_SECRET": "s", "MAXR": "10"})
	for _, tc := range []struct{ from, to, key, want string }{
		{`address: "127.0.0.1:2525"`, `address: "127.0.0.1:25x25"`, "listeners[0].address", "write a number such as 2525"},
		{`address: "127.0.0.1:2525"`, `address: "127.0.0.1:99999"`, "listeners[0].address", "use 1 to 65535"},
		{"limits:\n", "delivery: {sync_timeout: 20}\nlimits:\n", "delivery.sync_timeout", "20 has no unit: write a duration such as 20s"},
	} {
		_, err := LoadWithEnv(writeConfig(t, dir, strings.Replace(base, tc.from, tc.to, 1)), vars)
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%s: %v, want a config error", tc.to, err)
			continue
		}
		found := false
		for _, p := range ce.Problems {
			found = found || p.Key == tc.key && p.Line > 0 && strings.Contains(p.Message, tc.want)
		}
		if !found {
			t.Errorf("%s: problems %v, want one at %s with a line, saying %q", tc.to, ce.Problems, tc.key, tc.want)
		}
	}
}

// A client secret from a variable that is set but empty (the package's
// secrets.env as installed) is named with its variable, not reported as
// "no credential"; an unset one is reported once.
func TestEmptySecretVariable(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, fmt.Sprintf(goodConfig, testHash(t)))
	for vars, want := range map[string]string{
		"set but empty": "comes from ${CONTOSO_SECRET}, which is empty",
		"unset":         "environment variable CONTOSO_SECRET is not set",
	} {
		env := map[string]string{"MAXR": "10"}
		if vars == "set but empty" {
			env["CONTOSO_SECRET"] = ""
		}
		_, err := LoadWithEnv(path, envOf(env))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "set exactly one of") {
			t.Errorf("%s: %v, want %q and no \"set exactly one of\"", vars, err, want)
		}
		var ce *Error
		if errors.As(err, &ce) && len(ce.Problems) != 1 {
			t.Errorf("%s: %d problems, want the one about the variable:\n%v", vars, len(ce.Problems), err)
		}
	}
}

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}
