// Package graph is the Microsoft Graph transport to Exchange Online, for
// tenants that keep SMTP AUTH off: a message up to about 3 MB goes as
// MIME to sendMail in one request; a larger one (a scan with its PDF)
// becomes a draft, its attachments are added whole or through upload
// sessions in chunks, and the draft is sent.
//
// Graph takes a MIME message's recipients from its headers, not from an
// envelope: the headers are rewritten so that the message goes to exactly
// the envelope's recipients, which the bridge checked against the
// device's policy (envelope recipients missing from To and Cc go in Bcc; a
// header recipient outside the envelope is removed).
//
// It speaks HTTP with net/http and golang.org/x/oauth2 rather than the
// generated Graph SDK, which is hundreds of megabytes of code for the four
// endpoints it uses. Bodies stream from the spool: memory stays bounded
// whatever the message's size.
package graph

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/smtpbridge/smtpbridge/internal/header"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/upstream"
	"github.com/smtpbridge/smtpbridge/upstream/egress"
)

// Route is where one tenant's Graph requests go.
type Route struct {
	// Host is graph_host, e.g. https://graph.microsoft.com.
	Host string
	// RootCAs replaces the system roots (sandbox mode, tests).
	RootCAs *x509.CertPool
	// Egress is the way there: a proxy, a proxy's CA.
	Egress egress.Settings
}

// Options configure a Transport.
type Options struct {
	Tokens   upstream.TokenSource // tokens for Graph's scope
	Limiter  upstream.Limiter
	Routes   map[string]Route // by tenant name
	Observer upstream.Observer
	// TempDir holds a large message's attachments while they upload:
	// the spool's directory, on the same disk as the message.
	TempDir string
	// Scratch counts those files against the spool's quota; nil: not
	// counted.
	Scratch Scratch
}

// Transport sends messages through Microsoft Graph.
type Transport struct {
	tokens  upstream.TokenSource
	limiter upstream.Limiter
	obs     upstream.Observer
	tempDir string
	scratch Scratch

	budgets budgets // Graph's own limits, per mailbox

	mu      sync.Mutex
	routes  map[string]Route
	clients map[string]*http.Client // by tenant, without credentials
}

var _ upstream.Transport = (*Transport)(nil)

// New returns a transport.
func New(o Options) *Transport {
	if o.Observer == nil {
		o.Observer = upstream.NopObserver{}
	}
	return &Transport{tokens: o.Tokens, limiter: o.Limiter, obs: o.Observer, tempDir: o.TempDir, scratch: o.Scratch,
		routes: o.Routes, clients: map[string]*http.Client{}}
}

// SetRoutes replaces the routes (a config reload).
func (t *Transport) SetRoutes(routes map[string]Route) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.routes = routes
	for _, c := range t.clients {
		c.CloseIdleConnections()
	}
	t.clients = map[string]*http.Client{}
}

// Close closes idle connections.
func (t *Transport) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.clients {
		c.CloseIdleConnections()
	}
}

// Timeouts; tests shorten them.
var (
	// requestTimeout bounds one request but an upload's chunk.
	requestTimeout = 2 * time.Minute
	// submitTimeout bounds a whole submission once it has its slot.
	submitTimeout = 15 * time.Minute
)

// route returns the tenant's route and its HTTP client (no credentials:
// upload URLs must not get the token).
func (t *Transport) route(tenant string) (Route, *http.Client, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.routes[tenant]
	if !ok {
		return Route{}, nil, false
	}
	c := t.clients[tenant]
	if c == nil {
		tr := r.Egress.Transport(r.RootCAs)
		tr.MaxIdleConnsPerHost = 8
		tr.ResponseHeaderTimeout = requestTimeout
		c = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		t.clients[tenant] = c
	}
	return r, c, true
}

// Deliver implements upstream.Transport.
func (t *Transport) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	route, plain, ok := t.route(m.Tenant)
	if !ok {
		return message.Receipt{}, &message.Error{Class: message.Setup, Stage: message.StageConfig,
			Err: fmt.Errorf("no route to Microsoft Graph for tenant %q", m.Tenant)}
	}
	mb := upstream.MailboxOf(m.Tenant, m.Mailbox)
	// Graph allows 4 requests at once per app and mailbox; the limiter's
	// connection slots keep the mailbox within its limit, shared with
	// the SMTP transport.
	lease, err := t.limiter.Connect(ctx, mb)
	if err != nil {
		return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageConnect, Host: route.Host, Err: err}
	}
	defer lease.Release()
	start := time.Now()
	tok, err := t.tokens.Token(ctx, m.Tenant, m.Mailbox)
	t.obs.UpstreamStage(m.Tenant, string(message.StageToken), time.Since(start))
	if err != nil {
		return message.Receipt{}, upstream.TokenError(err)
	}
	// Counted last, once the request can go at once: the count's time
	// is then the send's, as Exchange sees it.
	done, err := t.limiter.Submit(ctx, mb, len(m.To))
	var quota *message.Error
	switch {
	case errors.As(err, &quota):
		return message.Receipt{}, quota
	case err != nil:
		return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageConnect, Host: route.Host, Err: err}
	}
	var receipt message.Receipt
	defer func() { done(len(receipt.Accepted)) }()
	ctx, cancel := context.WithTimeout(ctx, submitTimeout)
	defer cancel()

	s := &sender{t: t, route: route, plain: plain, m: m, base: route.Host + "/v1.0/users/" + url.PathEscape(m.Mailbox),
		api: authorized(plain, tok.AccessToken)}
	receipt, err = s.send(ctx)
	upstream.Report(t.obs, m.Tenant, receipt, err)
	return receipt, err
}

// authorized is plain with the bearer token on every request, through
// oauth2.Transport.
func authorized(plain *http.Client, token string) *http.Client {
	return &http.Client{Transport: &oauth2.Transport{Base: plain.Transport,
		Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: token, TokenType: "Bearer"})},
		CheckRedirect: plain.CheckRedirect}
}

// sender is one attempt at a message.
type sender struct {
	t     *Transport
	route Route
	plain *http.Client // for upload URLs
	api   *http.Client // with the bearer token
	m     *message.Message
	base  string // .../v1.0/users/{mailbox}
	// ids are the last request's Graph request-id and our
	// client-request-id, for the receipt and the audit log.
	requestID, clientRequestID string
	// status is the last reply's HTTP status.
	status int
}

// sendMailMax is the most a MIME message sent whole to sendMail may be:
// its base64 must stay under Graph's 4 MB request limit.
const sendMailMax = 3_000_000

// send sends the message: whole through sendMail when it fits, else
// through a draft.
func (s *sender) send(ctx context.Context) (message.Receipt, error) {
	src := &message.SourceReader{R: s.m.Body}
	head, br, err := header.Read(src)
	if err != nil {
		return message.Receipt{}, s.sourceErr(src, err)
	}
	rw := rewriteRecipients(head, s.m.To)
	// The start of the message, to tell a small one from a large one.
	first := make([]byte, 0, min(sendMailMax, max(int(s.m.Size), 64<<10)))
	buf := bytes.NewBuffer(first)
	n, err := io.CopyN(buf, br, int64(sendMailMax-len(rw.header)+1))
	if err != nil && err != io.EOF {
		return message.Receipt{}, s.sourceErr(src, err)
	}
	if int(n)+len(rw.header) <= sendMailMax {
		if err := s.budget().take(ctx, 1, 0); err != nil {
			return message.Receipt{}, s.waited(err)
		}
		receipt, err := s.sendMail(ctx, rw.header, buf.Bytes())
		if err == nil || s.status != http.StatusRequestEntityTooLarge {
			return receipt, err
		}
		// Graph measures its 4 MB in its own way: a message it finds too
		// large for sendMail goes as a draft, as a larger one would.
		return s.sendDraft(ctx, rw, bytes.NewReader(buf.Bytes()))
	}
	receipt, err := s.sendDraft(ctx, rw, io.MultiReader(buf, br))
	if err != nil && src.Err != nil {
		return message.Receipt{}, s.sourceErr(src, src.Err)
	}
	return receipt, err
}

// budget is the mailbox's share of Graph's own limits.
func (s *sender) budget() *budget {
	mb := upstream.MailboxOf(s.m.Tenant, s.m.Mailbox)
	return s.t.budgets.of(mb.Tenant + "/" + mb.Address)
}

// waited is the failure of a wait for the mailbox's budget that the
// submission's time ran out on.
func (s *sender) waited(err error) error {
	return &message.Error{Class: message.Throttled, Stage: message.StageConnect, Host: s.route.Host,
		Err: fmt.Errorf("waiting for room within Microsoft Graph's limits for the mailbox: %w", err)}
}

func (s *sender) sourceErr(src *message.SourceReader, err error) error {
	if src.Err != nil {
		err = src.Err
	}
	return &message.Error{Class: message.Temporary, Stage: message.StageSource, Err: err}
}

// accepted is the receipt of a message Graph took.
func (s *sender) accepted(via string) message.Receipt {
	return message.Receipt{Accepted: s.m.To, UpstreamID: s.requestID,
		Reply: message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0},
			Text: fmt.Sprintf("Accepted by Microsoft Graph (%s) request-id=%s client-request-id=%s", via, s.requestID, s.clientRequestID)}}
}

// do sends one request and returns its response, whose body the caller
// closes; a reply that is not want is a *message.Error.
func (s *sender) do(ctx context.Context, c *http.Client, method, u string, body io.Reader, size int64, contentType string, stage message.Stage, want ...int) (*http.Response, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	req, err := http.NewRequestWithContext(rctx, method, u, body)
	if err != nil {
		cancel()
		return nil, &message.Error{Class: message.Permanent, Stage: stage, Err: err}
	}
	if size >= 0 {
		req.ContentLength = size
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	s.clientRequestID = newGUID()
	req.Header.Set("client-request-id", s.clientRequestID)
	req.Header.Set("return-client-request-id", "true")
	start := time.Now()
	resp, err := c.Do(req)
	s.t.obs.UpstreamStage(s.m.Tenant, string(stage), time.Since(start))
	if err != nil {
		cancel()
		return nil, &message.Error{Class: message.Temporary, Stage: stage, Host: s.route.Host, Err: err}
	}
	s.requestID, s.status = resp.Header.Get("request-id"), resp.StatusCode
	resp.Body = cancelOnClose{resp.Body, cancel}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, s.refusal(resp, stage)
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// sendMail posts the whole message, base64-encoded as it goes, to
// sendMail.
func (s *sender) sendMail(ctx context.Context, header, rest []byte) (message.Receipt, error) {
	n := len(header) + len(rest)
	pr, pw := io.Pipe()
	go func() {
		enc := base64.NewEncoder(b64, pw)
		enc.Write(header)
		enc.Write(rest)
		pw.CloseWithError(enc.Close())
	}()
	defer pr.Close()
	resp, err := s.do(ctx, s.api, http.MethodPost, s.base+"/sendMail", pr, int64(b64.EncodedLen(n)), "text/plain", message.StageData, http.StatusAccepted)
	if err != nil {
		return message.Receipt{}, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return s.accepted("sendMail"), nil
}

var b64 = base64.StdEncoding

// tempFile is an attachment decoded to disk while it uploads.
func (s *sender) tempFile() (*os.File, error) {
	dir := s.t.tempDir
	if dir == "" {
		dir = os.TempDir()
	}
	return os.CreateTemp(dir, "graph-attachment-*")
}

func newGUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
