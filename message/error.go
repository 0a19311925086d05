package message

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Class says what a failed delivery means for the message. It is decided
// once, where the failure happens (Classify for Exchange's replies), and
// every later decision reads it: the device's reply (ReplyFor), whether
// the queue retries or gives up, whether the mailbox's other messages
// wait, whether a connection is reused, and the log level.
type Class uint8

// Classes of failure.
const (
	// Temporary: try again later (4xx replies, local trouble).
	Temporary Class = iota
	// Permanent: Exchange will never take the message as it is (a 5xx
	// refusal of the message itself: SendAsDenied, too large, ...).
	Permanent
	// Throttled: Exchange wants the mailbox to slow down (432 4.3.2,
	// 421, 451): the mailbox's other messages wait too.
	Throttled
	// Setup: the tenant's configuration, not the message: Entra refused
	// the token, or Exchange refused the bridge's login (535 5.7.3,
	// 5.7.139, 530). An admin must act; the message is retried.
	Setup
	// Broken: no reply came: Exchange could not be reached, TLS failed,
	// or the connection broke. The mailbox's other messages wait too.
	Broken
)

var classNames = [...]string{Temporary: "temporary", Permanent: "permanent", Throttled: "throttled", Setup: "setup", Broken: "broken"}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", c)
}

// Stage is where a delivery failed.
type Stage string

// Stages, in the order a delivery meets them.
const (
	// StageSource: reading the message (from the device, or from the
	// spool) failed; nothing was handed on.
	StageSource Stage = "source"
	// StageSpool: the spool could not store the message.
	StageSpool Stage = "spool"
	// StageConfig: the bridge has no route for the message's tenant.
	StageConfig Stage = "config"
	// StageQuota: the mailbox's recipients per day leave no room for the
	// message now.
	StageQuota    Stage = "quota"
	StageToken    Stage = "token"    // getting an access token from Entra ID
	StageConnect  Stage = "connect"  // dial and greeting
	StageStartTLS Stage = "starttls" // STARTTLS, the handshake and EHLO
	StageAuth     Stage = "auth"     // AUTH XOAUTH2
	StageMail     Stage = "mail"
	StageRcpt     Stage = "rcpt"
	StageData     Stage = "data"
)

// Errors a message Body may fail with: the device sent more than the
// bridge takes. Readers of device data return them (wrapped) instead of
// their library's own, so that every stage can tell them apart.
var (
	ErrTooLarge    = errors.New("the message exceeds the size limit")
	ErrLineTooLong = errors.New("the message has a line longer than the limit")
)

// ContentError is a message the bridge will never be able to send as it
// is, for a reason in its content that the bridge found itself (a MIME
// structure past its bounds, a part that does not decode). Reason is a
// fixed text of the bridge's, safe to show a device: it never holds the
// message's own bytes.
type ContentError struct {
	Reason string
}

func (e *ContentError) Error() string { return e.Reason }

// ErrDeviceSpoolFull is a spool refusing a device's message because the
// device's queued mail fills its share (StageSpool).
var ErrDeviceSpoolFull = errors.New("the device's messages fill its share of the spool (max_queued_bytes)")

// Error is a failed delivery: where it failed, what that means (Class),
// and Exchange's reply when there was one. Every stage of the path returns
// it for a delivery failure; its text never holds a secret (Exchange's
// replies and Entra's error descriptions, never requests).
type Error struct {
	Class Class
	Stage Stage
	Host  string // the Exchange host, when one was involved
	// Reply is Exchange's reply; Code is 0 when none came.
	Reply Reply
	// Recipient is the recipient Exchange refused, at StageRcpt.
	Recipient string
	// Err is the cause: the network, TLS, token or read error.
	Err error
	// RetryAt, when set, is the earliest another attempt can succeed (a
	// quota's window frees, a paused tenant's next probe): the queue
	// waits until then.
	RetryAt time.Time
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Host != "" {
		fmt.Fprintf(&b, "exchange %s at %s", e.Host, e.Stage)
	} else {
		fmt.Fprintf(&b, "%s", e.Stage)
	}
	if e.Recipient != "" {
		fmt.Fprintf(&b, " <%s>", e.Recipient)
	}
	switch {
	case e.Reply.Code != 0:
		b.WriteString(": " + e.Reply.String())
	case e.Err != nil:
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Permanent says whether Exchange will never take the message as it is.
func (e *Error) Permanent() bool { return e.Class == Permanent }

// Pauses says whether the mailbox's other messages should wait before
// their next attempt: Exchange asked to slow down, or is not reachable.
func (e *Error) Pauses() bool { return e.Class == Throttled || e.Class == Broken }

// ConnectionUsable says whether the connection the failure happened on
// can take the next message: Exchange answered, and did not say it is
// closing (421).
func (e *Error) ConnectionUsable() bool {
	return e.Class != Broken && e.Reply.Code != 0 && e.Reply.Code != 421
}

// Classify is the one classifier of Exchange's replies: it turns a reply
// to a command at stage into an Error of the right class.
//
//   - 530 and 535 at any stage, and any 5xx to AUTH, are Setup: Exchange
//     does not accept the bridge's login for this mailbox (RFC 4954
//     section 6; 535 5.7.3 and 5.7.139 in EXCHANGE.md).
//   - 554 5.2.0 SubmissionQuotaExceededException is Throttled: the
//     mailbox used its 10,000 recipients a day; every message fails
//     until the rolling window frees, and then goes.
//   - Any other 5xx is Permanent: a refusal of the message itself.
//   - 421, 451, 432 and 4.3.2 are Throttled (RFC 5321 section 4.2.3:
//     421 closes the channel; 432 4.3.2 is Exchange's sender thread
//     limit).
//   - Anything else is Temporary.
func Classify(host string, stage Stage, r Reply, rcpt string) *Error {
	e := &Error{Stage: stage, Host: host, Reply: r, Recipient: rcpt}
	switch {
	case r.Code == 530 || r.Code == 535 || r.Code/100 == 5 && stage == StageAuth:
		e.Class = Setup
	case QuotaExceeded(r):
		e.Class = Throttled
	case r.Code/100 == 5:
		e.Class = Permanent
	case r.Code == 421 || r.Code == 451 || r.Code == 432 || r.Enhanced == [3]int{4, 3, 2}:
		e.Class = Throttled
	default:
		e.Class = Temporary
	}
	return e
}

// QuotaExceeded says whether r is Exchange's daily recipient quota:
// 554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException.
func QuotaExceeded(r Reply) bool {
	return r.Code/100 == 5 && strings.Contains(r.Text, "SubmissionQuotaExceeded")
}

// ClassOf is the class of any delivery error: an *Error's own, Temporary
// for anything else (the safe default: try again).
func ClassOf(err error) Class {
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	return Temporary
}

// IsPermanent says whether err means Exchange will never take the message.
func IsPermanent(err error) bool { return ClassOf(err) == Permanent }

// StageOf is the stage an *Error failed at, "" for any other error.
func StageOf(err error) Stage {
	var e *Error
	if errors.As(err, &e) {
		return e.Stage
	}
	return ""
}
