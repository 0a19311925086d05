package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/adminapi"
	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// A tenant whose credential is a federated token file (workload identity
// federation: a Kubernetes service account token, no secret): it
// delivers; a new token written over the file is used from the next
// token request on, without a restart; a token for another service
// account gets Entra's AADSTS700213 with its hint.
func TestFederatedTokenFile(t *testing.T) {
	u := startFakes(t)
	// For check-config and doctor, run as commands.
	t.Setenv("TEST_CLIENT_SECRET", clientSecret)
	t.Setenv("SSL_CERT_FILE", u.caFile)
	const fedTenant, fedClient = "33333333-cccc-4000-8000-000000000003", "cccccccc-0000-4000-8000-00000000000c"
	const subject = "system:serviceaccount:mail:smtpbridge"
	app := u.AddApp(fedTenant, fakeentra.App{ClientID: fedClient,
		Federated: []fakeentra.FederatedCredential{{Issuer: u.entra.FederatedIssuer(), Subject: subject}}})
	u.AddMailbox("relay@fedco.example", fedTenant, app)
	// Tokens under 5 minutes: MSAL asks for a new one for each message,
	// so that each reads the file again.
	u.entra.TokenLifetime = 200 * time.Second
	tokenFile := filepath.Join(u.dir, "sa-token")
	project := func(sub string) string {
		tok, err := u.entra.IssueFederated(sub, fakeentra.TokenExchangeAudience, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// As the kubelet does: a new file renamed over the old.
		writeFile(t, tokenFile+".tmp", tok+"\n")
		if err := os.Rename(tokenFile+".tmp", tokenFile); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	first := project(subject)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	data := testenv.ReadFile(t, path)
	data = strings.Replace(data, "devices:\n", fmt.Sprintf(`  - name: fedco
    tenant_id: %q
    client_id: %q
    federated_token_file: sa-token
    authority_host: %q
    smtp_host: %q
devices:
  - {name: fed-mfp, username: fed-mfp, password_hash: %q, tenant: fedco, mailbox: relay@fedco.example}
`, fedTenant, fedClient, u.entra.URL(), u.exo.Addr(), hashOf(t, password)), 1)
	writeFile(t, path, data)
	appendConfig(t, path, "delivery:\n  retry_initial: 1s\n  retry_max: 2s\n")
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	if out, err := runCmd(t, "", binary, "check-config", "--config", path); err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	p := startBridge(t, env, []string{plain}, "serve", "--config", path)
	send := func(subject string) string {
		reply, err := sendAs(plain, "fed-mfp", "scan@printer.lan", []string{"bob@fedco.example"}, "Subject: "+subject+"\r\n\r\nscan\r\n")
		if err != nil {
			return err.Error()
		}
		return reply
	}
	if r := send("federated-1"); !strings.HasPrefix(r, "2.0.0") {
		t.Fatalf("through the federated credential: %q\n%s", r, p.logs.String())
	}
	grants := u.entra.Grants(fedClient)

	// A new token over the file: the next request presents it.
	second := project(subject)
	if second == first {
		t.Fatal("the fake issued the same token twice")
	}
	if r := send("federated-2"); !strings.HasPrefix(r, "2.0.0") {
		t.Fatalf("after the token file changed: %q\n%s", r, p.logs.String())
	}
	if g := u.entra.Grants(fedClient); g <= grants {
		t.Errorf("no new grant after the token file changed (%d, then %d)", grants, g)
	}
	if u.entra.LastAssertion(fedClient) != second {
		t.Error("the new token in the file was not the one presented")
	}

	// Another service account's token: refused with the code and a
	// hint; the message waits in the queue.
	project("system:serviceaccount:default:other")
	if r := send("federated-3"); !strings.Contains(r, "queued") {
		t.Fatalf("with a token for another subject: %q (want queued)", r)
	}
	testenv.Eventually(t, "the AADSTS700213 in the log", 10*time.Second, func() bool {
		return strings.Contains(p.logs.String(), "AADSTS700213")
	})
	logs := p.logs.String()
	if !strings.Contains(logs, "system:serviceaccount:<namespace>:<service account>") {
		t.Errorf("no hint with the AADSTS700213:\n%s", testenv.Grep(logs, "700213"))
	}
	out, err := runCmd(t, "", binary, "doctor", "--config", path, "--tenant", "fedco")
	if err == nil || !strings.Contains(out, "AADSTS700213") || !strings.Contains(out, "subject system:serviceaccount:default:other") ||
		!strings.Contains(out, "issuer "+u.entra.FederatedIssuer()) {
		t.Errorf("doctor with the wrong subject: %v\n%s", err, out)
	}
	if strings.Contains(logs, second) || strings.Contains(out, second) {
		t.Error("a federated token was logged")
	}
	// The right token again: the queued message goes, once.
	project(subject)
	testenv.Eventually(t, "the queued message delivered", 30*time.Second, func() bool { return delivered(u.exo)["federated-3"] == 1 })
	p.stop(t)
}

// Tenants with managed_identity, system-assigned and user-assigned, get
// their tokens from the host's identity endpoint (here App Service's
// style on loopback: IDENTITY_ENDPOINT and IDENTITY_HEADER) and deliver,
// with no credential in the config.
func TestManagedIdentity(t *testing.T) {
	u := startFakes(t)
	t.Setenv("TEST_CLIENT_SECRET", clientSecret)
	t.Setenv("SSL_CERT_FILE", u.caFile)
	const vmTenant = "44444444-dddd-4000-8000-000000000004"
	const systemID, userID = "dddddddd-0000-4000-8000-00000000000d", "eeeeeeee-0000-4000-8000-00000000000e"
	system := u.AddApp(vmTenant, fakeentra.App{ClientID: systemID})
	user := u.AddApp(vmTenant, fakeentra.App{ClientID: userID})
	u.AddMailbox("vm@azvm.example", vmTenant, system)
	u.AddMailbox("arc@azvm.example", vmTenant, user)
	endpoint, header := u.entra.SetManagedIdentity(vmTenant, system, user)
	t.Setenv("IDENTITY_ENDPOINT", endpoint)
	t.Setenv("IDENTITY_HEADER", header)
	// A customer's tenant whose app registration trusts the system-assigned
	// identity as a federated credential: no secret in that tenant either.
	const customerTenant, customerApp = "55555555-eeee-4000-8000-000000000005", "ffffffff-0000-4000-8000-00000000000f"
	u.AddTenant(customerTenant, "customer.example")
	app := u.AddApp(customerTenant, fakeentra.App{ClientID: customerApp, Federated: []fakeentra.FederatedCredential{
		{Issuer: u.entra.ManagedIdentityIssuer(), Subject: system.ObjectID}}})
	u.AddMailbox("mfp@customer.example", customerTenant, app)

	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	data := testenv.ReadFile(t, path)
	hash := hashOf(t, password)
	data = strings.Replace(data, "devices:\n", fmt.Sprintf(`  - name: vm-system
    tenant_id: %[1]q
    managed_identity: {}
    smtp_host: %[2]q
  - name: vm-user
    tenant_id: %[1]q
    managed_identity: {client_id: %[3]q}
    smtp_host: %[2]q
  - name: customer
    tenant_id: %[5]q
    client_id: %[6]q
    managed_identity: {}
    authority_host: %[7]q
    smtp_host: %[2]q
devices:
  - {name: vm-mfp, username: vm-mfp, password_hash: %[4]q, tenant: vm-system, mailbox: vm@azvm.example}
  - {name: arc-mfp, username: arc-mfp, password_hash: %[4]q, tenant: vm-user, mailbox: arc@azvm.example}
  - {name: customer-mfp, username: customer-mfp, password_hash: %[4]q, tenant: customer, mailbox: mfp@customer.example}
`, vmTenant, u.exo.Addr(), userID, hash, customerTenant, customerApp, u.entra.URL()), 1)
	writeFile(t, path, data)
	if out, err := runCmd(t, "", binary, "check-config", "--config", path); err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	p := startBridge(t, nil, []string{plain}, "serve", "--config", path)
	for _, dev := range []string{"vm-mfp", "arc-mfp", "customer-mfp"} {
		reply, err := sendAs(plain, dev, "scan@printer.lan", []string{"bob@azvm.example"}, "Subject: mi-"+dev+"\r\n\r\nscan\r\n")
		if err != nil || !strings.HasPrefix(reply, "2.0.0") {
			t.Fatalf("%s through its managed identity: %q %v\n%s", dev, reply, err, p.logs.String())
		}
	}
	testenv.Eventually(t, "the three messages at Exchange", 10*time.Second, func() bool { return len(u.exo.Messages()) == 3 })
	if u.entra.Grants(customerApp) != 1 {
		t.Errorf("grants to the customer's app: %d, want 1\n%s", u.entra.Grants(customerApp), p.logs.String())
	}
	out, err := runCmd(t, "", binary, "doctor", "--config", path, "--tenant", "vm-user")
	if err != nil || !strings.Contains(out, "user-assigned managed identity "+userID) || !strings.Contains(out, "App Service or Container Apps") {
		t.Errorf("doctor on the user-assigned identity's tenant: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "exchange-script", "--config", path, "--tenant", "vm-user"); err != nil || !strings.Contains(out, "$appId = '"+userID+"'") {
		t.Errorf("exchange-script for the user-assigned identity: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "exchange-script", "--config", path, "--tenant", "vm-system"); err != nil || !strings.Contains(out, "<MANAGED-IDENTITY-APPLICATION-ID>") ||
		!strings.Contains(out, "New-MgServicePrincipalAppRoleAssignment") || !strings.Contains(out, "Where-Object Value -eq 'SMTP.SendAsApp'") {
		t.Errorf("exchange-script for the system-assigned identity: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "exchange-script", "--config", path, "--tenant", "customer"); err != nil ||
		!strings.Contains(out, "az ad app federated-credential create --id '"+customerApp+"'") || strings.Contains(out, "New-MgServicePrincipalAppRoleAssignment") {
		t.Errorf("exchange-script for the app registration with the managed identity as federated credential: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "doctor", "--config", path, "--tenant", "customer"); err != nil ||
		!strings.Contains(out, "as the federated credential of app registration "+customerApp) {
		t.Errorf("doctor on the app registration with the managed identity as federated credential: %v\n%s", err, out)
	}
	if u.entra.Grants(systemID) != 1 || u.entra.Grants(userID) < 1 {
		t.Errorf("grants: system-assigned %d, user-assigned %d", u.entra.Grants(systemID), u.entra.Grants(userID))
	}
	assertion := filepath.Join(t.TempDir(), "assertion")
	writeFile(t, assertion, u.entra.LastAssertion(customerApp))
	if c, err := tokenstore.ReadFederatedClaims(assertion); err != nil ||
		c.Issuer != u.entra.ManagedIdentityIssuer() || c.Subject != system.ObjectID {
		t.Errorf("the customer app's client assertion: %+v %v, want the managed identity's token", c, err)
	}
	for _, m := range u.exo.Messages() {
		if strings.Contains(string(m.Data), "Subject: mi-arc-mfp") && m.AppID != userID {
			t.Errorf("arc-mfp's message was sent by app %s, want the user-assigned identity %s", m.AppID, userID)
		}
		if strings.Contains(string(m.Data), "Subject: mi-customer-mfp") && m.AppID != customerApp {
			t.Errorf("customer-mfp's message was sent by app %s, want the customer's app registration %s", m.AppID, customerApp)
		}
	}
	p.stop(t)
}

// token_cache keeps the tokens across a restart, encrypted: the first
// message after a restart needs no new grant, and the cache file holds
// no readable token; with another key the cache is unreadable, and a new
// grant replaces it.
func TestTokenCache(t *testing.T) {
	u := startFakes(t)
	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	keyFile := filepath.Join(u.dir, "token-cache.key")
	writeFile(t, keyFile, strings.Repeat("5a", 32)+"\n")
	appendConfig(t, path, "token_cache:\n  key_file: token-cache.key\n")
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile}
	send := func(subject string) {
		t.Helper()
		if r, err := sendOne(plain, subject); err != nil || !strings.HasPrefix(r, "2.0.0") {
			t.Fatalf("%s: %q %v", subject, r, err)
		}
	}
	p := startBridge(t, env, []string{plain}, "serve", "--config", path)
	send("cached-1")
	if g := u.entra.Grants(clientID); g != 1 {
		t.Fatalf("%d grants for the first message, want 1", g)
	}
	p.stop(t)
	files, _ := filepath.Glob(filepath.Join(u.dir, "spool", "tokens", "*.cache"))
	if len(files) != 1 {
		t.Fatalf("%d cache files, want 1", len(files))
	}
	data := testenv.ReadFile(t, files[0])
	// A JWT starts with the base64 of `{"`: eyJ; the token's claims would
	// name the app and the tenant.
	for _, plain := range []string{"eyJ", clientID, tenantID, "access_token", "AccessToken", clientSecret} {
		if strings.Contains(data, plain) {
			t.Errorf("the cache file holds %q in clear", plain)
		}
	}
	if fi, _ := os.Stat(files[0]); fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file mode %v", fi.Mode().Perm())
	}

	p = startBridge(t, env, []string{plain}, "serve", "--config", path)
	send("cached-2")
	if g := u.entra.Grants(clientID); g != 1 {
		t.Errorf("after a restart the first message took a new grant (%d in all)", g)
	}
	p.stop(t)

	// Another key: the old file cannot be read; a new grant, no error.
	writeFile(t, keyFile, strings.Repeat("a5", 32)+"\n")
	p = startBridge(t, env, []string{plain}, "serve", "--config", path)
	send("cached-3")
	if g := u.entra.Grants(clientID); g != 2 {
		t.Errorf("with a new key, %d grants in all, want 2", g)
	}
	p.stop(t)
}

// loginAs runs smtpbridge tenant login and approves its device code as
// user, as the person at the verification page would. It returns the
// command's output and error.
func loginAs(t *testing.T, u *fakes, path, tenant, mailbox, user string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out syncbuf.Buffer
	cmd := exec.CommandContext(ctx, binary, "tenant", "login", "--config", path, "--tenant", tenant, "--mailbox", mailbox)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	code, err := u.entra.NextUserCode(30 * time.Second)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("tenant login: %v\n%s", err, out.String())
	}
	// The person reads the code off the screen.
	testenv.Eventually(t, "the code on tenant login's output", 10*time.Second, func() bool { return strings.Contains(out.String(), code) })
	if err := u.entra.ApproveDeviceCode(code, user); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	return out.String(), err
}

// Delegated sign-in: tenant login through the device code flow, the
// mailbox delivering with the signed-in user's token, the messages
// waiting (and the status page, metric and log saying which mailbox
// needs a sign-in) while the refresh token is revoked, and delivered
// once each after a new tenant login.
func TestDelegatedSignIn(t *testing.T) {
	u := startFakes(t)
	t.Setenv("TEST_CLIENT_SECRET", clientSecret)
	t.Setenv("SSL_CERT_FILE", u.caFile)
	const tenantID, appID, mailbox = "66666666-ffff-4000-8000-000000000006", "abababab-0000-4000-8000-0000000000ab", "scans@delegated.example"
	u.AddTenant(tenantID, "delegated.example")
	app := u.AddApp(tenantID, fakeentra.App{ClientID: appID, PublicClient: true})
	u.AddMailbox(mailbox, tenantID, app)
	u.entra.AddUser(tenantID, mailbox)
	u.entra.AddUser(tenantID, "someone.else@delegated.example")
	// Every token request goes to the refresh token (MSAL renews a token
	// within 5 minutes of its expiry), so that a revocation shows at once.
	u.entra.SetUserTokenLifetime(300 * time.Second)

	plain, secure, httpAddr := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	path := u.config(t, plain, secure, httpAddr)
	writeFile(t, filepath.Join(u.dir, "token-cache.key"), strings.Repeat("6b", 32)+"\n")
	data := testenv.ReadFile(t, path)
	data = strings.Replace(data, "devices:\n", fmt.Sprintf(`  - name: delegated
    tenant_id: %q
    client_id: %q
    auth: delegated
    authority_host: %q
    smtp_host: %q
    graph_host: %q
    graph_token_scope: %q
devices:
  - {name: scanner, username: scanner, password_hash: %[7]q, tenant: delegated, mailbox: %[8]s}
  - {name: scanner-graph, username: scanner-graph, password_hash: %[7]q, tenant: delegated, mailbox: %[8]s, transport: graph}
`, tenantID, appID, u.entra.URL(), u.exo.Addr(), u.Graph.URL(), fakeentra.GraphResource+"/.default", hashOf(t, password), mailbox), 1)
	writeFile(t, path, data+"token_cache:\n  key_file: token-cache.key\n")
	if out, err := runCmd(t, "", binary, "check-config", "--config", path); err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "exchange-script", "--config", path, "--tenant", "delegated"); err != nil ||
		!strings.Contains(out, "Set-CASMailbox -Identity '"+mailbox+"' -SmtpClientAuthenticationDisabled $false") ||
		!strings.Contains(out, "smtpbridge tenant login --config "+path+" --tenant delegated --mailbox "+mailbox) ||
		strings.Contains(out, "New-ServicePrincipal") || strings.Contains(out, "Add-MailboxPermission") {
		t.Errorf("exchange-script for delegated sign-in: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "", binary, "tenant", "login", "--config", path, "--tenant", "contoso"); err == nil || !strings.Contains(out, "set auth: delegated") {
		t.Errorf("tenant login for a tenant with an app credential: %v\n%s", err, out)
	}
	// sudo smtpbridge tenant login, as the README says, with the spool
	// owned by the bridge's user (nobody here): the login runs as that
	// user and its cache file is that user's (CI runs as root).
	asRoot := os.Geteuid() == 0
	if asRoot {
		spool := filepath.Join(u.dir, "spool")
		os.MkdirAll(spool, 0o700)
		for d := u.dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
			os.Chmod(d, 0o755) // nobody reaches the spool
		}
		if err := os.Chown(spool, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	p := startBridge(t, nil, []string{plain, httpAddr}, "serve", "--config", path)
	page := "http://" + httpAddr
	send := func(subject string) {
		t.Helper()
		if r, err := sendAs(plain, "scanner", mailbox, []string{"bob@delegated.example"}, "Subject: "+subject+"\r\n\r\nscan\r\n"); err != nil || !strings.HasPrefix(r, "2.0.0") {
			t.Fatalf("%s: %q %v", subject, r, err)
		}
	}
	arrived := func(subject string) int {
		n := 0
		for _, m := range u.exo.Messages() {
			if strings.Contains(string(m.Data), "Subject: "+subject+"\r\n") {
				n++
			}
		}
		return n
	}
	needsSignIn := func(want bool) {
		t.Helper()
		defer func() {
			if t.Failed() {
				_, body := httpGet(t, page+"/")
				_, m := httpGet(t, page+"/metrics")
				t.Logf("page:\n%s\nmetrics:\n%s\nlog:\n%s", testenv.Grep(body, "sign"), testenv.Grep(m, "sign_in"), p.logs.String())
			}
		}()
		testenv.Eventually(t, fmt.Sprintf("sign-in needed shown: %v", want), 20*time.Second, func() bool {
			_, body := httpGet(t, page+"/")
			_, m := httpGet(t, page+"/metrics")
			shown := strings.Contains(body, `id="sign-in-`+mailbox+`"`) && strings.Contains(body, "--tenant delegated --mailbox "+mailbox)
			gauge := strings.Contains(m, `smtpbridge_mailbox_sign_in_required{mailbox="`+mailbox+`",tenant="delegated"} 1`)
			return shown == want && gauge == want
		})
	}

	// Before anyone signed in: the page says so from the start, and a
	// message waits.
	needsSignIn(true)
	send("before-login")
	if arrived("before-login") != 0 {
		t.Fatal("delivered with nobody signed in")
	}
	// A sign-in as another user is refused and not kept.
	if out, err := loginAs(t, u, path, "delegated", mailbox, "someone.else@delegated.example"); err == nil || !strings.Contains(out, "not "+mailbox) {
		t.Fatalf("tenant login as another user: %v\n%s", err, out)
	}
	out, err := loginAs(t, u, path, "delegated", mailbox, mailbox)
	if err != nil || !strings.Contains(out, "Signed in as "+mailbox) || !strings.Contains(out, "https://outlook.office.com/SMTP.Send") ||
		!strings.Contains(out, "https://graph.microsoft.com/Mail.Send") {
		t.Fatalf("tenant login: %v\n%s", err, out)
	}
	if asRoot && !strings.Contains(out, fmt.Sprintf("Running as user %d (the owner of %s)", nobody, filepath.Join(u.dir, "spool", "tokens"))) {
		t.Errorf("tenant login as root did not say it runs as the spool's owner:\n%s", out)
	}
	testenv.Eventually(t, "the waiting message delivered after the sign-in", 30*time.Second, func() bool { return arrived("before-login") == 1 })
	needsSignIn(false)
	send("signed-in")
	testenv.Eventually(t, "a message with the delegated token", 10*time.Second, func() bool { return arrived("signed-in") == 1 })
	// Through Microsoft Graph with the same sign-in: a small message, and
	// a 4 MB scan, which goes as a draft (delegated Mail.ReadWrite).
	scan, _ := testenv.Scan("Subject: graph-scan\r\nTo: bob@delegated.example\r\n", 4<<20)
	for subject, data := range map[string]string{"graph-small": "Subject: graph-small\r\n\r\nscan\r\n", "graph-scan": scan} {
		if r, err := sendAs(plain, "scanner-graph", mailbox, []string{"bob@delegated.example"}, data); err != nil || !strings.HasPrefix(r, "2.0.0") {
			t.Fatalf("%s through Graph: %q %v", subject, r, err)
		}
	}
	testenv.Eventually(t, "the Graph messages with the delegated token", 20*time.Second, func() bool {
		return graphMessage(u.Graph, "graph-small") != nil && graphMessage(u.Graph, "graph-scan") != nil
	})

	// Revoked (a password reset, Revoke-MgUserSignInSession): the mailbox pauses.
	u.entra.RevokeSignIns(mailbox)
	send("after-revocation")
	needsSignIn(true)
	if !strings.Contains(p.logs.String(), `"problem":"sign-in needed"`) || !strings.Contains(p.logs.String(), "AADSTS50173") {
		t.Errorf("the log does not say the mailbox needs a sign-in, with Entra's code:\n%s", p.logs.String())
	}
	if arrived("after-revocation") != 0 {
		t.Fatal("delivered after the revocation")
	}
	out, err = runCmd(t, "", binary, "doctor", "--config", path, "--tenant", "delegated")
	if err == nil || !strings.Contains(out, "AADSTS50173") || !strings.Contains(out, "smtpbridge tenant login --tenant delegated --mailbox "+mailbox) {
		t.Errorf("doctor on the revoked mailbox: %v\n%s", err, out)
	}
	if out, err := loginAs(t, u, path, "delegated", mailbox, mailbox); err != nil {
		t.Fatalf("tenant login again: %v\n%s", err, out)
	}
	testenv.Eventually(t, "the waiting message delivered after the new sign-in", 30*time.Second, func() bool { return arrived("after-revocation") == 1 })
	needsSignIn(false)
	out, err = runCmd(t, "", binary, "doctor", "--config", path, "--tenant", "delegated")
	if err != nil || !strings.Contains(out, "signed in as "+mailbox) {
		t.Errorf("doctor on the signed-in mailbox: %v\n%s", err, out)
	}
	p.stop(t)
	for _, s := range []string{"before-login", "signed-in", "after-revocation"} {
		if n := arrived(s); n != 1 {
			t.Errorf("%s arrived %d times, want once", s, n)
		}
	}
	// The refresh tokens are on disk, encrypted: none readable.
	files, _ := filepath.Glob(filepath.Join(u.dir, "spool", "tokens", "*.cache"))
	if len(files) != 1 {
		t.Fatalf("%d cache files, want the mailbox's 1", len(files))
	}
	if owner := adminapi.FileOwner(files[0]); asRoot && owner != nobody {
		t.Errorf("the cache file written by tenant login as root belongs to %d, not to the spool's owner %d", owner, nobody)
	}
	if data := testenv.ReadFile(t, files[0]); strings.Contains(data, "rt-") || strings.Contains(data, mailbox) {
		t.Errorf("the cache file holds a readable refresh token or the mailbox's name")
	}
	testenv.CheckNoSecrets(t, "bridge log", p.logs.String())
}
