package doctor

import (
	"testing"
)

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
