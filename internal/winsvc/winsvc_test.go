package winsvc

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

type states struct {
	mu  sync.Mutex
	all []State
}

func (s *states) report(st State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all = append(s.all, st)
}

func (s *states) has(want State) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.all {
		if st == want {
			return true
		}
	}
	return false
}

// ParamChange reloads (twice in a row is one pending reload, not a
// blocked control manager); Stop ends run's context and the service
// reports StopPending, then Stopped, with run's error.
func TestServe(t *testing.T) {
	controls := make(chan Control)
	var st states
	reloads := make(chan struct{}, 10)
	failed := errors.New("stopped with an error")
	done := make(chan error, 1)
	go func() {
		done <- Serve(controls, st.report, func(ctx context.Context, reload <-chan os.Signal, started func()) error {
			if st.has(Running) {
				t.Error("Running reported before the bridge started")
			}
			started()
			for {
				select {
				case <-ctx.Done():
					return failed
				case <-reload:
					reloads <- struct{}{}
				}
			}
		})
	}()
	controls <- Interrogate
	controls <- ParamChange
	select {
	case <-reloads:
	case <-time.After(5 * time.Second):
		t.Fatal("ParamChange did not reload")
	}
	controls <- ParamChange
	controls <- ParamChange // may find one pending: must not block
	controls <- Stop
	select {
	case err := <-done:
		if !errors.Is(err, failed) {
			t.Errorf("Serve returned %v, want run's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not stop")
	}
	for _, want := range []State{StartPending, Running, StopPending, Stopped} {
		if !st.has(want) {
			t.Errorf("state %d never reported: %v", want, st.all)
		}
	}
	if st.all[len(st.all)-1] != Stopped {
		t.Errorf("last state %d, want Stopped", st.all[len(st.all)-1])
	}
}

// A bridge that stops on its own (a config error at start) stops the
// service, with its error.
func TestServeRunEnds(t *testing.T) {
	var st states
	err := Serve(make(chan Control), st.report, func(context.Context, <-chan os.Signal, func()) error { return errors.New("spool.dir: denied") })
	if err == nil || !st.has(Stopped) || st.has(Running) {
		t.Errorf("Serve = %v, states %v", err, st.all)
	}
}
