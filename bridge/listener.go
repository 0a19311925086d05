package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// endpoint is one configured listener. Its socket stays bound for the
// life of the Server; what serves the connections it accepts is the
// current generation, which a reload replaces. A replaced generation
// keeps serving the sessions it has until they end, so a reload drops no
// connection, and each session sees one configuration from start to end.
type endpoint struct {
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
	cfg   listenerSettings
	smtp  *smtp.Server
	queue *connQueue

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
// wrapped in TLS on an implicit-TLS listener.
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
		for {
			g := e.current()
			if g == nil {
				c.Close() // shutting down
				break
			}
			conn := c
			if g.cfg.implicitTLS {
				conn = tls.Server(c, g.cfg.tls)
			}
			if g.queue.push(conn) {
				break
			}
			// g was replaced between current() and push: try the new one.
		}
	}
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

// trackingListener remembers open connections, so that Shutdown can close
// the ones still open when its grace period ends (go-smtp's Shutdown only
// waits for them), and tells the observer about each connection.
type trackingListener struct {
	net.Listener
	name     string
	observer Observer
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	l.observer.Connection(l.name)
	return tc, nil
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.observer.ConnectionClosed(c.l.name)
	})
	return c.Conn.Close()
}
