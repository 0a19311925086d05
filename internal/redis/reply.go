package redis

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Reply is the answer to one command: a value, or an error (the
// server's Error, Nil, or why the command did not get an answer).
type Reply struct {
	val any
	err error
}

func newReply(v any, err error) *Reply {
	if err == nil {
		switch e := v.(type) {
		case nil:
			err = Nil
		case Error:
			err = e
		}
	}
	if err != nil {
		v = nil
	}
	return &Reply{val: v, err: err}
}

// Err is the reply's error; nil when it has a value.
func (r *Reply) Err() error { return r.err }

// Val is the value: a string, an int64, or a []any of them.
func (r *Reply) Val() any { return r.val }

// Int64 is an integer reply (or a string holding one).
func (r *Reply) Int64() (int64, error) {
	if r.err != nil {
		return 0, r.err
	}
	return toInt64(r.val)
}

// Int is Int64 for smaller numbers.
func (r *Reply) Int() (int, error) {
	n, err := r.Int64()
	return int(n), err
}

// Text is a string reply.
func (r *Reply) Text() (string, error) {
	if r.err != nil {
		return "", r.err
	}
	switch v := r.val.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	}
	return "", fmt.Errorf("redis: a %T reply where a string was expected", r.val)
}

// Slice is an array reply.
func (r *Reply) Slice() ([]any, error) {
	if r.err != nil {
		return nil, r.err
	}
	a, ok := r.val.([]any)
	if !ok {
		return nil, fmt.Errorf("redis: a %T reply where an array was expected", r.val)
	}
	return a, nil
}

// Int64Slice is an array of integers.
func (r *Reply) Int64Slice() ([]int64, error) {
	a, err := r.Slice()
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(a))
	for i, v := range a {
		if out[i], err = toInt64(v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// StringMap is a flat array of field, value pairs (HGETALL).
func (r *Reply) StringMap() (map[string]string, error) {
	a, err := r.Slice()
	if err != nil {
		return nil, err
	}
	if len(a)%2 != 0 {
		return nil, fmt.Errorf("redis: %d elements where pairs were expected", len(a))
	}
	out := make(map[string]string, len(a)/2)
	for i := 0; i < len(a); i += 2 {
		k, ok1 := a[i].(string)
		v, ok2 := a[i+1].(string)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("redis: a pair of %T and %T where strings were expected", a[i], a[i+1])
		}
		out[k] = v
	}
	return out, nil
}

func toInt64(v any) (int64, error) {
	switch v := v.(type) {
	case int64:
		return v, nil
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("redis: %.40q is not an integer", v)
		}
		return n, nil
	}
	return 0, fmt.Errorf("redis: a %T reply where an integer was expected", v)
}

// Script is a Lua script run by its SHA1 (EVALSHA), sent whole only when
// the server does not have it yet.
type Script struct {
	src, sha string
}

// NewScript returns the script of src.
func NewScript(src string) *Script {
	h := sha1.Sum([]byte(src))
	return &Script{src: src, sha: hex.EncodeToString(h[:])}
}

// Run runs the script with keys and args.
func (s *Script) Run(ctx context.Context, c *Client, keys []string, args ...any) *Reply {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, "EVALSHA", s.sha, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	a = append(a, args...)
	r := c.Do(ctx, a...)
	if e, ok := r.err.(Error); ok && strings.HasPrefix(string(e), "NOSCRIPT") {
		a[0], a[1] = "EVAL", s.src
		r = c.Do(ctx, a...)
	}
	return r
}
