//go:build integration

package metrics

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The shipped alert rules and Prometheus config pass promtool's checks and
// the rules' unit tests. Needs promtool (Debian's prometheus package).

func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (see .ci/run) to run this test")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Join(examples, "prometheus")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool %s did not say SUCCESS:\n%s", strings.Join(args, " "), out)
	}
}

func TestPromtool(t *testing.T) {
	promtool(t, "check", "rules", "alerts.yml")
	promtool(t, "check", "config", "prometheus.yml")
	promtool(t, "test", "rules", "alerts_test.yml")
}
