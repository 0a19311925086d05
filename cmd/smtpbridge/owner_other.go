//go:build !unix

package main

// fileOwner is -1 where files have no Unix owner: the command line then
// sends no token over TCP (adminapi.Client.OwnerUID).
func fileOwner(string) int { return -1 }
