package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/config"
)

// configError is a config that does not load; its problems were printed.
type configError struct{ msg string }

func (e configError) Error() string { return e.msg }

func cmdCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	path := configFlag(fs)
	cfg, err := parseConfigFlags(fs, path, args, stderr)
	if err != nil {
		return err
	}
	// Load refused the hashes the project ships by their text; this
	// checks every device's hash (serve checks each password at login).
	start := time.Now()
	problems := cfg.DocumentedPasswords(func(done, total int) {
		if time.Since(start) > 2*time.Second && (done%100 == 0 || done == total) {
			fmt.Fprintf(stderr, "\rchecking the devices' passwords against the documented ones: %d/%d", done, total)
			if done == total {
				fmt.Fprintln(stderr)
			}
		}
	})
	for _, p := range problems {
		fmt.Fprintln(stderr, p.In(cfg.Path))
	}
	if len(problems) > 0 {
		return configError{fmt.Sprintf("%s: %d problem(s); nothing was started", cfg.Path, len(problems))}
	}
	fmt.Fprintf(stdout, "%s: OK (%d listener(s), %d tenant(s), %d device(s)", *path,
		len(cfg.Listeners), len(cfg.Tenants), len(cfg.Devices))
	if len(cfg.Warnings) > 0 {
		fmt.Fprintf(stdout, ", %d warning(s)", len(cfg.Warnings))
	}
	fmt.Fprintln(stdout, ")")
	return nil
}

// loadConfig loads path, printing every problem and warning to w. The
// ${VAR}s come from the environment, then from secrets.env beside the
// config (the file the packages' systemd unit reads), so that check-config
// and doctor work in an admin's shell as the service does.
func loadConfig(path string, w io.Writer) (*config.Config, error) {
	return loadConfigWith(path, w, func(p string) (*config.Config, error) {
		lookup, err := envLookup(p, "")
		if err != nil {
			return nil, err
		}
		cfg, err := config.LoadWithEnv(p, lookup)
		var ce *config.Error
		if errors.As(err, &ce) && unreadableSecrets(p) {
			for _, pr := range ce.Problems {
				if strings.Contains(pr.Message, "environment variable") {
					fmt.Fprintf(w, "note: %s holds the secrets' variables, and this user cannot read it: run the command as root (sudo), as the service's unit reads it\n",
						filepath.Join(filepath.Dir(p), "secrets.env"))
					break
				}
			}
		}
		return cfg, err
	})
}

// unreadableSecrets says whether a secrets.env beside the config exists
// and cannot be read by this user.
func unreadableSecrets(configPath string) bool {
	f, err := os.Open(filepath.Join(filepath.Dir(configPath), "secrets.env"))
	if err == nil {
		f.Close()
		return false
	}
	return errors.Is(err, os.ErrPermission)
}

// loadConfigWith is loadConfig with load for config.Load.
func loadConfigWith(path string, w io.Writer, load func(string) (*config.Config, error)) (*config.Config, error) {
	cfg, err := load(path)
	var ce *config.Error
	if errors.As(err, &ce) {
		n := 0
		for _, p := range ce.Problems {
			fmt.Fprintln(w, p.In(ce.File))
			if !p.Warning {
				n++
			}
		}
		return nil, configError{fmt.Sprintf("%s: %d problem(s); nothing was started", path, n)}
	}
	if err != nil {
		return nil, configError{err.Error()}
	}
	for _, p := range cfg.Warnings {
		fmt.Fprintln(w, p.In(path))
	}
	return cfg, nil
}
