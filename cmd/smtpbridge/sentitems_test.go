package main

import (
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakegraph"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// With sent_items.keep, the copies Exchange keeps of the bridge's own
// messages leave the mailbox's Sent Items once older than that: the
// fake Graph's Sent Items loses the copies of what the bridge sent (with
// a Message-ID of the device's, and one the bridge gave a message that
// had none) and keeps a message a person sent from the mailbox, and the
// copies of a device whose sent_items keeps them.
func TestSentItemsKeep(t *testing.T) {
	u := startFakes(t)
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	plain, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	cfg := u.configFrom(t, `
listeners:
  - {name: lan, address: {{q .Plain}}, tls: none, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}    transport: graph
    graph_host: {{q .GraphHost}}
    graph_token_scope: {{q .GraphScope}}
    sent_items: {keep: 1s}
devices:
  - {name: mfp-2f, username: mfp-2f, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example}
  - {name: mfp-keep, username: mfp-keep, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example, sent_items: {keep: 0s}}
delivery: {mode: hybrid, sync_timeout: 20s}
spool: {dir: spool}
http: {address: {{q .HTTP}}}
`, map[string]any{"Plain": plain, "HTTP": httpAddr, "Hash": hash, "GraphScope": fakeentra.GraphResource + "/.default"})
	path := filepath.Join(u.dir, "sentitems.yaml")
	writeFile(t, path, cfg)
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain}, "serve", "--config", path)

	u.Graph.AddSentItem("scanner@contoso.example", fakegraph.SentItem{InternetMessageID: "<by-a-person@contoso.example>", Subject: "sent from Outlook", Sent: time.Now()})
	for _, m := range []struct{ dev, subject, extra string }{
		{"mfp-2f", "with an id", "Message-ID: <scan-1@printer.lan>\r\n"},
		{"mfp-2f", "without an id", ""},
		{"mfp-keep", "kept", "Message-ID: <scan-2@printer.lan>\r\n"},
	} {
		reply, err := sendAs(plain, m.dev, "scanner@contoso.example", []string{"bob@contoso.example"},
			"From: <scanner@contoso.example>\r\nTo: <bob@contoso.example>\r\n"+m.extra+"Subject: "+m.subject+"\r\n\r\nbody\r\n")
		if err != nil || !strings.Contains(reply, "2.0.0") {
			t.Fatalf("%s: %q %v\n%s", m.subject, reply, err, p.logs.String())
		}
	}
	subjects := func() []string {
		var out []string
		for _, it := range u.Graph.SentItems("scanner@contoso.example") {
			out = append(out, it.Subject)
		}
		slices.Sort(out)
		return out
	}
	if got := subjects(); len(got) != 4 {
		t.Fatalf("Sent Items before the sweep: %v, want the person's message and the bridge's three copies", got)
	}
	testenv.Eventually(t, "the bridge's copies deleted", 20*time.Second, func() bool {
		return slices.Equal(subjects(), []string{"kept", "sent from Outlook"})
	})
	time.Sleep(2500 * time.Millisecond) // more sweeps: nothing else goes
	if got := subjects(); !slices.Equal(got, []string{"kept", "sent from Outlook"}) {
		t.Errorf("Sent Items after more sweeps: %v", got)
	}
	if !strings.Contains(p.logs.String(), "copies of the bridge's messages deleted from Sent Items") {
		t.Errorf("no log line of the deletion:\n%s", p.logs.String())
	}

	// doctor says how full Sent Items is, and warns near the quota.
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	out, _ := runBridge(t, env, "doctor", "--config", path, "--device", "mfp-2f")
	if !regexp.MustCompile(`sent items\s+2 item\(s\)`).MatchString(out) {
		t.Errorf("doctor does not show the Sent Items folder's 2 items:\n%s", out)
	}
	u.Graph.AddSentItem("scanner@contoso.example", fakegraph.SentItem{InternetMessageID: "<big@contoso.example>", Size: 41 << 30})
	out, _ = runBridge(t, env, "doctor", "--config", path, "--device", "mfp-2f")
	if !strings.Contains(out, "[warn] sent items") || !strings.Contains(out, "sent_items: {keep: 30d}") {
		t.Errorf("doctor does not warn of a Sent Items near the quota:\n%s", out)
	}
}
