//go:build unix

package main

import (
	"os"
	"syscall"
)

// ownerOf is the user who owns path, or -1.
func ownerOf(path string) int {
	fi, err := os.Lstat(path)
	if err != nil {
		return -1
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}
