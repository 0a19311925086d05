package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/hints"
	"github.com/smtpbridge/smtpbridge/internal/daemon"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// sendTestTimeout bounds a send-test.
const sendTestTimeout = 2 * time.Minute

func cmdSendTest(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("send-test", flag.ContinueOnError)
	path := configFlag(fs)
	device := fs.String("device", "", "the device whose mapping (policy, tenant, mailbox) to send through (required)")
	to := fs.String("to", "", "the recipient `ADDRESS` (required)")
	subject := fs.String("subject", "", "the subject (default: smtpbridge test from DEVICE)")
	cfg, err := parseConfigFlags(fs, path, args, stderr)
	if err != nil {
		return err
	}
	if *device == "" || *to == "" {
		return usageError{"send-test: --device NAME and --to ADDRESS are required"}
	}
	inv := cfg.Inventory()
	dev := inv.Device(*device)
	if dev == nil {
		return usageError{fmt.Sprintf("send-test: no device %q in %s", *device, cfg.Path)}
	}
	rcpt, err := mailaddr.Parse(*to)
	if err != nil {
		return usageError{fmt.Sprintf("send-test: --to %q: %v", *to, err)}
	}
	if !dev.RecipientAllowed(rcpt) {
		return fmt.Errorf("device %s may not send to %s: it is not in the device's allowed_recipients (the device would get 550 5.7.1)", dev.Name, rcpt)
	}
	ms, stop, err := daemon.StartSandbox(cfg)
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	defer stop()
	// The bridge's own path, with nothing listening: the message goes
	// through the device's transport as the bridge would send it.
	parts := daemon.PartsOf(cfg, ms)
	parts.Listeners = nil
	hostname := cfg.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	parts.Hostname = hostname
	bridgePath, err := daemon.NewPath(parts, daemon.PathOptions{Log: zerolog.Nop()})
	if err != nil {
		return err
	}
	defer bridgePath.Close()
	t := inv.Tenant(dev.Tenant)
	smtpHost := parts.Routes[t.Name].Host
	via, idLabel := smtpHost, "Exchange's message ID: %s (Exchange admin center > Mail flow > Message trace)\n"
	if dev.ViaGraph() {
		via = parts.GraphRoutes[t.Name].Host + " (Microsoft Graph)"
		idLabel = "Graph's request-id: %s (for Microsoft support; the message trace shows the message by its Message-ID)\n"
	}

	if *subject == "" {
		*subject = "smtpbridge test from " + dev.Name
	}
	id := message.NewID()
	body := testMessage(id, hostname, dev, t.Name, smtpHost, rcpt.String(), *subject)
	fmt.Fprintf(stdout, "sending as %s (device %s, tenant %s) to %s through %s ...\n", dev.Mailbox, dev.Name, t.Name, rcpt, via)
	ctx, cancel := context.WithTimeout(context.Background(), sendTestTimeout)
	defer cancel()
	start := time.Now()
	receipt, err := bridgePath.Deliver(ctx, &message.Message{ID: id, Device: dev.Name, Tenant: t.Name, Mailbox: dev.Mailbox.String(),
		From: dev.Mailbox.String(), To: []string{rcpt.String()}, Size: int64(len(body)), Body: strings.NewReader(body)})
	if err != nil {
		printNotDelivered(stdout, dev.Name, err)
		return errors.New("the test message was not delivered")
	}
	fmt.Fprintf(stdout, "delivered in %s: %s\n", time.Since(start).Round(time.Millisecond), receipt.Reply)
	if receipt.UpstreamID != "" {
		fmt.Fprintf(stdout, idLabel, receipt.UpstreamID)
	}
	return nil
}

// printNotDelivered says why a test message was not delivered: the reply
// a device would get, the failure, and what it means with its fix.
func printNotDelivered(w io.Writer, device string, err error) {
	reply := message.ReplyOf(err).String()
	fmt.Fprintf(w, "not delivered: %s\n", reply)
	if detail := err.Error(); message.StageOf(err) != "" {
		fmt.Fprintf(w, "  (%s)\n", detail)
	}
	var te *tokenstore.Error
	h := hints.ForReply(reply)
	if errors.As(err, &te) {
		h = hints.ForAADSTS(te.AADSTS)
	}
	if h != nil {
		fmt.Fprintf(w, "  means: %s\n  fix:   %s\n", h.Meaning, h.Fix)
	}
	fmt.Fprintln(w, "  smtpbridge doctor --device "+device+" checks the whole path step by step.")
}

// testMessage is the message send-test sends.
func testMessage(id, hostname string, dev *inventory.Device, tenant, smtpHost, to, subject string) string {
	var b strings.Builder
	crlf := func(format string, a ...any) { fmt.Fprintf(&b, format+"\r\n", a...) }
	crlf("From: %s <%s>", mime.QEncoding.Encode("utf-8", "smtpbridge test ("+dev.Name+")"), dev.Mailbox)
	crlf("To: <%s>", to)
	crlf("Subject: %s", mime.QEncoding.Encode("utf-8", subject))
	crlf("Date: %s", time.Now().Format(time.RFC1123Z))
	crlf("Message-ID: <%s@%s>", id, hostname)
	crlf("MIME-Version: 1.0")
	crlf("Content-Type: text/plain; charset=utf-8")
	crlf("X-Smtpbridge-Test: %s", dev.Name)
	crlf("")
	crlf("This test message went through smtpbridge's mapping for device %s:", dev.Name)
	crlf("tenant %s, sent as %s, to Exchange Online at %s.", tenant, dev.Mailbox, smtpHost)
	crlf("It was sent by smtpbridge send-test on %s at %s.", hostname, time.Now().UTC().Format(time.RFC1123))
	crlf("If it arrived, the device's settings on the bridge's side work.")
	return b.String()
}
