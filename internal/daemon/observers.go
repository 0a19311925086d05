package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/metrics"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/status"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// checkSignIns asks, in the background, for a token for each mailbox of
// a tenant with delegated sign-in, so that the status page, metrics and
// log say at once which mailbox nobody has signed in for (or whose
// sign-in Entra refused), rather than at its first message. A mailbox
// signed in costs its refresh at most.
func (d *Daemon) checkSignIns(cfg *config.Config) {
	inv := cfg.Inventory()
	for _, mb := range inv.Mailboxes() {
		if t := inv.Tenant(mb.Tenant); t == nil || !t.Credential.Delegated() {
			continue
		}
		for _, transport := range mb.Transports {
			store := d.path.Tokens
			if transport == inventory.TransportGraph {
				store = d.path.GraphTokens
			}
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				store.Token(ctx, mb.Tenant, mb.Address.String()) // its observers report the outcome
			}()
		}
	}
}

// tokenLog logs a tenant's token state when it changes: the first
// failure (at warning level when it may go away by itself, at error level
// with problem=tenant set-up when Entra refuses the credential), another
// failure, and the first token after failures. Each message's own
// deferral is in the audit log.
type tokenLog struct {
	log     zerolog.Logger
	mu      sync.Mutex
	failing map[string]string  // tenant -> the failure logged last
	signIn  map[[2]string]bool // delegated mailboxes needing a sign-in
}

// ObserveSignIn logs a delegated mailbox's need of a new sign-in, and
// its end.
func (l *tokenLog) ObserveSignIn(tenant, mailbox string, needed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := [2]string{tenant, mailbox}
	if needed == l.signIn[k] {
		return
	}
	if l.signIn == nil {
		l.signIn = map[[2]string]bool{}
	}
	l.signIn[k] = needed
	if needed {
		l.log.Error().Str("event", "sign_in").Str("problem", "sign-in needed").Str("tenant", tenant).Str("mailbox", mailbox).
			Str("fix", fmt.Sprintf("smtpbridge tenant login --config FILE --tenant %s --mailbox %s", tenant, mailbox)).
			Msg("the mailbox needs someone to sign in for it again; its messages wait in the queue")
		return
	}
	delete(l.signIn, k)
	l.log.Info().Str("event", "sign_in").Str("tenant", tenant).Str("mailbox", mailbox).Msg("the mailbox is signed in again; its waiting messages go")
}

func (l *tokenLog) ObserveToken(tenant string, _ tokenstore.Token, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev, was := l.failing[tenant]
	if err == nil {
		if was {
			delete(l.failing, tenant)
			l.log.Info().Str("event", "token").Str("tenant", tenant).Msg("tokens for the tenant again; its waiting messages go")
		}
		return
	}
	var te *tokenstore.Error
	errors.As(err, &te)
	what := err.Error()
	if te != nil {
		what = fmt.Sprintf("%d %s %d", te.HTTPStatus, te.Code, te.AADSTS)
	}
	if was && prev == what {
		return
	}
	if l.failing == nil {
		l.failing = map[string]string{}
	}
	l.failing[tenant] = what
	ev := l.log.Warn()
	if te != nil && !te.Temporary {
		ev = l.log.Error().Str("problem", "tenant set-up")
	}
	if te != nil && !te.RetryAt.IsZero() {
		ev = ev.Time("next_request", te.RetryAt)
	}
	ev.Str("event", "token").Str("tenant", tenant).Err(err).
		Msg("token requests for the tenant fail; its messages wait, and Entra ID is asked again at next_request, not for each message")
}

// holdMetrics is the gauge of the mailboxes held; the status page reads
// the queue's holds itself, and the queue logs each change.
type holdMetrics struct{ m *metrics.Metrics }

func (h holdMetrics) MailboxHold(s queue.HoldState, held bool) {
	h.m.MailboxHold(s.Tenant, s.Mailbox, string(s.Reason), held)
}

// tokenObservers tells metrics, the status page and the log about token
// requests and sign-ins.
type tokenObservers []tokenstore.Observer

func (o tokenObservers) ObserveToken(tenant string, tok tokenstore.Token, err error) {
	for _, x := range o {
		x.ObserveToken(tenant, tok, err)
	}
}

func (o tokenObservers) ObserveSignIn(tenant, mailbox string, needed bool) {
	for _, x := range o {
		if s, ok := x.(tokenstore.SignInObserver); ok {
			s.ObserveSignIn(tenant, mailbox, needed)
		}
	}
}

// connObservers tells metrics and the status page about connections and
// logins.
type connObservers []bridge.Observer

func (o connObservers) Connection(l string) {
	for _, x := range o {
		x.Connection(l)
	}
}

func (o connObservers) ConnectionClosed(l string, silent bool) {
	for _, x := range o {
		x.ConnectionClosed(l, silent)
	}
}

func (o connObservers) ConnectionRefused(l, reason string) {
	for _, x := range o {
		x.ConnectionRefused(l, reason)
	}
}

func (o connObservers) AuthAttempt(listener, mechanism, result, device string, remote netip.Addr) {
	for _, x := range o {
		x.AuthAttempt(listener, mechanism, result, device, remote)
	}
}

// sharedObservers tell the metrics and the status page whether the
// limits are shared.
type sharedObservers struct {
	m     *metrics.Metrics
	board *status.Board
}

func (o sharedObservers) SharedLimits(ok bool) {
	o.m.SharedLimits(ok)
	o.board.SharedLimits(ok)
}

// graphRequester is the Graph transport's Request, for sent_items: the
// transport is made after the observers are.
type graphRequester struct{ d *Daemon }

func (g graphRequester) Request(ctx context.Context, tenant, mailbox, method, pathQuery string) (int, []byte, error) {
	return g.d.path.Graph.Request(ctx, tenant, mailbox, method, pathQuery)
}

// sentItemsKeep is how long each device's copies stay in Sent Items
// (sent_items.keep, the device's or its tenant's).
func sentItemsKeep(cfg *config.Config) func(device string) time.Duration {
	keep := map[string]time.Duration{}
	for _, dv := range cfg.Devices {
		if k := dv.Parsed.SentItemsKeep; k > 0 {
			keep[dv.Name] = k
		}
	}
	return func(device string) time.Duration { return keep[device] }
}

// sentItemsSweep is how often the copies due are looked for: half the
// shortest keep, between a second and ten minutes.
func sentItemsSweep(cfg *config.Config) time.Duration {
	every := 10 * time.Minute
	for _, dv := range cfg.Devices {
		if k := dv.Parsed.SentItemsKeep; k > 0 {
			every = min(every, k/2)
		}
	}
	return max(every, time.Second)
}
