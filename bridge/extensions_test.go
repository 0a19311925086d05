package bridge_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
)

// The ESMTP extensions the bridge offers work, and those it does not are
// neither offered nor accepted.
func TestExtensions(t *testing.T) {
	e := newEnv(t, envOptions{limits: bridge.Limits{MaxMessageBytes: 1 << 20, MaxRecipients: 10}})

	t.Run("EHLO", func(t *testing.T) {
		d := dial(t, e.addr("plain"))
		if err := d.Text.PrintfLine("EHLO device.lan"); err != nil {
			t.Fatal(err)
		}
		var caps []string
		for {
			line, err := d.Text.ReadLine()
			if err != nil {
				t.Fatal(err)
			}
			caps = append(caps, line[4:])
			if line[3] == ' ' {
				break
			}
		}
		all := strings.Join(caps, "\n")
		for _, want := range []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING", "AUTH PLAIN LOGIN", "SIZE 1048576", "DSN"} {
			if !strings.Contains(all, want) {
				t.Errorf("EHLO lacks %s:\n%s", want, all)
			}
		}
		for _, not := range []string{"SMTPUTF8", "BINARYMIME", "REQUIRETLS"} {
			if strings.Contains(all, not) {
				t.Errorf("EHLO offers %s, which the bridge does not relay", not)
			}
		}
		d.Cmd("AUTH PLAIN "+plainAuth("mfp", devicePassword), "235")
		d.Cmd("MAIL FROM:<scan@printer.lan> SMTPUTF8", "504 5.5.4")
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<j\xc3\xbcrgen@contoso.example>", "553 5.1.3")
	})

	t.Run("PIPELINING", func(t *testing.T) {
		d := dial(t, e.addr("plain"))
		d.Login("mfp", devicePassword)
		// Everything up to DATA in one write (RFC 2920); the replies come
		// in order.
		d.Conn.Write([]byte("MAIL FROM:<scan@printer.lan>\r\nRCPT TO:<a@contoso.example>\r\nRCPT TO:<eve@evil.example\r\nRCPT TO:<b@contoso.example>\r\nDATA\r\n"))
		for _, want := range []string{"250", "250", "501", "250", "354"} {
			d.Expect(want)
		}
		w := d.Text.DotWriter()
		w.Write([]byte("Subject: pipelined\r\n\r\nx\r\n"))
		w.Close()
		d.Expect("250 2.0.0")
		if m := lastMessage(t, e); len(m.To) != 2 {
			t.Errorf("recipients %v, want a@ and b@", m.To)
		}
	})

	t.Run("8BITMIME", func(t *testing.T) {
		d := dial(t, e.addr("plain"))
		d.Login("mfp", devicePassword)
		d.Cmd("MAIL FROM:<scan@printer.lan> BODY=8BITMIME", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		body := "Gr\xc3\xbc\xc3\x9fe \xe2\x82\xac 100\r\n\xff\xfe raw bytes\r\n"
		d.Data("Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"+body, "250 2.0.0")
		m := lastMessage(t, e)
		if !bytes.HasSuffix(m.Data, []byte("\r\n\r\n"+body)) {
			t.Errorf("8-bit body changed on the way:\n%q", m.Data)
		}
	})

	t.Run("CHUNKING", func(t *testing.T) {
		d := dial(t, e.addr("plain"))
		d.Login("mfp", devicePassword)
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		msg := "From: x@printer.lan\r\nSubject: chunked\r\n\r\n" + strings.Repeat("chunk data.\r\n", 3000)
		// BDAT in uneven pieces, the last marked LAST (RFC 3030); the
		// policy (From rewrite) applies as with DATA.
		for i, n := 0, 0; i < len(msg); i += n {
			n = min(7919, len(msg)-i)
			last := ""
			if i+n == len(msg) {
				last = " LAST"
			}
			fmt.Fprintf(d.Conn, "BDAT %d%s\r\n%s", n, last, msg[i:i+n])
			if last != "" {
				d.Expect("250 2.0.0 OK")
			} else {
				d.Expect("250")
			}
		}
		m := lastMessage(t, e)
		i := bytes.Index(m.Data, []byte("\r\n\r\n"))
		_, wantBody, _ := strings.Cut(msg, "\r\n\r\n")
		if sha256.Sum256(m.Data[i+4:]) != sha256.Sum256([]byte(wantBody)) || !bytes.Contains(m.Data[:i], []byte("From: <scanner@contoso.example>")) {
			t.Errorf("BDAT message arrived as:\n%.300q", m.Data)
		}
		// Too large in BDAT, as in DATA.
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		fmt.Fprintf(d.Conn, "BDAT %d LAST\r\n%s", 2<<20, strings.Repeat("x", 2<<20))
		d.Expect("552 5.3.4")
	})
}

// Error replies are counted: at limits.max_errors the client gets 421 and
// the connection closes.
func TestMaxErrors(t *testing.T) {
	e := newEnv(t, envOptions{limits: bridge.Limits{MaxMessageBytes: 1 << 20, MaxRecipients: 100, MaxErrors: 5}})
	dev := device("mfp", "scanner@contoso.example")
	dev.AllowedRecipients = patterns("contoso.example")
	e.reload([]inventory.Device{dev}, bridge.Limits{}, nil)
	d := dial(t, e.addr("plain"))
	d.Login("mfp", devicePassword)
	d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	for i := 0; i < 4; i++ {
		d.Cmd(fmt.Sprintf("RCPT TO:<r%d@evil.example>", i), "550 5.7.1")
	}
	d.Cmd("RCPT TO:<r5@evil.example>", "421 4.7.0 Too many errors")
	if line, err := d.Text.ReadLine(); err == nil {
		t.Errorf("the connection stayed open: %q", line)
	}
}

// A device's DSN requests (RFC 3461) reach Exchange: scripts send them
// whatever EHLO lists, and refusing them would lose the message.
func TestDSNParameters(t *testing.T) {
	e := newEnv(t, envOptions{})
	d := dial(t, e.addr("plain"))
	d.Login("mfp", devicePassword)
	d.Cmd("MAIL FROM:<scan@printer.lan> RET=HDRS ENVID=abc+2Bdef", "250")
	d.Cmd("RCPT TO:<bob@contoso.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@contoso.example", "250")
	d.Cmd("RCPT TO:<carol@contoso.example> NOTIFY=NEVER", "250")
	d.Cmd("RCPT TO:<dave@contoso.example>", "250")
	d.Data(simpleMessage, "250 2.0.0")
	msgs := e.world.Exchange.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.Ret != "HDRS" || m.EnvID != "abc+def" || m.Notify["bob@contoso.example"] != "SUCCESS,FAILURE" ||
		!strings.EqualFold(m.ORcpt["bob@contoso.example"], "rfc822;bob@contoso.example") || m.Notify["carol@contoso.example"] != "NEVER" ||
		m.Notify["dave@contoso.example"] != "" {
		t.Errorf("Exchange got RET %q ENVID %q NOTIFY %v ORCPT %v", m.Ret, m.EnvID, m.Notify, m.ORcpt)
	}
}
