package graph

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/textproto"
	"strings"

	"github.com/smtpbridge/smtpbridge/message"
)

// Bounds on a message's MIME structure for the draft path. Real mail
// rarely nests deeper than 5 levels or has more than a few dozen parts;
// a message past these is refused for good (554 5.6.0), never retried.
const (
	// maxMIMEDepth is the deepest nesting of multiparts taken.
	maxMIMEDepth = 100
	// maxMIMEParts is the most entities (multiparts and leaves) taken.
	maxMIMEParts = 1000
	// maxPartHeader bounds one part's header block.
	maxPartHeader = 64 << 10
	// ctxCheckEvery is how often, in bytes read, the walk looks at the
	// attempt's context.
	ctxCheckEvery = 256 << 10
)

// mimeReader reads a MIME message's body once, line by line, knowing the
// boundary of every multipart open at that point. mime/multipart nests
// one reader per level, through which every byte passes again (a message
// nested 160,000 deep costs hours); here each byte is looked at once,
// whatever the depth, and the attempt's context is checked as it goes.
type mimeReader struct {
	ctx       context.Context
	br        *bufio.Reader
	read      int64
	nextCheck int64
	atStart   bool // the next chunk starts a line
	// open maps each open multipart's boundary to its depth (0 the
	// outermost); a boundary reused inside one of its parts names the
	// innermost (prev keeps what it hid).
	open  map[string]int
	stack []openPart
	// err is a read error or the context's end: the walk stops, and the
	// attempt is temporary, not the message's fault.
	err error
}

type openPart struct {
	boundary string
	prev     int // open[boundary] before this part hid it; -1 for none
}

// delim is what ended an entity's body: a delimiter line of the open
// multipart at depth, final for a close-delimiter ("--b--"); or the end
// of the message (eof).
type delim struct {
	depth int
	final bool
	eof   bool
}

func newMIMEReader(ctx context.Context, r io.Reader) *mimeReader {
	return &mimeReader{ctx: ctx, br: bufio.NewReaderSize(r, 64<<10), atStart: true, open: map[string]int{}, nextCheck: ctxCheckEvery}
}

// next returns the next line, or a piece of a line longer than the
// buffer (start says whether it begins a line); nil at the end. The
// slice is valid until the next call.
func (m *mimeReader) next() (line []byte, start bool) {
	if m.err != nil {
		return nil, false
	}
	start = m.atStart
	line, err := m.br.ReadSlice('\n')
	m.atStart = err != bufio.ErrBufferFull
	m.read += int64(len(line))
	if m.read >= m.nextCheck {
		m.nextCheck = m.read + ctxCheckEvery
		if cerr := m.ctx.Err(); cerr != nil {
			m.err = cerr
			return nil, false
		}
	}
	if err != nil && err != bufio.ErrBufferFull && err != io.EOF {
		m.err = err
		return nil, false
	}
	if len(line) == 0 {
		return nil, false // the end
	}
	return line, start
}

// delimiter says whether line is a delimiter line of an open multipart
// (RFC 2046 section 5.1.1: "--" boundary, "--" for the last, then
// optional white space).
func (m *mimeReader) delimiter(line []byte) (delim, bool) {
	if len(m.open) == 0 || !bytes.HasPrefix(line, []byte("--")) {
		return delim{}, false
	}
	b := bytes.TrimRight(line[2:], " \t\r\n")
	if d, ok := m.open[string(b)]; ok {
		return delim{depth: d}, true
	}
	if b, ok := bytes.CutSuffix(b, []byte("--")); ok {
		if d, ok := m.open[string(b)]; ok {
			return delim{depth: d, final: true}, true
		}
	}
	return delim{}, false
}

// push opens a multipart with boundary b.
func (m *mimeReader) push(b string) {
	prev, ok := m.open[b]
	if !ok {
		prev = -1
	}
	m.open[b] = len(m.stack)
	m.stack = append(m.stack, openPart{boundary: b, prev: prev})
}

// closeTo leaves the multiparts open down to depth n.
func (m *mimeReader) closeTo(n int) {
	for len(m.stack) > n {
		top := m.stack[len(m.stack)-1]
		m.stack = m.stack[:len(m.stack)-1]
		if top.prev >= 0 {
			m.open[top.boundary] = top.prev
		} else {
			delete(m.open, top.boundary)
		}
	}
}

// skip reads past lines (a preamble, an epilogue, a part not wanted)
// until a delimiter or the end.
func (m *mimeReader) skip() delim {
	for {
		line, start := m.next()
		if line == nil {
			return delim{eof: true}
		}
		if start {
			if d, ok := m.delimiter(line); ok {
				return d
			}
		}
	}
}

// header reads a part's header block, up to its blank line.
func (m *mimeReader) header() (textproto.MIMEHeader, delim, bool, error) {
	var buf []byte
	for {
		line, start := m.next()
		if line == nil {
			break
		}
		if start {
			if d, ok := m.delimiter(line); ok {
				// A part without a body (its header not even ended).
				h, err := parseHeader(buf)
				return h, d, true, err
			}
			if len(bytes.TrimRight(line, "\r\n")) == 0 {
				break
			}
		}
		if len(buf)+len(line) > maxPartHeader {
			return nil, delim{}, false, structureError("a MIME part's header is larger than %d KiB", maxPartHeader>>10)
		}
		buf = append(buf, line...)
	}
	h, err := parseHeader(buf)
	return h, delim{}, false, err
}

func parseHeader(buf []byte) (textproto.MIMEHeader, error) {
	if len(buf) > 0 && buf[len(buf)-1] != '\n' {
		buf = append(buf, '\n')
	}
	buf = append(buf, '\n')
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(buf))).ReadMIMEHeader()
	if err != nil {
		return nil, structureError("a MIME part's header does not parse")
	}
	return h, nil
}

// body is an io.Reader of the current part's content, up to the line
// break before the delimiter that ends it (which belongs to the
// delimiter, RFC 2046 section 5.1.1); ended says which delimiter.
type body struct {
	m       *mimeReader
	pending []byte
	buf     []byte
	eol     []byte // the last line's break, held back until the next line shows whether it is content
	done    bool
	ended   delim
}

func (m *mimeReader) body() *body { return &body{m: m} }

func (b *body) Read(p []byte) (int, error) {
	for len(b.pending) == 0 {
		if b.done {
			return 0, io.EOF
		}
		b.fill()
	}
	n := copy(p, b.pending)
	b.pending = b.pending[n:]
	return n, nil
}

func (b *body) fill() {
	line, start := b.m.next()
	if line == nil {
		// The end of the message (or a read error, in m.err): what is
		// held back was content after all.
		b.done, b.ended = true, delim{eof: true}
		b.pending = b.eol
		return
	}
	if start {
		if d, ok := b.m.delimiter(line); ok {
			b.done, b.ended = true, d
			return
		}
	}
	content, eol := line, []byte(nil)
	if i := len(line) - 1; i >= 0 && line[i] == '\n' {
		content, eol = line[:i], line[i:]
		if i > 0 && line[i-1] == '\r' {
			content, eol = line[:i-1], line[i-1:]
		}
	}
	b.buf = append(append(b.buf[:0], b.eol...), content...)
	b.eol = append(b.eol[:0], eol...)
	b.pending = b.buf
}

// finish reads the rest of the part and says what ended it.
func (b *body) finish() delim {
	for !b.done {
		b.pending = nil
		b.fill()
	}
	b.pending = nil
	return b.ended
}

// structureError is a message whose MIME structure the draft path will
// never take: a permanent failure, with a reason the device may see.
func structureError(format string, args ...any) error {
	return &message.Error{Class: message.Permanent, Stage: message.StageSource,
		Err: &message.ContentError{Reason: fmt.Sprintf(format, args...)}}
}

// frame is an open multipart as the walk sees it.
type frame struct {
	contentType string
	related     bool // inside a multipart/related
	children    int
}

// walk takes a MIME entity apart, in one pass and without recursion:
// the first text or HTML part (HTML preferred in an alternative) is the
// body, the rest attachments; parts of a multipart/related with a
// Content-ID are inline. A structure deeper than maxMIMEDepth or with
// more than maxMIMEParts entities is refused for good; a read error or
// the context's end stops it as a temporary failure.
func (s *sender) walk(ctx context.Context, p *parsed, h textproto.MIMEHeader, r io.Reader) error {
	m := newMIMEReader(ctx, r)
	var stack []frame
	entities := 0
	// entity takes one entity whose header is h and returns what ended
	// it: a multipart's preamble, or a leaf's body.
	entity := func(h textproto.MIMEHeader, related bool) (delim, error) {
		if entities++; entities > maxMIMEParts {
			return delim{}, structureError("the message has more than %d MIME parts", maxMIMEParts)
		}
		ct, params := contentType(h)
		if strings.HasPrefix(ct, "multipart/") && params["boundary"] != "" {
			if len(stack) >= maxMIMEDepth {
				return delim{}, structureError("the message's MIME parts are nested more than %d deep", maxMIMEDepth)
			}
			stack = append(stack, frame{contentType: ct, related: related})
			m.push(params["boundary"])
			return m.skip(), nil
		}
		b := m.body()
		if err := s.leaf(p, h, ct, params, related, b); err != nil {
			return delim{}, err
		}
		return b.finish(), nil
	}
	d, err := entity(h, false)
	for {
		switch {
		case m.err != nil:
			return readError(m.err)
		case err != nil:
			return err
		case d.eof:
			// Multiparts left open end with the message, as mail
			// readers take them.
			return nil
		}
		stack = stack[:d.depth+1]
		m.closeTo(d.depth + 1)
		if d.final {
			// Its parent's epilogue follows, up to the parent's next
			// delimiter.
			stack = stack[:d.depth]
			m.closeTo(d.depth)
			if len(stack) == 0 {
				return nil // the message's own epilogue is not read
			}
			d = m.skip()
			continue
		}
		f := &stack[d.depth]
		f.children++
		if f.contentType == "multipart/alternative" && f.children > 1 && p.bodyType == "html" {
			// The HTML alternative is the body; the others are not
			// attachments.
			d = m.skip()
			continue
		}
		related := f.related || f.contentType == "multipart/related"
		h, hd, headerOnly, herr := m.header()
		switch {
		case herr != nil:
			err = herr
		case headerOnly:
			d = hd // a part that is only a header: nothing to take
		default:
			d, err = entity(h, related)
		}
	}
}

// readError is the walk stopped by its reader: the spool, or the
// attempt's context (shutdown, the attempt's time bound).
func readError(err error) error {
	return &message.Error{Class: message.Temporary, Stage: message.StageSource, Err: fmt.Errorf("reading the message: %w", err)}
}

func contentType(h textproto.MIMEHeader) (string, map[string]string) {
	ct, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || ct == "" {
		return "text/plain", map[string]string{"charset": "us-ascii"}
	}
	return ct, params
}
