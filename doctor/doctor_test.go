package doctor_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/doctor"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/pki"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

const (
	tenantID     = testenv.TenantID
	clientID     = testenv.ClientID
	clientSecret = testenv.ClientSecret
	mailbox      = "scanner@contoso.example"
)

// world is the test World, set up correctly unless a test's mistake
// changes it.
type world struct {
	ca    *pki.CA
	entra *fakeentra.Server
	exo   *fakeexchange.Server
	app   *fakeentra.App
	// tenants is the config, as doctor gets it.
	tenants []doctor.Tenant
}

type mistake struct {
	app     func(*fakeentra.App)                // the app as registered
	exo     func(*world, *fakeexchange.Mailbox) // the mailbox, and Exchange's service principals
	tenant  func(*world, *doctor.Tenant)        // the config
	noStart bool                                // the config names no running Exchange
}

func newWorld(t *testing.T, m mistake) *world {
	t.Helper()
	tw, std := testenv.Start(t)
	w := &world{ca: tw.CA, entra: tw.Entra, exo: tw.Exchange, app: std.Secret}
	if m.app != nil {
		app := *std.Secret
		m.app(&app)
		w.app = tw.Entra.AddApp(tenantID, app) // the same object ID, changed
	}
	mb := fakeexchange.Mailbox{Address: mailbox, TenantID: tenantID, FullAccess: []string{w.app.ObjectID}}
	if m.exo != nil {
		m.exo(w, &mb)
	}
	w.exo.AddMailbox(mb)
	tn := doctor.Tenant{
		Tenant: tokenstore.Tenant{Name: "contoso", TenantID: tenantID, ClientID: clientID, Credential: secret.NewClientSecret(clientSecret),
			AuthorityHost: w.entra.URL(), Scope: "https://outlook.office365.com/.default", RootCAs: w.ca.Pool()},
		SecretExpires: time.Now().AddDate(1, 0, 0),
		SMTP:          upsmtp.Route{RootCAs: w.ca.Pool()},
		Devices: []inventory.Device{
			{Name: "mfp-2f", Mailbox: mailaddr.MustParse(mailbox)},
			{Name: "mfp-3f", Mailbox: mailaddr.MustParse("SCANNER@contoso.example")}, // the same mailbox: checked once
		},
	}
	if !m.noStart {
		tn.SMTP.Host = w.exo.Addr()
	}
	if m.tenant != nil {
		m.tenant(w, &tn)
	}
	w.tenants = []doctor.Tenant{tn}
	return w
}

func (w *world) run(t *testing.T) doctor.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var progress []string
	rep, err := doctor.Run(ctx, w.tenants, doctor.Options{Hostname: "bridge.test", WarnBefore: 30 * 24 * time.Hour,
		Progress: func(s doctor.Step) { progress = append(progress, s.Name) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(progress) != len(rep.Steps) {
		t.Errorf("progress reported %d steps, the report has %d", len(progress), len(rep.Steps))
	}
	return rep
}

func step(t *testing.T, rep doctor.Report, name string) doctor.Step {
	t.Helper()
	for _, s := range rep.Steps {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no step %q in %+v", name, rep.Steps)
	return doctor.Step{}
}

func statuses(rep doctor.Report) string {
	var b strings.Builder
	for _, s := range rep.Steps {
		b.WriteString(s.Name + ":" + string(s.Status) + " ")
	}
	return strings.TrimSpace(b.String())
}

func TestHealthy(t *testing.T) {
	w := newWorld(t, mistake{})
	rep := w.run(t)
	want := "credential:pass token:pass claims:pass connect:pass starttls:pass auth:pass mail:pass"
	if got := statuses(rep); got != want {
		t.Fatalf("steps %s\nwant   %s", got, want)
	}
	if rep.Failed != 0 || rep.Warnings != 0 || rep.Tenants != 1 || rep.Mailboxes != 1 {
		t.Errorf("report %+v", rep)
	}
	if s := step(t, rep, "claims"); !strings.Contains(s.Detail, "roles SMTP.SendAsApp") || !strings.Contains(s.Detail, "audience https://outlook.office365.com") {
		t.Errorf("claims: %s", s.Detail)
	}
	if s := step(t, rep, "auth"); len(s.Devices) != 2 {
		t.Errorf("the mailbox's devices: %v", s.Devices)
	}
	if n := len(w.exo.Messages()); n != 0 {
		t.Errorf("doctor sent %d messages", n)
	}
}

// Each set-up mistake gives its step's failure, code, meaning and fix.
func TestMistakes(t *testing.T) {
	for _, c := range []struct {
		name     string
		mistake  mistake
		step     string
		code     string
		inMean   string
		inFix    string
		statuses string
	}{
		{name: "wrong secret", mistake: mistake{tenant: func(_ *world, tn *doctor.Tenant) { tn.Credential = secret.NewClientSecret("the-secret-id") }},
			step: "token", code: "AADSTS7000215", inMean: "Wrong client secret", inFix: "Value",
			statuses: "credential:pass token:fail claims:skip connect:skip"},
		{name: "unknown tenant", mistake: mistake{tenant: func(_ *world, tn *doctor.Tenant) { tn.TenantID = "nosuch.example" }},
			step: "token", code: "AADSTS90002", inMean: "Tenant not found", inFix: "Directory (tenant) ID"},
		{name: "unknown app", mistake: mistake{tenant: func(_ *world, tn *doctor.Tenant) { tn.ClientID = "00000000-0000-0000-0000-000000000009" }},
			step: "token", code: "AADSTS700016", inFix: "client_id"},
		{name: "token without the role", mistake: mistake{app: func(a *fakeentra.App) { a.Roles = []string{} }},
			step: "auth", code: "535 5.7.3", inMean: "no SMTP.SendAsApp role", inFix: "exchange-script --rbac",
			statuses: "credential:pass token:pass claims:warn connect:pass starttls:pass auth:fail mail:skip"},
		{name: "mailbox the app may not use", mistake: mistake{exo: func(_ *world, mb *fakeexchange.Mailbox) { mb.FullAccess = nil }},
			step: "auth", code: "535 5.7.3", inMean: "Enterprise Application", inFix: "Add-MailboxPermission"},
		{name: "service principal with the App Registration's object ID", mistake: mistake{exo: func(w *world, _ *fakeexchange.Mailbox) {
			w.exo.AddServicePrincipal(tenantID, clientID, w.app.AppObjectID)
		}}, step: "auth", code: "535 5.7.3", inFix: "New-ServicePrincipal -AppId <client_id> -ObjectId <Enterprise application's Object ID>"},
		{name: "SMTP AUTH disabled", mistake: mistake{exo: func(_ *world, mb *fakeexchange.Mailbox) { mb.SMTPAuthDisabled = true }},
			step: "auth", code: "535 5.7.139", inMean: "SMTP AUTH is disabled", inFix: "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false"},
		{name: "unreachable host", mistake: mistake{noStart: true, tenant: func(_ *world, tn *doctor.Tenant) { tn.SMTP.Host = closedPort(t) }},
			step: "connect", inMean: "did not answer", inFix: "TCP 587",
			statuses: "credential:pass token:pass claims:pass connect:fail starttls:skip auth:skip mail:skip"},
		{name: "TLS failure", mistake: mistake{noStart: true, tenant: func(w *world, tn *doctor.Tenant) { tn.SMTP.Host = untrustedExchange(t, w) }},
			step: "starttls", inMean: "certificate that did not verify", inFix: "TLS-intercepting proxy",
			statuses: "credential:pass token:pass claims:pass connect:pass starttls:fail auth:skip mail:skip"},
		{name: "expired secret", mistake: mistake{tenant: func(_ *world, tn *doctor.Tenant) { tn.SecretExpires = time.Now().Add(-time.Hour) }},
			step: "credential", code: "AADSTS7000222", inFix: "client_secret_expires"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, c.mistake)
			rep := w.run(t)
			s := step(t, rep, c.step)
			if s.Status != doctor.Fail || rep.Failed == 0 {
				t.Fatalf("step %s: %s (%s); all: %s", c.step, s.Status, s.Detail, statuses(rep))
			}
			if c.code != "" && s.Code != c.code {
				t.Errorf("code %q, want %q (%s)", s.Code, c.code, s.Detail)
			}
			if !strings.Contains(s.Meaning, c.inMean) || !strings.Contains(s.Fix, c.inFix) {
				t.Errorf("meaning %q\nfix %q\nwant %q and %q", s.Meaning, s.Fix, c.inMean, c.inFix)
			}
			if c.statuses != "" && statuses(rep) != c.statuses {
				t.Errorf("steps %s\nwant   %s", statuses(rep), c.statuses)
			}
		})
	}
}

// With RBAC for Applications the token has no role and the login works:
// doctor says so instead of failing.
func TestRBAC(t *testing.T) {
	w := newWorld(t, mistake{
		app: func(a *fakeentra.App) { a.Roles = []string{} },
		exo: func(_ *world, mb *fakeexchange.Mailbox) { mb.FullAccess, mb.RBACApps = nil, []string{clientID} },
	})
	rep := w.run(t)
	if rep.Failed != 0 || step(t, rep, "claims").Status != doctor.Warn {
		t.Fatalf("steps %s", statuses(rep))
	}
	if s := step(t, rep, "auth"); !strings.Contains(s.Detail, "RBAC for Applications") {
		t.Errorf("auth: %s", s.Detail)
	}
}

func TestFilters(t *testing.T) {
	w := newWorld(t, mistake{})
	w.tenants[0].Devices = append(w.tenants[0].Devices, inventory.Device{Name: "other", Mailbox: mailaddr.MustParse("erp@contoso.example")})
	rep, err := doctor.Run(context.Background(), w.tenants, doctor.Options{Device: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Mailboxes != 1 || step(t, rep, "auth").Mailbox != "erp@contoso.example" {
		t.Errorf("--device other checked %d mailboxes: %+v", rep.Mailboxes, rep.Steps)
	}
	for _, o := range []doctor.Options{{Device: "nope"}, {Tenant: "nope"}, {Tenant: "nope", Device: "other"}} {
		if _, err := doctor.Run(context.Background(), w.tenants, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// untrustedExchange starts a second fake Exchange whose certificate comes
// from a CA the bridge does not trust, as a TLS-intercepting proxy's would.
func untrustedExchange(t *testing.T, w *world) string {
	ca, err := pki.NewCA("somebody else's CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	exo := fakeexchange.New(w.entra)
	if err := exo.Start("127.0.0.1:0", leaf.TLS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exo.Close() })
	return exo.Addr()
}

// The printer keeps the step names and their details apart, whatever the
// name, and heads each tenant and mailbox.
func TestPrinterColumns(t *testing.T) {
	var b strings.Builder
	p := &doctor.Printer{W: &b}
	for _, name := range []string{"token", "graph token", "graph mailbox", "sent items"} {
		p.Step(doctor.Step{Tenant: "contoso", Mailbox: "scans@contoso.example", Devices: []string{"mfp"}, Name: name, Status: doctor.Pass, Detail: "detail"})
	}
	p.Step(doctor.Step{Tenant: "contoso", Name: "token", Status: doctor.Pass, Detail: "detail"})
	p.Step(doctor.Step{Tenant: "contoso", Mailbox: "scans@contoso.example", Devices: []string{"mfp-smtp"}, Name: "connect", Status: doctor.Pass, Detail: "detail"})
	out := b.String()
	if !strings.Contains(out, "tenant contoso\n") || !strings.Contains(out, "  mailbox scans@contoso.example (device mfp)\n") ||
		!strings.Contains(out, "  mailbox scans@contoso.example (device mfp-smtp)\n") {
		t.Errorf("a mailbox's section is not headed, or not headed again after a tenant's step:\n%s", out)
	}
	col := -1
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[2:] {
		if !strings.HasPrefix(line, "    [") {
			continue // headings, and the tenant's steps, a level out
		}
		i := strings.Index(line, "detail")
		if col >= 0 && i != col || line[i-1] != ' ' {
			t.Errorf("the details are not in one column after a space:\n%s", out)
			break
		}
		col = i
	}
}
