package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/doctor"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
)

// doctorTimeout bounds a whole doctor run.
const doctorTimeout = 5 * time.Minute

// errDoctorFailed is a doctor run with a failed step: exit status 1.
var errDoctorFailed = errors.New("some checks failed; see the fix under each")

func cmdDoctor(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	path := configFlag(fs)
	tenant := fs.String("tenant", "", "check only this tenant")
	device := fs.String("device", "", "check only this device's tenant and mailbox")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	cfg, err := parseConfigFlags(fs, path, args, stderr)
	if err != nil {
		return err
	}
	ms, stop, err := daemon.StartSandbox(cfg)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), doctorTimeout)
	defer cancel()
	p := &doctorPrinter{w: stdout}
	o := doctor.Options{Tenant: *tenant, Device: *device, Hostname: cfg.Hostname, WarnBefore: config.CredentialWarnBefore}
	if !*asJSON {
		fmt.Fprintf(stdout, "smtpbridge doctor: %s\n", cfg.Path)
		o.Progress = p.step
	}
	rep, err := doctor.Run(ctx, daemon.DoctorTenants(cfg, ms), o)
	if errors.Is(err, doctor.ErrNoSuch) {
		return usageError{"doctor: " + err.Error()}
	}
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "\n%d tenant(s), %d mailbox(es): %d failed, %d warning(s)\n", rep.Tenants, rep.Mailboxes, rep.Failed, rep.Warnings)
	}
	if rep.Failed > 0 {
		return errDoctorFailed
	}
	return nil
}

// doctorPrinter prints steps as they finish, under a heading per tenant
// and mailbox.
type doctorPrinter struct {
	w               io.Writer
	tenant, mailbox string
}

var marks = map[doctor.Status]string{doctor.Pass: "[ ok ]", doctor.Warn: "[warn]", doctor.Fail: "[FAIL]", doctor.Skip: "[skip]"}

func (p *doctorPrinter) step(s doctor.Step) {
	if s.Tenant != p.tenant {
		p.tenant, p.mailbox = s.Tenant, ""
		fmt.Fprintf(p.w, "\ntenant %s\n", s.Tenant)
	}
	if s.Mailbox != "" && s.Mailbox != p.mailbox {
		p.mailbox = s.Mailbox
		fmt.Fprintf(p.w, "  mailbox %s (device %s)\n", s.Mailbox, strings.Join(s.Devices, ", "))
	}
	indent := "  "
	if s.Mailbox != "" {
		indent = "    "
	}
	fmt.Fprintf(p.w, "%s%s %-11s%s\n", indent, marks[s.Status], s.Name, s.Detail)
	pad := indent + strings.Repeat(" ", 7)
	if s.Code != "" || s.Meaning != "" {
		code := ""
		if s.Code != "" {
			code = s.Code + ": "
		}
		fmt.Fprintf(p.w, "%smeans: %s%s\n", pad, code, s.Meaning)
	}
	if s.Fix != "" {
		fmt.Fprintf(p.w, "%sfix:   %s\n", pad, s.Fix)
	}
}

func cmdExchangeScript(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("exchange-script", flag.ContinueOnError)
	path := configFlag(fs)
	tenant := fs.String("tenant", "", "only this tenant")
	rbac := fs.Bool("rbac", false, "grant the mailboxes with RBAC for Applications (a management scope) instead of FullAccess")
	graph := fs.Bool("graph", false, "the set-up for the Microsoft Graph transport (RBAC for Applications: Application Mail.Send and Mail.ReadWrite)")
	cfg, err := parseConfigFlags(fs, path, args, stderr)
	if err != nil {
		return err
	}
	script, err := doctor.ExchangeScript(daemon.DoctorTenants(cfg, daemon.Microsoft{}), cfg.Path, *tenant, *rbac, *graph)
	if errors.Is(err, doctor.ErrNoSuch) {
		return usageError{"exchange-script: " + err.Error()}
	}
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, script)
	return err
}
