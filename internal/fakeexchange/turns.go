package fakeexchange

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Round trips are counted by holding the server's replies back until the
// client has nothing more to send: when the server wants to read and no
// byte arrives within the window, the client is waiting for a reply, and
// the replies held go out as one turn. A client that pipelines a
// message's commands sends them all before it waits, so they cost one
// turn; one that waits for each reply costs a turn per command. The
// window is the slack allowed between the writes of one flight on a busy
// machine; it delays every turn by as much, so it is off unless a test
// asks for it.

// turnListener makes each connection a turnConn.
type turnListener struct {
	net.Listener
	s *Server
}

func (l turnListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &turnConn{Conn: c, window: &l.s.window, s: l.s}
	l.s.mu.Lock()
	l.s.conns[tc] = struct{}{}
	l.s.mu.Unlock()
	return tc, nil
}

// DropConnections closes every connection, as Exchange does with those
// that idle: a client finds out at its next command.
func (s *Server) DropConnections() {
	s.mu.Lock()
	conns := make([]*turnConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Conn.Close()
	}
}

// turnConn counts a connection's turns.
type turnConn struct {
	net.Conn
	window *atomic.Int64
	s      *Server

	mu       sync.Mutex
	held     []byte // replies not yet sent
	deadline time.Time
	turns    int
}

func (c *turnConn) Write(p []byte) (int, error) {
	if c.window.Load() == 0 {
		return c.Conn.Write(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held = append(c.held, p...)
	return len(p), nil
}

func (c *turnConn) Read(p []byte) (int, error) {
	window := time.Duration(c.window.Load())
	c.mu.Lock()
	held, deadline := len(c.held) > 0, c.deadline
	c.mu.Unlock()
	if held && window > 0 {
		// Anything more of the client's flight?
		wait := time.Now().Add(window)
		if !deadline.IsZero() && deadline.Before(wait) {
			wait = deadline
		}
		c.Conn.SetReadDeadline(wait)
		n, err := c.Conn.Read(p)
		c.Conn.SetReadDeadline(deadline)
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) || !deadline.IsZero() && !time.Now().Before(deadline) {
			return n, err
		}
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

// flush sends the replies held: the client has their turn.
func (c *turnConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.held) == 0 {
		return nil
	}
	c.turns++
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}

func (c *turnConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *turnConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *turnConn) Close() error {
	c.flush()
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// Turns counts the turns so far.
func (c *turnConn) Turns() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.turns
}

// turnsOf finds the turnConn under a session's connection (TLS on top
// after STARTTLS).
func turnsOf(c net.Conn) *turnConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*turnConn)
	return t
}

// CountRoundTrips makes the server count each message's round trips
// (Message.RoundTrips), holding its replies until the client has sent
// nothing for window; 0 turns it off. Every reply then waits window:
// only tests that count should ask for it.
func (s *Server) CountRoundTrips(window time.Duration) {
	s.window.Store(int64(window))
}
