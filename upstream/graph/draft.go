package graph

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/http"
	"net/mail"
	"net/textproto"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/smtpbridge/smtpbridge/message"
)

// A large message goes as a draft: its text and the checked recipients
// in one request, each attachment whole (under attachWholeMax) or in an
// upload session, then send.
const (
	// attachWholeMax is the largest attachment posted in one request:
	// its base64 in JSON stays under Graph's 4 MB.
	attachWholeMax = 2_500_000
	// chunkBytes is an upload session's chunk: under 4 MiB, a multiple
	// of 320 KiB (Graph's rules).
	chunkBytes = 10 * 320 << 10
	// maxBodyText is the most of a text or HTML body put in the draft;
	// beyond, the body goes as an attachment.
	maxBodyText = 2 << 20
	// maxCustomHeaders is how many X- headers Graph takes on a message.
	maxCustomHeaders = 5
)

type emailAddress struct {
	Address string `json:"address"`
	Name    string `json:"name,omitempty"`
}

type recipientJSON struct {
	EmailAddress emailAddress `json:"emailAddress"`
}

type headerJSON struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type draftJSON struct {
	Subject string `json:"subject"`
	Body    struct {
		ContentType string `json:"contentType"`
		Content     string `json:"content"`
	} `json:"body"`
	To         []recipientJSON `json:"toRecipients,omitempty"`
	Cc         []recipientJSON `json:"ccRecipients,omitempty"`
	Bcc        []recipientJSON `json:"bccRecipients,omitempty"`
	ReplyTo    []recipientJSON `json:"replyTo,omitempty"`
	Importance string          `json:"importance,omitempty"`
	Headers    []headerJSON    `json:"internetMessageHeaders,omitempty"`
	// InternetMessageID keeps the message's own Message-ID, which the
	// copy in Sent Items then has too (sent_items finds it by it).
	InternetMessageID string `json:"internetMessageId,omitempty"`
}

func recipients(list []*mail.Address) []recipientJSON {
	var out []recipientJSON
	for _, a := range list {
		out = append(out, recipientJSON{emailAddress{Address: a.Address, Name: a.Name}})
	}
	return out
}

// part is an attachment decoded to a temporary file.
type part struct {
	file              *os.File
	size              int64
	taken             int64 // room taken from the scratch
	name, contentType string
	contentID         string
	inline            bool
}

// parsed is a MIME message taken apart for a draft.
type parsed struct {
	bodyType, body string
	parts          []*part
	scratch        Scratch // nil: not counted
}

func (p *parsed) close() {
	for _, pt := range p.parts {
		pt.file.Close()
		os.Remove(pt.file.Name())
		if p.scratch != nil && pt.taken > 0 {
			p.scratch.ReleaseScratch(pt.taken)
		}
	}
}

// sendDraft sends a message too large for sendMail: a draft with the
// rewritten recipients, its attachments, then send. A draft left by a
// failure is deleted.
func (s *sender) sendDraft(ctx context.Context, rw rewritten, content io.Reader) (message.Receipt, error) {
	// The rewritten header block is in memory already, bounded by
	// header.MaxBytes.
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(rw.header))).ReadMIMEHeader()
	if err != nil {
		return message.Receipt{}, &message.Error{Class: message.Permanent, Stage: message.StageSource,
			Err: &message.ContentError{Reason: "the message's header does not parse"}}
	}
	msg := mail.Header(h)
	p := &parsed{scratch: s.t.scratch}
	defer p.close()
	if err := s.walk(ctx, p, h, content); err != nil {
		return message.Receipt{}, err
	}
	d := draftJSON{Subject: decodeHeader(msg.Get("Subject")), To: recipients(rw.to), Cc: recipients(rw.cc), Bcc: recipients(rw.bcc)}
	d.Body.ContentType, d.Body.Content = p.bodyType, p.body
	if d.Body.ContentType == "" {
		d.Body.ContentType = "text"
	}
	if v := msg.Get("Reply-To"); v != "" {
		if list, err := mail.ParseAddressList(v); err == nil {
			d.ReplyTo = recipients(list)
		}
	}
	d.Importance = importance(msg)
	if id := strings.TrimSpace(msg.Get("Message-Id")); len(id) > 2 && len(id) <= 998 && id[0] == '<' && id[len(id)-1] == '>' && !strings.ContainsAny(id, " \t\r\n") {
		d.InternetMessageID = id
	}
	for k, v := range msg {
		if strings.HasPrefix(strings.ToLower(k), "x-") && len(d.Headers) < maxCustomHeaders && len(v) > 0 {
			d.Headers = append(d.Headers, headerJSON{Name: k, Value: message.CleanText(v[0])})
		}
	}
	body, err := json.Marshal(d)
	if err != nil {
		return message.Receipt{}, &message.Error{Class: message.Permanent, Stage: message.StageMail, Err: err}
	}
	// Its requests (the draft, each attachment or chunk, send) and
	// uploaded bytes, within Graph's limits for the mailbox.
	requests, upload := 2, int64(0)
	for _, pt := range p.parts {
		upload += pt.size
		requests++
		if pt.size > attachWholeMax {
			requests += int((pt.size + chunkBytes - 1) / chunkBytes)
		}
	}
	if err := s.budget().take(ctx, requests, upload); err != nil {
		return message.Receipt{}, s.waited(err)
	}
	resp, err := s.do(ctx, s.api, http.MethodPost, s.base+"/messages", bytes.NewReader(body), int64(len(body)), "application/json", message.StageMail, http.StatusCreated)
	if err != nil {
		return message.Receipt{}, err
	}
	var created struct {
		ID string `json:"id"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&created)
	resp.Body.Close()
	if err != nil || created.ID == "" {
		return message.Receipt{}, &message.Error{Class: message.Temporary, Stage: message.StageMail, Host: s.route.Host,
			Err: fmt.Errorf("Microsoft Graph created a draft without an id: %v", err)}
	}
	msgURL := s.base + "/messages/" + created.ID
	sent := false
	defer func() {
		if !sent {
			// Best effort: no half-built draft stays in the mailbox.
			if resp, err := s.do(context.WithoutCancel(ctx), s.api, http.MethodDelete, msgURL, nil, -1, "", message.StageMail, http.StatusNoContent); err == nil {
				resp.Body.Close()
			}
		}
	}()
	for _, pt := range p.parts {
		if err := s.attach(ctx, msgURL, pt); err != nil {
			return message.Receipt{}, err
		}
	}
	resp, err = s.do(ctx, s.api, http.MethodPost, msgURL+"/send", nil, 0, "", message.StageData, http.StatusAccepted)
	if err != nil {
		return message.Receipt{}, err
	}
	resp.Body.Close()
	sent = true
	return s.accepted("draft"), nil
}

// leaf takes one part that is not a multipart: the message's body when
// it is the first text (or an HTML alternative to it), an attachment
// otherwise, decoded to a temporary file that the spool's quota counts.
func (s *sender) leaf(p *parsed, h textproto.MIMEHeader, ct string, params map[string]string, related bool, raw io.Reader) error {
	decoded := decode(raw, h.Get("Content-Transfer-Encoding"))
	disposition, dparams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	name := decodeHeader(dparams["filename"])
	if name == "" {
		name = decodeHeader(params["name"])
	}
	isText := ct == "text/plain" || ct == "text/html"
	if isText && disposition != "attachment" && name == "" && (p.bodyType == "" || p.bodyType == "text" && ct == "text/html") {
		text, err := io.ReadAll(io.LimitReader(decoded, maxBodyText+1))
		if err != nil {
			return undecodable(h)
		}
		if len(text) <= maxBodyText {
			p.body = toUTF8(text, params["charset"])
			p.bodyType = "text"
			if ct == "text/html" {
				p.bodyType = "html"
			}
			return nil
		}
		// Too long for the draft's body: an attachment.
		decoded = io.MultiReader(bytes.NewReader(text), decoded)
		name = "message.txt"
		if ct == "text/html" {
			name = "message.html"
		}
	}
	f, err := s.tempFile()
	if err != nil {
		return &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: err}
	}
	pt := &part{file: f, contentType: ct, name: name}
	p.parts = append(p.parts, pt)
	w := &scratchWriter{f: f, scratch: p.scratch, taken: &pt.taken}
	if pt.size, err = io.Copy(w, decoded); err != nil {
		if w.err != nil {
			return &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: w.err}
		}
		return undecodable(h)
	}
	if id := strings.Trim(h.Get("Content-Id"), "<> "); id != "" && related {
		pt.contentID, pt.inline = id, true
	}
	if pt.name == "" {
		pt.name = "attachment"
		if exts, _ := mime.ExtensionsByType(ct); len(exts) > 0 {
			pt.name += exts[0]
		}
	}
	return nil
}

// undecodable is a part whose content does not decode by its
// Content-Transfer-Encoding (or a read error, which the walk tells
// apart and reports instead).
func undecodable(h textproto.MIMEHeader) error {
	return structureError("a MIME part's %s content does not decode", strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))))
}

// Scratch is the room a large message's attachments take on disk while
// they upload, counted against the spool's quota as long as they exist
// (spool.Spool implements it).
type Scratch interface {
	TakeScratch(n int64) error
	ReleaseScratch(n int64)
}

// scratchWriter writes an attachment's temporary file, taking room for
// each write from the scratch first; err is why a write failed.
type scratchWriter struct {
	f       *os.File
	scratch Scratch
	taken   *int64
	err     error
}

func (w *scratchWriter) Write(b []byte) (int, error) {
	if w.scratch != nil {
		if err := w.scratch.TakeScratch(int64(len(b))); err != nil {
			w.err = err
			return 0, err
		}
		*w.taken += int64(len(b))
	}
	n, err := w.f.Write(b)
	if err != nil {
		w.err = err
	}
	return n, err
}

func decode(r io.Reader, cte string) io.Reader {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &stripSpace{r: r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// stripSpace drops the line breaks and spaces base64 bodies carry
// (base64's decoder takes CR and LF, not spaces or tabs).
type stripSpace struct{ r io.Reader }

func (s *stripSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		j := 0
		for _, c := range p[:n] {
			if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// toUTF8 converts a text body to UTF-8: Latin-1 by its charset, others as
// they are, invalid bytes replaced.
func toUTF8(b []byte, charset string) string {
	switch strings.ToLower(charset) {
	case "iso-8859-1", "latin1", "windows-1252":
		r := make([]rune, len(b))
		for i, c := range b {
			r[i] = rune(c)
		}
		return string(r)
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

func charsetReader(charset string, input io.Reader) (io.Reader, error) {
	b, err := io.ReadAll(input)
	if err != nil {
		return nil, err
	}
	return strings.NewReader(toUTF8(b, charset)), nil
}

// importance reads Importance, or X-Priority, as Graph's values.
func importance(h mail.Header) string {
	switch v := strings.ToLower(strings.TrimSpace(h.Get("Importance"))); {
	case v == "high" || v == "low" || v == "normal":
		return v
	}
	switch p := strings.TrimSpace(h.Get("X-Priority")); {
	case strings.HasPrefix(p, "1"), strings.HasPrefix(p, "2"):
		return "high"
	case strings.HasPrefix(p, "4"), strings.HasPrefix(p, "5"):
		return "low"
	}
	return ""
}

// attach adds an attachment: whole when small, else through an upload
// session in chunks, from its file.
func (s *sender) attach(ctx context.Context, msgURL string, pt *part) error {
	if _, err := pt.file.Seek(0, io.SeekStart); err != nil {
		return &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: err}
	}
	if pt.size <= attachWholeMax {
		data, err := io.ReadAll(pt.file)
		if err != nil {
			return &message.Error{Class: message.Temporary, Stage: message.StageSpool, Err: err}
		}
		body, _ := json.Marshal(map[string]any{"@odata.type": "#microsoft.graph.fileAttachment", "name": pt.name,
			"contentType": pt.contentType, "contentBytes": base64.StdEncoding.EncodeToString(data), "isInline": pt.inline, "contentId": pt.contentID})
		resp, err := s.do(ctx, s.api, http.MethodPost, msgURL+"/attachments", bytes.NewReader(body), int64(len(body)), "application/json", message.StageMail, http.StatusCreated)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	item := map[string]any{"AttachmentItem": map[string]any{"attachmentType": "file", "name": pt.name, "size": pt.size,
		"contentType": pt.contentType, "isInline": pt.inline, "contentId": pt.contentID}}
	body, _ := json.Marshal(item)
	resp, err := s.do(ctx, s.api, http.MethodPost, msgURL+"/attachments/createUploadSession", bytes.NewReader(body), int64(len(body)), "application/json", message.StageMail, http.StatusCreated)
	if err != nil {
		return err
	}
	var session struct {
		UploadURL string `json:"uploadUrl"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&session)
	resp.Body.Close()
	if err != nil || session.UploadURL == "" {
		return &message.Error{Class: message.Temporary, Stage: message.StageMail, Host: s.route.Host,
			Err: fmt.Errorf("Microsoft Graph created an upload session without a URL: %v", err)}
	}
	// The upload URL carries its own credential: the bearer token is
	// not sent to it.
	for off := int64(0); off < pt.size; off += chunkBytes {
		n := min(chunkBytes, pt.size-off)
		want := []int{http.StatusOK}
		if off+n == pt.size {
			want = []int{http.StatusCreated, http.StatusOK}
		}
		chunk := io.NewSectionReader(pt.file, off, n)
		resp, err := s.doChunk(ctx, session.UploadURL, chunk, off, n, pt.size, want)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return nil
}

// doChunk PUTs one chunk of an upload session.
func (s *sender) doChunk(ctx context.Context, u string, chunk io.Reader, off, n, total int64, want []int) (*http.Response, error) {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	req, err := http.NewRequestWithContext(rctx, http.MethodPut, u, chunk)
	if err != nil {
		cancel()
		return nil, &message.Error{Class: message.Permanent, Stage: message.StageData, Err: err}
	}
	req.ContentLength = n
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, total))
	resp, err := s.plain.Do(req)
	if err != nil {
		cancel()
		return nil, &message.Error{Class: message.Temporary, Stage: message.StageData, Host: s.route.Host, Err: err}
	}
	s.requestID = resp.Header.Get("request-id")
	resp.Body = cancelOnClose{resp.Body, cancel}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, s.refusal(resp, message.StageData)
}
