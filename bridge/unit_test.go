package bridge

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/header"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/message"
)

// TestReplies checks every reply the bridge gives on its own: a code and
// an enhanced code of the same class (RFC 3463), and a text.
func TestReplies(t *testing.T) {
	for _, r := range []*smtp.SMTPError{
		replyNetwork, replyBlocked, replyLimit, replyLimitIP,
		errAuthFailed, errAuthMalformed, errAuthAgain, errAuthMechanism,
		errNeedAuth, errReauth, errNestedMail, errTooManyRecipients, errDeviceRate, errTooManyErrors, errDataTimeout,
		errSenderNotAllowed, errHeaderFromDenied, errRcptNotAllowed, errRecipientSyntax, errSenderSyntax,
		errHeaderTooBig, errBadHeader,
	} {
		if r.Code/100 != r.EnhancedCode[0] || r.Code < 400 || r.Message == "" {
			t.Errorf("malformed reply %s", replyOf(r))
		}
	}
	if got := string(greeting(replyLimitIP)); got != "421 4.7.0 Too many connections from your address; try again later\r\n" {
		t.Errorf("greeting %q", got)
	}
	for _, tc := range []struct {
		r    message.Receipt
		want string
	}{
		{message.Receipt{Queued: true}, "250 2.0.0 OK id1 queued"},
		{message.Receipt{UpstreamID: "X1@prod.outlook.com"}, "250 2.0.0 OK id1 delivered as <X1@prod.outlook.com>"},
		{message.Receipt{}, "250 2.0.0 OK id1 delivered"},
	} {
		if got := replyOf(accepted("id1", tc.r)); got != tc.want {
			t.Errorf("accepted(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
	// A delivery failure's reply comes from message.ReplyFor, whole.
	r := deliveryReply(&message.Error{Stage: message.StageSpool, Err: errors.New("disk full")})
	if replyOf(r) != message.ReplyFor(&message.Error{Stage: message.StageSpool}).String() {
		t.Errorf("deliveryReply = %s", replyOf(r))
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
			name:     "raw Latin-1 display name",
			in:       "From: Scanner B\xfcro 2 <scan@printer.lan>\r\n\r\nb",
			wantFrom: "From: =?utf-8?q?Scanner_B=C3=BCro_2?= <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <scan@printer.lan>\r\n", keepBody: "b",
		},
		{
			name:     "raw UTF-8 display name",
			in:       "From: Scanner B\xc3\xbcro 2 <scan@printer.lan>\r\n\r\nb",
			wantFrom: "From: =?utf-8?q?Scanner_B=C3=BCro_2?= <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <scan@printer.lan>\r\n", keepBody: "b",
		},
		{
			name:     "raw Latin-1 quoted display name",
			in:       "From: \"M\xfcller, Scan\" <scan@printer.lan>\r\n\r\nb",
			wantFrom: "From: =?utf-8?q?M=C3=BCller_Scan?= <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <scan@printer.lan>\r\n", keepBody: "b",
		},
		{
			name:     "encoded word hiding an address and a comma",
			in:       "From: =?utf-8?q?ceo=40contoso=2Eexample=2C_B=C3=BCro_<x=40y>?= <scan@printer.lan>\r\n\r\nb",
			wantFrom: "From: =?utf-8?b?Y2VvIGF0IGNvbnRvc28uZXhhbXBsZSBCw7xybyB4IGF0IHk=?= <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <scan@printer.lan>\r\n", keepBody: "b",
		},
		{
			name:     "ASCII name with a comma and a semicolon, kept within quotes",
			in:       "From: \"Floor 2, Room 3; east\" <scan@printer.lan>\r\n\r\nb",
			wantFrom: "From: \"Floor 2, Room 3; east\" <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <scan@printer.lan>\r\n", keepBody: "b",
		},
		{
			name:     "header injection in display name",
			in:       "From: \"x\r\n Bcc: evil@x.lan\" <a@x.lan>\r\n\r\nb",
			wantFrom: "From: \"x Bcc: evil at x.lan\" <scanner@contoso.example>\r\n", wantReplyTo: "Reply-To: <a@x.lan>\r\n", keepBody: "b",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, body, err := header.Read(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			rewriteFrom(h, mbox)
			out := string(h.Bytes())
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
	f.Add("From: Scanner B\xfcro 2 <scan@printer.lan>\r\n\r\n")
	f.Add("From: =?utf-8?q?a=40b=2C_=C3=BC_<c=40d>?= <scan@printer.lan>\r\n\r\n")
	mbox, _ := mailaddr.Parse("scanner@contoso.example")
	f.Fuzz(func(t *testing.T, in string) {
		h, body, err := header.Read(strings.NewReader(in))
		if err != nil {
			return
		}
		rewriteFrom(h, mbox)
		out := h.Bytes()
		rest, _ := io.ReadAll(body)
		if !strings.HasSuffix(in, string(rest)) {
			t.Fatalf("body %q is not the tail of the input", rest)
		}
		froms := 0
		for _, fl := range h.Fields {
			if fl.Name == "from" {
				froms++
				name, a, ok := parseFrom(fl.Value())
				if !ok || !a.Equal(mbox) {
					t.Fatalf("From field %q does not parse to the mailbox", fl.Raw)
				}
				// Decoded, the name holds nothing Exchange could read as
				// another address.
				if strings.ContainsAny(name, "@<>") || !isASCII(name) && strings.ContainsAny(name, ",;:") {
					t.Fatalf("From field %q has the display name %q", fl.Raw, name)
				}
				if bytes.Count(fl.Raw, []byte("\n")) != 1 {
					t.Fatalf("From field spans lines: %q", fl.Raw)
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

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
