package bridge_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/message"
)

// recorder is a Deliverer that keeps what it is given.
type recorder struct {
	mu   sync.Mutex
	msgs []recorded
}

type recorded struct {
	device, from string
	to           []string
}

func (r *recorder) Deliver(_ context.Context, m *message.Message) (message.Receipt, error) {
	if _, err := io.Copy(io.Discard, m.Body); err != nil {
		return message.Receipt{}, &message.Error{Stage: message.StageSource, Err: err}
	}
	r.mu.Lock()
	r.msgs = append(r.msgs, recorded{device: m.Device, from: m.From, to: append([]string(nil), m.To...)})
	r.mu.Unlock()
	return message.Receipt{Reply: message.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Text: "OK <fuzz@x>"}, UpstreamID: "fuzz@x"}, nil
}

func (r *recorder) take() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.msgs
	r.msgs = nil
	return out
}

var replyLineRE = regexp.MustCompile(`^[2-5][0-9][0-9]([ -]|$)`)

// FuzzSession drives a whole SMTP session with scripted client input over
// a real socket: whatever a client sends, the bridge answers with
// well-formed replies, never panics, never shows a password, relays only
// for a device that logged in (or the device without AUTH at its
// address), and only within that device's policy.
func FuzzSession(f *testing.F) {
	for _, seed := range []string{
		"EHLO x\r\nAUTH PLAIN " + plainAuth("mfp", devicePassword) + "\r\nMAIL FROM:<a@b.lan>\r\nRCPT TO:<bob@contoso.example>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"EHLO x\r\nAUTH LOGIN\r\n" + b64("mfp") + "\r\n" + b64(devicePassword) + "\r\nMAIL FROM:<>\r\nRCPT TO:<eve@evil.example>\r\nRCPT TO:<a@contoso.example>\r\nDATA\r\nFrom: x\r\n\r\n.\r\n",
		"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@alerts.example>\r\nRCPT TO:<x@contoso.example>\r\nDATA\r\nSubject: alarm\r\n\r\nzone 3\r\n.\r\n",
		"EHLO x\r\nAUTH PLAIN " + plainAuth("mfp", "wrong") + "\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@contoso.example>\r\n",
		"EHLO x\r\nAUTH PLAIN " + plainAuth("mfp", devicePassword) + "\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@contoso.example>\r\nBDAT 10 LAST\r\nSubject: s",
		"EHLO x\r\nAUTH PLAIN " + plainAuth("mfp", devicePassword) + "\r\nMAIL FROM:<a@b>\r\nRCPT TO:<@contoso.example:eve@evil.example>\r\nRCPT TO:<\"q\"@contoso.example>\r\nRCPT TO:<a%evil.example@contoso.example>\r\n",
		"HELO\r\nRSET\r\nNOOP\r\nVRFY root\r\nSTARTTLS\r\nAUTH CRAM-MD5\r\n\x00\xff\r\n",
		"EHLO x\r\nAUTH PLAIN =\r\nAUTH PLAIN AAAA\r\nAUTH LOGIN *\r\n",
	} {
		f.Add(seed)
	}
	rec := &recorder{}
	mfp := device("mfp", "scanner@contoso.example")
	mfp.AllowedRecipients = patterns("contoso.example")
	alarm := inventory.Device{Name: "alarm", Unauthenticated: true, Tenant: "secret", Mailbox: addr("alarm@contoso.example"),
		Networks: []netip.Prefix{network("127.0.0.1/32")}, AllowedRecipients: patterns("alerts.example"), Mode: message.ModeSync}
	dir, err := bridge.NewDirectory([]inventory.Device{mfp, alarm})
	if err != nil {
		f.Fatal(err)
	}
	srv, err := bridge.NewServer(bridge.Options{
		Hostname: "bridge.test", Deliverer: rec, Log: zerolog.Nop(),
		Settings: bridge.Settings{Directory: dir,
			Listeners: []bridge.Listener{{Name: "lan", Address: "127.0.0.1:0", TLS: bridge.TLSNone, AllowInsecureAuth: true,
				AllowUnauthenticated: true}},
			Limits: bridge.Limits{MaxMessageBytes: 1 << 20, MaxRecipients: 20, MaxErrors: 50, CommandTimeout: 10 * time.Second,
				MaxLineLength: 64 << 10}},
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		f.Fatal(err)
	}
	srv.Serve()
	f.Cleanup(func() { srv.Shutdown(context.Background()) })
	addr := srv.Addr("lan").String()

	f.Fuzz(func(t *testing.T, script string) {
		if len(script) > 64<<10 {
			return
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			c.Write([]byte(script))
			c.(*net.TCPConn).CloseWrite()
		}()
		var replies []string
		sc := bufio.NewScanner(c)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			replies = append(replies, sc.Text())
		}
		out := strings.Join(replies, "\n")
		for _, line := range replies {
			if !replyLineRE.MatchString(line) {
				t.Fatalf("malformed reply line %q for input %q", line, script)
			}
		}
		if strings.Contains(out, "Internal server error") {
			t.Fatalf("the session panicked on %q:\n%s", script, out)
		}
		for _, line := range replies {
			// go-smtp repeats the client's own EHLO argument and unknown
			// commands; anything else must never carry the password.
			echo := strings.Contains(line, "Hello ") || strings.Contains(line, "command unrecognized")
			if !echo && (strings.Contains(line, devicePassword) || strings.Contains(line, b64(devicePassword))) {
				t.Fatalf("a reply shows the password: %q", line)
			}
		}
		loggedIn := strings.Contains(out, "\n235 ") || strings.HasPrefix(out, "235 ")
		for _, m := range rec.take() {
			switch m.device {
			case "mfp":
				if !loggedIn {
					t.Fatalf("relayed as mfp without a login, for %q", script)
				}
				if m.from != "scanner@contoso.example" {
					t.Fatalf("envelope sender %q, want the mailbox", m.from)
				}
				for _, to := range m.to {
					if !strings.HasSuffix(strings.ToLower(to), "@contoso.example") {
						t.Fatalf("relayed to %q outside mfp's allowed_recipients, for %q", to, script)
					}
				}
			case "alarm":
				for _, to := range m.to {
					if !strings.HasSuffix(strings.ToLower(to), "@alerts.example") {
						t.Fatalf("relayed to %q outside alarm's allowed_recipients", to)
					}
				}
			default:
				t.Fatalf("relayed as %q", m.device)
			}
		}
	})
}
