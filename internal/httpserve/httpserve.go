// Package httpserve runs the bridge's http listener (status page,
// metrics, probes, admin API) with bounds a client cannot stretch: time
// to send a request and to read the answer, idle time, header size, and
// connections at once.
package httpserve

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// The bounds. Every request the listener serves is small (no bodies
// beyond a few bytes) and quick; the largest answer, a queue listing of
// many thousand messages, takes well under WriteTimeout on loopback.
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 30 * time.Second
	WriteTimeout      = 60 * time.Second
	IdleTimeout       = 60 * time.Second
	MaxHeaderBytes    = 16 << 10
	// MaxConnections bounds the connections open at once; beyond it a
	// new one is closed at once rather than left to wait.
	MaxConnections = 128
)

// Server returns an http.Server for h with the bounds.
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// Limit wraps ln so that at most max connections are open at once; those
// beyond are closed as soon as they are accepted.
func Limit(ln net.Listener, max int) net.Listener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, max)}
}

type limitListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			c.Close()
		}
	}
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
