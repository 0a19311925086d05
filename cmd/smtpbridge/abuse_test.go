package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	netmail "net/mail"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// The abuse suite: hostile and broken clients against the built binary
// with the default security settings (and tighter limits, to keep it
// quick). Each case checks the documented reply, that nothing is relayed
// that should not be, and that a device keeps sending meanwhile; at the
// end, the bridge's memory stayed bounded and no secret reached its log.
//
// Clients come from different loopback addresses (127.0.0.x), so that a
// block or a per-address limit on one does not touch the others.

func dialFrom(t *testing.T, src, addr string) (*testenv.Dialog, string) {
	t.Helper()
	return testenv.DialFrom(t, src, addr)
}

func plainResp(user, pass string) string { return "\x00" + user + "\x00" + pass }

type abuseBridge struct {
	u      *fakes
	p      *bridgeProc
	plain  string // password listener
	panel  string // listener for devices without AUTH
	v6     string // the password listener's twin on [::1]
	http   string
	config string // the config file's path
}

func startAbuseBridge(t *testing.T) *abuseBridge {
	t.Helper()
	u := startFakes(t)
	b := &abuseBridge{u: u, plain: testenv.FreePort(t), panel: testenv.FreePort(t), http: testenv.FreePort(t), v6: testenv.FreePort6(t)}
	cfg := u.configFrom(t, `
hostname: bridge.test
listeners:
  - name: lan
    address: {{q .Plain}}
    allow_insecure_auth: true
  - name: v6
    address: {{q .V6}}
    allow_insecure_auth: true
  - name: panel
    address: {{q .Panel}}
    allow_insecure_auth: true
    allow_unauthenticated: true
    allowed_networks: ["127.0.0.0/28"]
tenants:
{{template "contoso" .}}    max_messages_per_minute: 100000
devices:
  - name: mfp-2f
    username: mfp-2f
    password_hash: {{q .Hash}}
    tenant: contoso
    mailbox: scanner@contoso.example
    allowed_recipients: [contoso.example]
  - name: spammy
    username: spammy
    password_hash: {{q .Hash}}
    tenant: contoso
    mailbox: scanner@contoso.example
    max_messages_per_hour: 3
  - name: alarm
    auth: none
    networks: ["127.0.0.9"]
    tenant: contoso
    mailbox: scanner@contoso.example
    allowed_recipients: [alerts.example]
limits:
  max_message_bytes: 10000000
  max_recipients: 100
  max_connections_per_ip: 5
  command_timeout: 10s
  session_timeout: 20s
spool:
  dir: spool
http:
  address: {{q .HTTP}}
  admin_over_tcp: true
  auth:
    username: prometheus
    password_file: metrics.password
`, map[string]any{"Plain": b.plain, "V6": b.v6, "Panel": b.panel, "Hash": hashOf(t, password), "HTTP": b.http})
	writeFile(t, filepath.Join(u.dir, "metrics.password"), pagePassword+"\n")
	path := filepath.Join(u.dir, "abuse.yaml")
	writeFile(t, path, cfg)
	b.config = path
	b.p = startBridge(t, []string{"SSL_CERT_FILE=" + u.caFile, "TEST_CLIENT_SECRET=" + clientSecret},
		[]string{b.plain, b.v6, b.panel, b.http}, "serve", "--config", path)
	return b
}

// pagePassword is the abuse bridge's http.auth password.
const pagePassword = "page-password-0123456789"

// get fetches a page of the http listener with http.auth's credential.
func (b *abuseBridge) get(t *testing.T, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+b.http+path, nil)
	req.SetBasicAuth("prometheus", pagePassword)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// stillServes sends one message as mfp-2f from 127.0.0.1 and checks it
// arrives: whatever else is going on, devices keep sending.
func (b *abuseBridge) stillServes(t *testing.T, tag string) {
	t.Helper()
	cv, greeting := dialFrom(t, "127.0.0.1", b.plain)
	if !strings.HasPrefix(greeting, "220") {
		t.Fatalf("a device got %q at the greeting", greeting)
	}
	cv.Login("mfp-2f", password)
	cv.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	cv.Cmd("RCPT TO:<bob@contoso.example>", "250")
	cv.Cmd("DATA", "354")
	w := cv.Text.DotWriter()
	fmt.Fprintf(w, "Subject: still serving %s\r\n\r\nok\r\n", tag)
	w.Close()
	if got, err := cv.Read(); err != nil || !strings.HasPrefix(got, "250 2.0.0 OK") {
		t.Fatalf("a device's message during %s: %q %v", tag, got, err)
	}
	cv.Cmd("QUIT", "221")
}

// relayedTo lists every recipient Exchange got a message for.
func (b *abuseBridge) relayedTo() map[string]bool {
	out := map[string]bool{}
	for _, m := range b.u.exo.Messages() {
		for _, to := range m.To {
			out[strings.ToLower(to)] = true
		}
	}
	return out
}

func TestAbuse(t *testing.T) {
	t.Parallel() // beside TestAbuseEntraOutage's minute of waiting
	b := startAbuseBridge(t)

	slowLoris := func(t *testing.T) {
		// A silent client is cut off at command_timeout (a command
		// trickled byte by byte too: the timeout is per command); one that
		// keeps its session alive with a NOOP every 2 s, at
		// session_timeout. A device is served meanwhile.
		silent, _ := dialFrom(t, "127.0.0.11", b.plain)
		dribble, _ := dialFrom(t, "127.0.0.11", b.plain)
		chatty, _ := dialFrom(t, "127.0.0.12", b.plain)
		start := time.Now()
		go func() {
			for i := 0; i < 40; i++ {
				if _, err := dribble.Conn.Write([]byte("N")); err != nil {
					return
				}
				time.Sleep(time.Second)
			}
		}()
		type end struct {
			reply string
			took  time.Duration
		}
		chattyEnd := make(chan end, 1)
		go func() {
			for {
				if err := chatty.Text.PrintfLine("NOOP"); err != nil {
					chattyEnd <- end{err.Error(), time.Since(start)}
					return
				}
				got, err := chatty.Read()
				if err != nil || !strings.HasPrefix(got, "250") {
					chattyEnd <- end{got, time.Since(start)}
					return
				}
				time.Sleep(2 * time.Second)
			}
		}()
		b.stillServes(t, "slow loris")
		// Each client's end, measured as it comes: the two are read side
		// by side, so that the one that ends later does not count against
		// the other.
		var ends sync.WaitGroup
		for name, c := range map[string]struct {
			cv    *testenv.Dialog
			limit time.Duration
		}{
			"silent": {silent, 15 * time.Second}, // command_timeout
			// Each timed-out partial command gets a 501, then a fresh
			// command_timeout; session_timeout ends it.
			"byte-by-byte": {dribble, 25 * time.Second},
		} {
			ends.Go(func() {
				cv := c.cv
				// The last reply before the server closes the connection.
				cv.Conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				var last string
				for {
					got, err := cv.Read()
					if err != nil {
						break
					}
					last = got
				}
				if took := time.Since(start); !strings.HasPrefix(last, "421 4.4.2") || took > c.limit {
					t.Errorf("a %s client: %q, closed after %s (command_timeout 10s, session_timeout 20s)", name, last, took.Round(time.Second))
				}
			})
		}
		ends.Wait()
		select {
		case e := <-chattyEnd:
			if !strings.HasPrefix(e.reply, "421 4.4.2") || e.took < 18*time.Second || e.took > 30*time.Second {
				t.Errorf("a client sending NOOPs: %q after %s (session_timeout 20s)", e.reply, e.took.Round(time.Second))
			}
		case <-time.After(40 * time.Second):
			t.Error("a client sending NOOPs was never cut off")
		}
	}

	// The slow clients take command_timeout and session_timeout to be cut
	// off: they run beside the other cases.
	t.Run("abuse", func(t *testing.T) {
		t.Run("slow loris", func(t *testing.T) {
			t.Parallel()
			slowLoris(t)
		})
		t.Run("the rest", func(t *testing.T) {
			t.Parallel()
			t.Run("open relay without AUTH", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.2", b.plain)
				cv.Cmd("EHLO spammer", "250")
				cv.Cmd("MAIL FROM:<ceo@contoso.example>", "530 5.7.0")
				cv.Cmd("RCPT TO:<victim@evil.example>", "502 5.5.1") // go-smtp: no MAIL
				// A listener that takes devices without AUTH, from an address
				// that is no device's.
				cv2, _ := dialFrom(t, "127.0.0.3", b.panel)
				cv2.Cmd("HELO spammer", "250")
				cv2.Cmd("MAIL FROM:<ceo@contoso.example>", "530 5.7.0")
				// And from outside its allowed_networks: refused at the greeting.
				_, greeting := dialFrom(t, "127.0.0.100", b.panel)
				if !strings.HasPrefix(greeting, "554 5.7.1") {
					t.Errorf("greeting outside allowed_networks: %q", greeting)
				}
				b.stillServes(t, "relay without AUTH")
			})

			t.Run("open relay with AUTH", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.4", b.plain)
				cv.Login("mfp-2f", password)
				cv.Cmd("MAIL FROM:<scan@printer.lan>", "250")
				cv.Cmd("RCPT TO:<victim@evil.example>", "550 5.7.1")
				cv.Cmd("RCPT TO:<victim@contoso.example.evil.example>", "550 5.7.1")
				cv.Cmd("RCPT TO:<victim@eu.contoso.example>", "550 5.7.1")
				// The device without AUTH, within and outside its policy.
				pv, _ := dialFrom(t, "127.0.0.9", b.panel)
				pv.Cmd("HELO panel", "250")
				pv.Cmd("MAIL FROM:<panel@lan>", "250")
				pv.Cmd("RCPT TO:<ceo@contoso.example>", "550 5.7.1")
				pv.Cmd("RCPT TO:<noc@alerts.example>", "250")
				pv.Cmd("DATA", "354")
				w := pv.Text.DotWriter()
				io.WriteString(w, "Subject: alarm zone 3\r\n\r\nzone 3\r\n")
				w.Close()
				if got, _ := pv.Read(); !strings.HasPrefix(got, "250 2.0.0") {
					t.Errorf("the panel's alarm: %q", got)
				}
				b.stillServes(t, "relay with AUTH")
			})

			t.Run("recipient policy bypasses", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.5", b.plain)
				cv.Login("mfp-2f", password)
				cv.Cmd("MAIL FROM:<scan@printer.lan>", "250")
				for rcpt, want := range map[string]string{
					"<@contoso.example:victim@evil.example>":  "550 5.7.1", // source route: the real address is checked
					"<victim%evil.example@contoso.example>":   "553 5.1.3",
					"<victim!evil.example@contoso.example>":   "553 5.1.3",
					`<"victim@evil.example"@contoso.example>`: "553 5.1.3",
					"<victim@[192.0.2.1]>":                    "553 5.1.3",
					"<victim@contoso.example.>":               "553 5.1.3",
					"<VICTIM@EVIL.EXAMPLE>":                   "550 5.7.1",
				} {
					cv.Cmd("RCPT TO:"+rcpt, want)
				}
				cv.Cmd("QUIT", "221")
			})

			t.Run("header injection through the rewritten From", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.6", b.plain)
				cv.Login("mfp-2f", password)
				cv.Cmd("MAIL FROM:<scan@printer.lan>", "250")
				cv.Cmd("RCPT TO:<bob@contoso.example>", "250")
				cv.Cmd("DATA", "354")
				w := cv.Text.DotWriter()
				io.WriteString(w, "From: \"Scanner\r\n Bcc: victim@evil.example\" <scan@printer.lan>\r\n"+
					"From: =?utf-8?q?x=0D=0ABcc:_victim2@evil.example?= <ceo@contoso.example>\r\n"+
					"Subject: injection\rBcc: victim3@evil.example\r\nX-Null: a\x00b\r\n\r\nbody\r\n")
				w.Close()
				if got, _ := cv.Read(); !strings.HasPrefix(got, "250 2.0.0") {
					t.Fatalf("reply %q", got)
				}
				var data []byte
				for _, m := range b.u.exo.Messages() {
					if strings.Contains(string(m.Data), "injection") {
						data = m.Data
					}
				}
				head, _, _ := strings.Cut(string(data), "\r\n\r\n")
				if strings.Count(strings.ToLower("\r\n"+head), "\r\nfrom:") != 1 || strings.Contains(strings.ToLower(head), "\nbcc:") ||
					strings.Contains(head, "\rBcc") || strings.ContainsRune(head, 0) || strings.Contains(head, "ceo@") {
					t.Errorf("the header Exchange got:\n%q", head)
				}
				if !strings.Contains(head, "From: \"Scanner Bcc: victim at evil.example\" <scanner@contoso.example>") {
					t.Errorf("From not rewritten to the mailbox:\n%s", head)
				}
			})

			t.Run("bare CR end-of-data look-alike", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.16", b.plain)
				cv.Login("mfp-2f", password)
				cv.Cmd("MAIL FROM:<scan@printer.lan>", "250")
				cv.Cmd("RCPT TO:<bob@contoso.example>", "250")
				cv.Cmd("DATA", "354")
				// Written raw: the smuggled "end of data" is CR . CRLF.
				io.WriteString(cv.Conn, "Subject: smuggle\r\n\r\nA\r.\r\nMAIL FROM:<x>\r\nRCPT TO:<evil@elsewhere.example>\r\nDATA\r\nB\rC\r\n.\r\n")
				if got, _ := cv.Read(); !strings.HasPrefix(got, "250 2.0.0") {
					t.Fatalf("reply %q", got)
				}
				var got []string
				for _, m := range b.u.exo.Messages() {
					if strings.Contains(string(m.Data), "Subject: smuggle") {
						got = append(got, string(m.Data))
						if len(m.To) != 1 || m.To[0] != "bob@contoso.example" {
							t.Errorf("recipients %v", m.To)
						}
					}
				}
				if len(got) != 1 {
					t.Fatalf("Exchange got %d messages", len(got))
				}
				_, body, _ := strings.Cut(got[0], "\r\n\r\n")
				if strings.Contains(strings.ReplaceAll(got[0], "\r\n", ""), "\r") {
					t.Errorf("a bare CR reached Exchange: %q", body)
				}
				if body != "A\r\n.\r\nMAIL FROM:<x>\r\nRCPT TO:<evil@elsewhere.example>\r\nDATA\r\nB\r\nC\r\n" {
					t.Errorf("the body Exchange got: %q", body)
				}
			})

			t.Run("DSN parameters and a Latin-1 display name", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.17", b.plain)
				cv.Login("mfp-2f", password)
				// Python's smtplib and ERP jobs send these whatever EHLO lists.
				cv.Cmd("MAIL FROM:<scan@printer.lan> RET=HDRS ENVID=abc", "250")
				cv.Cmd("RCPT TO:<bob@contoso.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@contoso.example", "250")
				cv.Cmd("DATA", "354")
				io.WriteString(cv.Conn, "From: Scanner B\xfcro 2 <scan@printer.lan>\r\nSubject: dsn-latin1\r\n\r\nscan\r\n.\r\n")
				if got, _ := cv.Read(); !strings.HasPrefix(got, "250 2.0.0") {
					t.Fatalf("reply %q", got)
				}
				var m *fakeexchange.Message
				for _, x := range b.u.exo.Messages() {
					if strings.Contains(string(x.Data), "Subject: dsn-latin1") {
						m = &x
					}
				}
				if m == nil {
					t.Fatal("not delivered")
				}
				if m.Ret != "HDRS" || m.EnvID != "abc" || m.Notify["bob@contoso.example"] != "SUCCESS,FAILURE" ||
					!strings.EqualFold(m.ORcpt["bob@contoso.example"], "rfc822;bob@contoso.example") { // addr-type is case-insensitive (RFC 3461)
					t.Errorf("Exchange saw RET=%q ENVID=%q NOTIFY=%v ORCPT=%v", m.Ret, m.EnvID, m.Notify, m.ORcpt)
				}
				hdr, _, _ := strings.Cut(string(m.Data), "\r\n\r\n")
				from := testenv.Grep(hdr, "From:")
				msg, err := netmail.ReadMessage(strings.NewReader(string(m.Data)))
				if err != nil {
					t.Fatal(err)
				}
				list, err := msg.Header.AddressList("From")
				if err != nil || len(list) != 1 || list[0].Name != "Scanner Büro 2" || list[0].Address != "scanner@contoso.example" {
					t.Errorf("From %q reads as %v %v", from, list, err)
				}
				if !strings.Contains(from, "=?utf-8?") {
					t.Errorf("From %q is not an encoded word", from)
				}
			})

			t.Run("10,000 recipients", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.7", b.plain)
				cv.Login("mfp-2f", password)
				cv.Cmd("MAIL FROM:<scan@printer.lan>", "250")
				// Pipelined, as a bulk sender would.
				written := make(chan struct{})
				go func() {
					defer close(written)
					for i := 0; i < 10000; i++ {
						fmt.Fprintf(cv.Text.W, "RCPT TO:<r%d@contoso.example>\r\n", i)
					}
					cv.Text.W.Flush()
				}()
				ok, over := 0, 0
				for i := 0; i < 10000; i++ {
					got, err := cv.Read()
					if err != nil {
						t.Fatalf("after %d replies: %v", i, err)
					}
					switch {
					case strings.HasPrefix(got, "250"):
						ok++
					case strings.HasPrefix(got, "452 4.5.3"):
						over++
					default:
						t.Fatalf("reply %d: %q", i, got)
					}
				}
				<-written // the writer is done with cv.Text before the test uses it again
				if ok != 100 || over != 9900 {
					t.Errorf("%d accepted, %d refused with 452 4.5.3; want 100 and 9900", ok, over)
				}
				// The session goes on, for the recipients it has (RFC 5321
				// section 4.5.3.1.10).
				cv.Cmd("DATA", "354")
				w := cv.Text.DotWriter()
				io.WriteString(w, "Subject: many\r\n\r\nx\r\n")
				w.Close()
				if got, _ := cv.Read(); !strings.HasPrefix(got, "250 2.0.0") {
					t.Errorf("DATA after 10,000 RCPTs: %q", got)
				}
				for _, m := range b.u.exo.Messages() {
					if strings.Contains(string(m.Data), "Subject: many") && len(m.To) != 100 {
						t.Errorf("Exchange got %d recipients, want 100", len(m.To))
					}
				}
			})

			t.Run("1 GB DATA", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.8", b.plain)
				cv.Login("mfp-2f", password)
				cv.Cmd("MAIL FROM:<scan@printer.lan>", "250")
				cv.Cmd("RCPT TO:<bob@contoso.example>", "250")
				cv.Cmd("DATA", "354")
				cv.Conn.SetDeadline(time.Now().Add(5 * time.Minute))
				line := strings.Repeat("0123456789", 99) + "\r\n" // 1,000 bytes
				chunk := []byte(strings.Repeat(line, 1000))       // 1 MB
				bw := bufio.NewWriterSize(cv.Conn, 1<<20)
				io.WriteString(bw, "Subject: huge\r\n\r\n")
				for i := 0; i < 1000; i++ {
					if _, err := bw.Write(chunk); err != nil {
						t.Fatalf("after %d MB: %v", i, err)
					}
				}
				io.WriteString(bw, ".\r\n")
				bw.Flush()
				if got, err := cv.Read(); err != nil || !strings.HasPrefix(got, "552 5.3.4") {
					t.Errorf("1 GB DATA: %q %v", got, err)
				}
				b.stillServes(t, "1 GB DATA")
			})

			t.Run("endless line", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.10", b.plain)
				cv.Cmd("EHLO x", "250")
				go func() {
					cv.Text.W.WriteString("NOOP ")
					for i := 0; i < 64; i++ {
						cv.Text.W.WriteString(strings.Repeat("x", 16<<10))
					}
					cv.Text.W.Flush()
				}()
				if got, _ := cv.Read(); !strings.HasPrefix(got, "500 5.4.0") {
					t.Errorf("a 1 MB command line: %q", got)
				}
				if !cv.Closed() {
					t.Error("the connection stayed open after an overlong line")
				}
				b.stillServes(t, "endless line")
			})

			t.Run("connection flood from one address", func(t *testing.T) {
				var refused, served int
				for i := 0; i < 30; i++ {
					_, greeting := dialFrom(t, "127.0.0.13", b.plain)
					switch {
					case strings.HasPrefix(greeting, "220"):
						served++
					case strings.HasPrefix(greeting, "421 4.7.0 Too many connections from your address"):
						refused++
					default:
						t.Fatalf("greeting %q", greeting)
					}
				}
				if served != 5 || refused != 25 {
					t.Errorf("%d served, %d refused; want 5 (max_connections_per_ip) and 25", served, refused)
				}
				b.stillServes(t, "connection flood")
			})

			t.Run("a repeat login answers at once, a failure does not", func(t *testing.T) {
				const from = "127.0.0.21"
				auth := func(user, pass, want string) time.Duration {
					cv, greeting := dialFrom(t, from, b.plain)
					if !strings.HasPrefix(greeting, "220") {
						t.Fatalf("greeting %q", greeting)
					}
					cv.Cmd("EHLO repeat", "250")
					t0 := time.Now()
					cv.Cmd("AUTH PLAIN "+b64(plainResp(user, pass)), want)
					d := time.Since(t0)
					cv.Cmd("QUIT", "221")
					return d
				}
				fastest := time.Hour
				for i := 0; i < 4; i++ {
					fastest = min(fastest, auth("mfp-2f", password, "235 2.0.0"))
				}
				// A success no longer waits for the failures' 250 ms floor.
				if fastest >= 200*time.Millisecond {
					t.Errorf("the fastest of 4 good logins took %s: successes still wait for the floor", fastest)
				}
				wrong, unknown := auth("mfp-2f", "not-the-password", "535 5.7.8"), auth("no-such-device", password, "535 5.7.8")
				for what, d := range map[string]time.Duration{"a wrong password": wrong, "an unknown user": unknown} {
					if d < 250*time.Millisecond {
						t.Errorf("%s took %s, less than the floor", what, d)
					}
				}
				t.Logf("good login (repeat) %s; wrong password %s; unknown user %s", fastest, wrong, unknown)
			})

			t.Run("50 wrong passwords", func(t *testing.T) {
				const attacker = "127.0.0.14"
				start := time.Now()
				tries, refusedAtGreeting := 0, 0
				for tries+refusedAtGreeting < 50 {
					cv, greeting := dialFrom(t, attacker, b.plain)
					if strings.HasPrefix(greeting, "421 4.7.0 Too many failed logins") {
						refusedAtGreeting++
						continue
					}
					cv.Cmd("EHLO guesser", "250")
					for i := 0; i < 3 && tries < 50; i++ {
						t0 := time.Now()
						cv.Cmd("AUTH PLAIN "+b64(plainResp("mfp-2f", "guess"+strconv.Itoa(tries))), "535 5.7.8")
						if d := time.Since(t0); d < 250*time.Millisecond {
							t.Errorf("a failed AUTH took %s, less than the minimum", d)
						}
						tries++
					}
					if !cv.Closed() {
						t.Error("the session stayed open after 3 failed AUTHs")
					}
				}
				if tries > 6 {
					t.Errorf("%d passwords were tried before the block (auth_max_failures 5)", tries)
				}
				// The right password from the blocked address: refused at the
				// greeting, never checked.
				_, greeting := dialFrom(t, attacker, b.plain)
				if !strings.HasPrefix(greeting, "421 4.7.0") {
					t.Errorf("the blocked address got %q", greeting)
				}
				t.Logf("50 attempts: %d AUTHs answered, %d connections refused at the greeting, in %s", tries, refusedAtGreeting, time.Since(start).Round(time.Millisecond))
				b.stillServes(t, "password guessing")

				out, err := runCmd(t, "", binary, "blocks", "--config", b.config)
				if err != nil || !strings.Contains(out, attacker) || !strings.Contains(out, "1 address(es) blocked") {
					t.Errorf("smtpbridge blocks: %v\n%s", err, out)
				}
				_, m := b.get(t, "/metrics")
				for _, want := range []string{`smtpbridge_blocked_addresses 1`, `smtpbridge_connections_refused_total{listener="lan",reason="blocked"}`} {
					if !strings.Contains(m, want) {
						t.Errorf("/metrics lacks %s", want)
					}
				}
				if _, page := b.get(t, "/"); !strings.Contains(page, attacker) {
					t.Error("the status page does not list the blocked address")
				}
				if out, err := runCmd(t, "", binary, "blocks", "unblock", attacker, "--admin", "http://"+b.http, "--token-file", filepath.Join(b.u.dir, "spool", "admin.token")); err != nil || !strings.Contains(out, "unblocked") {
					t.Errorf("blocks unblock: %v\n%s", err, out)
				}
				cv, greeting := dialFrom(t, attacker, b.plain)
				if !strings.HasPrefix(greeting, "220") {
					t.Fatalf("after unblock: %q", greeting)
				}
				cv.Login("mfp-2f", password)
			})

			t.Run("admin API without the owner's credential", func(t *testing.T) {
				tokenFile := filepath.Join(b.u.dir, "spool", "admin.token")
				if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o600 {
					t.Fatalf("the admin token file: %v %v", fi, err)
				}
				tok := strings.TrimSpace(testenv.ReadFile(t, tokenFile))
				call := func(method, path string, hdr map[string]string) (int, string) {
					req, _ := http.NewRequest(method, "http://"+b.http+path, nil)
					for k, v := range hdr {
						if k == "Host" {
							req.Host = v
						} else {
							req.Header.Set(k, v)
						}
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					body, _ := io.ReadAll(resp.Body)
					return resp.StatusCode, string(body)
				}
				bearer := "Bearer " + tok
				for _, c := range []struct {
					what, method, path string
					hdr                map[string]string
					want               int
				}{
					{"no credential", "GET", "/api/queue", nil, 401},
					{"no credential, reload", "POST", "/-/reload", nil, 401},
					{"a guessed credential", "POST", "/api/queue/retry", map[string]string{"Authorization": "Bearer " + strings.Repeat("a", 64)}, 401},
					{"a cross-site page, with the credential", "POST", "/-/reload", map[string]string{"Authorization": bearer, "Origin": "http://evil.example"}, 403},
					{"a cross-site fetch, with the credential", "POST", "/api/queue/retry", map[string]string{"Authorization": bearer, "Sec-Fetch-Site": "cross-site"}, 403},
					{"DNS rebinding, with the credential", "GET", "/api/queue", map[string]string{"Authorization": bearer, "Host": "rebind.example:" + strings.Split(b.http, ":")[1]}, 403},
					{"DNS rebinding, blocks", "DELETE", "/api/blocks/127.0.0.14", map[string]string{"Authorization": bearer, "Host": "rebind.example"}, 403},
					{"the owner", "GET", "/api/queue", map[string]string{"Authorization": bearer}, 200},
				} {
					code, body := call(c.method, c.path, c.hdr)
					if code != c.want {
						t.Errorf("%s: %s %s = %d %s, want %d", c.what, c.method, c.path, code, body, c.want)
					}
					if c.want != 200 && strings.Contains(body, "messages") {
						t.Errorf("%s: the answer shows the queue: %s", c.what, body)
					}
				}
				// The command line, as the bridge's owner.
				if out, err := runCmd(t, "", binary, "queue", "list", "--config", b.config); err != nil || !strings.Contains(out, "bridge at "+filepath.Join(b.u.dir, "spool", "admin.sock")) {
					t.Errorf("smtpbridge queue list: %v\n%s", err, out)
				}
				// Over TCP (http.admin_over_tcp), the token goes to the
				// bridge's own listener: the test's user's, as it owns the
				// token file.
				if out, err := runCmd(t, "", binary, "queue", "list", "--admin", "http://"+b.http, "--token-file", tokenFile); err != nil || !strings.Contains(out, "bridge at http://") {
					t.Errorf("smtpbridge queue list --admin: %v\n%s", err, out)
				}
				if out, err := runCmd(t, "", binary, "reload", "--config", b.config); err != nil || !strings.Contains(out, "configuration reloaded") {
					t.Errorf("smtpbridge reload: %v\n%s", err, out)
				}
				// Without the token: refused, and told why.
				out, err := runCmd(t, "", binary, "queue", "list", "--admin", "http://"+b.http)
				if err == nil || !strings.Contains(out, "refused the request") || !strings.Contains(out, "--token-file") {
					t.Errorf("smtpbridge queue list without the token: %v\n%s", err, out)
				}
			})

			t.Run("IPv6 client counted by its /64", func(t *testing.T) {
				// Only ::1 exists on loopback: the block it earns is its
				// /64's, which the guard's unit tests show new addresses
				// of the /64 do not escape.
				for i := 0; i < 5; i++ {
					cv, greeting := dialFrom(t, "::1", b.v6)
					if !strings.HasPrefix(greeting, "220") {
						t.Fatalf("attempt %d: greeting %q", i, greeting)
					}
					cv.Cmd("EHLO v6", "250")
					cv.Cmd("AUTH PLAIN "+b64(plainResp("mfp-2f", "wrong")), "535 5.7.8")
					cv.Cmd("QUIT", "221")
				}
				if _, greeting := dialFrom(t, "::1", b.v6); !strings.HasPrefix(greeting, "421 4.7.0 Too many failed logins") {
					t.Errorf("::1 after 5 failures: %q", greeting)
				}
				out, err := runCmd(t, "", binary, "blocks", "--config", b.config)
				if err != nil || !strings.Contains(out, "::/64") {
					t.Errorf("smtpbridge blocks: %v\n%s", err, out)
				}
				if out, err := runCmd(t, "", binary, "blocks", "unblock", "::/64", "--config", b.config); err != nil || !strings.Contains(out, "unblocked") {
					t.Errorf("blocks unblock ::/64: %v\n%s", err, out)
				}
				// The sessions above may take a moment to count as ended.
				testenv.Eventually(t, "::1 served after the unblock", 5*time.Second, func() bool {
					cv, greeting := dialFrom(t, "::1", b.v6)
					cv.Conn.Close()
					return strings.HasPrefix(greeting, "220")
				})
			})

			t.Run("status page and metrics without the credential", func(t *testing.T) {
				for _, path := range []string{"/", "/metrics"} {
					code, body := httpGet(t, "http://"+b.http+path)
					if code != 401 || strings.Contains(body, "mfp-2f") || strings.Contains(body, "scanner@") {
						t.Errorf("GET %s without the credential: %d %s", path, code, tail(body, 5))
					}
					req, _ := http.NewRequest("GET", "http://"+b.http+path, nil)
					req.SetBasicAuth("prometheus", "guess")
					if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
						t.Errorf("GET %s with a wrong password: %v %v", path, resp.Status, err)
					} else {
						resp.Body.Close()
					}
					if code, body := b.get(t, path); code != 200 || !strings.Contains(body, "mfp-2f") {
						t.Errorf("GET %s with the credential: %d", path, code)
					}
				}
				// The probes stay open: they show nothing.
				for _, path := range []string{"/healthz", "/readyz"} {
					if code, _ := httpGet(t, "http://"+b.http+path); code != 200 {
						t.Errorf("GET %s: %d", path, code)
					}
				}
				// The server's own bounds: a 64 KiB header is refused.
				c, err := net.Dial("tcp", b.http)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if line, _ := bufio.NewReader(c).ReadString('\n'); !strings.Contains(line, "431") {
					t.Errorf("a 64 KiB header: %q", line)
				}
			})

			t.Run("hourly limit of a device", func(t *testing.T) {
				cv, _ := dialFrom(t, "127.0.0.15", b.plain)
				cv.Login("spammy", password)
				for i := 0; i < 3; i++ {
					cv.Cmd("MAIL FROM:<x@printer.lan>", "250")
					cv.Cmd("RSET", "250")
				}
				cv.Cmd("MAIL FROM:<x@printer.lan>", "450 4.7.1")
				b.stillServes(t, "hourly limit")
			})

		})
	})

	// Nothing went anywhere but where the policies allow.
	for to := range b.relayedTo() {
		if !strings.HasSuffix(to, "@contoso.example") && !strings.HasSuffix(to, "@alerts.example") {
			t.Errorf("relayed to %s", to)
		}
	}
	// Memory stayed bounded through 1 GB of DATA, 10,000 recipients and
	// the floods.
	if hwm := peakRSS(t, b.p.cmd.Process.Pid); hwm > 150<<20 {
		t.Errorf("the bridge's peak RSS was %d MiB", hwm>>20)
	} else {
		t.Logf("the bridge's peak RSS: %d MiB", hwm>>20)
	}
	b.p.stop(t)
	// Nor in anything the bridge wrote to disk: spool metadata, dead
	// letters, the status page's state.
	filepath.WalkDir(filepath.Join(b.u.dir, "spool"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".eml") {
			return nil
		}
		data, _ := os.ReadFile(path)
		for _, canary := range []string{clientSecret, password, "Bearer"} {
			if strings.Contains(string(data), canary) {
				t.Errorf("%s contains %q", path, canary)
			}
		}
		return nil
	})
	logs := b.p.logs.String()
	for _, canary := range []string{clientSecret, password, "Bearer", "eyJ0eXAi", b64(plainResp("mfp-2f", password))} {
		if strings.Contains(logs, canary) {
			t.Errorf("the log contains %q", canary)
		}
	}
	if t.Failed() {
		t.Logf("bridge log (last 60 lines):\n%s", tail(logs, 60))
	}
}

// peakRSS reads a process's peak resident set (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 { return procStatus(t, pid, "VmHWM:") }

// procStatus reads a size (in bytes) from a process's /proc status.
func procStatus(t *testing.T, pid int, key string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func b64(s string) string { return testenv.B64(s) }

// openFds counts a process's open file descriptors.
func openFds(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// A flood of idle connections from one address, beyond
// max_connections_per_ip, against an implicit-TLS listener and a
// plaintext one: refusals cost the bridge next to nothing (no TLS
// handshake, a bounded number of greetings in flight), and another
// device delivers meanwhile.
func TestAbuseRefusalFlood(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts file descriptors in /proc")
	}
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	data := testenv.ReadFile(t, path)
	data = strings.Replace(data, "    tls: starttls\n", "    tls: implicit\n", 1)
	// bcrypt, as in the other abuse cases: an argon2id check takes 19 MiB
	// for a while, which would hide what the flood costs.
	data = regexp.MustCompile(`password_hash: "[^"]*"`).ReplaceAllLiteralString(data, fmt.Sprintf("password_hash: %q", hashOf(t, password)))
	writeFile(t, path, data+"limits:\n  max_connections_per_ip: 2\n")
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile},
		[]string{plain, secure}, "serve", "--config", path)
	pid := p.cmd.Process.Pid
	before := openFds(t, pid)

	const n = 2000
	flood := func(src, addr string) []net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		conns := make([]net.Conn, 0, n)
		for i := 0; i < n; i++ {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			conns = append(conns, c)
		}
		return conns
	}
	tlsCfg := &tls.Config{RootCAs: u.CA.Pool(), ServerName: "localhost"}
	deliver := func(tag string) {
		t.Helper()
		// From an address of its own: the probes that saw the bridge
		// listening came from 127.0.0.1, and may still count there.
		d := testenv.DialTLSFrom(t, "127.0.0.2", secure, tlsCfg)
		d.Login("mfp-2f", password)
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		d.Data("Subject: "+tag+"\r\n\r\nscan\r\n", "250")
		d.Cmd("QUIT", "221")
	}

	deliver("before the floods")
	t.Logf("before the floods: RSS %d MiB, peak %d MiB", vmRSS(t, pid)>>20, peakRSS(t, pid)>>20)
	for _, c := range []struct{ name, src, addr string }{
		{"implicit TLS", "127.0.0.50", secure},
		{"plaintext", "127.0.0.51", plain},
	} {
		start := time.Now()
		conns := flood(c.src, c.addr)
		took := time.Since(start)
		deliver("during the " + c.name + " flood")
		// The bridge's side of the refused connections is closed: the
		// two admitted ones, and the delivery's, stay.
		var fds int
		testenv.Eventually(t, "refused connections closed", time.Second, func() bool {
			fds = openFds(t, pid)
			return fds < 100
		})
		rss := vmRSS(t, pid)
		if rss > 64<<20 {
			t.Errorf("%s: the bridge's RSS is %d MiB with %d refused connections open", c.name, rss>>20, n)
		}
		// A refused client reads the refusal (plaintext) or an end of
		// the connection (implicit TLS: no handshake), not a hang.
		last := conns[n-1]
		last.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		k, err := last.Read(buf)
		switch {
		case c.addr == plain && k > 0 && !strings.HasPrefix(string(buf[:k]), "421 4.7.0"):
			t.Errorf("%s: a refused client read %q", c.name, buf[:k])
		case c.addr == secure && (k != 0 || !errors.Is(err, io.EOF)):
			t.Errorf("%s: a refused client read %q, %v; want the connection closed", c.name, buf[:k], err)
		}
		t.Logf("%s: %d connections from one address in %s; the bridge holds %d file descriptors (%d before), RSS %d MiB",
			c.name, n, took.Round(time.Millisecond), fds, before, rss>>20)
		for _, c := range conns {
			c.Close()
		}
	}
	_, m := httpGet(t, "http://"+httpAddr+"/metrics")
	for _, l := range []string{"lan", "secure"} {
		want := fmt.Sprintf(`smtpbridge_connections_refused_total{listener=%q,reason="limit_ip"} `, l)
		if got := testenv.Grep(m, want); got == "" {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if got := delivered(u.exo); got["during the implicit TLS flood"] != 1 || got["during the plaintext flood"] != 1 {
		t.Errorf("delivered: %v", got)
	}
	if hwm := peakRSS(t, pid); hwm > 64<<20 {
		t.Errorf("the bridge's peak RSS was %d MiB", hwm>>20)
	}
	p.stop(t)
}

// vmRSS reads a process's resident set (VmRSS) in bytes.
func vmRSS(t *testing.T, pid int) int64 { return procStatus(t, pid, "VmRSS:") }

// A block survives a restart: the blocked address is refused at the
// greeting by the new process, and smtpbridge blocks lists it.
func TestAbuseBlockSurvivesRestart(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	data := regexp.MustCompile(`password_hash: "[^"]*"`).ReplaceAllLiteralString(testenv.ReadFile(t, path), fmt.Sprintf("password_hash: %q", hashOf(t, password)))
	writeFile(t, path, data)
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	p := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	const attacker = "127.0.0.21"
	for i := 0; i < 5; i++ {
		cv, greeting := dialFrom(t, attacker, plain)
		if !strings.HasPrefix(greeting, "220") {
			t.Fatalf("attempt %d: %q", i, greeting)
		}
		cv.Cmd("EHLO guesser", "250")
		cv.Cmd("AUTH PLAIN "+b64(plainResp("mfp-2f", "guess")), "535 5.7.8")
		cv.Cmd("QUIT", "221")
	}
	if _, greeting := dialFrom(t, attacker, plain); !strings.HasPrefix(greeting, "421 4.7.0 Too many failed logins") {
		t.Fatalf("after 5 failures: %q", greeting)
	}
	p.stop(t)

	p2 := startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	if _, greeting := dialFrom(t, attacker, plain); !strings.HasPrefix(greeting, "421 4.7.0 Too many failed logins") {
		t.Errorf("the blocked address after a restart: %q", greeting)
	}
	if _, greeting := dialFrom(t, "127.0.0.22", plain); !strings.HasPrefix(greeting, "220") {
		t.Errorf("another address after the restart: %q", greeting)
	}
	out, err := runCmd(t, "", binary, "blocks", "--config", path)
	if err != nil || !strings.Contains(out, attacker) || !strings.Contains(out, "(not a device's; not shown)") && !strings.Contains(out, "mfp-2f") {
		t.Errorf("smtpbridge blocks after the restart: %v\n%s", err, out)
	}
	if !strings.Contains(p2.logs.String(), "blocks restored from the last run") {
		t.Error("the restart did not log the restored blocks")
	}
	// A crash (SIGKILL) a few seconds after a block keeps it too.
	const second = "127.0.0.23"
	for i := 0; i < 5; i++ {
		cv, _ := dialFrom(t, second, plain)
		cv.Cmd("EHLO guesser", "250")
		cv.Cmd("AUTH PLAIN "+b64(plainResp("nobody", "guess")), "535 5.7.8")
		cv.Cmd("QUIT", "221")
	}
	time.Sleep(3 * time.Second) // blocksSaveEvery
	p2.cmd.Process.Signal(syscall.SIGKILL)
	<-p2.exited
	p2.exited <- nil
	startBridge(t, env, []string{plain, httpAddr}, "serve", "--config", path)
	for _, a := range []string{attacker, second} {
		if _, greeting := dialFrom(t, a, plain); !strings.HasPrefix(greeting, "421 4.7.0 Too many failed logins") {
			t.Errorf("%s after a crash: %q", a, greeting)
		}
	}
	// No part of the unknown username "nobody" is kept.
	if b := testenv.ReadFile(t, filepath.Join(u.dir, "spool", "blocks.json")); strings.Contains(b, "nob") || !strings.Contains(b, second) {
		t.Errorf("blocks.json:\n%s", b)
	}
}
