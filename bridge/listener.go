package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/guard"
)

// endpoint is one configured listener. Its socket stays bound for the
// life of the Server; what serves the connections it accepts is the
// current generation, which a reload replaces. A replaced generation
// keeps serving the sessions it has until they end, so a reload drops no
// connection, and each session sees one configuration from start to end.
type endpoint struct {
	srv     *Server
	name    string
	address string
	tracker *trackingListener

	mu   sync.Mutex
	cur  *generation
	old  []*generation // replaced, still serving their sessions
	done bool          // shutting down: no more generations
}

// generation is a go-smtp server with one version of a listener's
// settings (TLS, limits, AUTH before TLS).
type generation struct {
	cfg    listenerSettings
	limits Limits
	smtp   *smtp.Server
	queue  *connQueue

	once    sync.Once
	drained chan struct{} // closed when its sessions have all ended
}

// drain stops the generation taking connections and lets its sessions
// finish; ctx ending closes them. It returns at once.
func (g *generation) drain(ctx context.Context) {
	g.once.Do(func() {
		// Closing the queue ends Serve's Accept loop even if Serve had not
		// registered its listener with go-smtp yet, which Shutdown alone
		// would miss.
		g.queue.Close()
		go func() {
			g.smtp.Shutdown(ctx)
			close(g.drained)
		}()
	})
}

func (e *endpoint) current() *generation {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		return nil
	}
	return e.cur
}

// replace makes g the current generation and drains the previous one.
func (e *endpoint) replace(g *generation, ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		g.queue.Close()
		return
	}
	if prev := e.cur; prev != nil {
		e.old = append(e.old, prev)
		prev.drain(ctx)
	}
	e.cur = g
	go g.smtp.Serve(g.queue)
	// Forget generations whose sessions have all ended.
	live := e.old[:0]
	for _, o := range e.old {
		select {
		case <-o.drained:
		default:
			live = append(live, o)
		}
	}
	e.old = live
}

// serve accepts connections and hands each to the current generation,
// wrapped in TLS on an implicit-TLS listener, unless the listener's
// allowed_networks or the guard refuse it.
func (e *endpoint) serve(log func(error)) {
	var delay time.Duration
	for {
		c, err := e.tracker.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log(err)
			time.Sleep(delay)
			continue
		}
		delay = 0
		tc := c.(*trackedConn)
		for {
			g := e.current()
			if g == nil {
				c.Close() // shutting down
				break
			}
			if reply, reason := e.admit(g, tc); reply != nil {
				e.srv.observer.ConnectionRefused(e.name, reason)
				e.srv.refuse(g, tc, reply)
				break
			}
			if d := g.limits.SessionTimeout; d > 0 {
				tc.setSessionEnd(time.Now().Add(d))
			}
			conn := net.Conn(tc)
			if g.cfg.implicitTLS {
				conn = tls.Server(tc, g.cfg.tls)
			}
			if g.queue.push(conn) {
				break
			}
			// g was replaced between current() and push: try the new one.
			tc.releaseGuard()
		}
	}
}

// Refusals at the greeting are bounded, so that a flood of connections
// refused for a block or a connection limit costs the bridge next to
// nothing: at most maxRefusing are being answered at once, each for at
// most refuseTimeout; beyond that a refused connection is closed at once,
// without a reply.
const (
	maxRefusing   = 32
	refuseTimeout = 2 * time.Second
)

// admit checks a new connection against the listener's allowed_networks
// and the guard. It returns the greeting to refuse it with and why, or
// nil after taking a slot in the guard's connection counts.
func (e *endpoint) admit(g *generation, tc *trackedConn) (reply *smtp.SMTPError, reason string) {
	remote := remoteAddr(tc.RemoteAddr())
	if len(g.cfg.Networks) > 0 && !slices.ContainsFunc(g.cfg.Networks, func(p netip.Prefix) bool { return p.Contains(remote) }) {
		return replyNetwork, "network"
	}
	release, refused := e.srv.guard.Admit(remote)
	switch refused {
	case "":
		tc.setRelease(release)
		return nil, ""
	case guard.RefusedBlocked:
		return replyBlocked, refused
	case guard.RefusedLimitIP:
		return replyLimitIP, refused
	}
	return replyLimit, refused
}

// refuse closes a refused connection. On a plaintext listener the
// client gets the refusal as its greeting first (RFC 5321 section 3.1: a
// 554 greeting means no service), unless maxRefusing are being answered
// already. On an implicit-TLS listener it is closed at once, with no
// handshake: a handshake costs the bridge a goroutine and a TLS state for
// as long as the client takes, which is what an attacker wants.
func (s *Server) refuse(g *generation, c net.Conn, reply *smtp.SMTPError) {
	if g.cfg.implicitTLS {
		c.Close()
		return
	}
	select {
	case s.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-s.refusing }()
		defer c.Close()
		c.SetDeadline(time.Now().Add(refuseTimeout))
		c.Write(greeting(reply))
	}()
}

// shutdown stops accepting, lets every generation's sessions finish until
// ctx ends, then closes what is left.
func (e *endpoint) shutdown(ctx, sessions context.Context) error {
	e.tracker.Close()
	e.mu.Lock()
	e.done = true
	gens := append([]*generation(nil), e.old...)
	if e.cur != nil {
		gens = append(gens, e.cur)
	}
	e.mu.Unlock()
	for _, g := range gens {
		g.drain(sessions)
	}
	for _, g := range gens {
		select {
		case <-g.drained:
		case <-ctx.Done():
		}
	}
	if err := ctx.Err(); err != nil {
		e.tracker.closeAll()
		return err
	}
	return nil
}

// connQueue is the net.Listener a generation's go-smtp server serves:
// connections arrive from the endpoint's accept loop.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the server; false if the queue was closed first.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case <-q.done:
		return false
	default:
	}
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
