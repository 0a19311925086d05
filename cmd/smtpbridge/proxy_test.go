//go:build integration

package main

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
	"github.com/smtpbridge/smtpbridge/internal/passwd"
	"github.com/smtpbridge/smtpbridge/internal/testenv"
)

// proxied is addr (a fake's 127.0.0.1:port, or its URL) under the name
// only the proxy can resolve.
func proxied(t *testing.T, name, addr string) string {
	t.Helper()
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		u.Host = net.JoinHostPort(name+"."+testenv.ProxiedDomain, u.Port())
		return u.String()
	}
	_, port, _ := net.SplitHostPort(addr)
	return net.JoinHostPort(name+"."+testenv.ProxiedDomain, port)
}

// proxyConfig is contoso with Entra ID, Graph and Exchange under names
// only the proxy resolves, a device on Graph and one on SMTP, and the
// network section given.
func (u *fakes) proxyConfig(t *testing.T, plain, network string) string {
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
  - name: contoso
    tenant_id: {{q .TenantID}}
    client_id: {{q .ClientID}}
    client_secret: "${TEST_CLIENT_SECRET}"
    authority_host: {{q .ProxiedAuthority}}
    smtp_host: {{q .ProxiedSMTP}}
    graph_host: {{q .ProxiedGraph}}
    graph_token_scope: {{q .GraphScope}}
devices:
  - {name: mfp-graph, username: mfp-graph, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example, transport: graph}
  - {name: mfp-smtp, username: mfp-smtp, password_hash: {{q .Hash}}, tenant: contoso, mailbox: scanner@contoso.example, transport: smtp}
delivery: {mode: hybrid, retry_initial: 1s, retry_max: 2s, sync_timeout: 20s}
spool: {dir: spool}
log: {level: debug}
network: `+network+`
`, map[string]any{"Plain": plain, "Hash": hash, "GraphScope": fakeentra.GraphResource + "/.default",
		"ProxiedAuthority": proxied(t, "login", u.entra.URL()), "ProxiedSMTP": proxied(t, "smtp", u.exo.Addr()),
		"ProxiedGraph": proxied(t, "graph", u.Graph.URL())})
	path := filepath.Join(u.dir, "proxy.yaml")
	writeFile(t, path, cfg)
	return path
}

// Behind a real proxy (squid), with Entra ID, Graph and Exchange under
// names this host cannot resolve (only the proxy's hosts file has them,
// so the direct route is closed), a device's message goes over Graph and
// another's, with smtp_via_proxy, over SMTP in a CONNECT tunnel; doctor
// says each step went through the proxy. A proxy that asks for a user
// and password makes doctor fail naming the proxy and the settings to
// set, until they are set.
func TestThroughRealProxy(t *testing.T) {
	if _, err := net.LookupHost("login." + testenv.ProxiedDomain); err == nil {
		t.Fatalf("this host resolves login.%s: the test could not tell the proxy's route from the direct one", testenv.ProxiedDomain)
	}
	u := startFakes(t)
	sq := testenv.StartSquid(t, testenv.SquidOptions{})
	plain := testenv.FreePort(t)
	env := []string{"TEST_CLIENT_SECRET=" + clientSecret, "SSL_CERT_FILE=" + u.caFile, "HTTPS_PROXY=", "https_proxy="}

	// Without the proxy the bridge cannot reach them: doctor says so.
	direct := u.proxyConfig(t, plain, "{}")
	if out, code := runBridge(t, env, "doctor", "--config", direct, "--device", "mfp-graph"); code == 0 {
		t.Fatalf("doctor passed without the proxy: the direct route is not closed\n%s", out)
	}

	path := u.proxyConfig(t, plain, "{proxy: "+sq.URL+", smtp_via_proxy: true}")
	out, code := runBridge(t, env, "doctor", "--config", path)
	if code != 0 || strings.Count(out, "through the proxy "+sq.Addr) < 3 {
		t.Fatalf("doctor through the proxy: exit %d, want 0 and the token, Graph and SMTP steps through the proxy %s:\n%s", code, sq.Addr, out)
	}

	p := startBridge(t, env, []string{plain}, "serve", "--config", path)
	for _, dev := range []string{"mfp-graph", "mfp-smtp"} {
		reply, err := sendAs(plain, dev, "scanner@contoso.example", []string{"bob@contoso.example"},
			"From: <scanner@contoso.example>\r\nTo: <bob@contoso.example>\r\nSubject: via proxy "+dev+"\r\n\r\nbody\r\n")
		if err != nil || !strings.Contains(reply, "2.0.0") {
			t.Fatalf("%s: %q %v\n%s", dev, reply, err, p.logs.String())
		}
	}
	if graphMessage(u.Graph, "via proxy mfp-graph") == nil {
		t.Errorf("Graph did not get the Graph device's message")
	}
	got := false
	for _, m := range u.exo.Messages() {
		if strings.Contains(string(m.Data), "Subject: via proxy mfp-smtp") {
			got = true
		}
	}
	if !got {
		t.Errorf("Exchange did not get the SMTP device's message")
	}
	log := sq.Log()
	for _, name := range []string{"login", "graph", "smtp"} {
		if !strings.Contains(log, "CONNECT "+name+"."+testenv.ProxiedDomain) {
			t.Errorf("the proxy's log has no CONNECT to %s.%s:\n%s", name, testenv.ProxiedDomain, log)
		}
	}
	p.stop(t)

	// A proxy that wants a user and password.
	auth := testenv.StartSquid(t, testenv.SquidOptions{User: "svc-smtpbridge", Password: "proxy-canary-Pw1"})
	path = u.proxyConfig(t, plain, "{proxy: "+auth.URL+", smtp_via_proxy: true}")
	out, code = runBridge(t, env, "doctor", "--config", path)
	if code == 0 || !strings.Contains(out, "the proxy "+auth.Addr) || !strings.Contains(out, "407") || !strings.Contains(out, "network.proxy_user") {
		t.Fatalf("doctor against a proxy wanting a credential: exit %d, want a failure naming the proxy, 407 and network.proxy_user:\n%s", code, out)
	}
	pw := filepath.Join(u.dir, "proxy.password")
	if err := os.WriteFile(pw, []byte("proxy-canary-Pw1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path = u.proxyConfig(t, plain, "{proxy: "+auth.URL+", proxy_user: svc-smtpbridge, proxy_password_file: "+pw+", smtp_via_proxy: true}")
	out, code = runBridge(t, env, "doctor", "--config", path)
	if code != 0 || strings.Contains(out, "proxy-canary-Pw1") {
		t.Fatalf("doctor with the proxy's credential: exit %d (want 0, and no password in the output):\n%s", code, out)
	}
}
