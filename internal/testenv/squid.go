package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Squid is a real HTTP proxy (Debian's squid) on loopback for the
// integration tests, which finds the fakes by the names of ProxiedDomain
// in a hosts file of its own.
type Squid struct {
	URL       string // http://127.0.0.1:port
	Addr      string
	AccessLog string
}

// SquidOptions shape the proxy: a user and password it asks for (407
// without them), the ports it lets CONNECT reach (all when empty).
type SquidOptions struct {
	User, Password string
	ConnectPorts   []string
}

// StartSquid runs squid until the test ends.
func StartSquid(t TB, o SquidOptions) *Squid {
	t.Helper()
	bin := LookTool(t, "squid")
	dir, err := os.MkdirTemp("", "squid")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// squid drops root for its own user, which must write its logs.
	os.Chmod(dir, 0o777)
	addr := FreePort(t)
	s := &Squid{URL: "http://" + addr, Addr: addr, AccessLog: filepath.Join(dir, "access.log")}
	hosts := "127.0.0.1 login." + ProxiedDomain + " graph." + ProxiedDomain + " smtp." + ProxiedDomain + "\n"
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatalf("%v", err)
		}
		return p
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, `http_port %s
hosts_file %s
pid_filename %s
cache_log %s
access_log stdio:%s
cache deny all
cache_mem 8 MB
coredump_dir %s
shutdown_lifetime 0 seconds
dns_nameservers 127.0.0.1
acl CONNECT method CONNECT
`, addr, write("hosts", hosts), filepath.Join(dir, "squid.pid"), filepath.Join(dir, "cache.log"), s.AccessLog, dir)
	if len(o.ConnectPorts) > 0 {
		fmt.Fprintf(&conf, "acl allowed_ports port %s\nhttp_access deny CONNECT !allowed_ports\n", strings.Join(o.ConnectPorts, " "))
	}
	if o.User != "" {
		out, err := exec.Command("htpasswd", "-nbm", o.User, o.Password).Output()
		if err != nil {
			t.Fatalf("htpasswd: %v", err)
		}
		fmt.Fprintf(&conf, "auth_param basic program /usr/lib/squid/basic_ncsa_auth %s\nauth_param basic realm corp\nacl users proxy_auth REQUIRED\nhttp_access allow users\n",
			write("passwd", strings.TrimSpace(string(out))+"\n"))
	}
	conf.WriteString("http_access allow all\n")
	cmd := exec.Command(bin, "-N", "-f", write("squid.conf", conf.String()))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("squid: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return s
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
			t.Fatalf("squid exited:\n%s\n%s", out.String(), log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
			t.Fatalf("squid did not listen on %s:\n%s\n%s", addr, out.String(), log)
		}
	}
}

// Log is the proxy's access log so far.
func (s *Squid) Log() string {
	data, _ := os.ReadFile(s.AccessLog)
	return string(data)
}
