package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/smtpbridge/smtpbridge/message"
)

// client is one connection to Exchange, spoken on net/textproto rather
// than go-smtp's client, which waits for each reply before the next
// command. With PIPELINING (RFC 2920) and CHUNKING (RFC 3030), which
// Exchange Online offers, a message on a warm connection goes in one
// flight (RSET, MAIL, the RCPTs and BDAT LAST with the body) and costs
// one round trip; with DATA it costs two; a server that offers neither
// gets one command at a time.
type client struct {
	conn net.Conn
	r    *textproto.Reader
	w    *bufio.Writer
	ext  map[string]string // EHLO keywords, upper case, and their parameters
	// sent counts the commands written whose replies are still to read.
	sent int
}

// Reply times: a reply to a command, and the final reply to a message,
// which Exchange gives once it has the message safe.
var (
	commandTimeout = 2 * time.Minute
	finalTimeout   = 5 * time.Minute
)

// chunkSize is the most of a body read ahead and sent in one BDAT: a
// message up to it goes in the same flight as its envelope.
const chunkSize = 256 << 10

// ignoredExtensions are EHLO keywords the client acts as if not offered:
// tests reach the fallbacks through it.
var ignoredExtensions []string

// chunks recycles the BDAT buffers: one per submission in flight.
var chunks = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

func newClient(conn net.Conn) *client {
	return &client{conn: conn, r: textproto.NewReader(bufio.NewReader(conn)), w: bufio.NewWriterSize(conn, 16<<10)}
}

// replyError is a reply that is not the one a command wanted.
type replyError struct{ message.Reply }

func (e *replyError) Error() string {
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.Enhanced[0], e.Enhanced[1], e.Enhanced[2], e.Text)
}

// has says whether the server offered an extension.
func (c *client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// write queues a command line.
func (c *client) write(format string, args ...any) error {
	// The buffer may go out now, when it fills.
	c.conn.SetWriteDeadline(time.Now().Add(commandTimeout))
	c.sent++
	if _, err := fmt.Fprintf(c.w, format, args...); err != nil {
		return err
	}
	_, err := c.w.WriteString("\r\n")
	return err
}

// reply flushes what is written and reads the next reply. A reply whose
// code is not want (want < 10: its first digit) is a *replyError; a
// failure to write or read is returned as it is.
func (c *client) reply(want int, timeout time.Duration) (message.Reply, error) {
	if c.w.Buffered() > 0 {
		c.conn.SetWriteDeadline(time.Now().Add(timeout))
		if err := c.w.Flush(); err != nil {
			return message.Reply{}, err
		}
	}
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	code, text, err := c.r.ReadResponse(0)
	if c.sent > 0 {
		c.sent--
	}
	if err != nil {
		var perr textproto.ProtocolError
		if errors.As(err, &perr) {
			return message.Reply{}, fmt.Errorf("a reply that is not SMTP: %w", err)
		}
		return message.Reply{}, err
	}
	r := parseReply(code, text)
	if want < 10 && code/100 != want || want >= 10 && code != want {
		return r, &replyError{r}
	}
	return r, nil
}

// parseReply splits the enhanced status code (RFC 3463) off each line of
// a reply's text.
func parseReply(code int, text string) message.Reply {
	r := message.Reply{Code: code}
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		first, rest, _ := strings.Cut(l, " ")
		if enh, ok := parseEnhanced(first, code); ok {
			if i == 0 {
				r.Enhanced = enh
			}
			lines[i] = rest
		}
	}
	r.Text = message.CleanText(strings.Join(lines, "\n"))
	return r
}

func parseEnhanced(s string, code int) ([3]int, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return [3]int{}, false
	}
	var e [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return [3]int{}, false
		}
		e[i] = n
	}
	if e[0] != code/100 {
		return [3]int{}, false
	}
	return e, true
}

// hello sends EHLO and records the extensions offered.
func (c *client) hello(name string) error {
	if err := c.write("EHLO %s", name); err != nil {
		return err
	}
	c.conn.SetReadDeadline(time.Now().Add(commandTimeout))
	if err := c.w.Flush(); err != nil {
		return err
	}
	code, text, err := c.r.ReadResponse(250)
	c.sent = 0
	if err != nil {
		var terr *textproto.Error
		if errors.As(err, &terr) {
			return &replyError{parseReply(code, text)}
		}
		return err
	}
	c.ext = map[string]string{}
	lines := strings.Split(text, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	for _, k := range ignoredExtensions {
		delete(c.ext, k)
	}
	return nil
}

// dial connects to Exchange: the greeting, EHLO, STARTTLS with the
// certificate verified, EHLO again; it checks that XOAUTH2 is offered.
// Nothing secret is written before the handshake completes. Failures are
// *message.Error of StageConnect, StageStartTLS or StageAuth.
func (s *submission) dial(ctx context.Context, route Route, hostname string) (*client, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := route.Egress.DialSMTP(ctx, route.Host, dialTimeout)
	if err != nil {
		return nil, s.fail(message.StageConnect, "", err)
	}
	// Closing the connection is what ends a wait for a silent server.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := newClient(conn)
	fail := func(stage message.Stage, err error) (*client, error) {
		conn.Close()
		return nil, s.fail(stage, "", err)
	}
	if _, err := c.reply(220, commandTimeout); err != nil {
		return fail(message.StageConnect, err)
	}
	if err := c.hello(hostname); err != nil {
		return fail(message.StageConnect, err)
	}
	// The token is never sent in plaintext: no STARTTLS, no submission.
	if !c.has("STARTTLS") {
		return fail(message.StageStartTLS, errors.New("server does not offer STARTTLS"))
	}
	if err := c.write("STARTTLS"); err != nil {
		return fail(message.StageStartTLS, err)
	}
	if _, err := c.reply(220, commandTimeout); err != nil {
		return fail(message.StageStartTLS, err)
	}
	if c.r.R.Buffered() > 0 {
		// Bytes after the 220, before TLS: injected by someone on the
		// path (CVE-2011-0411 and its kin), never to be read as TLS's.
		return fail(message.StageStartTLS, errors.New("the server sent data after its 220 to STARTTLS, before TLS began"))
	}
	serverName, _, _ := net.SplitHostPort(route.Host)
	tc := tls.Client(conn, &tls.Config{ServerName: serverName, RootCAs: route.RootCAs, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(message.StageStartTLS, err)
	}
	c = newClient(tc)
	if err := c.hello(hostname); err != nil {
		return fail(message.StageStartTLS, err)
	}
	if !c.offersAuth("XOAUTH2") {
		return fail(message.StageAuth, errors.New("server does not offer AUTH XOAUTH2"))
	}
	return c, nil
}

func (c *client) offersAuth(mech string) bool {
	for _, m := range strings.Fields(c.ext["AUTH"]) {
		if strings.EqualFold(m, mech) {
			return true
		}
	}
	return false
}

// tlsState is the connection's TLS state.
func (c *client) tlsState() (tls.ConnectionState, bool) {
	tc, ok := c.conn.(*tls.Conn)
	if !ok {
		return tls.ConnectionState{}, false
	}
	return tc.ConnectionState(), true
}

// auth logs in with AUTH XOAUTH2. The initial response goes after
// Exchange's 334, not on the AUTH line: tokens run to several KB and
// would exceed line limits (EXCHANGE.md). A second 334 carries the
// server's JSON error report, answered with an empty line, after which
// the server sends its refusal.
func (c *client) auth(user, token string) error {
	if err := c.write("AUTH XOAUTH2"); err != nil {
		return err
	}
	if _, err := c.reply(334, commandTimeout); err != nil {
		return err
	}
	resp := base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
	c.sent++
	c.w.WriteString(resp)
	c.w.WriteString("\r\n")
	r, err := c.reply(235, commandTimeout)
	if err != nil && r.Code == 334 {
		c.sent++
		c.w.WriteString("\r\n")
		_, err = c.reply(235, commandTimeout)
		if err == nil {
			err = errors.New("xoauth2: the server accepted the login after reporting an error")
		}
	}
	return err
}

// quit ends the session politely, so that Exchange frees the mailbox's
// connection slot at once.
func (c *client) quit() {
	if err := c.write("QUIT"); err == nil {
		c.reply(221, 10*time.Second)
	}
	c.conn.Close()
}

func (c *client) close() { c.conn.Close() }

// mailCommand is the MAIL command for m, with the parameters the server
// offers: BODY=8BITMIME, SIZE, SMTPUTF8, and the DSN's RET and ENVID.
func (c *client) mailCommand(m *message.Message) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + m.From + ">")
	if c.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if c.has("SIZE") && m.Size > 0 {
		fmt.Fprintf(&b, " SIZE=%d", m.Size)
	}
	if c.has("SMTPUTF8") && !ascii(m.From, m.To...) {
		b.WriteString(" SMTPUTF8")
	}
	if c.has("DSN") && m.DSN != nil {
		if m.DSN.Ret == "FULL" || m.DSN.Ret == "HDRS" {
			b.WriteString(" RET=" + m.DSN.Ret)
		}
		if m.DSN.EnvID != "" && ascii(m.DSN.EnvID) {
			b.WriteString(" ENVID=" + xtext(m.DSN.EnvID))
		}
	}
	return b.String()
}

// rcptCommand is the RCPT command for to, with its DSN parameters when
// the server offers DSN.
func (c *client) rcptCommand(m *message.Message, to string) string {
	var b strings.Builder
	b.WriteString("RCPT TO:<" + to + ">")
	if !c.has("DSN") {
		return b.String()
	}
	d := m.DSN.For(to)
	if len(d.Notify) > 0 {
		b.WriteString(" NOTIFY=" + strings.Join(d.Notify, ","))
	}
	switch strings.ToLower(d.ORcptType) {
	case "rfc822":
		if d.ORcpt != "" && ascii(d.ORcpt) {
			b.WriteString(" ORCPT=rfc822;" + xtext(d.ORcpt))
		}
	case "utf-8":
		if d.ORcpt != "" {
			b.WriteString(" ORCPT=utf-8;" + utf8AddrText(d.ORcpt, c.has("SMTPUTF8")))
		}
	}
	return b.String()
}

// ascii says whether every string is printable ASCII.
func ascii(s string, more ...string) bool {
	for _, x := range append(more, s) {
		for i := 0; i < len(x); i++ {
			if x[i] < 0x20 || x[i] > 0x7e {
				return false
			}
		}
	}
	return true
}

// xtext encodes s as RFC 3461 xtext: "+", "=" and what is not printable
// ASCII become "+HH".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < '!' || ch > '~' || ch == '+' || ch == '=' {
			fmt.Fprintf(&b, "+%02X", ch)
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

// utf8AddrText encodes an address as RFC 6533's utf-8-addr-unitext
// (with SMTPUTF8) or utf-8-addr-xtext: "\x{HEX}" for "+", "=", "\",
// controls and, without SMTPUTF8, what is not ASCII.
func utf8AddrText(s string, unicode bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == utf8.RuneError, r < '!', r == '+', r == '=', r == '\\', r == 0x7f, r > 0x7f && !unicode:
			fmt.Fprintf(&b, `\x{%X}`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// validLine says whether an address may go on a command line.
func validLine(s string) bool { return !strings.ContainsAny(s, "\r\n") }
