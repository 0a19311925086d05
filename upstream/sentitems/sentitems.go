// Package sentitems keeps a sending mailbox's Sent Items small: Exchange
// keeps a copy of every message submitted as the mailbox, over SMTP AUTH
// or Graph, and a busy scanner's mailbox reaches its quota in months
// (then every submission fails with 554 5.2.2, and Exchange throttles
// the mailbox). With sent_items.keep, the bridge deletes the copies of
// its own submissions once older than that: each found in Sent Items by
// the internetMessageId of the message the bridge delivered, never by
// folder or age alone, and purged through Graph (Mail.ReadWrite).
// Nothing else in a mailbox is touched.
package sentitems

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/durable"
)

// Entry is a delivered message whose copy is to leave Sent Items.
type Entry struct {
	Tenant    string        `json:"tenant"`
	Mailbox   string        `json:"mailbox"`
	MessageID string        `json:"message_id"` // with its angle brackets, as Graph's internetMessageId
	Sent      time.Time     `json:"sent"`
	Keep      time.Duration `json:"keep"`
	// Tries counts the searches that did not find the copy yet.
	Tries int `json:"tries,omitempty"`
}

// Requester makes a Graph request about a tenant's mailbox (the Graph
// transport's Request).
type Requester interface {
	Request(ctx context.Context, tenant, mailbox, method, pathQuery string) (int, []byte, error)
}

// Bounds: the entries kept (the oldest go past it: their copies stay),
// the Received events remembered until their delivery, the copies one
// sweep deletes, the tries to find a copy (a person may have deleted it
// already), the journal file read at start.
const (
	maxEntries     = 200_000
	maxPending     = 100_000
	maxPerSweep    = 500
	maxTries       = 24
	maxJournalSize = 64 << 20
)

// Cleaner records the bridge's deliveries from mailboxes with
// sent_items.keep and deletes their copies when due.
type Cleaner struct {
	path string
	req  Requester
	log  zerolog.Logger
	// keep says how long device's copies stay; zero: not deleted.
	keep atomic.Pointer[func(device string) time.Duration]

	mu      sync.Mutex
	entries []Entry
	pending map[string]pendingMsg // by the bridge's message ID, from Received
	denied  map[string]time.Time  // mailboxes Graph refused, when last said
	dirty   bool
}

type pendingMsg struct{ messageID, device string }

// New returns a cleaner whose journal is the file at path (in the spool
// directory), loaded now; keep says how long each device's copies stay.
func New(path string, req Requester, keep func(device string) time.Duration, log zerolog.Logger) (*Cleaner, error) {
	c := &Cleaner{path: path, req: req, log: log, pending: map[string]pendingMsg{}, denied: map[string]time.Time{}}
	c.keep.Store(&keep)
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

// SetKeep takes a reloaded config's keep.
func (c *Cleaner) SetKeep(keep func(device string) time.Duration) { c.keep.Store(&keep) }

// keepFor is how long device's copies stay.
func (c *Cleaner) keepFor(device string) time.Duration { return (*c.keep.Load())(device) }

func (c *Cleaner) load() error {
	f, err := durable.OpenNoFollow(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sent items journal: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxJournalSize))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		var e Entry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.MessageID != "" && len(c.entries) < maxEntries {
			c.entries = append(c.entries, e)
		}
	}
	return nil
}

// Observe implements audit.Observer: a device's message remembered at
// Received (its Message-ID), recorded at Delivered when its device's
// copies are to go.
func (c *Cleaner) Observe(ev audit.Event) {
	if ev.DSNFor != "" {
		return // the bridge's own reports: no device's Message-ID
	}
	switch ev.Kind {
	case audit.Received:
		if ev.MessageID == "" || c.keepFor(ev.Device) <= 0 {
			return
		}
		c.mu.Lock()
		if len(c.pending) >= maxPending {
			clear(c.pending) // those copies stay; the log says nothing of each
		}
		c.pending[ev.MsgID] = pendingMsg{messageID: ev.MessageID, device: ev.Device}
		c.mu.Unlock()
	case audit.Delivered:
		if ev.Rcpts == 0 {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		p, ok := c.pending[ev.MsgID]
		if !ok {
			return
		}
		delete(c.pending, ev.MsgID)
		keep := c.keepFor(p.device)
		if keep <= 0 || !validMessageID(p.messageID) {
			return
		}
		if len(c.entries) >= maxEntries {
			c.entries = c.entries[1:]
		}
		e := Entry{Tenant: ev.Tenant, Mailbox: strings.ToLower(ev.Mailbox), MessageID: "<" + p.messageID + ">", Sent: time.Now().UTC(), Keep: keep}
		c.entries = append(c.entries, e)
		c.appendLocked(e)
	case audit.Bounced, audit.Dead, audit.Dropped:
		c.mu.Lock()
		delete(c.pending, ev.MsgID)
		c.mu.Unlock()
	}
}

// validMessageID accepts what may go into a Graph filter: printable
// ASCII without spaces or angle brackets, of a sane length.
func validMessageID(id string) bool {
	if id == "" || len(id) > 900 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if b := id[i]; b <= ' ' || b >= 0x7f || b == '<' || b == '>' {
			return false
		}
	}
	return true
}

// appendLocked adds an entry to the journal file (not synced: a copy
// whose entry a power cut loses stays in Sent Items, no more).
func (c *Cleaner) appendLocked(e Entry) {
	f, err := durable.OpenAppend(c.path, 0o600)
	if err != nil {
		c.log.Warn().Err(err).Msg("sent_items: could not record a delivered message; its copy stays in Sent Items")
		return
	}
	line, _ := json.Marshal(e)
	f.Write(append(line, '\n'))
	f.Close()
}

// Run sweeps every interval until ctx ends.
func (c *Cleaner) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Sweep(ctx)
		}
	}
}

// Sweep deletes the copies that are due, at most maxPerSweep, and
// returns how many it deleted.
func (c *Cleaner) Sweep(ctx context.Context) int {
	now := time.Now()
	c.mu.Lock()
	var due []Entry
	for _, e := range c.entries {
		if !now.Before(e.Sent.Add(e.Keep)) && len(due) < maxPerSweep {
			due = append(due, e)
		}
	}
	c.mu.Unlock()
	deleted := 0
	done := map[string]bool{}  // by MessageID: gone from the journal
	tried := map[string]bool{} // searched, not found
	for _, e := range due {
		if ctx.Err() != nil {
			break
		}
		n, found, err := c.purge(ctx, e)
		deleted += n
		switch {
		case err != nil:
			c.refused(e, err)
		case found:
			done[e.MessageID] = true
		default:
			tried[e.MessageID] = true
		}
	}
	if len(done) == 0 && len(tried) == 0 {
		return deleted
	}
	c.mu.Lock()
	kept := c.entries[:0]
	for _, e := range c.entries {
		if done[e.MessageID] {
			continue
		}
		if tried[e.MessageID] {
			// Not in Sent Items (yet, or deleted by a person): looked
			// for again at the next sweeps, then forgotten.
			if e.Tries++; e.Tries >= maxTries {
				continue
			}
		}
		kept = append(kept, e)
	}
	c.entries = kept
	err := c.rewriteLocked()
	c.mu.Unlock()
	if err != nil {
		c.log.Warn().Err(err).Msg("sent_items: could not rewrite the journal")
	}
	if deleted > 0 {
		c.log.Info().Int("deleted", deleted).Msg("sent_items: copies of the bridge's messages deleted from Sent Items")
	}
	return deleted
}

func (c *Cleaner) rewriteLocked() error {
	var b bytes.Buffer
	for _, e := range c.entries {
		line, _ := json.Marshal(e)
		b.Write(append(line, '\n'))
	}
	return durable.WriteFile(c.path, b.Bytes(), 0o600)
}

// purge finds e's copies in Sent Items and purges them.
func (c *Cleaner) purge(ctx context.Context, e Entry) (deleted int, found bool, err error) {
	filter := "internetMessageId eq '" + strings.ReplaceAll(e.MessageID, "'", "''") + "'"
	q := url.Values{"$filter": {filter}, "$select": {"id,internetMessageId"}}
	status, body, err := c.req.Request(ctx, e.Tenant, e.Mailbox, http.MethodGet, "/mailFolders/sentitems/messages?"+q.Encode())
	if err != nil {
		return 0, false, err
	}
	if status != http.StatusOK {
		return 0, false, graphError(status, body)
	}
	var list struct {
		Value []struct {
			ID                string `json:"id"`
			InternetMessageID string `json:"internetMessageId"`
		} `json:"value"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return 0, false, fmt.Errorf("Sent Items search: %w", err)
	}
	for _, m := range list.Value {
		if m.InternetMessageID != e.MessageID || m.ID == "" {
			continue // only the very message, whatever the search matched
		}
		found = true
		status, body, err := c.req.Request(ctx, e.Tenant, e.Mailbox, http.MethodPost, "/messages/"+url.PathEscape(m.ID)+"/permanentDelete")
		if err != nil {
			return deleted, found, err
		}
		switch status {
		case http.StatusNoContent, http.StatusOK, http.StatusNotFound:
			deleted++
		default:
			return deleted, found, graphError(status, body)
		}
	}
	return deleted, found, nil
}

// refused logs a failed sweep of a mailbox, once an hour.
func (c *Cleaner) refused(e Entry, err error) {
	c.mu.Lock()
	last := c.denied[e.Mailbox]
	quiet := time.Since(last) < time.Hour
	if !quiet {
		c.denied[e.Mailbox] = time.Now()
	}
	c.mu.Unlock()
	if !quiet {
		c.log.Warn().Err(err).Str("tenant", e.Tenant).Str("mailbox", e.Mailbox).
			Msg("sent_items: could not delete the copies of the bridge's messages from Sent Items; the app needs Mail.ReadWrite (Microsoft Graph) for the mailbox")
	}
}

func graphError(status int, body []byte) error {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	json.Unmarshal(body, &e)
	return fmt.Errorf("Graph answered %d %s", status, e.Error.Code)
}

// Len is how many copies wait to be deleted.
func (c *Cleaner) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
