package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// doctor on the sandbox, as the quick start runs it, against a golden
// file (ports, times and dates made constant): a heading per tenant and
// per mailbox section, the step names and details in two columns.
// go test ./cmd/smtpbridge -run TestDoctorSandboxGolden -update rewrites it.
func TestDoctorSandboxGolden(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../../examples/sandbox.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sandbox.yaml")
	writeFile(t, cfg, string(data))
	out, code := runBridge(t, nil, "doctor", "--config", cfg)
	if code != 0 {
		t.Fatalf("doctor on the sandbox: exit %d\n%s", code, out)
	}
	for _, r := range []struct{ re, with string }{
		{`127\.0\.0\.1:\d+`, "127.0.0.1:PORT"},
		{`\d\d:\d\d UTC`, "HH:MM UTC"},
		{`\d{4}-\d\d-\d\d`, "YYYY-MM-DD"},
		{`smtpbridge doctor: .*`, "smtpbridge doctor: CONFIG"},
		// AES-GCM or ChaCha20, as the machine's hardware has it.
		{`TLS_[A-Z0-9_]+`, "CIPHER"},
	} {
		out = regexp.MustCompile(r.re).ReplaceAllString(out, r.with)
	}
	golden := filepath.Join("testdata", "doctor-sandbox.txt")
	if *update {
		os.WriteFile(golden, []byte(out), 0o644)
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("doctor's sandbox output differs from %s (rewrite it with -update if the change is meant):\n%s", golden, out)
	}
}
