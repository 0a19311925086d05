//go:build unix

package adminapi

import (
	"os"
	"syscall"
)

// FileOwner is the user who owns path, or -1.
func FileOwner(path string) int {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
