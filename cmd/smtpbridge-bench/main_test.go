package main

import (
	"bytes"
	"regexp"
	"testing"
)

// The benchmark runs end to end on a small load and prints all four
// figures; the figures themselves are for people, not for assertions.
func TestBenchSmoke(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-n", "200", "-n-latency", "24", "-exchange-latency", "5ms", "-big", "5000000"}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, re := range []string{
		`throughput  bridge +[0-9.]+ msg/s  direct +[0-9.]+ msg/s  ratio [0-9.]+`,
		`added       p50 [-+][0-9.]+ ms  p99 [-+][0-9.]+ ms`,
		`peak RSS    [0-9.]+ MiB while relaying 5 MB`,
		`tokens      1 grant\(s\) for 224 messages`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output lacks /%s/:\n%s", re, out.String())
		}
	}
}
