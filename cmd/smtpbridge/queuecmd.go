package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/privdrop"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/status"
)

const queueUsage = `Usage: smtpbridge queue COMMAND [flags] [ID]

Commands:
  list            queued messages (waiting for their first or next attempt)
  show ID         one message, queued or dead, with its last reply
  retry ID|--all|--mailbox M
                  make a queued message (all of them, or a mailbox's,
                  lifting its hold) due now
  drop ID         delete a queued message or a dead letter
  dead            the dead letters
  requeue ID      move a dead letter back into the queue, due now

Where: the running bridge's admin socket (admin.sock in spool.dir, from
--config), or, when no bridge answers there, the stopped bridge's
spool.dir directly. --spool DIR chooses the latter; --admin URL the admin
API on http.address (with http.admin_over_tcp: true), where the admin
token goes only to a listener of the user who owns the token file. Run
the command as the bridge's user (or root): only they can reach the
socket and read the token (admin.token in spool.dir, or --token-file).

Flags:
`

func cmdQueue(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprint(stdout, queueUsage)
			return nil
		}
		return usageError{"queue: name a command: list, show, retry, drop, dead, requeue (see smtpbridge queue --help)"}
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("queue "+sub, flag.ContinueOnError)
	af := addAdminFlags(fs)
	spoolDir := fs.String("spool", "", "work on the stopped bridge's spool `DIR` directly")
	asJSON := fs.Bool("json", false, "print JSON")
	all := fs.Bool("all", false, "retry: every queued message")
	mailbox := fs.String("mailbox", "", "retry: every queued message of this mailbox, lifting its hold (after a fix)")
	fs.Usage = func() { fmt.Fprint(stderr, queueUsage); fs.PrintDefaults() }
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	needID := map[string]bool{"show": true, "drop": true, "requeue": true, "retry": !*all && *mailbox == ""}
	switch sub {
	case "list", "dead", "show", "retry", "drop", "requeue":
	default:
		return usageError{fmt.Sprintf("queue: unknown command %q (list, show, retry, drop, dead, requeue)", sub)}
	}
	switch {
	case needID[sub] && len(pos) != 1:
		return usageError{fmt.Sprintf("queue %s: give one message ID", sub)}
	case !needID[sub] && len(pos) != 0:
		return usageError{fmt.Sprintf("queue %s: unexpected argument %q", sub, pos[0])}
	}

	m, where, closeFn, err := queueManager(af, *spoolDir)
	if err != nil {
		return err
	}
	defer closeFn()
	id := ""
	if len(pos) == 1 {
		id = pos[0]
	}
	out := func(v any, text func()) error {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		}
		text()
		return nil
	}
	switch sub {
	case "list", "dead":
		var items []queue.Item
		if sub == "list" {
			items, err = m.List()
		} else {
			items, err = m.Dead()
		}
		if err != nil && items == nil {
			return err
		}
		if items == nil {
			items = []queue.Item{}
		}
		perr := out(items, func() {
			printItems(stdout, items, sub == "dead", where)
			if c, ok := m.(*queue.Client); ok {
				printReplicas(stdout, c)
			}
		})
		return errors.Join(err, perr)
	case "show":
		it, err := m.Show(id)
		if err != nil {
			return err
		}
		return out(it, func() { printItem(stdout, it) })
	case "retry":
		n := 1
		switch {
		case *all:
			n, err = m.RetryAll()
		case *mailbox != "":
			n, err = m.RetryMailbox(*mailbox)
		default:
			err = m.Retry(id)
		}
		if err != nil {
			return err
		}
		return out(map[string]int{"retried": n}, func() { fmt.Fprintf(stdout, "%d message(s) due now (%s)\n", n, where) })
	case "drop":
		if err := m.Drop(id); err != nil {
			return err
		}
		return out(map[string]string{"dropped": id}, func() { fmt.Fprintf(stdout, "dropped %s (%s)\n", id, where) })
	case "requeue":
		if err := m.Requeue(id); err != nil {
			return err
		}
		return out(map[string]string{"requeued": id}, func() { fmt.Fprintf(stdout, "requeued %s, due now (%s)\n", id, where) })
	}
	return nil
}

// parseInterspersed parses flags that may come before or after the
// positional arguments, and returns the latter.
func parseInterspersed(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	fs.SetOutput(stderr)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// queueManager picks what the queue command works on, and says which in
// its second result: the running bridge's admin API, or, when none
// answers, the stopped bridge's spool.
func queueManager(af adminFlags, spoolDir string) (queue.Manager, string, func(), error) {
	nop := func() {}
	if spoolDir != "" {
		return openOffline(spoolDir, "use --config or --admin to reach the running bridge")
	}
	t, err := af.resolve("queue")
	if err != nil {
		return nil, "", nop, err
	}
	c := &queue.Client{Client: t.client}
	where := "bridge at " + c.Where()
	err = c.Ping()
	switch {
	case err == nil:
		return c, where, nop, nil
	case errors.Is(err, queue.ErrUnreachable) && *af.admin == "":
		return openOffline(t.cfg.Spool.Dir, fmt.Sprintf("its admin API at %s does not answer", c.Where()))
	}
	return nil, "", nop, t.explain(err)
}

// openOffline opens a stopped bridge's spool; whenLocked says what to do
// if a running bridge holds it.
func openOffline(dir, whenLocked string) (queue.Manager, string, func(), error) {
	// Run as root, the command would leave files in the spool that the
	// bridge's user cannot read, and could be led by a link the spool's
	// owner put there: it works as that owner instead.
	if _, err := privdrop.ToOwnerOf(dir); err != nil {
		return nil, "", func() {}, fmt.Errorf("running as the owner of spool.dir %s: %w", dir, err)
	}
	off, err := queue.OpenOffline(dir)
	if errors.Is(err, spool.ErrLocked) {
		return nil, "", func() {}, fmt.Errorf("%w: %s", err, whenLocked)
	}
	if err != nil {
		return nil, "", func() {}, err
	}
	return off, "stopped bridge, spool " + dir, off.Close, nil
}

// loopbackAddr turns a wildcard listen address into one to connect to.
func loopbackAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

func printItems(w io.Writer, items []queue.Item, dead bool, where string) {
	if len(items) == 0 {
		fmt.Fprintf(w, "no messages (%s)\n", where)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	last := "LAST REPLY"
	if dead {
		last = "REASON"
	}
	fmt.Fprintf(tw, "ID\tSTATE\tAGE\tATTEMPTS\tNEXT\tDEVICE\tRCPTS\tSIZE\t%s\n", last)
	counts := map[string]int{}
	now := time.Now()
	for _, it := range items {
		counts[it.State]++
		next := "-"
		if !dead {
			next = "now"
			if d := it.NextAttempt.Sub(now); d > 0 {
				next = "in " + roundDur(d)
			}
		}
		reason := it.LastReply
		if dead {
			reason = it.DeadReason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", it.ID, it.State, roundDur(now.Sub(it.Received)),
			it.Attempts, next, it.Device, len(it.To), it.Size, truncate(reason, 60))
	}
	tw.Flush()
	var parts []string
	for _, s := range []string{queue.StateQueued, queue.StateDeferred, queue.StateDelivering, queue.StateDead} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	fmt.Fprintf(w, "%d message(s): %s (%s)\n", len(items), strings.Join(parts, ", "), where)
}

func printItem(w io.Writer, it queue.Item) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("ID", it.ID)
	row("State", it.State)
	row("Device", it.Device)
	row("Tenant", it.Tenant)
	row("Mailbox", it.Mailbox)
	row("From", it.From)
	row("To", strings.Join(it.To, ", "))
	row("Size", fmt.Sprintf("%d bytes", it.Size))
	row("Received", it.Received.Local().Format(time.RFC1123))
	if !it.Requeued.IsZero() {
		row("Requeued", it.Requeued.Local().Format(time.RFC1123))
	}
	row("Attempts", fmt.Sprint(it.Attempts))
	if it.State != queue.StateDead {
		row("Next attempt", it.NextAttempt.Local().Format(time.RFC1123))
	}
	row("Last reply", it.LastReply)
	row("Dead because", it.DeadReason)
	row("Report of", it.DSNFor)
	tw.Flush()
}

func roundDur(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Hour).String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// printReplicas shows, for a bridge among replicas sharing limits, what
// each replica's spool holds: each delivers only its own.
func printReplicas(w io.Writer, c *queue.Client) {
	var r struct {
		Replicas []status.Replica `json:"replicas"`
	}
	if c.Do("GET", "/api/replicas", &r) != nil || len(r.Replicas) == 0 {
		return // a bridge on its own, or an older one
	}
	fmt.Fprintln(w, "\nReplicas (each delivers only what its own spool holds):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tQUEUED\tDEFERRED\tDEAD\tLAST HEARD")
	now := time.Now()
	for _, rep := range r.Replicas {
		name := rep.Instance
		if rep.This {
			name += " (this one)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s ago\n", name, rep.Queued, rep.Deferred, rep.Dead, roundDur(now.Sub(rep.At)))
	}
	tw.Flush()
}
