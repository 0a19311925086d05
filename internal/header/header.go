// Package header reads a message's header block as a device sent it, for
// the stages that must look at it: the device side's sender policy and
// From rewrite (package bridge) and the queue's delivery status
// notifications. Only the header block is held in memory, bounded; the
// body after it is streamed and never held whole.
package header

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// MaxBytes bounds the header block read into memory.
const MaxBytes = 256 << 10

// Errors of Read.
var (
	// ErrTooLarge: no end of the header block within MaxBytes.
	ErrTooLarge = errors.New("message header block larger than 256 KiB")
	// ErrMalformed: the block starts with a continuation line.
	ErrMalformed = errors.New("message header starts with a continuation line")
)

// Field is one header field with its continuation lines, exactly as read.
type Field struct {
	Name string // lower case, e.g. "from"
	Raw  []byte // "From: x\r\n" including folded lines
}

// Header is a parsed header block.
type Header struct {
	Fields []Field
	// Sep is the blank line that ended the block ("\r\n"), or nil when the
	// block ended another way (EOF, or a line that is not a field).
	Sep []byte
}

// Read reads the header block from r and returns it with a reader for the
// rest of the message, which is not buffered beyond bufio's window. The
// block ends at the blank line (kept as Sep), at EOF, or before the first
// line that is not a header field (which then starts the body). Line
// endings are kept as sent; NUL and every CR that does not end a line
// become spaces (cleanLine).
func Read(r io.Reader) (*Header, io.Reader, error) {
	br := bufio.NewReaderSize(r, 32<<10)
	h := &Header{}
	total := 0
	for {
		line, err := readLine(br, MaxBytes-total)
		total += len(line)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, err
		}
		if len(line) == 0 {
			return h, br, nil // EOF: a message of headers only
		}
		switch {
		case isBlank(line):
			h.Sep = line
			return h, br, nil
		case line[0] == ' ' || line[0] == '\t':
			if len(h.Fields) == 0 {
				return nil, nil, ErrMalformed
			}
			last := &h.Fields[len(h.Fields)-1]
			cleanLine(line)
			last.Raw = append(last.Raw, line...)
		default:
			name, ok := fieldName(line)
			if !ok {
				// Not a header field: the block ended without its blank
				// line, and this line is the first of the body.
				return h, io.MultiReader(bytes.NewReader(line), br), nil
			}
			cleanLine(line)
			h.Fields = append(h.Fields, Field{Name: name, Raw: line})
		}
		if errors.Is(err, io.EOF) {
			return h, br, nil
		}
	}
}

// readLine reads one line of at most max bytes, including its ending.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, ErrTooLarge
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return line, err
	}
}

// cleanLine replaces NUL and every CR that does not end the line with a
// space, in place. Some parsers take a bare CR for a line break: left in,
// it could start a header field of its own at Exchange that the bridge's
// policy never saw.
func cleanLine(line []byte) {
	for i, c := range line {
		switch {
		case c == 0:
			line[i] = ' '
		case c == '\r' && !(i == len(line)-2 && line[i+1] == '\n'):
			line[i] = ' '
		}
	}
}

func isBlank(line []byte) bool {
	return string(line) == "\r\n" || string(line) == "\n"
}

// fieldName returns the canonical name of a "Name: value" line.
func fieldName(line []byte) (string, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", false
	}
	for _, c := range line[:i] {
		// RFC 5322 section 3.6.8: printable US-ASCII except colon.
		if c < 33 || c > 126 {
			return "", false
		}
	}
	return canonical(string(line[:i])), true
}

func canonical(name string) string {
	return strings.ToLower(name)
}

// Get returns the first field with the given (lower-case) name and its
// index; -1 if there is none.
func (h *Header) Get(name string) (Field, int) {
	for i, f := range h.Fields {
		if f.Name == name {
			return f, i
		}
	}
	return Field{}, -1
}

// All returns every field with the given name.
func (h *Header) All(name string) []Field {
	var out []Field
	for _, f := range h.Fields {
		if f.Name == name {
			out = append(out, f)
		}
	}
	return out
}

// Value returns the field's value, unfolded.
func (f Field) Value() string {
	i := bytes.IndexByte(f.Raw, ':')
	v := string(f.Raw[i+1:])
	v = strings.ReplaceAll(v, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	return strings.TrimSpace(v)
}

// Bytes returns the header block as it will be sent, ending with its
// blank line.
func (h *Header) Bytes() []byte {
	var b bytes.Buffer
	for _, f := range h.Fields {
		b.Write(f.Raw)
	}
	if h.Sep != nil {
		b.Write(h.Sep)
	} else {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// NewField is a field "Name: value" with a CRLF. value must be one line.
func NewField(name, value string) Field {
	return Field{Name: canonical(name), Raw: []byte(name + ": " + value + "\r\n")}
}

// Remove removes every field with the given name.
func (h *Header) Remove(name string) {
	out := h.Fields[:0]
	for _, f := range h.Fields {
		if f.Name != name {
			out = append(out, f)
		}
	}
	h.Fields = out
}

// Prepend adds a field at the top, as a Received field is added.
func (h *Header) Prepend(name, value string) {
	h.Fields = append([]Field{NewField(name, value)}, h.Fields...)
}
