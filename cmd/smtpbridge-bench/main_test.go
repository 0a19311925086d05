package main

import (
	"bytes"
	"regexp"
	"testing"
)

// The benchmark runs end to end on a small load and prints every
// figure; the figures themselves are for people, not for assertions.
func TestBenchSmoke(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-n", "40", "-alone", "4", "-devices", "4", "-rtt", "10ms,0s", "-burst", "6", "-big", "5000000", "-scan", "5000000"}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, re := range []string{
		`round trip 10ms to Exchange, 4 devices`,
		`round trip 0s to Exchange, 4 devices`,
		`throughput   bridge +[0-9.]+ msg/s  direct +[0-9.]+ msg/s  ratio [0-9.]+`,
		`alone p50    bridge +[0-9.]+ ms +direct +[0-9.]+ ms +ratio [0-9.]+`,
		`bridge CPU   [0-9.]+ ms per message`,
		// Pipelined on warm connections: one round trip per message
		// (a connection opened during the run adds a few; one command at
		// a time would be 4 or more).
		`round trips  1\.[0-4][0-9] per message to Exchange through the bridge, [0-9.]+ direct`,
		`peak RSS     [0-9.]+ MiB during a login burst of 6 devices`,
		`peak RSS     [0-9.]+ MiB while relaying 5 MB`,
		`graph        4104-byte messages: [0-9.]+ msg/s from 4 devices, p50 [0-9.]+ ms p99 [0-9.]+ ms, alone p50 [0-9.]+ ms, bridge CPU [0-9.]+ ms per message`,
		`graph scan   5\.0 MB \(a [0-9.]+ MB PDF\) through a draft and an upload session in [0-9.]+ s, peak RSS [0-9.]+ MiB`,
		`tokens       2 grant\(s\) for 104 messages through 2 bridge start\(s\)`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output lacks /%s/:\n%s", re, out.String())
		}
	}
}

// The scale run builds a small fleet and prints every figure, each
// with its target and verdict; the small run's figures are not
// asserted, only that each was measured.
func TestScaleSmoke(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-scale", "-tenants", "3", "-devices", "30", "-queued", "300"}, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, re := range []string{
		`scale: 3 tenants, 30 devices, 300 queued \(Exchange down\)`,
		`start +greets after [0-9.]+ s; idle RSS [0-9.]+ MiB \(target < 96 MiB\) (ok|MISSED)`,
		`status page +[0-9.]+ KB, first view in [0-9.]+ ms`,
		`/metrics +[0-9]+ series, [0-9.]+ MB`,
		`/metrics +per_device: false: [0-9]+ series`,
		`health check 0 line\(s\) above debug`,
		`queue +300 messages queued at [0-9]+ msg/s`,
		`queue list +--mailbox M --limit 50: the bridge answers 50 items in [0-9]+ ms`,
		`reload +30 devices: the bridge reloads in [0-9.]+ s .*; a logged-in device's next message: sent`,
		`restart +with 300 queued: greets after [0-9.]+ s .*, queue scheduled after [0-9.]+ s`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("output lacks /%s/:\n%s", re, out.String())
		}
	}
}
