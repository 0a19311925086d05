package httpauth

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

type countingHash struct {
	password string
	calls    atomic.Int32
}

func (h *countingHash) Verify(pw []byte) bool {
	h.calls.Add(1)
	return string(pw) == h.password
}

func get(t *testing.T, h http.Handler, user, pass string, set bool) int {
	t.Helper()
	r := httptest.NewRequest("GET", "/metrics", nil)
	if set {
		r.SetBasicAuth(user, pass)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code == 401 && w.Header().Get("WWW-Authenticate") == "" {
		t.Error("401 without a challenge")
	}
	return w.Code
}

func TestBasic(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("metrics")) })
	hash := &countingHash{password: "correct horse battery"}
	for name, h := range map[string]http.Handler{
		"hash":     Basic(ok, Credential{Username: "prometheus", Hash: hash}),
		"password": Basic(ok, Credential{Username: "prometheus", Password: "correct horse battery"}),
	} {
		for _, c := range []struct {
			user, pass string
			set        bool
			want       int
		}{
			{"", "", false, 401},
			{"prometheus", "correct horse battery", true, 200},
			{"prometheus", "correct horse batter", true, 401},
			{"Prometheus", "correct horse battery", true, 401},
			{"", "correct horse battery", true, 401},
			{"prometheus", "", true, 401},
		} {
			if got := get(t, h, c.user, c.pass, c.set); got != c.want {
				t.Errorf("%s: %q/%q: %d, want %d", name, c.user, c.pass, got, c.want)
			}
		}
	}
	// A credential that checked out is not hashed again.
	before := hash.calls.Load()
	h := Basic(ok, Credential{Username: "prometheus", Hash: hash})
	for i := 0; i < 10; i++ {
		if get(t, h, "prometheus", "correct horse battery", true) != 200 {
			t.Fatal("refused")
		}
	}
	if n := hash.calls.Load() - before; n != 1 {
		t.Errorf("%d hash checks for 10 scrapes, want 1", n)
	}
	// A wrong one is checked every time (and never remembered).
	before = hash.calls.Load()
	for i := 0; i < 3; i++ {
		get(t, h, "prometheus", "guess", true)
	}
	if n := hash.calls.Load() - before; n != 3 {
		t.Errorf("%d hash checks for 3 wrong passwords", n)
	}
	// No credential configured: open.
	if get(t, Basic(ok, Credential{}), "", "", false) != 200 {
		t.Error("an empty credential closed the page")
	}
}
