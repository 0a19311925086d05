package redis

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestReplies(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // fmt of the value, or the error's start
	}{
		{"+OK\r\n", "OK"},
		{":-42\r\n", "-42"},
		{"$5\r\nhello\r\n", "hello"},
		{"$0\r\n\r\n", ""},
		{"$-1\r\n", "<nil>"},
		{"*-1\r\n", "<nil>"},
		{"*2\r\n$1\r\na\r\n:1\r\n", "[a 1]"},
		{"*1\r\n*1\r\n*0\r\n", "[[[]]]"},
		{"-WRONGTYPE Operation\r\n", "WRONGTYPE Operation"},
	} {
		v, err := newReader(strings.NewReader(tc.in)).reply()
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got := fmtValue(v); got != tc.want {
			t.Errorf("%q = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func fmtValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "<nil>"
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = fmtValue(e)
		}
		return "[" + strings.Join(parts, " ") + "]"
	case int64:
		return itoa(v)
	case string:
		return v
	case Error:
		return string(v)
	}
	return "?"
}

func itoa[N int | int64](n N) string { return strconv.FormatInt(int64(n), 10) }

// A server's reply is bounded: what it claims and what it sends.
func TestReplyBounds(t *testing.T) {
	for name, in := range map[string]string{
		"deep":           strings.Repeat("*1\r\n", maxDepth+1) + ":1\r\n",
		"long string":    "$" + itoa(maxBulk+1) + "\r\n",
		"long array":     "*" + itoa(maxArray+1) + "\r\n",
		"long line":      "+" + strings.Repeat("x", maxLine+10) + "\r\n",
		"no CR":          "+OK\n",
		"bad length":     "$-5\r\n",
		"bad integer":    ":12x\r\n",
		"unknown type":   "!3\r\nerr\r\n",
		"string no CRLF": "$2\r\nabcd",
		"cut":            "$10\r\nabc",
		"empty line":     "\r\n",
	} {
		_, err := newReader(strings.NewReader(in)).reply()
		if err == nil {
			t.Errorf("%s: read without an error", name)
		}
	}
	// The reply's budget: five strings of 15 MiB each pass the bound on
	// one string, not the one on the reply (64 MiB).
	r := newReader(strings.NewReader(""))
	r.budget = maxReply
	for i := range 5 {
		_, err := r.size([]byte(itoa(15<<20)), maxBulk, 1)
		if (i < 4) != (err == nil) {
			t.Errorf("string %d of 15 MiB: %v", i+1, err)
		}
	}
}

func TestSlots(t *testing.T) {
	if got := crc16("123456789"); got != 0x31C3 {
		t.Errorf("crc16 = %#x, want 0x31c3", got)
	}
	// The values Redis's CLUSTER KEYSLOT documentation gives.
	for key, want := range map[string]int{"somekey": 11058, "foo{hash_tag}": 2515, "hash_tag": 2515, "foo{}{bar}": slotOf("foo{}{bar}"), "{user1000}.following": slotOf("user1000")} {
		if got := slotOf(key); got != want {
			t.Errorf("slot of %q = %d, want %d", key, got, want)
		}
	}
	if slotOf("foo{}{bar}") == slotOf("bar") {
		t.Error("an empty hash tag {} counts: the whole key is hashed")
	}
}

// fake is a RESP server on loopback; handle answers each command with
// raw RESP, or "" to close the connection; an answer ending in "\x00" is
// sent, and the connection closed.
type fake struct {
	ln     net.Listener
	handle func(c *fakeConn, cmd []string) string
	conns  atomic.Int32
}

type fakeConn struct {
	asking bool
	authed bool
}

func startFake(t *testing.T, handle func(c *fakeConn, cmd []string) string) *fake {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{ln: ln, handle: handle}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			f.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				rd := newReader(nc)
				st := &fakeConn{}
				for {
					v, err := rd.reply()
					if err != nil {
						return
					}
					var cmd []string
					for _, a := range v.([]any) {
						cmd = append(cmd, a.(string))
					}
					out := f.handle(st, cmd)
					if out == "" {
						return
					}
					closing := strings.HasSuffix(out, "\x00")
					if _, err := nc.Write([]byte(strings.TrimSuffix(out, "\x00"))); err != nil || closing {
						return
					}
				}
			}()
		}
	}()
	return f
}

func (f *fake) addr() string { return f.ln.Addr().String() }

func TestCancelAndTimeout(t *testing.T) {
	hang := make(chan struct{})
	f := startFake(t, func(*fakeConn, []string) string { <-hang; return "" })
	t.Cleanup(func() { close(hang) }) // before the fake's cleanup waits for its handlers
	c := New(Options{Addr: f.addr(), Timeout: time.Minute})
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	err := c.Do(ctx, "PING").Err()
	if !errors.Is(err, context.Canceled) || time.Since(start) > 10*time.Second {
		t.Errorf("cancelled after 50ms: %v after %v", err, time.Since(start))
	}
	c2 := New(Options{Addr: f.addr(), Timeout: 100 * time.Millisecond})
	defer c2.Close()
	var ne net.Error
	if err := c2.Do(context.Background(), "PING").Err(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("a server that does not answer within the timeout: %v", err)
	}
}

// A connection the server closed while it waited idle (a restart) is
// replaced, and the command answered; an error in the middle of a reply
// is not retried.
func TestServerClosedIdleConnection(t *testing.T) {
	var n atomic.Int32
	f := startFake(t, func(_ *fakeConn, cmd []string) string {
		if n.Add(1)%2 == 0 {
			return "" // every second command: the server closes
		}
		return "+PONG\r\n"
	})
	c := New(Options{Addr: f.addr()})
	defer c.Close()
	for i := range 3 {
		if v, err := c.Do(context.Background(), "PING").Text(); err != nil || v != "PONG" {
			t.Fatalf("PING %d: %q %v", i, v, err)
		}
	}
	if got := f.conns.Load(); got != 3 {
		t.Errorf("%d connections for 3 PINGs on a server closing after each, want 3", got)
	}

	// The server closes after half a reply, every time: it got the
	// command, which is not sent again.
	var got atomic.Int32
	cut := startFake(t, func(_ *fakeConn, cmd []string) string {
		if got.Add(1) == 1 {
			return "+PONG\r\n"
		}
		return "*2\r\n:1\r\n\x00"
	})
	c2 := New(Options{Addr: cut.addr()})
	defer c2.Close()
	c2.Do(context.Background(), "PING") // a connection in the pool
	if err := c2.Do(context.Background(), "INCR", "k").Err(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("half a reply, then the server closed: %v", err)
	}
	if n := got.Load(); n != 2 {
		t.Errorf("the server got %d commands, want 2: a command it began to answer was sent again", n)
	}
}

func TestScriptAndAuth(t *testing.T) {
	var evals atomic.Int32
	f := startFake(t, func(c *fakeConn, cmd []string) string {
		switch cmd[0] {
		case "AUTH":
			if len(cmd) == 3 && cmd[1] == "bridge" && cmd[2] == "s3cret" {
				c.authed = true
				return "+OK\r\n"
			}
			return "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
		}
		if !c.authed {
			return "-NOAUTH Authentication required.\r\n"
		}
		switch cmd[0] {
		case "EVALSHA":
			return "-NOSCRIPT No matching script.\r\n"
		case "EVAL":
			evals.Add(1)
			if cmd[1] != "return ARGV[1]" || cmd[2] != "1" || cmd[3] != "k" || cmd[4] != "7" {
				return "-ERR unexpected " + strings.Join(cmd, " ") + "\r\n"
			}
			return ":7\r\n"
		}
		return "-ERR unknown command\r\n"
	})
	c := New(Options{Addr: f.addr(), Username: "bridge", Password: "s3cret"})
	defer c.Close()
	if n, err := NewScript("return ARGV[1]").Run(context.Background(), c, []string{"k"}, 7).Int(); err != nil || n != 7 {
		t.Errorf("script = %d, %v; want 7 through EVAL after NOSCRIPT", n, err)
	}
	if evals.Load() != 1 {
		t.Errorf("%d EVALs", evals.Load())
	}
	bad := New(Options{Addr: f.addr(), Username: "bridge", Password: "wrong-pass-word"})
	defer bad.Close()
	err := bad.Do(context.Background(), "PING").Err()
	if err == nil || !strings.Contains(err.Error(), "WRONGPASS") || strings.Contains(err.Error(), "wrong-pass-word") {
		t.Errorf("a wrong password: %v (want WRONGPASS, without the password)", err)
	}
}

// A Redis Cluster: commands go to their slot's node in one pipeline
// per node; MOVED and ASK are followed, TRYAGAIN waited out.
func TestClusterRouting(t *testing.T) {
	var b *fake
	var a0 string
	var tries atomic.Int32
	a := startFake(t, func(c *fakeConn, cmd []string) string {
		switch {
		case cmd[0] == "CLUSTER":
			// Slots up to 8000 on a, the rest on b.
			_, port, _ := net.SplitHostPort(b.addr())
			_, aport, _ := net.SplitHostPort(a0)
			return "*2\r\n*3\r\n:0\r\n:8000\r\n*2\r\n$9\r\n127.0.0.1\r\n:" + aport + "\r\n" +
				"*3\r\n:8001\r\n:16383\r\n*2\r\n$0\r\n\r\n:" + port + "\r\n"
		case cmd[0] == "GET" && cmd[1] == "moved":
			return "-MOVED " + itoa((slotOf("moved"))) + " " + b.addr() + "\r\n"
		case cmd[0] == "GET" && cmd[1] == "asked":
			return "-ASK " + itoa((slotOf("asked"))) + " " + b.addr() + "\r\n"
		case cmd[0] == "GET" && cmd[1] == "x-busy":
			if tries.Add(1) < 3 {
				return "-TRYAGAIN Multiple keys request during rehashing of slot\r\n"
			}
			return "$4\r\nbusy\r\n"
		case cmd[0] == "GET":
			return "$1\r\na\r\n"
		}
		return "+a\r\n"
	})
	a0 = a.addr()
	b = startFake(t, func(c *fakeConn, cmd []string) string {
		switch {
		case cmd[0] == "ASKING":
			c.asking = true
			return "+OK\r\n"
		case cmd[0] == "GET" && cmd[1] == "asked":
			if !c.asking {
				return "-MOVED " + itoa((slotOf("asked"))) + " " + a0 + "\r\n"
			}
			return "$5\r\nasked\r\n"
		case cmd[0] == "GET" && slotOf(cmd[1]) <= 8000 && cmd[1] != "moved":
			return "-MOVED " + itoa((slotOf(cmd[1]))) + " " + a0 + "\r\n"
		case cmd[0] == "GET":
			return "$1\r\nb\r\n"
		}
		return "+b\r\n"
	})
	// Keys on each side of slot 8000.
	var onA, onB string
	for i := 0; onA == "" || onB == ""; i++ {
		k := "key" + itoa(i)
		for _, w := range []string{"moved", "asked", "x-busy"} {
			if slotOf(w) > 8000 {
				t.Fatalf("the test's key %q is not in a's slots", w)
			}
		}
		if slotOf(k) <= 8000 {
			onA = k
		} else {
			onB = k
		}
	}
	c := New(Options{ClusterAddrs: []string{a.addr()}})
	defer c.Close()
	rs := c.Pipeline(context.Background(), []any{"GET", onA}, []any{"GET", onB}, []any{"GET", "moved"}, []any{"GET", "asked"}, []any{"GET", "x-busy"}, []any{"PING"})
	want := []string{"a", "b", "b", "asked", "busy", "a"}
	for i, r := range rs {
		if v, err := r.Text(); err != nil || v != want[i] {
			t.Errorf("reply %d = %q, %v; want %q", i, v, err, want[i])
		}
	}
	if tries.Load() != 3 {
		t.Errorf("TRYAGAIN: %d tries, want 3", tries.Load())
	}
}

// Whatever a server sends, reading it ends without a panic, within the
// bounds.
func FuzzReply(f *testing.F) {
	for _, s := range []string{"+OK\r\n", "*2\r\n$1\r\na\r\n:1\r\n", "*1\r\n*1\r\n*-1\r\n", "$-1\r\n", "-ERR x\r\n", "*3\r\n:1\r\n", "$99999999999\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := newReader(strings.NewReader(string(b)))
		for range 4 {
			if _, err := r.reply(); err != nil {
				return
			}
		}
	})
}
