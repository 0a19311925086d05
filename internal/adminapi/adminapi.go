// Package adminapi holds what the bridge's admin endpoints share: they
// answer clients on the bridge's own host only, whatever address the http
// listener is bound to, and they speak indented JSON.
package adminapi

import (
	"encoding/json"
	"net/http"
	"net/netip"
)

// LoopbackOnly serves h to loopback clients and answers everyone else 403
// with the error message msg.
func LoopbackOnly(h http.Handler, msg string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isLoopback(r) {
			WriteJSON(w, http.StatusForbidden, map[string]string{"error": msg})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// isLoopback says whether the request comes from the bridge's host.
func isLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// WriteJSON answers with v as indented JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
