package bridge_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// TestAuthVariants drives every form of AUTH PLAIN and AUTH LOGIN that
// devices use, and checks each message arrives at Exchange as the mailbox
// with the token sent after the 334.
func TestAuthVariants(t *testing.T) {
	e := newEnv(t, envOptions{})
	addr := e.addr("plain")
	variants := map[string]func(d *testenv.Dialog){
		"PLAIN initial response": func(d *testenv.Dialog) {
			d.Cmd("AUTH PLAIN "+plainAuth("mfp", devicePassword), "235 2.0.0")
		},
		"PLAIN two-step": func(d *testenv.Dialog) {
			d.Cmd("AUTH PLAIN", "334")
			d.Cmd(plainAuth("mfp", devicePassword), "235 2.0.0")
		},
		"PLAIN with authzid": func(d *testenv.Dialog) {
			d.Cmd("AUTH PLAIN "+b64("mfp\x00mfp\x00"+devicePassword), "235 2.0.0")
		},
		"LOGIN": func(d *testenv.Dialog) {
			if got := d.Cmd("AUTH LOGIN", "334"); got != "334 "+b64("Username:") {
				t.Errorf("LOGIN first challenge = %q", got)
			}
			if got := d.Cmd(b64("mfp"), "334"); got != "334 "+b64("Password:") {
				t.Errorf("LOGIN second challenge = %q", got)
			}
			d.Cmd(b64(devicePassword), "235 2.0.0")
		},
		"LOGIN with username on the AUTH line": func(d *testenv.Dialog) {
			d.Cmd("AUTH LOGIN "+b64("mfp"), "334 "+b64("Password:"))
			d.Cmd(b64(devicePassword), "235 2.0.0")
		},
		"lower-case mechanism": func(d *testenv.Dialog) {
			d.Cmd("auth login", "334")
			d.Cmd(b64("mfp"), "334")
			d.Cmd(b64(devicePassword), "235 2.0.0")
		},
	}
	n := 0
	for name, auth := range variants {
		t.Run(name, func(t *testing.T) {
			d := dial(t, addr)
			d.Cmd("EHLO device.lan", "250")
			auth(d)
			d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
			d.Cmd("RCPT TO:<bob@contoso.example>", "250")
			d.Data(simpleMessage, "250 2.0.0")
			d.Cmd("QUIT", "221")
			n++
		})
	}
	msgs := e.world.Exchange.Messages()
	if len(msgs) != n {
		t.Fatalf("exchange got %d messages, want %d", len(msgs), n)
	}
	for _, m := range msgs {
		if m.AuthUser != "scanner@contoso.example" || m.From != "scanner@contoso.example" || m.AppID != testenv.ClientID {
			t.Errorf("message %+v: want XOAUTH2 user and envelope sender scanner@contoso.example", m)
		}
	}
	if e.world.Exchange.InlineAuths() != 0 {
		t.Errorf("%d XOAUTH2 logins sent the token on the AUTH line", e.world.Exchange.InlineAuths())
	}
	if g := e.world.Entra.Grants(testenv.ClientID); g != 1 {
		t.Errorf("token grants = %d, want 1 for %d messages", g, n)
	}
}

func TestAuthFailures(t *testing.T) {
	restricted := device("lab", "scanner@contoso.example")
	restricted.Networks = []netip.Prefix{network("192.0.2.0/24")}
	e := newEnv(t, envOptions{devices: []inventory.Device{device("mfp", "scanner@contoso.example"), restricted}})
	addr := e.addr("plain")
	tests := []struct {
		name, auth, want string
	}{
		{"wrong password", "AUTH PLAIN " + plainAuth("mfp", "wrong"), "535 5.7.8"},
		{"unknown user", "AUTH PLAIN " + plainAuth("nobody", devicePassword), "535 5.7.8"},
		{"network not allowed", "AUTH PLAIN " + plainAuth("lab", devicePassword), "535 5.7.8"},
		{"other authzid", "AUTH PLAIN " + b64("admin\x00mfp\x00"+devicePassword), "535 5.7.8"},
		{"malformed PLAIN", "AUTH PLAIN " + b64("just-one-field"), "501 5.5.2"},
		{"bad base64", "AUTH PLAIN !!!", "454 4.7.0"},
		{"unknown mechanism", "AUTH CRAM-MD5", "504 5.5.4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := dial(t, addr)
			d.Cmd("EHLO device.lan", "250")
			d.Cmd(tc.auth, tc.want)
			// Still unauthenticated: MAIL is refused.
			d.Cmd("MAIL FROM:<scan@printer.lan>", "530 5.7.0")
		})
	}
	if n := len(e.world.Exchange.Messages()); n != 0 {
		t.Errorf("exchange got %d messages", n)
	}
	for _, want := range []string{`"result":"bad_credentials"`, `"result":"unknown_user"`, `"result":"network_denied"`} {
		if !strings.Contains(e.logs.String(), want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

func TestTLSListeners(t *testing.T) {
	e := newEnv(t, envOptions{listeners: []bridge.Listener{
		{Name: "starttls", Address: "127.0.0.1:0", TLS: bridge.TLSStartTLS},
		{Name: "implicit", Address: "127.0.0.1:0", TLS: bridge.TLSImplicit},
	}})
	tlsCfg := &tls.Config{RootCAs: e.world.CA.Pool(), ServerName: "127.0.0.1"}

	t.Run("AUTH only after STARTTLS", func(t *testing.T) {
		d := dial(t, e.addr("starttls"))
		ehlo := d.Cmd("EHLO device.lan", "250")
		_ = ehlo
		d.Cmd("AUTH PLAIN "+plainAuth("mfp", devicePassword), "523 5.7.10")
		d.Cmd("MAIL FROM:<a@b.example>", "530 5.7.0")
	})
	t.Run("go-smtp client over STARTTLS", func(t *testing.T) {
		c, err := smtp.DialStartTLS(e.addr("starttls"), tlsCfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !c.SupportsAuth("PLAIN") || !c.SupportsAuth("LOGIN") {
			t.Fatal("AUTH PLAIN LOGIN not offered after STARTTLS")
		}
		if err := c.Auth(sasl.NewPlainClient("", "mfp", devicePassword)); err != nil {
			t.Fatal(err)
		}
		if err := c.SendMail("scan@printer.lan", []string{"bob@contoso.example"}, strings.NewReader(simpleMessage)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("implicit TLS", func(t *testing.T) {
		d := dialTLS(t, e.addr("implicit"), tlsCfg)
		d.Login("mfp", devicePassword)
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		d.Data(simpleMessage, "250 2.0.0")
	})
	if n := len(e.world.Exchange.Messages()); n != 2 {
		t.Errorf("exchange got %d messages, want 2", n)
	}
}

func TestPolicy(t *testing.T) {
	enforce := device("erp", "erp@contoso.example")
	enforce.EnforceFrom = true
	enforce.AllowedFrom = patterns("billing@contoso.example", "noreply@contoso.example")
	enforce.AllowedRecipients = patterns("contoso.example", "bob@partner.example")
	e := newEnv(t, envOptions{
		devices: []inventory.Device{device("mfp", "scanner@contoso.example"), enforce},
		limits:  bridge.Limits{MaxRecipients: 3, MaxMessageBytes: 64 << 10},
	})
	addr := e.addr("plain")
	start := func(t *testing.T, user string) *testenv.Dialog {
		d := dial(t, addr)
		d.Login(user, devicePassword)
		return d
	}

	t.Run("enforce refuses another sender", func(t *testing.T) {
		d := start(t, "erp")
		d.Cmd("MAIL FROM:<ceo@contoso.example>", "550 5.7.1")
		d.Cmd("MAIL FROM:<>", "553 5.1.7")
		d.Cmd("MAIL FROM:<erp@contoso.example>", "250")
	})
	t.Run("enforce refuses a header From not allowed", func(t *testing.T) {
		d := start(t, "erp")
		d.Cmd("MAIL FROM:<erp@contoso.example>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		d.Data("From: CEO <ceo@contoso.example>\r\nSubject: x\r\n\r\nbody\r\n", "550 5.7.1")
	})
	t.Run("enforce passes an allowed sender unchanged", func(t *testing.T) {
		d := start(t, "erp")
		d.Cmd("MAIL FROM:<billing@contoso.example>", "250")
		d.Cmd("RCPT TO:<bob@partner.example>", "250")
		d.Data("From: Billing <billing@contoso.example>\r\nSubject: invoice\r\n\r\nbody\r\n", "250 2.0.0")
		m := lastMessage(t, e)
		if m.From != "billing@contoso.example" || m.HeaderFrom != "billing@contoso.example" {
			t.Errorf("envelope %q, header From %q", m.From, m.HeaderFrom)
		}
	})
	t.Run("allowed_from with no SendAs right is Exchange's 5.7.60", func(t *testing.T) {
		d := start(t, "erp")
		d.Cmd("MAIL FROM:<noreply@contoso.example>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		got := d.Data("From: <noreply@contoso.example>\r\n\r\nbody\r\n", "550 5.7.60")
		if !strings.Contains(got, "send as this sender") {
			t.Errorf("reply %q lacks Exchange's text", got)
		}
	})
	t.Run("recipients", func(t *testing.T) {
		d := start(t, "erp")
		d.Cmd("MAIL FROM:<erp@contoso.example>", "250")
		d.Cmd("RCPT TO:<eve@elsewhere.example>", "550 5.7.1")
		d.Cmd("RCPT TO:<bob@eu.contoso.example>", "550 5.7.1")
		d.Cmd(`RCPT TO:<"bob@contoso.example"@elsewhere.example>`, "553 5.1.3")
		d.Cmd("RCPT TO:<bob%elsewhere.example@contoso.example>", "553 5.1.3")
		// RFC 5321 section 3.3: a source route is ignored, so the policy
		// sees, and refuses, the real recipient.
		d.Cmd("RCPT TO:<@contoso.example:eve@elsewhere.example>", "550 5.7.1")
		d.Cmd("RCPT TO:<a@contoso.example>", "250")
		d.Cmd("RCPT TO:<b@contoso.example>", "250")
		d.Cmd("RCPT TO:<c@contoso.example>", "250")
		d.Cmd("RCPT TO:<d@contoso.example>", "452 4.5.3")
	})
	t.Run("size", func(t *testing.T) {
		d := start(t, "mfp")
		d.Cmd("MAIL FROM:<scan@printer.lan> SIZE=999999", "552 5.3.4")
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 100)
		d.Data(big, "552 5.3.4")
		// The session goes on.
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	})
	t.Run("MAIL without AUTH", func(t *testing.T) {
		d := dial(t, addr)
		d.Cmd("EHLO device.lan", "250")
		d.Cmd("MAIL FROM:<scan@printer.lan>", "530 5.7.0")
	})
}

func lastMessage(t *testing.T, e *env) fakeexchange.Message {
	t.Helper()
	msgs := e.world.Exchange.Messages()
	if len(msgs) == 0 {
		t.Fatal("exchange got no message")
	}
	return msgs[len(msgs)-1]
}

// TestRewriteAndBodyIntegrity sends a 3 MB message with long lines, bare
// dots and binary-looking bytes, and checks that the header block is
// rewritten as documented and the body arrives byte for byte.
func TestRewriteAndBodyIntegrity(t *testing.T) {
	e := newEnv(t, envOptions{})
	body := randomBody(t, 3<<20)
	header := "From: \"Scanner 2F (scan@printer.lan)\" <scan@printer.lan>\r\n" +
		"Sender: relay@printer.lan\r\n" +
		"To: bob@contoso.example\r\n" +
		"Subject: =?utf-8?q?Scan_f=C3=BCr_Bob?=\r\n" +
		"\r\n"

	c, err := smtp.Dial(e.addr("plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("mfp.lan"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "mfp", devicePassword)); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("scan@printer.lan", []string{"bob@contoso.example"}, strings.NewReader(header+body)); err != nil {
		t.Fatal(err)
	}

	m := lastMessage(t, e)
	if m.Data == nil {
		t.Fatal("message bytes not kept")
	}
	i := bytes.Index(m.Data, []byte("\r\n\r\n"))
	gotHeader, gotBody := string(m.Data[:i+2]), m.Data[i+4:]
	if sha256.Sum256(gotBody) != sha256.Sum256([]byte(body)) {
		t.Fatalf("body changed: %d bytes in, %d bytes out", len(body), len(gotBody))
	}
	for _, want := range []string{
		"From: \"Scanner 2F (scan at printer.lan)\" <scanner@contoso.example>\r\n",
		"Reply-To: <scan@printer.lan>\r\n",
		"Subject: =?utf-8?q?Scan_f=C3=BCr_Bob?=\r\n",
		"Received: from mfp.lan ([127.0.0.1])\r\n\tby bridge.test (smtpbridge) with ESMTPA id ",
	} {
		if !strings.Contains(gotHeader, want) {
			t.Errorf("header lacks %q:\n%s", want, gotHeader)
		}
	}
	if strings.Contains(gotHeader, "Sender:") {
		t.Errorf("Sender kept:\n%s", gotHeader)
	}
	if m.HeaderFrom != "scanner@contoso.example" || m.From != "scanner@contoso.example" {
		t.Errorf("header From %q, envelope %q", m.HeaderFrom, m.From)
	}
}

// randomBody returns CRLF lines of printable and 8-bit bytes, some
// starting with a dot, up to n bytes.
func randomBody(t *testing.T, n int) string {
	t.Helper()
	raw := make([]byte, n)
	if _, err := io.ReadFull(rand.Reader, raw); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		lineLen := 1 + int(raw[i%len(raw)])*3
		line := make([]byte, 0, lineLen)
		for j := 0; j < lineLen; j++ {
			c := raw[(i*997+j)%len(raw)]
			if c == '\r' || c == '\n' || c == 0 {
				c = 'x'
			}
			line = append(line, c)
		}
		if i%7 == 0 {
			line[0] = '.'
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.String()
}

func TestCertificateTenant(t *testing.T) {
	dev := device("fab", "mfp@fabrikam.example")
	dev.Tenant = "cert"
	e := newEnv(t, envOptions{devices: []inventory.Device{dev}})
	for range 3 {
		d := dial(t, e.addr("plain"))
		d.Login("fab", devicePassword)
		d.Cmd("MAIL FROM:<x@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@fabrikam.example>", "250")
		d.Data(simpleMessage, "250 2.0.0")
	}
	if g := e.world.Entra.Grants(testenv.CertClientID); g != 1 {
		t.Errorf("grants = %d, want 1", g)
	}
	if m := lastMessage(t, e); m.AppID != testenv.CertClientID || m.AuthUser != "mfp@fabrikam.example" {
		t.Errorf("message %+v", m)
	}
}

// TestReplyMapping checks every upstream outcome against the reply the
// device gets: Exchange's permanent refusals pass through with their
// enhanced code, everything a retry can fix is a 451.
func TestReplyMapping(t *testing.T) {
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	tests := []struct {
		name   string
		opts   envOptions
		prep   func(e *env)
		mbox   string
		want   string
		inText string
		inLog  string
	}{
		{name: "SendAsDenied after DATA", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageData, fakeexchange.Reply{Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 252},
				Text: "SendAsDenied; scanner@contoso.example not allowed to send as x@y; STOREDRV.Submission.Exception:SendAsDeniedException"})
		}, want: "554 5.2.252", inText: "SendAsDenied"},
		{name: "quota", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageData, fakeexchange.Reply{Code: 554, Enhanced: smtp.EnhancedCode{5, 2, 0},
				Text: "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"})
		}, want: "451 4.2.0", inText: "SubmissionQuotaExceeded"}, // the daily quota frees: try again

		{name: "recipient refused", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageRcpt, fakeexchange.Reply{Code: 550, Enhanced: smtp.EnhancedCode{5, 7, 233}, Text: "tenant external recipient rate limit"})
		}, want: "550 5.7.233"},
		{name: "too large for the mailbox", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageData, fakeexchange.Reply{Code: 552, Enhanced: smtp.EnhancedCode{5, 3, 4}, Text: "Message size exceeds fixed maximum message size"})
		}, want: "552 5.3.4"},
		{name: "sender thread limit", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageMail, fakeexchange.Reply{Code: 432, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "STOREDRV.ClientSubmit; sender thread limit exceeded"})
		}, want: "451 4.3.2", inText: "sender thread limit"},
		{name: "temporary server error", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageData, fakeexchange.Reply{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "Temporary server error. Please try again later"})
		}, want: "451 4.7.0"},
		{name: "TLS version refused", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageAuth, fakeexchange.Reply{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 66}, Text: "TLS 1.0 and 1.1 are not supported"})
		}, want: "451 4.7.66"},
		{name: "mailbox without permission (535 5.7.3)", mbox: "nobody@contoso.example", want: "451 4.7.0", inText: "refused the bridge's login"},
		{name: "SMTP AUTH disabled (535 5.7.139)", mbox: "alarm@contoso.example", prep: func(e *env) {
			e.world.Exchange.AddMailbox(fakeexchange.Mailbox{Address: "alarm@contoso.example", TenantID: testenv.TenantID,
				FullAccess: []string{e.std.Secret.ObjectID}, SMTPAuthDisabled: true})
		}, want: "451 4.7.0", inText: "SmtpClientAuthentication is disabled"},
		{name: "token refused (wrong secret)", prep: func(e *env) {
			e.world.Entra.Fail(fakeentra.Failure{Status: 401, Code: "invalid_client", AADSTS: 7000215, Description: "Invalid client secret provided."})
		}, want: "451 4.7.0", inText: "access token"},
		{name: "Exchange not reachable", opts: envOptions{smtpHost: closedPort}, want: "451 4.4.1"},
		{name: "Exchange certificate not trusted", opts: envOptions{untrusted: true}, want: "451 4.7.5", inLog: "x509: certificate signed by unknown authority"},
		{name: "connection dropped at DATA", prep: func(e *env) {
			e.world.Exchange.Script(fakeexchange.StageData, fakeexchange.Reply{Hangup: true})
		}, want: "451 4.4.2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mbox := tc.mbox
			if mbox == "" {
				mbox = "scanner@contoso.example"
			}
			tc.opts.devices = []inventory.Device{device("mfp", mbox)}
			e := newEnv(t, tc.opts)
			if tc.prep != nil {
				tc.prep(e)
			}
			d := dial(t, e.addr("plain"))
			d.Login("mfp", devicePassword)
			d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
			d.Cmd("RCPT TO:<bob@contoso.example>", "250")
			got := d.Data(simpleMessage, tc.want)
			if tc.inText != "" && !strings.Contains(got, tc.inText) {
				t.Errorf("reply %q lacks %q", got, tc.inText)
			}
			if tc.inLog != "" && !strings.Contains(e.logs.String(), tc.inLog) {
				t.Errorf("log lacks %q:\n%s", tc.inLog, e.logs.String())
			}
			if len(got) > 320 || strings.ContainsAny(got, "\r\n") {
				t.Errorf("reply not one bounded line: %q", got)
			}
			if n := len(e.world.Exchange.Messages()); n != 0 {
				t.Errorf("exchange kept %d messages", n)
			}
			// The device can go on in the same session.
			d.Cmd("RSET", "250")
			d.Cmd("NOOP", "250")
		})
	}
}

// TestNoTokenWithoutTLS: an "Exchange" that does not offer STARTTLS gets
// no AUTH at all.
func TestNoTokenWithoutTLS(t *testing.T) {
	e := newEnv(t, envOptions{exoSetup: func(s *fakeexchange.Server) { s.DisableStartTLS() }})
	d := dial(t, e.addr("plain"))
	d.Login("mfp", devicePassword)
	d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.Cmd("RCPT TO:<bob@contoso.example>", "250")
	d.Data(simpleMessage, "451 4.7.5")
	if n := e.world.Exchange.AuthLogins() + e.world.Exchange.InlineAuths(); n != 0 {
		t.Errorf("%d logins reached a server without TLS", n)
	}
}

func TestManyMessagesOneGrant(t *testing.T) {
	e := newEnv(t, envOptions{})
	const n = 25
	errs := make(chan error, n)
	// Exchange allows 3 connections per mailbox; stay under it (its count
	// drops only after it answered QUIT, so 2 leaves room for that lag).
	slots := make(chan struct{}, 2)
	for i := range n {
		go func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			c, err := smtp.Dial(e.addr("plain"))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", "mfp", devicePassword)); err != nil {
				errs <- err
				return
			}
			errs <- c.SendMail("scan@printer.lan", []string{"bob@contoso.example"},
				strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)))
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := len(e.world.Exchange.Messages()); got != n {
		t.Errorf("exchange got %d messages, want %d", got, n)
	}
	if g := e.world.Entra.Grants(testenv.ClientID); g != 1 {
		t.Errorf("grants = %d for %d messages, want 1", g, n)
	}
}

// TestLongLines: a 5,000-byte line (an ERP's one-line HTML body) goes
// through unchanged; a line over 64 KiB gets a permanent reply, since a
// retry could never succeed.
func TestLongLines(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := dial(t, e.addr("plain"))
	d.Login("mfp", devicePassword)
	d.Cmd("MAIL FROM:<erp@app.lan>", "250")
	d.Cmd("RCPT TO:<bob@contoso.example>", "250")
	long := "<html>" + strings.Repeat("<p>row</p>", 500) + "</html>"
	d.Data("Subject: html\r\nContent-Type: text/html\r\n\r\n"+long+"\r\n", "250 2.0.0")
	if m := lastMessage(t, e); !bytes.Contains(m.Data, []byte("\r\n\r\n"+long+"\r\n")) {
		t.Error("long line changed on the way")
	}

	d = dial(t, e.addr("plain"))
	d.Login("mfp", devicePassword)
	d.Cmd("MAIL FROM:<erp@app.lan>", "250")
	d.Cmd("RCPT TO:<bob@contoso.example>", "250")
	d.Data("Subject: huge\r\n\r\n"+strings.Repeat("x", 70<<10)+"\r\n", "554 5.6.0")
	if n := len(e.world.Exchange.Messages()); n != 1 {
		t.Errorf("exchange got %d messages, want 1", n)
	}
}
