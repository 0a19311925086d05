//go:build windows

package winsvc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// IsService says whether the process was started by the service control
// manager.
func IsService() bool {
	ok, err := svc.IsWindowsService()
	return err == nil && ok
}

// Run runs the service under the control manager until it stops. It
// logs start, stop and a fatal error to the Event Log under Name.
func Run(run func(ctx context.Context, reload <-chan os.Signal, started func()) error) error {
	elog, err := eventlog.Open(Name)
	if err != nil {
		elog = nil
	}
	info := func(msg string) {
		if elog != nil {
			elog.Info(1, msg)
		}
	}
	h := &handler{run: run}
	info("smtpbridge service starting")
	err = svc.Run(Name, h)
	if err == nil {
		err = h.err
	}
	if elog != nil {
		if err != nil {
			elog.Error(3, "smtpbridge service stopped on an error: "+err.Error())
		} else {
			info("smtpbridge service stopped")
		}
		elog.Close()
	}
	return err
}

type handler struct {
	run func(ctx context.Context, reload <-chan os.Signal, started func()) error
	err error
}

// Execute implements svc.Handler.
func (h *handler) Execute(_ []string, r <-chan svc.ChangeRequest, s chan<- svc.Status) (bool, uint32) {
	const accepts = svc.AcceptStop | svc.AcceptShutdown | svc.AcceptParamChange
	controls := make(chan Control)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case c := <-r:
				var ctl Control
				switch c.Cmd {
				case svc.Stop:
					ctl = Stop
				case svc.Shutdown:
					ctl = Shutdown
				case svc.ParamChange:
					ctl = ParamChange
				default:
					ctl = Interrogate
				}
				select {
				case controls <- ctl:
				case <-stop:
					return
				}
			}
		}
	}()
	report := func(st State) {
		switch st {
		case StartPending:
			s <- svc.Status{State: svc.StartPending, WaitHint: uint32(StopHint / time.Millisecond)}
		case Running:
			s <- svc.Status{State: svc.Running, Accepts: accepts}
		case StopPending:
			s <- svc.Status{State: svc.StopPending, WaitHint: uint32(StopHint / time.Millisecond)}
		case Stopped:
			// Execute's return reports it.
		}
	}
	h.err = Serve(controls, report, h.run)
	if h.err != nil {
		return true, 1
	}
	return false, 0
}

// Install registers the service to run exe with args (started by the
// control manager at boot once the admin starts it or sets it to
// automatic), restarting it on failure, and its Event Log source.
func Install(exe string, args []string, automatic bool) error {
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("connect to the service control manager (run as Administrator): %w", err)
	}
	defer m.Disconnect()
	if s, err := m.OpenService(Name); err == nil {
		s.Close()
		return fmt.Errorf("the service %s is already installed; smtpbridge service uninstall first", Name)
	}
	start := uint32(mgr.StartManual)
	if automatic {
		start = mgr.StartAutomatic
	}
	s, err := m.CreateService(Name, exe, mgr.Config{
		DisplayName: "smtpbridge",
		Description: "SMTP AUTH for legacy devices, submitted to Exchange Online over OAuth 2.0",
		StartType:   start,
	}, args...)
	if err != nil {
		return fmt.Errorf("create the service: %w", err)
	}
	defer s.Close()
	// Restart after 5 s, 30 s, then every minute; the count starts
	// again after a day without a failure.
	actions := []mgr.RecoveryAction{
		{Type: mgr.ServiceRestart, Delay: 5 * time.Second},
		{Type: mgr.ServiceRestart, Delay: 30 * time.Second},
		{Type: mgr.ServiceRestart, Delay: time.Minute},
	}
	if err := s.SetRecoveryActions(actions, 86400); err != nil {
		return fmt.Errorf("set the service's restart on failure: %w", err)
	}
	if err := eventlog.InstallAsEventCreate(Name, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil && !errors.Is(err, windows.ERROR_ALREADY_EXISTS) &&
		!isExists(err) {
		return fmt.Errorf("register the Event Log source: %w", err)
	}
	return nil
}

func isExists(err error) bool {
	return err != nil && (errors.Is(err, windows.ERROR_ALREADY_EXISTS) || errors.Is(err, windows.ERROR_FILE_EXISTS))
}

// Uninstall stops the service if it runs, removes it and its Event Log
// source. Its config, spool and logs stay.
func Uninstall() error {
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("connect to the service control manager (run as Administrator): %w", err)
	}
	defer m.Disconnect()
	s, err := m.OpenService(Name)
	if err != nil {
		return fmt.Errorf("the service %s is not installed", Name)
	}
	defer s.Close()
	if st, err := s.Query(); err == nil && st.State != svc.Stopped {
		stopAndWait(s)
	}
	if err := s.Delete(); err != nil {
		return fmt.Errorf("remove the service: %w", err)
	}
	eventlog.Remove(Name)
	return nil
}

// Start starts the installed service.
func Start() error {
	return withService(func(s *mgr.Service) error {
		if err := s.Start(); err != nil {
			return fmt.Errorf("start the service: %w", err)
		}
		return waitFor(s, svc.Running, time.Minute)
	})
}

// StopService stops the running service and waits for it.
func StopService() error {
	return withService(func(s *mgr.Service) error { return stopAndWait(s) })
}

// Reload sends the running service a ParamChange: it reloads its config
// (sc control smtpbridge paramchange does the same).
func Reload() error {
	return withService(func(s *mgr.Service) error {
		if _, err := s.Control(svc.ParamChange); err != nil {
			return fmt.Errorf("reload the service: %w", err)
		}
		return nil
	})
}

// Status is the service's state in words.
func Status() (string, error) {
	var out string
	err := withService(func(s *mgr.Service) error {
		st, err := s.Query()
		if err != nil {
			return err
		}
		out = stateName(st.State)
		return nil
	})
	return out, err
}

func withService(f func(*mgr.Service) error) error {
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("connect to the service control manager: %w", err)
	}
	defer m.Disconnect()
	s, err := m.OpenService(Name)
	if err != nil {
		return fmt.Errorf("the service %s is not installed (smtpbridge service install)", Name)
	}
	defer s.Close()
	return f(s)
}

func stopAndWait(s *mgr.Service) error {
	if _, err := s.Control(svc.Stop); err != nil {
		return fmt.Errorf("stop the service: %w", err)
	}
	return waitFor(s, svc.Stopped, StopHint+15*time.Second)
}

func waitFor(s *mgr.Service, want svc.State, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		st, err := s.Query()
		if err != nil {
			return err
		}
		if st.State == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the service is %s after %s, not %s", stateName(st.State), limit, stateName(want))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func stateName(s svc.State) string {
	switch s {
	case svc.Stopped:
		return "stopped"
	case svc.StartPending:
		return "starting"
	case svc.StopPending:
		return "stopping"
	case svc.Running:
		return "running"
	case svc.PausePending, svc.Paused, svc.ContinuePending:
		return "paused"
	}
	return fmt.Sprintf("state %d", s)
}
