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
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/hints"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

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
	// RootCAs, if set, replaces the system roots for the authority and
	// Exchange (sandbox mode, tests).
	RootCAs *x509.CertPool
	// Hostname is the EHLO name.
	Hostname string
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

// Run checks cfg's tenants and their devices' mailboxes.
func Run(ctx context.Context, cfg *config.Config, o Options) (Report, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Hostname == "" {
		o.Hostname = cfg.Hostname
	}
	if o.Hostname == "" {
		o.Hostname = "smtpbridge.doctor"
	}
	tenants, devices, err := pick(cfg, o)
	if err != nil {
		return Report{}, err
	}
	r := &run{o: o}
	for _, t := range tenants {
		r.tenant(ctx, t, devices)
	}
	return r.rep, nil
}

// pick returns the tenants and devices a run covers.
func pick(cfg *config.Config, o Options) ([]*config.Tenant, []config.Device, error) {
	devices := cfg.Devices
	tenantName := o.Tenant
	if o.Device != "" {
		i := slices.IndexFunc(cfg.Devices, func(d config.Device) bool { return d.Name == o.Device })
		if i < 0 {
			return nil, nil, fmt.Errorf("device %q: %w", o.Device, ErrNoSuch)
		}
		devices = cfg.Devices[i : i+1]
		if tenantName != "" && tenantName != devices[0].Tenant {
			return nil, nil, fmt.Errorf("device %q belongs to tenant %q, not %q", o.Device, devices[0].Tenant, tenantName)
		}
		tenantName = devices[0].Tenant
	}
	var tenants []*config.Tenant
	for i := range cfg.Tenants {
		if tenantName == "" || cfg.Tenants[i].Name == tenantName {
			tenants = append(tenants, &cfg.Tenants[i])
		}
	}
	if len(tenants) == 0 {
		return nil, nil, fmt.Errorf("tenant %q: %w", tenantName, ErrNoSuch)
	}
	return tenants, devices, nil
}

func (r *run) tenant(ctx context.Context, t *config.Tenant, devices []config.Device) {
	r.rep.Tenants++
	step := func(name string, st Status, detail string) Step {
		return Step{Tenant: t.Name, Name: name, Status: st, Detail: detail}
	}
	r.add(r.credential(t))

	store, err := tokenstore.New([]tokenstore.Tenant{tokenstore.TenantOf(t, r.o.RootCAs)}, nil)
	var tok tokenstore.Token
	if err == nil {
		tok, err = store.Token(ctx, t.Name)
	}
	mailboxes := mailboxesOf(t.Name, devices)
	if err != nil {
		r.add(tokenFailure(step("token", Fail, ""), err))
		r.add(step("claims", Skip, "no token"))
		for _, m := range mailboxes {
			r.rep.Mailboxes++
			r.add(Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: "connect", Status: Skip, Detail: "no token to log in with"})
		}
		return
	}
	r.add(step("token", Pass, fmt.Sprintf("granted by %s, valid until %s", t.AuthorityHost, tok.ExpiresOn.UTC().Format("15:04 UTC"))))

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
func mailboxesOf(tenant string, devices []config.Device) []mailbox {
	var out []mailbox
	for _, d := range devices {
		if d.Tenant != tenant {
			continue
		}
		i := slices.IndexFunc(out, func(m mailbox) bool { return strings.EqualFold(m.address, d.Mailbox) })
		if i < 0 {
			out = append(out, mailbox{address: d.Mailbox})
			i = len(out) - 1
		}
		out[i].devices = append(out[i].devices, d.Name)
	}
	return out
}

// credential describes the tenant's secret or certificate and its expiry.
func (r *run) credential(t *config.Tenant) Step {
	s := Step{Tenant: t.Name, Name: "credential", Status: Pass}
	now := r.o.Now()
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
		case now.Add(config.CredentialWarnBefore).After(c.NotAfter):
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
	case now.Add(config.CredentialWarnBefore).After(exp):
		s.Status = Warn
		s.Detail += fmt.Sprintf(", expires on %s (in %d days)", exp.Format(time.DateOnly), days(exp.Sub(now)))
		s.Meaning, s.Fix = "The client secret expires soon.", "Create a new secret under App registrations > Certificates & secrets, update client_secret and client_secret_expires, and reload."
	default:
		s.Detail += fmt.Sprintf(", expires on %s (in %d days)", exp.Format(time.DateOnly), days(exp.Sub(now)))
	}
	return s
}

func days(d time.Duration) int { return int(d.Hours() / 24) }

// tokenFailure explains a failed token request.
func tokenFailure(s Step, err error) Step {
	s.Detail = err.Error()
	var te *tokenstore.Error
	if errors.As(err, &te) {
		s.Detail = te.Description
		if te.AADSTS != 0 {
			s.Code = fmt.Sprintf("AADSTS%d", te.AADSTS)
			if h := hints.ForAADSTS(te.AADSTS); h != nil {
				s.Meaning, s.Fix = h.Meaning, h.Fix
			}
		} else {
			s.Detail = strings.TrimPrefix(te.Error(), "token for tenant "+te.Tenant+": ")
			s.Meaning = "No answer from the authority."
			s.Fix = "Check authority_host, DNS and the firewall (outbound HTTPS to login.microsoftonline.com), and the system's CA certificates (SSL_CERT_FILE)."
		}
	}
	return s
}

// mailbox probes Exchange Online for one mailbox.
func (r *run) mailbox(ctx context.Context, t *config.Tenant, m mailbox, tok tokenstore.Token, c claims) {
	route := bridge.Route{SMTPHost: t.SMTPHost, RootCAs: r.o.RootCAs}
	steps := bridge.Probe(ctx, route, r.o.Hostname, m.address, tok.AccessToken)
	names := []string{bridge.StageConnect, bridge.StageStartTLS, bridge.StageAuth, bridge.StageMail}
	failed := false
	for i, name := range names {
		s := Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: name}
		switch {
		case failed || i >= len(steps):
			s.Status, s.Detail = Skip, "not tried: an earlier step failed"
		case steps[i].Err == nil:
			s.Status, s.Detail = Pass, steps[i].Detail
			if name == bridge.StageAuth && !c.hasRole() {
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
func probeFailure(s Step, t *config.Tenant, err error, c claims) Step {
	s.Status = Fail
	var ue *bridge.UpstreamError
	if !errors.As(err, &ue) {
		s.Detail = err.Error()
		return s
	}
	if ue.Code != 0 {
		s.Detail = bridge.ReplyOf(err)
		s.Code = fmt.Sprintf("%d %d.%d.%d", ue.Code, ue.Enhanced[0], ue.Enhanced[1], ue.Enhanced[2])
		if h := hints.Match(ue.Code, fmt.Sprintf("%d.%d.%d", ue.Enhanced[0], ue.Enhanced[1], ue.Enhanced[2]), ue.Message); h != nil {
			s.Meaning, s.Fix = h.Meaning, h.Fix
		}
		if s.Code == "535 5.7.3" && !c.hasRole() {
			s.Meaning = "The token has no SMTP.SendAsApp role, and no RBAC for Applications assignment covers this mailbox (or the service principal is missing in Exchange)."
			s.Fix = "Either add the application permission SMTP.SendAsApp (API permissions > Office 365 Exchange Online) and grant admin consent, " +
				"or assign the role with RBAC: smtpbridge exchange-script --rbac prints the commands."
		}
		return s
	}
	s.Detail = ue.Err.Error()
	switch ue.Stage {
	case bridge.StageConnect:
		s.Meaning = "Exchange Online did not answer."
		s.Fix = fmt.Sprintf("Check smtp_host (%s), DNS, and that the firewall lets the bridge reach it on TCP 587.", t.SMTPHost)
	case bridge.StageStartTLS:
		s.Meaning = "STARTTLS with Exchange failed: no STARTTLS offered, a handshake error, or a certificate that did not verify."
		s.Fix = "Look for a TLS-intercepting proxy or firewall between the bridge and Exchange; the bridge trusts the system's CA certificates (SSL_CERT_FILE) and never sends a token without verified TLS."
	default:
		s.Meaning = "The connection to Exchange broke."
		s.Fix = "Try again; if it persists, check the network path to smtp_host."
	}
	return s
}
