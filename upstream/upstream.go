// Package upstream is the Exchange side of smtpbridge: what every
// transport to Exchange Online shares. A transport takes one message and
// submits it as the device's mailbox, with a token for the device's
// tenant: package upstream/smtp over SMTP AUTH with XOAUTH2, and a
// Microsoft Graph transport next to it for tenants that keep SMTP AUTH off.
//
// Here are the pieces they share: the Transport interface itself, the
// TokenSource they get tokens from, the Limiter that keeps each mailbox
// within Exchange Online's limits (Local, this process's; package
// cluster's shares them between replicas through Redis), and the
// Observer that metrics implement.
//
// The Exchange side knows nothing of devices, sessions or the queue: it
// gets a message.Message and returns a message.Receipt or a
// *message.Error whose class says what the failure means. It must never
// log, or put in an error, a token or a message body.
package upstream

import (
	"context"
	"errors"
	"time"

	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// Transport submits one message to Exchange Online as its mailbox.
type Transport interface {
	Deliver(ctx context.Context, m *message.Message) (message.Receipt, error)
}

// TokenSource gives an access token to send as a tenant's mailbox: the
// app's, or with delegated sign-in the mailbox's own; *tokenstore.Store
// is one.
type TokenSource interface {
	Token(ctx context.Context, tenant, mailbox string) (tokenstore.Token, error)
}

// TokenError is the delivery failure for a token request that failed:
// Setup when Entra refused (wrong secret, no such app, ...), Temporary
// when it may go away by itself (Entra unreachable, throttling, its
// transient codes).
func TokenError(err error) *message.Error {
	e := &message.Error{Class: message.Temporary, Stage: message.StageToken, Err: err}
	var te *tokenstore.Error
	if errors.As(err, &te) {
		e.RetryAt = te.RetryAt // the tenant's pause: nothing to gain before
		if !te.Temporary {
			e.Class = message.Setup
		}
	}
	return e
}

// Observer is told about each submission; metrics implement it.
type Observer interface {
	// UpstreamStage reports how long a step took: token, connect
	// (dial, greeting, STARTTLS, EHLO), auth, mail, rcpt (all
	// recipients), data (DATA to the final reply).
	UpstreamStage(tenant, stage string, took time.Duration)
	// UpstreamReply reports Exchange's final reply to an attempt.
	UpstreamReply(tenant string, code int, enhanced [3]int)
	// UpstreamError reports an attempt that ended without a reply, at
	// stage connect, auth, mail, rcpt or data.
	UpstreamError(tenant, stage string)
}

// NopObserver ignores everything.
type NopObserver struct{}

func (NopObserver) UpstreamStage(string, string, time.Duration) {}
func (NopObserver) UpstreamReply(string, int, [3]int)           {}
func (NopObserver) UpstreamError(string, string)                {}

// Report tells obs how an attempt at tenant's mail ended: Exchange's
// reply (a success's, or a refusal's), or the stage at which the attempt
// broke with no reply. Failures that are not Exchange's doing (the
// token, the message's source) are counted elsewhere.
func Report(obs Observer, tenant string, receipt message.Receipt, err error) {
	var e *message.Error
	switch {
	case err == nil:
		obs.UpstreamReply(tenant, receipt.Reply.Code, receipt.Reply.Enhanced)
	case !errors.As(err, &e):
	case e.Reply.Code != 0:
		obs.UpstreamReply(tenant, e.Reply.Code, e.Reply.Enhanced)
	case e.Stage == message.StageToken || e.Stage == message.StageSource:
		// Counted by the token metrics, or the spool's.
	default:
		stage := e.Stage
		if stage == message.StageStartTLS {
			stage = message.StageConnect
		}
		obs.UpstreamError(tenant, string(stage))
	}
}
