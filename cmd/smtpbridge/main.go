// Command smtpbridge lets legacy devices that only know SMTP AUTH with a
// username and password keep sending mail through Exchange Online, which
// the bridge reaches with OAuth 2.0 (AUTH XOAUTH2).
//
// Usage:
//
//	smtpbridge serve --config FILE [--sandbox DIR]
//	smtpbridge check-config --config FILE
//	smtpbridge doctor --config FILE [--tenant NAME] [--device NAME] [--json]
//	smtpbridge send-test --config FILE --device NAME --to ADDRESS [--subject S]
//	smtpbridge exchange-script --config FILE [--tenant NAME] [--rbac | --graph]
//	smtpbridge tenant login --config FILE --tenant NAME --mailbox ADDRESS
//	smtpbridge hash-password [--algorithm argon2id|bcrypt]
//	smtpbridge queue list|show|retry|drop|dead|requeue [--config FILE] [--json] [ID]
//	smtpbridge blocks [list|unblock ADDR] [--config FILE] [--json]
//	smtpbridge reload [--config FILE] [--json]
//	smtpbridge version
//
// SMTPBRIDGE_CONFIG may name the config file instead of --config. This
// package holds the commands: it parses their flags, loads the config,
// handles signals and prints; the running bridge is internal/daemon,
// which wires the parts (HACKING.md has the map).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"

	"github.com/smtpbridge/smtpbridge/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	// A plain go build in a checkout: the commit, its time, and whether
	// the tree had changes, so that a bug report names its code.
	var rev, at, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "dev"
	}
	v := "dev-" + rev[:min(12, len(rev))]
	if at != "" {
		v += " " + at
	}
	if modified == "true" {
		v += " (modified)"
	}
	return v
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed (bridge stopped on error)
	exitUsage   = 2 // bad flags or a bad config
)

// usageError is a mistake in how the command was called.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

const usage = `smtpbridge: SMTP AUTH for legacy devices, Exchange Online over OAuth 2.0

Usage:
  smtpbridge serve --config FILE [--sandbox DIR]   run the bridge
  smtpbridge check-config --config FILE            list every problem in a config
  smtpbridge doctor --config FILE [--tenant T] [--device D] [--json]
                                                   check each tenant's set-up step by step
  smtpbridge send-test --config FILE --device D --to ADDRESS
                                                   send one test message through a device's mapping
  smtpbridge exchange-script --config FILE [--tenant T] [--rbac | --graph | --discover]
                                                   print the Exchange Online PowerShell the config needs
  smtpbridge tenant login --config FILE --tenant T --mailbox ADDRESS
                                                   sign in for a mailbox (auth: delegated)
  smtpbridge discover --config FILE [--tenant T] [--days 30] [--json | --yaml]
                                                   the mailboxes that still send with SMTP AUTH (Graph)
  smtpbridge device add|passwd|remove|list --config FILE [--name N ...]
                                                   enroll a device: password, config, reload, its card
  smtpbridge tls-cert --host NAME [--ip ADDR] [--days N] [--ca] --out DIR
                                                   a listener certificate for a LAN without a PKI
  smtpbridge hash-password [--algorithm A]         hash a device password (read from stdin)
  smtpbridge queue COMMAND [--config FILE] [ID]    list, show, retry, drop, dead, requeue
  smtpbridge blocks [list|unblock ADDR]            addresses blocked for failed logins
  smtpbridge trace --config FILE [--to A] [--device D] [--id ID] [--code C] [--since 2h] [--json|--follow]
                                                   each matching message's story, from the audit log
  smtpbridge reload [--config FILE]                reload the running bridge's config
  smtpbridge drain [--config FILE] [--timeout D]   deliver the queue before a stop (preStop)
  smtpbridge service install|uninstall|start|stop|status [--config FILE]
                                                   the Windows service
  smtpbridge version                               print the version

SMTPBRIDGE_CONFIG may name the config file instead of --config.
See README.md for the config reference.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = cmdServe(rest, stderr)
	case "check-config":
		err = cmdCheckConfig(rest, stdout, stderr)
	case "hash-password":
		err = cmdHashPassword(rest, stdin, stdout, stderr)
	case "queue":
		err = cmdQueue(rest, stdout, stderr)
	case "blocks":
		err = cmdBlocks(rest, stdout, stderr)
	case "reload":
		err = cmdReload(rest, stdout, stderr)
	case "drain":
		err = cmdDrain(rest, stdout, stderr)
	case "service":
		err = cmdService(rest, stdout, stderr)
	case "trace":
		err = cmdTrace(rest, stdout, stderr)
	case "doctor":
		err = cmdDoctor(rest, stdout, stderr)
	case "send-test":
		err = cmdSendTest(rest, stdout, stderr)
	case "exchange-script":
		err = cmdExchangeScript(rest, stdout, stderr)
	case "tenant":
		err = cmdTenant(rest, stdout, stderr)
	case "device":
		err = cmdDevice(rest, stdout, stderr)
	case "discover":
		err = cmdDiscover(rest, stdout, stderr)
	case "tls-cert":
		err = cmdTLSCert(rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "smtpbridge %s (%s)\n", buildVersion(), runtime.Version())
		return exitOK
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "smtpbridge: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	var ue usageError
	var ce configError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue), errors.As(err, &ce):
		fmt.Fprintf(stderr, "smtpbridge: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(stderr, "smtpbridge: %v\n", err)
	return exitFailure
}

// configFlag adds --config to fs, defaulting to $SMTPBRIDGE_CONFIG.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", defaultConfig(), "config file (default $SMTPBRIDGE_CONFIG, else the packages' config when it exists: /etc/smtpbridge/smtpbridge.yaml, or on Windows %ProgramData%\\smtpbridge\\smtpbridge.yaml)")
}

// installedConfig is where the packages install the config: the .deb
// and .rpm, or the MSI.
func installedConfig() string {
	if runtime.GOOS == "windows" {
		return filepath.Join(programData(), "smtpbridge", "smtpbridge.yaml")
	}
	return unixConfig
}

// unixConfig is the .deb's and .rpm's config (tests point it elsewhere).
var unixConfig = "/etc/smtpbridge/smtpbridge.yaml"

// defaultConfig is $SMTPBRIDGE_CONFIG, or the config the packages
// install, if it is there.
func defaultConfig() string {
	if p := os.Getenv("SMTPBRIDGE_CONFIG"); p != "" {
		return p
	}
	if p := installedConfig(); fileExists(p) {
		return p
	}
	return ""
}

// programData is %ProgramData% (C:\ProgramData).
func programData() string {
	if p := os.Getenv("ProgramData"); p != "" {
		return p
	}
	return `C:\ProgramData`
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// parseConfigFlags parses args into fs (which has --config from
// configFlag) and loads the named config, printing its problems to stderr.
func parseConfigFlags(fs *flag.FlagSet, path *string, args []string, stderr io.Writer) (*config.Config, error) {
	if err := parseFlags(fs, args, stderr); err != nil {
		return nil, err
	}
	if *path == "" {
		return nil, usageError{"no config file: pass --config FILE or set SMTPBRIDGE_CONFIG (try examples/sandbox.yaml)"}
	}
	return loadConfig(*path, stderr)
}
