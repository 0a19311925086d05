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
	// Held: Exchange refused the sending mailbox, not the message:
	// continuous-error throttling, a full mailbox, the daily recipient
	// quota, the mailbox blocked as a sender (Error.Hold says which).
	// Nothing is wrong with the message: the mailbox's messages wait
	// while one probe at a time finds out whether the block is gone.
	Held
)

var classNames = [...]string{Temporary: "temporary", Permanent: "permanent", Throttled: "throttled", Setup: "setup", Broken: "broken", Held: "held"}

// Hold is why Exchange refuses a sending mailbox rather than a message
// (EXCHANGE.md, "Mailbox-level rules"). While it lasts, the mailbox's
// messages are not attempted, but for one probe at a time; a probe's
// success ends it.
type Hold string

// Hold reasons.
const (
	// HoldThrottled: continuous-error throttling, 550 5.2.251 to
	// 5.2.255 "Sender throttled due to continuous ... errors": the
	// mailbox is blocked from SMTP AUTH for a time Microsoft decides.
	HoldThrottled Hold = "throttled"
	// HoldMailboxFull: 554 5.2.2 ...QuotaExceeded (Graph
	// ErrorQuotaExceeded): the sending mailbox is full, usually of the
	// Sent Items copies of what it sent.
	HoldMailboxFull Hold = "mailbox_full"
	// HoldDailyQuota: 554 5.2.0 ...SubmissionQuotaExceeded: the
	// mailbox's 10,000 recipients a day.
	HoldDailyQuota Hold = "daily_quota"
	// HoldSenderBlocked: the mailbox (or the tenant) may not send: 550
	// 5.1.8 bad outbound sender, 5.7.501 spam abuse, 5.7.705, 5.7.708,
	// 5.7.750.
	HoldSenderBlocked Hold = "sender_blocked"
	// HoldSetup: Exchange or Graph refuses the bridge's login for the
	// mailbox (535 5.7.3, 535 5.7.139, 530 5.7.57, 501 5.5.124, Graph's
	// 401, MailboxNotEnabledForRESTAPI, ErrorInvalidUser): an admin must
	// fix the tenant's set-up.
	HoldSetup Hold = "setup"
)

// Words says a hold's reason in a few words, for replies and logs.
func (h Hold) Words() string {
	switch h {
	case HoldThrottled:
		return "Exchange Online throttles it for continuous errors"
	case HoldMailboxFull:
		return "it is full"
	case HoldDailyQuota:
		return "it reached its recipients a day"
	case HoldSenderBlocked:
		return "Exchange Online blocks it as a sender"
	case HoldSetup:
		return "Exchange Online refuses the bridge's login for it"
	}
	return string(h)
}

// Holds lists every hold reason, for metrics' label values.
var Holds = []Hold{HoldThrottled, HoldMailboxFull, HoldDailyQuota, HoldSenderBlocked, HoldSetup}

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
	// Hold, when set, says the failure is the sending mailbox's, not
	// the message's: the queue holds the mailbox (Held and Setup
	// classes).
	Hold Hold
	// Note, when set, says what the bridge did rather than Exchange
	// (a refusal it repeated from memory), for the audit log and the
	// message's story; the device never sees it.
	Note string
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
// to a command at stage into an Error of the right class. Exchange ends
// its replies with a suffix that changes with the front end and the time
// ([Hostname=...], [MN2PR05CA0004... 2023-09-12T20:59:57.214Z ...]);
// nothing here matches on it.
//
//   - 530 and 535 at any stage, any 5xx to AUTH, and 501 5.5.124 are
//     Setup: Exchange does not accept the bridge's login for this
//     mailbox (RFC 4954 section 6; 535 5.7.3 and 5.7.139 in
//     EXCHANGE.md). The mailbox is held (HoldSetup).
//   - The replies about the sending mailbox are Held (HoldOf): nothing is
//     wrong with the message.
//   - Too many recipients at RCPT (x.5.3) is Temporary for the
//     recipient: it goes in the next transaction.
//   - Any other 5xx is Permanent: a refusal of the message itself.
//   - 421, 451, 432 and 4.3.2 are Throttled (RFC 5321 section 4.2.3:
//     421 closes the channel; 432 4.3.2 is Exchange's sender thread
//     limit, in its old and its current text).
//   - Anything else is Temporary.
func Classify(host string, stage Stage, r Reply, rcpt string) *Error {
	e := &Error{Stage: stage, Host: host, Reply: r, Recipient: rcpt}
	switch {
	case r.Code == 530 || r.Code == 535 || r.Code/100 == 5 && stage == StageAuth || r.Code == 501 && r.Enhanced == [3]int{5, 5, 124}:
		e.Class, e.Hold = Setup, HoldSetup
	case HoldOf(r) != "":
		e.Class, e.Hold = Held, HoldOf(r)
	case stage == StageRcpt && r.Enhanced[1] == 5 && r.Enhanced[2] == 3:
		// Too many recipients (452 4.5.3, or 5.5.3): a limit of the
		// transaction, not the recipient's fault; it goes in the next
		// one, never with the whole message again.
		e.Class = Temporary
	case r.Code/100 == 5:
		e.Class = Permanent
	case r.Code == 421 || r.Code == 451 || r.Code == 432 || r.Enhanced == [3]int{4, 3, 2}:
		e.Class = Throttled
	default:
		e.Class = Temporary
	}
	return e
}

// HoldOf says which mailbox-wide refusal a 5xx reply is, if any
// (EXCHANGE.md, "Mailbox-level rules"): continuous-error throttling,
// the mailbox full, the daily quota, the mailbox refused as a sender.
// 554 5.2.252 SendAsDenied, about one message's From, is not one;
// 550 5.2.252 "Sender throttled due to continuous send as denied
// errors" is.
func HoldOf(r Reply) Hold {
	if r.Code/100 != 5 {
		return ""
	}
	enh, text := r.Enhanced, strings.ToLower(r.Text)
	switch {
	case enh[0] == 5 && enh[1] == 2 && enh[2] >= 251 && enh[2] <= 255 && (enh[2] != 252 || strings.Contains(text, "throttled")),
		strings.Contains(text, "sender throttled due to continuous"):
		return HoldThrottled
	case strings.Contains(text, "submissionquotaexceeded"):
		return HoldDailyQuota
	case enh == [3]int{5, 2, 2} && strings.Contains(text, "quotaexceeded"), strings.Contains(text, "errorquotaexceeded"):
		return HoldMailboxFull
	case enh == [3]int{5, 1, 8}, enh == [3]int{5, 7, 501}, enh == [3]int{5, 7, 705}, enh == [3]int{5, 7, 708}, enh == [3]int{5, 7, 750}:
		return HoldSenderBlocked
	}
	return ""
}

// SendAsRefusal says whether e is Exchange refusing the sender the
// message names, not the mailbox: 550 5.7.60 (the envelope sender, at
// MAIL), 554 5.2.252 or 554 5.2.0 SendAsDenied (the header From, after
// the data), Graph's ErrorSendAsDenied.
func SendAsRefusal(e *Error) bool {
	if e == nil || e.Class != Permanent {
		return false
	}
	r := e.Reply
	return r.Enhanced == [3]int{5, 7, 60} || strings.Contains(strings.ToLower(r.Text), "sendasdenied")
}

// UnknownRecipient says whether e is Exchange refusing a recipient it
// does not know: 550 5.1.10 RecipientNotFound, 5.1.1, Graph's
// ErrorInvalidRecipients.
func UnknownRecipient(e *Error) bool {
	if e == nil || e.Class != Permanent {
		return false
	}
	r := e.Reply
	return r.Enhanced == [3]int{5, 1, 10} || r.Enhanced == [3]int{5, 1, 1} && e.Recipient != "" ||
		strings.Contains(r.Text, "ErrorInvalidRecipients")
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
