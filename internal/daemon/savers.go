package daemon

import (
	"path/filepath"
	"time"
)

// How often what the bridge keeps across restarts besides the spool is
// written to the spool directory.
const (
	// stateSaveEvery: the status page's last-seen times, the mailboxes'
	// recipient counts, the queue's size for the page's chart.
	stateSaveEvery = 30 * time.Second
	// blocksSaveEvery: a new or lifted block, so that a crash does not
	// lift it.
	blocksSaveEvery = 2 * time.Second
)

// saver is one thing the bridge keeps across restarts: written every
// interval and once more at the stop; a failure is logged as what could
// not be saved.
type saver struct {
	what  string
	every time.Duration
	save  func() error
}

// loadState reads what the last run saved: the blocks in force and the
// mailboxes' recipient counts of the last day (the status page's times
// are read with the board); and lists the savers that write them.
func (d *Daemon) loadState() {
	dir := d.cfg.Spool.Dir
	blocks, quota := filepath.Join(dir, "blocks.json"), filepath.Join(dir, "quota.json")
	if err := d.path.Guard.Load(blocks); err != nil {
		d.log.Warn().Err(err).Msg("the blocks in force at the last stop could not be read; none are restored")
	} else if n := len(d.path.Guard.Blocks()); n > 0 {
		d.log.Info().Int("blocked", n).Msg("blocks restored from the last run")
	}
	if err := d.path.Limiter.Load(quota); err != nil {
		d.log.Warn().Err(err).Msg("the mailboxes' recipient counts of the last day could not be read; they start from zero")
	}
	d.savers = []saver{
		{"the blocks", blocksSaveEvery, func() error { return d.path.Guard.Save(blocks) }}, // only when they changed
		{"the status page's last-seen times", stateSaveEvery, d.board.Save},
		{"the mailboxes' recipient counts", stateSaveEvery, func() error { return d.path.Limiter.Save(quota) }},
		{"the queue's size for the status page", stateSaveEvery, func() error {
			st := d.path.Queue.Stats()
			d.board.SampleQueue(st.Queued + st.Deferred)
			return nil
		}},
	}
}

// startSavers runs each saver every interval until stop, then each once
// more; done is closed when they have.
func (d *Daemon) startSavers(stop <-chan struct{}) (done <-chan struct{}) {
	donec := make(chan struct{})
	go func() {
		defer close(donec)
		const tick = time.Second
		t := time.NewTicker(tick)
		defer t.Stop()
		last := make([]time.Time, len(d.savers))
		for i := range last {
			last[i] = time.Now()
		}
		for {
			select {
			case now := <-t.C:
				for i, s := range d.savers {
					if now.Sub(last[i]) >= s.every-tick/2 {
						last[i] = now
						d.run(s)
					}
				}
			case <-stop:
				for _, s := range d.savers {
					d.run(s)
				}
				return
			}
		}
	}()
	return donec
}

func (d *Daemon) run(s saver) {
	if err := s.save(); err != nil {
		d.log.Warn().Err(err).Msg("could not save " + s.what)
	}
}
