// Package smtp is the SMTP transport to Exchange Online: STARTTLS
// (mandatory, the certificate verified), AUTH XOAUTH2 as the device's
// mailbox, then MAIL, RCPT and the body streamed as it is read. It keeps
// each mailbox within the limiter's limits and reuses a mailbox's
// connections for its next messages (RSET between them) until they idle
// out or their token nears expiry. Probe checks the same path step by
// step for doctor.
//
// It never sends a token before TLS is verified, and never logs or puts
// in an error a token or a message body.
package smtp

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/upstream"
	"github.com/smtpbridge/smtpbridge/upstream/egress"
)

// Route is where one tenant's mail goes.
type Route struct {
	// Host is host:port, e.g. smtp.office365.com:587.
	Host string
	// RootCAs replaces the system trust store for this host (sandbox
	// mode, tests). Nil in production: the system roots, which honour
	// SSL_CERT_FILE, verify Exchange's certificate.
	RootCAs *x509.CertPool
	// Egress is the way there: direct, or a proxy's CONNECT tunnel.
	Egress egress.Settings
}

func (r Route) equal(o Route) bool {
	return r.Host == o.Host && r.RootCAs.Equal(o.RootCAs) && r.Egress == o.Egress
}

// Options configure a Transport.
type Options struct {
	Tokens   upstream.TokenSource
	Limiter  upstream.Limiter
	Routes   map[string]Route // by tenant name
	Hostname string           // the EHLO name
	Observer upstream.Observer
}

// Transport submits messages to Exchange Online over SMTP.
type Transport struct {
	tokens   upstream.TokenSource
	limiter  upstream.Limiter
	hostname string
	obs      upstream.Observer

	mu     sync.Mutex
	routes map[string]Route
	pools  map[upstream.Mailbox]*pool
}

var _ upstream.Transport = (*Transport)(nil)

// New returns a transport; it connects to nothing until a message comes.
func New(o Options) *Transport {
	if o.Observer == nil {
		o.Observer = upstream.NopObserver{}
	}
	return &Transport{tokens: o.Tokens, limiter: o.Limiter, hostname: o.Hostname, obs: o.Observer,
		routes: o.Routes, pools: map[upstream.Mailbox]*pool{}}
}

// SetRoutes replaces the routes (a config reload). Idle connections to a
// tenant whose host or trust changed, or that is gone, close now, so that
// the next message goes to the new host; submissions in progress finish
// where they are.
func (t *Transport) SetRoutes(routes map[string]Route) {
	var stale []*pool
	t.mu.Lock()
	old := t.routes
	t.routes = routes
	for mb, p := range t.pools {
		if r, ok := routes[mb.Tenant]; !ok || !r.equal(old[mb.Tenant]) {
			stale = append(stale, p)
			delete(t.pools, mb)
		}
	}
	t.mu.Unlock()
	// Outside t.mu: closing connections talks to Exchange.
	for _, p := range stale {
		p.close()
	}
}

// Connections counts the connections to Exchange open or being opened,
// per tenant.
func (t *Transport) Connections() map[string]int {
	t.mu.Lock()
	pools := make(map[upstream.Mailbox]*pool, len(t.pools))
	for mb, p := range t.pools {
		pools[mb] = p
	}
	t.mu.Unlock()
	out := map[string]int{}
	for mb, p := range pools {
		out[mb.Tenant] += p.openCount()
	}
	return out
}

// Close closes the idle connections; submissions after it fail.
func (t *Transport) Close() {
	t.mu.Lock()
	pools := t.pools
	t.pools = map[upstream.Mailbox]*pool{}
	t.routes = nil
	t.mu.Unlock()
	for _, p := range pools {
		p.close()
	}
}

// route returns the tenant's route and the mailbox's pool.
func (t *Transport) route(m *message.Message) (Route, *pool, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.routes[m.Tenant]
	if !ok {
		return Route{}, nil, false
	}
	mb := upstream.MailboxOf(m.Tenant, m.Mailbox)
	p := t.pools[mb]
	if p == nil {
		p = newPool(mb, t.limiter)
		t.pools[mb] = p
	}
	return r, p, true
}

// microsoftHosts are Exchange Online's SMTP AUTH submission endpoints in
// the public and national clouds.
var microsoftHosts = map[string]bool{
	"smtp.office365.com":      true,
	"smtp-mail.outlook.com":   true,
	"smtp.office365.us":       true, // GCC High, DoD
	"smtp.partner.outlook.cn": true, // operated by 21Vianet
}

// IsMicrosoftHost reports whether an smtp_host (host:port) names a known
// Exchange Online endpoint.
func IsMicrosoftHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	return microsoftHosts[strings.ToLower(strings.TrimSuffix(host, "."))]
}

// Timeouts; tests shorten them.
var (
	dialTimeout = 30 * time.Second
	// connectTimeout bounds the dial, greeting, STARTTLS and EHLO: an
	// Exchange front end that accepts and then hangs must not hold a
	// mailbox's connection slot for the whole submission.
	connectTimeout = time.Minute
	// submitTimeout bounds one submission once it has its connection
	// slot: long enough for a 35 MB message on a slow line. The wait for
	// the slot is the caller's to bound.
	submitTimeout = 10 * time.Minute
)

// Deliver implements upstream.Transport.
func (t *Transport) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	route, p, ok := t.route(m)
	if !ok {
		return message.Receipt{}, &message.Error{Class: message.Setup, Stage: message.StageConfig,
			Err: fmt.Errorf("no route to Exchange for tenant %q", m.Tenant)}
	}
	s := &submission{host: route.Host, tenant: m.Tenant, obs: t.obs}
	uc, err := p.get(ctx)
	if err != nil {
		return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageConnect, Host: route.Host, Err: err}
	}
	keep := false
	defer func() { p.put(uc, keep) }()
	if uc.c != nil && !uc.fresh(time.Now()) {
		uc.quit() // its token is about to expire: log in afresh
	}
	reused := uc.c != nil
	ctx, cancel := context.WithTimeout(ctx, submitTimeout)
	defer cancel()
	// ensureOpen opens the connection if it has none (a first one, or
	// after a stale reused one closed).
	ensureOpen := func() error {
		if uc.c != nil {
			return nil
		}
		err := t.open(ctx, s, uc, route, m.Tenant, m.Mailbox)
		if err != nil {
			s.report(message.Receipt{}, err)
		}
		return err
	}
	if err := ensureOpen(); err != nil {
		return message.Receipt{}, err
	}
	// Counted last, on an open connection, so that the count's time is
	// the MAIL's, as Exchange sees it: counted before the wait for a
	// connection, a minute's 30 starts could reach Exchange closer
	// together than that.
	done, err := t.limiter.Submit(ctx, p.mb, len(m.To))
	var quota *message.Error
	switch {
	case errors.As(err, &quota):
		keep = true
		return message.Receipt{}, quota
	case err != nil:
		keep = true
		return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageConnect, Host: route.Host, Err: err}
	}
	var receipt message.Receipt
	defer func() { done(len(receipt.Accepted)) }()

	body := newBodySender(m)
	defer body.release()
	for {
		if err := ensureOpen(); err != nil {
			return message.Receipt{}, err
		}
		c := uc.c
		// Closing the connection is how a submission is aborted, on
		// cancellation as on a source error: without the final chunk or
		// dot Exchange discards what it has.
		stop := context.AfterFunc(ctx, func() { c.close() })
		// A slot shared with other replicas that lapsed (Redis out of
		// reach past the lease's TTL) may be another's already: the
		// connection goes at once.
		if g, ok := uc.lease.(goner); ok {
			sub, endSub := context.WithCancel(ctx)
			go func() {
				select {
				case <-g.Gone():
					c.close()
				case <-sub.Done():
				}
			}()
			defer endSub()
		}
		receipt, err = s.send(c, m, body, reused)
		if errors.Is(err, errStale) && reused {
			// Exchange closed the connection while it idled, before
			// anything of this message: again on a new one.
			stop()
			c.close()
			uc.c, reused = nil, false
			continue
		}
		// The connection is kept for the next message unless it broke,
		// was closed by cancellation, or Exchange is closing it (421).
		keep = stop() && reusable(err)
		s.report(receipt, err)
		return receipt, err
	}
}

// goner is a lease that can lapse while held (shared between replicas).
type goner interface{ Gone() <-chan struct{} }

// open gets a token and opens an authenticated connection into uc. The
// token comes first: a tenant whose token fails costs no connection.
func (t *Transport) open(ctx context.Context, s *submission, uc *conn, route Route, tenant, mailbox string) error {
	var tok string
	var expires time.Time
	err := s.timed(string(message.StageToken), func() error {
		tk, err := t.tokens.Token(ctx, tenant, mailbox)
		tok, expires = tk.AccessToken, tk.ExpiresOn
		return err
	})
	if err != nil {
		return upstream.TokenError(err)
	}
	var c *client
	if err := s.timed(string(message.StageConnect), func() (err error) {
		c, err = s.dial(ctx, route, t.hostname)
		return err
	}); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.close() })
	defer stop()
	if err := s.timed(string(message.StageAuth), func() error {
		return c.auth(mailbox, tok)
	}); err != nil {
		c.close()
		return s.fail(message.StageAuth, "", err)
	}
	uc.c, uc.tokenExpires = c, expires
	return nil
}
