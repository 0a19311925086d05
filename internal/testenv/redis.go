package testenv

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"
)

// Redis is a redis-server on a free loopback port, with no persistence,
// that a test can stop and start again on the same port.
type Redis struct {
	t    TB
	bin  string
	Addr string
	cmd  *exec.Cmd
}

// StartRedis starts redis-server (Debian's package; .ci/run installs it)
// and stops it when the test ends.
func StartRedis(t TB) *Redis {
	t.Helper()
	r := &Redis{t: t, bin: LookTool(t, "redis-server"), Addr: FreePort(t)}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server (again) and waits until it answers.
func (r *Redis) Start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	r.cmd = exec.Command(r.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no")
	var out strings.Builder
	r.cmd.Stdout, r.cmd.Stderr = &out, &out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("redis-server: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", r.Addr); err == nil {
			fmt.Fprintf(c, "PING\r\n")
			buf := make([]byte, 16)
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(buf)
			c.Close()
			if strings.HasPrefix(string(buf[:n]), "+PONG") {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server did not start:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (its data is gone: nothing is persisted).
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Kill()
	r.cmd.Wait()
	r.cmd = nil
}
