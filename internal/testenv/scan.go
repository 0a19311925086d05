package testenv

import (
	"bytes"
	"encoding/base64"
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
