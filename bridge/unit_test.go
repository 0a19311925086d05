package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

func TestReplyFor(t *testing.T) {
	up := func(stage string, code int, enh smtp.EnhancedCode, temp bool) error {
		return fmt.Errorf("deliver: %w", &UpstreamError{Host: "h:587", Stage: stage, Code: code, Enhanced: enh, Message: "text from exchange", Temporary: temp})
	}
	network := func(stage string) error {
		return &UpstreamError{Host: "h:587", Stage: stage, Err: errors.New("dial tcp: secret-ish internal detail"), Temporary: true}
	}
	tests := []struct {
		name string
		err  error
		want string // "code x.y.z"
	}{
		{"SendAsDenied passes through", up(StageData, 554, smtp.EnhancedCode{5, 2, 252}, false), "554 5.2.252"},
		{"5.7.60 at MAIL passes through", up(StageMail, 550, smtp.EnhancedCode{5, 7, 60}, false), "550 5.7.60"},
		{"size passes through", up(StageData, 552, smtp.EnhancedCode{5, 3, 4}, false), "552 5.3.4"},
		{"5xx without enhanced code", up(StageRcpt, 550, smtp.NoEnhancedCode, false), "550 5.0.0"},
		{"535 5.7.3 is the tenant's problem", up(StageAuth, 535, smtp.EnhancedCode{5, 7, 3}, true), "451 4.7.0"},
		{"535 5.7.139", up(StageAuth, 535, smtp.EnhancedCode{5, 7, 139}, true), "451 4.7.0"},
		{"530 5.7.57 at MAIL", up(StageMail, 530, smtp.EnhancedCode{5, 7, 57}, true), "451 4.7.0"},
		{"432 4.3.2 keeps its enhanced code", up(StageMail, 432, smtp.EnhancedCode{4, 3, 2}, true), "451 4.3.2"},
		{"421 4.7.66", up(StageAuth, 421, smtp.EnhancedCode{4, 7, 66}, true), "451 4.7.66"},
		{"451 4.7.0", up(StageData, 451, smtp.EnhancedCode{4, 7, 0}, true), "451 4.7.0"},
		{"connect", network(StageConnect), "451 4.4.1"},
		{"starttls", network(StageStartTLS), "451 4.7.5"},
		{"no XOAUTH2", network(StageAuth), "451 4.7.0"},
		{"dropped", network(StageData), "451 4.4.2"},
		{"token", fmt.Errorf("token: %w", &tokenstore.Error{Tenant: "t", AADSTS: 7000215}), "451 4.7.0"},
		{"device too large", &SourceError{Err: smtp.ErrDataTooLarge}, "552 5.3.4"},
		{"line too long", &SourceError{Err: smtp.ErrTooLongLine}, "554 5.6.0"},
		{"device went away", &SourceError{Err: io.ErrUnexpectedEOF}, "451 4.3.0"},
		{"anything else", errors.New("boom: internal"), "451 4.3.0"},
		{"cancelled", context.Canceled, "451 4.3.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := replyFor(tc.err)
			if got := enhanced(r); got != tc.want {
				t.Errorf("replyFor = %s %q, want %s", got, r.Message, tc.want)
			}
			if strings.Contains(r.Message, "internal") {
				t.Errorf("reply leaks the internal error: %q", r.Message)
			}
		})
	}
}

func TestReadHeaderAndRewrite(t *testing.T) {
	mbox, _ := mailaddr.Parse("scanner@contoso.example")
	tests := []struct {
		name, in        string
		wantFrom        string
		wantReplyTo     string // "" = none added
		keepBody        string
		wantOrigFromSet bool
	}{
		{
			name:     "plain address",
			in:       "From: scan@printer.lan\r\nSubject: s\r\n\r\nbody\r\n",
			wantFrom: "From: <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <scan@printer.lan>\r\n", keepBody: "body\r\n",
		},
		{
			name:     "display name with @ and quotes",
			in:       "From: \"Bob \\\"the\\\" <bob@x.lan>\" <bob@x.lan>\r\n\r\nb",
			wantFrom: "From: \"Bob the bob at x.lan\" <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <bob@x.lan>\r\n", keepBody: "b",
		},
		{
			name:     "existing Reply-To kept",
			in:       "From: a@x.lan\r\nReply-To: helpdesk@contoso.example\r\n\r\nb",
			wantFrom: "From: <scanner@contoso.example>\r\n", keepBody: "b",
		},
		{
			name:     "already the mailbox",
			in:       "From: Scanner <scanner@contoso.example>\r\n\r\nb",
			wantFrom: "From: \"Scanner\" <scanner@contoso.example>\r\n", keepBody: "b",
		},
		{
			name:     "no From",
			in:       "Subject: x\r\n\r\nb",
			wantFrom: "From: <scanner@contoso.example>\r\n", keepBody: "b",
		},
		{
			name:     "unparsable From",
			in:       "From: <<<garbage\r\n\r\nb",
			wantFrom: "From: <scanner@contoso.example>\r\n", keepBody: "b",
		},
		{
			name:     "folded From and encoded name",
			in:       "From: =?utf-8?q?J=C3=BCrgen?=\r\n <j@x.lan>\r\nX: y\r\n\r\nb\r\n",
			wantFrom: "From: =?utf-8?q?J=C3=BCrgen?= <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <j@x.lan>\r\n", keepBody: "b\r\n",
		},
		{
			name:     "no blank line before body",
			in:       "From: a@x.lan\r\nthis is body text\r\n",
			wantFrom: "From: <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <a@x.lan>\r\n", keepBody: "this is body text\r\n",
		},
		{
			name:     "bare CR starting a field",
			in:       "From: a@x.lan\r\nSubject: hi\rBcc: evil@x.lan\r\n\r\nb",
			wantFrom: "From: <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <a@x.lan>\r\n", keepBody: "b",
		},
		{
			name:     "NUL and CR in a folded value",
			in:       "From: a@x.lan\r\nX-Note: a\x00b\r\n c\rBcc: evil@x.lan\r\n\r\nb\x00\r",
			wantFrom: "From: <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <a@x.lan>\r\n", keepBody: "b\x00\r",
		},
		{
			name:     "two From fields",
			in:       "From: a@x.lan\r\nSubject: s\r\nFrom: ceo@contoso.example\r\n\r\nb",
			wantFrom: "From: <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <a@x.lan>\r\n", keepBody: "b",
		},
		{
			name:     "header injection in display name",
			in:       "From: \"x\r\n Bcc: evil@x.lan\" <a@x.lan>\r\n\r\nb",
			wantFrom: "From: \"x Bcc: evil at x.lan\" <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <a@x.lan>\r\n", keepBody: "b",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, body, err := readHeader(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			rewriteFrom(h, mbox)
			out := string(h.bytes())
			rest, _ := io.ReadAll(body)
			if string(rest) != tc.keepBody {
				t.Errorf("body = %q, want %q", rest, tc.keepBody)
			}
			if !strings.Contains(out, tc.wantFrom) {
				t.Errorf("header:\n%s\nlacks %q", out, tc.wantFrom)
			}
			if n := strings.Count(strings.ToLower(out), "\nfrom:") + boolInt(strings.HasPrefix(strings.ToLower(out), "from:")); n != 1 {
				t.Errorf("%d From fields:\n%s", n, out)
			}
			if tc.wantReplyTo != "" && !strings.Contains(out, tc.wantReplyTo) {
				t.Errorf("header:\n%s\nlacks %q", out, tc.wantReplyTo)
			}
			if tc.wantReplyTo == "" && strings.Count(out, "Reply-To:") > strings.Count(tc.in, "Reply-To:") {
				t.Errorf("Reply-To added:\n%s", out)
			}
			if strings.Contains(out, "\nBcc:") || strings.Contains(out, "\rBcc:") || strings.Contains(out, "ceo@") {
				t.Errorf("injected field:\n%q", out)
			}
			if bareCR(out) || strings.ContainsRune(out, 0) {
				t.Errorf("a bare CR or NUL reached the header:\n%q", out)
			}
		})
	}
}

// bareCR says whether s has a CR that does not start a CRLF.
func bareCR(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' && (i+1 == len(s) || s[i+1] != '\n') {
			return true
		}
	}
	return false
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestReadHeaderLimits(t *testing.T) {
	huge := "X-Long: " + strings.Repeat("a", maxHeaderBytes) + "\r\n\r\nbody"
	if _, _, err := readHeader(strings.NewReader(huge)); !errors.Is(err, errHeaderTooLarge) {
		t.Errorf("err = %v, want errHeaderTooLarge", err)
	}
	if _, _, err := readHeader(strings.NewReader(" continuation first\r\n\r\n")); !errors.Is(err, errMalformedHeader) {
		t.Errorf("err = %v, want errMalformedHeader", err)
	}
	h, body, err := readHeader(strings.NewReader("Subject: only headers"))
	if err != nil || len(h.fields) != 1 {
		t.Fatalf("h=%v err=%v", h, err)
	}
	if rest, _ := io.ReadAll(body); len(rest) != 0 {
		t.Errorf("body %q", rest)
	}
}

func TestSASLServers(t *testing.T) {
	var gotUser, gotPass string
	ok := func(u string, p []byte) error { gotUser, gotPass = u, string(p); return nil }

	t.Run("LOGIN", func(t *testing.T) {
		s := &loginServer{login: ok}
		ch, done, err := s.Next(nil)
		if string(ch) != "Username:" || done || err != nil {
			t.Fatalf("%q %v %v", ch, done, err)
		}
		ch, done, err = s.Next([]byte("mfp"))
		if string(ch) != "Password:" || done || err != nil {
			t.Fatalf("%q %v %v", ch, done, err)
		}
		if _, done, err = s.Next([]byte("pw")); !done || err != nil || gotUser != "mfp" || gotPass != "pw" {
			t.Fatalf("done=%v err=%v user=%q pass=%q", done, err, gotUser, gotPass)
		}
	})
	t.Run("LOGIN empty username", func(t *testing.T) {
		s := &loginServer{login: ok}
		if _, _, err := s.Next([]byte{}); err != errAuthMalformed {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("PLAIN", func(t *testing.T) {
		s := &plainServer{login: ok}
		if _, done, err := s.Next([]byte("\x00mfp\x00pw")); !done || err != nil || gotUser != "mfp" {
			t.Fatalf("done=%v err=%v user=%q", done, err, gotUser)
		}
		for _, bad := range []string{"", "mfp", "\x00\x00pw", "a\x00b\x00c\x00d"} {
			s := &plainServer{login: ok}
			if _, _, err := s.Next([]byte(bad)); err != errAuthMalformed {
				t.Errorf("%q: err = %v, want malformed", bad, err)
			}
		}
	})
}

// FuzzSASL feeds arbitrary responses to both SASL servers: they must never
// panic, must finish within their steps, and may only call login with the
// fields they were given.
func FuzzSASL(f *testing.F) {
	f.Add([]byte("\x00mfp\x00pw"), []byte("mfp"), []byte("pw"))
	f.Add([]byte("mfp\x00mfp\x00pw"), []byte(""), []byte("\x00"))
	f.Add([]byte("\x00\x00"), []byte("a\x00b"), []byte{})
	f.Fuzz(func(t *testing.T, plain, user, pass []byte) {
		calls := 0
		login := func(u string, p []byte) error {
			calls++
			if u == "" {
				t.Fatal("login with an empty username")
			}
			return errAuthFailed
		}
		ps := &plainServer{login: login}
		_, done, err := ps.Next(bytes.Clone(plain))
		if !done || err == nil {
			t.Fatalf("PLAIN: done=%v err=%v", done, err)
		}
		ls := &loginServer{login: login}
		ls.Next(nil)
		if _, done, err := ls.Next(bytes.Clone(user)); !done {
			if _, done, err = ls.Next(bytes.Clone(pass)); !done || err == nil {
				t.Fatalf("LOGIN: done=%v err=%v", done, err)
			}
		} else if err == nil {
			t.Fatal("LOGIN finished without an error")
		}
		if calls > 2 {
			t.Fatalf("login called %d times", calls)
		}
	})
}

// FuzzRewriteHeader: whatever the device sends, the rewritten header block
// has exactly one From, naming the mailbox, every line of it ends in CRLF
// or is a folded continuation, and the body after the header is untouched.
func FuzzRewriteHeader(f *testing.F) {
	f.Add("From: a@b.lan\r\nSubject: x\r\n\r\nbody")
	f.Add("From: \"x\r\n Bcc: e@x\" <a@x.lan>\r\n\r\nb")
	f.Add("From: =?utf-8?b?w7w=?= <a@b.lan>\nTo: c@d.lan\n\nbody\n")
	f.Add("no header here\r\n\r\n")
	f.Add("Subject: a\rBcc: x@y\r\nFrom: a@b.lan\r\nFrom: c@d.lan\r\n\r\n")
	f.Add("X: \x00\r\n \r\r\n\r\n")
	f.Add("")
	mbox, _ := mailaddr.Parse("scanner@contoso.example")
	f.Fuzz(func(t *testing.T, in string) {
		h, body, err := readHeader(strings.NewReader(in))
		if err != nil {
			return
		}
		rewriteFrom(h, mbox)
		out := h.bytes()
		rest, _ := io.ReadAll(body)
		if !strings.HasSuffix(in, string(rest)) {
			t.Fatalf("body %q is not the tail of the input", rest)
		}
		froms := 0
		for _, fl := range h.fields {
			if fl.name == "from" {
				froms++
				_, a, ok := parseFrom(fl.value())
				if !ok || !a.Equal(mbox) {
					t.Fatalf("From field %q does not parse to the mailbox", fl.raw)
				}
				if bytes.Count(fl.raw, []byte("\n")) != 1 {
					t.Fatalf("From field spans lines: %q", fl.raw)
				}
			}
		}
		if froms != 1 {
			t.Fatalf("%d From fields in %q", froms, out)
		}
		if bareCR(string(out)) || bytes.IndexByte(out, 0) >= 0 {
			t.Fatalf("a bare CR or NUL reached the header block: %q", out)
		}
	})
}
