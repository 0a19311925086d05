package bridge

import (
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/message"
)

// Every reply the bridge gives a device is here: its own refusals (this
// table), and the outcome of a delivery (deliveryReply, through
// message.ReplyFor, the one mapper from a failure's class to a reply).
// go-smtp turns any error that is not an *smtp.SMTPError into a permanent
// 554 with the error's text, so no other error may reach it.

// Replies at the greeting, to connections the bridge will not serve (RFC
// 5321 section 3.1: a 554 greeting means no service).
var (
	replyNetwork = reply(554, 5, 7, 1, "Access denied: this address may not use this service")
	replyBlocked = reply(421, 4, 7, 0, "Too many failed logins from your address; try again later")
	replyLimit   = reply(421, 4, 7, 0, "Too many connections; try again later")
	replyLimitIP = reply(421, 4, 7, 0, "Too many connections from your address; try again later")
)

// Replies to AUTH.
var (
	errAuthFailed    = reply(535, 5, 7, 8, "Authentication credentials invalid")
	errAuthMalformed = reply(501, 5, 5, 2, "Malformed authentication response")
	errAuthAgain     = reply(503, 5, 5, 1, "Already authenticated")
	errAuthMechanism = reply(504, 5, 5, 4, "Unsupported authentication mechanism, use PLAIN or LOGIN")
)

// Replies to MAIL, RCPT and DATA.
var (
	// RFC 4954 section 6: 530 5.7.0 when authentication is required.
	errNeedAuth = reply(530, 5, 7, 0, "Authentication required")
	errReauth   = reply(530, 5, 7, 0, "Authentication required: this device's settings changed; reconnect and log in again")
	// RFC 5321 section 4.1.4: MAIL may not come within a transaction.
	errNestedMail        = reply(503, 5, 5, 1, "Nested MAIL command: send RSET first")
	errTooManyRecipients = reply(452, 4, 5, 3, "Too many recipients")
	errDeviceRate        = reply(450, 4, 7, 1, "This device has sent its hourly maximum of messages; try again later")
	errTooManyErrors     = reply(421, 4, 7, 0, "Too many errors, closing connection")
	errDataTimeout       = reply(421, 4, 4, 2, "Timeout waiting for message data, closing connection")
	errSenderNotAllowed  = reply(550, 5, 7, 1, "Sender address not allowed for this device")
	errHeaderFromDenied  = reply(550, 5, 7, 1, "From header address not allowed for this device")
	errRcptNotAllowed    = reply(550, 5, 7, 1, "Recipient not allowed for this device")
	errRecipientSyntax   = reply(553, 5, 1, 3, "Recipient address syntax not accepted (use local@domain, no quotes or routes)")
	errSenderSyntax      = reply(553, 5, 1, 7, "Sender address syntax not accepted")
	errHeaderTooBig      = reply(552, 5, 3, 4, "Message header block exceeds 256 KiB")
	errBadHeader         = reply(554, 5, 6, 0, "Message header is malformed")
)

func reply(code, c, s, d int, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{c, s, d}, Message: text}
}

// deliveryReply is the device's reply for a failed delivery.
func deliveryReply(err error) *smtp.SMTPError {
	r := message.ReplyFor(err)
	return reply(r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], r.Text)
}

// accepted is the device's reply for a message the delivery side took:
// Exchange's acceptance, or the queue's.
func accepted(id string, r message.Receipt) *smtp.SMTPError {
	text := "OK " + id + " queued"
	if !r.Queued {
		text = "OK " + id + " delivered"
		if r.UpstreamID != "" {
			text += " as <" + r.UpstreamID + ">"
		}
	}
	return reply(250, 2, 0, 0, message.CleanText(text))
}

// replyOf is a reply in the one form logs and the audit log keep.
func replyOf(r *smtp.SMTPError) string {
	return message.Reply{Code: r.Code, Enhanced: [3]int(r.EnhancedCode), Text: r.Message}.String()
}

// greeting is a refusal as the line that replaces the 220 greeting.
func greeting(r *smtp.SMTPError) []byte { return []byte(fmt.Sprintf("%s\r\n", replyOf(r))) }
