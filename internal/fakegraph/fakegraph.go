// Package fakegraph is a fake of Microsoft Graph's mail sending for tests
// and sandbox mode, following ../shared/EXCHANGE.md: sendMail with a MIME
// message in base64 (recipients taken from the message's headers, as
// Graph does), drafts, attachments, upload sessions with their chunk
// rules, send. It checks the token's audience, tenant and roles
// (Mail.Send; Mail.ReadWrite for drafts), enforces the 4 MB request
// limit, answers every request with a request-id, and can script 429,
// 503 and 403 replies.
package fakegraph

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"mime"
	"net"
	"net/http"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
)

// Graph's limits.
const (
	// MaxRequestBytes is the most a request body may carry.
	MaxRequestBytes = 4 << 20
	// MaxAttachmentBytes is the most an attachment posted whole may be;
	// larger ones need an upload session.
	MaxAttachmentBytes = 3 << 20
	// MaxUploadBytes is the most an upload session takes.
	MaxUploadBytes = 150 << 20
	// ChunkMultiple: every chunk of an upload session but the last is a
	// multiple of it.
	ChunkMultiple = 320 << 10
)

// TokenVerifier checks an access token (the fake Entra ID).
type TokenVerifier interface {
	Verify(token string) (fakeentra.Claims, error)
}

// Reply is a scripted error reply.
type Reply struct {
	Status     int
	Code       string // Graph's error code, e.g. ErrorAccessDenied
	Message    string
	RetryAfter int // seconds; 0 for no Retry-After
}

// Message is a message Graph accepted for sending.
type Message struct {
	Mailbox         string
	Via             string   // "sendMail" or "draft"
	Recipients      []string // every recipient, lower case, as Graph would deliver
	Subject         string
	MIME            []byte // sendMail: the MIME message as received
	Body            string // draft: the body's content
	BodyType        string // draft: "text" or "html"
	Headers         map[string]string
	Attachments     []Attachment
	RequestID       string // the request-id of the request that sent it
	ClientRequestID string
	// InternetMessageID is its Message-ID, as Exchange keeps it (its own
	// when the message had none).
	InternetMessageID string
}

// Attachment is a file attachment of a draft.
type Attachment struct {
	Name, ContentType, ContentID string
	Inline                       bool
	Size                         int64
	SHA256                       [32]byte
	Uploaded                     bool // through an upload session
}

// Server is the fake Graph endpoint.
type Server struct {
	verifier TokenVerifier
	srv      *http.Server
	ln       net.Listener
	url      string

	mu        sync.Mutex
	mailboxes map[string]string // lower-case address -> tenant ID
	scripts   []Reply
	// kindScripts are the replies scripted for one kind of request.
	kindScripts map[string][]Reply
	messages    []Message
	drafts      map[string]*draft
	uploads     map[string]*upload
	requests    map[string]int // by kind: sendMail, draft, attachment, session, chunk, send
	inFlight    int
	peak        int
	mailDir     string
	// activity is each tenant's SMTP usage and sign-ins (reports.go);
	// reports are the CSVs a report request redirected to.
	activity map[string]*Activity
	reports  map[string][]byte
	// sentItems are each mailbox's Sent Items folder (sentitems.go).
	sentItems map[string][]SentItem
	pageSize  int
}

// SetMailDir makes the server write each message it sends to dir as an
// .eml file (sandbox mode): a sendMail message as it came, a draft as a
// summary of what Graph would send.
func (s *Server) SetMailDir(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailDir = dir
}

// record keeps a sent message, and writes it to the mail directory.
func (s *Server) record(m Message) {
	s.mu.Lock()
	if m.InternetMessageID == "" {
		m.InternetMessageID = "<" + randomHex(16) + "@fake.prod.outlook.com>"
	}
	s.messages = append(s.messages, m)
	// Exchange keeps a copy of what the mailbox sends.
	s.sentItems[m.Mailbox] = append(s.sentItems[m.Mailbox], SentItem{ID: "AAMkSent" + randomHex(16), InternetMessageID: m.InternetMessageID,
		Subject: m.Subject, Sent: time.Now().UTC(), Size: int64(len(m.MIME) + len(m.Body))})
	dir := s.mailDir
	s.mu.Unlock()
	if dir == "" {
		return
	}
	data := m.MIME
	if data == nil {
		var b bytes.Buffer
		fmt.Fprintf(&b, "X-Sent-Through: Microsoft Graph (fake), a draft; request-id %s\r\n", m.RequestID)
		fmt.Fprintf(&b, "From: <%s>\r\nBcc: %s\r\nSubject: %s\r\n", m.Mailbox, strings.Join(m.Recipients, ", "), mimeWord(m.Subject))
		for _, a := range m.Attachments {
			fmt.Fprintf(&b, "X-Attachment: %s (%s, %d bytes, sha256 %x)\r\n", mimeWord(a.Name), a.ContentType, a.Size, a.SHA256)
		}
		fmt.Fprintf(&b, "Content-Type: text/%s; charset=utf-8\r\n\r\n%s\r\n", map[string]string{"html": "html"}[m.BodyType]+map[bool]string{true: "plain"}[m.BodyType != "html"], m.Body)
		data = b.Bytes()
	}
	name := filepath.Join(dir, time.Now().UTC().Format("20060102T150405Z")+"-graph-"+randomHex(4)+".eml")
	os.WriteFile(name, data, 0o640)
}

func mimeWord(s string) string { return mime.QEncoding.Encode("utf-8", s) }

type draft struct {
	mailbox string
	msg     Message
}

type upload struct {
	draft  *draft
	att    Attachment
	next   int64
	sum    hash.Hash
	closed bool
}

// New returns a server that trusts tokens checked by v.
func New(v TokenVerifier) *Server {
	return &Server{verifier: v, mailboxes: map[string]string{}, drafts: map[string]*draft{},
		uploads: map[string]*upload{}, requests: map[string]int{}, activity: map[string]*Activity{}, reports: map[string][]byte{},
		sentItems: map[string][]SentItem{}}
}

// Start listens on addr with cert (HTTPS).
func (s *Server) Start(addr string, cert tls.Certificate) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("fake graph listen: %w", err)
	}
	s.ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	s.url = "https://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(s.ln)
	return nil
}

// URL is the graph_host to configure: https://host:port.
func (s *Server) URL() string { return s.url }

// Close stops the server.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// AddMailbox makes a mailbox of a tenant known.
func (s *Server) AddMailbox(address, tenantID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailboxes[strings.ToLower(address)] = strings.ToLower(tenantID)
}

// Script makes the next API requests get these replies, one each.
func (s *Server) Script(r ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts = append(s.scripts, r...)
}

// ScriptKind makes the next API requests of a kind (sendMail, draft,
// attachment, session, send) get these replies, one each, before any
// Script reply: a reply at any step of a submission, in Graph's words.
func (s *Server) ScriptKind(kind string, r ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kindScripts == nil {
		s.kindScripts = map[string][]Reply{}
	}
	s.kindScripts[kind] = append(s.kindScripts[kind], r...)
}

// Messages returns the messages sent so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.messages)
}

// Requests counts the requests of a kind: sendMail, draft, attachment,
// session, chunk, send, delete; "" for all.
func (s *Server) Requests(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if kind != "" {
		return s.requests[kind]
	}
	n := 0
	for _, v := range s.requests {
		n += v
	}
	return n
}

// PeakConcurrent is the most API requests served at once.
func (s *Server) PeakConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// graphError is Graph's error body.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": msg,
		"innerError": map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "request-id": w.Header().Get("request-id")}}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

var (
	reUserPath = regexp.MustCompile(`^/v1\.0/users/([^/]+)/(sendMail|messages)(?:/([^/]+)(?:/(send|attachments)(?:/(createUploadSession))?)?)?$`)
	reUpload   = regexp.MustCompile(`^/upload/([0-9a-f]+)$`)
)

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("request-id", newGUID())
	if id := r.Header.Get("client-request-id"); id != "" {
		w.Header().Set("client-request-id", id)
	}
	if m := reUpload.FindStringSubmatch(r.URL.Path); m != nil {
		s.chunk(w, r, m[1])
		return
	}
	if s.serveDirectory(w, r) || s.serveSentItems(w, r) {
		return
	}
	m := reUserPath.FindStringSubmatch(r.URL.Path)
	if m == nil {
		writeError(w, 400, "BadRequest", "Invalid request: unknown segment "+r.URL.Path)
		return
	}
	mailbox, op, id, sub, session := strings.ToLower(m[1]), m[2], m[3], m[4], m[5]
	kind := requestKind(r.Method, op, id, sub, session)
	if kind == "" {
		writeError(w, 405, "Request_BadRequest", "Unsupported request: "+r.Method+" "+r.URL.Path)
		return
	}
	scripted := s.begin(kind)
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	if scripted != nil {
		io.Copy(io.Discard, r.Body)
		if scripted.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(scripted.RetryAfter))
		}
		writeError(w, scripted.Status, scripted.Code, scripted.Message)
		return
	}
	if !s.permitted(w, r, kind, mailbox) {
		return
	}
	if r.ContentLength > MaxRequestBytes {
		writeError(w, 413, "RequestBodyTooLarge", "The request body exceeds the maximum of 4194304 bytes.")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	if err != nil {
		writeError(w, 400, "BadRequest", "could not read the request body")
		return
	}
	if len(body) > MaxRequestBytes {
		writeError(w, 413, "RequestBodyTooLarge", "The request body exceeds the maximum of 4194304 bytes.")
		return
	}
	switch kind {
	case "sendMail":
		s.sendMail(w, r, mailbox, body)
	case "draft":
		s.createDraft(w, mailbox, body)
	case "attachment":
		s.addAttachment(w, mailbox, id, body)
	case "session":
		s.createSession(w, mailbox, id, body)
	case "send":
		s.send(w, r, mailbox, id)
	case "delete":
		s.mu.Lock()
		delete(s.drafts, id)
		s.mu.Unlock()
		w.WriteHeader(204)
	}
}

// requestKind names a request to a mailbox's path (op, the message id,
// sub and an upload session), "" for one Graph would not take.
func requestKind(method, op, id, sub, session string) string {
	post := method == http.MethodPost
	switch {
	case op == "sendMail" && post:
		return "sendMail"
	case op == "messages" && id == "" && post:
		return "draft"
	case op == "messages" && sub == "send" && post:
		return "send"
	case op == "messages" && sub == "attachments" && session != "" && post:
		return "session"
	case op == "messages" && sub == "attachments" && post:
		return "attachment"
	case op == "messages" && id != "" && sub == "" && method == http.MethodDelete:
		return "delete"
	}
	return ""
}

// begin counts a request of kind in flight, and takes the scripted reply
// for it, if any: its kind's first, else the first of any kind.
func (s *Server) begin(kind string) *Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[kind]++
	s.inFlight++
	s.peak = max(s.peak, s.inFlight)
	if q := s.kindScripts[kind]; len(q) > 0 {
		s.kindScripts[kind] = q[1:]
		return &q[0]
	}
	if len(s.scripts) > 0 {
		r := &s.scripts[0]
		s.scripts = s.scripts[1:]
		return r
	}
	return nil
}

// permitted checks the token and its permission for a request of kind
// on mailbox: Mail.Send to send, Mail.ReadWrite for drafts; a delegated
// token only for the signed-in user's own mailbox. It answers a refusal
// itself.
func (s *Server) permitted(w http.ResponseWriter, r *http.Request, kind, mailbox string) bool {
	claims, ok := s.authorize(w, r, mailbox)
	if !ok {
		return false
	}
	need := fakeentra.RoleMailReadWrite
	if kind == "sendMail" || kind == "send" {
		need = fakeentra.RoleMailSend
	}
	if claims.Scope != "" {
		// A delegated token: the signed-in user's own mailbox, with
		// the delegated permission.
		ok = strings.EqualFold(claims.UPN, mailbox) && slices.Contains(strings.Fields(claims.Scope), need)
	} else {
		ok = slices.Contains(claims.Roles, need)
	}
	if !ok {
		writeError(w, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
	}
	return ok
}

// authorize checks the bearer token: Graph's audience, the mailbox's
// tenant.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, mailbox string) (fakeentra.Claims, bool) {
	claims, ok := s.tenantToken(w, r)
	if !ok {
		return claims, false
	}
	s.mu.Lock()
	tenant, known := s.mailboxes[mailbox]
	s.mu.Unlock()
	if !known || tenant != strings.ToLower(claims.TenantID) {
		writeError(w, 404, "ErrorInvalidUser", "The requested user '"+mailbox+"' is invalid.")
		return fakeentra.Claims{}, false
	}
	return claims, true
}

// sendMail takes a base64 MIME message; the recipients are its To, Cc
// and Bcc headers', whatever else the client knows.
func (s *Server) sendMail(w http.ResponseWriter, r *http.Request, mailbox string, body []byte) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		writeError(w, 400, "ErrorInvalidRequest", "sendMail with MIME needs Content-Type: text/plain, not "+ct)
		return
	}
	data, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(body)))
	if err != nil {
		writeError(w, 400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
		return
	}
	msg, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		writeError(w, 400, "ErrorMimeContentInvalid", "The MIME content is invalid.")
		return
	}
	var rcpts []string
	for _, h := range []string{"To", "Cc", "Bcc"} {
		if v := msg.Header.Get(h); v != "" {
			list, err := mail.ParseAddressList(v)
			if err != nil {
				writeError(w, 400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
				return
			}
			for _, a := range list {
				rcpts = append(rcpts, strings.ToLower(a.Address))
			}
		}
	}
	if len(rcpts) == 0 {
		writeError(w, 400, "ErrorInvalidRecipients", "At least one recipient is not valid., Recipient '' is not resolved.")
		return
	}
	s.record(Message{Mailbox: mailbox, Via: "sendMail", Recipients: rcpts, Subject: msg.Header.Get("Subject"),
		MIME: data, RequestID: w.Header().Get("request-id"), ClientRequestID: r.Header.Get("client-request-id"),
		InternetMessageID: strings.TrimSpace(msg.Header.Get("Message-Id"))})
	w.WriteHeader(202)
}

type recipient struct {
	EmailAddress struct {
		Address string `json:"address"`
		Name    string `json:"name,omitempty"`
	} `json:"emailAddress"`
}

type draftJSON struct {
	Subject string `json:"subject"`
	Body    struct {
		ContentType string `json:"contentType"`
		Content     string `json:"content"`
	} `json:"body"`
	To      []recipient `json:"toRecipients"`
	Cc      []recipient `json:"ccRecipients"`
	Bcc     []recipient `json:"bccRecipients"`
	ReplyTo []recipient `json:"replyTo"`
	Headers []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"internetMessageHeaders"`
	Importance        string `json:"importance"`
	InternetMessageID string `json:"internetMessageId"`
}

func (s *Server) createDraft(w http.ResponseWriter, mailbox string, body []byte) {
	var d draftJSON
	if err := json.Unmarshal(body, &d); err != nil {
		writeError(w, 400, "RequestBodyRead", "Cannot read the request body: "+err.Error())
		return
	}
	msg := Message{Mailbox: mailbox, Via: "draft", Subject: d.Subject, Body: d.Body.Content, BodyType: strings.ToLower(d.Body.ContentType),
		Headers: map[string]string{}, InternetMessageID: d.InternetMessageID}
	for _, h := range d.Headers {
		if !strings.HasPrefix(strings.ToLower(h.Name), "x-") {
			writeError(w, 400, "InvalidInternetMessageHeader", "The internet message header name '"+h.Name+"' should start with 'x-' or 'X-'.")
			return
		}
		msg.Headers[h.Name] = h.Value
	}
	for _, list := range [][]recipient{d.To, d.Cc, d.Bcc} {
		for _, rc := range list {
			msg.Recipients = append(msg.Recipients, strings.ToLower(rc.EmailAddress.Address))
		}
	}
	id := "AAMkAD" + randomHex(16)
	s.mu.Lock()
	s.drafts[id] = &draft{mailbox: mailbox, msg: msg}
	s.mu.Unlock()
	writeJSON(w, 201, map[string]any{"id": id, "subject": d.Subject, "isDraft": true})
}

func (s *Server) draftOf(w http.ResponseWriter, mailbox, id string) *draft {
	s.mu.Lock()
	d := s.drafts[id]
	s.mu.Unlock()
	if d == nil || d.mailbox != mailbox {
		writeError(w, 404, "ErrorItemNotFound", "The specified object was not found in the store.")
		return nil
	}
	return d
}

type attachmentJSON struct {
	Type         string `json:"@odata.type"`
	Name         string `json:"name"`
	ContentType  string `json:"contentType"`
	ContentBytes string `json:"contentBytes"`
	IsInline     bool   `json:"isInline"`
	ContentID    string `json:"contentId"`
}

func (s *Server) addAttachment(w http.ResponseWriter, mailbox, id string, body []byte) {
	d := s.draftOf(w, mailbox, id)
	if d == nil {
		return
	}
	var a attachmentJSON
	if err := json.Unmarshal(body, &a); err != nil || a.Type != "#microsoft.graph.fileAttachment" {
		writeError(w, 400, "RequestBodyRead", "a fileAttachment is expected")
		return
	}
	data, err := base64.StdEncoding.DecodeString(a.ContentBytes)
	if err != nil {
		writeError(w, 400, "ErrorInvalidRequest", "contentBytes is not base64")
		return
	}
	if len(data) > MaxAttachmentBytes {
		writeError(w, 413, "ErrorAttachmentSizeLimitExceeded", "Attachments over 3 MB need an upload session.")
		return
	}
	s.mu.Lock()
	d.msg.Attachments = append(d.msg.Attachments, Attachment{Name: a.Name, ContentType: a.ContentType, ContentID: a.ContentID,
		Inline: a.IsInline, Size: int64(len(data)), SHA256: sha256.Sum256(data)})
	s.mu.Unlock()
	writeJSON(w, 201, map[string]any{"id": "AAMkATT" + randomHex(8), "name": a.Name, "size": len(data)})
}

func (s *Server) createSession(w http.ResponseWriter, mailbox, id string, body []byte) {
	d := s.draftOf(w, mailbox, id)
	if d == nil {
		return
	}
	var req struct {
		Item struct {
			AttachmentType string `json:"attachmentType"`
			Name           string `json:"name"`
			Size           int64  `json:"size"`
			ContentType    string `json:"contentType"`
			IsInline       bool   `json:"isInline"`
			ContentID      string `json:"contentId"`
		} `json:"AttachmentItem"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Item.AttachmentType != "file" || req.Item.Size <= 0 {
		writeError(w, 400, "ErrorInvalidRequest", "AttachmentItem with attachmentType file, a name and a size is expected")
		return
	}
	if req.Item.Size > MaxUploadBytes {
		writeError(w, 413, "ErrorAttachmentSizeLimitExceeded", "The attachment exceeds the maximum of 150 MB.")
		return
	}
	token := randomHex(16)
	s.mu.Lock()
	s.uploads[token] = &upload{draft: d, sum: sha256.New(), att: Attachment{Name: req.Item.Name, ContentType: req.Item.ContentType,
		ContentID: req.Item.ContentID, Inline: req.Item.IsInline, Size: req.Item.Size, Uploaded: true}}
	s.mu.Unlock()
	writeJSON(w, 201, map[string]any{"uploadUrl": s.url + "/upload/" + token,
		"expirationDateTime": time.Now().Add(6 * time.Hour).UTC().Format(time.RFC3339), "nextExpectedRanges": []string{"0-"}})
}

var reRange = regexp.MustCompile(`^bytes (\d+)-(\d+)/(\d+)$`)

// chunk takes one PUT of an upload session: no Authorization header (the
// URL is the credential), Content-Range in order, chunks under 4 MiB and
// multiples of 320 KiB but the last.
func (s *Server) chunk(w http.ResponseWriter, r *http.Request, token string) {
	s.mu.Lock()
	s.requests["chunk"]++
	u := s.uploads[token]
	s.mu.Unlock()
	if r.Method != http.MethodPut || u == nil || u.closed {
		writeError(w, 404, "ErrorItemNotFound", "The upload session was not found.")
		return
	}
	if r.Header.Get("Authorization") != "" {
		writeError(w, 401, "InvalidAuthenticationToken", "An upload URL takes no Authorization header.")
		return
	}
	m := reRange.FindStringSubmatch(r.Header.Get("Content-Range"))
	if m == nil {
		writeError(w, 400, "InvalidContentRange", "Content-Range bytes a-b/total is required.")
		return
	}
	start, _ := strconv.ParseInt(m[1], 10, 64)
	end, _ := strconv.ParseInt(m[2], 10, 64)
	total, _ := strconv.ParseInt(m[3], 10, 64)
	n := end - start + 1
	last := end+1 == total
	switch {
	case total != u.att.Size || start != u.next || n <= 0 || r.ContentLength != n:
		writeError(w, 416, "InvalidRange", fmt.Sprintf("expected the range from %d of %d", u.next, u.att.Size))
		return
	case n >= MaxRequestBytes:
		writeError(w, 413, "RequestBodyTooLarge", "A chunk must be under 4 MiB.")
		return
	case !last && n%ChunkMultiple != 0:
		writeError(w, 400, "InvalidChunkSize", "A chunk other than the last must be a multiple of 320 KiB.")
		return
	}
	got, err := io.Copy(u.sum, io.LimitReader(r.Body, n))
	if err != nil || got != n {
		writeError(w, 400, "BadRequest", "short chunk")
		return
	}
	u.next = end + 1
	if !last {
		writeJSON(w, 200, map[string]any{"nextExpectedRanges": []string{fmt.Sprintf("%d-", u.next)}})
		return
	}
	copy(u.att.SHA256[:], u.sum.Sum(nil))
	s.mu.Lock()
	u.closed = true
	u.draft.msg.Attachments = append(u.draft.msg.Attachments, u.att)
	s.mu.Unlock()
	w.WriteHeader(201)
}

func (s *Server) send(w http.ResponseWriter, r *http.Request, mailbox, id string) {
	d := s.draftOf(w, mailbox, id)
	if d == nil {
		return
	}
	if len(d.msg.Recipients) == 0 {
		writeError(w, 400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
		return
	}
	msg := d.msg
	msg.RequestID, msg.ClientRequestID = w.Header().Get("request-id"), r.Header.Get("client-request-id")
	s.mu.Lock()
	delete(s.drafts, id)
	s.mu.Unlock()
	s.record(msg)
	w.WriteHeader(202)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newGUID() string {
	h := randomHex(16)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
