package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
)

// session is one device connection. go-smtp calls its methods one at a
// time; every error it returns is an *smtp.SMTPError.
type session struct {
	srv      *Server
	listener string
	conn     *smtp.Conn
	remote   netip.Addr
	log      zerolog.Logger
	started  time.Time

	device *Device
	msgID  string
	msgLog zerolog.Logger
	from   string // envelope sender as the device gave it
	to     []string
}

func (se *session) AuthMechanisms() []string { return []string{mechPlain, mechLogin} }

func (se *session) Auth(mech string) (sasl.Server, error) {
	if se.device != nil {
		return nil, &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Already authenticated"}
	}
	login := func(username string, password []byte) error { return se.login(mech, username, password) }
	switch mech {
	case mechPlain:
		return &plainServer{login: login}, nil
	case mechLogin:
		return &loginServer{login: login}, nil
	}
	return nil, &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4},
		Message: "Unsupported authentication mechanism, use PLAIN or LOGIN"}
}

func (se *session) login(mech, username string, password []byte) error {
	dev, result, err := se.srv.dir.Authenticate(username, password, se.remote)
	se.srv.observer.AuthAttempt(se.listener, mech, string(result))
	if err != nil {
		ev := se.log.Warn().Str("event", "auth_failed").Str("mechanism", mech).Str("result", string(result))
		if result == AuthUnknownUser {
			// An unknown "username" may be a password typed in the wrong
			// field: log only a hint of it.
			ev = ev.Str("username_hint", usernameHint(username))
		} else {
			ev = ev.Str("username", username)
		}
		ev.Msg("device login failed")
		return errAuthFailed
	}
	se.device = dev
	se.log = se.log.With().Str("device", dev.Name).Str("tenant", dev.Tenant).Logger()
	se.log.Info().Str("event", "auth").Str("mechanism", mech).Msg("device logged in")
	return nil
}

func usernameHint(u string) string {
	r := []rune(u)
	if len(r) <= 2 {
		return fmt.Sprintf("(%d chars)", len(r))
	}
	return fmt.Sprintf("%s...(%d chars)", string(r[:2]), len(r))
}

func (se *session) Mail(from string, _ *smtp.MailOptions) error {
	if se.device == nil {
		// RFC 4954 section 6: 530 5.7.0 when authentication is required.
		se.log.Info().Str("event", "rejected").Str("stage", "mail").Msg("MAIL FROM without AUTH")
		return errNeedAuth
	}
	se.msgID = newID()
	se.msgLog = se.log.With().Str("msg_id", se.msgID).Logger()
	if se.device.FromPolicy == config.FromEnforce {
		a, err := mailaddr.Parse(from)
		if err != nil {
			se.reject("mail", errSenderSyntax, "sender", from)
			return errSenderSyntax
		}
		if !se.device.senderAllowed(a) {
			se.reject("mail", errSenderNotAllowed, "sender", from)
			return errSenderNotAllowed
		}
	}
	se.from = from
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	a, err := mailaddr.Parse(to)
	if err != nil {
		se.reject("rcpt", errRecipientSyntax, "recipient", to)
		return errRecipientSyntax
	}
	if !se.device.recipientAllowed(a) {
		se.reject("rcpt", errRecipientNotAllowed, "recipient", to)
		return errRecipientNotAllowed
	}
	se.to = append(se.to, a.String())
	return nil
}

func (se *session) Data(r io.Reader) error {
	start := time.Now()
	dev := se.device
	h, body, err := readHeader(r)
	if err != nil {
		reply := errBadHeader
		var sme *smtp.SMTPError
		switch {
		case errors.As(err, &sme) && sme.Code == smtp.ErrDataTooLarge.Code:
			reply = errTooLarge
		case errors.Is(err, errHeaderTooLarge):
			reply = errHeaderTooBig
		case !errors.Is(err, errMalformedHeader):
			reply = errInternal
		}
		se.reject("data", reply, "", "")
		return reply
	}

	envelopeFrom := dev.Mailbox.String()
	if dev.FromPolicy == config.FromEnforce {
		envelopeFrom = se.from
		f, i := h.get("from")
		if i < 0 {
			h.fields = append(h.fields, formatField("From", mailAddress(dev.Mailbox)))
		} else if _, addr, ok := parseFrom(f.value()); !ok || !dev.senderAllowed(addr) {
			se.reject("data", errHeaderFromNotAllowed, "header_from", addr.String())
			return errHeaderFromNotAllowed
		}
	} else {
		orig, had := rewriteFrom(h, dev.Mailbox)
		if had && !orig.Equal(dev.Mailbox) {
			se.msgLog.Debug().Str("original_from", orig.String()).Msg("From rewritten to the mailbox")
		}
	}
	h.prepend("Received", se.received())

	counted := &countingReader{r: io.MultiReader(bytes.NewReader(h.bytes()), body)}
	msg := &Message{
		ID: se.msgID, Device: dev, Tenant: dev.Tenant, Mailbox: dev.Mailbox.String(),
		From: envelopeFrom, To: se.to, Body: counted,
	}
	mode := dev.Mode
	if mode == "" {
		mode = se.srv.mode
	}
	if mode == config.ModeSync || se.srv.spooler == nil {
		ctx, cancel := context.WithTimeout(se.srv.ctx, upstreamTimeout)
		defer cancel()
		receipt, err := se.srv.deliverer.Deliver(ctx, msg)
		return se.outcome(msg, start, counted.n, receipt, err, true)
	}

	pending, err := se.srv.spooler.Spool(msg, mode == config.ModeHybrid)
	if err != nil {
		// Nothing was queued: the device must send it again.
		return se.outcome(msg, start, counted.n, Receipt{}, err, false)
	}
	var first error // the first attempt's temporary failure, in hybrid mode
	if mode == config.ModeHybrid {
		receipt, err, done := pending.Wait(se.srv.syncWait)
		if done && (err == nil || Permanent(err)) {
			// The queue logged the delivery; a refusal is the session's
			// to log, since the device is told.
			return se.outcome(msg, start, counted.n, receipt, err, false)
		}
		first = err
	}
	se.msgLog.Info().Str("event", "queued").Str("mode", mode).AnErr("first_attempt", first).
		Str("from", envelopeFrom).Int("rcpts", len(se.to)).
		Int64("size", counted.n).Dur("duration_ms", time.Since(start)).Msg("message queued")
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK " + se.msgID + " queued"}
}

// outcome logs a message's end and makes the device's reply: Exchange's
// acceptance (logged if logDelivered), or replyFor's 4xx/5xx for err.
func (se *session) outcome(m *Message, start time.Time, size int64, receipt Receipt, err error, logDelivered bool) error {
	if err != nil {
		reply := replyFor(err)
		ev := se.msgLog.Warn()
		event := "deferred"
		if reply.Code/100 == 5 {
			event = "refused"
		}
		var ue *UpstreamError
		if errors.As(err, &ue) && ue.Stage == StageAuth {
			// Exchange refused the bridge's own login: the tenant's set-up
			// needs an admin, whatever the device does.
			ev = se.msgLog.Error()
		}
		ev.Str("event", event).Err(err).Int("reply_code", reply.Code).
			Str("reply", enhanced(reply)).Str("from", m.From).Int("rcpts", len(m.To)).
			Int64("size", size).Dur("duration_ms", time.Since(start)).
			Msg("message not delivered")
		return reply
	}
	if logDelivered {
		se.msgLog.Info().Str("event", "delivered").Str("from", m.From).Int("rcpts", len(m.To)).
			Int64("size", size).Str("upstream_id", receipt.QueueID).Dur("duration_ms", time.Since(start)).
			Msg("message delivered to Exchange Online")
	}
	text := "OK " + se.msgID + " delivered"
	if receipt.QueueID != "" {
		text += " as <" + receipt.QueueID + ">"
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: cleanText(text)}
}

func (se *session) received() string {
	proto := "ESMTPA"
	if _, ok := se.conn.TLSConnectionState(); ok {
		proto = "ESMTPSA"
	}
	helo := cleanText(se.conn.Hostname())
	if len(helo) > 64 {
		helo = helo[:64]
	}
	return fmt.Sprintf("from %s ([%s])\r\n\tby %s (smtpbridge) with %s id %s;\r\n\t%s",
		helo, se.remote, se.srv.hostname, proto, se.msgID, time.Now().Format(time.RFC1123Z))
}

func (se *session) reject(stage string, reply *smtp.SMTPError, key, value string) {
	ev := se.msgLog.Info()
	if se.msgID == "" {
		ev = se.log.Info()
	}
	ev = ev.Str("event", "rejected").Str("stage", stage).Str("reply", enhanced(reply))
	if key != "" {
		ev = ev.Str(key, cleanText(value))
	}
	ev.Msg(reply.Message)
}

func enhanced(r *smtp.SMTPError) string {
	return fmt.Sprintf("%d %d.%d.%d", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2])
}

func (se *session) Reset() {
	se.from, se.to, se.msgID = "", nil, ""
	se.msgLog = se.log
}

func (se *session) Logout() error {
	se.log.Debug().Dur("duration_ms", time.Since(se.started)).Msg("connection closed")
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
