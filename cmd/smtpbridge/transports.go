package main

import (
	"context"
	"sync/atomic"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	"github.com/smtpbridge/smtpbridge/upstream/graph"
)

// transports sends each message by its device's transport (its own, or
// its tenant's), as the config current at the attempt says: SMTP AUTH
// with XOAUTH2, or Microsoft Graph.
type transports struct {
	smtp, graph upstream.Transport
	choice      atomic.Pointer[transportChoice]
}

type transportChoice struct {
	byDevice map[string]string // device name -> smtp or graph
	byTenant map[string]string
}

var _ upstream.Transport = (*transports)(nil)

// configure takes the choices of a config (at start and on reload).
func (t *transports) configure(cfg *config.Config) {
	c := &transportChoice{byDevice: map[string]string{}, byTenant: map[string]string{}}
	for _, tn := range cfg.Tenants {
		c.byTenant[tn.Name] = tn.Transport
	}
	for _, d := range cfg.Devices {
		c.byDevice[d.Name] = d.Parsed.Transport
	}
	t.choice.Store(c)
}

// of is the transport for a message: its device's, else (the bridge's own
// reports, a device since removed) its tenant's.
func (t *transports) of(m *message.Message) string {
	c := t.choice.Load()
	if tr, ok := c.byDevice[m.Device]; ok {
		return tr
	}
	return c.byTenant[m.Tenant]
}

// Deliver implements upstream.Transport.
func (t *transports) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	if t.of(m) == config.TransportGraph {
		return t.graph.Deliver(ctx, m)
	}
	return t.smtp.Deliver(ctx, m)
}

// graphRoutes are the tenants' Graph endpoints.
func (ms microsoft) graphRoutes(cfg *config.Config) map[string]graph.Route {
	out := map[string]graph.Route{}
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		host := t.GraphHost
		if ms.sb != nil {
			host = ms.sb.GraphHost()
		}
		out[t.Name] = graph.Route{Host: host, RootCAs: ms.roots()}
	}
	return out
}

// graphTokenTenants are the tenants with Graph's token scope: a Graph
// token is its own grant, cached for its lifetime beside the SMTP one.
func (ms microsoft) graphTokenTenants(cfg *config.Config) []tokenstore.Tenant {
	out := ms.tokenTenants(cfg)
	for i := range out {
		out[i].Scope, out[i].DelegatedScope = cfg.Tenants[i].GraphScope(), cfg.Tenants[i].DelegatedScope(true)
		if ms.sb != nil {
			out[i].Scope = ms.sb.GraphScope()
		}
	}
	return out
}
