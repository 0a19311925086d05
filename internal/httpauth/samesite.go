package httpauth

import (
	"net/http"
	"strings"
)

// CrossSite says whether a browser sent the request from another site:
// a page elsewhere that makes the admin's browser load a page here (a
// form, an image, fetch with no-cors) to make the bridge work, or to act
// with the admin's credentials. The command line, Prometheus and curl
// send neither header; a browser sends Sec-Fetch-Site (modern ones) or
// Origin (on every POST, and on cross-origin GETs).
func CrossSite(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default: // cross-site, same-site (another port or subdomain)
		return true
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	// Same origin only: http(s)://<the request's Host>.
	return !strings.EqualFold(origin, "http://"+r.Host) && !strings.EqualFold(origin, "https://"+r.Host)
}

// SameSite serves h to requests that are not cross-site, and answers the
// others 403: the pages that do work for whoever loads them (the status
// page, the message trace, /metrics).
func SameSite(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if CrossSite(r) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte("cross-site requests are refused: open the page itself\n"))
			return
		}
		h.ServeHTTP(w, r)
	})
}
