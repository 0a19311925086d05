// Package loopback guards the bridge's admin endpoints: they answer
// clients on the bridge's own host only, whatever address the http
// listener is bound to.
package loopback

import (
	"net/http"
	"net/netip"
)

// Only serves h to loopback clients and answers everyone else 403 with
// the JSON error message msg.
func Only(h http.Handler, msg string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !IsLoopback(r) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"error":` + quote(msg) + "}\n"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// IsLoopback says whether the request comes from the bridge's host.
func IsLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func quote(s string) string {
	b := []byte{'"'}
	for _, c := range []byte(s) {
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		if c < 0x20 {
			continue
		}
		b = append(b, c)
	}
	return string(append(b, '"'))
}
