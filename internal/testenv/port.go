package testenv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/smtpbridge/smtpbridge/internal/durable"
)

// ports hands out loopback ports for processes a test starts (a bridge,
// redis-server), which must bind the port themselves.
//
// "Listen on :0, close, pass the port on" leaves a window in which the
// kernel can give the same port to anything else that binds :0 or
// connects out, in this process or in another test package running in
// parallel; CI saw two listeners of one bridge get the same port. So the
// ports come from below the kernel's ephemeral range, which it never
// hands out by itself, each is reserved for the life of the test process
// by a lock file that other test processes respect, and none is given
// twice.
var ports struct {
	sync.Mutex
	lo, hi, next int
	held         []func() // the reservations, released when the process exits
}

// FreePort is a loopback address ("127.0.0.1:PORT") no other test in
// any test process on this machine will be given, free when returned.
func FreePort(t TB) string { return freePort(t, "127.0.0.1") }

// FreePort6 is FreePort on the IPv6 loopback ("[::1]:PORT").
func FreePort6(t TB) string { return freePort(t, "::1") }

func freePort(t TB, host string) string {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	if ports.hi == 0 {
		ports.lo, ports.hi = portRange()
		ports.next = ports.lo + os.Getpid()*7919%(ports.hi-ports.lo)
	}
	dir := filepath.Join(os.TempDir(), "smtpbridge-test-ports")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("free port: %v", err)
	}
	for range ports.hi - ports.lo {
		port := ports.next
		if ports.next++; ports.next >= ports.hi {
			ports.next = ports.lo
		}
		unlock, err := durable.Lock(filepath.Join(dir, strconv.Itoa(port)))
		if err != nil {
			continue // another test process holds it
		}
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			unlock()
			continue
		}
		ln.Close()
		ports.held = append(ports.held, unlock)
		return addr
	}
	t.Fatalf("free port: none free on %s in %d-%d", host, ports.lo, ports.hi)
	return ""
}

// portRange is the ports below the kernel's ephemeral range (Linux's
// ip_local_port_range, 32768 by default) and above the well-known and
// common service ports.
func portRange() (lo, hi int) {
	lo, hi = 20000, 32768
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var elo, ehi int
	if _, err := fmt.Sscan(strings.TrimSpace(string(data)), &elo, &ehi); err != nil || elo <= 11000 {
		return lo, hi
	}
	if elo < hi {
		hi = elo
	}
	if lo >= hi-1000 {
		lo = hi - 1000
	}
	return lo, hi
}
