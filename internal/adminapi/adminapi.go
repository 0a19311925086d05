// Package adminapi holds what the bridge's admin endpoints (the queue, the
// blocks, reload) share: who may call them, how they answer, and the
// client the command line calls them with.
//
// Whoever reaches the http listener is not trusted with them: a web page
// in a browser on the bridge's host can send requests to 127.0.0.1, a
// DNS-rebinding page can read the answers, and a reverse proxy or a
// service-mesh sidecar on the host connects from loopback on behalf of
// anyone. So a caller needs all of: a loopback peer address, a Host
// that names this host (not a name an attacker's DNS points here), no
// sign of a cross-site browser request, and the bridge's admin token,
// which only the bridge's owner can read.
package adminapi

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/smtpbridge/smtpbridge/internal/durable"
	"github.com/smtpbridge/smtpbridge/internal/httpauth"
)

// TokenFile is the admin token's file name in the spool directory.
const TokenFile = "admin.token"

// LoadOrCreateToken returns the admin token in dir/admin.token, and
// writes a new random one (mode 0600) if there is none. A token survives
// restarts; removing the file makes the next start write a new one.
func LoadOrCreateToken(dir string) (string, error) {
	path := filepath.Join(dir, TokenFile)
	tok, err := ReadToken(path)
	if err == nil {
		return tok, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	b := make([]byte, 32)
	rand.Read(b)
	tok = hex.EncodeToString(b)
	if err := durable.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return tok, nil
}

// ReadToken reads a token file.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if len(tok) < 32 || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("admin token: %s does not hold a token; remove it and restart the bridge to get a new one", path)
	}
	return tok, nil
}

// Policy is who may call the admin endpoints.
type Policy struct {
	// Token is the bearer token a request must carry.
	Token string
	// AllowedHosts are further names a request's Host may carry besides
	// loopback addresses and localhost (http.allowed_hosts).
	AllowedHosts []string
}

// Protect serves h to requests the policy allows, and answers the others:
// 403 for a peer that is not on loopback, a Host that is not this host's
// or a cross-site browser request (whatever credential it carries), 401
// without the token.
func Protect(h http.Handler, p Policy) http.Handler {
	allowed := map[string]bool{"localhost": true}
	for _, n := range p.AllowedHosts {
		allowed[strings.TrimSuffix(strings.ToLower(n), ".")] = true
	}
	want := []byte("Bearer " + p.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		socket := fromSocket(r)
		switch {
		case !socket && !isLoopback(r):
			refuse(w, http.StatusForbidden, "the admin API answers clients on the bridge's own host only; run the smtpbridge command there")
			return
		case !socket && !hostAllowed(r.Host, allowed):
			refuse(w, http.StatusForbidden, "the request's Host is not this bridge's; call it as 127.0.0.1, [::1] or localhost, or add the name to http.allowed_hosts")
			return
		case httpauth.CrossSite(r):
			refuse(w, http.StatusForbidden, "cross-site requests are refused")
			return
		}
		got := []byte(r.Header.Get("Authorization"))
		if p.Token == "" || subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="smtpbridge admin"`)
			refuse(w, http.StatusUnauthorized, "the admin API needs the bridge's admin token (spool.dir/"+TokenFile+"): run the smtpbridge command as the bridge's user with --config, or pass --token-file")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func refuse(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, map[string]string{"error": msg})
}

// isLoopback says whether the request comes from the bridge's host.
func isLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// hostAllowed says whether a request's Host names this host: a loopback
// address, or an allowed name.
func hostAllowed(host string, allowed map[string]bool) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().IsLoopback()
	}
	return host != "" && allowed[host]
}

// WriteJSON answers with v as indented JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
