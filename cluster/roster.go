package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/redis"
)

// Replica is what one replica says of its own spool, for the others'
// status pages and `smtpbridge queue`: each replica delivers only what
// it holds.
type Replica struct {
	Instance string    `json:"instance"`
	Queued   int       `json:"queued"`
	Deferred int       `json:"deferred"`
	Dead     int       `json:"dead"`
	Oldest   time.Time `json:"oldest,omitzero"`
	At       time.Time `json:"at"` // when it said so
}

// Roster keeps the replicas' accounts of their spools in one Redis hash.
type Roster struct {
	rdb      *redis.Client
	key      string
	instance string
}

// NewRoster returns the roster under prefix, where this replica is
// instance.
func NewRoster(rdb *redis.Client, prefix, instance string) *Roster {
	return &Roster{rdb: rdb, key: prefix + "replicas", instance: instance}
}

// Publish records this replica's account.
func (r *Roster) Publish(ctx context.Context, rep Replica) error {
	rep.Instance, rep.At = r.instance, time.Now()
	v, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if err := r.rdb.Do(ctx, "HSET", r.key, r.instance, v).Err(); err != nil {
		return fmt.Errorf("publish this replica's queue in Redis: %w", err)
	}
	return nil
}

// Replicas returns the accounts heard within keep, by instance; older
// ones (replicas scaled down, or renamed) are dropped from Redis after a
// day, so that a replica that went away with mail in its spool stays
// visible for that long.
func (r *Roster) Replicas(ctx context.Context, keep time.Duration) ([]Replica, error) {
	h, err := r.rdb.Do(ctx, "HGETALL", r.key).StringMap()
	if err != nil {
		return nil, fmt.Errorf("read the replicas' queues from Redis: %w", err)
	}
	var out []Replica
	var gone []string
	for name, v := range h {
		var rep Replica
		if json.Unmarshal([]byte(v), &rep) != nil || time.Since(rep.At) > 24*time.Hour {
			gone = append(gone, name)
			continue
		}
		if time.Since(rep.At) <= keep || rep.Queued+rep.Deferred > 0 {
			out = append(out, rep)
		}
	}
	if len(gone) > 0 {
		hdel(ctx, r.rdb, r.key, gone)
	}
	slices.SortFunc(out, func(a, b Replica) int { return strings.Compare(a.Instance, b.Instance) })
	return out, nil
}
