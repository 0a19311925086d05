//go:build !linux

package adminapi

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// PeerUID cannot tell who listens on a TCP port on this system: the
// command line uses the admin socket instead.
func PeerUID(c net.Conn) (int, error) {
	return -1, fmt.Errorf("who listens on %s cannot be checked on this system: %w", c.RemoteAddr(), errors.ErrUnsupported)
}
