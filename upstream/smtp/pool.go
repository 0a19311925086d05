package smtp

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/upstream"
)

// Connection reuse settings; tests shorten them.
var (
	// idleTimeout closes a connection nobody used for this long.
	idleTimeout = 30 * time.Second
	// tokenMargin replaces a connection whose token expires within it:
	// Exchange checks the token at AUTH only, but a connection outliving
	// its token is one an admin cannot revoke.
	tokenMargin = 5 * time.Minute
)

// pool is one mailbox's connections: those idle between messages, ready
// for the next, and a count of those open. The limiter decides how many
// may be open; the pool only reuses them.
type pool struct {
	mb      upstream.Mailbox
	limiter upstream.Limiter

	mu      sync.Mutex
	open    int     // connections open or being opened
	idle    []*conn // open and authenticated, waiting for a message
	changed chan struct{}
	closed  bool
}

// conn is a connection slot of a mailbox and, once opened, its
// authenticated connection to Exchange.
type conn struct {
	c            *client // nil until opened, and after it closed
	lease        upstream.Lease
	tokenExpires time.Time
	timer        *time.Timer   // the idle timer, while idle
	unidle       chan struct{} // closed when it stops being idle
}

// wanter is a lease that says when another holder waits for the
// mailbox's slots (a replica sharing them): an idle connection then
// gives its slot up.
type wanter interface{ Wanted() <-chan struct{} }

var errClosed = errors.New("the connection pool to Exchange is closed (shutting down)")

func newPool(mb upstream.Mailbox, l upstream.Limiter) *pool {
	return &pool{mb: mb, limiter: l, changed: make(chan struct{})}
}

// openCount is the number of connections open or being opened.
func (p *pool) openCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// broadcast wakes every waiter; p.mu is held.
func (p *pool) broadcast() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// get returns an idle connection to reuse, or a slot (conn.c nil) for the
// caller to open one in. It waits for whichever comes first: a slot from
// the limiter, or a connection another submission gives back.
func (p *pool) get(ctx context.Context) (*conn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errClosed
		}
		if n := len(p.idle); n > 0 {
			c := p.idle[n-1]
			p.idle = p.idle[:n-1]
			c.timer.Stop()
			close(c.unidle)
			p.mu.Unlock()
			return c, nil
		}
		back := p.changed
		p.mu.Unlock()

		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-back:
				cancel()
			case <-wctx.Done():
			}
		}()
		lease, err := p.limiter.Connect(wctx, p.mb)
		cancel()
		if err == nil {
			p.mu.Lock()
			p.open++
			p.mu.Unlock()
			return &conn{lease: lease}, nil
		}
		select {
		case <-back:
			if ctx.Err() == nil {
				continue // a connection came back: take it
			}
		default:
		}
		return nil, err
	}
}

// put ends a submission. A connection kept goes idle, to be reused or
// closed after idleTimeout; otherwise it closes and its slot is freed. A
// connection whose slot no longer counts within the limit (the limit was
// lowered) is not kept.
func (p *pool) put(c *conn, keep bool) {
	p.mu.Lock()
	if keep && c.c != nil && !p.closed && c.lease.Held() {
		c.timer = time.AfterFunc(idleTimeout, func() { p.expire(c) })
		c.unidle = make(chan struct{})
		if w, ok := c.lease.(wanter); ok {
			go func(unidle chan struct{}) {
				select {
				case <-w.Wanted():
					p.expire(c)
				case <-unidle:
				}
			}(c.unidle)
		}
		p.idle = append(p.idle, c)
		p.broadcast()
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if c.c != nil {
		c.c.close()
	}
	p.free(c)
}

// free gives back the slot of a connection that is now closed.
func (p *pool) free(c *conn) {
	c.lease.Release()
	p.mu.Lock()
	p.open--
	p.mu.Unlock()
}

// expire closes c if it is still idle.
func (p *pool) expire(c *conn) {
	p.mu.Lock()
	i := slices.Index(p.idle, c)
	if i < 0 {
		p.mu.Unlock()
		return
	}
	p.idle = slices.Delete(p.idle, i, i+1)
	close(c.unidle)
	p.mu.Unlock()
	c.timer.Stop()
	c.quit()
	p.free(c)
}

// close closes the idle connections and makes later gets fail;
// connections in use close when they are put back.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.broadcast()
	p.mu.Unlock()
	for _, c := range idle {
		c.timer.Stop()
		close(c.unidle)
		c.quit()
		p.free(c)
	}
}

// quit ends the session politely, so that Exchange frees the mailbox's
// connection slot at once.
func (c *conn) quit() {
	c.c.quit()
	c.c = nil
}

// fresh says whether c's token is far enough from expiry to reuse c.
func (c *conn) fresh(now time.Time) bool {
	return c.tokenExpires.IsZero() || c.tokenExpires.Sub(now) > tokenMargin
}
