package bridge

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

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

// trackedConn is a device connection as accepted, under any TLS. Besides
// being tracked, it keeps the session within session_timeout (its
// deadlines never reach past the session's end), can close itself after
// the next reply, and counts what the guard limits per connection.
type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once

	mu         sync.Mutex
	sessionEnd time.Time // zero: no limit
	release    func()    // the guard's connection slot

	// spoke: the client sent something (a command, a TLS hello).
	spoke           atomic.Bool
	closeAfterWrite atomic.Bool
	authFailures    atomic.Int32
	errors          atomic.Int32

	// The DATA phase (beginData): every read extends the read deadline,
	// and what may still be read is bounded.
	data        atomic.Bool
	dataTimeout atomic.Int64 // a time.Duration
	dataLeft    atomic.Int64
	// dataTimedOut: the device stopped sending in the middle of DATA.
	dataTimedOut atomic.Bool
	// lingerAfterWrite makes the next reply the last, followed by a
	// lingering close; lingering is set once it began.
	lingerAfterWrite atomic.Bool
	lingering        atomic.Bool
}

// Close closes the connection; a lingering one is closed by its linger.
func (c *trackedConn) Close() error {
	c.forget()
	if c.lingering.Load() {
		return nil
	}
	return c.Conn.Close()
}

// forget takes the connection out of the counts: the listener's, the
// guard's and the observer's.
func (c *trackedConn) forget() {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.releaseGuard()
		c.l.observer.ConnectionClosed(c.l.name, !c.spoke.Load())
	})
}

func (c *trackedConn) setRelease(f func()) {
	c.mu.Lock()
	c.release = f
	c.mu.Unlock()
}

func (c *trackedConn) releaseGuard() {
	c.mu.Lock()
	f := c.release
	c.release = nil
	c.mu.Unlock()
	if f != nil {
		f()
	}
}

func (c *trackedConn) setSessionEnd(t time.Time) {
	c.mu.Lock()
	c.sessionEnd = t
	c.mu.Unlock()
	c.Conn.SetDeadline(t)
}

// clamp bounds a deadline by the session's end (plus grace, for writes:
// the client is still told why it is cut off).
func (c *trackedConn) clamp(t time.Time, grace time.Duration) time.Time {
	c.mu.Lock()
	end := c.sessionEnd
	c.mu.Unlock()
	if end.IsZero() {
		return t
	}
	end = end.Add(grace)
	if t.IsZero() || t.After(end) {
		return end
	}
	return t
}

// sessionGrace is how long past session_timeout the final 421 may take to
// write.
const sessionGrace = 10 * time.Second

func (c *trackedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(c.clamp(t, 0)); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(c.clamp(t, sessionGrace))
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.clamp(t, 0))
}

func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t, sessionGrace))
}

// Write writes, then closes the connection if a reply was the last one
// (closeAfter), or starts a lingering close. A write ends the DATA phase:
// it is the reply to the message.
func (c *trackedConn) Write(p []byte) (int, error) {
	c.data.Store(false)
	n, err := c.Conn.Write(p)
	switch {
	case c.lingerAfterWrite.Load():
		c.linger()
	case c.closeAfterWrite.Load():
		c.Close()
	}
	return n, err
}

// closeAfter makes the connection close once the next reply is written.
func (c *trackedConn) closeAfter() { c.closeAfterWrite.Store(true) }

// errDataOverflow ends a DATA phase that went on far beyond the size
// limit.
var errDataOverflow = errors.New("the device went on sending far beyond the message size limit")

// beginData starts the DATA phase, until the next reply: each read may
// wait timeout for data (command_timeout is per read during DATA, not for
// the whole message: a 35 MB scan on a slow line takes minutes), and at
// most limit bytes are read. A message over the size limit is read to its
// end and discarded before the 552 (go-smtp does this), so that a device
// that writes its whole message before it reads can read the reply; limit
// bounds that discarding. Beyond limit the reply comes at once and the
// connection closes, lingering.
func (c *trackedConn) beginData(timeout time.Duration, limit int64) {
	c.dataTimeout.Store(int64(timeout))
	c.dataLeft.Store(limit)
	c.data.Store(true)
}

func (c *trackedConn) Read(p []byte) (int, error) {
	if c.lingering.Load() {
		return 0, io.EOF
	}
	if !c.data.Load() {
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.spoke.Store(true)
		}
		return n, err
	}
	left := c.dataLeft.Load()
	if left <= 0 {
		c.lingerAfterWrite.Store(true)
		return 0, errDataOverflow
	}
	if t := time.Duration(c.dataTimeout.Load()); t > 0 {
		c.SetReadDeadline(time.Now().Add(t))
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.Conn.Read(p)
	c.dataLeft.Add(-int64(n))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		// What follows on the connection is the rest of a message, not
		// commands: the reply is the last.
		c.dataTimedOut.Store(true)
		c.closeAfter()
	}
	return n, err
}

// Lingering close bounds: how long, and how much, the bridge reads and
// discards after its last reply.
const (
	lingerTimeout  = 30 * time.Second
	lingerMaxBytes = 4 << 30
)

// linger closes the connection the way HTTP servers close one whose
// client is still sending (nginx's lingering_close): the write side first,
// after the last reply, then the rest of what the client sends is read
// and discarded, unparsed, for a bounded time. Closed at once, the socket
// would answer the client's data with a reset, and the client would never
// read the reply it was sent: a device takes a reset for a network error
// and retries the same message.
func (c *trackedConn) linger() {
	if !c.lingering.CompareAndSwap(false, true) {
		return
	}
	go func() {
		if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout))
		io.CopyN(io.Discard, c.Conn, lingerMaxBytes)
		c.forget()
		c.Conn.Close()
	}()
}
