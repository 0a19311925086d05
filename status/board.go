// Package status keeps what the status page shows, and serves the page:
// every device with when it was last seen and its message counts, every
// tenant with its token and credential health, the queue and its dead
// letters, and the most recent failures. It is for the small IT shop
// without Prometheus as much as for the ops team that wants a second look.
//
// The Board learns what happens from the same observers metrics use
// (connections and logins, message events, token requests), so the page
// and the metrics agree. It keeps addresses only as the audit log does
// (envelope senders, Exchange's replies); never a password, secret, token
// or message body. It remembers when each device was last seen across
// restarts, in a small file in the spool directory.
package status

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/hints"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// maxRecent bounds the recent failures kept.
const maxRecent = 50

// Board is the status page's state. Its methods are safe for concurrent
// use.
type Board struct {
	started time.Time

	mu      sync.Mutex
	inv     inventory.Inventory
	devices map[string]*deviceState
	tenants map[string]*tenantState
	recent  []Failure // newest last
	reload  ReloadState
	// shared is whether the mailboxes' limits are shared with the other
	// replicas (cluster.redis): "" without a cluster.
	shared   string
	sharedAt time.Time
	dirty    bool // last-seen times changed since the last save
	statFile string
	// hist counts messages, replies and the queue's depth per 10
	// minutes over the last day; devHist each device's messages.
	hist    history
	devHist map[string]*history
	// signIns are the delegated mailboxes that need a new sign-in
	// (tenant and mailbox), with since when.
	signIns map[[2]string]time.Time
}

type deviceState struct {
	LastSeen    time.Time `json:"last_seen,omitzero"`    // login or message
	LastMessage time.Time `json:"last_message,omitzero"` // received

	received, delivered, failed, rejected, authFailures int
	// lastUpstreamID is the last delivery's ID at Microsoft: Exchange's
	// queue ID, or Graph's request-id (for its message trace and support).
	lastUpstreamID string
	lastFailure    *Failure
	lastDelivered  time.Time
}

type tenantState struct {
	tokenOK, tokenFailed time.Time
	tokenExpires         time.Time
	tokenError           string
	delivered            time.Time
	problem              time.Time // last tenant set-up problem
	problemText          string
}

// Failure is one recent failure for the page.
type Failure struct {
	Time   time.Time
	Kind   string // rejected, deferred, bounced, dead, auth
	Device string
	Tenant string
	MsgID  string
	Text   string
	// Reply is the reply the failure is about (Exchange's, or the
	// bridge's own to the device), if any: the row shows its code.
	Reply string
}

// ReloadState is the outcome of the last configuration load.
type ReloadState struct {
	OK       bool
	At       time.Time
	Problems []string
}

// NewBoard returns an empty board.
func NewBoard() *Board {
	now := time.Now()
	return &Board{started: now, devices: map[string]*deviceState{}, tenants: map[string]*tenantState{},
		reload: ReloadState{OK: true, At: now}, devHist: map[string]*history{}}
}

// Configure sets the devices and tenants to show. State of devices and
// tenants that stay is kept.
func (b *Board) Configure(inv inventory.Inventory) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inv = inv
	names := make(map[string]bool, len(inv.Devices))
	for _, d := range inv.Devices {
		names[d.Name] = true
		if b.devices[d.Name] == nil {
			b.devices[d.Name] = &deviceState{}
		}
	}
	for name := range b.devHist {
		if !names[name] {
			delete(b.devHist, name) // a removed device's chart goes with it
		}
	}
	for _, t := range inv.Tenants {
		if b.tenants[t.Name] == nil {
			b.tenants[t.Name] = &tenantState{}
		}
	}
	for k := range b.signIns {
		// A sign-in line stays only while a device of a delegated
		// tenant still sends as the mailbox.
		delegated := slices.ContainsFunc(inv.Tenants, func(t inventory.Tenant) bool { return t.Name == k[0] && t.Credential.Delegated() })
		used := slices.ContainsFunc(inv.Devices, func(d inventory.Device) bool {
			return d.Tenant == k[0] && strings.EqualFold(d.Mailbox.String(), k[1])
		})
		if !delegated || !used {
			delete(b.signIns, k)
		}
	}
}

// SharedLimits records whether the limits are shared through Redis.
func (b *Board) SharedLimits(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.shared, b.sharedAt = "shared", time.Now()
	if !ok {
		b.shared = "fallback"
	}
}

// Reloaded records a configuration reload's outcome.
func (b *Board) Reloaded(ok bool, problems []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reload = ReloadState{OK: ok, At: time.Now(), Problems: problems}
}

func (b *Board) device(name string) *deviceState {
	d := b.devices[name]
	if d == nil {
		// A device removed from the config with messages still queued.
		d = &deviceState{}
		b.devices[name] = d
	}
	return d
}

func (b *Board) addFailure(f Failure) {
	b.recent = append(b.recent, f)
	if len(b.recent) > maxRecent {
		b.recent = slices.Delete(b.recent, 0, len(b.recent)-maxRecent)
	}
}

// Connection implements bridge.Observer.
func (b *Board) Connection(string) {}

// ConnectionClosed implements bridge.Observer.
func (b *Board) ConnectionClosed(string, bool) {}

// ConnectionRefused implements bridge.Observer.
func (b *Board) ConnectionRefused(string, string) {}

// AuthAttempt implements bridge.Observer: a login marks the device seen;
// a failed one is a recent failure.
func (b *Board) AuthAttempt(listener, mechanism, result, device string, remote netip.Addr) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if result == "success" {
		b.device(device).LastSeen = now
		b.dirty = true
		return
	}
	f := Failure{Time: now, Kind: "auth", Device: device,
		Text: "login failed on listener " + listener + " (" + mechanism + "): " + result + " from " + remote.String()}
	if device != "" {
		d := b.device(device)
		d.authFailures++
		d.lastFailure = &f
	}
	b.addFailure(f)
}

// Observe implements audit.Observer.
func (b *Board) Observe(e audit.Event) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if e.SetupProblem && e.Tenant != "" {
		t := b.tenant(e.Tenant)
		t.problem, t.problemText = now, problemText(e)
	}
	if e.DSNFor != "" {
		return // the bridge's own report
	}
	b.count(e, now)
	d := b.device(e.Device)
	f := Failure{Time: now, Kind: string(e.Kind), Device: e.Device, Tenant: e.Tenant, MsgID: e.MsgID, Reply: e.Reply}
	switch e.Kind {
	case audit.Received:
		d.received++
		d.LastSeen, d.LastMessage = now, now
		b.dirty = true
		return
	case audit.Delivered:
		d.delivered++
		d.lastDelivered = now
		if e.UpstreamID != "" {
			d.lastUpstreamID = e.UpstreamID
		}
		if e.Tenant != "" {
			b.tenant(e.Tenant).delivered = now
		}
		return
	case audit.Rejected:
		d.rejected++
		f.Text = e.Reason + ": " + e.Reply
		if e.Detail != "" {
			f.Text += " (" + e.Detail + ")"
		}
	case audit.Deferred:
		f.Text = problemText(e)
		if e.RetryBy == audit.RetryByQueue {
			f.Text += " (will retry at " + e.NextAttempt.Format(time.TimeOnly) + ")"
		} else {
			f.Text += " (the device was told to retry)"
		}
	case audit.Bounced:
		if e.Recipient != "" {
			f.Text = "refused by Exchange for " + e.Recipient + ": " + e.Reply
			break
		}
		d.failed++
		f.Text = "refused by Exchange: " + e.Reply
	case audit.Dead:
		if e.Reason == audit.ReasonExpired || e.Reason == audit.ReasonPoison {
			d.failed++
		}
		f.Text = "dead letter (" + e.Reason + "): " + e.Reply
	default:
		return
	}
	d.lastFailure = &f
	b.addFailure(f)
}

// count adds e to the charts' history; b.mu is held.
func (b *Board) count(e audit.Event, now time.Time) {
	dh := b.devHist[e.Device]
	if dh == nil && e.Device != "" {
		dh = &history{}
		b.devHist[e.Device] = dh
	}
	all := b.hist.at(now)
	var dev *bucket
	if dh != nil {
		dev = dh.at(now)
	}
	add := func(f func(*bucket)) {
		f(all)
		if dev != nil {
			f(dev)
		}
	}
	switch e.Kind {
	case audit.Received:
		add(func(x *bucket) { x.Received++ })
	case audit.Delivered:
		add(func(x *bucket) { x.Delivered++ })
		all.replyClass(e.Reply)
	case audit.Deferred:
		if fromExchange(e) {
			all.replyClass(e.Reply)
		}
	case audit.Bounced:
		// Refused by Exchange, for all recipients or some: a failure to
		// look at either way.
		if fromExchange(e) {
			all.replyClass(e.Reply)
		}
		add(func(x *bucket) { x.Failed++ })
	case audit.Dead:
		if e.Reason == audit.ReasonExpired || e.Reason == audit.ReasonPoison {
			add(func(x *bucket) { x.Failed++ })
		}
	case audit.Rejected:
		add(func(x *bucket) { x.Failed++ })
	default:
		return
	}
	b.dirty = true
}

// SampleQueue records the queue's depth (queued and deferred) for the
// chart: the deepest in each 10 minutes.
func (b *Board) SampleQueue(depth int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	x := b.hist.at(time.Now())
	if depth > x.Queue {
		x.Queue = depth
		b.dirty = true
	}
}

// fromExchange says whether an event's reply is Exchange's (or Graph's),
// not the bridge's own: the 451 it gives a device when Exchange could not
// be reached, or a refusal it repeated from memory. The replies chart
// counts only Exchange's.
func fromExchange(e audit.Event) bool {
	var me *message.Error
	if errors.As(e.Err, &me) {
		return me.Reply.Code != 0 && me.Note == ""
	}
	return e.Err == nil && e.Reply != ""
}

func problemText(e audit.Event) string {
	if e.Reply != "" {
		if h := hints.ForReply(e.Reply); h != nil {
			return e.Reply + ". " + h.Meaning + " Fix: " + h.Fix
		}
		return e.Reply
	}
	if e.Err != nil {
		return e.Err.Error()
	}
	return string(e.Kind)
}

func (b *Board) tenant(name string) *tenantState {
	t := b.tenants[name]
	if t == nil {
		t = &tenantState{}
		b.tenants[name] = t
	}
	return t
}

// ObserveToken implements tokenstore.Observer.
func (b *Board) ObserveToken(tenant string, tok tokenstore.Token, err error) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tenant(tenant)
	if err != nil {
		t.tokenFailed, t.tokenError = now, err.Error()
		return
	}
	t.tokenOK, t.tokenExpires = now, tok.ExpiresOn
}

// ObserveSignIn implements tokenstore.SignInObserver: a delegated
// mailbox whose sign-in Entra refused (or that has none) is on the page
// until a token comes again.
func (b *Board) ObserveSignIn(tenant, mailbox string, needed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := [2]string{tenant, mailbox}
	switch _, known := b.signIns[k]; {
	case needed && !known:
		if b.signIns == nil {
			b.signIns = map[[2]string]time.Time{}
		}
		b.signIns[k] = time.Now()
	case !needed && known:
		delete(b.signIns, k)
	}
}

// LastSeen returns when each device was last seen (a login or a
// message), for metrics.
func (b *Board) LastSeen() map[string]time.Time {
	return b.times(func(d *deviceState) time.Time { return d.LastSeen })
}

func (b *Board) times(f func(*deviceState) time.Time) map[string]time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]time.Time, len(b.devices))
	for name, d := range b.devices {
		out[name] = f(d)
	}
	return out
}
