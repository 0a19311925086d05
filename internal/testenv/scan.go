package testenv

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"mime/multipart"
	"net/textproto"
)

// Scan is a scanner's message: the header lines given (From, To,
// Subject, ...; each ending in CRLF), a line of text, and a PDF of
// pdfSize bytes attached in base64, in 76-character lines. It returns
// the message and the PDF.
func Scan(header string, pdfSize int) (string, []byte) {
	pdf := make([]byte, pdfSize)
	for i := range pdf {
		pdf[i] = byte(i*31 + i>>12)
	}
	copy(pdf, "%PDF-1.7\n")
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	b.WriteString(header + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=" + mw.Boundary() + "\r\n\r\n")
	pw, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	pw.Write([]byte("Scanned document attached.\r\n"))
	pw, _ = mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/pdf; name=\"scan.pdf\""},
		"Content-Transfer-Encoding": {"base64"}, "Content-Disposition": {"attachment; filename=\"scan.pdf\""}})
	enc := base64.StdEncoding.EncodeToString(pdf)
	for len(enc) > 76 {
		pw.Write([]byte(enc[:76] + "\r\n"))
		enc = enc[76:]
	}
	pw.Write([]byte(enc + "\r\n"))
	mw.Close()
	return b.String(), pdf
}

// Nested is a message whose multiparts are nested depth deep, with a
// line of text and an attachment of attachSize bytes (base64) innermost:
// the structure of a poison message at a depth of hundreds of thousands,
// and of an odd but fair one at a few dozen. It returns the message and
// the attachment.
func Nested(header string, depth, attachSize int) (string, []byte) {
	attach := make([]byte, attachSize)
	for i := range attach {
		attach[i] = byte(i * 7)
	}
	var b bytes.Buffer
	b.Grow(depth*64 + attachSize*4/3 + len(header) + 1024)
	b.WriteString(header + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n")
	for i := 0; i < depth-1; i++ {
		fmt.Fprintf(&b, "--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n", i, i+1)
	}
	last := depth - 1
	fmt.Fprintf(&b, "--b%d\r\nContent-Type: text/plain\r\n\r\nnested %d deep\r\n", last, depth)
	fmt.Fprintf(&b, "--b%d\r\nContent-Type: application/octet-stream; name=\"nested.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", last)
	enc := base64.StdEncoding.EncodeToString(attach)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	for i := last; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\r\n", i)
	}
	return b.String(), attach
}
