package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/smtpbridge/smtpbridge/internal/privdrop"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/status"
)

const queueUsage = `Usage: smtpbridge queue COMMAND [flags] [ID]

Commands:
  list            queued messages (waiting for their first or next
                  attempt), oldest first, as the bridge sends them page
                  by page; the filters below choose which
  show ID         one message, queued or dead, with its last reply
  retry ID|--all|FILTERS
                  make a queued message (all of them, or those the
                  filters select, lifting their mailboxes' holds) due now
  drop ID|FILTERS delete a queued message or a dead letter, or all those
                  the filters select (at least one filter), e.g.
                  queue drop --device mfp-3f --state dead
  dead            the dead letters (list --state dead)
  requeue ID      move a dead letter back into the queue, due now

Filters (list, dead, retry, drop): --device NAME, --mailbox ADDRESS,
--tenant NAME, --state queued|deferred|delivering|dead, --older-than 2h.
list and dead print everything selected unless --limit N; then the last
line gives the --after value that goes on from there.

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
			// The flags are each command's: smtpbridge queue list --help.
			fmt.Fprint(stdout, strings.TrimSuffix(queueUsage, "\nFlags:\n")+"\nEach command's flags: smtpbridge queue COMMAND --help.\n")
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
	var f queue.Filter
	fs.StringVar(&f.Mailbox, "mailbox", "", "select the messages sent as this `mailbox` (retry lifts its hold: after a fix)")
	fs.StringVar(&f.Device, "device", "", "select the messages of this `device`")
	fs.StringVar(&f.Tenant, "tenant", "", "select the messages of this `tenant`")
	fs.StringVar(&f.State, "state", "", "select the messages in this `state`: queued, deferred, delivering or dead")
	fs.DurationVar(&f.OlderThan, "older-than", 0, "select the messages received longer ago than this `duration` (e.g. 2h)")
	limit := fs.Int("limit", 0, "list, dead: print at most `N` messages")
	after := fs.String("after", "", "list, dead: go on after this `value` (printed as the last line of a --limit listing)")
	fs.Usage = func() { fmt.Fprint(stderr, queueUsage); fs.PrintDefaults() }
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if err := f.Check(); err != nil {
		return usageError{"queue " + sub + ": " + err.Error()}
	}
	if *limit < 0 {
		return usageError{"queue " + sub + ": --limit must be positive"}
	}
	filtered := !f.Empty()
	needID := map[string]bool{"show": true, "drop": !filtered, "requeue": true, "retry": !*all && !filtered}
	switch sub {
	case "list", "dead", "show", "retry", "drop", "requeue":
	default:
		return usageError{fmt.Sprintf("queue: unknown command %q (list, show, retry, drop, dead, requeue)", sub)}
	}
	switch {
	case needID[sub] && len(pos) != 1:
		alt := map[string]string{"retry": " (or --all, or filters such as --mailbox M)", "drop": " (or filters such as --device D --state dead)"}[sub]
		return usageError{fmt.Sprintf("queue %s: give one message ID%s", sub, alt)}
	case !needID[sub] && len(pos) != 0:
		return usageError{fmt.Sprintf("queue %s: unexpected argument %q", sub, pos[0])}
	}
	m, where, closeFn, err := queueManager(af, *spoolDir)
	if err != nil {
		return err
	}
	defer closeFn()
	c := queueCmd{m: m, where: where, w: stdout, stderr: stderr, json: *asJSON}
	if len(pos) == 1 {
		c.id = pos[0]
	}
	switch sub {
	case "list", "dead":
		if sub == "dead" {
			f.State = queue.StateDead
		}
		return c.list(f, *after, *limit)
	case "show":
		return c.show()
	case "retry":
		return c.retry(*all, f)
	case "drop":
		if filtered {
			return c.dropWhere(f)
		}
	}
	return c.change(sub)
}

// queueCmd is one queue command's work on a queue, the bridge's or a
// stopped spool's (where), printing to w.
type queueCmd struct {
	m         queue.Manager
	where     string
	w, stderr io.Writer
	json      bool
	id        string
}

// out prints v as JSON with --json, or runs text.
func (c queueCmd) out(v any, text func()) error {
	if c.json {
		enc := json.NewEncoder(c.w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text()
	return nil
}

// list prints what f selects a page at a time as the bridge sends it:
// the bridge keeps no more than a page in memory for it, and neither does
// this command (JSON is written item by item, as an array).
func (c queueCmd) list(f queue.Filter, after string, limit int) error {
	lw := queue.NewListWriter(c.w, f.State == queue.StateDead)
	enc := json.NewEncoder(c.w)
	if c.json {
		fmt.Fprint(c.w, "[")
	}
	shown, matched, next := 0, 0, after
	for first := true; first || next != ""; first = false {
		size := queue.MaxPage
		if limit > 0 {
			size = min(size, limit-shown)
		}
		if size <= 0 {
			break
		}
		p, err := c.m.Select(f, next, size)
		if err != nil {
			return err
		}
		for _, it := range p.Items {
			if c.json {
				if shown > 0 {
					fmt.Fprint(c.w, ",")
				}
				fmt.Fprint(c.w, "\n")
				if err := enc.Encode(it); err != nil {
					return err
				}
			}
			shown++
		}
		if !c.json {
			lw.Write(p.Items)
		}
		matched, next = p.Matched, p.Next
	}
	if c.json {
		fmt.Fprint(c.w, "]\n")
		if next != "" {
			fmt.Fprintf(c.stderr, "%d of %d message(s); more: add --after %s\n", shown, matched, next)
		}
		return nil
	}
	lw.Close(matched, next, c.where)
	if qc, ok := c.m.(*queue.Client); ok {
		printReplicas(c.w, qc)
	}
	return nil
}

// dropWhere drops what f selects.
func (c queueCmd) dropWhere(f queue.Filter) error {
	n, err := c.m.DropWhere(f)
	if err != nil && n == 0 {
		return err
	}
	perr := c.out(map[string]int{"dropped": n}, func() { fmt.Fprintf(c.w, "dropped %d message(s) (%s)\n", n, c.where) })
	return errors.Join(err, perr)
}

func (c queueCmd) show() error {
	it, err := c.m.Show(c.id)
	if err != nil {
		return err
	}
	return c.out(it, func() { queue.WriteItem(c.w, it) })
}

func (c queueCmd) retry(all bool, f queue.Filter) error {
	n, err := 1, error(nil)
	switch {
	case all:
		n, err = c.m.RetryAll()
	case !f.Empty():
		n, err = c.m.RetryWhere(f)
	default:
		err = c.m.Retry(c.id)
	}
	if err != nil {
		return err
	}
	return c.out(map[string]int{"retried": n}, func() { fmt.Fprintf(c.w, "%d message(s) due now (%s)\n", n, c.where) })
}

// change drops or requeues one message.
func (c queueCmd) change(sub string) error {
	do, done, past := c.m.Drop, "dropped %s (%s)\n", "dropped"
	if sub == "requeue" {
		do, done, past = c.m.Requeue, "requeued %s, due now (%s)\n", "requeued"
	}
	if err := do(c.id); err != nil {
		return err
	}
	return c.out(map[string]string{past: c.id}, func() { fmt.Fprintf(c.w, done, c.id, c.where) })
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
	c := &queue.Client{Client: t.Client}
	where := "bridge at " + c.Where()
	err = c.Ping()
	switch {
	case err == nil:
		return c, where, nop, nil
	case errors.Is(err, queue.ErrUnreachable) && *af.admin == "":
		return openOffline(t.cfg.Spool.Dir, fmt.Sprintf("its admin API at %s does not answer", c.Where()))
	}
	return nil, "", nop, t.Explain(err)
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

// printReplicas shows, for a bridge among replicas sharing limits, what
// each replica's spool holds: each delivers only its own.
func printReplicas(w io.Writer, c *queue.Client) {
	var r struct {
		Replicas []status.Replica `json:"replicas"`
	}
	if c.Do("GET", "/api/replicas", &r) != nil || len(r.Replicas) == 0 {
		return // a bridge on its own, or an older one
	}
	status.WriteReplicas(w, r.Replicas)
}
