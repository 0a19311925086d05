package bridge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// TokenSource gives an access token for a tenant; *tokenstore.Store is one.
type TokenSource interface {
	Token(ctx context.Context, tenant string) (tokenstore.Token, error)
}

// Route is where one tenant's mail goes.
type Route struct {
	// SMTPHost is host:port, e.g. smtp.office365.com:587.
	SMTPHost string
	// RootCAs replaces the system trust store for this host (sandbox
	// mode). Nil in production: the system roots, which honour
	// SSL_CERT_FILE, verify Exchange's certificate.
	RootCAs *x509.CertPool
	// MaxConnections and MaxPerMinute are the per-mailbox limits (0:
	// Exchange Online's 3 connections; no rate limit).
	MaxConnections int
	MaxPerMinute   int
}

// UpstreamObserver is told about each submission; metrics implement it.
type UpstreamObserver interface {
	// UpstreamStage reports how long a step took: token, connect
	// (dial, greeting, STARTTLS, EHLO), auth, mail, rcpt (all
	// recipients), data (DATA to the final reply).
	UpstreamStage(tenant, stage string, took time.Duration)
	// UpstreamReply reports Exchange's final reply to an attempt.
	UpstreamReply(tenant string, code int, enhanced [3]int)
	// UpstreamError reports an attempt that ended without a reply, at
	// stage connect, auth, mail, rcpt or data.
	UpstreamError(tenant, stage string)
}

type nopUpstreamObserver struct{}

func (nopUpstreamObserver) UpstreamStage(string, string, time.Duration) {}
func (nopUpstreamObserver) UpstreamReply(string, int, [3]int)           {}
func (nopUpstreamObserver) UpstreamError(string, string)                {}

// Upstream submits messages to Exchange Online: STARTTLS (mandatory, the
// certificate verified), AUTH XOAUTH2 as the device's mailbox, then MAIL,
// RCPT and a streamed DATA. It keeps each mailbox within its route's
// limits, and reuses a mailbox's connections for its next messages (RSET
// between them) until they idle out or their token nears expiry.
type Upstream struct {
	Tokens   TokenSource
	Routes   map[string]Route // by tenant name; SetRoutes replaces them
	Hostname string           // the EHLO name
	Observer UpstreamObserver // nil: nobody listens

	mu    sync.Mutex
	pools map[[2]string]*mailboxPool // by tenant and mailbox
}

func (u *Upstream) observer() UpstreamObserver {
	if u.Observer == nil {
		return nopUpstreamObserver{}
	}
	return u.Observer
}

// SetRoutes replaces the routes (a config reload). Mailboxes of a tenant
// whose limits changed get the new limits at once; idle connections to a
// tenant whose host or trust changed are closed, so that the next message
// goes to the new host. Submissions in progress finish where they are.
func (u *Upstream) SetRoutes(routes map[string]Route) {
	type change struct {
		p *mailboxPool
		r Route
	}
	var (
		stale   []*mailboxPool
		changed []change
	)
	u.mu.Lock()
	old := u.Routes
	u.Routes = routes
	for k, p := range u.pools {
		r, ok := routes[k[0]]
		if !ok || r.SMTPHost != old[k[0]].SMTPHost || !r.RootCAs.Equal(old[k[0]].RootCAs) {
			stale = append(stale, p)
			delete(u.pools, k)
			continue
		}
		changed = append(changed, change{p, r})
	}
	u.mu.Unlock()
	// Outside u.mu: closing connections talks to Exchange.
	for _, c := range changed {
		c.p.setLimits(c.r.MaxConnections, c.r.MaxPerMinute)
	}
	for _, p := range stale {
		// Waiters and submissions in flight on a stale pool finish
		// there; its idle connections close now.
		p.close()
	}
}

// Connections counts the connections to Exchange open or being opened,
// per tenant.
func (u *Upstream) Connections() map[string]int {
	u.mu.Lock()
	pools := make(map[[2]string]*mailboxPool, len(u.pools))
	for k, p := range u.pools {
		pools[k] = p
	}
	u.mu.Unlock()
	out := map[string]int{}
	for k, p := range pools {
		out[k[0]] += p.openCount()
	}
	return out
}

// pool returns the mailbox's pool; u.mu is held.
func (u *Upstream) pool(tenant, mailbox string, r Route) *mailboxPool {
	if u.pools == nil {
		u.pools = map[[2]string]*mailboxPool{}
	}
	k := [2]string{tenant, strings.ToLower(mailbox)}
	p := u.pools[k]
	if p == nil {
		p = newMailboxPool(r.MaxConnections, r.MaxPerMinute)
		u.pools[k] = p
	}
	return p
}

// Close closes the idle connections; submissions after it fail.
func (u *Upstream) Close() {
	u.mu.Lock()
	pools := u.pools
	u.pools = nil
	u.mu.Unlock()
	for _, p := range pools {
		p.close()
	}
}

// microsoftSMTPHosts are Exchange Online's SMTP AUTH submission endpoints
// in the public and national clouds.
var microsoftSMTPHosts = map[string]bool{
	"smtp.office365.com":      true,
	"smtp-mail.outlook.com":   true,
	"smtp.office365.us":       true, // GCC High, DoD
	"smtp.partner.outlook.cn": true, // operated by 21Vianet
}

// IsMicrosoftSMTPHost reports whether an smtp_host (host:port) names a
// known Exchange Online endpoint.
func IsMicrosoftSMTPHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	return microsoftSMTPHosts[strings.ToLower(strings.TrimSuffix(host, "."))]
}

// Upstream timeouts; tests shorten them.
var (
	upstreamDialTimeout = 30 * time.Second
	// upstreamConnectTimeout bounds the dial, greeting, STARTTLS and
	// EHLO: an Exchange front end that accepts and then hangs must not
	// hold a mailbox's connection slot for the whole submission timeout.
	upstreamConnectTimeout = time.Minute
	// upstreamTimeout bounds a whole submission when the caller's context
	// has no deadline: long enough for a 35 MB message on a slow line.
	upstreamTimeout = 10 * time.Minute
)

// Stages of a submission, in UpstreamError.Stage.
const (
	StageConnect  = "connect"
	StageStartTLS = "starttls"
	StageAuth     = "auth"
	StageMail     = "mail"
	StageRcpt     = "rcpt"
	StageData     = "data"
)

// UpstreamError is a failed submission, with Exchange's reply when there
// was one.
type UpstreamError struct {
	Host      string
	Stage     string
	Code      int               // SMTP reply code; 0 for network failures
	Enhanced  smtp.EnhancedCode // Exchange's enhanced status code, if any
	Message   string            // Exchange's reply text
	Recipient string            // the recipient refused, at StageRcpt
	// Temporary means the device may retry: 4xx replies, network and TLS
	// failures, and Exchange refusing the bridge's own login (a tenant
	// set-up problem an admin fixes, not a fault of the message).
	Temporary bool
	Err       error // the network or TLS error, if any
}

func (e *UpstreamError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "exchange %s at %s", e.Host, e.Stage)
	if e.Recipient != "" {
		fmt.Fprintf(&b, " <%s>", e.Recipient)
	}
	if e.Code != 0 {
		fmt.Fprintf(&b, ": %d", e.Code)
		if e.Enhanced != smtp.NoEnhancedCode && e.Enhanced != smtp.EnhancedCodeNotSet {
			fmt.Fprintf(&b, " %d.%d.%d", e.Enhanced[0], e.Enhanced[1], e.Enhanced[2])
		}
		b.WriteString(" " + e.Message)
	} else if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

func (e *UpstreamError) Unwrap() error { return e.Err }

// SourceError is a failure to read the message from the device (it went
// away, or sent more than the size limit). The submission was aborted
// before the final dot, so Exchange took nothing.
type SourceError struct{ Err error }

func (e *SourceError) Error() string { return "reading message from device: " + e.Err.Error() }
func (e *SourceError) Unwrap() error { return e.Err }

// Deliver implements Deliverer.
func (u *Upstream) Deliver(ctx context.Context, m *Message) (Receipt, error) {
	u.mu.Lock()
	route, ok := u.Routes[m.Tenant]
	var p *mailboxPool
	if ok {
		p = u.pool(m.Tenant, m.Mailbox, route)
	}
	u.mu.Unlock()
	if !ok {
		return Receipt{}, fmt.Errorf("no route for tenant %q", m.Tenant)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, upstreamTimeout)
		defer cancel()
	}
	s := &submission{host: route.SMTPHost, tenant: m.Tenant, obs: u.observer()}
	uc, err := p.acquire(ctx)
	if err != nil {
		return Receipt{}, &UpstreamError{Host: route.SMTPHost, Stage: StageConnect, Err: err, Temporary: true}
	}
	keep := false
	defer func() { p.release(uc, keep) }()

	if uc != nil && !uc.fresh(time.Now()) {
		uc.quit()
		uc = nil
	}
	if uc != nil {
		// A reused connection may have been closed by Exchange while it
		// idled; RSET finds out before anything of the message is sent.
		if err := uc.c.Reset(); err != nil {
			uc.c.Close()
			uc = nil
		}
	}
	if uc == nil {
		if uc, err = u.open(ctx, s, route, m.Tenant, m.Mailbox); err != nil {
			s.report(Receipt{}, err)
			return Receipt{}, err
		}
	}
	c := uc.c
	// Closing the connection is how a submission is aborted, on
	// cancellation as on a source error: without the final dot Exchange
	// discards what it has.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	receipt, err := s.send(c, m)
	// The connection is kept for the next message unless it broke, was
	// closed by cancellation, or Exchange is closing it (421).
	keep = stop() && reusable(err)
	s.report(receipt, err)
	return receipt, err
}

// report tells the observer how the attempt ended.
func (s *submission) report(receipt Receipt, err error) {
	var ue *UpstreamError
	switch {
	case err == nil:
		s.obs.UpstreamReply(s.tenant, 250, receipt.Enhanced)
	case errors.As(err, &ue) && ue.Code != 0:
		s.obs.UpstreamReply(s.tenant, ue.Code, ue.Enhanced)
	case errors.As(err, &ue):
		stage := ue.Stage
		if stage == StageStartTLS {
			stage = StageConnect
		}
		s.obs.UpstreamError(s.tenant, stage)
	}
}

// timed runs f and reports its duration as stage.
func (s *submission) timed(stage string, f func() error) error {
	start := time.Now()
	err := f()
	s.obs.UpstreamStage(s.tenant, stage, time.Since(start))
	return err
}

// open dials Exchange and logs in as mailbox. The token comes first: a
// tenant whose token fails costs no connection.
func (u *Upstream) open(ctx context.Context, s *submission, route Route, tenant, mailbox string) (*upConn, error) {
	var tok tokenstore.Token
	err := s.timed("token", func() (err error) {
		tok, err = u.Tokens.Token(ctx, tenant)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("token for %s: %w", mailbox, err)
	}
	var c *smtp.Client
	if err := s.timed(StageConnect, func() (err error) {
		c, err = s.connect(ctx, route, u.Hostname)
		return err
	}); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := s.timed(StageAuth, func() error {
		return c.Auth(&xoauth2Client{user: mailbox, token: tok.AccessToken})
	}); err != nil {
		c.Close()
		return nil, s.fail(StageAuth, "", err)
	}
	return &upConn{c: c, tokenExpires: tok.ExpiresOn}, nil
}

// send runs one transaction on an authenticated connection.
func (s *submission) send(c *smtp.Client, m *Message) (Receipt, error) {
	var opts *smtp.MailOptions
	if m.Size > 0 {
		opts = &smtp.MailOptions{Size: m.Size}
	}
	if err := s.timed(StageMail, func() error { return c.Mail(m.From, opts) }); err != nil {
		return Receipt{}, s.fail(StageMail, "", err)
	}
	var refused string
	if err := s.timed(StageRcpt, func() error {
		for _, to := range m.To {
			// One refused recipient fails the message: the device can
			// only get one reply for it, and a partial delivery it
			// cannot see would lose mail silently.
			if err := c.Rcpt(to, nil); err != nil {
				refused = to
				return err
			}
		}
		return nil
	}); err != nil {
		return Receipt{}, s.fail(StageRcpt, refused, err)
	}
	var receipt Receipt
	err := s.timed(StageData, func() error {
		w, err := c.Data()
		if err != nil {
			return s.fail(StageData, "", err)
		}
		src := &SourceReader{R: m.Body}
		if _, err := io.Copy(w, src); err != nil {
			c.Close()
			if src.Err != nil {
				return &SourceError{Err: src.Err}
			}
			return s.fail(StageData, "", err)
		}
		resp, err := w.CloseWithResponse()
		if err != nil {
			return s.fail(StageData, "", err)
		}
		receipt = Receipt{Reply: resp.StatusText, QueueID: queueID(resp.StatusText), Enhanced: enhancedOf(resp.StatusText)}
		return nil
	})
	return receipt, err
}

// enhancedOf reads the enhanced status code at the start of a reply text,
// e.g. "2.0.0 OK <id>"; 2.0.0 when there is none.
func enhancedOf(text string) [3]int {
	var e [3]int
	if n, err := fmt.Sscanf(text, "%d.%d.%d", &e[0], &e[1], &e[2]); err != nil || n != 3 {
		return [3]int{2, 0, 0}
	}
	return e
}

// reusable says whether a connection is still good after err: Exchange
// answered (other than 421, which closes the connection) and nothing
// broke.
func reusable(err error) bool {
	if err == nil {
		return true
	}
	var ue *UpstreamError
	return errors.As(err, &ue) && ue.Code != 0 && ue.Code != 421
}

// submission is one attempt to hand a message to Exchange.
type submission struct {
	host   string
	tenant string
	obs    UpstreamObserver
}

func (s *submission) connect(ctx context.Context, route Route, hostname string) (*smtp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, upstreamConnectTimeout)
	defer cancel()
	d := net.Dialer{Timeout: upstreamDialTimeout}
	conn, err := d.DialContext(ctx, "tcp", route.SMTPHost)
	if err != nil {
		return nil, s.fail(StageConnect, "", err)
	}
	// go-smtp sets its own deadline per command; closing the connection
	// is what ends a wait for a silent server.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	serverName, _, _ := net.SplitHostPort(route.SMTPHost)
	cfg := &tls.Config{ServerName: serverName, RootCAs: route.RootCAs, MinVersion: tls.VersionTLS12}
	// NewClientStartTLS refuses a server that does not offer STARTTLS:
	// the token is never sent in plaintext.
	c, err := smtp.NewClientStartTLS(conn, cfg)
	if err != nil {
		conn.Close()
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return nil, s.fail(StageConnect, "", err)
		}
		return nil, s.fail(StageStartTLS, "", err)
	}
	c.CommandTimeout = 2 * time.Minute
	c.SubmissionTimeout = 5 * time.Minute
	if err := c.Hello(hostname); err != nil {
		c.Close()
		return nil, s.fail(StageStartTLS, "", err)
	}
	// The TLS handshake runs with the first command after STARTTLS; make
	// it happen now (NOOP costs one round trip and, unlike Extension,
	// returns the handshake's error for the log) and check it, before
	// anything secret is written.
	if err := c.Noop(); err != nil {
		c.Close()
		return nil, s.fail(StageStartTLS, "", err)
	}
	if st, ok := c.TLSConnectionState(); !ok || !st.HandshakeComplete {
		c.Close()
		return nil, s.fail(StageStartTLS, "", errors.New("TLS handshake with Exchange did not complete"))
	}
	if !c.SupportsAuth("XOAUTH2") {
		c.Close()
		return nil, s.fail(StageAuth, "", errors.New("server does not offer AUTH XOAUTH2"))
	}
	return c, nil
}

// fail builds an UpstreamError for err at stage.
func (s *submission) fail(stage, rcpt string, err error) error {
	e := &UpstreamError{Host: s.host, Stage: stage, Recipient: rcpt}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e.Code, e.Enhanced, e.Message = se.Code, se.EnhancedCode, cleanText(se.Message)
		// 530/535 mean Exchange does not accept the bridge's login for
		// this mailbox: a set-up problem, not a fault of the message.
		e.Temporary = se.Code/100 == 4 || stage == StageAuth || se.Code == 530 || se.Code == 535
		return e
	}
	e.Err = err
	e.Temporary = true
	return e
}

var queueIDRE = regexp.MustCompile(`<([^<>\s]+)>`)

func queueID(reply string) string {
	if m := queueIDRE.FindStringSubmatch(reply); m != nil {
		return m[1]
	}
	return ""
}

// SourceReader remembers a read error of the message source, so that a
// copy that fails can tell the source's fault (the device went away, the
// spool file could not be read) from the destination's.
type SourceReader struct {
	R   io.Reader
	Err error // the first read error other than io.EOF
}

func (s *SourceReader) Read(p []byte) (int, error) {
	n, err := s.R.Read(p)
	if err != nil && err != io.EOF {
		s.Err = err
	}
	return n, err
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
