package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
)

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
	log := daemon.NewLogger(cfg.Log, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloads := make(chan string)
	go func() {
		for {
			select {
			case <-hup:
				select {
				case reloads <- "SIGHUP":
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return serve(ctx, cfg, log, reloads, nil)
}

// serve runs the bridge on cfg until ctx ends: smtpbridge serve, and the
// Windows service.
func serve(ctx context.Context, cfg *config.Config, log zerolog.Logger, reloads <-chan string, started func()) error {
	for _, p := range cfg.Warnings {
		log.Warn().Str("key", p.Key).Int("line", p.Line).Msg(p.Message)
	}
	d, err := daemon.New(cfg, daemon.Options{Log: log, Version: buildVersion()})
	if err != nil {
		return err
	}
	return d.Run(ctx, reloads, started)
}
