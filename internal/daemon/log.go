package daemon

import (
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"

	"github.com/smtpbridge/smtpbridge/config"
)

// NewLogger is the bridge's logger as log.format and log.level say,
// writing to w.
func NewLogger(c config.Log, w io.Writer) zerolog.Logger {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	SetLogLevel(c.Level)
	out := w
	if c.Format == "console" {
		noColor := true
		if f, ok := w.(*os.File); ok {
			noColor = !term.IsTerminal(int(f.Fd()))
		}
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: noColor}
	}
	// The logger itself lets everything through; the global level, which
	// a reload may change, filters.
	return zerolog.New(out).With().Timestamp().Logger()
}

// SetLogLevel sets the level of every logger (log.level; a reload may
// change it): info unless s names one.
func SetLogLevel(s string) {
	level, err := zerolog.ParseLevel(s)
	if err != nil {
		level = zerolog.InfoLevel
	}
	zerolog.SetGlobalLevel(level)
}
