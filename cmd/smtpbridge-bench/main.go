// Command smtpbridge-bench measures the bridge against a direct baseline,
// in one run, on loopback: a fake Entra ID and a fake Exchange Online run
// in this process, and the real smtpbridge binary runs as a child process
// in front of them (hybrid mode, warm token).
//
//	go run ./cmd/smtpbridge-bench [-n 10000] [-c 3] [-size 4096] [-big 50000000]
//
// It prints:
//   - messages/second through the bridge and straight at the fake Exchange
//     (the same messages, the same number of concurrent upstream
//     connections), and their ratio;
//   - the latency a message sees, p50 and p99, both ways, and what the
//     bridge adds;
//   - the bridge process's peak RSS (VmHWM) while it relays one -big byte
//     message;
//   - token grants per 10,000 messages.
//
// Both senders keep one session per worker and send message after message
// (RSET between), as an ERP system does: the figure is the relay's cost,
// not the device's password hashing or TLS handshakes.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/pki"
	"github.com/smtpbridge/smtpbridge/internal/secret"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

const (
	tenantID     = "0b5c1c5e-7d2f-4d1e-9a63-00000000beef"
	clientID     = "5f0c6a0e-3b7d-4c55-8f43-00000000beef"
	clientSecret = "bench-client-secret"
	password     = "bench-device-password"
	mailbox      = "scanner@contoso.example"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "smtpbridge-bench:", err)
		os.Exit(1)
	}
}

type options struct {
	n, c     int
	devices  int
	nLatency int
	latency  time.Duration
	size     int
	big      int64
	binary   string
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("smtpbridge-bench", flag.ContinueOnError)
	var o options
	fs.IntVar(&o.n, "n", 10000, "messages per run")
	fs.IntVar(&o.c, "c", 3, "upstream connections per mailbox, both ways (Exchange Online allows 3)")
	fs.IntVar(&o.devices, "devices", 12, "concurrent device sessions through the bridge (it multiplexes them onto -c upstream connections)")
	fs.IntVar(&o.size, "size", 4096, "message size in bytes")
	fs.IntVar(&o.nLatency, "n-latency", 600, "messages per run with Exchange's submission time")
	fs.DurationVar(&o.latency, "exchange-latency", 50*time.Millisecond, "how long the fake Exchange takes per submission (DATA to 250)")
	fs.Int64Var(&o.big, "big", 50_000_000, "size of the message relayed for the RSS figure (0: skip)")
	fs.StringVar(&o.binary, "binary", "", "smtpbridge binary (default: build ./cmd/smtpbridge)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "smtpbridge-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if o.binary == "" {
		o.binary = filepath.Join(dir, "smtpbridge")
		fmt.Fprintln(out, "building smtpbridge ...")
		if b, err := exec.Command("go", "build", "-o", o.binary, "github.com/smtpbridge/smtpbridge/cmd/smtpbridge").CombinedOutput(); err != nil {
			return fmt.Errorf("build: %v\n%s", err, b)
		}
	}

	w, err := startWorld(dir)
	if err != nil {
		return err
	}
	defer w.close()
	br, err := w.startBridge(o)
	if err != nil {
		return err
	}
	defer func() { br.stop() }()

	body := makeBody(o.size)
	tok, err := w.store.Token(context.Background(), "contoso")
	if err != nil {
		return err
	}
	direct := func(c *smtp.Client) error { return c.Auth(&xoauth2{user: mailbox, token: tok.AccessToken}) }
	// The bridge's open upstream connections count against the mailbox's
	// limit at the fake Exchange, as at the real one: each direct run goes
	// while no bridge holds any (before its warm-up, or after a restart).
	warm := func() error {
		_, err := sendAll(br.smtp, o.devices, o.devices*2, body, deviceLogin)
		return err
	}

	// 1. Exchange-like submission time: the figures that matter.
	w.exo.SetSubmitDelay(o.latency)
	fmt.Fprintf(out, "[1/3] %d messages of %d bytes, Exchange taking %s per submission: direct (%d connections), then through the bridge (%d device sessions) ...\n",
		o.nLatency, len(body), o.latency, o.c, o.devices)
	straight, err := sendAllTLS(w.exo.Addr(), w.ca, o.c, o.nLatency, body, direct)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	if err := warm(); err != nil {
		return fmt.Errorf("warm-up through the bridge: %w\n%s", err, br.logs.String())
	}
	viaBridge, err := sendAll(br.smtp, o.devices, o.nLatency, body, deviceLogin)
	if err != nil {
		return fmt.Errorf("through the bridge: %w\n%s", err, br.logs.String())
	}
	// Latency with as many device sessions as upstream connections, so
	// that no message waits for a free connection: what the bridge adds.
	lat, err := sendAll(br.smtp, o.c, o.nLatency/2, body, deviceLogin)
	if err != nil {
		return fmt.Errorf("through the bridge: %w\n%s", err, br.logs.String())
	}

	// 2. An instant upstream: the bridge's own cost, and the token count
	// of one bridge process from its start.
	w.exo.SetSubmitDelay(0)
	br.stop()
	if br, err = w.startBridge(o); err != nil {
		return err
	}
	fmt.Fprintf(out, "[2/3] %d messages, instant upstream: direct, then through a restarted bridge ...\n", o.n)
	rawDirect, err := sendAllTLS(w.exo.Addr(), w.ca, o.c, o.n, body, direct)
	if err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	grantsBefore := w.entra.Grants(clientID)
	if err := warm(); err != nil {
		return err
	}
	rawBridge, err := sendAll(br.smtp, o.devices, o.n, body, deviceLogin)
	if err != nil {
		return fmt.Errorf("through the bridge: %w\n%s", err, br.logs.String())
	}
	grants := w.entra.Grants(clientID) - grantsBefore
	sent := o.n + o.devices*2

	var rss int64
	if o.big > 0 {
		fmt.Fprintf(out, "[3/3] one %d MB message through the bridge ...\n", o.big/1_000_000)
		if _, err := sendAll(br.smtp, 1, 1, makeBody(int(o.big)), deviceLogin); err != nil {
			return fmt.Errorf("big message: %w\n%s", err, br.logs.String())
		}
		if rss, err = peakRSS(br.cmd.Process.Pid); err != nil {
			return err
		}
	}

	bp50, bp99 := lat.percentile(50), lat.percentile(99)
	dp50, dp99 := straight.percentile(50), straight.percentile(99)
	ratio := viaBridge.rate() / straight.rate()
	fmt.Fprintln(out)
	fmt.Fprintf(out, "throughput  bridge %7.1f msg/s  direct %7.1f msg/s  ratio %.2f (target >= 0.80, %d upstream connections, %s per submission) %s\n",
		viaBridge.rate(), straight.rate(), ratio, o.c, o.latency, verdict(ratio >= 0.8))
	fmt.Fprintf(out, "latency     bridge p50 %.2f ms p99 %.2f ms  direct p50 %.2f ms p99 %.2f ms (%d sessions each way)\n", ms(bp50), ms(bp99), ms(dp50), ms(dp99), o.c)
	fmt.Fprintf(out, "added       p50 %+.2f ms  p99 %+.2f ms (hybrid mode, warm token)\n", ms(bp50-dp50), ms(bp99-dp99))
	fmt.Fprintf(out, "raw         bridge %7.1f msg/s  direct %7.1f msg/s  ratio %.2f (instant upstream: the bridge's own cost, spool fsyncs included; informational)\n",
		rawBridge.rate(), rawDirect.rate(), rawBridge.rate()/rawDirect.rate())
	if o.big > 0 {
		fmt.Fprintf(out, "peak RSS    %.1f MiB while relaying %d MB (target < 64 MiB) %s\n",
			float64(rss)/(1<<20), o.big/1_000_000, verdict(rss < 64<<20))
	}
	per10k := float64(grants) * 10000 / float64(sent)
	fmt.Fprintf(out, "tokens      %d grant(s) for %d messages = %.2f per 10,000 (target: 1 per app) %s\n",
		grants, sent, per10k, verdict(grants <= 1 || per10k <= 1))
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func makeBody(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: <" + mailbox + ">\r\nTo: <bob@contoso.example>\r\nSubject: bench\r\n\r\n")
	line := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+", 1) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// world is the fake Microsoft side: the test environment's World, with
// one app and one mailbox that takes Exchange's largest messages.
type world struct {
	*testenv.World
	ca     *pki.CA
	caFile string
	entra  *fakeentra.Server
	exo    *fakeexchange.Server
	store  *tokenstore.Store
}

func startWorld(dir string) (*world, error) {
	tw, err := testenv.NewWorld(dir)
	if err != nil {
		return nil, err
	}
	w := &world{World: tw, ca: tw.CA, caFile: tw.CAFile, entra: tw.Entra, exo: tw.Exchange}
	app := tw.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	w.exo.AddMailbox(fakeexchange.Mailbox{Address: mailbox, TenantID: tenantID, FullAccess: []string{app.ObjectID},
		MaxSendSize: config.ExchangeMaxMessageBytes})
	if err := tw.Listen(); err != nil {
		tw.Close()
		return nil, err
	}
	w.store, err = tokenstore.New([]tokenstore.Tenant{{Name: "contoso", TenantID: tenantID, ClientID: clientID,
		Credential: secret.NewClientSecret(clientSecret), AuthorityHost: w.entra.URL(), Scope: config.DefaultTokenScope,
		RootCAs: w.ca.Pool()}}, nil)
	return w, err
}

func (w *world) close() { w.World.Close() }

// bridgeProc is the smtpbridge child process.
type bridgeProc struct {
	cmd  *exec.Cmd
	smtp string
	logs *bytes.Buffer
}

func (w *world) startBridge(o options) (*bridgeProc, error) {
	dir := filepath.Dir(w.caFile)
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	maxBytes := max(o.big+1<<20, config.DefaultMaxMessageBytes)
	cfg := fmt.Sprintf(`hostname: bridge.bench
listeners:
  - {name: lan, address: %q, allow_insecure_auth: true}
tenants:
  - name: contoso
    tenant_id: %q
    client_id: %q
    client_secret: %q
    authority_host: %q
    smtp_host: %q
    # The benchmark measures the relay, not Exchange's 30 a minute.
    max_messages_per_minute: 100000000
    max_connections_per_mailbox: %d
devices:
  - {name: bench, username: bench, password_hash: %q, tenant: contoso, mailbox: %q}
limits: {max_message_bytes: %d}
delivery: {mode: hybrid}
spool: {dir: spool}
log: {level: warn}
http: {address: %q}
`, addr, tenantID, clientID, clientSecret, w.entra.URL(), w.exo.Addr(), o.c, hash, mailbox, maxBytes, httpAddr)
	path := filepath.Join(dir, "bench.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	p := &bridgeProc{smtp: addr, logs: &bytes.Buffer{}}
	p.cmd = exec.Command(o.binary, "serve", "--config", path)
	p.cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+w.caFile)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("smtpbridge did not start:\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *bridgeProc) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// peakRSS reads a process's peak resident set size (VmHWM) from /proc.
func peakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("peak RSS: %w (Linux only)", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("peak RSS: no VmHWM in /proc status")
}

// result is one run's timings.
type result struct {
	elapsed   time.Duration
	latencies []time.Duration
}

func (r result) rate() float64 { return float64(len(r.latencies)) / r.elapsed.Seconds() }

func (r result) percentile(p int) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.latencies)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func deviceLogin(c *smtp.Client) error {
	return c.Auth(sasl.NewPlainClient("", "bench", password))
}

func sendAll(addr string, workers, n int, body []byte, login func(*smtp.Client) error) (result, error) {
	return send(workers, n, body, func() (*smtp.Client, error) {
		c, err := smtp.Dial(addr)
		if err != nil {
			return nil, err
		}
		return c, login(c)
	})
}

func sendAllTLS(addr string, ca *pki.CA, workers, n int, body []byte, login func(*smtp.Client) error) (result, error) {
	return send(workers, n, body, func() (*smtp.Client, error) {
		c, err := smtp.DialStartTLS(addr, &tls.Config{ServerName: "127.0.0.1", RootCAs: ca.Pool()})
		if err != nil {
			return nil, err
		}
		return c, login(c)
	})
}

// send runs n messages over workers sessions, each sending message after
// message. The sessions are opened and logged in first, off the clock: a
// device logs in once per session, and the bridge's AUTH takes a minimum
// time on purpose (guard), which is not its throughput.
func send(workers, n int, body []byte, open func() (*smtp.Client, error)) (result, error) {
	jobs := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	var (
		mu      sync.Mutex
		lats    []time.Duration
		errs    []error
		wg      sync.WaitGroup
		clients = make([]*smtp.Client, workers)
	)
	for i := range clients {
		wg.Go(func() {
			c, err := open()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	start := time.Now()
	for _, c := range clients {
		if c == nil {
			continue
		}
		wg.Go(func() {
			defer c.Close()
			for range jobs {
				t0 := time.Now()
				err := sendOne(c, body)
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					lats = append(lats, d)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
			c.Quit()
		})
	}
	wg.Wait()
	r := result{elapsed: time.Since(start), latencies: lats}
	if len(errs) > 0 {
		return r, fmt.Errorf("%d failures, first: %w", len(errs), errs[0])
	}
	return r, nil
}

func sendOne(c *smtp.Client, body []byte) error {
	if err := c.Reset(); err != nil {
		return err
	}
	if err := c.Mail(mailbox, nil); err != nil {
		return err
	}
	if err := c.Rcpt("bob@contoso.example", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		return err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return err
	}
	if strings.Contains(resp.StatusText, "queued") {
		return fmt.Errorf("the bridge queued a message instead of delivering it: %s", resp.StatusText)
	}
	return nil
}

// xoauth2 is a minimal XOAUTH2 client for the direct baseline.
type xoauth2 struct {
	user, token string
	step        int
}

func (x *xoauth2) Start() (string, []byte, error) { return "XOAUTH2", nil, nil }

func (x *xoauth2) Next([]byte) ([]byte, error) {
	x.step++
	if x.step == 1 {
		return []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
	}
	return nil, errors.New("xoauth2: unexpected challenge")
}
