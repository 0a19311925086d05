// Package spool keeps accepted messages on disk until Exchange Online takes
// them. It is the store in store-and-forward: a message the device got a
// 250 for is in the spool, durably, before that 250 is sent.
//
// Layout under the spool directory:
//
//	tmp/          files being written; removed at Open
//	queue/ID.eml  the message as it will be submitted
//	queue/ID.json its metadata: the commit record
//	dead/         the same pair, for messages that will never be delivered
//
// Each file is written under tmp/, fsynced, renamed into place, and the
// directory fsynced. The .json is written last: a message exists only when
// its metadata does, so a crash while a message arrives leaves at most an
// orphaned .eml, removed at the next Open (its device never got a 250).
//
// Metadata holds the envelope, device, tenant and delivery state. It must
// never hold a password, a client secret, a token or the message body.
package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/durable"
	"github.com/smtpbridge/smtpbridge/message"
)

// Meta is what the spool knows about a message besides its bytes.
type Meta struct {
	ID          string    `json:"id"`
	Device      string    `json:"device"`
	Tenant      string    `json:"tenant"`
	Mailbox     string    `json:"mailbox"`
	From        string    `json:"from"`
	HeaderFrom  string    `json:"header_from,omitempty"`
	To          []string  `json:"to"`
	Size        int64     `json:"size"`
	Received    time.Time `json:"received"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastReply   string    `json:"last_reply,omitempty"`
	// DeadReason says why a message is in dead/.
	DeadReason string `json:"dead_reason,omitempty"`
	// Requeued is when an admin moved the message back from the dead
	// letters; max_age counts from it.
	Requeued time.Time `json:"requeued,omitzero"`
	// DSNFor is the ID of the message this one reports as undeliverable;
	// a failed report gets no report of its own.
	DSNFor string `json:"dsn_for,omitempty"`
	// DSN is what the device asked of delivery status notifications.
	DSN *message.DSN `json:"dsn,omitempty"`
	// Attempting is on disk from before an attempt starts until it
	// settles: found set when the queue loads, it means the bridge
	// stopped (crashed, was killed) during the message's attempt.
	Attempting bool `json:"attempting,omitempty"`
	// Strikes counts the message's attempts in a row that panicked, ran
	// past their time bound or ended with the bridge: the queue's
	// poison rule buries the message at the second.
	Strikes int `json:"strikes,omitempty"`
}

// Since is when the message's max_age started: when it was received, or
// requeued.
func (m Meta) Since() time.Time {
	if m.Requeued.After(m.Received) {
		return m.Requeued
	}
	return m.Received
}

// Spool is an open spool directory. Its methods are safe for concurrent
// use on different message IDs.
type Spool struct {
	dir     string
	use     usage
	counted chan struct{} // closed when countFound is done
}

const (
	tmpDir   = "tmp"
	queueDir = "queue"
	deadDir  = "dead"
)

// ErrNotFound is returned for an ID not in the queue (or dead letters).
var ErrNotFound = errors.New("message not in the spool")

// Open creates the directory layout if needed, removes what a crash left
// half-written, and returns the spool.
func Open(dir string) (*Spool, error) {
	s, err := OpenBackground(dir)
	if err != nil {
		return nil, err
	}
	<-s.counted
	return s, nil
}

// OpenBackground is Open, but counts the bytes of the messages already in
// the spool in the background, so that a bridge with 100,000 queued
// listens at once (reading them takes seconds). Until they are counted
// the bounds see only what came since: a spool at its bound may take a
// few more messages in those seconds, never lose one.
func OpenBackground(dir string) (*Spool, error) {
	s := &Spool{dir: dir, counted: make(chan struct{})}
	for _, d := range []string{tmpDir, queueDir, deadDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	if err := s.recover(); err != nil {
		return nil, err
	}
	var ids []string
	for _, d := range []string{queueDir, deadDir} {
		entries, err := os.ReadDir(filepath.Join(s.dir, d))
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		for _, e := range entries {
			if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && validID(id) {
				ids = append(ids, id)
			}
		}
	}
	s.use.uncounted = make(map[string]bool, len(ids))
	for _, id := range ids {
		s.use.uncounted[id] = true
	}
	go s.countFound(ids)
	return s, nil
}

// countFound counts the messages Open found, each once: one removed
// meanwhile was not counted and is not taken off (usage.forget).
func (s *Spool) countFound(ids []string) {
	defer close(s.counted)
	beforeCount()
	// From the end: a listing at the same time (the queue's load) reads
	// from the start, and the two meet in the middle.
	for _, id := range slices.Backward(ids) {
		if !s.use.uncountedYet(id) {
			continue // a listing (the queue's load) counted it
		}
		m, err := s.readMeta(queueDir, id)
		if err != nil {
			if m, err = s.readMeta(deadDir, id); err != nil {
				// Gone (a Remove under way, whose forget then strikes it
				// off uncounted without taking its bytes off), or
				// unreadable (whoever lists it reports it).
				continue
			}
		}
		s.use.found(id, m.Device, m.Size)
	}
}

// beforeCount runs before the background count starts (tests hold it).
var beforeCount = func() {}

// Counted is closed once the messages found at Open are counted.
func (s *Spool) Counted() <-chan struct{} { return s.counted }

// Dir is the spool's directory.
func (s *Spool) Dir() string { return s.dir }

func (s *Spool) recover() error {
	tmps, err := os.ReadDir(filepath.Join(s.dir, tmpDir))
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	for _, e := range tmps {
		os.Remove(filepath.Join(s.dir, tmpDir, e.Name()))
	}
	// What each directory holds, from one listing each: with 100,000
	// queued, a stat per file would take a second before the bridge
	// listens.
	queued, err := names(filepath.Join(s.dir, queueDir))
	if err != nil {
		return err
	}
	dead, err := names(filepath.Join(s.dir, deadDir))
	if err != nil {
		return err
	}
	for name := range queued {
		if strings.HasPrefix(name, ".") && strings.Contains(name, durable.TempSuffix) {
			// Metadata a crash caught being written; the old one stands.
			os.Remove(filepath.Join(s.dir, queueDir, name))
			continue
		}
		if id, ok := strings.CutSuffix(name, ".eml"); ok && !queued[id+".json"] {
			if dead[id+".json"] {
				// A crash in the middle of Requeue: undo it.
				if err := durable.Rename(s.dataPath(queueDir, id), s.dataPath(deadDir, id)); err != nil {
					return fmt.Errorf("spool: %w", err)
				}
				dead[id+".eml"] = true
				continue
			}
			// Never committed: the device did not get a 250 for it.
			os.Remove(filepath.Join(s.dir, queueDir, name))
		}
		if id, ok := strings.CutSuffix(name, ".json"); ok && !queued[id+".eml"] && dead[id+".eml"] {
			// A crash in the middle of Bury: finish it.
			if m, err := s.readMeta(queueDir, id); err == nil {
				if m.DeadReason == "" {
					m.DeadReason = "moved to dead letters (completed after a restart)"
				}
				if err := s.writeMeta(deadDir, m); err != nil {
					return err
				}
			}
			os.Remove(s.metaPath(queueDir, id))
		}
	}
	for name := range dead {
		if strings.HasPrefix(name, ".") && strings.Contains(name, durable.TempSuffix) {
			os.Remove(filepath.Join(s.dir, deadDir, name))
			continue
		}
		if id, ok := strings.CutSuffix(name, ".json"); ok && !dead[id+".eml"] && queued[id+".json"] {
			// A crash at the end of Requeue: the queue has it.
			os.Remove(s.metaPath(deadDir, id))
		}
	}
	if err := syncDir(filepath.Join(s.dir, deadDir)); err != nil {
		return err
	}
	return syncDir(filepath.Join(s.dir, queueDir))
}

// names lists a directory's entries as a set.
func names(dir string) (map[string]bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	set := make(map[string]bool, len(entries))
	for _, e := range entries {
		set[e.Name()] = true
	}
	return set, nil
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func (s *Spool) dataPath(dir, id string) string { return filepath.Join(s.dir, dir, id+".eml") }
func (s *Spool) metaPath(dir, id string) string { return filepath.Join(s.dir, dir, id+".json") }

// Writer receives a message's bytes as they arrive. Nothing is in the
// queue until Commit returns nil; Abort (or a failed Commit) leaves no
// trace.
type Writer struct {
	s         *Spool
	meta      Meta
	f         *os.File
	n         int64
	nextCheck int64 // when to ask the filesystem for its free space again
	done      bool
}

// Create starts a message with the given metadata; meta.ID is set if empty.
func (s *Spool) Create(meta Meta) (*Writer, error) {
	if meta.ID == "" {
		meta.ID = message.NewID()
	}
	if !validID(meta.ID) {
		return nil, fmt.Errorf("spool: invalid message ID %q", meta.ID)
	}
	if err := s.checkFree(0); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), meta.ID+"-*.eml")
	if err != nil {
		return nil, fmt.Errorf("spool: create message file: %w", err)
	}
	return &Writer{s: s, meta: meta, f: f, nextCheck: freeCheckEvery}, nil
}

// checkFree refuses a write of n bytes that would leave less free space
// than the quota keeps.
func (s *Spool) checkFree(n int64) error {
	min := s.use.minFree()
	if min <= 0 {
		return nil
	}
	if free, err := freeBytes(s.dir); err == nil && free-n < min {
		return ErrFull
	}
	return nil
}

// ID is the message's ID.
func (w *Writer) ID() string { return w.meta.ID }

// Write implements io.Writer. It fails with ErrFull or ErrDeviceQuota
// rather than pass the spool's quota.
func (w *Writer) Write(p []byte) (int, error) {
	if err := w.s.use.add(w.meta.Device, w.meta.DSNFor == "", int64(len(p)), true); err != nil {
		return 0, err
	}
	if w.n+int64(len(p)) >= w.nextCheck {
		w.nextCheck += freeCheckEvery
		if err := w.s.checkFree(int64(len(p))); err != nil {
			w.s.use.add(w.meta.Device, w.meta.DSNFor == "", -int64(len(p)), false)
			return 0, err
		}
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	if short := int64(len(p) - n); short > 0 {
		w.s.use.add(w.meta.Device, w.meta.DSNFor == "", -short, false)
	}
	if err != nil {
		return n, fmt.Errorf("spool: write message: %w", err)
	}
	return n, nil
}

// Commit makes the message durable and queued, and returns its metadata.
func (w *Writer) Commit() (Meta, error) {
	if w.done {
		return Meta{}, errors.New("spool: writer already finished")
	}
	w.done = true
	m := w.meta
	m.Size = w.n
	if m.Received.IsZero() {
		m.Received = time.Now().UTC()
	}
	if m.NextAttempt.IsZero() {
		m.NextAttempt = m.Received
	}
	fail := func(err error) (Meta, error) {
		w.f.Close()
		os.Remove(w.f.Name())
		os.Remove(w.s.dataPath(queueDir, m.ID))
		w.s.use.add(m.Device, m.DSNFor == "", -w.n, false)
		return Meta{}, err
	}
	if err := w.f.Sync(); err != nil {
		return fail(fmt.Errorf("spool: sync message: %w", err))
	}
	if err := w.f.Close(); err != nil {
		return fail(fmt.Errorf("spool: close message: %w", err))
	}
	if err := durable.Rename(w.f.Name(), w.s.dataPath(queueDir, m.ID)); err != nil {
		return fail(fmt.Errorf("spool: %w", err))
	}
	if err := w.s.writeMeta(queueDir, m); err != nil {
		return fail(err)
	}
	return m, nil
}

// Abort discards the message.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	os.Remove(w.f.Name())
	w.s.use.add(w.meta.Device, w.meta.DSNFor == "", -w.n, false)
}

// writeMeta writes meta atomically and durably into dir.
func (s *Spool) writeMeta(dir string, m Meta) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("spool: encode metadata: %w", err)
	}
	if err := durable.WriteFile(s.metaPath(dir, m.ID), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("spool: write metadata: %w", err)
	}
	return nil
}

// Update rewrites a queued message's metadata (attempts, next attempt,
// last reply). It is durable when it returns.
func (s *Spool) Update(m Meta) error {
	if !validID(m.ID) {
		return ErrNotFound
	}
	if _, err := os.Stat(s.metaPath(queueDir, m.ID)); err != nil {
		return fmt.Errorf("%w: %s", ErrNotFound, m.ID)
	}
	return s.writeMeta(queueDir, m)
}

// List returns the queued messages, oldest first. Metadata that cannot be
// read is reported in the error alongside what could be read.
func (s *Spool) List() ([]Meta, error) { return s.list(queueDir) }

// Dead returns the dead letters, oldest first.
func (s *Spool) Dead() ([]Meta, error) { return s.list(deadDir) }

func (s *Spool) list(dir string) ([]Meta, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, dir))
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			ids = append(ids, id)
		}
	}
	// Reading a record is mostly decoding it: 100,000 take seconds on
	// one core, so the cores share them.
	workers := min(runtime.GOMAXPROCS(0), 4, len(ids)/256+1)
	outs, errss := make([][]Meta, workers), make([][]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(ids); i += workers {
				m, err := s.readMeta(dir, ids[i])
				if err != nil {
					errss[w] = append(errss[w], err)
					continue
				}
				// The queue's load at start reads what the background
				// count would: each record is read once.
				s.use.found(ids[i], m.Device, m.Size)
				outs[w] = append(outs[w], m)
			}
		}()
	}
	wg.Wait()
	out, errs := slices.Concat(outs...), slices.Concat(errss...)
	slices.SortFunc(out, func(a, b Meta) int { return a.Received.Compare(b.Received) })
	return out, errors.Join(errs...)
}

func (s *Spool) readMeta(dir, id string) (Meta, error) {
	data, err := os.ReadFile(s.metaPath(dir, id))
	if errors.Is(err, fs.ErrNotExist) {
		return Meta{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Meta{}, fmt.Errorf("spool: %w", err)
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return Meta{}, fmt.Errorf("spool: metadata of %s: %w", id, err)
	}
	return m, nil
}

// Get returns a queued message's metadata.
func (s *Spool) Get(id string) (Meta, error) {
	if !validID(id) {
		return Meta{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return s.readMeta(queueDir, id)
}

// Open returns a reader for a queued message's bytes.
func (s *Spool) Open(id string) (io.ReadCloser, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	f, err := os.Open(s.dataPath(queueDir, id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return f, err
}

// Remove deletes a delivered message: metadata first, so that a crash in
// between leaves an orphaned .eml that Open cleans up, never a message
// that would be delivered a second time. The directory is not fsynced,
// as in Postfix: a power loss right after may bring the message back and
// deliver it twice, which at-least-once allows, and a delivered message
// costs one fsync less.
func (s *Spool) Remove(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	m, _ := s.readMeta(queueDir, id)
	if err := s.removeQueued(id); err != nil {
		return err
	}
	s.use.forget(id, m.Device, m.Size, true)
	return nil
}

// removeQueued removes a queued message's files; its bytes still count.
func (s *Spool) removeQueued(id string) error {
	if err := durable.Remove(s.metaPath(queueDir, id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return fmt.Errorf("spool: %w", err)
	}
	durable.Remove(s.dataPath(queueDir, id))
	return nil
}

// Bury moves a queued message to the dead letters with the reason. m is
// the metadata to keep (its latest attempt count and reply); m.ID names
// the message.
func (s *Spool) Bury(m Meta, reason string) error {
	id := m.ID
	if _, err := s.Get(id); err != nil {
		return err
	}
	m.DeadReason = reason
	if err := durable.Rename(s.dataPath(queueDir, id), s.dataPath(deadDir, id)); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := s.writeMeta(deadDir, m); err != nil {
		return err
	}
	// Its bytes move with it: they still count.
	return s.removeQueued(id)
}

// DeadCount counts the dead letters without reading them.
func (s *Spool) DeadCount() (int, error) { return s.count(deadDir) }

// QueuedCount counts the queued messages without reading them.
func (s *Spool) QueuedCount() (int, error) { return s.count(queueDir) }

func (s *Spool) count(dir string) (int, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, dir))
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			n++
		}
	}
	return n, nil
}

// CheckWritable creates, syncs and removes a small file in the spool, to
// tell whether the spool can take messages right now.
func (s *Spool) CheckWritable() error {
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), "ready-*")
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	_, werr := f.Write([]byte("ok\n"))
	serr := f.Sync()
	cerr := f.Close()
	os.Remove(f.Name())
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// GetDead returns a dead letter's metadata.
func (s *Spool) GetDead(id string) (Meta, error) {
	if !validID(id) {
		return Meta{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return s.readMeta(deadDir, id)
}

// OpenDead returns a reader for a dead letter's bytes.
func (s *Spool) OpenDead(id string) (io.ReadCloser, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	f, err := os.Open(s.dataPath(deadDir, id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return f, err
}

// Requeue moves a dead letter back into the queue, due now, with its
// max_age restarted.
func (s *Spool) Requeue(id string) (Meta, error) {
	m, err := s.GetDead(id)
	if err != nil {
		return Meta{}, err
	}
	now := time.Now().UTC()
	m.DeadReason, m.Requeued, m.NextAttempt = "", now, now
	// Data first, then the queue's record, then the dead one's: Open
	// finishes or undoes a crash at any point.
	if err := durable.Rename(s.dataPath(deadDir, id), s.dataPath(queueDir, id)); err != nil {
		return Meta{}, fmt.Errorf("spool: %w", err)
	}
	if err := s.writeMeta(queueDir, m); err != nil {
		durable.Rename(s.dataPath(queueDir, id), s.dataPath(deadDir, id))
		return Meta{}, err
	}
	durable.Remove(s.metaPath(deadDir, id))
	return m, syncDir(filepath.Join(s.dir, deadDir))
}

// RemoveDead deletes a dead letter.
func (s *Spool) RemoveDead(id string) error {
	if !validID(id) {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	m, _ := s.readMeta(deadDir, id)
	if err := durable.Remove(s.metaPath(deadDir, id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return fmt.Errorf("spool: %w", err)
	}
	durable.Remove(s.dataPath(deadDir, id))
	s.use.forget(id, m.Device, m.Size, true)
	return syncDir(filepath.Join(s.dir, deadDir))
}

func syncDir(dir string) error {
	if err := durable.SyncDir(dir); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}
