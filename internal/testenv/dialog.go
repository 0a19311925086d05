package testenv

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Dialog is an SMTP conversation with exact control over every line, for
// testing what a device sees.
type Dialog struct {
	t    TB
	Conn net.Conn
	Text *textproto.Conn
}

// Dial connects to addr and reads the greeting, which must be a 220.
func Dial(t TB, addr string) *Dialog {
	t.Helper()
	d, greeting := DialFrom(t, "", addr)
	if !strings.HasPrefix(greeting, "220") {
		t.Fatalf("greeting %q", greeting)
	}
	return d
}

// DialFrom connects from a chosen source address (127.0.0.x, so that
// per-address limits and blocks can be tested) and returns the greeting,
// whatever it is.
func DialFrom(t TB, src, addr string) (*Dialog, string) {
	t.Helper()
	dialer := net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %q: %v", addr, src, err)
	}
	d := newDialog(t, c)
	greeting, err := d.Read()
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return d, greeting
}

// DialTLS connects with TLS from the first byte and reads the greeting.
func DialTLS(t TB, addr string, cfg *tls.Config) *Dialog {
	t.Helper()
	return DialTLSFrom(t, "", addr, cfg)
}

// DialTLSFrom is DialTLS from a chosen source address.
func DialTLSFrom(t TB, src, addr string, cfg *tls.Config) *Dialog {
	t.Helper()
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := tls.DialWithDialer(dialer, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial %s with TLS from %q: %v", addr, src, err)
	}
	d := newDialog(t, c)
	d.Expect("220")
	return d
}

func newDialog(t TB, c net.Conn) *Dialog {
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &Dialog{t: t, Conn: c, Text: textproto.NewConn(c)}
}

// Read returns the last line of the next reply.
func (d *Dialog) Read() (string, error) {
	for {
		line, err := d.Text.ReadLine()
		if err != nil {
			return "", err
		}
		if len(line) < 4 || line[3] != '-' {
			return line, nil
		}
	}
}

// Expect reads a reply and checks that it starts with want (e.g. "250"
// or "535 5.7.8"); it returns the reply's last line.
func (d *Dialog) Expect(want string) string {
	d.t.Helper()
	got, err := d.Read()
	if err != nil {
		d.t.Fatalf("waiting for %q: %v", want, err)
	}
	if !strings.HasPrefix(got, want) {
		d.t.Fatalf("got %q, want %q", got, want)
	}
	return got
}

// Send writes one line.
func (d *Dialog) Send(line string) {
	d.t.Helper()
	if err := d.Text.PrintfLine("%s", line); err != nil {
		d.t.Fatalf("send %q: %v", short(line), err)
	}
}

// Cmd sends a line and checks the reply starts with want.
func (d *Dialog) Cmd(line, want string) string {
	d.t.Helper()
	d.Send(line)
	return d.Expect(want)
}

// Data sends DATA, the message (dot-stuffed) and its end, and checks the
// final reply starts with want.
func (d *Dialog) Data(msg, want string) string {
	d.t.Helper()
	d.Cmd("DATA", "354")
	w := d.Text.DotWriter()
	io.WriteString(w, msg)
	w.Close()
	return d.Expect(want)
}

// Login says EHLO and logs in with AUTH PLAIN and the initial response.
func (d *Dialog) Login(user, password string) {
	d.t.Helper()
	d.Cmd("EHLO device.lan", "250")
	d.Cmd("AUTH PLAIN "+PlainAuth(user, password), "235 2.0.0")
}

// Closed says whether the server closed the connection (within 5 s).
func (d *Dialog) Closed() bool {
	d.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := d.Text.ReadLine()
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || err != nil && strings.Contains(err.Error(), "reset")
}

// B64 is base64, as SASL wants it.
func B64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// PlainAuth is the AUTH PLAIN response for user and password.
func PlainAuth(user, password string) string { return B64("\x00" + user + "\x00" + password) }

func short(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// Eventually polls cond until it holds, or fails the test after d.
func Eventually(t TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Canaries are what must never appear in a log, a reply, a file the
// bridge writes or a page: the test secrets, the device password in the
// forms AUTH carries it, a bearer token, and the body canary.
var Canaries = []string{ClientSecret, DevicePassword, B64(DevicePassword),
	"Bearer", "eyJ0eXAi", "auth=", BodyCanary}

// CheckNoSecrets fails the test if text (named what) holds a canary or one
// of extra.
func CheckNoSecrets(t TB, what, text string, extra ...string) {
	t.Helper()
	for _, c := range append(Canaries, extra...) {
		if c != "" && strings.Contains(text, c) {
			t.Errorf("%s contains %q", what, c)
		}
	}
}

// Over is a Dialog on a connection already made, for use off the test's
// goroutine: only Try may be called on it.
func Over(c net.Conn) *Dialog { return &Dialog{Conn: c, Text: textproto.NewConn(c)} }

// Try sends line (none if empty) and reads the reply. It returns "" if the
// reply starts with want, else what went wrong: unlike Cmd it never fails
// the test, so it may run on any goroutine.
func (d *Dialog) Try(line, want string) string {
	d.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	if line != "" {
		if err := d.Text.PrintfLine("%s", line); err != nil {
			return line + ": " + err.Error()
		}
	}
	got, err := d.Read()
	if err != nil {
		return line + ": " + err.Error()
	}
	if !strings.HasPrefix(got, want) {
		return line + ": got " + got + ", want " + want
	}
	return ""
}

// LookTool finds a program an integration test needs (.ci/run installs
// them); the test fails, rather than skips, without it.
func LookTool(t TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install it (see .ci/run) to run this test", name)
	}
	return p
}

// ReadFile returns a file's content, or fails the test.
func ReadFile(t TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return string(b)
}

// Grep returns the lines of s that contain substr.
func Grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Accepts says whether something accepts TCP connections on addr now:
// for Eventually, waiting for a server to listen.
func Accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}
