// Package doctor diagnoses a tenant's set-up, step by step, the way an
// admin would check it by hand: the credential, a token from Entra ID, the
// token's claims, and for each device's mailbox the Exchange Online
// submission endpoint up to MAIL FROM. Every failure carries its meaning
// and the fix from package hints. It sends no mail.
//
// It also writes the Exchange Online PowerShell a configuration needs
// (ExchangeScript).
package doctor

import (
	"context"
	"crypto/sha1"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/hints"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

// Tenant is what doctor checks of one tenant: its app registration and
// how to ask Entra ID for its token, where its Exchange Online is, and
// the devices that send through it.
type Tenant struct {
	tokenstore.Tenant
	// SecretExpires is client_secret_expires; zero when not set.
	SecretExpires time.Time
	SMTP          upsmtp.Route
	// Graph is set when some of the devices send through Microsoft
	// Graph (Device.ViaGraph).
	Graph   *Graph
	Devices []inventory.Device
}

// Status of a step.
type Status string

// Step outcomes.
const (
	Pass Status = "pass"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip" // not tried: an earlier step failed
)

// Step is one check.
type Step struct {
	Tenant  string   `json:"tenant"`
	Mailbox string   `json:"mailbox,omitempty"`
	Devices []string `json:"devices,omitempty"`
	// Name is credential, token, claims, connect, starttls, auth or mail.
	Name   string `json:"step"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	// Code, Meaning and Fix explain a failure or warning: the Entra or
	// Exchange code, what it means, what fixes it.
	Code    string `json:"code,omitempty"`
	Meaning string `json:"meaning,omitempty"`
	Fix     string `json:"fix,omitempty"`
}

// Options shape a run.
type Options struct {
	// Tenant and Device limit the run to one tenant, or to one device
	// (and its tenant).
	Tenant, Device string
	// Hostname is the EHLO name.
	Hostname string
	// WarnBefore is how long before a credential expires it is a
	// warning.
	WarnBefore time.Duration
	// Progress, if set, is called with each step as it finishes.
	Progress func(Step)
	// Now is the clock for expiry checks; nil for time.Now.
	Now func() time.Time
}

// Report is the outcome of a run.
type Report struct {
	Steps     []Step `json:"steps"`
	Tenants   int    `json:"tenants"`
	Mailboxes int    `json:"mailboxes"`
	Failed    int    `json:"failed"`
	Warnings  int    `json:"warnings"`
}

// ErrNoSuch is returned for an unknown --tenant or --device.
var ErrNoSuch = errors.New("not in the config")

type run struct {
	o   Options
	rep Report
}

func (r *run) add(s Step) {
	switch s.Status {
	case Fail:
		r.rep.Failed++
	case Warn:
		r.rep.Warnings++
	}
	r.rep.Steps = append(r.rep.Steps, s)
	if r.o.Progress != nil {
		r.o.Progress(s)
	}
}

// Run checks the tenants and their devices' mailboxes.
func Run(ctx context.Context, tenants []Tenant, o Options) (Report, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Hostname == "" {
		o.Hostname = "smtpbridge.doctor"
	}
	picked, err := pick(tenants, o)
	if err != nil {
		return Report{}, err
	}
	r := &run{o: o}
	for i := range picked {
		r.tenant(ctx, &picked[i])
	}
	return r.rep, nil
}

// pick returns the tenants a run covers, each with the devices it checks.
func pick(tenants []Tenant, o Options) ([]Tenant, error) {
	var out []Tenant
	for _, t := range tenants {
		if o.Tenant != "" && t.Name != o.Tenant {
			continue
		}
		if o.Device != "" {
			i := slices.IndexFunc(t.Devices, func(d inventory.Device) bool { return d.Name == o.Device })
			if i < 0 {
				continue
			}
			t.Devices = t.Devices[i : i+1]
		}
		out = append(out, t)
	}
	switch {
	case len(out) > 0:
		return out, nil
	case o.Device != "" && o.Tenant != "" && slices.ContainsFunc(tenants, func(t Tenant) bool {
		return slices.ContainsFunc(t.Devices, func(d inventory.Device) bool { return d.Name == o.Device })
	}):
		return nil, fmt.Errorf("device %q does not belong to tenant %q", o.Device, o.Tenant)
	case o.Device != "":
		return nil, fmt.Errorf("device %q: %w", o.Device, ErrNoSuch)
	}
	return nil, fmt.Errorf("tenant %q: %w", o.Tenant, ErrNoSuch)
}

func (r *run) tenant(ctx context.Context, t *Tenant) {
	r.rep.Tenants++
	r.add(r.credential(t))
	var viaSMTP, viaGraph []inventory.Device
	for _, d := range t.Devices {
		if d.ViaGraph() && t.Graph != nil {
			viaGraph = append(viaGraph, d)
		} else {
			viaSMTP = append(viaSMTP, d)
		}
	}
	if len(viaGraph) > 0 {
		r.graphTenant(ctx, t, viaGraph)
		if len(viaSMTP) == 0 {
			return
		}
	}
	r.smtpTenant(ctx, t, viaSMTP)
}

// smtpTenant checks a tenant's SMTP side for its devices on SMTP.
func (r *run) smtpTenant(ctx context.Context, t *Tenant, devices []inventory.Device) {
	step := func(name string, st Status, detail string) Step {
		return Step{Tenant: t.Name, Name: name, Status: st, Detail: detail}
	}

	store, err := tokenstore.New([]tokenstore.Tenant{t.Tenant}, nil)
	mailboxes := mailboxesOf(devices)
	if err == nil && t.Credential.Delegated() {
		// Each mailbox has its own sign-in, and token.
		for _, m := range mailboxes {
			r.rep.Mailboxes++
			s := Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: "token", Status: Pass}
			tok, err := store.Token(ctx, t.Name, m.address)
			if err != nil {
				s.Status = Fail
				r.add(tokenFailure(s, t, err))
				continue
			}
			s.Detail = fmt.Sprintf("the mailbox's sign-in, for %s, valid until %s", t.DelegatedScope, tok.ExpiresOn.UTC().Format("15:04 UTC"))
			r.add(s)
			c, cs := r.delegatedClaims(t, m, tok.AccessToken, "SMTP.Send")
			r.add(cs)
			r.mailbox(ctx, t, m, tok, c)
		}
		return
	}
	var tok tokenstore.Token
	if err == nil {
		tok, err = store.Token(ctx, t.Name, "")
	}
	if err != nil {
		r.add(tokenFailure(step("token", Fail, ""), t, err))
		r.add(step("claims", Skip, "no token"))
		for _, m := range mailboxes {
			r.rep.Mailboxes++
			r.add(Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: "connect", Status: Skip, Detail: "no token to log in with"})
		}
		return
	}
	r.add(step("token", Pass, fmt.Sprintf("granted by %s (%s), valid until %s", t.AuthorityHost, t.Egress.Via(authorityURL(t)), tok.ExpiresOn.UTC().Format("15:04 UTC"))))

	claims, cs := r.claims(t, tok.AccessToken)
	r.add(cs)
	for _, m := range mailboxes {
		r.rep.Mailboxes++
		r.mailbox(ctx, t, m, tok, claims)
	}
	if len(mailboxes) == 0 {
		r.add(step("connect", Skip, "no device sends through this tenant"))
	}
}

type mailbox struct {
	address string
	devices []string
}

// mailboxesOf lists the mailboxes of a tenant's devices, each once.
func mailboxesOf(devices []inventory.Device) []mailbox {
	var out []mailbox
	for _, d := range devices {
		i := slices.IndexFunc(out, func(m mailbox) bool { return strings.EqualFold(m.address, d.Mailbox.String()) })
		if i < 0 {
			out = append(out, mailbox{address: d.Mailbox.String()})
			i = len(out) - 1
		}
		out[i].devices = append(out[i].devices, d.Name)
	}
	return out
}

// managedIdentitySource names where MSAL gets managed identity tokens
// here, as it decides from the environment.
func managedIdentitySource() string {
	switch {
	case os.Getenv("IDENTITY_ENDPOINT") != "" && os.Getenv("IMDS_ENDPOINT") != "":
		return "Azure Arc's agent (IDENTITY_ENDPOINT " + os.Getenv("IDENTITY_ENDPOINT") + ")"
	case os.Getenv("IDENTITY_ENDPOINT") != "" && os.Getenv("IDENTITY_HEADER") != "":
		return "App Service or Container Apps (IDENTITY_ENDPOINT " + os.Getenv("IDENTITY_ENDPOINT") + ")"
	case os.Getenv("MSI_ENDPOINT") != "":
		return "Cloud Shell (MSI_ENDPOINT)"
	}
	return "the Azure VM's instance metadata service (169.254.169.254)"
}

// credential describes the tenant's secret or certificate and its expiry.
func (r *run) credential(t *Tenant) Step {
	s := Step{Tenant: t.Name, Name: "credential", Status: Pass}
	now := r.o.Now()
	if t.Credential.Delegated() {
		s.Detail = "delegated sign-in per mailbox (public client " + t.ClientID + "), the refresh tokens kept encrypted in the token cache"
		return s
	}
	if id, ok := t.Credential.ManagedIdentity(); ok {
		s.Detail = "system-assigned managed identity"
		if id != "" {
			s.Detail = "user-assigned managed identity " + id
		}
		s.Detail += ", from " + managedIdentitySource()
		if t.ClientID != "" {
			s.Detail += ", as the federated credential of app registration " + t.ClientID
		}
		return s
	}
	if path := t.Credential.FederatedTokenFile(); path != "" {
		c, err := tokenstore.ReadFederatedClaims(path)
		if err != nil {
			s.Status, s.Meaning, s.Fix = Fail, err.Error(), "On Kubernetes, mount the projected service account token (AKS workload identity sets AZURE_FEDERATED_TOKEN_FILE) and point federated_token_file at it."
			return s
		}
		s.Detail = fmt.Sprintf("federated token file %s: issuer %s, subject %s, audience %s, expires %s",
			path, c.Issuer, c.Subject, strings.Join(c.Audience, ","), c.Expires.UTC().Format(time.RFC3339))
		if now.After(c.Expires) {
			s.Status, s.Code = Fail, "AADSTS700024"
			s.Meaning, s.Fix = "The token in the file has expired: Entra refuses it.", "The kubelet renews a projected token before it expires: check that the pod's volume is a projected serviceAccountToken, and that nothing copies the token once."
		}
		return s
	}
	if t.Credential.IsCertificate() {
		certs, _ := t.Credential.Certificate()
		c := certs[0]
		s.Detail = fmt.Sprintf("certificate %q, thumbprint %X, valid %s to %s", c.Subject.CommonName, sha1.Sum(c.Raw),
			c.NotBefore.Format(time.DateOnly), c.NotAfter.Format(time.DateOnly))
		switch {
		case now.Before(c.NotBefore):
			s.Status, s.Meaning, s.Fix = Fail, "The certificate is not valid yet.", "Check this host's clock, or use a certificate valid now."
		case now.After(c.NotAfter):
			s.Status, s.Code = Fail, "AADSTS700027"
			s.Meaning, s.Fix = "The certificate has expired: Entra refuses its assertions.", "Create a new certificate, upload its public part under App registrations > Certificates & secrets, and point certificate_file at it."
		case now.Add(r.o.WarnBefore).After(c.NotAfter):
			s.Status = Warn
			s.Meaning, s.Fix = fmt.Sprintf("The certificate expires in %d days.", days(c.NotAfter.Sub(now))), "Upload a new certificate to the app registration before then."
		}
		return s
	}
	s.Detail = "client secret"
	switch exp := t.SecretExpires; {
	case exp.IsZero():
		s.Detail += ", expiry not configured (set client_secret_expires to be warned before it expires)"
	case now.After(exp):
		s.Status, s.Code = Fail, "AADSTS7000222"
		s.Detail += ", expired on " + exp.Format(time.DateOnly)
		h := hints.ForAADSTS(7000222)
		s.Meaning, s.Fix = h.Meaning, h.Fix
	case now.Add(r.o.WarnBefore).After(exp):
		s.Status = Warn
		s.Detail += fmt.Sprintf(", expires on %s (in %d days)", exp.Format(time.DateOnly), days(exp.Sub(now)))
		s.Meaning, s.Fix = "The client secret expires soon.", "Create a new secret under App registrations > Certificates & secrets, update client_secret and client_secret_expires, and reload."
	default:
		s.Detail += fmt.Sprintf(", expires on %s (in %d days)", exp.Format(time.DateOnly), days(exp.Sub(now)))
	}
	return s
}

func days(d time.Duration) int { return int(d.Hours() / 24) }

// tokenFailure explains a failed token request; for a delegated
// mailbox, the sign-in to do again.
func tokenFailure(s Step, t *Tenant, err error) Step {
	s.Detail = err.Error()
	var te *tokenstore.Error
	if errors.As(err, &te) {
		s.Detail = te.Description
		switch {
		case te.SignIn && te.AADSTS == 0:
			s.Detail = "no sign-in is stored for the mailbox"
			s.Meaning = "Nobody has signed in for this mailbox yet (or the token cache's key or directory changed)."
		case te.AADSTS != 0:
			s.Code = fmt.Sprintf("AADSTS%d", te.AADSTS)
			if h := hints.ForAADSTS(te.AADSTS); h != nil {
				s.Meaning, s.Fix = h.Meaning, h.Fix
			}
		default:
			s.Detail = strings.TrimPrefix(te.Error(), "token for tenant "+te.Tenant+": ")
			s.Meaning = "No answer from the authority (" + t.Egress.Via(authorityURL(t)) + ")."
			s.Fix = "Check authority_host, DNS and the firewall (outbound HTTPS to login.microsoftonline.com), and the system's CA certificates (SSL_CERT_FILE)."
			if meaning, fix, ok := t.Egress.Explain(err, t.AuthorityHost); ok {
				s.Meaning, s.Fix = meaning, fix
			}
		}
		if te.SignIn {
			s.Fix = "Sign in as the mailbox's user: " + te.LoginCommand() + " (with --config as for doctor)."
		}
	}
	return s
}

// authorityURL is t's authority as a URL, for its proxy.
func authorityURL(t *Tenant) *url.URL {
	u, err := url.Parse(t.AuthorityHost)
	if err != nil || u.Host == "" {
		return &url.URL{Scheme: "https", Host: t.AuthorityHost}
	}
	return u
}

// mailbox probes Exchange Online for one mailbox.
func (r *run) mailbox(ctx context.Context, t *Tenant, m mailbox, tok tokenstore.Token, c claims) {
	steps := upsmtp.Probe(ctx, t.SMTP, r.o.Hostname, m.address, tok.AccessToken)
	names := []message.Stage{message.StageConnect, message.StageStartTLS, message.StageAuth, message.StageMail}
	failed := false
	for i, name := range names {
		s := Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: string(name)}
		switch {
		case failed || i >= len(steps):
			s.Status, s.Detail = Skip, "not tried: an earlier step failed"
		case steps[i].Err == nil:
			s.Status, s.Detail = Pass, steps[i].Detail
			if name == message.StageConnect {
				s.Detail += " (" + t.SMTP.Egress.SMTPVia(t.SMTP.Host) + ")"
			}
			if name == message.StageAuth && !c.hasRole() {
				s.Detail += "; the token has no SMTP.SendAsApp role, so RBAC for Applications grants this app the mailbox"
			}
		default:
			failed = true
			s = probeFailure(s, t, steps[i].Err, c)
		}
		r.add(s)
	}
}

// probeFailure explains a failed probe step.
func probeFailure(s Step, t *Tenant, err error, c claims) Step {
	s.Status = Fail
	var me *message.Error
	if !errors.As(err, &me) {
		s.Detail = err.Error()
		return s
	}
	if r := me.Reply; r.Code != 0 {
		s.Detail = message.ReplyOf(err).String()
		s.Code = fmt.Sprintf("%d %s", r.Code, r.EnhancedString())
		if h := hints.Match(r.Code, r.EnhancedString(), r.Text); h != nil {
			s.Meaning, s.Fix = h.Meaning, h.Fix
		}
		if s.Code == "535 5.7.3" && !c.hasRole() {
			s.Meaning = "The token has no SMTP.SendAsApp role, and no RBAC for Applications assignment covers this mailbox (or the service principal is missing in Exchange)."
			s.Fix = "Either add the application permission SMTP.SendAsApp (API permissions > Office 365 Exchange Online) and grant admin consent, " +
				"or assign the role with RBAC: smtpbridge exchange-script --rbac prints the commands."
		}
		return s
	}
	s.Detail = me.Err.Error()
	if meaning, fix, ok := t.SMTP.Egress.Explain(me.Err, t.SMTP.Host); ok && me.Stage == message.StageConnect {
		// (The proxy's CA is not SMTP's: STARTTLS is end to end.)
		s.Meaning, s.Fix = meaning, fix
		return s
	}
	switch me.Stage {
	case message.StageConnect:
		s.Meaning = "Exchange Online did not answer."
		s.Fix = fmt.Sprintf("Check smtp_host (%s), DNS, and that the firewall lets the bridge reach it on TCP 587.", t.SMTP.Host)
	case message.StageStartTLS:
		s.Meaning = "STARTTLS with Exchange failed: no STARTTLS offered, a handshake error, or a certificate that did not verify."
		s.Fix = "Look for a TLS-intercepting proxy or firewall between the bridge and Exchange; the bridge trusts the system's CA certificates (SSL_CERT_FILE) and never sends a token without verified TLS."
	default:
		s.Meaning = "The connection to Exchange broke."
		s.Fix = "Try again; if it persists, check the network path to smtp_host."
	}
	return s
}
