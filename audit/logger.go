package audit

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/hints"
)

// Logger writes each event as one line to the process log, at a level that
// says whether someone should look (info, warn; error for a tenant set-up
// problem), and, when a file is set, as one JSON line to that file
// whatever the process log's level: the file is the complete record.
type Logger struct {
	log zerolog.Logger

	mu   sync.Mutex
	file *os.File
	path string
	out  zerolog.Logger // writes to file; valid while file != nil
}

// NewLogger returns a Logger writing to log.
func NewLogger(log zerolog.Logger) *Logger {
	return &Logger{log: log}
}

// SetFile makes the logger also write to path (appending, created with
// mode 0640), or to no file for "". It reopens the file even when path is
// unchanged, so that a reload after log rotation writes to the new file.
func (l *Logger) SetFile(path string) error {
	var f *os.File
	if path != "" {
		var err error
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("audit file: %w", err)
		}
	}
	l.mu.Lock()
	old := l.file
	l.file, l.path = f, path
	if f != nil {
		l.out = zerolog.New(f).With().Timestamp().Logger()
	}
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Close closes the audit file, if any.
func (l *Logger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}

// Observe implements Observer.
func (l *Logger) Observe(e Event) {
	write(l.level(e), e)
	l.mu.Lock()
	if l.file != nil {
		// Under the lock: SetFile must not close the file mid-line.
		// Log() writes whatever the process's log level: the file is the
		// complete record, not a severity filter.
		write(l.out.Log(), e)
	}
	l.mu.Unlock()
}

func (l *Logger) level(e Event) *zerolog.Event {
	switch {
	case e.SetupProblem:
		return l.log.Error().Str("problem", "tenant set-up")
	case e.Kind == Deferred, e.Kind == Bounced, e.Kind == Dead, e.Kind == Dropped:
		return l.log.Warn()
	}
	return l.log.Info()
}

// write adds e's fields to ev and sends it. Empty fields are left out.
func write(ev *zerolog.Event, e Event) {
	if ev == nil {
		return // below the log level
	}
	ev = ev.Str("event", string(e.Kind)).Str("msg_id", e.MsgID)
	str := func(k, v string) {
		if v != "" {
			ev = ev.Str(k, v)
		}
	}
	str("device", e.Device)
	str("tenant", e.Tenant)
	str("mailbox", e.Mailbox)
	str("from", e.From)
	if e.Rcpts > 0 {
		ev = ev.Int("rcpts", e.Rcpts)
	}
	if len(e.To) > 0 {
		ev = ev.Strs("to", e.To)
	}
	str("remote", e.Remote)
	str("message_id", e.MessageID)
	str("recipient", e.Recipient)
	if e.Size > 0 {
		ev = ev.Int64("size", e.Size)
	}
	str("mode", e.Mode)
	str("stage", e.Stage)
	str("reply", e.Reply)
	str("upstream_id", e.UpstreamID)
	if e.Attempt > 0 {
		ev = ev.Int("attempt", e.Attempt)
	}
	str("reason", e.Reason)
	str("retry_by", e.RetryBy)
	if !e.NextAttempt.IsZero() {
		ev = ev.Time("next_attempt", e.NextAttempt)
	}
	if e.Duration > 0 {
		ev = ev.Dur("duration_ms", e.Duration)
	}
	if e.Kind == Delivered && !e.Accepted.IsZero() {
		ev = ev.Dur("latency_ms", time.Since(e.Accepted))
	}
	if e.Kind == Deferred || e.Kind == Bounced || e.Kind == Dead {
		// The same explanation doctor and the README give.
		if h := hints.ForReply(e.Reply); h != nil {
			ev = ev.Str("hint", h.Meaning+" Fix: "+h.Fix)
		}
	}
	str("dsn_for", e.DSNFor)
	str("detail", e.Detail)
	if e.Err != nil {
		ev = ev.Err(e.Err)
	}
	ev.Msg(messages[e.Kind])
}

var messages = map[Kind]string{
	Received:  "message received",
	Rejected:  "message rejected by the bridge's policy or limits",
	Delivered: "message delivered to Exchange Online",
	Deferred:  "delivery failed for now",
	Bounced:   "Exchange Online refused the message",
	Dead:      "message moved to the dead letters",
	DSN:       "delivery status notification queued",
	Dropped:   "message dropped by an admin",
	Requeued:  "dead letter requeued by an admin",
}

var _ io.Closer = (*Logger)(nil)
