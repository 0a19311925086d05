package bridge_test

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// connCounter counts connections' ends, silent ones apart.
type connCounter struct {
	mu             sync.Mutex
	closed, silent int
}

func (c *connCounter) Connection(string)                                      {}
func (c *connCounter) ConnectionRefused(string, string)                       {}
func (c *connCounter) AuthAttempt(string, string, string, string, netip.Addr) {}
func (c *connCounter) ConnectionClosed(_ string, silent bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed++
	if silent {
		c.silent++
	}
}

func (c *connCounter) counts() (closed, silent int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed, c.silent
}

// A TCP health check (connect, then close, politely or with a reset,
// before or after the greeting) is counted as a silent connection and
// logged at debug level only; a device's session is not silent.
func TestHealthCheckIsQuiet(t *testing.T) {
	obs := &connCounter{}
	e := newEnv(t, envOptions{observer: obs})
	addr := e.addr("plain")
	checks := []func(c *net.TCPConn){
		func(c *net.TCPConn) {},                 // closed at once
		func(c *net.TCPConn) { c.SetLinger(0) }, // reset at once
		func(c *net.TCPConn) { // reset with the greeting unread
			time.Sleep(100 * time.Millisecond)
			c.SetLinger(0)
		},
	}
	for _, check := range checks {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		check(c.(*net.TCPConn))
		c.Close()
	}
	d := dial(t, addr)
	d.Cmd("EHLO device.test", "250")
	d.Cmd("QUIT", "221")
	testenv.Eventually(t, "every connection's end", 5*time.Second, func() bool {
		closed, _ := obs.counts()
		return closed == len(checks)+1
	})
	if _, silent := obs.counts(); silent != len(checks) {
		t.Errorf("%d silent connections counted, want %d (the health checks, not the device)", silent, len(checks))
	}
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`) {
			t.Errorf("a health check logged above debug: %s", line)
		}
	}
}
