// Package trace finds messages in the audit log and tells each one's
// story: received from which device and address, each policy decision
// and attempt with Exchange's reply, delivered as which Exchange ID, or
// dead with why. It reads the log the bridge writes (log.audit_file) and
// its rotated files (.gz included); what it shows is what the log holds.
//
// A search is two passes over the files: the first finds the messages
// that match, looking only at the lines that contain what is searched
// for; the second gathers every event of those messages. A line is
// decoded only when it may matter, so a gigabyte of log is searched in
// seconds.
package trace

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
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
}

// SearchLog searches the audit log at path and its rotated files.
func SearchLog(path string, q Query, limit int) ([]Story, Stats, error) {
	files, err := Files(path)
	if err != nil {
		return nil, Stats{}, err
	}
	return Search(files, q, limit)
}

// Search returns the stories of the messages that match q, oldest first,
// at most limit of them (the newest; 0: all).
func Search(files []string, q Query, limit int) ([]Story, Stats, error) {
	var st Stats
	var read []string
	first := 0 // the oldest file pass 2 reads
	for i, f := range files {
		if !q.Since.IsZero() {
			if fi, err := os.Stat(f); err == nil && fi.ModTime().Before(q.Since) {
				st.Skipped++ // its last event is older than Since
				first = i
				continue
			}
		}
		read = append(read, f)
	}
	st.Files = len(read)
	fs := q.filters()
	full := uint32(1)<<len(fs) - 1
	matched := map[string]uint32{}
	var order []string
	// Pass 1: the messages whose events meet every filter.
	for _, f := range read {
		err := eachLine(f, &st, func(line []byte) error {
			id := msgID(line)
			if id == nil {
				return nil
			}
			var ev *Event
			var bits uint32
			for i, flt := range fs {
				if !containsFold(line, flt.needle) {
					continue
				}
				if ev == nil {
					ev = &Event{}
					if json.Unmarshal(line, ev) != nil {
						return nil
					}
				}
				if flt.match(ev) {
					bits |= 1 << i
				}
			}
			if bits == 0 && len(fs) > 0 {
				return nil
			}
			if !q.Since.IsZero() || !q.Until.IsZero() {
				t, ok := lineTime(line)
				if !ok || !q.Since.IsZero() && t.Before(q.Since) || !q.Until.IsZero() && t.After(q.Until) {
					return nil
				}
			}
			sid := string(id)
			old, seen := matched[sid]
			if !seen {
				order = append(order, sid)
			}
			matched[sid] = old | bits
			return nil
		})
		if err != nil {
			return nil, st, err
		}
	}
	var ids []string
	for _, id := range order {
		if matched[id] == full {
			ids = append(ids, id)
		}
	}
	if limit > 0 && len(ids) > limit {
		ids = ids[len(ids)-limit:]
	}
	if len(ids) == 0 {
		return nil, st, nil
	}
	want := map[string]*Story{}
	for _, id := range ids {
		want[id] = &Story{ID: id}
	}
	// Pass 2: every event of those messages, in the files read and the
	// one before them (a message's first events may be in the file
	// rotated just before its match).
	for _, f := range files[first:] {
		err := eachLine(f, &st, func(line []byte) error {
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
		if err != nil {
			return nil, st, err
		}
	}
	out := make([]Story, 0, len(ids))
	for _, id := range ids {
		s := want[id]
		slices.SortStableFunc(s.Events, func(a, b Event) int { return a.Time.Compare(b.Time) })
		out = append(out, *s)
	}
	return out, st, nil
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

// eachLine calls fn with each line of the file (gunzipped when it ends
// in .gz); the line is valid only during the call.
func eachLine(name string, st *Stats, fn func([]byte) error) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(name, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("trace: %s: %w", name, err)
		}
		defer gz.Close()
		r = gz
	}
	br := bufio.NewReaderSize(r, 1<<20)
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line over 1 MiB is no event of ours: skip it.
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
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
