package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

const deviceUsage = `Usage:
  smtpbridge device add --config FILE --name N --tenant T --mailbox M [--username U]
                        [--networks CIDR,...] [--from-policy P] [--transport smtp|graph]
  smtpbridge device passwd --config FILE --name N
  smtpbridge device remove --config FILE --name N
  smtpbridge device list --config FILE [--json]

add and passwd make a password a person can type on a printer's keypad
(20 letters and digits, no look-alikes), keep only its hash in the config,
and print the device's card: where it connects, the port and the TLS
setting, its username and password (shown this once) and the sender
address. Each edit keeps every other line of the file as it was, checks
the whole config, writes it with a backup (FILE.bak) and reloads the
running bridge. A config changed by someone else meanwhile is not
overwritten. ${VAR}s come from the environment and from secrets.env
beside the config (or --env-file), as the service gets them.

Flags:
`

func cmdDevice(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, strings.TrimSuffix(deviceUsage, "\nFlags:\n")+"\nEach command's flags: smtpbridge device COMMAND --help.\n")
		return usageError{"device: name a subcommand: add, passwd, remove or list"}
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("device "+sub, flag.ContinueOnError)
	af := addAdminFlags(fs)
	name := fs.String("name", "", "the device's `NAME`")
	tenant := fs.String("tenant", "", "the tenant it sends through (add)")
	mailbox := fs.String("mailbox", "", "the mailbox it sends as (add)")
	username := fs.String("username", "", "its login (add; default: the name)")
	networks := fs.String("networks", "", "comma-separated addresses or CIDRs it may connect from (add)")
	fromPolicy := fs.String("from-policy", "", "rewrite, enforce or allow (add; default: the config's)")
	transport := fs.String("transport", "", "smtp or graph (add; default: the tenant's)")
	cardFormat := fs.String("card-format", "text", "the device card: text, json or html")
	envFile := fs.String("env-file", "", "a KEY=VALUE `FILE` for the config's ${VAR}s (default: secrets.env beside the config, if readable)")
	noReload := fs.Bool("no-reload", false, "write the config but do not reload the running bridge")
	asJSON := fs.Bool("json", false, "list: print JSON")
	fs.Usage = func() { fmt.Fprint(stderr, deviceUsage); fs.PrintDefaults() }
	pos, err := parseInterspersed(fs, rest, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{fmt.Sprintf("device %s: unexpected argument %q", sub, pos[0])}
	}
	if *af.config == "" {
		return usageError{"device " + sub + ": pass --config FILE (or set SMTPBRIDGE_CONFIG)"}
	}
	switch *cardFormat {
	case "text", "json", "html":
	default:
		return usageError{fmt.Sprintf("--card-format %q: use text, json or html", *cardFormat)}
	}
	lookup, err := envLookup(*af.config, *envFile)
	if err != nil {
		return configError{err.Error()}
	}
	d := &deviceCmd{af: af, lookup: lookup, stdout: stdout, stderr: stderr, format: *cardFormat, reload: !*noReload}
	need := func(flags ...string) error {
		for _, f := range flags {
			if fs.Lookup(f).Value.String() == "" {
				return usageError{fmt.Sprintf("device %s: --%s is required", sub, f)}
			}
		}
		return nil
	}
	switch sub {
	case "add":
		if err := need("name", "tenant", "mailbox"); err != nil {
			return err
		}
		entry := config.DeviceEntry{Name: *name, Username: cmpOr(*username, *name), Tenant: *tenant, Mailbox: *mailbox,
			FromPolicy: *fromPolicy, Transport: *transport}
		for _, n := range strings.Split(*networks, ",") {
			if n = strings.TrimSpace(n); n != "" {
				entry.Networks = append(entry.Networks, n)
			}
		}
		return d.add(entry)
	case "passwd":
		if err := need("name"); err != nil {
			return err
		}
		return d.passwd(*name)
	case "remove":
		if err := need("name"); err != nil {
			return err
		}
		return d.remove(*name)
	case "list":
		return d.list(*asJSON)
	}
	fmt.Fprint(stderr, deviceUsage)
	return usageError{fmt.Sprintf("device: unknown subcommand %q: use add, passwd, remove or list", sub)}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// envLookup is the environment, then the env file (given, or
// secrets.env beside the config when it can be read).
func envLookup(configPath, envFile string) (func(string) (string, bool), error) {
	file := envFile
	if file == "" {
		file = filepath.Join(filepath.Dir(configPath), "secrets.env")
	}
	vars, err := config.ReadEnvFile(file)
	if err != nil {
		if envFile != "" || !errors.Is(err, os.ErrNotExist) && !errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("--env-file: %w", err)
		}
		vars = nil
	}
	return func(k string) (string, bool) {
		if v, ok := os.LookupEnv(k); ok {
			return v, true
		}
		v, ok := vars[k]
		return v, ok
	}, nil
}

type deviceCmd struct {
	af             adminFlags
	lookup         func(string) (string, bool)
	stdout, stderr io.Writer
	format         string
	reload         bool
}

// keypad is the password alphabet: letters and digits without the ones
// read as each other on a printer's panel or a sheet of paper (0 O o,
// 1 l I i, 5 S, 2 Z, 8 B, u v).
const keypad = "ACDEFGHJKLMNPQRTWXYabcdefghjkmnpqrstwxyz34679"

// passwordLength gives about 110 bits with the keypad alphabet.
const passwordLength = 20

func newPassword() (string, error) {
	b := make([]byte, passwordLength)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(keypad))))
		if err != nil {
			return "", fmt.Errorf("generate a password: %w", err)
		}
		b[i] = keypad[n.Int64()]
	}
	return string(b), nil
}

// edit applies change to the config, checks the result, writes it and
// reloads the bridge; it returns the config as written.
func (d *deviceCmd) edit(change func(e *config.Edit) error) (*config.Config, error) {
	path := *d.af.config
	e, err := config.OpenEdit(path)
	if err != nil {
		return nil, configError{err.Error()}
	}
	if err := change(e); err != nil {
		if errors.Is(err, config.ErrNoDevice) {
			return nil, usageError{err.Error()}
		}
		return nil, configError{err.Error()}
	}
	cfg, err := e.Check(d.lookup)
	if err != nil {
		return nil, configError{fmt.Sprintf("%v\nnothing was written: the config with this change would not load (check-config lists the problems of the file as it is)", err)}
	}
	backup, err := e.Commit()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.stderr, "%s written (the previous version is in %s)\n", path, backup)
	if d.reload {
		d.reloadBridge(cfg)
	}
	return cfg, nil
}

// reloadBridge asks the running bridge to read the config again; a
// bridge that is not running reads it when it starts.
func (d *deviceCmd) reloadBridge(cfg *config.Config) {
	t := adminapi.Resolve(cfg.Spool.Dir, *d.af.admin, *d.af.tokenFile)
	var res daemon.ReloadResult
	err := t.Client.Do("POST", "/-/reload", &res)
	var se *adminapi.StatusError
	if errors.As(err, &se) && se.Code == 422 {
		if json.Unmarshal(se.Body, &res) == nil {
			err = nil
		}
	}
	switch {
	case errors.Is(err, adminapi.ErrUnreachable):
		fmt.Fprintf(d.stderr, "no bridge answers at %s: the change applies when it starts\n", t.Client.Where())
	case err != nil:
		fmt.Fprintf(d.stderr, "warning: the bridge was not reloaded: %v; run smtpbridge reload\n", t.Explain(err))
	case !res.OK:
		fmt.Fprintf(d.stderr, "warning: the bridge refused the new config and keeps the one it runs with: %s\n", strings.Join(res.Problems, "; "))
	default:
		fmt.Fprintf(d.stderr, "bridge at %s reloaded: the change is in use\n", t.Client.Where())
	}
}

func (d *deviceCmd) add(entry config.DeviceEntry) error {
	pw, err := newPassword()
	if err != nil {
		return err
	}
	if entry.PasswordHash, err = passwd.NewArgon2id([]byte(pw)); err != nil {
		return fmt.Errorf("hash the password: %w", err)
	}
	cfg, err := d.edit(func(e *config.Edit) error { return e.AddDevice(entry) })
	if err != nil {
		return err
	}
	return d.card(cfg, entry.Name, pw)
}

func (d *deviceCmd) passwd(name string) error {
	pw, err := newPassword()
	if err != nil {
		return err
	}
	hash, err := passwd.NewArgon2id([]byte(pw))
	if err != nil {
		return fmt.Errorf("hash the password: %w", err)
	}
	cfg, err := d.edit(func(e *config.Edit) error { return e.SetPasswordHash(name, hash) })
	if err != nil {
		return err
	}
	return d.card(cfg, name, pw)
}

func (d *deviceCmd) remove(name string) error {
	if _, err := d.edit(func(e *config.Edit) error { return e.RemoveDevice(name) }); err != nil {
		return err
	}
	fmt.Fprintf(d.stdout, "device %s removed\n", name)
	return nil
}

// list prints the config's devices with when the running bridge last
// saw each.
func (d *deviceCmd) list(asJSON bool) error {
	cfg, err := config.LoadWithEnv(*d.af.config, d.lookup)
	if err != nil {
		return configError{err.Error()}
	}
	var seen struct {
		LastSeen map[string]time.Time `json:"last_seen"`
	}
	t := adminapi.Resolve(cfg.Spool.Dir, *d.af.admin, *d.af.tokenFile)
	seenErr := t.Client.Do("GET", "/api/devices", &seen)
	type row struct {
		Name     string     `json:"name"`
		Username string     `json:"username,omitempty"`
		Tenant   string     `json:"tenant"`
		Mailbox  string     `json:"mailbox"`
		LastSeen *time.Time `json:"last_seen,omitempty"`
	}
	var rows []row
	for _, dv := range cfg.Devices {
		r := row{Name: dv.Name, Username: dv.Username, Tenant: dv.Tenant, Mailbox: dv.Mailbox}
		if ts, ok := seen.LastSeen[dv.Name]; ok {
			r.LastSeen = &ts
		}
		rows = append(rows, r)
	}
	if asJSON {
		enc := json.NewEncoder(d.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"devices": rows})
	}
	fmt.Fprintf(d.stdout, "%-20s %-20s %-12s %-32s %s\n", "NAME", "USERNAME", "TENANT", "MAILBOX", "LAST SEEN")
	for _, r := range rows {
		last := "never"
		if r.LastSeen != nil {
			last = r.LastSeen.Local().Format("2006-01-02 15:04")
		}
		if seenErr != nil {
			last = "-"
		}
		fmt.Fprintf(d.stdout, "%-20s %-20s %-12s %-32s %s\n", r.Name, cmpOr(r.Username, "(auth: none)"), r.Tenant, r.Mailbox, last)
	}
	if seenErr != nil {
		fmt.Fprintf(d.stdout, "%d device(s); last seen unknown: no bridge answers at %s\n", len(rows), t.Client.Where())
	} else {
		fmt.Fprintf(d.stdout, "%d device(s)\n", len(rows))
	}
	return nil
}

// Card is what the person at the device needs to set it up.
type Card struct {
	Device    string       `json:"device"`
	Endpoints []CardListen `json:"endpoints"`
	Auth      string       `json:"authentication"`
	Username  string       `json:"username"`
	Password  string       `json:"password"`
	Sender    string       `json:"sender"`
	FirstTest string       `json:"first_test"`
}

// CardListen is one listener the device may use.
type CardListen struct {
	Servers  []string `json:"servers"`
	Port     string   `json:"port"`
	Security string   `json:"security"`
	Setting  string   `json:"printer_setting"`
	TLS      string   `json:"tls_versions,omitempty"`
}

// card prints the device's card in the chosen format.
func (d *deviceCmd) card(cfg *config.Config, name, pw string) error {
	i := slices.IndexFunc(cfg.Devices, func(dv config.Device) bool { return dv.Name == name })
	if i < 0 {
		return fmt.Errorf("device %s is not in the config as written", name)
	}
	dv := cfg.Devices[i]
	c := Card{Device: dv.Name, Auth: "on: SMTP AUTH (LOGIN or PLAIN)", Username: dv.Username, Password: pw, Sender: dv.Mailbox,
		FirstTest: fmt.Sprintf("send a test e-mail from the device: it arrives from %s; the bridge logs \"delivered\" for device %s, and smtpbridge trace --config FILE --device %s shows its story", dv.Mailbox, dv.Name, dv.Name)}
	for _, l := range cfg.Listeners {
		host, port, _ := net.SplitHostPort(l.Address)
		cl := CardListen{Servers: serversFor(host, cfg.Hostname), Port: port}
		switch l.TLS {
		case config.TLSNone:
			cl.Security, cl.Setting = "none (plain SMTP on a trusted LAN)", `"SSL/TLS: none" or "Use secure connection: off"`
		case config.TLSImplicit:
			cl.Security, cl.Setting = "implicit TLS (SMTPS)", `"SSL/TLS" or "SSL" (not STARTTLS)`
		default:
			cl.Security, cl.Setting = "STARTTLS", `"STARTTLS" or "TLS: if available" (not "SSL/TLS")`
			if l.AllowInsecureAuth {
				cl.Setting += `; a device that cannot do TLS may use "none" here`
			}
		}
		if l.TLS != config.TLSNone {
			cl.TLS = "TLS " + cmpOr(l.MinTLSVersion, "1.2") + " or later"
		}
		c.Endpoints = append(c.Endpoints, cl)
	}
	switch d.format {
	case "json":
		enc := json.NewEncoder(d.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(c)
	case "html":
		return cardHTML.Execute(d.stdout, c)
	}
	w := d.stdout
	fmt.Fprintf(w, "device: %s\n", c.Device)
	for i, e := range c.Endpoints {
		sfx := ""
		if len(c.Endpoints) > 1 {
			sfx = fmt.Sprintf(" (%d)", i+1)
		}
		fmt.Fprintf(w, "server%s: %s\n", sfx, strings.Join(e.Servers, " or "))
		fmt.Fprintf(w, "port%s: %s\n", sfx, e.Port)
		fmt.Fprintf(w, "security%s: %s; printer setting: %s\n", sfx, e.Security, e.Setting)
		if e.TLS != "" {
			fmt.Fprintf(w, "tls versions%s: %s\n", sfx, e.TLS)
		}
	}
	fmt.Fprintf(w, "authentication: %s\n", c.Auth)
	fmt.Fprintf(w, "username: %s\n", c.Username)
	fmt.Fprintf(w, "password: %s\n", c.Password)
	fmt.Fprintf(w, "sender: %s\n", c.Sender)
	fmt.Fprintf(w, "first test: %s\n", c.FirstTest)
	fmt.Fprintln(d.stderr, "the password is shown this once: the config keeps only its hash (smtpbridge device passwd makes a new one)")
	return nil
}

// serversFor is what a device types as the server: the listener's
// address, or, for one on every interface, this host's name and its
// addresses on the LAN.
func serversFor(host, hostname string) []string {
	if host != "" && host != "0.0.0.0" && host != "::" {
		return []string{host}
	}
	var out []string
	if hostname != "" {
		out = append(out, hostname)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
			out = append(out, ipn.IP.String())
		}
	}
	if len(out) == 0 {
		out = append(out, "this host's address")
	}
	return out
}

var cardHTML = template.Must(template.New("card").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>smtpbridge: {{.Device}}</title>
<style>body{font:12pt system-ui,sans-serif;max-width:40em;margin:2em auto}th{text-align:left;padding-right:1em;vertical-align:top}td,th{padding:.3em 0}code{font-size:14pt}@media print{p.note{display:none}}</style>
</head><body>
<h1>Scan-to-mail settings: {{.Device}}</h1>
<table>
{{range $i, $e := .Endpoints}}<tr><th>SMTP server</th><td><code>{{range $j, $s := $e.Servers}}{{if $j}} or {{end}}{{$s}}{{end}}</code></td></tr>
<tr><th>Port</th><td><code>{{$e.Port}}</code></td></tr>
<tr><th>Security</th><td>{{$e.Security}}: {{$e.Setting}}{{if $e.TLS}} ({{$e.TLS}}){{end}}</td></tr>
{{end}}<tr><th>Authentication</th><td>{{.Auth}}</td></tr>
<tr><th>Username</th><td><code>{{.Username}}</code></td></tr>
<tr><th>Password</th><td><code>{{.Password}}</code></td></tr>
<tr><th>Sender (From) address</th><td><code>{{.Sender}}</code></td></tr>
<tr><th>First test</th><td>{{.FirstTest}}</td></tr>
</table>
<p class="note">Shown once: keep this page with the device's papers or shred it; the bridge keeps only the password's hash.</p>
</body></html>
`))
