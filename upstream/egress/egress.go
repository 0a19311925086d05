// Package egress is the bridge's way out to Microsoft: straight to it,
// or through the company's HTTP proxy. Entra ID's and Graph's HTTPS
// requests go through the proxy the config names (network.proxy) or,
// without one, the environment's HTTPS_PROXY and NO_PROXY, as Go's own
// client does; SMTP to Exchange goes through it only when asked
// (network.smtp_via_proxy), in a CONNECT tunnel inside which STARTTLS and
// the certificate checks are unchanged. A TLS-inspecting proxy's CA
// (network.ca_file) is trusted for the HTTPS requests only. The managed
// identity's endpoint is never reached through a proxy.
package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/secret"
)

// Settings say how the bridge reaches Microsoft. The zero value is the
// environment's proxy, if any, for HTTPS and a direct connection for
// SMTP. Settings are comparable: equal settings need no new clients on
// a reload.
type Settings struct {
	// Proxy is an http:// URL without a user or password; "" for the
	// environment's (HTTPS_PROXY, NO_PROXY).
	Proxy string
	// User and Password authenticate to Proxy (Basic).
	User     string
	Password secret.String
	// CAPEM is the PEM of CAs trusted for the HTTPS requests beside the
	// system's or the given roots: a TLS-inspecting proxy's.
	CAPEM string
	// SMTPViaProxy sends SMTP through the proxy (CONNECT).
	SMTPViaProxy bool
}

// proxyURL is the configured proxy with its credential, nil without one.
func (s Settings) proxyURL() *url.URL {
	if s.Proxy == "" {
		return nil
	}
	u, err := url.Parse(s.Proxy)
	if err != nil {
		return nil // config.validate refused it
	}
	if s.User != "" {
		u.User = url.UserPassword(s.User, s.Password.Value())
	}
	return u
}

// ProxyFor is the proxy an HTTPS request to u goes through, nil for
// none: never for the managed identity's endpoint.
func (s Settings) ProxyFor(u *url.URL) (*url.URL, error) {
	if managedIdentityHost(u.Host) {
		return nil, nil
	}
	if p := s.proxyURL(); p != nil {
		return p, nil
	}
	return http.ProxyFromEnvironment(&http.Request{URL: u})
}

// Via says, in words, how a request to u goes: "direct" or "through the
// proxy HOST:PORT".
func (s Settings) Via(u *url.URL) string {
	p, err := s.ProxyFor(u)
	if err != nil || p == nil {
		return "direct"
	}
	return "through the proxy " + p.Host
}

// SMTPVia is Via for SMTP to addr.
func (s Settings) SMTPVia(addr string) string {
	if !s.SMTPViaProxy {
		return "direct"
	}
	return s.Via(&url.URL{Scheme: "https", Host: addr})
}

// managedIdentityHost says whether host is where a managed identity's
// tokens come from (Azure's instance metadata service, or the endpoint
// App Service, Arc and Service Fabric name in the environment).
func managedIdentityHost(host string) bool {
	h := hostOnly(host)
	if h == "169.254.169.254" {
		return true
	}
	for _, v := range []string{"IDENTITY_ENDPOINT", "MSI_ENDPOINT", "IMDS_ENDPOINT"} {
		if e := os.Getenv(v); e != "" {
			if u, err := url.Parse(e); err == nil && u.Host != "" && strings.EqualFold(hostOnly(u.Host), h) {
				return true
			}
		}
	}
	return false
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// Roots is base (nil: the system's) with the settings' CAs added; base
// itself when there are none.
func (s Settings) Roots(base *x509.CertPool) *x509.CertPool {
	if s.CAPEM == "" {
		return base
	}
	var pool *x509.CertPool
	if base != nil {
		pool = base.Clone()
	} else if sys, err := x509.SystemCertPool(); err == nil {
		pool = sys
	} else {
		pool = x509.NewCertPool()
	}
	pool.AppendCertsFromPEM([]byte(s.CAPEM))
	return pool
}

// Transport is Go's default transport with the settings' proxy and
// roots (base: nil for the system's).
func (s Settings) Transport(base *x509.CertPool) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = func(r *http.Request) (*url.URL, error) { return s.ProxyFor(r.URL) }
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{}
	}
	tr.TLSClientConfig.MinVersion = tls.VersionTLS12
	if roots := s.Roots(base); roots != nil {
		tr.TLSClientConfig.RootCAs = roots
	}
	return tr
}

// DialSMTP connects to addr (Exchange's host:587): directly, or through
// a CONNECT tunnel of the proxy with SMTPViaProxy.
func (s Settings) DialSMTP(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if !s.SMTPViaProxy {
		return d.DialContext(ctx, "tcp", addr)
	}
	p, err := s.ProxyFor(&url.URL{Scheme: "https", Host: addr})
	if err != nil {
		return nil, fmt.Errorf("the proxy for %s: %w", addr, err)
	}
	if p == nil {
		return nil, fmt.Errorf("network.smtp_via_proxy is set but no proxy is: set network.proxy (or HTTPS_PROXY) to reach %s", addr)
	}
	return connect(ctx, &d, p, addr)
}

// maxConnectReply bounds the proxy's answer to CONNECT.
const maxConnectReply = 16 << 10

// ProxyError is a proxy's refusal of a CONNECT tunnel.
type ProxyError struct {
	Proxy  string // host:port
	Target string
	Status int
	Text   string // the status line's text
}

func (e *ProxyError) Error() string {
	msg := fmt.Sprintf("the proxy %s refused a tunnel to %s: %d %s", e.Proxy, e.Target, e.Status, e.Text)
	switch e.Status {
	case http.StatusProxyAuthRequired:
		msg += "; it wants a user and password: set network.proxy_user and network.proxy_password_file (or check them)"
	case http.StatusForbidden:
		msg += "; ask the network team to allow CONNECT to " + e.Target + ", or send through Microsoft Graph (HTTPS on 443)"
	}
	return msg
}

// connect opens a CONNECT tunnel to target through the HTTP proxy p.
func connect(ctx context.Context, d *net.Dialer, p *url.URL, target string) (net.Conn, error) {
	if p.Scheme != "http" {
		return nil, fmt.Errorf("proxy %s: only an http:// proxy can carry SMTP", p.Redacted())
	}
	proxyAddr := p.Host
	if p.Port() == "" {
		proxyAddr = net.JoinHostPort(p.Hostname(), "80")
	}
	conn, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("the proxy %s: %w", p.Host, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(err error) (net.Conn, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return nil, err
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target)
	if p.User != nil {
		pw, _ := p.User.Password()
		fmt.Fprintf(&req, "Proxy-Authorization: Basic %s\r\n", base64.StdEncoding.EncodeToString([]byte(p.User.Username()+":"+pw)))
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		return fail(fmt.Errorf("the proxy %s: %w", p.Host, err))
	}
	// The answer is read byte by byte up to its blank line: what follows
	// is Exchange's greeting, which the SMTP client reads.
	head, err := readHead(conn)
	if err != nil {
		return fail(fmt.Errorf("the proxy %s's answer to CONNECT: %w", p.Host, err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), nil)
	if err != nil {
		return fail(fmt.Errorf("the proxy %s's answer to CONNECT: %w", p.Host, err))
	}
	if resp.StatusCode != http.StatusOK {
		return fail(&ProxyError{Proxy: p.Host, Target: target, Status: resp.StatusCode, Text: strings.TrimSpace(strings.TrimPrefix(resp.Status, fmt.Sprint(resp.StatusCode)))})
	}
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// readHead reads an HTTP response's head, up to its blank line, at most
// maxConnectReply bytes.
func readHead(conn net.Conn) ([]byte, error) {
	var head []byte
	b := make([]byte, 1)
	for len(head) < maxConnectReply {
		if _, err := conn.Read(b); err != nil {
			return nil, err
		}
		head = append(head, b[0])
		if bytes.HasSuffix(head, []byte("\r\n\r\n")) || bytes.HasSuffix(head, []byte("\n\n")) {
			return head, nil
		}
	}
	return nil, errors.New("longer than 16 KiB")
}

// Explain says what a failure to reach Microsoft means when the proxy or
// its TLS inspection is the cause, and what to ask for; ok is false
// otherwise. It reads the error's text as well as its chain: MSAL does
// not keep the chain.
func (s Settings) Explain(err error, endpoint string) (meaning, fix string, ok bool) {
	if err == nil {
		return "", "", false
	}
	var pe *ProxyError
	var ua x509.UnknownAuthorityError
	text := err.Error()
	proxy := "the proxy"
	if u, _ := url.Parse(endpoint); u != nil && u.Host != "" {
		if p, _ := s.ProxyFor(u); p != nil {
			proxy = "the proxy " + p.Host
		}
	} else if p, _ := s.ProxyFor(&url.URL{Scheme: "https", Host: endpoint}); p != nil {
		proxy = "the proxy " + p.Host
	}
	switch {
	case errors.As(err, &pe) && pe.Status == http.StatusProxyAuthRequired,
		strings.Contains(text, "Proxy Authentication Required"):
		if s.User != "" {
			return proxy + " refused the user " + s.User + " (407 Proxy Authentication Required).",
				"Check network.proxy_user and the password in network.proxy_password_file with the network team.", true
		}
		return proxy + " wants a user and password (407 Proxy Authentication Required).",
			"Ask the network team for a proxy account for the bridge, and set network.proxy_user and network.proxy_password_file.", true
	case errors.As(err, &pe) && pe.Status == http.StatusForbidden:
		return proxy + " does not allow a tunnel to " + pe.Target + " (403 on CONNECT; many proxies allow only port 443).",
			"Ask the network team to allow CONNECT to " + pe.Target + ", or send through Microsoft Graph (transport: graph, HTTPS on 443) and leave network.smtp_via_proxy off.", true
	case errors.As(err, &pe):
		return fmt.Sprintf("%s refused the tunnel to %s (%d %s).", proxy, pe.Target, pe.Status, pe.Text),
			"Ask the network team why the proxy refuses it.", true
	case strings.Contains(text, "proxyconnect"), strings.Contains(text, "the proxy ") && strings.Contains(text, "connect:"):
		return proxy + " cannot be reached.", "Check network.proxy (or HTTPS_PROXY): its host, its port, and that the bridge's host may reach it.", true
	case errors.As(err, &ua) && ua.Cert != nil:
		return fmt.Sprintf("The certificate %s showed is issued by %q, a CA this host does not trust: a proxy inspecting TLS re-signs Microsoft's certificates with its own CA.", endpoint, ua.Cert.Issuer.CommonName),
			"Put that CA's certificate (PEM) in network.ca_file; ask the network team for it, or exempt login.microsoftonline.com and graph.microsoft.com from inspection.", true
	case strings.Contains(text, "certificate signed by unknown authority"):
		return "The certificate " + endpoint + " showed is issued by a CA this host does not trust: a proxy inspecting TLS re-signs Microsoft's certificates with its own CA.",
			"Put that CA's certificate (PEM) in network.ca_file; ask the network team for it, or exempt login.microsoftonline.com and graph.microsoft.com from inspection.", true
	}
	return "", "", false
}
