package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/trace"
)

const traceUsage = `Usage: smtpbridge trace --config FILE [filters] [--json | --follow]

Finds messages in the audit log (log.audit_file, and its rotated files,
.gz included) and prints each one's story: received from which address
and device, each attempt with Exchange's reply, delivered as which
Exchange ID, or refused or dead with why and the hint. A message matches
when each filter given matches one of its events.

Filters:
  --device NAME     the device
  --from ADDRESS    the envelope sender
  --to ADDRESS      a recipient
  --id ID           the bridge's message ID, the device's Message-ID, or
                    Exchange's message ID (Graph's request ID)
  --code CODE       a reply code: 550, 5.7.60, 4.3.2
  --since WHEN      2h, 30m, 7d, or a time (2026-12-01T08:00:00Z)
  --until WHEN      the same

Flags:
`

func cmdTrace(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	path := configFlag(fs)
	file := fs.String("file", "", "the audit log `FILE` (default: log.audit_file from --config)")
	var q trace.Query
	fs.StringVar(&q.Device, "device", "", "the device's `NAME`")
	fs.StringVar(&q.From, "from", "", "the envelope sender")
	fs.StringVar(&q.To, "to", "", "a recipient")
	fs.StringVar(&q.ID, "id", "", "a message ID: the bridge's, the device's Message-ID, or Exchange's")
	fs.StringVar(&q.Code, "code", "", "a reply code (550, 5.7.60)")
	since := fs.String("since", "", "only events since `WHEN` (2h, 7d, or an RFC 3339 time)")
	until := fs.String("until", "", "only events until `WHEN`")
	limit := fs.Int("limit", 100, "print at most the `N` newest messages (0: all)")
	asJSON := fs.Bool("json", false, "print the stories as JSON")
	follow := fs.Bool("follow", false, "watch the log and print matching events as they come")
	fs.Usage = func() { fmt.Fprint(stderr, traceUsage); fs.PrintDefaults() }
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	now := time.Now()
	var err error
	if q.Since, err = trace.ParseWhen(*since, now); err != nil {
		return usageError{"trace --since: " + err.Error()}
	}
	if q.Until, err = trace.ParseWhen(*until, now); err != nil {
		return usageError{"trace --until: " + err.Error()}
	}
	log, err := auditLog(*file, *path)
	if err != nil {
		return err
	}
	// Ctrl-C stops a search of a large log as it stops --follow.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *follow {
		enc := json.NewEncoder(stdout)
		fmt.Fprintf(stderr, "following %s (Ctrl-C to stop)\n", log)
		return trace.Follow(ctx, log, q, func(e trace.Event) {
			if *asJSON {
				enc.Encode(e)
				return
			}
			e.FollowLine(stdout)
		})
	}
	return traceSearch(ctx, log, q, *limit, *asJSON, stdout, stderr)
}

// auditLog is the audit log to trace: --file, or the config's
// log.audit_file.
func auditLog(file, configPath string) (string, error) {
	if file != "" {
		return file, nil
	}
	if configPath == "" {
		return "", usageError{"trace: pass --config FILE (or set SMTPBRIDGE_CONFIG) or --file AUDIT_LOG"}
	}
	cfg, err := config.LoadAdmin(configPath)
	if err != nil {
		return "", configError{err.Error()}
	}
	if cfg.Log.AuditFile == "" {
		return "", configError{fmt.Sprintf("%s: log.audit_file is not set: the bridge keeps no audit log to trace; set it (e.g. /var/lib/smtpbridge/audit.log) and reload", configPath)}
	}
	return cfg.Log.AuditFile, nil
}

// traceSearch prints the stories of the messages q matches, the newest
// limit of them, and a summary of the search.
func traceSearch(ctx context.Context, log string, q trace.Query, limit int, asJSON bool, stdout, stderr io.Writer) error {
	start := time.Now()
	stories, st, err := trace.SearchLog(ctx, log, q, limit, trace.Limits{})
	if err != nil {
		return err
	}
	if asJSON {
		if stories == nil {
			stories = []trace.Story{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(stories)
	}
	for i, s := range stories {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		s.Text(stdout, time.Local)
	}
	fmt.Fprintln(stderr, st.Summary(len(stories), time.Since(start)))
	if len(stories) == 0 {
		return errors.New("trace: no message matches")
	}
	return nil
}
