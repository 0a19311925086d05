// Package redis is the small Redis client the replicas share their
// limits through: the commands and scripts the cluster package runs,
// pipelined, on one server, through Sentinel, or on a Redis Cluster
// (slots, MOVED and ASK), over TCP or TLS with AUTH. It speaks RESP2,
// which every Redis and Valkey since 2.0 answers, and nothing more: a
// general client (go-redis) linked every command of every kind of
// client, a sixth of the binary.
//
// Every call is bounded: in time by Options.Timeout and its context
// (cancelling the context ends the call at once), and in what it reads
// from the server (the sizes below). It never retries a command that
// the server may have run, with one exception that only counts twice
// (see Client.exec).
package redis

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// Bounds on a reply. The cluster package's largest are a hash of the
// blocked addresses and a minute's starts: far below.
const (
	maxLine  = 64 << 10 // a status, error or number line
	maxBulk  = 16 << 20 // one string
	maxArray = 1 << 20  // elements of one array
	maxDepth = 8        // arrays in arrays (CLUSTER SLOTS needs 3)
	maxReply = 64 << 20 // bytes of one reply, elements counted as 16
)

// Nil is the error of a reply that is nil: a key that does not exist.
var Nil = errors.New("redis: nil")

// Error is an error reply from the server, such as "WRONGTYPE …" or
// "NOSCRIPT …".
type Error string

func (e Error) Error() string { return string(e) }

// errProtocol marks a reply the client cannot read; the connection is
// closed.
var errProtocol = errors.New("redis: protocol error")

// appendCommand encodes args as a RESP array of bulk strings.
func appendCommand(b []byte, args []any) ([]byte, error) {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		var s string
		switch v := a.(type) {
		case string:
			s = v
		case []byte:
			s = string(v)
		case int:
			s = strconv.Itoa(v)
		case int64:
			s = strconv.FormatInt(v, 10)
		case float64:
			s = strconv.FormatFloat(v, 'f', -1, 64)
		default:
			return nil, fmt.Errorf("redis: cannot send an argument of type %T", a)
		}
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, '\r', '\n')
		b = append(b, s...)
		b = append(b, '\r', '\n')
	}
	return b, nil
}

// reader reads replies: string (status and bulk), int64, []any, nil, or
// Error.
type reader struct {
	br     *bufio.Reader
	budget int
}

func newReader(r io.Reader) *reader { return &reader{br: bufio.NewReaderSize(r, 16<<10)} }

// reply reads one whole reply.
func (r *reader) reply() (any, error) {
	r.budget = maxReply
	return r.value(0)
}

func (r *reader) line() ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(line) > maxLine {
			return nil, fmt.Errorf("%w: a line longer than %d bytes", errProtocol, maxLine)
		}
	}
	if len(line) < 3 || line[len(line)-2] != '\r' || len(line) > maxLine {
		return nil, fmt.Errorf("%w: malformed line %.40q", errProtocol, line)
	}
	return line[:len(line)-2], nil
}

func (r *reader) value(depth int) (any, error) {
	line, err := r.line()
	if err != nil {
		return nil, err
	}
	switch line[0] {
	case '+':
		return string(line[1:]), nil
	case '-':
		return Error(line[1:]), nil
	case ':':
		n, err := strconv.ParseInt(string(line[1:]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: integer %.40q", errProtocol, line[1:])
		}
		return n, nil
	case '$':
		n, err := r.size(line[1:], maxBulk, 1)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.br, buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if buf[n] != '\r' || buf[n+1] != '\n' {
			return nil, fmt.Errorf("%w: a string not ended by CRLF", errProtocol)
		}
		return string(buf[:n]), nil
	case '*':
		if depth >= maxDepth {
			return nil, fmt.Errorf("%w: arrays nested deeper than %d", errProtocol, maxDepth)
		}
		n, err := r.size(line[1:], maxArray, 16)
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, 0, min(n, 1024))
		for range n {
			v, err := r.value(depth + 1)
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown reply type %q", errProtocol, line[0])
}

// size reads a length, -1 for nil, bounded by limit and by what is left
// of the reply's budget at cost bytes each.
func (r *reader) size(b []byte, limit, cost int) (int, error) {
	n, err := strconv.Atoi(string(b))
	switch {
	case err != nil || n < -1:
		return 0, fmt.Errorf("%w: length %.40q", errProtocol, b)
	case n == -1:
		return -1, nil
	case n > limit:
		return 0, fmt.Errorf("%w: %d elements or bytes, more than the %d allowed", errProtocol, n, limit)
	case n > math.MaxInt/cost || n*cost > r.budget:
		return 0, fmt.Errorf("%w: a reply larger than %d bytes", errProtocol, maxReply)
	}
	r.budget -= n * cost
	return n, nil
}
