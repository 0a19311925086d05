package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/countio"
)

// Per server: connections kept idle, and open at once.
const (
	maxIdle   = 8
	maxActive = 64
)

// conn is one connection to one server.
type conn struct {
	nc     net.Conn
	in     *countio.Reader // what was read from nc
	rd     *reader
	buf    []byte
	broken bool // an I/O or protocol error: close, do not reuse
}

// errRead is an error after part of an answer was read: the server got
// the command.
type errRead struct{ err error }

func (e errRead) Error() string { return e.err.Error() }
func (e errRead) Unwrap() error { return e.err }

// roundTrip sends cmds and reads their replies, within timeout and ctx.
func (cn *conn) roundTrip(ctx context.Context, timeout time.Duration, cmds [][]any) ([]any, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := cn.nc.SetDeadline(deadline); err != nil {
		cn.broken = true
		return nil, err
	}
	// Cancelling ctx ends a read or write at once.
	stop := context.AfterFunc(ctx, func() { cn.nc.SetDeadline(time.Unix(1, 0)) })
	out, err := cn.exchange(cmds)
	if !stop() {
		// The cancellation may set its deadline after this call's end,
		// under the next one's: the connection is not reused.
		cn.broken = true
	}
	if err != nil {
		cn.broken = true
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
	}
	return out, err
}

func (cn *conn) exchange(cmds [][]any) ([]any, error) {
	b := cn.buf[:0]
	for _, c := range cmds {
		var err error
		if b, err = appendCommand(b, c); err != nil {
			return nil, err
		}
	}
	cn.buf = b
	if _, err := cn.nc.Write(b); err != nil {
		return nil, err
	}
	if cap(cn.buf) > 64<<10 {
		cn.buf = nil
	}
	out := make([]any, len(cmds))
	before := cn.in.N
	for i := range cmds {
		v, err := cn.rd.reply()
		if err != nil {
			if cn.in.N > before {
				err = errRead{err}
			}
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// pool keeps a server's idle connections, and bounds the open ones.
type pool struct {
	addr   string
	dial   func(ctx context.Context, addr string) (*conn, error)
	active chan struct{}

	mu     sync.Mutex
	idle   []*conn
	closed bool
}

func newPool(addr string, dial func(context.Context, string) (*conn, error)) *pool {
	return &pool{addr: addr, dial: dial, active: make(chan struct{}, maxActive)}
}

// get returns an idle connection (reused) or a new one; put gives it back.
func (p *pool) get(ctx context.Context, fresh bool) (cn *conn, reused bool, err error) {
	select {
	case p.active <- struct{}{}:
	case <-ctx.Done():
		return nil, false, context.Cause(ctx)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.active
		return nil, false, errClosed
	}
	if n := len(p.idle); n > 0 && !fresh {
		cn = p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return cn, true, nil
	}
	p.mu.Unlock()
	cn, err = p.dial(ctx, p.addr)
	if err != nil {
		<-p.active
		return nil, false, err
	}
	return cn, false, nil
}

func (p *pool) put(cn *conn) {
	p.mu.Lock()
	if cn.broken || p.closed || len(p.idle) >= maxIdle {
		p.mu.Unlock()
		cn.nc.Close()
	} else {
		p.idle = append(p.idle, cn)
		p.mu.Unlock()
	}
	<-p.active
}

// close closes the idle connections, and the busy ones as they come
// back.
func (p *pool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, cn := range idle {
		cn.nc.Close()
	}
}

var errClosed = errors.New("redis: client closed")

// dial connects to addr, with TLS and AUTH when configured, within the
// timeout and ctx.
func (c *Client) dial(ctx context.Context, addr string, auth bool) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", addr, err)
	}
	if c.o.TLS != nil {
		cfg := c.o.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("redis %s: TLS: %w", addr, err)
		}
		nc = tc
	}
	cn := &conn{nc: nc, in: &countio.Reader{R: nc}}
	cn.rd = newReader(cn.in)
	if auth && c.o.Password != "" {
		args := []any{"AUTH", c.o.Password}
		if c.o.Username != "" {
			args = []any{"AUTH", c.o.Username, c.o.Password}
		}
		out, err := cn.roundTrip(ctx, c.o.Timeout, [][]any{args})
		if e, ok := out[0].(Error); ok && err == nil {
			err = e
		}
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("redis %s: AUTH: %w", addr, err)
		}
	}
	return cn, nil
}
