package tokenstore

import "time"

// The tests' pauses after a failed request are short.
func init() { pauseMin, pauseMax = 100*time.Millisecond, 400*time.Millisecond }
