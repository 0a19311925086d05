//go:build unix

package main

import (
	"os"
	"syscall"
)

// nobody is the user the tests give the spool to when they run as root,
// to play the bridge's own user.
const nobody = 65534

// ownerOf is the user who owns path, or -1.
func ownerOf(path string) int {
	fi, err := os.Lstat(path)
	if err != nil {
		return -1
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}
