package bridge

import (
	"bytes"
	"io"
)

// crlfReader turns every bare CR and bare LF of a message into CRLF, so
// that what reaches the spool and Exchange has one kind of line ending.
// A bare CR matters most: "A\r.\r\n" followed by MAIL FROM and RCPT TO is
// an end-of-data look-alike that a server treating a lone CR as a line
// break would take for the end of the message and the start of another
// (SMTP smuggling). As CRLF it is a line of its own, which the upstream
// writer dot-stuffs like any other.
type crlfReader struct {
	r   io.Reader
	in  []byte
	buf []byte // converted bytes
	out []byte // the part of buf not yet returned
	cr  bool   // the last byte read was a CR whose line ending is pending
	err error
}

func newCRLFReader(r io.Reader) *crlfReader {
	return &crlfReader{r: r, in: make([]byte, 32<<10)}
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.r.Read(c.in)
		c.convert(c.in[:n])
		if err != nil {
			if c.cr {
				c.out = append(c.out, '\r', '\n') // a CR at the very end
				c.cr = false
			}
			c.err = err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// convert converts b into c.buf, and makes that c.out. The CR pending
// from the previous read, if any, comes first.
func (c *crlfReader) convert(b []byte) {
	out := c.buf[:0]
	if cap(out) < 2*len(b)+2 {
		out = make([]byte, 0, 2*len(b)+2)
	}
	for len(b) > 0 {
		if c.cr {
			out = append(out, '\r', '\n')
			c.cr = false
			if b[0] == '\n' {
				b = b[1:]
				continue
			}
		}
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			out = append(out, b...)
			break
		}
		out = append(out, b[:i]...)
		if b[i] == '\r' {
			c.cr = true
		} else {
			out = append(out, '\r', '\n')
		}
		b = b[i+1:]
	}
	c.buf, c.out = out, out
}
