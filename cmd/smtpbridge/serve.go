package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/sandbox"
	"github.com/smtpbridge/smtpbridge/metrics"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// shutdownGrace is how long sessions in progress may take to finish after
// SIGTERM or SIGINT.
const shutdownGrace = 30 * time.Second

func cmdServe(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := configFlag(fs)
	sandboxDir := fs.String("sandbox", "", "run against in-process fakes of Entra ID and Exchange Online, writing mail to `DIR` as .eml")
	cfg, err := parseConfigFlags(fs, path, args, stderr)
	if err != nil {
		return err
	}
	if *sandboxDir != "" {
		cfg.Sandbox.Dir = *sandboxDir
	}
	if cfg.Sandbox.Dir != "" {
		abs, err := filepath.Abs(cfg.Sandbox.Dir)
		if err != nil {
			return usageError{fmt.Sprintf("sandbox directory %q: %v", cfg.Sandbox.Dir, err)}
		}
		cfg.Sandbox.Dir = abs
	}
	log := newLogger(cfg.Log, stderr)
	for _, p := range cfg.Warnings {
		log.Warn().Str("key", p.Key).Int("line", p.Line).Msg(p.Message)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, log)
}

// serve runs the bridge until ctx ends.
func serve(ctx context.Context, cfg *config.Config, log zerolog.Logger) error {
	hostname := cfg.Hostname
	if hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "smtpbridge"
		}
		hostname = h
	}
	unlock, err := spool.Lock(cfg.Spool.Dir)
	if err != nil {
		if errors.Is(err, spool.ErrLocked) {
			return fmt.Errorf("spool.dir: %w; each bridge needs its own spool directory", err)
		}
		return fmt.Errorf("spool.dir: %w", err)
	}
	defer unlock()
	sp, err := spool.Open(cfg.Spool.Dir)
	if err != nil {
		return fmt.Errorf("spool.dir: %w", err)
	}

	tenants := make([]tokenstore.Tenant, 0, len(cfg.Tenants))
	routes := map[string]bridge.Route{}
	concurrency := map[string]int{}
	var roots *x509.CertPool
	if cfg.Sandbox.Dir != "" {
		sb, err := sandbox.Start(cfg, cfg.Sandbox.Dir)
		if err != nil {
			return fmt.Errorf("sandbox: %w", err)
		}
		defer sb.Close()
		roots = sb.RootCAs()
		for i := range cfg.Tenants {
			cfg.Tenants[i].AuthorityHost = sb.AuthorityHost()
			cfg.Tenants[i].SMTPHost = sb.SMTPHost()
		}
		log.Warn().Str("mail_dir", sb.MailDir).Str("authority", sb.AuthorityHost()).Str("smtp_host", sb.SMTPHost()).
			Msg("SANDBOX MODE: tokens and Exchange Online are simulated on this machine; no mail leaves it, messages are written to mail_dir as .eml")
	}
	var listenerNames, tenantNames []string
	for _, l := range cfg.Listeners {
		listenerNames = append(listenerNames, l.Name)
	}
	for _, t := range cfg.Tenants {
		tenantNames = append(tenantNames, t.Name)
		tenants = append(tenants, tokenstore.Tenant{
			Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID, Credential: t.Credential,
			AuthorityHost: t.AuthorityHost, Scope: t.TokenScope, RootCAs: roots,
		})
		routes[t.Name] = bridge.Route{SMTPHost: t.SMTPHost, RootCAs: roots,
			MaxConnections: t.MaxConnectionsPerMailbox, MaxPerMinute: t.MaxMessagesPerMinute}
		concurrency[t.Name] = t.MaxConnectionsPerMailbox
		if cfg.Sandbox.Dir == "" && !tokenstore.IsMicrosoftAuthority(t.AuthorityHost) {
			log.Warn().Str("tenant", t.Name).Str("authority_host", t.AuthorityHost).
				Msg("authority_host is not a Microsoft Entra ID host; instance discovery is off for it")
		}
	}
	m := metrics.New(buildVersion(), listenerNames, tenantNames)
	store, err := tokenstore.New(tenants, m)
	if err != nil {
		return err
	}
	dir, err := bridge.NewDirectory(cfg.Devices)
	if err != nil {
		return err
	}
	up := &bridge.Upstream{Tokens: store, Routes: routes, Hostname: hostname}
	defer up.Close()
	q, err := queue.New(queue.Options{
		Spool: sp, Deliverer: up,
		RetryInitial: cfg.Delivery.RetryInitial, RetryMax: cfg.Delivery.RetryMax, MaxAge: cfg.Delivery.MaxAge,
		Concurrency: concurrency, BounceTo: bounceTo(cfg), Hostname: hostname, Log: log,
	})
	if err != nil {
		return err
	}
	srv, err := bridge.NewServer(bridge.Options{
		Hostname:    hostname,
		Listeners:   cfg.Listeners,
		Limits:      cfg.Limits,
		Directory:   dir,
		Deliverer:   up,
		Spooler:     q,
		Mode:        cfg.Delivery.Mode,
		SyncTimeout: cfg.Delivery.SyncTimeout,
		Observer:    m,
		Log:         log,
	})
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp", cfg.HTTP.Address)
	if err != nil {
		srv.Shutdown(context.Background())
		return fmt.Errorf("http.address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/", queue.Handler(q))
	mux.Handle("/", m.Handler())
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := httpSrv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("http listener stopped")
		}
	}()
	q.Start()
	srv.Serve()
	log.Info().Str("version", buildVersion()).Str("hostname", hostname).Str("http", httpLn.Addr().String()).
		Int("devices", len(cfg.Devices)).Int("tenants", len(cfg.Tenants)).Msg("smtpbridge started")

	<-ctx.Done()
	log.Info().Str("grace", shutdownGrace.String()).Msg("shutting down: no new connections; waiting for sessions in progress")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err = srv.Shutdown(sctx)
	if err != nil {
		log.Warn().Err(err).Msg("sessions still open at the end of the grace period were closed")
	}
	// Attempts in flight get what is left of the grace period; queued
	// messages stay in the spool for the next start.
	q.Close(max(time.Until(deadline(sctx)), time.Second))
	httpSrv.Shutdown(sctx)
	if items, err := q.List(); err == nil && len(items) > 0 {
		log.Info().Int("queued", len(items)).Str("spool", cfg.Spool.Dir).Msg("queued messages stay in the spool and are delivered after the next start")
	}
	log.Info().Msg("stopped")
	return nil
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// bounceTo resolves a device's bounce address, its own or the global one.
func bounceTo(cfg *config.Config) func(string) string {
	byName := map[string]string{}
	for i := range cfg.Devices {
		_, b := cfg.DeliveryFor(&cfg.Devices[i])
		byName[cfg.Devices[i].Name] = b
	}
	return func(device string) string {
		if b, ok := byName[device]; ok {
			return b
		}
		return cfg.Delivery.BounceTo // a device since removed from the config
	}
}

func newLogger(c config.Log, w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(c.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	out := w
	if c.Format == "console" {
		noColor := true
		if f, ok := w.(*os.File); ok {
			noColor = !term.IsTerminal(int(f.Fd()))
		}
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: noColor}
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger()
}
