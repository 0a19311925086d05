package bridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/header"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/message"
)

// deliverTimeout bounds how long a device waits for its message's
// delivery (sync mode waits for Exchange; the others for the spool, and
// hybrid for the first attempt up to sync_timeout).
const deliverTimeout = 10 * time.Minute

// session is one device connection. go-smtp calls its methods one at a
// time, except that with BDAT it runs Data in a goroutine of its own while
// it reads the next chunk, and calls Reset from its reading goroutine when
// a transfer is aborted (RSET, EHLO, QUIT). So the transaction is kept
// under mu, Data works on the transaction as it was when Data began, and
// Reset waits for a Data in progress to end. Every error a method returns
// is an *smtp.SMTPError from reply.go.
type session struct {
	srv      *Server
	listener string
	ls       listenerSettings // the listener's settings for this connection
	limits   Limits           // the limits for this connection
	conn     *smtp.Conn
	tc       *trackedConn // nil only in tests that bypass the listeners
	remote   netip.Addr
	connLog  zerolog.Logger // the connection's fields
	started  time.Time

	mu sync.Mutex
	// device is who logged in. At each MAIL FROM the session looks the
	// device up again in the current settings, so a reload's changes
	// apply from the next message on; at RCPT and DATA it checks that
	// the login still holds.
	device *inventory.Device
	log    zerolog.Logger // connLog plus the device's fields
	tx     *transaction   // the message in progress, from MAIL FROM on
	// The Data in progress: cancel stops its delivery, done is closed
	// when it returns.
	dataCancel context.CancelFunc
	dataDone   chan struct{}
}

// transaction is one message in progress, from MAIL FROM on. Once Data
// began, only Data uses it.
type transaction struct {
	st      *Settings // the settings current at MAIL FROM
	device  *inventory.Device
	id      string
	log     zerolog.Logger
	from    string // envelope sender as the device gave it
	to      []string
	tooMany bool // a recipient beyond max_recipients was refused
	dsn     *message.DSN
	helo    string // for the Received field
	tls     bool
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
		se.connLog.Info().Int("errors", max).Msg("closing the connection after too many errors")
		se.tc.closeAfter()
		return errTooManyErrors
	}
	return err
}

// setDevice records who logged in; se.mu is held.
func (se *session) setDevice(dev *inventory.Device) {
	se.device = dev
	if dev == nil {
		se.log = se.connLog
		return
	}
	se.log = se.connLog.With().Str("device", dev.Name).Str("tenant", dev.Tenant).Logger()
}

// revoke ends a login a reload took away; se.mu is held.
func (se *session) revoke(stage string) error {
	se.log.Info().Str("event", "rejected").Str("stage", stage).Msg("the device's settings changed since it logged in; it must log in again")
	se.setDevice(nil)
	se.tx = nil
	return errReauth
}

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.refuse(se.mail(from, opts))
}

// mail starts a transaction; se.mu is held.
func (se *session) mail(from string, opts *smtp.MailOptions) error {
	st := se.srv.Settings()
	switch {
	case se.tx != nil:
		return errNestedMail
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
		se.log.Info().Str("event", "rejected").Str("stage", "mail").Msg("MAIL FROM without AUTH")
		return errNeedAuth
	}
	dev := st.Directory.current(se.device, se.remote)
	if dev == nil {
		return se.revoke("mail")
	}
	se.setDevice(dev)
	_, tls := se.conn.TLSConnectionState()
	tx := &transaction{st: st, device: dev, id: message.NewID(), from: from, helo: message.CleanText(se.conn.Hostname()), tls: tls}
	tx.log = se.log.With().Str("msg_id", tx.id).Logger()
	if !se.srv.guard.AllowMessage(dev.Name, dev.MaxPerHour) {
		se.reject(tx, "mail", errDeviceRate, audit.ReasonRate, fmt.Sprintf("more than %d messages in an hour", dev.MaxPerHour))
		return errDeviceRate
	}
	if dev.EnforceFrom {
		a, err := mailaddr.Parse(from)
		if err != nil {
			se.reject(tx, "mail", errSenderSyntax, audit.ReasonPolicy, "sender "+from)
			return errSenderSyntax
		}
		if !dev.SenderAllowed(a) {
			se.reject(tx, "mail", errSenderNotAllowed, audit.ReasonPolicy, "sender "+from)
			return errSenderNotAllowed
		}
	}
	if opts != nil && (opts.Return != "" || opts.EnvelopeID != "") {
		tx.dsn = &message.DSN{Ret: string(opts.Return), EnvID: opts.EnvelopeID}
	}
	se.tx = tx
	return nil
}

func (se *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.refuse(se.rcpt(to, opts))
}

// rcpt adds a recipient; se.mu is held.
func (se *session) rcpt(to string, opts *smtp.RcptOptions) error {
	tx, err := se.transaction("rcpt")
	if err != nil {
		return err
	}
	if max := tx.st.Limits.MaxRecipients; max > 0 && len(tx.to) >= max {
		if !tx.tooMany {
			// Counted once per message, not once per refused address.
			tx.tooMany = true
			se.reject(tx, "rcpt", errTooManyRecipients, audit.ReasonRecipients, fmt.Sprintf("more than %d recipients", max))
		}
		return errTooManyRecipients
	}
	a, err := mailaddr.Parse(to)
	if err != nil {
		se.reject(tx, "rcpt", errRecipientSyntax, audit.ReasonPolicy, "recipient "+to)
		return errRecipientSyntax
	}
	if !tx.device.RecipientAllowed(a) {
		se.reject(tx, "rcpt", errRcptNotAllowed, audit.ReasonPolicy, "recipient "+to)
		return errRcptNotAllowed
	}
	tx.to = append(tx.to, a.String())
	if opts != nil && (len(opts.Notify) > 0 || opts.OriginalRecipient != "") {
		// RFC 3461: passed on to Exchange, which offers DSN.
		d := message.RcptDSN{ORcptType: string(opts.OriginalRecipientType), ORcpt: opts.OriginalRecipient}
		for _, n := range opts.Notify {
			d.Notify = append(d.Notify, string(n))
		}
		if tx.dsn == nil {
			tx.dsn = &message.DSN{}
		}
		if tx.dsn.Rcpt == nil {
			tx.dsn.Rcpt = map[string]message.RcptDSN{}
		}
		tx.dsn.Rcpt[a.String()] = d
	}
	return nil
}

// transaction returns the transaction in progress, if the login it was
// started with still holds; se.mu is held.
func (se *session) transaction(stage string) (*transaction, error) {
	if se.device == nil {
		return nil, errNeedAuth
	}
	if se.srv.Settings().Directory.current(se.device, se.remote) == nil {
		return nil, se.revoke(stage)
	}
	if se.tx == nil {
		// go-smtp only passes RCPT and DATA on within a transaction, and
		// every transaction here starts with one.
		return nil, errNeedAuth
	}
	return se.tx, nil
}

func (se *session) Data(r io.Reader) error {
	se.mu.Lock()
	tx, err := se.transaction("data")
	ctx, cancel := context.WithTimeout(se.srv.ctx, deliverTimeout)
	done := make(chan struct{})
	se.dataCancel, se.dataDone = cancel, done
	se.mu.Unlock()
	defer func() {
		cancel()
		close(done)
	}()
	if _, bdat := r.(*io.PipeReader); !bdat && se.tc != nil {
		// DATA reads the connection itself; BDAT's chunks are read by
		// go-smtp under each chunk's command deadline.
		se.tc.beginData(se.limits.CommandTimeout, se.limits.MaxMessageBytes+maxDiscard(se.limits.MaxMessageBytes))
	}
	if err != nil {
		return se.refuse(err)
	}
	err = se.data(ctx, tx, &deviceReader{r: r})
	if se.tc != nil && se.tc.dataTimedOut.Load() {
		// RFC 5321 section 4.5.3.2.6: a server that times out waiting
		// for data closes the connection.
		tx.log.Info().Dur("command_timeout", se.limits.CommandTimeout).Msg("the device stopped sending in the middle of DATA; closing the connection")
		return errDataTimeout
	}
	return se.refuse(err)
}

// maxDiscard bounds what the bridge reads and throws away after a message
// went over the size limit, before it answers 552 and closes instead.
func maxDiscard(limit int64) int64 { return max(limit, 32<<20) }

// data hands the message on and makes the device's reply.
func (se *session) data(ctx context.Context, tx *transaction, r io.Reader) error {
	dev := tx.device
	h, body, err := header.Read(r)
	if err != nil {
		reply, reason := errBadHeader, audit.ReasonMalformed
		switch {
		case errors.Is(err, header.ErrTooLarge):
			reply, reason = errHeaderTooBig, audit.ReasonSize
		case errors.Is(err, message.ErrTooLarge), errors.Is(err, message.ErrLineTooLong):
			reply, reason = deliveryReply(&message.Error{Stage: message.StageSource, Err: err}), audit.ReasonSize
		case !errors.Is(err, header.ErrMalformed):
			tx.log.Warn().Err(err).Msg("reading the message from the device failed")
			return deliveryReply(err)
		}
		se.reject(tx, "data", reply, reason, "")
		return reply
	}

	envelopeFrom, headerFrom := dev.Mailbox.String(), dev.Mailbox.String()
	if dev.EnforceFrom {
		envelopeFrom = tx.from
		f, i := h.Get("from")
		if i < 0 {
			h.Fields = append(h.Fields, formatField("From", mailAddress(dev.Mailbox)))
		} else if addrs, ok := fromAddresses(f.Value()); !ok || slices.ContainsFunc(addrs, func(a mailaddr.Address) bool { return !dev.SenderAllowed(a) }) {
			se.reject(tx, "data", errHeaderFromDenied, audit.ReasonPolicy, "header From "+message.CleanText(f.Value()))
			return errHeaderFromDenied
		} else if len(addrs) > 0 {
			headerFrom = addrs[0].String()
		}
		if len(h.All("from")) > 1 {
			// A second From field would be an author the policy did not
			// check (RFC 5322 section 3.6 allows one).
			se.reject(tx, "data", errHeaderFromDenied, audit.ReasonPolicy, "more than one From field")
			return errHeaderFromDenied
		}
	} else {
		orig, had := rewriteFrom(h, dev.Mailbox)
		if had && !orig.Equal(dev.Mailbox) {
			tx.log.Debug().Str("original_from", orig.String()).Msg("From rewritten to the mailbox")
		}
	}
	h.Prepend("Received", se.received(tx))
	if _, i := h.Get("message-id"); i < 0 {
		// As a submission agent may (RFC 6409 section 8.3): without it
		// Exchange makes one the bridge never learns, and the message
		// trace and sent_items could not find the message by it.
		h.Fields = append(h.Fields, header.NewField("Message-ID", "<"+tx.id+"@"+se.srv.hostname+">"))
	}

	msg := &message.Message{
		ID: tx.id, Device: dev.Name, Tenant: dev.Tenant, Mailbox: dev.Mailbox.String(),
		From: envelopeFrom, HeaderFrom: headerFrom, To: tx.to, Mode: dev.Mode, DSN: tx.dsn,
		Body:   io.MultiReader(bytes.NewReader(h.Bytes()), newCRLFReader(body)),
		Remote: se.remote.String(), MessageID: messageID(h),
	}
	receipt, err := se.srv.deliverer.Deliver(ctx, msg)
	if err != nil {
		return se.notDelivered(tx, err)
	}
	return accepted(tx.id, receipt)
}

// notDelivered makes the device's reply for a message that was not
// delivered, and reports what the delivery side does not: a message the
// bridge could not take at all.
func (se *session) notDelivered(tx *transaction, err error) error {
	reply := deliveryReply(err)
	switch message.StageOf(err) {
	case message.StageSource:
		if reply.Code/100 == 5 {
			// Too large, or a line too long.
			se.reject(tx, "data", reply, audit.ReasonSize, "")
		} else {
			tx.log.Warn().Err(err).Int("reply_code", reply.Code).Msg("the message did not arrive completely; nothing was kept")
		}
	case message.StageSpool:
		if errors.Is(err, message.ErrDeviceSpoolFull) {
			// Per message and the device's own doing: not an error of the bridge.
			tx.log.Warn().Err(err).Msg("the device's queued mail fills its share of the spool; the device was told to try again")
		} else {
			tx.log.Error().Err(err).Msg("the spool could not store the message; the device was told to try again")
		}
		ev := se.event(tx, audit.Deferred)
		ev.Reply, ev.RetryBy, ev.Err = replyOf(reply), audit.RetryByDevice, err
		se.srv.events.Observe(ev)
	}
	return reply
}

// event describes the device's message in progress.
func (se *session) event(tx *transaction, k audit.Kind) audit.Event {
	return audit.Event{Kind: k, MsgID: tx.id, Device: tx.device.Name, Tenant: tx.device.Tenant,
		Mailbox: tx.device.Mailbox.String(), Rcpts: len(tx.to), Mode: tx.device.Mode}
}

func (se *session) received(tx *transaction) string {
	proto := "ESMTPA"
	if tx.tls {
		proto = "ESMTPSA"
	}
	helo := tx.helo
	if len(helo) > 64 {
		helo = helo[:64]
	}
	return fmt.Sprintf("from %s ([%s])\r\n\tby %s (smtpbridge) with %s id %s;\r\n\t%s",
		helo, se.remote, se.srv.hostname, proto, tx.id, time.Now().Format(time.RFC1123Z))
}

// reject reports a refusal of the bridge's own: the message, a sender or a
// recipient against the device's policy or the limits.
func (se *session) reject(tx *transaction, stage string, reply *smtp.SMTPError, reason, detail string) {
	ev := se.event(tx, audit.Rejected)
	ev.Mode = ""
	ev.Stage, ev.Reason, ev.Reply, ev.Detail = stage, reason, replyOf(reply), message.CleanText(detail)
	se.srv.events.Observe(ev)
}

// Reset ends the transaction. A BDAT transfer it aborts is stopped, and
// its Data waited for, first.
func (se *session) Reset() {
	se.mu.Lock()
	cancel, done := se.dataCancel, se.dataDone
	se.dataCancel, se.dataDone = nil, nil
	se.mu.Unlock()
	if done != nil {
		cancel()
		<-done
	}
	se.mu.Lock()
	se.tx = nil
	se.mu.Unlock()
}

func (se *session) Logout() error {
	se.connLog.Debug().Dur("duration_ms", time.Since(se.started)).Msg("connection closed")
	return nil
}

// deviceReader is the message as the device sends it. It turns go-smtp's
// size and line limit errors into message's, so that every stage of the
// path can tell them apart.
type deviceReader struct{ r io.Reader }

func (d *deviceReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	switch {
	case err == nil, err == io.EOF:
	case errors.Is(err, smtp.ErrDataTooLarge):
		err = message.ErrTooLarge
	case errors.Is(err, smtp.ErrTooLongLine):
		err = message.ErrLineTooLong
	}
	return n, err
}
