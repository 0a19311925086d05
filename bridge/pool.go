package bridge

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Connection reuse settings; tests shorten them.
var (
	// upstreamIdleTimeout closes a connection nobody used for this long.
	upstreamIdleTimeout = 30 * time.Second
	// tokenMargin replaces a connection whose token expires within it:
	// Exchange checks the token at AUTH only, but a connection outliving
	// its token is one an admin cannot revoke.
	tokenMargin = 5 * time.Minute
)

// mailboxPool keeps one mailbox within Exchange Online's limits: at most
// maxConns connections open (idle ones included, since Exchange counts
// them) and at most perMinute submissions started in any 60 seconds. A
// caller over a limit waits; nothing is refused.
type mailboxPool struct {
	maxConns  int
	perMinute int
	window    time.Duration // a minute; tests shorten it

	mu      sync.Mutex
	open    int         // connections open or being opened
	idle    []*upConn   // open and authenticated, waiting for a message
	started []time.Time // submission starts in the last minute, oldest first
	changed chan struct{}
	closed  bool
}

// upConn is an authenticated connection to Exchange for one mailbox.
type upConn struct {
	c            *smtp.Client
	tokenExpires time.Time
	timer        *time.Timer // the idle timer, while idle
}

func newMailboxPool(maxConns, perMinute int) *mailboxPool {
	if maxConns <= 0 {
		maxConns = 3
	}
	return &mailboxPool{maxConns: maxConns, perMinute: perMinute, window: time.Minute, changed: make(chan struct{})}
}

// setLimits changes the limits (a config reload). Connections above a
// lowered limit close as they finish.
func (p *mailboxPool) setLimits(maxConns, perMinute int) {
	if maxConns <= 0 {
		maxConns = 3
	}
	p.mu.Lock()
	p.maxConns, p.perMinute = maxConns, perMinute
	var extra []*upConn
	for p.open-len(extra) > p.maxConns && len(p.idle) > 0 {
		c := p.idle[0]
		p.idle = p.idle[1:]
		c.timer.Stop()
		extra = append(extra, c)
	}
	p.broadcast()
	p.mu.Unlock()
	for _, c := range extra {
		c.quit()
	}
	if len(extra) > 0 {
		p.freed(len(extra))
	}
}

// openCount is the number of connections open or being opened.
func (p *mailboxPool) openCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// broadcast wakes every waiter; p.mu is held.
func (p *mailboxPool) broadcast() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// acquire waits for a submission slot. It returns an idle connection to
// reuse, or nil when the caller is to open one (the slot is counted as an
// open connection until release).
func (p *mailboxPool) acquire(ctx context.Context) (*upConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("upstream is shutting down")
		}
		now := time.Now()
		for len(p.started) > 0 && now.Sub(p.started[0]) >= p.window {
			p.started = p.started[1:]
		}
		wait := time.Duration(-1)
		switch {
		case p.perMinute > 0 && len(p.started) >= p.perMinute:
			wait = p.started[0].Add(p.window).Sub(now)
		case len(p.idle) > 0:
			c := p.idle[len(p.idle)-1]
			p.idle = p.idle[:len(p.idle)-1]
			c.timer.Stop()
			p.started = append(p.started, now)
			p.mu.Unlock()
			return c, nil
		case p.open < p.maxConns:
			p.open++
			p.started = append(p.started, now)
			p.mu.Unlock()
			return nil, nil
		}
		ch := p.changed
		p.mu.Unlock()

		var (
			timeout <-chan time.Time
			t       *time.Timer
		)
		if wait >= 0 {
			t = time.NewTimer(wait)
			timeout = t.C
		}
		select {
		case <-ch:
		case <-timeout:
		case <-ctx.Done():
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for a free connection to Exchange (limit %d per mailbox, %d messages a minute): %w",
				p.maxConns, p.perMinute, context.Cause(ctx))
		}
	}
}

// release ends a submission. A connection kept goes idle, to be reused or
// closed after upstreamIdleTimeout; otherwise c (if any) is closed and its
// slot freed.
func (p *mailboxPool) release(c *upConn, keep bool) {
	p.mu.Lock()
	if keep && c != nil && !p.closed && p.open <= p.maxConns {
		c.timer = time.AfterFunc(upstreamIdleTimeout, func() { p.expire(c) })
		p.idle = append(p.idle, c)
		p.broadcast()
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if c != nil {
		c.c.Close()
	}
	p.freed(1)
}

// freed gives back the slots of n connections that are now closed.
func (p *mailboxPool) freed(n int) {
	p.mu.Lock()
	p.open -= n
	p.broadcast()
	p.mu.Unlock()
}

// expire closes c if it is still idle.
func (p *mailboxPool) expire(c *upConn) {
	p.mu.Lock()
	i := slices.Index(p.idle, c)
	if i < 0 {
		p.mu.Unlock()
		return
	}
	p.idle = slices.Delete(p.idle, i, i+1)
	p.mu.Unlock()
	c.quit()
	p.freed(1)
}

// close closes the idle connections and makes later acquires fail.
func (p *mailboxPool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		c.timer.Stop()
		c.quit()
	}
	p.freed(len(idle))
}

// quit ends the session politely, so that Exchange frees the mailbox's
// connection slot at once.
func (c *upConn) quit() {
	c.c.CommandTimeout = 10 * time.Second
	if err := c.c.Quit(); err != nil {
		c.c.Close()
	}
}

// fresh says whether c's token is far enough from expiry to reuse c.
func (c *upConn) fresh(now time.Time) bool {
	return c.tokenExpires.IsZero() || c.tokenExpires.Sub(now) > tokenMargin
}
