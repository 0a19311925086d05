package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/pki"
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
		if redisAnswers(r.Addr) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server did not start:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redisAnswers says whether a Redis on addr answers PING (a Sentinel
// does too).
func redisAnswers(addr string) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return false
	}
	return pingAnswer(c, "+PONG")
}

// pingAnswer sends PING on c, closes it, and says whether the answer
// began with want.
func pingAnswer(c net.Conn, want string) bool {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(c, "PING\r\n")
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	return strings.HasPrefix(string(buf[:n]), want)
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

// RedisCLI runs redis-cli with args and returns its output; a failure
// fails the test.
func RedisCLI(t TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(LookTool(t, "redis-cli"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// startRedisProcess starts redis-server with args and waits until addr
// answers PING; it is killed when the test ends.
func startRedisProcess(t TB, addr string, args ...string) {
	t.Helper()
	startRedisUntil(t, "redis-server answering on "+addr, func() bool { return redisAnswers(addr) }, args...)
}

// startRedisUntil starts redis-server with args and waits until ready.
func startRedisUntil(t TB, what string, ready func() bool, args ...string) {
	t.Helper()
	cmd := exec.Command(LookTool(t, "redis-server"), args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	Eventually(t, what, 10*time.Second, ready)
}

// StartRedisCluster starts a Redis Cluster of n primaries (n >= 3) on
// loopback, joined with redis-cli --cluster create, and returns their
// addresses once the cluster says it is ok.
func StartRedisCluster(t TB, n int) []string {
	t.Helper()
	dir := t.TempDir()
	var addrs []string
	for range n {
		addr := FreePort(t)
		_, port, _ := net.SplitHostPort(addr)
		startRedisProcess(t, addr, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes-"+port+".conf", "--dir", dir)
		addrs = append(addrs, addr)
	}
	RedisCLI(t, append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...)
	_, port, _ := net.SplitHostPort(addrs[0])
	Eventually(t, "the Redis cluster ok", 20*time.Second, func() bool {
		return strings.Contains(RedisCLI(t, "-p", port, "CLUSTER", "INFO"), "cluster_state:ok")
	})
	return addrs
}

// StartRedisSentinel starts a primary and a Sentinel that monitors it as
// master, and returns the Sentinel's address once it knows the primary.
func StartRedisSentinel(t TB, master string) (primary, sentinel string) {
	t.Helper()
	primary, sentinel = FreePort(t), FreePort(t)
	_, pport, _ := net.SplitHostPort(primary)
	_, sport, _ := net.SplitHostPort(sentinel)
	startRedisProcess(t, primary, "--port", pport, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	conf := filepath.Join(t.TempDir(), "sentinel.conf") // Sentinel rewrites it
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("port %s\nbind 127.0.0.1\nsentinel monitor %s 127.0.0.1 %s 1\nsentinel down-after-milliseconds %s 1000\n",
		sport, master, pport, master)), 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	startRedisProcess(t, sentinel, conf, "--sentinel")
	Eventually(t, "the Sentinel knowing the primary", 10*time.Second, func() bool {
		return strings.Contains(RedisCLI(t, "-p", sport, "SENTINEL", "get-master-addr-by-name", master), pport)
	})
	return primary, sentinel
}

// StartRedisReplica starts a redis-server replicating primary and
// returns its address once its link to the primary is up.
func StartRedisReplica(t TB, primary string) string {
	t.Helper()
	addr := FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	phost, pport, _ := net.SplitHostPort(primary)
	startRedisProcess(t, addr, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--replicaof", phost, pport,
		"--dir", t.TempDir()) // the copy it receives is written there
	Eventually(t, "the replica's link to its primary up", 10*time.Second, func() bool {
		return strings.Contains(RedisCLI(t, "-p", port, "INFO", "replication"), "master_link_status:up")
	})
	return addr
}

// StartRedisTLS starts a redis-server that takes only TLS (a certificate
// for 127.0.0.1 from a new CA) and requires password, and returns its
// address and the CA.
func StartRedisTLS(t TB, password string) (string, *x509.CertPool) {
	t.Helper()
	ca, err := pki.NewCA("smtpbridge test Redis CA")
	if err != nil {
		t.Fatalf("%v", err)
	}
	leaf, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatalf("%v", err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"ca.crt": ca.CertPEM(), "redis.crt": leaf.CertPEM, "redis.key": leaf.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatalf("%v", err)
		}
	}
	addr := FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
	startRedisUntil(t, "redis-server answering over TLS on "+addr, func() bool {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, cfg)
		if err != nil {
			return false
		}
		return pingAnswer(c, "-NOAUTH") // it asks for the password
	}, "--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--tls-cert-file", filepath.Join(dir, "redis.crt"), "--tls-key-file", filepath.Join(dir, "redis.key"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.crt"), "--tls-auth-clients", "no", "--requirepass", password)
	return addr, ca.Pool()
}
