package header

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadLimits(t *testing.T) {
	huge := "X-Long: " + strings.Repeat("a", MaxBytes) + "\r\n\r\nbody"
	if _, _, err := Read(strings.NewReader(huge)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge", err)
	}
	if _, _, err := Read(strings.NewReader(" continuation first\r\n\r\n")); !errors.Is(err, ErrMalformed) {
		t.Errorf("err = %v, want ErrMalformed", err)
	}
	h, body, err := Read(strings.NewReader("Subject: only headers"))
	if err != nil || len(h.Fields) != 1 {
		t.Fatalf("h=%v err=%v", h, err)
	}
	if rest, _ := io.ReadAll(body); len(rest) != 0 {
		t.Errorf("body %q", rest)
	}
}

func TestRead(t *testing.T) {
	in := "Subject: =?utf-8?q?hi?=\r\n there\r\nX-Bad: a\rBcc: b\x00c\r\nsubject: second\r\n\r\nbody\r\n.\r\n"
	h, body, err := Read(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if f, i := h.Get("subject"); i != 0 || f.Value() != "=?utf-8?q?hi?= there" {
		t.Errorf("Get(subject) = %q at %d", f.Value(), i)
	}
	if n := len(h.All("subject")); n != 2 {
		t.Errorf("%d subject fields", n)
	}
	if f, _ := h.Get("x-bad"); string(f.Raw) != "X-Bad: a Bcc: b c\r\n" {
		t.Errorf("bare CR and NUL not cleaned: %q", f.Raw)
	}
	h.Prepend("Received", "from x")
	h.Remove("subject")
	if got := string(h.Bytes()); got != "Received: from x\r\nX-Bad: a Bcc: b c\r\n\r\n" {
		t.Errorf("Bytes = %q", got)
	}
	if rest, _ := io.ReadAll(body); string(rest) != "body\r\n.\r\n" {
		t.Errorf("body = %q", rest)
	}
}
