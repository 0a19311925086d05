//go:build packaging

package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// readmeSection is the README's section for the .deb and .rpm, whose
// code blocks the walk-through runs as written.
const readmeSection = "### Debian, Ubuntu, RHEL, Fedora: the .deb and .rpm"

// readmeCommands are the commands of the README's Linux section: each
// line of its ```sh blocks, in order.
func readmeCommands(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.Index(text, "\n"+readmeSection+"\n")
	if i < 0 {
		t.Fatalf("the README has no section %q", readmeSection)
	}
	text = text[i+len(readmeSection)+2:]
	if j := strings.Index(text, "\n### "); j >= 0 {
		text = text[:j]
	}
	var cmds []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```sh":
			in = true
		case line == "```":
			in = false
		case in && strings.TrimSpace(line) != "":
			cmds = append(cmds, line)
		}
	}
	return cmds
}

// systemdNS is systemd running as PID 1 of its own PID and mount
// namespaces on this machine (whose own PID 1 is not systemd), so that
// the unit runs as it does on a real host: systemctl, the unit's
// sandboxing, the journal. The network is the machine's: the bridge it
// starts reaches the test world's fakes on loopback.
type systemdNS struct {
	pid int // systemd's PID, seen from here
	cmd *exec.Cmd
}

func startSystemd(t *testing.T) *systemdNS {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), "systemd.log"))
	if err != nil {
		t.Fatal(err)
	}
	// basic.target: systemd's own services (the journal) and no gettys.
	// $container makes it skip what a container must not touch (the
	// kernel's modules and settings, the root file system's mount). The
	// namespace gets /tmp and /run of its own: at boot systemd-tmpfiles
	// empties /tmp and fills /run, which are this machine's otherwise.
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private",
		"sh", "-c", "mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=755 tmpfs /run && "+
			"exec /lib/systemd/systemd --system --unit=basic.target --log-target=console")
	cmd.Env = append(os.Environ(), "container=smtpbridge-test")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	ns := &systemdNS{cmd: cmd}
	t.Cleanup(func() {
		// PID 1 gone, the kernel ends everything in its namespace.
		if ns.pid != 0 {
			syscall.Kill(ns.pid, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	testenv.Eventually(t, "systemd started in its namespace", 10*time.Second, func() bool {
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		ns.pid, _ = strconv.Atoi(strings.TrimSpace(string(children)))
		return ns.pid != 0
	})
	// Its bus socket comes a moment after it starts; then --wait waits
	// for basic.target.
	var state string
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, _ := exec.Command("timeout", "60", "nsenter", "-t", strconv.Itoa(ns.pid), "-m", "-p",
			"systemctl", "is-system-running", "--wait").CombinedOutput()
		state = strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			return ns
		}
		if time.Now().After(deadline) {
			break
		}
	}
	data, _ := os.ReadFile(log.Name())
	t.Fatalf("systemd in a namespace: %s\n%s", state, data)
	return nil
}

// walker is the admin of the walk-through: a user with sudo, running
// the README's commands in a shell inside systemd's namespaces.
type walker struct {
	t    *testing.T
	ns   *systemdNS
	user string
	home string
	dir  string // the working directory: the .deb, the editor
	env  []string
}

const walkUser = "smtpbridge-walk"

func newWalker(t *testing.T) *walker {
	t.Helper()
	if out, err := exec.Command("id", walkUser).CombinedOutput(); err == nil {
		t.Fatalf("the user %s exists already (userdel -r %s):\n%s", walkUser, walkUser, out)
	}
	sh(t, false, "useradd", "--create-home", "--shell", "/bin/sh", walkUser)
	t.Cleanup(func() { exec.Command("userdel", "--remove", walkUser).Run() })
	sudoers := "/etc/sudoers.d/" + walkUser
	if err := os.WriteFile(sudoers, []byte(walkUser+" ALL=(ALL) NOPASSWD: ALL\n"), 0o440); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(sudoers) })
	dir, err := os.MkdirTemp("/var/tmp", "smtpbridge-walk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	w := &walker{t: t, user: walkUser, home: "/home/" + walkUser, dir: dir}
	// sudoedit runs $SUDO_EDITOR as the user on a copy of the file: here,
	// a stand-in for the admin's editor that writes the edit staged.
	editor := filepath.Join(dir, "editor")
	if err := os.WriteFile(editor, []byte("#!/bin/sh\ncat "+filepath.Join(dir, "staged")+" > \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	w.env = []string{"HOME=" + w.home, "USER=" + w.user, "LOGNAME=" + w.user, "LANG=C.UTF-8",
		"PATH=/usr/local/bin:/usr/bin:/bin", "SUDO_EDITOR=" + editor}
	return w
}

// command is line as the walker's shell runs it.
func (w *walker) command(line string) *exec.Cmd {
	args := []string{"-t", strconv.Itoa(w.ns.pid), "-m", "-p", "--wd=" + w.dir, "--",
		"runuser", "-u", w.user, "--", "env", "-i"}
	args = append(args, w.env...)
	args = append(args, "sh", "-c", line)
	return exec.Command("nsenter", args...)
}

// run runs line with stdin and returns its output; it must succeed.
func (w *walker) run(line, stdin string) string {
	w.t.Helper()
	cmd := w.command(line)
	cmd.Stdin = strings.NewReader(stdin)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	w.t.Logf("$ %s   (%.1f s)\n%s", line, time.Since(start).Seconds(), out)
	if err != nil {
		w.t.Fatalf("the README's command failed: %s: %v\n%s", line, err, out)
	}
	return string(out)
}

// stage makes the next sudoedit write data.
func (w *walker) stage(data string) {
	w.t.Helper()
	if err := os.WriteFile(filepath.Join(w.dir, "staged"), []byte(data), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// replace is s with old replaced by new, which must be there.
func replace(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("the installed file no longer has %q", old)
	}
	return strings.Replace(s, old, new, 1)
}

// The README's Linux section, word for word, as a new admin follows it
// on a host with systemd: the .deb installed with apt, the sandbox tried
// as a user (curl sends as the printer would), then the shipped config
// filled in for the test world's tenant (Entra ID and Exchange faked on
// loopback, their CA in the system's trust store), checked, doctor'ed,
// started with systemctl, a test message sent and delivered, the journal
// read, the config reloaded, and the package removed. Every command the
// section shows runs as written; the test supplies only what an admin
// types or pastes: the passwords, the edits sudoedit opens, Ctrl-C.
func linuxWalkthrough(t *testing.T, deb string) {
	if os.Geteuid() != 0 {
		t.Fatal("the walk-through installs a package and a user: it needs root (CI runs as root)")
	}
	for _, tool := range []string{"sudo", "sudoedit", "nsenter", "unshare", "runuser", "useradd", "update-ca-certificates", "curl", "/lib/systemd/systemd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (.ci/run installs it): %v", tool, err)
		}
	}
	if out, err := exec.Command("dpkg", "-s", "smtpbridge").CombinedOutput(); err == nil {
		t.Fatalf("smtpbridge is already installed on this machine; remove it first (dpkg --purge smtpbridge):\n%s", out)
	}
	// What the package keeps on purge (the spool, a certificate made
	// with tls-cert) goes too: this machine is left as it was found.
	for _, dir := range []string{"/etc/smtpbridge", "/var/lib/smtpbridge"} {
		if _, err := os.Lstat(dir); err == nil {
			t.Fatalf("%s exists on this machine: a smtpbridge installed before? Remove it first", dir)
		}
	}
	t.Cleanup(func() {
		exec.Command("dpkg", "--purge", "smtpbridge").Run()
		os.RemoveAll("/etc/smtpbridge")
		os.RemoveAll("/var/lib/smtpbridge")
	})
	for _, addr := range []string{"127.0.0.1:2525", "0.0.0.0:587", "127.0.0.1:9464"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the README's ports must be free on this machine: %v", err)
		}
		l.Close()
	}

	// The test world: the tenant of the shipped example, its app, its
	// three mailboxes; the world's CA trusted as a public one would be.
	world, std := testenv.Start(t)
	world.AddMailbox("scanner@contoso.com", testenv.TenantID, std.Secret)
	world.AddMailbox("erp@contoso.com", testenv.TenantID, std.Secret, "billing@contoso.com")
	world.AddMailbox("alarms@contoso.com", testenv.TenantID, std.Secret)
	anchor := "/usr/local/share/ca-certificates/smtpbridge-test-world.crt"
	if err := os.WriteFile(anchor, world.CA.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(anchor)
		exec.Command("update-ca-certificates", "--fresh").Run()
	})
	sh(t, false, "update-ca-certificates")

	// The user first: its cleanup (userdel) must come after systemd's,
	// which ends the user's processes.
	w := newWalker(t)
	w.ns = startSystemd(t)
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	cmds := readmeCommands(t)
	if len(cmds) < 12 {
		t.Fatalf("the README's Linux section has %d commands:\n%s", len(cmds), strings.Join(cmds, "\n"))
	}
	passwords := map[string]string{}
	var hashes []string
	var sandbox *exec.Cmd
	var sandboxOut strings.Builder
	for _, line := range cmds {
		word := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "sudo apt install ./"):
			// The README's version of the file: this build's .deb under it.
			name := strings.TrimPrefix(word[3], "./")
			if err := os.WriteFile(filepath.Join(w.dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
			out := w.run(line, "")
			if !strings.Contains(out, "installed, not started") {
				t.Errorf("apt install: no word of what to do next:\n%s", out)
			}
			checkInstalled(t)
			if out, _ := w.command("systemctl is-enabled smtpbridge").CombinedOutput(); strings.TrimSpace(string(out)) != "disabled" {
				t.Errorf("after apt install the service is %q, want disabled until it is configured", out)
			}

		case strings.HasPrefix(line, "smtpbridge serve "):
			// In its own terminal, in the foreground until Ctrl-C.
			cmd := w.command(line)
			cmd.Stdout, cmd.Stderr = &sandboxOut, &sandboxOut
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill() })
			sandbox = cmd
			testenv.Eventually(t, "the sandbox listening on 127.0.0.1:2525", 20*time.Second, func() bool { return testenv.Accepts("127.0.0.1:2525") })

		case strings.HasPrefix(line, "smtpbridge hash-password"):
			// Once per device, each with a password of its own.
			for _, dev := range []string{"mfp-2f", "erp"} {
				pw := dev + " has a password of its own 7"
				passwords[dev] = pw
				out := w.run(line, pw+"\n"+pw+"\n")
				h := regexp.MustCompile(`\$argon2id\$\S+`).FindString(out)
				if h == "" {
					t.Fatalf("hash-password printed no hash:\n%s", out)
				}
				hashes = append(hashes, h)
			}

		case line == "sudoedit /etc/smtpbridge/smtpbridge.yaml":
			// What the admin types: the tenant's IDs, the devices' hashes
			// (their mailboxes are the world's). The hosts lines exist
			// only in the test world, whose Entra ID and Exchange are on
			// loopback rather than Microsoft's names.
			installed, err := os.ReadFile("/etc/smtpbridge/smtpbridge.yaml")
			if err != nil {
				t.Fatal(err)
			}
			cfg := replace(t, string(installed), `tenant_id: "contoso.onmicrosoft.com"`, "tenant_id: "+strconv.Quote(testenv.TenantID))
			cfg = replace(t, cfg, `client_id: "00000000-0000-0000-0000-000000000000"`, "client_id: "+strconv.Quote(testenv.ClientID))
			cfg = replace(t, cfg, "    client_secret_expires:", fmt.Sprintf("    authority_host: %q\n    smtp_host: %q\n    client_secret_expires:",
				world.Entra.URL(), world.Exchange.Addr()))
			const placeholder = `"REPLACE with the output of: smtpbridge hash-password"`
			if len(hashes) != 2 {
				t.Fatal("the README edits the config before it hashes the devices' passwords")
			}
			cfg = replace(t, cfg, placeholder, strconv.Quote(hashes[0]))
			cfg = replace(t, cfg, placeholder, strconv.Quote(hashes[1]))
			w.stage(cfg)
			w.run(line, "")
			if got, _ := os.ReadFile("/etc/smtpbridge/smtpbridge.yaml"); string(got) != cfg {
				t.Fatalf("sudoedit did not write the edit:\n%s", got)
			}

		case line == "sudoedit /etc/smtpbridge/secrets.env":
			installed, err := os.ReadFile("/etc/smtpbridge/secrets.env")
			if err != nil {
				t.Fatal(err)
			}
			w.stage(replace(t, string(installed), "\nCONTOSO_SECRET=\n", "\nCONTOSO_SECRET="+testenv.ClientSecret+"\n"))
			w.run(line, "")

		default:
			out := w.run(line, "")
			checkStep(t, w, line, out)
			if strings.HasPrefix(line, "smtpbridge trace ") && sandbox != nil {
				// Ctrl-C in the first terminal.
				stopSandbox(t, sandbox, &sandboxOut)
				sandbox = nil
			}
		}
	}
	if sandbox != nil {
		t.Error("the README never reads the sandbox message's story (smtpbridge trace)")
	}

	// The test message went through the test world's Exchange, as the
	// mailbox the device maps to; the service runs and has the edit.
	var got bool
	for _, m := range world.Exchange.Messages() {
		got = got || (m.From == "scanner@contoso.com" && len(m.To) == 1 && m.To[0] == "you@contoso.com")
	}
	if !got {
		t.Errorf("the test world's Exchange has no message from scanner@contoso.com to you@contoso.com: %+v", world.Exchange.Messages())
	}
	if out := w.run("systemctl is-active smtpbridge", ""); strings.TrimSpace(out) != "active" {
		t.Errorf("after the README's steps the service is %q", out)
	}
	journal := w.run("sudo journalctl -u smtpbridge --no-pager", "")
	for _, want := range []string{`"listening"`, "reload"} {
		if !strings.Contains(journal, want) {
			t.Errorf("the journal lacks %s", want)
		}
	}
	testenv.CheckNoSecrets(t, "the journal", journal, passwords["mfp-2f"], passwords["erp"])

	// apt remove stops the service, keeps the config and the spool.
	w.run("sudo apt remove --yes smtpbridge", "")
	if _, err := os.Stat("/usr/bin/smtpbridge"); err == nil {
		t.Error("apt remove left the binary")
	}
	for _, keep := range []string{"/etc/smtpbridge/smtpbridge.yaml", "/etc/smtpbridge/secrets.env", "/var/lib/smtpbridge/spool"} {
		if _, err := os.Stat(keep); err != nil {
			t.Errorf("apt remove took %s: %v", keep, err)
		}
	}
	if out, _ := w.command("systemctl is-active smtpbridge").CombinedOutput(); strings.TrimSpace(string(out)) == "active" {
		t.Error("apt remove left the service running")
	}
}

// checkInstalled is the state the package leaves: nothing started, the
// files with their owners and modes, the sandbox example valid, the
// config to edit naming what to fill in.
func checkInstalled(t *testing.T) {
	t.Helper()
	sh(t, false, "systemd-analyze", "verify", "/usr/lib/systemd/system/smtpbridge.service")
	if out := sh(t, false, "stat", "-c", "%n %U:%G %a", "/etc/smtpbridge", "/etc/smtpbridge/smtpbridge.yaml", "/etc/smtpbridge/secrets.env",
		"/etc/smtpbridge/metrics.password", "/etc/smtpbridge/tls", "/var/lib/smtpbridge"); out != `/etc/smtpbridge root:smtpbridge 750
/etc/smtpbridge/smtpbridge.yaml root:smtpbridge 640
/etc/smtpbridge/secrets.env root:root 600
/etc/smtpbridge/metrics.password root:smtpbridge 640
/etc/smtpbridge/tls root:smtpbridge 2750
/var/lib/smtpbridge smtpbridge:smtpbridge 700
` {
		t.Errorf("ownership and modes:\n%s", out)
	}
	if pw, err := os.ReadFile("/etc/smtpbridge/metrics.password"); err != nil || !regexp.MustCompile(`^[0-9a-f]{32}\n$`).Match(pw) {
		t.Errorf("metrics.password: %v (%d bytes)", err, len(pw))
	}
	out := sh(t, true, "/usr/bin/smtpbridge", "check-config")
	for _, w := range []string{"CONTOSO_SECRET", "devices[0].password_hash: still the example's placeholder", "smtpbridge hash-password",
		"smtpbridge tls-cert --host smtpbridge.contoso.local --out /etc/smtpbridge/tls", "nothing was started"} {
		if !strings.Contains(out, w) {
			t.Errorf("check-config on the unedited /etc/smtpbridge/smtpbridge.yaml lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "metrics.password") {
		t.Errorf("check-config on the installed config misses the status page's password:\n%s", out)
	}
}

// checkStep checks what a README command printed, where there is more
// to see than its success.
func checkStep(t *testing.T, w *walker, line, out string) {
	t.Helper()
	word := strings.Fields(line)
	switch {
	case strings.Contains(line, "| curl "):
		// curl -sS prints nothing on success.
	case strings.HasPrefix(line, "ls ") && strings.Contains(line, "sandbox-mail"):
		if !strings.Contains(out, ".eml") {
			t.Errorf("no .eml in the sandbox's mail:\n%s", out)
		}
	case strings.HasPrefix(line, "smtpbridge trace "):
		if !strings.Contains(out, "delivered (attempt 1)") || !strings.Contains(out, "mfp-sandbox") {
			t.Errorf("trace does not tell the sandbox message's story:\n%s", out)
		}
	case strings.HasPrefix(line, "sudo smtpbridge tls-cert "):
		key := filepath.Join(word[len(word)-1], word[4]+".key")
		if out := sh(t, false, "stat", "-c", "%U:%G %a", key); out != "root:smtpbridge 640\n" {
			t.Errorf("%s: %s, want root:smtpbridge 640 (the service reads it)", key, out)
		}
	case line == "sudo smtpbridge check-config":
		if !strings.Contains(out, "OK (") {
			t.Errorf("check-config on the edited config:\n%s", out)
		}
	case line == "sudo smtpbridge doctor":
		if strings.Contains(out, "FAIL") || strings.Count(out, "[ ok ] mail") < 3 {
			t.Errorf("doctor on the edited config:\n%s", out)
		}
	case strings.HasPrefix(line, "sudo systemctl enable --now"):
		testenv.Eventually(t, "the service listening on :587", 10*time.Second, func() bool { return testenv.Accepts("127.0.0.1:587") })
		// The status page, as the README says: user prometheus, the
		// password the package made.
		pw, err := os.ReadFile("/etc/smtpbridge/metrics.password")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			user, pass string
			want       int
		}{{"prometheus", strings.TrimSpace(string(pw)), http.StatusOK}, {"prometheus", "a guess", http.StatusUnauthorized}} {
			req, _ := http.NewRequest("GET", "http://127.0.0.1:9464/", nil)
			req.SetBasicAuth(c.user, c.pass)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("the status page: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("the status page with the password %s: %d, want %d", map[bool]string{true: "the package made", false: "guessed"}[c.want == http.StatusOK], resp.StatusCode, c.want)
			}
		}
	case strings.HasPrefix(line, "sudo smtpbridge send-test "):
		if !strings.Contains(out, "delivered in ") {
			t.Errorf("send-test:\n%s", out)
		}
	}
}

// stopSandbox is Ctrl-C in the sandbox's terminal: it stops cleanly.
func stopSandbox(t *testing.T, cmd *exec.Cmd, out fmt.Stringer) {
	t.Helper()
	pids, _ := exec.Command("pgrep", "-f", "^smtpbridge serve --config /usr/share/doc/").Output()
	for _, p := range strings.Fields(string(pids)) {
		if pid, err := strconv.Atoi(p); err == nil {
			syscall.Kill(pid, syscall.SIGINT)
		}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the sandbox after Ctrl-C: %v\n%s", err, out)
		}
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		t.Errorf("the sandbox did not stop on Ctrl-C:\n%s", out)
	}
}
