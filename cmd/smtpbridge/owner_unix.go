//go:build unix

package main

import (
	"os"
	"syscall"
)

// fileOwner is the user who owns path, or -1.
func fileOwner(path string) int {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
