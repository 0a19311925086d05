package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/pki"
)

func loadGood(t *testing.T, extra func(string) string, mode os.FileMode) (*Config, error) {
	t.Helper()
	dir := t.TempDir()
	body := extra(fmt.Sprintf(goodConfig, testHash(t)))
	p := writeConfig(t, dir, body)
	if mode != 0 {
		os.Chmod(p, mode)
	}
	return LoadWithEnv(p, env(map[string]string{"CONTOSO_SECRET": "x", "MAXR": "1"}))
}

func problems(err error) string {
	if ce, ok := err.(*Error); ok {
		var b strings.Builder
		for _, p := range ce.Problems {
			b.WriteString(p.String() + "\n")
		}
		return b.String()
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

func warnings(c *Config) string {
	var b strings.Builder
	for _, p := range c.Warnings {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

func TestSecurityDefaults(t *testing.T) {
	cfg, err := loadGood(t, func(s string) string { return s }, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{MaxMessageBytes: DefaultMaxMessageBytes, MaxRecipients: 1, MaxConnections: 200, MaxConnectionsPerIP: 20,
		CommandTimeout: 5 * time.Minute, SessionTimeout: 30 * time.Minute, MaxErrors: 20, MaxLineLength: 65536,
		MaxQueuedBytesPerDevice: 1 << 30}
	if cfg.Limits != want {
		t.Errorf("limits = %+v, want %+v", cfg.Limits, want)
	}
	if cfg.Spool.MinFreeBytes != 100<<20 || cfg.Spool.MaxBytes != 0 || cfg.Devices[0].Parsed.MaxQueuedBytes != 1<<30 {
		t.Errorf("spool quota defaults: %+v, device %d", cfg.Spool, cfg.Devices[0].Parsed.MaxQueuedBytes)
	}
	sec := cfg.Security
	if sec.AuthMaxFailures != 5 || sec.AuthWindow != 10*time.Minute || sec.AuthBlock != 15*time.Minute || len(sec.ExemptNetworks) != 0 {
		t.Errorf("security defaults = %+v", sec)
	}
	if cfg.Devices[0].Auth != AuthPassword {
		t.Errorf("device auth default = %q", cfg.Devices[0].Auth)
	}
}

func TestSecuritySettings(t *testing.T) {
	cfg, err := loadGood(t, func(s string) string {
		s = strings.Replace(s, `    allow_insecure_auth: true`, `    allow_insecure_auth: true
    allow_unauthenticated: true
    allowed_networks: ["10.20.0.0/16", "192.168.10.7"]`, 1)
		s = strings.Replace(s, "limits:\n  max_recipients: ${MAXR}\n", "", 1)
		return s + `
  - name: alarm
    auth: none
    tenant: contoso
    mailbox: alarm@contoso.com
    networks: ["10.20.0.15"]
    max_messages_per_hour: 10
security:
  auth_max_failures: 3
  auth_window: 5m
  auth_block: 1h
  auth_exempt_networks: ["10.99.0.0/16"]
`
	}, 0)
	if err != nil {
		t.Fatal(problems(err))
	}
	var alarm *Device
	for i := range cfg.Devices {
		if cfg.Devices[i].Name == "alarm" {
			alarm = &cfg.Devices[i]
		}
	}
	if alarm == nil || alarm.Auth != AuthNone || alarm.MaxMessagesPerHour != 10 {
		t.Fatalf("alarm device: %+v", alarm)
	}
	ls := cfg.Listeners[0]
	if !ls.AllowUnauthenticated || len(ls.Networks) != 2 || ls.Networks[1] != netip.MustParsePrefix("192.168.10.7/32") {
		t.Errorf("listener: %+v", ls)
	}
	if cfg.Security.AuthMaxFailures != 3 || cfg.Security.ExemptNetworks[0] != netip.MustParsePrefix("10.99.0.0/16") {
		t.Errorf("security: %+v", cfg.Security)
	}
	if w := warnings(cfg); w != "" {
		t.Errorf("unexpected warnings:\n%s", w)
	}
}

func TestSecurityProblems(t *testing.T) {
	cases := []struct {
		name, edit, want string
	}{
		{"auth none without networks", "  - name: alarm\n    auth: none\n    tenant: contoso\n    mailbox: a@contoso.com\n",
			"devices[1].networks: required with auth: none"},
		{"auth none with a password", "  - name: alarm\n    auth: none\n    username: alarm\n    tenant: contoso\n    mailbox: a@contoso.com\n    networks: [10.0.0.9]\n",
			"devices[1].auth: a device with auth: none has no username or password_hash"},
		{"unknown auth", "  - name: alarm\n    auth: token\n    username: a\n    password_hash: x\n    tenant: contoso\n    mailbox: a@contoso.com\n",
			`devices[1].auth: "token" is not one of password, none`},
		{"two devices on one address", "  - name: a1\n    auth: none\n    tenant: contoso\n    mailbox: a@contoso.com\n    networks: [10.0.0.9]\n  - name: a2\n    auth: none\n    tenant: contoso\n    mailbox: b@contoso.com\n    networks: [10.0.0.9/32]\n",
			`also device "a1"'s`},
		{"negative rate", "  - name: a1\n    username: a1\n    password_hash: HASH\n    tenant: contoso\n    mailbox: a@contoso.com\n    max_messages_per_hour: -1\n",
			"devices[1].max_messages_per_hour: must be positive"},
		{"limits", "limits:\n  command_timeout: 2s\n  session_timeout: 1s\n  max_line_length: 500\n  max_errors: -3\n",
			"limits.command_timeout: 2s is too short"},
		{"line length", "limits:\n  max_line_length: 500\n", "below RFC 5321's minimum of 1000"},
		{"session timeout", "limits:\n  command_timeout: 1m\n  session_timeout: 30s\n", "limits.session_timeout: 30s is shorter than command_timeout"},
		{"exempt networks", "security:\n  auth_exempt_networks: [\"10.0.0.1/8\"]\n", "has host bits set; did you mean 10.0.0.0/8?"},
		{"security negative", "security:\n  auth_max_failures: -1\n", "security.auth_max_failures: must be positive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadGood(t, func(s string) string {
				s = strings.Replace(s, "limits:\n  max_recipients: ${MAXR}\n", "", 1)
				edit := strings.ReplaceAll(c.edit, "HASH", testHash(t))
				if strings.HasPrefix(edit, "  - ") {
					return s + "\n" + strings.Replace(edit, "  - ", "  - ", 1)
				}
				return s + edit
			}, 0)
			if !strings.Contains(problems(err), c.want) {
				t.Errorf("problems:\n%s\nwant %q", problems(err), c.want)
			}
		})
	}
}

func TestListenerNetworksProblem(t *testing.T) {
	_, err := loadGood(t, func(s string) string {
		return strings.Replace(s, "    allow_insecure_auth: true", "    allow_insecure_auth: true\n    allowed_networks: [\"10.0.0.0/33\", lan]", 1)
	}, 0)
	for _, want := range []string{"listeners[0].allowed_networks[0]:", "listeners[0].allowed_networks[1]: \"lan\" is not a CIDR"} {
		if !strings.Contains(problems(err), want) {
			t.Errorf("problems lack %q:\n%s", want, problems(err))
		}
	}
}

func TestSecurityWarnings(t *testing.T) {
	cfg, err := loadGood(t, func(s string) string {
		s = strings.Replace(s, `address: "127.0.0.1:2525"`, `address: "0.0.0.0:2525"
    allow_unauthenticated: true`, 1)
		s = strings.Replace(s, "limits:\n  max_recipients: ${MAXR}\n", "", 1)
		return s + `
  - name: wide
    auth: none
    tenant: contoso
    mailbox: w@contoso.com
    networks: ["0.0.0.0/0"]
`
	}, 0o644)
	if err != nil {
		t.Fatal(problems(err))
	}
	w := warnings(cfg)
	for _, want := range []string{
		"listeners[0].allow_insecure_auth: is on for a listener on 0.0.0.0:2525",
		"listeners[0].allow_unauthenticated: is on for a listener on 0.0.0.0:2525",
		"devices[1].networks: 0.0.0.0/0 includes public addresses",
	} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	// The secret came from ${CONTOSO_SECRET}: no warning about the file's
	// mode for it.
	if strings.Contains(w, "client_secret: the config file holds") {
		t.Errorf("a secret from the environment was reported as inline:\n%s", w)
	}

	// An inline secret in a world-readable file is reported; in a private
	// file it is not.
	inline := func(s string) string { return strings.Replace(s, `"${CONTOSO_SECRET}"`, `"inline-secret"`, 1) }
	cfg, err = loadGood(t, inline, 0o644)
	if err != nil {
		t.Fatal(problems(err))
	}
	if w := warnings(cfg); !strings.Contains(w, "tenants[0].client_secret: the config file holds this secret and is readable by every user") ||
		strings.Contains(w, "inline-secret") {
		t.Errorf("inline secret in a world-readable file:\n%s", w)
	}
	cfg, err = loadGood(t, inline, 0o640)
	if err != nil {
		t.Fatal(problems(err))
	}
	if w := warnings(cfg); strings.Contains(w, "readable by every user") {
		t.Errorf("a private file was reported:\n%s", w)
	}
	// Private allowed_networks make a 0.0.0.0 listener safe enough.
	cfg, err = loadGood(t, func(s string) string {
		return strings.Replace(s, `address: "127.0.0.1:2525"`, `address: "0.0.0.0:2525"
    allowed_networks: ["192.168.0.0/16", "10.0.0.0/8"]`, 1)
	}, 0)
	if err != nil {
		t.Fatal(problems(err))
	}
	if w := warnings(cfg); strings.Contains(w, "allow_insecure_auth") {
		t.Errorf("warning despite private allowed_networks:\n%s", w)
	}
}

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret.txt")
	os.WriteFile(secret, []byte("file-secret\n"), 0o644)
	cfg, err := loadGood(t, func(s string) string {
		return strings.Replace(s, `client_secret: "${CONTOSO_SECRET}"`, "client_secret_file: "+secret, 1)
	}, 0)
	if err != nil {
		t.Fatal(problems(err))
	}
	if cfg.Tenants[0].Credential.Secret() != "file-secret" {
		t.Error("client_secret_file not read")
	}
	if w := warnings(cfg); !strings.Contains(w, "client_secret_file: "+secret+" holds a secret and is readable by every user") {
		t.Errorf("world-readable secret file not reported:\n%s", w)
	}
}

func TestPrivatePrefix(t *testing.T) {
	for s, want := range map[string]bool{
		"10.0.0.0/8": true, "192.168.1.0/24": true, "172.16.0.0/12": true, "127.0.0.1/32": true, "fd00::/8": true,
		"100.64.0.0/10": true, "fe80::/10": true,
		"10.0.0.0/7": false, "172.0.0.0/8": false, "0.0.0.0/0": false, "8.8.8.8/32": false, "2001:db8::/32": false, "::/0": false,
	} {
		if got := PrivatePrefix(netip.MustParsePrefix(s)); got != want {
			t.Errorf("PrivatePrefix(%s) = %v, want %v", s, got, want)
		}
	}
}

func TestHTTPAuth(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "metrics.password")
	os.WriteFile(pwFile, []byte("0123456789abcdef\n"), 0o600)
	short := filepath.Join(dir, "short.password")
	os.WriteFile(short, []byte("secret\n"), 0o600)
	for _, c := range []struct {
		name, yaml, problem, warning string
	}{
		{"loopback, no auth", "http:\n  address: 127.0.0.1:9464\n", "", ""},
		{"all interfaces, no auth", "http:\n  address: 0.0.0.0:9464\n", "", "http.address: 0.0.0.0:9464 serves the status page and /metrics"},
		{"no host, no auth", "http:\n  address: :9464\n", "", "set http.auth, or bind it to 127.0.0.1"},
		{"all interfaces with a password file", "http:\n  address: 0.0.0.0:9464\n  auth:\n    username: prometheus\n    password_file: " + pwFile + "\n", "", ""},
		{"with a hash", "http:\n  address: '[::]:9464'\n  auth:\n    username: ops\n    password_hash: HASH\n", "", ""},
		{"no username", "http:\n  auth:\n    password_file: " + pwFile + "\n", "http.auth.username: required", ""},
		{"both", "http:\n  auth:\n    username: a\n    password_file: " + pwFile + "\n    password_hash: HASH\n", "http.auth: set one of password_hash and password_file, not both", ""},
		{"neither", "http:\n  auth:\n    username: a\n", "http.auth: set password_hash", ""},
		{"a password as the hash", "http:\n  auth:\n    username: a\n    password_hash: hunter2hunter2\n", "http.auth.password_hash: ", ""},
		{"a short password", "http:\n  auth:\n    username: a\n    password_file: " + short + "\n", "use at least 12", ""},
		{"a missing file", "http:\n  auth:\n    username: a\n    password_file: /nonexistent/pw\n", "http.auth.password_file: open /nonexistent/pw", ""},
		{"allowed hosts", "http:\n  allowed_hosts: [bridge.internal, \"evil.example:80\", \"*\"]\n", `http.allowed_hosts[1]: "evil.example:80" is not a host name`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := loadGood(t, func(s string) string { return s + strings.ReplaceAll(c.yaml, "HASH", testHash(t)) }, 0)
			if c.problem != "" {
				if !strings.Contains(problems(err), c.problem) {
					t.Errorf("problems:\n%s\nwant %q", problems(err), c.problem)
				}
				if strings.Contains(problems(err), "hunter2") {
					t.Error("the problem repeats the password")
				}
				return
			}
			if err != nil {
				t.Fatal(problems(err))
			}
			w := warnings(cfg)
			if c.warning == "" && strings.Contains(w, "http.address") || c.warning != "" && !strings.Contains(w, c.warning) {
				t.Errorf("warnings:\n%s\nwant %q", w, c.warning)
			}
			if a := cfg.HTTP.Auth; a != nil && a.Hash == nil && a.Password.Value() != "0123456789abcdef" {
				t.Errorf("the password file was read as %q", a.Password.Value())
			}
		})
	}
}

// cluster.redis.ca_file: a PEM bundle, with tls only; and key_prefix
// without braces (they would move the keys' hash tags).
func TestRedisCAFile(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("redis CA")
	if err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "ca.crt")
	os.WriteFile(good, ca.CertPEM(), 0o644)
	junk := filepath.Join(dir, "junk.crt")
	os.WriteFile(junk, []byte("not a certificate\n"), 0o644)
	for _, c := range []struct{ name, yaml, problem string }{
		{"a CA", "cluster:\n  redis:\n    address: redis:6379\n    tls: true\n    ca_file: " + good + "\n", ""},
		{"without tls", "cluster:\n  redis:\n    address: redis:6379\n    ca_file: " + good + "\n", "cluster.redis.ca_file: set tls: true too"},
		{"no PEM", "cluster:\n  redis:\n    address: redis:6379\n    tls: true\n    ca_file: " + junk + "\n", "holds no PEM certificate"},
		{"missing", "cluster:\n  redis:\n    address: redis:6379\n    tls: true\n    ca_file: /nonexistent/ca.crt\n", "cluster.redis.ca_file: open /nonexistent/ca.crt"},
		{"a brace in the key prefix", "cluster:\n  redis:\n    address: redis:6379\n    key_prefix: \"bridge{a:\"\n", "cluster.redis.key_prefix: \"bridge{a:\" has { or }"},
	} {
		cfg, err := loadGood(t, func(s string) string { return s + c.yaml }, 0)
		if c.problem != "" {
			if !strings.Contains(problems(err), c.problem) {
				t.Errorf("%s: problems:\n%s\nwant %q", c.name, problems(err), c.problem)
			}
			continue
		}
		if err != nil || cfg.Cluster.Redis.RootCAs == nil {
			t.Errorf("%s: %v", c.name, problems(err))
		}
	}
}
