// Package daemon is the running bridge: the message's path (Path) built
// from a config, with what runs around it: the spool and its lock, the
// sandbox's fakes, the audit log, the metrics and the status page, the
// HTTP listener and the admin socket, the savers of what outlives a
// restart, the replicas' shared state in Redis, and reloads.
//
// cmd/smtpbridge parses flags and calls New and Run; the tests of the
// bridge and the queue build a Path with NewPath. Only this package and
// the commands read the config.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/smtpbridge/smtpbridge/internal/redis"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/cluster"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/httpauth"
	"github.com/smtpbridge/smtpbridge/internal/httpserve"
	"github.com/smtpbridge/smtpbridge/internal/sandbox"
	"github.com/smtpbridge/smtpbridge/metrics"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/status"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream/sentitems"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

// ShutdownGrace is how long sessions in progress may take to finish after
// SIGTERM or SIGINT.
const ShutdownGrace = 30 * time.Second

// Options are what a daemon is built with besides its config.
type Options struct {
	Log     zerolog.Logger
	Version string // for the metrics, the status page and the log
	// Microsoft, when set, is where every tenant's Entra ID, Exchange
	// and Graph are (tests: the test world); sandbox mode sets it to
	// its own fakes.
	Microsoft Microsoft
}

// Daemon is a running bridge: its parts, and the config they were built
// from, which a reload replaces.
type Daemon struct {
	o        Options
	log      zerolog.Logger
	hostname string
	sb       *sandbox.Sandbox
	ms       Microsoft // where Entra ID and Exchange are
	instance string    // cluster.instance

	unlock func()
	sp     *spool.Spool
	// draining: smtpbridge drain asked for the queue to empty before a
	// stop; /readyz says not ready.
	draining atomic.Bool
	path     *Path
	rdb      *redis.Client // nil for a bridge on its own
	// roster has the replicas' accounts of their spools (replicas, read
	// every rosterEvery); nil for a bridge on its own.
	roster     *cluster.Roster
	replicasMu sync.Mutex
	replicas   []cluster.Replica
	m          *metrics.Metrics
	board      *status.Board
	sent       *sentitems.Cleaner
	audit      *audit.Logger
	savers     []saver
	httpLn     net.Listener
	admin      adminapi.Policy // who may call the admin API
	// pageAuth is who may see the status page and /metrics.
	pageAuth httpauth.Credential

	mu  sync.Mutex // one reload at a time
	cfg *config.Config
}

// New builds a bridge from cfg: it takes the spool (locked: one bridge
// per spool directory), starts the sandbox's fakes in sandbox mode, and
// wires every part; nothing listens until Run.
func New(cfg *config.Config, o Options) (*Daemon, error) {
	d := &Daemon{o: o, log: o.Log, cfg: cfg, hostname: hostname(cfg), ms: o.Microsoft, instance: cfg.Cluster.Instance, unlock: func() {}}
	for _, step := range []func() error{d.openSpool, d.startSandbox, d.startObservers, d.startUpstream} {
		if err := step(); err != nil {
			d.close()
			return nil, err
		}
	}
	return d, nil
}

func hostname(cfg *config.Config) string {
	if cfg.Hostname != "" {
		return cfg.Hostname
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "smtpbridge"
}

// openSpool locks and opens the spool directory, with what lives there:
// the admin token.
func (d *Daemon) openSpool() error {
	cfg := d.cfg
	unlock, err := spool.Lock(cfg.Spool.Dir)
	if errors.Is(err, spool.ErrLocked) {
		return fmt.Errorf("spool.dir: %w; each bridge needs its own spool directory", err)
	}
	if err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}
	d.unlock = unlock
	if d.sp, err = spool.OpenBackground(cfg.Spool.Dir); err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}
	d.applyMemoryLimit(cfg)
	token, err := adminapi.LoadOrCreateToken(cfg.Spool.Dir)
	if err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}
	d.admin = adminapi.Policy{Token: token, AllowedHosts: cfg.HTTP.AllowedHosts}
	if a := cfg.HTTP.Auth; a != nil {
		d.pageAuth = httpauth.Credential{Username: a.Username, Password: a.Password.Value(), Hash: a.Hash}
	}
	return nil
}

// startSandbox starts the fakes of Microsoft's side in sandbox mode, or
// warns about hosts that are not Microsoft's.
func (d *Daemon) startSandbox() error {
	cfg := d.cfg
	if cfg.Sandbox.Dir == "" {
		warnAuthorities(cfg, d.log)
		return nil
	}
	var err error
	if d.sb, err = sandbox.Start(cfg.Sandbox.Dir, cfg.Inventory()); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	d.ms = SandboxHosts(d.sb)
	d.log.Warn().Str("mail_dir", d.sb.MailDir).Str("authority", d.sb.AuthorityHost()).Str("smtp_host", d.sb.SMTPHost()).
		Msg("SANDBOX MODE: tokens and Exchange Online are simulated on this machine; no mail leaves it, messages are written to mail_dir as .eml")
	return nil
}

// startObservers starts what watches the bridge: the status page's
// board, the metrics, the audit log.
func (d *Daemon) startObservers() error {
	cfg := d.cfg
	d.board = status.NewBoard()
	if err := d.board.Load(filepath.Join(cfg.Spool.Dir, "status.json")); err != nil {
		d.log.Warn().Err(err).Msg("the status page's saved last-seen times could not be read")
	}
	inv := d.ms.Inventory(cfg)
	d.board.Configure(inv)
	d.m = metrics.New(d.o.Version, inv, metrics.Options{PerDevice: cfg.Metrics.PerDeviceOn()})
	d.audit = audit.NewLogger(d.log)
	if err := d.audit.SetFile(cfg.Log.AuditFile); err != nil {
		return fmt.Errorf("log.audit_file: %w", err)
	}
	return nil
}

// startUpstream wires the message's path, with the limits shared through
// Redis when cluster.redis is set, and loads what the last run saved.
func (d *Daemon) startUpstream() error {
	cfg := d.cfg
	parts := PartsOf(cfg, d.ms)
	d.sp.SetQuota(parts.Spool)
	graphTmp := filepath.Join(cfg.Spool.Dir, "graph-tmp")
	// Attachments of an attempt a crash interrupted.
	os.RemoveAll(graphTmp)
	if err := os.MkdirAll(graphTmp, 0o700); err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}
	var err error
	if d.sent, err = sentitems.New(filepath.Join(cfg.Spool.Dir, "sent-items.jsonl"), graphRequester{d}, sentItemsKeep(cfg), d.log); err != nil {
		return err
	}
	o := PathOptions{Log: d.log, Spool: d.sp, GraphTemp: graphTmp, Guard: guard.New(parts.Guard),
		Events: audit.Tee{d.audit, d.m, d.board, d.sent}, Conns: connObservers{d.m, d.board},
		Tokens: tokenObservers{d.m, d.board, &tokenLog{log: d.log}}, Upstream: d.m, Holds: holdMetrics{d.m}, Refused: d.m}
	if cfg.Cluster.Enabled() {
		r := cfg.Cluster.Redis
		d.rdb = cluster.Client(cluster.Redis{Address: r.Address, SentinelAddresses: r.SentinelAddresses, MasterName: r.MasterName,
			ClusterAddresses: r.ClusterAddresses, Username: r.Username, Password: r.Password.Value(), TLS: r.TLS, RootCAs: r.RootCAs})
		o.Shared = cluster.New(cluster.Options{Client: d.rdb, Prefix: r.KeyPrefix, Instance: cfg.Cluster.Instance,
			Limits: parts.MailboxLimits, Log: d.log, Observer: sharedObservers{d.m, d.board}, LeaseTTL: cfg.Cluster.LeaseTTL})
		o.Guard.Share(cluster.NewGuard(d.rdb, r.KeyPrefix, cfg.Cluster.Instance), cfg.Cluster.Instance)
		d.roster = cluster.NewRoster(d.rdb, r.KeyPrefix, cfg.Cluster.Instance)
		d.log.Info().Str("instance", cfg.Cluster.Instance).Msg("the mailboxes' limits are shared with the other replicas through Redis")
	}
	parts.Hostname = d.hostname
	if d.path, err = NewPath(parts, o); err != nil {
		if o.Shared != nil {
			o.Shared.Close()
		}
		return err
	}
	d.loadState()
	d.m.SetSources(d.metricsSources())
	return nil
}

// metricsSources are what the metrics read at each scrape.
func (d *Daemon) metricsSources() metrics.Sources {
	x := d.path
	return metrics.Sources{
		Queue:               x.Queue.Stats,
		UpstreamConnections: x.SMTP.Connections,
		DeviceLastSeen:      d.board.LastSeen,
		BlockedAddresses:    func() int { return len(x.Guard.Blocks()) },
		Spool:               d.sp.Usage,
		MailboxRecipients:   x.Limits().Recipients,
	}
}

// Run opens the listeners and serves until ctx ends, reloading the
// config for each value from reloads (its source: SIGHUP, paramchange);
// started, if not nil, is called once the bridge takes mail. Then it
// shuts down within ShutdownGrace and releases everything New took,
// including on error.
func (d *Daemon) Run(ctx context.Context, reloads <-chan string, started func()) error {
	defer d.close()
	cfg := d.cfg // d.cfg is the reloads' from the first one on
	if err := d.path.Start(); err != nil {
		return err
	}
	var err error
	if d.httpLn, err = net.Listen("tcp", cfg.HTTP.Address); err != nil {
		d.path.Stop(context.Background())
		return fmt.Errorf("http.address: %w", err)
	}
	httpSrv := httpserve.Server(d.Handler())
	go func() {
		if err := httpSrv.Serve(httpserve.Limit(d.httpLn, httpserve.MaxConnections)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error().Err(err).Msg("http listener stopped")
		}
	}()
	adminSrv := d.serveAdminSocket(cfg)
	stop := make(chan struct{})
	saversDone := d.startSavers(stop)
	sweepCtx, stopSweeps := context.WithCancel(context.Background())
	defer stopSweeps()
	go d.sent.Run(sweepCtx, sentItemsSweep(cfg))
	if d.rdb != nil {
		go d.clusterLoop(stop)
	}
	d.checkSignIns(cfg)
	d.log.Info().Str("version", d.o.Version).Str("hostname", d.hostname).Str("http", d.httpLn.Addr().String()).
		Int("devices", len(cfg.Devices)).Int("tenants", len(cfg.Tenants)).Msg("smtpbridge started")
	go func() {
		returnGarbage()
		if d.path.Queue != nil {
			<-d.path.Queue.Loaded() // reading a long queue leaves megabytes behind too
			returnGarbage()
		}
	}()
	if started != nil {
		started()
	}
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case source := <-reloads:
			d.Reload(source)
		}
	}
	d.shutdown(httpSrv, adminSrv)
	close(stop)
	<-saversDone
	if n, err := d.sp.QueuedCount(); err == nil && n > 0 {
		d.log.Info().Int("queued", n).Str("spool", cfg.Spool.Dir).Msg("queued messages stay in the spool and are delivered after the next start")
	}
	d.log.Info().Msg("stopped")
	return nil
}

// shutdown stops taking mail and waits for sessions and attempts in
// progress, within ShutdownGrace.
func (d *Daemon) shutdown(servers ...*http.Server) {
	d.log.Info().Str("grace", ShutdownGrace.String()).Msg("shutting down: no new connections; waiting for sessions in progress")
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := d.path.Stop(ctx); err != nil {
		d.log.Warn().Err(err).Msg("sessions still open at the end of the grace period were closed")
	}
	for _, s := range servers {
		if s != nil {
			s.Shutdown(ctx)
		}
	}
}

// close releases what New took: the shared limiter and Redis, the audit
// file, the sandbox, the spool's lock. The path's transports are closed
// by its Stop.
func (d *Daemon) close() {
	if d.path != nil && d.path.Shared != nil {
		d.path.Shared.Close()
	}
	if d.rdb != nil {
		d.rdb.Close()
	}
	if d.audit != nil {
		d.audit.Close()
	}
	if d.sb != nil {
		d.sb.Close()
	}
	d.unlock()
}

func warnAuthorities(cfg *config.Config, log zerolog.Logger) {
	for _, t := range cfg.Tenants {
		if !upsmtp.IsMicrosoftHost(t.SMTPHost) {
			log.Warn().Str("tenant", t.Name).Str("smtp_host", t.SMTPHost).
				Msg("smtp_host is not a known Exchange Online endpoint; its certificate is still verified, and devices' mail and the tenant's tokens go there")
		}
		if !tokenstore.IsMicrosoftAuthority(t.AuthorityHost) {
			log.Warn().Str("tenant", t.Name).Str("authority_host", t.AuthorityHost).
				Msg("authority_host is not a Microsoft Entra ID host; instance discovery is off for it")
		}
	}
}

// returnGarbage gives the operating system back what loading the config
// (a fleet's is megabytes of YAML) and the spool left behind, instead of
// keeping it as the heap's headroom: an idle bridge with 10,000 devices
// shows 20 to 40 MiB less RSS, which a container limit counts. One
// collection; called after the start and each reload.
func returnGarbage() {
	time.Sleep(time.Second) // after the start's or the reload's last allocations
	debug.FreeOSMemory()
}
