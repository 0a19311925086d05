package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/doctor"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
)

// discoverTimeout bounds a discovery (the report and every page of the
// sign-in logs).
const discoverTimeout = 5 * time.Minute

func cmdDiscover(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("discover", flag.ContinueOnError)
	path := configFlag(fs)
	tenant := fs.String("tenant", "", "the tenant to ask (required when the config has several)")
	days := fs.Int("days", 30, "how many days back to look (1 to 180)")
	asJSON := fs.Bool("json", false, "print one object per mailbox, as JSON")
	asYAML := fs.Bool("yaml", false, "print device entries for the mailboxes no device sends as yet")
	cfg, err := parseConfigFlags(fs, path, args, stderr)
	if err != nil {
		return err
	}
	if *days < 1 || *days > 180 {
		return usageError{fmt.Sprintf("--days %d: use 1 to 180 (Microsoft keeps sign-ins 30 days, reports 180)", *days)}
	}
	if *asJSON && *asYAML {
		return usageError{"discover: --json or --yaml, not both"}
	}
	ms, stop, err := daemon.StartSandbox(cfg)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer stop()
	tenants := daemon.DoctorTenants(cfg, ms)
	var t *doctor.Tenant
	for i := range tenants {
		if tenants[i].Name == *tenant || *tenant == "" && len(tenants) == 1 {
			t = &tenants[i]
		}
	}
	if t == nil {
		var names []string
		for _, x := range tenants {
			names = append(names, x.Name)
		}
		return usageError{fmt.Sprintf("discover: name the tenant with --tenant (the config has %s)", strings.Join(names, ", "))}
	}
	ctx, cancel := context.WithTimeout(context.Background(), discoverTimeout)
	defer cancel()
	d, err := doctor.Discover(ctx, *t, *days)
	if err != nil {
		return err
	}
	switch {
	case *asJSON:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(d.Senders)
	case *asYAML:
		writeDiscoveredDevices(stdout, d)
	default:
		writeDiscovery(stdout, d)
	}
	for _, src := range []struct{ name, state string }{{"usage report", d.Report}, {"sign-in logs", d.SignInLogs}} {
		if src.state != "ok" {
			fmt.Fprintf(stderr, "%s: %s\n", src.name, src.state)
		}
	}
	return nil
}

// writeDiscovery prints the senders as a table and a summary.
func writeDiscovery(w io.Writer, d doctor.Discovery) {
	fmt.Fprintf(w, "tenant %s, last %d days: mailboxes that sent with SMTP AUTH\n\n", d.Tenant, d.Days)
	fmt.Fprintf(w, "%-36s %-8s %8s %-20s %-30s %s\n", "MAILBOX", "MAPPED", "SIGN-INS", "LAST SEEN", "ADDRESSES", "DEVICES")
	unmapped := 0
	for _, s := range d.Senders {
		last := s.LastActivity
		if s.LastSeen != nil {
			last = s.LastSeen.UTC().Format("2006-01-02 15:04 UTC")
		}
		mapped := "no"
		if s.Mapped {
			mapped = "yes"
		} else {
			unmapped++
		}
		signIns := "-"
		if d.SignInLogs == "ok" {
			signIns = fmt.Sprint(s.SignIns)
		}
		fmt.Fprintf(w, "%-36s %-8s %8s %-20s %-30s %s\n", s.Mailbox, mapped, signIns, cmpOr(last, "-"), cmpOr(strings.Join(s.Addresses, ","), "-"), strings.Join(s.Devices, ","))
	}
	fmt.Fprintf(w, "\n%d mailbox(es), %d not yet sending through the bridge", len(d.Senders), unmapped)
	if unmapped > 0 {
		fmt.Fprintf(w, ": smtpbridge discover --yaml prints device entries for them, or enroll each with smtpbridge device add")
	}
	fmt.Fprintln(w)
	if d.SignInLogs == "ok" {
		fmt.Fprintln(w, "The addresses are what Microsoft saw: a site's public address, not the device's own.")
	}
}

// writeDiscoveredDevices prints a devices: list for the mailboxes no
// device sends as, to paste into the config once each has a password
// hash (or to enroll with device add, which makes one).
func writeDiscoveredDevices(w io.Writer, d doctor.Discovery) {
	fmt.Fprintf(w, "# Devices for the mailboxes of tenant %s that sent with SMTP AUTH in the last %d days\n", d.Tenant, d.Days)
	fmt.Fprintln(w, "# and that no device sends as yet. Replace each password_hash with the output of")
	fmt.Fprintln(w, "# smtpbridge hash-password (or enroll each with: smtpbridge device add --name N --tenant T --mailbox M).")
	fmt.Fprintln(w, "devices:")
	used := map[string]bool{}
	for _, s := range d.Senders {
		if s.Mapped {
			continue
		}
		name := deviceNameFor(s.Mailbox, used)
		q := func(v string) string { b, _ := json.Marshal(v); return string(b) }
		if len(s.Addresses) > 0 {
			fmt.Fprintf(w, "  # seen from %s (public addresses), %d sign-in(s)\n", strings.Join(s.Addresses, ", "), s.SignIns)
		}
		fmt.Fprintf(w, "  - name: %s\n    username: %s\n    password_hash: %s\n    tenant: %s\n    mailbox: %s\n",
			q(name), q(name), q("REPLACE with the output of: smtpbridge hash-password"), q(d.Tenant), q(s.Mailbox))
	}
}

// deviceNameFor is a device name from a mailbox's local part, unique
// among used.
func deviceNameFor(mailbox string, used map[string]bool) string {
	local, _, _ := strings.Cut(mailbox, "@")
	var b strings.Builder
	for _, r := range strings.ToLower(local) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-.")
	if name == "" {
		name = "device"
	}
	base := name
	for i := 2; used[name]; i++ {
		name = fmt.Sprintf("%s-%d", base, i)
	}
	used[name] = true
	return name
}
