//go:build wine

// Package wine runs smtpbridge's Windows build under Wine: the
// Windows-specific packages' test binaries, and smtpbridge.exe itself
// (version, check-config, serve in sandbox mode taking a message from
// swaks). It needs wine64, mingw-w64 (for the ProcessPrng stand-in,
// setup.sh) and swaks; .ci/run installs them.
package wine

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

var root, _ = filepath.Abs(filepath.Join("..", ".."))

// prefix makes the Wine prefix once and returns wine64's path.
var prefix = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "wineprefix")
	if err != nil {
		return "", err
	}
	os.Setenv("WINEPREFIX", dir)
	os.Setenv("WINEDEBUG", "-all")
	setup := exec.Command(filepath.Join(root, "tools", "wine", "setup.sh"))
	setup.WaitDelay = 10 * time.Second // wineserver outlives it, holding its output
	out, err := setup.Output()
	if err != nil {
		return "", &exec.ExitError{Stderr: out}
	}
	return strings.TrimSpace(string(out)), nil
})

func wine(t *testing.T) string {
	t.Helper()
	w, err := prefix()
	if err != nil {
		t.Fatalf("wine prefix: %v", err)
	}
	return w
}

// goWindows runs go with GOOS=windows in the module's root.
func goWindows(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// The packages whose behaviour differs on Windows, their tests built for
// Windows and run under Wine in their own directory.
func TestWindowsPackages(t *testing.T) {
	w := wine(t)
	for _, pkg := range []string{"internal/durable", "internal/statefile", "spool", "internal/secret", "internal/winsvc"} {
		t.Run(pkg, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(root, pkg)); err != nil {
				t.Fatalf("%s: %v", pkg, err)
			}
			exe := filepath.Join(t.TempDir(), filepath.Base(pkg)+".test.exe")
			goWindows(t, "test", "-c", "-o", exe, "./"+pkg)
			if _, err := os.Stat(exe); err != nil {
				t.Skipf("%s has no tests", pkg) // never for the packages listed
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, w, exe, "-test.count=1", "-test.v")
			cmd.WaitDelay = 10 * time.Second
			cmd.Dir = filepath.Join(root, pkg)
			if pkg == "internal/secret" {
				// Wine makes a file's ACL from its Unix mode.
				acl := t.TempDir()
				os.WriteFile(filepath.Join(acl, "private.txt"), []byte("s"), 0o600)
				os.WriteFile(filepath.Join(acl, "public.txt"), []byte("s"), 0o644)
				os.Chmod(filepath.Join(acl, "public.txt"), 0o644)
				cmd.Env = append(os.Environ(), "SECRET_ACL_DIR=Z:"+strings.ReplaceAll(acl, "/", `\`))
			}
			out, err := cmd.CombinedOutput()
			if err != nil || !bytes.Contains(out, []byte("\nPASS")) {
				t.Errorf("%s under Wine: %v\n%s", pkg, err, out)
			}
		})
	}
}

// smtpbridge.exe under Wine, as a Windows user would run it from a
// directory with a space, with a config path in backslashes.
func TestExe(t *testing.T) {
	w := wine(t)
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatal("swaks is not installed (apt-get install swaks)")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, "smtpbridge.exe")
	goWindows(t, "build", "-o", exe, "./cmd/smtpbridge")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(w, append([]string{exe}, args...)...)
		cmd.Dir = dir
		cmd.WaitDelay = 10 * time.Second
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("version"); err != nil || !strings.HasPrefix(out, "smtpbridge ") {
		t.Fatalf("smtpbridge.exe version: %v\n%s", err, out)
	}
	smtpAddr := sandboxConfig(t, filepath.Join(dir, "conf dir", "sandbox.yaml"))
	if out, err := run("check-config", "--config", `conf dir\sandbox.yaml`); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("check-config: %v\n%s", err, out)
	}

	cmd := exec.Command(w, exe, "serve", "--config", `conf dir\sandbox.yaml`, "--sandbox", `mail dir`)
	cmd.Dir = dir
	cmd.WaitDelay = 10 * time.Second
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		exec.Command(filepath.Join(filepath.Dir(w), "wineserver64"), "-k").Run()
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("tcp", smtpAddr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtpbridge.exe never listened on %s\n%s", smtpAddr, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, err := exec.Command(swaks, "--server", smtpAddr, "--auth", "LOGIN", "--auth-user", "mfp-sandbox", "--auth-password", "scan-to-mail",
		"--from", "printer@lan.example", "--to", "someone@example.com", "--body", "through Wine").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "250 2.0.0 OK") {
		t.Fatalf("swaks: %v\n%s\n%s", err, out, logs.String())
	}
	// --sandbox DIR, relative to the working directory.
	emls, _ := filepath.Glob(filepath.Join(dir, "mail dir", "*.eml"))
	if len(emls) != 1 {
		t.Fatalf("%d .eml files in mail dir, want 1\n%s", len(emls), logs.String())
	}
	if b, _ := os.ReadFile(emls[0]); !bytes.Contains(b, []byte("through Wine")) {
		t.Errorf("the .eml:\n%s", b)
	}
}

// The Windows service under Wine's service control manager: install on
// a config, start, a message through it, reload (ParamChange), stop,
// uninstall.
func TestService(t *testing.T) {
	w := wine(t)
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatal("swaks is not installed (apt-get install swaks)")
	}
	persistentWineserver(t, w)

	dir := t.TempDir()
	exe := filepath.Join(dir, "smtpbridge.exe")
	goWindows(t, "build", "-o", exe, "./cmd/smtpbridge")
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, w, append([]string{exe}, args...)...)
		cmd.Dir = dir
		cmd.WaitDelay = 10 * time.Second
		out, err := cmd.CombinedOutput()
		if errors.Is(err, exec.ErrWaitDelay) {
			err = nil // it exited; a Wine process it started holds its output
		}
		return string(out), err
	}
	smtpAddr := sandboxConfig(t, filepath.Join(dir, "Program Data", "smtpbridge.yaml"))
	config := `Program Data\smtpbridge.yaml`
	logFile := filepath.Join(dir, "Program Data", "smtpbridge.log")

	step := func(want string, args ...string) {
		t.Helper()
		out, err := run(args...)
		if err != nil || !strings.Contains(out, want) {
			log, _ := os.ReadFile(logFile)
			t.Fatalf("smtpbridge.exe %s: %v\n%s\nservice log:\n%s", strings.Join(args, " "), err, out, log)
		}
	}
	step("installed the service smtpbridge", "service", "install", "--config", config)
	t.Cleanup(func() { run("service", "uninstall") })
	step("smtpbridge: stopped", "service", "status")
	step("is running", "service", "start")
	step("smtpbridge: running", "service", "status")
	out, err := exec.Command(swaks, "--server", smtpAddr, "--auth", "LOGIN", "--auth-user", "mfp-sandbox", "--auth-password", "scan-to-mail",
		"--from", "printer@lan.example", "--to", "someone@example.com", "--body", "through the service").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "250 2.0.0 OK") {
		log, _ := os.ReadFile(logFile)
		t.Fatalf("swaks through the service: %v\n%s\nservice log:\n%s", err, out, log)
	}
	if emls, _ := filepath.Glob(filepath.Join(dir, "sandbox-mail", "*.eml")); len(emls) != 1 {
		t.Errorf("%d .eml files, want 1", len(emls))
	}
	step("asked the service smtpbridge to reload", "service", "reload")
	deadline := time.Now().Add(20 * time.Second)
	for {
		log, _ := os.ReadFile(logFile)
		if bytes.Contains(log, []byte("configuration reloaded")) && bytes.Contains(log, []byte("paramchange")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reload in the service's log after ParamChange:\n%s", log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	step("is stopped", "service", "stop")
	step("smtpbridge: stopped", "service", "status")
	if log, _ := os.ReadFile(logFile); !bytes.Contains(log, []byte("stopped")) || !bytes.Contains(log, []byte("shutting down")) {
		t.Errorf("the service did not shut down gracefully:\n%s", log)
	}
	step("removed the service", "service", "uninstall")
	if out, err := run("service", "status"); err == nil || !strings.Contains(out, "not installed") {
		t.Errorf("status after uninstall: %v\n%s", err, out)
	}
}

// The MSI under Wine's msiexec: installed, the binary in Program Files
// and the configs in ProgramData, the service registered and stopped;
// uninstalled, the binary and the service gone, the edited config kept.
func TestMSI(t *testing.T) {
	w := wine(t)
	dist := t.TempDir()
	rel := exec.Command("go", "run", "./tools/release", "--out", dist, "0.9.2")
	rel.Dir = root
	if out, err := rel.CombinedOutput(); err != nil {
		t.Fatalf("release: %v\n%s", err, out)
	}
	msi := filepath.Join(dist, "smtpbridge_0.9.2_windows_amd64.msi")
	persistentWineserver(t, w)
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, w, args...)
		cmd.WaitDelay = 10 * time.Second
		out, err := cmd.CombinedOutput()
		if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
			t.Fatalf("wine %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	drive := filepath.Join(os.Getenv("WINEPREFIX"), "drive_c")
	exe := filepath.Join(drive, "Program Files", "smtpbridge", "smtpbridge.exe")
	cfg := filepath.Join(drive, "ProgramData", "smtpbridge", "smtpbridge.yaml")
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(cfg)) })
	run("msiexec", "/i", msi, "/qn")
	for _, f := range []string{exe, cfg, filepath.Join(filepath.Dir(cfg), "sandbox.yaml")} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("after msiexec /i: %v", err)
		}
	}
	if out := run(`C:\Program Files\smtpbridge\smtpbridge.exe`, "version"); !strings.HasPrefix(out, "smtpbridge 0.9.2 ") {
		t.Errorf("installed version: %q", out)
	}
	if out := run(`C:\Program Files\smtpbridge\smtpbridge.exe`, "service", "status"); !strings.Contains(out, "smtpbridge: stopped") {
		t.Errorf("the service after install (registered, not started): %q", out)
	}
	f, _ := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("# edited by the admin\n")
	f.Close()
	run("msiexec", "/x", msi, "/qn")
	if _, err := os.Stat(exe); err == nil {
		t.Error("msiexec /x left smtpbridge.exe")
	}
	if b, err := os.ReadFile(cfg); err != nil || !bytes.Contains(b, []byte("# edited by the admin")) {
		t.Errorf("msiexec /x did not keep the edited config: %v", err)
	}
	// sc query fails for a service that does not exist.
	if out, err := exec.Command(w, "sc", "query", "smtpbridge").CombinedOutput(); err == nil || strings.Contains(string(out), "STATE") {
		t.Errorf("the service is still registered after uninstall: %v\n%s", err, out)
	}
}

// sandboxConfig writes the shipped sandbox example to path, listening on
// free ports, and returns its SMTP address.
func sandboxConfig(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "examples", "sandbox.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	smtpAddr, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	cfg := strings.Replace(string(data), `"127.0.0.1:2525"`, `"`+smtpAddr+`"`, 1) + "\nhttp:\n  address: \"" + httpAddr + "\"\n"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return smtpAddr
}

// persistentWineserver keeps Wine's server, and with it its service
// manager, up between the test's commands, and stops it at the end.
func persistentWineserver(t *testing.T, w string) {
	t.Helper()
	wineserver := filepath.Join(filepath.Dir(w), "wineserver64")
	exec.Command(wineserver, "-k").Run()
	// No pipes: the persistent wineserver would hold them open.
	if err := exec.Command(wineserver, "-p").Run(); err != nil {
		t.Fatalf("wineserver -p: %v", err)
	}
	t.Cleanup(func() { exec.Command(wineserver, "-k").Run() })
	// Wine's own processes (services.exe, the service manager) start with
	// the first command and keep its output open: start them here,
	// without pipes.
	if err := exec.Command(w, "wineboot").Run(); err != nil {
		t.Fatalf("wineboot: %v", err)
	}
}
