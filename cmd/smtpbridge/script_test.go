package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/doctor"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestExchangeScript turns testdata/onboarding.yaml into Exchange
// PowerShell, as `smtpbridge exchange-script` does, and compares it with
// reviewed golden files (go test ./cmd/smtpbridge -run TestExchangeScript
// -update rewrites them; review the diff).
func TestExchangeScript(t *testing.T) {
	hash, err := passwd.NewBcrypt([]byte("x"), 4)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("testdata/onboarding.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "smtpbridge.yaml")
	os.WriteFile(p, []byte(strings.ReplaceAll(string(data), "HASH", `"`+hash+`"`)), 0o600)
	cfg, err := config.LoadWithEnv(p, func(string) (string, bool) { return "s", true })
	if err != nil {
		t.Fatal(err)
	}
	tenants := daemon.DoctorTenants(cfg, daemon.Microsoft{})
	for _, c := range []struct {
		golden, tenant string
		rbac, graph    bool
	}{
		{"exchange-script.ps1", "", false, false},
		{"exchange-script-rbac.ps1", "", true, false},
		{"exchange-script-fabrikam.ps1", "fabrikam", false, false},
		{"exchange-script-graph.ps1", "", false, true},
	} {
		got, err := doctor.ExchangeScript(tenants, "/etc/smtpbridge/smtpbridge.yaml", c.tenant, c.rbac, c.graph)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", c.golden)
		if *update {
			os.WriteFile(path, []byte(got), 0o644)
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("%s differs from the script:\n%s", path, got)
		}
	}
	if _, err := doctor.ExchangeScript(tenants, "x", "nope", false, false); err == nil {
		t.Error("an unknown tenant was accepted")
	}
}

// The README's RBAC steps come in the order exchange-script --rbac
// prints them: the service principal before the role assignment that
// names it (New-ManagementRoleAssignment -App fails without it).
func TestREADMEStepsInTheScriptsOrder(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile("testdata/exchange-script-rbac.ps1")
	if err != nil {
		t.Fatal(err)
	}
	order := []string{"New-ServicePrincipal", "New-ManagementScope", "New-ManagementRoleAssignment"}
	for name, text := range map[string]string{"exchange-script --rbac": string(script), "README": string(readme)} {
		last := -1
		for _, cmd := range order {
			i := strings.Index(text, cmd+" -")
			if i < 0 {
				t.Errorf("%s has no %s", name, cmd)
				continue
			}
			if i < last {
				t.Errorf("%s runs %s before the step it needs", name, cmd)
			}
			last = i
		}
	}
}
