package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
)

// adminFlags are the flags of the commands that call the admin API.
type adminFlags struct {
	config, admin, tokenFile *string
}

func addAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		config:    configFlag(fs),
		admin:     fs.String("admin", "", "the running bridge's admin API over TCP, e.g. http://127.0.0.1:9464 (http.admin_over_tcp; default: the admin socket in spool.dir from --config)"),
		tokenFile: fs.String("token-file", "", "the admin token `FILE` (default: admin.token in spool.dir from --config)"),
	}
}

// adminTarget is where a command reaches the running bridge.
type adminTarget struct {
	*adminapi.Target
	cfg *config.Config // nil with --admin and no config
}

// resolve finds the bridge's admin API and its token from the flags (see
// adminapi.Resolve), the config naming the spool directory.
func (f adminFlags) resolve(cmd string) (*adminTarget, error) {
	t := &adminTarget{}
	spoolDir := ""
	if *f.config != "" {
		cfg, err := config.LoadAdmin(*f.config)
		if err != nil {
			return nil, configError{err.Error()}
		}
		t.cfg, spoolDir = cfg, cfg.Spool.Dir
	}
	if *f.admin == "" && spoolDir == "" {
		return nil, usageError{cmd + ": pass --config FILE (or set SMTPBRIDGE_CONFIG) or --admin URL"}
	}
	t.Target = adminapi.Resolve(spoolDir, *f.admin, *f.tokenFile)
	return t, nil
}

const reloadUsage = `Usage: smtpbridge reload [--config FILE | --admin URL --token-file FILE] [--json]

Reload the running bridge's config file (the same as SIGHUP, and the way
to reload a Windows service): the whole file applies, or, if it has a
problem, none of it does and the bridge keeps the config it runs with.

Flags:
`

func cmdReload(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	af := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() { fmt.Fprint(stderr, reloadUsage); fs.PrintDefaults() }
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{fmt.Sprintf("reload: unexpected argument %q", pos[0])}
	}
	t, err := af.resolve("reload")
	if err != nil {
		return err
	}
	var res daemon.ReloadResult
	err = t.Client.Do("POST", "/-/reload", &res)
	var se *adminapi.StatusError
	if errors.As(err, &se) && se.Code == 422 {
		if jerr := json.Unmarshal(se.Body, &res); jerr == nil {
			err = nil
		}
	}
	if errors.Is(err, adminapi.ErrUnreachable) {
		return fmt.Errorf("no smtpbridge answers at %s: nothing reloaded (is it running with this spool.dir? a stopped bridge reads the config when it starts)", t.Client.Where())
	}
	if err != nil {
		return t.Explain(err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		for _, w := range res.Warnings {
			fmt.Fprintf(stdout, "warning: %s\n", w)
		}
		for _, p := range res.Problems {
			fmt.Fprintf(stdout, "problem: %s\n", p)
		}
	}
	if !res.OK {
		return fmt.Errorf("the config was not reloaded (%d problem(s)); the bridge at %s keeps the config it runs with", len(res.Problems), t.Client.Where())
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "configuration reloaded (bridge at %s)\n", t.Client.Where())
	}
	return nil
}
