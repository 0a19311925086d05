package smtp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
)

const mailbox = "scanner@contoso.example"

type rig struct {
	w     *fakeworld.World
	tr    *Transport
	lim   *upstream.Local
	obs   *observer
	store *tokenstore.Store
}

// newRig is the SMTP transport in front of the test World, for tenant
// contoso with the given per-mailbox limits.
func newRig(t *testing.T, limits upstream.Limits, setup ...func(*fakeworld.World)) *rig {
	t.Helper()
	w, std := testenv.Start(t, setup...)
	w.AddMailbox(mailbox, testenv.TenantID, std.Secret)
	store, err := tokenstore.New([]tokenstore.Tenant{{Name: "contoso", TenantID: testenv.TenantID, ClientID: testenv.ClientID,
		Credential: secret.NewClientSecret(testenv.ClientSecret), AuthorityHost: w.Entra.URL(), Scope: testenv.TokenScope,
		RootCAs: w.CA.Pool()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{w: w, store: store, obs: &observer{}, lim: upstream.NewLocal(map[string]upstream.Limits{"contoso": limits})}
	r.tr = New(Options{Tokens: store, Limiter: r.lim, Hostname: "bridge.test", Observer: r.obs,
		Routes: map[string]Route{"contoso": {Host: w.Exchange.Addr(), RootCAs: w.CA.Pool()}}})
	t.Cleanup(r.tr.Close)
	return r
}

func msg(subject string, to ...string) *message.Message {
	if len(to) == 0 {
		to = []string{"bob@contoso.example"}
	}
	body := "From: <" + mailbox + ">\r\nSubject: " + subject + "\r\n\r\n" + testenv.BodyCanary + "\r\n"
	return &message.Message{ID: message.NewID(), Tenant: "contoso", Mailbox: mailbox, From: mailbox, To: to,
		Size: int64(len(body)), Body: strings.NewReader(body)}
}

type observer struct {
	mu      sync.Mutex
	replies []string
	errors  []string
}

func (o *observer) UpstreamStage(string, string, time.Duration) {}
func (o *observer) UpstreamReply(_ string, code int, enh [3]int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.replies = append(o.replies, fmt.Sprintf("%d %d.%d.%d", code, enh[0], enh[1], enh[2]))
}
func (o *observer) UpstreamError(_, stage string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.errors = append(o.errors, stage)
}

// Messages go through one login: the connection is reused, with RSET
// between messages, and idle ones close after idleTimeout.
func TestDeliverReusesConnections(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 3, PerMinute: 100})
	for i := 0; i < 5; i++ {
		rc, err := r.tr.Deliver(context.Background(), msg(fmt.Sprintf("m%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if rc.Queued || rc.Reply.Code != 250 || rc.Reply.EnhancedString() != "2.0.0" || rc.UpstreamID == "" ||
			!strings.Contains(rc.Reply.String(), "<"+rc.UpstreamID+">") || len(rc.Accepted) != 1 {
			t.Errorf("receipt %+v", rc)
		}
	}
	if n := r.w.Exchange.AuthLogins(); n != 1 {
		t.Errorf("%d logins for 5 messages in a row", n)
	}
	if got := r.tr.Connections()["contoso"]; got != 1 {
		t.Errorf("%d connections open, want the one idle", got)
	}
	for _, m := range r.w.Exchange.Messages() {
		if m.AuthUser != mailbox || m.Size == 0 {
			t.Errorf("message %+v", m)
		}
	}
}

// Concurrent messages for one mailbox never hold more connections than
// the limiter allows; they wait instead of failing.
func TestDeliverWithinConnectionLimit(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 2}, func(w *fakeworld.World) { w.Exchange.SetSubmitDelay(30 * time.Millisecond) })
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Go(func() {
			if _, err := r.tr.Deliver(context.Background(), msg(fmt.Sprintf("p%d", i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if peak := r.w.Exchange.PeakConnections(mailbox); peak > 2 {
		t.Errorf("%d connections at once, limit 2", peak)
	}
	if n := len(r.w.Exchange.Messages()); n != 12 {
		t.Errorf("%d of 12 delivered", n)
	}
}

// Each failure comes back classified, with Exchange's reply, and the
// connection is kept or dropped as the reply says.
func TestDeliverFailures(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 1})
	script := func(stage fakeexchange.Stage, code int, enh gosmtp.EnhancedCode, text string) {
		r.w.Exchange.Script(stage, fakeexchange.Reply{Code: code, Enhanced: enh, Text: text})
	}
	deliver := func() *message.Error {
		t.Helper()
		_, err := r.tr.Deliver(context.Background(), msg("f", "a@contoso.example", "b@contoso.example"))
		var e *message.Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v is not a *message.Error", err)
		}
		return e
	}

	// One recipient refused: the other gets the message, and the receipt
	// says who got what.
	r.w.Exchange.RefuseRecipient("a@contoso.example", fakeexchange.Reply{Code: 550, Enhanced: gosmtp.EnhancedCode{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound"})
	rc, err := r.tr.Deliver(context.Background(), msg("partial", "a@contoso.example", "b@contoso.example"))
	if err != nil || strings.Join(rc.Accepted, ",") != "b@contoso.example" || len(rc.Refused) != 1 {
		t.Fatalf("a refused recipient: %+v %v", rc, err)
	}
	if e := rc.Refused[0]; e.Class != message.Permanent || e.Stage != message.StageRcpt || e.Recipient != "a@contoso.example" ||
		e.Reply.String() != "550 5.1.10 RESOLVER.ADR.RecipientNotFound" {
		t.Errorf("the refusal: %+v", e)
	}
	// All or none (sync mode): nobody gets it.
	r.w.Exchange.RefuseRecipient("a@contoso.example", fakeexchange.Reply{Code: 550, Enhanced: gosmtp.EnhancedCode{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound"})
	m := msg("all or none", "a@contoso.example", "b@contoso.example")
	m.AllRecipients = true
	rc, err = r.tr.Deliver(context.Background(), m)
	if e := new(message.Error); !errors.As(err, &e) || e.Recipient != "a@contoso.example" || len(rc.Accepted) != 0 {
		t.Errorf("all or none: %+v %v", rc, err)
	}
	if n := len(r.w.Exchange.Messages()); n != 1 {
		t.Errorf("%d messages at Exchange, want the partial one", n)
	}
	script(fakeexchange.StageMail, 432, gosmtp.EnhancedCode{4, 3, 2}, "STOREDRV.ClientSubmit; sender thread limit exceeded")
	if e := deliver(); e.Class != message.Throttled || !e.Pauses() {
		t.Errorf("432 4.3.2: %+v", e)
	}
	if n := r.w.Exchange.AuthLogins(); n != 1 {
		t.Errorf("%d logins: a refusal must not cost the connection", n)
	}
	script(fakeexchange.StageData, 421, gosmtp.EnhancedCode{4, 3, 2}, "Service not available, closing transmission channel")
	if e := deliver(); e.Class != message.Throttled || e.ConnectionUsable() {
		t.Errorf("421: %+v", e)
	}
	if _, err := r.tr.Deliver(context.Background(), msg("after 421")); err != nil {
		t.Fatal(err)
	}
	if n := r.w.Exchange.AuthLogins(); n != 2 {
		t.Errorf("%d logins: after a 421 the next message needs a new connection", n)
	}
	r.w.Exchange.Script(fakeexchange.StageData, fakeexchange.Reply{Hangup: true})
	if e := deliver(); e.Class != message.Broken || e.Stage != message.StageData || e.Reply.Code != 0 {
		t.Errorf("a dropped connection: %+v", e)
	}
	r.obs.mu.Lock()
	defer r.obs.mu.Unlock()
	if got := strings.Join(r.obs.replies, ","); got != "250 2.0.0,550 5.1.10,432 4.3.2,421 4.3.2,250 2.0.0" {
		t.Errorf("observed replies %s", got)
	}
	if got := strings.Join(r.obs.errors, ","); got != "data" {
		t.Errorf("observed errors %s", got)
	}
}

// Exchange refusing the bridge's login is the tenant's set-up, not the
// message's fault; a token Entra refuses costs no connection.
func TestDeliverSetupProblems(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 1}, func(w *fakeworld.World) {
		w.Exchange.Script(fakeexchange.StageAuth, fakeexchange.Reply{Code: 535, Enhanced: gosmtp.EnhancedCode{5, 7, 139},
			Text: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."})
	})
	_, err := r.tr.Deliver(context.Background(), msg("x"))
	if e := new(message.Error); !errors.As(err, &e) || e.Class != message.Setup || e.Stage != message.StageAuth {
		t.Errorf("535 5.7.139 at AUTH: %v", err)
	}
	// A wrong client secret: Entra refuses the token.
	tr := New(Options{Tokens: mustStore(t, r.w, "wrong-secret"), Limiter: r.lim, Hostname: "bridge.test",
		Routes: map[string]Route{"contoso": {Host: r.w.Exchange.Addr(), RootCAs: r.w.CA.Pool()}}})
	defer tr.Close()
	before := r.w.Exchange.AuthLogins()
	_, err = tr.Deliver(context.Background(), msg("y"))
	if e := new(message.Error); !errors.As(err, &e) || e.Class != message.Setup || e.Stage != message.StageToken {
		t.Errorf("a refused token: %v", err)
	}
	if tr.Connections()["contoso"] != 0 || r.w.Exchange.AuthLogins() != before {
		t.Error("a failed token opened a connection")
	}
	if _, err := tr.Deliver(context.Background(), &message.Message{Tenant: "gone", Mailbox: mailbox, To: []string{"a@b.c"}, Body: strings.NewReader("")}); message.StageOf(err) != message.StageConfig {
		t.Errorf("a tenant without a route: %v", err)
	}
}

func mustStore(t *testing.T, w *fakeworld.World, clientSecret string) *tokenstore.Store {
	t.Helper()
	s, err := tokenstore.New([]tokenstore.Tenant{{Name: "contoso", TenantID: testenv.TenantID, ClientID: testenv.ClientID,
		Credential: secret.NewClientSecret(clientSecret), AuthorityHost: w.Entra.URL(), Scope: testenv.TokenScope,
		RootCAs: w.CA.Pool()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A lowered limit closes the connections above it as their messages end;
// a changed route closes the idle ones at once.
func TestLimitsAndRoutesChange(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 3}, func(w *fakeworld.World) { w.Exchange.SetSubmitDelay(50 * time.Millisecond) })
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Go(func() { r.tr.Deliver(context.Background(), msg(fmt.Sprintf("c%d", i))) })
	}
	testenv.Eventually(t, "three connections", 5*time.Second, func() bool { return r.tr.Connections()["contoso"] == 3 })
	r.lim.SetLimits(map[string]upstream.Limits{"contoso": {Connections: 1}})
	wg.Wait()
	if got := r.tr.Connections()["contoso"]; got != 1 {
		t.Errorf("%d connections stay after lowering the limit to 1", got)
	}
	r.tr.SetRoutes(map[string]Route{"contoso": {Host: r.w.Exchange.Addr()}}) // other trust: a new route
	if got := r.tr.Connections()["contoso"]; got != 0 {
		t.Errorf("%d idle connections to the old route", got)
	}
}

// Probe walks the path step by step and sends nothing.
func TestProbe(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 1})
	tok, err := r.store.Token(context.Background(), "contoso", "")
	if err != nil {
		t.Fatal(err)
	}
	route := Route{Host: r.w.Exchange.Addr(), RootCAs: r.w.CA.Pool()}
	steps := Probe(context.Background(), route, "bridge.test", mailbox, tok.AccessToken)
	var got []string
	for _, s := range steps {
		if s.Err != nil {
			t.Errorf("step %s: %v", s.Stage, s.Err)
		}
		got = append(got, string(s.Stage))
	}
	if strings.Join(got, " ") != "connect starttls auth mail" || !strings.Contains(steps[1].Detail, "verified") {
		t.Errorf("steps %v: %+v", got, steps)
	}
	if len(r.w.Exchange.Messages()) != 0 {
		t.Error("the probe sent a message")
	}
	// Against a host whose certificate the bridge does not trust: the
	// token is never sent.
	steps = Probe(context.Background(), Route{Host: r.w.Exchange.Addr()}, "bridge.test", mailbox, tok.AccessToken)
	if last := steps[len(steps)-1]; last.Stage != message.StageStartTLS || message.ClassOf(last.Err) != message.Broken {
		t.Errorf("an untrusted certificate: %+v", steps)
	}
}

func TestIsMicrosoftHost(t *testing.T) {
	for host, want := range map[string]bool{"smtp.office365.com:587": true, "SMTP.Office365.us.:587": true,
		"smtp.example.com:587": false, "127.0.0.1:2525": false} {
		if IsMicrosoftHost(host) != want {
			t.Errorf("IsMicrosoftHost(%q) != %v", host, want)
		}
	}
}
