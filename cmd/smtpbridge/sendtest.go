package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/bridge"
	"github.com/smtpbridge/smtpbridge/config"
	"github.com/smtpbridge/smtpbridge/hints"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
	"github.com/smtpbridge/smtpbridge/upstream/graph"
	upsmtp "github.com/smtpbridge/smtpbridge/upstream/smtp"
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
	var dev *bridge.Device
	for _, d := range devices(cfg) {
		if d.Name == *device {
			dev = &d
		}
	}
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
	ms, stop, err := sandboxFor(cfg)
	if err != nil {
		return err
	}
	defer stop()
	t := cfg.Tenant(dev.Tenant)
	store, err := tokenstore.New([]tokenstore.Tenant{ms.tokenTenant(cfg, t)}, nil)
	if err != nil {
		return err
	}
	hostname := cfg.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	route := ms.route(t)
	limiter := upstream.NewLocal(map[string]upstream.Limits{t.Name: {Connections: 1}})
	var exo upstream.Transport
	via, idLabel := route.Host, "Exchange's message ID: %s (Exchange admin center > Mail flow > Message trace)\n"
	if cfgDev := cfg.Device(dev.Name); cfgDev != nil && cfgDev.Parsed.Transport == config.TransportGraph {
		gt := ms.graphTokenTenants(cfg)
		i := slices.IndexFunc(gt, func(x tokenstore.Tenant) bool { return x.Name == t.Name })
		gstore, err := tokenstore.New(gt[i:i+1], nil)
		if err != nil {
			return err
		}
		gr := ms.graphRoutes(cfg)[t.Name]
		g := graph.New(graph.Options{Tokens: gstore, Limiter: limiter, Routes: map[string]graph.Route{t.Name: gr}})
		defer g.Close()
		exo, via = g, gr.Host+" (Microsoft Graph)"
		idLabel = "Graph's request-id: %s (for Microsoft support; the message trace shows the message by its Message-ID)\n"
	} else {
		s := upsmtp.New(upsmtp.Options{Tokens: store, Hostname: hostname, Routes: map[string]upsmtp.Route{t.Name: route}, Limiter: limiter})
		defer s.Close()
		exo = s
	}

	if *subject == "" {
		*subject = "smtpbridge test from " + dev.Name
	}
	id := message.NewID()
	body := testMessage(id, hostname, dev, t.Name, route.Host, rcpt.String(), *subject)
	fmt.Fprintf(stdout, "sending as %s (device %s, tenant %s) to %s through %s ...\n", dev.Mailbox, dev.Name, t.Name, rcpt, via)
	ctx, cancel := context.WithTimeout(context.Background(), sendTestTimeout)
	defer cancel()
	start := time.Now()
	receipt, err := exo.Deliver(ctx, &message.Message{ID: id, Device: dev.Name, Tenant: t.Name, Mailbox: dev.Mailbox.String(),
		From: dev.Mailbox.String(), To: []string{rcpt.String()}, Size: int64(len(body)), Body: strings.NewReader(body)})
	if err != nil {
		reply := message.ReplyOf(err).String()
		fmt.Fprintf(stdout, "not delivered: %s\n", reply)
		if detail := err.Error(); message.StageOf(err) != "" {
			fmt.Fprintf(stdout, "  (%s)\n", detail)
		}
		var te *tokenstore.Error
		h := hints.ForReply(reply)
		if errors.As(err, &te) {
			h = hints.ForAADSTS(te.AADSTS)
		}
		if h != nil {
			fmt.Fprintf(stdout, "  means: %s\n  fix:   %s\n", h.Meaning, h.Fix)
		}
		fmt.Fprintln(stdout, "  smtpbridge doctor --device "+dev.Name+" checks the whole path step by step.")
		return errors.New("the test message was not delivered")
	}
	fmt.Fprintf(stdout, "delivered in %s: %s\n", time.Since(start).Round(time.Millisecond), receipt.Reply)
	if receipt.UpstreamID != "" {
		fmt.Fprintf(stdout, idLabel, receipt.UpstreamID)
	}
	return nil
}

// testMessage is the message send-test sends.
func testMessage(id, hostname string, dev *bridge.Device, tenant, smtpHost, to, subject string) string {
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
