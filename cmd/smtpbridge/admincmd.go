package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

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
	client adminapi.Client
	cfg    *config.Config // nil with --admin and no config
	// tokenErr is why there is no token, for a bridge that asks for one.
	tokenErr error
}

// resolve finds the bridge's admin API and its token from the flags: the
// admin socket in spool.dir, where only the bridge's user (and root) can
// connect; or, with --admin, a TCP address, where the token goes only to
// a listener of the user who owns the token file.
func (f adminFlags) resolve(cmd string) (*adminTarget, error) {
	t := &adminTarget{client: adminapi.Client{OwnerUID: -1}}
	if *f.config != "" {
		cfg, err := config.LoadAdmin(*f.config)
		if err != nil {
			return nil, configError{err.Error()}
		}
		t.cfg = cfg
	}
	switch {
	case *f.admin != "":
		t.client.BaseURL = *f.admin
	case t.cfg != nil:
		t.client.Socket = filepath.Join(t.cfg.Spool.Dir, adminapi.SocketFile)
	default:
		return nil, usageError{cmd + ": pass --config FILE (or set SMTPBRIDGE_CONFIG) or --admin URL"}
	}
	path := *f.tokenFile
	if path == "" && t.cfg != nil {
		path = filepath.Join(t.cfg.Spool.Dir, adminapi.TokenFile)
	}
	if path == "" {
		t.tokenErr = errors.New("no admin token: pass --token-file FILE (admin.token in the bridge's spool.dir) or --config")
		return t, nil
	}
	tok, err := adminapi.ReadToken(path)
	switch {
	case err == nil:
		t.client.Token = tok
		t.client.OwnerUID = fileOwner(path)
	case errors.Is(err, fs.ErrPermission):
		t.tokenErr = fmt.Errorf("%w; run the command as the bridge's user (or root)", err)
	case errors.Is(err, fs.ErrNotExist):
		t.tokenErr = fmt.Errorf("%w; the bridge writes it at start: is it running with this spool.dir?", err)
	default:
		t.tokenErr = err
	}
	return t, nil
}

// explain turns a refusal for want of a token into the reason there is
// none.
func (t *adminTarget) explain(err error) error {
	var se *adminapi.StatusError
	if t.tokenErr != nil && errors.As(err, &se) && se.Code == 401 {
		return fmt.Errorf("the bridge at %s refused the request: %w", t.client.Where(), t.tokenErr)
	}
	return err
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
	err = t.client.Do("POST", "/-/reload", &res)
	var se *adminapi.StatusError
	if errors.As(err, &se) && se.Code == 422 {
		if jerr := json.Unmarshal(se.Body, &res); jerr == nil {
			err = nil
		}
	}
	if errors.Is(err, adminapi.ErrUnreachable) {
		return fmt.Errorf("no smtpbridge answers at %s: nothing reloaded (is it running with this spool.dir? a stopped bridge reads the config when it starts)", t.client.Where())
	}
	if err != nil {
		return t.explain(err)
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
		return fmt.Errorf("the config was not reloaded (%d problem(s)); the bridge at %s keeps the config it runs with", len(res.Problems), t.client.Where())
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "configuration reloaded (bridge at %s)\n", t.client.Where())
	}
	return nil
}
