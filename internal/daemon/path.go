package daemon

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/cluster"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	"github.com/smtpbridge/smtpbridge/upstream/graph"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

// Path is the message's path, wired from the end: the token stores, the
// mailboxes' limits, the transports (SMTP with XOAUTH2, Graph) and the
// choice between them, the memory of Exchange's refusals, the queue and
// the delivery modes, the guard, and the device side. The daemon runs one
// built from the config; send-test and the tests of the bridge and the
// queue build theirs with NewPath, so that they run on the wiring the
// product uses.
type Path struct {
	Tokens, GraphTokens *tokenstore.Store
	// Limiter keeps the mailboxes' limits on this bridge; Shared, when
	// set, with the other replicas (the transports then keep to it).
	Limiter *upstream.Local
	Shared  *cluster.Limiter
	SMTP    *upsmtp.Transport
	Graph   *graph.Transport
	// Refusals remembers Exchange's Send As and unknown-recipient
	// refusals (delivery.remember_refusals); every delivery mode goes
	// through it.
	Refusals *queue.Refusals
	// Queue is nil for a path without a spool, which delivers only in
	// sync mode.
	Queue  *queue.Queue
	Spool  *spool.Spool
	Guard  *guard.Guard
	Server *bridge.Server

	choice atomic.Pointer[transportChoice]
}

// PathOptions is what a path is built with besides the parts' settings.
type PathOptions struct {
	Log zerolog.Logger
	// Spool holds the queue; nil for a path that only relays in sync
	// mode (send-test).
	Spool *spool.Spool
	// GraphTemp holds large Graph attachments while they upload: a
	// directory of the spool's. "" for the system's temporary directory.
	GraphTemp string
	// Shared, when set, shares the mailboxes' limits with the other
	// replicas.
	Shared *cluster.Limiter
	// Guard blocks password guessing; nil for one made of
	// Parts.Guard.
	Guard *guard.Guard
	// The observers: any may be nil.
	Events   audit.Observer
	Conns    bridge.Observer
	Tokens   tokenstore.Observer
	Upstream upstream.Observer
	Holds    queue.HoldObserver
	Refused  queue.RefusalObserver
}

// quotaLimiter is a limiter whose daily counts the status page and the
// metrics show: Local, or cluster's Limiter.
type quotaLimiter interface {
	upstream.Limiter
	Recipients() map[upstream.Mailbox]int
	DailyLimit(tenant string) int
}

// NewPath wires a path; nothing listens and nothing is delivered until
// Start.
func NewPath(p Parts, o PathOptions) (*Path, error) {
	x := &Path{Spool: o.Spool, Shared: o.Shared, Guard: o.Guard}
	var err error
	if x.Tokens, err = tokenstore.New(p.Tokens, o.Tokens); err != nil {
		return nil, err
	}
	if x.GraphTokens, err = tokenstore.New(p.GraphTokens, o.Tokens); err != nil {
		return nil, err
	}
	x.Limiter = upstream.NewLocal(p.MailboxLimits)
	limits := x.Limits()
	x.SMTP = upsmtp.New(upsmtp.Options{Tokens: x.Tokens, Limiter: limits, Routes: p.Routes, Hostname: p.Hostname, Observer: o.Upstream})
	gopts := graph.Options{Tokens: x.GraphTokens, Limiter: limits, Routes: p.GraphRoutes, Observer: o.Upstream, TempDir: o.GraphTemp}
	if o.Spool != nil {
		gopts.Scratch = o.Spool
	}
	x.Graph = graph.New(gopts)
	x.choose(p.Inventory)
	x.Refusals = queue.NewRefusals(transportFunc(x.deliver), p.RememberRefusals, o.Refused)
	modes := queue.Modes{message.ModeSync: queue.Sync{Transport: x.Refusals, Events: o.Events}}
	if o.Spool != nil {
		x.Queue, err = queue.New(queue.Options{Settings: p.Queue, Spool: o.Spool, Transport: x.Refusals,
			Hostname: p.Hostname, Log: o.Log, Events: o.Events, Holds: o.Holds, LoadInBackground: true})
		if err != nil {
			x.closeTransports()
			return nil, err
		}
		modes[message.ModeSync] = queue.Sync{Transport: x.Refusals, Events: o.Events, Holds: x.Queue}
		modes[message.ModeQueue], modes[message.ModeHybrid] = x.Queue, x.Queue.Hybrid()
	}
	if x.Guard == nil {
		x.Guard = guard.New(p.Guard)
	}
	st, err := serverSettings(p)
	if err == nil {
		x.Server, err = bridge.NewServer(bridge.Options{Hostname: p.Hostname, Settings: st, Deliverer: modes,
			Observer: o.Conns, Events: o.Events, Guard: x.Guard, Log: o.Log})
	}
	if err != nil {
		x.closeTransports()
		return nil, err
	}
	return x, nil
}

// Limits is what the transports keep to: the shared limiter, or the
// local one.
func (x *Path) Limits() quotaLimiter {
	if x.Shared != nil {
		return x.Shared
	}
	return x.Limiter
}

// serverSettings is the device side's part: listeners, limits, devices.
func serverSettings(p Parts) (bridge.Settings, error) {
	dir, err := bridge.NewDirectory(p.Inventory.Devices)
	if err != nil {
		return bridge.Settings{}, err
	}
	if p.DocumentedPasswords {
		dir.AllowDocumentedPasswords()
	}
	return bridge.Settings{Listeners: p.Listeners, Directory: dir, Limits: p.Limits}, nil
}

// Start opens the device side's listeners, then starts the queue and
// serves.
func (x *Path) Start() error {
	if err := x.Server.Listen(); err != nil {
		return err
	}
	if x.Queue != nil {
		x.Queue.Start()
	}
	x.Server.Serve()
	return nil
}

// Stop ends the path: no new connections, sessions in progress finish
// until ctx ends, attempts in flight get what is left of it (at least a
// second); queued messages stay in the spool. It returns the sessions'
// error: some were still open at ctx's end.
func (x *Path) Stop(ctx context.Context) error {
	err := x.Server.Shutdown(ctx)
	if x.Queue != nil {
		left := time.Second
		if d, ok := ctx.Deadline(); ok {
			left = max(time.Until(d), left)
		}
		x.Queue.Close(left)
	}
	x.closeTransports()
	return err
}

// Close releases a path that was never started (send-test's).
func (x *Path) Close() { x.closeTransports() }

func (x *Path) closeTransports() {
	x.Graph.Close()
	x.SMTP.Close()
}

// Reconfigure takes new settings (a config reload): everything that can
// fail first, and nothing changed until it has all succeeded but the
// token stores, whose new tenants are harmless if the server's reload
// then fails. Listeners' addresses and the hostname are not changed.
func (x *Path) Reconfigure(p Parts) error {
	st, err := serverSettings(p)
	if err != nil {
		return err
	}
	if err := p.Queue.Check(); err != nil {
		return err
	}
	if err := x.Tokens.Reconfigure(p.Tokens); err != nil {
		return err
	}
	if err := x.GraphTokens.Reconfigure(p.GraphTokens); err != nil {
		return err
	}
	if err := x.Server.Reload(st); err != nil {
		return err
	}
	if x.Queue != nil {
		x.Queue.Reconfigure(p.Queue)
	}
	if x.Spool != nil {
		x.Spool.SetQuota(p.Spool)
	}
	x.Guard.Reconfigure(p.Guard)
	x.Limiter.SetLimits(p.MailboxLimits)
	if x.Shared != nil {
		x.Shared.SetLimits(p.MailboxLimits)
	}
	x.SMTP.SetRoutes(p.Routes)
	x.Graph.SetRoutes(p.GraphRoutes)
	x.choose(p.Inventory)
	// A reload may be an admin's fix (a Send As grant): what Exchange
	// refused before is tried again.
	x.Refusals.Reset(p.RememberRefusals)
	return nil
}

// Deliver sends one message now, as a device in sync mode would: through
// the memory of refusals and the device's transport. For send-test.
func (x *Path) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	return x.Refusals.Deliver(ctx, m)
}

// transportChoice is which transport each device's messages take.
type transportChoice struct {
	byDevice map[string]string // device name -> smtp or graph
	byTenant map[string]string
}

func (x *Path) choose(inv inventory.Inventory) {
	c := &transportChoice{byDevice: map[string]string{}, byTenant: map[string]string{}}
	for _, t := range inv.Tenants {
		c.byTenant[t.Name] = t.Transport
	}
	for _, d := range inv.Devices {
		c.byDevice[d.Name] = d.Transport
	}
	x.choice.Store(c)
}

// deliver sends m by its device's transport, as the configuration
// current at the attempt says: its device's, else (the bridge's own
// reports, a device since removed) its tenant's.
func (x *Path) deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	c := x.choice.Load()
	tr, ok := c.byDevice[m.Device]
	if !ok {
		tr = c.byTenant[m.Tenant]
	}
	if tr == inventory.TransportGraph {
		return x.Graph.Deliver(ctx, m)
	}
	return x.SMTP.Deliver(ctx, m)
}

// transportFunc is a function as an upstream.Transport.
type transportFunc func(context.Context, *message.Message) (message.Receipt, error)

func (f transportFunc) Deliver(ctx context.Context, m *message.Message) (message.Receipt, error) {
	return f(ctx, m)
}
