package status

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/statefile"
)

// stateFile is what the board keeps across restarts: when each device was
// last seen, so that the page and the silent-device alert do not forget a
// device's history when the bridge restarts.
type stateFile struct {
	Devices map[string]*deviceState `json:"devices"`
	// History is the charts' last 24 hours, overall and per device.
	History       []bucket            `json:"history,omitempty"`
	DeviceHistory map[string][]bucket `json:"device_history,omitempty"`
}

// Load reads the board's saved state from path (missing is fine) and
// remembers path for Save.
func (b *Board) Load(path string) error {
	b.mu.Lock()
	b.statFile = path
	b.mu.Unlock()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("status state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		// Not worth refusing to start over: the page starts afresh.
		return fmt.Errorf("status state %s is not valid JSON (starting afresh): %w", path, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.hist.merge(st.History, now)
	for name, saved := range st.DeviceHistory {
		h := b.devHist[name]
		if h == nil {
			h = &history{}
			b.devHist[name] = h
		}
		h.merge(saved, now)
	}
	for name, saved := range st.Devices {
		if saved == nil {
			continue
		}
		d := b.device(name)
		if saved.LastSeen.After(d.LastSeen) {
			d.LastSeen = saved.LastSeen
		}
		if saved.LastMessage.After(d.LastMessage) {
			d.LastMessage = saved.LastMessage
		}
	}
	return nil
}

// Save writes the state if it changed since the last Save. The write is
// atomic (temporary file, rename); it is not fsynced, since losing the
// last seconds of last-seen times to a power cut does no harm.
func (b *Board) Save() error {
	b.mu.Lock()
	if !b.dirty || b.statFile == "" {
		b.mu.Unlock()
		return nil
	}
	st := stateFile{Devices: map[string]*deviceState{}}
	for name, d := range b.devices {
		if d.LastSeen.IsZero() && d.LastMessage.IsZero() {
			continue
		}
		st.Devices[name] = &deviceState{LastSeen: d.LastSeen.UTC(), LastMessage: d.LastMessage.UTC()}
	}
	now := time.Now()
	st.History = b.hist.saved(now)
	st.DeviceHistory = map[string][]bucket{}
	for name, h := range b.devHist {
		if _, configured := b.devices[name]; !configured {
			continue
		}
		if saved := h.saved(now); len(saved) > 0 {
			st.DeviceHistory[name] = saved
		}
	}
	path := b.statFile
	b.dirty = false
	b.mu.Unlock()

	if err := statefile.WriteJSON(path, st); err != nil {
		b.markDirty()
		return fmt.Errorf("status state: %w", err)
	}
	return nil
}

func (b *Board) markDirty() {
	b.mu.Lock()
	b.dirty = true
	b.mu.Unlock()
}
