package graph

import (
	"context"
	"sync"
	"time"
)

// Microsoft Graph's own limits per app and mailbox, beyond Exchange
// Online's (which the shared limiter keeps): requests per 10 minutes, and
// upload bytes per 5 minutes. A message waits for room rather than be
// throttled halfway through its draft.
var (
	requestsPer   = 10 * time.Minute
	maxRequests   = 10_000
	uploadsPer    = 5 * time.Minute
	maxUploadSize = int64(150 << 20)
)

// budget is one mailbox's recent requests and upload bytes.
type budget struct {
	mu       sync.Mutex
	requests []time.Time
	uploads  []upload
}

type upload struct {
	at    time.Time
	bytes int64
}

// budgets are the mailboxes' budgets.
type budgets struct {
	mu sync.Mutex
	m  map[string]*budget
}

func (b *budgets) of(mailbox string) *budget {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*budget{}
	}
	if b.m[mailbox] == nil {
		b.m[mailbox] = &budget{}
	}
	return b.m[mailbox]
}

// take waits until the mailbox may make requests more requests and
// upload bytes more bytes, and counts them. A message larger than the
// whole upload window goes when the window is empty.
func (b *budget) take(ctx context.Context, requests int, bytes int64) error {
	for {
		wait := b.try(time.Now(), requests, bytes)
		if wait <= 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// try counts the requests and bytes if they fit now, else says how long
// to wait.
func (b *budget) try(now time.Time, requests int, bytes int64) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.requests) > 0 && now.Sub(b.requests[0]) >= requestsPer {
		b.requests = b.requests[1:]
	}
	for len(b.uploads) > 0 && now.Sub(b.uploads[0].at) >= uploadsPer {
		b.uploads = b.uploads[1:]
	}
	var wait time.Duration
	if n := len(b.requests) + requests - maxRequests; n > 0 {
		wait = b.requests[min(n, len(b.requests))-1].Add(requestsPer).Sub(now)
	}
	if bytes > 0 {
		var used int64
		for _, u := range b.uploads {
			used += u.bytes
		}
		for i := 0; used+bytes > maxUploadSize && i < len(b.uploads); i++ {
			used -= b.uploads[i].bytes
			wait = max(wait, b.uploads[i].at.Add(uploadsPer).Sub(now))
		}
	}
	if wait > 0 {
		return wait
	}
	for range requests {
		b.requests = append(b.requests, now)
	}
	if bytes > 0 {
		b.uploads = append(b.uploads, upload{now, bytes})
	}
	return 0
}
