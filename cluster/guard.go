package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/redis"
)

// Guard shares the failed logins and blocks of the replicas' guards
// through Redis (guard.Shared). The blocks live in one hash, the
// clients unblocked (and when) in another, and a version that each
// change replaces with a random one lets a replica skip reading them when nothing
// changed; the failures of each client are a sorted set of their times.
// The three block keys share a hash tag, so that a script can touch
// them together on Redis Cluster too.
type Guard struct {
	rdb      *redis.Client
	prefix   string
	instance string
}

var _ guard.Shared = (*Guard)(nil)

// NewGuard returns the shared guard state under prefix.
func NewGuard(rdb *redis.Client, prefix, instance string) *Guard {
	return &Guard{rdb: rdb, prefix: prefix, instance: instance}
}

func (g *Guard) keys() []string {
	p := g.prefix + "{guard}:"
	return []string{p + "blocks", p + "unblocks", p + "version"}
}

// Failure implements guard.Shared.
func (g *Guard) Failure(ctx context.Context, client string, window time.Duration) (int, error) {
	n, err := failureScript.Run(ctx, g.rdb, []string{g.prefix + "fail:{" + client + "}"}, window.Milliseconds(), newID(g.instance)).Int()
	if err != nil {
		return 0, fmt.Errorf("count a failed login in Redis: %w", err)
	}
	return n, nil
}

// Block implements guard.Shared.
func (g *Guard) Block(ctx context.Context, b guard.Block) error {
	v, err := json.Marshal(b)
	if err != nil {
		return err
	}
	if err := blockScript.Run(ctx, g.rdb, g.keys(), b.Addr, v, newID(g.instance)).Err(); err != nil {
		return fmt.Errorf("share the block of %s through Redis: %w", b.Addr, err)
	}
	return nil
}

// Unblock implements guard.Shared.
func (g *Guard) Unblock(ctx context.Context, client string) (bool, error) {
	n, err := unblockScript.Run(ctx, g.rdb, g.keys(), client, newID(g.instance)).Int()
	if err != nil {
		return false, fmt.Errorf("lift the block of %s through Redis: %w", client, err)
	}
	if err := g.rdb.Do(ctx, "DEL", g.prefix+"fail:{"+client+"}").Err(); err != nil {
		return n == 1, fmt.Errorf("forget the failed logins of %s in Redis: %w", client, err)
	}
	return n == 1, nil
}

// Blocks implements guard.Shared. Blocks that ended and unblocks older
// than keep are dropped from Redis on the way.
func (g *Guard) Blocks(ctx context.Context, version string, keep time.Duration) ([]guard.Block, map[string]time.Time, string, bool, error) {
	k := g.keys()
	cur, err := g.rdb.Do(ctx, "GET", k[2]).Text()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, "", false, fmt.Errorf("read the shared blocks' version: %w", err)
	}
	if cur == "" {
		// A Redis that never saw a block, or forgot them in a restart:
		// distinct from any version read before, so that this replica
		// shares its blocks again.
		cur = "none"
	}
	if cur == version {
		return nil, nil, cur, false, nil
	}
	raw, err := g.rdb.Do(ctx, "HGETALL", k[0]).StringMap()
	if err != nil {
		return nil, nil, "", false, fmt.Errorf("read the shared blocks: %w", err)
	}
	un, err := g.rdb.Do(ctx, "HGETALL", k[1]).StringMap()
	if err != nil {
		return nil, nil, "", false, fmt.Errorf("read the shared unblocks: %w", err)
	}
	now := time.Now()
	var blocks []guard.Block
	var ended []string
	for client, v := range raw {
		var b guard.Block
		if json.Unmarshal([]byte(v), &b) != nil || !now.Before(b.Until) {
			ended = append(ended, client)
			continue
		}
		blocks = append(blocks, b)
	}
	unblocked := map[string]time.Time{}
	var old []string
	for client, v := range un {
		ms, _ := strconv.ParseInt(v, 10, 64)
		at := time.UnixMilli(ms)
		if now.Sub(at) > keep {
			old = append(old, client)
			continue
		}
		unblocked[client] = at
	}
	// Housekeeping; a failure here costs nothing but space.
	if len(ended) > 0 {
		hdel(ctx, g.rdb, k[0], ended)
	}
	if len(old) > 0 {
		hdel(ctx, g.rdb, k[1], old)
	}
	return blocks, unblocked, cur, true, nil
}

var (
	// failure: KEYS[1] the client's failures; ARGV window (ms), id.
	// Returns the failures within the window, this one included.
	failureScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])`)
	// block: KEYS blocks, unblocks, version; ARGV client, the block
	// (JSON), a new version. A block made after an unblock supersedes it.
	blockScript = redis.NewScript(`
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3])
return 1`)
	// unblock: KEYS blocks, unblocks, version; ARGV client, a new
	// version. Returns 1
	// when a block was shared. The unblock is kept with its time, so
	// that a replica holding the block from before lifts it too.
	unblockScript = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local was = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], now)
redis.call('SET', KEYS[3], ARGV[2])
return was`)
)
