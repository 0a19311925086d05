package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/fakegraph"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
)

// discoverConfig is contoso with two devices, on scanner@ and erp@.
func (u *fakes) discoverConfig(t *testing.T, hash string) string {
	t.Helper()
	cfg := u.configFrom(t, `
listeners:
  - {name: lan, address: "127.0.0.1:2525", tls: none, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}    graph_host: {{q .GraphHost}}
    graph_token_scope: {{q .GraphScope}}
devices:
  - {name: mfp-2f, username: mfp-2f, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example}
  - {name: erp, username: erp, password_hash: {{q .Hash}}, tenant: contoso, mailbox: erp@contoso.example}
spool: {dir: spool}
`, map[string]any{"GraphScope": fakeentra.GraphResource + "/.default", "Hash": hash})
	path := filepath.Join(u.dir, "discover.yaml")
	writeFile(t, path, cfg)
	return path
}

// discover against the fake Graph with 30 days of usage and sign-ins of
// six mailboxes, two of them already mapped: it lists the six with
// their sign-ins and addresses (read over several pages), marks the
// two; --yaml gives entries for the other four that pass check-config
// once their hashes are in; without AuditLog.Read.All, or without a P1
// licence, it still lists the usage report's mailboxes and says what
// would add the addresses; exchange-script --discover prints the grant.
func TestDiscover(t *testing.T) {
	u := startFakes(t)
	roles := []string{fakeentra.RoleMailSend, fakeentra.RoleMailReadWrite, fakeentra.RoleReportsRead, fakeentra.RoleAuditLogRead}
	u.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}, GraphRoles: roles})
	now := time.Now().UTC()
	mailboxes := []string{"scanner", "erp", "mfp-1f", "mfp-3f", "ricoh-lobby", "alarm"}
	act := fakegraph.Activity{Premium: true}
	want := map[string]int{}
	for i, m := range mailboxes {
		upn := m + "@contoso.example"
		act.Usage = append(act.Usage, fakegraph.Usage{UPN: upn, LastActivity: now.Add(-time.Duration(i) * 24 * time.Hour), SMTP: true})
		for j := range i + 1 {
			act.SignIns = append(act.SignIns, fakegraph.SignIn{UPN: upn, IP: fmt.Sprintf("203.0.113.%d", 10+j%2), Time: now.Add(-time.Duration(j) * time.Hour),
				ClientApp: "Authenticated SMTP"})
		}
		want[upn] = i + 1
	}
	// Not SMTP: a browser sign-in, an IMAP-only user, and an SMTP
	// sign-in older than the period.
	act.SignIns = append(act.SignIns, fakegraph.SignIn{UPN: "bob@contoso.example", IP: "198.51.100.1", Time: now, ClientApp: "Browser"},
		fakegraph.SignIn{UPN: "old@contoso.example", IP: "198.51.100.2", Time: now.Add(-40 * 24 * time.Hour), ClientApp: "Authenticated SMTP"})
	act.Usage = append(act.Usage, fakegraph.Usage{UPN: "imap@contoso.example", LastActivity: now, IMAP: true})
	u.Graph.SetActivity(tenantID, act)
	u.Graph.SetPageSize(4)
	hash, err := passwd.NewBcrypt([]byte(password), 4)
	if err != nil {
		t.Fatal(err)
	}
	path := u.discoverConfig(t, hash)
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}

	out, code := runBridge(t, env, "discover", "--config", path, "--tenant", "contoso", "--json")
	if code != 0 {
		t.Fatalf("discover --json: exit %d\n%s", code, out)
	}
	var senders []struct {
		Mailbox   string     `json:"mailbox"`
		Mapped    bool       `json:"mapped"`
		SignIns   int        `json:"sign_ins"`
		Addresses []string   `json:"addresses"`
		LastSeen  *time.Time `json:"last_seen"`
	}
	if err := json.NewDecoder(strings.NewReader(out[strings.Index(out, "\n[")+1:])).Decode(&senders); err != nil {
		t.Fatalf("discover --json: %v\n%s", err, out)
	}
	if len(senders) != 6 {
		t.Fatalf("%d mailboxes, want the 6 that sent over SMTP:\n%s", len(senders), out)
	}
	for _, s := range senders {
		mapped := s.Mailbox == "scanner@contoso.example" || s.Mailbox == "erp@contoso.example"
		wantAddrs := []string{"203.0.113.10", "203.0.113.11"}
		if want[s.Mailbox] == 1 {
			wantAddrs = wantAddrs[:1]
		}
		if s.Mapped != mapped || s.SignIns != want[s.Mailbox] || !slices.Equal(s.Addresses, wantAddrs) || s.LastSeen == nil || now.Sub(*s.LastSeen) > time.Minute {
			t.Errorf("%s: %+v, want mapped %v, %d sign-ins from %v, last seen now", s.Mailbox, s, mapped, want[s.Mailbox], wantAddrs)
		}
	}

	out, code = runBridge(t, env, "discover", "--config", path, "--tenant", "contoso", "--yaml")
	if code != 0 || strings.Count(out, "- name:") != 4 || strings.Contains(out, "scanner@") || strings.Contains(out, "erp@") {
		t.Fatalf("discover --yaml: exit %d, want 4 entries without the mapped mailboxes\n%s", code, out)
	}
	entries := out[strings.Index(out, "devices:\n")+len("devices:\n"):]
	entries = strings.ReplaceAll(entries, "REPLACE with the output of: smtpbridge hash-password", hash)
	pasted := u.configFrom(t, `
listeners:
  - {name: lan, address: "127.0.0.1:2525", tls: none, allow_insecure_auth: true}
tenants:
{{template "contoso" .}}devices:
  - {name: mfp-2f, username: mfp-2f, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example}
`, map[string]any{"Hash": hash}) + entries + "spool: {dir: spool}\n"
	pastedPath := filepath.Join(u.dir, "pasted.yaml")
	writeFile(t, pastedPath, pasted)
	if out, code := runBridge(t, env, "check-config", "--config", pastedPath); code != 0 {
		t.Fatalf("the --yaml entries pasted with hashes fail check-config: exit %d\n%s\n%s", code, out, pasted)
	}

	// Without the sign-in logs' permission, then without the licence.
	u.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}, GraphRoles: roles[:3]})
	out, code = runBridge(t, env, "discover", "--config", path, "--tenant", "contoso")
	if code != 0 || strings.Count(out, "@contoso.example") < 6 || !strings.Contains(out, "AuditLog.Read.All") || !strings.Contains(out, "exchange-script --discover") {
		t.Errorf("discover without AuditLog.Read.All: exit %d, want the 6 from the usage report and the permission named\n%s", code, out)
	}
	u.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}, GraphRoles: roles})
	act.Premium = false
	u.Graph.SetActivity(tenantID, act)
	out, code = runBridge(t, env, "discover", "--config", path, "--tenant", "contoso")
	if code != 0 || !strings.Contains(out, "P1 or P2") {
		t.Errorf("discover without a P1 licence: exit %d\n%s", code, out)
	}
	u.AddApp(tenantID, fakeentra.App{ClientID: clientID, Secrets: []fakeentra.Secret{{Value: clientSecret}}, GraphRoles: roles[:2]})
	out, code = runBridge(t, env, "discover", "--config", path, "--tenant", "contoso")
	if code == 0 || !strings.Contains(out, "Reports.Read.All") {
		t.Errorf("discover with neither permission: exit %d, want a failure naming Reports.Read.All\n%s", code, out)
	}

	out, code = runBridge(t, env, "exchange-script", "--config", path, "--discover")
	if code != 0 || !strings.Contains(out, "Reports.Read.All") || !strings.Contains(out, "AuditLog.Read.All") || !strings.Contains(out, clientID) {
		t.Errorf("exchange-script --discover: exit %d\n%s", code, out)
	}
}
