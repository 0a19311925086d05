package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/pki"
)

// testProxy is an HTTP proxy that knows CONNECT only, as the bridge uses
// it: with a user and password to ask for, ports it allows, and, with
// an inspecting CA, TLS inspection (it ends the client's TLS with a
// certificate of its own CA and opens its own TLS to the target).
type testProxy struct {
	ln       net.Listener
	rules    atomic.Pointer[proxyRules]
	connects atomic.Int32
}

type proxyRules struct {
	user, pw string
	ports    map[string]bool // nil: any
	inspect  *pki.CA
	upstream *tls.Config // trusts the targets, when inspecting
}

// set changes the proxy's rules for the connections to come.
func (p *testProxy) set(change func(r *proxyRules)) {
	r := *p.rules.Load()
	change(&r)
	p.rules.Store(&r)
}

func newTestProxy(t *testing.T) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{ln: ln}
	p.rules.Store(&proxyRules{})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *testProxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *testProxy) serve(c net.Conn) {
	defer c.Close()
	rules := p.rules.Load()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		fmt.Fprint(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	if rules.user != "" {
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(rules.user+":"+rules.pw))
		if req.Header.Get("Proxy-Authorization") != want {
			fmt.Fprint(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n\r\n")
			return
		}
	}
	_, port, _ := net.SplitHostPort(req.Host)
	if rules.ports != nil && !rules.ports[port] {
		fmt.Fprint(c, "HTTP/1.1 403 Forbidden\r\n\r\n")
		return
	}
	up, err := net.Dial("tcp", req.Host)
	if err != nil {
		fmt.Fprint(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	p.connects.Add(1)
	fmt.Fprint(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	var client, server io.ReadWriter = c, up
	if rules.inspect != nil {
		host, _, _ := net.SplitHostPort(req.Host)
		leaf, err := rules.inspect.Issue(host)
		if err != nil {
			return
		}
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{leaf.TLS}})
		if tc.Handshake() != nil {
			return
		}
		cfg := rules.upstream.Clone()
		cfg.ServerName = host
		ts := tls.Client(up, cfg)
		if ts.Handshake() != nil {
			return
		}
		client, server = tc, ts
	}
	go io.Copy(server, client)
	io.Copy(client, server)
}

// greeter is an SMTP server's first move: it speaks as soon as the
// connection opens, so a tunnel that read past the proxy's answer would
// lose the greeting.
func greeter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "220 exchange.test ESMTP ready\r\n")
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func readGreeting(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the greeting through the tunnel: %v", err)
	}
	return line
}

// SMTP goes through the proxy's CONNECT tunnel with smtp_via_proxy, and
// the server's greeting, which comes right after the proxy's answer, is
// the first thing read from it; a proxy that wants a credential, or
// allows only 443, gives an error that says so and what to ask for.
func TestDialSMTPThroughProxy(t *testing.T) {
	target := greeter(t)
	p := newTestProxy(t)
	ctx := context.Background()

	direct, err := Settings{Proxy: p.url()}.DialSMTP(ctx, target, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	readGreeting(t, direct)
	direct.Close()
	if n := p.connects.Load(); n != 0 {
		t.Fatalf("without smtp_via_proxy SMTP went through the proxy (%d CONNECTs)", n)
	}

	s := Settings{Proxy: p.url(), SMTPViaProxy: true}
	c, err := s.DialSMTP(ctx, target, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if g := readGreeting(t, c); !strings.HasPrefix(g, "220 exchange.test") {
		t.Errorf("greeting %q", g)
	}
	c.Close()
	if n := p.connects.Load(); n != 1 {
		t.Fatalf("%d CONNECTs through the proxy, want 1", n)
	}
	if v := s.SMTPVia(target); v != "through the proxy "+p.ln.Addr().String() {
		t.Errorf("SMTPVia %q", v)
	}

	p.set(func(r *proxyRules) { r.user, r.pw = "svc-bridge", "pr0xy-pass" })
	_, err = s.DialSMTP(ctx, target, 5*time.Second)
	var pe *ProxyError
	if !errors.As(err, &pe) || pe.Status != 407 {
		t.Fatalf("without the proxy's credential: %v, want a 407 ProxyError", err)
	}
	if meaning, fix, ok := s.Explain(err, target); !ok || !strings.Contains(meaning, "407") || !strings.Contains(fix, "network.proxy_user") {
		t.Errorf("407 explained as %q / %q", meaning, fix)
	}
	bad := Settings{Proxy: p.url(), User: "svc-bridge", Password: "wrong", SMTPViaProxy: true}
	_, err = bad.DialSMTP(ctx, target, 5*time.Second)
	if meaning, _, ok := bad.Explain(err, target); !ok || !strings.Contains(meaning, "refused the user svc-bridge") || strings.Contains(meaning+err.Error(), "wrong") {
		t.Errorf("a wrong password explained as %q (error %v); it must name the user, never the password", meaning, err)
	}
	good := Settings{Proxy: p.url(), User: "svc-bridge", Password: "pr0xy-pass", SMTPViaProxy: true}
	c, err = good.DialSMTP(ctx, target, 5*time.Second)
	if err != nil {
		t.Fatalf("with the credential: %v", err)
	}
	readGreeting(t, c)
	c.Close()

	p.set(func(r *proxyRules) { r.ports = map[string]bool{"443": true} })
	_, err = good.DialSMTP(ctx, target, 5*time.Second)
	if !errors.As(err, &pe) || pe.Status != 403 {
		t.Fatalf("a proxy allowing 443 only: %v, want a 403 ProxyError", err)
	}
	if meaning, fix, ok := good.Explain(err, target); !ok || !strings.Contains(meaning, "403") || !strings.Contains(fix, "allow CONNECT to "+target) || !strings.Contains(fix, "Graph") {
		t.Errorf("403 explained as %q / %q", meaning, fix)
	}
}

// The proxy's answer to CONNECT is bounded, and a proxy that never
// answers does not hold the dial past its context.
func TestConnectBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mode := make(chan string, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			switch <-mode {
			case "flood":
				go func() {
					defer c.Close()
					fmt.Fprint(c, "HTTP/1.1 200 OK\r\n")
					for range 2000 {
						if _, err := fmt.Fprint(c, "X-Filler: "+strings.Repeat("x", 100)+"\r\n"); err != nil {
							return
						}
					}
				}()
			case "silent":
				defer c.Close() // held until the listener closes
			}
		}
	}()
	s := Settings{Proxy: "http://" + ln.Addr().String(), SMTPViaProxy: true}
	mode <- "flood"
	if _, err := s.DialSMTP(context.Background(), "exchange.test:587", 5*time.Second); err == nil || !strings.Contains(err.Error(), "16 KiB") {
		t.Errorf("an endless answer to CONNECT: %v", err)
	}
	mode <- "silent"
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := s.DialSMTP(ctx, "exchange.test:587", 5*time.Second); err == nil {
		t.Error("a proxy that never answers: no error")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a proxy that never answers held the dial %s past a 300ms context", took)
	}
}

// Entra ID's and Graph's requests go through the configured proxy; a
// proxy that inspects TLS makes them fail with an error naming its CA
// until network.ca_file trusts it; the managed identity's endpoint is
// never proxied.
func TestHTTPSThroughInspectingProxy(t *testing.T) {
	ca, err := pki.NewCA("fake Microsoft CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "token") }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}
	srv.StartTLS()
	defer srv.Close()

	p := newTestProxy(t)
	get := func(s Settings) error {
		c := &http.Client{Transport: s.Transport(ca.Pool()), Timeout: 5 * time.Second}
		resp, err := c.Get(srv.URL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if string(body) != "token" {
			return fmt.Errorf("body %q", body)
		}
		return nil
	}
	s := Settings{Proxy: p.url()}
	if err := get(s); err != nil {
		t.Fatal(err)
	}
	if p.connects.Load() != 1 {
		t.Fatalf("%d CONNECTs, want the request through the proxy", p.connects.Load())
	}

	inspecting, err := pki.NewCA("Contoso TLS Inspection CA")
	if err != nil {
		t.Fatal(err)
	}
	p.set(func(r *proxyRules) { r.inspect, r.upstream = inspecting, &tls.Config{RootCAs: ca.Pool()} })
	err = get(s)
	if err == nil {
		t.Fatal("a TLS-inspecting proxy's certificate was trusted without network.ca_file")
	}
	meaning, fix, ok := s.Explain(err, srv.URL)
	if !ok || !strings.Contains(meaning, "Contoso TLS Inspection CA") || !strings.Contains(fix, "network.ca_file") {
		t.Errorf("inspection explained as %q / %q (error %v)", meaning, fix, err)
	}
	s.CAPEM = string(inspecting.CertPEM())
	if err := get(s); err != nil {
		t.Fatalf("with the inspecting CA in network.ca_file: %v", err)
	}

	t.Setenv("IDENTITY_ENDPOINT", "http://127.0.0.1:42356/msi/token")
	for _, u := range []string{"http://169.254.169.254/metadata/identity/oauth2/token", "http://127.0.0.1:42356/msi/token"} {
		pu, _ := url.Parse(u)
		if px, _ := s.ProxyFor(pu); px != nil {
			t.Errorf("%s goes through the proxy %s: the managed identity's endpoint must not", u, px.Host)
		}
	}
	if v := (Settings{}).Via(&url.URL{Scheme: "https", Host: "login.microsoftonline.com"}); v != "direct" && !strings.HasPrefix(v, "through the proxy ") {
		t.Errorf("Via %q", v)
	}
}
