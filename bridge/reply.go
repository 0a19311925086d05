package bridge

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// Replies the session gives on its own.
var (
	errNeedAuth = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required"}
	errReauth = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required: this device's settings changed; reconnect and log in again"}
	errTooManyRecipients = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: "Too many recipients"}
	errDeviceRate = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1},
		Message: "This device has sent its hourly maximum of messages; try again later"}
	errTooManyErrors = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: "Too many errors, closing connection"}
	errSenderNotAllowed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Sender address not allowed for this device"}
	errHeaderFromNotAllowed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "From header address not allowed for this device"}
	errRecipientNotAllowed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Recipient not allowed for this device"}
	errRecipientSyntax = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "Recipient address syntax not accepted (use local@domain, no quotes or routes)"}
	errSenderSyntax = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7},
		Message: "Sender address syntax not accepted"}
	errTooLarge = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message size exceeds fixed maximum message size"}
	errHeaderTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: "Message header block exceeds 256 KiB"}
	errBadHeader = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message header is malformed"}
	errLineTooLong = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message has a line longer than 64 KiB"}
	errStorage = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
		Message: "Insufficient system storage, message not accepted; try again later"}
	errInternal = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Temporary local problem, try again later"}
)

// replyFor turns a delivery error into the reply for the device. It is
// the only place that does: the device must get a permanent 5xx only when
// Exchange will never take the message, and a 451 it may retry for
// everything else, including the bridge's own set-up problems. Reply text
// never carries err.Error() of an internal error; Exchange's own reply text
// is passed on, cleaned, for its 5xx refusals.
func replyFor(err error) *smtp.SMTPError {
	var (
		ue  *UpstreamError
		te  *tokenstore.Error
		se  *SourceError
		ste *StorageError
		sme *smtp.SMTPError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ste):
		return errStorage
	case errors.As(err, &se):
		if errors.As(se.Err, &sme) && sme.Code == smtp.ErrDataTooLarge.Code {
			return errTooLarge
		}
		if errors.Is(se.Err, smtp.ErrTooLongLine) {
			return errLineTooLong
		}
		return errInternal
	case errors.As(err, &te):
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: "Could not get an access token for this device's mailbox, try again later"}
	case errors.As(err, &ue):
		return upstreamReply(ue)
	}
	return errInternal
}

// ReplyOf is what logs, the spool and dead letters keep of a delivery
// error: Exchange's reply ("550 5.7.60 ..."), or the error's text. It never
// holds a secret: these errors carry replies and Entra's error
// descriptions, not requests.
func ReplyOf(err error) string {
	var ue *UpstreamError
	if errors.As(err, &ue) && ue.Code != 0 {
		s := fmt.Sprintf("%d", ue.Code)
		if ue.Enhanced[0] != 0 {
			s += fmt.Sprintf(" %d.%d.%d", ue.Enhanced[0], ue.Enhanced[1], ue.Enhanced[2])
		}
		s += " " + ue.Message
		if ue.Recipient != "" {
			s += " (recipient " + ue.Recipient + ")"
		}
		return s
	}
	s := err.Error()
	if len(s) > 500 {
		s = s[:500]
	}
	return s
}

// SetupProblem says whether err is the tenant's configuration, not the
// message: a refused token or Exchange refusing the bridge's login. The
// message is fine; an admin must act.
func SetupProblem(err error) bool {
	var (
		te *tokenstore.Error
		ue *UpstreamError
	)
	return errors.As(err, &te) || errors.As(err, &ue) && ue.Stage == StageAuth && ue.Code != 0
}

func upstreamReply(ue *UpstreamError) *smtp.SMTPError {
	if ue.Code == 0 {
		switch ue.Stage {
		case StageStartTLS:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 5},
				Message: "Secure connection to Exchange Online failed, try again later"}
		case StageConnect:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1},
				Message: "Exchange Online not reachable, try again later"}
		case StageAuth:
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
				Message: "Exchange Online login not possible, try again later"}
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
			Message: "Connection to Exchange Online lost, try again later"}
	}
	text := ue.Message
	if ue.Temporary {
		enh := ue.Enhanced
		if enh[0] != 4 {
			// Exchange refused the bridge's login (535 5.7.3, 5.7.139) or
			// sent no enhanced code: the message is fine, the tenant
			// set-up is not.
			enh = smtp.EnhancedCode{4, 7, 0}
			text = "Exchange Online refused the bridge's login for this mailbox (" + text + "), try again later"
		} else {
			text = "Exchange Online: " + text
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: enh, Message: bound(text)}
	}
	enh := ue.Enhanced
	if enh[0] != 5 {
		enh = smtp.EnhancedCode{5, 0, 0}
	}
	code := ue.Code
	if code/100 != 5 {
		code = 554
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: bound("Exchange Online: " + text)}
}

// cleanText makes a remote reply text safe to log and to repeat to a
// device: printable ASCII on one line.
func cleanText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

// bound keeps a reply line short enough for any device to show.
func bound(s string) string {
	if len(s) > 300 {
		return s[:297] + "..."
	}
	return s
}
