package smtp

import (
	"testing"

	"github.com/smtpbridge/smtpbridge/message"
)

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		code int
		text string
		want message.Reply
	}{
		{250, "2.0.0 OK <id@host> [Hostname=x]", message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "OK <id@host> [Hostname=x]"}},
		{550, "5.1.10 RESOLVER.ADR.RecipientNotFound; not found", message.Reply{Code: 550, Enhanced: [3]int{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound; not found"}},
		{421, "Service not available", message.Reply{Code: 421, Text: "Service not available"}},
		// An enhanced code of another class than the reply's is text.
		{250, "4.0.0 odd", message.Reply{Code: 250, Text: "4.0.0 odd"}},
		{535, "5.7.3 Authentication unsuccessful\n5.7.3 [host]", message.Reply{Code: 535, Enhanced: [3]int{5, 7, 3}, Text: message.CleanText("Authentication unsuccessful\n[host]")}},
	} {
		if got := parseReply(tc.code, tc.text); got != tc.want {
			t.Errorf("parseReply(%d, %q) = %+v, want %+v", tc.code, tc.text, got, tc.want)
		}
	}
}

// DSN parameters go out encoded as RFC 3461 and RFC 6533 say.
func TestCommandParameters(t *testing.T) {
	c := &client{ext: map[string]string{"DSN": "", "SIZE": "157286400", "8BITMIME": "", "SMTPUTF8": ""}}
	m := &message.Message{From: "scan@contoso.example", To: []string{"bob@contoso.example", "añа@contoso.example"}, Size: 1234,
		DSN: &message.DSN{Ret: "HDRS", EnvID: "id+1=2", Rcpt: map[string]message.RcptDSN{
			"bob@contoso.example": {Notify: []string{"SUCCESS", "FAILURE"}, ORcptType: "rfc822", ORcpt: "bob+x@contoso.example"},
			"añа@contoso.example": {Notify: []string{"NEVER"}, ORcptType: "utf-8", ORcpt: "añа+1@contoso.example"},
		}}}
	if got, want := c.mailCommand(m), "MAIL FROM:<scan@contoso.example> BODY=8BITMIME SIZE=1234 SMTPUTF8 RET=HDRS ENVID=id+2B1+3D2"; got != want {
		t.Errorf("MAIL:\n got %s\nwant %s", got, want)
	}
	if got, want := c.rcptCommand(m, "bob@contoso.example"), "RCPT TO:<bob@contoso.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@contoso.example"; got != want {
		t.Errorf("RCPT:\n got %s\nwant %s", got, want)
	}
	if got, want := c.rcptCommand(m, "añа@contoso.example"), `RCPT TO:<añа@contoso.example> NOTIFY=NEVER ORCPT=utf-8;añа\x{2B}1@contoso.example`; got != want {
		t.Errorf("RCPT, UTF-8:\n got %s\nwant %s", got, want)
	}
	c.ext = map[string]string{"DSN": ""}
	if got, want := c.rcptCommand(m, "añа@contoso.example"), `RCPT TO:<añа@contoso.example> NOTIFY=NEVER ORCPT=utf-8;a\x{F1}\x{430}\x{2B}1@contoso.example`; got != want {
		t.Errorf("RCPT, UTF-8 without SMTPUTF8:\n got %s\nwant %s", got, want)
	}
	c.ext = map[string]string{}
	if got, want := c.mailCommand(m)+" | "+c.rcptCommand(m, "bob@contoso.example"), "MAIL FROM:<scan@contoso.example> | RCPT TO:<bob@contoso.example>"; got != want {
		t.Errorf("without extensions:\n got %s\nwant %s", got, want)
	}
}
