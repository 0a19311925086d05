// Package winsvc runs the bridge as a Windows service: it turns the
// service control manager's requests into what serve understands (a
// context that ends for Stop and Shutdown, a reload signal for
// ParamChange, as SIGHUP on Linux) and reports the service's state back.
// The translation (Serve) is portable and tested everywhere; the
// Windows side (service_windows.go) only adapts it to
// golang.org/x/sys/windows/svc and installs the service.
package winsvc

import (
	"context"
	"os"
	"sync"
	"syscall"
	"time"
)

// Name is the service's name: `sc query smtpbridge`.
const Name = "smtpbridge"

// Control is a request of the service control manager.
type Control int

// The requests the service accepts.
const (
	Interrogate Control = iota
	Stop
	Shutdown
	ParamChange // sc control smtpbridge paramchange: reload the config
)

// State is what the service reports.
type State int

// The states it goes through.
const (
	StartPending State = iota
	Running
	StopPending
	Stopped
)

// StopHint is how long the service asks the control manager to wait for
// it to stop: the bridge's shutdown grace, and a margin.
const StopHint = 45 * time.Second

// Serve runs run until it returns, turning controls into its context's
// end (Stop, Shutdown) and reload signals (ParamChange), and reporting
// each state through report: StartPending until run calls started (its
// listeners bound), then Running. It returns run's error.
func Serve(controls <-chan Control, report func(State), run func(ctx context.Context, reload <-chan os.Signal, started func()) error) error {
	report(StartPending)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan os.Signal, 1)
	done := make(chan error, 1)
	up := make(chan struct{})
	var once sync.Once
	go func() { done <- run(ctx, reload, func() { once.Do(func() { close(up) }) }) }()
	state := StartPending
	for {
		select {
		case <-up:
			up = nil
			if state == StartPending {
				state = Running
				report(Running)
			}
		case err := <-done:
			report(Stopped)
			return err
		case c := <-controls:
			switch c {
			case Interrogate:
				report(state)
			case Stop, Shutdown:
				state = StopPending
				report(StopPending)
				cancel()
			case ParamChange:
				select {
				case reload <- syscall.SIGHUP:
				default: // a reload is already pending
				}
				report(state)
			}
		}
	}
}
