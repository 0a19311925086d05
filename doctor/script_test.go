package doctor

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func loadOnboarding(t *testing.T) *config.Config {
	t.Helper()
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
	cfg.Path = "/etc/smtpbridge/smtpbridge.yaml"
	return cfg
}

// TestExchangeScript compares the scripts with reviewed golden files
// (go test ./doctor -update rewrites them; review the diff).
func TestExchangeScript(t *testing.T) {
	cfg := loadOnboarding(t)
	for _, c := range []struct {
		golden, tenant string
		rbac           bool
	}{
		{"exchange-script.ps1", "", false},
		{"exchange-script-rbac.ps1", "", true},
		{"exchange-script-fabrikam.ps1", "fabrikam", false},
	} {
		got, err := ExchangeScript(cfg, c.tenant, c.rbac)
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
	if _, err := ExchangeScript(cfg, "nope", false); err == nil {
		t.Error("an unknown tenant was accepted")
	}
}

func TestQuoting(t *testing.T) {
	for in, want := range map[string]string{
		"scanner@contoso.com":     "'scanner@contoso.com'",
		"o'brien@contoso.com":     "'o''brien@contoso.com'",
		"a\u2019b":                "'a\u2019\u2019b'",
		"$(Remove-Item C:\\ -Rf)": "'$(Remove-Item C:\\ -Rf)'",
		"`n":                      "'`n'",
	} {
		if got := psQuote(in); got != want {
			t.Errorf("psQuote(%q) = %s, want %s", in, got, want)
		}
	}
	if got := psQuote("PrimarySmtpAddress -eq " + opathQuote("o'b@x")); got != "'PrimarySmtpAddress -eq ''o''''b@x'''" {
		t.Errorf("an OPATH value in a PowerShell string: %s", got)
	}
}
