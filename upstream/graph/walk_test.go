package graph

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/countio"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/message"
)

// scratchCount is a Scratch that counts, and refuses past a limit.
type scratchCount struct {
	mu          sync.Mutex
	taken, most int64
	limit       int64
}

func (s *scratchCount) TakeScratch(n int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limit > 0 && s.taken+n > s.limit {
		return errors.New("the spool is full")
	}
	s.taken += n
	s.most = max(s.most, s.taken)
	return nil
}

func (s *scratchCount) ReleaseScratch(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.taken -= n
}

// walked is what the walk made of a message.
type walked struct {
	bodyType, body string
	parts          []string // name:size, "inline" for inline ones
	read           int64    // bytes of the message read
	err            error
}

func walkMessage(t testing.TB, ctx context.Context, msg string, scratch Scratch) walked {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(msg))
	h, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil {
		t.Fatalf("the test's header: %v", err)
	}
	s := &sender{t: &Transport{tempDir: t.TempDir()}}
	p := &parsed{scratch: scratch}
	defer p.close()
	cr := &countio.Reader{R: br}
	w := walked{err: s.walk(ctx, p, h, cr), bodyType: p.bodyType, body: p.body, read: cr.N}
	for _, pt := range p.parts {
		d := fmt.Sprintf("%s:%d", pt.name, pt.size)
		if pt.inline {
			d += ":inline:" + pt.contentID
		}
		w.parts = append(w.parts, d)
	}
	return w
}

func permanentContent(err error) bool {
	var ce *message.ContentError
	return message.IsPermanent(err) && errors.As(err, &ce)
}

func TestWalk(t *testing.T) {
	nested60, _ := testenv.Nested("Subject: sixty\r\n", 60, 1000)
	nested101, _ := testenv.Nested("Subject: too deep\r\n", maxMIMEDepth+1, 10)
	var many strings.Builder
	many.WriteString("Content-Type: multipart/mixed; boundary=m\r\n\r\n")
	for i := range maxMIMEParts {
		fmt.Fprintf(&many, "--m\r\nContent-Type: application/octet-stream; name=p%d\r\n\r\nx\r\n", i)
	}
	many.WriteString("--m--\r\n")
	const alt = "Content-Type: multipart/alternative; boundary=\"a b\"\r\n\r\npreamble\r\n" +
		"--a b\r\nContent-Type: text/plain\r\n\r\nplain text\r\n" +
		"--a b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n" +
		"--a b\r\nContent-Type: text/enriched\r\n\r\nignored\r\n" +
		"--a b--\r\nepilogue\r\n"
	const related = "Content-Type: multipart/related; boundary=r\r\n\r\n" +
		"--r\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n" +
		"--a\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>Gr=FC=DFe</p>\r\n--a--\r\n" +
		"--r\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\nGgo=\r\n" +
		"--r--\r\n"
	for _, c := range []struct {
		name string
		msg  string
		// want: the body's type and text, and the parts; or an error
		bodyType, body string
		parts          []string
		permanent      bool
		readAtMost     int64 // 0: no bound checked
	}{
		{name: "a plain message", msg: "Content-Type: text/plain\r\n\r\nhello\r\nworld\r\n", bodyType: "text", body: "hello\r\nworld\r\n"},
		{name: "no Content-Type", msg: "Subject: x\r\n\r\nhello", bodyType: "text", body: "hello"},
		{name: "alternative: the HTML is the body, the rest dropped", msg: alt, bodyType: "html", body: "<p>html</p>"},
		{name: "related: inline image, QP Latin-1 HTML", msg: related, bodyType: "html", body: "<p>Grüße</p>", parts: []string{"attachment.png:8:inline:logo@x"}},
		{name: "60 levels still go", msg: nested60, bodyType: "text", body: "nested 60 deep", parts: []string{"nested.bin:1000"}},
		{name: "101 levels refused, read no further", msg: nested101, permanent: true, readAtMost: 8 << 10},
		{name: "too many parts", msg: many.String(), permanent: true},
		{name: "no close delimiter: what came is taken", msg: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nbody\r\n--m\r\nContent-Type: application/pdf; name=a.pdf\r\n\r\n%PDF",
			bodyType: "text", body: "body", parts: []string{"a.pdf:4"}},
		{name: "an outer delimiter ends the inner multipart", msg: "Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\ninner\r\n--o\r\nContent-Type: application/zip; name=z.zip\r\n\r\nPK\r\n--o--\r\n",
			bodyType: "text", body: "inner", parts: []string{"z.zip:2"}},
		{name: "a boundary reused inside its own part", msg: "Content-Type: multipart/mixed; boundary=same\r\n\r\n--same\r\nContent-Type: multipart/mixed; boundary=same\r\n\r\n--same\r\nContent-Type: text/plain\r\n\r\ninner\r\n--same--\r\n--same\r\nContent-Type: application/zip; name=z.zip\r\n\r\nPK\r\n--same--\r\n",
			bodyType: "text", body: "inner", parts: []string{"z.zip:2"}},
		{name: "a delimiter with transport padding", msg: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m \t\r\nContent-Type: text/plain\r\n\r\nbody\r\n--m-- \r\n", bodyType: "text", body: "body"},
		{name: "a line that only starts like a delimiter is content", msg: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\n--mx\r\n--m2--\r\n--m--\r\n", bodyType: "text", body: "--mx\r\n--m2--"},
		{name: "a part that is only a header", msg: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n--m\r\nContent-Type: text/plain\r\n\r\nsecond\r\n--m--\r\n", bodyType: "text", body: "second"},
		{name: "bare LF line ends", msg: "Content-Type: multipart/mixed; boundary=m\n\n--m\nContent-Type: text/plain\n\nunix\nlines\n--m--\n", bodyType: "text", body: "unix\nlines"},
		{name: "base64 that does not decode", msg: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n--m--\r\n", permanent: true},
		{name: "a part header past the bound", msg: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nX-Pad: " + strings.Repeat("a", maxPartHeader) + "\r\n\r\nx\r\n--m--\r\n", permanent: true},
		{name: "a header that does not parse", msg: "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n no field name\r\n\r\nx\r\n--m--\r\n", permanent: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := walkMessage(t, context.Background(), c.msg, nil)
			if c.permanent {
				if !permanentContent(w.err) {
					t.Fatalf("got %v, want a permanent content error", w.err)
				}
				if r := message.ReplyFor(w.err); r.Code != 554 || r.EnhancedString() != "5.6.0" {
					t.Errorf("the device would get %v, want 554 5.6.0", r)
				}
			} else if w.err != nil {
				t.Fatal(w.err)
			}
			if !c.permanent && (w.bodyType != c.bodyType || strings.TrimRight(w.body, "\r\n") != strings.TrimRight(c.body, "\r\n") || fmt.Sprint(w.parts) != fmt.Sprint(c.parts)) {
				t.Errorf("got %s %q %v, want %s %q %v", w.bodyType, w.body, w.parts, c.bodyType, c.body, c.parts)
			}
			if c.readAtMost > 0 && w.read > c.readAtMost {
				t.Errorf("read %d bytes of the message, want at most %d", w.read, c.readAtMost)
			}
		})
	}
}

// The poison message of the review: 160,000 levels in 12 MB. The walk
// refuses it having read only its first levels, and its cost does not
// grow with the depth (here checked in bytes read, not seconds).
func TestWalkPoison(t *testing.T) {
	msg, _ := testenv.Nested("Subject: poison\r\n", 160_000, 10)
	if len(msg) < 10<<20 {
		t.Fatalf("the poison message is %d bytes, want over 10 MB", len(msg))
	}
	w := walkMessage(t, context.Background(), msg, nil)
	if !permanentContent(w.err) || !strings.Contains(w.err.Error(), "nested more than 100 deep") {
		t.Fatalf("got %v", w.err)
	}
	if w.read > 128<<10 { // a buffer's worth: 64 KiB here, 4 KiB in the test's header reader
		t.Errorf("read %d bytes to refuse it", w.read)
	}
}

// A walk the attempt's context ends stops as a temporary failure, not a
// permanent one: the message is fine, the attempt was stopped.
func TestWalkCancelled(t *testing.T) {
	msg, _ := testenv.Scan("Subject: scan\r\n", 4<<20)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w := walkMessage(t, ctx, msg, nil)
	if w.err == nil || message.IsPermanent(w.err) || !errors.Is(w.err, context.Canceled) {
		t.Fatalf("got %v, want a temporary failure for the cancelled context", w.err)
	}
	if w.read > 2*ctxCheckEvery+64<<10 {
		t.Errorf("read %d bytes after the context ended", w.read)
	}
}

// Attachments decoded to disk count against the spool while they exist;
// a spool without room makes the attempt temporary.
func TestWalkScratch(t *testing.T) {
	msg, pdf := testenv.Scan("Subject: scan\r\n", 1<<20)
	var s scratchCount
	w := walkMessage(t, context.Background(), msg, &s)
	if w.err != nil {
		t.Fatal(w.err)
	}
	if s.most != int64(len(pdf)) || s.taken != 0 {
		t.Errorf("scratch: at most %d taken (want %d), %d left after (want 0)", s.most, len(pdf), s.taken)
	}
	full := scratchCount{limit: 100 << 10}
	w = walkMessage(t, context.Background(), msg, &full)
	if w.err == nil || message.IsPermanent(w.err) || message.StageOf(w.err) != message.StageSpool {
		t.Errorf("with no room: %v, want a temporary spool failure", w.err)
	}
	if full.taken != 0 {
		t.Errorf("%d bytes still taken after a failed walk", full.taken)
	}
}

// FuzzWalk: whatever the bytes, the walk ends, takes at most its bounds,
// decodes no more than it read, and fails, if at all, for good with a
// reason (a cancelled or failing reader is not in play here).
func FuzzWalk(f *testing.F) {
	scan, _ := testenv.Scan("Subject: s\r\n", 3000)
	nested, _ := testenv.Nested("", 30, 100)
	for _, seed := range []string{
		scan, nested,
		"Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nx\r\n--m--\r\n",
		"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/html\r\n\r\n<b>\r\n--a\r\nContent-Type: text/plain\r\n\r\nx\r\n--a--\r\n",
		"Content-Type: multipart/related; boundary=r\r\n\r\n--r\r\nContent-ID: <i>\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=3D=\r\n--r",
		"Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m--\r\n--m\r\n",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(bytes.NewReader(data))
		h, err := textproto.NewReader(br).ReadMIMEHeader()
		if err != nil {
			return
		}
		rest, _ := io.ReadAll(br)
		var s scratchCount
		snd := &sender{t: &Transport{tempDir: dir}}
		p := &parsed{scratch: &s}
		err = snd.walk(context.Background(), p, h, bytes.NewReader(rest))
		var decoded int64
		for _, pt := range p.parts {
			decoded += pt.size
		}
		n := len(p.parts)
		p.close()
		if err != nil && !permanentContent(err) {
			t.Fatalf("a failure that is not a permanent content error: %v", err)
		}
		if n > maxMIMEParts {
			t.Fatalf("%d parts", n)
		}
		// Decoding only shrinks; a body's conversion to UTF-8 at most
		// triples (an invalid byte becomes U+FFFD).
		if decoded > int64(len(rest)) || len(p.body) > 3*len(rest) {
			t.Fatalf("decoded %d bytes and a body of %d from %d", decoded, len(p.body), len(rest))
		}
		if s.taken != 0 {
			t.Fatalf("%d scratch bytes left taken", s.taken)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("%d temporary files left", len(entries))
		}
	})
}
