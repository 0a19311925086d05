package human

import (
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		1400 * time.Millisecond:           "1s",
		90*time.Second + time.Millisecond: "2m0s",
		3*time.Hour + 29*time.Minute:      "3h0m0s",
		-time.Second:                      "-1s",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%s) = %q, want %q", d, got, want)
		}
	}
}
