package main

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakegraph"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// graphConfig is contoso on Microsoft Graph (mfp-2f, and mfp-smtp
// overriding it with SMTP) and fabrikam on SMTP (fab-mfp).
func (u *fakes) graphConfig(t *testing.T, plain, httpAddr string) string {
	t.Helper()
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	cfg := u.configFrom(t, `
hostname: bridge.test
listeners:
  - {name: lan, address: {{q .Plain}}, tls: none, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}    transport: graph
    graph_host: {{q .GraphHost}}
    graph_token_scope: {{q .GraphScope}}
  - name: fabrikam
    tenant_id: {{q .CertTenantID}}
    client_id: {{q .CertClientID}}
    certificate_file: app.pem
    authority_host: {{q .Authority}}
    smtp_host: {{q .SMTPHost}}
devices:
  - {name: mfp-2f, username: mfp-2f, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example}
  - {name: mfp-smtp, username: mfp-smtp, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example, transport: smtp}
  - {name: fab-mfp, username: fab-mfp, password_hash: {{q .Hash}}, tenant: fabrikam, mailbox: mfp@fabrikam.example}
limits: {max_message_bytes: 36700160}
delivery: {mode: hybrid, retry_initial: 1s, retry_max: 2s, sync_timeout: 20s}
spool: {dir: spool}
log: {level: debug, audit_file: audit.log}
http: {address: {{q .HTTP}}}
`, map[string]any{"Plain": plain, "GraphScope": fakeentra.GraphResource + "/.default", "Hash": hash, "HTTP": httpAddr})
	path := filepath.Join(u.dir, "graph.yaml")
	writeFile(t, path, cfg)
	return path
}

// scanMessage is a scanner's message to bob with a PDF of pdfSize bytes.
func scanMessage(subject string, pdfSize int) (string, []byte) {
	return testenv.Scan("From: <scan@printer.lan>\r\nTo: <bob@contoso.example>\r\nSubject: "+subject+"\r\n", pdfSize)
}

func graphMessage(g *fakegraph.Server, subject string) *fakegraph.Message {
	for _, m := range g.Messages() {
		if m.Subject == subject {
			return &m
		}
	}
	return nil
}

// A tenant on Microsoft Graph, on the binary: a device's message reaches
// exactly its envelope's recipients, a 30 MB scan goes through a draft
// and an upload session, throttling pauses the mailbox, a refusal is
// permanent with a hint; beside it a device overriding its tenant and a
// tenant on SMTP deliver in the same run, and the Graph token is a grant
// of its own, cached.
func TestGraphTransport(t *testing.T) {
	u := startFakes(t)
	plain, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	path := u.graphConfig(t, plain, httpAddr)
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain}, "serve", "--config", path)
	p.plain = plain

	// Recipients: the envelope's, exactly.
	reply, err := sendAs(p.plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example", "hidden@contoso.example"},
		"From: <scan@printer.lan>\r\nTo: Bob <bob@contoso.example>, Evil <evil@elsewhere.example>\r\nSubject: graph small\r\n\r\nbody line\r\n")
	if err != nil || !strings.Contains(reply, "2.0.0") {
		t.Fatalf("small message: %q %v\n%s", reply, err, p.logs.String())
	}
	g := graphMessage(u.Graph, "graph small")
	if g == nil {
		t.Fatalf("Graph did not get the message; it has %+v", u.Graph.Messages())
	}
	if rc := slices.Sorted(slices.Values(g.Recipients)); !slices.Equal(rc, []string{"bob@contoso.example", "hidden@contoso.example"}) {
		t.Errorf("Graph's recipients %v, want bob and the Bcc-only hidden, not evil", rc)
	}
	if !bytes.HasSuffix(g.MIME, []byte("\r\n\r\nbody line\r\n")) {
		t.Errorf("the body changed:\n%s", g.MIME)
	}

	// A 30 MB scan, watching the bridge's memory.
	data, pdf := scanMessage("graph scan", 30<<20*3/4)
	if reply, err := sendAs(p.plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example"}, data); err != nil || !strings.Contains(reply, "2.0.0") {
		t.Fatalf("30 MB scan: %q %v", reply, err)
	}
	g = graphMessage(u.Graph, "graph scan")
	if g == nil || g.Via != "draft" || len(g.Attachments) != 1 || !g.Attachments[0].Uploaded ||
		g.Attachments[0].SHA256 != sha256.Sum256(pdf) || g.Attachments[0].Name != "scan.pdf" {
		t.Fatalf("the scan arrived as %+v", g)
	}
	rss := peakRSS(t, p.cmd.Process.Pid)
	if rss > 64<<20 {
		t.Errorf("peak RSS %d MiB relaying a %d MB scan through Graph", rss>>20, len(data)/1_000_000)
	}
	t.Logf("a %d MB scan through a draft and %d chunks; the bridge's peak RSS %.1f MiB", len(data)/1_000_000,
		u.Graph.Requests("chunk"), float64(rss)/(1<<20))

	// Throttling: Retry-After 5 holds the mailbox about 5 s, nothing lost.
	u.Graph.Script(fakegraph.Reply{Status: 429, Code: "ApplicationThrottled", Message: "Application is over its MailboxConcurrency limit.", RetryAfter: 5})
	start := time.Now()
	reply, err = sendAs(p.plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example"}, "Subject: graph throttled\r\n\r\nx\r\n")
	if err != nil {
		t.Fatalf("throttled message: %v", err)
	}
	waitFor(t, "the throttled message", 20*time.Second, func() bool { return graphMessage(u.Graph, "graph throttled") != nil })
	if d := time.Since(start); d < 4500*time.Millisecond || d > 12*time.Second {
		t.Errorf("the throttled message went after %s, want about 5 s (Retry-After)", d)
	}
	t.Logf("throttled: device got %q; delivered after %s", reply, time.Since(start).Round(100*time.Millisecond))

	// A refusal for good: the device gets 550 with Graph's code, the log
	// a hint.
	u.Graph.Script(fakegraph.Reply{Status: 403, Code: "ErrorAccessDenied", Message: "Access is denied. Check credentials and try again."})
	_, err = sendAs(p.plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example"}, "Subject: graph denied\r\n\r\nx\r\n")
	if err == nil || !strings.Contains(err.Error(), "550") || !strings.Contains(err.Error(), "ErrorAccessDenied") {
		t.Errorf("403 ErrorAccessDenied: the device got %v, want 550 naming ErrorAccessDenied", err)
	}
	waitFor(t, "the hint in the log", 5*time.Second, func() bool {
		return strings.Contains(p.logs.String(), `"hint":"Microsoft Graph refused the app: it lacks the application permission Mail.Send`)
	})

	// SMTP beside Graph: a device overriding its tenant, another tenant.
	for _, dev := range []struct{ user, from string }{{"mfp-smtp", "scan@printer.lan"}, {"fab-mfp", "scan@printer.lan"}} {
		if reply, err := sendAs(p.plain, dev.user, dev.from, []string{"bob@contoso.example"}, "Subject: via smtp "+dev.user+"\r\n\r\nx\r\n"); err != nil || !strings.Contains(reply, "2.0.0") {
			t.Errorf("%s over SMTP: %q %v", dev.user, reply, err)
		}
	}
	smtpGot := 0
	for _, m := range u.exo.Messages() {
		if bytes.Contains(m.Data, []byte("Subject: via smtp ")) {
			smtpGot++
		}
	}
	if smtpGot != 2 || graphMessage(u.Graph, "via smtp mfp-smtp") != nil {
		t.Errorf("Exchange over SMTP got %d of the 2 SMTP devices' messages", smtpGot)
	}
	if g, s := u.entra.GrantsFor(clientID, fakeentra.GraphResource), u.entra.GrantsFor(clientID, fakeentra.Resource); g != 1 || s != 1 {
		t.Errorf("contoso's grants: %d for Graph, %d for Exchange; want 1 each (each cached for its lifetime)", g, s)
	}

	// The device's page shows its last delivery's request-id, the audit
	// log each delivery's.
	resp, err := http.Get("http://" + httpAddr + "/device/mfp-2f")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if g := graphMessage(u.Graph, "graph throttled"); !strings.Contains(string(page), g.RequestID) {
		t.Errorf("the device's page lacks its last delivery's request-id %s", g.RequestID)
	}
	p.stop(t)
	audit, err := os.ReadFile(filepath.Join(u.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, subject := range []string{"graph small", "graph scan", "graph throttled"} {
		g := graphMessage(u.Graph, subject)
		if g == nil || g.RequestID == "" || !strings.Contains(string(audit), g.RequestID) {
			t.Errorf("the audit log lacks %q's request-id", subject)
		}
	}
}

// Without Mail.ReadWrite a scan too large for sendMail is refused for
// good with a reply and a hint that name the permission.
func TestGraphWithoutMailReadWrite(t *testing.T) {
	u := startFakes(t)
	u.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}, GraphRoles: []string{fakeentra.RoleMailSend}})
	plain, httpAddr := testenv.FreePort(t), testenv.FreePort(t)
	path := u.graphConfig(t, plain, httpAddr)
	p := startBridge(t, []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}, []string{plain}, "serve", "--config", path)
	p.plain = plain
	data, _ := scanMessage("graph no rw", 4<<20)
	_, err := sendAs(p.plain, "mfp-2f", "scan@printer.lan", []string{"bob@contoso.example"}, data)
	if err == nil || !strings.Contains(err.Error(), "550") || !strings.Contains(err.Error(), "Mail.ReadWrite") {
		t.Fatalf("the device got %v, want 550 naming Mail.ReadWrite", err)
	}
	waitFor(t, "the hint", 5*time.Second, func() bool {
		return strings.Contains(p.logs.String(), `"hint":"Microsoft Graph refused to create the draft`) && strings.Contains(p.logs.String(), "Application Mail.ReadWrite")
	})
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// doctor on a Graph tenant: a token for Graph, its roles, a draft made
// and deleted per mailbox; a token without Mail.Send is named with the
// command that fixes it.
func TestGraphDoctor(t *testing.T) {
	u := startFakes(t)
	path := u.graphConfig(t, testenv.FreePort(t), testenv.FreePort(t))
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	out, code := runBridge(t, env, "doctor", "--config", path, "--device", "mfp-2f")
	if code != 0 || !strings.Contains(out, "graph token") || !strings.Contains(out, "a draft was created and deleted") {
		t.Fatalf("doctor on a good Graph tenant: exit %d\n%s", code, out)
	}
	if n := len(u.Graph.Messages()); n != 0 {
		t.Errorf("doctor sent %d messages", n)
	}
	out, code = runBridge(t, env, "send-test", "--config", path, "--device", "mfp-2f", "--to", "bob@contoso.example")
	if code != 0 || !strings.Contains(out, "(Microsoft Graph)") || !strings.Contains(out, "Graph's request-id: ") || len(u.Graph.Messages()) != 1 {
		t.Errorf("send-test through Graph: exit %d\n%s", code, out)
	}

	u.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}, GraphRoles: []string{fakeentra.RoleMailReadWrite}})
	out, code = runBridge(t, env, "doctor", "--config", path, "--device", "mfp-2f")
	if code == 0 || !strings.Contains(out, "no Mail.Send role") || !strings.Contains(out, "New-ManagementRoleAssignment -App "+clientID+" -Role 'Application Mail.Send'") {
		t.Errorf("doctor without Mail.Send: exit %d\n%s", code, out)
	}
}
