// Package fakeexchange is an Exchange Online-like SMTP submission endpoint
// for tests and sandbox mode. Like smtp.office365.com:587 it requires
// STARTTLS (TLS 1.2 or newer), offers AUTH LOGIN and XOAUTH2 only after TLS,
// checks XOAUTH2 bearer tokens issued by a fakeentra.Server the way
// Exchange does (audience, service principal registered with the right
// object ID, mailbox permission, SMTP.SendAsApp role or RBAC, SMTP AUTH
// enabled), enforces the envelope and header sender (5.7.60, 5.2.252), the
// per-mailbox size and connection limits, and answers with Exchange's reply
// texts. Tests can script any reply at any stage.
//
// Messages it accepts are recorded (envelope, size, SHA-256, and the bytes
// for small ones) and, when a mail directory is set, written there as .eml
// files. It is not a security boundary and must never be used as one.
package fakeexchange

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
)

// Limits of Exchange Online's SMTP AUTH client submission.
const (
	// AdvertisedSize is the SIZE Exchange advertises (150 MB).
	AdvertisedSize = 157286400
	// DefaultMaxSendSize is a mailbox's default MaxSendSize (35 MB).
	DefaultMaxSendSize = 36700160
	// MaxConnectionsPerMailbox is the concurrent connection limit.
	MaxConnectionsPerMailbox = 3
	// keepBytes is the largest message whose bytes Messages keeps.
	keepBytes = 8 << 20
)

// TokenVerifier checks an access token; *fakeentra.Server is one.
type TokenVerifier interface {
	Verify(token string) (fakeentra.Claims, error)
}

// Mailbox is an Exchange Online mailbox and who may send as it.
type Mailbox struct {
	Address  string
	TenantID string
	// FullAccess lists service principal object IDs granted
	// Add-MailboxPermission -AccessRights FullAccess.
	FullAccess []string
	// RBACApps lists app (client) IDs given "Application SMTP.SendAsApp"
	// through RBAC for Applications over a scope containing this mailbox.
	RBACApps []string
	// SendAs lists further addresses this mailbox may send as.
	SendAs []string
	// SMTPAuthDisabled is Set-CASMailbox -SmtpClientAuthenticationDisabled $true.
	SMTPAuthDisabled bool
	// MaxSendSize in bytes; 0 means DefaultMaxSendSize.
	MaxSendSize int64
}

// Stage is where a scripted reply is given.
type Stage string

// Stages of a submission.
const (
	StageAuth Stage = "AUTH"
	StageMail Stage = "MAIL"
	StageRcpt Stage = "RCPT"
	StageData Stage = "DATA" // after the message was received
)

// Reply is a scripted answer. With Hangup the connection is closed instead.
type Reply struct {
	Code     int
	Enhanced smtp.EnhancedCode
	Text     string
	Hangup   bool
}

// Message is a submission the fake accepted.
type Message struct {
	QueueID    string
	AuthUser   string // the XOAUTH2 user
	AppID      string // from the token
	From       string
	To         []string
	Size       int64
	SHA256     [32]byte
	Data       []byte // nil when larger than 8 MiB
	HeaderFrom string
	// The DSN parameters the client gave (RFC 3461): RET and ENVID with
	// MAIL, NOTIFY and ORCPT with each RCPT (by recipient).
	Ret, EnvID string
	Notify     map[string]string // e.g. "SUCCESS,FAILURE"
	ORcpt      map[string]string // e.g. "rfc822;bob@contoso.example"
	TLSVersion uint16
	File       string // the .eml written, if any
	// Commands are the transaction's commands in the order the server
	// took them: RSET (when one opened it), MAIL, each RCPT, DATA (for
	// DATA or BDAT).
	Commands []string
	// RoundTrips counts the times the client waited for the server
	// during the transaction, from its first command to the final
	// reply; 0 unless CountRoundTrips is on.
	RoundTrips int
	// At is when the submission started (its MAIL command).
	At time.Time
}

// Server is the fake submission endpoint.
type Server struct {
	// Hostname appears in replies, like Exchange's front-end names.
	Hostname string

	verifier TokenVerifier
	srv      *smtp.Server
	ln       net.Listener

	mu         sync.Mutex
	mailboxes  map[string]*Mailbox          // by lower-case address
	principals map[string]map[string]string // tenant ID -> app ID -> SP object ID
	scripts    map[Stage][]Reply
	refuse     map[string][]Reply // by lower-case recipient
	// held are the mailbox-wide refusals (Refuse): the reply each stage
	// of a mailbox's transactions gets until Allow.
	held map[string]map[Stage]Reply
	// maxRcpts is the recipients per transaction (SetMaxRecipients).
	maxRcpts int
	// mails counts MAIL commands per mailbox, scripted refusals included.
	mails       map[string]int
	messages    []Message
	active      map[string]int // mailbox -> authenticated connections
	peak        map[string]int // mailbox -> most authenticated connections at once
	authLogins  int
	inlineAuths int
	mailDir     string
	// onAccepted is told of each message accepted (the fake world puts
	// its copy in the mailbox's Sent Items, as Exchange does).
	onAccepted func(Message)
	seq        int
	noStartTLS bool
	dataDelay  time.Duration
	window     atomic.Int64 // CountRoundTrips
	conns      map[*turnConn]struct{}
	maxConns   int // 0: MaxConnectionsPerMailbox
	inData     atomic.Int32
}

// InData counts the submissions between their DATA (or BDAT) and the
// final reply now.
func (s *Server) InData() int { return int(s.inData.Load()) }

// SetMaxConnections changes the connections a mailbox may have at once
// from Exchange's 3 (a benchmark's direct senders each have their own).
func (s *Server) SetMaxConnections(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxConns = n
}

// New returns a server that trusts tokens checked by v.
func New(v TokenVerifier) *Server {
	return &Server{
		Hostname:   "FAKE0PR01MB0001.namprd01.prod.outlook.com",
		verifier:   v,
		mailboxes:  map[string]*Mailbox{},
		principals: map[string]map[string]string{},
		scripts:    map[Stage][]Reply{},
		refuse:     map[string][]Reply{},
		held:       map[string]map[Stage]Reply{},
		mails:      map[string]int{},
		active:     map[string]int{},
		peak:       map[string]int{},
		conns:      map[*turnConn]struct{}{},
	}
}

// Start listens on addr ("127.0.0.1:0" for any port) and offers STARTTLS
// with cert.
func (s *Server) Start(addr string, cert tls.Certificate) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("fake exchange listen: %w", err)
	}
	srv := smtp.NewServer(&backend{s: s})
	srv.Domain = s.Hostname
	srv.MaxMessageBytes = AdvertisedSize
	srv.MaxRecipients = 0
	// Exchange Online offers DSN (EXCHANGE.md).
	srv.EnableDSN = true
	// Exchange reads long XOAUTH2 lines and long message lines; its real
	// limit is not documented. Keep the fake's above the bridge's own
	// (64 KiB), so that a too-long line is the bridge's to refuse. The
	// bridge must not send the token inline anyway (InlineAuths counts it).
	srv.MaxLineLength = 1 << 20
	srv.ReadTimeout = 2 * time.Minute
	srv.WriteTimeout = 2 * time.Minute
	srv.ErrorLog = discardLogger{}
	s.mu.Lock()
	noTLS := s.noStartTLS
	s.mu.Unlock()
	if !noTLS {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	s.srv, s.ln = srv, ln
	go srv.Serve(turnListener{Listener: ln, s: s})
	return nil
}

// SetSubmitDelay makes the server take d before its final reply to
// DATA, as Exchange Online's submission to the mailbox store does.
func (s *Server) SetSubmitDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dataDelay = d
}

// DisableStartTLS makes the server not offer STARTTLS (call before Start),
// to check that a client refuses to go on in plaintext.
func (s *Server) DisableStartTLS() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noStartTLS = true
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server and closes its connections.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// SetOnAccepted has f told of each message accepted.
func (s *Server) SetOnAccepted(f func(Message)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onAccepted = f
}

// SetMailDir makes accepted messages be written to dir as .eml files.
func (s *Server) SetMailDir(dir string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailDir = dir
}

// AddServicePrincipal is New-ServicePrincipal -AppId appID -ObjectId objectID
// in the tenant's Exchange organisation.
func (s *Server) AddServicePrincipal(tenantID, appID, objectID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tid := strings.ToLower(tenantID)
	if s.principals[tid] == nil {
		s.principals[tid] = map[string]string{}
	}
	s.principals[tid][strings.ToLower(appID)] = strings.ToLower(objectID)
}

// AddMailbox creates or replaces a mailbox.
func (s *Server) AddMailbox(m Mailbox) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mb := m
	s.mailboxes[strings.ToLower(m.Address)] = &mb
}

// Script queues replies for a stage; each is used once, in order, before
// the server's own logic runs again. A zero Reply passes one command
// through to the normal logic.
func (s *Server) Script(stage Stage, r ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[stage] = append(s.scripts[stage], r...)
}

// Refuse makes every transaction of a mailbox get r at stage until
// Allow: Exchange's refusals of a mailbox rather than a message
// (continuous-error throttling, a full mailbox, the daily quota, a login
// refused at StageAuth), in its own words.
func (s *Server) Refuse(mailbox string, stage Stage, r Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := strings.ToLower(mailbox)
	if s.held[k] == nil {
		s.held[k] = map[Stage]Reply{}
	}
	s.held[k][stage] = r
}

// Allow ends a mailbox's refusals.
func (s *Server) Allow(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.held, strings.ToLower(mailbox))
}

// refused is the mailbox's refusal at stage, if Refuse set one.
func (s *Server) refused(mailbox string, stage Stage) (Reply, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.held[strings.ToLower(mailbox)][stage]
	return r, ok
}

// SetMaxRecipients makes RCPT beyond n in a transaction get Exchange's
// 452 4.5.3 Too many recipients (its default limit is 500); 0: no limit.
func (s *Server) SetMaxRecipients(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxRcpts = n
}

// Mails counts the MAIL commands a mailbox's transactions began with,
// those refused included: the submissions Exchange saw.
func (s *Server) Mails(mailbox string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mails[strings.ToLower(mailbox)]
}

// RefuseRecipient makes the next RCPTs of addr get r, one each (a zero
// Reply lets one through); after them the recipient is accepted.
func (s *Server) RefuseRecipient(addr string, r ...Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := strings.ToLower(addr)
	s.refuse[k] = append(s.refuse[k], r...)
}

func (s *Server) refusal(addr string) (Reply, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := strings.ToLower(addr)
	q := s.refuse[k]
	if len(q) == 0 {
		return Reply{}, false
	}
	s.refuse[k] = q[1:]
	return q[0], q[0] != Reply{}
}

// Messages returns the accepted messages so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// AuthLogins is how many XOAUTH2 logins succeeded.
func (s *Server) AuthLogins() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.authLogins
}

// PeakConnections is the largest number of authenticated connections the
// mailbox had at once, those refused with 432 4.3.2 included.
func (s *Server) PeakConnections(mailbox string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak[strings.ToLower(mailbox)]
}

// MostWithin is the largest number of the mailbox's accepted messages
// that started (MAIL) within any span of window: Exchange Online allows
// 30 a minute.
func (s *Server) MostWithin(mailbox string, window time.Duration) int {
	s.mu.Lock()
	var at []time.Time
	for _, m := range s.messages {
		if strings.EqualFold(m.AuthUser, mailbox) {
			at = append(at, m.At)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(at, time.Time.Compare)
	most := 0
	for i, j := 0, 0; j < len(at); j++ {
		for at[j].Sub(at[i]) >= window {
			i++
		}
		most = max(most, j-i+1)
	}
	return most
}

// InlineAuths is how many XOAUTH2 attempts sent the token on the AUTH line
// instead of after the 334.
func (s *Server) InlineAuths() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inlineAuths
}

func (s *Server) scripted(stage Stage) (Reply, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.scripts[stage]
	if len(q) == 0 {
		return Reply{}, false
	}
	s.scripts[stage] = q[1:]
	// A zero Reply lets one command through to the normal logic.
	return q[0], q[0] != Reply{}
}

func (s *Server) mailbox(addr string) *Mailbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mailboxes[strings.ToLower(addr)]
}

func (s *Server) nextQueueID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("%08X%04X@%s", time.Now().UnixNano()&0xffffffff, s.seq, s.Hostname)
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}
