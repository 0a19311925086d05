package graph

import (
	"bytes"
	"mime"
	"net/mail"
	"strings"

	"github.com/smtpbridge/smtpbridge/internal/header"
)

// rewritten is a header block whose recipients are the envelope's.
type rewritten struct {
	header      []byte
	to, cc, bcc []*mail.Address // the envelope's recipients, where they go
}

// recipientFields are the fields Graph takes recipients from, or that
// could name one the envelope does not have.
var recipientFields = map[string]bool{"to": true, "cc": true, "bcc": true, "resent-to": true, "resent-cc": true, "resent-bcc": true}

// rewriteRecipients makes a header block's recipients exactly the
// envelope's: To and Cc keep the envelope recipients they name (with
// their display names) and lose any other; every envelope recipient they
// do not name goes in Bcc; other recipient fields go.
func rewriteRecipients(h *header.Header, envelope []string) rewritten {
	want := map[string]string{} // lower case -> as in the envelope
	for _, a := range envelope {
		want[strings.ToLower(a)] = a
	}
	var out rewritten
	placed := map[string]bool{}
	var b bytes.Buffer
	for _, f := range h.Fields {
		if !recipientFields[f.Name] {
			b.Write(f.Raw)
			continue
		}
		if f.Name != "to" && f.Name != "cc" {
			continue
		}
		list, _ := mail.ParseAddressList(f.Value())
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
		name := "To"
		if f.Name == "to" {
			out.to = append(out.to, kept...)
		} else {
			name = "Cc"
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

// decodeHeader decodes RFC 2047 encoded words in a value net/mail
// unfolded.
var wordDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

func decodeHeader(v string) string {
	v = strings.TrimSpace(v)
	d, err := wordDecoder.DecodeHeader(v)
	if err != nil {
		return v
	}
	return d
}
