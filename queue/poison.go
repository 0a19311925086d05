package queue

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/spool"
)

// The poison rule: no message may hold a mailbox's lane, a core or the
// shutdown hostage. An attempt that panics, runs past AttemptLimit, or
// is still running when the bridge ends (found at the next start by the
// Attempting mark on disk) is a strike against its message; a message
// with maxStrikes strikes in a row goes to the dead letters with the
// reason, instead of being tried for ever.
const (
	// DefaultAttemptLimit bounds one attempt, from its start to its
	// end, when Settings.AttemptLimit is 0: twice the longest a
	// transport gives a submission once it has its slot (Microsoft
	// Graph's 15 minutes; SMTP's is 10), so that no attempt the
	// transports time themselves reaches it.
	DefaultAttemptLimit = 30 * time.Minute
	// maxStrikes is how many strikes in a row bury a message.
	maxStrikes = 2
)

// abandonAfter is how long an attempt whose context ended (its limit, or
// the shutdown) may take to return before it is abandoned: settled as a
// strike while its goroutine runs on. Tests shorten it.
var abandonAfter atomic.Int64 // a time.Duration: 5 s (init)

func init() { abandonAfter.Store(int64(5 * time.Second)) }

// errStopped is the strike found at start: the bridge ended during the
// message's attempt.
var errStopped = errors.New("the bridge stopped (crashed, or was killed) during the message's attempt")

// strikeError is an attempt that panicked or ran past its limit: not
// the message's delivery failing, the attempt failing to end. The device
// of a hybrid session gets a temporary local failure.
func strikeError(err error) *message.Error {
	return &message.Error{Class: message.Temporary, Stage: message.StageSource, Err: err}
}

func (q *Queue) attemptLimit() time.Duration {
	if l := q.settings().AttemptLimit; l > 0 {
		return l
	}
	return DefaultAttemptLimit
}

// attemptOnce makes one attempt at msg within the attempt limit, and says
// whether it was a strike: it panicked, or did not end by the limit.
// An attempt that does not return within abandonAfter of its context's
// end is abandoned; abandoned is then closed when it does return at
// last (nil when it returned).
func (q *Queue) attemptOnce(msg *message.Message, log zerolog.Logger) (receipt message.Receipt, err error, strike bool, abandoned <-chan struct{}) {
	limit := q.attemptLimit()
	// Only the limit or the shutdown end ctx while the attempt runs: the
	// attempt's own end must not look like either.
	ctx, cancel := context.WithTimeout(q.ctx, limit)
	defer cancel()
	type ended struct {
		result
		panicked bool
	}
	done := make(chan ended, 1)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		defer func() {
			if v := recover(); v != nil {
				// The value of a runtime error is safe to log; any other
				// value could carry the message's own bytes: its type only.
				what := fmt.Sprintf("a panic of type %T", v)
				if re, ok := v.(runtime.Error); ok {
					what = re.Error()
				}
				log.Error().Str("panic", what).Bytes("stack", debug.Stack()).Msg("an attempt panicked; the message is tried again, and buried if it does so twice in a row")
				done <- ended{result{err: strikeError(fmt.Errorf("the attempt panicked (%s)", what))}, true}
			}
		}()
		r, err := q.o.Transport.Deliver(ctx, msg)
		done <- ended{result: result{r, err}}
	}()
	overrun := strikeError(fmt.Errorf("the attempt ran past its limit of %s", limit))
	select {
	case e := <-done:
		if !e.panicked && errors.Is(ctx.Err(), context.DeadlineExceeded) && q.ctx.Err() == nil {
			return message.Receipt{}, overrun, true, nil
		}
		return e.receipt, e.err, e.panicked, nil
	case <-ctx.Done():
	}
	// The limit, or the shutdown: the transport is told (its context
	// ended) and gets a moment to stop.
	select {
	case e := <-done:
		if q.ctx.Err() != nil && !e.panicked {
			return e.receipt, e.err, false, nil // the shutdown stopped it
		}
		if e.panicked {
			return e.receipt, e.err, true, nil
		}
		return message.Receipt{}, overrun, true, nil
	case <-time.After(time.Duration(abandonAfter.Load())):
		log.Error().Dur("limit", limit).Msg("an attempt did not stop when told to; it is abandoned, and its message not tried again until it ends")
		if q.ctx.Err() != nil {
			return message.Receipt{}, strikeError(errors.New("the attempt did not stop at the shutdown")), true, returned
		}
		return message.Receipt{}, overrun, true, returned
	}
}

// strikesFromLastRun counts a strike against each message the last run
// ended during an attempt at (marked Attempting on disk): those that
// have had their last are buried, the others (struck) have the strike
// recorded by recordStrikes.
func (q *Queue) strikesFromLastRun(metas []spool.Meta) (struck, buried []spool.Meta) {
	for i := range metas {
		m := &metas[i]
		if !m.Attempting {
			continue
		}
		m.Attempting = false
		m.Strikes++
		m.LastReply = message.ReplyFor(strikeError(errStopped)).String()
		if m.Strikes >= maxStrikes {
			buried = append(buried, *m)
		} else {
			struck = append(struck, *m)
		}
	}
	return struck, buried
}

// recordWriters is how many records writeEach writes at once: each
// write waits for the disk (fsync), and the disk takes several at once
// about as fast as one.
const recordWriters = 8

// writeEach calls write for every item, recordWriters at a time, and
// returns when all are written: a start with thousands of strikes, or a
// stop with thousands of messages to write as waiting, takes a fraction
// of the time one after the other would.
func writeEach[T any](items []T, write func(T)) {
	work := make(chan T)
	var wg sync.WaitGroup
	for range min(recordWriters, len(items)) {
		wg.Go(func() {
			for it := range work {
				write(it)
			}
		})
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
}

// recordStrikes writes the strikes strikesFromLastRun counted, after the
// queue is scheduled (a bridge stopped while thousands of messages were
// under way would otherwise wait seconds for them), each message held
// (rewriting) until its record says so: an attempt read before would
// not count the strike.
func (q *Queue) recordStrikes(struck []spool.Meta) {
	if len(struck) == 0 {
		return
	}
	writeEach(struck, func(m spool.Meta) {
		if err := q.o.Spool.Update(m); err != nil {
			q.o.Log.Error().Err(err).Str("msg_id", m.ID).Msg("could not record a strike against the message")
		}
		q.mu.Lock()
		if e := q.entries[m.ID]; e != nil {
			e.rewriting = false
		}
		q.mu.Unlock()
	})
	q.kick()
}

// poisonReason is a buried poison message's reason, in words.
func poisonReason(n int, last error) string {
	return fmt.Sprintf("its attempts failed to end %d times in a row (last: %v); it is not tried again", n, last)
}
