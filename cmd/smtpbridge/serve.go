package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/cluster"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/httpauth"
	"github.com/smtpbridge/smtpbridge/internal/httpserve"
	"github.com/smtpbridge/smtpbridge/internal/sandbox"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/metrics"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/status"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	"github.com/smtpbridge/smtpbridge/upstream/graph"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
)

// shutdownGrace is how long sessions in progress may take to finish after
// SIGTERM or SIGINT.
const shutdownGrace = 30 * time.Second

// stateSaveEvery is how often what the bridge keeps across restarts
// besides the spool (the status page's last-seen times, the mailboxes'
// recipient counts) is written to the spool directory.
const stateSaveEvery = 30 * time.Second

// blocksSaveEvery is how soon a new or lifted block is written to the
// spool directory, so that a crash does not lift it.
const blocksSaveEvery = 2 * time.Second

// blocksSyncEvery is how soon a block made or lifted by another replica
// applies here.
const blocksSyncEvery = time.Second

// rosterEvery is how often a replica tells the others what its spool
// holds.
const rosterEvery = 5 * time.Second

func cmdServe(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := configFlag(fs)
	sandboxDir := fs.String("sandbox", "", "run against in-process fakes of Entra ID and Exchange Online, writing mail to `DIR` as .eml")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *path == "" {
		return usageError{"no config file: pass --config FILE or set SMTPBRIDGE_CONFIG (try examples/sandbox.yaml)"}
	}
	var cfg *config.Config
	var err error
	if *sandboxDir != "" {
		abs, aerr := filepath.Abs(*sandboxDir)
		if aerr != nil {
			return usageError{fmt.Sprintf("sandbox directory %q: %v", *sandboxDir, aerr)}
		}
		cfg, err = loadConfigWith(*path, stderr, func(p string) (*config.Config, error) { return config.LoadSandbox(p, abs) })
	} else {
		cfg, err = loadConfig(*path, stderr)
	}
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	for _, p := range cfg.Warnings {
		log.Warn().Str("key", p.Key).Int("line", p.Line).Msg(p.Message)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return serve(ctx, cfg, *sandboxDir, log, hup, nil)
}

// daemon is a running bridge: its parts, and the config they were built
// from, which a reload replaces.
type daemon struct {
	log        zerolog.Logger
	hostname   string
	sandboxDir string // --sandbox, which overrides sandbox.dir on reloads too
	sb         *sandbox.Sandbox
	ms         microsoft // where Entra ID and Exchange are

	guard *guard.Guard
	// draining: smtpbridge drain asked for the queue to empty before a
	// stop; /readyz says not ready.
	draining atomic.Bool
	store    *tokenstore.Store
	limiter  *upstream.Local
	// shared is the limiter shared with the other replicas through
	// Redis (cluster.redis); nil for a bridge on its own.
	shared *cluster.Limiter
	// roster has the replicas' accounts of their spools (replicas, read
	// every rosterEvery); nil for a bridge on its own.
	roster     *cluster.Roster
	replicasMu sync.Mutex
	replicas   []cluster.Replica
	instance   string // cluster.instance
	// limits is what the transports keep to: shared, or limiter.
	limits quotaLimiter
	exo    *upsmtp.Transport
	// graphStore and graph are the Microsoft Graph side: its own
	// tokens (another scope) and transport; route picks per device.
	graphStore *tokenstore.Store
	graph      *graph.Transport
	route      *transports
	// refusals remembers Exchange's Send As and unknown-recipient
	// refusals for delivery.remember_refusals.
	refusals *queue.Refusals
	q        *queue.Queue
	srv      *bridge.Server
	m        *metrics.Metrics
	board    *status.Board
	audit    *audit.Logger
	sp       *spool.Spool
	httpLn   net.Listener
	admin    adminapi.Policy // who may call the admin API
	// pageAuth is who may see the status page and /metrics.
	pageAuth httpauth.Credential

	mu  sync.Mutex // one reload at a time
	cfg *config.Config
}

// serve runs the bridge until ctx ends, reloading the config on each value
// from hup.
func serve(ctx context.Context, cfg *config.Config, sandboxDir string, log zerolog.Logger, hup <-chan os.Signal, started func()) error {
	d := &daemon{log: log, cfg: cfg, sandboxDir: sandboxDir, hostname: cfg.Hostname}
	if d.hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "smtpbridge"
		}
		d.hostname = h
	}
	unlock, err := spool.Lock(cfg.Spool.Dir)
	if err != nil {
		if errors.Is(err, spool.ErrLocked) {
			return fmt.Errorf("spool.dir: %w; each bridge needs its own spool directory", err)
		}
		return fmt.Errorf("spool.dir: %w", err)
	}
	defer unlock()
	if d.sp, err = spool.Open(cfg.Spool.Dir); err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}
	d.sp.SetQuota(spoolQuota(cfg))
	d.applyMemoryLimit(cfg)
	token, err := adminapi.LoadOrCreateToken(cfg.Spool.Dir)
	if err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}
	d.admin = adminapi.Policy{Token: token, AllowedHosts: cfg.HTTP.AllowedHosts}
	if a := cfg.HTTP.Auth; a != nil {
		d.pageAuth = httpauth.Credential{Username: a.Username, Password: a.Password.Value()}
		if a.Hash != nil {
			d.pageAuth.Hash = a.Hash
		}
	}

	if cfg.Sandbox.Dir != "" {
		ts, mbs := sandboxSetup(cfg)
		if d.sb, err = sandbox.Start(cfg.Sandbox.Dir, ts, mbs); err != nil {
			return fmt.Errorf("sandbox: %w", err)
		}
		defer d.sb.Close()
		d.ms = microsoft{sb: d.sb}
		log.Warn().Str("mail_dir", d.sb.MailDir).Str("authority", d.sb.AuthorityHost()).Str("smtp_host", d.sb.SMTPHost()).
			Msg("SANDBOX MODE: tokens and Exchange Online are simulated on this machine; no mail leaves it, messages are written to mail_dir as .eml")
	} else {
		warnAuthorities(cfg, log)
	}

	d.board = status.NewBoard()
	if err := d.board.Load(filepath.Join(cfg.Spool.Dir, "status.json")); err != nil {
		log.Warn().Err(err).Msg("the status page's saved last-seen times could not be read")
	}
	d.board.Configure(d.ms.statusInventory(cfg))
	d.m = metrics.New(buildVersion(), metricsInventory(cfg))
	d.audit = audit.NewLogger(log)
	if err := d.audit.SetFile(cfg.Log.AuditFile); err != nil {
		return fmt.Errorf("log.audit_file: %w", err)
	}
	defer d.audit.Close()
	events := audit.Tee{d.audit, d.m, d.board}

	// The message's path, wired from the end: Exchange, the delivery
	// modes, the device side.
	if d.store, err = tokenstore.New(d.ms.tokenTenants(cfg), tokenObservers{d.m, d.board, &tokenLog{log: log}}); err != nil {
		return err
	}
	d.limiter = upstream.NewLocal(mailboxLimits(cfg))
	quotaFile := filepath.Join(cfg.Spool.Dir, "quota.json")
	if err := d.limiter.Load(quotaFile); err != nil {
		log.Warn().Err(err).Msg("the mailboxes' recipient counts of the last day could not be read; they start from zero")
	}
	d.limits = d.limiter
	var rdb redis.UniversalClient
	if cfg.Cluster.Enabled() {
		r := cfg.Cluster.Redis
		rdb = cluster.Client(cluster.Redis{Address: r.Address, SentinelAddresses: r.SentinelAddresses, MasterName: r.MasterName,
			ClusterAddresses: r.ClusterAddresses, Username: r.Username, Password: r.Password.Value(), TLS: r.TLS, RootCAs: r.RootCAs})
		defer rdb.Close()
		d.shared = cluster.New(cluster.Options{Client: rdb, Prefix: r.KeyPrefix, Instance: cfg.Cluster.Instance,
			Limits: mailboxLimits(cfg), Log: log, Observer: sharedObservers{d.m, d.board}, LeaseTTL: cfg.Cluster.LeaseTTL})
		defer d.shared.Close()
		d.limits = d.shared
		log.Info().Str("instance", cfg.Cluster.Instance).Msg("the mailboxes' limits are shared with the other replicas through Redis")
	}
	d.exo = upsmtp.New(upsmtp.Options{Tokens: d.store, Limiter: d.limits, Routes: d.ms.routes(cfg), Hostname: d.hostname, Observer: d.m})
	defer d.exo.Close()
	if d.graphStore, err = tokenstore.New(d.ms.graphTokenTenants(cfg), tokenObservers{d.m, d.board, &tokenLog{log: log}}); err != nil {
		return err
	}
	graphTmp := filepath.Join(cfg.Spool.Dir, "graph-tmp")
	// Attachments of an attempt a crash interrupted.
	os.RemoveAll(graphTmp)
	if err := os.MkdirAll(graphTmp, 0o700); err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}
	d.graph = graph.New(graph.Options{Tokens: d.graphStore, Limiter: d.limits, Routes: d.ms.graphRoutes(cfg), Observer: d.m,
		TempDir: graphTmp, Scratch: d.sp})
	defer d.graph.Close()
	d.route = &transports{smtp: d.exo, graph: d.graph}
	d.route.configure(cfg)
	// Every delivery mode goes through the memory of Exchange's Send As
	// and unknown-recipient refusals.
	d.refusals = queue.NewRefusals(d.route, cfg.Delivery.RememberRefusals, d.m)
	if d.q, err = queue.New(queue.Options{Settings: queueSettings(cfg), Spool: d.sp, Transport: d.refusals,
		Hostname: d.hostname, Log: log, Events: events, Holds: holdMetrics{d.m}}); err != nil {
		return err
	}
	modes := queue.Modes{
		message.ModeSync:   queue.Sync{Transport: d.refusals, Events: events, Holds: d.q},
		message.ModeQueue:  d.q,
		message.ModeHybrid: d.q.Hybrid(),
	}
	st, err := serverSettings(cfg)
	if err != nil {
		return err
	}
	d.guard = guard.New(guardSettings(cfg))
	blocksFile := filepath.Join(cfg.Spool.Dir, "blocks.json")
	if err := d.guard.Load(blocksFile); err != nil {
		log.Warn().Err(err).Msg("the blocks in force at the last stop could not be read; none are restored")
	} else if n := len(d.guard.Blocks()); n > 0 {
		log.Info().Int("blocked", n).Msg("blocks restored from the last run")
	}
	if rdb != nil {
		d.guard.Share(cluster.NewGuard(rdb, cfg.Cluster.Redis.KeyPrefix, cfg.Cluster.Instance), cfg.Cluster.Instance)
		d.roster = cluster.NewRoster(rdb, cfg.Cluster.Redis.KeyPrefix, cfg.Cluster.Instance)
		d.instance = cfg.Cluster.Instance
	}
	d.srv, err = bridge.NewServer(bridge.Options{Hostname: d.hostname, Settings: st, Deliverer: modes,
		Observer: connObservers{d.m, d.board}, Events: events, Guard: d.guard, Log: log})
	if err != nil {
		return err
	}
	d.m.SetSources(metrics.Sources{
		Queue: func() metrics.QueueStats {
			s := d.q.Stats()
			return metrics.QueueStats{Queued: s.Queued, Deferred: s.Deferred, Dead: s.Dead, Oldest: s.Oldest}
		},
		UpstreamConnections: d.exo.Connections,
		DeviceLastSeen:      d.board.LastSeen,
		DeviceLastMessage:   d.board.LastMessage,
		BlockedAddresses:    func() int { return len(d.guard.Blocks()) },
		Spool: func() metrics.SpoolStats {
			u := d.sp.Usage()
			return metrics.SpoolStats{Bytes: u.Bytes, Free: u.Free, Devices: u.Devices}
		},
		MailboxRecipients: func() map[metrics.Mailbox]int {
			out := map[metrics.Mailbox]int{}
			for mb, n := range d.limits.Recipients() {
				out[metrics.Mailbox{Tenant: mb.Tenant, Address: mb.Address}] = n
			}
			return out
		},
	})

	if err := d.srv.Listen(); err != nil {
		return err
	}
	if d.httpLn, err = net.Listen("tcp", cfg.HTTP.Address); err != nil {
		d.srv.Shutdown(context.Background())
		return fmt.Errorf("http.address: %w", err)
	}
	httpSrv := httpserve.Server(d.handler())
	go func() {
		if err := httpSrv.Serve(httpserve.Limit(d.httpLn, httpserve.MaxConnections)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("http listener stopped")
		}
	}()
	adminSrv := d.serveAdminSocket(cfg)
	saverStop, saverDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(saverDone)
		t := time.NewTicker(stateSaveEvery)
		defer t.Stop()
		bt := time.NewTicker(blocksSaveEvery)
		defer bt.Stop()
		saveBlocks := func() {
			if err := d.guard.Save(blocksFile); err != nil {
				log.Warn().Err(err).Msg("could not save the blocks")
			}
		}
		save := func() {
			saveBlocks()
			if err := d.board.Save(); err != nil {
				log.Warn().Err(err).Msg("could not save the status page's last-seen times")
			}
			if err := d.limiter.Save(quotaFile); err != nil {
				log.Warn().Err(err).Msg("could not save the mailboxes' recipient counts")
			}
		}
		for {
			select {
			case <-t.C:
				st := d.q.Stats()
				d.board.SampleQueue(st.Queued + st.Deferred)
				save()
			case <-bt.C:
				saveBlocks() // only when they changed
			case <-saverStop:
				save()
				return
			}
		}
	}()
	if rdb != nil {
		go d.clusterLoop(saverStop)
	}
	d.q.Start()
	d.checkSignIns(cfg)
	d.srv.Serve()
	log.Info().Str("version", buildVersion()).Str("hostname", d.hostname).Str("http", d.httpLn.Addr().String()).
		Int("devices", len(cfg.Devices)).Int("tenants", len(cfg.Tenants)).Msg("smtpbridge started")
	if started != nil {
		started()
	}

	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case sig := <-hup:
			d.reload(reloadSource(sig))
		}
	}

	log.Info().Str("grace", shutdownGrace.String()).Msg("shutting down: no new connections; waiting for sessions in progress")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := d.srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("sessions still open at the end of the grace period were closed")
	}
	// Attempts in flight get what is left of the grace period; queued
	// messages stay in the spool for the next start.
	d.q.Close(max(time.Until(deadline(sctx)), time.Second))
	httpSrv.Shutdown(sctx)
	if adminSrv != nil {
		adminSrv.Shutdown(sctx)
	}
	close(saverStop)
	<-saverDone
	if items, err := d.q.List(); err == nil && len(items) > 0 {
		log.Info().Int("queued", len(items)).Str("spool", cfg.Spool.Dir).Msg("queued messages stay in the spool and are delivered after the next start")
	}
	log.Info().Msg("stopped")
	return nil
}

// serveAdminSocket serves the admin API on spool.dir's admin socket, the
// command line's way in. Without it (a path too long for a socket, a
// system without them) the bridge runs all the same: the log says what
// that costs.
func (d *daemon) serveAdminSocket(cfg *config.Config) *http.Server {
	ln, err := adminapi.Listen(cfg.Spool.Dir)
	if err != nil {
		d.log.Error().Err(err).Bool("admin_over_tcp", cfg.HTTP.AdminOverTCP).
			Msg("no admin socket: smtpbridge reload, queue, drain and blocks cannot reach this bridge but with http.admin_over_tcp: true (SIGHUP still reloads)")
		return nil
	}
	srv := httpserve.Server(d.adminHandler())
	srv.ConnContext = adminapi.SocketConnContext
	go func() {
		if err := srv.Serve(httpserve.Limit(ln, httpserve.MaxConnections)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error().Err(err).Msg("admin socket stopped")
		}
	}()
	return srv
}

// clusterLoop brings the other replicas' blocks and unblocks here, and
// this one's there, every blocksSyncEvery, and tells the others what
// this replica's spool holds every rosterEvery, until stop.
func (d *daemon) clusterLoop(stop <-chan struct{}) {
	t := time.NewTicker(blocksSyncEvery)
	defer t.Stop()
	failing := false
	var published time.Time
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if time.Since(published) >= rosterEvery {
			published = time.Now()
			d.publishReplica()
		}
		ctx, cancel := context.WithTimeout(context.Background(), blocksSyncEvery)
		applied, err := d.guard.Sync(ctx)
		cancel()
		for _, b := range applied {
			d.log.Warn().Str("remote", b.Addr).Str("replica", b.Replica).Time("until", b.Until).Int("failures", b.Failures).
				Msg("address blocked by another replica: refused here too")
		}
		switch {
		case err != nil && !failing:
			d.log.Warn().Err(err).Msg("blocks cannot be shared with the other replicas: each replica blocks on its own until Redis answers")
		case err == nil && failing:
			d.log.Info().Msg("blocks are shared with the other replicas again")
		}
		failing = err != nil
	}
}

// publishReplica tells the other replicas what this one's spool holds,
// and reads what theirs do, for the status page and smtpbridge queue.
func (d *daemon) publishReplica() {
	ctx, cancel := context.WithTimeout(context.Background(), blocksSyncEvery)
	defer cancel()
	st := d.q.Stats()
	if err := d.roster.Publish(ctx, cluster.Replica{Queued: st.Queued, Deferred: st.Deferred, Dead: st.Dead, Oldest: st.Oldest}); err != nil {
		return // Redis out of reach: the limiter says so
	}
	reps, err := d.roster.Replicas(ctx, 3*rosterEvery)
	if err != nil {
		return
	}
	d.replicasMu.Lock()
	d.replicas = reps
	d.replicasMu.Unlock()
}

// knownReplicas are the replicas' accounts last read, this one's marked.
func (d *daemon) knownReplicas() []status.Replica {
	d.replicasMu.Lock()
	defer d.replicasMu.Unlock()
	var out []status.Replica
	for _, r := range d.replicas {
		out = append(out, status.Replica{Instance: r.Instance, This: r.Instance == d.instance,
			Queued: r.Queued, Deferred: r.Deferred, Dead: r.Dead, Oldest: r.Oldest, At: r.At})
	}
	return out
}

// reloadSource names what asked for a reload, for the log and the audit
// event: SIGHUP, or the Windows service's paramchange.
func reloadSource(sig os.Signal) string {
	if sig == paramChange {
		return "paramchange"
	}
	return "SIGHUP"
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
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

// checkSignIns asks, in the background, for a token for each mailbox of
// a tenant with delegated sign-in, so that the status page, metrics and
// log say at once which mailbox nobody has signed in for (or whose
// sign-in Entra refused), rather than at its first message. A mailbox
// signed in costs its refresh at most.
func (d *daemon) checkSignIns(cfg *config.Config) {
	for _, t := range cfg.Tenants {
		if !t.Credential.Delegated() {
			continue
		}
		mailboxes, transports := mailboxTransports(cfg, t.Name)
		for _, mb := range mailboxes {
			for transport := range transports[strings.ToLower(mb)] {
				store := d.store
				if transport == config.TransportGraph {
					store = d.graphStore
				}
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					store.Token(ctx, t.Name, mb) // its observers report the outcome
				}()
			}
		}
	}
}

// tokenLog logs a tenant's token state when it changes: the first
// failure (at warning level when it may go away by itself, at error level
// with problem=tenant set-up when Entra refuses the credential), another
// failure, and the first token after failures. Each message's own
// deferral is in the audit log.
type tokenLog struct {
	log     zerolog.Logger
	mu      sync.Mutex
	failing map[string]string  // tenant -> the failure logged last
	signIn  map[[2]string]bool // delegated mailboxes needing a sign-in
}

// ObserveSignIn logs a delegated mailbox's need of a new sign-in, and
// its end.
func (l *tokenLog) ObserveSignIn(tenant, mailbox string, needed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := [2]string{tenant, mailbox}
	if needed == l.signIn[k] {
		return
	}
	if l.signIn == nil {
		l.signIn = map[[2]string]bool{}
	}
	l.signIn[k] = needed
	if needed {
		l.log.Error().Str("event", "sign_in").Str("problem", "sign-in needed").Str("tenant", tenant).Str("mailbox", mailbox).
			Str("fix", fmt.Sprintf("smtpbridge tenant login --config FILE --tenant %s --mailbox %s", tenant, mailbox)).
			Msg("the mailbox needs someone to sign in for it again; its messages wait in the queue")
		return
	}
	delete(l.signIn, k)
	l.log.Info().Str("event", "sign_in").Str("tenant", tenant).Str("mailbox", mailbox).Msg("the mailbox is signed in again; its waiting messages go")
}

func (l *tokenLog) ObserveToken(tenant string, _ tokenstore.Token, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev, was := l.failing[tenant]
	if err == nil {
		if was {
			delete(l.failing, tenant)
			l.log.Info().Str("event", "token").Str("tenant", tenant).Msg("tokens for the tenant again; its waiting messages go")
		}
		return
	}
	var te *tokenstore.Error
	errors.As(err, &te)
	what := err.Error()
	if te != nil {
		what = fmt.Sprintf("%d %s %d", te.HTTPStatus, te.Code, te.AADSTS)
	}
	if was && prev == what {
		return
	}
	if l.failing == nil {
		l.failing = map[string]string{}
	}
	l.failing[tenant] = what
	ev := l.log.Warn()
	if te != nil && !te.Temporary {
		ev = l.log.Error().Str("problem", "tenant set-up")
	}
	if te != nil && !te.RetryAt.IsZero() {
		ev = ev.Time("next_request", te.RetryAt)
	}
	ev.Str("event", "token").Str("tenant", tenant).Err(err).
		Msg("token requests for the tenant fail; its messages wait, and Entra ID is asked again at next_request, not for each message")
}

// tokenObservers tells metrics and the status page about token requests.
// holdMetrics is the gauge of the mailboxes held; the status page reads
// the queue's holds itself, and the queue logs each change.
type holdMetrics struct{ m *metrics.Metrics }

func (h holdMetrics) MailboxHold(s queue.HoldState, held bool) {
	h.m.MailboxHold(s.Tenant, s.Mailbox, string(s.Reason), held)
}

type tokenObservers []tokenstore.Observer

func (o tokenObservers) ObserveToken(tenant string, tok tokenstore.Token, err error) {
	for _, x := range o {
		x.ObserveToken(tenant, tok, err)
	}
}

func (o tokenObservers) ObserveSignIn(tenant, mailbox string, needed bool) {
	for _, x := range o {
		if s, ok := x.(tokenstore.SignInObserver); ok {
			s.ObserveSignIn(tenant, mailbox, needed)
		}
	}
}

// connObservers tells metrics and the status page about connections and
// logins.
type connObservers []bridge.Observer

func (o connObservers) Connection(l string) {
	for _, x := range o {
		x.Connection(l)
	}
}

func (o connObservers) ConnectionClosed(l string) {
	for _, x := range o {
		x.ConnectionClosed(l)
	}
}

func (o connObservers) ConnectionRefused(l, reason string) {
	for _, x := range o {
		x.ConnectionRefused(l, reason)
	}
}

func (o connObservers) AuthAttempt(listener, mechanism, result, device string, remote netip.Addr) {
	for _, x := range o {
		x.AuthAttempt(listener, mechanism, result, device, remote)
	}
}

func newLogger(c config.Log, w io.Writer) zerolog.Logger {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	setLogLevel(c.Level)
	out := w
	if c.Format == "console" {
		noColor := true
		if f, ok := w.(*os.File); ok {
			noColor = !term.IsTerminal(int(f.Fd()))
		}
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: noColor}
	}
	// The logger itself lets everything through; the global level, which
	// a reload may change, filters.
	return zerolog.New(out).With().Timestamp().Logger()
}

func setLogLevel(s string) {
	level, err := zerolog.ParseLevel(s)
	if err != nil {
		level = zerolog.InfoLevel
	}
	zerolog.SetGlobalLevel(level)
}

// quotaLimiter is a limiter whose daily counts the status page and the
// metrics show.
type quotaLimiter interface {
	upstream.Limiter
	Recipients() map[upstream.Mailbox]int
	DailyLimit(tenant string) int
}

// sharedObservers tell the metrics and the status page whether the
// limits are shared.
type sharedObservers struct {
	m     *metrics.Metrics
	board *status.Board
}

func (o sharedObservers) SharedLimits(ok bool) {
	o.m.SharedLimits(ok)
	o.board.SharedLimits(ok)
}
