package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

const (
	devicePassword = testenv.DevicePassword
	mailbox        = "scanner@contoso.example"
	bodyCanary     = testenv.BodyCanary
)

// world is the upstream side: the test World (a fake Entra ID and a fake
// Exchange Online) behind a proxy the test can take down or black-hole.
type world struct {
	t     *testing.T
	tw    *fakeworld.World
	exo   *fakeexchange.Server
	proxy *proxy
}

func newWorld(t *testing.T) *world {
	t.Helper()
	tw, std := testenv.Start(t)
	for _, mb := range []string{mailbox, "erp@contoso.example"} {
		tw.AddMailbox(mb, testenv.TenantID, std.Secret)
	}
	return &world{t: t, tw: tw, exo: tw.Exchange, proxy: newProxy(t, tw.Exchange.Addr())}
}

// proxy forwards TCP to the fake Exchange, or refuses connections (down),
// or accepts them and never answers (hang).
type proxy struct {
	ln     net.Listener
	target string
	mode   atomic.Value // "up", "down", "hang"
	mu     sync.Mutex
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.mode.Store("up")
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			switch p.mode.Load() {
			case "down":
				c.Close()
				continue
			case "hang":
				p.track(c)
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.track(c)
			p.track(u)
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

// set changes the mode and cuts the connections open so far.
func (p *proxy) set(mode string) {
	p.mode.Store(mode)
	p.cut()
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// stackOptions shape one bridge instance.
type stackOptions struct {
	mode         string
	syncTimeout  time.Duration
	retryInitial time.Duration
	retryMax     time.Duration
	maxAge       time.Duration
	bounceTo     string
	spoolDir     string
	// quota and day set the mailboxes' recipients per day and its window.
	quota int
	day   time.Duration
}

// stack is one bridge instance (session server, delivery modes, queue,
// transport) on a spool directory.
type stack struct {
	t    *testing.T
	w    *world
	sp   *spool.Spool
	q    *queue.Queue
	path *daemon.Path
	srv  *bridge.Server
	logs *syncbuf.Buffer
	once sync.Once
}

func (w *world) start(o stackOptions) *stack {
	t := w.t
	t.Helper()
	if o.spoolDir == "" {
		o.spoolDir = t.TempDir()
	}
	if o.retryInitial == 0 {
		o.retryInitial = 50 * time.Millisecond
	}
	if o.retryMax == 0 {
		o.retryMax = 200 * time.Millisecond
	}
	if o.maxAge == 0 {
		o.maxAge = time.Hour
	}
	if o.syncTimeout == 0 {
		o.syncTimeout = 5 * time.Second
	}
	sp, err := spool.Open(o.spoolDir)
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{t: t, w: w, sp: sp, logs: &syncbuf.Buffer{}}
	enc, err := passwd.NewBcrypt([]byte(devicePassword), 4)
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := passwd.Parse(enc)
	allowed, _ := mailaddr.ParsePatterns([]string{"erp@contoso.example", "billing@contoso.example"})
	devices := []inventory.Device{
		{Name: "mfp", Username: "mfp", PasswordHash: hash, Tenant: "contoso", Mailbox: mailaddr.MustParse(mailbox), Mode: o.mode},
		{Name: "erp", Username: "erp", PasswordHash: hash, Tenant: "contoso", Mailbox: mailaddr.MustParse("erp@contoso.example"), Mode: o.mode,
			EnforceFrom: true, AllowedFrom: allowed},
	}
	tokens := []tokenstore.Tenant{{Name: "contoso", TenantID: testenv.TenantID, ClientID: testenv.ClientID,
		Credential: secret.NewClientSecret(testenv.ClientSecret), AuthorityHost: w.tw.Entra.URL(),
		Scope: testenv.TokenScope, RootCAs: w.tw.CA.Pool()}}
	// The product's wiring (daemon.Path), with Exchange behind the
	// test's proxy.
	log := zerolog.New(s.logs).Level(zerolog.DebugLevel)
	path, err := daemon.NewPath(daemon.Parts{Hostname: "bridge.test",
		Inventory: inventory.Inventory{Devices: devices, Tenants: []inventory.Tenant{{Name: "contoso", Transport: inventory.TransportSMTP}}},
		Listeners: []bridge.Listener{{Name: "lan", Address: "127.0.0.1:0", TLS: bridge.TLSNone, AllowInsecureAuth: true}},
		Limits:    bridge.Limits{MaxMessageBytes: 36700160, MaxRecipients: 100, CommandTimeout: time.Minute, MaxLineLength: 64 << 10},
		Queue: queue.Settings{RetryInitial: o.retryInitial, RetryMax: o.retryMax, MaxAge: o.maxAge, SyncTimeout: o.syncTimeout,
			BounceTo: func(string) string { return o.bounceTo }},
		Tokens: tokens, GraphTokens: tokens,
		MailboxLimits: map[string]upstream.Limits{"contoso": {Connections: 3, PerMinute: 1000, RecipientsPerDay: o.quota}},
		Routes:        map[string]upsmtp.Route{"contoso": {Host: w.proxy.addr(), RootCAs: w.tw.CA.Pool()}},
	}, daemon.PathOptions{Log: log, Spool: sp, Events: audit.NewLogger(log)})
	if err != nil {
		t.Fatal(err)
	}
	if o.day > 0 {
		path.Limiter.Day = o.day
	}
	s.path, s.q, s.srv = path, path.Queue, path.Server
	if err := path.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	return s
}

// stop shuts the instance down as SIGTERM would.
func (s *stack) stop() {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.path.Stop(ctx)
		testenv.CheckNoSecrets(s.t, "the log", s.logs.String())
	})
}

func (s *stack) addr() string { return s.srv.Addr("lan").String() }

// send submits one message as device user and returns the final reply
// (code and text) or the refusal.
func (s *stack) send(user, from, subject string, to ...string) (int, string) {
	s.t.Helper()
	c, err := smtp.Dial(s.addr())
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, devicePassword)); err != nil {
		s.t.Fatalf("auth: %v", err)
	}
	fail := func(err error) (int, string) {
		if se, ok := err.(*smtp.SMTPError); ok {
			return se.Code, fmt.Sprintf("%d.%d.%d %s", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		}
		s.t.Fatalf("send: %v", err)
		return 0, ""
	}
	if err := c.Mail(from, nil); err != nil {
		return fail(err)
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return fail(err)
		}
	}
	wc, err := c.Data()
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(wc, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@test>\r\n\r\n%s\r\n", from, to[0], subject, subject, bodyCanary)
	resp, err := wc.CloseWithResponse()
	if err != nil {
		return fail(err)
	}
	c.Quit()
	return 250, resp.StatusText
}

// subjects counts the messages Exchange accepted, by subject.
func (w *world) subjects() map[string]int {
	got := map[string]int{}
	for _, m := range w.exo.Messages() {
		got[subjectOf(m.Data)]++
	}
	return got
}

func subjectOf(data []byte) string {
	for _, line := range bytes.Split(data, []byte("\r\n")) {
		if s, ok := bytes.CutPrefix(line, []byte("Subject: ")); ok {
			return string(s)
		}
		if len(line) == 0 {
			break
		}
	}
	return ""
}

func (s *stack) queued() []queue.Item {
	items, err := s.q.List()
	if err != nil {
		s.t.Fatal(err)
	}
	return items
}

func (s *stack) dead() []queue.Item {
	items, err := s.q.Dead()
	if err != nil {
		s.t.Fatal(err)
	}
	return items
}
