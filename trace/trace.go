// Package trace finds messages in the audit log and tells each one's
// story: received from which device and address, each policy decision
// and attempt with Exchange's reply, delivered as which Exchange ID, or
// dead with why. It reads the log the bridge writes (log.audit_file) and
// its rotated files (.gz included); what it shows is what the log holds.
//
// A search is two passes over the files: the first finds the messages
// that match, looking only at the lines that contain what is searched
// for; the second gathers every event of those messages, from the file
// before the first that has one. A line is decoded only when it may
// matter, so a gigabyte of log is searched in seconds. A search stops
// when its context ends, and Limits bound its bytes read and the
// messages it keeps track of.
package trace

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Event is one line of the audit log.
type Event struct {
	Time        time.Time `json:"time"`
	Kind        string    `json:"event"`
	MsgID       string    `json:"msg_id"`
	Device      string    `json:"device,omitempty"`
	Tenant      string    `json:"tenant,omitempty"`
	Mailbox     string    `json:"mailbox,omitempty"`
	From        string    `json:"from,omitempty"`
	To          []string  `json:"to,omitempty"`
	Rcpts       int       `json:"rcpts,omitempty"`
	Recipient   string    `json:"recipient,omitempty"`
	Remote      string    `json:"remote,omitempty"`
	MessageID   string    `json:"message_id,omitempty"`
	Size        int64     `json:"size,omitempty"`
	Mode        string    `json:"mode,omitempty"`
	Stage       string    `json:"stage,omitempty"`
	Reply       string    `json:"reply,omitempty"`
	UpstreamID  string    `json:"upstream_id,omitempty"`
	Attempt     int       `json:"attempt,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	RetryBy     string    `json:"retry_by,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Hint        string    `json:"hint,omitempty"`
	DSNFor      string    `json:"dsn_for,omitempty"`
	Detail      string    `json:"detail,omitempty"`
	Error       string    `json:"error,omitempty"`
}

// Story is one message's events, oldest first.
type Story struct {
	ID     string  `json:"id"`
	Events []Event `json:"events"`
}

// Query is what to look for; empty fields match everything. A message
// matches when, for each field set, one of its events matches it.
type Query struct {
	Device string // the device's name
	From   string // the envelope sender
	To     string // a recipient
	// ID is the bridge's message ID, the device's Message-ID, or the
	// upstream ID (Exchange's message ID, Graph's request ID).
	ID   string
	Code string // a reply's code or enhanced code: "550", "5.7.60", "4.3.2"
	// Since and Until bound the events' times.
	Since, Until time.Time
}

// filters are the query's needles and their checks, in bit order.
func (q Query) filters() []filter {
	var fs []filter
	add := func(needle string, match func(*Event) bool) {
		if needle != "" {
			fs = append(fs, filter{needle: asciiLower(nil, []byte(needle)), match: match})
		}
	}
	eq := strings.EqualFold
	add(q.Device, func(e *Event) bool { return eq(e.Device, q.Device) })
	add(q.From, func(e *Event) bool { return eq(e.From, q.From) })
	add(q.To, func(e *Event) bool {
		return eq(e.Recipient, q.To) || slices.ContainsFunc(e.To, func(t string) bool { return eq(t, q.To) })
	})
	add(strings.Trim(q.ID, "<>"), func(e *Event) bool {
		id := strings.Trim(q.ID, "<>")
		return eq(e.MsgID, id) || eq(e.MessageID, id) || eq(strings.Trim(e.UpstreamID, "<>"), id) ||
			strings.Contains(e.Reply, id)
	})
	add(q.Code, func(e *Event) bool { return replyHasCode(e.Reply, q.Code) })
	return fs
}

// replyHasCode says whether reply starts with code, as a basic code
// ("550") or an enhanced one ("5.7.60").
func replyHasCode(reply, code string) bool {
	f := strings.Fields(reply)
	return len(f) > 0 && f[0] == code || len(f) > 1 && f[1] == code
}

type filter struct {
	needle []byte // lower case: a line that lacks it cannot match
	match  func(*Event) bool
}

// Files returns the audit log at path and its rotated files (path.1,
// path.2.gz, path-20261201, ...), oldest first.
func Files(path string) ([]string, error) {
	var rotated []string
	for _, pattern := range []string{path + ".*", path + "-*"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			return nil, fmt.Errorf("trace: %w", err)
		}
		rotated = append(rotated, m...)
	}
	type file struct {
		name string
		mod  time.Time
	}
	var fs []file
	for _, name := range append(rotated, path) {
		fi, err := os.Stat(name)
		if err != nil || fi.IsDir() {
			continue
		}
		fs = append(fs, file{name, fi.ModTime()})
	}
	if len(fs) == 0 {
		return nil, fmt.Errorf("no audit log at %s (log.audit_file)", path)
	}
	slices.SortStableFunc(fs, func(a, b file) int { return a.mod.Compare(b.mod) })
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.name
	}
	return out, nil
}

// Stats say what a search read.
type Stats struct {
	Files, Skipped int   // files read, and skipped for being older than Since
	Bytes          int64 // bytes read, twice for the two passes
	Lines          int
	// More is how many messages matched beyond those returned: the
	// oldest, past the limit or forgotten for Limits.MaxTracked.
	More int
	// Incomplete says why the search stopped before the end of the log
	// (Limits.MaxBytes), or, for a query of several filters, that it
	// forgot messages it could not yet tell matched; "" when complete.
	Incomplete string
}

// Summary is the command line's account of a search that found n
// messages in took.
func (st Stats) Summary(n int, took time.Duration) string {
	s := fmt.Sprintf("%d message(s); %d file(s), %.1f MB, %d lines read in %s", n, st.Files, float64(st.Bytes)/1e6, st.Lines,
		took.Round(time.Millisecond))
	if st.Skipped > 0 {
		s += fmt.Sprintf(" (%d file(s) older than --since skipped)", st.Skipped)
	}
	if st.More > 0 {
		s += fmt.Sprintf("; %d more, older, matched (--limit N, or 0 for all)", st.More)
	}
	if st.Incomplete != "" {
		s += "; incomplete: " + st.Incomplete
	}
	return s
}

// Limits bound the work of one search; zero values bound nothing. The
// status page sets them, since anyone who can load it can run searches;
// the command line, run by an admin, does not.
type Limits struct {
	// MaxBytes bounds the log read, both passes together.
	MaxBytes int64
	// MaxTracked bounds the messages the first pass keeps track of:
	// past it, the oldest are forgotten.
	MaxTracked int
}

// ctxCheckEvery is how often, in bytes read, a search looks at its
// context: a client that hangs up stops it within a fraction of a second.
const ctxCheckEvery = 1 << 20

// errBudget stops a search at Limits.MaxBytes.
var errBudget = errors.New("the search's budget of bytes read")

// SearchLog searches the audit log at path and its rotated files.
func SearchLog(ctx context.Context, path string, q Query, limit int, lim Limits) ([]Story, Stats, error) {
	files, err := Files(path)
	if err != nil {
		return nil, Stats{}, err
	}
	return Search(ctx, files, q, limit, lim)
}

// candidate is a message the first pass found an event of that matches
// one of the query's filters.
type candidate struct {
	id   string
	bits uint32 // the filters its events matched
	file int    // the file of its first such event
	gone bool   // forgotten (MaxTracked)
}

// tracked are the first pass's candidates, oldest first, at most max of
// them (0: no bound).
type tracked struct {
	max   int
	full  uint32
	byID  map[string]*candidate
	order []*candidate
	head  int
	st    *Stats
}

func (t *tracked) add(id []byte, bits uint32, file int) {
	if c := t.byID[string(id)]; c != nil {
		c.bits |= bits
		return
	}
	c := &candidate{id: string(id), bits: bits, file: file}
	t.byID[c.id] = c
	t.order = append(t.order, c)
	for t.max > 0 && len(t.byID) > t.max {
		old := t.order[t.head]
		t.order[t.head] = nil
		t.head++
		delete(t.byID, old.id)
		if old.bits == t.full {
			t.st.More++
		} else if t.st.Incomplete == "" {
			t.st.Incomplete = fmt.Sprintf("more than %d messages matched part of the search; the oldest were not followed: add a filter or a shorter since", t.max)
		}
	}
	if t.head > 1024 && t.head > len(t.order)/2 {
		t.order = append(t.order[:0], t.order[t.head:]...)
		t.head = 0
	}
}

// Search returns the stories of the messages that match q, oldest first,
// at most limit of them (the newest; 0: all), within lim. It stops when
// ctx ends, with ctx's error.
func Search(ctx context.Context, files []string, q Query, limit int, lim Limits) ([]Story, Stats, error) {
	var st Stats
	read := recentFiles(files, q.Since, &st)
	fs := q.filters()
	cands := &tracked{max: lim.MaxTracked, full: uint32(1)<<len(fs) - 1, byID: map[string]*candidate{}, st: &st}
	r := &reader{ctx: ctx, st: &st, maxBytes: lim.MaxBytes}
	// Pass 1: the messages whose events meet every filter.
	for _, fi := range read {
		err := r.eachLine(files[fi], func(line []byte) error {
			if id, bits, ok := q.matchLine(line, fs); ok {
				cands.add(id, bits, fi)
			}
			return nil
		})
		if errors.Is(err, errBudget) {
			break
		}
		if err != nil {
			return nil, st, err
		}
	}
	kept := cands.matched()
	if limit > 0 && len(kept) > limit {
		st.More += len(kept) - limit
		kept = kept[len(kept)-limit:]
	}
	if len(kept) == 0 {
		return nil, st, nil
	}
	out, err := collect(r, files, kept)
	return out, st, err
}

// recentFiles are the indexes of the files to read: all but those whose
// last event is older than since (counted in st.Skipped).
func recentFiles(files []string, since time.Time, st *Stats) []int {
	var read []int
	for i, f := range files {
		if !since.IsZero() {
			if fi, err := os.Stat(f); err == nil && fi.ModTime().Before(since) {
				st.Skipped++
				continue
			}
		}
		read = append(read, i)
	}
	st.Files = len(read)
	return read
}

// matchLine says which of the filters fs one line of the log meets (a
// bit each), and whether it counts: a message's event within the
// query's time span that meets one filter at least (any, without
// filters).
func (q Query) matchLine(line []byte, fs []filter) (id []byte, bits uint32, ok bool) {
	if id = msgID(line); id == nil {
		return nil, 0, false
	}
	var ev *Event
	for i, flt := range fs {
		if !containsFold(line, flt.needle) {
			continue
		}
		if ev == nil {
			ev = &Event{}
			if json.Unmarshal(line, ev) != nil {
				return nil, 0, false
			}
		}
		if flt.match(ev) {
			bits |= 1 << i
		}
	}
	if bits == 0 && len(fs) > 0 {
		return nil, 0, false
	}
	if !q.Since.IsZero() || !q.Until.IsZero() {
		t, ok := lineTime(line)
		if !ok || !q.Since.IsZero() && t.Before(q.Since) || !q.Until.IsZero() && t.After(q.Until) {
			return nil, 0, false
		}
	}
	return id, bits, true
}

// matched are the candidates that met every filter, oldest first.
func (t *tracked) matched() []*candidate {
	var kept []*candidate
	for _, c := range t.order[t.head:] {
		if c != nil && c.bits == t.full {
			kept = append(kept, c)
		}
	}
	return kept
}

// collect is pass 2: every event of the kept messages, from the file
// before the first that has one of them (a message's first events may be
// in the file rotated just before its match) to the end.
func collect(r *reader, files []string, kept []*candidate) ([]Story, error) {
	want := map[string]*Story{}
	first := len(files)
	for _, c := range kept {
		want[c.id] = &Story{ID: c.id}
		first = min(first, c.file)
	}
	for _, f := range files[max(first-1, 0):] {
		err := r.eachLine(f, func(line []byte) error {
			id := msgID(line)
			if id == nil {
				return nil
			}
			s := want[string(id)]
			if s == nil {
				return nil
			}
			var ev Event
			if json.Unmarshal(line, &ev) == nil {
				s.Events = append(s.Events, ev)
			}
			return nil
		})
		if errors.Is(err, errBudget) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	out := make([]Story, 0, len(kept))
	for _, c := range kept {
		s := want[c.id]
		slices.SortStableFunc(s.Events, func(a, b Event) int { return a.Time.Compare(b.Time) })
		out = append(out, *s)
	}
	return out, nil
}

// asciiLower appends b in lower case (ASCII letters only: the prefilter;
// the filters compare fields with strings.EqualFold) to dst.
func asciiLower(dst, b []byte) []byte {
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// containsFold says whether b contains needle (lower case) in any ASCII
// case, without copying b: it looks for the needle's first byte in
// either case, then compares.
func containsFold(b, needle []byte) bool {
	if len(needle) == 0 {
		return true
	}
	c0 := needle[0]
	up := c0
	if 'a' <= c0 && c0 <= 'z' {
		up = c0 - 'a' + 'A'
	}
	for len(b) >= len(needle) {
		i := bytes.IndexByte(b[:len(b)-len(needle)+1], c0)
		if up != c0 {
			if j := bytes.IndexByte(b[:len(b)-len(needle)+1], up); j >= 0 && (i < 0 || j < i) {
				i = j
			}
		}
		if i < 0 {
			return false
		}
		if bytes.EqualFold(b[i:i+len(needle)], needle) {
			return true
		}
		b = b[i+1:]
	}
	return false
}

var msgIDKey = []byte(`"msg_id":"`)

// msgID is the line's msg_id, without decoding the line.
func msgID(line []byte) []byte {
	i := bytes.Index(line, msgIDKey)
	if i < 0 {
		return nil
	}
	rest := line[i+len(msgIDKey):]
	j := bytes.IndexByte(rest, '"')
	if j <= 0 {
		return nil
	}
	return rest[:j]
}

var timeKey = []byte(`"time":"`)

func lineTime(line []byte) (time.Time, bool) {
	i := bytes.Index(line, timeKey)
	if i < 0 {
		return time.Time{}, false
	}
	rest := line[i+len(timeKey):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(rest[:j]))
	return t, err == nil
}

// reader reads the log's files for one search, within its budget and
// while its context lasts.
type reader struct {
	ctx       context.Context
	st        *Stats
	maxBytes  int64
	nextCheck int64
}

// eachLine calls fn with each line of the file (gunzipped when it ends
// in .gz); the line is valid only during the call. It stops with
// errBudget at the budget (saying so in Stats), with the context's error
// when it ends.
func (r *reader) eachLine(name string, fn func([]byte) error) error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	var rd io.Reader = f
	if strings.HasSuffix(name, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("trace: %s: %w", name, err)
		}
		defer gz.Close()
		rd = gz
	}
	br := bufio.NewReaderSize(rd, 1<<20)
	st := r.st
	for {
		if st.Bytes >= r.nextCheck {
			r.nextCheck = st.Bytes + ctxCheckEvery
			if err := r.ctx.Err(); err != nil {
				return err
			}
		}
		if r.maxBytes > 0 && st.Bytes >= r.maxBytes {
			st.Incomplete = fmt.Sprintf("stopped after reading %d MB of the log (a search's budget on the status page): use a shorter since, or smtpbridge trace", r.maxBytes/1e6)
			return errBudget
		}
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line over 1 MiB is no event of ours: skip it.
			st.Bytes += int64(len(line))
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				st.Bytes += int64(len(line))
			}
			continue
		}
		if len(line) > 0 {
			st.Bytes += int64(len(line))
			st.Lines++
			if ferr := fn(line); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("trace: %s: %w", name, err)
		}
	}
}

// ParseWhen reads a time as the CLI and the status page take it: "2h",
// "30m" or "7d" before now, or an RFC 3339 time; "" is the zero time.
func ParseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if _, err := fmt.Sscanf(d, "%d", &n); err == nil && n >= 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (2h, 30m, 7d) nor a time (2026-12-01T08:00:00Z)", s)
}
