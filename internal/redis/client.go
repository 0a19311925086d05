package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options say how to reach Redis: one of Addr, SentinelAddrs (with
// MasterName) or ClusterAddrs.
type Options struct {
	Addr string
	// SentinelAddrs are Sentinels, asked for the address of the primary
	// they know as MasterName. They are not sent Username and Password.
	SentinelAddrs []string
	MasterName    string
	// ClusterAddrs are some nodes of a Redis Cluster.
	ClusterAddrs       []string
	Username, Password string
	// TLS, when set, is used for every connection (Sentinels too); its
	// ServerName defaults to the host of the address dialled.
	TLS *tls.Config
	// Timeout bounds a dial (with TLS and AUTH) and each round trip; 1s
	// when zero.
	Timeout time.Duration
}

// Client runs commands on the server or servers of Options. It connects
// on first use and keeps a few connections per server; it is safe for
// concurrent use.
type Client struct {
	o Options

	mu     sync.Mutex
	pools  map[string]*pool
	closed bool
	master string    // Sentinel: the primary's address; "" to ask
	asked  time.Time // Sentinel: when master was given
	// sentinels are the Sentinels, the last that answered first.
	sentinels []string
	slots     *slotMap   // Cluster: nil to ask
	nodes     []string   // Cluster: the nodes last seen, asked first
	reload    sync.Mutex // one question to Sentinel or the cluster at a time
}

// New returns a client for o.
func New(o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	return &Client{o: o, pools: map[string]*pool{}, sentinels: slices.Clone(o.SentinelAddrs)}
}

// Close closes the connections; the client answers nothing after it.
func (c *Client) Close() error {
	c.mu.Lock()
	pools := c.pools
	c.pools, c.closed = map[string]*pool{}, true
	c.mu.Unlock()
	for _, p := range pools {
		p.close()
	}
	return nil
}

// Do runs one command, such as Do(ctx, "HGETALL", key).
func (c *Client) Do(ctx context.Context, args ...any) *Reply {
	return c.Pipeline(ctx, args)[0]
}

// Pipeline runs commands in one round trip per server and returns their
// replies in order. They are not a transaction: each has its own reply,
// error or not.
func (c *Client) Pipeline(ctx context.Context, cmds ...[]any) []*Reply {
	out := make([]*Reply, len(cmds))
	switch {
	case len(c.o.ClusterAddrs) > 0:
		c.clusterRun(ctx, cmds, out)
	case len(c.o.SentinelAddrs) > 0:
		addr, err := c.primary(ctx)
		if err != nil {
			for i := range out {
				out[i] = &Reply{err: err}
			}
			return out
		}
		c.exec(ctx, addr, cmds, out)
		for _, r := range out {
			if failover(r.err) {
				c.forgetPrimary(addr)
				break
			}
		}
	default:
		c.exec(ctx, c.o.Addr, cmds, out)
	}
	return out
}

func (c *Client) exec(ctx context.Context, addr string, cmds [][]any, out []*Reply) {
	vals, err := c.send(ctx, addr, true, cmds)
	for i := range cmds {
		if err != nil {
			out[i] = &Reply{err: err}
		} else {
			out[i] = newReply(vals[i], nil)
		}
	}
}

// send runs cmds on addr. A connection that waited idle may have been
// closed by a server that restarted, or by its idle timeout: when it
// fails before anything was read back with the server's end closed,
// cmds go once more on a new connection. A command the server ran just
// before it died counts twice then; a count twice only holds the
// limits tighter.
func (c *Client) send(ctx context.Context, addr string, auth bool, cmds [][]any) ([]any, error) {
	p, err := c.pool(addr, auth)
	if err != nil {
		return nil, err
	}
	fresh := false
	for {
		cn, reused, err := p.get(ctx, fresh)
		if err != nil {
			return nil, err
		}
		vals, err := cn.roundTrip(ctx, c.o.Timeout, cmds)
		p.put(cn)
		if err != nil && reused && !fresh && ctx.Err() == nil && closedByServer(err) {
			p.dropIdle()
			fresh = true
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("redis %s: %w", addr, err)
		}
		return vals, nil
	}
}

func closedByServer(err error) bool {
	var partial errRead
	if errors.As(err, &partial) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *Client) pool(addr string, auth bool) (*pool, error) {
	key := addr
	if !auth {
		key = "noauth " + addr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	p := c.pools[key]
	if p == nil {
		p = newPool(addr, func(ctx context.Context, addr string) (*conn, error) { return c.dial(ctx, addr, auth) })
		c.pools[key] = p
	}
	return p, nil
}

// dropPool closes addr's connections, for a server that is no longer
// the one to ask.
func (c *Client) dropPool(addr string) {
	c.mu.Lock()
	p := c.pools[addr]
	delete(c.pools, addr)
	c.mu.Unlock()
	if p != nil {
		p.close()
	}
}

func (p *pool) dropIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, cn := range idle {
		cn.nc.Close()
	}
}

// primary returns the address of the primary Sentinel knows. It asks
// again every second: after a failover the old primary takes writes
// until Sentinel turns it into a replica, some ten seconds later, and
// what is written there meanwhile is lost. While no Sentinel answers,
// the primary last given stays the one.
func (c *Client) primary(ctx context.Context) (string, error) {
	c.mu.Lock()
	m, fresh := c.master, time.Since(c.asked) < time.Second
	c.mu.Unlock()
	if m != "" && fresh {
		return m, nil
	}
	if m != "" {
		if !c.reload.TryLock() {
			return m, nil // being asked
		}
	} else {
		c.reload.Lock()
	}
	defer c.reload.Unlock()
	c.mu.Lock()
	m, fresh = c.master, time.Since(c.asked) < time.Second
	c.mu.Unlock()
	if m != "" && fresh {
		return m, nil
	}
	var errs []error
	c.mu.Lock()
	sentinels := slices.Clone(c.sentinels)
	c.mu.Unlock()
	for i, s := range sentinels {
		addr, err := c.askSentinel(ctx, s)
		if err == nil {
			c.mu.Lock()
			old := c.master
			c.master, c.asked = addr, time.Now()
			// The one that answered is asked first from now on.
			c.sentinels = append([]string{s}, slices.Delete(sentinels, i, i+1)...)
			c.mu.Unlock()
			if old != "" && old != addr {
				c.dropPool(old)
			}
			return addr, nil
		}
		errs = append(errs, fmt.Errorf("sentinel %s: %w", s, err))
		if ctx.Err() != nil {
			break
		}
	}
	if m != "" {
		return m, nil
	}
	return "", fmt.Errorf("redis: no Sentinel gave the primary's address: %w", errors.Join(errs...))
}

func (c *Client) askSentinel(ctx context.Context, sentinel string) (string, error) {
	vals, err := c.send(ctx, sentinel, false, [][]any{{"SENTINEL", "GET-MASTER-ADDR-BY-NAME", c.o.MasterName}})
	if err != nil {
		return "", err
	}
	a, err := newReply(vals[0], nil).Slice()
	if errors.Is(err, Nil) {
		return "", fmt.Errorf("Sentinel knows no primary named %q", c.o.MasterName)
	}
	if err != nil {
		return "", err
	}
	if len(a) == 2 {
		host, ok1 := a[0].(string)
		port, ok2 := a[1].(string)
		if ok1 && ok2 {
			return net.JoinHostPort(host, port), nil
		}
	}
	return "", fmt.Errorf("Sentinel's answer is not a host and a port")
}

func (c *Client) forgetPrimary(addr string) {
	c.mu.Lock()
	if c.master == addr {
		c.master = ""
	}
	c.mu.Unlock()
	c.dropPool(addr)
}

// failover says whether err means the primary may have changed: it did
// not answer, or it answers as a replica.
func failover(err error) bool {
	var e Error
	switch {
	case err == nil, errors.Is(err, Nil), errors.Is(err, context.Canceled):
		return false
	case errors.As(err, &e):
		s := string(e)
		return strings.HasPrefix(s, "READONLY") || strings.HasPrefix(s, "LOADING") || strings.HasPrefix(s, "MASTERDOWN")
	}
	return true
}

// slotMap is which node serves each of a Redis Cluster's slots.
type slotMap struct {
	nodes []string
	slot  [slots]uint16 // index in nodes + 1; 0: no node
}

const slots = 16384

func (m *slotMap) node(slot int) string {
	if i := m.slot[slot]; i > 0 {
		return m.nodes[i-1]
	}
	return ""
}

// clusterRun sends each command to the node of its key's slot, one
// pipeline per node, then follows the redirections one command at a
// time.
func (c *Client) clusterRun(ctx context.Context, cmds [][]any, out []*Reply) {
	m, err := c.slotMap(ctx)
	if err != nil {
		for i := range out {
			out[i] = &Reply{err: err}
		}
		return
	}
	groups := map[string][]int{}
	var order []string
	for i, cmd := range cmds {
		addr := m.nodes[0]
		if k, ok := keyOf(cmd); ok {
			s := slotOf(k)
			if addr = m.node(s); addr == "" {
				out[i] = &Reply{err: fmt.Errorf("redis: no node of the cluster serves slot %d", s)}
				continue
			}
		}
		if _, ok := groups[addr]; !ok {
			order = append(order, addr)
		}
		groups[addr] = append(groups[addr], i)
	}
	for _, addr := range order {
		idx := groups[addr]
		sub := make([][]any, len(idx))
		for j, i := range idx {
			sub[j] = cmds[i]
		}
		vals, err := c.send(ctx, addr, true, sub)
		if err != nil {
			c.forgetSlots()
		}
		for j, i := range idx {
			if err != nil {
				out[i] = &Reply{err: err}
				continue
			}
			out[i] = newReply(vals[j], nil)
			if _, _, ok := redirection(out[i].err, addr); ok {
				out[i] = c.redirect(ctx, cmds[i], out[i].err, addr)
			}
		}
	}
}

// redirect follows MOVED and ASK, and tries again after TRYAGAIN and
// CLUSTERDOWN (a slot being moved, a cluster still forming or failing
// over: the command did not run), five times at most.
func (c *Client) redirect(ctx context.Context, cmd []any, err error, from string) *Reply {
	pause := 10 * time.Millisecond
	for range 5 {
		ask, addr, ok := redirection(err, from)
		if !ok {
			break
		}
		cmds := [][]any{cmd}
		switch {
		case ask:
			cmds = [][]any{{"ASKING"}, cmd}
		case addr == from:
			c.forgetSlots()
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return &Reply{err: fmt.Errorf("%w (%w)", context.Cause(ctx), err)}
			}
			pause *= 2
			if m, e := c.slotMap(ctx); e == nil {
				if k, ok := keyOf(cmd); ok && m.node(slotOf(k)) != "" {
					addr = m.node(slotOf(k))
				}
			}
		default:
			c.forgetSlots()
		}
		vals, e := c.send(ctx, addr, true, cmds)
		if e != nil {
			return &Reply{err: e}
		}
		r := newReply(vals[len(vals)-1], nil)
		if _, _, again := redirection(r.err, addr); !again {
			return r
		}
		err, from = r.err, addr
	}
	return &Reply{err: fmt.Errorf("redis: redirected or told to try again more than five times: %w", err)}
}

// redirection reads "MOVED 3999 host:port" and "ASK 3999 host:port" (an
// empty host is from's), and TRYAGAIN and CLUSTERDOWN, which send the
// command again to from.
func redirection(err error, from string) (ask bool, addr string, ok bool) {
	e, isErr := err.(Error)
	if !isErr {
		return false, "", false
	}
	f := strings.Fields(string(e))
	switch {
	case len(f) > 0 && (f[0] == "TRYAGAIN" || f[0] == "CLUSTERDOWN"):
		return false, from, true
	case len(f) != 3 || (f[0] != "MOVED" && f[0] != "ASK"):
		return false, "", false
	}
	host, port, err2 := net.SplitHostPort(f[2])
	if err2 != nil {
		return false, "", false
	}
	if host == "" {
		host, _, _ = net.SplitHostPort(from)
	}
	return f[0] == "ASK", net.JoinHostPort(host, port), true
}

func (c *Client) forgetSlots() {
	c.mu.Lock()
	c.slots = nil
	c.mu.Unlock()
}

// slotMap returns the cluster's slots, asking the nodes last seen and
// then the configured ones when it does not know them.
func (c *Client) slotMap(ctx context.Context) (*slotMap, error) {
	c.mu.Lock()
	m := c.slots
	c.mu.Unlock()
	if m != nil {
		return m, nil
	}
	c.reload.Lock()
	defer c.reload.Unlock()
	c.mu.Lock()
	m, known := c.slots, c.nodes
	c.mu.Unlock()
	if m != nil {
		return m, nil
	}
	var errs []error
	tried := map[string]bool{}
	// The nodes last seen in a random order (one that stopped answering
	// is not always asked first), then the configured ones.
	known = slices.Clone(known)
	rand.Shuffle(len(known), func(i, j int) { known[i], known[j] = known[j], known[i] })
	for _, a := range append(known, c.o.ClusterAddrs...) {
		if tried[a] {
			continue
		}
		tried[a] = true
		vals, err := c.send(ctx, a, true, [][]any{{"CLUSTER", "SLOTS"}})
		if err == nil {
			if m, err = parseSlots(newReply(vals[0], nil), a); err == nil {
				c.mu.Lock()
				c.slots, c.nodes = m, m.nodes
				c.mu.Unlock()
				return m, nil
			}
		}
		errs = append(errs, fmt.Errorf("%s: %w", a, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("redis: no node of the cluster gave its slots: %w", errors.Join(errs...))
}

// parseSlots reads CLUSTER SLOTS: [start, end, [host, port, …], replicas…]…
func parseSlots(r *Reply, from string) (*slotMap, error) {
	ranges, err := r.Slice()
	if err != nil {
		return nil, err
	}
	m := &slotMap{}
	index := map[string]uint16{}
	for _, rg := range ranges {
		f, ok := rg.([]any)
		if !ok || len(f) < 3 {
			return nil, fmt.Errorf("redis: CLUSTER SLOTS: a range that is not [start, end, node]")
		}
		start, err1 := toInt64(f[0])
		end, err2 := toInt64(f[1])
		node, ok := f[2].([]any)
		if err1 != nil || err2 != nil || !ok || len(node) < 2 || start < 0 || end >= slots || start > end {
			return nil, fmt.Errorf("redis: CLUSTER SLOTS: a malformed range")
		}
		host, _ := node[0].(string)
		port, err := toInt64(node[1])
		if err != nil {
			return nil, fmt.Errorf("redis: CLUSTER SLOTS: a node without a port")
		}
		if host == "" || host == "?" {
			host, _, _ = net.SplitHostPort(from)
		}
		addr := net.JoinHostPort(host, strconv.FormatInt(port, 10))
		i, ok := index[addr]
		if !ok {
			m.nodes = append(m.nodes, addr)
			i = uint16(len(m.nodes))
			index[addr] = i
		}
		for s := start; s <= end; s++ {
			m.slot[s] = i
		}
	}
	if len(m.nodes) == 0 {
		return nil, fmt.Errorf("redis: CLUSTER SLOTS: no slot is served")
	}
	return m, nil
}

// keyOf returns the key a command's slot is that of.
func keyOf(cmd []any) (string, bool) {
	name, _ := cmd[0].(string)
	switch strings.ToUpper(name) {
	case "EVAL", "EVALSHA":
		if len(cmd) > 3 {
			if n, err := toInt64(fmt.Sprint(cmd[2])); err == nil && n > 0 {
				k, ok := cmd[3].(string)
				return k, ok
			}
		}
		return "", false
	case "PING", "TIME", "ASKING", "AUTH", "CLUSTER", "SCRIPT", "INFO", "DBSIZE", "FLUSHALL", "FLUSHDB":
		return "", false
	}
	if len(cmd) > 1 {
		k, ok := cmd[1].(string)
		return k, ok
	}
	return "", false
}

// slotOf is the slot of key: CRC16 of its hash tag (the text between
// its first { and the next }, when not empty) or of the whole key.
func slotOf(key string) int {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	return int(crc16(key)) % slots
}

// crc16 is CRC-16/XMODEM, the one Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
