package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/header"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/spool"
)

// failure is a recipient a report names, with Exchange's reply for it.
type failure struct{ rcpt, reply string }

// failures are the recipients refused for good, each with its reply.
func failures(errs []*message.Error) []failure {
	out := make([]failure, 0, len(errs))
	for _, e := range errs {
		out = append(out, failure{e.Recipient, message.ReplyOf(e).String()})
	}
	return out
}

// bury makes m a dead letter and, if its device has a bounce address,
// queues a delivery status notification about it. why is
// audit.ReasonPermanent or audit.ReasonExpired; reason says it in words.
func (q *Queue) bury(m spool.Meta, why, reason string, log zerolog.Logger) {
	orig, herr := q.originalHeader(m.ID)
	if err := q.o.Spool.Bury(m, reason); err != nil {
		// It stays queued on disk and is tried again after a restart.
		log.Error().Err(err).Msg("could not move the message to the dead letters")
		return
	}
	ev := event(audit.Dead, m)
	ev.Attempt, ev.Reply, ev.Reason, ev.Detail = m.Attempts, m.LastReply, why, reason
	q.o.Events.Observe(ev)
	fs := make([]failure, 0, len(m.To))
	for _, rcpt := range m.To {
		fs = append(fs, failure{rcpt, m.LastReply})
	}
	q.sendReport(m, fs, reason, true, orig, herr, log)
}

// report queues a delivery status notification for the recipients of m
// Exchange refused for good, while it took the others or will be tried
// again for them.
func (q *Queue) report(m spool.Meta, fs []failure, reason string, log zerolog.Logger) {
	orig, herr := q.originalHeader(m.ID)
	q.sendReport(m, fs, reason, false, orig, herr, log)
}

// sendReport queues a report about fs to the device's bounce address,
// if it has one, for the recipients that did not ask for none (NOTIFY,
// RFC 3461 section 4.1).
func (q *Queue) sendReport(m spool.Meta, fs []failure, reason string, dead bool, orig *header.Header, herr error, log zerolog.Logger) {
	if m.DSNFor != "" {
		return // a report about a report would loop
	}
	fs = slices.DeleteFunc(fs, func(f failure) bool { return !wantsFailureReport(m.DSN.For(f.rcpt)) })
	to := q.bounceTo(m.Device)
	if to == "" || len(fs) == 0 {
		return
	}
	if herr != nil {
		log.Warn().Err(herr).Msg("original header not readable; the report goes without it")
	}
	dsn := spool.Meta{
		ID: message.NewID(), Device: m.Device, Tenant: m.Tenant, Mailbox: m.Mailbox,
		From: m.Mailbox, To: []string{to}, DSNFor: m.ID,
	}
	dsn.Received = time.Now().UTC()
	dsn.Attempts, dsn.NextAttempt = 1, dsn.Received.Add(q.backoff(1))
	body := buildDSN(q.o.Hostname, dsn.ID, to, m, fs, reason, dead, orig, time.Now())
	if _, err := q.add(dsn, bytes.NewReader(body), false, nil); err != nil {
		log.Error().Err(err).Msg("could not queue the delivery status notification")
		return
	}
	ev := event(audit.DSN, m)
	ev.Detail = "report " + dsn.ID + " to " + to
	q.o.Events.Observe(ev)
}

// wantsFailureReport says whether a recipient's NOTIFY asks for failure
// reports: it does unless it names others only, or NEVER.
func wantsFailureReport(d message.RcptDSN) bool {
	return len(d.Notify) == 0 || slices.Contains(d.Notify, "FAILURE")
}

// maxReportedHeader bounds the original header block a report carries.
const maxReportedHeader = 64 << 10

// originalHeader reads the header block of a queued message, at most
// maxReportedHeader of it.
func (q *Queue) originalHeader(id string) (*header.Header, error) {
	f, err := q.o.Spool.Open(id)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, _, err := header.Read(io.LimitReader(f, maxReportedHeader))
	return h, err
}

// buildDSN writes an RFC 3464 delivery status notification: a
// multipart/report with a human-readable part, the machine-readable
// message/delivery-status, and the original header block
// (text/rfc822-headers). It is sent as the device's mailbox.
func buildDSN(hostname, dsnID, to string, m spool.Meta, fs []failure, reason string, dead bool, orig *header.Header, now time.Time) []byte {
	boundary := "=_smtpbridge_" + randomHex(12)
	subject := "(no subject)"
	if orig == nil {
		orig = &header.Header{}
	}
	if f, i := orig.Get("subject"); i >= 0 && f.Value() != "" {
		s := f.Value()
		if dec, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
			s = dec
		}
		subject = oneLine(s, 150)
	}
	var rcpts []string
	for _, f := range fs {
		rcpts = append(rcpts, f.rcpt)
	}

	var b bytes.Buffer
	crlf := func(format string, a ...any) { fmt.Fprintf(&b, format+"\r\n", a...) }
	crlf("From: %s <%s>", mime.QEncoding.Encode("utf-8", "Mail Delivery System (smtpbridge)"), m.Mailbox)
	crlf("To: <%s>", to)
	crlf("Subject: %s", mime.QEncoding.Encode("utf-8", "Undelivered: "+subject))
	crlf("Date: %s", now.Format(time.RFC1123Z))
	crlf("Message-ID: <%s@%s>", dsnID, hostname)
	crlf("Auto-Submitted: auto-replied")
	crlf("MIME-Version: 1.0")
	crlf("Content-Type: multipart/report; report-type=delivery-status; boundary=\"%s\"", boundary)
	crlf("")
	crlf("This is a MIME-encapsulated delivery status notification.")
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: text/plain; charset=utf-8")
	crlf("Content-Transfer-Encoding: 8bit")
	crlf("")
	crlf("smtpbridge on %s could not deliver a message through Exchange Online.", hostname)
	crlf("")
	crlf("  Message ID:  %s", m.ID)
	crlf("  Device:      %s", m.Device)
	crlf("  Sent as:     %s", m.Mailbox)
	crlf("  Received:    %s", m.Received.Format(time.RFC1123Z))
	crlf("  Attempts:    %d", m.Attempts)
	crlf("  Recipients:  %s", strings.Join(rcpts, ", "))
	crlf("  Reason:      %s", oneLine(reason, 500))
	crlf("")
	if dead {
		crlf("The message is kept in the bridge's dead letters. After fixing the cause, an")
		crlf("administrator can send it again with: smtpbridge queue requeue %s", m.ID)
	} else {
		crlf("The message's other recipients are not affected.")
	}
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: message/delivery-status")
	crlf("")
	crlf("Reporting-MTA: dns; %s", hostname)
	crlf("X-Smtpbridge-Message-ID: %s", m.ID)
	crlf("Arrival-Date: %s", m.Received.Format(time.RFC1123Z))
	if m.DSN != nil && m.DSN.EnvID != "" {
		crlf("Original-Envelope-Id: %s", oneLine(m.DSN.EnvID, 100))
	}
	for _, f := range fs {
		// Exchange's own permanent status, or 4.4.7 (delivery time
		// expired) for a message given up after temporary failures.
		status := "4.4.7"
		if code := enhancedRE.FindString(f.reply); strings.HasPrefix(code, "5") {
			status = code
		}
		crlf("")
		if d := m.DSN.For(f.rcpt); d.ORcpt != "" {
			crlf("Original-Recipient: %s; %s", oneLine(d.ORcptType, 20), oneLine(d.ORcpt, 300))
		}
		crlf("Final-Recipient: rfc822; %s", f.rcpt)
		crlf("Action: failed")
		crlf("Status: %s", status)
		if f.reply != "" {
			crlf("Diagnostic-Code: smtp; %s", oneLine(f.reply, 500))
		}
		crlf("Last-Attempt-Date: %s", now.Format(time.RFC1123Z))
	}
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: text/rfc822-headers")
	crlf("")
	for _, f := range orig.Fields {
		b.Write(normalizeCRLF(f.Raw))
	}
	crlf("")
	crlf("--%s--", boundary)
	return b.Bytes()
}

var enhancedRE = regexp.MustCompile(`\b[245]\.\d{1,3}\.\d{1,3}\b`)

// oneLine makes s safe for a header or report field: printable, one line,
// at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n]
	}
	return s
}

func normalizeCRLF(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
