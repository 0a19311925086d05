package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
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
