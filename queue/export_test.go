package queue

import "time"

// SetAbandonAfter shortens how long an attempt told to stop may take to
// return before it is abandoned, for the test's duration.
func SetAbandonAfter(d time.Duration) (restore func()) {
	old := abandonAfter
	abandonAfter = d
	return func() { abandonAfter = old }
}
