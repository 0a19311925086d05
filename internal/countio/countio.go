// Package countio counts the bytes read through a reader.
package countio

import "io"

// Reader reads from R and counts in N the bytes it returned.
type Reader struct {
	R io.Reader
	N int64
}

func (c *Reader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}
