package trace

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"time"
)

// followPoll is how often Follow looks for new lines.
var followPoll = 250 * time.Millisecond

// maxFollowed bounds the messages Follow keeps events of while they do
// not match yet.
const maxFollowed = 10_000

// Follow watches the audit log at path from its end and calls fn with
// each new event of a message that matches q (with the message's
// earlier events first, once it matches), until ctx ends. It follows
// the file across a rotation.
func Follow(ctx context.Context, path string, q Query, fn func(Event)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { f.Close() }()
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return err
	}
	br := bufio.NewReader(f)
	fs := q.filters()
	full := uint32(1)<<len(fs) - 1
	type msg struct {
		bits    uint32
		shown   bool
		pending []Event
	}
	msgs := map[string]*msg{}
	var order []string
	var partial []byte
	for {
		line, err := br.ReadBytes('\n')
		if err == nil {
			line = append(partial, line...)
			partial = nil
			var ev Event
			if json.Unmarshal(line, &ev) != nil || ev.MsgID == "" {
				continue
			}
			if !q.Since.IsZero() && ev.Time.Before(q.Since) || !q.Until.IsZero() && ev.Time.After(q.Until) {
				continue
			}
			m := msgs[ev.MsgID]
			if m == nil {
				m = &msg{}
				msgs[ev.MsgID] = m
				order = append(order, ev.MsgID)
				if len(order) > maxFollowed {
					delete(msgs, order[0])
					order = order[1:]
				}
			}
			for i, flt := range fs {
				if flt.match(&ev) {
					m.bits |= 1 << i
				}
			}
			switch {
			case m.shown:
				fn(ev)
			case m.bits == full:
				m.shown = true
				for _, p := range m.pending {
					fn(p)
				}
				m.pending = nil
				fn(ev)
			default:
				m.pending = append(m.pending, ev)
			}
			continue
		}
		partial = append(partial, line...)
		if err != io.EOF {
			return err
		}
		// At the end: wait, and reopen if the file was rotated.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(followPoll):
		}
		if cur, err := os.Stat(path); err == nil {
			if old, err := f.Stat(); err == nil && !os.SameFile(cur, old) {
				nf, err := os.Open(path)
				if err == nil {
					f.Close()
					f, br, partial = nf, bufio.NewReader(nf), nil
				}
			}
		}
	}
}
