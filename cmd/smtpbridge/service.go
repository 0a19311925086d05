package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/smtpbridge/smtpbridge/internal/daemon"
	"github.com/smtpbridge/smtpbridge/internal/winsvc"
)

const serviceUsage = `Usage: smtpbridge service COMMAND [--config FILE]

The Windows service (run as Administrator):
  install [--automatic]  register the service to run "serve" on FILE
                         (default %ProgramData%\smtpbridge\smtpbridge.yaml),
                         restarting on failure; --automatic starts it at
                         boot (default: when started). The config is
                         checked first.
  uninstall              stop and remove it (config, spool and logs stay)
  start, stop, status    as sc start/stop/query smtpbridge
  reload                 reload the running service's config (as
                         sc control smtpbridge paramchange, or SIGHUP
                         on Linux)

The service logs start, stop and fatal errors to the Event Log (source
smtpbridge) and everything else to smtpbridge.log next to the config;
sc control smtpbridge paramchange reloads the config, as SIGHUP on Linux.

Flags:
`

func cmdService(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprint(stdout, strings.TrimSuffix(serviceUsage, "\nFlags:\n")+"\nEach command's flags: smtpbridge service COMMAND --help.\n")
			return nil
		}
		return usageError{"service: name a command: install, uninstall, start, stop, reload, status (see smtpbridge service --help)"}
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("service "+sub, flag.ContinueOnError)
	path := configFlag(fs)
	automatic := fs.Bool("automatic", false, "install: start the service at boot")
	fs.Usage = func() { fmt.Fprint(stderr, serviceUsage); fs.PrintDefaults() }
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	configPath := func() (string, error) {
		p := *path
		if p == "" {
			p = filepath.Join(programData(), "smtpbridge", "smtpbridge.yaml")
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", usageError{fmt.Sprintf("--config %q: %v", p, err)}
		}
		return abs, nil
	}
	simple := map[string]struct {
		do   func() error
		done string
	}{
		"uninstall": {winsvc.Uninstall, "removed the service %s; its config, spool and logs stay"},
		"start":     {winsvc.Start, "the service %s is running"},
		"stop":      {winsvc.StopService, "the service %s is stopped"},
		"reload":    {winsvc.Reload, "asked the service %s to reload its config; its log says how it went"},
	}
	if c, ok := simple[sub]; ok {
		if err := c.do(); err != nil {
			return fmt.Errorf("service %s: %w", sub, err)
		}
		fmt.Fprintf(stdout, c.done+"\n", winsvc.Name)
		return nil
	}
	switch sub {
	case "install":
		cfgPath, err := configPath()
		if err != nil {
			return err
		}
		return installService(cfgPath, *automatic, stdout, stderr)
	case "status":
		st, err := winsvc.Status()
		if err != nil {
			return fmt.Errorf("service status: %w", err)
		}
		fmt.Fprintf(stdout, "%s: %s\n", winsvc.Name, st)
		return nil
	case "run":
		cfgPath, err := configPath()
		if err != nil {
			return err
		}
		return runService(cfgPath)
	}
	return usageError{fmt.Sprintf("service: unknown command %q (install, uninstall, start, stop, reload, status)", sub)}
}

// installService registers the service to serve cfgPath, once the
// config checks out.
func installService(cfgPath string, automatic bool, stdout, stderr io.Writer) error {
	if _, err := loadConfig(cfgPath, stderr); err != nil {
		return fmt.Errorf("service install: fix the config first (smtpbridge check-config --config %q): %w", cfgPath, err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("service install: %w", err)
	}
	if err := winsvc.Install(exe, []string{"service", "run", "--config", cfgPath}, automatic); err != nil {
		return fmt.Errorf("service install: %w", err)
	}
	fmt.Fprintf(stdout, "installed the service %s (config %s); start it with: smtpbridge service start\n", winsvc.Name, cfgPath)
	return nil
}

// runService is the service's process: serve on the config, its log in
// smtpbridge.log beside it (reopened on each reload, so that the file
// can be rotated), under the control manager.
func runService(cfgPath string) error {
	logPath := filepath.Join(filepath.Dir(cfgPath), "smtpbridge.log")
	lw := &winsvc.LogFile{Path: logPath}
	if err := lw.Reopen(); err != nil {
		return fmt.Errorf("service: log file: %w", err)
	}
	defer lw.Close()
	return winsvc.Run(func(ctx context.Context, reload <-chan os.Signal, started func()) error {
		cfg, err := loadConfig(cfgPath, lw)
		if err != nil {
			return err
		}
		log := daemon.NewLogger(cfg.Log, lw)
		reloads := make(chan string, 1)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-reload:
					if err := lw.Reopen(); err != nil {
						log.Warn().Err(err).Msg("could not reopen the log file; still writing to the old one")
					}
					select {
					case reloads <- "paramchange":
					default:
					}
				}
			}
		}()
		return serve(ctx, cfg, log, reloads, started)
	})
}
