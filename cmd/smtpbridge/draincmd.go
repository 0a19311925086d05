package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/queue"
)

const drainUsage = `Usage: smtpbridge drain [--config FILE | --admin URL --token-file FILE] [--timeout 4m]

Empties the running bridge's queue before it stops: /readyz answers 503
from now on (a load balancer or Kubernetes Service sends no new devices
here), every queued message is made due now, and the command waits until
the queue is empty or the timeout passes, printing what is left. The
bridge keeps serving the connections that still come and delivering until
it gets SIGTERM. Exit status 0: the queue is empty; 1: messages are left
(they stay in spool.dir and go out when this bridge starts again).

The Helm chart runs it as the container's preStop hook.

Flags:
`

// drainPoll is how often drain looks at the queue.
var drainPoll = time.Second

func cmdDrain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("drain", flag.ContinueOnError)
	af := addAdminFlags(fs)
	timeout := fs.Duration("timeout", 4*time.Minute, "give up after `D`, leaving what is left in the spool")
	fs.Usage = func() { fmt.Fprint(stderr, drainUsage); fs.PrintDefaults() }
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("drain: unexpected argument %q", pos[0])}
	}
	if *timeout <= 0 {
		return usageError{"drain: --timeout must be positive, e.g. 4m"}
	}
	t, err := af.resolve("drain")
	if err != nil {
		return err
	}
	var r struct {
		Retried int `json:"retried"`
	}
	if err := t.Client.Do(http.MethodPost, "/api/drain", &r); err != nil {
		if errors.Is(err, adminapi.ErrUnreachable) {
			return fmt.Errorf("no smtpbridge answers at %s: nothing to drain there (is it running with this spool.dir?)", t.Client.Where())
		}
		return t.Explain(err)
	}
	fmt.Fprintf(stdout, "draining the bridge at %s: not ready for new devices; %d queued message(s) due now\n", t.Client.Where(), r.Retried)
	c := &queue.Client{Client: t.Client}
	deadline := time.Now().Add(*timeout)
	last := -1
	for {
		items, err := c.List()
		if err != nil {
			return t.Explain(err)
		}
		if len(items) == 0 {
			fmt.Fprintln(stdout, "drained: the queue is empty")
			return nil
		}
		if len(items) != last {
			fmt.Fprintf(stdout, "%d message(s) left\n", len(items))
			last = len(items)
		}
		if time.Now().After(deadline) {
			for _, it := range items {
				fmt.Fprintf(stdout, "  %s  %s  %s  %d attempt(s)  %s\n", it.ID, it.Device, it.State, it.Attempts, it.LastReply)
			}
			return fmt.Errorf("drain: %d message(s) still queued after %s; they stay in the spool and go out when this bridge starts again", len(items), *timeout)
		}
		time.Sleep(drainPoll)
	}
}
