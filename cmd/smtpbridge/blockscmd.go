package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"

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
	c := &guard.Client{Client: t.Client}
	url := "bridge at " + c.Where()
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
				return fmt.Errorf("%s is not blocked (%s)", a, url)
			}
			return t.Explain(err)
		}
		fmt.Fprintf(stdout, "unblocked %s (%s)\n", a, url)
		return nil
	}
	blocks, err := c.Blocks()
	if err != nil {
		return t.Explain(err)
	}
	if *asJSON {
		if blocks == nil {
			blocks = []guard.Block{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(blocks)
	}
	guard.WriteBlocks(stdout, blocks, url)
	return nil
}
