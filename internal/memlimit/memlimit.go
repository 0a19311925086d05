// Package memlimit sets the Go runtime's soft memory limit, so that a
// burst (logins, large messages, a backlog) makes the garbage collector
// work harder instead of pushing the process past a container's memory
// limit and into the OOM killer.
package memlimit

import (
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Share is the part of a container's memory limit the Go heap is held
// to when nothing else is configured: the rest is for the runtime's own
// memory, thread stacks and the page cache of the spool.
const Share = 0.8

// Limit says what memory limit is in force and where it comes from.
type Limit struct {
	Bytes  int64  // 0: none
	Source string // "GOMEMLIMIT", "limits.max_memory_bytes", "cgroup", "none"
}

// cgroupFiles are where a container's memory limit is read: cgroup v2,
// then v1. Tests replace them.
var cgroupFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// Apply sets the limit: GOMEMLIMIT when set (the runtime applied it at
// start, and it wins); else configured when positive; else, with
// configured 0, Share of the cgroup's memory limit, if there is one.
// configured < 0 turns the limit off.
func Apply(configured int64) Limit {
	l := Choose(configured, os.Getenv("GOMEMLIMIT"))
	switch l.Source {
	case "GOMEMLIMIT":
		// Already in force.
	case "none":
		debug.SetMemoryLimit(math.MaxInt64)
	default:
		debug.SetMemoryLimit(l.Bytes)
	}
	return l
}

// Choose picks the limit without setting it.
func Choose(configured int64, env string) Limit {
	if env != "" && env != "off" {
		return Limit{Bytes: debug.SetMemoryLimit(-1), Source: "GOMEMLIMIT"}
	}
	switch {
	case configured > 0:
		return Limit{Bytes: configured, Source: "limits.max_memory_bytes"}
	case configured < 0:
		return Limit{Source: "none"}
	}
	if c := cgroupLimit(); c > 0 {
		return Limit{Bytes: int64(float64(c) * Share), Source: "cgroup"}
	}
	return Limit{Source: "none"}
}

// cgroupLimit reads the container's memory limit; 0 for none.
func cgroupLimit() int64 {
	for _, f := range cgroupFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		// cgroup v1 says "no limit" with a huge number.
		if err != nil || n <= 0 || n >= 1<<60 {
			return 0
		}
		return n
	}
	return 0
}
