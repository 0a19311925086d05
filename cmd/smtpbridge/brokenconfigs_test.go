package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// A table of broken configs: whenever serve refuses to start on one,
// check-config refuses it too, naming the key, the line and the fix
// (serve is given a few seconds: one that is still running started).
func TestCheckConfigRefusesWhatServeRefuses(t *testing.T) {
	u := startFakes(t)
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	good := func() map[string]any {
		return map[string]any{"SMTP": testenv.FreePort(t), "HTTP": testenv.FreePort(t), "Hash": hash, "Timeout": "20s", "Cert": "listener.crt"}
	}
	const tmpl = `
listeners:
  - {name: lan, address: {{q .SMTP}}, tls: starttls, cert_file: {{.Cert}}, key_file: listener.key, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}devices:
  - {name: mfp-2f, username: mfp-2f, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example}
delivery: {sync_timeout: {{.Timeout}}}
spool: {dir: spool}
http: {address: {{q .HTTP}}}
`
	for _, tc := range []struct {
		name, key, fix string
		set            func(v map[string]any)
	}{
		{"a port that is no number", "listeners[0].address", "write a number", func(v map[string]any) { v["SMTP"] = "127.0.0.1:25x25" }},
		{"a port out of range", "listeners[0].address", "1 to 65535", func(v map[string]any) { v["SMTP"] = "127.0.0.1:99999" }},
		{"an http port out of range", "http.address", "1 to 65535", func(v map[string]any) { v["HTTP"] = "127.0.0.1:70000" }},
		{"a duration without its unit", "delivery.sync_timeout", "write a duration such as 20s", func(v map[string]any) { v["Timeout"] = "20" }},
		{"a missing certificate", "listeners[0].cert_file", "cannot load", func(v map[string]any) { v["Cert"] = "missing.crt" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := good()
			tc.set(v)
			path := filepath.Join(u.dir, "broken.yaml")
			writeFile(t, path, u.configFrom(t, tmpl, v))
			env := []string{"TEST_CLIENT_SECRET=" + clientSecret}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			serve := exec.CommandContext(ctx, binary, "serve", "--config", path)
			serve.Env = append(serve.Environ(), env...)
			serveOut, serveErr := serve.CombinedOutput()
			refused := serveErr != nil && ctx.Err() == nil
			out, code := runBridge(t, env, "check-config", "--config", path)
			if !refused {
				t.Fatalf("serve started on the broken config (the table's case is not broken):\n%s", serveOut)
			}
			if code == 0 || !strings.Contains(out, tc.key) || !strings.Contains(out, "broken.yaml:") || !strings.Contains(out, tc.fix) {
				t.Errorf("serve refused (%v), check-config: exit %d, want a failure naming %s with its line and %q:\n%s", serveErr, code, tc.key, tc.fix, out)
			}
		})
	}
}
