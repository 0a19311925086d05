package graph

import (
	"testing"
	"time"
)

// A mailbox's requests and upload bytes stay within Graph's windows: what
// does not fit waits until the oldest leaves the window.
func TestBudget(t *testing.T) {
	defer func(r, u time.Duration, mr int, mu int64) {
		requestsPer, uploadsPer, maxRequests, maxUploadSize = r, u, mr, mu
	}(requestsPer, uploadsPer, maxRequests, maxUploadSize)
	requestsPer, uploadsPer, maxRequests, maxUploadSize = 10*time.Minute, 5*time.Minute, 10, 150

	b := &budget{}
	t0 := time.Now()
	if w := b.try(t0, 8, 100); w != 0 {
		t.Fatalf("the first message waits %s", w)
	}
	if w := b.try(t0.Add(time.Minute), 3, 0); w != 9*time.Minute {
		t.Errorf("11 requests in 10 minutes: wait %s, want 9m (until the first leave the window)", w)
	}
	if w := b.try(t0.Add(time.Minute), 1, 60); w != 4*time.Minute {
		t.Errorf("160 bytes in 5 minutes: wait %s, want 4m", w)
	}
	if w := b.try(t0.Add(5*time.Minute), 1, 60); w != 0 {
		t.Errorf("once the upload left its window: wait %s", w)
	}
	// Larger than the whole window: goes once the window is empty.
	if w := b.try(t0.Add(6*time.Minute), 1, 500); w != 4*time.Minute {
		t.Errorf("an upload over the window's bound: wait %s, want 4m (the window empty)", w)
	}
	if w := b.try(t0.Add(10*time.Minute), 1, 500); w != 0 {
		t.Errorf("an upload over the bound, window empty: wait %s", w)
	}
}
