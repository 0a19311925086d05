// Package message is what travels through smtpbridge, from the device side
// (package bridge) through a delivery mode (package queue) to an Exchange
// transport (package upstream and below it): the message with its
// envelope, the receipt Exchange gives for it, and the one error type that
// says how a delivery failed and what that means for the message.
//
// It is the leaf of the module: it imports no other package of smtpbridge,
// so that every stage of the path may import it and none need import
// another stage. It must never hold a password, a client secret or a
// token; a Message's Body is read once, as it streams by, and never kept.
package message

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"io"
	"strings"
	"time"
)

// Message is one message on its way to Exchange Online, after the device's
// policy was applied.
type Message struct {
	// ID is the bridge's message ID, in logs, the Received field and
	// the spool.
	ID      string
	Device  string // the device's name; "" for the bridge's own reports
	Tenant  string // the tenant's name in the config
	Mailbox string // the mailbox it is sent as: the XOAUTH2 user
	From    string // envelope sender (the mailbox under the rewrite policy)
	// HeaderFrom is the address of the message's From field as it
	// leaves the bridge (the mailbox under the rewrite policy): what
	// Exchange's Send As check after the data is about.
	HeaderFrom string
	To         []string
	// Mode is the delivery mode of the device (ModeHybrid, ModeQueue or
	// ModeSync); the delivery side dispatches on it.
	Mode string
	// Size is the message's size when known (spooled), declared to
	// Exchange with SIZE= so that a too-large message is refused at MAIL
	// FROM, before the upload.
	Size int64
	// Body is the whole message, header block first. It is read once; a
	// read error aborts the delivery (StageSource).
	Body io.Reader
	// DSN is what the device asked of delivery status notifications
	// (RFC 3461), passed on to Exchange; nil when it asked nothing.
	DSN *DSN
	// AllRecipients asks for all recipients or none: a transport that
	// has one refused sends the message to nobody. Sync mode asks it:
	// only the device can retry, and it can only retry them all.
	AllRecipients bool
	// Remote is the device's address, and MessageID its Message-ID
	// header, for the audit log's received event (the message trace).
	Remote    string
	MessageID string
}

// DSN holds a message's delivery status notification parameters (RFC
// 3461): what the device gave with MAIL FROM and with each RCPT TO.
type DSN struct {
	Ret   string             `json:"ret,omitempty"`   // FULL or HDRS
	EnvID string             `json:"envid,omitempty"` // the device's envelope ID
	Rcpt  map[string]RcptDSN `json:"rcpt,omitempty"`  // by recipient, as in To
}

// RcptDSN is one recipient's DSN parameters.
type RcptDSN struct {
	// Notify is NEVER, or some of SUCCESS, FAILURE, DELAY.
	Notify []string `json:"notify,omitempty"`
	// ORcptType and ORcpt are the original recipient, e.g. rfc822 and
	// bob@contoso.example.
	ORcptType string `json:"orcpt_type,omitempty"`
	ORcpt     string `json:"orcpt,omitempty"`
}

// Never says whether the recipient asked for no notification at all.
func (r RcptDSN) Never() bool { return len(r.Notify) == 1 && r.Notify[0] == "NEVER" }

// For returns the DSN parameters of recipient to; zero when none.
func (d *DSN) For(to string) RcptDSN {
	if d == nil {
		return RcptDSN{}
	}
	return d.Rcpt[to]
}

// Delivery modes: when a device gets its reply.
const (
	// ModeHybrid spools the message, then waits a while for Exchange:
	// the device gets Exchange's 250 or 5xx, or "queued".
	ModeHybrid = "hybrid"
	// ModeQueue answers 250 as soon as the message is on disk.
	ModeQueue = "queue"
	// ModeSync relays while the device waits, with no spool.
	ModeSync = "sync"
)

// Receipt is what the delivery side says when it took a message.
type Receipt struct {
	// Queued means the queue took the message and will deliver it
	// later; Reply and the rest are then empty.
	Queued bool
	// Reply is Exchange's final reply, e.g. 250 2.0.0 "OK
	// <...@...prod.outlook.com> [Hostname=...]".
	Reply Reply
	// UpstreamID is Exchange's message ID, from Reply, when it has one.
	UpstreamID string
	// Accepted are the recipients Exchange took, Refused the others,
	// each with its own failure (Error.Recipient names it; its class
	// says whether to try that recipient again). A delivery is a success
	// when Accepted is not empty.
	Accepted []string
	Refused  []*Error
}

// NewID returns a fresh message or connection ID: time-ordered, 26
// characters of [0-9a-z], safe in file names.
func NewID() string {
	var b [10]byte
	rand.Read(b[:])
	return fmt.Sprintf("%013x", time.Now().UnixMilli())[:13] + strings.ToLower(idEnc.EncodeToString(b[:]))[:13]
}

var idEnc = base32.StdEncoding.WithPadding(base32.NoPadding)

// SourceReader reads a message's Body and remembers its first read error
// other than io.EOF, so that a copy that fails can tell the source's fault
// (the device went away, the spool file could not be read: StageSource)
// from the destination's.
type SourceReader struct {
	R   io.Reader
	Err error
}

func (s *SourceReader) Read(p []byte) (int, error) {
	n, err := s.R.Read(p)
	if err != nil && err != io.EOF && s.Err == nil {
		s.Err = err
	}
	return n, err
}
