package graph

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakegraph"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/header"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
)

const mailbox = "scanner@contoso.example"

// GraphScope is the token scope for the fake Graph.
const graphScope = fakeentra.GraphResource + "/.default"

type rig struct {
	w  *fakeworld.World
	tr *Transport
}

func newRig(t *testing.T, graphRoles []string) *rig {
	t.Helper()
	w, std := testenv.Start(t)
	if graphRoles != nil {
		std.Secret = w.AddApp(testenv.TenantID, fakeentra.App{ClientID: testenv.ClientID, Secrets: []fakeentra.Secret{{Value: testenv.ClientSecret}},
			GraphRoles: graphRoles})
	}
	w.AddMailbox(mailbox, testenv.TenantID, std.Secret)
	store, err := tokenstore.New([]tokenstore.Tenant{{Name: "contoso", TenantID: testenv.TenantID, ClientID: testenv.ClientID,
		Credential: secret.NewClientSecret(testenv.ClientSecret), AuthorityHost: w.Entra.URL(), Scope: graphScope,
		RootCAs: w.CA.Pool()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := New(Options{Tokens: store, TempDir: t.TempDir(),
		Limiter: upstream.NewLocal(map[string]upstream.Limits{"contoso": {Connections: 4, PerMinute: 1000}}),
		Routes:  map[string]Route{"contoso": {Host: w.Graph.URL(), RootCAs: w.CA.Pool()}}})
	t.Cleanup(tr.Close)
	return &rig{w: w, tr: tr}
}

func mimeMsg(header, body string, to ...string) *message.Message {
	data := header + "\r\n" + body
	return &message.Message{ID: message.NewID(), Tenant: "contoso", Mailbox: mailbox, From: mailbox, To: to,
		Size: int64(len(data)), Body: strings.NewReader(data)}
}

// The message goes to exactly its envelope's recipients, whatever its
// header says: a Bcc-only recipient gets it, a header recipient outside
// the envelope does not. Graph takes them from the header: the header is
// rewritten.
func TestSendMailRecipientsAreTheEnvelopes(t *testing.T) {
	r := newRig(t, nil)
	hdr := "From: Scanner <" + mailbox + ">\r\nTo: Bob <bob@contoso.example>, Evil <evil@elsewhere.example>\r\nCc: evil2@elsewhere.example\r\nBcc: evil3@elsewhere.example\r\nSubject: scan\r\n"
	body := testenv.BodyCanary + "\r\n"
	rc, err := r.tr.Deliver(context.Background(), mimeMsg(hdr, body, "bob@contoso.example", "carol@contoso.example"))
	if err != nil {
		t.Fatal(err)
	}
	got := r.w.Graph.Messages()
	if len(got) != 1 || got[0].Via != "sendMail" {
		t.Fatalf("Graph got %+v", got)
	}
	rcpts := slices.Sorted(slices.Values(got[0].Recipients))
	if !slices.Equal(rcpts, []string{"bob@contoso.example", "carol@contoso.example"}) {
		t.Errorf("Graph's recipients %v, want exactly bob and carol", rcpts)
	}
	if !bytes.HasSuffix(got[0].MIME, []byte("\r\n\r\n"+body)) || !bytes.Contains(got[0].MIME, []byte("To: \"Bob\" <bob@contoso.example>\r\n")) {
		t.Errorf("the message changed beyond its recipients:\n%s", got[0].MIME)
	}
	if rc.UpstreamID == "" || rc.UpstreamID != got[0].RequestID || !strings.Contains(rc.Reply.Text, "request-id="+got[0].RequestID) ||
		!strings.Contains(rc.Reply.Text, "client-request-id="+got[0].ClientRequestID) || got[0].ClientRequestID == "" {
		t.Errorf("receipt %+v lacks Graph's request-id %q or our client-request-id %q", rc, got[0].RequestID, got[0].ClientRequestID)
	}
}

// A scan over sendMail's limit goes as a draft with the checked
// recipients, its PDF through an upload session, byte for byte.
func TestLargeScanThroughUploadSession(t *testing.T) {
	r := newRig(t, nil)
	data, pdf := testenv.Scan("From: <"+mailbox+">\r\nTo: <bob@contoso.example>\r\nSubject: =?utf-8?q?Scan_f=C3=BCr_Bob?=\r\nX-Scanner: MFP-2F\r\nImportance: high\r\n", 12<<20)
	m := &message.Message{ID: message.NewID(), Tenant: "contoso", Mailbox: mailbox, From: mailbox,
		To: []string{"bob@contoso.example", "hidden@contoso.example"}, Size: int64(len(data)), Body: strings.NewReader(data)}
	if _, err := r.tr.Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	got := r.w.Graph.Messages()
	if len(got) != 1 || got[0].Via != "draft" {
		t.Fatalf("Graph got %+v", got)
	}
	g := got[0]
	if !slices.Equal(slices.Sorted(slices.Values(g.Recipients)), []string{"bob@contoso.example", "hidden@contoso.example"}) {
		t.Errorf("recipients %v", g.Recipients)
	}
	if g.Subject != "Scan für Bob" || !strings.Contains(g.Body, "Scanned document attached.") || g.Headers["X-Scanner"] != "MFP-2F" {
		t.Errorf("draft subject %q, body %q, headers %v", g.Subject, g.Body, g.Headers)
	}
	if len(g.Attachments) != 1 || g.Attachments[0].Name != "scan.pdf" || !g.Attachments[0].Uploaded ||
		g.Attachments[0].Size != int64(len(pdf)) || g.Attachments[0].SHA256 != sha256.Sum256(pdf) {
		t.Errorf("attachments %+v, want scan.pdf of %d bytes, uploaded, intact", g.Attachments, len(pdf))
	}
	if n := r.w.Graph.Requests("chunk"); n != (len(pdf)+chunkBytes-1)/chunkBytes {
		t.Errorf("%d chunks for %d bytes", n, len(pdf))
	}
}

// Without Mail.ReadWrite a large message is refused for good, the reply
// naming the permission; the draft-less attempt leaves nothing behind.
func TestLargeScanWithoutMailReadWrite(t *testing.T) {
	r := newRig(t, []string{fakeentra.RoleMailSend})
	data, _ := testenv.Scan("From: <"+mailbox+">\r\nTo: <bob@contoso.example>\r\nSubject: scan\r\n", 4<<20)
	_, err := r.tr.Deliver(context.Background(), mimeMsg("", data, "bob@contoso.example"))
	var e *message.Error
	if !errors.As(err, &e) || e.Class != message.Permanent || !strings.Contains(e.Reply.Text, "Mail.ReadWrite") {
		t.Fatalf("got %v, want a permanent refusal naming Mail.ReadWrite", err)
	}
	if dev := message.ReplyFor(err); dev.Code != 550 || !strings.Contains(dev.Text, "Mail.ReadWrite") {
		t.Errorf("the device would get %v", dev)
	}
	// A small message needs only Mail.Send.
	if _, err := r.tr.Deliver(context.Background(), mimeMsg("To: bob@contoso.example\r\n", "small\r\n", "bob@contoso.example")); err != nil {
		t.Errorf("a small message with Mail.Send only: %v", err)
	}
}

// Graph's replies come back in the SMTP transport's classes.
func TestRefusals(t *testing.T) {
	r := newRig(t, nil)
	for _, tc := range []struct {
		reply fakegraph.Reply
		class message.Class
		after time.Duration
		code  int
		hold  message.Hold
	}{
		{fakegraph.Reply{Status: 429, Code: "ApplicationThrottled", Message: "Application is over its MailboxConcurrency limit.", RetryAfter: 5}, message.Throttled, 5 * time.Second, 451, ""},
		{fakegraph.Reply{Status: 503, Code: "ServiceUnavailable", Message: "Service Unavailable", RetryAfter: 2}, message.Throttled, 2 * time.Second, 451, ""},
		{fakegraph.Reply{Status: 403, Code: "ErrorAccessDenied", Message: "Access is denied. Check credentials and try again."}, message.Permanent, 0, 550, ""},
		{fakegraph.Reply{Status: 403, Code: "ErrorSendAsDenied", Message: "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."}, message.Permanent, 0, 550, ""},
		{fakegraph.Reply{Status: 400, Code: "ErrorMessageSizeExceeded", Message: "The message exceeds the maximum supported size."}, message.Permanent, 0, 552, ""},
		{fakegraph.Reply{Status: 400, Code: "ErrorInvalidRecipients", Message: "At least one recipient is not valid."}, message.Permanent, 0, 550, ""},
		{fakegraph.Reply{Status: 404, Code: "MailboxNotEnabledForRESTAPI", Message: "The mailbox is either inactive, soft-deleted, or is hosted on-premise."}, message.Setup, 0, 550, message.HoldSetup},
		{fakegraph.Reply{Status: 404, Code: "ErrorInvalidUser", Message: "The requested user 'scanner@contoso.example' is invalid."}, message.Setup, 0, 550, message.HoldSetup},
		{fakegraph.Reply{Status: 401, Code: "InvalidAuthenticationToken", Message: "Access token validation failure."}, message.Setup, 0, 535, message.HoldSetup},
		{fakegraph.Reply{Status: 403, Code: "ErrorQuotaExceeded", Message: "Mailbox has exceeded maximum mailbox size."}, message.Held, 0, 554, message.HoldMailboxFull},
		{fakegraph.Reply{Status: 503, Code: "ErrorTooManyObjectsOpened", Message: "Too many concurrent connections opened., Cannot open mailbox.", RetryAfter: 3}, message.Throttled, 3 * time.Second, 451, ""},
		{fakegraph.Reply{Status: 429, Code: "ErrorTooManyObjectsOpened", Message: "Too many concurrent connections opened., Cannot open mailbox."}, message.Throttled, 0, 451, ""},
		{fakegraph.Reply{Status: 500, Code: "InternalServerError", Message: "oops"}, message.Temporary, 0, 451, ""},
	} {
		t.Run(tc.reply.Code, func(t *testing.T) {
			r.w.Graph.Script(tc.reply)
			_, err := r.tr.Deliver(context.Background(), mimeMsg("To: bob@contoso.example\r\n", "x\r\n", "bob@contoso.example"))
			var e *message.Error
			if !errors.As(err, &e) || e.Class != tc.class || e.Reply.Code != tc.code || e.Hold != tc.hold || !strings.Contains(e.Reply.Text, tc.reply.Code) ||
				!strings.Contains(e.Reply.Text, "request-id=") {
				t.Fatalf("got %v (%+v), want class %v, code %d, Graph's code and request-id in the text", err, e, tc.class, tc.code)
			}
			if tc.after > 0 {
				if d := time.Until(e.RetryAt); d < tc.after-time.Second || d > tc.after {
					t.Errorf("RetryAt in %s, want %s", d, tc.after)
				}
			}
		})
	}
}

// Graph finds a message too large for sendMail (413), though the bridge
// measured it under 4 MB: it goes again as a draft, not failed.
func TestSendMail413GoesAsDraft(t *testing.T) {
	r := newRig(t, nil)
	r.w.Graph.ScriptKind("sendMail", fakegraph.Reply{Status: 413, Code: "RequestEntityTooLarge", Message: "The request is too large."})
	if _, err := r.tr.Deliver(context.Background(), mimeMsg("To: bob@contoso.example\r\nSubject: big to Graph\r\n", "x\r\n", "bob@contoso.example")); err != nil {
		t.Fatal(err)
	}
	got := r.w.Graph.Messages()
	if len(got) != 1 || got[0].Via != "draft" || got[0].Subject != "big to Graph" || r.w.Graph.Requests("sendMail") != 1 {
		t.Fatalf("Graph got %+v after a 413 from sendMail", got)
	}
}

func TestRewriteRecipients(t *testing.T) {
	for _, tc := range []struct {
		header   string
		envelope []string
		want     string
	}{
		{"Subject: x\r\nTo: a@x.example\r\n\r\n", []string{"a@x.example"}, "Subject: x\r\nTo: <a@x.example>\r\n\r\n"},
		{"To: A <a@x.example>,\r\n B <b@x.example>\r\nSubject: x\r\n\r\n", []string{"b@x.example", "c@x.example"},
			"To: \"B\" <b@x.example>\r\nSubject: x\r\n" + "Bcc: <c@x.example>\r\n\r\n"},
		{"To: undisclosed-recipients:;\r\nResent-To: evil@y.example\r\n\r\n", []string{"a@x.example"}, "Bcc: <a@x.example>\r\n\r\n"},
		{"To: not an address list\r\n\r\n", []string{"a@x.example"}, "Bcc: <a@x.example>\r\n\r\n"},
		{"To: a@x.example\r\nCc: A@X.example\r\n\r\n", []string{"a@x.example"}, "To: <a@x.example>\r\n\r\n"},
	} {
		h, _, err := header.Read(strings.NewReader(tc.header))
		if err != nil {
			t.Fatal(err)
		}
		got := rewriteRecipients(h, tc.envelope)
		if string(got.header) != tc.want {
			t.Errorf("%q with envelope %v:\n got %q\nwant %q", tc.header, tc.envelope, got.header, tc.want)
		}
	}
}
