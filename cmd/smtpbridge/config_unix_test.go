//go:build unix

package main

import (
	"path/filepath"
	"testing"
)

// --config defaults to $SMTPBRIDGE_CONFIG, else to the packages' config
// when it is installed, else to nothing (the command asks for one).
func TestDefaultConfig(t *testing.T) {
	installed := filepath.Join(t.TempDir(), "smtpbridge.yaml")
	defer func(old string) { unixConfig = old }(unixConfig)
	unixConfig = installed
	t.Setenv("SMTPBRIDGE_CONFIG", "")
	if got := defaultConfig(); got != "" {
		t.Errorf("no config installed: default %q, want none", got)
	}
	writeFile(t, installed, "{}\n")
	if got := defaultConfig(); got != installed {
		t.Errorf("with the packages' config: default %q, want %q", got, installed)
	}
	t.Setenv("SMTPBRIDGE_CONFIG", "/srv/other.yaml")
	if got := defaultConfig(); got != "/srv/other.yaml" {
		t.Errorf("with SMTPBRIDGE_CONFIG: default %q", got)
	}
}
