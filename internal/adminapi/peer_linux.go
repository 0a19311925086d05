package adminapi

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// PeerUID is the user that owns the server side of the loopback TCP
// connection c: the user of the process that listens on the port, found
// in /proc/net/tcp and tcp6 as the socket whose local address is c's
// remote one and whose remote address is c's local one. Read after the
// connection is made, it tells who answered this very connection, not
// who held the port a moment before.
func PeerUID(c net.Conn) (int, error) {
	local, err1 := netip.ParseAddrPort(c.LocalAddr().String())
	remote, err2 := netip.ParseAddrPort(c.RemoteAddr().String())
	if err1 != nil || err2 != nil {
		return -1, fmt.Errorf("not a TCP connection: %s -> %s", c.LocalAddr(), c.RemoteAddr())
	}
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		uid, found, err := findSocket(table, remote, local)
		if err != nil {
			return -1, err
		}
		if found {
			return uid, nil
		}
	}
	return -1, fmt.Errorf("no socket in /proc/net/tcp answers %s from %s: the listener is not on this host's loopback", remote, local)
}

// findSocket looks in a /proc/net/tcp table for the socket from local to
// remote and returns its owner's uid.
func findSocket(table string, local, remote netip.AddrPort) (int, bool, error) {
	f, err := os.Open(table)
	if os.IsNotExist(err) {
		return -1, false, nil
	}
	if err != nil {
		return -1, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the heading
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue
		}
		l, err1 := procAddr(fields[1])
		r, err2 := procAddr(fields[2])
		if err1 != nil || err2 != nil || l != local || r != remote {
			continue
		}
		uid, err := strconv.Atoi(fields[7])
		if err != nil {
			return -1, false, fmt.Errorf("%s: uid %q", table, fields[7])
		}
		return uid, true, nil
	}
	return -1, false, sc.Err()
}

// procAddr reads an address of /proc/net/tcp: hex of the address in the
// kernel's byte order (32-bit words, little-endian on the machines Go
// runs Linux on but s390x and a few others), a colon, the port in hex.
func procAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw)%4 != 0 {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", s)
	}
	if littleEndian {
		for i := 0; i < len(raw); i += 4 {
			raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
		}
	}
	a, ok := netip.AddrFromSlice(raw)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}
