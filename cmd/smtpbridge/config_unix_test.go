//go:build unix

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// --config defaults to $SMTPBRIDGE_CONFIG, else to the packages' config
// when it is installed, else to nothing (the command asks for one).
func TestDefaultConfig(t *testing.T) {
	installed := filepath.Join(t.TempDir(), "smtpbridge.yaml")
	defer func(old string) { unixConfig = old }(unixConfig)
	unixConfig = installed
	t.Setenv("SMTPBRIDGE_CONFIG", "")
	if got := defaultConfig(); got != "" {
		t.Errorf("no config installed: default %q, want none", got)
	}
	writeFile(t, installed, "{}\n")
	if got := defaultConfig(); got != installed {
		t.Errorf("with the packages' config: default %q, want %q", got, installed)
	}
	t.Setenv("SMTPBRIDGE_CONFIG", "/srv/other.yaml")
	if got := defaultConfig(); got != "/srv/other.yaml" {
		t.Errorf("with SMTPBRIDGE_CONFIG: default %q", got)
	}
}

// The post-install hint, as any user: a sandbox config in a directory the
// user cannot write (the package's /usr/share/doc) runs with its spool,
// mail and audit log in the user's own state directory, and says where.
func TestSandboxFromAReadOnlyDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs the bridge as another user, which needs root (CI runs as root)")
	}
	shared, err := os.MkdirTemp("", "doc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o755)
	exe := filepath.Join(shared, "smtpbridge")
	data, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cfgText, err := os.ReadFile("../../examples/sandbox.yaml")
	if err != nil {
		t.Fatal(err)
	}
	smtpAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	text := strings.Replace(string(cfgText), `"127.0.0.1:2525"`, strconv.Quote(smtpAddr), 1) + "http:\n  address: " + strconv.Quote(httpAddr) + "\n"
	cfg := filepath.Join(shared, "sandbox.yaml")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(shared, "state")
	os.Mkdir(state, 0o755)
	os.Chown(state, nobody, nobody)
	cmd := exec.Command(exe, "serve", "--config", cfg)
	cmd.Env = append(filterEnv(os.Environ(), "XDG_STATE_HOME"), "XDG_STATE_HOME="+state, "HOME=/nonexistent")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	logs := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	testenv.Eventually(t, "the sandbox listening, run by nobody from a read-only directory", 20*time.Second, func() bool { return testenv.Accepts(smtpAddr) })
	if reply, err := sendAsUser(smtpAddr, "mfp-sandbox", "scan-to-mail"); err != nil || !strings.Contains(reply, "2.0.0") {
		t.Fatalf("a message through the sandbox: %q %v\n%s", reply, err, logs.String())
	}
	where := filepath.Join(state, "smtpbridge-sandbox")
	if !strings.Contains(logs.String(), where) {
		t.Errorf("the bridge does not say where the sandbox's state went (%s):\n%s", where, logs.String())
	}
	testenv.Eventually(t, "the message in the user's state directory", 10*time.Second, func() bool {
		mail, _ := filepath.Glob(filepath.Join(where, "sandbox-mail", "*.eml"))
		return len(mail) > 0
	})
	if _, err := os.Stat(filepath.Join(where, "sandbox-audit.log")); err != nil {
		t.Errorf("the audit log is not in the user's state directory: %v", err)
	}
	// The commands find the same state: trace reads that audit log, the
	// queue tools reach that spool's admin socket.
	for _, args := range [][]string{{"trace", "--config", cfg, "--to", "someone@example.com"}, {"queue", "list", "--config", cfg}} {
		c := exec.Command(exe, args...)
		c.Env = cmd.Env
		c.SysProcAttr = cmd.SysProcAttr
		out, err := c.CombinedOutput()
		if err != nil {
			t.Errorf("%s as the same user: %v\n%s", args[0], err, out)
		}
		if args[0] == "trace" && !strings.Contains(string(out), "delivered (attempt 1)") {
			t.Errorf("trace does not tell the message's story:\n%s", out)
		}
	}
}

// sendAsUser sends one message as user with pw and returns the reply.
func sendAsUser(addr, user, pw string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, pw)); err != nil {
		return "", err
	}
	return sendMessage(c, "printer@lan.example", []string{"someone@example.com"}, "Subject: sandbox\r\n\r\nhello\r\n")
}
