package bridge

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"unicode"

	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
)

// maxHeaderBytes bounds the header block the bridge reads into memory; the
// body after it is streamed and never held whole.
const maxHeaderBytes = 256 << 10

// errHeaderTooLarge is returned when no end of the header block is found
// within maxHeaderBytes.
var errHeaderTooLarge = errors.New("message header block larger than 256 KiB")

// field is one header field with its continuation lines, exactly as read.
type field struct {
	name string // canonical form, e.g. "From"
	raw  []byte // "From: x\r\n" including folded lines
}

// header is a parsed header block.
type header struct {
	fields []field
	// sep is the blank line that ended the block ("\r\n"), or nil when the
	// block ended another way (EOF, or a line that is not a field).
	sep []byte
}

// readHeader reads the header block from r and returns it with a reader
// for the rest of the message, which is not buffered beyond bufio's window.
// The block ends at the blank line (kept as h.sep), at EOF, or before the
// first line that is not a header field (which then starts the body). Line
// endings are kept as sent.
func readHeader(r io.Reader) (*header, io.Reader, error) {
	br := bufio.NewReaderSize(r, 32<<10)
	h := &header{}
	total := 0
	for {
		line, err := readLine(br, maxHeaderBytes-total)
		total += len(line)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, err
		}
		if len(line) == 0 {
			return h, br, nil // EOF: a message of headers only
		}
		switch {
		case isBlank(line):
			h.sep = line
			return h, br, nil
		case line[0] == ' ' || line[0] == '\t':
			if len(h.fields) == 0 {
				return nil, nil, errMalformedHeader
			}
			last := &h.fields[len(h.fields)-1]
			cleanLine(line)
			last.raw = append(last.raw, line...)
		default:
			name, ok := fieldName(line)
			if !ok {
				// Not a header field: the block ended without its blank
				// line, and this line is the first of the body.
				return h, io.MultiReader(bytes.NewReader(line), br), nil
			}
			cleanLine(line)
			h.fields = append(h.fields, field{name: name, raw: line})
		}
		if errors.Is(err, io.EOF) {
			return h, br, nil
		}
	}
}

var errMalformedHeader = errors.New("message header starts with a continuation line")

// readLine reads one line of at most max bytes, including its ending.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, errHeaderTooLarge
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

func (h *header) get(name string) (field, int) {
	for i, f := range h.fields {
		if f.name == name {
			return f, i
		}
	}
	return field{}, -1
}

// all returns every field with the given name.
func (h *header) all(name string) []field {
	var out []field
	for _, f := range h.fields {
		if f.name == name {
			out = append(out, f)
		}
	}
	return out
}

// value returns an unfolded field value.
func (f field) value() string {
	i := bytes.IndexByte(f.raw, ':')
	v := string(f.raw[i+1:])
	v = strings.ReplaceAll(v, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	return strings.TrimSpace(v)
}

// bytes returns the header block as it will be sent.
func (h *header) bytes() []byte {
	var b bytes.Buffer
	for _, f := range h.fields {
		b.Write(f.raw)
	}
	if h.sep != nil {
		b.Write(h.sep)
	} else {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

var wordDecoder = &mime.WordDecoder{CharsetReader: func(_ string, r io.Reader) (io.Reader, error) {
	// Unknown charsets keep their bytes; the display name is only cosmetic.
	return r, nil
}}

// parseFrom parses a From value into its first address and display name.
func parseFrom(v string) (name string, addr mailaddr.Address, ok bool) {
	p := mail.AddressParser{WordDecoder: wordDecoder}
	list, err := p.ParseList(v)
	if err != nil || len(list) == 0 {
		return "", mailaddr.Address{}, false
	}
	a, err := mailaddr.Parse(list[0].Address)
	if err != nil {
		return list[0].Name, mailaddr.Address{}, false
	}
	return list[0].Name, a, true
}

// fromAddresses parses every address of a From value. RFC 5322 allows
// several authors; the enforce policy must check each, or a second one
// would ride along unchecked.
func fromAddresses(v string) ([]mailaddr.Address, bool) {
	p := mail.AddressParser{WordDecoder: wordDecoder}
	list, err := p.ParseList(v)
	if err != nil || len(list) == 0 {
		return nil, false
	}
	out := make([]mailaddr.Address, 0, len(list))
	for _, a := range list {
		pa, err := mailaddr.Parse(a.Address)
		if err != nil {
			return nil, false
		}
		out = append(out, pa)
	}
	return out, true
}

// cleanDisplayName makes a device's display name safe to keep in front of
// the mailbox address. Exchange's SendAs check reads an "@" in a display
// name as an address (554 5.2.252), so it becomes " at "; control
// characters, quotes and angle brackets go, and the result is bounded.
func cleanDisplayName(s string) string {
	s = strings.ReplaceAll(s, "@", " at ")
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '"' || r == '<' || r == '>' || r == '\\':
			return -1
		case unicode.IsControl(r) || !unicode.IsPrint(r):
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 64 {
		s = strings.TrimSpace(string(r[:64]))
	}
	return s
}

// rewriteFrom applies the rewrite policy to h: From becomes the mailbox
// with the cleaned display name, the original address goes to Reply-To when
// the message had none, and Sender (which would name another address) is
// dropped. It returns the original From address, if one parsed.
func rewriteFrom(h *header, mailbox mailaddr.Address) (orig mailaddr.Address, had bool) {
	f, i := h.get("from")
	var name string
	if i >= 0 {
		name, orig, had = parseFrom(f.value())
	}
	from := formatField("From", mail.Address{Name: cleanDisplayName(name), Address: mailbox.String()})
	// Every From field goes: a second one would be an author the
	// rewrite left standing.
	if i < 0 {
		i = len(h.fields)
	}
	h.remove("from")
	h.fields = slices.Insert(h.fields, min(i, len(h.fields)), from)
	if _, ri := h.get("reply-to"); ri < 0 && had && !orig.Equal(mailbox) {
		h.fields = append(h.fields, formatField("Reply-To", mail.Address{Address: orig.String()}))
	}
	h.remove("sender")
	return orig, had
}

func formatField(name string, a mail.Address) field {
	// mail.Address.String quotes and RFC 2047-encodes the name as needed,
	// so nothing a device sends can end the line early.
	return field{name: canonical(name), raw: []byte(name + ": " + a.String() + "\r\n")}
}

func (h *header) remove(name string) {
	out := h.fields[:0]
	for _, f := range h.fields {
		if f.name != name {
			out = append(out, f)
		}
	}
	h.fields = out
}

// prepend adds a field at the top, as a Received field is added.
func (h *header) prepend(name, value string) {
	h.fields = append([]field{{name: canonical(name), raw: []byte(name + ": " + value + "\r\n")}}, h.fields...)
}
