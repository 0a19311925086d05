package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
)

// session is one device connection. go-smtp calls its methods one at a
// time; every error it returns is an *smtp.SMTPError.
type session struct {
	srv      *Server
	listener string
	ls       listenerSettings // the listener's settings for this connection
	limits   config.Limits    // the limits for this connection
	conn     *smtp.Conn
	tc       *trackedConn // nil only in tests that bypass the listeners
	remote   netip.Addr
	connLog  zerolog.Logger // the connection's fields
	log      zerolog.Logger // plus the device's, once logged in
	started  time.Time

	// device is who logged in. At each MAIL FROM the session looks the
	// device up again in the current settings, so a reload's changes
	// apply from the next message on.
	device *Device

	// The message in progress, from MAIL FROM on.
	st      *Settings
	msgID   string
	msgLog  zerolog.Logger
	from    string // envelope sender as the device gave it
	to      []string
	tooMany bool // a recipient beyond max_recipients was refused
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

// maxAuthFailures failed AUTHs close a session.
const maxAuthFailures = 3

// login checks a device's credentials. Every AUTH takes at least the
// guard's minimum time, whatever the outcome; a blocked address gets 535
// without a password check; each failure waits a little longer than the
// last; the third failure closes the session.
func (se *session) login(mech, username string, password []byte) error {
	g := se.srv.guard
	done := time.Now().Add(g.AuthDuration())
	defer func() { time.Sleep(time.Until(done)) }()

	if g.Blocked(se.remote) {
		se.srv.observer.AuthAttempt(se.listener, mech, "blocked", "", se.remote)
		se.log.Warn().Str("event", "auth_failed").Str("mechanism", mech).Str("result", "blocked").
			Msg("login from a blocked address refused without a password check")
		return se.authFailed()
	}
	dir := se.srv.Settings().Directory
	dev, result, err := dir.Authenticate(username, password, se.remote)
	if err != nil {
		shown := username
		if result == AuthUnknownUser {
			shown = usernameHint(username)
		}
		delay, block := g.AuthFailed(se.remote, username, shown)
		done = done.Add(delay)
		if block != nil {
			se.log.Warn().Str("event", "blocked").Str("addr", block.Addr.String()).Int("failures", block.Failures).
				Time("until", block.Until).Msg("too many failed logins from this address; it is blocked")
		}
		name := ""
		if d := dir.Lookup(username); d != nil {
			name = d.Name
		}
		se.srv.observer.AuthAttempt(se.listener, mech, string(result), name, se.remote)
		ev := se.log.Warn().Str("event", "auth_failed").Str("mechanism", mech).Str("result", string(result))
		if result == AuthUnknownUser {
			// An unknown "username" may be a password typed in the wrong
			// field: log only a hint of it.
			ev = ev.Str("username_hint", usernameHint(username))
		} else {
			ev = ev.Str("username", username)
		}
		ev.Msg("device login failed")
		return se.authFailed()
	}
	se.srv.observer.AuthAttempt(se.listener, mech, string(result), dev.Name, se.remote)
	se.setDevice(dev)
	se.log.Info().Str("event", "auth").Str("mechanism", mech).Msg("device logged in")
	return nil
}

// authFailed counts a failed AUTH on the connection: the third closes it,
// after its 535.
func (se *session) authFailed() error {
	if se.tc != nil && se.tc.authFailures.Add(1) >= maxAuthFailures {
		se.log.Info().Int("failures", maxAuthFailures).Msg("closing the connection after repeated failed logins")
		se.tc.closeAfter()
		return errAuthFailed
	}
	return se.refuse(errAuthFailed)
}

// refuse counts an error reply for the connection; once max_errors is
// reached the client gets 421 and the connection closes.
func (se *session) refuse(err error) error {
	var sme *smtp.SMTPError
	if se.tc == nil || !errors.As(err, &sme) || sme.Code < 400 || sme == errTooManyRecipients {
		// 452 4.5.3 is not an error of the client's: RFC 5321 section
		// 4.5.3.1.10 has it send the message to the recipients taken and
		// the rest later.
		return err
	}
	if max := se.limits.MaxErrors; max > 0 && int(se.tc.errors.Add(1)) >= max {
		se.log.Info().Int("errors", max).Msg("closing the connection after too many errors")
		se.tc.closeAfter()
		return errTooManyErrors
	}
	return err
}

func (se *session) setDevice(dev *Device) {
	se.device = dev
	se.log = se.connLog.With().Str("device", dev.Name).Str("tenant", dev.Tenant).Logger()
	se.msgLog = se.log
}

func usernameHint(u string) string {
	r := []rune(u)
	if len(r) <= 2 {
		return fmt.Sprintf("(%d chars)", len(r))
	}
	return fmt.Sprintf("%s...(%d chars)", string(r[:2]), len(r))
}

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	return se.refuse(se.mail(from, opts))
}

func (se *session) mail(from string, _ *smtp.MailOptions) error {
	st := se.srv.Settings()
	switch {
	case se.device == nil && se.ls.AllowUnauthenticated:
		// A device that cannot AUTH, known by its address.
		dev := st.Directory.ByAddress(se.remote)
		if dev == nil {
			se.log.Info().Str("event", "rejected").Str("stage", "mail").Msg("MAIL FROM without AUTH from an address no device without AUTH has")
			return errNeedAuth
		}
		se.setDevice(dev)
		se.log.Info().Str("event", "auth").Str("mechanism", "none").Msg("device without AUTH recognised by its address")
	case se.device == nil:
		// RFC 4954 section 6: 530 5.7.0 when authentication is required.
		se.log.Info().Str("event", "rejected").Str("stage", "mail").Msg("MAIL FROM without AUTH")
		return errNeedAuth
	}
	dev := st.Directory.Lookup(se.device.Username)
	if se.device.Unauthenticated {
		dev = st.Directory.ByAddress(se.remote)
	}
	if dev == nil || !dev.sameLogin(se.device) || !dev.allowedFrom(se.remote) {
		// A reload removed the device, changed its password or its
		// networks: the login no longer holds.
		se.log.Info().Str("event", "rejected").Str("stage", "mail").Msg("the device's settings changed since it logged in; it must log in again")
		se.device = nil
		se.log = se.connLog
		return errReauth
	}
	se.setDevice(dev)
	se.st = st
	se.msgID = newID()
	se.msgLog = se.log.With().Str("msg_id", se.msgID).Logger()
	if !se.srv.guard.AllowMessage(dev.Name, dev.MaxPerHour) {
		se.reject("mail", errDeviceRate, audit.ReasonRate, fmt.Sprintf("more than %d messages in an hour", dev.MaxPerHour))
		return errDeviceRate
	}
	if dev.FromPolicy == config.FromEnforce {
		a, err := mailaddr.Parse(from)
		if err != nil {
			se.reject("mail", errSenderSyntax, audit.ReasonPolicy, "sender "+from)
			return errSenderSyntax
		}
		if !dev.senderAllowed(a) {
			se.reject("mail", errSenderNotAllowed, audit.ReasonPolicy, "sender "+from)
			return errSenderNotAllowed
		}
	}
	se.from = from
	return nil
}

func (se *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	return se.refuse(se.rcpt(to, opts))
}

func (se *session) rcpt(to string, _ *smtp.RcptOptions) error {
	if max := se.st.Limits.MaxRecipients; max > 0 && len(se.to) >= max {
		if !se.tooMany {
			// Counted once per message, not once per refused address.
			se.tooMany = true
			se.reject("rcpt", errTooManyRecipients, audit.ReasonRecipients, fmt.Sprintf("more than %d recipients", max))
		}
		return errTooManyRecipients
	}
	a, err := mailaddr.Parse(to)
	if err != nil {
		se.reject("rcpt", errRecipientSyntax, audit.ReasonPolicy, "recipient "+to)
		return errRecipientSyntax
	}
	if !se.device.recipientAllowed(a) {
		se.reject("rcpt", errRecipientNotAllowed, audit.ReasonPolicy, "recipient "+to)
		return errRecipientNotAllowed
	}
	se.to = append(se.to, a.String())
	return nil
}

func (se *session) Data(r io.Reader) error {
	return se.refuse(se.data(r))
}

func (se *session) data(r io.Reader) error {
	start := time.Now()
	dev := se.device
	h, body, err := readHeader(r)
	if err != nil {
		reply, reason := errBadHeader, audit.ReasonMalformed
		var sme *smtp.SMTPError
		switch {
		case errors.As(err, &sme) && sme.Code == smtp.ErrDataTooLarge.Code:
			reply, reason = errTooLarge, audit.ReasonSize
		case errors.Is(err, errHeaderTooLarge):
			reply, reason = errHeaderTooBig, audit.ReasonSize
		case errors.Is(err, smtp.ErrTooLongLine):
			reply, reason = errLineTooLong, audit.ReasonSize
		case !errors.Is(err, errMalformedHeader):
			se.msgLog.Warn().Err(err).Msg("reading the message from the device failed")
			return errInternal
		}
		se.reject("data", reply, reason, "")
		return reply
	}

	envelopeFrom := dev.Mailbox.String()
	if dev.FromPolicy == config.FromEnforce {
		envelopeFrom = se.from
		f, i := h.get("from")
		if i < 0 {
			h.fields = append(h.fields, formatField("From", mailAddress(dev.Mailbox)))
		} else if addrs, ok := fromAddresses(f.value()); !ok || slices.ContainsFunc(addrs, func(a mailaddr.Address) bool { return !dev.senderAllowed(a) }) {
			se.reject("data", errHeaderFromNotAllowed, audit.ReasonPolicy, "header From "+cleanText(f.value()))
			return errHeaderFromNotAllowed
		}
		if len(h.all("from")) > 1 {
			// A second From field would be an author the policy did not
			// check (RFC 5322 section 3.6 allows one).
			se.reject("data", errHeaderFromNotAllowed, audit.ReasonPolicy, "more than one From field")
			return errHeaderFromNotAllowed
		}
	} else {
		orig, had := rewriteFrom(h, dev.Mailbox)
		if had && !orig.Equal(dev.Mailbox) {
			se.msgLog.Debug().Str("original_from", orig.String()).Msg("From rewritten to the mailbox")
		}
	}
	h.prepend("Received", se.received())

	mode := dev.Mode
	if mode == "" {
		mode = se.st.Mode
	}
	counted := &countingReader{r: io.MultiReader(bytes.NewReader(h.bytes()), body)}
	msg := &Message{
		ID: se.msgID, Device: dev, Tenant: dev.Tenant, Mailbox: dev.Mailbox.String(),
		From: envelopeFrom, To: se.to, Body: counted, Mode: mode,
	}
	if mode == config.ModeSync || se.srv.spooler == nil {
		ctx, cancel := context.WithTimeout(se.srv.ctx, upstreamTimeout)
		defer cancel()
		receipt, err := se.srv.deliverer.Deliver(ctx, msg)
		return se.syncOutcome(msg, start, counted.n, receipt, err)
	}

	// The queue logs the message's events from here on: received, then
	// each attempt's outcome.
	pending, err := se.srv.spooler.Spool(msg, mode == config.ModeHybrid)
	if err != nil {
		return se.notTaken(msg, counted.n, err)
	}
	if mode == config.ModeHybrid {
		receipt, err, done := pending.Wait(se.st.SyncTimeout)
		if done && err == nil {
			return delivered(se.msgID, receipt)
		}
		if done && Permanent(err) {
			return replyFor(err)
		}
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK " + se.msgID + " queued"}
}

// event describes the message in progress.
func (se *session) event(k audit.Kind, m *Message, size int64) audit.Event {
	ev := se.baseEvent(k)
	ev.From, ev.Size, ev.Mode = m.From, size, m.Mode
	return ev
}

// baseEvent describes the device's message in progress, as far as the
// session has it.
func (se *session) baseEvent(k audit.Kind) audit.Event {
	return audit.Event{Kind: k, MsgID: se.msgID, Device: se.device.Name, Tenant: se.device.Tenant,
		Mailbox: se.device.Mailbox.String(), Rcpts: len(se.to)}
}

// syncOutcome reports a sync-mode delivery and makes the device's reply:
// Exchange's acceptance or refusal, or a 451 the device retries on.
func (se *session) syncOutcome(m *Message, start time.Time, size int64, receipt Receipt, err error) error {
	var src *SourceError
	if errors.As(err, &src) {
		return se.notTaken(m, size, err)
	}
	took := time.Since(start)
	switch {
	case err == nil:
		se.srv.events.Observe(se.event(audit.Received, m, size))
		ev := se.event(audit.Delivered, m, size)
		ev.Reply, ev.UpstreamID, ev.Accepted, ev.Duration = "250 "+receipt.Reply, receipt.QueueID, start, took
		se.srv.events.Observe(ev)
		return delivered(se.msgID, receipt)
	case Permanent(err):
		se.srv.events.Observe(se.event(audit.Received, m, size))
		ev := se.event(audit.Bounced, m, size)
		ev.Reply, ev.Reason, ev.Err, ev.Duration = ReplyOf(err), audit.ReasonPermanent, err, took
		se.srv.events.Observe(ev)
		return replyFor(err)
	}
	reply := replyFor(err)
	ev := se.event(audit.Deferred, m, size)
	ev.Reply, ev.RetryBy, ev.Err, ev.Duration, ev.SetupProblem = enhanced(reply), audit.RetryByDevice, err, took, SetupProblem(err)
	se.srv.events.Observe(ev)
	return reply
}

// notTaken handles a message the bridge could not take: the device's data
// could not be read, or the spool could not store it.
func (se *session) notTaken(m *Message, size int64, err error) error {
	reply := replyFor(err)
	var (
		src *SourceError
		ste *StorageError
	)
	switch {
	case errors.As(err, &src) && reply.Code/100 == 5:
		// Too large, or a line too long.
		se.reject("data", reply, audit.ReasonSize, "")
	case errors.As(err, &ste):
		se.msgLog.Error().Err(err).Msg("the spool could not store the message; the device was told to try again")
		ev := se.event(audit.Deferred, m, size)
		ev.Reply, ev.RetryBy, ev.Err = enhanced(reply)+" "+reply.Message, audit.RetryByDevice, err
		se.srv.events.Observe(ev)
	default:
		se.msgLog.Warn().Err(err).Int("reply_code", reply.Code).Msg("the message did not arrive completely; nothing was kept")
	}
	return reply
}

// delivered is the device's reply for a message Exchange took.
func delivered(msgID string, receipt Receipt) error {
	text := "OK " + msgID + " delivered"
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

// reject reports a refusal of the bridge's own: the message, a sender or a
// recipient against the device's policy or the limits.
func (se *session) reject(stage string, reply *smtp.SMTPError, reason, detail string) {
	ev := se.baseEvent(audit.Rejected)
	ev.Stage, ev.Reason, ev.Reply, ev.Detail = stage, reason, enhanced(reply)+" "+reply.Message, cleanText(detail)
	se.srv.events.Observe(ev)
}

func enhanced(r *smtp.SMTPError) string {
	return fmt.Sprintf("%d %d.%d.%d", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2])
}

func (se *session) Reset() {
	se.from, se.to, se.msgID, se.tooMany, se.st = "", nil, "", false, nil
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
