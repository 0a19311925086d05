//go:build unix

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// squatter is an HTTP server that answers everything 200 {} and
// records each request it gets, with its Authorization header.
type squatter struct {
	mu   sync.Mutex
	seen []string
}

func (s *squatter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.seen = append(s.seen, fmt.Sprintf("%s %s Authorization=%q", r.Method, r.URL.Path, r.Header.Get("Authorization")))
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"ok":true,"messages":[],"retried":0,"blocks":[]}`))
}

func (s *squatter) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// The admin token goes only to the bridge. The command line reaches it on
// the admin socket in spool.dir; over TCP the admin API is off unless
// asked for. With the bridge stopped and another program on
// http.address, reload, queue, drain and blocks send it nothing; with
// --admin, the token goes only to a listener of the token file's owner.
func TestAdminSquatter(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	sock := filepath.Join(u.dir, "spool", "admin.sock")
	tokenFile := filepath.Join(u.dir, "spool", "admin.token")
	p := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)

	// Running: the commands go through the socket.
	if out, err := runCmd(t, "", binary, "reload", "--config", path); err != nil || !strings.Contains(out, "configuration reloaded (bridge at "+sock+")") {
		t.Errorf("reload with the bridge running: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "queue", "list", "--config", path); err != nil || !strings.Contains(out, "bridge at "+sock) {
		t.Errorf("queue list with the bridge running: %v\n%s", err, out)
	}
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("the admin socket: %v %v", fi, err)
	}
	// Over TCP, by default, no admin API, and a word on where it is.
	tok := strings.TrimSpace(testenv.ReadFile(t, tokenFile))
	req, _ := http.NewRequest("GET", "http://"+httpAddr+"/api/queue", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "admin.sock") || strings.Contains(string(body), "messages") {
		t.Errorf("the admin API over TCP by default: %d %s", resp.StatusCode, body)
	}
	p.stop(t)

	// Stopped; another program takes http.address.
	sq := &squatter{}
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: sq}
	go srv.Serve(ln)
	for _, c := range []struct {
		args []string
		want string // in the output
		ok   bool
	}{
		{[]string{"reload", "--config", path}, "no smtpbridge answers at " + sock, false},
		{[]string{"queue", "list", "--config", path}, "stopped bridge, spool", true},
		{[]string{"drain", "--config", path}, "no smtpbridge answers at " + sock, false},
		{[]string{"blocks", "list", "--config", path}, "no smtpbridge answers at " + sock, false},
	} {
		out, err := runCmd(t, "", binary, c.args...)
		if (err == nil) != c.ok || !strings.Contains(out, c.want) {
			t.Errorf("%s with the bridge stopped: %v, want %q in\n%s", strings.Join(c.args, " "), err, c.want, out)
		}
	}
	srv.Close()
	if seen := sq.requests(); len(seen) != 0 {
		t.Errorf("the program on http.address got %d requests: %v", len(seen), seen)
	}

	// --admin names the port: the token goes to its owner only. As root,
	// the squatter runs as nobody, a user other than the token's owner.
	if os.Geteuid() == 0 {
		log, stop := squatAsNobody(t, httpAddr)
		out, err := runCmd(t, "", binary, "queue", "list", "--admin", "http://"+httpAddr, "--token-file", tokenFile)
		if err == nil || !strings.Contains(out, "not the bridge's user") {
			t.Errorf("queue list --admin to nobody's listener: %v\n%s", err, out)
		}
		out, err = runCmd(t, "", binary, "reload", "--admin", "http://"+httpAddr, "--token-file", tokenFile)
		if err == nil || !strings.Contains(out, "not the bridge's user") {
			t.Errorf("reload --admin to nobody's listener: %v\n%s", err, out)
		}
		// The check is on the connection, before any request.
		if got, err := os.ReadFile(log); err == nil {
			t.Errorf("nobody's listener got requests:\n%s", got)
		}
		stop()
	} else {
		t.Log("the listener of another user needs root to start; CI runs as root")
	}

	// Back up: as before.
	startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	if out, err := runCmd(t, "", binary, "reload", "--config", path); err != nil || !strings.Contains(out, "configuration reloaded") {
		t.Errorf("reload after the restart: %v\n%s", err, out)
	}
}

// squatAsNobody runs this test binary as nobody, listening on addr (as
// TestMain sees SQUATTER_ADDR), and returns the file it records requests
// in, and how to stop it.
func squatAsNobody(t *testing.T, addr string) (string, func()) {
	t.Helper()
	dir, err := os.MkdirTemp("", "squatter")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	exe := filepath.Join(dir, "squatter")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "requests.log")
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "SQUATTER_ADDR="+addr, "SQUATTER_LOG="+log)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { cmd.Process.Kill(); cmd.Wait() }) }
	t.Cleanup(stop)
	testenv.Eventually(t, "nobody's listener up", 10*time.Second, func() bool { return testenv.Accepts(addr) })
	return log, stop
}
