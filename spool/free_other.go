//go:build !unix

package spool

import "errors"

// freeBytes cannot tell the free space here: min_free_bytes is not
// checked.
func freeBytes(string) (int64, error) { return 0, errors.New("free space unknown on this system") }
