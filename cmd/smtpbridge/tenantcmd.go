package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/internal/privdrop"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// loginTimeout bounds the wait for the person to sign in; Entra's device
// codes last 15 minutes.
const loginTimeout = 15 * time.Minute

// cmdTenant runs smtpbridge tenant login: delegated sign-in for one
// mailbox of a tenant with auth: delegated.
// tenantMailboxes lists the mailboxes the tenant's devices send as, with
// the transports they use, by lower-case address.
func tenantMailboxes(cfg *config.Config, tenant string) (mailboxes []string, transports map[string][]string) {
	transports = map[string][]string{}
	inv := cfg.Inventory()
	for _, mb := range inv.Mailboxes() {
		if mb.Tenant == tenant {
			mailboxes = append(mailboxes, mb.Address.String())
			transports[strings.ToLower(mb.Address.String())] = mb.Transports
		}
	}
	return mailboxes, transports
}

// loginScopes sets what the sign-in asks for: the permissions of the
// transports the mailbox's devices use (the tenant's, for a mailbox no
// device uses yet), the first by the device code (tt.DelegatedScope),
// the other checked after from the same refresh token (extra).
func loginScopes(t *config.Tenant, tt *tokenstore.Tenant, used []string) (extra []string) {
	if len(used) == 0 {
		used = []string{t.Transport}
	}
	switch {
	case slices.Contains(used, config.TransportGraph) && slices.Contains(used, config.TransportSMTP):
		extra = append(extra, t.DelegatedScope(true))
	case slices.Contains(used, config.TransportGraph):
		tt.DelegatedScope = t.DelegatedScope(true)
	}
	return extra
}

func cmdTenant(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "login" {
		return usageError{"tenant: the command is: smtpbridge tenant login --config FILE --tenant NAME --mailbox ADDRESS"}
	}
	fs := flag.NewFlagSet("tenant login", flag.ContinueOnError)
	path := configFlag(fs)
	name := fs.String("tenant", "", "the tenant (auth: delegated) to sign in for (required)")
	mailbox := fs.String("mailbox", "", "the mailbox to sign in as: a device's mailbox in that tenant (required if it has several)")
	cfg, err := parseConfigFlags(fs, path, args[1:], stderr)
	if err != nil {
		return err
	}
	if *name == "" {
		return usageError{"tenant login: --tenant NAME is required"}
	}
	t := cfg.Tenant(*name)
	if t == nil {
		return usageError{fmt.Sprintf("tenant login: no tenant %q in %s", *name, cfg.Path)}
	}
	if t.Auth != config.AuthDelegated {
		return fmt.Errorf("tenant %s uses its app's own credential (auth: %s): nobody signs in for it; set auth: delegated to use sign-in per mailbox", t.Name, t.Auth)
	}
	mailboxes, transports := tenantMailboxes(cfg, t.Name)
	if *mailbox == "" {
		if len(mailboxes) != 1 {
			return usageError{fmt.Sprintf("tenant login: --mailbox ADDRESS is required; the devices of tenant %s send as: %s", t.Name, strings.Join(mailboxes, ", "))}
		}
		*mailbox = mailboxes[0]
	}
	if _, err := mailaddr.Parse(*mailbox); err != nil {
		return usageError{fmt.Sprintf("tenant login: --mailbox %q: %v", *mailbox, err)}
	}
	if !slices.ContainsFunc(mailboxes, func(m string) bool { return strings.EqualFold(m, *mailbox) }) {
		fmt.Fprintf(stderr, "warning: no device of tenant %s sends as %s yet; the sign-in is kept for when one does\n", t.Name, *mailbox)
	}
	// sudo smtpbridge tenant login, as the README says: the token cache
	// belongs to the bridge's user, and root writing in that user's
	// directory could be led by a link to any file on the machine. So
	// the sign-in runs as that user from here on; the config, which may
	// be root's alone, is read already.
	if u, err := privdrop.ToOwnerOf(cfg.TokenCache.Dir); err != nil {
		return fmt.Errorf("tenant login: running as the owner of token_cache.dir %s: %w", cfg.TokenCache.Dir, err)
	} else if u.Changed() {
		fmt.Fprintf(stderr, "Running as user %d (the owner of %s) from here on, as the bridge does.\n", u.UID, cfg.TokenCache.Dir)
	}
	tt := daemon.Microsoft{}.TokenTenant(cfg, t)
	extra := loginScopes(t, &tt, transports[strings.ToLower(*mailbox)])
	ctx, cancel := context.WithTimeout(context.Background(), loginTimeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	fmt.Fprintf(stdout, "Signing in for mailbox %s of tenant %s (app %s), asking for %s.\n", *mailbox, t.Name, t.ClientID, tt.DelegatedScope)
	res, err := tokenstore.Login(ctx, tt, *mailbox, func(p tokenstore.LoginPrompt) {
		fmt.Fprintf(stdout, "\n%s\nSign in as %s. Waiting until %s (Ctrl-C to give up)...\n", p.Message, *mailbox, p.Expires.Local().Format("15:04"))
	}, extra...)
	if err != nil {
		return fmt.Errorf("tenant login: %w", err)
	}
	fmt.Fprintf(stdout, "\nSigned in as %s, for %s.\n", res.Username, strings.Join(res.Scopes, " and "))
	fmt.Fprintf(stdout, "The refresh token is kept encrypted in %s.\n", res.CacheFile)
	fmt.Fprintf(stdout, "A running bridge uses it within seconds: the mailbox's waiting messages go then. Nothing to restart.\n")
	return nil
}
