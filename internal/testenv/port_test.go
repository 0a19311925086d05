package testenv

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/durable"
)

func TestFreePortNeverTwice(t *testing.T) {
	lo, hi := portRange()
	seen := map[string]bool{}
	for range 200 {
		addr := FreePort(t)
		if seen[addr] {
			t.Fatalf("%s given twice", addr)
		}
		seen[addr] = true
		_, p, _ := net.SplitHostPort(addr)
		if port, _ := strconv.Atoi(p); port < lo || port >= hi {
			t.Fatalf("%s outside %d-%d, below the kernel's ephemeral ports", addr, lo, hi)
		}
	}
}

// A port another test process reserved is passed over.
func TestFreePortSkipsReserved(t *testing.T) {
	FreePort(t) // set the range up
	ports.Lock()
	next := ports.next
	ports.Unlock()
	// Reserve the next port as another process would. flock locks belong
	// to the open file, so a second open conflicts even in this process.
	unlock, err := durable.Lock(filepath.Join(os.TempDir(), "smtpbridge-test-ports", strconv.Itoa(next)))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if addr := FreePort(t); addr == net.JoinHostPort("127.0.0.1", strconv.Itoa(next)) {
		t.Fatalf("%s was reserved and given anyway", addr)
	}
}
