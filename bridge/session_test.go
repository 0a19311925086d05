package bridge_test

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// recorderServer is a bridge whose Deliverer records what it is given:
// the device side alone.
func recorderServer(t *testing.T, lim bridge.Limits, devices ...inventory.Device) (*bridge.Server, *recorder, *syncbuf.Buffer) {
	t.Helper()
	if len(devices) == 0 {
		devices = []inventory.Device{device("mfp", "scanner@contoso.example")}
	}
	dir, err := bridge.NewDirectory(devices)
	if err != nil {
		t.Fatal(err)
	}
	rec, logs := &recorder{}, &syncbuf.Buffer{}
	srv, err := bridge.NewServer(bridge.Options{Hostname: "bridge.test", Deliverer: rec,
		Log: zerolog.New(logs).Level(zerolog.DebugLevel),
		Settings: bridge.Settings{Directory: dir, Limits: withDefaults(lim),
			Listeners: []bridge.Listener{{Name: "lan", Address: "127.0.0.1:0", TLS: bridge.TLSNone, AllowInsecureAuth: true}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	srv.Serve()
	t.Cleanup(func() {
		srv.Shutdown(t.Context())
		if l := logs.String(); strings.Contains(l, "panic") {
			t.Errorf("a session panicked:\n%s", l)
		}
		testenv.CheckNoSecrets(t, "the log", logs.String())
	})
	return srv, rec, logs
}

// RSET (or EHLO) right after a non-final BDAT chunk aborts the transfer
// while go-smtp runs Data in a goroutine of its own: the session must not
// lose the transaction under Data's feet (this panicked, and raced).
func TestBDATThenReset(t *testing.T) {
	srv, rec, _ := recorderServer(t, bridge.Limits{})
	addr := srv.Addr("lan").String()
	header := "Subject: x\r\nFrom: a@b.c\r\n\r\n"
	if len(header) != 27 {
		t.Fatalf("the header chunk is %d bytes", len(header))
	}
	for i := 0; i < 50; i++ {
		d := dial(t, addr)
		login(d, "mfp")
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		reset := "RSET"
		if i%2 == 1 {
			reset = "EHLO again.lan"
		}
		// The chunk and the reset in one write, as a pipelining client
		// sends them.
		fmt.Fprintf(d.Conn, "BDAT 27\r\n%s%s\r\n", header, reset)
		d.Expect("250") // the chunk
		d.Expect("250") // RSET or EHLO
		// The session goes on: a whole message on the same connection.
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<carol@contoso.example>", "250")
		d.Data("Subject: after\r\n\r\nbody\r\n", "250 2.0.0")
		d.Cmd("QUIT", "221")
	}
	got := rec.take()
	if len(got) != 50 {
		t.Fatalf("%d messages delivered, want the 50 after the resets", len(got))
	}
	for _, m := range got {
		if len(m.to) != 1 || m.to[0] != "carol@contoso.example" {
			t.Errorf("delivered to %v", m.to)
		}
	}
}

// RFC 5321 section 4.1.4: MAIL within a transaction is a 503, and the
// recipients of the first transaction never ride along with a second.
func TestNestedMail(t *testing.T) {
	dev := device("erp", "erp@contoso.example")
	dev.EnforceFrom = true
	srv, rec, _ := recorderServer(t, bridge.Limits{}, dev)
	d := dial(t, srv.Addr("lan").String())
	login(d, "erp")
	d.Cmd("MAIL FROM:<erp@contoso.example>", "250")
	d.Cmd("RCPT TO:<x@contoso.example>", "250")
	d.Cmd("MAIL FROM:<ceo@evil.example>", "503 5.5.1")
	d.Cmd("MAIL FROM:<erp@contoso.example>", "503 5.5.1")
	d.Cmd("RSET", "250")
	d.Cmd("MAIL FROM:<ceo@evil.example>", "550 5.7.1")
	d.Cmd("MAIL FROM:<erp@contoso.example>", "250")
	d.Cmd("RCPT TO:<y@contoso.example>", "250")
	d.Data("Subject: s\r\n\r\nb\r\n", "250 2.0.0")
	got := rec.take()
	if len(got) != 1 || strings.Join(got[0].to, ",") != "y@contoso.example" {
		t.Fatalf("delivered %+v, want one message to y only", got)
	}
}

// A reload that takes a device's login away mid-transaction: RCPT and DATA
// get 530 5.7.0, never a panic, and nothing is delivered.
func TestRevokedMidTransaction(t *testing.T) {
	e := newEnv(t, envOptions{})
	other, err := passwd.NewBcrypt([]byte("another-password"), 4)
	if err != nil {
		t.Fatal(err)
	}
	changed := device("mfp", "scanner@contoso.example")
	if changed.PasswordHash, err = passwd.Parse(other); err != nil {
		t.Fatal(err)
	}

	atRcpt := dial(t, e.addr("plain"))
	login(atRcpt, "mfp")
	atRcpt.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	atData := dial(t, e.addr("plain"))
	login(atData, "mfp")
	atData.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	atData.Cmd("RCPT TO:<bob@contoso.example>", "250")

	e.reload([]inventory.Device{changed}, bridge.Limits{}, nil)

	atRcpt.Cmd("RCPT TO:<bob@contoso.example>", "530 5.7.0")
	atRcpt.Cmd("RCPT TO:<bob@contoso.example>", "530 5.7.0")
	atRcpt.Cmd("DATA", "502 5.5.1") // go-smtp: no recipient was taken
	atData.Data(simpleMessage, "530 5.7.0")
	atData.Cmd("RCPT TO:<bob@contoso.example>", "502 5.5.1") // the transaction ended with DATA
	atData.Cmd("MAIL FROM:<scan@printer.lan>", "530 5.7.0")
	if n := len(e.world.Exchange.Messages()); n != 0 {
		t.Errorf("Exchange got %d messages from a revoked login", n)
	}
	if l := e.logs.String(); strings.Contains(l, "panic") {
		t.Errorf("a session panicked:\n%s", l)
	}
}

// command_timeout bounds each wait for data during DATA, not the whole
// upload: a slow device with steady progress gets its message through.
func TestSlowUploadWithinCommandTimeout(t *testing.T) {
	srv, rec, _ := recorderServer(t, bridge.Limits{CommandTimeout: 300 * time.Millisecond})
	d := dial(t, srv.Addr("lan").String())
	login(d, "mfp")
	d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.Cmd("RCPT TO:<bob@contoso.example>", "250")
	d.Cmd("DATA", "354")
	io.WriteString(d.Conn, "Subject: slow\r\n\r\n")
	for i := 0; i < 10; i++ { // 1.5 s in all, five command timeouts
		time.Sleep(150 * time.Millisecond)
		fmt.Fprintf(d.Conn, "line %d of a slow scan\r\n", i)
	}
	io.WriteString(d.Conn, ".\r\n")
	d.Expect("250 2.0.0")
	if n := len(rec.take()); n != 1 {
		t.Fatalf("%d messages delivered", n)
	}
	// A device that stops sending is still cut off.
	d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.Cmd("RCPT TO:<bob@contoso.example>", "250")
	d.Cmd("DATA", "354")
	io.WriteString(d.Conn, "Subject: stalled\r\n")
	d.Expect("421 4.4.2")
	if !d.Closed() {
		t.Error("the connection stayed open after a timeout in DATA")
	}
}

// A message over the size limit: the device gets its 552 on a connection
// it can still read and use, even when it writes the whole message before
// it reads (as most do); far beyond the limit, the 552 comes at once and
// the connection closes without a reset, so that the device still reads
// it.
func TestOversizeMessage(t *testing.T) {
	const limit = 1 << 20
	srv, rec, _ := recorderServer(t, bridge.Limits{MaxMessageBytes: limit})
	addr := srv.Addr("lan").String()
	send := func(d *testenv.Dialog, size int) string {
		t.Helper()
		d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
		d.Cmd("RCPT TO:<bob@contoso.example>", "250")
		d.Cmd("DATA", "354")
		bw := bufio.NewWriterSize(d.Conn, 1<<16)
		line := strings.Repeat("x", 998) + "\r\n"
		io.WriteString(bw, "Subject: big\r\n\r\n")
		for n := 0; n < size; n += len(line) {
			if _, err := io.WriteString(bw, line); err != nil {
				t.Fatalf("the bridge stopped reading after %d bytes: %v", n, err)
			}
		}
		io.WriteString(bw, ".\r\n")
		if err := bw.Flush(); err != nil {
			t.Fatalf("the end of the message: %v", err)
		}
		got, err := d.Read()
		if err != nil {
			t.Fatalf("no reply to an oversize message: %v", err)
		}
		return got
	}

	d := dial(t, addr)
	login(d, "mfp")
	if got := send(d, 3*limit); !strings.HasPrefix(got, "552 5.3.4") {
		t.Errorf("3 MB over a 1 MB limit: %q", got)
	}
	// Within the bound the session goes on.
	d.Cmd("RSET", "250")
	d.Cmd("MAIL FROM:<scan@printer.lan>", "250")
	d.Cmd("RCPT TO:<bob@contoso.example>", "250")
	d.Data("Subject: small\r\n\r\nok\r\n", "250 2.0.0")

	d2 := dial(t, addr)
	login(d2, "mfp")
	if got := send(d2, 48<<20); !strings.HasPrefix(got, "552 5.3.4") {
		t.Errorf("48 MB over a 1 MB limit: %q", got)
	}
	if !d2.Closed() {
		t.Error("the connection stayed open after a message far beyond the limit")
	}
	if got := rec.take(); len(got) != 1 {
		t.Errorf("%d messages delivered, want the small one", len(got))
	}
}
