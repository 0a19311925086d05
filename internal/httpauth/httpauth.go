// Package httpauth asks for HTTP basic authentication in front of the
// status page and /metrics (http.auth).
//
// A password hash (argon2id, bcrypt) costs tens of milliseconds and, for
// argon2id, megabytes to check, and Prometheus and a browser send the
// same credential on every request: so a credential that checked out is
// remembered for a while (by its SHA-256 under a key random to the
// process, never in clear), and at most one hash check runs at a time.
package httpauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"sync"
	"time"
)

// Verifier checks a password: a parsed password hash.
type Verifier interface {
	Verify(password []byte) bool
}

// Credential is who may in.
type Credential struct {
	Username string
	// Hash checks the password; or Password is the password itself.
	Hash     Verifier
	Password string
}

// Remember bounds how long, and how many, checked credentials are kept.
const (
	rememberFor   = 10 * time.Minute
	maxRemembered = 16
)

// Basic serves h to requests with the credential and answers the others
// 401 with a challenge. A zero Credential lets everyone in.
func Basic(h http.Handler, c Credential) http.Handler {
	if c.Username == "" {
		return h
	}
	key := make([]byte, 32)
	rand.Read(key)
	g := &gate{c: c, key: key, ok: map[[32]byte]time.Time{}, hashing: make(chan struct{}, 1)}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || !g.check(user, pass) {
			w.Header().Set("WWW-Authenticate", `Basic realm="smtpbridge", charset="UTF-8"`)
			http.Error(w, "401 the status page and /metrics need the username and password of http.auth", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

type gate struct {
	c       Credential
	key     []byte
	mu      sync.Mutex
	ok      map[[32]byte]time.Time // credentials that checked out, until when
	hashing chan struct{}
}

func (g *gate) check(user, pass string) bool {
	userOK := subtle.ConstantTimeCompare([]byte(user), []byte(g.c.Username)) == 1
	if g.c.Hash == nil {
		passOK := subtle.ConstantTimeCompare(digest(nil, pass), digest(nil, g.c.Password)) == 1
		return userOK && passOK
	}
	var id [32]byte
	copy(id[:], digest(g.key, user+"\x00"+pass))
	now := time.Now()
	g.mu.Lock()
	until, known := g.ok[id]
	g.mu.Unlock()
	if known && now.Before(until) {
		return true
	}
	g.hashing <- struct{}{}
	passOK := g.c.Hash.Verify([]byte(pass))
	<-g.hashing
	if !userOK || !passOK {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, t := range g.ok {
		if !now.Before(t) || len(g.ok) >= maxRemembered {
			delete(g.ok, k)
		}
	}
	g.ok[id] = now.Add(rememberFor)
	return true
}

// digest is HMAC-SHA-256 under key, or SHA-256 without one.
func digest(key []byte, s string) []byte {
	if key == nil {
		sum := sha256.Sum256([]byte(s))
		return sum[:]
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}
