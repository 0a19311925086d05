package adminapi

import (
	"net"
	"os"
	"strconv"
	"testing"
)

// PeerUID finds the user of the process that accepted a loopback
// connection, over IPv4 and IPv6, and a dual-stack listener's mapped
// addresses.
func TestPeerUID(t *testing.T) {
	for _, c := range []struct{ listen, dial string }{
		{"tcp4", "127.0.0.1:0"},
		{"tcp6", "[::1]:0"},
		{"tcp", "[::]:0"}, // dual stack, dialled as 127.0.0.1
	} {
		ln, err := net.Listen(c.listen, c.dial)
		if err != nil {
			t.Logf("%s: %v (no such stack here)", c.listen, err)
			continue
		}
		addr := ln.Addr().String()
		if c.dial == "[::]:0" {
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		uid, err := PeerUID(conn)
		if err != nil || uid != os.Geteuid() {
			t.Errorf("%s at %s: uid %d, %v; want %d", c.listen, addr, uid, err, os.Geteuid())
		}
		conn.Close()
		ln.Close()
	}
}

func TestProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:2502":                         "127.0.0.1:9474",
		"00000000000000000000000001000000:0050": "[::1]:80",
		"0000000000000000FFFF00000100007F:1F90": "127.0.0.1:8080", // mapped
	} {
		if !littleEndian {
			t.Skip("the table is the little-endian kernel's")
		}
		got, err := procAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("procAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}
