package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strconv"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/redis"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// Redis says how to reach Redis: one of Address, Sentinel (with
// MasterName) or Cluster addresses.
type Redis struct {
	Address            string
	SentinelAddresses  []string
	MasterName         string
	ClusterAddresses   []string
	Username, Password string
	TLS                bool
	// RootCAs replaces the system's CAs for Redis's certificate; nil:
	// the system's.
	RootCAs *x509.CertPool
}

// Client returns a client for r. It connects on first use; a Redis that
// does not answer makes the limiter fall back, it does not stop the
// bridge. Every call gives up after opTimeout: a slow Redis is a down
// one.
func Client(r Redis) *redis.Client {
	var tlsCfg *tls.Config
	if r.TLS {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: r.RootCAs}
	}
	return redis.New(redis.Options{Addr: r.Address, SentinelAddrs: r.SentinelAddresses, MasterName: r.MasterName,
		ClusterAddrs: r.ClusterAddresses, Username: r.Username, Password: r.Password, TLS: tlsCfg, Timeout: opTimeout})
}

// hdel deletes fields of the hash key: housekeeping, whose failure costs
// only space.
func hdel(ctx context.Context, rdb *redis.Client, key string, fields []string) {
	args := make([]any, 0, 2+len(fields))
	args = append(args, "HDEL", key)
	for _, f := range fields {
		args = append(args, f)
	}
	rdb.Do(ctx, args...)
}

// Recipients returns, per mailbox this replica has submitted for, the
// recipients counted in the rolling day across the replicas (the status
// page's quota table).
func (l *Limiter) Recipients() map[upstream.Mailbox]int {
	l.mu.Lock()
	var boxes []upstream.Mailbox
	for mb := range l.seen {
		boxes = append(boxes, mb)
	}
	day := l.day
	l.mu.Unlock()
	unit := max(day/upstream.DayBuckets, time.Millisecond).Milliseconds()
	now := time.Now().UnixMilli() / unit
	out := map[upstream.Mailbox]int{}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	for _, mb := range boxes {
		h, err := l.rdb.Do(ctx, "HGETALL", l.key("rcpt", mb)).StringMap()
		if err != nil {
			return out
		}
		n := 0
		for k, v := range h {
			u, _ := strconv.ParseInt(k, 10, 64)
			c, _ := strconv.Atoi(v)
			if u > now-upstream.DayBuckets {
				n += c
			}
		}
		out[mb] = n
	}
	return out
}

// DailyLimit is a tenant's recipients per day.
func (l *Limiter) DailyLimit(tenant string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limits[tenant].RecipientsPerDay
}
