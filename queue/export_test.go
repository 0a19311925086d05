package queue

import "time"

// SetAbandonAfter shortens how long an attempt told to stop may take to
// return before it is abandoned, for the test's duration.
func SetAbandonAfter(d time.Duration) (restore func()) {
	old := abandonAfter.Swap(int64(d))
	return func() { abandonAfter.Store(old) }
}

// SetUnpayAfter shortens how long a paid entry may wait for its first
// attempt before its record says it is not under way.
func SetUnpayAfter(d time.Duration) (restore func()) {
	old := unpayAfter.Swap(int64(d))
	return func() { unpayAfter.Store(old) }
}
