package smtp

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// ProbeStep is one step of a probe of Exchange Online for a mailbox.
type ProbeStep struct {
	// Stage is message.StageConnect (dial and greeting),
	// StageStartTLS, StageAuth (AUTH XOAUTH2 as the mailbox) or
	// StageMail (MAIL FROM:<mailbox>).
	Stage message.Stage
	// Err is nil when the step passed; a *message.Error otherwise.
	Err error
	// Detail says what passed: the TLS version and certificate, ...
	Detail string
	Took   time.Duration
}

// Probe checks, step by step, that a mailbox can submit through route
// with token: the host answers, STARTTLS succeeds with a verified
// certificate, AUTH XOAUTH2 as the mailbox succeeds, and Exchange accepts
// MAIL FROM:<mailbox>. Then it resets and quits: nothing is sent. It
// returns the steps tried; the last one failed, unless all passed.
func Probe(ctx context.Context, route Route, hostname, mailbox, token string) []ProbeStep {
	s := &submission{host: route.Host, obs: upstream.NopObserver{}}
	var steps []ProbeStep
	start := time.Now()
	c, err := s.dial(ctx, route, hostname)
	if err != nil {
		stage := message.StageOf(err)
		if stage != message.StageConnect {
			steps = append(steps, ProbeStep{Stage: message.StageConnect, Detail: route.Host + " answered"})
		}
		return append(steps, ProbeStep{Stage: stage, Err: err, Took: time.Since(start)})
	}
	defer c.close()
	stop := context.AfterFunc(ctx, func() { c.close() })
	defer stop()
	steps = append(steps, ProbeStep{Stage: message.StageConnect, Detail: route.Host + " answered"})
	st, _ := c.tlsState()
	detail := tls.VersionName(st.Version) + ", " + tls.CipherSuiteName(st.CipherSuite)
	if len(st.PeerCertificates) > 0 {
		cert := st.PeerCertificates[0]
		detail += fmt.Sprintf(", certificate %q verified, valid until %s", cert.Subject.CommonName, cert.NotAfter.Format(time.DateOnly))
	}
	steps = append(steps, ProbeStep{Stage: message.StageStartTLS, Detail: detail, Took: time.Since(start)})

	t := time.Now()
	if err := c.auth(mailbox, token); err != nil {
		return append(steps, ProbeStep{Stage: message.StageAuth, Err: s.fail(message.StageAuth, "", err), Took: time.Since(t)})
	}
	steps = append(steps, ProbeStep{Stage: message.StageAuth, Detail: "logged in as " + mailbox, Took: time.Since(t)})

	t = time.Now()
	if err := c.write("MAIL FROM:<%s>", mailbox); err != nil {
		return append(steps, ProbeStep{Stage: message.StageMail, Err: s.fail(message.StageMail, "", err), Took: time.Since(t)})
	}
	if _, err := c.reply(2, commandTimeout); err != nil {
		return append(steps, ProbeStep{Stage: message.StageMail, Err: s.fail(message.StageMail, "", err), Took: time.Since(t)})
	}
	steps = append(steps, ProbeStep{Stage: message.StageMail, Detail: "MAIL FROM:<" + mailbox + "> accepted", Took: time.Since(t)})
	if c.write("RSET") == nil {
		c.reply(2, 10*time.Second)
	}
	c.quit()
	return steps
}
