package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

// A fleet's config in several files: the config includes devices.d/*.yaml,
// one file per customer with its tenant and devices. What the included
// files hold is checked where it is (its file and line in the problem);
// they may hold only tenants and devices; a pattern that matches nothing
// is an empty directory, a path that does not exist an error.
func TestInclude(t *testing.T) {
	dir := t.TempDir()
	hash, err := passwd.NewBcrypt([]byte("a device password for the include test"), 4)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		t.Helper()
		path := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(path), 0o700)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	main := `listeners: [{name: lan, address: "127.0.0.1:2525", allow_insecure_auth: true}]
include: [devices.d/*.yaml, empty.d/*.yaml]
tenants:
  - {name: own, tenant_id: 11111111-aaaa-4000-8000-000000000001, client_id: aaaaaaaa-0000-4000-8000-00000000000a, client_secret: s}
devices:
  - {name: own-mfp, username: own-mfp, password_hash: "` + hash + `", tenant: own, mailbox: scans@own.example}
`
	write("smtpbridge.yaml", main)
	customer := func(name, tenant, extra string) string {
		return `tenants:
  - {name: ` + tenant + `, tenant_id: 22222222-aaaa-4000-8000-00000000000` + name[len(name)-1:] + `, client_id: bbbbbbbb-0000-4000-8000-00000000000b, client_secret: s}
devices:
  - {name: ` + name + `-mfp, username: ` + name + `-mfp, password_hash: "` + hash + `", tenant: ` + tenant + `, mailbox: scans@` + name + `.example}
` + extra
	}
	write("devices.d/acme.yaml", customer("acme1", "acme", ""))
	write("devices.d/globex.yaml", customer("globex2", "globex", ""))
	c, err := Load(filepath.Join(dir, "smtpbridge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tenants) != 3 || len(c.Devices) != 3 || c.Device("globex2-mfp") == nil || c.Device("globex2-mfp").Tenant != "globex" {
		t.Fatalf("included: %d tenants, %d devices", len(c.Tenants), len(c.Devices))
	}

	// A mistake in an included file names that file and its line.
	write("devices.d/globex.yaml", customer("globex2", "globex", `  - {name: typo, username: typo, password_hash: "`+hash+`", tenant: globx, mailbox: x@globex.example}
`))
	_, err = Load(filepath.Join(dir, "smtpbridge.yaml"))
	want := filepath.Join(dir, "devices.d/globex.yaml") + `:5: devices[3].tenant: `
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a mistake in an included file: %v\nwant it at %s", err, want)
	}
	var ce *Error
	if errors.As(err, &ce) {
		for _, p := range ce.Problems {
			if p.Key == "devices[3].tenant" && !strings.HasPrefix(p.In(ce.File), filepath.Join(dir, "devices.d/globex.yaml")+":5:") {
				t.Errorf("the problem's file:line form: %s", p.In(ce.File))
			}
		}
	}

	// Only tenants and devices; no include from an included file.
	write("devices.d/globex.yaml", customer("globex2", "globex", "limits: {max_connections: 5}\n"))
	if _, err := Load(filepath.Join(dir, "smtpbridge.yaml")); err == nil || !strings.Contains(err.Error(), "an included file holds only tenants: and devices:") {
		t.Errorf("an included file with limits: %v", err)
	}
	write("devices.d/globex.yaml", customer("globex2", "globex", ""))

	// Only regular files: a directory (or a FIFO, a device) is refused
	// before it is opened.
	os.MkdirAll(filepath.Join(dir, "devices.d", "sub.yaml"), 0o700)
	if _, err := Load(filepath.Join(dir, "smtpbridge.yaml")); err == nil || !strings.Contains(err.Error(), "sub.yaml: is not a regular file") {
		t.Errorf("a directory among the included: %v", err)
	}
	os.Remove(filepath.Join(dir, "devices.d", "sub.yaml"))

	// A named file that does not exist is a mistake; an empty pattern is not.
	write("smtpbridge.yaml", strings.Replace(main, "empty.d/*.yaml", "missing.yaml", 1))
	if _, err := Load(filepath.Join(dir, "smtpbridge.yaml")); err == nil || !strings.Contains(err.Error(), "include[1]: ") || !strings.Contains(err.Error(), "missing.yaml does not exist") {
		t.Errorf("a missing included file: %v", err)
	}
}
