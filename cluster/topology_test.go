//go:build integration

package cluster

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// Each way cluster.redis can reach Redis (one server, Sentinel, a Redis
// Cluster), each against real redis-servers and through the client the
// bridge makes (Client): two replicas share a mailbox's connections, its
// rate and its day's recipients, the guard's blocks and the roster.
// Every script's keys must hash to one slot for a Redis Cluster to run
// it (CROSSSLOT otherwise); the pipeline that reads every mailbox's
// window spans slots.
func TestTopologies(t *testing.T) {
	shorten(t)
	for _, tc := range []struct {
		name  string
		redis func(t *testing.T) Redis
	}{
		{"one server", func(t *testing.T) Redis { return Redis{Address: testenv.StartRedis(t).Addr} }},
		{"sentinel", func(t *testing.T) Redis {
			_, s := testenv.StartRedisSentinel(t, "mymaster")
			return Redis{SentinelAddresses: []string{s}, MasterName: "mymaster"}
		}},
		{"cluster", func(t *testing.T) Redis { return Redis{ClusterAddresses: testenv.StartRedisCluster(t, 3)} }},
		{"one server over TLS, with a password", func(t *testing.T) Redis {
			addr, ca := testenv.StartRedisTLS(t, "redis-pass-word")
			return Redis{Address: addr, TLS: true, RootCAs: ca, Password: "redis-pass-word"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.redis(t)
			logs := &syncbuf.Buffer{}
			lim := upstream.Limits{Connections: 1, PerMinute: 100, RecipientsPerDay: 10}
			// Mailboxes of two tenants: their keys fall in different slots.
			boxes := []upstream.Mailbox{upstream.MailboxOf("contoso", "scanner@contoso.example"), upstream.MailboxOf("fabrikam", "mfp@fabrikam.example")}
			var ls []*Limiter
			var gs []*guard.Guard
			var rosters []*Roster
			for _, name := range []string{"replica-a", "replica-b"} {
				rdb := Client(r)
				t.Cleanup(func() { rdb.Close() })
				l := New(Options{Client: rdb, Prefix: "smtpbridge:", Instance: name,
					Limits: map[string]upstream.Limits{"contoso": lim, "fabrikam": lim}, Log: zerolog.New(logs).With().Str("replica", name).Logger()})
				t.Cleanup(l.Close)
				ls = append(ls, l)
				g := guard.New(guard.Settings{MaxFailures: 2, Window: time.Minute, Block: time.Hour})
				g.Share(NewGuard(rdb, "smtpbridge:", name), name)
				gs = append(gs, g)
				rosters = append(rosters, NewRoster(rdb, "smtpbridge:", name))
			}
			ctx := context.Background()

			// Connections: one per mailbox across both replicas.
			for _, mb := range boxes {
				le, err := ls[0].Connect(ctx, mb)
				if err != nil {
					t.Fatalf("connect %s: %v\n%s", mb.Address, err, logs.String())
				}
				wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				if _, err := ls[1].Connect(wctx, mb); err == nil {
					t.Errorf("%s: a second connection across the replicas (limit 1)", mb.Address)
				}
				cancel()
				le.Release()
				le2, err := ls[1].Connect(ctx, mb)
				if err != nil {
					t.Fatalf("connect %s after the release: %v", mb.Address, err)
				}
				le2.Release()
			}

			// Rates and recipients: 6 + 4 on one mailbox fill its day.
			for i, n := range []int{6, 4} {
				done, err := ls[i].Submit(ctx, boxes[0], n)
				if err != nil {
					t.Fatalf("submit: %v\n%s", err, logs.String())
				}
				done(n)
			}
			if _, err := ls[0].Submit(ctx, boxes[0], 1); err == nil {
				t.Error("the day's 10 recipients were passed across the replicas")
			}
			if _, err := ls[1].Submit(ctx, boxes[1], 1); err != nil {
				t.Errorf("the other mailbox: %v", err)
			}
			if got := ls[0].Recipients()[boxes[0]]; got != 10 {
				t.Errorf("Recipients: %d for %s, want 10", got, boxes[0].Address)
			}
			// The background look at every mailbox's window (a pipeline
			// over both slots) runs without an error.
			time.Sleep(10 * pollEvery)

			// The guard: failures on both replicas block on both.
			addr := netip.MustParseAddr("192.0.2.7")
			gs[0].AuthFailed(addr, "mfp", "mfp")
			if _, b := gs[1].AuthFailed(addr, "mfp", "mfp"); b == nil {
				t.Error("two failures across the replicas did not block (limit 2)")
			}
			for _, g := range gs {
				if _, err := g.Sync(ctx); err != nil {
					t.Fatalf("guard sync: %v", err)
				}
			}
			if !gs[0].Blocked(addr) {
				t.Error("the block made on replica b is not shared with replica a")
			}
			if was, err := gs[0].Unblock(addr); err != nil || !was {
				t.Errorf("unblock: %v %v", was, err)
			}

			// The roster: each replica sees both.
			for i, ro := range rosters {
				if err := ro.Publish(ctx, Replica{Queued: i}); err != nil {
					t.Fatalf("roster publish: %v", err)
				}
			}
			reps, err := rosters[0].Replicas(ctx, time.Minute)
			if err != nil || len(reps) != 2 {
				t.Errorf("roster: %d replicas, %v", len(reps), err)
			}

			for i, l := range ls {
				if !l.Shared() {
					t.Errorf("replica %d says its limits are not shared", i)
				}
			}
			if s := logs.String(); strings.Contains(s, `"level":"error"`) || strings.Contains(s, "CROSSSLOT") || strings.Contains(s, "out of reach") {
				t.Errorf("the replicas logged trouble with Redis:\n%s", s)
			}
		})
	}
}
