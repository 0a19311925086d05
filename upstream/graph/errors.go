package graph

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
)

// graphError is the body of Graph's error replies.
type graphError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// refusal turns a Graph reply that is not success into a *message.Error,
// in the classes the SMTP transport's replies have, with an SMTP-like
// reply whose text carries Graph's status, code, message and request-id
// (what hints match and what a support ticket needs):
//   - 429 (ApplicationThrottled: "Application is over its
//     MailboxConcurrency limit."), 503, 504 and ErrorTooManyObjectsOpened
//     ("Too many concurrent connections opened., Cannot open mailbox."):
//     throttled; the mailbox waits Retry-After;
//   - 401: the token was refused: the tenant's set-up; the mailbox is held;
//   - 403 ErrorAccessDenied: the app lacks Mail.Send (Mail.ReadWrite for
//     a draft), or the mailbox is outside its RBAC scope: permanent,
//     with the permission named;
//   - ErrorQuotaExceeded ("Mailbox has exceeded maximum mailbox size."):
//     the mailbox is full: held;
//   - ErrorSendAsDenied, ErrorMessageSizeExceeded, ErrorInvalidRecipients,
//     the MIME errors: permanent;
//   - MailboxNotEnabledForRESTAPI, ErrorInvalidUser, an unknown mailbox:
//     the set-up; the mailbox is held;
//   - other 5xx: temporary.
func (s *sender) refusal(resp *http.Response, stage message.Stage) *message.Error {
	var ge graphError
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	json.Unmarshal(body, &ge)
	code, msg := ge.Error.Code, ge.Error.Message
	if code == "" {
		code = http.StatusText(resp.StatusCode)
	}
	text := fmt.Sprintf("Microsoft Graph %d %s: %s", resp.StatusCode, code, msg)
	e := &message.Error{Stage: stage, Host: s.route.Host}
	reply := func(c int, enh [3]int, extra string) {
		t := text + extra + fmt.Sprintf(" [request-id=%s]", s.requestID)
		e.Reply = message.Reply{Code: c, Enhanced: enh, Text: message.CleanText(t)}
	}
	switch {
	case resp.StatusCode == 429 || resp.StatusCode == 503 || resp.StatusCode == 504 || code == "ErrorTooManyObjectsOpened":
		e.Class = message.Throttled
		if d, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			e.RetryAt = time.Now().Add(d)
			reply(451, [3]int{4, 3, 2}, fmt.Sprintf(" (retry after %s)", d))
		} else {
			reply(451, [3]int{4, 3, 2}, "")
		}
	case resp.StatusCode == 401:
		e.Class, e.Stage, e.Hold = message.Setup, message.StageAuth, message.HoldSetup
		reply(535, [3]int{5, 7, 3}, "")
	case code == "ErrorQuotaExceeded":
		e.Class, e.Hold = message.Held, message.HoldMailboxFull
		reply(554, [3]int{5, 2, 2}, "")
	case code == "ErrorAccessDenied" || resp.StatusCode == 403:
		e.Class = message.Permanent
		need := "Mail.Send"
		if stage == message.StageMail {
			need = "Mail.ReadWrite (a message over 3 MB is sent as a draft with its attachments)"
		}
		reply(550, [3]int{5, 7, 1}, "; the app needs the application permission "+need+" with admin consent, or an RBAC for Applications role over this mailbox")
	case code == "ErrorSendAsDenied":
		e.Class = message.Permanent
		reply(550, [3]int{5, 7, 60}, "")
	case code == "ErrorMessageSizeExceeded" || resp.StatusCode == 413:
		e.Class = message.Permanent
		reply(552, [3]int{5, 3, 4}, "")
	case code == "ErrorInvalidRecipients":
		e.Class = message.Permanent
		reply(550, [3]int{5, 1, 10}, "")
	case strings.HasPrefix(code, "ErrorMimeContent"):
		e.Class = message.Permanent
		reply(554, [3]int{5, 6, 0}, "")
	case code == "MailboxNotEnabledForRESTAPI" || code == "ErrorInvalidUser" || code == "ResourceNotFound" || resp.StatusCode == 404:
		e.Class, e.Hold = message.Setup, message.HoldSetup
		reply(550, [3]int{5, 1, 1}, "")
	case resp.StatusCode >= 500:
		e.Class = message.Temporary
		reply(451, [3]int{4, 3, 0}, "")
	default:
		e.Class = message.Permanent
		reply(554, [3]int{5, 0, 0}, "")
	}
	return e
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(min(n, 3600)) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), time.Hour), true
	}
	return 0, false
}
