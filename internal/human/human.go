// Package human writes values for people reading the command line's
// tables: durations rounded to what matters at their size.
package human

import "time"

// Duration is d rounded: to the second under a minute, to the minute
// under an hour, to the hour beyond.
func Duration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Hour).String()
}
