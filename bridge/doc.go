// Package bridge is the relay: it accepts mail from legacy devices that log
// in with AUTH PLAIN or AUTH LOGIN, applies each device's sender and
// recipient policy, and hands the message on: to a Spooler (package queue,
// in hybrid and queue mode), which stores it and later calls a Deliverer,
// or straight to a Deliverer (sync mode). In production the Deliverer is
// Upstream, which submits to Exchange Online with AUTH XOAUTH2.
//
// A message travels one way through the files of this package:
//
//	server.go     listeners, TLS (including the legacy suites old devices need), reload
//	listener.go   accepting connections; each reload's settings serve new ones
//	sasl.go       the PLAIN and LOGIN SASL servers
//	directory.go  devices, their password hashes and networks
//	session.go    the SMTP session: auth, MAIL, RCPT, DATA
//	policy.go     sender and recipient policy
//	header.go     the From/Reply-To rewrite, streaming the body untouched
//	deliver.go    the Spooler and Deliverer interfaces after the session
//	pool.go       per-mailbox limits and connection reuse towards Exchange
//	upstream.go   the Exchange Online client: STARTTLS, XOAUTH2, streaming DATA
//	reply.go      the one place errors become SMTP replies for the device
//
// The package must never log, reply with, or keep after the AUTH exchange a
// device password, and never log a token or a message body. Every reply to a
// device is an *smtp.SMTPError built by reply.go or by the session itself:
// go-smtp turns any other error into a permanent 554, which would make a
// device drop a message that a retry could have delivered.
package bridge
