package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
	p := &doctor.Printer{W: stdout}
	o := doctor.Options{Tenant: *tenant, Device: *device, Hostname: cfg.Hostname, WarnBefore: config.CredentialWarnBefore}
	if !*asJSON {
		fmt.Fprintf(stdout, "smtpbridge doctor: %s\n", cfg.Path)
		o.Progress = p.Step
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

func cmdExchangeScript(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("exchange-script", flag.ContinueOnError)
	path := configFlag(fs)
	tenant := fs.String("tenant", "", "only this tenant")
	rbac := fs.Bool("rbac", false, "grant the mailboxes with RBAC for Applications (a management scope) instead of FullAccess")
	graph := fs.Bool("graph", false, "the set-up for the Microsoft Graph transport (RBAC for Applications: Application Mail.Send and Mail.ReadWrite)")
	discover := fs.Bool("discover", false, "the grant smtpbridge discover needs (Graph's Reports.Read.All and AuditLog.Read.All)")
	cfg, err := parseConfigFlags(fs, path, args, stderr)
	if err != nil {
		return err
	}
	if *discover {
		script, err := doctor.DiscoverScript(daemon.DoctorTenants(cfg, daemon.Microsoft{}), *tenant)
		if errors.Is(err, doctor.ErrNoSuch) {
			return usageError{"exchange-script: " + err.Error()}
		}
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, script)
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
