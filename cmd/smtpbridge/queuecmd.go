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
	c := queueCmd{m: m, where: where, w: stdout, json: *asJSON}
	if len(pos) == 1 {
		c.id = pos[0]
	}
	switch sub {
	case "list", "dead":
		return c.list(sub == "dead")
	case "show":
		return c.show()
	case "retry":
		return c.retry(*all, *mailbox)
	}
	return c.change(sub)
}

// queueCmd is one queue command's work on a queue, the bridge's or a
// stopped spool's (where), printing to w.
type queueCmd struct {
	m     queue.Manager
	where string
	w     io.Writer
	json  bool
	id    string
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

func (c queueCmd) list(dead bool) error {
	var items []queue.Item
	var err error
	if dead {
		items, err = c.m.Dead()
	} else {
		items, err = c.m.List()
	}
	if err != nil && items == nil {
		return err
	}
	if items == nil {
		items = []queue.Item{}
	}
	perr := c.out(items, func() {
		queue.WriteList(c.w, items, dead, c.where)
		if qc, ok := c.m.(*queue.Client); ok {
			printReplicas(c.w, qc)
		}
	})
	return errors.Join(err, perr)
}

func (c queueCmd) show() error {
	it, err := c.m.Show(c.id)
	if err != nil {
		return err
	}
	return c.out(it, func() { queue.WriteItem(c.w, it) })
}

func (c queueCmd) retry(all bool, mailbox string) error {
	n, err := 1, error(nil)
	switch {
	case all:
		n, err = c.m.RetryAll()
	case mailbox != "":
		n, err = c.m.RetryMailbox(mailbox)
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
