package hints

import (
	"flag"
	"os"
	"strings"
	"testing"
)

func TestForReply(t *testing.T) {
	for reply, want := range map[string]string{
		"535 5.7.3 Authentication unsuccessful [SN4PR0601CA0002.namprd06.prod.outlook.com]":                     "535 5.7.3",
		"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox":         "535 5.7.139 ...disabled for the Mailbox...",
		"554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message":   "554 5.2.0 ...SubmissionQuota...",
		"451 4.7.0 Could not get an access token for this device's mailbox, try again later":                    "451 4.7.0 ...access token...",
		"451 4.7.0 Temporary server error. Please try again later. PRX4":                                        "451 4.7.0",
		"432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded":                                         "432 4.3.2",
		"550 5.7.60 SMTP; Client does not have permissions to send as this sender":                              "550 5.7.60",
		"554 5.2.252 SendAsDenied; scanner@contoso.com not allowed to send as billing@contoso.com":              "554 5.2.252",
		"  421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.": "421 4.7.66",
		"554 5.2.0 something else":  "",
		"250 2.0.0 OK <id>":         "",
		"535 Authentication failed": "",
		"garbage":                   "",
		"":                          "",
	} {
		h := ForReply(reply)
		switch {
		case want == "" && h != nil:
			t.Errorf("ForReply(%q) = %s, want none", reply, h.Code)
		case want != "" && (h == nil || h.Code != want):
			t.Errorf("ForReply(%q) = %v, want %s", reply, h, want)
		}
	}
	if h := ForReply("535 5.7.3 x"); !strings.Contains(h.Fix, "New-ServicePrincipal") || !strings.Contains(h.Meaning, "Enterprise Application") {
		t.Errorf("5.7.3: %+v", h)
	}
	if h := ForReply("535 5.7.139 x"); !strings.Contains(h.Fix, "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false") {
		t.Errorf("5.7.139 fix: %s", h.Fix)
	}
}

// The texts of Microsoft's articles ("Continuous error throttling for
// SMTP AUTH submissions", "SMTP AUTH submission improvements",
// "Non-delivery reports in Exchange Online", "Fix issues with printers,
// scanners, and LOB applications that send email using Microsoft 365")
// and the field, verbatim, with Exchange's varying suffixes: each gets
// its own hint, the suffix never matters.
func TestForExchangeTexts(t *testing.T) {
	suffixes := []string{"", " [Hostname=DM5SPR00MB2471.namprd08.prod.outlook.com]",
		" [MN2PR05CA0004.namprd05.prod.outlook.com 2023-09-12T20:59:57.214Z 08DBB276B7E699C4]"}
	for reply, want := range map[string]string{
		"550 5.2.251 Sender throttled due to continuous mailbox full errors.":                                                                                          "550 5.2.251",
		"550 5.2.252 Sender throttled due to continuous send as denied errors.":                                                                                        "550 5.2.252 ...throttled...",
		"550 5.2.253 Sender throttled due to continuous invalid license errors.":                                                                                       "550 5.2.253",
		"550 5.2.254 Sender throttled due to continuous too many recipients errors.":                                                                                   "550 5.2.254",
		"550 5.2.255 Sender throttled due to continuous invalid recipients errors.":                                                                                    "550 5.2.255",
		"554 5.2.252 SendAsDenied; scanner@contoso.com not allowed to send as billing@contoso.com; STOREDRV":                                                           "554 5.2.252",
		"554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded":                                               "554 5.2.2",
		"550 5.1.8 Access denied, bad outbound sender":                                                                                                                 "550 5.1.8",
		"550 5.7.501 Access denied, spam abuse detected":                                                                                                               "550 5.7.501",
		"550 5.7.705 Access denied, tenant has exceeded threshold":                                                                                                     "550 5.7.705",
		"550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains":                                                                       "550 5.7.750",
		"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.":  "535 5.7.139 ...disabled for the Tenant...",
		"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.": "535 5.7.139 ...disabled for the Mailbox...",
		"535 5.7.139 Authentication unsuccessful, basic authentication is disabled.":                                                                                   "535 5.7.139 ...basic authentication is disabled...",
		"535 5.7.139 Authentication unsuccessful, the user credentials were incorrect.":                                                                                "535 5.7.139 ...credentials were incorrect...",
		"535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator.":                 "535 5.7.139 ...did not meet the criteria...",
		"535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy. Contact your administrator.":                         "535 5.7.139 ...security defaults...",
		"535 5.7.139 Authentication unsuccessful, account locked.":                                                                                                     "535 5.7.139 ...account locked...",
		"535 5.7.139 Authentication unsuccessful, federated STS service was unreachable.":                                                                              "535 5.7.139 ...federated STS...",
		"530 5.7.57 Client not authenticated to send mail. Error: 535 5.7.139 Authentication unsuccessful":                                                             "530 5.7.57",
		"501 5.5.124 Authentication failed":                                                                                                                            "501 5.5.124",
		"432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded":                                                                                                "432 4.3.2",
		"432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.":                                               "432 4.3.2",
		"451 4.7.0 Temporary server error. Please try again later. PRX4":                                                                                               "451 4.7.0",
		"451 4.3.111 Temporary server error. Please try again later. MRH1":                                                                                             "451 4.3.111",
		"451 4.7.500 Server busy. Please try again later from [203.0.113.5]. (AS761)":                                                                                  "451 4.7.500",
		"452 4.5.3 Too many recipients": "452 4.5.3",
	} {
		for _, sfx := range suffixes {
			h := ForReply(reply + sfx)
			if h == nil || h.Code != want {
				t.Errorf("ForReply(%q) = %v, want %s", reply+sfx, h, want)
			}
		}
	}
}

func TestForAADSTS(t *testing.T) {
	for _, code := range []int{7000215, 7000222, 700016, 90002, 700027} {
		h := ForAADSTS(code)
		if h == nil || h.Meaning == "" || h.Fix == "" {
			t.Errorf("AADSTS%d: %+v", code, h)
		}
	}
	if ForAADSTS(12345) != nil {
		t.Error("an unknown code has a hint")
	}
}

func TestAllComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, h := range All() {
		if h.Code == "" || h.Meaning == "" || h.Fix == "" {
			t.Errorf("incomplete hint %+v", h)
		}
		if seen[h.Code] {
			t.Errorf("%s twice", h.Code)
		}
		seen[h.Code] = true
	}
}

var update = flag.Bool("update", false, "rewrite README.md's troubleshooting table from the hints")

const (
	beginMark = "<!-- troubleshooting table: generated from hints/hints.go by go test ./hints -update -->\n"
	endMark   = "<!-- end of troubleshooting table -->\n"
)

// TestREADMETable keeps the README's troubleshooting table the same as the
// table the bridge and doctor use.
func TestREADMETable(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i, j := strings.Index(s, beginMark), strings.Index(s, endMark)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the troubleshooting table's markers %q ... %q", beginMark, endMark)
	}
	want := s[:i+len(beginMark)] + Markdown() + s[j:]
	if want == s {
		return
	}
	if *update {
		if err := os.WriteFile("../README.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Error("README.md's troubleshooting table differs from hints.Markdown(); run go test ./hints -update")
}
