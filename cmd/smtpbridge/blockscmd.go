package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpbridge/smtpbridge/guard"
)

const blocksUsage = `Usage: smtpbridge blocks [list|unblock ADDR] [--config FILE | --admin URL --token-file FILE] [--json]

Addresses blocked after too many failed device logins (security.auth_*),
in the running bridge:

  list            the addresses blocked now, since when, until when, why
  unblock ADDR    lift the block on ADDR at once (and forget its failures);
                  for IPv6, on its network (security.ipv6_prefix, a /64 by default)

Flags:
`

func cmdBlocks(args []string, stdout, stderr io.Writer) error {
	sub := "list"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("blocks "+sub, flag.ContinueOnError)
	af := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() { fmt.Fprint(stderr, blocksUsage); fs.PrintDefaults() }
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	switch {
	case sub != "list" && sub != "unblock":
		return usageError{fmt.Sprintf("blocks: unknown command %q (list, unblock)", sub)}
	case sub == "list" && len(pos) != 0:
		return usageError{fmt.Sprintf("blocks list: unexpected argument %q", pos[0])}
	case sub == "unblock" && len(pos) != 1:
		return usageError{"blocks unblock: give one IP address"}
	}
	t, err := af.resolve("blocks")
	if err != nil {
		return err
	}
	c := &guard.Client{Client: t.client}
	url := c.Where()
	if sub == "unblock" {
		a, err := netip.ParseAddr(pos[0])
		if p, perr := netip.ParsePrefix(pos[0]); err != nil && perr == nil {
			a, err = p.Masked().Addr(), nil // an IPv6 network, as blocks lists it
		}
		if err != nil {
			return usageError{fmt.Sprintf("blocks unblock: %q is not an IP address or network", pos[0])}
		}
		if err := c.Unblock(a); err != nil {
			if errors.Is(err, guard.ErrNotBlocked) {
				return fmt.Errorf("%s is not blocked (bridge at %s)", a, url)
			}
			return t.explain(err)
		}
		fmt.Fprintf(stdout, "unblocked %s (bridge at %s)\n", a, url)
		return nil
	}
	blocks, err := c.Blocks()
	if err != nil {
		return t.explain(err)
	}
	if *asJSON {
		if blocks == nil {
			blocks = []guard.Block{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(blocks)
	}
	if len(blocks) == 0 {
		fmt.Fprintf(stdout, "no addresses blocked (bridge at %s)\n", url)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSINCE\tLIFTED IN\tFAILURES\tLAST USERNAME")
	now := time.Now()
	for _, b := range blocks {
		user := cmp.Or(b.Username, "(not a device's; not shown)")
		if b.Replica != "" {
			user += " (blocked by " + b.Replica + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", b.Addr, b.Since.Local().Format(time.DateTime), roundDur(b.Until.Sub(now)), b.Failures, user)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "%d address(es) blocked (bridge at %s); lift one with: smtpbridge blocks unblock ADDR\n", len(blocks), url)
	return nil
}
