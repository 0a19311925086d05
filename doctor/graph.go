package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/smtpbridge/smtpbridge/hints"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream/graph"
)

// Graph is a tenant's Microsoft Graph side, for its devices on the Graph
// transport.
type Graph struct {
	Scope string // the token scope: graph_host/.default
	// DelegatedScope is the delegated permission for a tenant with
	// delegated sign-in: graph_host/Mail.Send.
	DelegatedScope string
	Route          graph.Route
}

// Microsoft Graph's application permissions for mail.
const (
	roleMailSend      = "Mail.Send"
	roleMailReadWrite = "Mail.ReadWrite"
)

const graphFix = "Entra admin center > App registrations > the app > API permissions > Add > Microsoft Graph > Application permissions > %s, then Grant admin consent; " +
	"or, with RBAC for Applications: New-ManagementRoleAssignment -App %s -Role 'Application %s' -CustomResourceScope <scope> (smtpbridge exchange-script --graph prints it)."

// graphTenant checks a tenant's Graph side: a token for Graph, its roles
// (Mail.Send; Mail.ReadWrite for messages over 3 MB), and per mailbox a
// draft created and deleted, which sends nothing.
func (r *run) graphTenant(ctx context.Context, t *Tenant, devices []inventory.Device) {
	step := func(name string, st Status, detail string) Step {
		return Step{Tenant: t.Name, Name: name, Status: st, Detail: detail}
	}
	tt := t.Tenant
	tt.Scope, tt.DelegatedScope = t.Graph.Scope, t.Graph.DelegatedScope
	store, err := tokenstore.New([]tokenstore.Tenant{tt}, nil)
	var tok tokenstore.Token
	if err == nil {
		// A delegated tenant's Graph token is the first mailbox's.
		var mb string
		if t.Credential.Delegated() && len(devices) > 0 {
			mb = devices[0].Mailbox.String()
		}
		tok, err = store.Token(ctx, t.Name, mb)
	}
	mailboxes := mailboxesOf(devices)
	if err != nil {
		r.add(tokenFailure(step("graph token", Fail, ""), t, err))
		for _, m := range mailboxes {
			r.rep.Mailboxes++
			r.add(Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: "graph mailbox", Status: Skip, Detail: "no token"})
		}
		return
	}
	r.add(step("graph token", Pass, fmt.Sprintf("granted by %s for %s, valid until %s", t.AuthorityHost, tt.Scope, tok.ExpiresOn.UTC().Format("15:04 UTC"))))

	if t.Credential.Delegated() {
		// The signed-in user's token: Mail.Send as the first mailbox.
		// The other mailboxes' sign-ins are checked by their SMTP steps
		// or when they send; a draft check would need Mail.ReadWrite,
		// which delegated sign-in does not ask for.
		_, cs := r.delegatedClaims(t, mailboxes[0], tok.AccessToken, roleMailSend)
		cs.Name = "graph claims"
		r.add(cs)
		r.rep.Mailboxes += len(mailboxes)
		return
	}
	c, _ := decode(tok.AccessToken)
	s := step("graph claims", Pass, fmt.Sprintf("audience %s, roles %s", c.Audience, rolesText(c.Roles)))
	hasSend, hasRW := slices.Contains(c.Roles, roleMailSend), slices.Contains(c.Roles, roleMailReadWrite)
	switch {
	case !hasSend && len(c.Roles) > 0:
		s.Status, s.Code = Fail, roleMailSend
		s.Meaning = "The Graph token has no Mail.Send role: Graph refuses every message with 403 ErrorAccessDenied."
		s.Fix = fmt.Sprintf(graphFix, roleMailSend, t.ClientID, roleMailSend)
	case !hasSend:
		s.Status, s.Code = Warn, roleMailSend
		s.Meaning = "The Graph token has no roles: sending works only if an RBAC for Applications assignment grants Application Mail.Send over the mailboxes (the mailbox checks below cannot tell without sending)."
		s.Fix = fmt.Sprintf(graphFix, roleMailSend, t.ClientID, roleMailSend)
	case !hasRW:
		s.Status, s.Code = Warn, roleMailReadWrite
		s.Meaning = "The Graph token has Mail.Send but not Mail.ReadWrite: messages over 3 MB (scans with their PDFs), which go as drafts, are refused."
		s.Fix = fmt.Sprintf(graphFix, roleMailReadWrite, t.ClientID, roleMailReadWrite)
	}
	r.add(s)

	for _, m := range mailboxes {
		r.rep.Mailboxes++
		ms := Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: "graph mailbox"}
		if len(c.Roles) > 0 && !hasRW {
			ms.Status, ms.Detail = Skip, "checking a mailbox without sending needs Mail.ReadWrite (a draft is created and deleted)"
			r.add(ms)
			continue
		}
		err := graph.CheckMailbox(ctx, t.Graph.Route, m.address, tok.AccessToken)
		if err == nil {
			ms.Status, ms.Detail = Pass, "a draft was created and deleted: the app may use the mailbox through Graph ("+t.Graph.Route.Egress.Via(graphURL(t))+")"
			r.add(ms)
			r.add(sentItemsStep(ctx, t, m, tok.AccessToken))
			continue
		}
		ms.Status, ms.Detail = Fail, err.Error()
		var me *message.Error
		if errors.As(err, &me) && me.Reply.Code != 0 {
			ms.Detail = me.Reply.Text
			ms.Code = fmt.Sprintf("%d %s", me.Reply.Code, me.Reply.EnhancedString())
			if h := hints.Match(me.Reply.Code, me.Reply.EnhancedString(), me.Reply.Text); h != nil {
				ms.Meaning, ms.Fix = h.Meaning, h.Fix
			}
		} else if meaning, fix, ok := t.Graph.Route.Egress.Explain(err, t.Graph.Route.Host); ok {
			ms.Meaning, ms.Fix = meaning, fix
		} else {
			ms.Meaning = "Microsoft Graph did not answer (" + t.Graph.Route.Egress.Via(graphURL(t)) + ")."
			ms.Fix = fmt.Sprintf("Check graph_host (%s), DNS, and that the firewall lets the bridge reach it on TCP 443.", t.Graph.Route.Host)
		}
		r.add(ms)
	}
}

// graphURL is t's Graph host as a URL, for its proxy.
func graphURL(t *Tenant) *url.URL {
	u, err := url.Parse(t.Graph.Route.Host)
	if err != nil || u.Host == "" {
		return &url.URL{Scheme: "https", Host: t.Graph.Route.Host}
	}
	return u
}

func rolesText(roles []string) string {
	if len(roles) == 0 {
		return "none"
	}
	return strings.Join(roles, ", ")
}

// sentItemsWarn is the Sent Items size doctor warns at: most plans'
// mailboxes hold 50 GB, and Exchange refuses every submission of a full
// one (554 5.2.2), then throttles the mailbox.
const sentItemsWarn = 40 << 30

// sentItemsStep says how full the mailbox's Sent Items is, where Exchange
// keeps a copy of everything the devices send.
func sentItemsStep(ctx context.Context, t *Tenant, m mailbox, token string) Step {
	s := Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: "sent items", Status: Pass}
	n, size, err := graph.SentItemsStats(ctx, t.Graph.Route, m.address, token)
	if err != nil {
		s.Status, s.Detail = Skip, "the Sent Items folder could not be read: "+err.Error()
		return s
	}
	s.Detail = fmt.Sprintf("%d item(s), %.1f MB: Exchange keeps a copy of every message sent", n, float64(size)/1e6)
	if size >= sentItemsWarn {
		s.Status, s.Code = Warn, "554 5.2.2"
		s.Meaning = "Sent Items alone holds 40 GB or more: near most plans' 50 GB mailbox quota, past which Exchange refuses every message the mailbox sends."
		s.Fix = "Set sent_items: {keep: 30d} on the tenant or the device (the bridge deletes the copies of its own messages), or give the mailbox a retention policy."
	}
	return s
}
