package graph

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"net/textproto"
	"strings"
)

// maxHeader bounds a message's header block.
const maxHeader = 1 << 20

// readHeader reads the header block, through its empty line; what
// follows stays in r.
func readHeader(r *bufio.Reader) ([]byte, error) {
	var h bytes.Buffer
	for {
		line, err := r.ReadSlice('\n')
		h.Write(line)
		if h.Len() > maxHeader {
			return nil, errors.New("the message's header block is over 1 MiB")
		}
		if bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n")) {
			return h.Bytes(), nil
		}
		if err == io.EOF {
			// A message of header fields only.
			if h.Len() > 0 && !bytes.HasSuffix(h.Bytes(), []byte("\r\n")) {
				h.WriteString("\r\n")
			}
			h.WriteString("\r\n")
			return h.Bytes(), nil
		}
		if err != nil && err != bufio.ErrBufferFull {
			return nil, err
		}
	}
}

// rewritten is a header block whose recipients are the envelope's.
type rewritten struct {
	header      []byte
	to, cc, bcc []*mail.Address // the envelope's recipients, where they go
}

// recipientFields are the fields Graph takes recipients from, or that
// could name one the envelope does not have.
var recipientFields = map[string]bool{"To": true, "Cc": true, "Bcc": true, "Resent-To": true, "Resent-Cc": true, "Resent-Bcc": true}

// rewriteRecipients makes a header block's recipients exactly the
// envelope's: To and Cc keep the envelope recipients they name (with
// their display names) and lose any other; every envelope recipient they
// do not name goes in Bcc; other recipient fields go.
func rewriteRecipients(header []byte, envelope []string) rewritten {
	want := map[string]string{} // lower case -> as in the envelope
	for _, a := range envelope {
		want[strings.ToLower(a)] = a
	}
	var out rewritten
	placed := map[string]bool{}
	var b bytes.Buffer
	for _, f := range splitFields(header) {
		name := textproto.CanonicalMIMEHeaderKey(f.name)
		if !recipientFields[name] {
			b.Write(f.raw)
			continue
		}
		if name != "To" && name != "Cc" {
			continue
		}
		list, _ := mail.ParseAddressList(unfold(f.value))
		var kept []*mail.Address
		for _, a := range list {
			k := strings.ToLower(a.Address)
			if _, ok := want[k]; ok && !placed[k] {
				placed[k] = true
				kept = append(kept, a)
			}
		}
		if len(kept) == 0 {
			continue
		}
		if name == "To" {
			out.to = append(out.to, kept...)
		} else {
			out.cc = append(out.cc, kept...)
		}
		writeList(&b, name, kept)
	}
	for _, a := range envelope {
		if k := strings.ToLower(a); !placed[k] {
			placed[k] = true
			out.bcc = append(out.bcc, &mail.Address{Address: a})
		}
	}
	if len(out.bcc) > 0 {
		writeList(&b, "Bcc", out.bcc)
	}
	b.WriteString("\r\n")
	out.header = b.Bytes()
	return out
}

func writeList(b *bytes.Buffer, name string, list []*mail.Address) {
	b.WriteString(name + ": ")
	for i, a := range list {
		if i > 0 {
			b.WriteString(",\r\n ")
		}
		b.WriteString(a.String())
	}
	b.WriteString("\r\n")
}

type field struct {
	name, value string
	raw         []byte // the field as it was, folded lines included
}

// splitFields splits a header block (with its blank line) into fields.
func splitFields(h []byte) []field {
	var out []field
	lines := bytes.SplitAfter(h, []byte("\r\n"))
	for _, l := range lines {
		if len(l) == 0 || bytes.Equal(l, []byte("\r\n")) {
			continue
		}
		if (l[0] == ' ' || l[0] == '\t') && len(out) > 0 {
			last := &out[len(out)-1]
			last.raw = append(last.raw, l...)
			last.value += string(l)
			continue
		}
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok {
			continue // not a field: dropped
		}
		out = append(out, field{name: strings.TrimSpace(string(name)), value: string(value), raw: bytes.Clone(l)})
	}
	return out
}

func unfold(v string) string {
	return strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(v))
}

// decodeWords decodes RFC 2047 encoded words.
var wordDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

func decodeHeader(v string) string {
	d, err := wordDecoder.DecodeHeader(unfold(v))
	if err != nil {
		return unfold(v)
	}
	return d
}
