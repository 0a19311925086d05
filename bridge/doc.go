// Package bridge is the device side of smtpbridge: the SMTP listeners
// legacy devices talk to. It accepts mail from devices that log in with
// AUTH PLAIN or AUTH LOGIN (or, where allowed, are known by their
// address), applies each device's sender and recipient policy and the
// limits, rewrites the From where the policy says so, and ends each
// message with one call of a Deliverer: the device's delivery mode
// (package queue), which hands it on to Exchange Online. It knows nothing
// of the spool, the queue or Exchange: what comes back is a
// message.Receipt or a *message.Error, whose class decides the reply.
//
// A message travels one way through the files of this package:
//
//	server.go     listeners and their settings, TLS (including the legacy suites old devices need), reload
//	listener.go   accepting connections; each reload's settings serve new ones
//	conn.go       a device connection: deadlines, counts, the DATA phase, a lingering close
//	sasl.go       the PLAIN and LOGIN SASL servers
//	directory.go  devices, their password hashes and networks
//	login.go      a device login: AUTH, the directory, the guard
//	session.go    the SMTP session: MAIL, RCPT, DATA
//	policy.go     sender and recipient policy
//	header.go     the From/Reply-To rewrite, streaming the body untouched
//	deliver.go    the Deliverer interface the session hands messages to
//	reply.go      every reply a device gets
//
// The package must never log, reply with, or keep after the AUTH exchange a
// device password, and never log a message body. Every reply to a device
// is an *smtp.SMTPError from reply.go: go-smtp turns any other error into
// a permanent 554, which would make a device drop a message that a retry
// could have delivered.
package bridge
