package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakeworld"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/queue"
)

// The scale benchmark (-scale) builds a managed-service provider's fleet
// against the fakes: -tenants tenants, -devices devices, each sending as
// a mailbox of its own, and -queued messages queued while Exchange is
// down; then it measures what grows with the fleet: the bridge's memory
// idle and with the queue, the status page, /metrics (per device and
// without), a restart with the queue, the queue command, a reload, and
// what a TCP health check logs.

// scale is one scale run's fleet and the bridge serving it.
type scale struct {
	o        options
	out      io.Writer
	dir      string
	w        *fakeworld.World
	hash     string // every device's password hash (one password)
	cfgPath  string
	smtp     string
	http     string
	logPath  string
	p        *exec.Cmd
	exited   chan error
	password string
}

const scalePassword = "a scale benchmark password"

func runScale(o options, dir string, out io.Writer) error {
	s := &scale{o: o, out: out, dir: dir, password: scalePassword}
	var err error
	if s.w, err = fakeworld.New(); err != nil {
		return err
	}
	defer s.w.Close()
	if err := s.w.WriteFiles(dir); err != nil {
		return err
	}
	if err := s.w.Listen(); err != nil {
		return err
	}
	if s.hash, err = passwd.NewArgon2id([]byte(scalePassword)); err != nil {
		return err
	}
	fmt.Fprintf(out, "[scale] %d tenants, %d devices (each its own mailbox), %d messages to queue with Exchange down ...\n", o.tenants, o.devices, o.queued)
	if err := s.writeConfig(true); err != nil {
		return err
	}
	defer s.stop()
	var r scaleResult
	steps := []struct {
		name string
		f    func(*scaleResult) error
	}{
		{"start", s.measureStart},
		{"idle", s.measureIdle},
		{"health check", s.measureHealthCheck},
		{"queue", s.fillQueue},
		{"queue list", s.measureQueueList},
		{"reload", s.measureReload},
		{"restart", s.measureRestart},
		{"per_device: false", s.measurePerDeviceOff},
	}
	for _, st := range steps {
		fmt.Fprintf(out, "[scale] %s ...\n", st.name)
		if err := st.f(&r); err != nil {
			return fmt.Errorf("%s: %w\n%s", st.name, err, s.logTail())
		}
	}
	r.report(s)
	return nil
}

// scaleResult is what the scale run measured.
type scaleResult struct {
	listen                            time.Duration
	idleRSS                           int64
	pageBytes                         int
	pageFirst                         time.Duration
	pageRSSBefore, pageRSSAfter       int64
	metricsBytes, metricsSeries       int
	healthLines                       []string
	queueRate                         float64
	queuedRSS                         int64
	listTook, listAPI                 time.Duration
	listItems, listAPIItems           int
	listRSSBefore, listRSSAfter       int64
	listErr                           string
	reloadTook, reloadAPI             time.Duration
	sessionAfterReload                string
	restartListen, restartScheduled   time.Duration
	restartRSS                        int64
	offMetricsBytes, offMetricsSeries int
	offErr                            string
}

func tenantName(i int) string   { return fmt.Sprintf("t%03d", i) }
func tenantIDOf(i int) string   { return fmt.Sprintf("%08x-0000-4000-8000-%012x", 0x5ca1e000+i, i) }
func clientIDOf(i int) string   { return fmt.Sprintf("%08x-0000-4000-9000-%012x", 0xc11e0000+i, i) }
func deviceName(i int) string   { return fmt.Sprintf("mfp-%05d", i) }
func mailboxOf(i, t int) string { return fmt.Sprintf("mfp-%05d@%s.example", i, tenantName(t)) }

// writeConfig writes the fleet's config, with per-device metrics or
// without; the first time it registers the tenants, apps and mailboxes
// with the fakes.
func (s *scale) writeConfig(perDevice bool) error {
	o := s.o
	register := s.cfgPath == ""
	if register {
		var err error
		if s.smtp, err = freeAddr(); err != nil {
			return err
		}
		if s.http, err = freeAddr(); err != nil {
			return err
		}
	}
	// Exchange is down: nothing listens where the tenants' SMTP goes.
	down, err := freeAddr()
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "hostname: bridge.scale\nlisteners:\n  - {name: lan, address: %q, allow_insecure_auth: true}\ntenants:\n", s.smtp)
	for t := range o.tenants {
		fmt.Fprintf(&b, "  - {name: %s, tenant_id: %q, client_id: %q, client_secret: %q, authority_host: %q, smtp_host: %q}\n",
			tenantName(t), tenantIDOf(t), clientIDOf(t), clientSecret, s.w.Entra.URL(), down)
		if register {
			app := s.w.AddApp(tenantIDOf(t), fakeentra.App{ClientID: clientIDOf(t), Secrets: []fakeentra.Secret{{Value: clientSecret}}})
			for d := t; d < o.devices; d += o.tenants {
				s.w.AddMailbox(mailboxOf(d, t), tenantIDOf(t), app)
			}
		}
	}
	b.WriteString("devices:\n")
	for d := range o.devices {
		fmt.Fprintf(&b, "  - {name: %s, username: %s, password_hash: %q, tenant: %s, mailbox: %s}\n",
			deviceName(d), deviceName(d), s.hash, tenantName(d%o.tenants), mailboxOf(d, d%o.tenants))
	}
	fmt.Fprintf(&b, `limits: {max_connections: 2000, max_connections_per_ip: 2000}
delivery: {mode: queue, retry_initial: 30m, retry_max: 1h}
spool: {dir: spool}
log: {level: info}
http: {address: %q}
`, s.http)
	if !perDevice {
		b.WriteString("metrics: {per_device: false}\n")
	}
	s.cfgPath = filepath.Join(s.dir, "scale.yaml")
	return os.WriteFile(s.cfgPath, []byte(b.String()), 0o600)
}

// start runs the bridge and returns how long it took to greet.
func (s *scale) start() (time.Duration, error) {
	s.logPath = filepath.Join(s.dir, "scale.log")
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	s.p = exec.Command(s.o.binary, "serve", "--config", s.cfgPath)
	s.p.Env = append(os.Environ(), "SSL_CERT_FILE="+s.w.CAFile)
	s.p.Stdout, s.p.Stderr = logf, logf
	start := time.Now()
	if err := s.p.Start(); err != nil {
		return 0, err
	}
	s.exited = make(chan error, 1)
	go func() { s.exited <- s.p.Wait() }()
	for deadline := start.Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case err := <-s.exited:
			s.p = nil
			return 0, fmt.Errorf("smtpbridge exited: %v", err)
		default:
		}
		if greeted(s.smtp) {
			return time.Since(start), nil
		}
	}
	s.stop()
	return 0, errors.New("smtpbridge did not greet within 2 minutes")
}

// greeted says whether a 220 greeting comes from addr.
func greeted(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "220")
}

func (s *scale) stop() {
	if s.p == nil || s.p.Process == nil {
		return
	}
	s.p.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(45 * time.Second):
		s.p.Process.Kill()
		<-s.exited
	}
	s.p = nil
}

func (s *scale) rss() int64 {
	if s.p == nil {
		return 0
	}
	n, _ := procStatus(s.p.Process.Pid, "VmRSS:")
	return n
}

// procStatus reads a size field (VmRSS:, VmHWM:) of /proc/PID/status.
func procStatus(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc status", field)
}

func (s *scale) logTail() string {
	data, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(len(lines)-20, 0):], "\n")
}

func (s *scale) get(path string) ([]byte, time.Duration, error) {
	start := time.Now()
	resp, err := http.Get("http://" + s.http + path)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	took := time.Since(start)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return body, took, err
}

func (s *scale) measureStart(r *scaleResult) error {
	var err error
	r.listen, err = s.start()
	return err
}

// measureIdle takes the idle bridge's memory, then its status page (the
// first view, and ten in a row) and its metrics.
func (s *scale) measureIdle(r *scaleResult) error {
	time.Sleep(3 * time.Second)
	r.idleRSS = s.rss()
	r.pageRSSBefore = r.idleRSS
	for i := range 10 {
		body, took, err := s.get("/")
		if err != nil {
			return err
		}
		if i == 0 {
			r.pageBytes, r.pageFirst = len(body), took
		}
	}
	r.pageRSSAfter = s.rss()
	body, _, err := s.get("/metrics")
	if err != nil {
		return err
	}
	r.metricsBytes, r.metricsSeries = len(body), seriesIn(body)
	return nil
}

// seriesIn counts a Prometheus text exposition's series.
func seriesIn(body []byte) int {
	n := 0
	for _, line := range strings.Split(string(body), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			n++
		}
	}
	return n
}

// measureHealthCheck connects and closes, as a load balancer's TCP check
// does, and collects what the bridge logged above debug meanwhile.
func (s *scale) measureHealthCheck(r *scaleResult) error {
	before, _ := os.ReadFile(s.logPath)
	for range 3 {
		c, err := net.Dial("tcp", s.smtp)
		if err != nil {
			return err
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	time.Sleep(500 * time.Millisecond)
	after, _ := os.ReadFile(s.logPath)
	for _, line := range strings.Split(string(after[len(before):]), "\n") {
		if strings.Contains(line, `"level":"warn"`) || strings.Contains(line, `"level":"error"`) {
			r.healthLines = append(r.healthLines, line)
		}
	}
	return nil
}

// fillQueue sends the messages to queue, from every device in turn,
// several messages per session, on a few connections at once.
func (s *scale) fillQueue(r *scaleResult) error {
	const senders = 16
	body := makeBody(2048)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	per := (s.o.queued + senders - 1) / senders
	for w := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, last := w*per, min((w+1)*per, s.o.queued)
			for i := first; i < last; {
				d := (i / 50) % s.o.devices
				n := min(50, last-i)
				if err := s.session(deviceName(d), mailboxOf(d, d%s.o.tenants), n, body); err != nil {
					errs <- err
					return
				}
				i += n
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	r.queueRate = float64(s.o.queued) / time.Since(start).Seconds()
	time.Sleep(3 * time.Second)
	r.queuedRSS = s.rss()
	return nil
}

// session logs in as device and sends n messages on one connection.
func (s *scale) session(device, from string, n int, body []byte) error {
	c, err := smtp.Dial(s.smtp)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", device, s.password)); err != nil {
		return fmt.Errorf("%s: auth: %w", device, err)
	}
	for range n {
		if err := queueOne(c, from, body); err != nil {
			return fmt.Errorf("%s: %w", device, err)
		}
	}
	return c.Quit()
}

// queueOne sends one message and wants it taken (queued, Exchange being
// down).
func queueOne(c *smtp.Client, from string, body []byte) error {
	_, err := submit(c, from, body)
	return err
}

// measureQueueList asks the running bridge for one mailbox's first 50
// queued messages with the queue command.
func (s *scale) measureQueueList(r *scaleResult) error {
	r.listRSSBefore = s.rss()
	start := time.Now()
	cmd := exec.Command(s.o.binary, "queue", "list", "--config", s.cfgPath, "--mailbox", mailboxOf(1, 1%s.o.tenants), "--limit", "50", "--json")
	out, err := cmd.Output()
	r.listTook = time.Since(start)
	r.listRSSAfter = s.rss()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.listErr = strings.TrimSpace(string(ee.Stderr))
		} else {
			r.listErr = err.Error()
		}
		return nil
	}
	r.listItems = strings.Count(string(out), `"id":`)
	// The bridge's own answer, on its admin socket: what the command
	// waits for after its start and its reading of the config.
	ac, err := s.admin()
	if err != nil {
		return err
	}
	qc := &queue.Client{Client: *ac}
	start = time.Now()
	p, err := qc.Select(queue.Filter{Mailbox: mailboxOf(1, 1%s.o.tenants)}, "", 50)
	r.listAPI = time.Since(start)
	if err != nil {
		return err
	}
	r.listAPIItems = len(p.Items)
	return nil
}

// admin is a client of the bridge's admin socket, with its token.
func (s *scale) admin() (*adminapi.Client, error) {
	token, err := os.ReadFile(filepath.Join(s.dir, "spool", adminapi.TokenFile))
	if err != nil {
		return nil, err
	}
	return &adminapi.Client{Socket: filepath.Join(s.dir, "spool", adminapi.SocketFile), Token: strings.TrimSpace(string(token))}, nil
}

// measureReload reloads the fleet's config (one device's password
// changed) while another device is logged in, and has that device send
// after the reload.
func (s *scale) measureReload(r *scaleResult) error {
	c, err := smtp.Dial(s.smtp)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", deviceName(3), s.password)); err != nil {
		return err
	}
	data, err := os.ReadFile(s.cfgPath)
	if err != nil {
		return err
	}
	other, err := passwd.NewBcrypt([]byte("another password"), 4)
	if err != nil {
		return err
	}
	old := fmt.Sprintf("name: %s, username: %s, password_hash: %q", deviceName(5), deviceName(5), s.hash)
	data = []byte(strings.Replace(string(data), old, fmt.Sprintf("name: %s, username: %s, password_hash: %q", deviceName(5), deviceName(5), other), 1))
	if err := os.WriteFile(s.cfgPath, data, 0o600); err != nil {
		return err
	}
	start := time.Now()
	if out, err := exec.Command(s.o.binary, "reload", "--config", s.cfgPath).CombinedOutput(); err != nil {
		return fmt.Errorf("reload: %v\n%s", err, out)
	}
	r.reloadTook = time.Since(start)
	// The bridge's own reload, on its admin socket, without the
	// command's start and config read.
	ac, err := s.admin()
	if err != nil {
		return err
	}
	start = time.Now()
	var res map[string]any
	if err := ac.Do("POST", "/-/reload", &res); err != nil {
		return fmt.Errorf("reload through the admin API: %w", err)
	}
	r.reloadAPI = time.Since(start)
	if err := queueOne(c, mailboxOf(3, 3%s.o.tenants), makeBody(1024)); err != nil {
		r.sessionAfterReload = "refused: " + err.Error()
	} else {
		r.sessionAfterReload = "sent"
	}
	return nil
}

// measureRestart stops the bridge and starts it again on its spool:
// how soon it greets, how soon it has every queued message scheduled
// (its "queue loaded" line), and its memory then.
func (s *scale) measureRestart(r *scaleResult) error {
	s.stop()
	before, _ := os.ReadFile(s.logPath)
	var err error
	start := time.Now()
	if r.restartListen, err = s.start(); err != nil {
		return err
	}
	for deadline := start.Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		data, _ := os.ReadFile(s.logPath)
		if strings.Contains(string(data[len(before):]), "queue reloaded from the spool") {
			r.restartScheduled = time.Since(start)
			break
		}
	}
	time.Sleep(2 * time.Second)
	r.restartRSS = s.rss()
	if os.Getenv("SCALE_DEBUG") != "" {
		data, _ := os.ReadFile(s.logPath)
		fmt.Fprintf(s.out, "%s\n", data[len(before):])
	}
	return nil
}

// measurePerDeviceOff restarts the bridge with metrics.per_device: false
// and measures /metrics.
func (s *scale) measurePerDeviceOff(r *scaleResult) error {
	s.stop()
	if err := s.writeConfig(false); err != nil {
		return err
	}
	if _, err := s.start(); err != nil {
		r.offErr = err.Error()
		return nil
	}
	body, _, err := s.get("/metrics")
	if err != nil {
		return err
	}
	r.offMetricsBytes, r.offMetricsSeries = len(body), seriesIn(body)
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func (r scaleResult) report(s *scale) {
	o, out := s.o, s.out
	fmt.Fprintf(out, "\nscale: %d tenants, %d devices, %d queued (Exchange down), on this machine:\n", o.tenants, o.devices, o.queued)
	fmt.Fprintf(out, "  start        greets after %.2f s; idle RSS %.1f MiB (target < 96 MiB) %s\n", r.listen.Seconds(), mib(r.idleRSS), verdict(r.idleRSS < 96<<20))
	fmt.Fprintf(out, "  status page  %.1f KB, first view in %.1f ms (targets < 300 KB, < 100 ms) %s; RSS %+.1f MiB after 10 views (target < 10 MiB) %s\n",
		float64(r.pageBytes)/1e3, ms(r.pageFirst), verdict(r.pageBytes < 300e3 && r.pageFirst < 100*time.Millisecond),
		mib(r.pageRSSAfter-r.pageRSSBefore), verdict(r.pageRSSAfter-r.pageRSSBefore < 10<<20))
	fmt.Fprintf(out, "  /metrics     %d series, %.2f MB (targets < 42000, < 3.5 MB) %s\n", r.metricsSeries, float64(r.metricsBytes)/1e6,
		verdict(r.metricsSeries < 42000 && r.metricsBytes < 3.5e6))
	if r.offErr != "" {
		fmt.Fprintf(out, "  /metrics     per_device: false not taken: %s\n", firstLine(r.offErr))
	} else {
		fmt.Fprintf(out, "  /metrics     per_device: false: %d series, %.1f KB (targets < 2000, < 300 KB) %s\n", r.offMetricsSeries, float64(r.offMetricsBytes)/1e3,
			verdict(r.offMetricsSeries < 2000 && r.offMetricsBytes < 300e3))
	}
	fmt.Fprintf(out, "  health check %d line(s) above debug for 3 TCP connect-and-resets (target 0) %s\n", len(r.healthLines), verdict(len(r.healthLines) == 0))
	fmt.Fprintf(out, "  queue        %d messages queued at %.0f msg/s; RSS %.1f MiB with them (target < 160 MiB) %s\n", o.queued, r.queueRate, mib(r.queuedRSS), verdict(r.queuedRSS < 160<<20))
	if r.listErr != "" {
		fmt.Fprintf(out, "  queue list   --mailbox --limit 50 not taken: %s\n", firstLine(r.listErr))
	} else {
		fmt.Fprintf(out, "  queue list   --mailbox M --limit 50: the bridge answers %d items in %.0f ms (target < 100 ms) %s; the command, with its start and the %d-device config read, %.0f ms; bridge RSS %+.1f MiB\n",
			r.listAPIItems, ms(r.listAPI), verdict(r.listAPI < 100*time.Millisecond), o.devices, ms(r.listTook), mib(r.listRSSAfter-r.listRSSBefore))
	}
	fmt.Fprintf(out, "  reload       %d devices: the bridge reloads in %.2f s (target < 1 s) %s; smtpbridge reload, with its start and config read, %.2f s; a logged-in device's next message: %s\n",
		o.devices, r.reloadAPI.Seconds(), verdict(r.reloadAPI < time.Second), r.reloadTook.Seconds(), r.sessionAfterReload)
	fmt.Fprintf(out, "  restart      with %d queued: greets after %.2f s (target < 2 s) %s, queue scheduled after %.2f s (target < 5 s) %s; RSS %.1f MiB\n",
		o.queued, r.restartListen.Seconds(), verdict(r.restartListen < 2*time.Second), r.restartScheduled.Seconds(),
		verdict(r.restartScheduled > 0 && r.restartScheduled < 5*time.Second), mib(r.restartRSS))
	for _, l := range r.healthLines {
		fmt.Fprintf(out, "    logged: %s\n", l)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
