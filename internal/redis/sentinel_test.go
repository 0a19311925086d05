//go:build integration

package redis

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// When Sentinel fails the primary over, the client follows: the old
// primary, now a replica, answers writes with READONLY, and the client
// asks Sentinel again.
func TestSentinelFailover(t *testing.T) {
	primary, sentinel := testenv.StartRedisSentinel(t, "mymaster")
	replica := testenv.StartRedisReplica(t, primary)
	_, sport, _ := net.SplitHostPort(sentinel)
	_, rport, _ := net.SplitHostPort(replica)
	c := New(Options{SentinelAddrs: []string{"127.0.0.1:1", sentinel}, MasterName: "mymaster"})
	defer c.Close()
	ctx := context.Background()
	if n, err := c.Do(ctx, "INCR", "k").Int(); err != nil || n != 1 {
		t.Fatalf("INCR on the primary = %d, %v", n, err)
	}
	// Sentinel promotes a replica once it has read the replica's own
	// INFO: NOGOODSLAVE until then.
	testenv.Eventually(t, "Sentinel starting the failover", 30*time.Second, func() bool {
		if strings.HasPrefix(testenv.RedisCLI(t, "-p", sport, "SENTINEL", "FAILOVER", "mymaster"), "OK") {
			return true
		}
		time.Sleep(300 * time.Millisecond)
		return false
	})
	testenv.Eventually(t, "the Sentinel giving the replica as the primary", 10*time.Second, func() bool {
		return strings.Contains(testenv.RedisCLI(t, "-p", sport, "SENTINEL", "get-master-addr-by-name", "mymaster"), rport)
	})
	// The old primary takes writes until Sentinel makes it a replica,
	// some ten seconds later; the client asks Sentinel every second.
	time.Sleep(1100 * time.Millisecond)
	n, err := c.Do(ctx, "INCR", "k").Int()
	if err != nil || n != 2 {
		t.Errorf("INCR a second after the failover = %d, %v; want 2 (the count replicated, on the new primary)", n, err)
	}
	c.mu.Lock()
	at := c.master
	c.mu.Unlock()
	if at != replica {
		t.Errorf("the client writes to %s, want the new primary %s", at, replica)
	}
	if got := testenv.RedisCLI(t, "-p", rport, "GET", "k"); strings.TrimSpace(got) != "2" {
		t.Errorf("the new primary's count = %q, want 2", got)
	}
}
