package smtp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"regexp"
	"slices"
	"syscall"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// submission is one attempt to hand a message to Exchange.
type submission struct {
	host   string
	tenant string
	obs    upstream.Observer
}

// report tells the observer how the attempt ended.
func (s *submission) report(receipt message.Receipt, err error) {
	upstream.Report(s.obs, s.tenant, receipt, err)
}

// timed runs f and reports its duration as stage.
func (s *submission) timed(stage string, f func() error) error {
	start := time.Now()
	err := f()
	s.obs.UpstreamStage(s.tenant, stage, time.Since(start))
	return err
}

// errStale is a reused connection found closed before its message went
// (Exchange closes idle connections): the message goes again on a new one.
var errStale = errors.New("the idle connection to Exchange was closed")

// send runs one transaction on an authenticated connection, reused or
// not (RSET opens the flight of a reused one). Each recipient Exchange
// refuses gets its own outcome in the receipt; the message goes to those
// it accepted, unless m.AllRecipients.
//
// With PIPELINING the envelope and, with CHUNKING, the body (its first
// chunkSize bytes) go in one flight, and the replies are read after it:
// one round trip for a message up to chunkSize. A message for all its
// recipients or none holds its body until every RCPT is answered.
func (s *submission) send(c *client, m *message.Message, body *bodySender, reused bool) (message.Receipt, error) {
	if !validLine(m.From) || slices.ContainsFunc(m.To, func(a string) bool { return !validLine(a) }) {
		return message.Receipt{}, &message.Error{Class: message.Permanent, Stage: message.StageMail, Host: s.host,
			Err: errors.New("an address holds a line break")}
	}
	x := &flight{c: c, eager: !c.has("PIPELINING")}
	chunking := c.has("CHUNKING")
	hold := m.AllRecipients && len(m.To) > 1
	if reused {
		x.cmd(2, commandTimeout, "RSET")
	}
	x.cmd(2, commandTimeout, "%s", c.mailCommand(m))
	for _, to := range m.To {
		x.cmd(2, commandTimeout, "%s", c.rcptCommand(m, to))
	}
	body.begin(x)
	if !hold {
		body.start(chunking)
	}
	if body.srcErr != nil {
		return message.Receipt{}, body.sourceFailed(c)
	}
	if x.err != nil {
		if reused && closedByPeer(x.err) {
			// Nothing was answered yet: the connection was gone.
			body.rewind()
			return message.Receipt{}, errStale
		}
		return message.Receipt{}, s.fail(message.StageMail, "", x.err)
	}

	start := time.Now()
	if reused {
		if _, err := x.next(); err != nil {
			var re *replyError
			if errors.As(err, &re) && re.Code == 421 || closedByPeer(err) {
				body.rewind()
				return message.Receipt{}, errStale
			}
			// Another refusal of RSET: what follows tells.
		}
	}
	_, err := x.next()
	var mailErr *message.Error
	if err != nil {
		if mailErr = s.fail(message.StageMail, "", err); mailErr.Class == message.Broken {
			return message.Receipt{}, mailErr
		}
	}
	s.obs.UpstreamStage(s.tenant, string(message.StageMail), time.Since(start))
	start = time.Now()
	receipt, err := s.recipients(x, m.To, mailErr != nil)
	if err != nil {
		return message.Receipt{}, err
	}
	s.obs.UpstreamStage(s.tenant, string(message.StageRcpt), time.Since(start))
	start = time.Now()
	defer func() { s.obs.UpstreamStage(s.tenant, string(message.StageData), time.Since(start)) }()

	nobody := mailErr != nil || len(receipt.Accepted) == 0 || m.AllRecipients && len(receipt.Refused) > 0
	if nobody {
		// Nothing goes. The body's command, if it went, was refused for
		// want of recipients; the next message's RSET ends the
		// transaction.
		if body.started {
			if err := body.abandon(); err != nil {
				return message.Receipt{}, s.fail(message.StageData, "", err)
			}
		}
		if mailErr != nil {
			return message.Receipt{}, mailErr
		}
		return message.Receipt{Refused: receipt.Refused}, firstRefusal(receipt.Refused)
	}
	if !body.started {
		body.start(chunking)
	}
	final, err := body.finish()
	if err != nil {
		if body.srcErr != nil {
			return message.Receipt{}, body.sourceFailed(c)
		}
		return message.Receipt{}, s.fail(message.StageData, "", err)
	}
	receipt.Reply, receipt.UpstreamID = successReply(final), queueID(final.Text)
	return receipt, nil
}

// recipients reads the replies to the RCPT commands: who Exchange took,
// who it refused and why; nobody when MAIL was refused (mailRefused). A
// broken connection is the error.
func (s *submission) recipients(x *flight, to []string, mailRefused bool) (message.Receipt, error) {
	var receipt message.Receipt
	for _, rcpt := range to {
		_, err := x.next()
		switch {
		case err == nil && !mailRefused:
			receipt.Accepted = append(receipt.Accepted, rcpt)
		case err == nil:
		default:
			e := s.fail(message.StageRcpt, rcpt, err)
			if e.Class == message.Broken {
				return message.Receipt{}, e
			}
			if !mailRefused {
				receipt.Refused = append(receipt.Refused, e)
			}
		}
	}
	return receipt, nil
}

// closedByPeer says whether err is the connection found closed by the
// other end, as Exchange closes idle ones; not a timeout, after which the
// server may yet act on what it was sent, nor a close of ours.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// flight is the commands of one transaction and their replies, read in
// order: after the whole flight with PIPELINING, else each as its
// command goes (eager).
type flight struct {
	c     *client
	eager bool
	wants []want
	got   []result // eager: replies read, not yet taken
	err   error    // the first failure to write
}

type want struct {
	code    int
	timeout time.Duration
}

type result struct {
	r   message.Reply
	err error
}

// cmd writes a command whose reply must be want (want < 10: its class).
func (x *flight) cmd(code int, timeout time.Duration, format string, args ...any) {
	if x.err != nil {
		return
	}
	if x.err = x.c.write(format, args...); x.err != nil {
		return
	}
	x.expect(code, timeout)
}

// expect notes a reply to come for what was just written.
func (x *flight) expect(code int, timeout time.Duration) {
	if !x.eager {
		x.wants = append(x.wants, want{code, timeout})
		return
	}
	r, err := x.c.reply(code, timeout)
	x.got = append(x.got, result{r, err})
}

// next returns the next command's reply.
func (x *flight) next() (message.Reply, error) {
	if x.err != nil {
		return message.Reply{}, x.err
	}
	if len(x.got) > 0 {
		r := x.got[0]
		x.got = x.got[1:]
		return r.r, r.err
	}
	if len(x.wants) == 0 {
		return message.Reply{}, errors.New("smtp: a reply was read for no command")
	}
	w := x.wants[0]
	x.wants = x.wants[1:]
	return x.c.reply(w.code, w.timeout)
}

// bodySender sends a message's body: BDAT chunks with CHUNKING, else
// DATA and the body dot-stuffed. The body is read once; the first chunk,
// read before a reused connection is known to be alive, is kept until it
// is, to go again on a new connection.
type bodySender struct {
	src     *message.SourceReader
	buf     *[]byte
	first   []byte // the first chunk as written, until the flight is answered
	replay  []byte // the first chunk to send again, before reading on
	x       *flight
	started bool
	bdat    bool
	done    bool // the last chunk is written
	tail    [2]byte
	srcErr  error
	// lastChunk is the chunk just written, and replayDone whether it
	// was the last.
	lastChunk  []byte
	replayDone bool
}

func newBodySender(m *message.Message) *bodySender {
	return &bodySender{src: &message.SourceReader{R: m.Body}}
}

// begin starts an attempt on x.
func (b *bodySender) begin(x *flight) {
	b.x, b.started, b.done = x, false, false
}

// rewind makes the next attempt send the first chunk again: nothing else
// of the body was read.
func (b *bodySender) rewind() {
	b.replay, b.first = b.first, nil
}

// start writes the body's command: the first chunk with CHUNKING, the
// whole body if it fits; DATA otherwise.
func (b *bodySender) start(chunking bool) {
	b.started, b.bdat = true, chunking
	if !chunking {
		b.x.cmd(354, commandTimeout, "DATA")
		return
	}
	if b.buf == nil {
		b.buf = chunks.Get().(*[]byte)
	}
	b.chunk()
	b.first = b.lastChunk
}

// chunk reads and writes the next BDAT chunk; the last one says LAST and
// ends with CRLF.
func (b *bodySender) chunk() {
	var data []byte
	if b.replay != nil {
		data, b.replay = b.replay, nil
		b.done = b.replayDone
	} else {
		buf := (*b.buf)[:chunkSize-2] // room for a missing final CRLF
		n, err := io.ReadFull(b.src, buf)
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			b.done = true
		case err != nil:
			b.srcErr = err
			if b.x.err == nil {
				b.x.err = err
			}
			return
		}
		data = buf[:n]
		if n >= 2 {
			b.tail = [2]byte{data[n-2], data[n-1]}
		} else if n == 1 {
			b.tail = [2]byte{b.tail[1], data[0]}
		}
		if b.done && b.tail != [2]byte{'\r', '\n'} {
			data = append(data, '\r', '\n')
		}
	}
	b.lastChunk, b.replayDone = data, b.done
	if b.x.err != nil {
		return
	}
	last := ""
	if b.done {
		last = " LAST"
	}
	// Each chunk has its time to go, however long the whole body takes.
	b.x.c.conn.SetWriteDeadline(time.Now().Add(commandTimeout))
	b.x.c.sent++
	fmt.Fprintf(b.x.c.w, "BDAT %d%s\r\n", len(data), last)
	if _, b.x.err = b.x.c.w.Write(data); b.x.err != nil {
		return
	}
	timeout := commandTimeout
	if b.done {
		timeout = finalTimeout
	}
	b.x.expect(250, timeout)
}

// finish sends the rest of the body and returns the final reply.
func (b *bodySender) finish() (message.Reply, error) {
	if !b.bdat {
		if _, err := b.x.next(); err != nil {
			return message.Reply{}, err
		}
		return b.data()
	}
	// The first chunk's reply: a refusal there stops the rest.
	r, err := b.x.next()
	if err != nil {
		// The rest never goes; the next message's RSET ends the
		// transaction.
		return r, err
	}
	for !b.done && b.x.err == nil {
		b.chunk()
	}
	if b.x.err != nil {
		return message.Reply{}, b.x.err
	}
	// Every chunk's reply, in order; the first refusal is the outcome.
	var first error
	for len(b.x.wants)+len(b.x.got) > 0 {
		rr, err := b.x.next()
		if err != nil && first == nil {
			first = err
		}
		r = rr
	}
	return r, first
}

// data streams the body after DATA's 354, dot-stuffed, and reads the
// final reply.
func (b *bodySender) data() (message.Reply, error) {
	c := b.x.c
	c.conn.SetWriteDeadline(time.Now().Add(submitTimeout))
	dw := textproto.NewWriter(c.w).DotWriter()
	var src io.Reader = b.src
	if b.replay != nil {
		// A first chunk read for a connection that offered CHUNKING
		// and was found closed.
		src, b.replay = io.MultiReader(bytes.NewReader(b.replay), b.src), nil
	}
	if _, err := io.Copy(dw, src); err != nil {
		if b.src.Err != nil {
			b.srcErr = b.src.Err
		}
		return message.Reply{}, err
	}
	if err := dw.Close(); err != nil {
		return message.Reply{}, err
	}
	c.sent++
	return c.reply(250, finalTimeout)
}

// abandon reads the reply to a body command that went while nobody took
// the message. A DATA that got its 354 anyway cannot be ended without
// sending a message: the connection closes.
func (b *bodySender) abandon() error {
	r, err := b.x.next()
	if !b.bdat && err == nil && r.Code == 354 {
		b.x.c.close()
		return nil
	}
	// A refused BDAT's chunk was read by the server all the same; the
	// rest never goes.
	return nil
}

// sourceFailed ends an attempt whose body could not be read (the
// device's upload failed, a spool file could not be read): the
// connection closes, so that Exchange, without the last chunk or the
// final dot, discards what it has.
func (b *bodySender) sourceFailed(c *client) error {
	c.close()
	return &message.Error{Class: message.Temporary, Stage: message.StageSource, Err: b.srcErr}
}

// release gives back the chunk buffer.
func (b *bodySender) release() {
	if b.buf != nil {
		chunks.Put(b.buf)
		b.buf = nil
	}
}

// firstRefusal is the error of a message no recipient took: the first
// refusal worth another attempt, else the first.
func firstRefusal(refused []*message.Error) *message.Error {
	for _, e := range refused {
		if !e.Permanent() {
			return e
		}
	}
	return refused[0]
}

// fail turns err at stage into a *message.Error: Exchange's reply,
// classified, or a broken connection.
func (s *submission) fail(stage message.Stage, rcpt string, err error) *message.Error {
	var re *replyError
	if errors.As(err, &re) {
		return message.Classify(s.host, stage, re.Reply, rcpt)
	}
	return &message.Error{Class: message.Broken, Stage: stage, Host: s.host, Recipient: rcpt, Err: err}
}

// reusable says whether a connection is still good after err.
func reusable(err error) bool {
	if err == nil {
		return true
	}
	var e *message.Error
	return errors.As(err, &e) && e.ConnectionUsable()
}

// successReply is Exchange's final 250, e.g. "2.0.0 OK <id> [...]".
func successReply(r message.Reply) message.Reply {
	if r.Enhanced == [3]int{} {
		r.Enhanced = [3]int{2, 0, 0}
	}
	return r
}

var queueIDRE = regexp.MustCompile(`<([^<>\s]+)>`)

func queueID(reply string) string {
	if m := queueIDRE.FindStringSubmatch(reply); m != nil {
		return m[1]
	}
	return ""
}
