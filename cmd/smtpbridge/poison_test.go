package main

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// procCPU is the CPU time a process has used (user and system), from
// /proc/PID/stat, in the kernel's clock ticks of 1/100 s.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command's name, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// The review's poison message through a Graph device, on the binary: a
// 12 MB message nested 160,000 deep is refused for good within seconds
// (554 5.6.0 to a hybrid device; a dead letter with the reason in queue
// mode) for well under a second of the bridge's CPU and without its
// memory growing; a message nested 60 deep with an attachment large
// enough for the draft path still goes.
func TestGraphPoisonMessage(t *testing.T) {
	u := startFakes(t)
	plain, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	path := u.graphConfig(t, plain, httpAddr)
	data := testenv.ReadFile(t, path)
	data = strings.Replace(data, "devices:\n", "devices:\n  - {name: mfp-queue, username: mfp-queue, password_hash: "+
		strconv.Quote(hashOf(t, password))+", tenant: contoso, mailbox: scanner@contoso.example, delivery: {mode: queue}}\n", 1)
	writeFile(t, path, data)
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain}, "serve", "--config", path)
	pid := p.cmd.Process.Pid

	poison, _ := testenv.Nested("From: <scan@printer.lan>\r\nTo: <bob@contoso.example>\r\nSubject: poison\r\n", 160_000, 100)
	cpu0, start := procCPU(t, pid), time.Now()
	_, err := sendAs(plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example"}, poison)
	took := time.Since(start)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 6, 0}) || !strings.Contains(se.Message, "nested more than 100 deep") {
		t.Fatalf("the hybrid device got %v, want 554 5.6.0 naming the nesting\n%s", err, tail(p.logs.String(), 20))
	}
	cpu := procCPU(t, pid) - cpu0
	rss := peakRSS(t, pid)
	t.Logf("a %.1f MB message nested 160,000 deep: refused in %s, %s of the bridge's CPU (receiving it included), peak RSS %.1f MiB",
		float64(len(poison))/1e6, took.Round(time.Millisecond), cpu, float64(rss)/(1<<20))
	if cpu >= time.Second {
		t.Errorf("the bridge used %s of CPU on the message, want under 1 s", cpu)
	}
	if rss >= 64<<20 {
		t.Errorf("the bridge's peak RSS is %d MiB, want under 64", rss>>20)
	}

	// Queue mode: the device has its 250; the message goes dead with the
	// reason, not tried again.
	if r, err := sendAs(plain, "mfp-queue", "scan@printer.lan", []string{"bob@contoso.example"}, strings.Replace(poison, "Subject: poison", "Subject: poison queued", 1)); err != nil {
		t.Fatalf("queue mode: %q %v", r, err)
	}
	waitFor(t, "the queued poison message dead", 10*time.Second, func() bool {
		out, _ := runCmd(t, "", binary, "queue", "dead", "--json", "--config", path)
		return strings.Contains(out, "nested more than 100 deep")
	})
	if cpu := procCPU(t, pid) - cpu0; cpu >= 2*time.Second {
		t.Errorf("the bridge used %s of CPU on both poison messages", cpu)
	}

	// Sixty levels, and an attachment that makes it a draft: it goes.
	fair, attach := testenv.Nested("From: <scan@printer.lan>\r\nTo: <bob@contoso.example>\r\nSubject: sixty deep\r\n", 60, 4<<20)
	if r, err := sendAs(plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example"}, fair); err != nil || !strings.Contains(r, "2.0.0") {
		t.Fatalf("60 levels: %q %v", r, err)
	}
	g := graphMessage(u.Graph, "sixty deep")
	if g == nil || g.Via != "draft" || len(g.Attachments) != 1 || g.Attachments[0].SHA256 != sha256.Sum256(attach) || !strings.Contains(g.Body, "nested 60 deep") {
		t.Fatalf("the 60-level message arrived as %+v", g)
	}
	p.stop(t)
}

// SIGTERM while an attempt waits on Microsoft Graph, which never answers:
// the bridge stops within its 30 s grace, the message stays queued for
// the next start.
func TestShutdownDuringAttempt(t *testing.T) {
	t.Parallel() // most of it is the grace's wait
	u := startFakes(t)
	// A Graph that completes the TLS handshake and never says a word.
	hole, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{u.Leaf.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	accepted := make(chan *tls.Conn, 16)
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			tc.Handshake()
			accepted <- tc
		}
	}()
	plain, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	path := u.graphConfig(t, plain, httpAddr)
	data := strings.Replace(testenv.ReadFile(t, path), "graph_host: "+strconv.Quote(u.Graph.URL()), "graph_host: \"https://"+hole.Addr().String()+"\"", 1)
	data = strings.Replace(data, "mode: hybrid", "mode: queue", 1)
	writeFile(t, path, data)
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain}, "serve", "--config", path)
	msg, _ := scanMessage("held by a silent Graph", 4<<20)
	if r, err := sendAs(plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example"}, msg); err != nil {
		t.Fatalf("%q %v", r, err)
	}
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(20 * time.Second):
		t.Fatalf("the attempt never reached Graph\n%s", p.logs.String())
	}
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		took := time.Since(start)
		t.Logf("stopped %s after SIGTERM with an attempt in flight", took.Round(100*time.Millisecond))
		if err != nil || took > 31*time.Second {
			t.Errorf("exit %v after %s, want a clean exit within the 30 s grace", err, took)
		}
	case <-time.After(45 * time.Second):
		t.Fatalf("smtpbridge did not stop within 45 s of SIGTERM\n%s", tail(p.logs.String(), 20))
	}
	if files, _ := filepath.Glob(filepath.Join(u.dir, "spool", "queue", "*.eml")); len(files) != 1 {
		t.Errorf("%d messages queued after the stop, want the one in flight", len(files))
	}
}
