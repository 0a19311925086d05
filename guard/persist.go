package guard

import (
	"fmt"
	"slices"

	"github.com/smtpbridge/smtpbridge/internal/statefile"
)

// maxSavedBlocks bounds the blocks kept across a restart: the ones that
// end last are kept.
const maxSavedBlocks = 10_000

// Save writes the blocks in force to path, if they changed since the last
// Save, so that a restart does not lift them.
func (g *Guard) Save(path string) error {
	g.mu.Lock()
	if !g.dirty {
		g.mu.Unlock()
		return nil
	}
	var out []Block
	for k, b := range g.blocks {
		if g.blockedLocked(k) {
			out = append(out, *b)
		}
	}
	g.dirty = false
	g.mu.Unlock()
	slices.SortFunc(out, func(x, y Block) int { return y.Until.Compare(x.Until) })
	if len(out) > maxSavedBlocks {
		out = out[:maxSavedBlocks]
	}
	if out == nil {
		out = []Block{}
	}
	if err := statefile.WriteJSON(path, out); err != nil {
		g.mu.Lock()
		g.dirty = true
		g.mu.Unlock()
		return fmt.Errorf("save blocks: %w", err)
	}
	return nil
}

// Load restores the blocks Save wrote, those not yet ended, counted by the
// current settings (an address now exempt is not blocked). A missing file
// is no error.
func (g *Guard) Load(path string) error {
	var in []Block
	if _, err := statefile.ReadJSON(path, &in); err != nil {
		return fmt.Errorf("blocks: %w", err)
	}
	if len(in) > maxSavedBlocks {
		in = in[:maxSavedBlocks]
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	for _, b := range in {
		k, ok := g.clientKey(b.Addr)
		if !ok {
			continue
		}
		if !now.Before(b.Until) || g.exemptKey(k) {
			continue
		}
		if old := g.blocks[k]; old != nil && !old.Until.Before(b.Until) {
			continue
		}
		b.Addr = keyString(k)
		g.blocks[k] = &b
	}
	return nil
}
