package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// submission is one attempt to hand a message to Exchange.
type submission struct {
	host   string
	tenant string
	obs    upstream.Observer
}

// report tells the observer how the attempt ended.
func (s *submission) report(receipt message.Receipt, err error) {
	var e *message.Error
	switch {
	case err == nil:
		s.obs.UpstreamReply(s.tenant, receipt.Reply.Code, receipt.Reply.Enhanced)
	case !errors.As(err, &e):
	case e.Reply.Code != 0:
		s.obs.UpstreamReply(s.tenant, e.Reply.Code, e.Reply.Enhanced)
	case e.Stage == message.StageToken || e.Stage == message.StageSource:
		// Not Exchange's doing: counted by the token metrics, or the
		// spool's.
	default:
		stage := e.Stage
		if stage == message.StageStartTLS {
			stage = message.StageConnect
		}
		s.obs.UpstreamError(s.tenant, string(stage))
	}
}

// timed runs f and reports its duration as stage.
func (s *submission) timed(stage string, f func() error) error {
	start := time.Now()
	err := f()
	s.obs.UpstreamStage(s.tenant, stage, time.Since(start))
	return err
}

// connect dials Exchange, starts TLS and checks that XOAUTH2 is offered.
func (s *submission) connect(ctx context.Context, route Route, hostname string) (*gosmtp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", route.Host)
	if err != nil {
		return nil, s.fail(message.StageConnect, "", err)
	}
	// go-smtp sets its own deadline per command; closing the connection
	// is what ends a wait for a silent server.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	serverName, _, _ := net.SplitHostPort(route.Host)
	cfg := &tls.Config{ServerName: serverName, RootCAs: route.RootCAs, MinVersion: tls.VersionTLS12}
	// NewClientStartTLS refuses a server that does not offer STARTTLS:
	// the token is never sent in plaintext.
	c, err := gosmtp.NewClientStartTLS(conn, cfg)
	if err != nil {
		conn.Close()
		var se *gosmtp.SMTPError
		if errors.As(err, &se) {
			return nil, s.fail(message.StageConnect, "", err)
		}
		return nil, s.fail(message.StageStartTLS, "", err)
	}
	c.CommandTimeout = 2 * time.Minute
	c.SubmissionTimeout = 5 * time.Minute
	if err := c.Hello(hostname); err != nil {
		c.Close()
		return nil, s.fail(message.StageStartTLS, "", err)
	}
	// The TLS handshake runs with the first command after STARTTLS; make
	// it happen now (NOOP costs one round trip and, unlike Extension,
	// returns the handshake's error for the log) and check it, before
	// anything secret is written.
	if err := c.Noop(); err != nil {
		c.Close()
		return nil, s.fail(message.StageStartTLS, "", err)
	}
	if st, ok := c.TLSConnectionState(); !ok || !st.HandshakeComplete {
		c.Close()
		return nil, s.fail(message.StageStartTLS, "", errors.New("TLS handshake with Exchange did not complete"))
	}
	if !c.SupportsAuth("XOAUTH2") {
		c.Close()
		return nil, s.fail(message.StageAuth, "", errors.New("server does not offer AUTH XOAUTH2"))
	}
	return c, nil
}

// send runs one transaction on an authenticated connection. Each
// recipient Exchange refuses gets its own outcome in the receipt; the
// message goes to those it accepted, unless m.AllRecipients.
func (s *submission) send(c *gosmtp.Client, m *message.Message) (message.Receipt, error) {
	opts := &gosmtp.MailOptions{Size: m.Size}
	if m.DSN != nil {
		opts.Return, opts.EnvelopeID = gosmtp.DSNReturn(m.DSN.Ret), m.DSN.EnvID
	}
	if err := s.timed(string(message.StageMail), func() error { return c.Mail(m.From, opts) }); err != nil {
		return message.Receipt{}, s.fail(message.StageMail, "", err)
	}
	var receipt message.Receipt
	if err := s.timed(string(message.StageRcpt), func() error {
		for _, to := range m.To {
			err := c.Rcpt(to, rcptOptions(m.DSN.For(to)))
			if err == nil {
				receipt.Accepted = append(receipt.Accepted, to)
				continue
			}
			e := s.fail(message.StageRcpt, to, err)
			if e.Class == message.Broken {
				return e
			}
			receipt.Refused = append(receipt.Refused, e)
		}
		return nil
	}); err != nil {
		return message.Receipt{}, err
	}
	if len(receipt.Accepted) == 0 || m.AllRecipients && len(receipt.Refused) > 0 {
		// Nothing goes: RSET ends the transaction and keeps the
		// connection for the next message.
		if err := c.Reset(); err != nil {
			c.Close()
		}
		return message.Receipt{Refused: receipt.Refused}, firstRefusal(receipt.Refused)
	}
	err := s.timed(string(message.StageData), func() error {
		w, err := c.Data()
		if err != nil {
			return s.fail(message.StageData, "", err)
		}
		src := &message.SourceReader{R: m.Body}
		if _, err := io.Copy(w, src); err != nil {
			c.Close()
			if src.Err != nil {
				return &message.Error{Class: message.Temporary, Stage: message.StageSource, Err: src.Err}
			}
			return s.fail(message.StageData, "", err)
		}
		resp, err := w.CloseWithResponse()
		if err != nil {
			return s.fail(message.StageData, "", err)
		}
		receipt.Reply, receipt.UpstreamID = successReply(resp.StatusText), queueID(resp.StatusText)
		return nil
	})
	if err != nil {
		return message.Receipt{}, err
	}
	return receipt, nil
}

// rcptOptions are a recipient's DSN parameters for go-smtp, which sends
// them when Exchange offers DSN.
func rcptOptions(d message.RcptDSN) *gosmtp.RcptOptions {
	o := &gosmtp.RcptOptions{OriginalRecipientType: gosmtp.DSNAddressType(d.ORcptType), OriginalRecipient: d.ORcpt}
	for _, n := range d.Notify {
		o.Notify = append(o.Notify, gosmtp.DSNNotify(n))
	}
	return o
}

// firstRefusal is the error of a message no recipient took: the first
// refusal worth another attempt, else the first.
func firstRefusal(refused []*message.Error) *message.Error {
	for _, e := range refused {
		if !e.Permanent() {
			return e
		}
	}
	return refused[0]
}

// fail turns err at stage into a *message.Error: Exchange's reply,
// classified, or a broken connection.
func (s *submission) fail(stage message.Stage, rcpt string, err error) *message.Error {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		enh := [3]int(se.EnhancedCode)
		if se.EnhancedCode == gosmtp.NoEnhancedCode {
			enh = [3]int{}
		}
		return message.Classify(s.host, stage, message.Reply{Code: se.Code, Enhanced: enh, Text: message.CleanText(se.Message)}, rcpt)
	}
	return &message.Error{Class: message.Broken, Stage: stage, Host: s.host, Recipient: rcpt, Err: err}
}

// reusable says whether a connection is still good after err.
func reusable(err error) bool {
	if err == nil {
		return true
	}
	var e *message.Error
	return errors.As(err, &e) && e.ConnectionUsable()
}

// successReply reads Exchange's final 250, e.g. "2.0.0 OK <id> [...]".
func successReply(text string) message.Reply {
	r := message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: message.CleanText(text)}
	var e [3]int
	if n, err := fmt.Sscanf(text, "%d.%d.%d", &e[0], &e[1], &e[2]); err == nil && n == 3 {
		r.Enhanced = e
		if _, rest, ok := strings.Cut(r.Text, " "); ok {
			r.Text = rest
		} else {
			r.Text = ""
		}
	}
	return r
}

var queueIDRE = regexp.MustCompile(`<([^<>\s]+)>`)

func queueID(reply string) string {
	if m := queueIDRE.FindStringSubmatch(reply); m != nil {
		return m[1]
	}
	return ""
}

// xoauth2Client is the XOAUTH2 SASL client. The initial response is sent
// after Exchange's 334, not on the AUTH line: tokens run to several KB and
// would exceed line limits (EXCHANGE.md).
type xoauth2Client struct {
	user, token string
	step        int
}

func (x *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", nil, nil
}

func (x *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	x.step++
	switch x.step {
	case 1:
		return []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
	case 2:
		// A second challenge is the server's JSON error report; the
		// protocol wants an empty response, after which it sends the 535.
		return []byte{}, nil
	}
	// go-sasl ends the exchange as a success when Next returns nil, nil.
	return nil, errors.New("xoauth2: unexpected challenge")
}

var _ sasl.Client = (*xoauth2Client)(nil)
