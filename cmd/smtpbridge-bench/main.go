// Command smtpbridge-bench measures the bridge against sending straight
// to Exchange, side by side in one run, on loopback: a fake Entra ID and a
// fake Exchange Online run in this process behind a proxy that adds a
// round-trip time, as a site's link to Exchange Online does, and the real
// smtpbridge binary runs as a child process in front of them (hybrid
// mode, 3 upstream connections for the mailbox, warm token).
//
//	go run ./cmd/smtpbridge-bench [-devices 10] [-n 1000] [-rtt 20ms,0s] [-burst 50] [-big 50000000] [-graph] [-scan 30000000]
//
// Devices send the way MFPs do: one SMTP connection and one login per
// message, -devices of them at once. Straight to Exchange each pays TCP,
// STARTTLS, EHLO twice and AUTH XOAUTH2 over the link, with one
// connection per device; through the bridge each talks to the bridge on
// the LAN, and the bridge submits on its warm connections. For each
// round-trip time it prints:
//   - throughput both ways and their ratio (target: bridge >= 1.5x);
//   - p50 latency of one device alone, both ways, and their ratio
//     (target: bridge <= 0.5x), and p50/p99 with every device at once;
//   - the bridge's CPU per message (target: <= 5 ms);
//   - round trips to Exchange per message, as the proxy sees them.
//
// Then the bridge's peak RSS during a login burst of -burst distinct
// devices (each login its first: a full password hash) and while it
// relays one -big byte message (target: <= 64 MiB each); the Microsoft
// Graph transport's throughput, latency and CPU for the same messages
// (sendMail), and a -scan byte scan's time and peak RSS (a draft and an
// upload session); and the token grants the bridge asked for.
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
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
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
	mailbox      = "scanner@contoso.example"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "smtpbridge-bench:", err)
		os.Exit(1)
	}
}

type options struct {
	n, alone int
	devices  int
	c        int
	rtts     []time.Duration
	size     int
	burst    int
	big      int64
	binary   string
	graph    bool
	scan     int64
	// The scale run (-scale).
	scale           bool
	tenants, queued int
}

// device is a configured device of the bridge: its login.
type device struct{ user, password, hash string }

func run(args []string, out io.Writer) error {
	o, err := parseOptions(args)
	if err != nil {
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
	if o.scale {
		return runScale(o, dir, out)
	}
	w, err := startWorld(dir)
	if err != nil {
		return err
	}
	defer w.close()
	// Straight to Exchange, every device has a connection of its own.
	w.exo.SetMaxConnections(o.devices + o.c + 1)
	fmt.Fprintf(out, "hashing %d device passwords (argon2id, the default) ...\n", o.devices+o.burst)
	b := &bench{o: o, w: w, out: out, body: makeBody(o.size)}
	if b.fleet, err = makeDevices("mfp", o.devices); err != nil {
		return err
	}
	if b.burst, err = makeDevices("burst", o.burst); err != nil {
		return err
	}
	tok, err := w.store.Token(context.Background(), "contoso", "")
	if err != nil {
		return err
	}
	b.token = tok.AccessToken
	var res results
	for i, rtt := range o.rtts {
		fmt.Fprintf(out, "[%d/%d] %s round trip: %d devices, one connection and one login per message, %d messages each way, then one device alone ...\n",
			i+1, len(o.rtts), rtt, o.devices, o.n)
		r, grants, err := b.atRTT(rtt)
		res.grants += grants
		if err != nil {
			return err
		}
		res.rows = append(res.rows, r)
	}
	if err := b.memory(&res); err != nil {
		return err
	}
	if o.graph {
		fmt.Fprintf(out, "[graph] %d messages of %d bytes from %d devices, one alone, then a %d MB scan, through Microsoft Graph with a %s round trip ...\n",
			o.n, len(b.body), o.devices, o.scan/1_000_000, o.rtts[0])
		if res.graph, err = w.graphRun(o, b.fleet, b.burst, b.body); err != nil {
			return fmt.Errorf("graph: %w", err)
		}
	}
	b.report(res)
	return nil
}

// parseOptions reads the flags.
func parseOptions(args []string) (options, error) {
	fs := flag.NewFlagSet("smtpbridge-bench", flag.ContinueOnError)
	var o options
	var rtts string
	fs.IntVar(&o.n, "n", 1000, "messages per loaded run, each way")
	fs.IntVar(&o.alone, "alone", 40, "messages of one device alone, each way (the unloaded latency)")
	fs.IntVar(&o.devices, "devices", 10, "devices sending at once, each one connection and one login per message")
	fs.IntVar(&o.c, "c", 3, "the bridge's upstream connections for the mailbox (Exchange Online allows 3)")
	fs.StringVar(&rtts, "rtt", "20ms,0s", "round-trip times to Exchange to measure at, comma-separated")
	fs.IntVar(&o.size, "size", 4096, "message size in bytes")
	fs.IntVar(&o.burst, "burst", 50, "distinct devices logging in at once for the memory figure (0: skip)")
	fs.Int64Var(&o.big, "big", 50_000_000, "size of the message relayed for the memory figure (0: skip)")
	fs.StringVar(&o.binary, "binary", "", "smtpbridge binary (default: build ./cmd/smtpbridge)")
	fs.BoolVar(&o.graph, "graph", true, "also measure the Microsoft Graph transport")
	fs.Int64Var(&o.scan, "scan", 30_000_000, "size of the scan sent through Graph (a PDF attachment)")
	fs.BoolVar(&o.scale, "scale", false, "measure how the bridge grows with the fleet instead: -tenants, -devices, -queued")
	fs.IntVar(&o.tenants, "tenants", 200, "with -scale: tenants")
	fs.IntVar(&o.queued, "queued", 100_000, "with -scale: messages queued while Exchange is down")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for _, f := range strings.Split(rtts, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d < 0 {
			return o, fmt.Errorf("-rtt: %q is not a duration such as 20ms", f)
		}
		o.rtts = append(o.rtts, d)
	}
	if o.scale {
		if !setFlag(fs, "devices") {
			o.devices = 10_000
		}
		if o.tenants < 1 || o.devices < o.tenants || o.queued < 1 {
			return o, errors.New("-tenants, -devices and -queued must be positive, and -devices at least -tenants")
		}
		return o, nil
	}
	if o.devices < 1 || o.n < o.devices || o.alone < 1 {
		return o, errors.New("-devices, -n and -alone must be positive, and -n at least -devices")
	}
	return o, nil
}

// setFlag says whether the command line set the flag named name.
func setFlag(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// bench is one run's set-up: the fake Microsoft side, the devices, the
// message, and a token for the direct runs.
type bench struct {
	o            options
	w            *world
	out          io.Writer
	fleet, burst []device
	body         []byte
	token        string
}

// row is the figures at one round-trip time.
type row struct {
	rtt                      time.Duration
	direct, bridge           result
	directAlone, bridgeAlone result
	cpuPerMsg                time.Duration
	bridgeTrips, directTrips float64
}

// results are a run's figures.
type results struct {
	rows             []row
	grants           int
	burstRSS, bigRSS int64
	graph            graphRow
}

// atRTT measures at one round-trip time to Exchange: the devices
// straight to Exchange and through a bridge, loaded and alone; and the
// token grants the bridge asked Entra for.
func (b *bench) atRTT(rtt time.Duration) (row, int, error) {
	w, o, fleet := b.w, b.o, b.fleet
	proxy, err := startProxy(w.exo.Addr(), rtt/2)
	if err != nil {
		return row{}, 0, err
	}
	defer proxy.close()
	br, err := w.startBridge(o, proxy.addr(), append(fleet, b.burst...))
	if err != nil {
		return row{}, 0, err
	}
	g0 := w.entra.Grants(clientID)
	defer br.stop()
	r := row{rtt: rtt}
	// Every device has logged in once, and the bridge has its upstream
	// connections: a site's steady state.
	if _, err := sendPerMessage(fleet, len(fleet)*2, b.body, br.login); err != nil {
		return r, 0, fmt.Errorf("warm-up through the bridge: %w\n%s", err, br.logs.String())
	}
	direct := w.direct(proxy.addr(), b.token)
	t0 := proxy.turns.Load()
	if r.direct, err = sendPerMessage(fleet, o.n, b.body, direct); err != nil {
		return r, 0, fmt.Errorf("direct: %w", err)
	}
	r.directTrips = float64(proxy.turns.Load()-t0) / float64(o.n)
	if r.directAlone, err = sendPerMessage(fleet[:1], o.alone, b.body, direct); err != nil {
		return r, 0, fmt.Errorf("direct: %w", err)
	}
	cpu0, err := cpuTime(br.cmd.Process.Pid)
	if err != nil {
		return r, 0, err
	}
	t0 = proxy.turns.Load()
	if r.bridge, err = sendPerMessage(fleet, o.n, b.body, br.login); err != nil {
		return r, 0, fmt.Errorf("through the bridge: %w\n%s", err, br.logs.String())
	}
	r.bridgeTrips = float64(proxy.turns.Load()-t0) / float64(o.n)
	cpu1, err := cpuTime(br.cmd.Process.Pid)
	if err != nil {
		return r, 0, err
	}
	r.cpuPerMsg = (cpu1 - cpu0) / time.Duration(o.n)
	if r.bridgeAlone, err = sendPerMessage(fleet[:1], o.alone, b.body, br.login); err != nil {
		return r, 0, fmt.Errorf("through the bridge: %w\n%s", err, br.logs.String())
	}
	return r, w.entra.Grants(clientID) - g0, nil
}

// memory measures the bridge's peak RSS during a login burst and while
// relaying one big message, each on a bridge of its own.
func (b *bench) memory(res *results) error {
	o, w := b.o, b.w
	if o.burst == 0 && o.big == 0 {
		return nil
	}
	fmt.Fprintf(b.out, "[memory] a login burst of %d devices, then one %d MB message, each through a bridge of its own ...\n", o.burst, o.big/1_000_000)
	proxy, err := startProxy(w.exo.Addr(), o.rtts[0]/2)
	if err != nil {
		return err
	}
	defer proxy.close()
	// peak sends n messages of body from devices through a new bridge
	// and returns the bridge's peak RSS from its start.
	peak := func(devices []device, n int, body []byte) (int64, error) {
		br, err := w.startBridge(o, proxy.addr(), append(b.fleet, b.burst...))
		if err != nil {
			return 0, err
		}
		defer br.stop()
		if _, err := sendPerMessage(devices, n, body, br.login); err != nil {
			return 0, fmt.Errorf("%w\n%s", err, br.logs.String())
		}
		return peakRSS(br.cmd.Process.Pid)
	}
	if o.burst > 0 {
		if res.burstRSS, err = peak(b.burst, len(b.burst), b.body); err != nil {
			return fmt.Errorf("login burst: %w", err)
		}
	}
	if o.big > 0 {
		if res.bigRSS, err = peak(b.fleet[:1], 1, makeBody(int(o.big))); err != nil {
			return fmt.Errorf("big message: %w", err)
		}
	}
	return nil
}

// report prints the figures against their targets; the first round-trip
// time's are the targets', the others informational.
func (b *bench) report(res results) {
	o, out, body := b.o, b.out, b.body
	fmt.Fprintln(out)
	for i, r := range res.rows {
		note := func(ok bool) string {
			if i > 0 {
				return "(informational)"
			}
			return verdict(ok)
		}
		fmt.Fprintf(out, "round trip %s to Exchange, %d devices, one connection and one login per message, %d-byte messages:\n", r.rtt, o.devices, len(body))
		ratio := r.bridge.rate() / r.direct.rate()
		fmt.Fprintf(out, "  throughput   bridge %7.1f msg/s  direct %7.1f msg/s  ratio %.2f (target >= 1.50; %d upstream connections against %d) %s\n",
			r.bridge.rate(), r.direct.rate(), ratio, o.c, o.devices, note(ratio >= 1.5))
		ba, da := r.bridgeAlone.percentile(50), r.directAlone.percentile(50)
		aloneRatio := float64(ba) / float64(da)
		fmt.Fprintf(out, "  alone p50    bridge %7.2f ms     direct %7.2f ms     ratio %.2f (target <= 0.50) %s\n", ms(ba), ms(da), aloneRatio, note(aloneRatio <= 0.5))
		fmt.Fprintf(out, "  loaded       bridge p50 %.2f ms p99 %.2f ms  direct p50 %.2f ms p99 %.2f ms\n",
			ms(r.bridge.percentile(50)), ms(r.bridge.percentile(99)), ms(r.direct.percentile(50)), ms(r.direct.percentile(99)))
		fmt.Fprintf(out, "  bridge CPU   %.2f ms per message (target <= 5 ms) %s\n", ms(r.cpuPerMsg), note(r.cpuPerMsg <= 5*time.Millisecond))
		fmt.Fprintf(out, "  round trips  %.2f per message to Exchange through the bridge, %.2f direct (as the proxy saw them)\n", r.bridgeTrips, r.directTrips)
	}
	if o.burst > 0 {
		fmt.Fprintf(out, "peak RSS     %.1f MiB during a login burst of %d devices (target <= 64 MiB) %s\n",
			float64(res.burstRSS)/(1<<20), o.burst, verdict(res.burstRSS <= 64<<20))
	}
	if o.big > 0 {
		fmt.Fprintf(out, "peak RSS     %.1f MiB while relaying %d MB (target <= 64 MiB) %s\n",
			float64(res.bigRSS)/(1<<20), o.big/1_000_000, verdict(res.bigRSS <= 64<<20))
	}
	if gr := res.graph; o.graph {
		fmt.Fprintf(out, "graph        %d-byte messages: %.1f msg/s from %d devices, p50 %.2f ms p99 %.2f ms, alone p50 %.2f ms, bridge CPU %.2f ms per message (%s round trip)\n",
			len(body), gr.loaded.rate(), o.devices, ms(gr.loaded.percentile(50)), ms(gr.loaded.percentile(99)), ms(gr.alone.percentile(50)), ms(gr.cpuPerMsg), o.rtts[0])
		fmt.Fprintf(out, "graph scan   %.1f MB (a %.1f MB PDF) through a draft and an upload session in %.2f s, peak RSS %.1f MiB (target <= 64 MiB) %s\n",
			float64(gr.scanSize)/1e6, float64(gr.pdfSize)/1e6, gr.scanTook.Seconds(), float64(gr.scanRSS)/(1<<20), verdict(gr.scanRSS <= 64<<20))
	}
	sent := len(o.rtts) * (2*len(b.fleet) + o.n + o.alone)
	fmt.Fprintf(out, "tokens       %d grant(s) for %d messages through %d bridge start(s) (target: 1 per start) %s\n",
		res.grants, sent, len(o.rtts), verdict(res.grants <= len(o.rtts)))
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
	*fakeworld.World
	ca     *pki.CA
	caFile string
	entra  *fakeentra.Server
	exo    *fakeexchange.Server
	store  *tokenstore.Store
}

func startWorld(dir string) (*world, error) {
	tw, err := fakeworld.New()
	if err != nil {
		return nil, err
	}
	if err := tw.WriteFiles(dir); err != nil {
		tw.Close()
		return nil, err
	}
	w := &world{World: tw, ca: tw.CA, caFile: tw.CAFile, entra: tw.Entra, exo: tw.Exchange}
	app := tw.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}})
	tw.Graph.AddMailbox(mailbox, tenantID)
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
	cmd   *exec.Cmd
	smtp  string
	logs  *bytes.Buffer
	users map[string]device
}

// makeDevices makes n devices' logins, hashed with the bridge's default.
func makeDevices(prefix string, n int) ([]device, error) {
	out := make([]device, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range out {
		wg.Go(func() {
			d := device{user: fmt.Sprintf("%s-%03d", prefix, i+1), password: fmt.Sprintf("bench-%s-password-%d", prefix, i+1)}
			d.hash, errs[i] = passwd.NewArgon2id([]byte(d.password))
			out[i] = d
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func (w *world) startBridge(o options, smtpHost string, devices []device, graphHost ...string) (*bridgeProc, error) {
	dir := filepath.Dir(w.caFile)
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	maxBytes := max(o.big+1<<20, config.DefaultMaxMessageBytes)
	graphLines := ""
	if len(graphHost) > 0 {
		graphLines = fmt.Sprintf("    transport: graph\n    graph_host: %q\n    graph_token_scope: %q\n", graphHost[0], fakeentra.GraphResource+"/.default")
	}
	var devs strings.Builder
	users := map[string]device{}
	for _, d := range devices {
		fmt.Fprintf(&devs, "  - {name: %s, username: %s, password_hash: %q, tenant: contoso, mailbox: %q}\n", d.user, d.user, d.hash, mailbox)
		users[d.user] = d
	}
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
%sdevices:
%slimits: {max_message_bytes: %d, max_connections: 1000, max_connections_per_ip: 1000}
delivery: {mode: hybrid}
spool: {dir: spool}
log: {level: warn}
http: {address: %q}
`, addr, tenantID, clientID, clientSecret, w.entra.URL(), smtpHost, o.c, graphLines, devs.String(), maxBytes, httpAddr)
	path := filepath.Join(dir, "bench.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	os.RemoveAll(filepath.Join(dir, "spool"))
	p := &bridgeProc{smtp: addr, logs: &bytes.Buffer{}, users: users}
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

// login opens a device's session with the bridge: plain SMTP on the LAN,
// AUTH PLAIN.
func (p *bridgeProc) login(d device) (*smtp.Client, error) {
	c, err := smtp.Dial(p.smtp)
	if err != nil {
		return nil, err
	}
	if err := c.Auth(sasl.NewPlainClient("", d.user, d.password)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// direct opens a device's session straight with Exchange, through the
// proxy: STARTTLS, EHLO again, AUTH XOAUTH2 with the app's token.
func (w *world) direct(addr, token string) func(device) (*smtp.Client, error) {
	return func(device) (*smtp.Client, error) {
		c, err := smtp.DialStartTLS(addr, &tls.Config{ServerName: "127.0.0.1", RootCAs: w.ca.Pool()})
		if err != nil {
			return nil, err
		}
		if err := c.Auth(&xoauth2{user: mailbox, token: token}); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
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

// sendPerMessage sends n messages from the devices at once, each on a
// connection and login of its own, as MFPs do: a device connects, logs
// in, sends, quits, and starts again. A message's latency runs from the
// connection to the final reply; QUIT is the device's time, not the
// message's.
func sendPerMessage(devices []device, n int, body []byte, open func(device) (*smtp.Client, error)) (result, error) {
	var (
		left = int64(n)
		mu   sync.Mutex
		lats []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	start := time.Now()
	for _, d := range devices {
		wg.Go(func() {
			for atomic.AddInt64(&left, -1) >= 0 {
				t0 := time.Now()
				c, err := open(d)
				if err == nil {
					err = sendOne(c, body)
				}
				took := time.Since(t0)
				if c != nil {
					c.Quit()
					c.Close()
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					lats = append(lats, took)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
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
	resp, err := submit(c, mailbox, body)
	if err != nil {
		return err
	}
	if strings.Contains(resp.StatusText, "queued") {
		return fmt.Errorf("the bridge queued a message instead of delivering it: %s", resp.StatusText)
	}
	return nil
}

// submit sends one message from from to bob on c, and returns the reply
// to its data.
func submit(c *smtp.Client, from string, body []byte) (*smtp.DataResponse, error) {
	if err := c.Mail(from, nil); err != nil {
		return nil, err
	}
	if err := c.Rcpt("bob@contoso.example", nil); err != nil {
		return nil, err
	}
	w, err := c.Data()
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(body); err != nil {
		return nil, err
	}
	return w.CloseWithResponse()
}

// proxy is the link to Exchange: it adds oneWay to each direction, as a
// site's line to Exchange Online does, and counts the turns, the times
// the client speaks after the server did: round trips.
type proxy struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	turns  atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startProxy(target string, oneWay time.Duration) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, oneWay: oneWay}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.handle(c) })
		}
	})
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) handle(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, client, server)
	p.mu.Unlock()
	var last atomic.Int32 // 1: the client spoke last, 2: the server
	done := make(chan struct{}, 2)
	go func() { p.pipe(server, client, 1, &last); done <- struct{}{} }()
	go func() { p.pipe(client, server, 2, &last); done <- struct{}{} }()
	<-done
	<-done
	client.Close()
	server.Close()
}

// pipe copies src to dst, each chunk oneWay after it came.
func (p *proxy) pipe(dst, src net.Conn, side int32, last *atomic.Int32) {
	type chunk struct {
		at   time.Time
		data []byte
	}
	ch := make(chan chunk, 4096)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for c := range ch {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.data); err != nil {
				for range ch {
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if prev := last.Swap(side); side == 1 && prev == 2 {
				p.turns.Add(1)
			}
			ch <- chunk{time.Now().Add(p.oneWay), bytes.Clone(buf[:n])}
		}
		if err != nil {
			break
		}
	}
	close(ch)
	<-sent
}

// cpuTime reads a process's user and system CPU time from /proc.
func cpuTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("CPU time: %w (Linux only)", err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 13 {
		return 0, errors.New("CPU time: short /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("CPU time: %w", err)
	}
	// USER_HZ is 100 on every Linux this runs on.
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
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

// graphRow is the Graph transport's figures.
type graphRow struct {
	loaded, alone     result
	cpuPerMsg         time.Duration
	scanSize, pdfSize int
	scanTook          time.Duration
	scanRSS           int64
}

// graphRun measures the Graph transport: 4 KB messages as a fleet and
// alone (sendMail), then a scan (a draft and an upload session) on a
// bridge of its own for its peak RSS. Graph is reached through the
// proxy, with the first round-trip time.
func (w *world) graphRun(o options, fleet, burst []device, body []byte) (graphRow, error) {
	var gr graphRow
	host, _ := strings.CutPrefix(w.World.Graph.URL(), "https://")
	proxy, err := startProxy(host, o.rtts[0]/2)
	if err != nil {
		return gr, err
	}
	defer proxy.close()
	graphURL := "https://" + proxy.addr()
	br, err := w.startBridge(o, w.exo.Addr(), append(fleet, burst...), graphURL)
	if err != nil {
		return gr, err
	}
	if _, err := sendPerMessage(fleet, len(fleet), body, br.login); err != nil {
		br.stop()
		return gr, fmt.Errorf("warm-up: %w\n%s", err, br.logs.String())
	}
	cpu0, err := cpuTime(br.cmd.Process.Pid)
	if err == nil {
		gr.loaded, err = sendPerMessage(fleet, o.n, body, br.login)
	}
	if err == nil {
		var cpu1 time.Duration
		if cpu1, err = cpuTime(br.cmd.Process.Pid); err == nil {
			gr.cpuPerMsg = (cpu1 - cpu0) / time.Duration(o.n)
		}
	}
	if err == nil {
		gr.alone, err = sendPerMessage(fleet[:1], o.alone, body, br.login)
	}
	br.stop()
	if err != nil {
		return gr, fmt.Errorf("%w\n%s", err, br.logs.String())
	}
	if o.scan <= 0 {
		return gr, nil
	}
	br, err = w.startBridge(o, w.exo.Addr(), append(fleet, burst...), graphURL)
	if err != nil {
		return gr, err
	}
	defer br.stop()
	scan, pdf := makeScan(int(o.scan))
	gr.scanSize, gr.pdfSize = len(scan), pdf
	r, err := sendPerMessage(fleet[:1], 1, scan, br.login)
	if err != nil {
		return gr, fmt.Errorf("scan: %w\n%s", err, br.logs.String())
	}
	gr.scanTook = r.percentile(50)
	gr.scanRSS, err = peakRSS(br.cmd.Process.Pid)
	return gr, err
}

// makeScan is a scanner's message of about size bytes: a line of text
// and a PDF attachment. It returns the message and the PDF's size.
func makeScan(size int) ([]byte, int) {
	pdfSize := size / 4 * 3 * 76 / 78
	msg, _ := testenv.Scan("From: <"+mailbox+">\r\nTo: <bob@contoso.example>\r\nSubject: scan\r\n", pdfSize)
	return []byte(msg), pdfSize
}
