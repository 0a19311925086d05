package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyRules checks the package graph HACKING.md describes: it
// follows the message, and the shipping binary does not link the test
// world.
func TestDependencyRules(t *testing.T) {
	const mod = "github.com/smtpbridge/smtpbridge/"
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}:{{join .Imports " "}}`, "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	imports := map[string][]string{} // package -> the module's packages it imports
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, deps, _ := strings.Cut(line, ":")
		if !strings.HasPrefix(pkg, mod) {
			continue
		}
		for _, d := range strings.Fields(deps) {
			if strings.HasPrefix(d, mod) {
				imports[strings.TrimPrefix(pkg, mod)] = append(imports[strings.TrimPrefix(pkg, mod)], strings.TrimPrefix(d, mod))
			}
		}
	}
	if len(imports) < 10 {
		t.Fatalf("go list found %d of the module's packages with imports: the check reads nothing", len(imports))
	}
	never := func(pkg string, forbidden ...string) {
		for _, d := range imports[pkg] {
			for _, f := range forbidden {
				if d == f {
					t.Errorf("%s imports %s", pkg, f)
				}
			}
		}
	}
	if len(imports["message"]) > 0 {
		t.Errorf("message imports %v: it must import nothing of the module", imports["message"])
	}
	never("bridge", "queue", "upstream", "upstream/smtp", "upstream/graph", "config")
	for _, p := range []string{"queue", "upstream", "upstream/smtp", "upstream/graph", "doctor", "spool"} {
		never(p, "bridge", "config")
	}
	for pkg, deps := range imports {
		if strings.HasPrefix(pkg, "cmd/") || pkg == "internal/daemon" || pkg == "internal/testenv" || strings.HasPrefix(pkg, "tools/") {
			continue
		}
		for _, d := range deps {
			if d == "config" {
				t.Errorf("%s imports config: only the commands and the daemon read the config", pkg)
			}
		}
	}

	// The shipping binary links neither the test environment nor package testing.
	out, err = exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == mod+"internal/testenv" || p == "testing" {
			t.Errorf("smtpbridge links %s", p)
		}
	}
}
