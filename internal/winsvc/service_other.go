//go:build !windows

package winsvc

import (
	"context"
	"errors"
	"os"
)

// ErrNotWindows is what the service commands return off Windows.
var ErrNotWindows = errors.New("smtpbridge service manages a Windows service; on Linux use the systemd unit (see the README, \"Running it\")")

// IsService is false off Windows.
func IsService() bool { return false }

// Run is for Windows only.
func Run(func(ctx context.Context, reload <-chan os.Signal, started func()) error) error {
	return ErrNotWindows
}

// Install is for Windows only.
func Install(string, []string, bool) error { return ErrNotWindows }

// Uninstall is for Windows only.
func Uninstall() error { return ErrNotWindows }

// Start is for Windows only.
func Start() error { return ErrNotWindows }

// StopService is for Windows only.
func StopService() error { return ErrNotWindows }

// Status is for Windows only.
func Status() (string, error) { return "", ErrNotWindows }

// Reload is for Windows only.
func Reload() error { return ErrNotWindows }
