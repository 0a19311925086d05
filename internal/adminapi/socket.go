package adminapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// SocketFile is the admin API's Unix socket in the spool directory. The
// directory is the bridge's user's alone (0700), so no other local user
// can connect, nor take the socket's place while the bridge is down: the
// command line sends the admin token only there, never to whoever holds
// a TCP port (any local user can bind 127.0.0.1:9464 while the bridge is
// stopped).
const SocketFile = "admin.sock"

// Listen listens on dir's admin socket, replacing one a previous run
// left (the lock on the spool says no other bridge uses it). Anything
// else in its place is refused.
func Listen(dir string) (net.Listener, error) {
	path := filepath.Join(dir, SocketFile)
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket: %s exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

type socketKey struct{}

// SocketConnContext marks the requests of a connection to the admin
// socket (http.Server.ConnContext of the socket's server): their peer is
// the bridge's user or root, whatever its address says.
func SocketConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, socketKey{}, true)
}

func fromSocket(r *http.Request) bool {
	on, _ := r.Context().Value(socketKey{}).(bool)
	return on
}

// dialSocket is the client's way to the admin socket: what it says when
// nothing listens there is ErrUnreachable.
func dialSocket(path string) func(ctx context.Context, _, _ string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil && (errors.Is(err, fs.ErrNotExist) || isRefused(err)) {
			return nil, fmt.Errorf("%s: %w", path, ErrUnreachable)
		}
		return c, err
	}
}
