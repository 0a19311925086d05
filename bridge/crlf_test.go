package bridge

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestCRLFReader(t *testing.T) {
	for in, want := range map[string]string{
		"":                                     "",
		"a\r\nb\r\n":                           "a\r\nb\r\n",
		"a\nb\n":                               "a\r\nb\r\n",
		"a\rb\r":                               "a\r\nb\r\n",
		"A\r.\r\nMAIL FROM:<x>\r\nRCPT TO:<y>": "A\r\n.\r\nMAIL FROM:<x>\r\nRCPT TO:<y>",
		"\r\r\n\n\r":                           "\r\n\r\n\r\n\r\n",
		"\n\r":                                 "\r\n\r\n",
		"no ending":                            "no ending",
	} {
		for name, r := range map[string]io.Reader{
			"whole":    strings.NewReader(in),
			"bytewise": iotest.OneByteReader(strings.NewReader(in)),
			"halves":   iotest.HalfReader(strings.NewReader(in)),
		} {
			got, err := io.ReadAll(newCRLFReader(r))
			if err != nil || string(got) != want {
				t.Errorf("%q (%s) = %q %v, want %q", in, name, got, err, want)
			}
		}
	}
	// A large body: every line ending is CRLF, nothing else changes.
	var in, want bytes.Buffer
	for i := 0; i < 20000; i++ {
		ends := []string{"\r\n", "\n", "\r"}
		in.WriteString("line of text " + strings.Repeat("x", i%100) + ends[i%3])
		want.WriteString("line of text " + strings.Repeat("x", i%100) + "\r\n")
	}
	got, _ := io.ReadAll(iotest.HalfReader(newCRLFReader(&in)))
	if !bytes.Equal(got, want.Bytes()) {
		t.Error("a large body was changed beyond its line endings")
	}
	// Errors pass through after the data.
	if err := iotest.TestReader(newCRLFReader(strings.NewReader("a\r\nb\r\n")), []byte("a\r\nb\r\n")); err != nil {
		t.Error(err)
	}
}
