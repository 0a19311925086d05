package fakeexchange

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
)

// Exchange Online's reply texts (see ../shared/EXCHANGE.md).
var (
	errAuth = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3},
		Message: "Authentication unsuccessful [FAKE0PR01CA0001.namprd01.prod.outlook.com]"}
	errAuthDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information."}
	errBasicDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
		Message: "Authentication unsuccessful, basic authentication is disabled."}
	errNotAuthenticated = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57},
		Message: "Client not authenticated to send mail. Error: 530 5.7.57 Client not authenticated to send mail."}
	errStartTLSFirst = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Must issue a STARTTLS command first"}
	errSendAs = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 60},
		Message: "SMTP; Client does not have permissions to send as this sender"}
	errThreads = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "STOREDRV.ClientSubmit; sender thread limit exceeded"}
	errTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message size exceeds fixed maximum message size"}
	errTemporary = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Temporary server error. Please try again later. PRX4"}
)

type backend struct{ s *Server }

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: b.s, conn: c, txnStart: -1}, nil
}

type session struct {
	s    *Server
	conn *smtp.Conn

	user    string // authenticated mailbox
	appID   string
	counted bool // counted in s.active
	from    string
	mailAt  time.Time // when MAIL was taken
	to      []string
	ret     string
	envID   string
	notify  map[string]string
	orcpt   map[string]string

	// The transaction's commands, and the turn it began at (-1: none
	// begun). go-smtp calls Reset after a message as well as for RSET:
	// afterData tells the first apart.
	commands  []string
	txnStart  int
	afterData bool
}

// begin notes a transaction's first command.
func (se *session) begin(cmd string) {
	if se.txnStart < 0 {
		se.txnStart = se.turns()
	}
	se.commands = append(se.commands, cmd)
}

// turns counts the connection's turns so far.
func (se *session) turns() int {
	if t := turnsOf(se.conn.Conn()); t != nil {
		return t.Turns()
	}
	return 0
}

func (se *session) tls() bool {
	_, ok := se.conn.TLSConnectionState()
	return ok
}

func (se *session) AuthMechanisms() []string { return []string{"LOGIN", "XOAUTH2"} }

func (se *session) Auth(mech string) (sasl.Server, error) {
	if r, ok := se.s.scripted(StageAuth); ok {
		return nil, se.reply(r)
	}
	switch mech {
	case "LOGIN":
		// Basic authentication is what smtpbridge exists to replace.
		return nil, errBasicDisabled
	case "XOAUTH2":
		return &xoauth2Server{se: se}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// xoauth2Server checks "user=<mailbox>^Aauth=Bearer <token>^A^A".
type xoauth2Server struct {
	se      *session
	started bool
}

func (x *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if response == nil && !x.started {
		x.started = true
		return []byte{}, false, nil // 334 with an empty challenge
	}
	if !x.started {
		x.se.s.mu.Lock()
		x.se.s.inlineAuths++
		x.se.s.mu.Unlock()
	}
	user, token, ok := parseXOAUTH2(response)
	if !ok {
		return nil, true, errAuth
	}
	return nil, true, x.se.login(user, token)
}

func parseXOAUTH2(b []byte) (user, token string, ok bool) {
	parts := strings.Split(string(b), "\x01")
	if len(parts) != 4 || parts[2] != "" || parts[3] != "" {
		return "", "", false
	}
	user, ok1 := strings.CutPrefix(parts[0], "user=")
	token, ok2 := strings.CutPrefix(parts[1], "auth=Bearer ")
	return user, token, ok1 && ok2 && user != "" && token != ""
}

// login applies Exchange's checks, in the order that decides which of the
// 535 replies an admin sees.
func (se *session) login(user, token string) error {
	claims, err := se.s.verifier.Verify(token)
	if err != nil || claims.Audience != fakeentra.Resource && claims.Audience != fakeentra.OutlookResource {
		return errAuth
	}
	mb := se.s.mailbox(user)
	if mb == nil || !strings.EqualFold(mb.TenantID, claims.TenantID) {
		return errAuth
	}
	if r, ok := se.s.refused(mb.Address, StageAuth); ok {
		se.s.mu.Lock()
		se.s.authLogins++ // a login Exchange saw, and refused
		se.s.mu.Unlock()
		return se.reply(r)
	}
	if mb.SMTPAuthDisabled {
		return errAuthDisabled
	}
	if claims.Scope != "" {
		// A delegated token: the signed-in user sends as their own
		// mailbox, with the SMTP.Send permission.
		if !strings.EqualFold(claims.UPN, mb.Address) || !slices.Contains(strings.Fields(claims.Scope), fakeentra.ScopeSMTPSend) {
			return errAuth
		}
		return se.loggedIn(mb, claims)
	}
	se.s.mu.Lock()
	spObject, registered := se.s.principals[strings.ToLower(claims.TenantID)][strings.ToLower(claims.AppID)]
	se.s.mu.Unlock()
	// New-ServicePrincipal with the App Registration's object ID instead of
	// the Enterprise Application's leaves the token's oid unmatched.
	if !registered || spObject != strings.ToLower(claims.ObjectID) {
		return errAuth
	}
	rbac := slices.ContainsFunc(mb.RBACApps, func(a string) bool { return strings.EqualFold(a, claims.AppID) })
	fullAccess := slices.ContainsFunc(mb.FullAccess, func(o string) bool { return strings.EqualFold(o, claims.ObjectID) }) &&
		slices.Contains(claims.Roles, fakeentra.RoleSendAsApp)
	if !rbac && !fullAccess {
		return errAuth
	}
	return se.loggedIn(mb, claims)
}

// loggedIn starts the authenticated part of the session as mb.
func (se *session) loggedIn(mb *Mailbox, claims fakeentra.Claims) error {
	se.user, se.appID = mb.Address, claims.AppID
	se.commands, se.txnStart = nil, -1
	se.s.mu.Lock()
	se.s.authLogins++
	k := strings.ToLower(mb.Address)
	se.s.active[k]++
	se.s.peak[k] = max(se.s.peak[k], se.s.active[k])
	se.counted = true
	se.s.mu.Unlock()
	return nil
}

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	if !se.tls() {
		return errStartTLSFirst
	}
	if se.user == "" {
		return errNotAuthenticated
	}
	se.mailAt = time.Now()
	se.s.mu.Lock()
	se.s.mails[strings.ToLower(se.user)]++
	se.s.mu.Unlock()
	if r, ok := se.s.scripted(StageMail); ok {
		return se.reply(r)
	}
	if r, ok := se.s.refused(se.user, StageMail); ok {
		return se.reply(r)
	}
	se.s.mu.Lock()
	n, limit := se.s.active[strings.ToLower(se.user)], se.s.maxConns
	se.s.mu.Unlock()
	if limit == 0 {
		limit = MaxConnectionsPerMailbox
	}
	if n > limit {
		return errThreads
	}
	mb := se.s.mailbox(se.user)
	if !mayUse(mb, from) {
		return errSendAs
	}
	if opts != nil && opts.Size > 0 && opts.Size > maxSendSize(mb) {
		return errTooBig
	}
	se.from = from
	se.begin("MAIL")
	if opts != nil {
		se.ret, se.envID = string(opts.Return), opts.EnvelopeID
	}
	return nil
}

func (se *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if r, ok := se.s.scripted(StageRcpt); ok {
		return se.reply(r)
	}
	if r, ok := se.s.refusal(to); ok {
		return se.reply(r)
	}
	se.s.mu.Lock()
	limit := se.s.maxRcpts
	se.s.mu.Unlock()
	if limit > 0 && len(se.to) >= limit {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	}
	se.to = append(se.to, to)
	se.commands = append(se.commands, "RCPT")
	if opts != nil && len(opts.Notify) > 0 {
		var n []string
		for _, v := range opts.Notify {
			n = append(n, string(v))
		}
		if se.notify == nil {
			se.notify = map[string]string{}
		}
		se.notify[to] = strings.Join(n, ",")
	}
	if opts != nil && opts.OriginalRecipient != "" {
		if se.orcpt == nil {
			se.orcpt = map[string]string{}
		}
		se.orcpt[to] = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
	}
	return nil
}

func mayUse(mb *Mailbox, addr string) bool {
	if mb == nil {
		return false
	}
	return strings.EqualFold(addr, mb.Address) ||
		slices.ContainsFunc(mb.SendAs, func(a string) bool { return strings.EqualFold(a, addr) })
}

func maxSendSize(mb *Mailbox) int64 {
	if mb == nil || mb.MaxSendSize == 0 {
		return DefaultMaxSendSize
	}
	return mb.MaxSendSize
}

func (se *session) Data(r io.Reader) error {
	se.s.inData.Add(1)
	defer se.s.inData.Add(-1)
	// Whatever the outcome, the transaction ends here; go-smtp's reset
	// that follows is not an RSET.
	defer func() { se.commands, se.txnStart, se.afterData = nil, -1, true }()
	mb := se.s.mailbox(se.user)
	id := se.s.nextQueueID()

	se.s.mu.Lock()
	dir := se.s.mailDir
	se.s.mu.Unlock()
	var file *os.File
	if dir != "" {
		var err error
		if file, err = se.openMailFile(dir, id); err != nil {
			return errTemporary
		}
		defer func() {
			if file != nil {
				file.Close()
				os.Remove(file.Name())
			}
		}()
	}

	limit := maxSendSize(mb)
	hash := sha256.New()
	var keep bytes.Buffer
	w := io.MultiWriter(hash, &capWriter{buf: &keep, max: keepBytes + 1})
	if file != nil {
		w = io.MultiWriter(w, file)
	}
	n, err := io.Copy(w, io.LimitReader(r, limit+1))
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		return errTemporary
	}
	if n > limit {
		io.Copy(io.Discard, r)
		return errTooBig
	}
	headerFrom, _ := fromHeader(keep.Bytes())
	if headerFrom != "" && !mayUse(mb, headerFrom) {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252},
			Message: fmt.Sprintf("SendAsDenied; %s not allowed to send as %s; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.", se.user, headerFrom)}
	}
	if r, ok := se.s.scripted(StageData); ok {
		return se.reply(r)
	}
	if r, ok := se.s.refused(se.user, StageData); ok {
		return se.reply(r)
	}
	se.s.mu.Lock()
	delay := se.s.dataDelay
	se.s.mu.Unlock()
	time.Sleep(delay)

	msg := Message{
		QueueID: id, AuthUser: se.user, AppID: se.appID, From: se.from,
		To: append([]string(nil), se.to...), Size: n, HeaderFrom: headerFrom,
		Ret: se.ret, EnvID: se.envID, Notify: se.notify, ORcpt: se.orcpt, At: se.mailAt,
	}
	copy(msg.SHA256[:], hash.Sum(nil))
	if n <= keepBytes {
		msg.Data = bytes.Clone(keep.Bytes())
	}
	if st, ok := se.conn.TLSConnectionState(); ok {
		msg.TLSVersion = st.Version
	}
	if file != nil {
		name, err := commitMailFile(file, dir)
		if err != nil {
			return errTemporary
		}
		file, msg.File = nil, name
	}
	msg.Commands = append(se.commands, "DATA")
	if se.s.window.Load() > 0 && se.txnStart >= 0 {
		// The turns so far, and the one that carries the final reply.
		msg.RoundTrips = se.turns() - se.txnStart + 1
	}
	se.s.mu.Lock()
	se.s.messages = append(se.s.messages, msg)
	accepted := se.s.onAccepted
	se.s.mu.Unlock()
	if accepted != nil {
		accepted(msg)
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: fmt.Sprintf("OK <%s> [Hostname=%s]", id, se.s.Hostname)}
}

// openMailFile starts the sandbox's copy of message id in dir, with the
// envelope in headers of its own.
func (se *session) openMailFile(dir, id string) (*os.File, error) {
	file, err := os.CreateTemp(dir, ".incoming-*")
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(file, "Return-Path: <%s>\r\nX-Sandbox-Rcpt-To: %s\r\nX-Sandbox-Mailbox: %s\r\nX-Sandbox-Queue-Id: <%s>\r\n",
		se.from, strings.Join(se.to, ", "), se.user, id)
	return file, nil
}

// commitMailFile gives an accepted message's copy its .eml name, once
// flushed; the file is closed.
func commitMailFile(file *os.File, dir string) (string, error) {
	name := filepath.Join(dir, time.Now().UTC().Format("20060102T150405Z")+"-"+randomHex(4)+".eml")
	if err := file.Sync(); err != nil {
		file.Close()
		return "", err
	}
	if err := file.Close(); err != nil {
		return "", err
	}
	return name, os.Rename(file.Name(), name)
}

// fromHeader returns the address in the From header of the message's
// header block, if it parses.
func fromHeader(data []byte) (string, error) {
	m, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		return "", err
	}
	a, err := mail.ParseAddress(m.Header.Get("From"))
	if err != nil {
		return "", err
	}
	return a.Address, nil
}

func (se *session) reply(r Reply) error {
	if r.Hangup {
		se.conn.Close()
		return errTemporary
	}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: r.Enhanced, Message: r.Text}
}

func (se *session) Reset() {
	se.from, se.to, se.ret, se.envID, se.notify, se.orcpt = "", nil, "", "", nil, nil
	if se.afterData {
		// go-smtp's own reset after a message, not an RSET.
		se.afterData = false
		return
	}
	se.commands, se.txnStart = nil, -1
	if se.user != "" {
		se.begin("RSET")
	}
}

func (se *session) Logout() error {
	if se.counted {
		se.s.mu.Lock()
		se.s.active[strings.ToLower(se.user)]--
		se.s.mu.Unlock()
		se.counted = false
	}
	return nil
}

// capWriter keeps the first max bytes written and drops the rest.
type capWriter struct {
	buf *bytes.Buffer
	max int
}

func (c *capWriter) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
